//! Thin wrappers over the syscalls that neither `nix` nor `std` cover.
//!
//! Every `unsafe` block of the runtime's container set-up lives here, each with the invariant it
//! relies on. The wrappers take and return owned or borrowed file descriptors, never raw ints
//! that outlive the call.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `open_tree(AT_FDCWD, path, OPEN_TREE_CLONE | AT_RECURSIVE?)`: a detached copy of the mount
/// (tree) at `path`, ready to be idmapped and attached elsewhere.
pub fn open_tree_clone(path: &Path, recursive: bool) -> io::Result<OwnedFd> {
    let c = cstring(path)?;
    let mut flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= libc::AT_RECURSIVE as u32;
    }
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call; the flags are valid
    // for open_tree(2), which returns a new fd or -1.
    let fd = check(unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c.as_ptr(), flags) })?;
    // SAFETY: open_tree returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;

/// Makes the detached mount `mnt` idmapped through the user namespace `userns`
/// (and read-only if asked). Fails with EINVAL where the filesystem cannot idmap.
pub fn mount_setattr_idmap(
    mnt: BorrowedFd<'_>,
    userns: BorrowedFd<'_>,
    recursive: bool,
    readonly: bool,
) -> io::Result<()> {
    mount_setattr_detached(mnt, Some(userns), recursive, readonly)
}

/// Sets the attributes of the detached mount `mnt` (the whole tree if `recursive`): idmapped
/// through `userns` if given, read-only if asked. Nothing to set is no call at all.
pub fn mount_setattr_detached(
    mnt: BorrowedFd<'_>,
    userns: Option<BorrowedFd<'_>>,
    recursive: bool,
    readonly: bool,
) -> io::Result<()> {
    let mut attr = MountAttr {
        attr_set: if userns.is_some() { MOUNT_ATTR_IDMAP } else { 0 } | if readonly { MOUNT_ATTR_RDONLY } else { 0 },
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.map_or(0, |u| u.as_raw_fd() as u64),
    };
    if attr.attr_set == 0 {
        return Ok(());
    }
    let empty = c"";
    let flags = libc::AT_EMPTY_PATH | if recursive { libc::AT_RECURSIVE } else { 0 };
    // SAFETY: `attr` is a properly laid out `struct mount_attr` that lives across the call and
    // whose size we pass; `empty` is a valid C string; both fds are open for the call's duration.
    check(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            mnt.as_raw_fd(),
            empty.as_ptr(),
            flags,
            &mut attr as *mut MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })?;
    Ok(())
}

/// Attaches the detached mount `mnt` at `target`.
pub fn move_mount_to(mnt: BorrowedFd<'_>, target: &Path) -> io::Result<()> {
    let c = cstring(target)?;
    let empty = c"";
    // SAFETY: valid fd and C strings for the duration of the call; MOVE_MOUNT_F_EMPTY_PATH makes
    // the kernel use `mnt` itself as the source.
    check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mnt.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    })?;
    Ok(())
}

/// Attaches the detached mount `mnt` on the file or directory `target` is open on (an
/// `O_PATH` descriptor: no path is resolved again, so nothing can be swapped in between).
pub fn move_mount_onto(mnt: BorrowedFd<'_>, target: BorrowedFd<'_>) -> io::Result<()> {
    let empty = c"";
    // SAFETY: both fds are open for the call's duration and `empty` is a valid C string;
    // MOVE_MOUNT_F_EMPTY_PATH and MOVE_MOUNT_T_EMPTY_PATH make the kernel use the fds themselves.
    check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mnt.as_raw_fd(),
            empty.as_ptr(),
            target.as_raw_fd(),
            empty.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH | libc::MOVE_MOUNT_T_EMPTY_PATH,
        )
    })?;
    Ok(())
}

/// `pidfd_open(pid, 0)`.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes plain integers and returns a new fd or -1.
    let fd = check(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Removes `cap` from the calling thread's bounding set.
pub fn capbset_drop(cap: u32) -> io::Result<()> {
    // SAFETY: PR_CAPBSET_DROP takes an integer capability number; no memory is passed.
    let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
    check(r as libc::c_long).map(|_| ())
}

/// Makes `fd` (a terminal) the controlling terminal of the calling session leader.
pub fn set_controlling_tty(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal); fd is open.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 0) };
    check(r as libc::c_long).map(|_| ())
}

/// Window size of a terminal.
pub fn set_window_size(fd: BorrowedFd<'_>, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a `struct winsize` that lives across the call; fd is open.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws as *const libc::winsize) };
    check(r as libc::c_long).map(|_| ())
}

/// Opens the slave side of the pseudo-terminal whose master is `master`
/// (TIOCGPTPEER, resolved in the master's own devpts instance).
pub fn open_pty_peer(master: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: TIOCGPTPEER takes the open flags as an integer and returns a new fd or -1.
    let fd = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, flags) };
    check(fd as libc::c_long)?;
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sets the parent-death signal of the calling process.
pub fn set_pdeathsig(sig: i32) -> io::Result<()> {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number; no memory is passed.
    let r = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) };
    check(r as libc::c_long).map(|_| ())
}

/// Makes the calling process a child subreaper: orphans below it are reparented to it.
pub fn set_child_subreaper() -> io::Result<()> {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag; no memory is passed.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    check(r as libc::c_long).map(|_| ())
}

/// `fork()`. The child must only do what is safe after fork in this process: the runtime calls
/// it from single-threaded processes (the monitor, its helpers) or execs right away.
///
/// # Safety
/// The caller must ensure the process is single-threaded, or that the child only calls
/// async-signal-safe functions before exec or `_exit`.
pub unsafe fn fork() -> io::Result<nix::unistd::ForkResult> {
    // SAFETY: forwarded to the caller's contract above.
    unsafe { nix::unistd::fork() }.map_err(io::Error::from)
}

/// Ends the calling process at once, without running destructors or atexit handlers
/// (what a forked child must do instead of returning into the parent's stack).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit is always safe to call; it never returns.
    unsafe { libc::_exit(code) }
}

/// Number of the real-time signal `SIGRTMIN + n`.
pub fn sigrtmin_plus(n: i32) -> i32 {
    libc::SIGRTMIN() + n
}

/// Reads the extended attribute `name` of `path` (not following a final symlink).
/// `Ok(None)` when the attribute is absent.
pub fn lgetxattr(path: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    let p = cstring(path)?;
    let n = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: both strings are valid C strings; `buf` is writable for `buf.len()` bytes.
    let r = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENODATA) {
            Ok(None)
        } else {
            Err(e)
        };
    }
    buf.truncate(r as usize);
    Ok(Some(buf))
}

/// Sets the extended attribute `name` of `path` (not following a final symlink).
pub fn lsetxattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let p = cstring(path)?;
    let n = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: both strings are valid C strings; `value` is readable for its length.
    let r = unsafe { libc::lsetxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    check(r as libc::c_long).map(|_| ())
}

/// Takes ownership of a descriptor just received with SCM_RIGHTS.
pub fn own_received_fd(raw: RawFd) -> OwnedFd {
    // SAFETY: the kernel installed this descriptor in our table for this message only;
    // nothing else refers to it, so we are its sole owner.
    unsafe { OwnedFd::from_raw_fd(raw) }
}

/// The process that [`forward_signals_to`] relays signals to.
static FORWARD_TO: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn forward_signal(sig: libc::c_int) {
    let pid = FORWARD_TO.load(std::sync::atomic::Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill(2) is async-signal-safe and takes plain integers.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Relays the usual job-control and termination signals received by this process to `pid`.
/// Used by the exec helper, which stands between the monitor and the command it runs.
pub fn forward_signals_to(pid: i32) -> io::Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    FORWARD_TO.store(pid, std::sync::atomic::Ordering::Relaxed);
    let action = SigAction::new(
        SigHandler::Handler(forward_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGWINCH,
        Signal::SIGCONT,
        Signal::SIGALRM,
    ] {
        // SAFETY: the handler only loads an atomic and calls kill(2), both async-signal-safe.
        unsafe { sigaction(sig, &action) }.map_err(io::Error::from)?;
    }
    Ok(())
}

/// Puts every signal back to its default disposition (a forked child of the monitor must not
/// inherit the monitor's handling).
pub fn reset_signal_dispositions() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for sig in Signal::iterator() {
        if sig == Signal::SIGKILL || sig == Signal::SIGSTOP {
            continue;
        }
        // SAFETY: installing SIG_DFL cannot run any code of ours in a signal context.
        let _ = unsafe { sigaction(sig, &default) };
    }
}

/// `kill(pid, sig)` for any signal number, real-time ones included.
pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: kill(2) takes plain integers.
    let r = unsafe { libc::kill(pid, sig) };
    check(r as libc::c_long).map(|_| ())
}

/// Ignores SIGPIPE, so that writing to a peer that went away is an error, not death.
pub fn ignore_sigpipe() -> io::Result<()> {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: SIG_IGN installs no handler code of ours.
    unsafe { signal(Signal::SIGPIPE, SigHandler::SigIgn) }
        .map(drop)
        .map_err(io::Error::from)
}

/// Marks every descriptor from 3 up close-on-exec (`close_range(3, ~0, CLOSE_RANGE_CLOEXEC)`),
/// so nothing the spawner leaked to us reaches a container.
pub fn cloexec_from_3() -> io::Result<()> {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range takes plain integers and touches only our descriptor table.
    check(unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC) }).map(|_| ())
}

/// `pidfd_send_signal(pidfd, sig)`: signals exactly the process the pidfd refers to, never a
/// process that reused its pid.
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, sig: i32) -> io::Result<()> {
    // SAFETY: plain integers; a null siginfo is allowed.
    check(unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    })
    .map(|_| ())
}

/// Makes the calling process non-dumpable: no core dump, and no ptrace from the container's
/// root while it still holds the monitor's descriptors.
pub fn set_not_dumpable() -> io::Result<()> {
    // SAFETY: PR_SET_DUMPABLE takes an integer flag.
    let r = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    check(r as libc::c_long).map(|_| ())
}

/// Clears the ambient capability set, so a privileged container's processes only get the
/// capabilities their own credentials give them.
pub fn clear_ambient_caps() -> io::Result<()> {
    // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL takes integer arguments only.
    let r = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    check(r as libc::c_long).map(|_| ())
}

/// Makes the mount at `path` and every mount below it read-only (`mount_setattr` with
/// `AT_RECURSIVE`), which a plain remount cannot do for a whole tree.
pub fn make_tree_readonly(path: &Path) -> io::Result<()> {
    let c = cstring(path)?;
    let mut attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: `c` is a valid C string and `attr` a properly laid out `struct mount_attr`, both
    // alive across the call, whose size we pass.
    check(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_RECURSIVE,
            &mut attr as *mut MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })?;
    Ok(())
}

/// Sets the propagation of the mount `mnt` is open on (its root; with `recursive`, every mount
/// below it too): `propagation` is one of `MS_PRIVATE`, `MS_SHARED`, `MS_SLAVE`,
/// `MS_UNBINDABLE`. Works on an attached mount of the caller's namespace through a descriptor,
/// so no path is resolved again.
pub fn mount_setattr_propagation(mnt: BorrowedFd<'_>, propagation: libc::c_ulong, recursive: bool) -> io::Result<()> {
    let mut attr = MountAttr {
        attr_set: 0,
        attr_clr: 0,
        propagation,
        userns_fd: 0,
    };
    let empty = c"";
    let flags = libc::AT_EMPTY_PATH | if recursive { libc::AT_RECURSIVE } else { 0 };
    // SAFETY: `attr` is a properly laid out `struct mount_attr` that lives across the call and
    // whose size we pass; `empty` is a valid C string; the fd is open for the call's duration.
    check(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            mnt.as_raw_fd(),
            empty.as_ptr(),
            flags,
            &mut attr as *mut MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })?;
    Ok(())
}

/// The mount `name` (relative to the directory `dir`; `None`: `dir` itself) is on, as
/// `statx` reports it without following a final symlink or triggering an automount: its mount
/// id (the unique, never reused one where the kernel has it, 6.8 and later) and whether the
/// file is the root of that mount, that is a mount point.
pub fn mount_id(dir: BorrowedFd<'_>, name: Option<&Path>) -> io::Result<(u64, bool)> {
    let c = match name {
        Some(n) => cstring(n)?,
        None => CString::default(),
    };
    let mut flags = libc::AT_SYMLINK_NOFOLLOW | libc::AT_NO_AUTOMOUNT;
    if name.is_none() {
        flags |= libc::AT_EMPTY_PATH;
    }
    let mask = libc::STATX_MNT_ID | libc::STATX_MNT_ID_UNIQUE;
    let mut st = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: `c` is a valid C string and `st` is writable memory the size of a `struct statx`,
    // both alive across the call; the fd is open for the call's duration.
    let r = unsafe { libc::statx(dir.as_raw_fd(), c.as_ptr(), flags, mask, st.as_mut_ptr()) };
    check(r as libc::c_long)?;
    // SAFETY: statx succeeded and filled the structure (it was zeroed beforehand anyway).
    let st = unsafe { st.assume_init() };
    if st.stx_mask & (libc::STATX_MNT_ID | libc::STATX_MNT_ID_UNIQUE) == 0 {
        return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
    }
    let root = st.stx_attributes_mask & libc::STATX_ATTR_MOUNT_ROOT as u64 != 0
        && st.stx_attributes & libc::STATX_ATTR_MOUNT_ROOT as u64 != 0;
    Ok((st.stx_mnt_id, root))
}

/// Makes `fds` (opened close-on-exec, as everything here) open in `cmd`'s program under the
/// same numbers: for descriptors named on its command line (criu's `--ps-socket`,
/// `--status-fd`). Other children spawned meanwhile by other threads do not get them.
pub fn keep_fds_on_exec(cmd: &mut std::process::Command, fds: Vec<i32>) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only calls fcntl(F_SETFD)
    // on descriptor numbers (async-signal-safe); it allocates nothing and touches no lock. The
    // caller keeps the descriptors open until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &fds {
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Makes `cmd` start with no blocked signal and every disposition at its default (the monitor
/// blocks SIGCHLD and friends for its signalfd and ignores SIGPIPE; both survive exec, and a
/// `criu` that cannot see SIGCHLD never learns that a restored task died).
pub fn clean_signals_on_exec(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only calls sigprocmask and
    // sigaction, both async-signal-safe; it allocates nothing and touches no lock.
    unsafe {
        cmd.pre_exec(|| {
            let empty = nix::sys::signal::SigSet::empty();
            let _ = nix::sys::signal::sigprocmask(nix::sys::signal::SigmaskHow::SIG_SETMASK, Some(&empty), None);
            reset_signal_dispositions();
            Ok(())
        });
    }
}
