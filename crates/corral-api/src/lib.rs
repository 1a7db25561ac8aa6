//! Serde types of LXD's REST API 1.0, as `lxc`, `incus` and pylxd send and receive them.
//!
//! This is the only crate of Corral that derives `Serialize`/`Deserialize` for the wire: the
//! daemon and the clients both speak through these types, and nothing else in the workspace
//! should invent its own JSON shape for an API object. It does no I/O at all: plain data,
//! constructors and a few tiny helpers.
//!
//! One module per resource, mirroring LXD's `shared/api/*.go` (each field's JSON name is the
//! Go struct's json tag):
//!
//! - [`response`]: the `sync` / `async` / `error` envelopes.
//! - [`status`]: [`StatusCode`] and its LXD names.
//! - [`server`]: `GET /1.0` ([`Server`]) and `PUT /1.0` ([`ServerPut`]).
//! - [`instance`]: instances, their state, exec, console, snapshots and backups.
//! - [`image`]: images, aliases, and the image's `metadata.yaml`.
//! - [`operation`]: background operations.
//! - [`event`]: the `/1.0/events` messages.
//! - [`network`]: networks, their state, leases and forwards.
//! - [`profile`], [`storage`], [`project`], [`resources`].
//!
//! Conventions, on every type:
//!
//! - Unknown fields are ignored (never `deny_unknown_fields`): clients send fields we don't know.
//! - Every struct is `#[serde(default)]`, so a missing field takes its `Default`; and every
//!   non-`Option` field also accepts JSON `null` as its default, since Go clients send `null`
//!   for nil maps and slices (`"profiles":null`) and pylxd sends `null` for unset arguments
//!   (`"user":null` in an exec).
//! - Fields that Go tags `omitempty` are skipped when empty, so what we send matches LXD.
//! - The JSON field `type` is called `kind` in Rust.
//! - Timestamps are [`Timestamp`]: a `chrono::DateTime<Utc>` written as Go writes it (RFC 3339
//!   with up to nine fraction digits), whose default is Go's zero time `0001-01-01T00:00:00Z`.

use std::collections::BTreeMap;

pub mod certificate;
pub mod event;
pub mod image;
pub mod instance;
pub mod network;
pub mod operation;
pub mod profile;
pub mod project;
pub mod resources;
pub mod response;
pub mod server;
pub mod status;
pub mod storage;
pub mod time;

mod wire;

pub use certificate::{Certificate, CertificateAddToken, CertificatePut, CertificatesPost};
pub use event::{Event, EventLifecycle, EventLifecycleRequestor, EventLogging};
pub use image::{
    Image, ImageAlias, ImageAliasesEntry, ImageAliasesEntryPost, ImageAliasesEntryPut, ImageAliasesPost,
    ImageExportPost, ImageMetadata, ImageMetadataTemplate, ImagePut, ImageSource, ImagesPost, ImagesPostSource,
};
pub use instance::{
    Instance, InstanceBackup, InstanceConsoleControl, InstanceConsolePost, InstanceExecControl, InstanceExecPost,
    InstanceFull, InstancePost, InstancePostTarget, InstancePut, InstanceSnapshot, InstanceSnapshotPost,
    InstanceSnapshotPut, InstanceSnapshotsPost, InstanceSource, InstanceState, InstanceStateCpu, InstanceStateDisk,
    InstanceStateMemory, InstanceStateNetwork, InstanceStateNetworkAddress, InstanceStateNetworkCounters,
    InstanceStatePut, InstanceType, InstancesPost, InstancesPut,
};
pub use network::{
    Network, NetworkForward, NetworkForwardPort, NetworkForwardPut, NetworkLease, NetworkPost, NetworkPut,
    NetworkState, NetworkStateAddress, NetworkStateBridge, NetworkStateCounters, NetworksPost,
};
pub use operation::{Operation, OperationClass};
pub use profile::{Profile, ProfilePost, ProfilePut, ProfilesPost};
pub use project::{Project, ProjectPost, ProjectPut, ProjectsPost};
pub use resources::{
    Resources, ResourcesCpu, ResourcesCpuCore, ResourcesCpuSocket, ResourcesCpuThread, ResourcesMemory,
    ResourcesStoragePool, ResourcesStoragePoolInodes, ResourcesStoragePoolSpace,
};
pub use response::{Response, ResponseType};
pub use server::{Server, ServerEnvironment, ServerPut, ServerStorageDriverInfo};
pub use status::StatusCode;
pub use storage::{
    StoragePool, StoragePoolPut, StoragePoolState, StoragePoolsPost, StorageVolume, StorageVolumePost,
    StorageVolumePut, StorageVolumeSnapshot, StorageVolumeSnapshotsPost, StorageVolumeSource, StorageVolumesPost,
};
pub use time::Timestamp;

/// A `config` map: option name to value (`"limits.cpu": "2"`).
pub type Config = BTreeMap<String, String>;

/// One device: its options (`"type": "disk"`, `"path": "/"`, `"pool": "default"`).
pub type Device = BTreeMap<String, String>;

/// A `devices` map: device name to its options.
pub type Devices = BTreeMap<String, Device>;

#[cfg(test)]
pub(crate) mod test_util {
    use serde::de::DeserializeOwned;
    use serde::Serialize;
    use serde_json::Value;
    use std::fmt::Debug;

    /// Parses `json` as `T`, checks that writing it back gives exactly `expected`, and returns it.
    pub fn parse_and_write<T: DeserializeOwned + Serialize>(json: &str, expected: &str) -> T {
        let parsed: T = serde_json::from_str(json).expect("parses");
        let written = serde_json::to_value(&parsed).expect("serializes");
        let expected: Value = serde_json::from_str(expected).expect("expected is JSON");
        assert_eq!(written, expected, "written back:\n{written:#}\nexpected:\n{expected:#}");
        parsed
    }

    /// Parses `json` as `T` and checks that writing it back gives the same JSON (up to key order).
    pub fn round_trip<T: DeserializeOwned + Serialize>(json: &str) -> T {
        parse_and_write(json, json)
    }

    /// Checks that `{}` parses to the default, and that an object holding every field the default
    /// writes, each set to `null`, parses to the default too (so no field is missing its `null`
    /// handling).
    pub fn nulls_and_missing_are_default<T: DeserializeOwned + Serialize + Default + PartialEq + Debug>() {
        let empty: T = serde_json::from_str("{}").expect("{} parses");
        assert_eq!(empty, T::default(), "{{}} is not the default");

        let Value::Object(mut fields) = serde_json::to_value(T::default()).expect("serializes") else {
            panic!("not an object");
        };
        assert!(!fields.is_empty());
        for value in fields.values_mut() {
            *value = Value::Null;
        }
        let nulls: T = serde_json::from_value(Value::Object(fields.clone()))
            .unwrap_or_else(|e| panic!("all-null {} fails: {e}", Value::Object(fields)));
        assert_eq!(nulls, T::default(), "all-null is not the default");
    }

    /// Checks that fields we don't know are ignored, at the top level and inside.
    pub fn unknown_fields_ignored<T: DeserializeOwned + Serialize + Default + PartialEq + Debug>() {
        let parsed: T = serde_json::from_str(r#"{"corral_future_field":{"a":[1,2]},"x-y":null}"#)
            .expect("unknown fields are ignored");
        assert_eq!(parsed, T::default());
    }
}
