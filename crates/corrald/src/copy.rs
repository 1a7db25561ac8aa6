//! Local copies: a new instance from an existing instance or one of its snapshots
//! (`source.type=copy`), volume and snapshots copied (reflinked where the filesystem can).

use chrono::Utc;
use corral_store::{cas_json, finish_intent, record_intent};

use crate::instances::{instance_key, InstanceRecord, Instances, Result, Runtime, ServiceError};
use crate::snapshots::{snapshot_key, SnapshotRecord};

impl Instances {
    /// Copies `source` (`name` or `name/snapshot`) to a new instance described by `new` (its
    /// config is laid over the source's; its profiles replace the source's if given). Without
    /// `instance_only` the source's snapshots come along. On failure nothing is left.
    pub fn copy_instance(
        &self,
        project: &str,
        source: &str,
        mut new: InstanceRecord,
        instance_only: bool,
    ) -> Result<InstanceRecord> {
        crate::instances::validate_name(&new.name)?;
        crate::config::validate(&new.config, false)?;
        let (src_name, snap) = match source.split_once('/') {
            Some((i, s)) => (i, Some(s)),
            None => (source, None),
        };
        let (src, _) = self.get(project, src_name)?;
        let (base_config, base_devices, base_profiles) = match snap {
            Some(s) => {
                let r = self.snapshot(project, src_name, s)?;
                (r.config, r.devices, r.profiles)
            }
            None => (src.config.clone(), src.devices.clone(), src.profiles.clone()),
        };
        let key = instance_key(project, &new.name);
        if self.store.get(&key)?.is_some() {
            return Err(ServiceError::Conflict(format!(
                "Instance {:?} already exists",
                new.name
            )));
        }
        let mut config: std::collections::BTreeMap<String, String> = base_config
            .into_iter()
            .filter(|(k, _)| !k.starts_with("volatile.") || k == "volatile.base_image")
            .collect();
        config.extend(std::mem::take(&mut new.config));
        config.insert("volatile.uuid".into(), uuid::Uuid::new_v4().to_string());
        let mut devices = base_devices;
        devices.extend(std::mem::take(&mut new.devices));
        let rec = InstanceRecord {
            config,
            devices,
            profiles: if new.profiles.is_empty() {
                base_profiles
            } else {
                new.profiles.clone()
            },
            architecture: src.architecture.clone(),
            pool: src.pool.clone(),
            created_at: Utc::now(),
            last_used_at: None,
            ..new
        };
        for p in &rec.profiles {
            self.profile(project, p)?;
        }
        let intent = record_intent(
            &*self.store,
            "instance-create",
            serde_json::json!({ "project": project, "name": rec.name }),
        )?;
        let result = self.copy_volumes(project, src_name, snap, &rec.name, instance_only);
        if let Err(e) = result {
            let _ = self.pool_of(&rec)?.delete_instance(&rec.name);
            let _ = self.delete_all_snapshots(project, &rec.name);
            finish_intent(&*self.store, &intent)?;
            return Err(e);
        }
        if cas_json(&*self.store, &key, None, &rec)?.is_err() {
            let _ = self.pool_of(&rec)?.delete_instance(&rec.name);
            let _ = self.delete_all_snapshots(project, &rec.name);
            finish_intent(&*self.store, &intent)?;
            return Err(ServiceError::Conflict(format!(
                "Instance {:?} already exists",
                rec.name
            )));
        }
        if let Err(e) = crate::templates::apply(&self.pool_of(&rec)?.instance_volume(&rec.name), &rec, "copy") {
            tracing::warn!(instance = %rec.name, error = %e, "image templates");
        }
        finish_intent(&*self.store, &intent)?;
        Ok(rec)
    }

    fn copy_volumes(
        &self,
        project: &str,
        src: &str,
        snap: Option<&str>,
        dest: &str,
        instance_only: bool,
    ) -> Result<()> {
        match snap {
            Some(s) => self.volume_pool(src)?.copy_instance(src, Some(s), dest)?,
            None => {
                // A running source is frozen while its volume is read, for a consistent copy.
                let running = matches!(self.runtime(src), Runtime::Running(_));
                if running {
                    self.client(src)
                        .freeze()
                        .map_err(|e| ServiceError::Internal(format!("cannot freeze {src}: {e}")))?;
                }
                let copied = self.volume_pool(src)?.copy_instance(src, None, dest);
                if running {
                    let _ = self.client(src).thaw();
                }
                copied?;
            }
        }
        if instance_only || snap.is_some() {
            return Ok(());
        }
        for s in self.snapshots(project, src)? {
            if let Err(e) = self.volume_pool(src)?.copy_snapshot(src, &s.name, dest) {
                let _ = self.volume_pool(src)?.delete_snapshot(dest, &s.name);
                return Err(e.into());
            }
            let rec = SnapshotRecord {
                instance: dest.to_string(),
                ..s
            };
            corral_store::put_json(&*self.store, &snapshot_key(project, dest, &rec.name), &rec)?;
        }
        Ok(())
    }
}
