//! Copy and move between two corrald, each in its own network namespace, joined by a veth pair
//! the test makes (10.77.N.1 and .2): pull and push modes, snapshots, --refresh, a running
//! source read from a frozen point-in-time copy, the `lxc` 5.0 client driving it, and a target
//! killed half-way (the source untouched, no half instance on the target after its restart).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use support::*;

/// Two daemons that reach each other over HTTPS, and a client that trusts both.
struct Pair {
    a: TestDaemon,
    b: TestDaemon,
    conf: PathBuf,
    subnet: u8,
}

impl Pair {
    fn new(tag: &str, subnet: u8) -> Pair {
        let a = TestDaemon::start(&format!("{tag}-a"));
        let b = TestDaemon::start(&format!("{tag}-b"));
        let (va, vb) = (
            format!("cm{}a{subnet}", std::process::id()),
            format!("cm{}b{subnet}", std::process::id()),
        );
        run(&["ip", "link", "add", &va, "type", "veth", "peer", "name", &vb]);
        run(&["ip", "link", "set", &va, "netns", &a.netns]);
        run(&["ip", "link", "set", &vb, "netns", &b.netns]);
        for (d, dev, host) in [(&a, &va, 1), (&b, &vb, 2)] {
            d.in_netns_ok(&["ip", "addr", "add", &format!("10.77.{subnet}.{host}/24"), "dev", dev]);
            d.in_netns_ok(&["ip", "link", "set", dev, "up"]);
            d.corral_ok(&[
                "config",
                "set",
                "core.https_address",
                &format!("10.77.{subnet}.{host}:8443"),
            ]);
        }
        let conf = std::env::temp_dir().join(format!("corral-migration-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&conf);
        std::fs::create_dir_all(&conf).unwrap();
        let p = Pair { a, b, conf, subnet };
        for (name, d) in [("h1", &p.a), ("h2", &p.b)] {
            let out = d.corral_ok(&["config", "trust", "add", "tester"]);
            p.corral_ok(&["remote", "add", name, out.lines().last().unwrap().trim()]);
        }
        p
    }

    /// The CLI with the pair's client configuration, in a's namespace (which reaches both).
    fn corral(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.a.netns))
            .arg(corral_cli())
            .args(args)
            .env("CORRAL_CONF", &self.conf)
            .env("CORRAL_DIR", self.conf.join("no-daemon"))
            .stdin(Stdio::null())
            .output()
            .expect("corral")
    }

    fn corral_ok(&self, args: &[&str]) -> String {
        let out = self.corral(args);
        assert!(
            out.status.success(),
            "corral {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn lxc_ok(&self, args: &[&str]) -> String {
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.a.netns))
            .arg("lxc")
            .args(args)
            .env("LXD_CONF", self.conf.join("lxc"))
            .env("LXD_DIR", self.conf.join("no-daemon"))
            .stdin(Stdio::null())
            .output()
            .expect("lxc");
        assert!(
            out.status.success(),
            "lxc {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.conf);
        let _ = self.subnet;
    }
}

fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A hash of a directory tree: every path with its type, mode, owner and size, and every
/// regular file's content.
fn tree_hash(dir: &Path) -> String {
    let script = "cd \"$1\" && { find . -printf '%p %y %m %U:%G %s %l\\n' | LC_ALL=C sort; \
                  find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum; } | sha256sum";
    sh_hash(script, dir)
}

/// The sha256 that `script` (a shell pipeline ending in sha256sum) prints for `dir` (its $1).
fn sh_hash(script: &str, dir: &Path) -> String {
    let out = Command::new("sh").args(["-c", script, "sh"]).arg(dir).output().unwrap();
    assert!(out.status.success(), "hashing {}", dir.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn volume(d: &TestDaemon, instance: &str) -> PathBuf {
    d.dir.join("storage-pools/default/containers").join(instance)
}

fn snapshot_volume(d: &TestDaemon, instance: &str, snap: &str) -> PathBuf {
    d.dir
        .join("storage-pools/default/containers-snapshots")
        .join(instance)
        .join(snap)
}

#[test]
fn copy_move_and_refresh_between_two_servers() {
    let test = "copy_move_and_refresh_between_two_servers";
    if skip_unless_root(test) {
        return;
    }
    let Some(image) = busybox_image(test) else { return };
    let p = Pair::new("mig-copy", 1);
    p.a.import(&image, "busybox");
    p.a.launch("c1", "busybox");
    p.a.sh("c1", "echo first > /root/note");
    p.corral_ok(&["snapshot", "h1:c1", "s0"]);
    p.a.sh("c1", "echo second > /root/note");
    p.corral_ok(&["stop", "h1:c1"]);

    // Pull (the default): h2 fetches from h1; snapshots come along.
    p.corral_ok(&["copy", "h1:c1", "h2:c1"]);
    assert_eq!(tree_hash(&volume(&p.a, "c1")), tree_hash(&volume(&p.b, "c1")));
    assert_eq!(
        tree_hash(&snapshot_volume(&p.a, "c1", "s0")),
        tree_hash(&snapshot_volume(&p.b, "c1", "s0"))
    );
    let snaps = p.b.get("/1.0/instances/c1/snapshots");
    assert_eq!(snaps, serde_json::json!(["/1.0/instances/c1/snapshots/s0"]));
    let copied = p.b.get("/1.0/instances/c1");
    assert_eq!(
        copied["config"]["volatile.uuid"],
        p.a.get("/1.0/instances/c1")["config"]["volatile.uuid"]
    );
    // It runs on h2 with the source's files.
    p.corral_ok(&["start", "h2:c1"]);
    assert_eq!(p.b.sh("c1", "cat /root/note").1.trim(), "second");
    p.corral_ok(&["stop", "h2:c1"]);
    // Already there: refused, unless refreshing.
    let out = p.corral(&["copy", "h1:c1", "h2:c1"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already exists"),
        "{out:?}"
    );

    // --refresh: the new snapshot and the instance's changes (new, changed and removed files);
    // what did not change is not sent again (the target's file keeps its inode).
    use std::os::unix::fs::MetadataExt;
    let busybox_on_b = volume(&p.b, "c1").join("rootfs/bin/busybox");
    let inode = std::fs::metadata(&busybox_on_b).unwrap().ino();
    p.corral_ok(&["start", "h1:c1"]);
    p.a.sh(
        "c1",
        "echo third > /root/note2; rm /root/note; echo extra > /root/extra",
    );
    p.corral_ok(&["snapshot", "h1:c1", "s1"]);
    p.a.sh("c1", "echo after > /root/extra");
    p.corral_ok(&["stop", "h1:c1"]);
    p.corral_ok(&["copy", "h1:c1", "h2:c1", "--refresh"]);
    assert_eq!(tree_hash(&volume(&p.a, "c1")), tree_hash(&volume(&p.b, "c1")));
    assert_eq!(
        std::fs::metadata(&busybox_on_b).unwrap().ino(),
        inode,
        "an unchanged file is not sent again"
    );
    assert!(!volume(&p.b, "c1").join("rootfs/root/note").exists());
    assert_eq!(
        tree_hash(&snapshot_volume(&p.a, "c1", "s1")),
        tree_hash(&snapshot_volume(&p.b, "c1", "s1"))
    );
    assert_eq!(p.b.get("/1.0/instances/c1/snapshots").as_array().unwrap().len(), 2);

    // Push mode, instance only, another name and a config key set on the way.
    p.corral_ok(&[
        "copy",
        "h1:c1",
        "h2:c2",
        "--mode",
        "push",
        "--instance-only",
        "-c",
        "user.origin=h1",
    ]);
    assert_eq!(tree_hash(&volume(&p.a, "c1")), tree_hash(&volume(&p.b, "c2")));
    assert_eq!(p.b.get("/1.0/instances/c2/snapshots"), serde_json::json!([]));
    assert_eq!(p.b.get("/1.0/instances/c2")["config"]["user.origin"], "h1");

    // Relay: this client carries the data between two servers that never talk to each other.
    p.corral_ok(&["copy", "h1:c1", "h2:c4", "--mode", "relay"]);
    assert_eq!(tree_hash(&volume(&p.a, "c1")), tree_hash(&volume(&p.b, "c4")));
    assert_eq!(p.b.get("/1.0/instances/c4/snapshots").as_array().unwrap().len(), 2);

    // Move: gone from h1, on h2 under its new name.
    let before = tree_hash(&volume(&p.a, "c1"));
    p.corral_ok(&["move", "h1:c1", "h2:c3"]);
    assert_eq!(p.a.request("GET", "/1.0/instances/c1", None).0, 404);
    assert!(!volume(&p.a, "c1").exists(), "the source's volume is gone after a move");
    assert_eq!(tree_hash(&volume(&p.b, "c3")), before);
}

#[test]
fn a_running_source_is_copied_from_a_frozen_copy_and_lxc_drives_a_copy() {
    let test = "a_running_source_is_copied_from_a_frozen_copy_and_lxc_drives_a_copy";
    if skip_unless_root(test) || skip_unless_lxc(test) {
        return;
    }
    let Some(image) = busybox_image(test) else { return };
    let p = Pair::new("mig-live", 2);
    p.a.import(&image, "busybox");
    p.a.launch("web", "busybox");
    p.a.sh("web", "echo served > /root/index.html");
    p.corral_ok(&["copy", "h1:web", "h2:web"]);
    assert_eq!(
        p.a.get("/1.0/instances/web")["status"],
        "Running",
        "the source keeps running"
    );
    assert!(
        !p.a.dir.join("storage-pools/default/containers-snapshots/web").exists()
            || std::fs::read_dir(p.a.dir.join("storage-pools/default/containers-snapshots/web"))
                .unwrap()
                .next()
                .is_none(),
        "the point-in-time copy is removed"
    );
    p.corral_ok(&["start", "h2:web"]);
    assert_eq!(p.b.sh("web", "cat /root/index.html").1.trim(), "served");

    // --stateless: stopped, moved and started again on the target (without it, it moves live).
    p.corral_ok(&["move", "h1:web", "h2:web2", "--stateless"]);
    assert_eq!(p.b.get("/1.0/instances/web2")["status"], "Running");
    assert_eq!(p.a.request("GET", "/1.0/instances/web", None).0, 404);

    // The lxc 5.0 client copies between two corrald.
    for (name, d) in [("h1", &p.a), ("h2", &p.b)] {
        let out = d.corral_ok(&["config", "trust", "add", "lxc"]);
        p.lxc_ok(&["remote", "add", name, out.lines().last().unwrap().trim()]);
    }
    p.a.launch("app", "busybox");
    p.lxc_ok(&["stop", "h1:app"]);
    p.lxc_ok(&["copy", "h1:app", "h2:app"]);
    assert_eq!(tree_hash(&volume(&p.a, "app")), tree_hash(&volume(&p.b, "app")));
    p.lxc_ok(&["start", "h2:app"]);
    let list = p.lxc_ok(&["list", "h2:", "-c", "ns", "--format", "csv"]);
    assert!(list.contains("app,RUNNING"), "{list}");
}

#[test]
fn a_target_killed_half_way_leaves_the_source_running_and_nothing_behind() {
    let test = "a_target_killed_half_way_leaves_the_source_running_and_nothing_behind";
    if skip_unless_root(test) {
        return;
    }
    let Some(image) = busybox_image(test) else { return };
    let mut p = Pair::new("mig-kill", 3);
    p.a.import(&image, "busybox");
    p.a.launch("big", "busybox");
    // Enough data that the transfer is still going when the target dies.
    p.a.sh(
        "big",
        "dd if=/dev/urandom of=/root/blob bs=1M count=300 2>/dev/null; echo done",
    );
    let before = tree_hash(&volume(&p.a, "big"));
    let copy = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", p.a.netns))
        .arg(corral_cli())
        .args(["copy", "h1:big", "h2:big"])
        .env("CORRAL_CONF", &p.conf)
        .env("CORRAL_DIR", p.conf.join("no-daemon"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let target_volume = volume(&p.b, "big");
    wait_for(Duration::from_secs(30), || {
        let size = Command::new("du").args(["-sm"]).arg(&target_volume).output().ok()?;
        let mb: u64 = String::from_utf8_lossy(&size.stdout)
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        (mb > 20).then_some(())
    })
    .expect("the transfer started");
    p.b.crash();
    let out = copy.wait_with_output().unwrap();
    assert!(!out.status.success(), "the copy reports the failure");
    // The source runs as before, its files untouched and no point-in-time copy left.
    assert_eq!(p.a.get("/1.0/instances/big")["status"], "Running");
    assert_eq!(p.a.sh("big", "echo alive").1.trim(), "alive");
    let frozen_left = std::fs::read_dir(p.a.dir.join("storage-pools/default/containers-snapshots/big"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(frozen_left, 0, "the point-in-time copy is removed after the failure");
    p.corral_ok(&["stop", "h1:big"]);
    assert_eq!(tree_hash(&volume(&p.a, "big")), before);
    // The target, restarted, has no trace of it.
    p.b.spawn();
    assert_eq!(p.b.request("GET", "/1.0/instances/big", None).0, 404);
    assert!(
        !target_volume.exists(),
        "the half-received volume is removed at start-up"
    );
}

#[test]
fn a_source_killed_half_way_leaves_no_half_instance_on_the_target() {
    let test = "a_source_killed_half_way_leaves_no_half_instance_on_the_target";
    if skip_unless_root(test) {
        return;
    }
    let Some(image) = busybox_image(test) else { return };
    let mut p = Pair::new("mig-srckill", 6);
    p.a.import(&image, "busybox");
    p.a.launch("big", "busybox");
    p.a.sh(
        "big",
        "dd if=/dev/urandom of=/root/blob bs=1M count=300 2>/dev/null; echo done",
    );
    p.corral_ok(&["stop", "h1:big"]);
    let copy = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", p.a.netns))
        .arg(corral_cli())
        .args(["copy", "h1:big", "h2:big"])
        .env("CORRAL_CONF", &p.conf)
        .env("CORRAL_DIR", p.conf.join("no-daemon"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let target_volume = volume(&p.b, "big");
    wait_for(Duration::from_secs(30), || {
        let size = Command::new("du").args(["-sm"]).arg(&target_volume).output().ok()?;
        let mb: u64 = String::from_utf8_lossy(&size.stdout)
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        (mb > 20).then_some(())
    })
    .expect("the transfer started");
    p.a.crash();
    let out = copy.wait_with_output().unwrap();
    assert!(!out.status.success(), "the copy reports the failure");
    // The target notices the broken transfer and removes what it had received.
    let gone = wait_for(Duration::from_secs(30), || (!target_volume.exists()).then_some(()));
    assert!(gone.is_some(), "the half-received volume is removed");
    assert_eq!(p.b.request("GET", "/1.0/instances/big", None).0, 404);
    // The source, restarted, still has its instance as it was.
    p.a.spawn();
    assert_eq!(p.a.get("/1.0/instances/big")["status"], "Stopped");
    assert!(volume(&p.a, "big").join("rootfs/root/blob").exists());
}

#[test]
fn btrfs_pools_send_their_volumes_as_btrfs_streams() {
    let test = "btrfs_pools_send_their_volumes_as_btrfs_streams";
    if skip_unless_root(test) {
        return;
    }
    let Some(image) = busybox_image(test) else { return };
    let p = Pair::new("mig-btrfs", 7);
    for d in [&p.a, &p.b] {
        d.ok(
            "POST",
            "/1.0/storage-pools",
            r#"{"name":"fast","driver":"btrfs","config":{"size":"1GiB"}}"#,
            201,
        );
    }
    p.a.import(&image, "busybox");
    let body = r#"{"name":"b1","source":{"type":"image","alias":"busybox"},"profiles":[],
                   "devices":{"root":{"type":"disk","path":"/","pool":"fast"}}}"#;
    p.a.op_ok("POST", "/1.0/instances", body);
    p.a.op_ok("PUT", "/1.0/instances/b1/state", r#"{"action":"start"}"#);
    p.a.sh(
        "b1",
        "echo one > /root/note; dd if=/dev/urandom of=/root/big bs=1M count=16 2>/dev/null",
    );
    p.corral_ok(&["snapshot", "h1:b1", "s0"]);
    p.a.sh("b1", "echo two > /root/note; echo more > /root/more");
    p.corral_ok(&["snapshot", "h1:b1", "s1"]);
    p.a.sh("b1", "rm /root/more; echo three > /root/note");
    p.corral_ok(&["stop", "h1:b1"]);
    p.corral_ok(&["copy", "h1:b1", "h2:b1", "--storage", "fast"]);

    let (ra, rb) = (p.a.dir.join("storage-pools/fast"), p.b.dir.join("storage-pools/fast"));
    for (va, vb) in [
        (ra.join("containers/b1"), rb.join("containers/b1")),
        (
            ra.join("containers-snapshots/b1/s0"),
            rb.join("containers-snapshots/b1/s0"),
        ),
        (
            ra.join("containers-snapshots/b1/s1"),
            rb.join("containers-snapshots/b1/s1"),
        ),
    ] {
        assert!(is_subvolume(&vb), "{} is a received subvolume", vb.display());
        assert_eq!(tree_hash(&va), tree_hash(&vb), "{}", vb.display());
    }
    // Nothing of the transfer is left on either side.
    let leftovers = |root: &Path| {
        std::fs::read_dir(root)
            .unwrap()
            .flatten()
            .chain(
                std::fs::read_dir(root.join("containers-snapshots/b1"))
                    .unwrap()
                    .flatten(),
            )
            .filter(|e| e.file_name().to_string_lossy().starts_with(".migration"))
            .count()
    };
    assert_eq!((leftovers(&ra), leftovers(&rb)), (0, 0));
    // The copy is a working, writable instance with its snapshots.
    p.corral_ok(&["start", "h2:b1"]);
    assert_eq!(
        p.b.sh("b1", "cat /root/note; echo x > /root/new && echo writable").1,
        "three\nwritable\n"
    );
    p.corral_ok(&["stop", "h2:b1"]);
    p.corral_ok(&["restore", "h2:b1", "s0"]);
    p.corral_ok(&["start", "h2:b1"]);
    assert_eq!(p.b.sh("b1", "cat /root/note").1.trim(), "one");
    p.corral_ok(&["stop", "h2:b1"]);

    // --refresh between btrfs pools: only the new snapshot and what changed since the newest
    // snapshot both have, as incremental btrfs streams; the copy on h2 becomes the source's
    // again (its own change since the restore is gone).
    p.corral_ok(&["start", "h1:b1"]);
    p.a.sh("b1", "echo four > /root/note; echo new > /root/new2");
    p.corral_ok(&["snapshot", "h1:b1", "s2"]);
    p.a.sh("b1", "echo five > /root/note; rm /root/new2");
    p.corral_ok(&["stop", "h1:b1"]);
    p.corral_ok(&["copy", "h1:b1", "h2:b1", "--refresh"]);
    for (va, vb) in [
        (ra.join("containers/b1"), rb.join("containers/b1")),
        (
            ra.join("containers-snapshots/b1/s2"),
            rb.join("containers-snapshots/b1/s2"),
        ),
        (
            ra.join("containers-snapshots/b1/s0"),
            rb.join("containers-snapshots/b1/s0"),
        ),
    ] {
        assert_eq!(tree_hash(&va), tree_hash(&vb), "{} after the refresh", vb.display());
    }
    assert!(is_subvolume(&rb.join("containers-snapshots/b1/s2")));
    assert_eq!(p.b.get("/1.0/instances/b1/snapshots").as_array().unwrap().len(), 3);
    assert_eq!(leftovers(&rb), 0);
    let received = btrfs_receives(&p.b);
    assert_eq!(
        received.iter().map(|r| r.0).collect::<Vec<_>>(),
        [false, true],
        "a full copy, then a refresh, both as btrfs streams: {received:?}"
    );
    assert_eq!(
        btrfs_receive_lines(&p.b)[0].field("on_image"),
        "false",
        "h2 has no busybox image: the copy went whole"
    );
    let (full, refresh) = (received[0].1, received[1].1);
    eprintln!("FIGURES btrfs copy with snapshots {full} bytes, refresh {refresh} bytes");
    assert!(full > 16 << 20, "the first copy carried the 16 MiB file: {full}");
    assert!(
        refresh * 50 < full,
        "the refresh sent only what changed: {refresh} bytes, against {full} for the copy"
    );
    p.corral_ok(&["start", "h2:b1"]);
    assert_eq!(
        p.b.sh("b1", "cat /root/note; ls /root; echo x > /root/x && echo writable")
            .1,
        "five\nbig\nnote\nwritable\n"
    );
    p.corral_ok(&["stop", "h2:b1"]);
}

/// As [`tree_hash`], with every path's link count, and under rootfs/ every mtime and xattr.
fn tree_hash_with_times_and_xattrs(dir: &Path) -> String {
    let script = "cd \"$1\" && { find . -printf '%p %y %m %U:%G %s %l %n\\n' | LC_ALL=C sort; \
                  find rootfs -printf '%p %T@\\n' | LC_ALL=C sort; \
                  find rootfs -print0 | LC_ALL=C sort -z | xargs -0 getfattr -h -d -m - --absolute-names 2>/dev/null; \
                  find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum; } | sha256sum";
    sh_hash(script, dir)
}

#[test]
fn a_btrfs_copy_to_a_server_with_the_same_image_sends_only_the_difference() {
    let test = "a_btrfs_copy_to_a_server_with_the_same_image_sends_only_the_difference";
    if skip_unless_root(test) {
        return;
    }
    let Some(image) = busybox_image(test) else { return };
    let p = Pair::new("mig-base", 13);
    let on_fast = |name: &str| {
        format!(
            r#"{{"name":"{name}","source":{{"type":"image","alias":"busybox"}},"profiles":[],
                 "devices":{{"root":{{"type":"disk","path":"/","pool":"fast"}}}}}}"#
        )
    };
    for d in [&p.a, &p.b] {
        d.ok(
            "POST",
            "/1.0/storage-pools",
            r#"{"name":"fast","driver":"btrfs","config":{"size":"1GiB"}}"#,
            201,
        );
        d.import(&image, "busybox");
    }
    // h2's pool gets the image's volume (as a launch there would leave it).
    p.b.op_ok("POST", "/1.0/instances", &on_fast("seed"));
    p.b.op_ok("DELETE", "/1.0/instances/seed", "");

    // On h1, an instance of the image, changed in every way a file can be: removed, rewritten,
    // added, renamed, linked, owners, modes and xattrs changed; a snapshot half-way.
    p.a.op_ok("POST", "/1.0/instances", &on_fast("b1"));
    p.a.op_ok("PUT", "/1.0/instances/b1/state", r#"{"action":"start"}"#);
    p.a.sh(
        "b1",
        "rm /etc/hostname; echo extra:x:1234:1234::/:/bin/sh >> /etc/passwd; \
         dd if=/dev/urandom of=/root/big bs=64k count=16 2>/dev/null; mkdir -p /srv/d; \
         mv /etc/resolv.conf /srv/d/resolv; ln /etc/group /srv/d/group-link; ln -s /root/big /srv/big-link",
    );
    p.corral_ok(&["snapshot", "h1:b1", "s0"]);
    p.a.sh(
        "b1",
        "chown 1234:1234 /etc/shadow; chmod 0604 /etc/inittab; rm /srv/d/group-link; \
         echo changed > /root/note; truncate -s 100 /root/big",
    );
    p.corral_ok(&["stop", "h1:b1"]);
    let (ra, rb) = (p.a.dir.join("storage-pools/fast"), p.b.dir.join("storage-pools/fast"));
    let rootfs = ra.join("containers/b1/rootfs");
    // xattrs (as the container's root would set them, here from the host).
    run(&[
        "setfattr",
        "-n",
        "user.mark",
        "-v",
        "one",
        rootfs.join("etc/passwd").to_str().unwrap(),
    ]);
    run(&[
        "setfattr",
        "-n",
        "user.mark",
        "-v",
        "two",
        rootfs.join("bin").to_str().unwrap(),
    ]);

    p.corral_ok(&["copy", "h1:b1", "h2:b1", "--storage", "fast"]);
    for (va, vb) in [
        (ra.join("containers/b1"), rb.join("containers/b1")),
        (
            ra.join("containers-snapshots/b1/s0"),
            rb.join("containers-snapshots/b1/s0"),
        ),
    ] {
        assert!(is_subvolume(&vb), "{} is a received subvolume", vb.display());
        assert_eq!(
            tree_hash_with_times_and_xattrs(&va),
            tree_hash_with_times_and_xattrs(&vb),
            "{}",
            vb.display()
        );
    }
    let lines = btrfs_receive_lines(&p.b);
    assert_eq!(lines.len(), 1);
    assert_eq!(
        lines[0].field("on_image"),
        "true",
        "h2 has the image: only the difference came"
    );
    let bytes: u64 = lines[0].field("bytes").parse().unwrap();
    eprintln!("FIGURES btrfs copy on the image both have: {bytes} bytes");
    // The image is some 2 MB, the snapshot's additions 1 MiB: only those travelled.
    assert!(bytes < 1_500_000, "only the difference travelled: {bytes} bytes");
    // Nothing of the transfer is left on either side.
    let leftovers = |root: &Path| {
        std::fs::read_dir(root)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".migration"))
            .count()
    };
    assert_eq!((leftovers(&ra), leftovers(&rb)), (0, 0));
    // The copy runs, writable, without what was removed on h1 (which h2's image has).
    p.corral_ok(&["start", "h2:b1"]);
    assert_eq!(
        p.b.sh(
            "b1",
            "cat /root/note; ls /etc/hostname 2>&1 >/dev/null | grep -c 'No such'; stat -c %u /etc/shadow; \
             echo x > /root/x && echo writable"
        )
        .1,
        "changed\n1\n1234\nwritable\n"
    );
    p.corral_ok(&["stop", "h2:b1"]);
    p.corral_ok(&["restore", "h2:b1", "s0"]);
    p.corral_ok(&["start", "h2:b1"]);
    assert_eq!(p.b.sh("b1", "cat /root/note 2>/dev/null || echo none").1.trim(), "none");
    p.corral_ok(&["stop", "h2:b1"]);
}

/// The btrfs receives a daemon logged: (refresh, bytes), oldest first.
fn btrfs_receives(d: &TestDaemon) -> Vec<(bool, u64)> {
    btrfs_receive_lines(d)
        .iter()
        .map(|l| (l.field("refresh") == "true", l.field("bytes").parse().unwrap_or(0)))
        .collect()
}

/// A daemon's log line, its `key=value` fields readable.
struct LogLine(String);

impl LogLine {
    fn field(&self, key: &str) -> String {
        let prefix = format!("{key}=");
        self.0
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&prefix))
            .unwrap_or_default()
            .to_string()
    }
}

/// The "received as btrfs streams" lines a daemon logged, oldest first.
fn btrfs_receive_lines(d: &TestDaemon) -> Vec<LogLine> {
    let log = std::fs::read_to_string(daemon_log_path(&d.dir)).unwrap_or_default();
    let plain = |l: &str| {
        let mut out = String::new();
        let mut chars = l.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                for c in chars.by_ref() {
                    if c == 'm' {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    };
    log.lines()
        .filter(|l| l.contains("received as btrfs streams"))
        .map(|l| LogLine(plain(l)))
        .collect()
}

/// Init's extra line for the live move: a counter whose count lives only in the shell's memory,
/// written with a token drawn at its start, every 100 ms; in init's tree, so in the checkpoint.
const COUNTER_INITTAB: &str = "::sysinit:/etc/init.d/rcS
::sysinit:/bin/sh -c 'echo boot >> /boots'
::once:/bin/sh -c 'tok=$RANDOM$RANDOM; i=0; while :; do i=$((i+1)); echo \"$tok $i\" >> /count; sleep 0.1; done'
::respawn:-/bin/sh
";

/// The counter's last line: (token, count).
fn last_count(d: &TestDaemon, name: &str) -> Option<(String, u64)> {
    let a = d.call(
        "GET",
        &format!("/1.0/instances/{name}/files?path=/count"),
        &[],
        Body::None,
    );
    let text = String::from_utf8_lossy(&a.body).into_owned();
    let line = text.lines().rev().find(|l| l.split_whitespace().count() == 2)?;
    let mut f = line.split_whitespace();
    Some((f.next()?.to_string(), f.next()?.parse().ok()?))
}

#[test]
fn a_running_container_moves_live_and_keeps_counting() {
    let test = "a_running_container_moves_live_and_keeps_counting";
    if skip_unless_root(test) {
        return;
    }
    let Some(image) = busybox_image(test) else { return };
    if skip_unless_criu(test) {
        return;
    }
    let p = Pair::new("mig-livemove", 4);
    p.a.import(&image, "busybox");
    for d in [&p.a, &p.b] {
        let net = r#"{"name":"ctbr","type":"bridge","config":{"ipv4.address":"10.251.44.1/24","ipv6.address":"none","ipv4.nat":"false"}}"#;
        d.ok("POST", "/1.0/networks", net, 201);
    }
    p.a.start_busybox_on_ctbr("counter", "{}", &[("/etc/inittab", COUNTER_INITTAB.as_bytes())]);
    let (token, before) = wait_for(Duration::from_secs(20), || {
        last_count(&p.a, "counter").filter(|c| c.1 >= 10)
    })
    .expect("the counter counts");
    let hwaddr = p.a.get("/1.0/instances/counter")["config"]["volatile.eth0.hwaddr"].clone();

    // Pre-copy asked for: this kernel has no soft-dirty tracking, which the move says.
    p.a.corral_ok(&["config", "set", "counter", "migration.incremental.memory=true"]);
    let out = p.corral(&["move", "h1:counter", "h2:counter"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "live move: {err}");
    assert!(err.contains("paused for"), "the downtime is reported: {err}");
    assert!(
        err.contains("soft-dirty") || err.contains("not implemented"),
        "pre-copy's fallback is said: {err}"
    );
    assert_eq!(
        p.a.request("GET", "/1.0/instances/counter", None).0,
        404,
        "gone from the source"
    );
    let moved = p.b.get("/1.0/instances/counter");
    assert_eq!(moved["status"], "Running");
    assert_eq!(moved["config"]["volatile.eth0.hwaddr"], hwaddr, "the NIC keeps its MAC");
    // The same process goes on counting from where it was, on the target.
    let (tok2, after) = wait_for(Duration::from_secs(20), || {
        last_count(&p.b, "counter").filter(|c| c.1 >= before + 10)
    })
    .expect("the counter goes on counting on the target");
    assert_eq!(tok2, token, "the counter was not restarted (its memory came along)");
    assert!(after > before);
    let boots =
        p.b.call("GET", "/1.0/instances/counter/files?path=/boots", &[], Body::None);
    assert_eq!(
        String::from_utf8_lossy(&boots.body).lines().count(),
        1,
        "no second boot"
    );
}

#[test]
fn a_debian_systemd_container_moves_live() {
    let test = "a_debian_systemd_container_moves_live";
    if skip_unless_root(test) {
        return;
    }
    let Some(tarball) = packed_image(test, "bookworm") else {
        return;
    };
    if skip_unless_criu(test) {
        return;
    }
    let p = Pair::new("mig-deb", 5);
    p.a.import(&tarball, "debian");
    // On a managed bridge on both sides, its address from networkd's DHCP client.
    for d in [&p.a, &p.b] {
        let net = r#"{"name":"debbr","type":"bridge","config":{"ipv4.address":"10.251.45.1/24","ipv6.address":"none","ipv4.nat":"false"}}"#;
        d.ok("POST", "/1.0/networks", net, 201);
    }
    // migration.stateful: systemd's services get no private hostname or network namespace
    // (CRIU needs that).
    let body = r#"{"name":"deb","source":{"type":"image","alias":"debian"},
                   "config":{"migration.stateful":"true","limits.memory":"512MiB"},
                   "devices":{"eth0":{"type":"nic","network":"debbr","name":"eth0"}}}"#;
    p.a.op_ok("POST", "/1.0/instances", body);
    p.a.op_ok("PUT", "/1.0/instances/deb/state", r#"{"action":"start"}"#);
    let up = wait_for(Duration::from_secs(90), || {
        let out = p.a.corral(&["exec", "deb", "--", "systemctl", "is-system-running"]);
        let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
        matches!(s.as_str(), "running" | "degraded").then_some(s)
    });
    assert!(up.is_some(), "systemd never came up");
    // A transient unit counting in a shell variable: systemd's child, so in the checkpoint.
    // (A script file: systemd-run would expand the `$`s of a command line itself.)
    let script = "tok=$$$(date +%N); i=0\nwhile :; do i=$((i+1)); echo \"$tok $i\" >> /count; sleep 0.1; done\n";
    let a = p.a.call(
        "POST",
        "/1.0/instances/deb/files?path=/counter.sh",
        &[],
        Body::Bytes(script.as_bytes()),
    );
    assert_eq!(a.code, 200, "{}", a.error());
    p.a.corral_ok(&[
        "exec",
        "deb",
        "--",
        "systemd-run",
        "--unit",
        "counter",
        "/bin/sh",
        "/counter.sh",
    ]);
    let (token, before) = wait_for(Duration::from_secs(20), || {
        last_count(&p.a, "deb").filter(|c| c.1 >= 10)
    })
    .expect("the counter counts");

    let out = p.corral(&["move", "h1:deb", "h2:deb"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "live move: {err}");
    eprintln!("{err}");
    assert_eq!(p.b.get("/1.0/instances/deb")["status"], "Running");
    let (tok2, _) = wait_for(Duration::from_secs(20), || {
        last_count(&p.b, "deb").filter(|c| c.1 >= before + 10)
    })
    .expect("the counter goes on on the target");
    assert_eq!(tok2, token, "the same counter, with its memory");
    let out =
        p.b.corral_ok(&["exec", "deb", "--", "systemctl", "is-active", "counter"]);
    assert_eq!(out.trim(), "active");
    let pid1 = p.b.corral_ok(&["exec", "deb", "--", "cat", "/proc/1/comm"]);
    assert_eq!(pid1.trim(), "systemd");
    // Its address came along and the bridge on the target answers it.
    let addr =
        p.b.corral_ok(&["exec", "deb", "--", "ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
    assert!(addr.contains("10.251.45."), "{addr}");
    p.b.corral_ok(&["exec", "deb", "--", "ping", "-c1", "-W2", "10.251.45.1"]);
    p.b.corral_ok(&["stop", "deb"]);
}

/// A Debian systemd container stopped with its state and moved to the other server starts there
/// from that state, its source's files gone by then: every inotify watch of systemd (each
/// unit's cgroup.events, /etc/localtime) comes back by path, none by the source's file handle.
#[test]
fn a_stateful_debian_container_moved_away_starts_from_its_state_there() {
    let test = "a_stateful_debian_container_moved_away_starts_from_its_state_there";
    if skip_unless_root(test) {
        return;
    }
    let Some(tarball) = packed_image(test, "bookworm") else {
        return;
    };
    if skip_unless_criu(test) {
        return;
    }
    let p = Pair::new("mig-debst", 11);
    p.a.import(&tarball, "debian");
    let body = r#"{"name":"deb","source":{"type":"image","alias":"debian"},
                   "config":{"migration.stateful":"true","limits.memory":"512MiB"}}"#;
    p.a.op_ok("POST", "/1.0/instances", body);
    p.a.op_ok("PUT", "/1.0/instances/deb/state", r#"{"action":"start"}"#);
    let up = wait_for(Duration::from_secs(90), || {
        let out = p.a.corral(&["exec", "deb", "--", "systemctl", "is-system-running"]);
        let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
        matches!(s.as_str(), "running" | "degraded").then_some(s)
    });
    assert!(up.is_some(), "systemd never came up");
    let script = "tok=$$$(date +%N); i=0\nwhile :; do i=$((i+1)); echo \"$tok $i\" >> /count; sleep 0.1; done\n";
    let a = p.a.call(
        "POST",
        "/1.0/instances/deb/files?path=/counter.sh",
        &[],
        Body::Bytes(script.as_bytes()),
    );
    assert_eq!(a.code, 200, "{}", a.error());
    p.a.corral_ok(&[
        "exec",
        "deb",
        "--",
        "systemd-run",
        "--unit",
        "counter",
        "/bin/sh",
        "/counter.sh",
    ]);
    let (token, _) =
        wait_for(Duration::from_secs(20), || last_count(&p.a, "deb").filter(|c| c.1 >= 5)).expect("the counter counts");
    p.a.corral_ok(&["stop", "--stateful", "deb"]);
    let (_, stopped_at) = last_count(&p.a, "deb").expect("the count at the stop");
    p.corral_ok(&["move", "h1:deb", "h2:deb"]);
    assert!(!volume(&p.a, "deb").exists(), "the source's volume is gone");
    let out = p.b.corral(&["start", "deb"]);
    assert!(
        out.status.success(),
        "start from the moved state: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (tok2, _) = wait_for(Duration::from_secs(20), || {
        last_count(&p.b, "deb").filter(|c| c.1 >= stopped_at + 5)
    })
    .expect("the counter goes on on the target");
    assert_eq!(tok2, token, "the same counter, with its memory");
    let out =
        p.b.corral_ok(&["exec", "deb", "--", "systemctl", "is-active", "counter"]);
    assert_eq!(out.trim(), "active");
    // systemd follows its units' cgroups there: a unit started now runs and is seen ending.
    p.b.corral_ok(&[
        "exec",
        "deb",
        "--",
        "systemd-run",
        "--wait",
        "--unit",
        "after",
        "/bin/true",
    ]);
    p.b.corral_ok(&["stop", "deb"]);
}

/// A TCP echo server and its client, both inside the container, over the container's eth0
/// address: the client sends `token i` every 100 ms and writes what comes back to /echo. The
/// client (nc) exits if its connection breaks, and /broken says so. Started by init (in the
/// checkpoint).
const TCP_SCRIPT: &str = r#"#!/bin/sh
ip=
while [ -z "$ip" ]; do
    ip=$(ip -4 -o addr show dev eth0 | awk '{print $4}' | cut -d/ -f1)
    [ -n "$ip" ] || sleep 0.2
done
nc -l -p 5555 -e /bin/cat &
sleep 0.5
tok=$RANDOM$RANDOM
(i=0; while :; do i=$((i+1)); echo "$tok $i"; sleep 0.1; done) \
    | sh -c 'echo $$ > /client.pid; exec nc "$1" 5555' sh "$ip" > /echo
echo "broken $?" >> /broken
"#;

/// The echoed lines of /echo: (token, count).
fn echoes(d: &TestDaemon, name: &str) -> Vec<(String, u64)> {
    let a = d.call(
        "GET",
        &format!("/1.0/instances/{name}/files?path=/echo"),
        &[],
        Body::None,
    );
    String::from_utf8_lossy(&a.body)
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.to_string(), f.next()?.parse().ok()?))
        })
        .collect()
}

/// Launches `name` with the TCP pair (and a bridged eth0 on `ctbr`) on `d`, and waits for it
/// to exchange; returns (token, client pid).
fn launch_tcp_pair(d: &TestDaemon, name: &str, config: serde_json::Value) -> (String, String) {
    let inittab = format!("{COUNTER_INITTAB}::once:/bin/sh /tcp.sh\n");
    d.start_busybox_on_ctbr(
        name,
        &config.to_string(),
        &[("/tcp.sh", TCP_SCRIPT.as_bytes()), ("/etc/inittab", inittab.as_bytes())],
    );
    let tok = wait_for(Duration::from_secs(30), || {
        echoes(d, name).last().filter(|e| e.1 >= 10).map(|e| e.0.clone())
    })
    .unwrap_or_else(|| {
        panic!(
            "the TCP pair does not exchange: {:?}",
            d.sh(name, "ps; netstat -tn; cat /broken")
        )
    });
    (tok, client_pid(d, name))
}

fn client_pid(d: &TestDaemon, name: &str) -> String {
    let (code, out) = d.sh(name, "p=$(cat /client.pid) && kill -0 $p && echo $p");
    assert_eq!(code, 0, "the TCP client is not running: {out}");
    out.trim().to_string()
}

/// The same connection goes on: the same client process, no /broken, and the echoes are one
/// token's, consecutive, and reach `beyond` + 10 (the waits end there).
fn assert_same_connection(d: &TestDaemon, name: &str, tok: &str, pid: &str, beyond: u64, after: &str) {
    let reached = wait_for(Duration::from_secs(20), || {
        echoes(d, name).last().filter(|e| e.1 >= beyond + 10).cloned()
    });
    let (code, broken) = d.sh(name, "cat /broken 2>/dev/null");
    assert!(
        code != 0 || broken.is_empty(),
        "{after}: the TCP client's connection broke: {broken}"
    );
    assert!(
        reached.is_some(),
        "{after}: the echoes stopped at {:?}",
        echoes(d, name).last()
    );
    assert_eq!(client_pid(d, name), pid, "{after}: the same client process");
    let lines = echoes(d, name);
    assert!(lines.iter().all(|l| l.0 == tok), "{after}: one token (no reconnect)");
    for w in lines.windows(2) {
        assert_eq!(w[1].1, w[0].1 + 1, "{after}: every echo came back, in order");
    }
    let (_, net) = d.sh(name, "netstat -tn");
    assert!(
        net.lines()
            .filter(|l| l.contains(":5555") && l.contains("ESTABLISHED"))
            .count()
            == 2,
        "{after}: both ends of the connection: {net}"
    );
}

#[test]
fn a_tcp_connection_inside_survives_a_stateful_stop_and_a_live_move() {
    let test = "a_tcp_connection_inside_survives_a_stateful_stop_and_a_live_move";
    if skip_unless_root(test) {
        return;
    }
    let Some(image) = busybox_image(test) else { return };
    if skip_unless_criu(test) {
        return;
    }
    let p = Pair::new("mig-tcp", 8);
    p.a.import(&image, "busybox");
    for d in [&p.a, &p.b] {
        let net = r#"{"name":"ctbr","type":"bridge","config":{"ipv4.address":"10.251.48.1/24","ipv6.address":"none","ipv4.nat":"false"}}"#;
        d.ok("POST", "/1.0/networks", net, 201);
    }
    let (tok, pid) = launch_tcp_pair(&p.a, "tcp", serde_json::json!({}));

    // Stopped with its state, then started: the connection was checkpointed and goes on.
    p.a.corral_ok(&["stop", "--stateful", "tcp"]);
    assert_eq!(p.a.get("/1.0/instances/tcp")["status"], "Stopped");
    let stopped_at = echoes(&p.a, "tcp").last().unwrap().1;
    p.a.corral_ok(&["start", "tcp"]);
    assert_same_connection(&p.a, "tcp", &tok, &pid, stopped_at, "stop --stateful and start");

    // Moved live to the other server: the same connection goes on there. Post-copy asked for:
    // this container has a user namespace of its own, where this kernel refuses criu's
    // userfaultfd (vm.unprivileged_userfaultfd=0), or the transfer is not built: the move says
    // which, and stops and copies.
    p.a.corral_ok(&["config", "set", "tcp", "migration.stateful.lazy=true"]);
    let before = echoes(&p.a, "tcp").last().unwrap().1;
    let out = p.corral(&["move", "h1:tcp", "h2:tcp"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "live move: {err}");
    assert!(
        err.contains("post-copy (migration.stateful.lazy) is not possible here")
            && err.contains("stopped and copied in one pass"),
        "post-copy's fallback is said: {err}"
    );
    let unprivileged_uffd = std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd").unwrap_or_default();
    if unprivileged_uffd.trim() == "0" {
        assert!(
            err.contains("vm.unprivileged_userfaultfd is 0"),
            "the failed check is named: {err}"
        );
    }
    assert!(err.contains("paused for"), "the downtime is reported: {err}");
    assert_eq!(p.b.get("/1.0/instances/tcp")["status"], "Running");
    assert_same_connection(&p.b, "tcp", &tok, &pid, before, "the live move");
    p.b.corral_ok(&["stop", "--force", "tcp"]);
}

#[test]
fn a_privileged_container_moves_live_with_lazy_pages_and_keeps_its_connection() {
    let test = "a_privileged_container_moves_live_with_lazy_pages_and_keeps_its_connection";
    if skip_unless_root(test) {
        return;
    }
    let Some(image) = busybox_image(test) else { return };
    let Ok(criu) = corral_runtime::checkpoint::criu_binary() else {
        skip(test, "criu");
        return;
    };
    // Without a user namespace, the kernel lets criu's restore open its userfaultfd.
    if let Some(why) = corral_runtime::checkpoint::lazy_pages_blocker(&criu, false) {
        skip(test, &why);
        return;
    }
    let p = Pair::new("mig-lazy", 9);
    p.a.import(&image, "busybox");
    for d in [&p.a, &p.b] {
        let net = r#"{"name":"ctbr","type":"bridge","config":{"ipv4.address":"10.251.49.1/24","ipv6.address":"none","ipv4.nat":"false"}}"#;
        d.ok("POST", "/1.0/networks", net, 201);
    }
    let config = serde_json::json!({"security.privileged": "true", "migration.stateful.lazy": "true"});
    let (tok, pid) = launch_tcp_pair(&p.a, "lazy", config);
    let before = echoes(&p.a, "lazy").last().unwrap().1;
    let (count_tok, counted) = last_count(&p.a, "lazy").expect("init's counter counts");
    let out = p.corral(&["move", "h1:lazy", "h2:lazy"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "live move: {err}");
    assert!(!err.contains("post-copy"), "no fallback note: {err}");
    assert!(err.contains("paused for"), "the downtime is reported: {err}");
    eprintln!("{err}");
    assert_eq!(p.b.get("/1.0/instances/lazy")["status"], "Running");
    assert_eq!(
        p.a.request("GET", "/1.0/instances/lazy", None).0,
        404,
        "gone from the source"
    );
    assert_same_connection(&p.b, "lazy", &tok, &pid, before, "the lazy move");
    // Init's counter too: the same process (its token), counting on.
    let (tok2, _) = wait_for(Duration::from_secs(20), || {
        last_count(&p.b, "lazy").filter(|c| c.1 >= counted + 10)
    })
    .expect("init's counter goes on on the target");
    assert_eq!(tok2, count_tok);
    // The pages went through the migration connection, lazily: the target's log says so.
    let log = std::fs::read_to_string(daemon_log_path(&p.b.dir)).unwrap_or_default();
    assert!(
        log.contains("live migration (post-copy): memory complete"),
        "post-copy was used"
    );
    p.b.corral_ok(&["stop", "--force", "lazy"]);
}

/// Starts busybox `c` on h1 counting (COUNTER_INITTAB), on a bridge `ctbr` at `bridge_cidr`
/// that h2 lacks, with `config`, and moves it to h2: the move must fail with the target's
/// reason. Returns the counter's token and count before the move.
fn move_a_counter_the_target_cannot_restore(p: &Pair, bridge_cidr: &str, config: &str) -> (String, u64) {
    let net = format!(
        r#"{{"name":"ctbr","type":"bridge","config":{{"ipv4.address":"{bridge_cidr}","ipv6.address":"none","ipv4.nat":"false"}}}}"#
    );
    p.a.ok("POST", "/1.0/networks", &net, 201);
    p.a.start_busybox_on_ctbr("c", config, &[("/etc/inittab", COUNTER_INITTAB.as_bytes())]);
    let counted =
        wait_for(Duration::from_secs(20), || last_count(&p.a, "c").filter(|c| c.1 >= 5)).expect("the counter counts");

    let out = p.corral(&["move", "h1:c", "h2:c"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "the move fails");
    assert!(err.contains("cannot restore it here"), "the target's reason: {err}");
    counted
}

#[test]
fn a_lazy_move_the_target_cannot_restore_leaves_the_container_running_on_the_source() {
    let test = "a_lazy_move_the_target_cannot_restore_leaves_the_container_running_on_the_source";
    if skip_unless_root(test) {
        return;
    }
    let Some(image) = busybox_image(test) else { return };
    let Ok(criu) = corral_runtime::checkpoint::criu_binary() else {
        skip(test, "criu");
        return;
    };
    if let Some(why) = corral_runtime::checkpoint::lazy_pages_blocker(&criu, false) {
        skip(test, &why);
        return;
    }
    let p = Pair::new("mig-lazyfail", 10);
    p.a.import(&image, "busybox");
    // The target lacks the container's network: its restore fails after the state arrived.
    let config = r#"{"security.privileged":"true","migration.stateful.lazy":"true"}"#;
    let (token, before) = move_a_counter_the_target_cannot_restore(&p, "10.251.50.1/24", config);
    // Post-copy was under way (the source checkpointed it lazily), and criu's dump gave up
    // (the CLI reports the target's failure without waiting for the source's end).
    let abandoned = wait_for(Duration::from_secs(20), || {
        let log = std::fs::read_to_string(daemon_log_path(&p.a.dir)).unwrap_or_default();
        log.contains("lazy dump abandoned").then_some(())
    });
    assert!(abandoned.is_some(), "the lazy dump was abandoned");
    wait_for(Duration::from_secs(10), || {
        (p.a.get("/1.0/instances/c")["status"] == "Running").then_some(())
    })
    .expect("running on the source");
    assert_eq!(p.a.get("/1.0/instances/c")["stateful"], false);
    assert_eq!(
        p.b.request("GET", "/1.0/instances/c", None).0,
        404,
        "nothing left on the target"
    );
    // The same process counts on: it was never stopped.
    let (tok2, _) = wait_for(Duration::from_secs(20), || {
        last_count(&p.a, "c").filter(|c| c.1 >= before + 10)
    })
    .expect("the counter goes on on the source");
    assert_eq!(tok2, token);
    p.a.corral_ok(&["stop", "--force", "c"]);
}

#[test]
fn a_live_move_the_target_cannot_restore_resumes_the_container_on_the_source() {
    let test = "a_live_move_the_target_cannot_restore_resumes_the_container_on_the_source";
    if skip_unless_root(test) {
        return;
    }
    let Some(image) = busybox_image(test) else { return };
    if skip_unless_criu(test) {
        return;
    }
    let p = Pair::new("mig-livefail", 12);
    p.a.import(&image, "busybox");
    // The target lacks the container's network: its restore fails after the state arrived,
    // while the source records the stateful stop beside the transfer.
    let (token, before) = move_a_counter_the_target_cannot_restore(&p, "10.251.51.1/24", "{}");
    // The CLI reports the target's failure without waiting for the source, which restores it
    // from the state it checkpointed (its record then no longer stateful).
    wait_for(Duration::from_secs(20), || {
        let c = p.a.get("/1.0/instances/c");
        (c["status"] == "Running" && c["stateful"] == false).then_some(())
    })
    .expect("running again on the source, from its state");
    assert_eq!(
        p.b.request("GET", "/1.0/instances/c", None).0,
        404,
        "nothing left on the target"
    );
    // The same process counts on, from its checkpoint.
    let (tok2, _) = wait_for(Duration::from_secs(20), || {
        last_count(&p.a, "c").filter(|c| c.1 >= before + 5)
    })
    .expect("the counter goes on on the source");
    assert_eq!(tok2, token, "restored, not restarted");
    p.a.corral_ok(&["stop", "--force", "c"]);
}
