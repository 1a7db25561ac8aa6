//! System tests of `corral image import` of an unpacked image directory (packed by the CLI as
//! it is sent) and of a URL (downloaded by the daemon, LXD's `source.type=url`, from a small
//! Python server the test runs on 127.0.0.1 inside the daemon's own network namespace).
//! Refusals (404, not an image, a bad hash, another server) leave nothing in the store.
//! Root only.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sha2::{Digest, Sha256};
use support::*;

const PORT: u16 = 8811;

/// Serves files of a directory; a path listed in the routes file (JSON: path → headers) is
/// answered 200 with those headers and a short body instead, as an LXD image URL is.
const SERVER: &str = r#"
import http.server, json, os, sys
root, port, routes = sys.argv[1], int(sys.argv[2]), json.load(open(sys.argv[3]))
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        path = self.path.split("?")[0]
        if path in routes:
            body = b"see the headers\n"
            self.send_response(200)
            for k, v in routes[path].items():
                self.send_header(k, v)
        else:
            try:
                body = open(os.path.join(root, path.lstrip("/")), "rb").read()
                self.send_response(200)
            except OSError:
                body = b"not found\n"
                self.send_response(404)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
"#;

struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(d: &TestDaemon, root: &Path, routes: &serde_json::Value) -> Server {
        let script = root.join("server.py");
        std::fs::write(&script, SERVER).unwrap();
        let routes_file = root.join("routes.json");
        std::fs::write(&routes_file, routes.to_string()).unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", d.netns))
            .arg("python3")
            .arg(&script)
            .arg(root)
            .arg(PORT.to_string())
            .arg(&routes_file)
            .stdin(Stdio::null())
            .spawn()
            .expect("run the image server");
        let url = format!("http://127.0.0.1:{PORT}");
        let probe = format!("{url}/server.py");
        let up = wait_for(Duration::from_secs(20), || {
            d.in_netns(&["curl", "-sf", "-o", "/dev/null", &probe])
                .status
                .success()
                .then_some(())
        });
        assert!(up.is_some(), "the image server did not come up");
        Server { child, url }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn have_python(test: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import http.server"])
        .output()
        .is_ok_and(|o| o.status.success());
    ok || !skip(test, "needs python3 (the test image server)")
}

fn sha256_file(path: &Path) -> String {
    hex(&Sha256::digest(std::fs::read(path).unwrap()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What the store holds: image records, and files in the image and download directories.
fn store(d: &TestDaemon) -> (usize, Vec<String>) {
    let files = ["tmp/remote", "images"]
        .iter()
        .flat_map(|sub| std::fs::read_dir(d.dir.join(sub)).into_iter().flatten().flatten())
        .map(|e| e.path().display().to_string())
        .collect();
    (d.get("/1.0/images").as_array().unwrap().len(), files)
}

fn fingerprint_of(out: &str) -> String {
    out.trim()
        .rsplit(' ')
        .next()
        .expect("a fingerprint on the last line")
        .to_string()
}

/// An unpacked image directory: metadata.yaml with a hostname template, templates/, and
/// rootfs/ a symbolic link to the read-only cached busybox rootfs (only read).
fn image_dir(rootfs: &Path) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("corral-imgdir-{}", unique("dir")));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("templates")).unwrap();
    std::fs::write(
        dir.join("metadata.yaml"),
        format!(
            "architecture: {}\ncreation_date: 1700000000\nproperties:\n  os: BusyBox\n  description: from a directory\n\
             templates:\n  /etc/hostname:\n    when:\n    - create\n    template: hostname.tpl\n",
            corral_image::host_architecture()
        ),
    )
    .unwrap();
    std::fs::write(dir.join("templates/hostname.tpl"), "dir-{{ container.name }}\n").unwrap();
    std::os::unix::fs::symlink(rootfs, dir.join("rootfs")).unwrap();
    dir
}

#[test]
fn a_directory_is_packed_and_imported() {
    let test = "a_directory_is_packed_and_imported";
    let Some(rootfs) = require(test, "busybox") else { return };
    let dir = image_dir(&rootfs);
    let d = TestDaemon::start("imp-dir");
    let out = d.corral_ok(&[
        "image",
        "import",
        dir.to_str().unwrap(),
        "--alias",
        "fromdir",
        "release=x y",
    ]);
    let fp = fingerprint_of(&out);
    // The fingerprint is the sha256 of the tarball the directory packs into, every time.
    let mut again = Vec::new();
    let local = corral_image::pack_directory(&dir, &mut again, corral_image::Compression::Zstd).unwrap();
    assert_eq!(local, fp);
    assert_eq!(hex(&Sha256::digest(&again)), fp);
    let image = d.get(&format!("/1.0/images/{fp}"));
    assert_eq!(image["properties"]["description"], "from a directory", "{image}");
    assert_eq!(image["properties"]["release"], "x y", "{image}");
    assert_eq!(image["aliases"][0]["name"], "fromdir", "{image}");
    // The image's own files are what was sent: the same fingerprint read back.
    let export = std::env::temp_dir().join(format!("corral-imgdir-export-{}", unique("x")));
    std::fs::create_dir_all(&export).unwrap();
    d.corral_ok(&["image", "export", "fromdir", export.to_str().unwrap()]);
    let exported: Vec<_> = std::fs::read_dir(&export).unwrap().flatten().collect();
    assert_eq!(exported.len(), 1);
    assert_eq!(sha256_file(&exported[0].path()), fp);
    // Templates came along: the hostname is rendered from the directory's template.
    let c = unique("dir");
    d.launch(&c, "fromdir");
    let (code, hostname) = d.sh(&c, "cat /etc/hostname");
    assert_eq!((code, hostname.trim()), (0, format!("dir-{c}").as_str()));

    // Not an image directory: a clear error, nothing kept.
    let (before, _) = store(&d);
    std::fs::remove_file(dir.join("metadata.yaml")).unwrap();
    let out = d.corral(&["image", "import", dir.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("metadata.yaml") && err.contains("not an image directory"),
        "{err}"
    );
    assert_eq!(store(&d).0, before);
    let uploads: Vec<_> = std::fs::read_dir(d.dir.join("tmp"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("upload-"))
        .collect();
    assert!(uploads.is_empty(), "{uploads:?}");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&export);
}

#[test]
fn a_url_is_downloaded_by_the_daemon() {
    let test = "a_url_is_downloaded_by_the_daemon";
    let Some(image) = busybox_image(test) else { return };
    if !have_python(test) {
        return;
    }
    let fp = sha256_file(&image);
    let root = std::env::temp_dir().join(format!("corral-imgurl-{}", unique("root")));
    std::fs::create_dir_all(root.join("files")).unwrap();
    std::fs::copy(&image, root.join("files/busybox.tar.gz")).unwrap();
    std::fs::write(root.join("files/notes.txt"), "not an image\n").unwrap();
    let not_image_hash = sha256_file(&root.join("files/notes.txt"));
    let routes = serde_json::json!({
        "/busybox": {"LXD-Image-URL": "/files/busybox.tar.gz", "LXD-Image-Hash": fp},
        "/incus/busybox": {"Incus-Image-URL": "http://127.0.0.1:8811/files/busybox.tar.gz", "Incus-Image-Hash": fp},
        "/badhash": {"LXD-Image-URL": "files/busybox.tar.gz", "LXD-Image-Hash": "ab".repeat(32)},
        "/elsewhere": {"LXD-Image-URL": "http://127.0.0.2:8811/files/busybox.tar.gz", "LXD-Image-Hash": fp},
        "/nohash": {"LXD-Image-URL": "files/busybox.tar.gz"},
        "/notimage": {"LXD-Image-URL": "files/notes.txt", "LXD-Image-Hash": not_image_hash},
    });
    let d = TestDaemon::start("imp-url");
    let srv = Server::start(&d, &root, &routes);

    // The headers name the file and its hash: downloaded, checked, imported with its aliases.
    let url = format!("{}/busybox", srv.url);
    let out = d.corral_ok(&["image", "import", &url, "--alias", "fromurl", "--public", "flavour=url"]);
    assert_eq!(fingerprint_of(&out), fp);
    let img = d.get(&format!("/1.0/images/{fp}"));
    assert_eq!(img["public"], true, "{img}");
    assert_eq!(img["properties"]["flavour"], "url", "{img}");
    assert_eq!(img["aliases"][0]["name"], "fromurl", "{img}");
    assert_eq!(img["filename"], "busybox.tar.gz", "{img}");
    let (n, files) = store(&d);
    assert_eq!(n, 1);
    assert!(!files.iter().any(|f| f.contains("tmp/remote/")), "{files:?}");
    d.corral_ok(&["image", "delete", "fromurl"]);

    // Incus' headers, an absolute URL on the same server; then the image file itself (no headers) through the API.
    let out = d.corral_ok(&["image", "import", &format!("{}/incus/busybox", srv.url)]);
    assert_eq!(fingerprint_of(&out), fp);
    d.corral_ok(&["image", "delete", &fp]);
    let op = d.op_ok(
        "POST",
        "/1.0/images",
        &format!(
            r#"{{"source":{{"type":"url","url":"{}/files/busybox.tar.gz"}}}}"#,
            srv.url
        ),
    );
    assert_eq!(op["metadata"]["fingerprint"], fp.as_str(), "{op}");
    d.corral_ok(&["image", "delete", &fp]);

    // Refusals: each says what is wrong, and the store is left as it was (empty).
    for (path, want) in [
        ("/missing", "answered HTTP 404"),
        ("/files/missing.tar.gz", "answered HTTP 404"),
        ("/badhash", "checksum mismatch"),
        ("/elsewhere", "on another server"),
        ("/nohash", "without its sha256"),
        ("/notimage", "Invalid image"),
        ("/files/notes.txt", "Invalid image"),
    ] {
        let out = d.corral(&["image", "import", &format!("{}{path}", srv.url), "--alias", "bad"]);
        assert!(!out.status.success(), "{path}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{path}: {err}");
        let (n, files) = store(&d);
        assert_eq!((n, files.len()), (0, 0), "{path}: {files:?}");
    }
    d.refused(
        "POST",
        "/1.0/images",
        Some(r#"{"source":{"type":"url","url":"ftp://127.0.0.1/x"}}"#),
        400,
        "must start with https:// or http://",
    );
    drop(srv);
    let _ = std::fs::remove_dir_all(&root);
}
