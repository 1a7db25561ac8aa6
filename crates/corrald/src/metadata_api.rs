//! `/1.0/instances/{name}/metadata` and `/metadata/templates`: the instance's own copy of its
//! image's metadata.yaml and template files, which decide what is written into it at create,
//! copy, start and rename.
//!
//! The ETag of the metadata is a tag of the file's contents; PUT and PATCH check it against
//! If-Match. Template names are plain file names; no path reaches outside `templates/`.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response as HttpResponse;
use axum::routing::get;
use axum::Router;
use corral_api as api;
use corral_image::ImageMetadata;
use serde::Deserialize;

use crate::api::{blocking, envelope, parse, sync, ApiError, ApiResult, AppState};
use crate::events::Lifecycle;
use crate::instances::{ServiceError, DEFAULT_PROJECT};
use crate::templates;

/// The metadata routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/1.0/instances/{name}/metadata",
            get(get_metadata).put(put_metadata).patch(patch_metadata),
        )
        .route(
            "/1.0/instances/{name}/metadata/templates",
            get(get_templates).post(post_template).delete(delete_template),
        )
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct TemplateQuery {
    path: Option<String>,
}

fn metadata_url(instance: &str) -> String {
    format!("/1.0/instances/{instance}/metadata")
}

/// The volume of an existing instance.
fn volume(st: &AppState, name: &str) -> Result<std::path::PathBuf, ApiError> {
    st.instances.get(DEFAULT_PROJECT, name)?;
    Ok(st.instances.volume_pool(name)?.instance_volume(name))
}

/// The tag the client's If-Match names, if any.
fn if_match_tag(headers: &HeaderMap) -> Option<String> {
    headers
        .get("If-Match")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().trim_matches('"').to_string())
}

async fn get_metadata(State(st): State<AppState>, Path(name): Path<String>) -> ApiResult {
    let vol = volume(&st, &name)?;
    let (meta, tag) = blocking(move || templates::read_metadata(&vol)).await?;
    Ok(envelope(api::Response::sync(meta), Some(tag)))
}

async fn put_metadata(
    State(st): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let vol = volume(&st, &name)?;
    let meta: ImageMetadata = parse(&body)?;
    let etag = if_match_tag(&headers);
    blocking(move || templates::write_metadata(&vol, &meta, etag.as_deref())).await?;
    st.events.lifecycle("instance-metadata-updated", &metadata_url(&name));
    sync(serde_json::json!({}))
}

/// `PATCH`: the fields sent replace those of the current metadata.
async fn patch_metadata(
    State(st): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let vol = volume(&st, &name)?;
    let patch: serde_json::Map<String, serde_json::Value> = parse(&body)?;
    let etag = if_match_tag(&headers);
    blocking(move || {
        let (current, tag) = templates::read_metadata(&vol)?;
        let mut merged = serde_json::to_value(current).map_err(|e| ServiceError::Internal(e.to_string()))?;
        for (k, v) in patch {
            merged[k.as_str()] = v;
        }
        let meta: ImageMetadata = serde_json::from_value(merged)
            .map_err(|e| ServiceError::BadRequest(format!("invalid request body: {e}")))?;
        // The client's ETag if it sent one, else the one just read: either way a change made
        // in between is refused rather than overwritten.
        templates::write_metadata(&vol, &meta, Some(etag.as_deref().unwrap_or(&tag)))
    })
    .await?;
    st.events.lifecycle("instance-metadata-updated", &metadata_url(&name));
    sync(serde_json::json!({}))
}

/// Without `path`, the template names; with it, that template's contents.
async fn get_templates(
    State(st): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<TemplateQuery>,
) -> Result<HttpResponse, ApiError> {
    let vol = volume(&st, &name)?;
    match q.path.filter(|p| !p.is_empty()) {
        None => sync(blocking(move || templates::list_templates(&vol)).await?),
        Some(file) => {
            let body = blocking(move || templates::read_template(&vol, &file)).await?;
            let mut resp = HttpResponse::new(axum::body::Body::from(body));
            resp.headers_mut()
                .insert("Content-Type", HeaderValue::from_static("application/octet-stream"));
            Ok(resp)
        }
    }
}

fn template_event(action: &str, instance: &str, file: &str) -> Lifecycle {
    Lifecycle::new(action, &format!("/1.0/instances/{instance}/metadata/templates")).with("path", file)
}

fn required_path(q: TemplateQuery) -> Result<String, ApiError> {
    q.path.filter(|p| !p.is_empty()).ok_or_else(|| {
        ApiError(
            400,
            "missing `path`: name the template file, as ?path=hostname.tpl".into(),
        )
    })
}

/// Creates or replaces the template `path` with the body.
async fn post_template(
    State(st): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<TemplateQuery>,
    body: Bytes,
) -> ApiResult {
    let vol = volume(&st, &name)?;
    let file = required_path(q)?;
    let event = template_event("instance-metadata-template-created", &name, &file);
    blocking(move || templates::write_template(&vol, &file, &body)).await?;
    st.events.publish(event);
    sync(serde_json::json!({}))
}

async fn delete_template(
    State(st): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<TemplateQuery>,
) -> ApiResult {
    let vol = volume(&st, &name)?;
    let file = required_path(q)?;
    let event = template_event("instance-metadata-template-deleted", &name, &file);
    blocking(move || templates::delete_template(&vol, &file)).await?;
    st.events.publish(event);
    sync(serde_json::json!({}))
}
