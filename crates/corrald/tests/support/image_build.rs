//! Images built by `corral image build` in tests, offline: the project's busybox recipe with its
//! busybox from a .deb made here of the busybox test image's own binary (no packet leaves the
//! machine).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::{corral_cli, unique};

pub fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel)
}

/// A `busybox-static` .deb holding the busybox test image's binary, made with dpkg-deb.
pub fn make_deb(rootfs: &Path, dir: &Path) -> PathBuf {
    let tree = dir.join("deb-tree");
    std::fs::create_dir_all(tree.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(tree.join("bin")).unwrap();
    std::fs::copy(rootfs.join("bin/busybox"), tree.join("bin/busybox")).unwrap();
    let arch = String::from_utf8(
        Command::new("dpkg")
            .arg("--print-architecture")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    std::fs::write(
        tree.join("DEBIAN/control"),
        format!(
            "Package: busybox-static\nVersion: 1:1.35.0-test\nArchitecture: {}\nMaintainer: Corral tests <t@example.invalid>\n\
             Description: busybox for the image builder's tests\n",
            arch.trim()
        ),
    )
    .unwrap();
    let deb = dir.join("busybox-static_test.deb");
    let out = Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&tree)
        .arg(&deb)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dpkg-deb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&tree).unwrap();
    deb
}

/// tests/images/busybox.yaml with its busybox taken from `deb` (and `extra` appended).
pub fn busybox_recipe(deb: &Path, extra: &str) -> String {
    let text = std::fs::read_to_string(repo_file("tests/images/busybox.yaml")).unwrap();
    let from = "  package: busybox-static\n";
    assert!(text.contains(from), "tests/images/busybox.yaml changed shape: {text}");
    text.replace(from, &format!("{from}  deb: {}\n", deb.display())) + extra
}

pub fn build(recipe_text: &str, dir: &Path, args: &[&str]) -> Output {
    let recipe = dir.join(format!("recipe-{}.yaml", unique("r")));
    std::fs::write(&recipe, recipe_text).unwrap();
    Command::new(corral_cli())
        .args(["image", "build"])
        .arg(&recipe)
        .args(args)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .expect("corral image build")
}

/// The images a build printed: (unified fingerprint, file), (split fingerprint, meta, rootfs).
pub fn parse_built(stdout: &str) -> ((String, PathBuf), (String, PathBuf, PathBuf)) {
    let mut unified = None;
    let mut split = None;
    for line in stdout.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        match f.as_slice() {
            ["unified", fp, file] => unified = Some((fp.to_string(), PathBuf::from(file))),
            ["split", fp, meta, rootfs] => split = Some((fp.to_string(), PathBuf::from(meta), PathBuf::from(rootfs))),
            _ => panic!("unexpected output line {line:?}"),
        }
    }
    (unified.expect("a unified line"), split.expect("a split line"))
}
