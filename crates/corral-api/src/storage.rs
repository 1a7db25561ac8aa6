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

/// A storage pool's usage, `GET /1.0/storage-pools/<name>/resources` (and `/state` on newer
/// servers): the same JSON.
pub type StoragePoolState = ResourcesStoragePool;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{nulls_and_missing_are_default, round_trip, unknown_fields_ignored};

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
