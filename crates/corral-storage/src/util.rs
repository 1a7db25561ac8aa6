//! Shared helpers: copying and removing trees, running a tool, space from statvfs.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Result, Space, StorageError};

pub(crate) fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StorageError + 'a {
    move |source| StorageError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Copies the tree `from` to `to` exactly (ownership, modes, times, xattrs and ACLs, hard
/// links, device nodes, holes; reflinks where copy_file_range makes them), into a temporary name
/// first so a failed copy leaves nothing: a native walk over a few threads
/// ([`crate::dir_restore`]), where `cp -a` is one. The copy stops with the process; what it made
/// is a `.partial` the next start removes.
pub fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    copy_tree_then(from, to, |_| ())
}

/// [`copy_tree`], calling `finish` on the finished copy before it takes its name.
pub(crate) fn copy_tree_then(from: &Path, to: &Path, finish: impl FnOnce(&Path)) -> Result<()> {
    let tmp = partial_name(to);
    let _ = remove_tree(&tmp);
    if let Err(e) = crate::dir_restore::copy_into_new(from, &tmp) {
        let _ = remove_tree(&tmp);
        return Err(e);
    }
    finish(&tmp);
    std::fs::rename(&tmp, to).map_err(io_err("rename", &tmp))
}

/// `.NAME.partial` beside `path`: where a copy is made before it takes its name.
pub fn partial_name(path: &Path) -> PathBuf {
    path.with_file_name(format!(
        ".{}.partial",
        path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
    ))
}

/// Removes a directory tree; missing is fine.
pub fn remove_tree(path: &Path) -> Result<()> {
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

/// Runs a tool; its stdout, or an error with its stderr.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| StorageError::Command {
            command: program.to_string(),
            detail: format!("cannot run it: {e}"),
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(StorageError::Command {
            command: format!("{program} {}", args.join(" ")),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Space and inodes of the filesystem holding `path`.
pub(crate) fn statvfs_space(path: &Path) -> Result<Space> {
    let s = nix::sys::statvfs::statvfs(path).map_err(|e| io_err("statvfs", path)(e.into()))?;
    let frsize = s.fragment_size() as u64;
    Ok(Space {
        total_bytes: s.blocks() as u64 * frsize,
        used_bytes: (s.blocks() as u64 - s.blocks_free() as u64) * frsize,
        total_inodes: s.files() as u64,
        used_inodes: s.files() as u64 - s.files_free() as u64,
    })
}

/// Bytes used under `path` (`du -sb`).
pub(crate) fn du_bytes(path: &Path) -> Result<u64> {
    let out = run("du", &["-sb", &path.display().to_string()])?;
    out.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| StorageError::Command {
            command: "du".into(),
            detail: format!("unexpected output {out:?}"),
        })
}
