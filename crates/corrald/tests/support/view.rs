//! Private, writable copies of the cached test images: a container booted by a test runs on a
//! copy of the cached rootfs in a temporary directory of its own, removed with the test's
//! container guard (also when the test panics), so the cache stays as built.
//!
//! Booting in place wrote journals, machine-ids, mount points and test files into the shared
//! cache, and from there into every image the tests pack from it. An overlay (cached rootfs as
//! the read-only lower layer) would be cheaper, but the runtime's rootfs is an idmapped mount
//! and overlayfs cannot be idmapped (Linux 6.18: only its layers can): the runtime falls back
//! to shifting ownership on disk, copying every file up, and the idmapped path goes untested.
//! A copy costs 0.2 s for busybox (2 MB), and 3 to 14 s for bookworm (165 MB, 8,400 entries)
//! on the shared 2-core test machine, depending on its load: a handful of tests boot Debian.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The directory test images are cached in (`tests/images/build.sh`).
pub fn image_cache() -> PathBuf {
    std::env::var_os("CORRAL_TEST_IMAGE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/corral/test-images"))
}

/// Whether `rootfs` is (inside) a cached test image, which a container must not write to.
pub fn is_cached_image(rootfs: &Path) -> bool {
    match (rootfs.canonicalize(), image_cache().canonicalize()) {
        (Ok(r), Ok(c)) => r.starts_with(c),
        _ => false,
    }
}

/// A private copy of a cached rootfs: `rootfs` is what the container gets; dropping it removes
/// the copy with everything the container wrote.
pub struct RootfsView {
    dir: PathBuf,
    rootfs: PathBuf,
}

impl RootfsView {
    /// Copies `cached` for the container `name`, into a temporary directory.
    pub fn new(cached: &Path, name: &str) -> RootfsView {
        let cached = cached.canonicalize().expect("the cached rootfs");
        let dir = std::env::temp_dir().join(format!("corral-view-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let view = RootfsView {
            rootfs: dir.join("rootfs"),
            dir,
        };
        // cp -a keeps owners, modes, times, links, device nodes and xattrs.
        let out = std::process::Command::new("cp")
            .arg("-a")
            .arg("--reflink=auto")
            .arg(&cached)
            .arg(&view.rootfs)
            .output()
            .expect("run cp");
        assert!(
            out.status.success(),
            "copy {} to {}: {}",
            cached.display(),
            view.rootfs.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        view
    }

    pub fn rootfs(&self) -> &Path {
        &self.rootfs
    }
}

impl Drop for RootfsView {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The copies of this test process, by container name: a spec (and its clones, which a
/// checkpoint test restores from) keeps its copy until its container guard drops.
static VIEWS: Mutex<Vec<(String, RootfsView)>> = Mutex::new(Vec::new());

/// The rootfs a container `name` should run on: a fresh private copy if `rootfs` is a cached
/// test image, else `rootfs` itself (a test's own copy).
pub fn private_rootfs(rootfs: &Path, name: &str) -> PathBuf {
    if !is_cached_image(rootfs) {
        return rootfs.to_path_buf();
    }
    let view = RootfsView::new(rootfs, name);
    let copy = view.rootfs().to_path_buf();
    VIEWS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((name.to_string(), view));
    copy
}

/// Removes the private copy of container `name`, if it has one.
pub fn release_view(name: &str) {
    let mut views = VIEWS.lock().unwrap_or_else(|p| p.into_inner());
    let mine: Vec<_> = views.extract_if(.., |(n, _)| n == name).collect();
    drop(views);
    drop(mine);
}
