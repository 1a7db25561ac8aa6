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

/// `corral exec` without a terminal: stdin, stdout and stderr go through whole (several MB
/// each way, byte for byte), a command that writes all its output before reading its input
/// does not wedge the client, the exit code comes back, and SIGTERM reaches the command.
#[test]
fn corral_exec_pipes_stdio_both_ways_and_forwards_signals() {
    use std::io::Write;
    use std::process::Stdio;

    let test = "corral_exec_pipes_stdio_both_ways_and_forwards_signals";
    if skip_unless_root(test) {
        return;
    }
    let Some(image) = busybox_image(test) else { return };
    let d = TestDaemon::start("exec-pipes");
    d.import(&image, "bb");
    d.launch("p1", "bb");
    let exec = |script: &str, input: Vec<u8>| {
        let mut child = Command::new(corral_cli())
            .args(["exec", "p1", "--", "sh", "-c", script])
            .env("CORRAL_DIR", &d.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("corral exec");
        let mut stdin = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        out
    };

    // 4 MB of varied bytes in, the same out, then the exit code and stderr.
    let input: Vec<u8> = (0..4_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let out = exec("cat; echo end >&2; exit 3", input.clone());
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.stdout == input,
        "stdout differs from stdin ({} bytes back)",
        out.stdout.len()
    );
    assert_eq!(out.stderr, b"end\n");

    // All the output first (more than every buffer on the way holds), then the input.
    let out = exec("head -c 6000000 /dev/zero; wc -c", vec![7u8; 3_000_000]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout.len(), 6_000_000 + "3000000\n".len());
    assert!(out.stdout.ends_with(b"3000000\n"));

    // SIGTERM to the client is forwarded: the command's trap runs and its code comes back.
    let mut child = Command::new(corral_cli())
        .args([
            "exec",
            "p1",
            "--",
            "sh",
            "-c",
            "trap 'echo got-term; exit 5' TERM; echo ready; while :; do sleep 0.1; done",
        ])
        .env("CORRAL_DIR", &d.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("corral exec");
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 6];
    std::io::Read::read_exact(&mut stdout, &mut first).expect("the command started");
    assert_eq!(&first, b"ready\n");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert_eq!(rest, "got-term\n");
    assert_eq!(child.wait().unwrap().code(), Some(5));
}
