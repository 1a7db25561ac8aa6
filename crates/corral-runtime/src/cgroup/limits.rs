//! Writing [`Limits`] to the v1 controllers or to the v2 interface files (see the table in the
//! parent module), and enabling v2 controllers for the containers.

use std::path::Path;

use tracing::debug;

use super::cpuset::{available_cpus, format_cpu_list, select_cpus};
use super::fsutil::{read_trimmed, write_value};
use super::{Cgroup, Layout, Result, PARENT};
use crate::spec::{CpuAllowance, Limits};

const V1_SHARES_DEFAULT: u64 = 1024;
const V2_WEIGHT_DEFAULT: u64 = 100;

/// Controllers enabled for containers on v2 (those of them the kernel offers).
const V2_CONTROLLERS: &[&str] = &["cpu", "cpuset", "memory", "pids"];

impl Cgroup {
    pub(super) fn set_limits_v1(&self, limits: &Limits) -> Result<()> {
        match self.v1_mount("cpuset") {
            Some(mount) => {
                let parent = mount.join(PARENT);
                let available = available_cpus(&parent, &["cpuset.effective_cpus", "cpuset.cpus"])?;
                let cpus = match &limits.cpu {
                    Some(limit) => select_cpus(limit, &available, &parent)?,
                    None => available,
                };
                write_value(&self.dir_in(mount).join("cpuset.cpus"), &format_cpu_list(&cpus))?;
            }
            None if limits.cpu.is_some() => return Err(self.missing("cpuset", "limits.cpu")),
            None => {}
        }

        match self.v1_mount("cpu") {
            Some(mount) => {
                let dir = self.dir_in(mount);
                let (shares, quota) = match limits.cpu_allowance {
                    Some(CpuAllowance::Percent(p)) => ((1024 * u64::from(p) / 100).clamp(2, 262_144), None),
                    Some(CpuAllowance::Quota { quota_us, period_us }) => {
                        (V1_SHARES_DEFAULT, Some((quota_us, period_us)))
                    }
                    None => (V1_SHARES_DEFAULT, None),
                };
                write_value(&dir.join("cpu.shares"), &shares.to_string())?;
                // Lift the quota first: a new period could clash with the old quota.
                write_value(&dir.join("cpu.cfs_quota_us"), "-1")?;
                if let Some((quota_us, period_us)) = quota {
                    write_value(&dir.join("cpu.cfs_period_us"), &period_us.to_string())?;
                    write_value(&dir.join("cpu.cfs_quota_us"), &quota_us.to_string())?;
                }
            }
            None if limits.cpu_allowance.is_some() => return Err(self.missing("cpu", "limits.cpu.allowance")),
            None => {}
        }

        match self.v1_mount("memory") {
            Some(mount) => {
                let dir = self.dir_in(mount);
                let memsw = dir.join("memory.memsw.limit_in_bytes");
                let has_memsw = memsw.exists();
                // memsw must stay >= limit_in_bytes at every step: open it up first.
                if has_memsw {
                    write_value(&memsw, "-1")?;
                }
                let limit = limits.memory.map_or_else(|| "-1".to_string(), |m| m.to_string());
                write_value(&dir.join("memory.limit_in_bytes"), &limit)?;
                match (limits.memory, limits.memory_swap) {
                    (Some(_), Some(false)) if has_memsw => write_value(&memsw, &limit)?,
                    (Some(_), Some(false)) => {
                        debug!(name = %self.name, "no memory.memsw.limit_in_bytes (swap accounting off): swap not limited")
                    }
                    (None, Some(false)) => {
                        debug!(name = %self.name, "no memory limit: swap cannot be forbidden on v1")
                    }
                    _ => {}
                }
            }
            None if limits.memory.is_some() => return Err(self.missing("memory", "limits.memory")),
            None => {}
        }

        match self.v1_mount("pids") {
            Some(mount) => write_value(&self.dir_in(mount).join("pids.max"), &max_or(limits.processes))?,
            None if limits.processes.is_some() => return Err(self.missing("pids", "limits.processes")),
            None => {}
        }
        Ok(())
    }

    pub(super) fn set_limits_v2(&self, limits: &Limits) -> Result<()> {
        let Layout::V2 { root } = self.root.layout() else {
            return Ok(());
        };
        let dir = self.dir_in(root);

        let cpus_file = dir.join("cpuset.cpus");
        if cpus_file.exists() {
            let value = match &limits.cpu {
                Some(limit) => {
                    let parent = root.join(PARENT);
                    let available = available_cpus(&parent, &["cpuset.cpus.effective", "cpuset.cpus"])?;
                    format_cpu_list(&select_cpus(limit, &available, &parent)?)
                }
                // Empty: inherit the parent's cpus.
                None => String::new(),
            };
            write_value(&cpus_file, &value)?;
        } else if limits.cpu.is_some() {
            return Err(self.missing("cpuset", "limits.cpu"));
        }

        if dir.join("cpu.max").exists() {
            let (weight, max) = match limits.cpu_allowance {
                Some(CpuAllowance::Percent(p)) => (u64::from(p).clamp(1, 10_000), "max".to_string()),
                Some(CpuAllowance::Quota { quota_us, period_us }) => {
                    (V2_WEIGHT_DEFAULT, format!("{quota_us} {period_us}"))
                }
                None => (V2_WEIGHT_DEFAULT, "max".to_string()),
            };
            write_value(&dir.join("cpu.weight"), &weight.to_string())?;
            write_value(&dir.join("cpu.max"), &max)?;
        } else if limits.cpu_allowance.is_some() {
            return Err(self.missing("cpu", "limits.cpu.allowance"));
        }

        if dir.join("memory.max").exists() {
            write_value(&dir.join("memory.max"), &max_or(limits.memory))?;
            let swap = dir.join("memory.swap.max");
            if swap.exists() {
                write_value(&swap, if limits.memory_swap == Some(false) { "0" } else { "max" })?;
            } else if limits.memory_swap == Some(false) {
                debug!(name = %self.name, "no memory.swap.max (swap accounting off): swap not limited");
            }
        } else if limits.memory.is_some() {
            return Err(self.missing("memory", "limits.memory"));
        }

        if dir.join("pids.max").exists() {
            write_value(&dir.join("pids.max"), &max_or(limits.processes))?;
        } else if limits.processes.is_some() {
            return Err(self.missing("pids", "limits.processes"));
        }
        Ok(())
    }
}

/// Enables in `dir`'s `cgroup.subtree_control` each of [`V2_CONTROLLERS`] that `dir` offers and
/// has not enabled yet, one write per controller so that an error names it.
pub(super) fn enable_v2_controllers(dir: &Path) -> Result<()> {
    let available = read_trimmed(&dir.join("cgroup.controllers"))?;
    let enabled = read_trimmed(&dir.join("cgroup.subtree_control"))?;
    for controller in V2_CONTROLLERS {
        if !available.split_whitespace().any(|c| c == *controller) {
            debug!(dir = %dir.display(), controller, "controller not offered");
        } else if !enabled.split_whitespace().any(|c| c == *controller) {
            write_value(&dir.join("cgroup.subtree_control"), &format!("+{controller}"))?;
        }
    }
    Ok(())
}

fn max_or(limit: Option<u64>) -> String {
    limit.map_or_else(|| "max".to_string(), |n| n.to_string())
}
