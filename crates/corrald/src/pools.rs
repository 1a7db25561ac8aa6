//! Storage pools: their records, and each one's driver made ready at start.
//!
//! A pool record (`/storage-pools/<name>`) names its driver and config as LXD's API has them;
//! [`Pools::open`] builds every pool's driver and mounts it (a btrfs pool on a loop file is
//! re-attached after a reboot). The `default` dir pool exists from the first start. Creating a
//! pool makes its storage first and writes the record last; a failure at either step leaves
//! nothing.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use corral_storage::btrfs::BtrfsDriver;
use corral_storage::dir::DirDriver;
use corral_storage::Driver;
use corral_store::{cas_json, get_json, Store};
use serde::{Deserialize, Serialize};

use crate::instances::{Result, ServiceError};
use crate::paths::Paths;
use crate::storage::Pool;

/// The pool every daemon has.
pub const DEFAULT_POOL: &str = "default";

/// The drivers this host can run, for the API's `storage_drivers`.
pub const DRIVERS: &[&str] = &["dir", "btrfs"];

/// The size of a btrfs loop file when the pool's config names none (LXD's minimum default).
const DEFAULT_LOOP_SIZE: u64 = 5 << 30;

/// A pool as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct PoolRecord {
    pub name: String,
    pub description: String,
    pub driver: String,
    pub config: BTreeMap<String, String>,
}

pub fn pool_key(name: &str) -> String {
    format!("/storage-pools/{name}")
}

fn bad(msg: impl Into<String>) -> ServiceError {
    ServiceError::BadRequest(msg.into())
}

/// Every pool, by name, with its driver ready.
pub struct Pools {
    store: Arc<dyn Store>,
    paths: Paths,
    pools: RwLock<BTreeMap<String, Pool>>,
    /// Pools whose storage could not be made ready at start, with the reason.
    unavailable: RwLock<BTreeMap<String, String>>,
}

impl Pools {
    /// The daemon's scratch directory (for export staging).
    pub fn tmp(&self) -> PathBuf {
        self.paths.tmp()
    }

    /// Loads every pool and mounts it; the default dir pool is made on the first start.
    pub fn open(store: Arc<dyn Store>, paths: Paths) -> Result<Pools> {
        let default = PoolRecord {
            name: DEFAULT_POOL.into(),
            driver: "dir".into(),
            config: BTreeMap::from([("source".into(), paths.pool(DEFAULT_POOL).display().to_string())]),
            ..Default::default()
        };
        let _ = cas_json(&*store, &pool_key(DEFAULT_POOL), None, &default)?;
        let pools = Pools {
            store,
            paths,
            pools: RwLock::new(BTreeMap::new()),
            unavailable: RwLock::new(BTreeMap::new()),
        };
        for rec in pools.records()? {
            let ready = pools.driver_for(&rec).and_then(|driver| {
                let pool = Pool::new(&rec.name, driver);
                pool.create().map_err(|e| ServiceError::Internal(e.to_string()))?;
                Ok(pool)
            });
            match ready {
                Ok(pool) => {
                    pools
                        .pools
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(rec.name.clone(), pool);
                }
                Err(e) => {
                    tracing::warn!(pool = %rec.name, error = %e, "storage pool unavailable");
                    pools
                        .unavailable
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(rec.name.clone(), e.to_string());
                }
            }
        }
        Ok(pools)
    }

    pub fn records(&self) -> Result<Vec<PoolRecord>> {
        self.store
            .list("/storage-pools/")?
            .into_iter()
            .map(|kv| {
                serde_json::from_slice(&kv.value)
                    .map_err(|e| ServiceError::Internal(format!("corrupt record {}: {e}", kv.key)))
            })
            .collect()
    }

    pub fn record(&self, name: &str) -> Result<(PoolRecord, i64)> {
        get_json::<PoolRecord>(&*self.store, &pool_key(name))?
            .ok_or_else(|| ServiceError::NotFound(format!("Storage pool not found: {name}")))
    }

    /// The pool named `name`, ready for use.
    pub fn get(&self, name: &str) -> Result<Pool> {
        if let Some(p) = self.pools.read().unwrap_or_else(|e| e.into_inner()).get(name) {
            return Ok(p.clone());
        }
        match self.unavailable.read().unwrap_or_else(|e| e.into_inner()).get(name) {
            Some(why) => Err(ServiceError::Internal(format!(
                "Storage pool {name} is unavailable: {why}"
            ))),
            None => Err(ServiceError::NotFound(format!("Storage pool not found: {name}"))),
        }
    }

    /// Every ready pool.
    pub fn all(&self) -> Vec<Pool> {
        self.pools
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// `Created`, or `Unavailable` with the reason.
    pub fn status(&self, name: &str) -> (&'static str, Option<String>) {
        match self.unavailable.read().unwrap_or_else(|e| e.into_inner()).get(name) {
            Some(why) => ("Unavailable", Some(why.clone())),
            None => ("Created", None),
        }
    }

    /// The driver of a record, with the record's config checked.
    fn driver_for(&self, rec: &PoolRecord) -> Result<Arc<dyn Driver>> {
        let root = self.paths.pool(&rec.name);
        let source = rec.config.get("source").filter(|s| !s.is_empty());
        match rec.driver.as_str() {
            "dir" => Ok(Arc::new(DirDriver::new(source.map(PathBuf::from).unwrap_or(root)))),
            "btrfs" => {
                let size = match rec.config.get("size") {
                    Some(s) => crate::config::parse_bytes(s).map_err(|e| bad(format!("invalid size {s:?}: {e}")))?,
                    None => DEFAULT_LOOP_SIZE,
                };
                Ok(match source {
                    None => Arc::new(BtrfsDriver::loop_file(root, self.loop_file(&rec.name), size)),
                    Some(s) if s.starts_with("/dev/") => Arc::new(BtrfsDriver::device(root, PathBuf::from(s))),
                    Some(s) if std::path::Path::new(s) == self.loop_file(&rec.name) => {
                        Arc::new(BtrfsDriver::loop_file(root, self.loop_file(&rec.name), size))
                    }
                    Some(s) => Arc::new(BtrfsDriver::existing(PathBuf::from(s))),
                })
            }
            "lvm" => Err(bad(
                "the lvm driver needs device-mapper, which this kernel does not have; use btrfs (thin, CoW) or dir",
            )),
            other => Err(bad(format!(
                "unknown storage driver {other:?} (available: {})",
                DRIVERS.join(", ")
            ))),
        }
    }

    /// Where a btrfs pool's loop file is (LXD keeps them under `disks/`).
    fn loop_file(&self, name: &str) -> PathBuf {
        self.paths.dir.join("disks").join(format!("{name}.img"))
    }

    /// Creates a pool: its storage, then its record. On failure nothing is left.
    pub fn create(
        &self,
        name: &str,
        driver: &str,
        description: &str,
        mut config: BTreeMap<String, String>,
    ) -> Result<PoolRecord> {
        validate_name(name)?;
        if self.store.get(&pool_key(name))?.is_some() {
            return Err(ServiceError::Conflict(format!(
                "Storage pool {name:?} already exists: pick another name"
            )));
        }
        validate_config(driver, &config)?;
        if driver == "btrfs" && config.get("source").is_none_or(|s| s.is_empty()) {
            // As LXD: the loop file is recorded as the source.
            config.insert("source".into(), self.loop_file(name).display().to_string());
            config
                .entry("size".into())
                .or_insert_with(|| format!("{}GiB", DEFAULT_LOOP_SIZE >> 30));
            std::fs::create_dir_all(self.paths.dir.join("disks"))
                .map_err(|e| ServiceError::Internal(format!("cannot create the disks directory: {e}")))?;
        }
        let rec = PoolRecord {
            name: name.to_string(),
            description: description.to_string(),
            driver: driver.to_string(),
            config,
        };
        let pool = Pool::new(name, self.driver_for(&rec)?);
        pool.driver
            .create()
            .map_err(|e| bad(format!("cannot create storage pool {name}: {e}")))?;
        let made = pool
            .create()
            .map_err(|e| ServiceError::Internal(e.to_string()))
            .and_then(|_| match cas_json(&*self.store, &pool_key(name), None, &rec)? {
                Ok(_) => Ok(()),
                Err(_) => Err(ServiceError::Conflict(format!("Storage pool {name:?} already exists"))),
            });
        if let Err(e) = made {
            let _ = pool.driver.delete();
            return Err(e);
        }
        self.pools
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), pool);
        Ok(rec)
    }

    /// Changes a pool's description and the config keys that may change (`user.*`).
    pub fn update(
        &self,
        name: &str,
        description: &str,
        config: BTreeMap<String, String>,
        etag: Option<i64>,
    ) -> Result<PoolRecord> {
        let (old, rev) = self.record(name)?;
        if etag.is_some_and(|e| e != rev) {
            return Err(ServiceError::PreconditionFailed(
                "ETag doesn't match the current state".into(),
            ));
        }
        let changed: Vec<&String> = config
            .iter()
            .filter(|(k, v)| old.config.get(*k) != Some(*v))
            .map(|(k, _)| k)
            .chain(old.config.keys().filter(|k| !config.contains_key(*k)))
            .filter(|k| !k.starts_with("user."))
            .collect();
        if let Some(k) = changed.first() {
            return Err(bad(format!(
                "{k} cannot be changed on an existing pool (only the description and user.* keys can)"
            )));
        }
        let new = PoolRecord {
            description: description.to_string(),
            config,
            ..old
        };
        match cas_json(&*self.store, &pool_key(name), Some(rev), &new)? {
            Ok(_) => Ok(new),
            Err(_) => Err(ServiceError::PreconditionFailed(
                "the pool changed meanwhile; retry".into(),
            )),
        }
    }

    /// Deletes a pool nobody uses (the caller checked), and its storage.
    pub fn delete(&self, name: &str) -> Result<()> {
        if name == DEFAULT_POOL {
            return Err(bad("the default pool cannot be deleted"));
        }
        self.record(name)?;
        let pool = self.pools.write().unwrap_or_else(|e| e.into_inner()).remove(name);
        if let Some(pool) = pool {
            // Image volumes are caches: they go with the pool.
            for e in std::fs::read_dir(pool.path.join("images"))
                .into_iter()
                .flatten()
                .flatten()
            {
                let _ = pool.delete_image(&e.file_name().to_string_lossy());
            }
            if let Err(e) = pool.driver.delete() {
                self.pools
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(name.to_string(), pool);
                return Err(ServiceError::Internal(format!(
                    "cannot delete storage pool {name}: {e}"
                )));
            }
        }
        self.unavailable.write().unwrap_or_else(|e| e.into_inner()).remove(name);
        self.store.delete(&pool_key(name))?;
        Ok(())
    }
}

/// LXD's pool names: no `/`, not empty, not `.` or `..`, and a name for a directory.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(bad(format!(
            "invalid storage pool name {name:?}: use letters, digits, '-', '_' and '.'"
        )))
    }
}

/// Config keys per driver.
fn validate_config(driver: &str, config: &BTreeMap<String, String>) -> Result<()> {
    let known: &[&str] = match driver {
        "dir" => &["source"],
        "btrfs" => &["source", "size", "btrfs.mount_options"],
        "lvm" => {
            return Err(bad(
                "the lvm driver needs device-mapper, which this kernel does not have; use btrfs (thin, CoW) or dir",
            ))
        }
        other => {
            return Err(bad(format!(
                "unknown storage driver {other:?} (available: {})",
                DRIVERS.join(", ")
            )))
        }
    };
    for (k, v) in config {
        if k.starts_with("user.") {
            continue;
        }
        if !known.contains(&k.as_str()) {
            return Err(bad(format!(
                "unknown {driver} pool option {k:?} (known: {}, user.*)",
                known.join(", ")
            )));
        }
        if k == "size" {
            let bytes = crate::config::parse_bytes(v).map_err(|e| bad(format!("invalid size {v:?}: {e}")))?;
            if bytes < 256 << 20 {
                return Err(bad(format!(
                    "size {v} is too small for a btrfs pool: give at least 256MiB"
                )));
            }
        }
    }
    Ok(())
}
