//! Links through rtnetlink, inside throwaway network namespaces (root only).

mod support;

use corral_network::link::{
    enable_forwarding, veth_names, BridgeSpec, LinkError, LinkKind, MacvlanMode, MacvlanSpec, Netns, PeerConfig,
    VethSpec, MANAGED_ALIAS,
};
use corral_network::subnet::{pick_ipv4_subnet_for_host, IpNet};
use corral_network::MacAddr;
use support::{require, TestNetns};

fn bridge(name: &str, addresses: &[&str]) -> BridgeSpec {
    BridgeSpec {
        name: name.into(),
        mtu: Some(1400),
        mac: None,
        addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
    }
}

fn veth(seed: &str, bridge: Option<&str>) -> VethSpec {
    let (host_name, peer_name) = veth_names(seed);
    VethSpec {
        host_name,
        peer_name,
        bridge: bridge.map(str::to_string),
        mtu: None,
        host_mac: None,
        peer_mac: None,
    }
}

#[test]
fn bridge_is_created_reconciled_and_deleted() {
    if !require("bridge_is_created_reconciled_and_deleted", &[]) {
        return;
    }
    let host = TestNetns::new("br");
    host.netns
        .netlink(|nl| {
            let spec = bridge("br0", &["10.20.30.1/24", "fd42:20:30::1/64"]);
            nl.create_bridge(&spec)?;
            let link = nl.link("br0")?.expect("bridge exists");
            assert_eq!(link.kind, LinkKind::Bridge);
            assert_eq!(link.mtu, 1400);
            assert!(link.up && link.managed);
            assert_eq!(link.alias.as_deref(), Some(MANAGED_ALIAS));
            assert_eq!(link.mac, Some(MacAddr::from_seed("br0")));
            let mut addrs = nl.addresses("br0")?;
            addrs.retain(|a| !matches!(a, IpNet::V6(n) if n.addr().is_unicast_link_local()));
            addrs.sort();
            assert_eq!(addrs, spec.addresses);

            // Again: nothing changes, no error.
            nl.create_bridge(&spec)?;
            assert_eq!(nl.link("br0")?.unwrap().index, link.index);

            // A new address replaces the old one; the MTU follows the spec.
            let spec = BridgeSpec {
                mtu: Some(1450),
                ..bridge("br0", &["10.20.31.1/24"])
            };
            nl.create_bridge(&spec)?;
            let v4: Vec<IpNet> = nl
                .addresses("br0")?
                .into_iter()
                .filter(|a| a.addr().is_ipv4())
                .collect();
            assert_eq!(v4, vec!["10.20.31.1/24".parse().unwrap()]);
            assert_eq!(nl.link("br0")?.unwrap().mtu, 1450);

            // The subnet picker sees the bridge's subnet as taken.
            let in_use = nl.networks_in_use()?;
            assert!(in_use.contains(&"10.20.31.0/24".parse().unwrap()), "{in_use:?}");
            Ok(())
        })
        .unwrap();
    // Picked from a thread in the namespace, against its routes.
    let taken: IpNet = "10.20.31.0/24".parse().unwrap();
    let picked = host.run(|| pick_ipv4_subnet_for_host("x", &[])).unwrap();
    assert!(!corral_network::subnet::overlaps(&IpNet::V4(picked), &taken));

    host.netns
        .netlink(|nl| {
            // Something else by that name is refused and left alone.
            nl.create_veth(&VethSpec {
                host_name: "notabr".into(),
                peer_name: "notabrp".into(),
                bridge: None,
                mtu: None,
                host_mac: None,
                peer_mac: None,
            })?;
            let err = nl.create_bridge(&bridge("notabr", &[])).unwrap_err();
            assert!(matches!(err, LinkError::WrongKind { .. }), "{err}");
            assert_eq!(err.to_string(), "interface notabr exists and is a veth, not a bridge");
            assert_eq!(nl.link("notabr")?.unwrap().kind, LinkKind::Veth);

            assert!(nl.delete_link("br0")?);
            assert!(!nl.delete_link("br0")?, "deleting twice is not an error");
            assert!(nl.link("br0")?.is_none());
            Ok(())
        })
        .unwrap();
}

#[test]
fn bad_bridge_address_leaves_no_bridge() {
    if !require("bad_bridge_address_leaves_no_bridge", &[]) {
        return;
    }
    let host = TestNetns::new("brbad");
    host.netns
        .netlink(|nl| {
            // The kernel refuses a multicast address, after the bridge was made.
            let spec = bridge("br1", &["10.20.40.1/24", "224.0.0.5/24"]);
            let err = nl.create_bridge(&spec).unwrap_err();
            assert!(err.to_string().starts_with("adding 224.0.0.5/24 to br1: "), "{err}");
            assert!(nl.link("br1")?.is_none(), "a failed create leaves nothing");
            Ok(())
        })
        .unwrap();
}

#[test]
fn veth_peer_moves_into_a_container_as_eth0() {
    if !require("veth_peer_moves_into_a_container_as_eth0", &["busybox"]) {
        return;
    }
    let host = TestNetns::new("vh");
    let container = TestNetns::new("vc");
    let spec = veth("c1/eth0", Some("br0"));
    let mac: MacAddr = "00:16:3e:12:34:56".parse().unwrap();
    host.netns
        .netlink(|nl| {
            nl.create_bridge(&bridge("br0", &["10.20.50.1/24"]))?;
            nl.create_veth(&VethSpec {
                mtu: Some(1400),
                ..spec.clone()
            })?;
            nl.create_veth(&spec)?; // idempotent
            let host_side = nl.link(&spec.host_name)?.unwrap();
            let br = nl.link("br0")?.unwrap();
            assert_eq!(host_side.kind, LinkKind::Veth);
            assert_eq!(host_side.controller, Some(br.index));
            assert!(host_side.up && host_side.managed);
            assert_eq!(host_side.mtu, 1400);
            assert_eq!(nl.link(&spec.peer_name)?.unwrap().mtu, 1400);

            let config = PeerConfig {
                mac: Some(mac),
                addresses: vec!["10.20.50.2/24".parse().unwrap()],
                gateway4: Some("10.20.50.1".parse().unwrap()),
                ..PeerConfig::named("eth0")
            };
            nl.move_and_configure(&spec.peer_name, &container.netns, &config)?;
            assert!(nl.link(&spec.peer_name)?.is_none(), "the peer left the host");
            Ok(())
        })
        .unwrap();

    let eth0 = container
        .netns
        .netlink(|nl| nl.link("eth0"))
        .unwrap()
        .expect("eth0 in the container");
    assert_eq!(
        (eth0.kind, eth0.mac, eth0.up, eth0.mtu),
        (LinkKind::Veth, Some(mac), true, 1400)
    );
    let routes = container.sh("ip route");
    assert!(routes.contains("default via 10.20.50.1 dev eth0"), "{routes}");
    // The container reaches the bridge through the veth.
    container.sh("busybox ping -c1 -W2 10.20.50.1");

    // Deleting the host side takes eth0 with it.
    host.netns.netlink(|nl| nl.delete_link(&spec.host_name)).unwrap();
    assert!(container.netns.netlink(|nl| nl.link("eth0")).unwrap().is_none());
}

#[test]
fn move_by_pid_and_failures_leave_nothing() {
    if !require("move_by_pid_and_failures_leave_nothing", &["sleep"]) {
        return;
    }
    let host = TestNetns::new("ph");
    let container = TestNetns::new("pc");
    // A process in the container's namespace, as a container's init would be.
    let mut init = container.run(|| std::process::Command::new("sleep").arg("60").spawn().unwrap());
    let by_pid = Netns::of_pid(init.id() as i32).unwrap();

    let a = veth("c2/eth0", None);
    let b = veth("c2/eth1", None);
    let result = host.netns.netlink(|nl| {
        nl.create_veth(&a)?;
        nl.move_and_configure(&a.peer_name, &by_pid, &PeerConfig::named("eth0"))?;
        // eth0 is taken there now: the rename fails, and the whole pair goes.
        nl.create_veth(&b)?;
        let err = nl
            .move_and_configure(&b.peer_name, &by_pid, &PeerConfig::named("eth0"))
            .unwrap_err();
        assert_eq!(err.errno(), Some(nix::errno::Errno::EEXIST as i32), "{err}");
        assert!(nl.link(&b.host_name)?.is_none(), "host side of the failed NIC removed");
        assert!(nl.link(&a.host_name)?.is_some());
        Ok(())
    });
    let _ = init.kill();
    let _ = init.wait();
    result.unwrap();
    let links = container.netns.netlink(|nl| nl.list_links()).unwrap();
    let names: Vec<&str> = links.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["lo", "eth0"], "only the first NIC arrived");
}

#[test]
fn macvlan_listing_and_leftovers() {
    if !require("macvlan_listing_and_leftovers", &[]) {
        return;
    }
    let host = TestNetns::new("mv");
    let container = TestNetns::new("mvc");
    host.netns
        .netlink(|nl| {
            // No dummy module here: a veth stands in for the host's uplink.
            nl.create_veth(&VethSpec {
                host_name: "uplink0".into(),
                peer_name: "uplink0p".into(),
                bridge: None,
                mtu: None,
                host_mac: None,
                peer_mac: None,
            })?;
            let spec = MacvlanSpec {
                name: "corrmv0".into(),
                parent: "uplink0".into(),
                mode: MacvlanMode::Bridge,
                mtu: Some(1400),
                mac: Some("00:16:3e:00:00:aa".parse().unwrap()),
            };
            nl.create_macvlan(&spec)?;
            nl.create_macvlan(&spec)?; // idempotent
            let mv = nl.link("corrmv0")?.unwrap();
            assert_eq!((mv.kind, mv.managed, mv.mtu), (LinkKind::Macvlan, true, 1400));
            let err = nl
                .create_macvlan(&MacvlanSpec {
                    parent: "nosuch0".into(),
                    ..spec.clone()
                })
                .unwrap_err();
            assert_eq!(err.to_string(), "interface nosuch0 not found");

            nl.create_veth(&veth("left/1", None))?;
            nl.create_veth(&veth("left/2", None))?;
            let listed = nl.list_links()?;
            let managed: Vec<&str> = listed.iter().filter(|l| l.managed).map(|l| l.name.as_str()).collect();
            assert!(managed.contains(&"corrmv0") && managed.contains(&veth_names("left/1").0.as_str()));
            assert!(listed
                .iter()
                .any(|l| l.name == "lo" && l.kind == LinkKind::Loopback && !l.managed));
            // The veths' peers were never marked: they are for containers.
            assert!(listed.iter().any(|l| l.name == veth_names("left/1").1 && !l.managed));

            // The macvlan goes into a container like a veth peer.
            nl.create_macvlan(&MacvlanSpec {
                name: "corrmv1".into(),
                mac: None,
                ..spec
            })?;
            nl.move_and_configure("corrmv1", &container.netns, &PeerConfig::named("eth0"))?;

            assert!(nl.remove_leftovers("c").is_err(), "a one-letter prefix is refused");
            let mut removed = nl.remove_leftovers("corr")?;
            removed.sort();
            let mut expected = [
                "corrmv0".to_string(),
                veth_names("left/1").0,
                veth_names("left/1").1,
                veth_names("left/2").0,
                veth_names("left/2").1,
            ];
            expected.sort();
            // A veth's peer may be gone with its other end before its own turn comes.
            assert!(removed.iter().all(|r| expected.contains(r)), "{removed:?}");
            let left: Vec<String> = nl.list_links()?.into_iter().map(|l| l.name).collect();
            assert_eq!(left, ["lo", "uplink0p", "uplink0"]);
            Ok(())
        })
        .unwrap();
    let eth0 = container.netns.netlink(|nl| nl.link("eth0")).unwrap().unwrap();
    assert_eq!(eth0.kind, LinkKind::Macvlan);
}

#[test]
fn forwarding_is_enabled_in_the_namespace_only() {
    if !require("forwarding_is_enabled_in_the_namespace_only", &[]) {
        return;
    }
    let outside = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    let host = TestNetns::new("fwd");
    host.run(|| enable_forwarding(true, true)).unwrap();
    assert_eq!(
        host.sh("cat /proc/sys/net/ipv4/ip_forward /proc/sys/net/ipv6/conf/all/forwarding"),
        "1\n1\n"
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
        outside
    );
}

#[test]
fn netlink_errors_name_what_failed() {
    if !require("netlink_errors_name_what_failed", &[]) {
        return;
    }
    let host = TestNetns::new("err");
    host.netns
        .netlink(|nl| {
            let err = nl.set_up("nosuch0").unwrap_err();
            assert_eq!(err.to_string(), "interface nosuch0 not found");
            let err = nl.link("way-too-long-name").unwrap_err();
            assert!(err.to_string().contains("longer than 15"), "{err}");
            nl.create_bridge(&bridge("br0", &[]))?;
            let err = nl.set_mtu("br0", 10).unwrap_err();
            assert!(err.to_string().starts_with("setting the MTU of br0: "), "{err}");
            Ok(())
        })
        .unwrap();
}

#[test]
fn veth_peer_created_inside_the_container() {
    if !require("veth_peer_created_inside_the_container", &["busybox"]) {
        return;
    }
    let host = TestNetns::new("ih");
    let container = TestNetns::new("ic");
    let mac: MacAddr = "00:16:3e:65:43:21".parse().unwrap();
    let config = PeerConfig {
        mac: Some(mac),
        addresses: vec!["10.20.80.2/24".parse().unwrap()],
        gateway4: Some("10.20.80.1".parse().unwrap()),
        ..PeerConfig::named("eth0")
    };
    let a = veth("c3/eth0", Some("br0"));
    let b = veth("c3/eth1", Some("br0"));
    host.netns
        .netlink(|nl| {
            nl.create_bridge(&bridge("br0", &["10.20.80.1/24"]))?;
            nl.create_veth_in(&a, &container.netns, &config)?;
            assert_eq!(
                nl.link(&a.host_name)?.unwrap().controller,
                Some(nl.link("br0")?.unwrap().index)
            );
            // eth0 is taken: refused, and no host side is left behind.
            let err = nl.create_veth_in(&b, &container.netns, &config).unwrap_err();
            assert_eq!(err.errno(), Some(nix::errno::Errno::EEXIST as i32), "{err}");
            assert!(nl.link(&b.host_name)?.is_none());
            Ok(())
        })
        .unwrap();
    let eth0 = container.netns.netlink(|nl| nl.link("eth0")).unwrap().unwrap();
    assert_eq!((eth0.mac, eth0.up), (Some(mac), true));
    assert!(container.sh("ip route").contains("default via 10.20.80.1 dev eth0"));
    container.sh("busybox ping -c1 -W2 10.20.80.1");
}
