//! Automatic snapshots (`snapshots.schedule`, `.schedule.stopped`, `.pattern`, `.expiry`)
//! against a real daemon whose scheduler ticks fast (`CORRAL_SNAPSHOT_TICK_SECS`: each second
//! stands for a minute), so a minute's schedule and expiry take seconds. Root only.

mod support;

use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

type Ws = tungstenite::WebSocket<UnixStream>;

fn listen(d: &TestDaemon) -> Ws {
    let stream = UnixStream::connect(d.socket()).expect("connect");
    stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    tungstenite::client("ws://corral/1.0/events?type=lifecycle", stream)
        .expect("websocket handshake")
        .0
}

/// The lifecycle events read from `ws` until `done` holds of them (or `limit` passes).
fn events_until(ws: &mut Ws, limit: Duration, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let start = Instant::now();
    let mut out = Vec::new();
    while !done(&out) && start.elapsed() < limit {
        match ws.read() {
            Ok(tungstenite::Message::Text(t)) => out.push(serde_json::from_str(&t).unwrap()),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => panic!("events websocket: {e}"),
        }
    }
    out
}

/// Polls `f` every quarter second until it returns Some or `timeout` passes.
fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn has_event(events: &[Value], action: &str, source: &str) -> bool {
    events
        .iter()
        .any(|e| e["metadata"]["action"] == action && e["metadata"]["source"] == source)
}

fn snapshots(d: &TestDaemon, inst: &str) -> Vec<Value> {
    d.get(&format!("/1.0/instances/{inst}/snapshots?recursion=1"))
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn names(snaps: &[Value]) -> Vec<String> {
    snaps.iter().map(|s| s["name"].as_str().unwrap().to_string()).collect()
}

fn create(d: &TestDaemon, name: &str, config: &str) {
    d.op_ok(
        "POST",
        "/1.0/instances",
        &format!(r#"{{"name":"{name}","source":{{"type":"image","alias":"bb"}},"config":{config}}}"#),
    );
}

/// One test (one daemon): the fast tick comes from this process's environment, which the test
/// daemon inherits, and is set before anything else runs.
#[test]
fn scheduled_snapshots_are_taken_and_expire() {
    let test = "scheduled_snapshots_are_taken_and_expire";
    if skip_unless_root(test) {
        return;
    }
    let Some(image) = busybox_image(test) else { return };
    std::env::set_var("CORRAL_SNAPSHOT_TICK_SECS", "1");
    let d = TestDaemon::start("snapsched");
    d.import(&image, "bb");

    // Invalid values are refused with the reason.
    d.refused(
        "POST",
        "/1.0/instances",
        Some(r#"{"name":"bad","source":{"type":"image","alias":"bb"},"config":{"snapshots.schedule":"61 * * * *"}}"#),
        400,
        "minute field \"61\": 61 is out of range 0-59",
    );
    d.refused(
        "POST",
        "/1.0/instances",
        Some(r#"{"name":"bad","source":{"type":"image","alias":"bb"},"config":{"snapshots.expiry":"1x"}}"#),
        400,
        "unknown unit 'x'",
    );

    let mut ws = listen(&d);
    // Running, every minute, expiring after one.
    create(
        &d,
        "sched",
        r#"{"snapshots.schedule":"* * * * *","snapshots.expiry":"1M","snapshots.pattern":"auto%d"}"#,
    );
    // Stopped: skipped unless snapshots.schedule.stopped.
    create(
        &d,
        "idle",
        r#"{"snapshots.schedule":"* * * * *","snapshots.expiry":"1d"}"#,
    );
    create(
        &d,
        "idle2",
        r#"{"snapshots.schedule":"* * * * *","snapshots.schedule.stopped":"true"}"#,
    );
    d.op_ok(
        "PUT",
        "/1.0/instances/sched/state",
        r#"{"action":"start","timeout":30}"#,
    );

    // A snapshot is taken, named by the pattern, with an expiry a minute after the scheduler's
    // minute.
    let first = poll(Duration::from_secs(30), || snapshots(&d, "sched").into_iter().next())
        .expect("no scheduled snapshot of the running instance");
    assert_eq!(first["name"], "auto0", "{first}");
    let created: chrono::DateTime<chrono::Utc> = serde_json::from_value(first["created_at"].clone()).unwrap();
    let expires: chrono::DateTime<chrono::Utc> = serde_json::from_value(first["expires_at"].clone()).unwrap();
    assert!(expires > created, "{first}");

    // ... and removed once it has expired, while newer ones keep coming.
    let gone = poll(Duration::from_secs(30), || {
        let names = names(&snapshots(&d, "sched"));
        (!names.contains(&"auto0".to_string()) && names.iter().any(|n| n != "auto0")).then_some(names)
    })
    .expect("the expired snapshot auto0 was not deleted");
    assert!(gone.iter().all(|n| n.starts_with("auto")), "{gone:?}");
    let a = d.call("GET", "/1.0/instances/sched/snapshots/auto0", &[], Body::None);
    assert_eq!(a.code, 404);
    let events = events_until(&mut ws, Duration::from_secs(10), |evs| {
        has_event(evs, "instance-snapshot-deleted", "/1.0/instances/sched/snapshots/auto0")
    });
    assert!(
        has_event(
            &events,
            "instance-snapshot-created",
            "/1.0/instances/sched/snapshots/auto0"
        ),
        "{events:?}"
    );
    assert!(
        has_event(
            &events,
            "instance-snapshot-deleted",
            "/1.0/instances/sched/snapshots/auto0"
        ),
        "{events:?}"
    );

    // The stopped instance is skipped; the one with snapshots.schedule.stopped is not, and its
    // snapshots (no expiry) stay.
    assert_eq!(names(&snapshots(&d, "idle")), Vec::<String>::new());
    let idle2 = names(&snapshots(&d, "idle2"));
    assert!(idle2.len() >= 2 && idle2.contains(&"snap0".to_string()), "{idle2:?}");
    assert!(snapshots(&d, "idle2")
        .iter()
        .all(|s| s["expires_at"] == "0001-01-01T00:00:00Z"));

    // Manual snapshots: without an expiry, snapshots.expiry applies; the zero time is never.
    d.op_ok("POST", "/1.0/instances/idle/snapshots", r#"{"name":"m1"}"#);
    let m1 = d.get("/1.0/instances/idle/snapshots/m1");
    let m1_created: chrono::DateTime<chrono::Utc> = serde_json::from_value(m1["created_at"].clone()).unwrap();
    let m1_expires: chrono::DateTime<chrono::Utc> = serde_json::from_value(m1["expires_at"].clone()).unwrap();
    let day = (m1_expires - m1_created).num_seconds();
    assert!((86_390..=86_410).contains(&day), "{m1}");
    d.op_ok(
        "POST",
        "/1.0/instances/idle/snapshots",
        r#"{"name":"m2","expires_at":"0001-01-01T00:00:00Z"}"#,
    );
    assert_eq!(
        d.get("/1.0/instances/idle/snapshots/m2")["expires_at"],
        "0001-01-01T00:00:00Z"
    );
    // An unnamed snapshot follows snapshots.pattern when it is set.
    d.op_ok(
        "PATCH",
        "/1.0/instances/idle",
        r#"{"config":{"snapshots.pattern":"manual-%d"}}"#,
    );
    d.op_ok("POST", "/1.0/instances/idle/snapshots", "{}");
    assert!(names(&snapshots(&d, "idle")).contains(&"manual-0".to_string()));
    // A snapshot expired by the user's own date is deleted too, whatever made it.
    d.op_ok(
        "POST",
        "/1.0/instances/idle/snapshots",
        r#"{"name":"old","expires_at":"2001-01-01T00:00:00Z"}"#,
    );
    poll(Duration::from_secs(30), || {
        (!names(&snapshots(&d, "idle")).contains(&"old".to_string())).then_some(())
    })
    .expect("the expired manual snapshot was not deleted");
    let idle = names(&snapshots(&d, "idle"));
    for keep in ["m1", "m2", "manual-0"] {
        assert!(idle.contains(&keep.to_string()), "{keep} gone: {idle:?}");
    }

    // @startup: a snapshot when the instance starts (and none on the minute).
    create(&d, "boot", r#"{"snapshots.schedule":"@startup"}"#);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(names(&snapshots(&d, "boot")), Vec::<String>::new());
    d.op_ok("PUT", "/1.0/instances/boot/state", r#"{"action":"start","timeout":30}"#);
    let boot = poll(Duration::from_secs(30), || {
        Some(names(&snapshots(&d, "boot"))).filter(|n| !n.is_empty())
    })
    .expect("no snapshot at startup");
    assert_eq!(boot, ["snap0"]);

    // Without a schedule, nothing more is taken.
    d.op_ok(
        "PATCH",
        "/1.0/instances/sched",
        r#"{"config":{"snapshots.schedule":""}}"#,
    );
    // (A run that read the config before the change may still finish.)
    std::thread::sleep(Duration::from_millis(1500));
    let before = names(&snapshots(&d, "sched"));
    std::thread::sleep(Duration::from_secs(3));
    let after = names(&snapshots(&d, "sched"));
    assert!(after.iter().all(|n| before.contains(n)), "{before:?} then {after:?}");
}
