//! Subnets: `ipv4.address`/`ipv6.address` as LXD accepts them, free subnets, overlaps.
//!
//! A network's address is the bridge's own address with the subnet's prefix, as in LXD:
//! `10.1.2.1/24` means "the host is 10.1.2.1 on 10.1.2.0/24".

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

pub use ipnet::{IpNet, Ipv4Net, Ipv6Net};

#[derive(Debug, thiserror::Error)]
pub enum SubnetError {
    #[error("invalid {family} address {value:?}: expected 'auto', 'none' or ADDRESS/PREFIX (like {example})")]
    Syntax {
        family: Family,
        value: String,
        example: &'static str,
    },
    #[error("{value:?} is an {found} address where an {family} one is expected")]
    WrongFamily {
        family: Family,
        found: Family,
        value: String,
    },
    #[error("{value:?}: prefix /{prefix} leaves no room for hosts (at most /{max} for a bridge)")]
    PrefixTooLong { value: String, prefix: u8, max: u8 },
    #[error("{value:?} is not a usable host address: it is {why}")]
    NotUsable { value: String, why: &'static str },
    #[error("invalid DHCP range {value:?}: expected START-END[,START-END...]")]
    RangeSyntax { value: String },
    #[error("DHCP range {start}-{end}: {why}")]
    BadRange { start: IpAddr, end: IpAddr, why: String },
    #[error("{subnet} overlaps {other} ({owner})")]
    Overlap { subnet: IpNet, other: IpNet, owner: String },
    #[error("no free IPv4 /24 left in 10.0.0.0/8")]
    Exhausted,
    #[error("reading the kernel's randomness: {0}")]
    Random(#[source] std::io::Error),
    #[error("reading the host's routes and addresses: {0}")]
    Host(#[source] Box<crate::link::LinkError>),
}

/// IPv4 or IPv6, for messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::Ipv4 => "IPv4",
            Family::Ipv6 => "IPv6",
        })
    }
}

/// The value of `ipv4.address` or `ipv6.address`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressSetting<N> {
    /// `auto`: the daemon picks a free subnet when the network is created.
    Auto,
    /// `none` (or empty): no address of this family on the bridge.
    None,
    /// The bridge's address and the subnet's prefix.
    Static(N),
}

/// Parses `ipv4.address`: `auto`, `none`, empty, or `10.1.2.1/24`.
pub fn parse_ipv4_setting(value: &str) -> Result<AddressSetting<Ipv4Net>, SubnetError> {
    match parse_setting(value, Family::Ipv4)? {
        AddressSetting::Static(IpNet::V4(net)) => Ok(AddressSetting::Static(net)),
        AddressSetting::Static(IpNet::V6(_)) => unreachable!("parse_setting checks the family"),
        AddressSetting::Auto => Ok(AddressSetting::Auto),
        AddressSetting::None => Ok(AddressSetting::None),
    }
}

/// Parses `ipv6.address`: `auto`, `none`, empty, or `fd42::1/64`.
pub fn parse_ipv6_setting(value: &str) -> Result<AddressSetting<Ipv6Net>, SubnetError> {
    match parse_setting(value, Family::Ipv6)? {
        AddressSetting::Static(IpNet::V6(net)) => Ok(AddressSetting::Static(net)),
        AddressSetting::Static(IpNet::V4(_)) => unreachable!("parse_setting checks the family"),
        AddressSetting::Auto => Ok(AddressSetting::Auto),
        AddressSetting::None => Ok(AddressSetting::None),
    }
}

fn parse_setting(value: &str, family: Family) -> Result<AddressSetting<IpNet>, SubnetError> {
    let trimmed = value.trim();
    match trimmed {
        "auto" => return Ok(AddressSetting::Auto),
        "none" | "" => return Ok(AddressSetting::None),
        _ => {}
    }
    let example = match family {
        Family::Ipv4 => "10.1.2.1/24",
        Family::Ipv6 => "fd42:1:2:3::1/64",
    };
    let syntax = || SubnetError::Syntax {
        family,
        value: value.to_string(),
        example,
    };
    let net = IpNet::from_str(trimmed).map_err(|_| syntax())?;
    let found = match net {
        IpNet::V4(_) => Family::Ipv4,
        IpNet::V6(_) => Family::Ipv6,
    };
    if found != family {
        return Err(SubnetError::WrongFamily {
            family,
            found,
            value: value.to_string(),
        });
    }
    check_host_address(net, value)?;
    Ok(AddressSetting::Static(net))
}

/// Refuses what cannot be a bridge's address: a subnet without hosts, or an address that is the
/// subnet itself, its broadcast, loopback, multicast, link-local or unspecified.
fn check_host_address(net: IpNet, value: &str) -> Result<(), SubnetError> {
    let not_usable = |why| {
        Err(SubnetError::NotUsable {
            value: value.to_string(),
            why,
        })
    };
    match net {
        IpNet::V4(n) => {
            if n.prefix_len() > 30 {
                return Err(SubnetError::PrefixTooLong {
                    value: value.to_string(),
                    prefix: n.prefix_len(),
                    max: 30,
                });
            }
            let a = n.addr();
            if a == n.network() {
                return not_usable("the subnet's network address");
            }
            if a == n.broadcast() {
                return not_usable("the subnet's broadcast address");
            }
            if a.is_loopback() {
                return not_usable("a loopback address");
            }
            if a.is_multicast() || a.is_broadcast() {
                return not_usable("a multicast or broadcast address");
            }
            if a.is_link_local() {
                return not_usable("a link-local address");
            }
            if a.is_unspecified() {
                return not_usable("the unspecified address");
            }
        }
        IpNet::V6(n) => {
            if n.prefix_len() > 126 {
                return Err(SubnetError::PrefixTooLong {
                    value: value.to_string(),
                    prefix: n.prefix_len(),
                    max: 126,
                });
            }
            let a = n.addr();
            if a == n.network() {
                return not_usable("the subnet's anycast (network) address");
            }
            if a.is_loopback() {
                return not_usable("a loopback address");
            }
            if a.is_multicast() {
                return not_usable("a multicast address");
            }
            if a.is_unicast_link_local() {
                return not_usable("a link-local address");
            }
            if a.is_unspecified() {
                return not_usable("the unspecified address");
            }
        }
    }
    Ok(())
}

/// One DHCP range, both ends included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressRange<A> {
    pub start: A,
    pub end: A,
}

/// Parses `ipv4.dhcp.ranges` (`10.1.2.100-10.1.2.200,10.1.2.210-10.1.2.220`) and checks each
/// range lies inside `subnet`'s host addresses.
pub fn parse_ipv4_ranges(value: &str, subnet: Ipv4Net) -> Result<Vec<AddressRange<Ipv4Addr>>, SubnetError> {
    parse_ranges(value, |start: Ipv4Addr, end: Ipv4Addr| {
        let inside = |a: Ipv4Addr| subnet.contains(&a) && a != subnet.network() && a != subnet.broadcast();
        (inside(start) && inside(end))
            .then_some(())
            .ok_or_else(|| format!("not inside the hosts of {}", subnet.trunc()))
    })
}

/// Parses `ipv6.dhcp.ranges` (stateful DHCPv6) and checks each range lies inside `subnet`.
pub fn parse_ipv6_ranges(value: &str, subnet: Ipv6Net) -> Result<Vec<AddressRange<Ipv6Addr>>, SubnetError> {
    parse_ranges(value, |start: Ipv6Addr, end: Ipv6Addr| {
        let inside = |a: Ipv6Addr| subnet.contains(&a) && a != subnet.network();
        (inside(start) && inside(end))
            .then_some(())
            .ok_or_else(|| format!("not inside {}", subnet.trunc()))
    })
}

fn parse_ranges<A>(value: &str, check: impl Fn(A, A) -> Result<(), String>) -> Result<Vec<AddressRange<A>>, SubnetError>
where
    A: FromStr + Ord + Copy + Into<IpAddr>,
{
    let syntax = || SubnetError::RangeSyntax {
        value: value.to_string(),
    };
    let mut ranges = Vec::new();
    for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (start, end) = part.split_once('-').ok_or_else(syntax)?;
        let start: A = start.trim().parse().map_err(|_| syntax())?;
        let end: A = end.trim().parse().map_err(|_| syntax())?;
        let bad = |why: String| SubnetError::BadRange {
            start: start.into(),
            end: end.into(),
            why,
        };
        if start > end {
            return Err(bad("the start is after the end".into()));
        }
        check(start, end).map_err(bad)?;
        ranges.push(AddressRange { start, end });
    }
    if ranges.is_empty() {
        return Err(syntax());
    }
    Ok(ranges)
}

/// Whether two subnets share any address.
pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The first of `in_use` that overlaps `subnet`.
pub fn find_overlap(subnet: &IpNet, in_use: &[IpNet]) -> Option<IpNet> {
    in_use.iter().find(|other| overlaps(subnet, other)).copied()
}

/// Checks `subnet` against the host's routes and addresses (`host`, see
/// [`crate::link::Netlink::networks_in_use`]) and other networks' subnets (name, subnet).
pub fn check_no_overlap(subnet: IpNet, host: &[IpNet], others: &[(String, IpNet)]) -> Result<(), SubnetError> {
    let subnet = subnet.trunc();
    if let Some(other) = find_overlap(&subnet, host) {
        return Err(SubnetError::Overlap {
            subnet,
            other,
            owner: "a route or address of the host".into(),
        });
    }
    for (name, other) in others {
        if overlaps(&subnet, other) {
            return Err(SubnetError::Overlap {
                subnet,
                other: other.trunc(),
                owner: format!("network {name}"),
            });
        }
    }
    Ok(())
}

/// A /24 in 10.0.0.0/8 that overlaps nothing in `in_use`, returned as the bridge's address
/// (`10.x.y.1/24`). The search starts at a place derived from `seed` (the network's name), so
/// the same name on the same host gets the same subnet, and goes on from there.
pub fn pick_ipv4_subnet(seed: &str, in_use: &[IpNet]) -> Result<Ipv4Net, SubnetError> {
    let start = (crate::hash::fnv1a(seed.as_bytes()) % 65536) as u32;
    for i in 0..65536u32 {
        let n = (start + i) % 65536;
        let subnet = Ipv4Net::new_assert(Ipv4Addr::new(10, (n >> 8) as u8, n as u8, 0), 24);
        if find_overlap(&IpNet::V4(subnet), in_use).is_none() {
            return Ok(Ipv4Net::new_assert(Ipv4Addr::new(10, (n >> 8) as u8, n as u8, 1), 24));
        }
    }
    Err(SubnetError::Exhausted)
}

/// A random unique local /64 (RFC 4193: fd00::/8, 40 random bits of global ID, a random subnet
/// ID), returned as the bridge's address `fdXX:XXXX:XXXX:XXXX::1/64`; tried again in the
/// unlikely case it overlaps something in `in_use`.
pub fn random_ipv6_ula(in_use: &[IpNet]) -> Result<Ipv6Net, SubnetError> {
    loop {
        let r: [u8; 7] = crate::hash::random_bytes().map_err(SubnetError::Random)?;
        let mut o = [0u8; 16];
        o[0] = 0xfd;
        o[1..8].copy_from_slice(&r);
        let subnet = Ipv6Net::new_assert(Ipv6Addr::from(o), 64);
        if find_overlap(&IpNet::V6(subnet), in_use).is_none() {
            o[15] = 1;
            return Ok(Ipv6Net::new_assert(Ipv6Addr::from(o), 64));
        }
    }
}

/// [`pick_ipv4_subnet`] against this network namespace's routes and addresses and `others`.
pub fn pick_ipv4_subnet_for_host(seed: &str, others: &[IpNet]) -> Result<Ipv4Net, SubnetError> {
    let mut in_use = host_networks()?;
    in_use.extend_from_slice(others);
    pick_ipv4_subnet(seed, &in_use)
}

/// [`random_ipv6_ula`] against this network namespace's routes and addresses and `others`.
pub fn random_ipv6_ula_for_host(others: &[IpNet]) -> Result<Ipv6Net, SubnetError> {
    let mut in_use = host_networks()?;
    in_use.extend_from_slice(others);
    random_ipv6_ula(&in_use)
}

fn host_networks() -> Result<Vec<IpNet>, SubnetError> {
    let nl = crate::link::Netlink::new().map_err(|e| SubnetError::Host(Box::new(e)))?;
    nl.networks_in_use().map_err(|e| SubnetError::Host(Box::new(e)))
}

/// The first and last address DHCP hands out on `subnet` when `ipv4.dhcp.ranges` is unset: as
/// LXD, everything from the second host address to the last, which leaves .1 to the bridge
/// (dnsmasq never leases the bridge's own address anyway).
pub fn default_ipv4_range(subnet: Ipv4Net) -> AddressRange<Ipv4Addr> {
    let network = u32::from(subnet.network());
    let broadcast = u32::from(subnet.broadcast());
    AddressRange {
        start: Ipv4Addr::from(network + 2),
        end: Ipv4Addr::from(broadcast - 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn settings_as_lxd_accepts_them() {
        assert_eq!(parse_ipv4_setting("auto").unwrap(), AddressSetting::Auto);
        assert_eq!(parse_ipv4_setting("none").unwrap(), AddressSetting::None);
        assert_eq!(parse_ipv4_setting("").unwrap(), AddressSetting::None);
        assert_eq!(
            parse_ipv4_setting("10.1.2.1/24").unwrap(),
            AddressSetting::Static("10.1.2.1/24".parse().unwrap())
        );
        assert_eq!(
            parse_ipv6_setting("fd42::1/64").unwrap(),
            AddressSetting::Static("fd42::1/64".parse().unwrap())
        );
    }

    #[test]
    fn bad_settings_say_why() {
        let msg = |r: Result<AddressSetting<Ipv4Net>, SubnetError>| r.unwrap_err().to_string();
        assert!(msg(parse_ipv4_setting("10.1.2.1")).contains("ADDRESS/PREFIX"));
        assert!(msg(parse_ipv4_setting("bridge")).contains("expected 'auto', 'none'"));
        assert!(msg(parse_ipv4_setting("10.1.2.0/24")).contains("network address"));
        assert!(msg(parse_ipv4_setting("10.1.2.255/24")).contains("broadcast"));
        assert!(msg(parse_ipv4_setting("10.1.2.1/31")).contains("no room for hosts"));
        assert!(msg(parse_ipv4_setting("127.0.0.2/8")).contains("loopback"));
        assert!(msg(parse_ipv4_setting("169.254.0.1/16")).contains("link-local"));
        assert!(msg(parse_ipv4_setting("10.1.2.1/33")).contains("ADDRESS/PREFIX"));
        assert!(msg(parse_ipv4_setting("fd42::1/64")).contains("IPv6 address where an IPv4"));
        assert!(parse_ipv6_setting("10.1.2.1/24")
            .unwrap_err()
            .to_string()
            .contains("IPv4 address where an IPv6"));
        assert!(parse_ipv6_setting("fe80::1/64")
            .unwrap_err()
            .to_string()
            .contains("link-local"));
        assert!(parse_ipv6_setting("fd42::/64")
            .unwrap_err()
            .to_string()
            .contains("network"));
    }

    #[test]
    fn ranges_parse_and_stay_inside_the_subnet() {
        let subnet: Ipv4Net = "10.1.2.1/24".parse().unwrap();
        let r = parse_ipv4_ranges("10.1.2.100-10.1.2.200, 10.1.2.210-10.1.2.220", subnet).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].start, Ipv4Addr::new(10, 1, 2, 100));
        assert_eq!(r[1].end, Ipv4Addr::new(10, 1, 2, 220));
        assert!(parse_ipv4_ranges("10.1.2.200-10.1.2.100", subnet)
            .unwrap_err()
            .to_string()
            .contains("after"));
        assert!(parse_ipv4_ranges("10.1.3.1-10.1.3.9", subnet)
            .unwrap_err()
            .to_string()
            .contains("not inside"));
        assert!(parse_ipv4_ranges("10.1.2.0-10.1.2.9", subnet).is_err());
        assert!(parse_ipv4_ranges("10.1.2.1", subnet)
            .unwrap_err()
            .to_string()
            .contains("START-END"));
        assert!(parse_ipv4_ranges("", subnet).is_err());
        let v6: Ipv6Net = "fd42::1/64".parse().unwrap();
        assert_eq!(parse_ipv6_ranges("fd42::100-fd42::1ff", v6).unwrap().len(), 1);
        assert!(parse_ipv6_ranges("fd43::100-fd43::1ff", v6).is_err());
    }

    #[test]
    fn overlap() {
        assert!(overlaps(&net("10.0.0.0/8"), &net("10.1.2.0/24")));
        assert!(overlaps(&net("10.1.2.0/24"), &net("10.0.0.0/8")));
        assert!(overlaps(&net("10.1.2.1/24"), &net("10.1.2.77/32")));
        assert!(!overlaps(&net("10.1.2.0/24"), &net("10.1.3.0/24")));
        assert!(!overlaps(&net("10.1.2.0/24"), &net("fd00::/8")));
        let others = vec![("lxdbr0".to_string(), net("10.5.0.1/16"))];
        let err = check_no_overlap(net("10.5.7.1/24"), &[], &others).unwrap_err();
        assert_eq!(err.to_string(), "10.5.7.0/24 overlaps 10.5.0.0/16 (network lxdbr0)");
        assert!(check_no_overlap(net("10.6.7.1/24"), &[net("192.168.0.0/16")], &others).is_ok());
        let err = check_no_overlap(net("192.168.1.1/24"), &[net("192.168.0.0/16")], &others).unwrap_err();
        assert!(err.to_string().contains("route or address of the host"));
    }

    #[test]
    fn picked_subnets_are_stable_and_avoid_what_is_used() {
        let a = pick_ipv4_subnet("corralbr0", &[]).unwrap();
        assert_eq!(a, pick_ipv4_subnet("corralbr0", &[]).unwrap());
        assert_eq!(a.prefix_len(), 24);
        assert_eq!(a.addr().octets()[0], 10);
        assert_eq!(a.addr().octets()[3], 1);
        // What a seed would get, taken: the next one, not overlapping.
        let taken = IpNet::V4(a.trunc());
        let b = pick_ipv4_subnet("corralbr0", &[taken]).unwrap();
        assert_ne!(a, b);
        assert!(!overlaps(&IpNet::V4(b), &taken));
        // A host route covering all of 10/8 leaves nothing; a default route is not "in use".
        assert!(matches!(
            pick_ipv4_subnet("x", &[net("10.0.0.0/8")]),
            Err(SubnetError::Exhausted)
        ));
    }

    #[test]
    fn ula_is_a_random_fd_slash_64() {
        let a = random_ipv6_ula(&[]).unwrap();
        let b = random_ipv6_ula(&[]).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.prefix_len(), 64);
        assert_eq!(a.addr().octets()[0], 0xfd);
        assert_eq!(a.addr().segments()[7], 1);
        assert!(parse_ipv6_setting(&a.to_string()).is_ok());
    }

    #[test]
    fn default_range_leaves_the_gateway() {
        let r = default_ipv4_range("10.1.2.1/24".parse().unwrap());
        assert_eq!(
            (r.start, r.end),
            (Ipv4Addr::new(10, 1, 2, 2), Ipv4Addr::new(10, 1, 2, 254))
        );
    }
}
