//! `corral image ...`: import, list, show, delete, aliases.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use corral_api::{Image, ImageAliasesEntry, ImageAliasesPost, InstanceType};
use corral_client::{encode_segment, Client};

use crate::output::{long_date, print_list, size, yaml, Format, Table};

#[derive(Subcommand)]
pub enum ImageCmd {
    /// Import a unified image file (metadata.yaml, templates/ and rootfs/ in one tarball)
    #[command(after_help = "Example:\n  corral image import busybox.tar.xz --alias busybox")]
    Import {
        file: PathBuf,
        /// Alias for the new image (repeatable)
        #[arg(long = "alias", value_name = "ALIAS")]
        aliases: Vec<String>,
        /// Make the image public
        #[arg(long)]
        public: bool,
    },
    /// List images
    #[command(alias = "ls")]
    List {
        /// Filters: an alias or fingerprint prefix, or KEY=VALUE on the properties (os=busybox)
        filters: Vec<String>,
        #[arg(short = 'f', long = "format", value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Show an image's properties (YAML)
    Show { image: String },
    /// Delete images
    #[command(alias = "rm")]
    Delete {
        /// Fingerprints (or prefixes) or aliases
        #[arg(required = true, value_name = "IMAGE")]
        images: Vec<String>,
    },
    /// Manage image aliases
    #[command(subcommand)]
    Alias(AliasCmd),
}

#[derive(Subcommand)]
pub enum AliasCmd {
    /// Create an alias for an image
    Create {
        alias: String,
        /// Fingerprint (or prefix) or existing alias of the image
        target: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Delete an alias
    #[command(alias = "rm")]
    Delete { alias: String },
    /// List aliases
    #[command(alias = "ls")]
    List {
        #[arg(short = 'f', long = "format", value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

pub fn image(c: &Client, cmd: ImageCmd) -> Result<()> {
    match cmd {
        ImageCmd::Import { file, aliases, public } => import(c, &file, &aliases, public),
        ImageCmd::List { filters, format } => list(c, &filters, format),
        ImageCmd::Show { image } => {
            let fp = resolve(c, &image)?;
            let img: Image = c.get(&format!("/1.0/images/{}", encode_segment(&fp)))?;
            out!("{}", yaml(&img)?);
            Ok(())
        }
        ImageCmd::Delete { images } => {
            for image in images {
                let fp = resolve(c, &image)?;
                let resp = c.delete(&format!("/1.0/images/{}", encode_segment(&fp)))?;
                c.wait(&resp, None)?;
            }
            Ok(())
        }
        ImageCmd::Alias(cmd) => alias(c, cmd),
    }
}

/// An alias's target, else the full fingerprint of a fingerprint (or prefix).
pub fn resolve(c: &Client, image: &str) -> Result<String> {
    match c.get::<ImageAliasesEntry>(&format!("/1.0/images/aliases/{}", encode_segment(image))) {
        Ok(a) => return Ok(a.target),
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(e.into()),
    }
    match c.get::<Image>(&format!("/1.0/images/{}", encode_segment(image))) {
        Ok(img) => Ok(img.fingerprint),
        Err(e) if e.is_not_found() => bail!("Image not found: {image}"),
        Err(e) => Err(e.into()),
    }
}

fn import(c: &Client, file: &std::path::Path, aliases: &[String], public: bool) -> Result<()> {
    let filename = file
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let headers = [
        ("X-LXD-filename", filename.as_str()),
        ("X-LXD-public", if public { "true" } else { "false" }),
    ];
    let tty = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut last_shown = None::<Instant>;
    let mut stderr = std::io::stderr();
    let resp = c.upload("/1.0/images", &headers, file, |sent, total| {
        if !tty || total == 0 {
            return;
        }
        let now = Instant::now();
        if sent < total && last_shown.is_some_and(|t| now.duration_since(t).as_millis() < 100) {
            return;
        }
        last_shown = Some(now);
        let secs = now.duration_since(started).as_secs_f64().max(0.001);
        let _ = write!(
            stderr,
            "\rTransferring image: {}% ({}/s)   ",
            sent * 100 / total,
            size((sent as f64 / secs) as i64)
        );
        let _ = stderr.flush();
    })?;
    if tty {
        let _ = write!(stderr, "\r{}\r", " ".repeat(60));
        let _ = stderr.flush();
    }
    let op = c.wait(&resp, None)?;
    let fp = op.metadata["fingerprint"]
        .as_str()
        .context("the import finished without saying the image's fingerprint")?
        .to_string();
    for a in aliases {
        let post = ImageAliasesPost {
            name: a.clone(),
            target: fp.clone(),
            ..Default::default()
        };
        c.post("/1.0/images/aliases", &post)
            .with_context(|| format!("the image was imported as {fp}, but alias {a} could not be created"))?;
    }
    outln!("Image imported with fingerprint: {fp}");
    Ok(())
}

fn image_matches(img: &Image, filter: &str) -> bool {
    match filter.split_once('=') {
        Some((k, v)) => img.properties.get(k).is_some_and(|p| p.eq_ignore_ascii_case(v)),
        None => img.fingerprint.starts_with(filter) || img.aliases.iter().any(|a| a.name.starts_with(filter)),
    }
}

fn list(c: &Client, filters: &[String], format: Format) -> Result<()> {
    let mut images: Vec<Image> = c.get("/1.0/images?recursion=1")?;
    images.retain(|i| filters.iter().all(|f| image_matches(i, f)));
    images.sort_by(|a, b| {
        let key = |i: &Image| i.aliases.first().map(|a| a.name.clone()).unwrap_or_default();
        key(a).cmp(&key(b)).then(a.fingerprint.cmp(&b.fingerprint))
    });
    let mut t = Table::new([
        "ALIAS",
        "FINGERPRINT",
        "PUBLIC",
        "DESCRIPTION",
        "ARCHITECTURE",
        "TYPE",
        "SIZE",
        "UPLOAD DATE",
    ]);
    for i in &images {
        t.row(vec![
            i.aliases.iter().map(|a| a.name.as_str()).collect::<Vec<_>>().join("\n"),
            i.fingerprint.chars().take(12).collect(),
            if i.public { "yes" } else { "no" }.into(),
            i.properties.get("description").cloned().unwrap_or_default(),
            i.architecture.clone(),
            match i.kind {
                InstanceType::VirtualMachine => "VIRTUAL-MACHINE",
                _ => "CONTAINER",
            }
            .into(),
            size(i.size),
            long_date(&i.uploaded_at.0),
        ]);
    }
    print_list(format, &t, &images)
}

fn alias(c: &Client, cmd: AliasCmd) -> Result<()> {
    match cmd {
        AliasCmd::Create {
            alias,
            target,
            description,
        } => {
            let fp = resolve(c, &target)?;
            let post = ImageAliasesPost {
                name: alias,
                description,
                target: fp,
                ..Default::default()
            };
            c.post("/1.0/images/aliases", &post)?;
        }
        AliasCmd::Delete { alias } => {
            c.delete(&format!("/1.0/images/aliases/{}", encode_segment(&alias)))?;
        }
        AliasCmd::List { format } => {
            let mut aliases: Vec<ImageAliasesEntry> = c.get("/1.0/images/aliases?recursion=1")?;
            aliases.sort_by(|a, b| a.name.cmp(&b.name));
            let mut t = Table::new(["ALIAS", "FINGERPRINT", "TYPE", "DESCRIPTION"]);
            for a in &aliases {
                t.row(vec![
                    a.name.clone(),
                    a.target.chars().take(12).collect(),
                    match a.kind {
                        InstanceType::VirtualMachine => "VIRTUAL-MACHINE",
                        _ => "CONTAINER",
                    }
                    .into(),
                    a.description.clone(),
                ]);
            }
            print_list(format, &t, &aliases)?;
        }
    }
    Ok(())
}
