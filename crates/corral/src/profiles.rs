//! `profile`: lxc's profile verbs (list, show, create, copy, edit, get, set, unset, rename,
//! delete) and the instance side of profiles (add, remove, assign).

use anyhow::{bail, Result};
use clap::Subcommand;
use corral_api::{Config, Devices, Instance, InstancePut, Profile, ProfilePost, ProfilePut, ProfilesPost};
use corral_client::{encode_segment, Client};
use serde::Serialize;
use std::collections::BTreeMap;

use crate::editor;
use crate::instances::{self, instance_path, parse_pairs};
use crate::output::{print_list, yaml, Format, Table};

#[derive(Subcommand)]
#[command(defer = true)]
pub enum ProfileCmd {
    /// List profiles
    #[command(alias = "ls")]
    List {
        #[arg(short = 'f', long = "format", value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Show a profile (YAML)
    Show { name: String },
    /// Create a profile (its config from YAML on stdin, if stdin is not a terminal)
    #[command(after_help = "Examples:\n  corral profile create web\n  corral profile create web < web.yaml")]
    Create {
        name: String,
        /// Profile description
        #[arg(long)]
        description: Option<String>,
    },
    /// Copy a profile
    #[command(alias = "cp")]
    Copy {
        source: String,
        target: String,
        /// Update the target profile if it exists
        #[arg(long)]
        refresh: bool,
    },
    /// Edit a profile as YAML: in $EDITOR, or from stdin if it is not a terminal
    #[command(after_help = "Examples:\n  corral profile edit web\n  corral profile edit web < web.yaml")]
    Edit { name: String },
    /// Print the value of a profile option
    Get { name: String, key: String },
    /// Set profile options: NAME KEY VALUE, or NAME KEY=VALUE...
    #[command(
        after_help = "Examples:\n  corral profile set web limits.memory 256MiB\n  corral profile set web \
                            limits.cpu=2 user.role=web"
    )]
    Set {
        name: String,
        #[arg(required = true, num_args = 1.., value_name = "KEY VALUE | KEY=VALUE")]
        args: Vec<String>,
    },
    /// Remove profile options
    Unset {
        name: String,
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<String>,
    },
    /// Rename a profile (the instances using it follow)
    #[command(alias = "mv")]
    Rename { old: String, new: String },
    /// Delete profiles
    #[command(alias = "rm")]
    Delete {
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
    /// Add a profile to an instance (applied last)
    #[command(after_help = "Example:\n  corral profile add c1 web")]
    Add { instance: String, profile: String },
    /// Remove a profile from an instance
    Remove { instance: String, profile: String },
    /// Set an instance's profiles: a comma-separated list, in order ("" for none)
    #[command(
        alias = "apply",
        after_help = "Examples:\n  corral profile assign c1 default,web\n  corral profile assign c1 \"\""
    )]
    Assign { instance: String, profiles: String },
}

pub fn profile_path(name: &str) -> String {
    format!("/1.0/profiles/{}", encode_segment(name))
}

/// What `lxc profile show` and `edit` print: the profile without its project.
#[derive(Serialize)]
struct ProfileView<'a> {
    config: &'a Config,
    description: &'a str,
    devices: &'a Devices,
    name: &'a str,
    used_by: &'a [String],
}

fn view(p: &Profile) -> ProfileView<'_> {
    ProfileView {
        config: &p.config,
        description: &p.description,
        devices: &p.devices,
        name: &p.name,
        used_by: &p.used_by,
    }
}

fn writable(p: Profile) -> ProfilePut {
    ProfilePut {
        config: p.config,
        description: p.description,
        devices: p.devices,
    }
}

pub fn profile(c: &Client, cmd: ProfileCmd) -> Result<()> {
    match cmd {
        ProfileCmd::List { format } => {
            let mut profiles: Vec<Profile> = c.get("/1.0/profiles?recursion=1")?;
            profiles.sort_by(|a, b| a.name.cmp(&b.name));
            let mut t = Table::new(["NAME", "DESCRIPTION", "USED BY"]);
            for p in &profiles {
                t.row(vec![p.name.clone(), p.description.clone(), p.used_by.len().to_string()]);
            }
            print_list(format, &t, &profiles)
        }
        ProfileCmd::Show { name } => {
            let p: Profile = c.get(&profile_path(&name))?;
            out!("{}", yaml(&view(&p))?);
            Ok(())
        }
        ProfileCmd::Create { name, description } => {
            let put: ProfilePut = editor::stdin_yaml("a profile")?.unwrap_or_default();
            let post = ProfilesPost {
                name: name.clone(),
                description: description.unwrap_or(put.description),
                config: put.config,
                devices: put.devices,
            };
            c.post("/1.0/profiles", &post)?;
            outln!("Profile {name} created");
            Ok(())
        }
        ProfileCmd::Copy {
            source,
            target,
            refresh,
        } => {
            let p: Profile = c.get(&profile_path(&source))?;
            let put = writable(p);
            if refresh {
                match c.get_with_etag::<Profile>(&profile_path(&target)) {
                    Ok((_, etag)) => {
                        c.put_if_match(&profile_path(&target), &put, etag.as_deref())?;
                        return Ok(());
                    }
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e.into()),
                }
            }
            let post = ProfilesPost {
                name: target,
                description: put.description,
                config: put.config,
                devices: put.devices,
            };
            c.post("/1.0/profiles", &post)?;
            Ok(())
        }
        ProfileCmd::Edit { name } => edit(c, &name),
        ProfileCmd::Get { name, key } => {
            let p: Profile = c.get(&profile_path(&name))?;
            outln!("{}", p.config.get(&key).map(String::as_str).unwrap_or(""));
            Ok(())
        }
        ProfileCmd::Set { name, args } => {
            let pairs = if args.iter().all(|a| a.contains('=')) {
                parse_pairs(&args)?
            } else if args.len() == 2 {
                BTreeMap::from([(args[0].clone(), args[1].clone())])
            } else {
                bail!("Invalid number of arguments: use `corral profile set NAME KEY VALUE` or KEY=VALUE pairs");
            };
            // As lxc does: read, change, write back with the ETag read.
            let path = profile_path(&name);
            let (p, etag) = c.get_with_etag::<Profile>(&path)?;
            let mut put = writable(p);
            for (k, v) in pairs {
                if v.is_empty() {
                    put.config.remove(&k);
                } else {
                    put.config.insert(k, v);
                }
            }
            c.put_if_match(&path, &put, etag.as_deref())?;
            Ok(())
        }
        ProfileCmd::Unset { name, keys } => {
            let path = profile_path(&name);
            let (p, etag) = c.get_with_etag::<Profile>(&path)?;
            let mut put = writable(p);
            for k in &keys {
                if put.config.remove(k).is_none() {
                    bail!("Key {k} is not set on profile {name}");
                }
            }
            c.put_if_match(&path, &put, etag.as_deref())?;
            Ok(())
        }
        ProfileCmd::Rename { old, new } => {
            c.post(&profile_path(&old), &ProfilePost { name: new.clone() })?;
            outln!("Profile {old} renamed to {new}");
            Ok(())
        }
        ProfileCmd::Delete { names } => {
            for name in names {
                c.delete(&profile_path(&name))?;
                outln!("Profile {name} deleted");
            }
            Ok(())
        }
        ProfileCmd::Add { instance, profile } => {
            set_instance_profiles(c, &instance, |profiles| {
                if profiles.contains(&profile) {
                    bail!("Profile {profile} is already applied to {instance}");
                }
                profiles.push(profile.clone());
                Ok(())
            })?;
            outln!("Profile {profile} added to {instance}");
            Ok(())
        }
        ProfileCmd::Remove { instance, profile } => {
            set_instance_profiles(c, &instance, |profiles| {
                if !profiles.contains(&profile) {
                    bail!("Profile {profile} isn't currently applied to {instance}");
                }
                profiles.retain(|p| *p != profile);
                Ok(())
            })?;
            outln!("Profile {profile} removed from {instance}");
            Ok(())
        }
        ProfileCmd::Assign { instance, profiles } => {
            let wanted: Vec<String> = profiles
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .collect();
            set_instance_profiles(c, &instance, |profiles| {
                *profiles = wanted.clone();
                Ok(())
            })?;
            if wanted.is_empty() {
                outln!("All profiles removed from {instance}");
            } else {
                outln!("Profiles {} applied to {instance}", wanted.join(","));
            }
            Ok(())
        }
    }
}

/// Changes an instance's profile list: read it with its ETag, `change` the list, PUT it back
/// with If-Match (so a concurrent change is refused rather than overwritten).
fn set_instance_profiles(
    c: &Client,
    instance: &str,
    change: impl FnOnce(&mut Vec<String>) -> Result<()>,
) -> Result<()> {
    let path = instance_path(instance)?;
    let (inst, etag) = c.get_with_etag::<Instance>(&path)?;
    let mut profiles = inst.profiles.clone();
    change(&mut profiles)?;
    let put = InstancePut {
        profiles: Some(profiles),
        ..instances::writable(inst)
    };
    let resp = c.put_if_match(&path, &put, etag.as_deref())?;
    c.wait(&resp, None)?;
    Ok(())
}

const EDIT_HEADER: &str = "\
### This is a YAML representation of the profile.
### Any line starting with a '# will be ignored.
###
### A profile consists of a set of configuration items followed by a set of
### devices.
###
### An example would look like:
### name: onenic
### config:
###   raw.lxc: lxc.aa_profile=unconfined
### devices:
###   eth0:
###     nictype: bridged
###     parent: lxdbr0
###     type: nic
###
### Note that the name is shown but cannot be changed
";

/// `profile edit`: YAML from stdin when it is not a terminal; otherwise the profile in the
/// editor, written back with the ETag read (a concurrent change is refused, not overwritten).
fn edit(c: &Client, name: &str) -> Result<()> {
    let path = profile_path(name);
    if let Some(put) = editor::stdin_yaml::<ProfilePut>("a profile")? {
        c.put(&path, &put)?;
        return Ok(());
    }
    let (p, etag) = c.get_with_etag::<Profile>(&path)?;
    let text = format!("{EDIT_HEADER}{}", yaml(&view(&p))?);
    editor::edit_yaml(&text, |put: ProfilePut| {
        c.put_if_match(&path, &put, etag.as_deref())?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edited_yaml_reads_back_as_a_profile() {
        let p = Profile {
            name: "web".into(),
            description: "web servers".into(),
            config: BTreeMap::from([("limits.memory".to_string(), "256MiB".to_string())]),
            devices: BTreeMap::from([(
                "root".to_string(),
                BTreeMap::from([("type".to_string(), "disk".to_string())]),
            )]),
            used_by: vec!["/1.0/instances/c1".into()],
            project: "default".into(),
        };
        let text = format!("{EDIT_HEADER}{}", yaml(&view(&p)).unwrap());
        let put: ProfilePut = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(put, writable(p));
        assert!(!text.contains("project"), "{text}");
    }
}
