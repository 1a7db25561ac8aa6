//! One nftables table per network: `table inet corral_<network>`.
//!
//! The table is rendered as `nft` text and replaced in one `nft -f -` transaction (it exists
//! before and after, never half-written). Corral never reads or changes any other table.
//!
//! nftables lets every base chain on a hook vote and a drop anywhere is final: the accepts in
//! this table cannot overrule a `policy drop` in another table (Docker's iptables FORWARD chain,
//! say). They keep DHCP, DNS and forwarding open in this table whatever is added to it later
//! (ACLs), and document what the bridge needs; [`forward_drop_chains`] finds the chains that
//! would cut containers off, so the daemon can say so.
//!
//! The NAT chains make the kernel track every connection in the namespace, those to the
//! bridge's own address included, which never need NAT. The table does not exempt them
//! (`notrack`): untracked packets are never `ct state established`, so a host firewall in
//! another table that accepts replies by state (ufw's and firewalld's defaults) would drop the
//! replies to connections the host opens to its containers over the bridge. The throughput this
//! costs is measured by `scripts/bench-network.sh` (the container's rate beside a bare bridge's).

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use ipnet::{Ipv4Net, Ipv6Net};

/// The `nft` binary (Debian's nftables package).
const NFT: &str = "nft";

/// Prefix of every table Corral owns.
pub const TABLE_PREFIX: &str = "corral_";

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("invalid network name {name:?} for an nftables table: {why}")]
    InvalidName { name: String, why: &'static str },
    #[error("invalid bridge name {0:?}")]
    InvalidBridge(String),
    #[error("network forward {forward}: {why}")]
    BadForward { forward: String, why: &'static str },
    #[error("running nft: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("nft {action} failed ({status}): {stderr}")]
    Failed {
        action: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// What a network's table holds.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct FirewallSpec {
    /// The network's name; the table is `corral_<network>`.
    pub network: String,
    /// The bridge interface.
    pub bridge: String,
    /// The bridge's IPv4 address and prefix (`ipv4.address`), if any.
    pub ipv4: Option<Ipv4Net>,
    /// `ipv4.nat`: masquerade what leaves the subnet.
    pub ipv4_nat: bool,
    pub ipv6: Option<Ipv6Net>,
    /// `ipv6.nat`.
    pub ipv6_nat: bool,
    /// Network forwards: DNAT from a listen address to an instance.
    pub forwards: Vec<PortForward>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// Ports `first..=last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn single(port: u16) -> PortRange {
        PortRange {
            first: port,
            last: port,
        }
    }

    fn len(self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }
}

/// One forward: packets to `listen_address` (and `listen_ports`, or every port) go to
/// `target_address` (and `target_ports`; the same port when unset).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortForward {
    pub protocol: Protocol,
    pub listen_address: IpAddr,
    /// `None`: everything sent to the listen address (LXD's forward `target_address`).
    pub listen_ports: Option<PortRange>,
    pub target_address: IpAddr,
    /// One port (everything to it) or a range as long as `listen_ports` (port to port).
    pub target_ports: Option<PortRange>,
}

impl std::fmt::Display for PortForward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.protocol.as_str(), self.listen_address)?;
        if let Some(p) = self.listen_ports {
            write!(f, ":{}-{}", p.first, p.last)?;
        }
        write!(f, " -> {}", self.target_address)?;
        if let Some(p) = self.target_ports {
            write!(f, ":{}-{}", p.first, p.last)?;
        }
        Ok(())
    }
}

/// The table's name for `network`, checked to be a plain nft identifier.
pub fn table_name(network: &str) -> Result<String, NftError> {
    let bad = |why| {
        Err(NftError::InvalidName {
            name: network.to_string(),
            why,
        })
    };
    if network.is_empty() {
        return bad("empty");
    }
    if network.len() > 64 {
        return bad("longer than 64 bytes");
    }
    if !network
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return bad("only letters, digits, '_', '-' and '.' are allowed");
    }
    Ok(format!("{TABLE_PREFIX}{network}"))
}

/// The whole `nft -f` script that replaces the network's table: create (so that the delete
/// cannot fail), delete, create with its chains, one transaction.
pub fn render(spec: &FirewallSpec) -> Result<String, NftError> {
    let table = table_name(&spec.network)?;
    crate::link::validate_name(&spec.bridge).map_err(|_| NftError::InvalidBridge(spec.bridge.clone()))?;
    let br = &spec.bridge;
    let mut s = String::new();
    let _ = writeln!(s, "table inet {table}\ndelete table inet {table}");
    let _ = writeln!(s, "table inet {table} {{");

    // DHCP, DHCPv6 and DNS from the bridge to the host's dnsmasq, and its answers.
    chain(
        &mut s,
        "input",
        "type filter hook input priority filter; policy accept;",
        |c| {
            c.push(format!("iifname \"{br}\" udp dport {{ 53, 67, 547 }} accept"));
            c.push(format!("iifname \"{br}\" tcp dport 53 accept"));
            c.push(format!(
            "iifname \"{br}\" icmpv6 type {{ nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert, echo-request }} accept"
        ));
            c.push(format!("iifname \"{br}\" icmp type {{ echo-request }} accept"));
        },
    );
    chain(
        &mut s,
        "output",
        "type filter hook output priority filter; policy accept;",
        |c| {
            c.push(format!("oifname \"{br}\" udp sport {{ 53, 67, 547 }} accept"));
            c.push(format!("oifname \"{br}\" tcp sport 53 accept"));
            c.push(format!(
                "oifname \"{br}\" icmpv6 type {{ nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert }} accept"
            ));
        },
    );
    chain(
        &mut s,
        "forward",
        "type filter hook forward priority filter; policy accept;",
        |c| {
            c.push(format!("iifname \"{br}\" accept"));
            c.push(format!("oifname \"{br}\" accept"));
        },
    );

    let mut dnat = Vec::new();
    let mut hairpin = Vec::new();
    for f in &spec.forwards {
        forward_rules(f, &mut dnat, &mut hairpin)?;
    }
    let mut masquerade = Vec::new();
    if let (Some(net), true) = (spec.ipv4, spec.ipv4_nat) {
        let subnet = net.trunc();
        masquerade.push(format!("ip saddr {subnet} ip daddr != {subnet} masquerade"));
    }
    if let (Some(net), true) = (spec.ipv6, spec.ipv6_nat) {
        let subnet = net.trunc();
        masquerade.push(format!("ip6 saddr {subnet} ip6 daddr != {subnet} masquerade"));
    }
    masquerade.extend(hairpin);
    if !masquerade.is_empty() {
        chain(
            &mut s,
            "postrouting",
            "type nat hook postrouting priority srcnat; policy accept;",
            |c| c.extend(masquerade),
        );
    }
    if !dnat.is_empty() {
        chain(
            &mut s,
            "prerouting",
            "type nat hook prerouting priority dstnat; policy accept;",
            |c| c.extend(dnat.iter().cloned()),
        );
        // Connections the host itself opens to a listen address. (nft 1.0.6, Debian 12's, has
        // no `dstnat` name for the output hook: -100 is its value.)
        chain(
            &mut s,
            "output_nat",
            "type nat hook output priority -100; policy accept;",
            |c| c.extend(dnat),
        );
    }
    s.push_str("}\n");
    Ok(s)
}

fn chain(s: &mut String, name: &str, hook: &str, rules: impl FnOnce(&mut Vec<String>)) {
    let mut lines = Vec::new();
    rules(&mut lines);
    let _ = writeln!(s, "\tchain {name} {{\n\t\t{hook}");
    for line in lines {
        let _ = writeln!(s, "\t\t{line}");
    }
    s.push_str("\t}\n");
}

/// The DNAT rules of one forward, and the masquerade that lets an instance reach its own
/// forward through the listen address (hairpin).
fn forward_rules(f: &PortForward, dnat: &mut Vec<String>, hairpin: &mut Vec<String>) -> Result<(), NftError> {
    let bad = |why| {
        Err(NftError::BadForward {
            forward: f.to_string(),
            why,
        })
    };
    let family = match (f.listen_address, f.target_address) {
        (IpAddr::V4(_), IpAddr::V4(_)) => "ip",
        (IpAddr::V6(_), IpAddr::V6(_)) => "ip6",
        _ => return bad("listen and target addresses are of different families"),
    };
    for r in [f.listen_ports, f.target_ports].into_iter().flatten() {
        if r.first > r.last || r.first == 0 {
            return bad("a port range is empty or starts at 0");
        }
    }
    let target = |port: Option<u16>| match (f.target_address, port) {
        (IpAddr::V6(a), Some(p)) => format!("[{a}]:{p}"),
        (a, Some(p)) => format!("{a}:{p}"),
        (a, None) => a.to_string(),
    };
    let proto = f.protocol.as_str();
    let (listen, target_addr) = (f.listen_address, f.target_address);
    match (f.listen_ports, f.target_ports) {
        (None, Some(_)) => return bad("target ports need listen ports"),
        (None, None) => {
            dnat.push(format!(
                "{family} daddr {listen} meta l4proto {proto} dnat {family} to {}",
                target(None)
            ));
            hairpin.push(format!(
                "{family} saddr {target_addr} {family} daddr {target_addr} masquerade"
            ));
        }
        (Some(l), None) => {
            dnat.push(format!(
                "{family} daddr {listen} {proto} dport {} dnat {family} to {}",
                ports(l),
                target(None)
            ));
            hairpin.push(format!(
                "{family} saddr {target_addr} {family} daddr {target_addr} {proto} dport {} masquerade",
                ports(l)
            ));
        }
        (Some(l), Some(t)) if t.len() == 1 => {
            dnat.push(format!(
                "{family} daddr {listen} {proto} dport {} dnat {family} to {}",
                ports(l),
                target(Some(t.first))
            ));
            hairpin.push(format!(
                "{family} saddr {target_addr} {family} daddr {target_addr} {proto} dport {} masquerade",
                t.first
            ));
        }
        (Some(l), Some(t)) if t.len() == l.len() => {
            // Port to port: nft's `to a:p1-p2` would pick any port of the range, not the
            // matching one, so one rule per port.
            for i in 0..l.len() {
                let (lp, tp) = (l.first as u32 + i, t.first as u32 + i);
                dnat.push(format!(
                    "{family} daddr {listen} {proto} dport {lp} dnat {family} to {}",
                    target(Some(tp as u16))
                ));
            }
            hairpin.push(format!(
                "{family} saddr {target_addr} {family} daddr {target_addr} {proto} dport {} masquerade",
                ports(t)
            ));
        }
        (Some(_), Some(_)) => return bad("the target port range is neither one port nor as long as the listen range"),
    }
    Ok(())
}

fn ports(r: PortRange) -> String {
    if r.first == r.last {
        r.first.to_string()
    } else {
        format!("{}-{}", r.first, r.last)
    }
}

/// Replaces the network's table with what `spec` renders, atomically.
pub fn apply(spec: &FirewallSpec) -> Result<(), NftError> {
    let script = render(spec)?;
    run_script(&script, &format!("apply table {}", table_name(&spec.network)?))
}

/// Deletes the network's table; nothing if it does not exist.
pub fn delete(network: &str) -> Result<(), NftError> {
    let table = table_name(network)?;
    run_script(
        &format!("table inet {table}\ndelete table inet {table}\n"),
        &format!("delete table {table}"),
    )
}

/// Whether the network's table exists.
pub fn exists(network: &str) -> Result<bool, NftError> {
    let table = table_name(network)?;
    let listing = nft(&["list", "tables", "inet"], "list tables")?;
    Ok(listing.lines().any(|l| l.trim() == format!("table inet {table}")))
}

/// The network's table as `nft list table` prints it, if it exists.
pub fn show(network: &str) -> Result<Option<String>, NftError> {
    if !exists(network)? {
        return Ok(None);
    }
    let table = table_name(network)?;
    nft(&["list", "table", "inet", &table], "list table").map(Some)
}

/// The chains of other tables hooked on forward with `policy drop`, as `family table chain`:
/// they drop containers' routed traffic whatever this crate's table accepts.
pub fn forward_drop_chains() -> Result<Vec<String>, NftError> {
    let ruleset = nft(&["list", "ruleset"], "list ruleset")?;
    let mut found = Vec::new();
    let mut table = String::new();
    let mut chain = String::new();
    for line in ruleset.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("table ") {
            table = rest.trim_end_matches(" {").to_string();
        } else if let Some(rest) = line.strip_prefix("chain ") {
            chain = rest.trim_end_matches(" {").to_string();
        } else if line.contains("hook forward") && line.contains("policy drop") && !table.contains(TABLE_PREFIX) {
            found.push(format!("{table} {chain}"));
        }
    }
    Ok(found)
}

fn nft(args: &[&str], action: &str) -> Result<String, NftError> {
    let out = Command::new(NFT)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(NftError::Spawn)?;
    if !out.status.success() {
        return Err(NftError::Failed {
            action: action.to_string(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run_script(script: &str, action: &str) -> Result<(), NftError> {
    let mut child = Command::new(NFT)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NftError::Spawn)?;
    let written = child.stdin.take().expect("stdin is piped").write_all(script.as_bytes());
    let out = child.wait_with_output().map_err(NftError::Spawn)?;
    if !out.status.success() {
        return Err(NftError::Failed {
            action: action.to_string(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    written.map_err(NftError::Spawn)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> FirewallSpec {
        FirewallSpec {
            network: "corralbr0".into(),
            bridge: "corralbr0".into(),
            ipv4: Some("10.1.2.1/24".parse().unwrap()),
            ipv4_nat: true,
            ipv6: Some("fd42:1:2:3::1/64".parse().unwrap()),
            ipv6_nat: true,
            forwards: Vec::new(),
        }
    }

    #[test]
    fn table_replaced_in_one_transaction() {
        let s = render(&spec()).unwrap();
        assert!(s.starts_with(
            "table inet corral_corralbr0\ndelete table inet corral_corralbr0\ntable inet corral_corralbr0 {\n"
        ));
        assert!(s.ends_with("}\n"));
    }

    #[test]
    fn masquerade_per_family_only_when_nat_is_on() {
        let s = render(&spec()).unwrap();
        assert!(
            s.contains("ip saddr 10.1.2.0/24 ip daddr != 10.1.2.0/24 masquerade"),
            "{s}"
        );
        assert!(
            s.contains("ip6 saddr fd42:1:2:3::/64 ip6 daddr != fd42:1:2:3::/64 masquerade"),
            "{s}"
        );
        let s = render(&FirewallSpec {
            ipv6_nat: false,
            ..spec()
        })
        .unwrap();
        assert!(s.contains("ip saddr 10.1.2.0/24"));
        assert!(!s.contains("ip6 saddr"));
        let s = render(&FirewallSpec {
            ipv4_nat: false,
            ipv6_nat: false,
            ..spec()
        })
        .unwrap();
        assert!(!s.contains("masquerade") && !s.contains("postrouting"), "{s}");
    }

    #[test]
    fn dhcp_dns_and_forwarding_accepted_on_the_bridge() {
        let s = render(&spec()).unwrap();
        assert!(s.contains("iifname \"corralbr0\" udp dport { 53, 67, 547 } accept"));
        assert!(s.contains("iifname \"corralbr0\" tcp dport 53 accept"));
        assert!(s.contains("type filter hook forward priority filter; policy accept;"));
        assert!(s.contains("iifname \"corralbr0\" accept\n\t\toifname \"corralbr0\" accept"));
    }

    #[test]
    fn forwards_become_dnat_rules() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let forwards = vec![
            PortForward {
                protocol: Protocol::Tcp,
                listen_address: ip("192.0.2.1"),
                listen_ports: Some(PortRange::single(80)),
                target_address: ip("10.1.2.5"),
                target_ports: Some(PortRange::single(8080)),
            },
            PortForward {
                protocol: Protocol::Udp,
                listen_address: ip("192.0.2.1"),
                listen_ports: Some(PortRange {
                    first: 5000,
                    last: 5001,
                }),
                target_address: ip("10.1.2.6"),
                target_ports: Some(PortRange {
                    first: 6000,
                    last: 6001,
                }),
            },
            PortForward {
                protocol: Protocol::Tcp,
                listen_address: ip("2001:db8::1"),
                listen_ports: Some(PortRange::single(443)),
                target_address: ip("fd42:1:2:3::5"),
                target_ports: None,
            },
        ];
        let s = render(&FirewallSpec { forwards, ..spec() }).unwrap();
        assert!(
            s.contains("ip daddr 192.0.2.1 tcp dport 80 dnat ip to 10.1.2.5:8080"),
            "{s}"
        );
        assert!(s.contains("ip daddr 192.0.2.1 udp dport 5000 dnat ip to 10.1.2.6:6000"));
        assert!(s.contains("ip daddr 192.0.2.1 udp dport 5001 dnat ip to 10.1.2.6:6001"));
        assert!(s.contains("ip6 daddr 2001:db8::1 tcp dport 443 dnat ip6 to fd42:1:2:3::5"));
        assert!(s.contains("ip saddr 10.1.2.5 ip daddr 10.1.2.5 tcp dport 8080 masquerade"));
        assert!(s.contains("type nat hook prerouting priority dstnat;"));
        assert!(s.contains("type nat hook output priority -100;"));
    }

    #[test]
    fn bad_input_is_refused() {
        assert!(table_name("my net").is_err());
        assert!(table_name("").is_err());
        assert_eq!(table_name("my-net_0").unwrap(), "corral_my-net_0");
        assert!(render(&FirewallSpec {
            bridge: "a b".into(),
            ..spec()
        })
        .is_err());
        let mixed = PortForward {
            protocol: Protocol::Tcp,
            listen_address: "192.0.2.1".parse().unwrap(),
            listen_ports: None,
            target_address: "fd42::5".parse().unwrap(),
            target_ports: None,
        };
        let err = render(&FirewallSpec {
            forwards: vec![mixed],
            ..spec()
        })
        .unwrap_err();
        assert!(err.to_string().contains("different families"), "{err}");
        let uneven = PortForward {
            listen_address: "192.0.2.1".parse().unwrap(),
            target_address: "10.1.2.5".parse().unwrap(),
            listen_ports: Some(PortRange { first: 10, last: 12 }),
            target_ports: Some(PortRange { first: 20, last: 21 }),
            ..mixed
        };
        assert!(render(&FirewallSpec {
            forwards: vec![uneven],
            ..spec()
        })
        .is_err());
    }
}
