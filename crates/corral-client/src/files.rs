//! Streaming downloads: an answer whose body is read as it arrives, for `GET` of an instance's
//! files (`/1.0/instances/{name}/files?path=...`), so that pulling a large file never holds it
//! in memory whole.

use std::io::{self, BufRead, BufReader, Read};

use crate::http::{self, HttpResponse};
use crate::{decode, is_disconnect, Client, ClientError, Result};

/// Header lines longer than this are refused: corrald never sends them.
const MAX_LINE: u64 = 64 * 1024;

/// The body of an answer, read from the socket as the caller reads it.
#[derive(Debug)]
pub struct Download {
    inner: BufReader<crate::Stream>,
    framing: Framing,
}

#[derive(Debug)]
enum Framing {
    /// `Content-Length`: this many bytes are left.
    Length(u64),
    /// `Transfer-Encoding: chunked`: bytes left in the current chunk; `done` after the last.
    Chunked { left: u64, done: bool },
    /// Neither: the body runs to the end of the stream.
    Eof,
}

fn protocol(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn truncated() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "corrald closed the connection in the middle of an answer",
    )
}

/// One line without its `\r\n`; `None` at the end of the stream.
fn read_line(r: &mut impl BufRead) -> io::Result<Option<String>> {
    let mut buf = Vec::new();
    let n = r.by_ref().take(MAX_LINE).read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        return Err(if n as u64 >= MAX_LINE {
            protocol("corrald sent an over-long line")
        } else {
            truncated()
        });
    }
    buf.pop();
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    String::from_utf8(buf)
        .map(Some)
        .map_err(|_| protocol("corrald sent a header that is not UTF-8"))
}

fn need_line(r: &mut impl BufRead) -> io::Result<String> {
    read_line(r)?.ok_or_else(truncated)
}

impl Read for Download {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        match &mut self.framing {
            Framing::Eof => self.inner.read(buf),
            Framing::Length(left) => {
                if *left == 0 {
                    return Ok(0);
                }
                let want = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                let n = self.inner.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(truncated());
                }
                *left -= n as u64;
                Ok(n)
            }
            Framing::Chunked { left, done } => {
                if *done {
                    return Ok(0);
                }
                if *left == 0 {
                    let line = need_line(&mut self.inner)?;
                    let size = line.split(';').next().unwrap_or_default().trim();
                    let size =
                        u64::from_str_radix(size, 16).map_err(|_| protocol(format!("bad chunk size: {line:?}")))?;
                    if size == 0 {
                        // Trailers, up to the empty line (or the end of the stream).
                        while let Some(l) = read_line(&mut self.inner)? {
                            if l.is_empty() {
                                break;
                            }
                        }
                        *done = true;
                        return Ok(0);
                    }
                    *left = size;
                }
                let want = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                let n = self.inner.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(truncated());
                }
                *left -= n as u64;
                if *left == 0 && !need_line(&mut self.inner)?.is_empty() {
                    return Err(protocol("a chunk is longer than its size says"));
                }
                Ok(n)
            }
        }
    }
}

impl Client {
    /// `GET path`, answering the status and headers (`body` left empty) and a reader of the
    /// body, which comes from the socket as it is read. An error answer is an `Err` with the
    /// daemon's message, as [`Client::request`] has it.
    pub fn download(&self, path: &str) -> Result<(HttpResponse, Download)> {
        let mut stream = self.connect()?;
        if let Err(e) = http::write_head(&mut stream, "GET", path, &[], None) {
            if !is_disconnect(&e) {
                return Err(e.into());
            }
        }
        let mut r = BufReader::new(stream);
        let status_line = read_line(&mut r)?
            .ok_or_else(|| ClientError::Protocol("corrald closed the connection without answering".into()))?;
        let mut parts = status_line.splitn(3, ' ');
        if !parts.next().unwrap_or_default().starts_with("HTTP/1.") {
            return Err(ClientError::Protocol(format!("not an HTTP answer: {status_line:?}")));
        }
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ClientError::Protocol(format!("bad HTTP status line: {status_line:?}")))?;
        let reason = parts.next().unwrap_or_default().to_string();
        let mut headers = Vec::new();
        loop {
            let line = need_line(&mut r)?;
            if line.is_empty() {
                break;
            }
            if headers.len() > 256 {
                return Err(ClientError::Protocol("corrald sent too many headers".into()));
            }
            let (k, v) = line
                .split_once(':')
                .ok_or_else(|| ClientError::Protocol(format!("bad HTTP header: {line:?}")))?;
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        let resp = HttpResponse {
            status,
            reason,
            headers,
            body: Vec::new(),
        };
        let chunked = resp
            .header("Transfer-Encoding")
            .is_some_and(|te| te.split(',').any(|t| t.trim().eq_ignore_ascii_case("chunked")));
        let framing = if (100..200).contains(&status) || status == 204 || status == 304 {
            Framing::Length(0)
        } else if chunked {
            Framing::Chunked { left: 0, done: false }
        } else if let Some(len) = resp.header("Content-Length") {
            Framing::Length(
                len.parse()
                    .map_err(|_| ClientError::Protocol(format!("bad Content-Length: {len:?}")))?,
            )
        } else {
            Framing::Eof
        };
        let mut body = Download { inner: r, framing };
        if status >= 400 {
            let mut resp = resp;
            body.by_ref().take(16 << 20).read_to_end(&mut resp.body)?;
            return Err(decode(resp).err().unwrap_or_else(|| ClientError::Api {
                code: status,
                message: format!("HTTP {status}"),
            }));
        }
        Ok((resp, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixListener;

    fn serve(reply: Vec<u8>) -> (std::path::PathBuf, std::thread::JoinHandle<()>) {
        let dir = std::env::temp_dir().join(format!("corral-client-download-{}-{}", std::process::id(), uuid_like()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("unix.socket");
        let listener = UnixListener::bind(&sock).unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            while read_line(&mut r).unwrap().is_some_and(|l| !l.is_empty()) {}
            s.write_all(&reply).unwrap();
        });
        (sock, t)
    }

    fn uuid_like() -> u128 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    }

    fn get(reply: &str) -> Result<(HttpResponse, Vec<u8>)> {
        let (sock, t) = serve(reply.as_bytes().to_vec());
        let c = Client::new(&sock);
        let r = c.download("/1.0/instances/c1/files?path=%2Fx").map(|(resp, mut body)| {
            let mut out = Vec::new();
            let res = body.read_to_end(&mut out).map(|_| out);
            (resp, res)
        });
        t.join().unwrap();
        let _ = std::fs::remove_dir_all(sock.parent().unwrap());
        let (resp, body) = r?;
        Ok((resp, body?))
    }

    #[test]
    fn framings() {
        let (resp, body) = get("HTTP/1.1 200 OK\r\nX-LXD-type: file\r\nContent-Length: 5\r\n\r\nhello").unwrap();
        assert_eq!(
            (resp.header("x-lxd-type"), body.as_slice()),
            (Some("file"), &b"hello"[..])
        );
        let (_, body) =
            get("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n").unwrap();
        assert_eq!(body, b"abcde");
        let (_, body) = get("HTTP/1.1 200 OK\r\n\r\nto the end").unwrap();
        assert_eq!(body, b"to the end");
        assert!(get("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort").is_err());
    }

    #[test]
    fn errors_are_decoded() {
        let body = r#"{"type":"error","error_code":404,"error":"/x: not found","metadata":null}"#;
        let err = get(&format!(
            "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ))
        .unwrap_err();
        assert!(err.is_not_found());
        assert_eq!(err.to_string(), "/x: not found");
    }
}
