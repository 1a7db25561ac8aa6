//! `multipart/form-data`, both ways, streamed: reading the parts of an answer as they arrive
//! (the export of a split image is a `metadata` part and a `rootfs` part), and writing the head
//! of a part to send (a split image's upload, as LXD's client sends it).

use std::io::{self, Read};

/// How much is read from the stream at a time.
const CHUNK: usize = 256 * 1024;
/// Part header lines longer than this are refused: nobody sends them.
const MAX_HEADER: usize = 16 * 1024;

/// The `boundary` parameter of a `multipart/...` content type; `None` for anything else.
pub fn boundary(content_type: &str) -> Option<String> {
    let mut params = content_type.split(';');
    let kind = params.next()?.trim();
    if !kind.to_ascii_lowercase().starts_with("multipart/") {
        return None;
    }
    params
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| unquote(v.trim()))
        .filter(|b| !b.is_empty())
}

/// A parameter of a `Content-Disposition` (`filename="meta.tar.xz"` → `meta.tar.xz`).
pub fn disposition_param(disposition: &str, name: &str) -> Option<String> {
    disposition
        .split(';')
        .skip(1)
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| unquote(v.trim()))
}

fn unquote(v: &str) -> String {
    match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => {
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    if let Some(next) = chars.next() {
                        out.push(next);
                    }
                } else {
                    out.push(c);
                }
            }
            out
        }
        None => v.to_string(),
    }
}

/// The head of a file part, as Go's `multipart.Writer.CreateFormFile` writes it; the first part
/// has no line break before its boundary.
pub fn part_head(boundary: &str, first: bool, name: &str, filename: &str) -> Vec<u8> {
    let quote = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"").replace(['\r', '\n'], " ");
    format!(
        "{}--{boundary}\r\nContent-Disposition: form-data; name=\"{}\"; filename=\"{}\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n",
        if first { "" } else { "\r\n" },
        quote(name),
        quote(filename)
    )
    .into_bytes()
}

/// The end of a multipart body.
pub fn closing(boundary: &str) -> Vec<u8> {
    format!("\r\n--{boundary}--\r\n").into_bytes()
}

/// A part's name and file name, from its `Content-Disposition`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Part {
    pub name: String,
    pub filename: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the first boundary: what is read is thrown away.
    Preamble,
    /// In a part's body: [`Read`] gives it.
    Body,
    /// Just after a boundary: the part's headers (or the closing `--`) come next.
    Boundary,
    /// After the closing boundary.
    Done,
}

/// The parts of a multipart body, read from `inner` as they are asked for: [`Self::next_part`]
/// moves to the next part, and reading gives that part's body.
pub struct MultipartReader<R> {
    inner: R,
    /// `\r\n--<boundary>`: what ends a part.
    delimiter: Vec<u8>,
    /// Read but not yet handed out, from `start`.
    buf: Vec<u8>,
    start: usize,
    /// Where reads from `inner` land.
    scratch: Vec<u8>,
    eof: bool,
    state: State,
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("bad multipart answer: {msg}"))
}

impl<R: Read> MultipartReader<R> {
    pub fn new(inner: R, boundary: &str) -> Self {
        MultipartReader {
            inner,
            delimiter: format!("\r\n--{boundary}").into_bytes(),
            // The first boundary has no line break before it: give it one, so every boundary
            // is the same delimiter.
            buf: b"\r\n".to_vec(),
            start: 0,
            scratch: Vec::new(),
            eof: false,
            state: State::Preamble,
        }
    }

    fn available(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Reads until `want` bytes are buffered, or the stream ends.
    fn fill(&mut self, want: usize) -> io::Result<()> {
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        while self.available().len() < want && !self.eof {
            if self.scratch.is_empty() {
                self.scratch = vec![0u8; CHUNK];
            }
            let n = match self.inner.read(&mut self.scratch) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.buf.extend_from_slice(&self.scratch[..n]);
            if n == 0 {
                self.eof = true;
            }
        }
        Ok(())
    }

    /// One header line, without its line break.
    fn line(&mut self) -> io::Result<String> {
        loop {
            if let Some(i) = self.available().windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.available()[..i]).into_owned();
                self.start += i + 2;
                return Ok(line);
            }
            if self.available().len() > MAX_HEADER {
                return Err(invalid("a part's header line is too long"));
            }
            if self.eof {
                return Err(invalid("it ends in the middle of a part's headers"));
            }
            let want = self.available().len() + 1;
            self.fill(want)?;
        }
    }

    /// Moves to the next part (skipping what is left of the current one); `None` after the
    /// last.
    pub fn next_part(&mut self) -> io::Result<Option<Part>> {
        if matches!(self.state, State::Preamble | State::Body) {
            io::copy(self, &mut io::sink())?;
        }
        if self.state == State::Done {
            return Ok(None);
        }
        // After the delimiter: `--` ends the body; otherwise (optional blanks and) a line break.
        self.fill(2)?;
        if self.available().starts_with(b"--") {
            self.state = State::Done;
            return Ok(None);
        }
        let rest = self.line()?;
        if !rest.trim().is_empty() {
            return Err(invalid("text after a boundary"));
        }
        let mut part = Part::default();
        let mut size = 0;
        loop {
            let line = self.line()?;
            if line.is_empty() {
                break;
            }
            size += line.len();
            if size > MAX_HEADER {
                return Err(invalid("a part's headers are too long"));
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.trim().eq_ignore_ascii_case("Content-Disposition") {
                    part.name = disposition_param(v, "name").unwrap_or_default();
                    part.filename = disposition_param(v, "filename").unwrap_or_default();
                }
            }
        }
        self.state = State::Body;
        Ok(Some(part))
    }
}

/// Reads the current part's body (nothing once it ends: call [`MultipartReader::next_part`]).
impl<R: Read> Read for MultipartReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if !matches!(self.state, State::Preamble | State::Body) || out.is_empty() {
            return Ok(0);
        }
        let dlen = self.delimiter.len();
        self.fill(dlen + out.len().min(CHUNK))?;
        // Look only where the bytes handed out (and a delimiter starting among them) can be.
        let avail = self.available();
        let window = &avail[..avail.len().min(out.len() + dlen - 1)];
        let found = window
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\r')
            .map(|(i, _)| i)
            .find(|&i| window[i..].starts_with(&self.delimiter));
        let n = match found {
            Some(0) => {
                self.start += dlen;
                self.state = State::Boundary;
                return Ok(0);
            }
            Some(i) => i.min(out.len()),
            None if self.eof && avail.len() < dlen + out.len() => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the multipart answer ends in the middle of a part",
                ))
            }
            // A delimiter may start in the last dlen - 1 bytes: keep them for the next read.
            None => (window.len() + 1).saturating_sub(dlen).min(out.len()),
        };
        out[..n].copy_from_slice(&avail[..n]);
        self.start += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that gives at most `step` bytes a call, to cut delimiters in two.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.data.len().min(self.step).min(out.len());
            out[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn body(boundary: &str, parts: &[(&str, &str, &[u8])]) -> Vec<u8> {
        let mut out = b"preamble to ignore\r\n".to_vec();
        for (i, (name, file, data)) in parts.iter().enumerate() {
            if i == 0 {
                // Our writer puts no line break first; a preamble needs one.
                out.extend_from_slice(b"\r\n");
            }
            out.extend(part_head(boundary, i == 0, name, file));
            out.extend_from_slice(data);
        }
        out.extend(closing(boundary));
        out
    }

    fn read_all(data: &[u8], boundary: &str, step: usize, buf_len: usize) -> Vec<(Part, Vec<u8>)> {
        let mut r = MultipartReader::new(Trickle { data, step }, boundary);
        let mut parts = Vec::new();
        while let Some(p) = r.next_part().unwrap() {
            let mut content = Vec::new();
            let mut buf = vec![0u8; buf_len];
            loop {
                let n = r.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                content.extend_from_slice(&buf[..n]);
            }
            parts.push((p, content));
        }
        parts
    }

    #[test]
    fn parts_come_back_whatever_the_read_sizes() {
        let b = "abc123";
        // Contents that look like the delimiter without being it.
        let meta: Vec<u8> = b"x\r\n--abc12\r\n-\r\n--abc1X\r\n--abc12"
            .iter()
            .copied()
            .chain((0..5000u32).map(|i| (i % 251) as u8))
            .collect();
        let rootfs: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(7919) >> 3) as u8).collect();
        let data = body(
            b,
            &[("metadata", "meta-1.tar.xz", &meta), ("rootfs", "1.squashfs", &rootfs)],
        );
        for (step, buf_len) in [(1, 7), (3, 1), (17, 4096), (65536, 100_000), (usize::MAX, 8192)] {
            let parts = read_all(&data, b, step, buf_len);
            assert_eq!(parts.len(), 2, "step {step}");
            assert_eq!(
                parts[0].0,
                Part {
                    name: "metadata".into(),
                    filename: "meta-1.tar.xz".into()
                }
            );
            assert!(parts[0].1 == meta, "metadata differs (step {step}, buffer {buf_len})");
            assert_eq!(parts[1].0.name, "rootfs");
            assert_eq!(parts[1].0.filename, "1.squashfs");
            assert!(parts[1].1 == rootfs, "rootfs differs (step {step}, buffer {buf_len})");
        }
    }

    #[test]
    fn empty_parts_and_skipped_parts() {
        let data = body("b", &[("a", "a", b""), ("b", "b", b"second")]);
        let mut r = MultipartReader::new(&data[..], "b");
        assert_eq!(r.next_part().unwrap().unwrap().name, "a");
        // Not reading a part skips it.
        let p = r.next_part().unwrap().unwrap();
        assert_eq!(p.name, "b");
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        assert_eq!(s, "second");
        assert_eq!(r.next_part().unwrap(), None);
        assert_eq!(r.next_part().unwrap(), None);
    }

    #[test]
    fn truncated_bodies_are_errors() {
        let data = body("b", &[("metadata", "m", b"0123456789")]);
        let cut = &data[..data.len() - 12];
        let mut r = MultipartReader::new(cut, "b");
        r.next_part().unwrap().unwrap();
        let mut sink = Vec::new();
        assert_eq!(
            r.read_to_end(&mut sink).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        let mut r = MultipartReader::new(&b"\r\n--b\r\nContent-Disp"[..], "b");
        assert!(r.next_part().is_err());
    }

    #[test]
    fn content_types_and_dispositions() {
        assert_eq!(
            boundary("multipart/form-data; boundary=\"x y\"").as_deref(),
            Some("x y")
        );
        assert_eq!(boundary("Multipart/Form-Data;boundary=abc").as_deref(), Some("abc"));
        assert_eq!(boundary("application/octet-stream"), None);
        assert_eq!(boundary("multipart/form-data"), None);
        let d = "form-data; name=\"rootfs\"; filename=\"a \\\"b\\\".tar\"";
        assert_eq!(disposition_param(d, "filename").as_deref(), Some("a \"b\".tar"));
        assert_eq!(
            disposition_param("attachment; filename=busybox.tar.gz", "filename").as_deref(),
            Some("busybox.tar.gz")
        );
        assert_eq!(disposition_param("attachment", "filename"), None);
        let head = String::from_utf8(part_head("b", false, "metadata", "a\"b")).unwrap();
        assert_eq!(
            head,
            "\r\n--b\r\nContent-Disposition: form-data; name=\"metadata\"; filename=\"a\\\"b\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        );
    }
}
