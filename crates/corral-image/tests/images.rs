//! Image formats end to end: fingerprints against `sha256sum`, pack → inspect → unpack round trips with every
//! compression, interoperability with GNU tar (what LXD and Incus unpack with), hostile archives, damaged
//! files, and the real busybox test rootfs.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::{
    assert_same_tree, have, minimal_image_prefix, names, raw_tar, run, sample_metadata, sample_templates, sha256sum,
    synthetic_tree, tempdir, Raw,
};
use corral_image::{
    detect_compression, detect_format, fingerprint_split, fingerprint_unified, inspect, pack_split, pack_unified,
    unpack, unpack_rootfs, unpack_templates, verify, Compression, FileFormat, ImageError, ImageFiles,
};

/// A synthetic rootfs and templates dir in a fresh temp dir.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempdir();
        fs::create_dir(dir.path().join("rootfs")).unwrap();
        synthetic_tree(&dir.path().join("rootfs"));
        sample_templates(&dir.path().join("templates"));
        Fixture { dir }
    }
    fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }
    fn templates(&self) -> PathBuf {
        self.dir.path().join("templates")
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

#[test]
fn fingerprints_are_sha256sum_of_the_files() {
    require_root!();
    let f = Fixture::new();
    let meta = sample_metadata();

    let unified = f.path("image.tar.xz");
    let fp = pack_unified(&f.rootfs(), &meta, Some(&f.templates()), &unified, Compression::Xz).unwrap();
    let expected = sha256sum(&[&unified]);
    assert_eq!(fp, expected, "pack_unified's fingerprint");
    assert_eq!(fingerprint_unified(&unified).unwrap(), expected);
    assert_eq!(inspect(&ImageFiles::unified(&unified)).unwrap().fingerprint, expected);

    let (m, r) = (f.path("meta.tar.xz"), f.path("rootfs.tar.xz"));
    let fp = pack_split(&f.rootfs(), &meta, Some(&f.templates()), &m, &r, Compression::Xz).unwrap();
    let expected = sha256sum(&[&m, &r]);
    assert_eq!(
        fp, expected,
        "pack_split's fingerprint: sha256(meta bytes ++ rootfs bytes)"
    );
    assert_eq!(fingerprint_split(&m, &r).unwrap(), expected);
    assert_ne!(fingerprint_split(&r, &m).unwrap(), expected, "order matters");
    let info = inspect(&ImageFiles::split(&m, &r)).unwrap();
    assert_eq!(info.fingerprint, expected);
    assert!(info.split);
    assert_eq!(
        info.size,
        fs::metadata(&m).unwrap().len() + fs::metadata(&r).unwrap().len()
    );
}

#[test]
fn fingerprint_of_arbitrary_bytes_matches_a_manual_sha256() {
    use sha2::Digest;
    let dir = tempdir();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let data_a: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(&a, &data_a).unwrap();
    fs::write(&b, b"rootfs bytes").unwrap();
    assert_eq!(
        fingerprint_unified(&a).unwrap(),
        hex::encode(sha2::Sha256::digest(&data_a))
    );
    let mut h = sha2::Sha256::new();
    h.update(&data_a);
    h.update(b"rootfs bytes");
    assert_eq!(fingerprint_split(&a, &b).unwrap(), hex::encode(h.finalize()));
}

#[test]
fn round_trip_with_every_compression() {
    require_root!();
    let f = Fixture::new();
    let meta = sample_metadata();
    for c in Compression::ALL {
        // Unified.
        let img = f.path(&format!("img.{}", c.extension()));
        let fp = pack_unified(&f.rootfs(), &meta, Some(&f.templates()), &img, c).unwrap();
        assert_eq!(detect_compression(&img).unwrap(), c);
        let files = ImageFiles::unified(&img);
        let info = inspect(&files).unwrap();
        assert_eq!(info.fingerprint, fp);
        assert_eq!(info.metadata, meta, "{c}: metadata.yaml round trip");
        assert_eq!(info.size, fs::metadata(&img).unwrap().len());
        assert!(!info.split);
        assert_eq!(info.rootfs_format, FileFormat::Tarball(c));
        verify(&files, &fp).unwrap();
        verify(&files, &fp.to_uppercase()).unwrap();
        let out = f.path(&format!("out-{c}"));
        unpack_rootfs(&files, &out.join("rootfs")).unwrap();
        unpack_templates(&files, &out.join("templates")).unwrap();
        assert_same_tree(&f.rootfs(), &out.join("rootfs"));
        assert_same_tree(&f.templates(), &out.join("templates"));
        assert_eq!(
            names(&out),
            ["rootfs", "templates"],
            "no staging directories left behind"
        );

        // Split, unpacked in one call.
        let (m, r) = (
            f.path(&format!("meta.{}", c.extension())),
            f.path(&format!("rootfs.{}", c.extension())),
        );
        let fp = pack_split(&f.rootfs(), &meta, Some(&f.templates()), &m, &r, c).unwrap();
        let files = ImageFiles::split(&m, &r);
        let info = inspect(&files).unwrap();
        assert_eq!((info.fingerprint.as_str(), info.split), (fp.as_str(), true));
        assert_eq!(info.metadata, meta);
        let out = f.path(&format!("out-split-{c}"));
        unpack(&files, Some(&out.join("rootfs")), Some(&out.join("templates"))).unwrap();
        assert_same_tree(&f.rootfs(), &out.join("rootfs"));
        assert_same_tree(&f.templates(), &out.join("templates"));
        assert_eq!(names(&out), ["rootfs", "templates"]);
    }
}

#[test]
fn unified_image_in_one_pass_and_into_an_existing_empty_dir() {
    require_root!();
    let f = Fixture::new();
    let img = f.path("img.tar.zst");
    pack_unified(
        &f.rootfs(),
        &sample_metadata(),
        Some(&f.templates()),
        &img,
        Compression::Zstd,
    )
    .unwrap();
    let files = ImageFiles::unified(&img);
    let (r, t) = (f.path("out/rootfs"), f.path("out/templates"));
    fs::create_dir_all(&r).unwrap();
    unpack(&files, Some(&r), Some(&t)).unwrap();
    assert_same_tree(&f.rootfs(), &r);
    assert_same_tree(&f.templates(), &t);

    // A non-empty destination is refused, and left alone.
    let busy = f.path("busy");
    fs::create_dir(&busy).unwrap();
    fs::write(busy.join("keep"), "x").unwrap();
    let err = unpack_rootfs(&files, &busy).unwrap_err();
    assert!(matches!(err, ImageError::DestinationNotEmpty { .. }), "{err}");
    assert!(err.to_string().contains("busy"), "{err}");
    assert_eq!(names(&busy), ["keep"]);
}

#[test]
fn packing_is_deterministic() {
    require_root!();
    let f = Fixture::new();
    for c in [Compression::Xz, Compression::Zstd, Compression::Gzip] {
        let a = pack_unified(&f.rootfs(), &sample_metadata(), Some(&f.templates()), &f.path("a"), c).unwrap();
        let b = pack_unified(&f.rootfs(), &sample_metadata(), Some(&f.templates()), &f.path("b"), c).unwrap();
        assert_eq!(a, b, "{c}: same tree, same fingerprint");
    }
}

#[test]
fn metadata_only_image_without_templates() {
    let dir = tempdir();
    let rootfs = dir.path().join("rootfs");
    fs::create_dir_all(rootfs.join("etc")).unwrap();
    fs::write(rootfs.join("etc/os-release"), "ID=test\n").unwrap();
    let mut meta = sample_metadata();
    meta.templates.clear();
    let img = dir.path().join("img.tar.gz");
    pack_unified(&rootfs, &meta, None, &img, Compression::Gzip).unwrap();
    let files = ImageFiles::unified(&img);
    assert_eq!(inspect(&files).unwrap().metadata, meta);
    unpack_templates(&files, &dir.path().join("t")).unwrap();
    assert!(
        names(&dir.path().join("t")).is_empty(),
        "no templates: an empty directory"
    );
}

#[test]
fn pack_refuses_missing_templates_and_output_inside_rootfs() {
    let dir = tempdir();
    let rootfs = dir.path().join("rootfs");
    fs::create_dir_all(&rootfs).unwrap();
    let err = pack_unified(
        &rootfs,
        &sample_metadata(),
        None,
        &dir.path().join("x.tar.xz"),
        Compression::Xz,
    )
    .unwrap_err();
    assert!(matches!(err, ImageError::InvalidInput(_)), "{err}");
    assert!(err.to_string().contains("hostname.tpl"), "{err}");
    let mut meta = sample_metadata();
    meta.templates.clear();
    let err = pack_unified(&rootfs, &meta, None, &rootfs.join("x.tar.xz"), Compression::Xz).unwrap_err();
    assert!(err.to_string().contains("must not be inside the rootfs"), "{err}");
    assert!(names(dir.path()).iter().all(|n| n == "rootfs"), "no temp files left");
    assert!(names(&rootfs).is_empty());
}

#[test]
fn gnu_tar_reads_our_images() {
    require_root!();
    if !have("tar") || !have("xz") {
        eprintln!("skipping: GNU tar and xz needed");
        return;
    }
    let f = Fixture::new();
    let img = f.path("img.tar.xz");
    pack_unified(
        &f.rootfs(),
        &sample_metadata(),
        Some(&f.templates()),
        &img,
        Compression::Xz,
    )
    .unwrap();
    let out = f.path("gnu");
    fs::create_dir(&out).unwrap();
    // As LXD unpacks images.
    run(Command::new("tar")
        .args([
            "--numeric-owner",
            "--xattrs",
            "--xattrs-include=*",
            "--same-permissions",
            "-xf",
        ])
        .arg(&img)
        .arg("-C")
        .arg(&out));
    assert_same_tree(&f.rootfs(), &out.join("rootfs"));
    assert_same_tree(&f.templates(), &out.join("templates"));
    assert_eq!(
        corral_image::ImageMetadata::from_yaml(&fs::read_to_string(out.join("metadata.yaml")).unwrap()).unwrap(),
        sample_metadata()
    );
}

#[test]
fn we_read_gnu_tar_images() {
    require_root!();
    if !have("tar") || !have("xz") || !have("zstd") {
        eprintln!("skipping: GNU tar, xz and zstd needed");
        return;
    }
    let f = Fixture::new();
    let meta = sample_metadata();
    fs::write(f.path("metadata.yaml"), meta.to_yaml()).unwrap();
    let tar_args = ["--numeric-owner", "--xattrs", "--xattrs-include=*", "--format=posix"];

    // Unified, as image builders make them.
    let img = f.path("gnu.tar.xz");
    run(Command::new("tar")
        .args(tar_args)
        .arg("-cJf")
        .arg(&img)
        .arg("-C")
        .arg(f.dir.path())
        .args(["metadata.yaml", "templates", "rootfs"]));
    let files = ImageFiles::unified(&img);
    let info = inspect(&files).unwrap();
    assert_eq!(info.metadata, meta);
    assert_eq!(info.fingerprint, sha256sum(&[&img]));
    let out = f.path("out");
    unpack(&files, Some(&out.join("rootfs")), Some(&out.join("templates"))).unwrap();
    assert_same_tree(&f.rootfs(), &out.join("rootfs"));
    assert_same_tree(&f.templates(), &out.join("templates"));

    // Split, rootfs made with `tar -C rootfs .` (entries "./bin", ...) and GNU format, zstd.
    let (m, r) = (f.path("gnu-meta.tar.xz"), f.path("gnu-rootfs.tar.zst"));
    run(Command::new("tar")
        .args(tar_args)
        .arg("-cJf")
        .arg(&m)
        .arg("-C")
        .arg(f.dir.path())
        .args(["metadata.yaml", "templates"]));
    run(Command::new("tar")
        .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "--zstd", "-cf"])
        .arg(&r)
        .arg("-C")
        .arg(f.rootfs())
        .arg("."));
    let files = ImageFiles::split(&m, &r);
    assert_eq!(inspect(&files).unwrap().fingerprint, sha256sum(&[&m, &r]));
    let out = f.path("out-split");
    unpack_rootfs(&files, &out).unwrap();
    assert_same_tree(&f.rootfs(), &out);
}

#[test]
fn sparse_files_from_gnu_tar() {
    if !have("tar") {
        eprintln!("skipping: GNU tar needed");
        return;
    }
    let dir = tempdir();
    let layout = dir.path().join("layout");
    fs::create_dir_all(layout.join("rootfs")).unwrap();
    fs::write(layout.join("metadata.yaml"), "architecture: x86_64\n").unwrap();
    let sparse = layout.join("rootfs/sparse");
    let f = fs::File::create(&sparse).unwrap();
    f.set_len(5 << 20).unwrap();
    drop(f);
    let mut f = fs::OpenOptions::new().write(true).open(&sparse).unwrap();
    use std::io::{Seek, SeekFrom};
    f.seek(SeekFrom::Start(3 << 20)).unwrap();
    f.write_all(b"data in the middle").unwrap();
    drop(f);
    let expected = fs::read(&sparse).unwrap();
    // GNU format ('S' entries): unpacked with the right contents.
    let img = dir.path().join("gnu.tar");
    run(Command::new("tar")
        .args(["--format=gnu", "--sparse", "-cf"])
        .arg(&img)
        .arg("-C")
        .arg(&layout)
        .args(["metadata.yaml", "rootfs"]));
    let out = dir.path().join("out");
    unpack_rootfs(&ImageFiles::unified(&img), &out).unwrap();
    assert_eq!(fs::read(out.join("sparse")).unwrap(), expected);
    // PAX format: refused, rather than unpacked under the wrong name.
    let img = dir.path().join("posix.tar");
    run(Command::new("tar")
        .args(["--format=posix", "--sparse", "-cf"])
        .arg(&img)
        .arg("-C")
        .arg(&layout)
        .args(["metadata.yaml", "rootfs"]));
    let err = unpack_rootfs(&ImageFiles::unified(&img), &dir.path().join("out2")).unwrap_err();
    assert!(matches!(err, ImageError::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("sparse"), "{err}");
    assert!(!dir.path().join("out2").exists());
}

#[test]
fn binary_xattr_with_newline_survives() {
    // The tar crate alone cannot read PAX values holding 0x0a (composefs/tar-rs#428); a capability set such
    // as cap_dac_override+cap_fowner encodes as such a value.
    require_root!();
    let dir = tempdir();
    let rootfs = dir.path().join("rootfs");
    fs::create_dir_all(&rootfs).unwrap();
    let file = rootfs.join("tool");
    fs::write(&file, "#!/bin/sh\n").unwrap();
    let caps = b"\x01\x00\x00\x02\x0a\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00";
    xattr::set(&file, "security.capability", caps).unwrap();
    xattr::set(&file, "user.multi", b"line one\nline two=x\n").unwrap();
    let mut meta = sample_metadata();
    meta.templates.clear();
    for c in [Compression::None, Compression::Xz] {
        let img = dir.path().join(format!("img.{}", c.extension()));
        pack_unified(&rootfs, &meta, None, &img, c).unwrap();
        let out = dir.path().join(format!("out-{c}"));
        unpack_rootfs(&ImageFiles::unified(&img), &out).unwrap();
        assert_eq!(
            xattr::get(out.join("tool"), "security.capability").unwrap().as_deref(),
            Some(&caps[..])
        );
        assert_eq!(
            xattr::get(out.join("tool"), "user.multi").unwrap().as_deref(),
            Some(&b"line one\nline two=x\n"[..])
        );
        assert_same_tree(&rootfs, &out);
    }
}

/// Write `entries` as a plain tarball (or gzip-compressed) at `path`.
fn write_raw(path: &Path, entries: &[Raw<'_>], gzip: bool) {
    let data = raw_tar(entries);
    if gzip {
        let mut e = flate2::write::GzEncoder::new(fs::File::create(path).unwrap(), flate2::Compression::fast());
        e.write_all(&data).unwrap();
        e.finish().unwrap();
    } else {
        fs::write(path, data).unwrap();
    }
}

/// Unpacking `entries` (after a minimal valid image prefix) fails with an `UnsafeEntry` error, leaves no
/// destination and nothing next to it.
fn assert_refused(entries: Vec<Raw<'_>>, what: &str) -> tempfile::TempDir {
    let dir = tempdir();
    let mut all = minimal_image_prefix();
    all.extend(entries);
    let img = dir.path().join("evil.tar.gz");
    write_raw(&img, &all, true);
    let work = dir.path().join("work");
    fs::create_dir(&work).unwrap();
    let err = unpack_rootfs(&ImageFiles::unified(&img), &work.join("rootfs")).unwrap_err();
    assert!(matches!(err, ImageError::UnsafeEntry { .. }), "{what}: {err}");
    assert!(
        err.to_string().contains("evil.tar.gz"),
        "{what}: the message names the file: {err}"
    );
    assert!(
        names(&work).is_empty(),
        "{what}: nothing left in {}: {:?}",
        work.display(),
        names(&work)
    );
    dir
}

#[test]
fn parent_dir_entries_are_refused() {
    let dir = assert_refused(vec![Raw::File("rootfs/../evil", b"x")], "rootfs/../evil");
    assert!(!dir.path().join("evil").exists() && !dir.path().join("work/evil").exists());
    let dir = assert_refused(vec![Raw::File("../evil", b"x")], "../evil");
    assert!(!dir.path().join("evil").exists());
    assert_refused(vec![Raw::File("rootfs/etc/../../../evil", b"x")], "deep ..");
    assert_refused(
        vec![Raw::Hardlink("rootfs/h", "rootfs/../../etc/passwd")],
        "hard link with ..",
    );
    assert_refused(
        vec![Raw::Hardlink("rootfs/h", "/etc/passwd")],
        "hard link outside rootfs/",
    );

    // The same in a split image's rootfs tarball.
    let dir = tempdir();
    let meta = dir.path().join("meta.tar");
    write_raw(&meta, &[Raw::File("metadata.yaml", b"architecture: x86_64\n")], false);
    let rootfs = dir.path().join("rootfs.tar");
    write_raw(
        &rootfs,
        &[Raw::Dir("./"), Raw::File("ok", b"ok"), Raw::File("../evil", b"x")],
        false,
    );
    let err = unpack_rootfs(&ImageFiles::split(&meta, &rootfs), &dir.path().join("out")).unwrap_err();
    assert!(matches!(err, ImageError::UnsafeEntry { .. }), "{err}");
    assert!(!dir.path().join("out").exists() && !dir.path().join("evil").exists());
}

#[test]
fn symlinks_cannot_redirect_writes_outside() {
    let outside = tempdir();
    let target = outside.path().to_str().unwrap().to_string();
    fs::set_permissions(outside.path(), fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(outside.path().join("victim"), "original").unwrap();

    // link -> /absolute/outside, then link/pwned
    assert_refused(
        vec![
            Raw::Symlink("rootfs/link", &target),
            Raw::File("rootfs/link/pwned", b"pwned"),
        ],
        "absolute symlink",
    );
    // link -> /tmp itself, as in the classic attack.
    let unique = format!("corral-image-pwned-{}", std::process::id());
    assert_refused(
        vec![
            Raw::Symlink("rootfs/link", "/tmp"),
            Raw::File(&format!("rootfs/link/{unique}"), b"pwned"),
        ],
        "symlink to /tmp",
    );
    assert!(!Path::new("/tmp").join(&unique).exists());
    // Relative escape, through a chain of symlinks.
    assert_refused(
        vec![
            Raw::Symlink("rootfs/up", ".."),
            Raw::Symlink("rootfs/etc/up2", "../up/.."),
            Raw::File("rootfs/etc/up2/pwned", b"pwned"),
        ],
        "relative symlink chain",
    );
    // A hard link through a symlink leading out.
    assert_refused(
        vec![
            Raw::Symlink("rootfs/link", &target),
            Raw::Hardlink("rootfs/h", "rootfs/link/victim"),
        ],
        "hard link via symlink",
    );
    // A directory entry under a symlink leading out.
    assert_refused(
        vec![Raw::Symlink("rootfs/link", &target), Raw::Dir("rootfs/link/sub/")],
        "dir under symlink",
    );
    assert!(names(outside.path()) == ["victim"], "{:?}", names(outside.path()));
    assert_eq!(fs::read_to_string(outside.path().join("victim")).unwrap(), "original");

    // Entries replacing a symlink (to outside) by a file or a directory replace the symlink itself: the
    // image unpacks, and nothing outside changes (not even the mode of the directory linked to).
    let dir = tempdir();
    let mut entries = minimal_image_prefix();
    let victim = outside.path().join("victim").to_str().unwrap().to_string();
    entries.extend([
        Raw::Symlink("rootfs/f", &victim),
        Raw::File("rootfs/f", b"inside"),
        Raw::Symlink("rootfs/d", &target),
        Raw::Dir("rootfs/d/"),
    ]);
    let img = dir.path().join("img.tar");
    write_raw(&img, &entries, false);
    let out = dir.path().join("out");
    unpack_rootfs(&ImageFiles::unified(&img), &out).unwrap();
    assert_eq!(fs::read_to_string(out.join("f")).unwrap(), "inside");
    assert!(fs::symlink_metadata(out.join("d")).unwrap().is_dir());
    assert_eq!(fs::read_to_string(outside.path().join("victim")).unwrap(), "original");
    assert_eq!(
        fs::metadata(outside.path()).unwrap().permissions().mode() & 0o7777,
        0o700
    );
    // Symlinks that stay inside are followed as tar would.
    let mut entries = minimal_image_prefix();
    entries.extend([
        Raw::Symlink("rootfs/etc2", "etc"),
        Raw::File("rootfs/etc2/inside", b"ok"),
    ]);
    let img = dir.path().join("img2.tar");
    write_raw(&img, &entries, false);
    let out = dir.path().join("out2");
    unpack_rootfs(&ImageFiles::unified(&img), &out).unwrap();
    assert_eq!(fs::read_to_string(out.join("etc/inside")).unwrap(), "ok");
}

/// Pack a small image with `c`, cut it in half: inspect and unpack say it is truncated or corrupt, name
/// the file, and leave nothing behind.
fn check_truncated(c: Compression) {
    let dir = tempdir();
    let rootfs = dir.path().join("rootfs");
    fs::create_dir_all(rootfs.join("data")).unwrap();
    for i in 0..20 {
        let data: Vec<u8> = (0..50_000u32).map(|j| ((j * 7 + i * 13) % 253) as u8).collect();
        fs::write(rootfs.join(format!("data/f{i}")), data).unwrap();
    }
    let mut meta = sample_metadata();
    meta.templates.clear();
    let img = dir.path().join(format!("image.{}", c.extension()));
    pack_unified(&rootfs, &meta, None, &img, c).unwrap();
    let len = fs::metadata(&img).unwrap().len();
    let file = fs::OpenOptions::new().write(true).open(&img).unwrap();
    file.set_len(len / 2).unwrap();
    drop(file);

    let files = ImageFiles::unified(&img);
    let err = inspect(&files).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ImageError::Corrupt { .. }), "{c}: {msg}");
    assert!(
        msg.contains("truncated or corrupt") && msg.contains(img.to_str().unwrap()),
        "{c}: {msg}"
    );
    assert!(msg.contains("download it again"), "{msg}");

    let work = dir.path().join("work");
    fs::create_dir(&work).unwrap();
    let err = unpack_rootfs(&files, &work.join("rootfs")).unwrap_err();
    assert!(matches!(err, ImageError::Corrupt { .. }), "{c}: {err}");
    assert!(
        names(&work).is_empty(),
        "{c}: no half-unpacked rootfs: {:?}",
        names(&work)
    );
}

#[test]
fn truncated_images_are_reported_and_leave_nothing() {
    for c in Compression::ALL {
        check_truncated(c);
    }
}

#[test]
fn corrupt_compressed_data_is_reported() {
    let dir = tempdir();
    let rootfs = dir.path().join("rootfs");
    fs::create_dir_all(&rootfs).unwrap();
    let data: Vec<u8> = (0..400_000u32)
        .map(|j| (j.wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect();
    fs::write(rootfs.join("blob"), data).unwrap();
    let mut meta = sample_metadata();
    meta.templates.clear();
    for c in [
        Compression::Gzip,
        Compression::Xz,
        Compression::Zstd,
        Compression::Bzip2,
    ] {
        let img = dir.path().join(format!("image.{}", c.extension()));
        pack_unified(&rootfs, &meta, None, &img, c).unwrap();
        let mut bytes = fs::read(&img).unwrap();
        let mid = bytes.len() / 2;
        for b in &mut bytes[mid..mid + 64] {
            *b ^= 0x55;
        }
        fs::write(&img, &bytes).unwrap();
        let err = inspect(&ImageFiles::unified(&img)).unwrap_err();
        assert!(matches!(err, ImageError::Corrupt { .. }), "{c}: {err}");
        let err = unpack_rootfs(&ImageFiles::unified(&img), &dir.path().join(format!("out-{c}"))).unwrap_err();
        assert!(matches!(err, ImageError::Corrupt { .. }), "{c}: {err}");
        assert!(!dir.path().join(format!("out-{c}")).exists());
    }
}

#[test]
fn damaged_trailers_are_reported() {
    // The tar reader stops at the end-of-archive blocks; the compressed stream's own end (gzip CRC and size,
    // xz footer, zstd checksum) must still be checked.
    let dir = tempdir();
    let rootfs = dir.path().join("rootfs");
    fs::create_dir_all(&rootfs).unwrap();
    fs::write(rootfs.join("file"), "some content\n").unwrap();
    let mut meta = sample_metadata();
    meta.templates.clear();
    for c in [Compression::Gzip, Compression::Xz, Compression::Zstd] {
        let img = dir.path().join(format!("image.{}", c.extension()));
        pack_unified(&rootfs, &meta, None, &img, c).unwrap();
        let mut bytes = fs::read(&img).unwrap();
        let n = bytes.len();
        bytes[n - 2] ^= 0x01;
        fs::write(&img, &bytes).unwrap();
        let err = inspect(&ImageFiles::unified(&img)).unwrap_err();
        assert!(matches!(err, ImageError::Corrupt { .. }), "{c}: {err}");
        let out = dir.path().join(format!("out-{c}"));
        let err = unpack_rootfs(&ImageFiles::unified(&img), &out).unwrap_err();
        assert!(matches!(err, ImageError::Corrupt { .. }), "{c}: {err}");
        assert!(!out.exists());
    }
}

#[test]
fn plain_tar_cut_at_an_entry_boundary_is_truncated() {
    // No decompressor to notice: the missing end-of-archive blocks are what tells.
    let dir = tempdir();
    let mut entries = minimal_image_prefix();
    entries.push(Raw::File("rootfs/etc/passwd", b"root:x:0:0::/root:/bin/sh\n"));
    let full = raw_tar(&entries);
    assert!(full[full.len() - 1024..].iter().all(|b| *b == 0));
    let img = dir.path().join("cut.tar");
    fs::write(&img, &full[..full.len() - 1024]).unwrap();
    let err = inspect(&ImageFiles::unified(&img)).unwrap_err();
    assert!(matches!(err, ImageError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("end-of-archive"), "{err}");
    let err = unpack_rootfs(&ImageFiles::unified(&img), &dir.path().join("out")).unwrap_err();
    assert!(matches!(err, ImageError::Corrupt { .. }), "{err}");
    assert!(!dir.path().join("out").exists());
    // Intact, it is fine.
    fs::write(&img, &full).unwrap();
    inspect(&ImageFiles::unified(&img)).unwrap();
}

#[test]
fn not_an_image() {
    let dir = tempdir();
    // A tarball without metadata.yaml.
    let img = dir.path().join("plain.tar");
    write_raw(&img, &[Raw::Dir("rootfs/"), Raw::File("rootfs/x", b"x")], false);
    let err = inspect(&ImageFiles::unified(&img)).unwrap_err();
    assert!(matches!(err, ImageError::NoMetadata { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!("not an image: no metadata.yaml in {}", img.display())
    );

    // The metadata half of a split image given as a unified image.
    let meta_only = dir.path().join("meta.tar");
    write_raw(
        &meta_only,
        &[Raw::File("metadata.yaml", b"architecture: x86_64\n")],
        false,
    );
    let err = inspect(&ImageFiles::unified(&meta_only)).unwrap_err();
    assert!(matches!(err, ImageError::NoRootfs { .. }), "{err}");
    let err = unpack_rootfs(&ImageFiles::unified(&meta_only), &dir.path().join("out")).unwrap_err();
    assert!(matches!(err, ImageError::NoRootfs { .. }), "{err}");
    assert!(!dir.path().join("out").exists());

    // Invalid metadata.yaml.
    let bad = dir.path().join("bad.tar");
    write_raw(
        &bad,
        &[
            Raw::File("metadata.yaml", b"architecture: [x86_64\n"),
            Raw::Dir("rootfs/"),
        ],
        false,
    );
    let err = inspect(&ImageFiles::unified(&bad)).unwrap_err();
    assert!(matches!(err, ImageError::InvalidMetadata { .. }), "{err}");
    assert!(err.to_string().contains("bad.tar"), "{err}");

    // Not a tarball at all, an empty file, a missing file.
    let junk = dir.path().join("junk");
    fs::write(
        &junk,
        b"this is not an image, just some text that is long enough to sniff",
    )
    .unwrap();
    assert!(matches!(detect_format(&junk), Err(ImageError::UnknownFormat { .. })));
    assert!(matches!(
        inspect(&ImageFiles::unified(&junk)),
        Err(ImageError::UnknownFormat { .. })
    ));
    let empty = dir.path().join("empty");
    fs::write(&empty, b"").unwrap();
    assert!(matches!(
        detect_compression(&empty),
        Err(ImageError::UnknownFormat { .. })
    ));
    let err = inspect(&ImageFiles::unified(dir.path().join("missing"))).unwrap_err();
    assert!(
        matches!(err, ImageError::Read { .. }) && err.to_string().contains("missing"),
        "{err}"
    );

    // A valid gzip stream that holds no tar.
    let gz = dir.path().join("text.gz");
    let mut e = flate2::write::GzEncoder::new(fs::File::create(&gz).unwrap(), flate2::Compression::fast());
    e.write_all(&[b'x'; 2000]).unwrap();
    e.finish().unwrap();
    assert!(matches!(
        inspect(&ImageFiles::unified(&gz)),
        Err(ImageError::Corrupt { .. })
    ));
}

#[test]
fn squashfs_rootfs_is_fingerprinted_and_unpacked() {
    require_root!();
    if !have("mksquashfs") || !have("unsquashfs") {
        eprintln!("skipping: mksquashfs and unsquashfs (squashfs-tools) needed");
        return;
    }
    let f = Fixture::new();
    let meta = f.path("meta.tar");
    write_raw(
        &meta,
        &[Raw::File(
            "metadata.yaml",
            b"architecture: x86_64\nproperties:\n  os: test\n",
        )],
        false,
    );
    let sq = f.path("rootfs.squashfs");
    run(Command::new("mksquashfs")
        .arg(f.rootfs())
        .arg(&sq)
        .args(["-comp", "xz", "-quiet", "-no-progress", "-xattrs"]));
    assert_eq!(detect_format(&sq).unwrap(), FileFormat::Squashfs);
    let err = detect_compression(&sq).unwrap_err();
    assert!(matches!(err, ImageError::Unsupported { .. }), "{err}");

    let files = ImageFiles::split(&meta, &sq);
    let info = inspect(&files).unwrap();
    assert_eq!(info.fingerprint, sha256sum(&[&meta, &sq]));
    assert_eq!(info.rootfs_format, FileFormat::Squashfs);
    assert_eq!(info.metadata.properties["os"], "test");
    verify(&files, &info.fingerprint).unwrap();

    // Ownership, modes, links, nodes, xattrs and times as in the tree it was made from.
    let out = f.path("out");
    unpack_rootfs(&files, &out).unwrap();
    assert_same_tree(&f.rootfs(), &out);
    let leftovers: Vec<_> = fs::read_dir(f.dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("corral-unpack"))
        .collect();
    assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");

    // A damaged filesystem is reported and leaves nothing.
    let bad = f.path("bad.squashfs");
    let mut bytes = b"hsqs".to_vec();
    bytes.extend(std::iter::repeat_n(7u8, 4096));
    fs::write(&bad, &bytes).unwrap();
    let err = unpack_rootfs(&ImageFiles::split(&meta, &bad), &f.path("out2")).unwrap_err();
    assert!(matches!(err, ImageError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("unsquashfs failed"), "{err}");
    assert!(!f.path("out2").exists());
}

#[test]
fn verify_reports_mismatches() {
    let dir = tempdir();
    let img = dir.path().join("img.tar");
    let mut entries = minimal_image_prefix();
    entries.push(Raw::File("rootfs/x", b"x"));
    write_raw(&img, &entries, false);
    let files = ImageFiles::unified(&img);
    let wrong = "0".repeat(64);
    let err = verify(&files, &wrong).unwrap_err();
    assert!(matches!(err, ImageError::FingerprintMismatch { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&sha256sum(&[&img])) && msg.contains("img.tar") && msg.contains("download it again"),
        "{msg}"
    );
    assert!(matches!(verify(&files, "abc"), Err(ImageError::InvalidFingerprint(_))));
    assert!(matches!(
        verify(&files, &"g".repeat(64)),
        Err(ImageError::InvalidFingerprint(_))
    ));
    verify(&files, &format!("  {}\n", sha256sum(&[&img]))).unwrap();
}

#[test]
fn busybox_test_rootfs_round_trip() {
    let source = Path::new("/var/cache/corral/test-images/busybox/rootfs");
    if !source.join("bin/busybox").exists() {
        eprintln!("skipping: {} is absent", source.display());
        return;
    }
    require_root!();
    let dir = tempdir();
    let mut meta = sample_metadata();
    meta.templates.clear();
    meta.properties.insert("os".into(), "busybox".into());
    for c in [Compression::Xz, Compression::Zstd] {
        let img = dir.path().join(format!("busybox.{}", c.extension()));
        let t = Instant::now();
        let fp = pack_unified(source, &meta, None, &img, c).unwrap();
        let packed = t.elapsed();
        assert_eq!(fp, sha256sum(&[&img]));
        let files = ImageFiles::unified(&img);
        let t = Instant::now();
        let info = inspect(&files).unwrap();
        let inspected = t.elapsed();
        assert_eq!(info.metadata.properties["os"], "busybox");
        let out = dir.path().join(format!("rootfs-{c}"));
        let t = Instant::now();
        unpack_rootfs(&files, &out).unwrap();
        let unpacked = t.elapsed();
        eprintln!(
            "busybox {c}: {} bytes; pack {packed:.2?}, inspect {inspected:.2?}, unpack {unpacked:.2?}",
            info.size
        );
        assert_eq!(
            fs::read(out.join("bin/busybox")).unwrap(),
            fs::read(source.join("bin/busybox")).unwrap()
        );
        assert_eq!(
            fs::read_link(out.join("bin/sh")).unwrap(),
            fs::read_link(source.join("bin/sh")).unwrap()
        );
        assert_same_tree(source, &out);
    }
}
