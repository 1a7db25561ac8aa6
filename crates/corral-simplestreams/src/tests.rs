//! Unit tests: parsing, resolution, the writer, and the fetcher against a loopback server.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::*;

/// An images.json as LXD-era servers publish it (trimmed): one product with two versions,
/// each with metadata, squashfs, root.tar.xz, a VM disk and a delta; one arm64 product.
const IMAGES: &str = r#"{
  "content_id": "images",
  "datatype": "image-downloads",
  "format": "products:1.0",
  "updated": "Mon, 01 Jan 2024 00:00:00 +0000",
  "products": {
    "debian:bookworm:amd64:default": {
      "aliases": "debian/bookworm/default,debian/bookworm,debian/12",
      "arch": "amd64",
      "os": "Debian",
      "release": "bookworm",
      "release_title": "bookworm",
      "variant": "default",
      "requirements": {},
      "unknown_field": 1,
      "versions": {
        "20240101_05:24": {
          "items": {
            "lxd.tar.xz": {"ftype": "lxd.tar.xz", "path": "images/d/old/lxd.tar.xz", "size": 10, "sha256": "aa",
              "combined_squashfs_sha256": "1111111111111111111111111111111111111111111111111111111111111111",
              "combined_rootxz_sha256": "2222222222222222222222222222222222222222222222222222222222222222"},
            "root.tar.xz": {"ftype": "root.tar.xz", "path": "images/d/old/rootfs.tar.xz", "size": 20, "sha256": "bb"},
            "squashfs": {"ftype": "squashfs", "path": "images/d/old/rootfs.squashfs", "size": 30, "sha256": "cc"}
          }
        },
        "20240102_05:24": {
          "items": {
            "incus.tar.xz": {"ftype": "incus.tar.xz", "path": "images/d/new/incus.tar.xz", "size": 11, "sha256": "AB",
              "combined_squashfs_sha256": "3333333333333333333333333333333333333333333333333333333333333333",
              "combined_rootxz_sha256": "4444444444444444444444444444444444444444444444444444444444444444",
              "combined_disk-kvm-img_sha256": "5555555555555555555555555555555555555555555555555555555555555555"},
            "root.tar.xz": {"ftype": "root.tar.xz", "path": "images/d/new/rootfs.tar.xz", "size": 21, "sha256": "bc"},
            "squashfs": {"ftype": "squashfs", "path": "images/d/new/rootfs.squashfs", "size": 31, "sha256": "cd"},
            "disk-kvm.img": {"ftype": "disk-kvm.img", "path": "images/d/new/disk.qcow2", "size": 99, "sha256": "ee"},
            "squashfs.vcdiff": {"ftype": "squashfs.vcdiff", "path": "images/d/new/x.vcdiff", "size": 5, "delta_base": "20240101_05:24"}
          }
        }
      }
    },
    "debian:bookworm:arm64:default": {
      "aliases": "debian/bookworm/default,debian/bookworm,debian/12",
      "arch": "arm64", "os": "Debian", "release": "bookworm", "variant": "default",
      "versions": {
        "20240102_05:24": {
          "items": {
            "lxd.tar.xz": {"ftype": "lxd.tar.xz", "path": "a/lxd.tar.xz", "size": 1, "sha256": "01",
              "combined_sha256": "6666666666666666666666666666666666666666666666666666666666666666"},
            "root.tar.xz": {"ftype": "root.tar.xz", "path": "a/root.tar.xz", "size": 2, "sha256": "02"}
          }
        }
      }
    },
    "alpine:3.19:amd64:default": {
      "aliases": "alpine/3.19",
      "arch": "amd64", "os": "Alpine", "release": "3.19", "variant": "default",
      "versions": {
        "20240102_13:00": {
          "items": {
            "lxd_combined.tar.gz": {"ftype": "lxd_combined.tar.gz", "path": "b/lxd.tar.gz", "size": 7,
              "sha256": "7777777777777777777777777777777777777777777777777777777777777777"}
          }
        }
      }
    }
  }
}"#;

fn catalog() -> Catalog {
    let products: Products = serde_json::from_str(IMAGES).unwrap();
    Catalog::new(&[products])
}

#[test]
fn parses_the_index() {
    let text = r#"{"format":"index:1.0","index":{"images":{"datatype":"image-downloads",
        "path":"streams/v1/images.json","format":"products:1.0","updated":"x",
        "products":["debian:bookworm:amd64:default"]}},"updated":"y"}"#;
    let s: Stream = serde_json::from_str(text).unwrap();
    assert_eq!(s.format, "index:1.0");
    let i = &s.index["images"];
    assert_eq!((i.datatype.as_str(), i.path.as_str()), ("image-downloads", IMAGES_PATH));
    assert_eq!(i.products, ["debian:bookworm:amd64:default"]);
}

#[test]
fn parses_items_with_their_json_names() {
    let p: Products = serde_json::from_str(IMAGES).unwrap();
    let v = &p.products["debian:bookworm:amd64:default"].versions["20240102_05:24"];
    let meta = &v.items["incus.tar.xz"];
    assert!(meta.combined_disk_kvm_img_sha256.starts_with("5555"));
    assert_eq!(v.items["squashfs.vcdiff"].delta_base, "20240101_05:24");
    // And written back under the same names.
    let back = serde_json::to_value(meta).unwrap();
    assert!(back["combined_disk-kvm-img_sha256"].is_string());
    assert!(back.get("md5").is_none(), "empty fields are left out: {back}");
}

#[test]
fn every_container_image_with_its_fingerprint() {
    let c = catalog();
    let mut fps: Vec<(&str, RootfsKind, &str)> = c
        .images
        .iter()
        .map(|i| (&i.fingerprint[..4], i.kind, i.version.as_str()))
        .collect();
    fps.sort();
    assert_eq!(
        fps,
        [
            ("1111", RootfsKind::Squashfs, "20240101_05:24"),
            ("2222", RootfsKind::Tarball, "20240101_05:24"),
            ("3333", RootfsKind::Squashfs, "20240102_05:24"),
            ("4444", RootfsKind::Tarball, "20240102_05:24"),
            ("6666", RootfsKind::Tarball, "20240102_05:24"),
            ("7777", RootfsKind::Unified, "20240102_13:00"),
        ]
    );
    let img = c.by_fingerprint("4444").unwrap();
    assert_eq!(img.files.len(), 2);
    assert_eq!(img.files[0].path, "images/d/new/incus.tar.xz");
    assert_eq!(img.files[0].sha256, "ab", "hashes are lowercased");
    assert_eq!(img.files[1].path, "images/d/new/rootfs.tar.xz");
    assert_eq!(img.size(), 32);
    assert_eq!((img.architecture.as_str(), img.arch.as_str()), ("x86_64", "amd64"));
    // Older servers: combined_sha256 is the root.tar.xz fingerprint.
    assert!(c.by_fingerprint("6666").unwrap().is_split());
    let unified = c.by_fingerprint("7777").unwrap();
    assert_eq!(unified.files.len(), 1);
    assert!(!unified.is_split());
}

#[test]
fn a_catalog_told_to_prefer_squashfs_names_the_squashfs_image() {
    let c = catalog().prefer_squashfs(true);
    assert_eq!(&c.by_alias("debian/12", "x86_64").unwrap().fingerprint[..4], "3333");
    // Where there is no squashfs, the tarball (or the unified image) all the same.
    assert_eq!(&c.by_alias("debian/12", "aarch64").unwrap().fingerprint[..4], "6666");
    assert_eq!(&c.by_alias("alpine/3.19", "x86_64").unwrap().fingerprint[..4], "7777");
}

#[test]
fn aliases_name_the_newest_tarball_for_the_architecture() {
    let c = catalog();
    assert_eq!(&c.by_alias("debian/12", "x86_64").unwrap().fingerprint[..4], "4444");
    assert_eq!(&c.by_alias("debian/12", "aarch64").unwrap().fingerprint[..4], "6666");
    assert_eq!(
        &c.by_alias("debian/12/arm64", "x86_64").unwrap().fingerprint[..4],
        "6666"
    );
    assert_eq!(
        &c.by_alias("debian/12/aarch64", "x86_64").unwrap().fingerprint[..4],
        "6666"
    );
    assert_eq!(&c.by_alias("alpine/3.19", "x86_64").unwrap().fingerprint[..4], "7777");
    assert!(c.by_alias("alpine/3.19", "aarch64").is_err());
    // The older version has no alias.
    assert!(c
        .images
        .iter()
        .filter(|i| i.version.starts_with("20240101"))
        .all(|i| i.aliases.is_empty()));
}

#[test]
fn unknown_alias_lists_what_there_is() {
    let c = catalog();
    let e = c.by_alias("ubuntu/24.04", "x86_64").unwrap_err().to_string();
    assert!(e.contains("\"ubuntu/24.04\""), "{e}");
    assert!(e.contains("alpine/3.19") && e.contains("debian/12"), "{e}");
    assert_eq!(c.aliases("x86_64").len(), 4);
}

#[test]
fn find_prefers_the_alias_and_accepts_a_fingerprint_as_alias() {
    let c = catalog();
    let fp = |alias, fp| c.find(alias, fp, "x86_64").unwrap().fingerprint[..4].to_string();
    assert_eq!(fp(Some("debian/12"), Some("2222")), "4444");
    // `lxc image copy` sends the alias as the fingerprint too.
    assert_eq!(fp(Some("debian/12"), Some("debian/12")), "4444");
    assert_eq!(fp(Some("gone"), Some("2222")), "2222");
    assert_eq!(fp(None, Some("2222")), "2222");
    assert_eq!(fp(None, Some("debian/12")), "4444");
    assert_eq!(
        &c.find(Some("22222222"), None, "x86_64").unwrap().fingerprint[..4],
        "2222"
    );
    assert!(matches!(c.by_fingerprint("9999"), Err(Error::UnknownFingerprint(_))));
    assert!(matches!(c.by_fingerprint(""), Err(Error::UnknownFingerprint(_))));
    assert!(c.find(None, None, "x86_64").is_err());
}

#[test]
fn serials_are_dates() {
    assert_eq!(writer_serial(0), "19700101_00:00");
    assert_eq!(writer_serial(1_700_000_000), "20231114_22:13");
    assert_eq!(writer_serial(951_782_400), "20000229_00:00");
}

fn writer_serial(t: i64) -> String {
    // Through a written tree: the serial of an image without one is its creation date.
    let dir = tempfile::tempdir().unwrap();
    let img = tiny_image(dir.path(), t, true, "x");
    let doc = write_tree(&dir.path().join("tree"), &[NewImage::new(img.0, &[])]).unwrap();
    doc.products
        .values()
        .next()
        .unwrap()
        .versions
        .keys()
        .next()
        .unwrap()
        .clone()
}

/// A small image packed from a throwaway tree: (files, fingerprint).
fn tiny_image(dir: &Path, created: i64, split: bool, tag: &str) -> (corral_image::ImageFiles, String) {
    let rootfs = dir.join(format!("rootfs-{tag}"));
    std::fs::create_dir_all(rootfs.join("etc")).unwrap();
    std::fs::write(rootfs.join("etc/hostname"), format!("tiny-{tag}\n")).unwrap();
    let meta = corral_image::ImageMetadata {
        architecture: "x86_64".into(),
        creation_date: created,
        properties: [("os", "Tiny"), ("release", "1")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    };
    let gz = corral_image::Compression::Gzip;
    if split {
        let (m, r) = (
            dir.join(format!("meta-{tag}.tar.gz")),
            dir.join(format!("root-{tag}.tar.gz")),
        );
        let fp = corral_image::pack_split(&rootfs, &meta, None, &m, &r, gz).unwrap();
        (corral_image::ImageFiles::split(m, r), fp)
    } else {
        let u = dir.join(format!("unified-{tag}.tar.gz"));
        let fp = corral_image::pack_unified(&rootfs, &meta, None, &u, gz).unwrap();
        (corral_image::ImageFiles::unified(u), fp)
    }
}

fn read_tree(root: &Path) -> Catalog {
    let index: Stream = serde_json::from_slice(&std::fs::read(root.join(INDEX_PATH)).unwrap()).unwrap();
    let path = &index.index["images"].path;
    let p: Products = serde_json::from_slice(&std::fs::read(root.join(path)).unwrap()).unwrap();
    Catalog::new(&[p])
}

#[test]
fn the_writer_makes_a_tree_the_reader_resolves() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    let (split, split_fp) = tiny_image(dir.path(), 1_700_000_000, true, "a");
    let (unified, unified_fp) = tiny_image(dir.path(), 1_700_000_100, false, "b");
    let mut u = NewImage::new(unified, &["tiny/unified"]);
    u.variant = Some("unified".into());
    write_tree(&root, &[NewImage::new(split, &["tiny", "tiny/1"])]).unwrap();
    write_tree(&root, &[u]).unwrap();
    let c = read_tree(&root);
    let img = c.by_alias("tiny", "x86_64").unwrap();
    assert_eq!(img.fingerprint, split_fp);
    assert_eq!(img.kind, RootfsKind::Tarball);
    assert_eq!(img.os, "Tiny");
    // Each file as listed, and the combined hash is what corral-image computes.
    for f in &img.files {
        let (len, sha) = crate::fetch::hash_file(&root.join(&f.path)).unwrap();
        assert_eq!((len, sha.as_str()), (f.size, f.sha256.as_str()));
    }
    let fp = corral_image::fingerprint_split(&root.join(&img.files[0].path), &root.join(&img.files[1].path)).unwrap();
    assert_eq!(fp, split_fp);
    let u = c.by_alias("tiny/unified", "x86_64").unwrap();
    assert_eq!(
        (u.fingerprint.as_str(), u.kind),
        (unified_fp.as_str(), RootfsKind::Unified)
    );
    // Both LXD's and Incus' item types are there.
    let doc: Products = serde_json::from_slice(&std::fs::read(root.join(IMAGES_PATH)).unwrap()).unwrap();
    let items = &doc.products["tiny:1:amd64:default"].versions["20231114_22:13"].items;
    assert!(
        items.contains_key("lxd.tar.xz") && items.contains_key("incus.tar.xz") && items.contains_key("root.tar.xz")
    );
    assert_eq!(items["lxd.tar.xz"].combined_rootxz_sha256, split_fp);
    // Giving an alias to another product takes it from the first.
    let (again, again_fp) = tiny_image(dir.path(), 1_700_000_200, true, "c");
    let mut n = NewImage::new(again, &["tiny"]);
    n.release = Some("2".into());
    write_tree(&root, &[n]).unwrap();
    let c = read_tree(&root);
    assert_eq!(c.by_alias("tiny", "x86_64").unwrap().fingerprint, again_fp);
    assert_eq!(c.by_alias("tiny/1", "x86_64").unwrap().fingerprint, split_fp);
}

/// A loopback HTTP server for `body`: the first `cut_first` requests are cut after
/// `cut_after` bytes of body; Range requests are honoured. Records each request's Range.
struct Server {
    url: String,
    ranges: Arc<Mutex<Vec<Option<String>>>>,
}

fn serve(body: Vec<u8>, cut_first: usize, cut_after: usize) -> Server {
    serve_files(None, body, cut_first, cut_after)
}

/// [`serve`] of the files under `root` (by request path), 404 for others; `body` when no root.
fn serve_files(root: Option<std::path::PathBuf>, body: Vec<u8>, cut_first: usize, cut_after: usize) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let ranges = Arc::new(Mutex::new(Vec::new()));
    let seen = ranges.clone();
    std::thread::spawn(move || {
        for (n, conn) in listener.incoming().enumerate() {
            let Ok(mut conn) = conn else { return };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut range = None;
            let mut request = String::new();
            let _ = reader.read_line(&mut request);
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("range:") {
                    range = Some(v.trim().to_string());
                }
            }
            seen.lock().unwrap().push(range.clone());
            let body = match &root {
                None => body.clone(),
                Some(root) => {
                    let path = request.split_whitespace().nth(1).unwrap_or("/").trim_start_matches('/');
                    match std::fs::read(root.join(path)) {
                        Ok(b) => b,
                        Err(_) => {
                            let _ = conn
                                .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                            continue;
                        }
                    }
                }
            };
            let start: usize = range
                .as_deref()
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.trim_end_matches('-').parse().ok())
                .unwrap_or(0);
            let part = &body[start.min(body.len())..];
            let head = if range.is_some() {
                format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{}\r\nConnection: close\r\n\r\n",
                    part.len(),
                    body.len() - 1,
                    body.len()
                )
            } else {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    part.len()
                )
            };
            let _ = conn.write_all(head.as_bytes());
            let send = if n < cut_first {
                &part[..cut_after.min(part.len())]
            } else {
                part
            };
            let _ = conn.write_all(send);
            let _ = conn.flush();
            drop(conn);
        }
    });
    Server { url, ranges }
}

fn sha(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[test]
fn an_interrupted_download_resumes_with_range() {
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let srv = serve(body.clone(), 2, 100_000);
    let client = Client::new(&srv.url, ClientOptions::default())
        .unwrap()
        .with_retry_pause(std::time::Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("file");
    let file = RemoteFile {
        ftype: "root.tar.xz".into(),
        path: "f/root.tar.xz".into(),
        sha256: sha(&body),
        size: body.len() as u64,
    };
    let mut last = None;
    client.download(&file, &dest, &mut |p| last = Some(p)).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    assert!(!fetch::partial_path(&dest).exists());
    assert_eq!(last.unwrap().done, body.len() as u64);
    let ranges = srv.ranges.lock().unwrap().clone();
    assert_eq!(
        ranges,
        [None, Some("bytes=100000-".into()), Some("bytes=200000-".into())]
    );
}

#[test]
fn a_bad_checksum_leaves_nothing() {
    let body = b"not what was announced".to_vec();
    let srv = serve(body.clone(), 0, 0);
    let client = Client::new(&srv.url, ClientOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("file");
    let file = RemoteFile {
        ftype: "squashfs".into(),
        path: "x".into(),
        sha256: sha(b"something else"),
        size: body.len() as u64,
    };
    let e = client.download(&file, &dest, &mut |_| {}).unwrap_err();
    assert!(matches!(e, Error::Checksum { .. }), "{e}");
    assert!(e.to_string().contains("checksum mismatch"), "{e}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn an_unreachable_server_says_where() {
    // A port nothing listens on: bound, then closed.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    let e = Client::new(&url, ClientOptions::default())
        .unwrap()
        .index()
        .unwrap_err();
    assert!(matches!(e, Error::Unreachable { .. }), "{e}");
    assert!(e.to_string().contains(&format!("{url}/streams/v1/index.json")), "{e}");
    assert!(Client::new("ftp://x", ClientOptions::default()).is_err());
}

#[test]
fn a_written_tree_served_over_http_gives_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let (img, fp) = tiny_image(dir.path(), 1_700_000_000, true, "d");
    let root = dir.path().join("tree");
    write_tree(&root, &[NewImage::new(img, &["tiny"])]).unwrap();
    let srv = serve_files(Some(root), Vec::new(), 0, 0);
    let client = Client::new(&format!("{}/", srv.url), ClientOptions::default()).unwrap();
    assert_eq!(client.server(), srv.url);
    let catalog = client.catalog().unwrap();
    let remote = catalog.find(Some("tiny"), None, "x86_64").unwrap();
    assert_eq!(remote.fingerprint, fp);
    let (m, r) = (dir.path().join("m"), dir.path().join("r"));
    client.download(&remote.files[0], &m, &mut |_| {}).unwrap();
    client.download(&remote.files[1], &r, &mut |_| {}).unwrap();
    corral_image::verify(&corral_image::ImageFiles::split(m, r), &fp).unwrap();
    // A missing file is the server's 404, not a transfer error.
    let mut missing = remote.files[0].clone();
    missing.path = "images/nothing".into();
    let e = client
        .download(&missing, &dir.path().join("n"), &mut |_| {})
        .unwrap_err();
    assert!(matches!(e, Error::Http { status: 404, .. }), "{e}");
}

#[test]
fn paths_must_stay_relative() {
    assert!(safe_relative("images/a/b.tar.xz"));
    for bad in ["", "/etc/passwd", "a/../b", "a//b", "./a", "a\\b"] {
        assert!(!safe_relative(bad), "{bad}");
    }
}

#[test]
fn chained_downloads_make_the_fingerprint_of_their_files_in_order() {
    let (meta, rootfs) = (
        vec![7u8; 5_000],
        (0..300_000u32).map(|i| (i % 251) as u8).collect::<Vec<u8>>(),
    );
    // The second file is cut once and resumed: its first part is hashed from the file.
    let (srv1, srv2) = (serve(meta.clone(), 0, 0), serve(rootfs.clone(), 1, 120_000));
    let dir = tempfile::tempdir().unwrap();
    let mut chain = crate::Fingerprint::new();
    for (srv, body, name) in [(&srv1, &meta, "m"), (&srv2, &rootfs, "r")] {
        let client = Client::new(&srv.url, ClientOptions::default())
            .unwrap()
            .with_retry_pause(std::time::Duration::ZERO);
        let file = RemoteFile {
            ftype: "root.tar.xz".into(),
            path: "f/x".into(),
            sha256: sha(body),
            size: body.len() as u64,
        };
        client
            .download_chained(&file, &dir.path().join(name), &mut |_| {}, &mut chain)
            .unwrap();
    }
    assert_eq!(chain.hex(), sha(&[meta, rootfs].concat()));
    // A file refused (bad sum) adds nothing to the chain.
    let before = chain.hex();
    let srv = serve(b"other".to_vec(), 0, 0);
    let client = Client::new(&srv.url, ClientOptions::default()).unwrap();
    let file = RemoteFile {
        ftype: "root.tar.xz".into(),
        path: "y".into(),
        sha256: sha(b"something else"),
        size: 5,
    };
    assert!(client
        .download_chained(&file, &dir.path().join("y"), &mut |_| {}, &mut chain)
        .is_err());
    assert_eq!(chain.hex(), before);
}
