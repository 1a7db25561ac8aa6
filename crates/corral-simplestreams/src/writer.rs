//! Writing a static simplestreams tree that any web server can serve:
//!
//! ```text
//! <root>/streams/v1/index.json
//! <root>/streams/v1/images.json
//! <root>/images/<fingerprint>/meta.tar.xz + root.tar.xz   (split image)
//! <root>/images/<fingerprint>/image.tar.gz                 (unified image)
//! ```
//!
//! A split image gets both metadata item types (`incus.tar.xz` for Incus, `lxd.tar.xz` for
//! LXD, pointing at the same file) with their combined hashes, and a `root.tar.xz` or
//! `squashfs` item; a unified image gets `incus_combined.tar.gz` and `lxd_combined.tar.gz`.
//! Item names follow the convention, not the files' real compression: clients recognise
//! the format by its magic bytes. Writing into an existing tree adds to it (an image already
//! there is replaced); the documents are written under temporary names and renamed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use corral_image::{Compression, FileFormat, ImageFiles};

use crate::fetch::hash_file;
use crate::resolve::server_arch;
use crate::types::*;
use crate::{Error, IMAGES_PATH, INDEX_PATH};

/// An image to add to a tree.
#[derive(Debug, Clone, Default)]
pub struct NewImage {
    pub files: Option<ImageFiles>,
    /// Its aliases on the server (`"busybox/1.36"`...).
    pub aliases: Vec<String>,
    /// Defaults: metadata.yaml's `os` property, else `"unknown"`...
    pub os: Option<String>,
    /// ... its `release` property, else `"unknown"` ...
    pub release: Option<String>,
    /// ... its `variant` property, else `"default"` ...
    pub variant: Option<String>,
    /// ... its `serial` property, else the creation date as `YYYYMMDD_HH:MM`.
    pub serial: Option<String>,
}

impl NewImage {
    pub fn new(files: ImageFiles, aliases: &[&str]) -> NewImage {
        NewImage {
            files: Some(files),
            aliases: aliases.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `YYYYMMDD_HH:MM` (UTC) of a unix time.
fn serial_of(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}_{:02}:{:02}", secs / 3600, secs % 3600 / 60)
}

fn extension(format: FileFormat) -> &'static str {
    match format {
        FileFormat::Tarball(Compression::None) => ".tar",
        FileFormat::Tarball(Compression::Gzip) => ".tar.gz",
        FileFormat::Tarball(Compression::Xz) => ".tar.xz",
        FileFormat::Tarball(Compression::Zstd) => ".tar.zst",
        FileFormat::Tarball(Compression::Bzip2) => ".tar.bz2",
        FileFormat::Squashfs => ".squashfs",
        _ => "",
    }
}

/// Copies `from` into the tree at `rel`; its size and sha256.
fn place(root: &Path, rel: &str, from: &Path) -> Result<(u64, String), Error> {
    let to = root.join(rel);
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let tmp = to.with_extension("tmp");
    std::fs::copy(from, &tmp).map_err(io(from))?;
    std::fs::rename(&tmp, &to).map_err(io(&to))?;
    hash_file(&to).map_err(io(&to))
}

fn write_json(root: &Path, rel: &str, value: &impl serde::Serialize) -> Result<(), Error> {
    let path = root.join(rel);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let tmp: PathBuf = path.with_extension("json.tmp");
    let text = serde_json::to_vec_pretty(value).map_err(|e| Error::Unsupported(e.to_string()))?;
    std::fs::write(&tmp, text).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))
}

/// Adds `images` to the tree at `root` (made if needed); the product file as written.
pub fn write_tree(root: &Path, images: &[NewImage]) -> Result<Products, Error> {
    let products_path = root.join(IMAGES_PATH);
    let mut doc: Products = match std::fs::read(&products_path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::Parse {
            url: products_path.display().to_string(),
            detail: e.to_string(),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Products::default(),
        Err(e) => return Err(io(&products_path)(e)),
    };
    doc.content_id = "images".into();
    doc.datatype = "image-downloads".into();
    doc.format = "products:1.0".into();
    for img in images {
        let files = img
            .files
            .as_ref()
            .ok_or_else(|| Error::Unsupported("an image to write needs its files".into()))?;
        let info = corral_image::inspect(files)?;
        let props = &info.metadata.properties;
        let pick = |given: &Option<String>, key: &str, default: &str| {
            given
                .clone()
                .or_else(|| props.get(key).cloned())
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| default.to_string())
        };
        let os = pick(&img.os, "os", "unknown");
        let release = pick(&img.release, "release", "unknown");
        let variant = pick(&img.variant, "variant", "default");
        let serial = pick(&img.serial, "serial", &serial_of(info.metadata.creation_date));
        let arch = server_arch(&info.metadata.architecture).to_string();
        let fp = &info.fingerprint;
        let dir = format!("images/{fp}");
        let mut items = BTreeMap::new();
        match &files.rootfs {
            Some(rootfs) => {
                let meta_rel = format!("{dir}/meta{}", extension(corral_image::detect_format(&files.metadata)?));
                let rootfs_format = corral_image::detect_format(rootfs)?;
                let root_rel = format!("{dir}/rootfs{}", extension(rootfs_format));
                let (meta_size, meta_sha) = place(root, &meta_rel, &files.metadata)?;
                let (root_size, root_sha) = place(root, &root_rel, rootfs)?;
                let squashfs = rootfs_format == FileFormat::Squashfs;
                let mut meta = Item {
                    path: meta_rel,
                    sha256: meta_sha,
                    size: meta_size,
                    ..Default::default()
                };
                if squashfs {
                    meta.combined_squashfs_sha256 = fp.clone();
                } else {
                    meta.combined_sha256 = fp.clone();
                    meta.combined_rootxz_sha256 = fp.clone();
                }
                for ftype in [FTYPE_INCUS_META, FTYPE_LXD_META] {
                    let item = Item {
                        ftype: ftype.into(),
                        ..meta.clone()
                    };
                    items.insert(ftype.to_string(), item);
                }
                let ftype = if squashfs { FTYPE_SQUASHFS } else { FTYPE_ROOT_TAR_XZ };
                let item = Item {
                    ftype: ftype.into(),
                    path: root_rel,
                    sha256: root_sha,
                    size: root_size,
                    ..Default::default()
                };
                items.insert(ftype.to_string(), item);
            }
            None => {
                let rel = format!("{dir}/image{}", extension(info.rootfs_format));
                let (size, sha) = place(root, &rel, &files.metadata)?;
                for ftype in [FTYPE_INCUS_COMBINED, FTYPE_LXD_COMBINED] {
                    let item = Item {
                        ftype: ftype.into(),
                        path: rel.clone(),
                        sha256: sha.clone(),
                        size,
                        ..Default::default()
                    };
                    items.insert(ftype.to_string(), item);
                }
            }
        }
        let name = format!("{os}:{release}:{arch}:{variant}").to_lowercase();
        // An alias names one product per architecture: the one it was last given to.
        for (other, p) in doc.products.iter_mut() {
            if *other != name && p.arch == arch {
                let rest: Vec<&str> = p.alias_list().filter(|a| !img.aliases.iter().any(|x| x == a)).collect();
                p.aliases = rest.join(",");
            }
        }
        let product = doc.products.entry(name).or_default();
        product.arch = arch;
        product.os = os.clone();
        product.release = release.clone();
        product.release_title = release;
        product.variant = variant;
        let mut aliases: Vec<String> = product.alias_list().map(str::to_string).collect();
        for a in &img.aliases {
            if !aliases.contains(a) {
                aliases.push(a.clone());
            }
        }
        product.aliases = aliases.join(",");
        product.versions.insert(
            serial,
            ProductVersion {
                items,
                ..Default::default()
            },
        );
    }
    write_json(root, IMAGES_PATH, &doc)?;
    let index = Stream {
        format: "index:1.0".into(),
        index: BTreeMap::from([(
            "images".to_string(),
            StreamIndex {
                datatype: "image-downloads".into(),
                path: IMAGES_PATH.into(),
                products: doc.products.keys().cloned().collect(),
                format: "products:1.0".into(),
                ..Default::default()
            },
        )]),
        ..Default::default()
    };
    write_json(root, INDEX_PATH, &index)?;
    Ok(doc)
}
