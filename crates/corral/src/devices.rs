//! `corral config device ...`: an instance's own devices (its `devices`), as `lxc config device`
//! has them. Each change reads the instance with its ETag and writes it back with If-Match, so
//! a concurrent change is refused rather than lost.
//!
//! As in lxc, a device that comes from a profile is not the instance's: `set`, `unset`, `get`
//! and `remove` refuse it, and `override` copies it into the instance (with changes) first.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use clap::Subcommand;
use corral_api::{Devices, Instance};
use corral_client::Client;

use crate::instances::{instance_path, parse_pairs, writable};
use crate::output::yaml;

#[derive(Subcommand)]
#[command(defer = true)]
pub enum DeviceCmd {
    /// Add a device to an instance
    #[command(
        after_help = "Examples:\n  corral config device add c1 data disk source=/srv/data path=/mnt/data\n  \
                      corral config device add c1 eth1 none   # masks a profile's eth1"
    )]
    Add {
        name: String,
        device: String,
        /// Device type: disk, nic, unix-char, none...
        #[arg(value_name = "TYPE")]
        kind: String,
        #[arg(value_name = "KEY=VALUE")]
        pairs: Vec<String>,
    },
    /// Remove devices from an instance
    #[command(alias = "rm", after_help = "Example:\n  corral config device remove c1 data")]
    Remove {
        name: String,
        #[arg(required = true, value_name = "DEVICE")]
        devices: Vec<String>,
    },
    /// List an instance's own devices
    #[command(alias = "ls", after_help = "Example:\n  corral config device list c1")]
    List { name: String },
    /// Show an instance's own devices (YAML)
    #[command(after_help = "Example:\n  corral config device show c1")]
    Show { name: String },
    /// Print the value of a device option
    #[command(after_help = "Example:\n  corral config device get c1 data path")]
    Get { name: String, device: String, key: String },
    /// Set device options: KEY=VALUE..., or KEY VALUE
    #[command(
        after_help = "A device that comes from a profile cannot be set on one instance (as in lxc): \
                      copy it into the instance with `corral config device override`, or change the \
                      profile.\n\nExamples:\n  corral config device set c1 data readonly=true\n  \
                      corral config device set c1 data path /mnt/other"
    )]
    Set {
        name: String,
        device: String,
        #[arg(required = true, num_args = 1.., value_name = "KEY=VALUE | KEY VALUE")]
        args: Vec<String>,
    },
    /// Remove a device option
    #[command(after_help = "Example:\n  corral config device unset c1 data readonly")]
    Unset { name: String, device: String, key: String },
    /// Copy a device that comes from a profile into the instance, changing the options given
    #[command(after_help = "Example:\n  corral config device override c1 root size=10GiB")]
    Override {
        name: String,
        device: String,
        #[arg(value_name = "KEY=VALUE")]
        pairs: Vec<String>,
    },
}

const FROM_PROFILE_MODIFY: &str =
    "Device from profile(s) cannot be modified for individual instance. Override device or modify profile instead";
const FROM_PROFILE_REMOVE: &str =
    "Device from profile(s) cannot be removed from individual instance. Override device or modify profile instead";
const FROM_PROFILE_GET: &str = "Device from profile(s) cannot be retrieved for individual instance";

/// The instance's own device `device`, or lxc's error: `from_profile` if a profile gives it.
fn own_device<'a>(
    inst: &'a Instance,
    devices: &'a mut Devices,
    device: &str,
    from_profile: &str,
) -> Result<&'a mut BTreeMap<String, String>> {
    match devices.get_mut(device) {
        Some(d) => Ok(d),
        None if inst.expanded_devices.contains_key(device) => bail!("{from_profile}"),
        None => bail!("Device doesn't exist"),
    }
}

/// Reads the instance with its ETag, lets `change` edit its devices, writes it back with
/// If-Match and waits.
fn change_devices(c: &Client, name: &str, change: impl FnOnce(&Instance, &mut Devices) -> Result<()>) -> Result<()> {
    let path = instance_path(name)?;
    let (inst, etag) = c.get_with_etag::<Instance>(&path)?;
    let mut devices = inst.devices.clone();
    change(&inst, &mut devices)?;
    let mut put = writable(inst);
    put.devices = devices;
    let resp = c.put_if_match(&path, &put, etag.as_deref())?;
    c.wait(&resp, None)?;
    Ok(())
}

pub fn device(c: &Client, cmd: DeviceCmd) -> Result<()> {
    match cmd {
        DeviceCmd::Add {
            name,
            device,
            kind,
            pairs,
        } => {
            let mut options = parse_pairs(&pairs)?;
            options.insert("type".into(), kind);
            change_devices(c, &name, |_, devices| {
                if devices.contains_key(&device) {
                    bail!("The device already exists");
                }
                devices.insert(device.clone(), options);
                Ok(())
            })?;
            outln!("Device {device} added to {name}");
        }
        DeviceCmd::Remove { name, devices: gone } => {
            change_devices(c, &name, |inst, devices| {
                for d in &gone {
                    own_device(inst, devices, d, FROM_PROFILE_REMOVE)?;
                    devices.remove(d);
                }
                Ok(())
            })?;
            for d in &gone {
                outln!("Device {d} removed from {name}");
            }
        }
        DeviceCmd::List { name } => {
            let inst: Instance = c.get(&instance_path(&name)?)?;
            for d in inst.devices.keys() {
                outln!("{d}");
            }
        }
        DeviceCmd::Show { name } => {
            let inst: Instance = c.get(&instance_path(&name)?)?;
            out!("{}", yaml(&inst.devices)?);
        }
        DeviceCmd::Get { name, device, key } => {
            let inst: Instance = c.get(&instance_path(&name)?)?;
            let mut devices = inst.devices.clone();
            let d = own_device(&inst, &mut devices, &device, FROM_PROFILE_GET)?;
            outln!("{}", d.get(&key).map(String::as_str).unwrap_or(""));
        }
        DeviceCmd::Set { name, device, args } => {
            let pairs = if args.iter().all(|a| a.contains('=')) {
                parse_pairs(&args)?
            } else if args.len() == 2 {
                BTreeMap::from([(args[0].clone(), args[1].clone())])
            } else {
                bail!(
                    "Invalid number of arguments: use `corral config device set NAME DEVICE KEY VALUE` or \
                     KEY=VALUE pairs"
                );
            };
            change_devices(c, &name, |inst, devices| {
                let d = own_device(inst, devices, &device, FROM_PROFILE_MODIFY)?;
                d.extend(pairs);
                Ok(())
            })?;
        }
        DeviceCmd::Unset { name, device, key } => {
            change_devices(c, &name, |inst, devices| {
                let d = own_device(inst, devices, &device, FROM_PROFILE_MODIFY)?;
                if key == "type" {
                    bail!("The type of a device cannot be unset: remove the device instead");
                }
                if d.remove(&key).is_none() {
                    bail!("Key {key} is not set on device {device}");
                }
                Ok(())
            })?;
        }
        DeviceCmd::Override { name, device, pairs } => {
            let pairs = parse_pairs(&pairs)?;
            change_devices(c, &name, |inst, devices| {
                if devices.contains_key(&device) {
                    bail!("The device already exists");
                }
                let Some(inherited) = inst.expanded_devices.get(&device) else {
                    bail!("The profile device doesn't exist");
                };
                let mut copy = inherited.clone();
                copy.extend(pairs);
                devices.insert(device.clone(), copy);
                Ok(())
            })?;
            outln!("Device {device} overridden for {name}");
        }
    }
    Ok(())
}
