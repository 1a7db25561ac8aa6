//! Proxy devices: a forwarding process per device between the host (here, the test daemon's
//! own network namespace) and the container, in either direction, that keeps serving across a
//! daemon restart and goes with the instance.

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::json;
use support::{busybox_image, skip_unless_root, wait_for, TestDaemon};

/// An HTTP GET from the host side; the body, or None.
fn fetch(d: &TestDaemon, args: &[&str]) -> Option<String> {
    let mut cmd = vec!["curl", "-s", "--max-time", "3"];
    cmd.extend_from_slice(args);
    let out = d.in_netns(&cmd);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn serve_page(d: &TestDaemon, name: &str, text: &str) {
    let script = format!("mkdir -p /www && echo {text} > /www/index.html && httpd -p 127.0.0.1:80 -h /www");
    let (code, out) = d.sh(name, &script);
    assert_eq!(code, 0, "{out}");
}

/// Proxy processes of the test daemon still running.
fn proxy_processes(d: &TestDaemon) -> usize {
    let out = Command::new("pgrep")
        .args(["-f", &format!("{}/run/.*/proxy-", d.dir.display())])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[test]
fn a_proxy_forwards_host_ports_to_the_container_and_survives_a_daemon_restart() {
    if skip_unless_root("a_proxy_forwards_host_ports_to_the_container_and_survives_a_daemon_restart") {
        return;
    }
    let Some(image) = busybox_image("a_proxy_forwards_host_ports_to_the_container_and_survives_a_daemon_restart")
    else {
        return;
    };
    let mut d = TestDaemon::start("proxy");
    d.import(&image, "busybox");
    let body = json!({
        "name": "p1",
        "source": {"type": "image", "alias": "busybox"},
        "profiles": [],
        "devices": {"web": {"type": "proxy", "listen": "tcp:127.0.0.1:8765", "connect": "tcp:127.0.0.1:80"}},
    });
    d.op_ok("POST", "/1.0/instances", &body.to_string());
    d.op_ok("PUT", "/1.0/instances/p1/state", r#"{"action":"start"}"#);
    serve_page(&d, "p1", "inside-p1");
    // 127.0.0.1 on each side is that side's own loopback.
    assert_eq!(fetch(&d, &["http://127.0.0.1:8765/"]).as_deref(), Some("inside-p1"));
    // Many connections at once.
    let many: Vec<_> = (0..8)
        .map(|_| {
            let netns = d.netns.clone();
            std::thread::spawn(move || {
                let out = Command::new("nsenter")
                    .arg(format!("--net=/run/netns/{netns}"))
                    .args(["curl", "-s", "--max-time", "5", "http://127.0.0.1:8765/"])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).trim().to_string()
            })
        })
        .collect();
    for t in many {
        assert_eq!(t.join().unwrap(), "inside-p1");
    }

    // The daemon goes and comes back: the proxy served on all along.
    d.crash();
    assert_eq!(
        fetch(&d, &["http://127.0.0.1:8765/"]).as_deref(),
        Some("inside-p1"),
        "while the daemon is down"
    );
    d.spawn();
    assert_eq!(
        fetch(&d, &["http://127.0.0.1:8765/"]).as_deref(),
        Some("inside-p1"),
        "after the restart"
    );

    // Hot-plug: a unix socket on the host to the same service, and the other direction, a port
    // inside the container to a service on the host.
    let sock = d.dir.join("web.sock");
    let host_listener = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", d.netns))
        .args([
            "socat",
            "TCP-LISTEN:9876,bind=127.0.0.1,fork,reuseaddr",
            "SYSTEM:echo host-side",
        ])
        .spawn()
        .unwrap();
    let patch = json!({"devices": {
        "sock": {"type": "proxy", "listen": format!("unix:{}", sock.display()), "connect": "tcp:127.0.0.1:80"},
        "back": {"type": "proxy", "bind": "instance", "listen": "tcp:127.0.0.1:9000", "connect": "tcp:127.0.0.1:9876"},
    }});
    d.op_ok("PATCH", "/1.0/instances/p1", &patch.to_string());
    assert_eq!(
        fetch(&d, &["--unix-socket", sock.to_str().unwrap(), "http://p1/"]).as_deref(),
        Some("inside-p1")
    );
    let got = wait_for(Duration::from_secs(5), || {
        let (code, out) = d.sh("p1", "nc 127.0.0.1 9000 </dev/null");
        (code == 0 && out.contains("host-side")).then_some(out)
    });
    assert!(
        got.is_some(),
        "the container reaches the host's service through bind=instance"
    );
    assert_eq!(proxy_processes(&d), 3);

    // Unplugged: its port closes; a stop ends the others.
    let mut devices = d.get("/1.0/instances/p1")["devices"].clone();
    devices.as_object_mut().unwrap().remove("web");
    d.op_ok("PATCH", "/1.0/instances/p1", &json!({"devices": devices}).to_string());
    let put = json!({"devices": devices, "profiles": [], "config": {}});
    d.op_ok("PUT", "/1.0/instances/p1", &put.to_string());
    assert_eq!(
        fetch(&d, &["http://127.0.0.1:8765/"]),
        None,
        "the unplugged proxy still serves"
    );
    assert_eq!(proxy_processes(&d), 2);
    d.op_ok("PUT", "/1.0/instances/p1/state", r#"{"action":"stop","force":true}"#);
    assert_eq!(proxy_processes(&d), 0, "proxies outlived their instance");
    assert!(!sock.exists(), "the unix socket was left behind");
    let mut host_listener = host_listener;
    let _ = host_listener.kill();
    let _ = host_listener.wait();
}

#[test]
fn bad_proxy_devices_are_refused_with_the_reason() {
    if skip_unless_root("bad_proxy_devices_are_refused_with_the_reason") {
        return;
    }
    let d = TestDaemon::start("proxy-bad");
    for (device, want) in [
        (json!({"type": "proxy", "listen": "tcp:127.0.0.1:80"}), "connect"),
        (
            json!({"type": "proxy", "listen": "tcp:127.0.0.1", "connect": "tcp:127.0.0.1:80"}),
            "127.0.0.1",
        ),
        (
            json!({"type": "proxy", "listen": "sctp:1.2.3.4:5", "connect": "tcp:127.0.0.1:80"}),
            "sctp",
        ),
        (
            json!({"type": "proxy", "listen": "tcp:127.0.0.1:1", "connect": "tcp:127.0.0.1:2", "bind": "moon"}),
            "bind",
        ),
        (
            json!({"type": "proxy", "listen": "tcp:127.0.0.1:1", "connect": "tcp:127.0.0.1:2", "colour": "red"}),
            "unknown proxy option",
        ),
    ] {
        let body = json!({"name": "bad", "source": {"type": "none"}, "devices": {"p": device}});
        let op = d.op("POST", "/1.0/instances", &body.to_string());
        assert_eq!(op["status"], "Failure", "{op}");
        let err = op["err"].as_str().unwrap_or_default();
        assert!(
            err.contains("device \"p\"") && err.contains(want),
            "{err:?} lacks {want:?}"
        );
        assert_eq!(d.request("GET", "/1.0/instances/bad", None).0, 404);
    }
}
