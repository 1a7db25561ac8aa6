//! Custom volume backups in LXD's tarball layout: `backup/index.yaml` (`type: custom`, the
//! volume's config and its snapshots' in `config.volume` and `config.volume_snapshots`),
//! `backup/volume/`, `backup/volume-snapshots/<name>/`.
//!
//! The same machinery as instance backups ([`crate::backups`]): a record plus a point-in-time
//! copy where the pool has copy-on-write (a read-only snapshot `.backup-<name>` of the volume;
//! on a dir pool the volume is read at export), the tarball made only at export and streamed;
//! an import unpacks the upload in a staging directory inside the target pool and builds the
//! volume and its snapshots under a `volume-create` intent, so a crash leaves nothing.

use std::path::Path;

use chrono::{DateTime, Utc};
use corral_storage::Vol;
use corral_store::{cas_json, get_json};
use serde::{Deserialize, Serialize};

use crate::backup_tar::{
    chain, check_compression, check_optimizable, spawn_optimized_tarball, spawn_tarball, unpack, Export, Member,
    Unpacked,
};
use crate::backups::{next_backup_name, BackupConfig, BackupIndex};
use crate::instances::{Result, ServiceError};
use crate::volumes::{fill, validate_name, volume_key, VolumeRecord, VolumeSnapshot, Volumes};

/// A custom volume backup as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct VolumeBackupRecord {
    pub name: String,
    pub pool: String,
    pub volume: String,
    pub created_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub volume_only: bool,
    pub optimized_storage: bool,
    /// `none`, `gzip`, `xz`, `zstd` (default `gzip`).
    pub compression_algorithm: String,
    /// The volume snapshots the backup holds (none when `volume_only`).
    pub snapshots: Vec<String>,
    /// The volume snapshot holding the volume as it was at backup time, if one was taken.
    pub frozen: Option<String>,
}

pub fn volume_backup_key(pool: &str, volume: &str, name: &str) -> String {
    format!("/storage-volume-backups/{pool}/{volume}/{name}")
}

fn bad(msg: impl Into<String>) -> ServiceError {
    ServiceError::BadRequest(msg.into())
}

fn internal(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::Internal(e.to_string())
}

/// Deletes a custom volume and whatever snapshots of it are on disk (recorded or not).
pub fn remove_all_storage(pool: &crate::storage::Pool, name: &str) {
    let vol = Vol::custom(name);
    let snaps = pool.driver.path(&vol.snapshot("x"));
    let dir = snaps.parent().map(Path::to_path_buf);
    for e in dir.iter().flat_map(std::fs::read_dir).flatten().flatten() {
        let s = e.file_name().to_string_lossy().into_owned();
        let _ = pool.driver.delete_volume(&vol.snapshot(&s));
    }
    if pool.driver.path(&vol).exists() {
        let _ = pool.driver.delete_volume(&vol);
    }
    if let Some(d) = dir {
        let _ = std::fs::remove_dir(d);
    }
}

impl Volumes {
    pub fn backups(&self, pool: &str, volume: &str) -> Result<Vec<VolumeBackupRecord>> {
        self.get(pool, volume)?;
        self.store
            .list(&format!("/storage-volume-backups/{pool}/{volume}/"))?
            .into_iter()
            .map(|kv| serde_json::from_slice(&kv.value).map_err(internal))
            .collect()
    }

    pub fn backup(&self, pool: &str, volume: &str, name: &str) -> Result<VolumeBackupRecord> {
        get_json::<VolumeBackupRecord>(&*self.store, &volume_backup_key(pool, volume, name))?
            .map(|(b, _)| b)
            .ok_or_else(|| ServiceError::NotFound(format!("Backup not found: {volume}/{name} (pool {pool})")))
    }

    /// A free name for a new backup of a volume.
    pub fn next_backup_name(&self, pool: &str, volume: &str) -> Result<String> {
        let taken: Vec<String> = self.backups(pool, volume)?.into_iter().map(|b| b.name).collect();
        Ok(next_backup_name(&taken))
    }

    /// Makes a backup: the record, and a read-only snapshot where the pool has copy-on-write.
    pub fn create_backup(&self, mut rec: VolumeBackupRecord) -> Result<VolumeBackupRecord> {
        let (vol, _) = self.get(&rec.pool, &rec.volume)?;
        if rec.name.is_empty() {
            rec.name = self.next_backup_name(&rec.pool, &rec.volume)?;
        }
        crate::snapshots::validate_snapshot_name(&rec.name)?;
        if rec.compression_algorithm.is_empty() {
            rec.compression_algorithm = "gzip".into();
        }
        check_compression(&rec.compression_algorithm)?;
        let pool = self.pools.get(&rec.pool)?;
        if rec.optimized_storage {
            check_optimizable(&pool)?;
        }
        let key = volume_backup_key(&rec.pool, &rec.volume, &rec.name);
        let exists = || ServiceError::Conflict(format!("Backup {}/{} already exists", rec.volume, rec.name));
        if self.store.get(&key)?.is_some() {
            return Err(exists());
        }
        rec.created_at = Some(Utc::now());
        rec.snapshots = if rec.volume_only {
            Vec::new()
        } else {
            vol.snapshots.iter().map(|s| s.name.clone()).collect()
        };
        let custom = Vol::custom(&rec.volume);
        if pool.driver.info().copy_on_write {
            let frozen = format!(".backup-{}", rec.name);
            pool.driver.snapshot(&custom, &frozen).map_err(internal)?;
            rec.frozen = Some(frozen);
        }
        if cas_json(&*self.store, &key, None, &rec)?.is_err() {
            if let Some(f) = &rec.frozen {
                let _ = pool.driver.delete_volume(&custom.snapshot(f));
            }
            return Err(exists());
        }
        Ok(rec)
    }

    pub fn delete_backup(&self, pool_name: &str, volume: &str, name: &str) -> Result<()> {
        let rec = self.backup(pool_name, volume, name)?;
        if let Some(f) = &rec.frozen {
            let pool = self.pools.get(pool_name)?;
            let snap = Vol::custom(volume).snapshot(f);
            if pool.driver.path(&snap).exists() {
                pool.driver.delete_volume(&snap).map_err(internal)?;
            }
        }
        self.store.delete(&volume_backup_key(pool_name, volume, name))?;
        Ok(())
    }

    /// Deletes every backup of a volume (it is being deleted).
    pub fn delete_all_backups(&self, pool_name: &str, volume: &str) -> Result<()> {
        for b in self.backups(pool_name, volume)? {
            self.delete_backup(pool_name, volume, &b.name)?;
        }
        Ok(())
    }

    pub fn rename_backup(&self, pool_name: &str, volume: &str, name: &str, new_name: &str) -> Result<()> {
        crate::snapshots::validate_snapshot_name(new_name)?;
        let mut rec = self.backup(pool_name, volume, name)?;
        let new_key = volume_backup_key(pool_name, volume, new_name);
        if self.store.get(&new_key)?.is_some() {
            return Err(ServiceError::Conflict(format!(
                "Backup {volume}/{new_name} already exists"
            )));
        }
        let pool = self.pools.get(pool_name)?;
        let custom = Vol::custom(volume);
        let old_frozen = rec.frozen.clone();
        if let Some(f) = &old_frozen {
            let to = format!(".backup-{new_name}");
            let (a, b) = (
                pool.driver.path(&custom.snapshot(f)),
                pool.driver.path(&custom.snapshot(&to)),
            );
            std::fs::rename(&a, &b).map_err(|e| internal(format!("cannot rename {}: {e}", a.display())))?;
            rec.frozen = Some(to);
        }
        rec.name = new_name.to_string();
        let value = serde_json::to_vec(&rec).map_err(internal)?;
        let txn = self.store.txn(
            &[corral_store::Compare::Missing(new_key.clone())],
            &[
                corral_store::Op::Delete(volume_backup_key(pool_name, volume, name)),
                corral_store::Op::Put(new_key, value),
            ],
        );
        if !matches!(txn, Ok(ref t) if t.succeeded) {
            if let (Some(old), Some(new)) = (&old_frozen, &rec.frozen) {
                let _ = std::fs::rename(
                    pool.driver.path(&custom.snapshot(new)),
                    pool.driver.path(&custom.snapshot(old)),
                );
            }
            txn?;
            return Err(ServiceError::Conflict(format!(
                "Backup {volume}/{new_name} already exists"
            )));
        }
        Ok(())
    }

    /// The process whose stdout is the backup's tarball, and the staging directory to remove
    /// when it has exited. `api_volume` is the volume as the API shows it (for index.yaml).
    pub fn export_backup(
        &self,
        pool_name: &str,
        volume: &str,
        name: &str,
        api_volume: corral_api::StorageVolume,
    ) -> Result<Export> {
        let rec = self.backup(pool_name, volume, name)?;
        let (vol, _) = self.get(pool_name, volume)?;
        let pool = self.pools.get(pool_name)?;
        let custom = Vol::custom(volume);
        let source = pool.driver.path(&match &rec.frozen {
            Some(f) => custom.snapshot(f),
            None => custom.clone(),
        });
        let index = BackupIndex {
            name: volume.to_string(),
            backend: pool.driver.info().name.to_string(),
            pool: pool_name.to_string(),
            snapshots: rec.snapshots.clone(),
            optimized: rec.optimized_storage,
            optimized_header: false,
            kind: "custom".into(),
            config: Some(BackupConfig {
                volume: Some(api_volume),
                volume_snapshots: vol
                    .snapshots
                    .iter()
                    .filter(|s| rec.snapshots.contains(&s.name))
                    .map(|s| corral_api::StorageVolumeSnapshot {
                        name: s.name.clone(),
                        description: s.description.clone(),
                        config: s.config.clone(),
                        content_type: "filesystem".into(),
                        created_at: s.created_at.map(corral_api::Timestamp),
                        expires_at: None,
                    })
                    .collect(),
                ..Default::default()
            }),
        };
        let stage = self
            .pools
            .tmp()
            .join(format!("export-{}", uuid::Uuid::new_v4().simple()));
        if rec.optimized_storage {
            let frozen = rec
                .frozen
                .as_deref()
                .ok_or_else(|| internal("the optimized backup has no snapshot to send"))?;
            let streams = chain(&custom, &rec.snapshots, frozen, "volume", "volume-snapshots");
            return spawn_optimized_tarball(&stage, &index, pool.driver.clone(), streams, &rec.compression_algorithm);
        }
        let mut members = vec![Member::dir("volume", source)];
        for s in &rec.snapshots {
            members.push(Member::dir(
                &format!("volume-snapshots/{s}"),
                pool.driver.path(&custom.snapshot(s)),
            ));
        }
        spawn_tarball(&stage, &index, &members, &rec.compression_algorithm)
    }

    /// Creates a custom volume in `pool_name` from a volume backup tarball read from `body`,
    /// named `name` or as in the backup. On failure nothing is left.
    pub fn import_backup(
        &self,
        pool_name: &str,
        mut body: impl std::io::Read + Send,
        name: Option<&str>,
    ) -> Result<VolumeRecord> {
        let pool = self.pools.get(pool_name)?;
        let stage = pool.path.join(format!(".import-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&stage).map_err(internal)?;
        let result = self.import_staged(&pool, &mut body, name, &stage);
        if let Err(e) = pool.driver.remove_staged(&stage) {
            tracing::warn!(error = %e, "cannot remove the import's staging directory");
        }
        result
    }

    fn import_staged(
        &self,
        pool: &crate::storage::Pool,
        body: &mut (dyn std::io::Read + Send),
        name: Option<&str>,
        stage: &Path,
    ) -> Result<VolumeRecord> {
        let Unpacked { index, received } = unpack(body, stage, pool, "a custom volume backup")?;
        if index.kind != "custom" {
            return Err(bad(format!(
                "this is {} backup, not a custom volume's: import it with POST /1.0/instances (lxc import)",
                if index.kind.is_empty() {
                    "an instance"
                } else {
                    "a container"
                }
            )));
        }
        let backup = stage.join("backup");
        if !index.optimized && !backup.join("volume").is_dir() {
            return Err(bad(
                "the tarball has no backup/volume: it is not a custom volume backup",
            ));
        }
        let config = index.config.clone().unwrap_or_default();
        let api_vol = config.volume.clone().unwrap_or_default();
        let name = name
            .filter(|n| !n.is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| index.name.clone());
        validate_name(&name)?;
        let key = volume_key(&pool.name, &name);
        if self.store.get(&key)?.is_some() {
            return Err(ServiceError::Conflict(format!(
                "Storage volume {name:?} already exists in pool {}: import under another name",
                pool.name
            )));
        }
        let mut vol_config = api_vol.config.clone();
        let size = vol_config.get("size").cloned();
        if size.is_some() && !pool.driver.info().quotas {
            tracing::info!(volume = %name, pool = %pool.name, "the backup's size is dropped: the pool cannot limit one");
            vol_config.remove("size");
        }
        // A crash from here on is undone at the next start: no half-made volume stays.
        let intent = corral_store::record_intent(
            &*self.store,
            "volume-create",
            serde_json::json!({ "pool": pool.name, "name": name }),
        )?;
        let undo = |e: ServiceError| -> ServiceError {
            remove_all_storage(pool, &name);
            let _ = corral_store::finish_intent(&*self.store, &intent);
            e
        };
        let vol = Vol::custom(&name);
        // An optimized backup's streams were received already: each is moved into place.
        let adopt = |member: &str, to: Vol| -> Result<()> {
            let got = received
                .get(member)
                .ok_or_else(|| bad(format!("the optimized backup has no backup/{member}")))?;
            pool.driver.adopt(got, &to).map_err(internal)
        };
        let built = (|| -> Result<Vec<VolumeSnapshot>> {
            let mut snaps = Vec::new();
            for s in &index.snapshots {
                crate::snapshots::validate_snapshot_name(s)?;
                if index.optimized {
                    adopt(&format!("volume-snapshots/{s}.bin"), vol.snapshot(s))?;
                } else {
                    let from = backup.join("volume-snapshots").join(s);
                    if !from.is_dir() {
                        return Err(bad(format!(
                            "the tarball lists snapshot {s:?} but has no backup/volume-snapshots/{s}"
                        )));
                    }
                    fill(pool, &vol, &from)?;
                    pool.driver.snapshot(&vol, s).map_err(internal)?;
                }
                let api_snap = config.volume_snapshots.iter().find(|a| a.name == *s);
                snaps.push(VolumeSnapshot {
                    name: s.clone(),
                    created_at: api_snap
                        .and_then(|a| a.created_at.map(|t| t.0))
                        .or_else(|| Some(Utc::now())),
                    config: api_snap.map(|a| a.config.clone()).unwrap_or_default(),
                    description: api_snap.map(|a| a.description.clone()).unwrap_or_default(),
                });
            }
            if index.optimized {
                adopt("volume.bin", vol.clone())?;
            } else {
                fill(pool, &vol, &backup.join("volume"))?;
            }
            if let Some(v) = vol_config.get("size") {
                let bytes = crate::config::parse_bytes(v).map_err(|e| bad(format!("the backup's size {v:?}: {e}")))?;
                pool.driver
                    .set_quota(&vol, Some(bytes))
                    .map_err(|e| bad(e.to_string()))?;
            }
            Ok(snaps)
        })();
        let snapshots = built.map_err(undo)?;
        let rec = VolumeRecord {
            name: name.clone(),
            pool: pool.name.clone(),
            description: api_vol.description.clone(),
            config: vol_config,
            created_at: Some(Utc::now()),
            snapshots,
        };
        let value = serde_json::to_vec(&rec).map_err(|e| undo(internal(e)))?;
        let done = self
            .store
            .txn(
                &[corral_store::Compare::Missing(key.clone())],
                &[
                    corral_store::Op::Put(key, value),
                    corral_store::Op::Delete(corral_store::intent_key(&intent)),
                ],
            )
            .map_err(|e| undo(e.into()))?;
        if !done.succeeded {
            return Err(undo(ServiceError::Conflict(format!(
                "Storage volume {name:?} already exists"
            ))));
        }
        Ok(rec)
    }

    /// Undoes the volume creations a crash interrupted (called once at start-up, before the
    /// instances' reconciliation, which finishes every intent left).
    pub fn reconcile(&self) -> Result<()> {
        for intent in corral_store::pending_intents(&*self.store)? {
            if intent.kind != "volume-create" {
                continue;
            }
            let pool_name = intent.data["pool"].as_str().unwrap_or_default();
            let name = intent.data["name"].as_str().unwrap_or_default();
            if !name.is_empty() && self.store.get(&volume_key(pool_name, name))?.is_none() {
                if let Ok(pool) = self.pools.get(pool_name) {
                    tracing::info!(volume = %name, pool = %pool_name, "removing the volume of an interrupted import");
                    remove_all_storage(&pool, name);
                }
            }
            corral_store::finish_intent(&*self.store, &intent.id)?;
        }
        Ok(())
    }
}
