//! `operation`, `query` and `version`.

use std::collections::BTreeMap;
use std::io::Read;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use corral_api::{Operation, OperationClass, Server};
use corral_client::{encode_segment, Client, ClientError};
use serde_json::Value;

use crate::output::{date, print_list, yaml, Format, Table};

#[derive(Subcommand)]
#[command(defer = true)]
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

pub fn query(c: &Client, a: QueryArgs) -> Result<()> {
    let path = crate::remotes::local_name(&a.path)?.to_string();
    if !path.starts_with('/') {
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
    let resp = c.request(&method, &path, body.as_ref())?;
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
