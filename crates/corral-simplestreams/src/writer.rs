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

/// One file of an image on a server: where it is (relative to the server's root), its size,
/// its sha256 and its format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedFile {
    pub path: String,
    pub size: u64,
    pub sha256: String,
    pub format: FileFormat,
}

/// An image as a server offers it: its fingerprint, the names of its product, and its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedImage {
    pub fingerprint: String,
    /// The architecture as LXD names it (`"x86_64"`).
    pub architecture: String,
    pub os: String,
    pub release: String,
    pub variant: String,
    /// The version's serial (`YYYYMMDD_HH:MM`).
    pub serial: String,
    pub aliases: Vec<String>,
    /// The unified tarball; or the metadata tarball, then the rootfs.
    pub files: Vec<ServedFile>,
}

/// The items of one version: both metadata item types (or both unified ones), and the rootfs.
fn items_of(img: &ServedImage) -> BTreeMap<String, Item> {
    let fp = &img.fingerprint;
    let mut items = BTreeMap::new();
    let item = |f: &ServedFile, ftype: &str| Item {
        ftype: ftype.into(),
        path: f.path.clone(),
        sha256: f.sha256.clone(),
        size: f.size,
        ..Default::default()
    };
    match img.files.as_slice() {
        [meta_file, root_file] => {
            let squashfs = root_file.format == FileFormat::Squashfs;
            for ftype in [FTYPE_INCUS_META, FTYPE_LXD_META] {
                let mut meta = item(meta_file, ftype);
                if squashfs {
                    meta.combined_squashfs_sha256 = fp.clone();
                } else {
                    meta.combined_sha256 = fp.clone();
                    meta.combined_rootxz_sha256 = fp.clone();
                }
                items.insert(ftype.to_string(), meta);
            }
            let ftype = if squashfs { FTYPE_SQUASHFS } else { FTYPE_ROOT_TAR_XZ };
            items.insert(ftype.to_string(), item(root_file, ftype));
        }
        files => {
            for f in files.iter().take(1) {
                for ftype in [FTYPE_INCUS_COMBINED, FTYPE_LXD_COMBINED] {
                    items.insert(ftype.to_string(), item(f, ftype));
                }
            }
        }
    }
    items
}

/// Adds `img` to the product file `doc` (an image already there under its serial is replaced;
/// its aliases are taken from other products of the same architecture).
pub fn add_image(doc: &mut Products, img: &ServedImage) {
    doc.content_id = "images".into();
    doc.datatype = "image-downloads".into();
    doc.format = "products:1.0".into();
    let arch = server_arch(&img.architecture).to_string();
    let name = format!("{}:{}:{arch}:{}", img.os, img.release, img.variant).to_lowercase();
    // An alias names one product per architecture: the one it was last given to.
    for (other, p) in doc.products.iter_mut() {
        if *other != name && p.arch == arch {
            let rest: Vec<&str> = p.alias_list().filter(|a| !img.aliases.iter().any(|x| x == a)).collect();
            p.aliases = rest.join(",");
        }
    }
    let product = doc.products.entry(name).or_default();
    product.arch = arch;
    product.os = img.os.clone();
    product.release = img.release.clone();
    product.release_title = img.release.clone();
    product.variant = img.variant.clone();
    let mut aliases: Vec<String> = product.alias_list().map(str::to_string).collect();
    for a in &img.aliases {
        if !aliases.contains(a) {
            aliases.push(a.clone());
        }
    }
    product.aliases = aliases.join(",");
    product.versions.insert(
        img.serial.clone(),
        ProductVersion {
            items: items_of(img),
            ..Default::default()
        },
    );
}

/// The index of a tree whose only product file is `doc` at [`IMAGES_PATH`].
pub fn index_of(doc: &Products) -> Stream {
    Stream {
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
    }
}

/// The product names of an image (`os`, `release`, `variant`, `serial`): what `given` says, else
/// its metadata.yaml's properties, else defaults (`unknown`, `default`, the creation date).
pub fn names_of(properties: &BTreeMap<String, String>, creation_date: i64, given: [Option<&str>; 4]) -> [String; 4] {
    let pick = |given: Option<&str>, key: &str, default: &str| {
        given
            .map(str::to_string)
            .or_else(|| properties.get(key).cloned())
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| default.to_string())
    };
    [
        pick(given[0], "os", "unknown"),
        pick(given[1], "release", "unknown"),
        pick(given[2], "variant", "default"),
        pick(given[3], "serial", &serial_of(creation_date)),
    ]
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
    for img in images {
        let files = img
            .files
            .as_ref()
            .ok_or_else(|| Error::Unsupported("an image to write needs its files".into()))?;
        let info = corral_image::inspect(files)?;
        let [os, release, variant, serial] = names_of(
            &info.metadata.properties,
            info.metadata.creation_date,
            [&img.os, &img.release, &img.variant, &img.serial].map(|g| g.as_deref()),
        );
        let fp = &info.fingerprint;
        let dir = format!("images/{fp}");
        let mut served = Vec::new();
        let mut serve = |rel: String, from: &Path, format: FileFormat| -> Result<(), Error> {
            let (size, sha256) = place(root, &rel, from)?;
            served.push(ServedFile {
                path: rel,
                size,
                sha256,
                format,
            });
            Ok(())
        };
        match &files.rootfs {
            Some(rootfs) => {
                let meta_format = corral_image::detect_format(&files.metadata)?;
                let rootfs_format = corral_image::detect_format(rootfs)?;
                serve(
                    format!("{dir}/meta{}", extension(meta_format)),
                    &files.metadata,
                    meta_format,
                )?;
                serve(
                    format!("{dir}/rootfs{}", extension(rootfs_format)),
                    rootfs,
                    rootfs_format,
                )?;
            }
            None => {
                let rel = format!("{dir}/image{}", extension(info.rootfs_format));
                serve(rel, &files.metadata, info.rootfs_format)?;
            }
        }
        add_image(
            &mut doc,
            &ServedImage {
                fingerprint: fp.clone(),
                architecture: info.metadata.architecture.clone(),
                os,
                release,
                variant,
                serial,
                aliases: img.aliases.clone(),
                files: served,
            },
        );
    }
    write_json(root, IMAGES_PATH, &doc)?;
    write_json(root, INDEX_PATH, &index_of(&doc))?;
    Ok(doc)
}
