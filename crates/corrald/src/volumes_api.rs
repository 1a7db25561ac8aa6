//! `/1.0/storage-pools/{pool}/volumes`: custom volumes (create empty or as a copy, get, update
//! with `size`, rename, delete, snapshots and restore) and the listing of every volume of a
//! pool (custom, container, image), as LXD serves them. The work is in [`crate::volumes`].

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::routing::get;
use axum::Router;
use corral_api as api;

use crate::api::{blocking, blocking_task, envelope, if_match, parse, sync, ApiError, ApiResult, AppState, ListQuery};
use crate::instances::{ServiceError, DEFAULT_PROJECT};
use crate::volumes::VolumeRecord;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/1.0/storage-pools/{pool}/volumes", get(list_all).post(create_any))
        .route(
            "/1.0/storage-pools/{pool}/volumes/custom",
            get(list_custom).post(create_custom),
        )
        .route(
            "/1.0/storage-pools/{pool}/volumes/custom/{name}",
            get(get_volume)
                .put(put_volume)
                .patch(patch_volume)
                .post(rename_volume)
                .delete(delete_volume),
        )
        .route(
            "/1.0/storage-pools/{pool}/volumes/custom/{name}/snapshots",
            get(list_snapshots).post(create_snapshot),
        )
        .route(
            "/1.0/storage-pools/{pool}/volumes/custom/{name}/snapshots/{snapshot}",
            get(get_snapshot).delete(delete_snapshot),
        )
}

fn volume_url(pool: &str, name: &str) -> String {
    format!("/1.0/storage-pools/{pool}/volumes/custom/{name}")
}

fn created(url: &str) -> ApiResult {
    let mut resp = envelope(api::Response::sync_empty(), None);
    *resp.status_mut() = StatusCode::CREATED;
    if let Ok(loc) = HeaderValue::from_str(url) {
        resp.headers_mut().insert("Location", loc);
    }
    Ok(resp)
}

/// The instances and profiles whose disk devices name the volume.
fn users(st: &AppState, pool: &str, name: &str) -> Result<Vec<String>, ServiceError> {
    let uses = |devices: &crate::instances::Devices| {
        devices.values().any(|d| {
            d.get("type").map(String::as_str) == Some("disk")
                && d.get("pool").map(String::as_str) == Some(pool)
                && d.get("source").map(String::as_str) == Some(name)
        })
    };
    let profiles = st.instances.profiles(DEFAULT_PROJECT)?;
    let mut out: Vec<String> = profiles
        .values()
        .filter(|p| uses(&p.devices))
        .map(|p| format!("/1.0/profiles/{}", p.name))
        .collect();
    for rec in st.instances.list(DEFAULT_PROJECT)? {
        if uses(&st.instances.expand_with(&rec, &profiles)?.1) {
            out.push(format!("/1.0/instances/{}", rec.name));
        }
    }
    out.sort();
    Ok(out)
}

pub(crate) fn to_api(st: &AppState, rec: VolumeRecord) -> Result<api::StorageVolume, ServiceError> {
    Ok(api::StorageVolume {
        used_by: users(st, &rec.pool, &rec.name)?,
        name: rec.name,
        kind: "custom".into(),
        description: rec.description,
        config: rec.config,
        location: "none".into(),
        content_type: "filesystem".into(),
        project: DEFAULT_PROJECT.into(),
        created_at: rec.created_at.map(api::Timestamp),
    })
}

async fn list_all(State(st): State<AppState>, Path(pool): Path<String>, Query(q): Query<ListQuery>) -> ApiResult {
    let recursion = q.recursion.unwrap_or(0);
    let list = blocking(move || {
        let mut out = Vec::new();
        for rec in st.volumes.list(&pool)? {
            out.push(to_api(&st, rec)?);
        }
        let p = st.instances.pools.get(&pool)?;
        for inst in st.instances.list(DEFAULT_PROJECT)? {
            if inst.pool == pool || (inst.pool.is_empty() && pool == crate::pools::DEFAULT_POOL) {
                out.push(api::StorageVolume {
                    name: inst.name.clone(),
                    kind: "container".into(),
                    content_type: "filesystem".into(),
                    location: "none".into(),
                    used_by: vec![format!("/1.0/instances/{}", inst.name)],
                    ..Default::default()
                });
            }
        }
        for image in st.images.list()? {
            if p.has_image(&image.fingerprint) {
                out.push(api::StorageVolume {
                    name: image.fingerprint.clone(),
                    kind: "image".into(),
                    content_type: "filesystem".into(),
                    location: "none".into(),
                    used_by: vec![format!("/1.0/images/{}", image.fingerprint)],
                    ..Default::default()
                });
            }
        }
        Ok((pool, out))
    })
    .await?;
    let (pool, list) = list;
    if recursion == 0 {
        return sync(
            list.iter()
                .map(|v| format!("/1.0/storage-pools/{pool}/volumes/{}/{}", v.kind, v.name))
                .collect::<Vec<_>>(),
        );
    }
    sync(list)
}

async fn list_custom(State(st): State<AppState>, Path(pool): Path<String>, Query(q): Query<ListQuery>) -> ApiResult {
    let recursion = q.recursion.unwrap_or(0);
    let p = pool.clone();
    let list = blocking(move || {
        st.volumes
            .list(&p)?
            .into_iter()
            .map(|r| to_api(&st, r))
            .collect::<Result<Vec<_>, _>>()
    })
    .await?;
    if recursion == 0 {
        return sync(list.iter().map(|v| volume_url(&pool, &v.name)).collect::<Vec<_>>());
    }
    sync(list)
}

/// The body of a create: JSON of at most 16 MiB, or a backup upload (`None`, answered here).
async fn create_body(
    st: &AppState,
    pool: &str,
    headers: &HeaderMap,
    body: axum::body::Body,
) -> Result<Result<axum::body::Bytes, axum::response::Response>, ApiError> {
    if crate::backups_api::is_upload(headers) {
        return Ok(Err(crate::volume_backups_api::import(
            st,
            pool.to_string(),
            headers,
            body,
        )
        .await?));
    }
    axum::body::to_bytes(body, 16 << 20)
        .await
        .map(Ok)
        .map_err(|e| ApiError(400, format!("cannot read the request body: {e}")))
}

async fn create_any(
    State(st): State<AppState>,
    Path(pool): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> ApiResult {
    let body = match create_body(&st, &pool, &headers, body).await? {
        Ok(b) => b,
        Err(imported) => return Ok(imported),
    };
    let req: api::StorageVolumesPost = parse(&body)?;
    if !req.kind.is_empty() && req.kind != "custom" {
        return Err(ApiError(
            400,
            format!(
                "volumes of type {:?} cannot be created directly: only custom volumes",
                req.kind
            ),
        ));
    }
    create(st, pool, req).await
}

async fn create_custom(
    State(st): State<AppState>,
    Path(pool): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> ApiResult {
    let body = match create_body(&st, &pool, &headers, body).await? {
        Ok(b) => b,
        Err(imported) => return Ok(imported),
    };
    let req: api::StorageVolumesPost = parse(&body)?;
    create(st, pool, req).await
}

async fn create(st: AppState, pool: String, req: api::StorageVolumesPost) -> ApiResult {
    if req.name.is_empty() {
        return Err(ApiError(400, "No name provided: give the volume a name".into()));
    }
    if !req.content_type.is_empty() && req.content_type != "filesystem" {
        return Err(ApiError(
            400,
            "only filesystem volumes exist here (block volumes are for virtual machines)".into(),
        ));
    }
    let url = volume_url(&pool, &req.name);
    let volumes = st.volumes.clone();
    let events = st.events.clone();
    if req.source.kind == "copy" {
        // A copy is an operation, as lxc expects.
        let res = BTreeMap::from([("storage_volumes".to_string(), vec![url.clone()])]);
        return blocking_task(&st, "Copying storage volume", res, move || {
            let src_pool = if req.source.pool.is_empty() {
                pool.clone()
            } else {
                req.source.pool.clone()
            };
            volumes.create(
                &pool,
                &req.name,
                &req.description,
                req.config,
                Some((&src_pool, &req.source.name, req.source.volume_only)),
            )?;
            events.lifecycle("storage-volume-created", &url);
            Ok(())
        });
    }
    if !req.source.kind.is_empty() {
        return Err(ApiError(
            400,
            format!("unsupported volume source type {:?}: use copy", req.source.kind),
        ));
    }
    blocking(move || volumes.create(&pool, &req.name, &req.description, req.config, None)).await?;
    st.events.lifecycle("storage-volume-created", &url);
    created(&url)
}

async fn get_volume(State(st): State<AppState>, Path((pool, name)): Path<(String, String)>) -> ApiResult {
    let (vol, rev) = blocking(move || {
        let (rec, rev) = st.volumes.get(&pool, &name)?;
        Ok((to_api(&st, rec)?, rev))
    })
    .await?;
    Ok(envelope(api::Response::sync(vol), Some(rev.to_string())))
}

async fn put_volume(
    State(st): State<AppState>,
    Path((pool, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult {
    let put: api::StorageVolumePut = parse(&body)?;
    let etag = if_match(&headers)?;
    let volumes = st.volumes.clone();
    let url = volume_url(&pool, &name);
    if !put.restore.is_empty() {
        blocking(move || volumes.restore(&pool, &name, &put.restore)).await?;
    } else {
        blocking(move || volumes.update(&pool, &name, &put.description, put.config, etag)).await?;
    }
    st.events.lifecycle("storage-volume-updated", &url);
    sync(serde_json::json!({}))
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct VolumePatch {
    config: Option<BTreeMap<String, String>>,
    description: Option<String>,
}

async fn patch_volume(
    State(st): State<AppState>,
    Path((pool, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult {
    let patch: VolumePatch = parse(&body)?;
    let etag = if_match(&headers)?;
    let volumes = st.volumes.clone();
    let url = volume_url(&pool, &name);
    blocking(move || {
        let (old, _) = volumes.get(&pool, &name)?;
        let mut config = old.config.clone();
        for (k, v) in patch.config.unwrap_or_default() {
            if v.is_empty() {
                config.remove(&k);
            } else {
                config.insert(k, v);
            }
        }
        volumes.update(
            &pool,
            &name,
            &patch.description.unwrap_or(old.description),
            config,
            etag,
        )
    })
    .await?;
    st.events.lifecycle("storage-volume-updated", &url);
    sync(serde_json::json!({}))
}

/// Refuses a change to a volume some instance or profile uses.
fn refuse_in_use(st: &AppState, pool: &str, name: &str, what: &str) -> Result<(), ServiceError> {
    let users = users(st, pool, name)?;
    if users.is_empty() {
        return Ok(());
    }
    Err(ServiceError::BadRequest(format!(
        "Cannot {what} storage volume {name:?}: it is in use by {} (detach it first)",
        users.join(", ")
    )))
}

async fn rename_volume(
    State(st): State<AppState>,
    Path((pool, name)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult {
    let req: api::StorageVolumePost = parse(&body)?;
    let target_pool = if req.pool.is_empty() {
        pool.clone()
    } else {
        req.pool.clone()
    };
    let new_name = if req.name.is_empty() {
        name.clone()
    } else {
        req.name.clone()
    };
    if target_pool != pool {
        let new_url = volume_url(&target_pool, &new_name);
        let inner = st.clone();
        let res = BTreeMap::from([("storage_volumes".to_string(), vec![volume_url(&pool, &name)])]);
        let events = st.events.clone();
        return blocking_task(&st, "Moving storage volume", res, move || {
            refuse_in_use(&inner, &pool, &name, "move")?;
            inner.volumes.move_to_pool(&pool, &name, &target_pool, &new_name)?;
            events.lifecycle("storage-volume-moved", &new_url);
            Ok(())
        });
    }
    let new_url = volume_url(&pool, &req.name);
    let inner = st.clone();
    blocking(move || {
        refuse_in_use(&inner, &pool, &name, "rename")?;
        inner.volumes.rename(&pool, &name, &req.name)
    })
    .await?;
    st.events.lifecycle("storage-volume-renamed", &new_url);
    created(&new_url)
}

async fn delete_volume(State(st): State<AppState>, Path((pool, name)): Path<(String, String)>) -> ApiResult {
    let url = volume_url(&pool, &name);
    let inner = st.clone();
    blocking(move || {
        inner.volumes.get(&pool, &name)?;
        refuse_in_use(&inner, &pool, &name, "delete")?;
        inner.volumes.delete(&pool, &name)
    })
    .await?;
    st.events.lifecycle("storage-volume-deleted", &url);
    sync(serde_json::json!({}))
}

fn to_api_snapshot(s: &crate::volumes::VolumeSnapshot) -> api::StorageVolumeSnapshot {
    api::StorageVolumeSnapshot {
        name: s.name.clone(),
        description: s.description.clone(),
        config: s.config.clone(),
        content_type: "filesystem".into(),
        created_at: s.created_at.map(api::Timestamp),
        expires_at: None,
    }
}

async fn list_snapshots(
    State(st): State<AppState>,
    Path((pool, name)): Path<(String, String)>,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    let (rec, _) = st.volumes.get(&pool, &name)?;
    if q.recursion.unwrap_or(0) == 0 {
        return sync(
            rec.snapshots
                .iter()
                .map(|s| format!("{}/snapshots/{}", volume_url(&pool, &name), s.name))
                .collect::<Vec<_>>(),
        );
    }
    sync(rec.snapshots.iter().map(to_api_snapshot).collect::<Vec<_>>())
}

async fn create_snapshot(
    State(st): State<AppState>,
    Path((pool, name)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult {
    let req: api::StorageVolumeSnapshotsPost = parse(&body)?;
    let volumes = st.volumes.clone();
    let snapshot = if req.name.is_empty() {
        let (rec, _) = st.volumes.get(&pool, &name)?;
        (0..)
            .map(|i| format!("snap{i}"))
            .find(|n| !rec.snapshots.iter().any(|s| &s.name == n))
            .unwrap_or_default()
    } else {
        req.name
    };
    let url = format!("{}/snapshots/{snapshot}", volume_url(&pool, &name));
    let res = BTreeMap::from([("storage_volumes".to_string(), vec![volume_url(&pool, &name)])]);
    let events = st.events.clone();
    blocking_task(&st, "Snapshotting storage volume", res, move || {
        volumes.snapshot(&pool, &name, &snapshot)?;
        events.lifecycle("storage-volume-snapshot-created", &url);
        Ok(())
    })
}

async fn get_snapshot(
    State(st): State<AppState>,
    Path((pool, name, snapshot)): Path<(String, String, String)>,
) -> ApiResult {
    let (rec, _) = st.volumes.get(&pool, &name)?;
    let s = rec
        .snapshots
        .iter()
        .find(|s| s.name == snapshot)
        .ok_or_else(|| ApiError(404, format!("Snapshot not found: {name}/{snapshot}")))?;
    sync(to_api_snapshot(s))
}

async fn delete_snapshot(
    State(st): State<AppState>,
    Path((pool, name, snapshot)): Path<(String, String, String)>,
) -> ApiResult {
    let volumes = st.volumes.clone();
    let res = BTreeMap::from([("storage_volumes".to_string(), vec![volume_url(&pool, &name)])]);
    blocking_task(&st, "Deleting storage volume snapshot", res, move || {
        volumes.delete_snapshot(&pool, &name, &snapshot)
    })
}
