//! `corrald init`: LXD's preseed YAML applied through a running daemon, all or nothing, with
//! what Corral cannot do yet refused by name. Root only.

mod support;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use support::*;

fn preseed(dir: &std::path::Path, yaml: &str) -> Output {
    let mut child = Command::new(corrald())
        .args(["init", "--preseed"])
        .env("CORRAL_DIR", dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(yaml.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn preseed_creates_and_updates_profiles_or_changes_nothing() {
    let test = "preseed_creates_and_updates_profiles_or_changes_nothing";
    if skip_unless_root(test) {
        return;
    }
    let d = TestDaemon::start("preseed");
    let pool = d.dir.join("storage-pools/default");
    let good = format!(
        "config: {{}}\nnetworks: []\nstorage_pools:\n- name: default\n  driver: dir\n  config:\n    source: {}\n\
         profiles:\n- name: default\n  description: seeded\n  config:\n    limits.memory: 128MiB\n  devices:\n    root:\n      path: /\n      pool: default\n      type: disk\n\
         - name: web\n  config:\n    limits.cpu: 1\n    user.role: web\n  devices: {{}}\nprojects: []\ncluster: null\n",
        pool.display()
    );
    let out = preseed(&d.dir, &good);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("profile default updated") && stdout.contains("profile web created"),
        "{stdout}"
    );
    let default = d.get("/1.0/profiles/default");
    assert_eq!(default["description"], "seeded");
    assert_eq!(default["config"]["limits.memory"], "128MiB");
    assert_eq!(default["devices"]["root"]["pool"], "default");
    let web = d.get("/1.0/profiles/web");
    assert_eq!(
        web["config"],
        serde_json::json!({"limits.cpu": "1", "user.role": "web"})
    );

    // Applying it again is no change and no error (idempotent, as lxd init --preseed).
    let out = preseed(&d.dir, &good);
    assert!(out.status.success(), "{}", stderr(&out));

    // A refused profile puts back those changed before it.
    let bad = "profiles:\n- name: fresh\n  config:\n    user.x: y\n- name: default\n  description: changed\n- name: broken\n  config:\n    limits.bogus: 1\n";
    let out = preseed(&d.dir, bad);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("profile \"broken\"") && err.contains("limits.bogus"),
        "{err}"
    );
    assert!(err.contains("put back"), "{err}");
    d.refused("GET", "/1.0/profiles/fresh", None, 404, "not found");
    assert_eq!(d.get("/1.0/profiles/default")["description"], "seeded");
    assert_eq!(d.get("/1.0/profiles/default")["config"]["limits.memory"], "128MiB");

    // What Corral cannot do yet is refused before anything changes.
    for (yaml, want) in [
        (
            "networks:\n- name: br0\n  type: bridge\nprofiles:\n- name: n1\n",
            "networks are not supported yet",
        ),
        (
            "storage_pools:\n- name: fast\n  driver: btrfs\n",
            "only the `default` pool",
        ),
        ("config:\n  core.https_address: \"[::]:8443\"\n", "core.https_address"),
        ("profiless: []\n", "unknown field"),
    ] {
        let out = preseed(&d.dir, yaml);
        assert!(!out.status.success(), "{yaml}");
        assert!(stderr(&out).contains(want), "{yaml}: {}", stderr(&out));
    }
    d.refused("GET", "/1.0/profiles/n1", None, 404, "not found");

    // Without a daemon, it says so and how to start one.
    let nowhere = std::env::temp_dir().join(unique("no-daemon"));
    let out = preseed(&nowhere, "profiles: []\n");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("corrald is not running"), "{}", stderr(&out));
    let _ = std::fs::remove_dir_all(&nowhere);
}
