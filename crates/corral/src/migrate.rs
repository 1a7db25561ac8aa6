//! `corral copy` and `corral move`, on one server or between two (`h1:c1 h2:c2`), as lxc does
//! them: the client asks the source for a migration operation and the target to pull from it
//! (`--mode pull`, the default), or the target for one the source pushes to (`--mode push`,
//! chosen automatically when the source does not listen on the network).

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use corral_api::{Instance, InstancePost, InstancePostTarget, InstanceSource, InstancesPost, Operation, Server};
use corral_client::{encode_segment, Client};

use crate::instances::parse_pairs;
use crate::remotes::{self, ClientConfig, LOCAL};

#[derive(Args)]
pub struct CopyArgs {
    /// Source instance (or instance/snapshot, on one server), `remote:` before it for another server
    pub source: String,
    /// Name of the copy (`remote:name`, or `remote:` to keep the name)
    pub destination: Option<String>,
    /// Leave the source's snapshots behind
    #[arg(long)]
    pub instance_only: bool,
    /// Update an existing copy: new snapshots and the instance's files
    #[arg(long)]
    pub refresh: bool,
    /// Storage pool of the copy
    #[arg(short = 's', long)]
    pub storage: Option<String>,
    /// Profiles of the copy (instead of the source's)
    #[arg(short = 'p', long = "profile")]
    pub profiles: Vec<String>,
    /// No profiles on the copy
    #[arg(long)]
    pub no_profiles: bool,
    /// Config keys to set on the copy (KEY=VALUE)
    #[arg(short = 'c', long = "config")]
    pub config: Vec<String>,
    /// pull (the target fetches), push (the source sends) or relay (this client carries the data)
    #[arg(long, default_value = "pull")]
    pub mode: String,
    /// For `move` of a running instance: stop it, move it, start it again
    #[arg(long)]
    pub stateless: bool,
}

/// `remote:name` split with the client's remotes (`local` when there is no known prefix).
fn split(arg: &str) -> Result<(String, String)> {
    let cfg = ClientConfig::load()?;
    match arg.split_once(':') {
        Some((r, rest)) if r == LOCAL || cfg.remotes.contains_key(r) => Ok((r.to_string(), rest.to_string())),
        Some((r, _)) => bail!("Remote {r:?} doesn't exist (see `corral remote list`)"),
        None => Ok((cfg.default_remote.clone(), arg.to_string())),
    }
}

/// Where other servers reach `remote`'s HTTPS API (`host:port`), if it listens.
fn https_address(remote: &str, client: &Client) -> Result<Option<String>> {
    if remote != LOCAL {
        let cfg = ClientConfig::load()?;
        let addr = cfg
            .remotes
            .get(remote)
            .map(|r| r.addr.trim_start_matches("https://").to_string());
        return Ok(addr);
    }
    let server: Server = client.get("/1.0")?;
    Ok(server.environment.addresses.first().cloned())
}

fn instance_url(name: &str) -> String {
    format!("/1.0/instances/{}", encode_segment(name))
}

fn op_of(resp: &corral_api::Response) -> Result<Operation> {
    serde_json::from_value(resp.metadata.clone()).context("the server sent no operation")
}

fn secrets_of(op: &Operation) -> BTreeMap<String, String> {
    op.metadata
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

pub fn copy(a: CopyArgs) -> Result<()> {
    transfer(a, false)
}

pub fn mv(a: CopyArgs) -> Result<()> {
    transfer(a, true)
}

fn transfer(a: CopyArgs, moving: bool) -> Result<()> {
    let (src_remote, src_name) = split(&a.source)?;
    let (dst_remote, dst_name) = match &a.destination {
        Some(d) => split(d)?,
        None if moving => bail!("give the destination: `corral move c1 c2` or `corral move c1 h2:`"),
        None => bail!("give the name of the copy: `corral copy c1 c2` or `corral copy c1 h2:`"),
    };
    let dst_name = if dst_name.is_empty() {
        src_name.clone()
    } else {
        dst_name
    };
    let src = remotes::client_for(&src_remote)?;
    if src_remote == dst_remote {
        return same_server(&src, &a, &src_name, &dst_name, moving);
    }
    if src_name.contains('/') {
        bail!("copying a snapshot to another server is not supported yet: copy it here first (`corral copy {src_name} NEW`)");
    }
    let dst = remotes::client_for(&dst_remote)?;
    let inst: Instance = src.get(&instance_url(&src_name))?;
    let running = inst.status != "Stopped";
    // A running instance moves live (checkpointed, sent, restored), unless --stateless.
    let live = moving && running && !a.stateless;
    let restart = moving && running && a.stateless;
    if restart {
        crate::instances::state_action(&src, &src_name, "stop", false, -1)?;
    }
    let moved = copy_between(
        &a,
        &src,
        &src_remote,
        &src_name,
        &dst,
        &dst_remote,
        &dst_name,
        moving,
        live,
    );
    if let Err(e) = moved {
        if restart {
            let _ = crate::instances::state_action(&src, &src_name, "start", false, -1);
        }
        return Err(e);
    }
    if moving {
        let resp = src.delete(&instance_url(&src_name))?;
        src.wait(&resp, None)?;
        if restart {
            crate::instances::state_action(&dst, &dst_name, "start", false, -1)?;
        }
    }
    Ok(())
}

/// `--storage`, `--profile` and `--no-profiles` on the new instance's request.
fn apply_overrides(body: &mut InstancesPost, a: &CopyArgs) {
    if let Some(pool) = &a.storage {
        body.devices.insert(
            "root".into(),
            BTreeMap::from([
                ("type".to_string(), "disk".to_string()),
                ("path".to_string(), "/".to_string()),
                ("pool".to_string(), pool.clone()),
            ]),
        );
    }
    if a.no_profiles {
        body.profiles = Some(Vec::new());
    } else if !a.profiles.is_empty() {
        body.profiles = Some(a.profiles.clone());
    }
}

/// On one server: a local copy, a rename, or a move to another pool.
fn same_server(c: &Client, a: &CopyArgs, src: &str, dst: &str, moving: bool) -> Result<()> {
    if moving {
        let post = InstancePost {
            name: dst.to_string(),
            pool: a.storage.clone().unwrap_or_default(),
            instance_only: a.instance_only,
            ..Default::default()
        };
        let resp = c.post(&instance_url(src), &post)?;
        c.wait(&resp, None)?;
        return Ok(());
    }
    let mut body = InstancesPost {
        name: dst.to_string(),
        source: InstanceSource {
            kind: "copy".into(),
            source: src.to_string(),
            instance_only: a.instance_only,
            refresh: a.refresh,
            ..Default::default()
        },
        config: parse_pairs(&a.config)?,
        ..Default::default()
    };
    apply_overrides(&mut body, a);
    let resp = c.post("/1.0/instances", &body)?;
    c.wait(&resp, None)?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn copy_between(
    a: &CopyArgs,
    src: &Client,
    src_remote: &str,
    src_name: &str,
    dst: &Client,
    dst_remote: &str,
    dst_name: &str,
    moving: bool,
    live: bool,
) -> Result<()> {
    let mut body = InstancesPost {
        name: dst_name.to_string(),
        config: parse_pairs(&a.config)?,
        source: InstanceSource {
            kind: "migration".into(),
            instance_only: a.instance_only,
            refresh: a.refresh,
            live,
            ..Default::default()
        },
        ..Default::default()
    };
    apply_overrides(&mut body, a);
    let src_addr = https_address(src_remote, src)?;
    let mode = match a.mode.as_str() {
        "pull" if src_addr.is_none() => "push",
        "pull" | "push" | "relay" => a.mode.as_str(),
        other => bail!("unknown --mode {other:?}: use pull, push or relay"),
    };
    let migrate = InstancePost {
        name: dst_name.to_string(),
        migration: true,
        live,
        instance_only: a.instance_only,
        ..Default::default()
    };
    let what = if moving { "move" } else { "copy" };
    if mode == "pull" {
        let src_addr = src_addr.expect("checked above");
        let cert = src.get::<Server>("/1.0")?.environment.certificate;
        let resp = src.post(&instance_url(src_name), &migrate)?;
        let op = op_of(&resp)?;
        body.source.mode = "pull".into();
        body.source.operation = format!("https://{src_addr}/1.0/operations/{}", op.id);
        body.source.certificate = cert;
        body.source.websockets = secrets_of(&op);
        let sink = dst.post("/1.0/instances", &body);
        let sink = match sink {
            Ok(r) => r,
            Err(e) => {
                let _ = src.delete(&format!("/1.0/operations/{}", op.id));
                return Err(anyhow!(e).context(format!("the target refused the {what}")));
            }
        };
        let watch = ProgressWatch::start(src, &op.id, "Transferring instance");
        let received = dst.wait(&sink, None);
        let sent = src.wait_operation(&op.id, None);
        drop(watch);
        received.with_context(|| format!("the {what} failed on the target"))?;
        report_downtime(&sent.with_context(|| format!("the {what} failed on the source"))?);
        return Ok(());
    }
    if mode == "relay" {
        // Neither server dials the other: both wait for websockets, and this client joins them.
        let resp = src.post(&instance_url(src_name), &migrate)?;
        let src_op = op_of(&resp)?;
        body.source.mode = "push".into();
        let sink = match dst.post("/1.0/instances", &body) {
            Ok(r) => r,
            Err(e) => {
                let _ = src.delete(&format!("/1.0/operations/{}", src_op.id));
                return Err(anyhow!(e).context(format!("the target refused the {what}")));
            }
        };
        let dst_op = op_of(&sink)?;
        let (src_secrets, dst_secrets) = (secrets_of(&src_op), secrets_of(&dst_op));
        // criu (post-copy's page stream) only when both offer it.
        let criu = src_secrets.contains_key("criu") && dst_secrets.contains_key("criu");
        for stream in ["control", "fs", "criu"] {
            if stream == "criu" && !criu {
                continue;
            }
            let secret = |m: &BTreeMap<String, String>| {
                m.get(stream)
                    .cloned()
                    .ok_or_else(|| anyhow!("no {stream:?} websocket in the operation"))
            };
            let from = src.websocket(&src_op.id, &secret(&src_secrets)?)?;
            let to = dst.websocket(&dst_op.id, &secret(&dst_secrets)?)?;
            relay(from, to)?;
        }
        let watch = ProgressWatch::start(src, &src_op.id, "Transferring instance");
        let received = dst.wait_operation(&dst_op.id, None);
        let sent = src.wait_operation(&src_op.id, None);
        drop(watch);
        received.with_context(|| format!("the {what} failed on the target"))?;
        report_downtime(&sent.with_context(|| format!("the {what} failed on the source"))?);
        return Ok(());
    }
    let dst_addr = https_address(dst_remote, dst)?
        .ok_or_else(|| anyhow!("neither server listens on the network: set core.https_address on one of them"))?;
    let cert = dst.get::<Server>("/1.0")?.environment.certificate;
    body.source.mode = "push".into();
    let sink = dst
        .post("/1.0/instances", &body)
        .with_context(|| format!("the target refused the {what}"))?;
    let op = op_of(&sink)?;
    let push = InstancePost {
        target: Some(InstancePostTarget {
            certificate: cert,
            operation: format!("https://{dst_addr}/1.0/operations/{}", op.id),
            websockets: secrets_of(&op),
        }),
        ..migrate
    };
    let sent = match src.post(&instance_url(src_name), &push) {
        Ok(r) => r,
        Err(e) => {
            let _ = dst.delete(&format!("/1.0/operations/{}", op.id));
            return Err(anyhow!(e).context(format!("the source refused the {what}")));
        }
    };
    let watch = ProgressWatch::start(dst, &op.id, "Transferring instance");
    let pushed = src.wait(&sent, None);
    let received = dst.wait_operation(&op.id, None);
    drop(watch);
    let pushed = pushed.with_context(|| format!("the {what} failed on the source"))?;
    received.with_context(|| format!("the {what} failed on the target"))?;
    report_downtime(&pushed);
    Ok(())
}

/// Shows a transfer's progress (the bytes an operation reports in `fs_bytes`) on stderr until
/// dropped. Dropping it ends it at once (not after its next poll): the command's time is the
/// transfer's.
struct ProgressWatch {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ProgressWatch {
    fn start(client: &Client, op_id: &str, label: &str) -> ProgressWatch {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let (client, path, label) = (
            client.clone(),
            format!("/1.0/operations/{}", encode_segment(op_id)),
            label.to_string(),
        );
        let thread = std::thread::spawn(move || {
            let mut shown = crate::progress::Progress::new(&label);
            let mut moved = false;
            loop {
                if let Ok(op) = client.get::<Operation>(&path) {
                    if let Some(n) = op.metadata["fs_bytes"].as_u64() {
                        shown.update(n, 0);
                        moved = true;
                    }
                }
                // A message or the sender's drop: stop.
                match stopped.recv_timeout(std::time::Duration::from_millis(250)) {
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                    _ => break,
                }
            }
            if moved {
                shown.finish();
            }
        });
        ProgressWatch {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for ProgressWatch {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Joins two websockets in a thread of their own, both ways, until either side closes. One thread
/// reads both in turn with a short timeout: a TLS session has no second handle to read and write
/// from two threads.
fn relay(mut a: corral_client::WebSocket, mut b: corral_client::WebSocket) -> Result<()> {
    use corral_client::tungstenite::{Error, Message};
    let tick = Some(std::time::Duration::from_millis(5));
    a.get_ref().set_read_timeout(tick)?;
    b.get_ref().set_read_timeout(tick)?;
    // One direction: Ok(true) when something moved, Ok(false) when idle, Err when it ended.
    fn step(from: &mut corral_client::WebSocket, to: &mut corral_client::WebSocket) -> std::result::Result<bool, ()> {
        match from.read() {
            Ok(m @ (Message::Binary(_) | Message::Text(_))) => to.send(m).map(|_| true).map_err(drop),
            Ok(Message::Close(_)) => {
                let _ = to.close(None);
                let _ = to.flush();
                Err(())
            }
            Ok(_) => Ok(true),
            Err(Error::Io(e)) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                let _ = to.flush();
                Ok(false)
            }
            Err(_) => Err(()),
        }
    }
    std::thread::spawn(move || loop {
        let (ab, ba) = (step(&mut a, &mut b), step(&mut b, &mut a));
        if ab.is_err() || ba.is_err() {
            return;
        }
    });
    Ok(())
}

/// A live migration's pause, as the source measured it (on stderr: stdout stays clean).
fn report_downtime(source_op: &Operation) {
    if let Some(note) = source_op.metadata["note"].as_str() {
        eprintln!("Note: {note}");
    }
    if let Some(ms) = source_op.metadata["downtime_ms"].as_u64() {
        eprintln!("Live migration: the instance was paused for {ms} ms");
    }
}
