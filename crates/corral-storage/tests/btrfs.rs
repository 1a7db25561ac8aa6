//! The btrfs driver on real filesystems: loop files made in a temporary directory, a block device
//! (a loop device the test attaches), an existing btrfs directory. Root only, with btrfs-progs and
//! loop devices; otherwise each test prints `SKIP <test>: <need>` and passes, unless
//! `CORRAL_REQUIRED_TESTS=1`.
//!
//! Every test works in a directory of its own, and its guard unmounts, detaches and removes
//! everything there on drop, failed or not: the tests run in parallel.

use std::fs;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use corral_storage::btrfs::BtrfsDriver;
use corral_storage::{Driver, StorageError, Vol, VolumeKind};

const MIB: u64 = 1 << 20;

/// Whether the test can run; a SKIP line (or a failure where every test is required) if not.
fn can_run(test: &str) -> bool {
    let mut missing = Vec::new();
    if !nix::unistd::Uid::effective().is_root() {
        missing.push("root");
    }
    for tool in ["btrfs", "mkfs.btrfs", "losetup", "wipefs"] {
        if Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| !s.success())
            .unwrap_or(true)
        {
            missing.push(tool);
        }
    }
    if !Path::new("/dev/loop-control").exists() {
        missing.push("loop devices");
    }
    if missing.is_empty() {
        return true;
    }
    let why = format!("needs {}", missing.join(", "));
    if std::env::var("CORRAL_REQUIRED_TESTS").as_deref() == Ok("1") {
        panic!("{test}: {why} (CORRAL_REQUIRED_TESTS=1)");
    }
    println!("SKIP {test}: {why}");
    false
}

/// A test's directory; on drop, every mount under it goes, every loop device backed by a file
/// in it is detached, and it is removed.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("corral-btrfs-{tag}-{}", std::process::id()));
        cleanup(&dir);
        fs::create_dir_all(&dir).unwrap();
        Scratch { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A loop-file pool at `root`, its file `pool.img`.
    fn loop_pool(&self, size: u64) -> BtrfsDriver {
        BtrfsDriver::loop_file(self.path("root"), self.path("pool.img"), size)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        cleanup(&self.dir);
    }
}

fn cleanup(dir: &Path) {
    if !dir.exists() {
        return;
    }
    let mut mounts = mounts_under(dir);
    mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    for m in mounts {
        let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_file() {
                for dev in loop_devices(&p) {
                    let _ = Command::new("losetup").arg("-d").arg(&dev).status();
                }
            }
        }
    }
    let _ = fs::remove_dir_all(dir);
}

/// Mount points at or under `dir`, from /proc/self/mountinfo.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .filter(|m| m.starts_with(dir))
        .collect()
}

fn is_mount_point(p: &Path) -> bool {
    mounts_under(p).iter().any(|m| m == p)
}

fn loop_devices(file: &Path) -> Vec<String> {
    let out = Command::new("losetup").arg("-j").arg(file).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(':').map(|(d, _)| d.to_string()))
        .collect()
}

fn sh(program: &str, args: &[&str]) -> Output {
    Command::new(program).args(args).output().unwrap()
}

fn sh_ok(program: &str, args: &[&str]) -> String {
    let out = sh(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Commits the filesystem's transaction: space and qgroup numbers are up to date after it.
fn sync(p: &Path) {
    sh_ok("sync", &["-f", s(p)]);
}

fn write_big(path: &Path, bytes: u64) {
    let chunk = vec![0x5au8; MIB as usize];
    let mut f = fs::File::create(path).unwrap();
    for _ in 0..bytes / MIB {
        std::io::Write::write_all(&mut f, &chunk).unwrap();
    }
}

/// `dd` of `mib` MiB of zeros to `path`; its result.
fn dd(path: &Path, mib: u64) -> Output {
    sh(
        "dd",
        &[
            "if=/dev/zero",
            &format!("of={}", s(path)),
            "bs=1M",
            &format!("count={mib}"),
            "conv=fsync",
        ],
    )
}

fn is_subvolume(p: &Path) -> bool {
    fs::metadata(p).map(|m| m.ino() == 256).unwrap_or(false)
}

/// A `Key: value` line of `btrfs subvolume show`.
fn show_field(p: &Path, key: &str) -> String {
    sh_ok("btrfs", &["subvolume", "show", s(p)])
        .lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}:")).map(|v| v.trim().to_string()))
        .unwrap_or_else(|| panic!("no {key} for {}", p.display()))
}

/// Nothing of the pool is left: no mount, no loop device, no file, no root.
fn assert_gone(scratch: &Scratch) {
    let (root, image) = (scratch.path("root"), scratch.path("pool.img"));
    assert!(
        mounts_under(&scratch.dir).is_empty(),
        "mounts left: {:?}",
        mounts_under(&scratch.dir)
    );
    assert!(!image.exists(), "the loop file is left");
    assert!(!root.exists(), "the pool's root is left");
    assert!(no_loop_device_under(&scratch.dir), "a loop device is left");
}

/// Whether no loop device is backed by a file under `dir`. A device still open elsewhere for a
/// moment (another test's mkfs or wipefs probing every device) is detached when it is closed:
/// wait a little for that.
fn no_loop_device_under(dir: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let all = sh_ok("losetup", &["-a"]);
        if !all.contains(s(dir)) {
            return true;
        }
        if Instant::now() > deadline {
            eprintln!("loop devices: {all}");
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap()
}

#[test]
fn loop_pool_clones_snapshots_restores_renames_and_deletes() {
    if !can_run("loop_pool_clones_snapshots_restores_renames_and_deletes") {
        return;
    }
    let scratch = Scratch::new("cycle");
    let d = scratch.loop_pool(1 << 30);
    d.create().unwrap();
    let root = scratch.path("root");
    assert!(is_mount_point(&root));
    assert_eq!(loop_devices(&scratch.path("pool.img")).len(), 1);
    for kind in VolumeKind::ALL {
        for sub in [kind.dir(), kind.snapshot_dir()] {
            let p = root.join(sub);
            assert!(p.is_dir() && !is_subvolume(&p), "{sub} is a plain directory");
        }
    }
    assert!(d.info().copy_on_write && d.info().quotas);
    // One copy of the metadata in a loop file (two would double a commit's scattered writes).
    let df = sh_ok("btrfs", &["filesystem", "df", s(&root)]);
    assert!(df.contains("Metadata, single"), "metadata profile: {df}");
    // A pool already there is refused, and left working.
    assert!(d.create().is_err());
    assert!(is_mount_point(&root));

    let img = Vol::image("fp");
    d.create_volume(&img).unwrap();
    assert!(matches!(d.create_volume(&img), Err(StorageError::Exists(_))));
    assert!(is_subvolume(&d.path(&img)));
    let rootfs = d.path(&img).join("rootfs");
    fs::create_dir_all(rootfs.join("etc")).unwrap();
    fs::write(rootfs.join("etc/f"), "image").unwrap();
    sync(&root);
    let empty = d.space().unwrap().used_bytes;
    write_big(&rootfs.join("big"), 50 * MIB);
    sync(&root);
    let with_image = d.space().unwrap().used_bytes;
    assert!(
        with_image - empty >= 48 * MIB,
        "the image's 50 MiB show: {empty} -> {with_image}"
    );

    // Clones are snapshots of the image, and cost (nearly) nothing.
    for i in 1..=3 {
        d.clone_volume(&img, &Vol::container(&format!("c{i}"))).unwrap();
    }
    sync(&root);
    let cloned = d.space().unwrap().used_bytes;
    assert!(
        cloned - with_image < 4 * MIB,
        "3 clones of 50 MiB grow the pool by {} bytes",
        cloned - with_image
    );
    let c = Vol::container("c1");
    let cp = d.path(&c);
    assert!(is_subvolume(&cp));
    assert_eq!(
        show_field(&cp, "Parent UUID"),
        show_field(&d.path(&img), "UUID"),
        "c1 is a snapshot of the image"
    );
    assert!(matches!(d.clone_volume(&img, &c), Err(StorageError::Exists(_))));
    assert!(matches!(
        d.clone_volume(&Vol::image("nope"), &Vol::container("x")),
        Err(StorageError::NotFound(_))
    ));

    // Snapshots s1 and s2 with the contents changed between; restore of the older one, then
    // of the newer one.
    let f = cp.join("rootfs/etc/f");
    assert_eq!(read(&f), "image");
    fs::write(&f, "one").unwrap();
    d.snapshot(&c, "s1").unwrap();
    fs::write(&f, "two").unwrap();
    fs::write(cp.join("rootfs/new"), "made after s1").unwrap();
    d.snapshot(&c, "s2").unwrap();
    fs::write(&f, "three").unwrap();
    let s1 = d.path(&c.snapshot("s1"));
    assert_eq!(s1, root.join("containers-snapshots/c1/s1"));
    assert_eq!(read(&s1.join("rootfs/etc/f")), "one");
    assert_eq!(show_field(&s1, "Flags"), "readonly");
    assert!(
        fs::write(s1.join("rootfs/etc/f"), "x").is_err(),
        "a snapshot is read-only"
    );
    assert!(matches!(d.snapshot(&c, "s1"), Err(StorageError::Exists(_))));

    d.restore(&c, "s1").unwrap();
    assert_eq!(read(&f), "one", "the older snapshot restores");
    assert!(!cp.join("rootfs/new").exists());
    assert!(
        is_subvolume(&cp) && show_field(&cp, "Flags") == "-",
        "a writable subvolume again"
    );
    fs::write(&f, "four").unwrap();
    d.restore(&c, "s2").unwrap();
    assert_eq!(read(&f), "two");
    assert_eq!(read(&cp.join("rootfs/new")), "made after s1");
    d.restore(&c, "s1").unwrap();
    assert_eq!(read(&f), "one", "restored again, any snapshot any number of times");
    assert_eq!(
        read(&d.path(&c.snapshot("s2")).join("rootfs/etc/f")),
        "two",
        "snapshots untouched"
    );
    assert!(matches!(d.restore(&c, "nope"), Err(StorageError::NotFound(_))));
    // The old volume is deleted in the background: it goes within moments.
    let leftovers = || -> Vec<String> {
        fs::read_dir(root.join("containers"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with('.'))
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !leftovers().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(
        leftovers().is_empty(),
        "restore leaves nothing beside: {:?}",
        leftovers()
    );

    // Rename, snapshots along.
    assert!(matches!(d.rename_volume(&c, "c2"), Err(StorageError::Exists(_))));
    d.rename_volume(&c, "c9").unwrap();
    let c9 = Vol::container("c9");
    assert!(!cp.exists() && !root.join("containers-snapshots/c1").exists());
    assert_eq!(read(&d.path(&c9).join("rootfs/etc/f")), "one");
    assert_eq!(read(&d.path(&c9.snapshot("s2")).join("rootfs/etc/f")), "two");
    d.restore(&c9, "s2").unwrap();
    assert_eq!(read(&d.path(&c9).join("rootfs/etc/f")), "two");
    d.rename_volume(&c9.snapshot("s2"), "s3").unwrap();
    assert!(d.path(&c9.snapshot("s3")).exists() && !d.path(&c9.snapshot("s2")).exists());

    // Usage without quotas is du's.
    let used = d.usage(&Vol::container("c2")).unwrap();
    assert!((50 * MIB..60 * MIB).contains(&used), "usage {used}");

    // Deletes: a snapshot directory goes with the last snapshot.
    d.delete_volume(&c9.snapshot("s1")).unwrap();
    assert!(root.join("containers-snapshots/c9").exists());
    d.delete_volume(&c9.snapshot("s3")).unwrap();
    assert!(!root.join("containers-snapshots/c9").exists());
    for v in [c9, Vol::container("c2"), Vol::container("c3"), img] {
        d.delete_volume(&v).unwrap();
        assert!(!d.path(&v).exists());
    }
    d.delete_volume(&Vol::container("never")).unwrap();
    let left = sh_ok("btrfs", &["subvolume", "list", s(&root)]);
    assert!(left.trim().is_empty(), "subvolumes left: {left}");

    d.delete().unwrap();
    assert_gone(&scratch);
    d.delete().unwrap();
}

#[test]
fn quota_limits_writes_and_survives_restore() {
    if !can_run("quota_limits_writes_and_survives_restore") {
        return;
    }
    let scratch = Scratch::new("quota");
    let d = scratch.loop_pool(512 * MIB);
    d.create().unwrap();
    let root = scratch.path("root");
    let v = Vol::custom("q");
    d.create_volume(&v).unwrap();
    let p = d.path(&v);
    d.set_quota(&v, None).unwrap();
    assert!(d.usage(&v).unwrap() < MIB);

    d.set_quota(&v, Some(16 * MIB)).unwrap();
    let out = dd(&p.join("f"), 32);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "writing 32 MiB under a 16 MiB limit fails");
    assert!(
        err.contains("Disk quota exceeded") || err.contains("No space left"),
        "EDQUOT or ENOSPC: {err}"
    );
    sync(&root);
    let used = d.usage(&v).unwrap();
    assert!((8 * MIB..=16 * MIB).contains(&used), "usage from the qgroup: {used}");

    // No limit: the write goes through.
    fs::remove_file(p.join("f")).unwrap();
    d.set_quota(&v, None).unwrap();
    assert!(dd(&p.join("f"), 32).status.success());
    sync(&root);
    assert!(d.usage(&v).unwrap() >= 32 * MIB);

    // The limit is the volume's: a restored volume keeps it.
    fs::remove_file(p.join("f")).unwrap();
    fs::write(p.join("marker"), "kept").unwrap();
    d.set_quota(&v, Some(16 * MIB)).unwrap();
    d.snapshot(&v, "s").unwrap();
    d.restore(&v, "s").unwrap();
    sync(&root);
    assert_eq!(read(&p.join("marker")), "kept");
    assert!(!dd(&p.join("g"), 32).status.success(), "the limit survives a restore");

    // A clone starts with its origin's limit (here, reached already), which it can lose.
    let free = Vol::custom("free");
    d.clone_volume(&v, &free).unwrap();
    assert!(!dd(&d.path(&free).join("h"), 32).status.success());
    let _ = fs::remove_file(d.path(&free).join("h"));
    d.set_quota(&free, None).unwrap();
    assert!(dd(&d.path(&free).join("h"), 32).status.success());

    // A restored volume has its own limit, not the snapshot's.
    let _ = fs::remove_file(p.join("g"));
    d.set_quota(&v, None).unwrap();
    d.snapshot(&v, "unlimited").unwrap();
    d.set_quota(&v, Some(16 * MIB)).unwrap();
    d.restore(&v, "unlimited").unwrap();
    sync(&root);
    assert!(!dd(&p.join("g"), 32).status.success(), "the volume's 16 MiB");
    let _ = fs::remove_file(p.join("g"));
    d.set_quota(&v, None).unwrap();
    d.restore(&v, "s").unwrap();
    sync(&root);
    assert!(
        dd(&p.join("g"), 32).status.success(),
        "s was taken under 16 MiB; the volume has no limit"
    );
    assert!(matches!(
        d.set_quota(&Vol::custom("nope"), Some(MIB)),
        Err(StorageError::NotFound(_))
    ));

    d.delete().unwrap();
    assert_gone(&scratch);
}

#[test]
fn mount_after_unmount_brings_volumes_back() {
    if !can_run("mount_after_unmount_brings_volumes_back") {
        return;
    }
    let scratch = Scratch::new("reboot");
    let d = scratch.loop_pool(256 * MIB);
    let (root, image) = (scratch.path("root"), scratch.path("pool.img"));
    d.create().unwrap();
    let c = Vol::container("c");
    d.create_volume(&c).unwrap();
    fs::write(d.path(&c).join("f"), "kept").unwrap();
    d.snapshot(&c, "s").unwrap();

    // As at a reboot: nothing mounted, nothing attached.
    d.unmount().unwrap();
    assert!(!is_mount_point(&root) && no_loop_device_under(&scratch.dir));
    assert!(!d.path(&c).exists());
    d.unmount().unwrap();

    // A new driver, as a daemon starting makes it.
    let d = BtrfsDriver::loop_file(&root, &image, 256 * MIB);
    d.mount().unwrap();
    assert_eq!(read(&d.path(&c).join("f")), "kept");
    assert!(d.path(&c.snapshot("s")).join("f").exists());
    d.mount().unwrap();
    assert_eq!(mounts_under(&root).len(), 1, "mount is idempotent");
    assert_eq!(loop_devices(&image).len(), 1);

    // A loop device left attached (the daemon died after attaching) is reused.
    while is_mount_point(&root) {
        nix::mount::umount2(&root, nix::mount::MntFlags::empty()).unwrap();
    }
    assert_eq!(loop_devices(&image).len(), 1);
    d.mount().unwrap();
    assert_eq!(loop_devices(&image).len(), 1);
    assert_eq!(read(&d.path(&c).join("f")), "kept");

    // The root mounted from elsewhere is not taken for the pool.
    d.unmount().unwrap();
    let other = BtrfsDriver::loop_file(scratch.path("root"), scratch.path("other.img"), 256 * MIB);
    other.create().unwrap();
    let err = d.mount().unwrap_err().to_string();
    assert!(err.contains("not of loop file"), "{err}");
    other.delete().unwrap();
    assert!(!scratch.path("other.img").exists() && no_loop_device_under(&scratch.dir));

    d.mount().unwrap();
    d.delete().unwrap();
    assert_gone(&scratch);
    let err = d.mount().unwrap_err();
    assert!(matches!(err, StorageError::NotFound(_)), "{err}");
}

#[test]
fn nested_subvolumes_are_cloned_snapshotted_and_deleted() {
    if !can_run("nested_subvolumes_are_cloned_snapshotted_and_deleted") {
        return;
    }
    let scratch = Scratch::new("nested");
    let d = scratch.loop_pool(256 * MIB);
    d.create().unwrap();
    let c = Vol::container("n");
    d.create_volume(&c).unwrap();
    let rootfs = d.path(&c).join("rootfs");
    fs::create_dir_all(rootfs.join("var/lib")).unwrap();
    // As systemd makes /var/lib/machines inside a container, and something inside that.
    let machines = rootfs.join("var/lib/machines");
    sh_ok("btrfs", &["subvolume", "create", s(&machines)]);
    sh_ok("btrfs", &["subvolume", "create", s(&machines.join("inner"))]);
    fs::write(machines.join("f"), "m1").unwrap();
    fs::write(machines.join("inner/f"), "i1").unwrap();

    let c2 = Vol::container("n2");
    d.clone_volume(&c, &c2).unwrap();
    let m2 = d.path(&c2).join("rootfs/var/lib/machines");
    assert!(is_subvolume(&m2) && is_subvolume(&m2.join("inner")));
    assert_eq!(
        (read(&m2.join("f")), read(&m2.join("inner/f"))),
        ("m1".into(), "i1".into())
    );

    d.snapshot(&c, "s1").unwrap();
    let sm = d.path(&c.snapshot("s1")).join("rootfs/var/lib/machines");
    assert_eq!(read(&sm.join("inner/f")), "i1");
    assert!(
        fs::write(sm.join("inner/f"), "x").is_err(),
        "nested snapshots are read-only too"
    );
    fs::write(machines.join("inner/f"), "i2").unwrap();
    d.restore(&c, "s1").unwrap();
    assert_eq!(read(&machines.join("inner/f")), "i1");
    assert!(is_subvolume(&machines.join("inner")));

    for v in [c.snapshot("s1"), c2, c] {
        d.delete_volume(&v).unwrap();
        assert!(!d.path(&v).exists());
    }
    let left = sh_ok("btrfs", &["subvolume", "list", s(&scratch.path("root"))]);
    assert!(left.trim().is_empty(), "subvolumes left: {left}");
    d.delete().unwrap();
    assert_gone(&scratch);
}

#[test]
fn bad_input_is_refused_leaving_nothing() {
    if !can_run("bad_input_is_refused_leaving_nothing") {
        return;
    }
    let scratch = Scratch::new("bad");
    let root = scratch.path("root");
    let nothing_left = |what: &str| {
        assert!(!root.exists(), "{what}: the root is left");
        assert!(mounts_under(&scratch.dir).is_empty(), "{what}: a mount is left");
        assert!(no_loop_device_under(&scratch.dir), "{what}: a loop device is left");
    };

    let missing_dir = scratch.path("missing/pool.img");
    let err = BtrfsDriver::loop_file(&root, &missing_dir, 512 * MIB)
        .create()
        .unwrap_err();
    assert!(
        matches!(err, StorageError::Config(_)) && err.to_string().contains("does not exist"),
        "{err}"
    );
    assert!(!scratch.path("missing").exists());
    nothing_left("a loop file in a missing directory");

    let small = scratch.path("small.img");
    let err = BtrfsDriver::loop_file(&root, &small, 64 * MIB)
        .create()
        .unwrap_err()
        .to_string();
    assert!(err.contains("too small") && err.contains("109 MiB"), "{err}");
    assert!(!small.exists());
    nothing_left("a loop file too small");

    // A loop file holding a filesystem is refused, and kept as it was.
    let ext4 = scratch.path("ext4.img");
    fs::File::create(&ext4).unwrap().set_len(128 * MIB).unwrap();
    sh_ok("mkfs.ext4", &["-q", "-F", s(&ext4)]);
    let before = fs::read(&ext4).unwrap();
    let err = BtrfsDriver::loop_file(&root, &ext4, 256 * MIB).create().unwrap_err();
    assert!(
        matches!(err, StorageError::Command { .. }) && err.to_string().contains("existing filesystem"),
        "{err}"
    );
    assert!(fs::read(&ext4).unwrap() == before, "the refused file is untouched");
    nothing_left("a loop file with ext4");

    // An empty file is used (and given its size); it stays, emptied, if the pool goes.
    let empty = scratch.path("empty.img");
    fs::File::create(&empty).unwrap();
    let d = BtrfsDriver::loop_file(&root, &empty, 256 * MIB);
    d.create().unwrap();
    assert_eq!(fs::metadata(&empty).unwrap().len(), 256 * MIB);
    d.delete().unwrap();
    assert!(!empty.exists());
    nothing_left("a pool on an empty file");

    // A step failing after the file is made and attached (the root cannot be made): all undone.
    let img = scratch.path("pool.img");
    let proc_root = PathBuf::from(format!("/proc/corral-btrfs-test-{}", std::process::id()));
    let err = BtrfsDriver::loop_file(&proc_root, &img, 256 * MIB)
        .create()
        .unwrap_err();
    assert!(matches!(err, StorageError::Io { .. }), "{err}");
    assert!(
        !img.exists() && no_loop_device_under(&scratch.dir),
        "the file and its loop device are gone"
    );
    nothing_left("a root that cannot be made");

    // A root that is not empty, or already mounted on, is refused before any file is made.
    fs::create_dir_all(root.join("x")).unwrap();
    let err = BtrfsDriver::loop_file(&root, &img, 256 * MIB)
        .create()
        .unwrap_err()
        .to_string();
    assert!(err.contains("not empty"), "{err}");
    assert!(!img.exists());
    fs::remove_dir_all(&root).unwrap();

    // An existing directory that is not on btrfs.
    let plain = scratch.path("plain");
    fs::create_dir(&plain).unwrap();
    let on_btrfs = nix::sys::statfs::statfs(&plain).unwrap().filesystem_type() == nix::sys::statfs::BTRFS_SUPER_MAGIC;
    if !on_btrfs {
        let err = BtrfsDriver::existing(&plain).create().unwrap_err();
        assert!(
            matches!(err, StorageError::Config(_)) && err.to_string().contains("not on a btrfs"),
            "{err}"
        );
        assert!(fs::read_dir(&plain).unwrap().next().is_none(), "nothing made in it");
        let err = BtrfsDriver::existing(plain.join("sub"))
            .create()
            .unwrap_err()
            .to_string();
        assert!(err.contains("not on a btrfs"), "{err}");
        assert!(BtrfsDriver::existing(&plain).mount().is_err());
    }

    // Devices that are not.
    let err = BtrfsDriver::device(&root, "/dev/null")
        .create()
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a block device"), "{err}");
    let err = BtrfsDriver::device(&root, scratch.path("nodev")).create().unwrap_err();
    assert!(matches!(err, StorageError::NotFound(_)), "{err}");
    nothing_left("devices that are not");
}

#[test]
fn device_pool_is_formatted_mounted_and_wiped() {
    if !can_run("device_pool_is_formatted_mounted_and_wiped") {
        return;
    }
    let scratch = Scratch::new("device");
    let backing = scratch.path("disk.img");
    fs::File::create(&backing).unwrap().set_len(256 * MIB).unwrap();
    let dev = sh_ok("losetup", &["--find", "--show", s(&backing)]).trim().to_string();
    let root = scratch.path("root");

    // A device holding a filesystem is refused.
    sh_ok("mkfs.ext4", &["-q", "-F", &dev]);
    let d = BtrfsDriver::device(&root, &dev);
    let err = d.create().unwrap_err().to_string();
    assert!(err.contains("existing filesystem"), "{err}");
    assert!(!root.exists());
    sh_ok("wipefs", &["-a", "-q", &dev]);

    d.create().unwrap();
    assert!(is_mount_point(&root));
    let v = Vol::custom("v");
    d.create_volume(&v).unwrap();
    fs::write(d.path(&v).join("f"), "on the device").unwrap();
    d.unmount().unwrap();
    assert!(!is_mount_point(&root));
    d.mount().unwrap();
    d.mount().unwrap();
    assert_eq!(mounts_under(&root).len(), 1);
    assert_eq!(read(&d.path(&v).join("f")), "on the device");
    d.delete().unwrap();
    assert!(!root.exists() && !is_mount_point(&root));
    let sig = sh_ok("wipefs", &["--noheadings", &dev]);
    assert!(sig.trim().is_empty(), "the device is wiped: {sig}");
    // The driver leaves the device itself attached: it is the caller's.
    assert_eq!(loop_devices(&backing), vec![dev]);
}

#[test]
fn existing_btrfs_directory_pool() {
    if !can_run("existing_btrfs_directory_pool") {
        return;
    }
    let scratch = Scratch::new("existing");
    let outer = scratch.loop_pool(512 * MIB);
    outer.create().unwrap();
    let top = scratch.path("root");

    // Not empty: refused, untouched.
    let full = top.join("full");
    fs::create_dir_all(full.join("x")).unwrap();
    let err = BtrfsDriver::existing(&full).create().unwrap_err().to_string();
    assert!(err.contains("not empty"), "{err}");
    assert!(full.join("x").exists());

    // A root that does not exist yet is made a subvolume, and goes with the pool.
    let d = BtrfsDriver::existing(top.join("pool"));
    d.create().unwrap();
    assert!(is_subvolume(&top.join("pool")));
    exercise(&d);
    d.delete().unwrap();
    assert!(!top.join("pool").exists());

    // The filesystem mounted from a subvolume elsewhere (mountinfo's root is not `/`): nested
    // subvolumes are still found.
    sh_ok("btrfs", &["subvolume", "create", s(&top.join("sub"))]);
    let dev = loop_devices(&scratch.path("pool.img")).remove(0);
    let m = scratch.path("m");
    fs::create_dir(&m).unwrap();
    sh_ok("mount", &["-o", "subvol=/sub", &dev, s(&m)]);
    fs::create_dir(m.join("plain")).unwrap();
    let d = BtrfsDriver::existing(m.join("plain"));
    d.create().unwrap();
    exercise(&d);
    let c = Vol::container("c");
    d.create_volume(&c).unwrap();
    sh_ok("btrfs", &["subvolume", "create", s(&d.path(&c).join("nested"))]);
    d.clone_volume(&c, &Vol::container("c2")).unwrap();
    assert!(is_subvolume(&d.path(&Vol::container("c2")).join("nested")));
    d.delete_volume(&c).unwrap();
    d.delete().unwrap();
    assert!(!m.join("plain").exists());
    sh_ok("umount", &[s(&m)]);
    let left = sh_ok("btrfs", &["subvolume", "list", s(&top)]);
    assert_eq!(left.lines().count(), 1, "only `sub` is left: {left}");

    outer.delete().unwrap();
    assert_gone(&scratch);
}

/// A round of volume work on a pool.
fn exercise(d: &BtrfsDriver) {
    let img = Vol::image("i");
    d.create_volume(&img).unwrap();
    fs::write(d.path(&img).join("f"), "0").unwrap();
    let c = Vol::container("x");
    d.clone_volume(&img, &c).unwrap();
    fs::write(d.path(&c).join("f"), "1").unwrap();
    d.snapshot(&c, "s").unwrap();
    fs::write(d.path(&c).join("f"), "2").unwrap();
    d.restore(&c, "s").unwrap();
    assert_eq!(read(&d.path(&c).join("f")), "1");
    d.set_quota(&c, Some(64 * MIB)).unwrap();
    sync(&d.root());
    assert!(d.usage(&c).unwrap() < MIB);
    d.rename_volume(&c, "y").unwrap();
    assert_eq!(read(&d.path(&Vol::container("y").snapshot("s")).join("f")), "1");
}

/// The daemon mounts a container's rootfs idmapped: that works on a volume as it is.
#[test]
fn volumes_mount_idmapped() {
    if !can_run("volumes_mount_idmapped") {
        return;
    }
    let scratch = Scratch::new("idmap");
    let d = scratch.loop_pool(256 * MIB);
    d.create().unwrap();
    let img = Vol::image("i");
    d.create_volume(&img).unwrap();
    let rootfs = d.path(&img).join("rootfs");
    fs::create_dir(&rootfs).unwrap();
    fs::write(rootfs.join("root-owned"), "").unwrap();
    fs::write(rootfs.join("user-owned"), "").unwrap();
    nix::unistd::chown(&rootfs.join("user-owned"), Some(1000.into()), Some(1000.into())).unwrap();
    let c = Vol::container("c");
    d.clone_volume(&img, &c).unwrap();

    // A user namespace mapping 0-65535 inside to 100000-165535 on the host, its maps written
    // from here as the runtime writes them.
    let mut holder = Command::new("unshare").args(["--user", "sleep", "60"]).spawn().unwrap();
    let ns = |pid: &str| fs::read_link(format!("/proc/{pid}/ns/user")).ok();
    let pid = holder.id().to_string();
    let deadline = Instant::now() + Duration::from_secs(5);
    while ns(&pid).is_none() || ns(&pid) == ns("self") {
        assert!(Instant::now() < deadline, "no user namespace");
        std::thread::sleep(Duration::from_millis(10));
    }
    for map in ["uid_map", "gid_map"] {
        fs::write(format!("/proc/{pid}/{map}"), "0 100000 65536\n").unwrap();
    }
    let userns = fs::File::open(format!("/proc/{}/ns/user", holder.id())).unwrap();

    let target = scratch.path("mnt");
    fs::create_dir(&target).unwrap();
    let result = idmapped_bind(&d.path(&c).join("rootfs"), userns.as_fd(), &target);
    let _ = holder.kill();
    let _ = holder.wait();
    result.expect("an idmapped mount of a btrfs volume");
    assert_eq!(fs::metadata(target.join("root-owned")).unwrap().uid(), 100000);
    assert_eq!(fs::metadata(target.join("user-owned")).unwrap().uid(), 101000);
    // On disk, ids stay unshifted.
    assert_eq!(fs::metadata(d.path(&c).join("rootfs/root-owned")).unwrap().uid(), 0);
    nix::mount::umount2(&target, nix::mount::MntFlags::empty()).unwrap();
    d.delete().unwrap();
    assert_gone(&scratch);
}

/// Mounts `src` at `target` idmapped through `userns`, as the runtime mounts a rootfs:
/// open_tree(OPEN_TREE_CLONE), mount_setattr(MOUNT_ATTR_IDMAP), move_mount.
fn idmapped_bind(src: &Path, userns: BorrowedFd<'_>, target: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;

    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
    fn check(ret: libc::c_long) -> std::io::Result<libc::c_long> {
        if ret < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(ret)
        }
    }
    let (src, target) = (
        CString::new(src.as_os_str().as_bytes()).unwrap(),
        CString::new(target.as_os_str().as_bytes()).unwrap(),
    );
    let flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC;
    // SAFETY: `src` is a NUL-terminated string alive across the call; open_tree(2) returns a new
    // descriptor or -1.
    let fd = check(unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, src.as_ptr(), flags) })?;
    // SAFETY: open_tree returned a fresh descriptor nothing else owns.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: `attr` is a `struct mount_attr` alive across the call, its size passed with it; the
    // path is an empty C string; both descriptors are open.
    check(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &mut attr as *mut MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })?;
    // SAFETY: an open descriptor and C strings alive across the call; MOVE_MOUNT_F_EMPTY_PATH
    // makes the kernel move the detached tree itself.
    check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    })?;
    Ok(())
}
