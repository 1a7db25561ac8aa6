//! `storage`: lxc 5.0's storage pool verbs (list, show, create, delete, edit, get, set, unset,
//! info) and `storage volume ...` for custom volumes (list, create, delete, show, edit, get, set,
//! unset, info, rename, copy, snapshot, restore, export, import), attached to instances and profiles as disk
//! devices (attach, detach, attach-profile, detach-profile).
//!
//! Every change reads the object with its ETag, changes it and writes it back with If-Match, so
//! that a concurrent change is refused rather than overwritten (as lxc does).

use std::cmp::Ordering;
use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Context, Result};
use clap::Subcommand;
use corral_api::{
    Config, Devices, Instance, StoragePool, StoragePoolPut, StoragePoolState, StoragePoolsPost, StorageVolume,
    StorageVolumePost, StorageVolumePut, StorageVolumeSnapshot, StorageVolumeSnapshotsPost, StorageVolumeSource,
    StorageVolumesPost, Timestamp,
};
use corral_client::{encode_segment, Client, ClientError};
use serde::{Deserialize, Serialize};

use crate::editor;
use crate::instances::{instance_path, writable};
use crate::networks::{
    apply_pairs, change_profile_devices, config_pairs, create_pairs, natural_cmp, not_found_hint, remove_keys,
};
use crate::output::{print_list, size, yaml, Format, Table};
use crate::remotes::{check_remote_arg, local_name};

#[derive(Subcommand)]
#[command(defer = true)]
pub enum StorageCmd {
    /// List available storage pools
    #[command(
        alias = "ls",
        after_help = "Examples:\n  corral storage list\n  corral storage list -f csv"
    )]
    List {
        /// The remote ("local:")
        #[arg(value_name = "REMOTE:")]
        remote: Option<String>,
        #[arg(short = 'f', long = "format", value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Show storage pool configurations and resources (YAML)
    #[command(after_help = "Examples:\n  corral storage show default\n  corral storage show default --resources")]
    Show {
        pool: String,
        /// Show the resources available to the storage pool
        #[arg(long)]
        resources: bool,
    },
    /// Create storage pools (their config from YAML on stdin, if stdin is not a terminal)
    #[command(
        after_help = "Examples:\n  corral storage create fast btrfs size=10GiB\n  corral storage create files dir\n  \
                      corral storage show fast | corral storage create fast2 btrfs"
    )]
    Create {
        pool: String,
        /// The driver: dir or btrfs
        driver: String,
        /// Pool options
        #[arg(value_name = "KEY=VALUE")]
        pairs: Vec<String>,
        /// Pool description
        #[arg(long)]
        description: Option<String>,
    },
    /// Delete storage pools
    #[command(alias = "rm", after_help = "Example:\n  corral storage delete fast")]
    Delete { pool: String },
    /// Edit storage pool configurations as YAML: in $EDITOR, or from stdin if it is not a terminal
    #[command(after_help = "Examples:\n  corral storage edit fast\n  corral storage edit fast < pool.yaml")]
    Edit { pool: String },
    /// Get values for storage pool configuration keys
    #[command(after_help = "Example:\n  corral storage get fast size")]
    Get { pool: String, key: String },
    /// Set storage pool configuration keys: POOL KEY=VALUE..., or POOL KEY VALUE
    #[command(
        after_help = "A value of - reads the value from stdin.\n\nExamples:\n  corral storage set fast user.tier=ssd\n  \
                      corral storage set fast user.tier ssd"
    )]
    Set {
        pool: String,
        #[arg(required = true, num_args = 1.., value_name = "KEY=VALUE | KEY VALUE")]
        args: Vec<String>,
    },
    /// Unset storage pool configuration keys
    #[command(after_help = "Example:\n  corral storage unset fast user.tier")]
    Unset {
        pool: String,
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<String>,
    },
    /// Show useful information about storage pools: their space, and what uses them
    #[command(after_help = "Examples:\n  corral storage info default\n  corral storage info default --bytes")]
    Info {
        pool: String,
        /// Show the used and total space in bytes
        #[arg(long)]
        bytes: bool,
    },
    /// Manage storage volumes
    #[command(subcommand)]
    Volume(VolumeCmd),
}

#[derive(Subcommand)]
#[command(defer = true)]
pub enum VolumeCmd {
    /// List storage volumes
    #[command(
        alias = "ls",
        after_help = "Columns (-c, default tndcu):\n  t type (custom, image, container), n name, d description,\n  \
                      c content type, u used by (how many use it)\n\nExamples:\n  corral storage volume list default\n  \
                      corral storage volume list fast -c nu -f csv"
    )]
    List {
        pool: String,
        #[arg(short = 'c', long = "columns", default_value = DEFAULT_VOLUME_COLUMNS)]
        columns: String,
        #[arg(short = 'f', long = "format", value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Create new custom storage volumes
    #[command(
        after_help = "Examples:\n  corral storage volume create fast data\n  corral storage volume create fast data \
                      size=64MiB"
    )]
    Create {
        pool: String,
        volume: String,
        /// Volume options
        #[arg(value_name = "KEY=VALUE")]
        pairs: Vec<String>,
        /// Content type
        #[arg(long = "type", value_name = "TYPE", default_value = "filesystem", value_parser = ["filesystem", "block"])]
        content_type: String,
        /// Volume description
        #[arg(long)]
        description: Option<String>,
    },
    /// Delete storage volumes (or a snapshot: VOLUME/SNAPSHOT)
    #[command(
        alias = "rm",
        after_help = "Examples:\n  corral storage volume delete fast data\n  corral storage volume delete fast data/snap0"
    )]
    Delete { pool: String, volume: String },
    /// Show storage volume (or snapshot) configurations (YAML)
    #[command(
        after_help = "Examples:\n  corral storage volume show fast data\n  corral storage volume show fast data/snap0"
    )]
    Show { pool: String, volume: String },
    /// Edit storage volume configurations as YAML: in $EDITOR, or from stdin if it is not a terminal
    #[command(
        after_help = "Examples:\n  corral storage volume edit fast data\n  corral storage volume edit fast data < \
                      volume.yaml"
    )]
    Edit { pool: String, volume: String },
    /// Get values for storage volume (or snapshot) configuration keys
    #[command(after_help = "Example:\n  corral storage volume get fast data size")]
    Get { pool: String, volume: String, key: String },
    /// Set storage volume configuration keys: KEY=VALUE..., or KEY VALUE
    #[command(
        after_help = "A value of - reads the value from stdin.\n\nExamples:\n  corral storage volume set fast data \
                      size=128MiB\n  corral storage volume set fast data size 128MiB"
    )]
    Set {
        pool: String,
        volume: String,
        #[arg(required = true, num_args = 1.., value_name = "KEY=VALUE | KEY VALUE")]
        args: Vec<String>,
    },
    /// Unset storage volume configuration keys
    #[command(after_help = "Example:\n  corral storage volume unset fast data size")]
    Unset {
        pool: String,
        volume: String,
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<String>,
    },
    /// Show storage volume state information and snapshots
    #[command(after_help = "Example:\n  corral storage volume info fast data")]
    Info { pool: String, volume: String },
    /// Rename storage volumes (or snapshots: VOLUME/OLD VOLUME/NEW)
    #[command(after_help = "Example:\n  corral storage volume rename fast data data-old")]
    Rename { pool: String, old: String, new: String },
    /// Copy storage volumes (with their snapshots unless --volume-only)
    #[command(
        alias = "cp",
        after_help = "Volumes are given as POOL/VOLUME; the source may be a snapshot, POOL/VOLUME/SNAPSHOT.\n\n\
                      Examples:\n  corral storage volume copy fast/data fast/data2\n  corral storage volume copy \
                      fast/data fast/data3 --volume-only"
    )]
    Copy {
        #[arg(value_name = "POOL/VOLUME[/SNAPSHOT]")]
        source: String,
        #[arg(value_name = "POOL/VOLUME")]
        target: String,
        /// Copy the volume without its snapshots
        #[arg(long)]
        volume_only: bool,
    },
    /// Snapshot storage volumes
    #[command(
        after_help = "Without a name, the snapshot is the next free snapN.\n\nExamples:\n  corral storage volume \
                      snapshot fast data\n  corral storage volume snapshot fast data before-upgrade --reuse"
    )]
    Snapshot {
        pool: String,
        volume: String,
        snapshot: Option<String>,
        /// If the snapshot name already exists, delete and create a new one
        #[arg(long)]
        reuse: bool,
    },
    /// Restore storage volume snapshots (any, not only the latest)
    #[command(after_help = "Example:\n  corral storage volume restore fast data snap0")]
    Restore {
        pool: String,
        volume: String,
        snapshot: String,
    },
    /// Export custom storage volumes as backup tarballs (with their snapshots unless --volume-only)
    #[command(
        after_help = "Examples:\n  corral storage volume export fast data\n  corral storage volume export fast data \
                      data.tar.zst --compression zstd"
    )]
    Export {
        pool: String,
        volume: String,
        /// Where to write the tarball (default: VOLUME.tar.gz, or .tar.zst, .tar.xz, .tar)
        target: Option<std::path::PathBuf>,
        /// Leave the volume's snapshots out
        #[arg(long)]
        volume_only: bool,
        /// Use the pool's native format (btrfs send streams; imports only into a btrfs pool)
        #[arg(long)]
        optimized_storage: bool,
        /// Compression: none, gzip (default), xz or zstd
        #[arg(long, default_value = "gzip")]
        compression: String,
    },
    /// Import custom storage volume backups (with their snapshots)
    #[command(
        after_help = "Examples:\n  corral storage volume import fast data.tar.gz\n  corral storage volume import \
                            fast data.tar.gz data2"
    )]
    Import {
        pool: String,
        file: std::path::PathBuf,
        /// The new volume's name (default: the one in the backup)
        name: Option<String>,
    },
    /// Attach new storage volumes to instances
    #[command(
        override_usage = "corral storage volume attach <POOL> <VOLUME> <INSTANCE> [DEVICE] <PATH>",
        after_help = "The device is named after the volume unless DEVICE is given; PATH is where the volume is \
                      mounted in the instance.\n\nExamples:\n  corral storage volume attach fast data c1 /mnt/data\n  \
                      corral storage volume attach fast data c1 data-disk /srv/data"
    )]
    Attach {
        pool: String,
        volume: String,
        instance: String,
        #[arg(value_name = "DEVICE | PATH")]
        device_or_path: String,
        #[arg(value_name = "PATH")]
        path: Option<String>,
    },
    /// Attach new storage volumes to profiles
    #[command(
        override_usage = "corral storage volume attach-profile <POOL> <VOLUME> <PROFILE> [DEVICE] <PATH>",
        after_help = "Example:\n  corral storage volume attach-profile fast data default /mnt/data"
    )]
    AttachProfile {
        pool: String,
        volume: String,
        profile: String,
        #[arg(value_name = "DEVICE | PATH")]
        device_or_path: String,
        #[arg(value_name = "PATH")]
        path: Option<String>,
    },
    /// Detach storage volumes from instances
    #[command(
        after_help = "Examples:\n  corral storage volume detach fast data c1\n  corral storage volume detach fast \
                      data c1 data-disk"
    )]
    Detach {
        pool: String,
        volume: String,
        instance: String,
        device: Option<String>,
    },
    /// Detach storage volumes from profiles
    #[command(after_help = "Example:\n  corral storage volume detach-profile fast data default")]
    DetachProfile {
        pool: String,
        volume: String,
        profile: String,
        device: Option<String>,
    },
}

const POOLS_HINT: &str = "`corral storage list` lists the storage pools";

/// `/1.0/storage-pools/<name>`, for `pool` with or without `local:`.
fn pool_path(pool: &str) -> Result<String> {
    let name = local_name(pool)?;
    if name.is_empty() {
        bail!("Missing pool name: give the storage pool's name ({POOLS_HINT})");
    }
    Ok(format!("/1.0/storage-pools/{}", encode_segment(name)))
}

/// The error said plainly when the daemon has no such method on the object (405).
fn unsupported_hint(e: ClientError, what: &str, instead: &str) -> anyhow::Error {
    if e.status() == Some(405) {
        anyhow!("{what} is not supported by this corrald ({e}): {instead}")
    } else {
        e.into()
    }
}

/// A "not found" about a volume of `pool`, with where to look: the pools if the pool is
/// missing, else the pool's volumes.
fn volume_not_found(c: &Client, pool: &str, e: ClientError) -> anyhow::Error {
    if !e.is_not_found() {
        return e.into();
    }
    let pool_missing = match pool_path(pool) {
        Ok(path) => c.get::<StoragePool>(&path).is_err_and(|e| e.is_not_found()),
        Err(_) => false,
    };
    if pool_missing {
        anyhow!("{e} ({POOLS_HINT})")
    } else {
        anyhow!("{e} (`corral storage volume list {pool}` lists its volumes)")
    }
}

fn snapshots_hint(pool: &str, volume: &str) -> String {
    format!("`corral storage volume info {pool} {volume}` lists its snapshots")
}

/// A pool with its ETag; a missing one says where to find those that exist.
fn get_pool(c: &Client, pool: &str) -> Result<(StoragePool, Option<String>)> {
    c.get_with_etag::<StoragePool>(&pool_path(pool)?)
        .map_err(|e| not_found_hint(e, POOLS_HINT))
}

/// The volume types lxc knows in a `TYPE/VOLUME` argument.
const VOLUME_TYPES: [&str; 4] = ["custom", "image", "container", "virtual-machine"];

/// A volume as lxc names it on the command line: `data`, `custom/data`, `container/c1`, or a
/// snapshot `data/snap0` (`custom/data/snap0`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct VolRef {
    kind: String,
    name: String,
    snapshot: Option<String>,
}

fn parse_volume(arg: &str) -> Result<VolRef> {
    let (kind, rest) = match arg.split_once('/') {
        Some((t, rest)) if VOLUME_TYPES.contains(&t) => (t, rest),
        _ => ("custom", arg),
    };
    let mut parts = rest.split('/');
    let name = parts.next().unwrap_or_default();
    let snapshot = parts.next();
    if parts.next().is_some() {
        bail!("Invalid snapshot name in {arg:?}: give VOLUME or VOLUME/SNAPSHOT (e.g. data/snap0)");
    }
    if name.is_empty() {
        bail!("Missing volume name in {arg:?}: give VOLUME, TYPE/VOLUME or VOLUME/SNAPSHOT (e.g. data, custom/data, data/snap0)");
    }
    if snapshot == Some("") {
        bail!("Missing snapshot name in {arg:?}: give VOLUME/SNAPSHOT (e.g. data/snap0)");
    }
    Ok(VolRef {
        kind: kind.to_string(),
        name: name.to_string(),
        snapshot: snapshot.map(str::to_string),
    })
}

impl VolRef {
    /// The volume's path under the pool's (`/1.0/storage-pools/<pool>`), without the snapshot.
    fn volume_path(&self, pool_path: &str) -> String {
        format!(
            "{pool_path}/volumes/{}/{}",
            encode_segment(&self.kind),
            encode_segment(&self.name)
        )
    }

    /// The volume's path, or its snapshot's.
    fn path(&self, pool_path: &str) -> String {
        match &self.snapshot {
            None => self.volume_path(pool_path),
            Some(s) => format!("{}/snapshots/{}", self.volume_path(pool_path), encode_segment(s)),
        }
    }

    /// Refuses a snapshot where only a volume will do.
    fn no_snapshot(&self, why: &str) -> Result<()> {
        if let Some(s) = &self.snapshot {
            bail!(
                "{why}: {}/{s} is a snapshot; give the volume ({})",
                self.name,
                self.name
            );
        }
        Ok(())
    }

    /// Refuses a volume that is not custom where only custom ones will do.
    fn custom_only(&self, what: &str) -> Result<()> {
        if self.kind != "custom" {
            bail!(
                "Only \"custom\" volumes can be {what}: {}/{} is a {} volume",
                self.kind,
                self.name,
                self.kind
            );
        }
        Ok(())
    }
}

/// A volume of `pool` with its ETag; a missing one says where to look.
fn get_volume(c: &Client, pool: &str, vol: &VolRef) -> Result<(StorageVolume, Option<String>)> {
    c.get_with_etag::<StorageVolume>(&vol.volume_path(&pool_path(pool)?))
        .map_err(|e| volume_not_found(c, pool, e))
}

fn get_snapshot(c: &Client, pool: &str, vol: &VolRef) -> Result<(StorageVolumeSnapshot, Option<String>)> {
    c.get_with_etag::<StorageVolumeSnapshot>(&vol.path(&pool_path(pool)?))
        .map_err(|e| match e.is_not_found() {
            true => anyhow!("{e} ({})", snapshots_hint(pool, &vol.name)),
            false => e.into(),
        })
}

/// What `lxc storage volume show` prints: the volume's fields in lxc's order.
#[derive(Serialize)]
struct VolumeView<'a> {
    config: &'a Config,
    description: &'a str,
    name: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    used_by: &'a [String],
    location: &'a str,
    content_type: &'a str,
    project: &'a str,
    created_at: Timestamp,
}

fn volume_view(v: &StorageVolume) -> VolumeView<'_> {
    VolumeView {
        config: &v.config,
        description: &v.description,
        name: &v.name,
        kind: &v.kind,
        used_by: &v.used_by,
        location: &v.location,
        content_type: &v.content_type,
        project: &v.project,
        created_at: v.created_at.unwrap_or_else(Timestamp::zero),
    }
}

/// What `lxc storage volume show POOL VOLUME/SNAPSHOT` prints, in lxc's order.
#[derive(Serialize)]
struct SnapshotView<'a> {
    description: &'a str,
    expires_at: Option<&'a Timestamp>,
    name: &'a str,
    config: &'a Config,
    content_type: &'a str,
    created_at: Timestamp,
}

fn snapshot_view(s: &StorageVolumeSnapshot) -> SnapshotView<'_> {
    SnapshotView {
        description: &s.description,
        expires_at: s.expires_at.as_ref(),
        name: &s.name,
        config: &s.config,
        content_type: &s.content_type,
        created_at: s.created_at.unwrap_or_else(Timestamp::zero),
    }
}

/// A snapshot's writable fields (LXD's `StorageVolumeSnapshotPut`).
#[derive(Serialize, Deserialize, Default)]
#[serde(default)]
struct SnapshotPut {
    description: String,
    expires_at: Option<Timestamp>,
}

/// The body of a snapshot rename (LXD's `StorageVolumeSnapshotPost`).
#[derive(Serialize)]
struct SnapshotPost<'a> {
    name: &'a str,
}

/// A volume's state (`GET .../state`), when the server has it.
#[derive(Deserialize, Default)]
#[serde(default)]
struct VolumeState {
    usage: Option<VolumeUsage>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct VolumeUsage {
    used: u64,
    total: i64,
}

pub fn storage(c: &Client, cmd: StorageCmd) -> Result<()> {
    match cmd {
        StorageCmd::List { remote, format } => {
            if let Some(r) = &remote {
                check_remote_arg(r)?;
            }
            let pools: Vec<StoragePool> = c.get("/1.0/storage-pools?recursion=1")?;
            print_list(format, &pool_table(&pools), &pools)
        }
        StorageCmd::Show { pool, resources } => {
            if resources {
                let res: StoragePoolState = c
                    .get(&format!("{}/resources", pool_path(&pool)?))
                    .map_err(|e| not_found_hint(e, POOLS_HINT))?;
                out!("{}", yaml(&res)?);
                return Ok(());
            }
            let (mut p, _) = get_pool(c, &pool)?;
            p.used_by.sort();
            out!("{}", yaml(&p)?);
            Ok(())
        }
        StorageCmd::Create {
            pool,
            driver,
            pairs,
            description,
        } => {
            let config = create_pairs(&pairs, "size=10GiB")?;
            pool_path(&pool)?; // a name, and on this remote
            let name = local_name(&pool)?.to_string();
            let from_stdin: StoragePoolsPost = editor::stdin_yaml("a storage pool")?.unwrap_or_default();
            let post = pool_create_body(name.clone(), driver, from_stdin, description, config);
            let resp = c.post("/1.0/storage-pools", &post)?;
            c.wait(&resp, None)?;
            outln!("Storage pool {name} created");
            Ok(())
        }
        StorageCmd::Delete { pool } => {
            let resp = c
                .delete(&pool_path(&pool)?)
                .map_err(|e| not_found_hint(e, POOLS_HINT))?;
            c.wait(&resp, None)?;
            outln!("Storage pool {} deleted", local_name(&pool)?);
            Ok(())
        }
        StorageCmd::Edit { pool } => edit_pool(c, &pool),
        StorageCmd::Get { pool, key } => {
            let (p, _) = get_pool(c, &pool)?;
            if let Some(v) = p.config.get(&key) {
                outln!("{v}");
            }
            Ok(())
        }
        StorageCmd::Set { pool, args } => {
            let pairs = config_pairs(&args, "corral storage set fast user.tier ssd")?;
            update_pool(c, &pool, |put| {
                apply_pairs(&mut put.config, pairs);
                Ok(())
            })
        }
        StorageCmd::Unset { pool, keys } => {
            let what = format!("storage pool {}", local_name(&pool)?);
            update_pool(c, &pool, |put| remove_keys(&mut put.config, &keys, &what))
        }
        StorageCmd::Info { pool, bytes } => {
            let (p, _) = get_pool(c, &pool)?;
            let res: StoragePoolState = c
                .get(&format!("{}/resources", pool_path(&pool)?))
                .with_context(|| format!("cannot read the space used in storage pool {}", p.name))?;
            out!("{}", pool_info(&p, &res, bytes)?);
            Ok(())
        }
        StorageCmd::Volume(cmd) => volume(c, cmd),
    }
}

/// The body of `storage create`: the YAML read from stdin (if any) under the command line's
/// name, driver, description and options.
fn pool_create_body(
    name: String,
    driver: String,
    from_stdin: StoragePoolsPost,
    description: Option<String>,
    pairs: BTreeMap<String, String>,
) -> StoragePoolsPost {
    let mut config = from_stdin.config;
    config.extend(pairs);
    StoragePoolsPost {
        name,
        driver,
        description: description.unwrap_or(from_stdin.description),
        config,
    }
}

/// Reads the pool with its ETag, lets `change` edit its writable fields and writes them back
/// with If-Match.
fn update_pool(c: &Client, pool: &str, change: impl FnOnce(&mut StoragePoolPut) -> Result<()>) -> Result<()> {
    let (p, etag) = get_pool(c, pool)?;
    let mut put = StoragePoolPut {
        config: p.config,
        description: p.description,
    };
    change(&mut put)?;
    let resp = c.put_if_match(&pool_path(pool)?, &put, etag.as_deref())?;
    c.wait(&resp, None)?;
    Ok(())
}

const POOL_EDIT_HEADER: &str = "\
### This is a YAML representation of a storage pool.
### Any line starting with a '#' will be ignored.
###
### A storage pool consists of a set of configuration items.
###
### An example would look like:
### name: default
### driver: btrfs
### used_by: []
### config:
###   size: 30GiB
###   source: /var/lib/corral/disks/default.img
###
### Note that only the description and configuration can be changed.

";

/// `storage edit`: YAML from stdin when it is not a terminal; otherwise the pool in the editor,
/// written back with the ETag read.
fn edit_pool(c: &Client, pool: &str) -> Result<()> {
    let path = pool_path(pool)?;
    if let Some(put) = editor::stdin_yaml::<StoragePoolPut>("a storage pool")? {
        let resp = c.put(&path, &put).map_err(|e| not_found_hint(e, POOLS_HINT))?;
        c.wait(&resp, None)?;
        return Ok(());
    }
    let (p, etag) = get_pool(c, pool)?;
    let text = format!("{POOL_EDIT_HEADER}{}", yaml(&p)?);
    editor::edit_yaml(&text, |put: StoragePoolPut| {
        let resp = c.put_if_match(&path, &put, etag.as_deref())?;
        c.wait(&resp, None)?;
        Ok(())
    })
}

/// lxc's pool list (not clustered): NAME, DRIVER, SOURCE, DESCRIPTION, USED BY, STATE, sorted
/// naturally.
fn pool_table(pools: &[StoragePool]) -> Table {
    let mut rows: Vec<Vec<String>> = pools
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.driver.clone(),
                p.config.get("source").cloned().unwrap_or_default(),
                p.description.clone(),
                p.used_by.len().to_string(),
                p.status.to_uppercase(),
            ]
        })
        .collect();
    rows.sort_by(|a, b| by_name(a, b));
    let mut t = Table::new(["NAME", "DRIVER", "SOURCE", "DESCRIPTION", "USED BY", "STATE"]);
    rows.into_iter().for_each(|r| t.row(r));
    t
}

/// `lxc storage info`'s text: the pool and its space under `info`, what uses it by kind under
/// `used by` (volumes by their name), as lxc 5.0 prints them; `bytes` gives the sizes in bytes.
fn pool_info(pool: &StoragePool, res: &StoragePoolState, bytes: bool) -> Result<String> {
    let amount = |n: u64| {
        if bytes {
            n.to_string()
        } else {
            size(i64::try_from(n).unwrap_or(i64::MAX))
        }
    };
    let info = BTreeMap::from([
        ("description", pool.description.clone()),
        ("driver", pool.driver.clone()),
        ("name", pool.name.clone()),
        ("space used", amount(res.space.used)),
        ("total space", amount(res.space.total)),
    ]);
    let mut used_by: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (kind, name) in pool.used_by.iter().filter_map(|url| used_by_entry(url)) {
        used_by.entry(kind).or_default().push(name);
    }
    Ok(format!(
        "{}{}",
        yaml(&BTreeMap::from([("info", info)]))?,
        yaml(&BTreeMap::from([("used by", used_by)]))?
    ))
}

/// What a `used_by` URL names, for `storage info`: (`instances`, `c1`), (`volumes`, `data`);
/// a project or target in its query is added, as lxc does. None for a snapshot: its instance or
/// volume is there too.
fn used_by_entry(url: &str) -> Option<(String, String)> {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let fields: Vec<&str> = path.trim_start_matches("/1.0/").split('/').collect();
    let (kind, name) = match fields.as_slice() {
        [.., "snapshots", _] => return None,
        ["storage-pools", _, "volumes", _, name, ..] => ("volumes", *name),
        [kind, name, ..] if !kind.is_empty() => (*kind, *name),
        _ => return Some(("unrecognized".into(), url.to_string())),
    };
    let mut name = name.to_string();
    let mut attrs = Vec::new();
    for (key, label) in [("project", "project"), ("target", "target")] {
        let value = query
            .split('&')
            .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')));
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            attrs.push(format!("{label} {v:?}"));
        }
    }
    if !attrs.is_empty() {
        name = format!("{name} ({})", attrs.join(", "));
    }
    Some((kind.to_string(), name))
}

fn volume(c: &Client, cmd: VolumeCmd) -> Result<()> {
    match cmd {
        VolumeCmd::List { pool, columns, format } => {
            let cols = parse_columns(&columns)?;
            let volumes: Vec<StorageVolume> = c
                .get(&format!("{}/volumes?recursion=1", pool_path(&pool)?))
                .map_err(|e| not_found_hint(e, POOLS_HINT))?;
            let views: Vec<VolumeView<'_>> = volumes.iter().map(volume_view).collect();
            print_list(format, &volume_table(&volumes, &cols), &views)
        }
        VolumeCmd::Create {
            pool,
            volume,
            pairs,
            content_type,
            description,
        } => {
            let config = create_pairs(&pairs, "size=10GiB")?;
            let vol = parse_volume(&volume)?;
            vol.custom_only("created")?;
            if vol.snapshot.is_some() {
                bail!(
                    "Invalid volume name {volume:?}: a '/' separates a volume from its snapshot; take snapshots with \
                     `corral storage volume snapshot {pool} VOLUME`"
                );
            }
            let post = StorageVolumesPost {
                name: vol.name.clone(),
                kind: vol.kind.clone(),
                description: description.unwrap_or_default(),
                config,
                content_type,
                ..Default::default()
            };
            let resp = c
                .post(&format!("{}/volumes/{}", pool_path(&pool)?, vol.kind), &post)
                .map_err(|e| not_found_hint(e, POOLS_HINT))?;
            c.wait(&resp, None)?;
            outln!("Storage volume {volume} created");
            Ok(())
        }
        VolumeCmd::Delete { pool, volume } => {
            let vol = parse_volume(&volume)?;
            if vol.snapshot.is_some() {
                // Its deletion is an operation, whose failure has no status: look first.
                get_snapshot(c, &pool, &vol)?;
            }
            let resp = c
                .delete(&vol.path(&pool_path(&pool)?))
                .map_err(|e| volume_not_found(c, &pool, e))?;
            c.wait(&resp, None)?;
            outln!("Storage volume {volume} deleted");
            Ok(())
        }
        VolumeCmd::Show { pool, volume } => {
            let vol = parse_volume(&volume)?;
            if vol.snapshot.is_some() {
                let (s, _) = get_snapshot(c, &pool, &vol)?;
                out!("{}", yaml(&snapshot_view(&s))?);
            } else {
                let (mut v, _) = get_volume(c, &pool, &vol)?;
                v.used_by.sort();
                out!("{}", yaml(&volume_view(&v))?);
            }
            Ok(())
        }
        VolumeCmd::Edit { pool, volume } => edit_volume(c, &pool, &volume),
        VolumeCmd::Get { pool, volume, key } => {
            let vol = parse_volume(&volume)?;
            let config = if vol.snapshot.is_some() {
                get_snapshot(c, &pool, &vol)?.0.config
            } else {
                get_volume(c, &pool, &vol)?.0.config
            };
            if let Some(v) = config.get(&key) {
                outln!("{v}");
            }
            Ok(())
        }
        VolumeCmd::Set { pool, volume, args } => {
            let pairs = config_pairs(&args, "corral storage volume set fast data size 128MiB")?;
            update_volume(c, &pool, &volume, |put| {
                apply_pairs(&mut put.config, pairs);
                Ok(())
            })
        }
        VolumeCmd::Unset { pool, volume, keys } => {
            let what = format!("storage volume {}/{volume}", local_name(&pool)?);
            update_volume(c, &pool, &volume, |put| remove_keys(&mut put.config, &keys, &what))
        }
        VolumeCmd::Info { pool, volume } => {
            let vol = parse_volume(&volume)?;
            vol.no_snapshot("Only instance or custom volumes have information to show")?;
            if vol.kind == "image" {
                bail!("Only instance or custom volumes are supported: {volume} is an image volume");
            }
            let (v, _) = get_volume(c, &pool, &vol)?;
            let path = vol.volume_path(&pool_path(&pool)?);
            let state = match c.get::<VolumeState>(&format!("{path}/state")) {
                Ok(s) => s,
                // Not every server reports a volume's usage; lxc 5.0 needs it, corral does without.
                Err(e) if e.is_not_found() => VolumeState::default(),
                Err(e) => return Err(e.into()),
            };
            let snapshots: Vec<StorageVolumeSnapshot> = c.get(&format!("{path}/snapshots?recursion=1"))?;
            out!("{}", volume_info(&v, &state, &snapshots));
            Ok(())
        }
        VolumeCmd::Rename { pool, old, new } => rename_volume(c, &pool, &old, &new),
        VolumeCmd::Export {
            pool,
            volume,
            target,
            volume_only,
            optimized_storage,
            compression,
        } => crate::backups::export_volume(
            c,
            &pool_path(&pool)?,
            &volume,
            target,
            volume_only,
            optimized_storage,
            &compression,
        ),
        VolumeCmd::Import { pool, file, name } => {
            crate::backups::import_volume(c, &pool_path(&pool)?, &file, name.as_deref())
        }
        VolumeCmd::Copy {
            source,
            target,
            volume_only,
        } => copy_volume(c, &source, &target, volume_only),
        VolumeCmd::Snapshot {
            pool,
            volume,
            snapshot,
            reuse,
        } => {
            let vol = parse_volume(&volume)?;
            vol.custom_only("snapshotted")?;
            vol.no_snapshot("A snapshot can't be snapshotted")?;
            let (v, _) = get_volume(c, &pool, &vol)?;
            let path = vol.volume_path(&pool_path(&pool)?);
            if let Some(name) = &snapshot {
                let snap_path = format!("{path}/snapshots/{}", encode_segment(name));
                let exists = match c.get::<StorageVolumeSnapshot>(&snap_path) {
                    Ok(_) => true,
                    Err(e) if e.is_not_found() => false,
                    Err(e) => return Err(e.into()),
                };
                if exists && !reuse {
                    bail!(
                        "Snapshot {}/{name} already exists: choose another name, or replace it with --reuse",
                        v.name
                    );
                }
                if exists {
                    let resp = c.delete(&snap_path)?;
                    c.wait(&resp, None)?;
                }
            }
            let body = StorageVolumeSnapshotsPost {
                name: snapshot.unwrap_or_default(),
            };
            let resp = c.post(&format!("{path}/snapshots"), &body)?;
            c.wait(&resp, None)
                .with_context(|| format!("cannot snapshot storage volume {} (pool {pool})", v.name))?;
            Ok(())
        }
        VolumeCmd::Restore { pool, volume, snapshot } => {
            let vol = parse_volume(&volume)?;
            vol.custom_only("restored")?;
            vol.no_snapshot("Give the volume and the snapshot separately")?;
            let (v, etag) = get_volume(c, &pool, &vol)?;
            let put = StorageVolumePut {
                config: v.config,
                description: v.description,
                restore: snapshot.clone(),
            };
            let resp = c
                .put_if_match(&vol.volume_path(&pool_path(&pool)?), &put, etag.as_deref())
                .map_err(|e| not_found_hint(e, &snapshots_hint(&pool, &vol.name)))?;
            c.wait(&resp, None)?;
            Ok(())
        }
        VolumeCmd::Attach {
            pool,
            volume,
            instance,
            device_or_path,
            path,
        } => {
            let (device, path) = device_and_path(&volume, device_or_path, path);
            let disk = disk_device(c, &pool, &volume, &path)?;
            change_instance_devices(c, &instance, |_, devices| {
                add_device(devices, &device, disk, &format!("instance {instance}"))
            })
        }
        VolumeCmd::AttachProfile {
            pool,
            volume,
            profile,
            device_or_path,
            path,
        } => {
            let (device, path) = device_and_path(&volume, device_or_path, path);
            let disk = disk_device(c, &pool, &volume, &path)?;
            change_profile_devices(c, &profile, |devices| {
                add_device(devices, &device, disk, &format!("profile {profile}"))
            })
        }
        VolumeCmd::Detach {
            pool,
            volume,
            instance,
            device,
        } => {
            let pool = local_name(&pool)?.to_string();
            change_instance_devices(c, &instance, |inst, devices| {
                let found = find_disk(
                    devices,
                    Some(&inst.expanded_devices),
                    &pool,
                    &volume,
                    device.as_deref(),
                    &format!("instance {instance}"),
                )?;
                devices.remove(&found);
                Ok(())
            })
        }
        VolumeCmd::DetachProfile {
            pool,
            volume,
            profile,
            device,
        } => {
            let pool = local_name(&pool)?.to_string();
            change_profile_devices(c, &profile, |devices| {
                let found = find_disk(
                    devices,
                    None,
                    &pool,
                    &volume,
                    device.as_deref(),
                    &format!("profile {profile}"),
                )?;
                devices.remove(&found);
                Ok(())
            })
        }
    }
}

/// Reads the volume with its ETag, lets `change` edit its writable fields and writes them back
/// with If-Match. Snapshots are read-only.
fn update_volume(
    c: &Client,
    pool: &str,
    volume: &str,
    change: impl FnOnce(&mut StorageVolumePut) -> Result<()>,
) -> Result<()> {
    let vol = parse_volume(volume)?;
    vol.no_snapshot("Snapshots are read-only and can't have their configuration changed")?;
    let (v, etag) = get_volume(c, pool, &vol)?;
    let mut put = StorageVolumePut {
        config: v.config,
        description: v.description,
        restore: String::new(),
    };
    change(&mut put)?;
    let resp = c.put_if_match(&vol.volume_path(&pool_path(pool)?), &put, etag.as_deref())?;
    c.wait(&resp, None)?;
    Ok(())
}

const VOLUME_EDIT_HEADER: &str = "\
### This is a YAML representation of a storage volume.
### Any line starting with a '# will be ignored.
###
### A storage volume consists of a set of configuration items.
###
### name: vol1
### type: custom
### used_by: []
### config:
###   size: \"61203283968\"
###
### Note that only the description and configuration can be changed.

";

const SNAPSHOT_EDIT_HEADER: &str = "\
### This is a YAML representation of a storage volume snapshot.
### Any line starting with a '# will be ignored.
###
### Note that only the description and expiry date can be changed.

";

/// `storage volume edit`: YAML from stdin when it is not a terminal; otherwise the volume (or
/// snapshot) in the editor, written back with the ETag read.
fn edit_volume(c: &Client, pool: &str, volume: &str) -> Result<()> {
    let vol = parse_volume(volume)?;
    let path = vol.path(&pool_path(pool)?);
    let snapshot_unsupported = |e: ClientError| {
        unsupported_hint(
            e,
            "Changing a volume snapshot",
            "snapshots keep the description and config they were taken with",
        )
    };
    if vol.snapshot.is_some() {
        if let Some(put) = editor::stdin_yaml::<SnapshotPut>("a storage volume snapshot")? {
            let resp = c.put(&path, &put).map_err(snapshot_unsupported)?;
            c.wait(&resp, None)?;
            return Ok(());
        }
        let (s, etag) = get_snapshot(c, pool, &vol)?;
        let text = format!("{SNAPSHOT_EDIT_HEADER}{}", yaml(&snapshot_view(&s))?);
        return editor::edit_yaml(&text, |put: SnapshotPut| {
            let resp = c
                .put_if_match(&path, &put, etag.as_deref())
                .map_err(snapshot_unsupported)?;
            c.wait(&resp, None)?;
            Ok(())
        });
    }
    if let Some(mut put) = editor::stdin_yaml::<StorageVolumePut>("a storage volume")? {
        put.restore.clear();
        let resp = c.put(&path, &put).map_err(|e| volume_not_found(c, pool, e))?;
        c.wait(&resp, None)?;
        return Ok(());
    }
    let (v, etag) = get_volume(c, pool, &vol)?;
    let text = format!("{VOLUME_EDIT_HEADER}{}", yaml(&volume_view(&v))?);
    editor::edit_yaml(&text, |mut put: StorageVolumePut| {
        put.restore.clear();
        let resp = c.put_if_match(&path, &put, etag.as_deref())?;
        c.wait(&resp, None)?;
        Ok(())
    })
}

/// `storage volume rename POOL OLD NEW`, or a snapshot's: `VOLUME/OLD VOLUME/NEW`.
fn rename_volume(c: &Client, pool: &str, old: &str, new: &str) -> Result<()> {
    let vol = parse_volume(old)?;
    let path = vol.path(&pool_path(pool)?);
    match &vol.snapshot {
        None => {
            if new.contains('/') {
                bail!(
                    "Invalid new name {new:?}: a volume's name can't contain '/' (rename a snapshot as \
                     VOLUME/OLD VOLUME/NEW)"
                );
            }
            let body = StorageVolumePost {
                name: new.to_string(),
                pool: String::new(),
            };
            let resp = c.post(&path, &body).map_err(|e| volume_not_found(c, pool, e))?;
            c.wait(&resp, None)?;
        }
        Some(_) => {
            let new_snap = match new.split_once('/') {
                Some((parent, snap)) if parent == vol.name && !snap.is_empty() && !snap.contains('/') => snap,
                Some((parent, _)) if parent != vol.name => bail!(
                    "Invalid new snapshot name {new:?}: the parent volume must be the same as the source's ({})",
                    vol.name
                ),
                _ => bail!("Invalid new snapshot name {new:?}: give it as {}/NEW", vol.name),
            };
            let resp = c.post(&path, &SnapshotPost { name: new_snap }).map_err(|e| {
                unsupported_hint(
                    e,
                    "Renaming a volume snapshot",
                    "copy the snapshot to a new volume with `corral storage volume copy`",
                )
            })?;
            c.wait(&resp, None)?;
        }
    }
    let old_name = match &vol.snapshot {
        Some(s) => format!("{}/{s}", vol.name),
        None => vol.name.clone(),
    };
    let new_name = new.rsplit('/').next().unwrap_or(new);
    outln!("Renamed storage volume from \"{old_name}\" to \"{new_name}\"");
    Ok(())
}

/// `POOL/VOLUME[/SNAPSHOT]` (with or without `local:`): the pool and the rest.
fn split_pool(arg: &str, which: &str) -> Result<(String, String)> {
    let arg = local_name(arg)?;
    match arg.split_once('/') {
        Some((pool, rest)) if !pool.is_empty() && !rest.is_empty() => Ok((pool.to_string(), rest.to_string())),
        _ => {
            bail!("No storage pool for {which} volume specified in {arg:?}: give it as POOL/VOLUME (e.g. default/data)")
        }
    }
}

/// `storage volume copy POOL/VOLUME[/SNAPSHOT] POOL/VOLUME`: the server copies (an operation).
fn copy_volume(c: &Client, source: &str, target: &str, volume_only: bool) -> Result<()> {
    let (src_pool, src) = split_pool(source, "source")?;
    let (dst_pool, dst) = split_pool(target, "target")?;
    let src_ref = parse_volume(&format!("custom/{src}"))?;
    let dst_ref = parse_volume(&format!("custom/{dst}"))?;
    if dst_ref.snapshot.is_some() {
        bail!("Invalid target {target:?}: the copy is a new volume, POOL/VOLUME (without a snapshot)");
    }
    let (vol, _) = get_volume(c, &src_pool, &src_ref)?;
    let (description, config) = match &src_ref.snapshot {
        Some(_) => {
            let (s, _) = get_snapshot(c, &src_pool, &src_ref)?;
            (s.description, s.config)
        }
        None => (vol.description, vol.config),
    };
    let post = StorageVolumesPost {
        name: dst_ref.name.clone(),
        kind: "custom".into(),
        description,
        config,
        content_type: vol.content_type,
        source: StorageVolumeSource {
            kind: "copy".into(),
            name: src,
            pool: src_pool,
            volume_only,
        },
    };
    let resp = c
        .post(&format!("{}/volumes/custom", pool_path(&dst_pool)?), &post)
        .map_err(|e| not_found_hint(e, POOLS_HINT))?;
    c.wait(&resp, None)
        .with_context(|| format!("cannot copy storage volume {source} to {target}"))?;
    outln!("Storage volume copied successfully!");
    Ok(())
}

const DEFAULT_VOLUME_COLUMNS: &str = "tndcu";

/// A column of `storage volume list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Column {
    Type,
    Name,
    Description,
    ContentType,
    UsedBy,
}

impl Column {
    fn header(self) -> &'static str {
        match self {
            Column::Type => "TYPE",
            Column::Name => "NAME",
            Column::Description => "DESCRIPTION",
            Column::ContentType => "CONTENT-TYPE",
            Column::UsedBy => "USED BY",
        }
    }

    fn cell(self, v: &StorageVolume) -> String {
        match self {
            Column::Type if v.name.contains('/') => format!("{} (snapshot)", v.kind),
            Column::Type => v.kind.clone(),
            Column::Name => v.name.clone(),
            Column::Description => v.description.clone(),
            Column::ContentType if v.content_type.is_empty() => "filesystem".into(),
            Column::ContentType => v.content_type.clone(),
            Column::UsedBy => v.used_by.len().to_string(),
        }
    }
}

/// `-c` as lxc reads it: shorthand letters, optionally in comma-separated groups. `e` (project)
/// is dropped, as lxc does without --all-projects.
fn parse_columns(spec: &str) -> Result<Vec<Column>> {
    let mut columns = Vec::new();
    for entry in spec.split(',') {
        if entry.is_empty() {
            bail!("Empty column entry (redundant, leading or trailing comma) in {spec:?}: give letters of tndcu");
        }
        for ch in entry.chars() {
            columns.push(match ch {
                't' => Column::Type,
                'n' => Column::Name,
                'd' => Column::Description,
                'c' => Column::ContentType,
                'u' => Column::UsedBy,
                'e' => continue,
                'L' => bail!("Can't specify column L when not clustered: give letters of tndcu"),
                _ => bail!(
                    "Unknown column shorthand char '{ch}' in {entry:?}: t type, n name, d description, c content \
                     type, u used by"
                ),
            });
        }
    }
    Ok(columns)
}

/// lxc's volume list: the columns asked for, sorted by type (snapshots beside their volume) and
/// name.
fn volume_table(volumes: &[StorageVolume], columns: &[Column]) -> Table {
    let mut rows: Vec<Vec<String>> = volumes
        .iter()
        .map(|v| columns.iter().map(|col| col.cell(v)).collect())
        .collect();
    if columns.len() >= 2 {
        rows.sort_by(|a, b| {
            let (ta, tb) = (first_word(&a[0]), first_word(&b[0]));
            if ta != tb {
                return natural_cmp(&a[0], &b[0]);
            }
            match (a[1].is_empty(), b[1].is_empty()) {
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                _ => natural_cmp(&a[1], &b[1]),
            }
        });
    }
    let mut t = Table::new(columns.iter().map(|col| col.header()));
    rows.into_iter().for_each(|r| t.row(r));
    t
}

fn first_word(s: &str) -> &str {
    s.split(' ').next().unwrap_or(s)
}

/// `lxc storage volume info`'s text: the volume, its usage when the server reports it, and its
/// snapshots in a table.
fn volume_info(v: &StorageVolume, state: &VolumeState, snapshots: &[StorageVolumeSnapshot]) -> String {
    let mut out = format!("Name: {}\n", v.name);
    if !v.description.is_empty() {
        out.push_str(&format!("Description: {}\n", v.description));
    }
    let or = |s: &str, default: &str| {
        if s.is_empty() {
            default.to_string()
        } else {
            s.to_string()
        }
    };
    out.push_str(&format!("Type: {}\n", or(&v.kind, "custom")));
    out.push_str(&format!("Content type: {}\n", or(&v.content_type, "filesystem")));
    if let Some(usage) = &state.usage {
        out.push_str(&format!(
            "Usage: {}\n",
            size(i64::try_from(usage.used).unwrap_or(i64::MAX))
        ));
        if usage.total > 0 {
            out.push_str(&format!("Total: {}\n", size(usage.total)));
        }
    }
    if !snapshots.is_empty() {
        let mut rows: Vec<Vec<String>> = snapshots
            .iter()
            .map(|s| {
                vec![
                    s.name.rsplit('/').next().unwrap_or(&s.name).to_string(),
                    s.description.clone(),
                    match &s.expires_at {
                        Some(t) if !t.is_zero() => t.0.format("%Y/%m/%d %H:%M UTC").to_string(),
                        _ => " ".to_string(),
                    },
                ]
            })
            .collect();
        rows.sort_by(|a, b| by_name(a, b));
        let mut t = Table::new(["NAME", "DESCRIPTION", "EXPIRES AT"]);
        rows.into_iter().for_each(|r| t.row(r));
        out.push_str("\nSnapshots:\n");
        out.push_str(&t.bordered());
    }
    out
}

/// lxc's row order (`ByName`): by the first column that differs, empty cells last, numbers in
/// text compared as numbers.
fn by_name(a: &[String], b: &[String]) -> Ordering {
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
}

/// `attach`'s trailing arguments: `PATH`, or `DEVICE PATH`; the device is named after the
/// volume unless given.
fn device_and_path(volume: &str, device_or_path: String, path: Option<String>) -> (String, String) {
    match path {
        Some(path) => (device_or_path, path),
        None => (volume.to_string(), device_or_path),
    }
}

/// The disk device `attach` adds, as lxc builds it, for a custom volume that exists.
fn disk_device(c: &Client, pool: &str, volume: &str, path: &str) -> Result<BTreeMap<String, String>> {
    let vol = parse_volume(volume)?;
    vol.custom_only("attached to instances")?;
    vol.no_snapshot("Only volumes can be attached, not snapshots")?;
    if !path.starts_with('/') {
        bail!("Invalid path {path:?}: give the absolute path where the volume is mounted in the instance (e.g. /mnt/data)");
    }
    let (v, _) = get_volume(c, pool, &vol)?;
    Ok(BTreeMap::from([
        ("type".to_string(), "disk".to_string()),
        ("pool".to_string(), local_name(pool)?.to_string()),
        ("source".to_string(), v.name),
        ("path".to_string(), path.to_string()),
    ]))
}

fn add_device(devices: &mut Devices, name: &str, dev: BTreeMap<String, String>, owner: &str) -> Result<()> {
    if devices.contains_key(name) {
        bail!(
            "Device already exists: {name} (on {owner}; its devices: {}): give another device name before the path",
            describe_devices(devices)
        );
    }
    devices.insert(name.to_string(), dev);
    Ok(())
}

/// `data (disk of fast/data), root (disk)`, or `none`.
fn describe_devices(devices: &Devices) -> String {
    if devices.is_empty() {
        return "none".into();
    }
    devices
        .iter()
        .map(|(name, d)| {
            let kind = d.get("type").map(String::as_str).unwrap_or("no type");
            match (d.get("pool"), d.get("source")) {
                (Some(pool), Some(source)) if kind == "disk" => format!("{name} (disk of {pool}/{source})"),
                _ => format!("{name} ({kind})"),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn disk_of(d: &BTreeMap<String, String>, pool: &str, volume: &str) -> bool {
    d.get("type").map(String::as_str) == Some("disk")
        && d.get("pool").map(String::as_str) == Some(pool)
        && d.get("source").map(String::as_str) == Some(volume)
}

/// The device of `devices` (those of `owner`) that `detach` removes: `device` if given (it must
/// be a disk of the volume), else the only disk of the volume. `expanded`, an instance's devices
/// with its profiles', lets the error say when the disk comes from a profile.
fn find_disk(
    devices: &Devices,
    expanded: Option<&Devices>,
    pool: &str,
    volume: &str,
    device: Option<&str>,
    owner: &str,
) -> Result<String> {
    if let Some(name) = device {
        let Some(d) = devices.get(name) else {
            if expanded.is_some_and(|e| e.contains_key(name)) {
                bail!(
                    "The specified device doesn't exist: {name} comes from a profile of {owner}; detach it from the \
                     profile with `corral storage volume detach-profile {pool} {volume} PROFILE {name}`"
                );
            }
            bail!(
                "The specified device doesn't exist: {owner} has no device {name} (its devices: {})",
                describe_devices(devices)
            );
        };
        if !disk_of(d, pool, volume) {
            bail!(
                "The specified device doesn't match the volume: {name} is not a disk of {pool}/{volume} ({})",
                describe_devices(&BTreeMap::from([(name.to_string(), d.clone())]))
            );
        }
        return Ok(name.to_string());
    }
    let matching: Vec<&String> = devices
        .iter()
        .filter(|(_, d)| disk_of(d, pool, volume))
        .map(|(n, _)| n)
        .collect();
    match matching.as_slice() {
        [one] => Ok(one.to_string()),
        [] => {
            let from_profile = expanded.and_then(|e| {
                e.iter()
                    .find(|(n, d)| !devices.contains_key(*n) && disk_of(d, pool, volume))
                    .map(|(n, _)| n)
            });
            if let Some(name) = from_profile {
                bail!(
                    "No device found for this storage volume on {owner}: its disk {name} of {pool}/{volume} comes \
                     from a profile; detach it from the profile with `corral storage volume detach-profile {pool} \
                     {volume} PROFILE`"
                );
            }
            bail!(
                "No device found for this storage volume: {owner} has no disk of {pool}/{volume} (its devices: {})",
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
    let (inst, etag) = c
        .get_with_etag::<Instance>(&path)
        .map_err(|e| not_found_hint(e, "`corral list` lists the instances"))?;
    let mut devices = inst.devices.clone();
    change(&inst, &mut devices)?;
    let mut put = writable(inst);
    put.devices = devices;
    let resp = c.put_if_match(&path, &put, etag.as_deref())?;
    c.wait(&resp, None)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: StorageCmd,
    }

    fn parse(args: &[&str]) -> StorageCmd {
        Cli::try_parse_from([&["storage"], args].concat())
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
            .cmd
    }

    fn vol(kind: &str, name: &str, snapshot: Option<&str>) -> VolRef {
        VolRef {
            kind: kind.into(),
            name: name.into(),
            snapshot: snapshot.map(Into::into),
        }
    }

    #[test]
    fn volume_arguments_as_lxc_reads_them() {
        assert_eq!(parse_volume("data").unwrap(), vol("custom", "data", None));
        assert_eq!(parse_volume("custom/data").unwrap(), vol("custom", "data", None));
        assert_eq!(parse_volume("container/c1").unwrap(), vol("container", "c1", None));
        assert_eq!(
            parse_volume("data/snap0").unwrap(),
            vol("custom", "data", Some("snap0"))
        );
        assert_eq!(
            parse_volume("custom/data/snap0").unwrap(),
            vol("custom", "data", Some("snap0"))
        );
        for (bad, msg) in [
            ("a/b/c", "Invalid snapshot name in \"a/b/c\""),
            ("custom/", "Missing volume name"),
            ("/s", "Missing volume name"),
            ("data/", "Missing snapshot name in \"data/\""),
        ] {
            let err = parse_volume(bad).unwrap_err().to_string();
            assert!(err.starts_with(msg), "{bad}: {err}");
        }
        let v = parse_volume("my data/s 1").unwrap();
        assert_eq!(
            v.path("/1.0/storage-pools/fast"),
            "/1.0/storage-pools/fast/volumes/custom/my%20data/snapshots/s%201"
        );
        assert_eq!(
            v.volume_path("/1.0/storage-pools/fast"),
            "/1.0/storage-pools/fast/volumes/custom/my%20data"
        );
        let err = v.no_snapshot("Snapshots are read-only").unwrap_err().to_string();
        assert_eq!(
            err,
            "Snapshots are read-only: my data/s 1 is a snapshot; give the volume (my data)"
        );
        let err = vol("image", "abc", None)
            .custom_only("attached to instances")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "Only \"custom\" volumes can be attached to instances: image/abc is a image volume"
        );
        assert_eq!(pool_path("local:fast").unwrap(), "/1.0/storage-pools/fast");
        assert!(pool_path("local:")
            .unwrap_err()
            .to_string()
            .starts_with("Missing pool name"));
        assert!(pool_path("prod:fast")
            .unwrap_err()
            .to_string()
            .contains("Remote \"prod\" doesn't exist"));
    }

    #[test]
    fn copy_arguments() {
        assert_eq!(
            split_pool("local:fast/data/snap0", "source").unwrap(),
            ("fast".to_string(), "data/snap0".to_string())
        );
        let err = split_pool("data", "source").unwrap_err().to_string();
        assert_eq!(
            err,
            "No storage pool for source volume specified in \"data\": give it as POOL/VOLUME (e.g. default/data)"
        );
        assert!(split_pool("fast/", "target").is_err());
    }

    #[test]
    fn columns() {
        use Column::*;
        assert_eq!(
            parse_columns(DEFAULT_VOLUME_COLUMNS).unwrap(),
            [Type, Name, Description, ContentType, UsedBy]
        );
        assert_eq!(parse_columns("n,u").unwrap(), [Name, UsedBy]);
        assert_eq!(parse_columns("etn").unwrap(), [Type, Name]);
        let err = parse_columns("nx").unwrap_err().to_string();
        assert!(err.starts_with("Unknown column shorthand char 'x' in \"nx\""), "{err}");
        assert!(parse_columns("n,")
            .unwrap_err()
            .to_string()
            .starts_with("Empty column entry"));
        assert!(parse_columns("nL")
            .unwrap_err()
            .to_string()
            .starts_with("Can't specify column L"));
    }

    fn pool(name: &str, driver: &str, source: &str, used_by: &[&str]) -> StoragePool {
        StoragePool {
            name: name.into(),
            driver: driver.into(),
            config: BTreeMap::from([("source".to_string(), source.to_string())]),
            used_by: used_by.iter().map(|s| s.to_string()).collect(),
            status: "Created".into(),
            locations: vec!["none".into()],
            ..Default::default()
        }
    }

    #[test]
    fn pool_list_like_lxc() {
        let mut fast = pool("fast10", "btrfs", "/var/lib/corral/disks/fast10.img", &[]);
        fast.description = "ssd".into();
        let pools = vec![
            fast,
            pool("fast2", "btrfs", "/dev/sdb", &["/1.0/instances/c1"]),
            pool(
                "default",
                "dir",
                "/var/lib/corral/storage-pools/default",
                &["/1.0/profiles/default", "/1.0/instances/c2"],
            ),
        ];
        let t = pool_table(&pools);
        assert_eq!(
            t.bordered(),
            "\
+---------+--------+---------------------------------------+-------------+---------+---------+
|  NAME   | DRIVER |                SOURCE                 | DESCRIPTION | USED BY |  STATE  |
+---------+--------+---------------------------------------+-------------+---------+---------+
| default | dir    | /var/lib/corral/storage-pools/default |             | 2       | CREATED |
+---------+--------+---------------------------------------+-------------+---------+---------+
| fast2   | btrfs  | /dev/sdb                              |             | 1       | CREATED |
+---------+--------+---------------------------------------+-------------+---------+---------+
| fast10  | btrfs  | /var/lib/corral/disks/fast10.img      | ssd         | 0       | CREATED |
+---------+--------+---------------------------------------+-------------+---------+---------+
"
        );
        assert_eq!(
            t.csv(),
            "default,dir,/var/lib/corral/storage-pools/default,,2,CREATED\nfast2,btrfs,/dev/sdb,,1,CREATED\n\
             fast10,btrfs,/var/lib/corral/disks/fast10.img,ssd,0,CREATED\n"
        );
    }

    #[test]
    fn pool_info_like_lxc() {
        let p = pool(
            "fast",
            "btrfs",
            "/x.img",
            &[
                "/1.0/storage-pools/fast/volumes/custom/data",
                "/1.0/instances/c1",
                "/1.0/storage-pools/fast/volumes/custom/my data",
                "/1.0/images/abc?project=web",
                "/1.0/profiles/default",
            ],
        );
        let res = StoragePoolState {
            space: corral_api::ResourcesStoragePoolSpace {
                used: 6_127_616,
                total: 1_073_741_824,
            },
            inodes: corral_api::ResourcesStoragePoolInodes { used: 10, total: 100 },
        };
        assert_eq!(
            pool_info(&p, &res, false).unwrap(),
            "\
info:
  description: \"\"
  driver: btrfs
  name: fast
  space used: 5.84MiB
  total space: 1.00GiB
used by:
  images:
  - abc (project \"web\")
  instances:
  - c1
  profiles:
  - default
  volumes:
  - data
  - my data
"
        );
        let empty = pool("empty", "dir", "/d", &[]);
        let text = pool_info(&empty, &res, true).unwrap();
        assert!(
            text.ends_with("  space used: \"6127616\"\n  total space: \"1073741824\"\nused by: {}\n"),
            "{text}"
        );
        assert_eq!(used_by_entry("/1.0/instances/c1/snapshots/s0"), None);
        assert_eq!(
            used_by_entry("/1.0/instances/c1?project=p&target=m1"),
            Some(("instances".to_string(), "c1 (project \"p\", target \"m1\")".to_string()))
        );
        assert_eq!(
            used_by_entry("/1.0"),
            Some(("unrecognized".to_string(), "/1.0".to_string()))
        );
    }

    fn volume(kind: &str, name: &str, used_by: usize) -> StorageVolume {
        StorageVolume {
            name: name.into(),
            kind: kind.into(),
            content_type: "filesystem".into(),
            used_by: (0..used_by).map(|i| format!("/1.0/instances/c{i}")).collect(),
            location: "none".into(),
            ..Default::default()
        }
    }

    #[test]
    fn volume_list_like_lxc() {
        let mut data = volume("custom", "data", 1);
        data.description = "web files".into();
        let volumes = vec![
            volume("image", "3f2a1b", 1),
            volume("custom", "my data", 0),
            volume("container", "c1", 1),
            data,
            volume("custom", "data10", 0),
            volume("custom", "data2", 0),
            StorageVolume {
                content_type: String::new(),
                ..volume("custom", "data/snap0", 0)
            },
        ];
        let t = volume_table(&volumes, &parse_columns(DEFAULT_VOLUME_COLUMNS).unwrap());
        assert_eq!(
            t.bordered(),
            "\
+-------------------+------------+-------------+--------------+---------+
|       TYPE        |    NAME    | DESCRIPTION | CONTENT-TYPE | USED BY |
+-------------------+------------+-------------+--------------+---------+
| container         | c1         |             | filesystem   | 1       |
+-------------------+------------+-------------+--------------+---------+
| custom            | data       | web files   | filesystem   | 1       |
+-------------------+------------+-------------+--------------+---------+
| custom (snapshot) | data/snap0 |             | filesystem   | 0       |
+-------------------+------------+-------------+--------------+---------+
| custom            | data2      |             | filesystem   | 0       |
+-------------------+------------+-------------+--------------+---------+
| custom            | data10     |             | filesystem   | 0       |
+-------------------+------------+-------------+--------------+---------+
| custom            | my data    |             | filesystem   | 0       |
+-------------------+------------+-------------+--------------+---------+
| image             | 3f2a1b     |             | filesystem   | 1       |
+-------------------+------------+-------------+--------------+---------+
"
        );
        let t = volume_table(&volumes[..2], &parse_columns("nu").unwrap());
        assert_eq!(t.csv(), "3f2a1b,1\nmy data,0\n");
    }

    #[test]
    fn show_yaml_in_lxc_order() {
        let mut v = volume("custom", "data", 2);
        v.used_by.reverse();
        v.config.insert("size".into(), "64MiB".into());
        v.project = "default".into();
        v.created_at = Some("2026-11-28T00:45:28.887654142Z".parse().unwrap());
        v.used_by.sort();
        let text = yaml(&volume_view(&v)).unwrap();
        assert_eq!(
            text,
            "\
config:
  size: 64MiB
description: \"\"
name: data
type: custom
used_by:
- /1.0/instances/c0
- /1.0/instances/c1
location: none
content_type: filesystem
project: default
created_at: \"2026-11-28T00:45:28.887654142Z\"
"
        );
        // What `show` prints, edited, reads back as the writable fields.
        let put: StorageVolumePut = serde_saphyr::from_str(&format!("{VOLUME_EDIT_HEADER}{text}")).unwrap();
        assert_eq!(put.config, v.config);
        assert!(put.restore.is_empty());
        // Go's zero time when the server gives none.
        let bare = yaml(&volume_view(&volume("container", "c1", 0))).unwrap();
        assert!(bare.ends_with("created_at: \"0001-01-01T00:00:00Z\"\n"), "{bare}");

        let s = StorageVolumeSnapshot {
            name: "snap0".into(),
            config: BTreeMap::from([("size".to_string(), "64MiB".to_string())]),
            content_type: "filesystem".into(),
            created_at: Some("2026-11-28T00:45:29.081352645Z".parse().unwrap()),
            ..Default::default()
        };
        let text = yaml(&snapshot_view(&s)).unwrap();
        assert_eq!(
            text,
            "\
description: \"\"
expires_at: null
name: snap0
config:
  size: 64MiB
content_type: filesystem
created_at: \"2026-11-28T00:45:29.081352645Z\"
"
        );
        let put: SnapshotPut = serde_saphyr::from_str(&format!("{SNAPSHOT_EDIT_HEADER}{text}")).unwrap();
        assert!(put.description.is_empty() && put.expires_at.is_none());
        let p = pool("fast", "btrfs", "/x.img", &[]);
        let put: StoragePoolPut = serde_saphyr::from_str(&format!("{POOL_EDIT_HEADER}{}", yaml(&p).unwrap())).unwrap();
        assert_eq!(put.config, p.config);
    }

    #[test]
    fn volume_info_like_lxc() {
        let mut v = volume("custom", "data", 0);
        v.description = "web files".into();
        let snap = |name: &str, description: &str| StorageVolumeSnapshot {
            name: name.into(),
            description: description.into(),
            ..Default::default()
        };
        let state = VolumeState {
            usage: Some(VolumeUsage {
                used: 1536,
                total: 64 * 1024 * 1024,
            }),
        };
        assert_eq!(
            volume_info(&v, &state, &[snap("snap10", ""), snap("data/snap2", "before upgrade")]),
            "\
Name: data
Description: web files
Type: custom
Content type: filesystem
Usage: 1.50KiB
Total: 64.00MiB

Snapshots:
+--------+----------------+------------+
|  NAME  |  DESCRIPTION   | EXPIRES AT |
+--------+----------------+------------+
| snap2  | before upgrade |            |
+--------+----------------+------------+
| snap10 |                |            |
+--------+----------------+------------+
"
        );
        let bare = volume_info(&StorageVolume::default(), &VolumeState::default(), &[]);
        assert_eq!(bare, "Name: \nType: custom\nContent type: filesystem\n");
    }

    #[test]
    fn set_and_unset_arguments() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            config_pairs(&args(&["size", "1GiB"]), "x").unwrap(),
            BTreeMap::from([("size".to_string(), "1GiB".to_string())])
        );
        assert_eq!(config_pairs(&args(&["a=1", "b=x=y"]), "x").unwrap()["b"], "x=y");
        let err = config_pairs(&args(&["a=1", "b"]), "corral storage set p k v")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "Invalid key=value configuration: \"b\": give KEY=VALUE pairs, or one KEY and its VALUE (`corral storage \
             set p k v`)"
        );
        let mut config = Config::from([("size".to_string(), "1GiB".to_string())]);
        apply_pairs(&mut config, BTreeMap::from([("user.a".to_string(), "b".to_string())]));
        apply_pairs(&mut config, BTreeMap::from([("size".to_string(), String::new())]));
        assert_eq!(config, Config::from([("user.a".to_string(), "b".to_string())]));
        let err = remove_keys(&mut config, &args(&["size"]), "storage pool fast")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "Key size is not set on storage pool fast (its keys: user.a)");
        let err = create_pairs(&args(&["size"]), "size=10GiB").unwrap_err().to_string();
        assert_eq!(
            err,
            "Bad key=value pair: size: give options as KEY=VALUE (e.g. size=10GiB)"
        );
    }

    #[test]
    fn pool_create_takes_stdin_under_the_command_line() {
        let stdin = StoragePoolsPost {
            name: "ignored".into(),
            driver: "dir".into(),
            description: "from yaml".into(),
            config: BTreeMap::from([("size".into(), "1GiB".into()), ("user.a".into(), "1".into())]),
        };
        let body = pool_create_body(
            "fast".into(),
            "btrfs".into(),
            stdin,
            None,
            BTreeMap::from([("size".into(), "2GiB".into())]),
        );
        assert_eq!((body.name.as_str(), body.driver.as_str()), ("fast", "btrfs"));
        assert_eq!(body.description, "from yaml");
        assert_eq!(body.config["size"], "2GiB");
        assert_eq!(body.config["user.a"], "1");
    }

    #[test]
    fn verbs_parse_like_lxc() {
        let StorageCmd::Create {
            pool, driver, pairs, ..
        } = parse(&["create", "fast", "btrfs", "size=1GiB"])
        else {
            panic!()
        };
        assert_eq!(
            (pool.as_str(), driver.as_str(), pairs.as_slice()),
            ("fast", "btrfs", &["size=1GiB".to_string()][..])
        );
        let StorageCmd::Volume(VolumeCmd::Attach {
            device_or_path, path, ..
        }) = parse(&["volume", "attach", "fast", "data", "c1", "/mnt"])
        else {
            panic!()
        };
        assert_eq!(
            device_and_path("data", device_or_path, path),
            ("data".into(), "/mnt".into())
        );
        let StorageCmd::Volume(VolumeCmd::Attach {
            device_or_path, path, ..
        }) = parse(&["volume", "attach", "fast", "data", "c1", "disk1", "/mnt"])
        else {
            panic!()
        };
        assert_eq!(
            device_and_path("data", device_or_path, path),
            ("disk1".into(), "/mnt".into())
        );
        assert!(Cli::try_parse_from(["storage", "volume", "attach", "fast", "data", "c1"]).is_err());
        let StorageCmd::Volume(VolumeCmd::Copy { volume_only, .. }) =
            parse(&["volume", "cp", "fast/data", "fast/data2", "--volume-only"])
        else {
            panic!()
        };
        assert!(volume_only);
        let StorageCmd::Volume(VolumeCmd::Create { content_type, .. }) = parse(&["volume", "create", "fast", "v"])
        else {
            panic!()
        };
        assert_eq!(content_type, "filesystem");
        assert!(Cli::try_parse_from(["storage", "volume", "create", "fast", "v", "--type", "iso"]).is_err());
        assert!(matches!(
            parse(&["ls", "-f", "csv"]),
            StorageCmd::List {
                format: Format::Csv,
                ..
            }
        ));
        assert!(matches!(
            parse(&["volume", "ls", "fast"]),
            StorageCmd::Volume(VolumeCmd::List { .. })
        ));
    }

    fn disk(pool: &str, source: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("type".to_string(), "disk".to_string()),
            ("pool".to_string(), pool.to_string()),
            ("source".to_string(), source.to_string()),
            ("path".to_string(), "/mnt".to_string()),
        ])
    }

    #[test]
    fn detach_finds_the_disk() {
        let root = BTreeMap::from([("type".to_string(), "disk".to_string())]);
        let devices = Devices::from([
            ("data".to_string(), disk("fast", "data")),
            ("logs".to_string(), disk("fast", "logs")),
            ("root".to_string(), root),
        ]);
        let find = |d: &Devices, e: Option<&Devices>, vol: &str, dev: Option<&str>| {
            find_disk(d, e, "fast", vol, dev, "instance c1").map_err(|e| e.to_string())
        };
        assert_eq!(find(&devices, None, "data", None).unwrap(), "data");
        assert_eq!(find(&devices, None, "logs", Some("logs")).unwrap(), "logs");
        assert_eq!(
            find(&devices, None, "nope", None).unwrap_err(),
            "No device found for this storage volume: instance c1 has no disk of fast/nope (its devices: data (disk \
             of fast/data), logs (disk of fast/logs), root (disk))"
        );
        assert!(find(&devices, None, "data", Some("x"))
            .unwrap_err()
            .starts_with("The specified device doesn't exist: instance c1 has no device x"));
        assert_eq!(
            find(&devices, None, "data", Some("logs")).unwrap_err(),
            "The specified device doesn't match the volume: logs is not a disk of fast/data (logs (disk of fast/logs))"
        );
        let mut two = devices.clone();
        two.insert("data2".into(), disk("fast", "data"));
        assert_eq!(
            find(&two, None, "data", None).unwrap_err(),
            "More than one device matches, specify the device name: data, data2"
        );
        let expanded = Devices::from([("shared".to_string(), disk("fast", "shared"))]);
        let err = find(&devices, Some(&expanded), "shared", None).unwrap_err();
        assert!(
            err.contains("its disk shared of fast/shared comes from a profile"),
            "{err}"
        );
        assert!(
            err.contains("corral storage volume detach-profile fast shared PROFILE"),
            "{err}"
        );
        let err = find(&devices, Some(&expanded), "shared", Some("shared")).unwrap_err();
        assert!(err.contains("shared comes from a profile of instance c1"), "{err}");

        let mut devices = devices;
        let err = add_device(&mut devices, "data", disk("fast", "data"), "instance c1")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("Device already exists: data (on instance c1; its devices: data (disk of"),
            "{err}"
        );
        add_device(&mut devices, "data-2", disk("fast", "data"), "instance c1").unwrap();
        assert!(devices.contains_key("data-2"));
        assert_eq!(describe_devices(&Devices::new()), "none");
    }

    #[test]
    fn natural_order() {
        let mut v = vec!["data10", "data2", "data", "a", "data02"];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(v, ["a", "data", "data2", "data02", "data10"]);
        let rows = |r: &[&str]| r.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(by_name(&rows(&["", "x"]), &rows(&["b", "x"])), Ordering::Greater);
        assert_eq!(by_name(&rows(&["a", "2"]), &rows(&["a", "10"])), Ordering::Less);
    }
}
