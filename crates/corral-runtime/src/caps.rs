//! Capability names, as `lxc.cap.drop` and `raw.lxc` spell them (without `CAP_`).

/// Drops `names` from the calling thread's bounding set and clears its ambient set: what
/// the container's init and every exec'd command do before exec.
pub fn restrict(names: &[String]) -> Result<(), String> {
    for name in names {
        let cap = by_name(name).ok_or_else(|| format!("unknown capability {name:?} in the drop list"))?;
        crate::sys::capbset_drop(cap).map_err(|e| format!("cannot drop capability {name}: {e}"))?;
    }
    crate::sys::clear_ambient_caps().map_err(|e| format!("cannot clear ambient capabilities: {e}"))
}

/// Capability number of `name` (`sys_admin`, `CAP_SYS_ADMIN` and `SYS_ADMIN` all work).
pub fn by_name(name: &str) -> Option<u32> {
    let lower = name.to_ascii_lowercase();
    let key = lower.strip_prefix("cap_").unwrap_or(&lower);
    NAMES.iter().position(|n| *n == key).map(|i| i as u32)
}

/// Index = capability number (linux/capability.h).
const NAMES: &[&str] = &[
    "chown",
    "dac_override",
    "dac_read_search",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "linux_immutable",
    "net_bind_service",
    "net_broadcast",
    "net_admin",
    "net_raw",
    "ipc_lock",
    "ipc_owner",
    "sys_module",
    "sys_rawio",
    "sys_chroot",
    "sys_ptrace",
    "sys_pacct",
    "sys_admin",
    "sys_boot",
    "sys_nice",
    "sys_resource",
    "sys_time",
    "sys_tty_config",
    "mknod",
    "lease",
    "audit_write",
    "audit_control",
    "setfcap",
    "mac_override",
    "mac_admin",
    "syslog",
    "wake_alarm",
    "block_suspend",
    "audit_read",
    "perfmon",
    "bpf",
    "checkpoint_restore",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_kernel_numbers() {
        assert_eq!(by_name("sys_admin"), Some(21));
        assert_eq!(by_name("CAP_SYS_TIME"), Some(25));
        assert_eq!(by_name("mac_admin"), Some(33));
        assert_eq!(by_name("checkpoint_restore"), Some(40));
        assert_eq!(by_name("nonsense"), None);
    }
}
