//! Every object the API serves carries an ETag, and every writable one refuses a stale
//! If-Match with 412 while accepting the current one; collections filter with LXD's `filter`
//! language. Root only.

mod support;

use support::*;

#[test]
fn every_object_has_an_etag_stale_writes_are_refused_and_lists_filter() {
    let test = "every_object_has_an_etag_stale_writes_are_refused_and_lists_filter";
    if skip_unless_root(test) {
        return;
    }
    let Some(image) = busybox_image(test) else { return };
    let d = TestDaemon::start("etags");
    let fp = d.import(&image, "bb");
    let name = unique("et");
    d.op_ok(
        "POST",
        "/1.0/instances",
        &format!(r#"{{"name":"{name}","source":{{"type":"image","alias":"bb"}}}}"#),
    );
    d.op_ok("POST", &format!("/1.0/instances/{name}/snapshots"), r#"{"name":"s1"}"#);

    // Collections filter with LXD's language (URL-encoded as clients send it).
    let enc = |f: &str| f.replace(' ', "%20").replace('"', "%22");
    let by = |f: &str| d.get(&format!("/1.0/instances?filter={}", enc(f)));
    assert_eq!(
        by(&format!("name eq {name} and status eq stopped")),
        serde_json::json!([format!("/1.0/instances/{name}")])
    );
    assert_eq!(by("status eq Running"), serde_json::json!([]));
    assert_eq!(
        by("not status eq Running and expanded_devices.root.pool eq default")
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        d.get(&format!("/1.0/images?filter={}", enc("properties.os eq BusyBox")))
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        d.get(&format!("/1.0/images?filter={}", enc("properties.os ne BusyBox"))),
        serde_json::json!([])
    );
    d.refused(
        "GET",
        &format!("/1.0/instances?filter={}", enc("status gt 1")),
        None,
        400,
        "unknown operator",
    );

    // The `project` parameter: `default` is the only project.
    assert_eq!(d.get("/1.0/instances?project=default").as_array().unwrap().len(), 1);
    d.refused(
        "GET",
        "/1.0/instances?project=other",
        None,
        404,
        "Project not found: other",
    );

    // The pool says what uses it: the image too, once its volume is unpacked there (in the
    // background, after the launch that took the first copy).
    let (inst_url, img_url) = (format!("/1.0/instances/{name}"), format!("/1.0/images/{fp}"));
    let want = vec!["/1.0/profiles/default".to_string(), inst_url.clone(), img_url.clone()];
    let used_by = || -> Vec<String> {
        d.get("/1.0/storage-pools/default")["used_by"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|u| u.as_str().map(String::from))
            .collect()
    };
    let listed = wait_for(std::time::Duration::from_secs(60), || {
        let used = used_by();
        (used == want).then_some(used)
    });
    assert_eq!(listed, Some(want), "{:?}", used_by());

    // Server keys: an empty config is fine, an unknown key is refused by name.
    d.ok("PATCH", "/1.0", r#"{"config":{}}"#, 200);
    d.refused(
        "PUT",
        "/1.0",
        Some(r#"{"config":{"core.no_such_key":"1"}}"#),
        400,
        "unknown server configuration key \"core.no_such_key\"",
    );

    let urls = [
        "/1.0".to_string(),
        format!("/1.0/instances/{name}"),
        format!("/1.0/instances/{name}/snapshots/s1"),
        format!("/1.0/instances/{name}/metadata"),
        "/1.0/profiles/default".to_string(),
        format!("/1.0/images/{fp}"),
        "/1.0/images/aliases/bb".to_string(),
        "/1.0/storage-pools/default".to_string(),
        "/1.0/projects/default".to_string(),
    ];
    for url in &urls {
        let a = d.call("GET", url, &[], Body::None);
        assert_eq!(a.code, 200, "{url}");
        let tag = a.header("etag").unwrap_or_else(|| panic!("{url} has no ETag"));
        assert!(tag.len() > 2 && tag.starts_with('"'), "{url}: {tag}");
        // Stable while nothing changes.
        assert_eq!(d.call("GET", url, &[], Body::None).header("etag"), Some(tag), "{url}");
    }

    // Writable objects: a stale tag is 412 and changes nothing; the current one is accepted.
    let writes: [(String, String); 6] = [
        ("/1.0".into(), r#"{"config":{"core.remote_token_expiry":"1H"}}"#.into()),
        (
            format!("/1.0/instances/{name}"),
            r#"{"config":{"user.a":"1"},"devices":{},"profiles":["default"]}"#.into(),
        ),
        (
            "/1.0/profiles/default".into(),
            r#"{"description":"x","config":{},"devices":{"root":{"type":"disk","path":"/","pool":"default"}}}"#.into(),
        ),
        (
            format!("/1.0/images/{fp}"),
            r#"{"public":true,"properties":{"os":"x"}}"#.into(),
        ),
        (
            "/1.0/images/aliases/bb".into(),
            format!(r#"{{"target":"{fp}","description":"d"}}"#),
        ),
        (
            format!("/1.0/instances/{name}/metadata"),
            r#"{"architecture":"x86_64","properties":{"os":"y"}}"#.into(),
        ),
    ];
    for (url, body) in &writes {
        let before = d.get(url);
        let a = d.call("PUT", url, &["If-Match: \"12345\""], Body::Json(body));
        assert_eq!(a.code, 412, "{url}: {}", a.error());
        assert_eq!(d.get(url), before, "{url}: a refused write changed it");
        let tag = d.call("GET", url, &[], Body::None).header("etag").unwrap().to_string();
        let a = d.call("PUT", url, &[&format!("If-Match: {tag}")], Body::Json(body));
        // Instances answer with an operation, as LXD does; the rest at once.
        if a.code == 202 {
            assert_eq!(d.wait(&a)["status"], "Success", "{url}");
        } else {
            assert_eq!(a.code, 200, "{url}: {}", a.error());
        }
        assert_ne!(
            d.call("GET", url, &[], Body::None).header("etag"),
            Some(tag.as_str()),
            "{url}"
        );
    }

    // A snapshot's expiry (an operation, as LXD answers).
    let url = format!("/1.0/instances/{name}/snapshots/s1");
    let body = r#"{"expires_at":"2031-01-02T03:04:05Z"}"#;
    let a = d.call("PUT", &url, &["If-Match: \"1\""], Body::Json(body));
    assert_eq!(a.code, 412, "{}", a.error());
    let tag = d.call("GET", &url, &[], Body::None).header("etag").unwrap().to_string();
    let op = d.wait(&d.call("PUT", &url, &[&format!("If-Match: {tag}")], Body::Json(body)));
    assert_eq!(op["status"], "Success", "{op}");
    assert!(d.get(&url)["expires_at"]
        .as_str()
        .unwrap()
        .starts_with("2031-01-02T03:04:05"));
}
