//! Times what starting a container's bridged NIC costs: bridge (once), then per NIC a veth pair on
//! the bridge, the peer moved into the container's network namespace, renamed eth0, given an
//! address and set up there. Root only; everything happens in network namespaces it creates and
//! deletes (`corralbench-<pid>-*`), nothing on the host's network.
//!
//! `cargo run --release -p corral-network --example bench_link [-- ROUNDS]`

use std::process::Command;
use std::time::{Duration, Instant};

use corral_network::link::{veth_names, BridgeSpec, Netns, PeerConfig, VethSpec};

struct BenchNetns(String);

impl BenchNetns {
    fn new(tag: &str) -> (BenchNetns, Netns) {
        let name = format!("corralbench-{}-{tag}", std::process::id());
        let status = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip netns add");
        assert!(status.success(), "ip netns add {name}");
        let guard = BenchNetns(name);
        let netns = Netns::open(format!("/run/netns/{}", guard.0)).expect("open netns");
        (guard, netns)
    }
}

impl Drop for BenchNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn report(what: &str, samples: &mut [Duration]) {
    samples.sort();
    let n = samples.len();
    println!(
        "{what:<40} median {:7.3} ms   min {:7.3}   p90 {:7.3}   max {:7.3}",
        ms(samples[n / 2]),
        ms(samples[0]),
        ms(samples[(n * 9 / 10).min(n - 1)]),
        ms(samples[n - 1])
    );
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("bench_link needs root (it creates network namespaces)");
        std::process::exit(2);
    }
    let rounds: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(50);
    let (_host_guard, host) = BenchNetns::new("host");
    let (_container_guard, container) = BenchNetns::new("ct");

    let (bridge_time, nics) = host
        .netlink(|nl| {
            let t = Instant::now();
            nl.create_bridge(&BridgeSpec {
                name: "corralbr0".into(),
                mtu: Some(1500),
                mac: None,
                addresses: vec!["10.200.0.1/24".parse().unwrap(), "fd42:200::1/64".parse().unwrap()],
            })?;
            let bridge_time = t.elapsed();

            let mut veth = Vec::new();
            let mut moved = Vec::new();
            let mut total = Vec::new();
            let mut delete = Vec::new();
            let (mut move_only, mut enter, mut configure) = (Vec::new(), Vec::new(), Vec::new());
            for i in 0..rounds * 2 {
                // First half: the driver's call; second half: the same steps timed one by one.
                let split = i >= rounds;
                let (host_name, peer_name) = veth_names(&format!("bench/{i}"));
                let spec = VethSpec {
                    host_name: host_name.clone(),
                    peer_name: peer_name.clone(),
                    bridge: Some("corralbr0".into()),
                    mtu: Some(1500),
                    host_mac: None,
                    peer_mac: None,
                };
                let peer = PeerConfig {
                    addresses: vec!["10.200.0.2/24".parse().unwrap()],
                    gateway4: Some("10.200.0.1".parse().unwrap()),
                    ..PeerConfig::named("eth0")
                };
                let t0 = Instant::now();
                nl.create_veth(&spec)?;
                let t1 = Instant::now();
                if split {
                    // The same work in its parts: the move, then a thread entering the namespace.
                    nl.move_to_netns(&peer_name, &container)?;
                    let m = Instant::now();
                    container.netlink(|inner| {
                        let e = Instant::now();
                        inner.rename(&peer_name, "eth0")?;
                        inner.add_address("eth0", peer.addresses[0])?;
                        inner.set_up("eth0")?;
                        configure.push(e.elapsed());
                        Ok(())
                    })?;
                    move_only.push(m - t1);
                    enter.push(m.elapsed() - *configure.last().unwrap());
                } else {
                    nl.move_and_configure(&peer_name, &container, &peer)?;
                }
                let t2 = Instant::now();
                nl.delete_link(&host_name)?;
                let t3 = Instant::now();
                if !split {
                    veth.push(t1 - t0);
                    moved.push(t2 - t1);
                    total.push(t2 - t0);
                    delete.push(t3 - t2);
                }
            }
            // The peer born in the container's namespace: no move.
            let mut in_place = Vec::new();
            for i in 0..rounds {
                let (host_name, _) = veth_names(&format!("bench-in/{i}"));
                let spec = VethSpec {
                    host_name: host_name.clone(),
                    peer_name: String::new(),
                    bridge: Some("corralbr0".into()),
                    mtu: Some(1500),
                    host_mac: None,
                    peer_mac: None,
                };
                let peer = PeerConfig {
                    addresses: vec!["10.200.0.2/24".parse().unwrap()],
                    gateway4: Some("10.200.0.1".parse().unwrap()),
                    ..PeerConfig::named("eth0")
                };
                let t = Instant::now();
                nl.create_veth_in(&spec, &container, &peer)?;
                in_place.push(t.elapsed());
                nl.delete_link(&host_name)?;
            }
            nl.delete_link("corralbr0")?;
            Ok((
                bridge_time,
                [veth, moved, total, delete, move_only, enter, configure, in_place],
            ))
        })
        .expect("bench");

    let [mut veth, mut moved, mut total, mut delete, mut move_only, mut enter, mut configure, mut in_place] = nics;
    println!("corral-network bench_link: {rounds} NICs (rtnetlink, one netlink socket per namespace)");
    println!("{:<40} {:7.3} ms", "bridge + 2 addresses + up (once)", ms(bridge_time));
    report("veth pair, host side on bridge, up", &mut veth);
    report("move peer, rename eth0, address, up", &mut moved);
    report("NIC total (veth + move + configure)", &mut total);
    report("delete host side (takes eth0 along)", &mut delete);
    println!("the move and configure step in parts:");
    report("  move into the namespace (kernel)", &mut move_only);
    report("  thread + setns + netlink socket", &mut enter);
    report("  rename eth0, address, up", &mut configure);
    report("NIC with the peer created in place", &mut in_place);
    // `total` is sorted now: its middle is the median NIC.
    println!(
        "{:<40} {:7.3} ms",
        "bridge + one median NIC",
        ms(bridge_time) + ms(total[total.len() / 2])
    );
}
