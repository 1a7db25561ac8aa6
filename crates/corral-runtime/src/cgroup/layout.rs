//! Finding the cgroup hierarchies: which layout the host uses and where each hierarchy is mounted.
//!
//! Only `/proc/self/mountinfo` is consulted (plus `/sys/fs/cgroup/cgroup.controllers` as a
//! fallback); nothing here writes. [`CgroupRoot::from_mountinfo`] is the pure part, so that tests
//! can feed it the text of any host.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tracing::debug;

use super::fsutil::read_string;
use super::{CgroupError, Result};

/// v1 controllers the module knows by name. Other words in a `cgroup` mount's options (`rw`,
/// `relatime`, `clone_children`, `release_agent=...`, ...) are not controllers.
const KNOWN_V1_CONTROLLERS: &[&str] = &[
    "blkio",
    "cpu",
    "cpuacct",
    "cpuset",
    "devices",
    "freezer",
    "hugetlb",
    "memory",
    "misc",
    "net_cls",
    "net_prio",
    "perf_event",
    "pids",
    "rdma",
];

/// How the host's cgroup hierarchies are mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// cgroup v1, usually the "hybrid" layout of systemd hosts.
    V1 {
        /// Controller name -> mount point of its hierarchy. Co-mounted controllers
        /// (`cpu,cpuacct`) map to the same mount point.
        controllers: BTreeMap<String, PathBuf>,
        /// The cgroup2 mount of a hybrid host (`/sys/fs/cgroup/unified`), usually without
        /// controllers: it only tracks processes, and is what systemd inside a container manages.
        unified: Option<PathBuf>,
        /// The `name=systemd` named hierarchy (`/sys/fs/cgroup/systemd`).
        systemd: Option<PathBuf>,
    },
    /// Pure cgroup v2: one hierarchy, controllers listed in `cgroup.controllers`.
    V2 { root: PathBuf },
}

/// The host's cgroup filesystems: the starting point of every path the module touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupRoot {
    layout: Layout,
}

impl CgroupRoot {
    /// A root with an explicit layout (tests, or a caller that knows better than mountinfo).
    pub fn new(layout: Layout) -> Self {
        CgroupRoot { layout }
    }

    /// The host's layout, from `/proc/self/mountinfo`; when no cgroup mount is listed there but
    /// `/sys/fs/cgroup/cgroup.controllers` exists, pure v2 at `/sys/fs/cgroup`.
    pub fn detect() -> Result<Self> {
        let mountinfo = Path::new("/proc/self/mountinfo");
        let text = read_string(mountinfo)?;
        match Self::from_mountinfo(&text) {
            Err(CgroupError::NotMounted { .. }) if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() => {
                debug!("no cgroup mount in mountinfo, but /sys/fs/cgroup/cgroup.controllers exists: v2");
                Ok(CgroupRoot::new(Layout::V2 {
                    root: PathBuf::from("/sys/fs/cgroup"),
                }))
            }
            other => other,
        }
    }

    /// Parses the text of a `/proc/<pid>/mountinfo`. v1 controller mounts make a [`Layout::V1`]
    /// (with the cgroup2 mount, if any, as its `unified`); a cgroup2 mount alone makes a
    /// [`Layout::V2`].
    pub fn from_mountinfo(text: &str) -> Result<Self> {
        let mut controllers = BTreeMap::new();
        let mut systemd = None;
        let mut cgroup2 = Vec::new();
        for line in text.lines() {
            let Some(mount) = parse_line(line) else {
                continue;
            };
            match mount.fstype {
                "cgroup2" => cgroup2.push(mount.point),
                "cgroup" => {
                    for opt in mount.super_options.split(',') {
                        if opt == "name=systemd" {
                            systemd.get_or_insert_with(|| mount.point.clone());
                        } else if KNOWN_V1_CONTROLLERS.contains(&opt) {
                            controllers
                                .entry(opt.to_string())
                                .or_insert_with(|| mount.point.clone());
                        }
                    }
                }
                _ => {}
            }
        }
        let layout = if !controllers.is_empty() {
            let unified = pick(&cgroup2, "/sys/fs/cgroup/unified");
            Layout::V1 {
                controllers,
                unified,
                systemd,
            }
        } else if let Some(root) = pick(&cgroup2, "/sys/fs/cgroup") {
            Layout::V2 { root }
        } else {
            return Err(CgroupError::NotMounted {
                mountinfo: PathBuf::from("/proc/self/mountinfo"),
            });
        };
        debug!(?layout, "cgroup layout");
        Ok(CgroupRoot { layout })
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The cgroup2 mount: the root on v2, the unified hierarchy of a hybrid host.
    pub fn cgroup2_mount(&self) -> Option<&Path> {
        match &self.layout {
            Layout::V2 { root } => Some(root),
            Layout::V1 { unified, .. } => unified.as_deref(),
        }
    }

    /// Makes moving a process between cgroups cheap, by remounting the cgroup2 hierarchy with
    /// `favordynmods` (Linux 6.0+) when it lacks it.
    ///
    /// Every write to `cgroup.procs` takes the kernel's global threadgroup lock for writing,
    /// which waits for an RCU grace period unless that option is on: 7 to 13 ms per container
    /// start and per exec here (a process joins the container's cgroups each time), against
    /// 0.5 ms with it. The option is global (it applies to the v1 hierarchies too) and costs
    /// forks and exits a little more.
    pub fn favor_dynamic_changes(&self) -> Result<FavorDynmods> {
        let Some(point) = self.cgroup2_mount() else {
            return Ok(FavorDynmods::NoCgroup2);
        };
        let mountinfo = read_string(Path::new("/proc/self/mountinfo"))?;
        if has_favordynmods(&mountinfo, point) {
            return Ok(FavorDynmods::AlreadyOn);
        }
        // `mount` keeps the mount's other options (nsdelegate, memory_recursiveprot...), which
        // a bare remount(2) would clear.
        let out = std::process::Command::new("mount")
            .args(["-o", "remount,favordynmods"])
            .arg(point)
            .output()
            .map_err(|e| CgroupError::Remount {
                path: point.to_path_buf(),
                reason: format!("cannot run mount: {e}"),
            })?;
        if !out.status.success() {
            return Err(CgroupError::Remount {
                path: point.to_path_buf(),
                reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(FavorDynmods::TurnedOn(point.to_path_buf()))
    }
}

/// What [`CgroupRoot::favor_dynamic_changes`] found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FavorDynmods {
    AlreadyOn,
    TurnedOn(PathBuf),
    NoCgroup2,
}

/// Whether the cgroup2 mount at `point` has `favordynmods` among its superblock options.
fn has_favordynmods(mountinfo: &str, point: &Path) -> bool {
    mountinfo
        .lines()
        .filter_map(parse_line)
        .any(|m| m.fstype == "cgroup2" && m.point == point && m.super_options.split(',').any(|o| o == "favordynmods"))
}

/// The preferred mount point if it is among `mounts`, else the first one.
fn pick(mounts: &[PathBuf], preferred: &str) -> Option<PathBuf> {
    mounts
        .iter()
        .find(|m| m.as_path() == Path::new(preferred))
        .or_else(|| mounts.first())
        .cloned()
}

struct MountLine<'a> {
    point: PathBuf,
    fstype: &'a str,
    super_options: &'a str,
}

/// `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue`: the mount
/// point is field 5; after the `-` separator come the filesystem type, the source and the
/// superblock options.
fn parse_line(line: &str) -> Option<MountLine<'_>> {
    let fields: Vec<&str> = line.split(' ').collect();
    let point = fields.get(4)?;
    let sep = fields.iter().skip(6).position(|f| *f == "-")? + 6;
    Some(MountLine {
        point: PathBuf::from(unescape(point)),
        fstype: fields.get(sep + 1)?,
        super_options: fields.get(sep + 3).copied().unwrap_or(""),
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                let value = d.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
35 24 0:30 / /sys/fs/cgroup rw,relatime shared:9 - tmpfs tmpfs rw,mode=755
41 35 0:38 / /sys/fs/cgroup/unified rw,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
42 35 0:39 / /sys/fs/cgroup/cpu rw,relatime shared:11 - cgroup cgroup rw,cpu";

    #[test]
    fn favordynmods_is_read_from_the_cgroup2_superblock_options() {
        let unified = Path::new("/sys/fs/cgroup/unified");
        assert!(!has_favordynmods(HYBRID, unified));
        let on = HYBRID.replace("rw,nsdelegate", "rw,nsdelegate,favordynmods");
        assert!(has_favordynmods(&on, unified));
        // Only the cgroup2 mount at that point counts.
        assert!(!has_favordynmods(&on, Path::new("/sys/fs/cgroup/cpu")));
    }

    #[test]
    fn the_cgroup2_mount_is_the_v2_root_or_the_unified_hierarchy() {
        let hybrid = CgroupRoot::from_mountinfo(HYBRID).expect("hybrid");
        assert_eq!(hybrid.cgroup2_mount(), Some(Path::new("/sys/fs/cgroup/unified")));
        let v2 = CgroupRoot::new(Layout::V2 {
            root: PathBuf::from("/sys/fs/cgroup"),
        });
        assert_eq!(v2.cgroup2_mount(), Some(Path::new("/sys/fs/cgroup")));
    }
}
