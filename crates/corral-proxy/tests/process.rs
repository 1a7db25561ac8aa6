//! `run_process` in a process of its own, as the daemon runs it: it serves, switches to
//! `security.uid`/`security.gid` once listening (outgoing connections are made as that user), and
//! stops cleanly on SIGTERM. The process is this test binary again, running `child_entry`.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use corral_proxy::{NsSpec, ProxyConfig};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::{root_or_skip, Sandbox};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CHILD_ENV: &str = "CORRAL_PROXY_TEST_CHILD_CONFIG";

/// The proxy process: does nothing unless started by the test below.
#[test]
fn child_entry() {
    let Ok(json) = std::env::var(CHILD_ENV) else {
        return;
    };
    let config: ProxyConfig = serde_json::from_str(&json).unwrap();
    corral_proxy::run_process(config, |_| {
        // Not println!: the test harness would hold it back until the test ends.
        let mut out = std::io::stdout().lock();
        writeln!(out, "READY").unwrap();
        out.flush().unwrap();
    })
    .unwrap();
}

/// Kills the child if the test fails before it has stopped.
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_serves_as_the_security_user_and_stops_on_sigterm() {
    if !root_or_skip("process_serves_as_the_security_user_and_stops_on_sigterm") {
        return;
    }
    let outside = Sandbox::new();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join("svc.sock");
    let service = tokio::net::UnixListener::bind(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = service.accept().await {
            let uid = s.peer_cred().unwrap().uid();
            let _ = s.write_all(format!("uid={uid}").as_bytes()).await;
        }
    });

    let mut config = ProxyConfig::new("tcp:127.0.0.1:7000", format!("unix:{}", path.display()));
    config.listen_ns = outside.spec();
    config.connect_ns = NsSpec::host();
    (config.security_uid, config.security_gid) = (Some(65534), Some(65534));
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, serde_json::to_string(&config).unwrap())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Reap(child);

    let stdout = child.0.stdout.take().unwrap();
    let (ready_tx, ready) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            // After the harness's "test child_entry ... " on the same line.
            if line.as_deref().is_ok_and(|l| l.ends_with("READY")) {
                let _ = ready_tx.send(());
            }
        }
    });
    ready
        .recv_timeout(Duration::from_secs(30))
        .expect("the proxy process never got ready");

    let mut client = outside.tcp_connect("127.0.0.1:7000".parse().unwrap());
    let mut reply = String::new();
    tokio::time::timeout(Duration::from_secs(30), client.read_to_string(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply, "uid=65534");

    kill(Pid::from_raw(child.0.id() as i32), Signal::SIGTERM).unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "still running after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "the proxy process exited with {status}");
    assert!(outside.run(|| std::net::TcpStream::connect("127.0.0.1:7000")).is_err());
}
