//! System tests of the container runtime, through the monitor that corrald re-executes as.
//!
//! Real namespaces, cgroups, idmapped mounts and seccomp on this host; root only. What belongs
//! here: anything a user would see of one container's life (boot, ids, limits, isolation, exec,
//! stop, teardown). The daemon's API has its own test files.

mod support;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use corral_runtime::client::ExecStdio;
use corral_runtime::proto::{ExecRequest, ExitInfo, Status, StopOutcome};
use corral_runtime::spec::{CpuLimit, RootfsMode, SeccompPolicy};
use support::*;

#[test]
fn busybox_boots_unprivileged_on_an_idmapped_rootfs() {
    let Some(rootfs) = require("busybox_boots_unprivileged_on_an_idmapped_rootfs", "busybox") else {
        return;
    };
    let c = Running::start(spec("bb", &rootfs)).expect("start");
    let state = c.client.state().unwrap();
    assert_eq!(state.status, Status::Running);
    assert!(state.idmapped, "ext4 can idmap: the rootfs must be an idmapped mount");

    // Inside: root, mapped onto the host range.
    assert_eq!(
        c.sh_ok("cat /proc/self/uid_map").split_whitespace().collect::<Vec<_>>(),
        ["0", "1000000", "65536"]
    );
    assert_eq!(c.sh_ok("id -u"), "0");
    // Outside: init is an unprivileged host uid.
    let status = fs::read_to_string(format!("/proc/{}/status", state.init_pid)).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(uid_line.split_whitespace().nth(1), Some("1000000"), "{uid_line}");
    // PID 1 inside is busybox init, and its environment says it is in a container.
    assert_eq!(c.sh_ok("cat /proc/1/comm"), "init");
    assert_eq!(
        c.sh_ok("tr '\\0' '\\n' < /proc/1/environ | grep ^container="),
        "container=corral"
    );

    // A file created inside lands on disk owned by the image's owner, host uid 0.
    let file = format!("root/{}", c.spec.name);
    c.sh_ok(&format!("echo hi > /{file} && chown 0:0 /{file}"));
    let on_disk = c.spec.rootfs.join(&file);
    let meta = fs::metadata(&on_disk).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
    c.sh_ok(&format!("chown 1000:1000 /{file}"));
    assert_eq!(
        fs::metadata(&on_disk).unwrap().uid(),
        1000,
        "container uid 1000 is disk uid 1000"
    );
    fs::remove_file(&on_disk).unwrap();

    // The layout a distribution expects.
    for dev in [
        "null", "zero", "full", "random", "urandom", "tty", "console", "ptmx", "pts", "shm", "fd", "stdin", "stdout",
        "stderr",
    ] {
        c.sh_ok(&format!("test -e /dev/{dev}"));
    }
    c.sh_ok("echo x > /dev/null && head -c 4 /dev/urandom | wc -c | grep -q 4");
    assert!(
        c.sh_ok("grep ' /sys ' /proc/mounts").contains("ro,"),
        "sysfs must be read-only"
    );
    // (Not every kernel has sysrq.)
    if Path::new("/proc/sysrq-trigger").exists() {
        assert!(
            c.sh_ok("grep ' /proc/sysrq-trigger ' /proc/mounts").contains("ro,"),
            "sysrq-trigger must be read-only"
        );
    }
    assert_eq!(c.sh_ok("cat /proc/timer_list | wc -c"), "0", "timer_list is masked");
    // The console log has the boot shell's banner.
    let log = wait_for(Duration::from_secs(5), || {
        let l = c.client.console_log().ok()?;
        String::from_utf8_lossy(&l).contains("BusyBox").then_some(l)
    });
    assert!(log.is_some(), "console log should show the busybox shell banner");
}

#[test]
fn the_container_sees_none_of_the_host() {
    let Some(rootfs) = require("the_container_sees_none_of_the_host", "busybox") else {
        return;
    };
    let c = Running::start(spec("iso", &rootfs)).expect("start");
    // Processes: only its own, and the host's PID 1 is not among them.
    let pids = c.sh_ok("ls /proc | grep -E '^[0-9]+$' | wc -l").parse::<u32>().unwrap();
    assert!(pids < 10, "the container sees {pids} processes");
    let host_pid = std::process::id();
    assert_eq!(
        c.sh(&format!("test -e /proc/{host_pid}/comm")).code,
        1,
        "the test process must be invisible"
    );
    // Mounts: nothing of the host's tree (the test binary lives under the work tree).
    let mounts = c.sh_ok("cat /proc/mounts");
    assert!(
        !mounts.contains("/run/corral-test"),
        "host paths leak into the mount table:\n{mounts}"
    );
    assert!(!mounts.contains(" /tmp "), "{mounts}");
    // Network: a namespace of its own with only lo.
    assert_eq!(c.sh_ok("ls /sys/class/net"), "lo");
    // Hostname is the container's.
    assert_eq!(c.sh_ok("hostname"), c.spec.name);
}

#[test]
fn exec_runs_with_exit_codes_stdin_users_and_a_pty() {
    let Some(rootfs) = require("exec_runs_with_exit_codes_stdin_users_and_a_pty", "busybox") else {
        return;
    };
    let c = Running::start(spec("exec", &rootfs)).expect("start");
    assert_eq!(c.sh("exit 42").code, 42);
    let missing = c
        .client
        .exec_output(&ExecRequest::new(&["no-such-command"]), b"")
        .unwrap();
    assert_eq!(missing.code, 127);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not found"));
    let echoed = c
        .client
        .exec_output(&ExecRequest::new(&["cat"]), b"hello from stdin")
        .unwrap();
    assert_eq!(echoed.stdout, b"hello from stdin");

    let mut req = ExecRequest::new(&["sh", "-c", "id -u; id -g; pwd; echo $FOO"]);
    req.uid = 1000;
    req.gid = 1000;
    req.cwd = Some("/tmp".into());
    req.env.push(("FOO".into(), "bar".into()));
    let out = c.client.exec_output(&req, b"").unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "1000\n1000\n/tmp\nbar\n",
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A signal reaches the command: 128 + SIGTERM.
    let (r, w) = nix::unistd::pipe().unwrap();
    let (r2, w2) = nix::unistd::pipe().unwrap();
    let null = fs::File::open("/dev/null").unwrap();
    let session = c
        .client
        .exec(
            &ExecRequest::new(&["sleep", "30"]),
            ExecStdio::Fds([null.into(), w, w2]),
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    session.signal(libc::SIGTERM).unwrap();
    assert_eq!(session.wait().unwrap(), 128 + libc::SIGTERM);
    drop((r, r2));

    // With a pty: a terminal inside the container's own devpts, with the requested size.
    let mut req = ExecRequest::new(&["sh", "-c", "tty; stty size"]);
    req.rows = 33;
    req.cols = 101;
    let session = c.client.exec(&req, ExecStdio::Pty).unwrap();
    let master = session.pty.as_ref().unwrap().try_clone().unwrap();
    let code = session.wait().unwrap();
    assert_eq!(code, 0);
    let mut out = Vec::new();
    let mut f = fs::File::from(master);
    let mut buf = [0u8; 4096];
    // The slave is closed: read what is buffered until EIO.
    while let Ok(n) = std::io::Read::read(&mut f, &mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("/dev/pts/"), "tty output: {text:?}");
    assert!(text.contains("33 101"), "stty size output: {text:?}");
}

#[test]
fn processes_and_memory_limits_hold() {
    let Some(rootfs) = require("processes_and_memory_limits_hold", "busybox") else {
        return;
    };
    let mut s = spec("lim", &rootfs);
    s.limits.processes = Some(40);
    s.limits.memory = Some(64 * 1024 * 1024);
    let c = Running::start(s).expect("start");
    let neighbour = Running::start(spec("nb", &rootfs)).expect("start neighbour");

    // A fork bomb hits limits.processes: forks fail inside, the cgroup never holds more than
    // the limit, and once the bomb's processes end the container is usable again.
    let bomb = c.sh("for i in $(seq 100); do sleep 2 </dev/null >/dev/null 2>&1 & done; echo spawned");
    let err = String::from_utf8_lossy(&bomb.stderr);
    assert!(err.contains("can't fork"), "the bomb should run into the limit: {err}");
    let processes = c.client.state().unwrap().processes;
    assert!(
        (30..=40).contains(&processes),
        "cgroup counts {processes} processes (limit 40)"
    );
    let drained = wait_for(Duration::from_secs(10), || {
        (c.client.state().ok()?.processes < 10).then_some(())
    });
    assert!(drained.is_some(), "the bomb's processes did not end");
    assert_eq!(c.sh_ok("echo usable"), "usable");

    // A memory hog is OOM-killed inside the cgroup; the container and its neighbour live.
    let hog = c.sh("head -c 200m /dev/zero | tail > /dev/null; echo survived $?");
    assert!(
        String::from_utf8_lossy(&hog.stdout).contains("survived 137") || hog.code == 137,
        "hog: {hog:?}"
    );
    assert_eq!(c.sh_ok("echo alive"), "alive");
    assert_eq!(neighbour.sh_ok("echo alive"), "alive");
    assert!(c.client.state().unwrap().memory_peak_bytes <= 64 * 1024 * 1024 + 4096 * 1024);
}

#[test]
fn cpu_limit_shows_through_lxcfs() {
    let Some(rootfs) = require("cpu_limit_shows_through_lxcfs", "busybox") else {
        return;
    };
    if !corral_runtime::layout::lxcfs_mounted(Path::new("/var/lib/lxcfs")) {
        skip("cpu_limit_shows_through_lxcfs", "needs lxcfs running at /var/lib/lxcfs");
        return;
    }
    let mut s = spec("cpu", &rootfs);
    s.limits.cpu = Some(CpuLimit::Count(1));
    let c = Running::start(s).expect("start");
    let cpus = wait_for(Duration::from_secs(5), || {
        let n = c.sh_ok("grep -c ^processor /proc/cpuinfo");
        (n == "1").then_some(n)
    });
    assert_eq!(cpus.as_deref(), Some("1"), "limits.cpu=1 should show one processor");
    assert_eq!(c.sh_ok("cat /sys/devices/system/cpu/online"), "0");
    let unlimited = Running::start(spec("cpu2", &rootfs)).expect("start");
    // (lxcfs may serve a stale cache entry for a moment; see lxcfs_shows_the_memory_limit.)
    let host_cpus = fs::read_to_string("/proc/cpuinfo")
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    assert_eq!(
        unlimited.sh_ok("grep -c ^processor /proc/cpuinfo"),
        host_cpus.to_string()
    );
}

#[test]
fn intercepted_mknod_allows_only_safe_devices() {
    let Some(rootfs) = require("intercepted_mknod_allows_only_safe_devices", "busybox") else {
        return;
    };
    let mut s = spec("mknod", &rootfs);
    s.seccomp = SeccompPolicy {
        intercept_mknod: true,
        ..SeccompPolicy::default()
    };
    let c = Running::start(s).expect("start");
    // On the rootfs: /dev/shm, like any filesystem mounted in a user namespace, is nodev.
    let dir = format!("/tmp/{}", c.spec.name);
    c.sh_ok(&format!(
        "mkdir -p {dir} && mknod {dir}/null c 1 3 && ls -ln {dir}/null"
    ));
    assert_eq!(c.sh_ok(&format!("echo ok > {dir}/null && echo written")), "written");
    let disk = c.sh(&format!("mknod {dir}/sda b 8 0"));
    assert_ne!(disk.code, 0);
    assert!(
        String::from_utf8_lossy(&disk.stderr).contains("not permitted"),
        "{:?}",
        String::from_utf8_lossy(&disk.stderr)
    );
    c.sh_ok(&format!("rm -rf {dir}"));
    // Without interception even /dev/null's node is refused.
    let plain = Running::start(spec("nomknod", &rootfs)).expect("start");
    assert_ne!(plain.sh(&format!("mknod /tmp/{}-null c 1 3", plain.spec.name)).code, 0);
}

#[test]
fn stop_freeze_and_teardown_leave_nothing() {
    let Some(rootfs) = require("stop_freeze_and_teardown_leave_nothing", "busybox") else {
        return;
    };
    let a = Running::start(spec("a", &rootfs)).expect("start a");
    let b = Running::start(spec("b", &rootfs)).expect("start b");
    let (a_init, b_init) = (a.init_pid(), b.init_pid());

    // Freeze: a counter stops advancing; thaw: it goes on.
    a.sh_ok("(i=0; while true; do i=$((i+1)); echo $i > /dev/shm/count; sleep 0.05; done) >/dev/null 2>&1 &");
    std::thread::sleep(Duration::from_millis(300));
    a.client.freeze().unwrap();
    assert_eq!(a.client.state().unwrap().status, Status::Frozen);
    let frozen_at = fs::read_to_string(Path::new(&format!("/proc/{a_init}/root/dev/shm/count"))).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        fs::read_to_string(format!("/proc/{a_init}/root/dev/shm/count")).unwrap(),
        frozen_at,
        "frozen container made progress"
    );
    a.client.thaw().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_ne!(
        fs::read_to_string(format!("/proc/{a_init}/root/dev/shm/count")).unwrap(),
        frozen_at
    );

    // Clean stop of a (busybox init runs its shutdown and powers off), force of b.
    let a_name = a.spec.name.clone();
    let outcome = a.client.stop(Duration::from_secs(10), false).unwrap();
    assert!(outcome.clean, "busybox init should shut down cleanly: {outcome:?}");
    let outcome = b.client.stop(Duration::from_secs(0), true).unwrap();
    assert_eq!(
        outcome,
        StopOutcome {
            exit: ExitInfo::Signaled(libc::SIGKILL),
            clean: false
        }
    );
    for (name, init, c) in [(&a_name, a_init, &a), (&b.spec.name, b_init, &b)] {
        assert!(!process_alive(init), "{name}: init still alive");
        assert!(
            cgroup_dirs(name).is_empty(),
            "{name}: cgroups left: {:?}",
            cgroup_dirs(name)
        );
        assert!(!c.client.is_running());
        assert!(!c.spec.run_dir.join("monitor.sock").exists());
        assert!(!c.spec.run_dir.join("rootfs").exists(), "staging mount point left");
    }
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&a_name),
        "a mount of the container is visible on the host"
    );
}

#[test]
fn a_start_that_fails_halfway_cleans_up_and_says_why() {
    let Some(rootfs) = require("a_start_that_fails_halfway_cleans_up_and_says_why", "busybox") else {
        return;
    };
    // No such init: refused before anything is created.
    let mut s = spec("noinit", &rootfs);
    s.init = vec!["/sbin/no-such-init".into()];
    let err = corral_runtime::client::spawn(corrald(), &s)
        .map(drop)
        .expect_err("must fail")
        .to_string();
    assert!(err.contains("/sbin/no-such-init"), "{err}");
    let _ = fs::remove_dir_all(&s.run_dir);
    release_view(&s.name);
    assert!(cgroup_dirs(&s.name).is_empty());

    // An init that exists but cannot be executed: fails in the container's PID 1, after the
    // namespaces, cgroups and mounts were made. Planted in the container's private copy.
    let mut s = spec("badinit", &rootfs);
    let bad = s.rootfs.join(format!("tmp/bad-init-{}", std::process::id()));
    fs::write(&bad, "this is not a program\n").unwrap();
    fs::set_permissions(&bad, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    s.init = vec![format!("/tmp/{}", bad.file_name().unwrap().to_string_lossy())];
    // Straight through the runtime (not the test guard) to see what the monitor itself leaves.
    let err = corral_runtime::client::spawn(corrald(), &s)
        .map(drop)
        .expect_err("must fail")
        .to_string();
    fs::remove_file(&bad).unwrap();
    assert!(err.contains("cannot execute init"), "{err}");
    assert!(
        cgroup_dirs(&s.name).is_empty(),
        "cgroups left: {:?}",
        cgroup_dirs(&s.name)
    );
    assert!(!s.run_dir.join("monitor.sock").exists());
    assert!(!s.run_dir.join("rootfs").exists());
    fs::remove_dir_all(&s.run_dir).unwrap();
    release_view(&s.name);
}

#[test]
fn the_container_outlives_the_process_that_started_it() {
    let Some(rootfs) = require("the_container_outlives_the_process_that_started_it", "busybox") else {
        return;
    };
    let name = unique("orphan");
    let rootfs = private_rootfs(&rootfs, &name);
    // A starter that stays alive after starting the container, then is killed with SIGKILL.
    let mut starter = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} container start {name} --rootfs {} && exec sleep 600",
            corrald().display(),
            rootfs.display()
        ))
        .env("CORRAL_RUN_DIR", run_root())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let client = corral_runtime::client::Client::new(&run_root().join(&name));
    assert!(
        wait_for(Duration::from_secs(10), || client.is_running().then_some(())).is_some(),
        "container did not start"
    );
    let guard = Running {
        spec: corral_runtime::spec::ContainerSpec::new(&name, &rootfs, run_root().join(&name)),
        client: client.clone(),
    };
    starter.kill().unwrap();
    starter.wait().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(guard.sh_ok("echo still here"), "still here");
    assert_eq!(client.state().unwrap().status, Status::Running);
    client.stop(Duration::from_secs(10), false).unwrap();
    assert!(!client.is_running());
}

#[test]
fn privileged_containers_have_no_user_namespace() {
    let Some(rootfs) = require("privileged_containers_have_no_user_namespace", "busybox") else {
        return;
    };
    let mut s = spec("priv", &rootfs);
    s.idmap = None;
    let c = Running::start(s).expect("start");
    assert_eq!(
        c.sh_ok("cat /proc/self/uid_map").split_whitespace().collect::<Vec<_>>(),
        ["0", "0", "4294967295"]
    );
    let status = fs::read_to_string(format!("/proc/{}/status", c.init_pid())).unwrap();
    assert!(status
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")));
    // LXC's proc:mixed: /proc/sys is read-only except net.
    assert!(c.sh_ok("grep ' /proc/sys ' /proc/mounts").contains("ro,"));
}

#[test]
fn the_shift_fallback_rewrites_ownership_once() {
    let Some(image) = require("the_shift_fallback_rewrites_ownership_once", "busybox") else {
        return;
    };
    let copy = std::env::temp_dir().join(format!("corral-shift-{}", std::process::id()));
    let _ = fs::remove_dir_all(&copy);
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(&image)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    let mut s = spec("shift", &copy);
    s.rootfs_mode = RootfsMode::Shift;
    let c = Running::start(s.clone()).expect("start");
    assert!(!c.client.state().unwrap().idmapped);
    assert_eq!(
        fs::metadata(copy.join("etc/passwd")).unwrap().uid(),
        1_000_000,
        "shifted on disk"
    );
    c.sh_ok("touch /root/made-inside");
    assert_eq!(fs::metadata(copy.join("root/made-inside")).unwrap().uid(), 1_000_000);
    assert_eq!(c.sh_ok("stat -c %u /etc/passwd"), "0", "container root owns its files");
    c.client.stop(Duration::from_secs(0), true).unwrap();
    drop(c);

    // Second start: the recorded shift is not walked again (ctime would move).
    let ctime_before = fs::metadata(copy.join("etc/passwd")).unwrap().ctime_nsec();
    let c = Running::start(spec("shift2", &copy)).expect("restart");
    assert!(
        !c.client.state().unwrap().idmapped,
        "a shifted rootfs must not be idmapped on top"
    );
    assert_eq!(
        fs::metadata(copy.join("etc/passwd")).unwrap().ctime_nsec(),
        ctime_before
    );
    assert_eq!(c.sh_ok("stat -c %u /etc/passwd"), "0");
    drop(c);
    fs::remove_dir_all(&copy).unwrap();
}

#[test]
fn nesting_lets_a_container_make_its_own_namespaces() {
    let Some(rootfs) = require("nesting_lets_a_container_make_its_own_namespaces", "busybox") else {
        return;
    };
    let nested = "unshare -r -p -f -m --mount-proc sh -c 'echo pid=$$' && \
                  unshare -r -n -m sh -c 'mount -t sysfs -o nosuid,nodev,noexec sysfs /sys && ls /sys/class/net'";
    let mut s = spec("nest", &rootfs);
    s.nesting = true;
    let c = Running::start(s).expect("start");
    assert_eq!(c.sh_ok(nested), "pid=1\nlo");
    // Without nesting the masked /proc keeps the kernel from allowing a new proc mount.
    let plain = Running::start(spec("nonest", &rootfs)).expect("start");
    let out = plain.sh(nested);
    assert_ne!(out.code, 0);
    assert!(String::from_utf8_lossy(&out.stderr).contains("mount proc"), "{out:?}");
}

#[test]
fn devices_outside_the_allow_list_cannot_be_opened() {
    let Some(rootfs) = require("devices_outside_the_allow_list_cannot_be_opened", "busybox") else {
        return;
    };
    // Privileged, so mknod itself is allowed: the device cgroup is what must refuse.
    let mut s = spec("dev", &rootfs);
    s.idmap = None;
    let c = Running::start(s).expect("start");
    let dir = format!("/tmp/{}", c.spec.name);
    c.sh_ok(&format!(
        "mkdir -p {dir} && mknod {dir}/loop b 7 0 && mknod {dir}/null c 1 3"
    ));
    let out = c.sh(&format!("head -c 1 {dir}/loop"));
    assert_ne!(out.code, 0);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not permitted"),
        "{out:?}"
    );
    assert_eq!(c.sh_ok(&format!("echo x > {dir}/null && echo allowed")), "allowed");
    c.sh_ok(&format!("rm -rf {dir}"));
}

#[test]
fn a_stop_past_its_timeout_kills_the_container() {
    let Some(rootfs) = require("a_stop_past_its_timeout_kills_the_container", "busybox") else {
        return;
    };
    // PID 1 ignores signals it has no handler for: a plain sleep never stops cleanly.
    let mut s = spec("stubborn", &rootfs);
    s.init = vec!["/bin/sleep".into(), "1000".into()];
    let c = Running::start(s).expect("start");
    let t = std::time::Instant::now();
    let exit = c.client.stop(Duration::from_millis(300), false).unwrap();
    assert_eq!(
        exit,
        StopOutcome {
            exit: ExitInfo::Signaled(libc::SIGKILL),
            clean: false
        }
    );
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "killed before the timeout: {:?}",
        t.elapsed()
    );
    assert!(cgroup_dirs(&c.spec.name).is_empty());
}

#[test]
fn the_console_can_be_attached_and_typed_into() {
    let Some(rootfs) = require("the_console_can_be_attached_and_typed_into", "busybox") else {
        return;
    };
    let c = Running::start(spec("console", &rootfs)).expect("start");
    let conn = c.client.console_attach().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    // busybox's inittab runs a shell on the console.
    nix::sys::socket::send(
        std::os::fd::AsRawFd::as_raw_fd(&conn),
        b"echo marker$((40+2))\n",
        nix::sys::socket::MsgFlags::empty(),
    )
    .unwrap();
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !String::from_utf8_lossy(&seen).contains("marker42") && std::time::Instant::now() < deadline {
        let mut buf = [0u8; 4096];
        let timeout = nix::sys::time::TimeVal::new(0, 200_000);
        nix::sys::socket::setsockopt(&conn, nix::sys::socket::sockopt::ReceiveTimeout, &timeout).unwrap();
        if let Ok(n) = nix::sys::socket::recv(
            std::os::fd::AsRawFd::as_raw_fd(&conn),
            &mut buf,
            nix::sys::socket::MsgFlags::empty(),
        ) {
            seen.extend_from_slice(&buf[..n]);
        }
    }
    assert!(
        String::from_utf8_lossy(&seen).contains("marker42"),
        "console said {:?}",
        String::from_utf8_lossy(&seen)
    );
    assert!(String::from_utf8_lossy(&c.client.console_log().unwrap()).contains("marker42"));
}

#[test]
fn lxcfs_shows_the_memory_limit() {
    let Some(rootfs) = require("lxcfs_shows_the_memory_limit", "busybox") else {
        return;
    };
    if !corral_runtime::layout::lxcfs_mounted(Path::new("/var/lib/lxcfs")) {
        skip("lxcfs_shows_the_memory_limit", "needs lxcfs running at /var/lib/lxcfs");
        return;
    }
    let mut s = spec("mem", &rootfs);
    s.limits.memory = Some(128 * 1024 * 1024);
    let c = Running::start(s).expect("start");
    // lxcfs caches which init a pid namespace has, by namespace inode; with containers coming
    // and going, a fresh namespace can briefly be served a stale entry: allow it a moment.
    let total = wait_for(Duration::from_secs(5), || {
        let t = c.sh_ok("grep MemTotal /proc/meminfo | awk '{print $2}'");
        (t == "131072").then_some(t)
    });
    assert_eq!(
        total.as_deref(),
        Some("131072"),
        "MemTotal inside should be limits.memory"
    );
    // (busybox's free asks sysinfo(2), which lxcfs cannot cover; procps's free, which reads
    // /proc/meminfo, is checked in the Debian tests.)
}

#[test]
fn a_pty_exec_follows_window_resizes() {
    let Some(rootfs) = require("a_pty_exec_follows_window_resizes", "busybox") else {
        return;
    };
    let c = Running::start(spec("resize", &rootfs)).expect("start");
    let session = c
        .client
        .exec(&ExecRequest::new(&["sh", "-c", "read x; stty size"]), ExecStdio::Pty)
        .unwrap();
    session.resize(50, 120).unwrap();
    let master = session.pty.as_ref().unwrap().try_clone().unwrap();
    let mut f = fs::File::from(master);
    std::io::Write::write_all(&mut f, b"go\n").unwrap();
    assert_eq!(session.wait().unwrap(), 0);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = std::io::Read::read(&mut f, &mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    assert!(
        String::from_utf8_lossy(&out).contains("50 120"),
        "{:?}",
        String::from_utf8_lossy(&out)
    );
}

#[test]
fn a_container_can_join_an_existing_network_namespace() {
    let Some(rootfs) = require("a_container_can_join_an_existing_network_namespace", "busybox") else {
        return;
    };
    let netns = format!("corral-test-{}", std::process::id());
    let ip = |args: &[&str]| std::process::Command::new("ip").args(args).status().unwrap().success();
    assert!(ip(&["netns", "add", &netns]));
    struct NetnsGuard(String);
    impl Drop for NetnsGuard {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.0])
                .status();
        }
    }
    let _guard = NetnsGuard(netns.clone());
    assert!(ip(&[
        "-n", &netns, "link", "add", "probe0", "type", "veth", "peer", "name", "probe1"
    ]));
    let mut s = spec("join", &rootfs);
    s.network = corral_runtime::spec::NetworkNamespace::Join(format!("/run/netns/{netns}").into());
    let c = Running::start(s).expect("start");
    let dev = c.sh_ok("cat /proc/net/dev");
    assert!(dev.contains("probe0"), "{dev}");
    // The host's sysfs stands in (a host-owned network namespace's sysfs cannot be mounted):
    // read-only, submounts included, except the container's own cgroup2 (and lxcfs's files).
    let sys = c.sh_ok(
        "awk '$2 ~ /^\\/sys/ && $2 !~ /^\\/sys\\/fs\\/cgroup/ && $3 != \"fuse.lxcfs\" {print $2, $4}' /proc/mounts",
    );
    assert!(sys.starts_with("/sys "), "{sys}");
    assert!(
        sys.lines()
            .all(|l| l.split(' ').nth(1).is_some_and(|o| o.starts_with("ro"))),
        "{sys}"
    );
}

#[test]
fn a_rootfs_with_planted_symlinks_is_refused() {
    let Some(image) = require("a_rootfs_with_planted_symlinks_is_refused", "busybox") else {
        return;
    };
    let copy = std::env::temp_dir().join(format!("corral-symlink-{}", std::process::id()));
    let _ = fs::remove_dir_all(&copy);
    assert!(std::process::Command::new("cp")
        .arg("-a")
        .arg(&image)
        .arg(&copy)
        .status()
        .unwrap()
        .success());
    // /dev pointing at a host directory: following it would create nodes on the host.
    let bait = std::env::temp_dir().join(format!("corral-bait-{}", std::process::id()));
    fs::create_dir_all(&bait).unwrap();
    fs::remove_dir_all(copy.join("dev")).unwrap();
    std::os::unix::fs::symlink(&bait, copy.join("dev")).unwrap();
    let s = spec("planted", &copy);
    let err = Running::start(s.clone()).err().expect("must refuse").to_string();
    assert!(err.contains("/dev in the container's rootfs is a symlink"), "{err}");
    assert_eq!(
        fs::read_dir(&bait).unwrap().count(),
        0,
        "something was created through the symlink"
    );
    assert!(cgroup_dirs(&s.name).is_empty());
    fs::remove_dir_all(&copy).unwrap();
    fs::remove_dir_all(&bait).unwrap();
}

#[test]
fn a_test_container_leaves_the_cached_image_as_built() {
    let test = "a_test_container_leaves_the_cached_image_as_built";
    let Some(cached) = require(test, "busybox") else {
        return;
    };
    let manifest = cached.canonicalize().unwrap().with_file_name("manifest");
    if !manifest.is_file() && skip(test, "a manifest of the cached image (tests/images/build.sh busybox)") {
        return;
    }
    let c = Running::start(spec("pristine", &cached)).expect("start");
    let private = c.spec.rootfs.clone();
    assert_ne!(
        private.canonicalize().unwrap(),
        cached.canonicalize().unwrap(),
        "a test container must not run on the cached rootfs"
    );
    let (file, dir) = (format!("root/{}-file", c.spec.name), format!("{}-dir", c.spec.name));
    c.sh_ok(&format!(
        "echo written > /{file} && mkdir /{dir} && echo x > /{dir}/inner"
    ));
    assert_eq!(c.sh_ok(&format!("cat /{file} /{dir}/inner")), "written\nx");
    assert!(
        private.join(&file).is_file(),
        "the write lands in the container's own copy"
    );
    c.client.stop(Duration::from_secs(5), false).expect("stop");
    drop(c);

    assert!(
        !cached.join(&file).exists(),
        "the file was written into the cached image"
    );
    assert!(
        !cached.join(&dir).exists(),
        "the directory was made in the cached image"
    );
    assert!(!private.exists(), "the private copy outlives its container guard");
    // And nothing else changed: the build's manifest (owners, modes, sizes, mtimes) matches.
    let build_sh = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/images/build.sh");
    let out = std::process::Command::new(build_sh)
        .args(["--verify", "busybox"])
        .output()
        .expect("run build.sh --verify");
    assert!(
        out.status.success(),
        "the cached busybox rootfs no longer matches its manifest: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
