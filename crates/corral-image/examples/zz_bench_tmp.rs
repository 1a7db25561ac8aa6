use corral_image::*;
use std::path::Path;
use std::time::Instant;
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let src = Path::new(&args[1]);
    let work = Path::new(&args[2]);
    let mut meta = ImageMetadata {
        architecture: host_architecture().into(),
        creation_date: 1_700_000_000,
        ..Default::default()
    };
    meta.properties.insert("os".into(), "bench".into());
    for c in [Compression::Zstd, Compression::Xz] {
        let img = work.join(format!("img.{}", c.extension()));
        let t = Instant::now();
        pack_unified(src, &meta, None, &img, c).unwrap();
        let pack = t.elapsed();
        let files = ImageFiles::unified(&img);
        let t = Instant::now();
        let info = inspect(&files).unwrap();
        let insp = t.elapsed();
        let out = work.join(format!("out-{c}"));
        let t = Instant::now();
        unpack_rootfs(&files, &out).unwrap();
        let unp = t.elapsed();
        println!(
            "{} {c}: {:.1} MiB; pack {pack:.2?}, inspect {insp:.2?}, unpack {unp:.2?}",
            src.display(),
            info.size as f64 / 1048576.0
        );
        std::fs::remove_dir_all(&out).unwrap();
    }
}
