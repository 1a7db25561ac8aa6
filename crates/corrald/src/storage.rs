//! The `dir` storage pool: image volumes unpacked once, instance volumes copied from them.
//!
//! Layout under the pool directory, as LXD's dir driver has it:
//! `images/<fingerprint>/rootfs` (read-only base, with metadata.yaml and templates/ beside it)
//! and `containers/<name>/rootfs`. The copy uses reflinks where the filesystem has them. Other
//! drivers (btrfs, lvm) come with the storage work and will sit behind the same functions.
//!
//! Spare copies: copying an image creates one inode per file, which on a slow disk is most of
//! a launch (1 ms per inode is common on virtual disks: 0.3 s for busybox, 10 s for Debian).
//! So the pool keeps one finished copy of each image under `spares/<fingerprint>/`, made in the
//! background after an import and after each launch that takes it; a launch that finds one
//! only renames it. Spares are removed with their image; half-made ones (`.partial`) are
//! removed at start-up.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use std::sync::Arc;

use corral_storage::{Driver, Vol, VolumeKind};

use crate::idle_work::{Hold, IdleWork};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("copy of {from} to {to} failed: {detail}")]
    Copy { from: PathBuf, to: PathBuf, detail: String },
    #[error("{0}")]
    Driver(String),
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StorageError + 'a {
    move |source| StorageError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// One storage pool: its driver, and for drivers without copy-on-write, the spare copies.
#[derive(Debug, Clone)]
pub struct Pool {
    pub name: String,
    /// The pool's root (where its volumes are).
    pub path: PathBuf,
    pub driver: Arc<dyn Driver>,
    /// Spare copies, which give way to starts ([`Pool::hold_background`]).
    background: IdleWork,
}

fn driver_err(e: corral_storage::StorageError) -> StorageError {
    StorageError::Driver(e.to_string())
}

impl Pool {
    pub fn new(name: &str, driver: Arc<dyn Driver>) -> Pool {
        Pool {
            name: name.to_string(),
            path: driver.root(),
            driver,
            background: IdleWork::default(),
        }
    }

    /// A `dir` pool at `path`.
    pub fn dir(name: &str, path: PathBuf) -> Pool {
        Pool::new(name, Arc::new(corral_storage::dir::DirDriver::new(path)))
    }

    /// Whether clones share blocks (no spare copies needed).
    fn cow(&self) -> bool {
        self.driver.info().copy_on_write
    }

    /// Makes the pool usable (mounted, its directories there) and clears what a crash left.
    pub fn create(&self) -> Result<(), StorageError> {
        self.driver.mount().map_err(driver_err)?;
        // Backup imports a crash interrupted (their instance volume goes by its intent), and
        // copies it cut short (`.NAME.partial`, made by a cp that died with the daemon).
        for e in std::fs::read_dir(&self.path).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with(".import-") {
                let _ = remove_tree(&e.path());
            }
        }
        for kind in corral_storage::VolumeKind::ALL {
            for dir in [kind.dir(), kind.snapshot_dir()] {
                for e in std::fs::read_dir(self.path.join(dir)).into_iter().flatten().flatten() {
                    let n = e.file_name().to_string_lossy().into_owned();
                    if n.starts_with('.') && n.ends_with(".partial") && !self.cow() {
                        let _ = remove_tree(&e.path());
                    }
                }
            }
        }
        if self.cow() {
            return Ok(());
        }
        let spares = self.path.join("spares");
        std::fs::create_dir_all(&spares).map_err(io_err("create", &spares))?;
        // Spares a crash interrupted, and those of images deleted while they were being made.
        // Best effort: the copy of a daemon killed mid-way may still be writing its `.partial`
        // (cp outlives it); what cannot go now goes at the next start.
        let remove = |path: &Path| {
            if let Err(e) = remove_tree(path) {
                tracing::warn!(error = %e, "stale spare copy left for the next start");
            }
        };
        for dir in std::fs::read_dir(self.path.join("spares"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if !self.image_volume(&dir.file_name().to_string_lossy()).exists() {
                remove(&dir.path());
                continue;
            }
            for spare in std::fs::read_dir(dir.path()).into_iter().flatten().flatten() {
                if spare.file_name().to_string_lossy().ends_with(".partial") {
                    remove(&spare.path());
                }
            }
        }
        Ok(())
    }

    /// Makes the image's spare copy (again) in a background thread.
    pub fn refill_spare(&self, fingerprint: &str) {
        if self.cow() {
            return;
        }
        let (pool, fp) = (self.clone(), fingerprint.to_string());
        std::thread::spawn(move || {
            if let Err(e) = pool.make_spare(&fp) {
                tracing::warn!(image = %fp, error = %e, "cannot make a spare copy");
            }
        });
    }

    /// Pauses the pool's background copies while the hold lives (for a container start).
    pub fn hold_background(&self) -> Hold {
        self.background.hold()
    }

    fn spares(&self, fingerprint: &str) -> PathBuf {
        self.path.join("spares").join(fingerprint)
    }

    /// A finished spare copy of the image, taken out of the spares (renamed to `to`).
    fn take_spare(&self, fingerprint: &str, to: &Path) -> bool {
        let Ok(entries) = std::fs::read_dir(self.spares(fingerprint)) else {
            return false;
        };
        entries
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .any(|e| std::fs::rename(e.path(), to).is_ok())
    }

    /// Makes a spare copy of the image unless one is there (blocking: call it off the request
    /// path). A copy finished after its image was deleted is thrown away.
    pub fn make_spare(&self, fingerprint: &str) -> Result<(), StorageError> {
        let dir = self.spares(fingerprint);
        let has_one = std::fs::read_dir(&dir)
            .map(|rd| rd.flatten().any(|e| !e.file_name().to_string_lossy().starts_with('.')))
            .unwrap_or(false);
        let image = self.image_volume(fingerprint);
        if has_one || !image.exists() {
            return Ok(());
        }
        std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let spare = dir.join(uuid::Uuid::new_v4().simple().to_string());
        copy_tree_when_idle(&self.background, &image, &spare)?;
        if !image.exists() {
            remove_tree(&dir)?;
        }
        Ok(())
    }

    /// Removes the spare copies of an image (when it is deleted).
    pub fn drop_spares(&self, fingerprint: &str) -> Result<(), StorageError> {
        remove_tree(&self.spares(fingerprint))
    }

    /// The image volume of `fingerprint` (holds rootfs/, metadata.yaml, templates/).
    pub fn image_volume(&self, fingerprint: &str) -> PathBuf {
        self.driver.path(&Vol::image(fingerprint))
    }

    /// The instance volume of `name` (holds rootfs/, metadata.yaml, templates/).
    pub fn instance_volume(&self, name: &str) -> PathBuf {
        self.driver.path(&Vol::container(name))
    }

    /// The volume of an instance's snapshot.
    pub fn snapshot_volume(&self, instance: &str, snapshot: &str) -> PathBuf {
        self.driver.path(&Vol::container(instance).snapshot(snapshot))
    }

    /// Puts an image into the pool: `fill` writes rootfs/, metadata.yaml and templates/ into an
    /// empty volume made under a temporary name, which takes the image's name once full. On
    /// failure nothing is left.
    pub fn add_image(
        &self,
        fingerprint: &str,
        fill: impl FnOnce(&Path) -> Result<(), String>,
    ) -> Result<(), StorageError> {
        let partial = Vol::image(&format!(".{fingerprint}.partial"));
        let _ = self.driver.delete_volume(&partial);
        let _ = self.driver.delete_volume(&Vol::image(fingerprint));
        self.driver.create_volume(&partial).map_err(driver_err)?;
        let filled = fill(&self.driver.path(&partial))
            .map_err(StorageError::Driver)
            .and_then(|_| self.driver.rename_volume(&partial, fingerprint).map_err(driver_err));
        if filled.is_err() {
            let _ = self.driver.delete_volume(&partial);
        }
        filled
    }

    /// Whether the image is unpacked in this pool.
    pub fn has_image(&self, fingerprint: &str) -> bool {
        self.image_volume(fingerprint).exists()
    }

    /// Removes an image's volume (and its spares).
    pub fn delete_image(&self, fingerprint: &str) -> Result<(), StorageError> {
        self.driver
            .delete_volume(&Vol::image(fingerprint))
            .map_err(driver_err)?;
        self.drop_spares(fingerprint)
    }

    /// A snapshot of an instance's volume (the caller freezes a running instance around it).
    pub fn snapshot_instance(&self, instance: &str, snapshot: &str) -> Result<(), StorageError> {
        self.driver
            .snapshot(&Vol::container(instance), snapshot)
            .map_err(driver_err)
    }

    /// Puts an instance's volume back to one of its snapshots.
    pub fn restore_instance(&self, instance: &str, snapshot: &str) -> Result<(), StorageError> {
        self.driver
            .restore(&Vol::container(instance), snapshot)
            .map_err(driver_err)
    }

    pub fn delete_snapshot(&self, instance: &str, snapshot: &str) -> Result<(), StorageError> {
        self.driver
            .delete_volume(&Vol::container(instance).snapshot(snapshot))
            .map_err(driver_err)
    }

    /// Renames a snapshot (a rename of its directory or subvolume).
    pub fn rename_snapshot(&self, instance: &str, from: &str, to: &str) -> Result<(), StorageError> {
        let (a, b) = (self.snapshot_volume(instance, from), self.snapshot_volume(instance, to));
        std::fs::rename(&a, &b).map_err(io_err("rename", &a))
    }

    /// Deletes every snapshot of an instance.
    pub fn delete_all_snapshots(&self, instance: &str) -> Result<(), StorageError> {
        let dir = self.path.join(VolumeKind::Container.snapshot_dir()).join(instance);
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let snap = e.file_name().to_string_lossy().into_owned();
            self.delete_snapshot(instance, &snap)?;
        }
        remove_tree(&dir)
    }

    /// A new instance volume from another instance or one of its snapshots (CoW where the
    /// driver can). On failure nothing is left.
    pub fn copy_instance(&self, from: &str, snapshot: Option<&str>, to: &str) -> Result<(), StorageError> {
        let mut src = Vol::container(from);
        if let Some(s) = snapshot {
            src = src.snapshot(s);
        }
        self.driver.clone_volume(&src, &Vol::container(to)).map_err(driver_err)
    }

    /// A snapshot of instance `to` copied from a snapshot of `from` (a copy with snapshots).
    pub fn copy_snapshot(&self, from: &str, snapshot: &str, to: &str) -> Result<(), StorageError> {
        let src = Vol::container(from).snapshot(snapshot);
        let dst = Vol::container(to).snapshot(snapshot);
        if let Some(parent) = self.driver.path(&dst).parent() {
            std::fs::create_dir_all(parent).map_err(io_err("create", parent))?;
        }
        self.driver.clone_volume(&src, &dst).map_err(driver_err)
    }

    /// A new instance volume from an image volume: a spare copy if there is one, else a copy
    /// made now. On failure nothing is left.
    pub fn clone_image(&self, fingerprint: &str, instance: &str) -> Result<(), StorageError> {
        let to = self.instance_volume(instance);
        if !self.cow() && self.take_spare(fingerprint, &to) {
            return Ok(());
        }
        self.driver
            .clone_volume(&Vol::image(fingerprint), &Vol::container(instance))
            .map_err(driver_err)
    }

    /// An empty instance volume (with an empty rootfs/).
    pub fn create_instance(&self, name: &str) -> Result<(), StorageError> {
        self.driver.create_volume(&Vol::container(name)).map_err(driver_err)?;
        let rootfs = self.instance_volume(name).join("rootfs");
        std::fs::create_dir_all(&rootfs).map_err(io_err("create", &rootfs))
    }

    /// Removes an instance volume entirely (not its snapshots).
    pub fn delete_instance(&self, name: &str) -> Result<(), StorageError> {
        if !self.instance_volume(name).exists() {
            return Ok(());
        }
        self.driver.delete_volume(&Vol::container(name)).map_err(driver_err)
    }

    /// Moves an instance volume to a new name, its snapshots along.
    pub fn rename_instance(&self, from: &str, to: &str) -> Result<(), StorageError> {
        self.driver.rename_volume(&Vol::container(from), to).map_err(driver_err)
    }

    /// Bytes used by an instance volume (for the state API).
    pub fn usage(&self, name: &str) -> Option<u64> {
        self.driver.usage(&Vol::container(name)).ok()
    }

    /// Bytes used under `path`.
    pub fn usage_of(&self, path: &Path) -> Option<u64> {
        let out = Command::new("du").arg("-sb").arg(path).output().ok()?;
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }
}

/// `cp -a --reflink=auto FROM TO`, into a temporary name first so a failed copy leaves nothing.
/// cp keeps ownership, modes, xattrs, hard links and device nodes exactly, and reflinks on
/// filesystems that can.
pub fn copy_tree(from: &Path, to: &Path) -> Result<(), StorageError> {
    copy_tree_with(Command::new("cp"), from, to, |mut cp| cp.output())
}

/// [`copy_tree`] only when the CPU is otherwise idle (SCHED_IDLE): for work nobody waits on,
/// such as spare copies, which must not slow what users do meanwhile. The copy dies with the
/// daemon (parent-death signal) rather than writing on behind a new one, and stops while
/// `work` is held.
pub fn copy_tree_when_idle(work: &IdleWork, from: &Path, to: &Path) -> Result<(), StorageError> {
    let mut idle = Command::new("setpriv");
    idle.args(["--pdeathsig", "KILL", "chrt", "--idle", "0", "cp"]);
    copy_tree_with(idle, from, to, |cp| work.run(cp))
}

fn copy_tree_with(
    mut cp: Command,
    from: &Path,
    to: &Path,
    run: impl FnOnce(Command) -> io::Result<std::process::Output>,
) -> Result<(), StorageError> {
    let tmp = to.with_file_name(format!(
        ".{}.partial",
        to.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
    ));
    let _ = remove_tree(&tmp);
    cp.args(["-a", "--reflink=auto", "--no-target-directory"])
        .arg(from)
        .arg(&tmp);
    let out = run(cp).map_err(io_err("run cp for", from))?;
    if !out.status.success() {
        let _ = remove_tree(&tmp);
        return Err(StorageError::Copy {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    std::fs::rename(&tmp, to).map_err(io_err("rename", &tmp))
}

/// Removes a directory tree; missing is fine.
pub fn remove_tree(path: &Path) -> Result<(), StorageError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StorageError::Io {
            what: "remove",
            path: path.to_path_buf(),
            source: e,
        }),
    }
}
