//! Uploads, streamed from disk: a file as the raw body of a `POST` (LXD's image upload), or
//! files as the parts of a `multipart/form-data` body (a split image: `metadata` then `rootfs`,
//! as LXD's client sends it). Nothing is held in memory whole.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::Path;

use corral_api::Response;

use crate::{decode, http, is_disconnect, multipart, Client, Result};

/// A piece of a request body: bytes of ours, or a file's content.
enum Piece<'a> {
    Bytes(Vec<u8>),
    File { file: File, len: u64, path: &'a Path },
}

impl Piece<'_> {
    fn len(&self) -> u64 {
        match self {
            Piece::Bytes(b) => b.len() as u64,
            Piece::File { len, .. } => *len,
        }
    }
}

fn open(path: &Path) -> io::Result<Piece<'_>> {
    let file = File::open(path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    let len = file.metadata()?.len();
    Ok(Piece::File { file, len, path })
}

impl Client {
    /// Sends `file` as the raw body of a `POST path` (LXD's direct image upload), with `headers`.
    /// `progress(sent, total)` is called as the bytes go.
    pub fn upload(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        file: &Path,
        progress: impl FnMut(u64, u64),
    ) -> Result<Response> {
        let piece = open(file)?;
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("Content-Type")) {
            all.push(("Content-Type", "application/octet-stream"));
        }
        self.post_pieces(path, &all, vec![piece], progress)
    }

    /// Sends what `body` reads, to its end, as the raw body of a `POST path` in HTTP/1.1 chunks
    /// (its length is not known beforehand: an image packed as it is sent), with `headers`.
    /// `progress(sent)` is called as the bytes go. An error reading `body` ends the request
    /// without its last chunk, so that the server takes nothing from it.
    pub fn upload_stream(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: &mut dyn Read,
        mut progress: impl FnMut(u64),
    ) -> Result<Response> {
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("Content-Type")) {
            all.push(("Content-Type", "application/octet-stream"));
        }
        all.push(("Transfer-Encoding", "chunked"));
        let mut stream = self.connect()?;
        let mut read_error = None;
        let sent = (|| -> io::Result<()> {
            http::write_head(&mut stream, "POST", path, &all, None)?;
            let mut buf = vec![0u8; 256 * 1024];
            let mut sent = 0u64;
            loop {
                let n = match body.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        read_error = Some(e);
                        return Ok(());
                    }
                };
                stream.write_all(format!("{n:x}\r\n").as_bytes())?;
                stream.write_all(&buf[..n])?;
                stream.write_all(b"\r\n")?;
                sent += n as u64;
                progress(sent);
            }
            stream.write_all(b"0\r\n\r\n")?;
            stream.flush()
        })();
        if let Some(e) = read_error {
            // Closing without the last chunk: the server sees a cut body and keeps nothing.
            drop(stream);
            return Err(e.into());
        }
        match sent {
            Ok(()) => {}
            Err(e) if is_disconnect(&e) => {}
            Err(e) => return Err(e.into()),
        }
        decode(http::read_response(&mut BufReader::new(stream))?)
    }

    /// Sends `parts` (form field name, file), in order, as a `multipart/form-data` `POST path`,
    /// each part named after its file, with `headers`. `progress(sent, total)` counts the whole
    /// body.
    pub fn upload_form(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        parts: &[(&str, &Path)],
        progress: impl FnMut(u64, u64),
    ) -> Result<Response> {
        let boundary = uuid::Uuid::new_v4().simple().to_string();
        let mut pieces = Vec::with_capacity(parts.len() * 2 + 1);
        for (i, (name, file)) in parts.iter().enumerate() {
            let filename = file
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            let piece = open(file)?;
            pieces.push(Piece::Bytes(multipart::part_head(&boundary, i == 0, name, &filename)));
            pieces.push(piece);
        }
        pieces.push(Piece::Bytes(multipart::closing(&boundary)));
        let content_type = format!("multipart/form-data; boundary={boundary}");
        let mut all: Vec<(&str, &str)> = headers
            .iter()
            .filter(|(k, _)| !k.eq_ignore_ascii_case("Content-Type"))
            .copied()
            .collect();
        all.push(("Content-Type", &content_type));
        self.post_pieces(path, &all, pieces, progress)
    }

    fn post_pieces(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        pieces: Vec<Piece<'_>>,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<Response> {
        let total: u64 = pieces.iter().map(Piece::len).sum();
        let mut stream = self.connect()?;
        let sent = (|| -> io::Result<()> {
            http::write_head(&mut stream, "POST", path, headers, Some(total))?;
            let mut buf = vec![0u8; 256 * 1024];
            let mut sent = 0u64;
            progress(0, total);
            for piece in pieces {
                match piece {
                    Piece::Bytes(b) => {
                        stream.write_all(&b)?;
                        sent += b.len() as u64;
                    }
                    Piece::File { mut file, len, path } => {
                        // Exactly the length announced, even if the file changes meanwhile.
                        let mut left = len;
                        while left > 0 {
                            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                            let n = file.read(&mut buf[..want])?;
                            if n == 0 {
                                return Err(io::Error::new(
                                    io::ErrorKind::UnexpectedEof,
                                    format!("{} shrank while being sent", path.display()),
                                ));
                            }
                            stream.write_all(&buf[..n])?;
                            left -= n as u64;
                            sent += n as u64;
                            progress(sent, total);
                        }
                    }
                }
            }
            progress(sent, total);
            stream.flush()
        })();
        match sent {
            Ok(()) => {}
            // corrald refused early and closed: its answer says why.
            Err(e) if is_disconnect(&e) => {}
            Err(e) => return Err(e.into()),
        }
        decode(http::read_response(&mut BufReader::new(stream))?)
    }
}
