//! `/1.0/profiles`: config and device bundles applied to instances in order.

use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::Router;
use corral_api as api;

use crate::api::{sync, ApiResult, AppState, ListQuery};
use crate::instances::{ServiceError, DEFAULT_PROJECT};

/// The profile routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/1.0/profiles", get(list_profiles))
        .route("/1.0/profiles/{name}", get(get_profile))
}

async fn list_profiles(State(st): State<AppState>, Query(q): Query<ListQuery>) -> ApiResult {
    let names: Vec<String> = st
        .instances
        .store
        .list(&format!("/profiles/{DEFAULT_PROJECT}/"))
        .map_err(ServiceError::from)?
        .into_iter()
        .filter_map(|kv| kv.key.rsplit('/').next().map(str::to_string))
        .collect();
    if q.recursion.unwrap_or(0) == 0 {
        return sync(names.iter().map(|n| format!("/1.0/profiles/{n}")).collect::<Vec<_>>());
    }
    sync(
        names
            .iter()
            .map(|n| to_api_profile(&st, n))
            .collect::<Result<Vec<_>, _>>()?,
    )
}

fn to_api_profile(st: &AppState, name: &str) -> Result<api::Profile, ServiceError> {
    let p = st.instances.profile(DEFAULT_PROJECT, name)?;
    let used_by = st
        .instances
        .list(DEFAULT_PROJECT)?
        .into_iter()
        .filter(|i| i.profiles.iter().any(|n| n == name))
        .map(|i| format!("/1.0/instances/{}", i.name))
        .collect();
    Ok(api::Profile {
        name: p.name,
        description: p.description,
        config: p.config,
        devices: p.devices,
        used_by,
        project: DEFAULT_PROJECT.into(),
    })
}

async fn get_profile(State(st): State<AppState>, Path(name): Path<String>) -> ApiResult {
    sync(to_api_profile(&st, &name)?)
}
