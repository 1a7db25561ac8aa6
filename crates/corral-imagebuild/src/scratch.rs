//! The build's scratch directory: everything a build makes lives there until the end, and a
//! failed or interrupted build leaves nothing behind (its mounts undone, its files removed).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use tracing::warn;

use crate::error::{io, BuildError};

const PREFIX: &str = ".imgbuild-";

/// A scratch directory removed, with anything mounted under it, when dropped.
pub(crate) struct Scratch {
    path: PathBuf,
}

impl Scratch {
    /// Make `<parent>/.imgbuild-<name>-<pid>`, after removing what dead builds left in `parent`.
    pub(crate) fn create(parent: &Path, name: &str) -> Result<Scratch, BuildError> {
        sweep_stale(parent);
        let path = parent.join(format!("{PREFIX}{name}-{}", std::process::id()));
        if path.exists() {
            remove_tree(&path)?;
        }
        fs::create_dir(&path).map_err(io(format!("cannot make the scratch directory {}", path.display())))?;
        Ok(Scratch { path })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = remove_tree(&self.path) {
            warn!(path = %self.path.display(), error = %e, "scratch directory not removed");
        }
    }
}

/// Scratch directories of builds whose process is gone (killed before they could clean up).
fn sweep_stale(parent: &Path) {
    let Ok(rd) = fs::read_dir(parent) else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.rsplit('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            if let Err(e) = remove_tree(&e.path()) {
                warn!(path = %name, error = %e, "stale scratch directory not removed");
            }
        }
    }
}

/// Mount points at or under `dir`, deepest first (this process's mount namespace).
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape(m)))
        .filter(|m| m.starts_with(dir))
        .collect();
    out.sort();
    out.reverse();
    out
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmount whatever is under `dir`, then remove it without crossing into another filesystem.
pub(crate) fn remove_tree(dir: &Path) -> Result<(), BuildError> {
    let canon = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    for m in mounts_under(&canon) {
        if let Err(e) = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH) {
            warn!(mount = %m.display(), error = %e, "cannot unmount");
        }
    }
    let left = mounts_under(&canon);
    if !left.is_empty() {
        return Err(BuildError::Invalid(format!(
            "{} still has mounts under it ({}): not removed; unmount them and remove it",
            dir.display(),
            left.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    if !dir.exists() {
        return Ok(());
    }
    let st = Command::new("rm")
        .args(["-rf", "--one-file-system", "--"])
        .arg(dir)
        .status()
        .map_err(io("cannot run rm"))?;
    if !st.success() || dir.exists() {
        return Err(BuildError::Invalid(format!("cannot remove {}", dir.display())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn unescapes_mountinfo() {
        assert_eq!(super::unescape(r"/a\040b\\c"), r"/a b\\c");
        assert_eq!(super::unescape(r"/x\134y"), r"/x\y");
        assert_eq!(super::unescape(r"/end\04"), r"/end\04");
    }
}
