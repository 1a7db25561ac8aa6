//! Instance snapshots on the `dir` pool: a copy of the root volume (reflinked where the
//! filesystem can) plus the instance's config at that moment. Any snapshot can be restored,
//! not only the latest.
//!
//! Layout as LXD's dir driver: `<pool>/containers-snapshots/<instance>/<snapshot>/`; records
//! under `/snapshots/<project>/<instance>/<snapshot>` in the store. A running instance is frozen
//! while its root is copied, so the snapshot is consistent. A stateful snapshot carries the
//! container's CRIU state in its volume (`<snapshot>/state`, see `stateful.rs`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use corral_store::{cas_json, cas_json_finishing, finish_intent, get_json, record_intent};
use serde::{Deserialize, Serialize};

use crate::instances::{Devices, InstanceRecord, Instances, Result, Runtime, ServiceError};

/// A snapshot as stored. A versioned state format: only grows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default)]
pub struct SnapshotRecord {
    pub name: String,
    pub instance: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub architecture: String,
    pub description: String,
    pub config: BTreeMap<String, String>,
    pub devices: Devices,
    pub profiles: Vec<String>,
    pub ephemeral: bool,
}

pub fn snapshot_key(project: &str, instance: &str, snapshot: &str) -> String {
    format!("/snapshots/{project}/{instance}/{snapshot}")
}

/// Snapshot names: what LXD allows (no `/`, not empty, not `.` or `..`).
pub fn validate_snapshot_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." || name.len() > 255 {
        return Err(ServiceError::BadRequest(format!(
            "invalid snapshot name {name:?}: no '/', not empty, not . or .."
        )));
    }
    Ok(())
}

impl Instances {
    /// The directory of a snapshot's copy of the root volume.
    pub fn snapshot_volume(&self, instance: &str, snapshot: &str) -> PathBuf {
        self.volume_pool(instance)
            .map(|p| p.snapshot_volume(instance, snapshot))
            .unwrap_or_default()
    }

    /// The snapshots of every instance of `project`, by instance, oldest first.
    pub fn all_snapshots(&self, project: &str) -> Result<BTreeMap<String, Vec<SnapshotRecord>>> {
        let mut by_instance: BTreeMap<String, Vec<SnapshotRecord>> = BTreeMap::new();
        for kv in self.store.list(&format!("/snapshots/{project}/"))? {
            let snap: SnapshotRecord = serde_json::from_slice(&kv.value)
                .map_err(|e| ServiceError::Internal(format!("corrupt record {}: {e}", kv.key)))?;
            by_instance.entry(snap.instance.clone()).or_default().push(snap);
        }
        for list in by_instance.values_mut() {
            list.sort_by_key(|s| s.created_at);
        }
        Ok(by_instance)
    }

    pub fn snapshots(&self, project: &str, instance: &str) -> Result<Vec<SnapshotRecord>> {
        let mut list: Vec<SnapshotRecord> = self
            .store
            .list(&format!("/snapshots/{project}/{instance}/"))?
            .into_iter()
            .map(|kv| {
                serde_json::from_slice(&kv.value)
                    .map_err(|e| ServiceError::Internal(format!("corrupt record {}: {e}", kv.key)))
            })
            .collect::<Result<_>>()?;
        list.sort_by_key(|s| s.created_at);
        Ok(list)
    }

    pub fn snapshot(&self, project: &str, instance: &str, name: &str) -> Result<SnapshotRecord> {
        self.snapshot_with_rev(project, instance, name).map(|(s, _)| s)
    }

    /// A snapshot and its revision (its ETag).
    pub fn snapshot_with_rev(&self, project: &str, instance: &str, name: &str) -> Result<(SnapshotRecord, i64)> {
        get_json::<SnapshotRecord>(&*self.store, &snapshot_key(project, instance, name))?
            .ok_or_else(|| ServiceError::NotFound(format!("Snapshot not found: {instance}/{name}")))
    }

    /// Sets when a snapshot expires (PUT and PATCH; `None` for never). With `etag`, a revision
    /// other than it is a 412.
    pub fn set_snapshot_expiry(
        &self,
        project: &str,
        instance: &str,
        name: &str,
        expires_at: Option<DateTime<Utc>>,
        etag: Option<i64>,
    ) -> Result<()> {
        let (snap, rev) = self.snapshot_with_rev(project, instance, name)?;
        if etag.is_some_and(|tag| tag != rev) {
            return Err(ServiceError::PreconditionFailed(
                "ETag doesn't match the snapshot's current state".into(),
            ));
        }
        let snap = SnapshotRecord { expires_at, ..snap };
        match cas_json(&*self.store, &snapshot_key(project, instance, name), Some(rev), &snap)? {
            Ok(_) => Ok(()),
            Err(_) => Err(ServiceError::PreconditionFailed(
                "the snapshot changed during the update; read it again".into(),
            )),
        }
    }

    /// The next free `snapN` name.
    pub fn next_snapshot_name(&self, project: &str, instance: &str) -> Result<String> {
        let taken: Vec<String> = self.snapshots(project, instance)?.into_iter().map(|s| s.name).collect();
        Ok((0..)
            .map(|i| format!("snap{i}"))
            .find(|n| !taken.contains(n))
            .unwrap_or_default())
    }

    /// Takes a snapshot. Blocking: call from a blocking task.
    pub fn create_snapshot(
        &self,
        project: &str,
        instance: &str,
        name: &str,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<SnapshotRecord> {
        self.create_snapshot_with(project, instance, name, expires_at, false)
    }

    /// Takes a snapshot; with `stateful`, of the running container's state too (CRIU, the
    /// container keeps running): the state goes into the snapshot's volume, `<snapshot>/state`.
    pub fn create_snapshot_with(
        &self,
        project: &str,
        instance: &str,
        name: &str,
        expires_at: Option<DateTime<Utc>>,
        stateful: bool,
    ) -> Result<SnapshotRecord> {
        validate_snapshot_name(name)?;
        let (rec, _) = self.get(project, instance)?;
        let key = snapshot_key(project, instance, name);
        if self.store.get(&key)?.is_some() {
            return Err(ServiceError::Conflict(format!(
                "Snapshot {instance}/{name} already exists"
            )));
        }
        let began = std::time::Instant::now();
        let intent = record_intent(
            &*self.store,
            "snapshot-create",
            serde_json::json!({ "project": project, "name": instance, "snapshot": name }),
        )?;
        let intent_at = began.elapsed();
        let made = self.snapshot_with_state(project, instance, name, stateful);
        let made_at = began.elapsed();
        if let Err(e) = made {
            let _ = self.pool_of(&rec)?.delete_snapshot(instance, name);
            finish_intent(&*self.store, &intent)?;
            return Err(e);
        }
        let snap = SnapshotRecord {
            name: name.to_string(),
            instance: instance.to_string(),
            created_at: Utc::now(),
            expires_at,
            architecture: rec.architecture.clone(),
            description: rec.description.clone(),
            config: rec.config.clone(),
            devices: rec.devices.clone(),
            profiles: rec.profiles.clone(),
            ephemeral: rec.ephemeral,
        };
        // The record and the end of the intent: one durable write.
        if cas_json_finishing(&*self.store, &key, None, &snap, &intent)?.is_err() {
            let _ = self.pool_of(&rec)?.delete_snapshot(instance, name);
            finish_intent(&*self.store, &intent)?;
            return Err(ServiceError::Conflict(format!(
                "Snapshot {instance}/{name} already exists"
            )));
        }
        tracing::debug!(instance, snapshot = name, intent = ?intent_at, made = ?made_at, recorded = ?began.elapsed(), "snapshot timings");
        Ok(snap)
    }

    /// Snapshots the instance volume, with the container's state first when `stateful` (dumped
    /// into the instance's volume, carried by the snapshot, removed from the instance). A
    /// stateless snapshot never carries a state (not the stop state of a stopped instance).
    fn snapshot_with_state(&self, project: &str, instance: &str, name: &str, stateful: bool) -> Result<()> {
        let dumped = if stateful {
            Some(self.dump_for_snapshot(project, instance)?)
        } else {
            None
        };
        let made = self.snapshot_consistent(instance, name);
        if let Some(dir) = dumped {
            let _ = crate::storage::remove_tree(&dir);
        }
        made?;
        if !stateful {
            let carried = self
                .snapshot_volume(instance, name)
                .join(crate::instances::stateful::STATE_DIR);
            if carried.exists() {
                crate::storage::remove_tree(&carried)
                    .map_err(|e| ServiceError::Internal(format!("cannot remove {}: {e}", carried.display())))?;
            }
        }
        Ok(())
    }

    /// Snapshots the instance volume, consistent: on a pool whose snapshots are atomic (btrfs:
    /// one ioctl, a point in time of the whole subvolume) as it is; on a pool that copies (dir),
    /// frozen while it runs. One frozen already stays frozen.
    fn snapshot_consistent(&self, instance: &str, name: &str) -> Result<()> {
        let pool = self.volume_pool(instance)?;
        // Freezing and thawing a running systemd container costs milliseconds (the v1 freezer
        // is polled until every task is frozen) and buys an atomic snapshot nothing.
        let running = !pool.driver.info().atomic_snapshots
            && matches!(
                self.runtime(instance),
                Runtime::Running(s) if !matches!(s.status, corral_runtime::proto::Status::Frozen)
            );
        let began = std::time::Instant::now();
        if running {
            self.client(instance)
                .freeze()
                .map_err(|e| ServiceError::Internal(format!("cannot freeze {instance}: {e}")))?;
        }
        let frozen_at = began.elapsed();
        let copied = pool.snapshot_instance(instance, name);
        let copied_at = began.elapsed();
        if running {
            let _ = self.client(instance).thaw();
        }
        tracing::debug!(instance, snapshot = name, frozen = ?frozen_at, copied = ?copied_at, thawed = ?began.elapsed(), "snapshot of the volume");
        copied.map_err(Into::into)
    }

    pub fn delete_snapshot(&self, project: &str, instance: &str, name: &str) -> Result<()> {
        self.snapshot(project, instance, name)?;
        self.volume_pool(instance)?.delete_snapshot(instance, name)?;
        self.store.delete(&snapshot_key(project, instance, name))?;
        Ok(())
    }

    pub fn rename_snapshot(&self, project: &str, instance: &str, name: &str, new_name: &str) -> Result<()> {
        validate_snapshot_name(new_name)?;
        let mut snap = self.snapshot(project, instance, name)?;
        let new_key = snapshot_key(project, instance, new_name);
        if self.store.get(&new_key)?.is_some() {
            return Err(ServiceError::Conflict(format!(
                "Snapshot {instance}/{new_name} already exists"
            )));
        }
        self.volume_pool(instance)?.rename_snapshot(instance, name, new_name)?;
        snap.name = new_name.to_string();
        let value = serde_json::to_vec(&snap).map_err(|e| ServiceError::Internal(e.to_string()))?;
        self.store.txn(
            &[corral_store::Compare::Missing(new_key.clone())],
            &[
                corral_store::Op::Delete(snapshot_key(project, instance, name)),
                corral_store::Op::Put(new_key, value),
            ],
        )?;
        Ok(())
    }

    /// Restores `snapshot` into the instance: its root volume and its config. A running
    /// instance is stopped first and started again after. Any snapshot, not only the latest.
    pub fn restore_snapshot(&self, project: &str, instance: &str, snapshot: &str) -> Result<()> {
        self.restore_snapshot_with(project, instance, snapshot, false)
    }

    /// [`Instances::restore_snapshot`]; with `stateful`, a stateful snapshot comes back running
    /// from its state (whether the instance ran or not). Without, any state is dropped: the
    /// instance's stop state, and the one the snapshot carries.
    pub fn restore_snapshot_with(&self, project: &str, instance: &str, snapshot: &str, stateful: bool) -> Result<()> {
        let snap = self.snapshot(project, instance, snapshot)?;
        if stateful && !self.snapshot_has_state(instance, snapshot) {
            return Err(ServiceError::BadRequest(format!(
                "Snapshot {instance}/{snapshot} is not stateful: restore it without --stateful"
            )));
        }
        let (rec, rev) = self.get(project, instance)?;
        let was_running = matches!(self.runtime(instance), Runtime::Running(_));
        if was_running {
            self.stop_keeping_state(project, instance)?;
        }
        // A dir restore writes in place: a crash midway is finished at the next start.
        let began = std::time::Instant::now();
        let intent = record_intent(
            &*self.store,
            "snapshot-restore",
            serde_json::json!({ "project": project, "name": instance, "snapshot": snapshot }),
        )?;
        let intent_at = began.elapsed();
        self.pool_of(&rec)?.restore_instance(instance, snapshot)?;
        let restored_at = began.elapsed();
        let state_dir = self.state_dir(&rec)?;
        if !stateful && state_dir.exists() {
            crate::storage::remove_tree(&state_dir)
                .map_err(|e| ServiceError::Internal(format!("cannot remove {}: {e}", state_dir.display())))?;
        }
        // The snapshot's config, with the instance's own volatile keys.
        let mut config: BTreeMap<String, String> = snap
            .config
            .into_iter()
            .filter(|(k, _)| !k.starts_with("volatile."))
            .collect();
        config.extend(
            rec.config
                .iter()
                .filter(|(k, _)| k.starts_with("volatile."))
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        let restored = InstanceRecord {
            config,
            devices: snap.devices,
            profiles: snap.profiles,
            description: snap.description,
            // With `stateful`, the start below restores the snapshot's state, now the
            // instance's (and keeps it if that fails, for another try or a stateless start).
            stateful,
            ..rec
        };
        // The config and the end of the intent (the volume is restored): one durable write.
        if cas_json_finishing(
            &*self.store,
            &crate::instances::instance_key(project, instance),
            Some(rev),
            &restored,
            &intent,
        )?
        .is_err()
        {
            finish_intent(&*self.store, &intent)?;
            return Err(ServiceError::Conflict(
                "the instance changed during the restore; its volume is restored, its config is not".into(),
            ));
        }
        tracing::debug!(instance, snapshot, intent = ?intent_at, restored = ?restored_at, recorded = ?began.elapsed(), "restore timings");
        if was_running || stateful {
            self.start(project, instance)?;
        }
        Ok(())
    }

    /// Removes every snapshot of an instance (when the instance is deleted).
    pub fn delete_all_snapshots(&self, project: &str, instance: &str) -> Result<()> {
        self.volume_pool(instance)?.delete_all_snapshots(instance)?;
        self.store.txn(
            &[],
            &[corral_store::Op::DeletePrefix(format!(
                "/snapshots/{project}/{instance}/"
            ))],
        )?;
        Ok(())
    }
}
