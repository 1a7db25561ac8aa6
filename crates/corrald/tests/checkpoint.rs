//! System tests of checkpoint and restore (CRIU) through the runtime: a container checkpointed
//! and stopped comes back with its memory, its PID 1 and a working monitor; a stateful snapshot
//! leaves it running; a broken image fails clearly and leaves nothing behind.
//!
//! Needs root, the busybox test image (the systemd test: bookworm) and CRIU 4.1.1 as patched
//! (scripts/install-deps.sh builds it under /usr/local: SO_PASSCRED on Linux >= 6.16).

mod support;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use corral_runtime::checkpoint::{self, CheckpointError, DumpOptions};
use corral_runtime::client::Client;
use corral_runtime::proto::Status;
use corral_runtime::spec::{ContainerSpec, Mount, MountKind, Propagation};
use support::*;

/// The counter: memory only (a shell variable), appended to /tmp/count every 100 ms.
const COUNTER: &str = "i=0; while :; do i=$((i+1)); echo $i >> /tmp/count; sleep 0.1; done";

/// Root, the image and criu, or a skip.
fn require_criu(test: &str, image: &str) -> Option<PathBuf> {
    let rootfs = require(test, image)?;
    (!skip_unless_criu(test)).then_some(rootfs)
}

/// A host directory for the container's /tmp, removed on drop.
struct DataDir(PathBuf);

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A busybox spec whose init is the counter, with a host directory bound (idmapped, by the
/// monitor) on /tmp (a directory both test images have: a mount point made in the shared,
/// cached rootfs would show up in every other test's image): the checkpoint must carry a disk
/// bind too.
fn counter_spec(tag: &str, rootfs: &Path) -> (ContainerSpec, DataDir) {
    let mut s = spec(tag, rootfs);
    let data = run_root().join(format!("{}-data", s.name));
    fs::create_dir_all(&data).unwrap();
    s.mounts.push(Mount {
        source: data.clone(),
        target: "/tmp".into(),
        kind: MountKind::MonitorBind {
            recursive: false,
            idmapped: true,
        },
        readonly: false,
        propagation: Propagation::Private,
    });
    s.init = vec!["/bin/sh".into(), "-c".into(), COUNTER.into()];
    (s, DataDir(data))
}

/// The counts written so far.
fn counts(data: &Path) -> Vec<u64> {
    fs::read_to_string(data.join("count"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn wait_count(data: &Path, at_least: u64) -> u64 {
    wait_for(Duration::from_secs(10), || {
        counts(data).last().copied().filter(|n| *n >= at_least)
    })
    .unwrap_or_else(|| panic!("the counter never reached {at_least}: {:?}", counts(data)))
}

/// An image directory of its own, removed on drop.
struct ImageDir(PathBuf);

impl ImageDir {
    fn new(name: &str) -> ImageDir {
        let p = run_root().join(format!("{name}-ckpt"));
        let _ = fs::remove_dir_all(&p);
        ImageDir(p)
    }
}

impl Drop for ImageDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Nothing of the container on the host: monitor, cgroups, mounts below its run directory.
fn assert_gone(spec: &ContainerSpec) {
    assert!(!Client::new(&spec.run_dir).is_running(), "a monitor still answers");
    let gone = wait_for(Duration::from_secs(5), || {
        cgroup_dirs(spec.cgroup()).is_empty().then_some(())
    });
    assert!(gone.is_some(), "cgroups left: {:?}", cgroup_dirs(spec.cgroup()));
    assert!(
        mounted_under(&spec.run_dir).is_empty(),
        "{:?}",
        mounted_under(&spec.run_dir)
    );
}

#[test]
fn a_checkpointed_busybox_resumes_its_count_with_the_same_init() {
    let test = "a_checkpointed_busybox_resumes_its_count_with_the_same_init";
    let Some(rootfs) = require_criu(test, "busybox") else {
        return;
    };
    let (s, data) = counter_spec("ckpt", &rootfs);
    let images = ImageDir::new(&s.name);
    let c = Running::start(s.clone()).expect("start");
    wait_count(&data.0, 5);
    let before = c.client.state().unwrap();
    let cmdline = c.sh_ok("tr '\\0' ' ' < /proc/1/cmdline");
    assert!(cmdline.contains("while"), "{cmdline}");

    let t = Instant::now();
    let report = checkpoint::dump(&s.run_dir, &images.0, &DumpOptions::default()).expect("checkpoint");
    eprintln!("dump: criu {:?}, total {:?}", report.criu_time, t.elapsed());
    // Stopped: no monitor, no process, no cgroup; the counter stands still.
    assert_gone(&s);
    assert!(
        !process_alive(before.init_pid)
            || !fs::read_to_string(format!("/proc/{}/cmdline", before.init_pid))
                .unwrap_or_default()
                .contains("while")
    );
    let last = *counts(&data.0).last().unwrap();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        *counts(&data.0).last().unwrap(),
        last,
        "the counter runs on after the checkpoint"
    );
    assert!(images.0.join(checkpoint::METADATA).is_file());
    assert!(report.log.is_file(), "criu's dump log is kept");

    let t = Instant::now();
    let client = checkpoint::restore(corrald(), &s, &images.0).expect("restore");
    eprintln!("restore: {:?}", t.elapsed());
    let state = client.state().unwrap();
    assert_eq!(state.status, Status::Running);
    assert!(state.idmapped);
    // The count goes on from where it was: the shell variable came back from the image.
    wait_count(&data.0, last + 5);
    let all = counts(&data.0);
    let expected: Vec<u64> = (1..=all.len() as u64).collect();
    assert_eq!(all, expected, "the count restarted or skipped instead of continuing");
    // Same PID 1 inside (its command line and its memory), the same uid mapping, files written
    // through the restored idmapped bind still land as the image's root.
    assert_eq!(c.sh_ok("tr '\\0' ' ' < /proc/1/cmdline"), cmdline);
    assert_eq!(
        c.sh_ok("cat /proc/self/uid_map").split_whitespace().collect::<Vec<_>>(),
        ["0", "1000000", "65536"]
    );
    assert_eq!(fs::metadata(data.0.join("count")).unwrap().uid(), 0);
    assert_eq!(
        c.sh_ok("cat /proc/1/status | grep ^Seccomp: | awk '{print $2}'"),
        "2",
        "the deny list is back"
    );
    assert_eq!(c.sh_ok("ls /sys/class/net"), "lo");
    assert_eq!(c.sh_ok("test -c /dev/console && echo ok"), "ok");
    // The monitor works as for a started container: exec, freeze/thaw, stop.
    assert_eq!(c.sh_ok("echo hello"), "hello");
    client.freeze().unwrap();
    assert_eq!(client.state().unwrap().status, Status::Frozen);
    client.thaw().unwrap();
    let outcome = client.stop(Duration::from_secs(1), false).expect("stop");
    eprintln!("stop after restore: {outcome:?}");
    assert_gone(&s);
}

#[test]
fn a_stateful_snapshot_leaves_the_container_running() {
    let test = "a_stateful_snapshot_leaves_the_container_running";
    let Some(rootfs) = require_criu(test, "busybox") else {
        return;
    };
    let (s, data) = counter_spec("snap", &rootfs);
    let images = ImageDir::new(&s.name);
    let c = Running::start(s.clone()).expect("start");
    wait_count(&data.0, 3);
    let init = c.init_pid();
    let opts = DumpOptions {
        leave_running: true,
        ..DumpOptions::default()
    };
    checkpoint::dump(&s.run_dir, &images.0, &opts).expect("snapshot");
    let state = c.client.state().expect("still running");
    assert_eq!(state.status, Status::Running);
    assert_eq!(state.init_pid, init);
    let n = *counts(&data.0).last().unwrap();
    wait_count(&data.0, n + 3);
    assert_eq!(c.sh_ok("echo alive"), "alive");
    // Its image cannot be restored over the running container.
    match checkpoint::restore(corrald(), &s, &images.0) {
        Err(CheckpointError::AlreadyRunning(name)) => assert_eq!(name, s.name),
        other => panic!("restore over a running container: {other:?}"),
    }
    // A second checkpoint wants an empty directory.
    let err = checkpoint::dump(&s.run_dir, &images.0, &opts).unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
    assert_eq!(c.client.state().unwrap().status, Status::Running);
}

#[test]
fn a_broken_image_fails_the_restore_clearly_and_leaves_nothing() {
    let test = "a_broken_image_fails_the_restore_clearly_and_leaves_nothing";
    let Some(rootfs) = require_criu(test, "busybox") else {
        return;
    };
    let (s, data) = counter_spec("broken", &rootfs);
    let images = ImageDir::new(&s.name);
    let c = Running::start(s.clone()).expect("start");
    wait_count(&data.0, 2);
    checkpoint::dump(&s.run_dir, &images.0, &DumpOptions::default()).expect("checkpoint");
    assert_gone(&s);
    // Corrupt the memory image of PID 1.
    let pagemap = fs::read_dir(&images.0)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("pagemap-"))
        .expect("a pagemap image");
    fs::write(&pagemap, b"garbage").unwrap();
    let err = checkpoint::restore(corrald(), &s, &images.0).expect_err("a corrupt image must not restore");
    let msg = err.to_string();
    eprintln!("restore error: {msg}");
    assert!(msg.contains("criu restore failed: Error ("), "{msg}");
    let log = images.0.join(checkpoint::RESTORE_LOG);
    assert!(
        msg.contains(&log.display().to_string()),
        "the error names the log: {msg}"
    );
    assert!(log.is_file(), "criu's restore log is kept");
    assert_gone(&s);
    // No restored process anywhere: the counter stands still.
    let last = counts(&data.0).last().copied();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(counts(&data.0).last().copied(), last);
    assert!(!s.run_dir.join(checkpoint::RESTORE_REQUEST).exists());
    assert!(!s.run_dir.join("criu-work").exists());
    // A missing image directory is refused before anything runs.
    let err = checkpoint::restore(corrald(), &s, &images.0.join("nope")).unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
    drop(c);
}

#[test]
fn pre_dump_without_soft_dirty_is_a_clear_error() {
    let test = "pre_dump_without_soft_dirty_is_a_clear_error";
    let Some(rootfs) = require_criu(test, "busybox") else {
        return;
    };
    let criu = checkpoint::criu_binary().unwrap();
    if checkpoint::soft_dirty_supported(&criu).unwrap() {
        eprintln!("{test}: this kernel tracks soft-dirty pages; nothing to check");
        return;
    }
    let (s, data) = counter_spec("predump", &rootfs);
    let images = ImageDir::new(&s.name);
    let c = Running::start(s.clone()).expect("start");
    wait_count(&data.0, 1);
    let opts = DumpOptions {
        pre_dump: true,
        ..DumpOptions::default()
    };
    match checkpoint::dump(&s.run_dir, &images.0, &opts) {
        Err(e @ CheckpointError::NoSoftDirty) => assert!(e.to_string().contains("soft-dirty"), "{e}"),
        other => panic!("pre-dump without soft-dirty: {other:?}"),
    }
    assert_eq!(c.client.state().unwrap().status, Status::Running);
}

#[test]
fn lazy_pages_say_which_check_stands_in_the_way() {
    let test = "lazy_pages_say_which_check_stands_in_the_way";
    let Ok(criu) = checkpoint::criu_binary() else {
        eprintln!("{test}: no criu; skipped");
        return;
    };
    let sysctl = |p: &str| std::fs::read_to_string(p).unwrap_or_default().trim().to_string();
    let uffd = std::process::Command::new(&criu)
        .args(["check", "--feature", "uffd-noncoop"])
        .output()
        .unwrap()
        .status
        .success();
    let pipe_ok = sysctl("/proc/sys/fs/pipe-max-size").parse::<u64>().unwrap_or(0) >= 4 << 20;
    let without_userns = checkpoint::lazy_pages_blocker(&criu, false);
    let with_userns = checkpoint::lazy_pages_blocker(&criu, true);
    eprintln!("{test}: without a user namespace: {without_userns:?}; with one: {with_userns:?}");
    match (uffd, pipe_ok) {
        (false, _) => assert!(without_userns.unwrap().contains("uffd-noncoop")),
        (true, false) => assert!(without_userns.unwrap().contains("fs.pipe-max-size")),
        (true, true) => {
            assert_eq!(without_userns, None, "a privileged container can use lazy pages here");
            if sysctl("/proc/sys/vm/unprivileged_userfaultfd") == "1" {
                assert_eq!(with_userns, None);
            } else {
                let why = with_userns.expect("an unprivileged container cannot");
                assert!(why.contains("vm.unprivileged_userfaultfd is 0"), "{why}");
            }
        }
    }
}

/// The ProtectHostname=no drop-in a Debian guest needs to be checkpointed (see
/// corral_runtime::checkpoint): for every service, in /run (the test image is shared).
const NO_NESTED_UTS: &str = "mkdir -p /run/systemd/system/service.d && \
     printf '[Service]\nProtectHostname=no\n' > /run/systemd/system/service.d/corral-checkpoint.conf && \
     systemctl daemon-reload && systemctl restart systemd-logind";

/// systemd's counter: a transient unit (started through exec, but systemd's child, so in the
/// checkpoint, unlike the exec session itself) counting in a shell variable into /tmp/count.
const SYSTEMD_COUNTER: &str = "systemd-run --unit corral-counter /bin/sh -c \
     'i=0; while :; do i=$((i+1)); echo $i >> /tmp/count; sleep 0.1; done'";

/// Debian 12 booted with systemd, checkpointed twice: left running (a stateful snapshot), then
/// stopped and restored. A stock boot is refused before anything is frozen (systemd-logind's
/// nested UTS namespace); with the drop-in the guest needs, both work, and the restored
/// container is systemd's as before: PID 1, its units, the counter's memory, a cgroup tree it
/// can still manage, a clean shutdown.
#[test]
fn a_debian_systemd_container_checkpoints_and_restores_with_its_count() {
    let test = "a_debian_systemd_container_checkpoints_and_restores_with_its_count";
    let Some(rootfs) = require_criu(test, "bookworm") else {
        return;
    };
    let (mut s, data) = counter_spec("ckdeb", &rootfs);
    s.init = vec!["/sbin/init".into()];
    s.limits.memory = Some(512 * 1024 * 1024);
    let c = Running::start(s.clone()).expect("start");
    let is_up = || {
        let out = c.sh("systemctl is-system-running 2>/dev/null");
        let st = String::from_utf8_lossy(&out.stdout).trim().to_string();
        matches!(st.as_str(), "running" | "degraded").then_some(st)
    };
    assert!(
        wait_for(Duration::from_secs(60), is_up).is_some(),
        "systemd never booted"
    );
    // networkd's DHCP client holds an AF_INET socket: the dump must carry it (the CRIU patch
    // of scripts/install-deps.sh, for Linux >= 6.16).
    assert_eq!(c.sh_ok("systemctl is-active systemd-networkd"), "active");

    // A stock boot: refused before anything is frozen, with the reason.
    let images = ImageDir::new(&s.name);
    let err = checkpoint::dump(&s.run_dir, &images.0, &DumpOptions::default()).expect_err("nested uts namespace");
    let msg = err.to_string();
    eprintln!("stock bookworm: {msg}");
    assert!(msg.contains("nested uts namespace"), "{msg}");
    assert!(msg.contains("systemd-logind"), "{msg}");
    assert_eq!(c.client.state().unwrap().status, Status::Running);
    assert_eq!(c.sh_ok("cat /proc/1/comm"), "systemd");
    let _ = fs::remove_dir_all(&images.0);

    c.sh_ok(NO_NESTED_UTS);
    c.sh_ok(SYSTEMD_COUNTER);
    wait_count(&data.0, 5);
    let init = c.init_pid();

    // A stateful snapshot: everything runs on.
    let snap = ImageDir::new(&format!("{}-snap", s.name));
    let opts = DumpOptions {
        leave_running: true,
        ..DumpOptions::default()
    };
    let report = checkpoint::dump(&s.run_dir, &snap.0, &opts).expect("stateful snapshot");
    eprintln!("debian dump, left running: criu {:?}", report.criu_time);
    assert_eq!(c.client.state().unwrap().status, Status::Running);
    assert_eq!(c.init_pid(), init);
    let n = *counts(&data.0).last().unwrap();
    wait_count(&data.0, n + 3);
    assert!(is_up().is_some(), "systemd after a stateful snapshot");

    // Stopped and restored.
    let t = Instant::now();
    let report = checkpoint::dump(&s.run_dir, &images.0, &DumpOptions::default()).expect("checkpoint");
    eprintln!(
        "debian dump, stopping: criu {:?}, total {:?}",
        report.criu_time,
        t.elapsed()
    );
    assert_gone(&s);
    let last = *counts(&data.0).last().unwrap();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        *counts(&data.0).last().unwrap(),
        last,
        "the counter runs on after the checkpoint"
    );

    let t = Instant::now();
    let client = checkpoint::restore(corrald(), &s, &images.0).expect("restore");
    eprintln!("debian restore: {:?}", t.elapsed());
    assert_eq!(client.state().unwrap().status, Status::Running);
    wait_count(&data.0, last + 5);
    let all = counts(&data.0);
    let expected: Vec<u64> = (1..=all.len() as u64).collect();
    assert_eq!(all, expected, "the count restarted or skipped instead of continuing");
    assert_eq!(c.sh_ok("cat /proc/1/comm"), "systemd");
    assert!(
        wait_for(Duration::from_secs(20), is_up).is_some(),
        "systemd does not answer after the restore: {}",
        c.sh_ok("systemctl list-units --failed --plain --no-legend")
    );
    assert!(c
        .sh_ok("systemctl list-units --plain --no-legend")
        .contains("corral-counter.service"));
    assert_eq!(
        c.sh_ok("systemctl is-active corral-counter systemd-networkd"),
        "active\nactive"
    );
    // systemd still manages its restored cgroups: a reload runs a process in dbus.service's,
    // a restart makes logind's again.
    c.sh_ok("systemctl reload dbus && systemctl restart systemd-logind");
    assert!(is_up().is_some(), "systemd after a reload and a restart");

    let t = Instant::now();
    let outcome = client.stop(Duration::from_secs(30), false).expect("stop");
    eprintln!("debian stop after restore: {outcome:?} in {:?}", t.elapsed());
    assert!(
        outcome.clean,
        "systemd did not stop cleanly after the restore: {outcome:?}"
    );
    assert_gone(&s);
    drop(c);
}
