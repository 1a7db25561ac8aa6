//! Times the btrfs driver's instance operations on a loop-file pool holding a ~240 MB image:
//! clone (what a launch does), snapshot, restore, delete; each the median of 5, without and then
//! with quotas on. Prints one JSON object. Root only.
//!
//!     cargo run --release -p corral-storage --example bench_btrfs [-- --mib 240]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use corral_storage::btrfs::BtrfsDriver;
use corral_storage::{Driver, Vol};

const RUNS: usize = 5;

/// Removes the pool even if the benchmark panics.
struct Cleanup {
    dir: PathBuf,
    driver: BtrfsDriver,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Err(e) = self.driver.delete() {
            eprintln!("cannot delete the pool: {e}");
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// `mib` MiB of files in 40 directories, 80 KiB to 160 KiB each, of varied content.
fn make_tree(dir: &Path, mib: u64) -> (u64, u64) {
    let (mut bytes, mut files, mut seed) = (0u64, 0u64, 0x9e37_79b9_7f4a_7c15u64);
    let mut buf = vec![0u8; 160 << 10];
    while bytes < mib << 20 {
        let sub = dir.join(format!("d{:02}", files % 40));
        fs::create_dir_all(&sub).unwrap();
        let len = (80 << 10) + (seed % (80 << 10)) as usize;
        for chunk in buf[..len].chunks_mut(8) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            chunk.copy_from_slice(&seed.to_le_bytes()[..chunk.len()]);
        }
        fs::File::create(sub.join(format!("f{files}")))
            .and_then(|mut f| f.write_all(&buf[..len]))
            .unwrap();
        bytes += len as u64;
        files += 1;
    }
    (bytes, files)
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

fn stats(samples: &mut [f64]) -> String {
    samples.sort_by(|a, b| a.total_cmp(b));
    let list: Vec<String> = samples.iter().map(|s| format!("{s:.2}")).collect();
    format!(
        "{{\"median\": {:.2}, \"min\": {:.2}, \"max\": {:.2}, \"samples\": [{}]}}",
        samples[samples.len() / 2],
        samples[0],
        samples[samples.len() - 1],
        list.join(", ")
    )
}

/// RUNS rounds of clone, snapshot, restore, delete on clones of `img`.
fn round(d: &BtrfsDriver, img: &Vol, tag: &str) -> String {
    let (mut clone, mut snap, mut restore, mut delete) = (vec![], vec![], vec![], vec![]);
    for i in 0..RUNS {
        let c = Vol::container(&format!("{tag}{i}"));
        let t = Instant::now();
        d.clone_volume(img, &c).unwrap();
        clone.push(ms(t));
        let f = d.path(&c).join("rootfs/d00/f0");
        fs::write(&f, "changed before the snapshot").unwrap();
        let t = Instant::now();
        d.snapshot(&c, "snap").unwrap();
        snap.push(ms(t));
        fs::write(&f, "changed after the snapshot").unwrap();
        let t = Instant::now();
        d.restore(&c, "snap").unwrap();
        restore.push(ms(t));
        assert_eq!(fs::read_to_string(&f).unwrap(), "changed before the snapshot");
        d.delete_volume(&c.snapshot("snap")).unwrap();
        let t = Instant::now();
        d.delete_volume(&c).unwrap();
        delete.push(ms(t));
    }
    format!(
        "{{\"clone_ms\": {}, \"snapshot_ms\": {}, \"restore_ms\": {}, \"delete_ms\": {}}}",
        stats(&mut clone),
        stats(&mut snap),
        stats(&mut restore),
        stats(&mut delete)
    )
}

fn main() {
    let mut mib = 240;
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--mib") {
        mib = args[i + 1].parse().expect("--mib N");
    }
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("bench_btrfs: needs root (loop devices, mounts)");
        std::process::exit(2);
    }
    let dir = std::env::temp_dir().join(format!("corral-bench-btrfs-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let image = dir.join("pool.img");
    let driver = BtrfsDriver::loop_file(dir.join("root"), &image, 2 << 30);
    let guard = Cleanup {
        dir: dir.clone(),
        driver: driver.clone(),
    };
    driver.create().unwrap();
    let d = &guard.driver;

    let img = Vol::image("bench");
    d.create_volume(&img).unwrap();
    let t = Instant::now();
    let (bytes, files) = make_tree(&d.path(&img).join("rootfs"), mib);
    let status = Command::new("sync").arg("-f").arg(d.root()).status().unwrap();
    assert!(status.success());
    let write_ms = ms(t);

    let dio = Command::new("losetup")
        .args(["-l", "-n", "-O", "DIO", "-j"])
        .arg(&image)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "1")
        .unwrap_or(false);

    let plain = round(d, &img, "c");
    // Quotas on for the filesystem (the first limit turns them on), then the same again.
    let q = Vol::custom("quota");
    d.create_volume(&q).unwrap();
    d.set_quota(&q, Some(1 << 30)).unwrap();
    let quotas = round(d, &img, "q");

    println!(
        "{{\"driver\": \"btrfs\", \"source\": \"loop file\", \"direct_io\": {dio}, \"tree_bytes\": {bytes}, \
         \"tree_files\": {files}, \"tree_write_ms\": {write_ms:.0}, \"runs\": {RUNS}, \
         \"targets_ms\": {{\"clone\": 20, \"snapshot\": 15, \"restore\": 20}}, \
         \"quotas_off\": {plain}, \"quotas_on\": {quotas}}}"
    );
    drop(guard);
}
