//! System tests of the file API (`/1.0/instances/{name}/files`) through a real corrald: raw
//! HTTP (curl), the real `lxc file` client (Debian's lxd-client) and `corral file`.
//!
//! What they check: transfers stream (a 100 MB round trip without the daemon's memory growing
//! by its size), directories, symlinks, modes and owners as the container sees them, append and
//! overwrite, delete, errors; and above all that no path, `..` or symlink (absolute or
//! relative) planted in the container reads or writes a host file. Root only; each test has its
//! own daemon and CORRAL_DIR, and its guard force-stops the containers and removes everything,
//! also when the test fails.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use corral_runtime::proto::ExecRequest;
use serde_json::Value;
use support::*;

/// A corrald with its own CORRAL_DIR, killed (and its containers force-stopped) on drop.
struct Daemon {
    dir: PathBuf,
    child: Option<Child>,
}

/// An HTTP answer as curl got it.
#[derive(Debug)]
struct Resp {
    code: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    #[track_caller]
    fn ok(self) -> Resp {
        assert_eq!(self.code, 200, "expected 200: {} {}", self.code, self.text());
        self
    }

    /// An error envelope with `code`, whose message contains `want`.
    #[track_caller]
    fn error(self, code: u16, want: &str) -> Resp {
        let v = self.json();
        assert_eq!(self.code, code, "{v}");
        assert_eq!(v["type"], "error", "{v}");
        assert_eq!(v["error_code"], code, "{v}");
        assert!(
            v["error"].as_str().unwrap_or("").contains(want),
            "error {:?} should mention {want:?}",
            v["error"]
        );
        self
    }
}

/// What a request sends.
enum Body<'a> {
    None,
    Bytes(&'a [u8]),
    /// Streamed from a file (curl -T).
    File(&'a Path),
}

static SCRATCH: AtomicU32 = AtomicU32::new(0);

/// Percent-encodes a query value (keeps `/`, as clients do).
fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn files_url(name: &str, path: &str) -> String {
    format!("/1.0/instances/{name}/files?path={}", enc(path))
}

impl Daemon {
    fn start(tag: &str) -> Daemon {
        let dir = std::env::temp_dir().join(format!("corrald-files-test-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let log = std::fs::File::create(dir.with_extension("log")).unwrap();
        let mut d = Daemon { dir, child: None };
        let child = Command::new(corrald())
            .env("CORRAL_DIR", &d.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("run corrald");
        d.child = Some(child);
        let ok = Command::new(corrald())
            .args(["waitready", "--timeout", "20"])
            .env("CORRAL_DIR", &d.dir)
            .status()
            .unwrap();
        assert!(ok.success(), "corrald did not come up");
        d
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("unix.socket")
    }

    /// A scratch path in the daemon's directory (removed with it).
    fn scratch(&self, tag: &str) -> PathBuf {
        let d = self.dir.join("scratch");
        std::fs::create_dir_all(&d).unwrap();
        d.join(format!("{}-{tag}", SCRATCH.fetch_add(1, Ordering::Relaxed)))
    }

    /// One request with curl. `out`: write the body there instead of keeping it.
    fn http(&self, method: &str, url: &str, headers: &[&str], body: Body, out: Option<&Path>) -> Resp {
        let hdr = self.scratch("headers");
        let body_file = self.scratch("body");
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-S", "--unix-socket"]).arg(self.socket());
        cmd.arg("-D").arg(&hdr).arg("-o").arg(out.unwrap_or(&body_file));
        cmd.args(["-w", "%{http_code}"]);
        if method == "HEAD" {
            cmd.arg("--head");
        } else {
            cmd.args(["-X", method]);
        }
        for h in headers {
            cmd.args(["-H", h]);
        }
        let sent = self.scratch("sent");
        match body {
            Body::None => {}
            Body::Bytes(b) => {
                std::fs::write(&sent, b).unwrap();
                cmd.arg("-H").arg("Content-Type: application/octet-stream");
                cmd.arg("--data-binary").arg(format!("@{}", sent.display()));
            }
            Body::File(f) => {
                cmd.arg("-H").arg("Content-Type: application/octet-stream");
                cmd.arg("-T").arg(f);
            }
        }
        let o = cmd.arg(format!("http://corral{url}")).output().expect("curl");
        let code = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap_or(0);
        let raw = std::fs::read_to_string(&hdr).unwrap_or_default();
        // The last header block (curl -T may have had a 100 Continue first).
        let block = raw
            .split("\r\n\r\n")
            .filter(|b| b.starts_with("HTTP/"))
            .last()
            .unwrap_or("");
        let headers = block
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let body = if out.is_some() || method == "HEAD" {
            Vec::new()
        } else {
            std::fs::read(&body_file).unwrap_or_default()
        };
        for f in [&hdr, &body_file, &sent] {
            let _ = std::fs::remove_file(f);
        }
        Resp { code, headers, body }
    }

    /// A HEAD request on a raw socket: the answer's head, and whatever came after it.
    fn raw_head(&self, url: &str) -> (String, Vec<u8>) {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(self.socket()).unwrap();
        write!(s, "HEAD {url} HTTP/1.1\r\nHost: corral\r\nConnection: close\r\n\r\n").unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        let end = all.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete head") + 4;
        (String::from_utf8_lossy(&all[..end]).into_owned(), all[end..].to_vec())
    }

    fn get_file(&self, name: &str, path: &str) -> Resp {
        self.http("GET", &files_url(name, path), &[], Body::None, None)
    }

    fn post_file(&self, name: &str, path: &str, headers: &[&str], body: &[u8]) -> Resp {
        self.http("POST", &files_url(name, path), headers, Body::Bytes(body), None)
    }

    fn delete_file(&self, name: &str, path: &str) -> Resp {
        self.http("DELETE", &files_url(name, path), &[], Body::None, None)
    }

    fn get(&self, url: &str) -> Value {
        let r = self.http("GET", url, &[], Body::None, None);
        assert_eq!(r.code, 200, "GET {url}: {}", r.text());
        r.json()["metadata"].clone()
    }

    /// A request answered by an operation; the operation once done.
    fn op(&self, method: &str, url: &str, body: &str) -> Value {
        let r = self.http(
            method,
            url,
            &["Content-Type: application/json"],
            Body::Bytes(body.as_bytes()),
            None,
        );
        assert_eq!(r.code, 202, "{method} {url}: {}", r.text());
        let id = r.json()["metadata"]["id"].as_str().unwrap().to_string();
        self.get(&format!("/1.0/operations/{id}/wait?timeout=60"))
    }

    /// Imports the busybox test image (packed here) as `bb`.
    fn import_busybox(&self, rootfs: &Path) {
        let image = self.dir.join("busybox.tar.gz");
        let meta = corral_image::ImageMetadata {
            architecture: corral_image::host_architecture().to_string(),
            creation_date: 1_700_000_000,
            properties: [("os", "BusyBox"), ("description", "BusyBox test image")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        corral_image::pack_unified(rootfs, &meta, None, &image, corral_image::Compression::Gzip).expect("pack busybox");
        let r = self.http("POST", "/1.0/images", &["X-LXD-aliases: bb"], Body::File(&image), None);
        assert_eq!(r.code, 202, "import: {}", r.text());
        let id = r.json()["metadata"]["id"].as_str().unwrap().to_string();
        let op = self.get(&format!("/1.0/operations/{id}/wait?timeout=60"));
        assert_eq!(op["status"], "Success", "import: {op}");
    }

    fn create(&self, name: &str) {
        let op = self.op(
            "POST",
            "/1.0/instances",
            &format!(r#"{{"name":"{name}","source":{{"type":"image","alias":"bb"}}}}"#),
        );
        assert_eq!(op["status"], "Success", "create {name}: {op}");
    }

    fn start_instance(&self, name: &str) {
        let op = self.op(
            "PUT",
            &format!("/1.0/instances/{name}/state"),
            r#"{"action":"start","timeout":-1}"#,
        );
        assert_eq!(op["status"], "Success", "start {name}: {op}");
    }

    /// The instance's root filesystem on the host.
    fn rootfs(&self, name: &str) -> PathBuf {
        self.dir
            .join("storage-pools/default/containers")
            .join(name)
            .join("rootfs")
    }

    /// Runs a shell command in the running instance `name`; its stdout, trimmed.
    #[track_caller]
    fn sh(&self, name: &str, script: &str) -> String {
        let c = corral_runtime::client::Client::new(&self.dir.join("run").join(name));
        let out = c
            .exec_output(&ExecRequest::new(&["/bin/sh", "-c", script]), b"")
            .expect("exec");
        assert_eq!(
            out.code,
            0,
            "{script:?} in {name}: stdout {:?} stderr {:?}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn lxc(&self, args: &[&str]) -> Output {
        Command::new("lxc")
            .args(args)
            .env("LXD_DIR", &self.dir)
            .stdin(Stdio::null())
            .output()
            .expect("lxc")
    }

    #[track_caller]
    fn lxc_ok(&self, args: &[&str]) -> String {
        let out = self.lxc(args);
        assert!(
            out.status.success(),
            "lxc {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        tear_down_daemon(&self.dir, self.child.take());
        let _ = std::fs::remove_file(self.dir.with_extension("log"));
    }
}

/// A host file or directory removed on drop (canaries).
struct HostPath(PathBuf);

impl Drop for HostPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().expect("sha256sum");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// A `VmRSS`/`VmHWM` line of /proc/<pid>/status, in kB.
fn vm_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim_start_matches(':').split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Root and the busybox rootfs, or a skip.
fn prerequisites(test: &str) -> Option<PathBuf> {
    let rootfs = require(test, "busybox")?;
    if !Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        skip(test, "needs curl");
        return None;
    }
    Some(rootfs)
}

/// 100 MB out and back, streamed: same bytes, and the daemon's peak memory does not grow by
/// anything like the file's size.
fn big_round_trip(d: &Daemon, name: &str) {
    let src = d.scratch("big");
    let out = Command::new("head")
        .args(["-c", "100M", "/dev/urandom"])
        .stdout(std::fs::File::create(&src).unwrap())
        .status()
        .unwrap();
    assert!(out.success());
    let pid = d.pid();
    // Reset the peak RSS (VmHWM) so that it measures this transfer only.
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
    let before = vm_kb(pid, "VmRSS");
    let r = d.http(
        "POST",
        &files_url(name, "/root/big"),
        &["X-LXD-uid: 1000", "X-LXD-gid: 1000", "X-LXD-mode: 0600"],
        Body::File(&src),
        None,
    );
    r.ok();
    let back = d.scratch("big-back");
    let r = d.http("GET", &files_url(name, "/root/big"), &[], Body::None, Some(&back));
    assert_eq!(r.code, 200);
    let peak = vm_kb(pid, "VmHWM");
    assert_eq!(r.header("Content-Length"), Some("104857600"));
    assert_eq!(r.header("Content-Type"), Some("application/octet-stream"));
    assert_eq!(r.header("X-LXD-type"), Some("file"));
    assert_eq!(r.header("X-LXD-mode"), Some("0600"));
    assert_eq!(r.header("X-LXD-uid"), Some("1000"));
    assert_eq!(r.header("X-Incus-gid"), Some("1000"));
    assert_eq!(sha256(&src), sha256(&back), "the file came back different");
    let grew = peak.saturating_sub(before);
    assert!(
        grew < 50 * 1024,
        "corrald's memory grew by {grew} kB while moving 100 MB (RSS {before} kB before, peak {peak} kB)"
    );
    // HEAD: the same headers, no body.
    let r = d.http("HEAD", &files_url(name, "/root/big"), &[], Body::None, None);
    assert_eq!(r.code, 200);
    assert_eq!(r.header("X-LXD-type"), Some("file"));
    assert_eq!(r.header("X-LXD-mode"), Some("0600"));
    assert_eq!(r.header("Content-Length"), Some("104857600"));
    let (head, rest) = d.raw_head(&files_url(name, "/root/big"));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(rest.is_empty(), "HEAD answered {} bytes of body", rest.len());
    let _ = std::fs::remove_file(&src);
    let _ = std::fs::remove_file(&back);
}

/// Everything but the big file, on `name`; `inside` checks what the container sees (running).
fn exercise(d: &Daemon, name: &str) {
    // Defaults: a new file is 0644 and root's.
    d.post_file(name, "/root/plain", &[], b"plain\n").ok();
    let r = d.get_file(name, "/root/plain").ok();
    assert_eq!(r.body, b"plain\n");
    assert_eq!(
        (r.header("X-LXD-mode"), r.header("X-LXD-uid"), r.header("X-LXD-gid")),
        (Some("0644"), Some("0"), Some("0"))
    );
    // Mode on an existing file: kept, unless modify-perm asks (LXD's behaviour).
    d.post_file(name, "/root/plain", &["X-LXD-mode: 0600"], b"plain\n").ok();
    assert_eq!(d.get_file(name, "/root/plain").header("X-LXD-mode"), Some("0644"));
    d.post_file(
        name,
        "/root/plain",
        &["X-LXD-mode: 0600", "X-LXD-uid: 7", "X-LXD-modify-perm: mode,uid"],
        b"plain\n",
    )
    .ok();
    let r = d.get_file(name, "/root/plain");
    assert_eq!(
        (r.header("X-LXD-mode"), r.header("X-LXD-uid")),
        (Some("0600"), Some("7"))
    );

    // Append and overwrite, with LXD's and Incus's headers.
    d.post_file(name, "/root/log", &[], b"one\n").ok();
    d.post_file(name, "/root/log", &["X-LXD-write: append"], b"two\n").ok();
    assert_eq!(d.get_file(name, "/root/log").body, b"one\ntwo\n");
    d.post_file(name, "/root/log", &["X-LXD-write: overwrite"], b"three\n")
        .ok();
    assert_eq!(d.get_file(name, "/root/log").body, b"three\n");
    d.post_file(name, "/root/log", &["X-Incus-write: append"], b"four\n")
        .ok();
    assert_eq!(d.get_file(name, "/root/log").body, b"three\nfour\n");
    d.post_file(name, "/root/new-by-append", &["X-LXD-write: append"], b"x")
        .ok();
    assert_eq!(d.get_file(name, "/root/new-by-append").body, b"x");

    // Directories: created with mode and owner, listed.
    d.post_file(
        name,
        "/root/d1",
        &[
            "X-LXD-type: directory",
            "X-LXD-mode: 0750",
            "X-LXD-uid: 1001",
            "X-LXD-gid: 1002",
        ],
        b"",
    )
    .ok();
    let r = d.get_file(name, "/root/d1").ok();
    assert_eq!(r.header("X-LXD-type"), Some("directory"));
    assert_eq!(
        (r.header("X-LXD-mode"), r.header("X-LXD-uid"), r.header("X-Incus-gid")),
        (Some("0750"), Some("1001"), Some("1002"))
    );
    assert_eq!(r.json()["type"], "sync");
    assert_eq!(r.json()["metadata"], serde_json::json!([]));
    d.post_file(name, "/root/d1/b", &["X-Incus-uid: 1001", "X-Incus-mode: 0640"], b"bee")
        .ok();
    d.post_file(name, "/root/d1/a", &[], b"ay").ok();
    assert_eq!(
        d.get_file(name, "/root/d1").json()["metadata"],
        serde_json::json!(["a", "b"])
    );
    // An existing directory is left as it is; a missing parent is a 404.
    d.post_file(name, "/root/d1", &["X-LXD-type: directory", "X-LXD-mode: 0700"], b"")
        .ok();
    assert_eq!(d.get_file(name, "/root/d1").header("X-LXD-mode"), Some("0750"));
    d.post_file(name, "/root/nope/sub", &["X-LXD-type: directory"], b"")
        .error(404, "/root/nope");
    d.post_file(name, "/root/d2", &["X-LXD-type: directory"], b"").ok();
    let r = d.get_file(name, "/root/d2");
    assert_eq!(
        (r.header("X-LXD-mode"), r.header("X-LXD-uid")),
        (Some("0755"), Some("0"))
    );
    let root = d.get_file(name, "/").ok();
    assert_eq!(root.header("X-LXD-type"), Some("directory"));
    let entries = root.json()["metadata"].clone();
    assert!(entries.as_array().unwrap().iter().any(|e| e == "etc"), "{entries}");

    // Symlinks: created, read back as their target (absolute, as LXD answers), followed when
    // they are a parent, followed (inside the root) when written through.
    d.post_file(name, "/root/d1/lnk", &["X-LXD-type: symlink"], b"a").ok();
    let r = d.get_file(name, "/root/d1/lnk").ok();
    assert_eq!(r.header("X-LXD-type"), Some("symlink"));
    assert_eq!(r.text(), "/root/d1/a");
    d.post_file(name, "/root/abs", &["X-LXD-type: symlink"], b"/etc/hostname")
        .ok();
    assert_eq!(d.get_file(name, "/root/abs").text(), "/etc/hostname");
    d.post_file(name, "/root/abs", &["X-LXD-type: symlink"], b"/etc/hostname")
        .ok();
    d.post_file(name, "/root/abs", &["X-LXD-type: symlink"], b"/etc/passwd")
        .error(409, "already exists");
    d.post_file(name, "/root/dl", &["X-LXD-type: symlink"], b"d1").ok();
    assert_eq!(d.get_file(name, "/root/dl/a").ok().body, b"ay");
    d.post_file(name, "/root/d1/lnk", &[], b"through the link").ok();
    assert_eq!(d.get_file(name, "/root/d1/a").body, b"through the link");
    assert_eq!(d.get_file(name, "/root/d1/lnk").header("X-LXD-type"), Some("symlink"));

    // A fifo is not opened (the daemon must not hang on it).
    nix::unistd::mkfifo(
        &d.rootfs(name).join("root/fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    d.get_file(name, "/root/fifo").error(400, "not a regular file");
    d.post_file(name, "/root/fifo", &[], b"x")
        .error(400, "not a regular file");

    // Errors.
    d.get_file(name, "/root/missing").error(404, "/root/missing");
    d.http(
        "GET",
        &format!("/1.0/instances/{name}/files?path="),
        &[],
        Body::None,
        None,
    )
    .error(400, "missing path");
    d.http("GET", &format!("/1.0/instances/{name}/files"), &[], Body::None, None)
        .error(400, "missing path");
    d.get_file("no-such-instance", "/etc/hostname").error(404, "not found");
    d.post_file(name, "/root/x", &["X-LXD-mode: 0999"], b"")
        .error(400, "mode");
    d.post_file(name, "/root/x", &["X-LXD-uid: 65536"], b"")
        .error(400, "uid");
    d.post_file(name, "/root/x", &["X-LXD-gid: abc"], b"").error(400, "gid");
    d.post_file(name, "/root/x", &["X-LXD-type: fifo"], b"")
        .error(400, "file type");
    d.post_file(name, "/root/x", &["X-LXD-write: truncate"], b"")
        .error(400, "write mode");
    d.post_file(name, "/root/d1", &[], b"x").error(400, "is a directory");
    d.post_file(name, "/root/s", &["X-LXD-type: symlink"], b"")
        .error(400, "symlink target");
    assert_eq!(d.get_file(name, "/root/x").code, 404, "a refused POST creates nothing");
    // LXD takes a path without its leading / from the root (lxc file pull sends such paths).
    assert_eq!(d.get_file(name, "root/log").ok().body, b"three\nfour\n");

    // Delete: a symlink (not its target), files, an empty directory; not a full one, not /.
    d.delete_file(name, "/root/d1/lnk").ok();
    assert_eq!(d.get_file(name, "/root/d1/lnk").code, 404);
    assert_eq!(d.get_file(name, "/root/d1/a").code, 200);
    d.delete_file(name, "/root/d1").error(400, "not empty");
    d.delete_file(name, "/root/d1/a").ok();
    d.delete_file(name, "/root/d1/b").ok();
    d.delete_file(name, "/root/d1/b").error(404, "/root/d1/b");
    d.delete_file(name, "/root/d1").ok();
    assert_eq!(d.get_file(name, "/root/d1").code, 404);
    d.delete_file(name, "/").error(400, "root directory");
    d.delete_file(name, "/root/fifo").ok();

    // Something for the container to see.
    d.post_file(
        name,
        "/root/seen",
        &["X-LXD-uid: 1234", "X-LXD-gid: 4321", "X-LXD-mode: 0604"],
        b"seen inside\n",
    )
    .ok();
    d.post_file(
        name,
        "/root/seendir",
        &[
            "X-LXD-type: directory",
            "X-LXD-uid: 1000",
            "X-LXD-gid: 1000",
            "X-LXD-mode: 0710",
        ],
        b"",
    )
    .ok();
    d.post_file(name, "/root/seendir/link", &["X-LXD-type: symlink"], b"../seen")
        .ok();
}

/// What [`exercise`] and [`big_round_trip`] left, as the running container `name` sees it.
fn check_inside(d: &Daemon, name: &str) {
    assert_eq!(
        d.sh(name, "stat -c '%u %g %a' /root/big /root/seen /root/seendir"),
        "1000 1000 600\n1234 4321 604\n1000 1000 710"
    );
    assert_eq!(d.sh(name, "stat -c %s /root/big /root/seen"), "104857600\n12");
    assert_eq!(d.sh(name, "cat /root/seendir/link"), "seen inside");
    assert_eq!(d.sh(name, "readlink /root/seendir/link"), "../seen");
    assert_eq!(d.sh(name, "cat /root/log"), "three\nfour");
    assert_eq!(d.sh(name, "test -e /root/d1 && echo there || echo gone"), "gone");
    // And the other way: what the container writes, the API reads with its owner.
    d.sh(
        name,
        "echo from-inside > /tmp/inside && chown 42:43 /tmp/inside && chmod 0620 /tmp/inside",
    );
    let r = d.get_file(name, "/tmp/inside").ok();
    assert_eq!(r.body, b"from-inside\n");
    assert_eq!(
        (r.header("X-LXD-uid"), r.header("X-LXD-gid"), r.header("X-LXD-mode")),
        (Some("42"), Some("43"), Some("0620"))
    );
}

#[test]
fn files_move_both_ways_on_stopped_and_running_instances() {
    let test = "files_move_both_ways_on_stopped_and_running_instances";
    let Some(rootfs) = prerequisites(test) else { return };
    let d = Daemon::start("api");
    d.import_busybox(&rootfs);
    d.create("stopped");
    d.create("running");
    d.start_instance("running");

    // The running instance: everything, and what it sees.
    big_round_trip(&d, "running");
    exercise(&d, "running");
    check_inside(&d, "running");

    // The stopped one: everything, then start it and look.
    big_round_trip(&d, "stopped");
    exercise(&d, "stopped");
    assert_eq!(d.get("/1.0/instances/stopped")["status"], "Stopped");
    d.start_instance("stopped");
    check_inside(&d, "stopped");
}

/// Symlinks the container's root may plant to reach the host, and paths climbing out: none
/// reads or writes outside the rootfs.
fn escapes(d: &Daemon, name: &str, running: bool, canary: &Path, canary_text: &[u8], fresh: &Path) {
    let rootfs = d.rootfs(name);
    let canary_s = canary.to_str().unwrap();
    let fresh_s = fresh.to_str().unwrap();
    let up = "../../../../../../../../../../../..";
    let links: Vec<(&str, String)> = vec![
        ("/root/shadow_abs", "/etc/shadow".into()),
        ("/root/shadow_rel", format!("{up}/etc/shadow")),
        ("/root/esc_rel", up.to_string()),
        ("/root/esc_abs", "/".into()),
        ("/root/tmp_abs", "/tmp".into()),
        ("/root/canary_abs", canary_s.to_string()),
        ("/root/canary_rel", format!("{up}{canary_s}")),
        ("/root/fresh_abs", fresh_s.to_string()),
        ("/root/fresh_rel", format!("{up}{fresh_s}")),
        ("/root/loop1", "/root/loop2".into()),
        ("/root/loop2", "/root/loop1".into()),
    ];
    for (link, target) in &links {
        if running {
            // Planted by the container itself.
            d.sh(name, &format!("ln -s '{target}' '{link}'"));
        } else {
            d.post_file(name, link, &["X-LXD-type: symlink"], target.as_bytes())
                .ok();
        }
    }
    let host_shadow = std::fs::read("/etc/shadow").unwrap_or_default();
    let own_shadow = std::fs::read(rootfs.join("etc/shadow")).unwrap();
    assert!(host_shadow != own_shadow, "the test needs the two shadows to differ");

    // Reads. A symlink itself answers its target's name, never the host's content.
    for link in ["/root/shadow_abs", "/root/shadow_rel"] {
        let r = d.get_file(name, link).ok();
        assert_eq!(r.header("X-LXD-type"), Some("symlink"));
        assert_eq!(r.text(), "/etc/shadow", "{link}");
    }
    // Through a symlinked parent, or climbing with `..`: the container's own /etc/shadow.
    for p in [
        "/root/esc_rel/etc/shadow",
        "/root/esc_abs/etc/shadow",
        "/../../../../etc/shadow",
        "/root/../../../etc/shadow",
        "../../etc/shadow",
    ] {
        let r = d.get_file(name, p);
        assert_eq!(r.code, 200, "{p}: {}", r.text());
        // (No assert_eq: a failure must not print the host's /etc/shadow.)
        assert!(r.body != host_shadow, "{p} read the host's /etc/shadow");
        assert!(r.body == own_shadow, "{p} is not the container's /etc/shadow");
    }
    // The host canary is not there to read.
    let canary_name = canary.file_name().unwrap().to_str().unwrap();
    for p in [
        format!("/root/esc_rel{canary_s}"),
        format!("/root/esc_abs{canary_s}"),
        format!("/root/tmp_abs/{canary_name}"),
        format!("/../../..{canary_s}"),
    ] {
        let r = d.get_file(name, &p);
        assert_eq!(r.code, 404, "{p}: {} {}", r.code, r.text());
        assert!(!r.body.windows(canary_text.len()).any(|w| w == canary_text));
    }
    d.get_file(name, "/root/loop1/x").error(400, "symbolic links");

    // Writes, through every route: they land inside the rootfs, the host is untouched.
    let writes = [
        "/root/canary_abs".to_string(),
        "/root/canary_rel".to_string(),
        format!("/root/esc_rel{canary_s}"),
        format!("/root/esc_abs{canary_s}"),
        format!("/root/tmp_abs/{canary_name}"),
        format!("/../../..{canary_s}"),
        "/root/fresh_abs".to_string(),
        "/root/fresh_rel".to_string(),
    ];
    for p in &writes {
        d.post_file(name, p, &[], b"PWNED").ok();
        d.post_file(name, p, &["X-LXD-write: append"], b"PWNED").ok();
        assert_eq!(
            std::fs::read(canary).unwrap(),
            canary_text,
            "POST {p} changed the host canary"
        );
        assert!(!fresh.exists(), "POST {p} created a host file");
    }
    assert_eq!(std::fs::read(rootfs.join(&canary_s[1..])).unwrap(), b"PWNEDPWNED");
    assert_eq!(std::fs::read(rootfs.join(&fresh_s[1..])).unwrap(), b"PWNEDPWNED");
    // Directories and symlinks created through an escaping parent are inside too.
    let fresh_dir = format!("{fresh_s}.d");
    d.post_file(
        name,
        &format!("/root/esc_rel{fresh_dir}"),
        &["X-LXD-type: directory"],
        b"",
    )
    .ok();
    d.post_file(
        name,
        &format!("/root/esc_abs{fresh_s}.l"),
        &["X-LXD-type: symlink"],
        b"/etc",
    )
    .ok();
    assert!(!Path::new(&fresh_dir).exists(), "a host directory was created");
    assert!(rootfs.join(&fresh_dir[1..]).is_dir());
    assert!(
        std::fs::symlink_metadata(format!("{fresh_s}.l")).is_err(),
        "a host symlink was created"
    );
    assert!(std::fs::symlink_metadata(rootfs.join(format!("{}.l", &fresh_s[1..]))).is_ok());
    // Ownership changes through a link change the file inside, not the host's.
    d.post_file(
        name,
        "/root/canary_abs",
        &["X-LXD-uid: 4242", "X-LXD-mode: 0777", "X-LXD-modify-perm: uid,mode"],
        b"",
    )
    .ok();
    use std::os::unix::fs::MetadataExt;
    let host_meta = std::fs::metadata(canary).unwrap();
    assert_eq!(
        (host_meta.uid(), host_meta.mode() & 0o777),
        (0, 0o600),
        "the host canary's owner or mode changed"
    );
    // Deletes through an escaping parent remove the copy inside, not the host's.
    d.delete_file(name, &format!("/root/esc_rel{canary_s}")).ok();
    d.delete_file(name, &format!("/root/tmp_abs/{canary_name}"))
        .error(404, canary_name);
    d.delete_file(name, "/root/canary_abs").ok();
    assert_eq!(
        std::fs::read(canary).unwrap(),
        canary_text,
        "a DELETE removed the host canary"
    );
    assert!(!fresh.exists());
}

#[test]
fn no_path_or_symlink_reaches_the_host() {
    let test = "no_path_or_symlink_reaches_the_host";
    let Some(rootfs) = prerequisites(test) else { return };
    let d = Daemon::start("escape");
    d.import_busybox(&rootfs);
    d.create("stopped");
    d.create("running");
    d.start_instance("running");
    for (name, running) in [("stopped", false), ("running", true)] {
        let tag = format!("{}-{name}-{}", std::process::id(), uuid_ish());
        let canary = HostPath(PathBuf::from(format!("/tmp/corral-files-canary-{tag}")));
        let fresh = HostPath(PathBuf::from(format!("/tmp/corral-files-fresh-{tag}")));
        let fresh_dir = HostPath(PathBuf::from(format!("/tmp/corral-files-fresh-{tag}.d")));
        let fresh_link = HostPath(PathBuf::from(format!("/tmp/corral-files-fresh-{tag}.l")));
        let text = format!("HOST CANARY {tag}\n").into_bytes();
        std::fs::write(&canary.0, &text).unwrap();
        std::fs::set_permissions(&canary.0, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        escapes(&d, name, running, &canary.0, &text, &fresh.0);
        drop((fresh_dir, fresh_link));
    }
    // An instance name that climbs is just a missing instance.
    let r = d.http(
        "GET",
        "/1.0/instances/..%2F..%2F..%2Fetc/files?path=/shadow",
        &[],
        Body::None,
        None,
    );
    assert_eq!(r.code, 404, "{}", r.text());
}

fn uuid_ish() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn write_tree(root: &Path) {
    std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
    std::fs::write(root.join("top.txt"), b"top\n").unwrap();
    std::fs::write(root.join("sub/mid.txt"), b"mid\n").unwrap();
    std::fs::write(root.join("sub/deeper/low.bin"), [0u8, 1, 2, 255]).unwrap();
    std::os::unix::fs::symlink("sub/mid.txt", root.join("link")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("sub/mid.txt"), std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn the_lxc_client_pushes_and_pulls_files() {
    let test = "the_lxc_client_pushes_and_pulls_files";
    let Some(rootfs) = prerequisites(test) else { return };
    if !Command::new("lxc")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        skip(test, "needs the lxc client (apt-get install lxd-client)");
        return;
    }
    let d = Daemon::start("lxc");
    d.import_busybox(&rootfs);
    d.create("c1");
    d.start_instance("c1");
    let work = d.scratch("lxc");
    std::fs::create_dir_all(&work).unwrap();

    // A big file both ways.
    let big = work.join("big");
    let st = Command::new("head")
        .args(["-c", "100M", "/dev/urandom"])
        .stdout(std::fs::File::create(&big).unwrap())
        .status()
        .unwrap();
    assert!(st.success());
    d.lxc_ok(&["file", "push", big.to_str().unwrap(), "c1/root/big"]);
    let back = work.join("big.back");
    d.lxc_ok(&["file", "pull", "c1/root/big", back.to_str().unwrap()]);
    assert_eq!(sha256(&big), sha256(&back));
    let _ = std::fs::remove_file(&big);
    let _ = std::fs::remove_file(&back);

    // Owner and mode: the local file's, or the flags'.
    let f = work.join("conf");
    std::fs::write(&f, b"key=value\n").unwrap();
    std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    d.lxc_ok(&["file", "push", f.to_str().unwrap(), "c1/root/conf"]);
    assert_eq!(
        d.sh("c1", "stat -c '%u %g %a' /root/conf; cat /root/conf"),
        "0 0 640\nkey=value"
    );
    d.lxc_ok(&[
        "file",
        "push",
        "--uid",
        "1000",
        "--gid",
        "1001",
        "--mode",
        "0600",
        f.to_str().unwrap(),
        "c1/root/conf2",
    ]);
    assert_eq!(d.sh("c1", "stat -c '%u %g %a' /root/conf2"), "1000 1001 600");
    // -p creates the parents; pull to a directory and to stdout.
    d.lxc_ok(&["file", "push", "-p", f.to_str().unwrap(), "c1/opt/a/b/conf"]);
    assert_eq!(d.sh("c1", "cat /opt/a/b/conf"), "key=value");
    let pulled = work.join("pulled");
    std::fs::create_dir_all(&pulled).unwrap();
    d.lxc_ok(&["file", "pull", "c1/opt/a/b/conf", pulled.to_str().unwrap()]);
    assert_eq!(std::fs::read(pulled.join("conf")).unwrap(), b"key=value\n");
    assert_eq!(
        d.lxc_ok(&["file", "pull", "c1/etc/hostname", "-"]).as_bytes(),
        std::fs::read(d.rootfs("c1").join("etc/hostname")).unwrap()
    );

    // Trees, with a symlink, both ways.
    let tree = work.join("tree");
    write_tree(&tree);
    d.lxc_ok(&["file", "push", "-r", "-p", tree.to_str().unwrap(), "c1/srv/"]);
    assert_eq!(
        d.sh(
            "c1",
            "cat /srv/tree/sub/mid.txt; readlink /srv/tree/link; stat -c %a /srv/tree/sub/mid.txt"
        ),
        "mid\nsub/mid.txt\n600"
    );
    let copy = work.join("copy");
    d.lxc_ok(&["file", "pull", "-r", "c1/srv/tree", copy.to_str().unwrap()]);
    for rel in ["top.txt", "sub/mid.txt", "sub/deeper/low.bin"] {
        assert_eq!(
            std::fs::read(copy.join("tree").join(rel)).unwrap(),
            std::fs::read(tree.join(rel)).unwrap(),
            "{rel}"
        );
    }
    assert!(std::fs::symlink_metadata(copy.join("tree/link"))
        .unwrap()
        .file_type()
        .is_symlink());

    // Delete, and errors as lxc shows them.
    d.lxc_ok(&["file", "delete", "c1/root/conf2"]);
    let out = d.lxc(&["file", "pull", "c1/root/conf2", work.join("x").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"), "{out:?}");
    let out = d.lxc(&["file", "delete", "c1/srv/tree"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"), "{out:?}");
}

#[test]
fn the_corral_cli_pushes_pulls_edits_and_deletes_files() {
    let test = "the_corral_cli_pushes_pulls_edits_and_deletes_files";
    let Some(rootfs) = prerequisites(test) else { return };
    let corral = corrald().with_file_name("corral");
    if !corral.is_file() {
        skip(
            test,
            &format!(
                "needs the corral CLI built at {} (cargo build --workspace)",
                corral.display()
            ),
        );
        return;
    }
    let d = Daemon::start("cli");
    let run = |args: &[&str], stdin: Option<&[u8]>, env: &[(&str, &str)]| -> Output {
        let mut cmd = Command::new(&corral);
        cmd.args(args).env("CORRAL_DIR", &d.dir);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("corral");
        if let Some(input) = stdin {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(input).unwrap();
        }
        child.wait_with_output().unwrap()
    };
    let ok = |args: &[&str]| -> String {
        let out = run(args, None, &[]);
        assert!(
            out.status.success(),
            "corral {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    d.import_busybox(&rootfs);
    d.create("c1");
    d.start_instance("c1");
    let work = d.scratch("cli");
    std::fs::create_dir_all(&work).unwrap();

    // A big file both ways.
    let big = work.join("big");
    let st = Command::new("head")
        .args(["-c", "100M", "/dev/urandom"])
        .stdout(std::fs::File::create(&big).unwrap())
        .status()
        .unwrap();
    assert!(st.success());
    ok(&["file", "push", big.to_str().unwrap(), "c1/root/"]);
    let back = work.join("big.back");
    ok(&["file", "pull", "c1/root/big", back.to_str().unwrap()]);
    assert_eq!(sha256(&big), sha256(&back));
    let _ = std::fs::remove_file(&big);
    let _ = std::fs::remove_file(&back);

    // Mode and owner: the local file's unless given; given ones change an existing file too.
    let f = work.join("conf");
    std::fs::write(&f, b"a=1\n").unwrap();
    std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o604)).unwrap();
    ok(&["file", "push", f.to_str().unwrap(), "c1/root/conf"]);
    assert_eq!(d.sh("c1", "stat -c '%u %g %a' /root/conf"), "0 0 604");
    ok(&[
        "file",
        "push",
        "--uid",
        "5",
        "--gid",
        "6",
        "--mode",
        "640",
        f.to_str().unwrap(),
        "c1/root/conf",
    ]);
    assert_eq!(d.sh("c1", "stat -c '%u %g %a' /root/conf"), "5 6 640");
    ok(&["file", "push", "-p", f.to_str().unwrap(), "c1/var/lib/app/x/conf"]);
    assert_eq!(d.sh("c1", "cat /var/lib/app/x/conf"), "a=1");
    assert_eq!(ok(&["file", "pull", "c1/root/conf", "-"]), "a=1\n");
    // From stdin.
    let out = run(&["file", "push", "-", "c1/root/stdin"], Some(b"from stdin\n"), &[]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(d.sh("c1", "cat /root/stdin"), "from stdin");

    // Trees.
    let tree = work.join("tree");
    write_tree(&tree);
    ok(&["file", "push", "-r", "-p", tree.to_str().unwrap(), "c1/srv/data"]);
    assert_eq!(
        d.sh(
            "c1",
            "cat /srv/data/tree/top.txt; readlink /srv/data/tree/link; stat -c %a /srv/data/tree/sub/mid.txt"
        ),
        "top\nsub/mid.txt\n600"
    );
    let copy = work.join("copy");
    ok(&["file", "pull", "-r", "c1/srv/data/tree", copy.to_str().unwrap()]);
    for rel in ["top.txt", "sub/mid.txt", "sub/deeper/low.bin"] {
        assert_eq!(
            std::fs::read(copy.join("tree").join(rel)).unwrap(),
            std::fs::read(tree.join(rel)).unwrap(),
            "{rel}"
        );
    }
    // A symlink pulled without -r is a symlink; with a file target, its content.
    let link_copy = work.join("link-copy");
    ok(&["file", "pull", "c1/srv/data/tree/link", link_copy.to_str().unwrap()]);
    assert!(std::fs::symlink_metadata(&link_copy).unwrap().file_type().is_symlink());
    assert_eq!(ok(&["file", "pull", "c1/srv/data/tree/link", "-"]), "mid\n");

    // Edit: with stdin (not a terminal), the file is replaced, keeping mode and owner.
    let out = run(&["file", "edit", "c1/root/conf"], Some(b"a=2\n"), &[]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        d.sh("c1", "cat /root/conf; stat -c '%u %g %a' /root/conf"),
        "a=2\n5 6 640"
    );
    // With a terminal: $EDITOR runs on a copy, which goes back only if it changed.
    if Command::new("script")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        let cmd = format!("{} file edit c1/root/conf", corral.display());
        let out = Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .env("CORRAL_DIR", &d.dir)
            .env("EDITOR", "sed -i s/a=2/a=3/")
            .env_remove("VISUAL")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(d.sh("c1", "cat /root/conf; stat -c '%a' /root/conf"), "a=3\n640");
    }

    // Delete and errors.
    ok(&["file", "delete", "c1/root/conf", "c1/root/stdin"]);
    let out = run(&["file", "pull", "c1/root/conf", "-"], None, &[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/root/conf: not found"),
        "{out:?}"
    );
    let out = run(&["file", "delete", "c1/srv/data"], None, &[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"), "{out:?}");
    let out = run(
        &["file", "pull", "c1/srv/data", work.join("d").to_str().unwrap()],
        None,
        &[],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("use -r"), "{out:?}");
}
