//! The HTTPS listener of `core.https_address`: TLS handshakes off the accept loop, the peer's
//! certificate handed to the handlers, and rebinding when the address changes.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;

/// The default port, as LXD's.
pub const DEFAULT_PORT: u16 = 8443;

/// A handshake that takes longer than this is dropped, so a silent peer holds nothing.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is at the other end of an HTTPS connection.
#[derive(Clone, Debug)]
pub struct TlsPeer {
    pub addr: SocketAddr,
    /// The client certificate (DER) and its fingerprint, if the client sent one.
    pub cert: Option<Arc<Vec<u8>>>,
    pub fingerprint: Option<String>,
}

impl Connected<IncomingStream<'_, TlsListener>> for TlsPeer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// Accepted and handshaken connections; the handshakes run in their own tasks.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, TlsPeer)>,
    local: SocketAddr,
    acceptor: tokio::task::JoinHandle<()>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl TlsListener {
    /// Binds `addr` (an error says the address is taken or not on this host) and starts
    /// accepting.
    pub async fn bind(addr: SocketAddr, config: Arc<rustls::ServerConfig>) -> std::io::Result<TlsListener> {
        let tcp = TcpListener::bind(addr).await?;
        let local = tcp.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let task = tokio::spawn(async move {
            loop {
                let (stream, addr) = match tcp.accept().await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "https accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let cert = tls
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .map(|c| Arc::new(c.as_ref().to_vec()));
                            let fingerprint = cert.as_deref().map(|c| crate::tls::fingerprint(c));
                            let _ = tx
                                .send((
                                    tls,
                                    TlsPeer {
                                        addr,
                                        cert,
                                        fingerprint,
                                    },
                                ))
                                .await;
                        }
                        Ok(Err(e)) => tracing::debug!(peer = %addr, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(peer = %addr, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener {
            rx,
            local,
            acceptor: task,
        })
    }

    pub fn local(&self) -> SocketAddr {
        self.local
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = TlsPeer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The acceptor task only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(TlsPeer {
            addr: self.local,
            cert: None,
            fingerprint: None,
        })
    }
}

/// `core.https_address` as a socket address: `:8443` and `[::]:8443` listen on every address
/// (IPv4 too), a host without a port gets 8443.
pub fn parse_address(value: &str) -> Result<SocketAddr, String> {
    let v = value.trim();
    let with_port = |host: &str| format!("{host}:{DEFAULT_PORT}");
    let candidate = if let Ok(ip) = v.parse::<std::net::IpAddr>() {
        match ip {
            std::net::IpAddr::V6(_) => with_port(&format!("[{v}]")),
            std::net::IpAddr::V4(_) => with_port(v),
        }
    } else if let Some(port) = v.strip_prefix(':') {
        format!("[::]:{port}")
    } else if v.starts_with('[') && v.ends_with(']') {
        with_port(v)
    } else {
        v.to_string()
    };
    candidate.parse::<SocketAddr>().map_err(|_| {
        format!("{value:?} is not an address to listen on: use \"[::]:8443\", \":8443\", \"10.0.0.1:8443\" or an IP address")
    })
}

/// The addresses clients can reach a listener on: its own, or for a wildcard every global
/// address of the host (loopback only when there is nothing else).
pub fn reachable_addresses(listen: SocketAddr) -> Vec<String> {
    if !listen.ip().is_unspecified() {
        return vec![listen.to_string()];
    }
    let mut global = Vec::new();
    let mut loopback = Vec::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for ifa in addrs {
            let Some(a) = ifa.address else { continue };
            let ip: std::net::IpAddr = if let Some(v4) = a.as_sockaddr_in() {
                v4.ip().into()
            } else if let Some(v6) = a.as_sockaddr_in6() {
                if listen.is_ipv4() {
                    continue;
                }
                let ip = v6.ip();
                // Link-local addresses need a zone: useless in a token.
                if (ip.segments()[0] & 0xffc0) == 0xfe80 {
                    continue;
                }
                ip.into()
            } else {
                continue;
            };
            let s = SocketAddr::new(ip, listen.port()).to_string();
            if ip.is_loopback() {
                loopback.push(s);
            } else if !global.contains(&s) {
                global.push(s);
            }
        }
    }
    if global.is_empty() {
        loopback
    } else {
        global
    }
}

/// The running HTTPS server, if `core.https_address` is set.
pub struct Https {
    tls: Arc<rustls::ServerConfig>,
    /// The service every connection gets; set once the router exists.
    app: OnceLock<axum::Router>,
    running: Mutex<Option<Running>>,
}

struct Running {
    listen: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Https {
    pub fn new(tls: Arc<rustls::ServerConfig>) -> Https {
        Https {
            tls,
            app: OnceLock::new(),
            running: Mutex::new(None),
        }
    }

    /// The router to serve (with its authorization already layered on).
    pub fn set_app(&self, app: axum::Router) {
        let _ = self.app.set(app);
    }

    /// Where it listens now.
    pub fn listening(&self) -> Option<SocketAddr> {
        self.running
            .lock()
            .expect("https lock poisoned")
            .as_ref()
            .map(|r| r.listen)
    }

    /// Listens on `address` (stopping the old listener once the new one is bound), or stops
    /// listening for `None`. Connections already open finish on the old listener's tasks.
    pub async fn listen(&self, address: Option<SocketAddr>) -> Result<(), String> {
        let Some(addr) = address else {
            if let Some(old) = self.running.lock().expect("https lock poisoned").take() {
                old.task.abort();
                tracing::info!(address = %old.listen, "HTTPS API stopped");
            }
            return Ok(());
        };
        if self.listening() == Some(addr) {
            return Ok(());
        }
        let app = self
            .app
            .get()
            .cloned()
            .ok_or_else(|| "the daemon is still starting".to_string())?;
        // The old listener may hold the same port on another form of the address: free it first
        // when the port is the same, else bind first so that a bad address changes nothing.
        let same_port = self.listening().map(|l| l.port()) == Some(addr.port());
        if same_port {
            Box::pin(self.listen(None)).await?;
        }
        let listener = TlsListener::bind(addr, self.tls.clone())
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let listen = listener.local();
        let service = app.into_make_service_with_connect_info::<TlsPeer>();
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, service).await {
                tracing::warn!(error = %e, "HTTPS API failed");
            }
        });
        if let Some(old) = self
            .running
            .lock()
            .expect("https lock poisoned")
            .replace(Running { listen, task })
        {
            old.task.abort();
        }
        tracing::info!(address = %listen, "HTTPS API listening");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_take_lxd_forms() {
        assert_eq!(parse_address(":8443").unwrap().to_string(), "[::]:8443");
        assert_eq!(parse_address("[::]:9443").unwrap().to_string(), "[::]:9443");
        assert_eq!(parse_address("127.0.0.1").unwrap().to_string(), "127.0.0.1:8443");
        assert_eq!(parse_address("10.1.2.3:8444").unwrap().to_string(), "10.1.2.3:8444");
        assert_eq!(parse_address("::1").unwrap().to_string(), "[::1]:8443");
        assert_eq!(parse_address("[::1]").unwrap().to_string(), "[::1]:8443");
        let err = parse_address("example.com:8443").unwrap_err();
        assert!(err.contains("\"example.com:8443\"") && err.contains(":8443"), "{err}");
    }

    #[test]
    fn a_specific_address_is_its_own_reachable_address() {
        let a: SocketAddr = "10.1.2.3:8443".parse().unwrap();
        assert_eq!(reachable_addresses(a), vec!["10.1.2.3:8443"]);
        assert!(!reachable_addresses("[::]:8443".parse().unwrap()).is_empty());
    }
}
