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

/// The IPv4 address the container's eth0 got, waiting for DHCP.
fn ipv4_of(d: &TestDaemon, name: &str) -> String {
    wait_for(Duration::from_secs(20), || {
        let (_, out) = d.sh(name, "ip -4 -o addr show dev eth0");
        out.split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .map(|a| a.split('/').next().unwrap_or_default().to_string())
    })
    .unwrap_or_else(|| panic!("{name} got no IPv4 lease; {}", d.sh(name, "cat /run/udhcpc.log").1))
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

    let (code, out) = d.sh("c1", &format!("ping -c 1 -W 2 {a2} && ping -c 1 -W 2 10.251.7.1"));
    assert_eq!(code, 0, "c1 reaches c2 and the bridge: {out}");
    // Names through the bridge's dnsmasq, as the DHCP lease told the container.
    let (code, out) = d.sh("c1", "cat /etc/resolv.conf; nslookup c2.corral");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&a2), "c2.corral resolves to {a2}: {out}");
    let (code, out) = d.sh("c2", "ping -c 1 -W 2 c1.corral");
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
    let leases = d.get("/1.0/networks/ctbr0/leases");
    assert!(
        leases.as_array().unwrap().iter().all(|l| l["type"] == "gateway"),
        "deleted instances keep no lease: {leases}"
    );
    let files = std::fs::read_to_string(d.dir.join("networks/ctbr0/dnsmasq.leases")).unwrap_or_default();
    assert!(
        !files.contains(&a1) && !files.contains(&a2),
        "dnsmasq still holds their leases: {files}"
    );
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
    let mac = d.get("/1.0/instances/s1")["config"]["volatile.eth0.hwaddr"].clone();
    for _ in 0..2 {
        d.op_ok("PUT", "/1.0/instances/s1/state", r#"{"action":"restart","force":true}"#);
        assert_eq!(ipv4_of(&d, "s1"), "10.251.8.42", "the static address after a restart");
        assert_eq!(
            d.get("/1.0/instances/s1")["config"]["volatile.eth0.hwaddr"],
            mac,
            "the MAC is kept"
        );
        assert!(interfaces_in(&d, "s1").contains(mac.as_str().unwrap()));
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
    // One that fails late (dnsmasq refuses its configuration, after the bridge and the table
    // were made) is undone as well.
    d.refused(
        "POST",
        "/1.0/networks",
        Some(r#"{"name":"ctbr3","config":{"ipv4.address":"10.251.19.1/24","ipv6.address":"none","raw.dnsmasq":"no-such-option=1"}}"#),
        400,
        "no-such-option",
    );
    assert_eq!(d.request("GET", "/1.0/networks/ctbr3", None).0, 404);
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
    // The host's other interfaces are listed, unmanaged.
    let lo = d.get("/1.0/networks/lo");
    assert_eq!(
        (lo["managed"].as_bool(), lo["type"].as_str()),
        (Some(false), Some("loopback")),
        "{lo}"
    );
    d.refused(
        "PUT",
        "/1.0/networks/lo",
        Some(r#"{"config":{}}"#),
        400,
        "not a managed network",
    );
    d.refused("DELETE", "/1.0/networks/lo", None, 404, "Network not found");
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

/// The NIC names inside a container.
fn interfaces_in(d: &TestDaemon, name: &str) -> String {
    d.sh(name, "ip -o link show").1
}

#[test]
fn a_nic_is_hot_plugged_and_unplugged_on_a_running_container() {
    if skip_unless_root("a_nic_is_hot_plugged_and_unplugged_on_a_running_container") {
        return;
    }
    let Some(image) = busybox_image("a_nic_is_hot_plugged_and_unplugged_on_a_running_container") else {
        return;
    };
    let d = TestDaemon::start("net-hotplug");
    d.import(&image, "busybox");
    create_network(
        &d,
        "ctbr5",
        json!({"ipv4.address": "10.251.11.1/24", "ipv6.address": "none"}),
    );
    let body = json!({"name": "h1", "source": {"type": "image", "alias": "busybox"}, "profiles": []});
    d.op_ok("POST", "/1.0/instances", &body.to_string());
    d.op_ok("PUT", "/1.0/instances/h1/state", r#"{"action":"start"}"#);
    assert!(!interfaces_in(&d, "h1").contains("eth1"));

    d.op_ok(
        "PATCH",
        "/1.0/instances/h1",
        r#"{"devices":{"eth1":{"type":"nic","network":"ctbr5","name":"eth1"}}}"#,
    );
    let mac = d.get("/1.0/instances/h1")["config"]["volatile.eth1.hwaddr"]
        .as_str()
        .expect("a MAC recorded for the hot-plugged NIC")
        .to_string();
    let links = interfaces_in(&d, "h1");
    assert!(
        links.contains("eth1") && links.contains(&mac),
        "eth1 with {mac} inside: {links}"
    );
    // It works: a lease by the guest's own DHCP client.
    let (code, out) = d.sh(
        "h1",
        "udhcpc -n -q -i eth1 -s /usr/share/udhcpc/default.script && ip -4 -o addr show eth1",
    );
    assert!(code == 0 && out.contains("10.251.11."), "{out}");
    assert_eq!(veths(&d).len(), 1);

    d.op_ok(
        "PUT",
        "/1.0/instances/h1",
        &json!({"devices": {}, "profiles": [], "config": {}}).to_string(),
    );
    assert!(!interfaces_in(&d, "h1").contains("eth1"), "eth1 unplugged");
    assert!(veths(&d).is_empty(), "its host side went too");
}

#[test]
fn a_macvlan_nic_on_a_host_interface_works() {
    if skip_unless_root("a_macvlan_nic_on_a_host_interface_works") {
        return;
    }
    let Some(image) = busybox_image("a_macvlan_nic_on_a_host_interface_works") else {
        return;
    };
    let d = TestDaemon::start("net-macvlan");
    d.import(&image, "busybox");
    // The parent: one end of a veth pair (this kernel has no dummy driver).
    d.in_netns_ok(&[
        "ip",
        "link",
        "add",
        "ctdummy0",
        "type",
        "veth",
        "peer",
        "name",
        "ctdummy0p",
    ]);
    d.in_netns_ok(&["ip", "link", "set", "ctdummy0", "up"]);
    d.in_netns_ok(&["ip", "link", "set", "ctdummy0p", "up"]);
    // As a network (lxc network create mv --type=macvlan parent=...) and as a bare nictype.
    d.ok(
        "POST",
        "/1.0/networks",
        r#"{"name":"ctmv","type":"macvlan","config":{"parent":"ctdummy0"}}"#,
        201,
    );
    let nics = [
        json!({"type": "nic", "network": "ctmv", "name": "eth0"}),
        json!({"type": "nic", "nictype": "macvlan", "parent": "ctdummy0", "name": "eth0"}),
    ];
    for (i, nic) in nics.iter().enumerate() {
        let name = format!("m{i}");
        let body = json!({"name": name, "source": {"type": "image", "alias": "busybox"}, "profiles": [],
                          "devices": {"eth0": nic}});
        d.op_ok("POST", "/1.0/instances", &body.to_string());
        d.op_ok("PUT", &format!("/1.0/instances/{name}/state"), r#"{"action":"start"}"#);
        // Busybox's ip has no -d: the host's, in the container's namespace.
        let pid = d.get(&format!("/1.0/instances/{name}/state"))["pid"].as_i64().unwrap();
        let links = std::process::Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-n", "ip", "-d", "-o", "link", "show", "eth0"])
            .output()
            .unwrap();
        let links = String::from_utf8_lossy(&links.stdout);
        assert!(links.contains("macvlan mode bridge"), "{links}");
        let (code, out) = d.sh(
            &name,
            &format!("ip addr add 10.252.0.{}/24 dev eth0 && ip link set eth0 up", i + 2),
        );
        assert_eq!(code, 0, "{out}");
    }
    // Macvlans in bridge mode on one parent reach each other.
    let (code, out) = d.sh("m0", "ping -c 1 -W 2 10.252.0.3");
    assert_eq!(code, 0, "{out}");
    d.refused(
        "POST",
        "/1.0/networks",
        Some(r#"{"name":"ctmv2","type":"macvlan"}"#),
        400,
        "parent",
    );
}

#[test]
fn a_network_forward_reaches_the_instance() {
    if skip_unless_root("a_network_forward_reaches_the_instance") {
        return;
    }
    let Some(image) = busybox_image("a_network_forward_reaches_the_instance") else {
        return;
    };
    let d = TestDaemon::start("net-forward");
    d.import(&image, "busybox");
    create_network(
        &d,
        "ctbr6",
        json!({"ipv4.address": "10.251.12.1/24", "ipv6.address": "none"}),
    );
    launch_on(&d, "web", "ctbr6", json!({"ipv4.address": "10.251.12.80"}));
    assert_eq!(ipv4_of(&d, "web"), "10.251.12.80");
    let (code, out) = d.sh(
        "web",
        "mkdir -p /www && echo forwarded > /www/index.html && httpd -p 80 -h /www",
    );
    assert_eq!(code, 0, "{out}");
    // The listen address: one of the host's (here, of the test's namespace).
    d.in_netns_ok(&["ip", "addr", "add", "192.0.2.1/32", "dev", "lo"]);
    let forward = json!({
        "listen_address": "192.0.2.1",
        "ports": [{"protocol": "tcp", "listen_port": "8080", "target_address": "10.251.12.80", "target_port": "80"}],
    });
    d.ok("POST", "/1.0/networks/ctbr6/forwards", &forward.to_string(), 201);
    let got = d.get("/1.0/networks/ctbr6/forwards/192.0.2.1");
    assert_eq!(got["ports"][0]["listen_port"], "8080");
    let page = d.in_netns_ok(&["curl", "-s", "--max-time", "5", "http://192.0.2.1:8080/"]);
    assert_eq!(page.trim(), "forwarded");
    // Bad ports are refused; the forward goes and takes its rule along.
    let bad = json!({"listen_address": "192.0.2.2", "ports": [{"protocol": "sctp", "listen_port": "1", "target_address": "10.251.12.80"}]});
    d.refused(
        "POST",
        "/1.0/networks/ctbr6/forwards",
        Some(&bad.to_string()),
        400,
        "tcp or udp",
    );
    d.ok("DELETE", "/1.0/networks/ctbr6/forwards/192.0.2.1", "", 200);
    let out = d.in_netns(&["curl", "-s", "--max-time", "2", "http://192.0.2.1:8080/"]);
    assert!(!out.status.success(), "the forward is gone");
    assert!(!nft_table(&d, "ctbr6").unwrap().contains("dnat"));
}

#[test]
fn init_auto_makes_corralbr0_and_puts_eth0_in_the_default_profile() {
    if skip_unless_root("init_auto_makes_corralbr0_and_puts_eth0_in_the_default_profile") {
        return;
    }
    let Some(image) = busybox_image("init_auto_makes_corralbr0_and_puts_eth0_in_the_default_profile") else {
        return;
    };
    let d = TestDaemon::start("net-init");
    for _ in 0..2 {
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", d.netns))
            .arg(support::corrald())
            .args(["init", "--auto"])
            .env("CORRAL_DIR", &d.dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let net = d.get("/1.0/networks/corralbr0");
    assert_eq!(net["config"]["ipv4.nat"], "true", "{net}");
    let eth0 = d.get("/1.0/profiles/default")["devices"]["eth0"].clone();
    assert_eq!(eth0, json!({"type": "nic", "network": "corralbr0", "name": "eth0"}));
    // A plain launch gets an address on it.
    d.import(&image, "busybox");
    d.op_ok(
        "POST",
        "/1.0/instances",
        r#"{"name":"plain","source":{"type":"image","alias":"busybox"}}"#,
    );
    d.op_ok("PUT", "/1.0/instances/plain/state", r#"{"action":"start"}"#);
    let subnet = net["config"]["ipv4.address"]
        .as_str()
        .unwrap()
        .rsplit_once('.')
        .unwrap()
        .0
        .to_string();
    assert!(ipv4_of(&d, "plain").starts_with(&subnet));
    // And `corral list` shows it.
    let list = d.corral_ok(&["list", "--format", "csv"]);
    assert!(list.contains(&subnet), "{list}");
}

#[test]
fn the_lxc_client_manages_networks_and_sees_leases() {
    if skip_unless_root("the_lxc_client_manages_networks_and_sees_leases")
        || support::skip_unless_lxc("the_lxc_client_manages_networks_and_sees_leases")
    {
        return;
    }
    let Some(image) = busybox_image("the_lxc_client_manages_networks_and_sees_leases") else {
        return;
    };
    let d = TestDaemon::start("net-lxc");
    d.import(&image, "busybox");
    d.lxc_ok(&[
        "network",
        "create",
        "ctbr7",
        "ipv4.address=10.251.13.1/24",
        "ipv6.address=none",
    ]);
    let list = d.lxc_ok(&["network", "list", "--format", "csv"]);
    assert!(
        list.lines().any(|l| l.starts_with("ctbr7,bridge,YES,10.251.13.1/24")),
        "{list}"
    );
    let show = d.lxc_ok(&["network", "show", "ctbr7"]);
    assert!(
        show.contains("ipv4.address: 10.251.13.1/24") && show.contains("managed: true"),
        "{show}"
    );
    d.lxc_ok(&["network", "set", "ctbr7", "ipv4.dhcp.expiry", "2h"]);
    assert_eq!(d.lxc_ok(&["network", "get", "ctbr7", "ipv4.dhcp.expiry"]).trim(), "2h");
    d.lxc_ok(&["init", "busybox", "l1", "--network", "ctbr7"]);
    d.corral_ok(&["init", "busybox", "l2", "--network", "ctbr7"]);
    assert_eq!(d.get("/1.0/instances/l2")["devices"]["eth0"]["network"], "ctbr7");
    d.op_ok("DELETE", "/1.0/instances/l2", "");
    d.lxc_ok(&["start", "l1"]);
    let addr = ipv4_of(&d, "l1");
    let leases = d.lxc_ok(&["network", "list-leases", "ctbr7", "--format", "csv"]);
    assert!(
        leases
            .lines()
            .any(|l| l.starts_with("l1,") && l.contains(&addr) && l.contains("DYNAMIC")),
        "{leases}\n{}",
        d.get("/1.0/instances/l1")
    );
    let refused = d.lxc(&["network", "delete", "ctbr7"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("in use"));
    d.lxc_ok(&["delete", "--force", "l1"]);
    d.lxc_ok(&["network", "delete", "ctbr7"]);
    assert!(!d.lxc_ok(&["network", "list", "--format", "csv"]).contains("ctbr7"));
    // Our own CLI, the same verbs.
    d.corral_ok(&[
        "network",
        "create",
        "ctbr8",
        "ipv4.address=10.251.14.1/24",
        "ipv6.address=none",
    ]);
    assert!(d
        .corral_ok(&["network", "list", "--format", "csv"])
        .contains("ctbr8,bridge,YES"));
    d.corral_ok(&["network", "rename", "ctbr8", "ctbr9"]);
    assert!(d.corral_ok(&["network", "info", "ctbr9"]).contains("10.251.14.1"));
    d.corral_ok(&["network", "delete", "ctbr9"]);
    assert!(!has_link(&d, "ctbr9") && !has_link(&d, "ctbr8"));
}

#[test]
fn nic_rate_limits_shape_traffic_and_a_p2p_nic_is_routed_by_the_host() {
    if skip_unless_root("nic_rate_limits_shape_traffic_and_a_p2p_nic_is_routed_by_the_host") {
        return;
    }
    let Some(image) = busybox_image("nic_rate_limits_shape_traffic_and_a_p2p_nic_is_routed_by_the_host") else {
        return;
    };
    let mut d = TestDaemon::start("net-limits");
    d.import(&image, "busybox");
    create_network(
        &d,
        "ctbr10",
        json!({"ipv4.address": "10.251.15.1/24", "ipv6.address": "none"}),
    );
    launch_on(
        &d,
        "r1",
        "ctbr10",
        json!({"limits.ingress": "4Mbit", "limits.egress": "2Mbit"}),
    );
    let addr = ipv4_of(&d, "r1");
    let host = d.get("/1.0/instances/r1")["config"]["volatile.eth0.host_name"]
        .as_str()
        .unwrap()
        .to_string();
    let qdisc = d.in_netns_ok(&["tc", "class", "show", "dev", &host]);
    assert!(qdisc.contains("htb") && qdisc.contains("rate 4Mbit"), "{qdisc}");
    let police = d.in_netns_ok(&["nft", "list", "table", "netdev", &format!("corral_nic_{host}")]);
    assert!(
        police.contains("limit rate over 250000 bytes/second"),
        "2 Mbit/s policed: {police}"
    );
    // 1 MB sent to the instance at 4 Mbit/s takes 2 s (unshaped, a few milliseconds).
    let blob = d.dir.join("blob");
    std::fs::write(&blob, vec![0u8; 1_000_000]).unwrap();
    let mut server = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", d.netns))
        .args([
            "socat",
            "-u",
            &format!("OPEN:{}", blob.display()),
            "TCP-LISTEN:7000,bind=10.251.15.1,reuseaddr",
        ])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let t = std::time::Instant::now();
    let (code, out) = d.sh("r1", "nc 10.251.15.1 7000 | wc -c");
    let took = t.elapsed();
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!((code, out.trim()), (0, "1000000"), "from {addr}");
    assert!(
        took >= Duration::from_millis(1500),
        "1 MB at 4 Mbit/s took only {took:?}"
    );
    d.op_ok("PUT", "/1.0/instances/r1/state", r#"{"action":"stop","force":true}"#);
    let left = d.in_netns(&["nft", "list", "table", "netdev", &format!("corral_nic_{host}")]);
    assert!(!left.status.success(), "the policer outlived the instance");

    // A policer whose device is gone (its instance stopped while no daemon ran) goes at the
    // daemon's next start; the policer of a running instance stays.
    d.in_netns_ok(&["nft", "add", "table", "netdev", "corral_nic_vethgone0"]);
    d.op_ok("PUT", "/1.0/instances/r1/state", r#"{"action":"start"}"#);
    let host = d.get("/1.0/instances/r1")["config"]["volatile.eth0.host_name"]
        .as_str()
        .unwrap()
        .to_string();
    d.crash();
    d.spawn();
    let stale = d.in_netns(&["nft", "list", "table", "netdev", "corral_nic_vethgone0"]);
    assert!(!stale.status.success(), "the policer of a device that is gone was kept");
    let police = d.in_netns_ok(&["nft", "list", "table", "netdev", &format!("corral_nic_{host}")]);
    assert!(police.contains("limit rate over"), "{police}");
    d.op_ok("PUT", "/1.0/instances/r1/state", r#"{"action":"stop","force":true}"#);

    // p2p: a veth whose host side is on no bridge; the host routes to it.
    let body = json!({"name": "pp", "source": {"type": "image", "alias": "busybox"}, "profiles": [],
                      "devices": {"eth0": {"type": "nic", "nictype": "p2p", "name": "eth0"}}});
    d.op_ok("POST", "/1.0/instances", &body.to_string());
    d.op_ok("PUT", "/1.0/instances/pp/state", r#"{"action":"start"}"#);
    let host = d.get("/1.0/instances/pp")["config"]["volatile.eth0.host_name"]
        .as_str()
        .unwrap()
        .to_string();
    let link = d.in_netns_ok(&["ip", "-o", "link", "show", "dev", &host]);
    assert!(!link.contains("master"), "a p2p host side is on no bridge: {link}");
    d.in_netns_ok(&["ip", "addr", "add", "10.253.0.1/30", "dev", &host]);
    let (code, out) = d.sh(
        "pp",
        "ip addr add 10.253.0.2/30 dev eth0 && ip link set eth0 up && ping -c 1 -W 2 10.253.0.1",
    );
    assert_eq!(code, 0, "{out}");
}

#[test]
fn an_ipv6_network_gives_containers_slaac_addresses() {
    if skip_unless_root("an_ipv6_network_gives_containers_slaac_addresses") {
        return;
    }
    let Some(image) = busybox_image("an_ipv6_network_gives_containers_slaac_addresses") else {
        return;
    };
    let d = TestDaemon::start("net-v6");
    d.import(&image, "busybox");
    create_network(
        &d,
        "ctbr11",
        json!({"ipv4.address": "none", "ipv6.address": "fd42:7:7:7::1/64"}),
    );
    launch_on(&d, "v6", "ctbr11", json!({}));
    // Router advertisements from the bridge's dnsmasq; the kernel configures the address.
    let addr = wait_for(Duration::from_secs(20), || {
        let (_, out) = d.sh("v6", "ip -6 -o addr show dev eth0 scope global");
        out.contains("fd42:7:7:7:").then_some(out)
    });
    assert!(addr.is_some(), "no SLAAC address: {}", d.sh("v6", "ip -6 addr").1);
    let (code, out) = d.sh("v6", "ping -c 1 -W 2 fd42:7:7:7::1");
    assert_eq!(code, 0, "{out}");
}

#[test]
fn a_physical_nic_moves_in_and_back_out() {
    if skip_unless_root("a_physical_nic_moves_in_and_back_out") {
        return;
    }
    let Some(image) = busybox_image("a_physical_nic_moves_in_and_back_out") else {
        return;
    };
    let d = TestDaemon::start("net-physical");
    d.import(&image, "busybox");
    // The "physical" interface: one end of a veth pair whose other end stays on the host side.
    d.in_netns_ok(&[
        "ip", "link", "add", "ctphys0", "type", "veth", "peer", "name", "ctphys0p",
    ]);
    d.in_netns_ok(&["ip", "addr", "add", "10.254.0.1/30", "dev", "ctphys0p"]);
    d.in_netns_ok(&["ip", "link", "set", "ctphys0p", "up"]);
    let body = json!({"name": "ph", "source": {"type": "image", "alias": "busybox"}, "profiles": [],
                      "devices": {"eth1": {"type": "nic", "nictype": "physical", "parent": "ctphys0", "name": "eth1"}}});
    d.op_ok("POST", "/1.0/instances", &body.to_string());
    for round in 0..2 {
        d.op_ok("PUT", "/1.0/instances/ph/state", r#"{"action":"start"}"#);
        assert!(!has_link(&d, "ctphys0"), "round {round}: the interface left the host");
        let (code, out) = d.sh(
            "ph",
            "ip addr add 10.254.0.2/30 dev eth1 && ip link set eth1 up && ping -c 1 -W 2 10.254.0.1",
        );
        assert_eq!(code, 0, "round {round}: {out}");
        d.op_ok("PUT", "/1.0/instances/ph/state", r#"{"action":"stop","force":true}"#);
        assert!(
            has_link(&d, "ctphys0"),
            "round {round}: the interface came back under its name"
        );
    }
    // Hot-unplug moves it back too.
    d.op_ok("PUT", "/1.0/instances/ph/state", r#"{"action":"start"}"#);
    d.op_ok(
        "PUT",
        "/1.0/instances/ph",
        &json!({"devices": {}, "profiles": [], "config": {}}).to_string(),
    );
    assert!(has_link(&d, "ctphys0"));
    assert!(!interfaces_in(&d, "ph").contains("eth1"));
}
