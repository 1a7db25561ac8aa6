//! Times the dir driver alone (no daemon) on a pool directory you choose (put it on the
//! filesystem to measure, e.g. a fresh ext4): clone of an instance volume (a copy), snapshot,
//! restore of that snapshot after a few changes, and the old restore (`rsync -aHAX --checksum
//! --delete`) on the same changes. Each the median of N runs, `sync` before each timed step.
//! Prints one JSON object. Root only.
//!
//!     cargo run --release -p corral-storage --example bench_dir -- ROOTFS POOL_DIR [RUNS]

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use corral_storage::dir::DirDriver;
use corral_storage::{Driver, Vol};

fn sync() {
    let _ = Command::new("sync").status();
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn timed(f: impl FnOnce()) -> f64 {
    sync();
    let t = Instant::now();
    f();
    (t.elapsed().as_secs_f64() * 1e5).round() / 100.0
}

/// What a booted container and a user change after a snapshot.
fn change(rootfs: &Path, run: usize) {
    fs::write(rootfs.join("root/corral-bench-marker"), format!("three {run}")).unwrap();
    let logs = rootfs.join("var/log/corral-bench");
    fs::create_dir_all(&logs).unwrap();
    for i in 0..50 {
        fs::write(logs.join(format!("{i}.log")), "x".repeat(4096)).unwrap();
    }
    fs::write(rootfs.join("etc/hostname"), format!("changed{run}\n")).unwrap();
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(rootfs), Some(pool)) = (args.first(), args.get(1)) else {
        eprintln!("usage: bench_dir ROOTFS POOL_DIR [RUNS]");
        std::process::exit(2);
    };
    let runs: usize = args.get(2).and_then(|r| r.parse().ok()).unwrap_or(5);
    let d = DirDriver::new(Path::new(pool).join("bench-dir-pool"));
    d.create().unwrap();
    let image = Vol::image("debian");
    fs::create_dir_all(d.path(&image)).unwrap();
    let status = Command::new("cp")
        .args(["-a", "--no-target-directory", rootfs])
        .arg(d.path(&image).join("rootfs"))
        .status()
        .unwrap();
    assert!(status.success(), "cp of the rootfs");
    // The copy is exact: rsync's dry run of image -> copy (checksums, hard links, ACLs, xattrs,
    // owners, times) lists nothing.
    let check = Vol::container("check");
    d.clone_volume(&image, &check).unwrap();
    let out = Command::new("rsync")
        .args(["-naHAXc", "--numeric-ids", "--delete", "-i"])
        .arg(format!("{}/", d.path(&image).display()))
        .arg(format!("{}/", d.path(&check).display()))
        .output()
        .unwrap();
    let diff = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && diff.trim().is_empty(),
        "the copy differs:\n{diff}"
    );
    d.delete_volume(&check).unwrap();
    let (mut copy, mut snap, mut restore, mut rsync) = (vec![], vec![], vec![], vec![]);
    for run in 0..runs {
        let c = Vol::container(&format!("c{run}"));
        copy.push(timed(|| d.clone_volume(&image, &c).unwrap()));
        let r = d.path(&c).join("rootfs");
        fs::write(r.join("root/corral-bench-marker"), "one").unwrap();
        // A container runs a while before its snapshot: the copy's ctimes are not the stamp's second.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        snap.push(timed(|| d.snapshot(&c, "s1").unwrap()));
        change(&r, run);
        restore.push(timed(|| d.restore(&c, "s1").unwrap()));
        assert_eq!(fs::read_to_string(r.join("root/corral-bench-marker")).unwrap(), "one");
        change(&r, run);
        let s = d.path(&c.snapshot("s1"));
        rsync.push(timed(|| {
            let ok = Command::new("rsync")
                .args(["-aHAX", "--checksum", "--numeric-ids", "--delete"])
                .arg(format!("{}/", s.display()))
                .arg(format!("{}/", d.path(&c).display()))
                .status()
                .unwrap();
            assert!(ok.success());
        }));
        assert_eq!(fs::read_to_string(r.join("root/corral-bench-marker")).unwrap(), "one");
        d.delete_volume(&c.snapshot("s1")).unwrap();
        d.delete_volume(&c).unwrap();
    }
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "{{\"runs\":{runs},\"copy_ms\":{},\"snapshot_ms\":{},\"restore_ms\":{},\"restore_rsync_checksum_ms\":{},\
         \"all\":{{\"copy\":{copy:?},\"snapshot\":{snap:?},\"restore\":{restore:?},\"rsync\":{rsync:?}}},\"load\":\"{}\"}}",
        median(copy.clone()),
        median(snap.clone()),
        median(restore.clone()),
        median(rsync.clone()),
        load.trim()
    );
    d.delete().unwrap();
}
