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
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use chrono::{DateTime, Utc};
use corral_store::{cas_json, get_json};
use serde::{Deserialize, Serialize};

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

/// The compressor command of an algorithm (`None` for no compression).
fn compressor(algorithm: &str) -> Result<Option<&'static [&'static str]>> {
    Ok(match algorithm {
        "" | "gzip" => Some(&["gzip", "-c", "-6"]),
        "none" => None,
        "xz" => Some(&["xz", "-c", "-T0", "-3"]),
        "zstd" => Some(&["zstd", "-c", "-q", "-T0", "-3"]),
        other => {
            return Err(bad(format!(
                "unknown compression algorithm {other:?}: use none, gzip, xz or zstd"
            )))
        }
    })
}

/// Checks a compression algorithm's name.
pub fn check_compression(algorithm: &str) -> Result<()> {
    compressor(algorithm).map(|_| ())
}

/// Refuses an optimized backup on a pool whose driver has no native stream format.
pub fn check_optimizable(_pool: &crate::storage::Pool) -> Result<()> {
    Err(bad(
        "optimized_storage backups (btrfs send streams) are not supported yet: leave it false",
    ))
}

/// What a tarball's first bytes say about its compression: the decompressor to put before tar.
pub fn decompressor_for(head: &[u8]) -> Option<&'static [&'static str]> {
    if head.starts_with(&[0x1f, 0x8b]) {
        Some(&["gzip", "-dc"])
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Some(&["xz", "-dc", "-T0"])
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some(&["zstd", "-dc", "-q"])
    } else if head.starts_with(b"BZh") {
        Some(&["bzip2", "-dc"])
    } else {
        None
    }
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

/// One directory of a backup tarball: `backup/<at>` holds the tree at `from`.
pub struct Member {
    pub at: String,
    pub from: PathBuf,
}

impl Member {
    pub fn dir(at: &str, from: PathBuf) -> Member {
        Member {
            at: at.to_string(),
            from,
        }
    }
}

/// Starts the process whose stdout is a backup tarball: `backup/index.yaml` first, then each
/// member's tree, through the compressor of `algorithm`. The trees go in through bind mounts
/// made in a private mount namespace of that process, so they vanish with it whatever happens;
/// nothing is copied. `stage` (made here) is the caller's to remove once the process has exited.
pub fn spawn_tarball(
    stage: &Path,
    index: &BackupIndex,
    members: &[Member],
    algorithm: &str,
) -> Result<(std::process::Child, PathBuf)> {
    let compress = compressor(algorithm)?;
    let backup = stage.join("backup");
    std::fs::create_dir_all(&backup).map_err(internal)?;
    std::fs::write(
        backup.join("index.yaml"),
        serde_json::to_vec_pretty(index).map_err(internal)?,
    )
    .map_err(internal)?;
    // The top-level entries after index.yaml, in the members' order (names of our own making).
    let mut tops: Vec<&str> = Vec::new();
    for m in members {
        let top = m.at.split('/').next().unwrap_or_default();
        if !tops.contains(&top) {
            tops.push(top);
        }
    }
    // sh -c SCRIPT sh STAGE [AT FROM]...: bind each tree in, then tar.
    let mut script = String::from(
        "set -e\nstage=$1; shift\n\
         while [ $# -gt 0 ]; do mkdir -p \"$stage/backup/$1\"; mount --bind \"$2\" \"$stage/backup/$1\"; shift 2; done\n",
    );
    script.push_str(
        "tar -C \"$stage\" --create --numeric-owner --xattrs --xattrs-include='*' --acls --sparse \
         --file - backup/index.yaml",
    );
    for t in tops {
        script.push_str(&format!(" 'backup/{t}'"));
    }
    if let Some(c) = compress {
        script.push_str(" | ");
        script.push_str(&c.join(" "));
    }
    script.push('\n');
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script, "sh"])
        .arg(stage);
    for m in members {
        cmd.arg(&m.at).arg(&m.from);
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| internal(format!("cannot run the export: {e}")))?;
    Ok((child, stage.to_path_buf()))
}

/// Unpacks an uploaded backup tarball (compressed or not, as its first bytes say) into `stage`
/// and reads its `backup/index.yaml`. `what` names the expected kind in errors.
pub fn unpack(body: &mut dyn Read, stage: &Path, what: &str) -> Result<BackupIndex> {
    let mut head = vec![0u8; 8];
    let mut got = 0;
    while got < head.len() {
        match body.read(&mut head[got..]).map_err(internal)? {
            0 => break,
            n => got += n,
        }
    }
    head.truncate(got);
    if head.is_empty() {
        return Err(bad("the backup is empty: send the tarball as the request body"));
    }
    let script = match decompressor_for(&head) {
        Some(d) => format!(
            "{} | tar -x --numeric-owner --xattrs --xattrs-include='*' --acls -C \"$1\"",
            d.join(" ")
        ),
        None => "tar -x --numeric-owner --xattrs --xattrs-include='*' --acls -C \"$1\"".to_string(),
    };
    // pipefail: a decompressor that fails is a failure even where tar saw a clean end.
    let mut child = Command::new("bash")
        .args(["-o", "pipefail", "-c", &script, "sh"])
        .arg(stage)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| internal(format!("cannot run tar: {e}")))?;
    let mut stdin = child.stdin.take().expect("piped");
    let copied = stdin
        .write_all(&head)
        .and_then(|_| std::io::copy(body, &mut stdin).map(|_| ()));
    drop(stdin);
    let out = child.wait_with_output().map_err(internal)?;
    if let Err(e) = copied {
        return Err(bad(format!("the backup upload broke off: {e}")));
    }
    if !out.status.success() {
        return Err(bad(format!(
            "the backup is not a valid tarball: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let index_text = std::fs::read_to_string(stage.join("backup/index.yaml"))
        .map_err(|_| bad(format!("the tarball has no backup/index.yaml: it is not {what}")))?;
    serde_saphyr::from_str(&index_text).map_err(|e| bad(format!("backup/index.yaml is invalid: {e}")))
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
        compressor(&rec.compression_algorithm)?;
        if rec.optimized_storage {
            return Err(bad(
                "optimized_storage backups (btrfs send streams) are not supported yet: leave it false",
            ));
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
    ) -> Result<(std::process::Child, PathBuf)> {
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
            optimized: false,
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
        mut body: impl Read,
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
        let _ = crate::storage::remove_tree(&stage);
        result
    }

    fn import_staged(
        &self,
        project: &str,
        body: &mut dyn Read,
        name: Option<&str>,
        pool: &crate::storage::Pool,
        stage: &Path,
    ) -> Result<InstanceRecord> {
        let index = unpack(body, stage, "an instance backup")?;
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
        if index.optimized {
            return Err(bad("optimized (storage-specific) backups cannot be imported yet"));
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
        if !backup.join("container").is_dir() {
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
            for s in &index.snapshots {
                fill(&backup.join("snapshots").join(s))?;
                pool.snapshot_instance(&name, s)?;
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
            fill(&backup.join("container"))?;
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
