//! The image's metadata (`metadata.yaml` and `templates/`) and its packing, through
//! corral-image's packer, into a unified tarball, a split pair, or both.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use corral_image::{Compression, ImageMetadata, ImageTemplate};

use crate::error::{io, BuildError};
use crate::recipe::{FileKind, Recipe};

const HOSTNAME_TPL: &str = "{{ container.name }}\n";
const HOSTS_TPL: &str = "127.0.1.1\t{{ container.name }}\n\
                         127.0.0.1\tlocalhost\n\
                         ::1\t\tlocalhost ip6-localhost ip6-loopback\n\
                         ff02::1\t\tip6-allnodes\n\
                         ff02::2\t\tip6-allrouters\n";

/// The /etc/hosts the `hosts` generator writes into the rootfs for `name`.
pub(crate) fn hosts_file(name: &str) -> String {
    HOSTS_TPL.replace("{{ container.name }}", name)
}

/// Debian's name of this machine's architecture (the `architecture` property image servers
/// give, beside LXD's name in `architecture:`).
fn debian_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "i386",
        "arm" => "armhf",
        "powerpc64" => "ppc64el",
        "loongarch64" => "loong64",
        other => other,
    }
}

/// `metadata.yaml` for `recipe` made at `created`, and its templates written into `dir`.
pub(crate) fn metadata(recipe: &Recipe, created: i64, templates_dir: &Path) -> Result<ImageMetadata, BuildError> {
    let img = &recipe.image;
    let mut properties: BTreeMap<String, String> = BTreeMap::new();
    let mut set = |k: &str, v: &str| {
        properties.insert(k.to_string(), v.to_string());
    };
    set("os", &img.distribution);
    if let Some(r) = &img.release {
        set("release", r);
    }
    set("variant", &img.variant);
    set("description", &img.description);
    set("architecture", debian_architecture());
    set("serial", &corral_image::image_serial(created));
    set("name", &img.name);
    properties.extend(img.properties.clone());

    fs::create_dir_all(templates_dir).map_err(io("cannot make the templates directory"))?;
    let mut templates = BTreeMap::new();
    for f in &recipe.files {
        let Some(name) = f.template_name() else { continue };
        let (text, tpl) = match &f.kind {
            FileKind::Dump { .. } => continue,
            FileKind::Hostname { .. } => (HOSTNAME_TPL.to_string(), create_copy(&name)),
            FileKind::Hosts => (HOSTS_TPL.to_string(), create_copy(&name)),
            FileKind::Template {
                content,
                when,
                create_only,
                properties,
            } => (
                content.clone(),
                ImageTemplate {
                    when: when.clone(),
                    create_only: *create_only,
                    template: name.clone(),
                    properties: properties.clone(),
                },
            ),
        };
        fs::write(templates_dir.join(&name), text).map_err(io(format!("cannot write the template {name}")))?;
        templates.insert(f.path.clone(), tpl);
    }
    Ok(ImageMetadata {
        architecture: img.architecture.clone(),
        creation_date: created,
        expiry_date: if img.expiry_secs > 0 {
            created + img.expiry_secs
        } else {
            0
        },
        properties,
        templates,
    })
}

fn create_copy(name: &str) -> ImageTemplate {
    ImageTemplate {
        when: vec!["create".into(), "copy".into()],
        template: name.to_string(),
        ..Default::default()
    }
}

/// The file name suffix of a tarball compressed with `c`.
fn suffix(c: Compression) -> &'static str {
    match c {
        Compression::None => "tar",
        Compression::Gzip => "tar.gz",
        Compression::Xz => "tar.xz",
        Compression::Zstd => "tar.zst",
        Compression::Bzip2 => "tar.bz2",
    }
}

/// An image the build wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packed {
    /// The unified tarball, or the split image's metadata tarball.
    pub metadata: PathBuf,
    /// The split image's rootfs tarball.
    pub rootfs: Option<PathBuf>,
    /// Its fingerprint, as LXD computes it.
    pub fingerprint: String,
}

/// Files written so far, removed unless [`Written::keep`] is called: a build that fails
/// half-way leaves no output.
#[derive(Default)]
pub(crate) struct Written(Vec<PathBuf>);

impl Written {
    pub(crate) fn keep(mut self) {
        self.0.clear();
    }
}

impl Drop for Written {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = fs::remove_file(p);
        }
    }
}

pub(crate) fn pack_unified(
    rootfs: &Path,
    meta: &ImageMetadata,
    templates: &Path,
    dir: &Path,
    name: &str,
    c: Compression,
    written: &mut Written,
) -> Result<Packed, BuildError> {
    let out = dir.join(format!("{name}.{}", suffix(c)));
    let fingerprint = corral_image::pack_unified(rootfs, meta, Some(templates), &out, c)?;
    written.0.push(out.clone());
    Ok(Packed {
        metadata: out,
        rootfs: None,
        fingerprint,
    })
}

pub(crate) fn pack_split(
    rootfs: &Path,
    meta: &ImageMetadata,
    templates: &Path,
    dir: &Path,
    name: &str,
    c: Compression,
    written: &mut Written,
) -> Result<Packed, BuildError> {
    let m = dir.join(format!("{name}.meta.{}", suffix(c)));
    let r = dir.join(format!("{name}.rootfs.{}", suffix(c)));
    let fingerprint = corral_image::pack_split(rootfs, meta, Some(templates), &m, &r, c)?;
    written.0.push(m.clone());
    written.0.push(r.clone());
    Ok(Packed {
        metadata: m,
        rootfs: Some(r),
        fingerprint,
    })
}
