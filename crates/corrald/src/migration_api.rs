//! LXD's migration API, both ends (the protocol itself is in migration.rs):
//! - source: `POST /1.0/instances/{name}` with `migration: true`. Without `target` (pull
//!   mode) it answers a websocket operation whose secrets the sink dials; with `target` (push
//!   mode) it dials the sink's websockets itself.
//! - sink: `POST /1.0/instances` with `source.type: migration`. `mode: pull` (the default)
//!   dials the source's operation (its certificate pinned); `mode: push` answers a websocket
//!   operation the source dials.
//!
//! The dialing side authenticates with this server's certificate and the operation's secrets;
//! accepting sides let untrusted clients reach an operation's websocket by secret only.

use std::collections::BTreeMap;
use std::time::Duration;

use corral_api as api;

use crate::api::{operation, resources, ApiError, ApiResult, AppState};
use crate::events::Lifecycle;
use crate::instances::{Runtime, DEFAULT_PROJECT};
use crate::migration::{Bridged, Link, SinkRequest};
use crate::operations::{OpClass, OpHandle};

/// How long a migration waits for the other end to connect its websockets.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the `criu` websocket may come after the others.
const OPTIONAL_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// `criu` carries post-copy's page stream (migration_pages.rs); a peer that does not connect it
/// gets stop-and-copy.
const STREAMS: &[&str] = &["control", "fs", "criu"];

fn secrets() -> BTreeMap<String, String> {
    STREAMS
        .iter()
        .map(|n| (n.to_string(), crate::exec_ws::secret()))
        .collect()
}

/// Dials one websocket of another server's operation (`https://host:port/1.0/operations/ID`),
/// as this server, with that server's certificate pinned.
fn dial(st: &AppState, op_url: &str, secret: &str, cert_pem: &str) -> Result<corral_client::WebSocket, String> {
    let rest = op_url
        .strip_prefix("https://")
        .ok_or_else(|| format!("the operation URL {op_url:?} is not https://HOST:PORT/1.0/operations/ID"))?;
    let (hostport, path) = rest
        .split_once('/')
        .ok_or_else(|| format!("the operation URL {op_url:?} has no path"))?;
    let id = path.trim_end_matches('/').rsplit('/').next().unwrap_or_default();
    let der = crate::tls::pem_to_der(cert_pem)
        .ok_or_else(|| "the other server's certificate (PEM) is missing from the request".to_string())?;
    let me = corral_client::ClientIdentity {
        cert_pem: st.server.identity.cert_pem.clone(),
        key_pem: st.server.identity.key_pem.clone(),
    };
    let remote = corral_client::Remote::new(hostport, Some(&me), corral_client::ServerTrust::Pinned(der))
        .map_err(|e| e.to_string())?;
    corral_client::Client::remote(remote)
        .websocket(id, secret)
        .map_err(|e| format!("cannot connect to {hostport}: {e}"))
}

type Dialed = (
    corral_client::WebSocket,
    corral_client::WebSocket,
    Option<corral_client::WebSocket>,
);

fn dial_all(st: &AppState, op_url: &str, sockets: &BTreeMap<String, String>, cert_pem: &str) -> Result<Dialed, String> {
    let secret = |n: &str| {
        sockets
            .get(n)
            .cloned()
            .ok_or_else(|| format!("the request lacks the {n:?} websocket secret"))
    };
    let control = dial(st, op_url, &secret("control")?, cert_pem)?;
    let fs = dial(st, op_url, &secret("fs")?, cert_pem)?;
    // Absent from an operation that has no page stream to offer.
    let criu = match sockets.get("criu") {
        Some(s) => Some(dial(st, op_url, s, cert_pem)?),
        None => None,
    };
    Ok((control, fs, criu))
}

/// Waits for the websockets registered for `fds`, bridged for blocking use.
async fn accept_all(waiting: crate::exec_ws::Expected) -> Result<(Bridged, Bridged, Option<Bridged>), String> {
    let mut got = BTreeMap::new();
    // control and fs first; the peer dials criu right after them, if it has it (a client
    // relaying only control and fs gets stop-and-copy).
    let (optional, required): (Vec<_>, Vec<_>) = waiting.into_iter().partition(|(n, _)| n == "criu");
    for (name, rx) in required {
        let ws = tokio::time::timeout(CONNECT_TIMEOUT, rx)
            .await
            .map_err(|_| format!("the other server did not connect the {name:?} websocket in time"))?
            .map_err(|_| "the operation ended".to_string())?;
        got.insert(name, ws);
    }
    for (name, rx) in optional {
        if let Ok(Ok(ws)) = tokio::time::timeout(OPTIONAL_CONNECT_TIMEOUT, rx).await {
            got.insert(name, ws);
        }
    }
    let mut take = |n: &str| {
        got.remove(n)
            .map(Bridged::new)
            .ok_or_else(|| format!("no {n:?} websocket"))
    };
    let (control, fs) = (take("control")?, take("fs")?);
    Ok((control, fs, take("criu").ok()))
}

fn progress_of(h: &OpHandle) -> impl Fn(u64) + Sync + Send + 'static {
    let h = h.clone();
    move |bytes| {
        h.set_metadata_key("fs_bytes", serde_json::json!(bytes));
        h.set_metadata_key("fs_progress", serde_json::json!(format!("{} MB", bytes / 1_000_000)));
    }
}

/// With `migration.incremental.memory`, a live migration would copy memory in rounds first
/// (pre-copy); that needs the kernel's soft-dirty tracking. Without it: what happens instead.
fn precopy_note(st: &AppState, rec: &crate::instances::InstanceRecord) -> Option<String> {
    let (config, _) = st.instances.expand(rec).ok()?;
    if config.get("migration.incremental.memory").map(String::as_str) != Some("true") {
        return None;
    }
    let supported = corral_runtime::checkpoint::criu_binary()
        .ok()
        .and_then(|criu| corral_runtime::checkpoint::soft_dirty_supported(&criu).ok())
        .unwrap_or(false);
    let note = if supported {
        "pre-copy (migration.incremental.memory) is not implemented yet: stopped and copied in one pass"
    } else {
        "pre-copy (migration.incremental.memory) needs soft-dirty memory tracking, which this kernel lacks: \
         stopped and copied in one pass"
    };
    tracing::info!(instance = %rec.name, "{note}");
    Some(note.to_string())
}

/// With `migration.stateful.lazy`, a live migration resumes the instance on the target before
/// its memory has arrived (post-copy, CRIU lazy pages over the `criu` websocket) where this
/// kernel allows it: whether it does here, and if not the note saying which check of
/// [`corral_runtime::checkpoint::lazy_pages_blocker`] failed (the move then stops and copies).
fn postcopy(st: &AppState, rec: &crate::instances::InstanceRecord) -> (bool, Option<String>) {
    let Ok((config, _)) = st.instances.expand(rec) else {
        return (false, None);
    };
    if config.get("migration.stateful.lazy").map(String::as_str) != Some("true") {
        return (false, None);
    }
    let user_namespace = !crate::config::flag(&config, "security.privileged");
    let reason = match corral_runtime::checkpoint::criu_binary() {
        Ok(criu) => corral_runtime::checkpoint::lazy_pages_blocker(&criu, user_namespace),
        Err(e) => Some(e.to_string()),
    };
    let Some(reason) = reason else {
        return (true, None);
    };
    let note =
        format!("post-copy (migration.stateful.lazy) is not possible here: {reason}; stopped and copied in one pass");
    tracing::info!(instance = %rec.name, "{note}");
    (false, Some(note))
}

/// `POST /1.0/instances/{name}` with `migration: true`.
pub fn source(st: &AppState, name: String, req: api::InstancePost) -> ApiResult {
    let (rec, _) = st.instances.get(DEFAULT_PROJECT, &name)?;
    let instance_only = req.instance_only || req.container_only;
    let running = matches!(st.instances.runtime(&rec.name), Runtime::Running(_));
    let live = req.live;
    if live && !running {
        return Err(ApiError(
            400,
            format!("{name} is not running: copy or move it without --live"),
        ));
    }
    let (lazy, post_note) = if live { postcopy(st, &rec) } else { (false, None) };
    let note = if live {
        let notes: Vec<String> = [precopy_note(st, &rec), post_note].into_iter().flatten().collect();
        (!notes.is_empty()).then(|| notes.join("; "))
    } else {
        None
    };
    let res = resources("instances", &name);
    let instances = st.instances.clone();
    // A running instance is read from a point-in-time copy made while it is frozen.
    let frozen = (running && !live).then(|| format!(".migration-{}", uuid::Uuid::new_v4().simple()));
    let send = move |control: &mut dyn Link, fs: &mut dyn Link, criu: Option<&mut dyn Link>, h: &OpHandle| {
        if let Some(n) = &note {
            h.set_metadata_key("note", serde_json::json!(n));
        }
        let progress = progress_of(h);
        let result = (|| {
            if let Some(f) = &frozen {
                instances.point_in_time_copy(DEFAULT_PROJECT, &name, f)?;
            }
            instances.send_instance(
                DEFAULT_PROJECT,
                &name,
                instance_only,
                frozen.as_deref(),
                live,
                lazy,
                control,
                fs,
                criu,
                &progress,
            )
        })();
        if let Some(f) = &frozen {
            instances.drop_point_in_time_copy(DEFAULT_PROJECT, &name, f);
        }
        match result {
            Ok(Some(downtime)) => {
                h.set_metadata_key("downtime_ms", serde_json::json!(downtime.as_millis() as u64));
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    };
    if let Some(target) = req.target {
        // Push: this server dials the sink.
        let st2 = st.clone();
        let op = st
            .ops
            .spawn(OpClass::Task, "Migrating instance", res, false, move |h| async move {
                tokio::task::spawn_blocking(move || {
                    let (mut control, mut fs, mut criu) =
                        dial_all(&st2, &target.operation, &target.websockets, &target.certificate)?;
                    send(&mut control, &mut fs, criu.as_mut().map(|c| c as &mut dyn Link), &h)
                })
                .await
                .map_err(|e| e.to_string())?
            });
        return operation(op);
    }
    // Pull: the sink dials this operation's websockets.
    let fds = secrets();
    let waiting = st.sockets.expect_all(&fds);
    let sockets = st.sockets.clone();
    let forget: Vec<String> = fds.values().cloned().collect();
    let mut op = st.ops.spawn(
        OpClass::Websocket,
        "Migrating instance",
        res,
        true,
        move |h| async move {
            let accepted = accept_all(waiting).await;
            sockets.forget(&forget);
            let (mut control, mut fs, mut criu) = accepted?;
            tokio::task::spawn_blocking(move || {
                send(&mut control, &mut fs, criu.as_mut().map(|c| c as &mut dyn Link), &h)
            })
            .await
            .map_err(|e| e.to_string())?
        },
    );
    let meta = serde_json::to_value(&fds).unwrap_or_default();
    st.ops.set_metadata(&op.id, meta.clone());
    op.metadata = meta;
    operation(op)
}

/// `POST /1.0/instances` with `source.type: migration`.
pub fn sink(st: &AppState, req: api::InstancesPost) -> ApiResult {
    crate::instances::validate_name(&req.name)?;
    let exists = st.instances.get(DEFAULT_PROJECT, &req.name).is_ok();
    if exists && !req.source.refresh {
        return Err(ApiError(409, format!("Instance {:?} already exists", req.name)));
    }
    let pool = match crate::copy::root_pool(&req.devices) {
        Some(p) if st.instances.pools.get(&p).is_ok() => Some(p),
        // The source's pool name, which this server lacks: its default pool.
        Some(_) | None => None,
    };
    let mut devices = req.devices.clone();
    devices.retain(|_, d| !crate::copy::is_root_disk(d));
    let sink_req = SinkRequest {
        project: DEFAULT_PROJECT.into(),
        name: req.name.clone(),
        pool,
        config: req.config.clone(),
        devices,
        profiles: req.profiles.clone(),
        refresh: req.source.refresh,
    };
    let res = resources("instances", &req.name);
    let instances = st.instances.clone();
    let events = st.events.clone();
    let url = format!("/1.0/instances/{}", req.name);
    let receive = move |control: &mut dyn Link,
                        fs: &mut dyn Link,
                        criu: Option<&mut dyn Link>,
                        progress: &(dyn Fn(u64) + Sync)| {
        instances
            .receive_instance(&sink_req, control, fs, criu, progress)
            .map(|_| events.publish(Lifecycle::new("instance-created", &url)))
            .map_err(|e| e.to_string())
    };
    match req.source.mode.as_str() {
        "pull" | "" => {
            let st2 = st.clone();
            let source = req.source.clone();
            let op = st
                .ops
                .spawn(OpClass::Task, "Creating instance", res, false, move |h| async move {
                    tokio::task::spawn_blocking(move || {
                        let (mut control, mut fs, mut criu) =
                            dial_all(&st2, &source.operation, &source.websockets, &source.certificate)?;
                        let progress = progress_of(&h);
                        receive(
                            &mut control,
                            &mut fs,
                            criu.as_mut().map(|c| c as &mut dyn Link),
                            &progress,
                        )
                    })
                    .await
                    .map_err(|e| e.to_string())?
                });
            operation(op)
        }
        "push" => {
            let fds = secrets();
            let waiting = st.sockets.expect_all(&fds);
            let sockets = st.sockets.clone();
            let forget: Vec<String> = fds.values().cloned().collect();
            let mut op = st.ops.spawn(
                OpClass::Websocket,
                "Creating instance",
                res,
                true,
                move |h| async move {
                    let accepted = accept_all(waiting).await;
                    sockets.forget(&forget);
                    let (mut control, mut fs, mut criu) = accepted?;
                    tokio::task::spawn_blocking(move || {
                        let progress = progress_of(&h);
                        receive(
                            &mut control,
                            &mut fs,
                            criu.as_mut().map(|c| c as &mut dyn Link),
                            &progress,
                        )
                    })
                    .await
                    .map_err(|e| e.to_string())?
                },
            );
            let meta = serde_json::to_value(&fds).unwrap_or_default();
            st.ops.set_metadata(&op.id, meta.clone());
            op.metadata = meta;
            operation(op)
        }
        other => Err(ApiError(
            400,
            format!("migration mode {other:?} is not supported: use \"pull\" or \"push\" (relay is the client's)"),
        )),
    }
}
