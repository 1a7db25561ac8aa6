//! A managed bridge network end to end, inside throwaway network namespaces (root only).
//!
//! One namespace stands in for the host: a bridge with a 10.x.y.1/24 picked against its
//! routes, the network's nft table, dnsmasq on the bridge. Two more stand in for containers:
//! each gets a veth peer as eth0 and asks for an address with busybox udhcpc. Nothing has a route
//! out of these namespaces.

mod support;

use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use corral_network::dnsmasq::{self, Dnsmasq, DnsmasqConfig, Ipv4Dhcp, Ipv6Dhcp, StaticLease};
use corral_network::link::{enable_forwarding, veth_names, BridgeSpec, PeerConfig, VethSpec};
use corral_network::nft::{self, FirewallSpec};
use corral_network::subnet::{pick_ipv4_subnet_for_host, random_ipv6_ula_for_host};
use corral_network::MacAddr;
use support::{require, DnsmasqGuard, TempDir, TestNetns};

const BRIDGE: &str = "corralbr0";
const NETWORK: &str = "corralbr0";

/// Sets the leased address on the interface, as a distribution's DHCP client hook would.
const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/$mask" dev "$interface"
    ;;
esac
"#;

/// Runs udhcpc on eth0 in `ns`, sending `hostname`; returns the address it configured.
fn dhcp(ns: &TestNetns, hostname: &str, script: &Path) -> Ipv4Addr {
    let script = script.display().to_string();
    let out = ns.cmd(
        "busybox",
        &[
            "udhcpc",
            "-i",
            "eth0",
            "-f",
            "-q",
            "-n",
            "-t",
            "5",
            "-T",
            "1",
            "-x",
            &format!("hostname:{hostname}"),
            "-s",
            &script,
        ],
    );
    assert!(
        out.status.success(),
        "udhcpc: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let addr = ns.sh("ip -4 -o addr show dev eth0");
    let ip = addr
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .unwrap_or_else(|| panic!("no address: {addr}"));
    ip.split('/').next().unwrap().parse().unwrap()
}

/// Asks the bridge's dnsmasq for `name` from inside `ns`.
fn resolve(ns: &TestNetns, name: &str, server: Ipv4Addr) -> String {
    let out = ns.cmd("busybox", &["nslookup", name, &server.to_string()]);
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn link_names(ns: &TestNetns) -> Vec<String> {
    ns.netns
        .netlink(|nl| nl.list_links())
        .unwrap()
        .into_iter()
        .map(|l| l.name)
        .collect()
}

#[test]
fn managed_bridge_end_to_end() {
    if !require("managed_bridge_end_to_end", &["nft", "dnsmasq", "busybox"]) {
        return;
    }
    let host = TestNetns::new("e2eh");
    let c1 = TestNetns::new("e2e1");
    let c2 = TestNetns::new("e2e2");
    let dir = TempDir::new("e2e");
    let script = dir.path().join("udhcpc.sh");
    std::fs::write(&script, UDHCPC_SCRIPT).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();

    // The bridge, on a subnet picked against the "host's" routes.
    let (v4, v6) = host.run(|| {
        (
            pick_ipv4_subnet_for_host(NETWORK, &[]).unwrap(),
            random_ipv6_ula_for_host(&[]).unwrap(),
        )
    });
    assert_eq!(
        (v4.addr().octets()[0], v4.addr().octets()[3], v4.prefix_len()),
        (10, 1, 24)
    );
    let spec = BridgeSpec {
        name: BRIDGE.into(),
        mtu: Some(1500),
        mac: None,
        addresses: vec![v4.into(), v6.into()],
    };
    host.netns.netlink(|nl| nl.create_bridge(&spec)).unwrap();
    host.run(|| enable_forwarding(true, true)).unwrap();

    // The firewall: masquerade only while NAT is on.
    let firewall = FirewallSpec {
        network: NETWORK.into(),
        bridge: BRIDGE.into(),
        ipv4: Some(v4),
        ipv4_nat: true,
        ipv6: Some(v6),
        ipv6_nat: true,
        forwards: Vec::new(),
    };
    host.run(|| {
        nft::apply(&FirewallSpec {
            ipv4_nat: false,
            ipv6_nat: false,
            ..firewall.clone()
        })
        .unwrap();
        let shown = nft::show(NETWORK).unwrap().expect("table applied");
        assert!(!shown.contains("masquerade"), "{shown}");
        nft::apply(&firewall).unwrap();
        let shown = nft::show(NETWORK).unwrap().expect("table applied");
        assert!(
            shown.contains(&format!(
                "ip saddr {} ip daddr != {} masquerade",
                v4.trunc(),
                v4.trunc()
            )),
            "{shown}"
        );
    });

    // dnsmasq on the bridge, with a static lease for c2's MAC.
    let mut config = DnsmasqConfig::new(BRIDGE, dir.path().join("dnsmasq"));
    config.ipv4 = Some(Ipv4Dhcp {
        address: v4,
        dhcp: true,
        ranges: Vec::new(),
        lease_time: "1h".into(),
    });
    config.ipv6 = Some(Ipv6Dhcp {
        address: v6,
        dhcp: true,
        stateful: false,
        ranges: Vec::new(),
        lease_time: "1h".into(),
    });
    let paths = config.paths();
    let mac1: MacAddr = "00:16:3e:00:00:c1".parse().unwrap();
    let mac2: MacAddr = "00:16:3e:00:00:c2".parse().unwrap();
    let fixed = Ipv4Addr::from(u32::from(v4.network()) + 200);
    let fixed_lease = StaticLease {
        mac: mac2,
        ipv4: Some(fixed),
        ipv6: None,
        hostname: Some("fixed".into()),
    };
    dnsmasq::write_static_leases(&paths, &[fixed_lease]).unwrap();
    let mut dnsmasq = DnsmasqGuard(Some(host.run(|| Dnsmasq::start(&config)).unwrap()));

    // Each container's NIC: host side on the bridge, peer moved in and renamed eth0.
    let nics = [("c1/eth0", &c1, mac1), ("c2/eth0", &c2, mac2)];
    for (seed, container, mac) in nics {
        let (host_name, peer_name) = veth_names(seed);
        let veth = VethSpec {
            host_name,
            peer_name: peer_name.clone(),
            bridge: Some(BRIDGE.into()),
            mtu: None,
            host_mac: None,
            peer_mac: None,
        };
        let peer = PeerConfig {
            mac: Some(mac),
            ..PeerConfig::named("eth0")
        };
        host.netns
            .netlink(|nl| {
                nl.create_veth(&veth)?;
                nl.move_and_configure(&peer_name, &container.netns, &peer)
            })
            .unwrap();
        assert_eq!(link_names(container), ["lo", "eth0"]);
    }

    // c1: a lease from the range, in the leases file; the bridge answers ping and DNS.
    let ip1 = dhcp(&c1, "c1", &script);
    let range = corral_network::subnet::default_ipv4_range(v4);
    assert!(
        ip1 >= range.start && ip1 <= range.end && ip1 != fixed,
        "{ip1} outside {range:?}"
    );
    let leases = dnsmasq::read_leases(&paths).unwrap();
    let lease1 = leases
        .iter()
        .find(|l| l.mac == Some(mac1))
        .unwrap_or_else(|| panic!("{leases:?}"));
    assert_eq!((lease1.address, lease1.hostname.as_deref()), (ip1.into(), Some("c1")));
    c1.sh(&format!("busybox ping -c1 -W2 {}", v4.addr()));
    let answer = resolve(&c1, "c1.corral", v4.addr());
    assert!(answer.contains(&format!("Address: {ip1}")), "{answer}");

    // c2: the static lease for its MAC, under the static name.
    assert_eq!(dhcp(&c2, "c2", &script), fixed);
    let answer = resolve(&c1, "fixed.corral", v4.addr());
    assert!(answer.contains(&format!("Address: {fixed}")), "{answer}");

    // A restart keeps the leases: c1's name still resolves.
    let running = dnsmasq.take();
    let old_pid = running.pid();
    dnsmasq.0 = Some(host.run(|| running.restart(&config)).unwrap());
    assert_ne!(dnsmasq.get().pid(), old_pid);
    let answer = resolve(&c1, "c1.corral", v4.addr());
    assert!(answer.contains(&format!("Address: {ip1}")), "after restart: {answer}");

    // Teardown through the driver leaves nothing.
    let dnsmasq_pid = dnsmasq.get().pid();
    dnsmasq.take().stop().unwrap();
    host.run(|| nft::delete(NETWORK)).unwrap();
    host.netns
        .netlink(|nl| {
            for (seed, _, _) in nics {
                assert!(nl.delete_link(&veth_names(seed).0)?);
            }
            assert!(nl.delete_link(BRIDGE)?);
            Ok(())
        })
        .unwrap();
    paths.remove().unwrap();

    assert_eq!(link_names(&host), ["lo"]);
    assert_eq!(link_names(&c1), ["lo"], "eth0 went with its host side");
    assert_eq!(link_names(&c2), ["lo"]);
    assert!(host.run(|| !nft::exists(NETWORK).unwrap()));
    assert_eq!(host.sh("nft list ruleset"), "");
    assert!(host.pids().is_empty(), "dnsmasq {dnsmasq_pid} gone");
    assert!(!paths.dir.exists());
}
