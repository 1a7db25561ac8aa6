//! corrald as a simplestreams image server: `GET /streams/v1/index.json`,
//! `/streams/v1/images.json` and the files they name (`/streams/images/<fp>/meta…`, `rootfs…`
//! or `image…`), made from the store's *public* images, for anyone (untrusted callers too, as
//! public images are). So `corral remote add x https://HOST:8443 --protocol=simplestreams`
//! (or any simplestreams client that trusts the server's certificate) lists and launches them.
//!
//! The documents are made on each request from the image records with
//! `corral_simplestreams::add_image`; the sha256 of each file (the items carry it; a unified
//! image's is its fingerprint) is computed once per file and remembered.

use std::collections::HashMap;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::get;
use axum::Router;
use corral_image::FileFormat;
use corral_simplestreams::{Products, ServedFile, ServedImage};

use crate::api::{blocking, ApiError, AppState};
use crate::images::Images;
use crate::instances::ServiceError;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/streams/v1/index.json", get(index))
        .route("/streams/v1/images.json", get(products))
        .route("/streams/images/{fp}/{file}", get(file))
}

/// What names an image's files on the server: `meta`, `rootfs` (split) or `image` (unified).
fn file_path(fp: &str, role: &str, format: FileFormat) -> String {
    let ext = match format {
        FileFormat::Tarball(corral_image::Compression::None) => ".tar",
        FileFormat::Tarball(corral_image::Compression::Gzip) => ".tar.gz",
        FileFormat::Tarball(corral_image::Compression::Xz) => ".tar.xz",
        FileFormat::Tarball(corral_image::Compression::Zstd) => ".tar.zst",
        FileFormat::Tarball(corral_image::Compression::Bzip2) => ".tar.bz2",
        FileFormat::Squashfs => ".squashfs",
        FileFormat::Qcow2 => ".qcow2",
    };
    format!("streams/images/{fp}/{role}{ext}")
}

/// sha256 of a stored image file, remembered by path, size and modification time.
fn sha256_of(path: &FsPath) -> Result<(u64, String), ServiceError> {
    type Key = (PathBuf, u64, Option<SystemTime>);
    static KNOWN: OnceLock<Mutex<HashMap<Key, String>>> = OnceLock::new();
    let known = KNOWN.get_or_init(Default::default);
    let meta = std::fs::metadata(path).map_err(|e| ServiceError::Internal(format!("{}: {e}", path.display())))?;
    let key = (path.to_path_buf(), meta.len(), meta.modified().ok());
    if let Some(sum) = known.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok((meta.len(), sum.clone()));
    }
    use sha2::Digest;
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| ServiceError::Internal(format!("{}: {e}", path.display())))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| ServiceError::Internal(format!("{}: {e}", path.display())))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let sum: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    known.lock().unwrap_or_else(|e| e.into_inner()).insert(key, sum.clone());
    Ok((meta.len(), sum))
}

fn format_of(path: &FsPath) -> Result<FileFormat, ServiceError> {
    corral_image::detect_format(path).map_err(|e| ServiceError::Internal(e.to_string()))
}

/// The product file of the public images (blocking: may hash files).
fn product_file(images: &Images) -> Result<Products, ServiceError> {
    let mut doc = Products::default();
    let mut public: Vec<_> = images.list()?.into_iter().filter(|r| r.public).collect();
    // Oldest first: an alias moved between images ends on the newest.
    public.sort_by_key(|r| r.created_at);
    for rec in public {
        let (rec, meta, rootfs) = images.files(&rec.fingerprint)?;
        let fp = &rec.fingerprint;
        let mut files = Vec::new();
        match &rootfs {
            Some(rootfs) => {
                for (role, path) in [("meta", &meta), ("rootfs", rootfs)] {
                    let format = format_of(path)?;
                    let (size, sha256) = sha256_of(path)?;
                    files.push(ServedFile {
                        path: file_path(fp, role, format),
                        size,
                        sha256,
                        format,
                    });
                }
            }
            None => {
                let format = format_of(&meta)?;
                let size = std::fs::metadata(&meta).map(|m| m.len()).unwrap_or(0);
                files.push(ServedFile {
                    path: file_path(fp, "image", format),
                    size,
                    sha256: fp.clone(),
                    format,
                });
            }
        }
        let created = rec.created_at.map(|t| t.timestamp()).unwrap_or(0);
        let [os, release, variant, serial] = corral_simplestreams::names_of(&rec.properties, created, [None; 4]);
        let aliases = images.aliases_of(fp)?.into_iter().map(|a| a.name).collect();
        let served = ServedImage {
            fingerprint: fp.clone(),
            architecture: rec.architecture.clone(),
            os,
            release,
            variant,
            serial,
            aliases,
            files,
        };
        corral_simplestreams::add_image(&mut doc, &served);
    }
    Ok(doc)
}

fn json(value: &impl serde::Serialize) -> HttpResponse {
    match serde_json::to_vec(value) {
        Ok(bytes) => {
            let mut resp = HttpResponse::new(Body::from(bytes));
            resp.headers_mut()
                .insert("Content-Type", HeaderValue::from_static("application/json"));
            resp
        }
        Err(e) => ApiError(500, e.to_string()).into_response(),
    }
}

async fn index(State(st): State<AppState>) -> Result<HttpResponse, ApiError> {
    let images = st.images.clone();
    let doc = blocking(move || product_file(&images)).await?;
    Ok(json(&corral_simplestreams::index_of(&doc)))
}

async fn products(State(st): State<AppState>) -> Result<HttpResponse, ApiError> {
    let images = st.images.clone();
    let doc = blocking(move || product_file(&images)).await?;
    Ok(json(&doc))
}

/// One file of a public image (404 for anything else).
async fn file(State(st): State<AppState>, Path((fp, name)): Path<(String, String)>) -> Result<HttpResponse, ApiError> {
    let not_found = || ApiError(404, format!("no file {name} of a public image {fp} here"));
    let rec = st.images.get(&fp).map_err(|_| not_found())?;
    if !rec.public || rec.fingerprint != fp {
        return Err(not_found());
    }
    let (_, meta, rootfs) = st.images.files(&fp)?;
    let role = name.split('.').next().unwrap_or_default();
    let path = match (role, rootfs) {
        ("meta", Some(_)) | ("image", None) => meta,
        ("rootfs", Some(rootfs)) => rootfs,
        _ => return Err(not_found()),
    };
    let format = format_of(&path)?;
    if file_path(&fp, role, format) != format!("streams/images/{fp}/{name}") {
        return Err(not_found());
    }
    let (file, len) = crate::images_api::open(&path).await?;
    let mut resp = HttpResponse::new(Body::from_stream(crate::images_api::file_stream(file)));
    let h = resp.headers_mut();
    h.insert("Content-Type", HeaderValue::from_static("application/octet-stream"));
    h.insert("Content-Length", HeaderValue::from(len));
    Ok(resp)
}
