//! `/1.0/instances/{name}/backups`: create (an operation), list, get, rename, delete, and
//! `/export`, the tarball streamed as it is made. The import side is `POST /1.0/instances` with
//! an `application/octet-stream` body (see [`import`]), as LXD's.

use std::collections::BTreeMap;
use std::io::Read;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use corral_api as api;
use futures_util::StreamExt;
use tokio::io::AsyncReadExt;

use crate::api::{blocking, blocking_task, operation, parse, sync, ApiError, ApiResult, AppState, ListQuery};
use crate::backups::BackupRecord;
use crate::instances::{ServiceError, DEFAULT_PROJECT};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/1.0/instances/{name}/backups", get(list_backups).post(create_backup))
        .route(
            "/1.0/instances/{name}/backups/{backup}",
            get(get_backup).post(rename_backup).delete(delete_backup),
        )
        .route("/1.0/instances/{name}/backups/{backup}/export", get(export_backup))
}

fn backup_url(instance: &str, name: &str) -> String {
    format!("/1.0/instances/{instance}/backups/{name}")
}

/// LXD's `InstanceBackup`.
fn to_api(b: &BackupRecord) -> serde_json::Value {
    serde_json::json!({
        "name": b.name,
        "created_at": b.created_at.map(api::Timestamp).unwrap_or_default(),
        "expires_at": b.expires_at.map(api::Timestamp).unwrap_or_default(),
        "instance_only": b.instance_only,
        "container_only": b.instance_only,
        "optimized_storage": b.optimized_storage,
    })
}

async fn list_backups(State(st): State<AppState>, Path(name): Path<String>, Query(q): Query<ListQuery>) -> ApiResult {
    let list = blocking(move || st.instances.backups(DEFAULT_PROJECT, &name).map(|l| (name, l))).await?;
    let (name, list) = list;
    if q.recursion.unwrap_or(0) == 0 {
        return sync(list.iter().map(|b| backup_url(&name, &b.name)).collect::<Vec<_>>());
    }
    sync(list.iter().map(to_api).collect::<Vec<_>>())
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct BackupsPost {
    name: String,
    expires_at: Option<api::Timestamp>,
    instance_only: bool,
    /// LXD's older name, which lxc sends too.
    container_only: bool,
    optimized_storage: bool,
    compression_algorithm: String,
}

async fn create_backup(State(st): State<AppState>, Path(name): Path<String>, body: Bytes) -> ApiResult {
    let req: BackupsPost = parse(&body)?;
    if !matches!(req.compression_algorithm.as_str(), "" | "none" | "gzip" | "xz" | "zstd") {
        return Err(ApiError(
            400,
            format!(
                "unknown compression algorithm {:?}: use none, gzip, xz or zstd",
                req.compression_algorithm
            ),
        ));
    }
    // The name is settled here: the operation's resources carry it (lxc export reads it there).
    let instances = st.instances.clone();
    let (n, wanted) = (name.clone(), req.name.clone());
    let backup_name = blocking(move || {
        let taken: Vec<String> = instances
            .backups(DEFAULT_PROJECT, &n)?
            .into_iter()
            .map(|b| b.name)
            .collect();
        if !wanted.is_empty() {
            crate::snapshots::validate_snapshot_name(&wanted)?;
            if taken.contains(&wanted) {
                return Err(ServiceError::Conflict(format!("Backup {n}/{wanted} already exists")));
            }
            return Ok(wanted);
        }
        Ok((0..)
            .map(|i| format!("backup{i}"))
            .find(|c| !taken.contains(c))
            .unwrap_or_default())
    })
    .await?;
    let rec = BackupRecord {
        name: backup_name.clone(),
        expires_at: req.expires_at.map(|t| t.0).filter(|t| t.timestamp() > 0),
        instance_only: req.instance_only || req.container_only,
        optimized_storage: req.optimized_storage,
        compression_algorithm: req.compression_algorithm,
        ..Default::default()
    };
    let instances = st.instances.clone();
    let events = st.events.clone();
    let url = backup_url(&name, &backup_name);
    let res = BTreeMap::from([
        ("instances".to_string(), vec![format!("/1.0/instances/{name}")]),
        // As LXD 5.0 names it (lxc export strips the /1.0/backups/ prefix).
        ("backups".to_string(), vec![format!("/1.0/backups/{backup_name}")]),
    ]);
    blocking_task(&st, "Backing up instance", res, move || {
        instances.create_backup(DEFAULT_PROJECT, &name, rec)?;
        events.lifecycle("instance-backup-created", &url);
        Ok(())
    })
}

async fn get_backup(State(st): State<AppState>, Path((name, backup)): Path<(String, String)>) -> ApiResult {
    let b = blocking(move || st.instances.backup(DEFAULT_PROJECT, &name, &backup)).await?;
    sync(to_api(&b))
}

async fn rename_backup(
    State(st): State<AppState>,
    Path((name, backup)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    #[derive(serde::Deserialize, Default)]
    #[serde(default)]
    struct Post {
        name: String,
    }
    let req: Post = parse(&body)?;
    let instances = st.instances.clone();
    let res = BTreeMap::from([("instances".to_string(), vec![format!("/1.0/instances/{name}")])]);
    blocking_task(&st, "Renaming instance backup", res, move || {
        instances.rename_backup(DEFAULT_PROJECT, &name, &backup, &req.name)
    })
}

async fn delete_backup(State(st): State<AppState>, Path((name, backup)): Path<(String, String)>) -> ApiResult {
    let instances = st.instances.clone();
    let events = st.events.clone();
    let res = BTreeMap::from([("instances".to_string(), vec![format!("/1.0/instances/{name}")])]);
    blocking_task(&st, "Deleting instance backup", res, move || {
        instances.delete_backup(DEFAULT_PROJECT, &name, &backup)?;
        events.lifecycle("instance-backup-deleted", &backup_url(&name, &backup));
        Ok(())
    })
}

async fn export_backup(
    State(st): State<AppState>,
    Path((name, backup)): Path<(String, String)>,
) -> Result<axum::response::Response, ApiError> {
    let inner = st.clone();
    let export = blocking(move || {
        let (rec, _) = inner.instances.get(DEFAULT_PROJECT, &name)?;
        let api_instance = crate::api::instance_for_backup(&inner, &rec)?;
        let snapshots = crate::api::snapshots_for_backup(&inner, &name)?;
        inner
            .instances
            .export_backup(DEFAULT_PROJECT, &name, &backup, api_instance, snapshots)
    })
    .await?;
    stream_tarball(export)
}

/// Reaps an export's process and removes its staging directory whenever the answer ends
/// (finished, or the client went away: the process is then killed).
struct ExportGuard {
    child: Option<std::process::Child>,
    stage: std::path::PathBuf,
}

impl Drop for ExportGuard {
    fn drop(&mut self) {
        let child = self.child.take();
        let stage = std::mem::take(&mut self.stage);
        std::thread::spawn(move || {
            if let Some(mut c) = child {
                let _ = c.kill();
                let _ = c.wait();
            }
            let _ = crate::storage::remove_tree(&stage);
        });
    }
}

/// The answer streaming a backup tarball as [`crate::backup_tar`] makes it. An export that
/// fails half-way ends the body with an error (the client sees a broken transfer, never a
/// short archive taken for whole).
pub fn stream_tarball(mut export: crate::backup_tar::Export) -> Result<axum::response::Response, ApiError> {
    let stdout = export.child.stdout.take().expect("piped");
    let stdout = tokio::process::ChildStdout::from_std(stdout).map_err(|e| ApiError(500, e.to_string()))?;
    // Its messages are read as they come (a full pipe would stop it), kept for the end.
    let stderr = export.child.stderr.take().map(|mut err| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut err, &mut text);
            text
        })
    });
    let stderr = std::sync::Arc::new(std::sync::Mutex::new(stderr));
    let guard = ExportGuard {
        child: Some(export.child),
        stage: export.stage,
    };
    let failure = export.failure;
    let stream = futures_util::stream::unfold(Some((stdout, guard)), move |state| {
        let failure = failure.clone();
        let stderr = stderr.clone();
        async move {
            let (mut out, mut guard) = state?;
            let mut buf = vec![0u8; 256 * 1024];
            match out.read(&mut buf).await {
                Ok(0) => {
                    let mut child = guard.child.take()?;
                    let reader = stderr.lock().unwrap_or_else(|e| e.into_inner()).take();
                    let waited = tokio::task::spawn_blocking(move || {
                        let status = child.wait();
                        let text = reader.and_then(|r| r.join().ok()).unwrap_or_default();
                        status.map(|s| (s, text))
                    })
                    .await;
                    let why = match waited {
                        Ok(Ok((s, _))) if s.success() => None,
                        // GNU tar's 1: a file changed while it was read (a volume in use on a
                        // dir pool); the archive is whole.
                        Ok(Ok((s, text))) if s.code() == Some(1) => {
                            tracing::warn!(stderr = %text.trim(), "backup export: files changed while read");
                            None
                        }
                        Ok(Ok((s, text))) => Some(format!("{s}: {}", text.trim())),
                        Ok(Err(e)) => Some(e.to_string()),
                        Err(e) => Some(e.to_string()),
                    };
                    let why = failure.lock().unwrap_or_else(|e| e.into_inner()).take().or(why);
                    drop(guard);
                    let why = why?;
                    tracing::warn!(error = %why, "backup export ended early");
                    Some((Err(std::io::Error::other(why)), None))
                }
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok::<_, std::io::Error>(Bytes::from(buf)), Some((out, guard))))
                }
                Err(e) => Some((Err(e), None)),
            }
        }
    });
    Ok((
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (
                header::CONTENT_DISPOSITION,
                HeaderValue::from_static("attachment; filename=\"backup.tar\""),
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

/// A blocking reader over a request body, fed by an async task (for tar on a blocking thread).
pub struct BodyReader {
    rx: std::sync::mpsc::Receiver<std::io::Result<Bytes>>,
    current: Bytes,
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => self.current = chunk,
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}

/// The value of header `X-LXD-<n>` (or `X-Incus-<n>`).
pub fn lxd_header(headers: &HeaderMap, n: &str) -> Option<String> {
    ["X-LXD-", "X-Incus-"]
        .iter()
        .find_map(|p| headers.get(format!("{p}{n}")).and_then(|v| v.to_str().ok()))
        .map(str::to_string)
}

/// Whether a request's body is an `application/octet-stream` upload (a backup to import).
pub fn is_upload(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/octet-stream"))
}

/// Runs `work` on a blocking thread with a reader over the request body, fed while it arrives.
pub async fn with_body_reader<T: Send + 'static>(
    body: Body,
    work: impl FnOnce(BodyReader) -> T + Send + 'static,
) -> Result<T, ApiError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(16);
    let feeder = tokio::spawn(async move {
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let item = chunk.map_err(std::io::Error::other);
            let stop = item.is_err();
            let tx = tx.clone();
            // A full channel blocks: send from a blocking thread so the runtime keeps going.
            let sent = tokio::task::spawn_blocking(move || tx.send(item).is_ok())
                .await
                .unwrap_or(false);
            if !sent || stop {
                break;
            }
        }
    });
    let outcome = tokio::task::spawn_blocking(move || {
        work(BodyReader {
            rx,
            current: Bytes::new(),
        })
    })
    .await
    .map_err(|e| ApiError(500, e.to_string()));
    feeder.abort();
    outcome
}

/// `POST /1.0/instances` with a backup tarball as the body: the instance it holds, named by
/// `X-LXD-name` (or `X-Incus-name`), on the pool `X-LXD-pool` names. The upload streams through
/// tar into the pool while it arrives (the answer comes once it is in, as LXD's does), and the
/// answer is an operation holding the outcome.
pub async fn import(st: &AppState, headers: &HeaderMap, body: Body) -> ApiResult {
    let (name, pool) = (lxd_header(headers, "name"), lxd_header(headers, "pool"));
    let instances = st.instances.clone();
    let outcome = with_body_reader(body, move |reader| {
        instances.import_backup(DEFAULT_PROJECT, reader, name.as_deref(), pool.as_deref())
    })
    .await?;
    let url = outcome.map(|rec| format!("/1.0/instances/{}", rec.name));
    import_finished(st, url, "instance-created", "instances", "Importing instance backup")
}

/// The answer to a backup import that already ran (the upload was the work): the lifecycle
/// event `created` for the new object at its URL, and a finished operation holding the outcome.
pub fn import_finished(
    st: &AppState,
    url: Result<String, ServiceError>,
    created: &str,
    kind: &str,
    description: &'static str,
) -> ApiResult {
    if let Ok(u) = &url {
        st.events.lifecycle(created, u);
    }
    let res = BTreeMap::from([(kind.to_string(), url.as_ref().ok().cloned().into_iter().collect())]);
    let op = st.ops.spawn(
        crate::operations::OpClass::Task,
        description,
        res,
        false,
        move |_| async move { url.map(|_| ()).map_err(|e| e.to_string()) },
    );
    operation(op)
}
