//! Storage pools through the API: a btrfs pool on a loop file the daemon creates, instances on
//! it (CoW launches, snapshots, restore of any snapshot, copies), bad input refused, and
//! nothing left behind (no mount, no loop device, no file).

mod support;

use std::process::Command;

use serde_json::json;
use support::{busybox_image, is_subvolume, mounted_under, skip_unless_root, TestDaemon};

fn loop_devices_of(file: &std::path::Path) -> String {
    let out = Command::new("losetup").arg("-j").arg(file).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_btrfs_pool_on_a_loop_file_runs_instances_with_cow_snapshots_and_copies() {
    if skip_unless_root("a_btrfs_pool_on_a_loop_file_runs_instances_with_cow_snapshots_and_copies") {
        return;
    }
    let Some(image) = busybox_image("a_btrfs_pool_on_a_loop_file_runs_instances_with_cow_snapshots_and_copies") else {
        return;
    };
    let mut d = TestDaemon::start("pool-btrfs");
    d.import(&image, "busybox");
    d.ok(
        "POST",
        "/1.0/storage-pools",
        r#"{"name":"fast","driver":"btrfs","config":{"size":"1GiB"}}"#,
        201,
    );
    let pool = d.get("/1.0/storage-pools/fast");
    assert_eq!(
        (pool["driver"].as_str(), pool["status"].as_str()),
        (Some("btrfs"), Some("Created")),
        "{pool}"
    );
    let loop_file = std::path::PathBuf::from(pool["config"]["source"].as_str().unwrap());
    assert!(loop_file.starts_with(&d.dir) && loop_file.exists(), "{pool}");
    let total = d.get("/1.0/storage-pools/fast/resources")["space"]["total"]
        .as_u64()
        .unwrap();
    assert!((900 << 20..=1 << 30).contains(&total), "a 1 GiB pool: {total}");

    let body = json!({"name": "b1", "source": {"type": "image", "alias": "busybox"}, "profiles": [],
                      "devices": {"root": {"type": "disk", "path": "/", "pool": "fast"}}});
    d.op_ok("POST", "/1.0/instances", &body.to_string());
    let root = d.dir.join("storage-pools/fast");
    assert!(
        is_subvolume(&root.join("containers/b1")),
        "the instance's root is a subvolume"
    );
    assert!(is_subvolume(
        &root.join("images").join(
            d.get("/1.0/instances/b1")["config"]["volatile.base_image"]
                .as_str()
                .unwrap()
        )
    ));
    d.op_ok("PUT", "/1.0/instances/b1/state", r#"{"action":"start"}"#);
    let (code, out) = d.sh("b1", "echo one > /data && cat /proc/1/comm");
    assert_eq!((code, out.trim()), (0, "init"));

    // Snapshots and restore of an older one.
    d.op_ok("POST", "/1.0/instances/b1/snapshots", r#"{"name":"s1"}"#);
    d.sh("b1", "echo two > /data");
    d.op_ok("POST", "/1.0/instances/b1/snapshots", r#"{"name":"s2"}"#);
    d.sh("b1", "echo three > /data");
    assert!(is_subvolume(&root.join("containers-snapshots/b1/s1")));
    d.op_ok("PUT", "/1.0/instances/b1", r#"{"restore":"s1"}"#);
    assert_eq!(d.sh("b1", "cat /data").1.trim(), "one", "the older snapshot restored");
    d.op_ok("PUT", "/1.0/instances/b1", r#"{"restore":"s2"}"#);
    assert_eq!(d.sh("b1", "cat /data").1.trim(), "two");

    // A copy on the same pool, with its snapshots.
    d.op_ok("PUT", "/1.0/instances/b1/state", r#"{"action":"stop","force":true}"#);
    d.op_ok(
        "POST",
        "/1.0/instances",
        r#"{"name":"b2","source":{"type":"copy","source":"b1"}}"#,
    );
    assert!(is_subvolume(&root.join("containers/b2")) && is_subvolume(&root.join("containers-snapshots/b2/s1")));
    d.op_ok("PUT", "/1.0/instances/b2/state", r#"{"action":"start"}"#);
    assert_eq!(d.sh("b2", "cat /data").1.trim(), "two");

    // A root disk size is a quota on the instance's volume, set at create and changed live.
    let body = json!({"name": "q1", "source": {"type": "image", "alias": "busybox"}, "profiles": [],
                      "devices": {"root": {"type": "disk", "path": "/", "pool": "fast", "size": "48MiB"}}});
    d.op_ok("POST", "/1.0/instances", &body.to_string());
    d.op_ok("PUT", "/1.0/instances/q1/state", r#"{"action":"start"}"#);
    let (code, _) = d.sh("q1", "dd if=/dev/zero of=/big bs=1M count=80 conv=fsync 2>/dev/null");
    assert_ne!(code, 0, "an 80 MiB write inside a 48 MiB root disk");
    d.sh("q1", "rm -f /big; sync");
    let devices = json!({"root": {"type": "disk", "path": "/", "pool": "fast", "size": "200MiB"}});
    d.op_ok("PATCH", "/1.0/instances/q1", &json!({"devices": devices}).to_string());
    let (code, _) = d.sh("q1", "dd if=/dev/zero of=/big bs=1M count=80 conv=fsync 2>/dev/null");
    assert_eq!(code, 0, "the bigger root disk applies to the running instance");
    d.op_ok("PUT", "/1.0/instances/q1/state", r#"{"action":"stop","force":true}"#);
    d.op_ok("DELETE", "/1.0/instances/q1", "");
    let body = json!({"name": "q2", "source": {"type": "none"}, "profiles": [],
                      "devices": {"root": {"type": "disk", "path": "/", "pool": "default", "size": "1GiB"}}});
    let op = d.op("POST", "/1.0/instances", &body.to_string());
    assert!(op["err"].as_str().unwrap_or_default().contains("cannot limit"), "{op}");
    assert_eq!(d.request("GET", "/1.0/instances/q2", None).0, 404);

    // The CLI's launch --storage.
    d.corral_ok(&["init", "busybox", "cl1", "--storage", "fast"]);
    assert!(is_subvolume(&root.join("containers/cl1")));
    d.op_ok("DELETE", "/1.0/instances/cl1", "");

    // A pool in use stays.
    d.refused("DELETE", "/1.0/storage-pools/fast", None, 400, "in use");

    // A reboot: the daemon gone, the pool unmounted and its loop device detached; the next
    // daemon brings it back.
    d.op_ok("PUT", "/1.0/instances/b2/state", r#"{"action":"stop","force":true}"#);
    d.crash();
    for m in mounted_under(&root) {
        let _ = Command::new("umount").arg(&m).status();
    }
    for dev in loop_devices_of(&loop_file).lines().filter_map(|l| l.split(':').next()) {
        let _ = Command::new("losetup").args(["-d", dev]).status();
    }
    assert!(mounted_under(&root).is_empty());
    d.spawn();
    d.op_ok("PUT", "/1.0/instances/b2/state", r#"{"action":"start"}"#);
    assert_eq!(
        d.sh("b2", "cat /data").1.trim(),
        "two",
        "the pool came back after the reboot"
    );

    // Everything goes, and takes the pool's storage along.
    d.op_ok("PUT", "/1.0/instances/b2/state", r#"{"action":"stop","force":true}"#);
    for c in ["b1", "b2"] {
        d.op_ok("DELETE", &format!("/1.0/instances/{c}"), "");
    }
    d.ok("DELETE", "/1.0/storage-pools/fast", "", 200);
    assert!(mounted_under(&root).is_empty(), "a mount was left behind");
    assert_eq!(loop_devices_of(&loop_file), "", "a loop device was left behind");
    assert!(!loop_file.exists(), "the loop file was left behind");
    assert_eq!(d.request("GET", "/1.0/storage-pools/fast", None).0, 404);
}

#[test]
fn bad_pools_are_refused_and_change_nothing() {
    if skip_unless_root("bad_pools_are_refused_and_change_nothing") {
        return;
    }
    let d = TestDaemon::start("pool-bad");
    let before = d.get("/1.0/storage-pools");
    for (body, code, want) in [
        (json!({"name": "default", "driver": "dir"}), 409, "already exists"),
        (
            json!({"name": "p1", "driver": "zfs"}),
            400,
            "unknown storage driver \"zfs\"",
        ),
        (json!({"name": "p1", "driver": "lvm"}), 400, "device-mapper"),
        (
            json!({"name": "p1", "driver": "btrfs", "config": {"size": "10MiB"}}),
            400,
            "too small",
        ),
        (
            json!({"name": "p1", "driver": "btrfs", "config": {"size": "lots"}}),
            400,
            "invalid size",
        ),
        (
            json!({"name": "p1", "driver": "btrfs", "config": {"colour": "red"}}),
            400,
            "unknown btrfs pool option",
        ),
        (
            json!({"name": "a/b", "driver": "dir"}),
            400,
            "invalid storage pool name",
        ),
        (json!({"name": "p1"}), 400, "No driver provided"),
        (
            json!({"name": "p1", "driver": "btrfs", "config": {"source": d.dir.join("images").display().to_string()}}),
            400,
            "btrfs",
        ),
    ] {
        d.refused("POST", "/1.0/storage-pools", Some(&body.to_string()), code, want);
    }
    assert_eq!(d.get("/1.0/storage-pools"), before, "nothing changed");
    assert!(!d.dir.join("disks/p1.img").exists());
    assert!(mounted_under(&d.dir).is_empty());
    d.refused("DELETE", "/1.0/storage-pools/default", None, 400, "default pool");
    d.refused(
        "PATCH",
        "/1.0/storage-pools/default",
        Some(r#"{"config":{"source":"/elsewhere"}}"#),
        400,
        "cannot be changed",
    );
    d.ok(
        "PATCH",
        "/1.0/storage-pools/default",
        r#"{"description":"the first","config":{"user.k":"v"}}"#,
        200,
    );
    assert_eq!(d.get("/1.0/storage-pools/default")["description"], "the first");
    // An instance whose root disk names a pool that does not exist.
    let body = json!({"name": "x", "source": {"type": "none"}, "devices": {"root": {"type": "disk", "path": "/", "pool": "nope"}}});
    let op = d.op("POST", "/1.0/instances", &body.to_string());
    assert!(
        op["err"]
            .as_str()
            .unwrap_or_default()
            .contains("Storage pool not found: nope"),
        "{op}"
    );
}

#[test]
fn custom_volumes_have_quotas_snapshots_copies_and_the_lxc_client_manages_them() {
    if skip_unless_root("custom_volumes_have_quotas_snapshots_copies_and_the_lxc_client_manages_them")
        || support::skip_unless_lxc("custom_volumes_have_quotas_snapshots_copies_and_the_lxc_client_manages_them")
    {
        return;
    }
    let d = TestDaemon::start("pool-volumes");
    // Pools through the lxc client.
    d.lxc_ok(&["storage", "create", "fast", "btrfs", "size=1GiB"]);
    let list = d.lxc_ok(&["storage", "list", "--format", "csv"]);
    assert!(
        list.lines().any(|l| l.starts_with("fast,") && l.contains("btrfs")),
        "{list}"
    );
    assert!(
        list.lines().any(|l| l.starts_with("default,") && l.contains("dir")),
        "{list}"
    );

    d.lxc_ok(&["storage", "volume", "create", "fast", "data", "size=64MiB"]);
    let vols = d.lxc_ok(&["storage", "volume", "list", "fast", "--format", "csv"]);
    assert!(vols.lines().any(|l| l.starts_with("custom,data,")), "{vols}");
    let root = d.dir.join("storage-pools/fast/custom/data");
    assert!(is_subvolume(&root));

    // The quota holds: writing past 64 MiB fails.
    let dd = |name: &str, mib: u32| {
        Command::new("dd")
            .args([
                "if=/dev/zero",
                &format!("of={}", root.join(name).display()),
                "bs=1M",
                &format!("count={mib}"),
                "conv=fsync",
            ])
            .output()
            .unwrap()
    };
    assert!(dd("small", 8).status.success());
    let big = dd("big", 100);
    assert!(!big.status.success(), "a 100 MiB write went through a 64 MiB quota");
    assert!(
        String::from_utf8_lossy(&big.stderr).contains("quota"),
        "{}",
        String::from_utf8_lossy(&big.stderr)
    );
    std::fs::remove_file(root.join("big")).unwrap();
    d.lxc_ok(&["storage", "volume", "set", "fast", "data", "size", "256MiB"]);
    assert!(dd("big", 100).status.success(), "the larger quota applies at once");
    std::fs::remove_file(root.join("big")).unwrap();

    // Snapshots, restore of the older one.
    std::fs::write(root.join("f"), "one").unwrap();
    d.lxc_ok(&["storage", "volume", "snapshot", "fast", "data", "s1"]);
    std::fs::write(root.join("f"), "two").unwrap();
    d.lxc_ok(&["storage", "volume", "snapshot", "fast", "data", "s2"]);
    std::fs::write(root.join("f"), "three").unwrap();
    d.lxc_ok(&["storage", "volume", "restore", "fast", "data", "s1"]);
    assert_eq!(std::fs::read_to_string(root.join("f")).unwrap(), "one");
    d.lxc_ok(&["storage", "volume", "restore", "fast", "data", "s2"]);
    assert_eq!(std::fs::read_to_string(root.join("f")).unwrap(), "two");

    // A copy (CoW), with its snapshots; a rename; deletes.
    d.lxc_ok(&["storage", "volume", "copy", "fast/data", "fast/data2"]);
    let copy = d.dir.join("storage-pools/fast/custom/data2");
    assert_eq!(std::fs::read_to_string(copy.join("f")).unwrap(), "two");
    assert!(is_subvolume(
        &d.dir.join("storage-pools/fast/custom-snapshots/data2/s1")
    ));
    d.lxc_ok(&["storage", "volume", "rename", "fast", "data2", "data3"]);
    assert!(d.dir.join("storage-pools/fast/custom/data3/f").exists() && !copy.exists());

    // Across pools: a copy to dir (snapshots along), then a move back to btrfs.
    d.lxc_ok(&["storage", "volume", "copy", "fast/data3", "default/data4"]);
    let data4 = d.dir.join("storage-pools/default/custom/data4");
    assert_eq!(std::fs::read_to_string(data4.join("f")).unwrap(), "two");
    assert_eq!(
        std::fs::read_to_string(d.dir.join("storage-pools/default/custom-snapshots/data4/s1/f")).unwrap(),
        "one"
    );
    d.lxc_ok(&["storage", "volume", "move", "default/data4", "fast/data5"]);
    assert!(!data4.exists());
    assert!(is_subvolume(&d.dir.join("storage-pools/fast/custom/data5")));
    assert_eq!(
        std::fs::read_to_string(d.dir.join("storage-pools/fast/custom-snapshots/data5/s1/f")).unwrap(),
        "one"
    );
    d.lxc_ok(&["storage", "volume", "delete", "fast", "data5"]);

    // Refused: a size on a dir pool, a bad size, a taken name; nothing is made.
    d.refused(
        "POST",
        "/1.0/storage-pools/default/volumes/custom",
        Some(r#"{"name":"v","config":{"size":"1GiB"}}"#),
        400,
        "cannot limit",
    );
    assert!(!d.dir.join("storage-pools/default/custom/v").exists());
    d.refused(
        "POST",
        "/1.0/storage-pools/fast/volumes/custom",
        Some(r#"{"name":"v","config":{"size":"1KiB"}}"#),
        400,
        "too small",
    );
    d.refused(
        "POST",
        "/1.0/storage-pools/fast/volumes/custom",
        Some(r#"{"name":"data"}"#),
        409,
        "already exists",
    );
    d.refused("DELETE", "/1.0/storage-pools/fast", None, 400, "in use");

    for v in ["data", "data3"] {
        d.lxc_ok(&["storage", "volume", "delete", "fast", v]);
    }
    assert!(!d.dir.join("storage-pools/fast/custom-snapshots/data").exists());
    d.lxc_ok(&["storage", "delete", "fast"]);
    assert!(mounted_under(&d.dir).is_empty());
}

#[test]
fn copies_cross_pools_and_refresh_brings_only_what_changed() {
    if skip_unless_root("copies_cross_pools_and_refresh_brings_only_what_changed")
        || support::skip_unless_lxc("copies_cross_pools_and_refresh_brings_only_what_changed")
    {
        return;
    }
    let Some(image) = busybox_image("copies_cross_pools_and_refresh_brings_only_what_changed") else {
        return;
    };
    let d = TestDaemon::start("pool-copies");
    d.import(&image, "busybox");
    d.ok(
        "POST",
        "/1.0/storage-pools",
        r#"{"name":"fast","driver":"btrfs","config":{"size":"1GiB"}}"#,
        201,
    );
    d.op_ok(
        "POST",
        "/1.0/instances",
        r#"{"name":"src","source":{"type":"image","alias":"busybox"},"profiles":["default"]}"#,
    );
    let pools = d.dir.join("storage-pools");
    let src_root = pools.join("default/containers/src/rootfs");
    std::fs::write(src_root.join("data"), "one").unwrap();
    d.op_ok("POST", "/1.0/instances/src/snapshots", r#"{"name":"s1"}"#);
    std::fs::write(src_root.join("data"), "two").unwrap();

    // dir -> btrfs, with the snapshot, through lxc copy --storage.
    d.lxc_ok(&["copy", "src", "dst", "--storage", "fast"]);
    let dst = d.get("/1.0/instances/dst");
    assert_eq!(dst["expanded_devices"]["root"]["pool"], "fast", "{dst}");
    let dst_root = pools.join("fast/containers/dst/rootfs");
    assert!(is_subvolume(&pools.join("fast/containers/dst")));
    assert_eq!(std::fs::read_to_string(dst_root.join("data")).unwrap(), "two");
    assert_eq!(
        std::fs::read_to_string(pools.join("fast/containers-snapshots/dst/s1/rootfs/data")).unwrap(),
        "one"
    );
    d.op_ok("PUT", "/1.0/instances/dst/state", r#"{"action":"start"}"#);
    assert_eq!(d.sh("dst", "cat /data").1, "two");
    d.op_ok("PUT", "/1.0/instances/dst/state", r#"{"action":"stop","force":true}"#);

    // Refresh: a new snapshot and a changed file reach the copy; its own files are replaced.
    std::fs::write(src_root.join("data"), "three").unwrap();
    d.op_ok("POST", "/1.0/instances/src/snapshots", r#"{"name":"s2"}"#);
    std::fs::write(src_root.join("new"), "added").unwrap();
    std::fs::write(dst_root.join("stray"), "only in the copy").unwrap();
    d.lxc_ok(&["copy", "src", "dst", "--refresh"]);
    assert_eq!(std::fs::read_to_string(dst_root.join("data")).unwrap(), "three");
    assert_eq!(std::fs::read_to_string(dst_root.join("new")).unwrap(), "added");
    assert!(!dst_root.join("stray").exists(), "the copy is the source again");
    let snaps: Vec<String> = d
        .get("/1.0/instances/dst/snapshots?recursion=1")
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(snaps, ["s1", "s2"]);
    assert_eq!(
        std::fs::read_to_string(pools.join("fast/containers-snapshots/dst/s2/rootfs/data")).unwrap(),
        "three"
    );
    // A running target is not refreshed.
    d.op_ok("PUT", "/1.0/instances/dst/state", r#"{"action":"start"}"#);
    let out = d.lxc(&["copy", "src", "dst", "--refresh"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("stop it"));

    // Same pool refresh on btrfs: a fresh clone.
    d.op_ok("PUT", "/1.0/instances/dst/state", r#"{"action":"stop","force":true}"#);
    d.lxc_ok(&["copy", "dst", "dst2"]);
    assert_eq!(
        d.get("/1.0/instances/dst2")["expanded_devices"]["root"]["pool"],
        "fast",
        "{}\n{}",
        d.get("/1.0/instances/dst2"),
        d.get("/1.0/instances/dst")
    );
    std::fs::write(dst_root.join("data"), "four").unwrap();
    d.lxc_ok(&["copy", "dst", "dst2", "--refresh"]);
    assert_eq!(
        std::fs::read_to_string(pools.join("fast/containers/dst2/rootfs/data")).unwrap(),
        "four"
    );
    assert!(is_subvolume(&pools.join("fast/containers/dst2")));

    // lxc move --storage: the instance and its snapshots change pool, under the same name.
    d.lxc_ok(&["move", "dst2", "--storage", "default"]);
    assert!(pools.join("default/containers/dst2/rootfs/data").exists());
    assert!(!pools.join("fast/containers/dst2").exists());
    assert_eq!(
        d.get("/1.0/instances/dst2")["expanded_devices"]["root"]["pool"],
        "default"
    );
    assert_eq!(
        std::fs::read_to_string(pools.join("default/containers-snapshots/dst2/s2/rootfs/data")).unwrap(),
        "three"
    );
}
