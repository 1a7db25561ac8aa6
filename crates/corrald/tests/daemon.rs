//! System tests of the daemon: the REST API as clients see it, through a real corrald on its
//! unix socket, with raw HTTP (curl) and with the real `lxc` 5.0 client (Debian's lxd-client).
//! What belongs here: anything of the API's behaviour and compatibility. Root only.

mod support;

use std::process::Command;
use std::time::Duration;

use support::*;

#[test]
fn the_api_speaks_lxd_and_refuses_bad_input_clearly() {
    let test = "the_api_speaks_lxd_and_refuses_bad_input_clearly";
    let Some(image) = busybox_image(test) else { return };
    let d = TestDaemon::start("api");
    let server = d.get("/1.0");
    assert_eq!(server["environment"]["server"], "corral");
    assert_eq!(server["api_version"], "1.0");
    let (code, v) = d.request_with("GET", "/1.0/nothing-here", None, &[]);
    assert_eq!(
        (code, v["type"].as_str(), v["error_code"].as_u64()),
        (404, Some("error"), Some(404))
    );

    let fp = d.import(&image, "bb");
    // Export gives back the very file that was imported.
    let exported = d.dir.join("exported");
    let ok = Command::new("curl")
        .args(["-s", "-o"])
        .arg(&exported)
        .arg("--unix-socket")
        .arg(d.socket())
        .arg(format!("http://corral/1.0/images/{fp}/export"))
        .status()
        .unwrap();
    assert!(ok.success());
    assert_eq!(std::fs::read(&exported).unwrap(), std::fs::read(&image).unwrap());
    std::fs::remove_file(&exported).unwrap();
    assert_eq!(d.get("/1.0/images/aliases/bb")["target"], fp.as_str());
    // Something that is not an image: the import fails, saying why, and keeps nothing.
    let (code, v) = d.request_with(
        "POST",
        "/1.0/images",
        Some("not an image"),
        &["Content-Type: application/octet-stream"],
    );
    assert_eq!(code, 202, "{v}");
    let op = d.get(&format!(
        "/1.0/operations/{}/wait?timeout=30",
        v["metadata"]["id"].as_str().unwrap()
    ));
    assert_eq!(op["status"], "Failure");
    assert!(op["err"].as_str().unwrap().contains("Invalid image"), "{op}");
    assert_eq!(d.get("/1.0/images").as_array().unwrap().len(), 1);
    assert_eq!(
        std::fs::read_dir(d.dir.join("tmp")).unwrap().count(),
        0,
        "the upload is not left behind"
    );

    for (body, want) in [
        (
            r#"{"name":"1bad","source":{"type":"image","alias":"bb"}}"#,
            "invalid instance name",
        ),
        (
            r#"{"name":"c1","source":{"type":"image","alias":"bb"},"config":{"limits.memroy":"1GB"}}"#,
            "did you mean \"limits.memory\"",
        ),
        (
            r#"{"name":"c1","source":{"type":"image","alias":"bb"},"type":"virtual-machine"}"#,
            "virtual machines are not supported",
        ),
        (
            r#"{"name":"c1","source":{"type":"image","alias":"nope"}}"#,
            "Image not found",
        ),
    ] {
        let (code, v) = d.request_with("POST", "/1.0/instances", Some(body), &[]);
        assert!(code == 400 || code == 404, "{body}: {code} {v}");
        assert!(v["error"].as_str().unwrap_or("").contains(want), "{body}: {v}");
    }
    assert_eq!(
        d.get("/1.0/instances"),
        serde_json::json!([]),
        "a refused create leaves nothing"
    );

    let op = d.op(
        "POST",
        "/1.0/instances",
        r#"{"name":"c1","source":{"type":"image","alias":"bb"}}"#,
    );
    assert_eq!(op["status"], "Success", "{op}");
    let inst = d.get("/1.0/instances/c1");
    assert_eq!(inst["status"], "Stopped");
    assert_eq!(
        inst["expanded_devices"]["root"]["type"], "disk",
        "the default profile's root disk"
    );

    // ETag: a PUT with a stale If-Match is refused with 412 and changes nothing.
    let (_, v) = d.request_with(
        "PUT",
        "/1.0/instances/c1",
        Some(r#"{"config":{"user.a":"1"}}"#),
        &["If-Match: \"1\""],
    );
    assert_eq!(v["error_code"], 412, "{v}");
    let op = d.op("PATCH", "/1.0/instances/c1", r#"{"config":{"user.a":"2"}}"#);
    assert_eq!(op["status"], "Success");
    assert_eq!(d.get("/1.0/instances/c1")["config"]["user.a"], "2");

    let op = d.op("PUT", "/1.0/instances/c1/state", r#"{"action":"start","timeout":-1}"#);
    assert_eq!(op["status"], "Success", "{op}");
    let state = d.get("/1.0/instances/c1/state");
    assert_eq!(state["status"], "Running");
    assert!(state["pid"].as_i64().unwrap() > 1);
    let (code, v) = d.request_with("DELETE", "/1.0/instances/c1", None, &[]);
    assert_eq!(code, 400, "a running instance is not deleted: {v}");
    let op = d.op("PUT", "/1.0/instances/c1/state", r#"{"action":"stop","force":true}"#);
    assert_eq!(op["status"], "Success", "{op}");
    let op = d.op("DELETE", "/1.0/instances/c1", "");
    assert_eq!(op["status"], "Success", "{op}");
    assert!(
        !d.dir.join("storage-pools/default/containers/c1").exists(),
        "the volume is gone"
    );
}

#[test]
fn the_lxc_client_works_against_corrald() {
    let test = "the_lxc_client_works_against_corrald";
    let Some(image) = busybox_image(test) else { return };
    if skip_unless_lxc(test) {
        return;
    }
    let d = TestDaemon::start("lxc");
    d.import(&image, "busybox");
    assert!(d.lxc_ok(&["image", "list"]).contains("busybox"));
    d.lxc_ok(&["launch", "busybox", "c1"]);
    let list = d.lxc_ok(&["list", "--format", "csv", "-c", "ns"]);
    assert_eq!(list.trim(), "c1,RUNNING");
    assert_eq!(d.lxc_ok(&["exec", "c1", "--", "hostname"]).trim(), "c1");
    let code = d.lxc(&["exec", "c1", "--", "sh", "-c", "exit 7"]).status.code();
    assert_eq!(code, Some(7));
    d.lxc_ok(&["config", "set", "c1", "user.note", "hello"]);
    assert_eq!(d.lxc_ok(&["config", "get", "c1", "user.note"]).trim(), "hello");
    let bad = d.lxc(&["config", "set", "c1", "limits.memroy", "1GB"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown configuration key"));
    assert!(d.lxc_ok(&["profile", "show", "default"]).contains("pool: default"));
    assert!(d.lxc_ok(&["info", "c1"]).contains("RUNNING"));
    d.lxc_ok(&["restart", "c1", "--force"]);
    d.lxc_ok(&["stop", "c1", "--force"]);
    assert_eq!(d.lxc_ok(&["list", "--format", "csv", "-c", "ns"]).trim(), "c1,STOPPED");
    d.lxc_ok(&["start", "c1"]);
    d.lxc_ok(&["snapshot", "c1", "s1"]);
    assert!(d.lxc_ok(&["info", "c1"]).contains("s1"), "lxc info lists the snapshot");
    d.lxc_ok(&["restore", "c1", "s1"]);
    assert_eq!(
        d.lxc_ok(&["list", "--format", "csv", "-c", "nsS"]).trim(),
        "c1,RUNNING,1"
    );
    d.lxc_ok(&["delete", "c1", "--force"]);
    assert_eq!(d.lxc_ok(&["list", "--format", "csv"]).trim(), "");
}

#[test]
fn containers_survive_a_daemon_crash_and_are_reattached() {
    let test = "containers_survive_a_daemon_crash_and_are_reattached";
    let Some(image) = busybox_image(test) else { return };
    let mut d = TestDaemon::start("crash");
    d.import(&image, "bb");
    for name in ["a", "b"] {
        d.op(
            "POST",
            "/1.0/instances",
            &format!(r#"{{"name":"{name}","source":{{"type":"image","alias":"bb"}}}}"#),
        );
        let op = d.op("PUT", &format!("/1.0/instances/{name}/state"), r#"{"action":"start"}"#);
        assert_eq!(op["status"], "Success", "{op}");
    }
    // A third, stopped, with boot.autostart: the next daemon starts it.
    let op = d.op(
        "POST",
        "/1.0/instances",
        r#"{"name":"c","source":{"type":"image","alias":"bb"},"config":{"boot.autostart":"true"}}"#,
    );
    assert_eq!(op["status"], "Success", "{op}");
    let state = d.get("/1.0/instances/a/state");
    let pid_before = state["pid"].as_i64().unwrap();
    // The state shows the container's own network namespace and its root disk usage.
    let lo = &state["network"]["lo"];
    assert_eq!(
        (lo["type"].as_str(), lo["mtu"].as_i64()),
        (Some("loopback"), Some(65536)),
        "{state}"
    );
    assert!(
        state["network"].as_object().unwrap().len() == 1,
        "only lo: no NIC yet: {state}"
    );
    assert!(state["disk"]["root"]["usage"].as_i64().unwrap() > 100_000, "{state}");
    assert!(
        lo["addresses"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["address"] == "127.0.0.1" && a["netmask"] == "8"),
        "{lo}"
    );
    d.crash();
    assert!(process_alive(pid_before as i32), "the container died with the daemon");
    d.spawn();
    let started = wait_for(Duration::from_secs(10), || {
        (d.get("/1.0/instances/c")["status"] == "Running").then_some(())
    });
    assert!(started.is_some(), "boot.autostart did not start c");
    let list = d.get("/1.0/instances?recursion=1");
    let statuses: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["Running", "Running", "Running"]);
    assert_eq!(
        d.get("/1.0/instances/a/state")["pid"].as_i64().unwrap(),
        pid_before,
        "same init, reattached"
    );
    let op = d.op(
        "POST",
        "/1.0/instances/a/exec",
        r#"{"command":["true"],"wait-for-websocket":false}"#,
    );
    assert_eq!(op["metadata"]["return"], 0, "{op}");
    let op = d.op("PUT", "/1.0/instances/b/state", r#"{"action":"stop","timeout":10}"#);
    assert_eq!(op["status"], "Success", "{op}");
    // The console log outlives the run, and the logs are listed.
    let out = Command::new("curl")
        .args(["-s", "--unix-socket"])
        .arg(d.socket())
        .arg("http://corral/1.0/instances/b/console")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("BusyBox"),
        "console log: {:?}",
        out.stdout
    );
    let logs = d.get("/1.0/instances/b/logs");
    assert!(
        logs.as_array()
            .unwrap()
            .iter()
            .any(|l| l == "/1.0/instances/b/logs/console.log"),
        "{logs}"
    );

    // `a` powers off by itself while the daemon is away: the next daemon leaves it stopped
    // (it went down during this boot), and b, stopped by the user, stays stopped too.
    d.crash();
    let monitor = corral_runtime::client::Client::new(&d.dir.join("run/a"));
    monitor.stop(Duration::from_secs(0), true).unwrap();
    d.spawn();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(d.get("/1.0/instances/a")["status"], "Stopped");
    assert_eq!(d.get("/1.0/instances/b")["status"], "Stopped");
    assert_eq!(
        d.get("/1.0/instances/b")["config"]["volatile.last_state.power"],
        "STOPPED"
    );

    // Host shutdown: every instance stopped cleanly, the daemon gone, their last state kept
    // as RUNNING so that the next boot brings them back.
    d.op("PUT", "/1.0/instances/a/state", r#"{"action":"start"}"#);
    let out = Command::new(corrald())
        .args(["shutdown", "--stop-instances"])
        .env("CORRAL_DIR", &d.dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for name in ["a", "c"] {
        assert!(
            !corral_runtime::client::Client::new(&d.dir.join(format!("run/{name}"))).is_running(),
            "{name} still runs after shutdown --stop-instances"
        );
    }
    d.crash();
    d.spawn();
    for name in ["a", "c"] {
        let inst = d.get(&format!("/1.0/instances/{name}"));
        assert_eq!(inst["config"]["volatile.last_state.power"], "RUNNING", "{name}");
    }
}

#[test]
fn snapshots_restore_any_point_and_go_with_the_instance() {
    let test = "snapshots_restore_any_point_and_go_with_the_instance";
    let Some(image) = busybox_image(test) else { return };
    let d = TestDaemon::start("snap");
    d.import(&image, "bb");
    d.op(
        "POST",
        "/1.0/instances",
        r#"{"name":"c1","source":{"type":"image","alias":"bb"}}"#,
    );
    d.op("PUT", "/1.0/instances/c1/state", r#"{"action":"start"}"#);
    let monitor = corral_runtime::client::Client::new(&d.dir.join("run/c1"));
    let sh = |script: &str| {
        let out = monitor
            .exec_output(&corral_runtime::proto::ExecRequest::new(&["sh", "-c", script]), b"")
            .unwrap();
        assert_eq!(out.code, 0, "{script}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    sh("echo one > /root/state");
    let op = d.op("POST", "/1.0/instances/c1/snapshots", r#"{"name":"s0"}"#);
    assert_eq!(op["status"], "Success", "{op}");
    sh("echo two > /root/state");
    let op = d.op("POST", "/1.0/instances/c1/snapshots", "{}");
    assert_eq!(op["status"], "Success", "{op}");
    sh("echo three > /root/state");
    let snaps = d.get("/1.0/instances/c1/snapshots");
    assert_eq!(
        snaps,
        serde_json::json!(["/1.0/instances/c1/snapshots/s0", "/1.0/instances/c1/snapshots/snap0"])
    );
    let (code, v) = d.request_with("POST", "/1.0/instances/c1/snapshots", Some(r#"{"name":"s0"}"#), &[]);
    assert_eq!(code, 409, "{v}");

    // Restore the older one while running: stopped, restored, started again.
    let op = d.op("PUT", "/1.0/instances/c1", r#"{"restore":"s0"}"#);
    assert_eq!(op["status"], "Success", "{op}");
    assert_eq!(d.get("/1.0/instances/c1")["status"], "Running");
    assert_eq!(sh("cat /root/state"), "one");
    // And then the newer one: any snapshot, not only the latest.
    d.op("PUT", "/1.0/instances/c1", r#"{"restore":"snap0"}"#);
    assert_eq!(sh("cat /root/state"), "two");

    let op = d.op("POST", "/1.0/instances/c1/snapshots/snap0", r#"{"name":"later"}"#);
    assert_eq!(op["status"], "Success", "{op}");
    assert_eq!(d.get("/1.0/instances/c1/snapshots/later")["name"], "later");
    d.op("DELETE", "/1.0/instances/c1/snapshots/s0", "");
    assert!(!d.dir.join("storage-pools/default/containers-snapshots/c1/s0").exists());
    d.op("PUT", "/1.0/instances/c1/state", r#"{"action":"stop","force":true}"#);
    // A rename takes the snapshots along: listed, restorable, stored under the new name.
    let op = d.op("POST", "/1.0/instances/c1", r#"{"name":"c2"}"#);
    assert_eq!(op["status"], "Success", "{op}");
    assert_eq!(
        d.get("/1.0/instances/c2/snapshots"),
        serde_json::json!(["/1.0/instances/c2/snapshots/later"])
    );
    assert_eq!(d.get("/1.0/instances/c2/snapshots/later")["name"], "later");
    let (code, _) = d.request_with("GET", "/1.0/instances/c1/snapshots/later", None, &[]);
    assert_eq!(code, 404);
    assert!(!d.dir.join("storage-pools/default/containers-snapshots/c1").exists());
    assert!(d
        .dir
        .join("storage-pools/default/containers-snapshots/c2/later")
        .is_dir());
    let op = d.op("PUT", "/1.0/instances/c2", r#"{"restore":"later"}"#);
    assert_eq!(op["status"], "Success", "{op}");
    d.op("DELETE", "/1.0/instances/c2", "");
    assert!(
        !d.dir.join("storage-pools/default/containers-snapshots/c2").exists(),
        "snapshots go with the instance"
    );
    assert_eq!(d.get("/1.0/instances"), serde_json::json!([]));
}

#[test]
fn local_copies_of_instances_and_snapshots() {
    let test = "local_copies_of_instances_and_snapshots";
    let Some(image) = busybox_image(test) else { return };
    let d = TestDaemon::start("copy");
    d.import(&image, "bb");
    d.op(
        "POST",
        "/1.0/instances",
        r#"{"name":"c1","source":{"type":"image","alias":"bb"},"config":{"user.x":"1"}}"#,
    );
    let state = |name: &str| {
        std::fs::read_to_string(
            d.dir
                .join(format!("storage-pools/default/containers/{name}/rootfs/root/state")),
        )
    };
    std::fs::write(
        d.dir.join("storage-pools/default/containers/c1/rootfs/root/state"),
        "one",
    )
    .unwrap();
    d.op("POST", "/1.0/instances/c1/snapshots", r#"{"name":"s0"}"#);
    std::fs::write(
        d.dir.join("storage-pools/default/containers/c1/rootfs/root/state"),
        "two",
    )
    .unwrap();
    d.op("PUT", "/1.0/instances/c1/state", r#"{"action":"start"}"#);

    // A running instance, with its snapshots.
    let op = d.op(
        "POST",
        "/1.0/instances",
        r#"{"name":"c2","source":{"type":"copy","source":"c1"}}"#,
    );
    assert_eq!(op["status"], "Success", "{op}");
    assert_eq!(state("c2").unwrap(), "two");
    let c2 = d.get("/1.0/instances/c2");
    assert_eq!(c2["config"]["user.x"], "1");
    assert_ne!(
        c2["config"]["volatile.uuid"],
        d.get("/1.0/instances/c1")["config"]["volatile.uuid"]
    );
    assert_eq!(
        d.get("/1.0/instances/c2/snapshots"),
        serde_json::json!(["/1.0/instances/c2/snapshots/s0"])
    );
    // A snapshot, as a new instance; instance_only leaves the snapshots behind.
    let op = d.op(
        "POST",
        "/1.0/instances",
        r#"{"name":"c3","source":{"type":"copy","source":"c1/s0"}}"#,
    );
    assert_eq!(op["status"], "Success", "{op}");
    assert_eq!(state("c3").unwrap(), "one");
    let op = d.op(
        "POST",
        "/1.0/instances",
        r#"{"name":"c4","source":{"type":"copy","source":"c1","instance_only":true}}"#,
    );
    assert_eq!(op["status"], "Success", "{op}");
    assert_eq!(d.get("/1.0/instances/c4/snapshots"), serde_json::json!([]));
    let (code, v) = d.request_with(
        "POST",
        "/1.0/instances",
        Some(r#"{"name":"c2","source":{"type":"copy","source":"c1"}}"#),
        &[],
    );
    assert_eq!(code, 409, "{v}");
    let (code, v) = d.request_with(
        "POST",
        "/1.0/instances",
        Some(r#"{"name":"c9","source":{"type":"copy","source":"nope"}}"#),
        &[],
    );
    assert_eq!(code, 404, "{v}");
    // The copy runs on its own.
    let op = d.op("PUT", "/1.0/instances/c2/state", r#"{"action":"start"}"#);
    assert_eq!(op["status"], "Success", "{op}");
    if !skip_unless_lxc(test) {
        d.lxc_ok(&["copy", "c1", "c5"]);
        assert_eq!(state("c5").unwrap(), "two");
    }
}
