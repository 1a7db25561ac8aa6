//! Unpacking a squashfs rootfs (the `squashfs` item of image servers, a split image's
//! `root.squashfs`) with `unsquashfs` from squashfs-tools.
//!
//! The same rules as for tarballs keep writes inside the destination: the filesystem's listing is
//! read first (`unsquashfs -ls`) and the image is refused if any path has a `..`, `.` or empty
//! component, or appears twice (a name repeated in a directory is how a crafted squashfs makes
//! unsquashfs write through a symlink it has just created, CVE-2021-41072); then the tree is
//! unpacked into the private staging directory of [`Target`] and renamed into place only when
//! whole. unsquashfs keeps ownership (as root), modes, times, xattrs, symlinks, hard links,
//! device nodes and fifos. It decompresses on every core; an external process cannot be paced
//! entry by entry, so `pace` is called once before it starts.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Command;

use super::Target;
use crate::ImageError;

/// What names the tree's root in the listing (`-d`): every other line starts with it and `/`.
const ROOT: &str = "R";

/// Why a listing is refused: the entry and the reason.
pub(crate) fn check_listing(listing: &str) -> Result<usize, (String, String)> {
    let mut seen = BTreeSet::new();
    for line in listing.lines() {
        if line == ROOT {
            continue;
        }
        let Some(rel) = line.strip_prefix(ROOT).and_then(|r| r.strip_prefix('/')) else {
            return Err((
                line.to_string(),
                "its name has a line break (or the listing is not unsquashfs'): refused".into(),
            ));
        };
        if let Some(bad) = rel.split('/').find(|c| c.is_empty() || *c == "." || *c == "..") {
            let reason = if bad == ".." {
                "it has a '..' component, which would lead outside the image root".to_string()
            } else {
                format!("it has an invalid path component {bad:?}")
            };
            return Err((rel.to_string(), reason));
        }
        if !seen.insert(rel) {
            return Err((
                rel.to_string(),
                "it appears twice in its directory (a crafted filesystem can write through a \
                 symlink that way)"
                    .into(),
            ));
        }
    }
    Ok(seen.len())
}

/// Whether `unsquashfs` can be run here (squashfs-tools installed).
pub fn unsquashfs_available() -> bool {
    Command::new("unsquashfs")
        .arg("-version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok()
}

/// `unsquashfs` with `option` (the image comes last: what follows it names files to extract).
fn unsquashfs(image: &Path, dest: &Path, option: &str) -> Command {
    let mut cmd = Command::new("unsquashfs");
    cmd.args(["-no-progress", "-quiet", option, "-dest"])
        .arg(dest)
        .arg(image);
    cmd.env("LC_ALL", "C");
    cmd
}

fn run(image: &Path, dest: &Path, mut cmd: Command) -> Result<String, ImageError> {
    let out = cmd.output().map_err(|e| {
        let detail = if e.kind() == std::io::ErrorKind::NotFound {
            std::io::Error::new(
                e.kind(),
                "unsquashfs is not installed: install squashfs-tools to unpack squashfs images",
            )
        } else {
            e
        };
        ImageError::Unpack {
            image: image.to_path_buf(),
            dest: dest.to_path_buf(),
            source: detail,
        }
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(ImageError::Corrupt {
            path: image.to_path_buf(),
            detail: format!("unsquashfs failed ({}): {}", out.status, stderr.trim()),
        });
    }
    // Names that are not UTF-8 keep their '/', '.' and line breaks: what the check looks at.
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Unpacks the squashfs `image` into `target` (its staging root), then renames it into place.
pub(super) fn extract(image: &Path, target: Target, pace: &dyn Fn()) -> Result<(), ImageError> {
    pace();
    let listing = run(image, &target.dest, unsquashfs(image, Path::new(ROOT), "-ls"))?;
    let entries = check_listing(&listing).map_err(|(entry, reason)| ImageError::UnsafeEntry {
        path: image.to_path_buf(),
        entry,
        reason,
    })?;
    tracing::debug!(image = %image.display(), entries, "unpacking squashfs");
    // The staging root exists (empty, 0755): unsquashfs sets its mode, owner and times.
    run(image, &target.dest, unsquashfs(image, &target.root, "-force"))?;
    fs::rename(&target.root, &target.dest).map_err(|source| ImageError::Unpack {
        image: image.to_path_buf(),
        dest: target.dest.clone(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::check_listing;

    #[test]
    fn listings_with_unsafe_paths_are_refused() {
        assert_eq!(check_listing("R\nR/bin\nR/bin/sh\nR/etc\n"), Ok(3));
        let refused = |l: &str| check_listing(l).unwrap_err();
        let (entry, reason) = refused("R\nR/etc\nR/etc/../../x\n");
        assert_eq!(entry, "etc/../../x");
        assert!(reason.contains("'..'"), "{reason}");
        assert!(refused("R\nR/..\n").1.contains("'..'"));
        assert!(refused("R\nR/a//b\n").1.contains("invalid path component"));
        assert!(refused("R\nR/a/./b\n").1.contains("invalid path component"));
        let (entry, reason) = refused("R\nR/lnk\nR/lnk\nR/lnk/passwd\n");
        assert_eq!(entry, "lnk");
        assert!(reason.contains("twice"), "{reason}");
        assert!(refused("R\nR/a\nnewline-in-name\n").1.contains("line break"));
    }
}
