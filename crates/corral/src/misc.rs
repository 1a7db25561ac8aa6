//! `operation`, `storage`, `query` and `version`.

use std::collections::BTreeMap;
use std::io::Read;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use corral_api::{Operation, OperationClass, Server, StoragePool, StoragePoolState};
use corral_client::{encode_segment, Client, ClientError};
use serde_json::Value;

use crate::output::{date, print_list, size, yaml, Format, Table};

#[derive(Subcommand)]
pub enum OperationCmd {
    /// List background operations
    #[command(alias = "ls")]
    List {
        #[arg(short = 'f', long = "format", value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Show an operation (YAML)
    Show { id: String },
    /// Cancel an operation
    #[command(alias = "rm")]
    Delete { id: String },
}

#[derive(Subcommand)]
pub enum StorageCmd {
    /// List storage pools
    #[command(alias = "ls")]
    List {
        #[arg(short = 'f', long = "format", value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Show a storage pool (YAML)
    Show { name: String },
    /// Show useful information about a storage pool: its space and inodes, and what uses it
    #[command(after_help = "Examples:\n  corral storage info default\n  corral storage info default --bytes")]
    Info {
        name: String,
        /// Show the used and total space in bytes
        #[arg(long)]
        bytes: bool,
    },
}

#[derive(Args)]
pub struct QueryArgs {
    /// API path, e.g. /1.0/instances?recursion=1
    pub path: String,
    /// HTTP method
    #[arg(short = 'X', long = "request", default_value = "GET")]
    pub method: String,
    /// JSON body ("-" reads it from stdin)
    #[arg(short = 'd', long = "data")]
    pub data: Option<String>,
    /// Wait for the operation an async answer started, and print it
    #[arg(long)]
    pub wait: bool,
    /// Print the whole answer, envelope included
    #[arg(long)]
    pub raw: bool,
}

pub fn operation(c: &Client, cmd: OperationCmd) -> Result<()> {
    match cmd {
        OperationCmd::List { format } => {
            let by_status: BTreeMap<String, Vec<Operation>> = c.get("/1.0/operations?recursion=1")?;
            let mut ops: Vec<Operation> = by_status.into_values().flatten().collect();
            ops.sort_by(|a, b| a.created_at.0.cmp(&b.created_at.0).then(a.id.cmp(&b.id)));
            let mut t = Table::new(["ID", "TYPE", "DESCRIPTION", "STATUS", "CANCELABLE", "CREATED"]);
            for op in &ops {
                t.row(vec![
                    op.id.clone(),
                    match op.class {
                        OperationClass::Task => "TASK",
                        OperationClass::Websocket => "WEBSOCKET",
                        OperationClass::Token => "TOKEN",
                    }
                    .into(),
                    op.description.clone(),
                    op.status.to_uppercase(),
                    if op.may_cancel { "YES" } else { "NO" }.into(),
                    date(&op.created_at.0),
                ]);
            }
            print_list(format, &t, &ops)
        }
        OperationCmd::Show { id } => {
            let op: Operation = c.get(&format!("/1.0/operations/{}", encode_segment(&id)))?;
            out!("{}", yaml(&op)?);
            Ok(())
        }
        OperationCmd::Delete { id } => {
            c.delete(&format!("/1.0/operations/{}", encode_segment(&id)))?;
            Ok(())
        }
    }
}

pub fn storage(c: &Client, cmd: StorageCmd) -> Result<()> {
    match cmd {
        StorageCmd::List { format } => {
            let mut pools: Vec<StoragePool> = c.get("/1.0/storage-pools?recursion=1")?;
            pools.sort_by(|a, b| a.name.cmp(&b.name));
            let mut t = Table::new(["NAME", "DRIVER", "SOURCE", "DESCRIPTION", "USED BY", "STATE"]);
            for p in &pools {
                t.row(vec![
                    p.name.clone(),
                    p.driver.clone(),
                    p.config.get("source").cloned().unwrap_or_default(),
                    p.description.clone(),
                    p.used_by.len().to_string(),
                    p.status.to_uppercase(),
                ]);
            }
            print_list(format, &t, &pools)
        }
        StorageCmd::Show { name } => {
            let p: StoragePool = c.get(&format!("/1.0/storage-pools/{}", encode_segment(&name)))?;
            out!("{}", yaml(&p)?);
            Ok(())
        }
        StorageCmd::Info { name, bytes } => {
            let path = format!("/1.0/storage-pools/{}", encode_segment(&name));
            let pool: StoragePool = c.get(&path)?;
            let res: StoragePoolState = c
                .get(&format!("{path}/resources"))
                .with_context(|| format!("cannot read the resources of storage pool {name}"))?;
            out!("{}", yaml(&pool_info(&pool, &res, bytes))?);
            Ok(())
        }
    }
}

/// What `lxc storage info` prints: the pool and its usage under `info`, and what uses it, by
/// kind, under `used by`.
fn pool_info(pool: &StoragePool, res: &StoragePoolState, bytes: bool) -> Value {
    let amount = |n: u64| {
        if bytes {
            Value::from(n)
        } else {
            Value::from(size(i64::try_from(n).unwrap_or(i64::MAX)))
        }
    };
    let mut info = BTreeMap::from([
        ("name", Value::from(pool.name.as_str())),
        ("driver", Value::from(pool.driver.as_str())),
        ("description", Value::from(pool.description.as_str())),
        ("space used", amount(res.space.used)),
        ("total space", amount(res.space.total)),
    ]);
    if res.inodes.total > 0 {
        info.insert("inodes used", Value::from(res.inodes.used));
        info.insert("total inodes", Value::from(res.inodes.total));
    }
    let mut used_by: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for url in &pool.used_by {
        let path = url.split('?').next().unwrap_or(url);
        let fields: Vec<&str> = path.trim_start_matches("/1.0/").split('/').collect();
        // /1.0/instances/c1, /1.0/profiles/default; snapshots are their instance's.
        let (kind, name) = match fields.as_slice() {
            [.., "snapshots", _] => continue,
            [_, _, kind, name, ..] => (kind.to_string(), name.to_string()),
            [kind, name, ..] => (kind.to_string(), name.to_string()),
            _ => ("unrecognized".to_string(), path.to_string()),
        };
        used_by.entry(kind).or_default().push(name);
    }
    serde_json::json!({ "info": info, "used by": used_by })
}

pub fn query(c: &Client, a: QueryArgs) -> Result<()> {
    if !a.path.starts_with('/') {
        bail!("Query path must start with /");
    }
    let body = match a.data.as_deref() {
        None => None,
        Some("-") => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            Some(s)
        }
        Some(d) => Some(d.to_string()),
    };
    let body: Option<Value> = body
        .map(|b| serde_json::from_str(&b).context("the data (-d) is not valid JSON"))
        .transpose()?;
    let method = a.method.to_uppercase();
    let resp = c.request(&method, &a.path, body.as_ref())?;
    let out = if a.raw {
        serde_json::to_value(&resp)?
    } else if a.wait && resp.kind == corral_api::ResponseType::Async {
        serde_json::to_value(c.wait(&resp, None)?)?
    } else {
        resp.metadata
    };
    outln!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

pub fn version(c: &Client) {
    outln!("Client version: {}", env!("CARGO_PKG_VERSION"));
    match c.get::<Server>("/1.0") {
        Ok(s) => outln!("Server version: {}", s.environment.server_version),
        Err(ClientError::Unreachable { .. }) => outln!("Server version: unreachable"),
        Err(e) => outln!("Server version: unknown ({e})"),
    }
}
