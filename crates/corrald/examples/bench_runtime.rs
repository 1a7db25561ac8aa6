//! Runtime benchmark: prints JSON figures for start, stop, Debian boot, exec and monitor memory.
//!
//! `cargo run --release --example bench_runtime -- BUSYBOX_ROOTFS [DEBIAN_ROOTFS]`, with
//! target/release/corrald built (it is the monitor). See scripts/bench-runtime.sh.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use corral_runtime::client::{self, Client};
use corral_runtime::proto::ExecRequest;
use corral_runtime::spec::ContainerSpec;

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 100.0).round() / 100.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn spec(name: &str, rootfs: &Path) -> ContainerSpec {
    ContainerSpec::new(name, rootfs, PathBuf::from("/run/corral-bench").join(name))
}

fn pss_kib(pid: i32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("Pss:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let busybox = PathBuf::from(
        args.get(1)
            .expect("usage: bench_runtime BUSYBOX_ROOTFS [DEBIAN_ROOTFS]"),
    );
    let debian = args.get(2).map(PathBuf::from);
    let exe = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("corrald");
    let rounds = 20;

    let (mut start, mut force_stop, mut clean_stop, mut cycle) = (vec![], vec![], vec![], vec![]);
    for i in 0..rounds {
        let s = spec(&format!("bench-bb{i}"), &busybox);
        let t = Instant::now();
        let c = client::spawn(&exe, &s).expect("start busybox");
        start.push(ms(t.elapsed()));
        let t2 = Instant::now();
        if i % 2 == 0 {
            c.stop(Duration::from_secs(0), true).unwrap();
            force_stop.push(ms(t2.elapsed()));
            cycle.push(ms(t.elapsed()));
        } else {
            // Let init settle so the clean stop measures shutdown, not boot.
            std::thread::sleep(Duration::from_millis(50));
            let t2 = Instant::now();
            c.stop(Duration::from_secs(10), false).unwrap();
            clean_stop.push(ms(t2.elapsed()));
        }
        let _ = std::fs::remove_dir_all(&s.run_dir);
    }

    let s = spec("bench-exec", &busybox);
    let c = client::spawn(&exe, &s).expect("start busybox");
    let req = ExecRequest::new(&["true"]);
    let mut exec = vec![];
    for _ in 0..200 {
        let t = Instant::now();
        let out = c.exec_output(&req, b"").unwrap();
        exec.push(ms(t.elapsed()));
        assert_eq!(out.code, 0);
    }
    let monitor_pss_alone = pss_kib(c.state().unwrap().monitor_pid);
    // With more containers the monitors share their code pages: the per-container cost.
    let others: Vec<(ContainerSpec, Client)> = (0..9)
        .map(|i| {
            let s = spec(&format!("bench-pss{i}"), &busybox);
            let c = client::spawn(&exe, &s).expect("start busybox");
            (s, c)
        })
        .collect();
    let total: u64 = std::iter::once(&c)
        .chain(others.iter().map(|(_, c)| c))
        .map(|c| pss_kib(c.state().unwrap().monitor_pid))
        .sum();
    let monitor_pss_of_10 = total / 10;
    for (s, c) in others {
        c.stop(Duration::from_secs(0), true).unwrap();
        let _ = std::fs::remove_dir_all(&s.run_dir);
    }
    c.stop(Duration::from_secs(0), true).unwrap();
    let _ = std::fs::remove_dir_all(&s.run_dir);

    let mut debian_boot = None;
    let mut debian_stop = None;
    if let Some(rootfs) = debian {
        let mut boots = vec![];
        let mut stops = vec![];
        for i in 0..5 {
            let s = spec(&format!("bench-deb{i}"), &rootfs);
            let t = Instant::now();
            let c: Client = client::spawn(&exe, &s).expect("start debian");
            // Until systemd's manager answers, systemctl says "offline" or nothing: ask again.
            let wait = ExecRequest::new(&["systemctl", "is-system-running", "--wait"]);
            let state = loop {
                let out = c.exec_output(&wait, b"").unwrap();
                let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
                if matches!(state.as_str(), "running" | "degraded") || t.elapsed() > Duration::from_secs(60) {
                    break state;
                }
                std::thread::sleep(Duration::from_millis(5));
            };
            boots.push(ms(t.elapsed()));
            assert!(state == "running" || state == "degraded", "debian boot ended {state}");
            let t = Instant::now();
            c.stop(Duration::from_secs(30), false).unwrap();
            stops.push(ms(t.elapsed()));
            let _ = std::fs::remove_dir_all(&s.run_dir);
        }
        debian_boot = Some(median(boots));
        debian_stop = Some(median(stops));
    }

    let json = serde_json::json!({
        "busybox_start_to_init_exec_ms": median(start),
        "busybox_start_force_stop_cycle_ms": median(cycle),
        "busybox_force_stop_ms": median(force_stop),
        "busybox_clean_stop_ms": median(clean_stop),
        "exec_true_round_trip_ms": median(exec),
        "monitor_pss_kib_alone": monitor_pss_alone,
        "monitor_pss_kib_each_of_10": monitor_pss_of_10,
        "debian_boot_to_systemd_ready_ms": debian_boot,
        "debian_clean_stop_ms": debian_stop,
        "rounds": rounds,
    });
    println!("{}", serde_json::to_string_pretty(&json).unwrap());
}
