//! Images from remote image servers: `POST /1.0/images` with `source.type=image` and a
//! `server`, and instances created from an image on a server (`lxc launch <remote>:<alias>`).
//!
//! Two protocols: `simplestreams` (static trees such as `images:`, `ubuntu:`, or one written
//! by `corral_simplestreams::write_tree`), and `lxd`/`incus`: another corrald, LXD or Incus
//! serving its images over HTTPS (`GET /1.0/images/aliases/<alias>`, `/1.0/images/<fp>` and
//! `/1.0/images/<fp>/export`, unified or as a multipart form of metadata and rootfs), public
//! images without trust, private ones with the `secret` of `POST /1.0/images/<fp>/secret`.
//! The LXD-protocol server's certificate is pinned from `source.certificate` (what `lxc` and
//! `corral` send for such a remote); the daemon presents its own certificate as the client's,
//! as LXD does, so a server that trusts it shows its private images too. Nothing here runs
//! unless a request names a server.
//!
//! The image is looked for in the local store first, without contacting the server: by
//! fingerprint when the request gives one, else as the image last downloaded from the same
//! server by the same alias (its `update_source`). Otherwise the server's index is read, the
//! alias or fingerprint resolved ([`corral_simplestreams::Catalog::find`]), and, unless that
//! fingerprint is already in the store, its files are downloaded to `tmp/remote/` (resumable
//! `.partial` files, each checked against its sha256, and the image's fingerprint made from
//! them, all as the bytes arrive) and imported: for a launch, with
//! [`Images::import_downloaded`] (the fingerprint must be the server's combined hash, and the
//! image is unpacked into the pool at once, that unpack checking the archive, before its record
//! is written); for a copy, with [`Images::import`], which reads the image to check it and
//! unpacks it later in the background. A file that does not match leaves nothing behind. Progress goes to the operation's `download_progress`.

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
    /// For a private image on an LXD-protocol server.
    pub secret: String,
}

impl From<&api::InstanceSource> for RemoteSource {
    fn from(s: &api::InstanceSource) -> Self {
        RemoteSource {
            server: s.server.clone(),
            protocol: s.protocol.clone(),
            alias: s.alias.clone(),
            fingerprint: s.fingerprint.clone(),
            certificate: s.certificate.clone(),
            secret: s.secret.clone(),
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
            secret: s.secret.clone(),
        }
    }
}

/// An image resolved for a request: already in the store, or to download.
pub struct Prepared {
    pub fingerprint: String,
    pub architecture: String,
    source: RemoteSource,
    /// `None` when the store has it.
    download: Option<Download>,
}

/// Where the files of an image to download are.
enum Download {
    Simplestreams(Client, RemoteImage),
    Lxd(lxd::Server, api::Image),
}

impl Download {
    fn fingerprint(&self) -> &str {
        match self {
            Download::Simplestreams(_, r) => &r.fingerprint,
            Download::Lxd(_, i) => &i.fingerprint,
        }
    }
}

/// Refuses what is not a simplestreams server URL.
fn check_source(src: &RemoteSource) -> Result<()> {
    match src.protocol.as_str() {
        "simplestreams" | "lxd" | "incus" => {}
        other => {
            return Err(ServiceError::BadRequest(format!(
                "unknown image server protocol {other:?}: Corral speaks \"simplestreams\", \"lxd\" and \"incus\""
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

/// Whether an alias with both a squashfs and a tarball image takes the squashfs one: when
/// unsquashfs is there, since it unpacks faster (it decompresses on every core, a tarball's
/// single stream on one; see scripts/bench-images.sh).
fn prefer_squashfs() -> bool {
    static PREFER: OnceLock<bool> = OnceLock::new();
    *PREFER.get_or_init(corral_image::unsquashfs_available)
}

pub(crate) fn remote_error(e: corral_simplestreams::Error) -> ServiceError {
    use corral_simplestreams::Error as E;
    match e {
        E::UnknownAlias { .. } | E::UnknownFingerprint(_) => ServiceError::NotFound(e.to_string()),
        E::Io { .. } => ServiceError::Internal(e.to_string()),
        e => ServiceError::BadRequest(e.to_string()),
    }
}

/// Resolves `src` (blocking: may read the server's index). The local store is asked first.
pub fn prepare_blocking(images: &Images, mut src: RemoteSource) -> Result<Prepared> {
    if src.protocol.is_empty() {
        // LXD's default.
        src.protocol = "lxd".into();
    }
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
    let prepared = prepare_remote(images, src.clone())?;
    match images.get(&prepared.fingerprint) {
        Ok(rec) => Ok(local(rec)),
        Err(_) => Ok(prepared),
    }
}

/// Resolves `src` on the server itself (blocking), whatever the store holds.
fn prepare_remote(images: &Images, src: RemoteSource) -> Result<Prepared> {
    if src.protocol != "simplestreams" {
        let server = lxd::Server::new(images, &src)?;
        let image = server.resolve(&src.alias, &src.fingerprint)?;
        return Ok(Prepared {
            fingerprint: image.fingerprint.clone(),
            architecture: image.architecture.clone(),
            source: src,
            download: Some(Download::Lxd(server, image)),
        });
    }
    let options = ClientOptions {
        certificate: Some(src.certificate.clone()).filter(|c| !c.trim().is_empty()),
        ..Default::default()
    };
    let client = Client::new(&src.server, options).map_err(remote_error)?;
    let catalog = client
        .catalog()
        .map_err(remote_error)?
        .prefer_squashfs(prefer_squashfs());
    let arch = corral_image::host_architecture();
    let found = catalog
        .find(Some(&src.alias), Some(&src.fingerprint), arch)
        .map_err(remote_error)?
        .clone();
    if found.kind == corral_simplestreams::RootfsKind::Squashfs && !corral_image::unsquashfs_available() {
        return Err(ServiceError::BadRequest(format!(
            "image {} on {} has a squashfs root filesystem, and unsquashfs is not installed here: \
             install squashfs-tools",
            found.fingerprint, src.server
        )));
    }
    Ok(Prepared {
        fingerprint: found.fingerprint.clone(),
        architecture: found.architecture.clone(),
        source: src,
        download: Some(Download::Simplestreams(client, found)),
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
pub(crate) fn progress_text(label: &str, p: Progress, started: Instant) -> String {
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
        let Some(download) = self.download else {
            let rec = images.get(&self.fingerprint)?;
            // Asked for explicitly: no longer only a cache.
            if !cached && rec.cached {
                return images.set_origin(&rec.fingerprint, false, None, None);
            }
            return Ok(rec);
        };
        let lock = fingerprint_lock(download.fingerprint());
        let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Ok(rec) = images.get(download.fingerprint()) {
            return Ok(rec);
        }
        let dir = images.paths.tmp().join("remote");
        std::fs::create_dir_all(&dir)
            .map_err(|e| ServiceError::Internal(format!("cannot make {}: {e}", dir.display())))?;
        let (client, remote) = match download {
            Download::Simplestreams(client, remote) => (client, remote),
            Download::Lxd(server, image) => {
                let rec = server.fetch(images, &image, &dir, progress)?;
                let mut rec = images.set_origin(&rec.fingerprint, cached, Some(cached), Some(update_source))?;
                if rec.properties.is_empty() && !image.properties.is_empty() {
                    rec = images.update(&rec.fingerprint, None, |r| {
                        let mut r = r.clone();
                        r.properties = image.properties.clone();
                        Ok(r)
                    })?;
                }
                return Ok(rec);
            }
        };
        let labels = if remote.is_split() {
            ["metadata", "rootfs"]
        } else {
            ["rootfs", "rootfs"]
        };
        let mut paths = Vec::new();
        // The image's fingerprint, made as the files arrive.
        let mut chain = corral_simplestreams::Fingerprint::new();
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
            if let Err(e) = client.download_chained(file, &dest, &mut report, &mut chain) {
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
        let filename = filename.unwrap_or_default();
        let imported = if cached {
            // For a launch, which needs it unpacked at once: the fingerprint is known from the
            // download, and the unpack checks the archive (one pass instead of two).
            let got = chain.hex();
            if got == remote.fingerprint {
                images.import_downloaded(files, &filename, &remote.fingerprint)
            } else {
                for p in &paths {
                    let _ = std::fs::remove_file(p);
                }
                Err(ServiceError::BadRequest(format!(
                    "Fingerprint mismatch: the server announced {} but the files' is {got}",
                    remote.fingerprint
                )))
            }
        } else {
            images.import(files, &filename, Some(&remote.fingerprint), false)
        };
        let rec = match imported {
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

pub(crate) fn set_progress(h: &OpHandle) -> impl Fn(String) + '_ {
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
                let _ = images.touch(&rec.fingerprint);
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
        secret: String::new(),
    };
    check_source(&src)?;
    let prepared = prepare_remote(images, src)?;
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

/// Environment knob (tests): the auto-update timer's period in seconds, instead of
/// `images.auto_update_interval` hours.
pub const UPDATE_TICK_ENV: &str = "CORRAL_IMAGE_UPDATE_TICK_SECS";
/// Environment knob (tests): the cache expiry in seconds, instead of
/// `images.remote_cache_expiry` days.
pub const CACHE_EXPIRY_ENV: &str = "CORRAL_IMAGE_CACHE_EXPIRY_SECS";

fn env_secs(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).filter(|s| *s > 0)
}

/// A whole-number server key, else its default.
fn key_number(config: &BTreeMap<String, String>, key: &str, default: u64) -> u64 {
    config.get(key).and_then(|v| v.trim().parse().ok()).unwrap_or(default)
}

/// One pass of the image timer (blocking): refreshes every image with `auto_update` from its
/// source (a failure is logged, the image kept), then deletes cached images nothing has used
/// for `expiry` (`None`: never).
pub fn auto_update_pass(images: &Images, events: &crate::events::Events, expiry: Option<chrono::Duration>) {
    let list = match images.list() {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!("image auto-update: cannot list the images: {e}");
            return;
        }
    };
    for rec in list.iter().filter(|r| r.auto_update && r.update_source.is_some()) {
        match refresh_blocking(images, &rec.fingerprint, &|_| {}) {
            Ok(Some(new)) => {
                tracing::info!(old = %rec.fingerprint, new = %new.fingerprint, "image auto-updated");
                events.lifecycle("image-refreshed", &format!("/1.0/images/{}", new.fingerprint));
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(image = %rec.fingerprint, "image auto-update failed: {e}"),
        }
    }
    let Some(expiry) = expiry else { return };
    let now = chrono::Utc::now();
    for rec in images.list().unwrap_or_default().into_iter().filter(|r| r.cached) {
        let last = rec.last_used_at.into_iter().chain(rec.uploaded_at).max();
        if last.is_some_and(|t| now - t < expiry) || images.is_held(&rec.fingerprint) {
            continue;
        }
        match images.delete(&rec.fingerprint) {
            Ok(()) => {
                tracing::info!(image = %rec.fingerprint, "unused cached image expired");
                events.lifecycle("image-deleted", &format!("/1.0/images/{}", rec.fingerprint));
            }
            Err(e) => tracing::warn!(image = %rec.fingerprint, "cannot delete the expired cached image: {e}"),
        }
    }
}

/// The image timer: every `images.auto_update_interval` hours (default 6, as LXD; 0: no
/// auto-update), [`auto_update_pass`] with `images.remote_cache_expiry` days (default 10; 0:
/// cached images are kept). Read again at every tick, so a change applies at the next one.
pub async fn auto_update_task(st: AppState) {
    let tick = env_secs(UPDATE_TICK_ENV);
    loop {
        let config = st.server.config();
        let hours = key_number(&config, "images.auto_update_interval", 6);
        let period = match tick {
            Some(s) => std::time::Duration::from_secs(s),
            // Off: look again in a while (the key may change).
            None if hours == 0 => std::time::Duration::from_secs(600),
            None => std::time::Duration::from_secs(hours * 3600),
        };
        tokio::time::sleep(period).await;
        let config = st.server.config();
        if tick.is_none() && key_number(&config, "images.auto_update_interval", 6) == 0 {
            continue;
        }
        let expiry = match env_secs(CACHE_EXPIRY_ENV) {
            Some(s) => Some(chrono::Duration::seconds(s as i64)),
            None => match key_number(&config, "images.remote_cache_expiry", 10) {
                0 => None,
                days => Some(chrono::Duration::days(days as i64)),
            },
        };
        let (images, events) = (st.images.clone(), st.events.clone());
        let _ = tokio::task::spawn_blocking(move || auto_update_pass(&images, &events, expiry)).await;
    }
}

/// The `lxd`/`incus` protocol: another daemon's `/1.0/images` over HTTPS.
mod lxd {
    use std::io::{Read, Write};
    use std::path::Path;
    use std::time::Instant;

    use corral_api as api;
    use corral_client::multipart::MultipartReader;
    use corral_client::{encode_segment, Client, ClientError, ClientIdentity, Remote, ServerTrust};
    use corral_image::ImageFiles;
    use corral_simplestreams::Progress;

    use super::{progress_text, RemoteSource, Result};
    use crate::images::{ImageRecord, Images};
    use crate::instances::ServiceError;

    /// One LXD-protocol image server.
    pub struct Server {
        client: Client,
        url: String,
        secret: String,
    }

    fn remote_error(url: &str, e: ClientError) -> ServiceError {
        match e {
            e if e.is_not_found() => ServiceError::NotFound(format!("{e} (on {url})")),
            ClientError::UnreachableRemote { addr, cause } => {
                ServiceError::BadRequest(format!("cannot reach the image server at {addr}: {cause}"))
            }
            e => ServiceError::BadRequest(format!("the image server at {url}: {e}")),
        }
    }

    impl Server {
        pub fn new(images: &Images, src: &RemoteSource) -> Result<Server> {
            let url = src.server.trim().trim_end_matches('/').to_string();
            let Some(addr) = url.strip_prefix("https://") else {
                return Err(ServiceError::BadRequest(format!(
                    "invalid image server URL {url:?}: an {} image server is reached over https://",
                    src.protocol
                )));
            };
            let addr = match addr.rsplit_once(':') {
                Some((_, port)) if port.parse::<u16>().is_ok() && !addr.ends_with(']') => addr.to_string(),
                _ => format!("{addr}:8443"),
            };
            let pem = src.certificate.trim();
            if pem.is_empty() {
                return Err(ServiceError::BadRequest(format!(
                    "the {} image server {url} needs its certificate (source.certificate, PEM): \
                     Corral pins it rather than trusting any certificate",
                    src.protocol
                )));
            }
            let der = corral_client::transport::pem_to_der(pem).ok_or_else(|| {
                ServiceError::BadRequest("invalid source.certificate: no PEM certificate in it".into())
            })?;
            // Our own certificate as the client's, as LXD does (a server that trusts it shows
            // its private images too).
            let (crt, key) = (images.paths.dir.join("server.crt"), images.paths.dir.join("server.key"));
            let identity = match (std::fs::read_to_string(crt), std::fs::read_to_string(key)) {
                (Ok(cert_pem), Ok(key_pem)) => Some(ClientIdentity { cert_pem, key_pem }),
                _ => None,
            };
            let remote = Remote::new(&addr, identity.as_ref(), ServerTrust::Pinned(der.clone()))
                .or_else(|_| Remote::new(&addr, None, ServerTrust::Pinned(der)))
                .map_err(|e| ServiceError::Internal(format!("TLS set-up for {url}: {e}")))?;
            Ok(Server {
                client: Client::remote(remote),
                url,
                secret: src.secret.clone(),
            })
        }

        fn query(&self) -> String {
            if self.secret.is_empty() {
                String::new()
            } else {
                format!("?secret={}", encode_segment(&self.secret))
            }
        }

        /// The image an alias (else a fingerprint, or its prefix) names on the server.
        pub fn resolve(&self, alias: &str, fingerprint: &str) -> Result<api::Image> {
            let mut fp = fingerprint.to_string();
            if !alias.is_empty() {
                let path = format!("/1.0/images/aliases/{}", encode_segment(alias));
                match self.client.get::<api::ImageAliasesEntry>(&path) {
                    Ok(a) => fp = a.target,
                    // `lxc launch <remote>:<fingerprint>` sends the fingerprint as the alias.
                    Err(e) if e.is_not_found() && alias.bytes().all(|b| b.is_ascii_hexdigit()) => {
                        fp = alias.to_string()
                    }
                    Err(e) if e.is_not_found() => {
                        return Err(ServiceError::NotFound(format!(
                            "no image alias {alias:?} on the image server {} (or the image is not public)",
                            self.url
                        )))
                    }
                    Err(e) => return Err(remote_error(&self.url, e)),
                }
            }
            if fp.is_empty() {
                return Err(ServiceError::BadRequest(
                    "the image source needs an alias or a fingerprint".into(),
                ));
            }
            let path = format!("/1.0/images/{}{}", encode_segment(&fp), self.query());
            let image: api::Image = self.client.get(&path).map_err(|e| match e {
                e if e.is_not_found() => ServiceError::NotFound(format!(
                    "no image {fp} on the image server {} (or the image is not public)",
                    self.url
                )),
                e => remote_error(&self.url, e),
            })?;
            if image.kind == api::InstanceType::VirtualMachine {
                return Err(ServiceError::BadRequest(format!(
                    "image {} on {} is a virtual-machine image: Corral runs containers",
                    image.fingerprint, self.url
                )));
            }
            let valid = image.fingerprint.len() == 64 && image.fingerprint.bytes().all(|b| b.is_ascii_hexdigit());
            if !valid || !image.fingerprint.starts_with(&fp) {
                return Err(ServiceError::BadRequest(format!(
                    "the image server {} answered image {:?} for {fp}",
                    self.url, image.fingerprint
                )));
            }
            Ok(image)
        }

        /// Downloads the image (unified, or split as a multipart form) into `dir` and imports
        /// it, which checks its fingerprint: a file that does not match leaves nothing.
        pub fn fetch(
            &self,
            images: &Images,
            image: &api::Image,
            dir: &Path,
            progress: &dyn Fn(String),
        ) -> Result<ImageRecord> {
            let path = format!("/1.0/images/{}/export{}", image.fingerprint, self.query());
            let (resp, body) = self.client.download(&path).map_err(|e| remote_error(&self.url, e))?;
            let total: u64 = resp.header("Content-Length").and_then(|l| l.parse().ok()).unwrap_or(0);
            let started = Instant::now();
            let mut counted = Counted {
                inner: body,
                done: 0,
                total,
                last_pct: u64::MAX,
                started,
                progress,
            };
            let meta_path = dir.join(format!("{}-lxd-metadata", image.fingerprint));
            let rootfs_path = dir.join(format!("{}-lxd-rootfs", image.fingerprint));
            let cleanup = || {
                let _ = std::fs::remove_file(&meta_path);
                let _ = std::fs::remove_file(&rootfs_path);
            };
            let ctype = resp.header("Content-Type").unwrap_or_default().to_string();
            let received = if ctype.starts_with("multipart/") {
                receive_parts(&mut counted, &ctype, &meta_path, &rootfs_path)
            } else {
                copy_to(&mut counted, &meta_path).map(|_| false)
            };
            let split = match received {
                Ok(split) => split,
                Err(e) => {
                    cleanup();
                    return Err(ServiceError::BadRequest(format!(
                        "the download of image {} from {} failed: {e}",
                        image.fingerprint, self.url
                    )));
                }
            };
            let files = ImageFiles {
                metadata: meta_path.clone(),
                rootfs: split.then(|| rootfs_path.clone()),
            };
            let filename = if image.filename.is_empty() {
                format!("{}.tar", image.fingerprint)
            } else {
                image.filename.clone()
            };
            match images.import(files, &filename, Some(&image.fingerprint), false) {
                Ok(rec) => Ok(rec),
                Err(ServiceError::BadRequest(m)) => {
                    cleanup();
                    Err(ServiceError::BadRequest(format!(
                        "the image {} from {} failed verification: {m}",
                        image.fingerprint, self.url
                    )))
                }
                Err(e) => {
                    cleanup();
                    Err(e)
                }
            }
        }
    }

    /// Counts what is read, for `download_progress`.
    struct Counted<'a, R> {
        inner: R,
        done: u64,
        total: u64,
        last_pct: u64,
        started: Instant,
        progress: &'a dyn Fn(String),
    }

    impl<R: Read> Read for Counted<'_, R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.done += n as u64;
            let pct = (self.done * 100).checked_div(self.total).unwrap_or(self.done >> 20);
            if pct != self.last_pct {
                self.last_pct = pct;
                let p = Progress {
                    done: self.done,
                    total: self.total,
                };
                (self.progress)(progress_text("rootfs", p, self.started));
            }
            Ok(n)
        }
    }

    fn copy_to(r: &mut impl Read, path: &Path) -> std::io::Result<u64> {
        let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
        let n = std::io::copy(r, &mut f)?;
        f.flush()?;
        f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        Ok(n)
    }

    /// The `metadata` and `rootfs` parts of a split image's export; whether there was a rootfs.
    fn receive_parts(r: &mut impl Read, ctype: &str, meta: &Path, rootfs: &Path) -> std::io::Result<bool> {
        let boundary = corral_client::multipart::boundary(ctype)
            .ok_or_else(|| std::io::Error::other("a multipart answer without a boundary"))?;
        let mut parts = MultipartReader::new(r, &boundary);
        let (mut got_meta, mut got_rootfs) = (false, false);
        while let Some(part) = parts.next_part()? {
            match part.name.as_str() {
                "metadata" if !got_meta => {
                    copy_to(&mut parts, meta)?;
                    got_meta = true;
                }
                "rootfs" if !got_rootfs => {
                    copy_to(&mut parts, rootfs)?;
                    got_rootfs = true;
                }
                "rootfs.img" => {
                    return Err(std::io::Error::other(
                        "a virtual-machine image (rootfs.img): Corral runs containers",
                    ))
                }
                other => return Err(std::io::Error::other(format!("unexpected part {other:?}"))),
            }
        }
        if !got_meta {
            return Err(std::io::Error::other("the answer has no metadata part"));
        }
        Ok(got_rootfs)
    }
}
