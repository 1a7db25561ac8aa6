//! `GET /1.0/metrics` (Prometheus text format, LXD's metric names), `GET /1.0/resources` and
//! `GET /1.0/storage-pools/{name}/resources`.
//!
//! Metrics: only running (or frozen) instances have series, as in LXD, each labelled
//! `{name, project, type}`. Figures come from the monitor's state and the instance's cgroup
//! files (`memory.stat`, CPU user/system split, limits, swap, OOM kills). Not exposed yet:
//! `lxd_network_*` (no networking), `lxd_disk_*` and `lxd_filesystem_*` (no per-device
//! accounting), `lxd_memory_Hugepages*`, and the Go runtime's `lxd_go_*`/`lxd_goroutines`.
//! Daemon-level: `lxd_operations_total` and `lxd_uptime_seconds`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path as FsPath, PathBuf};

use axum::extract::{Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use corral_api as api;
use corral_runtime::cgroup::{Cgroup, CgroupRoot, Layout, PARENT};
use corral_runtime::proto::MonitorState;
use serde::Deserialize;

use crate::api::{sync, ApiError, ApiResult, AppState};
use crate::instances::{host_memory, Runtime, DEFAULT_PROJECT};

/// The routes of this module.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/1.0/metrics", get(get_metrics))
        .route("/1.0/resources", get(get_resources))
}

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

/// Query of `/1.0/metrics`; other parameters are ignored.
#[derive(Deserialize, Default)]
#[serde(default)]
struct MetricsQuery {
    project: Option<String>,
}

const CONTENT_TYPE_PROMETHEUS: &str = "text/plain; version=0.0.4";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

/// One metric family, in output order: name, help, type.
const FAMILIES: &[(&str, &str, Kind)] = &[
    (
        "lxd_cpu_seconds_total",
        "The total number of CPU time used in seconds.",
        Kind::Counter,
    ),
    (
        "lxd_cpu_effective_total",
        "The total number of effective CPUs.",
        Kind::Gauge,
    ),
    (
        "lxd_memory_Active_anon_bytes",
        "The amount of anonymous memory on active LRU list.",
        Kind::Gauge,
    ),
    (
        "lxd_memory_Active_file_bytes",
        "The amount of file-backed memory on active LRU list.",
        Kind::Gauge,
    ),
    (
        "lxd_memory_Active_bytes",
        "The amount of memory on active LRU list.",
        Kind::Gauge,
    ),
    ("lxd_memory_Cached_bytes", "The amount of cached memory.", Kind::Gauge),
    (
        "lxd_memory_Dirty_bytes",
        "The amount of memory waiting to get written back to the disk.",
        Kind::Gauge,
    ),
    (
        "lxd_memory_Inactive_anon_bytes",
        "The amount of anonymous memory on inactive LRU list.",
        Kind::Gauge,
    ),
    (
        "lxd_memory_Inactive_file_bytes",
        "The amount of file-backed memory on inactive LRU list.",
        Kind::Gauge,
    ),
    (
        "lxd_memory_Inactive_bytes",
        "The amount of memory on inactive LRU list.",
        Kind::Gauge,
    ),
    ("lxd_memory_Mapped_bytes", "The amount of mapped memory.", Kind::Gauge),
    (
        "lxd_memory_MemAvailable_bytes",
        "The amount of available memory.",
        Kind::Gauge,
    ),
    ("lxd_memory_MemFree_bytes", "The amount of free memory.", Kind::Gauge),
    ("lxd_memory_MemTotal_bytes", "The total amount of memory.", Kind::Gauge),
    (
        "lxd_memory_RSS_bytes",
        "The amount of anonymous and swap cache memory.",
        Kind::Gauge,
    ),
    (
        "lxd_memory_Shmem_bytes",
        "The amount of cached filesystem data that is swap-backed.",
        Kind::Gauge,
    ),
    ("lxd_memory_Swap_bytes", "The amount of used swap memory.", Kind::Gauge),
    (
        "lxd_memory_Unevictable_bytes",
        "The amount of unevictable memory.",
        Kind::Gauge,
    ),
    (
        "lxd_memory_Writeback_bytes",
        "The amount of memory queued for syncing to disk.",
        Kind::Gauge,
    ),
    (
        "lxd_memory_OOM_kills_total",
        "The number of out of memory kills.",
        Kind::Counter,
    ),
    ("lxd_procs_total", "The number of running processes.", Kind::Gauge),
    (
        "lxd_operations_total",
        "The number of running operations",
        Kind::Counter,
    ),
    ("lxd_uptime_seconds", "The daemon uptime in seconds", Kind::Gauge),
];

/// Samples by family name: (extra labels, value).
type Samples = BTreeMap<&'static str, Vec<(Vec<(&'static str, String)>, f64)>>;

async fn get_metrics(
    State(st): State<AppState>,
    Query(q): Query<MetricsQuery>,
) -> Result<axum::response::Response, ApiError> {
    let project = q.project.filter(|p| !p.is_empty());
    if let Some(p) = &project {
        if p != DEFAULT_PROJECT {
            return Err(ApiError(404, format!("Project not found: {p}")));
        }
    }
    let running_ops = st.ops.list().iter().filter(|o| !o.status.is_final()).count();
    let instances = st.instances.clone();
    let text = tokio::task::spawn_blocking(move || {
        let mut samples = Samples::new();
        let root = CgroupRoot::detect().ok();
        for rec in instances.list(DEFAULT_PROJECT)? {
            let Runtime::Running(state) = instances.runtime(&rec.name) else {
                continue;
            };
            let cgroup = instances.paths.cgroup_name(&rec.name);
            let dirs = root.as_ref().and_then(|r| CgroupDirs::new(r, &cgroup));
            let m = InstanceMetrics::collect(&state, dirs.as_ref());
            let base = vec![
                ("name", rec.name.clone()),
                ("project", rec.project.clone()),
                ("type", "container".to_string()),
            ];
            m.add_to(&mut samples, &base);
        }
        samples
            .entry("lxd_operations_total")
            .or_default()
            .push((Vec::new(), running_ops as f64));
        if let Some(up) = daemon_uptime() {
            samples.entry("lxd_uptime_seconds").or_default().push((Vec::new(), up));
        }
        Ok::<_, crate::instances::ServiceError>(render(&samples))
    })
    .await
    .map_err(|e| ApiError(500, e.to_string()))??;
    Ok(([(CONTENT_TYPE, CONTENT_TYPE_PROMETHEUS)], text).into_response())
}

/// Prometheus text exposition: per family HELP, TYPE, then its samples; families without
/// samples are left out.
fn render(samples: &Samples) -> String {
    let mut out = String::new();
    for (name, help, kind) in FAMILIES {
        let Some(series) = samples.get(name).filter(|s| !s.is_empty()) else {
            continue;
        };
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in series {
            out.push_str(name);
            if !labels.is_empty() {
                let mut sorted: Vec<_> = labels.iter().collect();
                sorted.sort_by_key(|(k, _)| *k);
                let body: Vec<String> = sorted
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                    .collect();
                let _ = write!(out, "{{{}}}", body.join(","));
            }
            let _ = writeln!(out, " {}", format_value(*value));
        }
    }
    out
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn format_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// Seconds since this process started, from `/proc/self/stat` and `/proc/uptime`.
fn daemon_uptime() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command (which may hold spaces): state is field 3, starttime field 22.
    let rest = &stat[stat.rfind(')')? + 2..];
    let start_ticks: f64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value; no pointers are involved.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(((uptime - start_ticks / hz).max(0.0) * 100.0).round() / 100.0)
}

/// The instance's cgroup directory per controller.
struct CgroupDirs {
    v2: bool,
    memory: Option<PathBuf>,
    cpu: Option<PathBuf>,
    cpuset: Option<PathBuf>,
    unified: Option<PathBuf>,
}

impl CgroupDirs {
    fn new(root: &CgroupRoot, name: &str) -> Option<CgroupDirs> {
        let cg = Cgroup::open(root, name).ok()?;
        let dir = |mount: &PathBuf| mount.join(PARENT).join(name);
        Some(match root.layout() {
            Layout::V1 { controllers, .. } => CgroupDirs {
                v2: false,
                memory: controllers.get("memory").map(dir),
                cpu: controllers.get("cpuacct").map(dir),
                cpuset: controllers.get("cpuset").map(dir),
                unified: cg.unified_dir(),
            },
            Layout::V2 { root } => {
                let d = dir(root);
                CgroupDirs {
                    v2: true,
                    memory: Some(d.clone()),
                    cpu: Some(d.clone()),
                    cpuset: Some(d.clone()),
                    unified: Some(d),
                }
            }
        })
    }
}

/// One instance's figures.
#[derive(Default)]
struct InstanceMetrics {
    cpu_user_s: f64,
    cpu_system_s: f64,
    cpu_effective: u64,
    /// memory.stat, under the names LXD uses (without `lxd_memory_` and `_bytes`).
    stat: BTreeMap<&'static str, u64>,
    total: u64,
    usage: u64,
    swap: u64,
    oom_kills: u64,
    processes: u64,
}

fn read_trimmed(path: &FsPath) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

fn read_num(path: &FsPath) -> Option<u64> {
    read_trimmed(path)?.parse().ok()
}

/// `key value` lines (memory.stat, cpu.stat, memory.events...).
fn read_keyed(path: &FsPath) -> BTreeMap<String, u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_string(), it.next()?.parse().ok()?))
        })
        .collect()
}

/// Number of CPUs in a cpuset list such as `0-3,6`.
fn count_cpus(list: &str) -> u64 {
    parse_cpu_list(list).len() as u64
}

fn parse_cpu_list(list: &str) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    for part in list.trim().split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<u64>(), b.parse::<u64>()) {
                    out.extend(a..=b);
                }
            }
            None => {
                if let Ok(n) = part.parse() {
                    out.insert(n);
                }
            }
        }
    }
    out
}

impl InstanceMetrics {
    fn collect(state: &MonitorState, dirs: Option<&CgroupDirs>) -> InstanceMetrics {
        let host_total = host_memory();
        let mut m = InstanceMetrics {
            cpu_user_s: state.cpu_ns as f64 / 1e9,
            usage: state.memory_bytes,
            total: host_total,
            processes: state.processes,
            cpu_effective: std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
            ..Default::default()
        };
        let Some(d) = dirs else {
            return m;
        };
        // CPU: the user/system split.
        if let Some(cpu) = &d.cpu {
            let split = if d.v2 {
                let stat = read_keyed(&cpu.join("cpu.stat"));
                stat.get("user_usec")
                    .zip(stat.get("system_usec"))
                    .map(|(u, s)| (*u as f64 / 1e6, *s as f64 / 1e6))
            } else {
                read_num(&cpu.join("cpuacct.usage_user"))
                    .zip(read_num(&cpu.join("cpuacct.usage_sys")))
                    .map(|(u, s)| (u as f64 / 1e9, s as f64 / 1e9))
            };
            let split = split.or_else(|| {
                // A v1 host with cpu on the unified hierarchy only.
                let stat = read_keyed(&d.unified.as_ref()?.join("cpu.stat"));
                Some((
                    *stat.get("user_usec")? as f64 / 1e6,
                    *stat.get("system_usec")? as f64 / 1e6,
                ))
            });
            if let Some((user, system)) = split {
                m.cpu_user_s = user;
                m.cpu_system_s = system;
            }
        }
        if let Some(cpus) = d
            .cpuset
            .as_ref()
            .and_then(|c| read_trimmed(&c.join(if d.v2 { "cpuset.cpus.effective" } else { "cpuset.cpus" })))
        {
            let n = count_cpus(&cpus);
            if n > 0 {
                m.cpu_effective = n;
            }
        }
        // Memory.
        if let Some(mem) = &d.memory {
            let stat = read_keyed(&mem.join("memory.stat"));
            let (prefix, names): (&str, &[(&str, &'static str)]) = if d.v2 {
                (
                    "",
                    &[
                        ("active_anon", "Active_anon"),
                        ("active_file", "Active_file"),
                        ("inactive_anon", "Inactive_anon"),
                        ("inactive_file", "Inactive_file"),
                        ("file", "Cached"),
                        ("file_dirty", "Dirty"),
                        ("file_mapped", "Mapped"),
                        ("anon", "RSS"),
                        ("shmem", "Shmem"),
                        ("unevictable", "Unevictable"),
                        ("file_writeback", "Writeback"),
                    ],
                )
            } else {
                (
                    "total_",
                    &[
                        ("active_anon", "Active_anon"),
                        ("active_file", "Active_file"),
                        ("inactive_anon", "Inactive_anon"),
                        ("inactive_file", "Inactive_file"),
                        ("cache", "Cached"),
                        ("dirty", "Dirty"),
                        ("mapped_file", "Mapped"),
                        ("rss", "RSS"),
                        ("shmem", "Shmem"),
                        ("unevictable", "Unevictable"),
                        ("writeback", "Writeback"),
                    ],
                )
            };
            for (key, lxd) in names {
                if let Some(v) = stat.get(&format!("{prefix}{key}")) {
                    m.stat.insert(lxd, *v);
                }
            }
            let active =
                m.stat.get("Active_anon").copied().unwrap_or(0) + m.stat.get("Active_file").copied().unwrap_or(0);
            let inactive =
                m.stat.get("Inactive_anon").copied().unwrap_or(0) + m.stat.get("Inactive_file").copied().unwrap_or(0);
            m.stat.insert("Active", active);
            m.stat.insert("Inactive", inactive);

            let (usage, limit, swap, events) = if d.v2 {
                (
                    read_num(&mem.join("memory.current")),
                    read_trimmed(&mem.join("memory.max")).and_then(|v| v.parse().ok()),
                    read_num(&mem.join("memory.swap.current")),
                    read_keyed(&mem.join("memory.events")),
                )
            } else {
                let usage = read_num(&mem.join("memory.usage_in_bytes"));
                let swap = read_num(&mem.join("memory.memsw.usage_in_bytes"))
                    .zip(usage)
                    .map(|(memsw, u)| memsw.saturating_sub(u));
                (
                    usage,
                    read_num(&mem.join("memory.limit_in_bytes")),
                    swap,
                    read_keyed(&mem.join("memory.oom_control")),
                )
            };
            if let Some(u) = usage {
                m.usage = u;
            }
            // An unlimited cgroup reports "max" (v2) or a huge number (v1): the host's memory.
            if let Some(limit) = limit.filter(|l| *l > 0 && (host_total == 0 || *l < host_total)) {
                m.total = limit;
            }
            m.swap = swap.unwrap_or(0);
            m.oom_kills = events.get("oom_kill").copied().unwrap_or(0);
        }
        m
    }

    fn add_to(&self, samples: &mut Samples, base: &[(&'static str, String)]) {
        let mut push = |name: &'static str, extra: &[(&'static str, &str)], value: f64| {
            let mut labels = base.to_vec();
            labels.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
            samples.entry(name).or_default().push((labels, value));
        };
        push(
            "lxd_cpu_seconds_total",
            &[("cpu", "0"), ("mode", "system")],
            self.cpu_system_s,
        );
        push(
            "lxd_cpu_seconds_total",
            &[("cpu", "0"), ("mode", "user")],
            self.cpu_user_s,
        );
        push("lxd_cpu_effective_total", &[], self.cpu_effective as f64);
        for (name, key) in [
            ("lxd_memory_Active_anon_bytes", "Active_anon"),
            ("lxd_memory_Active_file_bytes", "Active_file"),
            ("lxd_memory_Active_bytes", "Active"),
            ("lxd_memory_Cached_bytes", "Cached"),
            ("lxd_memory_Dirty_bytes", "Dirty"),
            ("lxd_memory_Inactive_anon_bytes", "Inactive_anon"),
            ("lxd_memory_Inactive_file_bytes", "Inactive_file"),
            ("lxd_memory_Inactive_bytes", "Inactive"),
            ("lxd_memory_Mapped_bytes", "Mapped"),
            ("lxd_memory_RSS_bytes", "RSS"),
            ("lxd_memory_Shmem_bytes", "Shmem"),
            ("lxd_memory_Unevictable_bytes", "Unevictable"),
            ("lxd_memory_Writeback_bytes", "Writeback"),
        ] {
            if let Some(v) = self.stat.get(key) {
                push(name, &[], *v as f64);
            }
        }
        let free = self.total.saturating_sub(self.usage);
        // Reclaimable page cache counts as available, as in /proc/meminfo.
        let available = (free + self.stat.get("Inactive_file").copied().unwrap_or(0)).min(self.total);
        push("lxd_memory_MemTotal_bytes", &[], self.total as f64);
        push("lxd_memory_MemFree_bytes", &[], free as f64);
        push("lxd_memory_MemAvailable_bytes", &[], available as f64);
        push("lxd_memory_Swap_bytes", &[], self.swap as f64);
        push("lxd_memory_OOM_kills_total", &[], self.oom_kills as f64);
        push("lxd_procs_total", &[], self.processes as f64);
    }
}

// ---------------------------------------------------------------------------------------------
// Resources
// ---------------------------------------------------------------------------------------------

async fn get_resources() -> ApiResult {
    let res = tokio::task::spawn_blocking(host_resources)
        .await
        .map_err(|e| ApiError(500, e.to_string()))?;
    sync(res)
}

fn host_resources() -> api::Resources {
    api::Resources {
        cpu: host_cpu(),
        memory: host_memory_resources(),
    }
}

/// `/proc/meminfo` as bytes (values in kB are multiplied; counts such as HugePages_Total are not).
fn meminfo() -> BTreeMap<String, u64> {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, rest) = l.split_once(':')?;
            let mut it = rest.split_whitespace();
            let n: u64 = it.next()?.parse().ok()?;
            let n = if it.next() == Some("kB") { n * 1024 } else { n };
            Some((k.trim().to_string(), n))
        })
        .collect()
}

fn host_memory_resources() -> api::ResourcesMemory {
    let mi = meminfo();
    let get = |k: &str| mi.get(k).copied().unwrap_or(0);
    let total = get("MemTotal");
    let available = mi
        .get("MemAvailable")
        .copied()
        .unwrap_or_else(|| get("MemFree") + get("Buffers") + get("Cached"));
    let page = get("Hugepagesize");
    api::ResourcesMemory {
        hugepages_total: get("HugePages_Total") * page,
        hugepages_used: get("HugePages_Total").saturating_sub(get("HugePages_Free")) * page,
        hugepages_size: page,
        used: total.saturating_sub(available),
        total,
    }
}

/// What `/proc/cpuinfo` says of one processor.
#[derive(Default, Clone)]
struct CpuInfo {
    vendor: String,
    model: String,
    mhz: u64,
    package: Option<u64>,
    core: Option<u64>,
}

fn cpuinfo() -> BTreeMap<i64, CpuInfo> {
    let text = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let mut out = BTreeMap::new();
    for block in text.split("\n\n") {
        let mut id = None;
        let mut info = CpuInfo::default();
        for line in block.lines() {
            let Some((k, v)) = line.split_once(':') else { continue };
            let (k, v) = (k.trim(), v.trim());
            match k {
                "processor" => id = v.parse::<i64>().ok(),
                "vendor_id" | "CPU implementer" if info.vendor.is_empty() => info.vendor = v.to_string(),
                "model name" | "cpu model" => info.model = v.to_string(),
                "cpu MHz" => info.mhz = v.parse::<f64>().map(|f| f as u64).unwrap_or(0),
                "physical id" => info.package = v.parse().ok(),
                "core id" => info.core = v.parse().ok(),
                _ => {}
            }
        }
        if let Some(id) = id {
            out.insert(id, info);
        }
    }
    out
}

fn host_cpu() -> api::ResourcesCpu {
    let sys = FsPath::new("/sys/devices/system/cpu");
    let info = cpuinfo();
    let possible = read_trimmed(&sys.join("possible"))
        .map(|l| parse_cpu_list(&l))
        .unwrap_or_default();
    let mut ids: BTreeSet<i64> = possible.iter().map(|n| *n as i64).collect();
    if ids.is_empty() {
        ids = info.keys().copied().collect();
    }
    let online = read_trimmed(&sys.join("online"))
        .map(|l| parse_cpu_list(&l))
        .unwrap_or_default();
    let isolated = read_trimmed(&sys.join("isolated"))
        .map(|l| parse_cpu_list(&l))
        .unwrap_or_default();

    // socket -> (die, core) -> [(thread id, numa node, online, isolated, MHz)]
    type Threads = Vec<(i64, u64, bool, bool, u64)>;
    let mut sockets: BTreeMap<u64, BTreeMap<(u64, u64), Threads>> = BTreeMap::new();
    let mut socket_info: BTreeMap<u64, CpuInfo> = BTreeMap::new();
    for id in &ids {
        let dir = sys.join(format!("cpu{id}"));
        let topo = dir.join("topology");
        let ci = info.get(id).cloned().unwrap_or_default();
        let package = read_trimmed(&topo.join("physical_package_id"))
            .and_then(|v| v.parse::<i64>().ok())
            .filter(|v| *v >= 0)
            .map(|v| v as u64)
            .or(ci.package)
            .unwrap_or(0);
        let core = read_num(&topo.join("core_id")).or(ci.core).unwrap_or(*id as u64);
        let die = read_num(&topo.join("die_id")).unwrap_or(0);
        let node = std::fs::read_dir(&dir)
            .ok()
            .and_then(|rd| {
                rd.flatten()
                    .find_map(|e| e.file_name().to_str()?.strip_prefix("node")?.parse::<u64>().ok())
            })
            .unwrap_or(0);
        let is_online = online.contains(&(*id as u64)) || (online.is_empty() && info.contains_key(id));
        let mhz = read_num(&dir.join("cpufreq/scaling_cur_freq"))
            .map(|khz| khz / 1000)
            .unwrap_or(ci.mhz);
        sockets
            .entry(package)
            .or_default()
            .entry((die, core))
            .or_default()
            .push((*id, node, is_online, isolated.contains(&(*id as u64)), mhz));
        let si = socket_info.entry(package).or_default();
        if si.model.is_empty() {
            *si = ci;
        }
    }

    let mut total = 0;
    let sockets = sockets
        .into_iter()
        .map(|(socket, cores)| {
            let si = socket_info.remove(&socket).unwrap_or_default();
            let cores: Vec<api::ResourcesCpuCore> = cores
                .into_iter()
                .map(|((die, core), threads)| {
                    let frequency = threads.iter().map(|t| t.4).max().unwrap_or(0);
                    let threads: Vec<api::ResourcesCpuThread> = threads
                        .into_iter()
                        .enumerate()
                        .map(|(n, (id, numa_node, online, isolated, _))| api::ResourcesCpuThread {
                            id,
                            numa_node,
                            thread: n as u64,
                            online,
                            isolated,
                        })
                        .collect();
                    total += threads.len() as u64;
                    api::ResourcesCpuCore {
                        core,
                        die,
                        threads,
                        frequency,
                    }
                })
                .collect();
            let frequency = cores.iter().map(|c| c.frequency).max().unwrap_or(0);
            let cpufreq = sys.join("cpu0/cpufreq");
            api::ResourcesCpuSocket {
                name: si.model,
                vendor: si.vendor,
                socket,
                cores,
                frequency,
                frequency_minimum: read_num(&cpufreq.join("cpuinfo_min_freq")).map_or(0, |k| k / 1000),
                frequency_turbo: read_num(&cpufreq.join("cpuinfo_max_freq")).map_or(0, |k| k / 1000),
            }
        })
        .collect();
    api::ResourcesCpu {
        architecture: std::env::consts::ARCH.to_string(),
        sockets,
        total,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(count_cpus("0-3,6"), 5);
        assert_eq!(count_cpus(""), 0);
        assert_eq!(count_cpus("2\n"), 1);
    }

    #[test]
    fn rendering_groups_families_and_escapes_labels() {
        let mut s = Samples::new();
        let labels = vec![("name", "a\"b".to_string()), ("project", "default".to_string())];
        s.entry("lxd_procs_total").or_default().push((labels, 3.0));
        s.entry("lxd_cpu_seconds_total")
            .or_default()
            .push((vec![("mode", "user".to_string()), ("cpu", "0".to_string())], 1.5));
        let text = render(&s);
        assert_eq!(
            text,
            "# HELP lxd_cpu_seconds_total The total number of CPU time used in seconds.\n\
             # TYPE lxd_cpu_seconds_total counter\n\
             lxd_cpu_seconds_total{cpu=\"0\",mode=\"user\"} 1.5\n\
             # HELP lxd_procs_total The number of running processes.\n\
             # TYPE lxd_procs_total gauge\n\
             lxd_procs_total{name=\"a\\\"b\",project=\"default\"} 3\n"
        );
    }
}
