//! The HTTPS API and its trust store: tokens (single use, expiry), untrusted and wrong
//! certificates refused, `corral remote` and the `lxc` 5.0 client adding corrald as a remote.
//! Every daemon listens on 127.0.0.1 inside its own network namespace; clients run there too.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use corral_api::certificate::{base64_decode, base64_encode};
use support::*;

const ADDR: &str = "127.0.0.1:8443";

/// A client configuration directory of its own (a "machine" with its own certificate).
struct ClientHome {
    dir: PathBuf,
}

impl ClientHome {
    fn new(tag: &str) -> ClientHome {
        let dir = std::env::temp_dir().join(format!("corral-client-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        ClientHome { dir }
    }

    /// `corral` with this configuration, in the daemon's network namespace.
    fn corral(&self, d: &TestDaemon, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", d.netns))
            .arg(corral_cli())
            .args(args)
            .env("CORRAL_CONF", &self.dir)
            // No local daemon for this client: `local:` must not be the daemon under test.
            .env("CORRAL_DIR", self.dir.join("no-daemon"))
            .stdin(Stdio::null())
            .output()
            .expect("corral")
    }

    fn corral_ok(&self, d: &TestDaemon, args: &[&str]) -> String {
        let out = self.corral(d, args);
        assert!(
            out.status.success(),
            "corral {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn corral_err(&self, d: &TestDaemon, args: &[&str]) -> String {
        let out = self.corral(d, args);
        assert!(!out.status.success(), "corral {args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `lxc` 5.0 with this configuration, in the daemon's network namespace.
    fn lxc(&self, d: &TestDaemon, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", d.netns))
            .arg("lxc")
            .args(args)
            .env("LXD_CONF", self.dir.join("lxc"))
            .env("LXD_DIR", self.dir.join("no-daemon"))
            .stdin(Stdio::null())
            .output()
            .expect("lxc")
    }

    fn lxc_ok(&self, d: &TestDaemon, args: &[&str]) -> String {
        let out = self.lxc(d, args);
        assert!(
            out.status.success(),
            "lxc {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for ClientHome {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// curl over HTTPS inside the daemon's namespace, with an optional client certificate: the
/// status and the JSON body.
fn https(
    d: &TestDaemon,
    method: &str,
    path: &str,
    cert: Option<&Path>,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let url = format!("https://{ADDR}{path}");
    let mut args = vec!["curl", "-sk", "-X", method, "-w", "\n%{http_code}"];
    let (crt, key);
    if let Some(dir) = cert {
        crt = dir.join("client.crt").display().to_string();
        key = dir.join("client.key").display().to_string();
        args.extend(["--cert", &crt, "--key", &key]);
    }
    if let Some(b) = body {
        args.extend(["-d", b]);
    }
    args.push(&url);
    let out = d.in_netns(&args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (json, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        code.trim().parse().unwrap_or(0),
        serde_json::from_str(json).unwrap_or_default(),
    )
}

fn token(d: &TestDaemon, name: &str) -> String {
    let out = d.corral_ok(&["config", "trust", "add", name]);
    out.lines().last().unwrap().trim().to_string()
}

fn listen(d: &TestDaemon) {
    d.corral_ok(&["config", "set", "core.https_address", ADDR]);
}

#[test]
fn https_is_off_until_configured_and_bad_addresses_change_nothing() {
    let test = "https_is_off_until_configured_and_bad_addresses_change_nothing";
    if skip_unless_root(test) {
        return;
    }
    let d = TestDaemon::start("https-config");
    let err = String::from_utf8_lossy(&d.corral(&["config", "trust", "add", "x"]).stderr).into_owned();
    assert!(err.contains("set core.https_address first"), "{err}");
    let (code, _) = https(&d, "GET", "/1.0", None, None);
    assert_eq!(code, 0, "nothing listens before core.https_address is set");

    d.refused(
        "PATCH",
        "/1.0",
        Some(r#"{"config":{"core.https_address":"example.com:8443"}}"#),
        400,
        "is not an address to listen on",
    );
    d.refused(
        "PATCH",
        "/1.0",
        Some(r#"{"config":{"core.trust_password":"x"}}"#),
        400,
        "add clients with a token",
    );
    // Taken by someone else: refused, and the configuration stays empty.
    let mut holder = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", d.netns))
        .args(["socat", "TCP-LISTEN:9443,bind=127.0.0.1,reuseaddr", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(std::time::Duration::from_secs(5), || {
        let o = d.in_netns(&["ss", "-ltn"]);
        String::from_utf8_lossy(&o.stdout)
            .contains("127.0.0.1:9443")
            .then_some(())
    })
    .expect("socat listens");
    d.refused(
        "PATCH",
        "/1.0",
        Some(r#"{"config":{"core.https_address":"127.0.0.1:9443"}}"#),
        400,
        "cannot listen on 127.0.0.1:9443",
    );
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(d.get("/1.0")["config"], serde_json::json!({}));

    listen(&d);
    let server = d.get("/1.0");
    assert_eq!(server["config"]["core.https_address"], ADDR);
    assert_eq!(server["environment"]["addresses"], serde_json::json!([ADDR]));
    assert_eq!(
        server["environment"]["certificate_fingerprint"].as_str().unwrap().len(),
        64
    );
    let (code, public) = https(&d, "GET", "/1.0", None, None);
    assert_eq!((code, public["metadata"]["auth"].as_str()), (200, Some("untrusted")));
    assert_eq!(
        public["metadata"]["config"],
        serde_json::json!({}),
        "no configuration for untrusted clients"
    );

    // Survives a restart; unsetting closes it.
    let mut d = d;
    d.crash();
    d.spawn();
    let (code, _) = https(&d, "GET", "/1.0", None, None);
    assert_eq!(code, 200, "listening again after a restart");
    d.corral_ok(&["config", "unset", "core.https_address"]);
    let (code, _) = https(&d, "GET", "/1.0", None, None);
    assert_eq!(code, 0);
}

#[test]
fn a_token_admits_one_client_once_and_untrusted_clients_are_refused() {
    let test = "a_token_admits_one_client_once_and_untrusted_clients_are_refused";
    if skip_unless_root(test) {
        return;
    }
    let d = TestDaemon::start("trust-token");
    listen(&d);
    let laptop = ClientHome::new("laptop");
    let stranger = ClientHome::new("stranger");

    // Untrusted: only the public view.
    let (code, body) = https(&d, "GET", "/1.0/instances", None, None);
    assert_eq!(code, 403);
    assert!(body["error"].as_str().unwrap().contains("not trusted"), "{body}");

    let tok = token(&d, "laptop");
    let listed = d.corral_ok(&["config", "trust", "list-tokens", "-f", "csv"]);
    assert!(listed.contains("laptop"), "{listed}");
    laptop.corral_ok(&d, &["remote", "add", "h1", &tok]);
    assert!(
        d.corral_ok(&["config", "trust", "list-tokens", "-f", "csv"])
            .trim()
            .is_empty(),
        "a used token is gone"
    );
    let certs = d.get("/1.0/certificates?recursion=1");
    assert_eq!(certs[0]["name"], "laptop", "{certs}");
    let fp = certs[0]["fingerprint"].as_str().unwrap().to_string();

    // The remote works: the laptop creates and lists an instance on h1.
    laptop.corral_ok(
        &d,
        &[
            "query",
            "-X",
            "POST",
            "--wait",
            "-d",
            r#"{"name":"e1","source":{"type":"none"}}"#,
            "h1:/1.0/instances",
        ],
    );
    let list = laptop.corral_ok(&d, &["list", "h1:", "-f", "csv", "-c", "n"]);
    assert_eq!(list.trim(), "e1");
    let listed = laptop.corral_ok(&d, &["remote", "list", "-f", "csv"]);
    assert!(listed.contains("h1,https://127.0.0.1:8443"), "{listed}");

    // Used once: another client cannot reuse it.
    let err = stranger.corral_err(&d, &["remote", "add", "h1", &tok]);
    assert!(err.contains("already used"), "{err}");
    let (code, _) = https(&d, "GET", "/1.0/instances", Some(&stranger.dir), None);
    assert_eq!(code, 403, "a certificate that is not in the trust store gets nothing");

    // A token whose fingerprint is not the server's is refused before anything is sent.
    let mut forged: serde_json::Value = serde_json::from_slice(&base64_decode(&token(&d, "forged")).unwrap()).unwrap();
    forged["fingerprint"] = serde_json::json!("00".repeat(32));
    let forged = base64_encode(&serde_json::to_vec(&forged).unwrap());
    let err = stranger.corral_err(&d, &["remote", "add", "h1", &forged]);
    assert!(err.contains("fingerprint mismatch"), "{err}");

    // Revoked tokens and expired tokens.
    let tok = token(&d, "later");
    d.corral_ok(&["config", "trust", "revoke-token", "later"]);
    let err = stranger.corral_err(&d, &["remote", "add", "h1", &tok]);
    assert!(err.contains("already used, revoked or has expired"), "{err}");
    d.corral_ok(&["config", "set", "core.remote_token_expiry", "1S"]);
    let tok = token(&d, "slow");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let err = stranger.corral_err(&d, &["remote", "add", "h1", &tok]);
    assert!(err.contains("expired"), "{err}");
    d.corral_ok(&["config", "unset", "core.remote_token_expiry"]);

    // Removing the certificate takes the access away.
    d.corral_ok(&["config", "trust", "remove", &fp[..12]]);
    let err = laptop.corral_err(&d, &["list", "h1:"]);
    assert!(err.contains("not trusted"), "{err}");

    // A server whose certificate changed is not talked to.
    let tok = token(&d, "laptop2");
    laptop.corral_ok(&d, &["remote", "add", "h2", &tok]);
    std::fs::remove_file(d.dir.join("server.crt")).unwrap();
    std::fs::remove_file(d.dir.join("server.key")).unwrap();
    let mut d = d;
    d.crash();
    d.spawn();
    let err = laptop.corral_err(&d, &["list", "h2:"]);
    assert!(err.contains("certificate changed"), "{err}");
}

#[test]
fn restricted_certificates_cannot_change_the_server() {
    let test = "restricted_certificates_cannot_change_the_server";
    if skip_unless_root(test) {
        return;
    }
    let d = TestDaemon::start("trust-restricted");
    listen(&d);
    let ci = ClientHome::new("ci");
    let out = d.corral_ok(&["config", "trust", "add", "ci", "--restricted", "--projects", "default"]);
    ci.corral_ok(&d, &["remote", "add", "h1", out.lines().last().unwrap().trim()]);
    ci.corral_ok(&d, &["list", "h1:"]);
    // Restricted to no project: nothing but the server's public face.
    let nobody = ClientHome::new("nobody");
    let out = d.corral_ok(&["config", "trust", "add", "nobody", "--restricted"]);
    nobody.corral_ok(&d, &["remote", "add", "h1", out.lines().last().unwrap().trim()]);
    let err = nobody.corral_err(&d, &["list", "h1:"]);
    assert!(err.contains("do not include \"default\""), "{err}");
    let err = ci.corral_err(&d, &["config", "set", "h1:", "core.remote_token_expiry", "1H"]);
    assert!(err.contains("restricted"), "{err}");
    let err = ci.corral_err(&d, &["config", "trust", "add", "h1:more"]);
    assert!(err.contains("restricted"), "{err}");
}

#[test]
fn the_lxc_client_adds_corrald_with_a_token_and_runs_a_container_on_it() {
    let test = "the_lxc_client_adds_corrald_with_a_token_and_runs_a_container_on_it";
    if skip_unless_root(test) || skip_unless_lxc(test) {
        return;
    }
    let Some(image) = busybox_image(test) else { return };
    let d = TestDaemon::start("trust-lxc");
    d.import(&image, "busybox");
    listen(&d);
    let home = ClientHome::new("lxc");
    let tok = token(&d, "lxc-user");
    home.lxc_ok(&d, &["remote", "add", "h1", &tok]);
    home.lxc_ok(&d, &["launch", "h1:busybox", "h1:c1"]);
    let out = home.lxc_ok(&d, &["exec", "h1:c1", "--", "echo", "hello over https"]);
    assert_eq!(out.trim(), "hello over https");
    let list = home.lxc_ok(&d, &["list", "h1:", "-c", "ns", "--format", "csv"]);
    assert_eq!(list.trim(), "c1,RUNNING");
    let trusted = home.lxc_ok(&d, &["config", "trust", "list", "h1:", "--format", "csv"]);
    assert!(trusted.contains("lxc-user"), "{trusted}");
    // corral's own exec over HTTPS: with a terminal (`script` gives it one) and with pipes.
    home.corral_ok(&d, &["remote", "add", "h1", &token(&d, "corral-user")]);
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", d.netns))
        .args([
            "script",
            "-qec",
            &format!("{} exec -t h1:c1 -- sh -c 'tty; exit 4'", corral_cli().display()),
            "/dev/null",
        ])
        .env("CORRAL_CONF", &home.dir)
        .env("CORRAL_DIR", home.dir.join("no-daemon"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("/dev/pts/"), "the command has a terminal: {text:?}");
    assert_eq!(out.status.code(), Some(4), "{text:?}");
    let out = home.corral(&d, &["exec", "h1:c1", "--", "sh", "-c", "echo piped; exit 3"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "piped");
    assert_eq!(out.status.code(), Some(3));
    home.lxc_ok(&d, &["delete", "-f", "h1:c1"]);
}
