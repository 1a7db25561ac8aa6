//! Hot-plug: binds attached to and detached from a running container, for the disk devices
//! added to or removed from it (as LXD does), and the disks mounted at start taken out again.
//!
//! ```text
//! client ── Mount { mount } ──> monitor M: open_tree of the source, mount_setattr (idmap
//!     through the container's user namespace, read-only, private from the host): the detached
//!     bind, made as at start ([`crate::start::detached_bind`]); its mount point opened under
//!     M's staged rootfs, created where missing as the container's root and following no
//!     symlink; move_mount onto it: the bind propagates into the container's root, a slave of
//!     the staged rootfs ── fork ──> helper H: joins the container's user and mount namespaces
//!     through M's pidfd of init, checks that the container sees the bind on the target (a
//!     mount of its own over it or a parent would hide it: then M takes the bind back and the
//!     request fails), sets its propagation inside (shared, unbindable) ─> M
//! client ── Unmount { target } ──> M: umount2(MNT_DETACH) of its own mount (through the
//!     descriptor it kept), which propagates and takes the container's copy (and the disks
//!     below) with it ── fork ──> H: joins the namespaces; should the copy still be on the target
//!     (the container mounted something inside it, which keeps a copy from propagation), it
//!     detaches it ─> M
//! ```
//!
//! Every disk, mounted at start or hot-plugged, is the same: M's mount on the staged rootfs,
//! propagated into the container's namespace. Checked against the kernel (6.18,
//! fs/namespace.c and fs/pnode.c): the copy that reaches a mount namespace owned by a less
//! privileged user namespace by propagation is made with `CL_UNPRIVILEGED`, which locks its
//! flags (`MNT_LOCK_READONLY` for a read-only bind, `MNT_LOCK_NOSUID`, `_NODEV`, `_NOEXEC`,
//! `_ATIME`): `mount -o remount,bind,rw` fails with EPERM inside. The mounts below its root
//! (a recursive bind's) are `MNT_LOCKED` (`lock_mnt_tree`), so the container cannot uncover
//! what the host hides under them; the root of the propagated tree is not, so the container
//! may unmount its copy (that only uncovers its own rootfs) and, above all, an unmount on M's
//! side propagates to it. A disk copied with the container's namespace (made before it was
//! unshared, as they were at first) is `MNT_LOCKED` itself and cannot be taken out live.
//!
//! Two kinds of bind are attached inside the container's namespace by H instead, without the
//! locks: those under /dev, /proc or /sys (plain binds only), which the container's own mounts
//! there would hide from propagation, and every hot-plug into a container restored by CRIU,
//! whose root is not a slave of the staged rootfs. The disks CRIU restored stay until the
//! container stops.
//!
//! The helper is forked because setns into a user or mount namespace is refused to a
//! multi-threaded process (the monitor stays single-threaded) and because work inside the
//! container's filesystem may block (a FUSE mount of the container's): the monitor waits for
//! its report in its poll loop, with a deadline. The helper is not dumpable, so the container's
//! root cannot ptrace it while it holds the monitor's descriptors.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::mount::MntFlags;
use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{SigSet, SigmaskHow};
use nix::sys::stat::Mode;
use nix::unistd::{setresgid, setresuid, Gid, Uid};
use serde::{Deserialize, Serialize};

use crate::layout::{self, LayoutError};
use crate::spec::{ContainerSpec, Mount, MountKind, Propagation};
use crate::{packet, start, sys};

/// What a helper reports to the monitor.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Outcome {
    /// Attached (or, for M's own bind, seen by the container and settled).
    Mounted,
    Unmounted,
    /// Nothing of ours was mounted there any more: the container's root unmounted it (or hid
    /// its parent).
    Gone,
    Failed(String),
}

/// A bind made on the host side, ready to be attached.
pub(crate) struct Prepared {
    pub(crate) tree: OwnedFd,
    is_dir: bool,
    /// Device and inode of its root: how the container's copy is recognised.
    pub(crate) root: (u64, u64),
}

/// Top-level directories under which a bind is attached inside the container (the
/// container's own mounts there would hide a propagated one).
const INSIDE_DIRS: &[&str] = &["/dev", "/proc", "/sys"];

/// Whether a bind on `target` (normalized) is attached inside the container's namespace by a
/// helper rather than propagated from the monitor's: under /dev, /proc, /sys, or in a
/// container CRIU restored.
pub(crate) fn attached_inside(restored: bool, target: &Path) -> bool {
    restored || INSIDE_DIRS.iter().any(|d| target.starts_with(d))
}

/// The hot-plug target `target` as a normalized absolute path inside the container: no `..`,
/// no `.`, not the root.
pub fn normalize_target(target: &Path) -> Result<PathBuf, String> {
    if !target.is_absolute() || target.components().any(|c| c == Component::ParentDir) {
        return Err(format!(
            "mount target {} must be an absolute path inside the container, without \"..\"",
            target.display()
        ));
    }
    let normalized: PathBuf = target.components().filter(|c| *c != Component::CurDir).collect();
    if normalized == Path::new("/") {
        return Err("nothing can be mounted over the container's root".into());
    }
    Ok(normalized)
}

/// The monitor's part of a hot-plug: checks `m` and makes its detached bind, exactly as a
/// start does. `init_pid` is the container's init (a child of the monitor, not reaped while
/// this runs, so its pid names it).
pub(crate) fn prepare(spec: &ContainerSpec, init_pid: i32, m: &Mount) -> Result<Prepared, String> {
    let (recursive, idmapped) = match m.kind {
        MountKind::MonitorBind { recursive, idmapped } => (recursive, idmapped),
        MountKind::Bind { recursive } => (recursive, false),
        MountKind::Tmpfs { .. } => {
            return Err(format!(
                "cannot hot-plug a tmpfs on {}: only binds can be hot-plugged",
                m.target.display()
            ))
        }
    };
    let userns = if idmapped {
        if spec.idmap.is_none() {
            return Err(format!(
                "cannot hot-plug an idmapped bind on {}: the container is privileged (it has no idmap)",
                m.target.display()
            ));
        }
        let path = format!("/proc/{init_pid}/ns/user");
        Some(std::fs::File::open(&path).map_err(|e| format!("cannot open the container's user namespace: {e}"))?)
    } else {
        None
    };
    let (tree, is_dir) =
        start::detached_bind(m, recursive, userns.as_ref().map(|u| u.as_fd())).map_err(|e| e.to_string())?;
    let root = start::root_id(&tree).map_err(|e| format!("stat of the bind of {}: {e}", m.source.display()))?;
    Ok(Prepared { tree, is_dir, root })
}

/// Attaches `prepared` on its mount point under the staged rootfs `staging`, in the monitor's
/// namespace, from where it propagates into the container.
pub(crate) fn attach_outside(
    spec: &ContainerSpec,
    staging: &Path,
    prepared: &Prepared,
    m: &Mount,
) -> Result<(), String> {
    let root = start::open_staging(staging).map_err(|e| e.to_string())?;
    start::attach_on_staging(spec, root.as_fd(), m, &prepared.tree, prepared.is_dir).map_err(|e| e.to_string())
}

/// Detaches the monitor's own mount `mount` (a disk's bind on the staged rootfs) and what is
/// mounted below it; the unmount propagates to the container's copies.
pub(crate) fn detach_outside(mount: &OwnedFd) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // The magic link leads to the mount the descriptor is open on, whatever covers it now.
    let path = format!("/proc/self/fd/{}", mount.as_raw_fd());
    nix::mount::umount2(path.as_str(), MntFlags::MNT_DETACH)?;
    Ok(())
}

/// The helper of a `Mount` made by the monitor: checks that the container sees the bind
/// whose root is `root` on `target` (normalized), sets its propagation inside, reports on
/// `report`, exits. Never returns.
pub(crate) fn settle_helper(
    spec: &ContainerSpec,
    init_pidfd: BorrowedFd<'_>,
    m: &Mount,
    target: &Path,
    root: (u64, u64),
    report: OwnedFd,
) -> ! {
    helper_prologue();
    let outcome = match settle(spec, init_pidfd, m, target, root) {
        Ok(()) => Outcome::Mounted,
        Err(e) => Outcome::Failed(e),
    };
    let code = i32::from(!matches!(outcome, Outcome::Mounted));
    let _ = packet::send(report.as_fd(), &outcome, &[]);
    sys::exit_now(code)
}

fn settle(
    spec: &ContainerSpec,
    init_pidfd: BorrowedFd<'_>,
    m: &Mount,
    target: &Path,
    root: (u64, u64),
) -> Result<(), String> {
    let fail = |what: String| {
        format!(
            "cannot bind {} on {} in the container: {what}",
            m.source.display(),
            target.display()
        )
    };
    let croot = enter(spec, init_pidfd)?;
    let rel = target.strip_prefix("/").unwrap_or(target);
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let hidden = || {
        fail(format!(
            "the container has a mount of its own over {} or one of its parents, which would hide the disk; choose another path",
            target.display()
        ))
    };
    let fd = match nix::fcntl::openat2(croot.as_fd(), rel, how) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT | nix::errno::Errno::ENOTDIR | nix::errno::Errno::ELOOP) => return Err(hidden()),
        Err(e) => return Err(fail(e.to_string())),
    };
    let seen = start::root_id(&fd).map_err(|e| fail(format!("stat: {e}")))?;
    let (_, is_root) = sys::mount_id(fd.as_fd(), None).map_err(|e| fail(format!("statx: {e}")))?;
    if seen != root || !is_root {
        return Err(hidden());
    }
    if let Some((flag, recursive)) = start::propagation_inside(m.propagation) {
        sys::mount_setattr_propagation(fd.as_fd(), flag, recursive)
            .map_err(|e| fail(format!("propagation {:?}: {e}", m.propagation)))?;
    }
    Ok(())
}

/// The helper of a `Mount`: attaches `prepared` on `target` (normalized) in the container,
/// reports on `report`, exits. Never returns.
pub(crate) fn mount_helper(
    spec: &ContainerSpec,
    init_pidfd: BorrowedFd<'_>,
    prepared: Prepared,
    m: &Mount,
    target: &Path,
    report: OwnedFd,
) -> ! {
    helper_prologue();
    let outcome = match attach(spec, init_pidfd, &prepared, m, target) {
        Ok(()) => Outcome::Mounted,
        Err(e) => Outcome::Failed(e),
    };
    let code = i32::from(!matches!(outcome, Outcome::Mounted));
    let _ = packet::send(report.as_fd(), &outcome, &[]);
    sys::exit_now(code)
}

/// The helper of an `Unmount`: detaches the bind whose root is `root` from `target`
/// (normalized) in the container if it is still there, reports on `report`, exits. Never
/// returns.
pub(crate) fn unmount_helper(
    spec: &ContainerSpec,
    init_pidfd: BorrowedFd<'_>,
    target: &Path,
    root: (u64, u64),
    report: OwnedFd,
) -> ! {
    helper_prologue();
    let outcome = detach(spec, init_pidfd, target, root).unwrap_or_else(Outcome::Failed);
    let code = i32::from(matches!(outcome, Outcome::Failed(_)));
    let _ = packet::send(report.as_fd(), &outcome, &[]);
    sys::exit_now(code)
}

fn helper_prologue() {
    // The monitor's blocked signals and ignored SIGPIPE are not the helper's; it dies with the
    // monitor.
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    sys::reset_signal_dispositions();
    let _ = sys::set_pdeathsig(libc::SIGKILL);
}

/// Joins the container's mount namespace (and user namespace, as its root, when it has one)
/// through the pidfd of its init; returns the container's root directory (`O_PATH`).
fn enter(spec: &ContainerSpec, init_pidfd: BorrowedFd<'_>) -> Result<OwnedFd, String> {
    // Until it exits, this process holds the monitor's descriptors: keep the container's root
    // from ptracing it once it is in the container's user namespace.
    sys::set_not_dumpable().map_err(|e| format!("prctl(PR_SET_DUMPABLE): {e}"))?;
    let mut flags = CloneFlags::CLONE_NEWNS;
    if spec.idmap.is_some() {
        flags |= CloneFlags::CLONE_NEWUSER;
    }
    // Through the pidfd: a reused pid can never send us elsewhere.
    setns(init_pidfd, flags).map_err(|e| format!("cannot join the container's namespaces: {e}"))?;
    if spec.idmap.is_some() {
        // The container's root: what the helper creates is the container's.
        setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0)).map_err(|e| format!("setresgid(0): {e}"))?;
        setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0)).map_err(|e| format!("setresuid(0): {e}"))?;
        nix::unistd::setgroups(&[]).map_err(|e| format!("setgroups: {e}"))?;
    }
    // setns(CLONE_NEWNS) put our root and working directory at the namespace's root: the
    // container's root directory.
    nix::fcntl::open(
        "/",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("cannot open the container's root: {e}"))
}

/// `target` split into its parent and its last component.
fn split(target: &Path) -> (&Path, &Path) {
    let parent = target.parent().unwrap_or(Path::new("/"));
    let name = target.file_name().map_or(Path::new(""), Path::new);
    (parent, name)
}

/// The propagation flag of mount_setattr(2) for `p`, and whether it applies to the whole tree.
fn propagation_attr(p: Propagation) -> (libc::c_ulong, bool) {
    match p {
        Propagation::Private => (libc::MS_PRIVATE, false),
        Propagation::Shared => (libc::MS_SHARED, false),
        Propagation::Slave => (libc::MS_SLAVE, false),
        Propagation::Unbindable => (libc::MS_UNBINDABLE, false),
        Propagation::RPrivate => (libc::MS_PRIVATE, true),
        Propagation::RShared => (libc::MS_SHARED, true),
        Propagation::RSlave => (libc::MS_SLAVE, true),
        Propagation::RUnbindable => (libc::MS_UNBINDABLE, true),
    }
}

/// A layout error about a path below `parent` (opened on its own) named with its full path.
fn rebase(e: LayoutError, parent: &Path) -> LayoutError {
    let full = |p: PathBuf| parent.join(p.strip_prefix("/").unwrap_or(&p));
    match e {
        LayoutError::Symlink(p) => LayoutError::Symlink(full(p)),
        LayoutError::Prepare { path, source } => LayoutError::Prepare {
            path: full(path),
            source,
        },
        LayoutError::Misplaced { target, why } => LayoutError::Misplaced {
            target: full(target),
            why,
        },
        other => other,
    }
}

fn attach(
    spec: &ContainerSpec,
    init_pidfd: BorrowedFd<'_>,
    prepared: &Prepared,
    m: &Mount,
    target: &Path,
) -> Result<(), String> {
    let fail = |what: String| {
        format!(
            "cannot bind {} on {} in the container: {what}",
            m.source.display(),
            target.display()
        )
    };
    let root = enter(spec, init_pidfd)?;
    let (parent, name) = split(target);
    // The parent and then the mount point, each opened component by component without
    // following symlinks and created (as the container's root) where missing. The parent's
    // descriptor stays, to name the mount point again should it have to be detached.
    let parent_fd = if parent == Path::new("/") {
        None
    } else {
        Some(layout::open_mount_target(root.as_fd(), parent, true).map_err(|e| fail(e.to_string()))?)
    };
    let parent_dir = parent_fd.as_ref().map_or(root.as_fd(), |f| f.as_fd());
    let point = layout::open_mount_target(parent_dir, &Path::new("/").join(name), prepared.is_dir)
        .map_err(|e| fail(rebase(e, parent).to_string()))?;
    sys::move_mount_onto(prepared.tree.as_fd(), point.as_fd()).map_err(|e| fail(format!("move_mount: {e}")))?;
    // After the move: a bind attached below a shared mount (systemd makes / shared) would
    // otherwise stay shared.
    let (propagation, recursive) = propagation_attr(m.propagation);
    let finished = sys::mount_setattr_propagation(prepared.tree.as_fd(), propagation, recursive)
        .map_err(|e| fail(format!("propagation {:?}: {e}", m.propagation)));
    if finished.is_err() {
        let _ = umount_at(parent_dir, name);
    }
    finished
}

/// Detaches the mount on `name` in the directory `dir` without resolving anything else.
fn umount_at(dir: BorrowedFd<'_>, name: &Path) -> io::Result<()> {
    nix::unistd::fchdir(dir)?;
    nix::mount::umount2(name, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW)?;
    Ok(())
}

fn detach(
    spec: &ContainerSpec,
    init_pidfd: BorrowedFd<'_>,
    target: &Path,
    root_id: (u64, u64),
) -> Result<Outcome, String> {
    let fail = |what: String| format!("cannot unmount {} in the container: {what}", target.display());
    let root = enter(spec, init_pidfd)?;
    let (parent, name) = split(target);
    let parent_fd = if parent == Path::new("/") {
        None
    } else {
        let rel = parent.strip_prefix("/").unwrap_or(parent);
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(
                ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS,
            );
        match nix::fcntl::openat2(root.as_fd(), rel, how) {
            Ok(fd) => Some(fd),
            // Its parent gone: so is the mount (the container hid or unmounted it).
            Err(nix::errno::Errno::ENOENT | nix::errno::Errno::ENOTDIR) => return Ok(Outcome::Gone),
            Err(nix::errno::Errno::ELOOP) => return Err(fail(format!("{} is now a symlink", parent.display()))),
            Err(e) => return Err(fail(format!("{}: {e}", parent.display()))),
        }
    };
    let dir = parent_fd.as_ref().map_or(root.as_fd(), |f| f.as_fd());
    let seen = match nix::sys::stat::fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => (st.st_dev, st.st_ino),
        Err(nix::errno::Errno::ENOENT) => return Ok(Outcome::Gone),
        Err(e) => return Err(fail(format!("stat: {e}"))),
    };
    match sys::mount_id(dir, Some(name)) {
        Ok((_, true)) if seen == root_id => {
            umount_at(dir, name).map_err(|e| fail(format!("umount2: {e}")))?;
            Ok(Outcome::Unmounted)
        }
        Ok((_, true)) => Err(fail(
            "the mount there is not the disk's (the container mounted something over or instead of it)".into(),
        )),
        Ok((_, false)) => Ok(Outcome::Gone),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(Outcome::Gone),
        Err(e) => Err(fail(format!("statx: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_normalized_and_checked() {
        assert_eq!(normalize_target(Path::new("/mnt/./a/")).unwrap(), Path::new("/mnt/a"));
        for bad in ["mnt", "/a/../b", "/", "/."] {
            assert!(normalize_target(Path::new(bad)).is_err(), "{bad}");
        }
        assert_eq!(split(Path::new("/a")), (Path::new("/"), Path::new("a")));
        assert_eq!(split(Path::new("/a/b/c")), (Path::new("/a/b"), Path::new("c")));
    }

    #[test]
    fn errors_below_a_parent_name_the_full_path() {
        let e = rebase(LayoutError::Symlink("/x".into()), Path::new("/mnt/a"));
        assert!(
            matches!(&e, LayoutError::Symlink(p) if p == Path::new("/mnt/a/x")),
            "{e}"
        );
    }
}
