//! Device allow rules: the v1 `devices.allow` syntax, and LXC's default allow-list.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{CgroupError, Result};

/// One device allow rule, as in v1's `devices.allow`: `c 1:3 rwm`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRule {
    /// `'c'` (char), `'b'` (block) or `'a'` (all devices, any access; major/minor must be `None`).
    pub kind: char,
    /// `None` is `*`.
    pub major: Option<u32>,
    /// `None` is `*`.
    pub minor: Option<u32>,
    /// Some of `r`, `w`, `m`.
    pub access: String,
}

/// LXC's default allow-list, after an implicit "deny all".
const DEFAULT_DEVICES: &[(char, Option<u32>, Option<u32>, &str)] = &[
    ('c', None, None, "m"),            // mknod of any char device
    ('b', None, None, "m"),            // mknod of any block device
    ('c', Some(1), Some(3), "rwm"),    // null
    ('c', Some(1), Some(5), "rwm"),    // zero
    ('c', Some(1), Some(7), "rwm"),    // full
    ('c', Some(1), Some(8), "rwm"),    // random
    ('c', Some(1), Some(9), "rwm"),    // urandom
    ('c', Some(5), Some(0), "rwm"),    // tty
    ('c', Some(5), Some(1), "rwm"),    // console
    ('c', Some(5), Some(2), "rwm"),    // ptmx
    ('c', Some(136), None, "rwm"),     // pts
    ('c', Some(10), Some(229), "rwm"), // fuse
    ('c', Some(10), Some(200), "rwm"), // tun
];

/// LXC's default device allow-list (everything else is denied).
pub fn default_device_rules() -> Vec<DeviceRule> {
    DEFAULT_DEVICES
        .iter()
        .map(|&(kind, major, minor, access)| DeviceRule::new(kind, major, minor, access))
        .collect()
}

impl DeviceRule {
    pub fn new(kind: char, major: Option<u32>, minor: Option<u32>, access: &str) -> Self {
        DeviceRule {
            kind,
            major,
            minor,
            access: access.to_string(),
        }
    }

    /// The rule for one host device node, e.g. `/dev/fuse` -> `c 10:229 <access>`.
    pub fn for_node(path: &Path, access: &str) -> Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let meta = fs::metadata(path).map_err(|source| CgroupError::DeviceNode {
            path: path.to_owned(),
            source,
        })?;
        let kind = if meta.file_type().is_char_device() {
            'c'
        } else if meta.file_type().is_block_device() {
            'b'
        } else {
            return Err(CgroupError::DeviceNode {
                path: path.to_owned(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "not a device node"),
            });
        };
        let (major, minor) = (nix::sys::stat::major(meta.rdev()), nix::sys::stat::minor(meta.rdev()));
        let rule = DeviceRule::new(kind, u32::try_from(major).ok(), u32::try_from(minor).ok(), access);
        rule.validate()?;
        Ok(rule)
    }

    /// Checks the kind, the access letters and that numbers fit the kernel's 12-bit majors and
    /// 20-bit minors.
    pub fn validate(&self) -> Result<()> {
        match self.kind {
            'a' if self.major.is_some() || self.minor.is_some() => {
                return Err(self.invalid("kind 'a' takes no device numbers"))
            }
            'a' | 'b' | 'c' => {}
            _ => return Err(self.invalid("kind must be 'a', 'b' or 'c'")),
        }
        if self.access.is_empty() || !self.access.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
            return Err(self.invalid("access must be some of 'r', 'w', 'm'"));
        }
        if self.major.is_some_and(|m| m >= 1 << 12) || self.minor.is_some_and(|m| m >= 1 << 20) {
            return Err(self.invalid("device number out of range"));
        }
        Ok(())
    }

    pub(super) fn invalid(&self, reason: &'static str) -> CgroupError {
        CgroupError::InvalidDevice {
            rule: self.to_string(),
            reason,
        }
    }
}

/// The v1 `devices.allow` syntax; kind `'a'` is written as a bare `a`.
impl fmt::Display for DeviceRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind == 'a' {
            return write!(f, "a");
        }
        let num = |n: Option<u32>| n.map_or_else(|| "*".to_string(), |n| n.to_string());
        write!(
            f,
            "{} {}:{} {}",
            self.kind,
            num(self.major),
            num(self.minor),
            self.access
        )
    }
}
