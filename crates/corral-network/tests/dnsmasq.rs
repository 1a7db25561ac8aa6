//! The dnsmasq supervisor, inside throwaway network namespaces (root only).

mod support;

use corral_network::dnsmasq::{Dnsmasq, DnsmasqConfig, DnsmasqError, DnsmasqPaths, Ipv4Dhcp, StaticLease};
use corral_network::link::BridgeSpec;
use support::{require, DnsmasqGuard, TempDir, TestNetns};

fn config(state: &std::path::Path) -> DnsmasqConfig {
    let mut config = DnsmasqConfig::new("br0", state);
    config.ipv4 = Some(Ipv4Dhcp {
        address: "10.20.70.1/24".parse().unwrap(),
        dhcp: true,
        ranges: Vec::new(),
        lease_time: "1h".into(),
    });
    config
}

fn bridge(ns: &TestNetns) {
    let spec = BridgeSpec {
        name: "br0".into(),
        mtu: None,
        mac: None,
        addresses: vec!["10.20.70.1/24".parse().unwrap()],
    };
    ns.netns.netlink(|nl| nl.create_bridge(&spec)).unwrap();
}

fn ppid_and_session(pid: i32) -> (i32, i32) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    (fields[1].parse().unwrap(), fields[3].parse().unwrap())
}

#[test]
fn started_detached_adopted_reloaded_stopped() {
    if !require("started_detached_adopted_reloaded_stopped", &["dnsmasq"]) {
        return;
    }
    let ns = TestNetns::new("dq");
    let dir = TempDir::new("dq");
    bridge(&ns);
    let config = config(&dir.path().join("dnsmasq"));
    let paths = config.paths();
    let mut guard = DnsmasqGuard(Some(ns.run(|| Dnsmasq::start(&config)).unwrap()));
    let pid = guard.get().pid();
    assert!(guard.get().is_alive());

    // Detached: its own session, not our child, so it outlives the daemon that started it.
    let (ppid, session) = ppid_and_session(pid);
    assert_ne!(ppid, std::process::id() as i32);
    assert_ne!(session, nix::unistd::getsid(None).unwrap().as_raw());
    assert_eq!(ns.pids(), [pid], "it runs in the network's namespace");

    // A restarted daemon takes it back from the pid file; a second start is refused.
    drop(guard.take());
    let adopted = Dnsmasq::adopt(&paths.pid).unwrap().expect("still running");
    assert_eq!(adopted.pid(), pid);
    let err = ns.run(|| Dnsmasq::start(&config)).unwrap_err();
    assert!(
        matches!(err, DnsmasqError::AlreadyRunning { pid: p, .. } if p == pid),
        "{err}"
    );
    guard.0 = Some(adopted);

    // SIGHUP rereads the static leases.
    let lease = StaticLease {
        mac: "00:16:3e:00:00:01".parse().unwrap(),
        ipv4: Some("10.20.70.10".parse().unwrap()),
        ipv6: None,
        hostname: Some("web".into()),
    };
    guard.get().set_static_leases(&[lease]).unwrap();
    let reads = |paths: &DnsmasqPaths| {
        std::fs::read_to_string(&paths.log)
            .unwrap()
            .matches(&format!("read {}", paths.hosts.display()))
            .count()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while reads(&paths) < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(reads(&paths), 2, "{}", std::fs::read_to_string(&paths.log).unwrap());

    guard.take().stop().unwrap();
    assert!(ns.pids().is_empty(), "dnsmasq gone");
    assert!(!paths.pid.exists());
    assert!(paths.leases.exists(), "leases stay for the next start");
    assert!(Dnsmasq::adopt(&paths.pid).unwrap().is_none());
    paths.remove().unwrap();
    assert!(!paths.dir.exists());
}

#[test]
fn a_failed_start_says_why_and_leaves_nothing_running() {
    if !require("a_failed_start_says_why_and_leaves_nothing_running", &["dnsmasq"]) {
        return;
    }
    let ns = TestNetns::new("dqbad");
    let dir = TempDir::new("dqbad");
    // No bridge: nothing to bind to.
    let err = ns.run(|| Dnsmasq::start(&config(dir.path()))).unwrap_err();
    let DnsmasqError::StartFailed { stderr, .. } = &err else {
        panic!("{err}")
    };
    assert!(stderr.contains("10.20.70.1") || stderr.contains("br0"), "{err}");
    assert!(ns.pids().is_empty());
}

#[test]
fn adopt_refuses_a_pid_that_is_not_our_dnsmasq() {
    if !require("adopt_refuses_a_pid_that_is_not_our_dnsmasq", &[]) {
        return;
    }
    let dir = TempDir::new("dqpid");
    let paths = DnsmasqPaths::new(dir.path());
    assert!(Dnsmasq::adopt(&paths.pid).unwrap().is_none(), "no pid file");
    // A live pid that is not a dnsmasq (this test), as after a reboot and pid reuse.
    std::fs::write(&paths.pid, format!("{}\n", std::process::id())).unwrap();
    assert!(Dnsmasq::adopt(&paths.pid).unwrap().is_none());
    std::fs::write(&paths.pid, "garbage").unwrap();
    assert!(matches!(
        Dnsmasq::adopt(&paths.pid),
        Err(DnsmasqError::BadPidFile { .. })
    ));
}

#[test]
fn every_rendered_variant_passes_dnsmasq_syntax_check() {
    if !require("every_rendered_variant_passes_dnsmasq_syntax_check", &["dnsmasq"]) {
        return;
    }
    use corral_network::dnsmasq::{Ipv6Dhcp, Upstream};
    use corral_network::subnet::{parse_ipv4_ranges, parse_ipv6_ranges};
    let dir = TempDir::new("dqsyntax");
    let v6 = "fd42:20:70::1/64".parse().unwrap();
    let mut variants = Vec::new();
    for (dhcp, stateful, ranges) in [
        (true, false, ""),
        (true, true, ""),
        (true, true, "fd42:20:70::100-fd42:20:70::1ff"),
        (false, false, ""),
    ] {
        let mut c = config(dir.path());
        c.ipv6 = Some(Ipv6Dhcp {
            address: v6,
            dhcp,
            stateful,
            ranges: if ranges.is_empty() {
                Vec::new()
            } else {
                parse_ipv6_ranges(ranges, v6).unwrap()
            },
            lease_time: "infinite".into(),
        });
        variants.push(c);
    }
    let mut c = config(dir.path());
    let v4 = c.ipv4.as_mut().unwrap();
    v4.ranges = parse_ipv4_ranges("10.20.70.100-10.20.70.120,10.20.70.200-10.20.70.210", v4.address).unwrap();
    c.upstream = Upstream::Servers(vec!["192.0.2.53".parse().unwrap(), "2001:db8::53".parse().unwrap()]);
    c.raw = Some("dhcp-option=option:ntp-server,10.20.70.1".into());
    c.dns_domain = "lab.example".into();
    variants.push(c);
    let mut c = config(dir.path());
    c.upstream = Upstream::ResolvConf(None);
    c.ipv4.as_mut().unwrap().dhcp = false;
    variants.push(c);

    for (i, variant) in variants.iter().enumerate() {
        let path = dir.path().join(format!("v{i}.conf"));
        std::fs::write(&path, variant.render().unwrap()).unwrap();
        let out = std::process::Command::new("dnsmasq")
            .arg("--test")
            .arg(format!("--conf-file={}", path.display()))
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && said.contains("syntax check OK"),
            "variant {i}: {said}\n{}",
            variant.render().unwrap()
        );
    }
}
