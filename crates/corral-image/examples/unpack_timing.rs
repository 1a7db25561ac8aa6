//! Times corral-image's unpack (rootfs and templates) of one image, alone: what the first unpack
//! of an imported image costs. Usage: `unpack_timing IMAGE [SPLIT_ROOTFS]`; prints JSON with the
//! rootfs bytes per second (10^6) over the image's size. `UNPACK_KEEP=1` keeps the tree.
use std::path::PathBuf;
use std::time::Instant;

use corral_image::ImageFiles;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(image) = args.first() else {
        eprintln!("usage: unpack_timing IMAGE [SPLIT_ROOTFS]");
        std::process::exit(2);
    };
    let files = match args.get(1) {
        Some(r) => ImageFiles::split(image, r),
        None => ImageFiles::unified(image),
    };
    let bytes: u64 = [Some(&files.metadata), files.rootfs.as_ref()]
        .into_iter()
        .flatten()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    let dir = PathBuf::from(std::env::var("TMPDIR").unwrap_or_else(|_| "/tmp".into()))
        .join(format!("corral-unpack-timing-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let t = Instant::now();
    corral_image::unpack(&files, Some(&dir.join("rootfs")), Some(&dir.join("templates"))).expect("unpack");
    let unpack_s = t.elapsed().as_secs_f64();
    // UNPACK_KEEP=1: the tree stays (to compare it with another unpacker's).
    if std::env::var_os("UNPACK_KEEP").is_none() {
        std::fs::remove_dir_all(&dir).unwrap();
    } else {
        eprintln!("kept {}", dir.display());
    }
    println!(
        "{{\"image_bytes\":{bytes},\"unpack_s\":{unpack_s:.3},\"unpack_mb_s\":{:.0}}}",
        bytes as f64 / 1e6 / unpack_s
    );
}
