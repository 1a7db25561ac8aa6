//! `/1.0/images` and `/1.0/images/aliases`: upload (one file, or metadata and rootfs as
//! multipart, as LXD's client sends them), read, edit, export and delete images; name them.
//!
//! GET of an image or an alias carries an ETag (the store revision) that PUT and PATCH check
//! against If-Match. An upload is written to temporary files that are removed whatever
//! happens; the import itself checks the image before keeping anything.

use std::collections::BTreeMap;
use std::path::{Path as FsPath, PathBuf};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response as HttpResponse;
use axum::routing::get;
use axum::Router;
use corral_api as api;
use futures_util::{Stream, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::api::{
    blocking, envelope, if_match, lifecycle_task, operation, parse, resources, sync, type_from_name, type_name,
    ApiError, ApiResult, AppState, ListQuery,
};
use crate::auth::Caller;
use crate::events::Lifecycle;
use crate::images::{AliasRecord, ImageRecord};
use crate::instances::{ServiceError, DEFAULT_PROJECT};
use crate::operations::OpClass;

/// The image routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/1.0/images", get(list_images).post(import_image))
        .route("/1.0/images/aliases", get(list_aliases).post(create_alias))
        .route(
            "/1.0/images/aliases/{name}",
            get(get_alias)
                .put(put_alias)
                .patch(patch_alias)
                .post(rename_alias)
                .delete(delete_alias),
        )
        .route(
            "/1.0/images/{fp}",
            get(get_image).put(put_image).patch(patch_image).delete(delete_image),
        )
        .route("/1.0/images/{fp}/export", get(export_image))
        .route("/1.0/images/{fp}/refresh", axum::routing::post(refresh_image))
        .route("/1.0/images/{fp}/secret", axum::routing::post(create_secret))
}

/// `?secret=` of `GET /1.0/images/{fp}` and its export (see `image_secrets.rs`).
#[derive(Debug, Default, serde::Deserialize)]
struct SecretQuery {
    #[serde(default)]
    secret: String,
}

/// `POST /1.0/images/{fp}/secret`: a token operation holding a secret that lets an untrusted
/// client read and download this image once.
async fn create_secret(State(st): State<AppState>, Path(fp): Path<String>) -> ApiResult {
    let rec = st.images.get(&fp)?;
    operation(crate::image_secrets::create(&st.ops, &rec.fingerprint))
}

/// Whether the caller may see only public images (and their aliases): an untrusted HTTPS
/// client, or a certificate restricted to projects other than the default one. On the unix
/// socket there is no caller: everything is visible.
fn public_only(caller: &Option<axum::Extension<Caller>>) -> bool {
    match caller.as_ref().map(|c| &c.0) {
        None => false,
        Some(Caller::Untrusted { .. }) => true,
        Some(Caller::Trusted { cert, .. }) => cert.restricted && !cert.projects.iter().any(|p| p == DEFAULT_PROJECT),
    }
}

/// The image `fp` as the caller may see it: a non-public image is "not found" to a caller who
/// sees only public ones (LXD answers 404, not 403, so that its existence does not show).
/// A private image is visible to such a caller with the secret of a running secret operation of
/// that image (which is returned, for the export to spend).
fn visible_image(
    st: &AppState,
    fp: &str,
    caller: &Option<axum::Extension<Caller>>,
    secret: &str,
) -> Result<(ImageRecord, i64, Option<crate::operations::OpState>), ApiError> {
    let (rec, rev) = st.images.get_with_rev(fp)?;
    if public_only(caller) && !rec.public {
        return match crate::image_secrets::find(&st.ops, &rec.fingerprint, secret) {
            Some(op) => Ok((rec, rev, Some(op))),
            None => Err(ApiError(404, format!("Image not found: {fp}"))),
        };
    }
    Ok((rec, rev, None))
}

fn image_url(fingerprint: &str) -> String {
    format!("/1.0/images/{fingerprint}")
}

fn alias_url(name: &str) -> String {
    format!("/1.0/images/aliases/{name}")
}

fn to_api_image(st: &AppState, rec: &ImageRecord) -> Result<api::Image, ServiceError> {
    let aliases = st.images.aliases_of(&rec.fingerprint)?;
    Ok(api::Image {
        auto_update: rec.auto_update,
        properties: rec.properties.clone(),
        public: rec.public,
        expires_at: rec.expires_at.map(api::Timestamp).unwrap_or_default(),
        profiles: if rec.profiles.is_empty() {
            vec!["default".into()]
        } else {
            rec.profiles.clone()
        },
        aliases: aliases
            .into_iter()
            .map(|a| api::ImageAlias {
                name: a.name,
                description: a.description,
            })
            .collect(),
        architecture: rec.architecture.clone(),
        cached: rec.cached,
        filename: rec.filename.clone(),
        fingerprint: rec.fingerprint.clone(),
        size: rec.size as i64,
        kind: api::InstanceType::Container,
        created_at: rec.created_at.map(api::Timestamp).unwrap_or_default(),
        last_used_at: rec.last_used_at.map(api::Timestamp).unwrap_or_default(),
        uploaded_at: rec.uploaded_at.map(api::Timestamp).unwrap_or_default(),
        project: DEFAULT_PROJECT.into(),
        update_source: rec.update_source.as_ref().map(|u| api::ImageSource {
            alias: u.alias.clone(),
            certificate: u.certificate.clone(),
            protocol: u.protocol.clone(),
            server: u.server.clone(),
            image_type: type_from_name(&u.image_type),
        }),
    })
}

async fn list_images(
    State(st): State<AppState>,
    Query(q): Query<ListQuery>,
    caller: Option<axum::Extension<Caller>>,
) -> ApiResult {
    let mut list = st.images.list()?;
    if public_only(&caller) {
        list.retain(|i| i.public);
    }
    if let Some(f) = q.filter.as_deref().filter(|f| !f.trim().is_empty()) {
        let filter = crate::filter::Filter::parse(f).map_err(|e| ApiError(400, e.to_string()))?;
        let mut kept = Vec::new();
        for rec in list {
            let image = serde_json::to_value(to_api_image(&st, &rec)?).map_err(|e| ApiError(500, e.to_string()))?;
            if filter.matches(&image) {
                kept.push(rec);
            }
        }
        list = kept;
    }
    if q.recursion.unwrap_or(0) == 0 {
        return sync(
            list.iter()
                .map(|i| format!("/1.0/images/{}", i.fingerprint))
                .collect::<Vec<_>>(),
        );
    }
    sync(
        list.iter()
            .map(|i| to_api_image(&st, i))
            .collect::<Result<Vec<_>, _>>()?,
    )
}

async fn get_image(
    State(st): State<AppState>,
    Path(fp): Path<String>,
    Query(q): Query<SecretQuery>,
    caller: Option<axum::Extension<Caller>>,
) -> ApiResult {
    let (rec, rev, _) = visible_image(&st, &fp, &caller, &q.secret)?;
    let mut image = to_api_image(&st, &rec)?;
    if public_only(&caller) {
        // What the image came from is the server owner's business.
        image.update_source = None;
    }
    Ok(envelope(api::Response::sync(image), Some(rev.to_string())))
}

/// Applies the writable fields of `put` to `rec`.
fn with_put(rec: &ImageRecord, put: api::ImagePut) -> ImageRecord {
    ImageRecord {
        public: put.public,
        auto_update: put.auto_update,
        properties: put.properties,
        expires_at: (!put.expires_at.is_zero()).then_some(put.expires_at.0),
        profiles: put.profiles.unwrap_or_default(),
        ..rec.clone()
    }
}

fn put_of(rec: &ImageRecord) -> api::ImagePut {
    api::ImagePut {
        auto_update: rec.auto_update,
        properties: rec.properties.clone(),
        public: rec.public,
        expires_at: rec.expires_at.map(api::Timestamp).unwrap_or_default(),
        profiles: Some(rec.profiles.clone()),
    }
}

/// `PUT`: replaces the writable fields (public, auto_update, properties, expires_at, profiles).
async fn put_image(State(st): State<AppState>, Path(fp): Path<String>, headers: HeaderMap, body: Bytes) -> ApiResult {
    let etag = if_match(&headers)?;
    let put: api::ImagePut = parse(&body)?;
    let images = st.images.clone();
    let rec = blocking(move || images.update(&fp, etag, |rec| Ok(with_put(rec, put)))).await?;
    st.events.lifecycle("image-updated", &image_url(&rec.fingerprint));
    sync(serde_json::json!({}))
}

/// `PATCH`: changes only the fields sent; `properties` are merged key by key, as LXD does.
async fn patch_image(State(st): State<AppState>, Path(fp): Path<String>, headers: HeaderMap, body: Bytes) -> ApiResult {
    let etag = if_match(&headers)?;
    let patch: serde_json::Map<String, serde_json::Value> = parse(&body)?;
    let images = st.images.clone();
    let rec = blocking(move || {
        images.update(&fp, etag, |rec| {
            let mut current = serde_json::to_value(put_of(rec)).map_err(|e| ServiceError::Internal(e.to_string()))?;
            for (k, v) in patch {
                match (k.as_str(), current.get_mut("properties")) {
                    ("properties", Some(serde_json::Value::Object(props))) => {
                        let serde_json::Value::Object(new) = v else {
                            return Err(ServiceError::BadRequest("properties must be an object".into()));
                        };
                        props.extend(new);
                    }
                    _ => {
                        current[k.as_str()] = v;
                    }
                }
            }
            let put: api::ImagePut = serde_json::from_value(current)
                .map_err(|e| ServiceError::BadRequest(format!("invalid request body: {e}")))?;
            Ok(with_put(rec, put))
        })
    })
    .await?;
    st.events.lifecycle("image-updated", &image_url(&rec.fingerprint));
    sync(serde_json::json!({}))
}

async fn delete_image(State(st): State<AppState>, Path(fp): Path<String>) -> ApiResult {
    let rec = st.images.get(&fp)?;
    let images = st.images.clone();
    let res = resources("images", &rec.fingerprint);
    let event = Lifecycle::new("image-deleted", &image_url(&rec.fingerprint));
    lifecycle_task(&st, "Deleting image", res, event, move || {
        images.delete(&rec.fingerprint)
    })
}

/// `POST /1.0/images/{fp}/refresh`: a new version from the image's server, if there is one.
async fn refresh_image(State(st): State<AppState>, Path(fp): Path<String>) -> ApiResult {
    crate::remote_images::refresh(&st, &fp).await
}

/// Files written for an upload; removed when dropped (an import moves what it keeps first).
#[derive(Default)]
struct TempFiles(Vec<PathBuf>);

impl TempFiles {
    fn new_path(&mut self, dir: &FsPath) -> PathBuf {
        let path = dir.join(format!("upload-{}", uuid::Uuid::new_v4()));
        self.0.push(path.clone());
        path
    }
}

impl Drop for TempFiles {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// An `X-LXD-<name>` or `X-Incus-<name>` header.
fn client_header(headers: &HeaderMap, name: &str) -> Option<String> {
    ["X-LXD-", "X-Incus-"].iter().find_map(|p| {
        headers
            .get(format!("{p}{name}"))
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    })
}

/// `POST /1.0/images`: the image file as the raw body, or (a split image) a multipart form
/// with a `metadata` part and a `rootfs` part, as LXD's client sends them. Headers:
/// `fingerprint` (checked), `filename`, `public`, `properties` (URL-encoded), and Corral's
/// `aliases` (comma-separated).
async fn import_image(State(st): State<AppState>, headers: HeaderMap, body: Body) -> ApiResult {
    let ctype = headers.get("Content-Type").and_then(|v| v.to_str().ok()).unwrap_or("");
    if ctype.starts_with("application/json") {
        let body = axum::body::to_bytes(body, 16 << 20)
            .await
            .map_err(|e| ApiError(400, format!("cannot read the request body: {e}")))?;
        let req: api::ImagesPost = parse(&body)?;
        return match req.source.as_ref().map(|s| s.kind.as_str()) {
            Some("image") => crate::remote_images::import_from_server(&st, req).await,
            Some("url") => crate::url_images::import_from_url(&st, req).await,
            Some("instance" | "snapshot" | "container") => crate::publish::publish(&st, req).await,
            Some(other) => Err(ApiError(
                400,
                format!("image sources of type {other:?} are not supported yet: upload the image file, copy it from an image server (type \"image\") or a URL (type \"url\"), or publish an instance (type \"instance\" or \"snapshot\")"),
            )),
            None => Err(ApiError(400, "the request has no image source".into())),
        };
    }
    let mut temp = TempFiles::default();
    let tmp_dir = st.images.paths.tmp();
    let (files, mut filename) = if ctype.starts_with("multipart/") {
        receive_multipart(body, ctype, &tmp_dir, &mut temp).await?
    } else {
        let path = temp.new_path(&tmp_dir);
        write_body(body, &path)
            .await
            .map_err(|e| ApiError(400, format!("cannot receive the image: {e}")))?;
        (
            corral_image::ImageFiles {
                metadata: path,
                rootfs: None,
            },
            String::new(),
        )
    };
    if let Some(name) = client_header(&headers, "filename") {
        filename = name;
    }
    let expected = client_header(&headers, "fingerprint");
    let public = client_header(&headers, "public").is_some_and(|p| p == "true" || p == "1");
    let properties: Vec<(String, String)> = match client_header(&headers, "properties") {
        Some(p) => serde_urlencoded::from_str(&p)
            .map_err(|e| ApiError(400, format!("invalid X-LXD-properties header (URL-encoded pairs): {e}")))?,
        None => Vec::new(),
    };
    let aliases = client_header(&headers, "aliases");
    let images = st.images.clone();
    let events = st.events.clone();
    operation(st.ops.spawn(
        OpClass::Task,
        "Downloading image",
        BTreeMap::new(),
        false,
        move |h| async move {
            tokio::task::spawn_blocking(move || {
                let _temp = temp;
                let mut rec = images
                    .import(files, &filename, expected.as_deref(), public)
                    .map_err(|e| e.to_string())?;
                if !properties.is_empty() {
                    rec = images
                        .update(&rec.fingerprint, None, |r| {
                            let mut r = r.clone();
                            r.properties.extend(properties);
                            Ok(r)
                        })
                        .map_err(|e| e.to_string())?;
                }
                for name in aliases
                    .iter()
                    .flat_map(|a| a.split(','))
                    .map(str::trim)
                    .filter(|a| !a.is_empty())
                {
                    let alias = AliasRecord {
                        name: name.to_string(),
                        target: rec.fingerprint.clone(),
                        ..Default::default()
                    };
                    images.add_alias(alias).map_err(|e| e.to_string())?;
                }
                events.lifecycle("image-created", &image_url(&rec.fingerprint));
                h.set_metadata(serde_json::json!({ "fingerprint": rec.fingerprint, "size": rec.size }));
                Ok(())
            })
            .await
            .map_err(|e| e.to_string())?
        },
    ))
}

fn bad_upload(e: impl std::fmt::Display) -> ApiError {
    ApiError(400, format!("invalid multipart image upload: {e}"))
}

/// Writes the `metadata` and `rootfs` parts of a multipart upload to temporary files.
async fn receive_multipart(
    body: Body,
    ctype: &str,
    dir: &FsPath,
    temp: &mut TempFiles,
) -> Result<(corral_image::ImageFiles, String), ApiError> {
    let boundary = multer::parse_boundary(ctype).map_err(bad_upload)?;
    let mut parts = multer::Multipart::new(body.into_data_stream(), boundary);
    let (mut metadata, mut rootfs, mut filename) = (None, None, String::new());
    while let Some(mut field) = parts.next_field().await.map_err(bad_upload)? {
        let name = field.name().unwrap_or_default().to_string();
        let slot = match name.as_str() {
            "metadata" if metadata.is_none() => &mut metadata,
            "rootfs" if rootfs.is_none() => &mut rootfs,
            "rootfs.img" => {
                return Err(ApiError(
                    400,
                    "virtual-machine images are not supported on this host: upload a container image".into(),
                ))
            }
            other => {
                return Err(bad_upload(format!(
                    "unexpected part {other:?}: send one `metadata` part, then one `rootfs` part"
                )))
            }
        };
        if name == "metadata" {
            filename = field.file_name().unwrap_or_default().to_string();
        }
        let path = temp.new_path(dir);
        let mut file = tokio::fs::File::create(&path)
            .await
            .map_err(|e| ApiError(500, format!("cannot store the upload: {e}")))?;
        while let Some(chunk) = field.chunk().await.map_err(bad_upload)? {
            file.write_all(&chunk)
                .await
                .map_err(|e| ApiError(500, format!("cannot store the upload: {e}")))?;
        }
        file.sync_all()
            .await
            .map_err(|e| ApiError(500, format!("cannot store the upload: {e}")))?;
        *slot = Some(path);
    }
    let metadata = metadata.ok_or_else(|| bad_upload("it has no `metadata` part"))?;
    Ok((corral_image::ImageFiles { metadata, rootfs }, filename))
}

async fn write_body(body: Body, path: &FsPath) -> std::io::Result<()> {
    let mut file = tokio::fs::File::create(path).await?;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        file.write_all(&chunk.map_err(std::io::Error::other)?).await?;
    }
    file.sync_all().await?;
    Ok(())
}

/// A file as a stream of chunks.
pub(crate) fn file_stream(file: tokio::fs::File) -> impl Stream<Item = std::io::Result<Bytes>> + Send {
    futures_util::stream::unfold(Some(file), |file| async move {
        let mut f = file?;
        let mut buf = vec![0u8; 256 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), Some(f)))
            }
            Err(e) => Some((Err(e), None)),
        }
    })
}

/// The usual extension of an image file, from its first bytes.
fn extension_of(path: &FsPath) -> &'static str {
    let mut magic = [0u8; 6];
    let n = std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read(&mut f, &mut magic))
        .unwrap_or(0);
    match &magic[..n] {
        [0xfd, b'7', b'z', b'X', b'Z', 0] => ".tar.xz",
        [0x1f, 0x8b, ..] => ".tar.gz",
        [0x28, 0xb5, 0x2f, 0xfd, ..] => ".tar.zst",
        [b'B', b'Z', b'h', ..] => ".tar.bz2",
        [b'h', b's', b'q', b's', ..] => ".squashfs",
        _ => ".tar",
    }
}

pub(crate) async fn open(path: &FsPath) -> Result<(tokio::fs::File, u64), ApiError> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| ApiError(500, format!("cannot read the image: {e}")))?;
    let len = file
        .metadata()
        .await
        .map_err(|e| ApiError(500, format!("cannot read the image: {e}")))?
        .len();
    Ok((file, len))
}

/// `GET /1.0/images/{fp}/export`: a unified image as its file; a split image as a multipart
/// form with its `metadata` and `rootfs` parts (what LXD's client expects), streamed.
async fn export_image(
    State(st): State<AppState>,
    Path(fp): Path<String>,
    Query(q): Query<SecretQuery>,
    caller: Option<axum::Extension<Caller>>,
) -> Result<HttpResponse, ApiError> {
    let (_, _, by_secret) = visible_image(&st, &fp, &caller, &q.secret)?;
    let (rec, meta, rootfs) = st.images.files(&fp)?;
    // A secret gives one download.
    if let Some(op) = by_secret {
        crate::image_secrets::spend(&st.ops, &op);
    }
    let (meta_file, meta_len) = open(&meta).await?;
    let mut resp;
    match rootfs {
        None => {
            let name = if rec.filename.is_empty() {
                format!("{}{}", rec.fingerprint, extension_of(&meta))
            } else {
                rec.filename.clone()
            };
            resp = HttpResponse::new(Body::from_stream(file_stream(meta_file)));
            let h = resp.headers_mut();
            h.insert("Content-Type", HeaderValue::from_static("application/octet-stream"));
            h.insert("Content-Length", HeaderValue::from(meta_len));
            if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename={name}")) {
                h.insert("Content-Disposition", v);
            }
        }
        Some(rootfs) => {
            let (rootfs_file, rootfs_len) = open(&rootfs).await?;
            let boundary = uuid::Uuid::new_v4().simple().to_string();
            let part = |lead: &str, name: &str, file: String| {
                Bytes::from(format!(
                    "{lead}--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{file}\"\r\n\
                     Content-Type: application/octet-stream\r\n\r\n"
                ))
            };
            let head = part(
                "",
                "metadata",
                format!("meta-{}{}", rec.fingerprint, extension_of(&meta)),
            );
            let middle = part(
                "\r\n",
                "rootfs",
                format!("{}{}", rec.fingerprint, extension_of(&rootfs)),
            );
            let tail = Bytes::from(format!("\r\n--{boundary}--\r\n"));
            let len = head.len() as u64 + meta_len + middle.len() as u64 + rootfs_len + tail.len() as u64;
            let once = |b: Bytes| futures_util::stream::once(std::future::ready(Ok::<_, std::io::Error>(b)));
            let stream = once(head)
                .chain(file_stream(meta_file))
                .chain(once(middle))
                .chain(file_stream(rootfs_file))
                .chain(once(tail));
            resp = HttpResponse::new(Body::from_stream(stream));
            let h = resp.headers_mut();
            if let Ok(v) = HeaderValue::from_str(&format!("multipart/form-data; boundary={boundary}")) {
                h.insert("Content-Type", v);
            }
            h.insert("Content-Length", HeaderValue::from(len));
        }
    }
    Ok(resp)
}

async fn list_aliases(
    State(st): State<AppState>,
    Query(q): Query<ListQuery>,
    caller: Option<axum::Extension<Caller>>,
) -> ApiResult {
    let mut list = st.images.aliases()?;
    if public_only(&caller) {
        let public: std::collections::HashSet<String> = st
            .images
            .list()?
            .into_iter()
            .filter(|i| i.public)
            .map(|i| i.fingerprint)
            .collect();
        list.retain(|a| public.contains(&a.target));
    }
    if q.recursion.unwrap_or(0) == 0 {
        return sync(
            list.iter()
                .map(|a| format!("/1.0/images/aliases/{}", a.name))
                .collect::<Vec<_>>(),
        );
    }
    sync(list.into_iter().map(to_api_alias).collect::<Vec<_>>())
}

fn to_api_alias(a: AliasRecord) -> api::ImageAliasesEntry {
    api::ImageAliasesEntry {
        name: a.name,
        description: a.description,
        target: a.target,
        kind: type_from_name(&a.kind),
    }
}

async fn get_alias(
    State(st): State<AppState>,
    Path(name): Path<String>,
    caller: Option<axum::Extension<Caller>>,
) -> ApiResult {
    let (alias, rev) = st.images.alias_with_rev(&name)?;
    if public_only(&caller) && !st.images.get(&alias.target).is_ok_and(|i| i.public) {
        return Err(ApiError(404, format!("Image alias not found: {name}")));
    }
    Ok(envelope(
        api::Response::sync(to_api_alias(alias)),
        Some(rev.to_string()),
    ))
}

async fn create_alias(State(st): State<AppState>, body: Bytes) -> ApiResult {
    let req: api::ImageAliasesPost = parse(&body)?;
    let images = st.images.clone();
    let url = alias_url(&req.name);
    blocking(move || {
        images.add_alias(AliasRecord {
            name: req.name,
            description: req.description,
            target: req.target,
            kind: type_name(req.kind),
        })
    })
    .await?;
    st.events.lifecycle("image-alias-created", &url);
    sync(serde_json::json!({}))
}

/// `PUT`: a new target and description (both replaced).
async fn put_alias(State(st): State<AppState>, Path(name): Path<String>, headers: HeaderMap, body: Bytes) -> ApiResult {
    let etag = if_match(&headers)?;
    let req: api::ImageAliasesEntryPut = parse(&body)?;
    if req.target.is_empty() {
        return Err(ApiError(
            400,
            "the alias needs a target: the image's fingerprint".into(),
        ));
    }
    let images = st.images.clone();
    let url = alias_url(&name);
    blocking(move || images.update_alias(&name, &req.description, &req.target, etag)).await?;
    st.events.lifecycle("image-alias-updated", &url);
    sync(serde_json::json!({}))
}

/// `PATCH`: changes the target or the description, whichever is sent.
async fn patch_alias(
    State(st): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let etag = if_match(&headers)?;
    let patch: serde_json::Map<String, serde_json::Value> = parse(&body)?;
    let field = |k: &str| -> Result<Option<String>, ApiError> {
        match patch.get(k) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(ApiError(400, format!("invalid request body: {k} must be a string"))),
        }
    };
    let (description, target) = (field("description")?, field("target")?);
    let images = st.images.clone();
    let url = alias_url(&name);
    blocking(move || {
        let current = images.alias(&name)?;
        images.update_alias(
            &name,
            description.as_deref().unwrap_or(&current.description),
            target.as_deref().unwrap_or(&current.target),
            etag,
        )
    })
    .await?;
    st.events.lifecycle("image-alias-updated", &url);
    sync(serde_json::json!({}))
}

async fn rename_alias(State(st): State<AppState>, Path(name): Path<String>, body: Bytes) -> ApiResult {
    let req: api::ImageAliasesEntryPost = parse(&body)?;
    let images = st.images.clone();
    let event = Lifecycle::new("image-alias-renamed", &alias_url(&req.name)).with("old_name", name.clone());
    blocking(move || images.rename_alias(&name, &req.name)).await?;
    st.events.publish(event);
    sync(serde_json::json!({}))
}

async fn delete_alias(State(st): State<AppState>, Path(name): Path<String>) -> ApiResult {
    let images = st.images.clone();
    let url = alias_url(&name);
    blocking(move || images.delete_alias(&name)).await?;
    st.events.lifecycle("image-alias-deleted", &url);
    sync(serde_json::json!({}))
}
