//! A small blocking client for corrald's REST API 1.0 (LXD's API) on its unix socket.
//!
//! No async runtime: each request opens a connection to `$CORRAL_DIR/unix.socket`, writes an
//! HTTP/1.1 request and reads the answer ([`http`]). Answers are LXD's JSON envelopes
//! ([`corral_api::Response`]); error envelopes become [`ClientError::Api`], whose text is the
//! daemon's own message (`Instance not found: c1`). Background work is an operation that
//! [`Client::wait_operation`] waits for; exec's websockets and the event stream go through
//! `tungstenite` over the same socket ([`Client::websocket`], [`Client::exec`],
//! [`Client::events`]). Image files go up and down streamed ([`Client::upload`],
//! [`Client::upload_form`], [`Client::download`], [`multipart`]).
//!
//! ```no_run
//! use corral_client::Client;
//! let client = Client::from_env();
//! let names: Vec<String> = client.get("/1.0/instances")?;
//! let resp = client.put("/1.0/instances/c1/state", &serde_json::json!({"action": "start", "timeout": -1}))?;
//! client.wait(&resp, None)?;
//! # Ok::<(), corral_client::ClientError>(())
//! ```

use std::io::{self, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use corral_api::{Operation, Response, ResponseType, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

mod events;
mod exec;
mod exec_pump;
pub mod files;
pub mod http;
pub mod multipart;
pub mod transport;
mod upload;

pub use events::EventStream;
pub use exec::ExecOptions;
pub use http::HttpResponse;
pub use transport::{ClientIdentity, Endpoint, Remote, ServerTrust, Stream};
pub use tungstenite;

/// A websocket to corrald.
pub type WebSocket = tungstenite::WebSocket<Stream>;

/// Everything that can go wrong talking to corrald.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket is missing, or nobody listens on it.
    #[error("{}", unreachable_message(socket, cause))]
    Unreachable { socket: PathBuf, cause: io::Error },
    /// A remote's HTTPS address cannot be reached, or its TLS handshake failed.
    #[error("cannot reach {addr}: {cause}")]
    UnreachableRemote { addr: String, cause: io::Error },
    /// corrald answered with an error: the text is its own message.
    #[error("{message}")]
    Api { code: u16, message: String },
    /// An operation failed (or was cancelled): its `err`.
    #[error("{0}")]
    Operation(String),
    /// An operation did not finish in the time given.
    #[error("timed out waiting for operation {0}")]
    Timeout(String),
    /// corrald sent something that is not HTTP, or not the JSON expected.
    #[error("bad answer from corrald: {0}")]
    Protocol(String),
    #[error("websocket: {0}")]
    WebSocket(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

fn unreachable_message(socket: &Path, cause: &io::Error) -> String {
    match cause.kind() {
        io::ErrorKind::PermissionDenied => format!(
            "cannot reach corrald at {}: permission denied (run as root)",
            socket.display()
        ),
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => format!(
            "cannot reach corrald at {}: is it running? (start it with `corrald`)",
            socket.display()
        ),
        _ => format!("cannot reach corrald at {}: {cause}", socket.display()),
    }
}

impl ClientError {
    /// The HTTP status of an API error (404 for "not found"); `None` for other errors.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether this is an API "not found" (404).
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// `$CORRAL_DIR/unix.socket`, `CORRAL_DIR` defaulting to /var/lib/corral.
pub fn default_socket() -> PathBuf {
    std::env::var_os("CORRAL_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/corral"))
        .join("unix.socket")
}

/// Percent-encodes one path segment (an instance, alias or profile name).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A connection factory for one corrald.
#[derive(Debug, Clone)]
pub struct Client {
    endpoint: Endpoint,
}

impl Client {
    /// A client for the daemon listening on `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Client {
        Client {
            endpoint: Endpoint::Unix(socket.into()),
        }
    }

    /// A client for a daemon's HTTPS API.
    pub fn remote(remote: Remote) -> Client {
        Client {
            endpoint: Endpoint::Https(remote),
        }
    }

    /// A client for [`default_socket`].
    pub fn from_env() -> Client {
        Client::new(default_socket())
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Where it connects, as a URL (`unix:///var/lib/corral/unix.socket`, `https://10.0.0.1:8443`).
    pub fn url(&self) -> String {
        match &self.endpoint {
            Endpoint::Unix(p) => format!("unix://{}", p.display()),
            Endpoint::Https(r) => format!("https://{}", r.addr),
        }
    }

    /// Opens one connection.
    pub fn connect(&self) -> Result<Stream> {
        match &self.endpoint {
            Endpoint::Unix(socket) => {
                UnixStream::connect(socket)
                    .map(Stream::Unix)
                    .map_err(|cause| ClientError::Unreachable {
                        socket: socket.clone(),
                        cause,
                    })
            }
            Endpoint::Https(r) => r.connect().map_err(|cause| ClientError::UnreachableRemote {
                addr: r.addr.clone(),
                cause,
            }),
        }
    }

    /// Sends one request and reads the whole answer, whatever its status.
    pub fn raw(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Result<HttpResponse> {
        let mut stream = self.connect()?;
        let mut head = Vec::new();
        http::write_head(&mut head, method, path, headers, body.map(|b| b.len() as u64))?;
        if let Some(b) = body {
            head.extend_from_slice(b);
        }
        if let Err(e) = stream.write_all(&head) {
            // corrald may have answered (and closed) before reading everything: read that answer.
            if !is_disconnect(&e) {
                return Err(e.into());
            }
        }
        http::read_response(&mut BufReader::new(stream))
    }

    /// Sends a request with an optional JSON body; an error envelope (or a non-JSON error) is an
    /// `Err`.
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Response> {
        self.request_with(method, path, &[], body).map(|(r, _)| r)
    }

    /// Like [`Client::request`], with extra headers; also returns the answer's ETag.
    pub fn request_with(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<(Response, Option<String>)> {
        let bytes = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if bytes.is_some() {
            all.push(("Content-Type", "application/json"));
        }
        let resp = self.raw(method, path, &all, bytes.as_deref())?;
        let etag = resp.header("ETag").map(|t| t.trim_matches('"').to_string());
        Ok((decode(resp)?, etag))
    }

    /// `GET path`, the metadata read as `T`.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.get_with_etag(path).map(|(v, _)| v)
    }

    /// `GET path`, the metadata read as `T`, and the ETag (for an `If-Match` on the update).
    pub fn get_with_etag<T: DeserializeOwned>(&self, path: &str) -> Result<(T, Option<String>)> {
        /// A success's envelope with its metadata read straight into `T`: a list of a thousand
        /// instances is parsed once, not into a `Value` first and then again.
        #[derive(serde::Deserialize)]
        struct Answer<T> {
            #[serde(rename = "type")]
            kind: ResponseType,
            metadata: T,
        }
        let resp = self.raw("GET", path, &[], None)?;
        let etag = resp.header("ETag").map(|t| t.trim_matches('"').to_string());
        if resp.status < 400 {
            if let Ok(answer) = serde_json::from_slice::<Answer<T>>(&resp.body) {
                if answer.kind != ResponseType::Error {
                    return Ok((answer.metadata, etag));
                }
            }
        }
        // An error, or metadata that is not a `T`: said as such.
        let resp = decode(resp)?;
        let v = serde_json::from_value(resp.metadata)
            .map_err(|e| ClientError::Protocol(format!("unexpected answer to GET {path}: {e}")))?;
        Ok((v, etag))
    }

    fn send<B: Serialize + ?Sized>(&self, method: &str, path: &str, body: &B) -> Result<Response> {
        let v = serde_json::to_value(body).map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.request(method, path, Some(&v))
    }

    pub fn post<B: Serialize + ?Sized>(&self, path: &str, body: &B) -> Result<Response> {
        self.send("POST", path, body)
    }

    pub fn put<B: Serialize + ?Sized>(&self, path: &str, body: &B) -> Result<Response> {
        self.send("PUT", path, body)
    }

    /// `PUT` with `If-Match: "<etag>"`, so that a concurrent change is refused (412).
    pub fn put_if_match<B: Serialize + ?Sized>(&self, path: &str, body: &B, etag: Option<&str>) -> Result<Response> {
        let v = serde_json::to_value(body).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let tag = etag.map(|t| format!("\"{t}\""));
        let headers: Vec<(&str, &str)> = tag.iter().map(|t| ("If-Match", t.as_str())).collect();
        self.request_with("PUT", path, &headers, Some(&v)).map(|(r, _)| r)
    }

    pub fn patch<B: Serialize + ?Sized>(&self, path: &str, body: &B) -> Result<Response> {
        self.send("PATCH", path, body)
    }

    pub fn delete(&self, path: &str) -> Result<Response> {
        self.request("DELETE", path, None)
    }

    /// Waits for the operation `op` (its id, or its URL `/1.0/operations/<id>`) to finish, at
    /// most `timeout` (`None`: for ever). A failed or cancelled operation is an `Err` with its
    /// `err` as the text.
    pub fn wait_operation(&self, op: &str, timeout: Option<Duration>) -> Result<Operation> {
        let id = op.trim_end_matches('/').rsplit('/').next().unwrap_or(op);
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let secs = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()).as_secs_f64(),
                None => -1.0,
            };
            let op: Operation = self.get(&format!("/1.0/operations/{}/wait?timeout={secs}", encode_segment(id)))?;
            if op.status_code.is_final() {
                return match op.status_code {
                    StatusCode::FAILURE | StatusCode::CANCELLED => Err(ClientError::Operation(if op.err.is_empty() {
                        format!("operation {} {}", op.id, op.status.to_lowercase())
                    } else {
                        op.err
                    })),
                    _ => Ok(op),
                };
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(ClientError::Timeout(id.to_string()));
            }
        }
    }

    /// The result of a request: for an async answer, waits for its operation (at most `timeout`)
    /// and returns it; for a sync one, an operation holding its metadata.
    pub fn wait(&self, resp: &Response, timeout: Option<Duration>) -> Result<Operation> {
        match resp.kind {
            ResponseType::Async => {
                let url = if resp.operation.is_empty() {
                    resp.metadata["id"].as_str().unwrap_or_default().to_string()
                } else {
                    resp.operation.clone()
                };
                if url.is_empty() {
                    return Err(ClientError::Protocol("an async answer without an operation".into()));
                }
                self.wait_operation(&url, timeout)
            }
            _ => Ok(Operation {
                status: "Success".into(),
                status_code: StatusCode::SUCCESS,
                metadata: resp.metadata.clone(),
                ..Operation::default()
            }),
        }
    }

    /// Connects to an operation's websocket (`secret` from its metadata).
    pub fn websocket(&self, operation: &str, secret: &str) -> Result<WebSocket> {
        let id = operation.trim_end_matches('/').rsplit('/').next().unwrap_or(operation);
        self.websocket_at(&format!(
            "/1.0/operations/{}/websocket?secret={}",
            encode_segment(id),
            encode_segment(secret)
        ))
    }

    /// Connects to several of an operation's websockets. On the unix socket every handshake is
    /// sent before any answer is read, so they cost one round trip together, not one each.
    pub fn websockets(&self, operation: &str, secrets: &[&str]) -> Result<Vec<WebSocket>> {
        let id = operation.trim_end_matches('/').rsplit('/').next().unwrap_or(operation);
        let path = |secret: &str| {
            format!(
                "/1.0/operations/{}/websocket?secret={}",
                encode_segment(id),
                encode_segment(secret)
            )
        };
        if !matches!(self.endpoint, Endpoint::Unix(_)) {
            return secrets.iter().map(|s| self.websocket_at(&path(s))).collect();
        }
        let mut started = Vec::with_capacity(secrets.len());
        for secret in secrets {
            let stream = self.connect()?;
            set_blocking(&stream, false)?;
            let url = format!("ws://{}{}", http::HOST, path(secret));
            started.push(tungstenite::client::client_with_config(
                url.as_str(),
                stream,
                Some(exec_socket_config()),
            ));
        }
        started
            .into_iter()
            .map(|mut attempt| loop {
                match attempt {
                    Ok((ws, _)) => {
                        set_blocking(ws.get_ref(), true)?;
                        return Ok(ws);
                    }
                    Err(tungstenite::HandshakeError::Interrupted(mid)) => {
                        set_blocking(mid.get_ref().get_ref(), true)?;
                        attempt = mid.handshake();
                    }
                    Err(tungstenite::HandshakeError::Failure(e)) => return Err(refused(e)),
                }
            })
            .collect()
    }

    /// Connects to the websocket at `path` (with its query); a refusal is the daemon's error.
    pub fn websocket_at(&self, path: &str) -> Result<WebSocket> {
        let url = format!("ws://{}{path}", http::HOST);
        let stream = self.connect()?;
        match tungstenite::client(url.as_str(), stream) {
            Ok((ws, _)) => Ok(ws),
            Err(tungstenite::HandshakeError::Failure(e)) => Err(refused(e)),
            Err(e) => Err(ClientError::WebSocket(e.to_string())),
        }
    }
}

fn set_blocking(stream: &Stream, blocking: bool) -> Result<()> {
    if let Stream::Unix(s) = stream {
        s.set_nonblocking(!blocking)?;
    }
    Ok(())
}

/// The configuration of the websockets [`Client::websockets`] opens (an exec's streams).
/// tungstenite zero-fills its whole read buffer before every read, 128 KiB by default: for an
/// `exec -- true` over four websockets that memset, and the buffers' mmap and munmap, were about
/// a tenth of the CLI's CPU (perf record). 16 KiB still takes a frame of a pipe's output in a few
/// reads.
fn exec_socket_config() -> tungstenite::protocol::WebSocketConfig {
    tungstenite::protocol::WebSocketConfig::default().read_buffer_size(16 * 1024)
}

/// A failed websocket handshake as an error: the daemon's own error when it answered with one.
fn refused(e: tungstenite::Error) -> ClientError {
    match e {
        tungstenite::Error::Http(resp) => {
            let status = resp.status().as_u16();
            let body = resp.body().clone().unwrap_or_default();
            decode(HttpResponse {
                status,
                reason: resp.status().canonical_reason().unwrap_or_default().to_string(),
                headers: Vec::new(),
                body,
            })
            .err()
            .unwrap_or_else(|| ClientError::WebSocket(format!("corrald refused the websocket (HTTP {status})")))
        }
        e => ClientError::WebSocket(e.to_string()),
    }
}

fn is_disconnect(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
    )
}

/// Reads an answer's JSON envelope; error envelopes and failed HTTP statuses become errors.
pub fn decode(resp: HttpResponse) -> Result<Response> {
    match serde_json::from_slice::<Response>(&resp.body) {
        Ok(r) if r.kind == ResponseType::Error => Err(ClientError::Api {
            code: if r.error_code != 0 { r.error_code } else { resp.status },
            message: if r.error.is_empty() {
                format!("HTTP {} {}", resp.status, resp.reason)
            } else {
                r.error
            },
        }),
        Ok(r) if resp.status < 400 => Ok(r),
        _ if resp.status >= 400 => {
            let text = String::from_utf8_lossy(&resp.body).trim().to_string();
            Err(ClientError::Api {
                code: resp.status,
                message: if text.is_empty() {
                    format!("HTTP {} {}", resp.status, resp.reason)
                } else {
                    text
                },
            })
        }
        Ok(r) => Ok(r),
        Err(e) => Err(ClientError::Protocol(format!(
            "HTTP {} with a body that is not an API answer ({e})",
            resp.status
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixListener;

    fn answer(status: u16, body: &str) -> HttpResponse {
        HttpResponse {
            status,
            reason: "X".into(),
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn decode_envelopes() {
        let ok = decode(answer(200, r#"{"type":"sync","status_code":200,"metadata":["/1.0"]}"#)).unwrap();
        assert_eq!(ok.metadata, serde_json::json!(["/1.0"]));
        let err = decode(answer(
            404,
            r#"{"type":"error","error_code":404,"error":"Instance not found: c1","metadata":null}"#,
        ))
        .unwrap_err();
        assert_eq!(err.to_string(), "Instance not found: c1");
        assert!(err.is_not_found());
        let err = decode(answer(405, "Method Not Allowed")).unwrap_err();
        assert_eq!(err.to_string(), "Method Not Allowed");
        assert_eq!(err.status(), Some(405));
        assert!(matches!(decode(answer(200, "<html>")), Err(ClientError::Protocol(_))));
    }

    #[test]
    fn missing_socket_message() {
        let c = Client::new("/nonexistent/corral/unix.socket");
        let err = c.get::<Value>("/1.0").unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot reach corrald at /nonexistent/corral/unix.socket: is it running? (start it with `corrald`)"
        );
    }

    #[test]
    fn segments() {
        assert_eq!(encode_segment("c1"), "c1");
        assert_eq!(encode_segment("debian/12 x"), "debian%2F12%20x");
    }

    /// A one-shot server that answers every connection with `reply` and hands back what it read.
    fn serve(reply: String) -> (tempdir::Dir, std::thread::JoinHandle<Vec<u8>>) {
        let dir = tempdir::Dir::new();
        let listener = UnixListener::bind(dir.path().join("unix.socket")).unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            // Read the head, then as many body bytes as Content-Length says.
            loop {
                let n = s.read(&mut buf).unwrap();
                req.extend_from_slice(&buf[..n]);
                if let Some(end) = req.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&req[..end]).to_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .map(|l| l.trim().parse().unwrap())
                        .unwrap_or(0);
                    while req.len() < end + 4 + len {
                        let n = s.read(&mut buf).unwrap();
                        req.extend_from_slice(&buf[..n]);
                    }
                    break;
                }
            }
            s.write_all(reply.as_bytes()).unwrap();
            req
        });
        (dir, t)
    }

    mod tempdir {
        pub struct Dir(std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                let p = std::env::temp_dir().join(format!(
                    "corral-client-test-{}-{}",
                    std::process::id(),
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_nanos()
                ));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
            pub fn path(&self) -> &std::path::Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn chunked_json_over_a_socket() {
        let (dir, t) = serve(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n\
             10\r\n{\"type\":\"sync\",\"\r\n16\r\nmetadata\":{\"a\":[1,2]}}\r\n0\r\n\r\n"
                .to_string(),
        );
        let c = Client::new(dir.path().join("unix.socket"));
        let v: Value = c.get("/1.0/x").unwrap();
        assert_eq!(v, serde_json::json!({"a":[1,2]}));
        let req = String::from_utf8(t.join().unwrap()).unwrap();
        assert!(req.starts_with("GET /1.0/x HTTP/1.1\r\n"), "{req}");
    }

    #[test]
    fn upload_sends_the_file_with_progress() {
        let body = r#"{"type":"async","operation":"/1.0/operations/abc","metadata":{"id":"abc"}}"#;
        let (dir, t) = serve(format!(
            "HTTP/1.1 202 Accepted\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
        let file = dir.path().join("image.tar.xz");
        std::fs::write(&file, vec![7u8; 600_000]).unwrap();
        let c = Client::new(dir.path().join("unix.socket"));
        let mut calls = Vec::new();
        let r = c
            .upload("/1.0/images", &[("X-LXD-public", "false")], &file, |s, t| {
                calls.push((s, t))
            })
            .unwrap();
        assert_eq!(r.operation, "/1.0/operations/abc");
        assert_eq!(calls.first(), Some(&(0, 600_000)));
        assert_eq!(calls.last(), Some(&(600_000, 600_000)));
        let req = t.join().unwrap();
        let end = req.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&req[..end]);
        assert!(head.contains("Content-Length: 600000"), "{head}");
        assert!(head.contains("Content-Type: application/octet-stream"), "{head}");
        assert_eq!(req.len() - end - 4, 600_000);
    }

    #[test]
    fn upload_form_sends_the_parts_in_order() {
        let body = r#"{"type":"async","operation":"/1.0/operations/abc","metadata":{"id":"abc"}}"#;
        let (dir, t) = serve(format!(
            "HTTP/1.1 202 Accepted\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
        let meta = dir.path().join("meta.tar.xz");
        let rootfs = dir.path().join("rootfs.squashfs");
        std::fs::write(&meta, b"metadata bytes").unwrap();
        let rootfs_data: Vec<u8> = (0..700_000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(&rootfs, &rootfs_data).unwrap();
        let c = Client::new(dir.path().join("unix.socket"));
        let mut last = (0, 0);
        c.upload_form(
            "/1.0/images",
            &[("X-LXD-public", "false"), ("Content-Type", "application/octet-stream")],
            &[("metadata", &meta), ("rootfs", &rootfs)],
            |s, t| last = (s, t),
        )
        .unwrap();
        let req = t.join().unwrap();
        let end = req.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&req[..end]).into_owned();
        let body = &req[end + 4..];
        assert_eq!(last, (body.len() as u64, body.len() as u64));
        assert!(head.contains(&format!("Content-Length: {}", body.len())), "{head}");
        assert!(!head.contains("application/octet-stream"), "{head}");
        let ctype = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Type: "))
            .expect("a content type");
        let boundary = multipart::boundary(ctype).expect("multipart");
        let mut r = multipart::MultipartReader::new(body, &boundary);
        let p = r.next_part().unwrap().unwrap();
        assert_eq!((p.name.as_str(), p.filename.as_str()), ("metadata", "meta.tar.xz"));
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"metadata bytes");
        let p = r.next_part().unwrap().unwrap();
        assert_eq!((p.name.as_str(), p.filename.as_str()), ("rootfs", "rootfs.squashfs"));
        got.clear();
        r.read_to_end(&mut got).unwrap();
        assert!(got == rootfs_data);
        assert_eq!(r.next_part().unwrap(), None);
    }
}
