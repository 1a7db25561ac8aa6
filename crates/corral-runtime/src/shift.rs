//! The fallback for filesystems that cannot idmap: shift ownership on disk, once.
//!
//! An idmapped mount lets one image owned by host uid 0 serve every container. Where the
//! filesystem refuses (mount_setattr fails with EINVAL), the rootfs is instead rewritten so
//! that uid `u` becomes `host_uid + u`. The map that was applied is recorded in the rootfs
//! directory's `trusted.corral.shift` extended attribute (invisible to an unprivileged
//! container), so the walk is done once: an unchanged map costs one getxattr at start, and a
//! new map shifts from the recorded one.
//!
//! Limits: chown clears set-id bits, so modes are restored after each chown; file capabilities
//! (`security.capability`) are cleared by the kernel on chown and are not rewritten.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::{lchown, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::spec::IdMap;
use crate::sys;

/// The extended attribute that records the map a rootfs was shifted to.
pub const SHIFT_XATTR: &str = "trusted.corral.shift";

#[derive(Debug, thiserror::Error)]
pub enum ShiftError {
    #[error("cannot shift ownership of {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("cannot record the shift of {path} in {SHIFT_XATTR}: {source}")]
    Record { path: PathBuf, source: io::Error },
}

/// The map `rootfs` is currently shifted to, if any.
pub fn recorded_map(rootfs: &Path) -> Option<IdMap> {
    let raw = sys::lgetxattr(rootfs, SHIFT_XATTR).ok().flatten()?;
    IdMap::from_record(std::str::from_utf8(&raw).ok()?)
}

/// What [`ensure_shifted`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShiftOutcome {
    /// The rootfs was already shifted to this map.
    AlreadyShifted,
    /// The rootfs was walked and rewritten; this many inodes changed owner.
    Shifted { changed: u64 },
}

/// Makes `rootfs` owned through `map`, walking it only if it is not shifted to `map` already.
pub fn ensure_shifted(rootfs: &Path, map: &IdMap) -> Result<ShiftOutcome, ShiftError> {
    let from = recorded_map(rootfs);
    if from == Some(*map) {
        return Ok(ShiftOutcome::AlreadyShifted);
    }
    // An unshifted image is the identity map starting at 0.
    let from = from.unwrap_or(IdMap {
        host_uid: 0,
        host_gid: 0,
        size: map.size.max(65536),
    });
    let mut seen = HashSet::new();
    let mut changed = 0;
    walk(rootfs, &from, map, &mut seen, &mut changed)?;
    sys::lsetxattr(rootfs, SHIFT_XATTR, map.to_record().as_bytes()).map_err(|source| ShiftError::Record {
        path: rootfs.to_path_buf(),
        source,
    })?;
    Ok(ShiftOutcome::Shifted { changed })
}

fn translate(id: u32, from_base: u32, to_base: u32, size: u32) -> Option<u32> {
    (id >= from_base && id - from_base < size).then(|| to_base + (id - from_base))
}

fn walk(
    path: &Path,
    from: &IdMap,
    to: &IdMap,
    seen: &mut HashSet<(u64, u64)>,
    changed: &mut u64,
) -> Result<(), ShiftError> {
    let err = |source| ShiftError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = fs::symlink_metadata(path).map_err(err)?;
    // A hard-linked inode must be shifted once, however many names it has.
    if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
        return Ok(());
    }
    let size = from.size.min(to.size);
    let uid = translate(meta.uid(), from.host_uid, to.host_uid, size);
    let gid = translate(meta.gid(), from.host_gid, to.host_gid, size);
    if uid.is_some() || gid.is_some() {
        lchown(path, uid, gid).map_err(err)?;
        *changed += 1;
        // chown drops setuid/setgid on executables: put the mode back.
        let mode = meta.mode() & 0o7777;
        if !meta.file_type().is_symlink() && mode & 0o6000 != 0 {
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(err)?;
        }
    }
    if meta.is_dir() {
        for entry in fs::read_dir(path).map_err(err)? {
            let entry = entry.map_err(err)?;
            walk(&entry.path(), from, to, seen, changed)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn shifts_once_keeps_setuid_and_reshifts_to_a_new_map() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP shift test: needs root");
            return;
        }
        let dir = std::env::temp_dir().join(format!("corral-shift-{}", std::process::id()));
        let root = dir.join("rootfs");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        fs::write(root.join("su"), "").unwrap();
        fs::set_permissions(root.join("su"), fs::Permissions::from_mode(0o4755)).unwrap();
        fs::write(root.join("owned-by-1000"), "").unwrap();
        lchown(root.join("owned-by-1000"), Some(1000), Some(1000)).unwrap();
        fs::hard_link(root.join("etc/passwd"), root.join("passwd-link")).unwrap();
        symlink("/etc/shadow", root.join("link")).unwrap();

        let map = IdMap {
            host_uid: 1_000_000,
            host_gid: 1_000_000,
            size: 65536,
        };
        assert_eq!(
            ensure_shifted(&root, &map).unwrap(),
            ShiftOutcome::Shifted { changed: 6 }
        );
        let m = |p: &str| fs::symlink_metadata(root.join(p)).unwrap();
        assert_eq!((m("etc/passwd").uid(), m("etc/passwd").gid()), (1_000_000, 1_000_000));
        assert_eq!(m("owned-by-1000").uid(), 1_001_000);
        assert_eq!(m("link").uid(), 1_000_000, "the symlink itself is shifted");
        assert_eq!(m("su").mode() & 0o7777, 0o4755, "setuid survives the chown");
        assert_eq!(recorded_map(&root), Some(map));

        // Second start: nothing is walked again.
        assert_eq!(ensure_shifted(&root, &map).unwrap(), ShiftOutcome::AlreadyShifted);

        // A new map shifts from the recorded one, not from zero.
        let map2 = IdMap {
            host_uid: 2_000_000,
            host_gid: 2_000_000,
            size: 65536,
        };
        ensure_shifted(&root, &map2).unwrap();
        assert_eq!(m("owned-by-1000").uid(), 2_001_000);
        assert_eq!(m("etc/passwd").uid(), 2_000_000);
        fs::remove_dir_all(&dir).unwrap();
    }
}
