//! The forwarding itself: one task per listening socket, one per connection (a bidirectional copy
//! that passes each direction's end on as a half-close), and for UDP one session per client
//! address, ended after a quiet period.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket, UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::addr::{Endpoint, UnixName};
use crate::config::{ProxyConfig, DEFAULT_UNIX_MODE};
use crate::error::ProxyError;
use crate::ns::SideThread;
use crate::proxy_v2::ProxyHeader;
use crate::sys::{self, FileId};

/// Copy buffer per direction of a connection.
const COPY_BUFFER: usize = 64 * 1024;

/// The largest UDP datagram.
const DATAGRAM: usize = 65536;

/// How long a unix connect is retried while the server's backlog is full.
const UNIX_BACKLOG_RETRIES: u32 = 50;
const UNIX_BACKLOG_WAIT: Duration = Duration::from_millis(20);

/// A running proxy: its listening sockets are bound and served by tasks of the current tokio
/// runtime. [`Proxy::stop`] (or dropping it) closes them, ends every connection and removes the
/// listening unix socket.
pub struct Proxy {
    cancel: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    listen_side: Arc<SideThread>,
    unix_socket: Option<(PathBuf, FileId)>,
    listening: Vec<String>,
}

/// A socket bound on the listen side's thread, before the runtime takes it.
enum Bound {
    Tcp(std::net::TcpListener),
    Udp(std::net::UdpSocket),
    Unix(StdUnixListener, Option<(PathBuf, FileId)>),
}

impl Proxy {
    /// Validates `config`, enters both sides' namespaces, binds every listening socket, and starts
    /// serving. Must be called within a tokio runtime (with I/O and time enabled). Any error leaves
    /// nothing behind.
    pub async fn start(config: &ProxyConfig) -> Result<Proxy, ProxyError> {
        let plan = config.plan()?;
        let listen_side = Arc::new(SideThread::spawn("listen", &config.listen_ns)?);
        let connect_side = Arc::new(SideThread::spawn("connect", &config.connect_ns)?);
        let (cancel, cancelled) = watch::channel(false);
        let mut proxy = Proxy {
            cancel,
            tasks: Vec::new(),
            listen_side: listen_side.clone(),
            unix_socket: None,
            listening: Vec::new(),
        };
        let connector = Arc::new(Connector {
            side: connect_side,
            proxy_protocol: config.proxy_protocol,
        });
        let (mode, uid, gid) = (config.mode.unwrap_or(DEFAULT_UNIX_MODE), config.uid, config.gid);
        let timeout = config.udp_timeout();

        // Everything is bound before anything is served: an error returns (dropping `proxy`
        // removes a unix socket already made) with no task started.
        let mut bound = Vec::new();
        for route in &plan.routes {
            let endpoint = route.listen.clone();
            let listen_err = |source| ProxyError::Listen {
                endpoint: route.listen.to_string(),
                source,
            };
            let b = listen_side
                .run(move || bind(&endpoint, mode, uid, gid))
                .await?
                .map_err(listen_err)?;
            if let Bound::Unix(_, Some(made)) = &b {
                proxy.unix_socket = Some(made.clone());
            }
            bound.push((b, route));
        }
        for (b, route) in bound {
            let listen_err = |source| ProxyError::Listen {
                endpoint: route.listen.to_string(),
                source,
            };
            let target = route.connect.clone();
            let (c, rx) = (connector.clone(), cancelled.clone());
            let task = match b {
                Bound::Tcp(l) => {
                    let l = TcpListener::from_std(l).map_err(listen_err)?;
                    tokio::spawn(serve_stream(Listener::Tcp(l), target, c, rx))
                }
                Bound::Unix(l, _) => {
                    let l = UnixListener::from_std(l).map_err(listen_err)?;
                    tokio::spawn(serve_stream(Listener::Unix(l), target, c, rx))
                }
                Bound::Udp(s) => {
                    let s = UdpSocket::from_std(s).map_err(listen_err)?;
                    let Endpoint::Udp(t) = target else {
                        unreachable!("the plan pairs udp with udp")
                    };
                    tokio::spawn(serve_udp(Arc::new(s), t.connect_addr(), c, timeout, rx))
                }
            };
            proxy.tasks.push(task);
            proxy.listening.push(format!("{} -> {}", route.listen, route.connect));
        }
        info!(listen = %config.listen, connect = %config.connect, "proxy listening");
        Ok(proxy)
    }

    /// `listen -> connect` for each listening socket.
    pub fn routes(&self) -> &[String] {
        &self.listening
    }

    /// Stops listening, ends every connection and UDP session, removes the unix socket.
    pub async fn stop(mut self) {
        let _ = self.cancel.send(true);
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        self.remove_unix_socket();
        info!("proxy stopped");
    }

    fn remove_unix_socket(&mut self) {
        let Some((path, id)) = self.unix_socket.take() else {
            return;
        };
        let shown = path.display().to_string();
        match self.listen_side.run_blocking(move || sys::remove_unix_path(&path, id)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!("removing {shown}: {e}"),
            Err(e) => warn!("removing {shown}: {e}"),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.cancel.send(true);
        for task in &self.tasks {
            task.abort();
        }
        self.remove_unix_socket();
    }
}

fn bind(endpoint: &Endpoint, mode: u32, uid: Option<u32>, gid: Option<u32>) -> io::Result<Bound> {
    match endpoint {
        Endpoint::Tcp(e) => sys::bind_tcp(&e.listen_addrs()).map(Bound::Tcp),
        Endpoint::Udp(e) => sys::bind_udp(&e.listen_addrs()).map(Bound::Udp),
        Endpoint::Unix(UnixName::Path(p)) => {
            sys::bind_unix_path(p, mode, uid, gid).map(|(l, id)| Bound::Unix(l, Some((p.clone(), id))))
        }
        Endpoint::Unix(UnixName::Abstract(name)) => sys::bind_unix_abstract(name).map(|l| Bound::Unix(l, None)),
    }
}

/// Resolves when the proxy is stopping (or its `Proxy` is gone).
async fn stopping(cancelled: &mut watch::Receiver<bool>) {
    let _ = cancelled.wait_for(|stop| *stop).await;
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// An accepted client, with what the PROXY header tells of it.
struct Client {
    stream: Stream,
    header: ProxyHeader,
    label: String,
}

impl Listener {
    async fn accept(&self) -> io::Result<Client> {
        match self {
            Listener::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                let local = s.local_addr()?;
                let _ = s.set_nodelay(true);
                sys::tcp_keepalive(&s);
                Ok(Client {
                    stream: Stream::Tcp(s),
                    header: ProxyHeader::tcp(peer, local),
                    label: peer.to_string(),
                })
            }
            Listener::Unix(l) => {
                let (s, _) = l.accept().await?;
                Ok(Client {
                    stream: Stream::Unix(s),
                    header: ProxyHeader::Local,
                    label: "unix client".into(),
                })
            }
        }
    }
}

async fn serve_stream(
    listener: Listener,
    target: Endpoint,
    connector: Arc<Connector>,
    mut cancelled: watch::Receiver<bool>,
) {
    let target = Arc::new(target);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stopping(&mut cancelled) => return,
        };
        match accepted {
            Ok(client) => {
                let (t, c, rx) = (target.clone(), connector.clone(), cancelled.clone());
                tokio::spawn(forward(client, t, c, rx));
            }
            Err(e) => {
                // Out of descriptors or memory: wait rather than spin.
                warn!("accepting a connection for {target}: {e}");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = stopping(&mut cancelled) => return,
                }
            }
        }
    }
}

async fn forward(
    mut client: Client,
    target: Arc<Endpoint>,
    connector: Arc<Connector>,
    mut cancelled: watch::Receiver<bool>,
) {
    let connected = tokio::select! {
        c = connector.connect(&target) => c,
        _ = stopping(&mut cancelled) => return,
    };
    let mut upstream = match connected {
        Ok(s) => s,
        Err(e) => {
            warn!("{}: connecting to {target}: {e}", client.label);
            return;
        }
    };
    debug!("{}: connected to {target}", client.label);
    if connector.proxy_protocol {
        if let Err(e) = upstream.write_all(&client.header.encode()).await {
            warn!("{}: sending the PROXY header to {target}: {e}", client.label);
            return;
        }
    }
    let copied = tokio::select! {
        r = tokio::io::copy_bidirectional_with_sizes(&mut client.stream, &mut upstream, COPY_BUFFER, COPY_BUFFER) => r,
        _ = stopping(&mut cancelled) => return,
    };
    match copied {
        Ok((up, down)) => debug!("{}: closed ({up} bytes to {target}, {down} back)", client.label),
        Err(e) => debug!("{}: ended with {e}", client.label),
    }
}

/// Makes outgoing connections on the connect side.
struct Connector {
    side: Arc<SideThread>,
    proxy_protocol: bool,
}

impl Connector {
    async fn connect(&self, target: &Endpoint) -> io::Result<Stream> {
        match target {
            Endpoint::Tcp(e) => {
                let addr = e.connect_addr();
                let fd = self
                    .side
                    .run(move || sys::tcp_socket(&addr))
                    .await
                    .map_err(io::Error::other)??;
                let stream = TcpSocket::from_std_stream(fd.into()).connect(addr).await?;
                let _ = stream.set_nodelay(true);
                sys::tcp_keepalive(&stream);
                Ok(Stream::Tcp(stream))
            }
            Endpoint::Unix(name) => {
                let mut attempt = 0;
                loop {
                    let n = name.clone();
                    match self
                        .side
                        .run(move || sys::unix_connect(&n))
                        .await
                        .map_err(io::Error::other)?
                    {
                        Ok(fd) => return Ok(Stream::Unix(UnixStream::from_std(fd.into())?)),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock && attempt < UNIX_BACKLOG_RETRIES => {
                            attempt += 1;
                            tokio::time::sleep(UNIX_BACKLOG_WAIT).await;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            Endpoint::Udp(_) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a stream is not forwarded to udp",
            )),
        }
    }
}

/// Either kind of connected stream.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    /// A half-close: `shutdown(SHUT_WR)` on either kind.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// One UDP client: its socket on the connect side (connected to the target) and when it was last
/// heard of either way.
struct Session {
    upstream: UdpSocket,
    last: Mutex<Instant>,
}

type Sessions = Arc<Mutex<HashMap<SocketAddr, Arc<Session>>>>;

async fn serve_udp(
    listener: Arc<UdpSocket>,
    target: SocketAddr,
    connector: Arc<Connector>,
    timeout: Duration,
    mut cancelled: watch::Receiver<bool>,
) {
    let sessions: Sessions = Arc::default();
    let mut buf = vec![0u8; DATAGRAM];
    loop {
        let received = tokio::select! {
            r = listener.recv_from(&mut buf) => r,
            _ = stopping(&mut cancelled) => return,
        };
        let (n, client) = match received {
            Ok(r) => r,
            Err(e) => {
                debug!("udp receive on the listen side: {e}");
                continue;
            }
        };
        // Looked up and touched under the lock the session's own task takes to expire it, so a
        // datagram never goes to a session that has just ended.
        let existing = {
            let map = sessions.lock().expect("udp sessions");
            map.get(&client)
                .inspect(|s| *s.last.lock().expect("udp session") = Instant::now())
                .cloned()
        };
        let session = match existing {
            Some(s) => s,
            None => match open_session(&listener, client, target, &connector, &sessions, timeout, &cancelled).await {
                Ok(s) => s,
                Err(e) => {
                    warn!("udp client {client}: opening a session to {target}: {e}");
                    continue;
                }
            },
        };
        if let Err(e) = session.upstream.send(&buf[..n]).await {
            debug!("udp client {client}: sending to {target}: {e}");
        }
    }
}

async fn open_session(
    listener: &Arc<UdpSocket>,
    client: SocketAddr,
    target: SocketAddr,
    connector: &Connector,
    sessions: &Sessions,
    timeout: Duration,
    cancelled: &watch::Receiver<bool>,
) -> io::Result<Arc<Session>> {
    let sock = connector
        .side
        .run(move || sys::udp_connected(&target))
        .await
        .map_err(io::Error::other)??;
    let session = Arc::new(Session {
        upstream: UdpSocket::from_std(sock)?,
        last: Mutex::new(Instant::now()),
    });
    sessions.lock().expect("udp sessions").insert(client, session.clone());
    debug!("udp client {client}: new session to {target}");
    tokio::spawn(session_replies(
        session.clone(),
        listener.clone(),
        client,
        sessions.clone(),
        timeout,
        cancelled.clone(),
    ));
    Ok(session)
}

/// Sends the target's datagrams back to the client until the session has been quiet for
/// `timeout`.
async fn session_replies(
    session: Arc<Session>,
    listener: Arc<UdpSocket>,
    client: SocketAddr,
    sessions: Sessions,
    timeout: Duration,
    mut cancelled: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; DATAGRAM];
    loop {
        let deadline = *session.last.lock().expect("udp session") + timeout;
        tokio::select! {
            r = session.upstream.recv(&mut buf) => match r {
                Ok(n) => {
                    *session.last.lock().expect("udp session") = Instant::now();
                    if let Err(e) = listener.send_to(&buf[..n], client).await {
                        debug!("udp client {client}: sending back: {e}");
                    }
                }
                // An ICMP error for an earlier datagram (nothing listening yet): keep going.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                Err(e) => {
                    debug!("udp client {client}: receiving from the target: {e}");
                    break;
                }
            },
            _ = tokio::time::sleep_until(deadline) => {
                let mut map = sessions.lock().expect("udp sessions");
                if session.last.lock().expect("udp session").elapsed() >= timeout {
                    if map.get(&client).is_some_and(|s| Arc::ptr_eq(s, &session)) {
                        map.remove(&client);
                    }
                    debug!("udp client {client}: session expired");
                    return;
                }
            }
            _ = stopping(&mut cancelled) => return,
        }
    }
    let mut map = sessions.lock().expect("udp sessions");
    if map.get(&client).is_some_and(|s| Arc::ptr_eq(s, &session)) {
        map.remove(&client);
    }
}
