//! Checkpoint and restore of a running container with CRIU: the runtime side of
//! `stop --stateful`, stateful snapshots and live moves.
//!
//! ```text
//! dump (the caller's process):  criu dump --tree <init> ... ─> image dir + corral-checkpoint.json
//!        the container stops (criu kills the tree; the monitor sees init die and tears down)
//!        or keeps running (--leave-running: a stateful snapshot)
//! restore: the caller writes <run_dir>/restore.json and spawns a monitor as for a start;
//!   monitor M: cgroup (as at start), idmapped rootfs at <run_dir>/rootfs, disk binds
//!      at <run_dir>/criu-ext/<i>, a fresh console pty ─ criu restore --restore-sibling ─>
//!   criu: namespaces (user, mnt, pid, uts, ipc, cgroup, an empty net) ─ action script
//!      "setup-namespaces" ─> M: the caller's HostSetup on init's pid (NICs), lo up ─ "ok" ─>
//!   criu: mounts, files, memory, seccomp ─ resume; exits. Init is M's child: M serves it as a
//!      started container (Ready line, monitor.sock, state/stop/exec/freeze).
//! ```
//!
//! **Why the `criu` command line and not `criu swrk` (rust-criu 0.6).** rust-criu has no
//! pre-dump, no feature check and does not return the restored pid; the command line has all
//! three (`criu check --feature`, `--pidfile`), keeps a log file the user can be pointed at
//! (`info --show-log`), needs no protobuf dependency, and the one thing RPC adds, a callback
//! before the tasks resume, is an action script here: a two-line shell script that hands
//! init's pid to the monitor through a FIFO and waits for its answer.
//!
//! **The hard parts, and what was done about each** (CRIU 4.1.1, kernel 6.18, cgroup v1 hybrid):
//! - *User namespace*: CRIU dumps the uid/gid maps and recreates the namespace on restore.
//! - *Idmapped rootfs* (MOUNT_ATTR_IDMAP): CRIU treats the container's root mount as "the root"
//!   and takes it from `--root` on restore, so it never has to recreate the idmap. The restoring
//!   monitor makes the idmapped mount before CRIU runs, when the container's user namespace does
//!   not exist yet: through a throwaway user namespace with the same maps. An idmapped mount only
//!   uses its namespace's mapping, so ownership is the same as through the real one.
//! - *Monitor binds* (disk devices, idmapped or not): dumped as external mounts
//!   (`--external mnt[<target>]:corral-bind-<i>`); on restore the monitor makes each again
//!   exactly as at start (open_tree, idmap through the throwaway namespace, read-only), attaches
//!   it under `<run_dir>/criu-ext/` in its private mount namespace, shared (the dumped copies
//!   are slaves of the monitor's mounts, and criu makes each restored one a slave of its
//!   source), and maps the key there; made private again before they are unmounted, so that
//!   the unmount does not propagate to the restored copies. (Those are no longer locked inside
//!   the container, and cannot be hot-unplugged: CRIU mounts them from within the container's
//!   namespaces.) Hot-plugged binds are refused at dump (unplug them first), and so is a
//!   container whose disks from start were unplugged.
//! - *Bound host nodes (/dev/null, ...), masked /proc files, lxcfs*: FUSE cannot be dumped, and
//!   none of these belong to the container: `--external mnt[]` lets CRIU find each source in its
//!   own mount namespace and record it as external; on restore it binds the same host path again
//!   (lxcfs must be running, as for a start).
//! - *Console*: the slave of a pty on the host's devpts is the container's /dev/console (a bind)
//!   and init's controlling terminal. It is an external tty (`--external tty[rdev:dev]`); on
//!   restore the monitor opens a new pty, hands its slave to CRIU with `--inherit-fd`, and maps
//!   the /dev/console bind onto the new slave. Console output before the dump stays in the old
//!   monitor's log.
//! - *Network*: `--empty-ns net`: the namespace's contents are not dumped (NICs are the
//!   caller's: veths are recreated on restore by the same [`start::HostSetup`] hook as at start,
//!   between namespace creation and resume; `lo` is brought up here). Addresses inside are those
//!   the NIC plan or the guest's DHCP client set again. `--tcp-established` is optional; without
//!   it a dump fails while TCP connections are open; with it (the daemon always asks, as LXC
//!   does) they are dumped in repair mode and restored after the hook has put the addresses
//!   back, since each socket is bound again to its address. Network locking is skipped
//!   (`--network-lock skip`): the container is frozen, a stopping dump closes the sockets in
//!   repair mode (nothing is sent to the peer), and nothing routes to an empty namespace.
//! - *cgroups v1 hybrid*: `--manage-cgroups` (soft) with `--freeze-cgroup` on the v1 freezer;
//!   on restore the monitor creates the cgroup with the spec's limits and delegation first, as
//!   at start, and `--cgroup-root` puts the tasks there (also under another cgroup name).
//!   `--cgroup-root` is given at dump too, naming the container's cgroup: criu then records
//!   its whole tree, where by default it starts from init's cgroup (systemd's `init.scope`)
//!   and knows only the cgroups with tasks; systemd's inotify watches on the `cgroup.events`
//!   of empty slices and units then failed the restore ("fsnotify: Unable to open
//!   /sys/fs/cgroup/system.slice/.../cgroup.events"). criu recreates the delegated subtree as
//!   root, restoring each directory's owner but not its files' owners: before the tasks resume,
//!   the files of every restored cgroup the container owns are given back to it
//!   ([`hand_back_cgroups`]), as when systemd made them.
//! - *inotify watches* (systemd watches each unit's `cgroup.events` and /etc/localtime, dbus its
//!   configuration directories): criu records each watched inode by file handle and, when it
//!   can, by path: it opens the handle and keeps the path the kernel shows for it if that path
//!   leads back to the same inode. When it does not, the watch is dumped with the handle alone
//!   and the restore opens that handle, which works only on the same filesystem with the same
//!   inode still there: never on another host, nor for a cgroup (made again on restore). Two
//!   cases fail that check: a watch on a symlink (systemd's on /etc/localtime: criu checks the
//!   path following the link, which leads to another inode), and any watched file whose dentry
//!   the kernel has reclaimed under memory pressure (the watch pins the inode, not the dentry):
//!   the handle then opens as a disconnected dentry whose path reads `/`. A live move under load
//!   failed so on the target ("fsnotify: Unable to open (null)": a unit's `cgroup.events`). So
//!   dumps pass [`WATCH_PATH_ARGS`]: criu then finds the path by inode number. A symlink's watch
//!   is restored on the file the link points to (criu opens the path following it): systemd
//!   then misses a later change of the time zone until it re-executes.
//! - *Seccomp*: CRIU dumps and reinstalls the filters (the deny list). A filter that sends
//!   syscalls to a listener (`security.syscalls.intercept.*`) cannot have its listener
//!   restored: such containers are refused at dump.
//! - *Pre-dump*: needs soft-dirty tracking, which this kernel lacks: asked for, it fails with
//!   [`CheckpointError::NoSoftDirty`] before anything is touched.
//! - *Post-copy (lazy pages)*: [`dump_lazy`] writes the images without the memory and criu
//!   serves the pages on a socket the caller carries (`--ps-socket`: no listener anywhere);
//!   [`serve_lazy_pages`] runs `criu lazy-pages` on the target, and a restore of images marked
//!   lazy adds `--lazy-pages`. CRIU opens the userfaultfd inside the restored tasks, i.e. in the
//!   container's user namespace, where the kernel refuses one that handles kernel-mode faults
//!   unless `vm.unprivileged_userfaultfd=1` (0 here): only containers without a user namespace
//!   of their own (privileged) can use it on this host; [`lazy_pages_blocker`] says which
//!   check fails. A lazy dump whose page stream ends normally kills the container, so a
//!   failed move makes the stream fail instead ([`PAGE_STREAM_ABORT`]).
//!
//! - *Sockets on Linux >= 6.16*: the kernel answers EOPNOTSUPP to `SO_PASSCRED`/`SO_PASSSEC`
//!   on anything but unix and netlink sockets, and stock CRIU 4.1.1 fails any dump with a TCP,
//!   UDP or packet socket ("Can't get 1:16 opt"; systemd-networkd's DHCP client, any server).
//!   scripts/install-deps.sh builds CRIU with a small patch that records such options as absent.
//! - *systemd (Debian 12)*: dumps and restores (stopping or left running) with its services,
//!   their memory and its cgroup tree, given one guest setting. CRIU recreates nested mount and
//!   network namespaces only (criu/namespaces.c, `CLONE_SUBNS`; upstream issue #1430 is still
//!   open), and systemd gives systemd-logind (and -localed, -timedated when activated) a UTS
//!   namespace of its own for `ProtectHostname=yes`. A container with a process in a nested
//!   UTS, IPC, user, PID, time or cgroup namespace is refused before anything is frozen, naming
//!   the process. The guest needs `ProtectHostname=no` for its services, e.g. a drop-in
//!   `/etc/systemd/system/service.d/corral-checkpoint.conf` (or in /run, then `systemctl
//!   daemon-reload` and a restart of systemd-logind). The trade-off: those services may then
//!   change the container's own hostname (never the host's: the container has its own UTS
//!   namespace), which systemd's sandboxing would otherwise forbid them.
//!
//! Exec sessions are outside init's tree (their parent is the monitor's exec helper), so they
//! are not in the checkpoint: a stopping dump ends them with the container (their clients see it
//! stop), and a restored container has none.

use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::cgroup::{self, Cgroup, CgroupRoot};
use crate::client::{self, Client, ClientError};
use crate::proto::Status;
use crate::spec::{ContainerSpec, MountKind};
use crate::start::{self, StartError, Started};
use crate::sys;

/// The checkpoint's own description, in the image directory beside CRIU's images.
pub const METADATA: &str = "corral-checkpoint.json";
/// CRIU's logs, kept in the image directory.
pub const DUMP_LOG: &str = "dump.log";
pub const RESTORE_LOG: &str = "restore.log";
pub const LAZY_LOG: &str = "lazy-pages.log";
/// In a run directory: tells the monitor to restore instead of starting.
pub const RESTORE_REQUEST: &str = "restore.json";
/// CRIU's external mount key of the /dev/console bind.
const CONSOLE_KEY: &str = "corral-console";
/// Version of [`Metadata`].
const METADATA_VERSION: u32 = 1;
/// The CRIU this runtime was written against (scripts/install-deps.sh builds it).
const DEFAULT_CRIU: &str = "/usr/local/sbin/criu";
/// How long a restore may take, hook included.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stopped container's monitor may take to tear down after the dump.
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(15);
/// criu's RUNDIR as scripts/install-deps.sh builds it: where criu keeps its kernel-feature cache
/// (`criu.kdat`), which it writes only on a tmpfs. See [`kdat`].
const KDAT_DIR: &str = "/usr/local/lib/corral/criu-run";
const KDAT_FILE: &str = "criu.kdat";
/// In a run directory: the cache handed to (and back from) a restoring monitor.
const KDAT_SEED: &str = "criu.kdat";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("criu is not installed at {0} (scripts/install-deps.sh builds CRIU 4.1.1; CORRAL_CRIU names another)")]
    NoCriu(PathBuf),
    #[error("cannot run {criu}: {source}")]
    Spawn { criu: PathBuf, source: io::Error },
    #[error("criu {action} failed: {errors} (full log: {})", log.display())]
    Criu {
        action: &'static str,
        errors: String,
        log: PathBuf,
    },
    #[error("pre-dump is impossible on this host: the kernel has no soft-dirty memory tracking (criu check --feature mem_dirty_track); checkpoint in one pass")]
    NoSoftDirty,
    #[error("container {0} is not running")]
    NotRunning(String),
    #[error("container {0} is already running")]
    AlreadyRunning(String),
    #[error("cannot checkpoint {name}: {reason}")]
    Refused { name: String, reason: String },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{} is not a usable checkpoint: {reason}", path.display())]
    BadImage { path: PathBuf, reason: String },
    #[error("the checkpoint is written, but the container's monitor did not exit within {0:?}")]
    StillRunning(Duration),
    #[error("the restore did not finish within {0:?}; criu was killed")]
    Timeout(Duration),
    #[error("network set-up before resume: {0}")]
    HostSetup(String),
    #[error("{step}: {source}")]
    Sys { step: &'static str, source: io::Error },
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    #[error(transparent)]
    Client(#[from] ClientError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn sys_err(step: &'static str) -> impl FnOnce(io::Error) -> CheckpointError {
    move |source| CheckpointError::Sys { step, source }
}

/// What a checkpoint is, beside CRIU's images: enough to restore it here or on another host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Metadata {
    pub version: u32,
    /// The spec the container ran with.
    pub spec: ContainerSpec,
    /// CRIU's key of the console pty slave, `tty[rdev:dev]` (hex).
    pub console_tty: String,
    /// Host path of that slave at dump time: the source of the /dev/console bind, which CRIU
    /// recorded as an external mount under this key.
    pub console_source: PathBuf,
    /// External mount keys of the monitor binds: (index in `spec.mounts`, key).
    pub binds: Vec<(usize, String)>,
    pub tcp_established: bool,
    /// Post-copy: the memory is not in the images; the restore takes it from a `criu
    /// lazy-pages` daemon ([`serve_lazy_pages`]) fed by the dumping criu ([`dump_lazy`]).
    #[serde(default)]
    pub lazy_pages: bool,
    /// Whether the container was left running.
    pub left_running: bool,
    pub criu_version: String,
    /// Unix time of the dump.
    pub dumped_at: u64,
    /// Host pid of init at dump time (PID 1 inside either way).
    pub init_pid: i32,
}

/// How to checkpoint.
#[derive(Debug, Clone, Default)]
pub struct DumpOptions {
    /// Keep the container running (a stateful snapshot) instead of stopping it.
    pub leave_running: bool,
    /// Checkpoint established TCP connections (`--tcp-established`).
    pub tcp_established: bool,
    /// Copy memory in a first pass while the container runs (needs soft-dirty tracking).
    pub pre_dump: bool,
}

/// What a dump did.
#[derive(Debug, Clone)]
pub struct DumpReport {
    pub dir: PathBuf,
    /// Time criu took (the container is frozen meanwhile).
    pub criu_time: Duration,
    pub log: PathBuf,
}

/// In a run directory: written by [`restore`], read once by the monitor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestoreRequest {
    pub image_dir: PathBuf,
}

/// criu's kernel-feature cache, kept between runs without a tmpfs on the host.
///
/// Every criu run starts by probing the kernel (kerndat: a throwaway network namespace, vDSO,
/// pagemap, ...: 30-60 ms here) unless `<RUNDIR>/criu.kdat` holds the result of an earlier
/// probe, and criu writes that file only on a tmpfs, so that it goes with a reboot (the kernel
/// may change). /run is not a tmpfs on every host. So criu is built with a RUNDIR of its own
/// ([`KDAT_DIR`], an empty directory), and each run here gets a private tmpfs there: for a dump,
/// in a private mount namespace made for criu alone (before its exec); for a restore, in the
/// restoring monitor's own private mount namespace. The cache itself is a few hundred bytes
/// kept in this process's memory (the daemon's lifetime, so never across a reboot) and written
/// into each fresh tmpfs before criu runs. The first probe's result is captured by a `criu
/// check` run in such a namespace ([`warm_up`]), or handed back by a restoring monitor through
/// its run directory. criu checks the file's magic numbers itself (its build) and probes again
/// if they do not match; without [`KDAT_DIR`] (another criu), nothing of this happens.
mod kdat {
    use std::ffi::CString;
    use std::fs;
    use std::path::Path;
    use std::process::{Command, Stdio};
    use std::sync::Mutex;

    use nix::fcntl::OFlag;
    use nix::mount::MsFlags;
    use nix::sys::stat::Mode;

    use super::{KDAT_DIR, KDAT_FILE};

    static CACHE: Mutex<Option<Vec<u8>>> = Mutex::new(None);
    static WARMING: Mutex<bool> = Mutex::new(false);
    /// criu's `struct kerndat_s` is a few hundred bytes; anything else is not a cache.
    const MAX_SIZE: usize = 64 * 1024;
    const TMPFS_OPTIONS: &str = "size=256k,mode=0700";

    /// Whether criu's RUNDIR is ours (an installer-built criu).
    pub(super) fn supported() -> bool {
        fs::symlink_metadata(KDAT_DIR).is_ok_and(|m| m.is_dir())
    }

    pub(super) fn cached() -> Option<Vec<u8>> {
        CACHE.lock().ok()?.clone()
    }

    pub(super) fn remember(bytes: Vec<u8>) {
        if bytes.is_empty() || bytes.len() > MAX_SIZE {
            return;
        }
        if let Ok(mut c) = CACHE.lock() {
            if c.is_none() {
                tracing::debug!(bytes = bytes.len(), "criu's kernel-feature cache kept");
                *c = Some(bytes);
            }
        }
    }

    /// Runs `criu check` once in a private mount namespace with a tmpfs on [`KDAT_DIR`] and
    /// keeps the cache it writes there. Blocking (about as long as a probe); a no-op when a
    /// cache is kept already or another thread is at it.
    pub(super) fn fill(criu: &Path) {
        if !supported() || cached().is_some() {
            return;
        }
        {
            let Ok(mut w) = WARMING.lock() else { return };
            if *w {
                return;
            }
            *w = true;
        }
        let script = format!(
            "mount -t tmpfs -o nosuid,nodev,noexec,{TMPFS_OPTIONS} corral-criu \"$1\" || exit 1; \"$2\" check >/dev/null 2>&1; cat \"$1/{KDAT_FILE}\""
        );
        let out = Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "slave",
                "--",
                "sh",
                "-c",
                &script,
                "sh",
                KDAT_DIR,
            ])
            .arg(criu)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output();
        match out {
            Ok(o) if o.status.success() && !o.stdout.is_empty() => remember(o.stdout),
            Ok(o) => tracing::debug!(status = ?o.status, "criu check wrote no kernel-feature cache"),
            Err(e) => tracing::debug!(error = %e, "cannot run unshare for criu's kernel-feature cache"),
        }
        if let Ok(mut w) = WARMING.lock() {
            *w = false;
        }
    }

    /// Makes `cmd` (criu) run in a private mount namespace with a tmpfs on [`KDAT_DIR`] holding
    /// the kept cache, if any. Best effort: if anything fails criu runs as before and probes.
    pub(super) fn prepare_command(cmd: &mut Command) {
        use std::os::unix::process::CommandExt;
        if !supported() {
            return;
        }
        let seed = cached();
        let (Ok(dir), Ok(file), Ok(options)) = (
            CString::new(KDAT_DIR),
            CString::new(format!("{KDAT_DIR}/{KDAT_FILE}")),
            CString::new(TMPFS_OPTIONS),
        ) else {
            return;
        };
        // SAFETY: the closure runs in the forked child before exec and makes only syscalls
        // (unshare, mount, open, write, close) on buffers prepared before the fork: it allocates
        // nothing and takes no lock, so it is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                if nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).is_err() {
                    return Ok(());
                }
                // Nothing mounted here may reach the host.
                let none: Option<&str> = None;
                if nix::mount::mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_SLAVE, none).is_err() {
                    return Ok(());
                }
                let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
                if nix::mount::mount(
                    Some("corral-criu"),
                    dir.as_c_str(),
                    Some("tmpfs"),
                    flags,
                    Some(options.as_c_str()),
                )
                .is_err()
                {
                    return Ok(());
                }
                if let Some(seed) = &seed {
                    if let Ok(fd) = nix::fcntl::open(
                        file.as_c_str(),
                        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC,
                        Mode::from_bits_truncate(0o600),
                    ) {
                        let _ = nix::unistd::write(&fd, seed);
                    }
                }
                Ok(())
            });
        }
    }

    /// For the restoring monitor (single-threaded, in its private mount namespace): a tmpfs on
    /// [`KDAT_DIR`] with the cache the daemon handed over in `seed` (a file), if any. Returns
    /// whether the tmpfs is there.
    pub(super) fn mount_for_restore(seed: &Path) -> bool {
        if !supported() {
            return false;
        }
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        if let Err(e) = nix::mount::mount(Some("corral-criu"), KDAT_DIR, Some("tmpfs"), flags, Some(TMPFS_OPTIONS)) {
            tracing::debug!(error = %e, "no tmpfs for criu's kernel-feature cache");
            return false;
        }
        if let Ok(bytes) = fs::read(seed) {
            if !bytes.is_empty() && bytes.len() <= MAX_SIZE {
                let _ = fs::write(Path::new(KDAT_DIR).join(KDAT_FILE), bytes);
            }
        }
        true
    }

    /// After the restore: hands the cache criu wrote back in `seed` when none was handed over,
    /// and unmounts the tmpfs.
    pub(super) fn unmount_after_restore(seed: &Path) {
        let written = Path::new(KDAT_DIR).join(KDAT_FILE);
        if !seed.exists() {
            if let Ok(bytes) = fs::read(&written) {
                let _ = fs::write(seed, bytes);
            }
        }
        let _ = nix::mount::umount2(KDAT_DIR, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Gets criu's kernel-feature cache ready (see [`kdat`]) so that the next dump or restore does
/// not probe the kernel: blocking, about as long as one probe the first time, then free. Call
/// it from a background thread ahead of a checkpoint or restore (a live migration's start, a
/// daemon's start). Does nothing without criu.
pub fn warm_up() {
    if let Ok(criu) = criu_binary() {
        kdat::fill(&criu);
    }
}

/// The criu binary: `CORRAL_CRIU`, else the one install-deps.sh builds.
pub fn criu_binary() -> Result<PathBuf, CheckpointError> {
    let path = std::env::var_os("CORRAL_CRIU")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CRIU));
    if fs::metadata(&path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0) {
        Ok(path)
    } else {
        Err(CheckpointError::NoCriu(path))
    }
}

/// `criu --version`'s version number (asked once per binary and process).
pub fn criu_version(criu: &Path) -> Result<String, CheckpointError> {
    static KNOWN: std::sync::Mutex<Vec<(PathBuf, String)>> = std::sync::Mutex::new(Vec::new());
    if let Some((_, v)) = KNOWN
        .lock()
        .ok()
        .and_then(|k| k.iter().find(|(p, _)| p == criu).cloned())
    {
        return Ok(v);
    }
    let version = ask_criu_version(criu)?;
    if let Ok(mut k) = KNOWN.lock() {
        k.push((criu.to_path_buf(), version.clone()));
    }
    Ok(version)
}

fn ask_criu_version(criu: &Path) -> Result<String, CheckpointError> {
    let out = Command::new(criu)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|source| CheckpointError::Spawn {
            criu: criu.to_path_buf(),
            source,
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("Version:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_default())
}

/// Whether the kernel tracks soft-dirty pages, which pre-dump needs.
pub fn soft_dirty_supported(criu: &Path) -> Result<bool, CheckpointError> {
    let status = Command::new(criu)
        .args(["check", "--feature", "mem_dirty_track"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|source| CheckpointError::Spawn {
            criu: criu.to_path_buf(),
            source,
        })?;
    Ok(status.success())
}

/// What stands in the way of post-copy (CRIU's lazy pages: the container restored before its
/// memory has arrived, its pages fetched on demand) for a container with (`user_namespace`) or
/// without a user namespace of its own, or `None` when nothing does. Each reason names the
/// check that failed:
/// - `criu check --feature uffd-noncoop`: the kernel's userfaultfd with the events CRIU needs
///   for a tree that forks and maps (not built, or too old);
/// - `fs.pipe-max-size`: the dump keeps the pages in pipes of 4 MiB;
/// - `vm.unprivileged_userfaultfd`: CRIU opens the userfaultfd from inside the restored tasks,
///   i.e. inside the container's user namespace, where userfaultfd(2) for faults taken in the
///   kernel (a read(2) into a page not yet there) needs that sysctl at 1 (CAP_SYS_PTRACE of
///   the container's root does not count: the kernel asks for it in the initial namespace).
pub fn lazy_pages_blocker(criu: &Path, user_namespace: bool) -> Option<String> {
    let uffd = Command::new(criu)
        .args(["check", "--feature", "uffd-noncoop"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match uffd {
        Ok(s) if s.success() => {}
        Ok(_) => {
            return Some(
                "`criu check --feature uffd-noncoop` failed: this kernel's userfaultfd lacks what CRIU needs".into(),
            )
        }
        Err(e) => return Some(format!("cannot run {}: {e}", criu.display())),
    }
    let sysctl = |name: &str| -> Option<u64> {
        fs::read_to_string(format!("/proc/sys/{}", name.replace('.', "/")))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    const PIPE: u64 = 4 << 20;
    match sysctl("fs.pipe-max-size") {
        Some(n) if n >= PIPE => {}
        n => {
            return Some(format!(
                "fs.pipe-max-size is {} (CRIU's lazy dump needs at least {PIPE}: `sysctl fs.pipe-max-size={PIPE}`)",
                n.map(|n| n.to_string()).unwrap_or_else(|| "unreadable".into())
            ))
        }
    }
    if user_namespace && sysctl("vm.unprivileged_userfaultfd") != Some(1) {
        return Some(
            "vm.unprivileged_userfaultfd is 0, and CRIU opens the userfaultfd inside the container's user \
             namespace, where the kernel then refuses it (EPERM); `sysctl vm.unprivileged_userfaultfd=1` \
             allows it, for every user of the host"
                .into(),
        );
    }
    None
}

/// The last meaningful `Error (...)` lines of a CRIU log, without timestamps and duplicates.
pub fn log_errors(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let mut lines: Vec<String> = Vec::new();
    for line in text.lines() {
        let Some(at) = line.find("Error (") else { continue };
        let msg = line[at..].trim().to_string();
        // Noise: criu tries to raise its own RLIMIT_NOFILE first and carries on without.
        if msg.contains("RLIMIT_NOFILE") {
            continue;
        }
        lines.retain(|l| l != &msg);
        lines.push(msg);
    }
    // The summary lines say only that it failed; the cause comes before them.
    let meaningful: Vec<&String> = lines
        .iter()
        .filter(|l| !l.contains("Dumping FAILED") && !l.contains("Restoring FAILED"))
        .collect();
    let pick: Vec<&String> = if meaningful.is_empty() {
        lines.iter().collect()
    } else {
        meaningful
    };
    let tail: Vec<&str> = pick.iter().rev().take(4).rev().map(|s| s.as_str()).collect();
    if tail.is_empty() {
        "no error in criu's log".to_string()
    } else {
        tail.join("; ")
    }
}

/// Reads a checkpoint's metadata.
pub fn read_metadata(image_dir: &Path) -> Result<Metadata, CheckpointError> {
    let path = image_dir.join(METADATA);
    let raw = fs::read(&path).map_err(|e| CheckpointError::BadImage {
        path: image_dir.to_path_buf(),
        reason: format!("cannot read {METADATA}: {e}"),
    })?;
    let meta: Metadata = serde_json::from_slice(&raw).map_err(|e| CheckpointError::BadImage {
        path: image_dir.to_path_buf(),
        reason: format!("invalid {METADATA}: {e}"),
    })?;
    if meta.version != METADATA_VERSION {
        return Err(CheckpointError::BadImage {
            path: image_dir.to_path_buf(),
            reason: format!(
                "metadata version {} (this runtime reads {METADATA_VERSION})",
                meta.version
            ),
        });
    }
    Ok(meta)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The host devpts node bound on the container's /dev/console, from init's mountinfo, and
/// CRIU's key for it.
fn console_of(init_pid: i32) -> Result<(PathBuf, String), CheckpointError> {
    let path = PathBuf::from(format!("/proc/{init_pid}/mountinfo"));
    let text = fs::read_to_string(&path).map_err(io_err(&path))?;
    let index = text
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.len() > 4 && f[4] == "/dev/console").then(|| f[3].trim_start_matches('/').to_string())
        })
        .ok_or_else(|| CheckpointError::Refused {
            name: format!("init {init_pid}"),
            reason: "no /dev/console mount in the container".into(),
        })?;
    let source = PathBuf::from(format!("/dev/pts/{index}"));
    let meta = fs::metadata(&source).map_err(io_err(&source))?;
    Ok((source, format!("tty[{:x}:{:x}]", meta.rdev(), meta.dev())))
}

/// Every inotify/fanotify watch is dumped with the path of what it watches, never as a bare
/// file handle (see the module's notes, *inotify watches*): `--force-irmap` makes criu look up a
/// path by inode number for each watch whose handle does not give one, in the paths given with
/// `--irmap-scan-path` first (the container's cgroup2 tree, where systemd watches each unit's
/// `cgroup.events`), then in its own list (/etc, /var/log, dbus's directories, ...); a watch
/// found nowhere fails the dump (the container runs on) instead of its restore.
const WATCH_PATH_ARGS: &[&str] = &["--force-irmap", "--irmap-scan-path", "/sys/fs/cgroup"];

/// How many times a dump is tried again after [`watched_inode_went_away`].
const WATCH_GONE_RETRIES: usize = 2;

/// Whether criu failed on an inotify watch whose inode the kernel shows without a file handle:
/// one on a cgroup that systemd was removing at that moment (kernfs encodes no handle for a
/// removed node), which the next moment no longer exists. Such a dump succeeds when tried again.
fn watched_inode_went_away(errors: &str) -> bool {
    errors.contains("parse_fdinfo_pid_s") && errors.contains("[inotify")
}

/// Empties a failed dump's image directory for another try, keeping a pre-dump's `pre`.
fn clear_dump_images(image_dir: &Path) -> Result<(), CheckpointError> {
    for entry in fs::read_dir(image_dir).map_err(io_err(image_dir))? {
        let path = entry.map_err(io_err(image_dir))?.path();
        if path.is_file() {
            fs::remove_file(&path).map_err(io_err(&path))?;
        }
    }
    Ok(())
}

/// Namespaces criu 4.1.1 takes only from the root of the tree (nested mount and network
/// namespaces it recreates; any other nested one fails the dump with "Can't dump nested ...
/// namespace"), with the systemd setting that makes such a namespace for a service.
const ROOT_ONLY_NAMESPACES: &[(&str, &str)] = &[
    (
        "uts",
        " (systemd's ProtectHostname=yes, as systemd-logind, -localed and -timedated have)",
    ),
    ("ipc", " (systemd's PrivateIPC=)"),
    ("user", " (systemd's PrivateUsers=)"),
    ("pid", ""),
    ("time", ""),
    ("cgroup", ""),
];

/// The first process of init's tree (what criu dumps) in a namespace criu cannot dump, as a
/// reason to refuse before anything is frozen, or `None`.
fn nested_namespace(init_pid: i32) -> Option<String> {
    let ns_of = |pid: i32, ns: &str| fs::read_link(format!("/proc/{pid}/ns/{ns}")).ok();
    let roots: Vec<_> = ROOT_ONLY_NAMESPACES.iter().map(|(ns, _)| ns_of(init_pid, ns)).collect();
    let mut queue = vec![init_pid];
    let mut seen = 0usize;
    while let Some(pid) = queue.pop() {
        seen += 1;
        if seen > 1_000_000 {
            break;
        }
        for (i, (ns, why)) in ROOT_ONLY_NAMESPACES.iter().enumerate() {
            let Some(root) = &roots[i] else { continue };
            match ns_of(pid, ns) {
                Some(link) if &link != root => {
                    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                    return Some(format!(
                        "process {pid} ({}) runs in a nested {ns} namespace{why}, which criu 4.1.1 cannot checkpoint (it recreates nested mount and network namespaces only)",
                        comm.trim()
                    ));
                }
                _ => {}
            }
        }
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let children = fs::read_to_string(task.path().join("children")).unwrap_or_default();
            queue.extend(children.split_whitespace().filter_map(|c| c.parse::<i32>().ok()));
        }
    }
    None
}

fn refused(spec: &ContainerSpec, reason: impl Into<String>) -> CheckpointError {
    CheckpointError::Refused {
        name: spec.name.clone(),
        reason: reason.into(),
    }
}

/// Checkpoints the container whose monitor serves `run_dir` into `image_dir` (created; it
/// must be empty). Without `leave_running` the container is gone when this returns. On a
/// failed dump the container keeps running and the error carries CRIU's reason and its log.
pub fn dump(run_dir: &Path, image_dir: &Path, opts: &DumpOptions) -> Result<DumpReport, CheckpointError> {
    match dump_with(run_dir, image_dir, opts, None)? {
        Dumped::Done(report) => Ok(report),
        Dumped::Lazy(lazy) => lazy.finish(),
    }
}

/// Post-copy's dump: as [`dump`] (stopping the container), but the memory stays out of the
/// images. Returns once the images are written and criu serves the pages on `pages`, a
/// connected stream socket whose other end reaches the restoring host's `criu lazy-pages`
/// ([`serve_lazy_pages`]); the container stays frozen meanwhile. Then either
/// [`LazyDump::finish`] once the target runs it (criu exits when every page is served, and
/// the container is gone), or [`LazyDump::abort`] after making the page stream fail (see there).
pub fn dump_lazy(
    run_dir: &Path,
    image_dir: &Path,
    opts: &DumpOptions,
    pages: &OwnedFd,
) -> Result<LazyDump, CheckpointError> {
    match dump_with(run_dir, image_dir, opts, Some(pages))? {
        Dumped::Lazy(lazy) => Ok(lazy),
        Dumped::Done(_) => unreachable!("a lazy dump answers a LazyDump"),
    }
}

enum Dumped {
    Done(DumpReport),
    Lazy(LazyDump),
}

/// A lazy dump's criu, serving the pages (see [`dump_lazy`]).
pub struct LazyDump {
    child: std::process::Child,
    cgroup: Cgroup,
    frozen_here: bool,
    client: Client,
    began: Instant,
    report: DumpReport,
}

impl LazyDump {
    /// Waits for criu to have served every page and stopped the container (`timeout` for the
    /// pages, then the monitor's teardown).
    pub fn finish(mut self) -> Result<DumpReport, CheckpointError> {
        let status = self.child.wait().map_err(sys_err("wait for criu"))?;
        if self.frozen_here {
            let _ = self.cgroup.thaw();
        }
        if !status.success() {
            return Err(CheckpointError::Criu {
                action: "dump",
                errors: log_errors(&self.report.log),
                log: self.report.log.clone(),
            });
        }
        let deadline = Instant::now() + TEARDOWN_TIMEOUT;
        while self.client.is_running() {
            if Instant::now() > deadline {
                return Err(CheckpointError::StillRunning(TEARDOWN_TIMEOUT));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        tracing::info!(dir = %self.report.dir.display(), total = ?self.began.elapsed(), "lazy pages served; checkpoint done");
        Ok(self.report)
    }

    /// After the caller made criu's page stream fail (an unknown command written to it: the
    /// end of a stream is a normal end to criu, which would then stop the container): criu
    /// fails the dump and lets the container run on. Waits for that (killing criu after
    /// `TEARDOWN_TIMEOUT`). Established TCP connections may stay in repair mode: criu unlocks
    /// them only when a dump fails before its page server.
    pub fn abort(mut self) {
        let deadline = Instant::now() + TEARDOWN_TIMEOUT;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        if self.frozen_here {
            let _ = self.cgroup.thaw();
        }
        tracing::warn!(dir = %self.report.dir.display(), "lazy dump abandoned; the container runs on here");
    }
}

/// An unknown page-server command: written on criu's page stream, it fails the lazy dump.
pub const PAGE_STREAM_ABORT: [u8; 24] = [0xff; 24];

/// The target's side of post-copy: `criu lazy-pages` on `image_dir` (a lazy dump's images),
/// taking the pages from `pages` (connected to the dumping criu, see [`dump_lazy`]) as the
/// restored tasks fault on them, and then the rest. Returns once it waits for the restore
/// ([`restore`] of those images connects to it through `lazy-pages.socket` there).
pub fn serve_lazy_pages(image_dir: &Path, pages: &OwnedFd) -> Result<LazyPages, CheckpointError> {
    let criu = criu_binary()?;
    let log = image_dir.join(LAZY_LOG);
    let (ready_r, ready_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| sys_err("pipe")(e.into()))?;
    let args: Vec<String> = vec![
        "--images-dir".into(),
        image_dir.display().to_string(),
        "--log-file".into(),
        LAZY_LOG.into(),
        "-v4".into(),
        "--page-server".into(),
        "--ps-socket".into(),
        pages.as_raw_fd().to_string(),
        "--status-fd".into(),
        ready_w.as_raw_fd().to_string(),
    ];
    let mut cmd = Command::new(&criu);
    cmd.arg("lazy-pages")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    sys::clean_signals_on_exec(&mut cmd);
    sys::keep_fds_on_exec(&mut cmd, vec![pages.as_raw_fd(), ready_w.as_raw_fd()]);
    let mut child = cmd.spawn().map_err(|source| CheckpointError::Spawn {
        criu: criu.clone(),
        source,
    })?;
    drop(ready_w);
    if let Err(e) = wait_ready(ready_r, &mut child, "lazy-pages", &log) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    Ok(LazyPages { child, log })
}

/// The target's `criu lazy-pages` (see [`serve_lazy_pages`]); killed if dropped unwaited.
pub struct LazyPages {
    child: std::process::Child,
    log: PathBuf,
}

impl LazyPages {
    /// Waits until every page has arrived (criu exits).
    pub fn wait(mut self) -> Result<(), CheckpointError> {
        let status = self.child.wait().map_err(sys_err("wait for criu lazy-pages"))?;
        if status.success() {
            Ok(())
        } else {
            Err(CheckpointError::Criu {
                action: "lazy-pages",
                errors: log_errors(&self.log),
                log: self.log.clone(),
            })
        }
    }
}

impl Drop for LazyPages {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits for criu's `--status-fd` byte (it is ready), or its exit (it failed).
fn wait_ready(
    ready: OwnedFd,
    child: &mut std::process::Child,
    action: &'static str,
    log: &Path,
) -> Result<(), CheckpointError> {
    let mut ready = fs::File::from(ready);
    let mut byte = [0u8; 1];
    let got = loop {
        match ready.read(&mut byte) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => break other,
        }
    };
    match got {
        Ok(1) => Ok(()),
        _ => {
            let _ = child.wait();
            Err(CheckpointError::Criu {
                action,
                errors: log_errors(log),
                log: log.to_path_buf(),
            })
        }
    }
}

fn dump_with(
    run_dir: &Path,
    image_dir: &Path,
    opts: &DumpOptions,
    lazy: Option<&OwnedFd>,
) -> Result<Dumped, CheckpointError> {
    let criu = criu_binary()?;
    if lazy.is_some() && opts.leave_running {
        return Err(CheckpointError::BadImage {
            path: image_dir.to_path_buf(),
            reason: "a lazy dump stops the container (--leave-running is not for post-copy)".into(),
        });
    }
    if opts.pre_dump && !soft_dirty_supported(&criu)? {
        return Err(CheckpointError::NoSoftDirty);
    }
    let spec = crate::monitor::read_spec(run_dir).map_err(|e| CheckpointError::BadImage {
        path: run_dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    let client = Client::new(run_dir);
    let state = client
        .state()
        .map_err(|_| CheckpointError::NotRunning(spec.name.clone()))?;
    match state.status {
        Status::Running => {}
        other => return Err(refused(&spec, format!("it is {other:?}").to_lowercase())),
    }
    if !state.hotplugged.is_empty() {
        return Err(refused(
            &spec,
            format!("disks are hot-plugged on {:?}; unplug them first", state.hotplugged),
        ));
    }
    let unplugged: Vec<PathBuf> = spec
        .mounts
        .iter()
        .filter(|m| matches!(m.kind, MountKind::MonitorBind { .. }))
        .map(|m| crate::layout::normalize(&m.target))
        .filter(|t| !state.disks.contains(t))
        .collect();
    if !unplugged.is_empty() {
        return Err(refused(
            &spec,
            format!("the disks it started with on {unplugged:?} were unplugged since; restart it first"),
        ));
    }
    if spec.seccomp.intercept_mknod || spec.seccomp.intercept_setxattr {
        return Err(refused(
            &spec,
            "its seccomp filter sends syscalls to the monitor (security.syscalls.intercept.*), and criu cannot restore the listener",
        ));
    }
    fs::create_dir_all(image_dir).map_err(io_err(image_dir))?;
    if fs::read_dir(image_dir).map_err(io_err(image_dir))?.next().is_some() {
        return Err(CheckpointError::BadImage {
            path: image_dir.to_path_buf(),
            reason: "the directory is not empty".into(),
        });
    }
    if let Some(reason) = nested_namespace(state.init_pid) {
        return Err(refused(&spec, reason));
    }
    let image_dir = image_dir.canonicalize().map_err(io_err(image_dir))?;
    let (console_source, console_tty) = console_of(state.init_pid)?;
    let cgroup = Cgroup::at(&CgroupRoot::detect()?, spec.cgroup())?;
    let freezer = cgroup
        .paths()
        .into_iter()
        .find(|p| p.components().any(|c| c.as_os_str() == "freezer"))
        .or_else(|| cgroup.unified_dir());
    let binds: Vec<(usize, String)> = spec
        .mounts
        .iter()
        .enumerate()
        .filter(|(_, m)| matches!(m.kind, MountKind::MonitorBind { .. }))
        .map(|(i, _)| (i, format!("corral-bind-{i}")))
        .collect();

    let mut args: Vec<String> = vec![
        "--tree".into(),
        state.init_pid.to_string(),
        "--images-dir".into(),
        image_dir.display().to_string(),
        "--log-file".into(),
        DUMP_LOG.into(),
        "-v4".into(),
        "--manage-cgroups".into(),
        // The container's whole cgroup tree, not only the cgroups with tasks and below: on
        // dump, criu walks from here (by default from init's cgroup, init.scope under systemd),
        // so the empty cgroups of a delegated subtree (slices, stopped units) are recreated on
        // restore, where systemd's inotify watches on their cgroup.events need them.
        "--cgroup-root".into(),
        format!("/{}/{}", cgroup::PARENT, cgroup.name()),
        "--empty-ns".into(),
        "net".into(),
        "--network-lock".into(),
        "skip".into(),
        "--file-locks".into(),
        "--link-remap".into(),
        "--external".into(),
        "mnt[]".into(),
        "--external".into(),
        console_tty.clone(),
        // A key, not the autodetected host path: criu binds an autodetected external from its
        // recorded path whatever the restore maps, i.e. whichever pty has that number then.
        "--external".into(),
        format!("mnt[/dev/console]:{CONSOLE_KEY}"),
    ];
    args.extend(WATCH_PATH_ARGS.iter().map(|a| a.to_string()));
    if let Some(f) = &freezer {
        args.extend(["--freeze-cgroup".into(), f.display().to_string()]);
    }
    for (i, key) in &binds {
        args.extend([
            "--external".into(),
            format!("mnt[{}]:{key}", spec.mounts[*i].target.display()),
        ]);
    }
    if opts.leave_running {
        args.push("--leave-running".into());
    }
    if opts.tcp_established {
        args.push("--tcp-established".into());
    }
    let log = image_dir.join(DUMP_LOG);
    let began = Instant::now();
    if opts.pre_dump {
        let pre = image_dir.join("pre");
        fs::create_dir_all(&pre).map_err(io_err(&pre))?;
        let mut pre_args = vec![
            "--tree".to_string(),
            state.init_pid.to_string(),
            "--images-dir".into(),
            pre.display().to_string(),
            "--log-file".into(),
            "pre-dump.log".into(),
            "-v4".into(),
            "--track-mem".into(),
        ];
        if let Some(f) = &freezer {
            pre_args.extend(["--freeze-cgroup".into(), f.display().to_string()]);
        }
        run_criu(&criu, "pre-dump", &pre_args, &pre.join("pre-dump.log"))?;
        args.extend(["--prev-images-dir".into(), "pre".into(), "--track-mem".into()]);
    }
    tracing::info!(name = %spec.name, dir = %image_dir.display(), leave_running = opts.leave_running, "checkpointing");
    // Frozen here first, polled every millisecond: criu's own freeze polls the v1 freezer in
    // 100 ms steps, and finding the cgroup frozen it only seizes the tasks. (It then thaws
    // the cgroup once they are seized, and freezes it again when it leaves them running or
    // fails; so it is thawed again below either way. A frozen cgroup is not recorded as such
    // on restore: the monitor makes the cgroup before criu.)
    let frozen_here = freezer.is_some() && {
        let t = Instant::now();
        match cgroup.freeze() {
            Ok(()) => {
                tracing::debug!(name = %spec.name, took = ?t.elapsed(), "frozen for the dump");
                true
            }
            Err(e) => {
                tracing::debug!(name = %spec.name, error = %e, "not frozen before the dump; criu freezes it");
                false
            }
        }
    };
    if let Some(pages) = lazy {
        let (ready_r, ready_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| sys_err("pipe")(e.into()))?;
        args.extend([
            "--lazy-pages".into(),
            "--ps-socket".into(),
            pages.as_raw_fd().to_string(),
            "--status-fd".into(),
            ready_w.as_raw_fd().to_string(),
        ]);
        tracing::debug!(?args, "criu lazy dump");
        let mut cmd = Command::new(&criu);
        cmd.arg("dump")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        sys::clean_signals_on_exec(&mut cmd);
        kdat::prepare_command(&mut cmd);
        sys::keep_fds_on_exec(&mut cmd, vec![pages.as_raw_fd(), ready_w.as_raw_fd()]);
        let spawned = cmd.spawn().map_err(|source| CheckpointError::Spawn {
            criu: criu.clone(),
            source,
        });
        drop(ready_w);
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                if frozen_here {
                    let _ = cgroup.thaw();
                }
                return Err(e);
            }
        };
        if let Err(e) = wait_ready(ready_r, &mut child, "dump", &log) {
            if frozen_here {
                let _ = cgroup.thaw();
            }
            return Err(e);
        }
        let criu_time = began.elapsed();
        let meta = Metadata {
            version: METADATA_VERSION,
            spec: spec.clone(),
            console_tty,
            console_source,
            binds,
            tcp_established: opts.tcp_established,
            lazy_pages: true,
            left_running: false,
            criu_version: criu_version(&criu)?,
            dumped_at: now(),
            init_pid: state.init_pid,
        };
        let meta_path = image_dir.join(METADATA);
        let written = serde_json::to_vec_pretty(&meta)
            .map_err(|e| io_err(&meta_path)(io::Error::other(e)))
            .and_then(|data| fs::write(&meta_path, data).map_err(io_err(&meta_path)));
        let lazy = LazyDump {
            child,
            cgroup,
            frozen_here,
            client,
            began,
            report: DumpReport {
                dir: image_dir.clone(),
                criu_time,
                log,
            },
        };
        if let Err(e) = written {
            lazy.abort();
            return Err(e);
        }
        tracing::info!(name = %spec.name, ?criu_time, "images written; criu serves the memory lazily");
        return Ok(Dumped::Lazy(lazy));
    }
    let mut dumped = run_criu(&criu, "dump", &args, &log);
    for _ in 0..WATCH_GONE_RETRIES {
        if !matches!(&dumped, Err(CheckpointError::Criu { errors, .. }) if watched_inode_went_away(errors)) {
            break;
        }
        // The container runs on (criu let it go): let systemd finish with the cgroup it was
        // removing, then dump again from a clean directory.
        tracing::info!(name = %spec.name, "a watched cgroup went away during the dump; dumping again");
        let _ = cgroup.thaw();
        clear_dump_images(&image_dir)?;
        std::thread::sleep(Duration::from_millis(200));
        if frozen_here {
            let _ = cgroup.freeze();
        }
        dumped = run_criu(&criu, "dump", &args, &log);
    }
    let criu_time = began.elapsed();
    if frozen_here {
        // Gone with the container after a stopping dump; nothing to thaw then.
        let _ = cgroup.thaw();
    }
    dumped?;
    if kdat::cached().is_none() && kdat::supported() {
        // For the next run; this one probed the kernel.
        let criu = criu.clone();
        std::thread::spawn(move || kdat::fill(&criu));
    }
    let meta = Metadata {
        version: METADATA_VERSION,
        spec: spec.clone(),
        console_tty,
        console_source,
        binds,
        tcp_established: opts.tcp_established,
        lazy_pages: false,
        left_running: opts.leave_running,
        criu_version: criu_version(&criu)?,
        dumped_at: now(),
        init_pid: state.init_pid,
    };
    let meta_path = image_dir.join(METADATA);
    let data = serde_json::to_vec_pretty(&meta).map_err(|e| io_err(&meta_path)(io::Error::other(e)))?;
    fs::write(&meta_path, data).map_err(io_err(&meta_path))?;
    if !opts.leave_running {
        // criu killed the tree; the monitor reaps init and removes cgroup, socket and state.
        let deadline = Instant::now() + TEARDOWN_TIMEOUT;
        while client.is_running() {
            if Instant::now() > deadline {
                return Err(CheckpointError::StillRunning(TEARDOWN_TIMEOUT));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    tracing::info!(name = %spec.name, ?criu_time, total = ?began.elapsed(), "checkpoint written");
    Ok(Dumped::Done(DumpReport {
        dir: image_dir,
        criu_time,
        log,
    }))
}

/// Runs `criu <action> <args>` (no inherited signal mask); a failure carries the log's errors.
fn run_criu(criu: &Path, action: &'static str, args: &[String], log: &Path) -> Result<(), CheckpointError> {
    tracing::debug!(action, ?args, "criu");
    let mut cmd = Command::new(criu);
    cmd.arg(action)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    sys::clean_signals_on_exec(&mut cmd);
    kdat::prepare_command(&mut cmd);
    let status = cmd.status().map_err(|source| CheckpointError::Spawn {
        criu: criu.to_path_buf(),
        source,
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(CheckpointError::Criu {
            action,
            errors: log_errors(log),
            log: log.to_path_buf(),
        })
    }
}

/// Restores the checkpoint in `image_dir` as a running container described by `spec` (usually
/// [`read_metadata`]'s, with this host's run directory): a monitor is spawned as for a start
/// and restores instead. Returns its client once the processes run again. On failure nothing
/// is left: no process, cgroup or mount.
pub fn restore(monitor_exe: &Path, spec: &ContainerSpec, image_dir: &Path) -> Result<Client, CheckpointError> {
    criu_binary()?;
    let image_dir = image_dir.canonicalize().map_err(io_err(image_dir))?;
    read_metadata(&image_dir)?;
    if Client::new(&spec.run_dir).is_running() {
        return Err(CheckpointError::AlreadyRunning(spec.name.clone()));
    }
    fs::create_dir_all(&spec.run_dir).map_err(io_err(&spec.run_dir))?;
    let req_path = spec.run_dir.join(RESTORE_REQUEST);
    let req = RestoreRequest { image_dir };
    let data = serde_json::to_vec(&req).map_err(|e| io_err(&req_path)(io::Error::other(e)))?;
    fs::write(&req_path, data).map_err(io_err(&req_path))?;
    // criu's kernel-feature cache for the monitor's criu, or back from it (see [`kdat`]).
    let seed = spec.run_dir.join(KDAT_SEED);
    let _ = fs::remove_file(&seed);
    let handed = kdat::cached();
    if let Some(bytes) = &handed {
        let _ = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&seed)
            .and_then(|mut f| io::Write::write_all(&mut f, bytes));
    }
    let spawned = client::spawn(monitor_exe, spec);
    // The monitor consumes it; a monitor that never ran must not leave it for the next start.
    let _ = fs::remove_file(&req_path);
    if handed.is_none() {
        if let Ok(bytes) = fs::read(&seed) {
            kdat::remember(bytes);
        }
    }
    let _ = fs::remove_file(&seed);
    Ok(spawned?)
}

/// For the monitor: the restore request in `run_dir`, if any, removed as it is read.
pub(crate) fn take_restore_request(run_dir: &Path) -> Option<Result<RestoreRequest, CheckpointError>> {
    let path = run_dir.join(RESTORE_REQUEST);
    let raw = fs::read(&path).ok()?;
    let _ = fs::remove_file(&path);
    Some(serde_json::from_slice(&raw).map_err(|e| CheckpointError::BadImage {
        path: path.clone(),
        reason: e.to_string(),
    }))
}

/// The monitor's restore: the counterpart of [`start::start`], with the same contract (a
/// single-threaded child subreaper in a private mount namespace) and the same result. On error
/// nothing of the container is left.
pub(crate) fn restore_in_monitor(
    spec: &ContainerSpec,
    cgroup_root: &CgroupRoot,
    staging: &Path,
    host_setup: start::HostSetup<'_>,
    req: &RestoreRequest,
) -> Result<Started, CheckpointError> {
    let meta = read_metadata(&req.image_dir)?;
    let criu = criu_binary()?;
    if !spec.rootfs.is_dir() {
        return Err(StartError::NoRootfs(spec.rootfs.clone()).into());
    }
    let init = spec.init.first().cloned().unwrap_or_default();
    let init_on_host = start::resolve_in_root(&spec.rootfs, &init).unwrap_or_else(|| spec.rootfs.join("sbin/init"));
    let stop_signal = start::stop_signal_for(spec, &init_on_host);
    let delegate = spec.idmap.map(|m| (m.host_uid, m.host_gid));
    let cgroup = start::create_cgroup(cgroup_root, spec, delegate)?;
    let work = spec.run_dir.join("criu-work");
    let result = restore_in_cgroup(spec, &meta, &criu, &cgroup, staging, &work, host_setup, req);
    let _ = fs::remove_dir_all(&work);
    match result {
        Ok((init_pid, init_pidfd, console_master, console_slave, idmapped)) => Ok(Started {
            init_pid,
            init_pidfd,
            console_master,
            console_slave,
            seccomp_fd: None,
            cgroup,
            stop_signal,
            idmapped,
            // CRIU made the disk binds inside the container: they stay until it stops.
            disks: spec
                .mounts
                .iter()
                .filter(|m| matches!(m.kind, MountKind::MonitorBind { .. }))
                .map(|m| start::AttachedDisk {
                    target: crate::layout::normalize(&m.target),
                    mount: None,
                    root: (0, 0),
                    hotplugged: false,
                })
                .collect(),
            restored: true,
        }),
        Err(e) => {
            let _ = cgroup.kill_all();
            let _ = cgroup.destroy();
            Err(e)
        }
    }
}

type RestoredParts = (i32, OwnedFd, OwnedFd, OwnedFd, bool);

#[allow(clippy::too_many_arguments)]
fn restore_in_cgroup(
    spec: &ContainerSpec,
    meta: &Metadata,
    criu: &Path,
    cgroup: &Cgroup,
    staging: &Path,
    work: &Path,
    host_setup: start::HostSetup<'_>,
    req: &RestoreRequest,
) -> Result<RestoredParts, CheckpointError> {
    let began = Instant::now();
    let _ = fs::remove_dir_all(work);
    let ext = work.join("ext");
    fs::create_dir_all(&ext).map_err(io_err(&ext))?;
    fs::create_dir_all(staging).map_err(io_err(staging))?;
    let idmapped = stage_mounts(spec, meta, staging, &ext)?;

    // A new console; its slave goes to criu (inherited, not close-on-exec) for the tty init had.
    let (console_master, console_path) = start::open_console(spec)?;
    let console_keep = sys::open_pty_peer(console_master.as_fd()).map_err(sys_err("open the console's slave"))?;
    nix::fcntl::fcntl(&console_master, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK))
        .map_err(|e| sys_err("console non-blocking")(e.into()))?;
    let console_for_criu = nix::fcntl::open(&console_path, OFlag::O_RDWR | OFlag::O_NOCTTY, Mode::empty())
        .map_err(|e| sys_err("open the console's slave for criu")(e.into()))?;

    // The action script: on "setup-namespaces" hand init's pid to us and wait for the answer.
    let req_fifo = work.join("hook.req");
    let ack_fifo = work.join("hook.ack");
    for f in [&req_fifo, &ack_fifo] {
        nix::unistd::mkfifo(f, Mode::from_bits_truncate(0o600)).map_err(|e| io_err(f)(e.into()))?;
    }
    let script = work.join("hook.sh");
    let text = format!(
        "#!/bin/sh\n[ \"$CRTOOLS_SCRIPT_ACTION\" = setup-namespaces ] || exit 0\necho \"$CRTOOLS_INIT_PID\" > '{}' && read r < '{}' && [ \"$r\" = ok ]\n",
        req_fifo.display(),
        ack_fifo.display()
    );
    fs::write(&script, text).map_err(io_err(&script))?;
    fs::set_permissions(&script, fs::Permissions::from_mode(0o700)).map_err(io_err(&script))?;
    // Opened before criu runs, so the script's write never waits for a reader.
    let req_reader = nix::fcntl::open(
        &req_fifo,
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err(&req_fifo)(e.into()))?;
    let pidfile = work.join("init.pid");
    let log = req.image_dir.join(RESTORE_LOG);
    let _ = fs::remove_file(&log);

    let mut args: Vec<String> = vec![
        "restore".into(),
        "--images-dir".into(),
        req.image_dir.display().to_string(),
        "--log-file".into(),
        RESTORE_LOG.into(),
        "-v4".into(),
        "--root".into(),
        staging.display().to_string(),
        "--manage-cgroups".into(),
        "--cgroup-root".into(),
        format!("/{}/{}", cgroup::PARENT, cgroup.name()),
        "--empty-ns".into(),
        "net".into(),
        "--network-lock".into(),
        "skip".into(),
        "--file-locks".into(),
        "--link-remap".into(),
        "--external".into(),
        "mnt[]".into(),
        "--external".into(),
        format!("mnt[{CONSOLE_KEY}]:{}", console_path.display()),
        "--inherit-fd".into(),
        format!("fd[{}]:{}", console_for_criu.as_raw_fd(), meta.console_tty),
        "--restore-detached".into(),
        "--restore-sibling".into(),
        "--pidfile".into(),
        pidfile.display().to_string(),
        "--action-script".into(),
        script.display().to_string(),
    ];
    for (i, key) in &meta.binds {
        args.extend([
            "--external".into(),
            format!("mnt[{key}]:{}", ext.join(i.to_string()).display()),
        ]);
    }
    if meta.tcp_established {
        args.push("--tcp-established".into());
    }
    if meta.lazy_pages {
        // The pages come from the `criu lazy-pages` listening in the images directory.
        args.push("--lazy-pages".into());
    }
    tracing::info!(name = %spec.name, dir = %req.image_dir.display(), staged = ?began.elapsed(), "restoring");
    tracing::debug!(?args, "criu");
    let seed = spec.run_dir.join(KDAT_SEED);
    let kdat_mounted = kdat::mount_for_restore(&seed);
    let mut cmd = Command::new(criu);
    cmd.args(&args).stdin(Stdio::null()).stdout(Stdio::null());
    sys::clean_signals_on_exec(&mut cmd);
    let mut child = cmd.spawn().map_err(|source| CheckpointError::Spawn {
        criu: criu.to_path_buf(),
        source,
    })?;
    drop(console_for_criu);
    // The container's cgroup2 subtree, to hand back to its root once criu has recreated it.
    let delegated = match (cgroup.unified_dir(), spec.idmap) {
        (Some(dir), Some(map)) => Some((dir, map.host_uid, map.host_gid)),
        _ => None,
    };
    let criu_began = Instant::now();
    let outcome = drive_criu(&mut child, req_reader, &ack_fifo, host_setup, delegated);
    if kdat_mounted {
        kdat::unmount_after_restore(&seed);
    }
    tracing::info!(name = %spec.name, criu = ?criu_began.elapsed(), total = ?began.elapsed(), "criu restore done");
    let status = match outcome {
        Ok(status) => status,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    // criu's copies of the binds are in the container now; ours go.
    unmount_ext(&ext);
    if !status.success() {
        return Err(CheckpointError::Criu {
            action: "restore",
            errors: log_errors(&log),
            log,
        });
    }
    let pid: i32 = fs::read_to_string(&pidfile)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| CheckpointError::Criu {
            action: "restore",
            errors: "criu wrote no pid file".into(),
            log: log.clone(),
        })?;
    let pidfd = sys::pidfd_open(pid).map_err(sys_err("pidfd_open of the restored init"))?;
    match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::StillAlive) => {}
        Err(nix::errno::Errno::ECHILD) => {
            let _ = sys::kill(pid, libc::SIGKILL);
            return Err(CheckpointError::Criu {
                action: "restore",
                errors: format!("the restored init {pid} is not the monitor's child (--restore-sibling)"),
                log,
            });
        }
        other => {
            return Err(CheckpointError::Criu {
                action: "restore",
                errors: format!("the restored init died at once ({other:?})"),
                log,
            })
        }
    }
    tracing::info!(name = %spec.name, init_pid = pid, "container restored");
    Ok((pid, pidfd, console_master, console_keep, idmapped))
}

/// Waits for criu, answering its setup-namespaces hook. Returns criu's exit status.
fn drive_criu(
    child: &mut std::process::Child,
    req_reader: OwnedFd,
    ack_fifo: &Path,
    host_setup: start::HostSetup<'_>,
    delegated: Option<(PathBuf, u32, u32)>,
) -> Result<std::process::ExitStatus, CheckpointError> {
    let deadline = Instant::now() + RESTORE_TIMEOUT;
    let mut reader = fs::File::from(req_reader);
    let mut got = String::new();
    let mut hooked = false;
    loop {
        if let Some(status) = child.try_wait().map_err(sys_err("wait for criu"))? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            return Err(CheckpointError::Timeout(RESTORE_TIMEOUT));
        }
        if !hooked {
            let mut buf = [0u8; 64];
            match reader.read(&mut buf) {
                Ok(n) if n > 0 => got.push_str(&String::from_utf8_lossy(&buf[..n])),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(sys_err("read criu's hook")(e)),
            }
            if got.ends_with('\n') {
                hooked = true;
                let answer = match got.trim().parse::<i32>() {
                    Ok(pid) => match &delegated {
                        Some((dir, uid, gid)) => hand_back_cgroups(dir, *uid, *gid)
                            .map_err(|e| format!("cannot hand the restored cgroups back to the container: {e}")),
                        None => Ok(()),
                    }
                    .and_then(|()| set_up_network(pid, host_setup)),
                    Err(_) => Err(format!("criu's hook sent {:?}, not a pid", got.trim())),
                };
                let word = if answer.is_ok() { "ok\n" } else { "fail\n" };
                answer_hook(ack_fifo, word, deadline)?;
                answer.map_err(CheckpointError::HostSetup)?;
                continue;
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Gives the files of the cgroups criu recreated below the container's delegated cgroup2
/// directory `top` back to the container's root (`uid`, `gid`, host ids).
///
/// criu (host root) makes the cgroups of a delegated subtree again and restores each
/// directory's owner, but their files stay root's, unlike those of a cgroup the container made
/// itself (the kernel gives a new cgroup's files to its creator). systemd then could not attach
/// a process to a restored unit ("Failed to attach to cgroup /system.slice/...: Permission
/// denied" on `systemctl reload`). Done before the tasks resume; `top` itself keeps its
/// delegation as made at start (only some of its files are the container's).
fn hand_back_cgroups(top: &Path, uid: u32, gid: u32) -> io::Result<()> {
    fn walk(dir: &Path, uid: u32, gid: u32, below_top: bool) -> io::Result<()> {
        let owned = below_top && fs::symlink_metadata(dir)?.uid() == uid;
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                walk(&entry.path(), uid, gid, true)?;
            } else if owned && kind.is_file() {
                std::os::unix::fs::lchown(entry.path(), Some(uid), Some(gid))?;
            }
        }
        Ok(())
    }
    walk(top, uid, gid, false)
}

/// The caller's host set-up on the restored namespaces, and `lo` up (criu made the network
/// namespace empty, and an empty one has `lo` down).
fn set_up_network(pid: i32, host_setup: start::HostSetup<'_>) -> Result<(), String> {
    tracing::debug!(pid, "criu's setup-namespaces hook");
    let out = Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .args(["ip", "link", "set", "lo", "up"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run nsenter ip: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cannot bring lo up in the restored network namespace: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    host_setup(pid)
}

/// Writes the hook's answer; the script opens the FIFO right after its request.
fn answer_hook(ack_fifo: &Path, word: &str, deadline: Instant) -> Result<(), CheckpointError> {
    loop {
        match nix::fcntl::open(
            ack_fifo,
            OFlag::O_WRONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => {
                nix::unistd::write(&fd, word.as_bytes()).map_err(|e| io_err(ack_fifo)(e.into()))?;
                return Ok(());
            }
            Err(nix::errno::Errno::ENXIO) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => return Err(io_err(ack_fifo)(e.into())),
        }
    }
}

/// Mounts the idmapped (or plain) rootfs at `staging` and each monitor bind at `ext/<index>`,
/// as [`start::start`] would. Returns whether the rootfs is idmapped.
fn stage_mounts(spec: &ContainerSpec, meta: &Metadata, staging: &Path, ext: &Path) -> Result<bool, CheckpointError> {
    let Some(map) = spec.idmap else {
        let tree = sys::open_tree_clone(&spec.rootfs, true).map_err(sys_err("open_tree of the rootfs"))?;
        sys::move_mount_to(tree.as_fd(), staging).map_err(sys_err("move_mount of the rootfs"))?;
        // The dumped root was a slave of the staged rootfs, as the restored one will be.
        start::share_staging(staging)?;
        attach_ext_binds(spec, meta, ext, None)?;
        return Ok(false);
    };
    // The container's user namespace does not exist before criu makes it: idmap through a
    // throwaway one with the same maps (an idmapped mount uses only the mapping).
    let holder = UsernsHolder::new()?;
    crate::idmap::write_maps(holder.pid.as_raw(), &map).map_err(sys_err("write the uid/gid maps"))?;
    let idmapped = start::attach_rootfs_unprivileged(spec, holder.pid, staging)?;
    start::share_staging(staging)?;
    let userns = fs::File::open(format!("/proc/{}/ns/user", holder.pid.as_raw()))
        .map_err(sys_err("open the throwaway user namespace"))?;
    attach_ext_binds(spec, meta, ext, Some(userns.as_fd()))?;
    Ok(idmapped)
}

fn attach_ext_binds(
    spec: &ContainerSpec,
    meta: &Metadata,
    ext: &Path,
    userns: Option<std::os::fd::BorrowedFd<'_>>,
) -> Result<(), CheckpointError> {
    for (i, _) in &meta.binds {
        let m = spec.mounts.get(*i).ok_or_else(|| CheckpointError::BadImage {
            path: ext.to_path_buf(),
            reason: format!("the checkpoint names mount {i}, which the spec lacks"),
        })?;
        let MountKind::MonitorBind { recursive, idmapped } = m.kind else {
            return Err(CheckpointError::BadImage {
                path: ext.to_path_buf(),
                reason: format!("mount {i} of the spec is not a disk bind"),
            });
        };
        let (tree, is_dir) = start::detached_bind(m, recursive, if idmapped { userns } else { None })?;
        let at = ext.join(i.to_string());
        if is_dir {
            fs::create_dir(&at).map_err(io_err(&at))?;
        } else {
            fs::write(&at, b"").map_err(io_err(&at))?;
        }
        sys::move_mount_to(tree.as_fd(), &at).map_err(sys_err("move_mount of a disk bind"))?;
        // The dumped copy was a slave of the monitor's mount (see crate::hotplug): criu makes
        // the restored one a slave of this, which must therefore be shared.
        nix::mount::mount(
            None::<&str>,
            &at,
            None::<&str>,
            nix::mount::MsFlags::MS_SHARED,
            None::<&str>,
        )
        .map_err(|e| sys_err("make a disk bind shared")(e.into()))?;
    }
    Ok(())
}

fn unmount_ext(ext: &Path) {
    if let Ok(rd) = fs::read_dir(ext) {
        for e in rd.flatten() {
            // Private first, so that the unmount does not propagate to the restored copies,
            // its slaves (which become private).
            let _ = nix::mount::mount(
                None::<&str>,
                &e.path(),
                None::<&str>,
                nix::mount::MsFlags::MS_PRIVATE,
                None::<&str>,
            );
            let _ = nix::mount::umount2(&e.path(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// A child process that only holds a new user namespace, until dropped.
struct UsernsHolder {
    pid: Pid,
    _sock: OwnedFd,
}

impl UsernsHolder {
    fn new() -> Result<UsernsHolder, CheckpointError> {
        use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
        let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
            .map_err(|e| sys_err("socketpair")(e.into()))?;
        // SAFETY: the monitor is single-threaded (restore_in_monitor's contract); the child
        // only unshares, reports and waits, then leaves with exit_now.
        match unsafe { sys::fork() }.map_err(sys_err("fork"))? {
            nix::unistd::ForkResult::Child => {
                drop(ours);
                let _ = sys::set_pdeathsig(libc::SIGKILL);
                let ok = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER).is_ok();
                let _ = nix::unistd::write(&theirs, if ok { b"y" } else { b"n" });
                // Until the monitor closes its end.
                let mut buf = [0u8; 1];
                let _ = nix::unistd::read(&theirs, &mut buf);
                sys::exit_now(0);
            }
            nix::unistd::ForkResult::Parent { child } => {
                drop(theirs);
                let holder = UsernsHolder {
                    pid: child,
                    _sock: ours,
                };
                let mut buf = [0u8; 1];
                match nix::unistd::read(&holder._sock, &mut buf) {
                    Ok(1) if buf[0] == b'y' => Ok(holder),
                    _ => Err(CheckpointError::Sys {
                        step: "create a user namespace for the idmapped rootfs",
                        source: io::Error::other("the helper could not unshare"),
                    }),
                }
            }
        }
    }
}

impl Drop for UsernsHolder {
    fn drop(&mut self) {
        let _ = sys::kill(self.pid.as_raw(), libc::SIGKILL);
        let _ = waitpid(self.pid, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_watch_shown_without_handle_makes_a_dump_try_again() {
        let gone = "Error (criu/proc_parse.c:2237): parse_fdinfo_pid_s: error parsing [inotify wd:12 ino:8339f sdev:26 mask:2 ignored_mask:0 ] for 8: Invalid argument; Error (criu/cr-dump.c:1681): Dump files (pid: 10529) failed with -1";
        assert!(watched_inode_went_away(gone));
        let other = "Error (criu/cr-dump.c:1681): Dump files (pid: 10529) failed with -1";
        assert!(!watched_inode_went_away(other));
        let fanotify = "Error (criu/proc_parse.c:2237): parse_fdinfo_pid_s: error parsing [fanotify mnt_id:1] for 8";
        assert!(!watched_inode_went_away(fanotify));
    }

    #[test]
    fn log_errors_keeps_the_last_meaningful_lines() {
        let dir = std::env::temp_dir().join(format!("corral-criu-log-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let log = dir.join("x.log");
        fs::write(
            &log,
            "(00.01) Error (criu/util.c:1533): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted\n\
             (00.02) mnt: fine\n\
             (00.03) Error (criu/tty.c:410): tty: Found slave peer index 0 without correspond master peer\n\
             (00.04) Error (criu/cr-dump.c:2111): Dumping FAILED.\n",
        )
        .unwrap();
        assert_eq!(
            log_errors(&log),
            "Error (criu/tty.c:410): tty: Found slave peer index 0 without correspond master peer"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
