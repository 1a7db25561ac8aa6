//! System tests of `/1.0/profiles`: CRUD through the API with LXD's status codes and messages,
//! ETags, renames that carry the instances along, deletes refused while in use, a limit set on a
//! profile reaching a running container's cgroup (and its /proc/meminfo through lxcfs), and the
//! real `lxc profile ...` and `corral profile ...` clients. Root only; each test has its own
//! daemon and CORRAL_DIR, torn down (containers force-stopped) by a guard even on failure.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::{json, Value};
use support::*;

/// An HTTP answer: status, headers (lower-case names) and the JSON body.
struct Answer {
    code: u16,
    headers: BTreeMap<String, String>,
    body: Value,
}

impl Answer {
    fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or("")
    }

    /// The ETag without its quotes.
    fn etag(&self) -> String {
        self.headers
            .get("etag")
            .map(|t| t.trim_matches('"').to_string())
            .unwrap_or_else(|| panic!("no ETag in {:?}", self.headers))
    }
}

/// A corrald with its own CORRAL_DIR, killed (and its containers force-stopped) on drop.
struct Daemon {
    dir: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    fn start(tag: &str) -> Daemon {
        let dir = std::env::temp_dir().join(format!("corrald-test-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let log = daemon_log(&dir);
        let child = Command::new(corrald())
            .env("CORRAL_DIR", &dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("run corrald");
        let d = Daemon {
            dir,
            child: Some(child),
        };
        let ok = Command::new(corrald())
            .args(["waitready", "--timeout", "20"])
            .env("CORRAL_DIR", &d.dir)
            .status()
            .unwrap();
        assert!(ok.success(), "corrald did not come up");
        d
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("unix.socket")
    }

    /// One HTTP request with curl.
    fn call(&self, method: &str, path: &str, body: Option<&str>, headers: &[&str]) -> Answer {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-i", "--unix-socket"])
            .arg(self.socket())
            .args(["-X", method]);
        for h in headers {
            cmd.args(["-H", h]);
        }
        if let Some(b) = body {
            cmd.args(["-H", "Content-Type: application/json", "-d", b]);
        }
        let out = cmd.arg(format!("http://corral{path}")).output().expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (head, json) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let mut lines = head.lines();
        let code = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Answer {
            code,
            headers,
            body: serde_json::from_str(json).unwrap_or(Value::Null),
        }
    }

    fn get(&self, path: &str) -> Value {
        let a = self.call("GET", path, None, &[]);
        assert_eq!(a.code, 200, "GET {path}: {}", a.body);
        a.body["metadata"].clone()
    }

    /// A request that must succeed with `code`; its metadata.
    fn ok(&self, method: &str, path: &str, body: &str, code: u16) -> Value {
        let a = self.call(method, path, Some(body), &[]);
        assert_eq!(a.code, code, "{method} {path} {body}: {}", a.body);
        a.body["metadata"].clone()
    }

    /// A request that must fail with `code` and an error containing `want`.
    fn refused(&self, method: &str, path: &str, body: Option<&str>, code: u16, want: &str) {
        let a = self.call(method, path, body, &[]);
        assert_eq!(
            (a.code, a.body["type"].as_str(), a.body["error_code"].as_u64()),
            (code, Some("error"), Some(u64::from(code))),
            "{method} {path} {body:?}: {}",
            a.body
        );
        assert!(
            a.error().contains(want),
            "{method} {path} {body:?}: {:?} lacks {want:?}",
            a.error()
        );
    }

    /// Sends a request answered by an operation and waits for it; the operation must succeed.
    fn op(&self, method: &str, path: &str, body: &str) -> Value {
        let a = self.call(method, path, Some(body), &[]);
        assert_eq!(a.code, 202, "{method} {path}: {}", a.body);
        let id = a.body["metadata"]["id"].as_str().unwrap().to_string();
        let op = self.get(&format!("/1.0/operations/{id}/wait?timeout=60"));
        assert_eq!(op["status"], "Success", "{method} {path} {body}: {op}");
        op
    }

    fn import(&self, image: &Path, alias: &str) {
        let out = Command::new("curl")
            .args(["-s", "--unix-socket"])
            .arg(self.socket())
            .args(["-X", "POST", "-H", "Content-Type: application/octet-stream", "-H"])
            .arg(format!("X-LXD-aliases: {alias}"))
            .arg("--data-binary")
            .arg(format!("@{}", image.display()))
            .arg("http://corral/1.0/images")
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let id = v["metadata"]["id"].as_str().unwrap_or_else(|| panic!("import: {v}"));
        let op = self.get(&format!("/1.0/operations/{id}/wait?timeout=60"));
        assert_eq!(op["status"], "Success", "import: {op}");
    }

    /// Creates instance `name` from `image` with `profiles`.
    fn create(&self, name: &str, image: &str, profiles: &[&str]) {
        let body = json!({"name": name, "source": {"type": "image", "alias": image}, "profiles": profiles});
        self.op("POST", "/1.0/instances", &body.to_string());
    }

    fn profiles_of(&self, instance: &str) -> Value {
        self.get(&format!("/1.0/instances/{instance}"))["profiles"].clone()
    }

    /// The monitor of a running instance, for exec without the API.
    fn monitor(&self, instance: &str) -> corral_runtime::client::Client {
        corral_runtime::client::Client::new(&self.dir.join("run").join(instance))
    }

    /// The memory limit of a running instance's cgroup, in bytes (None: unlimited).
    fn memory_limit(&self, instance: &str) -> Option<u64> {
        let name = corrald::paths::Paths::new(&self.dir).cgroup_name(instance);
        for dir in cgroup_dirs(&name) {
            for file in ["memory.limit_in_bytes", "memory.max"] {
                if let Ok(v) = std::fs::read_to_string(dir.join(file)) {
                    let v = v.trim();
                    return match v.parse::<u64>() {
                        // cgroup v1's "unlimited" is the largest page-aligned i64.
                        Ok(n) if n < (1 << 62) => Some(n),
                        _ => None,
                    };
                }
            }
        }
        panic!("no memory cgroup for {instance} ({name})");
    }

    fn cmd(&self, program: &Path, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = Command::new(program)
            .args(args)
            .env("LXD_DIR", &self.dir)
            .env("CORRAL_DIR", &self.dir)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
        if let Some(input) = stdin {
            child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        }
        child.wait_with_output().unwrap()
    }

    fn cmd_ok(&self, program: &Path, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.cmd(program, args, stdin);
        assert!(
            out.status.success(),
            "{} {args:?}: {}{}",
            program.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A command that must fail; its stderr.
    fn cmd_err(&self, program: &Path, args: &[&str]) -> String {
        let out = self.cmd(program, args, None);
        assert!(
            !out.status.success(),
            "{} {args:?} should have failed: {}",
            program.display(),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        tear_down_daemon(&self.dir, self.child.take());
    }
}

fn require_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    skip(test, "needs root");
    false
}

fn lxc_bin(test: &str) -> Option<PathBuf> {
    if Command::new("lxc")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Some(PathBuf::from("lxc"));
    }
    skip(test, "needs the lxc client (apt-get install lxd-client)");
    None
}

/// The `corral` CLI, built into the same target directory as corrald.
fn corral_bin(test: &str) -> Option<PathBuf> {
    let bin = corrald().parent().map(|d| d.join("corral"));
    match bin.filter(|b| b.is_file()) {
        Some(b) => Some(b),
        None => {
            skip(
                test,
                "needs the corral CLI built beside corrald (cargo build --workspace)",
            );
            None
        }
    }
}

#[test]
fn profiles_crud_with_lxd_codes_messages_and_etags() {
    let test = "profiles_crud_with_lxd_codes_messages_and_etags";
    if !require_root(test) {
        return;
    }
    let d = Daemon::start("profiles-crud");

    // Create: 201 and the new profile's Location, as LXD.
    let a = d.call(
        "POST",
        "/1.0/profiles",
        Some(r#"{"name":"p1","description":"first","config":{"user.a":"1","limits.memory":"256MiB"},"devices":{"data":{"type":"none"}}}"#),
        &[],
    );
    assert_eq!(a.code, 201, "{}", a.body);
    assert_eq!(a.body["type"], "sync");
    assert_eq!(a.headers.get("location").map(String::as_str), Some("/1.0/profiles/p1"));
    d.refused(
        "POST",
        "/1.0/profiles",
        Some(r#"{"name":"p1"}"#),
        409,
        "Profile \"p1\" already exists",
    );
    for (body, want) in [
        (r#"{"name":""}"#, "No name provided"),
        (r#"{"config":{}}"#, "No name provided"),
        (r#"{"name":"a/b"}"#, "Profile names may not contain slashes"),
        (r#"{"name":".."}"#, "Invalid profile name \"..\""),
        (r#"{"name":"."}"#, "Invalid profile name \".\""),
        (
            r#"{"name":"p9","config":{"limits.memroy":"1GB"}}"#,
            "unknown configuration key \"limits.memroy\"",
        ),
        (
            r#"{"name":"p9","config":{"limits.memory":"lots"}}"#,
            "invalid value \"lots\" for limits.memory",
        ),
        (r#"{"name":"p9","config":{"volatile.x":"1"}}"#, "volatile.x"),
        ("{not json", "invalid request body"),
    ] {
        d.refused("POST", "/1.0/profiles", Some(body), 400, want);
    }
    d.refused("GET", "/1.0/profiles/p9", None, 404, "Profile not found: p9");

    // Listing, both ways.
    assert_eq!(
        d.get("/1.0/profiles"),
        json!(["/1.0/profiles/default", "/1.0/profiles/p1"])
    );
    let full = d.get("/1.0/profiles?recursion=1");
    assert_eq!(full.as_array().unwrap().len(), 2, "{full}");
    assert_eq!(full[1]["name"], "p1");
    assert_eq!(full[1]["config"]["user.a"], "1");
    assert_eq!(full[1]["used_by"], json!([]));

    // GET one: the profile and its ETag.
    let a = d.call("GET", "/1.0/profiles/p1", None, &[]);
    assert_eq!(a.code, 200);
    let p = &a.body["metadata"];
    assert_eq!(
        (p["name"].as_str(), p["description"].as_str(), p["project"].as_str()),
        (Some("p1"), Some("first"), Some("default"))
    );
    assert_eq!(p["devices"]["data"]["type"], "none");
    let etag = a.etag();

    // PUT with a stale If-Match: 412, nothing changes.
    let stale = format!("If-Match: \"{}\"", etag.parse::<i64>().unwrap() - 1);
    let a = d.call(
        "PUT",
        "/1.0/profiles/p1",
        Some(r#"{"config":{"user.z":"9"}}"#),
        &[stale.as_str()],
    );
    assert_eq!(a.code, 412, "{}", a.body);
    assert!(a.error().contains("ETag doesn't match"), "{}", a.body);
    let a = d.call(
        "PATCH",
        "/1.0/profiles/p1",
        Some(r#"{"config":{"user.z":"9"}}"#),
        &[stale.as_str()],
    );
    assert_eq!(a.code, 412, "{}", a.body);
    assert_eq!(d.get("/1.0/profiles/p1")["config"].get("user.z"), None);
    assert_eq!(d.call("GET", "/1.0/profiles/p1", None, &[]).etag(), etag, "unchanged");

    // PUT with the current ETag replaces everything, and the ETag moves.
    let current = format!("If-Match: \"{etag}\"");
    let a = d.call(
        "PUT",
        "/1.0/profiles/p1",
        Some(r#"{"config":{"user.b":"2"},"description":"second","devices":{}}"#),
        &[current.as_str()],
    );
    assert_eq!((a.code, &a.body["metadata"]), (200, &json!({})), "{}", a.body);
    let a = d.call("GET", "/1.0/profiles/p1", None, &[]);
    assert_ne!(a.etag(), etag);
    assert_eq!(a.body["metadata"]["config"], json!({"user.b": "2"}));
    assert_eq!(a.body["metadata"]["description"], "second");
    assert_eq!(a.body["metadata"]["devices"], json!({}));
    // The same, now stale, ETag again: refused.
    let a = d.call("PUT", "/1.0/profiles/p1", Some("{}"), &[current.as_str()]);
    assert_eq!(a.code, 412, "{}", a.body);

    // PATCH merges; "" (or null) unsets; what is not named stays.
    d.ok(
        "PATCH",
        "/1.0/profiles/p1",
        r#"{"config":{"user.c":"3"},"devices":{"eth9":{"type":"none"}}}"#,
        200,
    );
    d.ok("PATCH", "/1.0/profiles/p1", r#"{"description":"third"}"#, 200);
    let p = d.get("/1.0/profiles/p1");
    assert_eq!(p["config"], json!({"user.b": "2", "user.c": "3"}));
    assert_eq!(p["devices"]["eth9"]["type"], "none");
    assert_eq!(p["description"], "third");
    d.ok(
        "PATCH",
        "/1.0/profiles/p1",
        r#"{"config":{"user.b":"","user.c":null}}"#,
        200,
    );
    assert_eq!(d.get("/1.0/profiles/p1")["config"], json!({}));
    d.refused(
        "PATCH",
        "/1.0/profiles/p1",
        Some(r#"{"config":{"limits.memroy":"1GB"}}"#),
        400,
        "did you mean \"limits.memory\"",
    );
    d.refused(
        "PUT",
        "/1.0/profiles/p1",
        Some(r#"{"config":{"nope":"1"}}"#),
        400,
        "unknown configuration key \"nope\"",
    );
    d.refused("PUT", "/1.0/profiles/nope", Some("{}"), 404, "Profile not found: nope");
    d.refused(
        "PATCH",
        "/1.0/profiles/nope",
        Some("{}"),
        404,
        "Profile not found: nope",
    );

    // The default profile is neither renamed nor deleted (403, as LXD).
    d.refused(
        "DELETE",
        "/1.0/profiles/default",
        None,
        403,
        "The 'default' profile cannot be deleted",
    );
    d.refused(
        "POST",
        "/1.0/profiles/default",
        Some(r#"{"name":"other"}"#),
        403,
        "Renaming the default profile is not allowed",
    );
    assert_eq!(d.get("/1.0/profiles/default")["devices"]["root"]["type"], "disk");

    // Rename: 201 with the new Location; the old name is gone.
    d.refused(
        "POST",
        "/1.0/profiles/p1",
        Some(r#"{"name":"default"}"#),
        409,
        "Name \"default\" already in use",
    );
    d.refused(
        "POST",
        "/1.0/profiles/p1",
        Some(r#"{"name":"x/y"}"#),
        400,
        "Profile names may not contain slashes",
    );
    d.refused(
        "POST",
        "/1.0/profiles/p1",
        Some(r#"{"name":""}"#),
        400,
        "No name provided",
    );
    d.refused(
        "POST",
        "/1.0/profiles/nope",
        Some(r#"{"name":"p3"}"#),
        404,
        "Profile not found: nope",
    );
    let a = d.call("POST", "/1.0/profiles/p1", Some(r#"{"name":"p2"}"#), &[]);
    assert_eq!(a.code, 201, "{}", a.body);
    assert_eq!(a.headers.get("location").map(String::as_str), Some("/1.0/profiles/p2"));
    d.refused("GET", "/1.0/profiles/p1", None, 404, "Profile not found: p1");
    assert_eq!(d.get("/1.0/profiles/p2")["description"], "third");

    // Delete.
    assert_eq!(d.ok("DELETE", "/1.0/profiles/p2", "", 200), json!({}));
    d.refused("GET", "/1.0/profiles/p2", None, 404, "Profile not found: p2");
    d.refused("DELETE", "/1.0/profiles/p2", None, 404, "Profile not found: p2");
    assert_eq!(d.get("/1.0/profiles"), json!(["/1.0/profiles/default"]));
}

#[test]
fn renames_carry_instances_along_and_profiles_in_use_are_not_deleted() {
    let test = "renames_carry_instances_along_and_profiles_in_use_are_not_deleted";
    let Some(image) = busybox_image(test) else { return };
    let d = Daemon::start("profiles-use");
    d.import(&image, "bb");
    d.ok(
        "POST",
        "/1.0/profiles",
        r#"{"name":"web","config":{"user.tier":"web"}}"#,
        201,
    );
    d.create("c1", "bb", &["default", "web"]);
    d.create("c2", "bb", &["web"]);
    d.create("c3", "bb", &["default"]);
    // An instance cannot name a profile that does not exist.
    let a = d.call(
        "POST",
        "/1.0/instances",
        Some(r#"{"name":"c4","source":{"type":"image","alias":"bb"},"profiles":["nope"]}"#),
        &[],
    );
    if a.code == 202 {
        let id = a.body["metadata"]["id"].as_str().unwrap();
        let op = d.get(&format!("/1.0/operations/{id}/wait?timeout=60"));
        assert_eq!(op["status"], "Failure", "{op}");
        assert!(op["err"].as_str().unwrap().contains("Profile not found: nope"), "{op}");
    } else {
        assert!(a.error().contains("Profile not found: nope"), "{}", a.body);
    }

    assert_eq!(
        d.get("/1.0/profiles/web")["used_by"],
        json!(["/1.0/instances/c1", "/1.0/instances/c2"])
    );
    assert_eq!(
        d.get("/1.0/instances/c1")["expanded_config"]["user.tier"],
        "web",
        "the profile's config reaches its instances"
    );

    // In use: refused, naming the instances; nothing changes.
    d.refused(
        "DELETE",
        "/1.0/profiles/web",
        None,
        400,
        "Profile is currently in use by instances c1, c2",
    );
    assert_eq!(d.get("/1.0/profiles/web")["config"]["user.tier"], "web");

    // Rename: every instance follows, in its own position in the list.
    d.ok("POST", "/1.0/profiles/web", r#"{"name":"www"}"#, 201);
    assert_eq!(d.profiles_of("c1"), json!(["default", "www"]));
    assert_eq!(d.profiles_of("c2"), json!(["www"]));
    assert_eq!(d.profiles_of("c3"), json!(["default"]));
    assert_eq!(d.get("/1.0/instances/c2")["expanded_config"]["user.tier"], "web");
    assert_eq!(
        d.get("/1.0/profiles/www")["used_by"],
        json!(["/1.0/instances/c1", "/1.0/instances/c2"])
    );
    d.refused("GET", "/1.0/profiles/web", None, 404, "Profile not found: web");
    // The instances can still be changed (their records are whole).
    d.op("PATCH", "/1.0/instances/c2", r#"{"profiles":[]}"#);
    d.refused(
        "DELETE",
        "/1.0/profiles/www",
        None,
        400,
        "Profile is currently in use by instance c1",
    );
    d.op("PATCH", "/1.0/instances/c1", r#"{"profiles":["default"]}"#);
    assert_eq!(d.get("/1.0/profiles/www")["used_by"], json!([]));
    d.ok("DELETE", "/1.0/profiles/www", "", 200);
    // The default profile, in use, is refused for being the default.
    d.refused(
        "DELETE",
        "/1.0/profiles/default",
        None,
        403,
        "The 'default' profile cannot be deleted",
    );
    for c in ["c1", "c2", "c3"] {
        d.op("DELETE", &format!("/1.0/instances/{c}"), "");
    }
}

#[test]
fn a_profile_limit_reaches_running_instances() {
    let test = "a_profile_limit_reaches_running_instances";
    let Some(image) = busybox_image(test) else { return };
    let d = Daemon::start("profiles-live");
    d.import(&image, "bb");
    d.ok(
        "POST",
        "/1.0/profiles",
        r#"{"name":"mem","config":{"limits.memory":"128MiB"}}"#,
        201,
    );
    d.create("c1", "bb", &["default", "mem"]);
    d.create("c2", "bb", &["default", "mem"]);
    d.op("PATCH", "/1.0/instances/c2", r#"{"config":{"limits.memory":"64MiB"}}"#);
    for c in ["c1", "c2"] {
        d.op("PUT", &format!("/1.0/instances/{c}/state"), r#"{"action":"start"}"#);
    }
    const MIB: u64 = 1024 * 1024;
    assert_eq!(d.memory_limit("c1"), Some(128 * MIB), "the profile's limit at start");
    assert_eq!(d.memory_limit("c2"), Some(64 * MIB), "the instance's own key wins");

    // A change to the profile reaches the running instance at once.
    d.ok(
        "PATCH",
        "/1.0/profiles/mem",
        r#"{"config":{"limits.memory":"256MiB"}}"#,
        200,
    );
    assert_eq!(d.memory_limit("c1"), Some(256 * MIB));
    assert_eq!(d.memory_limit("c2"), Some(64 * MIB), "still the instance's own key");
    // The container sees it too, through lxcfs.
    if Path::new("/var/lib/lxcfs/proc/meminfo").exists() {
        let out = d
            .monitor("c1")
            .exec_output(
                &corral_runtime::proto::ExecRequest::new(&["grep", "MemTotal", "/proc/meminfo"]),
                b"",
            )
            .expect("exec");
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            text.split_whitespace().nth(1),
            Some("262144"),
            "MemTotal in the container: {text:?}"
        );
    } else {
        skip(
            test,
            "lxcfs is not mounted at /var/lib/lxcfs: the /proc/meminfo check did not run",
        );
    }

    // PUT (replace) without the key lifts the limit.
    d.ok("PUT", "/1.0/profiles/mem", r#"{"config":{}}"#, 200);
    assert_eq!(d.memory_limit("c1"), None, "unlimited again");
    // A value the instance cannot take is refused before anything changes.
    d.refused(
        "PATCH",
        "/1.0/profiles/mem",
        Some(r#"{"config":{"limits.memory":"12 parsecs"}}"#),
        400,
        "limits.memory",
    );
    assert_eq!(d.get("/1.0/profiles/mem")["config"], json!({}));
    // Adding the profile back to an instance (its own update) applies it too.
    d.ok(
        "PATCH",
        "/1.0/profiles/mem",
        r#"{"config":{"limits.memory":"96MiB"}}"#,
        200,
    );
    assert_eq!(d.memory_limit("c1"), Some(96 * MIB));
    // A renamed profile still applies: the instances follow the rename.
    d.ok("POST", "/1.0/profiles/mem", r#"{"name":"memory"}"#, 201);
    d.ok(
        "PATCH",
        "/1.0/profiles/memory",
        r#"{"config":{"limits.memory":"112MiB"}}"#,
        200,
    );
    assert_eq!(d.memory_limit("c1"), Some(112 * MIB));

    for c in ["c1", "c2"] {
        d.op(
            "PUT",
            &format!("/1.0/instances/{c}/state"),
            r#"{"action":"stop","force":true}"#,
        );
        d.op("DELETE", &format!("/1.0/instances/{c}"), "");
    }
}

#[test]
fn the_lxc_client_manages_profiles() {
    let test = "the_lxc_client_manages_profiles";
    let Some(image) = busybox_image(test) else { return };
    let Some(lxc) = lxc_bin(test) else { return };
    let lxc = lxc.as_path();
    let d = Daemon::start("profiles-lxc");
    d.import(&image, "busybox");

    d.cmd_ok(lxc, &["profile", "create", "p1"], None);
    d.cmd_ok(lxc, &["profile", "set", "p1", "user.x", "hello"], None);
    d.cmd_ok(lxc, &["profile", "set", "p1", "limits.memory=128MiB"], None);
    assert_eq!(d.cmd_ok(lxc, &["profile", "get", "p1", "user.x"], None).trim(), "hello");
    let show = d.cmd_ok(lxc, &["profile", "show", "p1"], None);
    assert!(show.contains("user.x: hello"), "{show}");
    assert!(show.contains("limits.memory: 128MiB"), "{show}");
    assert!(show.contains("name: p1"), "{show}");
    let err = d.cmd_err(lxc, &["profile", "set", "p1", "limits.memroy", "1GB"]);
    assert!(err.contains("unknown configuration key \"limits.memroy\""), "{err}");
    let err = d.cmd_err(lxc, &["profile", "create", "p1"]);
    assert!(err.contains("Profile \"p1\" already exists"), "{err}");
    d.cmd_ok(lxc, &["profile", "unset", "p1", "user.x"], None);
    assert_eq!(d.cmd_ok(lxc, &["profile", "get", "p1", "user.x"], None).trim(), "");

    // edit from stdin replaces the profile.
    d.cmd_ok(
        lxc,
        &["profile", "edit", "p1"],
        Some("description: edited\nconfig:\n  user.y: from-yaml\ndevices: {}\n"),
    );
    let p = d.get("/1.0/profiles/p1");
    assert_eq!(p["description"], "edited");
    assert_eq!(p["config"], json!({"user.y": "from-yaml"}));

    d.cmd_ok(lxc, &["profile", "copy", "p1", "p2"], None);
    assert_eq!(d.get("/1.0/profiles/p2")["config"], json!({"user.y": "from-yaml"}));
    let list = d.cmd_ok(lxc, &["profile", "list"], None);
    for name in ["default", "p1", "p2"] {
        assert!(list.contains(&format!("| {name} ")), "{list}");
    }

    // The instance side: add, remove, assign.
    d.cmd_ok(lxc, &["init", "busybox", "c1"], None);
    d.cmd_ok(lxc, &["profile", "add", "c1", "p1"], None);
    assert_eq!(d.profiles_of("c1"), json!(["default", "p1"]));
    let err = d.cmd_err(lxc, &["profile", "delete", "p1"]);
    assert!(err.contains("Profile is currently in use by instance c1"), "{err}");
    d.cmd_ok(lxc, &["profile", "rename", "p1", "p3"], None);
    assert_eq!(d.profiles_of("c1"), json!(["default", "p3"]));
    d.cmd_ok(lxc, &["profile", "remove", "c1", "p3"], None);
    assert_eq!(d.profiles_of("c1"), json!(["default"]));
    d.cmd_ok(lxc, &["profile", "assign", "c1", "default,p2"], None);
    assert_eq!(d.profiles_of("c1"), json!(["default", "p2"]));
    d.cmd_ok(lxc, &["profile", "assign", "c1", "default"], None);

    let err = d.cmd_err(lxc, &["profile", "delete", "default"]);
    assert!(err.contains("The 'default' profile cannot be deleted"), "{err}");
    d.cmd_ok(lxc, &["profile", "delete", "p2"], None);
    d.cmd_ok(lxc, &["profile", "delete", "p3"], None);
    assert_eq!(d.get("/1.0/profiles"), json!(["/1.0/profiles/default"]));
    d.cmd_ok(lxc, &["delete", "c1"], None);
}

#[test]
fn the_corral_cli_manages_profiles() {
    let test = "the_corral_cli_manages_profiles";
    let Some(image) = busybox_image(test) else { return };
    let Some(corral) = corral_bin(test) else { return };
    let corral = corral.as_path();
    let d = Daemon::start("profiles-cli");
    d.import(&image, "busybox");

    assert_eq!(
        d.cmd_ok(corral, &["profile", "create", "p1"], None),
        "Profile p1 created\n"
    );
    d.cmd_ok(corral, &["profile", "set", "p1", "user.x", "hello"], None);
    d.cmd_ok(corral, &["profile", "set", "p1", "user.y=1", "user.z=2"], None);
    assert_eq!(d.cmd_ok(corral, &["profile", "get", "p1", "user.x"], None), "hello\n");
    d.cmd_ok(corral, &["profile", "unset", "p1", "user.y"], None);
    let err = d.cmd_err(corral, &["profile", "unset", "p1", "user.y"]);
    assert!(err.contains("Key user.y is not set on profile p1"), "{err}");
    let err = d.cmd_err(corral, &["profile", "set", "p1", "limits.memroy", "1GB"]);
    assert!(err.contains("did you mean \"limits.memory\""), "{err}");
    let show = d.cmd_ok(corral, &["profile", "show", "p1"], None);
    assert!(show.contains("user.x: hello") && show.contains("name: p1"), "{show}");
    assert!(!show.contains("user.y"), "{show}");

    // create and edit from YAML on stdin; edit through $EDITOR.
    d.cmd_ok(
        corral,
        &["profile", "create", "p2"],
        Some("description: from stdin\nconfig:\n  user.a: b\n"),
    );
    assert_eq!(d.get("/1.0/profiles/p2")["description"], "from stdin");
    // edit replaces: what the YAML leaves out (the description) is gone.
    d.cmd_ok(corral, &["profile", "edit", "p2"], Some("config:\n  user.c: d\n"));
    let p2 = d.get("/1.0/profiles/p2");
    assert_eq!(
        (&p2["config"], &p2["description"]),
        (&json!({"user.c": "d"}), &json!(""))
    );
    let editor = d.dir.join("editor.sh");
    std::fs::write(&editor, "#!/bin/sh\nsed -i 's/user.x: hello/user.x: edited/' \"$1\"\n").unwrap();
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = Command::new(corral)
        .args(["profile", "edit", "p1"])
        .env("CORRAL_DIR", &d.dir)
        .env("EDITOR", &editor)
        .env_remove("VISUAL")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(d.get("/1.0/profiles/p1")["config"]["user.x"], "edited");

    d.cmd_ok(corral, &["profile", "copy", "p1", "p3"], None);
    assert_eq!(d.get("/1.0/profiles/p3")["config"]["user.x"], "edited");
    let err = d.cmd_err(corral, &["profile", "copy", "p1", "p3"]);
    assert!(err.contains("Profile \"p3\" already exists"), "{err}");
    d.cmd_ok(corral, &["profile", "copy", "p2", "p3", "--refresh"], None);
    assert_eq!(d.get("/1.0/profiles/p3")["config"], json!({"user.c": "d"}));
    let list = d.cmd_ok(corral, &["profile", "list", "--format", "csv"], None);
    assert_eq!(list, "default,Default Corral profile,0\np1,,0\np2,,0\np3,,0\n");

    d.cmd_ok(corral, &["init", "busybox", "c1"], None);
    assert_eq!(
        d.cmd_ok(corral, &["profile", "add", "c1", "p1"], None),
        "Profile p1 added to c1\n"
    );
    let err = d.cmd_err(corral, &["profile", "add", "c1", "p1"]);
    assert!(err.contains("Profile p1 is already applied to c1"), "{err}");
    assert_eq!(d.profiles_of("c1"), json!(["default", "p1"]));
    assert_eq!(
        d.cmd_ok(corral, &["profile", "rename", "p1", "web"], None),
        "Profile p1 renamed to web\n"
    );
    assert_eq!(d.profiles_of("c1"), json!(["default", "web"]));
    let err = d.cmd_err(corral, &["profile", "delete", "web"]);
    assert!(err.contains("Profile is currently in use by instance c1"), "{err}");
    d.cmd_ok(corral, &["profile", "remove", "c1", "web"], None);
    let err = d.cmd_err(corral, &["profile", "remove", "c1", "web"]);
    assert!(err.contains("Profile web isn't currently applied to c1"), "{err}");
    assert_eq!(
        d.cmd_ok(corral, &["profile", "assign", "c1", "p2,default"], None),
        "Profiles p2,default applied to c1\n"
    );
    assert_eq!(d.profiles_of("c1"), json!(["p2", "default"]));
    assert_eq!(
        d.cmd_ok(corral, &["profile", "assign", "c1", ""], None),
        "All profiles removed from c1\n"
    );
    assert_eq!(d.profiles_of("c1"), json!([]));
    let err = d.cmd_err(corral, &["profile", "assign", "c1", "nope"]);
    assert!(err.contains("Profile not found: nope"), "{err}");
    let err = d.cmd_err(corral, &["profile", "delete", "default"]);
    assert!(err.contains("The 'default' profile cannot be deleted"), "{err}");
    assert_eq!(
        d.cmd_ok(corral, &["profile", "delete", "web", "p2", "p3"], None),
        "Profile web deleted\nProfile p2 deleted\nProfile p3 deleted\n"
    );
    d.cmd_ok(corral, &["delete", "c1"], None);
}
