//! `/1.0/profiles`: config and device bundles applied to instances in order.
//!
//! As LXD: create answers 201 with the new profile's Location; GET one carries an ETag (the
//! store revision) that PUT and PATCH check against If-Match (412 on a mismatch); update,
//! rename and delete are synchronous. A change reaches the running instances using the profile
//! at once (their limits are recomputed).

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::routing::get;
use axum::Router;
use corral_api as api;

use crate::api::{blocking, envelope, if_match, parse, sync, ApiError, ApiResult, AppState, ListQuery};
use crate::instances::{InstanceRecord, ProfileRecord, DEFAULT_PROJECT};

/// The profile routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/1.0/profiles", get(list_profiles).post(create_profile))
        .route(
            "/1.0/profiles/{name}",
            get(get_profile)
                .put(put_profile)
                .patch(patch_profile)
                .post(rename_profile)
                .delete(delete_profile),
        )
}

fn profile_url(name: &str) -> String {
    format!("/1.0/profiles/{name}")
}

/// The wire form of a profile, `used_by` from `instances` (read once for a whole listing).
fn to_api_profile(p: ProfileRecord, instances: &[InstanceRecord]) -> api::Profile {
    let mut used_by: Vec<String> = instances
        .iter()
        .filter(|i| i.profiles.contains(&p.name))
        .map(|i| format!("/1.0/instances/{}", i.name))
        .collect();
    used_by.sort();
    api::Profile {
        name: p.name,
        description: p.description,
        config: p.config,
        devices: p.devices,
        used_by,
        project: DEFAULT_PROJECT.into(),
    }
}

async fn list_profiles(State(st): State<AppState>, Query(q): Query<ListQuery>) -> ApiResult {
    let profiles = st.instances.profiles(DEFAULT_PROJECT)?;
    if q.recursion.unwrap_or(0) == 0 {
        return sync(profiles.keys().map(|n| profile_url(n)).collect::<Vec<_>>());
    }
    let instances = st.instances.list(DEFAULT_PROJECT)?;
    sync(
        profiles
            .into_values()
            .map(|p| to_api_profile(p, &instances))
            .collect::<Vec<_>>(),
    )
}

async fn get_profile(State(st): State<AppState>, Path(name): Path<String>) -> ApiResult {
    let (p, rev) = st.instances.profile_with_rev(DEFAULT_PROJECT, &name)?;
    let instances = st.instances.list(DEFAULT_PROJECT)?;
    Ok(envelope(
        api::Response::sync(to_api_profile(p, &instances)),
        Some(rev.to_string()),
    ))
}

async fn create_profile(State(st): State<AppState>, body: axum::body::Bytes) -> ApiResult {
    let req: api::ProfilesPost = parse(&body)?;
    let rec = ProfileRecord {
        name: req.name,
        description: req.description,
        config: req.config,
        devices: req.devices,
    };
    let instances = st.instances.clone();
    let rec = blocking(move || instances.create_profile(DEFAULT_PROJECT, rec)).await?;
    let url = profile_url(&rec.name);
    st.events.lifecycle("profile-created", &url);
    // LXD's SyncResponseLocation: 201 Created, Location: the new profile.
    let mut resp = envelope(api::Response::sync_empty(), None);
    *resp.status_mut() = StatusCode::CREATED;
    if let Ok(loc) = HeaderValue::from_str(&url) {
        resp.headers_mut().insert("Location", loc);
    }
    Ok(resp)
}

async fn put_profile(
    State(st): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult {
    let put: api::ProfilePut = parse(&body)?;
    let etag = if_match(&headers)?;
    let new = ProfileRecord {
        name: name.clone(),
        description: put.description,
        config: put.config,
        devices: put.devices,
    };
    let instances = st.instances.clone();
    let n = name.clone();
    blocking(move || instances.update_profile(DEFAULT_PROJECT, &n, new, etag)).await?;
    st.events.lifecycle("profile-updated", &profile_url(&name));
    sync(serde_json::json!({}))
}

/// A PATCH body: what it names is merged into the profile (a config value "" unsets the key;
/// `null` and absent mean "not given").
#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct ProfilePatch {
    config: Option<BTreeMap<String, Option<String>>>,
    devices: Option<crate::instances::Devices>,
    description: Option<String>,
}

async fn patch_profile(
    State(st): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult {
    let patch: ProfilePatch = parse(&body)?;
    let etag = if_match(&headers)?;
    let instances = st.instances.clone();
    let n = name.clone();
    blocking(move || {
        instances.modify_profile(DEFAULT_PROJECT, &n, etag, |old| {
            let mut new = old.clone();
            for (k, v) in patch.config.iter().flatten() {
                match v.as_deref().unwrap_or("") {
                    "" => {
                        new.config.remove(k);
                    }
                    v => {
                        new.config.insert(k.clone(), v.to_string());
                    }
                }
            }
            if let Some(devices) = &patch.devices {
                new.devices.extend(devices.clone());
            }
            if let Some(d) = &patch.description {
                new.description = d.clone();
            }
            Ok(new)
        })
    })
    .await?;
    st.events.lifecycle("profile-updated", &profile_url(&name));
    sync(serde_json::json!({}))
}

async fn rename_profile(State(st): State<AppState>, Path(name): Path<String>, body: axum::body::Bytes) -> ApiResult {
    let req: api::ProfilePost = parse(&body)?;
    if name == "default" {
        return Err(ApiError(403, "Renaming the default profile is not allowed".into()));
    }
    let instances = st.instances.clone();
    let (old, new) = (name.clone(), req.name.clone());
    blocking(move || instances.rename_profile(DEFAULT_PROJECT, &old, &new)).await?;
    let url = profile_url(&req.name);
    st.events.lifecycle("profile-renamed", &url);
    let mut resp = envelope(api::Response::sync_empty(), None);
    *resp.status_mut() = StatusCode::CREATED;
    if let Ok(loc) = HeaderValue::from_str(&url) {
        resp.headers_mut().insert("Location", loc);
    }
    Ok(resp)
}

async fn delete_profile(State(st): State<AppState>, Path(name): Path<String>) -> ApiResult {
    if name == "default" {
        return Err(ApiError(403, "The 'default' profile cannot be deleted".into()));
    }
    let instances = st.instances.clone();
    let n = name.clone();
    blocking(move || instances.delete_profile(DEFAULT_PROJECT, &n)).await?;
    st.events.lifecycle("profile-deleted", &profile_url(&name));
    sync(serde_json::json!({}))
}
