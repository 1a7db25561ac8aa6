//! Writing into the image's tree: paths resolved inside the root (a symlink in the image, such
//! as Debian's `/bin -> usr/bin`, is followed as the container would follow it, never out of the
//! root), files with their mode and owner, and mtimes clamped for reproducible images.

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::sys::stat::{utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;

use crate::error::{io, BuildError};

/// Symlinks followed before giving up (as the kernel's limit).
const MAX_LINKS: usize = 40;

/// Where `path` (absolute, in the image) is on the host: its parent resolved inside `root`
/// (symlinks followed, `..` stopping at the root); the last component itself is not followed.
pub(crate) fn resolve_parent(root: &Path, path: &str) -> Result<PathBuf, BuildError> {
    let p = Path::new(path);
    let name = p
        .file_name()
        .ok_or_else(|| BuildError::Invalid(format!("{path} has no file name")))?;
    let parent = resolve(root, p.parent().unwrap_or(Path::new("/")), path)?;
    Ok(parent.join(name))
}

/// Resolve `path` inside `root`, following symlinks in it; components that do not exist are
/// kept as they are (they will be made as directories).
fn resolve(root: &Path, path: &Path, shown: &str) -> Result<PathBuf, BuildError> {
    let mut todo: Vec<OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .rev()
        .collect();
    let mut done: Vec<OsString> = Vec::new();
    let mut links = 0;
    while let Some(c) = todo.pop() {
        if c == ".." {
            done.pop();
            continue;
        }
        let mut here = root.to_path_buf();
        here.extend(&done);
        here.push(&c);
        match fs::symlink_metadata(&here) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(BuildError::Invalid(format!(
                        "{shown}: too many symlinks in the image on the way to it"
                    )));
                }
                let target = fs::read_link(&here).map_err(io(format!("cannot read the link {}", here.display())))?;
                if target.is_absolute() {
                    done.clear();
                }
                for t in target.components().rev() {
                    match t {
                        Component::Normal(n) => todo.push(n.to_os_string()),
                        Component::ParentDir => todo.push("..".into()),
                        _ => {}
                    }
                }
            }
            _ => done.push(c),
        }
    }
    let mut out = root.to_path_buf();
    out.extend(&done);
    Ok(out)
}

/// Write `content` to `path` in the image (parents made 0755 as needed), with `mode` and owner;
/// a symlink already there is replaced, not followed.
pub(crate) fn write_file(
    root: &Path,
    path: &str,
    content: &[u8],
    mode: u32,
    uid: u32,
    gid: u32,
) -> Result<(), BuildError> {
    let host = resolve_parent(root, path)?;
    let what = || format!("cannot write {path} in the image ({})", host.display());
    if let Some(parent) = host.parent() {
        fs::create_dir_all(parent).map_err(io(what()))?;
    }
    match fs::symlink_metadata(&host) {
        Ok(m) if m.is_dir() => {
            return Err(BuildError::Invalid(format!(
                "{path} is a directory in the image: a file cannot be written there"
            )))
        }
        Ok(m) if m.file_type().is_symlink() => fs::remove_file(&host).map_err(io(what()))?,
        _ => {}
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(&host)
        .map_err(io(what()))?;
    f.write_all(content).map_err(io(what()))?;
    drop(f);
    std::os::unix::fs::lchown(&host, Some(uid), Some(gid)).map_err(io(what()))?;
    // After chown, which clears set-id bits.
    fs::set_permissions(&host, fs::Permissions::from_mode(mode)).map_err(io(what()))?;
    Ok(())
}

/// Make `dir` (and parents) in the image with `mode`.
pub(crate) fn make_dir(root: &Path, path: &str, mode: u32) -> Result<(), BuildError> {
    let host = resolve_parent(root, path)?;
    let what = || format!("cannot make {path} in the image");
    fs::create_dir_all(&host).map_err(io(what()))?;
    fs::set_permissions(&host, fs::Permissions::from_mode(mode)).map_err(io(what()))
}

/// Set every mtime later than `epoch` in the tree to `epoch` (symlinks themselves, not their
/// targets), as reproducible builds do with SOURCE_DATE_EPOCH: the same content then packs to
/// the same bytes.
pub(crate) fn clamp_mtimes(root: &Path, epoch: i64) -> Result<(), BuildError> {
    let ts = TimeSpec::new(epoch, 0);
    let mut stack = vec![root.to_path_buf()];
    let mut dirs = Vec::new();
    while let Some(p) = stack.pop() {
        let m = fs::symlink_metadata(&p).map_err(io(format!("cannot read {}", p.display())))?;
        if m.is_dir() {
            for e in fs::read_dir(&p).map_err(io(format!("cannot list {}", p.display())))? {
                let e = e.map_err(io(format!("cannot list {}", p.display())))?;
                stack.push(e.path());
            }
            // Directories last: clamping what is inside does not change them, but be sure.
            dirs.push((p, m));
            continue;
        }
        clamp_one(&p, &m, ts, epoch)?;
    }
    for (p, m) in dirs.iter().rev() {
        clamp_one(p, m, ts, epoch)?;
    }
    Ok(())
}

fn clamp_one(p: &Path, m: &fs::Metadata, ts: TimeSpec, epoch: i64) -> Result<(), BuildError> {
    if m.mtime() <= epoch {
        return Ok(());
    }
    let atime = TimeSpec::new(m.atime().min(epoch), 0);
    utimensat(nix::fcntl::AT_FDCWD, p, &atime, &ts, UtimensatFlags::NoFollowSymlink).map_err(|e| BuildError::Io {
        what: format!("cannot set the mtime of {}", p.display()),
        err: e.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn resolves_inside_the_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        symlink("usr/bin", root.join("bin")).unwrap();
        symlink("/../../../../tmp", root.join("escape")).unwrap();
        symlink("../../..", root.join("usr/up")).unwrap();
        assert_eq!(resolve_parent(root, "/bin/x").unwrap(), root.join("usr/bin/x"));
        assert_eq!(resolve_parent(root, "/escape/x").unwrap(), root.join("tmp/x"));
        assert_eq!(resolve_parent(root, "/usr/up/etc/x").unwrap(), root.join("etc/x"));
        symlink("loop", root.join("loop")).unwrap();
        assert!(resolve_parent(root, "/loop/x").is_err());
    }

    #[test]
    fn writes_files_and_clamps_mtimes() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        symlink("/etc/target", root.join("link")).unwrap();
        write_file(root, "/etc/a/b", b"hi\n", 0o600, 0, 0).unwrap();
        assert_eq!(fs::read(root.join("etc/a/b")).unwrap(), b"hi\n");
        assert_eq!(fs::metadata(root.join("etc/a/b")).unwrap().mode() & 0o7777, 0o600);
        write_file(root, "/link", b"x", 0o644, 0, 0).unwrap();
        assert!(!root.join("etc/target").exists(), "the link was replaced, not followed");
        clamp_mtimes(root, 1_000_000).unwrap();
        for p in ["etc", "etc/a/b", "link"] {
            assert_eq!(fs::symlink_metadata(root.join(p)).unwrap().mtime(), 1_000_000, "{p}");
        }
    }
}
