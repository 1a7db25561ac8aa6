//! The `btrfs` driver, as LXD's: the pool is a btrfs filesystem (on a loop file the driver
//! creates and sizes, on a block device, or an existing directory on btrfs); every volume is a
//! subvolume; clones are writable snapshots and snapshots read-only ones (CoW, instant); restore
//! snapshots the snapshot beside the volume and swaps by renames; `size` is a qgroup limit.
//!
//! Layout: `images/`, `containers/`, `custom/` and their `-snapshots/` directories are plain
//! directories at the pool's root; each volume below them is a subvolume, each snapshot a
//! read-only subvolume under `<kind>-snapshots/<name>/<snapshot>`.
//!
//! Sources. A loop file is made sparse at its size (an existing file is used only if it holds no
//! filesystem: `mkfs.btrfs` refuses others, and the file is left as it was), attached with
//! `losetup --find --show --direct-io=on` and mounted at the root. A block device is formatted
//! the same way, refused if it holds a filesystem, and wiped when the pool is deleted. An
//! existing directory must be on btrfs and empty (or absent: it is then made a subvolume); the
//! pool's deletion removes it. A failed `create` undoes every step it made. `mount` (the daemon's
//! start after a reboot) reuses a loop device already backing the file, or attaches one, and
//! mounts unless mountinfo shows the root mounted; `unmount` unmounts and detaches.
//!
//! Everything goes through the btrfs-progs and util-linux tools (`mkfs.btrfs`, `btrfs`,
//! `losetup`, `wipefs`); a failing tool is a [`StorageError::Command`] with its stderr. Mounts are
//! made with mount(2) and found in `/proc/self/mountinfo`.
//!
//! Quotas are turned on for the filesystem by the first `set_quota`. A clone or snapshot starts
//! with its origin's limit (the kernel copies qgroup limits); a restored volume keeps its own.
//!
//! Nested subvolumes (a container's systemd makes `/var/lib/machines` one) are followed: a clone,
//! snapshot or restore snapshots them too, and a delete removes them first.
//!
//! Idmapped mounts work on btrfs (Linux 5.15+), so volumes need no ownership shifting.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};

use crate::btrfs_ioctl;
use crate::util::{du_bytes, io_err, statvfs_space};
use crate::{Driver, DriverInfo, Result, Space, StorageError, Vol, VolumeKind};

/// The smallest filesystem `mkfs.btrfs` makes with its default profiles (btrfs-progs 6):
/// 109 MiB.
pub const MIN_SIZE: u64 = 114_294_784;

/// LXD's default: lets an unprivileged container delete the subvolumes it creates.
const MOUNT_OPTIONS: &str = "user_subvol_rm_allowed";

/// The inode number of every subvolume's root directory (`BTRFS_FIRST_FREE_OBJECTID`).
const SUBVOLUME_INO: u64 = 256;

/// What the pool's filesystem is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A file the driver creates (`size` bytes, sparse), formats and attaches to a loop device.
    LoopFile { path: PathBuf, size: u64 },
    /// A block device the driver formats.
    Device(PathBuf),
    /// The pool's root is a directory on an existing btrfs filesystem.
    Existing,
}

#[derive(Debug, Clone)]
pub struct BtrfsDriver {
    root: PathBuf,
    source: Source,
}

impl BtrfsDriver {
    /// A pool on a loop file `image` of `size_bytes` (created by [`Driver::create`]), mounted at
    /// `root`.
    pub fn loop_file(root: impl Into<PathBuf>, image: impl Into<PathBuf>, size_bytes: u64) -> BtrfsDriver {
        BtrfsDriver {
            root: root.into(),
            source: Source::LoopFile {
                path: image.into(),
                size: size_bytes,
            },
        }
    }

    /// A pool on the block device `dev` (formatted by [`Driver::create`]), mounted at `root`.
    pub fn device(root: impl Into<PathBuf>, dev: impl Into<PathBuf>) -> BtrfsDriver {
        BtrfsDriver {
            root: root.into(),
            source: Source::Device(dev.into()),
        }
    }

    /// A pool in the directory `root` of a btrfs filesystem that is already mounted.
    pub fn existing(root: impl Into<PathBuf>) -> BtrfsDriver {
        BtrfsDriver {
            root: root.into(),
            source: Source::Existing,
        }
    }

    pub fn source(&self) -> &Source {
        &self.source
    }

    /// The root as an absolute path without symlinks, as mountinfo shows it.
    fn root_abs(&self) -> PathBuf {
        absolute(&self.root)
    }

    /// The mount at the pool's root, if any.
    fn mounted(&self) -> Result<Option<MountEntry>> {
        let root = self.root_abs();
        Ok(mountinfo()?.into_iter().rfind(|m| m.mount_point == root))
    }

    /// The pool's root must be free to mount on: absent, or an empty directory no mount covers.
    fn check_root_free(&self) -> Result<()> {
        if self.mounted()?.is_some() {
            return Err(StorageError::Config(format!(
                "{} is already a mount point",
                self.root.display()
            )));
        }
        match fs::read_dir(&self.root) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    return Err(StorageError::Config(format!("{} is not empty", self.root.display())));
                }
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("read", &self.root)(e)),
        }
    }

    fn create_loop(&self, image: &Path, size: u64) -> Result<()> {
        if size < MIN_SIZE {
            return Err(StorageError::Config(format!(
                "a btrfs loop file of {size} bytes is too small: the minimum is {MIN_SIZE} bytes (109 MiB)"
            )));
        }
        let dir = match image.parent() {
            Some(d) if d.as_os_str().is_empty() => Path::new("."),
            Some(d) => d,
            None => return Err(StorageError::Config(format!("{} is not a file path", image.display()))),
        };
        if !dir.is_dir() {
            return Err(StorageError::Config(format!(
                "the directory {} of loop file {} does not exist",
                dir.display(),
                image.display()
            )));
        }
        self.check_root_free()?;
        let mut undo = Undo::default();

        // The file: made here, or an existing one without a filesystem (mkfs refuses others).
        let existed = match fs::symlink_metadata(image) {
            Ok(m) if !m.is_file() => {
                return Err(StorageError::Config(format!(
                    "{} exists and is not a regular file",
                    image.display()
                )))
            }
            Ok(m) => {
                if m.len() < size {
                    set_len(image, size)?;
                    let (p, len) = (image.to_path_buf(), m.len());
                    undo.push(move || {
                        if let Err(e) = set_len(&p, len) {
                            tracing::warn!("undo: {e}");
                        }
                    });
                }
                true
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(image)
                    .map_err(io_err("create", image))?;
                let p = image.to_path_buf();
                undo.push(move || {
                    let _ = fs::remove_file(&p);
                });
                f.set_len(size).map_err(io_err("size", image))?;
                false
            }
            Err(e) => return Err(io_err("inspect", image)(e)),
        };

        // Metadata `single`, not mkfs's default `dup` for one device: in a loop file both copies
        // sit on the same host disk, and with two copies at distant offsets every transaction
        // commit (each snapshot is one) writes some 30 scattered blocks through the loop device
        // instead of 4 merged ones. Measured here on a snapshot ioctl (Debian subvolume, load 8):
        // median 12-25 ms with dup, 8.6 ms with single. A device the user gives keeps mkfs's
        // defaults.
        run("mkfs.btrfs", &[&"-q", &"--metadata", &"single", &image])?;
        if existed {
            let p = image.to_path_buf();
            undo.push(move || wipe(&p));
        }
        let dev = attach_loop(image)?;
        let attached = dev.clone();
        undo.push(move || {
            if let Err(e) = run("losetup", &[&"-d", &attached.as_str()]) {
                tracing::warn!("undo: {e}");
            }
        });
        self.mount_here(Path::new(&dev), &mut undo)?;
        self.make_layout(&mut undo)?;
        undo.done();
        Ok(())
    }

    fn create_device(&self, dev: &Path) -> Result<()> {
        let m = match fs::metadata(dev) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StorageError::NotFound(format!("block device {}", dev.display())))
            }
            Err(e) => return Err(io_err("inspect", dev)(e)),
        };
        if !m.file_type().is_block_device() {
            return Err(StorageError::Config(format!("{} is not a block device", dev.display())));
        }
        self.check_root_free()?;
        let mut undo = Undo::default();
        run("mkfs.btrfs", &[&"-q", &dev])?;
        let p = dev.to_path_buf();
        undo.push(move || wipe(&p));
        self.mount_here(dev, &mut undo)?;
        self.make_layout(&mut undo)?;
        undo.done();
        Ok(())
    }

    fn create_existing(&self) -> Result<()> {
        let mut undo = Undo::default();
        match fs::metadata(&self.root) {
            Ok(m) => {
                if !m.is_dir() {
                    return Err(StorageError::Config(format!(
                        "{} is not a directory",
                        self.root.display()
                    )));
                }
                check_on_btrfs(&self.root)?;
                if fs::read_dir(&self.root)
                    .map_err(io_err("read", &self.root))?
                    .next()
                    .is_some()
                {
                    return Err(StorageError::Config(format!(
                        "{} is not empty: an existing btrfs directory must be empty to become a pool",
                        self.root.display()
                    )));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let parent = self
                    .root
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                if !parent.is_dir() {
                    return Err(StorageError::Config(format!(
                        "the directory {} of pool root {} does not exist",
                        parent.display(),
                        self.root.display()
                    )));
                }
                check_on_btrfs(parent)?;
                run("btrfs", &[&"subvolume", &"create", &self.root])?;
                let p = self.root.clone();
                undo.push(move || {
                    if let Err(e) = run("btrfs", &[&"subvolume", &"delete", &p]) {
                        tracing::warn!("undo: {e}");
                    }
                });
            }
            Err(e) => return Err(io_err("inspect", &self.root)(e)),
        }
        self.make_layout(&mut undo)?;
        undo.done();
        Ok(())
    }

    /// Mounts the filesystem on `dev` at the root, making the root (and its missing parents).
    fn mount_here(&self, dev: &Path, undo: &mut Undo) -> Result<()> {
        make_dirs(&self.root, undo)?;
        nix::mount::mount(
            Some(dev),
            &self.root,
            Some("btrfs"),
            MsFlags::empty(),
            Some(MOUNT_OPTIONS),
        )
        .map_err(|e| StorageError::Io {
            what: "mount the btrfs filesystem at",
            path: self.root.clone(),
            source: e.into(),
        })?;
        let root = self.root.clone();
        undo.push(move || {
            if let Err(e) = umount(&root) {
                tracing::warn!("undo: {e}");
            }
        });
        Ok(())
    }

    /// The directories of each kind's volumes and snapshots (plain directories).
    fn make_layout(&self, undo: &mut Undo) -> Result<()> {
        for kind in VolumeKind::ALL {
            for sub in [kind.dir(), kind.snapshot_dir()] {
                make_dirs(&self.root.join(sub), undo)?;
            }
        }
        Ok(())
    }

    /// Deletes every volume and snapshot, and the layout's directories.
    fn delete_contents(&self) -> Result<()> {
        for kind in VolumeKind::ALL {
            for sub in [kind.dir(), kind.snapshot_dir()] {
                delete_any(&self.root.join(sub))?;
            }
        }
        Ok(())
    }

    /// Snapshots `src` at `dst`, with the subvolumes nested in `src`; `dst` and its nested
    /// snapshots read-only if asked. Leaves nothing at `dst` if it fails.
    fn snapshot_tree(&self, src: &Path, dst: &Path, readonly: bool) -> Result<()> {
        // Nearly always: no nested subvolume, and the snapshot is one ioctl (the tools below
        // are the fallback, and do the nested case).
        if matches!(btrfs_ioctl::has_nested(src), Ok(false)) {
            match btrfs_ioctl::snapshot(src, dst, readonly) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(io_err("snapshot into", dst)(e)),
                Err(e) => tracing::debug!("snapshot ioctl of {}: {e}; using the btrfs tool", src.display()),
            }
        }
        // Whether `src` has nested subvolumes is asked while the snapshot is made: nearly always
        // it has none, and the snapshot is then all there is to do.
        let listing = start("btrfs", &[&"subvolume", &"list", &"-o", &src])?;
        let made = if readonly {
            run("btrfs", &[&"subvolume", &"snapshot", &"-r", &src, &dst])
        } else {
            run("btrfs", &[&"subvolume", &"snapshot", &src, &dst])
        };
        let children = listing.finish().and_then(|out| parse_nested(&out, src));
        made?;
        let result = match children {
            Ok(children) if children.is_empty() => return Ok(()),
            Ok(_) => (|| {
                let nested = descendants(src)?;
                if readonly {
                    set_readonly(dst, false)?;
                }
                for rel in &nested {
                    // The snapshot holds an empty directory where each nested subvolume was.
                    let at = dst.join(rel);
                    fs::remove_dir(&at).map_err(io_err("remove", &at))?;
                    run("btrfs", &[&"subvolume", &"snapshot", &src.join(rel), &at])?;
                }
                if readonly {
                    for rel in nested.iter().rev() {
                        set_readonly(&dst.join(rel), true)?;
                    }
                    set_readonly(dst, true)?;
                }
                Ok(())
            })(),
            Err(e) => Err(e),
        };
        if result.is_err() {
            if let Err(e) = delete_subvolume_tree(dst) {
                tracing::warn!("cannot remove the partial snapshot {}: {e}", dst.display());
            }
        }
        result
    }

    /// The pool's qgroup of the subvolume at `path`, or None if quotas are off.
    fn qgroup(&self, path: &Path) -> Result<Option<Qgroup>> {
        match run("btrfs", &[&"qgroup", &"show", &"-ref", &"--raw", &path]) {
            Ok(out) => parse_qgroup(&out).map(Some).ok_or_else(|| StorageError::Command {
                command: format!("btrfs qgroup show {}", path.display()),
                detail: format!("no qgroup in {out:?}"),
            }),
            Err(StorageError::Command { detail, .. }) if detail.contains("not enabled") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether quotas are on, from sysfs (no tool to run) when the filesystem is found there.
    fn quotas_enabled(&self) -> Result<bool> {
        if let Some(dir) = self.sysfs_dir() {
            return Ok(dir.join("qgroups").exists());
        }
        Ok(self.qgroup(&self.root)?.is_some())
    }

    /// `/sys/fs/btrfs/<fsid>` of the pool's filesystem, found through a device it is on.
    fn sysfs_dir(&self) -> Option<PathBuf> {
        let m = containing_mount(&self.root_abs()).ok()?;
        if m.fstype != "btrfs" {
            return None;
        }
        let dev = fs::canonicalize(&m.source).ok()?;
        let name = dev.file_name()?;
        fs::read_dir("/sys/fs/btrfs")
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.join("devices").join(name).exists())
    }

    fn enable_quotas(&self) -> Result<()> {
        run("btrfs", &[&"quota", &"enable", &self.root])?;
        // Enabling starts a rescan of what is already there: the numbers are right once it ends.
        run("btrfs", &[&"quota", &"rescan", &"-W", &self.root])?;
        Ok(())
    }

    fn existing_volume(&self, vol: &Vol) -> Result<PathBuf> {
        let p = self.path(vol);
        if !p.exists() {
            return Err(StorageError::NotFound(vol.to_string()));
        }
        Ok(p)
    }
}

impl Driver for BtrfsDriver {
    fn info(&self) -> DriverInfo {
        DriverInfo {
            name: "btrfs",
            copy_on_write: true,
            atomic_snapshots: true,
            quotas: true,
        }
    }

    fn root(&self) -> PathBuf {
        self.root.clone()
    }

    fn create(&self) -> Result<()> {
        match &self.source {
            Source::LoopFile { path, size } => self.create_loop(path, *size),
            Source::Device(dev) => self.create_device(dev),
            Source::Existing => self.create_existing(),
        }
    }

    fn mount(&self) -> Result<()> {
        let mut undo = Undo::default();
        match &self.source {
            Source::LoopFile { path, .. } => {
                if !path.exists() {
                    return Err(StorageError::NotFound(format!("loop file {}", path.display())));
                }
                let devs = loop_devices(path)?;
                if let Some(m) = self.mounted()? {
                    if devs.iter().any(|d| Path::new(d) == m.source) {
                        return Ok(());
                    }
                    return Err(StorageError::Config(format!(
                        "{} is a mount of {}, not of loop file {}",
                        self.root.display(),
                        m.source.display(),
                        path.display()
                    )));
                }
                let attach = |undo: &mut Undo| -> Result<String> {
                    let d = attach_loop(path)?;
                    let dd = d.clone();
                    undo.push(move || {
                        let _ = run("losetup", &[&"-d", &dd.as_str()]);
                    });
                    Ok(d)
                };
                match devs.into_iter().next() {
                    None => {
                        let dev = attach(&mut undo)?;
                        self.mount_here(Path::new(&dev), &mut undo)?;
                    }
                    // A device found attached may be one whose detach is under way (after a
                    // reboot-like `losetup -d`, the file is still listed for a moment): its
                    // mount fails with EINVAL. Then a device of our own, once.
                    Some(dev) => {
                        if let Err(e) = self.mount_here(Path::new(&dev), &mut undo) {
                            tracing::warn!(device = %dev, error = %e, "mounting the loop file through a fresh device");
                            let dev = attach(&mut undo)?;
                            self.mount_here(Path::new(&dev), &mut undo)?;
                        }
                    }
                }
            }
            Source::Device(dev) => {
                if self.mounted()?.is_none() {
                    self.mount_here(dev, &mut undo)?;
                }
            }
            Source::Existing => {
                if !self.root.is_dir() {
                    return Err(StorageError::NotFound(format!("pool root {}", self.root.display())));
                }
                check_on_btrfs(&self.root)?;
            }
        }
        self.make_layout(&mut undo)?;
        undo.done();
        Ok(())
    }

    fn unmount(&self) -> Result<()> {
        wait_for_deletions(&self.root);
        match &self.source {
            Source::LoopFile { path, .. } => {
                while self.mounted()?.is_some() {
                    umount(&self.root)?;
                }
                if path.exists() {
                    for dev in loop_devices(path)? {
                        run("losetup", &[&"-d", &dev.as_str()])?;
                    }
                }
            }
            Source::Device(_) => {
                while self.mounted()?.is_some() {
                    umount(&self.root)?;
                }
            }
            Source::Existing => {}
        }
        Ok(())
    }

    fn delete(&self) -> Result<()> {
        wait_for_deletions(&self.root);
        match &self.source {
            Source::LoopFile { path, .. } => {
                // The file holds everything: no need to delete the subvolumes one by one.
                self.unmount()?;
                match fs::remove_file(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err("remove", path)(e)),
                }
                remove_empty_dir(&self.root)
            }
            Source::Device(dev) => {
                self.mount()?;
                self.delete_contents()?;
                self.unmount()?;
                wipe(dev);
                remove_empty_dir(&self.root)
            }
            Source::Existing => {
                let m = match fs::symlink_metadata(&self.root) {
                    Ok(m) => m,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                    Err(e) => return Err(io_err("inspect", &self.root)(e)),
                };
                self.delete_contents()?;
                if m.ino() == SUBVOLUME_INO {
                    delete_subvolume_tree(&self.root)
                } else {
                    remove_empty_dir(&self.root)
                }
            }
        }
    }

    fn create_volume(&self, vol: &Vol) -> Result<()> {
        let p = self.path(vol);
        if p.exists() {
            return Err(StorageError::Exists(vol.to_string()));
        }
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).map_err(io_err("create", parent))?;
        }
        run("btrfs", &[&"subvolume", &"create", &p])?;
        Ok(())
    }

    fn clone_volume(&self, from: &Vol, to: &Vol) -> Result<()> {
        let src = self.existing_volume(from)?;
        let dst = self.path(to);
        if dst.exists() {
            return Err(StorageError::Exists(to.to_string()));
        }
        if let Some(parent) = dst.parent() {
            fs::create_dir_all(parent).map_err(io_err("create", parent))?;
        }
        self.snapshot_tree(&src, &dst, to.snapshot.is_some())
    }

    fn delete_volume(&self, vol: &Vol) -> Result<()> {
        let p = self.path(vol);
        delete_any(&p)?;
        if vol.snapshot.is_some() {
            // The instance's snapshot directory goes with its last snapshot.
            if let Some(parent) = p.parent() {
                let _ = fs::remove_dir(parent);
            }
        }
        Ok(())
    }

    fn rename_volume(&self, vol: &Vol, new_name: &str) -> Result<()> {
        let a = self.existing_volume(vol)?;
        if vol.snapshot.is_some() {
            // A snapshot takes the new name among its volume's snapshots.
            let to = Vol::new(vol.kind, &vol.name).snapshot(new_name);
            let b = self.path(&to);
            if b.exists() {
                return Err(StorageError::Exists(to.to_string()));
            }
            return fs::rename(&a, &b).map_err(io_err("rename", &a));
        }
        let to = Vol::new(vol.kind, new_name);
        let b = self.path(&to);
        let snaps = self.root.join(vol.kind.snapshot_dir());
        let (sa, sb) = (snaps.join(&vol.name), snaps.join(new_name));
        if b.exists() || sb.exists() {
            return Err(StorageError::Exists(to.to_string()));
        }
        fs::rename(&a, &b).map_err(io_err("rename", &a))?;
        if sa.exists() {
            if let Err(e) = fs::rename(&sa, &sb) {
                let _ = fs::rename(&b, &a);
                return Err(io_err("rename", &sa)(e));
            }
        }
        Ok(())
    }

    fn snapshot(&self, vol: &Vol, snapshot: &str) -> Result<()> {
        let src = self.existing_volume(vol)?;
        let snap = vol.snapshot(snapshot);
        let dst = self.path(&snap);
        if dst.exists() {
            return Err(StorageError::Exists(snap.to_string()));
        }
        if let Some(parent) = dst.parent() {
            fs::create_dir_all(parent).map_err(io_err("create", parent))?;
        }
        self.snapshot_tree(&src, &dst, true)
    }

    fn restore(&self, vol: &Vol, snapshot: &str) -> Result<()> {
        let began = std::time::Instant::now();
        let target = self.existing_volume(vol)?;
        let snap = self.existing_volume(&vol.snapshot(snapshot))?;
        // The volume's size limit is its qgroup's: the new subvolume gets it (a snapshot of the
        // snapshot would get the snapshot's, the limit the volume had when it was taken).
        let limit = if self.quotas_enabled()? {
            self.qgroup(&target)?.map(|q| q.max_referenced)
        } else {
            None
        };
        let fresh = target.with_file_name(format!(".{}.restore", vol.name));
        let old = target.with_file_name(format!(".{}.old", vol.name));
        let quota_at = began.elapsed();
        wait_for_deletions(&old);
        for leftover in [&fresh, &old] {
            delete_any(leftover)?;
        }
        // A writable snapshot of the snapshot beside the volume: a failure leaves the volume.
        self.snapshot_tree(&snap, &fresh, false)?;
        let snapshot_at = began.elapsed();
        if let Some(bytes) = limit {
            let size = bytes.map_or_else(|| "none".to_string(), |b| b.to_string());
            if let Err(e) = run("btrfs", &[&"qgroup", &"limit", &size.as_str(), &fresh]) {
                let _ = delete_subvolume_tree(&fresh);
                return Err(e);
            }
        }
        if let Err(e) = fs::rename(&target, &old) {
            let _ = delete_subvolume_tree(&fresh);
            return Err(io_err("rename", &target)(e));
        }
        if let Err(e) = fs::rename(&fresh, &target) {
            let _ = fs::rename(&old, &target);
            let _ = delete_subvolume_tree(&fresh);
            return Err(io_err("rename", &fresh)(e));
        }
        // The volume is restored. Deleting the old subvolume takes a while (some 17 ms, whatever
        // its size) and nobody waits for it: it goes in the background. Left behind by a crash,
        // it goes with the next restore.
        delete_in_background(old);
        tracing::debug!(%vol, snapshot, quota = ?quota_at, snapshot_made = ?snapshot_at, renamed = ?began.elapsed(), "btrfs restore timings");
        Ok(())
    }

    fn set_quota(&self, vol: &Vol, bytes: Option<u64>) -> Result<()> {
        let p = self.existing_volume(vol)?;
        let size = bytes.map_or_else(|| "none".to_string(), |b| b.to_string());
        match run("btrfs", &[&"qgroup", &"limit", &size.as_str(), &p]) {
            Ok(_) => Ok(()),
            Err(StorageError::Command { detail, .. }) if detail.contains("not enabled") => {
                if bytes.is_none() {
                    return Ok(());
                }
                self.enable_quotas()?;
                run("btrfs", &[&"qgroup", &"limit", &size.as_str(), &p])?;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn usage(&self, vol: &Vol) -> Result<u64> {
        let p = self.existing_volume(vol)?;
        if self.quotas_enabled()? {
            if let Some(q) = self.qgroup(&p)? {
                return Ok(q.referenced);
            }
        }
        du_bytes(&p)
    }

    fn send(&self, snapshot: &Vol, parent: Option<&Vol>) -> Result<std::process::Child> {
        let snap = self.existing_volume(snapshot)?;
        let mut cmd = Command::new("btrfs");
        cmd.arg("send").arg("-q");
        if let Some(p) = parent {
            cmd.arg("-p").arg(self.existing_volume(p)?);
        }
        cmd.arg(&snap)
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| StorageError::Command {
                command: format!("btrfs send {}", snap.display()),
                detail: format!("cannot run btrfs: {e}"),
            })
    }

    fn receive(&self, stream: &mut dyn io::Read, scratch: &Path) -> Result<PathBuf> {
        fs::create_dir_all(scratch).map_err(io_err("create", scratch))?;
        let command = format!("btrfs receive -e {}", scratch.display());
        let fail = |detail: String| StorageError::Command {
            command: command.clone(),
            detail,
        };
        let mut child = Command::new("btrfs")
            .args(["receive", "-q", "-e"])
            .arg(scratch)
            .env("LC_ALL", "C")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| fail(format!("cannot run btrfs: {e}")))?;
        let mut stdin = child.stdin.take().expect("piped");
        let copied = io::copy(stream, &mut stdin);
        drop(stdin);
        let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
        if !out.status.success() {
            return Err(fail(String::from_utf8_lossy(&out.stderr).trim().to_string()));
        }
        copied.map_err(|e| fail(format!("the stream broke off: {e}")))?;
        let mut made = fs::read_dir(scratch)
            .map_err(io_err("read", scratch))?
            .flatten()
            .map(|e| e.path());
        match (made.next(), made.next()) {
            (Some(p), None) => Ok(p),
            _ => Err(fail("the stream did not make exactly one subvolume".into())),
        }
    }

    fn adopt(&self, received: &Path, to: &Vol) -> Result<()> {
        let dst = self.path(to);
        if dst.exists() {
            return Err(StorageError::Exists(to.to_string()));
        }
        if let Some(parent) = dst.parent() {
            fs::create_dir_all(parent).map_err(io_err("create", parent))?;
        }
        // A received subvolume is read-only, and a read-only subvolume cannot move to another
        // directory: a snapshot of it takes its place (read-only for a snapshot, writable for a
        // volume). The caller has received every stream by now: none needs it as a parent.
        if to.snapshot.is_some() {
            run("btrfs", &[&"subvolume", &"snapshot", &"-r", &received, &dst])?;
        } else {
            run("btrfs", &[&"subvolume", &"snapshot", &received, &dst])?;
        }
        delete_subvolume_tree(received)
    }

    fn remove_staged(&self, path: &Path) -> Result<()> {
        delete_any(path)
    }

    fn space(&self) -> Result<Space> {
        statvfs_space(&self.root)
    }
}

/// A read-only snapshot of the subvolume `src` (which has no nested subvolumes) at `dst`: the
/// parent a migration's btrfs send computes a volume's difference against.
pub fn readonly_snapshot(src: &Path, dst: &Path) -> Result<()> {
    btrfs_ioctl::snapshot(src, dst, true).map_err(io_err("snapshot into", dst))
}

/// A read-only snapshot of `src` at `at` that `btrfs receive` takes for the subvolume whose
/// send identity is `identity` (a UUID, as `btrfs subvolume show` prints it): the parent of an
/// incremental stream that another host made against its own copy of the same files (an image
/// both hosts unpacked from the same tarball; receive finds parents by UUID, and two unpacks
/// have different ones). What receives on it must be what the sender's parent held: this
/// host's `src` has to be file for file the sender's. Leaves nothing if it fails.
pub fn stand_in_parent(src: &Path, at: &Path, identity: &str) -> Result<()> {
    let uuid = parse_uuid(identity).ok_or_else(|| StorageError::Command {
        command: format!("stand-in parent {}", at.display()),
        detail: format!("{identity:?} is not a UUID"),
    })?;
    btrfs_ioctl::snapshot(src, at, false).map_err(io_err("snapshot into", at))?;
    // The kernel gives a received identity only to a writable subvolume.
    let made = btrfs_ioctl::set_received(at, uuid, 0)
        .and_then(|()| btrfs_ioctl::set_readonly(at, true))
        .map_err(io_err("set the received identity of", at));
    if made.is_err() {
        let _ = delete_subvolume_tree(at);
    }
    made
}

/// Deletes a subvolume (read-only or not, with its nested ones) or a directory tree of them.
pub fn remove_subvolume(path: &Path) -> Result<()> {
    delete_any(path)
}

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` as 16 bytes.
fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let hex: Vec<u8> = text.bytes().filter(|b| *b != b'-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

/// One qgroup line of `btrfs qgroup show -ref --raw`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Qgroup {
    referenced: u64,
    max_referenced: Option<u64>,
}

fn parse_qgroup(out: &str) -> Option<Qgroup> {
    out.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if !f.first()?.starts_with("0/") {
            return None;
        }
        Some(Qgroup {
            referenced: f.get(1)?.parse().ok()?,
            max_referenced: match *f.get(3)? {
                "none" => None,
                n => Some(n.parse().ok()?),
            },
        })
    })
}

/// Steps that take back what a failing operation did, run newest first unless `done`.
#[derive(Default)]
struct Undo(Vec<Box<dyn FnOnce()>>);

impl Undo {
    fn push(&mut self, step: impl FnOnce() + 'static) {
        self.0.push(Box::new(step));
    }

    fn done(mut self) {
        self.0.clear();
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        while let Some(step) = self.0.pop() {
            step();
        }
    }
}

/// Runs a tool; its stdout, or [`StorageError::Command`] with its stderr.
fn run(program: &str, args: &[&dyn AsRef<OsStr>]) -> Result<String> {
    start(program, args)?.finish()
}

/// A tool started, not yet waited for.
struct Running {
    child: std::process::Child,
    command: String,
}

/// Starts a tool (in the C locale: its messages are matched), its output captured.
fn start(program: &str, args: &[&dyn AsRef<OsStr>]) -> Result<Running> {
    let mut command = program.to_string();
    for a in args {
        command.push(' ');
        command.push_str(&a.as_ref().to_string_lossy());
    }
    match Command::new(program)
        .args(args.iter().map(|a| a.as_ref()))
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => Ok(Running { child, command }),
        Err(e) => Err(StorageError::Command {
            command,
            detail: format!("cannot run {program}: {e}"),
        }),
    }
}

impl Running {
    fn finish(self) -> Result<String> {
        let out = self.child.wait_with_output().map_err(|e| StorageError::Command {
            command: self.command.clone(),
            detail: format!("cannot wait for it: {e}"),
        })?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Err(StorageError::Command {
            command: self.command,
            detail: if stderr.is_empty() {
                out.status.to_string()
            } else {
                stderr
            },
        })
    }
}

/// Attaches `file` to a free loop device (direct I/O where the backing filesystem allows it:
/// no second copy in the page cache); the device's path.
fn attach_loop(file: &Path) -> Result<String> {
    let out = match run("losetup", &[&"--find", &"--show", &"--direct-io=on", &file]) {
        Ok(out) => out,
        Err(e) => {
            // An older losetup may have attached the device and failed only to switch direct
            // I/O on: keep that device.
            if let Some(dev) = loop_devices(file)?.into_iter().next() {
                return Ok(dev);
            }
            tracing::debug!("losetup --direct-io=on: {e}; attaching without direct I/O");
            run("losetup", &[&"--find", &"--show", &file])?
        }
    };
    Ok(out.trim().to_string())
}

/// The loop devices backed by `file` (`losetup -j`).
fn loop_devices(file: &Path) -> Result<Vec<String>> {
    let out = run("losetup", &[&"-j", &file])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_once(':').map(|(dev, _)| dev.trim().to_string()))
        .filter(|d| !d.is_empty())
        .collect())
}

/// Removes filesystem signatures (after a failed create, or a deleted device pool).
fn wipe(path: &Path) {
    if let Err(e) = run("wipefs", &[&"-a", &"-q", &path]) {
        tracing::warn!("{e}");
    }
}

fn set_len(path: &Path, len: u64) -> Result<()> {
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(len))
        .map_err(io_err("resize", path))
}

fn set_readonly(path: &Path, readonly: bool) -> Result<()> {
    let value = if readonly { "true" } else { "false" };
    run("btrfs", &[&"property", &"set", &"-ts", &path, &"ro", &value])?;
    Ok(())
}

/// Unmounts `path`, waiting a little for a mount that is briefly busy.
fn umount(path: &Path) -> Result<()> {
    let mut tries = 0;
    loop {
        match nix::mount::umount2(path, MntFlags::empty()) {
            Ok(()) => return Ok(()),
            Err(Errno::EBUSY) if tries < 20 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                return Err(StorageError::Io {
                    what: "unmount",
                    path: path.to_path_buf(),
                    source: e.into(),
                })
            }
        }
    }
}

/// Makes `path` and its missing parents; the undo removes those it made.
fn make_dirs(path: &Path, undo: &mut Undo) -> Result<()> {
    let mut missing = Vec::new();
    let mut p = path;
    while !p.as_os_str().is_empty() && !p.exists() {
        missing.push(p.to_path_buf());
        match p.parent() {
            Some(parent) => p = parent,
            None => break,
        }
    }
    for dir in missing.into_iter().rev() {
        fs::create_dir(&dir).map_err(io_err("create", &dir))?;
        undo.push(move || {
            let _ = fs::remove_dir(&dir);
        });
    }
    Ok(())
}

fn remove_empty_dir(path: &Path) -> Result<()> {
    match fs::remove_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", path)(e)),
    }
}

/// Removes whatever is at `path`: subvolumes with `btrfs subvolume delete` (nested ones first),
/// directories entry by entry, files. Missing is fine.
fn delete_any(path: &Path) -> Result<()> {
    let m = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("inspect", path)(e)),
    };
    if m.is_dir() && m.ino() == SUBVOLUME_INO {
        return delete_subvolume_tree(path);
    }
    if m.is_dir() {
        for entry in fs::read_dir(path).map_err(io_err("read", path))? {
            let entry = entry.map_err(io_err("read", path))?;
            delete_any(&entry.path())?;
        }
        return remove_empty_dir(path);
    }
    fs::remove_file(path).map_err(io_err("remove", path))
}

/// Subvolumes being deleted in the background ([`delete_in_background`]), by path.
static DELETING: Mutex<Vec<(PathBuf, std::thread::JoinHandle<()>)>> = Mutex::new(Vec::new());

/// Deletes the subvolume (tree) at `path` on a thread of its own; [`wait_for_deletions`] waits
/// for it. A subvolume nobody needs any more (a restore's old volume) goes without making its
/// caller wait.
fn delete_in_background(path: PathBuf) {
    let p = path.clone();
    let spawned = std::thread::Builder::new().name("btrfs-delete".into()).spawn(move || {
        if let Err(e) = delete_subvolume_tree(&p) {
            tracing::warn!("cannot delete the old subvolume {}: {e}", p.display());
        }
    });
    match spawned {
        Ok(handle) => {
            let mut deleting = DELETING.lock().unwrap_or_else(|e| e.into_inner());
            deleting.retain(|(_, h)| !h.is_finished());
            deleting.push((path, handle));
        }
        Err(_) => {
            if let Err(e) = delete_subvolume_tree(&path) {
                tracing::warn!("cannot delete the old subvolume {}: {e}", path.display());
            }
        }
    }
}

/// Waits until the background deletions of subvolumes at or under `path` are over.
fn wait_for_deletions(path: &Path) {
    let mine: Vec<_> = {
        let mut deleting = DELETING.lock().unwrap_or_else(|e| e.into_inner());
        let (mine, others) = deleting.drain(..).partition(|(p, _)| p.starts_with(path));
        *deleting = others;
        mine
    };
    for (_, handle) in mine {
        let _ = handle.join();
    }
}

/// Deletes a subvolume with the subvolumes nested in it (deepest first).
fn delete_subvolume_tree(path: &Path) -> Result<()> {
    // One ioctl when nothing is nested in it (nearly always); the tool otherwise.
    match btrfs_ioctl::destroy(path) {
        Ok(()) => return Ok(()),
        Err(e) if e.raw_os_error() == Some(nix::libc::ENOTEMPTY) => {}
        Err(e) => tracing::debug!(
            "subvolume delete ioctl of {}: {e}; using the btrfs tool",
            path.display()
        ),
    }
    match run("btrfs", &[&"subvolume", &"delete", &path]) {
        Ok(_) => Ok(()),
        // Subvolumes nested in it (ENOTEMPTY): those first. Rare, so not looked for before.
        Err(StorageError::Command { detail, .. }) if detail.contains("Directory not empty") => {
            // A read-only snapshot's nested subvolumes can only go once it is writable.
            set_readonly(path, false)?;
            for child in nested_subvolumes(path)? {
                delete_subvolume_tree(&child)?;
            }
            run("btrfs", &[&"subvolume", &"delete", &path])?;
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// The subvolumes directly nested in the subvolume at `path`, as paths.
fn nested_subvolumes(path: &Path) -> Result<Vec<PathBuf>> {
    let out = run("btrfs", &[&"subvolume", &"list", &"-o", &path])?;
    parse_nested(&out, path)
}

/// `btrfs subvolume list -o PATH`'s subvolumes as paths.
fn parse_nested(out: &str, path: &Path) -> Result<Vec<PathBuf>> {
    let abs = absolute(path);
    let mount = containing_mount(&abs)?;
    let mut found = Vec::new();
    for line in out.lines() {
        // "ID 257 gen 8 top level 256 path containers/c1/rootfs/var/lib/machines", the path
        // from the filesystem's top; the mount shows the filesystem from `fs_root` down.
        let Some((_, fs_path)) = line.split_once(" path ") else {
            continue;
        };
        let fs_path = Path::new("/").join(fs_path.trim_start_matches("<FS_TREE>/"));
        if let Ok(rel) = fs_path.strip_prefix(&mount.fs_root) {
            let p = mount.mount_point.join(rel);
            if p.starts_with(&abs) && p != abs {
                found.push(p);
            }
        }
    }
    Ok(found)
}

/// Every subvolume nested in `path`, at any depth, relative to it, parents first.
fn descendants(path: &Path) -> Result<Vec<PathBuf>> {
    let abs = absolute(path);
    let mut out = Vec::new();
    let mut todo = vec![abs.clone()];
    while let Some(p) = todo.pop() {
        for child in nested_subvolumes(&p)? {
            if let Ok(rel) = child.strip_prefix(&abs) {
                out.push(rel.to_path_buf());
            }
            todo.push(child);
        }
    }
    out.sort_by_key(|p| p.components().count());
    Ok(out)
}

fn check_on_btrfs(path: &Path) -> Result<()> {
    let st = nix::sys::statfs::statfs(path).map_err(|e| io_err("statfs", path)(e.into()))?;
    if st.filesystem_type() == nix::sys::statfs::BTRFS_SUPER_MAGIC {
        return Ok(());
    }
    let fstype = containing_mount(&absolute(path))
        .map(|m| m.fstype)
        .unwrap_or_else(|_| format!("{:#x}", st.filesystem_type().0));
    Err(StorageError::Config(format!(
        "{} is not on a btrfs filesystem (it is on {fstype})",
        path.display()
    )))
}

/// An absolute path without symlinks (as far as it exists), as mountinfo shows paths.
fn absolute(path: &Path) -> PathBuf {
    if let Ok(p) = fs::canonicalize(path) {
        return p;
    }
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    };
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => absolute(parent).join(name),
        _ => abs,
    }
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone)]
struct MountEntry {
    /// The directory of the filesystem that is mounted (`/` unless a subvolume or bind mount).
    fs_root: PathBuf,
    mount_point: PathBuf,
    fstype: String,
    source: PathBuf,
}

fn mountinfo() -> Result<Vec<MountEntry>> {
    let p = Path::new("/proc/self/mountinfo");
    let text = fs::read(p).map_err(io_err("read", p))?;
    Ok(text.split(|&b| b == b'\n').filter_map(parse_mountinfo_line).collect())
}

fn parse_mountinfo_line(line: &[u8]) -> Option<MountEntry> {
    let sep = line.windows(3).position(|w| w == b" - ")?;
    let (left, right) = (&line[..sep], &line[sep + 3..]);
    let mut l = left.split(|&b| b == b' ');
    let mut r = right.split(|&b| b == b' ');
    let fs_root = unescape(l.nth(3)?);
    let mount_point = unescape(l.next()?);
    let fstype = String::from_utf8_lossy(r.next()?).into_owned();
    let source = unescape(r.next()?);
    Some(MountEntry {
        fs_root,
        mount_point,
        fstype,
        source,
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &[u8]) -> PathBuf {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' && i + 3 < field.len() && field[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((field[i + 1] - b'0') * 64 + (field[i + 2] - b'0') * 8 + (field[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(field[i]);
            i += 1;
        }
    }
    PathBuf::from(OsStr::from_bytes(&out))
}

/// The mount `path` (absolute) is on: the deepest mount point above it, the last one mounted.
fn containing_mount(path: &Path) -> Result<MountEntry> {
    let mut best: Option<MountEntry> = None;
    for m in mountinfo()? {
        if path.starts_with(&m.mount_point)
            && best
                .as_ref()
                .is_none_or(|b| m.mount_point.components().count() >= b.mount_point.components().count())
        {
            best = Some(m);
        }
    }
    best.ok_or_else(|| StorageError::NotFound(format!("the mount of {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_uuids() {
        assert_eq!(
            parse_uuid("835daf81-fe0e-5245-bea0-7d5e794a247a").map(|u| (u[0], u[15])),
            Some((0x83, 0x7a))
        );
        assert_eq!(parse_uuid("835daf81"), None);
        assert_eq!(parse_uuid("zz5daf81-fe0e-5245-bea0-7d5e794a247a"), None);
    }

    #[test]
    fn parses_mountinfo_and_qgroups() {
        let m = parse_mountinfo_line(
            b"97 27 0:52 /sub /tmp/a\\040b rw,relatime shared:1 - btrfs /dev/loop3 rw,space_cache=v2",
        )
        .unwrap();
        assert_eq!(m.fs_root, Path::new("/sub"));
        assert_eq!(m.mount_point, Path::new("/tmp/a b"));
        assert_eq!(
            (m.fstype.as_str(), m.source.as_path()),
            ("btrfs", Path::new("/dev/loop3"))
        );
        let out = "Qgroupid    Referenced    Exclusive  Max referenced  Max exclusive   Path \n\
                   --------    ----------    ---------  --------------  -------------   ---- \n\
                   0/256         10452992     10452992        10485760           none   a\n";
        assert_eq!(
            parse_qgroup(out),
            Some(Qgroup {
                referenced: 10452992,
                max_referenced: Some(10485760)
            })
        );
        assert_eq!(
            parse_qgroup(&out.replace("10485760", "none")).unwrap().max_referenced,
            None
        );
    }
}
