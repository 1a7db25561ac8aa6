//! User-namespace id maps: where the host range comes from and how a child is mapped.
//!
//! Container root is an unprivileged host uid. The range is root's entry in /etc/subuid and
//! /etc/subgid; without one, LXD's default (base 1000000, 1000000000 ids) is used. A container
//! takes 65536 ids of it unless told otherwise.

use std::fs;
use std::io;
use std::path::Path;

use crate::spec::IdMap;

/// The ids root may hand out, from /etc/subuid and /etc/subgid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostRange {
    pub uid_base: u32,
    pub uid_count: u32,
    pub gid_base: u32,
    pub gid_count: u32,
}

/// LXD's fallback when root has no subordinate ids.
pub const DEFAULT_RANGE: HostRange = HostRange {
    uid_base: 1_000_000,
    uid_count: 1_000_000_000,
    gid_base: 1_000_000,
    gid_count: 1_000_000_000,
};

/// Ids a container gets by default.
pub const DEFAULT_SIZE: u32 = 65536;

/// Root's subordinate range from /etc/subuid and /etc/subgid, or [`DEFAULT_RANGE`].
pub fn host_range() -> HostRange {
    host_range_from(Path::new("/etc/subuid"), Path::new("/etc/subgid"))
}

/// As [`host_range`], with the files named (for tests).
pub fn host_range_from(subuid: &Path, subgid: &Path) -> HostRange {
    let uid = fs::read_to_string(subuid).ok().and_then(|s| first_entry_for_root(&s));
    let gid = fs::read_to_string(subgid).ok().and_then(|s| first_entry_for_root(&s));
    match (uid, gid) {
        (Some((ub, uc)), Some((gb, gc))) if uc >= DEFAULT_SIZE && gc >= DEFAULT_SIZE => HostRange {
            uid_base: ub,
            uid_count: uc,
            gid_base: gb,
            gid_count: gc,
        },
        _ => DEFAULT_RANGE,
    }
}

fn first_entry_for_root(content: &str) -> Option<(u32, u32)> {
    content.lines().find_map(|line| {
        let mut parts = line.trim().split(':');
        let who = parts.next()?;
        if who != "root" && who != "0" {
            return None;
        }
        let base = parts.next()?.parse().ok()?;
        let count = parts.next()?.parse().ok()?;
        Some((base, count))
    })
}

impl HostRange {
    /// The default map for a container: the first [`DEFAULT_SIZE`] ids of the range.
    pub fn default_map(&self) -> IdMap {
        IdMap {
            host_uid: self.uid_base,
            host_gid: self.gid_base,
            size: DEFAULT_SIZE,
        }
    }
}

impl IdMap {
    /// The host uid that container uid `uid` is, if it is mapped.
    pub fn host_uid_of(&self, uid: u32) -> Option<u32> {
        (uid < self.size).then(|| self.host_uid + uid)
    }

    /// The host gid that container gid `gid` is, if it is mapped.
    pub fn host_gid_of(&self, gid: u32) -> Option<u32> {
        (gid < self.size).then(|| self.host_gid + gid)
    }

    /// The text written to /proc/PID/uid_map.
    pub fn uid_map_line(&self) -> String {
        format!("0 {} {}\n", self.host_uid, self.size)
    }

    /// The text written to /proc/PID/gid_map.
    pub fn gid_map_line(&self) -> String {
        format!("0 {} {}\n", self.host_gid, self.size)
    }

    /// The compact form recorded when a rootfs is shifted on disk: `uid:gid:size`.
    pub fn to_record(&self) -> String {
        format!("{}:{}:{}", self.host_uid, self.host_gid, self.size)
    }

    /// Parses [`IdMap::to_record`].
    pub fn from_record(s: &str) -> Option<IdMap> {
        let mut p = s.trim().split(':');
        let m = IdMap {
            host_uid: p.next()?.parse().ok()?,
            host_gid: p.next()?.parse().ok()?,
            size: p.next()?.parse().ok()?,
        };
        p.next().is_none().then_some(m)
    }
}

/// Writes the uid and gid maps of process `pid`, which has just unshared its user namespace.
pub fn write_maps(pid: i32, map: &IdMap) -> io::Result<()> {
    fs::write(format!("/proc/{pid}/uid_map"), map.uid_map_line())?;
    fs::write(format!("/proc/{pid}/gid_map"), map.gid_map_line())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_entry_is_taken_from_subuid_and_subgid() {
        let dir = std::env::temp_dir().join(format!("corral-idmap-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("subuid"), "alice:100000:65536\nroot:2000000:1000000\n").unwrap();
        fs::write(dir.join("subgid"), "root:3000000:70000\n").unwrap();
        let r = host_range_from(&dir.join("subuid"), &dir.join("subgid"));
        assert_eq!(
            r,
            HostRange {
                uid_base: 2_000_000,
                uid_count: 1_000_000,
                gid_base: 3_000_000,
                gid_count: 70000
            }
        );
        assert_eq!(
            r.default_map(),
            IdMap {
                host_uid: 2_000_000,
                host_gid: 3_000_000,
                size: 65536
            }
        );

        // Too small a range is ignored: a container needs 65536 ids.
        fs::write(dir.join("subgid"), "root:3000000:1000\n").unwrap();
        assert_eq!(host_range_from(&dir.join("subuid"), &dir.join("subgid")), DEFAULT_RANGE);
        assert_eq!(
            host_range_from(&dir.join("missing"), &dir.join("subgid")),
            DEFAULT_RANGE
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn map_lines_and_records() {
        let m = IdMap {
            host_uid: 1_000_000,
            host_gid: 1_000_000,
            size: 65536,
        };
        assert_eq!(m.uid_map_line(), "0 1000000 65536\n");
        assert_eq!(m.host_uid_of(0), Some(1_000_000));
        assert_eq!(m.host_uid_of(65536), None);
        assert_eq!(IdMap::from_record(&m.to_record()), Some(m));
        assert_eq!(IdMap::from_record("1:2"), None);
        assert_eq!(IdMap::from_record("1:2:3:4"), None);
    }
}
