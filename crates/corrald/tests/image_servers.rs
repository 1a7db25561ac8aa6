//! System tests of corrald as an image server and client: two daemons, each in its own network
//! namespace, joined by a veth pair made by the test (10.77.0.1 and 10.77.0.2, nothing else
//! on that link). Daemon A serves its public images over HTTPS (LXD protocol); daemon B
//! launches and copies from it (the API and the `corral` CLI), sees nothing of A's private
//! images; `corral publish` on A, `corral image export-simplestreams` served by a loopback
//! HTTP server in B's namespace, and B launching from that tree; the auto-update timer.
//! Root only.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

const A_ADDR: &str = "10.77.0.1:8443";
const A_URL: &str = "https://10.77.0.1:8443";

/// Joins the two daemons' namespaces with a veth pair (destroyed with the namespaces).
fn link(a: &TestDaemon, b: &TestDaemon) {
    let out = Command::new("ip")
        .args([
            "link", "add", "img0", "netns", &a.netns, "type", "veth", "peer", "name", "img0", "netns", &b.netns,
        ])
        .output()
        .expect("ip link add");
    assert!(out.status.success(), "veth: {}", String::from_utf8_lossy(&out.stderr));
    a.in_netns_ok(&["ip", "addr", "add", "10.77.0.1/24", "dev", "img0"]);
    b.in_netns_ok(&["ip", "addr", "add", "10.77.0.2/24", "dev", "img0"]);
    a.in_netns_ok(&["ip", "link", "set", "img0", "up"]);
    b.in_netns_ok(&["ip", "link", "set", "img0", "up"]);
}

/// A's certificate (PEM), as `GET /1.0` shows it.
fn certificate(d: &TestDaemon) -> String {
    d.get("/1.0")["environment"]["certificate"]
        .as_str()
        .expect("the server certificate")
        .to_string()
}

/// Two linked daemons, A listening on HTTPS, with the split busybox image public (alias
/// `bb`) and the unified one private (alias `bb-private`): (a, b, public fp, private fp).
fn servers(test: &str, env: &[(&str, &str)]) -> Option<(TestDaemon, TestDaemon, String, String)> {
    let (meta, rootfs, split_fp) = busybox_split_image(test)?;
    let unified = busybox_image(test)?;
    let a = TestDaemon::start(&format!("{test}-a").chars().take(24).collect::<String>());
    let b = TestDaemon::start_with_env(&format!("{test}-b").chars().take(24).collect::<String>(), env);
    link(&a, &b);
    a.corral_ok(&["config", "set", "core.https_address", A_ADDR]);
    a.corral_ok(&[
        "image",
        "import",
        &meta.display().to_string(),
        &rootfs.display().to_string(),
        "--alias",
        "bb",
        "--public",
    ]);
    let private = a.import(&unified, "bb-private");
    assert_eq!(a.get(&format!("/1.0/images/{split_fp}"))["public"], true);
    Some((a, b, split_fp, private))
}

/// curl from B's namespace to A's HTTPS API, without a client certificate: (status, body).
fn untrusted(b: &TestDaemon, path: &str) -> (u16, Value) {
    let url = format!("{A_URL}{path}");
    let out = b.in_netns(&["curl", "-sk", "-w", "\n%{http_code}", &url]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        code.trim().parse().unwrap_or(0),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn public_images_are_served_to_untrusted_clients_and_nothing_else() {
    let Some((a, b, public, private)) = servers("isv-pub", &[]) else {
        return;
    };
    let (code, list) = untrusted(&b, "/1.0/images");
    assert_eq!(code, 200, "{list}");
    assert_eq!(list["metadata"], json!([format!("/1.0/images/{public}")]));
    let (code, list) = untrusted(&b, "/1.0/images?recursion=1");
    assert_eq!(code, 200);
    assert_eq!(list["metadata"].as_array().unwrap().len(), 1);
    assert_eq!(list["metadata"][0]["fingerprint"], public.as_str());
    let (code, img) = untrusted(&b, &format!("/1.0/images/{public}"));
    assert_eq!((code, img["metadata"]["public"].clone()), (200, json!(true)));
    let (code, _) = untrusted(&b, &format!("/1.0/images/{private}"));
    assert_eq!(code, 404, "a private image is not found by untrusted clients");
    let (code, _) = untrusted(&b, &format!("/1.0/images/{private}/export"));
    assert_eq!(code, 404);
    let (code, aliases) = untrusted(&b, "/1.0/images/aliases");
    assert_eq!(code, 200);
    assert_eq!(aliases["metadata"], json!(["/1.0/images/aliases/bb"]));
    let (code, _) = untrusted(&b, "/1.0/images/aliases/bb-private");
    assert_eq!(code, 404);
    let (code, alias) = untrusted(&b, "/1.0/images/aliases/bb");
    assert_eq!((code, alias["metadata"]["target"].clone()), (200, json!(public)));
    // The export of a split image is the multipart form LXD's client reads, whole.
    let out = b.in_netns(&[
        "curl",
        "-sk",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{content_type}",
        &format!("{A_URL}/1.0/images/{public}/export"),
    ]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.starts_with("200 multipart/form-data; boundary="), "{text}");
    // Nothing else opens up: instances, changes.
    assert_eq!(untrusted(&b, "/1.0/instances").0, 403);
    let out = b.in_netns(&[
        "curl",
        "-sk",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        "DELETE",
        &format!("{A_URL}/1.0/images/{public}"),
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "403");
    // On the unix socket everything stays visible.
    assert_eq!(a.get("/1.0/images").as_array().unwrap().len(), 2);
}

#[test]
fn a_daemon_launches_and_copies_from_another_over_the_lxd_protocol() {
    let Some((a, b, public, private)) = servers("isv-lxd", &[]) else {
        return;
    };
    let cert = certificate(&a);
    let c1 = unique("lxd");
    let body = json!({
        "name": c1,
        "source": {"type": "image", "server": A_URL, "protocol": "lxd", "alias": "bb", "certificate": cert},
    });
    b.op_ok("POST", "/1.0/instances", &body.to_string());
    let inst = b.get(&format!("/1.0/instances/{c1}"));
    assert_eq!(inst["config"]["volatile.base_image"], public.as_str());
    let img = b.get(&format!("/1.0/images/{public}")).clone();
    assert_eq!(img["fingerprint"], public.as_str(), "the same fingerprint on both");
    assert_eq!(img["cached"], true);
    assert_eq!(img["update_source"]["protocol"], "lxd");
    assert_eq!(img["update_source"]["server"], A_URL);
    assert_eq!(img["update_source"]["alias"], "bb");
    b.op_ok(
        "PUT",
        &format!("/1.0/instances/{c1}/state"),
        r#"{"action":"start","timeout":30}"#,
    );
    let (code, hostname) = b.sh(&c1, "cat /etc/hostname");
    assert_eq!((code, hostname.trim()), (0, c1.as_str()), "the image's template ran");
    b.op_ok(
        "PUT",
        &format!("/1.0/instances/{c1}/state"),
        r#"{"action":"stop","force":true}"#,
    );

    // The private image: not found, nothing kept on B.
    let body = json!({
        "source": {"type": "image", "server": A_URL, "protocol": "lxd", "alias": "bb-private", "certificate": cert},
    });
    let (code, v) = b.request("POST", "/1.0/images", Some(&body.to_string()));
    assert_eq!(code, 404, "{v}");
    assert!(v["error"].as_str().unwrap().contains("not public"), "{v}");
    assert_eq!(b.request("GET", &format!("/1.0/images/{private}"), None).0, 404);

    // Made public on A, it copies (protocol "incus" too), with B's alias; same fingerprint.
    a.ok("PATCH", &format!("/1.0/images/{private}"), r#"{"public":true}"#, 200);
    let body = json!({
        "aliases": [{"name": "copied"}],
        "auto_update": true,
        "source": {"type": "image", "server": A_URL, "protocol": "incus", "alias": "bb-private", "certificate": cert},
    });
    let op = b.op_ok("POST", "/1.0/images", &body.to_string());
    assert_eq!(op["metadata"]["fingerprint"], private.as_str());
    let img = b.get(&format!("/1.0/images/{private}")).clone();
    assert_eq!(
        (img["cached"].clone(), img["auto_update"].clone()),
        (json!(false), json!(true))
    );
    assert_eq!(b.get("/1.0/images/aliases/copied")["target"], private.as_str());

    // A certificate that is not A's is refused before anything is read (an alias B has not
    // cached from A: a cached one is taken from the store without asking A).
    let wrong = certificate(&b);
    let body = json!({
        "source": {"type": "image", "server": A_URL, "protocol": "lxd", "alias": "bb-private", "certificate": wrong},
        "aliases": [{"name": "never"}],
    });
    let (code, v) = b.request("POST", "/1.0/images", Some(&body.to_string()));
    assert_eq!(code, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("certificate"), "{v}");
    // No certificate at all: refused with the reason.
    let body = json!({"source": {"type": "image", "server": A_URL, "protocol": "lxd", "alias": "zzz"}});
    let (code, v) = b.request("POST", "/1.0/images", Some(&body.to_string()));
    assert_eq!(code, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("needs its certificate"), "{v}");
}

/// A `corral` client configuration of its own, used in B's namespace against B.
struct Cli {
    conf: PathBuf,
    /// More environment for the CLI (`SSL_CERT_FILE`...).
    env: Vec<(String, String)>,
}

impl Cli {
    fn new(tag: &str) -> Cli {
        let conf = std::env::temp_dir().join(format!("corral-isv-cli-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&conf);
        std::fs::create_dir_all(&conf).unwrap();
        Cli { conf, env: Vec::new() }
    }

    fn run(&self, d: &TestDaemon, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", d.netns))
            .arg(corral_cli())
            .args(args)
            .env("CORRAL_CONF", &self.conf)
            .env("CORRAL_DIR", &d.dir)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output()
            .expect("corral")
    }

    fn ok(&self, d: &TestDaemon, args: &[&str]) -> String {
        let out = self.run(d, args);
        assert!(
            out.status.success(),
            "corral {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn err(&self, d: &TestDaemon, args: &[&str]) -> String {
        let out = self.run(d, args);
        assert!(!out.status.success(), "corral {args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

impl Drop for Cli {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.conf);
    }
}

#[test]
fn the_cli_uses_public_lxd_remotes_for_launch_list_info_and_copy() {
    let Some((a, b, public, private)) = servers("isv-cli", &[]) else {
        return;
    };
    let cli = Cli::new("lxd");
    let out = cli.ok(
        &b,
        &[
            "remote",
            "add",
            "srv",
            A_URL,
            "--protocol",
            "lxd",
            "--public",
            "--accept-certificate",
        ],
    );
    assert!(out.contains("Certificate fingerprint"), "{out}");
    let remotes = cli.ok(&b, &["remote", "list", "-f", "json"]);
    let remotes: Value = serde_json::from_str(&remotes).unwrap();
    assert_eq!(remotes["srv"]["public"], true, "{remotes}");
    let list = cli.ok(&b, &["image", "list", "srv:", "-f", "json"]);
    let list: Value = serde_json::from_str(&list).unwrap();
    let fps: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["fingerprint"].as_str().unwrap())
        .collect();
    assert_eq!(fps, vec![public.as_str()], "only the public image");
    let info = cli.ok(&b, &["image", "info", "srv:bb"]);
    assert!(info.contains(&format!("Fingerprint: {public}")), "{info}");
    let err = cli.err(&b, &["image", "info", "srv:bb-private"]);
    assert!(err.contains("not found"), "{err}");

    let c = unique("cli");
    cli.ok(&b, &["launch", "srv:bb", &c]);
    let inst = b.get(&format!("/1.0/instances/{c}")).clone();
    assert_eq!(inst["status"], "Running");
    assert_eq!(inst["config"]["volatile.base_image"], public.as_str());
    cli.ok(&b, &["stop", "-f", &c]);
    // init with the instance on local: explicitly.
    let c2 = unique("cli2");
    cli.ok(&b, &["init", "srv:bb", &format!("local:{c2}")]);
    assert_eq!(b.get(&format!("/1.0/instances/{c2}"))["status"], "Stopped");

    // image copy with --copy-aliases and --auto-update.
    a.ok("PATCH", &format!("/1.0/images/{private}"), r#"{"public":true}"#, 200);
    let out = cli.ok(
        &b,
        &[
            "image",
            "copy",
            "srv:bb-private",
            "local:",
            "--alias",
            "mine",
            "--copy-aliases",
            "--auto-update",
        ],
    );
    assert!(out.contains("Image copied successfully"), "{out}");
    assert_eq!(b.get("/1.0/images/aliases/mine")["target"], private.as_str());
    assert_eq!(b.get("/1.0/images/aliases/bb-private")["target"], private.as_str());
    assert_eq!(b.get(&format!("/1.0/images/{private}"))["auto_update"], true);
    // The image remote is not an instance remote.
    let err = cli.err(&b, &["image", "copy", "nowhere:bb", "local:"]);
    assert!(err.contains("nowhere"), "{err}");
}

/// A static file server (python3 http.server) in `d`'s namespace on 127.0.0.1:`port`.
struct Static(Child);

impl Static {
    fn start(d: &TestDaemon, root: &Path, port: u16) -> Static {
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", d.netns))
            .args([
                "python3",
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
                "--directory",
            ])
            .arg(root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 http.server");
        let url = format!("http://127.0.0.1:{port}/streams/v1/index.json");
        wait_until("the static server", Duration::from_secs(20), || {
            d.in_netns(&["curl", "-sf", "-o", "/dev/null", &url]).status.success()
        });
        Static(child)
    }
}

impl Drop for Static {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn publish_then_export_simplestreams_then_launch_elsewhere_keeps_the_fingerprint() {
    let test = "publish_then_export_simplestreams_then_launch_elsewhere_keeps_the_fingerprint";
    let ok = Command::new("python3")
        .args(["-c", "import http.server"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok && skip(test, "needs python3 (the static web server)") {
        return;
    }
    let Some((a, b, _public, _)) = servers("isv-pubx", &[]) else {
        return;
    };
    // Publish a running instance on A (frozen while read), and a snapshot.
    let c = unique("src");
    a.launch(&c, "bb");
    a.sh(&c, "echo published > /root/marker");
    let out = a.corral_ok(&["publish", &c, "--alias", "pub", "--public", "--property", "os=Marked"]);
    let fp = out.trim().rsplit(' ').next().unwrap().to_string();
    assert_eq!(fp.len(), 64, "{out}");
    let img = a.get(&format!("/1.0/images/{fp}")).clone();
    assert_eq!(img["public"], true);
    assert_eq!(img["properties"]["os"], "Marked");
    assert_eq!(a.get(&format!("/1.0/instances/{c}"))["status"], "Running", "thawed");
    a.corral_ok(&["snapshot", &c, "s0"]);
    let out = a.corral_ok(&[
        "publish",
        &format!("{c}/s0"),
        "--alias",
        "from-snap",
        "--compression",
        "gzip",
    ]);
    assert!(out.contains("fingerprint"), "{out}");
    // The published image launches on A with the marker and its template.
    let c2 = unique("again");
    a.launch(&c2, "pub");
    assert_eq!(
        a.sh(&c2, "cat /root/marker; cat /etc/hostname").1,
        format!("published\n{c2}\n")
    );

    // A static tree, served from B's namespace, and launched from by B through the CLI.
    let dir = std::env::temp_dir().join(format!("corral-isv-tree-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = a.corral_ok(&["image", "export-simplestreams", &dir.display().to_string(), "pub"]);
    assert!(out.contains("1 image"), "{out}");
    assert!(dir.join("streams/v1/index.json").exists());
    let _server = Static::start(&b, &dir, 8802);
    let cli = Cli::new("ss");
    cli.ok(
        &b,
        &[
            "remote",
            "add",
            "ss",
            "http://127.0.0.1:8802",
            "--protocol",
            "simplestreams",
        ],
    );
    let config = std::fs::read_to_string(cli.conf.join("config.yml")).unwrap();
    assert!(config.contains("protocol: simplestreams"), "{config}");
    let list = cli.ok(&b, &["image", "list", "ss:", "-f", "json"]);
    assert!(list.contains(&fp), "{list}");
    let info = cli.ok(&b, &["image", "info", "ss:pub"]);
    assert!(info.contains(&format!("Fingerprint: {fp}")), "{info}");
    let c3 = unique("ss");
    cli.ok(&b, &["launch", "ss:pub", &c3]);
    assert_eq!(
        b.get(&format!("/1.0/instances/{c3}"))["config"]["volatile.base_image"],
        fp.as_str()
    );
    assert_eq!(b.sh(&c3, "cat /root/marker").1, "published\n");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn auto_update_follows_the_source_and_unused_cached_images_expire() {
    let env = [
        ("CORRAL_IMAGE_UPDATE_TICK_SECS", "2"),
        ("CORRAL_IMAGE_CACHE_EXPIRY_SECS", "3"),
    ];
    let Some((a, b, public, private)) = servers("isv-auto", &env) else {
        return;
    };
    let cert = certificate(&a);
    a.ok("PATCH", &format!("/1.0/images/{private}"), r#"{"public":true}"#, 200);
    let body = json!({
        "aliases": [{"name": "tracked"}],
        "auto_update": true,
        "source": {"type": "image", "server": A_URL, "protocol": "lxd", "alias": "bb", "certificate": cert},
    });
    b.op_ok("POST", "/1.0/images", &body.to_string());
    assert_eq!(b.get("/1.0/images/aliases/tracked")["target"], public.as_str());
    // A's alias now names the other image: B's copy follows at the next tick.
    a.ok(
        "PUT",
        "/1.0/images/aliases/bb",
        &json!({"target": private, "description": ""}).to_string(),
        200,
    );
    wait_until("the auto-update", Duration::from_secs(60), || {
        b.get("/1.0/images/aliases/tracked")["target"] == private.as_str()
    });
    let img = b.get(&format!("/1.0/images/{private}")).clone();
    assert_eq!(img["auto_update"], true);
    assert_eq!(
        b.request("GET", &format!("/1.0/images/{public}"), None).0,
        404,
        "the old one is gone"
    );

    // A cached image (from a launch) nothing uses any more goes after the expiry; the
    // copied (not cached) one stays.
    a.ok(
        "POST",
        "/1.0/images/aliases",
        &json!({"name": "bb2", "target": public}).to_string(),
        200,
    );
    let c = unique("cache");
    let body = json!({
        "name": c,
        "source": {"type": "image", "server": A_URL, "protocol": "lxd", "alias": "bb2", "certificate": cert},
    });
    b.op_ok("POST", "/1.0/instances", &body.to_string());
    assert_eq!(b.get(&format!("/1.0/images/{public}"))["cached"], true);
    wait_until("the cache expiry", Duration::from_secs(60), || {
        b.request("GET", &format!("/1.0/images/{public}"), None).0 == 404
    });
    assert_eq!(b.request("GET", &format!("/1.0/images/{private}"), None).0, 200);
    // The instance keeps its own copy.
    assert_eq!(b.get(&format!("/1.0/instances/{c}"))["name"], c.as_str());
}

/// A client certificate A does not trust (made with openssl): (certificate, key) paths.
fn stranger_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let (crt, key) = (dir.join("stranger.crt"), dir.join("stranger.key"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ])
        .args(["-days", "1", "-subj", "/CN=stranger", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (crt, key)
}

/// curl from B's namespace to A with the stranger's certificate: (status, body bytes).
fn as_stranger(b: &TestDaemon, cert: &(PathBuf, PathBuf), path: &str) -> (u16, Vec<u8>) {
    let (crt, key) = (cert.0.display().to_string(), cert.1.display().to_string());
    let url = format!("{A_URL}{path}");
    let out = b.in_netns(&[
        "curl",
        "-sk",
        "--cert",
        &crt,
        "--key",
        &key,
        "-w",
        "\n%{http_code}",
        &url,
    ]);
    let text = out.stdout;
    let at = text.iter().rposition(|&c| c == b'\n').unwrap_or(0);
    let code = String::from_utf8_lossy(&text[at..]).trim().parse().unwrap_or(0);
    (code, text[..at].to_vec())
}

/// A new secret for A's image `fp`: (operation URL, secret).
fn new_secret(a: &TestDaemon, fp: &str) -> (String, String) {
    let answer = a.call("POST", &format!("/1.0/images/{fp}/secret"), &[], Body::None);
    let v = answer.json();
    assert_eq!(v["type"], "async", "{v}");
    assert_eq!(v["metadata"]["class"], "token", "{v}");
    assert_eq!(v["metadata"]["status"], "Running", "{v}");
    assert_eq!(
        v["metadata"]["resources"]["images"],
        json!([format!("/1.0/images/{fp}")]),
        "{v}"
    );
    let secret = v["metadata"]["metadata"]["secret"]
        .as_str()
        .expect("a secret")
        .to_string();
    (v["operation"].as_str().unwrap().to_string(), secret)
}

#[test]
fn image_secrets_open_a_private_image_to_an_untrusted_client_and_another_daemon() {
    let Some((a, b, _public, private)) = servers("isv-secret", &[]) else {
        return;
    };
    let stranger = stranger_certificate(&b.dir.join("stranger"));
    let image = format!("/1.0/images/{private}");
    // Without a secret, or with a wrong one: not found.
    assert_eq!(as_stranger(&b, &stranger, &image).0, 404);
    assert_eq!(as_stranger(&b, &stranger, &format!("{image}/export")).0, 404);
    let (op, secret) = new_secret(&a, &private);
    let wrong = format!("{image}?secret={}", "0".repeat(secret.len()));
    assert_eq!(as_stranger(&b, &stranger, &wrong).0, 404);
    // With it: the image, then its file, once.
    let (code, body) = as_stranger(&b, &stranger, &format!("{image}?secret={secret}"));
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["metadata"]["fingerprint"], private.as_str());
    assert_eq!(v["metadata"]["public"], false);
    let (code, file) = as_stranger(&b, &stranger, &format!("{image}/export?secret={secret}"));
    assert_eq!(code, 200);
    let tmp = b.dir.join("stranger/export");
    std::fs::write(&tmp, &file).unwrap();
    assert_eq!(
        corral_image::fingerprint_unified(&tmp).unwrap(),
        private,
        "the export is the image"
    );
    let spent = a.get(&op);
    assert_ne!(spent["status"], "Running", "the download spent the secret: {spent}");
    assert_eq!(as_stranger(&b, &stranger, &format!("{image}?secret={secret}")).0, 404);
    // A cancelled secret is refused.
    let (op, secret) = new_secret(&a, &private);
    a.ok("DELETE", &op, "", 200);
    assert_eq!(as_stranger(&b, &stranger, &format!("{image}?secret={secret}")).0, 404);
    assert_eq!(
        as_stranger(&b, &stranger, &format!("{image}/export?secret={secret}")).0,
        404
    );
    // Nothing else opens up with a secret.
    assert_eq!(
        as_stranger(&b, &stranger, &format!("/1.0/instances?secret={secret}")).0,
        403
    );

    // B copies the private image from A with a secret (B's certificate is not trusted by A).
    let (_, secret) = new_secret(&a, &private);
    let body = json!({
        "aliases": [{"name": "by-secret"}],
        "source": {"type": "image", "server": A_URL, "protocol": "lxd", "fingerprint": private,
                   "certificate": certificate(&a), "secret": secret},
    });
    let op = b.op_ok("POST", "/1.0/images", &body.to_string());
    assert_eq!(op["metadata"]["fingerprint"], private.as_str());
    assert_eq!(b.get("/1.0/images/aliases/by-secret")["target"], private.as_str());
    // The secret is spent: a second copy elsewhere would be refused.
    assert_eq!(as_stranger(&b, &stranger, &format!("{image}?secret={secret}")).0, 404);
}

#[test]
fn a_daemon_serves_its_public_images_as_a_simplestreams_tree() {
    let test = "isv-streams";
    let dir = std::env::temp_dir().join(format!("corral-{test}-{}", unique("ca")));
    let TestTls { ca, cert, key } = test_ca_and_certificate(&dir, "10.77.0.1", "serverAuth,clientAuth");
    let ca_s = ca.display().to_string();
    let Some((mut a, b, public, private)) = servers(test, &[("SSL_CERT_FILE", &ca_s)]) else {
        let _ = std::fs::remove_dir_all(&dir);
        return;
    };
    // A presents a certificate for its address from a CA that B (daemon and CLI) trusts.
    std::fs::copy(&cert, a.dir.join("server.crt")).unwrap();
    std::fs::copy(&key, a.dir.join("server.key")).unwrap();
    a.crash();
    a.spawn();
    let fetch = |path: &str| -> (String, Vec<u8>) {
        let url = format!("{A_URL}/{path}");
        let out = b.in_netns(&["curl", "-s", "--cacert", &ca_s, "-w", "\n%{http_code}", &url]);
        let at = out.stdout.iter().rposition(|&c| c == b'\n').unwrap_or(0);
        (
            String::from_utf8_lossy(&out.stdout[at..]).trim().to_string(),
            out.stdout[..at].to_vec(),
        )
    };
    wait_until("A serves HTTPS again", Duration::from_secs(20), || {
        fetch("streams/v1/index.json").0 == "200"
    });
    // The documents, for an untrusted client: the public image only.
    let (code, index) = fetch("streams/v1/index.json");
    assert_eq!(code, "200");
    let index: Value = serde_json::from_slice(&index).unwrap();
    assert_eq!(index["index"]["images"]["path"], "streams/v1/images.json", "{index}");
    let (code, doc) = fetch("streams/v1/images.json");
    assert_eq!(code, "200");
    let text = String::from_utf8_lossy(&doc).into_owned();
    assert!(text.contains(&public) && !text.contains(&private), "{text}");
    let doc: Value = serde_json::from_slice(&doc).unwrap();
    let products = doc["products"].as_object().unwrap();
    assert_eq!(products.len(), 1, "{doc}");
    let product = products.values().next().unwrap();
    assert_eq!(product["aliases"], "bb", "{product}");
    let items = product["versions"].as_object().unwrap().values().next().unwrap()["items"].clone();
    assert_eq!(
        items["lxd.tar.xz"]["combined_rootxz_sha256"],
        public.as_str(),
        "{items}"
    );
    // Each file as the items say (size and sha256).
    for item in ["lxd.tar.xz", "root.tar.xz"] {
        let (code, bytes) = fetch(items[item]["path"].as_str().unwrap());
        assert_eq!(code, "200", "{item}");
        assert_eq!(bytes.len() as u64, items[item]["size"].as_u64().unwrap(), "{item}");
        let sum: String = {
            use sha2::Digest;
            sha2::Sha256::digest(&bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        };
        assert_eq!(sum, items[item]["sha256"].as_str().unwrap(), "{item}");
    }
    // The private image's files are not served, even by their name.
    let (code, _) = fetch(&format!("streams/images/{private}/image.tar.gz"));
    assert_eq!(code, "404");
    let (code, _) = fetch(&format!("streams/images/{private}/image.tar.xz"));
    assert_eq!(code, "404");

    // B launches from it as from any simplestreams server.
    let c1 = unique("ss");
    let body = json!({
        "name": c1,
        "source": {"type": "image", "server": A_URL, "protocol": "simplestreams", "alias": "bb"},
    });
    b.op_ok("POST", "/1.0/instances", &body.to_string());
    let inst = b.get(&format!("/1.0/instances/{c1}"));
    assert_eq!(inst["config"]["volatile.base_image"], public.as_str(), "{inst}");
    assert_eq!(
        b.get(&format!("/1.0/images/{public}"))["update_source"]["protocol"],
        "simplestreams"
    );
    // And the CLI, through a simplestreams remote.
    let mut cli = Cli::new("streams");
    cli.env.push(("SSL_CERT_FILE".into(), ca_s.clone()));
    cli.ok(&b, &["remote", "add", "tree", A_URL, "--protocol", "simplestreams"]);
    let list = cli.ok(&b, &["image", "list", "tree:", "-f", "json"]);
    let list: Value = serde_json::from_str(&list).unwrap();
    let fps: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["fingerprint"].as_str().unwrap())
        .collect();
    assert_eq!(fps, vec![public.as_str()]);
    let c2 = unique("ss");
    cli.ok(&b, &["launch", "tree:bb", &c2]);
    let (code, hostname) = b.sh(&c2, "cat /etc/hostname");
    assert_eq!((code, hostname.trim()), (0, c2.as_str()));
    b.op_ok(
        "PUT",
        &format!("/1.0/instances/{c2}/state"),
        r#"{"action":"stop","force":true}"#,
    );

    // And LXD's own client (which trusts the CA through SSL_CERT_FILE, as Go does).
    if Command::new("lxc").arg("--version").output().is_ok() {
        let conf = dir.join("lxc");
        let lxc = |args: &[&str]| {
            let out = Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", b.netns))
                .arg("lxc")
                .args(args)
                .env("LXD_DIR", &b.dir)
                .env("LXD_CONF", &conf)
                .env("SSL_CERT_FILE", &ca)
                .stdin(Stdio::null())
                .output()
                .expect("lxc");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(
                out.status.success(),
                "lxc {args:?}: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            text
        };
        lxc(&["remote", "add", "tree", A_URL, "--protocol", "simplestreams"]);
        let listed = lxc(&["image", "list", "tree:", "--format", "csv"]);
        assert!(
            listed.contains(&public[..12]) && !listed.contains(&private[..12]),
            "{listed}"
        );
        let c3 = unique("ss");
        lxc(&["init", "tree:bb", &c3]);
        assert_eq!(
            b.get(&format!("/1.0/instances/{c3}"))["config"]["volatile.base_image"],
            public.as_str()
        );
    } else {
        skip(test, "the lxc client part: lxc is not installed");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// SHA-256 of a PEM certificate's DER (the fingerprint `corral remote add` shows).
fn cert_fingerprint(pem: &str) -> String {
    corral_simplestreams::certificate_fingerprint(
        &corral_client::transport::pem_to_der(pem).expect("a PEM certificate"),
    )
}

#[test]
fn a_self_signed_simplestreams_server_is_pinned_and_a_changed_certificate_refused() {
    let Some((mut a, b, public, _)) = servers("isv-pin", &[]) else {
        return;
    };
    // A serves its tree over HTTPS with its own self-signed certificate: no root vouches for it.
    let pem = certificate(&a);
    let fp = cert_fingerprint(&pem);
    let cli = Cli::new("pin");
    let add = ["remote", "add", "tree", A_URL, "--protocol", "simplestreams"];
    let out = cli.run(&b, &add);
    assert!(!out.status.success());
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(stdout.contains(&fp), "{stdout}");
    assert!(stderr.contains("--accept-certificate"), "{stderr}");
    assert!(!cli.conf.join("servercerts/tree.crt").exists());
    let out = cli.ok(&b, &[&add[..], &["--accept-certificate"]].concat());
    assert!(out.contains(&format!("Certificate fingerprint: {fp}")), "{out}");
    let pinned = std::fs::read_to_string(cli.conf.join("servercerts/tree.crt")).unwrap();
    assert_eq!(cert_fingerprint(&pinned), fp);
    // The CLI reads the tree, and daemon B downloads from it, with that certificate only.
    let list = cli.ok(&b, &["image", "list", "tree:", "-f", "json"]);
    assert!(list.contains(&public), "{list}");
    let c1 = unique("pin");
    cli.ok(&b, &["launch", "tree:bb", &c1]);
    let inst = b.get(&format!("/1.0/instances/{c1}"));
    assert_eq!(inst["config"]["volatile.base_image"], public.as_str(), "{inst}");
    let source = b.get(&format!("/1.0/images/{public}"))["update_source"].clone();
    assert_eq!(source["protocol"], "simplestreams", "{source}");
    assert_eq!(cert_fingerprint(source["certificate"].as_str().unwrap()), fp);

    // A's certificate changes (made anew at its next start): refused by the CLI and by the
    // daemon, naming both fingerprints.
    std::fs::remove_file(a.dir.join("server.crt")).unwrap();
    std::fs::remove_file(a.dir.join("server.key")).unwrap();
    a.crash();
    a.spawn();
    wait_until("A serves HTTPS again", Duration::from_secs(20), || {
        untrusted(&b, "/1.0").0 == 200
    });
    let new_fp = cert_fingerprint(&certificate(&a));
    assert_ne!(new_fp, fp);
    let err = cli.err(&b, &["image", "list", "tree:"]);
    assert!(err.contains(&fp) && err.contains(&new_fp), "{err}");
    cli.ok(&b, &["delete", &c1, "--force"]);
    cli.ok(&b, &["image", "delete", &public]);
    let err = cli.err(&b, &["launch", "tree:bb", &unique("pin2")]);
    assert!(err.contains(&fp) && err.contains(&new_fp), "{err}");
    assert_eq!(b.get("/1.0/images").as_array().unwrap().len(), 0);
    assert_eq!(b.get("/1.0/instances").as_array().unwrap().len(), 0);
}

fn sha256_file(path: &Path) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(std::fs::read(path).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The whole journey of an image on one machine, its fingerprint compared wherever it must stay
/// the same: built by `corral image build` (the busybox recipe, offline, in this test) → imported
/// on daemon A → served by A as a simplestreams tree over HTTPS (its self-signed certificate
/// pinned by B's remote) → launched on daemon B (own namespace, over the veth) → published on B
/// → exported → imported on A. Publishing legitimately makes a new image (a new tarball of the
/// instance's tree, new metadata and creation date): fingerprints equal within each half.
#[test]
fn an_image_goes_build_import_serve_launch_publish_export_import_with_its_fingerprint() {
    let test = "an_image_goes_build_import_serve_launch_publish_export_import_with_its_fingerprint";
    let Some(rootfs) = require(test, "busybox") else { return };
    let work = std::env::temp_dir().join(format!("corral-roundtrip-{}", unique("rt")));
    std::fs::create_dir_all(&work).unwrap();
    // 1. Build: the builder's fingerprint is the file's sha256.
    let deb = make_deb(&rootfs, &work);
    let out = build(
        &busybox_recipe(&deb, ""),
        &work,
        &[
            "-o",
            work.join("built").to_str().unwrap(),
            "--format",
            "both",
            "--compression",
            "gz",
        ],
    );
    assert!(out.status.success(), "build: {}", String::from_utf8_lossy(&out.stderr));
    let ((built_fp, built_file), _) = parse_built(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(sha256_file(&built_file), built_fp);

    // 2. Imported on A: the same fingerprint.
    let a = TestDaemon::start("rt-a");
    let b = TestDaemon::start("rt-b");
    link(&a, &b);
    a.corral_ok(&["config", "set", "core.https_address", A_ADDR]);
    let out = a.corral_ok(&[
        "image",
        "import",
        built_file.to_str().unwrap(),
        "--alias",
        "bb",
        "--public",
    ]);
    assert!(out.contains(&built_fp), "{out}");

    // 3. Served by A as a simplestreams tree: its item names the same fingerprint.
    let cli = Cli::new("rt");
    cli.ok(
        &b,
        &[
            "remote",
            "add",
            "a",
            A_URL,
            "--protocol",
            "simplestreams",
            "--accept-certificate",
        ],
    );
    let listed = cli.ok(&b, &["image", "info", "a:bb"]);
    assert!(listed.contains(&format!("Fingerprint: {built_fp}")), "{listed}");

    // 4. Launched on B: B's cached copy and the instance's base image are the same image.
    let c1 = unique("rt");
    cli.ok(&b, &["launch", "a:bb", &c1]);
    let inst = b.get(&format!("/1.0/instances/{c1}"));
    assert_eq!(inst["config"]["volatile.base_image"], built_fp.as_str(), "{inst}");
    assert_eq!(b.get(&format!("/1.0/images/{built_fp}"))["cached"], true);
    let exported_b = work.join("from-b-cache");
    std::fs::create_dir_all(&exported_b).unwrap();
    cli.ok(&b, &["image", "export", &built_fp, exported_b.to_str().unwrap()]);
    let cached_file = std::fs::read_dir(&exported_b).unwrap().flatten().next().unwrap().path();
    assert_eq!(sha256_file(&cached_file), built_fp, "B's copy is byte for byte A's");
    let (code, bb_sum) = b.sh(&c1, "sha256sum /bin/busybox; echo made-on-b > /root/marker");
    assert_eq!(code, 0);

    // 5. Published on B: a new image (another fingerprint), whose stored file is its sha256.
    let out = cli.ok(&b, &["publish", &c1, "--alias", "pub", "--force"]);
    let pub_fp = out.trim().rsplit(' ').next().unwrap().to_string();
    assert_eq!(pub_fp.len(), 64, "{out}");
    assert_ne!(pub_fp, built_fp, "publish makes a new image");

    // 6. Exported from B: the file's sha256 is the published fingerprint.
    let exported = work.join("export");
    std::fs::create_dir_all(&exported).unwrap();
    cli.ok(&b, &["image", "export", "pub", exported.to_str().unwrap()]);
    let files: Vec<_> = std::fs::read_dir(&exported)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(files.len(), 1, "a unified image: {files:?}");
    assert_eq!(sha256_file(&files[0]), pub_fp);

    // 7. Imported on A: the same fingerprint again, and it launches with B's marker and the
    // built busybox.
    let out = a.corral_ok(&["image", "import", files[0].to_str().unwrap(), "--alias", "back"]);
    assert!(out.contains(&pub_fp), "{out}");
    let c2 = unique("back");
    a.launch(&c2, "back");
    assert_eq!(
        a.get(&format!("/1.0/instances/{c2}"))["config"]["volatile.base_image"],
        pub_fp.as_str()
    );
    let (code, text) = a.sh(&c2, "sha256sum /bin/busybox; cat /root/marker");
    assert_eq!(code, 0);
    assert_eq!(text, format!("{bb_sum}made-on-b\n"));
    let _ = std::fs::remove_dir_all(&work);
}
