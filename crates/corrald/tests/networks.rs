//! Managed networks through the API: a bridge with real dnsmasq and nftables, containers on it
//! with DHCP leases, names and static addresses, and nothing left behind. Every daemon runs in
//! a network namespace the test made (see `TestDaemon`), so no packet can leave the machine.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{busybox_image, dnsmasq_pids_with, skip_unless_root, wait_for, TestDaemon};

/// Creates and starts a busybox container with one NIC on `network` (extra NIC options in
/// `nic`).
fn launch_on(d: &TestDaemon, name: &str, network: &str, nic: Value) {
    let mut eth0 = json!({"type": "nic", "network": network, "name": "eth0"});
    eth0.as_object_mut()
        .unwrap()
        .extend(nic.as_object().cloned().unwrap_or_default());
    let body = json!({
        "name": name,
        "source": {"type": "image", "alias": "busybox"},
        "devices": {"eth0": eth0},
    });
    d.op_ok("POST", "/1.0/instances", &body.to_string());
    d.op_ok("PUT", &format!("/1.0/instances/{name}/state"), r#"{"action":"start"}"#);
}

/// Runs a shell command in a container; (exit code, stdout).
fn sh(d: &TestDaemon, name: &str, script: &str) -> (i32, String) {
    let out = d.corral(&["exec", name, "--", "sh", "-c", script]);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The IPv4 address the container's eth0 got, waiting for DHCP.
fn ipv4_of(d: &TestDaemon, name: &str) -> String {
    wait_for(Duration::from_secs(20), || {
        let (_, out) = sh(d, name, "ip -4 -o addr show dev eth0");
        out.split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .map(|a| a.split('/').next().unwrap_or_default().to_string())
    })
    .unwrap_or_else(|| panic!("{name} got no IPv4 lease; {}", sh(d, name, "cat /run/udhcpc.log").1))
}

fn create_network(d: &TestDaemon, name: &str, config: Value) {
    let body = json!({"name": name, "type": "bridge", "config": config});
    d.ok("POST", "/1.0/networks", &body.to_string(), 201);
}

/// Whether the daemon's namespace has a link named `name`.
fn has_link(d: &TestDaemon, name: &str) -> bool {
    d.in_netns(&["ip", "link", "show", "dev", name]).status.success()
}

fn veths(d: &TestDaemon) -> Vec<String> {
    d.in_netns_ok(&["ip", "-o", "link", "show", "type", "veth"])
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

fn nft_table(d: &TestDaemon, network: &str) -> Option<String> {
    let out = d.in_netns(&["nft", "list", "table", "inet", &format!("corral_{network}")]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn dnsmasq_of(d: &TestDaemon, network: &str) -> Vec<i32> {
    dnsmasq_pids_with(&format!(
        "--conf-file={}",
        d.dir.join("networks").join(network).display()
    ))
}

#[test]
fn two_containers_get_leases_reach_each_other_and_resolve_names() {
    if skip_unless_root("two_containers_get_leases_reach_each_other_and_resolve_names") {
        return;
    }
    let Some(image) = busybox_image("two_containers_get_leases_reach_each_other_and_resolve_names") else {
        return;
    };
    let d = TestDaemon::start("net-dhcp");
    d.import(&image, "busybox");
    create_network(
        &d,
        "ctbr0",
        json!({"ipv4.address": "10.251.7.1/24", "ipv6.address": "none", "ipv4.nat": "true",
               "ipv4.dhcp.ranges": "10.251.7.100-10.251.7.150"}),
    );
    let net = d.get("/1.0/networks/ctbr0");
    assert_eq!(
        (net["managed"].as_bool(), net["type"].as_str()),
        (Some(true), Some("bridge"))
    );
    assert!(has_link(&d, "ctbr0"));
    assert_eq!(dnsmasq_of(&d, "ctbr0").len(), 1, "one dnsmasq for the bridge");
    let table = nft_table(&d, "ctbr0").expect("the network's nft table");
    assert!(table.contains("masquerade"), "NAT with ipv4.nat=true:\n{table}");

    launch_on(&d, "c1", "ctbr0", json!({}));
    launch_on(&d, "c2", "ctbr0", json!({}));
    let (a1, a2) = (ipv4_of(&d, "c1"), ipv4_of(&d, "c2"));
    for a in [&a1, &a2] {
        let last: u8 = a.rsplit('.').next().unwrap().parse().unwrap();
        assert!(
            a.starts_with("10.251.7.") && (100..=150).contains(&last),
            "{a} outside the DHCP range"
        );
    }
    assert_ne!(a1, a2);

    let (code, out) = sh(&d, "c1", &format!("ping -c 1 -W 2 {a2} && ping -c 1 -W 2 10.251.7.1"));
    assert_eq!(code, 0, "c1 reaches c2 and the bridge: {out}");
    // Names through the bridge's dnsmasq, as the DHCP lease told the container.
    let (code, out) = sh(&d, "c1", "cat /etc/resolv.conf; nslookup c2.corral");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&a2), "c2.corral resolves to {a2}: {out}");
    let (code, out) = sh(&d, "c2", "ping -c 1 -W 2 c1.corral");
    assert_eq!(code, 0, "c2 pings c1 by name: {out}");

    // The leases as lxc list-leases shows them.
    let leases = d.get("/1.0/networks/ctbr0/leases");
    let find = |host: &str| {
        leases
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["hostname"] == host && l["type"] == "dynamic")
            .cloned()
    };
    assert_eq!(find("c1").map(|l| l["address"].clone()), Some(json!(a1)), "{leases}");
    assert_eq!(find("c2").map(|l| l["address"].clone()), Some(json!(a2)), "{leases}");
    let c1 = d.get("/1.0/instances/c1");
    assert_eq!(
        find("c1").unwrap()["hwaddr"],
        c1["config"]["volatile.eth0.hwaddr"],
        "the lease is for the NIC's recorded MAC"
    );

    // In use: the network cannot go.
    d.refused("DELETE", "/1.0/networks/ctbr0", None, 400, "c1");
    let used_by = d.get("/1.0/networks/ctbr0")["used_by"].clone();
    assert_eq!(used_by, json!(["/1.0/instances/c1", "/1.0/instances/c2"]));

    // Instances gone: their veths go; then the network and all it made.
    assert_eq!(veths(&d).len(), 2, "{:?}", veths(&d));
    for c in ["c1", "c2"] {
        d.op_ok(
            "PUT",
            &format!("/1.0/instances/{c}/state"),
            r#"{"action":"stop","force":true}"#,
        );
        d.op_ok("DELETE", &format!("/1.0/instances/{c}"), "");
    }
    assert!(veths(&d).is_empty(), "{:?}", veths(&d));
    d.ok("DELETE", "/1.0/networks/ctbr0", "", 200);
    assert!(!has_link(&d, "ctbr0"), "bridge left behind");
    assert!(nft_table(&d, "ctbr0").is_none(), "nft table left behind");
    assert!(dnsmasq_of(&d, "ctbr0").is_empty(), "dnsmasq left running");
    assert!(!d.dir.join("networks/ctbr0").exists(), "leases left behind");
}

#[test]
fn a_static_address_is_kept_across_restarts_and_nat_follows_the_config() {
    if skip_unless_root("a_static_address_is_kept_across_restarts_and_nat_follows_the_config") {
        return;
    }
    let Some(image) = busybox_image("a_static_address_is_kept_across_restarts_and_nat_follows_the_config") else {
        return;
    };
    let d = TestDaemon::start("net-static");
    d.import(&image, "busybox");
    create_network(
        &d,
        "ctbr1",
        json!({"ipv4.address": "10.251.8.1/24", "ipv6.address": "none", "ipv4.nat": "false"}),
    );
    let table = nft_table(&d, "ctbr1").unwrap();
    assert!(!table.contains("masquerade"), "no NAT when ipv4.nat=false:\n{table}");
    d.ok("PATCH", "/1.0/networks/ctbr1", r#"{"config":{"ipv4.nat":"true"}}"#, 200);
    assert!(
        nft_table(&d, "ctbr1").unwrap().contains("masquerade"),
        "NAT once ipv4.nat=true"
    );

    launch_on(&d, "s1", "ctbr1", json!({"ipv4.address": "10.251.8.42"}));
    assert_eq!(ipv4_of(&d, "s1"), "10.251.8.42");
    let leases = d.get("/1.0/networks/ctbr1/leases");
    assert!(
        leases
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["address"] == "10.251.8.42" && l["type"] == "static" && l["hostname"] == "s1"),
        "{leases}"
    );
    for _ in 0..2 {
        d.op_ok("PUT", "/1.0/instances/s1/state", r#"{"action":"restart","force":true}"#);
        assert_eq!(ipv4_of(&d, "s1"), "10.251.8.42", "the static address after a restart");
    }
}

#[test]
fn bad_networks_are_refused_and_leave_nothing() {
    if skip_unless_root("bad_networks_are_refused_and_leave_nothing") {
        return;
    }
    let d = TestDaemon::start("net-bad");
    create_network(
        &d,
        "ctbr2",
        json!({"ipv4.address": "10.251.9.1/24", "ipv6.address": "none"}),
    );
    let cases = [
        (
            json!({"name": "ctbr3", "config": {"ipv4.address": "10.251.9.1/25"}}),
            "overlaps",
        ),
        (
            json!({"name": "ctbr3", "config": {"ipv4.address": "10.251.300.1/24"}}),
            "ipv4.address",
        ),
        (
            json!({"name": "ctbr3", "config": {"ipv4.nat": "perhaps"}}),
            "true or false",
        ),
        (
            json!({"name": "ctbr3", "config": {"bridge.colour": "red"}}),
            "unknown bridge network option",
        ),
        (json!({"name": "a/b"}), "invalid network name"),
        (json!({"name": "ctbr3", "type": "ovn"}), "unsupported network type"),
        (json!({"name": "ctbr2"}), "already exists"),
    ];
    for (body, want) in cases {
        let code = if want == "already exists" { 409 } else { 400 };
        d.refused("POST", "/1.0/networks", Some(&body.to_string()), code, want);
    }
    assert!(!has_link(&d, "ctbr3"), "a refused network left its bridge");
    assert!(nft_table(&d, "ctbr3").is_none());
    assert!(dnsmasq_of(&d, "ctbr3").is_empty());
    // A bad change is refused and the network stays as it was.
    d.refused(
        "PATCH",
        "/1.0/networks/ctbr2",
        Some(r#"{"config":{"ipv4.dhcp.expiry":"soon"}}"#),
        400,
        "ipv4.dhcp.expiry",
    );
    assert_eq!(d.get("/1.0/networks/ctbr2")["config"]["ipv4.address"], "10.251.9.1/24");
    // A NIC on a network that does not exist is refused with the fix in the message.
    let body =
        json!({"name": "x1", "source": {"type": "none"}, "devices": {"eth0": {"type": "nic", "network": "nope"}}});
    let op = d.op("POST", "/1.0/instances", &body.to_string());
    assert_eq!(op["status"], "Failure", "{op}");
    assert!(
        op["err"].as_str().unwrap().contains("network \"nope\" does not exist"),
        "{op}"
    );
    assert_eq!(
        d.request("GET", "/1.0/instances/x1", None).0,
        404,
        "no half-made instance"
    );
}

#[test]
fn dnsmasq_is_restarted_when_it_dies_and_survives_a_daemon_restart() {
    if skip_unless_root("dnsmasq_is_restarted_when_it_dies_and_survives_a_daemon_restart") {
        return;
    }
    let mut d = TestDaemon::start("net-dnsmasq");
    // No addresses given: as in LXD, a free IPv4 /24 and an IPv6 ULA /64, both with NAT.
    create_network(&d, "ctbr4", json!({}));
    let config = d.get("/1.0/networks/ctbr4")["config"].clone();
    let v4 = config["ipv4.address"].as_str().unwrap().to_string();
    assert!(v4.starts_with("10.") && v4.ends_with(".1/24"), "{config}");
    assert!(config["ipv6.address"].as_str().unwrap().starts_with("fd"), "{config}");
    assert_eq!(
        (config["ipv4.nat"].as_str(), config["ipv6.nat"].as_str()),
        (Some("true"), Some("true"))
    );
    let addrs = d.in_netns_ok(&["ip", "addr", "show", "dev", "ctbr4"]);
    assert!(addrs.contains(&v4), "the bridge has {v4}: {addrs}");
    let first = dnsmasq_of(&d, "ctbr4");
    assert_eq!(first.len(), 1);
    // The daemon goes and comes back: the same dnsmasq serves on.
    d.crash();
    d.spawn();
    assert_eq!(dnsmasq_of(&d, "ctbr4"), first, "dnsmasq kept across a daemon restart");
    // Killed: the daemon starts another.
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(first[0]), nix::sys::signal::Signal::SIGKILL);
    let again = wait_for(Duration::from_secs(10), || {
        let now = dnsmasq_of(&d, "ctbr4");
        (now.len() == 1 && now != first).then_some(now)
    });
    assert!(again.is_some(), "dnsmasq was not restarted");
}
