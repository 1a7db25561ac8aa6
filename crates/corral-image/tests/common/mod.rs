//! Helpers for the integration tests: a synthetic tree exercising everything a rootfs can hold, a snapshot
//! of a tree for comparisons, independent sha256 (the `sha256sum` command), and raw tarball crafting.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use corral_image::{ImageMetadata, ImageTemplate};

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Skip a test that needs root, saying so.
#[macro_export]
macro_rules! require_root {
    () => {
        if !common::is_root() {
            eprintln!("skipping: this test needs root (ownership, device nodes, trusted.* xattrs)");
            return;
        }
    };
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("corral-image-test-")
        .tempdir()
        .expect("tempdir")
}

/// The sha256 of the concatenation of `files`, computed by `cat FILES | sha256sum`: independent of the crate.
pub fn sha256sum(files: &[&Path]) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(r#"cat "$@" | sha256sum"#)
        .arg("sh")
        .args(files)
        .output()
        .expect("run sha256sum");
    assert!(
        out.status.success(),
        "sha256sum failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let hex = text.split_whitespace().next().unwrap().to_string();
    assert_eq!(hex.len(), 64, "{text}");
    hex
}

pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

pub fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap_or_else(|e| panic!("lchown {}: {e}", p.display()));
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

fn set_mtime(p: &Path, secs: i64) {
    let t = nix::sys::time::TimeSpec::new(secs, 0);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        p,
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

/// Build, under `root` (which must exist), a tree with: files owned by 0 and 1000 and by a huge uid, setuid
/// and setgid bits, a sticky directory, relative and absolute symlinks, three hard links, empty
/// directories, a fifo, character and block devices, xattrs on a file (`user.test`), a directory and a
/// symlink (`trusted.*`), a file capability (`security.capability`, if `setcap` exists), long names and
/// link targets (GNU long-name entries), a non-ASCII name, an empty and a 256 KiB file, and distinct mtimes.
/// Needs root.
pub fn synthetic_tree(root: &Path) {
    let p = |s: &str| root.join(s);
    fs::create_dir_all(p("a/deep/nested/more")).unwrap();
    fs::write(p("a/file"), "hello\n").unwrap();
    fs::write(p("setuid"), "#!/bin/sh\necho setuid\n").unwrap();
    fs::write(p("empty-file"), "").unwrap();
    fs::write(p("ünïcode name"), "utf-8\n").unwrap();
    let big: Vec<u8> = (0..(256u32 << 10))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    fs::write(p("a/big.bin"), &big).unwrap();
    fs::write(p("hard1"), "linked\n").unwrap();
    fs::hard_link(p("hard1"), p("hard2")).unwrap();
    fs::hard_link(p("hard1"), p("a/hard3")).unwrap();
    fs::create_dir(p("empty")).unwrap();
    fs::create_dir(p("setgid-dir")).unwrap();
    fs::create_dir(p("sticky")).unwrap();
    fs::create_dir(p("dev")).unwrap();
    symlink("a/file", p("link")).unwrap();
    symlink("/etc/passwd", p("abs")).unwrap();
    symlink("does/not/exist", p("dangling")).unwrap();
    nix::unistd::mkfifo(&p("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let mknod = |path: PathBuf, kind, major, minor| {
        nix::sys::stat::mknod(
            &path,
            kind,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            nix::sys::stat::makedev(major, minor),
        )
        .unwrap()
    };
    mknod(p("dev/null"), nix::sys::stat::SFlag::S_IFCHR, 1, 3);
    mknod(p("dev/loop9"), nix::sys::stat::SFlag::S_IFBLK, 7, 9);
    let long_dir = "d".repeat(90);
    fs::create_dir_all(p(&format!("{long_dir}/{}", "e".repeat(60)))).unwrap();
    fs::write(
        p(&format!("{long_dir}/{}/{}", "e".repeat(60), "f".repeat(120))),
        "long\n",
    )
    .unwrap();
    symlink("t".repeat(150), p("long-target")).unwrap();
    fs::write(p("huge-ids"), "big ids\n").unwrap();

    // Ownership, then modes (chown clears setuid), then xattrs (chown clears capabilities), then times.
    for (rel, uid, gid) in [
        ("a", 1000, 1000),
        ("a/file", 1000, 1000),
        ("a/big.bin", 1000, 0),
        ("link", 1000, 1000),
        ("hard1", 1000, 0),
        ("fifo", 1000, 1000),
        ("setgid-dir", 0, 1000),
        ("dev/loop9", 0, 6),
        ("huge-ids", 2_000_000_001, 3_000_000_002),
    ] {
        chown(&p(rel), uid, gid);
    }
    for (rel, mode) in [
        ("", 0o755),
        ("a", 0o750),
        ("a/file", 0o640),
        ("setuid", 0o4755),
        ("setgid-dir", 0o2775),
        ("sticky", 0o1777),
        ("empty", 0o700),
        ("hard1", 0o644),
        ("dev/null", 0o666),
        ("dev/loop9", 0o660),
        ("fifo", 0o620),
    ] {
        chmod(&p(rel), mode);
    }
    xattr::set(p("a/file"), "user.test", b"hello").unwrap();
    xattr::set(p("a/file"), "trusted.binary", &[0, 1, 2, 255, b'\n', b'=']).unwrap();
    xattr::set(p("a"), "user.dir", b"on a directory").unwrap();
    xattr::set(p("link"), "trusted.sym", b"on a symlink").unwrap();
    // A PAX header and a GNU long-name entry for the same member.
    xattr::set(
        p(&format!("{long_dir}/{}/{}", "e".repeat(60), "f".repeat(120))),
        "user.long",
        b"x",
    )
    .unwrap();
    if have("setcap") {
        run(Command::new("setcap").arg("cap_net_raw+ep").arg(p("setuid")));
        chmod(&p("setuid"), 0o4755);
    }

    // Distinct mtimes, deepest first so that setting a child's does not move its parent's.
    let mut all: Vec<PathBuf> = walk(root).into_keys().collect();
    all.sort();
    for (i, rel) in all.iter().enumerate().rev() {
        set_mtime(&root.join(rel), 1_600_000_000 + (i as i64) * 3_600);
    }
}

/// Everything we compare about one filesystem object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub size: u64,
    pub content: Option<Vec<u8>>,
    pub link: Option<PathBuf>,
    pub rdev: u64,
    pub xattrs: BTreeMap<OsString, Vec<u8>>,
    /// For a file with several links: the first (sorted) path of its inode.
    pub hardlink_group: Option<PathBuf>,
}

/// Walk `root` (without following symlinks) into path (relative; "" for the root) -> Node.
pub fn walk(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), PathBuf> = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    let mut paths = Vec::new();
    while let Some(rel) = stack.pop() {
        let full = if rel.as_os_str().is_empty() {
            root.to_path_buf()
        } else {
            root.join(&rel)
        };
        let m = fs::symlink_metadata(&full).unwrap();
        if m.is_dir() {
            for e in fs::read_dir(&full).unwrap() {
                stack.push(rel.join(e.unwrap().file_name()));
            }
        }
        paths.push((rel, full, m));
    }
    paths.sort_by(|a, b| a.0.cmp(&b.0));
    for (rel, full, m) in paths {
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_file() {
            "file"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_fifo() {
            "fifo"
        } else if ft.is_char_device() {
            "char"
        } else if ft.is_block_device() {
            "block"
        } else {
            "other"
        };
        let mut xattrs = BTreeMap::new();
        for name in xattr::list(&full).unwrap() {
            if name.as_bytes() == b"security.selinux" {
                continue;
            }
            if let Some(v) = xattr::get(&full, &name).unwrap() {
                xattrs.insert(name, v);
            }
        }
        let hardlink_group = (ft.is_file() && m.nlink() > 1)
            .then(|| inodes.entry((m.dev(), m.ino())).or_insert_with(|| rel.clone()).clone());
        out.insert(
            rel,
            Node {
                kind,
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
                mtime: m.mtime(),
                size: if ft.is_file() { m.len() } else { 0 },
                content: ft.is_file().then(|| fs::read(&full).unwrap()),
                link: ft.is_symlink().then(|| fs::read_link(&full).unwrap()),
                rdev: if ft.is_char_device() || ft.is_block_device() {
                    m.rdev()
                } else {
                    0
                },
                xattrs,
                hardlink_group,
            },
        );
    }
    out
}

/// Assert two trees are the same in every respect `Node` records, with a readable diff.
pub fn assert_same_tree(expected: &Path, actual: &Path) {
    let a = walk(expected);
    let b = walk(actual);
    let only_a: Vec<_> = a.keys().filter(|k| !b.contains_key(*k)).collect();
    let only_b: Vec<_> = b.keys().filter(|k| !a.contains_key(*k)).collect();
    assert!(
        only_a.is_empty() && only_b.is_empty(),
        "trees differ: only in {}: {only_a:?}; only in {}: {only_b:?}",
        expected.display(),
        actual.display()
    );
    for (path, na) in &a {
        let nb = &b[path];
        if na != nb {
            let mut na = na.clone();
            let mut nb = nb.clone();
            if na.content != nb.content {
                panic!("{}: contents differ", path.display());
            }
            na.content = None;
            nb.content = None;
            assert_eq!(na, nb, "{} differs (expected left, got right)", path.display());
        }
    }
}

/// Metadata with a couple of templates, as image builders write them.
pub fn sample_metadata() -> ImageMetadata {
    let mut m = ImageMetadata {
        architecture: "x86_64".into(),
        creation_date: 1_700_040_000,
        expiry_date: 1_702_632_000,
        ..Default::default()
    };
    for (k, v) in [
        ("os", "Debian"),
        ("release", "bookworm"),
        ("description", "test image"),
        ("serial", "20231115"),
    ] {
        m.properties.insert(k.into(), v.into());
    }
    m.templates.insert(
        "/etc/hostname".into(),
        ImageTemplate {
            when: vec!["create".into(), "copy".into()],
            template: "hostname.tpl".into(),
            ..Default::default()
        },
    );
    let mut props = BTreeMap::new();
    props.insert("default".into(), "x".into());
    m.templates.insert(
        "/etc/hosts".into(),
        ImageTemplate {
            when: vec!["start".into()],
            create_only: true,
            template: "hosts.tpl".into(),
            properties: props,
        },
    );
    m
}

/// The templates directory for [`sample_metadata`].
pub fn sample_templates(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("hostname.tpl"), "{{ container.name }}\n").unwrap();
    fs::write(dir.join("hosts.tpl"), "127.0.1.1\t{{ container.name }}\n").unwrap();
}

/// An entry of a hand-made (possibly malicious) tarball; names and link targets are written as raw bytes,
/// bypassing the tar crate's own checks.
pub enum Raw<'a> {
    File(&'a str, &'a [u8]),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
}

/// A plain tarball of `entries`.
pub fn raw_tar(entries: &[Raw<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let (name, kind, data, link): (&str, tar::EntryType, &[u8], &str) = match e {
            Raw::File(n, d) => (n, tar::EntryType::Regular, d, ""),
            Raw::Dir(n) => (n, tar::EntryType::Directory, b"", ""),
            Raw::Symlink(n, t) => (n, tar::EntryType::Symlink, b"", t),
            Raw::Hardlink(n, t) => (n, tar::EntryType::Link, b"", t),
        };
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(kind);
        h.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_size(data.len() as u64);
        h.set_mtime(1_600_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

/// The entries of a minimal valid unified image, to put before whatever a test adds.
pub fn minimal_image_prefix() -> Vec<Raw<'static>> {
    vec![
        Raw::File("metadata.yaml", b"architecture: x86_64\ncreation_date: 1\n"),
        Raw::Dir("rootfs/"),
        Raw::Dir("rootfs/etc/"),
        Raw::File("rootfs/etc/hostname", b"ok\n"),
    ]
}

/// Names in `dir` (to check nothing was left behind).
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}
