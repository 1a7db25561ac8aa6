//! System tests of images from a simplestreams image server: a static tree written by
//! `corral_simplestreams::write_tree` from the busybox test image, served inside the test
//! daemon's own network namespace on 127.0.0.1 by a small Python server (Range support, and a
//! connection cut half-way on request). Launch by alias, the cache on the second launch, a
//! resumed download, bad checksums, and clear refusals. Root only.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::*;

const PORT: u16 = 8801;
const ALIAS: &str = "busybox/test";

/// A static file server with Range support; the first request of a path ending with
/// `cut_path` (when not empty) gets only `cut_after` bytes, then the connection closes.
/// Every request is logged as `GET <path> range=<Range or None>`.
const SERVER: &str = r#"
import http.server, os, socket, sys
root, port, cut_path, cut_after, log = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
state = {"cut": False}
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        rng = self.headers.get("Range")
        with open(log, "a") as f:
            f.write("GET %s range=%s\n" % (self.path, rng))
        path = os.path.join(root, self.path.split("?")[0].lstrip("/"))
        try:
            data = open(path, "rb").read()
        except OSError:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start = 0
        if rng and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", "bytes %d-%d/%d" % (start, len(data) - 1, len(data)))
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if cut_path and self.path.endswith(cut_path) and not state["cut"]:
            state["cut"] = True
            self.wfile.write(body[:cut_after])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(body)
    def log_message(self, *args):
        pass
httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
if len(sys.argv) > 7:
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[6], sys.argv[7])
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
httpd.serve_forever()
"#;

/// The Python server, in the daemon's namespace; killed on drop.
struct Server {
    child: Option<Child>,
    log: PathBuf,
    script: PathBuf,
    url: String,
}

impl Server {
    fn start(d: &TestDaemon, root: &Path, cut: Option<(&str, usize)>) -> Server {
        Server::start_tls(d, root, cut, None)
    }

    /// [`Server::start`] over HTTPS with `tls` (certificate, key, CA) when given.
    fn start_tls(d: &TestDaemon, root: &Path, cut: Option<(&str, usize)>, tls: Option<&TestTls>) -> Server {
        let script = root.with_extension("server.py");
        std::fs::write(&script, SERVER).unwrap();
        let log = root.with_extension("requests.log");
        let _ = std::fs::remove_file(&log);
        let (cut_path, cut_after) = cut.unwrap_or(("", 0));
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", d.netns))
            .arg("python3")
            .arg(&script)
            .arg(root)
            .arg(PORT.to_string())
            .arg(cut_path)
            .arg(cut_after.to_string())
            .arg(&log)
            .args(tls.map(|t| vec![&t.cert, &t.key]).unwrap_or_default())
            .stdin(Stdio::null())
            .spawn()
            .expect("run the image server");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://127.0.0.1:{PORT}");
        let index = format!("{url}/streams/v1/index.json");
        let ca = tls.map(|t| t.ca.display().to_string());
        let up = wait_for(Duration::from_secs(20), || {
            let mut args = vec!["curl", "-sf", "-o", "/dev/null"];
            if let Some(ca) = &ca {
                args.extend(["--cacert", ca.as_str()]);
            }
            args.push(&index);
            d.in_netns(&args).status.success().then_some(())
        });
        assert!(up.is_some(), "the image server did not come up");
        let _ = std::fs::remove_file(&log);
        Server {
            child: Some(child),
            log,
            script,
            url,
        }
    }

    /// The requests served so far.
    fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
            let _ = std::fs::remove_file(&self.script);
        }
    }
}

/// Python 3 (the image server), or a skip.
fn have_python(test: &str) -> bool {
    let ok = Command::new("python3")
        .arg("-c")
        .arg("import http.server")
        .output()
        .is_ok_and(|o| o.status.success());
    ok || !skip(test, "needs python3 (the test image server)")
}

/// A tree with the split busybox image under [`ALIAS`]: (tree, fingerprint, its items).
fn tree(test: &str) -> Option<(PathBuf, String, Vec<Value>)> {
    let (meta, rootfs, fp) = busybox_split_image(test)?;
    if !have_python(test) {
        return None;
    }
    let root = std::env::temp_dir().join(format!("corral-ss-{}", unique("tree")));
    let _ = std::fs::remove_dir_all(&root);
    let img = corral_simplestreams::NewImage::new(corral_image::ImageFiles::split(meta, rootfs), &[ALIAS, "busybox"]);
    let doc = corral_simplestreams::write_tree(&root, &[img]).expect("write the tree");
    let items = doc
        .products
        .values()
        .flat_map(|p| p.versions.values())
        .flat_map(|v| v.items.values())
        .map(|i| serde_json::to_value(i).unwrap())
        .collect();
    Some((root, fp, items))
}

fn rootfs_path(items: &[Value]) -> String {
    items.iter().find(|i| i["ftype"] == "root.tar.xz").unwrap()["path"]
        .as_str()
        .unwrap()
        .to_string()
}

fn source(url: &str, alias: &str) -> String {
    format!(r#"{{"type":"image","mode":"pull","server":"{url}","protocol":"simplestreams","alias":"{alias}"}}"#)
}

/// Files left in the daemon's directory for downloads and in its image store.
fn leftovers(d: &TestDaemon) -> Vec<String> {
    ["tmp/remote", "images"]
        .iter()
        .flat_map(|sub| std::fs::read_dir(d.dir.join(sub)).into_iter().flatten().flatten())
        .map(|e| e.path().display().to_string())
        .collect()
}

#[test]
fn launch_by_alias_then_from_the_cache() {
    let test = "launch_by_alias_then_from_the_cache";
    let Some((root, fp, items)) = tree(test) else { return };
    let d = TestDaemon::start("ss-launch");
    let mut srv = Server::start(&d, &root, None);
    let c1 = unique("ss1");
    let op = d.op_ok(
        "POST",
        "/1.0/instances",
        &format!(r#"{{"name":"{c1}","source":{}}}"#, source(&srv.url, ALIAS)),
    );
    let progress = op["metadata"]["download_progress"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(progress.starts_with("rootfs: 100%"), "{op}");
    let img = d.get(&format!("/1.0/images/{fp}"));
    assert_eq!(img["fingerprint"], fp.as_str());
    assert_eq!(img["cached"], true, "{img}");
    assert_eq!(img["update_source"]["server"], srv.url.as_str(), "{img}");
    assert_eq!(img["update_source"]["protocol"], "simplestreams");
    assert_eq!(img["update_source"]["alias"], ALIAS);
    let inst = d.get(&format!("/1.0/instances/{c1}"));
    assert_eq!(inst["config"]["volatile.base_image"], fp.as_str(), "{inst}");
    let rootfs = rootfs_path(&items);
    assert_eq!(
        srv.requests().iter().filter(|r| r.contains(&rootfs)).count(),
        1,
        "{:?}",
        srv.requests()
    );
    d.op_ok(
        "PUT",
        &format!("/1.0/instances/{c1}/state"),
        r#"{"action":"start","timeout":30}"#,
    );
    let (code, out) = d.sh(&c1, "echo up");
    assert_eq!((code, out.trim()), (0, "up"));
    d.op_ok(
        "PUT",
        &format!("/1.0/instances/{c1}/state"),
        r#"{"action":"stop","force":true}"#,
    );

    // The second launch: from the store, the server gone.
    srv.stop();
    let c2 = unique("ss2");
    d.op_ok(
        "POST",
        "/1.0/instances",
        &format!(r#"{{"name":"{c2}","source":{}}}"#, source(&srv.url, ALIAS)),
    );
    // And by fingerprint too.
    let c3 = unique("ss3");
    let by_fp = format!(
        r#"{{"name":"{c3}","source":{{"type":"image","server":"{}","protocol":"simplestreams","fingerprint":"{fp}"}}}}"#,
        srv.url
    );
    d.op_ok("POST", "/1.0/instances", &by_fp);
    assert_eq!(d.get("/1.0/images").as_array().unwrap().len(), 1);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn an_interrupted_download_resumes() {
    let test = "an_interrupted_download_resumes";
    let Some((root, fp, items)) = tree(test) else { return };
    let rootfs = rootfs_path(&items);
    let size = items.iter().find(|i| i["ftype"] == "root.tar.xz").unwrap()["size"]
        .as_u64()
        .unwrap();
    let d = TestDaemon::start("ss-resume");
    let half = (size / 2) as usize;
    let srv = Server::start(&d, &root, Some((&rootfs, half)));
    // `lxc image copy` sends this: aliases, public, the source.
    let body = format!(
        r#"{{"source":{},"aliases":[{{"name":"bb","description":"from the server"}}],"public":false}}"#,
        source(&srv.url, ALIAS)
    );
    let op = d.op_ok("POST", "/1.0/images", &body);
    assert_eq!(op["metadata"]["fingerprint"], fp.as_str(), "{op}");
    let requests = srv.requests();
    let rootfs_requests: Vec<&String> = requests.iter().filter(|r| r.contains(&rootfs)).collect();
    assert_eq!(rootfs_requests.len(), 2, "{requests:?}");
    assert!(rootfs_requests[0].ends_with("range=None"), "{requests:?}");
    assert!(
        rootfs_requests[1].ends_with(&format!("range=bytes={half}-")),
        "{requests:?}"
    );
    let img = d.get(&format!("/1.0/images/{fp}"));
    assert_eq!(img["cached"], false, "a copied image is not a cache: {img}");
    assert_eq!(img["aliases"][0]["name"], "bb", "{img}");
    assert_eq!(d.get("/1.0/images/aliases/bb")["target"], fp.as_str());
    assert!(
        leftovers(&d).iter().all(|p| !p.contains("tmp/remote/")),
        "{:?}",
        leftovers(&d)
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn bad_checksums_leave_nothing() {
    let test = "bad_checksums_leave_nothing";
    let Some((root, _fp, items)) = tree(test) else { return };
    let d = TestDaemon::start("ss-sum");
    let srv = Server::start(&d, &root, None);
    // A rootfs file that is not the one listed (same size): its sha256 does not match.
    let rootfs = root.join(rootfs_path(&items));
    let mut bytes = std::fs::read(&rootfs).unwrap();
    let good = bytes.clone();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&rootfs, &bytes).unwrap();
    let c = unique("sum");
    let op = d.op(
        "POST",
        "/1.0/instances",
        &format!(r#"{{"name":"{c}","source":{}}}"#, source(&srv.url, ALIAS)),
    );
    assert_eq!(op["status"], "Failure", "{op}");
    assert!(op["err"].as_str().unwrap().contains("checksum mismatch"), "{op}");
    assert_eq!(d.get("/1.0/images").as_array().unwrap().len(), 0);
    assert_eq!(d.get("/1.0/instances").as_array().unwrap().len(), 0);
    assert!(leftovers(&d).is_empty(), "{:?}", leftovers(&d));

    // A server whose file sums match its listing but not the image's fingerprint (the
    // combined hash): refused by the import, nothing kept.
    std::fs::write(&rootfs, &good).unwrap();
    let images_json = root.join("streams/v1/images.json");
    let text = std::fs::read_to_string(&images_json).unwrap();
    let mut doc: Value = serde_json::from_str(&text).unwrap();
    let forged = "ab".repeat(32);
    for product in doc["products"].as_object_mut().unwrap().values_mut() {
        for version in product["versions"].as_object_mut().unwrap().values_mut() {
            for item in version["items"].as_object_mut().unwrap().values_mut() {
                if item.get("combined_rootxz_sha256").is_some() {
                    item["combined_rootxz_sha256"] = Value::from(forged.clone());
                    item["combined_sha256"] = Value::from(forged.clone());
                }
            }
        }
    }
    std::fs::write(&images_json, serde_json::to_vec(&doc).unwrap()).unwrap();
    let op = d.op(
        "POST",
        "/1.0/images",
        &format!(r#"{{"source":{}}}"#, source(&srv.url, ALIAS)),
    );
    assert_eq!(op["status"], "Failure", "{op}");
    let err = op["err"].as_str().unwrap();
    assert!(
        err.contains("failed verification") && err.contains("Fingerprint mismatch"),
        "{op}"
    );
    assert_eq!(d.get("/1.0/images").as_array().unwrap().len(), 0);
    assert!(leftovers(&d).is_empty(), "{:?}", leftovers(&d));
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn clear_refusals() {
    let test = "clear_refusals";
    let Some((root, _fp, _)) = tree(test) else { return };
    let d = TestDaemon::start("ss-refuse");
    // Nothing listens there.
    let body = |src: String| format!(r#"{{"name":"{}","source":{src}}}"#, unique("r"));
    let dead = "http://127.0.0.1:8802";
    d.refused(
        "POST",
        "/1.0/instances",
        Some(&body(source(dead, ALIAS))),
        400,
        &format!("cannot reach the image server at {dead}/streams/v1/index.json"),
    );
    d.refused(
        "POST",
        "/1.0/images",
        Some(&format!(r#"{{"source":{}}}"#, source(dead, ALIAS))),
        400,
        "cannot reach the image server",
    );
    let srv = Server::start(&d, &root, None);
    let unknown = body(source(&srv.url, "debian/12"));
    d.refused(
        "POST",
        "/1.0/instances",
        Some(&unknown),
        404,
        "no image alias \"debian/12\"",
    );
    d.refused("POST", "/1.0/instances", Some(&unknown), 404, ALIAS);
    let lxd = body(format!(
        r#"{{"type":"image","server":"{}","protocol":"lxd","alias":"{ALIAS}"}}"#,
        srv.url
    ));
    d.refused(
        "POST",
        "/1.0/instances",
        Some(&lxd),
        400,
        // An LXD-protocol server is an HTTPS API: not this plain HTTP tree.
        "image server is reached over https://",
    );
    assert_eq!(d.get("/1.0/images").as_array().unwrap().len(), 0);
    assert!(
        srv.requests().iter().all(|r| !r.contains("rootfs")),
        "{:?}",
        srv.requests()
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn refresh_moves_aliases_to_the_new_version() {
    let test = "refresh_moves_aliases_to_the_new_version";
    let Some((root, old_fp, _)) = tree(test) else { return };
    let Some(unified) = busybox_image(test) else { return };
    let d = TestDaemon::start("ss-refresh");
    let srv = Server::start(&d, &root, None);
    let body = format!(
        r#"{{"source":{},"aliases":[{{"name":"bb"}}]}}"#,
        source(&srv.url, ALIAS)
    );
    d.op_ok("POST", "/1.0/images", &body);
    let c = unique("old");
    d.op_ok(
        "POST",
        "/1.0/instances",
        &format!(r#"{{"name":"{c}","source":{{"type":"image","alias":"bb"}}}}"#),
    );
    // Up to date: nothing happens.
    let op = d.op_ok("POST", &format!("/1.0/images/{old_fp}/refresh"), "{}");
    assert_eq!(op["metadata"]["refreshed"], false, "{op}");

    // A newer build of the same product appears on the server.
    let mut newer = corral_simplestreams::NewImage::new(corral_image::ImageFiles::unified(unified), &[ALIAS]);
    newer.serial = Some("20990101_00:00".into());
    corral_simplestreams::write_tree(&root, &[newer]).unwrap();
    let op = d.op_ok("POST", &format!("/1.0/images/{old_fp}/refresh"), "{}");
    assert_eq!(op["metadata"]["refreshed"], true, "{op}");
    let new_fp = op["metadata"]["fingerprint"].as_str().unwrap().to_string();
    assert_ne!(new_fp, old_fp);
    assert_eq!(d.get("/1.0/images/aliases/bb")["target"], new_fp.as_str());
    let (code, _) = d.request("GET", &format!("/1.0/images/{old_fp}"), None);
    assert_eq!(code, 404, "the old image is gone");
    let img = d.get(&format!("/1.0/images/{new_fp}"));
    assert_eq!(img["update_source"]["alias"], ALIAS, "{img}");
    // The instance keeps what it was made from.
    let inst = d.get(&format!("/1.0/instances/{c}"));
    assert_eq!(inst["config"]["volatile.base_image"], old_fp.as_str());
    // An uploaded image has nothing to refresh from.
    let Some(plain) = packed_image(test, "busybox") else {
        return;
    };
    let plain_fp = d.import(&plain, "plain");
    d.refused(
        "POST",
        &format!("/1.0/images/{plain_fp}/refresh"),
        Some("{}"),
        400,
        "has no source to refresh from",
    );
    let _ = std::fs::remove_dir_all(&root);
}

/// `lxc` in the daemon's namespace (where the image server is), with its own configuration.
fn lxc_in_netns(d: &TestDaemon, conf: &Path, ca: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", d.netns))
        .arg("lxc")
        .args(args)
        .env("LXD_DIR", &d.dir)
        .env("LXD_CONF", conf)
        .env("SSL_CERT_FILE", ca)
        .stdin(Stdio::null())
        .output()
        .expect("lxc");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_lxc_client_copies_and_launches_from_a_simplestreams_remote() {
    let test = "the_lxc_client_copies_and_launches_from_a_simplestreams_remote";
    let Some((root, fp, _)) = tree(test) else { return };
    if Command::new("lxc").arg("--version").output().is_err() && skip(test, "needs the lxc client") {
        return;
    }
    if Command::new("openssl").arg("version").output().is_err() && skip(test, "needs openssl") {
        return;
    }
    // `lxc` takes only https simplestreams remotes: a test CA that the daemon and lxc trust
    // through SSL_CERT_FILE (as Go and OpenSSL do).
    let tls = test_ca_and_certificate(&root.with_extension("tls"), "127.0.0.1", "serverAuth");
    let ca = tls.ca.display().to_string();
    let d = TestDaemon::start_with_env("ss-lxc", &[("SSL_CERT_FILE", &ca)]);
    let srv = Server::start_tls(&d, &root, None, Some(&tls));
    let conf = root.with_extension("lxc");
    let lxc = |args: &[&str]| {
        let (ok, out) = lxc_in_netns(&d, &conf, &tls.ca, args);
        assert!(ok, "lxc {args:?}: {out}");
        out
    };
    lxc(&["remote", "add", "ss", &srv.url, "--protocol", "simplestreams"]);
    let listed = lxc(&["image", "list", "ss:", "--format", "csv"]);
    assert!(listed.contains(&fp[..12]), "{listed}");
    lxc(&["image", "copy", &format!("ss:{ALIAS}"), "local:", "--alias", "copied"]);
    assert_eq!(d.get("/1.0/images/aliases/copied")["target"], fp.as_str());
    let c = unique("lxc");
    lxc(&["init", &format!("ss:{ALIAS}"), &c]);
    assert_eq!(
        d.get(&format!("/1.0/instances/{c}"))["config"]["volatile.base_image"],
        fp.as_str()
    );
    let _ = std::fs::remove_dir_all(&conf);
    let _ = std::fs::remove_dir_all(tls.ca.parent().unwrap());
    let _ = std::fs::remove_dir_all(&root);
}

/// The busybox rootfs as a squashfs (made by `mksquashfs`) beside the split image's metadata:
/// (metadata, squashfs, the split image's fingerprint); `None` (and a skip) without
/// squashfs-tools.
fn busybox_squashfs(test: &str, dir: &Path) -> Option<(PathBuf, PathBuf, String)> {
    let (meta, _, _) = busybox_split_image(test)?;
    let rootfs = require(test, "busybox")?;
    let have = |cmd: &str| Command::new(cmd).arg("-version").output().is_ok();
    if !have("mksquashfs") || !have("unsquashfs") {
        skip(test, "needs squashfs-tools (mksquashfs, unsquashfs)");
        return None;
    }
    std::fs::create_dir_all(dir).unwrap();
    let sq = dir.join("root.squashfs");
    let out = Command::new("mksquashfs")
        .arg(&rootfs)
        .arg(&sq)
        .args(["-comp", "xz", "-quiet", "-no-progress", "-noappend"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mksquashfs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fp = corral_image::fingerprint_split(&meta, &sq).unwrap();
    Some((meta, sq, fp))
}

/// A version offering both rootfs kinds, as image servers do: the tarball tree of [`tree`]
/// with a `squashfs` item and the metadata's `combined_squashfs_sha256` added.
fn add_squashfs_item(root: &Path, sq: &Path, sq_fp: &str) {
    let rel = "images/squashfs/root.squashfs";
    std::fs::create_dir_all(root.join("images/squashfs")).unwrap();
    std::fs::copy(sq, root.join(rel)).unwrap();
    let path = root.join(corral_simplestreams::IMAGES_PATH);
    let mut doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let bytes = std::fs::read(sq).unwrap();
    let sha = {
        use sha2::Digest;
        sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    for product in doc["products"].as_object_mut().unwrap().values_mut() {
        for version in product["versions"].as_object_mut().unwrap().values_mut() {
            let items = version["items"].as_object_mut().unwrap();
            for meta in ["lxd.tar.xz", "incus.tar.xz"] {
                items[meta]["combined_squashfs_sha256"] = sq_fp.into();
            }
            items.insert(
                "squashfs".into(),
                serde_json::json!({"ftype": "squashfs", "path": rel, "size": bytes.len(), "sha256": sha}),
            );
        }
    }
    std::fs::write(&path, serde_json::to_vec(&doc).unwrap()).unwrap();
}

#[test]
fn squashfs_images_from_a_server_and_by_split_import() {
    let test = "squashfs_images_from_a_server_and_by_split_import";
    let Some((root, tar_fp, _)) = tree(test) else { return };
    let Some((meta, sq, sq_fp)) = busybox_squashfs(test, &root.with_extension("squashfs")) else {
        return;
    };
    assert_ne!(sq_fp, tar_fp);
    add_squashfs_item(&root, &sq, &sq_fp);
    let d = TestDaemon::start("ss-squashfs");
    let srv = Server::start(&d, &root, None);

    // Both offered: the squashfs one is taken (unsquashfs unpacks on every core).
    let c1 = unique("sq1");
    d.op_ok(
        "POST",
        "/1.0/instances",
        &format!(r#"{{"name":"{c1}","source":{}}}"#, source(&srv.url, ALIAS)),
    );
    let inst = d.get(&format!("/1.0/instances/{c1}"));
    assert_eq!(inst["config"]["volatile.base_image"], sq_fp.as_str(), "{inst}");
    let requests = srv.requests();
    assert!(requests.iter().any(|r| r.contains("root.squashfs")), "{requests:?}");
    assert!(!requests.iter().any(|r| r.contains("rootfs.tar")), "{requests:?}");
    d.op_ok(
        "PUT",
        &format!("/1.0/instances/{c1}/state"),
        r#"{"action":"start","timeout":30}"#,
    );
    let (code, out) = d.sh(&c1, "cat /etc/hostname; ls -ld /bin/busybox | cut -c1-10");
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.lines().collect::<Vec<_>>(), [c1.as_str(), "-rwxr-xr-x"]);
    d.op_ok(
        "PUT",
        &format!("/1.0/instances/{c1}/state"),
        r#"{"action":"stop","force":true}"#,
    );
    d.op_ok("DELETE", &format!("/1.0/instances/{c1}"), "");
    d.op_ok("DELETE", &format!("/1.0/images/{sq_fp}"), "");

    // A split import of metadata and root.squashfs, as `lxc image import meta root.squashfs`.
    let meta_s = meta.display().to_string();
    let sq_s = sq.display().to_string();
    d.corral_ok(&["image", "import", &meta_s, &sq_s, "--alias", "sq"]);
    let img = d.get(&format!("/1.0/images/{sq_fp}"));
    assert_eq!(img["fingerprint"], sq_fp.as_str(), "{img}");
    let c2 = unique("sq2");
    d.launch(&c2, "sq");
    let (code, out) = d.sh(&c2, "cat /etc/hostname");
    assert_eq!((code, out.trim()), (0, c2.as_str()));
    d.op_ok(
        "PUT",
        &format!("/1.0/instances/{c2}/state"),
        r#"{"action":"stop","force":true}"#,
    );

    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_dir_all(root.with_extension("squashfs"));
}

#[test]
fn a_launch_refuses_a_corrupt_archive_whose_sums_match_and_keeps_nothing() {
    let test = "a_launch_refuses_a_corrupt_archive_whose_sums_match_and_keeps_nothing";
    let Some((root, _fp, items)) = tree(test) else { return };
    // The rootfs cut short, and the listing made to match it: sizes, sums and the combined
    // fingerprint all agree, only the archive is broken. A launch checks it by unpacking it.
    let rootfs = root.join(rootfs_path(&items));
    let bytes = std::fs::read(&rootfs).unwrap();
    let cut = &bytes[..bytes.len() * 2 / 3];
    std::fs::write(&rootfs, cut).unwrap();
    let hex = |b: &[u8]| -> String {
        use sha2::Digest;
        sha2::Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect()
    };
    let meta_item = items.iter().find(|i| i["ftype"] == "lxd.tar.xz").unwrap();
    let meta = std::fs::read(root.join(meta_item["path"].as_str().unwrap())).unwrap();
    let combined = hex(&[meta.as_slice(), cut].concat());
    let images_json = root.join("streams/v1/images.json");
    let mut doc: Value = serde_json::from_str(&std::fs::read_to_string(&images_json).unwrap()).unwrap();
    for product in doc["products"].as_object_mut().unwrap().values_mut() {
        for version in product["versions"].as_object_mut().unwrap().values_mut() {
            for item in version["items"].as_object_mut().unwrap().values_mut() {
                if item["ftype"] == "root.tar.xz" {
                    item["sha256"] = Value::from(hex(cut));
                    item["size"] = Value::from(cut.len());
                }
                if item.get("combined_rootxz_sha256").is_some() {
                    item["combined_rootxz_sha256"] = Value::from(combined.clone());
                    item["combined_sha256"] = Value::from(combined.clone());
                }
            }
        }
    }
    std::fs::write(&images_json, serde_json::to_vec(&doc).unwrap()).unwrap();
    let d = TestDaemon::start("ss-cut");
    let srv = Server::start(&d, &root, None);
    let c = unique("cut");
    let op = d.op(
        "POST",
        "/1.0/instances",
        &format!(r#"{{"name":"{c}","source":{}}}"#, source(&srv.url, ALIAS)),
    );
    assert_eq!(op["status"], "Failure", "{op}");
    let err = op["err"].as_str().unwrap();
    assert!(err.contains("Invalid image") && err.contains(&combined), "{op}");
    assert_eq!(d.get("/1.0/images").as_array().unwrap().len(), 0);
    assert_eq!(d.get("/1.0/instances").as_array().unwrap().len(), 0);
    assert!(leftovers(&d).is_empty(), "{:?}", leftovers(&d));
    let pool = d.dir.join("storage-pools/default");
    for sub in ["images", "spares"] {
        let left: Vec<_> = std::fs::read_dir(pool.join(sub))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "{sub}: {left:?}");
    }
    let _ = std::fs::remove_dir_all(&root);
}
