//! Restore of a dir volume from one of its snapshots, in place: one walk of both trees that
//! writes only what differs (copies what changed or is missing, removes what the snapshot does
//! not have, puts back modes, owners, xattrs, times and hard links), so a restore costs what
//! changed since the snapshot, not the volume's size.
//!
//! What "changed" means: with a valid stamp ([`crate::dir_stamp`], time `T`), a file is taken as
//! unchanged, without reading it, when its ctime is older than `T`, its size, mtime, mode,
//! owner and link count are the snapshot's, and it is at the path it had at `T`. Its path is
//! the same when, for each directory above it, the directory or its parent has a ctime older
//! than `T` (an old ctime means no rename of that directory; an old parent means the parent's
//! entries did not change): a directory renamed since `T` brings files with old ctimes to new
//! paths, and those are compared by content. Every other file is compared by content (as
//! `rsync --checksum` would), and so is everything when there is no valid stamp.
//!
//! Not atomic but idempotent: a file is written under a temporary name in its directory and
//! renamed over its path; what a crash leaves (temporary files, a half-made directory) has a
//! new ctime and is found again, or is extra and removed, by the next run, which the caller
//! makes from its intent. Nothing is followed through a symlink: every entry is looked at with
//! lstat and only real directories are entered.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{lchown, symlink, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};

use nix::sys::stat::{mknod, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;

use crate::util::io_err;
use crate::{Result, StorageError};

/// What a restore did (for the log and the tests).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Files taken as unchanged from their ctime.
    pub trusted: u64,
    /// Files read on both sides and found equal.
    pub compared: u64,
    /// Entries written (copied, linked, made).
    pub written: u64,
    /// Entries of the volume removed.
    pub removed: u64,
}

/// Makes `target` (an existing directory) what `snapshot` is. `unchanged_before`: the stamp's
/// time (ns), if the snapshot's stamp is valid for `target`.
pub(crate) fn restore_tree(snapshot: &Path, target: &Path, unchanged_before: Option<i128>) -> Result<Counts> {
    // The volume's directory is where it was: its own position is never in question.
    walk(snapshot, target, unchanged_before, true, false)
}

/// Copies the tree `from` into `to`, a directory this call makes (its parent must exist): the
/// same walk into an empty directory, in parallel.
pub(crate) fn copy_into_new(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir(to).map_err(io_err("create", to))?;
    walk(from, to, None, false, true).map(|_| ())
}

/// Directories are walked by a few threads at once (file creation is mostly kernel work that
/// scales over cores, and over directories: each has its own lock); regular files with several
/// links and the directories' own metadata are done after, by one.
fn walk(s: &Path, t: &Path, before: Option<i128>, placed: bool, fresh: bool) -> Result<Counts> {
    let shared = Shared {
        before,
        links: Mutex::new(HashMap::new()),
        queue: Mutex::new(Queue {
            jobs: vec![Job {
                s: s.to_path_buf(),
                t: t.to_path_buf(),
                placed,
                fresh,
                seen: None,
            }],
            busy: 0,
            error: None,
        }),
        changed: Condvar::new(),
        linked: Mutex::new(Vec::new()),
        dirs: Mutex::new(Vec::new()),
        counts: Mutex::new(Counts::default()),
        seq: AtomicU64::new(0),
    };
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 4);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| Worker::new(&shared).run());
        }
    });
    let mut q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(e) = q.error.take() {
        return Err(e);
    }
    drop(q);
    let mut w = Worker::new(&shared);
    let linked = std::mem::take(&mut *shared.linked.lock().unwrap_or_else(|e| e.into_inner()));
    for (s, t, placed) in linked {
        w.linked_file(&s, &t, placed)?;
    }
    // Each directory's own metadata, deepest first (its entries' changes moved its mtime).
    let mut dirs = std::mem::take(&mut *shared.dirs.lock().unwrap_or_else(|e| e.into_inner()));
    dirs.sort_by_key(|d| std::cmp::Reverse(d.t.components().count()));
    for d in dirs {
        let now = lstat(&d.t)?;
        w.fix_meta(&d.s, &d.sm, &d.t, &now, d.xattrs)?;
    }
    let counts = *shared.counts.lock().unwrap_or_else(|e| e.into_inner());
    Ok(counts)
}

fn lstat(p: &Path) -> Result<Metadata> {
    fs::symlink_metadata(p).map_err(io_err("stat", p))
}

fn ctime_ns(m: &Metadata) -> i128 {
    m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128
}

fn same_times(a: &Metadata, b: &Metadata) -> bool {
    a.mtime() == b.mtime() && a.mtime_nsec() == b.mtime_nsec()
}

fn same_owner_mode(a: &Metadata, b: &Metadata) -> bool {
    a.mode() == b.mode() && a.uid() == b.uid() && a.gid() == b.gid()
}

/// A directory to make like its counterpart. `placed`: `t` is at the path it had at the stamp;
/// `fresh`: `t` was just made here, empty.
struct Job {
    s: PathBuf,
    t: PathBuf,
    placed: bool,
    fresh: bool,
    /// Their metadata when the parent's walk listed them (None: looked up).
    seen: Option<(Metadata, Metadata)>,
}

struct Queue {
    jobs: Vec<Job>,
    /// Jobs being worked on (which may add more).
    busy: usize,
    error: Option<StorageError>,
}

/// A directory whose own metadata is put back at the end.
struct DirFix {
    s: PathBuf,
    sm: Metadata,
    t: PathBuf,
    xattrs: bool,
}

struct Shared {
    before: Option<i128>,
    /// Hard links: a snapshot inode (dev, ino) with several names → the target path given it.
    links: Mutex<HashMap<(u64, u64), PathBuf>>,
    queue: Mutex<Queue>,
    changed: Condvar,
    /// Regular files with several links (snapshot path, target path, placed), done last.
    linked: Mutex<Vec<(PathBuf, PathBuf, bool)>>,
    dirs: Mutex<Vec<DirFix>>,
    counts: Mutex<Counts>,
    seq: AtomicU64,
}

struct Worker<'a> {
    sh: &'a Shared,
    /// For comparing contents (allocated once: zeroing them per file costs more than the reads).
    bufs: (Vec<u8>, Vec<u8>),
}

impl<'a> Worker<'a> {
    fn new(sh: &'a Shared) -> Worker<'a> {
        Worker {
            sh,
            bufs: (Vec::new(), Vec::new()),
        }
    }

    /// Takes directories off the queue until there are none and nobody can add any.
    fn run(mut self) {
        loop {
            let job = {
                let mut q = self.sh.queue.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    if q.error.is_some() {
                        return;
                    }
                    if let Some(job) = q.jobs.pop() {
                        q.busy += 1;
                        break job;
                    }
                    if q.busy == 0 {
                        self.sh.changed.notify_all();
                        return;
                    }
                    q = self.sh.changed.wait(q).unwrap_or_else(|e| e.into_inner());
                }
            };
            let done = self.dir(&job);
            let mut q = self.sh.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.busy -= 1;
            if let Err(e) = done {
                q.error.get_or_insert(e);
            }
            self.sh.changed.notify_all();
        }
    }

    fn count(&self, f: impl FnOnce(&mut Counts)) {
        f(&mut self.sh.counts.lock().unwrap_or_else(|e| e.into_inner()));
    }

    fn push(&self, job: Job) {
        let mut q = self.sh.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.jobs.push(job);
        self.sh.changed.notify_one();
    }

    /// Whether the entry has not changed since the stamp.
    fn old(&self, m: &Metadata) -> bool {
        self.sh.before.is_some_and(|t| ctime_ns(m) < t)
    }

    /// A temporary name in `dir`.
    fn temp(&self, dir: &Path) -> PathBuf {
        let n = self.sh.seq.fetch_add(1, Ordering::Relaxed);
        dir.join(format!(".corral-restore.{}.{n}", std::process::id()))
    }

    /// Makes the directory `job.t` (existing) hold what `job.s` holds; its subdirectories are
    /// queued, its own metadata left for the end.
    fn dir(&mut self, job: &Job) -> Result<()> {
        let (s, t) = (&job.s, &job.t);
        let (sm, tm) = match &job.seen {
            Some((sm, tm)) => (sm.clone(), tm.clone()),
            None => (lstat(s)?, lstat(t)?),
        };
        let t_old = !job.fresh && self.old(&tm);
        // Entries with their metadata, looked up relative to the directory (statx on the
        // listing's fd: no walk of the whole path per entry).
        let entries = read_entries(s)?;
        let mut have: HashMap<OsString, Metadata> = HashMap::new();
        if !job.fresh {
            let wanted: HashSet<&OsString> = entries.iter().map(|(n, _)| n).collect();
            for (name, m) in read_entries(t)? {
                if wanted.contains(&name) {
                    have.insert(name, m);
                } else {
                    remove_any(&t.join(&name))?;
                    self.count(|c| c.removed += 1);
                }
            }
        }
        for (name, sm) in entries {
            let (sp, tp) = (s.join(&name), t.join(&name));
            if sm.is_file() && sm.nlink() > 1 {
                let mut linked = self.sh.linked.lock().unwrap_or_else(|e| e.into_inner());
                linked.push((sp, tp, job.placed));
                continue;
            }
            let tm = have.remove(&name);
            let same_type = tm.as_ref().is_some_and(|tm| tm.file_type() == sm.file_type());
            if !same_type {
                if tm.is_some() {
                    remove_any(&tp)?;
                    self.count(|c| c.removed += 1);
                }
                if sm.is_dir() {
                    fs::create_dir(&tp).map_err(io_err("create", &tp))?;
                    self.count(|c| c.written += 1);
                    let tm = lstat(&tp)?;
                    self.push(Job {
                        s: sp,
                        t: tp,
                        placed: false,
                        fresh: true,
                        seen: Some((sm, tm)),
                    });
                } else {
                    self.create(&sp, &sm, &tp, job.fresh)?;
                }
                continue;
            }
            let tm = tm.expect("same type");
            let ft = sm.file_type();
            if ft.is_dir() {
                let placed = job.placed && (t_old || self.old(&tm));
                self.push(Job {
                    s: sp,
                    t: tp,
                    placed,
                    fresh: false,
                    seen: Some((sm, tm)),
                });
            } else if ft.is_file() {
                self.file(&sp, &sm, &tp, &tm, job.placed)?;
            } else {
                self.special(&sp, &sm, &tp, &tm, job.placed)?;
            }
        }
        let fix = DirFix {
            s: s.clone(),
            sm,
            t: t.clone(),
            xattrs: !(job.placed && t_old),
        };
        self.sh.dirs.lock().unwrap_or_else(|e| e.into_inner()).push(fix);
        Ok(())
    }

    /// A regular file with one link present on both sides.
    fn file(&mut self, s: &Path, sm: &Metadata, t: &Path, tm: &Metadata, placed: bool) -> Result<()> {
        let attrs = sm.size() == tm.size() && sm.nlink() == tm.nlink();
        if attrs && placed && self.old(tm) && same_times(sm, tm) && same_owner_mode(sm, tm) {
            self.count(|c| c.trusted += 1);
            return Ok(());
        }
        if self.bufs.0.is_empty() {
            self.bufs = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
        }
        if attrs && same_content(s, t, &mut self.bufs)? {
            self.count(|c| c.compared += 1);
            return self.fix_meta(s, sm, t, tm, true);
        }
        self.replace_file(s, sm, t, false)
    }

    /// A regular file with several links (after the parallel walk, alone: one name of each
    /// inode is given a file, the others are linked to it).
    fn linked_file(&mut self, s: &Path, t: &Path, placed: bool) -> Result<()> {
        let sm = lstat(s)?;
        let tm = match fs::symlink_metadata(t) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err("stat", t)(e)),
        };
        let key = (sm.dev(), sm.ino());
        let first = self
            .sh
            .links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        if let Some(first) = first {
            let fm = lstat(&first)?;
            if tm
                .as_ref()
                .is_some_and(|tm| (fm.dev(), fm.ino()) == (tm.dev(), tm.ino()))
            {
                return Ok(());
            }
            if tm.as_ref().is_some_and(|m| m.is_dir()) {
                remove_any(t)?;
            }
            let tmp = self.temp(t.parent().unwrap_or(t));
            fs::hard_link(&first, &tmp).map_err(io_err("link", &tmp))?;
            fs::rename(&tmp, t).map_err(io_err("rename", &tmp))?;
            self.count(|c| c.written += 1);
            return Ok(());
        }
        match tm {
            Some(tm) if tm.is_file() => self.file(s, &sm, t, &tm, placed)?,
            Some(_) => {
                remove_any(t)?;
                self.count(|c| c.removed += 1);
                self.replace_file(s, &sm, t, false)?;
            }
            None => self.replace_file(s, &sm, t, false)?,
        }
        let mut links = self.sh.links.lock().unwrap_or_else(|e| e.into_inner());
        links.insert(key, t.to_path_buf());
        Ok(())
    }

    /// A symlink, device, fifo or socket present on both sides, of the same type.
    fn special(&mut self, s: &Path, sm: &Metadata, t: &Path, tm: &Metadata, placed: bool) -> Result<()> {
        let same = if sm.file_type().is_symlink() {
            fs::read_link(s).map_err(io_err("read", s))? == fs::read_link(t).map_err(io_err("read", t))?
        } else {
            sm.rdev() == tm.rdev()
        };
        if same {
            return self.fix_meta(s, sm, t, tm, !(placed && self.old(tm)));
        }
        remove_any(t)?;
        self.count(|c| c.removed += 1);
        self.create(s, sm, t, false)
    }

    /// Makes `t` (absent) a copy of `s`, a non-directory. `fresh`: in a directory made here,
    /// where nothing needs the temporary name.
    fn create(&mut self, s: &Path, sm: &Metadata, t: &Path, fresh: bool) -> Result<()> {
        let ft = sm.file_type();
        if ft.is_file() {
            return self.replace_file(s, sm, t, fresh);
        }
        let tmp = if fresh {
            t.to_path_buf()
        } else {
            self.temp(t.parent().unwrap_or(t))
        };
        if ft.is_symlink() {
            let to = fs::read_link(s).map_err(io_err("read", s))?;
            symlink(&to, &tmp).map_err(io_err("create", &tmp))?;
        } else {
            let kind = if ft.is_char_device() {
                SFlag::S_IFCHR
            } else if ft.is_block_device() {
                SFlag::S_IFBLK
            } else if ft.is_fifo() {
                SFlag::S_IFIFO
            } else {
                SFlag::S_IFSOCK
            };
            mknod(&tmp, kind, Mode::from_bits_truncate(sm.mode() & 0o7777), sm.rdev())
                .map_err(|e| io_err("create", &tmp)(e.into()))?;
        }
        let tm = lstat(&tmp)?;
        self.fix_meta(s, sm, &tmp, &tm, true)?;
        if !fresh {
            fs::rename(&tmp, t).map_err(io_err("rename", &tmp))?;
        }
        self.count(|c| c.written += 1);
        Ok(())
    }

    /// Writes a copy of the regular file `s` at `t` (replacing whatever is there; `fresh`:
    /// nothing is, in a directory made here).
    fn replace_file(&mut self, s: &Path, sm: &Metadata, t: &Path, fresh: bool) -> Result<()> {
        let tmp = if fresh {
            t.to_path_buf()
        } else {
            self.temp(t.parent().unwrap_or(t))
        };
        let copied = copy_data(s, sm, &tmp).and_then(|()| {
            let tm = lstat(&tmp)?;
            self.fix_meta(s, sm, &tmp, &tm, true)?;
            if fresh {
                return Ok(());
            }
            fs::rename(&tmp, t).map_err(io_err("rename", &tmp))
        });
        if copied.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        self.count(|c| c.written += 1);
        copied
    }

    /// Puts `s`'s owner, mode, xattrs (if `xattrs`) and mtime on `t` where they differ. In
    /// that order: chown clears set-id bits and file capabilities, an ACL sets mode bits.
    fn fix_meta(&self, s: &Path, sm: &Metadata, t: &Path, tm: &Metadata, xattrs: bool) -> Result<()> {
        let symlink = sm.file_type().is_symlink();
        if sm.uid() != tm.uid() || sm.gid() != tm.gid() {
            lchown(t, Some(sm.uid()), Some(sm.gid())).map_err(io_err("chown", t))?;
        }
        if !symlink && (sm.mode() != tm.mode() || sm.uid() != tm.uid() || sm.gid() != tm.gid()) {
            fs::set_permissions(t, fs::Permissions::from_mode(sm.mode() & 0o7777)).map_err(io_err("chmod", t))?;
        }
        if xattrs {
            sync_xattrs(s, t, !sm.is_file() && !sm.is_dir())?;
        }
        if !same_times(sm, tm) {
            let mtime = TimeSpec::new(sm.mtime(), sm.mtime_nsec());
            let atime = TimeSpec::new(sm.atime(), sm.atime_nsec());
            utimensat(nix::fcntl::AT_FDCWD, t, &atime, &mtime, UtimensatFlags::NoFollowSymlink)
                .map_err(|e| io_err("set the times of", t)(e.into()))?;
        }
        Ok(())
    }
}

/// A directory's entries with their metadata (not following symlinks).
fn read_entries(dir: &Path) -> Result<Vec<(OsString, Metadata)>> {
    let mut entries = Vec::new();
    for e in fs::read_dir(dir).map_err(io_err("read", dir))? {
        let e = e.map_err(io_err("read", dir))?;
        let m = e.metadata().map_err(io_err("stat", &e.path()))?;
        entries.push((e.file_name(), m));
    }
    Ok(entries)
}

/// Removes a file, a symlink or a whole directory (never following symlinks).
fn remove_any(p: &Path) -> Result<()> {
    let m = lstat(p)?;
    let r = if m.is_dir() {
        fs::remove_dir_all(p)
    } else {
        fs::remove_file(p)
    };
    r.map_err(io_err("remove", p))
}

const CHUNK: usize = 256 << 10;

/// Whether two regular files hold the same bytes (their sizes are known equal).
fn same_content(a: &Path, b: &Path, (ba, bb): &mut (Vec<u8>, Vec<u8>)) -> Result<bool> {
    let mut fa = File::open(a).map_err(io_err("open", a))?;
    let mut fb = File::open(b).map_err(io_err("open", b))?;
    loop {
        let n = read_full(&mut fa, ba).map_err(io_err("read", a))?;
        let m = read_full(&mut fb, bb).map_err(io_err("read", b))?;
        if n != m || ba[..n] != bb[..m] {
            return Ok(false);
        }
        if n < CHUNK {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Copies a regular file's bytes into a new file `to` (copy_file_range: reflinks where the
/// filesystem can); holes stay holes.
fn copy_data(from: &Path, fm: &Metadata, to: &Path) -> Result<()> {
    let mut src = File::open(from).map_err(io_err("open", from))?;
    let mut dst = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .map_err(io_err("create", to))?;
    let sparse = fm.blocks() * 512 < fm.size();
    if !sparse {
        io::copy(&mut src, &mut dst).map_err(io_err("copy", from))?;
        return Ok(());
    }
    let size = fm.size() as i64;
    let mut at = 0i64;
    use nix::unistd::{lseek, Whence};
    while at < size {
        let data = match lseek(&src, at, Whence::SeekData) {
            Ok(d) => d,
            Err(nix::errno::Errno::ENXIO) => break,
            Err(e) => return Err(io_err("seek in", from)(e.into())),
        };
        let hole = lseek(&src, data, Whence::SeekHole).map_err(|e| io_err("seek in", from)(e.into()))?;
        src.seek(SeekFrom::Start(data as u64))
            .map_err(io_err("seek in", from))?;
        dst.seek(SeekFrom::Start(data as u64)).map_err(io_err("seek in", to))?;
        io::copy(&mut (&mut src).take((hole - data) as u64), &mut dst).map_err(io_err("copy", from))?;
        at = hole;
    }
    dst.set_len(fm.size()).map_err(io_err("size", to))
}

/// Makes `t`'s xattrs `s`'s (the snapshot stamp aside). Unsupported xattrs on a side that has
/// none are no difference.
fn sync_xattrs(s: &Path, t: &Path, special: bool) -> Result<()> {
    let list = |p: &Path| -> Result<Vec<OsString>> {
        match xattr::list(p) {
            Ok(names) => Ok(names.filter(|n| n != crate::dir_stamp::XATTR).collect()),
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EOPNOTSUPP as i32) => Ok(Vec::new()),
            Err(e) => Err(io_err("list the xattrs of", p)(e)),
        }
    };
    let (want, have) = (list(s)?, list(t)?);
    for name in &have {
        if !want.contains(name) {
            xattr::remove(t, name).map_err(io_err("remove an xattr of", t))?;
        }
    }
    for name in &want {
        let value = xattr::get(s, name).map_err(io_err("read an xattr of", s))?;
        let Some(value) = value else { continue };
        if have.contains(name) && xattr::get(t, name).ok().flatten().as_ref() == Some(&value) {
            continue;
        }
        match xattr::set(t, name, &value) {
            // user.* xattrs cannot be put on symlinks and device nodes (nor were they on the
            // snapshot's, which only a filesystem that allows them could give).
            Err(e) if special && e.raw_os_error() == Some(nix::errno::Errno::EPERM as i32) => {}
            r => r.map_err(io_err("set an xattr of", t))?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dir::DirDriver;
    use crate::{Driver, Vol};
    use std::os::unix::fs::MetadataExt;

    /// A dir pool with one container volume `c` holding `rootfs/`; the pool and the rootfs.
    fn pool(tag: &str) -> (DirDriver, PathBuf) {
        let root = std::env::temp_dir().join(format!("corral-restore-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let d = DirDriver::new(&root);
        d.create().unwrap();
        d.create_volume(&Vol::container("c")).unwrap();
        let rootfs = d.path(&Vol::container("c")).join("rootfs");
        fs::create_dir(&rootfs).unwrap();
        (d, rootfs)
    }

    fn set_mtime(p: &Path, from: &Metadata) {
        let t = TimeSpec::new(from.mtime(), from.mtime_nsec());
        utimensat(nix::fcntl::AT_FDCWD, p, &t, &t, UtimensatFlags::NoFollowSymlink).unwrap();
    }

    /// Restores `c` from `snap` as the driver does; what the walk did.
    fn restore(d: &DirDriver, snap: &str) -> (Counts, bool) {
        let vol = Vol::container("c");
        let (s, t) = (d.path(&vol.snapshot(snap)), d.path(&vol));
        let since = crate::dir_stamp::unchanged_before(&s, &t);
        (restore_tree(&s, &t, since).unwrap(), since.is_some())
    }

    /// Whether the temporary directory's filesystem gives birth times (needed for stamps).
    fn stamps_work(d: &DirDriver) -> bool {
        let ok = fs::metadata(d.path(&Vol::container("c"))).unwrap().created().is_ok();
        if !ok {
            println!(
                "SKIP stamp checks: {} has no birth times",
                std::env::temp_dir().display()
            );
        }
        ok
    }

    #[test]
    fn a_change_in_the_snapshots_second_with_the_same_size_and_mtime_is_restored() {
        let (d, r) = pool("second");
        let c = Vol::container("c");
        for i in 0..20 {
            fs::write(r.join(format!("other{i}")), "untouched").unwrap();
        }
        let f = r.join("f");
        fs::write(&f, "aaaa").unwrap();
        let before = fs::symlink_metadata(&f).unwrap();
        // Everything older than the stamp (the clock 50 ms back, rounded down to the second), so
        // that only f's ctime tells it changed.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        d.snapshot(&c, "s1").unwrap();
        // At once (the same second as the snapshot), the same size, the mtime put back.
        fs::write(&f, "bbbb").unwrap();
        set_mtime(&f, &before);
        let after = fs::symlink_metadata(&f).unwrap();
        assert_eq!(
            (after.size(), after.mtime(), after.mtime_nsec()),
            (before.size(), before.mtime(), before.mtime_nsec())
        );
        let (counts, stamped) = restore(&d, "s1");
        assert_eq!(fs::read_to_string(&f).unwrap(), "aaaa");
        if stamps_work(&d) {
            assert!(stamped, "the snapshot's stamp is valid for its own volume");
            assert_eq!(
                counts.trusted, 20,
                "the others are known unchanged from their ctime: {counts:?}"
            );
        }
        assert_eq!(counts.written, 1, "only f is written: {counts:?}");
        assert_eq!(counts.removed, 0, "{counts:?}");
        // Again: nothing left to do.
        let (again, _) = restore(&d, "s1");
        assert_eq!((again.written, again.removed), (0, 0), "{again:?}");
        d.delete().unwrap();
    }

    #[test]
    fn unchanged_files_are_trusted_from_their_ctime_when_the_stamp_is_valid() {
        let (d, r) = pool("trust");
        let c = Vol::container("c");
        fs::create_dir(r.join("usr")).unwrap();
        for i in 0..10 {
            fs::write(r.join(format!("usr/f{i}")), format!("file {i}")).unwrap();
        }
        // Old enough that the stamp (50 ms back, rounded down to the second) is after them.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        d.snapshot(&c, "s1").unwrap();
        fs::write(r.join("usr/f3"), "changed").unwrap();
        let (counts, stamped) = restore(&d, "s1");
        if stamps_work(&d) {
            assert!(stamped);
            assert_eq!(counts.trusted, 9, "{counts:?}");
        }
        assert_eq!(fs::read_to_string(r.join("usr/f3")).unwrap(), "file 3");
        // A snapshot copied elsewhere (another volume) carries a stamp that is not valid there.
        let other = Vol::container("o");
        d.clone_volume(&c.snapshot("s1"), &other).unwrap();
        d.snapshot(&c, "s2").unwrap();
        let s2 = d.path(&c.snapshot("s2"));
        assert_eq!(crate::dir_stamp::unchanged_before(&s2, &d.path(&other)), None);
        d.delete().unwrap();
    }

    #[test]
    fn directories_swapped_by_renames_are_restored_by_content() {
        let (d, r) = pool("swap");
        let c = Vol::container("c");
        for (dir, text) in [("a", "from a"), ("b", "from b")] {
            fs::create_dir(r.join(dir)).unwrap();
            fs::write(r.join(dir).join("x"), text).unwrap();
        }
        // Same size, mode, owner and mtime on both sides: only the content tells them apart.
        let m = fs::symlink_metadata(r.join("a/x")).unwrap();
        set_mtime(&r.join("b/x"), &m);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        d.snapshot(&c, "s1").unwrap();
        fs::rename(r.join("a"), r.join("t")).unwrap();
        fs::rename(r.join("b"), r.join("a")).unwrap();
        fs::rename(r.join("t"), r.join("b")).unwrap();
        restore(&d, "s1");
        assert_eq!(fs::read_to_string(r.join("a/x")).unwrap(), "from a");
        assert_eq!(fs::read_to_string(r.join("b/x")).unwrap(), "from b");
        d.delete().unwrap();
    }

    #[test]
    fn types_owners_modes_links_xattrs_and_extras_come_back() {
        let (d, r) = pool("kinds");
        let c = Vol::container("c");
        fs::write(r.join("file"), "file").unwrap();
        fs::create_dir(r.join("dir")).unwrap();
        fs::write(r.join("dir/in"), "in").unwrap();
        symlink("file", r.join("link")).unwrap();
        mknod(&r.join("fifo"), SFlag::S_IFIFO, Mode::from_bits_truncate(0o640), 0).unwrap();
        fs::write(r.join("owned"), "owned").unwrap();
        lchown(r.join("owned"), Some(1000), Some(1001)).unwrap();
        fs::set_permissions(r.join("owned"), fs::Permissions::from_mode(0o4751)).unwrap();
        fs::write(r.join("h1"), "linked").unwrap();
        fs::hard_link(r.join("h1"), r.join("dir/h2")).unwrap();
        fs::write(r.join("s1"), "same").unwrap();
        fs::write(r.join("s2"), "same").unwrap();
        xattr::set(r.join("file"), "user.corral-test", b"one").unwrap();
        let sparse = r.join("sparse");
        let f = File::create(&sparse).unwrap();
        f.set_len(64 << 20).unwrap();
        drop(f);
        d.snapshot(&c, "s1").unwrap();

        fs::remove_file(r.join("file")).unwrap();
        fs::create_dir(r.join("file")).unwrap();
        fs::remove_dir_all(r.join("dir")).unwrap();
        symlink("elsewhere", r.join("dir")).unwrap();
        fs::remove_file(r.join("link")).unwrap();
        symlink("/etc/passwd", r.join("link")).unwrap();
        fs::remove_file(r.join("fifo")).unwrap();
        fs::write(r.join("extra"), "extra").unwrap();
        fs::create_dir_all(r.join("extra-dir/deep")).unwrap();
        lchown(r.join("owned"), Some(0), Some(0)).unwrap();
        fs::remove_file(r.join("s2")).unwrap();
        fs::hard_link(r.join("s1"), r.join("s2")).unwrap();
        fs::remove_file(&sparse).unwrap();

        restore(&d, "s1");
        assert_eq!(fs::read_to_string(r.join("file")).unwrap(), "file");
        assert_eq!(
            xattr::get(r.join("file"), "user.corral-test").unwrap().as_deref(),
            Some(&b"one"[..])
        );
        assert_eq!(fs::read_to_string(r.join("dir/in")).unwrap(), "in");
        assert_eq!(fs::read_link(r.join("link")).unwrap(), Path::new("file"));
        assert!(fs::symlink_metadata(r.join("fifo")).unwrap().file_type().is_fifo());
        assert!(!r.join("extra").exists() && !r.join("extra-dir").exists());
        let owned = fs::symlink_metadata(r.join("owned")).unwrap();
        assert_eq!((owned.uid(), owned.gid(), owned.mode() & 0o7777), (1000, 1001, 0o4751));
        let (h1, h2) = (
            fs::metadata(r.join("h1")).unwrap(),
            fs::metadata(r.join("dir/h2")).unwrap(),
        );
        assert_eq!(h1.ino(), h2.ino(), "hard links are hard links again");
        let (s1, s2) = (fs::metadata(r.join("s1")).unwrap(), fs::metadata(r.join("s2")).unwrap());
        assert_ne!(s1.ino(), s2.ino(), "files linked since the snapshot are apart again");
        let sm = fs::metadata(&sparse).unwrap();
        assert_eq!(sm.size(), 64 << 20);
        assert!(sm.blocks() < 1024, "the hole stays a hole: {} blocks", sm.blocks());

        // Without a stamp (a snapshot brought by a backup, another boot): by content, as well.
        let snap = d.path(&c.snapshot("s1"));
        xattr::remove(&snap, crate::dir_stamp::XATTR).ok();
        fs::write(r.join("dir/in"), "IN").unwrap();
        let (counts, stamped) = restore(&d, "s1");
        assert!(!stamped);
        assert_eq!(fs::read_to_string(r.join("dir/in")).unwrap(), "in");
        assert_eq!((counts.trusted, counts.written), (0, 1), "{counts:?}");
        d.delete().unwrap();
    }
}
