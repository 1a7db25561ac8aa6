//! End-to-end tests of the `corral` CLI against a real corrald.
//!
//! Each test starts its own daemon in a fresh `CORRAL_DIR`, imports a busybox image packed from
//! the test rootfs (/var/cache/corral/test-images/busybox/rootfs), drives the CLI and checks its
//! output and exit codes. A guard deletes every instance (`corral delete -f`), stops any
//! container left behind, stops the daemon and removes the directory, also when a test fails.
//!
//! They need root, corrald built next to `corral` (target/debug/corrald: `cargo build
//! --workspace`) and the busybox test rootfs; without them they print `SKIP ...` and pass, unless
//! `CORRAL_REQUIRED_TESTS=1`, when a missing prerequisite fails the test.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BUSYBOX_ROOTFS: &str = "/var/cache/corral/test-images/busybox/rootfs";
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

fn corral_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_corral"))
}

/// corrald, built into the same target directory as `corral`.
fn corrald_bin() -> Option<PathBuf> {
    let beside_corral = corral_bin().parent().map(|d| d.join("corrald"));
    // target/debug/deps/cli-<hash> -> target/debug/corrald
    let beside_test = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent()?.parent().map(|d| d.join("corrald")));
    [beside_corral, beside_test].into_iter().flatten().find(|p| p.is_file())
}

/// Why the tests can't run here, if they can't.
fn missing_prerequisite() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not running as root".into());
    }
    if corrald_bin().is_none() {
        return Some(format!(
            "corrald is not built next to {} (run `cargo build -p corrald` or `cargo build --workspace`)",
            corral_bin().display()
        ));
    }
    if !Path::new(BUSYBOX_ROOTFS).join("bin").exists() {
        return Some(format!("the busybox test rootfs {BUSYBOX_ROOTFS} is missing"));
    }
    None
}

/// Skips (returns `true`) when a prerequisite is missing; panics instead under
/// `CORRAL_REQUIRED_TESTS=1`.
fn skip(test: &str) -> bool {
    let Some(why) = missing_prerequisite() else {
        return false;
    };
    if std::env::var("CORRAL_REQUIRED_TESTS").as_deref() == Ok("1") {
        panic!("{test}: {why} (CORRAL_REQUIRED_TESTS=1)");
    }
    println!("SKIP {test}: {why}");
    true
}

/// What a command did.
#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    #[track_caller]
    fn ok(self) -> Out {
        assert_eq!(self.code, 0, "command failed: {self:?}");
        self
    }

    #[track_caller]
    fn fails_with(self, message: &str) -> Out {
        assert_eq!(self.code, 1, "expected exit code 1: {self:?}");
        assert!(
            self.stderr.starts_with("Error: ") && self.stderr.contains(message),
            "expected `Error: ...{message}...` on stderr: {self:?}"
        );
        self
    }

    /// A refusal by the argument parser (exit code 2), or another code.
    #[track_caller]
    fn fails_with_code(self, code: i32, message: &str) -> Out {
        assert_eq!(self.code, code, "expected exit code {code}: {self:?}");
        assert!(
            self.stderr.contains(message),
            "expected {message:?} on stderr: {self:?}"
        );
        self
    }
}

fn code_of(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Runs `cmd` with `input` on stdin, at most `timeout`; kills it and panics past that.
fn run(mut cmd: Command, input: Option<Vec<u8>>, timeout: Duration) -> Out {
    cmd.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let desc = format!("{cmd:?}");
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run {desc}: {e}"));
    let stdin = child.stdin.take();
    let feeder = std::thread::spawn(move || {
        if let (Some(mut s), Some(data)) = (stdin, input) {
            let _ = s.write_all(&data);
        }
    });
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let status = wait_timeout(&mut child, timeout).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{desc} did not finish within {timeout:?}");
    });
    let _ = feeder.join();
    Out {
        code: code_of(status),
        stdout: String::from_utf8_lossy(&out_reader.join().unwrap_or_default()).into_owned(),
        stderr: String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned(),
    }
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A corrald of our own, in its own directory; cleans everything up on drop.
struct Daemon {
    dir: PathBuf,
    corrald: PathBuf,
    child: Child,
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

impl Daemon {
    fn start() -> Daemon {
        let corrald = corrald_bin().expect("corrald is built");
        // Short: the socket path must fit in sun_path.
        let dir = PathBuf::from(format!(
            "/tmp/corral-cli-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the daemon's directory");
        let log = std::fs::File::create(dir.join("corrald.log")).expect("create the daemon log");
        let child = Command::new(&corrald)
            .env("CORRAL_DIR", &dir)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup the log"))
            .stderr(log)
            .spawn()
            .expect("start corrald");
        let d = Daemon { dir, corrald, child };
        let mut wait = Command::new(&d.corrald);
        wait.env("CORRAL_DIR", &d.dir).args(["waitready", "--timeout", "30"]);
        let out = run(wait, None, Duration::from_secs(60));
        assert_eq!(out.code, 0, "corrald did not become ready: {out:?}\n{}", d.log());
        d
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("corrald.log")).unwrap_or_default()
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(corral_bin());
        // A client configuration of its own: no remotes but `local`.
        c.env("CORRAL_DIR", &self.dir)
            .env("CORRAL_CONF", self.dir.join("client"))
            .env_remove("TERM");
        c
    }

    fn corral(&self, args: &[&str]) -> Out {
        let mut c = self.cmd();
        c.args(args);
        run(c, None, COMMAND_TIMEOUT)
    }

    fn corral_stdin(&self, args: &[&str], input: &[u8]) -> Out {
        let mut c = self.cmd();
        c.args(args);
        run(c, Some(input.to_vec()), COMMAND_TIMEOUT)
    }

    /// Packs the busybox rootfs into an image in our directory and imports it as `alias`;
    /// returns its fingerprint.
    fn import_busybox(&self, alias: &str) -> String {
        let image = self.dir.join("busybox.tar.gz");
        let mut metadata = corral_image::ImageMetadata {
            architecture: corral_image::host_architecture().to_string(),
            creation_date: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0),
            ..Default::default()
        };
        for (k, v) in [
            ("os", "BusyBox"),
            ("release", "1.35"),
            ("description", "busybox test image"),
        ] {
            metadata.properties.insert(k.into(), v.into());
        }
        let fp = corral_image::pack_unified(
            Path::new(BUSYBOX_ROOTFS),
            &metadata,
            None,
            &image,
            corral_image::Compression::Gzip,
        )
        .expect("pack the busybox image");
        let out = self
            .corral(&["image", "import", image.to_str().expect("utf-8 path"), "--alias", alias])
            .ok();
        assert_eq!(out.stdout, format!("Image imported with fingerprint: {fp}\n"));
        let _ = std::fs::remove_file(&image);
        fp
    }

    fn instance_names(&self) -> Vec<String> {
        let out = self.corral(&["list", "-f", "csv", "-c", "n"]);
        out.stdout
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect()
    }

    fn status_of(&self, name: &str) -> String {
        let out = self.corral(&["list", "-f", "csv", "-c", "ns", name]).ok();
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name},")).map(str::to_string))
            .unwrap_or_default()
    }
}

impl Daemon {
    /// Stops corrald (SIGTERM), as an admin would; the instances are left to the guard.
    fn stop_daemon(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        if wait_timeout(&mut self.child, Duration::from_secs(30)).is_none() {
            panic!("corrald did not stop within 30s of SIGTERM");
        }
    }
}

/// A `corral monitor` running in the background, its output read line by line; killed on drop.
struct Monitor {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Monitor {
    fn spawn(d: &Daemon, args: &[&str]) -> Monitor {
        let mut c = d.cmd();
        c.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("run corral monitor");
        let stdout = child.stdout.take().expect("stdout");
        let mut stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        Monitor {
            child,
            lines,
            stderr: Some(stderr),
        }
    }

    /// Changes the default profile until the monitor shows something: it is then subscribed
    /// (it connects in the background). Drops what it showed.
    fn wait_subscribed(&mut self, d: &Daemon) {
        for i in 0..50 {
            d.corral(&["profile", "set", "default", &format!("user.ping={i}")]).ok();
            if self.lines.recv_timeout(Duration::from_millis(200)).is_ok() {
                while self.lines.recv_timeout(Duration::from_millis(300)).is_ok() {}
                return;
            }
        }
        panic!("corral monitor showed nothing for 50 profile changes");
    }

    /// The lines shown until one for which `found` holds (included), within `timeout`.
    #[track_caller]
    fn until(&self, timeout: Duration, found: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let done = found(&line);
                    seen.push(line);
                    if done {
                        return seen;
                    }
                }
                Err(_) => {
                    panic!("corral monitor did not show the line expected within {timeout:?}; it showed {seen:#?}")
                }
            }
        }
    }

    /// Waits for the monitor to end by itself: its exit code and stderr.
    fn exit(mut self, timeout: Duration) -> (i32, String) {
        let status = wait_timeout(&mut self.child, timeout)
            .unwrap_or_else(|| panic!("corral monitor still runs after {timeout:?}"));
        let stderr = self.stderr.take().and_then(|t| t.join().ok()).unwrap_or_default();
        (code_of(status), stderr)
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- corrald log ({}) ---\n{}", self.dir.display(), self.log());
        }
        // Every instance, through the API.
        for name in self.instance_names() {
            let mut c = self.cmd();
            c.args(["delete", "-f", &name]);
            let out = run(c, None, Duration::from_secs(60));
            if out.code != 0 {
                eprintln!("cleanup: corral delete -f {name}: {out:?}");
            }
        }
        // Whatever is still running, straight through its monitor: containers outlive corrald.
        let run_root = self.dir.join("run");
        if let Ok(entries) = std::fs::read_dir(&run_root) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let mut c = Command::new(&self.corrald);
                c.env("CORRAL_RUN_DIR", &run_root)
                    .args(["container", "stop", "--force", "--timeout", "5", &name]);
                let _ = run(c, None, Duration::from_secs(30));
            }
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        if wait_timeout(&mut self.child, Duration::from_secs(15)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("cleanup: cannot remove {}: {e}", self.dir.display());
        }
    }
}

#[test]
fn unreachable_daemon_is_a_clear_error() {
    let mut c = Command::new(corral_bin());
    c.env("CORRAL_DIR", "/nonexistent/corral-cli-test").arg("list");
    let out = run(c, None, Duration::from_secs(30));
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(
        out.stderr,
        "Error: cannot reach corrald at /nonexistent/corral-cli-test/unix.socket: is it running? (start it with \
         `corrald`)\n"
    );
    let mut c = Command::new(corral_bin());
    c.env("CORRAL_DIR", "/nonexistent/corral-cli-test").arg("version");
    let out = run(c, None, Duration::from_secs(30)).ok();
    assert!(out.stdout.contains("Server version: unreachable"), "{out:?}");
}

/// `corral network`'s help and the argument errors it finds before reaching the daemon.
#[test]
fn network_help_and_argument_errors() {
    let corral = |args: &[&str]| {
        let mut c = Command::new(corral_bin());
        c.env("CORRAL_DIR", "/nonexistent/corral-cli-test").args(args);
        run(c, None, Duration::from_secs(30))
    };
    let out = corral(&["network", "--help"]).ok();
    for verb in [
        "list",
        "show",
        "create",
        "delete",
        "edit",
        "get",
        "set",
        "unset",
        "rename",
        "info",
        "list-leases",
        "attach",
        "attach-profile",
        "detach",
        "detach-profile",
        "forward",
    ] {
        assert!(out.stdout.contains(&format!("\n  {verb} ")), "no {verb} in {out:?}");
    }
    let out = corral(&["network", "forward", "port", "--help"]).ok();
    assert!(
        out.stdout.contains("\n  add ") && out.stdout.contains("\n  remove "),
        "{out:?}"
    );

    corral(&["network", "attach", "br0"]).fails_with_code(2, "<INSTANCE>");
    corral(&["network", "create", "br0", "--type", "ovn"]).fails_with_code(2, "[possible values: bridge, macvlan]");
    corral(&["network", "create", "br0", "ipv4.address"])
        .fails_with("Bad key=value pair: ipv4.address: give options as KEY=VALUE");
    corral(&["network", "set", "br0", "a=1", "b"]).fails_with("Invalid key=value configuration: \"b\"");
    let port_add = |rest: &[&str]| corral(&[&["network", "forward", "port", "add", "br0", "192.0.2.1"], rest].concat());
    port_add(&["sctp", "80", "10.0.0.2"]).fails_with("Invalid protocol \"sctp\": use tcp or udp");
    port_add(&["tcp", "80,http", "10.0.0.2"]).fails_with("Invalid port \"http\" in \"80,http\"");
    corral(&["network", "show", "prod:br0"]).fails_with("Remote \"prod\" doesn't exist");
    // Valid arguments get as far as the daemon.
    corral(&["network", "list"]).fails_with("cannot reach corrald");
}

/// `corral storage`'s help and the argument errors it finds before reaching the daemon.
#[test]
fn storage_help_and_argument_errors() {
    let corral = |args: &[&str]| {
        let mut c = Command::new(corral_bin());
        c.env("CORRAL_DIR", "/nonexistent/corral-cli-test").args(args);
        run(c, None, Duration::from_secs(30))
    };
    let out = corral(&["storage", "--help"]).ok();
    for verb in [
        "list", "show", "create", "delete", "edit", "get", "set", "unset", "info", "volume",
    ] {
        assert!(out.stdout.contains(&format!("\n  {verb} ")), "no {verb} in {out:?}");
    }
    let out = corral(&["storage", "volume", "--help"]).ok();
    for verb in [
        "list",
        "create",
        "delete",
        "show",
        "edit",
        "get",
        "set",
        "unset",
        "info",
        "rename",
        "copy",
        "snapshot",
        "restore",
        "attach",
        "attach-profile",
        "detach",
        "detach-profile",
    ] {
        assert!(out.stdout.contains(&format!("\n  {verb} ")), "no {verb} in {out:?}");
    }
    let out = corral(&["storage", "volume", "attach", "--help"]).ok();
    assert!(
        out.stdout
            .contains("corral storage volume attach <POOL> <VOLUME> <INSTANCE> [DEVICE] <PATH>"),
        "{out:?}"
    );

    corral(&["storage", "volume", "attach", "fast", "data", "c1"]).fails_with_code(2, "<DEVICE | PATH>");
    corral(&["storage", "create", "fast"]).fails_with_code(2, "<DRIVER>");
    corral(&["storage", "volume", "create", "fast", "v", "--type", "iso"])
        .fails_with_code(2, "[possible values: filesystem, block]");
    corral(&["storage", "create", "fast", "btrfs", "size"])
        .fails_with("Bad key=value pair: size: give options as KEY=VALUE (e.g. size=10GiB)");
    corral(&["storage", "set", "fast", "a=1", "b"]).fails_with("Invalid key=value configuration: \"b\"");
    corral(&["storage", "volume", "create", "fast", "a/b"])
        .fails_with("Invalid volume name \"a/b\": a '/' separates a volume from its snapshot");
    corral(&["storage", "volume", "create", "fast", "image/x"])
        .fails_with("Only \"custom\" volumes can be created: image/x is a image volume");
    corral(&["storage", "volume", "set", "fast", "data/snap0", "size=1GiB"])
        .fails_with("Snapshots are read-only and can't have their configuration changed");
    corral(&["storage", "volume", "list", "fast", "-c", "nx"])
        .fails_with("Unknown column shorthand char 'x' in \"nx\"");
    corral(&["storage", "volume", "copy", "data", "fast/data2"])
        .fails_with("No storage pool for source volume specified in \"data\": give it as POOL/VOLUME");
    corral(&["storage", "volume", "rename", "fast", "data/s1", "other/s2"])
        .fails_with("Invalid new snapshot name \"other/s2\": the parent volume must be the same");
    corral(&["storage", "show", "prod:fast"]).fails_with("Remote \"prod\" doesn't exist");
    // Valid arguments get as far as the daemon.
    corral(&["storage", "list"]).fails_with("cannot reach corrald");
    corral(&["storage", "volume", "list", "fast"]).fails_with("cannot reach corrald");
}

#[test]
fn lifecycle() {
    if skip("lifecycle") {
        return;
    }
    let d = Daemon::start();
    let fp = d.import_busybox("busybox");
    assert_eq!(fp.len(), 64);

    let out = d.corral(&["image", "list", "-f", "csv"]).ok();
    assert!(
        out.stdout
            .starts_with(&format!("busybox,{},no,busybox test image,", &fp[..12])),
        "{out:?}"
    );

    let out = d.corral(&["launch", "busybox", "c1", "-c", "user.role=web"]).ok();
    assert_eq!(out.stdout, "Creating c1\nStarting c1\n");
    assert_eq!(d.status_of("c1"), "RUNNING");

    // Every list format.
    let out = d.corral(&["list"]).ok();
    assert_eq!(
        out.stdout,
        "+------+---------+------+------+-----------+-----------+\n\
         | NAME |  STATE  | IPV4 | IPV6 |   TYPE    | SNAPSHOTS |\n\
         +------+---------+------+------+-----------+-----------+\n\
         | c1   | RUNNING |      |      | CONTAINER | 0         |\n\
         +------+---------+------+------+-----------+-----------+\n"
    );
    let out = d.corral(&["list", "--format", "csv"]).ok();
    assert_eq!(out.stdout, "c1,RUNNING,,,CONTAINER,0\n");
    let out = d.corral(&["list", "--format", "json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("list -f json is JSON");
    assert_eq!(v[0]["name"], "c1");
    assert_eq!(v[0]["status"], "Running");
    assert!(v[0]["state"]["pid"].as_i64().unwrap_or(0) > 0, "{v}");
    let out = d.corral(&["list", "--format", "yaml"]).ok();
    assert!(
        out.stdout.contains("name: c1\n") && out.stdout.contains("status: Running\n"),
        "{out:?}"
    );
    let out = d.corral(&["list", "--format", "compact"]).ok();
    assert!(out.stdout.starts_with("  NAME  STATE"), "{out:?}");
    assert!(out.stdout.contains("  c1    RUNNING"), "{out:?}");
    // Filters.
    assert_eq!(
        d.corral(&["list", "-f", "csv", "-c", "n", "status=running"])
            .ok()
            .stdout,
        "c1\n"
    );
    assert_eq!(
        d.corral(&["list", "-f", "csv", "-c", "n", "status=stopped"])
            .ok()
            .stdout,
        ""
    );
    assert_eq!(
        d.corral(&["list", "-f", "csv", "-c", "n", "user.role=web"]).ok().stdout,
        "c1\n"
    );
    assert_eq!(d.corral(&["list", "-f", "csv", "-c", "n", "zz"]).ok().stdout, "");
    d.corral(&["list", "-c", "nq"])
        .fails_with("Unknown column shorthand char 'q' in 'nq'");

    let out = d.corral(&["info", "c1"]).ok();
    assert!(
        out.stdout.starts_with("Name: c1\nStatus: RUNNING\nType: container\n"),
        "{out:?}"
    );
    assert!(
        out.stdout.contains("\nPID: ") && out.stdout.contains("  Processes: "),
        "{out:?}"
    );
    assert!(out.stdout.contains("    Memory (current): "), "{out:?}");

    // State changes.
    d.corral(&["stop", "c1"]).ok();
    assert_eq!(d.status_of("c1"), "STOPPED");
    d.corral(&["stop", "c1"]).fails_with("already stopped");
    d.corral(&["start", "c1"]).ok();
    assert_eq!(d.status_of("c1"), "RUNNING");
    d.corral(&["restart", "c1", "--timeout", "30"]).ok();
    assert_eq!(d.status_of("c1"), "RUNNING");
    d.corral(&["pause", "c1"]).ok();
    assert_eq!(d.status_of("c1"), "FROZEN");
    d.corral(&["resume", "c1"]).ok();
    assert_eq!(d.status_of("c1"), "RUNNING");
    d.corral(&["stop", "-f", "c1"]).ok();
    assert_eq!(d.status_of("c1"), "STOPPED");

    // Rename (stopped), then delete.
    d.corral(&["rename", "c1", "c2"]).ok();
    assert_eq!(d.instance_names(), ["c2"]);
    d.corral(&["info", "c1"]).fails_with("Instance not found: c1");
    // Snapshot, restore, copy.
    d.corral(&["snapshot", "c2", "s0"]).ok();
    d.corral(&["snapshot", "c2", "s0"]).fails_with("already exists");
    d.corral(&["restore", "c2", "s0"]).ok();
    d.corral(&["restore", "c2", "nope"]).fails_with("Snapshot not found");
    d.corral(&["copy", "c2", "c3"]).ok();
    d.corral(&["copy", "c2/s0", "c4", "--instance-only"]).ok();
    assert_eq!(d.instance_names(), ["c2", "c3", "c4"]);
    d.corral(&["delete", "c3", "c4"]).ok();
    d.corral(&["start", "c2"]).ok();
    d.corral(&["delete", "c2"]).fails_with("running");
    d.corral(&["delete", "-f", "c2"]).ok();
    assert!(d.instance_names().is_empty());

    // init (not started), a generated name, an ephemeral instance.
    let out = d.corral(&["init", &fp[..12], "i1"]).ok();
    assert_eq!(out.stdout, "Creating i1\n");
    assert_eq!(d.status_of("i1"), "STOPPED");
    let out = d.corral(&["launch", "busybox"]).ok();
    let name = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("Instance name is: "))
        .unwrap_or_else(|| panic!("no generated name: {out:?}"))
        .to_string();
    assert!(name.contains('-'), "{name}");
    assert_eq!(
        out.stdout,
        format!("Creating the instance\nInstance name is: {name}\nStarting {name}\n")
    );
    assert_eq!(d.status_of(&name), "RUNNING");
    d.corral(&["launch", "busybox", "e1", "--ephemeral"]).ok();
    assert_eq!(
        d.corral(&["list", "-f", "csv", "-c", "nt", "e1"]).ok().stdout,
        "e1,CONTAINER (EPHEMERAL)\n"
    );
    d.corral(&["stop", "e1"]).ok();
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.instance_names().contains(&"e1".to_string()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !d.instance_names().contains(&"e1".to_string()),
        "ephemeral e1 survived its stop"
    );
    d.corral(&["delete", "-f", &name, "i1"]).ok();
    assert!(d.instance_names().is_empty());

    // Bad input.
    d.corral(&["launch", "nosuch", "x1"]).fails_with("not found");
    d.corral(&["launch", "busybox", "x2", "-p", "nosuch"])
        .fails_with("Profile not found: nosuch");
    d.corral(&["launch", "busybox", "x3", "-c", "nonsense"])
        .fails_with("Bad key=value pair: nonsense");
    d.corral(&["start", "ghost"]).fails_with("Instance not found: ghost");
}

#[test]
fn exec() {
    if skip("exec") {
        return;
    }
    let d = Daemon::start();
    d.import_busybox("busybox");
    d.corral(&["launch", "busybox", "x1"]).ok();

    // Exit codes, stdout and stderr apart.
    let out = d.corral(&["exec", "x1", "--", "sh", "-c", "echo out; echo err >&2; exit 7"]);
    assert_eq!(
        (out.code, out.stdout.as_str(), out.stderr.as_str()),
        (7, "out\n", "err\n")
    );
    assert_eq!(d.corral(&["exec", "x1", "--", "true"]).ok().stdout, "");
    assert_eq!(d.corral(&["exec", "x1", "--", "false"]).code, 1);
    // Without `--`.
    assert_eq!(d.corral(&["exec", "x1", "echo", "-n", "plain"]).ok().stdout, "plain");

    // stdin: small, empty, and big (binary, both ways).
    assert_eq!(
        d.corral_stdin(&["exec", "x1", "--", "cat"], b"hello\n").ok().stdout,
        "hello\n"
    );
    assert_eq!(
        d.corral_stdin(&["exec", "x1", "--", "wc", "-c"], b"")
            .ok()
            .stdout
            .trim(),
        "0"
    );
    let big: Vec<u8> = (0..2_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let out = d.corral_stdin(&["exec", "x1", "--", "wc", "-c"], &big).ok();
    assert_eq!(out.stdout.trim(), "2000000");
    let mut c = d.cmd();
    c.args(["exec", "x1", "--", "cat"]);
    c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null());
    let mut child = c.spawn().expect("run corral exec cat");
    let mut stdin = child.stdin.take().expect("stdin");
    let data = big.clone();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let mut echoed = Vec::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_end(&mut echoed)
        .expect("read");
    feeder.join().expect("feeder");
    assert!(child.wait().expect("wait").success());
    assert!(
        echoed == big,
        "cat gave back {} bytes, not the 2000000 sent",
        echoed.len()
    );

    // Environment, directory, user and group.
    let out = d
        .corral(&[
            "exec",
            "x1",
            "--env",
            "FOO=bar baz",
            "--cwd",
            "/tmp",
            "--",
            "sh",
            "-c",
            "echo \"$FOO\"; pwd",
        ])
        .ok();
    assert_eq!(out.stdout, "bar baz\n/tmp\n");
    assert_eq!(
        d.corral(&[
            "exec",
            "x1",
            "--user",
            "1000",
            "--group",
            "1001",
            "--",
            "sh",
            "-c",
            "id -u; id -g"
        ])
        .ok()
        .stdout,
        "1000\n1001\n"
    );

    // A missing command, a missing instance, a stopped one.
    assert_eq!(d.corral(&["exec", "x1", "--", "/no/such/command"]).code, 127);
    d.corral(&["exec", "ghost", "--", "true"])
        .fails_with("Instance not found: ghost");

    // A terminal (-t) without one of ours: the command still gets a pty.
    let out = d.corral(&["exec", "x1", "-t", "--", "sh", "-c", "tty; stty size; exit 3"]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stdout.contains("/dev/pts/"), "{out:?}");
    assert!(out.stdout.contains("24 80"), "{out:?}");
    // End of our input ends the command's terminal input (^D).
    let out = d.corral_stdin(&["exec", "x1", "-t", "--", "cat"], b"typed\n");
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("typed\r\n"), "{out:?}");
    let out = d.corral_stdin(&["shell", "x1"], b"echo in-shell; exit 4\n");
    assert_eq!((out.code, out.stdout.trim()), (4, "in-shell"), "{out:?}");

    // SIGINT and SIGTERM are forwarded to the command.
    for (signal, expected) in [
        (nix::sys::signal::Signal::SIGINT, 130),
        (nix::sys::signal::Signal::SIGTERM, 143),
    ] {
        let mut c = d.cmd();
        c.args(["exec", "x1", "--", "sh", "-c", "echo started; exec sleep 60"]);
        c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = c.spawn().expect("run corral exec sleep");
        let mut stdout = child.stdout.take().expect("stdout");
        let mut first = [0u8; 8];
        stdout.read_exact(&mut first).expect("the command started");
        assert_eq!(&first, b"started\n");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, signal).expect("signal corral");
        let status = wait_timeout(&mut child, Duration::from_secs(20)).unwrap_or_else(|| {
            let _ = child.kill();
            panic!("{signal:?} was not forwarded: corral exec still runs")
        });
        assert_eq!(code_of(status), expected, "after {signal:?}");
    }

    d.corral(&["stop", "-f", "x1"]).ok();
    d.corral(&["exec", "x1", "--", "true"]).fails_with("not running");
}

#[test]
fn config() {
    if skip("config") {
        return;
    }
    let d = Daemon::start();
    d.import_busybox("busybox");
    d.corral(&["init", "busybox", "k1"]).ok();

    d.corral(&["config", "set", "k1", "limits.memory", "256MiB"]).ok();
    d.corral(&["config", "set", "k1", "user.a=1", "user.b=two words"]).ok();
    assert_eq!(
        d.corral(&["config", "get", "k1", "limits.memory"]).ok().stdout,
        "256MiB\n"
    );
    assert_eq!(d.corral(&["config", "get", "k1", "user.b"]).ok().stdout, "two words\n");
    assert_eq!(d.corral(&["config", "get", "k1", "user.unset"]).ok().stdout, "\n");
    let out = d.corral(&["config", "show", "k1"]).ok();
    assert!(out.stdout.contains("  limits.memory: 256MiB\n"), "{out:?}");
    assert!(out.stdout.contains("profiles:\n- default\n"), "{out:?}");
    let out = d.corral(&["config", "show", "k1", "--expanded"]).ok();
    assert!(out.stdout.contains("  root:\n"), "{out:?}");

    // Bad keys and values are refused, with the daemon's reason.
    d.corral(&["config", "set", "k1", "limits.bogus", "1"])
        .fails_with("limits.bogus");
    d.corral(&["config", "set", "k1", "limits.memory", "lots"])
        .fails_with("limits.memory");
    d.corral(&["config", "set", "k1", "a", "b", "c"])
        .fails_with("Invalid number of arguments");
    assert_eq!(
        d.corral(&["config", "get", "k1", "limits.memory"]).ok().stdout,
        "256MiB\n"
    );

    d.corral(&["config", "unset", "k1", "user.a"]).ok();
    let out = d.corral(&["config", "show", "k1"]).ok();
    assert!(!out.stdout.contains("user.a"), "{out:?}");
    assert!(out.stdout.contains("user.b"), "{out:?}");
    d.corral(&["config", "unset", "k1", "user.a"]).fails_with("user.a");
    d.corral(&["config", "get", "nope", "user.a"])
        .fails_with("Instance not found: nope");

    // Options set at creation.
    d.corral(&["init", "busybox", "k2", "-c", "user.x=y", "-c", "limits.cpu=1"])
        .ok();
    assert_eq!(d.corral(&["config", "get", "k2", "user.x"]).ok().stdout, "y\n");
    d.corral(&["init", "busybox", "k3", "-c", "limits.nope=1"])
        .fails_with("limits.nope");
    assert_eq!(d.instance_names(), ["k1", "k2"]);
}

#[test]
fn images_and_the_rest() {
    if skip("images_and_the_rest") {
        return;
    }
    let d = Daemon::start();
    let fp = d.import_busybox("bb");

    // Importing the same image again is refused.
    let again = d.dir.join("again.tar.gz");
    let metadata = corral_image::ImageMetadata {
        architecture: corral_image::host_architecture().to_string(),
        creation_date: 1,
        ..Default::default()
    };
    corral_image::pack_unified(
        Path::new(BUSYBOX_ROOTFS),
        &metadata,
        None,
        &again,
        corral_image::Compression::Gzip,
    )
    .expect("pack");
    let out = d
        .corral(&["image", "import", again.to_str().expect("utf-8"), "--alias", "bb-old"])
        .ok();
    let fp2 = out.stdout.trim().rsplit(' ').next().unwrap_or_default().to_string();
    assert_eq!(fp2.len(), 64, "{out:?}");
    d.corral(&["image", "import", again.to_str().expect("utf-8")])
        .fails_with("already exists");
    d.corral(&["image", "import", "/nonexistent.tar.xz"])
        .fails_with("/nonexistent.tar.xz");

    // Aliases.
    d.corral(&["image", "alias", "create", "bb2", &fp[..8]]).ok();
    d.corral(&["image", "alias", "create", "bb2", "bb"])
        .fails_with("already exists");
    let out = d.corral(&["image", "alias", "list", "-f", "csv"]).ok();
    assert_eq!(
        out.stdout,
        format!(
            "bb,{0},CONTAINER,\nbb-old,{1},CONTAINER,\nbb2,{0},CONTAINER,\n",
            &fp[..12],
            &fp2[..12]
        )
    );
    d.corral(&["image", "alias", "delete", "bb2"]).ok();
    d.corral(&["image", "alias", "delete", "bb2"]).fails_with("not found");
    let out = d.corral(&["image", "show", "bb"]).ok();
    assert!(out.stdout.contains(&format!("fingerprint: {fp}\n")), "{out:?}");
    let out = d.corral(&["image", "list", "-f", "json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(v.as_array().map(Vec::len), Some(2), "{v}");

    // Delete by alias, then by fingerprint prefix.
    d.corral(&["image", "delete", "bb-old"]).ok();
    d.corral(&["image", "delete", &fp[..10]]).ok();
    assert_eq!(d.corral(&["image", "list", "-f", "csv"]).ok().stdout, "");
    d.corral(&["image", "delete", "bb"]).fails_with("not found");

    // version, query, profile, storage, operation.
    let out = d.corral(&["version"]).ok();
    assert!(
        out.stdout.starts_with("Client version: ") && out.stdout.contains("\nServer version: "),
        "{out:?}"
    );
    assert!(!out.stdout.contains("unreachable"), "{out:?}");
    let out = d.corral(&["query", "/1.0"]).ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("query prints JSON");
    assert_eq!(v["api_version"], "1.0");
    let out = d.corral(&["query", "/1.0/instances"]).ok();
    assert_eq!(out.stdout.trim(), "[]");
    d.corral(&["query", "/1.0/instances/ghost"])
        .fails_with("Instance not found: ghost");
    d.corral(&["query", "1.0"]).fails_with("must start with /");
    let out = d.corral(&["profile", "list", "-f", "csv"]).ok();
    assert!(out.stdout.starts_with("default,"), "{out:?}");
    let out = d.corral(&["profile", "show", "default"]).ok();
    assert!(out.stdout.contains("name: default\n"), "{out:?}");
    d.corral(&["profile", "show", "nope"]).fails_with("not found");
    let out = d.corral(&["storage", "list", "-f", "csv"]).ok();
    assert!(out.stdout.starts_with("default,dir,"), "{out:?}");
    let out = d.corral(&["operation", "list", "-f", "json"]).ok();
    let ops: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    let id = ops
        .as_array()
        .and_then(|a| a.first())
        .and_then(|o| o["id"].as_str())
        .unwrap_or_else(|| panic!("no operations listed after imports: {ops}"))
        .to_string();
    let out = d.corral(&["operation", "show", &id]).ok();
    assert!(out.stdout.contains(&format!("id: {id}\n")), "{out:?}");

    // Completion scripts.
    let out = d.corral(&["completion", "bash"]).ok();
    assert!(out.stdout.contains("_corral()"), "{out:?}");
}

#[test]
fn monitor() {
    if skip("monitor") {
        return;
    }
    let d = Daemon::start();
    d.import_busybox("busybox");
    d.corral(&["init", "busybox", "m1"]).ok();

    // JSON, one event a line: the start of m1 is a lifecycle event.
    let mut json = Monitor::spawn(&d, &["monitor", "--format", "json"]);
    json.wait_subscribed(&d);
    // Pretty, lifecycle events only.
    let mut pretty = Monitor::spawn(&d, &["monitor", "--pretty", "--type", "lifecycle"]);
    pretty.wait_subscribed(&d);
    // YAML, the default.
    let mut yaml = Monitor::spawn(&d, &["monitor", "local:"]);
    yaml.wait_subscribed(&d);

    d.corral(&["start", "m1"]).ok();
    let seen = json.until(Duration::from_secs(30), |line| {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("monitor printed a line that is not JSON ({e}): {line}"));
        v["type"] == "lifecycle"
            && v["metadata"]["action"] == "instance-started"
            && v["metadata"]["source"] == "/1.0/instances/m1"
    });
    assert!(
        seen.iter().any(|l| l.contains(r#""type":"operation""#)),
        "no operation event around the start: {seen:#?}"
    );
    let seen = pretty.until(Duration::from_secs(30), |l| {
        l.contains(" lifecycle instance-started /1.0/instances/m1")
    });
    assert!(
        seen.iter().all(|l| l.split(' ').nth(1) == Some("lifecycle")),
        "--type lifecycle let other events through: {seen:#?}"
    );
    let seen = yaml.until(Duration::from_secs(30), |l| l == "  action: instance-started");
    assert!(seen.iter().any(|l| l == "---"), "{seen:#?}");
    // The rest of that document: keys in order, `type` last.
    let rest = yaml.until(Duration::from_secs(10), |l| l.starts_with("type: "));
    assert_eq!(rest.last().map(String::as_str), Some("type: lifecycle"), "{rest:#?}");
    drop((json, pretty, yaml));

    // A bad type is refused before anything runs; an unknown remote too.
    d.corral(&["monitor", "--type", "nope"])
        .fails_with_code(2, "invalid value 'nope'");
    d.corral(&["monitor", "prod:"])
        .fails_with("Remote \"prod\" doesn't exist");

    // corrald going away ends the monitor with an error that says so.
    let mut gone = Daemon::start();
    let mut mon = Monitor::spawn(&gone, &["monitor", "--format", "json"]);
    mon.wait_subscribed(&gone);
    gone.stop_daemon();
    let (code, stderr) = mon.exit(Duration::from_secs(30));
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.starts_with("Error: corrald closed the event stream") && stderr.contains("stopped"),
        "{stderr}"
    );
}

#[test]
fn config_edit_and_devices() {
    if skip("config_edit_and_devices") {
        return;
    }
    let d = Daemon::start();
    d.import_busybox("busybox");
    d.corral(&["init", "busybox", "e1", "-c", "user.a=before"]).ok();

    // `config edit` with the YAML on stdin: what `config show` prints, a key changed.
    let shown = d.corral(&["config", "show", "e1"]).ok().stdout;
    assert!(shown.contains("  user.a: before\n"), "{shown}");
    let edited = shown.replace("user.a: before", "user.a: after");
    d.corral_stdin(&["config", "edit", "e1"], edited.as_bytes()).ok();
    assert_eq!(d.corral(&["config", "get", "e1", "user.a"]).ok().stdout, "after\n");
    // A bad key: the daemon's error, a failure, nothing changed.
    let bad = shown.replace("user.a: before", "limits.bogus: \"1\"");
    d.corral_stdin(&["config", "edit", "e1"], bad.as_bytes())
        .fails_with("limits.bogus");
    d.corral_stdin(&["config", "edit", "e1"], b"config: [not, a, map]\n")
        .fails_with("not an instance configuration");
    assert_eq!(d.corral(&["config", "get", "e1", "user.a"]).ok().stdout, "after\n");

    // Devices: add, list, show, set, get, unset, remove.
    let share = d.dir.join("share");
    std::fs::create_dir_all(&share).expect("create the shared directory");
    let source = format!("source={}", share.display());
    let out = d
        .corral(&["config", "device", "add", "e1", "data", "disk", &source, "path=/mnt/x"])
        .ok();
    assert_eq!(out.stdout, "Device data added to e1\n");
    d.corral(&["config", "device", "add", "e1", "data", "none"])
        .fails_with("The device already exists");
    assert_eq!(d.corral(&["config", "device", "list", "e1"]).ok().stdout, "data\n");
    assert_eq!(
        d.corral(&["config", "device", "show", "e1"]).ok().stdout,
        format!("data:\n  path: /mnt/x\n  source: {}\n  type: disk\n", share.display())
    );
    d.corral(&["config", "device", "set", "e1", "data", "readonly=true"])
        .ok();
    d.corral(&["config", "device", "set", "e1", "data", "path", "/mnt/y"])
        .ok();
    assert_eq!(
        d.corral(&["config", "device", "get", "e1", "data", "readonly"])
            .ok()
            .stdout,
        "true\n"
    );
    assert_eq!(
        d.corral(&["config", "device", "get", "e1", "data", "path"]).ok().stdout,
        "/mnt/y\n"
    );
    d.corral(&["config", "device", "unset", "e1", "data", "readonly"]).ok();
    assert_eq!(
        d.corral(&["config", "device", "get", "e1", "data", "readonly"])
            .ok()
            .stdout,
        "\n"
    );
    d.corral(&["config", "device", "unset", "e1", "data", "readonly"])
        .fails_with("Key readonly is not set on device data");
    let out = d.corral(&["config", "show", "e1", "--expanded"]).ok();
    assert!(out.stdout.contains("    path: /mnt/y\n"), "{out:?}");

    // A device from a profile is not the instance's: refused, as lxc does, until overridden.
    d.corral(&["config", "device", "set", "e1", "root", "size.state=1GiB"])
        .fails_with("Device from profile(s) cannot be modified for individual instance");
    d.corral(&["config", "device", "remove", "e1", "root"])
        .fails_with("Device from profile(s) cannot be removed");
    d.corral(&["config", "device", "get", "e1", "nope", "path"])
        .fails_with("Device doesn't exist");
    let out = d
        // Not `size`: the default pool is dir, which cannot limit one.
        .corral(&["config", "device", "override", "e1", "root", "size.state=1GiB"])
        .ok();
    assert_eq!(out.stdout, "Device root overridden for e1\n");
    let out = d.corral(&["config", "device", "show", "e1"]).ok();
    assert!(
        out.stdout
            .contains("root:\n  path: /\n  pool: default\n  size.state: 1GiB\n  type: disk\n"),
        "{out:?}"
    );

    let out = d.corral(&["config", "device", "remove", "e1", "data", "root"]).ok();
    assert_eq!(out.stdout, "Device data removed from e1\nDevice root removed from e1\n");
    assert_eq!(d.corral(&["config", "device", "list", "e1"]).ok().stdout, "");
    d.corral(&["config", "device", "remove", "e1", "data"])
        .fails_with("Device doesn't exist");
    d.corral(&["config", "device", "list", "ghost"])
        .fails_with("Instance not found: ghost");
}

/// A busybox image of its own (not the shared one): the unified file and its fingerprint.
fn pack_busybox(dir: &Path, name: &str) -> (PathBuf, String) {
    let file = dir.join(name);
    let metadata = corral_image::ImageMetadata {
        architecture: corral_image::host_architecture().to_string(),
        creation_date: 1_700_000_000,
        ..Default::default()
    };
    let fp = corral_image::pack_unified(
        Path::new(BUSYBOX_ROOTFS),
        &metadata,
        None,
        &file,
        corral_image::Compression::Gzip,
    )
    .expect("pack the busybox image");
    (file, fp)
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

#[test]
fn image_export_import_edit() {
    if skip("image_export_import_edit") {
        return;
    }
    let d = Daemon::start();

    // A unified image comes back as the very file imported.
    let (unified, fp) = pack_busybox(&d.dir, "bb.tar.gz");
    let out = d.corral(&["image", "import", path_str(&unified), "--alias", "bb"]).ok();
    assert_eq!(out.stdout, format!("Image imported with fingerprint: {fp}\n"));
    assert_eq!(out.stderr, "", "no progress when stderr is not a terminal");
    let exports = d.dir.join("exports");
    std::fs::create_dir_all(&exports).expect("mkdir");
    let out = d.corral(&["image", "export", "bb", path_str(&exports)]).ok();
    assert_eq!(out.stdout, "Image exported successfully!\n");
    let files: Vec<PathBuf> = std::fs::read_dir(&exports)
        .expect("read the export directory")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(files, [exports.join("bb.tar.gz")], "named as imported");
    assert_eq!(corral_image::fingerprint_unified(&files[0]).expect("sha256"), fp);
    assert!(std::fs::read(&files[0]).ok() == std::fs::read(&unified).ok());
    // Given a file name, lxc adds the image's extension.
    d.corral(&["image", "export", &fp[..12], path_str(&exports.join("named"))])
        .ok();
    assert_eq!(
        corral_image::fingerprint_unified(&exports.join("named.tar.gz")).expect("sha256"),
        fp
    );

    // A split image: both files, as multipart, with a property.
    let split = d.dir.join("split");
    std::fs::create_dir_all(&split).expect("mkdir");
    let (meta, rootfs) = (split.join("meta.tar.gz"), split.join("rootfs.tar.gz"));
    let mut metadata = corral_image::ImageMetadata {
        architecture: corral_image::host_architecture().to_string(),
        creation_date: 1_700_000_000,
        ..Default::default()
    };
    metadata.properties.insert("os".into(), "BusyBox".into());
    let split_fp = corral_image::pack_split(
        Path::new(BUSYBOX_ROOTFS),
        &metadata,
        None,
        &meta,
        &rootfs,
        corral_image::Compression::Gzip,
    )
    .expect("pack the split image");
    assert_ne!(split_fp, fp);
    let out = d
        .corral(&[
            "image",
            "import",
            path_str(&meta),
            path_str(&rootfs),
            "--alias",
            "sp",
            "note=a b&c",
        ])
        .ok();
    assert_eq!(out.stdout, format!("Image imported with fingerprint: {split_fp}\n"));
    let out = d.corral(&["image", "info", "sp"]).ok();
    assert!(
        out.stdout.starts_with(&format!("Fingerprint: {split_fp}\nSize: ")),
        "{out:?}"
    );
    for line in [
        "Type: container\n",
        "Public: no\n",
        "    Expires: never\n",
        "    note: a b&c\n",
        "    os: BusyBox\n",
        "Aliases:\n    - sp\n",
        "Auto update: disabled\n",
    ] {
        assert!(out.stdout.contains(line), "no {line:?} in {out:?}");
    }
    // Exported to a name: NAME (metadata) and NAME.root (rootfs), the files imported.
    d.corral(&["image", "export", "sp", path_str(&exports.join("sp"))]).ok();
    assert!(std::fs::read(exports.join("sp")).ok() == std::fs::read(&meta).ok());
    assert!(std::fs::read(exports.join("sp.root")).ok() == std::fs::read(&rootfs).ok());
    d.corral(&["image", "import", path_str(&meta), path_str(&rootfs), path_str(&meta)])
        .fails_with("too many files");
    d.corral(&["image", "import", path_str(&meta), "/nonexistent.rootfs"])
        .fails_with("/nonexistent.rootfs");

    // `image edit` from stdin: what `image show` prints, a property changed.
    let shown = d.corral(&["image", "show", "sp"]).ok().stdout;
    assert!(shown.contains("  os: BusyBox\n"), "{shown}");
    d.corral_stdin(
        &["image", "edit", "sp"],
        shown.replace("os: BusyBox", "os: Edited").as_bytes(),
    )
    .ok();
    let out = d.corral(&["image", "info", "sp"]).ok();
    assert!(out.stdout.contains("    os: Edited\n"), "{out:?}");
    assert!(out.stdout.contains("    note: a b&c\n"), "{out:?}");
    d.corral_stdin(&["image", "edit", "sp"], b"public: [nope\n")
        .fails_with("not an image's properties");
    d.corral(&["image", "info", "nope"]).fails_with("Image not found: nope");
}

#[test]
fn storage_remotes_and_names() {
    if skip("storage_remotes_and_names") {
        return;
    }
    let d = Daemon::start();
    d.import_busybox("busybox");

    let out = d.corral(&["storage", "info", "default"]).ok();
    assert!(out.stdout.starts_with("info:\n  description: "), "{out:?}");
    for line in [
        "  driver: dir\n",
        "  name: default\n",
        "  space used: ",
        "  total space: ",
        "used by:",
    ] {
        assert!(out.stdout.contains(line), "no {line:?} in {out:?}");
    }
    let out = d.corral(&["storage", "info", "default", "--bytes"]).ok();
    // A string, quoted as lxc's YAML quotes a number in one.
    let total = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("  total space: "))
        .and_then(|v| v.trim_matches('"').parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no total space in bytes: {out:?}"));
    assert!(total > 0, "{out:?}");
    d.corral(&["storage", "info", "nope"]).fails_with("not found");

    let socket = d.dir.join("unix.socket");
    assert_eq!(
        d.corral(&["remote", "list", "-f", "csv"]).ok().stdout,
        format!(
            "local (current),unix://{},lxd,file access,NO,YES,NO\n",
            socket.display()
        )
    );
    let out = d.corral(&["remote", "list"]).ok();
    assert!(out.stdout.contains("| local (current) | unix://"), "{out:?}");
    assert!(
        out.stdout.lines().nth(1).is_some_and(|h| h.contains(" AUTH TYPE ")),
        "{out:?}"
    );

    // `local:` is this daemon; any other remote is a clear error.
    d.corral(&["init", "busybox", "local:r1"]).ok();
    assert!(d.corral(&["info", "local:r1"]).ok().stdout.starts_with("Name: r1\n"));
    assert_eq!(
        d.corral(&["list", "local:", "-f", "csv", "-c", "n"]).ok().stdout,
        "r1\n"
    );
    for args in [
        &["info", "prod:r1"][..],
        &["start", "prod:r1"],
        &["config", "show", "prod:r1"],
        &["image", "info", "prod:busybox"],
        &["list", "prod:"],
    ] {
        d.corral(args)
            .fails_with("Remote \"prod\" doesn't exist (see `corral remote list`)");
    }
}

/// Storage pools and custom volumes through the CLI: a btrfs pool on a loop file, a volume with a
/// quota, snapshots and restore, copy, rename, attach to an instance and a profile, deletes.
#[test]
fn storage_pools_and_volumes() {
    if skip("storage_pools_and_volumes") {
        return;
    }
    let d = Daemon::start();

    let out = d.corral(&["storage", "create", "fast", "btrfs", "size=1GiB"]).ok();
    assert_eq!(out.stdout, "Storage pool fast created\n");
    let out = d.corral(&["storage", "list", "-f", "csv"]).ok();
    let fast = out
        .stdout
        .lines()
        .find(|l| l.starts_with("fast,"))
        .unwrap_or_else(|| panic!("no pool fast in {out:?}"));
    assert!(
        fast.starts_with("fast,btrfs,") && fast.ends_with(",,0,CREATED"),
        "{out:?}"
    );
    assert_eq!(d.corral(&["storage", "get", "fast", "size"]).ok().stdout, "1GiB\n");
    d.corral(&["storage", "set", "fast", "user.tier", "ssd"]).ok();
    d.corral(&["storage", "unset", "fast", "user.tier"]).ok();
    d.corral(&["storage", "unset", "fast", "user.tier"])
        .fails_with("Key user.tier is not set on storage pool fast (its keys: size, source)");
    d.corral(&["storage", "show", "nope"])
        .fails_with("Storage pool not found: nope (`corral storage list` lists the storage pools)");

    let out = d
        .corral(&["storage", "volume", "create", "fast", "data", "size=64MiB"])
        .ok();
    assert_eq!(out.stdout, "Storage volume data created\n");
    let out = d.corral(&["storage", "volume", "list", "fast"]).ok();
    assert_eq!(
        out.stdout,
        "\
+--------+------+-------------+--------------+---------+
|  TYPE  | NAME | DESCRIPTION | CONTENT-TYPE | USED BY |
+--------+------+-------------+--------------+---------+
| custom | data |             | filesystem   | 0       |
+--------+------+-------------+--------------+---------+
"
    );
    assert_eq!(
        d.corral(&["storage", "volume", "get", "fast", "data", "size"])
            .ok()
            .stdout,
        "64MiB\n"
    );
    let out = d.corral(&["storage", "volume", "show", "fast", "data"]).ok();
    assert!(
        out.stdout
            .starts_with("config:\n  size: 64MiB\ndescription: \"\"\nname: data\ntype: custom\nused_by: []\n"),
        "{out:?}"
    );
    let out = d.corral(&["storage", "info", "fast"]).ok();
    assert!(out.stdout.contains("  total space: 1.00GiB\n"), "{out:?}");
    assert!(out.stdout.ends_with("used by:\n  volumes:\n  - data\n"), "{out:?}");

    // Snapshots and restore of the older one.
    let root = d.dir.join("storage-pools/fast/custom/data");
    std::fs::write(root.join("f"), "one").expect("write into the volume");
    d.corral(&["storage", "volume", "snapshot", "fast", "data"]).ok();
    std::fs::write(root.join("f"), "two").expect("write into the volume");
    d.corral(&["storage", "volume", "snapshot", "fast", "data", "s1"]).ok();
    d.corral(&["storage", "volume", "snapshot", "fast", "data", "s1"])
        .fails_with("Snapshot data/s1 already exists: choose another name, or replace it with --reuse");
    let out = d.corral(&["storage", "volume", "info", "fast", "data"]).ok();
    assert!(
        out.stdout
            .starts_with("Name: data\nType: custom\nContent type: filesystem\n"),
        "{out:?}"
    );
    assert!(out.stdout.contains("\nSnapshots:\n"), "{out:?}");
    assert!(
        out.stdout.contains("| s1    |") && out.stdout.contains("| snap0 |"),
        "{out:?}"
    );
    d.corral(&["storage", "volume", "restore", "fast", "data", "snap0"])
        .ok();
    assert_eq!(std::fs::read_to_string(root.join("f")).expect("read the volume"), "one");
    d.corral(&["storage", "volume", "restore", "fast", "data", "nope"])
        .fails_with("(`corral storage volume info fast data` lists its snapshots)");
    let out = d.corral(&["storage", "volume", "show", "fast", "data/s1"]).ok();
    assert!(out.stdout.contains("\nname: s1\n"), "{out:?}");
    let out = d.corral(&["storage", "volume", "delete", "fast", "data/s1"]).ok();
    assert_eq!(out.stdout, "Storage volume data/s1 deleted\n");

    // A copy, a rename.
    let out = d.corral(&["storage", "volume", "copy", "fast/data", "fast/data2"]).ok();
    assert_eq!(out.stdout, "Storage volume copied successfully!\n");
    let out = d
        .corral(&["storage", "volume", "rename", "fast", "data2", "data3"])
        .ok();
    assert_eq!(out.stdout, "Renamed storage volume from \"data2\" to \"data3\"\n");
    let out = d
        .corral(&["storage", "volume", "list", "fast", "-f", "csv", "-c", "n"])
        .ok();
    assert_eq!(out.stdout, "data\ndata3\n");

    // Attached to an instance and to a profile (disk devices), detached again.
    d.import_busybox("busybox");
    d.corral(&["init", "busybox", "c1"]).ok();
    d.corral(&["storage", "volume", "attach", "fast", "data", "c1", "/mnt/data"])
        .ok();
    let out = d.corral(&["config", "device", "show", "c1"]).ok();
    assert!(
        out.stdout
            .contains("data:\n  path: /mnt/data\n  pool: fast\n  source: data\n  type: disk\n"),
        "{out:?}"
    );
    d.corral(&["storage", "volume", "attach", "fast", "data", "c1", "/mnt/again"])
        .fails_with("Device already exists: data (on instance c1");
    let out = d
        .corral(&["storage", "volume", "list", "fast", "-f", "csv", "-c", "nu"])
        .ok();
    assert_eq!(out.stdout, "data,1\ndata3,0\n");
    d.corral(&["storage", "volume", "delete", "fast", "data"])
        .fails_with("in use");
    d.corral(&["storage", "volume", "detach", "fast", "data", "c1"]).ok();
    d.corral(&["storage", "volume", "detach", "fast", "data", "c1"])
        .fails_with("No device found for this storage volume: instance c1 has no disk of fast/data");
    d.corral(&[
        "storage",
        "volume",
        "attach-profile",
        "fast",
        "data3",
        "default",
        "logs",
        "/var/log/app",
    ])
    .ok();
    let out = d.corral(&["profile", "show", "default"]).ok();
    assert!(
        out.stdout
            .contains("  logs:\n    path: /var/log/app\n    pool: fast\n    source: data3\n"),
        "{out:?}"
    );
    d.corral(&["storage", "volume", "detach", "fast", "data3", "c1"])
        .fails_with("comes from a profile; detach it from the profile with `corral storage volume detach-profile");
    d.corral(&["storage", "volume", "detach-profile", "fast", "data3", "default"])
        .ok();
    d.corral(&["delete", "c1"]).ok();

    // Deletes.
    for v in ["data", "data3"] {
        let out = d.corral(&["storage", "volume", "delete", "fast", v]).ok();
        assert_eq!(out.stdout, format!("Storage volume {v} deleted\n"));
    }
    d.corral(&["storage", "volume", "delete", "fast", "data"])
        .fails_with("(`corral storage volume list fast` lists its volumes)");
    assert_eq!(
        d.corral(&["storage", "volume", "list", "fast", "-f", "csv"])
            .ok()
            .stdout,
        ""
    );
    let out = d.corral(&["storage", "delete", "fast"]).ok();
    assert_eq!(out.stdout, "Storage pool fast deleted\n");
    let out = d.corral(&["storage", "list", "-f", "csv"]).ok();
    assert!(!out.stdout.contains("fast,"), "{out:?}");
}
