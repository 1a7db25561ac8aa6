//! Throwaway namespaces and small services for the proxy's tests.
//!
//! A [`Sandbox`] is a network namespace (and optionally a mount namespace) made by `unshare` on a
//! thread of its own and held only by file descriptors: nothing is named in /run/netns, nothing
//! is routed anywhere, and everything disappears with the descriptors when the test ends, however
//! it ends. Every address a test uses is on the loopback of the host or of such a namespace.

#![allow(dead_code)]

use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use corral_proxy::NsSpec;
use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// True if the test can run; otherwise prints `SKIP` (or fails under CORRAL_REQUIRED_TESTS=1).
pub fn root_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("CORRAL_REQUIRED_TESTS").as_deref() == Ok("1") {
        panic!("{test} needs root (network namespaces)");
    }
    eprintln!("SKIP {test}: needs root (network namespaces)");
    false
}

/// A name no other test (or test process) uses at the same time.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

pub struct Sandbox {
    net: File,
    mnt: Option<File>,
}

impl Sandbox {
    /// A new network namespace with its loopback up.
    pub fn new() -> Sandbox {
        Sandbox::make(None)
    }

    /// A new network namespace and a new mount namespace in which a tmpfs is mounted on `dir`
    /// (an empty directory on the host: files made there inside are invisible outside).
    pub fn with_private_dir(dir: &Path) -> Sandbox {
        Sandbox::make(Some(dir.to_path_buf()))
    }

    fn make(private_dir: Option<PathBuf>) -> Sandbox {
        std::thread::spawn(move || {
            let mut flags = CloneFlags::CLONE_NEWNET;
            if private_dir.is_some() {
                flags |= CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_FS;
            }
            nix::sched::unshare(flags).expect("unshare");
            // A child inherits this thread's network namespace.
            let status = Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .status()
                .expect("running ip");
            assert!(status.success(), "ip link set lo up: {status}");
            let mnt = private_dir.map(|dir| {
                nix::mount::mount(
                    None::<&str>,
                    "/",
                    None::<&str>,
                    MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                    None::<&str>,
                )
                .expect("making / private");
                nix::mount::mount(
                    Some("tmpfs"),
                    &dir,
                    Some("tmpfs"),
                    MsFlags::empty(),
                    Some("size=1m,mode=0755"),
                )
                .expect("mounting a tmpfs");
                File::open("/proc/thread-self/ns/mnt").expect("opening the mount namespace")
            });
            let net = File::open("/proc/thread-self/ns/net").expect("opening the network namespace");
            Sandbox { net, mnt }
        })
        .join()
        .expect("sandbox thread")
    }

    /// The namespaces as paths another process (or the proxy) can open.
    pub fn spec(&self) -> NsSpec {
        let path = |f: &File| PathBuf::from(format!("/proc/{}/fd/{}", std::process::id(), f.as_raw_fd()));
        NsSpec {
            net: Some(path(&self.net)),
            mnt: self.mnt.as_ref().map(path),
        }
    }

    /// Runs `work` on a thread inside the sandbox's namespaces.
    pub fn run<T: Send>(&self, work: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                if let Some(mnt) = &self.mnt {
                    nix::sched::unshare(CloneFlags::CLONE_FS).expect("unshare CLONE_FS");
                    nix::sched::setns(mnt.as_fd(), CloneFlags::CLONE_NEWNS).expect("setns mnt");
                }
                nix::sched::setns(self.net.as_fd(), CloneFlags::CLONE_NEWNET).expect("setns net");
                work()
            })
            .join()
            .expect("sandbox work")
        })
    }

    pub fn tcp_listener(&self, addr: &str) -> tokio::net::TcpListener {
        let l = self
            .run(|| std::net::TcpListener::bind(addr))
            .expect("binding a service");
        l.set_nonblocking(true).unwrap();
        tokio::net::TcpListener::from_std(l).unwrap()
    }

    pub fn tcp_connect(&self, addr: SocketAddr) -> tokio::net::TcpStream {
        let s = self.run(|| std::net::TcpStream::connect(addr)).expect("connecting");
        s.set_nonblocking(true).unwrap();
        tokio::net::TcpStream::from_std(s).unwrap()
    }

    pub fn udp_socket(&self, addr: &str) -> tokio::net::UdpSocket {
        let s = self.run(|| std::net::UdpSocket::bind(addr)).expect("binding udp");
        s.set_nonblocking(true).unwrap();
        tokio::net::UdpSocket::from_std(s).unwrap()
    }

    pub fn unix_listener(&self, path: &Path) -> tokio::net::UnixListener {
        let l = self
            .run(|| std::os::unix::net::UnixListener::bind(path))
            .expect("binding a unix service");
        l.set_nonblocking(true).unwrap();
        tokio::net::UnixListener::from_std(l).unwrap()
    }

    pub fn unix_connect_abstract(&self, name: &str) -> tokio::net::UnixStream {
        use std::os::linux::net::SocketAddrExt;
        let s = self
            .run(|| {
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                std::os::unix::net::UnixStream::connect_addr(&addr)
            })
            .expect("connecting to an abstract socket");
        s.set_nonblocking(true).unwrap();
        tokio::net::UnixStream::from_std(s).unwrap()
    }

    pub fn unix_connect(&self, path: &Path) -> tokio::net::UnixStream {
        let s = self
            .run(|| std::os::unix::net::UnixStream::connect(path))
            .expect("connecting to a unix socket");
        s.set_nonblocking(true).unwrap();
        tokio::net::UnixStream::from_std(s).unwrap()
    }
}

/// Echoes every byte back, then half-closes when the client has.
pub async fn echo<S: AsyncRead + AsyncWrite>(stream: S) {
    let (mut r, mut w) = tokio::io::split(stream);
    let _ = tokio::io::copy(&mut r, &mut w).await;
    let _ = w.shutdown().await;
}

pub fn spawn_tcp_echo(listener: tokio::net::TcpListener) {
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(echo(s));
        }
    });
}

pub fn spawn_unix_echo(listener: tokio::net::UnixListener) {
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(echo(s));
        }
    });
}

/// Writes `data` and half-closes while reading everything that comes back until EOF.
pub async fn exchange<S: AsyncRead + AsyncWrite>(stream: S, data: &[u8]) -> Vec<u8> {
    let (mut r, mut w) = tokio::io::split(stream);
    let writer = async {
        w.write_all(data).await.expect("writing");
        w.shutdown().await.expect("half-closing");
    };
    let reader = async {
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.expect("reading");
        out
    };
    tokio::join!(writer, reader).1
}

/// `len` bytes that differ with `seed` and do not repeat with a short period.
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}
