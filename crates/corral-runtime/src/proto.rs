//! The monitor's control protocol.
//!
//! One SOCK_SEQPACKET connection per request to `<run_dir>/monitor.sock`; every packet is one
//! JSON [`Request`] or [`Reply`], except on a console connection after
//! [`Reply::ConsoleAttached`] and after [`Reply::ConsoleLog`], where packets are raw bytes.
//! File descriptors travel as SCM_RIGHTS on the packet they belong to: the three stdio fds on
//! an [`Request::Exec`] without a tty, the pty master on [`Reply::ExecStarted`] with one.
//! This is a versioned state format between a daemon and monitors it may not have started, so
//! it only grows: new variants, new optional fields.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::spec::Mount;

/// File name of the control socket in the run directory.
pub const SOCKET: &str = "monitor.sock";
/// File name of the spec the monitor was started with.
pub const SPEC: &str = "spec.json";
/// File name of the monitor's state (pids, start time).
pub const STATE: &str = "state.json";
/// Largest packet either side sends.
pub const MAX_PACKET: usize = 64 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum Request {
    State,
    /// Clean stop with the init's signal, then SIGKILL of the cgroup after `timeout_ms`;
    /// `force` kills at once. The reply comes once everything is torn down.
    Stop {
        timeout_ms: u64,
        force: bool,
    },
    Freeze,
    Thaw,
    Exec(ExecRequest),
    /// On an exec connection: deliver a signal to the command.
    Signal(i32),
    ConsoleLog,
    ConsoleAttach,
    /// Hot-plug: bind `mount` (a [`crate::spec::MountKind::MonitorBind`] or `Bind`) into the
    /// running container, made as at start, on a mount point created as the container's root
    /// (see [`crate::hotplug`]). `Ok` once the container sees it.
    Mount {
        mount: Mount,
    },
    /// Hot-unplug: detach the disk bind at `target`, made at start or by a `Mount` (the
    /// disks below it go too). Those CRIU restored are refused.
    Unmount {
        target: PathBuf,
    },
}

/// A command to run inside the container.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExecRequest {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    pub uid: u32,
    pub gid: u32,
    /// Allocate a pty inside the container (its master comes back with `ExecStarted`).
    pub tty: bool,
    pub rows: u16,
    pub cols: u16,
}

impl ExecRequest {
    /// Runs `argv` as root in `/root` (or `/`), without a tty.
    pub fn new<S: AsRef<str>>(argv: &[S]) -> Self {
        ExecRequest {
            argv: argv.iter().map(|s| s.as_ref().to_string()).collect(),
            env: Vec::new(),
            cwd: None,
            uid: 0,
            gid: 0,
            tty: false,
            rows: 24,
            cols: 80,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum Reply {
    State(MonitorState),
    Ok,
    Stopped(StopOutcome),
    ExecStarted {
        pty: bool,
    },
    Exited {
        code: i32,
    },
    /// Followed by raw packets holding `len` bytes in all.
    ConsoleLog {
        len: usize,
    },
    ConsoleAttached,
    Error(String),
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum Status {
    Running,
    Frozen,
    Stopping,
}

/// What a monitor reports about its container.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MonitorState {
    pub status: Status,
    pub monitor_pid: i32,
    /// Host pid of the container's init.
    pub init_pid: i32,
    /// Seconds since the epoch.
    pub started_at: u64,
    /// Whether the rootfs is an idmapped mount (false: shifted on disk, or privileged).
    pub idmapped: bool,
    pub memory_bytes: u64,
    pub memory_peak_bytes: u64,
    pub cpu_ns: u64,
    pub processes: u64,
    /// Targets of the binds hot-plugged into the container ([`Request::Mount`]) and still
    /// there, in the order they were made.
    #[serde(default)]
    pub hotplugged: Vec<PathBuf>,
    /// Targets of all the container's disk binds (made at start or hot-plugged), in the order
    /// they were made; each can be unmounted with [`Request::Unmount`] (but those CRIU
    /// restored).
    #[serde(default)]
    pub disks: Vec<PathBuf>,
}

/// How a stop went.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct StopOutcome {
    pub exit: ExitInfo,
    /// Init finished its shutdown before the timeout; false when it had to be killed (a
    /// forced stop, or a clean one that ran out of time).
    pub clean: bool,
}

/// How init ended.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum ExitInfo {
    Exited(i32),
    Signaled(i32),
}

impl ExitInfo {
    /// As a shell reports it: the status, or 128 + the signal.
    pub fn code(self) -> i32 {
        match self {
            ExitInfo::Exited(c) => c,
            ExitInfo::Signaled(s) => 128 + s,
        }
    }
}

/// What the monitor prints on its stdout once, to the process that spawned it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum Ready {
    Started { monitor_pid: i32, init_pid: i32 },
    Failed(String),
}
