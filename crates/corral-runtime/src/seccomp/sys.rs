//! Every raw syscall, ioctl and `unsafe` block of the seccomp module, and the helper child.
//!
//! The helper child runs between `fork` and `_exit` in a copy of a possibly multi-threaded
//! process (the test harness is; the monitor is not). It therefore only makes async-signal-safe
//! raw syscalls on data prepared by the parent: no allocation, no locks, no panics, no Rust
//! destructors (it leaves through `_exit`).

use std::ffi::CStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

/// Takes ownership of the listener fd libseccomp returned after `load`.
///
/// libseccomp keeps the number in its global state but never closes it itself (only
/// `seccomp_reset(NULL, ..)`, i.e. `reset_global_state`, would: it must not be called in this
/// process afterwards, which is fine for an init that is about to exec). The kernel creates the
/// listener close-on-exec.
pub(super) fn own_notify_fd(raw: RawFd) -> OwnedFd {
    // SAFETY: `raw` was just returned by `seccomp_notify_fd` for the filter loaded by this
    // process: an open fd that nothing else owns or closes (see above), so `OwnedFd` may own it.
    unsafe { OwnedFd::from_raw_fd(raw) }
}

// ---------------------------------------------------------------------------------------------
// Notification ioctls (`SECCOMP_IOCTL_NOTIF_*`), raw rather than through libseccomp 2.5, which
// turns every ioctl failure into `ECANCELED` (we need to tell `ENOENT`, "the caller is gone",
// from real errors) and fails after consuming a notification whose arch it cannot name.

/// `SECCOMP_IOCTL_NOTIF_RECV`: one pending notification. Blocks if there is none; check with
/// [`poll_readable`] first.
pub(super) fn notif_recv(fd: BorrowedFd<'_>) -> Result<libc::seccomp_notif, Errno> {
    loop {
        // The kernel insists on a zeroed buffer.
        let mut req = libc::seccomp_notif {
            id: 0,
            pid: 0,
            flags: 0,
            data: libc::seccomp_data {
                nr: 0,
                arch: 0,
                instruction_pointer: 0,
                args: [0; 6],
            },
        };
        // SAFETY: NOTIF_RECV writes one `struct seccomp_notif` (the size encoded in the ioctl
        // number is that of `libc::seccomp_notif`) into `req`, a valid, exclusively borrowed
        // buffer of that type; `fd` is a live descriptor for the duration of the call.
        let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_RECV, &mut req) };
        match Errno::result(ret) {
            Ok(_) => return Ok(req),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// `SECCOMP_IOCTL_NOTIF_SEND`: the answer to notification `resp.id`.
pub(super) fn notif_send(fd: BorrowedFd<'_>, resp: &libc::seccomp_notif_resp) -> Result<(), Errno> {
    loop {
        let mut resp = *resp;
        // SAFETY: NOTIF_SEND reads one `struct seccomp_notif_resp` (the size in the ioctl
        // number) from `resp`, a valid local of exactly that type; `fd` is live.
        let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_SEND, &mut resp) };
        match Errno::result(ret) {
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// `SECCOMP_IOCTL_NOTIF_ID_VALID`: is the caller of notification `id` still waiting for our
/// answer (i.e. alive, and the pid we were given still names it)? `Err(ENOENT)` if not.
pub(super) fn notif_id_valid(fd: BorrowedFd<'_>, id: u64) -> Result<(), Errno> {
    loop {
        let mut id = id;
        // SAFETY: ID_VALID reads one u64 (the size in the ioctl number) from `id`, a valid
        // local; `fd` is live.
        let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_ID_VALID, &mut id) };
        match Errno::result(ret) {
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Whether `fd` has a notification to receive right now (never blocks).
pub(super) fn poll_readable(fd: BorrowedFd<'_>) -> Result<bool, Errno> {
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    loop {
        match nix::poll::poll(&mut fds, PollTimeout::ZERO) {
            Ok(_) => return Ok(fds[0].revents().is_some_and(|r| r.contains(PollFlags::POLLIN))),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Capabilities (raw capget/capset: 64 capability bits as two 32-bit words, version 3).

pub(super) const CAP_DAC_OVERRIDE: u32 = 1;
pub(super) const CAP_DAC_READ_SEARCH: u32 = 2;
pub(super) const CAP_SYS_ADMIN: u32 = 21;
pub(super) const CAP_MKNOD: u32 = 27;

pub(super) const fn cap_bit(cap: u32) -> u64 {
    1 << cap
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// This thread's capability sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CapSets {
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
}

pub(super) fn capget() -> Result<CapSets, Errno> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget(2) with a version-3 header reads the header and writes two `CapData`
    // words, exactly the size of `data`; both are valid, exclusively borrowed locals.
    let ret = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    Errno::result(ret)?;
    let join = |lo: u32, hi: u32| u64::from(lo) | (u64::from(hi) << 32);
    Ok(CapSets {
        effective: join(data[0].effective, data[1].effective),
        permitted: join(data[0].permitted, data[1].permitted),
        inheritable: join(data[0].inheritable, data[1].inheritable),
    })
}

/// Sets this thread's effective set to `effective` (clipped to `current.permitted`), keeping
/// the permitted and inheritable sets. Async-signal-safe.
pub(super) fn capset_effective(current: &CapSets, effective: u64) -> Result<(), Errno> {
    let effective = effective & current.permitted;
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: effective as u32,
            permitted: current.permitted as u32,
            inheritable: current.inheritable as u32,
        },
        CapData {
            effective: (effective >> 32) as u32,
            permitted: (current.permitted >> 32) as u32,
            inheritable: (current.inheritable >> 32) as u32,
        },
    ];
    // SAFETY: capset(2) with a version-3 header reads the header and two `CapData` words, both
    // valid locals of the right size. It only changes this thread's credentials.
    let ret = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    Errno::result(ret).map(drop)
}

// ---------------------------------------------------------------------------------------------
// The helper child.

/// Host ids the caller's namespace maps (`[start, end)` ranges).
pub(super) struct Owners<'a> {
    pub uids: &'a [(u64, u64)],
    pub gids: &'a [(u64, u64)],
}

impl Owners<'_> {
    fn maps(&self, uid: u32, gid: u32) -> bool {
        let has = |ranges: &[(u64, u64)], id: u32| ranges.iter().any(|&(s, e)| s <= u64::from(id) && u64::from(id) < e);
        has(self.uids, uid) && has(self.gids, gid)
    }
}

/// What the helper does once it stands where the caller stands.
pub(super) enum HelperOp<'a> {
    /// `mknodat(open(dir), name, mode, dev)`; the DAC capabilities are kept for the final step
    /// only if `dir`'s owner is mapped in the caller's namespace.
    Mknod {
        dir: &'a CStr,
        name: &'a CStr,
        mode: libc::mode_t,
        dev: libc::dev_t,
    },
    /// Set xattr `name` = `value` on the target, if its owner is mapped in the caller's namespace.
    SetXattr {
        target: XattrTarget<'a>,
        name: &'a CStr,
        value: &'a [u8],
        flags: libc::c_int,
    },
}

pub(super) enum XattrTarget<'a> {
    /// A path, resolved like `setxattr` (`follow`) or `lsetxattr`.
    Path { path: &'a CStr, follow: bool },
    /// The file of the caller's fd (an `O_PATH` handle opened through `/proc/<pid>/fd/<n>`).
    Fd(BorrowedFd<'a>),
}

/// Everything the helper needs, prepared by the monitor.
pub(super) struct HelperJob<'a> {
    /// `/proc/<pid>/ns/mnt`.
    pub mntns: BorrowedFd<'a>,
    /// `/proc/<pid>/root`.
    pub root: BorrowedFd<'a>,
    /// `/proc/<pid>/cwd` or `/proc/<pid>/fd/<dirfd>`; `None` for an absolute path.
    pub base: Option<BorrowedFd<'a>>,
    pub fsuid: u32,
    pub fsgid: u32,
    pub groups: &'a [libc::gid_t],
    pub umask: libc::mode_t,
    /// The monitor's own capability sets (the helper's, after fork).
    pub caps: CapSets,
    /// Effective capabilities while resolving the path.
    pub lookup_caps: u64,
    /// Effective capabilities for the final operation when the owner is mapped.
    pub mapped_caps: u64,
    /// Effective capabilities for the final `mknodat` when the parent's owner is not mapped.
    pub unmapped_caps: u64,
    pub owners: Owners<'a>,
    pub op: HelperOp<'a>,
}

/// Runs `job` in a helper child; `Ok` or the errno of the failed step. The child is killed
/// (and the answer is `EIO`) if it has not finished after `timeout`.
pub(super) fn run_helper(job: &HelperJob<'_>, timeout: Duration) -> Result<(), Errno> {
    let (rd, wr) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    // Block every signal around fork: the child keeps them blocked, so none of the monitor's
    // handlers can run in it (SIGKILL, used on timeout, cannot be blocked).
    let mut old = SigSet::empty();
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::all()), Some(&mut old))?;
    // SAFETY: the child runs only `helper_child`, which makes async-signal-safe raw syscalls on
    // memory that was fully prepared before the fork (`job`, borrowed, alive in the child's copy
    // of the address space) and leaves with `_exit`, so nothing that another thread of the parent
    // may have held locked (malloc, stdio, tracing) is touched in the child.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let errno = helper_child(job);
        let bytes = errno.to_ne_bytes();
        // SAFETY: write(2) reads `bytes.len()` bytes from a live local array; `_exit` ends the
        // child without running destructors or atexit handlers of the parent's state.
        unsafe {
            libc::write(wr.as_raw_fd(), bytes.as_ptr().cast(), bytes.len());
            libc::_exit(0)
        }
    }
    let forked = Errno::result(pid);
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None)?;
    let pid = Pid::from_raw(forked?);
    drop(wr);

    let result = read_result(rd.as_fd(), timeout);
    if result.is_none() {
        tracing::warn!(helper = pid.as_raw(), "seccomp helper did not finish, killing it");
        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
    }
    // Reap exactly our child (the monitor has others). ECHILD: SIGCHLD is ignored and the kernel
    // reaped it already; the pipe still told us the result.
    while let Err(Errno::EINTR) = waitpid(pid, None) {}
    match result {
        Some(0) => Ok(()),
        Some(errno) => Err(Errno::from_raw(errno)),
        None => Err(Errno::EIO),
    }
}

/// The helper's 4-byte errno, or `None` on timeout or if it died without writing one.
fn read_result(rd: BorrowedFd<'_>, timeout: Duration) -> Option<i32> {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 4];
    let mut got = 0;
    while got < buf.len() {
        let left = deadline.checked_duration_since(Instant::now())?;
        let mut fds = [PollFd::new(rd, PollFlags::POLLIN)];
        let ms = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        match nix::poll::poll(&mut fds, ms) {
            Ok(0) => return None,
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(_) => return None,
        }
        match nix::unistd::read(rd, &mut buf[got..]) {
            Ok(0) => return None,
            Ok(n) => got += n,
            Err(Errno::EINTR) => continue,
            Err(_) => return None,
        }
    }
    Some(i32::from_ne_bytes(buf))
}

/// The child: returns 0 or an errno. Async-signal-safe only (see the module docs).
fn helper_child(job: &HelperJob<'_>) -> i32 {
    match helper_steps(job) {
        Ok(()) => 0,
        Err(e) => e as i32,
    }
}

fn check(ret: libc::c_int) -> Result<libc::c_int, Errno> {
    if ret == -1 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

fn helper_steps(job: &HelperJob<'_>) -> Result<(), Errno> {
    // SAFETY (for every block in this function): each call is a plain syscall wrapper that is
    // async-signal-safe, given NUL-terminated strings that live in `job` (prepared by the parent),
    // fds that `job` borrows from the parent (inherited, so open in the child) or that this
    // function opened, and pointers to live locals of the size passed. They affect only this
    // child process.

    // Die with the monitor rather than outlive it.
    // SAFETY: see above.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) };

    // The host's /proc/self/fd, for the xattr step: it must be opened before entering the
    // container's mount namespace (whose /proc the container controls).
    let self_fds = match job.op {
        // SAFETY: see above.
        HelperOp::SetXattr { .. } => check(unsafe {
            libc::open(
                c"/proc/self/fd".as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })?,
        HelperOp::Mknod { .. } => -1,
    };

    // Stand where the caller stands: its mount namespace, its root, its cwd or dirfd.
    // SAFETY: see above.
    check(unsafe { libc::setns(job.mntns.as_raw_fd(), libc::CLONE_NEWNS) })?;
    // SAFETY: see above.
    check(unsafe { libc::fchdir(job.root.as_raw_fd()) })?;
    // SAFETY: see above.
    check(unsafe { libc::chroot(c".".as_ptr()) })?;
    if let Some(base) = job.base {
        // SAFETY: see above.
        check(unsafe { libc::fchdir(base.as_raw_fd()) })?;
    }
    // SAFETY: see above.
    unsafe { libc::umask(job.umask) };

    // The caller's filesystem identity. Raw syscalls: glibc's wrappers may try to broadcast to
    // threads that do not exist in this child. setfs[ug]id() cannot fail visibly: read back.
    // SAFETY: see above.
    let ret = unsafe { libc::syscall(libc::SYS_setgroups, job.groups.len(), job.groups.as_ptr()) };
    Errno::result(ret)?;
    // SAFETY: see above.
    unsafe { libc::syscall(libc::SYS_setfsgid, job.fsgid) };
    // SAFETY: see above.
    if unsafe { libc::syscall(libc::SYS_setfsgid, u32::MAX) } != libc::c_long::from(job.fsgid) {
        return Err(Errno::EPERM);
    }
    // SAFETY: see above.
    unsafe { libc::syscall(libc::SYS_setfsuid, job.fsuid) };
    // SAFETY: see above.
    if unsafe { libc::syscall(libc::SYS_setfsuid, u32::MAX) } != libc::c_long::from(job.fsuid) {
        return Err(Errno::EPERM);
    }
    // A non-zero fsuid has just cleared CAP_MKNOD, CAP_DAC_* and the other filesystem
    // capabilities from the effective set (they stay permitted): raise what the step needs.
    capset_effective(&job.caps, job.lookup_caps)?;

    match &job.op {
        HelperOp::Mknod { dir, name, mode, dev } => {
            // SAFETY: see above.
            let dirfd = check(unsafe { libc::open(dir.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) })?;
            let (uid, gid) = owner(dirfd)?;
            let caps = if job.owners.maps(uid, gid) {
                job.mapped_caps
            } else {
                job.unmapped_caps
            };
            capset_effective(&job.caps, caps)?;
            // SAFETY: see above.
            check(unsafe { libc::mknodat(dirfd, name.as_ptr(), *mode, *dev) })?;
        }
        HelperOp::SetXattr {
            target,
            name,
            value,
            flags,
        } => {
            let fd = match target {
                XattrTarget::Path { path, follow } => {
                    let nofollow = if *follow { 0 } else { libc::O_NOFOLLOW };
                    // SAFETY: see above.
                    check(unsafe { libc::open(path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC | nofollow) })?
                }
                XattrTarget::Fd(fd) => fd.as_raw_fd(),
            };
            let (uid, gid) = owner(fd)?;
            if !job.owners.maps(uid, gid) {
                return Err(Errno::EPERM);
            }
            capset_effective(&job.caps, job.mapped_caps)?;
            // Write through our own /proc/self/fd/<fd>: the inode just checked, whatever
            // happens to the path meanwhile. The magic link is followed to that inode and no
            // further (a symlink opened with O_NOFOLLOW stays the symlink).
            let mut digits = [0u8; 16];
            let link = fd_name(fd, &mut digits);
            // SAFETY: see above.
            check(unsafe { libc::fchdir(self_fds) })?;
            // SAFETY: see above; `value` is a live slice of `value.len()` bytes.
            check(unsafe { libc::setxattr(link.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), *flags) })?;
        }
    }
    Ok(())
}

/// Owner and group of `fd` (an `O_PATH` fd is fine).
fn owner(fd: RawFd) -> Result<(u32, u32), Errno> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat(2) fills the `struct stat` `st` points to on success; it is read only then.
    let st = unsafe {
        check(libc::fstat(fd, st.as_mut_ptr()))?;
        st.assume_init()
    };
    Ok((st.st_uid, st.st_gid))
}

/// `fd` as a NUL-terminated decimal string in `buf` (no allocation).
fn fd_name(fd: RawFd, buf: &mut [u8; 16]) -> &CStr {
    let mut n = fd.unsigned_abs();
    let mut digits = [0u8; 12];
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 || len == digits.len() {
            break;
        }
    }
    for (i, d) in digits[..len].iter().rev().enumerate() {
        buf[i] = *d;
    }
    buf[len] = 0;
    CStr::from_bytes_until_nul(&buf[..]).unwrap_or(c"")
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn seccomp_fd_name_formats_decimal() {
        let mut buf = [0u8; 16];
        assert_eq!(fd_name(0, &mut buf).to_bytes(), b"0");
        assert_eq!(fd_name(7, &mut buf).to_bytes(), b"7");
        assert_eq!(fd_name(1234, &mut buf).to_bytes(), b"1234");
        assert_eq!(fd_name(i32::MAX, &mut buf).to_bytes(), b"2147483647");
    }

    #[test]
    fn seccomp_owners_need_both_ids_mapped() {
        let owners = Owners {
            uids: &[(1_000_000, 1_065_536)],
            gids: &[(1_000_000, 1_065_536)],
        };
        assert!(owners.maps(1_000_000, 1_000_000));
        assert!(owners.maps(1_065_535, 1_000_005));
        assert!(!owners.maps(1_065_536, 1_000_000));
        assert!(!owners.maps(1_000_000, 0));
        assert!(!owners.maps(0, 1_000_000));
    }
}
