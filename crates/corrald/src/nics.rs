//! NIC devices: validating their options, turning them into plans at start, and plugging a
//! plan into a container's network namespace.
//!
//! The daemon resolves each NIC (its network, bridge, MAC, host-side name) into a [`NicPlan`]
//! and writes the plans into the run directory (`nics.json`); the monitor, which is corrald
//! re-executed, plugs them from the runtime's host set-up hook, after the container's namespaces
//! exist and before its init runs, so the guest's DHCP client finds eth0 there. Hot-plug uses
//! the same [`plug`] on a running container. A veth or macvlan goes away with the container's
//! network namespace, so a stop needs no clean-up.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use corral_network::link::{self, MacvlanMode, MacvlanSpec, Netlink, Netns, PeerConfig, VethSpec};
use corral_network::MacAddr;
use serde::{Deserialize, Serialize};

/// The file in the run directory that holds the plans.
pub const PLAN_FILE: &str = "nics.json";

/// Options a NIC device may have, for the error that names a wrong one.
const NIC_KEYS: &[&str] = &[
    "type",
    "nictype",
    "network",
    "parent",
    "name",
    "host_name",
    "hwaddr",
    "mtu",
    "ipv4.address",
    "ipv6.address",
    "limits.ingress",
    "limits.egress",
    "limits.max",
    "boot.priority",
    "mode",
];

/// How a NIC reaches the outside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "nictype", rename_all = "lowercase")]
pub enum NicKind {
    /// A veth pair whose host side is a port of `bridge`.
    Bridged { bridge: String },
    /// A macvlan on the host interface `parent`.
    Macvlan { parent: String },
    /// A veth pair whose host side is left unattached (routed by the host).
    P2p,
}

/// Everything the monitor needs to make one NIC, resolved by the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicPlan {
    /// The device's name in the instance's config.
    pub device: String,
    /// The interface's name inside the container.
    pub name: String,
    #[serde(flatten)]
    pub kind: NicKind,
    /// The host side of a veth (bridged, p2p).
    pub host_name: String,
    pub hwaddr: String,
    pub mtu: Option<u32>,
}

/// What is wrong with a NIC device, for the user.
#[derive(Debug, thiserror::Error)]
#[error("device {device:?}: {why}")]
pub struct NicError {
    pub device: String,
    pub why: String,
}

fn nic_err(device: &str, why: impl Into<String>) -> NicError {
    NicError {
        device: device.to_string(),
        why: why.into(),
    }
}

/// The interface name inside the container: `name`, or the device's own name (as LXD does).
pub fn interface_name(device: &str, opts: &BTreeMap<String, String>) -> String {
    opts.get("name").cloned().unwrap_or_else(|| device.to_string())
}

/// Checks a NIC device's options on their own (the network it names is checked at start and
/// by the caller that knows the networks).
pub fn validate(device: &str, opts: &BTreeMap<String, String>) -> Result<(), NicError> {
    for key in opts.keys() {
        if !NIC_KEYS.contains(&key.as_str()) {
            return Err(nic_err(
                device,
                format!("unknown NIC option {key:?} (known: {})", NIC_KEYS.join(", ")),
            ));
        }
    }
    let network = opts.get("network").filter(|v| !v.is_empty());
    let nictype = opts.get("nictype").filter(|v| !v.is_empty());
    match (network, nictype) {
        (Some(_), Some(_)) => {
            return Err(nic_err(
                device,
                "\"nictype\" and \"network\" cannot be used together: the network decides the NIC type",
            ))
        }
        (Some(_), None) => {
            if opts.contains_key("parent") {
                return Err(nic_err(
                    device,
                    "\"parent\" and \"network\" cannot be used together: the network names its interface",
                ));
            }
        }
        (None, Some(t)) => match t.as_str() {
            "bridged" | "macvlan" => {
                if opts.get("parent").is_none_or(|p| p.is_empty()) {
                    return Err(nic_err(
                        device,
                        format!(
                            "nictype {t} needs \"parent\" (the host {})",
                            if t == "bridged" { "bridge" } else { "interface" }
                        ),
                    ));
                }
            }
            "p2p" => {}
            other => {
                return Err(nic_err(
                    device,
                    format!("unsupported nictype {other:?} (supported: bridged, macvlan, p2p)"),
                ))
            }
        },
        (None, None) => {
            return Err(nic_err(
                device,
                "a NIC needs \"network\" (a managed network) or \"nictype\" with \"parent\"",
            ))
        }
    }
    let name = interface_name(device, opts);
    link::validate_name(&name).map_err(|e| nic_err(device, format!("interface name: {e}")))?;
    if let Some(h) = opts.get("host_name") {
        link::validate_name(h).map_err(|e| nic_err(device, format!("host_name: {e}")))?;
    }
    if let Some(mac) = opts.get("hwaddr") {
        mac.parse::<MacAddr>().map_err(|e| nic_err(device, e.to_string()))?;
    }
    if let Some(mtu) = opts.get("mtu") {
        match mtu.parse::<u32>() {
            Ok(m) if (68..=65535).contains(&m) => {}
            _ => return Err(nic_err(device, format!("mtu {mtu:?} is not a number from 68 to 65535"))),
        }
    }
    if let Some(a) = opts.get("ipv4.address") {
        a.parse::<Ipv4Addr>()
            .map_err(|_| nic_err(device, format!("ipv4.address {a:?} is not an IPv4 address")))?;
    }
    if let Some(a) = opts.get("ipv6.address") {
        a.parse::<Ipv6Addr>()
            .map_err(|_| nic_err(device, format!("ipv6.address {a:?} is not an IPv6 address")))?;
    }
    if let Some(mode) = opts.get("mode") {
        macvlan_mode(mode).ok_or_else(|| {
            nic_err(
                device,
                format!("mode {mode:?} is not one of bridge, private, vepa, passthru"),
            )
        })?;
    }
    Ok(())
}

fn macvlan_mode(mode: &str) -> Option<MacvlanMode> {
    Some(match mode {
        "bridge" => MacvlanMode::Bridge,
        "private" => MacvlanMode::Private,
        "vepa" => MacvlanMode::Vepa,
        "passthru" => MacvlanMode::Passthru,
        _ => return None,
    })
}

/// The volatile key holding a NIC's generated MAC, kept so it survives restarts.
pub fn hwaddr_key(device: &str) -> String {
    format!("volatile.{device}.hwaddr")
}

/// The volatile key recording a running NIC's host-side interface (LXD's name).
pub fn host_name_key(device: &str) -> String {
    format!("volatile.{device}.host_name")
}

/// The NIC's MAC: its `hwaddr`, else the one recorded in `volatile`.
pub fn hwaddr(device: &str, opts: &BTreeMap<String, String>, config: &BTreeMap<String, String>) -> Option<String> {
    opts.get("hwaddr").or_else(|| config.get(&hwaddr_key(device))).cloned()
}

/// Writes the plans where the monitor will read them (an empty list removes the file).
pub fn write_plans(run_dir: &Path, plans: &[NicPlan]) -> std::io::Result<()> {
    let path = run_dir.join(PLAN_FILE);
    if plans.is_empty() {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    std::fs::create_dir_all(run_dir)?;
    let data = serde_json::to_vec_pretty(plans).map_err(std::io::Error::other)?;
    std::fs::write(path, data)
}

/// The plans in `run_dir` (none when there is no file).
pub fn read_plans(run_dir: &Path) -> Result<Vec<NicPlan>, String> {
    let path = run_dir.join(PLAN_FILE);
    match std::fs::read(&path) {
        Ok(data) => serde_json::from_slice(&data).map_err(|e| format!("invalid {}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// The runtime's host set-up for a monitor: plugs every planned NIC into init's namespace.
pub fn plug_planned(run_dir: &Path, init_pid: i32) -> Result<(), String> {
    let plans = read_plans(run_dir)?;
    if plans.is_empty() {
        return Ok(());
    }
    let netns = Netns::of_pid(init_pid).map_err(|e| e.to_string())?;
    let nl = Netlink::new().map_err(|e| e.to_string())?;
    for plan in &plans {
        plug_with(&nl, plan, &netns).map_err(|e| format!("device {:?}: {e}", plan.device))?;
    }
    Ok(())
}

/// Makes one NIC inside `netns` (hot-plug on a running container).
pub fn plug(plan: &NicPlan, netns: &Netns) -> Result<(), String> {
    let nl = Netlink::new().map_err(|e| e.to_string())?;
    plug_with(&nl, plan, netns)
}

fn plug_with(nl: &Netlink, plan: &NicPlan, netns: &Netns) -> Result<(), String> {
    let mac: MacAddr = plan
        .hwaddr
        .parse()
        .map_err(|e: corral_network::mac::ParseMacError| e.to_string())?;
    let peer = PeerConfig {
        mac: Some(mac),
        mtu: plan.mtu,
        ..PeerConfig::named(&plan.name)
    };
    match &plan.kind {
        NicKind::Bridged { bridge } => {
            let spec = VethSpec {
                host_name: plan.host_name.clone(),
                peer_name: String::new(),
                bridge: Some(bridge.clone()),
                mtu: plan.mtu,
                host_mac: None,
                peer_mac: Some(mac),
            };
            nl.create_veth_in(&spec, netns, &peer).map_err(|e| e.to_string())
        }
        NicKind::P2p => {
            let spec = VethSpec {
                host_name: plan.host_name.clone(),
                peer_name: String::new(),
                bridge: None,
                mtu: plan.mtu,
                host_mac: None,
                peer_mac: Some(mac),
            };
            nl.create_veth_in(&spec, netns, &peer).map_err(|e| e.to_string())
        }
        NicKind::Macvlan { parent } => {
            // Made on the host under a temporary name, then moved in and renamed.
            let spec = MacvlanSpec {
                name: plan.host_name.clone(),
                parent: parent.clone(),
                mode: MacvlanMode::Bridge,
                mtu: plan.mtu,
                mac: Some(mac),
            };
            nl.create_macvlan(&spec).map_err(|e| e.to_string())?;
            nl.move_and_configure(&plan.host_name, netns, &peer)
                .map_err(|e| e.to_string())
        }
    }
}

/// Removes a NIC from a running container (hot-unplug).
pub fn unplug(plan: &NicPlan, netns: &Netns) -> Result<(), String> {
    match &plan.kind {
        // Deleting the host side of a veth deletes the pair.
        NicKind::Bridged { .. } | NicKind::P2p => {
            let nl = Netlink::new().map_err(|e| e.to_string())?;
            nl.delete_link(&plan.host_name).map(|_| ()).map_err(|e| e.to_string())
        }
        NicKind::Macvlan { .. } => netns
            .netlink(|nl| nl.delete_link(&plan.name).map(|_| ()))
            .map_err(|e| e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn good_nics_pass() {
        for o in [
            opts(&[("type", "nic"), ("network", "corralbr0")]),
            opts(&[
                ("type", "nic"),
                ("network", "n"),
                ("name", "eth1"),
                ("hwaddr", "00:16:3e:01:02:03"),
            ]),
            opts(&[
                ("type", "nic"),
                ("nictype", "bridged"),
                ("parent", "br0"),
                ("mtu", "1400"),
            ]),
            opts(&[
                ("type", "nic"),
                ("nictype", "macvlan"),
                ("parent", "dummy0"),
                ("mode", "bridge"),
            ]),
            opts(&[("type", "nic"), ("nictype", "p2p"), ("ipv4.address", "10.0.0.5")]),
        ] {
            validate("eth0", &o).unwrap_or_else(|e| panic!("{o:?}: {e}"));
        }
    }

    #[test]
    fn bad_nics_say_what_is_wrong() {
        let cases = [
            (opts(&[("type", "nic")]), "needs \"network\""),
            (
                opts(&[("type", "nic"), ("network", "n"), ("nictype", "bridged")]),
                "cannot be used together",
            ),
            (
                opts(&[("type", "nic"), ("network", "n"), ("parent", "x")]),
                "\"parent\" and \"network\"",
            ),
            (opts(&[("type", "nic"), ("nictype", "bridged")]), "needs \"parent\""),
            (
                opts(&[("type", "nic"), ("nictype", "sriov"), ("parent", "x")]),
                "unsupported nictype",
            ),
            (
                opts(&[("type", "nic"), ("network", "n"), ("hwaddr", "zz")]),
                "invalid MAC",
            ),
            (opts(&[("type", "nic"), ("network", "n"), ("mtu", "9")]), "mtu"),
            (
                opts(&[("type", "nic"), ("network", "n"), ("ipv4.address", "10.0.0")]),
                "ipv4.address",
            ),
            (
                opts(&[("type", "nic"), ("network", "n"), ("name", "a/b")]),
                "interface name",
            ),
            (
                opts(&[("type", "nic"), ("network", "n"), ("colour", "red")]),
                "unknown NIC option \"colour\"",
            ),
        ];
        for (o, want) in cases {
            let e = validate("eth0", &o).expect_err(want).to_string();
            assert!(e.contains(want) && e.starts_with("device \"eth0\""), "{o:?}: {e}");
        }
    }

    #[test]
    fn plans_round_trip_through_the_run_dir() {
        let dir = std::env::temp_dir().join(format!("corral-nics-{}", std::process::id()));
        let plan = NicPlan {
            device: "eth0".into(),
            name: "eth0".into(),
            kind: NicKind::Bridged {
                bridge: "corralbr0".into(),
            },
            host_name: "corr12345678".into(),
            hwaddr: "00:16:3e:01:02:03".into(),
            mtu: None,
        };
        write_plans(&dir, std::slice::from_ref(&plan)).unwrap();
        assert_eq!(read_plans(&dir).unwrap(), vec![plan]);
        write_plans(&dir, &[]).unwrap();
        assert!(read_plans(&dir).unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
