//! Host resources: `GET /1.0/resources` and a storage pool's usage (LXD's `resource.go`).
//!
//! Only the CPU and memory parts of `/1.0/resources` are here; clients read the parts left out
//! (GPUs, network cards, disks, USB, PCI, system) as empty.

use serde::{Deserialize, Serialize};

use crate::wire::nullable;

/// The host's resources, `GET /1.0/resources` (CPU and memory only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Resources {
    #[serde(deserialize_with = "nullable")]
    pub cpu: ResourcesCpu,
    #[serde(deserialize_with = "nullable")]
    pub memory: ResourcesMemory,
}

/// The host's CPUs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ResourcesCpu {
    /// `"x86_64"`...
    #[serde(deserialize_with = "nullable")]
    pub architecture: String,
    #[serde(deserialize_with = "nullable")]
    pub sockets: Vec<ResourcesCpuSocket>,
    /// Number of hardware threads.
    #[serde(deserialize_with = "nullable")]
    pub total: u64,
}

/// A CPU socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ResourcesCpuSocket {
    /// Model name.
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "nullable")]
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "nullable")]
    pub vendor: String,
    /// Socket number.
    #[serde(deserialize_with = "nullable")]
    pub socket: u64,
    #[serde(deserialize_with = "nullable")]
    pub cores: Vec<ResourcesCpuCore>,
    /// Current frequency, MHz.
    #[serde(skip_serializing_if = "is_zero", deserialize_with = "nullable")]
    pub frequency: u64,
    /// Minimum frequency, MHz.
    #[serde(skip_serializing_if = "is_zero", deserialize_with = "nullable")]
    pub frequency_minimum: u64,
    /// Turbo frequency, MHz.
    #[serde(skip_serializing_if = "is_zero", deserialize_with = "nullable")]
    pub frequency_turbo: u64,
}

/// A CPU core.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ResourcesCpuCore {
    /// Core number within its die.
    #[serde(deserialize_with = "nullable")]
    pub core: u64,
    #[serde(deserialize_with = "nullable")]
    pub die: u64,
    #[serde(deserialize_with = "nullable")]
    pub threads: Vec<ResourcesCpuThread>,
    /// Current frequency, MHz.
    #[serde(skip_serializing_if = "is_zero", deserialize_with = "nullable")]
    pub frequency: u64,
}

/// A hardware thread.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ResourcesCpuThread {
    /// The kernel's CPU number.
    #[serde(deserialize_with = "nullable")]
    pub id: i64,
    #[serde(deserialize_with = "nullable")]
    pub numa_node: u64,
    /// Thread number within its core.
    #[serde(deserialize_with = "nullable")]
    pub thread: u64,
    #[serde(deserialize_with = "nullable")]
    pub online: bool,
    /// Isolated from the scheduler (`isolcpus`).
    #[serde(deserialize_with = "nullable")]
    pub isolated: bool,
}

/// The host's memory, in bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ResourcesMemory {
    #[serde(deserialize_with = "nullable")]
    pub hugepages_total: u64,
    #[serde(deserialize_with = "nullable")]
    pub hugepages_used: u64,
    /// Size of one huge page.
    #[serde(deserialize_with = "nullable")]
    pub hugepages_size: u64,
    #[serde(deserialize_with = "nullable")]
    pub used: u64,
    #[serde(deserialize_with = "nullable")]
    pub total: u64,
}

/// A storage pool's usage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ResourcesStoragePool {
    #[serde(deserialize_with = "nullable")]
    pub space: ResourcesStoragePoolSpace,
    #[serde(deserialize_with = "nullable")]
    pub inodes: ResourcesStoragePoolInodes,
}

/// A storage pool's space, in bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ResourcesStoragePoolSpace {
    /// Omitted when unknown (0).
    #[serde(skip_serializing_if = "is_zero", deserialize_with = "nullable")]
    pub used: u64,
    #[serde(deserialize_with = "nullable")]
    pub total: u64,
}

/// A storage pool's inodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ResourcesStoragePoolInodes {
    #[serde(deserialize_with = "nullable")]
    pub used: u64,
    #[serde(deserialize_with = "nullable")]
    pub total: u64,
}

/// For `skip_serializing_if`: Go's `omitempty` on a number.
fn is_zero(value: &u64) -> bool {
    *value == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{nulls_and_missing_are_default, parse_and_write, unknown_fields_ignored};

    #[test]
    fn lxd_resources_cpu_and_memory() {
        // LXD 5.0's answer, cut to one socket of one core; the parts we don't model are dropped.
        let resources: Resources = parse_and_write(
            r#"{"cpu":{"architecture":"x86_64","sockets":[{"name":"Intel(R) Core(TM) i7-8550U CPU @ 1.80GHz",
                  "vendor":"GenuineIntel","socket":0,
                  "cache":[{"level":1,"type":"Data","size":32768}],
                  "cores":[{"core":0,"die":0,"threads":[
                    {"id":0,"numa_node":0,"thread":0,"online":true,"isolated":false},
                    {"id":4,"numa_node":0,"thread":1,"online":true,"isolated":false}],"frequency":3400}],
                  "frequency":3400,"frequency_minimum":400,"frequency_turbo":4000}],"total":2},
                "memory":{"hugepages_total":0,"hugepages_used":0,"hugepages_size":2097152,
                  "used":4182953984,"total":16655982592},
                "gpu":{"cards":[],"total":0},"network":{"cards":[],"total":0}}"#,
            r#"{"cpu":{"architecture":"x86_64","sockets":[{"name":"Intel(R) Core(TM) i7-8550U CPU @ 1.80GHz",
                  "vendor":"GenuineIntel","socket":0,
                  "cores":[{"core":0,"die":0,"threads":[
                    {"id":0,"numa_node":0,"thread":0,"online":true,"isolated":false},
                    {"id":4,"numa_node":0,"thread":1,"online":true,"isolated":false}],"frequency":3400}],
                  "frequency":3400,"frequency_minimum":400,"frequency_turbo":4000}],"total":2},
                "memory":{"hugepages_total":0,"hugepages_used":0,"hugepages_size":2097152,
                  "used":4182953984,"total":16655982592}}"#,
        );
        assert_eq!(resources.cpu.total, 2);
        assert_eq!(resources.cpu.sockets[0].cores[0].threads[1].id, 4);
        assert_eq!(resources.memory.total, 16_655_982_592);
    }

    #[test]
    fn minimal_resources_write_go_omitempty() {
        let resources = Resources {
            cpu: ResourcesCpu {
                architecture: "aarch64".into(),
                total: 4,
                ..ResourcesCpu::default()
            },
            memory: ResourcesMemory {
                total: 1 << 30,
                used: 1 << 20,
                ..ResourcesMemory::default()
            },
        };
        assert_eq!(
            serde_json::to_string(&resources).unwrap(),
            r#"{"cpu":{"architecture":"aarch64","sockets":[],"total":4},"memory":{"hugepages_total":0,"hugepages_used":0,"hugepages_size":0,"used":1048576,"total":1073741824}}"#
        );
        let socket = ResourcesCpuSocket::default();
        assert_eq!(serde_json::to_string(&socket).unwrap(), r#"{"socket":0,"cores":[]}"#);
        let space = ResourcesStoragePoolSpace { used: 0, total: 10 };
        assert_eq!(serde_json::to_string(&space).unwrap(), r#"{"total":10}"#);
    }

    #[test]
    fn lenient() {
        nulls_and_missing_are_default::<Resources>();
        nulls_and_missing_are_default::<ResourcesCpu>();
        nulls_and_missing_are_default::<ResourcesCpuSocket>();
        nulls_and_missing_are_default::<ResourcesCpuCore>();
        nulls_and_missing_are_default::<ResourcesCpuThread>();
        nulls_and_missing_are_default::<ResourcesMemory>();
        nulls_and_missing_are_default::<ResourcesStoragePool>();
        nulls_and_missing_are_default::<ResourcesStoragePoolSpace>();
        nulls_and_missing_are_default::<ResourcesStoragePoolInodes>();
        unknown_fields_ignored::<Resources>();
    }
}
