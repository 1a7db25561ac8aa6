//! Instance backups: export streamed in LXD's layout, import as a new instance (on another
//! pool too), byte-identical content and snapshots, bad uploads refused leaving nothing.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::json;
use support::{busybox_image, skip_unless_lxc, skip_unless_root, TestDaemon};

/// Every path under `root` with what it is: a file's sha256, a link's target, a directory;
/// with owner and mode.
fn manifest(root: &Path) -> BTreeMap<String, String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg("cd \"$1\" && find . -printf '%p %y %U:%G %m %l\\n' | sort && find . -type f -exec sha256sum {} + | sort -k2")
        .arg("sh")
        .arg(root)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .enumerate()
        .map(|(i, l)| (format!("{i:06}"), l.to_string()))
        .collect()
}

#[test]
fn an_exported_backup_imports_byte_identical_with_its_snapshots() {
    if skip_unless_root("an_exported_backup_imports_byte_identical_with_its_snapshots")
        || skip_unless_lxc("an_exported_backup_imports_byte_identical_with_its_snapshots")
    {
        return;
    }
    let Some(image) = busybox_image("an_exported_backup_imports_byte_identical_with_its_snapshots") else {
        return;
    };
    let d = TestDaemon::start("backups");
    d.import(&image, "busybox");
    d.ok(
        "POST",
        "/1.0/storage-pools",
        r#"{"name":"fast","driver":"btrfs","config":{"size":"1GiB"}}"#,
        201,
    );
    let body = json!({"name": "b1", "source": {"type": "image", "alias": "busybox"}, "profiles": [],
                      "devices": {"root": {"type": "disk", "path": "/", "pool": "fast"}}});
    d.op_ok("POST", "/1.0/instances", &body.to_string());
    d.op_ok("PUT", "/1.0/instances/b1/state", r#"{"action":"start"}"#);
    d.sh(
        "b1",
        "echo one > /data && ln -s /data /link && mkdir -p /home/u && chown 1000:1000 /home/u && chmod 0750 /home/u",
    );
    d.op_ok("POST", "/1.0/instances/b1/snapshots", r#"{"name":"s1"}"#);
    d.sh("b1", "echo two > /data");
    d.op_ok("POST", "/1.0/instances/b1/snapshots", r#"{"name":"s2"}"#);
    d.sh("b1", "echo three > /data");

    // lxc export (backup, download, delete) of the running instance, and import under a new
    // name on the dir pool.
    let file = d.dir.join("b1.tar.gz");
    d.lxc_ok(&["export", "b1", file.to_str().unwrap()]);
    assert!(
        d.get("/1.0/instances/b1/backups").as_array().unwrap().is_empty(),
        "lxc deleted its backup"
    );
    let magic = std::fs::read(&file).unwrap();
    assert_eq!(&magic[..2], &[0x1f, 0x8b], "gzip by default");
    d.lxc_ok(&["import", file.to_str().unwrap(), "b2", "--storage", "default"]);
    let b2 = d.get("/1.0/instances/b2");
    assert_eq!(b2["expanded_devices"]["root"]["pool"], "default", "{b2}");
    let snaps: Vec<String> = d
        .get("/1.0/instances/b2/snapshots?recursion=1")
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(snaps, ["s1", "s2"]);

    // Byte-identical: the instance and each snapshot, contents, owners, modes and links.
    let pools = d.dir.join("storage-pools");
    d.op_ok("PUT", "/1.0/instances/b1/state", r#"{"action":"stop","force":true}"#);
    assert_eq!(
        manifest(&pools.join("fast/containers/b1/rootfs")),
        manifest(&pools.join("default/containers/b2/rootfs")),
        "the imported rootfs differs"
    );
    for s in ["s1", "s2"] {
        assert_eq!(
            manifest(&pools.join(format!("fast/containers-snapshots/b1/{s}/rootfs"))),
            manifest(&pools.join(format!("default/containers-snapshots/b2/{s}/rootfs"))),
            "snapshot {s} differs"
        );
    }
    d.op_ok("PUT", "/1.0/instances/b2/state", r#"{"action":"start"}"#);
    assert_eq!(d.sh("b2", "cat /data; stat -c %u:%g /home/u").1, "three\n1000:1000\n");
    d.op_ok("PUT", "/1.0/instances/b2", r#"{"restore":"s1"}"#);
    assert_eq!(d.sh("b2", "cat /data").1.trim(), "one");

    // Through the API: zstd, instance only, streamed; the import keeps no snapshot.
    d.op_ok(
        "POST",
        "/1.0/instances/b1/backups",
        r#"{"name":"z","compression_algorithm":"zstd","instance_only":true}"#,
    );
    let z = d.dir.join("z.tar.zst");
    let got = Command::new("curl")
        .args(["-sf", "--unix-socket"])
        .arg(d.socket())
        .arg("http://corral/1.0/instances/b1/backups/z/export")
        .arg("-o")
        .arg(&z)
        .status()
        .unwrap();
    assert!(got.success());
    assert_eq!(&std::fs::read(&z).unwrap()[..4], &[0x28, 0xb5, 0x2f, 0xfd], "zstd");
    let list = Command::new("sh")
        .arg("-c")
        .arg(format!("zstd -dc {} | tar -t", z.display()))
        .output()
        .unwrap();
    let names = String::from_utf8_lossy(&list.stdout);
    assert!(
        names.lines().next().unwrap().starts_with("backup/index.yaml"),
        "{names}"
    );
    assert!(names.contains("backup/container/rootfs/data") && !names.contains("backup/snapshots"));
    d.lxc_ok(&["import", z.to_str().unwrap(), "b3"]);
    // Our own CLI, the same round trip.
    let ours = d.dir.join("ours.tar.xz");
    d.corral_ok(&["export", "b2", ours.to_str().unwrap(), "--compression", "xz"]);
    assert!(d.get("/1.0/instances/b2/backups").as_array().unwrap().is_empty());
    d.corral_ok(&["import", ours.to_str().unwrap(), "b4", "--storage", "fast"]);
    assert!(support::is_subvolume(&pools.join("fast/containers/b4")));
    assert_eq!(
        manifest(&pools.join("default/containers/b2/rootfs")),
        manifest(&pools.join("fast/containers/b4/rootfs"))
    );
    assert!(d.get("/1.0/instances/b3/snapshots").as_array().unwrap().is_empty());
    d.op_ok("DELETE", "/1.0/instances/b1/backups/z", "");
    assert!(
        !pools.join("fast/containers-snapshots/b1/.backup-z").exists(),
        "the backup's snapshot went with it"
    );
}

#[test]
fn bad_backup_uploads_are_refused_and_leave_nothing() {
    if skip_unless_root("bad_backup_uploads_are_refused_and_leave_nothing") {
        return;
    }
    let Some(image) = busybox_image("bad_backup_uploads_are_refused_and_leave_nothing") else {
        return;
    };
    let d = TestDaemon::start("backups-bad");
    d.import(&image, "busybox");
    d.op_ok(
        "POST",
        "/1.0/instances",
        r#"{"name":"c1","source":{"type":"image","alias":"busybox"}}"#,
    );
    d.op_ok(
        "POST",
        "/1.0/instances/c1/backups",
        r#"{"name":"full","compression_algorithm":"none"}"#,
    );
    let good = Command::new("curl")
        .args(["-sf", "--unix-socket"])
        .arg(d.socket())
        .arg("http://corral/1.0/instances/c1/backups/full/export")
        .output()
        .unwrap()
        .stdout;
    assert!(good.len() > 100_000, "{}", good.len());
    let upload = |bytes: &[u8], name: &str| {
        let a = d.call(
            "POST",
            "/1.0/instances",
            &[&format!("X-LXD-name: {name}")],
            support::Body::Bytes(bytes),
        );
        d.wait(&a)
    };
    for (bytes, want) in [
        (b"this is not a tarball at all".to_vec(), "not a valid tarball"),
        (good[..good.len() / 2].to_vec(), "not a valid tarball"),
    ] {
        let op = upload(&bytes, "x1");
        assert_eq!(op["status"], "Failure", "{op}");
        assert!(op["err"].as_str().unwrap().contains(want), "{op}");
        assert_eq!(d.request("GET", "/1.0/instances/x1", None).0, 404);
        assert!(
            !d.dir.join("storage-pools/default/containers/x1").exists(),
            "a half volume was left"
        );
        let stray: Vec<_> = std::fs::read_dir(d.dir.join("storage-pools/default"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".import-"))
            .collect();
        assert!(stray.is_empty(), "a staging directory was left");
    }
    // A name that is taken, a bad compression.
    let op = upload(&good, "c1");
    assert!(op["err"].as_str().unwrap().contains("already exists"), "{op}");
    d.refused(
        "POST",
        "/1.0/instances/c1/backups",
        Some(r#"{"compression_algorithm":"lz9"}"#),
        400,
        "lz9",
    );
    // The good one imports.
    let op = upload(&good, "c2");
    assert_eq!(op["status"], "Success", "{op}");
}

#[test]
fn an_expired_backup_is_deleted_by_the_scheduler() {
    if skip_unless_root("an_expired_backup_is_deleted_by_the_scheduler") {
        return;
    }
    // A scheduler tick every second (each counting as the next minute).
    let d = TestDaemon::start_with_env("backups-expiry", &[("CORRAL_SNAPSHOT_TICK_SECS", "1")]);
    d.op_ok("POST", "/1.0/instances", r#"{"name":"e1","source":{"type":"none"}}"#);
    d.op_ok("POST", "/1.0/instances/e1/backups", r#"{"name":"keep"}"#);
    d.op_ok(
        "POST",
        "/1.0/instances/e1/backups",
        r#"{"name":"old","expires_at":"2001-01-01T00:00:00Z"}"#,
    );
    let names = || -> Vec<String> {
        d.get("/1.0/instances/e1/backups?recursion=1")
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["name"].as_str().unwrap().to_string())
            .collect()
    };
    d.ok(
        "POST",
        "/1.0/storage-pools/default/volumes/custom",
        r#"{"name":"v"}"#,
        201,
    );
    let vbase = "/1.0/storage-pools/default/volumes/custom/v/backups";
    d.op_ok("POST", vbase, r#"{"name":"keep"}"#);
    d.op_ok("POST", vbase, r#"{"name":"old","expires_at":"2001-01-01T00:00:00Z"}"#);
    let volume_names = || -> Vec<String> {
        d.get(&format!("{vbase}?recursion=1"))
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["name"].as_str().unwrap().to_string())
            .collect()
    };
    let gone = support::wait_for(std::time::Duration::from_secs(20), || {
        (names() == ["keep"] && volume_names() == ["keep"]).then_some(())
    });
    assert!(
        gone.is_some(),
        "backups now: {:?}, the volume's {:?}",
        names(),
        volume_names()
    );
}

/// The processes whose command line mentions `needle`.
fn processes_with(needle: &str) -> Vec<String> {
    let out = Command::new("pgrep").args(["-af", needle]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.contains("pgrep"))
        .map(str::to_string)
        .collect()
}

#[test]
fn a_daemon_killed_mid_copy_or_mid_import_leaves_no_half_instance() {
    if skip_unless_root("a_daemon_killed_mid_copy_or_mid_import_leaves_no_half_instance") {
        return;
    }
    let Some(image) = busybox_image("a_daemon_killed_mid_copy_or_mid_import_leaves_no_half_instance") else {
        return;
    };
    let mut d = TestDaemon::start("backups-kill");
    d.import(&image, "busybox");
    d.op_ok(
        "POST",
        "/1.0/instances",
        r#"{"name":"c1","source":{"type":"image","alias":"busybox"}}"#,
    );
    let containers = d.dir.join("storage-pools/default/containers");
    // Enough data that the copy takes a while.
    let big = containers.join("c1/rootfs/big");
    let made = Command::new("dd")
        .args([
            "if=/dev/urandom",
            &format!("of={}", big.display()),
            "bs=1M",
            "count=400",
        ])
        .output()
        .unwrap();
    assert!(made.status.success());

    // Kill -9 in the middle of a copy.
    let a = d.call(
        "POST",
        "/1.0/instances",
        &[],
        support::Body::Json(r#"{"name":"c2","source":{"type":"copy","source":"c1"}}"#),
    );
    assert_eq!(a.code, 202);
    let partial = containers.join(".c2.partial");
    assert!(
        support::wait_for(std::time::Duration::from_secs(10), || partial.exists().then_some(())).is_some(),
        "the copy never started"
    );
    d.crash();
    let gone = support::wait_for(std::time::Duration::from_secs(5), || {
        processes_with(".c2.partial").is_empty().then_some(())
    });
    assert!(
        gone.is_some(),
        "cp outlived the daemon: {:?}",
        processes_with(".c2.partial")
    );
    d.spawn();
    assert_eq!(
        d.request("GET", "/1.0/instances/c2", None).0,
        404,
        "a half-made copy was kept"
    );
    assert!(
        !containers.join("c2").exists() && !partial.exists(),
        "a half volume was left"
    );
    // And the same copy, uninterrupted, works.
    d.op_ok(
        "POST",
        "/1.0/instances",
        r#"{"name":"c2","source":{"type":"copy","source":"c1"}}"#,
    );

    // Kill -9 in the middle of a backup import.
    d.op_ok(
        "POST",
        "/1.0/instances/c1/backups",
        r#"{"name":"b","compression_algorithm":"none"}"#,
    );
    let file = d.dir.join("c1.tar");
    let got = Command::new("curl")
        .args(["-sf", "--unix-socket"])
        .arg(d.socket())
        .arg("http://corral/1.0/instances/c1/backups/b/export")
        .arg("-o")
        .arg(&file)
        .status()
        .unwrap();
    assert!(got.success());
    // A slow upload, so the daemon dies while it is being unpacked.
    let mut upload = Command::new("curl")
        .args(["-s", "--limit-rate", "20M", "--unix-socket"])
        .arg(d.socket())
        .args([
            "-X",
            "POST",
            "-H",
            "Content-Type: application/octet-stream",
            "-H",
            "X-LXD-name: c3",
        ])
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg("http://corral/1.0/instances")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pool = d.dir.join("storage-pools/default");
    let staging = || {
        std::fs::read_dir(&pool)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(".import-"))
    };
    assert!(
        support::wait_for(std::time::Duration::from_secs(10), || staging().then_some(())).is_some(),
        "the import never started"
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    d.crash();
    let _ = upload.kill();
    let _ = upload.wait();
    d.spawn();
    assert_eq!(d.request("GET", "/1.0/instances/c3", None).0, 404);
    assert!(!containers.join("c3").exists(), "a half-imported volume was left");
    assert!(!staging(), "the import's staging directory was left");
}

/// The names of a volume's snapshots, as the API lists them.
fn volume_snapshots(d: &TestDaemon, pool: &str, volume: &str) -> Vec<String> {
    d.get(&format!(
        "/1.0/storage-pools/{pool}/volumes/custom/{volume}/snapshots?recursion=1"
    ))
    .as_array()
    .unwrap()
    .iter()
    .map(|s| s["name"].as_str().unwrap().to_string())
    .collect()
}

/// What `tar -t` lists of a (compressed or not) tarball.
fn tar_listing(file: &Path) -> Vec<String> {
    let out = Command::new("tar").arg("-taf").arg(file).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn a_custom_volume_backup_imports_byte_identical_with_its_snapshots() {
    const NAME: &str = "a_custom_volume_backup_imports_byte_identical_with_its_snapshots";
    if skip_unless_root(NAME) || skip_unless_lxc(NAME) {
        return;
    }
    let d = TestDaemon::start("volume-backups");
    d.ok(
        "POST",
        "/1.0/storage-pools",
        r#"{"name":"fast","driver":"btrfs","config":{"size":"1GiB"}}"#,
        201,
    );
    d.ok(
        "POST",
        "/1.0/storage-pools/fast/volumes/custom",
        r#"{"name":"data"}"#,
        201,
    );
    let pools = d.dir.join("storage-pools");
    let data = pools.join("fast/custom/data");
    let fill = |script: &str| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(&data)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    fill(
        "echo one > a && ln -s a link && mkdir -p home/u && chown 1000:1000 home/u && chmod 0750 home/u \
         && head -c 3000000 /dev/urandom > big && setfattr -n user.tag -v kept big",
    );
    d.op_ok(
        "POST",
        "/1.0/storage-pools/fast/volumes/custom/data/snapshots",
        r#"{"name":"s1"}"#,
    );
    fill("echo two > a && rm big");
    d.op_ok(
        "POST",
        "/1.0/storage-pools/fast/volumes/custom/data/snapshots",
        r#"{"name":"s2"}"#,
    );
    fill("echo three > a");

    // lxc storage volume export (backup, download, delete), import on the dir pool.
    let file = d.dir.join("data.tar.gz");
    d.lxc_ok(&["storage", "volume", "export", "fast", "data", file.to_str().unwrap()]);
    assert!(
        d.get("/1.0/storage-pools/fast/volumes/custom/data/backups")
            .as_array()
            .unwrap()
            .is_empty(),
        "lxc deleted its backup"
    );
    assert!(
        !pools
            .join("fast/custom-snapshots/data")
            .read_dir()
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(".backup-")),
        "the backup's snapshot went with it"
    );
    let names = tar_listing(&file);
    assert_eq!(names[0], "backup/index.yaml", "{names:?}");
    for want in [
        "backup/volume/a",
        "backup/volume-snapshots/s1/big",
        "backup/volume-snapshots/s2/a",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
    }
    d.lxc_ok(&[
        "storage",
        "volume",
        "import",
        "default",
        file.to_str().unwrap(),
        "data2",
    ]);
    assert_eq!(volume_snapshots(&d, "default", "data2"), ["s1", "s2"]);
    let pairs = |a: &str, b: &str| {
        assert_eq!(manifest(&pools.join(a)), manifest(&pools.join(b)), "{a} and {b} differ");
    };
    pairs("fast/custom/data", "default/custom/data2");
    for s in ["s1", "s2"] {
        pairs(
            &format!("fast/custom-snapshots/data/{s}"),
            &format!("default/custom-snapshots/data2/{s}"),
        );
    }
    let xattr = Command::new("getfattr")
        .args(["--only-values", "-n", "user.tag"])
        .arg(pools.join("default/custom-snapshots/data2/s1/big"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&xattr.stdout), "kept", "xattrs kept");

    // Our CLI: zstd, back onto btrfs as subvolumes; --volume-only keeps no snapshot.
    let ours = d.dir.join("ours.tar.zst");
    d.corral_ok(&[
        "storage",
        "volume",
        "export",
        "default",
        "data2",
        ours.to_str().unwrap(),
        "--compression",
        "zstd",
    ]);
    assert_eq!(&std::fs::read(&ours).unwrap()[..4], &[0x28, 0xb5, 0x2f, 0xfd], "zstd");
    d.corral_ok(&["storage", "volume", "import", "fast", ours.to_str().unwrap(), "data3"]);
    assert!(support::is_subvolume(&pools.join("fast/custom/data3")));
    pairs("fast/custom/data", "fast/custom/data3");
    pairs("fast/custom-snapshots/data/s1", "fast/custom-snapshots/data3/s1");
    let only = d.dir.join("only.tar");
    d.corral_ok(&[
        "storage",
        "volume",
        "export",
        "fast",
        "data",
        only.to_str().unwrap(),
        "--compression",
        "none",
        "--volume-only",
    ]);
    assert!(!tar_listing(&only)
        .iter()
        .any(|n| n.starts_with("backup/volume-snapshots")));
    d.corral_ok(&[
        "storage",
        "volume",
        "import",
        "default",
        only.to_str().unwrap(),
        "data4",
    ]);
    assert!(volume_snapshots(&d, "default", "data4").is_empty());
    pairs("fast/custom/data", "default/custom/data4");

    // The API: a backup is a point in time (a later change is not in it), renamed, deleted.
    let base = "/1.0/storage-pools/fast/volumes/custom/data/backups";
    d.op_ok("POST", base, r#"{"name":"b1","compression_algorithm":"none"}"#);
    fill("echo four > a");
    d.op_ok("POST", &format!("{base}/b1"), r#"{"name":"b2"}"#);
    let list = d.get(&format!("{base}?recursion=1"));
    assert_eq!(list[0]["name"], "b2", "{list}");
    assert_eq!(d.request("GET", &format!("{base}/b1"), None).0, 404);
    let exported = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "curl -sf --unix-socket {} http://corral{base}/b2/export | tar -xOf - backup/volume/a",
            d.socket().display()
        ))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&exported.stdout),
        "three\n",
        "the backup is the volume at backup time"
    );
    d.refused("POST", base, Some(r#"{"compression_algorithm":"lz9"}"#), 400, "lz9");
    // A volume that has backups is renamed with them, and deleted with them.
    d.ok(
        "POST",
        "/1.0/storage-pools/fast/volumes/custom/data",
        r#"{"name":"moved"}"#,
        201,
    );
    assert_eq!(
        d.get("/1.0/storage-pools/fast/volumes/custom/moved/backups?recursion=1")[0]["name"],
        "b2"
    );
    d.ok("DELETE", "/1.0/storage-pools/fast/volumes/custom/moved", "", 200);
    assert!(
        !pools.join("fast/custom-snapshots/moved").exists(),
        "snapshots and backups went along"
    );

    // A truncated upload, and an instance backup, leave nothing.
    let full = d.dir.join("full.tar");
    d.corral_ok(&[
        "storage",
        "volume",
        "export",
        "default",
        "data2",
        full.to_str().unwrap(),
        "--compression",
        "none",
    ]);
    let good = std::fs::read(&full).unwrap();
    assert!(good.len() > 3_000_000, "{}", good.len());
    let upload = |bytes: &[u8], name: &str| {
        let a = d.call(
            "POST",
            "/1.0/storage-pools/default/volumes/custom",
            &[&format!("X-LXD-name: {name}")],
            support::Body::Bytes(bytes),
        );
        d.wait(&a)
    };
    let op = upload(&good[..good.len() / 2], "x1");
    assert_eq!(op["status"], "Failure", "{op}");
    assert!(op["err"].as_str().unwrap().contains("not a valid tarball"), "{op}");
    assert_eq!(
        d.request("GET", "/1.0/storage-pools/default/volumes/custom/x1", None).0,
        404
    );
    assert!(!pools.join("default/custom/x1").exists(), "a half volume was left");
    assert!(
        !pools.join("default/custom-snapshots/x1").exists(),
        "a half snapshot was left"
    );
    let stray = std::fs::read_dir(pools.join("default"))
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with(".import-"));
    assert!(!stray, "a staging directory was left");
    let op = upload(&good, "data2");
    assert!(op["err"].as_str().unwrap().contains("already exists"), "{op}");
    d.op_ok("POST", "/1.0/instances", r#"{"name":"c1","source":{"type":"none"}}"#);
    d.op_ok(
        "POST",
        "/1.0/instances/c1/backups",
        r#"{"name":"b","compression_algorithm":"none"}"#,
    );
    let instance_backup = Command::new("curl")
        .args(["-sf", "--unix-socket"])
        .arg(d.socket())
        .arg("http://corral/1.0/instances/c1/backups/b/export")
        .output()
        .unwrap()
        .stdout;
    let op = upload(&instance_backup, "x2");
    assert!(op["err"].as_str().unwrap().contains("lxc import"), "{op}");
    assert!(!pools.join("default/custom/x2").exists());
}

/// The subvolumes of the btrfs filesystem holding `path`, by path.
fn subvolumes(path: &Path) -> Vec<String> {
    let out = Command::new("btrfs")
        .args(["subvolume", "list"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(" path ").nth(1).map(str::to_string))
        .collect()
}

#[test]
fn an_optimized_backup_round_trips_as_btrfs_streams_and_only_into_btrfs() {
    const NAME: &str = "an_optimized_backup_round_trips_as_btrfs_streams_and_only_into_btrfs";
    if skip_unless_root(NAME) || skip_unless_lxc(NAME) {
        return;
    }
    let Some(image) = busybox_image(NAME) else {
        return;
    };
    let d = TestDaemon::start("backups-optimized");
    d.import(&image, "busybox");
    d.ok(
        "POST",
        "/1.0/storage-pools",
        r#"{"name":"fast","driver":"btrfs","config":{"size":"1GiB"}}"#,
        201,
    );
    let body = json!({"name": "o1", "source": {"type": "image", "alias": "busybox"}, "profiles": [],
                      "devices": {"root": {"type": "disk", "path": "/", "pool": "fast"}}});
    d.op_ok("POST", "/1.0/instances", &body.to_string());
    let pools = d.dir.join("storage-pools");
    let rootfs = pools.join("fast/containers/o1/rootfs");
    let write = |script: &str| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(&rootfs)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    write("echo one > data && head -c 2000000 /dev/urandom > big && mkdir -p home/u && chown 1000:1000 home/u");
    d.op_ok("POST", "/1.0/instances/o1/snapshots", r#"{"name":"s1"}"#);
    write("echo two > data && rm big");
    d.op_ok("POST", "/1.0/instances/o1/snapshots", r#"{"name":"s2"}"#);
    write("echo three > data");

    // lxc export --optimized-storage: btrfs send streams, the snapshots incremental.
    let file = d.dir.join("o1.tar.gz");
    d.lxc_ok(&["export", "o1", file.to_str().unwrap(), "--optimized-storage"]);
    let names = tar_listing(&file);
    assert_eq!(
        names,
        [
            "backup/index.yaml",
            "backup/snapshots/s1.bin",
            "backup/snapshots/s2.bin",
            "backup/container.bin"
        ]
    );
    let index = Command::new("tar")
        .arg("-xOzf")
        .arg(&file)
        .arg("backup/index.yaml")
        .output()
        .unwrap();
    let index: serde_json::Value = serde_json::from_slice(&index.stdout).unwrap();
    assert_eq!(
        (index["optimized"].as_bool(), index["backend"].as_str()),
        (Some(true), Some("btrfs"))
    );
    // The incremental s2 is far smaller than s1, which holds the random file.
    let sizes = Command::new("tar").arg("-tvzf").arg(&file).output().unwrap();
    let sizes: Vec<u64> = String::from_utf8_lossy(&sizes.stdout)
        .lines()
        .map(|l| l.split_whitespace().nth(2).unwrap().parse().unwrap())
        .collect();
    assert!(sizes[1] > 2_000_000 && sizes[2] < 200_000, "{sizes:?}");

    d.lxc_ok(&["import", file.to_str().unwrap(), "o2", "--storage", "fast"]);
    assert_eq!(manifest(&rootfs), manifest(&pools.join("fast/containers/o2/rootfs")));
    for s in ["s1", "s2"] {
        assert_eq!(
            manifest(&pools.join(format!("fast/containers-snapshots/o1/{s}/rootfs"))),
            manifest(&pools.join(format!("fast/containers-snapshots/o2/{s}/rootfs"))),
            "snapshot {s} differs"
        );
    }
    // The instance is writable, its snapshots restorable.
    std::fs::write(pools.join("fast/containers/o2/rootfs/new"), "x").unwrap();
    d.op_ok("PUT", "/1.0/instances/o2", r#"{"restore":"s1"}"#);
    assert_eq!(
        std::fs::read_to_string(pools.join("fast/containers/o2/rootfs/data")).unwrap(),
        "one\n"
    );
    d.op_ok("PUT", "/1.0/instances/o2/state", r#"{"action":"start"}"#);
    assert_eq!(d.sh("o2", "cat /data; stat -c %u:%g /home/u").1, "one\n1000:1000\n");
    d.op_ok("PUT", "/1.0/instances/o2/state", r#"{"action":"stop","force":true}"#);

    // Not into a dir pool; a cut upload; neither leaves anything.
    let before = subvolumes(&pools.join("fast"));
    let upload = |bytes: &[u8], name: &str, pool: &str| {
        let a = d.call(
            "POST",
            "/1.0/instances",
            &[&format!("X-LXD-name: {name}"), &format!("X-LXD-pool: {pool}")],
            support::Body::Bytes(bytes),
        );
        d.wait(&a)
    };
    let good = std::fs::read(&file).unwrap();
    let op = upload(&good, "x1", "default");
    assert!(
        op["err"]
            .as_str()
            .unwrap()
            .contains("can only be imported into a btrfs pool"),
        "{op}"
    );
    assert!(!pools.join("default/containers/x1").exists());
    let op = upload(&good[..good.len() * 2 / 3], "x2", "fast");
    assert_eq!(op["status"], "Failure", "{op}");
    assert_eq!(d.request("GET", "/1.0/instances/x2", None).0, 404);
    assert_eq!(subvolumes(&pools.join("fast")), before, "a received subvolume was left");
    let stray = std::fs::read_dir(pools.join("fast"))
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with(".import-"));
    assert!(!stray, "a staging directory was left");

    // A custom volume, the same way (our CLI), and refused on a dir pool.
    d.ok("POST", "/1.0/storage-pools/fast/volumes/custom", r#"{"name":"v"}"#, 201);
    std::fs::write(pools.join("fast/custom/v/f"), "first").unwrap();
    d.op_ok(
        "POST",
        "/1.0/storage-pools/fast/volumes/custom/v/snapshots",
        r#"{"name":"s1"}"#,
    );
    std::fs::write(pools.join("fast/custom/v/f"), "second").unwrap();
    let vfile = d.dir.join("v.tar.zst");
    d.corral_ok(&[
        "storage",
        "volume",
        "export",
        "fast",
        "v",
        vfile.to_str().unwrap(),
        "--optimized-storage",
        "--compression",
        "zstd",
    ]);
    assert_eq!(
        tar_listing(&vfile)[1..],
        ["backup/volume-snapshots/s1.bin", "backup/volume.bin"]
    );
    d.corral_ok(&["storage", "volume", "import", "fast", vfile.to_str().unwrap(), "v2"]);
    assert_eq!(
        std::fs::read_to_string(pools.join("fast/custom/v2/f")).unwrap(),
        "second"
    );
    assert_eq!(
        std::fs::read_to_string(pools.join("fast/custom-snapshots/v2/s1/f")).unwrap(),
        "first"
    );
    d.ok(
        "POST",
        "/1.0/storage-pools/default/volumes/custom",
        r#"{"name":"plain"}"#,
        201,
    );
    d.refused(
        "POST",
        "/1.0/storage-pools/default/volumes/custom/plain/backups",
        Some(r#"{"optimized_storage":true}"#),
        400,
        "btrfs",
    );
}
