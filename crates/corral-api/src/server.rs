//! The server: `GET /1.0` and `PUT /1.0` (LXD's `server.go`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::wire::nullable;

/// The server's writable configuration, the body of `PUT`/`PATCH /1.0`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ServerPut {
    /// Server options (`"core.https_address": ":8443"`). Values are JSON, as in LXD (Go's
    /// `map[string]any`), though clients send strings.
    #[serde(deserialize_with = "nullable")]
    pub config: BTreeMap<String, Value>,
}

/// The server, as `GET /1.0` returns it. An untrusted client gets `config` empty, `auth`
/// `"untrusted"`, and `environment` zeroed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Server {
    /// Server options; see [`ServerPut`].
    #[serde(deserialize_with = "nullable")]
    pub config: BTreeMap<String, Value>,
    /// The API extensions the server supports (clients check these before using a feature).
    #[serde(deserialize_with = "nullable")]
    pub api_extensions: Vec<String>,
    /// `"stable"`.
    #[serde(deserialize_with = "nullable")]
    pub api_status: String,
    /// `"1.0"`.
    #[serde(deserialize_with = "nullable")]
    pub api_version: String,
    /// `"trusted"` or `"untrusted"`.
    #[serde(deserialize_with = "nullable")]
    pub auth: String,
    /// Whether the server is a public image server.
    #[serde(deserialize_with = "nullable")]
    pub public: bool,
    /// `["tls"]`, maybe `"candid"`, `"rbac"`, `"oidc"`.
    #[serde(deserialize_with = "nullable")]
    pub auth_methods: Vec<String>,
    /// The host and daemon.
    #[serde(deserialize_with = "nullable")]
    pub environment: ServerEnvironment,
}

/// The host and daemon, `environment` in `GET /1.0`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ServerEnvironment {
    /// The addresses the API listens on (`":8443"`, `"10.0.0.1:8443"`).
    #[serde(deserialize_with = "nullable")]
    pub addresses: Vec<String>,
    /// The architectures instances may have (`["x86_64", "i686"]`).
    #[serde(deserialize_with = "nullable")]
    pub architectures: Vec<String>,
    /// The server's TLS certificate, PEM.
    #[serde(deserialize_with = "nullable")]
    pub certificate: String,
    /// SHA-256 of the certificate, hex.
    #[serde(deserialize_with = "nullable")]
    pub certificate_fingerprint: String,
    /// Instance drivers, `" | "`-separated (`"lxc | qemu"`).
    #[serde(deserialize_with = "nullable")]
    pub driver: String,
    /// Their versions, `" | "`-separated (`"5.0.2 | 7.2.0"`).
    #[serde(deserialize_with = "nullable")]
    pub driver_version: String,
    /// `"nftables"` or `"xtables"`.
    #[serde(deserialize_with = "nullable")]
    pub firewall: String,
    /// `"Linux"`.
    #[serde(deserialize_with = "nullable")]
    pub kernel: String,
    /// `"x86_64"`.
    #[serde(deserialize_with = "nullable")]
    pub kernel_architecture: String,
    /// Kernel features, `"true"`/`"false"` (`"seccomp_listener": "true"`).
    #[serde(deserialize_with = "nullable")]
    pub kernel_features: BTreeMap<String, String>,
    /// `"6.1.0-17-amd64"`.
    #[serde(deserialize_with = "nullable")]
    pub kernel_version: String,
    /// liblxc features, `"true"`/`"false"` (`"cgroup2": "true"`).
    #[serde(deserialize_with = "nullable")]
    pub lxc_features: BTreeMap<String, String>,
    /// The host's distribution (`"Debian GNU/Linux"`).
    #[serde(deserialize_with = "nullable")]
    pub os_name: String,
    /// Its version (`"12"`).
    #[serde(deserialize_with = "nullable")]
    pub os_version: String,
    /// The project the request was made in.
    #[serde(deserialize_with = "nullable")]
    pub project: String,
    /// The server's implementation name (`"lxd"`).
    #[serde(deserialize_with = "nullable")]
    pub server: String,
    #[serde(deserialize_with = "nullable")]
    pub server_clustered: bool,
    /// `"full-mesh"`, `"hub-server"` or `"hub-client"`.
    #[serde(deserialize_with = "nullable")]
    pub server_event_mode: String,
    /// The host name (or cluster member name).
    #[serde(deserialize_with = "nullable")]
    pub server_name: String,
    /// The daemon's PID.
    #[serde(deserialize_with = "nullable")]
    pub server_pid: i64,
    /// The daemon's version (`"5.0.2"`).
    #[serde(deserialize_with = "nullable")]
    pub server_version: String,
    /// Storage drivers in use, `" | "`-separated (`"dir | zfs"`).
    #[serde(deserialize_with = "nullable")]
    pub storage: String,
    /// Their versions, `" | "`-separated.
    #[serde(deserialize_with = "nullable")]
    pub storage_version: String,
    /// The storage drivers the server could use.
    #[serde(deserialize_with = "nullable")]
    pub storage_supported_drivers: Vec<ServerStorageDriverInfo>,
}

/// A storage driver the server supports. LXD's Go struct has no json tags, so its JSON keys are
/// capitalized: `{"Name": "dir", "Version": "1", "Remote": false}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ServerStorageDriverInfo {
    /// `"dir"`, `"btrfs"`, `"zfs"`...
    #[serde(rename = "Name", deserialize_with = "nullable")]
    pub name: String,
    #[serde(rename = "Version", deserialize_with = "nullable")]
    pub version: String,
    /// Whether the storage is remote (ceph): shared by cluster members.
    #[serde(rename = "Remote", deserialize_with = "nullable")]
    pub remote: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{nulls_and_missing_are_default, parse_and_write, round_trip, unknown_fields_ignored};
    use serde_json::json;

    const LXD_5_0_SERVER: &str = r#"{
        "config": {"core.https_address": ":8443", "images.auto_update_interval": "6"},
        "api_extensions": ["storage_zfs_remove_snapshots", "container_host_shutdown_timeout", "instances"],
        "api_status": "stable",
        "api_version": "1.0",
        "auth": "trusted",
        "public": false,
        "auth_methods": ["tls"],
        "environment": {
            "addresses": [":8443"],
            "architectures": ["x86_64", "i686"],
            "certificate": "-----BEGIN CERTIFICATE-----\nMIIB...\n-----END CERTIFICATE-----\n",
            "certificate_fingerprint": "f2a6b8c2e1d0a1b2c3d4e5f60718293a4b5c6d7e8f9000112233445566778899",
            "driver": "lxc",
            "driver_version": "5.0.2",
            "firewall": "nftables",
            "kernel": "Linux",
            "kernel_architecture": "x86_64",
            "kernel_features": {"idmapped_mounts": "true", "netnsid_getifaddrs": "true", "seccomp_listener": "true",
                                "seccomp_listener_continue": "true", "shiftfs": "false", "uevent_injection": "true",
                                "unpriv_fscaps": "true"},
            "kernel_version": "6.1.0-17-amd64",
            "lxc_features": {"cgroup2": "true", "devpts_fd": "true", "idmapped_mounts_v2": "true", "pidfd": "true",
                             "seccomp_allow_deny_syntax": "true", "seccomp_notify": "true"},
            "os_name": "Debian GNU/Linux",
            "os_version": "12",
            "project": "default",
            "server": "lxd",
            "server_clustered": false,
            "server_event_mode": "full-mesh",
            "server_name": "host1",
            "server_pid": 1234,
            "server_version": "5.0.2",
            "storage": "dir",
            "storage_version": "1",
            "storage_supported_drivers": [
                {"Name": "dir", "Version": "1", "Remote": false},
                {"Name": "ceph", "Version": "17.2.6", "Remote": true}
            ]
        }
    }"#;

    #[test]
    fn lxd_server_round_trips() {
        let server: Server = round_trip(LXD_5_0_SERVER);
        assert_eq!(server.api_version, "1.0");
        assert_eq!(server.auth, "trusted");
        assert_eq!(server.auth_methods, ["tls"]);
        assert_eq!(server.config["core.https_address"], json!(":8443"));
        let env = &server.environment;
        assert_eq!(env.architectures, ["x86_64", "i686"]);
        assert_eq!(env.kernel_features["shiftfs"], "false");
        assert_eq!(env.server_pid, 1234);
        assert_eq!(env.server_version, "5.0.2");
        assert_eq!(
            env.storage_supported_drivers[1],
            ServerStorageDriverInfo {
                name: "ceph".into(),
                version: "17.2.6".into(),
                remote: true
            }
        );
    }

    #[test]
    fn untrusted_server_reads() {
        // An untrusted client gets a short answer; the rest defaults.
        let server: Server = serde_json::from_str(
            r#"{"api_extensions":["instances"],"api_status":"stable","api_version":"1.0","auth":"untrusted",
                "public":false,"auth_methods":["tls"],"config":null,"environment":null}"#,
        )
        .unwrap();
        assert_eq!(server.auth, "untrusted");
        assert!(server.config.is_empty());
        assert_eq!(server.environment, ServerEnvironment::default());
    }

    #[test]
    fn server_put() {
        let put: ServerPut = parse_and_write(
            r#"{"config":{"core.https_address":"[::]:8443","core.trust_password":true,"extra":1}}"#,
            r#"{"config":{"core.https_address":"[::]:8443","core.trust_password":true,"extra":1}}"#,
        );
        assert_eq!(put.config["core.https_address"], json!("[::]:8443"));
        assert_eq!(
            serde_json::to_string(&ServerPut::default()).unwrap(),
            r#"{"config":{}}"#
        );
    }

    #[test]
    fn lenient() {
        nulls_and_missing_are_default::<Server>();
        nulls_and_missing_are_default::<ServerEnvironment>();
        nulls_and_missing_are_default::<ServerPut>();
        nulls_and_missing_are_default::<ServerStorageDriverInfo>();
        unknown_fields_ignored::<Server>();
        unknown_fields_ignored::<ServerPut>();
    }
}
