//! `corral list`: one `GET /1.0/instances?recursion=2`, filtered and laid out here.

use anyhow::{bail, Result};
use clap::Args;
use corral_api::{InstanceFull, InstanceType};
use corral_client::Client;

use crate::output::{date, print_list, size, Format, Table};
use crate::remotes::check_remote_arg;

#[derive(Args)]
pub struct ListArgs {
    /// Filters: a name prefix, or KEY=VALUE (status=running, type=container, user.role=web ...),
    /// after an optional "local:"
    pub filters: Vec<String>,
    /// Columns, as shorthand characters
    #[arg(short = 'c', long = "columns", default_value = "ns46tS")]
    pub columns: String,
    /// Output format
    #[arg(short = 'f', long = "format", value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

pub fn list(c: &Client, a: ListArgs) -> Result<()> {
    let columns = parse_columns(&a.columns)?;
    let filters = without_remote(&a.filters)?;
    let mut all: Vec<InstanceFull> = c.get("/1.0/instances?recursion=2")?;
    all.retain(|i| filters.iter().all(|f| matches(i, f)));
    all.sort_by(|x, y| x.instance.name.cmp(&y.instance.name));
    let mut table = Table::new(columns.iter().map(|c| c.header()));
    for inst in &all {
        table.row(columns.iter().map(|c| c.cell(inst)).collect());
    }
    print_list(a.format, &table, &all)
}

/// The filters, without a leading `remote:` (lxc's `list [<remote>:] [<filter>...]`).
pub fn without_remote(filters: &[String]) -> Result<&[String]> {
    match filters.split_first() {
        Some((first, rest)) if first.ends_with(':') => {
            check_remote_arg(first)?;
            Ok(rest)
        }
        _ => Ok(filters),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Column {
    Name,
    State,
    Ipv4,
    Ipv6,
    Type,
    Snapshots,
    Architecture,
    Created,
    LastUsed,
    Description,
    Pid,
    Processes,
    Profiles,
    Memory,
    Cpu,
    BaseImage,
    BaseImageFull,
    StoragePool,
    Location,
}

fn parse_columns(spec: &str) -> Result<Vec<Column>> {
    spec.chars()
        .filter(|ch| *ch != ',')
        .map(|ch| {
            Ok(match ch {
                'n' => Column::Name,
                's' => Column::State,
                '4' => Column::Ipv4,
                '6' => Column::Ipv6,
                't' => Column::Type,
                'S' => Column::Snapshots,
                'a' => Column::Architecture,
                'c' => Column::Created,
                'l' => Column::LastUsed,
                'd' => Column::Description,
                'p' => Column::Pid,
                'N' => Column::Processes,
                'P' => Column::Profiles,
                'm' => Column::Memory,
                'u' => Column::Cpu,
                'f' => Column::BaseImage,
                'F' => Column::BaseImageFull,
                'b' => Column::StoragePool,
                'L' => Column::Location,
                other => bail!("Unknown column shorthand char '{other}' in '{spec}'"),
            })
        })
        .collect()
}

impl Column {
    fn header(self) -> &'static str {
        match self {
            Column::Name => "NAME",
            Column::State => "STATE",
            Column::Ipv4 => "IPV4",
            Column::Ipv6 => "IPV6",
            Column::Type => "TYPE",
            Column::Snapshots => "SNAPSHOTS",
            Column::Architecture => "ARCHITECTURE",
            Column::Created => "CREATED AT",
            Column::LastUsed => "LAST USED AT",
            Column::Description => "DESCRIPTION",
            Column::Pid => "PID",
            Column::Processes => "PROCESSES",
            Column::Profiles => "PROFILES",
            Column::Memory => "MEMORY USAGE",
            Column::Cpu => "CPU USAGE",
            Column::BaseImage | Column::BaseImageFull => "BASE IMAGE",
            Column::StoragePool => "STORAGE POOL",
            Column::Location => "LOCATION",
        }
    }

    fn cell(self, i: &InstanceFull) -> String {
        let inst = &i.instance;
        let running = i.state.as_ref().filter(|s| s.pid > 0);
        match self {
            Column::Name => inst.name.clone(),
            Column::State => inst.status.to_uppercase(),
            Column::Ipv4 => addresses(i, "inet"),
            Column::Ipv6 => addresses(i, "inet6"),
            Column::Type => {
                let kind = match inst.kind {
                    InstanceType::VirtualMachine => "VIRTUAL-MACHINE",
                    _ => "CONTAINER",
                };
                if inst.ephemeral {
                    format!("{kind} (EPHEMERAL)")
                } else {
                    kind.to_string()
                }
            }
            Column::Snapshots => i.snapshots.len().to_string(),
            Column::Architecture => inst.architecture.clone(),
            Column::Created => date(&inst.created_at.0),
            Column::LastUsed => date(&inst.last_used_at.0),
            Column::Description => inst.description.clone(),
            Column::Pid => running.map(|s| s.pid.to_string()).unwrap_or_default(),
            Column::Processes => running.map(|s| s.processes.to_string()).unwrap_or_default(),
            Column::Profiles => inst.profiles.join("\n"),
            Column::Memory => running.map(|s| size(s.memory.usage)).unwrap_or_default(),
            Column::Cpu => running
                .map(|s| format!("{}s", s.cpu.usage / 1_000_000_000))
                .unwrap_or_default(),
            Column::BaseImage => base_image(i).chars().take(12).collect(),
            Column::BaseImageFull => base_image(i).to_string(),
            Column::StoragePool => inst
                .expanded_devices
                .values()
                .find(|d| {
                    d.get("type").map(String::as_str) == Some("disk") && d.get("path").map(String::as_str) == Some("/")
                })
                .and_then(|d| d.get("pool").cloned())
                .unwrap_or_default(),
            Column::Location => inst.location.clone(),
        }
    }
}

fn base_image(i: &InstanceFull) -> &str {
    i.instance
        .config
        .get("volatile.base_image")
        .map(String::as_str)
        .unwrap_or_default()
}

/// Global addresses of `family` on every interface but `lo`: `10.0.0.2 (eth0)`, one per line.
fn addresses(i: &InstanceFull, family: &str) -> String {
    let Some(state) = &i.state else { return String::new() };
    let mut out = Vec::new();
    for (dev, net) in &state.network {
        if dev == "lo" {
            continue;
        }
        for a in &net.addresses {
            if a.family == family && a.scope == "global" {
                out.push(format!("{} ({dev})", a.address));
            }
        }
    }
    out.join("\n")
}

/// A filter: `KEY=VALUE`, or a name prefix.
fn matches(i: &InstanceFull, filter: &str) -> bool {
    let inst = &i.instance;
    let Some((key, value)) = filter.split_once('=') else {
        return inst.name.starts_with(filter);
    };
    let eq = |actual: &str| glob(&value.to_lowercase(), &actual.to_lowercase());
    match key {
        "name" => glob(value, &inst.name),
        "status" | "state" | "s" => eq(&inst.status),
        "type" | "t" => {
            let kind = match inst.kind {
                InstanceType::VirtualMachine => "virtual-machine",
                _ => "container",
            };
            eq(kind) || (value.eq_ignore_ascii_case("ephemeral") && inst.ephemeral)
        }
        "architecture" | "a" => eq(&inst.architecture),
        "description" | "d" => eq(&inst.description),
        "location" | "L" => eq(&inst.location),
        "ipv4" | "4" => addresses(i, "inet").lines().any(|l| l.starts_with(value)),
        "ipv6" | "6" => addresses(i, "inet6").lines().any(|l| l.starts_with(value)),
        _ => {
            let key = key.strip_prefix("config.").unwrap_or(key);
            let actual = inst
                .expanded_config
                .get(key)
                .or_else(|| inst.config.get(key))
                .map(String::as_str)
                .unwrap_or("");
            glob(value, actual)
        }
    }
}

/// `*` matches any run of characters; everything else literally.
fn glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, rest)) => {
            let Some(mut tail) = text.strip_prefix(head) else {
                return false;
            };
            loop {
                if glob(rest, tail) {
                    return true;
                }
                let mut chars = tail.chars();
                if chars.next().is_none() {
                    return false;
                }
                tail = chars.as_str();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_api::{InstanceState, InstanceStateNetwork, InstanceStateNetworkAddress};

    fn inst(name: &str, status: &str) -> InstanceFull {
        let mut i = InstanceFull::default();
        i.instance.name = name.into();
        i.instance.status = status.into();
        i.instance.kind = InstanceType::Container;
        i.instance.config.insert("user.role".into(), "web".into());
        let mut state = InstanceState::default();
        if status == "Running" {
            state.pid = 10;
            let addr = |f: &str, a: &str, scope: &str| InstanceStateNetworkAddress {
                family: f.into(),
                address: a.into(),
                netmask: "24".into(),
                scope: scope.into(),
            };
            state.network.insert(
                "eth0".into(),
                InstanceStateNetwork {
                    addresses: vec![
                        addr("inet", "10.0.0.2", "global"),
                        addr("inet6", "fe80::1", "link"),
                        addr("inet6", "fd42::2", "global"),
                    ],
                    ..Default::default()
                },
            );
            state.network.insert(
                "lo".into(),
                InstanceStateNetwork {
                    addresses: vec![addr("inet", "127.0.0.1", "local")],
                    ..Default::default()
                },
            );
        }
        i.state = Some(state);
        i
    }

    #[test]
    fn filters() {
        let c1 = inst("c1", "Running");
        let web = inst("web2", "Stopped");
        assert!(matches(&c1, "c"));
        assert!(!matches(&web, "c"));
        assert!(matches(&c1, "status=running"));
        assert!(matches(&web, "status=STOPPED"));
        assert!(!matches(&web, "status=running"));
        assert!(matches(&c1, "type=container"));
        assert!(matches(&c1, "user.role=web"));
        assert!(matches(&c1, "config.user.role=w*"));
        assert!(!matches(&c1, "user.role=db"));
        assert!(matches(&web, "name=web*"));
        assert!(!matches(&c1, "name=c"));
        assert!(matches(&c1, "ipv4=10.0."));
    }

    #[test]
    fn cells() {
        let c1 = inst("c1", "Running");
        assert_eq!(Column::Ipv4.cell(&c1), "10.0.0.2 (eth0)");
        assert_eq!(Column::Ipv6.cell(&c1), "fd42::2 (eth0)");
        assert_eq!(Column::State.cell(&c1), "RUNNING");
        assert_eq!(Column::Type.cell(&c1), "CONTAINER");
        assert_eq!(Column::Snapshots.cell(&c1), "0");
        assert_eq!(Column::Pid.cell(&inst("x", "Stopped")), "");
        assert_eq!(
            parse_columns("ns4").unwrap(),
            [Column::Name, Column::State, Column::Ipv4]
        );
        assert_eq!(
            parse_columns("nz").unwrap_err().to_string(),
            "Unknown column shorthand char 'z' in 'nz'"
        );
    }

    #[test]
    fn globs() {
        assert!(glob("a*c", "abbc"));
        assert!(glob("*", ""));
        assert!(!glob("a*c", "abd"));
        assert!(glob("abc", "abc"));
    }
}
