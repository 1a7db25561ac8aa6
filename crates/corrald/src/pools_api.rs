//! `/1.0/storage-pools`: list, create (dir, btrfs on a loop file, a device or an existing
//! btrfs directory), get, update (description and user.* keys), delete, and `/resources`.
//! The work is in [`crate::pools`].

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::routing::get;
use axum::Router;
use corral_api as api;

use crate::api::{blocking, envelope, if_match, parse, sync, ApiError, ApiResult, AppState, ListQuery};
use crate::instances::{ServiceError, DEFAULT_PROJECT};
use crate::pools::PoolRecord;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/1.0/storage-pools", get(list_pools).post(create_pool))
        .route(
            "/1.0/storage-pools/{name}",
            get(get_pool).put(put_pool).patch(patch_pool).delete(delete_pool),
        )
        .route("/1.0/storage-pools/{name}/resources", get(pool_resources))
}

fn pool_url(name: &str) -> String {
    format!("/1.0/storage-pools/{name}")
}

/// What uses a pool: profiles whose disks name it, instances on it, images unpacked in it.
fn used_by(st: &AppState, name: &str) -> Result<Vec<String>, ServiceError> {
    let mut used: Vec<String> = st
        .instances
        .profiles(DEFAULT_PROJECT)?
        .values()
        .filter(|p| {
            p.devices
                .values()
                .any(|d| d.get("pool").map(String::as_str) == Some(name))
        })
        .map(|p| format!("/1.0/profiles/{}", p.name))
        .collect();
    used.extend(
        st.instances
            .list(DEFAULT_PROJECT)?
            .iter()
            .filter(|i| i.pool == name || (i.pool.is_empty() && name == crate::pools::DEFAULT_POOL))
            .map(|i| format!("/1.0/instances/{}", i.name)),
    );
    if let Ok(volumes) = st.volumes.list(name) {
        used.extend(
            volumes
                .iter()
                .map(|v| format!("/1.0/storage-pools/{name}/volumes/custom/{}", v.name)),
        );
    }
    if let Ok(pool) = st.instances.pools.get(name) {
        used.extend(
            st.images
                .list()?
                .iter()
                .filter(|i| pool.has_image(&i.fingerprint))
                .map(|i| format!("/1.0/images/{}", i.fingerprint)),
        );
    }
    Ok(used)
}

fn to_api(st: &AppState, rec: PoolRecord) -> Result<api::StoragePool, ServiceError> {
    let used_by = used_by(st, &rec.name)?;
    Ok(api::StoragePool {
        status: st.instances.pools.status(&rec.name).0.into(),
        name: rec.name,
        driver: rec.driver,
        description: rec.description,
        config: rec.config,
        locations: vec!["none".into()],
        used_by,
    })
}

async fn list_pools(State(st): State<AppState>, Query(q): Query<ListQuery>) -> ApiResult {
    let recursion = q.recursion.unwrap_or(0);
    let pools = blocking(move || {
        st.instances
            .pools
            .records()?
            .into_iter()
            .map(|r| {
                if recursion == 0 {
                    Ok(api::StoragePool {
                        name: r.name,
                        ..Default::default()
                    })
                } else {
                    to_api(&st, r)
                }
            })
            .collect::<Result<Vec<_>, _>>()
    })
    .await?;
    if recursion == 0 {
        return sync(pools.iter().map(|p| pool_url(&p.name)).collect::<Vec<_>>());
    }
    sync(pools)
}

async fn get_pool(State(st): State<AppState>, Path(name): Path<String>) -> ApiResult {
    let (pool, rev) = blocking(move || {
        let (rec, rev) = st.instances.pools.record(&name)?;
        Ok((to_api(&st, rec)?, rev))
    })
    .await?;
    Ok(envelope(api::Response::sync(pool), Some(rev.to_string())))
}

async fn create_pool(State(st): State<AppState>, body: axum::body::Bytes) -> ApiResult {
    let req: api::StoragePoolsPost = parse(&body)?;
    if req.name.is_empty() {
        return Err(ApiError(400, "No name provided: give the pool a name".into()));
    }
    if req.driver.is_empty() {
        return Err(ApiError(
            400,
            format!("No driver provided: give one of {}", crate::pools::DRIVERS.join(", ")),
        ));
    }
    let pools = st.instances.pools.clone();
    let rec = blocking(move || pools.create(&req.name, &req.driver, &req.description, req.config)).await?;
    let url = pool_url(&rec.name);
    st.events.lifecycle("storage-pool-created", &url);
    let mut resp = envelope(api::Response::sync_empty(), None);
    *resp.status_mut() = StatusCode::CREATED;
    if let Ok(loc) = HeaderValue::from_str(&url) {
        resp.headers_mut().insert("Location", loc);
    }
    Ok(resp)
}

async fn put_pool(
    State(st): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult {
    let put: api::StoragePoolPut = parse(&body)?;
    let etag = if_match(&headers)?;
    let pools = st.instances.pools.clone();
    let n = name.clone();
    blocking(move || pools.update(&n, &put.description, put.config, etag)).await?;
    st.events.lifecycle("storage-pool-updated", &pool_url(&name));
    sync(serde_json::json!({}))
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct PoolPatch {
    config: Option<BTreeMap<String, String>>,
    description: Option<String>,
}

async fn patch_pool(
    State(st): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult {
    let patch: PoolPatch = parse(&body)?;
    let etag = if_match(&headers)?;
    let pools = st.instances.pools.clone();
    let n = name.clone();
    blocking(move || {
        let (old, _) = pools.record(&n)?;
        let mut config = old.config.clone();
        for (k, v) in patch.config.unwrap_or_default() {
            if v.is_empty() {
                config.remove(&k);
            } else {
                config.insert(k, v);
            }
        }
        pools.update(&n, &patch.description.unwrap_or(old.description), config, etag)
    })
    .await?;
    st.events.lifecycle("storage-pool-updated", &pool_url(&name));
    sync(serde_json::json!({}))
}

async fn delete_pool(State(st): State<AppState>, Path(name): Path<String>) -> ApiResult {
    let inner = st.clone();
    let n = name.clone();
    blocking(move || {
        inner.instances.pools.record(&n)?;
        if n == crate::pools::DEFAULT_POOL {
            return Err(ServiceError::BadRequest("the default pool cannot be deleted".into()));
        }
        let users: Vec<String> = used_by(&inner, &n)?
            .into_iter()
            .filter(|u| !u.starts_with("/1.0/images/"))
            .collect();
        if !users.is_empty() {
            return Err(ServiceError::BadRequest(format!(
                "The storage pool is currently in use by {}: move or delete them first",
                users.join(", ")
            )));
        }
        inner.instances.pools.delete(&n)
    })
    .await?;
    st.events.lifecycle("storage-pool-deleted", &pool_url(&name));
    sync(serde_json::json!({}))
}

async fn pool_resources(State(st): State<AppState>, Path(name): Path<String>) -> ApiResult {
    let space = blocking(move || {
        let pool = st.instances.pools.get(&name)?;
        pool.driver.space().map_err(|e| ServiceError::Internal(e.to_string()))
    })
    .await?;
    sync(api::ResourcesStoragePool {
        space: api::ResourcesStoragePoolSpace {
            used: space.used_bytes,
            total: space.total_bytes,
        },
        inodes: api::ResourcesStoragePoolInodes {
            used: space.used_inodes,
            total: space.total_inodes,
        },
    })
}
