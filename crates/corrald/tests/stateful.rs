//! Stateful operations through the daemon (CRIU): `stop --stateful` then `start` resumes a
//! bridged busybox container with its memory, its processes, its MAC and its IPv4 address;
//! a stateful snapshot leaves it running and its restore brings that moment back; failures
//! are clear and leave the instance as it was. Through the API, the `corral` CLI and `lxc`.
//!
//! Needs root, the busybox test image and CRIU 4.1.1 (scripts/install-deps.sh).

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{busybox_image, skip_unless_criu, skip_unless_lxc, skip_unless_root, wait_for, Body, TestDaemon};

/// Init's extra lines: a boot marker (one line per boot, none on a restore) and a counter
/// whose count lives only in the shell's memory, written with a token drawn at its start and
/// its pid, every 100 ms. Both are in init's tree, so in the checkpoint.
const INITTAB: &str = "::sysinit:/etc/init.d/rcS
::sysinit:/bin/sh -c 'echo boot >> /boots'
::once:/bin/sh -c 'tok=$RANDOM$RANDOM; i=0; while :; do i=$((i+1)); echo \"$tok $$ $i\" >> /count; sleep 0.1; done'
::respawn:-/bin/sh
::shutdown:/bin/sync
";

fn require_all(test: &str) -> Option<std::path::PathBuf> {
    if skip_unless_root(test) {
        return None;
    }
    let image = busybox_image(test)?;
    (!skip_unless_criu(test)).then_some(image)
}

/// A daemon with the busybox image and a bridge `ctbr` on 10.251.31.0/24.
fn daemon(tag: &str, image: &std::path::Path) -> TestDaemon {
    let d = TestDaemon::start(tag);
    d.import(image, "busybox");
    let net = json!({"name": "ctbr", "type": "bridge",
                     "config": {"ipv4.address": "10.251.31.1/24", "ipv6.address": "none", "ipv4.nat": "false"}});
    d.ok("POST", "/1.0/networks", &net.to_string(), 201);
    d
}

/// Creates `name` (the counter in its inittab, eth0 on ctbr, extra config) and starts it.
fn launch_counter(d: &TestDaemon, name: &str, config: Value) {
    d.start_busybox_on_ctbr(name, &config.to_string(), &[("/etc/inittab", INITTAB.as_bytes())]);
}

/// A file of the instance (running or not), through the file API.
fn file(d: &TestDaemon, name: &str, path: &str) -> String {
    let a = d.call(
        "GET",
        &format!("/1.0/instances/{name}/files?path={path}"),
        &[],
        Body::None,
    );
    assert_eq!(a.code, 200, "{path}: {}", a.error());
    String::from_utf8_lossy(&a.body).into_owned()
}

/// The counter's lines: (token, pid, count); none before it has written one.
fn counts(d: &TestDaemon, name: &str) -> Vec<(String, String, u64)> {
    let a = d.call(
        "GET",
        &format!("/1.0/instances/{name}/files?path=/count"),
        &[],
        Body::None,
    );
    if a.code == 404 {
        return Vec::new();
    }
    assert_eq!(a.code, 200, "/count: {}", a.error());
    String::from_utf8_lossy(&a.body)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() != 3 {
                return None;
            }
            Some((f[0].to_string(), f[1].to_string(), f[2].parse().ok()?))
        })
        .collect()
}

fn last_count(d: &TestDaemon, name: &str) -> u64 {
    counts(d, name).last().map(|c| c.2).unwrap_or(0)
}

fn wait_count(d: &TestDaemon, name: &str, at_least: u64) -> u64 {
    wait_for(Duration::from_secs(20), || {
        let n = last_count(d, name);
        (n >= at_least).then_some(n)
    })
    .unwrap_or_else(|| panic!("{name}'s count did not reach {at_least}: {:?}", counts(d, name).last()))
}

fn ipv4_of(d: &TestDaemon, name: &str) -> String {
    wait_for(Duration::from_secs(20), || {
        let (_, out) = d.sh(name, "ip -4 -o addr show dev eth0");
        out.split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .map(|a| a.split('/').next().unwrap_or_default().to_string())
    })
    .unwrap_or_else(|| panic!("{name} has no IPv4 address on eth0"))
}

fn status(d: &TestDaemon, name: &str) -> String {
    d.get(&format!("/1.0/instances/{name}"))["status"]
        .as_str()
        .unwrap()
        .to_string()
}

fn stateful(d: &TestDaemon, name: &str) -> bool {
    d.get(&format!("/1.0/instances/{name}"))["stateful"] == true
}

fn state_dir(d: &TestDaemon, name: &str) -> std::path::PathBuf {
    d.dir.join("storage-pools/default/containers").join(name).join("state")
}

/// The failed operation's error (the operation must fail).
fn op_err(d: &TestDaemon, method: &str, path: &str, body: &str) -> String {
    let op = d.op(method, path, body);
    assert_eq!(op["status"], "Failure", "{method} {path} {body} should fail: {op}");
    op["err"].as_str().unwrap_or_default().to_string()
}

/// The counts are one process's (token and pid), consecutive from 1 (`gaps` back-steps
/// allowed: a snapshot's file may hold a few lines written after its state was taken).
fn assert_one_counter(lines: &[(String, String, u64)], back_steps: usize) {
    let (tok, pid) = (&lines[0].0, &lines[0].1);
    assert!(
        lines.iter().all(|l| &l.0 == tok && &l.1 == pid),
        "another counter process (memory lost): {:?}",
        lines
            .iter()
            .map(|l| (&l.0, &l.1))
            .collect::<std::collections::BTreeSet<_>>()
    );
    let mut steps = 0;
    for w in lines.windows(2) {
        if w[1].2 != w[0].2 + 1 {
            assert!(
                w[1].2 <= w[0].2 && w[1].2 > 1,
                "the count jumped from {} to {}",
                w[0].2,
                w[1].2
            );
            steps += 1;
        }
    }
    assert!(steps <= back_steps, "{steps} back-steps in the count");
}

#[test]
fn a_bridged_container_stopped_statefully_resumes_its_memory_processes_and_address() {
    let test = "a_bridged_container_stopped_statefully_resumes_its_memory_processes_and_address";
    let Some(image) = require_all(test) else { return };
    let d = daemon("stateful", &image);
    launch_counter(&d, "c1", json!({}));
    let ip = ipv4_of(&d, "c1");
    let mac = d.get("/1.0/instances/c1")["config"]["volatile.eth0.hwaddr"].clone();
    wait_count(&d, "c1", 5);
    assert!(!stateful(&d, "c1"));

    let mut stops = Vec::new();
    let mut starts = Vec::new();
    for round in 0..3 {
        let t = Instant::now();
        d.op_ok("PUT", "/1.0/instances/c1/state", r#"{"action":"stop","stateful":true}"#);
        stops.push(t.elapsed());
        assert_eq!(status(&d, "c1"), "Stopped");
        assert!(stateful(&d, "c1"), "GET shows stateful after a stateful stop");
        assert!(state_dir(&d, "c1").join("corral-checkpoint.json").is_file());
        let frozen_at = last_count(&d, "c1");
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(last_count(&d, "c1"), frozen_at, "nothing counts while stopped");

        let t = Instant::now();
        d.op_ok("PUT", "/1.0/instances/c1/state", r#"{"action":"start"}"#);
        starts.push(t.elapsed());
        assert_eq!(status(&d, "c1"), "Running");
        assert!(!stateful(&d, "c1"), "the state is used up");
        assert!(!state_dir(&d, "c1").exists(), "the state is removed after the restore");
        wait_count(&d, "c1", frozen_at + 5);
        assert_one_counter(&counts(&d, "c1"), 0);
        assert_eq!(
            file(&d, "c1", "/boots").lines().count(),
            1,
            "round {round}: init did not boot again"
        );
        assert_eq!(ipv4_of(&d, "c1"), ip, "the same IPv4 address");
        assert_eq!(d.get("/1.0/instances/c1")["config"]["volatile.eth0.hwaddr"], mac);
        let (code, out) = d.sh("c1", "ip link show eth0; ping -c1 -W3 10.251.31.1");
        assert_eq!(code, 0, "the bridge answers after the restore: {out}");
        assert!(out.contains(mac.as_str().unwrap()), "{out}");
    }
    eprintln!("FIGURES busybox stateful stop {stops:?}, stateful start {starts:?}");

    // The daemon watches the restored container as a started one: a stop is a stop.
    d.op_ok("PUT", "/1.0/instances/c1/state", r#"{"action":"stop","force":true}"#);
    assert_eq!(status(&d, "c1"), "Stopped");

    // The CLI: stop --stateful, info, start; start --stateless discards the state.
    d.corral_ok(&["start", "c1"]);
    assert_eq!(file(&d, "c1", "/boots").lines().count(), 2);
    wait_count(&d, "c1", 3);
    d.corral_ok(&["stop", "--stateful", "c1"]);
    let info = d.corral_ok(&["info", "c1"]);
    assert!(info.contains("Stateful: yes"), "{info}");
    let before = last_count(&d, "c1");
    d.corral_ok(&["start", "c1"]);
    wait_count(&d, "c1", before + 3);
    assert_eq!(file(&d, "c1", "/boots").lines().count(), 2, "corral start restored");
    d.corral_ok(&["stop", "--stateful", "c1"]);
    d.corral_ok(&["start", "--stateless", "c1"]);
    assert_eq!(file(&d, "c1", "/boots").lines().count(), 3, "start --stateless boots");
    assert!(!stateful(&d, "c1") && !state_dir(&d, "c1").exists());

    // lxc 5.0: `lxc stop --stateful`, `lxc start` (which asks for the state), `lxc info`.
    if !skip_unless_lxc(test) {
        wait_count(&d, "c1", 3);
        d.lxc_ok(&["stop", "--stateful", "c1"]);
        assert!(stateful(&d, "c1"));
        let before = last_count(&d, "c1");
        d.lxc_ok(&["start", "c1"]);
        wait_count(&d, "c1", before + 3);
        assert_eq!(file(&d, "c1", "/boots").lines().count(), 3, "lxc start restored");
        assert_eq!(ipv4_of(&d, "c1"), ip);
    }
    d.op_ok("PUT", "/1.0/instances/c1/state", r#"{"action":"stop","force":true}"#);
}

#[test]
fn a_stateful_snapshot_brings_back_its_moment_and_failures_leave_things_as_they_were() {
    let test = "a_stateful_snapshot_brings_back_its_moment_and_failures_leave_things_as_they_were";
    let Some(image) = require_all(test) else { return };
    let d = daemon("stateful-snap", &image);
    launch_counter(&d, "s1", json!({}));
    let ip = ipv4_of(&d, "s1");
    let a = wait_count(&d, "s1", 5);

    // A stateful snapshot: the container runs on; the snapshot says stateful.
    d.op_ok(
        "POST",
        "/1.0/instances/s1/snapshots",
        r#"{"name":"live","stateful":true}"#,
    );
    let b = last_count(&d, "s1");
    assert_eq!(status(&d, "s1"), "Running");
    assert!(!state_dir(&d, "s1").exists(), "the state went into the snapshot only");
    let c = wait_count(&d, "s1", b + 20);
    assert_eq!(d.get("/1.0/instances/s1/snapshots/live")["stateful"], true);
    d.op_ok("POST", "/1.0/instances/s1/snapshots", r#"{"name":"plain"}"#);
    assert_eq!(d.get("/1.0/instances/s1/snapshots/plain")["stateful"], false);
    let info = d.corral_ok(&["info", "s1"]);
    assert!(info.contains("live") && info.contains("(stateful)"), "{info}");

    // Restore it statefully: memory and files back to that moment, running, same address.
    d.op_ok("PUT", "/1.0/instances/s1", r#"{"restore":"live","stateful":true}"#);
    assert_eq!(status(&d, "s1"), "Running");
    let resumed = wait_count(&d, "s1", a + 5);
    let lines = counts(&d, "s1");
    assert!(
        lines.iter().all(|l| l.2 < c),
        "the count went back to the snapshot (< {c}): {resumed}"
    );
    assert_one_counter(&lines, 1);
    assert_eq!(file(&d, "s1", "/boots").lines().count(), 1, "restored, not booted");
    assert_eq!(ipv4_of(&d, "s1"), ip);

    // The CLI's restore --stateful, from a stopped instance: it comes back running.
    d.op_ok("PUT", "/1.0/instances/s1/state", r#"{"action":"stop","force":true}"#);
    d.corral_ok(&["restore", "--stateful", "s1", "live"]);
    assert_eq!(status(&d, "s1"), "Running");
    wait_count(&d, "s1", a + 5);
    assert_eq!(file(&d, "s1", "/boots").lines().count(), 1);
    // A stateless restore of a stateful snapshot boots (the state does not come along).
    d.corral_ok(&["restore", "s1", "live"]);
    assert_eq!(file(&d, "s1", "/boots").lines().count(), 2);
    assert!(!stateful(&d, "s1") && !state_dir(&d, "s1").exists());

    // Refusals that touch nothing.
    let e = op_err(&d, "PUT", "/1.0/instances/s1", r#"{"restore":"plain","stateful":true}"#);
    assert!(e.contains("not stateful"), "{e}");
    assert_eq!(status(&d, "s1"), "Running");
    let e = op_err(
        &d,
        "PUT",
        "/1.0/instances/s1/state",
        r#"{"action":"start","stateful":true}"#,
    );
    assert!(e.contains("already running"), "{e}");
    d.op_ok("PUT", "/1.0/instances/s1/state", r#"{"action":"stop","force":true}"#);
    let e = op_err(
        &d,
        "PUT",
        "/1.0/instances/s1/state",
        r#"{"action":"stop","stateful":true}"#,
    );
    assert!(e.contains("isn't running"), "{e}");
    let e = op_err(
        &d,
        "PUT",
        "/1.0/instances/s1/state",
        r#"{"action":"start","stateful":true}"#,
    );
    assert!(e.contains("no existing state"), "{e}");
    let e = op_err(
        &d,
        "POST",
        "/1.0/instances/s1/snapshots",
        r#"{"name":"x","stateful":true}"#,
    );
    assert!(e.contains("isn't running"), "{e}");
    assert!(d.request("GET", "/1.0/instances/s1/snapshots/x", None).0 == 404);

    // A restore that fails (a damaged state) leaves it stopped with its state, for another
    // try or a stateless start.
    d.op_ok("PUT", "/1.0/instances/s1/state", r#"{"action":"start"}"#);
    wait_count(&d, "s1", 3);
    d.op_ok("PUT", "/1.0/instances/s1/state", r#"{"action":"stop","stateful":true}"#);
    let dir = state_dir(&d, "s1");
    // Without its process tree image, criu fails at once.
    std::fs::remove_file(dir.join("pstree.img")).unwrap();
    let e = op_err(&d, "PUT", "/1.0/instances/s1/state", r#"{"action":"start"}"#);
    assert!(e.contains("criu") && e.contains("criu-restore.log"), "{e}");
    assert_eq!(status(&d, "s1"), "Stopped");
    assert!(
        stateful(&d, "s1") && dir.join("corral-checkpoint.json").is_file(),
        "the state is kept"
    );
    let logs = d.get("/1.0/instances/s1/logs");
    assert!(logs.to_string().contains("criu-restore.log"), "{logs}");
    let shown = d.corral_ok(&["info", "s1", "--show-log"]);
    assert!(shown.contains("criu-restore.log") && shown.contains("Error"), "{shown}");
    d.op_ok(
        "PUT",
        "/1.0/instances/s1/state",
        r#"{"action":"start","stateful":false}"#,
    );
    assert_eq!(status(&d, "s1"), "Running");
    assert!(!stateful(&d, "s1") && !dir.exists());
    d.op_ok("PUT", "/1.0/instances/s1/state", r#"{"action":"stop","force":true}"#);

    // What the runtime refuses: syscall interception (the listener cannot be restored).
    launch_counter(&d, "s2", json!({"security.syscalls.intercept.mknod": "true"}));
    wait_count(&d, "s2", 3);
    let e = op_err(
        &d,
        "PUT",
        "/1.0/instances/s2/state",
        r#"{"action":"stop","stateful":true}"#,
    );
    assert!(e.contains("statefully") && e.contains("intercept"), "{e}");
    assert_eq!(status(&d, "s2"), "Running");
    assert!(!stateful(&d, "s2") && !state_dir(&d, "s2").exists());
    d.op_ok("PUT", "/1.0/instances/s2/state", r#"{"action":"stop","force":true}"#);

    // A CRIU failure (a POSIX message queue: criu cannot dump the contents of an mqueue
    // mount): the container runs on, no state, and CRIU's log is kept and shown.
    launch_counter(&d, "s3", json!({}));
    wait_count(&d, "s3", 3);
    let (code, out) = d.sh("s3", "touch /dev/mqueue/corral-test");
    assert_eq!(code, 0, "{out}");
    let e = op_err(
        &d,
        "PUT",
        "/1.0/instances/s3/state",
        r#"{"action":"stop","stateful":true}"#,
    );
    assert!(
        e.contains("criu dump failed") && e.contains("mqueue") && e.contains("criu-dump.log"),
        "{e}"
    );
    assert_eq!(status(&d, "s3"), "Running");
    let before = last_count(&d, "s3");
    wait_count(&d, "s3", before + 3);
    assert!(!stateful(&d, "s3") && !state_dir(&d, "s3").exists());
    let log = d.call("GET", "/1.0/instances/s3/logs/criu-dump.log", &[], Body::None);
    assert_eq!(log.code, 200);
    assert!(String::from_utf8_lossy(&log.body).contains("Error"));
    d.op_ok("PUT", "/1.0/instances/s3/state", r#"{"action":"stop","force":true}"#);
}
