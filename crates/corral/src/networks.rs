//! `network`: lxc 5.0's network verbs (list, show, create, delete, edit, get, set, unset, rename,
//! info, list-leases), attaching networks to instances and profiles as nic devices, and
//! `network forward ...` (address forwards and their port rules).
//!
//! Every change reads the object with its ETag, changes it and writes it back with If-Match, so
//! that a concurrent change is refused rather than overwritten (as lxc does).

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::io::{IsTerminal, Read};
use std::net::IpAddr;

use anyhow::{anyhow, bail, Context, Result};
use clap::Subcommand;
use corral_api::{
    Config, Devices, Instance, Network, NetworkForward, NetworkForwardPort, NetworkForwardPut, NetworkLease,
    NetworkPost, NetworkPut, NetworkState, NetworksPost, Profile, ProfilePut,
};
use corral_client::{encode_segment, Client, ClientError};
use serde::Serialize;

use crate::editor;
use crate::instances::{instance_path, parse_pairs, writable};
use crate::output::{print_list, yaml, Format, Table};
use crate::profiles::profile_path;
use crate::remotes::local_name;

#[derive(Subcommand)]
#[command(defer = true)]
pub enum NetworkCmd {
    /// List available networks
    #[command(
        alias = "ls",
        after_help = "Examples:\n  corral network list\n  corral network list -f csv"
    )]
    List {
        /// The remote ("local:")
        #[arg(value_name = "REMOTE:")]
        remote: Option<String>,
        #[arg(short = 'f', long = "format", value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Show network configurations (YAML)
    #[command(after_help = "Example:\n  corral network show corralbr0")]
    Show { network: String },
    /// Create new networks (their config from YAML on stdin, if stdin is not a terminal)
    #[command(
        after_help = "Examples:\n  corral network create br0\n  corral network create br0 ipv4.address=10.10.0.1/24 \
                      ipv6.address=none\n  corral network create mv0 --type macvlan parent=eth0\n  \
                      corral network show br0 | corral network create br1"
    )]
    Create {
        network: String,
        /// Network options
        #[arg(value_name = "KEY=VALUE")]
        pairs: Vec<String>,
        /// Network type (default: bridge)
        #[arg(short = 't', long = "type", value_name = "TYPE", value_parser = ["bridge", "macvlan"])]
        kind: Option<String>,
        /// Network description
        #[arg(long)]
        description: Option<String>,
    },
    /// Delete networks
    #[command(alias = "rm", after_help = "Example:\n  corral network delete br0")]
    Delete { network: String },
    /// Edit network configurations as YAML: in $EDITOR, or from stdin if it is not a terminal
    #[command(after_help = "Examples:\n  corral network edit br0\n  corral network edit br0 < br0.yaml")]
    Edit { network: String },
    /// Get values for network configuration keys
    #[command(after_help = "Example:\n  corral network get br0 ipv4.address")]
    Get { network: String, key: String },
    /// Set network configuration keys: NETWORK KEY=VALUE..., or NETWORK KEY VALUE
    #[command(
        after_help = "A value of - reads the value from stdin.\n\nExamples:\n  corral network set br0 ipv4.nat=false \
                      ipv6.address=none\n  corral network set br0 ipv4.address 10.10.0.1/24"
    )]
    Set {
        network: String,
        #[arg(required = true, num_args = 1.., value_name = "KEY=VALUE | KEY VALUE")]
        args: Vec<String>,
    },
    /// Unset network configuration keys
    #[command(after_help = "Example:\n  corral network unset br0 ipv6.address")]
    Unset {
        network: String,
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<String>,
    },
    /// Rename networks
    #[command(alias = "mv", after_help = "Example:\n  corral network rename br0 br1")]
    Rename { network: String, new_name: String },
    /// Get runtime information on networks
    #[command(after_help = "Example:\n  corral network info corralbr0")]
    Info { network: String },
    /// List DHCP leases
    #[command(after_help = "Example:\n  corral network list-leases corralbr0")]
    ListLeases {
        network: String,
        #[arg(short = 'f', long = "format", value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Attach network interfaces to instances
    #[command(
        after_help = "The device is named after the network unless DEVICE is given; INTERFACE is the \
                      interface's name in the instance.\n\nExamples:\n  corral network attach br0 c1\n  \
                      corral network attach br0 c1 eth1 eth1"
    )]
    Attach {
        network: String,
        instance: String,
        device: Option<String>,
        interface: Option<String>,
    },
    /// Attach network interfaces to profiles
    #[command(after_help = "Example:\n  corral network attach-profile br0 default eth0 eth0")]
    AttachProfile {
        network: String,
        profile: String,
        device: Option<String>,
        interface: Option<String>,
    },
    /// Detach network interfaces from instances
    #[command(after_help = "Examples:\n  corral network detach br0 c1\n  corral network detach br0 c1 eth1")]
    Detach {
        network: String,
        instance: String,
        device: Option<String>,
    },
    /// Detach network interfaces from profiles
    #[command(after_help = "Example:\n  corral network detach-profile br0 default")]
    DetachProfile {
        network: String,
        profile: String,
        device: Option<String>,
    },
    /// Manage network forwards
    #[command(subcommand)]
    Forward(ForwardCmd),
}

#[derive(Subcommand)]
#[command(defer = true)]
pub enum ForwardCmd {
    /// List available network forwards
    #[command(alias = "ls", after_help = "Example:\n  corral network forward list br0")]
    List {
        network: String,
        #[arg(short = 'f', long = "format", value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Show network forward configurations (YAML)
    #[command(after_help = "Example:\n  corral network forward show br0 192.0.2.1")]
    Show { network: String, listen_address: String },
    /// Create new network forwards (their config from YAML on stdin, if stdin is not a terminal)
    #[command(
        after_help = "Examples:\n  corral network forward create br0 192.0.2.1\n  corral network forward create br0 \
                      192.0.2.1 target_address=10.10.0.2"
    )]
    Create {
        network: String,
        listen_address: String,
        #[arg(value_name = "KEY=VALUE")]
        pairs: Vec<String>,
    },
    /// Get values for network forward configuration keys
    #[command(after_help = "Example:\n  corral network forward get br0 192.0.2.1 target_address")]
    Get {
        network: String,
        listen_address: String,
        key: String,
    },
    /// Set network forward keys: KEY=VALUE..., or KEY VALUE
    #[command(after_help = "Example:\n  corral network forward set br0 192.0.2.1 target_address=10.10.0.2")]
    Set {
        network: String,
        listen_address: String,
        #[arg(required = true, num_args = 1.., value_name = "KEY=VALUE | KEY VALUE")]
        args: Vec<String>,
    },
    /// Unset network forward configuration keys
    #[command(after_help = "Example:\n  corral network forward unset br0 192.0.2.1 target_address")]
    Unset {
        network: String,
        listen_address: String,
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<String>,
    },
    /// Edit network forward configurations as YAML: in $EDITOR, or from stdin if it is not a terminal
    #[command(after_help = "Example:\n  corral network forward edit br0 192.0.2.1")]
    Edit { network: String, listen_address: String },
    /// Delete network forwards
    #[command(alias = "rm", after_help = "Example:\n  corral network forward delete br0 192.0.2.1")]
    Delete { network: String, listen_address: String },
    /// Manage network forward ports
    #[command(subcommand)]
    Port(PortCmd),
}

#[derive(Subcommand)]
#[command(defer = true)]
pub enum PortCmd {
    /// Add ports to a forward
    #[command(
        after_help = "Ports are a port, a range (8000-8010), or a comma-separated list of both. Without \
                      TARGET_PORTS the listen ports are kept; one target port takes all the listen ports.\n\n\
                      Examples:\n  corral network forward port add br0 192.0.2.1 tcp 80 10.10.0.2\n  \
                      corral network forward port add br0 192.0.2.1 tcp 80,8000-8010 10.10.0.2 8080"
    )]
    Add {
        network: String,
        listen_address: String,
        /// tcp or udp
        protocol: String,
        #[arg(value_name = "LISTEN_PORTS")]
        listen_ports: String,
        target_address: String,
        #[arg(value_name = "TARGET_PORTS")]
        target_ports: Option<String>,
    },
    /// Remove ports from a forward
    #[command(
        after_help = "Removes the port rule matching PROTOCOL and LISTEN_PORTS (all rules, without them); \
                      more than one match needs --force.\n\nExamples:\n  corral network forward port remove br0 \
                      192.0.2.1 tcp 80\n  corral network forward port remove br0 192.0.2.1 --force"
    )]
    Remove {
        network: String,
        listen_address: String,
        protocol: Option<String>,
        #[arg(value_name = "LISTEN_PORTS")]
        listen_ports: Option<String>,
        /// Remove all ports that match
        #[arg(long)]
        force: bool,
    },
}

/// `/1.0/networks/<name>`, for `name` with or without `local:`.
pub fn network_path(name: &str) -> Result<String> {
    Ok(format!("/1.0/networks/{}", encode_segment(local_name(name)?)))
}

fn forward_path(network: &str, listen: &str) -> Result<String> {
    Ok(format!(
        "{}/forwards/{}",
        network_path(network)?,
        encode_segment(listen)
    ))
}

/// What `lxc network show` prints: the network's fields in lxc's order.
#[derive(Serialize)]
struct NetworkView<'a> {
    config: &'a Config,
    description: &'a str,
    name: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    used_by: &'a [String],
    managed: bool,
    status: &'a str,
    locations: &'a [String],
}

fn view(n: &Network) -> NetworkView<'_> {
    NetworkView {
        config: &n.config,
        description: &n.description,
        name: &n.name,
        kind: &n.kind,
        used_by: &n.used_by,
        managed: n.managed,
        status: &n.status,
        locations: &n.locations,
    }
}

/// What `lxc network forward show` prints: the forward's fields in lxc's order.
#[derive(Serialize)]
struct ForwardView<'a> {
    description: &'a str,
    config: &'a Config,
    ports: &'a [NetworkForwardPort],
    listen_address: &'a str,
    location: &'a str,
}

fn forward_view(f: &NetworkForward) -> ForwardView<'_> {
    ForwardView {
        description: &f.description,
        config: &f.config,
        ports: &f.ports,
        listen_address: &f.listen_address,
        location: &f.location,
    }
}

fn forward_writable(f: NetworkForward) -> NetworkForwardPut {
    NetworkForwardPut {
        description: f.description,
        config: f.config,
        ports: f.ports,
    }
}

/// A network with its ETag; a missing one says where to find those that exist.
fn get_network(c: &Client, name: &str) -> Result<(Network, Option<String>)> {
    c.get_with_etag::<Network>(&network_path(name)?).map_err(|e| {
        if e.is_not_found() {
            anyhow!("{e} (no network {name}: `corral network list` lists the networks)")
        } else {
            e.into()
        }
    })
}

fn get_forward(c: &Client, network: &str, listen: &str) -> Result<(NetworkForward, Option<String>)> {
    c.get_with_etag::<NetworkForward>(&forward_path(network, listen)?)
        .map_err(|e| {
            not_found_hint(
                e,
                &format!("`corral network forward list {network}` lists its forwards"),
            )
        })
}

pub(crate) fn not_found_hint(e: ClientError, hint: &str) -> anyhow::Error {
    if e.is_not_found() {
        anyhow!("{e} ({hint})")
    } else {
        e.into()
    }
}

/// lxc's refusal to change a host interface it does not manage.
fn check_managed(n: &Network, name: &str) -> Result<()> {
    if !n.managed {
        bail!(
            "Only managed networks can be modified: {name} is a host interface ({}) that Corral does not manage; \
             create a managed one with `corral network create`",
            if n.kind.is_empty() { "unknown type" } else { &n.kind }
        );
    }
    Ok(())
}

/// lxc's `set` arguments: `KEY VALUE`, or `KEY=VALUE...`; a value `-` is read from stdin when it
/// is not a terminal.
pub(crate) fn config_pairs(args: &[String], example: &str) -> Result<BTreeMap<String, String>> {
    let mut pairs = if args.len() == 2 && !args[0].contains('=') {
        BTreeMap::from([(args[0].clone(), args[1].clone())])
    } else {
        let mut pairs = BTreeMap::new();
        for arg in args {
            match arg.split_once('=') {
                Some((k, v)) if !k.is_empty() => {
                    pairs.insert(k.to_string(), v.to_string());
                }
                _ => bail!(
                    "Invalid key=value configuration: {arg:?}: give KEY=VALUE pairs, or one KEY and its VALUE \
                     (`{example}`)"
                ),
            }
        }
        pairs
    };
    for v in pairs.values_mut() {
        if v == "-" && !std::io::stdin().is_terminal() {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("Can't read from stdin")?;
            *v = text;
        }
    }
    Ok(pairs)
}

/// Sets `pairs` in `config`; an empty value removes the key.
pub(crate) fn apply_pairs(config: &mut Config, pairs: BTreeMap<String, String>) {
    for (k, v) in pairs {
        if v.is_empty() {
            config.remove(&k);
        } else {
            config.insert(k, v);
        }
    }
}

/// Removes `keys` from `config`; a key not set is an error naming those that are.
pub(crate) fn remove_keys(config: &mut Config, keys: &[String], what: &str) -> Result<()> {
    for k in keys {
        if config.remove(k).is_none() {
            let set: Vec<&str> = config.keys().map(String::as_str).collect();
            bail!(
                "Key {k} is not set on {what} (its keys: {})",
                if set.is_empty() {
                    "none".to_string()
                } else {
                    set.join(", ")
                }
            );
        }
    }
    Ok(())
}

/// `key=value` arguments, with lxc's message and an example for a bad one.
pub(crate) fn create_pairs(pairs: &[String], example: &str) -> Result<BTreeMap<String, String>> {
    parse_pairs(pairs).map_err(|e| anyhow!("{e}: give options as KEY=VALUE (e.g. {example})"))
}

pub fn network(c: &Client, cmd: NetworkCmd) -> Result<()> {
    match cmd {
        NetworkCmd::List { remote, format } => {
            if let Some(r) = &remote {
                if !local_name(r)?.is_empty() {
                    bail!("Filtering isn't supported yet: give a remote (\"local:\") or nothing, not {r:?}");
                }
            }
            let networks: Vec<Network> = c.get("/1.0/networks?recursion=1")?;
            let t = network_table(&networks);
            let views: Vec<NetworkView<'_>> = networks.iter().map(view).collect();
            print_list(format, &t, &views)
        }
        NetworkCmd::Show { network } => {
            let (mut n, _) = get_network(c, &network)?;
            n.used_by.sort();
            out!("{}", yaml(&view(&n))?);
            Ok(())
        }
        NetworkCmd::Create {
            network,
            pairs,
            kind,
            description,
        } => {
            let config = create_pairs(&pairs, "ipv4.address=10.10.0.1/24")?;
            let name = local_name(&network)?.to_string();
            let from_stdin: NetworksPost = editor::stdin_yaml("a network")?.unwrap_or_default();
            let post = create_body(name.clone(), from_stdin, kind, description, config);
            let resp = c.post("/1.0/networks", &post)?;
            c.wait(&resp, None)?;
            outln!("Network {name} created");
            Ok(())
        }
        NetworkCmd::Delete { network } => {
            let resp = c
                .delete(&network_path(&network)?)
                .map_err(|e| not_found_hint(e, "`corral network list` lists the networks"))?;
            c.wait(&resp, None)?;
            outln!("Network {} deleted", local_name(&network)?);
            Ok(())
        }
        NetworkCmd::Edit { network } => edit(c, &network),
        NetworkCmd::Get { network, key } => {
            let (n, _) = get_network(c, &network)?;
            if let Some(v) = n.config.get(&key) {
                outln!("{v}");
            }
            Ok(())
        }
        NetworkCmd::Set { network, args } => {
            let pairs = config_pairs(&args, "corral network set br0 ipv4.nat false")?;
            update_network(c, &network, |put| {
                apply_pairs(&mut put.config, pairs);
                Ok(())
            })
        }
        NetworkCmd::Unset { network, keys } => {
            let what = format!("network {}", local_name(&network)?);
            update_network(c, &network, |put| remove_keys(&mut put.config, &keys, &what))
        }
        NetworkCmd::Rename { network, new_name } => {
            let resp = c
                .post(&network_path(&network)?, &NetworkPost { name: new_name.clone() })
                .map_err(|e| not_found_hint(e, "`corral network list` lists the networks"))?;
            c.wait(&resp, None)?;
            outln!("Network {} renamed to {new_name}", local_name(&network)?);
            Ok(())
        }
        NetworkCmd::Info { network } => {
            let state: NetworkState = c
                .get(&format!("{}/state", network_path(&network)?))
                .map_err(|e| not_found_hint(e, "`corral network list` lists the networks"))?;
            out!("{}", info_text(local_name(&network)?, &state));
            Ok(())
        }
        NetworkCmd::ListLeases { network, format } => {
            let leases: Vec<NetworkLease> = c
                .get(&format!("{}/leases", network_path(&network)?))
                .map_err(|e| not_found_hint(e, "`corral network list` lists the networks"))?;
            print_list(format, &lease_table(&leases), &leases)
        }
        NetworkCmd::Attach {
            network,
            instance,
            device,
            interface,
        } => {
            let (net, _) = get_network(c, &network)?;
            let dev_name = device.unwrap_or_else(|| net.name.clone());
            let nic = nic_device(&net, interface.as_deref());
            change_instance_devices(c, &instance, |_, devices| {
                add_device(devices, &dev_name, nic, &format!("instance {instance}"))
            })
        }
        NetworkCmd::AttachProfile {
            network,
            profile,
            device,
            interface,
        } => {
            let (net, _) = get_network(c, &network)?;
            let dev_name = device.unwrap_or_else(|| net.name.clone());
            let nic = nic_device(&net, interface.as_deref());
            change_profile_devices(c, &profile, |devices| {
                add_device(devices, &dev_name, nic, &format!("profile {profile}"))
            })
        }
        NetworkCmd::Detach {
            network,
            instance,
            device,
        } => {
            let network = local_name(&network)?.to_string();
            change_instance_devices(c, &instance, |inst, devices| {
                let found = find_nic(
                    devices,
                    Some(&inst.expanded_devices),
                    &network,
                    device.as_deref(),
                    &format!("instance {instance}"),
                )?;
                devices.remove(&found);
                Ok(())
            })
        }
        NetworkCmd::DetachProfile {
            network,
            profile,
            device,
        } => {
            let network = local_name(&network)?.to_string();
            change_profile_devices(c, &profile, |devices| {
                let found = find_nic(
                    devices,
                    None,
                    &network,
                    device.as_deref(),
                    &format!("profile {profile}"),
                )?;
                devices.remove(&found);
                Ok(())
            })
        }
        NetworkCmd::Forward(cmd) => forward(c, cmd),
    }
}

/// The body of `network create`: the YAML read from stdin (if any) under the command line's
/// name, type, description and options.
fn create_body(
    name: String,
    from_stdin: NetworksPost,
    kind: Option<String>,
    description: Option<String>,
    pairs: BTreeMap<String, String>,
) -> NetworksPost {
    let mut config = from_stdin.config;
    config.extend(pairs);
    NetworksPost {
        name,
        description: description.unwrap_or(from_stdin.description),
        kind: kind.unwrap_or(from_stdin.kind),
        config,
    }
}

/// Reads the network with its ETag, refuses an unmanaged one, lets `change` edit its writable
/// fields and writes them back with If-Match.
fn update_network(c: &Client, name: &str, change: impl FnOnce(&mut NetworkPut) -> Result<()>) -> Result<()> {
    let (n, etag) = get_network(c, name)?;
    check_managed(&n, name)?;
    let mut put = NetworkPut {
        config: n.config,
        description: n.description,
    };
    change(&mut put)?;
    let resp = c.put_if_match(&network_path(name)?, &put, etag.as_deref())?;
    c.wait(&resp, None)?;
    Ok(())
}

/// lxc's list: no loopback or unknown interfaces, sorted naturally.
fn network_table(networks: &[Network]) -> Table {
    let mut rows: Vec<Vec<String>> = networks
        .iter()
        .filter(|n| n.kind != "loopback" && n.kind != "unknown")
        .map(|n| {
            vec![
                n.name.clone(),
                n.kind.clone(),
                if n.managed { "YES" } else { "NO" }.to_string(),
                n.config.get("ipv4.address").cloned().unwrap_or_default(),
                n.config.get("ipv6.address").cloned().unwrap_or_default(),
                n.description.clone(),
                n.used_by.len().to_string(),
                n.status.to_uppercase(),
            ]
        })
        .collect();
    sort_rows(&mut rows);
    let mut t = Table::new([
        "NAME",
        "TYPE",
        "MANAGED",
        "IPV4",
        "IPV6",
        "DESCRIPTION",
        "USED BY",
        "STATE",
    ]);
    rows.into_iter().for_each(|r| t.row(r));
    t
}

fn lease_table(leases: &[NetworkLease]) -> Table {
    let mut rows: Vec<Vec<String>> = leases
        .iter()
        .map(|l| {
            vec![
                l.hostname.clone(),
                l.hwaddr.clone(),
                l.address.clone(),
                l.kind.to_uppercase(),
            ]
        })
        .collect();
    sort_rows(&mut rows);
    let mut t = Table::new(["HOSTNAME", "MAC ADDRESS", "IP ADDRESS", "TYPE"]);
    rows.into_iter().for_each(|r| t.row(r));
    t
}

fn forward_table(forwards: &[NetworkForward]) -> Table {
    let mut rows: Vec<Vec<String>> = forwards
        .iter()
        .map(|f| {
            vec![
                f.listen_address.clone(),
                f.description.clone(),
                f.config.get("target_address").cloned().unwrap_or_default(),
                f.ports.len().to_string(),
            ]
        })
        .collect();
    sort_rows(&mut rows);
    let mut t = Table::new(["LISTEN ADDRESS", "DESCRIPTION", "DEFAULT TARGET ADDRESS", "PORTS"]);
    rows.into_iter().for_each(|r| t.row(r));
    t
}

/// lxc's row order: by the first column that differs, empty cells last, numbers in text
/// compared as numbers (`br2` before `br10`).
fn sort_rows(rows: &mut [Vec<String>]) {
    rows.sort_by(|a, b| {
        for (x, y) in a.iter().zip(b) {
            if x == y {
                continue;
            }
            return match (x.is_empty(), y.is_empty()) {
                (true, _) => Ordering::Greater,
                (_, true) => Ordering::Less,
                _ => natural_cmp(x, y),
            };
        }
        Ordering::Equal
    });
}

/// Natural order: runs of digits compare by value, the rest byte by byte.
pub(crate) fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let da = a.iter().take_while(|c| c.is_ascii_digit()).count();
                let db = b.iter().take_while(|c| c.is_ascii_digit()).count();
                let (na, nb) = (&a[..da], &b[..db]);
                let (ta, tb) = (trim_zeros(na), trim_zeros(nb));
                let ord = ta
                    .len()
                    .cmp(&tb.len())
                    .then_with(|| ta.cmp(tb))
                    .then_with(|| na.len().cmp(&nb.len()));
                if ord != Ordering::Equal {
                    return ord;
                }
                a = &a[da..];
                b = &b[db..];
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                a = &a[1..];
                b = &b[1..];
            }
        }
    }
}

fn trim_zeros(digits: &[u8]) -> &[u8] {
    let zeros = digits.iter().take_while(|&&c| c == b'0').count();
    &digits[zeros..]
}

/// A byte count as `lxc network info` writes it (decimal units): `999B`, `1.50kB`, `2.00MB`.
fn decimal_size(bytes: i64) -> String {
    if bytes < 1000 {
        return format!("{bytes}B");
    }
    let mut v = bytes as f64;
    for unit in ["kB", "MB", "GB", "TB", "PB", "EB"] {
        v /= 1000.0;
        if v < 1000.0 {
            return format!("{v:.2}{unit}");
        }
    }
    format!("{v:.2}EB")
}

/// `lxc network info`'s text.
fn info_text(name: &str, s: &NetworkState) -> String {
    let mut out = format!(
        "Name: {name}\nMAC address: {}\nMTU: {}\nState: {}\nType: {}\n",
        s.hwaddr, s.mtu, s.state, s.kind
    );
    if !s.addresses.is_empty() {
        out.push_str("\nIP addresses:\n");
        for a in &s.addresses {
            out.push_str(&format!("  {}\t{}/{} ({})\n", a.family, a.address, a.netmask, a.scope));
        }
    }
    out.push_str("\nNetwork usage:\n");
    out.push_str(&format!(
        "  Bytes received: {}\n",
        decimal_size(s.counters.bytes_received)
    ));
    out.push_str(&format!("  Bytes sent: {}\n", decimal_size(s.counters.bytes_sent)));
    out.push_str(&format!("  Packets received: {}\n", s.counters.packets_received));
    out.push_str(&format!("  Packets sent: {}\n", s.counters.packets_sent));
    if let Some(b) = &s.bridge {
        out.push_str("\nBridge:\n");
        out.push_str(&format!("  ID: {}\n", b.id));
        out.push_str(&format!("  STP: {}\n", b.stp));
        out.push_str(&format!("  Forward delay: {}\n", b.forward_delay));
        out.push_str(&format!("  Default VLAN ID: {}\n", b.vlan_default));
        out.push_str(&format!("  VLAN filtering: {}\n", b.vlan_filtering));
        out.push_str(&format!("  Upper devices: {}\n", b.upper_devices.join(", ")));
    }
    out
}

/// The nic device `network attach` adds, as lxc builds it: a managed network by its name (the
/// NIC takes the network's settings); a host interface as a macvlan on it, or bridged to it if
/// it is a bridge.
fn nic_device(net: &Network, interface: Option<&str>) -> BTreeMap<String, String> {
    let mut dev = BTreeMap::from([("type".to_string(), "nic".to_string())]);
    if net.managed {
        dev.insert("network".into(), net.name.clone());
    } else {
        let nictype = if net.kind == "bridge" { "bridged" } else { "macvlan" };
        dev.insert("nictype".into(), nictype.into());
        dev.insert("parent".into(), net.name.clone());
    }
    if let Some(i) = interface {
        dev.insert("name".into(), i.into());
    }
    dev
}

fn add_device(devices: &mut Devices, name: &str, dev: BTreeMap<String, String>, owner: &str) -> Result<()> {
    if devices.contains_key(name) {
        bail!(
            "Device already exists: {name} (on {owner}; its devices: {}): give another device name as the third \
             argument",
            describe_devices(devices)
        );
    }
    devices.insert(name.to_string(), dev);
    Ok(())
}

/// `eth0 (nic on corralbr0), root (disk)`, or `none`.
fn describe_devices(devices: &Devices) -> String {
    if devices.is_empty() {
        return "none".into();
    }
    devices
        .iter()
        .map(|(name, d)| {
            let kind = d.get("type").map(String::as_str).unwrap_or("no type");
            match d.get("network").or_else(|| d.get("parent")) {
                Some(net) if kind == "nic" => format!("{name} (nic on {net})"),
                _ => format!("{name} ({kind})"),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn nic_on(d: &BTreeMap<String, String>, network: &str) -> bool {
    d.get("type").map(String::as_str) == Some("nic")
        && (d.get("network").map(String::as_str) == Some(network)
            || d.get("parent").map(String::as_str) == Some(network))
}

/// The device of `devices` (those of `owner`) that `network detach` removes: `device` if given
/// (it must be a nic on `network`), else the only nic on `network`. `expanded`, an instance's
/// devices with its profiles', lets the error say when the nic comes from a profile.
fn find_nic(
    devices: &Devices,
    expanded: Option<&Devices>,
    network: &str,
    device: Option<&str>,
    owner: &str,
) -> Result<String> {
    if let Some(name) = device {
        let Some(d) = devices.get(name) else {
            if expanded.is_some_and(|e| e.contains_key(name)) {
                bail!(
                    "The specified device doesn't exist: {name} comes from a profile of {owner}; detach it from the \
                     profile with `corral network detach-profile {network} PROFILE {name}`"
                );
            }
            bail!(
                "The specified device doesn't exist: {owner} has no device {name} (its devices: {})",
                describe_devices(devices)
            );
        };
        if !nic_on(d, network) {
            bail!(
                "The specified device doesn't match the network: {name} is not a nic on {network} ({})",
                describe_devices(&BTreeMap::from([(name.to_string(), d.clone())]))
            );
        }
        return Ok(name.to_string());
    }
    let matching: Vec<&String> = devices
        .iter()
        .filter(|(_, d)| nic_on(d, network))
        .map(|(n, _)| n)
        .collect();
    match matching.as_slice() {
        [one] => Ok(one.to_string()),
        [] => {
            let from_profile: Vec<&String> = expanded
                .map(|e| {
                    e.iter()
                        .filter(|(n, d)| !devices.contains_key(*n) && nic_on(d, network))
                        .map(|(n, _)| n)
                        .collect()
                })
                .unwrap_or_default();
            if let Some(name) = from_profile.first() {
                bail!(
                    "No device found for this network on {owner}: its nic {name} on {network} comes from a profile; \
                     detach it from the profile with `corral network detach-profile {network} PROFILE`"
                );
            }
            bail!(
                "No device found for this network: {owner} has no nic on {network} (its devices: {})",
                describe_devices(devices)
            )
        }
        many => bail!(
            "More than one device matches, specify the device name: {}",
            many.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// Reads the instance with its ETag, lets `change` edit its own devices, writes it back with
/// If-Match and waits.
fn change_instance_devices(
    c: &Client,
    instance: &str,
    change: impl FnOnce(&Instance, &mut Devices) -> Result<()>,
) -> Result<()> {
    let path = instance_path(instance)?;
    let (inst, etag) = c.get_with_etag::<Instance>(&path)?;
    let mut devices = inst.devices.clone();
    change(&inst, &mut devices)?;
    let mut put = writable(inst);
    put.devices = devices;
    let resp = c.put_if_match(&path, &put, etag.as_deref())?;
    c.wait(&resp, None)?;
    Ok(())
}

/// The same for a profile's devices.
pub(crate) fn change_profile_devices(
    c: &Client,
    profile: &str,
    change: impl FnOnce(&mut Devices) -> Result<()>,
) -> Result<()> {
    let path = profile_path(profile);
    let (p, etag) = c
        .get_with_etag::<Profile>(&path)
        .map_err(|e| not_found_hint(e, "`corral profile list` lists the profiles"))?;
    let mut put = ProfilePut {
        config: p.config,
        description: p.description,
        devices: p.devices,
    };
    change(&mut put.devices)?;
    let resp = c.put_if_match(&path, &put, etag.as_deref())?;
    c.wait(&resp, None)?;
    Ok(())
}

const EDIT_HEADER: &str = "\
### This is a YAML representation of the network.
### Any line starting with a '# will be ignored.
###
### A network consists of a set of configuration items.
###
### An example would look like:
### name: corralbr0
### config:
###   ipv4.address: 10.62.42.1/24
###   ipv4.nat: true
###   ipv6.address: fd00:56ad:9f7a:9800::1/64
###   ipv6.nat: true
### managed: true
### type: bridge
###
### Note that only the configuration can be changed.

";

/// `network edit`: YAML from stdin when it is not a terminal; otherwise the network in the
/// editor, written back with the ETag read.
fn edit(c: &Client, name: &str) -> Result<()> {
    let path = network_path(name)?;
    if let Some(put) = editor::stdin_yaml::<NetworkPut>("a network")? {
        let resp = c.put(&path, &put)?;
        c.wait(&resp, None)?;
        return Ok(());
    }
    let (n, etag) = get_network(c, name)?;
    check_managed(&n, name)?;
    let text = format!("{EDIT_HEADER}{}", yaml(&view(&n))?);
    editor::edit_yaml(&text, |put: NetworkPut| {
        let resp = c.put_if_match(&path, &put, etag.as_deref())?;
        c.wait(&resp, None)?;
        Ok(())
    })
}

const FORWARD_EDIT_HEADER: &str = "\
### This is a YAML representation of the network forward.
### Any line starting with a '# will be ignored.
###
### A network forward consists of a default target address and optional set of port forwards for a listen address.
###
### An example would look like:
### listen_address: 192.0.2.1
### config:
###   target_address: 198.51.100.2
### description: test desc
### ports:
### - description: port forward
###   protocol: tcp
###   listen_port: 80,81,8080-8090
###   target_address: 198.51.100.3
###   target_port: 80,81,8080-8090
###
### Note that the listen_address and location cannot be changed.

";

/// An address in its canonical form when it is one (as lxc normalises it), else as given.
fn canonical_address(addr: &str) -> String {
    let trimmed = addr.trim();
    trimmed
        .parse::<IpAddr>()
        .map(|ip| ip.to_string())
        .unwrap_or_else(|_| trimmed.to_string())
}

/// A port list, trimmed around its commas (lxc's normalisation).
fn normalise_ports(spec: &str) -> String {
    spec.split(',').map(str::trim).collect::<Vec<_>>().join(",")
}

/// lxc's normalisation of a forward's port rules.
fn normalise_forward(put: &mut NetworkForwardPut) {
    for p in &mut put.ports {
        p.description = p.description.trim().to_string();
        p.protocol = p.protocol.trim().to_string();
        p.target_address = canonical_address(&p.target_address);
        p.listen_port = normalise_ports(&p.listen_port);
        p.target_port = normalise_ports(&p.target_port);
    }
}

/// A port list as forwards take it: ports and ranges, comma-separated (`80,8000-8010`). Gives
/// the ranges (first, last), or an error naming the bad part.
fn parse_ports(spec: &str) -> Result<Vec<(u16, u16)>> {
    let port = |s: &str| -> Result<u16> {
        match s.trim().parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => bail!(
                "Invalid port {:?} in {spec:?}: a port is a number from 1 to 65535",
                s.trim()
            ),
        }
    };
    let mut ranges = Vec::new();
    for part in spec.split(',') {
        let part = part.trim();
        if part.is_empty() {
            bail!("Empty port in {spec:?}: give ports and ranges separated by commas, e.g. 80,8000-8010");
        }
        let range = match part.split_once('-') {
            None => {
                let p = port(part)?;
                (p, p)
            }
            Some((first, last)) => {
                let (first, last) = (port(first)?, port(last)?);
                if last <= first {
                    bail!("Invalid port range {part:?}: the end port must be higher than the start port");
                }
                (first, last)
            }
        };
        ranges.push(range);
    }
    Ok(ranges)
}

fn port_count(ranges: &[(u16, u16)]) -> usize {
    ranges.iter().map(|(a, b)| usize::from(b - a) + 1).sum()
}

/// The port rule `forward port add` adds, checked: protocol, ports, target address, and as many
/// target ports as listen ports (or one, or none).
fn port_rule(
    protocol: &str,
    listen_ports: &str,
    target_address: &str,
    target_ports: Option<&str>,
) -> Result<NetworkForwardPort> {
    let protocol = protocol.trim();
    if protocol != "tcp" && protocol != "udp" {
        bail!("Invalid protocol {protocol:?}: use tcp or udp");
    }
    let listen = parse_ports(listen_ports)?;
    let address = canonical_address(target_address);
    if address.parse::<IpAddr>().is_err() {
        bail!("Invalid target address {target_address:?}: give the IP address to forward to, e.g. 10.10.0.2");
    }
    if let Some(target) = target_ports {
        let (n_listen, n_target) = (port_count(&listen), port_count(&parse_ports(target)?));
        if n_target != 1 && n_target != n_listen {
            bail!(
                "Mismatch of listen port(s) and target port(s) count: {n_listen} listen ports but {n_target} target \
                 ports; give one target port, or as many as the listen ports"
            );
        }
    }
    Ok(NetworkForwardPort {
        description: String::new(),
        protocol: protocol.to_string(),
        listen_port: normalise_ports(listen_ports),
        target_port: target_ports.map(normalise_ports).unwrap_or_default(),
        target_address: address,
    })
}

/// `tcp 80 -> 10.0.0.2:8080`.
fn describe_port(p: &NetworkForwardPort) -> String {
    let target = if p.target_port.is_empty() {
        p.target_address.clone()
    } else {
        format!("{}:{}", p.target_address, p.target_port)
    };
    format!("{} {} -> {target}", p.protocol, p.listen_port)
}

/// `forward port remove`: removes the rule matching `protocol` and `listen_ports` (any rule,
/// without them); more than one match needs `force`.
fn remove_ports(
    ports: &[NetworkForwardPort],
    protocol: Option<&str>,
    listen_ports: Option<&str>,
    force: bool,
) -> Result<Vec<NetworkForwardPort>> {
    let listen_ports = listen_ports.map(normalise_ports);
    let matches = |p: &NetworkForwardPort| {
        protocol.is_none_or(|proto| p.protocol == proto.trim())
            && listen_ports.as_deref().is_none_or(|l| p.listen_port == l)
    };
    let (gone, kept): (Vec<_>, Vec<_>) = ports.iter().cloned().partition(matches);
    let described = || ports.iter().map(describe_port).collect::<Vec<_>>().join(", ");
    match gone.len() {
        0 if ports.is_empty() => {
            bail!("No matching port(s) found: the forward has no ports (`corral network forward port add` adds one)")
        }
        0 => bail!(
            "No matching port(s) found (the forward's ports: {}): give the PROTOCOL and LISTEN_PORTS of one of them",
            described()
        ),
        1 => Ok(kept),
        _ if force => Ok(kept),
        _ => bail!(
            "Multiple ports match. Use --force to remove them all, or give PROTOCOL and LISTEN_PORTS to pick one \
             (matching: {})",
            gone.iter().map(describe_port).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// Reads the forward with its ETag, lets `change` edit its writable fields, normalises them and
/// writes them back with If-Match.
fn update_forward(
    c: &Client,
    network: &str,
    listen: &str,
    change: impl FnOnce(&mut NetworkForwardPut) -> Result<()>,
) -> Result<()> {
    let path = forward_path(network, listen)?;
    let (f, etag) = get_forward(c, network, listen)?;
    let mut put = forward_writable(f);
    change(&mut put)?;
    normalise_forward(&mut put);
    let resp = c.put_if_match(&path, &put, etag.as_deref())?;
    c.wait(&resp, None)?;
    Ok(())
}

fn forward(c: &Client, cmd: ForwardCmd) -> Result<()> {
    match cmd {
        ForwardCmd::List { network, format } => {
            let forwards: Vec<NetworkForward> = c
                .get(&format!("{}/forwards?recursion=1", network_path(&network)?))
                .map_err(|e| not_found_hint(e, "`corral network list` lists the networks"))?;
            let views: Vec<ForwardView<'_>> = forwards.iter().map(forward_view).collect();
            print_list(format, &forward_table(&forwards), &views)
        }
        ForwardCmd::Show {
            network,
            listen_address,
        } => {
            let (f, _) = get_forward(c, &network, &canonical_address(&listen_address))?;
            out!("{}", yaml(&forward_view(&f))?);
            Ok(())
        }
        ForwardCmd::Create {
            network,
            listen_address,
            pairs,
        } => {
            let config = create_pairs(&pairs, "target_address=10.10.0.2")?;
            let mut put: NetworkForwardPut = editor::stdin_yaml("a network forward")?.unwrap_or_default();
            put.config.extend(config);
            normalise_forward(&mut put);
            let post = NetworkForward {
                listen_address: canonical_address(&listen_address),
                description: put.description,
                config: put.config,
                ports: put.ports,
                location: String::new(),
            };
            let resp = c
                .post(&format!("{}/forwards", network_path(&network)?), &post)
                .map_err(|e| not_found_hint(e, "`corral network list` lists the networks"))?;
            c.wait(&resp, None)?;
            outln!("Network forward {} created", post.listen_address);
            Ok(())
        }
        ForwardCmd::Get {
            network,
            listen_address,
            key,
        } => {
            let (f, _) = get_forward(c, &network, &canonical_address(&listen_address))?;
            if let Some(v) = f.config.get(&key) {
                outln!("{v}");
            }
            Ok(())
        }
        ForwardCmd::Set {
            network,
            listen_address,
            args,
        } => {
            let pairs = config_pairs(&args, "corral network set br0 ipv4.nat false")?;
            update_forward(c, &network, &canonical_address(&listen_address), |put| {
                apply_pairs(&mut put.config, pairs);
                Ok(())
            })
        }
        ForwardCmd::Unset {
            network,
            listen_address,
            keys,
        } => {
            let listen = canonical_address(&listen_address);
            let what = format!("network forward {listen}");
            update_forward(c, &network, &listen, |put| remove_keys(&mut put.config, &keys, &what))
        }
        ForwardCmd::Edit {
            network,
            listen_address,
        } => edit_forward(c, &network, &canonical_address(&listen_address)),
        ForwardCmd::Delete {
            network,
            listen_address,
        } => {
            let listen = canonical_address(&listen_address);
            let resp = c.delete(&forward_path(&network, &listen)?).map_err(|e| {
                not_found_hint(
                    e,
                    &format!("`corral network forward list {network}` lists its forwards"),
                )
            })?;
            c.wait(&resp, None)?;
            outln!("Network forward {listen} deleted");
            Ok(())
        }
        ForwardCmd::Port(PortCmd::Add {
            network,
            listen_address,
            protocol,
            listen_ports,
            target_address,
            target_ports,
        }) => {
            let rule = port_rule(&protocol, &listen_ports, &target_address, target_ports.as_deref())?;
            update_forward(c, &network, &canonical_address(&listen_address), |put| {
                put.ports.push(rule);
                Ok(())
            })
        }
        ForwardCmd::Port(PortCmd::Remove {
            network,
            listen_address,
            protocol,
            listen_ports,
            force,
        }) => update_forward(c, &network, &canonical_address(&listen_address), |put| {
            put.ports = remove_ports(&put.ports, protocol.as_deref(), listen_ports.as_deref(), force)?;
            Ok(())
        }),
    }
}

/// `forward edit`: YAML from stdin when it is not a terminal (the output of `forward show` is
/// taken, its read-only fields ignored); otherwise the forward in the editor, written back with
/// the ETag read.
fn edit_forward(c: &Client, network: &str, listen: &str) -> Result<()> {
    let path = forward_path(network, listen)?;
    if let Some(f) = editor::stdin_yaml::<NetworkForward>("a network forward")? {
        let mut put = forward_writable(f);
        normalise_forward(&mut put);
        let resp = c.put(&path, &put)?;
        c.wait(&resp, None)?;
        return Ok(());
    }
    let (f, etag) = get_forward(c, network, listen)?;
    let text = format!("{FORWARD_EDIT_HEADER}{}", yaml(&forward_view(&f))?);
    editor::edit_yaml(&text, |f: NetworkForward| {
        let mut put = forward_writable(f);
        normalise_forward(&mut put);
        let resp = c.put_if_match(&path, &put, etag.as_deref())?;
        c.wait(&resp, None)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use corral_api::{NetworkStateAddress, NetworkStateBridge, NetworkStateCounters};

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: NetworkCmd,
    }

    fn parse(args: &[&str]) -> Result<NetworkCmd, clap::Error> {
        Cli::try_parse_from(std::iter::once("network").chain(args.iter().copied())).map(|c| c.cmd)
    }

    fn net(name: &str, kind: &str, managed: bool) -> Network {
        Network {
            name: name.into(),
            kind: kind.into(),
            managed,
            status: if managed { "Created" } else { "" }.into(),
            ..Default::default()
        }
    }

    fn nic(network: &str) -> BTreeMap<String, String> {
        BTreeMap::from([("type".into(), "nic".into()), ("network".into(), network.into())])
    }

    #[test]
    fn arguments_parse_like_lxc() {
        let NetworkCmd::Create {
            network,
            pairs,
            kind,
            description,
        } = parse(&[
            "create",
            "br0",
            "ipv4.address=10.0.0.1/24",
            "-t",
            "bridge",
            "--description",
            "lab",
        ])
        .unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (network.as_str(), pairs, kind.as_deref(), description.as_deref()),
            (
                "br0",
                vec!["ipv4.address=10.0.0.1/24".to_string()],
                Some("bridge"),
                Some("lab")
            )
        );
        assert!(parse(&["create", "br0", "--type", "ovn"]).is_err());

        let NetworkCmd::Attach {
            network,
            instance,
            device,
            interface,
        } = parse(&["attach", "br0", "c1", "eth1", "eth9"]).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (
                network.as_str(),
                instance.as_str(),
                device.as_deref(),
                interface.as_deref()
            ),
            ("br0", "c1", Some("eth1"), Some("eth9"))
        );
        assert!(parse(&["attach", "br0"]).is_err());
        assert!(parse(&["detach", "br0", "c1", "eth0", "extra"]).is_err());
        assert!(matches!(
            parse(&["ls", "-f", "csv"]).unwrap(),
            NetworkCmd::List {
                format: Format::Csv,
                ..
            }
        ));
        assert!(matches!(
            parse(&["list-leases", "br0"]).unwrap(),
            NetworkCmd::ListLeases { .. }
        ));
        assert!(matches!(
            parse(&["attach-profile", "br0", "default"]).unwrap(),
            NetworkCmd::AttachProfile { .. }
        ));
        assert!(matches!(
            parse(&["mv", "br0", "br1"]).unwrap(),
            NetworkCmd::Rename { .. }
        ));

        let NetworkCmd::Forward(ForwardCmd::Port(PortCmd::Add {
            protocol,
            listen_ports,
            target_address,
            target_ports,
            ..
        })) = parse(&[
            "forward",
            "port",
            "add",
            "br0",
            "192.0.2.1",
            "tcp",
            "80,8000-8010",
            "10.0.0.2",
        ])
        .unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (
                protocol.as_str(),
                listen_ports.as_str(),
                target_address.as_str(),
                target_ports
            ),
            ("tcp", "80,8000-8010", "10.0.0.2", None)
        );
        let NetworkCmd::Forward(ForwardCmd::Port(PortCmd::Remove {
            protocol,
            listen_ports,
            force,
            ..
        })) = parse(&["forward", "port", "remove", "br0", "192.0.2.1", "--force"]).unwrap()
        else {
            panic!()
        };
        assert_eq!((protocol, listen_ports, force), (None, None, true));
        assert!(parse(&["forward", "port", "add", "br0", "192.0.2.1", "tcp", "80"]).is_err());
    }

    #[test]
    fn set_arguments() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            config_pairs(&args(&["ipv4.nat", "false"]), "x").unwrap(),
            BTreeMap::from([("ipv4.nat".into(), "false".into())])
        );
        assert_eq!(
            config_pairs(&args(&["a=1", "b=x=y", "c="]), "x").unwrap(),
            BTreeMap::from([
                ("a".into(), "1".into()),
                ("b".into(), "x=y".into()),
                ("c".into(), "".into())
            ])
        );
        let err = config_pairs(&args(&["a=1", "b"]), "x").unwrap_err().to_string();
        assert!(err.starts_with("Invalid key=value configuration: \"b\""), "{err}");
        let mut config = BTreeMap::from([("a".to_string(), "0".to_string()), ("c".into(), "3".into())]);
        apply_pairs(&mut config, config_pairs(&args(&["a=1", "c="]), "x").unwrap());
        assert_eq!(config, BTreeMap::from([("a".into(), "1".into())]));
        let err = remove_keys(&mut config, &args(&["nope"]), "network br0")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "Key nope is not set on network br0 (its keys: a)");
    }

    #[test]
    fn create_body_puts_the_command_line_over_stdin() {
        let stdin: NetworksPost = serde_saphyr::from_str(
            "name: old\ndescription: from yaml\ntype: macvlan\nconfig:\n  parent: eth0\n  mtu: \"1400\"\nused_by: []\n",
        )
        .unwrap();
        let body = create_body(
            "mv0".into(),
            stdin.clone(),
            None,
            None,
            BTreeMap::from([("mtu".into(), "1500".into())]),
        );
        assert_eq!(body.name, "mv0");
        assert_eq!(
            (body.kind.as_str(), body.description.as_str()),
            ("macvlan", "from yaml")
        );
        assert_eq!(body.config["mtu"], "1500");
        assert_eq!(body.config["parent"], "eth0");
        let body = create_body(
            "br0".into(),
            stdin,
            Some("bridge".into()),
            Some("d".into()),
            BTreeMap::new(),
        );
        assert_eq!((body.kind.as_str(), body.description.as_str()), ("bridge", "d"));
        let empty = create_body("br0".into(), NetworksPost::default(), None, None, BTreeMap::new());
        assert_eq!(empty.kind, "", "the server's default type");
    }

    #[test]
    fn list_table_like_lxc() {
        let mut br10 = net("br10", "bridge", true);
        br10.config.insert("ipv4.address".into(), "10.10.0.1/24".into());
        br10.config.insert("ipv6.address".into(), "none".into());
        br10.used_by = vec!["/1.0/instances/c1".into(), "/1.0/profiles/default".into()];
        br10.description = "lab".into();
        let networks = vec![
            br10,
            net("lo", "loopback", false),
            net("eth0", "physical", false),
            net("br2", "bridge", true),
            net("tun0", "unknown", false),
        ];
        let t = network_table(&networks);
        assert_eq!(
            t.bordered(),
            "\
+------+----------+---------+--------------+------+-------------+---------+---------+
| NAME |   TYPE   | MANAGED |     IPV4     | IPV6 | DESCRIPTION | USED BY |  STATE  |
+------+----------+---------+--------------+------+-------------+---------+---------+
| br2  | bridge   | YES     |              |      |             | 0       | CREATED |
+------+----------+---------+--------------+------+-------------+---------+---------+
| br10 | bridge   | YES     | 10.10.0.1/24 | none | lab         | 2       | CREATED |
+------+----------+---------+--------------+------+-------------+---------+---------+
| eth0 | physical | NO      |              |      |             | 0       |         |
+------+----------+---------+--------------+------+-------------+---------+---------+
"
        );
        assert_eq!(
            t.csv(),
            "br2,bridge,YES,,,,0,CREATED\nbr10,bridge,YES,10.10.0.1/24,none,lab,2,CREATED\neth0,physical,NO,,,,0,\n"
        );
    }

    #[test]
    fn show_yaml_in_lxc_order() {
        let mut n = net("br0", "bridge", true);
        n.config.insert("ipv4.nat".into(), "true".into());
        n.used_by = vec!["/1.0/profiles/default".into()];
        n.locations = vec!["none".into()];
        let text = yaml(&view(&n)).unwrap();
        let keys: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with([' ', '-']))
            .map(|l| l.split(':').next().unwrap())
            .collect();
        assert_eq!(
            keys,
            [
                "config",
                "description",
                "name",
                "type",
                "used_by",
                "managed",
                "status",
                "locations"
            ]
        );
        // What `show` prints, edited, reads back as the writable fields.
        let edited = format!("{EDIT_HEADER}{text}");
        let put: NetworkPut = serde_saphyr::from_str(&edited).unwrap();
        assert_eq!(put.config, n.config);
        let again: Network = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(again, n);
    }

    #[test]
    fn lease_table_sorted_by_hostname() {
        let lease = |h: &str, mac: &str, ip: &str, kind: &str| NetworkLease {
            hostname: h.into(),
            hwaddr: mac.into(),
            address: ip.into(),
            kind: kind.into(),
            ..Default::default()
        };
        let t = lease_table(&[
            lease("c10", "00:16:3e:00:00:0a", "10.0.0.10", "dynamic"),
            lease("", "00:16:3e:00:00:ff", "10.0.0.99", "dynamic"),
            lease("c2", "00:16:3e:00:00:02", "10.0.0.2", "static"),
            lease("br0.gw", "", "10.0.0.1", "gateway"),
        ]);
        assert_eq!(
            t.bordered(),
            "\
+----------+-------------------+------------+---------+
| HOSTNAME |    MAC ADDRESS    | IP ADDRESS |  TYPE   |
+----------+-------------------+------------+---------+
| br0.gw   |                   | 10.0.0.1   | GATEWAY |
+----------+-------------------+------------+---------+
| c2       | 00:16:3e:00:00:02 | 10.0.0.2   | STATIC  |
+----------+-------------------+------------+---------+
| c10      | 00:16:3e:00:00:0a | 10.0.0.10  | DYNAMIC |
+----------+-------------------+------------+---------+
|          | 00:16:3e:00:00:ff | 10.0.0.99  | DYNAMIC |
+----------+-------------------+------------+---------+
"
        );
    }

    #[test]
    fn natural_order() {
        let mut v = vec!["br10", "br2", "br", "eth0", "br02", "a"];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(v, ["a", "br", "br2", "br02", "br10", "eth0"]);
    }

    #[test]
    fn info_like_lxc() {
        let s = NetworkState {
            addresses: vec![
                NetworkStateAddress {
                    family: "inet".into(),
                    address: "10.0.0.1".into(),
                    netmask: "24".into(),
                    scope: "global".into(),
                },
                NetworkStateAddress {
                    family: "inet6".into(),
                    address: "fe80::1".into(),
                    netmask: "64".into(),
                    scope: "link".into(),
                },
            ],
            counters: NetworkStateCounters {
                bytes_received: 1500,
                bytes_sent: 999,
                packets_received: 12,
                packets_sent: 7,
            },
            hwaddr: "00:16:3e:00:00:01".into(),
            mtu: 1500,
            state: "up".into(),
            kind: "broadcast".into(),
            bridge: Some(NetworkStateBridge {
                id: "8000.00163e000001".into(),
                stp: false,
                forward_delay: 1500,
                vlan_default: 1,
                vlan_filtering: true,
                upper_devices: vec!["veth1".into(), "veth2".into()],
            }),
        };
        assert_eq!(
            info_text("br0", &s),
            "\
Name: br0
MAC address: 00:16:3e:00:00:01
MTU: 1500
State: up
Type: broadcast

IP addresses:
  inet\t10.0.0.1/24 (global)
  inet6\tfe80::1/64 (link)

Network usage:
  Bytes received: 1.50kB
  Bytes sent: 999B
  Packets received: 12
  Packets sent: 7

Bridge:
  ID: 8000.00163e000001
  STP: false
  Forward delay: 1500
  Default VLAN ID: 1
  VLAN filtering: true
  Upper devices: veth1, veth2
"
        );
        let bare = info_text("eth0", &NetworkState::default());
        assert!(!bare.contains("IP addresses") && !bare.contains("Bridge"), "{bare}");
        assert_eq!(decimal_size(2_500_000), "2.50MB");
    }

    #[test]
    fn nic_devices_as_lxc_builds_them() {
        assert_eq!(nic_device(&net("br0", "bridge", true), None), nic("br0"));
        let d = nic_device(&net("virbr0", "bridge", false), Some("eth1"));
        assert_eq!(
            d,
            BTreeMap::from([
                ("type".into(), "nic".into()),
                ("nictype".into(), "bridged".into()),
                ("parent".into(), "virbr0".into()),
                ("name".into(), "eth1".into()),
            ])
        );
        assert_eq!(nic_device(&net("eth0", "physical", false), None)["nictype"], "macvlan");
        assert!(check_managed(&net("br0", "bridge", true), "br0").is_ok());
        let err = check_managed(&net("eth0", "physical", false), "eth0")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("Only managed networks can be modified: eth0 is a host interface (physical)"),
            "{err}"
        );
        assert!(
            err.ends_with("create a managed one with `corral network create`"),
            "{err}"
        );
        let mut devices = Devices::from([("br0".to_string(), nic("br0"))]);
        let err = add_device(&mut devices, "br0", nic("br0"), "instance c1")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("Device already exists: br0 (on instance c1; its devices: br0 (nic on br0))"),
            "{err}"
        );
    }

    #[test]
    fn detach_finds_the_nic() {
        let root = BTreeMap::from([("type".to_string(), "disk".to_string())]);
        let devices = Devices::from([
            ("eth0".to_string(), nic("br0")),
            ("eth1".to_string(), nic("br1")),
            ("root".to_string(), root),
        ]);
        assert_eq!(find_nic(&devices, None, "br0", None, "instance c1").unwrap(), "eth0");
        assert_eq!(
            find_nic(&devices, None, "br1", Some("eth1"), "instance c1").unwrap(),
            "eth1"
        );
        let err = find_nic(&devices, None, "br9", None, "instance c1")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "No device found for this network: instance c1 has no nic on br9 (its devices: eth0 (nic on br0), eth1 \
             (nic on br1), root (disk))"
        );
        let err = find_nic(&devices, None, "br0", Some("eth5"), "instance c1")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("The specified device doesn't exist: instance c1 has no device eth5 (its devices: eth0"),
            "{err}"
        );
        let err = find_nic(&devices, None, "br0", Some("eth1"), "instance c1")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "The specified device doesn't match the network: eth1 is not a nic on br0 (eth1 (nic on br1))"
        );
        let mut two = devices.clone();
        two.insert("eth2".into(), nic("br0"));
        let err = find_nic(&two, None, "br0", None, "instance c1")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "More than one device matches, specify the device name: eth0, eth2");
        // An unmanaged parent matches too.
        let parent = Devices::from([(
            "mv".to_string(),
            BTreeMap::from([
                ("type".into(), "nic".into()),
                ("nictype".into(), "macvlan".into()),
                ("parent".into(), "eth0".into()),
            ]),
        )]);
        assert_eq!(find_nic(&parent, None, "eth0", None, "profile p").unwrap(), "mv");
        // A nic from a profile is named, with the verb that removes it.
        let expanded = Devices::from([("eth0".to_string(), nic("br0"))]);
        let err = find_nic(&Devices::new(), Some(&expanded), "br0", None, "instance c1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("its nic eth0 on br0 comes from a profile"), "{err}");
        assert!(err.contains("corral network detach-profile br0 PROFILE"), "{err}");
    }

    #[test]
    fn forward_ports_parse() {
        assert_eq!(parse_ports("80,8000-8010").unwrap(), [(80, 80), (8000, 8010)]);
        assert_eq!(port_count(&parse_ports("80, 8000-8010").unwrap()), 12);
        assert_eq!(normalise_ports("80, 8000-8010 ,443"), "80,8000-8010,443");
        for (bad, msg) in [
            ("80,", "Empty port"),
            ("http", "Invalid port \"http\""),
            ("0", "Invalid port \"0\""),
            ("70000", "Invalid port \"70000\""),
            ("90-80", "end port must be higher"),
            ("80-80", "end port must be higher"),
            ("1-2-3", "Invalid port \"2-3\""),
        ] {
            let err = parse_ports(bad).unwrap_err().to_string();
            assert!(err.contains(msg), "{bad}: {err}");
        }
    }

    #[test]
    fn forward_port_rules() {
        let rule = port_rule("tcp", "80, 8000-8010", "10.0.0.2", Some("8080")).unwrap();
        assert_eq!(
            rule,
            NetworkForwardPort {
                description: String::new(),
                protocol: "tcp".into(),
                listen_port: "80,8000-8010".into(),
                target_port: "8080".into(),
                target_address: "10.0.0.2".into(),
            }
        );
        assert!(port_rule("udp", "53", "fd00::0:2", None).unwrap().target_address == "fd00::2");
        assert!(port_rule("udp", "53-54", "10.0.0.2", Some("1053-1054")).is_ok());
        let err = port_rule("sctp", "80", "10.0.0.2", None).unwrap_err().to_string();
        assert_eq!(err, "Invalid protocol \"sctp\": use tcp or udp");
        assert!(port_rule("tcp", "80", "c1", None)
            .unwrap_err()
            .to_string()
            .contains("Invalid target address"));
        let err = port_rule("tcp", "80-82", "10.0.0.2", Some("90,91"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("3 listen ports but 2 target ports"), "{err}");
    }

    #[test]
    fn forward_port_removal() {
        let port = |proto: &str, listen: &str| NetworkForwardPort {
            protocol: proto.into(),
            listen_port: listen.into(),
            target_address: "10.0.0.2".into(),
            ..Default::default()
        };
        let ports = vec![port("tcp", "80"), port("udp", "53"), port("tcp", "443,8443")];
        assert_eq!(
            remove_ports(&ports, Some("tcp"), Some("443, 8443"), false).unwrap(),
            [port("tcp", "80"), port("udp", "53")]
        );
        assert_eq!(remove_ports(&ports, Some("udp"), None, false).unwrap().len(), 2);
        let err = remove_ports(&ports, Some("tcp"), None, false).unwrap_err().to_string();
        assert!(
            err.starts_with("Multiple ports match. Use --force to remove them all"),
            "{err}"
        );
        assert!(err.contains("tcp 80 -> 10.0.0.2, tcp 443,8443 -> 10.0.0.2"), "{err}");
        assert_eq!(
            remove_ports(&ports, Some("tcp"), None, true).unwrap(),
            [port("udp", "53")]
        );
        assert!(remove_ports(&ports, None, None, true).unwrap().is_empty());
        let err = remove_ports(&[], None, None, false).unwrap_err().to_string();
        assert!(err.contains("the forward has no ports"), "{err}");
        let err = remove_ports(&ports, Some("tcp"), Some("22"), false)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("No matching port(s) found (the forward's ports: tcp 80 -> 10.0.0.2, udp 53"),
            "{err}"
        );
    }

    #[test]
    fn forward_show_and_table() {
        let f = NetworkForward {
            listen_address: "192.0.2.1".into(),
            description: "web".into(),
            config: BTreeMap::from([("target_address".into(), "10.0.0.2".into())]),
            ports: vec![NetworkForwardPort {
                protocol: "tcp".into(),
                listen_port: "80".into(),
                target_address: "10.0.0.3".into(),
                ..Default::default()
            }],
            location: String::new(),
        };
        let text = yaml(&forward_view(&f)).unwrap();
        assert!(text.starts_with("description: web\nconfig:\n"), "{text}");
        // The read-only fields too, as lxc prints them (an empty location included).
        assert!(text.contains("\nlisten_address: "), "{text}");
        assert!(text.ends_with("\nlocation: \"\"\n"), "{text}");
        let edited: NetworkForward = serde_saphyr::from_str(&format!("{FORWARD_EDIT_HEADER}{text}")).unwrap();
        assert_eq!(edited, f);
        assert_eq!(forward_table(&[f]).csv(), "192.0.2.1,web,10.0.0.2,1\n");
        assert_eq!(canonical_address(" 2001:db8:0::1 "), "2001:db8::1");
        assert_eq!(canonical_address("not-an-ip"), "not-an-ip");
    }
}
