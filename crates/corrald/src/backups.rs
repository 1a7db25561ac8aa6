//! Instance backups in LXD's tarball layout: `backup/index.yaml` (name, backend, pool, the
//! snapshots' names, and the instance's config embedded), `backup/container/` (the volume:
//! rootfs/, metadata.yaml, templates/), `backup/snapshots/<name>/`.
//!
//! Nothing is staged at full size. A backup is a record plus a point-in-time copy that costs
//! nothing where the pool has copy-on-write (a read-only btrfs snapshot); the tarball is made
//! only when it is exported, streamed by GNU tar (numeric owners, xattrs, ACLs, hard links,
//! device nodes kept) through the chosen compressor straight into the HTTP response. The volumes
//! go into the archive through bind mounts made in a private mount namespace of the exporting
//! process, so they vanish with it whatever happens. On a dir pool a stopped instance is read
//! at export; a running one is copied at backup time (reflinked where the filesystem can).
//!
//! An import streams the upload through the decompressor into `tar -x` in a staging directory
//! inside the target pool, then builds the instance and its snapshots through the pool's driver.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use chrono::{DateTime, Utc};
use corral_store::{cas_json, get_json};
use serde::{Deserialize, Serialize};

use crate::backup_tar::{
    chain, check_compression, check_optimizable, spawn_optimized_tarball, spawn_tarball, unpack, Export, Member,
    Unpacked,
};
use crate::instances::{InstanceRecord, Instances, Result, Runtime, ServiceError};
use crate::snapshots::SnapshotRecord;

/// A backup as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct BackupRecord {
    pub name: String,
    pub instance: String,
    pub created_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub instance_only: bool,
    pub optimized_storage: bool,
    /// `none`, `gzip`, `xz`, `zstd` (default `gzip`, as LXD).
    pub compression_algorithm: String,
    /// The instance snapshots the backup holds (none when `instance_only`).
    pub snapshots: Vec<String>,
    /// The volume snapshot holding the instance as it was at backup time, if one was taken.
    pub frozen: Option<String>,
}

pub fn backup_key(project: &str, instance: &str, name: &str) -> String {
    format!("/backups/{project}/{instance}/{name}")
}

fn bad(msg: impl Into<String>) -> ServiceError {
    ServiceError::BadRequest(msg.into())
}

fn internal(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::Internal(e.to_string())
}

/// `index.yaml` of a backup (JSON, which YAML parsers read).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct BackupIndex {
    pub name: String,
    pub backend: String,
    pub pool: String,
    pub snapshots: Vec<String>,
    pub optimized: bool,
    pub optimized_header: bool,
    #[serde(rename = "type")]
    pub kind: String,
    pub config: Option<BackupConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct BackupConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<corral_api::Instance>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<corral_api::InstanceSnapshot>,
    /// A custom volume backup's volume (`type: custom`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume: Option<corral_api::StorageVolume>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volume_snapshots: Vec<corral_api::StorageVolumeSnapshot>,
}

/// The first free `backupN` among `taken`.
pub fn next_backup_name(taken: &[String]) -> String {
    (0..)
        .map(|i| format!("backup{i}"))
        .find(|n| !taken.contains(n))
        .unwrap_or_default()
}

impl Instances {
    pub fn backups(&self, project: &str, instance: &str) -> Result<Vec<BackupRecord>> {
        self.get(project, instance)?;
        self.store
            .list(&format!("/backups/{project}/{instance}/"))?
            .into_iter()
            .map(|kv| serde_json::from_slice(&kv.value).map_err(internal))
            .collect()
    }

    pub fn backup(&self, project: &str, instance: &str, name: &str) -> Result<BackupRecord> {
        get_json::<BackupRecord>(&*self.store, &backup_key(project, instance, name))?
            .map(|(b, _)| b)
            .ok_or_else(|| ServiceError::NotFound(format!("Backup not found: {instance}/{name}")))
    }

    /// Makes a backup: the record, and a point-in-time copy where one is cheap or needed.
    pub fn create_backup(&self, project: &str, instance: &str, mut rec: BackupRecord) -> Result<BackupRecord> {
        let (inst, _) = self.get(project, instance)?;
        if rec.name.is_empty() {
            let taken: Vec<String> = self.backups(project, instance)?.into_iter().map(|b| b.name).collect();
            rec.name = next_backup_name(&taken);
        }
        crate::snapshots::validate_snapshot_name(&rec.name)?;
        check_compression(&rec.compression_algorithm)?;
        let (inst_pool, _) = (self.pool_of(&inst)?, ());
        if rec.optimized_storage {
            check_optimizable(&inst_pool)?;
        }
        let key = backup_key(project, instance, &rec.name);
        if self.store.get(&key)?.is_some() {
            return Err(ServiceError::Conflict(format!(
                "Backup {instance}/{} already exists",
                rec.name
            )));
        }
        rec.instance = instance.to_string();
        rec.created_at = Some(Utc::now());
        if rec.compression_algorithm.is_empty() {
            rec.compression_algorithm = "gzip".into();
        }
        rec.snapshots = if rec.instance_only {
            Vec::new()
        } else {
            self.snapshots(project, instance)?.into_iter().map(|s| s.name).collect()
        };
        let pool = self.pool_of(&inst)?;
        let running = matches!(self.runtime(instance), Runtime::Running(_));
        if pool.driver.info().copy_on_write || running {
            let frozen = format!(".backup-{}", rec.name);
            if running {
                self.client(instance)
                    .freeze()
                    .map_err(|e| internal(format!("cannot freeze {instance}: {e}")))?;
            }
            let taken = pool.snapshot_instance(instance, &frozen);
            if running {
                let _ = self.client(instance).thaw();
            }
            taken?;
            rec.frozen = Some(frozen);
        }
        if cas_json(&*self.store, &key, None, &rec)?.is_err() {
            if let Some(f) = &rec.frozen {
                let _ = pool.delete_snapshot(instance, f);
            }
            return Err(ServiceError::Conflict(format!(
                "Backup {instance}/{} already exists",
                rec.name
            )));
        }
        Ok(rec)
    }

    pub fn delete_backup(&self, project: &str, instance: &str, name: &str) -> Result<()> {
        let rec = self.backup(project, instance, name)?;
        if let Some(f) = &rec.frozen {
            self.volume_pool(instance)?.delete_snapshot(instance, f)?;
        }
        self.store.delete(&backup_key(project, instance, name))?;
        Ok(())
    }

    pub fn rename_backup(&self, project: &str, instance: &str, name: &str, new_name: &str) -> Result<()> {
        crate::snapshots::validate_snapshot_name(new_name)?;
        let mut rec = self.backup(project, instance, name)?;
        if self.store.get(&backup_key(project, instance, new_name))?.is_some() {
            return Err(ServiceError::Conflict(format!(
                "Backup {instance}/{new_name} already exists"
            )));
        }
        if let Some(f) = &rec.frozen {
            let to = format!(".backup-{new_name}");
            self.volume_pool(instance)?.rename_snapshot(instance, f, &to)?;
            rec.frozen = Some(to);
        }
        rec.name = new_name.to_string();
        let value = serde_json::to_vec(&rec).map_err(internal)?;
        self.store.txn(
            &[],
            &[
                corral_store::Op::Delete(backup_key(project, instance, name)),
                corral_store::Op::Put(backup_key(project, instance, new_name), value),
            ],
        )?;
        Ok(())
    }

    /// Deletes every backup of an instance (it is being deleted).
    pub fn delete_all_backups(&self, project: &str, instance: &str) -> Result<()> {
        for b in self.backups(project, instance).unwrap_or_default() {
            self.delete_backup(project, instance, &b.name)?;
        }
        Ok(())
    }

    /// The process whose stdout is the backup's tarball, and the staging directory to remove
    /// when it has exited.
    pub fn export_backup(
        &self,
        project: &str,
        instance: &str,
        name: &str,
        api_instance: corral_api::Instance,
        api_snapshots: Vec<corral_api::InstanceSnapshot>,
    ) -> Result<Export> {
        let rec = self.backup(project, instance, name)?;
        let (inst, _) = self.get(project, instance)?;
        let pool = self.pool_of(&inst)?;
        let source = match &rec.frozen {
            Some(f) => pool.snapshot_volume(instance, f),
            None => pool.instance_volume(instance),
        };
        let stage = self
            .paths
            .tmp()
            .join(format!("export-{}", uuid::Uuid::new_v4().simple()));
        let index = BackupIndex {
            name: instance.to_string(),
            backend: pool.driver.info().name.to_string(),
            pool: pool.name.clone(),
            snapshots: rec.snapshots.clone(),
            optimized: rec.optimized_storage,
            optimized_header: false,
            kind: "container".into(),
            config: Some(BackupConfig {
                container: Some(api_instance),
                snapshots: api_snapshots
                    .into_iter()
                    .filter(|s| {
                        rec.snapshots
                            .iter()
                            .any(|n| s.name.ends_with(&format!("/{n}")) || s.name == *n)
                    })
                    .collect(),
                ..Default::default()
            }),
        };
        if rec.optimized_storage {
            let frozen = rec
                .frozen
                .as_deref()
                .ok_or_else(|| internal("the optimized backup has no snapshot to send"))?;
            let streams = chain(
                &corral_storage::Vol::container(instance),
                &rec.snapshots,
                frozen,
                "container",
                "snapshots",
            );
            return spawn_optimized_tarball(&stage, &index, pool.driver.clone(), streams, &rec.compression_algorithm);
        }
        let mut members = vec![Member::dir("container", source)];
        for s in &rec.snapshots {
            members.push(Member::dir(
                &format!("snapshots/{s}"),
                pool.snapshot_volume(instance, s),
            ));
        }
        spawn_tarball(&stage, &index, &members, &rec.compression_algorithm)
    }

    /// Creates an instance from a backup tarball read from `body`. `name` and `pool` override
    /// the backup's. On failure nothing is left.
    pub fn import_backup(
        &self,
        project: &str,
        mut body: impl Read + Send,
        name: Option<&str>,
        pool_name: Option<&str>,
    ) -> Result<InstanceRecord> {
        let pool_name = pool_name
            .filter(|p| !p.is_empty())
            .unwrap_or(crate::pools::DEFAULT_POOL);
        let pool = self.pools.get(pool_name)?;
        // Staged inside the pool, so the volumes are filled without crossing filesystems.
        let stage = pool.path.join(format!(".import-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&stage).map_err(internal)?;
        let result = self.import_staged(project, &mut body, name, &pool, &stage);
        if let Err(e) = pool.driver.remove_staged(&stage) {
            tracing::warn!(error = %e, "cannot remove the import's staging directory");
        }
        result
    }

    fn import_staged(
        &self,
        project: &str,
        body: &mut (dyn Read + Send),
        name: Option<&str>,
        pool: &crate::storage::Pool,
        stage: &Path,
    ) -> Result<InstanceRecord> {
        let Unpacked { index, received } = unpack(body, stage, pool, "an instance backup")?;
        let backup = stage.join("backup");
        if index.kind == "custom" {
            return Err(bad(
                "this is a custom volume backup: import it into a pool (lxc storage volume import POOL FILE)",
            ));
        }
        if index.kind != "container" && !index.kind.is_empty() {
            return Err(bad(format!(
                "a {} backup cannot be imported here (containers only)",
                index.kind
            )));
        }
        let config = index.config.clone().unwrap_or_default();
        let inst = config.container.clone().unwrap_or_default();
        let name = name
            .filter(|n| !n.is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| index.name.clone());
        crate::instances::validate_name(&name)?;
        if self
            .store
            .get(&crate::instances::instance_key(project, &name))?
            .is_some()
        {
            return Err(ServiceError::Conflict(format!(
                "Instance {name:?} already exists: import under another name"
            )));
        }
        if !index.optimized && !backup.join("container").is_dir() {
            return Err(bad("the tarball has no backup/container: it is not an instance backup"));
        }
        // A crash from here on is undone at the next start: no half-made volume stays.
        let intent = corral_store::record_intent(
            &*self.store,
            "instance-create",
            serde_json::json!({ "project": project, "name": name }),
        )?;
        let finish = |e: ServiceError| -> ServiceError {
            let _ = corral_store::finish_intent(&*self.store, &intent);
            e
        };
        // Snapshots first (each is the instance volume filled with the snapshot, then
        // snapshotted), the instance's own content last.
        // An optimized backup's streams were received already: each is moved into place.
        let adopt = |member: &str, to: corral_storage::Vol| -> Result<()> {
            let got = received
                .get(member)
                .ok_or_else(|| bad(format!("the optimized backup has no backup/{member}")))?;
            pool.driver.adopt(got, &to).map_err(internal)
        };
        let fill = |from: &Path| -> Result<()> {
            pool.delete_instance(&name)?;
            pool.driver
                .create_volume(&corral_storage::Vol::container(&name))
                .map_err(internal)?;
            let to = pool.instance_volume(&name);
            for e in std::fs::read_dir(from).map_err(internal)?.flatten() {
                crate::storage::copy_tree(&e.path(), &to.join(e.file_name()))?;
            }
            Ok(())
        };
        let built = (|| -> Result<Vec<SnapshotRecord>> {
            let mut snaps = Vec::new();
            let vol = corral_storage::Vol::container(&name);
            for s in &index.snapshots {
                crate::snapshots::validate_snapshot_name(s)?;
                if index.optimized {
                    adopt(&format!("snapshots/{s}.bin"), vol.snapshot(s))?;
                } else {
                    fill(&backup.join("snapshots").join(s))?;
                    pool.snapshot_instance(&name, s)?;
                }
                let api_snap = config
                    .snapshots
                    .iter()
                    .find(|a| a.name == *s || a.name.ends_with(&format!("/{s}")));
                snaps.push(SnapshotRecord {
                    name: s.clone(),
                    instance: name.clone(),
                    created_at: api_snap.map(|a| a.created_at.0).unwrap_or_else(Utc::now),
                    expires_at: None,
                    architecture: inst.architecture.clone(),
                    description: String::new(),
                    config: api_snap.map(|a| a.config.clone()).unwrap_or_default(),
                    devices: api_snap.map(|a| a.devices.clone()).unwrap_or_default(),
                    profiles: api_snap.map(|a| a.profiles.clone()).unwrap_or_default(),
                    ephemeral: false,
                });
            }
            if index.optimized {
                adopt("container.bin", vol)?;
            } else {
                fill(&backup.join("container"))?;
            }
            Ok(snaps)
        })();
        let snaps = match built {
            Ok(s) => s,
            Err(e) => {
                let _ = pool.delete_all_snapshots(&name);
                let _ = pool.delete_instance(&name);
                return Err(finish(e));
            }
        };
        let mut devices = inst.devices.clone();
        if let Some(root) = devices
            .values_mut()
            .find(|d| d.get("path").map(String::as_str) == Some("/"))
        {
            root.insert("pool".into(), pool.name.clone());
        }
        let rec = InstanceRecord {
            name: name.clone(),
            project: project.to_string(),
            description: inst.description.clone(),
            architecture: inst.architecture.clone(),
            config: inst
                .config
                .iter()
                .filter(|(k, _)| !k.starts_with("volatile.") || k.as_str() == "volatile.base_image")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<BTreeMap<_, _>>(),
            devices,
            profiles: inst
                .profiles
                .iter()
                .filter(|p| self.profile(project, p).is_ok())
                .cloned()
                .collect(),
            ephemeral: inst.ephemeral,
            pool: pool.name.clone(),
            created_at: Utc::now(),
            ..Default::default()
        };
        let mut ops = vec![corral_store::Op::Put(
            crate::instances::instance_key(project, &name),
            serde_json::to_vec(&rec).map_err(internal)?,
        )];
        for s in &snaps {
            ops.push(corral_store::Op::Put(
                crate::snapshots::snapshot_key(project, &name, &s.name),
                serde_json::to_vec(s).map_err(internal)?,
            ));
        }
        ops.push(corral_store::Op::Delete(corral_store::intent_key(&intent)));
        let done = self
            .store
            .txn(
                &[corral_store::Compare::Missing(crate::instances::instance_key(
                    project, &name,
                ))],
                &ops,
            )
            .map_err(|e| finish(e.into()))?;
        if !done.succeeded {
            let _ = pool.delete_all_snapshots(&name);
            let _ = pool.delete_instance(&name);
            return Err(finish(ServiceError::Conflict(format!(
                "Instance {name:?} already exists"
            ))));
        }
        Ok(rec)
    }
}
