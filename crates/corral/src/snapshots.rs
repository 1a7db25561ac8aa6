//! Snapshot and copy verbs: `snapshot`, `restore`, `copy`, as `lxc` has them.

use anyhow::Result;
use clap::Args;
use corral_api::{InstancePut, InstanceSnapshotsPost, InstanceSource, InstancesPost};
use corral_client::Client;

use crate::instances::instance_path;
use crate::remotes::local_name;

#[derive(Args)]
pub struct SnapshotArgs {
    /// The instance
    pub instance: String,
    /// Snapshot name (default: the next free snapN)
    pub name: Option<String>,
}

#[derive(Args)]
pub struct RestoreArgs {
    /// The instance
    pub instance: String,
    /// The snapshot to restore (any, not only the latest)
    pub snapshot: String,
}

#[derive(Args)]
pub struct CopyArgs {
    /// Source instance, or instance/snapshot
    pub source: String,
    /// Name of the copy
    pub destination: String,
    /// Leave the source's snapshots behind
    #[arg(long)]
    pub instance_only: bool,
}

/// `corral snapshot c1 [s0]`.
pub fn snapshot(c: &Client, a: SnapshotArgs) -> Result<()> {
    let body = InstanceSnapshotsPost {
        name: a.name.unwrap_or_default(),
        ..Default::default()
    };
    let resp = c.post(&format!("{}/snapshots", instance_path(&a.instance)?), &body)?;
    c.wait(&resp, None)?;
    Ok(())
}

/// `corral restore c1 s0`.
pub fn restore(c: &Client, a: RestoreArgs) -> Result<()> {
    let body = InstancePut {
        restore: a.snapshot,
        ..Default::default()
    };
    let resp = c.put(&instance_path(&a.instance)?, &body)?;
    c.wait(&resp, None)?;
    Ok(())
}

/// `corral copy c1 c2`, `corral copy c1/s0 c3`.
pub fn copy(c: &Client, a: CopyArgs) -> Result<()> {
    let body = InstancesPost {
        name: local_name(&a.destination)?.to_string(),
        source: InstanceSource {
            kind: "copy".into(),
            source: local_name(&a.source)?.to_string(),
            instance_only: a.instance_only,
            ..Default::default()
        },
        ..Default::default()
    };
    let resp = c.post("/1.0/instances", &body)?;
    c.wait(&resp, None)?;
    Ok(())
}
