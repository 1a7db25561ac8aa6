//! cpusets: cpu lists (`0-3,5`), seeding a v1 parent, choosing a container's cpus.

use std::collections::BTreeSet;
use std::path::Path;

use super::fsutil::{read_optional, read_trimmed, write_value};
use super::{CgroupError, Result};
use crate::spec::CpuLimit;

/// Gives the v1 `corral` cpuset the root's cpus and mems if it has none (a fresh v1 cpuset is
/// empty and would refuse the containers' tasks). An administrator's restriction is kept.
pub(super) fn seed_v1_cpuset(mount: &Path, parent: &Path) -> Result<()> {
    for file in ["cpuset.cpus", "cpuset.mems"] {
        if read_trimmed(&parent.join(file))?.is_empty() {
            let value = read_trimmed(&mount.join(file))?;
            write_value(&parent.join(file), &value)?;
        }
    }
    Ok(())
}

/// The first non-empty of `files` in `dir` (missing files skipped).
pub(super) fn first_nonempty(dir: &Path, files: &[&str]) -> Result<String> {
    for file in files {
        if let Some(value) = read_optional(&dir.join(file))? {
            if !value.is_empty() {
                return Ok(value);
            }
        }
    }
    let path = dir.join(files.last().copied().unwrap_or_default());
    Err(CgroupError::Parse {
        path,
        value: String::new(),
        expected: "a non-empty list",
    })
}

pub(super) fn available_cpus(parent: &Path, files: &[&str]) -> Result<Vec<u32>> {
    let value = first_nonempty(parent, files)?;
    parse_cpu_list(&value).ok_or_else(|| CgroupError::Parse {
        path: parent.join(files.first().copied().unwrap_or_default()),
        value,
        expected: "a cpu list such as 0-3,5",
    })
}

/// `limits.cpu` against the parent's cpus: `Count(n)` is the first `n` of them (all of them if
/// fewer), `Set` must be a subset.
pub(super) fn select_cpus(limit: &CpuLimit, available: &[u32], parent: &Path) -> Result<Vec<u32>> {
    match limit {
        CpuLimit::Count(0) => Err(CgroupError::InvalidCpuLimit {
            reason: "a count of 0 cpus",
        }),
        CpuLimit::Count(n) => Ok(available
            .iter()
            .copied()
            .take(usize::try_from(*n).unwrap_or(usize::MAX))
            .collect()),
        CpuLimit::Set(list) if list.is_empty() => Err(CgroupError::InvalidCpuLimit {
            reason: "an empty cpu list",
        }),
        CpuLimit::Set(list) => {
            let set: BTreeSet<u32> = list.iter().copied().collect();
            if let Some(&cpu) = set.iter().find(|c| !available.contains(c)) {
                return Err(CgroupError::CpuUnavailable {
                    cpu,
                    path: parent.to_owned(),
                    available: format_cpu_list(available),
                });
            }
            Ok(set.into_iter().collect())
        }
    }
}

/// `0-3,5,7-8` -> `[0, 1, 2, 3, 5, 7, 8]` (sorted, deduplicated); `None` if malformed.
pub(super) fn parse_cpu_list(s: &str) -> Option<Vec<u32>> {
    let mut cpus = BTreeSet::new();
    for part in s.trim().split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
                if a > b {
                    return None;
                }
                cpus.extend(a..=b);
            }
            None => {
                cpus.insert(part.parse().ok()?);
            }
        }
    }
    Some(cpus.into_iter().collect())
}

/// The inverse of [`parse_cpu_list`], with ranges: `[0, 1, 2, 5]` -> `0-2,5`.
pub(super) fn format_cpu_list(cpus: &[u32]) -> String {
    let sorted: BTreeSet<u32> = cpus.iter().copied().collect();
    let mut ranges: Vec<(u32, u32)> = Vec::new();
    for cpu in sorted {
        match ranges.last_mut() {
            Some((_, end)) if end.checked_add(1) == Some(cpu) => *end = cpu,
            _ => ranges.push((cpu, cpu)),
        }
    }
    let parts: Vec<String> = ranges
        .iter()
        .map(|&(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") })
        .collect();
    parts.join(",")
}
