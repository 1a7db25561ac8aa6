//! /1.0/events as `lxc monitor` sees it: a lifecycle event for each step of an instance's
//! life, operation events, the daemon's log lines as logging events, the `type` filter; and
//! cancelling an operation (an exec: its command is killed). Root only.

mod support;

use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

type Ws = tungstenite::WebSocket<UnixStream>;

fn listen(d: &TestDaemon, types: &str) -> Ws {
    let stream = UnixStream::connect(d.socket()).expect("connect");
    stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let url = format!("ws://corral/1.0/events?type={types}");
    tungstenite::client(url.as_str(), stream)
        .expect("websocket handshake")
        .0
}

/// Every event that arrives within `quiet` of the previous one (at most `limit` in all).
fn drain(ws: &mut Ws, quiet: Duration, limit: Duration) -> Vec<Value> {
    let start = Instant::now();
    let mut last = Instant::now();
    let mut out = Vec::new();
    while last.elapsed() < quiet && start.elapsed() < limit {
        match ws.read() {
            Ok(tungstenite::Message::Text(t)) => {
                out.push(serde_json::from_str(&t).unwrap());
                last = Instant::now();
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => panic!("events websocket: {e}"),
        }
    }
    out
}

#[test]
fn every_lifecycle_step_is_an_event_and_cancel_kills_an_exec() {
    let test = "every_lifecycle_step_is_an_event_and_cancel_kills_an_exec";
    if skip_unless_root(test) {
        return;
    }
    let Some(image) = busybox_image(test) else { return };
    let d = TestDaemon::start("events");
    let mut all = listen(&d, "lifecycle,operation,logging");
    let mut ops_only = listen(&d, "operation");

    let fp = d.import(&image, "bb");
    let inst = "/1.0/instances/ev1";
    d.op_ok(
        "POST",
        "/1.0/instances",
        r#"{"name":"ev1","source":{"type":"image","alias":"bb"}}"#,
    );
    let state = |action: &str| {
        d.op_ok(
            "PUT",
            &format!("{inst}/state"),
            &format!(r#"{{"action":"{action}","timeout":10,"force":true}}"#),
        );
    };
    state("start");
    state("freeze");
    state("unfreeze");
    d.op_ok(
        "POST",
        &format!("{inst}/exec"),
        r#"{"command":["true"],"wait-for-websocket":false}"#,
    );
    d.op_ok("POST", &format!("{inst}/snapshots"), r#"{"name":"s1"}"#);
    state("restart");
    let a = d.call("POST", &format!("{inst}/files?path=/root/f"), &[], Body::Bytes(b"x"));
    assert_eq!(a.code, 200, "{}", a.error());
    state("stop");
    d.op_ok("PATCH", inst, r#"{"config":{"user.k":"v"}}"#);
    d.op_ok("POST", &format!("{inst}/snapshots/s1"), r#"{"name":"s2"}"#);
    d.op_ok("PUT", inst, r#"{"restore":"s2"}"#);
    d.op_ok("DELETE", &format!("{inst}/snapshots/s2"), "");
    d.op_ok("POST", inst, r#"{"name":"ev2"}"#);
    d.op_ok("DELETE", "/1.0/instances/ev2", "");
    d.ok("POST", "/1.0/profiles", r#"{"name":"p1"}"#, 201);
    d.op_ok("DELETE", &format!("/1.0/images/{fp}"), "");

    let events = drain(&mut all, Duration::from_secs(2), Duration::from_secs(20));
    let lifecycle: Vec<(String, String)> = events
        .iter()
        .filter(|e| e["type"] == "lifecycle")
        .map(|e| {
            (
                e["metadata"]["action"].as_str().unwrap().to_string(),
                e["metadata"]["source"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let img = format!("/1.0/images/{fp}");
    let want: Vec<(&str, &str)> = vec![
        ("image-created", &img),
        ("instance-created", inst),
        ("instance-started", inst),
        ("instance-paused", inst),
        ("instance-resumed", inst),
        ("instance-exec", inst),
        ("instance-snapshot-created", "/1.0/instances/ev1/snapshots/s1"),
        ("instance-restarted", inst),
        ("instance-file-pushed", inst),
        ("instance-stopped", inst),
        ("instance-updated", inst),
        ("instance-snapshot-renamed", "/1.0/instances/ev1/snapshots/s2"),
        ("instance-restored", inst),
        ("instance-snapshot-deleted", "/1.0/instances/ev1/snapshots/s2"),
        ("instance-renamed", "/1.0/instances/ev2"),
        ("instance-deleted", "/1.0/instances/ev2"),
        ("profile-created", "/1.0/profiles/p1"),
        ("image-deleted", &img),
    ];
    let got: Vec<(&str, &str)> = lifecycle.iter().map(|(a, s)| (a.as_str(), s.as_str())).collect();
    assert_eq!(got, want, "lifecycle events, in order");
    let renamed = events
        .iter()
        .find(|e| e["metadata"]["action"] == "instance-renamed")
        .unwrap();
    assert_eq!(renamed["metadata"]["context"]["old_name"], "ev1");
    assert_eq!(renamed["metadata"]["requestor"]["protocol"], "unix");
    assert!(
        events.iter().any(|e| e["type"] == "operation"
            && e["metadata"]["description"] == "Starting instance"
            && e["metadata"]["status"] == "Success"),
        "an operation event for the start"
    );
    assert!(
        events.iter().any(|e| e["type"] == "logging"
            && e["metadata"]["message"] == "started"
            && e["metadata"]["context"]["instance"] == "ev1"),
        "the daemon's log line for the start: {events:?}"
    );
    let filtered = drain(&mut ops_only, Duration::from_millis(500), Duration::from_secs(5));
    assert!(!filtered.is_empty());
    assert!(filtered.iter().all(|e| e["type"] == "operation"), "{filtered:?}");

    // Cancelling a running exec kills its command; a finished operation cannot be cancelled.
    d.import(&image, "bb");
    d.op_ok(
        "POST",
        "/1.0/instances",
        r#"{"name":"ev3","source":{"type":"image","alias":"bb"}}"#,
    );
    d.op_ok("PUT", "/1.0/instances/ev3/state", r#"{"action":"start"}"#);
    let a = d.call(
        "POST",
        "/1.0/instances/ev3/exec",
        &[],
        Body::Json(r#"{"command":["sleep","1000"],"wait-for-websocket":false}"#),
    );
    assert_eq!(a.code, 202);
    let id = a.json()["metadata"]["id"].as_str().unwrap().to_string();
    assert_eq!(d.get(&format!("/1.0/operations/{id}"))["may_cancel"], true);
    let running = |d: &TestDaemon| {
        let out = d.op_ok(
            "POST",
            "/1.0/instances/ev3/exec",
            r#"{"command":["sh","-c","ps | grep -q '[s]leep 1000'"],"wait-for-websocket":false}"#,
        );
        out["metadata"]["return"] == 0
    };
    assert!(wait_for(Duration::from_secs(5), || running(&d).then_some(())).is_some());
    d.ok("DELETE", &format!("/1.0/operations/{id}"), "", 200);
    let op = d.get(&format!("/1.0/operations/{id}/wait?timeout=10"));
    assert_eq!(op["status"], "Cancelled", "{op}");
    assert!(
        wait_for(Duration::from_secs(5), || (!running(&d)).then_some(())).is_some(),
        "the cancelled command still runs"
    );
    d.refused(
        "DELETE",
        &format!("/1.0/operations/{id}"),
        None,
        403,
        "already finished",
    );
    d.refused("DELETE", "/1.0/operations/nope", None, 404, "not found");
}

#[test]
fn a_container_that_powers_off_by_itself_is_noticed_at_once() {
    let test = "a_container_that_powers_off_by_itself_is_noticed_at_once";
    if skip_unless_root(test) {
        return;
    }
    let Some(image) = busybox_image(test) else { return };
    let d = TestDaemon::start("self-stop");
    d.import(&image, "bb");
    d.launch("p1", "bb");
    d.op_ok(
        "POST",
        "/1.0/instances",
        r#"{"name":"eph","ephemeral":true,"source":{"type":"image","alias":"bb"}}"#,
    );
    d.op_ok("PUT", "/1.0/instances/eph/state", r#"{"action":"start"}"#);
    // A restart is not a stop: the ephemeral instance stays.
    d.op_ok(
        "PUT",
        "/1.0/instances/eph/state",
        r#"{"action":"restart","force":true}"#,
    );
    assert_eq!(d.get("/1.0/instances/eph")["status"], "Running");
    let mut ws = listen(&d, "lifecycle");
    for name in ["p1", "eph"] {
        d.op(
            "POST",
            &format!("/1.0/instances/{name}/exec"),
            r#"{"command":["poweroff"],"wait-for-websocket":false}"#,
        );
    }
    let events = drain(&mut ws, Duration::from_secs(3), Duration::from_secs(20));
    let stopped: Vec<&str> = events
        .iter()
        .filter(|e| e["metadata"]["action"] == "instance-stopped")
        .filter_map(|e| e["metadata"]["source"].as_str())
        .collect();
    assert!(stopped.contains(&"/1.0/instances/p1"), "{events:?}");
    assert!(stopped.contains(&"/1.0/instances/eph"), "{events:?}");
    let p1 = d.get("/1.0/instances/p1");
    assert_eq!(p1["status"], "Stopped");
    assert_eq!(
        p1["config"]["volatile.last_state.power"], "STOPPED",
        "it stays off at the next boot"
    );
    d.refused("GET", "/1.0/instances/eph", None, 404, "not found");
    // And it starts again as usual.
    d.op_ok("PUT", "/1.0/instances/p1/state", r#"{"action":"start"}"#);
    assert_eq!(d.get("/1.0/instances/p1")["status"], "Running");
}
