//! Remotes: lxc names a server with a `remote:` prefix (`local:c1`, `images:debian/12`).
//! Corral has one remote for now, `local`: the daemon on this host's unix socket.

use anyhow::{bail, Result};
use clap::Subcommand;
use corral_client::Client;
use serde::Serialize;

use crate::output::{print_list, Format, Table};

/// The one remote there is.
pub const LOCAL: &str = "local";

#[derive(Subcommand)]
pub enum RemoteCmd {
    /// List the available remotes (only `local`, this host's corrald, for now)
    #[command(
        alias = "ls",
        after_help = "Examples:\n  corral remote list\n  corral remote list -f yaml"
    )]
    List {
        #[arg(short = 'f', long = "format", value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

/// A remote, with the fields of lxc's `remote list --format json`.
#[derive(Serialize)]
struct Remote {
    addr: String,
    protocol: &'static str,
    auth_type: &'static str,
    public: bool,
    #[serde(rename = "static")]
    is_static: bool,
    global: bool,
}

pub fn remote(c: &Client, cmd: RemoteCmd) -> Result<()> {
    match cmd {
        RemoteCmd::List { format } => {
            let local = Remote {
                addr: format!("unix://{}", c.socket().display()),
                protocol: "lxd",
                auth_type: "file access",
                public: false,
                is_static: true,
                global: false,
            };
            let mut t = Table::new(["NAME", "URL", "PROTOCOL", "AUTH TYPE", "PUBLIC", "STATIC", "GLOBAL"]);
            let yes_no = |b: bool| if b { "YES" } else { "NO" }.to_string();
            t.row(vec![
                format!("{LOCAL} (current)"),
                local.addr.clone(),
                local.protocol.into(),
                local.auth_type.into(),
                yes_no(local.public),
                yes_no(local.is_static),
                yes_no(local.global),
            ]);
            print_list(format, &t, &std::collections::BTreeMap::from([(LOCAL, local)]))
        }
    }
}

/// `name` without its remote: `local:c1` and `c1` are `c1`; any other remote is an error that
/// names it.
pub fn local_name(name: &str) -> Result<&str> {
    match name.split_once(':') {
        None => Ok(name),
        Some((LOCAL, rest)) => Ok(rest),
        Some((remote, _)) => bail!(
            "Remote {remote:?} doesn't exist: Corral has only the {LOCAL:?} remote (this host's corrald) for now \
             (see `corral remote list`)"
        ),
    }
}

/// A bare `remote:` argument (`corral monitor local:`): fine if it is `local:`.
pub fn check_remote_arg(arg: &str) -> Result<()> {
    let rest = local_name(arg)?;
    if !rest.is_empty() {
        bail!("expected a remote (\"{LOCAL}:\"), not {arg:?}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_names() {
        assert_eq!(local_name("c1").unwrap(), "c1");
        assert_eq!(local_name("local:c1").unwrap(), "c1");
        assert_eq!(local_name("c1/snap0").unwrap(), "c1/snap0");
        let err = local_name("prod:c1").unwrap_err().to_string();
        assert!(err.starts_with("Remote \"prod\" doesn't exist"), "{err}");
        assert!(err.contains("only the \"local\" remote"), "{err}");
        assert!(check_remote_arg("local:").is_ok());
        assert!(check_remote_arg("images:").is_err());
        assert!(check_remote_arg("local:c1").is_err());
    }
}
