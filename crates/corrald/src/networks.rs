//! The network service: managed networks' records, and bringing them to life on this host.
//!
//! A managed bridge is a bridge interface named after the network, its gateway addresses, one
//! nftables table (NAT, DHCP/DNS accepts, forwards) and one dnsmasq. All of it is derived from
//! the record by [`Networks::apply`], which is idempotent: it runs at create, at every change,
//! and at daemon start (a reboot lost the bridge; a daemon restart finds it and its dnsmasq
//! still there and adopts them). A `macvlan` network is only a record naming its parent.
//!
//! Every failure of a create undoes what it made; a failed change puts the old record back and
//! re-applies it. Knowing which instances use a network is the callers' business (the
//! instances service), which hands the static leases in through [`Networks::set_static_leases`].

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use corral_network::dnsmasq::{self, Dnsmasq, DnsmasqConfig, Ipv4Dhcp, Ipv6Dhcp, StaticLease, Upstream};
use corral_network::link::{self, BridgeSpec, LinkKind, Netlink};
use corral_network::nft::{self, FirewallSpec, PortForward, PortRange, Protocol};
use corral_network::subnet::{self, AddressSetting};
use corral_network::MacAddr;
use corral_store::{cas_json, get_json, Store};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::instances::{Result, ServiceError};

/// The bridge `corrald init --auto` creates.
pub const DEFAULT_BRIDGE: &str = "corralbr0";

/// A managed network as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct NetworkRecord {
    pub name: String,
    pub description: String,
    /// `bridge` or `macvlan`.
    pub kind: String,
    pub config: BTreeMap<String, String>,
    pub forwards: Vec<corral_api::NetworkForward>,
}

pub fn network_key(name: &str) -> String {
    format!("/networks/{name}")
}

fn bad(msg: impl Into<String>) -> ServiceError {
    ServiceError::BadRequest(msg.into())
}

fn internal(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::Internal(e.to_string())
}

/// Keys of a bridge network: name and what it takes.
const BRIDGE_KEYS: &[(&str, &str)] = &[
    (
        "ipv4.address",
        "auto, none, or the bridge's address with its prefix (10.1.2.1/24)",
    ),
    ("ipv4.nat", "true or false"),
    ("ipv4.dhcp", "true or false"),
    (
        "ipv4.dhcp.ranges",
        "comma-separated FIRST-LAST ranges inside the subnet",
    ),
    ("ipv4.dhcp.expiry", "a lease time (1h, 45m, 3600, infinite)"),
    (
        "ipv6.address",
        "auto, none, or the bridge's address with its prefix (fd42::1/64)",
    ),
    ("ipv6.nat", "true or false"),
    ("ipv6.dhcp", "true or false"),
    ("ipv6.dhcp.stateful", "true or false"),
    (
        "ipv6.dhcp.ranges",
        "comma-separated FIRST-LAST ranges inside the subnet",
    ),
    ("ipv6.dhcp.expiry", "a lease time (1h, 45m, 3600, infinite)"),
    ("dns.domain", "a domain name (default corral)"),
    ("bridge.mtu", "a number from 68 to 65535"),
    ("bridge.hwaddr", "a MAC address"),
    ("raw.dnsmasq", "dnsmasq configuration lines"),
];

const MACVLAN_KEYS: &[(&str, &str)] = &[
    ("parent", "the host interface the macvlan NICs sit on"),
    ("mtu", "a number from 68 to 65535"),
];

fn keys_for(kind: &str) -> &'static [(&'static str, &'static str)] {
    match kind {
        "macvlan" => MACVLAN_KEYS,
        _ => BRIDGE_KEYS,
    }
}

fn parse_bool(key: &str, v: &str) -> Result<bool> {
    match v {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" | "" => Ok(false),
        _ => Err(bad(format!("invalid value {v:?} for {key}: use true or false"))),
    }
}

fn flag(config: &BTreeMap<String, String>, key: &str, default: bool) -> bool {
    config
        .get(key)
        .map(|v| parse_bool(key, v).unwrap_or(default))
        .unwrap_or(default)
}

/// LXD's rule for network names, plus the kernel's for interface names (a bridge is named
/// after its network).
pub fn validate_name(name: &str) -> Result<()> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if name.is_empty() || !ok_chars || name.starts_with('-') || name.contains(':') || name.contains('/') {
        return Err(bad(format!(
            "invalid network name {name:?}: use letters, digits, '-', '_' and '.', not starting with '-'"
        )));
    }
    link::validate_name(name)
        .map_err(|e| bad(format!("invalid network name {name:?}: {e} (it names an interface)")))?;
    if name == "none" || name == "default" {
        return Err(bad(format!("invalid network name {name:?}: reserved")));
    }
    Ok(())
}

/// Checks a network's config for its type.
pub fn validate_config(kind: &str, config: &BTreeMap<String, String>) -> Result<()> {
    let known = keys_for(kind);
    for (k, v) in config {
        if k.starts_with("user.") || k.starts_with("volatile.") {
            continue;
        }
        if !known.iter().any(|(name, _)| name == k) {
            let names: Vec<&str> = known.iter().map(|(n, _)| *n).collect();
            return Err(bad(format!(
                "unknown {kind} network option {k:?} (known: {}, user.*)",
                names.join(", ")
            )));
        }
        let hint = || known.iter().find(|(n, _)| n == k).map(|(_, h)| *h).unwrap_or("");
        let invalid = |why: String| bad(format!("invalid value {v:?} for {k}: {why}; expected {}", hint()));
        match k.as_str() {
            "ipv4.nat" | "ipv4.dhcp" | "ipv6.nat" | "ipv6.dhcp" | "ipv6.dhcp.stateful" => {
                parse_bool(k, v)?;
            }
            "ipv4.address" => {
                subnet::parse_ipv4_setting(v).map_err(|e| invalid(e.to_string()))?;
            }
            "ipv6.address" => {
                subnet::parse_ipv6_setting(v).map_err(|e| invalid(e.to_string()))?;
            }
            "bridge.mtu" | "mtu" => match v.parse::<u32>() {
                Ok(m) if (68..=65535).contains(&m) => {}
                _ => return Err(invalid("out of range".into())),
            },
            "bridge.hwaddr" => {
                v.parse::<MacAddr>().map_err(|e| invalid(e.to_string()))?;
            }
            "parent" => {
                link::validate_name(v).map_err(|e| invalid(e.to_string()))?;
            }
            _ => {}
        }
    }
    if kind == "bridge" {
        // The ranges only mean something against the subnet.
        if let (Some(r), Some(AddressSetting::Static(net))) = (
            config.get("ipv4.dhcp.ranges"),
            config
                .get("ipv4.address")
                .and_then(|a| subnet::parse_ipv4_setting(a).ok()),
        ) {
            subnet::parse_ipv4_ranges(r, net.trunc()).map_err(|e| bad(format!("ipv4.dhcp.ranges: {e}")))?;
        }
        if let (Some(r), Some(AddressSetting::Static(net))) = (
            config.get("ipv6.dhcp.ranges"),
            config
                .get("ipv6.address")
                .and_then(|a| subnet::parse_ipv6_setting(a).ok()),
        ) {
            subnet::parse_ipv6_ranges(r, net.trunc()).map_err(|e| bad(format!("ipv6.dhcp.ranges: {e}")))?;
        }
        for key in ["ipv4.dhcp.expiry", "ipv6.dhcp.expiry"] {
            if let Some(v) = config.get(key) {
                let test = DnsmasqConfig {
                    ipv4: Some(Ipv4Dhcp {
                        address: "10.0.0.1/24".parse().expect("a constant"),
                        dhcp: true,
                        ranges: Vec::new(),
                        lease_time: v.clone(),
                    }),
                    ..DnsmasqConfig::new("x", "/x")
                };
                test.render().map_err(|e| bad(format!("{key}: {e}")))?;
            }
        }
        if let Some(d) = config.get("dns.domain") {
            DnsmasqConfig {
                dns_domain: d.clone(),
                ..DnsmasqConfig::new("x", "/x")
            }
            .render()
            .map_err(|e| bad(format!("dns.domain: {e}")))?;
        }
    }
    if kind == "macvlan" && config.get("parent").is_none_or(|p| p.is_empty()) {
        return Err(bad("a macvlan network needs \"parent\", the host interface to sit on"));
    }
    Ok(())
}

/// The bridge's subnets from its config.
fn subnets(config: &BTreeMap<String, String>) -> Vec<IpNet> {
    let mut out = Vec::new();
    if let Some(AddressSetting::Static(n)) = config
        .get("ipv4.address")
        .and_then(|a| subnet::parse_ipv4_setting(a).ok())
    {
        out.push(IpNet::V4(n));
    }
    if let Some(AddressSetting::Static(n)) = config
        .get("ipv6.address")
        .and_then(|a| subnet::parse_ipv6_setting(a).ok())
    {
        out.push(IpNet::V6(n));
    }
    out
}

/// The network service.
pub struct Networks {
    store: Arc<dyn Store>,
    /// Holds one state directory per network (dnsmasq's files).
    dir: PathBuf,
    dnsmasq: Mutex<HashMap<String, Dnsmasq>>,
    /// Serialises changes to the host's interfaces and tables.
    apply_lock: Mutex<()>,
}

impl Networks {
    pub fn new(store: Arc<dyn Store>, dir: PathBuf) -> Networks {
        Networks {
            store,
            dir,
            dnsmasq: Mutex::new(HashMap::new()),
            apply_lock: Mutex::new(()),
        }
    }

    fn state_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn get(&self, name: &str) -> Result<(NetworkRecord, i64)> {
        get_json::<NetworkRecord>(&*self.store, &network_key(name))?
            .ok_or_else(|| ServiceError::NotFound(format!("Network not found: {name}")))
    }

    pub fn list(&self) -> Result<Vec<NetworkRecord>> {
        self.store
            .list("/networks/")?
            .into_iter()
            .map(|kv| {
                serde_json::from_slice(&kv.value)
                    .map_err(|e| ServiceError::Internal(format!("corrupt record {}: {e}", kv.key)))
            })
            .collect()
    }

    /// Host interfaces that are not managed networks, as (name, kind) (LXD lists them with
    /// `managed: false`).
    pub fn host_interfaces(&self) -> Result<Vec<(String, &'static str)>> {
        let nl = Netlink::new().map_err(internal)?;
        let managed: Vec<String> = self.list()?.into_iter().map(|n| n.name).collect();
        let mut out = Vec::new();
        for l in nl.list_links().map_err(internal)? {
            if managed.contains(&l.name) || l.name.starts_with(link::VETH_PREFIX) {
                continue;
            }
            let kind = match l.kind {
                LinkKind::Loopback => "loopback",
                LinkKind::Bridge => "bridge",
                LinkKind::Macvlan => "macvlan",
                LinkKind::Device => "physical",
                LinkKind::Veth | LinkKind::Other(_) => "unknown",
            };
            out.push((l.name, kind));
        }
        Ok(out)
    }

    /// Creates a managed network and brings it up. `auto` addresses are resolved to free
    /// subnets; on any failure nothing is left (no record, bridge, table or dnsmasq).
    pub fn create(
        &self,
        name: &str,
        kind: &str,
        description: &str,
        mut config: BTreeMap<String, String>,
    ) -> Result<NetworkRecord> {
        validate_name(name)?;
        let kind = if kind.is_empty() { "bridge" } else { kind };
        if kind != "bridge" && kind != "macvlan" {
            return Err(bad(format!(
                "unsupported network type {kind:?} (supported: bridge, macvlan)"
            )));
        }
        validate_config(kind, &config)?;
        if self.store.get(&network_key(name))?.is_some() {
            return Err(ServiceError::Conflict(format!("Network {name:?} already exists")));
        }
        let _guard = self.apply_lock.lock().unwrap_or_else(|e| e.into_inner());
        if kind == "bridge" {
            let nl = Netlink::new().map_err(internal)?;
            if nl.link(name).map_err(internal)?.is_some() {
                return Err(ServiceError::Conflict(format!(
                    "an interface named {name:?} already exists on the host; pick another network name"
                )));
            }
            // Unset addresses are `auto`, as in LXD.
            for key in ["ipv4.address", "ipv6.address"] {
                config.entry(key.into()).or_insert_with(|| "auto".into());
            }
            self.resolve_auto(name, &mut config)?;
        }
        let rec = NetworkRecord {
            name: name.to_string(),
            description: description.to_string(),
            kind: kind.to_string(),
            config,
            forwards: Vec::new(),
        };
        if let Err(e) = self.apply_locked(&rec, &[]) {
            self.tear_down_locked(&rec);
            return Err(e);
        }
        match cas_json(&*self.store, &network_key(name), None, &rec) {
            Ok(Ok(_)) => Ok(rec),
            other => {
                self.tear_down_locked(&rec);
                match other {
                    Err(e) => Err(e.into()),
                    _ => Err(ServiceError::Conflict(format!("Network {name:?} already exists"))),
                }
            }
        }
    }

    /// Replaces `auto` addresses with free subnets (with NAT on, as LXD), and checks that every
    /// subnet is free: not routed on the host (but for this bridge's own) nor another network's.
    fn resolve_auto(&self, name: &str, config: &mut BTreeMap<String, String>) -> Result<()> {
        let others: Vec<(String, IpNet)> = self
            .list()?
            .into_iter()
            .filter(|n| n.name != name)
            .flat_map(|n| subnets(&n.config).into_iter().map(move |s| (n.name.clone(), s)))
            .collect();
        let other_nets: Vec<IpNet> = others.iter().map(|(_, n)| *n).collect();
        if config.get("ipv4.address").is_some_and(|v| v == "auto") {
            let picked = subnet::pick_ipv4_subnet_for_host(name, &other_nets).map_err(|e| bad(e.to_string()))?;
            config.insert("ipv4.address".into(), picked.to_string());
            config.entry("ipv4.nat".into()).or_insert_with(|| "true".into());
        }
        if config.get("ipv6.address").is_some_and(|v| v == "auto") {
            let picked = subnet::random_ipv6_ula_for_host(&other_nets).map_err(|e| bad(e.to_string()))?;
            config.insert("ipv6.address".into(), picked.to_string());
            config.entry("ipv6.nat".into()).or_insert_with(|| "true".into());
        }
        let nl = Netlink::new().map_err(internal)?;
        let own: Vec<IpNet> = match nl.link(name).map_err(internal)? {
            Some(_) => nl
                .addresses(name)
                .map_err(internal)?
                .iter()
                .map(|a| a.trunc())
                .collect(),
            None => Vec::new(),
        };
        let host: Vec<IpNet> = nl
            .networks_in_use()
            .map_err(internal)?
            .into_iter()
            // Its own addresses' subnets and local routes.
            .filter(|n| !own.iter().any(|o| subnet::overlaps(o, n)))
            .collect();
        for s in subnets(config) {
            subnet::check_no_overlap(s, &host, &others).map_err(|e| bad(e.to_string()))?;
        }
        Ok(())
    }

    /// Replaces a network's description and config (PUT; PATCH merges before calling). The
    /// running state follows; if it cannot, the old config is put back.
    pub fn update(
        &self,
        name: &str,
        description: &str,
        mut config: BTreeMap<String, String>,
        etag: Option<i64>,
        leases: &[StaticLease],
    ) -> Result<NetworkRecord> {
        let (old, rev) = self.get(name)?;
        if etag.is_some_and(|e| e != rev) {
            return Err(ServiceError::PreconditionFailed(
                "ETag doesn't match the current state".into(),
            ));
        }
        validate_config(&old.kind, &config)?;
        let _guard = self.apply_lock.lock().unwrap_or_else(|e| e.into_inner());
        if old.kind == "bridge" {
            self.resolve_auto(name, &mut config)?;
        }
        let new = NetworkRecord {
            description: description.to_string(),
            config,
            ..old.clone()
        };
        if let Err(e) = self.apply_locked(&new, leases) {
            let _ = self.apply_locked(&old, leases);
            return Err(e);
        }
        match cas_json(&*self.store, &network_key(name), Some(rev), &new)? {
            Ok(_) => Ok(new),
            Err(_) => {
                let _ = self.apply_locked(&old, leases);
                Err(ServiceError::PreconditionFailed(
                    "the network changed meanwhile; read it again and retry".into(),
                ))
            }
        }
    }

    /// Replaces the forwards of a network and applies them.
    pub fn set_forwards(
        &self,
        name: &str,
        forwards: Vec<corral_api::NetworkForward>,
        leases: &[StaticLease],
    ) -> Result<()> {
        let (old, rev) = self.get(name)?;
        let _guard = self.apply_lock.lock().unwrap_or_else(|e| e.into_inner());
        let new = NetworkRecord {
            forwards,
            ..old.clone()
        };
        firewall_spec(&new)?;
        self.apply_locked(&new, leases)?;
        match cas_json(&*self.store, &network_key(name), Some(rev), &new)? {
            Ok(_) => Ok(()),
            Err(_) => {
                let _ = self.apply_locked(&old, leases);
                Err(ServiceError::Conflict("the network changed meanwhile; retry".into()))
            }
        }
    }

    /// Deletes a network nobody uses (the caller checked) and everything it made.
    pub fn delete(&self, name: &str) -> Result<()> {
        let (rec, _) = self.get(name)?;
        let _guard = self.apply_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.tear_down_locked(&rec);
        self.store.delete(&network_key(name))?;
        Ok(())
    }

    /// Renames a network nobody uses (the caller checked): its bridge goes and comes back under
    /// the new name.
    pub fn rename(&self, name: &str, new_name: &str) -> Result<()> {
        validate_name(new_name)?;
        if self.store.get(&network_key(new_name))?.is_some() {
            return Err(ServiceError::Conflict(format!("Network {new_name:?} already exists")));
        }
        let (rec, _) = self.get(name)?;
        let _guard = self.apply_lock.lock().unwrap_or_else(|e| e.into_inner());
        if rec.kind == "bridge"
            && Netlink::new()
                .map_err(internal)?
                .link(new_name)
                .map_err(internal)?
                .is_some()
        {
            return Err(ServiceError::Conflict(format!(
                "an interface named {new_name:?} already exists on the host"
            )));
        }
        let renamed = NetworkRecord {
            name: new_name.to_string(),
            ..rec.clone()
        };
        self.tear_down_locked(&rec);
        if let Err(e) = self.apply_locked(&renamed, &[]) {
            self.tear_down_locked(&renamed);
            let _ = self.apply_locked(&rec, &[]);
            return Err(e);
        }
        let txn = self.store.txn(
            &[corral_store::Compare::Missing(network_key(new_name))],
            &[
                corral_store::Op::Delete(network_key(name)),
                corral_store::Op::Put(network_key(new_name), serde_json::to_vec(&renamed).map_err(internal)?),
            ],
        )?;
        if !txn.succeeded {
            self.tear_down_locked(&renamed);
            let _ = self.apply_locked(&rec, &[]);
            return Err(ServiceError::Conflict(format!("Network {new_name:?} already exists")));
        }
        Ok(())
    }

    /// Brings every managed network up as its record says (daemon start): a bridge lost to a
    /// reboot is made again; a dnsmasq still running from before is adopted.
    pub fn restore_all(&self, leases: impl Fn(&str) -> Vec<StaticLease>) {
        // The list is read under the lock: one read before could hold a network deleted or
        // renamed meanwhile, which would then be brought back up.
        let _guard = self.apply_lock.lock().unwrap_or_else(|e| e.into_inner());
        let Ok(list) = self.list() else { return };
        for rec in list {
            if let Err(e) = self.apply_locked(&rec, &leases(&rec.name)) {
                tracing::warn!(network = %rec.name, error = %e, "cannot bring the network up");
            }
        }
    }

    /// Restarts the dnsmasq of any managed bridge whose dnsmasq died (called periodically).
    pub fn supervise(&self, leases: impl Fn(&str) -> Vec<StaticLease>) {
        let _guard = self.apply_lock.lock().unwrap_or_else(|e| e.into_inner());
        let Ok(list) = self.list() else { return };
        for rec in list.iter().filter(|r| r.kind == "bridge") {
            let alive = self
                .dnsmasq
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&rec.name)
                .is_some_and(Dnsmasq::is_alive);
            if !alive {
                tracing::warn!(network = %rec.name, "dnsmasq is gone; starting it again");
                if let Err(e) = self.apply_locked(rec, &leases(&rec.name)) {
                    tracing::warn!(network = %rec.name, error = %e, "cannot restart dnsmasq");
                }
            }
        }
    }

    /// Writes the static leases of a network (MAC, fixed addresses, instance name) and makes its
    /// dnsmasq read them.
    pub fn set_static_leases(&self, name: &str, leases: &[StaticLease]) -> Result<()> {
        let map = self.dnsmasq.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(name) {
            Some(d) => d.set_static_leases(leases).map_err(internal),
            None => dnsmasq::write_static_leases(&dnsmasq::DnsmasqPaths::new(self.state_dir(name)), leases)
                .map_err(internal),
        }
    }

    /// Forgets the DHCP leases of a deleted instance (its NICs' MACs for IPv4, its name for
    /// IPv6), so its addresses are free at once and no lease is left behind. dnsmasq reads its
    /// leases file only when it starts: the lines go while it is stopped, and it starts again.
    pub fn release(&self, name: &str, macs: &[MacAddr], hostname: &str, leases: &[StaticLease]) -> Result<()> {
        let (rec, _) = self.get(name)?;
        let paths = dnsmasq::DnsmasqPaths::new(self.state_dir(name));
        let _guard = self.apply_lock.lock().unwrap_or_else(|e| e.into_inner());
        let text = match std::fs::read_to_string(&paths.leases) {
            Ok(t) => t,
            Err(_) => return Ok(()),
        };
        let macs: Vec<String> = macs.iter().map(|m| m.to_string()).collect();
        let gone = |line: &str| {
            let f: Vec<&str> = line.split_whitespace().collect();
            f.len() >= 4
                && f[0] != "duid"
                && (macs.iter().any(|m| m.eq_ignore_ascii_case(f[1])) || (f[2].contains(':') && f[3] == hostname))
        };
        if !text.lines().any(gone) {
            return Ok(());
        }
        if let Some(d) = self.dnsmasq.lock().unwrap_or_else(|e| e.into_inner()).remove(name) {
            d.stop().map_err(internal)?;
        }
        let kept: String = text.lines().filter(|l| !gone(l)).map(|l| format!("{l}\n")).collect();
        std::fs::write(&paths.leases, kept).map_err(internal)?;
        self.apply_locked(&rec, leases)
    }

    /// The DHCP leases dnsmasq handed out on a network.
    pub fn dynamic_leases(&self, name: &str) -> Result<Vec<dnsmasq::Lease>> {
        dnsmasq::read_leases(&dnsmasq::DnsmasqPaths::new(self.state_dir(name))).map_err(internal)
    }

    /// The pid of a network's dnsmasq, if it runs.
    pub fn dnsmasq_pid(&self, name: &str) -> Option<i32> {
        self.dnsmasq
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .filter(|d| d.is_alive())
            .map(Dnsmasq::pid)
    }

    fn apply_locked(&self, rec: &NetworkRecord, leases: &[StaticLease]) -> Result<()> {
        if rec.kind != "bridge" {
            return Ok(());
        }
        let nl = Netlink::new().map_err(internal)?;
        let config = &rec.config;
        let bridge = BridgeSpec {
            name: rec.name.clone(),
            mtu: config.get("bridge.mtu").and_then(|m| m.parse().ok()),
            mac: config.get("bridge.hwaddr").and_then(|m| m.parse().ok()),
            addresses: subnets(config),
        };
        nl.create_bridge(&bridge)
            .map_err(|e| internal(format!("bridge {}: {e}", rec.name)))?;
        let v4 = subnets(config).iter().any(|s| s.addr().is_ipv4());
        let v6 = subnets(config).iter().any(|s| s.addr().is_ipv6());
        link::enable_forwarding(v4, v6).map_err(internal)?;
        nft::apply(&firewall_spec(rec)?).map_err(|e| internal(format!("firewall of {}: {e}", rec.name)))?;
        let dns = dnsmasq_config(rec, self.state_dir(&rec.name))?;
        dnsmasq::write_static_leases(&dns.paths(), leases).map_err(internal)?;
        let mut map = self.dnsmasq.lock().unwrap_or_else(|e| e.into_inner());
        let current = match map.remove(&rec.name) {
            Some(d) => Some(d),
            None => Dnsmasq::adopt(&dns.paths().pid).map_err(internal)?,
        };
        let wanted = dns.render().map_err(internal)?;
        let running = match current {
            Some(d)
                if d.is_alive() && std::fs::read_to_string(&dns.paths().config).ok().as_deref() == Some(&wanted) =>
            {
                d.reload().map_err(internal)?;
                d
            }
            Some(d) => d.restart(&dns).map_err(|e| dnsmasq_err(&rec.name, e))?,
            None => Dnsmasq::start(&dns).map_err(|e| dnsmasq_err(&rec.name, e))?,
        };
        map.insert(rec.name.clone(), running);
        Ok(())
    }

    /// Removes whatever of the network exists (best effort, each part on its own).
    fn tear_down_locked(&self, rec: &NetworkRecord) {
        if rec.kind != "bridge" {
            return;
        }
        let dir = self.state_dir(&rec.name);
        let running = self
            .dnsmasq
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&rec.name)
            .or_else(|| Dnsmasq::adopt(&dnsmasq::DnsmasqPaths::new(&dir).pid).ok().flatten());
        if let Some(d) = running {
            if let Err(e) = d.stop() {
                tracing::warn!(network = %rec.name, error = %e, "cannot stop dnsmasq");
            }
        }
        if let Err(e) = nft::delete(&rec.name) {
            tracing::warn!(network = %rec.name, error = %e, "cannot delete the firewall table");
        }
        match Netlink::new() {
            Ok(nl) => {
                if let Err(e) = nl.delete_link(&rec.name) {
                    tracing::warn!(network = %rec.name, error = %e, "cannot delete the bridge");
                }
            }
            Err(e) => tracing::warn!(error = %e, "netlink"),
        }
        let _ = dnsmasq::DnsmasqPaths::new(&dir).remove();
    }
}

/// dnsmasq refusing its configuration is the user's to fix (raw.dnsmasq, a DHCP range); the
/// rest is ours.
fn dnsmasq_err(network: &str, e: dnsmasq::DnsmasqError) -> ServiceError {
    match e {
        dnsmasq::DnsmasqError::StartFailed { .. } | dnsmasq::DnsmasqError::Invalid { .. } => {
            let text = e.to_string();
            let culprit = offending_line(&text)
                .map(|l| format!(" (the line: {l:?})"))
                .unwrap_or_default();
            bad(format!("dnsmasq of {network} refused its configuration: {text}{culprit}; check raw.dnsmasq and the DHCP settings"))
        }
        e => internal(format!("dnsmasq of {network}: {e}")),
    }
}

/// The configuration line dnsmasq's "... at line N of FILE" names (the file is ours, the line
/// usually the user's raw.dnsmasq).
fn offending_line(message: &str) -> Option<String> {
    let rest = &message[message.find("at line ")? + "at line ".len()..];
    let (n, rest) = rest.split_once(" of ")?;
    let n: usize = n.trim().parse().ok()?;
    let path = rest.split_whitespace().next()?;
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().nth(n.checked_sub(1)?).map(str::to_string)
}

/// The network's nftables table.
fn firewall_spec(rec: &NetworkRecord) -> Result<FirewallSpec> {
    let c = &rec.config;
    let ipv4 = match c.get("ipv4.address").map(|a| subnet::parse_ipv4_setting(a)) {
        Some(Ok(AddressSetting::Static(n))) => Some(n),
        _ => None,
    };
    let ipv6 = match c.get("ipv6.address").map(|a| subnet::parse_ipv6_setting(a)) {
        Some(Ok(AddressSetting::Static(n))) => Some(n),
        _ => None,
    };
    let mut forwards = Vec::new();
    for f in &rec.forwards {
        forwards.extend(port_forwards(f)?);
    }
    Ok(FirewallSpec {
        network: rec.name.clone(),
        bridge: rec.name.clone(),
        ipv4,
        ipv4_nat: ipv4.is_some() && flag(c, "ipv4.nat", false),
        ipv6,
        ipv6_nat: ipv6.is_some() && flag(c, "ipv6.nat", false),
        forwards,
    })
}

/// Parses `80`, `80-90` and lists of both.
pub fn parse_ports(spec: &str) -> Result<Vec<PortRange>> {
    let err = || {
        bad(format!(
            "invalid ports {spec:?}: use a port, a range FIRST-LAST, or a comma-separated list"
        ))
    };
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let first: u16 = a.trim().parse().map_err(|_| err())?;
        let last: u16 = b.trim().parse().map_err(|_| err())?;
        if first == 0 || last < first {
            return Err(err());
        }
        out.push(PortRange { first, last });
    }
    Ok(out)
}

/// The DNAT rules of one LXD forward.
pub fn port_forwards(f: &corral_api::NetworkForward) -> Result<Vec<PortForward>> {
    let listen: IpAddr = f.listen_address.parse().map_err(|_| {
        bad(format!(
            "forward listen address {:?} is not an IP address",
            f.listen_address
        ))
    })?;
    let mut out = Vec::new();
    if let Some(t) = f.config.get("target_address").filter(|t| !t.is_empty()) {
        let target: IpAddr = t
            .parse()
            .map_err(|_| bad(format!("forward target_address {t:?} is not an IP address")))?;
        for protocol in [Protocol::Tcp, Protocol::Udp] {
            out.push(PortForward {
                protocol,
                listen_address: listen,
                listen_ports: None,
                target_address: target,
                target_ports: None,
            });
        }
    }
    for p in &f.ports {
        let protocol = match p.protocol.as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            other => return Err(bad(format!("forward port protocol {other:?}: use tcp or udp"))),
        };
        let target: IpAddr = p.target_address.parse().map_err(|_| {
            bad(format!(
                "forward port target_address {:?} is not an IP address",
                p.target_address
            ))
        })?;
        let listen_ports = parse_ports(&p.listen_port)?;
        let target_ports = if p.target_port.is_empty() {
            listen_ports.iter().map(|r| Some(*r)).collect::<Vec<_>>()
        } else {
            let t = parse_ports(&p.target_port)?;
            let total = |v: &[PortRange]| v.iter().map(|r| u32::from(r.last - r.first) + 1).sum::<u32>();
            if t.len() == 1 && t[0].first == t[0].last {
                listen_ports.iter().map(|_| Some(t[0])).collect()
            } else if t.len() == listen_ports.len() && total(&t) == total(&listen_ports) {
                t.into_iter().map(Some).collect()
            } else {
                return Err(bad(format!(
                    "forward target ports {:?} must be one port or as many as the listen ports {:?}",
                    p.target_port, p.listen_port
                )));
            }
        };
        for (lp, tp) in listen_ports.into_iter().zip(target_ports) {
            out.push(PortForward {
                protocol,
                listen_address: listen,
                listen_ports: Some(lp),
                target_address: target,
                target_ports: tp,
            });
        }
    }
    Ok(out)
}

/// The dnsmasq configuration of a bridge network.
fn dnsmasq_config(rec: &NetworkRecord, state_dir: PathBuf) -> Result<DnsmasqConfig> {
    let c = &rec.config;
    let mut dns = DnsmasqConfig::new(&rec.name, state_dir);
    if let Some(Ok(AddressSetting::Static(address))) = c.get("ipv4.address").map(|a| subnet::parse_ipv4_setting(a)) {
        let ranges = match c.get("ipv4.dhcp.ranges") {
            Some(r) => subnet::parse_ipv4_ranges(r, address.trunc()).map_err(|e| bad(e.to_string()))?,
            None => Vec::new(),
        };
        dns.ipv4 = Some(Ipv4Dhcp {
            address,
            dhcp: flag(c, "ipv4.dhcp", true),
            ranges,
            lease_time: c.get("ipv4.dhcp.expiry").cloned().unwrap_or_else(|| "1h".into()),
        });
    }
    if let Some(Ok(AddressSetting::Static(address))) = c.get("ipv6.address").map(|a| subnet::parse_ipv6_setting(a)) {
        let ranges = match c.get("ipv6.dhcp.ranges") {
            Some(r) => subnet::parse_ipv6_ranges(r, address.trunc()).map_err(|e| bad(e.to_string()))?,
            None => Vec::new(),
        };
        dns.ipv6 = Some(Ipv6Dhcp {
            address,
            dhcp: flag(c, "ipv6.dhcp", true),
            stateful: flag(c, "ipv6.dhcp.stateful", false),
            ranges,
            lease_time: c.get("ipv6.dhcp.expiry").cloned().unwrap_or_else(|| "1h".into()),
        });
    }
    if let Some(d) = c.get("dns.domain") {
        dns.dns_domain = d.clone();
    }
    dns.upstream = Upstream::ResolvConf(None);
    dns.raw = c.get("raw.dnsmasq").cloned();
    Ok(dns)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn names_follow_interface_rules() {
        assert!(validate_name("corralbr0").is_ok());
        for bad in ["", "-x", "a/b", "a:b", "abcdefghijklmnop", "none"] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn config_errors_name_the_key_and_the_fix() {
        let e = validate_config("bridge", &cfg(&[("ipv4.nat", "maybe")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("ipv4.nat") && e.contains("true or false"), "{e}");
        let e = validate_config("bridge", &cfg(&[("ipv4.address", "10.0.0.300/24")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("ipv4.address"), "{e}");
        let e = validate_config("bridge", &cfg(&[("colour", "red")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown bridge network option \"colour\""), "{e}");
        let e = validate_config("macvlan", &cfg(&[])).unwrap_err().to_string();
        assert!(e.contains("parent"), "{e}");
        let e = validate_config(
            "bridge",
            &cfg(&[
                ("ipv4.address", "10.9.0.1/24"),
                ("ipv4.dhcp.ranges", "10.8.0.2-10.8.0.9"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("ipv4.dhcp.ranges"), "{e}");
        validate_config("bridge", &cfg(&[("ipv4.address", "10.9.0.1/24"), ("user.x", "y")])).unwrap();
    }

    #[test]
    fn forwards_become_dnat_rules() {
        let f = corral_api::NetworkForward {
            listen_address: "192.0.2.1".into(),
            ports: vec![corral_api::NetworkForwardPort {
                protocol: "tcp".into(),
                listen_port: "80,8000-8001".into(),
                target_address: "10.0.0.5".into(),
                target_port: "8080".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let rules = port_forwards(&f).unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(
            rules[1].listen_ports,
            Some(PortRange {
                first: 8000,
                last: 8001
            })
        );
        assert_eq!(rules[1].target_ports, Some(PortRange::single(8080)));
        assert!(parse_ports("0").is_err() && parse_ports("9-3").is_err() && parse_ports("x").is_err());
    }
}
