//! System tests that boot Debian with systemd as PID 1, unprivileged: bookworm (the host's own
//! release) and trixie (a different distribution on the same kernel).

mod support;

use std::time::{Duration, Instant};

use support::*;

/// Units that fail in an unprivileged container on any host and that LXD masks or expects to
/// fail too: kernel filesystems a user namespace may not mount.
const EXPECTED_FAILURES: &[&str] = &[
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "sys-kernel-config.mount",
    "sys-fs-fuse-connections.mount",
];

fn boots_to_running_or_degraded(test: &str, image: &str) {
    let Some(rootfs) = require(test, image) else { return };
    let started = Instant::now();
    let mut s = spec(image, &rootfs);
    s.limits.memory = Some(512 * 1024 * 1024);
    let c = Running::start(s).expect("start");
    let state = wait_for(Duration::from_secs(60), || {
        let out = c.sh("systemctl is-system-running 2>/dev/null");
        let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
        matches!(s.as_str(), "running" | "degraded").then_some(s)
    });
    let failed = c.sh_ok("systemctl list-units --failed --plain --no-legend | awk '{print $1}'");
    let state =
        state.unwrap_or_else(|| panic!("{image}: systemd never reached running/degraded; failed units: {failed}"));
    eprintln!("{image}: {state} after {:?}", started.elapsed());
    for unit in failed.lines().filter(|l| !l.is_empty()) {
        assert!(
            EXPECTED_FAILURES.contains(&unit),
            "{image}: unit {unit} failed:\n{}",
            c.sh_ok(&format!("systemctl status {unit} --no-pager -l || true"))
        );
    }
    // procps's free reads /proc/meminfo, which lxcfs bases on limits.memory.
    if corral_runtime::layout::lxcfs_mounted(std::path::Path::new("/var/lib/lxcfs")) {
        let total = wait_for(Duration::from_secs(5), || {
            let t = c.sh_ok("free -k | awk '/Mem:/ {print $2}'");
            (t == "524288").then_some(t)
        });
        assert_eq!(
            total.as_deref(),
            Some("524288"),
            "free inside should show limits.memory"
        );
    } else {
        skip(test, "the free check needs lxcfs running at /var/lib/lxcfs");
    }
    // PID 1 is systemd, in a container it recognises as ours.
    assert_eq!(c.sh_ok("cat /proc/1/comm"), "systemd");
    assert_eq!(c.sh_ok("systemd-detect-virt --container"), "container-other");
    // systemd manages its own cgroup subtree (delegated cgroup2).
    assert!(c.sh_ok("cat /proc/self/cgroup").contains(".scope") || c.sh_ok("ls /sys/fs/cgroup").contains("init.scope"));

    // LXC's default seccomp policy: kexec_load and friends get EPERM (perl is essential in Debian).
    let perm = c.sh_ok("perl -e 'syscall(246, 0, 0, 0, 0); print $!+0' ");
    assert_eq!(perm, libc::EPERM.to_string(), "kexec_load must be denied with EPERM");
    let perm = c.sh_ok("perl -e 'syscall(175, 0, 0, 0); print $!+0'");
    assert_eq!(perm, libc::EPERM.to_string(), "init_module must be denied with EPERM");
    // The dropped capabilities are gone from the bounding set (sys_time is 25, sys_module 16).
    let bnd = c.sh_ok("grep CapBnd /proc/1/status | awk '{print $2}'");
    let bnd = u64::from_str_radix(&bnd, 16).unwrap();
    assert_eq!(bnd & (1 << 25), 0, "cap_sys_time must be dropped");
    assert_eq!(bnd & (1 << 16), 0, "cap_sys_module must be dropped");
    assert_ne!(bnd & (1 << 21), 0, "cap_sys_admin stays (inside the user namespace)");

    // A clean stop: systemd halts within the timeout.
    let t = Instant::now();
    let outcome = c.client.stop(Duration::from_secs(30), false).unwrap();
    eprintln!("{image}: clean stop {outcome:?} in {:?}", t.elapsed());
    assert!(outcome.clean, "systemd did not stop cleanly: {outcome:?}");
    assert!(cgroup_dirs(&c.spec.name).is_empty());
}

#[test]
fn debian_bookworm_boots_systemd_unprivileged() {
    boots_to_running_or_degraded("debian_bookworm_boots_systemd_unprivileged", "bookworm");
}

#[test]
fn debian_trixie_boots_systemd_unprivileged() {
    boots_to_running_or_degraded("debian_trixie_boots_systemd_unprivileged", "trixie");
}

#[test]
fn intercepted_setxattr_allows_only_overlay_opaque() {
    let test = "intercepted_setxattr_allows_only_overlay_opaque";
    let Some(rootfs) = require(test, "bookworm") else {
        return;
    };
    let mut s = spec("xattr", &rootfs);
    s.seccomp.intercept_setxattr = true;
    let c = Running::start(s).expect("start");
    let dir = format!("/root/{}", c.spec.name);
    // setxattr(2) is syscall 188 on x86_64; perl is essential in Debian.
    let setxattr = |name: &str| {
        c.sh_ok(&format!(
            "perl -e 'my ($p, $n, $v) = (\"{dir}\", \"{name}\", \"y\"); mkdir $p; \
             print syscall(188, $p, $n, $v, 1, 0) == 0 ? \"ok\" : $!+0'"
        ))
    };
    assert_eq!(setxattr("trusted.overlay.opaque"), "ok");
    assert_eq!(setxattr("trusted.corral.other"), libc::EPERM.to_string());
    let host_dir = c.spec.rootfs.join(dir.trim_start_matches('/'));
    let read = std::process::Command::new("python3")
        .arg("-c")
        .arg("import os,sys; print(os.getxattr(sys.argv[1], 'trusted.overlay.opaque').decode())")
        .arg(&host_dir)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir(&host_dir);
    assert_eq!(String::from_utf8_lossy(&read.stdout).trim(), "y", "{read:?}");
}

/// Debian through the daemon and the CLI, as a user runs it: launch from an imported image,
/// systemd up, exec with exit codes and stdin, state, a clean stop, delete.
fn launches_through_the_daemon_and_cli(test: &str, image: &str) {
    if skip_unless_root(test) {
        return;
    }
    let Some(tarball) = packed_image(test, image) else {
        return;
    };
    let d = TestDaemon::start(&format!("deb-{image}"));
    d.import(&tarball, image);
    let name = format!("{image}-1");
    d.corral_ok(&["launch", image, &name, "-c", "limits.memory=512MiB"]);
    let state = wait_for(Duration::from_secs(60), || {
        let out = d.corral(&["exec", &name, "--", "systemctl", "is-system-running"]);
        let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
        matches!(s.as_str(), "running" | "degraded").then_some(s)
    });
    assert!(state.is_some(), "{image}: systemd never came up through corrald");
    let out = d.corral(&["exec", &name, "--", "sh", "-c", "exit 5"]);
    assert_eq!(out.status.code(), Some(5));
    let mut child = std::process::Command::new(corral_cli())
        .args(["exec", &name, "--", "sh", "-c", "tr a-z A-Z"])
        .env("CORRAL_DIR", &d.dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"from stdin\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "FROM STDIN\n");
    let st = d.get(&format!("/1.0/instances/{name}/state"));
    assert_eq!(st["status"], "Running");
    assert!(st["processes"].as_i64().unwrap() > 3, "{st}");
    let list = d.corral_ok(&["list", "--format", "csv", "-c", "ns"]);
    assert_eq!(list.trim(), format!("{name},RUNNING"));
    let t = Instant::now();
    d.corral_ok(&["stop", &name]);
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "{image}: the clean stop took {:?}",
        t.elapsed()
    );
    assert_eq!(d.get(&format!("/1.0/instances/{name}"))["status"], "Stopped");
    d.corral_ok(&["delete", &name]);
    assert_eq!(d.get("/1.0/instances"), serde_json::json!([]));
}

#[test]
fn debian_bookworm_through_the_daemon_and_cli() {
    launches_through_the_daemon_and_cli("debian_bookworm_through_the_daemon_and_cli", "bookworm");
}

#[test]
fn debian_trixie_through_the_daemon_and_cli() {
    launches_through_the_daemon_and_cli("debian_trixie_through_the_daemon_and_cli", "trixie");
}
