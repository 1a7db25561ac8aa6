//! Images from remote image servers: `POST /1.0/images` with `source.type=image` and a
//! `server`, and instances created from an image on a server (`lxc launch <remote>:<alias>`).
//!
//! Only the `simplestreams` protocol is spoken (static trees such as `images:`, `ubuntu:`, or
//! one written by `corral_simplestreams::write_tree`); an LXD/Incus daemon as an image remote
//! (protocol `lxd`/`incus`) is refused. Nothing here runs unless a request names a server.
//!
//! The image is looked for in the local store first, without contacting the server: by
//! fingerprint when the request gives one, else as the image last downloaded from the same
//! server by the same alias (its `update_source`). Otherwise the server's index is read, the
//! alias or fingerprint resolved ([`corral_simplestreams::Catalog::find`]), and, unless that
//! fingerprint is already in the store, its files are downloaded to `tmp/remote/` (resumable
//! `.partial` files, each checked against its sha256) and imported with [`Images::import`],
//! which checks the image's fingerprint against the server's combined hash: a file that does
//! not match leaves nothing behind. Progress goes to the operation's `download_progress`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use corral_api as api;
use corral_image::ImageFiles;
use corral_simplestreams::{Client, ClientOptions, Progress, RemoteImage};

use crate::api::{operation, ApiError, ApiResult, AppState};
use crate::events::Lifecycle;
use crate::images::{AliasRecord, ImageRecord, Images, UpdateSource};
use crate::instances::ServiceError;
use crate::operations::{OpClass, OpHandle};

type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// What a request names on a remote server.
#[derive(Debug, Clone, Default)]
pub struct RemoteSource {
    pub server: String,
    pub protocol: String,
    pub alias: String,
    pub fingerprint: String,
    pub certificate: String,
}

impl From<&api::InstanceSource> for RemoteSource {
    fn from(s: &api::InstanceSource) -> Self {
        RemoteSource {
            server: s.server.clone(),
            protocol: s.protocol.clone(),
            alias: s.alias.clone(),
            fingerprint: s.fingerprint.clone(),
            certificate: s.certificate.clone(),
        }
    }
}

impl From<&api::ImagesPostSource> for RemoteSource {
    fn from(s: &api::ImagesPostSource) -> Self {
        RemoteSource {
            server: s.server.clone(),
            protocol: s.protocol.clone(),
            alias: s.alias.clone(),
            fingerprint: s.fingerprint.clone(),
            certificate: s.certificate.clone(),
        }
    }
}

/// An image resolved for a request: already in the store, or to download.
pub struct Prepared {
    pub fingerprint: String,
    pub architecture: String,
    source: RemoteSource,
    /// `None` when the store has it.
    download: Option<(Client, RemoteImage)>,
}

/// Refuses what is not a simplestreams server URL.
fn check_source(src: &RemoteSource) -> Result<()> {
    match src.protocol.as_str() {
        "simplestreams" => {}
        "lxd" | "incus" => {
            return Err(ServiceError::BadRequest(format!(
                "LXD-protocol image remotes are not supported yet ({}): use a simplestreams image server",
                src.server
            )))
        }
        "" => {
            return Err(ServiceError::BadRequest(format!(
                "the image source names server {} without a protocol (LXD's default, \"lxd\", is not \
                 supported yet): set protocol \"simplestreams\"",
                src.server
            )))
        }
        other => {
            return Err(ServiceError::BadRequest(format!(
                "unknown image server protocol {other:?}: Corral speaks \"simplestreams\""
            )))
        }
    }
    if src.alias.is_empty() && src.fingerprint.is_empty() {
        return Err(ServiceError::BadRequest(
            "the image source needs an alias or a fingerprint".into(),
        ));
    }
    Ok(())
}

fn remote_error(e: corral_simplestreams::Error) -> ServiceError {
    use corral_simplestreams::Error as E;
    match e {
        E::UnknownAlias { .. } | E::UnknownFingerprint(_) => ServiceError::NotFound(e.to_string()),
        E::Io { .. } => ServiceError::Internal(e.to_string()),
        e => ServiceError::BadRequest(e.to_string()),
    }
}

/// Resolves `src` (blocking: may read the server's index). The local store is asked first.
pub fn prepare_blocking(images: &Images, mut src: RemoteSource) -> Result<Prepared> {
    check_source(&src)?;
    let hex = |s: &str| s.len() >= 8 && s.bytes().all(|b| b.is_ascii_hexdigit());
    // `lxc image copy <remote>:<alias>` sends the alias as the fingerprint, alone.
    if src.alias.is_empty() && !hex(&src.fingerprint) {
        src.alias = std::mem::take(&mut src.fingerprint);
    }
    let local = |rec: ImageRecord| Prepared {
        fingerprint: rec.fingerprint,
        architecture: rec.architecture,
        source: src.clone(),
        download: None,
    };
    // As LXD: the alias first (the image last downloaded by it from this server), then the
    // fingerprint (`lxc image copy` sends the alias in both fields).
    if !src.alias.is_empty() {
        if let Some(rec) = images.by_source(&src.server, &src.protocol, &src.alias)? {
            return Ok(local(rec));
        }
    }
    for fp in [&src.fingerprint, &src.alias] {
        if hex(fp) {
            if let Ok(rec) = images.get(fp) {
                return Ok(local(rec));
            }
        }
    }
    let prepared = prepare_remote(src.clone())?;
    match images.get(&prepared.fingerprint) {
        Ok(rec) => Ok(local(rec)),
        Err(_) => Ok(prepared),
    }
}

/// Resolves `src` on the server itself (blocking), whatever the store holds.
fn prepare_remote(src: RemoteSource) -> Result<Prepared> {
    let options = ClientOptions {
        certificate: Some(src.certificate.clone()).filter(|c| !c.trim().is_empty()),
        ..Default::default()
    };
    let client = Client::new(&src.server, options).map_err(remote_error)?;
    let catalog = client.catalog().map_err(remote_error)?;
    let arch = corral_image::host_architecture();
    let found = catalog
        .find(Some(&src.alias), Some(&src.fingerprint), arch)
        .map_err(remote_error)?
        .clone();
    if found.kind == corral_simplestreams::RootfsKind::Squashfs {
        return Err(ServiceError::BadRequest(format!(
            "image {} on {} has only a squashfs root filesystem, which Corral cannot unpack yet",
            found.fingerprint, src.server
        )));
    }
    Ok(Prepared {
        fingerprint: found.fingerprint.clone(),
        architecture: found.architecture.clone(),
        source: src,
        download: Some((client, found)),
    })
}

/// [`prepare_blocking`] off the async workers.
pub async fn prepare(st: &AppState, src: impl Into<RemoteSource>) -> Result<Prepared, ApiError> {
    let (images, src) = (st.images.clone(), src.into());
    crate::api::blocking(move || prepare_blocking(&images, src)).await
}

/// One download at a time per fingerprint: a second request waits and finds the image.
fn fingerprint_lock(fp: &str) -> Arc<Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<String, Arc<Mutex<()>>>>> = OnceLock::new();
    let mut map = LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    map.retain(|_, l| Arc::strong_count(l) > 1);
    map.entry(fp.to_string()).or_default().clone()
}

/// `download_progress` as LXD words it: `rootfs: 45% (12.30MB/s)`.
fn progress_text(label: &str, p: Progress, started: Instant) -> String {
    let secs = started.elapsed().as_secs_f64().max(0.001);
    let rate = p.done as f64 / secs;
    let rate = if rate >= 1e6 {
        format!("{:.2}MB/s", rate / 1e6)
    } else {
        format!("{:.2}kB/s", rate / 1e3)
    };
    match p.total {
        0 => format!("{label}: {}B ({rate})", p.done),
        t => format!("{label}: {}% ({rate})", p.done * 100 / t),
    }
}

impl Prepared {
    /// Whether the image has to be downloaded.
    pub fn needs_download(&self) -> bool {
        self.download.is_some()
    }

    /// Gets the image into the store (a cached image when `cached`); its record. `progress`
    /// gets `download_progress` texts. Blocking.
    pub fn fetch(self, images: &Images, cached: bool, progress: &dyn Fn(String)) -> Result<ImageRecord> {
        let update_source = UpdateSource {
            server: self.source.server.trim_end_matches('/').to_string(),
            protocol: self.source.protocol.clone(),
            alias: self.source.alias.clone(),
            certificate: self.source.certificate.clone(),
            image_type: "container".into(),
        };
        let Some((client, remote)) = self.download else {
            let rec = images.get(&self.fingerprint)?;
            // Asked for explicitly: no longer only a cache.
            if !cached && rec.cached {
                return images.set_origin(&rec.fingerprint, false, None, None);
            }
            return Ok(rec);
        };
        let lock = fingerprint_lock(&remote.fingerprint);
        let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Ok(rec) = images.get(&remote.fingerprint) {
            return Ok(rec);
        }
        let dir = images.paths.tmp().join("remote");
        std::fs::create_dir_all(&dir)
            .map_err(|e| ServiceError::Internal(format!("cannot make {}: {e}", dir.display())))?;
        let labels = if remote.is_split() {
            ["metadata", "rootfs"]
        } else {
            ["rootfs", "rootfs"]
        };
        let mut paths = Vec::new();
        for (n, file) in remote.files.iter().enumerate() {
            let dest = dir.join(format!("{}-{}", remote.fingerprint, labels[n]));
            let started = Instant::now();
            let mut last_pct = u64::MAX;
            let mut report = |p: Progress| {
                let pct = (p.done * 100).checked_div(p.total).unwrap_or(p.done >> 20);
                if pct != last_pct {
                    last_pct = pct;
                    progress(progress_text(labels[n], p, started));
                }
            };
            if let Err(e) = client.download(file, &dest, &mut report) {
                // A bad file is gone already; files of this image checked earlier go too.
                if matches!(
                    e,
                    corral_simplestreams::Error::Checksum { .. } | corral_simplestreams::Error::Size { .. }
                ) {
                    for p in &paths {
                        let _ = std::fs::remove_file(p);
                    }
                }
                return Err(remote_error(e));
            }
            paths.push(dest);
        }
        let files = ImageFiles {
            metadata: paths[0].clone(),
            rootfs: paths.get(1).cloned(),
        };
        let filename = remote
            .files
            .last()
            .map(|f| f.path.rsplit('/').next().unwrap_or_default().to_string());
        let rec = match images.import(files, &filename.unwrap_or_default(), Some(&remote.fingerprint), false) {
            Ok(rec) => rec,
            Err(ServiceError::BadRequest(m)) => {
                return Err(ServiceError::BadRequest(format!(
                    "the image {} from {} failed verification: {m}",
                    remote.fingerprint,
                    client.server()
                )))
            }
            Err(e) => return Err(e),
        };
        let mut rec = images.set_origin(&rec.fingerprint, cached, Some(cached), Some(update_source))?;
        if rec.properties.is_empty() {
            // A few descriptive properties from the server when metadata.yaml has none.
            rec = images.update(&rec.fingerprint, None, |r| {
                let mut r = r.clone();
                for (k, v) in [
                    ("os", &remote.os),
                    ("release", &remote.release),
                    ("variant", &remote.variant),
                ] {
                    if !v.is_empty() {
                        r.properties.insert(k.into(), v.clone());
                    }
                }
                Ok(r)
            })?;
        }
        Ok(rec)
    }
}

fn set_progress(h: &OpHandle) -> impl Fn(String) + '_ {
    move |text| h.set_metadata_key("download_progress", serde_json::Value::String(text))
}

/// The create operation of an instance made from a remote image: the download (progress in
/// the operation's metadata), then `create`; `event` is published on success.
pub fn create_task<F>(
    st: &AppState,
    prepared: Prepared,
    resources: BTreeMap<String, Vec<String>>,
    event: Lifecycle,
    create: F,
) -> ApiResult
where
    F: FnOnce() -> Result<(), ServiceError> + Send + 'static,
{
    let (images, events) = (st.images.clone(), st.events.clone());
    operation(st.ops.spawn(
        OpClass::Task,
        "Creating instance",
        resources,
        false,
        move |h| async move {
            tokio::task::spawn_blocking(move || {
                let downloaded = prepared.needs_download();
                let rec = prepared
                    .fetch(&images, true, &set_progress(&h))
                    .map_err(|e| e.to_string())?;
                if downloaded {
                    events.lifecycle("image-created", &format!("/1.0/images/{}", rec.fingerprint));
                }
                create().map_err(|e| e.to_string())?;
                events.publish(event);
                Ok(())
            })
            .await
            .map_err(|e| e.to_string())?
        },
    ))
}

/// `POST /1.0/images` with `source.type=image` and a server: copy the image into the store
/// (not cached), with the request's aliases, `public` and `auto_update`.
pub async fn import_from_server(st: &AppState, req: api::ImagesPost) -> ApiResult {
    let source = req.source.clone().unwrap_or_default();
    if source.server.is_empty() {
        return Err(ApiError(
            400,
            "an image source of type \"image\" needs the server to copy it from".into(),
        ));
    }
    if !source.mode.is_empty() && source.mode != "pull" {
        return Err(ApiError(
            400,
            format!("image source mode {:?} is not supported: use \"pull\"", source.mode),
        ));
    }
    let prepared = prepare(st, &source).await?;
    let (images, events) = (st.images.clone(), st.events.clone());
    let resources = BTreeMap::from([(
        "images".to_string(),
        vec![format!("/1.0/images/{}", prepared.fingerprint)],
    )]);
    operation(st.ops.spawn(
        OpClass::Task,
        "Downloading image",
        resources,
        false,
        move |h| async move {
            tokio::task::spawn_blocking(move || {
                let downloaded = prepared.needs_download();
                let mut rec = prepared
                    .fetch(&images, false, &set_progress(&h))
                    .map_err(|e| e.to_string())?;
                if req.public != rec.public || req.auto_update != rec.auto_update || !req.properties.is_empty() {
                    rec = images
                        .update(&rec.fingerprint, None, |r| {
                            let mut r = r.clone();
                            r.public = req.public;
                            r.auto_update = req.auto_update;
                            r.properties.extend(req.properties.clone());
                            Ok(r)
                        })
                        .map_err(|e| e.to_string())?;
                }
                for a in &req.aliases {
                    let alias = AliasRecord {
                        name: a.name.clone(),
                        description: a.description.clone(),
                        target: rec.fingerprint.clone(),
                        ..Default::default()
                    };
                    images.add_alias(alias).map_err(|e| e.to_string())?;
                }
                if downloaded {
                    events.lifecycle("image-created", &format!("/1.0/images/{}", rec.fingerprint));
                }
                h.set_metadata_key("fingerprint", serde_json::Value::String(rec.fingerprint.clone()));
                h.set_metadata_key("size", serde_json::Value::from(rec.size));
                Ok(())
            })
            .await
            .map_err(|e| e.to_string())?
        },
    ))
}

/// Refreshes an image from its `update_source` (blocking): when the alias it was downloaded
/// by names another image now, that image is downloaded, takes over the old one's aliases and
/// `public`/`auto_update`/`profiles`, and the old image is deleted (instances made from it
/// keep their own copies). The new record, or `None` when the image is up to date.
pub fn refresh_blocking(images: &Images, fp: &str, progress: &dyn Fn(String)) -> Result<Option<ImageRecord>> {
    let old = images.get(fp)?;
    let Some(us) = old.update_source.clone() else {
        return Err(ServiceError::BadRequest(format!(
            "image {} has no source to refresh from: it was not downloaded from an image server",
            old.fingerprint
        )));
    };
    if us.alias.is_empty() {
        // Downloaded by fingerprint: that image never changes.
        return Ok(None);
    }
    let src = RemoteSource {
        server: us.server.clone(),
        protocol: us.protocol.clone(),
        alias: us.alias.clone(),
        fingerprint: String::new(),
        certificate: us.certificate.clone(),
    };
    check_source(&src)?;
    let prepared = prepare_remote(src)?;
    if prepared.fingerprint == old.fingerprint {
        return Ok(None);
    }
    let new = prepared.fetch(images, old.cached, progress)?;
    let new = images.update(&new.fingerprint, None, |r| {
        let mut r = r.clone();
        r.public = old.public;
        r.auto_update = old.auto_update;
        r.profiles = old.profiles.clone();
        Ok(r)
    })?;
    for a in images.aliases_of(&old.fingerprint)? {
        images.update_alias(&a.name, &a.description, &new.fingerprint, None)?;
    }
    images.delete(&old.fingerprint)?;
    Ok(Some(new))
}

/// `POST /1.0/images/{fp}/refresh`: [`refresh_blocking`] as an operation whose metadata says
/// `refreshed` (what `lxc image refresh` reads).
pub async fn refresh(st: &AppState, fp: &str) -> ApiResult {
    let rec = st.images.get(fp)?;
    if rec.update_source.is_none() {
        return Err(ApiError(
            400,
            format!(
                "image {} has no source to refresh from: it was not downloaded from an image server",
                rec.fingerprint
            ),
        ));
    }
    let (images, events) = (st.images.clone(), st.events.clone());
    let resources = BTreeMap::from([("images".to_string(), vec![format!("/1.0/images/{}", rec.fingerprint)])]);
    operation(st.ops.spawn(
        OpClass::Task,
        "Refreshing image",
        resources,
        false,
        move |h| async move {
            tokio::task::spawn_blocking(move || {
                let new = refresh_blocking(&images, &rec.fingerprint, &set_progress(&h)).map_err(|e| e.to_string())?;
                h.set_metadata_key("refreshed", serde_json::Value::Bool(new.is_some()));
                if let Some(new) = new {
                    events.lifecycle("image-refreshed", &format!("/1.0/images/{}", new.fingerprint));
                    h.set_metadata_key("fingerprint", serde_json::Value::String(new.fingerprint));
                }
                Ok(())
            })
            .await
            .map_err(|e| e.to_string())?
        },
    ))
}
