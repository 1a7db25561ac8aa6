//! Just enough HTTP/1.1 to talk to corrald: one request per connection (`Connection: close`),
//! answers with a `Content-Length`, a chunked body, or a body that runs to the end of the stream.

use std::io::{self, BufRead, Read, Write};

use crate::ClientError;

/// The `Host` header (and websocket URL host) sent on the unix socket, as `lxc` does.
pub const HOST: &str = "unix.socket";

/// Refuse header blocks and chunk-size lines longer than this: corrald never sends them.
const MAX_LINE: usize = 64 * 1024;

/// An HTTP answer, body read in full.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpResponse {
    /// The status code (`200`).
    pub status: u16,
    /// The reason phrase (`OK`).
    pub reason: String,
    /// Headers in order, names as sent.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Writes the request line and headers (and `Content-Length` when there is a body).
pub fn write_head(
    w: &mut impl Write,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    content_length: Option<u64>,
) -> io::Result<()> {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nUser-Agent: corral/{}\r\nConnection: close\r\n",
        env!("CARGO_PKG_VERSION")
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(n) = content_length {
        head.push_str(&format!("Content-Length: {n}\r\n"));
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes())
}

fn protocol(msg: impl Into<String>) -> ClientError {
    ClientError::Protocol(msg.into())
}

/// Reads one line ending in `\n`, without its `\r\n`. `None` at end of stream before any byte.
fn read_line(r: &mut impl BufRead) -> Result<Option<String>, ClientError> {
    let mut buf = Vec::new();
    let n = r.by_ref().take(MAX_LINE as u64).read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        return Err(if n >= MAX_LINE {
            protocol("corrald sent an over-long header line")
        } else {
            protocol("corrald closed the connection in the middle of an answer")
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

fn need_line(r: &mut impl BufRead) -> Result<String, ClientError> {
    read_line(r)?.ok_or_else(|| protocol("corrald closed the connection in the middle of an answer"))
}

/// Reads an answer: status line, headers, and the body however it is framed.
pub fn read_response(r: &mut impl BufRead) -> Result<HttpResponse, ClientError> {
    let status_line = read_line(r)?.ok_or_else(|| protocol("corrald closed the connection without answering"))?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(protocol(format!("not an HTTP answer: {status_line:?}")));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| protocol(format!("bad HTTP status line: {status_line:?}")))?;
    let reason = parts.next().unwrap_or_default().to_string();

    let mut headers = Vec::new();
    let mut total = 0;
    loop {
        let line = need_line(r)?;
        if line.is_empty() {
            break;
        }
        total += line.len();
        if total > MAX_LINE {
            return Err(protocol("corrald sent too many headers"));
        }
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| protocol(format!("bad HTTP header: {line:?}")))?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let mut resp = HttpResponse {
        status,
        reason,
        headers,
        body: Vec::new(),
    };

    if (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(resp);
    }
    let chunked = resp
        .header("Transfer-Encoding")
        .is_some_and(|te| te.split(',').any(|t| t.trim().eq_ignore_ascii_case("chunked")));
    if chunked {
        resp.body = read_chunked(r)?;
    } else if let Some(len) = resp.header("Content-Length") {
        let len: u64 = len
            .parse()
            .map_err(|_| protocol(format!("bad Content-Length: {len:?}")))?;
        let mut body = Vec::with_capacity(len.min(1 << 20) as usize);
        r.take(len).read_to_end(&mut body)?;
        if (body.len() as u64) < len {
            return Err(protocol("corrald closed the connection in the middle of an answer"));
        }
        resp.body = body;
    } else {
        r.read_to_end(&mut resp.body)?;
    }
    Ok(resp)
}

fn read_chunked(r: &mut impl BufRead) -> Result<Vec<u8>, ClientError> {
    let mut body = Vec::new();
    loop {
        let line = need_line(r)?;
        let size = line.split(';').next().unwrap_or_default().trim();
        let size = u64::from_str_radix(size, 16).map_err(|_| protocol(format!("bad chunk size: {line:?}")))?;
        if size == 0 {
            // Trailers, up to the empty line (or the end of the stream).
            while let Some(line) = read_line(r)? {
                if line.is_empty() {
                    break;
                }
            }
            return Ok(body);
        }
        let before = body.len();
        r.take(size).read_to_end(&mut body)?;
        if (body.len() - before) as u64 != size {
            return Err(protocol("corrald closed the connection in the middle of a chunk"));
        }
        let end = need_line(r)?;
        if !end.is_empty() {
            return Err(protocol("a chunk is longer than its size says"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<HttpResponse, ClientError> {
        read_response(&mut io::BufReader::new(raw.as_bytes()))
    }

    #[test]
    fn content_length() {
        let r =
            parse("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\ncontent-length: 5\r\n\r\nhelloEXTRA").unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.reason, "OK");
        assert_eq!(r.header("Content-Type"), Some("application/json"));
        assert_eq!(r.body, b"hello");
    }

    #[test]
    fn chunked() {
        let r = parse(
            "HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n6;ext=1\r\npedia \r\nE\r\nin \r\n\r\nchunks.\r\n0\r\nX-Trailer: 1\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(r.body, b"Wikipedia in \r\n\r\nchunks.");
    }

    #[test]
    fn until_eof() {
        let r = parse("HTTP/1.0 200 OK\nServer: x\n\nall of it").unwrap();
        assert_eq!(r.body, b"all of it");
        assert_eq!(parse("HTTP/1.1 204 No Content\r\n\r\n").unwrap().body, b"");
    }

    #[test]
    fn truncated_and_garbage() {
        assert!(parse("").is_err());
        assert!(parse("SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(parse("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort").is_err());
        assert!(parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab").is_err());
        assert!(parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err());
        assert!(parse("HTTP/1.1 200 OK\r\nContent-Length: 1").is_err());
    }

    #[test]
    fn request_head() {
        let mut out = Vec::new();
        write_head(&mut out, "POST", "/1.0/images", &[("X-LXD-public", "false")], Some(3)).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("POST /1.0/images HTTP/1.1\r\nHost: unix.socket\r\n"));
        assert!(text.contains("\r\nX-LXD-public: false\r\n"));
        assert!(text.ends_with("Content-Length: 3\r\n\r\n"));
    }
}
