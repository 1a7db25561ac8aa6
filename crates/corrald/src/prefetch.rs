//! Reading a volume's files ahead of a stream that reads them one by one (`btrfs send`, `tar`).
//!
//! Such a reader waits for each small file's read in turn: one request at a time to the disk
//! (a loop device's worker thread, an NVMe queue), the wait paid about 8000 times for a Debian
//! rootfs. Asking the kernel first for every file's pages (`posix_fadvise(WILLNEED)`, which
//! only queues the reads) keeps many requests in flight, and the reader then finds the pages
//! there. `btrfs send` keeps the pages it finds cached (it drops only those it read itself).
//! Files are asked for in inode order, the order in which `btrfs send` walks a subvolume (and,
//! on a tree unpacked or copied in one go, close to the order of its directories).
//!
//! Best effort: an error skips the file; [`Prefetch`] stops when dropped.

use std::os::unix::fs::DirEntryExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A prefetch running on a thread of its own; stopped (and joined) when dropped.
pub struct Prefetch {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Prefetch {
    /// Starts reading ahead the regular files under `dir` (symlinks not followed).
    pub fn start(dir: &Path) -> Prefetch {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, dir) = (stop.clone(), dir.to_path_buf());
        let thread = std::thread::Builder::new()
            .name("prefetch".into())
            .spawn(move || {
                let mut files = Vec::new();
                list(&dir, &mut files, &flag);
                files.sort_unstable();
                for (_, path) in files {
                    if flag.load(Ordering::Relaxed) {
                        return;
                    }
                    advise(&path);
                }
            })
            .ok();
        Prefetch { stop, thread }
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The regular files under `dir` with their inode numbers.
fn list(dir: &Path, out: &mut Vec<(u64, PathBuf)>, stop: &AtomicBool) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        match e.file_type() {
            Ok(t) if t.is_dir() => list(&e.path(), out, stop),
            Ok(t) if t.is_file() => out.push((e.ino(), e.path())),
            _ => {}
        }
    }
}

/// Queues the reads of the whole file at `path` (a regular file, not followed if a link).
fn advise(path: &Path) {
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NOATIME | nix::libc::O_NONBLOCK)
        .open(path)
    else {
        return;
    };
    let _ = nix::fcntl::posix_fadvise(&f, 0, 0, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_WILLNEED);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_regular_files_without_following_links() {
        let dir = std::env::temp_dir().join(format!("corrald-prefetch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        std::fs::write(dir.join("a/b/f"), b"x").unwrap();
        std::fs::write(dir.join("g"), b"y").unwrap();
        std::os::unix::fs::symlink("/etc", dir.join("link")).unwrap();
        let mut files = Vec::new();
        list(&dir, &mut files, &AtomicBool::new(false));
        let mut names: Vec<_> = files
            .iter()
            .map(|(_, p)| p.strip_prefix(&dir).unwrap().to_path_buf())
            .collect();
        names.sort();
        assert_eq!(names, vec![PathBuf::from("a/b/f"), PathBuf::from("g")]);
        // Started and dropped at once: stops without harm.
        drop(Prefetch::start(&dir));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
