//! `corral config`: an instance's options (show, get, set, unset), its whole writable
//! configuration as YAML (edit), and its devices (`config device`, in devices.rs).

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use clap::Subcommand;
use corral_api::{Config, Devices, Instance, InstancePut};
use corral_client::Client;
use serde::Serialize;

use crate::devices::{self, DeviceCmd};
use crate::editor;
use crate::instances::{instance_path, parse_pairs, writable};
use crate::output::yaml;

#[derive(Subcommand)]
#[command(defer = true)]
pub enum ConfigCmd {
    /// Show an instance's configuration (YAML), or the server's without a name
    #[command(
        after_help = "Examples:\n  corral config show c1\n  corral config show c1 --expanded\n  corral config show    \
                            # the server's keys\n  corral config show h2:"
    )]
    Show {
        name: Option<String>,
        /// Include the options and devices that come from profiles
        #[arg(long)]
        expanded: bool,
    },
    /// Print the value of an instance option, or of a server option without a name
    #[command(after_help = "Examples:\n  corral config get c1 limits.memory\n  corral config get core.https_address")]
    Get { name: String, key: Option<String> },
    /// Set instance options: NAME KEY VALUE, or NAME KEY=VALUE...; server options: KEY VALUE
    #[command(
        after_help = "Examples:\n  corral config set c1 limits.memory 256MiB\n  corral config set c1 \
                            limits.cpu=2 user.role=web\n  corral config set core.https_address :8443\n  \
                            corral config set h2: core.remote_token_expiry 1H"
    )]
    Set {
        name: String,
        #[arg(required = true, num_args = 1.., value_name = "KEY VALUE | KEY=VALUE")]
        args: Vec<String>,
    },
    /// Remove instance options, or a server option without a name
    #[command(
        after_help = "Examples:\n  corral config unset c1 limits.memory user.role\n  corral config unset core.https_address"
    )]
    Unset {
        name: String,
        #[arg(value_name = "KEY")]
        keys: Vec<String>,
    },
    /// Edit an instance's configuration as YAML: in $EDITOR, or from stdin if it is not a terminal
    #[command(
        after_help = "The YAML is what `corral config show` prints: config, devices, profiles, description and \
                      ephemeral can be changed. In the editor, an error from the server reopens the editor on your \
                      text, with the error at its top; saving it unchanged gives up.\n\n\
                      Examples:\n  corral config edit c1\n  corral config edit c1 < c1.yaml\n  \
                      corral config show c1 | sed 's/256MiB/512MiB/' | corral config edit c1"
    )]
    Edit { name: String },
    /// Manage an instance's devices
    #[command(subcommand)]
    Device(DeviceCmd),
    /// Manage the server's trusted client certificates and trust tokens
    #[command(subcommand)]
    Trust(crate::trust::TrustCmd),
}

/// A server key rather than an instance name: the key names of LXD's server options have a dot
/// and no instance name may.
fn is_server_key(s: &str) -> bool {
    s.contains('.') && !s.contains('/')
}

/// `remote:` alone names a server.
fn is_remote_only(s: &str) -> bool {
    s.ends_with(':')
}

fn set_server(c: &Client, pairs: BTreeMap<String, String>) -> Result<()> {
    let values: BTreeMap<String, serde_json::Value> = pairs
        .into_iter()
        .map(|(k, v)| (k, serde_json::Value::String(v)))
        .collect();
    c.patch("/1.0", &serde_json::json!({ "config": values }))?;
    Ok(())
}

/// What `lxc config show` prints (and `config edit` edits): the instance's writable fields.
#[derive(Serialize)]
struct ConfigView<'a> {
    architecture: &'a str,
    config: &'a Config,
    devices: &'a Devices,
    ephemeral: bool,
    profiles: &'a [String],
    stateful: bool,
    description: &'a str,
}

fn view(inst: &Instance, expanded: bool) -> ConfigView<'_> {
    ConfigView {
        architecture: &inst.architecture,
        config: if expanded { &inst.expanded_config } else { &inst.config },
        devices: if expanded {
            &inst.expanded_devices
        } else {
            &inst.devices
        },
        ephemeral: inst.ephemeral,
        profiles: &inst.profiles,
        stateful: inst.stateful,
        description: &inst.description,
    }
}

pub fn config(c: &Client, cmd: ConfigCmd) -> Result<()> {
    match cmd {
        ConfigCmd::Show { name, expanded } => match name {
            Some(n) if !is_remote_only(&n) => {
                let inst: Instance = c.get(&instance_path(&n)?)?;
                out!("{}", yaml(&view(&inst, expanded))?);
            }
            _ => {
                let server: corral_api::Server = c.get("/1.0")?;
                out!("{}", yaml(&serde_json::json!({ "config": server.config }))?);
            }
        },
        ConfigCmd::Get { name, key } => match key {
            Some(key) if is_remote_only(&name) => {
                let server: corral_api::Server = c.get("/1.0")?;
                outln!("{}", server.config.get(&key).and_then(|v| v.as_str()).unwrap_or(""));
            }
            Some(key) => {
                let inst: Instance = c.get(&instance_path(&name)?)?;
                outln!("{}", inst.config.get(&key).map(String::as_str).unwrap_or(""));
            }
            None => {
                let server: corral_api::Server = c.get("/1.0")?;
                outln!("{}", server.config.get(&name).and_then(|v| v.as_str()).unwrap_or(""));
            }
        },
        ConfigCmd::Set { name, args }
            if is_remote_only(&name)
                || (is_server_key(&name) && args.len() == 1 && !args[0].contains('='))
                || name.contains('=') =>
        {
            let pairs = if is_remote_only(&name) {
                if args.iter().all(|a| a.contains('=')) {
                    parse_pairs(&args)?
                } else if args.len() == 2 {
                    BTreeMap::from([(args[0].clone(), args[1].clone())])
                } else {
                    bail!("Invalid number of arguments: use `corral config set REMOTE: KEY VALUE`");
                }
            } else if name.contains('=') {
                let mut all = vec![name.clone()];
                all.extend(args);
                parse_pairs(&all)?
            } else {
                BTreeMap::from([(name.clone(), args[0].clone())])
            };
            set_server(c, pairs)?;
        }
        ConfigCmd::Unset { name, keys } if keys.is_empty() || is_remote_only(&name) => {
            let keys = if is_remote_only(&name) {
                keys
            } else {
                vec![name.clone()]
            };
            if keys.is_empty() {
                bail!("name the server key to unset: `corral config unset {name} KEY`");
            }
            set_server(c, keys.into_iter().map(|k| (k, String::new())).collect())?;
        }
        ConfigCmd::Set { name, args } => {
            let pairs = if args.iter().all(|a| a.contains('=')) {
                parse_pairs(&args)?
            } else if args.len() == 2 {
                BTreeMap::from([(args[0].clone(), args[1].clone())])
            } else {
                bail!("Invalid number of arguments: use `corral config set NAME KEY VALUE` or KEY=VALUE pairs");
            };
            let resp = c.patch(&instance_path(&name)?, &serde_json::json!({ "config": pairs }))?;
            c.wait(&resp, None)?;
        }
        ConfigCmd::Unset { name, keys } => {
            // As lxc does: read, drop the keys, write back with the ETag read.
            let path = instance_path(&name)?;
            let (inst, etag) = c.get_with_etag::<Instance>(&path)?;
            let mut put = writable(inst);
            for k in &keys {
                if put.config.remove(k).is_none() {
                    bail!("Key {k} is not set on {name}");
                }
            }
            let resp = c.put_if_match(&path, &put, etag.as_deref())?;
            c.wait(&resp, None)?;
        }
        ConfigCmd::Edit { name } => edit(c, &name)?,
        ConfigCmd::Device(cmd) => devices::device(c, cmd)?,
        ConfigCmd::Trust(cmd) => crate::trust::trust(c, cmd)?,
    }
    Ok(())
}

const EDIT_HEADER: &str = "\
### This is a YAML representation of the configuration.
### Any line starting with a '# will be ignored.
###
### A sample configuration looks like:
### name: instance1
### profiles:
### - default
### config:
###   volatile.eth0.hwaddr: 00:16:3e:e9:f8:7f
### devices:
###   homedir:
###     path: /extra
###     source: /home/user
###     type: disk
### ephemeral: false
###
### Note that the name is shown but cannot be changed
";

/// `config edit`: YAML from stdin when it is not a terminal (a plain PUT, as lxc does);
/// otherwise the configuration in the editor, written back with the ETag read.
fn edit(c: &Client, name: &str) -> Result<()> {
    let path = instance_path(name)?;
    if let Some(put) = editor::stdin_yaml::<InstancePut>("an instance configuration")? {
        let resp = c.put(&path, &put)?;
        c.wait(&resp, None)?;
        return Ok(());
    }
    let (inst, etag) = c.get_with_etag::<Instance>(&path)?;
    let text = format!("{EDIT_HEADER}{}", yaml(&view(&inst, false))?);
    editor::edit_yaml(&text, |put: InstancePut| {
        let resp = c.put_if_match(&path, &put, etag.as_deref())?;
        c.wait(&resp, None)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edited_yaml_reads_back_as_the_instance() {
        let inst = Instance {
            name: "c1".into(),
            architecture: "x86_64".into(),
            config: BTreeMap::from([("limits.memory".to_string(), "256MiB".to_string())]),
            devices: BTreeMap::from([(
                "data".to_string(),
                BTreeMap::from([
                    ("type".to_string(), "disk".to_string()),
                    ("source".to_string(), "/srv/data".to_string()),
                    ("path".to_string(), "/mnt".to_string()),
                ]),
            )]),
            profiles: vec!["default".into()],
            description: "web".into(),
            ..Default::default()
        };
        let text = format!("{EDIT_HEADER}{}", yaml(&view(&inst, false)).unwrap());
        let put: InstancePut = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(put, writable(inst));
    }
}
