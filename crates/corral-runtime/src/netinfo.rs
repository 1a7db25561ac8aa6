//! What a container's network namespace holds: its interfaces with their addresses, link
//! state, MTU, hardware address and counters, read from the host through the container's init
//! (`/proc/<pid>/...`), for the state API.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::os::fd::AsFd;

/// One interface of the container.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Interface {
    pub name: String,
    pub addresses: Vec<Address>,
    /// `up` or `down`.
    pub state: String,
    /// `loopback` or `broadcast`.
    pub kind: String,
    pub mtu: u32,
    pub hwaddr: String,
    pub counters: Counters,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Address {
    pub address: IpAddr,
    pub prefix_len: u8,
    /// `local`, `link` or `global`.
    pub scope: &'static str,
}

/// `/proc/net/dev`'s counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters {
    pub bytes_received: u64,
    pub packets_received: u64,
    pub errors_received: u64,
    pub dropped_received: u64,
    pub bytes_sent: u64,
    pub packets_sent: u64,
    pub errors_sent: u64,
    pub dropped_sent: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum NetInfoError {
    #[error("cannot read the network of process {pid}: {source}")]
    Read { pid: i32, source: std::io::Error },
    #[error("cannot enter the network namespace of process {pid}: {source}")]
    Enter { pid: i32, source: nix::Error },
}

/// The interfaces in the network namespace of `pid`, by name.
pub fn interfaces(pid: i32) -> Result<BTreeMap<String, Interface>, NetInfoError> {
    let read = |file: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/net/{file}")).map_err(|source| NetInfoError::Read { pid, source })
    };
    let mut out: BTreeMap<String, Interface> = BTreeMap::new();
    for (name, counters) in parse_net_dev(&read("dev")?) {
        out.insert(
            name.clone(),
            Interface {
                name,
                counters,
                ..Default::default()
            },
        );
    }
    for (name, found) in addresses_in(pid)? {
        if let Some(iface) = out.get_mut(&name) {
            iface.addresses = found.addresses;
            iface.state = found.state;
            iface.kind = found.kind;
            iface.hwaddr = found.hwaddr;
        }
    }
    for iface in out.values_mut() {
        // The container's own sysfs shows its namespace's devices.
        let sys = format!("/proc/{pid}/root/sys/class/net/{}/mtu", iface.name);
        iface.mtu = std::fs::read_to_string(sys)
            .ok()
            .and_then(|m| m.trim().parse().ok())
            .unwrap_or(0);
    }
    Ok(out)
}

/// Addresses, flags and link addresses, asked of the kernel from inside the namespace: a
/// short-lived thread enters it (a thread may change its own network namespace) and calls
/// getifaddrs, which reads them over netlink there.
fn addresses_in(pid: i32) -> Result<BTreeMap<String, Interface>, NetInfoError> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).map_err(|source| NetInfoError::Read { pid, source })?;
    std::thread::spawn(move || -> Result<BTreeMap<String, Interface>, NetInfoError> {
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|source| NetInfoError::Enter { pid, source })?;
        let addrs = nix::ifaddrs::getifaddrs().map_err(|source| NetInfoError::Enter { pid, source })?;
        let mut out: BTreeMap<String, Interface> = BTreeMap::new();
        for a in addrs {
            let iface = out.entry(a.interface_name.clone()).or_default();
            let flags = a.flags;
            iface.state = if flags.contains(nix::net::if_::InterfaceFlags::IFF_UP) {
                "up"
            } else {
                "down"
            }
            .into();
            iface.kind = if flags.contains(nix::net::if_::InterfaceFlags::IFF_LOOPBACK) {
                "loopback"
            } else {
                "broadcast"
            }
            .into();
            let Some(addr) = a.address else { continue };
            if let Some(link) = addr.as_link_addr() {
                if let Some(mac) = link.addr() {
                    iface.hwaddr = mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
                }
                continue;
            }
            let (ip, mask): (IpAddr, Option<IpAddr>) = if let Some(v4) = addr.as_sockaddr_in() {
                (
                    IpAddr::V4(v4.ip()),
                    a.netmask.and_then(|m| m.as_sockaddr_in().map(|m| IpAddr::V4(m.ip()))),
                )
            } else if let Some(v6) = addr.as_sockaddr_in6() {
                (
                    IpAddr::V6(v6.ip()),
                    a.netmask.and_then(|m| m.as_sockaddr_in6().map(|m| IpAddr::V6(m.ip()))),
                )
            } else {
                continue;
            };
            iface.addresses.push(Address {
                address: ip,
                prefix_len: mask.map(prefix_len).unwrap_or(0),
                scope: scope(&ip),
            });
        }
        Ok(out)
    })
    .join()
    .unwrap_or_else(|_| Ok(BTreeMap::new()))
}

fn prefix_len(mask: IpAddr) -> u8 {
    match mask {
        IpAddr::V4(m) => u32::from(m).count_ones() as u8,
        IpAddr::V6(m) => u128::from(m).count_ones() as u8,
    }
}

fn scope(ip: &IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(v4) if v4.is_loopback() => "local",
        IpAddr::V4(v4) if v4.is_link_local() => "link",
        IpAddr::V6(v6) if v6.is_loopback() => "local",
        IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80 => "link",
        _ => "global",
    }
}

/// `/proc/net/dev`: two header lines, then `name: rx(8 fields) tx(8 fields)`.
fn parse_net_dev(text: &str) -> Vec<(String, Counters)> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let n: Vec<u64> = rest.split_whitespace().filter_map(|f| f.parse().ok()).collect();
            (n.len() >= 16).then(|| {
                (
                    name.trim().to_string(),
                    Counters {
                        bytes_received: n[0],
                        packets_received: n[1],
                        errors_received: n[2],
                        dropped_received: n[3],
                        bytes_sent: n[8],
                        packets_sent: n[9],
                        errors_sent: n[10],
                        dropped_sent: n[11],
                    },
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_dev_parses() {
        let text = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:  1200      12    0    0    0     0          0         0     1200      12    0    0    0     0       0          0\n  eth0: 5000 40 1 2 0 0 0 0 6000 50 3 4 0 0 0 0\n";
        let got = parse_net_dev(text);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, "lo");
        assert_eq!(got[0].1.bytes_received, 1200);
        assert_eq!(
            got[1].1,
            Counters {
                bytes_received: 5000,
                packets_received: 40,
                errors_received: 1,
                dropped_received: 2,
                bytes_sent: 6000,
                packets_sent: 50,
                errors_sent: 3,
                dropped_sent: 4,
            }
        );
    }

    #[test]
    fn this_process_sees_its_loopback() {
        let me = std::process::id() as i32;
        let ifaces = interfaces(me).expect("read my own network");
        let lo = ifaces.get("lo").expect("lo");
        assert_eq!(lo.kind, "loopback");
        assert!(lo
            .addresses
            .iter()
            .any(|a| a.address == IpAddr::from([127, 0, 0, 1]) && a.prefix_len == 8));
    }
}
