//! The network's nftables table, applied inside a throwaway network namespace (root only).

mod support;

use corral_network::nft::{self, FirewallSpec, PortForward, PortRange, Protocol};
use support::{require, TestNetns};

fn spec(nat: bool) -> FirewallSpec {
    FirewallSpec {
        network: "net0".into(),
        bridge: "br0".into(),
        ipv4: Some("10.20.60.1/24".parse().unwrap()),
        ipv4_nat: nat,
        ipv6: Some("fd42:20:60::1/64".parse().unwrap()),
        ipv6_nat: nat,
        forwards: Vec::new(),
    }
}

#[test]
fn table_applied_replaced_and_deleted() {
    if !require("table_applied_replaced_and_deleted", &["nft"]) {
        return;
    }
    let ns = TestNetns::new("nft");
    // Someone else's table: never touched.
    ns.sh("nft add table ip other && nft add chain ip other c '{ type filter hook forward priority 0; policy drop; }'");
    ns.run(|| {
        assert!(!nft::exists("net0").unwrap());
        nft::apply(&spec(true)).unwrap();
        assert!(nft::exists("net0").unwrap());
        let shown = nft::show("net0").unwrap().unwrap();
        assert!(
            shown.contains("ip saddr 10.20.60.0/24 ip daddr != 10.20.60.0/24 masquerade"),
            "{shown}"
        );
        assert!(
            shown.contains("ip6 saddr fd42:20:60::/64 ip6 daddr != fd42:20:60::/64 masquerade"),
            "{shown}"
        );
        assert!(
            shown.contains("iifname \"br0\" udp dport { 53, 67, 547 } accept"),
            "{shown}"
        );
        assert!(shown.contains("oifname \"br0\" accept"), "{shown}");

        // NAT off: the same table without masquerade, replaced in place.
        nft::apply(&spec(false)).unwrap();
        let shown = nft::show("net0").unwrap().unwrap();
        assert!(!shown.contains("masquerade"), "{shown}");
        assert!(shown.contains("iifname \"br0\" tcp dport 53 accept"));

        // Forwards.
        let forward = PortForward {
            protocol: Protocol::Tcp,
            listen_address: "192.0.2.10".parse().unwrap(),
            listen_ports: Some(PortRange::single(80)),
            target_address: "10.20.60.5".parse().unwrap(),
            target_ports: Some(PortRange::single(8080)),
        };
        nft::apply(&FirewallSpec {
            forwards: vec![forward],
            ..spec(true)
        })
        .unwrap();
        let shown = nft::show("net0").unwrap().unwrap();
        assert!(
            shown.contains("ip daddr 192.0.2.10 tcp dport 80 dnat ip to 10.20.60.5:8080"),
            "{shown}"
        );

        // The other table's forward drop is reported, not changed.
        assert_eq!(nft::forward_drop_chains().unwrap(), ["ip other c"]);

        nft::delete("net0").unwrap();
        assert!(!nft::exists("net0").unwrap());
        assert!(nft::show("net0").unwrap().is_none());
        nft::delete("net0").unwrap(); // nothing to delete: not an error
    });
    assert!(ns.sh("nft list tables").contains("table ip other"));
}

#[test]
fn every_forward_shape_is_accepted_by_nft() {
    if !require("every_forward_shape_is_accepted_by_nft", &["nft"]) {
        return;
    }
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    let forwards = vec![
        // Everything sent to the listen address.
        PortForward {
            protocol: Protocol::Tcp,
            listen_address: ip("192.0.2.11"),
            listen_ports: None,
            target_address: ip("10.20.60.6"),
            target_ports: None,
        },
        // A range to the same ports, a range to one port, a range port to port.
        PortForward {
            protocol: Protocol::Udp,
            listen_address: ip("192.0.2.10"),
            listen_ports: Some(PortRange {
                first: 5000,
                last: 5010,
            }),
            target_address: ip("10.20.60.7"),
            target_ports: None,
        },
        PortForward {
            protocol: Protocol::Tcp,
            listen_address: ip("192.0.2.10"),
            listen_ports: Some(PortRange {
                first: 6000,
                last: 6002,
            }),
            target_address: ip("10.20.60.8"),
            target_ports: Some(PortRange::single(22)),
        },
        PortForward {
            protocol: Protocol::Tcp,
            listen_address: ip("192.0.2.10"),
            listen_ports: Some(PortRange {
                first: 7000,
                last: 7002,
            }),
            target_address: ip("10.20.60.9"),
            target_ports: Some(PortRange {
                first: 8000,
                last: 8002,
            }),
        },
        // IPv6.
        PortForward {
            protocol: Protocol::Tcp,
            listen_address: ip("2001:db8::10"),
            listen_ports: Some(PortRange::single(443)),
            target_address: ip("fd42:20:60::5"),
            target_ports: Some(PortRange::single(8443)),
        },
    ];
    let ns = TestNetns::new("nftfwd");
    ns.run(|| {
        nft::apply(&FirewallSpec { forwards, ..spec(true) }).unwrap();
        let shown = nft::show("net0").unwrap().unwrap();
        assert!(
            shown.contains("ip daddr 192.0.2.10 tcp dport 7001 dnat ip to 10.20.60.9:8001"),
            "{shown}"
        );
        assert!(shown.contains("dnat ip6 to [fd42:20:60::5]:8443"), "{shown}");
        assert!(
            shown.contains("ip daddr 192.0.2.11 meta l4proto tcp dnat ip to 10.20.60.6"),
            "{shown}"
        );
        nft::delete("net0").unwrap();
    });
}
