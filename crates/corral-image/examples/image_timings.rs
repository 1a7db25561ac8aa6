//! Times corral-image's steps on one image: `inspect`, `unpack` (rootfs + templates) and `pack_unified`
//! of the unpacked tree (zstd). Usage: `image_timings IMAGE [SPLIT_ROOTFS]`; prints JSON.
use std::path::PathBuf;
use std::time::Instant;

use corral_image::{Compression, ImageFiles};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(image) = args.first() else {
        eprintln!("usage: image_timings IMAGE [SPLIT_ROOTFS]");
        std::process::exit(2);
    };
    let files = match args.get(1) {
        Some(r) => ImageFiles::split(image, r),
        None => ImageFiles::unified(image),
    };
    let dir = PathBuf::from(std::env::var("TMPDIR").unwrap_or_else(|_| "/tmp".into()))
        .join(format!("corral-image-timings-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let t = Instant::now();
    let info = corral_image::inspect(&files).expect("inspect");
    let inspect_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    corral_image::unpack(&files, Some(&dir.join("rootfs")), Some(&dir.join("templates"))).expect("unpack");
    let unpack_s = t.elapsed().as_secs_f64();
    let out = dir.join("packed.tar.zst");
    let t = Instant::now();
    let templates = dir.join("templates");
    corral_image::pack_unified(
        &dir.join("rootfs"),
        &info.metadata,
        Some(&templates),
        &out,
        Compression::Zstd,
    )
    .expect("pack");
    let pack_s = t.elapsed().as_secs_f64();
    let packed = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    let t = Instant::now();
    std::fs::remove_dir_all(&dir).unwrap();
    let remove_s = t.elapsed().as_secs_f64();
    println!(
        "{{\"image_bytes\":{},\"inspect_s\":{inspect_s:.3},\"unpack_s\":{unpack_s:.3},\"pack_zstd_s\":{pack_s:.3},\"packed_bytes\":{packed},\"remove_s\":{remove_s:.3}}}",
        info.size
    );
}
