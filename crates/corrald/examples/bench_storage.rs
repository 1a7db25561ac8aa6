//! Storage benchmark: the client side of scripts/bench-storage.sh. `run` drives one daemon
//! (corrald, LXD or Incus) through its REST API on one keep-alive connection over the unix
//! socket, so that a figure of a few milliseconds is the daemon's and not a client's start-up,
//! and prints its figures as JSON. `compare` puts several `run` outputs in one JSON object with
//! the targets and Corral's ratios. `clean` deletes what an interrupted run left.
//!
//! ```text
//! bench_storage run --socket S --debian ROOTFS --work DIR [--runs 5] [--spares DIR]
//! bench_storage clean --socket S
//! bench_storage compare corral=C.json [lxd=L.json] [incus=I.json] [--load-before "1 2 3"]
//! ```
//!
//! The workload, the same on every daemon: the Debian rootfs is imported as an image (an
//! uncompressed unified tarball); a btrfs pool `corral-bench-btrfs` is made through the API
//! (`{"driver":"btrfs","config":{"size":"4GiB"}}`, a loop file the daemon creates, as `lxc
//! storage create corral-bench-btrfs btrfs size=4GiB`); the dir pool is the default profile's
//! root pool (one `corral-bench-dir` is made if that pool is not dir). A first launch on btrfs
//! puts the image into the pool (`launch_btrfs_first_ms`, uncached); then `--runs` cycles, each
//! on btrfs then on dir (interleaved: drift in the machine's load hits both), each of:
//!
//! - launch (btrfs only timed): POST /1.0/instances from the image, root disk on the pool, no
//!   profile, then start; from the POST until the start operation has succeeded (each run also
//!   has the create and the start apart);
//! - wait for the boot to end (`systemctl is-system-running --wait` through exec), untimed;
//! - snapshot `s1` of the running instance (frozen around it), timed; `s2` after a file
//!   changed (a marker written through the files API before each);
//! - stop; restore of the older `s1` (`PUT {"restore":"s1"}`), timed, and the marker checked;
//! - copy of the stopped instance, volume only (`instance_only`), timed; the same with its two
//!   snapshots along (`lxc copy`'s default) as `copy_with_snapshots_*`;
//! - export of the copy (a stopped instance, no snapshot): POST .../backups
//!   `{"name":"corral-bench","compression_algorithm":"zstd"}`, wait, GET .../export into a file,
//!   timed together as `lxc export` does them; the backup is deleted afterwards, untimed. The
//!   copy was just made: on dir its files are in the page cache, while on btrfs the backup's
//!   read-only snapshot is new inodes, read cold through the loop device;
//! - delete of the instance with its two snapshots (`delete_*`), and of the copy
//!   (`delete_copy_*`), timed.
//!
//! Before each timed step: `sync` and, on Corral's dir pool (`--spares`), until the pool's
//! spare copy of the image is finished (a launch takes it and the daemon makes another in the
//! background; see crates/corrald/src/storage.rs), so that no step pays for an earlier one's
//! writeback. Each figure is the median of the runs; every run's figures are in `runs`, each
//! with `*_server_ms`: the operation's own duration (its created_at to its last updated_at), the
//! part of the figure spent in the daemon (null where the daemon does not stamp an operation's
//! end: LXD 5.0 and Incus 6.0).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use serde_json::{json, Value};

const PREFIX: &str = "corral-bench-st-";
const BTRFS_POOL: &str = "corral-bench-btrfs";
const DIR_POOL: &str = "corral-bench-dir";
/// The image's description property: how the image of an interrupted run is recognised.
const IMAGE_DESCRIPTION: &str = "corral-bench-storage debian";
const OPERATION_TIMEOUT_S: u32 = 600;
const MARKER: &str = "/root/corral-bench-marker";

/// The issue's targets (ms): a figure above its target misses it.
const TARGETS: &[(&str, f64)] = &[
    ("launch_btrfs_ms", 60.0),
    ("snapshot_dir_ms", 2000.0),
    ("snapshot_btrfs_ms", 15.0),
    ("restore_dir_ms", 200.0),
    ("restore_btrfs_ms", 20.0),
    ("copy_dir_ms", 2000.0),
    ("copy_btrfs_ms", 20.0),
    ("export_zstd_btrfs_ms", 3000.0),
    ("export_zstd_dir_ms", 3000.0),
];

/// The figures `compare` makes ratios of (all times: lower is better).
const FIGURES: &[&str] = &[
    "launch_btrfs_first_ms",
    "launch_btrfs_ms",
    "snapshot_btrfs_ms",
    "restore_btrfs_ms",
    "copy_btrfs_ms",
    "copy_with_snapshots_btrfs_ms",
    "delete_btrfs_ms",
    "delete_copy_btrfs_ms",
    "export_zstd_btrfs_ms",
    "snapshot_dir_ms",
    "restore_dir_ms",
    "copy_dir_ms",
    "copy_with_snapshots_dir_ms",
    "delete_dir_ms",
    "delete_copy_dir_ms",
    "export_zstd_dir_ms",
];

#[derive(Parser)]
#[command(about = "Corral's storage benchmark (against corrald, LXD or Incus)")]
struct Args {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Run the workload and print one daemon's figures.
    Run {
        /// The daemon's unix socket.
        #[arg(long)]
        socket: PathBuf,
        /// The Debian root filesystem (tests/images/build.sh bookworm).
        #[arg(long)]
        debian: PathBuf,
        /// Timed cycles per pool.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Corral's spares directory of the dir pool (`<pool>/spares`): each timed step on the
        /// dir pool waits until the image's spare copy is finished.
        #[arg(long)]
        spares: Option<PathBuf>,
        /// Where the image tarball and the exported backups are written (removed after).
        #[arg(long)]
        work: PathBuf,
    },
    /// Delete what an interrupted `run` left on a daemon (instances, image, pools).
    Clean {
        #[arg(long)]
        socket: PathBuf,
    },
    /// Print `run` outputs as one object, with the targets and ratios against the first.
    Compare {
        /// NAME=FILE, Corral's first.
        #[arg(required = true)]
        results: Vec<String>,
        /// The load average when the benchmark started (recorded beside the one at the end).
        #[arg(long)]
        load_before: Option<String>,
        /// Recorded in "notes".
        #[arg(long)]
        note: Vec<String>,
    },
}

/// One keep-alive HTTP/1.1 connection to the daemon.
struct Conn {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Conn {
    fn open(socket: &Path) -> io::Result<Conn> {
        let s = UnixStream::connect(socket)?;
        Ok(Conn {
            reader: BufReader::with_capacity(1 << 20, s.try_clone()?),
            writer: s,
        })
    }

    fn head(method: &str, path: &str, content_type: &str, len: u64) -> Vec<u8> {
        format!(
            "{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\n\r\n"
        )
        .into_bytes()
    }

    /// Sends one request (in one write); the status and the body's bytes.
    fn send_raw(&mut self, method: &str, path: &str, content_type: &str, body: &[u8]) -> io::Result<(u16, Vec<u8>)> {
        let mut req = Self::head(method, path, content_type, body.len() as u64);
        req.extend_from_slice(body);
        self.writer.write_all(&req)?;
        let mut out = Vec::new();
        let status = self.read_response(&mut out)?;
        Ok((status, out))
    }

    /// Sends a file as the body of a request; the status and the body as JSON.
    fn send_file(&mut self, method: &str, path: &str, file: &Path) -> io::Result<(u16, Value)> {
        let mut f = File::open(file)?;
        let len = f.metadata()?.len();
        self.writer
            .write_all(&Self::head(method, path, "application/octet-stream", len))?;
        io::copy(&mut f, &mut self.writer)?;
        let mut out = Vec::new();
        let status = self.read_response(&mut out)?;
        Ok((status, serde_json::from_slice(&out).unwrap_or(Value::Null)))
    }

    /// Reads one response, its body written to `out`; its status.
    fn read_response(&mut self, out: &mut dyn Write) -> io::Result<u16> {
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad status line {line:?}")))?;
        let mut len = 0u64;
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
                chunked = true;
            }
        }
        if !chunked {
            io::copy(&mut (&mut self.reader).take(len), out)?;
            return Ok(status);
        }
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let size = line.trim_end().split(';').next().unwrap_or_default();
            let size = u64::from_str_radix(size, 16).map_err(io::Error::other)?;
            if size == 0 {
                loop {
                    line.clear();
                    self.reader.read_line(&mut line)?;
                    if line.trim_end().is_empty() {
                        return Ok(status);
                    }
                }
            }
            let copied = io::copy(&mut (&mut self.reader).take(size), out)?;
            if copied != size {
                return Err(io::Error::other("the connection closed in the middle of a chunk"));
            }
            let mut crlf = [0u8; 2];
            self.reader.read_exact(&mut crlf)?;
        }
    }

    fn request(&mut self, method: &str, path: &str, body: &str) -> Value {
        let (_, body) = self
            .send_raw(method, path, "application/json", body.as_bytes())
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        serde_json::from_slice(&body).unwrap_or(Value::Null)
    }

    /// Waits for the operation `resp` started (a sync answer is its own result). Err with
    /// the answer unless it succeeded.
    fn finish(&mut self, resp: Value) -> Result<Value, String> {
        if resp["type"] == "sync" {
            return Ok(resp);
        }
        let Some(id) = resp["metadata"]["id"].as_str() else {
            return Err(format!("not an operation: {resp}"));
        };
        let path = format!("/1.0/operations/{id}/wait?timeout={OPERATION_TIMEOUT_S}");
        let op = self.request("GET", &path, "");
        if op["metadata"]["status"] == "Success" {
            Ok(op)
        } else {
            Err(op.to_string())
        }
    }

    /// A request whose operation must succeed: the time from sending it until the operation
    /// has succeeded, and the operation's own duration.
    fn op(&mut self, what: &str, method: &str, path: &str, body: &str) -> Timed {
        let t = Instant::now();
        let resp = self.request(method, path, body);
        let op = self.finish(resp).unwrap_or_else(|e| panic!("{what}: {e}"));
        Timed {
            ms: ms(t.elapsed()),
            server_ms: op_duration(&op["metadata"]),
        }
    }
}

/// A step's time as the client saw it, and the daemon's part of it.
#[derive(Clone, Copy, Default)]
struct Timed {
    ms: f64,
    server_ms: Option<f64>,
}

impl std::ops::Add for Timed {
    type Output = Timed;
    fn add(self, o: Timed) -> Timed {
        Timed {
            ms: round2(self.ms + o.ms),
            server_ms: self.server_ms.zip(o.server_ms).map(|(a, b)| round2(a + b)),
        }
    }
}

/// An operation's duration: its creation to its last update (when it finished). None when the
/// daemon does not stamp the end (LXD 5.0 and Incus 6.0 leave updated_at at created_at).
fn op_duration(op: &Value) -> Option<f64> {
    let t = |k: &str| chrono::DateTime::parse_from_rfc3339(op[k].as_str()?).ok();
    let (a, b) = (t("created_at")?, t("updated_at")?);
    let d = (b - a).num_microseconds()?;
    (d > 0).then(|| round2(d as f64 / 1000.0))
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn ms(d: Duration) -> f64 {
    round2(d.as_secs_f64() * 1000.0)
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Some(v[v.len() / 2])
}

/// Deletes the benchmark's instances, image and pools on drop, also when a panic unwinds.
/// Never panics itself.
struct Leftovers {
    socket: PathBuf,
}

impl Leftovers {
    fn delete(&self) {
        let Ok(mut c) = Conn::open(&self.socket) else { return };
        let get = |c: &mut Conn, path: &str| -> Vec<Value> {
            c.send_raw("GET", path, "application/json", b"")
                .ok()
                .and_then(|(_, b)| serde_json::from_slice::<Value>(&b).ok())
                .and_then(|v| v["metadata"].as_array().cloned())
                .unwrap_or_default()
        };
        let names: Vec<String> = get(&mut c, "/1.0/instances")
            .iter()
            .filter_map(|url| url.as_str()?.rsplit('/').next())
            .filter(|name| name.starts_with(PREFIX))
            .map(str::to_string)
            .collect();
        let call = |c: &mut Conn, method: &str, path: &str, body: &str| {
            if let Ok((_, b)) = c.send_raw(method, path, "application/json", body.as_bytes()) {
                if let Ok(v) = serde_json::from_slice::<Value>(&b) {
                    let _ = c.finish(v);
                }
            }
        };
        for name in &names {
            call(
                &mut c,
                "PUT",
                &format!("/1.0/instances/{name}/state"),
                r#"{"action":"stop","force":true}"#,
            );
            call(&mut c, "DELETE", &format!("/1.0/instances/{name}"), "");
        }
        let images: Vec<String> = get(&mut c, "/1.0/images?recursion=1")
            .iter()
            .filter(|image| image["properties"]["description"] == IMAGE_DESCRIPTION)
            .filter_map(|image| image["fingerprint"].as_str().map(str::to_string))
            .collect();
        for fp in images {
            call(&mut c, "DELETE", &format!("/1.0/images/{fp}"), "");
        }
        for pool in [BTRFS_POOL, DIR_POOL] {
            if let Ok((200, _)) = c.send_raw("GET", &format!("/1.0/storage-pools/{pool}"), "application/json", b"") {
                call(&mut c, "DELETE", &format!("/1.0/storage-pools/{pool}"), "");
            }
        }
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        self.delete();
    }
}

/// Packs the rootfs into an uncompressed unified tarball (packing is not what is measured) and
/// imports it through the API; its fingerprint.
fn import_image(c: &mut Conn, rootfs: &Path, image: &Path) -> String {
    let meta = corral_image::ImageMetadata {
        architecture: corral_image::host_architecture().into(),
        creation_date: chrono::Utc::now().timestamp(),
        properties: BTreeMap::from([
            ("os".to_string(), "debian".to_string()),
            ("release".to_string(), "bookworm".to_string()),
            ("description".to_string(), IMAGE_DESCRIPTION.to_string()),
        ]),
        ..Default::default()
    };
    let fingerprint = corral_image::pack_unified(rootfs, &meta, None, image, corral_image::Compression::None)
        .expect("pack the image");
    let (_, r) = c.send_file("POST", "/1.0/images", image).expect("import the image");
    let _ = std::fs::remove_file(image);
    c.finish(r).unwrap_or_else(|e| panic!("image import: {e}"));
    fingerprint
}

/// The dir pool to use: the default profile's root pool if it is dir, else one made here.
fn dir_pool(c: &mut Conn) -> String {
    let profile = c.request("GET", "/1.0/profiles/default", "");
    if let Some(pool) = profile["metadata"]["devices"]["root"]["pool"].as_str() {
        let p = c.request("GET", &format!("/1.0/storage-pools/{pool}"), "");
        if p["metadata"]["driver"] == "dir" {
            return pool.to_string();
        }
    }
    let r = c.request(
        "POST",
        "/1.0/storage-pools",
        &json!({"name": DIR_POOL, "driver": "dir"}).to_string(),
    );
    c.finish(r).unwrap_or_else(|e| panic!("create the dir pool: {e}"));
    DIR_POOL.to_string()
}

struct Bench {
    c: Conn,
    socket: PathBuf,
    fingerprint: String,
    spares: Option<PathBuf>,
    work: PathBuf,
}

impl Bench {
    /// Before a timed step: nothing of an earlier step still being written, and on Corral's
    /// dir pool the spare copy finished.
    fn settle(&self, driver: &str) {
        if driver == "dir" {
            if let Some(spares) = &self.spares {
                let dir = spares.join(&self.fingerprint);
                let t = Instant::now();
                loop {
                    let entries: Vec<String> = std::fs::read_dir(&dir)
                        .into_iter()
                        .flatten()
                        .flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect();
                    let finished = entries.iter().any(|n| !n.starts_with('.'));
                    let partial = entries.iter().any(|n| n.ends_with(".partial"));
                    if finished && !partial {
                        break;
                    }
                    if t.elapsed() > Duration::from_secs(900) {
                        eprintln!("bench_storage: no finished spare copy after 15 minutes; going on");
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        // SAFETY: sync(2) takes no argument and cannot fail.
        unsafe { libc::sync() };
        std::thread::sleep(Duration::from_millis(300));
    }

    /// Creates `name` from the image on `pool` and starts it: the create and the start.
    fn launch(&mut self, name: &str, pool: &str) -> (Timed, Timed) {
        let body = json!({
            "name": name,
            "type": "container",
            "source": {"type": "image", "fingerprint": self.fingerprint},
            "profiles": [],
            "devices": {"root": {"type": "disk", "path": "/", "pool": pool}},
        });
        let create = self
            .c
            .op(&format!("create {name}"), "POST", "/1.0/instances", &body.to_string());
        let start = self.c.op(
            &format!("start {name}"),
            "PUT",
            &format!("/1.0/instances/{name}/state"),
            r#"{"action":"start"}"#,
        );
        (create, start)
    }

    /// Waits (untimed) until systemd in the instance has finished booting.
    fn wait_booted(&mut self, name: &str) {
        let body = json!({
            "command": ["systemctl", "is-system-running", "--wait"],
            "wait-for-websocket": false,
            "interactive": false,
            "record-output": false,
            "environment": {},
        });
        let t = Instant::now();
        let r = self
            .c
            .request("POST", &format!("/1.0/instances/{name}/exec"), &body.to_string());
        if let Err(e) = self.c.finish(r) {
            eprintln!("bench_storage: {name}: waiting for the boot: {e}; waiting 5 s instead");
            std::thread::sleep(Duration::from_secs(5).saturating_sub(t.elapsed()));
        }
    }

    fn write_marker(&mut self, name: &str, text: &str) {
        let path = format!("/1.0/instances/{name}/files?path={MARKER}");
        let (status, body) = self
            .c
            .send_raw("POST", &path, "application/octet-stream", text.as_bytes())
            .expect("write the marker");
        assert_eq!(
            status,
            200,
            "write {MARKER} in {name}: {}",
            String::from_utf8_lossy(&body)
        );
    }

    fn read_marker(&mut self, name: &str) -> String {
        let path = format!("/1.0/instances/{name}/files?path={MARKER}");
        let (_, body) = self
            .c
            .send_raw("GET", &path, "application/json", b"")
            .expect("read the marker");
        String::from_utf8_lossy(&body).into_owned()
    }

    /// POST a zstd backup, wait, download it to a file: the time of both, the server's part
    /// (the backup operation), and the file's size.
    fn export(&mut self, name: &str) -> (Timed, u64) {
        let file = self.work.join(format!("{name}.tar.zst"));
        let t = Instant::now();
        let r = self.c.request(
            "POST",
            &format!("/1.0/instances/{name}/backups"),
            r#"{"name":"corral-bench","compression_algorithm":"zstd"}"#,
        );
        let op = self.c.finish(r).unwrap_or_else(|e| panic!("backup of {name}: {e}"));
        // A connection of its own for the stream (opening one costs microseconds).
        let mut dl = Conn::open(&self.socket).expect("connect");
        let path = format!("/1.0/instances/{name}/backups/corral-bench/export");
        dl.writer
            .write_all(&Conn::head("GET", &path, "application/json", 0))
            .expect("export request");
        let mut out = io::BufWriter::with_capacity(1 << 20, File::create(&file).expect("export file"));
        let status = dl.read_response(&mut out).expect("export");
        out.flush().expect("write the export");
        drop(out);
        let timed = Timed {
            ms: ms(t.elapsed()),
            server_ms: op_duration(&op["metadata"]),
        };
        let bytes = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        let mut magic = [0u8; 4];
        let _ = File::open(&file).and_then(|mut f| f.read_exact(&mut magic));
        assert_eq!(status, 200, "export of {name}: status {status}");
        assert_eq!(magic, [0x28, 0xb5, 0x2f, 0xfd], "the export of {name} is not zstd");
        let _ = std::fs::remove_file(&file);
        self.c.op(
            "delete the backup",
            "DELETE",
            &format!("/1.0/instances/{name}/backups/corral-bench"),
            "",
        );
        (timed, bytes)
    }

    /// One cycle on `pool` (driver `driver`); the run's figures.
    fn cycle(&mut self, driver: &str, pool: &str, run: usize) -> Value {
        let name = format!("{PREFIX}{driver}-{run}");
        let (copy, copy_snaps) = (format!("{name}-copy"), format!("{name}-copys"));
        let inst = format!("/1.0/instances/{name}");
        let mut figures = serde_json::Map::new();
        let put = |figures: &mut serde_json::Map<String, Value>, key: &str, t: Timed| {
            figures.insert(format!("{key}_ms"), json!(t.ms));
            figures.insert(format!("{key}_server_ms"), json!(t.server_ms));
        };

        self.settle(driver);
        let (create, start) = self.launch(&name, pool);
        if driver == "btrfs" {
            put(&mut figures, "launch", create + start);
            put(&mut figures, "launch_create", create);
            put(&mut figures, "launch_start", start);
        }
        self.wait_booted(&name);

        self.write_marker(&name, "one");
        self.settle(driver);
        put(
            &mut figures,
            "snapshot",
            self.c
                .op("snapshot s1", "POST", &format!("{inst}/snapshots"), r#"{"name":"s1"}"#),
        );
        self.write_marker(&name, "two");
        self.settle(driver);
        put(
            &mut figures,
            "snapshot2",
            self.c
                .op("snapshot s2", "POST", &format!("{inst}/snapshots"), r#"{"name":"s2"}"#),
        );
        self.write_marker(&name, "three");
        self.c.op(
            "stop",
            "PUT",
            &format!("{inst}/state"),
            r#"{"action":"stop","force":true}"#,
        );

        self.settle(driver);
        put(
            &mut figures,
            "restore",
            self.c.op("restore s1", "PUT", &inst, r#"{"restore":"s1"}"#),
        );
        let marker = self.read_marker(&name);
        assert_eq!(marker, "one", "{name}: the restore of s1 left {MARKER} as {marker:?}");

        self.settle(driver);
        let body = json!({"name": copy, "source": {"type": "copy", "source": name, "instance_only": true}});
        put(
            &mut figures,
            "copy",
            self.c.op("copy", "POST", "/1.0/instances", &body.to_string()),
        );
        self.settle(driver);
        let body = json!({"name": copy_snaps, "source": {"type": "copy", "source": name}});
        put(
            &mut figures,
            "copy_with_snapshots",
            self.c
                .op("copy with snapshots", "POST", "/1.0/instances", &body.to_string()),
        );

        self.settle(driver);
        let (export, bytes) = self.export(&copy);
        put(&mut figures, "export_zstd", export);
        figures.insert("export_bytes".into(), json!(bytes));

        self.settle(driver);
        put(&mut figures, "delete", self.c.op("delete", "DELETE", &inst, ""));
        self.settle(driver);
        put(
            &mut figures,
            "delete_copy",
            self.c
                .op("delete the copy", "DELETE", &format!("/1.0/instances/{copy}"), ""),
        );
        self.c
            .op("delete", "DELETE", &format!("/1.0/instances/{copy_snaps}"), "");
        Value::Object(figures)
    }
}

fn run(socket: PathBuf, debian: &Path, runs: usize, spares: Option<PathBuf>, work: PathBuf) -> Value {
    std::fs::create_dir_all(&work).expect("work directory");
    let leftovers = Leftovers { socket: socket.clone() };
    leftovers.delete();
    let mut c = Conn::open(&socket).expect("connect to the daemon");
    let server = c.request("GET", "/1.0", "");
    let env = server["metadata"]["environment"].clone();

    eprintln!("bench_storage: importing the image");
    let fingerprint = import_image(&mut c, debian, &work.join("debian.tar"));
    let dir = dir_pool(&mut c);
    let r = c.request(
        "POST",
        "/1.0/storage-pools",
        &json!({"name": BTRFS_POOL, "driver": "btrfs", "config": {"size": "4GiB"}}).to_string(),
    );
    c.finish(r).unwrap_or_else(|e| panic!("create the btrfs pool: {e}"));
    let mut b = Bench {
        c,
        socket,
        fingerprint,
        spares,
        work,
    };

    // The first launch on btrfs: the image goes into the pool.
    b.settle("dir");
    let first_name = format!("{PREFIX}first");
    let (create, start) = b.launch(&first_name, BTRFS_POOL);
    let first = create + start;
    b.c.op(
        "stop",
        "PUT",
        &format!("/1.0/instances/{first_name}/state"),
        r#"{"action":"stop","force":true}"#,
    );
    b.c.op("delete", "DELETE", &format!("/1.0/instances/{first_name}"), "");
    eprintln!("bench_storage: first launch on btrfs: {} ms", first.ms);

    let mut by_driver: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for i in 1..=runs {
        for (driver, pool) in [("btrfs", BTRFS_POOL), ("dir", dir.as_str())] {
            let figures = b.cycle(driver, pool, i);
            eprintln!("bench_storage: {driver} run {i}: {figures}");
            by_driver.entry(driver).or_default().push(figures);
        }
    }

    let mut out = serde_json::Map::new();
    out.insert("daemon".into(), env["server"].clone());
    out.insert("server_version".into(), env["server_version"].clone());
    out.insert("storage_pools".into(), json!({"btrfs": BTRFS_POOL, "dir": dir}));
    out.insert("launch_btrfs_first_ms".into(), json!(first.ms));
    out.insert("launch_btrfs_first_server_ms".into(), json!(first.server_ms));
    let keys = [
        "launch",
        "snapshot",
        "restore",
        "copy",
        "copy_with_snapshots",
        "delete",
        "delete_copy",
    ];
    for (driver, list) in &by_driver {
        let med = |key: &str| median(list.iter().filter_map(|r| r[key].as_f64()).collect());
        for key in keys {
            if key == "launch" && *driver != "btrfs" {
                continue;
            }
            out.insert(format!("{key}_{driver}_ms"), json!(med(&format!("{key}_ms"))));
        }
        out.insert(format!("export_zstd_{driver}_ms"), json!(med("export_zstd_ms")));
        out.insert(
            format!("export_{driver}_bytes"),
            json!(med("export_bytes").map(|b| b as u64)),
        );
    }
    out.insert("runs".into(), json!(by_driver));
    drop(b);
    drop(leftovers);
    Value::Object(out)
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
                    .map(|&key| {
                        let pair = base[key].as_f64().zip(figures[key].as_f64());
                        (key, pair.and_then(|(c, r)| (r / c).is_finite().then(|| round2(r / c))))
                    })
                    .collect();
                ratios.insert(format!("{name}_over_corral"), json!(r));
            }
        }
        out.insert(name.to_string(), figures);
    }
    let base = corral.unwrap_or_default();
    let targets: serde_json::Map<String, Value> = TARGETS
        .iter()
        .map(|&(key, target)| {
            let value = base[key].as_f64();
            (
                key.to_string(),
                json!({"corral": value, "target": target, "met": value.map(|v| v <= target)}),
            )
        })
        .collect();
    out.insert("targets_ms".into(), Value::Object(targets));
    out.insert(
        "export_target_bytes".into(),
        json!("about 67 MiB (70254592 bytes) for the 3000 ms export target"),
    );
    if !ratios.is_empty() {
        out.insert("ratios".into(), Value::Object(ratios));
        out.insert(
            "ratio_meaning".into(),
            json!("reference time / Corral time: > 1 means Corral is faster"),
        );
    }
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
            socket,
            debian,
            runs,
            spares,
            work,
        } => run(socket, &debian, runs.max(1), spares, work),
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
