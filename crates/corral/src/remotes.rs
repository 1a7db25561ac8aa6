//! Remotes: lxc names a server with a `remote:` prefix (`local:c1`, `h2:c1`). `local` is the
//! daemon on this host's unix socket; others are corrald (or LXD, Incus) HTTPS APIs added with a
//! trust token or by accepting their certificate's fingerprint.
//!
//! Everything lives in the client's configuration directory (`$CORRAL_CONF`, default
//! `~/.config/corral`), laid out as lxc's: `config.yml` (remotes and the default one),
//! `client.crt`/`client.key` (this client's certificate, made on first use) and
//! `servercerts/<remote>.crt` (each remote's certificate, pinned).
//!
//! Image servers are remotes too: `--protocol simplestreams` (a static tree over http(s): the
//! host's roots check https, or, for a server they do not vouch for, its certificate accepted
//! by fingerprint and pinned as an LXD server's is), and `--public` LXD-protocol servers
//! (another corrald, LXD or Incus whose public images need no trust; the certificate is still
//! pinned). For `launch`/`init` and `image copy`, such a remote is where the image comes from:
//! the instance's (or target's) remote decides which daemon the command talks to, and the
//! image remote is handed to that daemon as `source.server`/`protocol`/`certificate`.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{anyhow, bail, Context, Result};
use clap::Subcommand;
use corral_api::CertificateAddToken;
use corral_client::{Client, ClientIdentity, Remote, ServerTrust};
use serde::{Deserialize, Serialize};

use crate::output::{print_list, Format, Table};

/// The remote on this host's unix socket.
pub const LOCAL: &str = "local";

#[derive(Subcommand)]
#[command(defer = true)]
pub enum RemoteCmd {
    /// List the remotes
    #[command(
        alias = "ls",
        after_help = "Examples:\n  corral remote list\n  corral remote list -f yaml"
    )]
    List {
        #[arg(short = 'f', long = "format", value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Add a remote: from a trust token, or an address whose certificate you accept
    #[command(
        after_help = "Examples:\n  corral remote add h2 <token from `corral config trust add NAME` on h2>\n  \
                            corral remote add h2 https://10.0.0.2:8443 --accept-certificate --token <token>\n  \
                            corral remote add h2 10.0.0.2 --accept-certificate   # if h2 already trusts this client\n  \
                            corral remote add tree https://10.0.0.2:8443 --protocol simplestreams --accept-certificate\n\n\
                            An https simplestreams server whose certificate no root of this host vouches for (a \
                            self-signed one, such as another corrald's) has its certificate pinned as an LXD server's \
                            is: accepted by fingerprint, then the only one taken for that remote."
    )]
    Add {
        name: String,
        /// A trust token, or the server's address (`https://host:8443`, `host`, `host:port`)
        target: String,
        /// Trust the server's certificate without asking (its fingerprint is printed)
        #[arg(long)]
        accept_certificate: bool,
        /// A trust token, when the target is an address
        #[arg(long)]
        token: Option<String>,
        /// `corral` (LXD's API, also `lxd` or `incus`), or `simplestreams` for a static image server
        #[arg(long, default_value = "corral")]
        protocol: String,
        /// An image server whose public images need no trust (no token, no client certificate)
        #[arg(long)]
        public: bool,
    },
    /// Remove a remote
    #[command(alias = "rm", after_help = "Example:\n  corral remote remove h2")]
    Remove { name: String },
    /// Rename a remote
    #[command(after_help = "Example:\n  corral remote rename h2 prod")]
    Rename { old: String, new: String },
    /// Make a remote the default for commands without a `remote:` prefix
    #[command(after_help = "Example:\n  corral remote switch h2")]
    Switch { name: String },
    /// Print the default remote
    GetDefault,
    /// Change a remote's address (its certificate must stay the same)
    #[command(after_help = "Example:\n  corral remote set-url h2 https://10.0.0.3:8443")]
    SetUrl { name: String, url: String },
}

/// One remote in config.yml, with lxc's field names.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
#[serde(default)]
pub struct RemoteEntry {
    pub addr: String,
    pub protocol: String,
    pub auth_type: String,
    pub public: bool,
}

/// config.yml.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
#[serde(default)]
pub struct ClientConfig {
    #[serde(rename = "default-remote")]
    pub default_remote: String,
    pub remotes: BTreeMap<String, RemoteEntry>,
}

/// An image server remote, as the daemon is told of it (`source.server`, `protocol`,
/// `certificate`).
#[derive(Clone, Debug, Default)]
pub struct ImageServer {
    pub name: String,
    pub url: String,
    /// `simplestreams` or `lxd`.
    pub protocol: String,
    /// The pinned certificate (PEM) of an LXD-protocol server.
    pub certificate: String,
}

/// The image server that remote `name` is, for an image source (any remote but `local`).
pub fn image_server(name: &str) -> Result<Option<ImageServer>> {
    if name == LOCAL {
        return Ok(None);
    }
    let cfg = ClientConfig::load()?;
    let Some(entry) = cfg.remotes.get(name) else {
        return Ok(None);
    };
    let certificate = if entry.protocol == "simplestreams" {
        // Pinned only for an https server whose certificate no root of the host vouches for.
        std::fs::read_to_string(server_cert_path(name)).unwrap_or_default()
    } else {
        std::fs::read_to_string(server_cert_path(name))
            .with_context(|| format!("the certificate of remote {name:?} is missing: add the remote again"))?
    };
    let protocol = if entry.protocol == "simplestreams" {
        "simplestreams"
    } else {
        "lxd"
    };
    Ok(Some(ImageServer {
        name: name.to_string(),
        url: entry.addr.clone(),
        protocol: protocol.into(),
        certificate,
    }))
}

/// The remote this command works on (see [`select`]).
pub fn current_remote() -> &'static str {
    current()
}

/// The client's configuration directory.
pub fn conf_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CORRAL_CONF").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".config/corral")
}

impl ClientConfig {
    pub fn load() -> Result<ClientConfig> {
        let path = conf_dir().join("config.yml");
        let mut cfg: ClientConfig = match std::fs::read_to_string(&path) {
            Ok(text) => serde_saphyr::from_str(&text).with_context(|| format!("cannot read {}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => ClientConfig::default(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        if cfg.default_remote.is_empty() {
            cfg.default_remote = LOCAL.into();
        }
        Ok(cfg)
    }

    fn save(&self) -> Result<()> {
        let dir = conf_dir();
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let tmp = dir.join(".config.yml.tmp");
        std::fs::write(&tmp, crate::output::yaml(self)?)?;
        std::fs::rename(&tmp, dir.join("config.yml"))?;
        Ok(())
    }
}

fn server_cert_path(name: &str) -> PathBuf {
    conf_dir().join("servercerts").join(format!("{name}.crt"))
}

/// This client's certificate and key, made on first use (ECDSA P-384, as lxc's).
pub fn client_identity() -> Result<ClientIdentity> {
    let dir = conf_dir();
    let (crt, key) = (dir.join("client.crt"), dir.join("client.key"));
    if !crt.exists() || !key.exists() {
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)?;
        let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Corral");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{user}@{}", host.trim()));
        let today = chrono::Utc::now().date_naive() - chrono::Days::new(1);
        use chrono::Datelike;
        params.not_before = rcgen::date_time_ymd(today.year(), today.month() as u8, today.day() as u8);
        params.not_after = rcgen::date_time_ymd(today.year() + 10, today.month() as u8, today.day().min(28) as u8);
        let cert = params.self_signed(&pair)?;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&key)?;
        f.write_all(pair.serialize_pem().as_bytes())?;
        std::fs::write(&crt, cert.pem())?;
    }
    Ok(ClientIdentity {
        cert_pem: std::fs::read_to_string(&crt).with_context(|| format!("cannot read {}", crt.display()))?,
        key_pem: std::fs::read_to_string(&key).with_context(|| format!("cannot read {}", key.display()))?,
    })
}

/// `https://host:port` from what a user types (`host`, `host:port`, `https://host`).
fn normalize_url(target: &str) -> Result<String> {
    let t = target.trim().trim_end_matches('/');
    let hostport = t.strip_prefix("https://").unwrap_or(t);
    if hostport.contains("://") {
        bail!("only https:// remotes are supported for instances: {target:?}");
    }
    if hostport.is_empty() {
        bail!("no address in {target:?}");
    }
    let has_port = if let Some(rest) = hostport.strip_prefix('[') {
        rest.contains("]:")
    } else {
        hostport.matches(':').count() == 1
    };
    let hostport = if has_port {
        hostport.to_string()
    } else if hostport.contains(':') && !hostport.starts_with('[') {
        format!("[{hostport}]:8443")
    } else {
        format!("{hostport}:8443")
    };
    Ok(format!("https://{hostport}"))
}

/// A client for a remote by name (`local` or one in config.yml).
pub fn client_for(name: &str) -> Result<Client> {
    if name == LOCAL {
        return Ok(Client::from_env());
    }
    let cfg = ClientConfig::load()?;
    let entry = cfg
        .remotes
        .get(name)
        .ok_or_else(|| anyhow!("Remote {name:?} doesn't exist (see `corral remote list`)"))?;
    if entry.protocol == "simplestreams" {
        // Not a daemon: the image commands read its tree themselves (images.rs); anything
        // else on it is refused there or by the local daemon's answer.
        return Ok(Client::from_env());
    }
    let pem = std::fs::read_to_string(server_cert_path(name))
        .with_context(|| format!("the certificate of remote {name:?} is missing: add the remote again"))?;
    let der = corral_client::transport::pem_to_der(&pem)
        .ok_or_else(|| anyhow!("{} holds no certificate", server_cert_path(name).display()))?;
    let remote = Remote::new(&entry.addr, Some(&client_identity()?), ServerTrust::Pinned(der))?;
    Ok(Client::remote(remote))
}

/// The remote this command works on: set once by `main` from its arguments.
static CURRENT: OnceLock<String> = OnceLock::new();

/// Chooses the remote for this command: the first argument (before `--`) with a known remote's
/// prefix, else the default remote. Returns its name.
pub fn select(args: &[String]) -> Result<String> {
    let cfg = ClientConfig::load()?;
    let known = |r: &str| r == LOCAL || cfg.remotes.contains_key(r);
    let skip = image_source_arg(args);
    let chosen = args
        .iter()
        .enumerate()
        .skip(1)
        .take_while(|(_, a)| a.as_str() != "--")
        .filter(|(i, a)| !a.starts_with('-') && Some(*i) != skip)
        .filter_map(|(_, a)| a.split_once(':').map(|(r, _)| r))
        .find(|r| known(r))
        .map(String::from)
        .unwrap_or_else(|| cfg.default_remote.clone());
    let _ = CURRENT.set(chosen.clone());
    Ok(chosen)
}

/// Options of `launch`/`init` and `image copy` that take a value (so that the value is not
/// taken for a positional argument).
const VALUE_OPTIONS: &[&str] = &[
    "-c",
    "--config",
    "-p",
    "--profile",
    "-s",
    "--storage",
    "-n",
    "--network",
    "--description",
    "--alias",
    "--target",
    "-t",
    "--type",
];

/// The index in `args` of the image argument of `launch`/`init` (its first positional
/// argument) and of `image copy` (its source), which names an image server rather than the
/// remote the command works on.
fn image_source_arg(args: &[String]) -> Option<usize> {
    let mut positional = Vec::new();
    let mut i = 1;
    while i < args.len() && args[i] != "--" {
        let a = &args[i];
        if VALUE_OPTIONS.contains(&a.as_str()) {
            i += 2;
            continue;
        }
        if !a.starts_with('-') {
            positional.push(i);
        }
        i += 1;
    }
    let word = |n: usize| positional.get(n).map(|&i| args[i].as_str());
    match word(0)? {
        "launch" | "init" | "create" => positional.get(1).copied(),
        "image" if word(1) == Some("copy") || word(1) == Some("cp") => positional.get(2).copied(),
        _ => None,
    }
}

fn current() -> &'static str {
    CURRENT.get().map(String::as_str).unwrap_or(LOCAL)
}

/// `name` without its remote prefix: `c1`, `h2:c1` when this command works on `h2`. A prefix
/// naming another remote is an error that names it.
pub fn local_name(name: &str) -> Result<&str> {
    match name.split_once(':') {
        None => Ok(name),
        Some((r, rest)) if r == current() => Ok(rest),
        Some((r, _)) => {
            let cfg = ClientConfig::load().unwrap_or_default();
            if r == LOCAL || cfg.remotes.contains_key(r) {
                bail!(
                    "this command works on remote {:?}; {name:?} is on remote {r:?}: one remote per command",
                    current()
                )
            }
            bail!("Remote {r:?} doesn't exist (see `corral remote list`)")
        }
    }
}

/// A bare `remote:` argument (`corral list h2:`): fine if it names this command's remote.
pub fn check_remote_arg(arg: &str) -> Result<()> {
    let rest = local_name(arg)?;
    if !rest.is_empty() {
        bail!("expected a remote (\"{}:\"), not {arg:?}", current());
    }
    Ok(())
}

/// Connects once without trusting the server yet, and returns its certificate (DER).
fn fetch_certificate(url: &str) -> Result<Vec<u8>> {
    fetch_certificate_as(url, Some(&client_identity()?))
}

/// [`fetch_certificate`], presenting `identity` (or no client certificate).
fn fetch_certificate_as(url: &str, identity: Option<&ClientIdentity>) -> Result<Vec<u8>> {
    let slot = Arc::new(Mutex::new(None));
    let remote = Remote::new(url, identity, ServerTrust::Record(slot.clone()))?;
    Client::remote(remote)
        .connect()
        .with_context(|| format!("cannot reach {url}"))?;
    let der = slot.lock().map_err(|_| anyhow!("poisoned"))?.take();
    der.ok_or_else(|| anyhow!("{url} sent no certificate"))
}

/// Adds a simplestreams image server. Over https, its index is read: when the host's roots
/// vouch for its certificate, only the URL is kept (the certificate may be renewed); otherwise
/// (a self-signed server, such as another corrald) its certificate's fingerprint is shown and,
/// once accepted, the certificate is pinned in `servercerts/NAME.crt`: the only one taken for
/// this remote afterwards, here and by the daemon it is handed to.
fn add_simplestreams(cfg: &mut ClientConfig, name: &str, target: &str, accept: bool) -> Result<()> {
    let url = target.trim().trim_end_matches('/');
    if !(url.starts_with("https://") || url.starts_with("http://")) || url.len() <= "https://".len() {
        bail!("a simplestreams remote is a URL: http://HOST[:PORT][/PATH] or https://...; not {target:?}");
    }
    if let Some(rest) = url.strip_prefix("https://") {
        if let Err(by_roots) = corral_simplestreams::Client::new(url, Default::default())?.index() {
            let authority = rest.split('/').next().unwrap_or_default();
            let has_port = match authority.strip_prefix('[') {
                Some(v6) => v6.contains("]:"),
                None => authority.contains(':'),
            };
            let addr = if has_port {
                authority.to_string()
            } else {
                format!("{authority}:443")
            };
            let der = match fetch_certificate_as(&addr, None) {
                Ok(der) => der,
                // Not a certificate matter: the server is not there, or no image server.
                Err(_) => return Err(by_roots).context(format!("cannot add remote {name}")),
            };
            let fp = corral_client::transport::fingerprint(&der);
            if accept {
                outln!("Certificate fingerprint: {fp}");
            } else {
                confirm_fingerprint(&fp)?;
            }
            let pem = corral_api::certificate::der_to_pem(&der);
            let options = corral_simplestreams::ClientOptions {
                certificate: Some(pem.clone()),
                ..Default::default()
            };
            corral_simplestreams::Client::new(url, options)?
                .index()
                .with_context(|| format!("the server at {url} is no simplestreams image server"))?;
            let path = server_cert_path(name);
            std::fs::create_dir_all(path.parent().expect("servercerts has a parent"))?;
            std::fs::write(&path, pem)?;
        }
    }
    cfg.remotes.insert(
        name.to_string(),
        RemoteEntry {
            addr: url.to_string(),
            protocol: "simplestreams".into(),
            auth_type: "none".into(),
            public: true,
        },
    );
    cfg.save()
}

/// Adds a public LXD-protocol image server: its certificate is accepted (and pinned), no trust
/// is asked for.
fn add_public(cfg: &mut ClientConfig, name: &str, target: &str, accept: bool) -> Result<()> {
    let url = normalize_url(target)?;
    let der = fetch_certificate(&url)?;
    let fp = corral_client::transport::fingerprint(&der);
    if accept {
        outln!("Certificate fingerprint: {fp}");
    } else {
        confirm_fingerprint(&fp)?;
    }
    let remote = Remote::new(&url, None, ServerTrust::Pinned(der.clone()))?;
    let server: corral_api::Server = Client::remote(remote)
        .get("/1.0")
        .with_context(|| format!("the server at {url} does not answer LXD's API"))?;
    if server.api_version.is_empty() {
        bail!("the server at {url} does not answer LXD's API");
    }
    let path = server_cert_path(name);
    std::fs::create_dir_all(path.parent().expect("servercerts has a parent"))?;
    std::fs::write(&path, corral_api::certificate::der_to_pem(&der))?;
    cfg.remotes.insert(
        name.to_string(),
        RemoteEntry {
            addr: url,
            protocol: "lxd".into(),
            auth_type: "tls".into(),
            public: true,
        },
    );
    cfg.save()
}

fn add(name: &str, target: &str, accept: bool, token: Option<String>, protocol: &str, public: bool) -> Result<()> {
    if name == LOCAL || name.is_empty() || name.contains(':') || name.contains('/') {
        bail!("invalid remote name {name:?}: not \"local\", no ':' or '/'");
    }
    if !["corral", "lxd", "incus", "simplestreams"].contains(&protocol) {
        bail!("unsupported protocol {protocol:?}: use \"corral\" (LXD's API; also \"lxd\", \"incus\") or \"simplestreams\"");
    }
    let mut cfg = ClientConfig::load()?;
    if cfg.remotes.contains_key(name) {
        bail!("Remote {name} exists as <{}>", cfg.remotes[name].addr);
    }
    if protocol == "simplestreams" {
        return add_simplestreams(&mut cfg, name, target, accept);
    }
    if public {
        return add_public(&mut cfg, name, target, accept);
    }
    // A token alone says where the server is and which certificate it has.
    let (urls, token, expected) = match CertificateAddToken::decode(target) {
        Some(t) => {
            let urls = t
                .addresses
                .iter()
                .map(|a| normalize_url(a))
                .collect::<Result<Vec<_>>>()?;
            (urls, Some(target.to_string()), Some(t.fingerprint))
        }
        None => (vec![normalize_url(target)?], token, None),
    };
    let mut last_err = anyhow!("the token holds no address");
    for url in urls {
        let der = match fetch_certificate(&url) {
            Ok(d) => d,
            Err(e) => {
                last_err = e;
                continue;
            }
        };
        let fp = corral_client::transport::fingerprint(&der);
        match &expected {
            Some(want) if *want != fp => {
                bail!("Certificate fingerprint mismatch between the token and the server at {url}: {fp}")
            }
            Some(_) => {}
            None if accept => outln!("Certificate fingerprint: {fp}"),
            None => confirm_fingerprint(&fp)?,
        }
        let remote = Remote::new(&url, Some(&client_identity()?), ServerTrust::Pinned(der.clone()))?;
        let client = Client::remote(remote);
        let server: corral_api::Server = client.get("/1.0")?;
        if server.auth != "trusted" {
            let Some(token) = &token else {
                bail!(
                    "the server at {url} does not trust this client: give a trust token \
                     (`corral config trust add NAME` on the server, then `corral remote add {name} TOKEN`)"
                );
            };
            client
                .post(
                    "/1.0/certificates",
                    &serde_json::json!({"type": "client", "password": token, "trust_token": token}),
                )
                .context("the server refused the token")?;
            let server: corral_api::Server = client.get("/1.0")?;
            if server.auth != "trusted" {
                bail!("the server at {url} took the token but still does not trust this client");
            }
        }
        let path = server_cert_path(name);
        std::fs::create_dir_all(path.parent().expect("servercerts has a parent"))?;
        std::fs::write(&path, corral_api::certificate::der_to_pem(&der))?;
        cfg.remotes.insert(
            name.to_string(),
            RemoteEntry {
                addr: url,
                protocol: "lxd".into(),
                auth_type: "tls".into(),
                public: false,
            },
        );
        return cfg.save();
    }
    Err(last_err)
}

fn confirm_fingerprint(fp: &str) -> Result<()> {
    outln!("Certificate fingerprint: {fp}");
    if !std::io::stdin().is_terminal() {
        bail!("not trusting an unknown certificate without a terminal to ask: check the fingerprint and add --accept-certificate");
    }
    out!("ok (y/n/[fingerprint])? ");
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let answer = line.trim();
    if answer == "y" || answer == "yes" || answer == fp {
        return Ok(());
    }
    bail!("server certificate not accepted")
}

pub fn remote(cmd: RemoteCmd) -> Result<()> {
    match cmd {
        RemoteCmd::List { format } => list(format),
        RemoteCmd::Add {
            name,
            target,
            accept_certificate,
            token,
            protocol,
            public,
        } => add(&name, &target, accept_certificate, token, &protocol, public),
        RemoteCmd::Remove { name } => {
            let mut cfg = ClientConfig::load()?;
            if name == LOCAL {
                bail!("the \"local\" remote cannot be removed");
            }
            if cfg.remotes.remove(&name).is_none() {
                bail!("Remote {name} doesn't exist");
            }
            if cfg.default_remote == name {
                bail!("Can't remove the default remote: `corral remote switch local` first");
            }
            let _ = std::fs::remove_file(server_cert_path(&name));
            cfg.save()
        }
        RemoteCmd::Rename { old, new } => {
            let mut cfg = ClientConfig::load()?;
            if old == LOCAL {
                bail!("the \"local\" remote cannot be renamed");
            }
            if new == LOCAL
                || cfg.remotes.contains_key(&new)
                || new.contains(':')
                || new.contains('/')
                || new.is_empty()
            {
                bail!("invalid or existing remote name {new:?}");
            }
            let entry = cfg
                .remotes
                .remove(&old)
                .ok_or_else(|| anyhow!("Remote {old} doesn't exist"))?;
            cfg.remotes.insert(new.clone(), entry);
            if cfg.default_remote == old {
                cfg.default_remote = new.clone();
            }
            if server_cert_path(&old).exists() {
                std::fs::rename(server_cert_path(&old), server_cert_path(&new))?;
            }
            cfg.save()
        }
        RemoteCmd::Switch { name } => {
            let mut cfg = ClientConfig::load()?;
            if name != LOCAL && !cfg.remotes.contains_key(&name) {
                bail!("Remote {name} doesn't exist");
            }
            cfg.default_remote = name;
            cfg.save()
        }
        RemoteCmd::GetDefault => {
            outln!("{}", ClientConfig::load()?.default_remote);
            Ok(())
        }
        RemoteCmd::SetUrl { name, url } => {
            let mut cfg = ClientConfig::load()?;
            let url = normalize_url(&url)?;
            let entry = cfg
                .remotes
                .get_mut(&name)
                .ok_or_else(|| anyhow!("Remote {name} doesn't exist"))?;
            entry.addr = url;
            cfg.save()
        }
    }
}

fn list(format: Format) -> Result<()> {
    let cfg = ClientConfig::load()?;
    let mut all: BTreeMap<String, RemoteEntry> = cfg.remotes.clone();
    all.insert(
        LOCAL.into(),
        RemoteEntry {
            addr: Client::from_env().url(),
            protocol: "lxd".into(),
            auth_type: "file access".into(),
            public: false,
        },
    );
    let mut t = Table::new(["NAME", "URL", "PROTOCOL", "AUTH TYPE", "PUBLIC", "STATIC", "GLOBAL"]);
    let yes_no = |b: bool| if b { "YES" } else { "NO" }.to_string();
    for (name, r) in &all {
        let shown = if *name == cfg.default_remote {
            format!("{name} (current)")
        } else {
            name.clone()
        };
        t.row(vec![
            shown,
            r.addr.clone(),
            r.protocol.clone(),
            r.auth_type.clone(),
            yes_no(r.public),
            yes_no(name == LOCAL),
            "NO".into(),
        ]);
    }
    print_list(format, &t, &all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_names() {
        assert_eq!(local_name("c1").unwrap(), "c1");
        assert_eq!(local_name("local:c1").unwrap(), "c1");
        assert_eq!(local_name("c1/snap0").unwrap(), "c1/snap0");
        let err = local_name("prod:c1").unwrap_err().to_string();
        assert!(err.starts_with("Remote \"prod\" doesn't exist"), "{err}");
        assert!(check_remote_arg("local:").is_ok());
        assert!(check_remote_arg("images:").is_err());
        assert!(check_remote_arg("local:c1").is_err());
    }

    #[test]
    fn the_image_argument_is_not_the_commands_remote() {
        let args = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        assert_eq!(image_source_arg(&args("corral launch images:debian c1")), Some(2));
        assert_eq!(
            image_source_arg(&args("corral launch -p default -c a=b images:x h2:c1")),
            Some(6)
        );
        assert_eq!(
            image_source_arg(&args("corral image copy images:x local: --alias y")),
            Some(3)
        );
        assert_eq!(image_source_arg(&args("corral image list images:")), None);
        assert_eq!(image_source_arg(&args("corral list h2:")), None);
    }

    #[test]
    fn urls_get_https_and_the_default_port() {
        assert_eq!(normalize_url("10.0.0.2").unwrap(), "https://10.0.0.2:8443");
        assert_eq!(normalize_url("10.0.0.2:9443").unwrap(), "https://10.0.0.2:9443");
        assert_eq!(normalize_url("https://h2.example/").unwrap(), "https://h2.example:8443");
        assert_eq!(normalize_url("[::1]:8443").unwrap(), "https://[::1]:8443");
        assert_eq!(normalize_url("fd00::2").unwrap(), "https://[fd00::2]:8443");
        assert!(normalize_url("http://h2").is_err());
    }
}
