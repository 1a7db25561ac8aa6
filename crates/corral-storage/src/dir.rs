//! The `dir` driver: volumes are directories under the pool's source; clones and snapshots
//! are copies (`cp -a --reflink=auto`: instant on a filesystem with reflinks); a restore writes
//! only what differs from the snapshot ([`crate::dir_restore`]), found from ctimes where the
//! snapshot's stamp allows it ([`crate::dir_stamp`]). No quotas.

use std::path::PathBuf;

use crate::util::{copy_tree, copy_tree_then, du_bytes, io_err, remove_tree, statvfs_space};
use crate::{dir_restore, dir_stamp};
use crate::{Driver, DriverInfo, Result, Space, StorageError, Vol, VolumeKind};

#[derive(Debug, Clone)]
pub struct DirDriver {
    root: PathBuf,
}

impl DirDriver {
    /// A dir pool whose volumes live under `root` (LXD's `source`).
    pub fn new(root: impl Into<PathBuf>) -> DirDriver {
        DirDriver { root: root.into() }
    }

    /// The directories a copy of `from` as `to` reads and makes: `from` must exist and `to` not;
    /// `to`'s parent is made.
    fn copy_ends(&self, from: &Vol, to: &Vol) -> Result<(PathBuf, PathBuf)> {
        let (src, dst) = (self.path(from), self.path(to));
        if !src.exists() {
            return Err(StorageError::NotFound(from.to_string()));
        }
        if dst.exists() {
            return Err(StorageError::Exists(to.to_string()));
        }
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent).map_err(io_err("create", parent))?;
        }
        Ok((src, dst))
    }
}

impl Driver for DirDriver {
    fn info(&self) -> DriverInfo {
        DriverInfo {
            name: "dir",
            copy_on_write: false,
            atomic_snapshots: false,
            quotas: false,
        }
    }

    fn root(&self) -> PathBuf {
        self.root.clone()
    }

    fn create(&self) -> Result<()> {
        self.mount()
    }

    fn mount(&self) -> Result<()> {
        for kind in VolumeKind::ALL {
            for sub in [kind.dir(), kind.snapshot_dir()] {
                let p = self.root.join(sub);
                std::fs::create_dir_all(&p).map_err(io_err("create", &p))?;
            }
        }
        Ok(())
    }

    fn unmount(&self) -> Result<()> {
        Ok(())
    }

    fn delete(&self) -> Result<()> {
        remove_tree(&self.root)
    }

    fn create_volume(&self, vol: &Vol) -> Result<()> {
        let p = self.path(vol);
        if p.exists() {
            return Err(StorageError::Exists(vol.to_string()));
        }
        std::fs::create_dir_all(&p).map_err(io_err("create", &p))
    }

    fn clone_volume(&self, from: &Vol, to: &Vol) -> Result<()> {
        let (src, dst) = self.copy_ends(from, to)?;
        copy_tree(&src, &dst)
    }

    fn delete_volume(&self, vol: &Vol) -> Result<()> {
        remove_tree(&self.path(vol))?;
        if vol.snapshot.is_some() {
            // The instance's snapshot directory goes with its last snapshot.
            if let Some(parent) = self.path(vol).parent() {
                let _ = std::fs::remove_dir(parent);
            }
        }
        Ok(())
    }

    fn rename_volume(&self, vol: &Vol, new_name: &str) -> Result<()> {
        let to = Vol::new(vol.kind, new_name);
        let (a, b) = (self.path(vol), self.path(&to));
        if b.exists() {
            return Err(StorageError::Exists(to.to_string()));
        }
        std::fs::rename(&a, &b).map_err(io_err("rename", &a))?;
        let snaps = self.root.join(vol.kind.snapshot_dir());
        let (sa, sb) = (snaps.join(&vol.name), snaps.join(new_name));
        if sa.exists() {
            if let Err(e) = std::fs::rename(&sa, &sb) {
                let _ = std::fs::rename(&b, &a);
                return Err(io_err("rename", &sa)(e));
            }
        }
        Ok(())
    }

    fn snapshot(&self, vol: &Vol, snapshot: &str) -> Result<()> {
        let (src, dst) = self.copy_ends(vol, &vol.snapshot(snapshot))?;
        // Stamped before the copy begins, for restores ([`dir_stamp`]).
        let stamp = dir_stamp::before_copy(&src);
        copy_tree_then(&src, &dst, |copy| dir_stamp::write(copy, stamp.as_ref()))
    }

    fn restore(&self, vol: &Vol, snapshot: &str) -> Result<()> {
        // Only what differs is written: a restore costs what changed since the snapshot, not
        // the volume's size. Not atomic: the caller records an intent and runs it again after a
        // crash (it is idempotent).
        let (snap, target) = (self.path(&vol.snapshot(snapshot)), self.path(vol));
        if !snap.is_dir() {
            return Err(StorageError::NotFound(vol.snapshot(snapshot).to_string()));
        }
        if !target.is_dir() {
            return Err(StorageError::NotFound(vol.to_string()));
        }
        let since = dir_stamp::unchanged_before(&snap, &target);
        let counts = dir_restore::restore_tree(&snap, &target, since)?;
        tracing::debug!(volume = %vol, snapshot, stamp_valid = since.is_some(), ?counts, "dir restore");
        Ok(())
    }

    fn set_quota(&self, _vol: &Vol, bytes: Option<u64>) -> Result<()> {
        match bytes {
            None => Ok(()),
            Some(_) => Err(StorageError::Unsupported(
                "the dir driver cannot limit a volume's size: use a btrfs pool for `size`".into(),
            )),
        }
    }

    fn usage(&self, vol: &Vol) -> Result<u64> {
        du_bytes(&self.path(vol))
    }

    fn space(&self) -> Result<Space> {
        statvfs_space(&self.root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn pool(tag: &str) -> DirDriver {
        let root = std::env::temp_dir().join(format!("corral-dir-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let d = DirDriver::new(&root);
        d.create().unwrap();
        d
    }

    #[test]
    fn clone_snapshot_restore_any_and_rename() {
        let d = pool("cycle");
        let img = Vol::image("fp");
        d.create_volume(&img).unwrap();
        fs::create_dir_all(d.path(&img).join("rootfs")).unwrap();
        fs::write(d.path(&img).join("rootfs/f"), "image").unwrap();
        let c = Vol::container("c1");
        d.clone_volume(&img, &c).unwrap();
        let f = d.path(&c).join("rootfs/f");
        assert_eq!(fs::read_to_string(&f).unwrap(), "image");
        fs::write(&f, "one").unwrap();
        d.snapshot(&c, "s1").unwrap();
        fs::write(&f, "two").unwrap();
        d.snapshot(&c, "s2").unwrap();
        fs::write(&f, "three").unwrap();
        d.restore(&c, "s1").unwrap();
        assert_eq!(fs::read_to_string(&f).unwrap(), "one", "an older snapshot restores");
        d.restore(&c, "s2").unwrap();
        assert_eq!(fs::read_to_string(&f).unwrap(), "two");
        d.rename_volume(&c, "c2").unwrap();
        let c2 = Vol::container("c2");
        assert!(d.path(&c2.snapshot("s1")).exists() && !d.path(&c).exists());
        assert!(matches!(d.clone_volume(&img, &c2), Err(StorageError::Exists(_))));
        assert!(d
            .set_quota(&c2, Some(1 << 20))
            .unwrap_err()
            .to_string()
            .contains("btrfs"));
        for s in ["s1", "s2"] {
            d.delete_volume(&c2.snapshot(s)).unwrap();
        }
        d.delete_volume(&c2).unwrap();
        assert!(!d.root.join("containers-snapshots/c2").exists());
        d.delete().unwrap();
        assert!(!d.root.exists());
    }
}
