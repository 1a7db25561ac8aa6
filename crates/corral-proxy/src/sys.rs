//! The system calls the proxy makes, each on the thread of the side it belongs to (see [`crate::ns`]).
//!
//! Everything here goes through nix's or std's safe wrappers: this crate has no `unsafe`. The
//! sockets are made here and used anywhere afterwards, because a socket belongs to the network
//! namespace it was created in, whichever thread uses it later; only unix paths depend on the
//! thread at the time of the call (its mount namespace and root), so binding and connecting a
//! unix path also happen here.

use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as StdUnixAddr, UnixListener};
use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::AT_FDCWD;
use nix::sched::CloneFlags;
use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, UnixAddr};
use nix::sys::stat::{self, Mode, SFlag};
use nix::unistd::{self, Gid, Uid};

use crate::addr::UnixName;

/// Go's default keep-alive for proxied TCP connections (LXD's forkproxy is Go): probes after
/// 15 s of silence, every 15 s, so a vanished peer does not pin a connection forever.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// Makes the calling thread's filesystem attributes (root, cwd, umask) its own, then enters the
/// network and mount namespaces given. `unshare(CLONE_FS)` comes first because `setns` into a mount
/// namespace refuses a thread that shares them with others, and so that this thread's `umask`
/// (used to create sockets with their mode) cannot race with the rest of the process.
pub(crate) fn enter(net: Option<&File>, mnt: Option<&File>) -> Result<(), (&'static str, Errno)> {
    nix::sched::unshare(CloneFlags::CLONE_FS).map_err(|e| ("unsharing filesystem attributes", e))?;
    if let Some(net) = net {
        nix::sched::setns(net.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| ("entering network namespace", e))?;
    }
    if let Some(mnt) = mnt {
        nix::sched::setns(mnt.as_fd(), CloneFlags::CLONE_NEWNS).map_err(|e| ("entering mount namespace", e))?;
    }
    Ok(())
}

/// A non-blocking TCP socket of `addr`'s family, not yet connected.
pub(crate) fn tcp_socket(addr: &SocketAddr) -> io::Result<OwnedFd> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    Ok(socket::socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?)
}

/// A non-blocking UDP socket connected to `target` (from an ephemeral port).
pub(crate) fn udp_connected(target: &SocketAddr) -> io::Result<UdpSocket> {
    let local: SocketAddr = match target {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = UdpSocket::bind(local)?;
    sock.connect(target)?;
    sock.set_nonblocking(true)?;
    Ok(sock)
}

/// Keep-alive on a proxied TCP connection (best effort).
pub(crate) fn tcp_keepalive(fd: &impl AsFd) {
    let secs = KEEPALIVE.as_secs() as u32;
    let _ = socket::setsockopt(fd, sockopt::KeepAlive, &true);
    let _ = socket::setsockopt(fd, sockopt::TcpKeepIdle, &secs);
    let _ = socket::setsockopt(fd, sockopt::TcpKeepInterval, &secs);
}

/// A non-blocking stream socket connected to a unix socket. The connect itself is immediate for
/// unix sockets: it succeeds, fails, or reports `WouldBlock` when the listener's backlog is full
/// (the caller retries).
pub(crate) fn unix_connect(name: &UnixName) -> io::Result<OwnedFd> {
    let addr = match name {
        UnixName::Path(p) => UnixAddr::new(p)?,
        UnixName::Abstract(n) => UnixAddr::new_abstract(n)?,
    };
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    socket::connect(fd.as_raw_fd(), &addr)?;
    Ok(fd)
}

/// Binds the first of `addrs` that this namespace has (the next is tried when an address
/// family or address is unavailable), non-blocking.
pub(crate) fn bind_tcp(addrs: &[SocketAddr]) -> io::Result<TcpListener> {
    bind_first(addrs, |a| {
        let l = TcpListener::bind(a)?;
        l.set_nonblocking(true)?;
        Ok(l)
    })
}

pub(crate) fn bind_udp(addrs: &[SocketAddr]) -> io::Result<UdpSocket> {
    bind_first(addrs, |a| {
        let s = UdpSocket::bind(a)?;
        s.set_nonblocking(true)?;
        Ok(s)
    })
}

fn bind_first<T>(addrs: &[SocketAddr], bind: impl Fn(SocketAddr) -> io::Result<T>) -> io::Result<T> {
    let mut last = io::Error::new(io::ErrorKind::InvalidInput, "no address to bind");
    for &a in addrs {
        match bind(a) {
            Ok(t) => return Ok(t),
            Err(e) if unavailable(&e) => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

fn unavailable(e: &io::Error) -> bool {
    let code = e.raw_os_error();
    code == Some(Errno::EAFNOSUPPORT as i32) || code == Some(Errno::EADDRNOTAVAIL as i32)
}

/// The identity of a file, to recognise our own socket when removing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FileId {
    dev: u64,
    ino: u64,
}

/// Binds a listening unix socket at `path` with `mode` and owner, after removing a socket left
/// there (by an earlier proxy; anything else there is an error). The mode is set by this thread's
/// umask at bind time (so the socket never exists with a wider mode); the owner by an `lchown`
/// right after (never following a symlink planted in its place).
pub(crate) fn bind_unix_path(
    path: &Path,
    mode: u32,
    uid: Option<u32>,
    gid: Option<u32>,
) -> io::Result<(UnixListener, FileId)> {
    match stat::lstat(path) {
        Ok(st) if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFSOCK => {
            unistd::unlink(path)?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "something other than a socket is there",
            ))
        }
        Err(Errno::ENOENT) => {}
        Err(e) => return Err(e.into()),
    }
    let old = stat::umask(Mode::from_bits_truncate(!mode & 0o777));
    let bound = UnixListener::bind(path);
    stat::umask(old);
    let listener = bound?;
    listener.set_nonblocking(true)?;
    let fail = |e: io::Error| {
        let _ = unistd::unlink(path);
        e
    };
    if uid.is_some() || gid.is_some() {
        unistd::fchownat(
            AT_FDCWD,
            path,
            uid.map(Uid::from_raw),
            gid.map(Gid::from_raw),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| fail(e.into()))?;
    }
    let st = stat::lstat(path).map_err(|e| fail(e.into()))?;
    Ok((
        listener,
        FileId {
            dev: st.st_dev,
            ino: st.st_ino,
        },
    ))
}

/// Removes the socket at `path` if it is still the one bound (not something put there since).
pub(crate) fn remove_unix_path(path: &Path, id: FileId) -> io::Result<()> {
    match stat::lstat(path) {
        Ok(st) if st.st_dev == id.dev && st.st_ino == id.ino => Ok(unistd::unlink(path)?),
        Ok(_) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

pub(crate) fn bind_unix_abstract(name: &[u8]) -> io::Result<UnixListener> {
    let addr = StdUnixAddr::from_abstract_name(name)?;
    let listener = UnixListener::bind_addr(&addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Switches the whole process (every thread: glibc broadcasts set*id) to `gid` (no supplementary
/// groups but it) and then `uid`, an absent one being 0, as LXD's forkproxy does; nothing when
/// both are 0. Irreversible.
pub(crate) fn drop_privileges(uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    let (uid, gid) = (uid.unwrap_or(0), gid.unwrap_or(0));
    if uid == 0 && gid == 0 {
        return Ok(());
    }
    let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(gid));
    unistd::setgroups(&[gid])?;
    unistd::setresgid(gid, gid, gid)?;
    unistd::setresuid(uid, uid, uid)?;
    Ok(())
}
