//! The instance service: records in the store, volumes in the pool, containers through the
//! runtime. Knows nothing of HTTP; the API layer converts to and from the wire types.
//!
//! Crash safety: creating and deleting record an intent first, then touch the disk, then
//! commit the record and finish the intent in one transaction; `reconcile` at start-up undoes
//! whatever an interrupted create left and finishes an interrupted delete.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use corral_runtime::client::{self, Client};
use corral_runtime::proto::{MonitorState, Status};
use corral_runtime::spec::{ContainerSpec, SeccompPolicy};
use corral_store::{cas_json, finish_intent, get_json, pending_intents, record_intent, Store};
use serde::{Deserialize, Serialize};

use crate::config;
use crate::paths::Paths;
use crate::storage::DirPool;

/// Devices of an instance or profile: name → key → value.
pub type Devices = BTreeMap<String, BTreeMap<String, String>>;

/// An instance as stored. A versioned state format: only grows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default)]
pub struct InstanceRecord {
    pub name: String,
    pub project: String,
    pub description: String,
    pub architecture: String,
    pub config: BTreeMap<String, String>,
    pub devices: Devices,
    pub profiles: Vec<String>,
    pub ephemeral: bool,
    pub stateful: bool,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    /// The pool holding the root volume.
    pub pool: String,
}

/// A profile as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default)]
pub struct ProfileRecord {
    pub name: String,
    pub description: String,
    pub config: BTreeMap<String, String>,
    pub devices: Devices,
}

/// Errors a caller can act on; the API maps them to status codes.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    BadRequest(String),
    /// The ETag the client sent no longer matches.
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("{0}")]
    Internal(String),
}

impl From<corral_store::StoreError> for ServiceError {
    fn from(e: corral_store::StoreError) -> Self {
        ServiceError::Internal(e.to_string())
    }
}

impl From<config::ConfigError> for ServiceError {
    fn from(e: config::ConfigError) -> Self {
        ServiceError::BadRequest(e.to_string())
    }
}

impl From<crate::storage::StorageError> for ServiceError {
    fn from(e: crate::storage::StorageError) -> Self {
        ServiceError::Internal(e.to_string())
    }
}

pub type Result<T, E = ServiceError> = std::result::Result<T, E>;

pub const DEFAULT_PROJECT: &str = "default";

pub fn instance_key(project: &str, name: &str) -> String {
    format!("/instances/{project}/{name}")
}

pub fn profile_key(project: &str, name: &str) -> String {
    format!("/profiles/{project}/{name}")
}

/// LXD's instance name rules: a hostname label.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(ServiceError::BadRequest(format!(
            "invalid instance name {name:?}: use 1 to 63 letters, digits and dashes, starting with a letter and not ending with a dash"
        )))
    }
}

/// What an instance is doing, as the runtime sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum Runtime {
    Stopped,
    Running(MonitorState),
}

impl Runtime {
    /// LXD's status name and code.
    pub fn status(&self) -> (&'static str, u16) {
        match self {
            Runtime::Stopped => ("Stopped", 102),
            Runtime::Running(s) => match s.status {
                Status::Frozen => ("Frozen", 110),
                Status::Stopping => ("Stopping", 107),
                Status::Running => ("Running", 103),
            },
        }
    }
}

/// The instance service.
pub struct Instances {
    pub store: Arc<dyn Store>,
    pub paths: Paths,
    pub pool: DirPool,
    /// The corrald executable, re-executed as each container's monitor.
    pub monitor_exe: PathBuf,
}

impl Instances {
    pub fn get(&self, project: &str, name: &str) -> Result<(InstanceRecord, i64)> {
        get_json::<InstanceRecord>(&*self.store, &instance_key(project, name))?
            .ok_or_else(|| ServiceError::NotFound(format!("Instance not found: {name}")))
    }

    pub fn list(&self, project: &str) -> Result<Vec<InstanceRecord>> {
        let prefix = format!("/instances/{project}/");
        self.store
            .list(&prefix)?
            .into_iter()
            .map(|kv| {
                serde_json::from_slice(&kv.value)
                    .map_err(|e| ServiceError::Internal(format!("corrupt record {}: {e}", kv.key)))
            })
            .collect()
    }

    pub fn profile(&self, project: &str, name: &str) -> Result<ProfileRecord> {
        get_json::<ProfileRecord>(&*self.store, &profile_key(project, name))?
            .map(|(p, _)| p)
            .ok_or_else(|| ServiceError::NotFound(format!("Profile not found: {name}")))
    }

    /// Config and devices with the profiles applied in order, the instance's own last.
    pub fn expand(&self, rec: &InstanceRecord) -> Result<(BTreeMap<String, String>, Devices)> {
        self.expand_with(rec, &self.profiles(&rec.project)?)
    }

    /// All profiles of `project`, by name (read once for a whole listing).
    pub fn profiles(&self, project: &str) -> Result<BTreeMap<String, ProfileRecord>> {
        self.store
            .list(&format!("/profiles/{project}/"))?
            .into_iter()
            .map(|kv| {
                let p: ProfileRecord = serde_json::from_slice(&kv.value)
                    .map_err(|e| ServiceError::Internal(format!("corrupt record {}: {e}", kv.key)))?;
                Ok((p.name.clone(), p))
            })
            .collect()
    }

    /// [`Instances::expand`] with the profiles already at hand.
    pub fn expand_with(
        &self,
        rec: &InstanceRecord,
        profiles: &BTreeMap<String, ProfileRecord>,
    ) -> Result<(BTreeMap<String, String>, Devices)> {
        let mut config = BTreeMap::new();
        let mut devices = Devices::new();
        for p in &rec.profiles {
            let profile = profiles
                .get(p)
                .ok_or_else(|| ServiceError::NotFound(format!("Profile not found: {p}")))?;
            config.extend(profile.config.clone());
            devices.extend(profile.devices.clone());
        }
        config.extend(rec.config.clone());
        devices.extend(rec.devices.clone());
        // A device of type none masks an inherited one.
        devices.retain(|_, d| d.get("type").map(String::as_str) != Some("none"));
        Ok((config, devices))
    }

    pub fn client(&self, name: &str) -> Client {
        Client::new(&self.paths.run_dir(name))
    }

    /// Just the status, from the monitor's state file and whether the monitor is alive: no
    /// round trip to the monitor (what listing many instances needs).
    pub fn status(&self, name: &str) -> (&'static str, u16) {
        let path = self.paths.run_dir(name).join(corral_runtime::proto::STATE);
        let Ok(raw) = std::fs::read(&path) else {
            return ("Stopped", 102);
        };
        let Ok(state) = serde_json::from_slice::<MonitorState>(&raw) else {
            return self.runtime(name).status();
        };
        if !std::path::Path::new(&format!("/proc/{}", state.monitor_pid)).exists() {
            return ("Stopped", 102);
        }
        Runtime::Running(state).status()
    }

    pub fn runtime(&self, name: &str) -> Runtime {
        match self.client(name).state() {
            Ok(s) => Runtime::Running(s),
            Err(_) => Runtime::Stopped,
        }
    }

    /// Creates an instance from an image volume already in the pool (or empty when
    /// `fingerprint` is None). On any failure nothing is left behind.
    pub fn create(&self, mut rec: InstanceRecord, fingerprint: Option<&str>) -> Result<InstanceRecord> {
        validate_name(&rec.name)?;
        config::validate(&rec.config, false)?;
        for p in &rec.profiles {
            self.profile(&rec.project, p)?;
        }
        let key = instance_key(&rec.project, &rec.name);
        if self.store.get(&key)?.is_some() {
            return Err(ServiceError::Conflict(format!(
                "Instance {:?} already exists",
                rec.name
            )));
        }
        rec.pool = self.pool.name.clone();
        rec.created_at = Utc::now();
        if let Some(fp) = fingerprint {
            rec.config.insert("volatile.base_image".into(), fp.to_string());
        }
        rec.config
            .insert("volatile.uuid".into(), uuid::Uuid::new_v4().to_string());
        let intent = record_intent(
            &*self.store,
            "instance-create",
            serde_json::json!({ "project": rec.project, "name": rec.name }),
        )?;
        let made = match fingerprint {
            Some(fp) => self.pool.clone_image(fp, &rec.name).map(|_| ()),
            None => std::fs::create_dir_all(self.pool.instance_volume(&rec.name).join("rootfs")).map_err(|e| {
                crate::storage::StorageError::Io {
                    what: "create",
                    path: self.pool.instance_volume(&rec.name),
                    source: e,
                }
            }),
        };
        if let Err(e) = made {
            let _ = self.pool.delete_instance(&rec.name);
            finish_intent(&*self.store, &intent)?;
            return Err(e.into());
        }
        if let Err(e) = crate::templates::apply(&self.pool.instance_volume(&rec.name), &rec, "create") {
            tracing::warn!(instance = %rec.name, error = %e, "image templates");
        }
        match cas_json(&*self.store, &key, None, &rec)? {
            Ok(_) => {
                finish_intent(&*self.store, &intent)?;
                Ok(rec)
            }
            Err(_) => {
                let _ = self.pool.delete_instance(&rec.name);
                finish_intent(&*self.store, &intent)?;
                Err(ServiceError::Conflict(format!(
                    "Instance {:?} already exists",
                    rec.name
                )))
            }
        }
    }

    /// Replaces config, devices, profiles, description (PUT); `etag` is the revision the client
    /// read, if it sent If-Match.
    pub fn update(&self, project: &str, name: &str, new: InstanceRecord, etag: Option<i64>) -> Result<InstanceRecord> {
        let (old, rev) = self.get(project, name)?;
        if let Some(tag) = etag {
            if tag != rev {
                return Err(ServiceError::PreconditionFailed(
                    "ETag doesn't match the instance's current state".into(),
                ));
            }
        }
        // volatile keys are the daemon's: keep ours whatever the client sent back.
        let mut config: BTreeMap<String, String> = new
            .config
            .into_iter()
            .filter(|(k, _)| !k.starts_with("volatile."))
            .collect();
        config::validate(&config, false)?;
        config.extend(
            old.config
                .iter()
                .filter(|(k, _)| k.starts_with("volatile."))
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        for p in &new.profiles {
            self.profile(project, p)?;
        }
        let updated = InstanceRecord {
            config,
            devices: new.devices,
            profiles: new.profiles,
            description: new.description,
            ephemeral: new.ephemeral,
            ..old
        };
        match cas_json(&*self.store, &instance_key(project, name), Some(rev), &updated)? {
            Ok(_) => {
                self.apply_live(&updated)?;
                Ok(updated)
            }
            Err(_) => Err(ServiceError::PreconditionFailed(
                "the instance changed during the update; try again".into(),
            )),
        }
    }

    /// Applies live keys (limits) to a running container.
    fn apply_live(&self, rec: &InstanceRecord) -> Result<()> {
        if let Runtime::Running(_) = self.runtime(&rec.name) {
            let (config, _) = self.expand(rec)?;
            let limits = config::limits(&config, host_memory())?;
            let root =
                corral_runtime::cgroup::CgroupRoot::detect().map_err(|e| ServiceError::Internal(e.to_string()))?;
            let cg = corral_runtime::cgroup::Cgroup::open(&root, &self.paths.cgroup_name(&rec.name))
                .map_err(|e| ServiceError::Internal(e.to_string()))?;
            cg.set_limits(&limits)
                .map_err(|e| ServiceError::BadRequest(e.to_string()))?;
        }
        Ok(())
    }

    /// The runtime spec of an instance.
    pub fn spec(&self, rec: &InstanceRecord) -> Result<ContainerSpec> {
        let (config, _devices) = self.expand(rec)?;
        let volume = self.pool.instance_volume(&rec.name);
        let mut spec = ContainerSpec::new(&rec.name, volume.join("rootfs"), self.paths.run_dir(&rec.name));
        spec.cgroup_name = Some(self.paths.cgroup_name(&rec.name));
        spec.idmap = if config::flag(&config, "security.privileged") {
            None
        } else {
            Some(corral_runtime::idmap::host_range().default_map())
        };
        spec.nesting = config::flag(&config, "security.nesting");
        spec.seccomp = SeccompPolicy {
            intercept_mknod: config::flag(&config, "security.syscalls.intercept.mknod"),
            intercept_setxattr: config::flag(&config, "security.syscalls.intercept.setxattr"),
            ..SeccompPolicy::default()
        };
        spec.limits = config::limits(&config, host_memory())?;
        for (k, v) in &config {
            if let Some(var) = k.strip_prefix("environment.") {
                spec.env.insert(var.to_string(), v.clone());
            }
        }
        Ok(spec)
    }

    /// Starts the container (blocking: call from a blocking task).
    pub fn start(&self, project: &str, name: &str) -> Result<()> {
        let (rec, _) = self.get(project, name)?;
        if let Runtime::Running(_) = self.runtime(name) {
            return Err(ServiceError::BadRequest("The instance is already running".into()));
        }
        let spec = self.spec(&rec)?;
        if let Err(e) = crate::templates::apply(&self.pool.instance_volume(name), &rec, "start") {
            tracing::warn!(instance = %name, error = %e, "image templates");
        }
        client::spawn(&self.monitor_exe, &spec)
            .map_err(|e| ServiceError::Internal(format!("Failed to start {name}: {e}")))?;
        let mut rec = rec;
        rec.last_used_at = Some(Utc::now());
        let _ = corral_store::put_json(&*self.store, &instance_key(project, name), &rec);
        Ok(())
    }

    /// Stops the container: cleanly within `timeout` (None: the instance's
    /// boot.host_shutdown_timeout), or at once with `force`.
    pub fn stop(&self, project: &str, name: &str, timeout: Option<Duration>, force: bool) -> Result<()> {
        let (rec, _) = self.get(project, name)?;
        let Runtime::Running(_) = self.runtime(name) else {
            return Err(ServiceError::BadRequest("The instance is already stopped".into()));
        };
        let timeout = match timeout {
            Some(t) => t,
            None => {
                let (config, _) = self.expand(&rec)?;
                let secs = config
                    .get("boot.host_shutdown_timeout")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(30);
                Duration::from_secs(secs)
            }
        };
        self.client(name)
            .stop(timeout, force)
            .map_err(|e| ServiceError::Internal(format!("Failed to stop {name}: {e}")))?;
        if rec.ephemeral {
            self.delete(project, name)?;
        }
        Ok(())
    }

    pub fn freeze(&self, name: &str, freeze: bool) -> Result<()> {
        let Runtime::Running(_) = self.runtime(name) else {
            return Err(ServiceError::BadRequest("The instance isn't running".into()));
        };
        let c = self.client(name);
        let r = if freeze { c.freeze() } else { c.thaw() };
        r.map_err(|e| ServiceError::Internal(e.to_string()))
    }

    /// Deletes a stopped instance: its record and its volume.
    pub fn delete(&self, project: &str, name: &str) -> Result<()> {
        self.get(project, name)?;
        if let Runtime::Running(_) = self.runtime(name) {
            return Err(ServiceError::BadRequest(
                "The instance is currently running, stop it first".into(),
            ));
        }
        let intent = record_intent(
            &*self.store,
            "instance-delete",
            serde_json::json!({ "project": project, "name": name }),
        )?;
        self.pool.delete_instance(name)?;
        let _ = crate::storage::remove_tree(&self.paths.run_dir(name));
        self.store.delete(&instance_key(project, name))?;
        finish_intent(&*self.store, &intent)?;
        Ok(())
    }

    /// Renames a stopped instance.
    pub fn rename(&self, project: &str, name: &str, new_name: &str) -> Result<()> {
        validate_name(new_name)?;
        let (mut rec, rev) = self.get(project, name)?;
        if let Runtime::Running(_) = self.runtime(name) {
            return Err(ServiceError::BadRequest(
                "Renaming of running instance not allowed".into(),
            ));
        }
        if self.store.get(&instance_key(project, new_name))?.is_some() {
            return Err(ServiceError::Conflict(format!("Name {new_name:?} already in use")));
        }
        self.pool.rename_instance(name, new_name)?;
        rec.name = new_name.to_string();
        let value = serde_json::to_vec(&rec).map_err(|e| ServiceError::Internal(e.to_string()))?;
        let res = self.store.txn(
            &[
                corral_store::Compare::ModRevision(instance_key(project, name), rev),
                corral_store::Compare::Missing(instance_key(project, new_name)),
            ],
            &[
                corral_store::Op::Delete(instance_key(project, name)),
                corral_store::Op::Put(instance_key(project, new_name), value),
            ],
        )?;
        if !res.succeeded {
            let _ = self.pool.rename_instance(new_name, name);
            return Err(ServiceError::Conflict(
                "the instance changed during the rename; try again".into(),
            ));
        }
        Ok(())
    }

    /// Finishes or undoes what a crash interrupted (called once at start-up).
    pub fn reconcile(&self) -> Result<()> {
        for intent in pending_intents(&*self.store)? {
            let project = intent.data["project"].as_str().unwrap_or(DEFAULT_PROJECT).to_string();
            let name = intent.data["name"].as_str().unwrap_or_default().to_string();
            match intent.kind.as_str() {
                // A create that did not commit its record: remove the half-made volume.
                "instance-create" if self.store.get(&instance_key(&project, &name))?.is_none() && !name.is_empty() => {
                    tracing::info!(instance = %name, "removing the volume of an interrupted create");
                    self.pool.delete_instance(&name)?;
                }
                // A delete that did not finish: finish it.
                "instance-delete" if !name.is_empty() => {
                    tracing::info!(instance = %name, "finishing an interrupted delete");
                    self.pool.delete_instance(&name)?;
                    self.store.delete(&instance_key(&project, &name))?;
                }
                _ => {}
            }
            finish_intent(&*self.store, &intent.id)?;
        }
        Ok(())
    }
}

/// Total host memory in bytes (for percentage limits).
pub fn host_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kib| kib * 1024)
        .unwrap_or(0)
}
