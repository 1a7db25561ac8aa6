//! A test corrald with its own CORRAL_DIR, and the requests tests make of it (raw HTTP with
//! curl, the `lxc` client, the `corral` CLI). Killed, with its containers force-stopped, on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

use super::{corrald, daemon_log, tear_down_daemon};

/// Each test daemon runs in a network namespace of its own, made for it and deleted with it:
/// its bridges, nftables tables and dnsmasq live there, never on the host's network, and two
/// tests may both have a `corralbr0`.
pub struct TestDaemon {
    pub dir: PathBuf,
    child: Option<Child>,
    /// The name under /run/netns.
    pub netns: String,
    /// Extra environment of the daemon.
    env: Vec<(String, String)>,
}

/// An HTTP answer as curl got it.
#[derive(Debug)]
pub struct Answer {
    pub code: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The error text of an error envelope.
    pub fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or_default().to_string()
    }
}

/// What a request sends as its body.
pub enum Body<'a> {
    None,
    Json(&'a str),
    File(&'a Path),
    Bytes(&'a [u8]),
}

impl TestDaemon {
    pub fn start(tag: &str) -> TestDaemon {
        TestDaemon::start_with_env(tag, &[])
    }

    /// [`TestDaemon::start`] with extra environment for the daemon (kept across
    /// [`TestDaemon::spawn`]).
    pub fn start_with_env(tag: &str, env: &[(&str, &str)]) -> TestDaemon {
        let dir = std::env::temp_dir().join(format!("corrald-test-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let netns = format!("corral-test-{}-{tag}", std::process::id());
        let _ = Command::new("ip").args(["netns", "delete", &netns]).output();
        let made = Command::new("ip")
            .args(["netns", "add", &netns])
            .output()
            .expect("ip netns add");
        assert!(
            made.status.success(),
            "ip netns add {netns}: {}",
            String::from_utf8_lossy(&made.stderr)
        );
        let mut d = TestDaemon {
            dir,
            child: None,
            netns,
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        d.in_netns_ok(&["ip", "link", "set", "lo", "up"]);
        d.spawn();
        d
    }

    /// Runs a shell script in a container through the CLI: its exit code and stdout.
    pub fn sh(&self, name: &str, script: &str) -> (i32, String) {
        let out = self.corral(&["exec", name, "--", "sh", "-c", script]);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// Runs a command inside the daemon's network namespace.
    pub fn in_netns(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .args(args)
            .output()
            .expect("nsenter")
    }

    /// [`TestDaemon::in_netns`], which must succeed; its stdout.
    pub fn in_netns_ok(&self, args: &[&str]) -> String {
        let out = self.in_netns(args);
        assert!(
            out.status.success(),
            "{args:?} in {}: {}",
            self.netns,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts (again) the daemon process on this directory and waits until it answers.
    pub fn spawn(&mut self) {
        // nsenter execs corrald (no fork for a network namespace): the child is the daemon.
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg(corrald())
            .env("CORRAL_DIR", &self.dir)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(daemon_log(&self.dir))
            .spawn()
            .expect("run corrald");
        self.child = Some(child);
        let ok = Command::new(corrald())
            .args(["waitready", "--timeout", "20"])
            .env("CORRAL_DIR", &self.dir)
            .status()
            .unwrap();
        assert!(ok.success(), "corrald did not come up");
    }

    /// kill -9, as a crash would.
    pub fn crash(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("unix.socket")
    }

    /// One HTTP request with curl.
    pub fn call(&self, method: &str, path: &str, headers: &[&str], body: Body) -> Answer {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-i", "--unix-socket"])
            .arg(self.socket())
            .args(["-X", method]);
        for h in headers {
            cmd.args(["-H", h]);
        }
        match body {
            Body::None => {}
            Body::Json(b) => {
                if !headers
                    .iter()
                    .any(|h| h.to_ascii_lowercase().starts_with("content-type"))
                {
                    cmd.args(["-H", "Content-Type: application/json"]);
                }
                cmd.args(["--data-binary", b]);
            }
            Body::File(p) => {
                if !headers
                    .iter()
                    .any(|h| h.to_ascii_lowercase().starts_with("content-type"))
                {
                    cmd.args(["-H", "Content-Type: application/octet-stream"]);
                }
                cmd.arg("--data-binary").arg(format!("@{}", p.display()));
            }
            Body::Bytes(b) => {
                cmd.args(["-H", "Content-Type: application/octet-stream", "--data-binary", "@-"])
                    .stdin(Stdio::piped());
                let mut child = cmd
                    .arg(format!("http://corral{path}"))
                    .stdout(Stdio::piped())
                    .spawn()
                    .expect("curl");
                std::io::Write::write_all(&mut child.stdin.take().unwrap(), b).unwrap();
                return parse_answer(&child.wait_with_output().expect("curl").stdout);
            }
        }
        parse_answer(&cmd.arg(format!("http://corral{path}")).output().expect("curl").stdout)
    }

    /// A JSON request: status and body.
    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let a = self.call(method, path, &[], body.map(Body::Json).unwrap_or(Body::None));
        (a.code, a.json())
    }

    /// A request with extra headers (`"If-Match: \"3\""`): status and JSON body.
    pub fn request_with(&self, method: &str, path: &str, body: Option<&str>, headers: &[&str]) -> (u16, Value) {
        let a = self.call(method, path, headers, body.map(Body::Json).unwrap_or(Body::None));
        (a.code, a.json())
    }

    /// `GET` that must answer 200; the metadata.
    pub fn get(&self, path: &str) -> Value {
        let a = self.call("GET", path, &[], Body::None);
        assert_eq!(a.code, 200, "GET {path}: {}", String::from_utf8_lossy(&a.body));
        a.json()["metadata"].clone()
    }

    /// A request that must succeed with `code`; its metadata.
    pub fn ok(&self, method: &str, path: &str, body: &str, code: u16) -> Value {
        let a = self.call(method, path, &[], Body::Json(body));
        assert_eq!(
            a.code,
            code,
            "{method} {path} {body}: {}",
            String::from_utf8_lossy(&a.body)
        );
        a.json()["metadata"].clone()
    }

    /// A request that must fail with `code` and an error containing `want`.
    pub fn refused(&self, method: &str, path: &str, body: Option<&str>, code: u16, want: &str) {
        let a = self.call(method, path, &[], body.map(Body::Json).unwrap_or(Body::None));
        let v = a.json();
        assert_eq!(
            (a.code, v["type"].as_str(), v["error_code"].as_u64()),
            (code, Some("error"), Some(u64::from(code))),
            "{method} {path} {body:?}: {v}"
        );
        assert!(
            a.error().contains(want),
            "{method} {path} {body:?}: {:?} lacks {want:?}",
            a.error()
        );
    }

    /// Waits for the operation a 202 answer started; the final operation.
    pub fn wait(&self, a: &Answer) -> Value {
        assert_eq!(a.code, 202, "{}", String::from_utf8_lossy(&a.body));
        let id = a.json()["metadata"]["id"].as_str().unwrap().to_string();
        self.get(&format!("/1.0/operations/{id}/wait?timeout=120"))
    }

    /// A request answered by an operation; the final operation (whatever its status).
    pub fn op(&self, method: &str, path: &str, body: &str) -> Value {
        self.wait(&self.call(method, path, &[], Body::Json(body)))
    }

    /// A request answered by an operation that must succeed.
    pub fn op_ok(&self, method: &str, path: &str, body: &str) -> Value {
        let op = self.op(method, path, body);
        assert_eq!(op["status"], "Success", "{method} {path} {body}: {op}");
        op
    }

    /// Creates instance `name` from the `busybox` alias (instance config `config`, a JSON
    /// object) with eth0 on the bridge `ctbr`, writes `files` (path, content) into it, and
    /// starts it.
    pub fn start_busybox_on_ctbr(&self, name: &str, config: &str, files: &[(&str, &[u8])]) {
        let body = format!(
            r#"{{"name":"{name}","source":{{"type":"image","alias":"busybox"}},"config":{config},
                 "devices":{{"eth0":{{"type":"nic","network":"ctbr","name":"eth0"}}}}}}"#
        );
        self.op_ok("POST", "/1.0/instances", &body);
        for (path, data) in files {
            let a = self.call(
                "POST",
                &format!("/1.0/instances/{name}/files?path={path}"),
                &[],
                Body::Bytes(data),
            );
            assert_eq!(a.code, 200, "{path}: {}", a.error());
        }
        self.op_ok("PUT", &format!("/1.0/instances/{name}/state"), r#"{"action":"start"}"#);
    }

    /// Imports a unified image file under `alias`; its fingerprint.
    pub fn import(&self, image: &Path, alias: &str) -> String {
        let alias = format!("X-LXD-aliases: {alias}");
        let op = self.wait(&self.call("POST", "/1.0/images", &[&alias], Body::File(image)));
        assert_eq!(op["status"], "Success", "import: {op}");
        op["metadata"]["fingerprint"].as_str().unwrap().to_string()
    }

    /// Creates and starts a container from `alias`.
    pub fn launch(&self, name: &str, alias: &str) {
        self.op_ok(
            "POST",
            "/1.0/instances",
            &format!(r#"{{"name":"{name}","source":{{"type":"image","alias":"{alias}"}}}}"#),
        );
        self.op_ok(
            "PUT",
            &format!("/1.0/instances/{name}/state"),
            r#"{"action":"start","timeout":30}"#,
        );
    }

    /// The `lxc` client pointed at this daemon.
    pub fn lxc(&self, args: &[&str]) -> Output {
        Command::new("lxc")
            .args(args)
            .env("LXD_DIR", &self.dir)
            .stdin(Stdio::null())
            .output()
            .expect("lxc")
    }

    pub fn lxc_ok(&self, args: &[&str]) -> String {
        let out = self.lxc(args);
        assert!(
            out.status.success(),
            "lxc {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The `corral` CLI pointed at this daemon.
    pub fn corral(&self, args: &[&str]) -> Output {
        Command::new(corral_cli())
            .args(args)
            .env("CORRAL_DIR", &self.dir)
            .stdin(Stdio::null())
            .output()
            .expect("corral")
    }

    pub fn corral_ok(&self, args: &[&str]) -> String {
        let out = self.corral(args);
        assert!(
            out.status.success(),
            "corral {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// The `corral` binary, built next to corrald.
pub fn corral_cli() -> PathBuf {
    corrald().with_file_name("corral")
}

fn parse_answer(raw: &[u8]) -> Answer {
    // curl -i prints every response's head; an interim `100 Continue` comes first.
    let mut rest = raw;
    loop {
        let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") else {
            return Answer {
                code: 0,
                headers: Vec::new(),
                body: rest.to_vec(),
            };
        };
        let head = String::from_utf8_lossy(&rest[..end]).into_owned();
        rest = &rest[end + 4..];
        let mut lines = head.lines();
        let code: u16 = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        if code == 100 {
            continue;
        }
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        return Answer {
            code,
            headers,
            body: rest.to_vec(),
        };
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        tear_down_daemon(&self.dir, self.child.take());
        let _ = Command::new("ip").args(["netns", "delete", &self.netns]).output();
    }
}
