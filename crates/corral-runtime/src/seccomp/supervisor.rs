//! The monitor's side: receive a notification, decide, emulate or decline, answer.

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use libseccomp::{ScmpArch, ScmpSyscall};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use super::filter::{MKNOD_SYSCALLS, SETXATTR_SYSCALLS};
use super::sys::{self, cap_bit, HelperJob, HelperOp, Owners, XattrTarget};
use super::SeccompError;
use crate::spec::IdMap;

/// The character devices a container may create (LXD's list): null, zero, full, random,
/// urandom, tty, console. (The whiteout, 0:0, needs no help: see the module docs.)
pub(super) const SAFE_DEVICES: &[(u32, u32)] = &[(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 1)];

/// The only xattr the monitor sets: overlayfs's opaque-directory marker, value `y`.
const OPAQUE_XATTR: &[u8] = b"trusted.overlay.opaque";

/// `PATH_MAX`, counting the NUL, as the kernel's `getname`.
const PATH_MAX: usize = libc::PATH_MAX as usize;
/// `XATTR_NAME_MAX` plus the NUL.
const XATTR_NAME_BUF: usize = 256;

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const AUDIT_ARCH_I386: u32 = 0x4000_0003;
/// x32 syscalls go through the x86_64 entry with this bit set in the number.
const X32_SYSCALL_BIT: i32 = 0x4000_0000;

/// How long a helper child may take before it is killed and the caller gets `EIO`.
const HELPER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Abi {
    X8664,
    X86,
    X32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Mknod,
    Mknodat,
    Setxattr,
    Lsetxattr,
    Fsetxattr,
}

impl Call {
    fn from_name(name: &str) -> Option<Call> {
        Some(match name {
            "mknod" => Call::Mknod,
            "mknodat" => Call::Mknodat,
            "setxattr" => Call::Setxattr,
            "lsetxattr" => Call::Lsetxattr,
            "fsetxattr" => Call::Fsetxattr,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Call::Mknod => "mknod",
            Call::Mknodat => "mknodat",
            Call::Setxattr => "setxattr",
            Call::Lsetxattr => "lsetxattr",
            Call::Fsetxattr => "fsetxattr",
        }
    }
}

/// The answer to one notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// Let the kernel run the real syscall with the caller's own credentials.
    Continue,
    /// The syscall returns 0.
    Success,
    /// The syscall fails with this errno.
    Fail(Errno),
}

/// Handles the notifications of one container's filter (see the module docs).
///
/// The monitor polls [`Supervisor::as_fd`] for `POLLIN` and calls [`Supervisor::handle_one`]
/// once per wake-up. `handle_one` never blocks on an empty queue (it returns `Ok` at once), but
/// it does block while a helper child works (normally milliseconds, at most 10 s). `POLLHUP`
/// without `POLLIN` means no process uses the filter any more (the container is gone): stop
/// polling the fd then, or the poll loop spins.
#[derive(Debug)]
pub struct Supervisor {
    notify: OwnedFd,
    idmap: Option<IdMap>,
    /// Syscall numbers of the intercepted calls, per ABI.
    table: Vec<(Abi, i32, Call)>,
}

impl Supervisor {
    /// `notify_fd` is the listener [`super::install`] returned in the container; `idmap` the
    /// container's (`None` for a privileged container). Owners of files the monitor writes for
    /// the container must be mapped both in the caller's own user namespace and in `idmap`.
    pub fn new(notify_fd: OwnedFd, idmap: Option<IdMap>) -> Self {
        let mut table = Vec::new();
        for name in MKNOD_SYSCALLS.iter().chain(SETXATTR_SYSCALLS) {
            let Some(call) = Call::from_name(name) else {
                continue;
            };
            for (abi, arch) in [
                (Abi::X8664, ScmpArch::X8664),
                (Abi::X86, ScmpArch::X86),
                (Abi::X32, ScmpArch::X32),
            ] {
                match ScmpSyscall::from_name_by_arch(name, arch) {
                    Ok(nr) => table.push((abi, nr.as_raw_syscall(), call)),
                    // Unknown numbers get CONTINUE: declining is always safe.
                    Err(e) => {
                        tracing::warn!(syscall = name, ?arch, error = %e, "seccomp: cannot resolve syscall")
                    }
                }
            }
        }
        Supervisor {
            notify: notify_fd,
            idmap,
            table,
        }
    }

    /// The listener, for the monitor's poll loop.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.notify.as_fd()
    }

    /// Receives one notification, if one is pending, and answers it. Every received
    /// notification is answered (with an errno if anything goes wrong on our side); the caller
    /// is never left blocked. Errors are about the listener itself (receiving or answering
    /// failed for another reason than the caller having died meanwhile).
    pub fn handle_one(&mut self) -> Result<(), SeccompError> {
        let fd = self.notify.as_fd();
        if !sys::poll_readable(fd).map_err(|source| SeccompError::Receive { source })? {
            return Ok(());
        }
        let req = match sys::notif_recv(fd) {
            Ok(req) => req,
            // The caller was killed between the wake-up and now: nothing to answer.
            Err(Errno::ENOENT) => return Ok(()),
            Err(source) => return Err(SeccompError::Receive { source }),
        };
        let call = self.identify(&req.data);
        let answer = match call {
            Some((abi, call)) => self.decide(&req, abi, call),
            None => {
                tracing::warn!(
                    nr = req.data.nr,
                    arch = req.data.arch,
                    "seccomp: unexpected notification, continuing it"
                );
                Answer::Continue
            }
        };
        let syscall = call.map_or("unknown syscall", |(_, c)| c.name());
        tracing::debug!(pid = req.pid, syscall, ?answer, "seccomp notification");
        let mut resp = libc::seccomp_notif_resp {
            id: req.id,
            val: 0,
            error: 0,
            flags: 0,
        };
        match answer {
            Answer::Continue => resp.flags = libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32,
            Answer::Success => {}
            Answer::Fail(errno) => resp.error = -(errno as i32),
        }
        match sys::notif_send(fd, &resp) {
            Ok(()) => Ok(()),
            // The caller died or was interrupted by a signal while we worked.
            Err(Errno::ENOENT) => Ok(()),
            Err(source) => Err(SeccompError::Respond {
                syscall,
                pid: req.pid,
                source,
            }),
        }
    }

    fn identify(&self, data: &libc::seccomp_data) -> Option<(Abi, Call)> {
        let abi = match data.arch {
            AUDIT_ARCH_X86_64 if data.nr & X32_SYSCALL_BIT != 0 => Abi::X32,
            AUDIT_ARCH_X86_64 => Abi::X8664,
            AUDIT_ARCH_I386 => Abi::X86,
            _ => return None,
        };
        self.table
            .iter()
            .find(|&&(a, nr, _)| a == abi && nr == data.nr)
            .map(|&(a, _, call)| (a, call))
    }

    fn decide(&self, req: &libc::seccomp_notif, abi: Abi, call: Call) -> Answer {
        // The i386 entry only uses the low 32 bits of each register (a 64-bit process using
        // `int $0x80` may leave garbage above them).
        let mut args = req.data.args;
        if abi == Abi::X86 {
            args.iter_mut().for_each(|a| *a &= 0xffff_ffff);
        }
        let result = match call {
            Call::Mknod => self.mknod(req, libc::AT_FDCWD, args[0], args[1], args[2]),
            Call::Mknodat => self.mknod(req, args[0] as u32 as i32, args[1], args[2], args[3]),
            Call::Setxattr | Call::Lsetxattr => {
                let target = Target::Path {
                    ptr: args[0],
                    follow: call == Call::Setxattr,
                };
                self.setxattr(req, target, args[1], args[2], args[3], args[4])
            }
            Call::Fsetxattr => self.setxattr(
                req,
                Target::Fd(args[0] as u32 as i32),
                args[1],
                args[2],
                args[3],
                args[4],
            ),
        };
        result.unwrap_or_else(Answer::Fail)
    }

    /// `mknodat(dirfd, path, mode, dev)` (`mknod` is `dirfd` = `AT_FDCWD`).
    fn mknod(&self, req: &libc::seccomp_notif, dirfd: i32, path: u64, mode: u64, dev: u64) -> Result<Answer, Errno> {
        // The kernel's own truncations: `umode_t` is 16 bits, `dev` an `unsigned int`.
        let mode = libc::mode_t::from(mode as u16);
        let (major, minor) = decode_dev(dev as u32);
        if mode & libc::S_IFMT != libc::S_IFCHR || !SAFE_DEVICES.contains(&(major, minor)) {
            return Ok(Answer::Continue);
        }
        let caller = Caller::attach(self.notify.as_fd(), req)?;
        let status = caller.status()?;
        if status.cap_eff & cap_bit(sys::CAP_MKNOD) == 0 {
            // The kernel would refuse it to this caller even if it were privileged.
            return Ok(Answer::Continue);
        }
        let owners = caller.owners(self.idmap)?;
        let mem = caller.open("mem", OFlag::O_RDONLY)?;
        let mntns = caller.open("ns/mnt", OFlag::O_RDONLY)?;
        let root = caller.open("root", OFlag::O_PATH | OFlag::O_DIRECTORY)?;
        let path = read_cstring(&mem, path, PATH_MAX)?.ok_or(Errno::ENAMETOOLONG)?;
        let base = caller.base(path.to_bytes(), dirfd)?;
        let (dir, name) = split_parent(path.to_bytes());
        let (dir, name) = (cstring(dir)?, cstring(name)?);
        // Everything above was read from the process that is still waiting for this answer.
        caller.still_waiting()?;

        let caps = sys::capget().map_err(internal("capget"))?;
        let dac = status.cap_eff & (cap_bit(sys::CAP_DAC_OVERRIDE) | cap_bit(sys::CAP_DAC_READ_SEARCH));
        let mknod = cap_bit(sys::CAP_MKNOD);
        let job = HelperJob {
            mntns: mntns.as_fd(),
            root: root.as_fd(),
            base: base.as_ref().map(|fd| fd.as_fd()),
            fsuid: status.fsuid,
            fsgid: status.fsgid,
            groups: &status.groups,
            umask: status.umask,
            caps,
            lookup_caps: mknod | dac,
            mapped_caps: mknod | dac,
            unmapped_caps: mknod,
            owners: owners.borrow(),
            op: HelperOp::Mknod {
                dir: &dir,
                name: &name,
                mode,
                dev: libc::makedev(major, minor),
            },
        };
        sys::run_helper(&job, HELPER_TIMEOUT)?;
        Ok(Answer::Success)
    }

    /// `setxattr`/`lsetxattr`/`fsetxattr(target, name, value, size, flags)`.
    fn setxattr(
        &self,
        req: &libc::seccomp_notif,
        target: Target,
        name: u64,
        value: u64,
        size: u64,
        flags: u64,
    ) -> Result<Answer, Errno> {
        if size != 1 {
            return Ok(Answer::Continue);
        }
        let caller = Caller::attach(self.notify.as_fd(), req)?;
        let mem = caller.open("mem", OFlag::O_RDONLY)?;
        let Some(xname) = read_cstring(&mem, name, XATTR_NAME_BUF)? else {
            return Ok(Answer::Continue);
        };
        let mut xvalue = [0u8; 1];
        read_mem(&mem, value, &mut xvalue)?;
        if xname.to_bytes() != OPAQUE_XATTR || xvalue != *b"y" {
            return Ok(Answer::Continue);
        }
        let status = caller.status()?;
        if status.cap_eff & cap_bit(sys::CAP_SYS_ADMIN) == 0 {
            // trusted.* needs CAP_SYS_ADMIN; the kernel refuses it.
            return Ok(Answer::Continue);
        }
        let owners = caller.owners(self.idmap)?;
        let mntns = caller.open("ns/mnt", OFlag::O_RDONLY)?;
        let root = caller.open("root", OFlag::O_PATH | OFlag::O_DIRECTORY)?;
        let (path, base, fd) = match target {
            Target::Path { ptr, follow } => {
                let path = read_cstring(&mem, ptr, PATH_MAX)?.ok_or(Errno::ENAMETOOLONG)?;
                let base = caller.base(path.to_bytes(), libc::AT_FDCWD)?;
                (Some((path, follow)), base, None)
            }
            Target::Fd(fd) => (None, None, Some(caller.fd_target(fd)?)),
        };
        caller.still_waiting()?;

        let caps = sys::capget().map_err(internal("capget"))?;
        let dac = status.cap_eff & (cap_bit(sys::CAP_DAC_OVERRIDE) | cap_bit(sys::CAP_DAC_READ_SEARCH));
        let admin = cap_bit(sys::CAP_SYS_ADMIN);
        let target = match (&path, &fd) {
            (Some((path, follow)), _) => XattrTarget::Path { path, follow: *follow },
            (None, Some(fd)) => XattrTarget::Fd(fd.as_fd()),
            (None, None) => return Err(Errno::EBADF),
        };
        let job = HelperJob {
            mntns: mntns.as_fd(),
            root: root.as_fd(),
            base: base.as_ref().map(|fd| fd.as_fd()),
            fsuid: status.fsuid,
            fsgid: status.fsgid,
            groups: &status.groups,
            umask: status.umask,
            caps,
            lookup_caps: admin | dac,
            mapped_caps: admin,
            unmapped_caps: 0,
            owners: owners.borrow(),
            op: HelperOp::SetXattr {
                target,
                name: &xname,
                value: &xvalue,
                flags: flags as u32 as i32,
            },
        };
        sys::run_helper(&job, HELPER_TIMEOUT)?;
        Ok(Answer::Success)
    }
}

#[derive(Debug, Clone, Copy)]
enum Target {
    Path { ptr: u64, follow: bool },
    Fd(i32),
}

/// Logs an unexpected failure on the monitor's side; the caller gets `EPERM`.
fn internal(step: &'static str) -> impl FnOnce(Errno) -> Errno {
    move |e| {
        tracing::warn!(step, error = %e, "seccomp: cannot emulate syscall");
        Errno::EPERM
    }
}

fn cstring(bytes: &[u8]) -> Result<CString, Errno> {
    CString::new(bytes).map_err(|_| Errno::EINVAL)
}

/// Host id ranges `[start, end)` whose files the caller may be helped with.
struct OwnerRanges {
    uids: Vec<(u64, u64)>,
    gids: Vec<(u64, u64)>,
}

impl OwnerRanges {
    fn borrow(&self) -> Owners<'_> {
        Owners {
            uids: &self.uids,
            gids: &self.gids,
        }
    }
}

/// The calling process, through a handle on its `/proc/<pid>` directory: files opened relative
/// to it belong to that process or fail, even if the pid is reused.
struct Caller<'a> {
    notify: BorrowedFd<'a>,
    id: u64,
    pid: u32,
    dir: OwnedFd,
}

impl<'a> Caller<'a> {
    fn attach(notify: BorrowedFd<'a>, req: &libc::seccomp_notif) -> Result<Self, Errno> {
        if req.pid == 0 {
            // The caller is not visible in our pid namespace.
            return Err(internal("find the caller")(Errno::ESRCH));
        }
        let path = format!("/proc/{}", req.pid);
        let dir = nix::fcntl::open(
            path.as_str(),
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(internal("open /proc/<pid>"))?;
        let caller = Caller {
            notify,
            id: req.id,
            pid: req.pid,
            dir,
        };
        // The directory we opened is the caller's, not a new process that reused its pid.
        caller.still_waiting()?;
        Ok(caller)
    }

    fn still_waiting(&self) -> Result<(), Errno> {
        sys::notif_id_valid(self.notify, self.id).map_err(|e| {
            tracing::debug!(pid = self.pid, error = %e, "seccomp: caller gone");
            Errno::ENOENT
        })
    }

    fn open(&self, name: &str, flags: OFlag) -> Result<OwnedFd, Errno> {
        nix::fcntl::openat(&self.dir, name, flags | OFlag::O_CLOEXEC, Mode::empty()).map_err(|e| {
            tracing::warn!(pid = self.pid, file = name, error = %e, "seccomp: cannot open the caller's /proc file");
            Errno::EPERM
        })
    }

    fn read(&self, name: &str) -> Result<String, Errno> {
        let mut text = String::new();
        File::from(self.open(name, OFlag::O_RDONLY)?)
            .read_to_string(&mut text)
            .map_err(|e| {
                tracing::warn!(pid = self.pid, file = name, error = %e, "seccomp: cannot read the caller's /proc file");
                Errno::EPERM
            })?;
        Ok(text)
    }

    fn status(&self) -> Result<Status, Errno> {
        let text = self.read("status")?;
        parse_status(&text).ok_or_else(|| internal("parse /proc/<pid>/status")(Errno::EINVAL))
    }

    /// Host uid and gid ranges the caller's user namespace maps, intersected with `idmap`.
    fn owners(&self, idmap: Option<IdMap>) -> Result<OwnerRanges, Errno> {
        let uids = parse_id_map(&self.read("uid_map")?);
        let gids = parse_id_map(&self.read("gid_map")?);
        Ok(match idmap {
            None => OwnerRanges { uids, gids },
            Some(m) => OwnerRanges {
                uids: intersect(&uids, u64::from(m.host_uid), u64::from(m.size)),
                gids: intersect(&gids, u64::from(m.host_gid), u64::from(m.size)),
            },
        })
    }

    /// Where a relative `path` starts: the caller's cwd, or its `dirfd`. `None` if absolute.
    fn base(&self, path: &[u8], dirfd: i32) -> Result<Option<OwnedFd>, Errno> {
        if path.is_empty() {
            return Err(Errno::ENOENT);
        }
        if path[0] == b'/' {
            return Ok(None);
        }
        if dirfd == libc::AT_FDCWD {
            return self.open("cwd", OFlag::O_PATH | OFlag::O_DIRECTORY).map(Some);
        }
        if dirfd < 0 {
            return Err(Errno::EBADF);
        }
        let link = format!("fd/{dirfd}");
        match nix::fcntl::openat(
            &self.dir,
            link.as_str(),
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => Ok(Some(fd)),
            Err(Errno::ENOENT) => Err(Errno::EBADF),
            Err(Errno::ENOTDIR) => Err(Errno::ENOTDIR),
            Err(e) => Err(internal("open /proc/<pid>/fd/<dirfd>")(e)),
        }
    }

    /// The file behind the caller's `fd` (for `fsetxattr`), as an `O_PATH` handle.
    fn fd_target(&self, fd: i32) -> Result<OwnedFd, Errno> {
        if fd < 0 {
            return Err(Errno::EBADF);
        }
        // fsetxattr on an O_PATH fd fails with EBADF; so does ours.
        let info = match nix::fcntl::openat(
            &self.dir,
            format!("fdinfo/{fd}").as_str(),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(f) => f,
            Err(Errno::ENOENT) => return Err(Errno::EBADF),
            Err(e) => return Err(internal("open /proc/<pid>/fdinfo/<fd>")(e)),
        };
        let mut text = String::new();
        File::from(info)
            .read_to_string(&mut text)
            .map_err(|_| internal("read /proc/<pid>/fdinfo/<fd>")(Errno::EIO))?;
        let flags =
            parse_fdinfo_flags(&text).ok_or_else(|| internal("parse /proc/<pid>/fdinfo/<fd>")(Errno::EINVAL))?;
        if flags & libc::O_PATH as u32 != 0 {
            return Err(Errno::EBADF);
        }
        match nix::fcntl::openat(
            &self.dir,
            format!("fd/{fd}").as_str(),
            OFlag::O_PATH | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(f) => Ok(f),
            Err(Errno::ENOENT) => Err(Errno::EBADF),
            Err(e) => Err(internal("open /proc/<pid>/fd/<fd>")(e)),
        }
    }
}

/// Reads a NUL-terminated string of at most `max` bytes (NUL included) at `addr` in the
/// caller's memory. `Ok(None)`: no NUL within `max` bytes. `EFAULT` for unreadable memory.
fn read_cstring(mem: &OwnedFd, addr: u64, max: usize) -> Result<Option<CString>, Errno> {
    const PAGE: u64 = 4096;
    let mut out = Vec::new();
    let mut addr = addr;
    while out.len() < max {
        // Never read across a page boundary in one go: the next page may be unmapped while
        // the string ends on this one.
        let in_page = (PAGE - addr % PAGE) as usize;
        let mut buf = vec![0u8; in_page.min(max - out.len())];
        read_mem(mem, addr, &mut buf)?;
        if let Some(nul) = buf.iter().position(|&b| b == 0) {
            out.extend_from_slice(&buf[..nul]);
            return Ok(Some(CString::new(out).map_err(|_| Errno::EFAULT)?));
        }
        out.extend_from_slice(&buf);
        addr = addr.checked_add(buf.len() as u64).ok_or(Errno::EFAULT)?;
    }
    Ok(None)
}

/// Fills `buf` from the caller's memory at `addr`, or `EFAULT`.
fn read_mem(mem: &OwnedFd, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
    let mut done = 0;
    while done < buf.len() {
        let offset = addr
            .checked_add(done as u64)
            .and_then(|a| libc::off_t::try_from(a).ok())
            .ok_or(Errno::EFAULT)?;
        match nix::sys::uio::pread(mem, &mut buf[done..], offset) {
            Ok(0) => return Err(Errno::EFAULT),
            Ok(n) => done += n,
            Err(Errno::EINTR) => continue,
            Err(_) => return Err(Errno::EFAULT),
        }
    }
    Ok(())
}

/// The kernel's `new_decode_dev` of a 32-bit device number.
fn decode_dev(dev: u32) -> (u32, u32) {
    let major = (dev & 0xfff00) >> 8;
    let minor = (dev & 0xff) | ((dev >> 12) & 0xfff00);
    (major, minor)
}

/// Splits a path into the directory to open and the last component to create in it, keeping
/// the kernel's semantics for the last component (trailing slashes, `.`, `..` are left to it).
fn split_parent(path: &[u8]) -> (&[u8], &[u8]) {
    let end = path.iter().rposition(|&b| b != b'/').map_or(0, |i| i + 1);
    if end == 0 {
        // Empty, or only slashes ("/"): let mknodat see it as it is.
        return (b".", path);
    }
    match path[..end].iter().rposition(|&b| b == b'/') {
        Some(slash) => (&path[..=slash], &path[slash + 1..]),
        None => (b".", path),
    }
}

/// What we need from `/proc/<pid>/status` (ids as seen from the monitor, i.e. host ids).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Status {
    fsuid: u32,
    fsgid: u32,
    groups: Vec<libc::gid_t>,
    umask: libc::mode_t,
    cap_eff: u64,
}

fn parse_status(text: &str) -> Option<Status> {
    let field = |key: &str| text.lines().find_map(|line| line.strip_prefix(key)).map(str::trim);
    // "Uid:\treal\teffective\tsaved\tfs"
    let fourth = |key: &str| field(key)?.split_whitespace().nth(3)?.parse::<u32>().ok();
    Some(Status {
        fsuid: fourth("Uid:")?,
        fsgid: fourth("Gid:")?,
        groups: field("Groups:")?
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?,
        umask: libc::mode_t::from_str_radix(field("Umask:")?, 8).ok()?,
        cap_eff: u64::from_str_radix(field("CapEff:")?, 16).ok()?,
    })
}

/// The host-side ranges `[start, end)` of a `uid_map`/`gid_map` as read by the monitor.
fn parse_id_map(text: &str) -> Vec<(u64, u64)> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace().map(str::parse::<u64>);
            let (_inside, outside, count) = (f.next()?.ok()?, f.next()?.ok()?, f.next()?.ok()?);
            Some((outside, outside + count))
        })
        .collect()
}

fn intersect(ranges: &[(u64, u64)], start: u64, size: u64) -> Vec<(u64, u64)> {
    let end = start + size;
    ranges
        .iter()
        .map(|&(s, e)| (s.max(start), e.min(end)))
        .filter(|&(s, e)| s < e)
        .collect()
}

/// The `flags:` line of `/proc/<pid>/fdinfo/<fd>` (octal).
fn parse_fdinfo_flags(text: &str) -> Option<u32> {
    let value = text.lines().find_map(|l| l.strip_prefix("flags:"))?.trim();
    u32::from_str_radix(value, 8).ok()
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn seccomp_read_cstring_stops_at_nul_page_end_and_max() {
        const PAGE: usize = 4096;
        // SAFETY: a fresh anonymous mapping of two pages; the second is unmapped right away so
        // that reads running into it fail. Only this test touches the first page.
        let base = unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                2 * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            assert_eq!(libc::munmap(p.cast::<u8>().add(PAGE).cast(), PAGE), 0);
            p.cast::<u8>()
        };
        let mem = nix::fcntl::open("/proc/self/mem", OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty()).unwrap();
        let put = |offset: usize, bytes: &[u8]| {
            assert!(offset + bytes.len() <= PAGE);
            // SAFETY: within the first, writable page of the mapping.
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), base.add(offset), bytes.len()) };
            base as u64 + offset as u64
        };
        // Ends exactly at the page end: read without touching the unmapped page.
        let at_end = put(PAGE - 4, b"abc\0");
        assert_eq!(
            read_cstring(&mem, at_end, PATH_MAX).unwrap().unwrap().as_bytes(),
            b"abc"
        );
        // Runs into the unmapped page: EFAULT, as the kernel would say.
        let unterminated = put(PAGE - 4, b"abcd");
        assert_eq!(read_cstring(&mem, unterminated, PATH_MAX), Err(Errno::EFAULT));
        // Longer than the limit.
        let long = put(0, b"0123456789\0");
        assert_eq!(read_cstring(&mem, long, 5), Ok(None));
        assert_eq!(read_cstring(&mem, long, 11).unwrap().unwrap().as_bytes(), b"0123456789");
        assert_eq!(read_cstring(&mem, 0, PATH_MAX), Err(Errno::EFAULT));
        // SAFETY: unmaps the page mapped above; nothing refers to it any more.
        assert_eq!(unsafe { libc::munmap(base.cast(), PAGE) }, 0);
    }

    #[test]
    fn seccomp_decode_dev_matches_makedev() {
        for (major, minor) in [(1, 3), (5, 1), (8, 0), (7, 0), (0, 0), (259, 70000)] {
            let dev = libc::makedev(major, minor) as u32;
            assert_eq!(decode_dev(dev), (major, minor), "{major}:{minor}");
        }
    }

    #[test]
    fn seccomp_split_parent_keeps_last_component() {
        let cases: &[(&str, &str, &str)] = &[
            ("null", ".", "null"),
            ("/dev/null", "/dev/", "null"),
            ("/null", "/", "null"),
            ("a/b/c", "a/b/", "c"),
            ("a//b", "a//", "b"),
            ("dev/null/", "dev/", "null/"),
            ("/", ".", "/"),
            ("..", ".", ".."),
            ("a/..", "a/", ".."),
        ];
        for (path, dir, name) in cases {
            let (d, n) = split_parent(path.as_bytes());
            assert_eq!((d, n), (dir.as_bytes(), name.as_bytes()), "{path}");
        }
    }

    #[test]
    fn seccomp_parse_status_reads_fs_ids_groups_umask_caps() {
        let text = "Name:\tsh\nUmask:\t0027\nState:\tS (sleeping)\nUid:\t1000000\t1000001\t1000002\t1000003\n\
                    Gid:\t1000004\t1000005\t1000006\t1000007\nFDSize:\t64\nGroups:\t1000010 1000020 \n\
                    CapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\nCapEff:\t0000000008000002\n";
        let st = parse_status(text).unwrap();
        assert_eq!(
            st,
            Status {
                fsuid: 1_000_003,
                fsgid: 1_000_007,
                groups: vec![1_000_010, 1_000_020],
                umask: 0o027,
                cap_eff: (1 << 27) | (1 << 1),
            }
        );
        let no_groups = text.replace("Groups:\t1000010 1000020 ", "Groups:\t");
        assert_eq!(parse_status(&no_groups).unwrap().groups, Vec::<u32>::new());
        assert!(parse_status(&text.replace("Umask", "Umusk")).is_none());
    }

    #[test]
    fn seccomp_id_map_ranges_and_intersection() {
        let ranges = parse_id_map("         0    1000000      65536\n     65536          0          1\n");
        assert_eq!(ranges, vec![(1_000_000, 1_065_536), (0, 1)]);
        assert_eq!(intersect(&ranges, 1_000_000, 65536), vec![(1_000_000, 1_065_536)]);
        assert_eq!(intersect(&ranges, 1_000_100, 10), vec![(1_000_100, 1_000_110)]);
        assert_eq!(intersect(&ranges, 2_000_000, 65536), vec![]);
    }

    #[test]
    fn seccomp_fdinfo_flags_are_octal() {
        assert_eq!(
            parse_fdinfo_flags("pos:\t0\nflags:\t012100000\nmnt_id:\t30\n"),
            Some(0o12100000)
        );
        assert_eq!(parse_fdinfo_flags("pos:\t0\n"), None);
    }

    #[test]
    fn seccomp_syscall_table_covers_all_abis() {
        // Needs no fd of any meaning: the table is built from names.
        let fd = nix::fcntl::open("/dev/null", OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty()).unwrap();
        let sup = Supervisor::new(fd, None);
        let nr = |abi, call| {
            sup.table
                .iter()
                .find(|&&(a, _, c)| a == abi && c == call)
                .map(|&(_, nr, _)| nr)
        };
        assert_eq!(nr(Abi::X8664, Call::Mknod), Some(libc::SYS_mknod as i32));
        assert_eq!(nr(Abi::X8664, Call::Mknodat), Some(libc::SYS_mknodat as i32));
        assert_eq!(nr(Abi::X8664, Call::Fsetxattr), Some(libc::SYS_fsetxattr as i32));
        assert_eq!(nr(Abi::X86, Call::Mknod), Some(14));
        assert_eq!(nr(Abi::X86, Call::Mknodat), Some(297));
        assert_eq!(nr(Abi::X86, Call::Setxattr), Some(226));
        assert_eq!(
            nr(Abi::X32, Call::Mknod),
            Some(X32_SYSCALL_BIT | libc::SYS_mknod as i32)
        );
        assert_eq!(sup.table.len(), 15);
    }
}
