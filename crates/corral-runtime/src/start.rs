//! The fork sequence that turns a spec into a running container. It runs inside the monitor.
//!
//! ```text
//! monitor M ── fork ──> C: [setns net] unshare(user) ─ "userns ready" ─>
//!   M: write uid/gid maps, attach the idmapped rootfs (open_tree, mount_setattr, move_mount)
//!      at a staging path of M's private mount namespace and make it shared, put C in the
//!      cgroups ─ "go" ─>
//!   C: setresuid(0), unshare(mnt, uts, ipc, cgroup, pid[, net]), fork P ─ "pid P" ─> exit
//!   P (PID 1 inside): build the layout, pivot_root ─ "layout ready" ─> hostname, console as
//!      controlling tty, drop capabilities ─ waits for "go" ─>
//!   M (meanwhile): the spec's monitor binds (disks, idmapped or not) on the staged rootfs,
//!      which propagate into P's root; the caller's host set-up on P's namespaces (network
//!      interfaces) ─ "go" ─>
//!   P: the disks' propagation inside, seccomp (notify fd ─> M), exec init
//! ```
//!
//! Why this shape: the idmapped mount needs the container's user namespace, which only exists
//! once C has unshared it, and the mount must be made by the host side (M) because creating an
//! idmapped mount needs CAP_SYS_ADMIN in the initial namespace. C must be in its cgroups before
//! it unshares the cgroup namespace, so that the namespace is rooted at the container's cgroup.
//! A new PID namespace only applies to children, hence P. M is a child subreaper, so P is
//! reparented to M when C exits, and M reaps init.
//!
//! The disks are mounted by M on its staged rootfs once P's root exists, not before C copies
//! M's mount namespace: the container's root is a slave of the staged rootfs (C's copy of a
//! shared mount in a namespace of a less privileged user namespace is a slave, and P's bind of
//! it too), so each disk reaches the container by propagation. The kernel then locks the copy's
//! flags (read-only, nosuid...: `MNT_LOCK_*`, set on a copy made for a less privileged
//! namespace) but not the copy itself (the root of a propagated tree loses `MNT_LOCKED`), so
//! that an unmount on M's side, which propagates too, takes it out again: every disk can be
//! hot-unplugged ([`crate::hotplug`]). A disk copied with the namespace instead (made before
//! C's unshare) would be locked in place until the container stops.
//!
//! The host set-up ([`HostSetup`]) is how the layers above add what the runtime knows nothing
//! of (NICs) while init has not run yet, so that the guest's DHCP client finds its eth0.
//!
//! The processes talk over a SOCK_SEQPACKET pair with [`Message`]s; an error in C or P crosses
//! to M as data. P's end is close-on-exec: end-of-file after the last message means init was
//! executed.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::signal::{self, SigSet, SigmaskHow};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{setresgid, setresuid, Gid, Pid, Uid};
use serde::{Deserialize, Serialize};

use crate::cgroup::{Cgroup, CgroupError, CgroupRoot, DeviceRule};
use crate::layout::{self, LayoutInput};
use crate::spec::{ContainerSpec, Mount, MountKind, NetworkNamespace, RootfsMode, StopSignal};
use crate::{caps, packet, seccomp, shift, sys};

/// How long the set-up may take before the monitor gives up on it.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("rootfs {0} does not exist or is not a directory")]
    NoRootfs(PathBuf),
    #[error("init {init:?} is not an executable file in the container's rootfs ({rootfs})")]
    NoInit { init: String, rootfs: PathBuf },
    #[error("stop signal {0} is not a signal number (1 to 64)")]
    BadStopSignal(i32),
    #[error("container {0} already has processes in its cgroup: it is running under another monitor")]
    AlreadyRunning(String),
    #[error("cgroup set-up failed: {0}")]
    Cgroup(#[from] crate::cgroup::CgroupError),
    #[error("console pty: {0}")]
    Console(io::Error),
    #[error("{step}: {source}")]
    Sys { step: &'static str, source: io::Error },
    #[error("ownership shift fallback failed: {0}")]
    Shift(#[from] shift::ShiftError),
    #[error("container set-up failed: {0}")]
    Child(String),
    #[error("{0}")]
    HostSetup(String),
    #[error("the container's set-up did not finish within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Mount(#[from] layout::LayoutError),
    #[error("cannot bind {source_path} on {target} in the container: {step}: {error}")]
    Bind {
        source_path: PathBuf,
        target: PathBuf,
        step: &'static str,
        error: io::Error,
    },
}

fn sys_err(step: &'static str) -> impl FnOnce(io::Error) -> StartError {
    move |source| StartError::Sys { step, source }
}

fn nix_err(step: &'static str) -> impl FnOnce(Errno) -> StartError {
    move |e| StartError::Sys {
        step,
        source: io::Error::from(e),
    }
}

/// Messages between the monitor and the container's set-up processes.
#[derive(Debug, Serialize, Deserialize)]
enum Message {
    UsernsReady,
    Go,
    Pid1 {
        pid: i32,
    },
    /// P has built the layout and switched to the container's root: the disks can come.
    LayoutReady,
    /// Carries the seccomp notify fd as SCM_RIGHTS.
    SeccompFd,
    Error(String),
}

/// Work on the host side once the container's namespaces exist and before its init runs, given
/// init's host pid (its namespaces are at /proc/PID/ns/*). An error fails the start with that
/// text. It may start threads, as long as they end before it returns: the monitor must be
/// single-threaded again when it forks exec helpers.
pub type HostSetup<'a> = &'a dyn Fn(i32) -> Result<(), String>;

/// A container that has executed its init.
pub struct Started {
    pub init_pid: i32,
    pub init_pidfd: OwnedFd,
    pub console_master: OwnedFd,
    /// Kept open so the master never reads EIO (and never polls as hung up) while init has
    /// the console closed.
    pub console_slave: OwnedFd,
    pub seccomp_fd: Option<OwnedFd>,
    pub cgroup: Cgroup,
    pub stop_signal: i32,
    /// Whether the rootfs is an idmapped mount (false: shifted on disk, or privileged).
    pub idmapped: bool,
    /// The disk binds, in the order they were made.
    pub disks: Vec<AttachedDisk>,
    /// Restored by CRIU rather than started: its root is not a slave of the staged rootfs.
    pub restored: bool,
}

/// A disk bind of a running container.
pub struct AttachedDisk {
    /// Where it is in the container (normalized).
    pub target: PathBuf,
    /// The mount on M's staged rootfs that the container's copy propagated from; `None` for a
    /// bind that CRIU restored inside the container, which stays until the container stops.
    pub mount: Option<OwnedFd>,
    /// Device and inode of its root, which tell the container's copy apart.
    pub root: (u64, u64),
    /// Made by a hot-plug, not at start.
    pub hotplugged: bool,
}

fn send(sock: BorrowedFd<'_>, msg: &Message, fd: Option<RawFd>) -> io::Result<()> {
    packet::send(sock, msg, fd.as_slice())
}

/// Receives one message; `Ok(None)` at end of file.
fn recv(sock: BorrowedFd<'_>, timeout: Duration) -> Result<Option<(Message, Option<OwnedFd>)>, StartError> {
    if !packet::wait_readable(sock, timeout).map_err(sys_err("poll"))? {
        return Err(StartError::Timeout(timeout));
    }
    let got = packet::recv::<Message>(sock).map_err(sys_err("receive from the container's set-up"))?;
    Ok(got.map(|(m, fds)| (m, fds.into_iter().next())))
}

/// Resolves `path` inside `root` without leaving it (symlinks are taken as relative to root).
pub fn resolve_in_root(root: &Path, path: &str) -> Option<PathBuf> {
    let mut current = PathBuf::from("/");
    let mut pending: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .rev()
        .collect();
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        match part.as_str() {
            "." => continue,
            ".." => {
                current.pop();
                continue;
            }
            _ => {}
        }
        let candidate = current.join(&part);
        let host = root.join(candidate.strip_prefix("/").ok()?);
        let meta = fs::symlink_metadata(&host).ok()?;
        if meta.file_type().is_symlink() {
            hops += 1;
            if hops > 40 {
                return None;
            }
            let target = fs::read_link(&host).ok()?;
            let target = target.to_string_lossy().to_string();
            if target.starts_with('/') {
                current = PathBuf::from("/");
            }
            pending.extend(target.split('/').filter(|s| !s.is_empty()).map(str::to_string).rev());
        } else {
            current = candidate;
        }
    }
    Some(root.join(current.strip_prefix("/").ok()?))
}

/// The signal that asks this init to shut down.
pub fn stop_signal_for(spec: &ContainerSpec, init_on_host: &Path) -> i32 {
    match spec.stop_signal {
        StopSignal::Signal(s) => s,
        StopSignal::Auto => {
            let name = init_on_host
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            if name.contains("systemd") {
                sys::sigrtmin_plus(3)
            } else if name.contains("busybox") {
                libc::SIGUSR2
            } else {
                libc::SIGPWR
            }
        }
    }
}

/// Creates the container described by `spec` and execs its init. Called by the monitor, which
/// must be single-threaded, a child subreaper, and in a private mount namespace of its own.
/// On error nothing of the container is left: no process, cgroup or mount.
pub fn start(
    spec: &ContainerSpec,
    cgroup_root: &CgroupRoot,
    staging: &Path,
    host_setup: HostSetup<'_>,
) -> Result<Started, StartError> {
    if !spec.rootfs.is_dir() {
        return Err(StartError::NoRootfs(spec.rootfs.clone()));
    }
    let init = spec.init.first().cloned().unwrap_or_default();
    let init_on_host = resolve_in_root(&spec.rootfs, &init)
        .filter(|p| {
            fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
        .ok_or_else(|| StartError::NoInit {
            init: init.clone(),
            rootfs: spec.rootfs.clone(),
        })?;
    let stop_signal = stop_signal_for(spec, &init_on_host);
    if !(1..=64).contains(&stop_signal) {
        return Err(StartError::BadStopSignal(stop_signal));
    }
    layout::check_mounts(spec)?;

    let delegate = spec.idmap.map(|m| (m.host_uid, m.host_gid));
    let cgroup = create_cgroup(cgroup_root, spec, delegate)?;
    match start_in_cgroup(spec, &cgroup, staging, host_setup) {
        Ok((init_pid, init_pidfd, (console_master, console_slave), seccomp_fd, idmapped, disks)) => Ok(Started {
            init_pid,
            init_pidfd,
            console_master,
            console_slave,
            seccomp_fd,
            cgroup,
            stop_signal,
            idmapped,
            disks,
            restored: false,
        }),
        Err(e) => {
            let _ = cgroup.kill_all();
            let _ = cgroup.destroy();
            Err(e)
        }
    }
}

/// Creates the container's cgroup. One left behind by a monitor that died (empty: no process)
/// is removed first; one with processes means the container is in fact running.
pub(crate) fn create_cgroup(
    root: &CgroupRoot,
    spec: &ContainerSpec,
    delegate: Option<(u32, u32)>,
) -> Result<Cgroup, StartError> {
    let devices = spec
        .devices
        .iter()
        .map(|d| DeviceRule::for_node(&d.source, "rwm"))
        .collect::<Result<Vec<_>, _>>()?;
    match Cgroup::create(root, spec.cgroup(), &spec.limits, &devices, delegate) {
        Err(CgroupError::Exists { .. }) => {
            let stale = Cgroup::at(root, spec.cgroup())?;
            if !stale.pids()?.is_empty() {
                return Err(StartError::AlreadyRunning(spec.name.clone()));
            }
            tracing::warn!(name = %spec.name, "removing a stale cgroup left by an earlier run");
            stale.destroy()?;
            Ok(Cgroup::create(root, spec.cgroup(), &spec.limits, &devices, delegate)?)
        }
        other => Ok(other?),
    }
}

type StartedParts = (
    i32,
    OwnedFd,
    (OwnedFd, OwnedFd),
    Option<OwnedFd>,
    bool,
    Vec<AttachedDisk>,
);

fn start_in_cgroup(
    spec: &ContainerSpec,
    cgroup: &Cgroup,
    staging: &Path,
    host_setup: HostSetup<'_>,
) -> Result<StartedParts, StartError> {
    let t0 = Instant::now();
    let (console_master, console_slave_path) = open_console(spec)?;
    let console_keep = sys::open_pty_peer(console_master.as_fd()).map_err(StartError::Console)?;
    nix::fcntl::fcntl(
        &console_master,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .map_err(|e| StartError::Console(e.into()))?;
    let (parent_sock, child_sock) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
        .map_err(nix_err("socketpair"))?;
    fs::create_dir_all(staging).map_err(sys_err("create the rootfs staging directory"))?;
    let lxcfs_mounted = spec.lxcfs.as_deref().is_some_and(layout::lxcfs_mounted);

    // SAFETY: the monitor is single-threaded (see the contract of `start`); the child only
    // runs the set-up code below and then execs or exits with `exit_now`.
    let fork = unsafe { sys::fork() }.map_err(sys_err("fork"))?;
    let child = match fork {
        nix::unistd::ForkResult::Child => {
            drop(parent_sock);
            let code = match setup_child(spec, child_sock.as_fd(), &console_slave_path, staging, lxcfs_mounted) {
                Ok(()) => 0,
                Err(msg) => {
                    let _ = send(child_sock.as_fd(), &Message::Error(msg), None);
                    1
                }
            };
            sys::exit_now(code);
        }
        nix::unistd::ForkResult::Parent { child } => child,
    };
    drop(child_sock);
    let result = drive_child(spec, cgroup, parent_sock.as_fd(), child, staging);
    // C is gone (or must be): reap it so it does not linger as a zombie.
    let _ = signal::kill(child, signal::Signal::SIGKILL);
    let _ = waitpid(child, None);
    let (pid1, idmapped, layout_ready) = result?;
    let t_pid1 = t0.elapsed();
    // P's root is in place: the disks propagate into it.
    let layout = match layout_ready {
        true => Ok(()),
        false => expect(parent_sock.as_fd(), "LayoutReady", |m| {
            matches!(m, Message::LayoutReady)
        })
        .map(|_| ()),
    };
    let disks = match layout.and_then(|_| attach_monitor_binds(spec, pid1, staging)) {
        Ok(d) => d,
        Err(e) => {
            reap_failed(pid1);
            return Err(e);
        }
    };
    let t_disks = t0.elapsed();
    if let Err(e) = host_setup(pid1) {
        reap_failed(pid1);
        return Err(StartError::HostSetup(e));
    }
    let t_host = t0.elapsed();
    // P waits for this before exec; if P failed meanwhile, its error is read below.
    let _ = send(parent_sock.as_fd(), &Message::Go, None);

    // Wait for P to exec init (EOF) or report an error.
    let mut seccomp_fd = None;
    loop {
        match recv(parent_sock.as_fd(), SETUP_TIMEOUT) {
            Ok(None) => break,
            Ok(Some((Message::SeccompFd, fd))) => seccomp_fd = fd,
            Ok(Some((Message::Error(e), _))) => {
                reap_failed(pid1);
                return Err(StartError::Child(e));
            }
            Ok(Some((other, _))) => {
                reap_failed(pid1);
                return Err(StartError::Child(format!("unexpected message {other:?}")));
            }
            Err(e) => {
                reap_failed(pid1);
                return Err(e);
            }
        }
    }
    let pidfd = match sys::pidfd_open(pid1) {
        Ok(fd) => fd,
        Err(e) => {
            reap_failed(pid1);
            return Err(StartError::Sys {
                step: "pidfd_open of init",
                source: e,
            });
        }
    };
    // End of file also means P died: any status here is a failed start.
    match waitpid(Pid::from_raw(pid1), Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::StillAlive) => {}
        Ok(WaitStatus::Exited(_, code)) => {
            return Err(StartError::Child(format!("init exited at once with status {code}")))
        }
        Ok(WaitStatus::Signaled(_, sig, _)) => {
            return Err(StartError::Child(format!("init was killed at once by {sig}")))
        }
        Ok(other) => {
            reap_failed(pid1);
            return Err(StartError::Child(format!("init stopped at once ({other:?})")));
        }
        Err(e) => return Err(StartError::Child(format!("init vanished at once: {e}"))),
    }
    // Where a start's time goes (scripts/bench-network.sh's start_ms): the user namespace, the
    // rootfs and P; the disks; the caller's host set-up (NICs); then what P had left of its
    // layout (built meanwhile), its seccomp filter and the exec of init.
    tracing::debug!(
        name = %spec.name,
        to_pid1 = ?t_pid1,
        disks = ?(t_disks - t_pid1),
        host_setup = ?(t_host - t_disks),
        to_exec = ?(t0.elapsed() - t_host),
        "start timings"
    );
    Ok((pid1, pidfd, (console_master, console_keep), seccomp_fd, idmapped, disks))
}

fn reap_failed(pid: i32) {
    let pid = Pid::from_raw(pid);
    let _ = signal::kill(pid, signal::Signal::SIGKILL);
    let _ = waitpid(pid, None);
}

/// M's side of the hand-shake with C. Returns P's host pid, whether the rootfs is idmapped, and
/// whether P's LayoutReady has come already.
fn drive_child(
    spec: &ContainerSpec,
    cgroup: &Cgroup,
    sock: BorrowedFd<'_>,
    child: Pid,
    staging: &Path,
) -> Result<(i32, bool, bool), StartError> {
    let mut idmapped = false;
    if let Some(map) = &spec.idmap {
        expect(sock, "UsernsReady", |m| matches!(m, Message::UsernsReady))?;
        crate::idmap::write_maps(child.as_raw(), map).map_err(sys_err("write the uid/gid maps"))?;
        idmapped = attach_rootfs_unprivileged(spec, child, staging)?;
    } else {
        let tree = sys::open_tree_clone(&spec.rootfs, true).map_err(sys_err("open_tree of the rootfs"))?;
        sys::move_mount_to(tree.as_fd(), staging).map_err(sys_err("move_mount of the rootfs"))?;
    }
    share_staging(staging)?;
    cgroup.add_process(child.as_raw())?;
    send(sock, &Message::Go, None).map_err(sys_err("send to the container"))?;
    // C reports P's pid and P its layout on the same socket from two processes: on a busy host
    // P's LayoutReady can come first.
    let mut layout_ready = false;
    loop {
        let m = expect(sock, "Pid1", |m| {
            matches!(m, Message::Pid1 { .. }) || (!layout_ready && matches!(m, Message::LayoutReady))
        })?;
        match m {
            Message::Pid1 { pid } => return Ok((pid, idmapped, layout_ready)),
            _ => layout_ready = true,
        }
    }
}

fn expect(sock: BorrowedFd<'_>, what: &str, ok: impl Fn(&Message) -> bool) -> Result<Message, StartError> {
    match recv(sock, SETUP_TIMEOUT)? {
        Some((m, _)) if ok(&m) => Ok(m),
        Some((Message::Error(e), _)) => Err(StartError::Child(e)),
        Some((m, _)) => Err(StartError::Child(format!("expected {what}, got {m:?}"))),
        None => Err(StartError::Child(format!(
            "the container's set-up process exited before {what}"
        ))),
    }
}

/// Attaches the rootfs at `staging` for an unprivileged container: idmapped where the
/// filesystem allows, else shifted on disk once. Returns whether it is idmapped.
pub(crate) fn attach_rootfs_unprivileged(spec: &ContainerSpec, child: Pid, staging: &Path) -> Result<bool, StartError> {
    let map = spec.idmap.expect("only called for unprivileged containers");
    let tree = sys::open_tree_clone(&spec.rootfs, true).map_err(sys_err("open_tree of the rootfs"))?;
    // A rootfs shifted earlier must not be idmapped on top (ids would be mapped twice).
    let use_idmap = spec.rootfs_mode == RootfsMode::Auto && shift::recorded_map(&spec.rootfs).is_none();
    let mut idmapped = false;
    if use_idmap {
        let userns = fs::File::open(format!("/proc/{}/ns/user", child.as_raw()))
            .map_err(sys_err("open the container's user namespace"))?;
        match sys::mount_setattr_idmap(tree.as_fd(), userns.as_fd(), true, false) {
            Ok(()) => idmapped = true,
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) | Some(libc::EPERM)
                ) =>
            {
                tracing::info!(rootfs = %spec.rootfs.display(), error = %e, "filesystem cannot idmap; shifting ownership instead");
            }
            Err(e) => {
                return Err(StartError::Sys {
                    step: "mount_setattr(MOUNT_ATTR_IDMAP) of the rootfs",
                    source: e,
                })
            }
        }
    }
    if !idmapped {
        let outcome = shift::ensure_shifted(&spec.rootfs, &map)?;
        tracing::info!(?outcome, "rootfs ownership shift");
    }
    sys::move_mount_to(tree.as_fd(), staging).map_err(sys_err("move_mount of the rootfs"))?;
    Ok(idmapped)
}

/// Makes the staged rootfs a shared mount of M's namespace (a peer group of its own): the
/// container's copy of it, and P's root, are its slaves, which receive the disks M mounts on
/// it.
pub(crate) fn share_staging(staging: &Path) -> Result<(), StartError> {
    nix::mount::mount(
        None::<&str>,
        staging,
        None::<&str>,
        nix::mount::MsFlags::MS_SHARED,
        None::<&str>,
    )
    .map_err(nix_err("make the staged rootfs shared"))
}

/// Opens (`O_PATH`) the staged rootfs, the directory the disks' mount points are opened under.
pub(crate) fn open_staging(staging: &Path) -> Result<OwnedFd, StartError> {
    use nix::fcntl::OFlag;
    nix::fcntl::open(
        staging,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(nix_err("open the staged rootfs"))
}

/// Makes the spec's [`MountKind::MonitorBind`] mounts on the staged rootfs, in order, once P
/// has switched to the container's root (a slave of the staged rootfs): a detached copy of
/// each source (open_tree), idmapped through the container's user namespace and/or made
/// read-only (mount_setattr), attached on its mount point (move_mount), from where it
/// propagates into the container with its flags locked. Idmapped mounts need CAP_SYS_ADMIN in
/// the initial user namespace, which only the monitor has.
fn attach_monitor_binds(spec: &ContainerSpec, pid1: i32, staging: &Path) -> Result<Vec<AttachedDisk>, StartError> {
    let binds: Vec<_> = spec
        .mounts
        .iter()
        .filter_map(|m| match m.kind {
            MountKind::MonitorBind { recursive, idmapped } => Some((m, recursive, idmapped)),
            _ => None,
        })
        .collect();
    if binds.is_empty() {
        return Ok(Vec::new());
    }
    let userns = match spec.idmap {
        Some(_) => Some(
            fs::File::open(format!("/proc/{pid1}/ns/user")).map_err(sys_err("open the container's user namespace"))?,
        ),
        None => None,
    };
    let root = open_staging(staging)?;
    let mut out = Vec::new();
    for (m, recursive, idmapped) in binds {
        let ns = match (idmapped, &userns) {
            (true, Some(u)) => Some(u.as_fd()),
            (true, None) => unreachable!("check_mounts refuses idmapped binds without an idmap"),
            (false, _) => None,
        };
        let (tree, is_dir) = detached_bind(m, recursive, ns)?;
        let disk_root = root_id(&tree).map_err(bind_err(m, "stat of the bind"))?;
        attach_on_staging(spec, root.as_fd(), m, &tree, is_dir)?;
        out.push(AttachedDisk {
            target: layout::normalize(&m.target),
            mount: Some(tree),
            root: disk_root,
            hotplugged: false,
        });
    }
    Ok(out)
}

/// Attaches the detached bind `tree` of `m` on its mount point under the staged rootfs `root`,
/// opened (and created where missing, as the container's root) component by component without
/// following symlinks.
pub(crate) fn attach_on_staging(
    spec: &ContainerSpec,
    root: BorrowedFd<'_>,
    m: &Mount,
    tree: &OwnedFd,
    is_dir: bool,
) -> Result<(), StartError> {
    let target = as_container_root(spec, || layout::open_mount_target(root, &m.target, is_dir))?;
    sys::move_mount_onto(tree.as_fd(), target.as_fd()).map_err(bind_err(m, "move_mount"))
}

/// Device and inode of the root of the mount `fd` is open on.
pub(crate) fn root_id(fd: &OwnedFd) -> io::Result<(u64, u64)> {
    let st = nix::sys::stat::fstat(fd)?;
    Ok((st.st_dev, st.st_ino))
}

/// The propagation a disk bind gets inside the container, where its copy is a slave of the
/// monitor's mount: `Some((flag, recursive))` for `shared` and `unbindable` (`private` and
/// `slave` leave it a slave, which only the monitor's mounts below it reach).
pub(crate) fn propagation_inside(p: crate::spec::Propagation) -> Option<(libc::c_ulong, bool)> {
    use crate::spec::Propagation as P;
    match p {
        P::Shared => Some((libc::MS_SHARED, false)),
        P::RShared => Some((libc::MS_SHARED, true)),
        P::Unbindable => Some((libc::MS_UNBINDABLE, false)),
        P::RUnbindable => Some((libc::MS_UNBINDABLE, true)),
        P::Private | P::RPrivate | P::Slave | P::RSlave => None,
    }
}

/// The propagation a disk bind gets from the host, set on its detached copy before it is
/// attached: `private` and `unbindable` cut it off from the host's mounts below the source
/// (`Some(recursive)`), `slave` and `shared` keep receiving them (the monitor's namespace is a
/// slave of the host's, and so is a copy of one of its mounts).
fn cut_from_host(p: crate::spec::Propagation) -> Option<bool> {
    use crate::spec::Propagation as P;
    match p {
        P::Private | P::Unbindable => Some(false),
        P::RPrivate | P::RUnbindable => Some(true),
        P::Shared | P::RShared | P::Slave | P::RSlave => None,
    }
}

fn bind_err<'a>(m: &'a Mount, step: &'static str) -> impl FnOnce(io::Error) -> StartError + 'a {
    move |error| StartError::Bind {
        source_path: m.source.clone(),
        target: m.target.clone(),
        step,
        error,
    }
}

/// A detached copy of `m.source` (the whole tree below it with `recursive`), idmapped through
/// `userns` if given, read-only if `m.readonly`, and private if its propagation cuts it off
/// from the host: a bind ready to be attached with move_mount. Returns it and whether the source is a directory. The monitor makes the disk
/// binds of a start and of a hot-plug ([`crate::hotplug`]) this way; an idmap needs
/// CAP_SYS_ADMIN in the initial user namespace.
pub(crate) fn detached_bind(
    m: &Mount,
    recursive: bool,
    userns: Option<BorrowedFd<'_>>,
) -> Result<(OwnedFd, bool), StartError> {
    let tree = sys::open_tree_clone(&m.source, recursive).map_err(bind_err(m, "open_tree of the source"))?;
    let is_dir = nix::sys::stat::fstat(&tree)
        .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
        .map_err(|e| bind_err(m, "stat of the source")(e.into()))?;
    let idmapped = userns.is_some();
    sys::mount_setattr_detached(tree.as_fd(), userns, recursive, m.readonly).map_err(|e| {
        let step = match (idmapped, e.raw_os_error()) {
            (true, Some(libc::EINVAL)) => "mount_setattr: the source's filesystem cannot be idmapped",
            (true, _) => "mount_setattr (idmap)",
            (false, _) => "mount_setattr (read-only)",
        };
        bind_err(m, step)(e)
    })?;
    if let Some(rec) = cut_from_host(m.propagation) {
        sys::mount_setattr_propagation(tree.as_fd(), libc::MS_PRIVATE, rec)
            .map_err(bind_err(m, "mount_setattr (private)"))?;
    }
    Ok((tree, is_dir))
}

/// Runs `f` with the monitor's filesystem ids set to the container's root, so that the mount
/// points it creates belong to the container and its permissions are the container's (through
/// an idmapped rootfs, host root could create nothing: it has no id in the container). The
/// monitor is single-threaded, and the ids are the calling thread's only.
fn as_container_root<T>(spec: &ContainerSpec, f: impl FnOnce() -> T) -> T {
    let Some(map) = spec.idmap else {
        return f();
    };
    let old_uid = nix::unistd::setfsuid(Uid::from_raw(map.host_uid));
    let old_gid = nix::unistd::setfsgid(Gid::from_raw(map.host_gid));
    let out = f();
    nix::unistd::setfsgid(old_gid);
    nix::unistd::setfsuid(old_uid);
    out
}

/// Opens the console pty on the host's devpts; the slave is handed to the container's root.
pub(crate) fn open_console(spec: &ContainerSpec) -> Result<(OwnedFd, PathBuf), StartError> {
    use nix::fcntl::OFlag;
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(|e| StartError::Console(e.into()))?;
    nix::pty::grantpt(&master).map_err(|e| StartError::Console(e.into()))?;
    nix::pty::unlockpt(&master).map_err(|e| StartError::Console(e.into()))?;
    let slave = nix::pty::ptsname_r(&master).map_err(|e| StartError::Console(e.into()))?;
    let slave = PathBuf::from(slave);
    if let Some(map) = &spec.idmap {
        chown(&slave, Some(map.host_uid), Some(map.host_gid + 5)).map_err(StartError::Console)?;
    }
    let fd: OwnedFd = master.into();
    let _ = sys::set_window_size(fd.as_fd(), 24, 80);
    Ok((fd, slave))
}

/// C and then P. Returns an error text for M; never returns on success (P execs init).
fn setup_child(
    spec: &ContainerSpec,
    sock: BorrowedFd<'_>,
    console: &Path,
    staging: &Path,
    lxcfs_mounted: bool,
) -> Result<(), String> {
    // The monitor blocks signals for its signalfd; the container must start with none blocked.
    let _ = signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    // Nor inherit the monitor's ignored SIGPIPE: exec keeps "ignore" dispositions.
    sys::reset_signal_dispositions();
    // Die with the monitor while still being set up.
    let _ = sys::set_pdeathsig(libc::SIGKILL);
    if let NetworkNamespace::Join(path) = &spec.network {
        // Joining a host-owned namespace needs host privileges: before the user namespace.
        let f = fs::File::open(path).map_err(|e| format!("cannot open network namespace {}: {e}", path.display()))?;
        setns(f.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("cannot join network namespace {}: {e}", path.display()))?;
    }
    if spec.idmap.is_some() {
        unshare(CloneFlags::CLONE_NEWUSER).map_err(|e| format!("cannot create the user namespace: {e}"))?;
        send(sock, &Message::UsernsReady, None).map_err(|e| e.to_string())?;
    }
    match recv(sock, SETUP_TIMEOUT).map_err(|e| e.to_string())? {
        Some((Message::Go, _)) => {}
        other => return Err(format!("expected go from the monitor, got {other:?}")),
    }
    if spec.idmap.is_some() {
        setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0)).map_err(|e| format!("setresgid(0): {e}"))?;
        setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0)).map_err(|e| format!("setresuid(0): {e}"))?;
        nix::unistd::setgroups(&[]).map_err(|e| format!("setgroups: {e}"))?;
    }
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWCGROUP
        | CloneFlags::CLONE_NEWPID;
    if spec.network == NetworkNamespace::New {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    unshare(flags).map_err(|e| format!("cannot create the container's namespaces: {e}"))?;
    // SAFETY: C is single-threaded (forked from the single-threaded monitor).
    match unsafe { sys::fork() }.map_err(|e| format!("fork of init: {e}"))? {
        nix::unistd::ForkResult::Parent { child } => {
            send(sock, &Message::Pid1 { pid: child.as_raw() }, None).map_err(|e| e.to_string())?;
            Ok(())
        }
        nix::unistd::ForkResult::Child => {
            let msg = match setup_pid1(spec, sock, console, staging, lxcfs_mounted) {
                Err(e) => e,
                Ok(never) => match never {},
            };
            let _ = send(sock, &Message::Error(msg), None);
            sys::exit_now(1);
        }
    }
}

/// PID 1 of the container: layout, root switch, console, privileges, exec.
fn setup_pid1(
    spec: &ContainerSpec,
    sock: BorrowedFd<'_>,
    console: &Path,
    staging: &Path,
    lxcfs_mounted: bool,
) -> Result<std::convert::Infallible, String> {
    let input = LayoutInput {
        spec,
        root: staging,
        console,
        lxcfs_mounted,
    };
    layout::build(&input).map_err(|e| e.to_string())?;
    // Open the console before the old root (and the host's devpts) goes away.
    let tty = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(staging.join("dev/console"))
        .map_err(|e| format!("cannot open the console: {e}"))?;
    layout::pivot_into(staging).map_err(|e| e.to_string())?;
    send(sock, &Message::LayoutReady, None).map_err(|e| e.to_string())?;
    nix::unistd::sethostname(&spec.hostname).map_err(|e| format!("sethostname: {e}"))?;
    nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
    sys::set_controlling_tty(tty.as_fd()).map_err(|e| format!("console as controlling terminal: {e}"))?;
    nix::unistd::dup2_stdin(&tty).map_err(|e| format!("console as stdin: {e}"))?;
    nix::unistd::dup2_stdout(&tty).map_err(|e| format!("console as stdout: {e}"))?;
    nix::unistd::dup2_stderr(&tty).map_err(|e| format!("console as stderr: {e}"))?;
    drop(tty);
    caps::restrict(&spec.cap_drop)?;
    match recv(sock, SETUP_TIMEOUT).map_err(|e| e.to_string())? {
        Some((Message::Go, _)) => {}
        other => {
            return Err(format!(
                "expected go from the monitor after the host set-up, got {other:?}"
            ))
        }
    }
    // The disks are here now (see `attach_monitor_binds`); nothing but this process runs in
    // the container yet, and their mount points were opened without following symlinks.
    for m in &spec.mounts {
        if let (MountKind::MonitorBind { .. }, Some((flag, rec))) = (&m.kind, propagation_inside(m.propagation)) {
            let flags = nix::mount::MsFlags::from_bits_truncate(flag)
                | if rec {
                    nix::mount::MsFlags::MS_REC
                } else {
                    nix::mount::MsFlags::empty()
                };
            nix::mount::mount(None::<&str>, &m.target, None::<&str>, flags, None::<&str>)
                .map_err(|e| format!("cannot set the propagation of {}: {e}", m.target.display()))?;
        }
    }
    let argv: Vec<CString> = spec
        .init
        .iter()
        .map(|a| CString::new(a.as_str()))
        .collect::<Result<_, _>>()
        .map_err(|_| "init argv contains a NUL byte".to_string())?;
    let mut env: Vec<CString> = Vec::new();
    let mut has_container = false;
    for (k, v) in &spec.env {
        has_container |= k == "container";
        env.push(
            CString::new(format!("{k}={v}")).map_err(|_| format!("environment variable {k} contains a NUL byte"))?,
        );
    }
    if !has_container {
        env.push(c"container=corral".to_owned());
    }
    if !spec.env.contains_key("PATH") {
        env.push(c"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned());
    }
    // Seccomp last: from here on intercepted syscalls wait for the monitor.
    let notify = seccomp::install(&spec.seccomp).map_err(|e| e.to_string())?;
    if let Some(fd) = &notify {
        send(sock, &Message::SeccompFd, Some(fd.as_raw_fd())).map_err(|e| e.to_string())?;
    }
    drop(notify);
    let e = nix::unistd::execve(&argv[0], &argv, &env).unwrap_err();
    Err(format!("cannot execute init {:?}: {e}", spec.init[0]))
}
