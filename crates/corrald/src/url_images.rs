//! `POST /1.0/images` with `source.type=url` (`lxc image import URL`, `corral image import URL`):
//! the daemon reads the URL's answer (corral_simplestreams::resolve_url: an `LXD-Image-URL` /
//! `LXD-Image-Hash` pair, or the image file itself), downloads the image file from that server
//! only to `tmp/remote/` (its sha256 checked against the hash as it is finished), and imports it
//! with [`Images::import`], which checks it is an image whose fingerprint is that hash. Any
//! failure (an HTTP error, a file that is no image, a bad checksum) leaves nothing: the
//! download's files are removed and no record is written.

use std::collections::BTreeMap;
use std::time::Instant;

use corral_api as api;
use corral_image::ImageFiles;
use corral_simplestreams::{ClientOptions, Progress};

use crate::api::{operation, ApiError, ApiResult, AppState};
use crate::images::{AliasRecord, ImageRecord, Images};
use crate::instances::ServiceError;
use crate::operations::OpClass;
use crate::remote_images::{progress_text, remote_error, set_progress};

/// Downloads and imports the image `url` names (blocking); its record.
pub fn import_url_blocking(
    images: &Images,
    url: &str,
    public: bool,
    progress: &dyn Fn(String),
) -> Result<ImageRecord, ServiceError> {
    let found = corral_simplestreams::resolve_url(url, ClientOptions::default()).map_err(|e| match e {
        corral_simplestreams::Error::Http { url, status } => {
            ServiceError::BadRequest(format!("cannot import the image: {url} answered HTTP {status}"))
        }
        e => remote_error(e),
    })?;
    let dir = images.paths.tmp().join("remote");
    std::fs::create_dir_all(&dir).map_err(|e| ServiceError::Internal(format!("cannot make {}: {e}", dir.display())))?;
    let dest = dir.join(format!("url-{}", uuid::Uuid::new_v4()));
    let remove = || {
        let _ = std::fs::remove_file(&dest);
        let _ = std::fs::remove_file(corral_simplestreams::partial_path(&dest));
    };
    let started = Instant::now();
    let mut last_pct = u64::MAX;
    let mut report = |p: Progress| {
        let pct = (p.done * 100).checked_div(p.total).unwrap_or(p.done >> 20);
        if pct != last_pct {
            last_pct = pct;
            progress(progress_text("rootfs", p, started));
        }
    };
    if let Err(e) = found.client.download(&found.file, &dest, &mut report) {
        remove();
        return Err(match e {
            corral_simplestreams::Error::Http { url, status } => {
                ServiceError::BadRequest(format!("cannot download the image: {url} answered HTTP {status}"))
            }
            e => remote_error(e),
        });
    }
    let filename = found
        .file
        .path
        .split(['?', '#'])
        .next()
        .and_then(|p| p.rsplit('/').next())
        .unwrap_or_default()
        .to_string();
    let expected = Some(found.file.sha256.as_str()).filter(|h| !h.is_empty());
    // Removes the file whatever happens (moved into the store on success).
    let rec = images.import(ImageFiles::unified(&dest), &filename, expected, public);
    remove();
    rec.map_err(|e| match e {
        ServiceError::BadRequest(m) => ServiceError::BadRequest(format!("the image at {url}: {m}")),
        e => e,
    })
}

/// `POST /1.0/images` with `source.type=url`: [`import_url_blocking`] as an operation, then the
/// request's properties and aliases.
pub async fn import_from_url(st: &AppState, req: api::ImagesPost) -> ApiResult {
    let url = req
        .source
        .as_ref()
        .map(|s| s.url.trim().to_string())
        .unwrap_or_default();
    if url.is_empty() {
        return Err(ApiError(
            400,
            "an image source of type \"url\" needs the url to download the image from".into(),
        ));
    }
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(ApiError(
            400,
            format!("invalid image URL {url:?}: it must start with https:// or http://"),
        ));
    }
    let (images, events) = (st.images.clone(), st.events.clone());
    operation(st.ops.spawn(
        OpClass::Task,
        "Downloading image",
        BTreeMap::new(),
        false,
        move |h| async move {
            tokio::task::spawn_blocking(move || {
                let mut rec =
                    import_url_blocking(&images, &url, req.public, &set_progress(&h)).map_err(|e| e.to_string())?;
                if !req.properties.is_empty() {
                    rec = images
                        .update(&rec.fingerprint, None, |r| {
                            let mut r = r.clone();
                            r.properties.extend(req.properties.clone());
                            Ok(r)
                        })
                        .map_err(|e| e.to_string())?;
                }
                events.lifecycle("image-created", &format!("/1.0/images/{}", rec.fingerprint));
                for a in &req.aliases {
                    let alias = AliasRecord {
                        name: a.name.clone(),
                        description: a.description.clone(),
                        target: rec.fingerprint.clone(),
                        ..Default::default()
                    };
                    images
                        .add_alias(alias)
                        .map_err(|e| format!("the image was imported as {}, but: {e}", rec.fingerprint))?;
                }
                h.set_metadata(serde_json::json!({ "fingerprint": rec.fingerprint, "size": rec.size }));
                Ok(())
            })
            .await
            .map_err(|e| e.to_string())?
        },
    ))
}
