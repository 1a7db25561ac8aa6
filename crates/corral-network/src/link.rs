//! Links (interfaces), addresses and routes through rtnetlink, and network namespaces.
//!
//! rtnetlink is asynchronous; the daemon's services are blocking. [`Netlink`] owns a
//! current-thread tokio runtime and one netlink socket and offers blocking calls. A netlink socket
//! acts on the network namespace its creating thread was in, so a [`Netlink`] made inside
//! [`Netns::run`] configures that namespace (a container's) while the rest of the process stays
//! where it is: `setns(CLONE_NEWNET)` changes only the calling thread.
//!
//! Every `create_*` is idempotent (an existing link of the right kind is brought to the spec),
//! and a link this module created is deleted again if a later step of the same call fails.

use std::collections::BTreeSet;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use futures_util::TryStreamExt;
use ipnet::IpNet;
use nix::sched::CloneFlags;
use rtnetlink::packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage};
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo, LinkMessage, MacVlanMode,
};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteType};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkBridge, LinkMacVlan, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::mac::MacAddr;

/// Set as the interface alias (IFLA_IFALIAS) of every link Corral creates on the host side, so a
/// listing can tell Corral's bridges and NICs from the host's own, whatever their names.
pub const MANAGED_ALIAS: &str = "corral";

/// The prefix of host-side veth names ([`veth_names`]).
pub const VETH_PREFIX: &str = "corr";

/// Linux's IFNAMSIZ less the terminating NUL.
pub const MAX_NAME_LEN: usize = 15;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("invalid interface name {name:?}: {why}")]
    InvalidName { name: String, why: &'static str },
    #[error("opening a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("starting the netlink runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("{op}: {source}")]
    Netlink {
        op: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("interface {0} not found")]
    NotFound(String),
    #[error("interface {name} exists and is {found}, not {wanted}")]
    WrongKind {
        name: String,
        found: String,
        wanted: &'static str,
    },
    #[error("refusing to remove links by the prefix {0:?}: too short to be Corral's")]
    PrefixTooShort(String),
    #[error("opening network namespace {path}: {source}")]
    OpenNetns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("entering network namespace {label}: {source}")]
    EnterNetns {
        label: String,
        #[source]
        source: nix::Error,
    },
    #[error("writing {path}: {source}")]
    Sysctl {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl LinkError {
    /// The errno of a netlink error, if this is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            LinkError::Netlink {
                source: rtnetlink::Error::NetlinkError(m),
                ..
            } => Some(-m.raw_code()),
            _ => None,
        }
    }
}

/// What kind of link an interface is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkKind {
    Loopback,
    Bridge,
    Veth,
    Macvlan,
    /// No rtnetlink kind: a real NIC (or anything the kernel does not name).
    Device,
    Other(String),
}

/// One interface as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    pub kind: LinkKind,
    pub mac: Option<MacAddr>,
    pub mtu: u32,
    /// Administratively up (IFF_UP).
    pub up: bool,
    /// The index of the bridge (or other controller) this link is a port of.
    pub controller: Option<u32>,
    pub alias: Option<String>,
    /// Created by Corral (its alias is [`MANAGED_ALIAS`]).
    pub managed: bool,
}

/// A bridge: its name, MTU and addresses (the network's gateway addresses).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgeSpec {
    pub name: String,
    pub mtu: Option<u32>,
    /// Stable by default ([`MacAddr::from_seed`] of the name): a bridge left to pick its own
    /// takes the lowest port's address, which changes as containers come and go.
    pub mac: Option<MacAddr>,
    /// The bridge's own addresses with their subnet prefix (`10.1.2.1/24`); global addresses
    /// not listed here are removed from an existing bridge.
    pub addresses: Vec<IpNet>,
}

/// A veth pair whose host side may be a port of a bridge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VethSpec {
    pub host_name: String,
    /// The other end's name while it is still on the host (before it moves into a container).
    pub peer_name: String,
    pub bridge: Option<String>,
    pub mtu: Option<u32>,
    pub host_mac: Option<MacAddr>,
    pub peer_mac: Option<MacAddr>,
}

/// A macvlan link on a parent interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MacvlanSpec {
    pub name: String,
    pub parent: String,
    pub mode: MacvlanMode,
    pub mtu: Option<u32>,
    pub mac: Option<MacAddr>,
}

/// How macvlan links on one parent see each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MacvlanMode {
    /// Links on the same parent talk to each other directly (LXD's default).
    #[default]
    Bridge,
    Private,
    Vepa,
    Passthru,
}

/// How the container's end of a NIC is set up inside its network namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerConfig {
    /// The name inside the container (`eth0`).
    pub name: String,
    pub mac: Option<MacAddr>,
    pub mtu: Option<u32>,
    /// Static addresses; none when the container asks DHCP for one.
    pub addresses: Vec<IpNet>,
    pub gateway4: Option<Ipv4Addr>,
    pub gateway6: Option<Ipv6Addr>,
    pub up: bool,
}

impl PeerConfig {
    /// Renamed to `name` and up, nothing else.
    pub fn named(name: &str) -> PeerConfig {
        PeerConfig {
            name: name.to_string(),
            mac: None,
            mtu: None,
            addresses: Vec::new(),
            gateway4: None,
            gateway6: None,
            up: true,
        }
    }
}

/// Checks `name` as the kernel would (`dev_valid_name`), with a message that says what is wrong.
pub fn validate_name(name: &str) -> Result<(), LinkError> {
    let bad = |why| {
        Err(LinkError::InvalidName {
            name: name.to_string(),
            why,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return bad("'.' and '..' are not interface names");
    }
    if name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) {
        return bad("contains '/', ':' or white space");
    }
    Ok(())
}

/// Names for a NIC's veth pair from `seed` (e.g. "instance/device"): the host side
/// `corr` + 8 hex digits (12 bytes, under the 15 the kernel allows) and its peer the same with
/// `p`. Stable, so a restarted daemon finds the host side of a running container's NIC again.
pub fn veth_names(seed: &str) -> (String, String) {
    let h = crate::hash::fnv1a(seed.as_bytes()) as u32;
    let host = format!("{VETH_PREFIX}{h:08x}");
    let peer = format!("{host}p");
    (host, peer)
}

/// A blocking rtnetlink client bound to the network namespace of the thread that made it.
pub struct Netlink {
    runtime: tokio::runtime::Runtime,
    handle: Handle,
}

impl Netlink {
    /// Opens a netlink socket in the calling thread's network namespace.
    pub fn new() -> Result<Netlink, LinkError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(LinkError::Runtime)?;
        let (connection, handle) = runtime.block_on(async {
            // The socket is created here, in this thread's network namespace.
            let (connection, handle, _) = rtnetlink::new_connection().map_err(LinkError::Socket)?;
            Ok::<_, LinkError>((connection, handle))
        })?;
        // Driven whenever a call below blocks on the runtime.
        runtime.spawn(connection);
        Ok(Netlink { runtime, handle })
    }

    fn block<T>(&self, fut: impl std::future::Future<Output = T>) -> T {
        self.runtime.block_on(fut)
    }

    /// The interface named `name`, if any.
    pub fn link(&self, name: &str) -> Result<Option<LinkInfo>, LinkError> {
        validate_name(name)?;
        let mut request = std::pin::pin!(self.handle.link().get().match_name(name.to_string()).execute());
        match self.block(request.try_next()) {
            Ok(Some(msg)) => Ok(Some(link_info(&msg))),
            Ok(None) => Ok(None),
            Err(source) => {
                let err = LinkError::Netlink {
                    op: format!("looking up {name}"),
                    source,
                };
                if err.errno() == Some(libc_enodev()) {
                    Ok(None)
                } else {
                    Err(err)
                }
            }
        }
    }

    fn require(&self, name: &str) -> Result<LinkInfo, LinkError> {
        self.link(name)?.ok_or_else(|| LinkError::NotFound(name.to_string()))
    }

    /// Every interface in this namespace.
    pub fn list_links(&self) -> Result<Vec<LinkInfo>, LinkError> {
        let msgs: Vec<LinkMessage> =
            self.block(self.handle.link().get().execute().try_collect())
                .map_err(|source| LinkError::Netlink {
                    op: "listing links".into(),
                    source,
                })?;
        Ok(msgs.iter().map(link_info).collect())
    }

    /// Creates bridge `spec.name` up with its MTU, MAC and addresses, or brings an existing bridge
    /// to that state. Something else by that name is an error, left alone.
    pub fn create_bridge(&self, spec: &BridgeSpec) -> Result<(), LinkError> {
        validate_name(&spec.name)?;
        let mac = spec.mac.unwrap_or_else(|| MacAddr::from_seed(&spec.name));
        match self.link(&spec.name)? {
            Some(existing) => {
                expect_kind(&existing, LinkKind::Bridge, "a bridge")?;
                self.configure_bridge(existing.index, spec, mac)
            }
            None => {
                let mut msg = LinkBridge::new(&spec.name).address(mac.0.to_vec());
                if let Some(mtu) = spec.mtu {
                    msg = msg.mtu(mtu);
                }
                self.add(msg.build(), &format!("creating bridge {}", spec.name))?;
                let created = self.require(&spec.name)?;
                self.undo_on_error(created.index, || self.configure_bridge(created.index, spec, mac))
            }
        }
    }

    fn configure_bridge(&self, index: u32, spec: &BridgeSpec, mac: MacAddr) -> Result<(), LinkError> {
        let mut msg = LinkUnspec::new_with_index(index)
            .alias(MANAGED_ALIAS)
            .address(mac.0.to_vec());
        if let Some(mtu) = spec.mtu {
            msg = msg.mtu(mtu);
        }
        self.set(msg.build(), &format!("configuring bridge {}", spec.name))?;
        self.sync_addresses(index, &spec.name, &spec.addresses)?;
        self.set(
            LinkUnspec::new_with_index(index).up().build(),
            &format!("setting {} up", spec.name),
        )
    }

    /// Creates a veth pair, the host side a port of `spec.bridge` and up, the peer down (it is
    /// for a container). An existing host side that is a veth is brought to the spec; on any
    /// error a pair made by this call is deleted.
    pub fn create_veth(&self, spec: &VethSpec) -> Result<(), LinkError> {
        validate_name(&spec.host_name)?;
        validate_name(&spec.peer_name)?;
        let bridge = match &spec.bridge {
            Some(b) => {
                let link = self.require(b)?;
                expect_kind(&link, LinkKind::Bridge, "a bridge")?;
                Some(link.index)
            }
            None => None,
        };
        if let Some(existing) = self.link(&spec.host_name)? {
            expect_kind(&existing, LinkKind::Veth, "a veth")?;
            return self.configure_host_side(existing.index, &spec.host_name, bridge, spec.mtu, spec.host_mac);
        }
        let mut peer = LinkUnspec::new_with_name(&spec.peer_name);
        if let Some(mtu) = spec.mtu {
            peer = peer.mtu(mtu);
        }
        if let Some(mac) = spec.peer_mac {
            peer = peer.address(mac.0.to_vec());
        }
        let mut msg = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(spec.host_name.clone())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())));
        if let Some(mtu) = spec.mtu {
            msg = msg.mtu(mtu);
        }
        self.add(
            msg.build(),
            &format!("creating veth {}/{}", spec.host_name, spec.peer_name),
        )?;
        let created = self.require(&spec.host_name)?;
        self.undo_on_error(created.index, || {
            self.configure_host_side(created.index, &spec.host_name, bridge, None, spec.host_mac)
        })
    }

    fn configure_host_side(
        &self,
        index: u32,
        name: &str,
        bridge: Option<u32>,
        mtu: Option<u32>,
        mac: Option<MacAddr>,
    ) -> Result<(), LinkError> {
        let mut msg = LinkUnspec::new_with_index(index).alias(MANAGED_ALIAS);
        if let Some(mtu) = mtu {
            msg = msg.mtu(mtu);
        }
        if let Some(mac) = mac {
            msg = msg.address(mac.0.to_vec());
        }
        if let Some(bridge) = bridge {
            msg = msg.controller(bridge);
        }
        self.set(msg.build(), &format!("configuring {name}"))?;
        self.set(
            LinkUnspec::new_with_index(index).up().build(),
            &format!("setting {name} up"),
        )
    }

    /// Creates a macvlan link on `spec.parent` (left down: it is usually moved into a
    /// container next). An existing macvlan of that name is left as it is.
    pub fn create_macvlan(&self, spec: &MacvlanSpec) -> Result<(), LinkError> {
        validate_name(&spec.name)?;
        let parent = self.require(&spec.parent)?;
        if let Some(existing) = self.link(&spec.name)? {
            return expect_kind(&existing, LinkKind::Macvlan, "a macvlan");
        }
        let mode = match spec.mode {
            MacvlanMode::Bridge => MacVlanMode::Bridge,
            MacvlanMode::Private => MacVlanMode::Private,
            MacvlanMode::Vepa => MacVlanMode::Vepa,
            MacvlanMode::Passthru => MacVlanMode::Passthrough,
        };
        let mut msg = LinkMacVlan::new(&spec.name, parent.index, mode);
        if let Some(mtu) = spec.mtu {
            msg = msg.mtu(mtu);
        }
        if let Some(mac) = spec.mac {
            msg = msg.address(mac.0.to_vec());
        }
        self.add(
            msg.build(),
            &format!("creating macvlan {} on {}", spec.name, spec.parent),
        )?;
        let created = self.require(&spec.name)?;
        self.undo_on_error(created.index, || {
            let msg = LinkUnspec::new_with_index(created.index).alias(MANAGED_ALIAS).build();
            self.set(msg, &format!("marking {}", spec.name))
        })
    }

    /// Deletes interface `name` (a veth takes its peer with it). Returns whether there was one.
    pub fn delete_link(&self, name: &str) -> Result<bool, LinkError> {
        let Some(link) = self.link(name)? else {
            return Ok(false);
        };
        match self.block(self.handle.link().del(link.index).execute()) {
            Ok(()) => Ok(true),
            Err(source) => {
                let err = LinkError::Netlink {
                    op: format!("deleting {name}"),
                    source,
                };
                // Gone meanwhile (its veth peer was deleted, say): the end state is the same.
                if err.errno() == Some(libc_enodev()) {
                    Ok(false)
                } else {
                    Err(err)
                }
            }
        }
    }

    /// Deletes every interface whose name starts with `prefix` (what a crash left behind) and
    /// returns their names. The prefix must be at least 3 bytes, so that it cannot match
    /// everything.
    pub fn remove_leftovers(&self, prefix: &str) -> Result<Vec<String>, LinkError> {
        if prefix.len() < 3 {
            return Err(LinkError::PrefixTooShort(prefix.to_string()));
        }
        let mut removed = Vec::new();
        for link in self.list_links()? {
            if link.name.starts_with(prefix) && self.delete_link(&link.name)? {
                removed.push(link.name);
            }
        }
        Ok(removed)
    }

    /// Makes `name` a port of `bridge`.
    pub fn set_controller(&self, name: &str, bridge: &str) -> Result<(), LinkError> {
        let link = self.require(name)?;
        let bridge = self.require(bridge)?;
        expect_kind(&bridge, LinkKind::Bridge, "a bridge")?;
        self.set(
            LinkUnspec::new_with_index(link.index).controller(bridge.index).build(),
            &format!("attaching {name} to {}", bridge.name),
        )
    }

    pub fn set_up(&self, name: &str) -> Result<(), LinkError> {
        let link = self.require(name)?;
        self.set(
            LinkUnspec::new_with_index(link.index).up().build(),
            &format!("setting {name} up"),
        )
    }

    pub fn set_down(&self, name: &str) -> Result<(), LinkError> {
        let link = self.require(name)?;
        self.set(
            LinkUnspec::new_with_index(link.index).down().build(),
            &format!("setting {name} down"),
        )
    }

    pub fn set_mtu(&self, name: &str, mtu: u32) -> Result<(), LinkError> {
        let link = self.require(name)?;
        self.set(
            LinkUnspec::new_with_index(link.index).mtu(mtu).build(),
            &format!("setting the MTU of {name}"),
        )
    }

    pub fn set_mac(&self, name: &str, mac: MacAddr) -> Result<(), LinkError> {
        let link = self.require(name)?;
        self.set(
            LinkUnspec::new_with_index(link.index).address(mac.0.to_vec()).build(),
            &format!("setting the MAC address of {name}"),
        )
    }

    /// Renames a link; the kernel wants it down.
    pub fn rename(&self, name: &str, new_name: &str) -> Result<(), LinkError> {
        validate_name(new_name)?;
        let link = self.require(name)?;
        self.set(
            LinkUnspec::new_with_index(link.index)
                .name(new_name.to_string())
                .build(),
            &format!("renaming {name} to {new_name}"),
        )
    }

    /// The addresses of interface `name`, with their prefixes.
    pub fn addresses(&self, name: &str) -> Result<Vec<IpNet>, LinkError> {
        let link = self.require(name)?;
        Ok(self
            .address_messages(Some(link.index))?
            .iter()
            .filter_map(address_of)
            .collect())
    }

    /// Adds an address (with `nodad` for IPv6: dnsmasq binds to it at once, and duplicate
    /// detection would keep it tentative, unusable, for a second or more).
    pub fn add_address(&self, name: &str, address: IpNet) -> Result<(), LinkError> {
        let link = self.require(name)?;
        self.add_address_at(link.index, name, address)
    }

    fn add_address_at(&self, index: u32, name: &str, address: IpNet) -> Result<(), LinkError> {
        let mut request = self.handle.address().add(index, address.addr(), address.prefix_len());
        if address.addr().is_ipv6() {
            request.message_mut().header.flags |= AddressHeaderFlags::Nodad;
        }
        self.block(request.execute()).map_err(|source| LinkError::Netlink {
            op: format!("adding {address} to {name}"),
            source,
        })
    }

    fn address_messages(&self, index: Option<u32>) -> Result<Vec<AddressMessage>, LinkError> {
        let mut request = self.handle.address().get();
        if let Some(index) = index {
            request = request.set_link_index_filter(index);
        }
        self.block(request.execute().try_collect())
            .map_err(|source| LinkError::Netlink {
                op: "listing addresses".into(),
                source,
            })
    }

    /// Makes the global addresses of link `index` exactly `wanted` (link-local ones are the
    /// kernel's and stay).
    fn sync_addresses(&self, index: u32, name: &str, wanted: &[IpNet]) -> Result<(), LinkError> {
        let wanted: BTreeSet<IpNet> = wanted.iter().copied().collect();
        let mut present = BTreeSet::new();
        for msg in self.address_messages(Some(index))? {
            let Some(addr) = address_of(&msg) else { continue };
            if is_link_local(&addr.addr()) {
                continue;
            }
            if wanted.contains(&addr) {
                present.insert(addr);
            } else {
                self.block(self.handle.address().del(msg).execute())
                    .map_err(|source| LinkError::Netlink {
                        op: format!("removing {addr} from {name}"),
                        source,
                    })?;
            }
        }
        for addr in wanted.difference(&present) {
            self.add_address_at(index, name, *addr)?;
        }
        Ok(())
    }

    /// Adds a default route through `gateway` (for a container's side).
    pub fn add_default_route(&self, gateway: IpAddr) -> Result<(), LinkError> {
        let msg = match gateway {
            IpAddr::V4(gw) => RouteMessageBuilder::<Ipv4Addr>::new().gateway(gw).build(),
            IpAddr::V6(gw) => RouteMessageBuilder::<Ipv6Addr>::new().gateway(gw).build(),
        };
        self.block(self.handle.route().add(msg).execute())
            .map_err(|source| LinkError::Netlink {
                op: format!("adding a default route via {gateway}"),
                source,
            })
    }

    /// Every subnet this namespace already reaches: its addresses' subnets and its routes,
    /// except default routes (which cover everything and would leave no subnet free) and
    /// link-local and multicast ones. What a new network's subnet must not overlap.
    pub fn networks_in_use(&self) -> Result<Vec<IpNet>, LinkError> {
        let mut nets: Vec<IpNet> = self
            .address_messages(None)?
            .iter()
            .filter_map(address_of)
            .map(|n| n.trunc())
            .collect();
        for msg in [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<Ipv6Addr>::new().build(),
        ] {
            let routes: Vec<RouteMessage> = self
                .block(self.handle.route().get(msg).execute().try_collect())
                .map_err(|source| LinkError::Netlink {
                    op: "listing routes".into(),
                    source,
                })?;
            nets.extend(routes.iter().filter_map(route_destination));
        }
        nets.retain(|n| n.prefix_len() > 0 && !is_link_local(&n.addr()) && !n.addr().is_multicast());
        nets.sort();
        nets.dedup();
        Ok(nets)
    }

    /// Moves `name` into network namespace `netns`; it keeps its name there.
    pub fn move_to_netns(&self, name: &str, netns: &Netns) -> Result<(), LinkError> {
        let link = self.require(name)?;
        self.set(
            LinkUnspec::new_with_index(link.index)
                .setns_by_fd(netns.fd.as_raw_fd())
                .build(),
            &format!("moving {name} into {}", netns.label),
        )
    }

    /// Moves `peer` (a veth end or macvlan made on this side) into `netns`, then, from a thread
    /// inside it, renames it, sets MAC, MTU, addresses and gateways, and sets it up. On any error
    /// the link is deleted wherever it is (with its veth peer), so nothing is left half-made.
    pub fn move_and_configure(&self, peer: &str, netns: &Netns, config: &PeerConfig) -> Result<(), LinkError> {
        validate_name(&config.name)?;
        if let Err(e) = self.move_to_netns(peer, netns) {
            let _ = self.delete_link(peer);
            return Err(e);
        }
        let result = netns.netlink(|nl| {
            let index = nl.require(peer)?.index;
            let configured = nl.configure_peer(index, peer, config);
            if configured.is_err() {
                // By index: after a rename its name is the container's, and a link by the
                // wanted name may be another NIC.
                let _ = nl.block(nl.handle.link().del(index).execute());
            }
            configured
        });
        if result.is_err() {
            // Entering the namespace itself may have failed: the link is there, unreachable
            // from here; deleting our side of a veth removes it too.
            let _ = self.delete_link(peer);
        }
        result
    }

    /// Creates a veth pair whose peer is born inside `netns` under `config.name` (no move
    /// afterwards), then configures it from a thread in there. The result is that of
    /// [`Netlink::create_veth`] plus [`Netlink::move_and_configure`], but moving an existing link
    /// between namespaces waits for the kernel's RCU grace periods (about 15 ms here) and
    /// creating it in place does not. `spec.peer_name` is unused. On error the pair is deleted.
    pub fn create_veth_in(&self, spec: &VethSpec, netns: &Netns, config: &PeerConfig) -> Result<(), LinkError> {
        validate_name(&spec.host_name)?;
        validate_name(&config.name)?;
        let bridge = match &spec.bridge {
            Some(b) => {
                let link = self.require(b)?;
                expect_kind(&link, LinkKind::Bridge, "a bridge")?;
                Some(link.index)
            }
            None => None,
        };
        let mut peer = LinkUnspec::new_with_name(&config.name).setns_by_fd(netns.fd.as_raw_fd());
        if let Some(mtu) = spec.mtu {
            peer = peer.mtu(mtu);
        }
        if let Some(mac) = config.mac.or(spec.peer_mac) {
            peer = peer.address(mac.0.to_vec());
        }
        let mut msg = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(spec.host_name.clone())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())));
        if let Some(mtu) = spec.mtu {
            msg = msg.mtu(mtu);
        }
        let op = format!(
            "creating veth {} with {} in {}",
            spec.host_name, config.name, netns.label
        );
        self.add(msg.build(), &op)?;
        let created = self.require(&spec.host_name)?;
        self.undo_on_error(created.index, || {
            self.configure_host_side(created.index, &spec.host_name, bridge, None, spec.host_mac)?;
            netns.netlink(|nl| {
                let index = nl.require(&config.name)?.index;
                nl.configure_peer(index, &config.name, config)
            })
        })
    }

    fn configure_peer(&self, index: u32, peer: &str, config: &PeerConfig) -> Result<(), LinkError> {
        let mut msg = LinkUnspec::new_with_index(index);
        if peer != config.name {
            msg = msg.name(config.name.clone());
        }
        if let Some(mtu) = config.mtu {
            msg = msg.mtu(mtu);
        }
        if let Some(mac) = config.mac {
            msg = msg.address(mac.0.to_vec());
        }
        self.set(msg.build(), &format!("configuring {peer} as {}", config.name))?;
        for address in &config.addresses {
            self.add_address_at(index, &config.name, *address)?;
        }
        if config.up || config.gateway4.is_some() || config.gateway6.is_some() {
            self.set(
                LinkUnspec::new_with_index(index).up().build(),
                &format!("setting {} up", config.name),
            )?;
        }
        if let Some(gw) = config.gateway4 {
            self.add_default_route(gw.into())?;
        }
        if let Some(gw) = config.gateway6 {
            self.add_default_route(gw.into())?;
        }
        Ok(())
    }

    fn add(&self, msg: LinkMessage, op: &str) -> Result<(), LinkError> {
        self.block(self.handle.link().add(msg).execute())
            .map_err(|source| LinkError::Netlink {
                op: op.to_string(),
                source,
            })
    }

    fn set(&self, msg: LinkMessage, op: &str) -> Result<(), LinkError> {
        self.block(self.handle.link().set(msg).execute())
            .map_err(|source| LinkError::Netlink {
                op: op.to_string(),
                source,
            })
    }

    /// Runs `configure`; if it fails, deletes the link just created so the call leaves nothing.
    fn undo_on_error(&self, index: u32, configure: impl FnOnce() -> Result<(), LinkError>) -> Result<(), LinkError> {
        let result = configure();
        if result.is_err() {
            let _ = self.block(self.handle.link().del(index).execute());
        }
        result
    }
}

/// Enables IPv4 and/or IPv6 forwarding in the calling thread's network namespace (routed and
/// NATed bridges need it).
pub fn enable_forwarding(ipv4: bool, ipv6: bool) -> Result<(), LinkError> {
    // The kernel resolves /proc/sys/net against the namespace of the thread that opens it.
    let mut paths = Vec::new();
    if ipv4 {
        paths.push("/proc/sys/net/ipv4/ip_forward");
    }
    if ipv6 {
        paths.push("/proc/sys/net/ipv6/conf/all/forwarding");
    }
    for path in paths {
        let path = Path::new(path);
        std::fs::write(path, "1").map_err(|source| LinkError::Sysctl {
            path: path.to_path_buf(),
            source,
        })?;
    }
    Ok(())
}

fn expect_kind(link: &LinkInfo, kind: LinkKind, wanted: &'static str) -> Result<(), LinkError> {
    if link.kind == kind {
        return Ok(());
    }
    let found = match &link.kind {
        LinkKind::Loopback => "a loopback".to_string(),
        LinkKind::Bridge => "a bridge".to_string(),
        LinkKind::Veth => "a veth".to_string(),
        LinkKind::Macvlan => "a macvlan".to_string(),
        LinkKind::Device => "a device".to_string(),
        LinkKind::Other(k) => format!("a {k}"),
    };
    Err(LinkError::WrongKind {
        name: link.name.clone(),
        found,
        wanted,
    })
}

fn link_info(msg: &LinkMessage) -> LinkInfo {
    let mut info = LinkInfo {
        index: msg.header.index,
        name: String::new(),
        kind: LinkKind::Device,
        mac: None,
        mtu: 0,
        up: msg.header.flags.contains(LinkFlags::Up),
        controller: None,
        alias: None,
        managed: false,
    };
    if msg.header.flags.contains(LinkFlags::Loopback) {
        info.kind = LinkKind::Loopback;
    }
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(name) => info.name = name.clone(),
            LinkAttribute::Mtu(mtu) => info.mtu = *mtu,
            LinkAttribute::Address(bytes) => info.mac = MacAddr::try_from(bytes.as_slice()).ok(),
            LinkAttribute::Controller(index) if *index != 0 => info.controller = Some(*index),
            LinkAttribute::IfAlias(alias) => info.alias = Some(alias.clone()),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let NlLinkInfo::Kind(kind) = i {
                        info.kind = match kind {
                            InfoKind::Bridge => LinkKind::Bridge,
                            InfoKind::Veth => LinkKind::Veth,
                            InfoKind::MacVlan => LinkKind::Macvlan,
                            other => LinkKind::Other(other.to_string()),
                        };
                    }
                }
            }
            _ => {}
        }
    }
    info.managed = info.alias.as_deref() == Some(MANAGED_ALIAS);
    info
}

fn address_of(msg: &AddressMessage) -> Option<IpNet> {
    // For IPv4, IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer's on
    // point-to-point links); IPv6 has only IFA_ADDRESS.
    let mut address = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(a) => return IpNet::new(*a, msg.header.prefix_len).ok(),
            AddressAttribute::Address(a) => address = Some(*a),
            _ => {}
        }
    }
    address.and_then(|a| IpNet::new(a, msg.header.prefix_len).ok())
}

fn route_destination(msg: &RouteMessage) -> Option<IpNet> {
    if !matches!(msg.header.kind, RouteType::Unicast | RouteType::Local) {
        return None;
    }
    let prefix = msg.header.destination_prefix_length;
    msg.attributes.iter().find_map(|attr| match attr {
        RouteAttribute::Destination(RouteAddress::Inet(a)) if msg.header.address_family == AddressFamily::Inet => {
            IpNet::new(IpAddr::V4(*a), prefix).ok().map(|n| n.trunc())
        }
        RouteAttribute::Destination(RouteAddress::Inet6(a)) => {
            IpNet::new(IpAddr::V6(*a), prefix).ok().map(|n| n.trunc())
        }
        _ => None,
    })
}

fn is_link_local(addr: &IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => a.is_unicast_link_local(),
    }
}

fn libc_enodev() -> i32 {
    nix::errno::Errno::ENODEV as i32
}

/// A network namespace, held open by a file descriptor (so it lives while we hold it).
#[derive(Debug)]
pub struct Netns {
    fd: OwnedFd,
    label: String,
}

impl Netns {
    /// The namespace of process `pid` (a container's init).
    pub fn of_pid(pid: i32) -> Result<Netns, LinkError> {
        Netns::open(format!("/proc/{pid}/ns/net"))
    }

    /// A namespace file: `/run/netns/NAME`, `/proc/PID/ns/net`, or a bind mount of one.
    pub fn open(path: impl AsRef<Path>) -> Result<Netns, LinkError> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|source| LinkError::OpenNetns {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Netns {
            fd: file.into(),
            label: path.display().to_string(),
        })
    }

    /// The calling thread's namespace.
    pub fn current() -> Result<Netns, LinkError> {
        Netns::open("/proc/thread-self/ns/net")
    }

    /// A namespace from a descriptor someone else opened (the runtime's, say).
    pub fn from_fd(fd: OwnedFd, label: &str) -> Netns {
        Netns {
            fd,
            label: label.to_string(),
        }
    }

    /// Runs `work` on a new thread that has entered this namespace, and returns its result.
    /// Links it creates, sockets it opens and processes it spawns belong to the namespace; the
    /// thread ends with `work`, so no thread of the process is left in a foreign namespace.
    pub fn run<T: Send>(&self, work: impl FnOnce() -> T + Send) -> Result<T, LinkError> {
        std::thread::scope(|scope| {
            let thread = scope.spawn(|| {
                nix::sched::setns(self.fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| {
                    LinkError::EnterNetns {
                        label: self.label.clone(),
                        source,
                    }
                })?;
                Ok(work())
            });
            match thread.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// [`Netns::run`] with a [`Netlink`] opened inside the namespace.
    pub fn netlink<T: Send>(&self, work: impl FnOnce(&Netlink) -> Result<T, LinkError> + Send) -> Result<T, LinkError> {
        self.run(|| work(&Netlink::new()?))?
    }

    pub fn label(&self) -> &str {
        &self.label
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_like_the_kernel_does() {
        assert!(validate_name("eth0").is_ok());
        assert!(validate_name("corralbr0").is_ok());
        assert!(validate_name("a23456789012345").is_ok());
        for bad in ["", "a234567890123456", ".", "..", "a/b", "a b", "a:1"] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn veth_names_are_stable_short_and_prefixed() {
        let (host, peer) = veth_names("c1/eth0");
        assert_eq!((host.clone(), peer.clone()), veth_names("c1/eth0"));
        assert_ne!(host, veth_names("c2/eth0").0);
        assert!(host.starts_with(VETH_PREFIX) && peer.starts_with(&host));
        assert!(validate_name(&host).is_ok() && validate_name(&peer).is_ok());
        assert_eq!(host.len(), 12);
    }
}
