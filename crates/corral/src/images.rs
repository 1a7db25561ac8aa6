//! `corral image ...`: list, show, info, edit, delete, aliases, copy from image servers,
//! export-simplestreams; import and export are in image_files.rs.
//!
//! On a simplestreams remote, `list` and `info` read the server's tree here (with
//! corral-simplestreams); on an LXD-protocol remote they ask its API (an untrusted client
//! sees its public images). `copy REMOTE:IMAGE TARGET:` asks the target daemon to pull the
//! image from the remote (`source.server`, `protocol`, `certificate`).

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::Subcommand;
use corral_api::{
    Image, ImageAlias, ImageAliasesEntry, ImageAliasesPost, ImagePut, ImagesPost, ImagesPostSource, InstanceType,
};
use corral_client::multipart::{self, MultipartReader};
use corral_client::{encode_segment, Client};

use crate::output::{date, long_date, print_list, size, yaml, Format, Table};
use crate::remotes::{check_remote_arg, current_remote, image_server, local_name, ImageServer};
use crate::{editor, image_files};

#[derive(Subcommand)]
#[command(defer = true)]
pub enum ImageCmd {
    /// Import an image: a unified file, a split image's metadata and rootfs files, an unpacked
    /// image directory, or a URL the daemon downloads
    #[command(after_help = "KEY=VALUE arguments set properties of the new image.\n\n\
                      A DIRECTORY holds an unpacked image: metadata.yaml, rootfs/ and (if any) templates/. It is \
                      packed here into a unified zstd tarball as it is sent (metadata.yaml first, as written, dated \
                      from its creation_date; then templates/ and rootfs/, each directory's entries sorted by name, \
                      with their own owners, modes, mtimes and xattrs). The image's fingerprint is the sha256 of \
                      that tarball: the same directory gives the same fingerprint again. Run it as root, to read \
                      every file of the rootfs.\n\n\
                      A URL (http:// or https://) is downloaded by the daemon, as LXD does: the URL's answer names \
                      the image file in an LXD-Image-URL (or Incus-Image-URL) header, on the same server, and its \
                      sha256 in LXD-Image-Hash, which must match; an answer without those headers must be the \
                      image file itself. Nothing else is contacted.\n\nExamples:\n  \
                      corral image import busybox.tar.xz --alias busybox\n  \
                      corral image import meta.tar.xz rootfs.squashfs --alias debian os=Debian release=12\n  \
                      corral image import ./busybox-unpacked --alias busybox\n  \
                      corral image import https://images.example.net/busybox --alias busybox")]
    Import {
        #[arg(required = true, value_name = "FILE|DIRECTORY|URL [ROOTFS] [KEY=VALUE...]")]
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
    /// Copy an image from an image server (or another daemon) to this one
    #[command(
        alias = "cp",
        after_help = "Examples:\n  corral image copy images:debian/12 local: --alias debian12 --auto-update\n  \
                      corral image copy h2:busybox local: --copy-aliases"
    )]
    Copy {
        /// REMOTE:ALIAS or REMOTE:FINGERPRINT
        source: String,
        /// The daemon to copy it to (`local:`, or a remote)
        target: String,
        /// Alias for the copy (repeatable)
        #[arg(long = "alias", value_name = "ALIAS")]
        aliases: Vec<String>,
        /// Keep the copy up to date from the source
        #[arg(long)]
        auto_update: bool,
        /// Copy the source image's aliases too
        #[arg(long)]
        copy_aliases: bool,
        /// Make the copy public
        #[arg(long)]
        public: bool,
    },
    /// Write images as a static simplestreams tree that any web server can serve
    #[command(
        after_help = "Without IMAGE, every image of the server. Adds to a tree already in DIR.\n\n\
                      Examples:\n  corral image export-simplestreams /srv/images\n  \
                      corral image export-simplestreams /srv/images busybox debian12\n  \
                      (then: corral remote add mine http://HOST/ --protocol simplestreams)"
    )]
    ExportSimplestreams {
        dir: PathBuf,
        #[arg(value_name = "IMAGE")]
        images: Vec<String>,
    },
    /// Build an image from a recipe, on this machine (as root; no daemon needed)
    #[command(
        after_help = "Prints one line per result: `unified FINGERPRINT FILE`, `split FINGERPRINT META ROOTFS` \
                      or `rootfs DIR`. With SOURCE_DATE_EPOCH set, that is the creation date and no mtime in \
                      the image is later: the same tree gives the same fingerprint. The recipe format is in \
                      docs/image-recipes.md.\n\nExamples:\n  corral image build tests/images/busybox.yaml -o /tmp/img \
                      --format both\n  corral image build bookworm.yaml --rootfs-only /srv/rootfs/bookworm \
                      --mirror http://deb.example/debian\n  corral image import /tmp/img/busybox.tar.xz --alias busybox"
    )]
    Build(crate::image_build::BuildArgs),
}

/// `corral publish`.
#[derive(clap::Args)]
pub struct PublishArgs {
    /// INSTANCE or INSTANCE/SNAPSHOT
    pub source: String,
    /// The remote to publish on (`local:`, the default: the instance's)
    pub target: Option<String>,
    /// Alias for the new image (repeatable)
    #[arg(long = "alias", value_name = "ALIAS")]
    pub aliases: Vec<String>,
    /// Make the image public
    #[arg(long)]
    pub public: bool,
    /// zstd (default), xz, gzip or none
    #[arg(long, value_name = "ALGORITHM")]
    pub compression: Option<String>,
    /// Stop a running instance first (it is frozen while read otherwise)
    #[arg(short = 'f', long)]
    pub force: bool,
    /// KEY=VALUE properties of the new image
    #[arg(long = "property", value_name = "KEY=VALUE")]
    pub properties: Vec<String>,
}

/// `publish INSTANCE[/SNAPSHOT]`: POST /1.0/images from the instance; prints the fingerprint.
pub fn publish(c: &Client, a: PublishArgs) -> Result<()> {
    if let Some(t) = &a.target {
        check_remote_arg(t)?;
    }
    let name = local_name(&a.source)?.to_string();
    let kind = if name.contains('/') { "snapshot" } else { "instance" };
    if a.force && kind == "instance" {
        let state: serde_json::Value = c.get(&format!("/1.0/instances/{}/state", encode_segment(&name)))?;
        if state["status"] == "Running" {
            crate::instances::state_action(c, &name, "stop", true, -1)?;
        }
    }
    let post = ImagesPost {
        public: a.public,
        compression_algorithm: a.compression.clone().unwrap_or_default(),
        properties: crate::instances::parse_pairs(&a.properties)?,
        aliases: a
            .aliases
            .iter()
            .map(|n| ImageAlias {
                name: n.clone(),
                description: String::new(),
            })
            .collect(),
        source: Some(ImagesPostSource {
            kind: kind.into(),
            name: name.clone(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let resp = c.post("/1.0/images", &post)?;
    let op = c.wait(&resp, None)?;
    let fp = op
        .metadata
        .get("fingerprint")
        .and_then(|f| f.as_str())
        .unwrap_or_default();
    outln!("Instance published with fingerprint: {fp}");
    Ok(())
}

#[derive(Subcommand)]
#[command(defer = true)]
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
    // A simplestreams remote is no daemon: its tree is read here.
    if let Some(server) = image_server(current_remote())?.filter(|s| s.protocol == "simplestreams") {
        return match cmd {
            ImageCmd::List { filters, format } => list_simplestreams(&server, &filters, format),
            ImageCmd::Info { image } => {
                let img = simplestreams_image(&server, local_name(&image)?)?;
                out!("{}", render_info(&img));
                Ok(())
            }
            ImageCmd::Show { image } => {
                let img = simplestreams_image(&server, local_name(&image)?)?;
                out!("{}", yaml(&img)?);
                Ok(())
            }
            _ => bail!(
                "remote {:?} is a simplestreams image server: it can only be listed, shown and copied from",
                server.name
            ),
        };
    }
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
        ImageCmd::Copy {
            source,
            target,
            aliases,
            auto_update,
            copy_aliases,
            public,
        } => copy(c, &source, &target, aliases, auto_update, copy_aliases, public),
        ImageCmd::ExportSimplestreams { dir, images } => export_simplestreams(c, &dir, &images),
        ImageCmd::Build(a) => crate::image_build::run(a),
    }
}

/// A client of a simplestreams remote, with its pinned certificate if it has one.
fn simplestreams_client(server: &ImageServer) -> Result<corral_simplestreams::Client> {
    let options = corral_simplestreams::ClientOptions {
        certificate: Some(server.certificate.clone()).filter(|c| !c.trim().is_empty()),
        ..Default::default()
    };
    Ok(corral_simplestreams::Client::new(&server.url, options)?)
}

/// The server's container images, as LXD's `Image`s (the newest version of each product has
/// the aliases).
fn simplestreams_images(server: &ImageServer) -> Result<Vec<Image>> {
    let client = simplestreams_client(server)?;
    let catalog = client.catalog()?;
    Ok(catalog.images.iter().map(from_simplestreams).collect())
}

fn from_simplestreams(r: &corral_simplestreams::RemoteImage) -> Image {
    let mut properties = std::collections::BTreeMap::new();
    for (k, v) in [
        ("os", &r.os),
        ("release", &r.release),
        ("variant", &r.variant),
        ("serial", &r.version),
    ] {
        if !v.is_empty() {
            properties.insert(k.to_string(), v.clone());
        }
    }
    let desc = format!("{} {} {} ({})", r.os, r.release, r.arch, r.version);
    properties.insert("description".into(), desc.trim().to_string());
    Image {
        fingerprint: r.fingerprint.clone(),
        architecture: r.architecture.clone(),
        size: r.size() as i64,
        public: true,
        aliases: r
            .aliases
            .iter()
            .map(|a| ImageAlias {
                name: a.clone(),
                description: String::new(),
            })
            .collect(),
        properties,
        kind: InstanceType::Container,
        ..Default::default()
    }
}

/// One image of a simplestreams server, by alias or fingerprint (prefix).
fn simplestreams_image(server: &ImageServer, image: &str) -> Result<Image> {
    let client = simplestreams_client(server)?;
    let catalog = client.catalog()?;
    let arch = corral_image::host_architecture();
    let found = catalog
        .find(Some(image), None, arch)
        .or_else(|_| catalog.find(None, Some(image), arch))
        .map_err(|e| anyhow!("{e} (remote {:?})", server.name))?;
    Ok(from_simplestreams(found))
}

fn list_simplestreams(server: &ImageServer, filters: &[String], format: Format) -> Result<()> {
    let filters = crate::list::without_remote(filters)?;
    let mut images = simplestreams_images(server)?;
    images.retain(|i| filters.iter().all(|f| image_matches(i, f)));
    print_images(images, format)
}

/// `image copy REMOTE:IMAGE TARGET:`: the target daemon pulls it.
fn copy(
    c: &Client,
    source: &str,
    target: &str,
    mut aliases: Vec<String>,
    auto_update: bool,
    copy_aliases: bool,
    public: bool,
) -> Result<()> {
    check_remote_arg(target)?;
    let Some((remote, image)) = source.split_once(':') else {
        bail!("the source must be on an image server: REMOTE:IMAGE (see `corral remote list`)");
    };
    if remote == current_remote() {
        bail!("the image {source:?} is already on remote {remote:?}: give it another alias with `corral image alias create`");
    }
    let server = image_server(remote)?.ok_or_else(|| {
        anyhow!("Remote {remote:?} doesn't exist or is not an image server (see `corral remote list`)")
    })?;
    if image.is_empty() {
        bail!("no image given on remote {remote:?}");
    }
    if copy_aliases {
        let img = if server.protocol == "simplestreams" {
            simplestreams_image(&server, image)?
        } else {
            let rc = crate::remotes::client_for(remote)?;
            let fp = resolve_on(&rc, image)?;
            rc.get::<Image>(&image_path(&fp))?
        };
        for a in img.aliases {
            if !aliases.contains(&a.name) {
                aliases.push(a.name);
            }
        }
    }
    let post = ImagesPost {
        auto_update,
        public,
        aliases: aliases
            .iter()
            .map(|a| ImageAlias {
                name: a.clone(),
                description: String::new(),
            })
            .collect(),
        source: Some(ImagesPostSource {
            kind: "image".into(),
            mode: "pull".into(),
            server: server.url.clone(),
            protocol: server.protocol.clone(),
            certificate: server.certificate.clone(),
            alias: image.to_string(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let resp = c.post("/1.0/images", &post)?;
    let op = c.wait(&resp, None)?;
    let fp = op
        .metadata
        .get("fingerprint")
        .and_then(|f| f.as_str())
        .unwrap_or_default()
        .to_string();
    if fp.is_empty() {
        outln!("Image copied successfully!");
    } else {
        outln!("Image copied successfully! ({fp})");
    }
    Ok(())
}

/// An alias's target (else a fingerprint) on a daemon, without a remote prefix.
fn resolve_on(c: &Client, image: &str) -> Result<String> {
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

/// Exports image `fp` from the daemon into `dir`: its files (metadata, then rootfs for a
/// split image).
fn export_files(c: &Client, fp: &str, dir: &Path) -> Result<corral_image::ImageFiles> {
    let (resp, mut body) = c.download(&format!("{}/export", image_path(fp)))?;
    let content_type = resp.header("Content-Type").unwrap_or_default().to_string();
    let save = |from: &mut dyn Read, to: &Path| image_files::save(from, to, &mut |_| {});
    let (meta, rootfs) = (dir.join(format!("{fp}.meta")), dir.join(format!("{fp}.rootfs")));
    match multipart::boundary(&content_type) {
        Some(boundary) => {
            let mut parts = MultipartReader::new(body, &boundary);
            let (mut got_meta, mut got_rootfs) = (false, false);
            while let Some(part) = parts.next_part().context("cannot read the export")? {
                match part.name.as_str() {
                    "metadata" => {
                        save(&mut parts, &meta)?;
                        got_meta = true;
                    }
                    "rootfs" => {
                        save(&mut parts, &rootfs)?;
                        got_rootfs = true;
                    }
                    other => bail!("the export of {fp} has an unexpected part {other:?}"),
                }
            }
            if !(got_meta && got_rootfs) {
                bail!("the export of split image {fp} lacks its metadata or rootfs");
            }
            Ok(corral_image::ImageFiles::split(meta, rootfs))
        }
        None => {
            save(&mut body, &meta)?;
            Ok(corral_image::ImageFiles::unified(meta))
        }
    }
}

/// `image export-simplestreams DIR [IMAGE...]`.
fn export_simplestreams(c: &Client, dir: &Path, images: &[String]) -> Result<()> {
    let fps = if images.is_empty() {
        let all: Vec<Image> = c.get("/1.0/images?recursion=1")?;
        all.into_iter().map(|i| i.fingerprint).collect()
    } else {
        images.iter().map(|i| resolve(c, i)).collect::<Result<Vec<_>>>()?
    };
    if fps.is_empty() {
        bail!("no image to export");
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // Staged next to the tree (same filesystem), removed whatever happens.
    let stage = dir.join(format!(".export-{}", std::process::id()));
    std::fs::create_dir_all(&stage).with_context(|| format!("cannot create {}", stage.display()))?;
    struct Cleanup<'a>(&'a Path);
    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(self.0);
        }
    }
    let _cleanup = Cleanup(&stage);
    let mut new = Vec::new();
    for fp in &fps {
        let img: Image = c.get(&image_path(fp))?;
        let files = export_files(c, fp, &stage)?;
        let prop = |k: &str| img.properties.get(k).filter(|v| !v.is_empty()).cloned();
        new.push(corral_simplestreams::NewImage {
            files: Some(files),
            aliases: img.aliases.iter().map(|a| a.name.clone()).collect(),
            os: prop("os"),
            release: prop("release"),
            variant: prop("variant"),
            serial: prop("serial"),
        });
    }
    corral_simplestreams::write_tree(dir, &new)
        .with_context(|| format!("cannot write the tree in {}", dir.display()))?;
    outln!("{} image(s) written to {}", fps.len(), dir.display());
    Ok(())
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
    print_images(images, format)
}

fn print_images(mut images: Vec<Image>, format: Format) -> Result<()> {
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
