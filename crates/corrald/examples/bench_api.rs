//! API benchmark. `run` drives one daemon through its REST API on the unix socket and its CLI,
//! and prints its figures as JSON: GET /1.0 and GET /1.0/instances?recursion=1 rates on one
//! keep-alive connection (1 instance, 20 running), launch (create + start, 20 back to back:
//! every sample, their median and maximum) and `exec -- true` latencies, `list` through the CLI
//! (1 instance, 20 running; every sample and the median), daemon RSS (idle, 20 running).
//! With `--many N`, also `list` with N more instances (created stopped, after the rest).
//! `compare` puts several `run` outputs in one JSON object with Corral's ratios.
//!
//! ```text
//! bench_api run BUSYBOX_ROOTFS                  # its own corrald (release build beside this)
//! bench_api run BUSYBOX_ROOTFS --socket /var/lib/lxd/unix.socket --pid PID --cli lxc
//! bench_api run BUSYBOX_ROOTFS --socket /var/lib/incus/unix.socket --pid PID --cli incus
//! bench_api clean --socket /var/lib/lxd/unix.socket   # what an interrupted run left
//! bench_api compare corral=C.json lxd=L.json incus=I.json
//! ```
//!
//! Against a daemon already running, the CLI finds it through LXD_DIR, INCUS_DIR or CORRAL_DIR
//! (the socket's directory). The same workload everywhere: the busybox image is imported through
//! the API, and each instance has no profile and only a root disk on the pool of the default
//! profile (Corral's default profile has no NIC either). The instances (`corral-bench-*`) and
//! the image are deleted afterwards, and what an interrupted run left is deleted first.
//! See scripts/bench-api.sh.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use serde_json::{json, Value};

const INSTANCE_PREFIX: &str = "corral-bench-";
/// The image's description property: how the image of an interrupted run is recognised.
const IMAGE_DESCRIPTION: &str = "corral-bench busybox";
const RUNNING_INSTANCES: usize = 20;
/// A rate is measured over at most this many requests or this long, whichever comes first: a
/// slow daemon must not make the benchmark take minutes.
const RATE_MAX_TIME: Duration = Duration::from_secs(5);
const OPERATION_TIMEOUT_S: u32 = 120;

#[derive(Parser)]
#[command(about = "Corral's API benchmark (against its own corrald, LXD or Incus)")]
struct Args {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Run the workload and print one daemon's figures.
    Run {
        /// The busybox root filesystem (tests/images/build.sh busybox).
        rootfs: PathBuf,
        /// The unix socket of a daemon already running; without it, a corrald of its own.
        #[arg(long, requires_all = ["pid", "cli"])]
        socket: Option<PathBuf>,
        /// That daemon's PID (for its RSS).
        #[arg(long)]
        pid: Option<u32>,
        /// That daemon's CLI, for the `list` and `exec` timings.
        #[arg(long, value_parser = ["corral", "lxc", "incus"])]
        cli: Option<String>,
        /// A Debian root filesystem (tests/images/build.sh bookworm): also time its launch
        /// (create and start), a few seconds after its import as a user would.
        #[arg(long)]
        debian: Option<PathBuf>,
        /// Then create this many more instances (stopped) and time `list` with all of them
        /// (the issue's figure is for 1000).
        #[arg(long, default_value_t = 0)]
        many: usize,
        /// What Corral's directory (its dir pool) is on, recorded as `pool_filesystem`.
        #[arg(long)]
        pool_fs: Option<String>,
    },
    /// Delete what an interrupted `run` left on a daemon (instances, image).
    Clean {
        /// The daemon's unix socket.
        #[arg(long)]
        socket: PathBuf,
    },
    /// Print `run` outputs as one object with ratios against the first (Corral).
    Compare {
        /// NAME=FILE, Corral's first.
        #[arg(required = true)]
        results: Vec<String>,
        /// The load average when the benchmark started (recorded beside the one at the end).
        #[arg(long)]
        load_before: Option<String>,
        /// Recorded in "notes" (a reference that was skipped, and why).
        #[arg(long)]
        note: Vec<String>,
    },
}

/// Whether a figure is better high (a rate) or low (a time, memory).
#[derive(Clone, Copy)]
enum Better {
    Higher,
    Lower,
}

/// The figures `compare` makes ratios of.
const FIGURES: &[(&str, Better)] = &[
    ("get_1_0_req_per_s", Better::Higher),
    ("instances_recursion1_req_per_s_1", Better::Higher),
    ("instances_recursion1_req_per_s_20_running", Better::Higher),
    ("launch_busybox_ms_median", Better::Lower),
    ("launch_busybox_ms_max", Better::Lower),
    ("launch_debian_ms", Better::Lower),
    ("exec_true_api_ms_median", Better::Lower),
    ("exec_true_cli_ms_median", Better::Lower),
    ("list_cli_ms_median_1", Better::Lower),
    ("list_cli_ms_median_20_running", Better::Lower),
    ("list_cli_ms_median_many", Better::Lower),
    ("daemon_rss_kib_idle", Better::Lower),
    ("daemon_rss_kib_20_running", Better::Lower),
];

/// One keep-alive HTTP/1.1 connection to the daemon.
struct Conn {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Conn {
    fn open(socket: &Path) -> io::Result<Conn> {
        let s = UnixStream::connect(socket)?;
        Ok(Conn {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
        })
    }

    /// Sends one request; the status and the body as JSON (`Null` if it is not JSON).
    fn send(&mut self, method: &str, path: &str, content_type: &str, body: &[u8]) -> io::Result<(u16, Value)> {
        let (status, body) = self.send_raw(method, path, content_type, body)?;
        Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
    }

    /// Sends one request; the status and the body's bytes (what the rates measure: the daemon,
    /// not this client's JSON parsing).
    fn send_raw(&mut self, method: &str, path: &str, content_type: &str, body: &[u8]) -> io::Result<(u16, Vec<u8>)> {
        // One write per request, as an HTTP client library sends it: `write!` on the bare
        // socket would make a system call per piece and wake the daemon for half a request.
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        self.writer.write_all(&req)?;
        self.read_response()
    }

    fn read_response(&mut self) -> io::Result<(u16, Vec<u8>)> {
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad status line {line:?}")))?;
        let mut len = 0usize;
        let mut chunked = false;
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let header = line.trim_end().to_ascii_lowercase();
            if header.is_empty() {
                break;
            }
            if let Some(v) = header.strip_prefix("content-length:") {
                len = v.trim().parse().map_err(io::Error::other)?;
            } else if header.starts_with("transfer-encoding:") && header.contains("chunked") {
                // Go's net/http (LXD, Incus) chunks a body larger than its 2 KiB buffer.
                chunked = true;
            }
        }
        let body = if chunked {
            self.read_chunked()?
        } else {
            self.read_bytes(len)?
        };
        Ok((status, body))
    }

    fn read_bytes(&mut self, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.reader.read_exact(&mut buf)?;
        Ok(buf)
    }

    fn read_chunked(&mut self) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let size = line.trim_end().split(';').next().unwrap_or_default();
            let size = usize::from_str_radix(size, 16).map_err(io::Error::other)?;
            if size == 0 {
                // Trailers, then the empty line.
                loop {
                    line.clear();
                    self.reader.read_line(&mut line)?;
                    if line.trim_end().is_empty() {
                        return Ok(body);
                    }
                }
            }
            body.extend(self.read_bytes(size)?);
            self.read_bytes(2)?; // the CRLF after the chunk
        }
    }

    fn request(&mut self, method: &str, path: &str, body: &str) -> Value {
        let (_, v) = self
            .send(method, path, "application/json", body.as_bytes())
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        v
    }

    /// Waits for the operation `resp` started, which must succeed.
    fn wait(&mut self, resp: &Value) -> Value {
        let op = self.try_wait(resp).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(op["metadata"]["status"], "Success", "{op}");
        op
    }

    fn try_wait(&mut self, resp: &Value) -> io::Result<Value> {
        let id = resp["metadata"]["id"]
            .as_str()
            .ok_or_else(|| io::Error::other(format!("not an operation: {resp}")))?;
        let path = format!("/1.0/operations/{id}/wait?timeout={OPERATION_TIMEOUT_S}");
        Ok(self.send("GET", &path, "application/json", b"")?.1)
    }

    /// Requests per second for GET `path`, one after another on this connection.
    fn rate(&mut self, path: &str, max_requests: usize) -> f64 {
        let t = Instant::now();
        let mut n = 0;
        while n < max_requests && t.elapsed() < RATE_MAX_TIME {
            let (status, _) = self.send_raw("GET", path, "application/json", b"").expect(path);
            assert_eq!(status, 200, "GET {path}");
            n += 1;
        }
        (n as f64 / t.elapsed().as_secs_f64()).round()
    }
}

/// The daemon under test and how to reach it.
struct Target {
    socket: PathBuf,
    pid: u32,
    cli: Cli,
}

/// A CLI and the environment that points it at the daemon under test.
struct Cli {
    name: String,
    program: PathBuf,
    env: Vec<(&'static str, PathBuf)>,
}

impl Cli {
    /// `name` pointed at the daemon whose directory is `dir`, with its client configuration in
    /// `conf` unless the caller chose one (so the user's remotes and defaults play no part).
    fn new(name: &str, dir: &Path, conf: &Path) -> Cli {
        let (program, dir_var, conf_var) = match name {
            "corral" => (release_dir().join("corral"), "CORRAL_DIR", None),
            "lxc" => (PathBuf::from("lxc"), "LXD_DIR", Some("LXD_CONF")),
            "incus" => (PathBuf::from("incus"), "INCUS_DIR", Some("INCUS_CONF")),
            other => panic!("unknown CLI {other}"),
        };
        let mut env = vec![(dir_var, dir.to_path_buf())];
        if let Some(var) = conf_var.filter(|v| std::env::var_os(v).is_none()) {
            env.push((var, conf.join(name)));
        }
        Cli {
            name: name.into(),
            program,
            env,
        }
    }

    fn time(&self, args: &[&str]) -> f64 {
        let t = Instant::now();
        let status = Command::new(&self.program)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("{}: {e}", self.name));
        let elapsed = ms(t.elapsed());
        assert!(status.success(), "{} {args:?} failed", self.name);
        elapsed
    }

    /// `runs` timed runs, after one untimed (first-run set-up, page cache).
    fn samples_ms(&self, args: &[&str], runs: usize) -> Vec<f64> {
        self.time(args);
        (0..runs).map(|_| self.time(args)).collect()
    }
}

/// Our own corrald, killed (and its directory removed) on drop.
struct OwnCorrald {
    child: Child,
    dir: PathBuf,
}

impl OwnCorrald {
    fn start(bin: &Path) -> OwnCorrald {
        let dir = std::env::temp_dir().join(format!("corral-bench-api-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let child = Command::new(bin.join("corrald"))
            .env("CORRAL_DIR", &dir)
            // CORRAL_LOG=corrald=debug shows its start timings on this program's stderr.
            .stderr(match std::env::var_os("CORRAL_LOG") {
                Some(_) => Stdio::inherit(),
                None => Stdio::null(),
            })
            // Out of the terminal's process group: a Ctrl-C that kills this benchmark leaves
            // the daemon up, so scripts/bench-api.sh can delete its instances through it.
            .process_group(0)
            .spawn()
            .expect("run corrald");
        let daemon = OwnCorrald { child, dir };
        let ready = Command::new(bin.join("corrald"))
            .arg("waitready")
            .env("CORRAL_DIR", &daemon.dir)
            .status()
            .expect("corrald waitready");
        assert!(ready.success(), "corrald did not become ready");
        daemon
    }
}

impl Drop for OwnCorrald {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Deletes the benchmark's instances and image on drop, also when a panic unwinds: a daemon
/// that is not ours must be left as it was found. Never panics itself.
struct Leftovers {
    socket: PathBuf,
}

impl Leftovers {
    fn delete(&self) {
        let Ok(mut c) = Conn::open(&self.socket) else { return };
        let mut list = |path: &str| {
            c.send("GET", path, "application/json", b"")
                .ok()
                .and_then(|(_, v)| v["metadata"].as_array().cloned())
                .unwrap_or_default()
        };
        let names: Vec<String> = list("/1.0/instances")
            .iter()
            .filter_map(|url| url.as_str()?.rsplit('/').next())
            .filter(|name| name.starts_with(INSTANCE_PREFIX))
            .map(str::to_string)
            .collect();
        let images: Vec<String> = list("/1.0/images?recursion=1")
            .iter()
            .filter(|image| image["properties"]["description"] == IMAGE_DESCRIPTION)
            .filter_map(|image| image["fingerprint"].as_str().map(str::to_string))
            .collect();
        let mut call = |method: &str, path: &str, body: &[u8]| {
            if let Ok((202, op)) = c.send(method, path, "application/json", body) {
                let _ = c.try_wait(&op);
            }
        };
        for name in names {
            let stop = br#"{"action":"stop","force":true}"#;
            call("PUT", &format!("/1.0/instances/{name}/state"), stop);
            call("DELETE", &format!("/1.0/instances/{name}"), b"");
        }
        for fingerprint in images {
            call("DELETE", &format!("/1.0/images/{fingerprint}"), b"");
        }
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        self.delete();
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 100_000.0).round() / 100.0
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::max)
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// The directory of the release binaries (this example is in its `examples/`).
fn release_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/release")
        .to_path_buf()
}

/// The storage pool of the default profile's root disk, else the first pool.
fn root_pool(c: &mut Conn) -> String {
    let profile = c.request("GET", "/1.0/profiles/default", "");
    if let Some(pool) = profile["metadata"]["devices"]["root"]["pool"].as_str() {
        return pool.to_string();
    }
    let pools = c.request("GET", "/1.0/storage-pools", "");
    pools["metadata"][0]
        .as_str()
        .and_then(|url| url.rsplit('/').next())
        .expect("a storage pool (lxd init or incus admin init makes one)")
        .to_string()
}

fn run(
    rootfs: &Path,
    socket: Option<PathBuf>,
    pid: Option<u32>,
    cli: Option<String>,
    debian: Option<&Path>,
    many: usize,
    pool_fs: Option<String>,
) -> Value {
    let work = std::env::temp_dir().join(format!("corral-bench-api-work-{}", std::process::id()));
    std::fs::create_dir_all(&work).expect("work directory");
    // Declared before `leftovers`, so dropped after it: the daemon must still be there.
    let _own_daemon;
    let target = match socket {
        Some(socket) => {
            let dir = socket.parent().expect("the socket's directory").to_path_buf();
            Target {
                cli: Cli::new(&cli.expect("--cli"), &dir, &work),
                socket,
                pid: pid.expect("--pid"),
            }
        }
        None => {
            let daemon = OwnCorrald::start(&release_dir());
            let target = Target {
                socket: daemon.dir.join("unix.socket"),
                pid: daemon.child.id(),
                cli: Cli::new("corral", &daemon.dir, &work),
            };
            _own_daemon = daemon;
            target
        }
    };
    let leftovers = Leftovers {
        socket: target.socket.clone(),
    };
    leftovers.delete();
    let mut c = Conn::open(&target.socket).expect("connect to the daemon");
    let server = c.request("GET", "/1.0", "");
    let env = &server["metadata"]["environment"];

    let fingerprint = import_image(
        &mut c,
        rootfs,
        &work.join("busybox.tar.gz"),
        "busybox",
        corral_image::Compression::Gzip,
    );
    let pool = root_pool(&mut c);
    // Let the daemon settle after the import (Corral makes a ready copy of the image in the
    // background): the rates measure a daemon at rest, not one sharing two cores with a copy.
    std::thread::sleep(Duration::from_secs(3));

    let rss_idle = rss_kib(target.pid);
    let get_root = c.rate("/1.0", 5000);

    let (mut launches, mut creates) = (Vec::new(), Vec::new());
    let mut with_one = (0.0, Vec::new());
    for i in 0..RUNNING_INSTANCES {
        let (created, launched) = launch_split(&mut c, &format!("{INSTANCE_PREFIX}{i}"), &fingerprint, &pool);
        creates.push(created);
        launches.push(launched);
        if i == 0 {
            let rate = c.rate("/1.0/instances?recursion=1", 2000);
            with_one = (rate, target.cli.samples_ms(&["list"], 10));
        }
    }
    let rate_20 = c.rate("/1.0/instances?recursion=1", 1000);
    let first = format!("{INSTANCE_PREFIX}0");
    let exec_path = format!("/1.0/instances/{first}/exec");
    let execs: Vec<f64> = (0..50)
        .map(|_| {
            let t = Instant::now();
            let r = c.request(
                "POST",
                &exec_path,
                r#"{"command":["true"],"wait-for-websocket":false,"interactive":false}"#,
            );
            c.wait(&r);
            ms(t.elapsed())
        })
        .collect();
    let exec_cli = target.cli.samples_ms(&["exec", &first, "--", "true"], 10);
    let list_20 = target.cli.samples_ms(&["list"], 10);
    let rss_20 = rss_kib(target.pid);
    let debian_launch = debian.map(|rootfs| launch_debian(&mut c, &work, rootfs, &pool));
    let list_many = (many > 0).then(|| {
        for i in 0..many {
            create(&mut c, &format!("{INSTANCE_PREFIX}many-{i}"), &fingerprint, &pool);
        }
        median(&target.cli.samples_ms(&["list"], 5))
    });

    drop(leftovers);
    let _ = std::fs::remove_dir_all(&work);
    json!({
        "daemon": env["server"],
        "server_version": env["server_version"],
        "cli": target.cli.name,
        "get_1_0_req_per_s": get_root,
        "instances_recursion1_req_per_s_1": with_one.0,
        "instances_recursion1_req_per_s_20_running": rate_20,
        "pool_filesystem": pool_fs,
        "launch_busybox_ms_median": median(&launches),
        "launch_busybox_ms_max": max(&launches),
        "launch_busybox_ms_samples": launches,
        "launch_busybox_create_ms_samples": creates,
        "exec_true_api_ms_median": median(&execs),
        "exec_true_cli_ms_median": median(&exec_cli),
        "exec_true_cli_ms_samples": exec_cli,
        "list_cli_ms_median_1": median(&with_one.1),
        "list_cli_ms_samples_1": with_one.1,
        "list_cli_ms_median_20_running": median(&list_20),
        "list_cli_ms_samples_20_running": list_20,
        "daemon_rss_kib_idle": rss_idle,
        "daemon_rss_kib_20_running": rss_20,
        "many_instances": many,
        "list_cli_ms_median_many": list_many,
        "launch_debian_ms": debian_launch,
    })
}

/// Packs `rootfs` into `image` and imports it through the API; its fingerprint. LXD and Incus
/// refuse an image without an architecture they know: corral_image spells the host's as they
/// do (x86_64, aarch64, ...).
fn import_image(c: &mut Conn, rootfs: &Path, image: &Path, os: &str, compression: corral_image::Compression) -> String {
    let meta = corral_image::ImageMetadata {
        architecture: corral_image::host_architecture().into(),
        creation_date: chrono::Utc::now().timestamp(),
        properties: BTreeMap::from([
            ("os".to_string(), os.to_string()),
            ("description".to_string(), IMAGE_DESCRIPTION.to_string()),
        ]),
        ..Default::default()
    };
    let fingerprint = corral_image::pack_unified(rootfs, &meta, None, image, compression).expect("pack");
    let tarball = std::fs::read(image).expect("read image");
    let (_, r) = c
        .send("POST", "/1.0/images", "application/octet-stream", &tarball)
        .expect("import image");
    c.wait(&r);
    fingerprint
}

/// Imports a Debian image (an uncompressed tarball: packing is not what is measured), waits
/// ten seconds as a user between import and launch would, then times create and start.
fn launch_debian(c: &mut Conn, work: &Path, rootfs: &Path, pool: &str) -> f64 {
    let image = work.join("debian.tar");
    let fingerprint = import_image(c, rootfs, &image, "debian", corral_image::Compression::None);
    let _ = std::fs::remove_file(&image);
    std::thread::sleep(Duration::from_secs(10));
    launch(c, &format!("{INSTANCE_PREFIX}debian"), &fingerprint, pool)
}

/// Creates `name` from the image and starts it (what `launch` does); the milliseconds taken.
fn launch(c: &mut Conn, name: &str, fingerprint: &str, pool: &str) -> f64 {
    launch_split(c, name, fingerprint, pool).1
}

/// [`launch`], with the milliseconds of its create beside the total.
fn launch_split(c: &mut Conn, name: &str, fingerprint: &str, pool: &str) -> (f64, f64) {
    let t = Instant::now();
    create(c, name, fingerprint, pool);
    let created = ms(t.elapsed());
    let r = c.request("PUT", &format!("/1.0/instances/{name}/state"), r#"{"action":"start"}"#);
    c.wait(&r);
    (created, ms(t.elapsed()))
}

/// Creates `name` from the image, stopped (what `init` does).
fn create(c: &mut Conn, name: &str, fingerprint: &str, pool: &str) {
    let body = json!({
        "name": name,
        "type": "container",
        "source": {"type": "image", "fingerprint": fingerprint},
        "profiles": [],
        "devices": {"root": {"type": "disk", "path": "/", "pool": pool}},
    });
    let r = c.request("POST", "/1.0/instances", &body.to_string());
    c.wait(&r);
}

/// How many times better Corral is on a figure (> 1: Corral is better).
fn ratio(better: Better, corral: f64, reference: f64) -> Option<f64> {
    let r = match better {
        Better::Higher => corral / reference,
        Better::Lower => reference / corral,
    };
    r.is_finite().then(|| (r * 100.0).round() / 100.0)
}

fn compare(results: &[String], load_before: Option<String>, notes: Vec<String>) -> Value {
    let mut out = serde_json::Map::new();
    let mut ratios = serde_json::Map::new();
    let mut corral: Option<Value> = None;
    for arg in results {
        let (name, file) = arg.split_once('=').expect("NAME=FILE");
        let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{file}: {e}"));
        let figures: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        match &corral {
            None => corral = Some(figures.clone()),
            Some(base) => {
                let r: BTreeMap<&str, Option<f64>> = FIGURES
                    .iter()
                    .map(|&(key, better)| {
                        let pair = base[key].as_f64().zip(figures[key].as_f64());
                        (key, pair.and_then(|(c, r)| ratio(better, c, r)))
                    })
                    .collect();
                ratios.insert(format!("{name}_over_corral"), json!(r));
            }
        }
        out.insert(name.to_string(), figures);
    }
    out.insert("ratios".into(), Value::Object(ratios));
    out.insert(
        "ratio_meaning".into(),
        json!(
            "how many times better Corral is: reference/corral for times and memory, \
             corral/reference for request rates; > 1 means Corral is better"
        ),
    );
    let load_now = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load_now: Vec<&str> = load_now.split_whitespace().take(3).collect();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).ok();
    out.insert(
        "load_average".into(),
        json!({"before": load_before, "after": load_now.join(" "), "cpus": cpus}),
    );
    if !notes.is_empty() {
        out.insert("notes".into(), json!(notes));
    }
    Value::Object(out)
}

fn main() {
    let figures = match Args::parse().mode {
        Mode::Run {
            rootfs,
            socket,
            pid,
            cli,
            debian,
            many,
            pool_fs,
        } => run(&rootfs, socket, pid, cli, debian.as_deref(), many, pool_fs),
        Mode::Clean { socket } => {
            drop(Leftovers { socket }); // deletes on drop
            return;
        }
        Mode::Compare {
            results,
            load_before,
            note,
        } => compare(&results, load_before, note),
    };
    println!("{}", serde_json::to_string_pretty(&figures).expect("JSON"));
}
