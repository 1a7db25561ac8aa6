//! API benchmark: runs its own corrald (release build beside this example) in a temporary
//! CORRAL_DIR and prints JSON figures: GET /1.0 and GET /1.0/instances?recursion=1 rates on one
//! keep-alive connection, launch and exec latencies, `corral list` time, daemon RSS.
//!
//! `cargo run --release --example bench_api -- BUSYBOX_ROOTFS` (see scripts/bench-api.sh).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// One keep-alive HTTP/1.1 connection to the daemon.
struct Conn {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Conn {
    fn open(socket: &Path) -> Conn {
        let s = UnixStream::connect(socket).expect("connect");
        Conn {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
        }
    }

    fn request(&mut self, method: &str, path: &str, body: &str) -> Value {
        // One write per request, as an HTTP client library sends it: `write!` on the bare
        // socket would make a system call per piece and wake the daemon for half a request.
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: corral\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.writer.write_all(req.as_bytes()).unwrap();
        let mut len = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line).unwrap();
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut buf = vec![0u8; len];
        self.reader.read_exact(&mut buf).unwrap();
        serde_json::from_slice(&buf).unwrap_or(Value::Null)
    }

    fn wait(&mut self, resp: &Value) -> Value {
        let id = resp["metadata"]["id"].as_str().expect("an operation").to_string();
        let op = self.request("GET", &format!("/1.0/operations/{id}/wait?timeout=60"), "");
        assert_eq!(op["metadata"]["status"], "Success", "{op}");
        op
    }

    fn rate(&mut self, path: &str, n: usize) -> f64 {
        let t = Instant::now();
        for _ in 0..n {
            self.request("GET", path, "");
        }
        (n as f64 / t.elapsed().as_secs_f64()).round()
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 100_000.0).round() / 100.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let rootfs = PathBuf::from(std::env::args().nth(1).expect("usage: bench_api BUSYBOX_ROOTFS"));
    let bin = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let dir = std::env::temp_dir().join(format!("corral-bench-api-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut daemon = Command::new(bin.join("corrald"))
        .env("CORRAL_DIR", &dir)
        .stderr(Stdio::null())
        .spawn()
        .expect("run corrald");
    let ready = Command::new(bin.join("corrald"))
        .args(["waitready"])
        .env("CORRAL_DIR", &dir)
        .status()
        .unwrap();
    assert!(ready.success());
    let socket = dir.join("unix.socket");
    let mut c = Conn::open(&socket);

    let image = dir.join("busybox.tar.gz");
    let meta = corral_image::ImageMetadata {
        architecture: corral_image::host_architecture().into(),
        ..Default::default()
    };
    corral_image::pack_unified(&rootfs, &meta, None, &image, corral_image::Compression::Gzip).unwrap();
    let out = Command::new("curl")
        .args(["-s", "--unix-socket"])
        .arg(&socket)
        .args(["-X", "POST", "-H", "X-LXD-aliases: busybox", "--data-binary"])
        .arg(format!("@{}", image.display()))
        .arg("http://corral/1.0/images")
        .output()
        .unwrap();
    c.wait(&serde_json::from_slice(&out.stdout).unwrap());

    let rss_idle = rss_kib(daemon.id());
    let get_root = c.rate("/1.0", 5000);

    let mut launches = Vec::new();
    for i in 0..20 {
        let t = Instant::now();
        let r = c.request(
            "POST",
            "/1.0/instances",
            &format!(r#"{{"name":"b{i}","source":{{"type":"image","alias":"busybox"}}}}"#),
        );
        c.wait(&r);
        let r = c.request("PUT", &format!("/1.0/instances/b{i}/state"), r#"{"action":"start"}"#);
        c.wait(&r);
        launches.push(ms(t.elapsed()));
        if i == 0 {
            // One instance: the list figures LXD's numbers are quoted for.
            let one = c.rate("/1.0/instances?recursion=1", 2000);
            println!("{{\"instances_recursion1_req_per_s_1\": {one}}}");
        }
    }
    let twenty = c.rate("/1.0/instances?recursion=1", 1000);
    let mut execs = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        let r = c.request(
            "POST",
            "/1.0/instances/b0/exec",
            r#"{"command":["true"],"wait-for-websocket":false}"#,
        );
        c.wait(&r);
        execs.push(ms(t.elapsed()));
    }
    let corral = bin.join("corral");
    let list_ms = corral.exists().then(|| {
        let runs: Vec<f64> = (0..10)
            .map(|_| {
                let t = Instant::now();
                let ok = Command::new(&corral)
                    .arg("list")
                    .env("CORRAL_DIR", &dir)
                    .stdout(Stdio::null())
                    .status()
                    .unwrap();
                assert!(ok.success());
                ms(t.elapsed())
            })
            .collect();
        median(runs)
    });
    let rss_20 = rss_kib(daemon.id());

    for i in 0..20 {
        let r = c.request(
            "PUT",
            &format!("/1.0/instances/b{i}/state"),
            r#"{"action":"stop","force":true}"#,
        );
        c.wait(&r);
        let r = c.request("DELETE", &format!("/1.0/instances/b{i}"), "");
        c.wait(&r);
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
    let _ = std::fs::remove_dir_all(&dir);

    let json = serde_json::json!({
        "get_1_0_req_per_s": get_root,
        "instances_recursion1_req_per_s_20_running": twenty,
        "launch_busybox_ms_median": median(launches),
        "exec_true_api_ms_median": median(execs),
        "corral_list_20_running_ms_median": list_ms,
        "daemon_rss_kib_idle": rss_idle,
        "daemon_rss_kib_20_running": rss_20,
    });
    println!("{}", serde_json::to_string_pretty(&json).unwrap());
}
