//! Tests that load filters. A filter is permanent for its process, so each one runs in a forked
//! child that reports its results through a pipe; the test process never loads a filter. They
//! need root (user namespaces with arbitrary maps, `/proc/<pid>/mem`, `setns`).

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use libseccomp::ScmpArch;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sched::CloneFlags;
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{ForkResult, Gid, Uid};

use super::filter::build_filter;
use super::sys::{self, cap_bit};
use super::*;
use crate::spec::{IdMap, SeccompPolicy};

const EPERM: i64 = -(libc::EPERM as i64);

// ---------------------------------------------------------------------------------------------
// Harness

/// A scratch directory under /tmp, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("corral-seccomp-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        TempDir(path)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn cstr(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).unwrap()
}

/// A raw syscall's result: the value, or `-errno`.
fn sysret(ret: libc::c_long) -> i64 {
    if ret == -1 {
        -i64::from(Errno::last_raw())
    } else {
        ret
    }
}

/// Forks; the child runs `body` (with a watchdog: a syscall left blocked kills it) and sends back
/// the numbers it returns. Panics if the child fails or dies.
fn in_child(body: impl FnOnce() -> Vec<i64>) -> Vec<i64> {
    let (rd, wr) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
    // SAFETY: the child only runs `body` and leaves through `_exit`; glibc's malloc is usable
    // after fork, and the test threads it leaves behind hold no lock `body` needs.
    match unsafe { nix::unistd::fork() }.unwrap() {
        ForkResult::Child => {
            drop(rd);
            // SAFETY: alarm(2) only arms a timer for this process.
            unsafe { libc::alarm(30) };
            let code = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
                Ok(values) => {
                    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_ne_bytes()).collect();
                    let _ = File::from(wr).write_all(&bytes);
                    0
                }
                Err(_) => 101,
            };
            // SAFETY: ends the child without running the test harness's state.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(wr);
            let mut bytes = Vec::new();
            File::from(rd).read_to_end(&mut bytes).unwrap();
            assert_eq!(
                waitpid(child, None).unwrap(),
                WaitStatus::Exited(child, 0),
                "test child failed"
            );
            bytes
                .chunks_exact(8)
                .map(|c| i64::from_ne_bytes(c.try_into().unwrap()))
                .collect()
        }
    }
}

/// An i386 syscall through `int $0x80`, which seccomp sees as `AUDIT_ARCH_I386`. Returns the
/// value or `-errno`.
fn int80(nr: u32, a: u32, b: u32, c: u32, d: u32) -> i64 {
    let ret: u32;
    // SAFETY: the compat entry reads eax/ebx/ecx/edx/esi and returns in eax; rbx is reserved by
    // LLVM, so the first argument is swapped in and out of it around the trap (64-bit xchg:
    // rbx comes back whole). The kernel may clear r8-r11, declared clobbered. Pointer arguments
    // passed by the tests are NULL or point into a MAP_32BIT mapping.
    unsafe {
        std::arch::asm!(
            "xchg {a}, rbx",
            "int 0x80",
            "xchg {a}, rbx",
            a = inout(reg) u64::from(a) => _,
            inlateout("eax") nr => ret,
            in("ecx") b,
            in("edx") c,
            in("esi") d,
            out("r8") _, out("r9") _, out("r10") _, out("r11") _,
        );
    }
    i64::from(ret as i32)
}

/// `s` copied (NUL-terminated) into memory below 2 GiB, for i386 syscalls.
fn low_cstr(s: &CStr) -> u32 {
    // SAFETY: a fresh anonymous private mapping; nothing else refers to it.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_32BIT,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    let bytes = s.to_bytes_with_nul();
    assert!(bytes.len() <= 4096);
    // SAFETY: `p` is a writable 4096-byte mapping, `bytes` fits, the regions are distinct.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), p.cast::<u8>(), bytes.len()) };
    u32::try_from(p as usize).expect("MAP_32BIT mapping above 4 GiB")
}

/// Drops `cap` from this (test child) thread's effective set.
fn drop_effective(cap: u32) {
    let caps = sys::capget().unwrap();
    sys::capset_effective(&caps, caps.effective & !cap_bit(cap)).unwrap();
}

/// The container setup the interception tests need: a child in a new user namespace (container
/// uid/gid 0 = host `ID_BASE`, 65536 ids) and mount namespace, running as its root, that
/// installs `policy` and passes the listener to the parent; the parent supervises until the
/// child has run `body` and exited. Returns `body`'s numbers.
fn run_intercepted(policy: SeccompPolicy, body: impl FnOnce() -> Vec<i64>) -> Vec<i64> {
    let (ours, theirs) = nix::sys::socket::socketpair(
        nix::sys::socket::AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .unwrap();
    let (ready_rd, ready_wr) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
    let (go_rd, go_wr) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
    let (res_rd, res_wr) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();

    // SAFETY: as in `in_child`.
    let child = match unsafe { nix::unistd::fork() }.unwrap() {
        ForkResult::Child => {
            // SAFETY: alarm(2) only arms a timer for this process.
            unsafe { libc::alarm(30) };
            let run = || {
                nix::unistd::setgroups(&[]).unwrap();
                nix::sched::unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS).unwrap();
                nix::unistd::write(&ready_wr, b"u").unwrap();
                let mut b = [0u8; 1];
                assert_eq!(nix::unistd::read(&go_rd, &mut b).unwrap(), 1);
                let root = Uid::from_raw(0);
                let root_gid = Gid::from_raw(0);
                nix::unistd::setresgid(root_gid, root_gid, root_gid).unwrap();
                nix::unistd::setresuid(root, root, root).unwrap();
                let listener = install(&policy).unwrap().expect("a listener");
                let fds = [listener.as_raw_fd()];
                nix::sys::socket::sendmsg::<()>(
                    theirs.as_raw_fd(),
                    &[std::io::IoSlice::new(b"fd")],
                    &[ControlMessage::ScmRights(&fds)],
                    MsgFlags::empty(),
                    None,
                )
                .unwrap();
                drop(listener);
                body()
            };
            let code = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
                Ok(values) => {
                    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_ne_bytes()).collect();
                    let _ = nix::unistd::write(&res_wr, &bytes);
                    0
                }
                Err(_) => 101,
            };
            // SAFETY: ends the child without running the test harness's state.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => child,
    };
    drop((theirs, ready_wr, go_rd, res_wr));

    let mut b = [0u8; 1];
    assert_eq!(
        nix::unistd::read(&ready_rd, &mut b).unwrap(),
        1,
        "child did not unshare"
    );
    std::fs::write(format!("/proc/{child}/uid_map"), format!("0 {ID_BASE} 65536\n")).unwrap();
    std::fs::write(format!("/proc/{child}/gid_map"), format!("0 {ID_BASE} 65536\n")).unwrap();
    nix::unistd::write(&go_wr, b"g").unwrap();

    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let mut buf = [0u8; 8];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let msg = nix::sys::socket::recvmsg::<()>(ours.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .expect("no listener from the child");
    let mut received = None;
    for cmsg in msg.cmsgs().unwrap() {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            // SAFETY: SCM_RIGHTS just installed these fds in this process; nothing else owns them.
            received = fds.first().map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
    let mut sup = Supervisor::new(
        received.expect("no fd in the message"),
        Some(IdMap::default_unprivileged()),
    );

    let deadline = Instant::now() + Duration::from_secs(40);
    let mut out = Vec::new();
    loop {
        assert!(Instant::now() < deadline, "interception test timed out");
        let mut fds = [
            PollFd::new(sup.as_fd(), PollFlags::POLLIN),
            PollFd::new(res_rd.as_fd(), PollFlags::POLLIN),
        ];
        match nix::poll::poll(&mut fds, PollTimeout::from(200u16)) {
            Err(Errno::EINTR) | Ok(0) => continue,
            r => {
                r.unwrap();
            }
        }
        let notified = fds[0].revents().unwrap().contains(PollFlags::POLLIN);
        let results = !fds[1].revents().unwrap().is_empty();
        if notified {
            sup.handle_one().unwrap();
        }
        if results {
            let mut chunk = [0u8; 512];
            match nix::unistd::read(&res_rd, &mut chunk).unwrap() {
                0 => break,
                n => out.extend_from_slice(&chunk[..n]),
            }
        }
    }
    assert_eq!(
        waitpid(child, None).unwrap(),
        WaitStatus::Exited(child, 0),
        "intercepted child failed"
    );
    out.chunks_exact(8)
        .map(|c| i64::from_ne_bytes(c.try_into().unwrap()))
        .collect()
}

/// Host uid/gid of the test container's root.
const ID_BASE: u32 = 1_000_000;

fn chown(path: &Path, id: u32) {
    std::os::unix::fs::lchown(path, Some(id), Some(id)).unwrap();
}

fn assert_char_dev(path: &Path, major: u32, minor: u32) -> std::fs::Metadata {
    let md = std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        md.file_type().is_char_device(),
        "{} is not a char device",
        path.display()
    );
    assert_eq!(md.rdev(), libc::makedev(major, minor), "{}", path.display());
    md
}

fn lgetxattr(path: &Path, name: &CStr) -> Option<Vec<u8>> {
    let p = cstr(path);
    let mut buf = [0u8; 64];
    // SAFETY: lgetxattr(2) writes at most `buf.len()` bytes into `buf`; the strings are live.
    let n = unsafe { libc::lgetxattr(p.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (n >= 0).then(|| buf[..n as usize].to_vec())
}

// ---------------------------------------------------------------------------------------------
// The filter

#[test]
fn filter_covers_the_three_x86_abis_without_nnp() {
    let ctx = build_filter(&SeccompPolicy::default()).unwrap();
    for arch in [ScmpArch::X8664, ScmpArch::X86, ScmpArch::X32] {
        assert!(ctx.is_arch_present(arch).unwrap(), "{arch:?} missing from the filter");
    }
    assert!(!ctx.get_ctl_nnp().unwrap(), "the filter would set no_new_privs");
}

#[test]
fn default_deny_list_is_eperm_on_every_abi() {
    let dir = TempDir::new("deny");
    let target = cstr(&dir.0);
    const X32: libc::c_long = 0x4000_0000;
    // Each probe returns the syscall's value or -errno; dummy arguments make the unfiltered
    // calls fail harmlessly (EFAULT, EBADF, EINVAL, or ENOSYS on kernels without modules or
    // kexec) so that a filtered EPERM is distinguishable.
    let probe = |target: &CStr| -> Vec<i64> {
        let null = std::ptr::null::<libc::c_void>();
        let force = libc::MNT_FORCE as libc::c_long;
        // SAFETY: dummy arguments (NULL pointers, invalid fds,
        // too many segments) that the kernel validates and rejects; `target` is a live string.
        unsafe {
            vec![
                sysret(libc::syscall(libc::SYS_init_module, null, 0, null)),
                sysret(libc::syscall(libc::SYS_finit_module, -1, c"".as_ptr(), 0)),
                sysret(libc::syscall(libc::SYS_delete_module, null, 0)),
                sysret(libc::syscall(libc::SYS_kexec_load, 0, 1000, null, 0)),
                sysret(libc::syscall(libc::SYS_kexec_file_load, -1, -1, 0, null, 0)),
                sysret(libc::syscall(libc::SYS_open_by_handle_at, -1, null, 0)),
                sysret(libc::syscall(libc::SYS_umount2, target.as_ptr(), force)),
                sysret(libc::syscall(libc::SYS_umount2, target.as_ptr(), 0)),
                sysret(libc::syscall(libc::SYS_umount2, target.as_ptr(), libc::MNT_DETACH)),
                sysret(libc::syscall(libc::SYS_getpid)),
                // i386: delete_module, umount2 (forced, plain), getpid, kexec_load.
                int80(129, 0, 0, 0, 0),
                int80(52, 0, libc::MNT_FORCE as u32, 0, 0),
                int80(52, 0, 0, 0, 0),
                int80(20, 0, 0, 0, 0),
                int80(283, 0, 1000, 0, 0),
                // x32: delete_module, getpid, init_module.
                sysret(libc::syscall(X32 | 176, null, 0)),
                sysret(libc::syscall(X32 | 39)),
                sysret(libc::syscall(X32 | 175, null, 0, null)),
            ]
        }
    };

    let control = in_child(|| probe(&target));
    let filtered = in_child(|| {
        let listener = install(&SeccompPolicy::default()).unwrap();
        assert!(listener.is_none(), "no interception asked, no listener expected");
        let mut out = probe(&target);
        // SAFETY: prctl(PR_GET_NO_NEW_PRIVS) only reads a flag.
        out.push(i64::from(unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) }));
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        out.push(i64::from(status.lines().any(|l| l == "Seccomp:\t2")));
        out
    });

    let names = [
        "init_module",
        "finit_module",
        "delete_module",
        "kexec_load",
        "kexec_file_load",
        "open_by_handle_at",
        "umount2(MNT_FORCE)",
        "umount2(0)",
        "umount2(MNT_DETACH)",
        "getpid",
        "i386 delete_module",
        "i386 umount2(MNT_FORCE)",
        "i386 umount2(0)",
        "i386 getpid",
        "i386 kexec_load",
        "x32 delete_module",
        "x32 getpid",
        "x32 init_module",
    ];
    for i in [0, 1, 2, 3, 4, 5, 6, 10, 11, 14, 15, 17] {
        assert_eq!(filtered[i], EPERM, "{} not denied", names[i]);
        assert_ne!(
            control[i], EPERM,
            "{} fails with EPERM even unfiltered: the test proves nothing",
            names[i]
        );
    }
    let einval = -i64::from(libc::EINVAL);
    assert_eq!(
        (control[7], filtered[7]),
        (einval, einval),
        "plain umount2 of a non-mount"
    );
    assert_eq!(
        (control[8], filtered[8]),
        (einval, einval),
        "umount2(MNT_DETACH) of a non-mount"
    );
    let efault = -i64::from(libc::EFAULT);
    assert_eq!(
        (control[12], filtered[12]),
        (efault, efault),
        "i386 plain umount2 must reach the kernel"
    );
    assert!(filtered[9] > 0, "getpid broken by the filter: {}", filtered[9]);
    assert_eq!(filtered[13], filtered[9], "i386 getpid broken by the filter");
    // x32 is compiled out of this kernel (ENOSYS) or works; either way the filter neither
    // denies nor kills it (a missing x32 arch would be SIGSYS: the child would not exit 0).
    if control[16] == -i64::from(libc::ENOSYS) {
        assert_eq!(filtered[16], control[16], "x32 getpid changed by the filter");
    } else {
        assert_eq!(filtered[16], filtered[9], "x32 getpid changed by the filter");
    }
    assert_eq!(filtered[18], 0, "no_new_privs was set");
    assert_eq!(filtered[19], 1, "no filter in /proc/self/status");
}

#[test]
fn policy_deny_rejects_unknown_names_and_denies_known_ones() {
    for bad in ["no_such_syscall", "", "kexec_load; true"] {
        let policy = SeccompPolicy {
            deny: vec!["getppid".into(), bad.into()],
            ..SeccompPolicy::default()
        };
        match build_filter(&policy) {
            Err(e @ SeccompError::UnknownSyscall { .. }) => {
                assert!(e.to_string().contains(&format!("{bad:?}")), "{e} does not name {bad:?}");
            }
            other => panic!("{bad:?} accepted: {other:?}"),
        }
    }

    let results = in_child(|| {
        // An unknown name must fail before anything is loaded.
        let policy = SeccompPolicy {
            deny: vec!["no_such_syscall".into()],
            ..SeccompPolicy::default()
        };
        let failed =
            matches!(install(&policy), Err(SeccompError::UnknownSyscall { name }) if name == "no_such_syscall");
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let unfiltered = status.lines().any(|l| l == "Seccomp:\t0");

        // getppid (never fails otherwise), and socketcall, which exists only on i386 (102).
        let policy = SeccompPolicy {
            deny: vec!["getppid".into(), "socketcall".into()],
            ..SeccompPolicy::default()
        };
        install(&policy).unwrap();
        // SAFETY: getppid takes no arguments.
        let ppid = sysret(unsafe { libc::syscall(libc::SYS_getppid) });
        // socketcall(SYS_SOCKET = 1, NULL args): EFAULT if it reaches the kernel.
        let socketcall = int80(102, 1, 0, 0, 0);
        // SAFETY: getpid takes no arguments.
        let pid = sysret(unsafe { libc::syscall(libc::SYS_getpid) });
        vec![i64::from(failed), i64::from(unfiltered), ppid, socketcall, pid]
    });
    assert_eq!(results[0], 1, "install accepted an unknown syscall");
    assert_eq!(results[1], 1, "a filter was loaded despite the error");
    assert_eq!(results[2], EPERM, "getppid not denied");
    assert_eq!(results[3], EPERM, "i386 socketcall not denied");
    assert!(results[4] > 0, "getpid broken");
}

// ---------------------------------------------------------------------------------------------
// Interception, end to end

#[test]
fn mknod_interception_creates_only_safe_nodes_where_the_caller_would() {
    let dir = TempDir::new("mknod");
    let tag = dir.0.file_name().unwrap().to_string_lossy().into_owned();
    // Host paths a broken implementation would create by resolving "/" on the host.
    let host_escapes: Vec<PathBuf> = ["tty", "console", "random"]
        .iter()
        .map(|n| PathBuf::from(format!("/corral-{n}-{tag}")))
        .collect();
    for p in &host_escapes {
        assert!(!p.exists(), "{} exists before the test", p.display());
    }
    chown(&dir.0, ID_BASE);
    for sub in ["sub", "rootonly", "user1000", "chroot"] {
        std::fs::create_dir(dir.join(sub)).unwrap();
        std::fs::set_permissions(dir.join(sub), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    chown(&dir.join("sub"), ID_BASE);
    chown(&dir.join("chroot"), ID_BASE);
    chown(&dir.join("user1000"), ID_BASE + 1000); // container uid 1000: mapped, not the caller
                                                  // "rootonly" stays host root's: unmapped in the container.
    std::os::unix::fs::symlink("/", dir.join("chroot/link")).unwrap();
    std::os::unix::fs::symlink("../../../../../../..", dir.join("chroot/escape")).unwrap();

    let p = |name: &str| cstr(&dir.join(name));
    let (null, sda, loop0, mem, fifo) = (p("null"), p("sda"), p("loop0"), p("mem"), p("fifo"));
    let (rootonly, user1000, i386null, i386sda) = (p("rootonly/null"), p("user1000/full"), p("i386null"), p("i386sda"));
    let whiteout = p("whiteout");
    let (base, sub, chroot) = (p(""), p("sub"), p("chroot"));
    let abs = |n: &str| CString::new(format!("/corral-{n}-{tag}")).unwrap();
    let tty = abs("tty");
    let console_via_link = CString::new(format!("/link/corral-console-{tag}")).unwrap();
    let random_via_escape = CString::new(format!("/escape/corral-random-{tag}")).unwrap();

    let policy = SeccompPolicy {
        intercept_mknod: true,
        ..SeccompPolicy::default()
    };
    let r = run_intercepted(policy, || {
        let chr = libc::S_IFCHR as libc::c_long;
        let blk = libc::S_IFBLK as libc::c_long;
        let dev = |ma, mi| libc::makedev(ma, mi) as libc::c_long;
        let mknod = |path: &CStr, mode: libc::c_long, d: libc::c_long| {
            // SAFETY: mknod(2) with a live NUL-terminated path.
            sysret(unsafe { libc::syscall(libc::SYS_mknod, path.as_ptr(), mode, d) })
        };
        let mknodat = |fd: libc::c_int, path: &CStr, mode: libc::c_long, d: libc::c_long| {
            // SAFETY: mknodat(2) with a live NUL-terminated path.
            sysret(unsafe { libc::syscall(libc::SYS_mknodat, fd, path.as_ptr(), mode, d) })
        };
        // SAFETY: umask(2) only sets this process's mask.
        unsafe { libc::umask(0o027) };
        let mut out = vec![
            mknod(&null, chr | 0o666, dev(1, 3)),
            mknod(&sda, blk | 0o660, dev(8, 0)),
            mknod(&loop0, blk | 0o660, dev(7, 0)),
            mknod(&mem, chr | 0o600, dev(1, 1)),
        ];
        let basefd = nix::fcntl::open(
            base.as_c_str(),
            OFlag::O_PATH | OFlag::O_DIRECTORY,
            nix::sys::stat::Mode::empty(),
        )
        .unwrap();
        out.push(mknodat(basefd.as_raw_fd(), c"zero", chr | 0o666, dev(1, 5)));
        nix::unistd::chdir(sub.as_c_str()).unwrap();
        out.push(mknod(c"urandom", chr | 0o666, dev(1, 9)));
        out.push(mknod(&fifo, libc::S_IFIFO as libc::c_long | 0o644, 0));
        out.push(mknod(&null, chr | 0o666, dev(1, 3)));
        out.push(mknod(&rootonly, chr | 0o666, dev(1, 3)));
        out.push(mknod(&user1000, chr | 0o666, dev(1, 7)));
        // SAFETY: a NULL path: the kernel (here the monitor) must answer EFAULT.
        out.push(sysret(unsafe {
            libc::syscall(libc::SYS_mknod, std::ptr::null::<u8>(), chr | 0o666, dev(1, 3))
        }));
        out.push(mknodat(12345, c"x", chr | 0o666, dev(1, 3)));
        // The i386 ABI is intercepted too.
        out.push(int80(14, low_cstr(&i386null), libc::S_IFCHR | 0o666, 0x103, 0));
        out.push(int80(14, low_cstr(&i386sda), libc::S_IFBLK | 0o666, 0x800, 0));
        // A whiteout is continued: the kernel lets unprivileged users create it.
        out.push(mknod(&whiteout, chr, 0));
        // A chrooted caller: "/" is its root, not the mount namespace's.
        nix::unistd::chroot(chroot.as_c_str()).unwrap();
        nix::unistd::chdir("/").unwrap();
        out.push(mknod(&tty, chr | 0o666, dev(5, 0)));
        out.push(mknod(&console_via_link, chr | 0o666, dev(5, 1)));
        out.push(mknod(&random_via_escape, chr | 0o666, dev(1, 8)));
        // Without CAP_MKNOD in its namespace the caller gets the kernel's EPERM.
        drop_effective(sys::CAP_MKNOD);
        out.push(mknod(c"/nocap", chr | 0o666, dev(1, 3)));
        out
    });

    let escaped: Vec<_> = host_escapes.iter().filter(|p| p.exists()).cloned().collect();
    for p in &escaped {
        let _ = std::fs::remove_file(p);
    }
    assert!(escaped.is_empty(), "nodes created on the host: {escaped:?}");

    let enoent_eacces = |e: i32| -i64::from(e);
    let expected = [
        ("null", 0),
        ("sda (block 8:0)", EPERM),
        ("loop0 (block 7:0)", EPERM),
        ("mem (char 1:1)", EPERM),
        ("zero via mknodat(dirfd)", 0),
        ("urandom relative to cwd", 0),
        ("fifo (continued)", 0),
        ("null again", enoent_eacces(libc::EEXIST)),
        ("in a host-owned directory", enoent_eacces(libc::EACCES)),
        ("in a directory of container uid 1000", 0),
        ("NULL path", enoent_eacces(libc::EFAULT)),
        ("bad dirfd", enoent_eacces(libc::EBADF)),
        ("i386 null", 0),
        ("i386 block 8:0", EPERM),
        ("whiteout (continued)", 0),
        ("absolute in chroot", 0),
        ("through a symlink to / in chroot", 0),
        ("through ../.. in chroot", 0),
        ("without CAP_MKNOD", EPERM),
    ];
    assert_eq!(r.len(), expected.len());
    for (i, (what, want)) in expected.iter().enumerate() {
        assert_eq!(r[i], *want, "mknod {what}: got {}", r[i]);
    }

    let md = assert_char_dev(&dir.join("null"), 1, 3);
    assert_eq!(
        (md.uid(), md.gid()),
        (ID_BASE, ID_BASE),
        "null must belong to the container's root"
    );
    assert_eq!(md.mode() & 0o7777, 0o640, "the caller's umask (027) was not applied");
    for gone in ["sda", "loop0", "mem", "rootonly/null", "i386sda", "chroot/nocap"] {
        assert!(std::fs::symlink_metadata(dir.join(gone)).is_err(), "{gone} was created");
    }
    assert_char_dev(&dir.join("zero"), 1, 5);
    assert_char_dev(&dir.join("sub/urandom"), 1, 9);
    let fifo = std::fs::symlink_metadata(dir.join("fifo")).unwrap();
    assert!(fifo.file_type().is_fifo());
    assert_eq!(fifo.uid(), ID_BASE, "the fifo was not created by the caller itself");
    let full = assert_char_dev(&dir.join("user1000/full"), 1, 7);
    assert_eq!(full.uid(), ID_BASE, "created with the wrong fsuid");
    assert_char_dev(&dir.join("i386null"), 1, 3);
    let wh = assert_char_dev(&dir.join("whiteout"), 0, 0);
    assert_eq!(wh.uid(), ID_BASE, "the whiteout was not created by the caller itself");
    assert_char_dev(&dir.join(&format!("chroot/corral-tty-{tag}")), 5, 0);
    assert_char_dev(&dir.join(&format!("chroot/corral-console-{tag}")), 5, 1);
    assert_char_dev(&dir.join(&format!("chroot/corral-random-{tag}")), 1, 8);
}

#[test]
fn setxattr_interception_sets_only_overlay_opaque_on_container_files() {
    let dir = TempDir::new("xattr");
    chown(&dir.0, ID_BASE);
    std::fs::create_dir(dir.join("dir")).unwrap();
    for f in [
        "file", "plain", "target3", "target4", "fdfile", "pathfile", "hostfile", "nocap",
    ] {
        std::fs::write(dir.join(f), b"").unwrap();
    }
    std::os::unix::fs::symlink("target3", dir.join("link3")).unwrap();
    std::os::unix::fs::symlink("target4", dir.join("link4")).unwrap();
    for f in [
        "dir", "file", "plain", "target3", "target4", "link3", "link4", "fdfile", "pathfile", "nocap",
    ] {
        chown(&dir.join(f), ID_BASE);
    }
    // "hostfile" stays host root's.

    let p = |name: &str| cstr(&dir.join(name));
    let (d, file, plain, link3, link4) = (p("dir"), p("file"), p("plain"), p("link3"), p("link4"));
    let (fdfile, pathfile, hostfile, missing, nocap) =
        (p("fdfile"), p("pathfile"), p("hostfile"), p("missing"), p("nocap"));

    let policy = SeccompPolicy {
        intercept_setxattr: true,
        ..SeccompPolicy::default()
    };
    let r = run_intercepted(policy, || {
        let opaque = c"trusted.overlay.opaque";
        let set = |path: &CStr, name: &CStr, value: &[u8], flags: libc::c_int| {
            // SAFETY: setxattr(2) with live strings and a live value slice.
            sysret(unsafe {
                libc::syscall(
                    libc::SYS_setxattr,
                    path.as_ptr(),
                    name.as_ptr(),
                    value.as_ptr(),
                    value.len(),
                    flags,
                )
            })
        };
        let lset = |path: &CStr| {
            // SAFETY: lsetxattr(2) with live strings and value.
            sysret(unsafe { libc::syscall(libc::SYS_lsetxattr, path.as_ptr(), opaque.as_ptr(), b"y".as_ptr(), 1, 0) })
        };
        let fset = |fd: libc::c_int| {
            // SAFETY: fsetxattr(2) with a live name and value.
            sysret(unsafe { libc::syscall(libc::SYS_fsetxattr, fd, opaque.as_ptr(), b"y".as_ptr(), 1, 0) })
        };
        let open = |path: &CStr, flags| nix::fcntl::open(path, flags, nix::sys::stat::Mode::empty()).unwrap();
        let fd = open(&fdfile, OFlag::O_RDONLY);
        let pathfd = open(&pathfile, OFlag::O_PATH);
        let mut out = vec![
            set(&d, opaque, b"y", 0),
            set(&plain, c"trusted.foo", b"y", 0),
            set(&plain, opaque, b"n", 0),
            set(&file, opaque, b"y", 0),
            lset(&link4),
            set(&link3, opaque, b"y", 0),
            fset(fd.as_raw_fd()),
            fset(pathfd.as_raw_fd()),
            set(&hostfile, opaque, b"y", 0),
            set(&missing, opaque, b"y", 0),
            set(&d, opaque, b"y", libc::XATTR_CREATE),
        ];
        drop_effective(sys::CAP_SYS_ADMIN);
        out.push(set(&nocap, opaque, b"y", 0));
        out
    });

    let err = |e: i32| -i64::from(e);
    let expected = [
        ("opaque on a directory", 0),
        ("trusted.foo", EPERM),
        ("opaque = n", EPERM),
        ("opaque on a file", 0),
        ("lsetxattr on a symlink", 0),
        ("setxattr through a symlink", 0),
        ("fsetxattr", 0),
        ("fsetxattr on an O_PATH fd", err(libc::EBADF)),
        ("on a host-owned file", EPERM),
        ("on a missing file", err(libc::ENOENT)),
        ("XATTR_CREATE on an existing one", err(libc::EEXIST)),
        ("without CAP_SYS_ADMIN", EPERM),
    ];
    assert_eq!(r.len(), expected.len());
    for (i, (what, want)) in expected.iter().enumerate() {
        assert_eq!(r[i], *want, "setxattr {what}: got {}", r[i]);
    }

    let opaque = c"trusted.overlay.opaque";
    let y = Some(b"y".to_vec());
    assert_eq!(lgetxattr(&dir.join("dir"), opaque), y);
    assert_eq!(lgetxattr(&dir.join("file"), opaque), y);
    assert_eq!(lgetxattr(&dir.join("plain"), opaque), None);
    assert_eq!(lgetxattr(&dir.join("plain"), c"trusted.foo"), None);
    assert_eq!(
        lgetxattr(&dir.join("link4"), opaque),
        y,
        "lsetxattr must set it on the symlink"
    );
    assert_eq!(
        lgetxattr(&dir.join("target4"), opaque),
        None,
        "lsetxattr followed the symlink"
    );
    assert_eq!(
        lgetxattr(&dir.join("target3"), opaque),
        y,
        "setxattr must follow the symlink"
    );
    assert_eq!(
        lgetxattr(&dir.join("link3"), opaque),
        None,
        "setxattr set it on the symlink"
    );
    assert_eq!(lgetxattr(&dir.join("fdfile"), opaque), y);
    assert_eq!(lgetxattr(&dir.join("pathfile"), opaque), None);
    assert_eq!(
        lgetxattr(&dir.join("hostfile"), opaque),
        None,
        "a host-owned file was marked"
    );
    assert_eq!(lgetxattr(&dir.join("nocap"), opaque), None);
}
