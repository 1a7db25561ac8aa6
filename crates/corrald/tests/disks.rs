//! Disk devices through the API: host directories and files bound read-write and read-only,
//! shifted (idmapped) or not, propagation, a custom volume shared by two running containers,
//! bad devices refused, and nothing left mounted once the containers stop.

mod support;

use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use support::{busybox_image, skip_unless_root, wait_for, TestDaemon};

fn sh(d: &TestDaemon, name: &str, script: &str) -> (i32, String, String) {
    let out = d.corral(&["exec", name, "--", "sh", "-c", script]);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

fn sh_ok(d: &TestDaemon, name: &str, script: &str) -> String {
    let (code, out, err) = sh(d, name, script);
    assert_eq!(code, 0, "{name}: {script:?}: {out} {err}");
    out
}

/// Mount points under `dir` in this process's (the host's) mount namespace.
fn mounted_under(dir: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let prefix = dir.display().to_string();
    info.lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// Whether any process's mount namespace still has a mount under `path` (a monitor or a
/// container namespace that outlived its container would).
fn any_namespace_mounts_under(path: &Path) -> bool {
    let want = format!(" {}", path.display());
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|e| std::fs::read_to_string(e.path().join("mountinfo")).ok())
        .any(|info| info.lines().any(|l| l.contains(&want)))
}

fn create(d: &TestDaemon, name: &str, config: Value, devices: Value) {
    let body = json!({"name": name, "source": {"type": "image", "alias": "busybox"},
                      "config": config, "devices": devices});
    d.op_ok("POST", "/1.0/instances", &body.to_string());
}

fn start(d: &TestDaemon, name: &str) {
    d.op_ok("PUT", &format!("/1.0/instances/{name}/state"), r#"{"action":"start"}"#);
}

fn stop(d: &TestDaemon, name: &str) {
    d.op_ok(
        "PUT",
        &format!("/1.0/instances/{name}/state"),
        r#"{"action":"stop","force":true}"#,
    );
}

fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Lazily unmounts a host mount the test made, whatever happens to the test.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn map_base() -> u32 {
    corral_runtime::idmap::host_range().default_map().host_uid
}

#[test]
fn host_paths_are_bound_read_write_read_only_shifted_and_with_their_propagation() {
    let test = "host_paths_are_bound_read_write_read_only_shifted_and_with_their_propagation";
    if skip_unless_root(test) {
        return;
    }
    let Some(image) = busybox_image(test) else {
        return;
    };
    let d = TestDaemon::start("disks-host");
    d.import(&image, "busybox");
    let host = d.dir.join("host");
    let (rw, ro, shifted, prop) = (
        host.join("rw"),
        host.join("ro"),
        host.join("shifted"),
        host.join("prop"),
    );
    for dir in [&rw, &ro, &shifted, &prop] {
        std::fs::create_dir_all(dir).unwrap();
    }
    // World-writable, so that what stops a write is the mount, not the permissions.
    for dir in [&rw, &ro] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    std::fs::write(rw.join("hello"), "from the host\n").unwrap();
    std::fs::write(ro.join("hello"), "read only\n").unwrap();
    std::fs::write(shifted.join("roots"), "").unwrap();
    std::fs::write(shifted.join("users"), "").unwrap();
    chown(shifted.join("users"), Some(1000), Some(1000)).unwrap();
    let file = host.join("motd");
    std::fs::write(&file, "a single file\n").unwrap();
    // A shared mount on the host, so that host mounts below it can propagate (or not).
    run(&["mount", "--bind", path_str(&prop), path_str(&prop)]);
    let prop_mount = Unmount(prop.clone());
    run(&["mount", "--make-shared", path_str(&prop)]);
    std::fs::create_dir_all(prop.join("sub")).unwrap();
    let before = mounted_under(&d.dir);

    create(
        &d,
        "h1",
        json!({}),
        json!({
            "rw": {"type": "disk", "source": rw, "path": "/mnt/rw"},
            "ro": {"type": "disk", "source": ro, "path": "/mnt/ro", "readonly": "true"},
            "shifted": {"type": "disk", "source": shifted, "path": "/mnt/shifted", "shift": "true"},
            "file": {"type": "disk", "source": file, "path": "/etc/motd-host"},
            "slave": {"type": "disk", "source": prop, "path": "/mnt/slave", "propagation": "rslave"},
            "private": {"type": "disk", "source": prop, "path": "/mnt/private"},
            "optional": {"type": "disk", "source": host.join("absent"), "path": "/mnt/absent", "required": "false"},
            "indev": {"type": "disk", "source": ro, "path": "/dev/host-ro", "readonly": "true"},
        }),
    );
    start(&d, "h1");

    // Read-write, host ownership kept: host root's file is nobody's inside; what the
    // container's root writes is the map base's on the host.
    assert_eq!(sh_ok(&d, "h1", "cat /mnt/rw/hello"), "from the host");
    assert_eq!(sh_ok(&d, "h1", "stat -c %u:%g /mnt/rw/hello"), "65534:65534");
    sh_ok(&d, "h1", "echo mine > /mnt/rw/written");
    let written = std::fs::metadata(rw.join("written")).unwrap();
    assert_eq!((written.uid(), written.gid()), (map_base(), map_base()));
    assert_eq!(std::fs::read_to_string(rw.join("written")).unwrap(), "mine\n");

    // Read-only, and the container's root cannot lift it.
    assert_eq!(sh_ok(&d, "h1", "cat /mnt/ro/hello"), "read only");
    let (code, _, err) = sh(&d, "h1", "touch /mnt/ro/new");
    assert!(code != 0 && err.contains("Read-only file system"), "{code} {err}");
    for remount in ["mount -o remount,rw /mnt/ro", "mount -o remount,bind,rw /mnt/ro"] {
        let (code, _, _) = sh(&d, "h1", remount);
        assert_ne!(code, 0, "{remount}: the read-only flag is locked");
    }
    let (code, _, err) = sh(&d, "h1", "touch /mnt/ro/new");
    assert!(code != 0 && err.contains("Read-only file system"), "{code} {err}");
    assert!(!ro.join("new").exists());

    // Under /dev (bound after the container's own /dev): read-only too.
    assert_eq!(sh_ok(&d, "h1", "cat /dev/host-ro/hello"), "read only");
    let (code, _, err) = sh(&d, "h1", "touch /dev/host-ro/new");
    assert!(code != 0 && err.contains("Read-only file system"), "{code} {err}");

    // A single file.
    assert_eq!(sh_ok(&d, "h1", "cat /etc/motd-host"), "a single file");

    // shift=true: host root is the container's root, both ways.
    assert_eq!(
        sh_ok(&d, "h1", "stat -c %u:%g /mnt/shifted/roots /mnt/shifted/users"),
        "0:0\n1000:1000"
    );
    sh_ok(
        &d,
        "h1",
        "echo made inside > /mnt/shifted/new && mkdir /mnt/shifted/dir",
    );
    for made in ["new", "dir"] {
        let m = std::fs::metadata(shifted.join(made)).unwrap();
        assert_eq!((m.uid(), m.gid()), (0, 0), "{made} is host root's");
    }

    // A missing source that is not required is skipped.
    let (code, _, _) = sh(&d, "h1", "test -e /mnt/absent");
    assert_ne!(code, 0);

    // Propagation: a host mount below the source reaches the rslave bind, not the private one.
    run(&["mount", "-t", "tmpfs", "tmpfs", path_str(&prop.join("sub"))]);
    let sub_mount = Unmount(prop.join("sub"));
    std::fs::write(prop.join("sub/marker"), "").unwrap();
    let seen = sh(&d, "h1", "test -e /mnt/slave/sub/marker").0;
    let unseen = sh(&d, "h1", "test -e /mnt/private/sub/marker").0;
    drop(sub_mount);
    assert_eq!((seen, unseen), (0, 1), "rslave sees the host's mount, private does not");

    // Nothing of the container is mounted on the host.
    assert_eq!(mounted_under(&d.dir), before);

    // A privileged container: the same binds without an idmap.
    create(
        &d,
        "p1",
        json!({"security.privileged": "true"}),
        json!({
            "ro": {"type": "disk", "source": ro, "path": "/mnt/ro", "readonly": "true"},
            "shifted": {"type": "disk", "source": shifted, "path": "/mnt/shifted", "shift": "true"},
        }),
    );
    start(&d, "p1");
    assert_eq!(
        sh_ok(&d, "p1", "stat -c %u /mnt/shifted/roots; cat /mnt/ro/hello"),
        "0\nread only"
    );
    let (code, _, err) = sh(&d, "p1", "touch /mnt/ro/new");
    assert!(code != 0 && err.contains("Read-only file system"), "{code} {err}");

    stop(&d, "h1");
    stop(&d, "p1");
    drop(prop_mount);
    for name in ["h1", "p1"] {
        let rootfs = d.dir.join("run").join(name).join("rootfs");
        assert!(
            wait_for(Duration::from_secs(10), || (!any_namespace_mounts_under(&rootfs))
                .then_some(()))
            .is_some(),
            "{name}'s mounts outlived it"
        );
    }
    assert_eq!(
        mounted_under(&d.dir),
        before
            .iter()
            .filter(|m| !m.starts_with(path_str(&prop)))
            .cloned()
            .collect::<Vec<_>>()
    );
}

#[test]
fn a_custom_volume_is_shared_by_two_running_containers() {
    let test = "a_custom_volume_is_shared_by_two_running_containers";
    if skip_unless_root(test) {
        return;
    }
    let Some(image) = busybox_image(test) else {
        return;
    };
    let d = TestDaemon::start("disks-volume");
    d.import(&image, "busybox");
    let volume: PathBuf = d.dir.join("storage-pools/default/custom/shared");
    std::fs::create_dir_all(&volume).unwrap();
    let before = mounted_under(&d.dir);
    let devices = json!({"data": {"type": "disk", "pool": "default", "source": "shared", "path": "/data"}});
    create(&d, "v1", json!({}), devices.clone());
    create(&d, "v2", json!({}), devices);
    start(&d, "v1");
    start(&d, "v2");

    sh_ok(
        &d,
        "v1",
        "echo from v1 > /data/note && mkdir /data/dir && touch /data/users && chown 1000:1000 /data/users",
    );
    assert_eq!(sh_ok(&d, "v2", "cat /data/note"), "from v1");
    assert_eq!(
        sh_ok(&d, "v2", "stat -c %u:%g /data/note /data/dir /data/users"),
        "0:0\n0:0\n1000:1000",
        "the container's users own what they made, in both containers"
    );
    sh_ok(&d, "v2", "echo from v2 >> /data/note");
    assert_eq!(sh_ok(&d, "v1", "cat /data/note"), "from v1\nfrom v2");
    // Stored unshifted, as the rootfs: the container's root is uid 0 on disk.
    let m = |p: &str| {
        let m = std::fs::metadata(volume.join(p)).unwrap();
        (m.uid(), m.gid())
    };
    assert_eq!((m("note"), m("dir"), m("users")), ((0, 0), (0, 0), (1000, 1000)));
    assert_eq!(mounted_under(&d.dir), before, "nothing mounted on the host");

    stop(&d, "v1");
    stop(&d, "v2");
    for name in ["v1", "v2"] {
        let rootfs = d.dir.join("run").join(name).join("rootfs");
        assert!(
            wait_for(Duration::from_secs(10), || (!any_namespace_mounts_under(&rootfs))
                .then_some(()))
            .is_some(),
            "{name}'s mounts outlived it"
        );
    }
    assert_eq!(mounted_under(&d.dir), before);
    // And again: the volume attaches to a restarted container.
    start(&d, "v1");
    assert_eq!(sh_ok(&d, "v1", "cat /data/note"), "from v1\nfrom v2");
    stop(&d, "v1");
}

#[test]
fn bad_disk_devices_are_refused_and_nothing_is_created() {
    let test = "bad_disk_devices_are_refused_and_nothing_is_created";
    if skip_unless_root(test) {
        return;
    }
    let Some(image) = busybox_image(test) else {
        return;
    };
    let d = TestDaemon::start("disks-bad");
    d.import(&image, "busybox");
    let src = d.dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(d.dir.join("storage-pools/default/custom/vol")).unwrap();
    let cases = [
        (json!({"type": "disk", "source": src}), "missing \"path\""),
        (
            json!({"type": "disk", "source": src, "path": "mnt"}),
            "must be absolute",
        ),
        (
            json!({"type": "disk", "source": src, "path": "/"}),
            "reserved for the root disk",
        ),
        (json!({"type": "disk", "path": "/mnt"}), "missing \"source\""),
        (
            json!({"type": "disk", "source": d.dir.join("nope"), "path": "/mnt"}),
            "does not exist on the host",
        ),
        (
            json!({"type": "disk", "pool": "nopool", "source": "vol", "path": "/mnt"}),
            "storage pool \"nopool\" does not exist",
        ),
        (
            json!({"type": "disk", "pool": "default", "source": "novol", "path": "/mnt"}),
            "storage volume \"novol\" does not exist in pool \"default\"",
        ),
        (
            json!({"type": "disk", "source": src, "path": "/mnt", "limits.read": "10MB"}),
            "unknown disk option \"limits.read\"",
        ),
        (
            json!({"type": "disk", "source": src, "path": "/mnt", "propagation": "sideways"}),
            "propagation \"sideways\" is not one of",
        ),
        (
            json!({"type": "disk", "source": src, "path": "/dev/x", "shift": "true"}),
            "cannot go under /dev",
        ),
    ];
    for (i, (device, want)) in cases.iter().enumerate() {
        let name = format!("bad{i}");
        let body = json!({"name": name, "source": {"type": "image", "alias": "busybox"},
                          "devices": {"extra": device}});
        let op = d.op("POST", "/1.0/instances", &body.to_string());
        assert_eq!(op["status"], "Failure", "{device}: {op}");
        let err = op["err"].as_str().unwrap_or_default();
        assert!(
            err.contains("disk device \"extra\"") && err.contains(want),
            "{device}: {err:?} lacks {want:?}"
        );
        assert_eq!(
            d.request("GET", &format!("/1.0/instances/{name}"), None).0,
            404,
            "no half-made instance"
        );
        assert!(!d.dir.join("storage-pools/default/containers").join(&name).exists());
    }
    // Two disks on one path.
    let body = json!({"name": "dup", "source": {"type": "image", "alias": "busybox"},
                      "devices": {"a": {"type": "disk", "source": src, "path": "/mnt"},
                                  "b": {"type": "disk", "source": src, "path": "/mnt/"}}});
    let op = d.op("POST", "/1.0/instances", &body.to_string());
    assert!(
        op["err"]
            .as_str()
            .unwrap_or_default()
            .contains("already the mount point"),
        "{op}"
    );
    // An update is refused as well, and changes nothing.
    create(&d, "good", json!({}), json!({}));
    d.refused(
        "PATCH",
        "/1.0/instances/good",
        Some(
            &json!({"devices": {"extra": {"type": "disk", "source": "/nonexistent-corral", "path": "/mnt"}}})
                .to_string(),
        ),
        400,
        "source /nonexistent-corral does not exist on the host",
    );
    assert!(d.get("/1.0/instances/good")["devices"].get("extra").is_none());

    // A symlink the container planted where a disk goes is refused at start, not followed.
    start(&d, "good");
    sh_ok(&d, "good", "ln -s /etc /linked");
    stop(&d, "good");
    d.ok(
        "PATCH",
        "/1.0/instances/good",
        &json!({"devices": {"extra": {"type": "disk", "source": src, "path": "/linked/sub", "shift": "true"}}})
            .to_string(),
        202,
    );
    let op = d.op("PUT", "/1.0/instances/good/state", r#"{"action":"start"}"#);
    let err = op["err"].as_str().unwrap_or_default();
    assert!(
        op["status"] == "Failure" && err.contains("/linked in the container's rootfs is a symlink"),
        "{op}"
    );
    assert!(!Path::new("/etc/sub").exists());
    assert_eq!(d.get("/1.0/instances/good")["status"], "Stopped");
}

/// Mount points in the container's own mount namespace (its /proc/self/mountinfo).
fn container_mounts(d: &TestDaemon, name: &str) -> Vec<String> {
    sh_ok(d, name, "cat /proc/self/mountinfo")
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(str::to_string)
        .collect()
}

fn mounted_in(d: &TestDaemon, name: &str, path: &str) -> bool {
    container_mounts(d, name).iter().any(|m| m == path)
}

/// What the container's monitor lists as hot-plugged.
fn hotplugged(d: &TestDaemon, name: &str) -> Vec<PathBuf> {
    corral_runtime::client::Client::new(&d.dir.join("run").join(name))
        .state()
        .unwrap()
        .hotplugged
}

fn patch_devices(d: &TestDaemon, name: &str, devices: Value) {
    d.ok(
        "PATCH",
        &format!("/1.0/instances/{name}"),
        &json!({ "devices": devices }).to_string(),
        202,
    );
}

/// The instance's PUT body with the local devices `drop` left out.
fn put_without(d: &TestDaemon, name: &str, drop: &[&str]) -> String {
    let mut inst = d.get(&format!("/1.0/instances/{name}"));
    let devices = inst["devices"].as_object_mut().unwrap();
    for dev in drop {
        assert!(devices.remove(*dev).is_some(), "{name} has no device {dev}");
    }
    inst.to_string()
}

fn remove_devices(d: &TestDaemon, name: &str, drop: &[&str]) {
    d.ok(
        "PUT",
        &format!("/1.0/instances/{name}"),
        &put_without(d, name, drop),
        202,
    );
}

/// Waits until no mount namespace has anything under the container's staged rootfs (its
/// monitor and its namespaces are gone).
fn wait_unmounted(d: &TestDaemon, name: &str) {
    let rootfs = d.dir.join("run").join(name).join("rootfs");
    assert!(
        wait_for(Duration::from_secs(10), || (!any_namespace_mounts_under(&rootfs))
            .then_some(()))
        .is_some(),
        "{name}'s mounts outlived it"
    );
}

#[test]
fn disks_are_hot_plugged_into_a_running_container_and_out_again() {
    let test = "disks_are_hot_plugged_into_a_running_container_and_out_again";
    if skip_unless_root(test) {
        return;
    }
    let Some(image) = busybox_image(test) else {
        return;
    };
    let d = TestDaemon::start("disks-hotplug");
    d.import(&image, "busybox");
    let host = d.dir.join("host");
    let (rw, ro, shifted, outer) = (
        host.join("rw"),
        host.join("ro"),
        host.join("shifted"),
        host.join("outer"),
    );
    for dir in [&rw, &ro, &shifted, &outer] {
        std::fs::create_dir_all(dir).unwrap();
        // World-writable, so that what stops a write is the mount, not the permissions.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    std::fs::write(rw.join("hello"), "from the host\n").unwrap();
    std::fs::write(ro.join("hello"), "read only\n").unwrap();
    std::fs::write(outer.join("outer"), "outside\n").unwrap();
    let file = host.join("motd");
    std::fs::write(&file, "a single file\n").unwrap();
    let before = mounted_under(&d.dir);

    create(&d, "hp", json!({}), json!({}));
    start(&d, "hp");
    let at_start = container_mounts(&d, "hp");

    // A host directory, read-write: there at once, writable, host ownership kept.
    patch_devices(
        &d,
        "hp",
        json!({"rw": {"type": "disk", "source": rw, "path": "/mnt/hot/rw"}}),
    );
    assert_eq!(sh_ok(&d, "hp", "cat /mnt/hot/rw/hello"), "from the host");
    assert_eq!(sh_ok(&d, "hp", "stat -c %u:%g /mnt/hot/rw/hello"), "65534:65534");
    sh_ok(&d, "hp", "echo mine > /mnt/hot/rw/written");
    let written = std::fs::metadata(rw.join("written")).unwrap();
    assert_eq!((written.uid(), written.gid()), (map_base(), map_base()));
    assert!(mounted_in(&d, "hp", "/mnt/hot/rw"));
    // The mount point it made is the container's root's.
    assert_eq!(sh_ok(&d, "hp", "stat -c %u:%g /mnt/hot"), "0:0");

    // Read-only, shifted, a single file, a plain bind under /dev: all at once.
    patch_devices(
        &d,
        "hp",
        json!({
            "ro": {"type": "disk", "source": ro, "path": "/mnt/ro", "readonly": "true"},
            "shifted": {"type": "disk", "source": shifted, "path": "/mnt/shifted", "shift": "true"},
            "file": {"type": "disk", "source": file, "path": "/etc/motd-host"},
            "indev": {"type": "disk", "source": ro, "path": "/dev/host-ro", "readonly": "true"},
        }),
    );
    assert_eq!(sh_ok(&d, "hp", "cat /mnt/ro/hello"), "read only");
    let (code, _, err) = sh(&d, "hp", "touch /mnt/ro/new");
    assert!(code != 0 && err.contains("Read-only file system"), "{code} {err}");
    // The container's root cannot lift read-only on a hot-plugged disk either.
    for remount in ["mount -o remount,bind,rw /mnt/ro", "mount -o remount,rw /mnt/ro"] {
        let (code, _, _) = sh(&d, "hp", remount);
        assert_ne!(code, 0, "{remount}: the read-only flag is locked");
    }
    let (code, _, err) = sh(&d, "hp", "touch /mnt/ro/new");
    assert!(code != 0 && err.contains("Read-only file system"), "{code} {err}");
    assert!(!ro.join("new").exists());
    assert_eq!(sh_ok(&d, "hp", "cat /dev/host-ro/hello"), "read only");
    let (code, _, err) = sh(&d, "hp", "touch /dev/host-ro/new");
    assert!(code != 0 && err.contains("Read-only file system"), "{code} {err}");
    assert_eq!(sh_ok(&d, "hp", "cat /etc/motd-host"), "a single file");
    sh_ok(&d, "hp", "echo made inside > /mnt/shifted/new");
    let m = std::fs::metadata(shifted.join("new")).unwrap();
    assert_eq!(
        (m.uid(), m.gid()),
        (0, 0),
        "idmapped: the container's root is host root"
    );
    // Private by default: not shared in the container (its copy is a slave of the monitor's
    // mount, which receives nothing from the host).
    let propagation = sh_ok(&d, "hp", "grep ' /mnt/ro ' /proc/self/mountinfo");
    assert!(!propagation.contains("shared:"), "private by default: {propagation}");

    // A disk over a hot-plugged one's parent: the one below comes back on top of it.
    patch_devices(
        &d,
        "hp",
        json!({"outer": {"type": "disk", "source": outer, "path": "/mnt/hot"}}),
    );
    assert_eq!(
        sh_ok(&d, "hp", "cat /mnt/hot/outer /mnt/hot/rw/hello"),
        "outside\nfrom the host"
    );
    assert_eq!(hotplugged(&d, "hp").len(), 6, "one bind per disk, none left behind");

    // Nothing of it on the host.
    assert_eq!(mounted_under(&d.dir), before);

    // Removing devices (PUT without them) unmounts them inside at once.
    remove_devices(&d, "hp", &["rw", "ro", "file", "indev"]);
    for gone in ["/mnt/hot/rw", "/mnt/ro", "/etc/motd-host", "/dev/host-ro"] {
        assert!(!mounted_in(&d, "hp", gone), "{gone} is still mounted");
    }
    assert_eq!(sh_ok(&d, "hp", "ls -A /mnt/hot/rw"), "");
    assert_eq!(sh_ok(&d, "hp", "ls -A /mnt/ro"), "");
    assert_eq!(sh_ok(&d, "hp", "cat /etc/motd-host | wc -c"), "0");
    assert_eq!(sh_ok(&d, "hp", "cat /mnt/hot/outer"), "outside");
    remove_devices(&d, "hp", &["outer", "shifted"]);
    assert_eq!(
        container_mounts(&d, "hp"),
        at_start,
        "the container's mounts are as at start"
    );
    assert!(hotplugged(&d, "hp").is_empty());
    assert!(rw.join("hello").exists() && outer.join("outer").exists());

    // The container's root may unmount its copy of a disk (that only uncovers its own
    // rootfs): removing the device then has nothing left to do.
    patch_devices(
        &d,
        "hp",
        json!({"gone": {"type": "disk", "source": ro, "path": "/mnt/gone"}}),
    );
    sh_ok(&d, "hp", "umount /mnt/gone");
    remove_devices(&d, "hp", &["gone"]);
    assert!(hotplugged(&d, "hp").is_empty());

    // A privileged container: the same binds, without an idmap.
    create(&d, "hpp", json!({"security.privileged": "true"}), json!({}));
    start(&d, "hpp");
    patch_devices(
        &d,
        "hpp",
        json!({
            "ro": {"type": "disk", "source": ro, "path": "/mnt/ro", "readonly": "true"},
            "shifted": {"type": "disk", "source": shifted, "path": "/mnt/shifted", "shift": "true"},
        }),
    );
    assert_eq!(
        sh_ok(&d, "hpp", "stat -c %u /mnt/shifted/new; cat /mnt/ro/hello"),
        "0\nread only"
    );
    let (code, _, err) = sh(&d, "hpp", "touch /mnt/ro/new");
    assert!(code != 0 && err.contains("Read-only file system"), "{code} {err}");
    remove_devices(&d, "hpp", &["ro", "shifted"]);
    assert!(!mounted_in(&d, "hpp", "/mnt/ro") && !mounted_in(&d, "hpp", "/mnt/shifted"));
    stop(&d, "hpp");
    wait_unmounted(&d, "hpp");

    // Added again, then the container stops with them: nothing outlives it.
    patch_devices(
        &d,
        "hp",
        json!({"rw": {"type": "disk", "source": rw, "path": "/mnt/hot/rw"}}),
    );
    assert_eq!(sh_ok(&d, "hp", "cat /mnt/hot/rw/hello"), "from the host");
    stop(&d, "hp");
    wait_unmounted(&d, "hp");
    assert_eq!(mounted_under(&d.dir), before);
    // At the next start it is a disk like any other.
    start(&d, "hp");
    assert_eq!(sh_ok(&d, "hp", "cat /mnt/hot/rw/hello"), "from the host");
    stop(&d, "hp");
    wait_unmounted(&d, "hp");
    assert_eq!(mounted_under(&d.dir), before);
}

#[test]
fn a_custom_volume_is_hot_plugged_into_two_running_containers() {
    let test = "a_custom_volume_is_hot_plugged_into_two_running_containers";
    if skip_unless_root(test) {
        return;
    }
    let Some(image) = busybox_image(test) else {
        return;
    };
    let d = TestDaemon::start("disks-hotvol");
    d.import(&image, "busybox");
    let volume: PathBuf = d.dir.join("storage-pools/default/custom/shared");
    std::fs::create_dir_all(&volume).unwrap();
    let before = mounted_under(&d.dir);
    for name in ["w1", "w2"] {
        create(&d, name, json!({}), json!({}));
        start(&d, name);
        patch_devices(
            &d,
            name,
            json!({"data": {"type": "disk", "pool": "default", "source": "shared", "path": "/data"}}),
        );
    }
    sh_ok(
        &d,
        "w1",
        "echo from w1 > /data/note && touch /data/users && chown 1000:1000 /data/users",
    );
    assert_eq!(sh_ok(&d, "w2", "cat /data/note"), "from w1");
    assert_eq!(
        sh_ok(&d, "w2", "stat -c %u:%g /data/note /data/users"),
        "0:0\n1000:1000"
    );
    sh_ok(&d, "w2", "echo from w2 >> /data/note");
    assert_eq!(sh_ok(&d, "w1", "cat /data/note"), "from w1\nfrom w2");
    let m = std::fs::metadata(volume.join("note")).unwrap();
    assert_eq!((m.uid(), m.gid()), (0, 0), "stored unshifted");

    // Out of one, still in the other.
    remove_devices(&d, "w1", &["data"]);
    assert!(!mounted_in(&d, "w1", "/data"));
    assert_eq!(sh_ok(&d, "w1", "ls -A /data"), "");
    assert_eq!(sh_ok(&d, "w2", "cat /data/note"), "from w1\nfrom w2");
    assert_eq!(mounted_under(&d.dir), before);

    stop(&d, "w1");
    stop(&d, "w2");
    wait_unmounted(&d, "w1");
    wait_unmounted(&d, "w2");
    assert_eq!(mounted_under(&d.dir), before);
}

#[test]
fn bad_disks_on_a_running_container_are_refused_and_nothing_is_mounted() {
    let test = "bad_disks_on_a_running_container_are_refused_and_nothing_is_mounted";
    if skip_unless_root(test) {
        return;
    }
    let Some(image) = busybox_image(test) else {
        return;
    };
    let d = TestDaemon::start("disks-hotbad");
    d.import(&image, "busybox");
    let src = d.dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("hello"), "hi\n").unwrap();
    let before = mounted_under(&d.dir);
    create(
        &d,
        "rb",
        json!({}),
        json!({"early": {"type": "disk", "source": src, "path": "/mnt/early"}}),
    );
    start(&d, "rb");
    let at_start = container_mounts(&d, "rb");

    // Refused before anything: a missing source, a volume that does not exist.
    for (device, want) in [
        (
            json!({"type": "disk", "source": d.dir.join("nope"), "path": "/mnt/bad"}),
            "does not exist on the host",
        ),
        (
            json!({"type": "disk", "pool": "default", "source": "novol", "path": "/mnt/bad"}),
            "storage volume \"novol\" does not exist",
        ),
    ] {
        d.refused(
            "PATCH",
            "/1.0/instances/rb",
            Some(&json!({"devices": {"bad": device}}).to_string()),
            400,
            want,
        );
        assert!(d.get("/1.0/instances/rb")["devices"].get("bad").is_none());
    }
    assert_eq!(container_mounts(&d, "rb"), at_start);

    // Refused by the container's filesystem: a symlink planted on the way is not followed, and
    // nothing is made at its end.
    sh_ok(&d, "rb", "ln -s /etc /linked");
    d.refused(
        "PATCH",
        "/1.0/instances/rb",
        Some(&json!({"devices": {"bad": {"type": "disk", "source": src, "path": "/linked/sub"}}}).to_string()),
        400,
        "/linked in the container's rootfs is a symlink",
    );
    assert_eq!(container_mounts(&d, "rb"), at_start);
    assert!(
        d.get("/1.0/instances/rb")["devices"].get("bad").is_none(),
        "the refused device was saved"
    );
    assert_eq!(
        sh(&d, "rb", "test -e /etc/sub").0,
        1,
        "nothing made through the symlink"
    );
    // Under a mount of the container's own, which would hide it from the disk's propagation.
    sh_ok(&d, "rb", "mkdir -p /mnt/own && mount -t tmpfs own /mnt/own");
    let with_own = container_mounts(&d, "rb");
    d.refused(
        "PATCH",
        "/1.0/instances/rb",
        Some(&json!({"devices": {"bad": {"type": "disk", "source": src, "path": "/mnt/own/sub"}}}).to_string()),
        400,
        "has a mount of its own over /mnt/own/sub or one of its parents",
    );
    assert!(d.get("/1.0/instances/rb")["devices"].get("bad").is_none());
    assert_eq!(container_mounts(&d, "rb"), with_own);
    sh_ok(&d, "rb", "umount /mnt/own");
    // A file where a directory is mounted.
    sh_ok(&d, "rb", "touch /plainfile");
    d.refused(
        "PATCH",
        "/1.0/instances/rb",
        Some(&json!({"devices": {"bad2": {"type": "disk", "source": src, "path": "/plainfile"}}}).to_string()),
        400,
        "it is not a directory",
    );
    assert_eq!(container_mounts(&d, "rb"), at_start);
    // A change the container refused is not saved either, nor half applied: with a good disk
    // in the same change, the good one does not stay mounted.
    let ok_src = d.dir.join("ok-src");
    std::fs::create_dir_all(&ok_src).unwrap();
    d.refused(
        "PATCH",
        "/1.0/instances/rb",
        Some(
            &json!({"devices": {
                "good": {"type": "disk", "source": ok_src, "path": "/mnt/good"},
                "bad2": {"type": "disk", "source": src, "path": "/plainfile"}}})
            .to_string(),
        ),
        400,
        "it is not a directory",
    );
    let devices = d.get("/1.0/instances/rb")["devices"].clone();
    assert!(
        devices.get("bad2").is_none() && devices.get("good").is_none(),
        "{devices}"
    );
    assert!(
        !mounted_in(&d, "rb", "/mnt/good"),
        "the good half of a refused change stayed mounted"
    );

    // A disk mounted at start comes out live, as a hot-plugged one does; the path then shows
    // what the container's rootfs has there.
    remove_devices(&d, "rb", &["early"]);
    assert!(d.get("/1.0/instances/rb")["devices"].get("early").is_none());
    assert!(!mounted_in(&d, "rb", "/mnt/early"), "still mounted");
    assert_eq!(sh_ok(&d, "rb", "ls -A /mnt/early"), "");
    assert_eq!(mounted_under(&d.dir), before);
    patch_devices(
        &d,
        "rb",
        json!({"early": {"type": "disk", "source": src, "path": "/mnt/early"}}),
    );
    assert_eq!(sh_ok(&d, "rb", "cat /mnt/early/hello"), "hi");
    stop(&d, "rb");
    wait_unmounted(&d, "rb");
    // Removed while stopped, it is gone at the next start.
    remove_devices(&d, "rb", &["early"]);
    start(&d, "rb");
    assert!(!mounted_in(&d, "rb", "/mnt/early"), "gone at the next start");
    stop(&d, "rb");
    wait_unmounted(&d, "rb");
    assert_eq!(mounted_under(&d.dir), before);
}

#[test]
fn disks_mounted_at_start_come_out_live_and_keep_their_locks() {
    let test = "disks_mounted_at_start_come_out_live_and_keep_their_locks";
    if skip_unless_root(test) {
        return;
    }
    let Some(image) = busybox_image(test) else {
        return;
    };
    let d = TestDaemon::start("disks-live");
    d.import(&image, "busybox");
    let host = d.dir.join("host");
    let (outer, inner, ro) = (host.join("outer"), host.join("inner"), host.join("ro"));
    for dir in [&outer, &inner, &ro] {
        std::fs::create_dir_all(dir).unwrap();
        // World-writable, so that what stops a write is the mount, not the permissions.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    std::fs::write(outer.join("outer"), "outside\n").unwrap();
    std::fs::write(inner.join("inner"), "inside\n").unwrap();
    std::fs::write(ro.join("hello"), "read only\n").unwrap();
    let before = mounted_under(&d.dir);
    create(
        &d,
        "lv",
        json!({}),
        json!({
            "outer": {"type": "disk", "source": outer, "path": "/srv/outer"},
            "inner": {"type": "disk", "source": inner, "path": "/srv/outer/inner"},
            "ro": {"type": "disk", "source": ro, "path": "/srv/ro", "readonly": "true"},
        }),
    );
    // What the container's own rootfs has under the mount points.
    let rootfs = d.dir.join("storage-pools/default/containers/lv/rootfs");
    std::fs::create_dir_all(rootfs.join("srv/ro")).unwrap();
    std::fs::write(rootfs.join("srv/ro/from-rootfs"), "the rootfs's\n").unwrap();
    start(&d, "lv");
    let with_disks = container_mounts(&d, "lv");
    for m in ["/srv/outer", "/srv/outer/inner", "/srv/ro"] {
        assert!(with_disks.iter().any(|x| x == m), "{m} not mounted: {with_disks:?}");
    }
    assert_eq!(
        sh_ok(&d, "lv", "cat /srv/outer/outer /srv/outer/inner/inner /srv/ro/hello"),
        "outside\ninside\nread only"
    );

    // Read-only from start: locked.
    for remount in ["mount -o remount,bind,rw /srv/ro", "mount -o remount,rw /srv/ro"] {
        let (code, _, _) = sh(&d, "lv", remount);
        assert_ne!(code, 0, "{remount}: the read-only flag is locked");
    }
    let (code, _, err) = sh(&d, "lv", "touch /srv/ro/new");
    assert!(code != 0 && err.contains("Read-only file system"), "{code} {err}");
    assert!(!ro.join("new").exists());

    // Removed live (as a user does it): the rootfs's own content shows again, nothing is left
    // in the container.
    let out = d.corral(&["config", "device", "remove", "lv", "ro"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(d.get("/1.0/instances/lv")["devices"].get("ro").is_none());
    assert_eq!(sh_ok(&d, "lv", "ls -A /srv/ro"), "from-rootfs");
    assert!(!mounted_in(&d, "lv", "/srv/ro"));
    // And back, still locked.
    patch_devices(
        &d,
        "lv",
        json!({"ro": {"type": "disk", "source": ro, "path": "/srv/ro", "readonly": "true"}}),
    );
    assert_eq!(sh_ok(&d, "lv", "cat /srv/ro/hello"), "read only");
    let (code, _, _) = sh(&d, "lv", "mount -o remount,bind,rw /srv/ro");
    assert_ne!(code, 0, "the read-only flag of a disk added again is locked");

    // The outer disk of a nested pair: it comes out, the inner one stays (on the rootfs's
    // mount point, as it would at start without the outer one); then the inner one alone.
    remove_devices(&d, "lv", &["outer"]);
    let mounts = container_mounts(&d, "lv");
    assert!(!mounts.iter().any(|m| m == "/srv/outer"), "left over: {mounts:?}");
    assert_eq!(
        mounts.iter().filter(|m| *m == "/srv/outer/inner").count(),
        1,
        "{mounts:?}"
    );
    assert_eq!(sh_ok(&d, "lv", "ls -A /srv/outer"), "inner");
    assert_eq!(sh_ok(&d, "lv", "cat /srv/outer/inner/inner"), "inside");
    patch_devices(
        &d,
        "lv",
        json!({"outer": {"type": "disk", "source": outer, "path": "/srv/outer"}}),
    );
    assert_eq!(
        sh_ok(&d, "lv", "cat /srv/outer/outer /srv/outer/inner/inner"),
        "outside\ninside",
        "the disk inside came back with its parent"
    );
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(
        sorted(container_mounts(&d, "lv")),
        sorted(with_disks.clone()),
        "the same mounts as at start"
    );
    remove_devices(&d, "lv", &["inner"]);
    assert!(!mounted_in(&d, "lv", "/srv/outer/inner"));
    assert_eq!(sh_ok(&d, "lv", "cat /srv/outer/outer"), "outside");

    // A copy the container kept busy (something of its own mounted inside it) goes too.
    sh_ok(
        &d,
        "lv",
        "mkdir -p /srv/outer/inner && mount -t tmpfs own /srv/outer/inner",
    );
    remove_devices(&d, "lv", &["outer"]);
    let mounts = container_mounts(&d, "lv");
    assert!(
        !mounts.iter().any(|m| m == "/srv/outer"),
        "the disk stayed under the container's mount: {mounts:?}"
    );
    assert_eq!(mounted_under(&d.dir), before, "nothing on the host");

    // Stop and start: clean, and the disks come back as configured.
    stop(&d, "lv");
    wait_unmounted(&d, "lv");
    assert_eq!(mounted_under(&d.dir), before);
    start(&d, "lv");
    assert_eq!(sh_ok(&d, "lv", "cat /srv/ro/hello"), "read only");
    assert!(!mounted_in(&d, "lv", "/srv/outer"));
    stop(&d, "lv");
    wait_unmounted(&d, "lv");
    assert_eq!(mounted_under(&d.dir), before);
}
