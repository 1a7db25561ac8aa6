//! System tests of images and instance metadata through a real corrald: split and unified
//! uploads (raw and multipart, as LXD's client sends them), fingerprint checks, edits with
//! ETags, exports, aliases, and the instance's metadata.yaml and templates; then the same
//! through the real `lxc` client. Root only.

mod support;

use std::path::Path;
use std::process::Command;

use corrald::storage::SMALL_IMAGE_SPARES;
use serde_json::Value;
use support::*;

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

fn sha256_bytes(bytes: &[u8]) -> String {
    let tmp = std::env::temp_dir().join(format!("corral-sha-{}", unique("b")));
    std::fs::write(&tmp, bytes).unwrap();
    let sum = sha256(&tmp);
    let _ = std::fs::remove_file(&tmp);
    sum
}

/// A multipart upload with curl -F, parts in the order given; the operation's answer.
fn multipart(d: &TestDaemon, parts: &[(&str, &Path)], headers: &[&str]) -> Answer {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-i", "--unix-socket"])
        .arg(d.socket())
        .args(["-X", "POST"]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    for (name, file) in parts {
        cmd.arg("-F").arg(format!("{name}=@{}", file.display()));
    }
    let out = cmd.arg("http://corral/1.0/images").output().unwrap();
    let raw = out.stdout;
    // The final head (after a possible 100 Continue).
    let text_end = raw
        .windows(4)
        .enumerate()
        .filter(|(_, w)| *w == b"\r\n\r\n")
        .map(|(i, _)| i)
        .collect::<Vec<_>>();
    let body_at = *text_end.last().unwrap() + 4;
    let head = String::from_utf8_lossy(&raw[..body_at]).into_owned();
    let code = head
        .lines()
        .rev()
        .find(|l| l.starts_with("HTTP/"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Answer {
        code,
        headers: Vec::new(),
        body: raw[body_at..].to_vec(),
    }
}

/// The files left in the daemon's temporary directory.
fn leftovers(d: &TestDaemon) -> Vec<String> {
    std::fs::read_dir(d.dir.join("tmp"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The parts of a multipart body: (headers, contents).
fn parts(content_type: &str, body: &[u8]) -> Vec<(String, Vec<u8>)> {
    let boundary = content_type
        .split("boundary=")
        .nth(1)
        .expect("a boundary")
        .trim_matches('"');
    let delim = format!("--{boundary}").into_bytes();
    let mut out = Vec::new();
    let mut positions = Vec::new();
    let mut i = 0;
    while i + delim.len() <= body.len() {
        if body[i..].starts_with(&delim) {
            positions.push(i);
            i += delim.len();
        } else {
            i += 1;
        }
    }
    for w in positions.windows(2) {
        let part = &body[w[0] + delim.len() + 2..w[1] - 2];
        let split = part.windows(4).position(|x| x == b"\r\n\r\n").unwrap();
        out.push((
            String::from_utf8_lossy(&part[..split]).into_owned(),
            part[split + 4..].to_vec(),
        ));
    }
    out
}

#[test]
fn images_upload_edit_export_and_alias_as_lxd_does() {
    let test = "images_upload_edit_export_and_alias_as_lxd_does";
    if skip_unless_root(test) {
        return;
    }
    let Some((meta, rootfs, split_fp)) = busybox_split_image(test) else {
        return;
    };
    let Some(unified) = busybox_image(test) else { return };
    let d = TestDaemon::start("images");

    // A split image whose announced fingerprint is wrong is refused, and nothing is kept.
    let bad = format!("X-LXD-fingerprint: {}", "0".repeat(64));
    let op = d.wait(&multipart(&d, &[("metadata", &meta), ("rootfs", &rootfs)], &[&bad]));
    assert_eq!(op["status"], "Failure", "{op}");
    assert!(op["err"].as_str().unwrap().contains("Fingerprint mismatch"), "{op}");
    assert_eq!(d.get("/1.0/images"), serde_json::json!([]));
    assert!(leftovers(&d).is_empty(), "{:?}", leftovers(&d));

    // A virtual-machine rootfs and unknown parts are refused up front, naming the problem.
    let a = multipart(&d, &[("metadata", &meta), ("rootfs.img", &rootfs)], &[]);
    assert_eq!(a.code, 400);
    assert!(
        a.error().contains("virtual-machine images are not supported"),
        "{}",
        a.error()
    );
    let a = multipart(&d, &[("metadata", &meta), ("kernel", &rootfs)], &[]);
    assert_eq!(a.code, 400);
    assert!(a.error().contains("unexpected part \"kernel\""), "{}", a.error());
    assert!(leftovers(&d).is_empty(), "{:?}", leftovers(&d));

    // The right fingerprint: imported with LXD's split fingerprint, properties from the header.
    let good = format!("X-LXD-fingerprint: {split_fp}");
    let op = d.wait(&multipart(
        &d,
        &[("metadata", &meta), ("rootfs", &rootfs)],
        &[&good, "X-LXD-properties: release=test&serial=42", "X-LXD-public: true"],
    ));
    assert_eq!(op["status"], "Success", "{op}");
    assert_eq!(op["metadata"]["fingerprint"], split_fp.as_str());
    let img = d.get(&format!("/1.0/images/{split_fp}"));
    assert_eq!(img["properties"]["os"], "BusyBox");
    assert_eq!(img["properties"]["serial"], "42");
    assert_eq!(img["public"], true);
    let unified_fp = d.import(&unified, "bb");

    // Edits: the ETag guards PUT and PATCH; PATCH merges properties.
    let a = d.call("GET", &format!("/1.0/images/{split_fp}"), &[], Body::None);
    let etag = a.header("etag").expect("an ETag").to_string();
    let url = format!("/1.0/images/{split_fp}");
    let stale = d.call(
        "PUT",
        &url,
        &["If-Match: \"1\""],
        Body::Json(r#"{"public":false,"properties":{"os":"Other"}}"#),
    );
    assert_eq!(stale.code, 412, "{}", stale.error());
    let put = format!("If-Match: {etag}");
    let a = d.call(
        "PUT",
        &url,
        &[&put],
        Body::Json(r#"{"public":false,"auto_update":false,"properties":{"os":"BusyBox","release":"one"}}"#),
    );
    assert_eq!(a.code, 200, "{}", a.error());
    let a = d.call("PATCH", &url, &[&put], Body::Json(r#"{"properties":{"variant":"x"}}"#));
    assert_eq!(a.code, 412, "the old ETag must no longer match: {}", a.error());
    d.ok("PATCH", &url, r#"{"properties":{"variant":"x"}}"#, 200);
    let img = d.get(&url);
    assert_eq!(img["public"], false);
    assert_eq!(
        img["properties"],
        serde_json::json!({"os":"BusyBox","release":"one","variant":"x"})
    );
    d.refused("PUT", "/1.0/images/ffff", Some("{}"), 404, "Image not found");

    // Exports give back exactly what was imported: a split image as two multipart parts.
    let a = d.call("GET", &format!("/1.0/images/{split_fp}/export"), &[], Body::None);
    assert_eq!(a.code, 200);
    let ctype = a.header("content-type").unwrap().to_string();
    assert!(ctype.starts_with("multipart/form-data"), "{ctype}");
    let got = parts(&ctype, &a.body);
    assert_eq!(got.len(), 2);
    assert!(got[0].0.contains("name=\"metadata\""), "{}", got[0].0);
    assert!(got[1].0.contains("name=\"rootfs\""), "{}", got[1].0);
    assert_eq!(sha256_bytes(&got[0].1), sha256(&meta));
    assert_eq!(sha256_bytes(&got[1].1), sha256(&rootfs));
    let a = d.call("GET", &format!("/1.0/images/{unified_fp}/export"), &[], Body::None);
    assert_eq!(sha256_bytes(&a.body), sha256(&unified));
    assert_eq!(sha256(&unified), unified_fp);

    // Aliases: create, retarget under an ETag, describe, rename, refuse clashes, delete.
    d.ok(
        "POST",
        "/1.0/images/aliases",
        &format!(r#"{{"name":"split","target":"{split_fp}"}}"#),
        200,
    );
    d.refused(
        "POST",
        "/1.0/images/aliases",
        Some(&format!(r#"{{"name":"split","target":"{split_fp}"}}"#)),
        409,
        "already exists",
    );
    d.refused(
        "POST",
        "/1.0/images/aliases",
        Some(r#"{"name":"bad name","target":"x"}"#),
        400,
        "invalid alias name",
    );
    let a = d.call("GET", "/1.0/images/aliases/split", &[], Body::None);
    let etag = format!("If-Match: {}", a.header("etag").expect("an alias ETag"));
    let retarget = format!(r#"{{"target":"{unified_fp}","description":"now unified"}}"#);
    let a = d.call(
        "PUT",
        "/1.0/images/aliases/split",
        &["If-Match: \"7\""],
        Body::Json(&retarget),
    );
    assert_eq!(a.code, 412);
    let a = d.call("PUT", "/1.0/images/aliases/split", &[&etag], Body::Json(&retarget));
    assert_eq!(a.code, 200, "{}", a.error());
    d.ok(
        "PATCH",
        "/1.0/images/aliases/split",
        r#"{"description":"patched"}"#,
        200,
    );
    let alias = d.get("/1.0/images/aliases/split");
    assert_eq!(
        (alias["target"].as_str(), alias["description"].as_str()),
        (Some(unified_fp.as_str()), Some("patched"))
    );
    d.refused(
        "POST",
        "/1.0/images/aliases/split",
        Some(r#"{"name":"bb"}"#),
        409,
        "already exists",
    );
    d.ok("POST", "/1.0/images/aliases/split", r#"{"name":"debian/12"}"#, 200);
    assert_eq!(d.get("/1.0/images/aliases/debian%2F12")["target"], unified_fp.as_str());
    d.refused("GET", "/1.0/images/aliases/split", None, 404, "Image alias not found");
    d.ok("DELETE", "/1.0/images/aliases/debian%2F12", "", 200);

    // Deleting an image takes its aliases and files.
    d.op_ok("DELETE", &format!("/1.0/images/{unified_fp}"), "");
    assert_eq!(d.get("/1.0/images/aliases"), serde_json::json!([]));
    assert!(leftovers(&d).is_empty(), "{:?}", leftovers(&d));
}

#[test]
fn instance_metadata_and_templates_drive_what_is_written_inside() {
    let test = "instance_metadata_and_templates_drive_what_is_written_inside";
    if skip_unless_root(test) {
        return;
    }
    let Some((meta, rootfs, _)) = busybox_split_image(test) else {
        return;
    };
    let d = TestDaemon::start("metadata");
    let op = d.wait(&multipart(
        &d,
        &[("metadata", &meta), ("rootfs", &rootfs)],
        &["X-LXD-aliases: split"],
    ));
    assert_eq!(op["status"], "Success", "{op}");
    let name = unique("md");
    d.op_ok(
        "POST",
        "/1.0/instances",
        &format!(r#"{{"name":"{name}","source":{{"type":"image","alias":"split"}}}}"#),
    );
    let root = d.dir.join(format!("storage-pools/default/containers/{name}/rootfs"));
    // The image's create template ran.
    assert_eq!(
        std::fs::read_to_string(root.join("etc/hostname")).unwrap(),
        format!("{name}\n")
    );

    let url = format!("/1.0/instances/{name}/metadata");
    let md = d.get(&url);
    assert_eq!(md["templates"]["/etc/hostname"]["template"], "hostname.tpl");
    assert_eq!(md["properties"]["os"], "BusyBox");
    let tpl = format!("{url}/templates");
    assert_eq!(d.get(&tpl), serde_json::json!(["hostname.tpl"]));
    let a = d.call("GET", &format!("{tpl}?path=hostname.tpl"), &[], Body::None);
    assert_eq!((a.code, a.body.as_slice()), (200, b"{{ container.name }}\n".as_slice()));

    // A new template, rendered on start, only if the file is missing.
    let a = d.call(
        "POST",
        &format!("{tpl}?path=motd.tpl"),
        &[],
        Body::Bytes(b"hello {{ instance.name }}\n"),
    );
    assert_eq!(a.code, 200, "{}", a.error());
    let a = d.call("GET", &url, &[], Body::None);
    let etag = a.header("etag").expect("a metadata ETag").to_string();
    let mut md = a.json()["metadata"].clone();
    md["templates"]["/etc/motd"] = serde_json::json!({"when":["start"],"template":"motd.tpl","create_only":true});
    md["templates"]["/etc/issue"] = serde_json::json!({"when":["start"],"template":"motd.tpl"});
    let body = md.to_string();
    let stale = d.call("PUT", &url, &["If-Match: \"0\""], Body::Json(&body));
    assert_eq!(stale.code, 412);
    let a = d.call("PUT", &url, &[&format!("If-Match: {etag}")], Body::Json(&body));
    assert_eq!(a.code, 200, "{}", a.error());
    std::fs::write(root.join("etc/motd"), "kept\n").unwrap();
    d.op_ok(
        "PUT",
        &format!("/1.0/instances/{name}/state"),
        r#"{"action":"start","timeout":30}"#,
    );
    assert_eq!(
        std::fs::read_to_string(root.join("etc/issue")).unwrap(),
        format!("hello {name}\n")
    );
    assert_eq!(std::fs::read_to_string(root.join("etc/motd")).unwrap(), "kept\n");

    // Bad metadata and template names are refused, saying why; nothing changes.
    let mut bad = d.get(&url);
    bad["templates"]["/etc/x"] = serde_json::json!({"when":["boot"],"template":"motd.tpl"});
    d.refused("PUT", &url, Some(&bad.to_string()), 400, "unknown trigger \"boot\"");
    let mut bad = d.get(&url);
    bad["templates"]["../etc/x"] = serde_json::json!({"when":["start"],"template":"motd.tpl"});
    d.refused("PUT", &url, Some(&bad.to_string()), 400, "must be an absolute path");
    d.refused(
        "GET",
        &format!("{tpl}?path=../metadata.yaml"),
        None,
        400,
        "invalid template name",
    );
    d.refused("POST", &tpl, Some("x"), 400, "missing `path`");
    d.refused(
        "DELETE",
        &format!("{tpl}?path=nope.tpl"),
        None,
        404,
        "Template not found",
    );
    let stale = d.call(
        "PATCH",
        &url,
        &["If-Match: \"0\""],
        Body::Json(r#"{"properties":{"os":"Stale"}}"#),
    );
    assert_eq!(stale.code, 412, "{}", stale.error());
    d.ok("PATCH", &url, r#"{"properties":{"os":"Patched"}}"#, 200);
    let md: Value = d.get(&url);
    assert_eq!(md["properties"]["os"], "Patched");
    assert!(md["templates"]["/etc/issue"].is_object(), "PATCH keeps the rest: {md}");
    d.ok("DELETE", &format!("{tpl}?path=motd.tpl"), "", 200);
    assert_eq!(d.get(&tpl), serde_json::json!(["hostname.tpl"]));
    d.refused("GET", "/1.0/instances/nope/metadata", None, 404, "not found");
}

#[test]
fn the_lxc_client_imports_exports_and_edits_images_and_templates() {
    let test = "the_lxc_client_imports_exports_and_edits_images_and_templates";
    if skip_unless_root(test) || skip_unless_lxc(test) {
        return;
    }
    let Some((meta, rootfs, split_fp)) = busybox_split_image(test) else {
        return;
    };
    let d = TestDaemon::start("images-lxc");
    let out = d.lxc_ok(&[
        "image",
        "import",
        meta.to_str().unwrap(),
        rootfs.to_str().unwrap(),
        "--alias",
        "bbsplit",
    ]);
    assert!(out.contains(&split_fp[..12]), "{out}");
    let info = d.lxc_ok(&["image", "info", "bbsplit"]);
    assert!(info.contains(&format!("Fingerprint: {split_fp}")), "{info}");
    d.lxc_ok(&["image", "alias", "rename", "bbsplit", "bb2"]);
    let list = d.lxc_ok(&["image", "alias", "list", "--format", "csv"]);
    assert!(list.starts_with("bb2,"), "{list}");

    let out_dir = std::env::temp_dir().join(unique("lxc-export"));
    std::fs::create_dir_all(&out_dir).unwrap();
    d.lxc_ok(&["image", "export", "bb2", &format!("{}/", out_dir.display())]);
    let mut sums: Vec<String> = std::fs::read_dir(&out_dir)
        .unwrap()
        .flatten()
        .map(|e| sha256(&e.path()))
        .collect();
    sums.sort();
    let mut want = vec![sha256(&meta), sha256(&rootfs)];
    want.sort();
    assert_eq!(sums, want, "lxc image export wrote the two original files");
    let _ = std::fs::remove_dir_all(&out_dir);

    let name = unique("lxct");
    d.lxc_ok(&["init", "bb2", &name]);
    let md = d.lxc_ok(&["config", "metadata", "show", &name]);
    assert!(md.contains("hostname.tpl"), "{md}");
    let list = d.lxc_ok(&["config", "template", "list", &name, "--format", "csv"]);
    assert_eq!(list.trim(), "hostname.tpl");
    let shown = d.lxc_ok(&["config", "template", "show", &name, "hostname.tpl"]);
    assert_eq!(shown.trim(), "{{ container.name }}");
    d.lxc_ok(&["config", "template", "create", &name, "empty.tpl"]);
    let list = d.lxc_ok(&["config", "template", "list", &name, "--format", "csv"]);
    assert_eq!(
        list.split_whitespace().collect::<Vec<_>>(),
        ["empty.tpl", "hostname.tpl"]
    );
    d.lxc_ok(&["config", "template", "delete", &name, "empty.tpl"]);
    d.lxc_ok(&["delete", &name]);
    d.lxc_ok(&["image", "delete", "bb2"]);
    assert_eq!(d.lxc_ok(&["image", "list", "--format", "csv"]).trim(), "");
}

#[test]
fn launches_take_a_ready_copy_and_the_pool_makes_another() {
    let test = "launches_take_a_ready_copy_and_the_pool_makes_another";
    if skip_unless_root(test) {
        return;
    }
    let Some(image) = busybox_image(test) else { return };
    let d = TestDaemon::start("spares");
    let fp = d.import(&image, "bb");
    let spares = d.dir.join("storage-pools/default/spares").join(&fp);
    let ready = |n: usize| {
        wait_for(std::time::Duration::from_secs(30), || {
            let names: Vec<String> = std::fs::read_dir(&spares)
                .map(|rd| {
                    rd.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            (names.iter().filter(|n| !n.starts_with('.')).count() == n).then_some(names)
        })
    };
    // A small image gets several, so that launches back to back each find one.
    let first = ready(SMALL_IMAGE_SPARES).expect("spare copies after the import");
    d.launch("s1", "bb");
    // The launch took a spare (renamed into place) and a new one is made.
    let second = ready(SMALL_IMAGE_SPARES).expect("the spares made up after the launch");
    assert_eq!(
        first.iter().filter(|n| !second.contains(n)).count(),
        1,
        "{first:?} then {second:?}"
    );
    // Three launches in a row take three spares; the pool makes them up again.
    for name in ["s2", "s3", "s4"] {
        d.launch(name, "bb");
    }
    let third = ready(SMALL_IMAGE_SPARES).expect("the spares made up after three launches");
    assert_ne!(second, third);
    for name in ["s2", "s3", "s4"] {
        d.op_ok(
            "PUT",
            &format!("/1.0/instances/{name}/state"),
            r#"{"action":"stop","force":true}"#,
        );
        d.op_ok("DELETE", &format!("/1.0/instances/{name}"), "");
    }
    let rootfs = d.dir.join("storage-pools/default/containers/s1/rootfs");
    assert!(rootfs.join("bin/busybox").is_file());
    let out = d.op_ok(
        "POST",
        "/1.0/instances/s1/exec",
        r#"{"command":["sh","-c","test \"$(hostname)\" = s1"],"wait-for-websocket":false}"#,
    );
    assert_eq!(out["metadata"]["return"], 0, "{out}");
    // Deleting the image takes its spare along.
    d.op_ok("PUT", "/1.0/instances/s1/state", r#"{"action":"stop","force":true}"#);
    d.op_ok("DELETE", "/1.0/instances/s1", "");
    d.op_ok("DELETE", &format!("/1.0/images/{fp}"), "");
    assert!(!spares.exists(), "the spare outlived its image");
}
