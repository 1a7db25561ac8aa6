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
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::spec::{ContainerSpec, MountKind};

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
            MountKind::Bind { recursive } => {
                let src = &m.source;
                if prep(src, fs::metadata(src))?.is_dir() {
                    mkdir(&target)?;
                } else {
                    touch(&target)?;
                }
                bind(src, &target, *recursive)?;
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
            }
        }
        if m.readonly {
            remount_readonly(&target, MsFlags::empty())?;
        }
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
}
