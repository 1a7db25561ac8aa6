//! Exec beyond the websocket basics: `record-output` (the output kept as log files the logs
//! API serves, as LXD does), and the real `lxc exec` with a terminal. Root only.

mod support;

use std::process::Command;

use support::*;

#[test]
fn recorded_output_is_served_by_the_logs_api() {
    let test = "recorded_output_is_served_by_the_logs_api";
    if skip_unless_root(test) {
        return;
    }
    let Some(image) = busybox_image(test) else { return };
    let d = TestDaemon::start("exec-record");
    d.import(&image, "bb");
    d.launch("r1", "bb");
    let op = d.op_ok(
        "POST",
        "/1.0/instances/r1/exec",
        r#"{"command":["sh","-c","echo to-out; echo to-err >&2; exit 3"],"wait-for-websocket":false,"record-output":true}"#,
    );
    assert_eq!(op["metadata"]["return"], 3, "{op}");
    let out = op["metadata"]["output"]["1"]
        .as_str()
        .expect("a stdout log")
        .to_string();
    let err = op["metadata"]["output"]["2"]
        .as_str()
        .expect("a stderr log")
        .to_string();
    assert!(out.starts_with("/1.0/instances/r1/logs/exec-output/exec_"), "{out}");
    let a = d.call("GET", &out, &[], Body::None);
    assert_eq!((a.code, a.body.as_slice()), (200, b"to-out\n".as_slice()));
    let a = d.call("GET", &err, &[], Body::None);
    assert_eq!((a.code, a.body.as_slice()), (200, b"to-err\n".as_slice()));
    let listed = d.get("/1.0/instances/r1/logs/exec-output");
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    d.ok("DELETE", &out, "", 200);
    d.refused("GET", &out, None, 404, "Log file not found");
    d.refused(
        "GET",
        "/1.0/instances/r1/logs/exec-output/..%2Fconsole.log",
        None,
        404,
        "not found",
    );
    // Without record-output nothing is kept.
    let op = d.op_ok(
        "POST",
        "/1.0/instances/r1/exec",
        r#"{"command":["echo","x"],"wait-for-websocket":false}"#,
    );
    assert!(op["metadata"]["output"].is_null(), "{op}");
    assert_eq!(d.get("/1.0/instances/r1/logs/exec-output").as_array().unwrap().len(), 1);
}

#[test]
fn lxc_exec_with_a_terminal() {
    let test = "lxc_exec_with_a_terminal";
    if skip_unless_root(test) || skip_unless_lxc(test) {
        return;
    }
    let Some(image) = busybox_image(test) else { return };
    let d = TestDaemon::start("exec-lxc");
    d.import(&image, "bb");
    d.lxc_ok(&["launch", "bb", "t1"]);
    // `script` gives lxc a terminal, as a user's shell would.
    let out = Command::new("script")
        .args(["-qec", "lxc exec t1 -- sh -c 'tty; stty size; exit 4'", "/dev/null"])
        .env("LXD_DIR", &d.dir)
        .env("COLUMNS", "100")
        .env("LINES", "30")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("/dev/pts/"), "the command has a terminal: {text:?}");
    assert_eq!(out.status.code(), Some(4), "{text:?}");
    // Forced off (-T): no terminal, pipes.
    let out = d.lxc(&["exec", "t1", "-T", "--", "sh", "-c", "tty; true"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("not a tty"), "{out:?}");
}
