//! The container spec: a plain description of one container, the runtime's only input.
//!
//! The daemon turns instance config into a `ContainerSpec`; the runtime turns the spec into a
//! running container. The spec is handed to the monitor process as JSON and kept in the run
//! directory so that a restarted daemon can read it back: it is a versioned state format, which is
//! why it derives `Serialize` (bump [`SPEC_VERSION`] on an incompatible change).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Version of the serialized spec; the monitor refuses a spec of another version.
pub const SPEC_VERSION: u32 = 1;

/// Everything the runtime needs to start one container.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ContainerSpec {
    pub version: u32,
    /// The container's name (its hostname by default).
    pub name: String,
    /// The cgroup's name under the `corral` parent; `None` uses `name`. Daemons sharing a host
    /// (tests, or several CORRAL_DIRs) give their containers distinct cgroup names this way.
    #[serde(default)]
    pub cgroup_name: Option<String>,
    /// The unpacked root filesystem on the host, owned by host uid 0 (an unshifted image).
    pub rootfs: PathBuf,
    pub hostname: String,
    /// `None` runs the container privileged (no user namespace, `security.privileged=true`).
    pub idmap: Option<IdMap>,
    /// How the rootfs is presented to the container's root.
    pub rootfs_mode: RootfsMode,
    /// argv of the container's PID 1, e.g. `["/sbin/init"]`.
    pub init: Vec<String>,
    /// Environment of PID 1 (`container=corral` is always added).
    pub env: BTreeMap<String, String>,
    /// Extra mounts, applied after the standard layout, in order.
    pub mounts: Vec<Mount>,
    /// Extra device nodes bound from the host; each is added to the device allow-list.
    pub devices: Vec<DeviceNode>,
    pub limits: Limits,
    pub seccomp: SeccompPolicy,
    /// Capabilities removed from the container's bounding set, by name without `CAP_`
    /// (`sys_time`, `mac_admin`, ...).
    pub cap_drop: Vec<String>,
    pub network: NetworkNamespace,
    /// Signal that asks init to shut down cleanly.
    pub stop_signal: StopSignal,
    /// lxcfs mount point on the host (usually /var/lib/lxcfs); used only if it is mounted.
    pub lxcfs: Option<PathBuf>,
    /// `security.nesting=true`: the container may run containers of its own.
    pub nesting: bool,
    /// Where the monitor keeps its socket, console log and pid file.
    pub run_dir: PathBuf,
    /// Size of the console log ring buffer, bytes.
    pub console_log_size: usize,
}

impl ContainerSpec {
    /// A spec with LXC's security defaults and an unprivileged default idmap.
    pub fn new(name: &str, rootfs: impl Into<PathBuf>, run_dir: impl Into<PathBuf>) -> Self {
        ContainerSpec {
            version: SPEC_VERSION,
            name: name.to_string(),
            cgroup_name: None,
            rootfs: rootfs.into(),
            hostname: name.to_string(),
            idmap: Some(IdMap::default_unprivileged()),
            rootfs_mode: RootfsMode::Auto,
            init: vec!["/sbin/init".into()],
            env: BTreeMap::new(),
            mounts: Vec::new(),
            devices: Vec::new(),
            limits: Limits::default(),
            seccomp: SeccompPolicy::default(),
            cap_drop: DEFAULT_CAP_DROP.iter().map(|s| s.to_string()).collect(),
            network: NetworkNamespace::New,
            stop_signal: StopSignal::Auto,
            lxcfs: Some(PathBuf::from("/var/lib/lxcfs")),
            nesting: false,
            run_dir: run_dir.into(),
            console_log_size: 128 * 1024,
        }
    }
}

impl ContainerSpec {
    /// The cgroup's name under the `corral` parent.
    pub fn cgroup(&self) -> &str {
        self.cgroup_name.as_deref().unwrap_or(&self.name)
    }
}

/// LXC's default `lxc.cap.drop`.
pub const DEFAULT_CAP_DROP: &[&str] = &["mac_admin", "mac_override", "sys_time", "sys_module", "sys_rawio"];

/// One contiguous uid and gid range: container ids `0..size` are host ids `host_base..`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct IdMap {
    pub host_uid: u32,
    pub host_gid: u32,
    pub size: u32,
}

impl IdMap {
    /// Container root as host uid 1000000, 65536 ids: used when the caller has not read
    /// /etc/subuid (see [`crate::idmap::host_range`]).
    pub fn default_unprivileged() -> Self {
        IdMap {
            host_uid: 1_000_000,
            host_gid: 1_000_000,
            size: 65536,
        }
    }
}

/// How the container's root sees the image's ownership.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum RootfsMode {
    /// An idmapped mount where the filesystem supports it, else a one-time ownership shift.
    Auto,
    /// Always shift ownership on disk (once; the rootfs's `trusted.corral.shift` xattr
    /// records the shift).
    Shift,
}

/// A mount made inside the container before init runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Mount {
    /// Host path (bind) or filesystem source.
    pub source: PathBuf,
    /// Path inside the container, absolute. A missing target is created (a directory, or an
    /// empty file for the bind of a file); a symlink on the way is refused.
    pub target: PathBuf,
    pub kind: MountKind,
    /// Read-only (the whole tree for a recursive bind).
    pub readonly: bool,
    /// Propagation of the mount inside the container.
    #[serde(default)]
    pub propagation: Propagation,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum MountKind {
    /// A bind of a host path, made by the container's PID 1 after the standard layout (so it
    /// may go under /dev). The container's root may unmount it or make it writable again.
    Bind {
        recursive: bool,
    },
    /// A bind of a host path made by the monitor, on the host side, in `mounts` order, on the
    /// staged rootfs once the container's root exists, from where it reaches the container by
    /// propagation (so never under /dev, /proc or /sys, nor under a `Bind` or `Tmpfs` target:
    /// those are the container's own mounts, which would hide it). Its flags are locked in the
    /// container (it cannot lift `readonly`), and the monitor can take it out while the
    /// container runs (see [`crate::hotplug`]). With
    /// `idmapped` (unprivileged containers only) it is an idmapped mount through the
    /// container's user namespace: host uid 0 is the container's root, and files the
    /// container creates are owned on disk by the ids it sees (unshifted, as the rootfs).
    MonitorBind {
        recursive: bool,
        idmapped: bool,
    },
    Tmpfs {
        options: String,
    },
}

/// Mount propagation (LXD's `propagation` of disk devices); the `R` forms apply to the mounts
/// below as well. Whatever it is, nothing the container mounts reaches the host: the monitor's
/// mount namespace is a slave of the host's.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Propagation {
    /// Neither receives nor sends mount events (LXD's default).
    #[default]
    Private,
    Shared,
    /// Receives the host's mount events below the source, sends none.
    Slave,
    Unbindable,
    RPrivate,
    RShared,
    RSlave,
    RUnbindable,
}

impl Propagation {
    /// LXD's names: `private`, `rshared`, ...
    pub fn parse(s: &str) -> Option<Propagation> {
        Some(match s {
            "private" => Propagation::Private,
            "shared" => Propagation::Shared,
            "slave" => Propagation::Slave,
            "unbindable" => Propagation::Unbindable,
            "rprivate" => Propagation::RPrivate,
            "rshared" => Propagation::RShared,
            "rslave" => Propagation::RSlave,
            "runbindable" => Propagation::RUnbindable,
            _ => return None,
        })
    }

    pub const NAMES: &'static [&'static str] = &[
        "private",
        "shared",
        "slave",
        "unbindable",
        "rprivate",
        "rshared",
        "rslave",
        "runbindable",
    ];
}

/// A device node passed through from the host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeviceNode {
    /// Host node, e.g. /dev/fuse.
    pub source: PathBuf,
    /// Path inside the container.
    pub path: PathBuf,
}

/// cgroup limits; `None` means unlimited.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Limits {
    pub cpu: Option<CpuLimit>,
    /// `limits.cpu.allowance`.
    pub cpu_allowance: Option<CpuAllowance>,
    /// `limits.memory`, bytes.
    pub memory: Option<u64>,
    /// `limits.memory.swap`: false forbids swap.
    pub memory_swap: Option<bool>,
    /// `limits.processes`.
    pub processes: Option<u64>,
}

/// `limits.cpu`: a number of CPUs, or an explicit list.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum CpuLimit {
    Count(u32),
    /// CPU ids, as cpuset lists them (e.g. `[0, 1]`).
    Set(Vec<u32>),
}

/// `limits.cpu.allowance`: a share (`50%`) or a hard quota (`25ms/100ms`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum CpuAllowance {
    Percent(u32),
    Quota { quota_us: u64, period_us: u64 },
}

/// The syscall policy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SeccompPolicy {
    /// LXC's default deny list (kexec_load, open_by_handle_at, module loading, forced umount).
    pub default_deny: bool,
    /// Extra syscall names denied with EPERM.
    pub deny: Vec<String>,
    /// `security.syscalls.intercept.mknod`: safe device nodes are created by the monitor.
    pub intercept_mknod: bool,
    /// `security.syscalls.intercept.setxattr`: `trusted.overlay.opaque` is set by the monitor.
    pub intercept_setxattr: bool,
}

impl Default for SeccompPolicy {
    fn default() -> Self {
        SeccompPolicy {
            default_deny: true,
            deny: Vec::new(),
            intercept_mknod: false,
            intercept_setxattr: false,
        }
    }
}

/// Which network namespace the container lives in.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum NetworkNamespace {
    /// A fresh, empty one (only `lo`); the network layer adds interfaces to it.
    New,
    /// Join an existing one (a path such as /run/netns/x or /proc/PID/ns/net).
    Join(PathBuf),
}

/// The signal that asks init for a clean shutdown.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum StopSignal {
    /// Guess from the init binary: SIGRTMIN+3 for systemd, SIGUSR2 for busybox, else SIGPWR.
    Auto,
    /// An explicit signal number.
    Signal(i32),
}
