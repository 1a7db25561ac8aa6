//! System tests of the console: `POST /1.0/instances/{name}/console` (attach over websockets,
//! detach, attach again, the end of the operation when the container stops), the log
//! (`GET`), `DELETE`, and `lxc console`. Root only.

mod support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

type Ws = tungstenite::WebSocket<UnixStream>;

/// Connects one of an operation's websockets.
fn websocket(d: &TestDaemon, op: &str, secret: &str) -> Ws {
    let stream = UnixStream::connect(d.socket()).expect("connect");
    stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let url = format!("ws://corral/1.0/operations/{op}/websocket?secret={secret}");
    tungstenite::client(url.as_str(), stream)
        .expect("websocket handshake")
        .0
}

/// `POST /console`: the operation's id and its `0` and `control` websockets.
fn attach(d: &TestDaemon, name: &str) -> (String, Ws, Ws) {
    let (code, v) = d.request(
        "POST",
        &format!("/1.0/instances/{name}/console"),
        Some(r#"{"width":80,"height":24,"type":"console"}"#),
    );
    assert_eq!(code, 202, "POST console: {v}");
    let meta = &v["metadata"];
    assert_eq!(meta["class"], "websocket", "{v}");
    let id = meta["id"].as_str().unwrap().to_string();
    let fds = &meta["metadata"]["fds"];
    let control = websocket(d, &id, fds["control"].as_str().expect("control secret"));
    let term = websocket(d, &id, fds["0"].as_str().expect("0 secret"));
    (id, term, control)
}

/// `GET` of raw bytes: status and body.
fn raw(d: &TestDaemon, path: &str) -> (u16, Vec<u8>) {
    let a = d.call("GET", path, &[], Body::None);
    (a.code, a.body)
}

/// Reads `ws` until its output contains `needle` (true), it closes or `timeout` passes.
fn read_until(ws: &mut Ws, needle: &str, timeout: Duration) -> (bool, String) {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        match ws.read() {
            Ok(msg) if msg.is_binary() || msg.is_text() => {
                seen.extend_from_slice(&msg.into_data());
                if String::from_utf8_lossy(&seen).contains(needle) {
                    return (true, String::from_utf8_lossy(&seen).into_owned());
                }
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    (false, String::from_utf8_lossy(&seen).into_owned())
}

/// Whether `ws` is closed by the other side within `timeout`.
fn closed_within(ws: &mut Ws, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        match ws.read() {
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
    false
}

fn detach(mut term: Ws, mut control: Ws) {
    let _ = control.close(None);
    let _ = control.flush();
    let _ = term.close(None);
    let _ = term.flush();
}

fn status(d: &TestDaemon, name: &str) -> String {
    d.get(&format!("/1.0/instances/{name}"))["status"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn create_and_start(d: &TestDaemon, name: &str) {
    let op = d.op(
        "POST",
        "/1.0/instances",
        &format!(r#"{{"name":"{name}","source":{{"type":"image","alias":"bb"}}}}"#),
    );
    assert_eq!(op["status"], "Success", "{op}");
    let op = d.op("PUT", &format!("/1.0/instances/{name}/state"), r#"{"action":"start"}"#);
    assert_eq!(op["status"], "Success", "{op}");
}

#[test]
fn console_attach_detach_reattach_and_log() {
    let test = "console_attach_detach_reattach_and_log";
    let Some(image) = busybox_image(test) else { return };
    let d = TestDaemon::start("console");
    d.import(&image, "bb");
    let op = d.op(
        "POST",
        "/1.0/instances",
        r#"{"name":"c1","source":{"type":"image","alias":"bb"}}"#,
    );
    assert_eq!(op["status"], "Success", "{op}");

    // Stopped: no attaching.
    let (code, v) = d.request("POST", "/1.0/instances/c1/console", Some("{}"));
    assert_eq!(code, 400, "{v}");
    assert_eq!(v["error"], "Instance is not running", "{v}");
    let (code, _) = d.request("POST", "/1.0/instances/nope/console", Some("{}"));
    assert_eq!(code, 404);

    let op = d.op("PUT", "/1.0/instances/c1/state", r#"{"action":"start"}"#);
    assert_eq!(op["status"], "Success", "{op}");

    // Clearing is refused, plainly.
    let (code, v) = d.request("DELETE", "/1.0/instances/c1/console", None);
    assert_eq!(code, 400, "{v}");
    assert_eq!(v["error"], "clearing the console log is not supported yet", "{v}");

    // Attach, type, see the shell's answer.
    let (id, mut term, control) = attach(&d, "c1");
    term.send("echo marker$((40+2))\n".as_bytes().to_vec().into()).unwrap();
    let (found, seen) = read_until(&mut term, "marker42", Duration::from_secs(5));
    assert!(found, "no marker42 on the console; got {seen:?}");

    // Detach: the operation ends, the container runs on.
    detach(term, control);
    let op = d.get(&format!("/1.0/operations/{id}/wait?timeout=10"));
    assert_eq!(op["status"], "Success", "{op}");
    assert_eq!(status(&d, "c1"), "Running");

    // Again.
    let (id, mut term, control) = attach(&d, "c1");
    term.send("echo again$((1+1))\n".as_bytes().to_vec().into()).unwrap();
    let (found, seen) = read_until(&mut term, "again2", Duration::from_secs(5));
    assert!(found, "no again2 on the second attach; got {seen:?}");
    detach(term, control);
    let op = d.get(&format!("/1.0/operations/{id}/wait?timeout=10"));
    assert_eq!(op["status"], "Success", "{op}");
    assert_eq!(status(&d, "c1"), "Running");

    // The log has what went by.
    let (code, log) = raw(&d, "/1.0/instances/c1/console");
    assert_eq!(code, 200);
    let log = String::from_utf8_lossy(&log);
    assert!(log.contains("marker42"), "the console log lacks marker42: {log:?}");

    // Stopping the container ends an attached console.
    let (id, mut term, _control) = attach(&d, "c1");
    let op = d.op("PUT", "/1.0/instances/c1/state", r#"{"action":"stop","force":true}"#);
    assert_eq!(op["status"], "Success", "{op}");
    assert!(
        closed_within(&mut term, Duration::from_secs(10)),
        "the console websocket stayed open after the stop"
    );
    let op = d.get(&format!("/1.0/operations/{id}/wait?timeout=10"));
    assert_eq!(op["status"], "Success", "{op}");
    // The log outlives the run.
    let (_, log) = raw(&d, "/1.0/instances/c1/console");
    assert!(String::from_utf8_lossy(&log).contains("again2"));
}

#[test]
fn lxc_console_works_against_corrald() {
    let test = "lxc_console_works_against_corrald";
    let Some(image) = busybox_image(test) else { return };
    if !Command::new("lxc")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        skip(test, "needs the lxc client (apt-get install lxd-client)");
        return;
    }
    if Command::new("script").arg("--version").output().is_err() {
        skip(test, "needs script(1) (util-linux)");
        return;
    }
    let d = TestDaemon::start("lxc-console");
    let extensions = d.get("/1.0")["api_extensions"].clone();
    if !extensions.as_array().is_some_and(|a| a.iter().any(|e| e == "console")) {
        skip(
            test,
            "corrald does not advertise the \"console\" API extension, which lxc console needs",
        );
        return;
    }
    d.import(&image, "bb");
    create_and_start(&d, "c1");

    // lxc console wants a terminal: script(1) gives it one, fed from a pipe.
    let mut child = Command::new("script")
        .args(["-qec", "lxc console c1", "/dev/null"])
        .env("LXD_DIR", &d.dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("script");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    std::thread::sleep(Duration::from_secs(2));
    let _ = stdin.write_all(b"echo lxc$((3+4))\r");
    let _ = stdin.flush();
    std::thread::sleep(Duration::from_secs(2));
    // ctrl+a q: detach (lxc looks at the first byte of each read only: two writes).
    let _ = stdin.write_all(b"\x01");
    let _ = stdin.flush();
    std::thread::sleep(Duration::from_millis(500));
    let _ = stdin.write_all(b"q");
    let _ = stdin.flush();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut exited = false;
    while Instant::now() < deadline {
        if child.try_wait().ok().flatten().is_some() {
            exited = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if !exited {
        let _ = child.kill();
    }
    let _ = child.wait();
    drop(stdin);
    let out = String::from_utf8_lossy(&reader.join().unwrap_or_default()).into_owned();
    assert!(exited, "lxc console did not detach on ctrl+a q; output {out:?}");
    assert!(
        out.contains("lxc7"),
        "lxc console did not show the shell's answer: {out:?}"
    );
    assert_eq!(status(&d, "c1"), "Running");
    let (_, log) = raw(&d, "/1.0/instances/c1/console");
    assert!(String::from_utf8_lossy(&log).contains("lxc7"));
}
