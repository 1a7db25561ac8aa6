//! Storage pools: `/1.0/storage-pools/...` (LXD's `storage_pool.go`).

use serde::{Deserialize, Serialize};

use crate::resources::ResourcesStoragePool;
use crate::wire::nullable;
use crate::Config;

/// Values of [`StoragePool::status`].
pub mod pool_status {
    pub const PENDING: &str = "Pending";
    pub const CREATED: &str = "Created";
    pub const ERRORED: &str = "Errored";
    pub const UNKNOWN: &str = "Unknown";
    pub const UNAVAILABLE: &str = "Unavailable";
}

/// A storage pool, as `GET /1.0/storage-pools/<name>` returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct StoragePool {
    /// Driver options (`"source": "/var/lib/lxd/storage-pools/default"`, `"size": "30GiB"`).
    #[serde(deserialize_with = "nullable")]
    pub config: Config,
    #[serde(deserialize_with = "nullable")]
    pub description: String,
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    /// `"dir"`, `"btrfs"`, `"zfs"`, `"lvm"`, `"ceph"`...
    #[serde(deserialize_with = "nullable")]
    pub driver: String,
    /// URLs of what uses it (instances, profiles, volumes, images).
    #[serde(deserialize_with = "nullable")]
    pub used_by: Vec<String>,
    /// `"Created"`, `"Pending"`... (see [`pool_status`]).
    #[serde(deserialize_with = "nullable")]
    pub status: String,
    /// The cluster members it is on (`["none"]` when not clustered).
    #[serde(deserialize_with = "nullable")]
    pub locations: Vec<String>,
}

/// A storage pool's writable fields: the body of `PUT /1.0/storage-pools/<name>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct StoragePoolPut {
    #[serde(deserialize_with = "nullable")]
    pub config: Config,
    #[serde(deserialize_with = "nullable")]
    pub description: String,
}

/// The body of `POST /1.0/storage-pools`: create a storage pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct StoragePoolsPost {
    #[serde(deserialize_with = "nullable")]
    pub config: Config,
    #[serde(deserialize_with = "nullable")]
    pub description: String,
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    #[serde(deserialize_with = "nullable")]
    pub driver: String,
}

/// A storage volume, as `GET /1.0/storage-pools/<pool>/volumes/<type>/<name>` returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct StorageVolume {
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    /// `custom`, `container`, `image`.
    #[serde(rename = "type", deserialize_with = "nullable")]
    pub kind: String,
    #[serde(deserialize_with = "nullable")]
    pub description: String,
    /// `size` and the driver's options.
    #[serde(deserialize_with = "nullable")]
    pub config: Config,
    #[serde(deserialize_with = "nullable")]
    pub used_by: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    pub location: String,
    /// `filesystem` (`block` is for virtual machines).
    #[serde(deserialize_with = "nullable")]
    pub content_type: String,
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "nullable")]
    pub project: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<crate::Timestamp>,
}

/// A volume's writable fields: the body of `PUT`/`PATCH` on a volume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct StorageVolumePut {
    #[serde(deserialize_with = "nullable")]
    pub config: Config,
    #[serde(deserialize_with = "nullable")]
    pub description: String,
    /// Restore this snapshot (PUT only).
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "nullable")]
    pub restore: String,
}

/// Where a new volume's content comes from (`copy` of another volume).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct StorageVolumeSource {
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    /// `copy` (or empty for a new empty volume).
    #[serde(rename = "type", deserialize_with = "nullable")]
    pub kind: String,
    #[serde(deserialize_with = "nullable")]
    pub pool: String,
    #[serde(deserialize_with = "nullable")]
    pub volume_only: bool,
}

/// The body of `POST /1.0/storage-pools/<pool>/volumes[/<type>]`: create a volume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct StorageVolumesPost {
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    #[serde(rename = "type", deserialize_with = "nullable")]
    pub kind: String,
    #[serde(deserialize_with = "nullable")]
    pub description: String,
    #[serde(deserialize_with = "nullable")]
    pub config: Config,
    #[serde(deserialize_with = "nullable")]
    pub content_type: String,
    #[serde(deserialize_with = "nullable")]
    pub source: StorageVolumeSource,
}

/// The body of `POST` on a volume: rename, or move to another pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct StorageVolumePost {
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    /// Move to this pool (empty: stay).
    #[serde(deserialize_with = "nullable")]
    pub pool: String,
}

/// A volume snapshot: `GET .../volumes/custom/<name>/snapshots/<snapshot>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct StorageVolumeSnapshot {
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    #[serde(deserialize_with = "nullable")]
    pub description: String,
    #[serde(deserialize_with = "nullable")]
    pub config: Config,
    #[serde(deserialize_with = "nullable")]
    pub content_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<crate::Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<crate::Timestamp>,
}

/// The body of `POST .../snapshots`: take a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct StorageVolumeSnapshotsPost {
    #[serde(deserialize_with = "nullable")]
    pub name: String,
}

/// A storage pool's usage, `GET /1.0/storage-pools/<name>/resources` (and `/state` on newer
/// servers): the same JSON.
pub type StoragePoolState = ResourcesStoragePool;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{nulls_and_missing_are_default, round_trip, unknown_fields_ignored};

    #[test]
    fn lxd_volume_round_trips() {
        let v: StorageVolume = round_trip(
            r#"{"name":"data","type":"custom","description":"","config":{"size":"1GiB"},
                "used_by":["/1.0/instances/c1"],"location":"none","content_type":"filesystem",
                "project":"default","created_at":"2026-01-02T03:04:05Z"}"#,
        );
        assert_eq!(v.kind, "custom");
        nulls_and_missing_are_default::<StorageVolumesPost>();
        nulls_and_missing_are_default::<StorageVolumePut>();
        unknown_fields_ignored::<StorageVolumePost>();
    }

    #[test]
    fn lxd_pool_round_trips() {
        let pool: StoragePool = round_trip(
            r#"{"config":{"source":"/var/lib/lxd/storage-pools/default"},"description":"","name":"default",
                "driver":"dir","used_by":["/1.0/instances/c1","/1.0/profiles/default"],"status":"Created",
                "locations":["none"]}"#,
        );
        assert_eq!(pool.name, "default");
        assert_eq!(pool.driver, "dir");
        assert_eq!(pool.status, pool_status::CREATED);
        assert_eq!(pool.config["source"], "/var/lib/lxd/storage-pools/default");
        assert_eq!(pool.locations, ["none"]);
    }

    #[test]
    fn create_put_and_state() {
        // `lxc storage create pool1 dir`.
        let post: StoragePoolsPost = round_trip(r#"{"config":{},"description":"","name":"pool1","driver":"dir"}"#);
        assert_eq!((post.name.as_str(), post.driver.as_str()), ("pool1", "dir"));
        let put: StoragePoolPut = round_trip(r#"{"config":{"size":"30GiB"},"description":"big"}"#);
        assert_eq!(put.config["size"], "30GiB");
        let state: StoragePoolState = round_trip(
            r#"{"space":{"used":1540000000,"total":250000000000},"inodes":{"used":54000,"total":15000000}}"#,
        );
        assert_eq!(state.space.used, 1_540_000_000);
        assert_eq!(state.inodes.total, 15_000_000);
    }

    #[test]
    fn lenient() {
        nulls_and_missing_are_default::<StoragePool>();
        nulls_and_missing_are_default::<StoragePoolPut>();
        nulls_and_missing_are_default::<StoragePoolsPost>();
        nulls_and_missing_are_default::<StoragePoolState>();
        unknown_fields_ignored::<StoragePool>();
        unknown_fields_ignored::<StoragePoolsPost>();
    }
}
