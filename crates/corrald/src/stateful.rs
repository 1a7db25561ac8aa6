//! Stateful stop and start (CRIU, through `corral_runtime::checkpoint`), and the state of
//! stateful snapshots, as LXD users know them: `lxc stop --stateful` checkpoints a running
//! container and stops it, `lxc start` restores it, `lxc snapshot --stateful` checkpoints it
//! while it keeps running, `lxc restore --stateful` brings a snapshot back running.
//!
//! **Where the state is.** In the instance's own volume, beside `rootfs/`, as LXD keeps it:
//! `<pool>/containers/<name>/state/` (CRIU's images, `corral-checkpoint.json`, and
//! `corral-network.json`, the addresses the container had). A snapshot of the volume carries
//! it (`<pool>/containers-snapshots/<name>/<snap>/state/`), and so would a copy, a move or a
//! backup of the volume. The record's `stateful` says whether the instance has a stop state.
//!
//! **Nothing half-done.** A dump that fails leaves the container running and no state; a
//! restore that fails leaves the instance stopped with its state kept (retry with `start`, or
//! discard it with a stateless start). CRIU's logs are copied to the run directory
//! (`criu-dump.log`, `criu-restore.log`), served as the instance's logs.
//!
//! **Network.** The runtime dumps the network namespace empty and the monitor plugs the NIC
//! plan again before the processes resume (same MAC, same host-side name, same bridge). What a
//! DHCP client had configured inside is not in the plan: the IPv4 addresses and the default
//! IPv4 route seen at dump time are saved and set again right after the restore (IPv6 SLAAC
//! addresses come back from the router advertisements). Established TCP connections are
//! checkpointed (`--tcp-established`, as LXC always asks) and restored once the addresses are
//! back (the NIC plan's hook sets the saved ones before the processes resume): a connection
//! between two processes of the container, or to a peer that waited meanwhile, goes on. A peer
//! elsewhere that sent something while the container was stopped resets it, as after any
//! pause that long. A restore whose sockets cannot be bound again (an address that is gone,
//! such as an IPv6 SLAAC one on another network) fails with criu's reason and keeps the state.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Instant;

use chrono::Utc;
use corral_runtime::checkpoint::{self, CheckpointError, DumpOptions};
use corral_runtime::spec::MountKind;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{
    boot_id, instance_key, nic_devices, InstanceRecord, Instances, Result, Runtime, ServiceError, LAST_BOOT, LAST_POWER,
};

/// The state directory's name inside an instance's (or snapshot's) volume.
pub const STATE_DIR: &str = "state";
/// Beside CRIU's images: the container's addresses at dump time.
const NETWORK_FILE: &str = "corral-network.json";
/// In the run directory: the last dump's and restore's CRIU logs (the instance's logs).
pub const DUMP_LOG: &str = "criu-dump.log";
pub const RESTORE_LOG: &str = "criu-restore.log";

/// What the container's network looked like inside, for after the restore.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct SavedNetwork {
    /// Interface → its IPv4 addresses (`10.0.0.5/24`).
    addresses: BTreeMap<String, Vec<String>>,
    gateway4: Option<Ipv4Addr>,
}

/// The start a client asked for: `stateful` absent (restore if there is a state), true (restore;
/// an error without state) or false (discard any state and boot, `lxc start --stateless`).
pub fn stateful_in_body(body: &[u8]) -> Option<bool> {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()?
        .get("stateful")?
        .as_bool()
}

fn criu_error(name: &str, what: &str, e: CheckpointError, log_name: &str, log_kept: bool) -> ServiceError {
    let hint = if log_kept {
        format!(" (criu's log: /1.0/instances/{name}/logs/{log_name}, `corral info {name} --show-log`)")
    } else {
        String::new()
    };
    match e {
        CheckpointError::NoCriu(_) | CheckpointError::NoSoftDirty => ServiceError::BadRequest(e.to_string()),
        CheckpointError::Refused { reason, .. } => {
            ServiceError::BadRequest(format!("Cannot {what} {name} statefully: {reason}"))
        }
        CheckpointError::NotRunning(_) => ServiceError::BadRequest("The instance isn't running".into()),
        CheckpointError::AlreadyRunning(_) => ServiceError::BadRequest("The instance is already running".into()),
        CheckpointError::Criu { action, errors, .. } => {
            // A socket (TCP connection or listener) bound to an address the restored
            // container no longer has.
            let why = if errors.contains("Can't bind inet socket") {
                " (a socket of the container is bound to an address it no longer has: its NIC, network or \
                 address changed since the checkpoint; put it back, or discard the state with a stateless start)"
            } else {
                ""
            };
            ServiceError::Internal(format!(
                "Failed to {what} {name}: criu {action} failed: {errors}{why}{hint}"
            ))
        }
        other => ServiceError::Internal(format!("Failed to {what} {name}: {other}{hint}")),
    }
}

impl Instances {
    /// The stop state of an instance: `<instance volume>/state`.
    pub fn state_dir(&self, rec: &InstanceRecord) -> Result<PathBuf> {
        Ok(self.pool_of(rec)?.instance_volume(&rec.name).join(STATE_DIR))
    }

    /// Whether a snapshot's volume holds a state (it was taken with `stateful`).
    pub fn snapshot_has_state(&self, instance: &str, snapshot: &str) -> bool {
        self.snapshot_volume(instance, snapshot)
            .join(STATE_DIR)
            .join(checkpoint::METADATA)
            .is_file()
    }

    /// Refusals the daemon knows before CRIU is asked (CRIU's own come with its reasons).
    fn check_dumpable(&self, rec: &InstanceRecord, what: &str) -> Result<()> {
        let Runtime::Running(state) = self.runtime(&rec.name) else {
            return Err(ServiceError::BadRequest("The instance isn't running".into()));
        };
        if !matches!(state.status, corral_runtime::proto::Status::Running) {
            return Err(ServiceError::BadRequest(format!(
                "Cannot {what} {} statefully: it is {:?}; unfreeze it first",
                rec.name, state.status
            )));
        }
        checkpoint::criu_binary().map_err(|e| ServiceError::BadRequest(e.to_string()))?;
        let (_, devices) = self.expand(rec)?;
        if let Some((dev, _)) = nic_devices(&devices).find(|(_, o)| o.get("nictype").is_some_and(|t| t == "physical")) {
            return Err(ServiceError::BadRequest(format!(
                "Cannot {what} {} statefully: NIC {dev:?} is a physical interface, which a checkpoint cannot carry",
                rec.name
            )));
        }
        Ok(())
    }

    /// Dumps the running container into `dir` (stopping it unless `leave_running`), saving its
    /// addresses beside. On failure `dir` is gone and the container runs on.
    fn dump_into(&self, rec: &InstanceRecord, dir: &Path, leave_running: bool, what: &str) -> Result<()> {
        let name = &rec.name;
        let run_dir = self.paths.run_dir(name);
        let network = self.runtime_init_pid(name).map(save_network).unwrap_or_default();
        let _ = crate::storage::remove_tree(dir);
        let opts = DumpOptions {
            leave_running,
            tcp_established: true,
            ..Default::default()
        };
        let began = Instant::now();
        if !leave_running {
            self.running.expect_stop(name);
        }
        let dumped = checkpoint::dump(&run_dir, dir, &opts);
        let log_kept = std::fs::copy(dir.join(checkpoint::DUMP_LOG), run_dir.join(DUMP_LOG)).is_ok();
        if !leave_running {
            // A failed dump leaves the container running (and in the running set).
            self.running.stop_done(name, dumped.is_ok());
        }
        match dumped {
            Ok(report) => {
                let stats = checkpoint_stats_dump(dir);
                tracing::info!(instance = %name, criu = ?report.criu_time, total = ?began.elapsed(), leave_running, %stats, "checkpointed");
                if let Ok(data) = serde_json::to_vec_pretty(&network) {
                    let _ = std::fs::write(dir.join(NETWORK_FILE), data);
                }
                Ok(())
            }
            Err(e) => {
                let _ = crate::storage::remove_tree(dir);
                tracing::warn!(instance = %name, error = %e, "checkpoint failed");
                Err(criu_error(name, what, e, DUMP_LOG, log_kept))
            }
        }
    }

    fn runtime_init_pid(&self, name: &str) -> Option<i32> {
        match self.runtime(name) {
            Runtime::Running(s) => Some(s.init_pid),
            Runtime::Stopped => None,
        }
    }

    /// `stop` with `stateful`: checkpoints the running container into its state directory and
    /// stops it; the instance is then `stateful` and the next start restores it.
    pub fn stop_stateful(&self, project: &str, name: &str) -> Result<()> {
        let began = Instant::now();
        let rec = self.checkpoint_to_stop(project, name)?;
        self.mark_stopped_stateful(project, &rec)?;
        tracing::info!(instance = %name, took = ?began.elapsed(), "stopped statefully");
        Ok(())
    }

    /// [`Instances::stop_stateful`]'s checkpoint: when this returns the container is stopped
    /// and its state written; [`Instances::mark_stopped_stateful`] must follow (a live move
    /// does it while the state travels).
    pub(crate) fn checkpoint_to_stop(&self, project: &str, name: &str) -> Result<InstanceRecord> {
        let (rec, _) = self.get(project, name)?;
        self.check_dumpable(&rec, "stop")?;
        if rec.ephemeral {
            return Err(ServiceError::BadRequest(
                "Cannot stop an ephemeral instance statefully: it is deleted when it stops".into(),
            ));
        }
        let dir = self.state_dir(&rec)?;
        self.dump_into(&rec, &dir, false, "stop")?;
        Ok(rec)
    }

    /// The rest of a stateful stop: the stopped instance's devices, and the record (stateful,
    /// stopped), by which the next start restores the state.
    pub(crate) fn mark_stopped_stateful(&self, project: &str, rec: &InstanceRecord) -> Result<()> {
        self.after_stop(rec);
        self.set_stateful(project, &rec.name, true, Some("STOPPED"))
    }

    /// Post-copy's stop: as [`Instances::stop_stateful`], but the memory stays with criu, which
    /// serves it on `pages` (see `checkpoint::dump_lazy`). The container is frozen when this
    /// returns; [`Instances::end_lazy_stop`] then stops it or lets it run on.
    pub fn begin_lazy_stop(
        &self,
        project: &str,
        name: &str,
        pages: &std::os::fd::OwnedFd,
    ) -> Result<checkpoint::LazyDump> {
        let (rec, _) = self.get(project, name)?;
        self.check_dumpable(&rec, "move")?;
        if rec.ephemeral {
            return Err(ServiceError::BadRequest(
                "Cannot move an ephemeral instance live: it is deleted when it stops".into(),
            ));
        }
        let dir = self.state_dir(&rec)?;
        let run_dir = self.paths.run_dir(name);
        let network = self.runtime_init_pid(name).map(save_network).unwrap_or_default();
        let _ = crate::storage::remove_tree(&dir);
        let opts = DumpOptions {
            tcp_established: true,
            ..Default::default()
        };
        self.running.expect_stop(name);
        let dumped = checkpoint::dump_lazy(&run_dir, &dir, &opts, pages);
        let log_kept = std::fs::copy(dir.join(checkpoint::DUMP_LOG), run_dir.join(DUMP_LOG)).is_ok();
        match dumped {
            Ok(lazy) => {
                if let Ok(data) = serde_json::to_vec_pretty(&network) {
                    let _ = std::fs::write(dir.join(NETWORK_FILE), data);
                }
                Ok(lazy)
            }
            Err(e) => {
                self.running.stop_done(name, false);
                let _ = crate::storage::remove_tree(&dir);
                tracing::warn!(instance = %name, error = %e, "lazy checkpoint failed");
                Err(criu_error(name, "move", e, DUMP_LOG, log_kept))
            }
        }
    }

    /// The end of a lazy stop: `moved`, criu has served the memory and the container is
    /// stopped with its state (as after `stop_stateful`); otherwise (the page stream made to
    /// fail first) it runs on here and the state goes.
    pub fn end_lazy_stop(&self, project: &str, name: &str, lazy: checkpoint::LazyDump, moved: bool) -> Result<()> {
        let (rec, _) = self.get(project, name)?;
        let dir = self.state_dir(&rec)?;
        if !moved {
            lazy.abort();
            self.running.stop_done(name, false);
            let _ = crate::storage::remove_tree(&dir);
            return Ok(());
        }
        let finished = lazy.finish();
        let _ = std::fs::copy(dir.join(checkpoint::DUMP_LOG), self.paths.run_dir(name).join(DUMP_LOG));
        self.running.stop_done(name, finished.is_ok());
        finished.map_err(|e| criu_error(name, "move", e, DUMP_LOG, true))?;
        self.after_stop(&rec);
        self.set_stateful(project, name, true, Some("STOPPED"))
    }

    /// Writes the stateful flag (and the last power state) into the record.
    fn set_stateful(&self, project: &str, name: &str, stateful: bool, power: Option<&str>) -> Result<()> {
        for _ in 0..5 {
            let (mut rec, rev) = self.get(project, name)?;
            rec.stateful = stateful;
            match power {
                Some("RUNNING") => {
                    rec.last_used_at = Some(Utc::now());
                    rec.config.insert(LAST_POWER.into(), "RUNNING".into());
                    rec.config.insert(LAST_BOOT.into(), boot_id());
                }
                Some(p) => {
                    rec.config.insert(LAST_POWER.into(), p.into());
                    rec.config.remove(LAST_BOOT);
                }
                None => {}
            }
            if let Ok(Ok(_)) = corral_store::cas_json(&*self.store, &instance_key(project, name), Some(rev), &rec) {
                return Ok(());
            }
        }
        Err(ServiceError::Conflict(format!(
            "instance {name} kept changing; try again"
        )))
    }

    /// Drops an instance's stop state (a stateless start, a stateless restore).
    pub fn discard_state(&self, project: &str, name: &str) -> Result<()> {
        let (rec, _) = self.get(project, name)?;
        let dir = self.state_dir(&rec)?;
        if dir.exists() {
            crate::storage::remove_tree(&dir)
                .map_err(|e| ServiceError::Internal(format!("cannot remove {}: {e}", dir.display())))?;
        }
        if rec.stateful {
            self.set_stateful(project, name, false, None)?;
            tracing::info!(instance = %name, "state discarded");
        }
        Ok(())
    }

    /// `start` as asked through the API: see [`stateful_in_body`].
    pub fn start_requested(&self, project: &str, name: &str, stateful: Option<bool>) -> Result<()> {
        let (rec, _) = self.get(project, name)?;
        if let Runtime::Running(_) = self.runtime(name) {
            return Err(ServiceError::BadRequest("The instance is already running".into()));
        }
        match stateful {
            Some(true) if !rec.stateful => Err(ServiceError::BadRequest(format!(
                "Instance {name} has no existing state to restore"
            ))),
            Some(false) if rec.stateful => {
                self.discard_state(project, name)?;
                self.start(project, name)
            }
            _ => self.start(project, name),
        }
    }

    /// Restores the instance from its stop state (what `start` does for a stateful instance):
    /// the container runs again with its memory, its PID 1, its NICs (same MACs) and its
    /// addresses, and the state is removed. On failure it stays stopped, its state kept.
    pub(super) fn start_from_state(&self, project: &str, rec: InstanceRecord) -> Result<()> {
        let name = rec.name.clone();
        let dir = self.state_dir(&rec)?;
        let meta = checkpoint::read_metadata(&dir).map_err(|e| {
            ServiceError::BadRequest(format!(
                "{e}; discard the state with a stateless start (`corral start --stateless {name}`)"
            ))
        })?;
        let began = Instant::now();
        let spec = self.spec(&rec)?;
        // The disk binds CRIU recorded must be those the instance has now.
        let binds = |mounts: &[corral_runtime::spec::Mount]| -> Vec<PathBuf> {
            mounts
                .iter()
                .filter(|m| matches!(m.kind, MountKind::MonitorBind { .. }))
                .map(|m| m.target.clone())
                .collect()
        };
        if binds(&spec.mounts) != binds(&meta.spec.mounts) {
            return Err(ServiceError::BadRequest(format!(
                "Cannot restore {name}: its disk devices changed since the checkpoint; put them back, or discard the state with `corral start --stateless {name}`"
            )));
        }
        let _quiet = self.pool_of(&rec)?.hold_background();
        let rec = self.prepare_nics(project, rec, &spec.run_dir)?;
        let run_dir = spec.run_dir.clone();
        let _ = std::fs::remove_file(run_dir.join(RESTORE_LOG));
        // The addresses go in with the NICs, before the processes resume (nics.rs).
        let readdress = run_dir.join(crate::nics::RESTORE_ADDRESSES);
        let _ = std::fs::copy(dir.join(NETWORK_FILE), &readdress);
        let prepared = began.elapsed();
        let restored = checkpoint::restore(&self.monitor_exe, &spec, &dir);
        let _ = std::fs::remove_file(&readdress);
        let monitor = began.elapsed() - prepared;
        let log_kept = std::fs::copy(dir.join(checkpoint::RESTORE_LOG), run_dir.join(RESTORE_LOG)).is_ok();
        let client = restored.map_err(|e| {
            tracing::warn!(instance = %name, error = %e, "restore failed; the state is kept");
            criu_error(&name, "restore", e, RESTORE_LOG, log_kept)
        })?;
        let state = client
            .state()
            .map_err(|e| ServiceError::Internal(format!("{name} was restored but its monitor does not answer: {e}")))?;
        let init_pid = state.init_pid;
        self.running.insert(&name, state);
        restore_network(&dir, init_pid, &name);
        let (_, devices) = self.expand(&rec)?;
        if let Err(e) = self.start_proxies(&rec, &devices, init_pid) {
            tracing::warn!(instance = %name, error = %e, "proxy devices after the restore");
        }
        let stats = checkpoint_stats_restore(&dir);
        if let Err(e) = crate::storage::remove_tree(&dir) {
            tracing::warn!(instance = %name, error = %e, "cannot remove the restored state");
        }
        self.set_stateful(project, &name, false, Some("RUNNING"))?;
        tracing::info!(instance = %name, took = ?began.elapsed(), ?prepared, ?monitor, after = ?(began.elapsed() - prepared - monitor), %stats, "restored from its state");
        Ok(())
    }

    /// Checkpoints a running instance into `<volume>/state` and leaves it running: the state
    /// of a stateful snapshot, taken just before the volume is snapshotted. The caller removes
    /// it from the instance's volume once the snapshot has it.
    pub(crate) fn dump_for_snapshot(&self, project: &str, name: &str) -> Result<PathBuf> {
        let (rec, _) = self.get(project, name)?;
        self.check_dumpable(&rec, "snapshot")?;
        let dir = self.state_dir(&rec)?;
        self.dump_into(&rec, &dir, true, "snapshot")?;
        Ok(dir)
    }
}

/// CRIU's own account of a dump in `dir` (stats-dump), for the log: `-` if it wrote none.
fn checkpoint_stats_dump(dir: &Path) -> String {
    match corral_runtime::criu_stats::read_dump(dir) {
        Some(s) => format!(
            "criu_freezing={:?} criu_frozen={:?} criu_memdump={:?} criu_memwrite={:?} pages_written={} pages_lazy={}",
            s.freezing, s.frozen, s.memdump, s.memwrite, s.pages_written, s.pages_lazy
        ),
        None => "-".into(),
    }
}

/// CRIU's own account of a restore from `dir` (stats-restore), for the log.
fn checkpoint_stats_restore(dir: &Path) -> String {
    match corral_runtime::criu_stats::read_restore(dir) {
        Some(s) => format!(
            "criu_forking={:?} criu_restore={:?} pages_restored={}",
            s.forking, s.restore, s.pages_restored
        ),
        None => "-".into(),
    }
}

/// The IPv4 addresses and default route inside the container (from its init's namespace).
fn save_network(init_pid: i32) -> SavedNetwork {
    let mut saved = SavedNetwork::default();
    let Ok(netns) = corral_network::link::Netns::of_pid(init_pid) else {
        return saved;
    };
    let listed = netns.netlink(|nl| {
        let mut out = BTreeMap::new();
        for link in nl.list_links()? {
            if link.name == "lo" {
                continue;
            }
            let v4: Vec<String> = nl
                .addresses(&link.name)?
                .into_iter()
                .filter(|a| a.addr().is_ipv4())
                .map(|a| a.to_string())
                .collect();
            if !v4.is_empty() {
                out.insert(link.name.clone(), v4);
            }
        }
        Ok(out)
    });
    match listed {
        Ok(a) => saved.addresses = a,
        Err(e) => tracing::warn!(init_pid, error = %e, "cannot read the container's addresses"),
    }
    saved.gateway4 = std::fs::read_to_string(format!("/proc/{init_pid}/net/route"))
        .ok()
        .and_then(|t| default_gateway(&t));
    saved
}

/// The default IPv4 gateway in a `/proc/net/route` table.
fn default_gateway(table: &str) -> Option<Ipv4Addr> {
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 3 || f[1] != "00000000" {
            return None;
        }
        let gw = u32::from_str_radix(f[2], 16).ok().filter(|g| *g != 0)?;
        Some(Ipv4Addr::from(gw.to_le_bytes()))
    })
}

/// Sets the saved addresses and route again in the restored container (best effort: a
/// container without them is still restored; its DHCP client may set them again).
fn restore_network(dir: &Path, init_pid: i32, name: &str) {
    let Ok(raw) = std::fs::read(dir.join(NETWORK_FILE)) else {
        return;
    };
    let Ok(saved) = serde_json::from_slice::<SavedNetwork>(&raw) else {
        return;
    };
    if saved.addresses.is_empty() {
        return;
    }
    let Ok(netns) = corral_network::link::Netns::of_pid(init_pid) else {
        return;
    };
    let done = netns.netlink(|nl| {
        for (iface, addrs) in &saved.addresses {
            let present = nl.addresses(iface).unwrap_or_default();
            let wanted = addrs.iter().filter_map(|a| a.parse::<IpNet>().ok());
            for a in wanted.filter(|a| !present.contains(a)) {
                if let Err(e) = nl.add_address(iface, a) {
                    tracing::warn!(instance = %name, interface = %iface, error = %e, "cannot set the address again");
                }
            }
        }
        if let Some(gw) = saved.gateway4 {
            // EEXIST when the plan already routes.
            let _ = nl.add_default_route(IpAddr::V4(gw));
        }
        Ok(())
    });
    if let Err(e) = done {
        tracing::warn!(instance = %name, error = %e, "cannot set the addresses again");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_gateway_is_read_from_proc_net_route() {
        let table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth0\t00000000\t01085FAC\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                     eth0\t00085FAC\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(default_gateway(table), Some(Ipv4Addr::new(172, 95, 8, 1)));
        assert_eq!(default_gateway("Iface\tDestination\tGateway\n"), None);
    }

    #[test]
    fn a_restore_that_cannot_bind_a_socket_says_why() {
        let e = CheckpointError::Criu {
            action: "restore",
            errors: "Error (criu/sk-inet.c:860): Can't bind inet socket (id 17): Cannot assign requested address"
                .into(),
            log: PathBuf::from("/x/restore.log"),
        };
        let msg = criu_error("c1", "restore", e, RESTORE_LOG, true).to_string();
        assert!(msg.contains("bound to an address it no longer has"), "{msg}");
        assert!(msg.contains("criu-restore.log"), "{msg}");
    }

    #[test]
    fn the_start_request_says_whether_it_asked_for_the_state() {
        assert_eq!(stateful_in_body(br#"{"action":"start"}"#), None);
        assert_eq!(stateful_in_body(br#"{"action":"start","stateful":false}"#), Some(false));
        assert_eq!(stateful_in_body(br#"{"action":"start","stateful":true}"#), Some(true));
        assert_eq!(stateful_in_body(br#"{"action":"start","stateful":null}"#), None);
    }
}
