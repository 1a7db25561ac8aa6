//! The network driver: what a managed bridge network is made of on one host.
//!
//! - [`subnet`]: `ipv4.address`/`ipv6.address` values as LXD accepts them, picking a free subnet,
//!   overlap checks.
//! - [`link`]: bridges, veth pairs, macvlan, addresses and routes through rtnetlink; network
//!   namespaces ([`link::Netns`]) entered from a thread of their own.
//! - [`nft`]: one nftables table per network (NAT, DHCP/DNS accepts, forwards), applied atomically.
//! - [`dnsmasq`]: one dnsmasq per bridge: its configuration, static leases, the leases file, and
//!   a supervisor that starts, adopts, reloads and stops it.
//!
//! Everything acts on the network namespace of the calling thread: a caller that wants another
//! namespace runs the work through [`link::Netns::run`]. No HTTP, SQL or daemon state here.

pub mod dnsmasq;
mod hash;
pub mod link;
pub mod mac;
pub mod nft;
pub mod subnet;

pub use mac::MacAddr;
