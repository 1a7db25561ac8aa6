//! `corral image ...`: list, show, info, edit, delete, aliases; import and export are in
//! image_files.rs.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Subcommand;
use corral_api::{Image, ImageAliasesEntry, ImageAliasesPost, ImagePut, InstanceType};
use corral_client::{encode_segment, Client};

use crate::output::{date, long_date, print_list, size, yaml, Format, Table};
use crate::remotes::local_name;
use crate::{editor, image_files};

#[derive(Subcommand)]
pub enum ImageCmd {
    /// Import an image: a unified file, or a split image's metadata and rootfs files
    #[command(after_help = "KEY=VALUE arguments set properties of the new image.\n\nExamples:\n  \
                      corral image import busybox.tar.xz --alias busybox\n  \
                      corral image import meta.tar.xz rootfs.squashfs --alias debian os=Debian release=12")]
    Import {
        #[arg(required = true, value_name = "FILE [ROOTFS] [KEY=VALUE...]")]
        args: Vec<String>,
        /// Alias for the new image (repeatable)
        #[arg(long = "alias", value_name = "ALIAS")]
        aliases: Vec<String>,
        /// Make the image public
        #[arg(long)]
        public: bool,
    },
    /// Export an image to files: one for a unified image, two for a split one
    #[command(
        after_help = "TARGET defaults to the current directory. In a directory, the files are named as the \
                      server names them. Given a file name, a unified image is written to it (with the image's \
                      extension, .tar.gz..., added if it lacks it), and a split image to TARGET (metadata) and \
                      TARGET.root (rootfs).\n\nExamples:\n  corral image export busybox\n  corral image export \
                      busybox /tmp/images/\n  corral image export debian ./debian   # ./debian and ./debian.root"
    )]
    Export { image: String, target: Option<PathBuf> },
    /// Show useful information about an image
    #[command(after_help = "Example:\n  corral image info busybox")]
    Info { image: String },
    /// Edit an image's properties as YAML: in $EDITOR, or from stdin if it is not a terminal
    #[command(
        after_help = "The writable fields are public, auto_update, properties, expires_at and profiles.\n\n\
                      Examples:\n  corral image edit busybox\n  corral image show busybox | sed 's/1.35/1.36/' | \
                      corral image edit busybox"
    )]
    Edit { image: String },
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
        ImageCmd::Import { args, aliases, public } => image_files::import(c, &args, &aliases, public),
        ImageCmd::Export { image, target } => image_files::export(c, &image, target.as_deref()),
        ImageCmd::Info { image } => {
            let fp = resolve(c, &image)?;
            let img: Image = c.get(&image_path(&fp))?;
            out!("{}", render_info(&img));
            Ok(())
        }
        ImageCmd::Edit { image } => edit(c, &image),
        ImageCmd::List { filters, format } => list(c, &filters, format),
        ImageCmd::Show { image } => {
            let fp = resolve(c, &image)?;
            let img: Image = c.get(&image_path(&fp))?;
            out!("{}", yaml(&img)?);
            Ok(())
        }
        ImageCmd::Delete { images } => {
            for image in images {
                let fp = resolve(c, &image)?;
                let resp = c.delete(&image_path(&fp))?;
                c.wait(&resp, None)?;
            }
            Ok(())
        }
        ImageCmd::Alias(cmd) => alias(c, cmd),
    }
}

/// An alias's target, else the full fingerprint of a fingerprint (or prefix).
pub fn resolve(c: &Client, image: &str) -> Result<String> {
    let image = local_name(image)?;
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

pub fn image_path(fingerprint: &str) -> String {
    format!("/1.0/images/{}", encode_segment(fingerprint))
}

/// What `lxc image info` prints.
fn render_info(img: &Image) -> String {
    use std::fmt::Write as _;
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let mut o = String::new();
    let _ = writeln!(o, "Fingerprint: {}", img.fingerprint);
    let _ = writeln!(o, "Size: {:.2}MB", img.size as f64 / 1024.0 / 1024.0);
    let _ = writeln!(o, "Architecture: {}", img.architecture);
    let kind = match img.kind {
        InstanceType::VirtualMachine => "virtual-machine",
        _ => "container",
    };
    let _ = writeln!(o, "Type: {kind}");
    let _ = writeln!(o, "Public: {}", yes_no(img.public));
    let _ = writeln!(o, "Timestamps:");
    let created = date(&img.created_at.0);
    if !created.is_empty() {
        let _ = writeln!(o, "    Created: {created}");
    }
    let _ = writeln!(o, "    Uploaded: {}", date(&img.uploaded_at.0));
    let never = |t: String| if t.is_empty() { "never".to_string() } else { t };
    let _ = writeln!(o, "    Expires: {}", never(date(&img.expires_at.0)));
    let _ = writeln!(o, "    Last used: {}", never(date(&img.last_used_at.0)));
    let _ = writeln!(o, "Properties:");
    for (k, v) in &img.properties {
        let _ = writeln!(o, "    {k}: {v}");
    }
    let _ = writeln!(o, "Aliases:");
    for a in &img.aliases {
        if a.description.is_empty() {
            let _ = writeln!(o, "    - {}", a.name);
        } else {
            let _ = writeln!(o, "    - {} ({})", a.name, a.description);
        }
    }
    let _ = writeln!(o, "Cached: {}", yes_no(img.cached));
    let _ = writeln!(
        o,
        "Auto update: {}",
        if img.auto_update { "enabled" } else { "disabled" }
    );
    if let Some(src) = &img.update_source {
        let _ = writeln!(o, "Source:");
        let _ = writeln!(o, "    Server: {}", src.server);
        let _ = writeln!(o, "    Protocol: {}", src.protocol);
        let _ = writeln!(o, "    Alias: {}", src.alias);
    }
    if img.profiles.is_empty() {
        let _ = writeln!(o, "Profiles: []");
    } else {
        let _ = writeln!(o, "Profiles:");
        for p in &img.profiles {
            let _ = writeln!(o, "    - {p}");
        }
    }
    o
}

const EDIT_HEADER: &str = "\
### This is a YAML representation of the image properties.
### Any line starting with a '# will be ignored.
###
### Each property is represented by a single line:
### An example would be:
###  description: My custom image
";

/// `image edit`: the writable fields as YAML, from stdin when it is not a terminal, otherwise
/// in the editor, written back with the ETag read.
fn edit(c: &Client, image: &str) -> Result<()> {
    let path = image_path(&resolve(c, image)?);
    if let Some(put) = editor::stdin_yaml::<ImagePut>("an image's properties")? {
        c.put(&path, &put)?;
        return Ok(());
    }
    let (img, etag) = c.get_with_etag::<Image>(&path)?;
    let text = format!("{EDIT_HEADER}{}", yaml(&writable(img))?);
    editor::edit_yaml(&text, |put: ImagePut| {
        c.put_if_match(&path, &put, etag.as_deref())?;
        Ok(())
    })
}

fn writable(img: Image) -> ImagePut {
    ImagePut {
        auto_update: img.auto_update,
        properties: img.properties,
        public: img.public,
        expires_at: img.expires_at,
        profiles: Some(img.profiles),
    }
}

fn image_matches(img: &Image, filter: &str) -> bool {
    match filter.split_once('=') {
        Some((k, v)) => img.properties.get(k).is_some_and(|p| p.eq_ignore_ascii_case(v)),
        None => img.fingerprint.starts_with(filter) || img.aliases.iter().any(|a| a.name.starts_with(filter)),
    }
}

fn list(c: &Client, filters: &[String], format: Format) -> Result<()> {
    let filters = crate::list::without_remote(filters)?;
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
