//! `POST /1.0/images` with `source.type=instance|snapshot` (`corral publish`, `lxc publish`):
//! an image made from an instance's (or snapshot's) volume.
//!
//! The volume's `rootfs/`, its `metadata.yaml` (architecture; properties from the request and
//! the instance's `image.*` keys; a new creation date; no expiry) and `templates/` are packed
//! straight from the volume into one unified tarball (corral-image's pack: deterministic,
//! compressed while written, fingerprint computed on the way), then stored without a second
//! pass over it; its volume is unpacked in the background, or by the first launch.
//! A running instance is frozen while its rootfs is read; where the pool has copy-on-write
//! snapshots, a snapshot is taken while frozen and read after the thaw instead (as backups
//! do). Nothing of the instance's own state (`volatile.*` keys, its rendered templates'
//! output, its name) goes into the image: metadata.yaml is rebuilt from the image's fields.

use std::collections::BTreeMap;
use std::path::PathBuf;

use corral_api as api;
use corral_image::{Compression, FileFormat, ImageFiles, ImageInfo, ImageMetadata};

use crate::api::{operation, ApiError, ApiResult, AppState};
use crate::images::{AliasRecord, ImageRecord, Images};
use crate::instances::{Instances, Runtime, ServiceError, DEFAULT_PROJECT};
use crate::operations::OpClass;

type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// The compression of a published image: the request's, else `images.compression_algorithm`,
/// else zstd (fast, multithreaded; LXD's default is gzip, which is 5 to 10 times slower).
pub fn compression_of(requested: &str, server_default: Option<&str>) -> Result<Compression> {
    let name = Some(requested)
        .filter(|s| !s.is_empty())
        .or(server_default.filter(|s| !s.is_empty()))
        .unwrap_or("zstd");
    if name == "squashfs" {
        return Err(ServiceError::BadRequest(
            "squashfs images cannot be made here: use zstd, xz, gzip or none".into(),
        ));
    }
    name.parse::<Compression>().map_err(ServiceError::BadRequest)
}

/// What to publish.
pub struct PublishRequest {
    pub instance: String,
    pub snapshot: Option<String>,
    pub compression: Compression,
    pub public: bool,
    pub properties: BTreeMap<String, String>,
    pub aliases: Vec<api::ImageAlias>,
    pub filename: String,
}

/// Removes a temporary file or snapshot when dropped.
struct Undo<F: FnMut()>(Option<F>);

impl<F: FnMut()> Drop for Undo<F> {
    fn drop(&mut self) {
        if let Some(mut f) = self.0.take() {
            f();
        }
    }
}

/// Packs and imports the image (blocking). Its record.
pub fn publish_blocking(instances: &Instances, images: &Images, req: PublishRequest) -> Result<ImageRecord> {
    let (inst, _) = instances.get(DEFAULT_PROJECT, &req.instance)?;
    let pool = instances.pool_of(&inst)?;
    if let Some(s) = &req.snapshot {
        instances.snapshot(DEFAULT_PROJECT, &req.instance, s)?;
    }
    let base: PathBuf = match &req.snapshot {
        Some(s) => pool.snapshot_volume(&req.instance, s),
        None => pool.instance_volume(&req.instance),
    };
    // metadata.yaml: the volume's (templates, properties of the image it came from), with
    // this image's fields.
    let mut meta = std::fs::read_to_string(base.join("metadata.yaml"))
        .ok()
        .and_then(|t| ImageMetadata::from_yaml(&t).ok())
        .unwrap_or_default();
    meta.architecture = if inst.architecture.is_empty() {
        corral_image::host_architecture().to_string()
    } else {
        inst.architecture.clone()
    };
    meta.creation_date = chrono::Utc::now().timestamp();
    meta.expiry_date = 0;
    for (k, v) in &inst.config {
        if let Some(p) = k.strip_prefix("image.") {
            meta.properties.insert(p.to_string(), v.clone());
        }
    }
    meta.properties.extend(req.properties.clone());
    let tmp_dir = images.paths.tmp();
    std::fs::create_dir_all(&tmp_dir)
        .map_err(|e| ServiceError::Internal(format!("cannot make {}: {e}", tmp_dir.display())))?;
    let out = tmp_dir.join(format!("publish-{}", uuid::Uuid::new_v4().simple()));
    let _out = Undo(Some(|| {
        let _ = std::fs::remove_file(&out);
    }));

    // What to read: the snapshot; else the instance, frozen while it is read (or while a
    // copy-on-write snapshot of it is taken).
    let running = req.snapshot.is_none() && matches!(instances.runtime(&req.instance), Runtime::Running(_));
    let cow = pool.driver.info().copy_on_write;
    let mut read_from = base.clone();
    let frozen_snapshot = format!(".publish-{}", uuid::Uuid::new_v4().simple());
    let mut took_snapshot = false;
    if running && cow {
        let client = instances.client(&req.instance);
        client
            .freeze()
            .map_err(|e| ServiceError::Internal(format!("cannot freeze {}: {e}", req.instance)))?;
        let taken = pool.snapshot_instance(&req.instance, &frozen_snapshot);
        let _ = client.thaw();
        taken.map_err(|e| ServiceError::Internal(format!("cannot snapshot {}: {e}", req.instance)))?;
        took_snapshot = true;
        read_from = pool.snapshot_volume(&req.instance, &frozen_snapshot);
    }
    let _snapshot = Undo(Some(|| {
        if took_snapshot {
            let _ = pool.delete_snapshot(&req.instance, &frozen_snapshot);
        }
    }));
    let frozen = running && !cow;
    if frozen {
        instances
            .client(&req.instance)
            .freeze()
            .map_err(|e| ServiceError::Internal(format!("cannot freeze {}: {e}", req.instance)))?;
    }
    let templates = read_from.join("templates");
    let templates = templates.is_dir().then_some(templates);
    let packed = corral_image::pack_unified(
        &read_from.join("rootfs"),
        &meta,
        templates.as_deref(),
        &out,
        req.compression,
    );
    if frozen {
        let _ = instances.client(&req.instance).thaw();
    }
    let fp = packed.map_err(|e| ServiceError::Internal(format!("cannot pack {}: {e}", req.instance)))?;
    if images.get(&fp).is_ok_and(|r| r.fingerprint == fp) {
        return Err(ServiceError::Conflict(format!(
            "Image with same fingerprint already exists: {fp}"
        )));
    }
    let filename = if req.filename.is_empty() {
        format!("{}{}", req.instance.replace('/', "-"), req.compression.extension())
    } else {
        req.filename.clone()
    };
    // Packed here, fingerprint computed while written: no second pass to check it, and no
    // unpack now (the pool gets its volume in the background or at the first launch).
    let size = std::fs::metadata(&out)
        .map_err(|e| ServiceError::Internal(format!("cannot read {}: {e}", out.display())))?
        .len();
    let info = ImageInfo {
        fingerprint: fp.clone(),
        metadata: meta.clone(),
        size,
        split: false,
        rootfs_format: FileFormat::Tarball(req.compression),
    };
    let mut rec = images.store_checked(ImageFiles::unified(&out), &filename, info, req.public)?;
    for a in &req.aliases {
        images.add_alias(AliasRecord {
            name: a.name.clone(),
            description: a.description.clone(),
            target: rec.fingerprint.clone(),
            ..Default::default()
        })?;
    }
    if rec.properties != meta.properties {
        rec = images.update(&rec.fingerprint, None, |r| {
            let mut r = r.clone();
            r.properties = meta.properties.clone();
            Ok(r)
        })?;
    }
    Ok(rec)
}

/// `POST /1.0/images` from an instance or snapshot: an operation whose metadata has the new
/// image's `fingerprint` and `size`.
pub async fn publish(st: &AppState, req: api::ImagesPost) -> ApiResult {
    let source = req.source.clone().unwrap_or_default();
    let name = source.name.trim().to_string();
    let (instance, snapshot) = match name.split_once('/') {
        Some((i, s)) => (i.to_string(), Some(s.to_string())),
        None => (name.clone(), None),
    };
    if instance.is_empty() || snapshot.as_deref() == Some("") {
        return Err(ApiError(
            400,
            "the image source needs the instance (or instance/snapshot) name".into(),
        ));
    }
    if source.kind == "snapshot" && snapshot.is_none() {
        return Err(ApiError(
            400,
            format!("a snapshot source is named INSTANCE/SNAPSHOT, not {name:?}"),
        ));
    }
    st.instances.get(DEFAULT_PROJECT, &instance)?;
    let compression = compression_of(
        &req.compression_algorithm,
        st.server
            .config()
            .get("images.compression_algorithm")
            .map(String::as_str),
    )?;
    let request = PublishRequest {
        instance: instance.clone(),
        snapshot,
        compression,
        public: req.public,
        properties: req.properties.clone(),
        aliases: req.aliases.clone(),
        filename: req.filename.clone(),
    };
    let (instances, images, events) = (st.instances.clone(), st.images.clone(), st.events.clone());
    let resources = BTreeMap::from([("instances".to_string(), vec![format!("/1.0/instances/{instance}")])]);
    operation(st.ops.spawn(
        OpClass::Task,
        "Publishing instance",
        resources,
        false,
        move |h| async move {
            tokio::task::spawn_blocking(move || {
                let rec = publish_blocking(&instances, &images, request).map_err(|e| e.to_string())?;
                events.lifecycle("image-created", &format!("/1.0/images/{}", rec.fingerprint));
                h.set_metadata_key("fingerprint", serde_json::Value::String(rec.fingerprint.clone()));
                h.set_metadata_key("size", serde_json::Value::from(rec.size));
                Ok(())
            })
            .await
            .map_err(|e| e.to_string())?
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_defaults_to_zstd() {
        assert_eq!(compression_of("", None).unwrap(), Compression::Zstd);
        assert_eq!(compression_of("", Some("xz")).unwrap(), Compression::Xz);
        assert_eq!(compression_of("gzip", Some("xz")).unwrap(), Compression::Gzip);
        assert_eq!(compression_of("none", None).unwrap(), Compression::None);
        assert!(compression_of("squashfs", None).is_err());
        assert!(compression_of("lz4", None).is_err());
    }
}
