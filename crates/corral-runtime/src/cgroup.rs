//! The cgroups of one container, on cgroup v1 (the "hybrid" layout) and on pure cgroup v2.
//!
//! # Layouts
//!
//! [`CgroupRoot::detect`] reads `/proc/self/mountinfo` and finds one of:
//!
//! * **v1** ([`Layout::V1`]): one `cgroup` mount per controller (or per group of co-mounted
//!   controllers), the `name=systemd` named hierarchy and, on hybrid hosts, a cgroup2 mount at
//!   `/sys/fs/cgroup/unified` that usually has no controllers and only tracks processes;
//! * **v2** ([`Layout::V2`]): a single cgroup2 mount.
//!
//! Every path is derived from the [`CgroupRoot`], never hard-coded, so the tests run the same code
//! against a temporary directory that fakes either layout.
//!
//! # One container's cgroups
//!
//! A container `NAME` lives in `corral/NAME` of every hierarchy ([`Cgroup::paths`]): on v1 in each
//! mounted controller, in the `systemd` named hierarchy and in the unified hierarchy (so that a
//! systemd inside the container can be delegated a cgroup2 subtree: [`Cgroup::unified_dir`]); on
//! v2 in `<root>/corral/NAME`, after `cpu cpuset memory pids` (those the kernel offers) are enabled
//! in `cgroup.subtree_control` of the root and of `corral`. On v1 the `corral` cpuset is seeded with
//! the root's `cpuset.cpus`/`cpuset.mems` when empty, and the container's are always written,
//! because an empty v1 cpuset refuses tasks.
//!
//! | [`Limits`]                | v1                                                   | v2                    |
//! |---------------------------|------------------------------------------------------|-----------------------|
//! | `cpu`                     | `cpuset.cpus` (parent's cpus when unset)             | `cpuset.cpus` (`""`)  |
//! | `cpu_allowance` percent   | `cpu.shares` = 1024·p/100, min 2 (`1024`)            | `cpu.weight` = p, 1..=10000 (`100`) |
//! | `cpu_allowance` quota     | `cpu.cfs_period_us`, `cpu.cfs_quota_us` (`-1`)       | `cpu.max` (`max`)     |
//! | `memory`                  | `memory.limit_in_bytes` (`-1`)                       | `memory.max` (`max`)  |
//! | `memory_swap = false`     | `memory.memsw.limit_in_bytes` = memory, if the file exists | `memory.swap.max` = 0 |
//! | `processes`               | `pids.max` (`max`)                                   | `pids.max` (`max`)    |
//!
//! [`Cgroup::set_limits`] writes every row, so a `None` resets the knob to its unlimited value
//! (in parentheses) and the same call serves creation and live updates.
//!
//! The device allow-list is LXC's default ([`default_device_rules`]) plus the caller's: on v1
//! written to `devices.deny`/`devices.allow`; on v2 compiled to a `BPF_PROG_TYPE_CGROUP_DEVICE`
//! program (the `bpf` submodule, which holds the module's only `unsafe` code). On a hybrid host
//! only the v1 controller is used, though the BPF filter would work there too.
//!
//! # Freezing, killing, removal
//!
//! [`Cgroup::freeze`] uses the v1 freezer (`freezer.state`) or `cgroup.freeze`, and waits, bounded,
//! until the kernel reports the cgroup frozen. [`Cgroup::kill_all`] writes `cgroup.kill` where the
//! kernel has it (v2, and the unified directory of a hybrid host), then, until every hierarchy's
//! subtree is empty (bounded): freeze, SIGKILL every pid of the subtree, thaw. Freezing first
//! means no process can fork behind our back or exit and have its pid reused while we signal.
//! [`Cgroup::destroy`] kills what is left and removes each subtree depth first, since a systemd
//! inside the container creates cgroups of its own.
//!
//! Nothing here keeps file descriptors open: a [`Cgroup`] is just a root and a name, and
//! [`Cgroup::open`] re-attaches to an existing one after a daemon restart.
//!
//! # Code map
//!
//! This file holds the public API and its tests; `layout` finds the hierarchies, `limits` writes
//! [`Limits`], `cpuset` picks cpus, `devices` and `bpf` hold the device allow-list, `freezer` the
//! freezer and the kill loop, `fsutil` the file plumbing and the test seams (a write log and a
//! fake "kernel" that populates new directories, compiled out of non-test builds).

mod bpf;
mod cpuset;
mod devices;
mod freezer;
mod fsutil;
mod layout;
mod limits;

pub use bpf::{attach_device_filter, device_filter_program, BpfInsn};
pub use devices::{default_device_rules, DeviceRule};
pub use layout::{CgroupRoot, FavorDynmods, Layout};

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::spec::Limits;
use cpuset::{first_nonempty, seed_v1_cpuset};
use freezer::{freeze_state, wait_unpopulated, FreezeState};
use fsutil::{
    chown, collect_procs, create_new_dir, ensure_dir, hooks, keyed_u64, read_u64, read_u64_opt, remove_tree,
    write_value,
};
use limits::enable_v2_controllers;

/// The directory, in every hierarchy, that holds the containers' cgroups.
pub const PARENT: &str = "corral";

/// Files of a cgroup directory handed over to the container's root by delegation.
const DELEGATED_FILES: &[&str] = &["cgroup.procs", "cgroup.subtree_control", "cgroup.threads", "tasks"];

const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);
const CGROUP_KILL_WAIT: Duration = Duration::from_secs(2);
const RMDIR_TIMEOUT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(10);

pub type Result<T, E = CgroupError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup filesystem is mounted (nothing in {mountinfo})")]
    NotMounted { mountinfo: PathBuf },
    #[error("invalid cgroup name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write {value:?} to {path}: {source}")]
    Write {
        path: PathBuf,
        value: String,
        source: io::Error,
    },
    #[error("cannot parse {value:?} read from {path}: expected {expected}")]
    Parse {
        path: PathBuf,
        value: String,
        expected: &'static str,
    },
    #[error("cannot open {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot remount {path} with favordynmods: {reason}")]
    Remount { path: PathBuf, reason: String },
    #[error("cannot create cgroup {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("cgroup {path} already exists")]
    Exists { path: PathBuf },
    #[error("cgroup {path} does not exist")]
    Missing { path: PathBuf },
    #[error("cannot remove cgroup {path}: {source}")]
    Remove { path: PathBuf, source: io::Error },
    #[error("cannot chown {path} to {uid}:{gid}: {source}")]
    Chown {
        path: PathBuf,
        uid: u32,
        gid: u32,
        source: io::Error,
    },
    #[error("the {controller} controller is not available for cgroup {name}, needed for {needed_for}")]
    ControllerMissing {
        controller: &'static str,
        name: String,
        needed_for: &'static str,
    },
    #[error("invalid cpu limit: {reason}")]
    InvalidCpuLimit { reason: &'static str },
    #[error("cpu {cpu} is not available in {path} (it has {available:?})")]
    CpuUnavailable { cpu: u32, path: PathBuf, available: String },
    #[error("invalid device rule {rule:?}: {reason}")]
    InvalidDevice { rule: String, reason: &'static str },
    #[error("cannot stat device node {path}: {source}")]
    DeviceNode { path: PathBuf, source: io::Error },
    #[error("no freezer for cgroup {name}: neither the v1 freezer controller nor cgroup.freeze")]
    NoFreezer { name: String },
    #[error("timed out after {waited:?} waiting for {path} to report {expected}")]
    Timeout {
        path: PathBuf,
        expected: &'static str,
        waited: Duration,
    },
    #[error("cannot send SIGKILL to pid {pid}: {source}")]
    Kill { pid: i32, source: Errno },
    #[error("refusing to kill pid {pid} of cgroup {name}: it is the calling process")]
    KillSelf { pid: i32, name: String },
    #[error("{} processes still in cgroup {name} after {waited:?}: {pids:?}", pids.len())]
    NotEmpty {
        name: String,
        pids: Vec<i32>,
        waited: Duration,
    },
    #[error("bpf {op} failed for {path}: {source}{log}")]
    Bpf {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
        log: String,
    },
}

// ---------------------------------------------------------------------------------------------
// The container's cgroup
// ---------------------------------------------------------------------------------------------

/// Resource usage of a container's cgroup (its whole subtree).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupStats {
    /// Memory in use, bytes (page cache included). 0 without a memory controller.
    pub memory_bytes: u64,
    /// The highest `memory_bytes` seen; 0 where the kernel does not track it (v2 before 5.19).
    pub memory_peak_bytes: u64,
    /// Swap in use, where swap accounting is available.
    pub swap_bytes: Option<u64>,
    /// Total CPU time, nanoseconds.
    pub cpu_ns: u64,
    /// Tasks (`pids.current`), or the number of processes without a pids controller.
    pub processes: u64,
}

/// One container's cgroups: `corral/<name>` in every hierarchy of a [`CgroupRoot`].
#[derive(Debug)]
pub struct Cgroup {
    root: CgroupRoot,
    name: String,
}

impl Cgroup {
    /// Creates the container's cgroups, applies `limits` and the device allow-list (LXC's default
    /// plus `extra_devices`).
    ///
    /// `delegate` is the host (uid, gid) of the container's root: when given, the container's
    /// cgroup2 directory (v2: the cgroup itself; v1: its directory in the unified hierarchy) and
    /// the v1 `systemd` named hierarchy directory are chowned to it, with their `cgroup.procs`,
    /// `cgroup.subtree_control`, `cgroup.threads` (and v1 `tasks`), so that a systemd inside can
    /// manage its own subtree.
    ///
    /// Fails with [`CgroupError::Exists`] if the container's cgroup already exists (remove a
    /// stale one with `Cgroup::at(..)?.destroy()`). On failure the directories created so far are
    /// removed again.
    pub fn create(
        root: &CgroupRoot,
        name: &str,
        limits: &Limits,
        extra_devices: &[DeviceRule],
        delegate: Option<(u32, u32)>,
    ) -> Result<Cgroup> {
        let cgroup = Cgroup::at(root, name)?;
        let mut rules = default_device_rules();
        rules.extend(extra_devices.iter().cloned());
        for rule in &rules {
            rule.validate()?;
        }
        let mut created = Vec::new();
        match cgroup.setup(limits, &rules, delegate, &mut created) {
            Ok(()) => {
                debug!(name, ?limits, "cgroup created");
                Ok(cgroup)
            }
            Err(err) => {
                let deadline = Instant::now() + RMDIR_TIMEOUT;
                for dir in created.iter().rev() {
                    if let Err(e) = remove_tree(dir, deadline) {
                        warn!(dir = %dir.display(), "cleaning up after a failed cgroup creation: {e}");
                    }
                }
                Err(err)
            }
        }
    }

    /// Re-attaches to an existing container cgroup (e.g. after a daemon restart). Fails with
    /// [`CgroupError::Missing`] unless its directory exists in every hierarchy.
    pub fn open(root: &CgroupRoot, name: &str) -> Result<Cgroup> {
        let cgroup = Cgroup::at(root, name)?;
        cgroup.check_exists()?;
        Ok(cgroup)
    }

    /// A handle on `name`'s cgroup without touching the filesystem, e.g. to destroy one left
    /// half-created by a crash.
    pub fn at(root: &CgroupRoot, name: &str) -> Result<Cgroup> {
        validate_name(name)?;
        Ok(Cgroup {
            root: root.clone(),
            name: name.to_string(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The container's directory in every hierarchy: v1 each distinct controller mount, then
    /// the systemd named hierarchy, then the unified one; v2 the one directory.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.mounts().iter().map(|m| self.dir_in(m)).collect()
    }

    /// The container's cgroup2 directory: the cgroup itself on v2, its directory in the unified
    /// hierarchy on a hybrid host, `None` on v1 without a unified hierarchy.
    pub fn unified_dir(&self) -> Option<PathBuf> {
        match self.root.layout() {
            Layout::V1 { unified, .. } => unified.as_deref().map(|u| self.dir_in(u)),
            Layout::V2 { root } => Some(self.dir_in(root)),
        }
    }

    /// Moves process `pid` (all its threads) into the container's cgroup of every hierarchy.
    pub fn add_process(&self, pid: i32) -> Result<()> {
        for dir in self.paths() {
            write_value(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        debug!(name = %self.name, pid, "process added to cgroup");
        Ok(())
    }

    /// Moves `pid` (a process joining a running container, such as an exec helper) into the
    /// container's cgroup. On v2 a systemd inside enables controllers in the container's cgroup,
    /// and the kernel then refuses processes there (no internal processes): joiners go to a
    /// leaf, `.corral-exec`, as LXC's attach uses `.lxc`. On v1 the cgroup itself is fine.
    pub fn add_joining_process(&self, pid: i32) -> Result<()> {
        let Layout::V2 { root } = self.root.layout() else {
            return self.add_process(pid);
        };
        let leaf = self.dir_in(root).join(".corral-exec");
        if let Err(e) = std::fs::create_dir(&leaf) {
            if e.kind() != std::io::ErrorKind::AlreadyExists {
                return Err(CgroupError::Create { path: leaf, source: e });
            }
        }
        write_value(&leaf.join("cgroup.procs"), &pid.to_string())
    }

    /// Applies `limits`; a `None` resets that limit to unlimited. Works on a running container.
    pub fn set_limits(&self, limits: &Limits) -> Result<()> {
        match self.root.layout() {
            Layout::V1 { .. } => self.set_limits_v1(limits),
            Layout::V2 { .. } => self.set_limits_v2(limits),
        }
    }

    /// Freezes every process of the subtree and waits (at most 5 s) until the kernel reports
    /// the cgroup frozen; on timeout thaws it again and fails.
    pub fn freeze(&self) -> Result<()> {
        let freezer = self.freezer()?;
        match self.set_frozen(&freezer, true, FREEZE_TIMEOUT) {
            Ok(()) => Ok(()),
            Err(err) => {
                if let Err(e) = self.set_frozen(&freezer, false, FREEZE_TIMEOUT) {
                    warn!(name = %self.name, "cannot thaw after a failed freeze: {e}");
                }
                Err(err)
            }
        }
    }

    pub fn thaw(&self) -> Result<()> {
        let freezer = self.freezer()?;
        self.set_frozen(&freezer, false, FREEZE_TIMEOUT)
    }

    /// True once the kernel reports the cgroup completely frozen (not while still freezing).
    pub fn is_frozen(&self) -> Result<bool> {
        Ok(freeze_state(&self.freezer()?)? == FreezeState::Frozen)
    }

    /// SIGKILLs every process of the container, including those in cgroups created inside it,
    /// and returns once every hierarchy's subtree is empty (or fails after 10 s).
    pub fn kill_all(&self) -> Result<()> {
        let start = Instant::now();
        if let Some(dir) = self.unified_dir() {
            let kill_file = dir.join("cgroup.kill");
            if kill_file.exists() {
                write_value(&kill_file, "1")?;
                if wait_unpopulated(&dir, CGROUP_KILL_WAIT)? {
                    debug!(name = %self.name, "killed with cgroup.kill");
                }
            }
        }
        // Checks that every hierarchy is empty, and kills the portable way what is left (all of
        // it without cgroup.kill; on a hybrid host, processes outside the unified hierarchy).
        self.kill_loop(start)
    }

    /// Every pid in the container's subtree, in any hierarchy, sorted.
    pub fn pids(&self) -> Result<Vec<i32>> {
        self.check_exists()?;
        self.collect_pids()
    }

    /// Usage figures; see [`CgroupStats`].
    pub fn stats(&self) -> Result<CgroupStats> {
        match self.root.layout() {
            Layout::V1 { .. } => self.stats_v1(),
            Layout::V2 { .. } => self.stats_v2(),
        }
    }

    /// Kills whatever is left and removes the container's subtree in every hierarchy, depth
    /// first (retrying briefly while the kernel still reports a cgroup busy). Directories that
    /// are already gone are fine, so destroying twice succeeds.
    pub fn destroy(self) -> Result<()> {
        let paths = self.paths();
        if paths.iter().any(|p| p.exists()) && !self.collect_pids()?.is_empty() {
            self.kill_all()?;
        }
        let deadline = Instant::now() + RMDIR_TIMEOUT;
        let mut first_err = None;
        for dir in &paths {
            if let Err(e) = remove_tree(dir, deadline) {
                warn!(dir = %dir.display(), "{e}");
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => {
                debug!(name = %self.name, "cgroup destroyed");
                Ok(())
            }
        }
    }

    // --- paths ---

    fn dir_in(&self, mount: &Path) -> PathBuf {
        mount.join(PARENT).join(&self.name)
    }

    /// Every hierarchy's mount point, each once.
    fn mounts(&self) -> Vec<PathBuf> {
        match self.root.layout() {
            Layout::V1 {
                controllers,
                unified,
                systemd,
            } => {
                let mut mounts: Vec<PathBuf> = controllers
                    .values()
                    .cloned()
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                for extra in [systemd, unified].into_iter().flatten() {
                    if !mounts.contains(extra) {
                        mounts.push(extra.clone());
                    }
                }
                mounts
            }
            Layout::V2 { root } => vec![root.clone()],
        }
    }

    /// The v1 mount point of `controller`, if mounted.
    fn v1_mount(&self, controller: &str) -> Option<&Path> {
        match self.root.layout() {
            Layout::V1 { controllers, .. } => controllers.get(controller).map(PathBuf::as_path),
            Layout::V2 { .. } => None,
        }
    }

    fn check_exists(&self) -> Result<()> {
        match self.paths().into_iter().find(|p| !p.is_dir()) {
            Some(path) => Err(CgroupError::Missing { path }),
            None => Ok(()),
        }
    }

    fn missing(&self, controller: &'static str, needed_for: &'static str) -> CgroupError {
        CgroupError::ControllerMissing {
            controller,
            name: self.name.clone(),
            needed_for,
        }
    }

    // --- creation ---

    fn setup(
        &self,
        limits: &Limits,
        rules: &[DeviceRule],
        delegate: Option<(u32, u32)>,
        created: &mut Vec<PathBuf>,
    ) -> Result<()> {
        match self.root.layout() {
            Layout::V1 { controllers, .. } => {
                let cpuset = controllers.get("cpuset");
                for mount in self.mounts() {
                    let parent = mount.join(PARENT);
                    ensure_dir(&parent)?;
                    if Some(&mount) == cpuset {
                        seed_v1_cpuset(&mount, &parent)?;
                    }
                    let dir = parent.join(&self.name);
                    create_new_dir(&dir)?;
                    created.push(dir.clone());
                    if Some(&mount) == cpuset {
                        let mems = first_nonempty(&parent, &["cpuset.effective_mems", "cpuset.mems"])?;
                        write_value(&dir.join("cpuset.mems"), &mems)?;
                    }
                }
                let devices = self
                    .v1_mount("devices")
                    .ok_or_else(|| self.missing("devices", "the device allow-list"))?;
                let dir = self.dir_in(devices);
                write_value(&dir.join("devices.deny"), "a")?;
                for rule in rules {
                    write_value(&dir.join("devices.allow"), &rule.to_string())?;
                }
            }
            Layout::V2 { root } => {
                enable_v2_controllers(root)?;
                let parent = root.join(PARENT);
                ensure_dir(&parent)?;
                enable_v2_controllers(&parent)?;
                let dir = parent.join(&self.name);
                create_new_dir(&dir)?;
                created.push(dir.clone());
                apply_device_filter(&dir, rules)?;
            }
        }
        self.set_limits(limits)?;
        if let Some((uid, gid)) = delegate {
            self.delegate(uid, gid)?;
        }
        Ok(())
    }

    fn delegate(&self, uid: u32, gid: u32) -> Result<()> {
        let dirs = match self.root.layout() {
            Layout::V1 { systemd, .. } => [self.unified_dir(), systemd.as_deref().map(|s| self.dir_in(s))]
                .into_iter()
                .flatten()
                .collect(),
            Layout::V2 { root } => vec![self.dir_in(root)],
        };
        for dir in dirs {
            chown(&dir, uid, gid)?;
            for file in DELEGATED_FILES {
                let path = dir.join(file);
                if path.exists() {
                    chown(&path, uid, gid)?;
                }
            }
        }
        debug!(name = %self.name, uid, gid, "cgroup delegated");
        Ok(())
    }

    /// The union of the pids of every existing hierarchy's subtree.
    fn collect_pids(&self) -> Result<Vec<i32>> {
        let mut pids = BTreeSet::new();
        for dir in self.paths() {
            if dir.is_dir() {
                collect_procs(&dir, &mut pids)?;
            }
        }
        Ok(pids.into_iter().collect())
    }

    // --- stats ---

    fn stats_v1(&self) -> Result<CgroupStats> {
        let mut stats = CgroupStats::default();
        if let Some(mount) = self.v1_mount("memory") {
            let dir = self.dir_in(mount);
            stats.memory_bytes = read_u64(&dir.join("memory.usage_in_bytes"))?;
            // The kernel updates the watermark locklessly and can lag the usage by a charge.
            stats.memory_peak_bytes = read_u64(&dir.join("memory.max_usage_in_bytes"))?.max(stats.memory_bytes);
            stats.swap_bytes = read_u64_opt(&dir.join("memory.memsw.usage_in_bytes"))?
                .map(|memsw| memsw.saturating_sub(stats.memory_bytes));
        }
        stats.cpu_ns = match (self.v1_mount("cpuacct"), self.unified_dir()) {
            (Some(mount), _) => read_u64(&self.dir_in(mount).join("cpuacct.usage"))?,
            (None, Some(dir)) => keyed_u64(&dir.join("cpu.stat"), "usage_usec")?
                .unwrap_or(0)
                .saturating_mul(1000),
            (None, None) => 0,
        };
        stats.processes = match self.v1_mount("pids") {
            Some(mount) => read_u64(&self.dir_in(mount).join("pids.current"))?,
            None => self.pids()?.len() as u64,
        };
        Ok(stats)
    }

    fn stats_v2(&self) -> Result<CgroupStats> {
        let Layout::V2 { root } = self.root.layout() else {
            return Ok(CgroupStats::default());
        };
        let dir = self.dir_in(root);
        let processes = match read_u64_opt(&dir.join("pids.current"))? {
            Some(n) => n,
            None => self.pids()?.len() as u64,
        };
        Ok(CgroupStats {
            memory_bytes: read_u64_opt(&dir.join("memory.current"))?.unwrap_or(0),
            memory_peak_bytes: read_u64_opt(&dir.join("memory.peak"))?.unwrap_or(0),
            swap_bytes: read_u64_opt(&dir.join("memory.swap.current"))?,
            cpu_ns: keyed_u64(&dir.join("cpu.stat"), "usage_usec")?
                .unwrap_or(0)
                .saturating_mul(1000),
            processes,
        })
    }
}

/// Container names become directory names: refuse anything that could leave `corral/`.
fn validate_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.contains('/') {
        "contains '/'"
    } else if name.contains("..") {
        "contains '..'"
    } else if name == "." {
        "is '.'"
    } else if name.contains('\0') {
        "contains a NUL byte"
    } else {
        return Ok(());
    };
    Err(CgroupError::InvalidName {
        name: name.to_string(),
        reason,
    })
}

// ---------------------------------------------------------------------------------------------
// v2 plumbing
// ---------------------------------------------------------------------------------------------

fn apply_device_filter(dir: &Path, rules: &[DeviceRule]) -> Result<()> {
    if hooks::fake_bpf() {
        let rules: Vec<String> = rules.iter().map(ToString::to_string).collect();
        hooks::record_write(dir, &format!("bpf: {}", rules.join(", ")));
        return Ok(());
    }
    attach_device_filter(dir, rules)
}

#[cfg(test)]
mod tests {
    use super::cpuset::{available_cpus, format_cpu_list, select_cpus};
    use super::fsutil::hooks;
    use super::*;
    use crate::spec::{CpuAllowance, CpuLimit};
    use std::collections::{BTreeMap, BTreeSet};
    use std::fs;
    use std::io::{Read as _, Write as _};
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Child, Command, ExitStatus, Stdio};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::thread;

    const MIB: u64 = 1024 * 1024;
    static COUNTER: AtomicUsize = AtomicUsize::new(0);

    fn unique(prefix: &str) -> String {
        format!(
            "{prefix}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        )
    }

    fn read(path: &Path) -> String {
        fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
            .trim()
            .to_string()
    }

    fn put(path: &Path, content: &str) {
        fs::write(path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    fn limits(
        cpu: Option<CpuLimit>,
        cpu_allowance: Option<CpuAllowance>,
        memory: Option<u64>,
        memory_swap: Option<bool>,
        processes: Option<u64>,
    ) -> Limits {
        Limits {
            cpu,
            cpu_allowance,
            memory,
            memory_swap,
            processes,
        }
    }

    fn full_limits() -> Limits {
        limits(
            Some(CpuLimit::Count(2)),
            Some(CpuAllowance::Percent(50)),
            Some(64 * MIB),
            Some(false),
            Some(500),
        )
    }

    fn default_allow_lines() -> Vec<String> {
        [
            "c *:* m",
            "b *:* m",
            "c 1:3 rwm",
            "c 1:5 rwm",
            "c 1:7 rwm",
            "c 1:8 rwm",
            "c 1:9 rwm",
            "c 5:0 rwm",
            "c 5:1 rwm",
            "c 5:2 rwm",
            "c 136:* rwm",
            "c 10:229 rwm",
            "c 10:200 rwm",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    // -----------------------------------------------------------------------------------------
    // Fake cgroup filesystems
    // -----------------------------------------------------------------------------------------

    fn reset_hooks() {
        hooks::WRITES.with(|w| w.borrow_mut().clear());
        hooks::TEMPLATES.with(|t| t.borrow_mut().clear());
        hooks::FAKE_BPF.with(|f| f.set(false));
    }

    /// A temporary directory faking one layout. Cgroup files are pre-created: in the hierarchy
    /// roots here, and in every new cgroup directory by the `on_mkdir` hook.
    struct Fixture {
        base: PathBuf,
        root: CgroupRoot,
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            reset_hooks();
            let _ = fs::remove_dir_all(&self.base);
        }
    }

    impl Fixture {
        fn fresh_base() -> PathBuf {
            reset_hooks();
            let base = std::env::temp_dir().join(unique("corral-cgroup-fixture"));
            fs::create_dir_all(&base).expect("fixture dir");
            base
        }

        fn hierarchy(base: &Path, name: &str, root_files: &[(&str, &str)], cgroup_files: &[(&str, &str)]) -> PathBuf {
            let mount = base.join(name);
            fs::create_dir_all(&mount).expect("hierarchy dir");
            for (file, content) in root_files {
                put(&mount.join(file), content);
            }
            let files = cgroup_files
                .iter()
                .map(|(f, c)| (f.to_string(), c.to_string()))
                .collect();
            hooks::TEMPLATES.with(|t| t.borrow_mut().push((mount.clone(), files)));
            mount
        }

        /// v1 hybrid: cpu and cpuacct co-mounted, the other controllers alone, the systemd named
        /// hierarchy and an empty unified one. `memsw`: whether swap accounting is on.
        fn v1(memsw: bool) -> Fixture {
            let base = Fixture::fresh_base();
            let procs: &[(&str, &str)] = &[("cgroup.procs", ""), ("tasks", "")];
            let with = |extra: &[(&'static str, &'static str)]| -> Vec<(&'static str, &'static str)> {
                procs.iter().chain(extra).copied().collect()
            };
            let mut controllers = BTreeMap::new();
            let cpu = Fixture::hierarchy(
                &base,
                "cpu,cpuacct",
                procs,
                &with(&[
                    ("cpu.shares", "1024"),
                    ("cpu.cfs_quota_us", "-1"),
                    ("cpu.cfs_period_us", "100000"),
                    ("cpuacct.usage", "5000"),
                ]),
            );
            controllers.insert("cpu".to_string(), cpu.clone());
            controllers.insert("cpuacct".to_string(), cpu);
            let cpuset = Fixture::hierarchy(
                &base,
                "cpuset",
                &with(&[
                    ("cpuset.cpus", "0-3"),
                    ("cpuset.mems", "0"),
                    ("cpuset.effective_cpus", "0-3"),
                    ("cpuset.effective_mems", "0"),
                ]),
                &with(&[
                    ("cpuset.cpus", ""),
                    ("cpuset.mems", ""),
                    ("cpuset.effective_cpus", ""),
                    ("cpuset.effective_mems", ""),
                ]),
            );
            controllers.insert("cpuset".to_string(), cpuset);
            let mut memory_files = vec![
                ("memory.limit_in_bytes", "9223372036854771712"),
                ("memory.usage_in_bytes", "4096"),
                ("memory.max_usage_in_bytes", "8192"),
            ];
            if memsw {
                memory_files.push(("memory.memsw.limit_in_bytes", "9223372036854771712"));
                memory_files.push(("memory.memsw.usage_in_bytes", "6144"));
            }
            let memory = Fixture::hierarchy(&base, "memory", procs, &with(&memory_files));
            controllers.insert("memory".to_string(), memory);
            let devices = Fixture::hierarchy(
                &base,
                "devices",
                procs,
                &with(&[
                    ("devices.allow", ""),
                    ("devices.deny", ""),
                    ("devices.list", "a *:* rwm"),
                ]),
            );
            controllers.insert("devices".to_string(), devices);
            let freezer = Fixture::hierarchy(&base, "freezer", procs, &with(&[("freezer.state", "THAWED")]));
            controllers.insert("freezer".to_string(), freezer);
            let pids = Fixture::hierarchy(
                &base,
                "pids",
                procs,
                &with(&[("pids.max", "max"), ("pids.current", "3")]),
            );
            controllers.insert("pids".to_string(), pids);
            let systemd = Fixture::hierarchy(&base, "systemd", procs, procs);
            let unified = Fixture::hierarchy(
                &base,
                "unified",
                &[
                    ("cgroup.procs", ""),
                    ("cgroup.controllers", ""),
                    ("cgroup.subtree_control", ""),
                ],
                &[
                    ("cgroup.procs", ""),
                    ("cgroup.threads", ""),
                    ("cgroup.controllers", ""),
                    ("cgroup.subtree_control", ""),
                    ("cgroup.events", "populated 0\nfrozen 0\n"),
                    ("cgroup.freeze", "0"),
                    ("cgroup.kill", ""),
                    ("cpu.stat", "usage_usec 7\n"),
                ],
            );
            let layout = Layout::V1 {
                controllers,
                unified: Some(unified),
                systemd: Some(systemd),
            };
            Fixture {
                base,
                root: CgroupRoot::new(layout),
            }
        }

        /// Pure v2 whose root already delegates `memory`; every new cgroup has all files. The
        /// device filter is recorded instead of loaded.
        fn v2() -> Fixture {
            let base = Fixture::fresh_base();
            hooks::FAKE_BPF.with(|f| f.set(true));
            let root = Fixture::hierarchy(
                &base,
                "cgroup2",
                &[
                    ("cgroup.controllers", "cpuset cpu io memory hugetlb pids rdma misc"),
                    ("cgroup.subtree_control", "memory"),
                    ("cgroup.procs", ""),
                ],
                &[
                    ("cgroup.controllers", "cpuset cpu io memory pids"),
                    ("cgroup.subtree_control", ""),
                    ("cgroup.procs", ""),
                    ("cgroup.threads", ""),
                    ("cgroup.events", "populated 0\nfrozen 0\n"),
                    ("cgroup.freeze", "0"),
                    ("cgroup.kill", ""),
                    ("cpu.max", "max 100000"),
                    ("cpu.weight", "100"),
                    ("cpu.stat", "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n"),
                    ("cpuset.cpus", ""),
                    ("cpuset.cpus.effective", "0-7"),
                    ("cpuset.mems", ""),
                    ("memory.max", "max"),
                    ("memory.swap.max", "max"),
                    ("memory.current", "1048576"),
                    ("memory.peak", "2097152"),
                    ("memory.swap.current", "4096"),
                    ("pids.max", "max"),
                    ("pids.current", "2"),
                ],
            );
            Fixture {
                base,
                root: CgroupRoot::new(Layout::V2 { root }),
            }
        }

        /// Every write since the last call, paths relative to the fixture.
        fn take_writes(&self) -> Vec<(String, String)> {
            let writes = hooks::WRITES.with(|w| std::mem::take(&mut *w.borrow_mut()));
            writes
                .into_iter()
                .map(|(path, value)| {
                    let rel = path.strip_prefix(&self.base).expect("write outside the fixture");
                    (rel.display().to_string(), value)
                })
                .collect()
        }
    }

    fn w(path: &str, value: &str) -> (String, String) {
        (path.to_string(), value.to_string())
    }

    // -----------------------------------------------------------------------------------------
    // Pure logic
    // -----------------------------------------------------------------------------------------

    const HYBRID_MOUNTINFO: &str = "\
22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn cgroup_detects_hybrid_layout() {
        let root = CgroupRoot::from_mountinfo(HYBRID_MOUNTINFO).expect("hybrid");
        let Layout::V1 {
            controllers,
            unified,
            systemd,
        } = root.layout()
        else {
            panic!("not v1: {root:?}")
        };
        let names: Vec<&str> = controllers.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            ["blkio", "cpu", "cpuacct", "cpuset", "devices", "freezer", "memory", "pids"]
        );
        assert_eq!(controllers["memory"], Path::new("/sys/fs/cgroup/memory"));
        assert_eq!(unified.as_deref(), Some(Path::new("/sys/fs/cgroup/unified")));
        assert_eq!(systemd.as_deref(), Some(Path::new("/sys/fs/cgroup/systemd")));
    }

    #[test]
    fn cgroup_detects_v2_comounted_and_escaped_layouts() {
        let v2 = "29 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n";
        let root = CgroupRoot::from_mountinfo(v2).expect("v2");
        assert_eq!(
            root.layout(),
            &Layout::V2 {
                root: PathBuf::from("/sys/fs/cgroup")
            }
        );

        let comounted = "\
30 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:9 - cgroup cgroup rw,cpu,cpuacct
31 25 0:28 / /sys/fs/cgroup/net\\040cls rw,nosuid shared:10 - cgroup cgroup rw,net_cls,net_prio,clone_children
32 25 0:29 / /sys/fs/cgroup/misc rw shared:11 - cgroup cgroup rw,name=other
";
        let root = CgroupRoot::from_mountinfo(comounted).expect("comounted");
        let Layout::V1 {
            controllers,
            unified,
            systemd,
        } = root.layout()
        else {
            panic!("not v1")
        };
        assert_eq!(controllers.len(), 4, "{controllers:?}");
        assert_eq!(controllers["cpu"], controllers["cpuacct"]);
        assert_eq!(controllers["net_prio"], Path::new("/sys/fs/cgroup/net cls"));
        assert_eq!((unified, systemd), (&None, &None));
        let cg = Cgroup::at(&root, "c").expect("name");
        assert_eq!(cg.paths().len(), 2, "co-mounted controllers share one directory");

        let none = "22 1 0:21 / /proc rw - proc proc rw\n";
        assert!(matches!(
            CgroupRoot::from_mountinfo(none),
            Err(CgroupError::NotMounted { .. })
        ));
    }

    #[test]
    fn cgroup_detects_this_host() {
        let root = CgroupRoot::detect().expect("detect");
        let text = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        if text.contains(" - cgroup cgroup ") {
            assert!(matches!(root.layout(), Layout::V1 { .. }), "{root:?}");
        } else if text.contains(" - cgroup2 ") {
            assert!(matches!(root.layout(), Layout::V2 { .. }), "{root:?}");
        }
    }

    #[test]
    fn cgroup_names_are_validated() {
        let root = CgroupRoot::new(Layout::V2 {
            root: PathBuf::from("/nonexistent"),
        });
        for bad in ["", "a/b", "/abs", "..", "x..y", ".", "nul\0"] {
            assert!(
                matches!(Cgroup::at(&root, bad), Err(CgroupError::InvalidName { .. })),
                "{bad:?} accepted"
            );
        }
        let cg = Cgroup::at(&root, "web-1.test_x").expect("good name");
        assert_eq!(cg.paths(), [PathBuf::from("/nonexistent/corral/web-1.test_x")]);
        assert_eq!(
            cg.unified_dir(),
            Some(PathBuf::from("/nonexistent/corral/web-1.test_x"))
        );
    }

    #[test]
    fn cgroup_cpu_lists() {
        assert_eq!(cpuset::parse_cpu_list("0-3,5,7-8\n"), Some(vec![0, 1, 2, 3, 5, 7, 8]));
        assert_eq!(cpuset::parse_cpu_list(""), Some(vec![]));
        assert_eq!(cpuset::parse_cpu_list("3-1"), None);
        assert_eq!(cpuset::parse_cpu_list("a"), None);
        assert_eq!(format_cpu_list(&[5, 0, 1, 2, 7, 9, 8]), "0-2,5,7-9");
        assert_eq!(format_cpu_list(&[]), "");

        let parent = Path::new("/p");
        let avail = [0, 1, 2, 3, 8];
        assert_eq!(select_cpus(&CpuLimit::Count(2), &avail, parent).expect("count"), [0, 1]);
        assert_eq!(
            select_cpus(&CpuLimit::Count(99), &avail, parent).expect("capped"),
            avail
        );
        assert_eq!(
            select_cpus(&CpuLimit::Set(vec![8, 1, 8]), &avail, parent).expect("set"),
            [1, 8]
        );
        let err = select_cpus(&CpuLimit::Set(vec![1, 4]), &avail, parent).expect_err("4 missing");
        assert!(matches!(err, CgroupError::CpuUnavailable { cpu: 4, .. }), "{err}");
        assert!(err.to_string().contains("0-3,8"), "{err}");
        assert!(select_cpus(&CpuLimit::Count(0), &avail, parent).is_err());
        assert!(select_cpus(&CpuLimit::Set(vec![]), &avail, parent).is_err());
    }

    #[test]
    fn cgroup_device_rules() {
        let lines: Vec<String> = default_device_rules().iter().map(ToString::to_string).collect();
        assert_eq!(lines, default_allow_lines());
        assert_eq!(DeviceRule::new('a', None, None, "rwm").to_string(), "a");
        for bad in [
            DeviceRule::new('x', Some(1), Some(3), "rwm"),
            DeviceRule::new('c', Some(1), Some(3), "rwx"),
            DeviceRule::new('c', Some(1), Some(3), ""),
            DeviceRule::new('a', Some(1), None, "rwm"),
            DeviceRule::new('c', Some(4096), Some(0), "r"),
            DeviceRule::new('b', Some(8), Some(1 << 20), "r"),
        ] {
            assert!(
                matches!(bad.validate(), Err(CgroupError::InvalidDevice { .. })),
                "{bad:?} accepted"
            );
        }
        assert_eq!(
            DeviceRule::for_node(Path::new("/dev/null"), "rw").expect("/dev/null"),
            DeviceRule::new('c', Some(1), Some(3), "rw")
        );
        assert!(matches!(
            DeviceRule::for_node(Path::new("/proc/self/status"), "rw"),
            Err(CgroupError::DeviceNode { .. })
        ));
    }

    /// What the rules mean, independently of the BPF program.
    fn reference_allows(rules: &[DeviceRule], kind: char, major: u32, minor: u32, access: &str) -> bool {
        rules.iter().any(|r| {
            r.kind == 'a'
                || (r.kind == kind
                    && r.major.is_none_or(|m| m == major)
                    && r.minor.is_none_or(|m| m == minor)
                    && access.chars().all(|c| r.access.contains(c)))
        })
    }

    #[test]
    fn cgroup_bpf_program_matches_the_rules() {
        let mut rules = default_device_rules();
        rules.push(DeviceRule::new('b', Some(7), Some(0), "r"));
        rules.push(DeviceRule::new('c', None, Some(42), "w"));
        let prog = device_filter_program(&rules).expect("program");
        let accesses = ["m", "r", "w", "rw", "rm", "wm", "rwm"];
        let mut checked = 0;
        for kind in ['b', 'c'] {
            for major in [1, 5, 7, 10, 136, 254] {
                for minor in [0, 1, 2, 3, 5, 7, 8, 9, 42, 200, 229, 237] {
                    for access in accesses {
                        let want = reference_allows(&rules, kind, major, minor, access);
                        let got = bpf::interpret(&prog, kind, major, minor, access);
                        assert_eq!(got, u64::from(want), "{kind} {major}:{minor} {access}");
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, 2 * 6 * 12 * 7);
        // Spot checks, in case the reference were wrong too.
        assert_eq!(bpf::interpret(&prog, 'c', 1, 3, "rw"), 1, "/dev/null");
        assert_eq!(bpf::interpret(&prog, 'c', 10, 237, "r"), 0, "/dev/loop-control");
        assert_eq!(bpf::interpret(&prog, 'b', 7, 0, "w"), 0, "loop0 write");
        assert_eq!(bpf::interpret(&prog, 'b', 8, 0, "m"), 1, "mknod block");

        // An allow-all rule ends the program (later rules would be unreachable).
        let all = device_filter_program(&[DeviceRule::new('a', None, None, "rwm"), rules[2].clone()]).expect("a");
        assert_eq!(bpf::interpret(&all, 'b', 8, 0, "rw"), 1);
        assert_eq!(all.last().map(|i| i.code), Some(0x95));
        assert_eq!(all.iter().filter(|i| i.code == 0x95).count(), 1);
    }

    // -----------------------------------------------------------------------------------------
    // Against the fake filesystems
    // -----------------------------------------------------------------------------------------

    #[test]
    fn cgroup_v1_create_writes_exactly() {
        let f = Fixture::v1(true);
        let extra = [DeviceRule::new('c', Some(10), Some(232), "rw")];
        let cg = Cgroup::create(&f.root, "c1", &full_limits(), &extra, None).expect("create");
        let mut expected = vec![
            w("cpuset/corral/cpuset.cpus", "0-3"),
            w("cpuset/corral/cpuset.mems", "0"),
            w("cpuset/corral/c1/cpuset.mems", "0"),
            w("devices/corral/c1/devices.deny", "a"),
        ];
        for line in default_allow_lines().iter().chain([&"c 10:232 rw".to_string()]) {
            expected.push(w("devices/corral/c1/devices.allow", line));
        }
        expected.extend([
            w("cpuset/corral/c1/cpuset.cpus", "0-1"),
            w("cpu,cpuacct/corral/c1/cpu.shares", "512"),
            w("cpu,cpuacct/corral/c1/cpu.cfs_quota_us", "-1"),
            w("memory/corral/c1/memory.memsw.limit_in_bytes", "-1"),
            w("memory/corral/c1/memory.limit_in_bytes", "67108864"),
            w("memory/corral/c1/memory.memsw.limit_in_bytes", "67108864"),
            w("pids/corral/c1/pids.max", "500"),
        ]);
        assert_eq!(f.take_writes(), expected);

        let dirs: Vec<String> = cg
            .paths()
            .iter()
            .map(|p| p.strip_prefix(&f.base).expect("in fixture").display().to_string())
            .collect();
        assert_eq!(
            dirs,
            [
                "cpu,cpuacct/corral/c1",
                "cpuset/corral/c1",
                "devices/corral/c1",
                "freezer/corral/c1",
                "memory/corral/c1",
                "pids/corral/c1",
                "systemd/corral/c1",
                "unified/corral/c1",
            ]
        );
        assert!(cg.paths().iter().all(|p| p.is_dir()));
        assert_eq!(cg.unified_dir(), Some(f.base.join("unified/corral/c1")));

        // A second container finds the parents ready: no reseeding of corral's cpuset.
        Cgroup::create(&f.root, "c2", &Limits::default(), &[], None).expect("c2");
        let writes = f.take_writes();
        assert!(writes.iter().all(|(p, _)| p.contains("/c2/")), "{writes:?}");
        assert!(writes.contains(&w("cpuset/corral/c2/cpuset.cpus", "0-3")), "{writes:?}");

        // The same name again is refused, and the existing cgroup is left alone.
        let err = Cgroup::create(&f.root, "c1", &Limits::default(), &[], None).expect_err("exists");
        assert!(matches!(err, CgroupError::Exists { .. }), "{err}");
        assert!(cg.paths().iter().all(|p| p.is_dir()));
        Cgroup::open(&f.root, "c1").expect("open");
        assert!(matches!(
            Cgroup::open(&f.root, "nope"),
            Err(CgroupError::Missing { .. })
        ));
    }

    #[test]
    fn cgroup_v1_set_limits_and_resets() {
        let f = Fixture::v1(true);
        let cg = Cgroup::create(&f.root, "c1", &full_limits(), &[], None).expect("create");
        f.take_writes();

        cg.set_limits(&Limits::default()).expect("reset");
        assert_eq!(
            f.take_writes(),
            [
                w("cpuset/corral/c1/cpuset.cpus", "0-3"),
                w("cpu,cpuacct/corral/c1/cpu.shares", "1024"),
                w("cpu,cpuacct/corral/c1/cpu.cfs_quota_us", "-1"),
                w("memory/corral/c1/memory.memsw.limit_in_bytes", "-1"),
                w("memory/corral/c1/memory.limit_in_bytes", "-1"),
                w("pids/corral/c1/pids.max", "max"),
            ]
        );

        let quota = limits(
            Some(CpuLimit::Set(vec![3, 1])),
            Some(CpuAllowance::Quota {
                quota_us: 25_000,
                period_us: 50_000,
            }),
            Some(MIB),
            Some(true),
            None,
        );
        cg.set_limits(&quota).expect("quota");
        assert_eq!(
            f.take_writes(),
            [
                w("cpuset/corral/c1/cpuset.cpus", "1,3"),
                w("cpu,cpuacct/corral/c1/cpu.shares", "1024"),
                w("cpu,cpuacct/corral/c1/cpu.cfs_quota_us", "-1"),
                w("cpu,cpuacct/corral/c1/cpu.cfs_period_us", "50000"),
                w("cpu,cpuacct/corral/c1/cpu.cfs_quota_us", "25000"),
                w("memory/corral/c1/memory.memsw.limit_in_bytes", "-1"),
                w("memory/corral/c1/memory.limit_in_bytes", "1048576"),
                w("pids/corral/c1/pids.max", "max"),
            ]
        );
        assert_eq!(read(&f.base.join("cpu,cpuacct/corral/c1/cpu.cfs_quota_us")), "25000");

        // Shares have a floor of 2.
        cg.set_limits(&limits(None, Some(CpuAllowance::Percent(0)), None, None, None))
            .expect("0%");
        assert_eq!(read(&f.base.join("cpu,cpuacct/corral/c1/cpu.shares")), "2");

        let err = cg
            .set_limits(&limits(Some(CpuLimit::Set(vec![4])), None, None, None, None))
            .expect_err("cpu 4");
        assert!(matches!(err, CgroupError::CpuUnavailable { cpu: 4, .. }), "{err}");
    }

    #[test]
    fn cgroup_v1_without_swap_accounting() {
        let f = Fixture::v1(false);
        let cg = Cgroup::create(&f.root, "c1", &full_limits(), &[], None).expect("create without memsw");
        let memory: Vec<_> = f
            .take_writes()
            .into_iter()
            .filter(|(p, _)| p.starts_with("memory/"))
            .collect();
        assert_eq!(memory, [w("memory/corral/c1/memory.limit_in_bytes", "67108864")]);
        let stats = cg.stats().expect("stats");
        assert_eq!(stats.swap_bytes, None);
    }

    #[test]
    fn cgroup_v1_stats_pids_freeze_kill() {
        let f = Fixture::v1(true);
        let cg = Cgroup::create(&f.root, "c1", &Limits::default(), &[], None).expect("create");
        assert_eq!(
            cg.stats().expect("stats"),
            CgroupStats {
                memory_bytes: 4096,
                memory_peak_bytes: 8192,
                swap_bytes: Some(2048),
                cpu_ns: 5000,
                processes: 3
            }
        );

        put(&f.base.join("memory/corral/c1/cgroup.procs"), "12\n34\n");
        let sub = f.base.join("memory/corral/c1/system.slice");
        fs::create_dir(&sub).expect("sub");
        put(&sub.join("cgroup.procs"), "56\n");
        put(&f.base.join("unified/corral/c1/cgroup.procs"), "34\n78\n");
        assert_eq!(cg.pids().expect("pids"), [12, 34, 56, 78]);
        for file in ["memory/corral/c1/cgroup.procs", "unified/corral/c1/cgroup.procs"] {
            put(&f.base.join(file), "");
        }
        put(&sub.join("cgroup.procs"), "");

        f.take_writes();
        cg.freeze().expect("freeze");
        assert!(cg.is_frozen().expect("is_frozen"));
        cg.thaw().expect("thaw");
        assert!(!cg.is_frozen().expect("is_frozen"));
        cg.kill_all().expect("kill_all of an empty cgroup");
        assert_eq!(
            f.take_writes(),
            [
                w("freezer/corral/c1/freezer.state", "FROZEN"),
                w("freezer/corral/c1/freezer.state", "THAWED"),
                w("unified/corral/c1/cgroup.kill", "1"),
            ]
        );
    }

    #[test]
    fn cgroup_v2_create_writes_exactly() {
        let f = Fixture::v2();
        let extra = [DeviceRule::new('c', Some(10), Some(232), "rw")];
        let cg = Cgroup::create(&f.root, "c1", &full_limits(), &extra, None).expect("create");
        let mut rules = default_allow_lines();
        rules.push("c 10:232 rw".to_string());
        assert_eq!(
            f.take_writes(),
            [
                w("cgroup2/cgroup.subtree_control", "+cpu"),
                w("cgroup2/cgroup.subtree_control", "+cpuset"),
                w("cgroup2/cgroup.subtree_control", "+pids"),
                w("cgroup2/corral/cgroup.subtree_control", "+cpu"),
                w("cgroup2/corral/cgroup.subtree_control", "+cpuset"),
                w("cgroup2/corral/cgroup.subtree_control", "+memory"),
                w("cgroup2/corral/cgroup.subtree_control", "+pids"),
                w("cgroup2/corral/c1", &format!("bpf: {}", rules.join(", "))),
                w("cgroup2/corral/c1/cpuset.cpus", "0-1"),
                w("cgroup2/corral/c1/cpu.weight", "50"),
                w("cgroup2/corral/c1/cpu.max", "max"),
                w("cgroup2/corral/c1/memory.max", "67108864"),
                w("cgroup2/corral/c1/memory.swap.max", "0"),
                w("cgroup2/corral/c1/pids.max", "500"),
            ]
        );
        assert_eq!(cg.paths(), [f.base.join("cgroup2/corral/c1")]);
        assert_eq!(cg.unified_dir(), Some(f.base.join("cgroup2/corral/c1")));

        cg.set_limits(&Limits::default()).expect("reset");
        assert_eq!(
            f.take_writes(),
            [
                w("cgroup2/corral/c1/cpuset.cpus", ""),
                w("cgroup2/corral/c1/cpu.weight", "100"),
                w("cgroup2/corral/c1/cpu.max", "max"),
                w("cgroup2/corral/c1/memory.max", "max"),
                w("cgroup2/corral/c1/memory.swap.max", "max"),
                w("cgroup2/corral/c1/pids.max", "max"),
            ]
        );
        // The empty value reaches the file as a newline, cgroupfs' "empty".
        assert_eq!(
            fs::read_to_string(f.base.join("cgroup2/corral/c1/cpuset.cpus")).expect("cpus"),
            "\n"
        );

        let quota = limits(
            Some(CpuLimit::Set(vec![7])),
            Some(CpuAllowance::Quota {
                quota_us: 25_000,
                period_us: 100_000,
            }),
            None,
            None,
            Some(7),
        );
        cg.set_limits(&quota).expect("quota");
        let writes = f.take_writes();
        assert!(writes.contains(&w("cgroup2/corral/c1/cpuset.cpus", "7")), "{writes:?}");
        assert!(
            writes.contains(&w("cgroup2/corral/c1/cpu.max", "25000 100000")),
            "{writes:?}"
        );
        assert!(writes.contains(&w("cgroup2/corral/c1/pids.max", "7")), "{writes:?}");
        cg.set_limits(&limits(None, Some(CpuAllowance::Percent(100_000)), None, None, None))
            .expect("big");
        assert_eq!(read(&f.base.join("cgroup2/corral/c1/cpu.weight")), "10000");

        // A controller the cgroup lacks is an error only when a limit needs it.
        fs::remove_file(f.base.join("cgroup2/corral/c1/cpu.max")).expect("rm cpu.max");
        cg.set_limits(&Limits::default())
            .expect("no cpu controller, no cpu limit");
        let err = cg
            .set_limits(&limits(None, Some(CpuAllowance::Percent(10)), None, None, None))
            .expect_err("cpu");
        assert!(
            matches!(err, CgroupError::ControllerMissing { controller: "cpu", .. }),
            "{err}"
        );
        fs::remove_file(f.base.join("cgroup2/corral/c1/memory.swap.max")).expect("rm swap.max");
        cg.set_limits(&limits(None, None, Some(MIB), Some(false), None))
            .expect("no swap accounting");
    }

    #[test]
    fn cgroup_v2_stats_freeze_kill() {
        let f = Fixture::v2();
        let cg = Cgroup::create(&f.root, "c1", &Limits::default(), &[], None).expect("create");
        assert_eq!(
            cg.stats().expect("stats"),
            CgroupStats {
                memory_bytes: 1_048_576,
                memory_peak_bytes: 2_097_152,
                swap_bytes: Some(4096),
                cpu_ns: 1_500_000,
                processes: 2
            }
        );
        f.take_writes();
        let events = f.base.join("cgroup2/corral/c1/cgroup.events");
        put(&events, "populated 1\nfrozen 1\n");
        cg.freeze().expect("freeze");
        assert!(cg.is_frozen().expect("frozen"));
        put(&events, "populated 0\nfrozen 0\n");
        cg.thaw().expect("thaw");
        assert!(!cg.is_frozen().expect("thawed"));
        cg.kill_all().expect("kill");
        assert_eq!(
            f.take_writes(),
            [
                w("cgroup2/corral/c1/cgroup.freeze", "1"),
                w("cgroup2/corral/c1/cgroup.freeze", "0"),
                w("cgroup2/corral/c1/cgroup.kill", "1"),
            ]
        );
    }

    #[test]
    fn cgroup_delegation_chowns_the_cgroup2_and_systemd_dirs() {
        let uid = if nix::unistd::geteuid().is_root() {
            1_000_000
        } else {
            nix::unistd::geteuid().as_raw()
        };
        let gid = if nix::unistd::geteuid().is_root() {
            1_000_001
        } else {
            nix::unistd::getegid().as_raw()
        };
        let owner = |p: &Path| {
            let m = fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (m.uid(), m.gid())
        };

        let f = Fixture::v1(true);
        Cgroup::create(&f.root, "c1", &Limits::default(), &[], Some((uid, gid))).expect("create v1");
        for dir in ["unified/corral/c1", "systemd/corral/c1"] {
            assert_eq!(owner(&f.base.join(dir)), (uid, gid), "{dir}");
        }
        for file in [
            "unified/corral/c1/cgroup.procs",
            "unified/corral/c1/cgroup.subtree_control",
            "unified/corral/c1/cgroup.threads",
            "systemd/corral/c1/cgroup.procs",
            "systemd/corral/c1/tasks",
        ] {
            assert_eq!(owner(&f.base.join(file)), (uid, gid), "{file}");
        }
        if uid != nix::unistd::geteuid().as_raw() {
            for not_delegated in ["memory/corral/c1", "unified/corral/c1/cgroup.kill", "unified/corral"] {
                assert_ne!(owner(&f.base.join(not_delegated)).0, uid, "{not_delegated}");
            }
        }
        drop(f);

        let f = Fixture::v2();
        Cgroup::create(&f.root, "c1", &Limits::default(), &[], Some((uid, gid))).expect("create v2");
        for path in ["", "/cgroup.procs", "/cgroup.subtree_control", "/cgroup.threads"] {
            assert_eq!(
                owner(&f.base.join(format!("cgroup2/corral/c1{path}"))),
                (uid, gid),
                "{path}"
            );
        }
        if uid != nix::unistd::geteuid().as_raw() {
            assert_ne!(owner(&f.base.join("cgroup2/corral/c1/memory.max")).0, uid);
        }
    }

    // -----------------------------------------------------------------------------------------
    // On this host's real cgroups (root only)
    // -----------------------------------------------------------------------------------------

    fn real_root() -> Option<CgroupRoot> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping: real cgroup tests need root");
            return None;
        }
        Some(CgroupRoot::detect().expect("detect the host's cgroups"))
    }

    /// A real container cgroup that is destroyed, with its child processes killed and reaped,
    /// however the test ends.
    struct RealCgroup {
        root: CgroupRoot,
        name: String,
        children: Vec<Child>,
    }

    impl RealCgroup {
        fn new(what: &str) -> Option<RealCgroup> {
            Some(RealCgroup {
                root: real_root()?,
                name: unique(&format!("corral-test-{what}")),
                children: Vec::new(),
            })
        }

        fn create(&self, limits: &Limits, extra: &[DeviceRule], delegate: Option<(u32, u32)>) -> Cgroup {
            Cgroup::create(&self.root, &self.name, limits, extra, delegate).expect("create real cgroup")
        }

        fn handle(&self) -> Cgroup {
            Cgroup::at(&self.root, &self.name).expect("name")
        }

        /// Spawns `sh -c script`, which should start with `read _` so that it only proceeds
        /// once `go` is called, after it has been moved into the cgroup.
        fn spawn_sh(&mut self, script: &str) -> usize {
            let child = Command::new("sh")
                .arg("-c")
                .arg(script)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn sh");
            self.children.push(child);
            self.children.len() - 1
        }

        fn spawn_sleep(&mut self) -> usize {
            let child = Command::new("sleep")
                .arg("30")
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn sleep");
            self.children.push(child);
            self.children.len() - 1
        }

        fn pid(&self, i: usize) -> i32 {
            i32::try_from(self.children[i].id()).expect("pid")
        }

        fn go(&mut self, i: usize) {
            let mut stdin = self.children[i].stdin.take().expect("stdin");
            stdin.write_all(b"go\n").expect("go");
        }

        fn wait(&mut self, i: usize, timeout: Duration) -> ExitStatus {
            wait_timeout(&mut self.children[i], timeout).expect("child did not exit in time")
        }
    }

    impl Drop for RealCgroup {
        fn drop(&mut self) {
            let cg = self.handle();
            let _ = cg.thaw();
            for child in &mut self.children {
                let _ = child.kill();
                if wait_timeout(child, Duration::from_secs(10)).is_none() {
                    eprintln!("child {} did not die", child.id());
                }
            }
            if let Err(e) = cg.destroy() {
                eprintln!("cleanup of cgroup {}: {e}", self.name);
            }
        }
    }

    fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if start.elapsed() > timeout {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn proc_state(pid: i32) -> String {
        let status = read(Path::new(&format!("/proc/{pid}/status")));
        status
            .lines()
            .find_map(|l| l.strip_prefix("State:"))
            .map(str::trim)
            .unwrap_or_default()
            .to_string()
    }

    /// The container's file `v1_file` of `controller` (v1) or `v2_file` (v2).
    fn knob(cg: &Cgroup, controller: &str, v1_file: &str, v2_file: &str) -> PathBuf {
        match cg.root.layout() {
            Layout::V1 { controllers, .. } => cg.dir_in(&controllers[controller]).join(v1_file),
            Layout::V2 { root } => cg.dir_in(root).join(v2_file),
        }
    }

    fn parent_cpus(cg: &Cgroup) -> Vec<u32> {
        let (parent, files): (PathBuf, &[&str]) = match cg.root.layout() {
            Layout::V1 { controllers, .. } => (
                controllers["cpuset"].join(PARENT),
                &["cpuset.effective_cpus", "cpuset.cpus"],
            ),
            Layout::V2 { root } => (root.join(PARENT), &["cpuset.cpus.effective", "cpuset.cpus"]),
        };
        available_cpus(&parent, files).expect("parent cpus")
    }

    fn assert_gone(paths: &[PathBuf]) {
        for p in paths {
            assert!(!p.exists(), "{} still exists", p.display());
        }
    }

    #[test]
    fn cgroup_real_limits_devices_delegation() {
        let Some(t) = RealCgroup::new("limits") else {
            return;
        };
        let loop_control = DeviceRule::for_node(Path::new("/dev/loop-control"), "rw").ok();
        let extra: Vec<DeviceRule> = loop_control.iter().cloned().collect();
        let limits = limits(
            Some(CpuLimit::Count(1)),
            Some(CpuAllowance::Quota {
                quota_us: 50_000,
                period_us: 100_000,
            }),
            Some(256 * MIB),
            Some(false),
            Some(100),
        );
        let cg = t.create(&limits, &extra, Some((1_000_000, 1_000_000)));
        let v1 = matches!(cg.root.layout(), Layout::V1 { .. });
        let cpus = parent_cpus(&cg);
        let first = cpus[0].to_string();
        assert_eq!(read(&knob(&cg, "cpuset", "cpuset.cpus", "cpuset.cpus")), first);
        assert_eq!(
            read(&knob(&cg, "memory", "memory.limit_in_bytes", "memory.max")),
            (256 * MIB).to_string()
        );
        assert_eq!(read(&knob(&cg, "pids", "pids.max", "pids.max")), "100");
        if v1 {
            assert_eq!(read(&knob(&cg, "cpu", "cpu.cfs_quota_us", "")), "50000");
            assert_eq!(read(&knob(&cg, "cpu", "cpu.cfs_period_us", "")), "100000");
            assert_eq!(read(&knob(&cg, "cpu", "cpu.shares", "")), "1024");
            let memsw = knob(&cg, "memory", "memory.memsw.limit_in_bytes", "");
            if memsw.exists() {
                assert_eq!(read(&memsw), (256 * MIB).to_string());
            }
            assert!(!read(&knob(&cg, "cpuset", "cpuset.mems", "")).is_empty());
            let list: BTreeSet<String> = read(&knob(&cg, "devices", "devices.list", ""))
                .lines()
                .map(str::to_string)
                .collect();
            let mut want: BTreeSet<String> = default_allow_lines().into_iter().collect();
            want.extend(extra.iter().map(ToString::to_string));
            assert_eq!(list, want);
        } else {
            assert_eq!(read(&knob(&cg, "cpu", "", "cpu.max")), "50000 100000");
            assert_eq!(read(&knob(&cg, "memory", "", "memory.swap.max")), "0");
        }

        // Delegation: the cgroup2 directory and the systemd one belong to the container's root.
        let mut delegated: Vec<PathBuf> = cg.unified_dir().into_iter().collect();
        if let Layout::V1 {
            systemd: Some(systemd), ..
        } = cg.root.layout()
        {
            delegated.push(cg.dir_in(systemd));
        }
        assert!(!delegated.is_empty());
        for dir in &delegated {
            for path in [dir.clone(), dir.join("cgroup.procs")] {
                assert_eq!(
                    fs::metadata(&path).expect("stat").uid(),
                    1_000_000,
                    "{}",
                    path.display()
                );
            }
        }
        if let Some(unified) = cg.unified_dir() {
            for file in ["cgroup.subtree_control", "cgroup.threads"] {
                assert_eq!(
                    fs::metadata(unified.join(file)).expect("stat").gid(),
                    1_000_000,
                    "{file}"
                );
            }
        }
        if v1 {
            assert_eq!(fs::metadata(knob(&cg, "memory", "", "")).expect("stat").uid(), 0);
        }

        // Live update, then everything back to unlimited.
        let last = *cpus.last().expect("a cpu");
        cg.set_limits(&limits_with_percent(last)).expect("update");
        assert_eq!(
            read(&knob(&cg, "cpuset", "cpuset.cpus", "cpuset.cpus")),
            last.to_string()
        );
        assert_eq!(
            read(&knob(&cg, "cpu", "cpu.shares", "cpu.weight")),
            if v1 { "256" } else { "25" }
        );
        assert_eq!(
            read(&knob(&cg, "memory", "memory.limit_in_bytes", "memory.max")),
            (128 * MIB).to_string()
        );

        cg.set_limits(&Limits::default()).expect("reset");
        assert_eq!(read(&knob(&cg, "pids", "pids.max", "pids.max")), "max");
        if v1 {
            assert_eq!(read(&knob(&cg, "cpuset", "cpuset.cpus", "")), format_cpu_list(&cpus));
            assert_eq!(read(&knob(&cg, "cpu", "cpu.cfs_quota_us", "")), "-1");
            assert_eq!(read(&knob(&cg, "cpu", "cpu.shares", "")), "1024");
            let unlimited: u64 = read(&knob(&cg, "memory", "memory.limit_in_bytes", ""))
                .parse()
                .expect("u64");
            assert!(unlimited > 1 << 60, "{unlimited}");
        } else {
            assert_eq!(read(&knob(&cg, "memory", "", "memory.max")), "max");
            assert!(read(&knob(&cg, "cpu", "", "cpu.max")).starts_with("max"));
        }

        // Invalid cpu: a clear error, nothing changed.
        let err = cg.set_limits(&limits_cpu_set(vec![4095])).expect_err("cpu 4095");
        assert!(err.to_string().contains("cpu 4095 is not available"), "{err}");

        let paths = cg.paths();
        cg.destroy().expect("destroy");
        assert_gone(&paths);
    }

    fn limits_with_percent(cpu: u32) -> Limits {
        limits(
            Some(CpuLimit::Set(vec![cpu])),
            Some(CpuAllowance::Percent(25)),
            Some(128 * MIB),
            None,
            Some(50),
        )
    }

    fn limits_cpu_set(cpus: Vec<u32>) -> Limits {
        limits(Some(CpuLimit::Set(cpus)), None, None, None, None)
    }

    #[test]
    fn cgroup_real_processes_freeze_kill_destroy() {
        let Some(mut t) = RealCgroup::new("procs") else {
            return;
        };
        let cg = t.create(&limits(None, None, None, None, Some(64)), &[], None);
        let v1 = matches!(cg.root.layout(), Layout::V1 { .. });

        let sleeper = t.spawn_sleep();
        let sleeper_pid = t.pid(sleeper);
        cg.add_process(sleeper_pid).expect("add sleep");
        let membership = read(Path::new(&format!("/proc/{sleeper_pid}/cgroup")));
        let want = format!("/{PARENT}/{}", t.name);
        for line in membership.lines() {
            assert!(line.ends_with(&format!(":{want}")), "{line} (all of it: {membership})");
        }

        let busy = t.spawn_sh("read _; i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; exec sleep 30");
        let busy_pid = t.pid(busy);
        cg.add_process(busy_pid).expect("add busy");
        t.go(busy);
        let pids = cg.pids().expect("pids");
        assert!(pids.contains(&sleeper_pid) && pids.contains(&busy_pid), "{pids:?}");

        let start = Instant::now();
        let stats = loop {
            let stats = cg.stats().expect("stats");
            // Memory is charged to the cgroup from the first page faulted after joining (the
            // `exec sleep` at the end of the loop), not before.
            if (stats.cpu_ns >= 10_000_000 && stats.memory_bytes > 0) || start.elapsed() > Duration::from_secs(20) {
                break stats;
            }
            thread::sleep(Duration::from_millis(50));
        };
        assert!(stats.cpu_ns >= 10_000_000, "{stats:?}");
        assert!(stats.processes >= 2, "{stats:?}");
        assert!(stats.memory_bytes > 0, "{stats:?}");
        assert!(stats.memory_peak_bytes >= stats.memory_bytes || !v1, "{stats:?}");

        assert!(!cg.is_frozen().expect("is_frozen"));
        cg.freeze().expect("freeze");
        assert!(cg.is_frozen().expect("is_frozen"));
        let state = proc_state(sleeper_pid);
        if v1 {
            // The v1 freezer parks tasks in the refrigerator, reported as D.
            assert!(state.starts_with('D'), "frozen sleep is {state}");
        }
        let cpu_frozen = cg.stats().expect("stats").cpu_ns;
        thread::sleep(Duration::from_millis(100));
        assert_eq!(
            cg.stats().expect("stats").cpu_ns,
            cpu_frozen,
            "cpu time moves while frozen"
        );
        cg.thaw().expect("thaw");
        assert!(!cg.is_frozen().expect("is_frozen"));
        let state = proc_state(sleeper_pid);
        assert!(state.starts_with('S'), "thawed sleep is {state}");

        cg.kill_all().expect("kill_all");
        for child in [sleeper, busy] {
            let status = t.wait(child, Duration::from_secs(5));
            assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
        }
        assert_eq!(cg.pids().expect("pids"), Vec::<i32>::new());

        let paths = cg.paths();
        cg.destroy().expect("destroy");
        assert_gone(&paths);
        t.handle().destroy().expect("destroy is idempotent");
        assert!(matches!(
            Cgroup::open(&t.root, &t.name),
            Err(CgroupError::Missing { .. })
        ));
    }

    /// A process in a sub-cgroup (as systemd inside would make) of every hierarchy: found by
    /// pids(), killed by the freeze/signal/thaw loop, and destroy removes the subtree.
    #[test]
    fn cgroup_real_nested_subtree_kill_loop() {
        let Some(mut t) = RealCgroup::new("nested") else {
            return;
        };
        let cg = t.create(&Limits::default(), &[], None);
        let child = t.spawn_sleep();
        let pid = t.pid(child);
        for dir in cg.paths() {
            let sub = dir.join("init.scope");
            fs::create_dir(&sub).expect("sub-cgroup");
            for file in ["cpuset.cpus", "cpuset.mems"] {
                if dir.join(file).exists() && matches!(cg.root.layout(), Layout::V1 { .. }) {
                    put(&sub.join(file), &read(&dir.join(file)));
                }
            }
            put(&sub.join("cgroup.procs"), &pid.to_string());
            assert_eq!(read(&dir.join("cgroup.procs")), "", "{}", dir.display());
        }
        assert_eq!(cg.pids().expect("pids"), [pid]);
        cg.kill_loop(Instant::now()).expect("kill loop");
        assert_eq!(t.wait(child, Duration::from_secs(5)).signal(), Some(libc::SIGKILL));
        assert!(!cg.is_frozen().expect("thawed after the loop"));
        let paths = cg.paths();
        cg.destroy().expect("destroy");
        assert_gone(&paths);
    }

    #[test]
    fn cgroup_real_failed_create_cleans_up() {
        let Some(t) = RealCgroup::new("fail") else {
            return;
        };
        let err = Cgroup::create(&t.root, &t.name, &limits_cpu_set(vec![4095]), &[], None).expect_err("bad cpu");
        assert!(matches!(err, CgroupError::CpuUnavailable { cpu: 4095, .. }), "{err}");
        assert_gone(&t.handle().paths());
        let bad_device = [DeviceRule::new('c', Some(1), Some(3), "rwx")];
        let err = Cgroup::create(&t.root, &t.name, &Limits::default(), &bad_device, None).expect_err("bad rule");
        assert!(matches!(err, CgroupError::InvalidDevice { .. }), "{err}");
        assert_gone(&t.handle().paths());

        let cg = t.create(&Limits::default(), &[], None);
        let err = Cgroup::create(&t.root, &t.name, &Limits::default(), &[], None).expect_err("exists");
        assert!(matches!(err, CgroupError::Exists { .. }), "{err}");
        assert!(cg.paths().iter().all(|p| p.is_dir()), "the existing cgroup was damaged");
        assert_eq!(
            Cgroup::open(&t.root, &t.name).expect("open").pids().expect("pids"),
            Vec::<i32>::new()
        );
    }

    #[test]
    fn cgroup_real_oom_kills_only_the_container() {
        let Some(mut t) = RealCgroup::new("oom") else {
            return;
        };
        let cg = t.create(&limits(None, None, Some(32 * MIB), Some(false), None), &[], None);
        let hog = t.spawn_sh("read _; exec dd if=/dev/zero of=/dev/null bs=200M count=1");
        cg.add_process(t.pid(hog)).expect("add");
        t.go(hog);
        let status = t.wait(hog, Duration::from_secs(60));
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "dd was not OOM-killed: {status:?}"
        );
        let (file, key) = match cg.root.layout() {
            Layout::V1 { .. } => (knob(&cg, "memory", "memory.oom_control", ""), "oom_kill"),
            Layout::V2 { .. } => (knob(&cg, "memory", "", "memory.events"), "oom_kill"),
        };
        let kills = fsutil::keyed_u64(&file, key)
            .expect("oom counter")
            .expect("oom_kill line");
        assert!(kills >= 1, "{file:?}: {kills}");
        let stats = cg.stats().expect("stats");
        assert!(stats.memory_peak_bytes <= 32 * MIB, "{stats:?}");
    }

    // --- the BPF device filter, on a real cgroup2 directory ---

    /// A bare cgroup2 directory for the BPF tests, removed (after killing what is in it) on drop.
    struct Cgroup2Dir(PathBuf);

    impl Cgroup2Dir {
        fn new() -> Option<Cgroup2Dir> {
            let root = real_root()?;
            let base = match root.layout() {
                Layout::V1 {
                    unified: Some(unified), ..
                } => unified.clone(),
                Layout::V2 { root } => root.clone(),
                Layout::V1 { unified: None, .. } => {
                    eprintln!("skipping: no cgroup2 hierarchy");
                    return None;
                }
            };
            let dir = base.join(unique("corral-test-bpf"));
            fs::create_dir(&dir).expect("cgroup2 dir");
            Some(Cgroup2Dir(dir))
        }
    }

    impl Drop for Cgroup2Dir {
        fn drop(&mut self) {
            let _ = fs::write(self.0.join("cgroup.kill"), "1");
            let _ = remove_tree(&self.0, Instant::now() + Duration::from_secs(5));
        }
    }

    const PROBE: &str = r#"read _
for f in "$@"; do
  if true <"$f"; then echo "read $f ok"; else echo "read $f denied"; fi
  if true >"$f"; then echo "write $f ok"; else echo "write $f denied"; fi
done
if mknod "$NODES/blk" b 7 0; then echo "mknod b ok"; else echo "mknod b denied"; fi
"#;

    /// Runs the probe inside `cgroup2_dir`: for each device, whether it could be opened for
    /// reading and for writing, and whether a block node could be made.
    fn probe(cgroup2_dir: &Path, devices: &[&str]) -> BTreeMap<String, String> {
        let nodes = std::env::temp_dir().join(unique("corral-cgroup-nodes"));
        fs::create_dir_all(&nodes).expect("nodes dir");
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(PROBE)
            .arg("probe")
            .args(devices)
            .env("NODES", &nodes)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn probe");
        let moved = fs::write(cgroup2_dir.join("cgroup.procs"), child.id().to_string());
        let go = child.stdin.take().expect("stdin").write_all(b"go\n");
        let status = wait_timeout(&mut child, Duration::from_secs(10));
        let _ = fs::remove_dir_all(&nodes);
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        moved.expect("move the probe into the cgroup");
        go.expect("start the probe");
        assert!(status.expect("probe finished").success());
        let mut out = String::new();
        child
            .stdout
            .take()
            .expect("stdout")
            .read_to_string(&mut out)
            .expect("probe output");
        out.lines()
            .filter_map(|l| l.rsplit_once(' '))
            .map(|(what, verdict)| (what.to_string(), verdict.to_string()))
            .collect()
    }

    fn existing(paths: &[&'static str]) -> Vec<&'static str> {
        paths.iter().copied().filter(|p| Path::new(p).exists()).collect()
    }

    #[test]
    fn cgroup_real_bpf_default_device_filter() {
        let Some(open) = Cgroup2Dir::new() else {
            return;
        };
        let Some(filtered) = Cgroup2Dir::new() else {
            return;
        };
        let devices = existing(&["/dev/null", "/dev/zero", "/dev/loop-control", "/dev/loop0", "/dev/kmsg"]);
        assert!(
            devices.contains(&"/dev/loop-control"),
            "this test needs /dev/loop-control"
        );

        // Without a filter the probe can open everything: it can tell "ok" from "denied".
        let control = probe(&open.0, &devices);
        for dev in &devices {
            assert_eq!(
                control.get(&format!("read {dev}")).map(String::as_str),
                Some("ok"),
                "{control:?}"
            );
        }
        assert_eq!(control.get("mknod b").map(String::as_str), Some("ok"), "{control:?}");

        attach_device_filter(&filtered.0, &default_device_rules()).expect("attach the device filter");
        let got = probe(&filtered.0, &devices);
        for dev in &devices {
            let want = if matches!(*dev, "/dev/null" | "/dev/zero") {
                "ok"
            } else {
                "denied"
            };
            for op in ["read", "write"] {
                assert_eq!(
                    got.get(&format!("{op} {dev}")).map(String::as_str),
                    Some(want),
                    "{op} {dev}: {got:?}"
                );
            }
        }
        assert_eq!(
            got.get("mknod b").map(String::as_str),
            Some("ok"),
            "b *:* m allows mknod: {got:?}"
        );
    }

    #[test]
    fn cgroup_real_bpf_access_bits() {
        let Some(dir) = Cgroup2Dir::new() else { return };
        let rules = [
            DeviceRule::new('c', Some(1), Some(3), "r"),
            DeviceRule::new('c', Some(1), Some(5), "rw"),
        ];
        attach_device_filter(&dir.0, &rules).expect("attach");
        let got = probe(&dir.0, &["/dev/null", "/dev/zero", "/dev/full"]);
        let verdict = |k: &str| got.get(k).map(String::as_str);
        assert_eq!(verdict("read /dev/null"), Some("ok"), "{got:?}");
        assert_eq!(verdict("write /dev/null"), Some("denied"), "{got:?}");
        assert_eq!(verdict("read /dev/zero"), Some("ok"), "{got:?}");
        assert_eq!(verdict("write /dev/zero"), Some("ok"), "{got:?}");
        assert_eq!(verdict("read /dev/full"), Some("denied"), "{got:?}");
        assert_eq!(verdict("mknod b"), Some("denied"), "{got:?}");
    }
}
