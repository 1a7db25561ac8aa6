//! Networks: `/1.0/networks/...` (LXD's `network.go`, `network_lease.go`, `network_forward.go`).

use serde::{Deserialize, Serialize};

use crate::wire::nullable;
use crate::Config;

/// A network, as `GET /1.0/networks/<name>` returns it. Host interfaces that Corral does not
/// manage are listed too, with `managed: false`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Network {
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    #[serde(deserialize_with = "nullable")]
    pub description: String,
    /// `bridge`, `macvlan`, and for unmanaged interfaces `physical`, `loopback`, `unknown`.
    #[serde(rename = "type", deserialize_with = "nullable")]
    pub kind: String,
    #[serde(deserialize_with = "nullable")]
    pub managed: bool,
    /// `Created`, `Pending`, `Errored` or `Unknown` (LXD's names).
    #[serde(deserialize_with = "nullable")]
    pub status: String,
    #[serde(deserialize_with = "nullable")]
    pub config: Config,
    /// URLs of the instances and profiles using it.
    #[serde(deserialize_with = "nullable")]
    pub used_by: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    pub locations: Vec<String>,
}

/// A network's writable fields: the body of `PUT`/`PATCH /1.0/networks/<name>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct NetworkPut {
    #[serde(deserialize_with = "nullable")]
    pub config: Config,
    #[serde(deserialize_with = "nullable")]
    pub description: String,
}

/// The body of `POST /1.0/networks`: create a network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct NetworksPost {
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    #[serde(deserialize_with = "nullable")]
    pub description: String,
    /// Empty means `bridge`.
    #[serde(rename = "type", deserialize_with = "nullable")]
    pub kind: String,
    #[serde(deserialize_with = "nullable")]
    pub config: Config,
}

/// The body of `POST /1.0/networks/<name>`: rename.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct NetworkPost {
    #[serde(deserialize_with = "nullable")]
    pub name: String,
}

/// `GET /1.0/networks/<name>/state`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct NetworkState {
    #[serde(deserialize_with = "nullable")]
    pub addresses: Vec<NetworkStateAddress>,
    #[serde(deserialize_with = "nullable")]
    pub counters: NetworkStateCounters,
    #[serde(deserialize_with = "nullable")]
    pub hwaddr: String,
    #[serde(deserialize_with = "nullable")]
    pub mtu: i64,
    /// `up` or `down`.
    #[serde(deserialize_with = "nullable")]
    pub state: String,
    /// `broadcast`, `loopback`, `point-to-point`.
    #[serde(rename = "type", deserialize_with = "nullable")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bridge: Option<NetworkStateBridge>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct NetworkStateAddress {
    /// `inet` or `inet6`.
    #[serde(deserialize_with = "nullable")]
    pub family: String,
    #[serde(deserialize_with = "nullable")]
    pub address: String,
    /// The prefix length, as a string (`"24"`).
    #[serde(deserialize_with = "nullable")]
    pub netmask: String,
    /// `global`, `link`, `local`.
    #[serde(deserialize_with = "nullable")]
    pub scope: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct NetworkStateCounters {
    #[serde(deserialize_with = "nullable")]
    pub bytes_received: i64,
    #[serde(deserialize_with = "nullable")]
    pub bytes_sent: i64,
    #[serde(deserialize_with = "nullable")]
    pub packets_received: i64,
    #[serde(deserialize_with = "nullable")]
    pub packets_sent: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct NetworkStateBridge {
    #[serde(deserialize_with = "nullable")]
    pub id: String,
    #[serde(deserialize_with = "nullable")]
    pub stp: bool,
    #[serde(deserialize_with = "nullable")]
    pub forward_delay: u64,
    #[serde(deserialize_with = "nullable")]
    pub vlan_default: u64,
    #[serde(deserialize_with = "nullable")]
    pub vlan_filtering: bool,
    /// The interfaces attached to the bridge.
    #[serde(deserialize_with = "nullable")]
    pub upper_devices: Vec<String>,
}

/// One DHCP lease (or static allocation): `GET /1.0/networks/<name>/leases`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct NetworkLease {
    #[serde(deserialize_with = "nullable")]
    pub hostname: String,
    #[serde(deserialize_with = "nullable")]
    pub hwaddr: String,
    #[serde(deserialize_with = "nullable")]
    pub address: String,
    /// `static` (from a NIC's ipv4.address/ipv6.address), `dynamic`, `gateway`.
    #[serde(rename = "type", deserialize_with = "nullable")]
    pub kind: String,
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "nullable")]
    pub location: String,
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "nullable")]
    pub project: String,
}

/// A network forward: `GET /1.0/networks/<name>/forwards/<listen_address>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct NetworkForward {
    #[serde(deserialize_with = "nullable")]
    pub listen_address: String,
    #[serde(deserialize_with = "nullable")]
    pub description: String,
    /// `target_address`: where traffic to ports no port entry names goes.
    #[serde(deserialize_with = "nullable")]
    pub config: Config,
    #[serde(deserialize_with = "nullable")]
    pub ports: Vec<NetworkForwardPort>,
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "nullable")]
    pub location: String,
}

/// The writable fields of a forward: `PUT`/`PATCH /1.0/networks/<name>/forwards/<address>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct NetworkForwardPut {
    #[serde(deserialize_with = "nullable")]
    pub description: String,
    #[serde(deserialize_with = "nullable")]
    pub config: Config,
    #[serde(deserialize_with = "nullable")]
    pub ports: Vec<NetworkForwardPort>,
}

/// One port rule of a forward.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct NetworkForwardPort {
    #[serde(deserialize_with = "nullable")]
    pub description: String,
    /// `tcp` or `udp`.
    #[serde(deserialize_with = "nullable")]
    pub protocol: String,
    /// A port, a range `80-90`, or a comma-separated list of both.
    #[serde(deserialize_with = "nullable")]
    pub listen_port: String,
    /// Same forms as `listen_port`; empty means the same ports.
    #[serde(deserialize_with = "nullable")]
    pub target_port: String,
    #[serde(deserialize_with = "nullable")]
    pub target_address: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{nulls_and_missing_are_default, round_trip, unknown_fields_ignored};

    #[test]
    fn lxd_network_round_trips() {
        let n: Network = round_trip(
            r#"{"name":"lxdbr0","description":"","type":"bridge","managed":true,"status":"Created",
                "config":{"ipv4.address":"10.1.2.1/24","ipv4.nat":"true","ipv6.address":"none"},
                "used_by":["/1.0/profiles/default","/1.0/instances/c1"],"locations":["none"]}"#,
        );
        assert_eq!(n.kind, "bridge");
        assert!(n.managed);
    }

    #[test]
    fn lease_and_forward_round_trip() {
        let l: NetworkLease = round_trip(
            r#"{"hostname":"c1","hwaddr":"00:16:3e:aa:bb:cc","address":"10.1.2.3","type":"dynamic",
                "location":"none","project":"default"}"#,
        );
        assert_eq!(l.kind, "dynamic");
        let f: NetworkForward = round_trip(
            r#"{"listen_address":"192.0.2.1","description":"","config":{"target_address":"10.1.2.3"},
                "ports":[{"description":"","protocol":"tcp","listen_port":"80,8000-8010",
                          "target_port":"8080","target_address":"10.1.2.4"}]}"#,
        );
        assert_eq!(f.ports[0].listen_port, "80,8000-8010");
    }

    #[test]
    fn state_round_trips() {
        let s: NetworkState = round_trip(
            r#"{"addresses":[{"family":"inet","address":"10.1.2.1","netmask":"24","scope":"global"}],
                "counters":{"bytes_received":10,"bytes_sent":20,"packets_received":1,"packets_sent":2},
                "hwaddr":"00:16:3e:00:00:01","mtu":1500,"state":"up","type":"broadcast",
                "bridge":{"id":"8000.00163e000001","stp":false,"forward_delay":1500,"vlan_default":1,
                          "vlan_filtering":true,"upper_devices":["veth1"]}}"#,
        );
        assert_eq!(s.bridge.unwrap().upper_devices, ["veth1"]);
    }

    #[test]
    fn nulls_missing_and_unknown_fields() {
        nulls_and_missing_are_default::<Network>();
        nulls_and_missing_are_default::<NetworkPut>();
        nulls_and_missing_are_default::<NetworksPost>();
        nulls_and_missing_are_default::<NetworkLease>();
        nulls_and_missing_are_default::<NetworkForwardPort>();
        unknown_fields_ignored::<Network>();
        unknown_fields_ignored::<NetworkForward>();
    }
}
