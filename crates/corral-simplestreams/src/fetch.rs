//! The HTTP(S) side: documents and files from one server.
//!
//! A file is downloaded to `<dest>.partial`. When the connection breaks (or a previous attempt,
//! even by another process, left a `.partial`), the download goes on from where it stopped with
//! a `Range: bytes=<n>-` request; a server that answers 200 instead of 206 sends the file again
//! from its start. The finished file's size and sha256 are checked before it is renamed to
//! `dest`; a file that does not match is deleted, `.partial` included.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};
use ureq::unversioned::resolver::DefaultResolver;
use ureq::unversioned::transport::{Connector, TcpConnector};
use ureq::Agent;

use crate::pinned::PinnedTls;

use crate::resolve::{Catalog, RemoteFile};
use crate::types::{Products, Stream};
use crate::{safe_relative, Error, INDEX_PATH};

/// How often one download is resumed before giving up.
const MAX_ATTEMPTS: u32 = 6;
/// A document larger than this is refused (images.json of the largest public server: a few MiB).
const DOCUMENT_LIMIT: u64 = 128 << 20;

/// Options of a [`Client`].
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// The server's certificate (PEM): the only one trusted for it, as pinned (a self-signed
    /// server's), or as the server's own certificate authority; `None`: the host's roots (`SSL_CERT_FILE`, else
    /// `/etc/ssl/certs/ca-certificates.crt`), else the built-in Mozilla roots.
    pub certificate: Option<String>,
    /// The User-Agent header; `None`: `corral`.
    pub user_agent: Option<String>,
    /// Connect timeout; `None`: 15 s.
    pub connect_timeout: Option<Duration>,
}

/// The headers of a URL's answer that say where its image is ([`Client::image_url_headers`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UrlAnswer {
    /// `LXD-Image-URL` (or `Incus-Image-URL`).
    pub image_url: Option<String>,
    /// `LXD-Image-Hash` (or `Incus-Image-Hash`).
    pub image_hash: Option<String>,
    pub content_length: Option<u64>,
}

/// Download progress of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the file on disk so far (resumed bytes included).
    pub done: u64,
    /// The file's size (0 when unknown).
    pub total: u64,
}

/// A client of one simplestreams server.
#[derive(Clone)]
pub struct Client {
    base: String,
    agent: Agent,
    /// Pause between two attempts of a download.
    retry_pause: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("base", &self.base).finish()
    }
}

fn unreachable(url: &str, e: impl std::fmt::Display) -> Error {
    Error::Unreachable {
        url: url.to_string(),
        detail: e.to_string(),
    }
}

impl Client {
    /// A client of the server at `server` (`http://` or `https://`, any path prefix).
    pub fn new(server: &str, options: ClientOptions) -> Result<Client, Error> {
        let base = server.trim().trim_end_matches('/').to_string();
        let scheme_ok = base.starts_with("https://") || base.starts_with("http://");
        if !scheme_ok || base.len() <= "https://".len() {
            return Err(Error::Unsupported(format!(
                "invalid image server URL {server:?}: it must start with https:// or http://"
            )));
        }
        let mut tls = TlsConfig::builder();
        let mut pinned = None;
        if let Some(pem) = options.certificate.as_deref().filter(|p| !p.trim().is_empty()) {
            let certs = pem_certs(pem.as_bytes());
            if certs.is_empty() {
                return Err(Error::Unsupported(
                    "invalid server certificate: no PEM certificate in it".into(),
                ));
            }
            let der = certs.iter().map(|c| c.der().to_vec()).collect();
            pinned = Some(PinnedTls::new(der).map_err(|e| Error::Unsupported(format!("TLS set-up for {base}: {e}")))?);
        } else if let Some(certs) = system_roots() {
            tls = tls.root_certs(RootCerts::Specific(Arc::new(certs)));
        }
        let config = Agent::config_builder()
            .tls_config(tls.build())
            // Only the URL the user gave: no proxy picked up from the environment.
            .proxy(None)
            .http_status_as_error(false)
            .user_agent(options.user_agent.unwrap_or_else(|| "corral".into()))
            .timeout_connect(Some(options.connect_timeout.unwrap_or(Duration::from_secs(15))))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .build();
        let agent = match pinned {
            // Only the certificate given is trusted for this server (see pinned.rs).
            Some(tls) => Agent::with_parts(config, TcpConnector::default().chain(tls), DefaultResolver::default()),
            None => Agent::new_with_config(config),
        };
        Ok(Client {
            base,
            agent,
            retry_pause: Duration::from_millis(500),
        })
    }

    /// Sets the pause between two attempts of a download (tests use zero).
    pub fn with_retry_pause(mut self, pause: Duration) -> Client {
        self.retry_pause = pause;
        self
    }

    /// The server's URL, without a trailing slash.
    pub fn server(&self) -> &str {
        &self.base
    }

    /// The URL of `path` on the server.
    pub fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base, path.trim_start_matches('/'))
    }

    fn document<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        let url = self.url(path);
        let mut resp = self.agent.get(&url).call().map_err(|e| unreachable(&url, e))?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(Error::Http { url, status });
        }
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(DOCUMENT_LIMIT)
            .read_to_vec()
            .map_err(|e| unreachable(&url, e))?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Parse {
            url,
            detail: e.to_string(),
        })
    }

    /// `streams/v1/index.json`.
    pub fn index(&self) -> Result<Stream, Error> {
        self.document(INDEX_PATH)
    }

    /// Every image product file the index lists.
    pub fn products(&self) -> Result<Vec<Products>, Error> {
        let index = self.index()?;
        let mut out = Vec::new();
        for entry in index.index.values().filter(|e| e.datatype == "image-downloads") {
            if !safe_relative(&entry.path) {
                return Err(Error::Parse {
                    url: self.url(INDEX_PATH),
                    detail: format!("invalid product file path {:?}", entry.path),
                });
            }
            out.push(self.document(&entry.path)?);
        }
        Ok(out)
    }

    /// The server's container images.
    pub fn catalog(&self) -> Result<Catalog, Error> {
        Ok(Catalog::new(&self.products()?))
    }

    /// GETs `path` as `lxc image import URL` makes LXD do (announcing the host's architecture and
    /// LXD's API version), for the headers of the answer: its status must be 200. The body is not
    /// read.
    pub fn image_url_headers(&self, path: &str) -> Result<UrlAnswer, Error> {
        let url = self.url(path);
        let resp = self
            .agent
            .get(&url)
            .header("LXD-Server-Architectures", corral_image::host_architecture())
            .header("LXD-Server-Version", "5.0")
            .call()
            .map_err(|e| unreachable(&url, e))?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(Error::Http { url, status });
        }
        let header = |names: &[&str]| {
            names.iter().find_map(|n| {
                resp.headers()
                    .get(*n)
                    .and_then(|v| v.to_str().ok())
                    .map(|v| v.trim().to_string())
                    .filter(|v| !v.is_empty())
            })
        };
        Ok(UrlAnswer {
            image_url: header(&["LXD-Image-URL", "Incus-Image-URL"]),
            image_hash: header(&["LXD-Image-Hash", "Incus-Image-Hash"]),
            content_length: header(&["Content-Length"]).and_then(|l| l.parse().ok()),
        })
    }

    /// Downloads `file` to `dest` (through `<dest>.partial`, resumed if present), checking
    /// its size and sha256; `progress` is called as bytes arrive.
    pub fn download(&self, file: &RemoteFile, dest: &Path, progress: &mut dyn FnMut(Progress)) -> Result<(), Error> {
        self.download_chained(file, dest, progress, &mut Fingerprint::new())
    }

    /// [`Client::download`], the file's bytes also added to `chain` once it is checked: an
    /// image's fingerprint (the sha256 of its files one after the other) made as they arrive,
    /// without reading them again. The bytes are hashed as they are written (a resumed file's
    /// earlier part is read once when it resumes).
    pub fn download_chained(
        &self,
        file: &RemoteFile,
        dest: &Path,
        progress: &mut dyn FnMut(Progress),
        chain: &mut Fingerprint,
    ) -> Result<(), Error> {
        if !safe_relative(&file.path) {
            return Err(Error::Unsupported(format!(
                "invalid file path on the server: {:?}",
                file.path
            )));
        }
        let url = self.url(&file.path);
        let partial = partial_path(dest);
        let io_err = |source| Error::Io {
            path: partial.clone(),
            source,
        };
        let mut attempt = 0;
        let mut last_error = String::new();
        // The file's hash and the chain's, as far as the bytes in `.partial` go; `None` until
        // this call has read or written them all.
        let mut hashed: Option<(Sha256, Fingerprint)> = None;
        loop {
            let have = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
            if file.size > 0 && have == file.size {
                break;
            }
            if attempt == MAX_ATTEMPTS {
                return Err(Error::Interrupted {
                    url,
                    detail: last_error,
                });
            }
            if attempt > 0 {
                std::thread::sleep(self.retry_pause);
            }
            attempt += 1;
            let start = if file.size > 0 && have > file.size { 0 } else { have };
            let mut req = self.agent.get(&url);
            if start > 0 {
                req = req.header("Range", format!("bytes={start}-"));
            }
            let mut resp = match req.call() {
                Ok(r) => r,
                // Nothing at all on the first try: the server is not there.
                Err(e) if attempt == 1 && start == 0 => return Err(unreachable(&url, e)),
                Err(e) => {
                    last_error = e.to_string();
                    continue;
                }
            };
            let status = resp.status().as_u16();
            let offset = match status {
                200 => 0,
                206 if content_range_start(resp.headers()) == Some(start) => start,
                // A range we did not ask for, or one the server cannot give: start again.
                206 | 416 => {
                    std::fs::remove_file(&partial).or_else(ignore_missing).map_err(io_err)?;
                    last_error = format!("the server answered {status} to a resumed download");
                    continue;
                }
                _ => return Err(Error::Http { url, status }),
            };
            let mut out = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(offset == 0)
                .append(offset > 0)
                .open(&partial)
                .map_err(io_err)?;
            let mut done = offset;
            let (mut own, mut chained) = (Sha256::new(), chain.clone());
            if offset > 0 {
                hash_prefix(&partial, offset, &mut own, &mut chained).map_err(io_err)?;
            }
            progress(Progress { done, total: file.size });
            let mut body = resp.body_mut().with_config().limit(u64::MAX).reader();
            let mut buf = vec![0u8; 256 * 1024];
            let outcome: io::Result<()> = loop {
                match body.read(&mut buf) {
                    Ok(0) => break Ok(()),
                    Ok(n) => {
                        if let Err(e) = out.write_all(&buf[..n]) {
                            return Err(io_err(e));
                        }
                        own.update(&buf[..n]);
                        chained.0.update(&buf[..n]);
                        done += n as u64;
                        progress(Progress { done, total: file.size });
                        if file.size > 0 && done > file.size {
                            break Ok(());
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
            };
            out.sync_all().map_err(io_err)?;
            hashed = Some((own, chained));
            match outcome {
                Ok(()) if file.size == 0 || done >= file.size => break,
                Ok(()) => last_error = format!("the connection closed after {done} of {} bytes", file.size),
                Err(e) => last_error = e.to_string(),
            }
            tracing::info!(%url, done, size = file.size, error = %last_error, "download interrupted; resuming");
        }
        let len = std::fs::metadata(&partial).map_err(io_err)?.len();
        let (own, chained) = match hashed {
            Some(h) => h,
            // Complete before this call (left by an earlier one): read once.
            None => {
                let (mut own, mut chained) = (Sha256::new(), chain.clone());
                hash_prefix(&partial, len, &mut own, &mut chained).map_err(io_err)?;
                (own, chained)
            }
        };
        let actual = hex::encode(own.finalize());
        if file.size > 0 && len != file.size {
            let _ = std::fs::remove_file(&partial);
            return Err(Error::Size {
                url,
                expected: file.size,
                actual: len,
            });
        }
        if !file.sha256.is_empty() && actual != file.sha256 {
            let _ = std::fs::remove_file(&partial);
            return Err(Error::Checksum {
                url,
                expected: file.sha256.clone(),
                actual,
            });
        }
        std::fs::rename(&partial, dest).map_err(|source| Error::Io {
            path: dest.to_path_buf(),
            source,
        })?;
        *chain = chained;
        Ok(())
    }
}

/// The fingerprint of an image whose files are downloaded one after the other
/// ([`Client::download_chained`]): the sha256 of their bytes in that order.
#[derive(Clone, Default)]
pub struct Fingerprint(Sha256);

impl Fingerprint {
    pub fn new() -> Fingerprint {
        Fingerprint(Sha256::new())
    }

    /// Lowercase hex.
    pub fn hex(&self) -> String {
        hex::encode(self.0.clone().finalize())
    }
}

/// Adds the first `len` bytes of `path` to both hashes.
fn hash_prefix(path: &Path, len: u64, own: &mut Sha256, chained: &mut Fingerprint) -> io::Result<()> {
    let mut f = File::open(path)?.take(len);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        own.update(&buf[..n]);
        chained.0.update(&buf[..n]);
    }
}

/// The certificates of a PEM bundle (other items skipped).
fn pem_certs(pem: &[u8]) -> Vec<Certificate<'static>> {
    ureq::tls::parse_pem(pem)
        .filter_map(|item| match item {
            Ok(PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect()
}

/// The host's trusted roots, as OpenSSL and Go find them: the bundle `SSL_CERT_FILE` names,
/// else Debian's bundle. `None` (then the built-in Mozilla roots) when neither has any.
fn system_roots() -> Option<Vec<Certificate<'static>>> {
    let path = std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/ssl/certs/ca-certificates.crt"));
    let certs = pem_certs(&std::fs::read(path).ok()?);
    (!certs.is_empty()).then_some(certs)
}

fn ignore_missing(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

/// Where [`Client::download`] keeps the bytes of `dest` until they are checked.
pub fn partial_path(dest: &Path) -> PathBuf {
    let mut name = dest.as_os_str().to_os_string();
    name.push(".partial");
    PathBuf::from(name)
}

/// The first byte of a `Content-Range: bytes <first>-<last>/<size>` header.
fn content_range_start(headers: &ureq::http::HeaderMap) -> Option<u64> {
    let v = headers.get("Content-Range")?.to_str().ok()?;
    v.trim()
        .strip_prefix("bytes")?
        .trim()
        .split('-')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Length and lowercase hex sha256 of a file.
pub(crate) fn hash_file(path: &Path) -> io::Result<(u64, String)> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        len += n as u64;
    }
    Ok((len, hex::encode(h.finalize())))
}
