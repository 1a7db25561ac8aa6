//! Instances: `/1.0/instances/...`, their state, exec, console, snapshots and backups (LXD's
//! `instance.go`, `instance_state.go`, `instance_exec.go`, `instance_console.go`,
//! `instance_snapshot.go`, `instance_backup.go`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::status::StatusCode;
use crate::time::Timestamp;
use crate::wire::{is_false, nullable};
use crate::{Config, Devices};

/// The kind of an instance (`type` in JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum InstanceType {
    /// `""`: unspecified (in a creation request: let the server choose, a container).
    #[default]
    #[serde(rename = "")]
    Any,
    /// `"container"`.
    #[serde(rename = "container")]
    Container,
    /// `"virtual-machine"`.
    #[serde(rename = "virtual-machine")]
    VirtualMachine,
}

impl InstanceType {
    /// The wire name: `""`, `"container"` or `"virtual-machine"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Any => "",
            Self::Container => "container",
            Self::VirtualMachine => "virtual-machine",
        }
    }
}

/// Values of [`InstanceSource::kind`].
pub mod source_type {
    /// Create from an image.
    pub const IMAGE: &str = "image";
    /// Create empty.
    pub const NONE: &str = "none";
    /// Copy a local instance (or snapshot) named by `source`.
    pub const COPY: &str = "copy";
    /// Migrate from another server.
    pub const MIGRATION: &str = "migration";
}

/// Values of [`InstanceStatePut::action`].
pub mod state_action {
    pub const START: &str = "start";
    pub const STOP: &str = "stop";
    pub const RESTART: &str = "restart";
    pub const FREEZE: &str = "freeze";
    pub const UNFREEZE: &str = "unfreeze";
}

/// Values of [`InstanceExecControl::command`] (and [`InstanceConsoleControl::command`]).
pub mod exec_control {
    /// Resize the terminal: `args` has `"width"` and `"height"`, as strings.
    pub const WINDOW_RESIZE: &str = "window-resize";
    /// Send the signal `signal` to the command.
    pub const SIGNAL: &str = "signal";
}

/// An instance's writable fields: the body of `PUT /1.0/instances/<name>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct InstancePut {
    /// `"x86_64"`; `""` to let the server choose.
    #[serde(deserialize_with = "nullable")]
    pub architecture: String,
    /// Instance options (`"limits.memory": "1GiB"`).
    #[serde(deserialize_with = "nullable")]
    pub config: Config,
    /// The instance's own devices (not those of its profiles).
    #[serde(deserialize_with = "nullable")]
    pub devices: Devices,
    /// Whether the instance is deleted when it stops.
    #[serde(deserialize_with = "nullable")]
    pub ephemeral: bool,
    /// The profiles, applied in order. `None` (`null`, or absent: pylxd's `{"restore": ...}`
    /// has none) is kept apart from `Some([])` (no profile), as Go keeps nil and empty apart.
    pub profiles: Option<Vec<String>>,
    /// The name of a snapshot to restore (`{"restore": "snap0"}`); nothing else is changed then.
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "nullable")]
    pub restore: String,
    /// Whether the instance's state (memory) is kept on stop.
    #[serde(deserialize_with = "nullable")]
    pub stateful: bool,
    #[serde(deserialize_with = "nullable")]
    pub description: String,
}

/// An instance, as `GET /1.0/instances/<name>` (and `?recursion=1`) returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Instance {
    /// `"x86_64"`, `"aarch64"`...
    #[serde(deserialize_with = "nullable")]
    pub architecture: String,
    /// The instance's own options (not those of its profiles).
    #[serde(deserialize_with = "nullable")]
    pub config: Config,
    /// The instance's own devices (not those of its profiles).
    #[serde(deserialize_with = "nullable")]
    pub devices: Devices,
    #[serde(deserialize_with = "nullable")]
    pub ephemeral: bool,
    #[serde(deserialize_with = "nullable")]
    pub profiles: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    pub stateful: bool,
    #[serde(deserialize_with = "nullable")]
    pub description: String,
    #[serde(deserialize_with = "nullable")]
    pub created_at: Timestamp,
    /// `config` with the profiles' options applied under it.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "nullable")]
    pub expanded_config: Config,
    /// `devices` with the profiles' devices applied under it.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "nullable")]
    pub expanded_devices: Devices,
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    /// The name of `status_code` (`"Running"`, `"Stopped"`, `"Frozen"`, `"Error"`).
    #[serde(deserialize_with = "nullable")]
    pub status: String,
    #[serde(deserialize_with = "nullable")]
    pub status_code: StatusCode,
    /// The last start; zero time if never started.
    #[serde(deserialize_with = "nullable")]
    pub last_used_at: Timestamp,
    /// The cluster member it is on; `"none"` when not clustered.
    #[serde(deserialize_with = "nullable")]
    pub location: String,
    /// Container or virtual machine.
    #[serde(rename = "type", deserialize_with = "nullable")]
    pub kind: InstanceType,
    #[serde(deserialize_with = "nullable")]
    pub project: String,
}

/// An instance with its state, snapshots and backups: what `GET /1.0/instances?recursion=2`
/// lists (`lxc list` asks for it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct InstanceFull {
    /// The instance itself; its fields are at the top level of the JSON object.
    #[serde(flatten)]
    pub instance: Instance,
    #[serde(deserialize_with = "nullable")]
    pub backups: Vec<InstanceBackup>,
    /// `null` when the state couldn't be read.
    pub state: Option<InstanceState>,
    #[serde(deserialize_with = "nullable")]
    pub snapshots: Vec<InstanceSnapshot>,
}

/// The body of `POST /1.0/instances`: create an instance.
///
/// Its first fields are those of [`InstancePut`] (Go embeds it), at the top level of the JSON
/// object like the rest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct InstancesPost {
    /// `"x86_64"`; `""` for the image's (or the host's).
    #[serde(deserialize_with = "nullable")]
    pub architecture: String,
    /// Instance options (`"limits.memory": "1GiB"`).
    #[serde(deserialize_with = "nullable")]
    pub config: Config,
    /// The instance's own devices (added to, or overriding, its profiles').
    #[serde(deserialize_with = "nullable")]
    pub devices: Devices,
    /// Delete the instance when it stops.
    #[serde(deserialize_with = "nullable")]
    pub ephemeral: bool,
    /// The profiles, applied in order. `None` (`null`, or absent) means "the default profile"
    /// (what `lxc launch` without `-p` sends: `"profiles":null`); `Some([])` means "no profile"
    /// (`lxc launch --no-profiles`).
    pub profiles: Option<Vec<String>>,
    #[serde(deserialize_with = "nullable")]
    pub stateful: bool,
    #[serde(deserialize_with = "nullable")]
    pub description: String,
    /// The new instance's name; `""` to let the server pick one.
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    /// Where its root file system comes from.
    #[serde(deserialize_with = "nullable")]
    pub source: InstanceSource,
    /// A cloud instance type (`"t2.micro"`, `"c2-m4"`) to derive limits from; `""` for none.
    /// Not the container/VM kind, which is `type` ([`InstancesPost::kind`]).
    #[serde(deserialize_with = "nullable")]
    pub instance_type: String,
    /// Container or virtual machine; `""` ([`InstanceType::Any`]) for the server's choice.
    #[serde(rename = "type", deserialize_with = "nullable")]
    pub kind: InstanceType,
    /// Start the instance once created (API extension `instance_create_start`, newer than LXD 5.0).
    #[serde(skip_serializing_if = "is_false", deserialize_with = "nullable")]
    pub start: bool,
}

/// The body of `PUT /1.0/instances`: change the state of all instances.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct InstancesPut {
    pub state: Option<InstanceStatePut>,
}

/// Where a new instance's root file system comes from (`source` of [`InstancesPost`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct InstanceSource {
    /// `"image"`, `"none"`, `"copy"` or `"migration"` (see [`source_type`]).
    #[serde(rename = "type", deserialize_with = "nullable")]
    pub kind: String,
    /// The remote server's certificate, PEM (image from a remote LXD, migration).
    #[serde(deserialize_with = "nullable")]
    pub certificate: String,
    /// Image alias (`"debian/12"`).
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "nullable")]
    pub alias: String,
    /// Image fingerprint (or a unique prefix of it).
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "nullable")]
    pub fingerprint: String,
    /// Image properties to select an image by (`{"os": "debian"}`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "nullable")]
    pub properties: BTreeMap<String, String>,
    /// The remote image server's URL (`"https://images.linuxcontainers.org"`).
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "nullable")]
    pub server: String,
    /// Secret for a private remote image, or for a migration source.
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "nullable")]
    pub secret: String,
    /// The remote image server's protocol: `"lxd"` or `"simplestreams"`.
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "nullable")]
    pub protocol: String,
    /// The image a copied or migrated instance was made from (its fingerprint).
    #[serde(
        rename = "base-image",
        skip_serializing_if = "String::is_empty",
        deserialize_with = "nullable"
    )]
    pub base_image: String,
    /// Migration mode: `"pull"` (default) or `"push"`; `lxc` also sends `"pull"` for remote images.
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "nullable")]
    pub mode: String,
    /// The migration source's operation URL (pull mode).
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "nullable")]
    pub operation: String,
    /// The migration websockets' secrets, by name (`"control"`, `"fs"`, `"criu"`); JSON `secrets`.
    #[serde(
        rename = "secrets",
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "nullable"
    )]
    pub websockets: BTreeMap<String, String>,
    /// The instance (or `instance/snapshot`) to copy.
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "nullable")]
    pub source: String,
    /// Live migration.
    #[serde(skip_serializing_if = "is_false", deserialize_with = "nullable")]
    pub live: bool,
    /// Copy or migrate without the snapshots.
    #[serde(skip_serializing_if = "is_false", deserialize_with = "nullable")]
    pub instance_only: bool,
    /// Old name of `instance_only`.
    #[serde(skip_serializing_if = "is_false", deserialize_with = "nullable")]
    pub container_only: bool,
    /// Refresh an existing copy rather than create one.
    #[serde(skip_serializing_if = "is_false", deserialize_with = "nullable")]
    pub refresh: bool,
    /// The project of the instance to copy.
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "nullable")]
    pub project: String,
    /// Copy a running instance without freezing it.
    #[serde(deserialize_with = "nullable")]
    pub allow_inconsistent: bool,
}

/// The body of `POST /1.0/instances/<name>`: rename, or migrate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct InstancePost {
    /// The new name (rename), or the name on the target (migration).
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    /// Migrate rather than rename.
    #[serde(deserialize_with = "nullable")]
    pub migration: bool,
    #[serde(deserialize_with = "nullable")]
    pub live: bool,
    /// Migrate without the snapshots.
    #[serde(deserialize_with = "nullable")]
    pub instance_only: bool,
    /// Old name of `instance_only`.
    #[serde(deserialize_with = "nullable")]
    pub container_only: bool,
    /// Push-mode migration target; `null` for pull mode.
    pub target: Option<InstancePostTarget>,
    /// Move to this storage pool.
    #[serde(deserialize_with = "nullable")]
    pub pool: String,
    /// Move to this project.
    #[serde(deserialize_with = "nullable")]
    pub project: String,
    /// Migrate a running instance without freezing it.
    #[serde(deserialize_with = "nullable")]
    pub allow_inconsistent: bool,
}

/// A push-mode migration target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct InstancePostTarget {
    /// The target's certificate, PEM.
    #[serde(deserialize_with = "nullable")]
    pub certificate: String,
    /// The target's operation URL.
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "nullable")]
    pub operation: String,
    /// The target's websocket secrets, by name; JSON `secrets`.
    #[serde(
        rename = "secrets",
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "nullable"
    )]
    pub websockets: BTreeMap<String, String>,
}

/// An instance's running state: `GET /1.0/instances/<name>/state`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct InstanceState {
    /// The name of `status_code` (`"Running"`).
    #[serde(deserialize_with = "nullable")]
    pub status: String,
    #[serde(deserialize_with = "nullable")]
    pub status_code: StatusCode,
    /// Disk usage, by disk device name (`"root"`).
    #[serde(deserialize_with = "nullable")]
    pub disk: BTreeMap<String, InstanceStateDisk>,
    #[serde(deserialize_with = "nullable")]
    pub memory: InstanceStateMemory,
    /// Network interfaces inside the instance, by name (`"eth0"`, `"lo"`).
    #[serde(deserialize_with = "nullable")]
    pub network: BTreeMap<String, InstanceStateNetwork>,
    /// The instance's init, as seen from the host; 0 (or -1) when stopped.
    #[serde(deserialize_with = "nullable")]
    pub pid: i64,
    /// Number of processes; -1 when unknown.
    #[serde(deserialize_with = "nullable")]
    pub processes: i64,
    #[serde(deserialize_with = "nullable")]
    pub cpu: InstanceStateCpu,
}

/// A disk's usage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct InstanceStateDisk {
    /// Bytes used.
    #[serde(deserialize_with = "nullable")]
    pub usage: i64,
    /// Bytes available in all (API extension `instances_state_total`).
    #[serde(deserialize_with = "nullable")]
    pub total: i64,
}

/// CPU time used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct InstanceStateCpu {
    /// Nanoseconds of CPU time.
    #[serde(deserialize_with = "nullable")]
    pub usage: i64,
}

/// Memory use, in bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct InstanceStateMemory {
    #[serde(deserialize_with = "nullable")]
    pub usage: i64,
    #[serde(deserialize_with = "nullable")]
    pub usage_peak: i64,
    /// The memory limit, or the host's memory (API extension `instances_state_total`).
    #[serde(deserialize_with = "nullable")]
    pub total: i64,
    #[serde(deserialize_with = "nullable")]
    pub swap_usage: i64,
    #[serde(deserialize_with = "nullable")]
    pub swap_usage_peak: i64,
}

/// A network interface inside the instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct InstanceStateNetwork {
    #[serde(deserialize_with = "nullable")]
    pub addresses: Vec<InstanceStateNetworkAddress>,
    #[serde(deserialize_with = "nullable")]
    pub counters: InstanceStateNetworkCounters,
    /// MAC address.
    #[serde(deserialize_with = "nullable")]
    pub hwaddr: String,
    /// The host side's interface name (`"veth1a2b3c4d"`).
    #[serde(deserialize_with = "nullable")]
    pub host_name: String,
    #[serde(deserialize_with = "nullable")]
    pub mtu: i64,
    /// `"up"` or `"down"`.
    #[serde(deserialize_with = "nullable")]
    pub state: String,
    /// `"broadcast"`, `"loopback"`, `"point-to-point"`...
    #[serde(rename = "type", deserialize_with = "nullable")]
    pub kind: String,
}

/// An address of a network interface.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct InstanceStateNetworkAddress {
    /// `"inet"` or `"inet6"`.
    #[serde(deserialize_with = "nullable")]
    pub family: String,
    #[serde(deserialize_with = "nullable")]
    pub address: String,
    /// The prefix length, as a string (`"24"`).
    #[serde(deserialize_with = "nullable")]
    pub netmask: String,
    /// `"global"`, `"link"` or `"local"`.
    #[serde(deserialize_with = "nullable")]
    pub scope: String,
}

/// Traffic counters of a network interface.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct InstanceStateNetworkCounters {
    #[serde(deserialize_with = "nullable")]
    pub bytes_received: i64,
    #[serde(deserialize_with = "nullable")]
    pub bytes_sent: i64,
    #[serde(deserialize_with = "nullable")]
    pub packets_received: i64,
    #[serde(deserialize_with = "nullable")]
    pub packets_sent: i64,
    #[serde(deserialize_with = "nullable")]
    pub errors_received: i64,
    #[serde(deserialize_with = "nullable")]
    pub errors_sent: i64,
    #[serde(deserialize_with = "nullable")]
    pub packets_dropped_outbound: i64,
    #[serde(deserialize_with = "nullable")]
    pub packets_dropped_inbound: i64,
}

/// The body of `PUT /1.0/instances/<name>/state`: start, stop, restart, freeze, unfreeze.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct InstanceStatePut {
    /// See [`state_action`].
    #[serde(deserialize_with = "nullable")]
    pub action: String,
    /// Seconds to wait for a clean stop before failing (or killing, with `force`); -1 to wait
    /// forever (`lxc stop` sends -1 unless `--timeout`).
    #[serde(deserialize_with = "nullable")]
    pub timeout: i64,
    /// Stop and restart: kill rather than ask the instance to shut down.
    #[serde(deserialize_with = "nullable")]
    pub force: bool,
    /// Save (stop) or restore (start) the running state.
    #[serde(deserialize_with = "nullable")]
    pub stateful: bool,
}

/// The body of `POST /1.0/instances/<name>/exec`: run a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct InstanceExecPost {
    /// The command and its arguments.
    #[serde(deserialize_with = "nullable")]
    pub command: Vec<String>,
    /// Answer with a websocket operation, whose websockets carry the command's I/O, and wait for
    /// them to connect before starting it.
    #[serde(rename = "wait-for-websocket", deserialize_with = "nullable")]
    pub wait_for_websocket: bool,
    /// Give the command a terminal (one websocket, `"0"`, plus `"control"`); otherwise three
    /// (`"0"`, `"1"`, `"2"`) plus `"control"`.
    #[serde(deserialize_with = "nullable")]
    pub interactive: bool,
    /// Extra environment variables.
    #[serde(deserialize_with = "nullable")]
    pub environment: BTreeMap<String, String>,
    /// Terminal width, in columns (interactive).
    #[serde(deserialize_with = "nullable")]
    pub width: i64,
    /// Terminal height, in rows (interactive).
    #[serde(deserialize_with = "nullable")]
    pub height: i64,
    /// Without `wait-for-websocket`: keep stdout and stderr in log files and name them in the
    /// operation's metadata `output`.
    #[serde(rename = "record-output", deserialize_with = "nullable")]
    pub record_output: bool,
    /// UID to run as.
    #[serde(deserialize_with = "nullable")]
    pub user: u32,
    /// GID to run as.
    #[serde(deserialize_with = "nullable")]
    pub group: u32,
    /// Working directory; `""` for the user's home (or `/`).
    #[serde(deserialize_with = "nullable")]
    pub cwd: String,
}

/// A message on an exec's `control` websocket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct InstanceExecControl {
    /// `"window-resize"` or `"signal"` (see [`exec_control`]).
    #[serde(deserialize_with = "nullable")]
    pub command: String,
    /// For `window-resize`: `{"width": "120", "height": "40"}`.
    #[serde(deserialize_with = "nullable")]
    pub args: BTreeMap<String, String>,
    /// For `signal`: the signal number.
    #[serde(deserialize_with = "nullable")]
    pub signal: i32,
}

/// The body of `POST /1.0/instances/<name>/console`: attach to the console.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct InstanceConsolePost {
    /// Terminal width, in columns.
    #[serde(deserialize_with = "nullable")]
    pub width: i64,
    /// Terminal height, in rows.
    #[serde(deserialize_with = "nullable")]
    pub height: i64,
    /// `"console"` (text; the default when `""`) or `"vga"` (virtual machines).
    #[serde(rename = "type", deserialize_with = "nullable")]
    pub kind: String,
}

/// A message on a console's `control` websocket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct InstanceConsoleControl {
    /// `"window-resize"`.
    #[serde(deserialize_with = "nullable")]
    pub command: String,
    /// `{"width": "120", "height": "40"}`.
    #[serde(deserialize_with = "nullable")]
    pub args: BTreeMap<String, String>,
}

/// A snapshot, as `GET /1.0/instances/<name>/snapshots/<snapshot>` returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct InstanceSnapshot {
    /// When the snapshot is deleted; zero time for never.
    #[serde(deserialize_with = "nullable")]
    pub expires_at: Timestamp,
    #[serde(deserialize_with = "nullable")]
    pub architecture: String,
    #[serde(deserialize_with = "nullable")]
    pub config: Config,
    #[serde(deserialize_with = "nullable")]
    pub created_at: Timestamp,
    #[serde(deserialize_with = "nullable")]
    pub devices: Devices,
    #[serde(deserialize_with = "nullable")]
    pub ephemeral: bool,
    #[serde(skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "nullable")]
    pub expanded_config: Config,
    #[serde(skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "nullable")]
    pub expanded_devices: Devices,
    #[serde(deserialize_with = "nullable")]
    pub last_used_at: Timestamp,
    /// The snapshot's own name (`"snap0"`, not `"c1/snap0"`).
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    #[serde(deserialize_with = "nullable")]
    pub profiles: Vec<String>,
    /// Whether the running state was saved.
    #[serde(deserialize_with = "nullable")]
    pub stateful: bool,
    /// Bytes used on disk; -1 when unknown.
    #[serde(deserialize_with = "nullable")]
    pub size: i64,
}

/// The body of `POST /1.0/instances/<name>/snapshots`: take a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct InstanceSnapshotsPost {
    /// `""` to let the server pick (`snap0`, `snap1`...).
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    /// Save the running state too.
    #[serde(deserialize_with = "nullable")]
    pub stateful: bool,
    /// When to delete it: `None` for the instance's `snapshots.expiry`, the zero time for never.
    pub expires_at: Option<Timestamp>,
}

/// The body of `PUT /1.0/instances/<name>/snapshots/<snapshot>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct InstanceSnapshotPut {
    /// When the snapshot is deleted; zero time for never.
    #[serde(deserialize_with = "nullable")]
    pub expires_at: Timestamp,
}

/// The body of `POST /1.0/instances/<name>/snapshots/<snapshot>`: rename, or migrate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct InstanceSnapshotPost {
    /// The new name.
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    #[serde(deserialize_with = "nullable")]
    pub migration: bool,
    /// Push-mode migration target.
    pub target: Option<InstancePostTarget>,
    #[serde(skip_serializing_if = "is_false", deserialize_with = "nullable")]
    pub live: bool,
}

/// A backup, as `GET /1.0/instances/<name>/backups/<backup>` returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct InstanceBackup {
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    #[serde(deserialize_with = "nullable")]
    pub created_at: Timestamp,
    #[serde(deserialize_with = "nullable")]
    pub expires_at: Timestamp,
    /// Without the snapshots.
    #[serde(deserialize_with = "nullable")]
    pub instance_only: bool,
    /// Old name of `instance_only`.
    #[serde(deserialize_with = "nullable")]
    pub container_only: bool,
    /// In the storage driver's own format.
    #[serde(deserialize_with = "nullable")]
    pub optimized_storage: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{nulls_and_missing_are_default, parse_and_write, round_trip, unknown_fields_ignored};
    use serde_json::json;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn launch_body_from_the_brief() {
        let post: InstancesPost = parse_and_write(
            r#"{"name":"c1","source":{"type":"image","alias":"debian/12","server":"https://images.linuxcontainers.org",
                "protocol":"simplestreams","mode":"pull"},"config":{},"devices":{},"profiles":["default"],
                "ephemeral":false,"type":"container"}"#,
            r#"{"architecture":"","config":{},"devices":{},"ephemeral":false,"profiles":["default"],"stateful":false,
                "description":"","name":"c1",
                "source":{"type":"image","certificate":"","alias":"debian/12",
                  "server":"https://images.linuxcontainers.org","protocol":"simplestreams","mode":"pull",
                  "allow_inconsistent":false},
                "instance_type":"","type":"container"}"#,
        );
        assert_eq!(post.name, "c1");
        assert_eq!(post.kind, InstanceType::Container);
        assert_eq!(post.profiles, Some(vec!["default".to_owned()]));
        assert_eq!(post.source.kind, source_type::IMAGE);
        assert_eq!(post.source.alias, "debian/12");
        assert_eq!(post.source.server, "https://images.linuxcontainers.org");
        assert_eq!(post.source.protocol, "simplestreams");
        assert_eq!(post.source.mode, "pull");
        assert!(!post.start);
    }

    #[test]
    fn launch_body_as_lxc_5_0_2_marshals_it() {
        // `lxc launch images:debian/12 c1`: lxc marshals the whole Go struct, `profiles` nil.
        let post: InstancesPost = round_trip(
            r#"{"architecture":"","config":{},"devices":{},"ephemeral":false,"profiles":null,"stateful":false,
                "description":"","name":"c1",
                "source":{"type":"image","certificate":"","alias":"debian/12",
                  "server":"https://images.linuxcontainers.org","protocol":"simplestreams","mode":"pull",
                  "allow_inconsistent":false},
                "instance_type":"","type":"container"}"#,
        );
        assert_eq!(post.profiles, None, "null means the default profile");

        // `--no-profiles` sends an empty list, which must stay distinct from null.
        let post: InstancesPost = serde_json::from_str(r#"{"name":"c2","profiles":[]}"#).unwrap();
        assert_eq!(post.profiles, Some(vec![]));
        assert_eq!(serde_json::to_value(&post).unwrap()["profiles"], json!([]));
    }

    #[test]
    fn create_with_config_devices_and_start() {
        let post: InstancesPost = serde_json::from_str(
            r#"{"name":"vm1","type":"virtual-machine","start":true,"instance_type":"c2-m4",
                "config":{"limits.cpu":"2","security.nesting":"true"},
                "devices":{"root":{"path":"/","pool":"default","size":"10GiB","type":"disk"}},
                "source":{"type":"none"},"unknown_future_field":{"x":1}}"#,
        )
        .unwrap();
        assert_eq!(post.kind, InstanceType::VirtualMachine);
        assert!(post.start);
        assert_eq!(post.instance_type, "c2-m4");
        assert_eq!(post.config, map(&[("limits.cpu", "2"), ("security.nesting", "true")]));
        assert_eq!(post.devices["root"]["size"], "10GiB");
        assert_eq!(post.source.kind, source_type::NONE);
        let v = serde_json::to_value(&post).unwrap();
        assert_eq!(v["start"], true);
        assert_eq!(v["type"], "virtual-machine");
        assert_eq!(v["limits.cpu"], serde_json::Value::Null, "config is not flattened");
        assert_eq!(v["config"]["limits.cpu"], "2");
    }

    #[test]
    fn copy_and_migration_sources() {
        let src: InstanceSource = round_trip(
            r#"{"type":"migration","certificate":"PEM","base-image":"aaaa","mode":"pull",
                "operation":"https://10.0.0.2:8443/1.0/operations/1234",
                "secrets":{"control":"c","fs":"f"},"live":true,"instance_only":true,"refresh":true,
                "project":"p1","allow_inconsistent":true}"#,
        );
        assert_eq!(src.base_image, "aaaa");
        assert_eq!(src.websockets, map(&[("control", "c"), ("fs", "f")]));
        let src: InstanceSource = serde_json::from_str(r#"{"type":"copy","source":"c1/snap0"}"#).unwrap();
        assert_eq!(src.kind, source_type::COPY);
        assert_eq!(src.source, "c1/snap0");
    }

    const LXD_INSTANCE: &str = r#"{
        "architecture": "x86_64",
        "config": {"image.description": "Debian bookworm amd64 (20240101_05:24)", "image.os": "Debian",
                   "volatile.base_image": "a1b2c3", "volatile.eth0.hwaddr": "00:16:3e:aa:bb:cc",
                   "volatile.last_state.power": "RUNNING"},
        "devices": {},
        "ephemeral": false,
        "profiles": ["default"],
        "stateful": false,
        "description": "",
        "created_at": "2024-01-01T10:00:00.123456789Z",
        "expanded_config": {"image.description": "Debian bookworm amd64 (20240101_05:24)", "image.os": "Debian",
                            "volatile.base_image": "a1b2c3", "volatile.eth0.hwaddr": "00:16:3e:aa:bb:cc",
                            "volatile.last_state.power": "RUNNING"},
        "expanded_devices": {"eth0": {"name": "eth0", "network": "lxdbr0", "type": "nic"},
                             "root": {"path": "/", "pool": "default", "type": "disk"}},
        "name": "c1",
        "status": "Running",
        "status_code": 103,
        "last_used_at": "2024-01-01T10:00:05.5Z",
        "location": "none",
        "type": "container",
        "project": "default"
    }"#;

    #[test]
    fn lxd_instance_round_trips() {
        let inst: Instance = round_trip(LXD_INSTANCE);
        assert_eq!(inst.name, "c1");
        assert_eq!(inst.kind, InstanceType::Container);
        assert_eq!(inst.status, "Running");
        assert_eq!(inst.status_code, StatusCode::RUNNING);
        assert_eq!(inst.profiles, ["default"]);
        assert_eq!(inst.expanded_devices["root"]["pool"], "default");
        assert_eq!(inst.last_used_at.to_string(), "2024-01-01T10:00:05.5Z");
        assert_eq!(inst.location, "none");
    }

    #[test]
    fn default_instance_writes_like_go() {
        // Go omits empty expanded_config/expanded_devices; times are the zero time.
        assert_eq!(
            serde_json::to_value(Instance::default()).unwrap(),
            json!({"architecture":"","config":{},"devices":{},"ephemeral":false,"profiles":[],"stateful":false,
                   "description":"","created_at":"0001-01-01T00:00:00Z","name":"","status":"","status_code":0,
                   "last_used_at":"0001-01-01T00:00:00Z","location":"","type":"","project":""})
        );
    }

    const LXD_STATE: &str = r#"{
        "status": "Running",
        "status_code": 103,
        "disk": {"root": {"usage": 396263424, "total": 0}},
        "memory": {"usage": 35127296, "usage_peak": 0, "total": 2061991936, "swap_usage": 0, "swap_usage_peak": 0},
        "network": {
            "eth0": {
                "addresses": [
                    {"family": "inet", "address": "10.81.231.17", "netmask": "24", "scope": "global"},
                    {"family": "inet6", "address": "fe80::216:3eff:feaa:bbcc", "netmask": "64", "scope": "link"}
                ],
                "counters": {"bytes_received": 9046, "bytes_sent": 4478, "packets_received": 60, "packets_sent": 43,
                             "errors_received": 0, "errors_sent": 0, "packets_dropped_outbound": 0,
                             "packets_dropped_inbound": 0},
                "hwaddr": "00:16:3e:aa:bb:cc",
                "host_name": "veth5f8c3a1e",
                "mtu": 1500,
                "state": "up",
                "type": "broadcast"
            },
            "lo": {
                "addresses": [{"family": "inet", "address": "127.0.0.1", "netmask": "8", "scope": "local"}],
                "counters": {"bytes_received": 0, "bytes_sent": 0, "packets_received": 0, "packets_sent": 0,
                             "errors_received": 0, "errors_sent": 0, "packets_dropped_outbound": 0,
                             "packets_dropped_inbound": 0},
                "hwaddr": "",
                "host_name": "",
                "mtu": 65536,
                "state": "up",
                "type": "loopback"
            }
        },
        "pid": 4242,
        "processes": 12,
        "cpu": {"usage": 1852345000}
    }"#;

    #[test]
    fn lxd_state_round_trips() {
        let state: InstanceState = round_trip(LXD_STATE);
        assert_eq!(state.status_code, StatusCode::RUNNING);
        assert_eq!(state.disk["root"].usage, 396_263_424);
        assert_eq!(state.memory.total, 2_061_991_936);
        let eth0 = &state.network["eth0"];
        assert_eq!(eth0.kind, "broadcast");
        assert_eq!(eth0.host_name, "veth5f8c3a1e");
        assert_eq!(eth0.mtu, 1500);
        assert_eq!(
            eth0.addresses[0],
            InstanceStateNetworkAddress {
                family: "inet".into(),
                address: "10.81.231.17".into(),
                netmask: "24".into(),
                scope: "global".into()
            }
        );
        assert_eq!(eth0.counters.bytes_received, 9046);
        assert_eq!(state.network["lo"].mtu, 65536);
        assert_eq!(state.pid, 4242);
        assert_eq!(state.cpu.usage, 1_852_345_000);
    }

    #[test]
    fn stopped_state_from_go_with_nulls() {
        let state: InstanceState = serde_json::from_str(
            r#"{"status":"Stopped","status_code":102,"disk":null,"memory":{"usage":0,"usage_peak":0,
                "swap_usage":0,"swap_usage_peak":0},"network":null,"pid":0,"processes":0,"cpu":{"usage":0}}"#,
        )
        .unwrap();
        assert_eq!(state.status_code, StatusCode::STOPPED);
        assert!(state.disk.is_empty());
        assert!(state.network.is_empty());
    }

    #[test]
    fn instance_full_round_trips() {
        let mut full = serde_json::from_str::<serde_json::Value>(LXD_INSTANCE).unwrap();
        full["state"] = serde_json::from_str(LXD_STATE).unwrap();
        full["snapshots"] = json!([{"expires_at":"0001-01-01T00:00:00Z","architecture":"x86_64","config":{},
            "created_at":"2024-01-02T08:00:00Z","devices":{},"ephemeral":false,
            "last_used_at":"0001-01-01T00:00:00Z","name":"snap0","profiles":["default"],"stateful":false,"size":-1}]);
        full["backups"] = json!([{"name":"backup0","created_at":"2024-01-03T08:00:00Z",
            "expires_at":"2024-01-04T08:00:00Z","instance_only":false,"container_only":false,
            "optimized_storage":false}]);
        let parsed: InstanceFull = round_trip(&full.to_string());
        assert_eq!(parsed.instance, serde_json::from_str::<Instance>(LXD_INSTANCE).unwrap());
        assert_eq!(parsed.state.as_ref().unwrap().pid, 4242);
        assert_eq!(parsed.snapshots[0].name, "snap0");
        assert_eq!(parsed.snapshots[0].size, -1);
        assert_eq!(parsed.backups[0].name, "backup0");

        // Go writes nil slices and pointers as null.
        let full: InstanceFull =
            serde_json::from_str(r#"{"name":"c2","state":null,"snapshots":null,"backups":null}"#).unwrap();
        assert_eq!(full.instance.name, "c2");
        assert_eq!(full.state, None);
        assert!(full.snapshots.is_empty() && full.backups.is_empty());
    }

    #[test]
    fn instance_put() {
        // What `lxc config edit` sends back.
        let put: InstancePut = round_trip(
            r#"{"architecture":"x86_64","config":{"limits.memory":"1GiB"},"devices":{},"ephemeral":false,
                "profiles":["default"],"stateful":false,"description":"web"}"#,
        );
        assert_eq!(put.config, map(&[("limits.memory", "1GiB")]));
        assert_eq!(put.restore, "");
        // pylxd's restore_snapshot.
        let put: InstancePut = serde_json::from_str(r#"{"restore":"snap0"}"#).unwrap();
        assert_eq!(put.restore, "snap0");
        assert_eq!(serde_json::to_value(&put).unwrap()["restore"], "snap0");
        assert_eq!(put.profiles, None);
    }

    #[test]
    fn instance_post() {
        // `lxc move c1 c2`.
        let post: InstancePost = round_trip(
            r#"{"name":"c2","migration":false,"live":false,"instance_only":false,"container_only":false,
                "target":null,"pool":"","project":"","allow_inconsistent":false}"#,
        );
        assert_eq!(post.name, "c2");
        assert_eq!(post.target, None);
        let post: InstancePost = round_trip(
            r#"{"name":"c1","migration":true,"live":false,"instance_only":true,"container_only":false,
                "target":{"certificate":"PEM","operation":"https://h:8443/1.0/operations/1",
                          "secrets":{"control":"c","fs":"f"}},
                "pool":"","project":"","allow_inconsistent":false}"#,
        );
        assert_eq!(post.target.unwrap().websockets["fs"], "f");
        // pylxd's rename sends just the name.
        let post: InstancePost = serde_json::from_str(r#"{"name":"c3"}"#).unwrap();
        assert_eq!(
            post,
            InstancePost {
                name: "c3".into(),
                ..InstancePost::default()
            }
        );
    }

    #[test]
    fn state_put() {
        // `lxc stop c1`.
        let put: InstanceStatePut = round_trip(r#"{"action":"stop","timeout":-1,"force":false,"stateful":false}"#);
        assert_eq!(put.action, state_action::STOP);
        assert_eq!(put.timeout, -1);
        // pylxd's `instance.start()`.
        let put: InstanceStatePut = serde_json::from_str(r#"{"action":"start","timeout":30,"force":null}"#).unwrap();
        assert_eq!(
            put,
            InstanceStatePut {
                action: "start".into(),
                timeout: 30,
                force: false,
                stateful: false
            }
        );
        let all: InstancesPut =
            round_trip(r#"{"state":{"action":"freeze","timeout":0,"force":false,"stateful":false}}"#);
        assert_eq!(all.state.unwrap().action, state_action::FREEZE);
    }

    #[test]
    fn exec_post_from_lxc() {
        // `lxc exec c1 -- bash` in a 80x24 terminal.
        let exec: InstanceExecPost = round_trip(
            r#"{"command":["bash"],"wait-for-websocket":true,"interactive":true,
                "environment":{"TERM":"xterm-256color"},"width":80,"height":24,"record-output":false,
                "user":0,"group":0,"cwd":""}"#,
        );
        assert_eq!(exec.command, ["bash"]);
        assert!(exec.wait_for_websocket);
        assert!(exec.interactive);
        assert!(!exec.record_output);
        assert_eq!(exec.environment, map(&[("TERM", "xterm-256color")]));
        assert_eq!((exec.width, exec.height), (80, 24));
    }

    #[test]
    fn exec_post_from_pylxd() {
        // pylxd's `instance.execute(["ls", "/"])`: unset user, group and cwd are null.
        let exec: InstanceExecPost = parse_and_write(
            r#"{"command":["ls","/"],"environment":{},"wait-for-websocket":true,"interactive":false,
                "user":null,"group":null,"cwd":null}"#,
            r#"{"command":["ls","/"],"wait-for-websocket":true,"interactive":false,"environment":{},"width":0,
                "height":0,"record-output":false,"user":0,"group":0,"cwd":""}"#,
        );
        assert_eq!(exec.command, ["ls", "/"]);
        assert!(exec.wait_for_websocket && !exec.interactive);
        assert_eq!((exec.user, exec.group), (0, 0));
        // A uid outside u32 is an error, not a silent wrap.
        assert!(serde_json::from_str::<InstanceExecPost>(r#"{"user":-1}"#).is_err());
    }

    #[test]
    fn exec_control_messages() {
        let resize: InstanceExecControl =
            round_trip(r#"{"command":"window-resize","args":{"width":"120","height":"40"},"signal":0}"#);
        assert_eq!(resize.command, exec_control::WINDOW_RESIZE);
        assert_eq!(resize.args, map(&[("height", "40"), ("width", "120")]));
        let signal: InstanceExecControl =
            serde_json::from_str(r#"{"command":"signal","args":null,"signal":15}"#).unwrap();
        assert_eq!(signal.command, exec_control::SIGNAL);
        assert_eq!(signal.signal, 15);
        assert!(signal.args.is_empty());
        let console: InstanceConsoleControl =
            round_trip(r#"{"command":"window-resize","args":{"width":"100","height":"30"}}"#);
        assert_eq!(console.args["width"], "100");
    }

    #[test]
    fn console_post() {
        let post: InstanceConsolePost = round_trip(r#"{"width":80,"height":24,"type":"console"}"#);
        assert_eq!(
            post,
            InstanceConsolePost {
                width: 80,
                height: 24,
                kind: "console".into()
            }
        );
    }

    #[test]
    fn snapshots() {
        // `lxc snapshot c1 snap0`: no expiry given.
        let post: InstanceSnapshotsPost = round_trip(r#"{"name":"snap0","stateful":false,"expires_at":null}"#);
        assert_eq!(post.expires_at, None);
        // `lxc snapshot c1 snap1 --no-expiry`.
        let post: InstanceSnapshotsPost =
            round_trip(r#"{"name":"snap1","stateful":false,"expires_at":"0001-01-01T00:00:00Z"}"#);
        assert!(post.expires_at.unwrap().is_zero());
        // pylxd's `snapshots.create("snap2")`.
        let post: InstanceSnapshotsPost = serde_json::from_str(r#"{"name":"snap2","stateful":false}"#).unwrap();
        assert_eq!(post.expires_at, None);

        let put: InstanceSnapshotPut = round_trip(r#"{"expires_at":"2024-02-01T00:00:00Z"}"#);
        assert_eq!(put.expires_at.to_string(), "2024-02-01T00:00:00Z");

        let post: InstanceSnapshotPost = parse_and_write(
            r#"{"name":"snap9"}"#,
            r#"{"name":"snap9","migration":false,"target":null}"#,
        );
        assert_eq!(post.name, "snap9");
    }

    #[test]
    fn instance_types() {
        for (kind, name) in [
            (InstanceType::Any, ""),
            (InstanceType::Container, "container"),
            (InstanceType::VirtualMachine, "virtual-machine"),
        ] {
            assert_eq!(kind.as_str(), name);
            assert_eq!(serde_json::to_value(kind).unwrap(), json!(name));
            assert_eq!(serde_json::from_value::<InstanceType>(json!(name)).unwrap(), kind);
        }
        assert!(serde_json::from_str::<InstancesPost>(r#"{"type":"jail"}"#).is_err());
    }

    #[test]
    fn lenient() {
        nulls_and_missing_are_default::<Instance>();
        nulls_and_missing_are_default::<InstanceFull>();
        nulls_and_missing_are_default::<InstancePut>();
        nulls_and_missing_are_default::<InstancesPost>();
        nulls_and_missing_are_default::<InstancesPut>();
        nulls_and_missing_are_default::<InstanceSource>();
        nulls_and_missing_are_default::<InstancePost>();
        nulls_and_missing_are_default::<InstancePostTarget>();
        nulls_and_missing_are_default::<InstanceState>();
        nulls_and_missing_are_default::<InstanceStateDisk>();
        nulls_and_missing_are_default::<InstanceStateCpu>();
        nulls_and_missing_are_default::<InstanceStateMemory>();
        nulls_and_missing_are_default::<InstanceStateNetwork>();
        nulls_and_missing_are_default::<InstanceStateNetworkAddress>();
        nulls_and_missing_are_default::<InstanceStateNetworkCounters>();
        nulls_and_missing_are_default::<InstanceStatePut>();
        nulls_and_missing_are_default::<InstanceExecPost>();
        nulls_and_missing_are_default::<InstanceExecControl>();
        nulls_and_missing_are_default::<InstanceConsolePost>();
        nulls_and_missing_are_default::<InstanceConsoleControl>();
        nulls_and_missing_are_default::<InstanceSnapshot>();
        nulls_and_missing_are_default::<InstanceSnapshotsPost>();
        nulls_and_missing_are_default::<InstanceSnapshotPut>();
        nulls_and_missing_are_default::<InstanceSnapshotPost>();
        nulls_and_missing_are_default::<InstanceBackup>();
        unknown_fields_ignored::<Instance>();
        unknown_fields_ignored::<InstanceFull>();
        unknown_fields_ignored::<InstancesPost>();
        unknown_fields_ignored::<InstanceSource>();
        unknown_fields_ignored::<InstanceExecPost>();
        unknown_fields_ignored::<InstanceState>();
    }
}
