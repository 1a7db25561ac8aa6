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
        // The copy's pool: the one its request's root disk names (`lxc copy --storage`), else
        // the source's.
        let wanted_pool = root_pool(&new.devices).unwrap_or_else(|| src.pool.clone());
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
            pool: String::new(),
            created_at: Utc::now(),
            last_used_at: None,
            ..new
        };
        for p in &rec.profiles {
            self.profile(project, p)?;
        }
        let mut rec = rec;
        rec.pool = wanted_pool;
        self.pools.get(if rec.pool.is_empty() {
            crate::pools::DEFAULT_POOL
        } else {
            &rec.pool
        })?;
        let intent = record_intent(
            &*self.store,
            "instance-create",
            serde_json::json!({ "project": project, "name": rec.name }),
        )?;
        let result = if self.pool_of(&rec)?.name == self.pool_of(&src)?.name {
            self.copy_volumes(project, src_name, snap, &rec.name, instance_only)
        } else {
            self.copy_volumes_across(project, &src, snap, &rec, instance_only)
        };
        if let Err(e) = result {
            self.undo_copy(project, &rec);
            finish_intent(&*self.store, &intent)?;
            return Err(e);
        }
        if cas_json(&*self.store, &key, None, &rec)?.is_err() {
            self.undo_copy(project, &rec);
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

    /// Removes what a failed copy made: its volume, its snapshots' volumes and records.
    fn undo_copy(&self, project: &str, rec: &InstanceRecord) {
        if let Ok(pool) = self.pool_of(rec) {
            let _ = pool.delete_all_snapshots(&rec.name);
            let _ = pool.delete_instance(&rec.name);
        }
        let _ = self.store.txn(
            &[],
            &[corral_store::Op::DeletePrefix(format!(
                "/snapshots/{project}/{}/",
                rec.name
            ))],
        );
    }

    /// A copy into another pool: each snapshot, then the instance, filled file by file into
    /// volumes of the destination's driver.
    fn copy_volumes_across(
        &self,
        project: &str,
        src: &InstanceRecord,
        snap: Option<&str>,
        dest: &InstanceRecord,
        instance_only: bool,
    ) -> Result<()> {
        let (from, to) = (self.pool_of(src)?, self.pool_of(dest)?);
        if snap.is_none() && !instance_only {
            for s in self.snapshots(project, &src.name)? {
                fill_volume(&to, &dest.name, &from.snapshot_volume(&src.name, &s.name))?;
                to.snapshot_instance(&dest.name, &s.name)?;
                let rec = SnapshotRecord {
                    instance: dest.name.clone(),
                    ..s
                };
                corral_store::put_json(&*self.store, &snapshot_key(project, &dest.name, &rec.name), &rec)?;
            }
        }
        let source = match snap {
            Some(s) => from.snapshot_volume(&src.name, s),
            None => from.instance_volume(&src.name),
        };
        let running = snap.is_none() && matches!(self.runtime(&src.name), Runtime::Running(_));
        if running {
            self.client(&src.name)
                .freeze()
                .map_err(|e| ServiceError::Internal(format!("cannot freeze {}: {e}", src.name)))?;
        }
        let filled = fill_volume(&to, &dest.name, &source);
        if running {
            let _ = self.client(&src.name).thaw();
        }
        filled
    }

    /// Moves a stopped instance (and its snapshots, unless `instance_only`) to another pool,
    /// keeping its name: a copy under a temporary name on the target pool, then the original
    /// deleted and the copy renamed. A failure before the delete leaves the original as it was.
    pub fn move_to_pool(&self, project: &str, name: &str, pool: &str, instance_only: bool) -> Result<()> {
        let (rec, _) = self.get(project, name)?;
        self.pools.get(pool)?;
        if self.pool_of(&rec)?.name == pool {
            return Err(ServiceError::BadRequest(format!("{name} is already on pool {pool}")));
        }
        if matches!(self.runtime(name), Runtime::Running(_)) {
            return Err(ServiceError::BadRequest(format!(
                "{name} is running: stop it before moving it to another pool"
            )));
        }
        let temp = format!("{name}-moving-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let (_, expanded) = self.expand(&rec)?;
        let mut root = expanded
            .iter()
            .find(|(_, d)| {
                d.get("type").map(String::as_str) == Some("disk") && d.get("path").map(String::as_str) == Some("/")
            })
            .map(|(k, d)| (k.clone(), d.clone()))
            .unwrap_or_else(|| {
                (
                    "root".into(),
                    [
                        ("type".to_string(), "disk".to_string()),
                        ("path".to_string(), "/".to_string()),
                    ]
                    .into(),
                )
            });
        root.1.insert("pool".into(), pool.to_string());
        let new = InstanceRecord {
            name: temp.clone(),
            project: project.to_string(),
            description: rec.description.clone(),
            devices: [root].into(),
            profiles: rec.profiles.clone(),
            ephemeral: rec.ephemeral,
            ..Default::default()
        };
        let copied = self.copy_instance(project, name, new, instance_only)?;
        // The copy keeps the original's volatile keys (MACs, the base image).
        let mut moved = copied;
        moved.config = rec.config.clone();
        let _ = corral_store::put_json(&*self.store, &instance_key(project, &temp), &moved);
        self.delete(project, name)?;
        self.rename(project, &temp, name)
    }

    /// `lxc copy --refresh`: brings an existing, stopped copy up to date with its source: the
    /// snapshots it lacks are copied, and its volume gets what changed (a fresh CoW clone on a
    /// btrfs pool, only the differing files on dir). Its config is left as it is.
    pub fn refresh_instance(&self, project: &str, source: &str, target: &str, instance_only: bool) -> Result<()> {
        if source.contains('/') {
            return Err(ServiceError::BadRequest(
                "a refresh copies from an instance, not a snapshot".into(),
            ));
        }
        let (src, _) = self.get(project, source)?;
        let (dest, _) = self.get(project, target)?;
        if matches!(self.runtime(target), Runtime::Running(_)) {
            return Err(ServiceError::BadRequest(format!(
                "{target} is running: stop it before refreshing it"
            )));
        }
        let (from, to) = (self.pool_of(&src)?, self.pool_of(&dest)?);
        let same_pool = from.name == to.name;
        if !instance_only {
            let have: Vec<String> = self.snapshots(project, target)?.into_iter().map(|s| s.name).collect();
            for s in self.snapshots(project, source)? {
                if have.contains(&s.name) {
                    continue;
                }
                if same_pool {
                    to.copy_snapshot(source, &s.name, target)?;
                } else {
                    // Through a scratch instance volume, as a cross-pool copy does.
                    let scratch = format!(".refresh-{target}");
                    fill_volume(&to, &scratch, &from.snapshot_volume(source, &s.name))?;
                    let dst = corral_storage::Vol::container(target).snapshot(&s.name);
                    if let Some(parent) = to.driver.path(&dst).parent() {
                        let _ = std::fs::create_dir_all(parent);
                    }
                    let made = to
                        .driver
                        .clone_volume(&corral_storage::Vol::container(&scratch), &dst)
                        .map_err(|e| crate::storage::StorageError::Driver(e.to_string()));
                    let _ = to.delete_all_snapshots(&scratch);
                    let _ = to.delete_instance(&scratch);
                    made?;
                }
                let rec = SnapshotRecord {
                    instance: target.to_string(),
                    ..s
                };
                corral_store::put_json(&*self.store, &snapshot_key(project, target, &rec.name), &rec)?;
            }
        }
        let running = matches!(self.runtime(source), Runtime::Running(_));
        if running {
            self.client(source)
                .freeze()
                .map_err(|e| ServiceError::Internal(format!("cannot freeze {source}: {e}")))?;
        }
        let synced = if same_pool && to.driver.info().copy_on_write {
            // A new clone costs less than comparing: swapped in by renames (the target's
            // snapshots stay where they are), the old volume set aside until the swap is done.
            let fresh = format!(".{target}.refresh");
            let old = format!(".{target}.old");
            let _ = to.delete_instance(&fresh);
            let _ = to.delete_instance(&old);
            to.copy_instance(source, None, &fresh).and_then(|_| {
                let (t, f, o) = (
                    to.instance_volume(target),
                    to.instance_volume(&fresh),
                    to.instance_volume(&old),
                );
                let io = |path: &std::path::Path| {
                    let path = path.to_path_buf();
                    move |e| crate::storage::StorageError::Io {
                        what: "rename",
                        path,
                        source: e,
                    }
                };
                std::fs::rename(&t, &o).map_err(io(&t))?;
                if let Err(e) = std::fs::rename(&f, &t) {
                    let _ = std::fs::rename(&o, &t);
                    let _ = to.delete_instance(&fresh);
                    return Err(io(&f)(e));
                }
                to.delete_instance(&old)
            })
        } else {
            sync_tree(&from.instance_volume(source), &to.instance_volume(target))
        };
        if running {
            let _ = self.client(source).thaw();
        }
        synced?;
        Ok(())
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

/// Whether a device is the root disk.
pub(crate) fn is_root_disk(d: &std::collections::BTreeMap<String, String>) -> bool {
    d.get("type").map(String::as_str) == Some("disk") && d.get("path").map(String::as_str) == Some("/")
}

/// The pool a root disk names, if any.
pub(crate) fn root_pool(devices: &crate::instances::Devices) -> Option<String> {
    devices
        .values()
        .find(|d| is_root_disk(d))
        .and_then(|d| d.get("pool").cloned())
}

/// Makes `name`'s instance volume in `pool` (anew) a copy of directory `from`.
fn fill_volume(pool: &crate::storage::Pool, name: &str, from: &std::path::Path) -> Result<()> {
    pool.delete_instance(name)?;
    pool.driver
        .create_volume(&corral_storage::Vol::container(name))
        .map_err(|e| ServiceError::Internal(e.to_string()))?;
    let to = pool.instance_volume(name);
    for e in std::fs::read_dir(from)
        .map_err(|e| ServiceError::Internal(e.to_string()))?
        .flatten()
    {
        crate::storage::copy_tree(&e.path(), &to.join(e.file_name()))?;
    }
    Ok(())
}

/// Makes `to` like `from`, writing only what differs (by content).
fn sync_tree(from: &std::path::Path, to: &std::path::Path) -> Result<(), crate::storage::StorageError> {
    let out = std::process::Command::new("setpriv")
        .args([
            "--pdeathsig",
            "KILL",
            "rsync",
            "-aHAX",
            "--checksum",
            "--numeric-ids",
            "--delete",
        ])
        .arg(format!("{}/", from.display()))
        .arg(format!("{}/", to.display()))
        .output()
        .map_err(|e| crate::storage::StorageError::Driver(format!("cannot run rsync: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(crate::storage::StorageError::Driver(format!(
            "rsync: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}
