//! Building and loading the filter (runs in the container's init, just before `execve`).

use std::collections::BTreeSet;
use std::os::fd::OwnedFd;

use libseccomp::{ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};

use super::{sys, SeccompError};
use crate::spec::SeccompPolicy;

/// LXC's default deny list (`config/seccomp/common.seccomp` plus `kexec_file_load`), each
/// answered with `EPERM`. `reject_force_umount` is a conditional rule, added separately.
pub const DEFAULT_DENY: &[&str] = &[
    "kexec_load",
    "kexec_file_load",
    "open_by_handle_at",
    "init_module",
    "finit_module",
    "delete_module",
];

/// Every ABI an x86_64 process can enter the kernel with.
pub(super) const ARCHES: &[ScmpArch] = &[ScmpArch::X8664, ScmpArch::X86, ScmpArch::X32];

/// Syscalls sent to the monitor with `security.syscalls.intercept.mknod`.
pub(super) const MKNOD_SYSCALLS: &[&str] = &["mknod", "mknodat"];
/// Syscalls sent to the monitor with `security.syscalls.intercept.setxattr`.
pub(super) const SETXATTR_SYSCALLS: &[&str] = &["setxattr", "lsetxattr", "fsetxattr"];

/// Loads the container's seccomp filter into the calling process (and thereby into everything it
/// will exec and fork). Call it in the container's init as the last step before `execve`: from
/// then on the filter cannot be removed.
///
/// Returns the notification listener when the policy intercepts syscalls (`intercept_mknod` or
/// `intercept_setxattr`): hand it to the monitor (`SCM_RIGHTS`), close it, then exec; the fd is
/// close-on-exec. Returns `None` otherwise.
///
/// `no_new_privs` is *not* set (see the module docs), so the caller needs `CAP_SYS_ADMIN` in its
/// user namespace.
pub fn install(policy: &SeccompPolicy) -> Result<Option<OwnedFd>, SeccompError> {
    let ctx = build_filter(policy)?;
    ctx.load().map_err(|source| SeccompError::Load { source })?;
    if !intercepts(policy) {
        return Ok(None);
    }
    let raw = ctx
        .get_notify_fd()
        .map_err(|source| SeccompError::NotifyFd { source })?;
    drop(ctx);
    Ok(Some(sys::own_notify_fd(raw)))
}

fn intercepts(policy: &SeccompPolicy) -> bool {
    policy.intercept_mknod || policy.intercept_setxattr
}

fn filter_err(what: impl Into<String>) -> impl FnOnce(libseccomp::error::SeccompError) -> SeccompError {
    let what = what.into();
    move |source| SeccompError::Filter { what, source }
}

fn rule_err(syscall: &str) -> impl FnOnce(libseccomp::error::SeccompError) -> SeccompError + '_ {
    move |source| SeccompError::Rule {
        syscall: syscall.to_string(),
        source,
    }
}

/// Resolves a syscall name (libseccomp knows the names of every architecture: an i386-only name
/// such as `socketcall` resolves to a pseudo number that applies where the syscall exists).
fn resolve(name: &str) -> Result<ScmpSyscall, SeccompError> {
    let unknown = || SeccompError::UnknownSyscall { name: name.to_string() };
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(unknown());
    }
    let syscall = ScmpSyscall::from_name(name).map_err(|_| unknown())?;
    if !ARCHES
        .iter()
        .any(|&arch| ScmpSyscall::from_name_by_arch(name, arch).is_ok())
    {
        tracing::debug!(
            syscall = name,
            "syscall does not exist on x86; its deny rule has no effect here"
        );
    }
    Ok(syscall)
}

/// The filter for `policy`, not loaded. Every name is validated before anything is loaded.
pub(super) fn build_filter(policy: &SeccompPolicy) -> Result<ScmpFilterContext, SeccompError> {
    // Validate first: an error must leave the process without a half-built policy in mind.
    let mut denied = BTreeSet::new();
    if policy.default_deny {
        denied.extend(DEFAULT_DENY.iter().map(|s| s.to_string()));
    }
    for name in &policy.deny {
        resolve(name)?;
        denied.insert(name.clone());
    }

    let mut ctx = ScmpFilterContext::new(ScmpAction::Allow).map_err(filter_err("create the filter context"))?;
    ctx.set_ctl_nnp(false).map_err(filter_err("turn off no_new_privs"))?;
    for &arch in ARCHES {
        let present = ctx
            .is_arch_present(arch)
            .map_err(filter_err("list the filter architectures"))?;
        if !present {
            ctx.add_arch(arch).map_err(filter_err("add an architecture"))?;
        }
    }

    let eperm = ScmpAction::Errno(libc::EPERM);
    for name in &denied {
        ctx.add_rule(eperm, resolve(name)?).map_err(rule_err(name))?;
    }
    // An unconditional `umount2` deny from `policy.deny` already covers the forced case (and
    // libseccomp refuses a conditional rule that an unconditional one shadows).
    if policy.default_deny && !denied.contains("umount2") {
        let force = libc::MNT_FORCE as u64;
        let cmp = ScmpArgCompare::new(1, ScmpCompareOp::MaskedEqual(force), force);
        ctx.add_rule_conditional(eperm, resolve("umount2")?, &[cmp])
            .map_err(rule_err("umount2"))?;
    }

    let mut notified: Vec<&str> = Vec::new();
    if policy.intercept_mknod {
        notified.extend(MKNOD_SYSCALLS);
    }
    if policy.intercept_setxattr {
        notified.extend(SETXATTR_SYSCALLS);
    }
    // A syscall the policy denies stays denied: deny wins over interception.
    for name in notified.into_iter().filter(|name| !denied.contains(*name)) {
        ctx.add_rule(ScmpAction::Notify, resolve(name)?)
            .map_err(rule_err(name))?;
    }
    if intercepts(policy) {
        // Once the monitor has received a notification, only a fatal signal may cancel it (so an
        // emulated mknod is never repeated by a restarted syscall). Needs libseccomp >= 2.6 and
        // Linux >= 5.19; without it, see "Limitations" in the module docs.
        if let Err(e) = ctx.set_ctl_waitkill(true) {
            tracing::debug!(error = %e, "seccomp: wait-killable notifications not available");
        }
    }
    Ok(ctx)
}
