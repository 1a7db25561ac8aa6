//! Snapshot and copy verbs: `snapshot`, `restore`, `copy`, as `lxc` has them.

use anyhow::Result;
use clap::Args;
use corral_api::{InstancePut, InstanceSnapshotsPost};
use corral_client::Client;

use crate::instances::instance_path;

#[derive(Args)]
pub struct SnapshotArgs {
    /// The instance
    pub instance: String,
    /// Snapshot name (default: the next free snapN)
    pub name: Option<String>,
    /// Save the running state too (CRIU; the instance keeps running)
    #[arg(long)]
    pub stateful: bool,
}

#[derive(Args)]
pub struct RestoreArgs {
    /// The instance
    pub instance: String,
    /// The snapshot to restore (any, not only the latest)
    pub snapshot: String,
    /// Restore the running state of a stateful snapshot: the instance comes back running in it
    #[arg(long)]
    pub stateful: bool,
}

/// `corral snapshot c1 [s0] [--stateful]`.
pub fn snapshot(c: &Client, a: SnapshotArgs) -> Result<()> {
    let body = InstanceSnapshotsPost {
        name: a.name.unwrap_or_default(),
        stateful: a.stateful,
        ..Default::default()
    };
    let resp = c.post(&format!("{}/snapshots", instance_path(&a.instance)?), &body)?;
    c.wait(&resp, None)?;
    Ok(())
}

/// `corral restore c1 s0 [--stateful]`.
pub fn restore(c: &Client, a: RestoreArgs) -> Result<()> {
    let body = InstancePut {
        restore: a.snapshot,
        stateful: a.stateful,
        ..Default::default()
    };
    let resp = c.put(&instance_path(&a.instance)?, &body)?;
    c.wait(&resp, None)?;
    Ok(())
}
