//! `export` and `import`: an instance to and from a backup tarball, as `lxc export` and
//! `lxc import` do it (a backup made on the server, downloaded, then deleted there; an upload
//! that becomes a new instance).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use corral_client::{encode_segment, Client};

use crate::progress::Progress;

#[derive(Args)]
pub struct ExportArgs {
    /// The instance
    pub instance: String,
    /// Where to write the tarball (default: INSTANCE.tar.gz, or .tar.zst, .tar.xz, .tar)
    pub target: Option<PathBuf>,
    /// Leave the instance's snapshots out
    #[arg(long)]
    pub instance_only: bool,
    /// Compression: none, gzip (default), xz or zstd
    #[arg(long, default_value = "gzip")]
    pub compression: String,
    /// Use the pool's native format (btrfs send streams; imports only into a btrfs pool)
    #[arg(long)]
    pub optimized_storage: bool,
}

#[derive(Args)]
pub struct ImportArgs {
    /// The backup tarball
    pub file: PathBuf,
    /// The new instance's name (default: the one in the backup)
    pub name: Option<String>,
    /// The storage pool to put it on
    #[arg(short = 's', long)]
    pub storage: Option<String>,
}

fn extension(compression: &str) -> Result<&'static str> {
    Ok(match compression {
        "gzip" => ".tar.gz",
        "zstd" => ".tar.zst",
        "xz" => ".tar.xz",
        "none" => ".tar",
        other => bail!("unknown compression {other:?}: use none, gzip, xz or zstd"),
    })
}

pub fn export(c: &Client, a: ExportArgs) -> Result<()> {
    let ext = extension(&a.compression)?;
    let target = a
        .target
        .unwrap_or_else(|| PathBuf::from(format!("{}{ext}", a.instance)));
    let base = format!("/1.0/instances/{}/backups", encode_segment(&a.instance));
    let body = serde_json::json!({
        "instance_only": a.instance_only,
        "compression_algorithm": a.compression,
        "optimized_storage": a.optimized_storage,
    });
    backup_and_download(c, &base, body, &target).with_context(|| format!("cannot back up {}", a.instance))?;
    outln!("Backup exported to {}", target.display());
    Ok(())
}

/// `storage volume export POOL VOLUME [FILE]`: a custom volume to a backup tarball.
pub fn export_volume(
    c: &Client,
    pool_path: &str,
    volume: &str,
    target: Option<PathBuf>,
    volume_only: bool,
    optimized_storage: bool,
    compression: &str,
) -> Result<()> {
    let ext = extension(compression)?;
    let target = target.unwrap_or_else(|| PathBuf::from(format!("{volume}{ext}")));
    let base = format!("{pool_path}/volumes/custom/{}/backups", encode_segment(volume));
    let body = serde_json::json!({
        "volume_only": volume_only,
        "optimized_storage": optimized_storage,
        "compression_algorithm": compression,
    });
    backup_and_download(c, &base, body, &target).with_context(|| format!("cannot back up volume {volume}"))?;
    outln!("Backup exported to {}", target.display());
    Ok(())
}

/// Makes a backup at `base` (a backups collection), downloads it to `target`, and deletes it on
/// the server whatever happened to the download.
fn backup_and_download(c: &Client, base: &str, mut body: serde_json::Value, target: &Path) -> Result<()> {
    let name = format!("export-{}", std::process::id());
    body["name"] = serde_json::Value::String(name.clone());
    let resp = c.post(base, &body)?;
    c.wait(&resp, None)?;
    let backup = format!("{base}/{name}");
    let downloaded = (|| -> Result<()> {
        let (_, mut body) = c.download(&format!("{backup}/export"))?;
        let mut progress = Progress::new("Exporting the backup");
        let mut written = 0u64;
        crate::image_files::save(&mut body, target, &mut |n| {
            written += n;
            progress.update(written, 0);
        })?;
        progress.finish();
        Ok(())
    })();
    if let Ok(resp) = c.delete(&backup) {
        let _ = c.wait(&resp, None);
    }
    downloaded
}

/// `storage volume import POOL FILE [NAME]`: a custom volume from a backup tarball.
pub fn import_volume(c: &Client, pool_path: &str, file: &Path, name: Option<&str>) -> Result<()> {
    if !file.is_file() {
        bail!(
            "{} is not a file: give the backup tarball `corral storage volume export` wrote",
            file.display()
        );
    }
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if let Some(n) = name {
        headers.push(("X-LXD-name", n));
    }
    let mut progress = Progress::new("Importing the backup");
    let resp = c
        .upload(&format!("{pool_path}/volumes/custom"), &headers, file, |sent, total| {
            progress.update(sent, total)
        })
        .with_context(|| format!("cannot import {}", file.display()))?;
    progress.finish();
    c.wait(&resp, None)
        .with_context(|| format!("cannot import {}", file.display()))?;
    outln!("Volume imported from {}", file.display());
    Ok(())
}

pub fn import(c: &Client, a: ImportArgs) -> Result<()> {
    if !Path::new(&a.file).is_file() {
        bail!(
            "{} is not a file: give the backup tarball `corral export` wrote",
            a.file.display()
        );
    }
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if let Some(n) = &a.name {
        headers.push(("X-LXD-name", n.as_str()));
    }
    if let Some(p) = &a.storage {
        headers.push(("X-LXD-pool", p.as_str()));
    }
    let mut progress = Progress::new("Importing the backup");
    let resp = c
        .upload("/1.0/instances", &headers, &a.file, |sent, total| {
            progress.update(sent, total)
        })
        .with_context(|| format!("cannot import {}", a.file.display()))?;
    progress.finish();
    c.wait(&resp, None)
        .with_context(|| format!("cannot import {}", a.file.display()))?;
    outln!("Instance imported from {}", a.file.display());
    Ok(())
}
