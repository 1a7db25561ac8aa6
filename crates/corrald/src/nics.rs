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
    /// The host interface `parent` itself, moved into the container and back out at stop.
    Physical { parent: String },
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
    /// `limits.ingress` (to the instance) as tc writes rates (`100mbit`).
    #[serde(default)]
    pub limit_ingress: Option<String>,
    /// `limits.egress` (from the instance).
    #[serde(default)]
    pub limit_egress: Option<String>,
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
            "bridged" | "macvlan" | "physical" => {
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
                    format!("unsupported nictype {other:?} (supported: bridged, macvlan, p2p, physical)"),
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
    for key in ["limits.ingress", "limits.egress", "limits.max"] {
        if let Some(v) = opts.get(key) {
            tc_rate(v).ok_or_else(|| {
                nic_err(
                    device,
                    format!("{key} {v:?} is not a rate: use a number and bit, kbit, Mbit, Gbit or Tbit (100Mbit)"),
                )
            })?;
            if opts.get("nictype").is_some_and(|t| t == "macvlan") {
                return Err(nic_err(
                    device,
                    format!("{key} needs a veth NIC (bridged or p2p), not macvlan"),
                ));
            }
        }
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

/// A rate in LXD's form (`100Mbit`, `1Gbit`, `500kbit`, `8bit`) as tc takes it; None if bad.
pub fn tc_rate(value: &str) -> Option<String> {
    let v = value.trim();
    let digits = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(digits);
    let n: u64 = num.parse().ok().filter(|n| *n > 0)?;
    let unit = match unit.to_ascii_lowercase().as_str() {
        "bit" => "bit",
        "kbit" => "kbit",
        "mbit" => "mbit",
        "gbit" => "gbit",
        "tbit" => "tbit",
        _ => return None,
    };
    Some(format!("{n}{unit}"))
}

/// The NIC's rate limits (ingress, egress), `limits.max` standing for both.
pub fn rate_limits(opts: &BTreeMap<String, String>) -> (Option<String>, Option<String>) {
    let get = |k: &str| opts.get(k).or_else(|| opts.get("limits.max")).and_then(|v| tc_rate(v));
    (get("limits.ingress"), get("limits.egress"))
}

/// Limits on the host side of a veth: what the host sends into it is what the instance
/// receives (a shaping qdisc), what arrives from it is what the instance sends (a policer).
/// The policer is an nftables `netdev` table on the veth's ingress rather than tc's police
/// action, which kernels without act_police lack; it drops what exceeds the rate, as LXD's.
fn apply_limits(host_name: &str, ingress: Option<&str>, egress: Option<&str>) -> Result<(), String> {
    let tc = |args: &[&str]| -> Result<(), String> {
        let out = std::process::Command::new("tc")
            .args(args)
            .output()
            .map_err(|e| format!("cannot run tc: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "tc {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    };
    if let Some(rate) = ingress {
        tc(&[
            "qdisc", "replace", "dev", host_name, "root", "handle", "1:0", "htb", "default", "10",
        ])?;
        tc(&[
            "class", "replace", "dev", host_name, "parent", "1:0", "classid", "1:10", "htb", "rate", rate,
        ])?;
    }
    if let Some(rate) = egress {
        police_egress(host_name, rate)?;
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
    readdress(run_dir, &netns)
}

/// For a restore: the file in which the daemon puts the addresses the container had at its
/// checkpoint (`{"addresses": {"eth0": ["10.0.0.5/24"]}, "gateway4": "10.0.0.1"}`).
pub const RESTORE_ADDRESSES: &str = "restore-network.json";

/// Sets those addresses before the restored processes resume: a socket bound to one of them
/// (a DHCP client's) cannot be restored without it.
fn readdress(run_dir: &Path, netns: &Netns) -> Result<(), String> {
    let path = run_dir.join(RESTORE_ADDRESSES);
    let Ok(raw) = std::fs::read(&path) else {
        return Ok(());
    };
    let saved: serde_json::Value =
        serde_json::from_slice(&raw).map_err(|e| format!("invalid {}: {e}", path.display()))?;
    let addresses: Vec<(String, ipnet::IpNet)> = saved["addresses"]
        .as_object()
        .into_iter()
        .flatten()
        .flat_map(|(iface, list)| {
            list.as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str()?.parse().ok())
                .map(move |a| (iface.clone(), a))
        })
        .collect();
    let gateway: Option<std::net::IpAddr> = saved["gateway4"].as_str().and_then(|g| g.parse().ok());
    netns
        .netlink(|nl| {
            for (iface, a) in &addresses {
                if !nl.addresses(iface).unwrap_or_default().contains(a) {
                    nl.add_address(iface, *a)?;
                }
            }
            if let Some(gw) = gateway {
                // EEXIST when the plan already routes.
                let _ = nl.add_default_route(gw);
            }
            Ok(())
        })
        .map_err(|e| format!("cannot set the checkpointed addresses again: {e}"))
}

/// Makes one NIC inside `netns` (hot-plug on a running container).
pub fn plug(plan: &NicPlan, netns: &Netns) -> Result<(), String> {
    let nl = Netlink::new().map_err(|e| e.to_string())?;
    plug_with(&nl, plan, netns)
}

fn plug_with(nl: &Netlink, plan: &NicPlan, netns: &Netns) -> Result<(), String> {
    let mac: Option<MacAddr> = match plan.hwaddr.as_str() {
        "" => None,
        m => Some(
            m.parse()
                .map_err(|e: corral_network::mac::ParseMacError| e.to_string())?,
        ),
    };
    let peer = PeerConfig {
        mac,
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
                peer_mac: mac,
            };
            nl.create_veth_in(&spec, netns, &peer).map_err(|e| e.to_string())?;
            limit_or_undo(nl, plan)
        }
        NicKind::P2p => {
            let spec = VethSpec {
                host_name: plan.host_name.clone(),
                peer_name: String::new(),
                bridge: None,
                mtu: plan.mtu,
                host_mac: None,
                peer_mac: mac,
            };
            nl.create_veth_in(&spec, netns, &peer).map_err(|e| e.to_string())?;
            limit_or_undo(nl, plan)
        }
        NicKind::Physical { parent } => nl.move_and_configure(parent, netns, &peer).map_err(|e| e.to_string()),
        NicKind::Macvlan { parent } => {
            // Made on the host under a temporary name, then moved in and renamed.
            let spec = MacvlanSpec {
                name: plan.host_name.clone(),
                parent: parent.clone(),
                mode: MacvlanMode::Bridge,
                mtu: plan.mtu,
                mac,
            };
            nl.create_macvlan(&spec).map_err(|e| e.to_string())?;
            nl.move_and_configure(&plan.host_name, netns, &peer)
                .map_err(|e| e.to_string())
        }
    }
}

/// The nftables table policing what a NIC's instance sends.
fn limit_table(host_name: &str) -> String {
    format!("corral_nic_{host_name}")
}

/// Bits per second of a rate [`tc_rate`] wrote.
fn rate_bits(rate: &str) -> Option<u64> {
    let digits = rate.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = rate.split_at(digits);
    let mult: u64 = match unit {
        "bit" => 1,
        "kbit" => 1_000,
        "mbit" => 1_000_000,
        "gbit" => 1_000_000_000,
        "tbit" => 1_000_000_000_000,
        _ => return None,
    };
    n.parse::<u64>().ok()?.checked_mul(mult)
}

fn police_egress(host_name: &str, rate: &str) -> Result<(), String> {
    let bytes = rate_bits(rate)
        .ok_or_else(|| format!("bad rate {rate}"))?
        .div_ceil(8)
        .max(1);
    let burst = (bytes / 10).max(16 * 1024);
    let table = limit_table(host_name);
    let script = format!(
        "table netdev {table}\ndelete table netdev {table}\ntable netdev {table} {{\n\tchain ingress {{\n\t\t\
         type filter hook ingress device \"{host_name}\" priority filter; policy accept;\n\t\t\
         limit rate over {bytes} bytes/second burst {burst} bytes drop\n\t}}\n}}\n"
    );
    run_nft(&script)
}

fn run_nft(script: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run nft: {e}"))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("nft: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Removes the egress policer of a NIC's host side, if any (its instance stopped, or the NIC
/// went): a netdev table outlives its device and would police a later one of the same name.
pub fn clear_limits(host_name: &str) {
    let table = limit_table(host_name);
    let _ = run_nft(&format!("table netdev {table}\ndelete table netdev {table}\n"));
}

/// Removes the policers whose host-side device is gone: those of instances that stopped while
/// no daemon ran to clear them ([`clear_limits`] runs at every stop the daemon sees). Run once at
/// start, so that a start without limits need not run `nft` in case one was left (19–50 ms a
/// start under load).
pub fn sweep_stale_limits() {
    let Ok(out) = std::process::Command::new("nft")
        .args(["list", "tables", "netdev"])
        .stderr(std::process::Stdio::null())
        .output()
    else {
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    // Asked over netlink: /sys/class/net shows the namespace sysfs was mounted in, which need
    // not be the daemon's.
    let Ok(nl) = Netlink::new() else { return };
    let stale: String = text
        .lines()
        .filter_map(|line| line.strip_prefix("table netdev "))
        .filter_map(|table| Some((table, table.strip_prefix(limit_table("").as_str())?)))
        .filter(|(_, host_name)| matches!(nl.link(host_name), Ok(None)))
        .map(|(table, _)| format!("delete table netdev {table}\n"))
        .collect();
    if !stale.is_empty() {
        if let Err(e) = run_nft(&stale) {
            tracing::warn!(error = %e, "cannot remove the policers of NICs that are gone");
        }
    }
}

fn limit_or_undo(nl: &Netlink, plan: &NicPlan) -> Result<(), String> {
    if plan.limit_ingress.is_none() && plan.limit_egress.is_none() {
        return Ok(());
    }
    let limited = apply_limits(
        &plan.host_name,
        plan.limit_ingress.as_deref(),
        plan.limit_egress.as_deref(),
    );
    if limited.is_err() {
        let _ = nl.delete_link(&plan.host_name);
    }
    limited
}

/// Removes a NIC from a running container (hot-unplug).
pub fn unplug(plan: &NicPlan, netns: &Netns) -> Result<(), String> {
    match &plan.kind {
        // Deleting the host side of a veth deletes the pair.
        NicKind::Bridged { .. } | NicKind::P2p => {
            let nl = Netlink::new().map_err(|e| e.to_string())?;
            nl.delete_link(&plan.host_name).map_err(|e| e.to_string())?;
            clear_limits(&plan.host_name);
            Ok(())
        }
        NicKind::Macvlan { .. } => netns
            .netlink(|nl| nl.delete_link(&plan.name).map(|_| ()))
            .map_err(|e| e.to_string()),
        // Back to the host under its own name (a physical device would otherwise only come
        // back when the container's namespace dies, under the container's name for it).
        NicKind::Physical { parent } => {
            let host = Netns::current().map_err(|e| e.to_string())?;
            netns
                .netlink(|nl| {
                    let Some(link) = nl.link(&plan.name)? else {
                        return Ok(());
                    };
                    if link.name != *parent {
                        nl.set_down(&plan.name)?;
                        nl.rename(&plan.name, parent)?;
                    }
                    nl.move_to_netns(parent, &host)
                })
                .map_err(|e| e.to_string())
        }
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
    fn rates_become_bits_per_second() {
        assert_eq!(rate_bits("2mbit"), Some(2_000_000));
        assert_eq!(rate_bits("8bit"), Some(8));
        assert_eq!(rate_bits("1gbit"), Some(1_000_000_000));
        assert_eq!(rate_bits("x"), None);
    }

    #[test]
    fn rates_are_read_as_lxd_writes_them() {
        assert_eq!(tc_rate("100Mbit").as_deref(), Some("100mbit"));
        assert_eq!(tc_rate("8bit").as_deref(), Some("8bit"));
        for bad in ["", "0Mbit", "Mbit", "10MB", "10 Mbit", "1.5Gbit"] {
            assert_eq!(tc_rate(bad), None, "{bad}");
        }
        let o = opts(&[("limits.max", "1Gbit"), ("limits.egress", "5Mbit")]);
        assert_eq!(rate_limits(&o), (Some("1gbit".into()), Some("5mbit".into())));
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
            limit_ingress: Some("10mbit".into()),
            limit_egress: None,
        };
        write_plans(&dir, std::slice::from_ref(&plan)).unwrap();
        assert_eq!(read_plans(&dir).unwrap(), vec![plan]);
        write_plans(&dir, &[]).unwrap();
        assert!(read_plans(&dir).unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
