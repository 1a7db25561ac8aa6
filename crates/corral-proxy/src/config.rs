//! What a proxy process is told: [`ProxyConfig`], serializable so that the daemon can hand it to a
//! process of its own, and its validation into a [`Plan`] (which listen endpoint forwards to which
//! connect endpoint).

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::addr::{AddrError, Endpoint, Protocol, ProxyAddr, UnixName};

/// LXD's UDP session lifetime without traffic (its forkproxy's 30 minutes).
pub const DEFAULT_UDP_TIMEOUT_SECS: u64 = 30 * 60;

/// The listening unix socket's mode when none is given (LXD's documented default).
pub const DEFAULT_UNIX_MODE: u32 = 0o644;

/// The namespaces one side of a proxy lives in, as namespace files. `None` is the proxy process's
/// own namespace (the host's, for a process the daemon spawned).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NsSpec {
    /// A network namespace: `/proc/PID/ns/net`, `/run/netns/NAME`. Sockets of this side (and
    /// abstract unix names, which belong to a network namespace) are made in it.
    pub net: Option<PathBuf>,
    /// A mount namespace: `/proc/PID/ns/mnt`. Unix socket paths of this side are resolved (and
    /// the listening socket is created) in it, from its root: a container's `/run/x.sock` is the
    /// container's, whatever symlinks the container has planted.
    pub mnt: Option<PathBuf>,
}

impl NsSpec {
    /// The proxy process's own namespaces.
    pub fn host() -> NsSpec {
        NsSpec::default()
    }

    /// The network and mount namespaces of process `pid` (a container's init).
    pub fn of_pid(pid: i32) -> NsSpec {
        NsSpec {
            net: Some(format!("/proc/{pid}/ns/net").into()),
            mnt: Some(format!("/proc/{pid}/ns/mnt").into()),
        }
    }
}

/// Everything one proxy device's forwarding process needs. Ids are as the proxy process sees them
/// (host ids): [`ProxyConfig::from_device`] maps an instance's ids through its idmap.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyConfig {
    /// LXD's `listen`, one of [`crate::addr::ADDRESS_FORMS`].
    pub listen: String,
    /// LXD's `connect`.
    pub connect: String,
    #[serde(default)]
    pub listen_ns: NsSpec,
    #[serde(default)]
    pub connect_ns: NsSpec,
    /// Send a PROXY protocol v2 header naming the client before forwarding (connect is tcp).
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Owner of the listening unix socket (LXD's `uid`; a path, not an abstract name).
    #[serde(default)]
    pub uid: Option<u32>,
    /// Group of the listening unix socket (LXD's `gid`).
    #[serde(default)]
    pub gid: Option<u32>,
    /// Mode of the listening unix socket (LXD's `mode`); [`DEFAULT_UNIX_MODE`] when absent.
    #[serde(default)]
    pub mode: Option<u32>,
    /// The uid the process switches to once its sockets are listening (LXD's `security.uid`):
    /// outgoing unix connections are made as this user.
    #[serde(default)]
    pub security_uid: Option<u32>,
    /// The gid to switch to (LXD's `security.gid`).
    #[serde(default)]
    pub security_gid: Option<u32>,
    /// A UDP client's session ends after this long without a datagram either way.
    #[serde(default = "default_udp_timeout_secs")]
    pub udp_timeout_secs: u64,
}

fn default_udp_timeout_secs() -> u64 {
    DEFAULT_UDP_TIMEOUT_SECS
}

/// A configuration that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("listen: {0}")]
    Listen(#[source] AddrError),
    #[error("connect: {0}")]
    Connect(#[source] AddrError),
    #[error("proxying {listen} to {connect} is not supported: udp forwards only to udp (tcp and unix mix both ways)")]
    Protocols { listen: Protocol, connect: Protocol },
    #[error(
        "mismatch between listen port(s) and connect port(s) count: listen has {listen}, connect has {connect}; \
         connect must have one port (every listen port forwards to it) or as many as listen"
    )]
    PortCount { listen: usize, connect: usize },
    #[error("listen port {0} is given twice")]
    DuplicatePort(u16),
    #[error("the PROXY header can only be sent to tcp servers, and connect is {0:?}")]
    ProxyProtocol(String),
    #[error(
        "only proxy devices for non-abstract unix sockets can carry uid, gid, or mode properties, and listen is {0:?}"
    )]
    UnixOptions(String),
    #[error("invalid mode {0:#o}: the listening socket's mode is an octal file mode from 0000 to 0777")]
    Mode(u32),
    #[error("udp_timeout_secs must be at least 1")]
    UdpTimeout,
    #[error("invalid value {value:?} for {key}: {why}")]
    Key {
        key: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("missing required device option {0:?}")]
    MissingKey(&'static str),
    #[error("nat=true proxies are firewall rules, not a forwarding process")]
    Nat,
    #[error("{key} {id} is not mapped in the instance's user namespace")]
    Unmapped { key: &'static str, id: u32 },
}

/// One listening socket and where its connections go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub listen: Endpoint,
    pub connect: Endpoint,
}

/// A validated configuration: the parsed addresses and one route per listening socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub listen: ProxyAddr,
    pub connect: ProxyAddr,
    pub routes: Vec<Route>,
}

impl ProxyConfig {
    /// `listen` forwarded to `connect`, both sides in this process's namespaces, no options.
    pub fn new(listen: impl Into<String>, connect: impl Into<String>) -> ProxyConfig {
        ProxyConfig {
            listen: listen.into(),
            connect: connect.into(),
            listen_ns: NsSpec::host(),
            connect_ns: NsSpec::host(),
            proxy_protocol: false,
            uid: None,
            gid: None,
            mode: None,
            security_uid: None,
            security_gid: None,
            udp_timeout_secs: DEFAULT_UDP_TIMEOUT_SECS,
        }
    }

    pub fn udp_timeout(&self) -> Duration {
        Duration::from_secs(self.udp_timeout_secs)
    }

    /// Checks everything that can be checked without touching the system (LXD's device
    /// validation and its forkproxy's checks) and pairs the listen and connect endpoints: listen
    /// port i forwards to connect port i, or every listen port to the single connect port.
    pub fn plan(&self) -> Result<Plan, ConfigError> {
        let listen: ProxyAddr = self.listen.parse().map_err(ConfigError::Listen)?;
        let connect: ProxyAddr = self.connect.parse().map_err(ConfigError::Connect)?;
        let (lp, cp) = (listen.protocol(), connect.protocol());
        if (lp == Protocol::Udp) != (cp == Protocol::Udp) {
            return Err(ConfigError::Protocols {
                listen: lp,
                connect: cp,
            });
        }
        let (ln, cn) = (listen.count(), connect.count());
        if cn != 1 && cn != ln {
            return Err(ConfigError::PortCount {
                listen: ln,
                connect: cn,
            });
        }
        let listen_endpoints = listen.endpoints();
        let mut seen = HashSet::new();
        for e in &listen_endpoints {
            if let Endpoint::Tcp(i) | Endpoint::Udp(i) = e {
                if !seen.insert(i.port) {
                    return Err(ConfigError::DuplicatePort(i.port));
                }
            }
        }
        if self.proxy_protocol && cp != Protocol::Tcp {
            return Err(ConfigError::ProxyProtocol(self.connect.clone()));
        }
        let unix_path_listener = matches!(listen, ProxyAddr::Unix(UnixName::Path(_)));
        if !unix_path_listener && (self.uid.is_some() || self.gid.is_some() || self.mode.is_some()) {
            return Err(ConfigError::UnixOptions(self.listen.clone()));
        }
        if let Some(mode) = self.mode {
            if mode > 0o777 {
                return Err(ConfigError::Mode(mode));
            }
        }
        if self.udp_timeout_secs == 0 {
            return Err(ConfigError::UdpTimeout);
        }
        let connect_endpoints = connect.endpoints();
        let routes = listen_endpoints
            .into_iter()
            .enumerate()
            .map(|(i, l)| Route {
                listen: l,
                connect: connect_endpoints[if connect_endpoints.len() == 1 { 0 } else { i }].clone(),
            })
            .collect();
        Ok(Plan {
            listen,
            connect,
            routes,
        })
    }

    /// The configuration of an LXD `proxy` device of an instance whose init is `instance_pid`.
    ///
    /// Keys: `listen`, `connect` (required), `bind` (`host`, the default, or `instance`; LXD's
    /// legacy `guest` and `container` too), `proxy_protocol`, `uid`, `gid`, `mode` (octal),
    /// `security.uid`, `security.gid`, `nat` (only false: NAT is not a forwarding process).
    /// Ids given in the instance's terms (the socket owner when bound in the instance, the
    /// `security.*` ids when connecting into it) go through `instance_ids`, which maps an
    /// instance uid or gid to the host's (`None`: unmapped).
    pub fn from_device(
        device: &BTreeMap<String, String>,
        instance_pid: i32,
        instance_ids: impl Fn(IdKind, u32) -> Option<u32>,
    ) -> Result<ProxyConfig, ConfigError> {
        let get = |k: &str| device.get(k).map(String::as_str).filter(|v| !v.is_empty());
        let listen = get("listen").ok_or(ConfigError::MissingKey("listen"))?;
        let connect = get("connect").ok_or(ConfigError::MissingKey("connect"))?;
        let bind_instance = match get("bind") {
            None | Some("host") => false,
            Some("instance" | "guest" | "container") => true,
            Some(v) => {
                return Err(ConfigError::Key {
                    key: "bind",
                    value: v.to_string(),
                    why: "must be \"host\" or \"instance\"",
                })
            }
        };
        if parse_bool("nat", get("nat"))? {
            return Err(ConfigError::Nat);
        }
        let id = |key: &'static str, kind: IdKind, in_instance: bool| -> Result<Option<u32>, ConfigError> {
            let Some(v) = get(key) else { return Ok(None) };
            let id: u32 = v.parse().map_err(|_| ConfigError::Key {
                key,
                value: v.to_string(),
                why: "must be a numeric id",
            })?;
            if !in_instance {
                return Ok(Some(id));
            }
            instance_ids(kind, id)
                .map(Some)
                .ok_or(ConfigError::Unmapped { key, id })
        };
        let mode = match get("mode") {
            None => None,
            Some(v) => Some(u32::from_str_radix(v, 8).map_err(|_| ConfigError::Key {
                key: "mode",
                value: v.to_string(),
                why: "must be an octal file mode such as 0660",
            })?),
        };
        let (instance, host) = (NsSpec::of_pid(instance_pid), NsSpec::host());
        let (listen_ns, connect_ns) = if bind_instance {
            (instance, host)
        } else {
            (host, instance)
        };
        let config = ProxyConfig {
            listen: listen.to_string(),
            connect: connect.to_string(),
            listen_ns,
            connect_ns,
            proxy_protocol: parse_bool("proxy_protocol", get("proxy_protocol"))?,
            // The socket is made on the listen side, the privilege drop is for the connect side.
            uid: id("uid", IdKind::Uid, bind_instance)?,
            gid: id("gid", IdKind::Gid, bind_instance)?,
            mode,
            security_uid: id("security.uid", IdKind::Uid, !bind_instance)?,
            security_gid: id("security.gid", IdKind::Gid, !bind_instance)?,
            udp_timeout_secs: DEFAULT_UDP_TIMEOUT_SECS,
        };
        config.plan()?;
        Ok(config)
    }
}

/// Which kind of id [`ProxyConfig::from_device`] asks to map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdKind {
    Uid,
    Gid,
}

/// LXD's booleans (`shared.IsTrue` / `IsFalseOrEmpty`).
fn parse_bool(key: &'static str, value: Option<&str>) -> Result<bool, ConfigError> {
    match value.map(str::to_ascii_lowercase).as_deref() {
        None => Ok(false),
        Some("true" | "1" | "yes" | "on") => Ok(true),
        Some("false" | "0" | "no" | "off") => Ok(false),
        Some(_) => Err(ConfigError::Key {
            key,
            value: value.unwrap_or_default().to_string(),
            why: "must be a boolean (true or false)",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::InetEndpoint;

    fn tcp(ip: &str, port: u16) -> Endpoint {
        Endpoint::Tcp(InetEndpoint {
            ip: Some(ip.parse().unwrap()),
            port,
        })
    }

    #[test]
    fn ranges_pair_up_or_share_one_port() {
        let plan = ProxyConfig::new("tcp:127.0.0.1:8000-8002", "tcp:10.0.0.2:9000-9002")
            .plan()
            .unwrap();
        let pairs: Vec<_> = plan
            .routes
            .iter()
            .map(|r| (r.listen.clone(), r.connect.clone()))
            .collect();
        assert_eq!(
            pairs,
            vec![
                (tcp("127.0.0.1", 8000), tcp("10.0.0.2", 9000)),
                (tcp("127.0.0.1", 8001), tcp("10.0.0.2", 9001)),
                (tcp("127.0.0.1", 8002), tcp("10.0.0.2", 9002)),
            ]
        );
        let plan = ProxyConfig::new("tcp:0.0.0.0:80,443", "tcp:127.0.0.1:8080")
            .plan()
            .unwrap();
        assert!(plan.routes.iter().all(|r| r.connect == tcp("127.0.0.1", 8080)));
        let plan = ProxyConfig::new("unix:/run/a.sock", "tcp:127.0.0.1:80").plan().unwrap();
        assert_eq!(plan.routes.len(), 1);
        let plan = ProxyConfig::new("tcp:127.0.0.1:80,81", "unix:@x").plan().unwrap();
        assert_eq!(plan.routes.len(), 2);
    }

    #[test]
    fn invalid_combinations_are_refused() {
        let err = |l: &str, c: &str| ProxyConfig::new(l, c).plan().unwrap_err();
        assert!(matches!(
            err("tcp:1.2.3.4:80", "tcp:1.2.3.4:80,81"),
            ConfigError::PortCount { listen: 1, connect: 2 }
        ));
        assert!(matches!(
            err("tcp:1.2.3.4:80-82", "tcp:1.2.3.4:80,81"),
            ConfigError::PortCount { listen: 3, connect: 2 }
        ));
        assert!(matches!(
            err("unix:/a", "tcp:1.2.3.4:80,81"),
            ConfigError::PortCount { listen: 1, connect: 2 }
        ));
        assert!(matches!(
            err("udp:1.2.3.4:53", "tcp:1.2.3.4:53"),
            ConfigError::Protocols { .. }
        ));
        assert!(matches!(
            err("tcp:1.2.3.4:53", "udp:1.2.3.4:53"),
            ConfigError::Protocols { .. }
        ));
        assert!(matches!(
            err("tcp:1.2.3.4:80,80", "tcp:1.2.3.4:81"),
            ConfigError::DuplicatePort(80)
        ));
        assert!(matches!(err("tcp:x:80", "tcp:1.2.3.4:81"), ConfigError::Listen(_)));
        assert!(matches!(err("tcp:1.2.3.4:80", "tcp:1.2.3.4"), ConfigError::Connect(_)));
        let e = err("tcp:1.2.3.4:80", "tcp:1.2.3.4:81,82").to_string();
        assert!(
            e.starts_with("mismatch between listen port(s) and connect port(s) count"),
            "{e}"
        );

        let mut c = ProxyConfig::new("tcp:1.2.3.4:80", "unix:/run/x");
        c.proxy_protocol = true;
        assert!(matches!(c.plan(), Err(ConfigError::ProxyProtocol(_))));
        let mut c = ProxyConfig::new("tcp:1.2.3.4:80", "tcp:1.2.3.4:81");
        c.mode = Some(0o600);
        assert!(matches!(c.plan(), Err(ConfigError::UnixOptions(_))));
        let mut c = ProxyConfig::new("unix:@abstract", "tcp:1.2.3.4:81");
        c.uid = Some(1);
        assert!(matches!(c.plan(), Err(ConfigError::UnixOptions(_))));
        let mut c = ProxyConfig::new("unix:/run/x", "tcp:1.2.3.4:81");
        c.mode = Some(0o4755);
        assert!(matches!(c.plan(), Err(ConfigError::Mode(0o4755))));
    }

    #[test]
    fn config_round_trips_through_json_and_tolerates_missing_fields() {
        let mut c = ProxyConfig::new("unix:/run/x", "tcp:127.0.0.1:80");
        c.connect_ns = NsSpec::of_pid(42);
        c.mode = Some(0o660);
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<ProxyConfig>(&json).unwrap(), c);
        let minimal: ProxyConfig =
            serde_json::from_str(r#"{"listen":"tcp::80","connect":"tcp:127.0.0.1:80"}"#).unwrap();
        assert_eq!(minimal, ProxyConfig::new("tcp::80", "tcp:127.0.0.1:80"));
    }

    #[test]
    fn device_keys_as_lxd_has_them() {
        let dev = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        let shift = |_: IdKind, id: u32| (id < 65536).then_some(id + 100_000);

        let c = ProxyConfig::from_device(
            &dev(&[
                ("type", "proxy"),
                ("listen", "tcp:0.0.0.0:80"),
                ("connect", "tcp:127.0.0.1:8080"),
            ]),
            7,
            shift,
        )
        .unwrap();
        assert_eq!(c.listen_ns, NsSpec::host());
        assert_eq!(c.connect_ns, NsSpec::of_pid(7));

        // Bound in the instance: the socket's owner is an instance id, the privilege drop a host one.
        let c = ProxyConfig::from_device(
            &dev(&[
                ("listen", "unix:/run/host.sock"),
                ("connect", "unix:/run/x.sock"),
                ("bind", "instance"),
                ("uid", "1000"),
                ("gid", "1001"),
                ("mode", "0660"),
                ("security.uid", "5"),
                ("proxy_protocol", "false"),
            ]),
            7,
            shift,
        )
        .unwrap();
        assert_eq!(c.listen_ns, NsSpec::of_pid(7));
        assert_eq!((c.uid, c.gid, c.mode), (Some(101_000), Some(101_001), Some(0o660)));
        assert_eq!(c.security_uid, Some(5));

        let bad = |pairs: &[(&str, &str)]| ProxyConfig::from_device(&dev(pairs), 7, shift).unwrap_err().to_string();
        assert_eq!(
            bad(&[("connect", "tcp::1")]),
            "missing required device option \"listen\""
        );
        assert!(
            bad(&[("listen", "tcp::1"), ("connect", "tcp::1"), ("bind", "vm")]).contains("\"host\" or \"instance\"")
        );
        assert!(bad(&[("listen", "tcp::1"), ("connect", "tcp::1"), ("nat", "true")]).contains("nat=true"));
        assert!(bad(&[("listen", "unix:/a"), ("connect", "tcp::1"), ("mode", "rw")]).contains("octal"));
        assert!(
            bad(&[("listen", "tcp::1"), ("connect", "tcp::1"), ("security.uid", "70000")])
                .contains("security.uid 70000 is not mapped")
        );
        assert!(bad(&[("listen", "tcp::1"), ("connect", "tcp::1"), ("proxy_protocol", "maybe")]).contains("boolean"));
    }
}
