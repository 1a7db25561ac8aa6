//! The image service: import image files, keep their records and aliases, and unpack each
//! image once into the pool as the base that instances are copied from.
//!
//! An import is checked before anything is kept: the file must be a valid image whose
//! fingerprint matches what the client announced (if it did); a bad file leaves nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use corral_image::{ImageFiles, ImageInfo};
use corral_store::{cas_json, get_json, put_json, Compare, Op, Store};
use serde::{Deserialize, Serialize};

use crate::instances::{ServiceError, DEFAULT_PROJECT};
use crate::paths::Paths;
use crate::storage::{ImageSource, Pool};

type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// An image as stored. A versioned state format: only grows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default)]
pub struct ImageRecord {
    pub fingerprint: String,
    pub filename: String,
    pub size: u64,
    pub architecture: String,
    pub properties: BTreeMap<String, String>,
    pub public: bool,
    pub auto_update: bool,
    pub cached: bool,
    /// Whether the image came as two files (metadata + rootfs).
    pub split: bool,
    pub created_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub uploaded_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub profiles: Vec<String>,
    /// Where it was downloaded from (a remote image server), for refreshes.
    pub update_source: Option<UpdateSource>,
}

/// The remote image server an image came from (LXD's `update_source`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(default)]
pub struct UpdateSource {
    pub server: String,
    /// `simplestreams`, `lxd` or `incus`.
    pub protocol: String,
    /// The alias it was asked for by (empty when asked for by fingerprint).
    pub alias: String,
    /// The server's certificate (PEM), when it is not publicly trusted.
    pub certificate: String,
    /// `container`.
    pub image_type: String,
}

/// An image alias as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default)]
pub struct AliasRecord {
    pub name: String,
    pub description: String,
    pub target: String,
    /// `container` (or `virtual-machine`, which Corral never runs).
    #[serde(rename = "type")]
    pub kind: String,
}

pub fn image_key(fingerprint: &str) -> String {
    format!("/images/{DEFAULT_PROJECT}/{fingerprint}")
}

pub fn alias_key(name: &str) -> String {
    format!("/image-aliases/{DEFAULT_PROJECT}/{name}")
}

/// LXD allows most names, slashes included (`debian/12`); an empty name, a leading slash or
/// white space would make the alias unreachable by URL or CLI.
fn validate_alias_name(name: &str) -> Result<()> {
    if name.is_empty() || name.starts_with('/') || name.chars().any(char::is_whitespace) {
        return Err(ServiceError::BadRequest(format!(
            "invalid alias name {name:?}: it must be non-empty, without spaces, not starting with /"
        )));
    }
    Ok(())
}

/// The image service.
pub struct Images {
    pub store: Arc<dyn Store>,
    pub paths: Paths,
    pub pool: Pool,
    /// Images instances are being made from, with how many: the cache expiry leaves them be.
    pub held: std::sync::Mutex<BTreeMap<String, usize>>,
}

/// An instance is being made from an image: until this drops, the image does not expire.
pub struct ImageHold {
    images: Arc<Images>,
    fingerprint: String,
}

impl Drop for ImageHold {
    fn drop(&mut self) {
        let mut held = self.images.held.lock().expect("image holds lock poisoned");
        if let Some(n) = held.get_mut(&self.fingerprint) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.fingerprint);
            }
        }
    }
}

impl Images {
    /// Keeps `fp` from expiring while an instance is made from it (taken when the request
    /// names the image, before its operation starts).
    pub fn hold(self: &Arc<Self>, fp: &str) -> ImageHold {
        *self
            .held
            .lock()
            .expect("image holds lock poisoned")
            .entry(fp.to_string())
            .or_default() += 1;
        ImageHold {
            images: self.clone(),
            fingerprint: fp.to_string(),
        }
    }

    pub fn is_held(&self, fp: &str) -> bool {
        self.held.lock().expect("image holds lock poisoned").contains_key(fp)
    }

    pub fn list(&self) -> Result<Vec<ImageRecord>> {
        self.store
            .list(&format!("/images/{DEFAULT_PROJECT}/"))?
            .into_iter()
            .map(|kv| {
                serde_json::from_slice(&kv.value)
                    .map_err(|e| ServiceError::Internal(format!("corrupt record {}: {e}", kv.key)))
            })
            .collect()
    }

    /// The image whose fingerprint is `fp` or starts with it (unambiguously, as LXD allows).
    pub fn get(&self, fp: &str) -> Result<ImageRecord> {
        self.get_with_rev(fp).map(|(rec, _)| rec)
    }

    /// [`Images::get`] with the record's revision (its ETag).
    pub fn get_with_rev(&self, fp: &str) -> Result<(ImageRecord, i64)> {
        if fp.len() == 64 {
            if let Some(found) = get_json::<ImageRecord>(&*self.store, &image_key(fp))? {
                return Ok(found);
            }
        }
        let mut found: Vec<ImageRecord> = self
            .list()?
            .into_iter()
            .filter(|i| i.fingerprint.starts_with(fp))
            .collect();
        match (found.len(), fp.is_empty()) {
            (1, false) => {
                let fp = found.remove(0).fingerprint;
                get_json::<ImageRecord>(&*self.store, &image_key(&fp))?
                    .ok_or_else(|| ServiceError::NotFound(format!("Image not found: {fp}")))
            }
            (0, _) | (_, true) => Err(ServiceError::NotFound(format!("Image not found: {fp}"))),
            _ => Err(ServiceError::BadRequest(format!(
                "More than one image matches {fp:?}: give more of the fingerprint"
            ))),
        }
    }

    pub fn aliases(&self) -> Result<Vec<AliasRecord>> {
        self.store
            .list(&format!("/image-aliases/{DEFAULT_PROJECT}/"))?
            .into_iter()
            .map(|kv| {
                serde_json::from_slice(&kv.value)
                    .map_err(|e| ServiceError::Internal(format!("corrupt record {}: {e}", kv.key)))
            })
            .collect()
    }

    pub fn alias(&self, name: &str) -> Result<AliasRecord> {
        self.alias_with_rev(name).map(|(a, _)| a)
    }

    /// An alias and its revision (its ETag).
    pub fn alias_with_rev(&self, name: &str) -> Result<(AliasRecord, i64)> {
        get_json::<AliasRecord>(&*self.store, &alias_key(name))?
            .ok_or_else(|| ServiceError::NotFound(format!("Image alias not found: {name}")))
    }

    /// Points an alias at another image or redescribes it (PUT and PATCH). With `etag`, a
    /// revision other than it is a 412.
    pub fn update_alias(&self, name: &str, description: &str, target: &str, etag: Option<i64>) -> Result<AliasRecord> {
        let (old, rev) = self.alias_with_rev(name)?;
        if etag.is_some_and(|tag| tag != rev) {
            return Err(ServiceError::PreconditionFailed(
                "ETag doesn't match the alias's current state".into(),
            ));
        }
        let target = self.get(target)?.fingerprint;
        let new = AliasRecord {
            description: description.to_string(),
            target,
            ..old
        };
        match cas_json(&*self.store, &alias_key(name), Some(rev), &new)? {
            Ok(_) => Ok(new),
            Err(_) => Err(ServiceError::PreconditionFailed(
                "the alias changed during the update; read it again".into(),
            )),
        }
    }

    /// Renames an alias in one transaction: the new name must be free.
    pub fn rename_alias(&self, from: &str, to: &str) -> Result<()> {
        validate_alias_name(to)?;
        let (old, rev) = self.alias_with_rev(from)?;
        let new = AliasRecord {
            name: to.to_string(),
            ..old
        };
        let value = serde_json::to_vec(&new).map_err(|e| ServiceError::Internal(e.to_string()))?;
        let done = self.store.txn(
            &[
                Compare::ModRevision(alias_key(from), rev),
                Compare::Missing(alias_key(to)),
            ],
            &[Op::Delete(alias_key(from)), Op::Put(alias_key(to), value)],
        )?;
        if !done.succeeded {
            if self.store.get(&alias_key(to))?.is_some() {
                return Err(ServiceError::Conflict(format!("Alias {to:?} already exists")));
            }
            return Err(ServiceError::Conflict(format!(
                "Alias {from:?} changed during the rename; try again"
            )));
        }
        Ok(())
    }

    pub fn aliases_of(&self, fingerprint: &str) -> Result<Vec<AliasRecord>> {
        Ok(self
            .aliases()?
            .into_iter()
            .filter(|a| a.target == fingerprint)
            .collect())
    }

    pub fn add_alias(&self, alias: AliasRecord) -> Result<()> {
        validate_alias_name(&alias.name)?;
        let target = self.get(&alias.target)?;
        let alias = AliasRecord {
            target: target.fingerprint,
            kind: if alias.kind.is_empty() {
                "container".into()
            } else {
                alias.kind
            },
            ..alias
        };
        match cas_json(&*self.store, &alias_key(&alias.name), None, &alias)? {
            Ok(_) => Ok(()),
            Err(_) => Err(ServiceError::Conflict(format!("Alias {:?} already exists", alias.name))),
        }
    }

    pub fn delete_alias(&self, name: &str) -> Result<()> {
        if !self.store.delete(&alias_key(name))? {
            return Err(ServiceError::NotFound(format!("Image alias not found: {name}")));
        }
        Ok(())
    }

    /// Resolves what an instance source names (alias, else fingerprint) to a fingerprint.
    pub fn resolve(&self, alias: Option<&str>, fingerprint: Option<&str>) -> Result<String> {
        if let Some(a) = alias.filter(|a| !a.is_empty()) {
            return match self.alias(a) {
                Ok(rec) => Ok(rec.target),
                // `lxc launch <fingerprint>` sends the fingerprint as the alias.
                Err(_) => self
                    .get(a)
                    .map(|i| i.fingerprint)
                    .map_err(|_| ServiceError::NotFound(format!("Image not found: {a}"))),
            };
        }
        match fingerprint.filter(|f| !f.is_empty()) {
            Some(f) => self.get(f).map(|i| i.fingerprint),
            None => Err(ServiceError::BadRequest(
                "the image source needs an alias or a fingerprint".into(),
            )),
        }
    }

    /// Imports the image in `files` (temporary files the caller wrote). `expected` is the
    /// fingerprint the client announced. Blocking: call from a blocking task.
    pub fn import(
        &self,
        files: ImageFiles,
        filename: &str,
        expected: Option<&str>,
        public: bool,
    ) -> Result<ImageRecord> {
        let cleanup = |files: &ImageFiles| {
            let _ = std::fs::remove_file(&files.metadata);
            if let Some(r) = &files.rootfs {
                let _ = std::fs::remove_file(r);
            }
        };
        let info: ImageInfo = match corral_image::inspect(&files) {
            Ok(i) => i,
            Err(e) => {
                cleanup(&files);
                // Name what the client sent, not our temporary file.
                let what = if filename.is_empty() {
                    "the uploaded file".to_string()
                } else {
                    filename.to_string()
                };
                let msg = e.to_string().replace(&files.metadata.display().to_string(), &what);
                return Err(ServiceError::BadRequest(format!("Invalid image: {msg}")));
            }
        };
        if let Some(exp) = expected.filter(|e| !e.is_empty()) {
            if exp != info.fingerprint {
                cleanup(&files);
                return Err(ServiceError::BadRequest(format!(
                    "Fingerprint mismatch: the client announced {exp} but the file's is {}",
                    info.fingerprint
                )));
            }
        }
        self.store_checked(files, filename, info, public)
    }

    /// Keeps an image whose files were checked (by [`corral_image::inspect`], or made here by
    /// corral-image's pack, which computes the same): moves the files into the store, writes the
    /// record, and has the image unpacked into the default pool in the background. The files go
    /// on error. Blocking.
    pub fn store_checked(
        &self,
        files: ImageFiles,
        filename: &str,
        info: ImageInfo,
        public: bool,
    ) -> Result<ImageRecord> {
        let fp = info.fingerprint.clone();
        let kept = self.keep_files(files, &fp)?;
        let rec = new_record(&fp, filename, info.size, info.split, &info.metadata, public);
        if let Err(e) = put_json(&*self.store, &image_key(&fp), &rec) {
            remove_files(&kept);
            return Err(e.into());
        }
        // Unpacked when the machine is idle, or by the first launch that needs it (which waits
        // for an unpack under way rather than making a second).
        self.pool.prepare_image(
            &fp,
            ImageSource {
                files: kept,
                metadata_yaml: info.metadata.to_yaml(),
            },
        );
        Ok(rec)
    }

    /// Imports downloaded image files that are already known to be image `fingerprint` (their
    /// bytes were hashed as they arrived, and that hash matched), for a launch that needs the
    /// image at once: instead of [`Images::import`]'s reading pass (a whole decompression)
    /// followed by an unpack, the image is unpacked into the default pool now, at normal
    /// priority, and that unpack is the check of the archive (corrupt data, unsafe entries). The
    /// record is written only once it succeeded: a bad image leaves no record, file or volume.
    /// Blocking.
    pub fn import_downloaded(&self, files: ImageFiles, filename: &str, fingerprint: &str) -> Result<ImageRecord> {
        let invalid = |files: &ImageFiles, e: &dyn std::fmt::Display| {
            remove_files(files);
            ServiceError::BadRequest(format!("Invalid image: {e}"))
        };
        let metadata = match corral_image::read_metadata(&files) {
            Ok(m) => m,
            Err(e) => return Err(invalid(&files, &e)),
        };
        let size = [Some(&files.metadata), files.rootfs.as_ref()]
            .into_iter()
            .flatten()
            .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .sum();
        let split = files.rootfs.is_some();
        let kept = self.keep_files(files, fingerprint)?;
        let source = ImageSource {
            files: kept.clone(),
            metadata_yaml: metadata.to_yaml(),
        };
        let undo = |kept: &ImageFiles| {
            remove_files(kept);
            if let Err(e) = self.pool.delete_image(fingerprint) {
                tracing::warn!(image = %fingerprint, error = %e, "cannot remove the unpacked image");
            }
        };
        if let Err(e) = self.pool.ensure_image(fingerprint, || Some(source)) {
            undo(&kept);
            return Err(match e {
                crate::storage::StorageError::BadImage(m) => ServiceError::BadRequest(format!("Invalid image: {m}")),
                e => ServiceError::Internal(format!("cannot unpack image {fingerprint}: {e}")),
            });
        }
        let rec = new_record(fingerprint, filename, size, split, &metadata, false);
        if let Err(e) = put_json(&*self.store, &image_key(fingerprint), &rec) {
            undo(&kept);
            return Err(e.into());
        }
        Ok(rec)
    }

    /// Moves an image's files into the store (no record yet). The files go on error, and when
    /// the store has that image already.
    fn keep_files(&self, files: ImageFiles, fp: &str) -> Result<ImageFiles> {
        if self.store.get(&image_key(fp))?.is_some() {
            remove_files(&files);
            return Err(ServiceError::Conflict(format!(
                "Image with same fingerprint already exists: {fp}"
            )));
        }
        let kept = ImageFiles {
            metadata: self.paths.image_file(fp),
            rootfs: files.rootfs.as_ref().map(|_| self.paths.image_rootfs_file(fp)),
        };
        let moved =
            std::fs::rename(&files.metadata, &kept.metadata).and_then(|_| match (&files.rootfs, &kept.rootfs) {
                (Some(a), Some(b)) => std::fs::rename(a, b),
                _ => Ok(()),
            });
        if let Err(e) = moved {
            remove_files(&files);
            remove_files(&kept);
            return Err(ServiceError::Internal(format!("cannot store the image: {e}")));
        }
        Ok(kept)
    }

    /// Removes image files in the store that no record names: left by a daemon killed between
    /// keeping an image's files and writing its record (the record is written last).
    fn remove_unrecorded_files(&self) -> Result<()> {
        let recorded: std::collections::HashSet<String> = self.list()?.into_iter().map(|r| r.fingerprint).collect();
        let Ok(entries) = std::fs::read_dir(self.paths.images()) else {
            return Ok(());
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let fp = name.strip_suffix(".rootfs").unwrap_or(&name);
            let is_image_file = fp.len() == 64 && fp.bytes().all(|b| b.is_ascii_hexdigit());
            if is_image_file && !recorded.contains(fp) && e.path().is_file() {
                tracing::info!(file = %e.path().display(), "image file without a record removed");
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(())
    }

    /// Starts again (in the background, at idle priority) the unpack of every image the default
    /// pool has no volume of: an image record without its volume is an unpack still to make, as
    /// after a daemon killed while one ran (its half-made volume and spare copy were removed
    /// when the pool was opened). A launch that comes first waits for it, as after an import.
    pub fn resume_unpacks(&self) -> Result<()> {
        self.remove_unrecorded_files()?;
        for rec in self.list()? {
            let fp = &rec.fingerprint;
            if self.pool.has_image(fp) {
                continue;
            }
            match source_of(&self.paths, fp) {
                Some(source) => {
                    tracing::info!(image = %fp, "unpack of the image started again");
                    self.pool.prepare_image(fp, source);
                }
                None => tracing::warn!(image = %fp, "the image's files are missing: it cannot be unpacked"),
            }
        }
        Ok(())
    }

    /// Deletes an image: record, aliases, files, and its unpacked volume.
    pub fn delete(&self, fp: &str) -> Result<()> {
        let rec = self.get(fp)?;
        for a in self.aliases_of(&rec.fingerprint)? {
            self.store.delete(&alias_key(&a.name))?;
        }
        self.store.delete(&image_key(&rec.fingerprint))?;
        let _ = std::fs::remove_file(self.paths.image_file(&rec.fingerprint));
        let _ = std::fs::remove_file(self.paths.image_rootfs_file(&rec.fingerprint));
        self.pool.delete_image(&rec.fingerprint)?;
        Ok(())
    }

    /// Updates the user-editable fields (PUT and PATCH): `change` gets the current record and
    /// returns the new one, of which only those fields are kept. With `etag`, a revision other
    /// than it is a 412.
    pub fn update(
        &self,
        fp: &str,
        etag: Option<i64>,
        change: impl FnOnce(&ImageRecord) -> Result<ImageRecord>,
    ) -> Result<ImageRecord> {
        let (old, rev) = self.get_with_rev(fp)?;
        if etag.is_some_and(|tag| tag != rev) {
            return Err(ServiceError::PreconditionFailed(
                "ETag doesn't match the image's current state".into(),
            ));
        }
        let new = change(&old)?;
        let rec = ImageRecord {
            public: new.public,
            auto_update: new.auto_update,
            properties: new.properties,
            expires_at: new.expires_at,
            profiles: new.profiles,
            ..old
        };
        match cas_json(&*self.store, &image_key(&rec.fingerprint), Some(rev), &rec)? {
            Ok(_) => Ok(rec),
            Err(_) => Err(ServiceError::PreconditionFailed(
                "the image changed during the update; read it again".into(),
            )),
        }
    }

    /// Sets where an image came from and whether it is only a cache (not editable through
    /// PUT/PATCH, so not through [`Images::update`]).
    pub fn set_origin(
        &self,
        fp: &str,
        cached: bool,
        auto_update: Option<bool>,
        update_source: Option<UpdateSource>,
    ) -> Result<ImageRecord> {
        for _ in 0..5 {
            let (old, rev) = self.get_with_rev(fp)?;
            let rec = ImageRecord {
                cached,
                auto_update: auto_update.unwrap_or(old.auto_update),
                update_source: update_source.clone().or_else(|| old.update_source.clone()),
                ..old
            };
            if cas_json(&*self.store, &image_key(&rec.fingerprint), Some(rev), &rec)?.is_ok() {
                return Ok(rec);
            }
        }
        Err(ServiceError::Conflict(format!("image {fp} keeps changing; try again")))
    }

    /// Records that an instance was just made from the image (`last_used_at`).
    pub fn touch(&self, fp: &str) -> Result<()> {
        for _ in 0..5 {
            let (old, rev) = self.get_with_rev(fp)?;
            let rec = ImageRecord {
                last_used_at: Some(Utc::now()),
                ..old
            };
            if cas_json(&*self.store, &image_key(&rec.fingerprint), Some(rev), &rec)?.is_ok() {
                return Ok(());
            }
        }
        Ok(())
    }

    /// The newest cached-or-not image downloaded from `server` by `alias` with `protocol`.
    pub fn by_source(&self, server: &str, protocol: &str, alias: &str) -> Result<Option<ImageRecord>> {
        let norm = |s: &str| s.trim().trim_end_matches('/').to_string();
        Ok(self
            .list()?
            .into_iter()
            .filter(|i| {
                i.update_source
                    .as_ref()
                    .is_some_and(|s| norm(&s.server) == norm(server) && s.protocol == protocol && s.alias == alias)
            })
            .max_by_key(|i| i.uploaded_at))
    }

    /// The files of an image for export.
    pub fn files(&self, fp: &str) -> Result<(ImageRecord, PathBuf, Option<PathBuf>)> {
        let rec = self.get(fp)?;
        let meta = self.paths.image_file(&rec.fingerprint);
        let rootfs = Some(self.paths.image_rootfs_file(&rec.fingerprint)).filter(|p| Path::exists(p));
        Ok((rec, meta, rootfs))
    }
}

/// A new image's record.
fn new_record(
    fp: &str,
    filename: &str,
    size: u64,
    split: bool,
    meta: &corral_image::ImageMetadata,
    public: bool,
) -> ImageRecord {
    ImageRecord {
        fingerprint: fp.to_string(),
        filename: filename.to_string(),
        size,
        architecture: meta.architecture.clone(),
        properties: meta.properties.clone(),
        public,
        split,
        created_at: Utc.timestamp_opt(meta.creation_date, 0).single(),
        expires_at: (meta.expiry_date > 0)
            .then(|| Utc.timestamp_opt(meta.expiry_date, 0).single())
            .flatten(),
        uploaded_at: Some(Utc::now()),
        ..Default::default()
    }
}

/// Removes an image's files (whichever are there).
fn remove_files(files: &ImageFiles) {
    let _ = std::fs::remove_file(&files.metadata);
    if let Some(r) = &files.rootfs {
        let _ = std::fs::remove_file(r);
    }
}

/// What an image's volume is unpacked from: its stored file(s) and metadata.yaml (read from the
/// file's first entries). None if the files are gone.
pub fn source_of(paths: &Paths, fp: &str) -> Option<ImageSource> {
    let rootfs = paths.image_rootfs_file(fp);
    let files = ImageFiles {
        metadata: paths.image_file(fp),
        rootfs: rootfs.exists().then_some(rootfs),
    };
    match corral_image::read_metadata(&files) {
        Ok(meta) => Some(ImageSource {
            files,
            metadata_yaml: meta.to_yaml(),
        }),
        Err(e) => {
            tracing::warn!(image = %fp, error = %e, "cannot read the stored image's metadata");
            None
        }
    }
}
