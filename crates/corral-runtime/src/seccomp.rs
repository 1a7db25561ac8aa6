//! The container's syscall filter, and the monitor's handling of intercepted syscalls.
//!
//! # The filter ([`install`])
//!
//! The container's init loads one seccomp filter as the very last step before `execve`; every
//! process of the container inherits it and cannot remove it. The filter *allows* by default:
//! its job is not to sandbox the guest (the user namespace, the idmapped rootfs and the cgroup
//! do that) but to close the few holes that are left, the way LXC's default policy does:
//!
//! * **LXC's default deny list**, answered with `EPERM` (a plausible "you may not", which
//!   programs handle, rather than a kill): `kexec_load`, `kexec_file_load` (replace the running
//!   kernel), `open_by_handle_at` (the "shocker" escape: opens any inode of a filesystem by its
//!   handle, bypassing the mount tree), `init_module`, `finit_module`, `delete_module`.
//!   Most of these already need capabilities in the *initial* user namespace, so an unprivileged
//!   container cannot use them anyway; the filter is what protects a privileged container
//!   (`idmap: None`) and is defense in depth for the others.
//! * **`reject_force_umount`**: `umount2(path, flags)` with `MNT_FORCE` set is refused with
//!   `EPERM` (a forced unmount of a shared filesystem hurts the host and other containers); a plain
//!   `umount2` still works. (LXC itself answers `EACCES` here; we use `EPERM` like the rest of the
//!   list.)
//! * `policy.deny`: more syscall names, also `EPERM`. A name libseccomp does not know is an error
//!   ([`SeccompError::UnknownSyscall`]), never silently ignored.
//!
//! **Architectures.** An x86_64 process can make 32-bit syscalls (`int $0x80`: the i386 table,
//! other numbers) and x32 syscalls (the x86_64 entry with bit 30 set). A filter that lists only
//! x86_64 numbers would either kill such calls (libseccomp's default "bad architecture" action) or,
//! if hand-written, let `kexec_load` through under its i386 number. The filter therefore contains
//! all three ABIs (`add_arch`): libseccomp translates every rule by name into each ABI's number,
//! so a denied syscall is denied however it is entered, and 32-bit programs keep working.
//!
//! **No `no_new_privs`.** libseccomp sets `PR_SET_NO_NEW_PRIVS` before loading by default. A
//! system container must run setuid binaries (`sudo`, `su`, `passwd`, `ping` on old distros), and
//! NNP would silently make them run unprivileged. Init has `CAP_SYS_ADMIN` in its user namespace,
//! which is what the kernel accepts instead of NNP, so the filter is loaded with NNP off
//! (`set_ctl_nnp(false)`).
//!
//! # Interception ([`Supervisor`])
//!
//! Two LXD features need the host's help: an unprivileged container cannot `mknod` devices
//! (`security.syscalls.intercept.mknod`) and cannot set `trusted.*` xattrs, which overlayfs needs
//! for opaque directories (`security.syscalls.intercept.setxattr`). For those syscalls the filter
//! answers `SCMP_ACT_NOTIFY`: the caller sleeps, the monitor (host root) receives a notification
//! on the listener fd returned by [`install`] and answers it.
//!
//! * `mknod`/`mknodat` of the harmless character devices LXD allows (`null` 1:3, `zero` 1:5,
//!   `full` 1:7, `random` 1:8, `urandom` 1:9, `tty` 5:0, `console` 5:1) are created by the
//!   monitor on the caller's behalf. Everything else is answered with
//!   `SECCOMP_USER_NOTIF_FLAG_CONTINUE`: the kernel then runs the real syscall with the caller's
//!   own credentials, so FIFOs and sockets work and a block device fails with `EPERM` exactly as
//!   it would without interception. A whiteout (char 0:0) is also continued: since Linux 5.8 the
//!   kernel lets unprivileged users create whiteouts, so the real syscall succeeds by itself.
//! * `setxattr`/`lsetxattr`/`fsetxattr` of `trusted.overlay.opaque` = `y` is done by the
//!   monitor; any other name or value is continued (the kernel refuses `trusted.*` with `EPERM`).
//! * CONTINUE is only ever used to *decline*: the continued syscall re-reads its arguments from
//!   the caller's memory, so a CONTINUE must never carry a security decision. It doesn't here:
//!   a continued call has exactly the caller's own privileges.
//! * The 32-bit ABIs are intercepted too (the same rules are in the i386 and x32 tables), and
//!   handled exactly like x86_64: the syscalls have the same arguments, only narrower.
//!
//! **How a node is created safely.** The path is a string in the caller's memory, to be resolved
//! the way the *caller* would resolve it: in its mount namespace, from its root and current
//! directory (or `mknodat`'s dirfd), through the container's symlinks, with the caller's
//! credentials. Resolving it on the host (e.g. under `/proc/<pid>/root/...` with host root's
//! credentials) would let a symlink such as `/dev/x -> /../../../etc` or a directory the caller
//! cannot write be used against the host. So:
//!
//! 1. The monitor opens `/proc/<pid>` (a handle on that very process), checks the notification
//!    is still alive (`SECCOMP_IOCTL_NOTIF_ID_VALID`, against pid reuse), and only then opens,
//!    relative to that handle, everything it needs: `mem`, `status`, `ns/mnt`, and `O_PATH`
//!    handles on the caller's `root`, its `cwd` or `fd/<dirfd>`. It reads the path from `mem`
//!    (at most `PATH_MAX`, up to the NUL) and checks the notification id again: all it read
//!    belongs to the process that is still waiting for the answer. The caller is blocked in the
//!    syscall, and the request is executed from the monitor's *copy* of the path, so rewriting
//!    the string from another thread afterwards changes nothing.
//! 2. A short-lived helper child is forked (joining a mount namespace needs an unshared
//!    `fs_struct` and would also move the monitor's root; a child does it without touching the
//!    monitor). It `setns(CLONE_NEWNS)`es into the caller's mount namespace, then
//!    `fchdir(root fd)` + `chroot(".")`: after `setns` the root is the namespace's root mount
//!    (the topmost mount on it, which is the container's pivoted rootfs), but that is not
//!    necessarily the caller's root (a caller inside a `chroot`, e.g. debootstrap, has another
//!    one), so the helper takes the caller's own root explicitly. It then `fchdir`s to the
//!    caller's cwd or dirfd. All lookups, `..` and symlinks now behave as for the caller and
//!    cannot leave its root.
//! 3. The helper takes the caller's fsuid, fsgid and supplementary groups (host ids, from
//!    `/proc/<pid>/status`) and its umask (the kernel applies it, or the directory's default ACL,
//!    as for the caller). Changing fsuid from 0 clears the filesystem capabilities from the
//!    effective set, so the helper then sets its effective set explicitly with `capset`:
//!    `CAP_MKNOD` (the only privilege the caller lacks), plus `CAP_DAC_OVERRIDE` and
//!    `CAP_DAC_READ_SEARCH` only if the caller has them in its own namespace. The kernel honours
//!    those for the caller only on inodes whose owner is mapped in its user namespace, so the
//!    helper opens the parent directory, checks that its owner and group are mapped (in the
//!    caller's `uid_map`/`gid_map` and in the container's idmap), drops the DAC capabilities if
//!    not, and creates the node with `mknodat(parent fd, name)`: a host-owned directory
//!    bind-mounted into the container stays read-only to the container.
//!    Created with fsuid = the container root's host uid through the idmapped rootfs mount, the
//!    node belongs to disk uid 0, i.e. to the container's root.
//! 4. The helper reports the errno through a pipe and `_exit`s; the monitor waits for that child
//!    only, with a timeout (a FUSE filesystem in the container could stall the lookup), and
//!    answers the notification with the result.
//!
//! `setxattr` is emulated the same way: the helper opens the target (`O_PATH`, with `O_NOFOLLOW`
//! for `lsetxattr`; `fsetxattr` uses `/proc/<pid>/fd/<fd>`), requires its owner and group to be
//! mapped in the container, requires the caller to have `CAP_SYS_ADMIN` in its namespace (as the
//! kernel requires for `trusted.*`), and sets the attribute through the helper's own
//! `/proc/self/fd/<n>` (the host's procfs, opened before `setns`), so that the inode checked is
//! the inode written.
//!
//! Limitations: a signal to the waiting caller cancels the notification; the node may then
//! already exist when the restarted syscall is seen again (it gets `EEXIST`). libseccomp 2.6's
//! `SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV` closes that window and is enabled when available.
//! `setxattrat` (Linux 6.13) is not intercepted (libseccomp 2.5 does not know it): it simply gets
//! the kernel's own answer.

mod filter;
mod supervisor;
mod sys;
#[cfg(test)]
mod tests;

pub use filter::{install, DEFAULT_DENY};
pub use supervisor::Supervisor;

/// Why the filter could not be built or loaded, or the monitor could not talk to it.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("unknown syscall {name:?} in the seccomp policy")]
    UnknownSyscall { name: String },
    #[error("seccomp filter: cannot add the rule for {syscall}")]
    Rule {
        syscall: String,
        #[source]
        source: libseccomp::error::SeccompError,
    },
    #[error("seccomp filter: cannot {what}")]
    Filter {
        what: String,
        #[source]
        source: libseccomp::error::SeccompError,
    },
    #[error("cannot load the seccomp filter (without no_new_privs this needs CAP_SYS_ADMIN)")]
    Load {
        #[source]
        source: libseccomp::error::SeccompError,
    },
    #[error("cannot get the seccomp notification fd after loading the filter")]
    NotifyFd {
        #[source]
        source: libseccomp::error::SeccompError,
    },
    #[error("cannot receive a seccomp notification")]
    Receive {
        #[source]
        source: nix::errno::Errno,
    },
    #[error("cannot answer the seccomp notification for {syscall} of pid {pid}")]
    Respond {
        syscall: &'static str,
        pid: u32,
        #[source]
        source: nix::errno::Errno,
    },
}
