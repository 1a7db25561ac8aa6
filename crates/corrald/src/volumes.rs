//! Custom storage volumes: records in the store, volumes in their pool's driver.
//!
//! A volume is made in its pool first and recorded last; a failure in between removes it. A
//! volume in use by an instance (a disk device naming it) is not deleted, renamed or moved;
//! who uses it is the caller's to know (it needs the instances).

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use corral_storage::Vol;
use corral_store::{cas_json, get_json, Store};
use serde::{Deserialize, Serialize};

use crate::instances::{Result, ServiceError};
use crate::pools::Pools;

/// A custom volume as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct VolumeRecord {
    pub name: String,
    pub pool: String,
    pub description: String,
    pub config: BTreeMap<String, String>,
    pub created_at: Option<DateTime<Utc>>,
    /// Snapshot names, oldest first.
    pub snapshots: Vec<VolumeSnapshot>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct VolumeSnapshot {
    pub name: String,
    pub created_at: Option<DateTime<Utc>>,
    pub config: BTreeMap<String, String>,
    pub description: String,
}

pub fn volume_key(pool: &str, name: &str) -> String {
    format!("/storage-volumes/{pool}/custom/{name}")
}

fn bad(msg: impl Into<String>) -> ServiceError {
    ServiceError::BadRequest(msg.into())
}

fn storage_err(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::Internal(e.to_string())
}

/// LXD's volume names: a path segment, no `/`, not `.` or `..`.
pub fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." || name.starts_with('.') || name.len() > 255
    {
        return Err(bad(format!(
            "invalid volume name {name:?}: not empty, no '/', not starting with '.'"
        )));
    }
    Ok(())
}

/// Checks a custom volume's config; returns the size to apply, if any.
fn validate_config(config: &BTreeMap<String, String>) -> Result<Option<u64>> {
    let mut size = None;
    for (k, v) in config {
        match k.as_str() {
            "size" => {
                let bytes = crate::config::parse_bytes(v).map_err(|e| bad(format!("invalid size {v:?}: {e}")))?;
                if bytes < 1 << 20 {
                    return Err(bad(format!("size {v} is too small: give at least 1MiB")));
                }
                size = Some(bytes);
            }
            k if k.starts_with("user.") => {}
            "security.shifted" | "security.unmapped" => {
                if !matches!(v.as_str(), "true" | "false") {
                    return Err(bad(format!("{k} must be true or false")));
                }
            }
            other => {
                return Err(bad(format!(
                    "unknown volume option {other:?} (known: size, security.shifted, security.unmapped, user.*)"
                )))
            }
        }
    }
    Ok(size)
}

/// Makes `vol` in `pool` (anew) a copy of directory `from`, file by file.
pub(crate) fn fill(pool: &crate::storage::Pool, vol: &Vol, from: &std::path::Path) -> Result<()> {
    if pool.driver.path(vol).exists() {
        pool.driver.delete_volume(vol).map_err(storage_err)?;
    }
    pool.driver.create_volume(vol).map_err(storage_err)?;
    let to = pool.driver.path(vol);
    for e in std::fs::read_dir(from).map_err(storage_err)?.flatten() {
        crate::storage::copy_tree(&e.path(), &to.join(e.file_name()))?;
    }
    Ok(())
}

/// The custom volume service.
pub struct Volumes {
    pub store: Arc<dyn Store>,
    pub pools: Arc<Pools>,
}

impl Volumes {
    pub fn list(&self, pool: &str) -> Result<Vec<VolumeRecord>> {
        self.pools.record(pool)?;
        self.store
            .list(&format!("/storage-volumes/{pool}/custom/"))?
            .into_iter()
            .map(|kv| {
                serde_json::from_slice(&kv.value)
                    .map_err(|e| ServiceError::Internal(format!("corrupt record {}: {e}", kv.key)))
            })
            .collect()
    }

    pub fn get(&self, pool: &str, name: &str) -> Result<(VolumeRecord, i64)> {
        self.pools.record(pool)?;
        get_json::<VolumeRecord>(&*self.store, &volume_key(pool, name))?
            .ok_or_else(|| ServiceError::NotFound(format!("Storage volume not found: {name} (pool {pool})")))
    }

    /// Creates an empty volume, or a copy of `copy_from` (pool, volume) with its snapshots
    /// unless `volume_only`.
    pub fn create(
        &self,
        pool_name: &str,
        name: &str,
        description: &str,
        config: BTreeMap<String, String>,
        copy_from: Option<(&str, &str, bool)>,
    ) -> Result<VolumeRecord> {
        validate_name(name)?;
        let pool = self.pools.get(pool_name)?;
        let mut config = config;
        if copy_from.is_some() && !pool.driver.info().quotas && config.remove("size").is_some() {
            // A size a copy brings along from a pool that had quotas: this one has none.
            tracing::info!(
                volume = name,
                pool = pool_name,
                "the copy's size is dropped: the pool cannot limit one"
            );
        }
        let size = validate_config(&config)?;
        if self.store.get(&volume_key(pool_name, name))?.is_some() {
            return Err(ServiceError::Conflict(format!(
                "Storage volume {name:?} already exists in pool {pool_name}"
            )));
        }
        if size.is_some() && !pool.driver.info().quotas {
            return Err(bad(format!(
                "pool {pool_name} ({}) cannot limit a volume's size: create it on a btrfs pool, or leave size unset",
                pool.driver.info().name
            )));
        }
        let vol = Vol::custom(name);
        let mut snapshots = Vec::new();
        match copy_from {
            None => pool.driver.create_volume(&vol).map_err(storage_err)?,
            Some((src_pool, src, volume_only)) => {
                let (src_rec, _) = self.get(src_pool, src)?;
                let from = self.pools.get(src_pool)?;
                let same = src_pool == pool_name;
                // Snapshots first: on another pool each is the volume filled with the
                // snapshot's files, then snapshotted; the volume's own content last.
                let copied = (|| -> Result<()> {
                    if !volume_only {
                        for s in &src_rec.snapshots {
                            let snap = Vol::custom(src).snapshot(&s.name);
                            if same {
                                let to = vol.snapshot(&s.name);
                                if let Some(parent) = pool.driver.path(&to).parent() {
                                    let _ = std::fs::create_dir_all(parent);
                                }
                                pool.driver.clone_volume(&snap, &to).map_err(storage_err)?;
                            } else {
                                fill(&pool, &vol, &from.driver.path(&snap))?;
                                pool.driver.snapshot(&vol, &s.name).map_err(storage_err)?;
                            }
                            snapshots.push(s.clone());
                        }
                    }
                    if same {
                        pool.driver.clone_volume(&Vol::custom(src), &vol).map_err(storage_err)
                    } else {
                        fill(&pool, &vol, &from.driver.path(&Vol::custom(src)))
                    }
                })();
                if let Err(e) = copied {
                    self.remove_storage(&pool, name, &snapshots);
                    return Err(e);
                }
            }
        }
        if let Err(e) = pool.driver.set_quota(&vol, size) {
            self.remove_storage(&pool, name, &snapshots);
            return Err(bad(e.to_string()));
        }
        let rec = VolumeRecord {
            name: name.to_string(),
            pool: pool_name.to_string(),
            description: description.to_string(),
            config,
            created_at: Some(Utc::now()),
            snapshots,
        };
        match cas_json(&*self.store, &volume_key(pool_name, name), None, &rec)? {
            Ok(_) => Ok(rec),
            Err(_) => {
                self.remove_storage(&pool, name, &rec.snapshots);
                Err(ServiceError::Conflict(format!(
                    "Storage volume {name:?} already exists"
                )))
            }
        }
    }

    fn remove_storage(&self, pool: &crate::storage::Pool, name: &str, snapshots: &[VolumeSnapshot]) {
        for s in snapshots {
            let _ = pool.driver.delete_volume(&Vol::custom(name).snapshot(&s.name));
        }
        let _ = pool.driver.delete_volume(&Vol::custom(name));
    }

    /// Replaces description and config (a new `size` is applied).
    pub fn update(
        &self,
        pool_name: &str,
        name: &str,
        description: &str,
        config: BTreeMap<String, String>,
        etag: Option<i64>,
    ) -> Result<VolumeRecord> {
        let (old, rev) = self.get(pool_name, name)?;
        if etag.is_some_and(|e| e != rev) {
            return Err(ServiceError::PreconditionFailed(
                "ETag doesn't match the current state".into(),
            ));
        }
        let size = validate_config(&config)?;
        if config.get("size") != old.config.get("size") {
            let pool = self.pools.get(pool_name)?;
            pool.driver
                .set_quota(&Vol::custom(name), size)
                .map_err(|e| bad(e.to_string()))?;
        }
        let new = VolumeRecord {
            description: description.to_string(),
            config,
            ..old
        };
        match cas_json(&*self.store, &volume_key(pool_name, name), Some(rev), &new)? {
            Ok(_) => Ok(new),
            Err(_) => Err(ServiceError::PreconditionFailed(
                "the volume changed meanwhile; retry".into(),
            )),
        }
    }

    /// Deletes a volume nobody uses (the caller checked), its snapshots along.
    pub fn delete(&self, pool_name: &str, name: &str) -> Result<()> {
        let (rec, _) = self.get(pool_name, name)?;
        self.delete_all_backups(pool_name, name)?;
        let pool = self.pools.get(pool_name)?;
        for s in &rec.snapshots {
            pool.driver
                .delete_volume(&Vol::custom(name).snapshot(&s.name))
                .map_err(storage_err)?;
        }
        pool.driver.delete_volume(&Vol::custom(name)).map_err(storage_err)?;
        self.store.delete(&volume_key(pool_name, name))?;
        Ok(())
    }

    /// Moves a volume nobody uses to another pool (a copy there, then the original deleted).
    pub fn move_to_pool(&self, pool_name: &str, name: &str, target_pool: &str, new_name: &str) -> Result<()> {
        let (rec, _) = self.get(pool_name, name)?;
        self.create(
            target_pool,
            new_name,
            &rec.description,
            rec.config.clone(),
            Some((pool_name, name, false)),
        )?;
        self.delete(pool_name, name)
    }

    /// Renames a volume nobody uses, its snapshots along.
    pub fn rename(&self, pool_name: &str, name: &str, new_name: &str) -> Result<()> {
        validate_name(new_name)?;
        let (rec, _) = self.get(pool_name, name)?;
        if self.store.get(&volume_key(pool_name, new_name))?.is_some() {
            return Err(ServiceError::Conflict(format!(
                "Storage volume {new_name:?} already exists"
            )));
        }
        let pool = self.pools.get(pool_name)?;
        pool.driver
            .rename_volume(&Vol::custom(name), new_name)
            .map_err(storage_err)?;
        let moved = VolumeRecord {
            name: new_name.to_string(),
            ..rec
        };
        let value = serde_json::to_vec(&moved).map_err(storage_err)?;
        let mut ops = vec![
            corral_store::Op::Delete(volume_key(pool_name, name)),
            corral_store::Op::Put(volume_key(pool_name, new_name), value),
        ];
        // The backups (and their snapshots, renamed with the volume's) follow the volume.
        for b in self.backups(pool_name, name)? {
            let key = crate::volume_backups::volume_backup_key(pool_name, name, &b.name);
            let moved = crate::volume_backups::VolumeBackupRecord {
                volume: new_name.to_string(),
                ..b
            };
            ops.push(corral_store::Op::Delete(key));
            ops.push(corral_store::Op::Put(
                crate::volume_backups::volume_backup_key(pool_name, new_name, &moved.name),
                serde_json::to_vec(&moved).map_err(storage_err)?,
            ));
        }
        let txn = self
            .store
            .txn(&[corral_store::Compare::Missing(volume_key(pool_name, new_name))], &ops)?;
        if !txn.succeeded {
            let _ = pool.driver.rename_volume(&Vol::custom(new_name), name);
            return Err(ServiceError::Conflict(format!(
                "Storage volume {new_name:?} already exists"
            )));
        }
        Ok(())
    }

    /// Takes a snapshot of a volume.
    pub fn snapshot(&self, pool_name: &str, name: &str, snapshot: &str) -> Result<()> {
        crate::snapshots::validate_snapshot_name(snapshot)?;
        let (mut rec, rev) = self.get(pool_name, name)?;
        if rec.snapshots.iter().any(|s| s.name == snapshot) {
            return Err(ServiceError::Conflict(format!(
                "Snapshot {name}/{snapshot} already exists"
            )));
        }
        let pool = self.pools.get(pool_name)?;
        pool.driver
            .snapshot(&Vol::custom(name), snapshot)
            .map_err(storage_err)?;
        rec.snapshots.push(VolumeSnapshot {
            name: snapshot.to_string(),
            created_at: Some(Utc::now()),
            config: rec.config.clone(),
            description: rec.description.clone(),
        });
        if cas_json(&*self.store, &volume_key(pool_name, name), Some(rev), &rec)?.is_err() {
            let _ = pool.driver.delete_volume(&Vol::custom(name).snapshot(snapshot));
            return Err(ServiceError::Conflict("the volume changed meanwhile; retry".into()));
        }
        Ok(())
    }

    pub fn delete_snapshot(&self, pool_name: &str, name: &str, snapshot: &str) -> Result<()> {
        let (mut rec, rev) = self.get(pool_name, name)?;
        if !rec.snapshots.iter().any(|s| s.name == snapshot) {
            return Err(ServiceError::NotFound(format!("Snapshot not found: {name}/{snapshot}")));
        }
        let pool = self.pools.get(pool_name)?;
        pool.driver
            .delete_volume(&Vol::custom(name).snapshot(snapshot))
            .map_err(storage_err)?;
        rec.snapshots.retain(|s| s.name != snapshot);
        let _ = cas_json(&*self.store, &volume_key(pool_name, name), Some(rev), &rec)?;
        Ok(())
    }

    /// Puts a volume back to any of its snapshots.
    pub fn restore(&self, pool_name: &str, name: &str, snapshot: &str) -> Result<()> {
        let (rec, _) = self.get(pool_name, name)?;
        if !rec.snapshots.iter().any(|s| s.name == snapshot) {
            return Err(ServiceError::NotFound(format!("Snapshot not found: {name}/{snapshot}")));
        }
        let pool = self.pools.get(pool_name)?;
        pool.driver.restore(&Vol::custom(name), snapshot).map_err(storage_err)
    }

    /// Bytes a volume uses.
    pub fn usage(&self, pool_name: &str, name: &str) -> Option<u64> {
        let pool = self.pools.get(pool_name).ok()?;
        pool.driver.usage(&Vol::custom(name)).ok()
    }
}
