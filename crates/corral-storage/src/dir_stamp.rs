//! When a dir snapshot was taken, and whether a restore may trust ctimes against that time.
//!
//! The reasoning a restore relies on ([`crate::dir_restore`]): a snapshot is never written after
//! it is taken, and every change to a file (data, size, mode, owner, xattrs, links, rename) sets
//! its ctime to the kernel's clock, which userspace cannot set per file. So a file of the
//! instance whose ctime is older than the moment the snapshot's copy began is as it was then:
//! as the snapshot has it. That holds only if:
//!
//! - the snapshot was copied from this very volume (not a copy of another instance's snapshot,
//!   nor one a backup or a migration brought): the stamp names the volume's directory by
//!   device, inode and birth time;
//! - the clock did not step between the stamp and the restore: the stamp holds the boot id and
//!   the offset of CLOCK_REALTIME to CLOCK_BOOTTIME, which only a step (or a leap second)
//!   changes (NTP slews both alike). A change over 10 ms, another boot, or a clock behind the
//!   stamp: no trust, every file is compared by content. Another boot also covers a crash, after
//!   which a file's data may be on disk without its ctime (no journal, `lazytime`). Not
//!   detected: a step back and then forward again by the same amount between the two;
//! - no page of the volume was left dirty in a shared writable mapping: a store to a page
//!   already dirty does not fault, so does not update ctime. The stamp is taken after a
//!   `syncfs` (the container is frozen or stopped meanwhile), which writes those pages and
//!   write-protects them: the next store faults and updates ctime;
//! - the stamp is early enough for the filesystem's granularity and the coarse clock ctime is
//!   read from: it is the clock 50 ms before the copy, rounded down to the second (for
//!   filesystems with second timestamps; a file changed in that second is compared by
//!   content).
//!
//! The stamp is an xattr of the snapshot's directory (`trusted.`: root's only), written before
//! the snapshot takes its name. Copies of the snapshot (cp -a, backups, migrations) carry it,
//! and are refused by the volume check.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::UNIX_EPOCH;

use nix::time::{clock_gettime, ClockId};

/// The xattr holding the stamp on a snapshot's directory.
pub(crate) const XATTR: &str = "trusted.corral.snapshot";

const MARGIN_NS: i128 = 50_000_000;
const STEP_TOLERANCE_NS: i128 = 10_000_000;
const NS: i128 = 1_000_000_000;

/// When a snapshot's copy began, and of which volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stamp {
    boot_id: String,
    /// Files whose ctime is older (ns since the epoch) are as in the snapshot.
    since_ns: i128,
    /// CLOCK_REALTIME - CLOCK_BOOTTIME, ns.
    offset_ns: i128,
    dev: u64,
    ino: u64,
    birth_ns: i128,
}

fn boot_id() -> Option<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(id.trim().to_string()).filter(|s| !s.is_empty())
}

fn clock_ns(id: ClockId) -> Option<i128> {
    let t = clock_gettime(id).ok()?;
    Some(t.tv_sec() as i128 * NS + t.tv_nsec() as i128)
}

/// (realtime, realtime - boottime), ns.
fn clocks() -> Option<(i128, i128)> {
    let boot = clock_ns(ClockId::CLOCK_BOOTTIME)?;
    let real = clock_ns(ClockId::CLOCK_REALTIME)?;
    Some((real, real - boot))
}

/// The volume directory's identity: device, inode, birth time (ns).
fn identity(vol: &Path) -> Option<(u64, u64, i128)> {
    let m = std::fs::symlink_metadata(vol).ok()?;
    let birth = m.created().ok()?.duration_since(UNIX_EPOCH).ok()?;
    Some((m.dev(), m.ino(), birth.as_nanos() as i128))
}

/// Syncs the volume's filesystem and stamps now, just before the copy of `vol` begins. None
/// when the filesystem gives no birth time or the sync fails: the snapshot is then restored by
/// content only.
pub(crate) fn before_copy(vol: &Path) -> Option<Stamp> {
    let (dev, ino, birth_ns) = identity(vol)?;
    let dir = std::fs::File::open(vol).ok()?;
    nix::unistd::syncfs(&dir).ok()?;
    let (real, offset_ns) = clocks()?;
    Some(Stamp {
        boot_id: boot_id()?,
        since_ns: (real - MARGIN_NS).div_euclid(NS) * NS,
        offset_ns,
        dev,
        ino,
        birth_ns,
    })
}

impl Stamp {
    fn encode(&self) -> String {
        format!(
            "v1 boot={} since={} offset={} dev={} ino={} birth={}",
            self.boot_id, self.since_ns, self.offset_ns, self.dev, self.ino, self.birth_ns
        )
    }

    fn decode(text: &str) -> Option<Stamp> {
        let mut words = text.split_ascii_whitespace();
        if words.next()? != "v1" {
            return None;
        }
        let mut field = |key: &str| -> Option<String> {
            let (k, v) = words.next()?.split_once('=')?;
            (k == key).then(|| v.to_string())
        };
        Some(Stamp {
            boot_id: field("boot")?,
            since_ns: field("since")?.parse().ok()?,
            offset_ns: field("offset")?.parse().ok()?,
            dev: field("dev")?.parse().ok()?,
            ino: field("ino")?.parse().ok()?,
            birth_ns: field("birth")?.parse().ok()?,
        })
    }
}

/// Puts the stamp on the snapshot's directory (None: takes away one the copy carried). A
/// failure only costs a restore by content.
pub(crate) fn write(snapshot_dir: &Path, stamp: Option<&Stamp>) {
    let done = match stamp {
        Some(s) => xattr::set(snapshot_dir, XATTR, s.encode().as_bytes()),
        None => match xattr::remove(snapshot_dir, XATTR) {
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENODATA as i32) => Ok(()),
            other => other,
        },
    };
    if let Err(e) = done {
        tracing::debug!(snapshot = %snapshot_dir.display(), error = %e, "no snapshot stamp: its restore compares contents");
    }
}

/// The ctime (ns) before which files of `vol` are as snapshot `snapshot_dir` has them, if the
/// snapshot's stamp may be trusted now (see the module's header).
pub(crate) fn unchanged_before(snapshot_dir: &Path, vol: &Path) -> Option<i128> {
    let raw = xattr::get(snapshot_dir, XATTR).ok()??;
    let stamp = Stamp::decode(std::str::from_utf8(&raw).ok()?)?;
    let (dev, ino, birth_ns) = identity(vol)?;
    let (real, offset_ns) = clocks()?;
    let trusted = stamp.boot_id == boot_id()?
        && (stamp.dev, stamp.ino, stamp.birth_ns) == (dev, ino, birth_ns)
        && (stamp.offset_ns - offset_ns).abs() <= STEP_TOLERANCE_NS
        && real >= stamp.since_ns;
    if !trusted {
        tracing::debug!(snapshot = %snapshot_dir.display(), "snapshot stamp not valid here: restore by content");
    }
    trusted.then_some(stamp.since_ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_reads_back_and_garbage_does_not() {
        let s = Stamp {
            boot_id: "b".into(),
            since_ns: 17 * NS,
            offset_ns: -3,
            dev: 1,
            ino: 2,
            birth_ns: 5,
        };
        assert_eq!(Stamp::decode(&s.encode()), Some(s));
        assert_eq!(Stamp::decode("v2 boot=b"), None);
        assert_eq!(Stamp::decode("v1 since=1 boot=b"), None);
    }
}
