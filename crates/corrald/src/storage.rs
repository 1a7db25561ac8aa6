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
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StorageError + 'a {
    move |source| StorageError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// One pool of the dir driver.
#[derive(Debug, Clone)]
pub struct DirPool {
    pub name: String,
    pub path: PathBuf,
    /// Spare copies, which give way to starts ([`DirPool::hold_background`]).
    background: IdleWork,
}

impl DirPool {
    pub fn new(name: &str, path: PathBuf) -> DirPool {
        DirPool {
            name: name.to_string(),
            path,
            background: IdleWork::default(),
        }
    }

    pub fn create(&self) -> Result<(), StorageError> {
        for sub in ["images", "containers", "spares"] {
            let p = self.path.join(sub);
            std::fs::create_dir_all(&p).map_err(io_err("create", &p))?;
        }
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
        self.path.join("images").join(fingerprint)
    }

    /// The instance volume of `name` (holds rootfs/, metadata.yaml, templates/).
    pub fn instance_volume(&self, name: &str) -> PathBuf {
        self.path.join("containers").join(name)
    }

    /// A new instance volume from an image volume: a spare copy if there is one, else a copy
    /// made now. On failure nothing is left.
    pub fn clone_image(&self, fingerprint: &str, instance: &str) -> Result<(), StorageError> {
        let to = self.instance_volume(instance);
        if self.take_spare(fingerprint, &to) {
            return Ok(());
        }
        copy_tree(&self.image_volume(fingerprint), &to)
    }

    /// Removes an instance volume entirely.
    pub fn delete_instance(&self, name: &str) -> Result<(), StorageError> {
        remove_tree(&self.instance_volume(name))
    }

    /// Moves an instance volume to a new name.
    pub fn rename_instance(&self, from: &str, to: &str) -> Result<(), StorageError> {
        let (a, b) = (self.instance_volume(from), self.instance_volume(to));
        std::fs::rename(&a, &b).map_err(io_err("rename", &a))
    }

    /// Bytes used by an instance volume (for the state API).
    pub fn usage(&self, name: &str) -> Option<u64> {
        self.usage_of(&self.instance_volume(name))
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
