//! The filesystem layout a full distribution expects, built inside the container's mount
//! namespace before `pivot_root`.
//!
//! This runs in the container's PID 1 before it execs init, with the rootfs already attached at
//! a staging path (see [`crate::start`]). It mirrors what LXC sets up for an unprivileged
//! container: proc, a read-only sysfs, cgroup2 for the container's own cgroup namespace, a
//! tmpfs /dev holding bind-mounted host nodes (an unprivileged container cannot mknod), a fresh
//! devpts instance, /dev/shm and /dev/mqueue, the console pty, LXC's masked /proc entries and,
//! when lxcfs runs, its files over /proc so that `free` and `top` show the container's limits.

use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::symlink;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{fstat, mkdirat, Mode, SFlag};

use crate::spec::{ContainerSpec, MountKind, Propagation};

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("cannot mount {what} on {target}: {source}")]
    Mount {
        what: String,
        target: PathBuf,
        source: nix::Error,
    },
    #[error("cannot prepare {path}: {source}")]
    Prepare { path: PathBuf, source: io::Error },
    #[error("cannot switch to the container's root {root}: {source}")]
    PivotRoot { root: PathBuf, source: nix::Error },
    #[error("mount target {0} must be an absolute path inside the container")]
    BadTarget(PathBuf),
    #[error("{0} in the container's rootfs is a symlink; the runtime mounts there and refuses to follow it")]
    Symlink(PathBuf),
    #[error("cannot mount on {target}: {why}")]
    Misplaced { target: PathBuf, why: String },
}

/// Host device nodes bind-mounted into every container's /dev.
const STANDARD_NODES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];
/// Nodes LXD adds when the host has them.
const OPTIONAL_NODES: &[&str] = &["fuse", "net/tun"];
/// /proc files LXC hides behind /dev/null.
const MASKED_PROC: &[&str] = &["kcore", "keys", "timer_list", "sched_debug", "latency_stats"];
/// /proc files lxcfs virtualises.
const LXCFS_PROC: &[&str] = &["cpuinfo", "meminfo", "stat", "uptime", "loadavg", "diskstats", "swaps"];

/// What the layout needs besides the spec.
pub struct LayoutInput<'a> {
    pub spec: &'a ContainerSpec,
    /// Where the rootfs is attached in this mount namespace.
    pub root: &'a Path,
    /// The console pty's slave on the host's devpts.
    pub console: &'a Path,
    /// Whether lxcfs is mounted at `spec.lxcfs`.
    pub lxcfs_mounted: bool,
}

fn mnt(
    src: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), LayoutError> {
    mount(src, target, fstype, flags, data).map_err(|source| LayoutError::Mount {
        what: fstype
            .map(str::to_string)
            .or_else(|| src.map(|s| s.display().to_string()))
            .unwrap_or_default(),
        target: target.to_path_buf(),
        source,
    })
}

fn bind(src: &Path, target: &Path, recursive: bool) -> Result<(), LayoutError> {
    let flags = MsFlags::MS_BIND | if recursive { MsFlags::MS_REC } else { MsFlags::empty() };
    mnt(Some(src), target, None, flags, None)
}

fn remount_readonly(target: &Path, extra: MsFlags) -> Result<(), LayoutError> {
    let flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | extra;
    mnt(None, target, None, flags, None)
}

fn prep<T>(path: &Path, r: io::Result<T>) -> Result<T, LayoutError> {
    r.map_err(|source| LayoutError::Prepare {
        path: path.to_path_buf(),
        source,
    })
}

fn touch(path: &Path) -> Result<(), LayoutError> {
    if path.exists() {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        prep(parent, fs::create_dir_all(parent))?;
    }
    prep(
        path,
        fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path),
    )
    .map(drop)
}

fn mkdir(path: &Path) -> Result<(), LayoutError> {
    prep(path, fs::create_dir_all(path))
}

/// Fails if any existing component of `rel` under `root` is a symlink.
fn refuse_symlinks(root: &Path, rel: &Path) -> Result<(), LayoutError> {
    let mut path = root.to_path_buf();
    for c in rel.components() {
        path.push(c);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(LayoutError::Symlink(
                    Path::new("/").join(path.strip_prefix(root).unwrap_or(&path)),
                ))
            }
            Ok(_) => {}
            Err(_) => return Ok(()), // missing: created as a real directory
        }
    }
    Ok(())
}

/// Joins an absolute container path onto the staging root.
pub fn in_root(root: &Path, path: &Path) -> Result<PathBuf, LayoutError> {
    let rel = path
        .strip_prefix("/")
        .map_err(|_| LayoutError::BadTarget(path.to_path_buf()))?;
    if rel.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return Err(LayoutError::BadTarget(path.to_path_buf()));
    }
    Ok(root.join(rel))
}

/// Top-level directories the layout mounts over: a [`MountKind::MonitorBind`], which reaches the
/// container's root by propagation, would be hidden there under the container's own mounts.
const LAYOUT_DIRS: &[&str] = &["/dev", "/proc", "/sys"];

/// Checks the spec's mounts before anything is made: absolute targets inside the container,
/// not the root itself, and every [`MountKind::MonitorBind`] where the container's own mounts
/// (the layout's, and the `Bind` and `Tmpfs` mounts of the spec) cannot hide it.
pub fn check_mounts(spec: &ContainerSpec) -> Result<(), LayoutError> {
    let misplaced = |m: &crate::spec::Mount, why: String| LayoutError::Misplaced {
        target: m.target.clone(),
        why,
    };
    for m in &spec.mounts {
        let rel = normalize(&in_root(Path::new("/"), &m.target)?);
        if rel == Path::new("/") {
            return Err(misplaced(m, "the container's root is the rootfs".into()));
        }
        let MountKind::MonitorBind { idmapped, .. } = m.kind else {
            continue;
        };
        if idmapped && spec.idmap.is_none() {
            return Err(misplaced(
                m,
                "an idmapped bind needs an unprivileged container (one with an idmap)".into(),
            ));
        }
        if let Some(dir) = LAYOUT_DIRS.iter().find(|d| rel.starts_with(d)) {
            return Err(misplaced(m, format!("the container's own {dir} would hide this bind")));
        }
        let later = spec
            .mounts
            .iter()
            .find(|o| !matches!(o.kind, MountKind::MonitorBind { .. }) && rel.starts_with(normalize(&o.target)));
        if let Some(o) = later {
            return Err(misplaced(
                m,
                format!(
                    "the mount on {} is the container's own and would hide this one",
                    o.target.display()
                ),
            ));
        }
    }
    Ok(())
}

/// `path` without `.` components or repeated slashes (`..` is refused by [`in_root`]).
pub(crate) fn normalize(path: &Path) -> PathBuf {
    path.components().filter(|c| !matches!(c, Component::CurDir)).collect()
}

/// Opens (`O_PATH`) the mount point `target` under the directory `root` is open on, creating
/// what is missing: directories on the way, and a directory or an empty file at the end. Each
/// component is opened relative to the previous one without following symlinks, so a symlink
/// planted in the rootfs is refused and nothing can be swapped in between. Used by the monitor
/// for [`MountKind::MonitorBind`], which runs as host root: it calls this with its filesystem
/// ids set to the container's root, so that what it creates belongs to the container.
pub fn open_mount_target(root: BorrowedFd<'_>, target: &Path, dir: bool) -> Result<OwnedFd, LayoutError> {
    let rel = in_root(Path::new("/"), target)?;
    let parts: Vec<_> = rel.components().filter(|c| matches!(c, Component::Normal(_))).collect();
    let Some((last, ancestors)) = parts.split_last() else {
        return Err(LayoutError::BadTarget(target.to_path_buf()));
    };
    let mut so_far = PathBuf::from("/");
    let fail = |path: &Path, e: Errno| LayoutError::Prepare {
        path: path.to_path_buf(),
        source: io::Error::from(e),
    };
    let path_flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut current: Option<OwnedFd> = None;
    for (i, part) in ancestors.iter().chain(std::iter::once(last)).enumerate() {
        let at_end = i == ancestors.len();
        so_far.push(part);
        let parent = current.as_ref().map_or(root, |f| f.as_fd());
        let want_dir = !at_end || dir;
        let opened = match openat(parent, part.as_os_str(), path_flags, Mode::empty()) {
            Err(Errno::ENOENT) => {
                let made = if want_dir {
                    mkdirat(parent, part.as_os_str(), Mode::from_bits_truncate(0o755))
                } else {
                    openat(
                        parent,
                        part.as_os_str(),
                        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                        Mode::from_bits_truncate(0o644),
                    )
                    .map(drop)
                };
                match made {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(fail(&so_far, e)),
                }
                openat(parent, part.as_os_str(), path_flags, Mode::empty()).map_err(|e| fail(&so_far, e))?
            }
            other => other.map_err(|e| fail(&so_far, e))?,
        };
        let st = fstat(&opened).map_err(|e| fail(&so_far, e))?;
        let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
        if kind == SFlag::S_IFLNK {
            return Err(LayoutError::Symlink(so_far));
        }
        let is_dir = kind == SFlag::S_IFDIR;
        if want_dir != is_dir {
            let why = if want_dir {
                "it is not a directory, and a directory is mounted there"
            } else {
                "it is a directory, and a file is mounted there"
            };
            return Err(LayoutError::Misplaced {
                target: so_far,
                why: why.into(),
            });
        }
        current = Some(opened);
    }
    Ok(current.expect("a target has at least one component"))
}

fn set_propagation(target: &Path, propagation: Propagation) -> Result<(), LayoutError> {
    let flags = match propagation {
        Propagation::Private => MsFlags::MS_PRIVATE,
        Propagation::Shared => MsFlags::MS_SHARED,
        Propagation::Slave => MsFlags::MS_SLAVE,
        Propagation::Unbindable => MsFlags::MS_UNBINDABLE,
        Propagation::RPrivate => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        Propagation::RShared => MsFlags::MS_SHARED | MsFlags::MS_REC,
        Propagation::RSlave => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        Propagation::RUnbindable => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
    };
    mnt(None, target, None, flags, None)
}

/// Builds the whole layout under `input.root`. The caller then calls [`pivot_into`].
pub fn build(input: &LayoutInput<'_>) -> Result<(), LayoutError> {
    let root = input.root;
    // This runs with the host's root directory: a symlink the container planted where we mount
    // or create (say /dev -> /etc) would be followed on the host. Nothing else runs in this
    // rootfs while it starts, so checking up front is enough.
    for dir in ["proc", "sys", "dev"] {
        refuse_symlinks(root, Path::new(dir))?;
    }
    for m in &input.spec.mounts {
        let rel = in_root(root, &m.target)?;
        refuse_symlinks(root, rel.strip_prefix(root).unwrap_or(&rel))?;
    }
    let privileged = input.spec.idmap.is_none();
    // Nothing we mount may propagate back to the host.
    mnt(None, Path::new("/"), None, MsFlags::MS_REC | MsFlags::MS_SLAVE, None)?;
    // pivot_root refuses a mount inherited (and locked) from a more privileged namespace:
    // bind the root onto itself to get one of our own.
    bind(root, root, true)?;

    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let proc_dir = root.join("proc");
    mkdir(&proc_dir)?;
    mnt(
        Some(Path::new("proc")),
        &proc_dir,
        Some("proc"),
        nosuid_nodev_noexec,
        None,
    )?;

    let sys_dir = root.join("sys");
    mkdir(&sys_dir)?;
    // sysfs can be mounted only by the owner of the network namespace; a container that joined
    // a host-owned one gets the host's sysfs, read-only.
    // The superblock stays read-write and only this mount is made read-only, so that the
    // unmasked copy a nesting container gets (see `mount_unmasked_copies`) can be read-write.
    if mount(
        Some("sysfs"),
        &sys_dir,
        Some("sysfs"),
        nosuid_nodev_noexec,
        None::<&str>,
    )
    .is_err()
    {
        // Recursive (the kernel refuses to uncover what locked submounts hide), then the whole
        // tree read-only below: the host's securityfs, efivarfs ... included.
        bind(Path::new("/sys"), &sys_dir, true)?;
        crate::sys::make_tree_readonly(&sys_dir).map_err(|e| LayoutError::Prepare {
            path: sys_dir.clone(),
            source: e,
        })?;
    }
    let cgroup_dir = sys_dir.join("fs/cgroup");
    if cgroup_dir.is_dir() {
        mnt(
            Some(Path::new("cgroup2")),
            &cgroup_dir,
            Some("cgroup2"),
            nosuid_nodev_noexec,
            None,
        )?;
    }
    remount_readonly(&sys_dir, nosuid_nodev_noexec)?;

    build_dev(input)?;
    if input.spec.nesting {
        mount_unmasked_copies(root)?;
    }
    mask_proc(root, privileged)?;
    if input.lxcfs_mounted {
        if let Some(lxcfs) = &input.spec.lxcfs {
            bind_lxcfs(root, lxcfs)?;
        }
    }
    for m in &input.spec.mounts {
        let target = in_root(root, &m.target)?;
        match &m.kind {
            // Made (read-only and propagation included) by the monitor once this process has
            // switched root; see `start::attach_monitor_binds`.
            MountKind::MonitorBind { .. } => continue,
            MountKind::Bind { recursive } => {
                let src = &m.source;
                if prep(src, fs::metadata(src))?.is_dir() {
                    mkdir(&target)?;
                } else {
                    touch(&target)?;
                }
                bind(src, &target, *recursive)?;
                if m.readonly && *recursive {
                    crate::sys::make_tree_readonly(&target).map_err(|source| LayoutError::Prepare {
                        path: target.clone(),
                        source,
                    })?;
                } else if m.readonly {
                    remount_readonly(&target, MsFlags::empty())?;
                }
            }
            MountKind::Tmpfs { options } => {
                mkdir(&target)?;
                mnt(
                    Some(Path::new("tmpfs")),
                    &target,
                    Some("tmpfs"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                    Some(options),
                )?;
                if m.readonly {
                    remount_readonly(&target, MsFlags::empty())?;
                }
            }
        }
        // After the `MS_REC | MS_SLAVE` of the whole tree above: this mount's own.
        set_propagation(&target, m.propagation)?;
    }
    Ok(())
}

fn build_dev(input: &LayoutInput<'_>) -> Result<(), LayoutError> {
    let dev = input.root.join("dev");
    mkdir(&dev)?;
    mnt(
        Some(Path::new("tmpfs")),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=755,size=65536k"),
    )?;
    for name in STANDARD_NODES {
        let target = dev.join(name);
        touch(&target)?;
        bind(&Path::new("/dev").join(name), &target, false)?;
    }
    for name in OPTIONAL_NODES {
        let host = Path::new("/dev").join(name);
        if host.exists() {
            let target = dev.join(name);
            touch(&target)?;
            bind(&host, &target, false)?;
        }
    }
    for node in &input.spec.devices {
        let target = in_root(input.root, &node.path)?;
        touch(&target)?;
        bind(&node.source, &target, false)?;
    }
    let pts = dev.join("pts");
    mkdir(&pts)?;
    mnt(
        Some(Path::new("devpts")),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )?;
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let path = dev.join(link);
        prep(&path, symlink(target, &path))?;
    }
    let shm = dev.join("shm");
    mkdir(&shm)?;
    mnt(
        Some(Path::new("tmpfs")),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )?;
    let mqueue = dev.join("mqueue");
    mkdir(&mqueue)?;
    mnt(
        Some(Path::new("mqueue")),
        &mqueue,
        Some("mqueue"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )?;
    let target = dev.join("console");
    touch(&target)?;
    bind(input.console, &target, false)?;
    Ok(())
}

/// For `security.nesting`: the kernel lets a user namespace mount proc or sysfs only if an
/// instance of it is already fully visible in the mount namespace (nothing mounted over any of
/// its files). Ours are masked, so, as LXC does, keep unmasked instances at /dev/.lxc/{proc,sys}
/// for nested containers to satisfy that rule; they sit on /dev's tmpfs, mode 0755, root's.
fn mount_unmasked_copies(root: &Path) -> Result<(), LayoutError> {
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let proc_copy = root.join("dev/.lxc/proc");
    mkdir(&proc_copy)?;
    mnt(Some(Path::new("proc")), &proc_copy, Some("proc"), flags, None)?;
    let sys_copy = root.join("dev/.lxc/sys");
    mkdir(&sys_copy)?;
    // Only the owner of the network namespace can mount sysfs; a joined host namespace has none.
    // Read-write: a read-only instance would allow only read-only nested mounts; its files stay
    // owned by host root, so the container cannot write them anyway.
    let _ = mount(Some("sysfs"), &sys_copy, Some("sysfs"), flags, None::<&str>);
    Ok(())
}

fn mask_proc(root: &Path, privileged: bool) -> Result<(), LayoutError> {
    let proc_dir = root.join("proc");
    for name in MASKED_PROC {
        let target = proc_dir.join(name);
        if target.exists() {
            bind(Path::new("/dev/null"), &target, false)?;
        }
    }
    let sysrq = proc_dir.join("sysrq-trigger");
    if sysrq.exists() {
        bind(&sysrq, &sysrq, false)?;
        remount_readonly(&sysrq, MsFlags::empty())?;
    }
    // In a user namespace the kernel already refuses writes to host-global sysctls; a
    // privileged container gets LXC's proc:mixed instead: /proc/sys read-only but for net.
    if privileged {
        let sys = proc_dir.join("sys");
        bind(&sys, &sys, false)?;
        remount_readonly(&sys, MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC)?;
        let net = sys.join("net");
        bind(&net, &net, false)?;
        mnt(
            None,
            &net,
            None,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None,
        )?;
    }
    Ok(())
}

fn bind_lxcfs(root: &Path, lxcfs: &Path) -> Result<(), LayoutError> {
    for name in LXCFS_PROC {
        let src = lxcfs.join("proc").join(name);
        let target = root.join("proc").join(name);
        if src.exists() && target.exists() {
            bind(&src, &target, false)?;
        }
    }
    let src = lxcfs.join("sys/devices/system/cpu/online");
    let target = root.join("sys/devices/system/cpu/online");
    if src.exists() && target.exists() {
        bind(&src, &target, false)?;
    }
    Ok(())
}

/// Makes `root` the process's root directory and drops the old one.
pub fn pivot_into(root: &Path) -> Result<(), LayoutError> {
    let err = |source| LayoutError::PivotRoot {
        root: root.to_path_buf(),
        source,
    };
    nix::unistd::chdir(root).map_err(err)?;
    // pivot_root(".", ".") stacks the old root under the new one; detaching "." then removes it.
    nix::unistd::pivot_root(".", ".").map_err(err)?;
    umount2(".", MntFlags::MNT_DETACH).map_err(err)?;
    nix::unistd::chdir("/").map_err(err)?;
    Ok(())
}

/// Whether a FUSE lxcfs is mounted at `path` (per this process's mountinfo) and answering: a
/// dead lxcfs leaves its mount behind, and binding its files would fail every start.
pub fn lxcfs_mounted(path: &Path) -> bool {
    lxcfs_listed(path) && fs::metadata(path.join("proc/uptime")).is_ok()
}

fn lxcfs_listed(path: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines().any(|line| {
        let mut fields = line.split(' ');
        let mount_point = fields.nth(4);
        let fstype = line.split(" - ").nth(1).and_then(|rest| rest.split(' ').next());
        mount_point == Some(&*want) && fstype.is_some_and(|t| t.starts_with("fuse") && t.contains("lxcfs"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_paths_stay_under_the_root() {
        let root = Path::new("/stage");
        assert_eq!(
            in_root(root, Path::new("/mnt/data")).unwrap(),
            Path::new("/stage/mnt/data")
        );
        assert!(matches!(
            in_root(root, Path::new("mnt")),
            Err(LayoutError::BadTarget(_))
        ));
        assert!(matches!(
            in_root(root, Path::new("/../etc")),
            Err(LayoutError::BadTarget(_))
        ));
    }

    fn bind_at(target: &str, kind: MountKind) -> crate::spec::Mount {
        crate::spec::Mount {
            source: "/srv".into(),
            target: target.into(),
            kind,
            readonly: false,
            propagation: Propagation::Private,
        }
    }

    #[test]
    fn monitor_binds_must_not_be_hidden_by_later_mounts() {
        let early = |recursive| MountKind::MonitorBind {
            recursive,
            idmapped: true,
        };
        let mut spec = ContainerSpec::new("c", "/r", "/run/c");
        spec.mounts = vec![
            bind_at("/data", early(false)),
            bind_at("/data/inner", early(true)),
            bind_at("/opt/plain", MountKind::Bind { recursive: false }),
        ];
        check_mounts(&spec).unwrap();

        for (bad, want) in [
            ("/dev/x", "own /dev would hide"),
            ("/proc", "own /proc would hide"),
            ("/opt/plain/x", "the mount on /opt/plain"),
            ("/", "root is the rootfs"),
        ] {
            let mut s = spec.clone();
            s.mounts.push(bind_at(bad, early(false)));
            let e = check_mounts(&s).unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
        let mut tmp = spec.clone();
        tmp.mounts
            .push(bind_at("/data/./", MountKind::Tmpfs { options: String::new() }));
        assert!(check_mounts(&tmp)
            .unwrap_err()
            .to_string()
            .contains("the mount on /data/./"));
        let mut privileged = spec.clone();
        privileged.idmap = None;
        assert!(check_mounts(&privileged)
            .unwrap_err()
            .to_string()
            .contains("needs an unprivileged container"));
    }

    #[test]
    fn mount_targets_are_created_and_symlinks_refused() {
        let dir = std::env::temp_dir().join(format!("corral-layout-target-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("etc")).unwrap();
        fs::write(dir.join("etc/hosts"), "").unwrap();
        symlink("/etc", dir.join("evil")).unwrap();
        symlink("hosts", dir.join("etc/link")).unwrap();
        let root = nix::fcntl::open(&dir, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty()).unwrap();

        open_mount_target(root.as_fd(), Path::new("/mnt/a/b"), true).unwrap();
        assert!(dir.join("mnt/a/b").is_dir());
        open_mount_target(root.as_fd(), Path::new("/mnt/file"), false).unwrap();
        assert!(dir.join("mnt/file").is_file());
        open_mount_target(root.as_fd(), Path::new("/etc/hosts"), false).unwrap();

        let e = open_mount_target(root.as_fd(), Path::new("/evil/x"), true).unwrap_err();
        assert!(matches!(&e, LayoutError::Symlink(p) if p == Path::new("/evil")), "{e}");
        let e = open_mount_target(root.as_fd(), Path::new("/etc/link"), false).unwrap_err();
        assert!(
            matches!(&e, LayoutError::Symlink(p) if p == Path::new("/etc/link")),
            "{e}"
        );
        let e = open_mount_target(root.as_fd(), Path::new("/etc/hosts"), true).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
        let e = open_mount_target(root.as_fd(), Path::new("/etc"), false).unwrap_err();
        assert!(e.to_string().contains("is a directory"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
