//! System tests of `GET /1.0/metrics` (Prometheus text, LXD's names), `GET /1.0/resources` and
//! `GET /1.0/storage-pools/{name}/resources`, through a real corrald. Root only.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::PathBuf;

use corral_runtime::proto::ExecRequest;
use support::*;

/// One request: status, content type, body text.
fn raw(d: &TestDaemon, method: &str, path: &str) -> (u16, String, String) {
    let a = d.call(method, path, &[], Body::None);
    let ctype = a.header("content-type").unwrap_or_default().to_string();
    (a.code, ctype, String::from_utf8_lossy(&a.body).into_owned())
}

/// The metrics, checked for format and content type, parsed (`METRICS_DUMP=1` prints them).
fn metrics(d: &TestDaemon, query: &str) -> Vec<Sample> {
    let (code, ctype, text) = raw(d, "GET", &format!("/1.0/metrics{query}"));
    assert_eq!(code, 200, "GET /1.0/metrics{query}: {text}");
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "content type {ctype:?}");
    if std::env::var_os("METRICS_DUMP").is_some() {
        eprintln!("{text}");
    }
    parse_exposition(&text).unwrap_or_else(|e| panic!("bad exposition format: {e}\n{text}"))
}

/// Runs `script` in the container through its monitor; it must succeed.
fn exec_in(d: &TestDaemon, name: &str, script: &str) {
    let client = corral_runtime::client::Client::new(&d.dir.join("run").join(name));
    let out = client
        .exec_output(&ExecRequest::new(&["/bin/sh", "-c", script]), b"")
        .expect("exec");
    assert_eq!(out.code, 0, "{script}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Removes a file on drop.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// A strict parser of the Prometheus text format (0.0.4)
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `{a="x",b="y"}` after the name; returns the labels and the rest of the line.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = s.strip_prefix('{').ok_or("expected '{'")?;
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let (name, r) = rest.split_once("=\"").ok_or(format!("bad label in {s:?}"))?;
        if !is_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        let mut value = String::new();
        let mut chars = r.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(format!("unterminated label value in {s:?}")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?} in {s:?}")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("duplicate label {name:?}"));
        }
        rest = &r[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if !rest.starts_with('}') {
            return Err(format!("expected ',' or '}}' in {s:?}"));
        }
    }
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse().map_err(|_| format!("bad value {s:?}")),
    }
}

/// Every non-comment line is `name{labels} value`; a metric's HELP and TYPE come before its first
/// sample, once; a metric's samples are contiguous; no series appears twice.
fn parse_exposition(text: &str) -> Result<Vec<Sample>, String> {
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("does not end with a newline".into());
    }
    let mut help = HashSet::new();
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut finished = HashSet::new();
    let mut current: Option<String> = None;
    let mut series = HashSet::new();
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            return Err("empty line".into());
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let (kw, rest) = rest.split_once(' ').ok_or(format!("bad comment {line:?}"))?;
            let (name, arg) = rest.split_once(' ').ok_or(format!("bad comment {line:?}"))?;
            if !is_metric_name(name) {
                return Err(format!("bad metric name in {line:?}"));
            }
            if out.iter().any(|s: &Sample| s.name == name) {
                return Err(format!("{kw} of {name} after its samples"));
            }
            match kw {
                "HELP" => {
                    if !help.insert(name.to_string()) {
                        return Err(format!("second HELP for {name}"));
                    }
                }
                "TYPE" => {
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&arg) {
                        return Err(format!("bad type in {line:?}"));
                    }
                    if types.insert(name.to_string(), arg.to_string()).is_some() {
                        return Err(format!("second TYPE for {name}"));
                    }
                }
                _ => return Err(format!("unexpected comment {line:?}")),
            }
            continue;
        }
        if line.starts_with('#') {
            return Err(format!("bad comment {line:?}"));
        }
        let name_end = line.find(['{', ' ']).ok_or(format!("no value in {line:?}"))?;
        let name = &line[..name_end];
        if !is_metric_name(name) {
            return Err(format!("bad metric name {name:?}"));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..])?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let value = rest
            .strip_prefix(' ')
            .ok_or(format!("no space before the value in {line:?}"))?;
        if value.contains(' ') {
            return Err(format!("trailing fields (timestamps are not expected) in {line:?}"));
        }
        let value = parse_value(value)?;
        if !help.contains(name) || !types.contains_key(name) {
            return Err(format!("sample of {name} before its HELP and TYPE"));
        }
        if current.as_deref() != Some(name) {
            if let Some(prev) = current.replace(name.to_string()) {
                finished.insert(prev);
            }
            if finished.contains(name) {
                return Err(format!("samples of {name} are not contiguous"));
            }
        }
        if !series.insert(format!("{name}{labels:?}")) {
            return Err(format!("duplicate series {line:?}"));
        }
        out.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    Ok(out)
}

#[test]
fn the_parser_is_strict() {
    let ok = "# HELP a_total A.\n# TYPE a_total counter\na_total{name=\"x\",q=\"a\\\"b\"} 1.5\n";
    let s = parse_exposition(ok).unwrap();
    assert_eq!((s[0].labels["q"].as_str(), s[0].value), ("a\"b", 1.5));
    for bad in [
        "a 1\n",                                                                                       // no HELP/TYPE
        "# HELP a A.\n# TYPE a gauge\na{name=\"x\" 1\n", // unterminated labels
        "# HELP a A.\n# TYPE a gauge\na{name=\"x\"}1\n", // no space
        "# HELP a A.\n# TYPE a gauge\na one\n",          // bad value
        "# HELP a A.\n# TYPE a gauge\na 1\na 2\n",       // duplicate series
        "# HELP a A.\n# TYPE a gauge\na 1",              // no final newline
        "# HELP a A.\n# TYPE a gauge\n# HELP b B.\n# TYPE b gauge\na{x=\"1\"} 1\nb 1\na{x=\"2\"} 1\n", // split
        "# HELP a A.\n# TYPE a gauge\na 1\n# HELP a A.\n", // HELP after samples
    ] {
        assert!(parse_exposition(bad).is_err(), "accepted {bad:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

fn of<'a>(samples: &'a [Sample], metric: &str, instance: &str) -> Vec<&'a Sample> {
    samples
        .iter()
        .filter(|s| s.name == metric && s.labels.get("name").map(String::as_str) == Some(instance))
        .collect()
}

fn one(samples: &[Sample], metric: &str, instance: &str) -> f64 {
    let found = of(samples, metric, instance);
    assert_eq!(found.len(), 1, "{metric} of {instance}: {found:?}");
    found[0].value
}

fn cpu_seconds(samples: &[Sample], instance: &str) -> f64 {
    of(samples, "lxd_cpu_seconds_total", instance)
        .iter()
        .map(|s| s.value)
        .sum()
}

#[test]
fn metrics_speak_lxd_names_for_running_instances_only() {
    let test = "metrics_speak_lxd_names_for_running_instances_only";
    let Some(image) = busybox_image(test) else { return };
    let _image_file = RemoveOnDrop(image.clone());
    let d = TestDaemon::start("metrics");
    d.import(&image, "bb");
    d.op_ok(
        "POST",
        "/1.0/instances",
        r#"{"name":"m1","source":{"type":"image","alias":"bb"},"config":{"limits.memory":"64MiB"}}"#,
    );
    d.op_ok(
        "POST",
        "/1.0/instances",
        r#"{"name":"m2","source":{"type":"image","alias":"bb"}}"#,
    );
    d.op_ok(
        "POST",
        "/1.0/instances",
        r#"{"name":"m3","source":{"type":"image","alias":"bb"}}"#,
    );
    d.op_ok("PUT", "/1.0/instances/m1/state", r#"{"action":"start"}"#);
    d.op_ok("PUT", "/1.0/instances/m2/state", r#"{"action":"start"}"#);

    let before = metrics(&d, "");
    // Burn some CPU in m1.
    exec_in(&d, "m1", "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done");
    let samples = metrics(&d, "?project=default&target=ignored");

    let required = [
        "lxd_cpu_seconds_total",
        "lxd_memory_MemTotal_bytes",
        "lxd_memory_MemFree_bytes",
        "lxd_memory_MemAvailable_bytes",
        "lxd_memory_Swap_bytes",
        "lxd_memory_RSS_bytes",
        "lxd_memory_Active_bytes",
        "lxd_memory_Cached_bytes",
        "lxd_procs_total",
    ];
    for name in ["m1", "m2"] {
        for metric in required {
            let found = of(&samples, metric, name);
            assert!(!found.is_empty(), "no {metric} for {name}");
            for s in found {
                assert_eq!(s.labels["project"], "default", "{s:?}");
                assert_eq!(s.labels["type"], "container", "{s:?}");
                assert!(s.value.is_finite() && s.value >= 0.0, "{s:?}");
            }
        }
        let modes: BTreeSet<_> = of(&samples, "lxd_cpu_seconds_total", name)
            .iter()
            .map(|s| (s.labels["cpu"].clone(), s.labels["mode"].clone()))
            .collect();
        assert_eq!(
            modes,
            [("0", "system"), ("0", "user")]
                .map(|(c, m)| (c.to_string(), m.to_string()))
                .into_iter()
                .collect(),
            "cpu series of {name}"
        );
        assert!(one(&samples, "lxd_procs_total", name) >= 1.0, "processes of {name}");
        let total = one(&samples, "lxd_memory_MemTotal_bytes", name);
        let free = one(&samples, "lxd_memory_MemFree_bytes", name);
        let available = one(&samples, "lxd_memory_MemAvailable_bytes", name);
        assert!(
            free < total && available >= free && available <= total,
            "{name}: {total} {free} {available}"
        );
    }
    assert_eq!(one(&samples, "lxd_memory_MemTotal_bytes", "m1"), 67108864.0);
    assert!(
        one(&samples, "lxd_memory_MemTotal_bytes", "m2") > 67108864.0,
        "the unlimited instance sees the host's memory"
    );
    let (cpu_before, cpu_after) = (cpu_seconds(&before, "m1"), cpu_seconds(&samples, "m1"));
    assert!(
        cpu_after > 0.0 && cpu_after > cpu_before + 0.05,
        "busy loop: cpu seconds {cpu_before} -> {cpu_after}"
    );
    assert!(
        samples
            .iter()
            .all(|s| s.labels.get("name").map(String::as_str) != Some("m3")),
        "a stopped instance has no series"
    );
    // Daemon-level series carry no instance labels.
    assert!(samples
        .iter()
        .any(|s| s.name == "lxd_uptime_seconds" && s.labels.is_empty()));

    // Stopping takes an instance's series away.
    d.op_ok("PUT", "/1.0/instances/m2/state", r#"{"action":"stop","force":true}"#);
    let samples = metrics(&d, "");
    assert!(
        of(&samples, "lxd_procs_total", "m2").is_empty(),
        "stopped m2 still has series"
    );
    assert_eq!(of(&samples, "lxd_procs_total", "m1").len(), 1);

    let (code, _, body) = raw(&d, "GET", "/1.0/metrics?project=nope");
    assert_eq!(code, 404, "unknown project: {body}");
}

#[test]
fn resources_report_host_cpu_memory_and_pool_usage() {
    let test = "resources_report_host_cpu_memory_and_pool_usage";
    let Some(image) = busybox_image(test) else { return };
    let _image_file = RemoveOnDrop(image.clone());
    let d = TestDaemon::start("resources");
    d.import(&image, "bb");

    let res = d.get("/1.0/resources");
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let mem_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    assert_eq!(
        res["memory"]["total"].as_u64(),
        Some(mem_kib * 1024),
        "{}",
        res["memory"]
    );
    let used = res["memory"]["used"].as_u64().unwrap();
    assert!(used > 0 && used < mem_kib * 1024, "{}", res["memory"]);

    let cpu = &res["cpu"];
    let threads: Vec<i64> = cpu["sockets"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["cores"].as_array().unwrap().iter())
        .flat_map(|c| c["threads"].as_array().unwrap().iter())
        .map(|t| t["id"].as_i64().unwrap())
        .collect();
    let distinct: BTreeSet<_> = threads.iter().collect();
    assert_eq!(distinct.len(), threads.len(), "thread ids repeat: {cpu}");
    assert_eq!(cpu["total"].as_u64(), Some(threads.len() as u64), "{cpu}");
    let online = std::thread::available_parallelism().unwrap().get();
    assert!(
        threads.len() >= online,
        "{} threads, {online} usable: {cpu}",
        threads.len()
    );
    assert_eq!(cpu["architecture"], std::env::consts::ARCH);

    let pools = d.get("/1.0/storage-pools");
    let pool = pools[0].as_str().unwrap().rsplit('/').next().unwrap().to_string();
    let pr = d.get(&format!("/1.0/storage-pools/{pool}/resources"));
    let (total, used) = (
        pr["space"]["total"].as_u64().unwrap(),
        pr["space"]["used"].as_u64().unwrap_or(0),
    );
    assert!(total > used && used > 0, "{pr}");
    let (itotal, iused) = (
        pr["inodes"]["total"].as_u64().unwrap(),
        pr["inodes"]["used"].as_u64().unwrap(),
    );
    assert!(itotal >= iused, "{pr}");
    let (code, _) = d.request("GET", "/1.0/storage-pools/nope/resources", None);
    assert_eq!(code, 404);
}
