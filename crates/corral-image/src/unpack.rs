//! Unpacking an image's rootfs and templates, safely.
//!
//! # What keeps writes inside the destination
//!
//! Everything is unpacked into a private staging directory (mode 0700) created next to the destination, which
//! is renamed onto the destination only once the whole archive has been read and checked; on any error the
//! staging directory is removed, so no half-unpacked tree is ever left. Within it, each entry is placed by
//! this module, not by trusting the archive:
//!
//! * Entry paths and hard-link targets are normalised: leading `/` and `.` components are dropped (as GNU tar
//!   does), and any `..` component rejects the image ([`ImageError::UnsafeEntry`]).
//! * An entry's parent directory is resolved one component at a time from the (canonical) image root:
//!   missing directories are created, existing directories are entered, and an existing symlink is followed
//!   only if its canonical target is a directory inside the image root; a symlink leading elsewhere (`link ->
//!   /tmp` followed by `link/pwned`) rejects the image. The entry is then created in that resolved, canonical
//!   parent, so no symlink is followed on the way.
//! * Regular files and symlinks are then created by this module in that parent with `O_CREAT|O_EXCL|O_NOFOLLOW`
//!   (a symlink: `symlink(2)`, which never follows either); if something is there already it is cleared (an
//!   empty directory removed, a non-directory unlinked, never followed) and the entry made again. Owner, mode
//!   and mtime are set on the open file. Resolved parents are remembered for the rest of the unpack, and
//!   forgotten under any path an entry replaces. GNU sparse files and unknown entry types (unpacked as
//!   regular files, as POSIX asks) are written by the tar crate's `Entry::unpack_in`, which also refuses `..`,
//!   checks the parent is inside its base, and creates files with `O_EXCL` after unlinking what was there.
//! * Hard links are made by this module with `link(2)` (which does not follow a symlink as its source) from a
//!   source resolved like a parent above, so it must already be in the tree being unpacked.
//! * Directories, device nodes and fifos are made by this module; ownership (`lchown`), modes, xattrs
//!   (`lsetxattr`) and times (`utimensat` with `AT_SYMLINK_NOFOLLOW`) never follow symlinks. Directory
//!   metadata is applied after all entries, deepest first, and only if the path is still a directory.
//!
//! # What is preserved
//!
//! Numeric ownership exactly as in the archive (no id shifting; only when running as root, like GNU tar),
//! permission bits including setuid/setgid/sticky, symlinks, hard links, mtimes (files, symlinks,
//! directories, nodes), xattrs from PAX `SCHILY.xattr.*` records (as GNU tar `--xattrs` and bsdtar write them,
//! e.g. `security.capability`) on every kind of entry, device nodes and fifos (device nodes need root: without
//! it they are skipped with a warning, as are xattrs the filesystem or our privileges refuse).

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::sys::stat::{Mode, SFlag};
use nix::sys::time::TimeSpec;
use tar::EntryType;
use tracing::{debug, warn};

use crate::compression::{detect_format, unsupported_format, FileFormat};
use crate::read::{normalize, open, scan, tarball_compression, ScanCtx, Stream};
use crate::{ImageError, ImageFiles};

mod squashfs;
pub use squashfs::unsquashfs_available;

/// Unpack the image's root filesystem into `dest`.
///
/// A unified image gives the entries under `rootfs/`, with that prefix stripped; a split image gives its whole
/// rootfs tarball or squashfs (unpacked by `unsquashfs`, see `squashfs.rs`). `dest` must not exist, or be an
/// empty directory; its parent is created if needed. See the [module documentation](self) for what is
/// preserved and how writes are kept inside `dest`. On error nothing is left at `dest` (an empty directory
/// that was there stays).
pub fn unpack_rootfs(files: &ImageFiles, dest: &Path) -> Result<(), ImageError> {
    unpack(files, Some(dest), None)
}

/// Unpack the image's `templates/` directory into `dest` (same rules as [`unpack_rootfs`]). An image without
/// templates gives an empty directory.
pub fn unpack_templates(files: &ImageFiles, dest: &Path) -> Result<(), ImageError> {
    unpack(files, None, Some(dest))
}

/// Unpack the rootfs and/or the templates in one go: for a unified image this reads (and decompresses) the
/// tarball once instead of twice. Either both destinations are filled or neither is.
pub fn unpack(files: &ImageFiles, rootfs_dest: Option<&Path>, templates_dest: Option<&Path>) -> Result<(), ImageError> {
    unpack_paced(files, rootfs_dest, templates_dest, &|| {})
}

/// [`unpack()`], calling `pace` before each archive entry is placed: background work can wait there
/// (or change its priority) while something more urgent runs. `pace` must not touch the destinations.
pub fn unpack_paced(
    files: &ImageFiles,
    rootfs_dest: Option<&Path>,
    templates_dest: Option<&Path>,
    pace: &dyn Fn(),
) -> Result<(), ImageError> {
    // Refuse early: before creating anything.
    let image = files
        .rootfs
        .as_deref()
        .filter(|_| rootfs_dest.is_some())
        .unwrap_or(&files.metadata);
    for dest in rootfs_dest.iter().chain(templates_dest.iter()) {
        check_dest(image, dest)?;
    }
    if let (Some(r), Some(t)) = (rootfs_dest, templates_dest) {
        if r == t {
            return Err(ImageError::InvalidInput(format!(
                "the rootfs and the templates cannot both be unpacked into {}",
                r.display()
            )));
        }
    }
    let mut done: Vec<PathBuf> = Vec::new();
    let result = (|| {
        match (&files.rootfs, rootfs_dest) {
            (Some(rootfs), Some(dest)) => {
                // Split image: the rootfs file is the tree itself; templates come from the metadata tarball.
                match detect_format(rootfs)? {
                    FileFormat::Tarball(_) => extract(rootfs, vec![Target::new(rootfs, None, dest)?], pace)?,
                    FileFormat::Squashfs => squashfs::extract(rootfs, Target::new(rootfs, None, dest)?, pace)?,
                    other => return Err(unsupported_format(rootfs, other)),
                }
                done.push(dest.to_path_buf());
                if let Some(t) = templates_dest {
                    extract(
                        &files.metadata,
                        vec![Target::new(&files.metadata, Some("templates"), t)?],
                        pace,
                    )?;
                    done.push(t.to_path_buf());
                }
            }
            _ => {
                let mut targets = Vec::new();
                if let Some(dest) = rootfs_dest {
                    targets.push(Target::new(&files.metadata, Some("rootfs"), dest)?);
                }
                if let Some(dest) = templates_dest {
                    targets.push(Target::new(&files.metadata, Some("templates"), dest)?);
                }
                if !targets.is_empty() {
                    extract(&files.metadata, targets, pace)?;
                }
            }
        }
        Ok(())
    })();
    if result.is_err() {
        for dest in done {
            if let Err(e) = fs::remove_dir_all(&dest) {
                warn!(dest = %dest.display(), "cannot remove partly unpacked image: {e}");
            }
        }
    }
    result
}

/// `dest` must be missing or an empty directory (not a symlink to one); make sure its parent exists.
fn check_dest(image: &Path, dest: &Path) -> Result<(), ImageError> {
    let io_err = |source| ImageError::Unpack {
        image: image.to_path_buf(),
        dest: dest.to_path_buf(),
        source,
    };
    if dest.file_name().is_none() {
        return Err(ImageError::InvalidInput(format!(
            "{} cannot be an unpack destination",
            dest.display()
        )));
    }
    match fs::symlink_metadata(dest) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs::create_dir_all(parent).map_err(io_err)?;
            }
            Ok(())
        }
        Err(e) => Err(io_err(e)),
        Ok(m) if m.is_dir() => match fs::read_dir(dest).map_err(io_err)?.next() {
            None => Ok(()),
            Some(_) => Err(ImageError::DestinationNotEmpty {
                path: dest.to_path_buf(),
            }),
        },
        Ok(_) => Err(ImageError::DestinationNotEmpty {
            path: dest.to_path_buf(),
        }),
    }
}

/// Ownership, mode, times and xattrs of a directory, applied once everything is unpacked.
struct DirMeta {
    entry: String,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: i64,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

/// One tree being unpacked from an archive: the entries under `prefix` (or all of them).
struct Target {
    prefix: Option<&'static str>,
    dest: PathBuf,
    /// Private directory next to `dest`, removed at the end whatever happens.
    staging: PathBuf,
    /// What the tar crate's `unpack_in` gets: `staging` when entries carry `prefix/`, else `root`.
    base: PathBuf,
    /// Canonical path of the tree being built: `staging/prefix` (or `staging/rootfs`).
    root: PathBuf,
    dirs: BTreeMap<PathBuf, DirMeta>,
    /// Directories already resolved (relative path to canonical path), so that each entry does
    /// not walk its parents again; forgotten under a path an entry replaces.
    resolved: HashMap<PathBuf, PathBuf>,
    seen: bool,
}

impl Target {
    fn new(image: &Path, prefix: Option<&'static str>, dest: &Path) -> Result<Self, ImageError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let io_err = |source| ImageError::Unpack {
            image: image.to_path_buf(),
            dest: dest.to_path_buf(),
            source,
        };
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = dest.file_name().unwrap_or(OsStr::new("image"));
        let mut staging_name = OsString::from(".");
        staging_name.push(name);
        staging_name.push(format!(
            ".corral-unpack-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let staging = parent.join(staging_name);
        DirBuilder::new().mode(0o700).create(&staging).map_err(io_err)?;
        let made = (|| {
            let staging = fs::canonicalize(&staging)?;
            let root = staging.join(prefix.unwrap_or("rootfs"));
            DirBuilder::new().mode(0o755).create(&root)?;
            fs::set_permissions(&root, fs::Permissions::from_mode(0o755))?;
            let base = if prefix.is_some() {
                staging.clone()
            } else {
                root.clone()
            };
            Ok::<_, io::Error>((staging, root, base))
        })();
        match made {
            Ok((staging, root, base)) => Ok(Target {
                prefix,
                dest: dest.to_path_buf(),
                staging,
                base,
                root,
                dirs: BTreeMap::new(),
                resolved: HashMap::new(),
                seen: false,
            }),
            Err(e) => {
                let _ = fs::remove_dir_all(&staging);
                Err(io_err(e))
            }
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        // After a successful rename the staging directory is empty; after an error it holds the partial tree.
        if let Err(e) = fs::remove_dir_all(&self.staging) {
            if e.kind() != io::ErrorKind::NotFound {
                warn!(staging = %self.staging.display(), "cannot remove unpack staging directory: {e}");
            }
        }
    }
}

/// Why an entry could not be placed.
enum PlaceError {
    Unsafe(String),
    Invalid(String),
    Io(io::Error),
}

impl From<io::Error> for PlaceError {
    fn from(e: io::Error) -> Self {
        PlaceError::Io(e)
    }
}

impl PlaceError {
    fn into_image_error(self, ctx: &ScanCtx, dest: &Path, entry: &str) -> ImageError {
        match self {
            PlaceError::Unsafe(reason) => ImageError::UnsafeEntry {
                path: ctx.path.clone(),
                entry: entry.to_string(),
                reason,
            },
            PlaceError::Invalid(reason) => ImageError::InvalidEntry {
                path: ctx.path.clone(),
                entry: entry.to_string(),
                reason,
            },
            PlaceError::Io(e) => ImageError::Unpack {
                image: ctx.path.clone(),
                dest: dest.to_path_buf(),
                source: e,
            },
        }
    }
}

fn display(comps: &[&OsStr]) -> String {
    let mut p = PathBuf::new();
    p.extend(comps);
    p.display().to_string()
}

impl Target {
    /// [`resolve_dir`] from this target's root, remembering what it resolves.
    fn resolve(&mut self, comps: &[&OsStr], create: bool) -> Result<PathBuf, PlaceError> {
        let rel: PathBuf = comps.iter().collect();
        if let Some(dir) = self.resolved.get(&rel) {
            return Ok(dir.clone());
        }
        let dir = resolve_dir(&self.root, comps, create)?;
        self.resolved.insert(rel, dir.clone());
        Ok(dir)
    }

    /// Forgets what was resolved at or under `rel` (an entry replaced what was there).
    fn forget(&mut self, rel: &Path) {
        if !self.resolved.is_empty() {
            self.resolved.retain(|k, _| !k.starts_with(rel));
        }
    }

    /// [`clear_for_non_dir`], forgetting what was resolved through what was there (a directory
    /// or a symlink to one). Whether a non-directory is there.
    fn clear_for_non_dir(&mut self, target: &Path, rel: &Path) -> Result<bool, PlaceError> {
        let before = self.dirs.len();
        let there = clear_for_non_dir(target, &mut self.dirs)?;
        if there || self.dirs.len() != before || self.resolved.contains_key(rel) {
            self.forget(rel);
        }
        Ok(there)
    }
}

/// Resolve `comps` (a directory path relative to the canonical `root`) to a canonical directory inside
/// `root`, one component at a time, creating missing ones if `create`, following a symlink only to a
/// directory inside `root`.
fn resolve_dir(root: &Path, comps: &[&OsStr], create: bool) -> Result<PathBuf, PlaceError> {
    let mut cur = root.to_path_buf();
    for (i, c) in comps.iter().enumerate() {
        let next = cur.join(c);
        match fs::symlink_metadata(&next) {
            Ok(m) if m.is_dir() => cur = next,
            Ok(m) if m.file_type().is_symlink() => {
                let shown = display(&comps[..=i]);
                let resolved = match fs::canonicalize(&next) {
                    Ok(r) => r,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        return Err(PlaceError::Unsafe(format!(
                            "it goes through symlink {shown}, which leads nowhere inside the image"
                        )))
                    }
                    Err(e) => return Err(e.into()),
                };
                if !resolved.starts_with(root) {
                    return Err(PlaceError::Unsafe(format!(
                        "it goes through symlink {shown}, which leads outside the image root"
                    )));
                }
                if !resolved.is_dir() {
                    return Err(PlaceError::Invalid(format!("{shown} is not a directory")));
                }
                cur = resolved;
            }
            Ok(_) => {
                return Err(PlaceError::Invalid(format!(
                    "{} is not a directory",
                    display(&comps[..=i])
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                match DirBuilder::new().mode(0o755).create(&next) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists && next.is_dir() => {}
                    Err(e) => return Err(e.into()),
                }
                cur = next;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(PlaceError::Invalid(format!("{} does not exist", display(&comps[..=i]))))
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(cur)
}

/// Make room at `target` for a non-directory: an empty directory there is removed, a non-empty one is an
/// error; anything else is left for the creator to replace. Whether a non-directory is there.
fn clear_for_non_dir(target: &Path, dirs: &mut BTreeMap<PathBuf, DirMeta>) -> Result<bool, PlaceError> {
    match fs::symlink_metadata(target) {
        Ok(m) if m.is_dir() => {
            fs::remove_dir(target).map_err(|e| {
                if e.raw_os_error() == Some(libc_enotempty()) {
                    PlaceError::Invalid("it replaces a non-empty directory".into())
                } else {
                    PlaceError::Io(e)
                }
            })?;
            dirs.remove(target);
            Ok(false)
        }
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn libc_enotempty() -> i32 {
    nix::errno::Errno::ENOTEMPTY as i32
}

/// Remove a non-directory at `target`, if any.
fn remove_non_dir(target: &Path) -> io::Result<()> {
    match fs::remove_file(target) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The entry's xattrs from its PAX `SCHILY.xattr.NAME=VALUE` records (the last one wins for a repeated name).
fn entry_xattrs(entry: &mut tar::Entry<'_, Stream<'_>>, ctx: &ScanCtx) -> Result<Vec<(OsString, Vec<u8>)>, ImageError> {
    let mut out: BTreeMap<OsString, Vec<u8>> = BTreeMap::new();
    for (key, value) in ctx.pax_records(entry)? {
        if key.starts_with(b"GNU.sparse.") {
            // PAX-format sparse files carry their real name and block map in records the tar crate ignores:
            // unpacked as is, the file would get a wrong name and wrong contents.
            return Err(ImageError::Unsupported {
                path: ctx.path.clone(),
                reason: format!(
                    "entry {}: PAX sparse files (tar --sparse --format=posix) are not supported; make the image \
                     without --sparse",
                    entry.path_bytes().escape_ascii()
                ),
            });
        }
        if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
            out.insert(OsStr::from_bytes(name).to_os_string(), value);
        }
    }
    Ok(out.into_iter().collect())
}

/// Set xattrs without following symlinks. What the filesystem or our privileges refuse is skipped with a
/// warning (as GNU tar does); other errors fail.
fn apply_xattrs(target: &Path, xattrs: &[(OsString, Vec<u8>)], entry: &str) -> io::Result<()> {
    for (name, value) in xattrs {
        if let Err(e) = xattr::set(target, name, value) {
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

fn set_times(target: &Path, mtime: i64) -> io::Result<()> {
    let t = TimeSpec::new(mtime, 0);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        target,
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .map_err(io::Error::from)
}

fn set_owner(target: &Path, uid: u64, gid: u64) -> io::Result<()> {
    let uid = u32::try_from(uid).map_err(|_| io::Error::other(format!("uid {uid} is too large")))?;
    let gid = u32::try_from(gid).map_err(|_| io::Error::other(format!("gid {gid} is too large")))?;
    std::os::unix::fs::lchown(target, Some(uid), Some(gid))
}

/// Read the tarball at `path` once, unpacking the entries of every target into its staging directory, then
/// move each tree into place.
fn extract(path: &Path, mut targets: Vec<Target>, pace: &dyn Fn()) -> Result<(), ImageError> {
    let compression = tarball_compression(path)?;
    let file = open(path)?;
    let as_root = nix::unistd::geteuid().is_root();
    let mut buf = vec![0u8; 1 << 20];
    scan(
        path,
        &file,
        None,
        compression,
        true,
        |archive| {
            archive.set_preserve_permissions(true);
            archive.set_preserve_ownerships(as_root);
            archive.set_preserve_mtime(true);
            archive.set_unpack_xattrs(false); // done here, for every kind of entry, see apply_xattrs
            archive.set_overwrite(true);
            archive.set_mask(0);
        },
        |entry, ctx| {
            pace();
            unpack_entry(entry, ctx, &mut targets, as_root, &mut buf)
        },
    )?;

    for t in &targets {
        if t.prefix == Some("rootfs") && !t.seen {
            return Err(ImageError::NoRootfs {
                path: path.to_path_buf(),
            });
        }
    }
    for t in &mut targets {
        finish_dirs(t, path, as_root)?;
    }
    let mut renamed: Vec<PathBuf> = Vec::new();
    for t in &targets {
        // rename(2) replaces an empty directory at dest, and is atomic: dest is either absent/empty or whole.
        if let Err(source) = fs::rename(&t.root, &t.dest) {
            for d in &renamed {
                let _ = fs::remove_dir_all(d);
            }
            return Err(ImageError::Unpack {
                image: path.to_path_buf(),
                dest: t.dest.clone(),
                source,
            });
        }
        renamed.push(t.dest.clone());
    }
    Ok(())
}

/// Apply directory ownership, modes, xattrs and times, deepest first (so a parent's mtime is set after its
/// children stop changing it).
fn finish_dirs(t: &mut Target, image: &Path, as_root: bool) -> Result<(), ImageError> {
    let dirs = std::mem::take(&mut t.dirs);
    for (dir, meta) in dirs.iter().rev() {
        let res = (|| {
            // Only ever touch a real directory: a later entry may have replaced it.
            if !fs::symlink_metadata(dir)?.is_dir() {
                return Ok(());
            }
            if as_root {
                set_owner(dir, meta.uid, meta.gid)?;
            }
            fs::set_permissions(dir, fs::Permissions::from_mode(meta.mode))?;
            apply_xattrs(dir, &meta.xattrs, &meta.entry)?;
            set_times(dir, meta.mtime)
        })();
        res.map_err(|source| ImageError::Unpack {
            image: image.to_path_buf(),
            dest: t.dest.clone(),
            source,
        })?;
    }
    Ok(())
}

fn unpack_entry(
    entry: &mut tar::Entry<'_, Stream<'_>>,
    ctx: &ScanCtx,
    targets: &mut [Target],
    as_root: bool,
    buf: &mut [u8],
) -> Result<(), ImageError> {
    let kind = entry.header().entry_type();
    if kind.is_pax_global_extensions()
        || kind.is_pax_local_extensions()
        || kind.is_gnu_longname()
        || kind.is_gnu_longlink()
    {
        return Ok(());
    }
    let raw_path = entry.path().map_err(|e| ctx.corrupt(e))?.into_owned();
    let shown = raw_path.display().to_string();
    let comps = normalize(&raw_path).map_err(|reason| ImageError::UnsafeEntry {
        path: ctx.path.clone(),
        entry: shown.clone(),
        reason: reason.into(),
    })?;

    // Which target (if any) wants it, and its path relative to that target's root.
    let Some((t, rel)) = targets.iter_mut().find_map(|t| match t.prefix {
        None => Some((&mut *t, &comps[..])),
        Some(p) if comps.first().is_some_and(|c| *c == p) => Some((&mut *t, &comps[1..])),
        Some(_) => None,
    }) else {
        return Ok(());
    };
    t.seen = true;
    let dest = t.dest.clone();
    let place = |e: PlaceError| e.into_image_error(ctx, &dest, &shown);

    let (mode, uid, gid, mtime) = {
        let h = entry.header();
        let mode = h.mode().map_err(|e| ctx.corrupt(e))? & 0o7777;
        let uid = h.uid().map_err(|e| ctx.corrupt(e))?;
        let gid = h.gid().map_err(|e| ctx.corrupt(e))?;
        let mtime = h.mtime().map_err(|e| ctx.corrupt(e))? as i64;
        (mode, uid, gid, mtime)
    };
    let xattrs = entry_xattrs(entry, ctx)?;

    let Some((name, parents)) = rel.split_last() else {
        // The image root itself ("rootfs/" or "./").
        if kind.is_dir() {
            t.dirs.insert(
                t.root.clone(),
                DirMeta {
                    entry: shown.clone(),
                    mode,
                    uid,
                    gid,
                    mtime,
                    xattrs,
                },
            );
            return Ok(());
        }
        return Err(place(PlaceError::Invalid("the image root is not a directory".into())));
    };
    let parent = t.resolve(parents, true).map_err(place)?;
    let target = parent.join(name);
    let rel_path: PathBuf = rel.iter().collect();

    match kind {
        EntryType::Directory => {
            match fs::symlink_metadata(&target) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    // GNU tar replaces a non-directory (including a symlink) by the directory.
                    t.forget(&rel_path);
                    fs::remove_file(&target).map_err(|e| place(e.into()))?;
                    DirBuilder::new()
                        .mode(0o755)
                        .create(&target)
                        .map_err(|e| place(e.into()))?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    DirBuilder::new()
                        .mode(0o755)
                        .create(&target)
                        .map_err(|e| place(e.into()))?;
                }
                Err(e) => return Err(place(e.into())),
            }
            t.dirs.insert(
                target,
                DirMeta {
                    entry: shown.clone(),
                    mode,
                    uid,
                    gid,
                    mtime,
                    xattrs,
                },
            );
        }
        EntryType::Link => {
            t.clear_for_non_dir(&target, &rel_path).map_err(place)?;
            let link = entry.link_name().map_err(|e| ctx.corrupt(e))?.map(|l| l.into_owned());
            let link = link.ok_or_else(|| place(PlaceError::Invalid("hard link without a target".into())))?;
            let lcomps = normalize(&link).map_err(|r| {
                place(PlaceError::Unsafe(format!(
                    "its hard link target {}: {r}",
                    link.display()
                )))
            })?;
            let lrel = match t.prefix {
                None => &lcomps[..],
                Some(p) if lcomps.first().is_some_and(|c| *c == p) => &lcomps[1..],
                Some(p) => {
                    return Err(place(PlaceError::Unsafe(format!(
                        "it is a hard link to {}, outside {p}/",
                        link.display()
                    ))))
                }
            };
            let Some((lname, lparents)) = lrel.split_last() else {
                return Err(place(PlaceError::Invalid("it is a hard link to the image root".into())));
            };
            let src = t.resolve(lparents, false).map_err(place)?.join(lname);
            match fs::symlink_metadata(&src) {
                Ok(m) if m.is_dir() => {
                    return Err(place(PlaceError::Invalid(format!(
                        "it is a hard link to directory {}",
                        link.display()
                    ))))
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(place(PlaceError::Invalid(format!(
                        "it is a hard link to {}, which is not in the image before it",
                        link.display()
                    ))))
                }
                Err(e) => return Err(place(e.into())),
            }
            if src == target {
                return Ok(());
            }
            remove_non_dir(&target).map_err(|e| place(e.into()))?;
            fs::hard_link(&src, &target).map_err(|e| place(e.into()))?;
        }
        EntryType::Char | EntryType::Block | EntryType::Fifo => {
            t.clear_for_non_dir(&target, &rel_path).map_err(place)?;
            remove_non_dir(&target).map_err(|e| place(e.into()))?;
            let perm = Mode::from_bits_truncate(0o600);
            let made = if kind == EntryType::Fifo {
                nix::unistd::mkfifo(&target, perm)
            } else {
                let major = entry.header().device_major().map_err(|e| ctx.corrupt(e))?.unwrap_or(0);
                let minor = entry.header().device_minor().map_err(|e| ctx.corrupt(e))?.unwrap_or(0);
                let sflag = if kind == EntryType::Char {
                    SFlag::S_IFCHR
                } else {
                    SFlag::S_IFBLK
                };
                nix::sys::stat::mknod(
                    &target,
                    sflag,
                    perm,
                    nix::sys::stat::makedev(major.into(), minor.into()),
                )
            };
            match made {
                Ok(()) => {}
                Err(nix::errno::Errno::EPERM) if kind != EntryType::Fifo => {
                    warn!(image = %ctx.path.display(), entry = shown, "device node skipped: creating it needs root");
                    return Ok(());
                }
                Err(e) => return Err(place(PlaceError::Io(e.into()))),
            }
            let res = (|| {
                if as_root {
                    set_owner(&target, uid, gid)?;
                }
                fs::set_permissions(&target, fs::Permissions::from_mode(mode))?;
                apply_xattrs(&target, &xattrs, &shown)?;
                set_times(&target, mtime)
            })();
            res.map_err(|e| place(e.into()))?;
        }
        k if matches!(k.as_byte(), b'V' | b'M') => {
            debug!(entry = shown, "skipping tar volume entry");
        }
        EntryType::Regular | EntryType::Continuous | EntryType::Symlink => {
            // Written here, in the resolved parent: the final component is created with O_EXCL, so
            // whatever is there (a symlink too) is never followed: it is cleared, then the entry
            // is created again.
            let owner = as_root.then_some((uid, gid));
            let link = match kind {
                EntryType::Symlink => {
                    let link = entry.link_name().map_err(|e| ctx.corrupt(e))?.map(|l| l.into_owned());
                    Some(link.ok_or_else(|| place(PlaceError::Invalid("symlink without a target".into())))?)
                }
                _ => None,
            };
            for attempt in 0..2 {
                let written = match &link {
                    Some(link) => write_symlink(&target, link, owner, mtime).map_err(WriteError::Write),
                    None => write_file(entry, &target, mode, owner, mtime, buf),
                };
                match written {
                    Ok(()) => break,
                    Err(WriteError::Write(e)) if e.kind() == io::ErrorKind::AlreadyExists && attempt == 0 => {
                        if t.clear_for_non_dir(&target, &rel_path).map_err(place)? {
                            remove_non_dir(&target).map_err(|e| place(e.into()))?;
                        }
                    }
                    Err(WriteError::Read(e)) => return Err(ctx.corrupt(e)),
                    Err(WriteError::Write(e)) => return Err(place(e.into())),
                }
            }
            apply_xattrs(&target, &xattrs, &shown).map_err(|e| place(e.into()))?;
        }
        _ => {
            // GNU sparse files and, as POSIX asks, unknown types (as regular files): the tar crate
            // writes them, after the checks above (see the module documentation).
            t.clear_for_non_dir(&target, &rel_path).map_err(place)?;
            let unpacked = entry.unpack_in(&t.base).map_err(|e| ctx.classify(e, &dest))?;
            if !unpacked {
                return Err(place(PlaceError::Unsafe("the tar reader refused its path".into())));
            }
            apply_xattrs(&target, &xattrs, &shown).map_err(|e| place(e.into()))?;
        }
    }
    Ok(())
}

/// Why a file could not be written: reading the archive, or writing the file.
enum WriteError {
    Read(io::Error),
    Write(io::Error),
}

/// Creates the regular file `target` (which must not exist) with the entry's data, then its owner,
/// mode (after the owner: chown clears setuid) and mtime, all on the open file.
fn write_file(
    entry: &mut impl io::Read,
    target: &Path,
    mode: u32,
    owner: Option<(u64, u64)>,
    mtime: i64,
    buf: &mut [u8],
) -> Result<(), WriteError> {
    use std::io::Write;
    use std::os::fd::AsFd;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc_o_nofollow())
        .open(target)
        .map_err(WriteError::Write)?;
    loop {
        let n = match entry.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(WriteError::Read(e)),
        };
        file.write_all(&buf[..n]).map_err(WriteError::Write)?;
    }
    let done = (|| {
        if let Some((uid, gid)) = owner {
            let uid = u32::try_from(uid).map_err(|_| io::Error::other(format!("uid {uid} is too large")))?;
            let gid = u32::try_from(gid).map_err(|_| io::Error::other(format!("gid {gid} is too large")))?;
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
        }
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        let t = TimeSpec::new(mtime, 0);
        nix::sys::stat::futimens(file.as_fd(), &t, &t).map_err(io::Error::from)
    })();
    done.map_err(WriteError::Write)
}

/// Creates the symlink `target` (which must not exist) to `link`, with its owner and mtime.
fn write_symlink(target: &Path, link: &Path, owner: Option<(u64, u64)>, mtime: i64) -> io::Result<()> {
    std::os::unix::fs::symlink(link, target)?;
    if let Some((uid, gid)) = owner {
        set_owner(target, uid, gid)?;
    }
    set_times(target, mtime)
}

fn libc_o_nofollow() -> i32 {
    nix::fcntl::OFlag::O_NOFOLLOW.bits()
}
