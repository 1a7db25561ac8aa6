//! The instance service: records in the store, volumes in the pool, containers through the
//! runtime. Knows nothing of HTTP; the API layer converts to and from the wire types.
//!
//! Crash safety: creating and deleting record an intent first, then touch the disk, then
//! commit the record and finish the intent in one transaction; `reconcile` at start-up undoes
//! whatever an interrupted create left and finishes an interrupted delete.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use corral_runtime::client::{self, Client};
use corral_runtime::proto::{MonitorState, Status};
use corral_runtime::spec::{ContainerSpec, SeccompPolicy};
use corral_store::{cas_json, finish_intent, get_json, pending_intents, record_intent, Store};
use serde::{Deserialize, Serialize};

use crate::config;
use crate::nics;
use crate::paths::Paths;
use crate::pools::{Pools, DEFAULT_POOL};
use crate::storage::Pool;

/// Stateful stop and start, the state of stateful snapshots (CRIU).
#[path = "stateful.rs"]
pub mod stateful;

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
    pub pools: Arc<Pools>,
    /// The corrald executable, re-executed as each container's monitor.
    pub monitor_exe: PathBuf,
    /// The instances running now.
    pub running: crate::running::RunningSet,
    pub networks: Arc<crate::networks::Networks>,
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

    /// Just the status, from what the daemon knows of its running instances: no file and no
    /// round trip to the monitor (what listing many instances needs).
    pub fn status(&self, name: &str) -> (&'static str, u16) {
        match self.running.get(name) {
            Some(state) => Runtime::Running(state).status(),
            None => ("Stopped", 102),
        }
    }

    /// Whether `name` runs (or is frozen), from what the daemon knows: no round trip to the
    /// monitor.
    pub fn is_running(&self, name: &str) -> bool {
        self.running.get(name).is_some()
    }

    /// Takes in the instances an earlier daemon started (called once at start-up).
    pub fn adopt_running(&self, project: &str) -> Result<()> {
        for rec in self.list(project)? {
            if let Runtime::Running(state) = self.runtime(&rec.name) {
                self.running.insert(&rec.name, state);
            }
        }
        Ok(())
    }

    /// Called when the monitor `monitor_pid` of `name` has exited. When the container stopped
    /// by itself, records it as stopped (so it stays so at the next boot) and deletes it if
    /// ephemeral; returns whether it did.
    pub fn monitor_exited(&self, project: &str, name: &str, monitor_pid: i32) -> bool {
        if self.running.exited(name, monitor_pid) != crate::running::Exit::OnItsOwn {
            return false;
        }
        tracing::info!(instance = %name, "stopped by itself");
        if let Ok((rec, _)) = self.get(project, name) {
            self.after_stop(&rec);
        }
        self.mark_stopped(project, name);
        if self.get(project, name).is_ok_and(|(rec, _)| rec.ephemeral) {
            if let Err(e) = self.delete(project, name) {
                tracing::warn!(instance = %name, error = %e, "cannot delete the stopped ephemeral instance");
            }
        }
        true
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
        let (_, devices) = self.expand(&rec)?;
        self.validate_nics(&devices)?;
        crate::disks::validate(&self.pools, &devices)?;
        let key = instance_key(&rec.project, &rec.name);
        if self.store.get(&key)?.is_some() {
            return Err(ServiceError::Conflict(format!(
                "Instance {:?} already exists",
                rec.name
            )));
        }
        // The pool of the root disk (from the instance's devices or its profiles').
        rec.pool = devices
            .values()
            .find(|d| {
                d.get("type").map(String::as_str) == Some("disk") && d.get("path").map(String::as_str) == Some("/")
            })
            .and_then(|d| d.get("pool").cloned())
            .unwrap_or_else(|| DEFAULT_POOL.to_string());
        let pool = self.pools.get(&rec.pool).map_err(|e| match e {
            ServiceError::NotFound(m) => {
                ServiceError::BadRequest(format!("{m}: the root disk names a pool that does not exist"))
            }
            e => e,
        })?;
        rec.created_at = Utc::now();
        if let Some(fp) = fingerprint {
            rec.config.insert("volatile.base_image".into(), fp.to_string());
        }
        rec.config
            .insert("volatile.uuid".into(), uuid::Uuid::new_v4().to_string());
        let t = std::time::Instant::now();
        let intent = record_intent(
            &*self.store,
            "instance-create",
            serde_json::json!({ "project": rec.project, "name": rec.name }),
        )?;
        let t_intent = t.elapsed();
        let mut spare = false;
        let made = match fingerprint {
            Some(fp) => self
                .ensure_image(&pool, fp)
                .and_then(|_| pool.clone_image(fp, &rec.name).map_err(ServiceError::from))
                .map(|took_spare| {
                    spare = took_spare;
                    pool.refill_spare(fp)
                }),
            None => pool.create_instance(&rec.name).map_err(ServiceError::from),
        };
        let t_volume = t.elapsed();
        let made = made.and_then(|_| match root_size(&devices) {
            Some(_) => apply_root_size(&pool, &rec.name, &devices),
            None => Ok(()),
        });
        if let Err(e) = made {
            let _ = pool.delete_instance(&rec.name);
            finish_intent(&*self.store, &intent)?;
            return Err(e);
        }
        if let Err(e) = crate::templates::apply(&pool.instance_volume(&rec.name), &rec, "create") {
            tracing::warn!(instance = %rec.name, error = %e, "image templates");
        }
        // The record and the end of the intent in one commit (one fsync less per create).
        let committed = self.store.txn(
            &[corral_store::Compare::Missing(key.clone())],
            &[
                corral_store::Op::Put(key, json_bytes(&rec)?),
                corral_store::Op::Delete(corral_store::intent_key(&intent)),
            ],
        )?;
        if !committed.succeeded {
            let _ = pool.delete_instance(&rec.name);
            finish_intent(&*self.store, &intent)?;
            return Err(ServiceError::Conflict(format!(
                "Instance {:?} already exists",
                rec.name
            )));
        }
        tracing::debug!(
            instance = %rec.name,
            intent = ?t_intent,
            volume = ?(t_volume - t_intent),
            spare,
            rest = ?(t.elapsed() - t_volume),
            "create timings"
        );
        Ok(rec)
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
        let probe = InstanceRecord {
            devices: new.devices.clone(),
            profiles: new.profiles.clone(),
            ..old.clone()
        };
        let (_, probe_devices) = self.expand(&probe)?;
        self.validate_nics(&probe_devices)?;
        crate::disks::validate(&self.pools, &probe_devices)?;
        let before = old.clone();
        let updated = InstanceRecord {
            config,
            devices: new.devices,
            profiles: new.profiles,
            description: new.description,
            ephemeral: new.ephemeral,
            ..old
        };
        let updated = self.pin_root_pool(updated)?;
        match cas_json(&*self.store, &instance_key(project, name), Some(rev), &updated)? {
            Ok(new_rev) => {
                self.apply_live(&updated)?;
                let (old_exp, new_exp) = (self.expand(&before)?, self.expand(&updated)?);
                if root_size(&old_exp.1) != root_size(&new_exp.1) {
                    apply_root_size(&self.pool_of(&updated)?, name, &new_exp.1)?;
                }
                if let Err(e) = self.hotplug(project, name, &old_exp, &new_exp) {
                    // A device change the running container refused (its disks are as they
                    // were): the record goes back too, so the answer's 400 changed nothing.
                    if matches!(e, ServiceError::BadRequest(_)) {
                        match cas_json(&*self.store, &instance_key(project, name), Some(new_rev), &before)? {
                            Ok(_) => {
                                let _ = self.apply_live(&before);
                            }
                            Err(_) => {
                                tracing::warn!(instance = %name, "changed meanwhile: the refused change is not rolled back")
                            }
                        }
                    }
                    return Err(e);
                }
                Ok(self.get(project, name)?.0)
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
        let (config, devices) = self.expand(rec)?;
        let volume = self.pool_of(rec)?.instance_volume(&rec.name);
        let mut spec = ContainerSpec::new(&rec.name, volume.join("rootfs"), self.paths.run_dir(&rec.name));
        spec.cgroup_name = Some(self.paths.cgroup_name(&rec.name));
        spec.idmap = if config::flag(&config, "security.privileged") {
            None
        } else {
            Some(corral_runtime::idmap::host_range().default_map())
        };
        spec.nesting = config::flag(&config, "security.nesting");
        spec.mounts = crate::disks::mounts(&self.pools, &devices, spec.idmap.is_none())?;
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
        if rec.stateful {
            // Stopped with its state: it resumes rather than boots (lxc start).
            return self.start_from_state(project, rec);
        }
        let pool = self.pool_of(&rec)?;
        let _quiet = pool.hold_background();
        let t = std::time::Instant::now();
        let spec = self.spec(&rec)?;
        let t_spec = t.elapsed();
        if let Err(e) = crate::templates::apply(&pool.instance_volume(name), &rec, "start") {
            tracing::warn!(instance = %name, error = %e, "image templates");
        }
        let checkpointable = self
            .expand(&rec)
            .is_ok_and(|(c, _)| c.get("migration.stateful").is_some_and(|v| v == "true"));
        let rootfs = pool.instance_volume(name).join("rootfs");
        if let Err(e) = crate::guest_setup::prepare_checkpointable(&rootfs, checkpointable) {
            if checkpointable {
                return Err(ServiceError::Internal(format!(
                    "cannot prepare {name} for checkpoints (migration.stateful): {}",
                    e.message
                )));
            }
            tracing::warn!(instance = %name, error = %e.message, "removing the checkpoint drop-in");
        }
        let rec = self.prepare_nics(project, rec, &spec.run_dir)?;
        let t_templates = t.elapsed();
        client::spawn(&self.monitor_exe, &spec)
            .map_err(|e| ServiceError::Internal(format!("Failed to start {name}: {e}")))?;
        let t_spawn = t.elapsed();
        match self.client(name).state() {
            Ok(state) => {
                let init_pid = state.init_pid;
                self.running.insert(name, state);
                let (_, devices) = self.expand(&rec)?;
                if let Err(e) = self.start_proxies(&rec, &devices, init_pid) {
                    // A device that cannot work fails the start, as in LXD.
                    let _ = self.stop_inner(project, name, Some(Duration::from_secs(0)), true);
                    return Err(e);
                }
            }
            // Gone already (its init exited at once): it is stopped.
            Err(e) => tracing::warn!(instance = %name, error = %e, "stopped as soon as started"),
        }
        tracing::info!(instance = %name, "started");
        let mut rec = rec;
        rec.last_used_at = Some(Utc::now());
        rec.config.insert(LAST_POWER.into(), "RUNNING".into());
        rec.config.insert(LAST_BOOT.into(), boot_id());
        let _ = corral_store::put_json(&*self.store, &instance_key(project, name), &rec);
        tracing::debug!(
            instance = %name,
            spec = ?t_spec,
            templates = ?(t_templates - t_spec),
            spawn = ?(t_spawn - t_templates),
            rest = ?(t.elapsed() - t_spawn),
            "start timings"
        );
        Ok(())
    }

    /// Resolves the instance's NICs into plans for the monitor (in `run_dir`): their networks
    /// must exist; a NIC without a MAC gets one, kept in `volatile.<dev>.hwaddr`; the networks'
    /// dnsmasq learn the instance's MACs and fixed addresses before its DHCP client asks.
    fn prepare_nics(&self, project: &str, rec: InstanceRecord, run_dir: &Path) -> Result<InstanceRecord> {
        let (config, devices) = self.expand(&rec)?;
        let mut plans = Vec::new();
        let mut volatile = BTreeMap::new();
        for (dev, opts) in nic_devices(&devices) {
            plans.push(self.plan_nic(&rec.name, dev, opts, &config, &mut volatile)?);
        }
        nics::write_plans(run_dir, &plans)
            .map_err(|e| ServiceError::Internal(format!("cannot write the NIC plans: {e}")))?;
        let rec = self.record_volatile(project, rec, &config, volatile)?;
        self.sync_leases_of(project, &devices);
        Ok(rec)
    }

    /// One NIC's plan; a MAC made up for it and its host-side name go into `volatile`.
    fn plan_nic(
        &self,
        instance: &str,
        dev: &str,
        opts: &BTreeMap<String, String>,
        config: &BTreeMap<String, String>,
        volatile: &mut BTreeMap<String, String>,
    ) -> Result<nics::NicPlan> {
        nics::validate(dev, opts).map_err(|e| ServiceError::BadRequest(e.to_string()))?;
        let physical = opts.get("nictype").is_some_and(|t| t == "physical");
        let hwaddr = match nics::hwaddr(dev, opts, config) {
            Some(m) => m,
            // A physical NIC keeps its own address unless told otherwise.
            None if physical => String::new(),
            None => {
                let mac = corral_network::MacAddr::random().map_err(|e| ServiceError::Internal(e.to_string()))?;
                volatile.insert(nics::hwaddr_key(dev), mac.to_string());
                mac.to_string()
            }
        };
        let host_name = opts
            .get("host_name")
            .cloned()
            .unwrap_or_else(|| corral_network::link::veth_names(&format!("{instance}/{dev}")).0);
        let kind = self.nic_kind(dev, opts)?;
        volatile.insert(nics::host_name_key(dev), host_name.clone());
        Ok(nics::NicPlan {
            device: dev.to_string(),
            name: nics::interface_name(dev, opts),
            kind,
            host_name,
            hwaddr,
            mtu: opts.get("mtu").and_then(|m| m.parse().ok()),
            limit_ingress: nics::rate_limits(opts).0,
            limit_egress: nics::rate_limits(opts).1,
        })
    }

    /// Writes the volatile keys that changed into the record (the latest record back).
    fn record_volatile(
        &self,
        project: &str,
        rec: InstanceRecord,
        config: &BTreeMap<String, String>,
        volatile: BTreeMap<String, String>,
    ) -> Result<InstanceRecord> {
        if volatile.iter().any(|(k, v)| config.get(k) != Some(v)) {
            self.set_volatile(project, &rec.name, volatile)
        } else {
            Ok(rec)
        }
    }

    /// Rewrites the static leases of every network the devices' NICs are on.
    fn sync_leases_of(&self, project: &str, devices: &Devices) {
        let mut networks: Vec<&str> = nic_devices(devices).filter_map(|(_, o)| nic_network(o)).collect();
        networks.sort();
        networks.dedup();
        for n in networks {
            self.sync_leases(project, n);
        }
    }

    /// Hot-plug: makes a running instance's disk, NIC and proxy devices match its new
    /// expanded config and devices (removed or changed ones come out, added or changed ones go
    /// in), as LXD does on a device change of the instance or of one of its profiles.
    fn hotplug(&self, project: &str, name: &str, old: &Expanded, new: &Expanded) -> Result<()> {
        let Runtime::Running(state) = self.runtime(name) else {
            return Ok(());
        };
        let (old_config, old_devices) = old;
        let (config, devices) = new;
        // Disks first (a proxy may listen in one); a change they refuse is undone and stops here.
        self.hotplug_disks(name, &state, old_devices, devices)?;
        // Proxies.
        let before: BTreeMap<&String, &BTreeMap<String, String>> = proxy_devices(old_devices).collect();
        let after: BTreeMap<&String, &BTreeMap<String, String>> = proxy_devices(devices).collect();
        let run_dir = self.paths.run_dir(name);
        for (dev, opts) in &before {
            if after.get(dev) != Some(opts) {
                crate::proxies::stop(&run_dir, dev);
            }
        }
        let added: Devices = after
            .iter()
            .filter(|(dev, opts)| before.get(*dev) != Some(*opts))
            .map(|(d, o)| ((*d).clone(), (*o).clone()))
            .collect();
        let (rec, _) = self.get(project, name)?;
        self.start_proxies(&rec, &added, state.init_pid)?;
        // NICs.
        let before: BTreeMap<&String, &BTreeMap<String, String>> = nic_devices(old_devices).collect();
        let after: BTreeMap<&String, &BTreeMap<String, String>> = nic_devices(devices).collect();
        if before == after {
            return Ok(());
        }
        let netns =
            corral_network::link::Netns::of_pid(state.init_pid).map_err(|e| ServiceError::Internal(e.to_string()))?;
        let mut volatile = BTreeMap::new();
        for (dev, opts) in &before {
            if after.get(dev) != Some(opts) {
                let plan = self.plan_nic(name, dev, opts, old_config, &mut BTreeMap::new())?;
                nics::unplug(&plan, &netns)
                    .map_err(|e| ServiceError::Internal(format!("cannot remove NIC {dev}: {e}")))?;
            }
        }
        for (dev, opts) in &after {
            if before.get(dev) != Some(opts) {
                let plan = self.plan_nic(name, dev, opts, config, &mut volatile)?;
                nics::plug(&plan, &netns)
                    .map_err(|e| ServiceError::BadRequest(format!("cannot add NIC {dev}: {e}")))?;
            }
        }
        self.record_volatile(project, rec, config, volatile)?;
        self.sync_leases_of(project, devices);
        self.sync_leases_of(project, old_devices);
        Ok(())
    }

    /// The disks of [`Self::hotplug`]: unmounts the removed and changed disks (and those below
    /// them) from the running container, then mounts the added and changed ones (and those
    /// below them again), each a bind the monitor makes as at start. A disk mounted at start
    /// comes out as a hot-plugged one does (the monitor's mount, which the container's copy
    /// propagated from, is unmounted). If any disk cannot be changed, what was done is undone
    /// (the disks mounted here come out, those unmounted here go back) and the error names
    /// those that could not be changed.
    fn hotplug_disks(&self, name: &str, state: &MonitorState, old: &Devices, new: &Devices) -> Result<()> {
        let (unplug, plug) = crate::disks::hotplug_plan(old, new)?;
        if unplug.is_empty() && plug.is_empty() {
            return Ok(());
        }
        // The spec the container started with: its binds, and whether it is privileged.
        let started = corral_runtime::monitor::read_spec(&self.paths.run_dir(name))
            .map_err(|e| ServiceError::Internal(format!("cannot read the running instance's spec: {e}")))?;
        let client = self.client(name);
        let mut failed = Vec::new();
        // Mount points that keep their disk: nothing goes over them.
        let mut kept: Vec<&Path> = Vec::new();
        // What was done, to undo on a failure.
        let mut unplugged: Vec<&crate::disks::Disk> = Vec::new();
        let mut plugged: Vec<&Path> = Vec::new();
        // A monitor from before every disk could be unplugged lists only the hot-plugged ones.
        let mounted = |p: &Path| state.disks.iter().chain(&state.hotplugged).any(|d| d == p);
        for disk in &unplug {
            let path = disk.path.as_path();
            if mounted(path) {
                match client.unmount(path) {
                    Ok(()) => unplugged.push(disk),
                    Err(e) => {
                        failed.push(format!(
                            "cannot unmount disk {:?} from {}: {e}",
                            disk.device,
                            path.display()
                        ));
                        kept.push(path);
                    }
                }
            } else if started.mounts.iter().any(|m| m.target == path) && state.disks.is_empty() {
                failed.push(format!(
                    "disk {:?} on {} was mounted when the instance started and stays as it was until it restarts (its monitor predates live removal)",
                    disk.device,
                    path.display()
                ));
                kept.push(path);
            }
            // Otherwise nothing is mounted there (a source that was missing and not required).
        }
        for disk in &plug {
            if kept.contains(&disk.path.as_path()) {
                continue;
            }
            match crate::disks::mount(&self.pools, disk, started.idmap.is_none()) {
                Ok(Some(mount)) => match client.mount(&mount) {
                    Ok(()) => plugged.push(&disk.path),
                    Err(e) => failed.push(format!(
                        "cannot mount disk {:?} on {}: {e}",
                        disk.device,
                        disk.path.display()
                    )),
                },
                Ok(None) => {
                    tracing::info!(instance = %name, device = %disk.device, "disk source missing and not required: not hot-plugged")
                }
                Err(e) => failed.push(e.to_string()),
            }
        }
        if failed.is_empty() {
            return Ok(());
        }
        for path in plugged.iter().rev() {
            if let Err(e) = client.unmount(path) {
                tracing::warn!(instance = %name, path = %path.display(), error = %e, "cannot undo a disk hot-plug");
            }
        }
        for disk in unplugged.iter().rev() {
            let back = crate::disks::mount(&self.pools, disk, started.idmap.is_none()).and_then(|m| {
                m.map(|m| client.mount(&m).map_err(|e| ServiceError::Internal(e.to_string())))
                    .transpose()
            });
            if let Err(e) = back {
                tracing::warn!(instance = %name, device = %disk.device, error = %e, "cannot put back an unplugged disk");
            }
        }
        Err(ServiceError::BadRequest(failed.join("; ")))
    }

    /// Checks the NIC devices (their options, and that the networks they name exist) and the
    /// proxy devices.
    pub fn validate_nics(&self, devices: &Devices) -> Result<()> {
        for (dev, opts) in nic_devices(devices) {
            nics::validate(dev, opts).map_err(|e| ServiceError::BadRequest(e.to_string()))?;
            self.nic_kind(dev, opts)?;
        }
        for (dev, opts) in proxy_devices(devices) {
            crate::proxies::validate(dev, opts).map_err(ServiceError::BadRequest)?;
        }
        Ok(())
    }

    /// Moves a running instance's physical NICs back to the host (before it stops).
    fn release_physical_nics(&self, rec: &InstanceRecord) {
        let Runtime::Running(state) = self.runtime(&rec.name) else {
            return;
        };
        let Ok((config, devices)) = self.expand(rec) else {
            return;
        };
        let physical: Vec<_> = nic_devices(&devices)
            .filter(|(_, o)| o.get("nictype").is_some_and(|t| t == "physical"))
            .collect();
        if physical.is_empty() {
            return;
        }
        let Ok(netns) = corral_network::link::Netns::of_pid(state.init_pid) else {
            return;
        };
        for (dev, opts) in physical {
            let released = self
                .plan_nic(&rec.name, dev, opts, &config, &mut BTreeMap::new())
                .and_then(|plan| nics::unplug(&plan, &netns).map_err(ServiceError::Internal));
            if let Err(e) = released {
                tracing::warn!(instance = %rec.name, device = %dev, error = %e, "cannot move the NIC back to the host");
            }
        }
    }

    /// What a stopped instance leaves on the host goes: its proxy processes, its NICs' policers
    /// (its veths went with its network namespace).
    fn after_stop(&self, rec: &InstanceRecord) {
        crate::proxies::stop_all(&self.paths.run_dir(&rec.name));
        let Ok((config, devices)) = self.expand(rec) else {
            return;
        };
        for (dev, opts) in nic_devices(&devices) {
            if nics::rate_limits(opts).1.is_some() {
                if let Some(host_name) = config.get(&nics::host_name_key(dev)) {
                    nics::clear_limits(host_name);
                }
            }
        }
    }

    /// Starts the proxy processes of a running instance (those in `devices`).
    fn start_proxies(&self, rec: &InstanceRecord, devices: &Devices, init_pid: i32) -> Result<()> {
        let idmap = self.spec(rec)?.idmap;
        let run_dir = self.paths.run_dir(&rec.name);
        for (dev, opts) in proxy_devices(devices) {
            let config = crate::proxies::config_for(dev, opts, init_pid, idmap).map_err(ServiceError::BadRequest)?;
            crate::proxies::start(&self.monitor_exe, &run_dir, dev, &config).map_err(ServiceError::BadRequest)?;
        }
        Ok(())
    }

    /// How a NIC device attaches: through its managed network, or its own nictype and parent.
    fn nic_kind(&self, dev: &str, opts: &BTreeMap<String, String>) -> Result<nics::NicKind> {
        if let Some(n) = opts.get("network").filter(|n| !n.is_empty()) {
            let (net, _) = self.networks.get(n).map_err(|_| {
                ServiceError::BadRequest(format!(
                    "device {dev:?}: network {n:?} does not exist (see `corral network list`, or create it with `corral network create {n}`)"
                ))
            })?;
            return Ok(match net.kind.as_str() {
                "macvlan" => nics::NicKind::Macvlan {
                    parent: net.config.get("parent").cloned().unwrap_or_default(),
                },
                _ => nics::NicKind::Bridged { bridge: net.name },
            });
        }
        let parent = opts.get("parent").cloned().unwrap_or_default();
        Ok(match opts.get("nictype").map(String::as_str) {
            Some("macvlan") => nics::NicKind::Macvlan { parent },
            Some("p2p") => nics::NicKind::P2p,
            Some("physical") => nics::NicKind::Physical { parent },
            _ => nics::NicKind::Bridged { bridge: parent },
        })
    }

    /// Merges volatile keys into the instance's record (compare-and-swap, retried).
    fn set_volatile(&self, project: &str, name: &str, keys: BTreeMap<String, String>) -> Result<InstanceRecord> {
        for _ in 0..5 {
            let (mut rec, rev) = self.get(project, name)?;
            rec.config.extend(keys.clone());
            if let Ok(Ok(_)) = cas_json(&*self.store, &instance_key(project, name), Some(rev), &rec) {
                return Ok(rec);
            }
        }
        Err(ServiceError::Conflict(format!(
            "instance {name} kept changing; try again"
        )))
    }

    /// The static leases of `network`: every instance NIC on it with its MAC, fixed addresses
    /// and the instance's name (so DNS answers the instance's name whatever its DHCP client
    /// sends).
    pub fn static_leases(&self, project: &str, network: &str) -> Vec<corral_network::dnsmasq::StaticLease> {
        let (Ok(list), Ok(profiles)) = (self.list(project), self.profiles(project)) else {
            return Vec::new();
        };
        let mut leases = Vec::new();
        for rec in list {
            let Ok((config, devices)) = self.expand_with(&rec, &profiles) else {
                continue;
            };
            for (dev, opts) in nic_devices(&devices) {
                if nic_network(opts) != Some(network) {
                    continue;
                }
                let Some(mac) = nics::hwaddr(dev, opts, &config).and_then(|m| m.parse().ok()) else {
                    continue;
                };
                leases.push(corral_network::dnsmasq::StaticLease {
                    mac,
                    ipv4: opts.get("ipv4.address").and_then(|a| a.parse().ok()),
                    ipv6: opts.get("ipv6.address").and_then(|a| a.parse().ok()),
                    hostname: Some(rec.name.clone()),
                });
            }
        }
        leases
    }

    /// Rewrites the static leases of `network` from the instances (best effort: a failure
    /// only costs the fixed address until the next sync).
    pub fn sync_leases(&self, project: &str, network: &str) {
        if let Err(e) = self
            .networks
            .set_static_leases(network, &self.static_leases(project, network))
        {
            tracing::warn!(network, error = %e, "cannot update the static leases");
        }
    }

    /// The instances and profiles whose NICs use `network` (their API URLs).
    pub fn network_users(&self, project: &str, network: &str) -> Result<Vec<String>> {
        let profiles = self.profiles(project)?;
        let uses = |devices: &Devices| {
            devices.values().any(|o| {
                o.get("type").map(String::as_str) == Some("nic")
                    && (o.get("network").map(String::as_str) == Some(network)
                        || o.get("parent").map(String::as_str) == Some(network))
            })
        };
        let mut users: Vec<String> = profiles
            .values()
            .filter(|p| uses(&p.devices))
            .map(|p| format!("/1.0/profiles/{}", p.name))
            .collect();
        for rec in self.list(project)? {
            let (_, devices) = self.expand_with(&rec, &profiles)?;
            if uses(&devices) {
                users.push(format!("/1.0/instances/{}", rec.name));
            }
        }
        users.sort();
        Ok(users)
    }

    /// Records that the user stopped the instance, so that it stays stopped when the host
    /// comes back.
    fn mark_stopped(&self, project: &str, name: &str) {
        for _ in 0..5 {
            let Ok((mut rec, rev)) = self.get(project, name) else {
                return;
            };
            rec.config.insert(LAST_POWER.into(), "STOPPED".into());
            rec.config.remove(LAST_BOOT);
            if matches!(
                cas_json(&*self.store, &instance_key(project, name), Some(rev), &rec),
                Ok(Ok(_))
            ) {
                return;
            }
        }
    }

    /// Stops every running instance cleanly (each within its boot.host_shutdown_timeout, all
    /// at once), as on host shutdown: their last state stays RUNNING so that they start again
    /// when the host is back. The names of those that would not stop.
    pub fn stop_all_for_shutdown(&self, project: &str) -> Vec<String> {
        let Ok(list) = self.list(project) else {
            return Vec::new();
        };
        std::thread::scope(|scope| {
            let stops: Vec<_> = list
                .iter()
                .filter(|rec| matches!(self.runtime(&rec.name), Runtime::Running(_)))
                .map(|rec| {
                    (
                        rec.name.clone(),
                        scope.spawn(|| self.stop_keeping_state(project, &rec.name)),
                    )
                })
                .collect();
            stops
                .into_iter()
                .filter_map(|(name, t)| match t.join() {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => {
                        tracing::warn!(instance = %name, error = %e, "did not stop for the shutdown");
                        Some(name)
                    }
                    Err(_) => Some(name),
                })
                .collect()
        })
    }

    /// Stops the container: cleanly within `timeout` (None: the instance's
    /// boot.host_shutdown_timeout), or at once with `force`.
    pub fn stop(&self, project: &str, name: &str, timeout: Option<Duration>, force: bool) -> Result<()> {
        self.stop_inner(project, name, timeout, force)?;
        self.mark_stopped(project, name);
        if self.get(project, name).is_ok_and(|(rec, _)| rec.ephemeral) {
            self.delete(project, name)?;
        }
        Ok(())
    }

    /// Stops and starts again: not a stop as far as the last state and ephemeral instances
    /// are concerned.
    pub fn restart(&self, project: &str, name: &str, timeout: Option<Duration>, force: bool) -> Result<()> {
        self.stop_inner(project, name, timeout, force)?;
        self.start(project, name)
    }

    /// Stops without recording it as the user's choice (a restart, a restore, host shutdown).
    pub(crate) fn stop_keeping_state(&self, project: &str, name: &str) -> Result<()> {
        self.stop_inner(project, name, None, false)
    }

    fn stop_inner(&self, project: &str, name: &str, timeout: Option<Duration>, force: bool) -> Result<()> {
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
        self.release_physical_nics(&rec);
        self.running.expect_stop(name);
        let stopped = self.client(name).stop(timeout, force);
        self.running.stop_done(name, stopped.is_ok());
        self.after_stop(&rec);
        let outcome = stopped.map_err(|e| ServiceError::Internal(format!("Failed to stop {name}: {e}")))?;
        tracing::info!(instance = %name, clean = outcome.clean, "stopped");
        Ok(())
    }

    pub fn freeze(&self, name: &str, freeze: bool) -> Result<()> {
        let Runtime::Running(_) = self.runtime(name) else {
            return Err(ServiceError::BadRequest("The instance isn't running".into()));
        };
        let c = self.client(name);
        let r = if freeze { c.freeze() } else { c.thaw() };
        r.map_err(|e| ServiceError::Internal(e.to_string()))?;
        if let Ok(state) = c.state() {
            self.running.set_status(name, state.status);
        }
        Ok(())
    }

    /// Deletes a stopped instance: its record and its volume.
    pub fn delete(&self, project: &str, name: &str) -> Result<()> {
        let (rec, _) = self.get(project, name)?;
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
        self.delete_all_backups(project, name)?;
        self.delete_all_snapshots(project, name)?;
        self.pool_of(&rec)?.delete_instance(name)?;
        let _ = crate::storage::remove_tree(&self.paths.run_dir(name));
        self.store.delete(&instance_key(project, name))?;
        finish_intent(&*self.store, &intent)?;
        self.release_leases(project, &rec);
        Ok(())
    }

    /// After a delete: the instance's static and dynamic leases go from its networks.
    fn release_leases(&self, project: &str, rec: &InstanceRecord) {
        let Ok((config, devices)) = self.expand(rec) else {
            return;
        };
        for (dev, opts) in nic_devices(&devices) {
            let Some(network) = nic_network(opts) else { continue };
            let macs: Vec<corral_network::MacAddr> = nics::hwaddr(dev, opts, &config)
                .and_then(|m| m.parse().ok())
                .into_iter()
                .collect();
            let leases = self.static_leases(project, network);
            if let Err(e) = self.networks.release(network, &macs, &rec.name, &leases) {
                tracing::warn!(network = %network, instance = %rec.name, error = %e, "cannot release the leases");
            }
            self.sync_leases(project, network);
        }
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
        // The instance and its snapshots move together: volumes first (an intent lets a crash
        // be undone at start-up), then every record in one transaction.
        let snapshots = self.snapshots(project, name)?;
        let intent = record_intent(
            &*self.store,
            "instance-rename",
            serde_json::json!({ "project": project, "name": name, "new_name": new_name }),
        )?;
        // The pool renames the volume and its snapshots together.
        let pool = self.pool_of(&rec)?;
        let undo_volumes = || {
            let _ = pool.rename_instance(new_name, name);
        };
        if let Err(e) = pool.rename_instance(name, new_name).map_err(ServiceError::from) {
            undo_volumes();
            finish_intent(&*self.store, &intent)?;
            return Err(e);
        }
        rec.name = new_name.to_string();
        let mut compares = vec![
            corral_store::Compare::ModRevision(instance_key(project, name), rev),
            corral_store::Compare::Missing(instance_key(project, new_name)),
        ];
        let mut ops = vec![
            corral_store::Op::Delete(instance_key(project, name)),
            corral_store::Op::Put(instance_key(project, new_name), json_bytes(&rec)?),
        ];
        for snap in snapshots {
            let old_key = crate::snapshots::snapshot_key(project, name, &snap.name);
            compares.push(corral_store::Compare::Exists(old_key.clone()));
            ops.push(corral_store::Op::Delete(old_key));
            let key = crate::snapshots::snapshot_key(project, new_name, &snap.name);
            let moved = crate::snapshots::SnapshotRecord {
                instance: new_name.to_string(),
                ..snap
            };
            ops.push(corral_store::Op::Put(key, json_bytes(&moved)?));
        }
        ops.push(corral_store::Op::Delete(corral_store::intent_key(&intent)));
        let res = self.store.txn(&compares, &ops)?;
        if !res.succeeded {
            undo_volumes();
            finish_intent(&*self.store, &intent)?;
            return Err(ServiceError::Conflict(
                "the instance changed during the rename; try again".into(),
            ));
        }
        // As LXD: a template failing is logged, not a failed rename (the rename has happened).
        if let Err(e) = crate::templates::apply(&pool.instance_volume(new_name), &rec, "rename") {
            tracing::warn!(instance = new_name, error = %e, "rename templates");
        }
        Ok(())
    }

    /// Keeps an instance's root disk on the pool its volume is in: a change that would point it
    /// elsewhere (a profile's root disk taking over, say) gets the instance a root disk of its
    /// own naming that pool, as LXD pins it. Moving a volume is `copy --storage`, not an edit.
    fn pin_root_pool(&self, mut rec: InstanceRecord) -> Result<InstanceRecord> {
        let (_, expanded) = self.expand(&rec)?;
        let current = if rec.pool.is_empty() {
            DEFAULT_POOL
        } else {
            rec.pool.as_str()
        };
        let root = expanded.iter().find(|(_, d)| {
            d.get("type").map(String::as_str) == Some("disk") && d.get("path").map(String::as_str) == Some("/")
        });
        match root {
            Some((_, d)) if d.get("pool").map(String::as_str) == Some(current) => Ok(rec),
            Some((dev, d)) => {
                let mut pinned = d.clone();
                pinned.insert("pool".into(), current.to_string());
                rec.devices.insert(dev.clone(), pinned);
                Ok(rec)
            }
            None => Ok(rec),
        }
    }

    /// The pool holding an instance's root volume.
    pub fn pool_of(&self, rec: &InstanceRecord) -> Result<Pool> {
        self.pools
            .get(if rec.pool.is_empty() { DEFAULT_POOL } else { &rec.pool })
    }

    /// The pool holding the root volume of instance `name` (default project).
    pub fn volume_pool(&self, name: &str) -> Result<Pool> {
        let (rec, _) = self.get(DEFAULT_PROJECT, name)?;
        self.pool_of(&rec)
    }

    /// Makes the image ready to be cloned into `pool` (its volume, or a spare copy of it):
    /// unpacked from the stored image file, once (an unpack under way, such as the one an
    /// import starts in the background, is waited for). Without the file, a copy of its volume
    /// in another pool.
    fn ensure_image(&self, pool: &Pool, fp: &str) -> Result<()> {
        if self.paths.image_file(fp).exists() {
            return pool
                .ensure_image(fp, || crate::images::source_of(&self.paths, fp))
                .map_err(|e| match e {
                    crate::storage::StorageError::BadImage(_) => ServiceError::BadRequest(e.to_string()),
                    e => e.into(),
                });
        }
        if pool.has_image(fp) {
            return Ok(());
        }
        let source = self
            .pools
            .all()
            .into_iter()
            .find(|p| p.has_image(fp))
            .ok_or_else(|| ServiceError::Internal(format!("image {fp} is in no pool; import it again")))?;
        let from = source.image_volume(fp);
        pool.add_image(fp, |dir| {
            for e in std::fs::read_dir(&from).map_err(|e| e.to_string())?.flatten() {
                crate::storage::copy_tree(&e.path(), &dir.join(e.file_name())).map_err(|e| e.to_string())?;
            }
            Ok(())
        })?;
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
                    for pool in self.pools.all() {
                        pool.delete_all_snapshots(&name)?;
                        pool.delete_instance(&name)?;
                    }
                }
                // A rename whose records did not commit: move the volumes back.
                "instance-rename" if self.store.get(&instance_key(&project, &name))?.is_some() => {
                    let new_name = intent.data["new_name"].as_str().unwrap_or_default();
                    for pool in self.pools.all() {
                        if !new_name.is_empty() && pool.instance_volume(new_name).exists() {
                            tracing::info!(instance = %name, "undoing an interrupted rename");
                            pool.rename_instance(new_name, &name)?;
                        }
                    }
                }
                // A restore that did not finish (dir restores write in place): run it again.
                "snapshot-restore" if self.store.get(&instance_key(&project, &name))?.is_some() => {
                    let snapshot = intent.data["snapshot"].as_str().unwrap_or_default();
                    tracing::info!(instance = %name, snapshot, "finishing an interrupted restore");
                    if let Ok((rec, _)) = self.get(&project, &name) {
                        self.pool_of(&rec)?.restore_instance(&name, snapshot)?;
                    }
                }
                // A migration received half-way (its record commits last): remove a new
                // instance's volumes; a refreshed one keeps its record and volume.
                "migration-receive"
                    if self.store.get(&instance_key(&project, &name))?.is_none() && !name.is_empty() =>
                {
                    tracing::info!(instance = %name, "removing an interrupted migration");
                    for pool in self.pools.all() {
                        pool.delete_all_snapshots(&name)?;
                        pool.delete_instance(&name)?;
                    }
                }
                // A delete that did not finish: finish it.
                "instance-delete" if !name.is_empty() => {
                    tracing::info!(instance = %name, "finishing an interrupted delete");
                    for pool in self.pools.all() {
                        pool.delete_instance(&name)?;
                    }
                    self.store.delete(&instance_key(&project, &name))?;
                }
                _ => {}
            }
            finish_intent(&*self.store, &intent.id)?;
        }
        Ok(())
    }
}

/// The power state the user last gave the instance (`RUNNING`, `STOPPED`), as LXD keeps it.
pub const LAST_POWER: &str = "volatile.last_state.power";
/// The host boot during which it was last started.
pub const LAST_BOOT: &str = "volatile.last_state.boot_id";

/// This boot of the host (changes at every reboot).
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Whether the daemon starts a stopped instance when it starts: `boot.autostart=true`; or,
/// with `boot.autostart` unset, an instance that was running when the host went down (last
/// state RUNNING, started during another boot). One that stopped on its own during this boot
/// (a `poweroff` inside) stays stopped.
pub fn wants_autostart(config: &BTreeMap<String, String>, boot: &str) -> bool {
    match config.get("boot.autostart").filter(|v| !v.is_empty()) {
        Some(_) => config::flag(config, "boot.autostart"),
        None => {
            config.get(LAST_POWER).is_some_and(|p| p == "RUNNING") && config.get(LAST_BOOT).is_some_and(|b| b != boot)
        }
    }
}

/// A record as the store keeps it.
/// The network a NIC is on: its `network`, or the bridge or interface it names as `parent`
/// (`lxc init --network` names an unmanaged-looking bridge that way).
fn nic_network(opts: &BTreeMap<String, String>) -> Option<&str> {
    opts.get("network")
        .or_else(|| opts.get("parent"))
        .map(String::as_str)
        .filter(|n| !n.is_empty())
}

/// The root disk's `size`, if any.
fn root_size(devices: &Devices) -> Option<&String> {
    devices
        .values()
        .find(|d| d.get("type").map(String::as_str) == Some("disk") && d.get("path").map(String::as_str) == Some("/"))
        .and_then(|d| d.get("size"))
}

/// Limits the instance's root volume to its root disk's `size` (none: no limit), where the
/// pool's driver can.
fn apply_root_size(pool: &Pool, name: &str, devices: &Devices) -> Result<()> {
    let size = match root_size(devices) {
        Some(s) => {
            Some(config::parse_bytes(s).map_err(|e| ServiceError::BadRequest(format!("root disk size {s:?}: {e}")))?)
        }
        None => None,
    };
    if size.is_some() && !pool.driver.info().quotas {
        return Err(ServiceError::BadRequest(format!(
            "the root disk has a size, but pool {} ({}) cannot limit one: put the instance on a btrfs pool or remove size",
            pool.name,
            pool.driver.info().name
        )));
    }
    pool.driver
        .set_quota(&corral_storage::Vol::container(name), size)
        .map_err(|e| ServiceError::BadRequest(format!("cannot set the root disk size: {e}")))
}

/// An instance's expanded config and devices.
type Expanded = (BTreeMap<String, String>, Devices);

/// The proxy devices among `devices`.
fn proxy_devices(devices: &Devices) -> impl Iterator<Item = (&String, &BTreeMap<String, String>)> {
    devices
        .iter()
        .filter(|(_, o)| o.get("type").map(String::as_str) == Some("proxy"))
}

/// The NIC devices among `devices`.
fn nic_devices(devices: &Devices) -> impl Iterator<Item = (&String, &BTreeMap<String, String>)> {
    devices
        .iter()
        .filter(|(_, o)| o.get("type").map(String::as_str) == Some("nic"))
}

fn json_bytes<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| ServiceError::Internal(e.to_string()))
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

/// Profiles: create, update, rename, delete, and applying a change to the running instances
/// that use a profile. Renames and deletes check every instance record they depend on in the
/// same store transaction, so a concurrent change to an instance makes them retry, not lie.
impl Instances {
    /// A profile and its revision (the ETag).
    pub fn profile_with_rev(&self, project: &str, name: &str) -> Result<(ProfileRecord, i64)> {
        get_json::<ProfileRecord>(&*self.store, &profile_key(project, name))?
            .ok_or_else(|| ServiceError::NotFound(format!("Profile not found: {name}")))
    }

    /// The names of the instances of `project` that use profile `name`, sorted.
    pub fn profile_used_by(&self, project: &str, name: &str) -> Result<Vec<String>> {
        let mut names: Vec<String> = self
            .list(project)?
            .into_iter()
            .filter(|i| i.profiles.iter().any(|p| p == name))
            .map(|i| i.name)
            .collect();
        names.sort();
        Ok(names)
    }

    /// Creates a profile (409 if one has the name).
    pub fn create_profile(&self, project: &str, mut rec: ProfileRecord) -> Result<ProfileRecord> {
        validate_profile_name(&rec.name)?;
        rec.config.retain(|_, v| !v.is_empty());
        config::validate(&rec.config, false)?;
        self.validate_nics(&rec.devices)?;
        match cas_json(&*self.store, &profile_key(project, &rec.name), None, &rec)? {
            Ok(_) => Ok(rec),
            Err(_) => Err(ServiceError::Conflict(format!("Profile {:?} already exists", rec.name))),
        }
    }

    /// Replaces a profile's config, devices and description (PUT); `etag` is the revision the
    /// client read, if it sent If-Match. Running instances that use the profile get the new
    /// limits.
    pub fn update_profile(
        &self,
        project: &str,
        name: &str,
        new: ProfileRecord,
        etag: Option<i64>,
    ) -> Result<ProfileRecord> {
        self.modify_profile(project, name, etag, |_| Ok(new.clone()))
    }

    /// Read, `change`, write back: the profile `change` makes from the current one replaces it
    /// (PATCH merges this way). Without `etag`, a concurrent write makes it read again; with one,
    /// a revision other than `etag` is a 412.
    pub fn modify_profile(
        &self,
        project: &str,
        name: &str,
        etag: Option<i64>,
        change: impl Fn(&ProfileRecord) -> Result<ProfileRecord>,
    ) -> Result<ProfileRecord> {
        for _ in 0..10 {
            let (old, rev) = self.profile_with_rev(project, name)?;
            if etag.is_some_and(|tag| tag != rev) {
                return Err(ServiceError::PreconditionFailed(
                    "ETag doesn't match the profile's current state".into(),
                ));
            }
            let mut new = change(&old)?;
            // LXD: an empty value is no value.
            new.config.retain(|_, v| !v.is_empty());
            config::validate(&new.config, false)?;
            let updated = ProfileRecord {
                name: old.name,
                description: new.description,
                config: new.config,
                devices: new.devices,
            };
            self.validate_nics(&updated.devices)?;
            // Refuse what would leave an instance with limits that cannot be computed, before
            // any change: every instance using the profile, expanded with the new version.
            let mut profiles = self.profiles(project)?;
            // The running users' devices before the change, for hot-plug after it.
            let mut running_before = Vec::new();
            for inst in self
                .list(project)?
                .iter()
                .filter(|i| i.profiles.iter().any(|p| p == name))
            {
                if let Runtime::Running(_) = self.runtime(&inst.name) {
                    running_before.push((inst.clone(), self.expand_with(inst, &profiles)?));
                }
            }
            profiles.insert(updated.name.clone(), updated.clone());
            for (inst, _) in &running_before {
                self.validate_nics(&self.expand_with(inst, &profiles)?.1)?;
            }
            for inst in self
                .list(project)?
                .iter()
                .filter(|i| i.profiles.iter().any(|p| p == name))
            {
                let (config, _) = self.expand_with(inst, &profiles)?;
                config::limits(&config, host_memory()).map_err(|e| {
                    ServiceError::BadRequest(format!("the change does not suit instance {}: {e}", inst.name))
                })?;
            }
            if cas_json(&*self.store, &profile_key(project, name), Some(rev), &updated)?.is_ok() {
                self.apply_profile_change(project, name)?;
                for (inst, before) in running_before {
                    let after = self.expand(&inst)?;
                    self.hotplug(project, &inst.name, &before, &after).map_err(|e| {
                        ServiceError::BadRequest(format!("the profile changed, but not on instance {}: {e}", inst.name))
                    })?;
                }
                return Ok(updated);
            }
            if etag.is_some() {
                return Err(ServiceError::PreconditionFailed(
                    "ETag doesn't match the profile's current state".into(),
                ));
            }
        }
        Err(ServiceError::Conflict(
            "the profile kept changing during the update; try again".into(),
        ))
    }

    /// Applies the limits of the current profiles to every running instance of `project` that
    /// uses profile `name` (as [`Instances::update`] does for one instance). Every instance is
    /// tried; the error names those that failed.
    pub fn apply_profile_change(&self, project: &str, name: &str) -> Result<()> {
        let profiles = self.profiles(project)?;
        let mut failed = Vec::new();
        for inst in self
            .list(project)?
            .iter()
            .filter(|i| i.profiles.iter().any(|p| p == name))
        {
            let Runtime::Running(_) = self.runtime(&inst.name) else {
                continue;
            };
            let applied = self.expand_with(inst, &profiles).and_then(|(config, _)| {
                let limits = config::limits(&config, host_memory())?;
                let root =
                    corral_runtime::cgroup::CgroupRoot::detect().map_err(|e| ServiceError::Internal(e.to_string()))?;
                let cg = corral_runtime::cgroup::Cgroup::open(&root, &self.paths.cgroup_name(&inst.name))
                    .map_err(|e| ServiceError::Internal(e.to_string()))?;
                cg.set_limits(&limits)
                    .map_err(|e| ServiceError::BadRequest(e.to_string()))
            });
            if let Err(e) = applied {
                tracing::warn!(instance = %inst.name, profile = %name, error = %e, "cannot apply a profile change");
                failed.push(format!("{}: {e}", inst.name));
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(ServiceError::BadRequest(format!(
                "Profile {name:?} was updated, but applying it to running instances failed: {}",
                failed.join("; ")
            )))
        }
    }

    /// Renames a profile and, in the same transaction, every instance's reference to it.
    pub fn rename_profile(&self, project: &str, name: &str, new_name: &str) -> Result<()> {
        if name == "default" {
            return Err(ServiceError::BadRequest(
                "Renaming the default profile is not allowed".into(),
            ));
        }
        validate_profile_name(new_name)?;
        use corral_store::{Compare, Op};
        // A concurrent change to an instance fails the compares: read again and retry.
        for _ in 0..10 {
            let (mut rec, rev) = self.profile_with_rev(project, name)?;
            if self.store.get(&profile_key(project, new_name))?.is_some() {
                return Err(ServiceError::Conflict(format!("Name {new_name:?} already in use")));
            }
            rec.name = new_name.to_string();
            let mut compares = vec![
                Compare::ModRevision(profile_key(project, name), rev),
                Compare::Missing(profile_key(project, new_name)),
            ];
            let mut ops = vec![
                Op::Delete(profile_key(project, name)),
                Op::Put(profile_key(project, new_name), profile_json(&rec)?),
            ];
            for kv in self.store.list(&format!("/instances/{project}/"))? {
                let mut inst: InstanceRecord = serde_json::from_slice(&kv.value)
                    .map_err(|e| ServiceError::Internal(format!("corrupt record {}: {e}", kv.key)))?;
                if !inst.profiles.iter().any(|p| p == name) {
                    continue;
                }
                for p in inst.profiles.iter_mut().filter(|p| *p == name) {
                    *p = new_name.to_string();
                }
                compares.push(Compare::ModRevision(kv.key.clone(), kv.mod_revision));
                ops.push(Op::Put(kv.key, profile_json(&inst)?));
            }
            if self.store.txn(&compares, &ops)?.succeeded {
                return Ok(());
            }
        }
        Err(ServiceError::Conflict(
            "the profile or its instances kept changing during the rename; try again".into(),
        ))
    }

    /// Deletes a profile no instance uses.
    pub fn delete_profile(&self, project: &str, name: &str) -> Result<()> {
        if name == "default" {
            return Err(ServiceError::BadRequest(
                "The 'default' profile cannot be deleted".into(),
            ));
        }
        use corral_store::{Compare, Op};
        for _ in 0..10 {
            let (_, rev) = self.profile_with_rev(project, name)?;
            let mut compares = vec![Compare::ModRevision(profile_key(project, name), rev)];
            let mut users = Vec::new();
            for kv in self.store.list(&format!("/instances/{project}/"))? {
                let inst: InstanceRecord = serde_json::from_slice(&kv.value)
                    .map_err(|e| ServiceError::Internal(format!("corrupt record {}: {e}", kv.key)))?;
                if inst.profiles.iter().any(|p| p == name) {
                    users.push(inst.name);
                }
                compares.push(Compare::ModRevision(kv.key, kv.mod_revision));
            }
            if !users.is_empty() {
                users.sort();
                return Err(ServiceError::BadRequest(format!(
                    "Profile is currently in use by instance{} {}",
                    if users.len() == 1 { "" } else { "s" },
                    users.join(", ")
                )));
            }
            if self
                .store
                .txn(&compares, &[Op::Delete(profile_key(project, name))])?
                .succeeded
            {
                return Ok(());
            }
        }
        Err(ServiceError::Conflict(
            "the profile or its instances kept changing during the delete; try again".into(),
        ))
    }
}

/// LXD's profile name rules: not empty, no slash, not `.` or `..`.
pub fn validate_profile_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(ServiceError::BadRequest("No name provided".into()));
    }
    if name.contains('/') {
        return Err(ServiceError::BadRequest("Profile names may not contain slashes".into()));
    }
    if name == "." || name == ".." {
        return Err(ServiceError::BadRequest(format!("Invalid profile name {name:?}")));
    }
    Ok(())
}

/// A record as the JSON bytes the store holds (for transactions).
fn profile_json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| ServiceError::Internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn autostart_follows_the_flag_then_the_state_the_host_went_down_in() {
        let cfg = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        let ran_last_boot = [(LAST_POWER, "RUNNING"), (LAST_BOOT, "boot-1")];
        assert!(
            wants_autostart(&cfg(&ran_last_boot), "boot-2"),
            "running when the host went down"
        );
        assert!(
            !wants_autostart(&cfg(&ran_last_boot), "boot-1"),
            "stopped by itself this boot"
        );
        assert!(!wants_autostart(&cfg(&[(LAST_POWER, "STOPPED")]), "boot-2"));
        let mut forced_off = cfg(&ran_last_boot);
        forced_off.insert("boot.autostart".into(), "false".into());
        assert!(!wants_autostart(&forced_off, "boot-2"), "boot.autostart=false wins");
        assert!(wants_autostart(&cfg(&[("boot.autostart", "true")]), "boot-1"));
        assert!(!wants_autostart(&cfg(&[]), "boot-1"));
    }
}
