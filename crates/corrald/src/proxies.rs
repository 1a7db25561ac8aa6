//! Proxy devices: one forwarding process per device (`corrald proxy CONFIG`, running
//! [`corral_proxy::run_process`]), started when the instance starts or the device is added, and
//! stopped when the instance stops or the device goes.
//!
//! The process is nobody's child but init's once the daemon is gone: it keeps serving across a
//! daemon restart, and a restarted daemon finds it again through its pid file in the run
//! directory (`proxy-<device>.pid`, checked against the process's command line so that a
//! reused pid is never signalled).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use corral_proxy::config::IdKind;
use corral_proxy::ProxyConfig;
use corral_runtime::spec::IdMap;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// What the proxy process prints once every socket listens.
pub const READY: &str = "ready";

fn config_path(run_dir: &Path, device: &str) -> PathBuf {
    run_dir.join(format!("proxy-{device}.json"))
}

fn pid_path(run_dir: &Path, device: &str) -> PathBuf {
    run_dir.join(format!("proxy-{device}.pid"))
}

/// A proxy device's configuration for an instance whose init is `init_pid`; ids the device gives
/// in the instance's terms go through its idmap (`None`: a privileged instance, ids as they are).
pub fn config_for(
    device: &str,
    opts: &BTreeMap<String, String>,
    init_pid: i32,
    idmap: Option<IdMap>,
) -> Result<ProxyConfig, String> {
    ProxyConfig::from_device(opts, init_pid, |kind, id| match (idmap, kind) {
        (None, _) => Some(id),
        (Some(m), IdKind::Uid) => m.host_uid_of(id),
        (Some(m), IdKind::Gid) => m.host_gid_of(id),
    })
    .map_err(|e| format!("device {device:?}: {e}"))
}

/// Checks a proxy device's options before it is used (the instance's pid does not matter here).
pub fn validate(device: &str, opts: &BTreeMap<String, String>) -> Result<(), String> {
    const KEYS: &[&str] = &[
        "type",
        "listen",
        "connect",
        "bind",
        "proxy_protocol",
        "uid",
        "gid",
        "mode",
        "security.uid",
        "security.gid",
        "nat",
    ];
    if let Some(k) = opts.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(format!(
            "device {device:?}: unknown proxy option {k:?} (known: {})",
            KEYS.join(", ")
        ));
    }
    config_for(device, opts, 1, None).map(|_| ())
}

/// Starts the device's process; returns once it listens, or with its error.
pub fn start(exe: &Path, run_dir: &Path, device: &str, config: &ProxyConfig) -> Result<(), String> {
    stop(run_dir, device);
    let path = config_path(run_dir, device);
    let data = serde_json::to_vec_pretty(config).map_err(|e| e.to_string())?;
    std::fs::write(&path, data).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run_dir.join(format!("proxy-{device}.log")))
        .map_err(|e| format!("cannot open the proxy's log: {e}"))?;
    let err_log = log.try_clone().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .arg("proxy")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(err_log)
        // It makes a session of its own (setsid): nothing aimed at the daemon's reaches it.
        .spawn()
        .map_err(|e| format!("cannot run the proxy process: {e}"))?;
    drop(log);
    let mut line = String::new();
    let read = BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line);
    if read.is_err() || line.trim() != READY {
        let _ = child.kill();
        let _ = child.wait();
        let text = std::fs::read_to_string(run_dir.join(format!("proxy-{device}.log"))).unwrap_or_default();
        let last = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("it exited");
        return Err(format!("device {device:?}: the proxy did not start: {last}"));
    }
    std::fs::write(pid_path(run_dir, device), child.id().to_string()).map_err(|e| e.to_string())?;
    // Waited for in the background, so that its exit leaves no zombie while the daemon lives.
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    Ok(())
}

/// The pid of the device's process, if it runs (and is ours).
pub fn running_pid(run_dir: &Path, device: &str) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_path(run_dir, device))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let want = config_path(run_dir, device);
    let ours = cmdline
        .split(|b| *b == 0)
        .any(|a| Path::new(&*String::from_utf8_lossy(a)) == want);
    ours.then_some(pid)
}

/// Stops the device's process (SIGTERM, then SIGKILL after two seconds) and removes its files.
pub fn stop(run_dir: &Path, device: &str) {
    if let Some(pid) = running_pid(run_dir, device) {
        let pid = Pid::from_raw(pid);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(2);
        while kill(pid, None).is_ok() && !is_zombie(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if kill(pid, None).is_ok() && !is_zombie(pid) {
            let _ = kill(pid, Signal::SIGKILL);
        }
    }
    let _ = std::fs::remove_file(pid_path(run_dir, device));
    let _ = std::fs::remove_file(config_path(run_dir, device));
}

fn is_zombie(pid: Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
        .unwrap_or(true)
}

/// Stops every proxy process of an instance (it stopped).
pub fn stop_all(run_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(run_dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(device) = name.strip_prefix("proxy-").and_then(|n| n.strip_suffix(".pid")) {
            stop(run_dir, device);
        }
    }
}
