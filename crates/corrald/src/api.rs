//! The REST API 1.0: thin handlers that parse, call a service and wrap the answer in LXD's
//! envelope. One error type maps service errors to status codes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode as Http};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::get;
use axum::{Json, Router};
use corral_api as api;
use serde::Deserialize;

use crate::events::Lifecycle;
use crate::images::Images;
use crate::instances::{InstanceRecord, Instances, Runtime, ServiceError, DEFAULT_PROJECT};
use crate::operations::{OpClass, OpState, Operations};

/// What every handler may use.
#[derive(Clone)]
pub struct AppState {
    pub instances: Arc<Instances>,
    pub images: Arc<Images>,
    pub networks: Arc<crate::networks::Networks>,
    pub volumes: Arc<crate::volumes::Volumes>,
    pub ops: Operations,
    /// Websockets of exec (and later console and migration) operations, waiting to connect.
    pub sockets: crate::exec_ws::PendingSockets,
    pub events: crate::events::Events,
    /// The server's configuration, identity, HTTPS listener and `GET /1.0` answers.
    pub server: Arc<crate::server::Server>,
    /// The TLS trust store.
    pub trust: Arc<crate::trust::Trust>,
    /// Notified to make the daemon exit (`corrald shutdown`).
    pub shutdown: Arc<tokio::sync::Notify>,
}

/// An error answer in LXD's envelope.
pub struct ApiError(pub u16, pub String);

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        let code = match &e {
            ServiceError::NotFound(_) => 404,
            ServiceError::Conflict(_) => 409,
            ServiceError::BadRequest(_) => 400,
            ServiceError::PreconditionFailed(_) => 412,
            ServiceError::Internal(_) => 500,
        };
        if code == 500 {
            tracing::error!(error = %e, "request failed");
        }
        ApiError(code, e.to_string())
    }
}

impl From<crate::config::ConfigError> for ApiError {
    fn from(e: crate::config::ConfigError) -> Self {
        ApiError(400, e.to_string())
    }
}

/// The wire name of an instance type ("container", "virtual-machine").
pub fn type_name(t: api::InstanceType) -> String {
    serde_json::to_value(t)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

pub fn type_from_name(name: &str) -> api::InstanceType {
    serde_json::from_value(serde_json::Value::String(name.to_string())).unwrap_or(api::InstanceType::Container)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> HttpResponse {
        envelope(api::Response::error(self.0, self.1), None)
    }
}

pub type ApiResult = Result<HttpResponse, ApiError>;

pub fn envelope(r: api::Response, etag: Option<String>) -> HttpResponse {
    let status = Http::from_u16(r.http_status()).unwrap_or(Http::INTERNAL_SERVER_ERROR);
    let location = (!r.operation.is_empty()).then(|| r.operation.clone());
    let mut resp = (status, Json(r)).into_response();
    if let Some(loc) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        resp.headers_mut().insert("Location", loc);
    }
    if let Some(tag) = etag.and_then(|t| HeaderValue::from_str(&format!("\"{t}\"")).ok()) {
        resp.headers_mut().insert("ETag", tag);
    }
    resp
}

pub fn sync<T: serde::Serialize>(v: T) -> ApiResult {
    sync_with_etag(&v, None)
}

/// LXD's sync envelope around a borrowed value: serialized in one pass, where building an
/// [`api::Response`] would first copy the value into a `serde_json::Value` (most of the cost
/// of a large listing).
#[derive(serde::Serialize)]
struct SyncEnvelope<'a, T: serde::Serialize> {
    #[serde(rename = "type")]
    kind: &'static str,
    status: &'static str,
    status_code: u16,
    operation: &'static str,
    error_code: u16,
    error: &'static str,
    metadata: &'a T,
}

/// A sync answer carrying `v`, with an ETag if given.
pub fn sync_with_etag<T: serde::Serialize>(v: &T, etag: Option<String>) -> ApiResult {
    let body = serde_json::to_vec(&SyncEnvelope {
        kind: "sync",
        status: "Success",
        status_code: 200,
        operation: "",
        error_code: 0,
        error: "",
        metadata: v,
    })
    .map_err(|e| ApiError(500, format!("Failed to encode the response: {e}")))?;
    let mut resp = HttpResponse::new(Body::from(body));
    let headers = resp.headers_mut();
    headers.insert("Content-Type", HeaderValue::from_static("application/json"));
    if let Some(tag) = etag.and_then(|t| HeaderValue::from_str(&format!("\"{t}\"")).ok()) {
        headers.insert("ETag", tag);
    }
    Ok(resp)
}

/// A sync answer whose ETag is a tag of its contents (for objects without a store revision).
pub fn sync_tagged<T: serde::Serialize>(v: T) -> ApiResult {
    let json = serde_json::to_vec(&v).map_err(|e| ApiError(500, e.to_string()))?;
    sync_with_etag(&v, Some(crate::etag::of_bytes(&json)))
}

pub fn operation(op: OpState) -> ApiResult {
    Ok(envelope(api::Response::async_op(to_api_op(&op)), None))
}

/// Runs `work` (blocking: disk, the store, the runtime) as a task operation; the operation
/// fails with the service error's text.
pub fn blocking_task<F>(st: &AppState, description: &str, res: BTreeMap<String, Vec<String>>, work: F) -> ApiResult
where
    F: FnOnce() -> Result<(), ServiceError> + Send + 'static,
{
    operation(
        st.ops
            .spawn(OpClass::Task, description, res, false, move |_| async move {
                tokio::task::spawn_blocking(move || work().map_err(|e| e.to_string()))
                    .await
                    .map_err(|e| e.to_string())?
            }),
    )
}

/// Runs blocking service work (the store, disk, cgroups) off the async workers and waits for it:
/// for answers that are not operations.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ServiceError> + Send + 'static,
) -> Result<T, ApiError> {
    Ok(tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError(500, e.to_string()))??)
}

/// Like [`blocking_task`], publishing `event` when the work has succeeded.
pub fn lifecycle_task<F>(
    st: &AppState,
    description: &str,
    res: BTreeMap<String, Vec<String>>,
    event: Lifecycle,
    work: F,
) -> ApiResult
where
    F: FnOnce() -> Result<(), ServiceError> + Send + 'static,
{
    let events = st.events.clone();
    blocking_task(st, description, res, move || {
        work()?;
        events.publish(event);
        Ok(())
    })
}

fn instance_url(name: &str) -> String {
    format!("/1.0/instances/{name}")
}

/// Body parsing with LXD's error shape instead of axum's plain text.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError(400, format!("invalid request body: {e}")))
}

/// The revision the client's If-Match names, if any.
pub fn if_match(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    match headers.get("If-Match").and_then(|v| v.to_str().ok()) {
        None => Ok(None),
        Some(v) => v
            .trim()
            .trim_matches('"')
            .parse()
            .map(Some)
            .map_err(|_| ApiError(412, "ETag doesn't match the current state".into())),
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct ListQuery {
    pub recursion: Option<u8>,
    pub filter: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct WaitQuery {
    timeout: Option<f64>,
}

/// All routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/1.0", get(server).put(put_server).patch(put_server))
        .route("/1.0/instances", get(list_instances).post(create_instance))
        .route(
            "/1.0/instances/{name}",
            get(get_instance)
                .put(put_instance)
                .patch(patch_instance)
                .delete(delete_instance)
                .post(rename_instance),
        )
        .route("/1.0/instances/{name}/state", get(get_state).put(put_state))
        .route("/1.0/instances/{name}/exec", axum::routing::post(exec_instance))
        .route(
            "/1.0/instances/{name}/snapshots",
            get(list_snapshots).post(create_snapshot),
        )
        .route(
            "/1.0/instances/{name}/snapshots/{snap}",
            get(get_snapshot)
                .put(put_snapshot)
                .patch(put_snapshot)
                .delete(delete_snapshot)
                .post(rename_snapshot),
        )
        .route("/1.0/instances/{name}/logs", get(list_logs))
        .route("/1.0/instances/{name}/logs/{file}", get(get_log))
        .route("/1.0/instances/{name}/logs/exec-output", get(list_exec_output))
        .route(
            "/1.0/instances/{name}/logs/exec-output/{file}",
            get(get_exec_output).delete(delete_exec_output),
        )
        .route("/1.0/operations/{id}/websocket", get(operation_websocket))
        .route("/1.0/events", get(events))
        .route("/1.0/operations", get(list_operations))
        .route("/1.0/operations/{id}", get(get_operation).delete(cancel_operation))
        .route("/1.0/operations/{id}/wait", get(wait_operation))
        .route("/1.0/projects", get(list_projects))
        .route("/1.0/projects/{name}", get(get_project))
        .route("/internal/shutdown", axum::routing::put(shutdown))
        .merge(crate::images_api::routes())
        .merge(crate::simplestreams_api::routes())
        .merge(crate::metadata_api::routes())
        .merge(crate::profiles_api::routes())
        .merge(crate::networks_api::routes())
        .merge(crate::pools_api::routes())
        .merge(crate::volumes_api::routes())
        .merge(crate::backups_api::routes())
        .merge(crate::volume_backups_api::routes())
        .merge(crate::files::routes())
        .merge(crate::console_ws::routes())
        .merge(crate::metrics::routes())
        .merge(crate::certificates_api::routes())
        .fallback(|| async { ApiError(404, "not found".into()) })
        .with_state(state)
}

/// Every request passes here before routing: logged at debug level (`corrald --verbose`), the
/// legacy `/1.0/containers...` paths mapped onto `/1.0/instances...`, and a `project` other
/// than `default` refused (the only project so far) rather than silently ignored.
pub async fn admit(mut req: axum::extract::Request) -> Result<axum::extract::Request, ApiError> {
    tracing::debug!(method = %req.method(), uri = %req.uri(), "request");
    // Parsed only when there is a project to check: this runs before every request.
    let query = req.uri().query().filter(|q| q.contains("project=")).unwrap_or("");
    if let Some(project) = serde_urlencoded::from_str::<Vec<(String, String)>>(query)
        .unwrap_or_default()
        .into_iter()
        .find(|(k, _)| k == "project")
        .map(|(_, v)| v)
        .filter(|p| !p.is_empty() && p != DEFAULT_PROJECT)
    {
        return Err(ApiError(404, format!("Project not found: {project}")));
    }
    let path = req.uri().path();
    if let Some(rest) = path.strip_prefix("/1.0/containers") {
        if rest.is_empty() || rest.starts_with('/') {
            let query = req.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
            if let Ok(uri) = format!("/1.0/instances{rest}{query}").parse() {
                *req.uri_mut() = uri;
            }
        }
    }
    Ok(req)
}

/// API extensions Corral implements; clients gate features on this list.
pub const API_EXTENSIONS: &[&str] = &[
    "instances",
    "container_full",
    "image_aliases_target",
    "api_filtering",
    "container_backup",
    // The file API (files.rs): lxc checks these before directory, symlink, append and delete.
    "file_delete",
    "file_append",
    "directory_manipulation",
    "file_symlinks",
    "instances_files_modify_permissions",
    "console",
    "metrics",
    "resources",
    // /1.0/instances/{name}/metadata and its templates (metadata_api.rs).
    "container_edit_metadata",
    // exec's record-output, served under /logs/exec-output.
    "container_exec_recording",
    // /1.0/storage-pools (lxc's storage verbs check for it).
    "storage",
    // Backups: the pool and name of an import, the compression of an export.
    "container_backup_override_pool",
    "backup_compression_algorithm",
    "backup_override_name",
    // lxc move --storage, done on the server.
    "instance_pool_move",
    // lxc copy --refresh.
    "container_incremental_copy",
    // Custom volumes: snapshots and restore, rename, local copy.
    "storage_api_volume_snapshots",
    "storage_api_volume_rename",
    "storage_api_local_volume_handling",
    // Custom volume backups: export and import (volume_backups_api.rs).
    "custom_volume_backup",
    // /1.0/networks: managed bridges and macvlan, their state, leases and forwards.
    "network",
    "network_state",
    "network_leases",
    "network_forward",
    "network_dhcp_expiry",
];

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct ShutdownQuery {
    #[serde(rename = "stop-instances")]
    stop_instances: bool,
}

/// `PUT /internal/shutdown` (what `corrald shutdown` sends): exit, leaving the containers
/// running, or with `stop-instances=true` stopping them first as on host shutdown. Answers
/// once the instances are stopped; the daemon then exits.
async fn shutdown(State(st): State<AppState>, Query(q): Query<ShutdownQuery>) -> ApiResult {
    let mut refused = Vec::new();
    if q.stop_instances {
        let instances = st.instances.clone();
        refused = tokio::task::spawn_blocking(move || instances.stop_all_for_shutdown(DEFAULT_PROJECT))
            .await
            .map_err(|e| ApiError(500, e.to_string()))?;
    }
    st.shutdown.notify_one();
    if !refused.is_empty() {
        return Err(ApiError(
            500,
            format!(
                "shutting down, but these instances did not stop: {}",
                refused.join(", ")
            ),
        ));
    }
    sync(serde_json::json!({}))
}

/// `PUT /1.0` replaces the server configuration, `PATCH` merges into it (a key set to "" or
/// null is removed).
async fn put_server(
    State(st): State<AppState>,
    method: axum::http::Method,
    headers: HeaderMap,
    caller: Option<axum::Extension<crate::auth::Caller>>,
    body: axum::body::Bytes,
) -> ApiResult {
    if let Some(axum::Extension(c)) = caller {
        c.may_administer()?;
    }
    let put: api::ServerPut = parse(&body)?;
    let mut config = if method == axum::http::Method::PATCH {
        st.server.config()
    } else {
        BTreeMap::new()
    };
    for (k, v) in put.config {
        let v = match v {
            serde_json::Value::Null => String::new(),
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        };
        config.insert(k, v);
    }
    let etag = headers
        .get("If-Match")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().trim_matches('"').to_string());
    st.server.update(config, etag).await?;
    sync(serde_json::json!({}))
}

async fn root() -> ApiResult {
    sync(vec!["/1.0"])
}

/// `GET /1.0`, answered from bytes made once per configuration change: nothing else in it
/// changes while the daemon runs, and clients ask for it before everything else. Untrusted
/// HTTPS clients get the public view.
async fn server(State(st): State<AppState>, caller: Option<axum::Extension<crate::auth::Caller>>) -> HttpResponse {
    let (body, etag) = match caller {
        Some(axum::Extension(c)) if !c.is_trusted() => (st.server.public_view(), None),
        _ => {
            let (b, e) = st.server.trusted_view();
            (b, Some(e))
        }
    };
    let mut resp = HttpResponse::new(Body::from(body));
    let headers = resp.headers_mut();
    headers.insert("Content-Type", HeaderValue::from_static("application/json"));
    if let Some(e) = etag {
        headers.insert("ETag", e);
    }
    resp
}

/// What `GET /1.0` shows: the configuration, where the HTTPS API listens, the certificate, and
/// whether the caller is trusted (an untrusted one sees no configuration nor environment).
pub struct ServerView<'a> {
    pub config: &'a BTreeMap<String, String>,
    pub addresses: Vec<String>,
    pub identity: &'a crate::tls::Identity,
    pub trusted: bool,
}

/// The server's description (`GET /1.0`) as LXD's envelope, serialized.
pub fn server_json(view: ServerView<'_>) -> axum::body::Bytes {
    let uname = nix::sys::utsname::uname().ok();
    let field = |f: fn(&nix::sys::utsname::UtsName) -> &std::ffi::OsStr| {
        uname
            .as_ref()
            .map(|u| f(u).to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let env = api::ServerEnvironment {
        architectures: vec![std::env::consts::ARCH.to_string()],
        driver: "corral".into(),
        driver_version: env!("CARGO_PKG_VERSION").into(),
        kernel: field(|u| u.sysname()),
        kernel_architecture: field(|u| u.machine()),
        kernel_version: field(|u| u.release()),
        server: "corral".into(),
        server_name: field(|u| u.nodename()),
        server_pid: std::process::id() as i64,
        server_version: env!("CARGO_PKG_VERSION").into(),
        storage: "dir".into(),
        storage_supported_drivers: crate::pools::DRIVERS
            .iter()
            .map(|d| api::ServerStorageDriverInfo {
                name: d.to_string(),
                remote: false,
                ..Default::default()
            })
            .collect(),
        project: DEFAULT_PROJECT.into(),
        ..Default::default()
    };
    let srv = if view.trusted {
        api::Server {
            api_extensions: API_EXTENSIONS.iter().map(|s| s.to_string()).collect(),
            api_status: "stable".into(),
            api_version: "1.0".into(),
            auth: "trusted".into(),
            auth_methods: vec!["tls".into()],
            public: false,
            config: view
                .config
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect(),
            environment: api::ServerEnvironment {
                addresses: view.addresses,
                certificate: view.identity.cert_pem.clone(),
                certificate_fingerprint: view.identity.fingerprint.clone(),
                ..env
            },
        }
    } else {
        api::Server {
            api_extensions: API_EXTENSIONS.iter().map(|s| s.to_string()).collect(),
            api_status: "stable".into(),
            api_version: "1.0".into(),
            auth: "untrusted".into(),
            auth_methods: vec!["tls".into()],
            public: false,
            ..Default::default()
        }
    };
    serde_json::to_vec(&api::Response::sync(srv)).unwrap_or_default().into()
}

// ---- instances ----

fn to_api_instance(st: &AppState, rec: &InstanceRecord) -> Result<api::Instance, ServiceError> {
    to_api_instance_with(st, rec, &st.instances.profiles(&rec.project)?)
}

fn to_api_instance_with(
    st: &AppState,
    rec: &InstanceRecord,
    profiles: &BTreeMap<String, crate::instances::ProfileRecord>,
) -> Result<api::Instance, ServiceError> {
    let (expanded_config, expanded_devices) = st.instances.expand_with(rec, profiles)?;
    let (status, code) = st.instances.status(&rec.name);
    Ok(api::Instance {
        architecture: rec.architecture.clone(),
        config: rec.config.clone(),
        devices: rec.devices.clone(),
        ephemeral: rec.ephemeral,
        profiles: rec.profiles.clone(),
        stateful: rec.stateful,
        description: rec.description.clone(),
        created_at: api::Timestamp(rec.created_at),
        expanded_config,
        expanded_devices,
        name: rec.name.clone(),
        status: status.into(),
        status_code: api::StatusCode(code),
        last_used_at: rec.last_used_at.map(api::Timestamp).unwrap_or_default(),
        location: "none".into(),
        kind: api::InstanceType::Container,
        project: rec.project.clone(),
    })
}

/// The instance's state; `with_disk` adds the root volume's usage, which walks the volume
/// (for one instance's state, not for listings).
fn to_api_state(st: &AppState, name: &str, with_disk: bool) -> api::InstanceState {
    // Only a running instance has a monitor to ask.
    let runtime = match st.instances.running.get(name) {
        Some(_) => st.instances.runtime(name),
        None => Runtime::Stopped,
    };
    let (status, code) = runtime.status();
    let mut state = api::InstanceState {
        status: status.into(),
        status_code: api::StatusCode(code),
        ..Default::default()
    };
    if let Runtime::Running(m) = &runtime {
        state.pid = m.init_pid as i64;
        state.processes = m.processes as i64;
        state.memory.usage = m.memory_bytes as i64;
        state.memory.usage_peak = m.memory_peak_bytes as i64;
        state.cpu.usage = m.cpu_ns as i64;
        match corral_runtime::netinfo::interfaces(m.init_pid) {
            Ok(ifaces) => state.network = ifaces.into_values().map(|i| (i.name.clone(), to_api_nic(i))).collect(),
            Err(e) => tracing::debug!(instance = name, error = %e, "no network state"),
        }
    }
    if with_disk {
        if let Some(used) = st.instances.volume_pool(name).ok().and_then(|p| p.usage(name)) {
            let disk = api::InstanceStateDisk {
                usage: used as i64,
                ..Default::default()
            };
            state.disk.insert("root".into(), disk);
        }
    }
    state
}

fn to_api_nic(i: corral_runtime::netinfo::Interface) -> api::InstanceStateNetwork {
    let c = i.counters;
    api::InstanceStateNetwork {
        addresses: i
            .addresses
            .iter()
            .map(|a| api::InstanceStateNetworkAddress {
                family: if a.address.is_ipv4() { "inet" } else { "inet6" }.into(),
                address: a.address.to_string(),
                netmask: a.prefix_len.to_string(),
                scope: a.scope.into(),
            })
            .collect(),
        counters: api::InstanceStateNetworkCounters {
            bytes_received: c.bytes_received as i64,
            bytes_sent: c.bytes_sent as i64,
            packets_received: c.packets_received as i64,
            packets_sent: c.packets_sent as i64,
            errors_received: c.errors_received as i64,
            errors_sent: c.errors_sent as i64,
            packets_dropped_inbound: c.dropped_received as i64,
            packets_dropped_outbound: c.dropped_sent as i64,
        },
        hwaddr: i.hwaddr,
        mtu: i64::from(i.mtu),
        state: i.state,
        kind: i.kind,
        ..Default::default()
    }
}

async fn list_instances(State(st): State<AppState>, Query(q): Query<ListQuery>) -> ApiResult {
    let list = st.instances.list(DEFAULT_PROJECT)?;
    let list: Vec<InstanceRecord> = match q.filter.as_deref().filter(|f| !f.trim().is_empty()) {
        Some(f) => {
            let filter = crate::filter::Filter::parse(f).map_err(|e| ApiError(400, e.to_string()))?;
            let profiles = st.instances.profiles(DEFAULT_PROJECT)?;
            let mut kept = Vec::new();
            for rec in list {
                let inst = serde_json::to_value(to_api_instance_with(&st, &rec, &profiles)?)
                    .map_err(|e| ApiError(500, e.to_string()))?;
                if filter.matches(&inst) {
                    kept.push(rec);
                }
            }
            kept
        }
        None => list,
    };
    match q.recursion.unwrap_or(0) {
        0 => sync(
            list.iter()
                .map(|r| format!("/1.0/instances/{}", r.name))
                .collect::<Vec<_>>(),
        ),
        1 => {
            let profiles = st.instances.profiles(DEFAULT_PROJECT)?;
            sync(
                list.iter()
                    .map(|r| to_api_instance_with(&st, r, &profiles))
                    .collect::<Result<Vec<_>, _>>()?,
            )
        }
        _ => {
            let profiles = st.instances.profiles(DEFAULT_PROJECT)?;
            // Every snapshot in one read, not one query per instance.
            let mut snapshots = st.instances.all_snapshots(DEFAULT_PROJECT)?;
            let full = list
                .iter()
                .map(|r| {
                    let inst = to_api_instance_with(&st, r, &profiles)?;
                    let snaps = snapshots.remove(&r.name).unwrap_or_default();
                    Ok(api::InstanceFull {
                        instance: inst,
                        state: Some(to_api_state(&st, &r.name, false)),
                        snapshots: snaps.iter().map(|s| to_api_snapshot(&st, s, false)).collect(),
                        ..Default::default()
                    })
                })
                .collect::<Result<Vec<_>, ServiceError>>()?;
            sync(full)
        }
    }
}

/// `POST /1.0/instances`: a JSON request, or a backup tarball to import (as LXD, by its
/// content type).
async fn create_instance(State(st): State<AppState>, headers: HeaderMap, body: axum::body::Body) -> ApiResult {
    let is_backup = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/octet-stream"));
    if is_backup {
        return crate::backups_api::import(&st, &headers, body).await;
    }
    let body = axum::body::to_bytes(body, 16 << 20)
        .await
        .map_err(|e| ApiError(400, format!("cannot read the request body: {e}")))?;
    let req: api::InstancesPost = parse(&body)?;
    if req.kind == api::InstanceType::VirtualMachine {
        return Err(ApiError(400, "virtual machines are not supported on this host".into()));
    }
    if req.source.kind == "copy" {
        return copy_instance(st, req).await;
    }
    if req.source.kind == "migration" {
        return crate::migration_api::sink(&st, req);
    }
    let mut remote = None; // A remote image server's image (remote_images.rs).
    let fingerprint = match req.source.kind.as_str() {
        "image" => {
            let alias = (!req.source.alias.is_empty()).then_some(req.source.alias.as_str());
            let fp = (!req.source.fingerprint.is_empty()).then_some(req.source.fingerprint.as_str());
            if !req.source.server.is_empty() {
                // Resolved now (the store first, else the server); downloaded in the operation.
                remote = Some(crate::remote_images::prepare(&st, &req.source).await?);
                remote.as_ref().map(|r| r.fingerprint.clone())
            } else {
                Some(st.images.resolve(alias, fp)?)
            }
        }
        "none" | "" => None,
        other => {
            return Err(ApiError(
                400,
                format!("instance source type {other:?} is not supported yet"),
            ))
        }
    };
    let arch = match &fingerprint {
        Some(_) if remote.is_some() => remote.as_ref().map(|r| r.architecture.clone()).unwrap_or_default(),
        Some(fp) => st.images.get(fp)?.architecture,
        None => std::env::consts::ARCH.to_string(),
    };
    let rec = InstanceRecord {
        name: req.name.clone(),
        project: DEFAULT_PROJECT.into(),
        description: req.description.clone(),
        architecture: arch,
        config: req.config.clone(),
        devices: req.devices.clone(),
        // null or absent: the default profile; [] (--no-profiles): none.
        profiles: req.profiles.clone().unwrap_or_else(|| vec!["default".into()]),
        ephemeral: req.ephemeral,
        ..Default::default()
    };
    // Refuse bad input before the operation exists, so the client gets a 400, not a failed op.
    crate::instances::validate_name(&rec.name)?;
    crate::config::validate(&rec.config, false)?;
    if st.instances.get(DEFAULT_PROJECT, &rec.name).is_ok() {
        return Err(ApiError(409, format!("Instance {:?} already exists", rec.name)));
    }
    let instances = st.instances.clone();
    let resources = resources("instances", &rec.name);
    let event = Lifecycle::new("instance-created", &instance_url(&rec.name));
    // A cached image must not expire between this request and its instance's volume.
    let hold = fingerprint.as_deref().map(|fp| st.images.hold(fp));
    let create = move || {
        let made = instances.create(rec, fingerprint.as_deref()).map(drop);
        drop(hold);
        made
    };
    if let Some(prepared) = remote {
        // The remote image into the store first (progress in the operation), then the same create.
        return crate::remote_images::create_task(&st, prepared, resources, event, create);
    }
    lifecycle_task(&st, "Creating instance", resources, event, create)
}

/// `source.type=copy`: a local copy of an instance or snapshot (`source.source`).
async fn copy_instance(st: AppState, req: api::InstancesPost) -> ApiResult {
    if !req.source.server.is_empty() {
        return Err(ApiError(400, "copies from other servers are not supported yet".into()));
    }
    let source = req.source.source.clone();
    let src_name = source.split('/').next().unwrap_or_default().to_string();
    st.instances.get(DEFAULT_PROJECT, &src_name)?;
    crate::instances::validate_name(&req.name)?;
    // `lxc copy` sends the source's config back, volatile keys included: those are ours.
    let config: BTreeMap<String, String> = req
        .config
        .clone()
        .into_iter()
        .filter(|(k, _)| !k.starts_with("volatile."))
        .collect();
    crate::config::validate(&config, false)?;
    let refresh = req.source.refresh;
    if st.instances.get(DEFAULT_PROJECT, &req.name).is_ok() && !refresh {
        return Err(ApiError(409, format!("Instance {:?} already exists", req.name)));
    }
    if refresh && st.instances.get(DEFAULT_PROJECT, &req.name).is_ok() {
        let instances = st.instances.clone();
        let (target, src) = (req.name.clone(), source.clone());
        let event = Lifecycle::new("instance-updated", &instance_url(&req.name)).with("source", source.clone());
        return lifecycle_task(
            &st,
            "Refreshing instance",
            resources("instances", &req.name),
            event,
            move || instances.refresh_instance(DEFAULT_PROJECT, &src, &target, req.source.instance_only),
        );
    }
    let rec = InstanceRecord {
        name: req.name.clone(),
        project: DEFAULT_PROJECT.into(),
        description: req.description.clone(),
        config,
        devices: req.devices.clone(),
        profiles: req.profiles.clone().unwrap_or_default(),
        ephemeral: req.ephemeral,
        ..Default::default()
    };
    let instance_only = req.source.instance_only;
    let instances = st.instances.clone();
    let event = Lifecycle::new("instance-created", &instance_url(&req.name)).with("source", source.clone());
    lifecycle_task(
        &st,
        "Copying instance",
        resources("instances", &req.name),
        event,
        move || {
            instances
                .copy_instance(DEFAULT_PROJECT, &source, rec, instance_only)
                .map(drop)
        },
    )
}

pub fn resources(kind: &str, name: &str) -> BTreeMap<String, Vec<String>> {
    BTreeMap::from([(kind.to_string(), vec![format!("/1.0/{kind}/{name}")])])
}

async fn get_instance(State(st): State<AppState>, Path(name): Path<String>, Query(q): Query<ListQuery>) -> ApiResult {
    let (rec, rev) = st.instances.get(DEFAULT_PROJECT, &name)?;
    let inst = to_api_instance(&st, &rec)?;
    if q.recursion.unwrap_or(0) >= 1 {
        let snapshots = st.instances.snapshots(DEFAULT_PROJECT, &name)?;
        let full = api::InstanceFull {
            instance: inst,
            state: Some(to_api_state(&st, &name, true)),
            snapshots: snapshots.iter().map(|s| to_api_snapshot(&st, s, false)).collect(),
            ..Default::default()
        };
        return sync_with_etag(&full, Some(rev.to_string()));
    }
    sync_with_etag(&inst, Some(rev.to_string()))
}

async fn put_instance(
    State(st): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult {
    let put: api::InstancePut = parse(&body)?;
    let etag = if_match(&headers)?;
    if !put.restore.is_empty() {
        // `{"restore": "snap0"}` (lxc sends "c1/snap0"): nothing else in the body counts.
        let snap = put
            .restore
            .strip_prefix(&format!("{name}/"))
            .unwrap_or(&put.restore)
            .to_string();
        st.instances.snapshot(DEFAULT_PROJECT, &name, &snap)?;
        let instances = st.instances.clone();
        let res = resources("instances", &name);
        let event = Lifecycle::new("instance-restored", &instance_url(&name)).with("snapshot", snap.clone());
        let stateful = put.stateful;
        return lifecycle_task(&st, "Restoring snapshot", res, event, move || {
            instances.restore_snapshot_with(DEFAULT_PROJECT, &name, &snap, stateful)
        });
    }
    let new = InstanceRecord {
        config: put.config,
        devices: put.devices,
        profiles: put.profiles.unwrap_or_else(|| vec!["default".into()]),
        description: put.description,
        ephemeral: put.ephemeral,
        ..Default::default()
    };
    updated(&st, name, new, etag).await
}

/// Applies an update at once, so that a bad key or a stale ETag is a direct 400 or 412, and
/// answers with the (finished) operation LXD's clients wait on.
async fn updated(st: &AppState, name: String, new: InstanceRecord, etag: Option<i64>) -> ApiResult {
    let instances = st.instances.clone();
    let res = resources("instances", &name);
    let url = instance_url(&name);
    tokio::task::spawn_blocking(move || instances.update(DEFAULT_PROJECT, &name, new, etag))
        .await
        .map_err(|e| ApiError(500, e.to_string()))??;
    st.events.lifecycle("instance-updated", &url);
    operation(
        st.ops
            .spawn(OpClass::Task, "Updating instance", res, false, |_| async { Ok(()) }),
    )
}

async fn patch_instance(
    State(st): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult {
    let patch: serde_json::Value = parse(&body)?;
    let etag = if_match(&headers)?;
    let (old, _) = st.instances.get(DEFAULT_PROJECT, &name)?;
    let mut new = old.clone();
    if let Some(cfg) = patch.get("config").and_then(|c| c.as_object()) {
        for (k, v) in cfg {
            match v {
                // LXD: setting a key to "" (or null) unsets it.
                serde_json::Value::Null => {
                    new.config.remove(k);
                }
                serde_json::Value::String(v) if v.is_empty() => {
                    new.config.remove(k);
                }
                serde_json::Value::String(v) => {
                    new.config.insert(k.clone(), v.clone());
                }
                other => {
                    return Err(ApiError(
                        400,
                        format!("invalid value {other} for {k}: config values are strings"),
                    ))
                }
            }
        }
    }
    if let Some(devs) = patch.get("devices") {
        let devs: crate::instances::Devices =
            serde_json::from_value(devs.clone()).map_err(|e| ApiError(400, format!("invalid devices: {e}")))?;
        new.devices.extend(devs);
    }
    if let Some(p) = patch.get("profiles") {
        new.profiles =
            serde_json::from_value(p.clone()).map_err(|e| ApiError(400, format!("invalid profiles: {e}")))?;
    }
    if let Some(d) = patch.get("description").and_then(|d| d.as_str()) {
        new.description = d.to_string();
    }
    if let Some(e) = patch.get("ephemeral").and_then(|e| e.as_bool()) {
        new.ephemeral = e;
    }
    updated(&st, name, new, etag).await
}

async fn delete_instance(State(st): State<AppState>, Path(name): Path<String>) -> ApiResult {
    st.instances.get(DEFAULT_PROJECT, &name)?;
    if let Runtime::Running(_) = st.instances.runtime(&name) {
        return Err(ApiError(400, "The instance is currently running, stop it first".into()));
    }
    let instances = st.instances.clone();
    let res = resources("instances", &name);
    let event = Lifecycle::new("instance-deleted", &instance_url(&name));
    lifecycle_task(&st, "Deleting instance", res, event, move || {
        instances.delete(DEFAULT_PROJECT, &name)
    })
}

async fn rename_instance(State(st): State<AppState>, Path(name): Path<String>, body: axum::body::Bytes) -> ApiResult {
    let req: api::InstancePost = parse(&body)?;
    st.instances.get(DEFAULT_PROJECT, &name)?;
    if !req.pool.is_empty() {
        // `lxc move --storage`: to another pool on this server.
        let instances = st.instances.clone();
        let event = Lifecycle::new("instance-updated", &instance_url(&name)).with("pool", req.pool.clone());
        return lifecycle_task(
            &st,
            "Moving instance",
            resources("instances", &name),
            event,
            move || {
                instances.move_to_pool(
                    DEFAULT_PROJECT,
                    &name,
                    &req.pool,
                    req.instance_only || req.container_only,
                )
            },
        );
    }
    if req.migration {
        return crate::migration_api::source(&st, name, req);
    }
    let instances = st.instances.clone();
    let res = resources("instances", &name);
    let event = Lifecycle::new("instance-renamed", &instance_url(&req.name)).with("old_name", name.clone());
    lifecycle_task(&st, "Renaming instance", res, event, move || {
        instances.rename(DEFAULT_PROJECT, &name, &req.name)
    })
}

async fn get_state(State(st): State<AppState>, Path(name): Path<String>) -> ApiResult {
    st.instances.get(DEFAULT_PROJECT, &name)?;
    let st2 = st.clone();
    let state = tokio::task::spawn_blocking(move || to_api_state(&st2, &name, true))
        .await
        .map_err(|e| ApiError(500, e.to_string()))?;
    sync(state)
}

async fn put_state(State(st): State<AppState>, Path(name): Path<String>, body: axum::body::Bytes) -> ApiResult {
    let req: api::InstanceStatePut = parse(&body)?;
    st.instances.get(DEFAULT_PROJECT, &name)?;
    let timeout = (req.timeout > 0).then(|| Duration::from_secs(req.timeout as u64));
    let (desc, action) = match req.action.as_str() {
        "start" => ("Starting instance", req.action.clone()),
        "stop" => ("Stopping instance", req.action.clone()),
        "restart" => ("Restarting instance", req.action.clone()),
        "freeze" => ("Freezing instance", req.action.clone()),
        "unfreeze" => ("Unfreezing instance", req.action.clone()),
        other => {
            return Err(ApiError(
                400,
                format!("unknown action {other:?}: use start, stop, restart, freeze or unfreeze"),
            ))
        }
    };
    let force = req.force;
    // Absent: restore a stateful instance; false: discard its state (`lxc start --stateless`).
    let stateful = crate::instances::stateful::stateful_in_body(&body);
    let instances = st.instances.clone();
    let res = resources("instances", &name);
    let lifecycle = match action.as_str() {
        "start" => "instance-started",
        "stop" if force || req.stateful => "instance-stopped",
        "stop" => "instance-shutdown",
        "restart" => "instance-restarted",
        "freeze" => "instance-paused",
        _ => "instance-resumed",
    };
    let event = Lifecycle::new(lifecycle, &instance_url(&name));
    lifecycle_task(&st, desc, res, event, move || match action.as_str() {
        "start" => instances.start_requested(DEFAULT_PROJECT, &name, stateful),
        "stop" if stateful == Some(true) => instances.stop_stateful(DEFAULT_PROJECT, &name),
        "stop" => instances.stop(DEFAULT_PROJECT, &name, timeout, force),
        "restart" => instances.restart(DEFAULT_PROJECT, &name, timeout, force),
        "freeze" => instances.freeze(&name, true),
        _ => instances.freeze(&name, false),
    })
}

async fn exec_instance(State(st): State<AppState>, Path(name): Path<String>, body: axum::body::Bytes) -> ApiResult {
    let req: api::InstanceExecPost = parse(&body)?;
    st.instances.get(DEFAULT_PROJECT, &name)?;
    if req.command.is_empty() {
        return Err(ApiError(400, "exec needs a command".into()));
    }
    // (uid_t)-1 means "unchanged" to setresuid: never let it through as a user.
    if req.user >= 65536 || req.group >= 65536 {
        return Err(ApiError(
            400,
            format!(
                "user {} / group {} is outside the container's 65536 ids",
                req.user, req.group
            ),
        ));
    }
    if !st.instances.is_running(&name) {
        return Err(ApiError(400, "Instance is not running".into()));
    }
    st.events
        .publish(Lifecycle::new("instance-exec", &instance_url(&name)).with("command", req.command.clone()));
    let fds = crate::exec_ws::plan(req.interactive);
    let output = crate::exec_ws::OutputDir {
        dir: exec_output_dir(&st, &name),
        url: format!("{}/logs/exec-output", instance_url(&name)),
    };
    let websockets = req.wait_for_websocket;
    let class = if websockets { OpClass::Websocket } else { OpClass::Task };
    let client = st.instances.client(&name);
    let sockets = st.sockets.clone();
    let meta = serde_json::json!({ "fds": fds });
    let waiting = st.sockets.expect_all(&fds);
    let mut op = st.ops.spawn(
        class,
        "Executing command",
        resources("instances", &name),
        // Cancelling kills the command.
        true,
        move |h| crate::exec_ws::run(h, sockets, client, req, fds, waiting, output),
    );
    if websockets {
        // The secrets must be in the operation before the client can read it.
        st.ops.set_metadata(&op.id, meta.clone());
        op.metadata = meta;
    }
    operation(op)
}

/// The instance as a backup's index.yaml embeds it.
pub fn instance_for_backup(st: &AppState, rec: &InstanceRecord) -> Result<api::Instance, ServiceError> {
    to_api_instance(st, rec)
}

/// The instance's snapshots as a backup's index.yaml embeds them.
pub fn snapshots_for_backup(st: &AppState, name: &str) -> Result<Vec<api::InstanceSnapshot>, ServiceError> {
    Ok(st
        .instances
        .snapshots(DEFAULT_PROJECT, name)?
        .iter()
        .map(|s| to_api_snapshot(st, s, false))
        .collect())
}

/// A snapshot for the API; `with_size` measures its volume (a directory walk: not in lists).
fn to_api_snapshot(st: &AppState, s: &crate::snapshots::SnapshotRecord, with_size: bool) -> api::InstanceSnapshot {
    let size = if with_size {
        st.instances
            .volume_pool(&s.instance)
            .ok()
            .and_then(|p| p.usage_of(&p.snapshot_volume(&s.instance, &s.name)))
            .unwrap_or(0)
    } else {
        0
    };
    api::InstanceSnapshot {
        expires_at: s.expires_at.map(api::Timestamp).unwrap_or_default(),
        architecture: s.architecture.clone(),
        config: s.config.clone(),
        created_at: api::Timestamp(s.created_at),
        devices: s.devices.clone(),
        ephemeral: s.ephemeral,
        expanded_config: s.config.clone(),
        expanded_devices: s.devices.clone(),
        name: s.name.clone(),
        profiles: s.profiles.clone(),
        stateful: st.instances.snapshot_has_state(&s.instance, &s.name),
        size: size as i64,
        ..Default::default()
    }
}

async fn list_snapshots(State(st): State<AppState>, Path(name): Path<String>, Query(q): Query<ListQuery>) -> ApiResult {
    st.instances.get(DEFAULT_PROJECT, &name)?;
    let snaps = st.instances.snapshots(DEFAULT_PROJECT, &name)?;
    if q.recursion.unwrap_or(0) == 0 {
        return sync(
            snaps
                .iter()
                .map(|s| format!("/1.0/instances/{name}/snapshots/{}", s.name))
                .collect::<Vec<_>>(),
        );
    }
    sync(snaps.iter().map(|s| to_api_snapshot(&st, s, true)).collect::<Vec<_>>())
}

async fn create_snapshot(State(st): State<AppState>, Path(name): Path<String>, body: axum::body::Bytes) -> ApiResult {
    let req: api::InstanceSnapshotsPost = if body.is_empty() {
        Default::default()
    } else {
        parse(&body)?
    };
    st.instances.get(DEFAULT_PROJECT, &name)?;
    let snap = if req.name.is_empty() {
        st.instances.unnamed_snapshot_name(DEFAULT_PROJECT, &name)?
    } else {
        req.name
    };
    crate::snapshots::validate_snapshot_name(&snap)?;
    if st.instances.snapshot(DEFAULT_PROJECT, &name, &snap).is_ok() {
        return Err(ApiError(409, format!("Snapshot {name}/{snap} already exists")));
    }
    // No expiry given: the instance's `snapshots.expiry`; the zero time: never.
    let expires = match req.expires_at {
        None => st
            .instances
            .default_snapshot_expiry(DEFAULT_PROJECT, &name, chrono::Utc::now())?,
        Some(t) => Some(t.0).filter(|_| !t.is_zero()),
    };
    let instances = st.instances.clone();
    let res = resources("instances", &name);
    let event = Lifecycle::new(
        "instance-snapshot-created",
        &format!("{}/snapshots/{snap}", instance_url(&name)),
    );
    let stateful = req.stateful;
    lifecycle_task(&st, "Snapshotting instance", res, event, move || {
        instances
            .create_snapshot_with(DEFAULT_PROJECT, &name, &snap, expires, stateful)
            .map(drop)
    })
}

async fn get_snapshot(State(st): State<AppState>, Path((name, snap)): Path<(String, String)>) -> ApiResult {
    let (s, rev) = st.instances.snapshot_with_rev(DEFAULT_PROJECT, &name, &snap)?;
    Ok(envelope(
        api::Response::sync(to_api_snapshot(&st, &s, true)),
        Some(rev.to_string()),
    ))
}

/// `PUT` and `PATCH`: the snapshot's only writable field, `expires_at` (as LXD 5.0); an
/// operation, as LXD answers.
async fn put_snapshot(
    State(st): State<AppState>,
    Path((name, snap)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult {
    let etag = if_match(&headers)?;
    let req: api::InstanceSnapshotPut = parse(&body)?;
    let (_, rev) = st.instances.snapshot_with_rev(DEFAULT_PROJECT, &name, &snap)?;
    if etag.is_some_and(|tag| tag != rev) {
        return Err(ApiError(412, "ETag doesn't match the snapshot's current state".into()));
    }
    let expires = (!req.expires_at.is_zero()).then_some(req.expires_at.0);
    let instances = st.instances.clone();
    let res = resources("instances", &name);
    let event = Lifecycle::new(
        "instance-snapshot-updated",
        &format!("{}/snapshots/{snap}", instance_url(&name)),
    );
    lifecycle_task(&st, "Updating snapshot", res, event, move || {
        instances.set_snapshot_expiry(DEFAULT_PROJECT, &name, &snap, expires, Some(rev))
    })
}

async fn delete_snapshot(State(st): State<AppState>, Path((name, snap)): Path<(String, String)>) -> ApiResult {
    st.instances.snapshot(DEFAULT_PROJECT, &name, &snap)?;
    let instances = st.instances.clone();
    let res = resources("instances", &name);
    let event = Lifecycle::new(
        "instance-snapshot-deleted",
        &format!("{}/snapshots/{snap}", instance_url(&name)),
    );
    lifecycle_task(&st, "Deleting snapshot", res, event, move || {
        instances.delete_snapshot(DEFAULT_PROJECT, &name, &snap)
    })
}

async fn rename_snapshot(
    State(st): State<AppState>,
    Path((name, snap)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult {
    let req: api::InstanceSnapshotPost = parse(&body)?;
    if req.migration {
        return Err(ApiError(400, "migration is not supported yet".into()));
    }
    st.instances.snapshot(DEFAULT_PROJECT, &name, &snap)?;
    let instances = st.instances.clone();
    let res = resources("instances", &name);
    let event = Lifecycle::new(
        "instance-snapshot-renamed",
        &format!("{}/snapshots/{}", instance_url(&name), req.name),
    )
    .with("old_name", snap.clone());
    lifecycle_task(&st, "Renaming snapshot", res, event, move || {
        instances.rename_snapshot(DEFAULT_PROJECT, &name, &snap, &req.name)
    })
}

pub fn raw_bytes(data: Vec<u8>) -> HttpResponse {
    let mut resp = HttpResponse::new(Body::from(data));
    resp.headers_mut()
        .insert("Content-Type", HeaderValue::from_static("application/octet-stream"));
    resp
}

/// The log files an instance has: `lxc.log` (its monitor's log, LXD's name for it) and
/// `console.log`.
const LOGS: &[(&str, &str)] = &[
    ("lxc.log", "monitor.log"),
    ("console.log", "console.log"),
    // The last stateful stop's or snapshot's, and the last restore's (stateful.rs).
    ("criu-dump.log", "criu-dump.log"),
    ("criu-restore.log", "criu-restore.log"),
];

async fn list_logs(State(st): State<AppState>, Path(name): Path<String>) -> ApiResult {
    st.instances.get(DEFAULT_PROJECT, &name)?;
    let dir = st.instances.paths.run_dir(&name);
    let present: Vec<String> = LOGS
        .iter()
        .filter(|(_, file)| dir.join(file).exists())
        .map(|(api_name, _)| format!("/1.0/instances/{name}/logs/{api_name}"))
        .collect();
    sync(present)
}

async fn get_log(
    State(st): State<AppState>,
    Path((name, file)): Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    st.instances.get(DEFAULT_PROJECT, &name)?;
    let Some((_, on_disk)) = LOGS.iter().find(|(api_name, _)| *api_name == file) else {
        return Err(ApiError(404, format!("Log file not found: {file}")));
    };
    let path = st.instances.paths.run_dir(&name).join(on_disk);
    let data = tokio::fs::read(&path)
        .await
        .map_err(|_| ApiError(404, format!("Log file not found: {file}")))?;
    Ok(raw_bytes(data))
}

/// Where recorded exec output is kept (beside the instance's other logs).
fn exec_output_dir(st: &AppState, name: &str) -> std::path::PathBuf {
    st.instances.paths.run_dir(name).join("exec-output")
}

/// A recorded output file's path, refusing names that are not plain `exec_*` files.
fn exec_output_file(st: &AppState, name: &str, file: &str) -> Result<std::path::PathBuf, ApiError> {
    st.instances.get(DEFAULT_PROJECT, name)?;
    let plain = file.starts_with("exec_") && !file.contains('/') && !file.contains("..");
    if !plain {
        return Err(ApiError(404, format!("Log file not found: exec-output/{file}")));
    }
    Ok(exec_output_dir(st, name).join(file))
}

async fn list_exec_output(State(st): State<AppState>, Path(name): Path<String>) -> ApiResult {
    st.instances.get(DEFAULT_PROJECT, &name)?;
    let mut files: Vec<String> = std::fs::read_dir(exec_output_dir(&st, &name))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .map(|f| format!("{}/logs/exec-output/{f}", instance_url(&name)))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    sync(files)
}

async fn get_exec_output(
    State(st): State<AppState>,
    Path((name, file)): Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let path = exec_output_file(&st, &name, &file)?;
    let data = tokio::fs::read(&path)
        .await
        .map_err(|_| ApiError(404, format!("Log file not found: exec-output/{file}")))?;
    Ok(raw_bytes(data))
}

async fn delete_exec_output(State(st): State<AppState>, Path((name, file)): Path<(String, String)>) -> ApiResult {
    let path = exec_output_file(&st, &name, &file)?;
    tokio::fs::remove_file(&path)
        .await
        .map_err(|_| ApiError(404, format!("Log file not found: exec-output/{file}")))?;
    sync(serde_json::json!({}))
}

/// Backups come with the storage work: listing answers (none); creating says so.

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct SecretQuery {
    secret: String,
}

async fn operation_websocket(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<SecretQuery>,
    ws: axum::extract::WebSocketUpgrade,
) -> ApiResult {
    if st.ops.get(&id).is_none() {
        return Err(ApiError(404, "Operation not found".into()));
    }
    if !st.sockets.is_expected(&q.secret) {
        return Err(ApiError(403, "wrong or used websocket secret".into()));
    }
    let sockets = st.sockets.clone();
    Ok(ws
        .read_buffer_size(WS_READ_BUFFER)
        .on_upgrade(move |socket| async move { sockets.deliver(&q.secret, socket) }))
}

/// The read buffer of the websockets the daemon serves. tungstenite zero-fills the whole buffer
/// before every read, including the reads that find nothing yet, and an async socket reads on
/// every wake-up: with its default of 128 KiB, an `exec -- true` (four websockets) cost the
/// daemon 2.8–3.1 ms of CPU, against 2.55–2.65 ms with 16 KiB (200 execs each, load 12). 16 KiB
/// still takes a pipe's chunk of output or input in a few reads.
const WS_READ_BUFFER: usize = 16 * 1024;

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct EventsQuery {
    #[serde(rename = "type")]
    kind: String,
}

async fn events(
    State(st): State<AppState>,
    Query(q): Query<EventsQuery>,
    ws: axum::extract::WebSocketUpgrade,
) -> ApiResult {
    let types: Vec<String> = q
        .kind
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect();
    for t in &types {
        if !["lifecycle", "operation", "logging"].contains(&t.as_str()) {
            return Err(ApiError(
                400,
                format!("unknown event type {t:?}: use lifecycle, operation or logging"),
            ));
        }
    }
    let rx = st.events.subscribe();
    Ok(ws
        .read_buffer_size(WS_READ_BUFFER)
        .on_upgrade(move |socket| crate::events::stream(socket, rx, types)))
}

// ---- operations ----

pub fn to_api_op(op: &OpState) -> api::Operation {
    let (code, status) = op.status.code();
    api::Operation {
        id: op.id.clone(),
        class: match op.class {
            OpClass::Task => api::OperationClass::Task,
            OpClass::Websocket => api::OperationClass::Websocket,
            OpClass::Token => api::OperationClass::Token,
        },
        description: op.description.clone(),
        created_at: api::Timestamp(op.created_at),
        updated_at: api::Timestamp(op.updated_at),
        status: status.into(),
        status_code: api::StatusCode(code),
        resources: op.resources.clone(),
        metadata: op.metadata.clone(),
        may_cancel: op.may_cancel,
        err: op.err.clone(),
        location: "none".into(),
    }
}

async fn list_operations(State(st): State<AppState>, Query(q): Query<ListQuery>) -> ApiResult {
    let ops = st.ops.list();
    let mut by_status: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for op in &ops {
        let key = op.status.code().1.to_lowercase();
        let entry = by_status.entry(key).or_insert_with(|| serde_json::json!([]));
        let item = if q.recursion.unwrap_or(0) >= 1 {
            serde_json::to_value(to_api_op(op)).unwrap_or_default()
        } else {
            serde_json::Value::String(format!("/1.0/operations/{}", op.id))
        };
        if let Some(a) = entry.as_array_mut() {
            a.push(item);
        }
    }
    sync(by_status)
}

async fn get_operation(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let op = st
        .ops
        .get(&id)
        .ok_or_else(|| ApiError(404, "Operation not found".into()))?;
    sync(to_api_op(&op))
}

async fn wait_operation(State(st): State<AppState>, Path(id): Path<String>, Query(q): Query<WaitQuery>) -> ApiResult {
    let timeout = q.timeout.filter(|t| *t >= 0.0).map(Duration::from_secs_f64);
    let op = st
        .ops
        .wait(&id, timeout)
        .await
        .ok_or_else(|| ApiError(404, "Operation not found".into()))?;
    sync(to_api_op(&op))
}

async fn cancel_operation(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult {
    use crate::operations::CancelError;
    st.ops.cancel(&id).map_err(|e| match e {
        CancelError::NotFound => ApiError(404, "Operation not found".into()),
        other => ApiError(403, other.to_string()),
    })?;
    sync(serde_json::json!({}))
}

// ---- profiles, pools, projects (read-only for now) ----

fn default_project() -> api::Project {
    let features = [
        "features.images",
        "features.profiles",
        "features.storage.volumes",
        "features.networks",
    ];
    api::Project {
        name: DEFAULT_PROJECT.into(),
        description: "Default Corral project".into(),
        config: features.iter().map(|f| (f.to_string(), "true".to_string())).collect(),
        used_by: Vec::new(),
    }
}

async fn list_projects(Query(q): Query<ListQuery>) -> ApiResult {
    if q.recursion.unwrap_or(0) == 0 {
        return sync(vec!["/1.0/projects/default"]);
    }
    sync(vec![default_project()])
}

async fn get_project(Path(name): Path<String>) -> ApiResult {
    if name != DEFAULT_PROJECT {
        return Err(ApiError(404, format!("Project not found: {name}")));
    }
    sync_tagged(default_project())
}
