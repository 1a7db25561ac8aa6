//! `/1.0/storage-pools/{pool}/volumes/custom/{name}/backups`: create (an operation), list, get,
//! rename, delete, and `/export`, the tarball streamed as it is made. The import side is
//! `POST /1.0/storage-pools/{pool}/volumes[/custom]` with an `application/octet-stream` body
//! (see [`import`]), as LXD's. The work is in [`crate::volume_backups`].

use std::collections::BTreeMap;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::routing::get;
use axum::Router;
use corral_api as api;

use crate::api::{blocking, blocking_task, parse, sync, ApiError, ApiResult, AppState, ListQuery};
use crate::backups_api::{lxd_header, stream_tarball, with_body_reader};
use crate::volume_backups::VolumeBackupRecord;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/1.0/storage-pools/{pool}/volumes/custom/{name}/backups",
            get(list_backups).post(create_backup),
        )
        .route(
            "/1.0/storage-pools/{pool}/volumes/custom/{name}/backups/{backup}",
            get(get_backup).post(rename_backup).delete(delete_backup),
        )
        .route(
            "/1.0/storage-pools/{pool}/volumes/custom/{name}/backups/{backup}/export",
            get(export_backup),
        )
}

fn volume_url(pool: &str, name: &str) -> String {
    format!("/1.0/storage-pools/{pool}/volumes/custom/{name}")
}

fn backup_url(pool: &str, volume: &str, name: &str) -> String {
    format!("{}/backups/{name}", volume_url(pool, volume))
}

/// LXD's `StoragePoolVolumeBackup`.
fn to_api(b: &VolumeBackupRecord) -> serde_json::Value {
    serde_json::json!({
        "name": b.name,
        "created_at": b.created_at.map(api::Timestamp).unwrap_or_default(),
        "expires_at": b.expires_at.map(api::Timestamp).unwrap_or_default(),
        "volume_only": b.volume_only,
        "optimized_storage": b.optimized_storage,
    })
}

fn resources(pool: &str, volume: &str) -> BTreeMap<String, Vec<String>> {
    BTreeMap::from([("storage_volumes".to_string(), vec![volume_url(pool, volume)])])
}

async fn list_backups(
    State(st): State<AppState>,
    Path((pool, name)): Path<(String, String)>,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    let (p, n) = (pool.clone(), name.clone());
    let list = blocking(move || st.volumes.backups(&p, &n)).await?;
    if q.recursion.unwrap_or(0) == 0 {
        return sync(
            list.iter()
                .map(|b| backup_url(&pool, &name, &b.name))
                .collect::<Vec<_>>(),
        );
    }
    sync(list.iter().map(to_api).collect::<Vec<_>>())
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct BackupsPost {
    name: String,
    expires_at: Option<api::Timestamp>,
    volume_only: bool,
    optimized_storage: bool,
    compression_algorithm: String,
}

async fn create_backup(
    State(st): State<AppState>,
    Path((pool, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let req: BackupsPost = parse(&body)?;
    crate::backup_tar::check_compression(&req.compression_algorithm)?;
    // The name is settled here: the operation's resources carry it (lxc reads it there).
    let volumes = st.volumes.clone();
    let (p, n, wanted, optimized) = (pool.clone(), name.clone(), req.name.clone(), req.optimized_storage);
    let backup_name = blocking(move || {
        if optimized {
            crate::backup_tar::check_optimizable(&volumes.pools.get(&p)?)?;
        }
        if wanted.is_empty() {
            return volumes.next_backup_name(&p, &n);
        }
        crate::snapshots::validate_snapshot_name(&wanted)?;
        volumes.get(&p, &n)?;
        Ok(wanted)
    })
    .await?;
    let rec = VolumeBackupRecord {
        name: backup_name.clone(),
        pool: pool.clone(),
        volume: name.clone(),
        expires_at: req.expires_at.map(|t| t.0).filter(|t| t.timestamp() > 0),
        volume_only: req.volume_only,
        optimized_storage: req.optimized_storage,
        compression_algorithm: req.compression_algorithm,
        ..Default::default()
    };
    let url = backup_url(&pool, &name, &backup_name);
    let mut res = resources(&pool, &name);
    // As LXD 5.0 names it (lxc storage volume export strips the /1.0/backups/ prefix).
    res.insert("backups".to_string(), vec![format!("/1.0/backups/{backup_name}")]);
    let volumes = st.volumes.clone();
    let events = st.events.clone();
    blocking_task(&st, "Backing up storage volume", res, move || {
        volumes.create_backup(rec)?;
        events.lifecycle("storage-volume-backup-created", &url);
        Ok(())
    })
}

async fn get_backup(
    State(st): State<AppState>,
    Path((pool, name, backup)): Path<(String, String, String)>,
) -> ApiResult {
    let b = blocking(move || st.volumes.backup(&pool, &name, &backup)).await?;
    sync(to_api(&b))
}

async fn rename_backup(
    State(st): State<AppState>,
    Path((pool, name, backup)): Path<(String, String, String)>,
    body: Bytes,
) -> ApiResult {
    #[derive(serde::Deserialize, Default)]
    #[serde(default)]
    struct Post {
        name: String,
    }
    let req: Post = parse(&body)?;
    let volumes = st.volumes.clone();
    let events = st.events.clone();
    let res = resources(&pool, &name);
    blocking_task(&st, "Renaming storage volume backup", res, move || {
        volumes.rename_backup(&pool, &name, &backup, &req.name)?;
        events.lifecycle("storage-volume-backup-renamed", &backup_url(&pool, &name, &req.name));
        Ok(())
    })
}

async fn delete_backup(
    State(st): State<AppState>,
    Path((pool, name, backup)): Path<(String, String, String)>,
) -> ApiResult {
    let volumes = st.volumes.clone();
    let events = st.events.clone();
    let res = resources(&pool, &name);
    blocking_task(&st, "Deleting storage volume backup", res, move || {
        volumes.delete_backup(&pool, &name, &backup)?;
        events.lifecycle("storage-volume-backup-deleted", &backup_url(&pool, &name, &backup));
        Ok(())
    })
}

async fn export_backup(
    State(st): State<AppState>,
    Path((pool, name, backup)): Path<(String, String, String)>,
) -> Result<axum::response::Response, ApiError> {
    let export = blocking(move || {
        let (rec, _) = st.volumes.get(&pool, &name)?;
        let api_volume = crate::volumes_api::to_api(&st, rec)?;
        st.volumes.export_backup(&pool, &name, &backup, api_volume)
    })
    .await?;
    stream_tarball(export)
}

/// `POST /1.0/storage-pools/{pool}/volumes[/custom]` with a volume backup tarball as the body:
/// the volume it holds, named by `X-LXD-name` (or `X-Incus-name`) or as in the backup. The
/// upload streams through tar into the pool while it arrives; the answer is an operation
/// holding the outcome.
pub async fn import(st: &AppState, pool: String, headers: &HeaderMap, body: Body) -> ApiResult {
    let name = lxd_header(headers, "name");
    let volumes = st.volumes.clone();
    let p = pool.clone();
    let outcome = with_body_reader(body, move |reader| volumes.import_backup(&p, reader, name.as_deref())).await?;
    let url = outcome.map(|rec| volume_url(&pool, &rec.name));
    crate::backups_api::import_finished(
        st,
        url,
        "storage-volume-created",
        "storage_volumes",
        "Importing storage volume backup",
    )
}
