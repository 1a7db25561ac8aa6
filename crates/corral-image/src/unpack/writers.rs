//! Regular files finished by worker threads, off the thread that reads the archive.
//!
//! Unpacking is one thread reading (and decompressing) the archive, and, per file, a dozen
//! system calls; on a fresh ext4, GNU tar's `-x` of Debian's rootfs spends a third of its
//! system time in `write` and a fifth in `fchown`, `fchmod`, `utimensat` and `close`, all of
//! which act on an open file and on nothing else. So the reading thread still does everything
//! that depends on the order of the archive (resolving parents, creating each entry with
//! `O_EXCL|O_NOFOLLOW` in its resolved parent, directories, links, replacing what a later entry
//! replaces), and hands a small file's open descriptor, with its contents read, to a worker,
//! which writes the contents, then owner, mode, mtime and xattrs, in that order (a write or a
//! chown drops `security.capability`, so xattrs come last), on the descriptor only: nothing a
//! worker does follows a path. Larger files are written by the reading thread as before (their
//! contents are not held in memory).
//!
//! The caller runs the workers in a [`std::thread::scope`] and calls [`Workers::finish`] before
//! directories get their metadata and the tree is renamed into place; the first error of a
//! worker fails the unpack (and the staging directory goes as on any error).

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::{Scope, ScopedJoinHandle};

use nix::sys::time::TimeSpec;
use tracing::warn;

/// Files up to this size are handed to a worker with their contents; larger ones are written by
/// the reading thread.
pub(super) const HANDOFF_MAX: u64 = 1 << 20;

/// Jobs queued per worker: with [`HANDOFF_MAX`], at most (QUEUE + 1) MiB of file contents per
/// worker are held at once.
const QUEUE: usize = 8;

/// One regular file, created and open, to finish.
pub(super) struct FileJob {
    pub file: File,
    pub data: Vec<u8>,
    pub owner: Option<(u32, u32)>,
    pub mode: u32,
    pub mtime: i64,
    pub xattrs: Vec<(OsString, Vec<u8>)>,
    /// Where it is, for errors and warnings.
    pub target: PathBuf,
    /// The archive entry, for warnings.
    pub entry: String,
}

/// A worker's failure: the file and what went wrong.
pub(super) type Failure = (PathBuf, io::Error);

/// How many workers: none on one core (the reading thread then writes every file itself), two
/// on two (the reading thread mostly waits on the filesystem too), else one per core beyond the
/// reading thread's, up to 4. `CORRAL_UNPACK_WRITERS=N` sets it (0: none), to compare.
pub(super) fn count() -> usize {
    if let Some(n) = std::env::var("CORRAL_UNPACK_WRITERS").ok().and_then(|v| v.parse().ok()) {
        return n;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    match cores {
        0 | 1 => 0,
        2 => 2,
        n => (n - 1).min(4),
    }
}

/// The workers of one unpack.
pub(super) struct Workers<'scope> {
    tx: Option<SyncSender<FileJob>>,
    failed: Arc<AtomicBool>,
    failure: Arc<Mutex<Option<Failure>>>,
    handles: Vec<ScopedJoinHandle<'scope, ()>>,
}

impl<'scope> Workers<'scope> {
    /// Starts `n` workers in `scope`; each calls `pace` before each file (see
    /// [`crate::unpack::unpack_paced`]).
    pub(super) fn start<'env>(scope: &'scope Scope<'scope, 'env>, n: usize, pace: &'env (dyn Fn() + Sync)) -> Self {
        let (tx, rx) = sync_channel::<FileJob>(QUEUE * n.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let failed = Arc::new(AtomicBool::new(false));
        let failure = Arc::new(Mutex::new(None));
        let handles = (0..n)
            .map(|_| {
                let (rx, failed, failure) = (rx.clone(), failed.clone(), failure.clone());
                scope.spawn(move || work(&rx, &failed, &failure, pace))
            })
            .collect();
        Workers {
            tx: Some(tx),
            failed,
            failure,
            handles,
        }
    }

    /// Whether files can be handed over (there are workers).
    pub(super) fn enabled(&self) -> bool {
        !self.handles.is_empty()
    }

    /// A worker's failure so far, if any (the unpack stops there).
    pub(super) fn check(&self) -> Result<(), Failure> {
        if self.failed.load(Ordering::Relaxed) {
            if let Some(f) = self.failure.lock().unwrap_or_else(|e| e.into_inner()).take() {
                return Err(f);
            }
        }
        Ok(())
    }

    /// Hands a file to a worker.
    pub(super) fn send(&self, job: FileJob) -> Result<(), Failure> {
        self.check()?;
        let tx = self.tx.as_ref().expect("workers not finished");
        if let Err(e) = tx.send(job) {
            // Every worker is gone: only after a panic.
            return Err((e.0.target, io::Error::other("the unpack's file writers stopped")));
        }
        Ok(())
    }

    /// Waits for every file handed over to be finished; the first failure.
    pub(super) fn finish(mut self) -> Result<(), Failure> {
        self.tx = None;
        let mut panicked = false;
        for h in self.handles.drain(..) {
            panicked |= h.join().is_err();
        }
        self.check()?;
        if panicked {
            return Err((PathBuf::new(), io::Error::other("a file writer of the unpack panicked")));
        }
        Ok(())
    }
}

/// A worker: files from the queue until it closes. After a failure the rest are dropped unwritten
/// (the unpack fails and its staging directory goes).
fn work(
    rx: &Mutex<Receiver<FileJob>>,
    failed: &AtomicBool,
    failure: &Mutex<Option<Failure>>,
    pace: &(dyn Fn() + Sync),
) {
    loop {
        let job = match rx.lock().unwrap_or_else(|e| e.into_inner()).recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        if failed.load(Ordering::Relaxed) {
            continue;
        }
        pace();
        if let Err(e) = finish_file(&job) {
            let mut f = failure.lock().unwrap_or_else(|e| e.into_inner());
            if !failed.swap(true, Ordering::Relaxed) {
                *f = Some((job.target, e));
            }
        }
    }
}

/// Writes a created file's contents, then its owner, mode (after the owner: chown clears setuid),
/// mtime and xattrs, all on the open file.
fn finish_file(job: &FileJob) -> io::Result<()> {
    let mut file = &job.file;
    file.write_all(&job.data)?;
    finish_metadata(&job.file, job.owner, job.mode, job.mtime)?;
    apply_xattrs_fd(&job.file, &job.xattrs, &job.target, &job.entry)
}

/// Owner, mode and mtime of an open file (the order matters: chown clears setuid).
pub(super) fn finish_metadata(file: &File, owner: Option<(u32, u32)>, mode: u32, mtime: i64) -> io::Result<()> {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(file, Some(uid), Some(gid))?;
    }
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    let t = TimeSpec::new(mtime, 0);
    nix::sys::stat::futimens(file.as_fd(), &t, &t).map_err(io::Error::from)
}

/// Sets xattrs on an open file; what the filesystem or our privileges refuse is skipped with a
/// warning (as GNU tar does, and as `apply_xattrs` does by path); other errors fail.
fn apply_xattrs_fd(file: &File, xattrs: &[(OsString, Vec<u8>)], target: &Path, entry: &str) -> io::Result<()> {
    use xattr::FileExt;
    for (name, value) in xattrs {
        if let Err(e) = file.set_xattr(name, value) {
            use nix::errno::Errno;
            match e.raw_os_error().map(Errno::from_raw) {
                Some(Errno::EPERM | Errno::ENOTSUP | Errno::EACCES) => {
                    warn!(entry, xattr = %name.to_string_lossy(), "xattr not restored: {e}");
                }
                _ => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!(
                            "cannot set xattr {} on {}: {e}",
                            name.to_string_lossy(),
                            target.display()
                        ),
                    ))
                }
            }
        }
    }
    Ok(())
}
