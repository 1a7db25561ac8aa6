//! Shared by the root-only system tests: test images, unique names, container guards, skips.
//!
//! A test that lacks something (root, a test image, lxcfs) prints `SKIP <test>: <need>` and
//! returns, unless `CORRAL_REQUIRED_TESTS=1` (set by .ci/run), where the skip is a failure.

#![allow(dead_code)]

mod daemon;
mod image_build;
mod tls;
mod view;
#[allow(unused_imports)]
pub use daemon::*;
#[allow(unused_imports)]
pub use image_build::*;
#[allow(unused_imports)]
pub use tls::*;
#[allow(unused_imports)]
pub use view::*;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use corral_runtime::client::{self, Client, ClientError, Output};
use corral_runtime::proto::ExecRequest;
use corral_runtime::spec::ContainerSpec;

/// The corrald binary, which the runtime re-executes as the monitor.
pub fn corrald() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_corrald"))
}

/// Stops the test with a SKIP line, or fails it where every test is required.
pub fn skip(test: &str, need: &str) -> bool {
    if std::env::var("CORRAL_REQUIRED_TESTS").is_ok_and(|v| v == "1") {
        panic!("{test}: required but cannot run: {need}");
    }
    eprintln!("SKIP {test}: {need}");
    true
}

/// The unpacked rootfs of test image `name` (busybox, bookworm, trixie), if built.
/// Read-only: a container booted on it gets a private copy ([`spec`]).
pub fn image(name: &str) -> Option<PathBuf> {
    let rootfs = image_cache().join(name).join("rootfs");
    rootfs.join("sbin/init").symlink_metadata().is_ok().then_some(rootfs)
}

/// Root and the image, or a skip. Returns the rootfs.
pub fn require(test: &str, image_name: &str) -> Option<PathBuf> {
    if !nix::unistd::geteuid().is_root() {
        skip(test, "needs root");
        return None;
    }
    match image(image_name) {
        Some(p) => Some(p),
        None => {
            skip(
                test,
                &format!("needs the {image_name} test image (tests/images/build.sh {image_name})"),
            );
            None
        }
    }
}

/// A container name unique to this test process: tests run in parallel.
pub fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("t{}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed), tag)
}

/// Run directories of test containers.
pub fn run_root() -> PathBuf {
    PathBuf::from("/run/corral-test")
}

/// A spec for `rootfs` with a unique name and the test run directory. A cached test image is
/// not booted in place: the spec gets a private copy of it, which lives until the
/// container's [`Running`] guard drops (or [`release_view`]).
pub fn spec(tag: &str, rootfs: &Path) -> ContainerSpec {
    let name = unique(tag);
    let run_dir = run_root().join(&name);
    let rootfs = private_rootfs(rootfs, &name);
    ContainerSpec::new(&name, &rootfs, run_dir)
}

/// A started container that is force-stopped when dropped, so a failing test leaves nothing.
pub struct Running {
    pub spec: ContainerSpec,
    pub client: Client,
}

impl Running {
    pub fn start(spec: ContainerSpec) -> Result<Running, ClientError> {
        match client::spawn(corrald(), &spec) {
            Ok(client) => Ok(Running { spec, client }),
            Err(e) => {
                // A failed start leaves its logs for the daemon to show; a test leaves nothing.
                let _ = std::fs::remove_dir_all(&spec.run_dir);
                release_view(&spec.name);
                Err(e)
            }
        }
    }

    /// Runs a shell command inside; returns its output.
    pub fn sh(&self, script: &str) -> Output {
        self.client
            .exec_output(&ExecRequest::new(&["/bin/sh", "-c", script]), b"")
            .expect("exec")
    }

    /// Runs a shell command inside and returns its trimmed stdout, asserting success.
    pub fn sh_ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert_eq!(
            out.code,
            0,
            "{script:?} failed: stdout {:?} stderr {:?}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn init_pid(&self) -> i32 {
        self.client.state().expect("state").init_pid
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.client.is_running() {
            let _ = self.client.stop(Duration::from_secs(0), true);
        }
        let _ = std::fs::remove_dir_all(&self.spec.run_dir);
        release_view(&self.spec.name);
    }
}

/// Polls `f` until it returns Some or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Directories a container's cgroup may occupy on this host, v1 and v2.
pub fn cgroup_dirs(name: &str) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
        for e in rd.flatten() {
            dirs.push(e.path().join("corral").join(name));
        }
    }
    dirs.push(PathBuf::from("/sys/fs/cgroup/corral").join(name));
    dirs.into_iter().filter(|d| d.exists()).collect()
}

/// Whether any process's command line mentions `needle`.
pub fn process_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// `NAME-<recipe hash>-<manifest hash>`: the name of a test image's cache directory (the
/// rootfs's parent) and a hash of the manifest build.sh recorded of it: what a packed copy of
/// it is named after, so that a new recipe, or a rebuild of a rootfs found modified, packs anew.
fn recipe_tag(rootfs: &Path, fallback: &str) -> String {
    use std::hash::{Hash, Hasher};
    let Some(dir) = rootfs
        .canonicalize()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    else {
        return fallback.into();
    };
    let mut tag = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| fallback.into());
    if let Ok(manifest) = std::fs::read(dir.join("manifest")) {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        manifest.hash(&mut h);
        tag.push_str(&format!("-{:016x}", h.finish()));
    }
    tag
}

/// The busybox test image as a unified tarball, packed once per recipe (the rootfs directory's
/// name carries the recipe hash) and shared by every test process: written to a temporary name
/// and renamed, so concurrent tests never read a half-written file.
pub fn busybox_image(test: &str) -> Option<PathBuf> {
    let rootfs = require(test, "busybox")?;
    let tag = recipe_tag(&rootfs, "busybox");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("corral-{tag}.tar.gz"));
    if !out.exists() {
        let tmp = out.with_extension(format!("tmp-{}", std::process::id()));
        let meta = corral_image::ImageMetadata {
            architecture: corral_image::host_architecture().to_string(),
            creation_date: 1_700_000_000,
            properties: [("os", "BusyBox"), ("description", "BusyBox test image")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        corral_image::pack_unified(&rootfs, &meta, None, &tmp, corral_image::Compression::Gzip).expect("pack busybox");
        std::fs::rename(&tmp, &out).expect("place the packed image");
    }
    Some(out)
}

/// A test image (`busybox`, `bookworm`, `trixie`) as a unified tarball, packed once per recipe
/// (uncompressed: the large Debian ones pack in seconds) and shared like [`busybox_image`].
pub fn packed_image(test: &str, name: &str) -> Option<PathBuf> {
    let rootfs = require(test, name)?;
    let tag = recipe_tag(&rootfs, name);
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("corral-{tag}.tar"));
    if !out.exists() {
        let tmp = out.with_extension(unique("tmp"));
        let meta = corral_image::ImageMetadata {
            architecture: corral_image::host_architecture().to_string(),
            creation_date: 1_700_000_000,
            properties: [("os", "Debian"), ("release", name), ("description", name)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        corral_image::pack_unified(&rootfs, &meta, None, &tmp, corral_image::Compression::None)
            .expect("pack the image");
        if std::fs::rename(&tmp, &out).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
    Some(out)
}

/// The busybox test image as a split image (metadata tarball and rootfs tarball) whose
/// metadata renders /etc/hostname from `hostname.tpl` on create and copy; packed once per
/// recipe like [`busybox_image`]. The two files and the fingerprint.
pub fn busybox_split_image(test: &str) -> Option<(PathBuf, PathBuf, String)> {
    let rootfs = require(test, "busybox")?;
    let tag = recipe_tag(&rootfs, "busybox");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("corral-{tag}-split"));
    let (meta_out, rootfs_out) = (dir.join("meta.tar.gz"), dir.join("rootfs.tar.gz"));
    if !dir.join("fingerprint").exists() {
        // Unique per call: tests of one process may pack it at the same time.
        let tmp = dir.with_extension(unique("tmp"));
        std::fs::create_dir_all(tmp.join("templates")).unwrap();
        std::fs::write(tmp.join("templates/hostname.tpl"), "{{ container.name }}\n").unwrap();
        let mut meta = corral_image::ImageMetadata {
            architecture: corral_image::host_architecture().to_string(),
            creation_date: 1_700_000_000,
            properties: [("os", "BusyBox"), ("description", "BusyBox split test image")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        meta.templates.insert(
            "/etc/hostname".into(),
            corral_image::ImageTemplate {
                when: vec!["create".into(), "copy".into()],
                template: "hostname.tpl".into(),
                ..Default::default()
            },
        );
        let fp = corral_image::pack_split(
            &rootfs,
            &meta,
            Some(&tmp.join("templates")),
            &tmp.join("meta.tar.gz"),
            &tmp.join("rootfs.tar.gz"),
            corral_image::Compression::Gzip,
        )
        .expect("pack the split busybox image");
        std::fs::remove_dir_all(tmp.join("templates")).unwrap();
        std::fs::write(tmp.join("fingerprint"), &fp).unwrap();
        if std::fs::rename(&tmp, &dir).is_err() {
            // Another test process placed it first.
            let _ = std::fs::remove_dir_all(&tmp);
        }
    }
    let fp = std::fs::read_to_string(dir.join("fingerprint")).ok()?;
    Some((meta_out, rootfs_out, fp))
}

/// Where a test daemon with directory `dir` logs.
pub fn daemon_log_path(dir: &Path) -> PathBuf {
    std::env::temp_dir().join(format!(
        "{}.log",
        dir.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
    ))
}

/// The log file of a test daemon with directory `dir`.
pub fn daemon_log(dir: &Path) -> std::fs::File {
    std::fs::File::create(daemon_log_path(dir)).expect("create the daemon log")
}

/// Removes a test daemon's log, unless the test is failing (then it is worth reading).
pub fn forget_daemon_log(dir: &Path) {
    if !std::thread::panicking() {
        let _ = std::fs::remove_file(daemon_log_path(dir));
    }
}

/// Tears a test daemon down: its containers outlive it, so they are force-stopped through
/// their monitors first; then the daemon is killed and its directory removed (its log too,
/// unless the test is failing).
pub fn tear_down_daemon(dir: &Path, child: Option<std::process::Child>) {
    if let Ok(rd) = std::fs::read_dir(dir.join("run")) {
        for e in rd.flatten() {
            let c = Client::new(&e.path());
            if c.is_running() {
                let _ = c.stop(Duration::from_secs(0), true);
            }
        }
    }
    if let Some(mut c) = child {
        let _ = c.kill();
        let _ = c.wait();
    }
    kill_dnsmasq_under(dir);
    release_storage_under(dir);
    // A background copy the daemon started dies with it, but may finish its last write just
    // after: try again rather than leave the directory behind.
    for _ in 0..20 {
        if std::fs::remove_dir_all(dir).is_ok() || !dir.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    forget_daemon_log(dir);
}

/// The mount points under `dir` (this process's view).
pub fn mounted_under(dir: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = dir.display().to_string();
    info.lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// Whether `path` is a btrfs subvolume.
pub fn is_subvolume(path: &Path) -> bool {
    std::process::Command::new("btrfs")
        .args(["subvolume", "show"])
        .arg(path)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Unmounts what a daemon on `dir` mounted (its btrfs pools) and detaches their loop devices.
pub fn release_storage_under(dir: &Path) {
    let prefix = dir.display().to_string();
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<String> = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_string)
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in mounts {
        let _ = std::process::Command::new("umount").args(["-l", &m]).status();
    }
    let disks = dir.join("disks");
    for e in std::fs::read_dir(&disks).into_iter().flatten().flatten() {
        let out = std::process::Command::new("losetup").arg("-j").arg(e.path()).output();
        for line in out
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
            .lines()
        {
            if let Some(dev) = line.split(':').next() {
                let _ = std::process::Command::new("losetup").args(["-d", dev]).status();
            }
        }
    }
}

/// Kills the dnsmasq processes a daemon on `dir` started (they outlive it by design).
pub fn kill_dnsmasq_under(dir: &Path) {
    let has_networks = std::fs::read_dir(dir.join("networks")).is_ok_and(|mut rd| rd.next().is_some());
    if !has_networks {
        return;
    }
    let want = format!("--conf-file={}/", dir.join("networks").display());
    // Again after a pause: one the daemon was starting as it was killed appears a little later.
    for round in 0..3 {
        for pid in dnsmasq_pids_with(&want) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        if round < 2 {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The pids of dnsmasq processes whose arguments include one starting with `prefix`.
pub fn dnsmasq_pids_with(prefix: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.first().is_some_and(|a| a.ends_with("dnsmasq")) && args.iter().any(|a| a.starts_with(prefix)) {
            pids.push(pid);
        }
    }
    pids
}

/// True (after printing the skip) when not root.
pub fn skip_unless_root(test: &str) -> bool {
    !nix::unistd::geteuid().is_root() && skip(test, "needs root")
}

/// True (after printing the skip) when CRIU cannot run here (missing, or too old).
pub fn skip_unless_criu(test: &str) -> bool {
    corral_runtime::checkpoint::criu_binary().is_err_and(|e| skip(test, &e.to_string()))
}

/// True (after printing the skip) when the `lxc` client is missing.
pub fn skip_unless_lxc(test: &str) -> bool {
    let present = std::process::Command::new("lxc")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    !present && skip(test, "needs the lxc client (apt-get install lxd-client)")
}
