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
//!
//! Image volumes are made lazily from the stored image file ([`Pool::prepare_image`] in the
//! background at idle priority after an import, [`Pool::ensure_image`] when a launch needs the
//! image now), once per pool and fingerprint at a time: a launch that finds the unpack under way
//! waits for it (which then runs at normal priority) rather than unpacking a second time. On a
//! pool without copy-on-write, the first unpack is made as a spare copy, so the launch that waits
//! for it renames it into place; the image volume itself is unpacked after it, at idle priority.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

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
    /// The image file cannot be unpacked (the image's fault, not the pool's).
    #[error("Invalid image: {0}")]
    BadImage(String),
}

/// What an image volume is made from: the stored image file(s) and the metadata.yaml to write.
#[derive(Debug, Clone)]
pub struct ImageSource {
    pub files: corral_image::ImageFiles,
    pub metadata_yaml: String,
}

/// One unpack of an image into a pool, under way.
#[derive(Debug, Default)]
struct Provision {
    state: Mutex<ProvisionState>,
    changed: Condvar,
    /// Launches waiting on it: while there are any, it runs at normal priority and ignores holds.
    waiters: AtomicUsize,
}

#[derive(Debug, Default)]
struct ProvisionState {
    done: bool,
    error: Option<StorageError>,
}

impl Provision {
    fn notify(&self) {
        let _s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.changed.notify_all();
    }
}

/// Whether the calling thread runs at idle priority (CPU: SCHED_IDLE; I/O: the idle class).
fn set_idle_priority(idle: bool) {
    let policy = if idle { libc::SCHED_IDLE } else { libc::SCHED_OTHER };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler with pid 0 changes the calling thread's policy; `param` is a
    // valid, initialised sched_param that outlives the call.
    let _ = unsafe { libc::sched_setscheduler(0, policy, &param) };
    // ioprio_set(IOPRIO_WHO_PROCESS = 1, 0 = this thread, class << 13): idle is class 3,
    // best effort (class 2) at the default level 4 otherwise.
    let ioprio: libc::c_long = if idle { 3 << 13 } else { (2 << 13) | 4 };
    let (who, this_thread): (libc::c_long, libc::c_long) = (1, 0);
    // SAFETY: a raw syscall taking three integers; no memory is passed.
    let _ = unsafe { libc::syscall(libc::SYS_ioprio_set, who, this_thread, ioprio) };
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
    /// Unpacks of images into this pool under way, by fingerprint.
    provisions: Arc<Mutex<HashMap<String, Arc<Provision>>>>,
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
            provisions: Arc::default(),
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
                // It may hold subvolumes an optimized import had received.
                let _ = self.driver.remove_staged(&e.path());
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

    /// Unpacks the image into this pool in the background, at idle priority (after an import):
    /// unless it is there already or being unpacked.
    pub fn prepare_image(&self, fingerprint: &str, source: ImageSource) {
        if self.has_image(fingerprint) {
            return;
        }
        self.start_provision(fingerprint, source, false);
    }

    /// Makes sure the image can be cloned into an instance now ([`Pool::clone_image`]): its
    /// volume is there, or (without copy-on-write) a spare copy of it. An unpack under way is
    /// waited for (and sped up), else one is made now. Blocking.
    pub fn ensure_image(
        &self,
        fingerprint: &str,
        source: impl FnOnce() -> Option<ImageSource>,
    ) -> Result<(), StorageError> {
        if self.has_image(fingerprint) || (!self.cow() && self.has_spare(fingerprint)) {
            return Ok(());
        }
        if let Some(prov) = self.provision_of(fingerprint) {
            return self.wait_for(fingerprint, &prov);
        }
        let source = source().ok_or_else(|| {
            StorageError::Driver(format!(
                "image {fingerprint} has no stored file to unpack; import it again"
            ))
        })?;
        let Some(prov) = self.start_provision(fingerprint, source, true) else {
            return Err(StorageError::Driver(format!(
                "cannot start the unpack of image {fingerprint}"
            )));
        };
        let waited = self.wait_for(fingerprint, &prov);
        // The count `start_provision` took for this caller.
        prov.waiters.fetch_sub(1, Ordering::SeqCst);
        waited
    }

    /// Waits until the image volume or a spare copy is there, or the unpack has ended.
    fn wait_for(&self, fingerprint: &str, prov: &Provision) -> Result<(), StorageError> {
        prov.waiters.fetch_add(1, Ordering::SeqCst);
        let mut s = prov.state.lock().unwrap_or_else(|e| e.into_inner());
        let result = loop {
            if let Some(e) = &s.error {
                break Err(match e {
                    StorageError::BadImage(m) => StorageError::BadImage(m.clone()),
                    e => StorageError::Driver(e.to_string()),
                });
            }
            if self.has_image(fingerprint) || (!self.cow() && self.has_spare(fingerprint)) {
                break Ok(());
            }
            if s.done {
                break Err(StorageError::Driver(format!(
                    "image {fingerprint} was unpacked into pool {} but is gone again",
                    self.name
                )));
            }
            s = match prov.changed.wait_timeout(s, Duration::from_millis(200)) {
                Ok((s, _)) => s,
                Err(e) => e.into_inner().0,
            };
        };
        drop(s);
        prov.waiters.fetch_sub(1, Ordering::SeqCst);
        result
    }

    fn provision_of(&self, fingerprint: &str) -> Option<Arc<Provision>> {
        let map = self.provisions.lock().unwrap_or_else(|e| e.into_inner());
        map.get(fingerprint).cloned()
    }

    /// Starts the unpack of an image into this pool in a thread (none if one is under way: that
    /// one is returned). `urgent`: somebody waits on it from the start.
    fn start_provision(&self, fingerprint: &str, source: ImageSource, urgent: bool) -> Option<Arc<Provision>> {
        let prov = {
            let mut map = self.provisions.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(p) = map.get(fingerprint) {
                if urgent {
                    p.waiters.fetch_add(1, Ordering::SeqCst);
                }
                return Some(p.clone());
            }
            let p = Arc::new(Provision::default());
            if urgent {
                // Counted as a waiter from the start: the caller takes the count back.
                p.waiters.fetch_add(1, Ordering::SeqCst);
            }
            map.insert(fingerprint.to_string(), p.clone());
            p
        };
        let (pool, fp, job) = (self.clone(), fingerprint.to_string(), prov.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("unpack-{}", &fingerprint[..fingerprint.len().min(12)]))
            .spawn(move || {
                let result = pool.provision(&fp, &source, &job);
                if let Err(e) = &result {
                    tracing::warn!(image = %fp, pool = %pool.name, error = %e, "cannot unpack the image");
                }
                {
                    let mut s = job.state.lock().unwrap_or_else(|e| e.into_inner());
                    s.done = true;
                    s.error = result.err();
                    pool.provisions.lock().unwrap_or_else(|e| e.into_inner()).remove(&fp);
                    job.changed.notify_all();
                }
                if pool.has_image(&fp) {
                    if let Err(e) = pool.make_spare(&fp) {
                        tracing::warn!(image = %fp, error = %e, "cannot make a spare copy");
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(image = %fingerprint, error = %e, "cannot start the unpack");
            self.provisions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(fingerprint);
            return None;
        }
        Some(prov)
    }

    /// The unpack itself (in its own thread): without copy-on-write, a spare copy first (what a
    /// waiting launch takes), then the image volume.
    fn provision(&self, fp: &str, source: &ImageSource, prov: &Provision) -> Result<(), StorageError> {
        let idle = std::cell::Cell::new(true);
        set_idle_priority(true);
        let pace = || {
            let want = prov.waiters.load(Ordering::SeqCst) > 0;
            if want == idle.get() {
                idle.set(!want);
                set_idle_priority(!want);
            }
            if !want {
                self.background.pause(&|| prov.waiters.load(Ordering::SeqCst) > 0);
            }
        };
        if !self.cow() && !self.has_image(fp) && !self.has_spare(fp) {
            self.unpack_spare(fp, source, &pace)?;
            prov.notify();
        }
        if !self.has_image(fp) {
            let mut bad = None;
            let made = self.add_image(fp, |dir| {
                fill_volume(source, dir, &pace).map_err(|e| {
                    let text = e.to_string();
                    bad = Some(e);
                    text
                })
            });
            if let Err(e) = made {
                return Err(match bad {
                    Some(b) => b,
                    None => e,
                });
            }
        }
        // Deleted meanwhile: what was made goes too.
        if !source.files.metadata.exists() {
            self.delete_image(fp)?;
        }
        Ok(())
    }

    /// Unpacks the image as a spare copy (`spares/<fp>/<uuid>`, made under a `.partial` name).
    fn unpack_spare(&self, fp: &str, source: &ImageSource, pace: &dyn Fn()) -> Result<(), StorageError> {
        let dir = self.spares(fp);
        std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let name = uuid::Uuid::new_v4().simple().to_string();
        let partial = dir.join(format!(".{name}.partial"));
        std::fs::create_dir(&partial).map_err(io_err("create", &partial))?;
        if let Err(e) = fill_volume(source, &partial, pace) {
            let _ = remove_tree(&partial);
            return Err(e);
        }
        let done = dir.join(name);
        std::fs::rename(&partial, &done).map_err(io_err("rename", &partial))?;
        if !source.files.metadata.exists() {
            let _ = remove_tree(&dir);
        }
        Ok(())
    }

    /// Whether a finished spare copy of the image is there.
    fn has_spare(&self, fingerprint: &str) -> bool {
        std::fs::read_dir(self.spares(fingerprint))
            .map(|rd| rd.flatten().any(|e| !e.file_name().to_string_lossy().starts_with('.')))
            .unwrap_or(false)
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

    /// Removes the spare copies of an image (when it is deleted). A copy still being made in
    /// the background keeps adding files while the tree goes: a few tries, then it is left to
    /// that copy, which throws its work away once it sees the image gone.
    pub fn drop_spares(&self, fingerprint: &str) -> Result<(), StorageError> {
        let dir = self.spares(fingerprint);
        for _ in 0..20 {
            match remove_tree(&dir) {
                Err(StorageError::Io { source, .. }) if source.raw_os_error() == Some(libc::ENOTEMPTY) => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                other => return other,
            }
        }
        tracing::warn!(spares = %dir.display(), "spare copies still being made: left to their copier to remove");
        Ok(())
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
        if self.has_image(fingerprint) {
            self.driver
                .delete_volume(&Vol::image(fingerprint))
                .map_err(driver_err)?;
        }
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
    /// made now. On failure nothing is left. Whether a spare copy was taken.
    pub fn clone_image(&self, fingerprint: &str, instance: &str) -> Result<bool, StorageError> {
        let to = self.instance_volume(instance);
        if !self.cow() && self.take_spare(fingerprint, &to) {
            return Ok(true);
        }
        if !self.has_image(fingerprint) {
            // A concurrent launch took the spare [`Pool::ensure_image`] left: the image volume
            // is on its way.
            if let Some(prov) = self.provision_of(fingerprint) {
                self.wait_for(fingerprint, &prov)?;
                if !self.cow() && self.take_spare(fingerprint, &to) {
                    return Ok(true);
                }
            }
        }
        self.driver
            .clone_volume(&Vol::image(fingerprint), &Vol::container(instance))
            .map_err(driver_err)?;
        Ok(false)
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

/// Fills an empty volume directory with the image: rootfs/, templates/ and metadata.yaml.
fn fill_volume(source: &ImageSource, dir: &Path, pace: &dyn Fn()) -> Result<(), StorageError> {
    corral_image::unpack_paced(
        &source.files,
        Some(&dir.join("rootfs")),
        Some(&dir.join("templates")),
        pace,
    )
    .map_err(|e| match e {
        corral_image::ImageError::Unpack { .. } => StorageError::Driver(e.to_string()),
        e => StorageError::BadImage(e.to_string()),
    })?;
    let meta = dir.join("metadata.yaml");
    std::fs::write(&meta, &source.metadata_yaml).map_err(io_err("write", &meta))
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
