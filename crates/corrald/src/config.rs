//! The registry of instance config keys: one table used to validate, to fill defaults, to
//! document (`corrald config-keys`) and to decide what applies to a running container.
//!
//! Free namespaces (`user.*`, `environment.*`, `image.*`) take any value; `volatile.*` is written
//! by the daemon only. Any other key must be in [`KEYS`], or the request is refused with the
//! key's name and what is allowed, as LXD does.

use std::collections::BTreeMap;

use corral_runtime::spec::{CpuAllowance, CpuLimit, Limits};

/// The type of a key's value, which decides its validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bool,
    /// A non-negative integer.
    Integer,
    /// A byte size (`512MiB`, `1GB`, plain bytes) or a percentage of host memory (`50%`).
    Bytes,
    /// A CPU count (`2`) or a set (`0-1,3`).
    CpuSet,
    /// A CFS share (`50%`) or quota (`25ms/100ms`).
    CpuAllowance,
    /// Any string.
    Text,
    /// `snapshots.schedule`: cron expressions and aliases ([`crate::snapshot_schedule`]).
    Schedule,
    /// `snapshots.expiry`: `1M 2H 3d 4w 5m 6y`.
    Expiry,
    /// `snapshots.pattern`: a snapshot name template.
    SnapshotPattern,
}

/// One instance config key.
#[derive(Debug, Clone, Copy)]
pub struct KeyDef {
    pub name: &'static str,
    pub kind: Kind,
    /// Default when unset ("" for none).
    pub default: &'static str,
    /// Whether a change applies to a running container without a restart.
    pub live: bool,
    pub doc: &'static str,
}

/// Every key Corral implements.
pub const KEYS: &[KeyDef] = &[
    KeyDef {
        name: "boot.autostart",
        kind: Kind::Bool,
        default: "false",
        live: true,
        doc: "Start the instance when the daemon starts",
    },
    KeyDef {
        name: "boot.autostart.delay",
        kind: Kind::Integer,
        default: "0",
        live: true,
        doc: "Seconds to wait after starting this instance before starting the next",
    },
    KeyDef {
        name: "boot.autostart.priority",
        kind: Kind::Integer,
        default: "0",
        live: true,
        doc: "Higher priorities start first",
    },
    KeyDef {
        name: "boot.host_shutdown_timeout",
        kind: Kind::Integer,
        default: "30",
        live: true,
        doc: "Seconds to wait for a clean shutdown before killing",
    },
    KeyDef {
        name: "limits.cpu",
        kind: Kind::CpuSet,
        default: "",
        live: true,
        doc: "Number of CPUs, or the CPUs to pin to (0-1,3)",
    },
    KeyDef {
        name: "limits.cpu.allowance",
        kind: Kind::CpuAllowance,
        default: "",
        live: true,
        doc: "CPU share (50%) or hard quota (25ms/100ms)",
    },
    KeyDef {
        name: "limits.memory",
        kind: Kind::Bytes,
        default: "",
        live: true,
        doc: "Memory limit in bytes (with a unit) or as a percentage of host memory",
    },
    KeyDef {
        name: "limits.memory.swap",
        kind: Kind::Bool,
        default: "true",
        live: true,
        doc: "Whether the instance may use swap",
    },
    KeyDef {
        name: "limits.processes",
        kind: Kind::Integer,
        default: "",
        live: true,
        doc: "Maximum number of processes",
    },
    KeyDef {
        name: "migration.stateful",
        kind: Kind::Bool,
        default: "false",
        live: false,
        doc: "Make the instance checkpointable (stateful stop and snapshots, live migration): systemd \
              services get no private hostname namespace (ProtectHostname=no), which CRIU cannot dump",
    },
    KeyDef {
        name: "migration.incremental.memory",
        kind: Kind::Bool,
        default: "false",
        live: true,
        doc: "Live migration: copy memory in rounds before stopping (pre-copy); needs soft-dirty memory \
              tracking, without which the move says so and stops and copies",
    },
    KeyDef {
        name: "migration.stateful.lazy",
        kind: Kind::Bool,
        default: "false",
        live: true,
        doc: "Live migration: post-copy (CRIU lazy pages), the instance resumed on the target before its \
              memory has arrived; where the kernel does not allow it, the move says which check failed and \
              stops and copies",
    },
    KeyDef {
        name: "security.nesting",
        kind: Kind::Bool,
        default: "false",
        live: false,
        doc: "Allow running containers inside the instance",
    },
    KeyDef {
        name: "security.privileged",
        kind: Kind::Bool,
        default: "false",
        live: false,
        doc: "Run without a user namespace (container root is host root)",
    },
    KeyDef {
        name: "security.syscalls.intercept.mknod",
        kind: Kind::Bool,
        default: "false",
        live: false,
        doc: "Let the instance create the safe device nodes (null, zero, ...) through mknod",
    },
    KeyDef {
        name: "security.syscalls.intercept.setxattr",
        kind: Kind::Bool,
        default: "false",
        live: false,
        doc: "Let the instance set trusted.overlay.opaque (for overlayfs inside)",
    },
    KeyDef {
        name: "snapshots.expiry",
        kind: Kind::Expiry,
        default: "",
        live: true,
        doc: "How long automatic snapshots, and manual ones made without an expiry, are kept (1M 2H 3d 4w 5m 6y)",
    },
    KeyDef {
        name: "snapshots.pattern",
        kind: Kind::SnapshotPattern,
        default: "snap%d",
        live: true,
        doc: "Name of automatic and unnamed snapshots ({{ creation_date|date:'2006-01-02' }}, %d)",
    },
    KeyDef {
        name: "snapshots.schedule",
        kind: Kind::Schedule,
        default: "",
        live: true,
        doc: "When to take automatic snapshots: cron (<minute> <hour> <dom> <month> <dow>), @hourly, @daily, @startup..., or a \", \"-separated list",
    },
    KeyDef {
        name: "snapshots.schedule.stopped",
        kind: Kind::Bool,
        default: "false",
        live: true,
        doc: "Whether stopped instances are snapshotted on schedule too",
    },
];

/// Namespaces whose keys are free-form.
const FREE_PREFIXES: &[&str] = &["user.", "environment.", "image."];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("unknown configuration key {key:?}{hint}")]
    UnknownKey { key: String, hint: String },
    #[error("invalid value {value:?} for {key}: {reason}")]
    InvalidValue { key: String, value: String, reason: String },
    #[error("{key} is set by the daemon and cannot be changed")]
    Volatile { key: String },
}

/// The definition of `key`, if it is a registered key.
pub fn key(name: &str) -> Option<&'static KeyDef> {
    KEYS.iter().find(|k| k.name == name)
}

/// Checks every key and value a user sets. `volatile.*` keys are refused unless `allow_volatile`
/// (the daemon's own writes, and PUTs that send back what GET returned unchanged).
pub fn validate(config: &BTreeMap<String, String>, allow_volatile: bool) -> Result<(), ConfigError> {
    for (k, v) in config {
        validate_key(k, v, allow_volatile)?;
    }
    Ok(())
}

/// Checks one key and value.
pub fn validate_key(k: &str, v: &str, allow_volatile: bool) -> Result<(), ConfigError> {
    if FREE_PREFIXES.iter().any(|p| k.starts_with(p) && k.len() > p.len()) {
        return Ok(());
    }
    if k.starts_with("volatile.") {
        return if allow_volatile {
            Ok(())
        } else {
            Err(ConfigError::Volatile { key: k.to_string() })
        };
    }
    let def = key(k).ok_or_else(|| ConfigError::UnknownKey {
        key: k.to_string(),
        hint: hint_for(k),
    })?;
    if v.is_empty() {
        return Ok(()); // empty means unset
    }
    let invalid = |reason: &str| ConfigError::InvalidValue {
        key: k.to_string(),
        value: v.to_string(),
        reason: reason.into(),
    };
    match def.kind {
        Kind::Bool => parse_bool(v).map(drop).ok_or_else(|| invalid("expected true or false")),
        Kind::Integer => v
            .parse::<u64>()
            .map(drop)
            .map_err(|_| invalid("expected a whole number")),
        Kind::Bytes => parse_bytes_or_percent(v).map(drop).map_err(|e| invalid(&e)),
        Kind::CpuSet => parse_cpu(v).map(drop).map_err(|e| invalid(&e)),
        Kind::CpuAllowance => parse_allowance(v).map(drop).map_err(|e| invalid(&e)),
        Kind::Text => Ok(()),
        Kind::Schedule => crate::snapshot_schedule::validate_schedule(v).map_err(|e| invalid(&e)),
        Kind::Expiry => crate::snapshot_schedule::validate_expiry(v).map_err(|e| invalid(&e)),
        Kind::SnapshotPattern => crate::snapshot_schedule::validate_pattern(v).map_err(|e| invalid(&e)),
    }
}

/// A suggestion for an unknown key: the closest registered one, or the free namespaces.
fn hint_for(k: &str) -> String {
    let best = KEYS
        .iter()
        .map(|d| (edit_distance(k, d.name), d.name))
        .min_by_key(|(d, _)| *d);
    match best {
        Some((d, name)) if d <= 3 => format!(" (did you mean {name:?}?)"),
        _ => " (custom keys go under user.*)".to_string(),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push((prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// LXD accepts true/false, and also 1/0, yes/no, on/off.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// A byte size as LXD writes them: decimal (kB, MB, GB, TB) and binary (KiB, MiB, GiB, TiB)
/// units, with or without the final B, or plain bytes.
pub fn parse_bytes(v: &str) -> Result<u64, String> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let num: f64 = num
        .parse()
        .map_err(|_| "expected a size such as 512MiB or 1GB".to_string())?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "k" | "kB" | "KB" => 1000,
        "M" | "MB" => 1000u64.pow(2),
        "G" | "GB" => 1000u64.pow(3),
        "T" | "TB" => 1000u64.pow(4),
        "Ki" | "KiB" => 1 << 10,
        "Mi" | "MiB" => 1 << 20,
        "Gi" | "GiB" => 1 << 30,
        "Ti" | "TiB" => 1 << 40,
        other => return Err(format!("unknown unit {other:?} (use kB, MB, GB, KiB, MiB, GiB ...)")),
    };
    Ok((num * mult as f64) as u64)
}

/// A byte size, or a percentage of the host's memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BytesOrPercent {
    Bytes(u64),
    Percent(f64),
}

pub fn parse_bytes_or_percent(v: &str) -> Result<BytesOrPercent, String> {
    if let Some(p) = v.strip_suffix('%') {
        let p: f64 = p
            .trim()
            .parse()
            .map_err(|_| "expected a percentage such as 50%".to_string())?;
        if !(0.0..=100.0).contains(&p) || p == 0.0 {
            return Err("a percentage must be above 0 and at most 100".into());
        }
        return Ok(BytesOrPercent::Percent(p));
    }
    let b = parse_bytes(v)?;
    if b < 4 * 1024 * 1024 {
        return Err("a memory limit under 4MiB cannot run anything".into());
    }
    Ok(BytesOrPercent::Bytes(b))
}

/// `limits.cpu`: `2` (count) or `0-1,3` (a set; a single pinned CPU is written `1-1`, as in LXD).
pub fn parse_cpu(v: &str) -> Result<CpuLimit, String> {
    if let Ok(n) = v.parse::<u32>() {
        if n == 0 {
            return Err("at least one CPU".into());
        }
        return Ok(CpuLimit::Count(n));
    }
    let mut cpus = Vec::new();
    for part in v.split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (u32, u32) = match (a.trim().parse(), b.trim().parse()) {
            (Ok(a), Ok(b)) if a <= b => (a, b),
            _ => return Err("expected a count (2) or a list of CPUs (0-1,3)".into()),
        };
        cpus.extend(a..=b);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(CpuLimit::Set(cpus))
}

/// `limits.cpu.allowance`: `50%` or `25ms/100ms`.
pub fn parse_allowance(v: &str) -> Result<CpuAllowance, String> {
    if let Some(p) = v.strip_suffix('%') {
        let p: u32 = p.parse().map_err(|_| "expected a share such as 50%".to_string())?;
        if p == 0 || p > 100 {
            return Err("a share must be between 1% and 100%".into());
        }
        return Ok(CpuAllowance::Percent(p));
    }
    let ms = |s: &str| s.trim().strip_suffix("ms").and_then(|n| n.parse::<u64>().ok());
    match v.split_once('/').map(|(q, p)| (ms(q), ms(p))) {
        Some((Some(q), Some(p))) if q > 0 && p > 0 => Ok(CpuAllowance::Quota {
            quota_us: q * 1000,
            period_us: p * 1000,
        }),
        _ => Err("expected a share (50%) or a quota (25ms/100ms)".into()),
    }
}

/// The cgroup limits an expanded config asks for. `host_memory` resolves percentages.
pub fn limits(config: &BTreeMap<String, String>, host_memory: u64) -> Result<Limits, ConfigError> {
    let get = |k: &str| config.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let invalid = |k: &str, v: &str, reason: String| ConfigError::InvalidValue {
        key: k.into(),
        value: v.into(),
        reason,
    };
    let mut limits = Limits::default();
    if let Some(v) = get("limits.cpu") {
        limits.cpu = Some(parse_cpu(v).map_err(|e| invalid("limits.cpu", v, e))?);
    }
    if let Some(v) = get("limits.cpu.allowance") {
        limits.cpu_allowance = Some(parse_allowance(v).map_err(|e| invalid("limits.cpu.allowance", v, e))?);
    }
    if let Some(v) = get("limits.memory") {
        limits.memory = Some(
            match parse_bytes_or_percent(v).map_err(|e| invalid("limits.memory", v, e))? {
                BytesOrPercent::Bytes(b) => b,
                BytesOrPercent::Percent(p) => (host_memory as f64 * p / 100.0) as u64,
            },
        );
    }
    if let Some(v) = get("limits.memory.swap") {
        limits.memory_swap = parse_bool(v);
    }
    if let Some(v) = get("limits.processes") {
        limits.processes = Some(
            v.parse()
                .map_err(|_| invalid("limits.processes", v, "expected a whole number".into()))?,
        );
    }
    Ok(limits)
}

/// The value of boolean `key` in `config`, or its registered default.
pub fn flag(config: &BTreeMap<String, String>, name: &str) -> bool {
    let default = key(name).map(|d| d.default).unwrap_or("false");
    config
        .get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .and_then(parse_bool)
        .unwrap_or_else(|| parse_bool(default) == Some(true))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn unknown_keys_are_refused_with_a_suggestion() {
        let err = validate(&cfg(&[("limits.memroy", "1GiB")]), false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown configuration key \"limits.memroy\" (did you mean \"limits.memory\"?)"
        );
        let err = validate(&cfg(&[("foo", "1")]), false).unwrap_err();
        assert!(err.to_string().contains("user.*"), "{err}");
        assert!(validate(&cfg(&[("user.anything", "x"), ("environment.FOO", "bar")]), false).is_ok());
        assert_eq!(
            validate(&cfg(&[("volatile.uuid", "x")]), false),
            Err(ConfigError::Volatile {
                key: "volatile.uuid".into()
            })
        );
        assert!(validate(&cfg(&[("volatile.uuid", "x")]), true).is_ok());
    }

    #[test]
    fn values_are_checked_by_kind() {
        for (k, v) in [
            ("limits.memory", "lots"),
            ("limits.memory", "1XB"),
            ("limits.memory", "0%"),
            ("limits.memory", "1MiB"),
            ("limits.cpu", "0"),
            ("limits.cpu", "3-1"),
            ("limits.cpu.allowance", "150%"),
            ("limits.cpu.allowance", "25/100"),
            ("limits.processes", "-1"),
            ("security.privileged", "maybe"),
        ] {
            assert!(
                matches!(validate_key(k, v, false), Err(ConfigError::InvalidValue { .. })),
                "{k}={v} accepted"
            );
        }
        for (k, v) in [
            ("limits.memory", "512MiB"),
            ("limits.memory", "1GB"),
            ("limits.memory", "50%"),
            ("limits.cpu", "2"),
            ("limits.cpu", "0-1,3"),
            ("limits.cpu.allowance", "50%"),
            ("limits.cpu.allowance", "25ms/100ms"),
            ("security.privileged", "true"),
            ("limits.memory", ""),
        ] {
            assert_eq!(validate_key(k, v, false), Ok(()), "{k}={v} refused");
        }
    }

    #[test]
    fn limits_follow_the_config() {
        let l = limits(
            &cfg(&[
                ("limits.memory", "50%"),
                ("limits.cpu", "0-1,3"),
                ("limits.cpu.allowance", "25ms/100ms"),
                ("limits.processes", "100"),
                ("limits.memory.swap", "false"),
            ]),
            8 << 30,
        )
        .unwrap();
        assert_eq!(l.memory, Some(4 << 30));
        assert_eq!(l.cpu, Some(CpuLimit::Set(vec![0, 1, 3])));
        assert_eq!(
            l.cpu_allowance,
            Some(CpuAllowance::Quota {
                quota_us: 25_000,
                period_us: 100_000
            })
        );
        assert_eq!(l.processes, Some(100));
        assert_eq!(l.memory_swap, Some(false));
        assert_eq!(parse_bytes("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("1.5MiB"), Ok(1_572_864));
        assert!(flag(&cfg(&[]), "limits.memory.swap"));
        assert!(!flag(&cfg(&[]), "security.privileged"));
        assert!(flag(&cfg(&[("security.privileged", "yes")]), "security.privileged"));
    }
}
