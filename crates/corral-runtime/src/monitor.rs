//! The monitor: one small process per running container, independent of the daemon.
//!
//! `corrald monitor <run_dir>` ends up here. The monitor detaches from whoever spawned it
//! (setsid and a fork, so it is nobody's child but init's and outlives the daemon), builds the
//! container ([`crate::start`]), reports readiness on its stdout, then serves the control socket
//! ([`crate::proto`]) from a single-threaded poll loop that also reaps children (signalfd),
//! drains the console pty into a ring buffer and answers seccomp notifications. When init
//! exits it tears everything down (cgroup, socket, state file) and exits: its private mount
//! namespace, which holds the staging mount of the rootfs, dies with it.
//!
//! Single-threaded on purpose: the exec, mknod and hot-plug helpers are forked from it and then
//! call setns, which a multi-threaded process may not.

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{
    accept4, bind, listen, socket, socketpair, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};

use crate::cgroup::CgroupRoot;
use crate::hotplug::{self, Outcome};
use crate::proto::{self, ExitInfo, MonitorState, Ready, Reply, Request, Status, StopOutcome};
use crate::spec::{ContainerSpec, Mount, SPEC_VERSION};
use crate::start::{self, AttachedDisk, Started};
use crate::{exec, packet, seccomp, sys};

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("cannot read the spec {path}: {source}")]
    ReadSpec { path: PathBuf, source: io::Error },
    #[error("invalid spec {path}: {source}")]
    BadSpec { path: PathBuf, source: serde_json::Error },
    #[error("spec version {found} is not supported by this monitor (expects {SPEC_VERSION})")]
    SpecVersion { found: u32 },
    #[error("{step}: {source}")]
    Sys { step: &'static str, source: io::Error },
    #[error(transparent)]
    Start(#[from] start::StartError),
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::CgroupError),
    #[error(transparent)]
    Restore(#[from] crate::checkpoint::CheckpointError),
}

fn sys_err(step: &'static str) -> impl FnOnce(io::Error) -> MonitorError {
    move |source| MonitorError::Sys { step, source }
}

fn nix_err(step: &'static str) -> impl FnOnce(Errno) -> MonitorError {
    move |e| MonitorError::Sys { step, source: e.into() }
}

/// How often a clean stop in progress is checked for completion.
const STOP_TICK: Duration = Duration::from_millis(10);
/// How long a hot-plug helper may take before it is killed and the request fails.
const HOTPLUG_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads and checks the spec kept in `run_dir`.
pub fn read_spec(run_dir: &Path) -> Result<ContainerSpec, MonitorError> {
    let path = run_dir.join(proto::SPEC);
    let raw = fs::read(&path).map_err(|source| MonitorError::ReadSpec {
        path: path.clone(),
        source,
    })?;
    let spec: ContainerSpec = serde_json::from_slice(&raw).map_err(|source| MonitorError::BadSpec { path, source })?;
    if spec.version != SPEC_VERSION {
        return Err(MonitorError::SpecVersion { found: spec.version });
    }
    Ok(spec)
}

/// Detaches from the spawner: new session, and a fork whose parent exits at once, so the
/// monitor is reparented away from the daemon. Call first thing, while single-threaded.
pub fn detach() -> io::Result<()> {
    // Descriptors the spawner leaked (a daemon's sockets, say) must never reach a container.
    sys::cloexec_from_3()?;
    let _ = nix::unistd::setsid();
    // SAFETY: called at the start of the monitor process, which is single-threaded.
    match unsafe { sys::fork() }? {
        nix::unistd::ForkResult::Parent { .. } => sys::exit_now(0),
        nix::unistd::ForkResult::Child => Ok(()),
    }
}

/// The monitor's main: start the container described in `run_dir`, report on `ready` (the
/// spawner's pipe), serve until init exits. Returns init's exit.
/// `host_setup` runs once the container's namespaces exist, before init ([`start::HostSetup`]).
pub fn run(run_dir: &Path, mut ready: impl Write, host_setup: start::HostSetup<'_>) -> Result<ExitInfo, MonitorError> {
    let report = |ready: &mut dyn Write, r: &Ready| {
        let _ = serde_json::to_writer(&mut *ready, r);
        let _ = ready.write_all(b"\n");
        let _ = ready.flush();
    };
    let prepared = prepare(run_dir, host_setup);
    let (spec, mut monitor) = match prepared {
        Ok(p) => p,
        Err(e) => {
            let staging = run_dir.join("rootfs");
            let _ = nix::mount::umount2(&staging, nix::mount::MntFlags::MNT_DETACH);
            let _ = fs::remove_dir(&staging);
            report(&mut ready, &Ready::Failed(e.to_string()));
            return Err(e);
        }
    };
    tracing::info!(name = %spec.name, init_pid = monitor.started.init_pid, "container started");
    report(
        &mut ready,
        &Ready::Started {
            monitor_pid: std::process::id() as i32,
            init_pid: monitor.started.init_pid,
        },
    );
    drop(ready);
    // Let go of the spawner's pipe: it must see end of file, and the monitor must not die of
    // a write to it later.
    if let Ok(null) = fs::OpenOptions::new().read(true).write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(&null);
        let _ = nix::unistd::dup2_stdin(&null);
    }
    // A bug in the loop must not leave the container unsupervised: kill it and clean up.
    let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| monitor.serve()));
    let exit = match served {
        Ok(exit) => exit,
        Err(_) => {
            tracing::error!("the monitor's event loop panicked; killing the container");
            monitor.killed = true;
            let _ = monitor.started.cgroup.kill_all();
            ExitInfo::Signaled(libc::SIGKILL)
        }
    };
    let exit = monitor.teardown(exit);
    tracing::info!(name = %spec.name, ?exit, "container stopped");
    Ok(exit)
}

fn prepare(run_dir: &Path, host_setup: start::HostSetup<'_>) -> Result<(ContainerSpec, Monitor), MonitorError> {
    let spec = read_spec(run_dir)?;
    sys::set_child_subreaper().map_err(sys_err("prctl(PR_SET_CHILD_SUBREAPER)"))?;
    // A private mount namespace: the rootfs staging mount must never be visible on the host
    // and must vanish with the monitor.
    unshare(CloneFlags::CLONE_NEWNS).map_err(nix_err("unshare(CLONE_NEWNS)"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(nix_err("make / a slave mount"))?;
    let mut mask = SigSet::empty();
    for s in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        mask.add(s);
    }
    mask.thread_block().map_err(nix_err("block signals"))?;
    let sigfd =
        SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK).map_err(nix_err("signalfd"))?;
    // Writes to a client that went away must not kill the monitor.
    sys::ignore_sigpipe().map_err(sys_err("ignore SIGPIPE"))?;

    let cgroup_root = CgroupRoot::detect()?;
    let staging = run_dir.join("rootfs");
    // The socket first: nothing that can fail may come after the container exists.
    let listener = listen_on(&run_dir.join(proto::SOCKET))?;
    // A restore request (crate::checkpoint::restore) replaces the fork sequence with CRIU's;
    // the container comes out the same.
    let started: Result<Started, MonitorError> = match crate::checkpoint::take_restore_request(run_dir) {
        Some(req) => req
            .and_then(|req| crate::checkpoint::restore_in_monitor(&spec, &cgroup_root, &staging, host_setup, &req))
            .map_err(MonitorError::from),
        None => start::start(&spec, &cgroup_root, &staging, host_setup).map_err(MonitorError::from),
    };
    let mut started = match started {
        Ok(s) => s,
        Err(e) => {
            let _ = fs::remove_file(run_dir.join(proto::SOCKET));
            return Err(e);
        }
    };
    let supervisors = started
        .seccomp_fd
        .take()
        .map(|fd| seccomp::Supervisor::new(fd, spec.idmap))
        .into_iter()
        .collect();
    let started_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let disks = std::mem::take(&mut started.disks);
    let monitor = Monitor {
        run_dir: run_dir.to_path_buf(),
        spec: spec.clone(),
        started,
        started_at,
        listener,
        sigfd,
        supervisors,
        notify_channels: Vec::new(),
        console: Ring::new(spec.console_log_size),
        console_clients: Vec::new(),
        pending: Vec::new(),
        execs: HashMap::new(),
        stop_waiters: Vec::new(),
        stop_deadline: None,
        disks,
        hotplug_ops: Vec::new(),
        killed: false,
        init_caught_stop: false,

        status: Status::Running,
    };
    monitor.write_state();
    Ok((spec, monitor))
}

fn listen_on(path: &Path) -> Result<OwnedFd, MonitorError> {
    let _ = fs::remove_file(path);
    let sock = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(nix_err("socket"))?;
    let addr = UnixAddr::new(path).map_err(nix_err("control socket path"))?;
    bind(sock.as_raw_fd(), &addr).map_err(nix_err("bind the control socket"))?;
    // Root only, like the daemon's socket.
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(sys_err("chmod the control socket"))?;
    listen(&sock, Backlog::new(64).unwrap_or(Backlog::MAXCONN)).map_err(nix_err("listen"))?;
    Ok(sock)
}

/// A fixed-size buffer keeping the newest console output.
struct Ring {
    buf: VecDeque<u8>,
    cap: usize,
}

impl Ring {
    fn new(cap: usize) -> Self {
        Ring {
            buf: VecDeque::with_capacity(cap.min(1 << 20)),
            cap: cap.max(1),
        }
    }

    fn push(&mut self, data: &[u8]) {
        let data = if data.len() > self.cap {
            &data[data.len() - self.cap..]
        } else {
            data
        };
        let overflow = (self.buf.len() + data.len()).saturating_sub(self.cap);
        self.buf.drain(..overflow);
        self.buf.extend(data);
    }

    fn contents(&self) -> Vec<u8> {
        self.buf.iter().copied().collect()
    }
}

struct Monitor {
    run_dir: PathBuf,
    spec: ContainerSpec,
    started: Started,
    started_at: u64,
    listener: OwnedFd,
    sigfd: SignalFd,
    /// One per seccomp listener: init's, and each intercepting exec's.
    supervisors: Vec<seccomp::Supervisor>,
    /// Sockets on which exec'd commands hand over their seccomp listeners.
    notify_channels: Vec<OwnedFd>,
    console: Ring,
    console_clients: Vec<OwnedFd>,
    /// Connections whose request has not arrived yet, and exec connections (which may send
    /// signals) keyed by helper pid in `execs`.
    pending: Vec<OwnedFd>,
    execs: HashMap<i32, OwnedFd>,
    stop_waiters: Vec<OwnedFd>,
    stop_deadline: Option<Instant>,
    /// The container's disk binds, made at start or hot-plugged, in the order they were made.
    disks: Vec<AttachedDisk>,
    /// Hot-plug helpers at work.
    hotplug_ops: Vec<HotplugOp>,
    /// The container was killed rather than shut down (forced, or out of time).
    killed: bool,
    /// Init was waiting for events when the stop signal was sent.
    init_caught_stop: bool,
    status: Status,
}

/// A hot-plug helper at work ([`crate::hotplug`]).
struct HotplugOp {
    pid: i32,
    /// Where the helper reports its [`Outcome`].
    report: OwnedFd,
    /// The client's connection, answered once the helper has reported.
    conn: OwnedFd,
    target: PathBuf,
    deadline: Instant,
    /// For a mount: the disk, recorded once the helper reports it in place.
    disk: Option<AttachedDisk>,
}

/// What a poll slot stands for.
#[derive(Clone, Copy)]
enum Slot {
    Signal,
    Listener,
    Console,
    Seccomp(usize),
    NotifyChannel(usize),
    Pending(usize),
    Exec(i32),
    ConsoleClient(usize),
    Hotplug(usize),
}

impl Monitor {
    fn write_state(&self) {
        let state = self.state();
        if let Ok(data) = serde_json::to_vec_pretty(&state) {
            let tmp = self.run_dir.join(".state.json.tmp");
            if fs::write(&tmp, data).is_ok() {
                let _ = fs::rename(&tmp, self.run_dir.join(proto::STATE));
            }
        }
    }

    fn state(&self) -> MonitorState {
        let stats = self.started.cgroup.stats().ok();
        MonitorState {
            status: self.status,
            monitor_pid: std::process::id() as i32,
            init_pid: self.started.init_pid,
            started_at: self.started_at,
            idmapped: self.started.idmapped,
            memory_bytes: stats.as_ref().map_or(0, |s| s.memory_bytes),
            memory_peak_bytes: stats.as_ref().map_or(0, |s| s.memory_peak_bytes),
            cpu_ns: stats.as_ref().map_or(0, |s| s.cpu_ns),
            processes: stats.as_ref().map_or(0, |s| s.processes),
            hotplugged: self
                .disks
                .iter()
                .filter(|d| d.hotplugged)
                .map(|d| d.target.clone())
                .collect(),
            disks: self.disks.iter().map(|d| d.target.clone()).collect(),
        }
    }

    /// The event loop; returns when init has exited and everything is torn down.
    fn serve(&mut self) -> ExitInfo {
        loop {
            let mut slots = vec![Slot::Signal, Slot::Listener, Slot::Console];
            slots.extend((0..self.supervisors.len()).map(Slot::Seccomp));
            slots.extend((0..self.notify_channels.len()).map(Slot::NotifyChannel));
            slots.extend((0..self.pending.len()).map(Slot::Pending));
            slots.extend(self.execs.keys().copied().map(Slot::Exec));
            slots.extend((0..self.console_clients.len()).map(Slot::ConsoleClient));
            slots.extend((0..self.hotplug_ops.len()).map(Slot::Hotplug));
            let ready: Vec<(Slot, PollFlags)> = {
                let mut fds: Vec<PollFd<'_>> = slots
                    .iter()
                    .map(|s| PollFd::new(self.fd_of(*s), PollFlags::POLLIN))
                    .collect();
                // While a clean stop runs, wake often enough to notice that it is complete; wake
                // for the deadline of a hot-plug helper.
                let now = Instant::now();
                let stop_wait = self
                    .stop_deadline
                    .map(|d| d.saturating_duration_since(now).min(STOP_TICK));
                let hotplug_wait = self
                    .hotplug_ops
                    .iter()
                    .map(|o| o.deadline.saturating_duration_since(now))
                    .min();
                let timeout = match (stop_wait, hotplug_wait) {
                    (None, None) => PollTimeout::NONE,
                    (a, b) => PollTimeout::try_from(a.into_iter().chain(b).min().unwrap_or_default())
                        .unwrap_or(PollTimeout::MAX),
                };
                match poll(&mut fds, timeout) {
                    Ok(_) | Err(Errno::EINTR) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "poll failed");
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
                slots
                    .iter()
                    .zip(fds.iter())
                    .filter_map(|(s, f)| f.revents().filter(|r| !r.is_empty()).map(|r| (*s, r)))
                    .collect()
            };
            if let Some(d) = self.stop_deadline {
                if Instant::now() >= d {
                    tracing::info!("clean stop timed out; killing the container");
                    self.stop_deadline = None;
                    self.killed = true;
                    let _ = self.started.cgroup.kill_all();
                } else if self.shutdown_complete() {
                    tracing::debug!("init is alone and asleep: shutdown complete");
                    self.stop_deadline = None;
                    let _ = self.started.cgroup.kill_all();
                }
            }
            // Handle removals from the highest index down so indices stay valid.
            let mut drop_pending = Vec::new();
            let mut drop_console = Vec::new();
            let mut drop_supervisors = Vec::new();
            let mut drop_channels = Vec::new();
            let mut drop_hotplug = Vec::new();
            for (slot, revents) in ready {
                match slot {
                    Slot::Signal => {
                        if let Some(exit) = self.on_signal() {
                            return exit;
                        }
                    }
                    Slot::Listener => self.accept(),
                    Slot::Console => drop_console.extend(self.drain_console()),
                    // No process uses that filter any more: stop polling it.
                    Slot::Seccomp(i) if !revents.contains(PollFlags::POLLIN) => drop_supervisors.push(i),
                    Slot::Seccomp(i) => {
                        if let Err(e) = self.supervisors[i].handle_one() {
                            tracing::warn!(error = %e, "seccomp notification");
                        }
                    }
                    Slot::NotifyChannel(i) => {
                        let mut buf = [0u8; 64];
                        match packet::recv_bytes(self.notify_channels[i].as_fd(), &mut buf) {
                            Ok((n, fds)) if n > 0 => self
                                .supervisors
                                .extend(fds.into_iter().map(|fd| seccomp::Supervisor::new(fd, self.spec.idmap))),
                            _ => drop_channels.push(i),
                        }
                    }
                    Slot::Pending(i) => {
                        if self.on_request(i) {
                            drop_pending.push(i);
                        }
                    }
                    Slot::Exec(pid) => self.on_exec_input(pid, revents),
                    Slot::ConsoleClient(i) => {
                        if !self.on_console_input(i) {
                            drop_console.push(i);
                        }
                    }
                    Slot::Hotplug(i) => {
                        self.on_hotplug_report(i);
                        drop_hotplug.push(i);
                    }
                }
            }
            remove_indices(&mut self.pending, drop_pending);
            remove_indices(&mut self.console_clients, drop_console);
            remove_indices(&mut self.supervisors, drop_supervisors);
            remove_indices(&mut self.notify_channels, drop_channels);
            remove_indices(&mut self.hotplug_ops, drop_hotplug);
            self.expire_hotplug_ops();
        }
    }

    fn fd_of(&self, slot: Slot) -> BorrowedFd<'_> {
        match slot {
            Slot::Signal => self.sigfd.as_fd(),
            Slot::Listener => self.listener.as_fd(),
            Slot::Console => self.started.console_master.as_fd(),
            Slot::Seccomp(i) => self.supervisors[i].as_fd(),
            Slot::NotifyChannel(i) => self.notify_channels[i].as_fd(),
            Slot::Pending(i) => self.pending[i].as_fd(),
            Slot::Exec(pid) => self.execs[&pid].as_fd(),
            Slot::ConsoleClient(i) => self.console_clients[i].as_fd(),
            Slot::Hotplug(i) => self.hotplug_ops[i].report.as_fd(),
        }
    }

    fn accept(&mut self) {
        loop {
            match accept4(self.listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
                Ok(fd) => self.pending.push(sys::own_received_fd(fd)),
                Err(Errno::EAGAIN) => return,
                Err(Errno::EINTR | Errno::ECONNABORTED) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "accept");
                    return;
                }
            }
        }
    }

    /// Reads the request of pending connection `i`. Returns true if the connection leaves the
    /// pending list (answered, closed, or moved elsewhere).
    fn on_request(&mut self, i: usize) -> bool {
        let conn = self.pending[i].as_fd();
        let (req, fds) = match packet::recv::<Request>(conn) {
            Ok(Some(r)) => r,
            Ok(None) => return true,
            Err(e) => {
                let _ = packet::send(conn, &Reply::Error(format!("bad request: {e}")), &[]);
                return true;
            }
        };
        tracing::debug!(?req, "request");
        match req {
            Request::State => {
                let _ = packet::send(conn, &Reply::State(self.state()), &[]);
            }
            Request::Freeze | Request::Thaw if self.status == Status::Stopping => {
                let _ = packet::send(conn, &Reply::Error("the container is stopping".into()), &[]);
            }
            Request::Freeze | Request::Thaw => {
                let freeze = req == Request::Freeze;
                let r = if freeze {
                    self.started.cgroup.freeze()
                } else {
                    self.started.cgroup.thaw()
                };
                let reply = match r {
                    Ok(()) => {
                        self.status = if freeze { Status::Frozen } else { Status::Running };
                        self.write_state();
                        Reply::Ok
                    }
                    Err(e) => Reply::Error(e.to_string()),
                };
                let _ = packet::send(conn, &reply, &[]);
            }
            Request::Stop { timeout_ms, force } => {
                let conn = self.pending[i].try_clone();
                self.stop(timeout_ms, force);
                if let Ok(c) = conn {
                    self.stop_waiters.push(c);
                }
            }
            Request::Exec(req) => {
                if self.status != Status::Running {
                    let _ = packet::send(
                        conn,
                        &Reply::Error(format!("cannot exec: the container is {:?}", self.status).to_lowercase()),
                        &[],
                    );
                    return true;
                }
                // With interception on, the command's own filter has a listener of its own,
                // handed back over this pair.
                let intercepts = self.spec.seccomp.intercept_mknod || self.spec.seccomp.intercept_setxattr;
                let channel = if intercepts {
                    match socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC) {
                        Ok(pair) => Some(pair),
                        Err(e) => {
                            let _ = packet::send(conn, &Reply::Error(format!("socketpair: {e}")), &[]);
                            return true;
                        }
                    }
                } else {
                    None
                };
                let (ours, theirs) = channel.map_or((None, None), |(a, b)| (Some(a), Some(b)));
                // SAFETY: the monitor is single-threaded; the child runs the exec helper,
                // which ends in exec or `exit_now`.
                match unsafe { sys::fork() } {
                    Ok(nix::unistd::ForkResult::Child) => {
                        drop(ours);
                        let (spec, cgroup, init) = (&self.spec, &self.started.cgroup, self.started.init_pidfd.as_fd());
                        exec::helper(spec, cgroup, init, &req, fds, conn, theirs);
                    }
                    Ok(nix::unistd::ForkResult::Parent { child }) => {
                        drop(fds);
                        drop(theirs);
                        self.notify_channels.extend(ours);
                        if let Ok(c) = self.pending[i].try_clone() {
                            self.execs.insert(child.as_raw(), c);
                        }
                    }
                    Err(e) => {
                        let _ = packet::send(conn, &Reply::Error(format!("fork: {e}")), &[]);
                    }
                }
            }
            Request::Signal(_) => {
                let _ = packet::send(conn, &Reply::Error("a signal goes on an exec connection".into()), &[]);
            }
            Request::ConsoleLog => {
                let data = self.console.contents();
                let _ = packet::send(conn, &Reply::ConsoleLog { len: data.len() }, &[]);
                for chunk in data.chunks(proto::MAX_PACKET / 2) {
                    if packet::send_bytes(conn, chunk, &[]).is_err() {
                        break;
                    }
                }
            }
            Request::ConsoleAttach => {
                if packet::send(conn, &Reply::ConsoleAttached, &[]).is_ok() {
                    if let Ok(c) = self.pending[i].try_clone() {
                        let _ = nix::fcntl::fcntl(&c, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK));
                        self.console_clients.push(c);
                    }
                }
            }
            Request::Mount { mount } => {
                if let Err(e) = self.start_mount(i, &mount) {
                    let _ = packet::send(self.pending[i].as_fd(), &Reply::Error(e), &[]);
                }
            }
            Request::Unmount { target } => {
                if let Err(e) = self.start_unmount(i, &target) {
                    let _ = packet::send(self.pending[i].as_fd(), &Reply::Error(e), &[]);
                }
            }
        }
        true
    }

    /// Checks a hot-plug request's target: normalized, and no other hot-plug under way there.
    fn hotplug_target(&self, target: &Path) -> Result<PathBuf, String> {
        if self.status == Status::Stopping {
            return Err("the container is stopping".into());
        }
        let target = hotplug::normalize_target(target)?;
        if self.hotplug_ops.iter().any(|o| o.target == target) {
            return Err(format!(
                "another hot-plug on {} is under way; try again",
                target.display()
            ));
        }
        Ok(target)
    }

    /// Hot-plug of `mount` for pending connection `i`: the bind made here and attached on the
    /// staged rootfs, from where it propagates into the container, then checked (and given its
    /// propagation) inside by a helper; or, where propagation cannot reach, attached inside by
    /// a helper. The helper's report answers the client ([`Self::on_hotplug_report`]).
    fn start_mount(&mut self, i: usize, mount: &Mount) -> Result<(), String> {
        let target = self.hotplug_target(&mount.target)?;
        if self.disks.iter().any(|d| d.target == target) {
            return Err(format!(
                "a disk is already mounted on {}; unmount it first",
                target.display()
            ));
        }
        let prepared = hotplug::prepare(&self.spec, self.started.init_pid, mount)?;
        let root = prepared.root;
        if hotplug::attached_inside(self.started.restored, &target) {
            let disk = AttachedDisk {
                target: target.clone(),
                mount: None,
                root,
                hotplugged: true,
            };
            let to = target.clone();
            return self.fork_hotplug_helper(i, target, Some(disk), move |m, report| {
                hotplug::mount_helper(&m.spec, m.started.init_pidfd.as_fd(), prepared, mount, &to, report)
            });
        }
        hotplug::attach_outside(&self.spec, &self.run_dir.join("rootfs"), &prepared, mount)?;
        let disk = AttachedDisk {
            target: target.clone(),
            mount: Some(prepared.tree),
            root,
            hotplugged: true,
        };
        let to = target.clone();
        self.fork_hotplug_helper(i, target, Some(disk), move |m, report| {
            hotplug::settle_helper(&m.spec, m.started.init_pidfd.as_fd(), mount, &to, root, report)
        })
    }

    /// Hot-unplug of the disk on `target` for pending connection `i`: the monitor's mount
    /// detached here (the unmount propagates into the container), then a helper that takes out
    /// a copy the container kept (or, for a bind attached inside, the bind itself).
    fn start_unmount(&mut self, i: usize, target: &Path) -> Result<(), String> {
        let target = self.hotplug_target(target)?;
        let Some(j) = self.disks.iter().rposition(|d| d.target == target) else {
            return Err(format!("no disk is mounted on {}", target.display()));
        };
        let disk = &self.disks[j];
        if disk.mount.is_none() && !disk.hotplugged {
            return Err(format!(
                "{} was restored with the container from a checkpoint: it stays until the container stops",
                target.display()
            ));
        }
        let root = disk.root;
        if let Some(mount) = &disk.mount {
            hotplug::detach_outside(mount).map_err(|e| format!("cannot unmount {}: {e}", target.display()))?;
            // The disks below went with it.
            self.disks.retain(|d| !d.target.starts_with(&target));
            self.write_state();
        }
        let to = target.clone();
        self.fork_hotplug_helper(i, target, None, move |m, report| {
            hotplug::unmount_helper(&m.spec, m.started.init_pidfd.as_fd(), &to, root, report)
        })
    }

    /// Forks the helper that runs `body` (which ends the process) with the end of a socket pair
    /// it reports on; the other end, polled, and the client's connection wait in
    /// `hotplug_ops`.
    fn fork_hotplug_helper(
        &mut self,
        i: usize,
        target: PathBuf,
        disk: Option<AttachedDisk>,
        body: impl FnOnce(&Monitor, OwnedFd),
    ) -> Result<(), String> {
        // A bind already attached on the monitor's side is taken back if no helper can run.
        let undo = |disk: Option<AttachedDisk>, e: String| {
            if let Some(mount) = disk.and_then(|d| d.mount) {
                let _ = hotplug::detach_outside(&mount);
            }
            e
        };
        let conn = match self.pending[i].try_clone() {
            Ok(c) => c,
            Err(e) => return Err(undo(disk, format!("dup: {e}"))),
        };
        let (report, theirs) = match socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
        {
            Ok(p) => p,
            Err(e) => return Err(undo(disk, format!("socketpair: {e}"))),
        };
        // SAFETY: the monitor is single-threaded; the child runs a hot-plug helper, which ends
        // in `exit_now`.
        match unsafe { sys::fork() } {
            Ok(nix::unistd::ForkResult::Child) => {
                drop(report);
                body(self, theirs);
                sys::exit_now(1)
            }
            Ok(nix::unistd::ForkResult::Parent { child }) => {
                drop(theirs);
                self.hotplug_ops.push(HotplugOp {
                    pid: child.as_raw(),
                    report,
                    conn,
                    target,
                    deadline: Instant::now() + HOTPLUG_TIMEOUT,
                    disk,
                });
                Ok(())
            }
            Err(e) => Err(undo(disk, format!("fork: {e}"))),
        }
    }

    /// The report of hot-plug helper `i` (or its death without one), passed on to its client.
    /// The caller removes the operation.
    fn on_hotplug_report(&mut self, i: usize) {
        let got = packet::recv::<Outcome>(self.hotplug_ops[i].report.as_fd());
        let target = self.hotplug_ops[i].target.clone();
        let disk = self.hotplug_ops[i].disk.take();
        let reply = match got {
            Ok(Some((Outcome::Mounted, _))) => {
                tracing::info!(target = %target.display(), "disk hot-plugged");
                self.disks.extend(disk);
                Reply::Ok
            }
            Ok(Some((Outcome::Unmounted | Outcome::Gone, _))) => {
                tracing::info!(target = %target.display(), "disk unplugged");
                // The binds below it went with it (MNT_DETACH takes the tree).
                self.disks.retain(|d| !d.target.starts_with(&target));
                Reply::Ok
            }
            Ok(Some((Outcome::Failed(e), _))) => {
                Self::undo_attach(disk);
                Reply::Error(e)
            }
            Ok(None) | Err(_) => {
                Self::undo_attach(disk);
                Reply::Error(format!(
                    "the hot-plug helper for {} died without reporting",
                    target.display()
                ))
            }
        };
        let _ = packet::send(self.hotplug_ops[i].conn.as_fd(), &reply, &[]);
        self.write_state();
    }

    /// Takes back the monitor's side of a hot-plug that failed.
    fn undo_attach(disk: Option<AttachedDisk>) {
        if let Some(mount) = disk.and_then(|d| d.mount) {
            if let Err(e) = hotplug::detach_outside(&mount) {
                tracing::warn!(error = %e, "cannot take back a failed hot-plug");
            }
        }
    }

    /// Kills the hot-plug helpers past their deadline and fails their requests.
    fn expire_hotplug_ops(&mut self) {
        let now = Instant::now();
        let (expired, kept): (Vec<_>, Vec<_>) = self.hotplug_ops.drain(..).partition(|o| o.deadline <= now);
        self.hotplug_ops = kept;
        for op in expired {
            tracing::warn!(target = %op.target.display(), "hot-plug helper timed out; killing it");
            let _ = sys::kill(op.pid, libc::SIGKILL);
            Self::undo_attach(op.disk);
            let msg = format!(
                "the hot-plug on {} did not finish within {:?}",
                op.target.display(),
                HOTPLUG_TIMEOUT
            );
            let _ = packet::send(op.conn.as_fd(), &Reply::Error(msg), &[]);
        }
    }

    fn stop(&mut self, timeout_ms: u64, force: bool) {
        if self.status == Status::Frozen {
            // A frozen init cannot handle its signal; thaw so the stop can proceed.
            let _ = self.started.cgroup.thaw();
        }
        self.status = Status::Stopping;
        self.write_state();
        // Through the pidfd: a pid could have been reused, the pidfd cannot.
        let init = self.started.init_pidfd.as_fd();
        if force || timeout_ms == 0 {
            self.killed = true;
            let _ = self.started.cgroup.kill_all();
            let _ = sys::pidfd_send_signal(init, libc::SIGKILL);
            return;
        }
        // Only an init waiting for events when asked (busybox in sigtimedwait, sysvinit in
        // select...) can be going to sleep because of the request; a plain `sleep` as PID 1,
        // asleep or just starting, ignores it.
        self.init_caught_stop = waiting_for_events(self.started.init_pid);
        if let Err(e) = sys::pidfd_send_signal(init, self.started.stop_signal) {
            tracing::warn!(error = %e, "cannot signal init; killing");
            let _ = self.started.cgroup.kill_all();
        }
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        self.stop_deadline = Some(self.stop_deadline.map_or(deadline, |d| d.min(deadline)));
    }

    /// Whether a clean shutdown has done all it will do: every other process is gone and init
    /// sleeps. Traditional inits (busybox, sysvinit) end their shutdown by sleeping, a second
    /// at a time, "to let the console drain", before calling reboot(2); there is nothing left to
    /// wait for then.
    fn shutdown_complete(&self) -> bool {
        let init = self.started.init_pid;
        match self.started.cgroup.pids() {
            Ok(pids) if pids.iter().all(|p| *p == init) => {}
            _ => return false,
        }
        // Init must have gone to sleep after it was asked to stop (busybox waits in
        // sigtimedwait until then), and have taken the signal.
        if !self.init_caught_stop {
            return false;
        }
        let bit = 1u64 << (self.started.stop_signal - 1);
        if signal_mask(init, "SigPnd:") & bit != 0 || signal_mask(init, "ShdPnd:") & bit != 0 {
            return false;
        }
        in_nanosleep(init)
    }

    fn on_exec_input(&mut self, pid: i32, revents: PollFlags) {
        // Reaped earlier in this same poll round: nothing left to do.
        let Some(conn) = self.execs.get(&pid).map(|c| c.as_fd()) else {
            return;
        };
        if revents.contains(PollFlags::POLLIN) {
            match packet::recv::<Request>(conn) {
                Ok(Some((Request::Signal(sig), _))) => {
                    let _ = sys::kill(pid, sig);
                    return;
                }
                Ok(Some(_)) => return,
                Ok(None) | Err(_) => {}
            }
        }
        // The client hung up: the command keeps running, but nobody is told of its end.
        self.execs.remove(&pid);
    }

    /// Reads console output into the ring and on to attached clients; returns the indices of
    /// clients that went away (removed by the caller, after this poll round).
    fn drain_console(&mut self) -> Vec<usize> {
        let mut buf = [0u8; 16 * 1024];
        let mut gone = Vec::new();
        if let Ok(n @ 1..) = nix::unistd::read(&self.started.console_master, &mut buf) {
            let data = &buf[..n];
            self.console.push(data);
            for (i, c) in self.console_clients.iter().enumerate() {
                // A slow client loses output rather than stalling the container's console.
                if let Err(e) = packet::send_bytes(c.as_fd(), data, &[]) {
                    if e.kind() != io::ErrorKind::WouldBlock {
                        gone.push(i);
                    }
                }
            }
        }
        gone
    }

    /// Input from an attached console client; false when it detached.
    fn on_console_input(&mut self, i: usize) -> bool {
        let mut buf = vec![0u8; proto::MAX_PACKET];
        match packet::recv_bytes(self.console_clients[i].as_fd(), &mut buf) {
            Ok((0, _)) => false,
            Ok((n, _)) => {
                let _ = nix::unistd::write(&self.started.console_master, &buf[..n]);
                true
            }
            Err(e) => e.kind() == io::ErrorKind::WouldBlock,
        }
    }

    /// Reaps children; returns init's exit once the container is torn down.
    fn on_signal(&mut self) -> Option<ExitInfo> {
        while let Ok(Some(info)) = self.sigfd.read_signal() {
            let signo = info.ssi_signo as i32;
            if signo == Signal::SIGTERM as i32 || signo == Signal::SIGINT as i32 || signo == Signal::SIGHUP as i32 {
                tracing::info!(signo, "monitor asked to stop the container");
                self.stop(30_000, false);
            }
        }
        let mut init_exit = None;
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL)) {
                Ok(WaitStatus::Exited(pid, code)) => self.reaped(pid.as_raw(), ExitInfo::Exited(code), &mut init_exit),
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    self.reaped(pid.as_raw(), ExitInfo::Signaled(sig as i32), &mut init_exit)
                }
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                Err(_) => break,
            }
        }
        init_exit
    }

    fn reaped(&mut self, pid: i32, exit: ExitInfo, init_exit: &mut Option<ExitInfo>) {
        if pid == self.started.init_pid {
            *init_exit = Some(exit);
        } else if let Some(conn) = self.execs.remove(&pid) {
            let _ = packet::send(conn.as_fd(), &Reply::Exited { code: exit.code() }, &[]);
        }
    }

    fn teardown(mut self, exit: ExitInfo) -> ExitInfo {
        // Whatever init left behind (processes that escaped to other cgroups cannot exist: the
        // whole tree is in ours) is killed, then the cgroup is removed.
        if let Err(e) = self.started.cgroup.kill_all() {
            tracing::warn!(error = %e, "kill of leftover processes");
        }
        // Hot-plug helpers are outside the cgroup.
        for op in self.hotplug_ops.drain(..) {
            let _ = sys::kill(op.pid, libc::SIGKILL);
            let _ = packet::send(op.conn.as_fd(), &Reply::Error("the container stopped".into()), &[]);
        }
        // Helpers may still be finishing: reap them so none lingers as a zombie.
        while let Ok(status) = waitpid(None, Some(WaitPidFlag::__WALL)) {
            let (pid, exit) = match status {
                WaitStatus::Exited(pid, code) => (pid, ExitInfo::Exited(code)),
                WaitStatus::Signaled(pid, sig, _) => (pid, ExitInfo::Signaled(sig as i32)),
                _ => continue,
            };
            if let Some(conn) = self.execs.remove(&pid.as_raw()) {
                let _ = packet::send(conn.as_fd(), &Reply::Exited { code: exit.code() }, &[]);
            }
        }
        if let Err(e) = self.started.cgroup.destroy() {
            tracing::warn!(error = %e, "cgroup removal");
        }
        let _ = fs::remove_file(self.run_dir.join(proto::SOCKET));
        let _ = fs::remove_file(self.run_dir.join(proto::STATE));
        // The staging mount point (the mount itself lives in our namespace and goes with us).
        let staging = self.run_dir.join("rootfs");
        let _ = nix::mount::umount2(&staging, nix::mount::MntFlags::MNT_DETACH);
        let _ = fs::remove_dir(&staging);
        let log = self.console.contents();
        let _ = fs::write(self.run_dir.join("console.log"), log);
        for conn in self.stop_waiters.drain(..) {
            let outcome = StopOutcome {
                exit,
                clean: !self.killed,
            };
            let _ = packet::send(conn.as_fd(), &Reply::Stopped(outcome), &[]);
        }
        exit
    }
}

/// Removes the elements at `indices` (any order, duplicates allowed) from `v`.
fn remove_indices<T>(v: &mut Vec<T>, mut indices: Vec<usize>) {
    indices.sort_unstable();
    indices.dedup();
    // From the highest down, so that swap_remove only moves elements already kept.
    for i in indices.into_iter().rev() {
        v.swap_remove(i);
    }
}

/// A signal mask line (`SigCgt:`, `SigPnd:` ...) of `/proc/<pid>/status`; 0 if unreadable.
fn signal_mask(pid: i32, field: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// The syscall `pid` is blocked in, if it is blocked in one.
fn blocked_in(pid: i32) -> Option<i64> {
    fs::read_to_string(format!("/proc/{pid}/syscall"))
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|n| n.parse::<i64>().ok()))
}

/// Whether `pid` is blocked in nanosleep or clock_nanosleep.
fn in_nanosleep(pid: i32) -> bool {
    matches!(blocked_in(pid), Some(libc::SYS_nanosleep | libc::SYS_clock_nanosleep))
}

/// Whether `pid` is blocked waiting for signals, children or file descriptors.
fn waiting_for_events(pid: i32) -> bool {
    matches!(
        blocked_in(pid),
        Some(
            libc::SYS_rt_sigtimedwait
                | libc::SYS_rt_sigsuspend
                | libc::SYS_pause
                | libc::SYS_wait4
                | libc::SYS_waitid
                | libc::SYS_epoll_wait
                | libc::SYS_epoll_pwait
                | libc::SYS_ppoll
                | libc::SYS_pselect6
                | libc::SYS_select
                | libc::SYS_poll
        )
    )
}
