//! From a server's product files to the images it offers, and from an alias or a fingerprint
//! to the files to download.
//!
//! The rules are LXD's (`shared/simplestreams` in LXD and Incus):
//!
//! * A version with a metadata item (`lxd.tar.xz` or `incus.tar.xz`) and a rootfs item makes a
//!   **split image** whose fingerprint is the metadata item's combined hash for that rootfs:
//!   `combined_squashfs_sha256` for `squashfs`, `combined_rootxz_sha256` (older servers:
//!   `combined_sha256`) for `root.tar.xz`. That is the sha256 of the metadata file's bytes
//!   followed by the rootfs file's bytes, as `corral_image::fingerprint_split` computes it.
//! * A `lxd_combined.tar.gz` / `incus_combined.tar.gz` item is a **unified image**: its
//!   fingerprint is its own `sha256`.
//! * Aliases (the product's comma-separated `aliases`) name the newest version of the product;
//!   a bare alias means the wanted architecture, and `<alias>/<arch>` names another one.
//!
//! Virtual-machine disks (`disk-kvm.img`...) and deltas are ignored: Corral runs containers and
//! downloads whole files. When one alias has several container images (a `squashfs` and a
//! `root.tar.xz` of the same build), the tarball is chosen, unless the catalog is told to
//! prefer squashfs ([`Catalog::prefer_squashfs`]: the caller knows what unpacks faster).

use std::collections::BTreeSet;

use crate::types::*;
use crate::Error;

/// One file to download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    pub ftype: String,
    /// Relative to the server's root.
    pub path: String,
    /// Lowercase hex; empty when the server gives none (then only the image's fingerprint
    /// checks the file).
    pub sha256: String,
    pub size: u64,
}

/// What holds the image's root filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RootfsKind {
    /// A split image with a tarball rootfs (`root.tar.xz`).
    Tarball,
    /// A unified image (`*_combined.tar.gz`).
    Unified,
    /// A split image with a squashfs rootfs.
    Squashfs,
}

/// One image a server offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteImage {
    /// What an import of its files must give (see the module documentation).
    pub fingerprint: String,
    /// The product's name (`"debian:bookworm:amd64:default"`).
    pub product: String,
    /// The version's serial.
    pub version: String,
    /// The aliases naming it (only the newest version of a product has them).
    pub aliases: Vec<String>,
    /// The architecture as the server spells it (`"amd64"`).
    pub arch: String,
    /// The architecture as LXD spells it (`"x86_64"`).
    pub architecture: String,
    pub os: String,
    pub release: String,
    pub variant: String,
    pub kind: RootfsKind,
    /// The metadata file (or the unified tarball), then the rootfs file of a split image.
    pub files: Vec<RemoteFile>,
}

impl RemoteImage {
    pub fn is_split(&self) -> bool {
        self.files.len() == 2
    }

    /// Total bytes to download.
    pub fn size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Whether `name` names this image for a host of architecture `want` (LXD's name).
    fn named_by(&self, name: &str, want: &str) -> bool {
        self.aliases.iter().any(|a| {
            (a == name && self.architecture == want)
                || name
                    .strip_prefix(a.as_str())
                    .and_then(|rest| rest.strip_prefix('/'))
                    .is_some_and(|arch| arch == self.arch || arch == self.architecture)
        })
    }
}

/// The LXD name of a server's architecture name (Debian's names, as image servers use them).
pub fn lxd_arch(server_arch: &str) -> &str {
    match server_arch {
        "amd64" => "x86_64",
        "arm64" => "aarch64",
        "armhf" => "armv7l",
        "armel" => "armv6l",
        "i386" => "i686",
        "ppc64el" => "ppc64le",
        other => other,
    }
}

/// The server name of an LXD architecture name (the inverse of [`lxd_arch`]).
pub fn server_arch(lxd_arch: &str) -> &str {
    match lxd_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "armv7l" => "armhf",
        "armv6l" => "armel",
        "i686" => "i386",
        "ppc64le" => "ppc64el",
        other => other,
    }
}

fn file(item: &Item) -> RemoteFile {
    RemoteFile {
        ftype: item.ftype.clone(),
        path: item.path.clone(),
        sha256: item.sha256.to_ascii_lowercase(),
        size: item.size,
    }
}

/// The container images of one version (no aliases yet).
fn version_images(name: &str, product: &Product, serial: &str, version: &ProductVersion) -> Vec<RemoteImage> {
    let base = |kind, fingerprint: &str, files| RemoteImage {
        fingerprint: fingerprint.to_ascii_lowercase(),
        product: name.to_string(),
        version: serial.to_string(),
        aliases: Vec::new(),
        arch: product.arch.clone(),
        architecture: lxd_arch(&product.arch).to_string(),
        os: product.os.clone(),
        release: product.release.clone(),
        variant: product.variant.clone(),
        kind,
        files,
    };
    let mut out = Vec::new();
    let items = || version.items.values();
    // Either metadata type will do; Incus' first, then LXD's, the same file on our own trees.
    let meta = items()
        .find(|i| i.ftype == FTYPE_INCUS_META)
        .or_else(|| items().find(|i| i.ftype == FTYPE_LXD_META));
    if let Some(meta) = meta {
        for root in items() {
            let fp = match root.ftype.as_str() {
                FTYPE_SQUASHFS => &meta.combined_squashfs_sha256,
                FTYPE_ROOT_TAR_XZ if !meta.combined_rootxz_sha256.is_empty() => &meta.combined_rootxz_sha256,
                FTYPE_ROOT_TAR_XZ => &meta.combined_sha256,
                _ => continue,
            };
            if fp.is_empty() {
                continue;
            }
            let kind = if root.ftype == FTYPE_SQUASHFS {
                RootfsKind::Squashfs
            } else {
                RootfsKind::Tarball
            };
            out.push(base(kind, fp, vec![file(meta), file(root)]));
        }
    }
    let combined = items()
        .find(|i| i.ftype == FTYPE_INCUS_COMBINED)
        .or_else(|| items().find(|i| i.ftype == FTYPE_LXD_COMBINED));
    if let Some(c) = combined.filter(|c| !c.sha256.is_empty()) {
        out.push(base(RootfsKind::Unified, &c.sha256, vec![file(c)]));
    }
    out
}

/// Every container image of the given product files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    pub images: Vec<RemoteImage>,
    /// Whether an alias with both a squashfs and a tarball image names the squashfs one.
    pub prefer_squashfs: bool,
}

impl Catalog {
    pub fn new(products: &[Products]) -> Catalog {
        let mut images = Vec::new();
        for file in products {
            for (name, product) in &file.products {
                let mut newest = true;
                // Serials sort as text (`YYYYMMDD[_HH:MM]`); newest first.
                for (serial, version) in product.versions.iter().rev() {
                    let mut found = version_images(name, product, serial, version);
                    if found.is_empty() {
                        continue;
                    }
                    if newest {
                        for img in &mut found {
                            img.aliases = product.alias_list().map(str::to_string).collect();
                        }
                        newest = false;
                    }
                    images.extend(found);
                }
            }
        }
        Catalog {
            images,
            prefer_squashfs: false,
        }
    }

    /// This catalog, naming squashfs images first when `prefer` (else tarballs, then unified
    /// images, then squashfs ones).
    pub fn prefer_squashfs(mut self, prefer: bool) -> Catalog {
        self.prefer_squashfs = prefer;
        self
    }

    /// The order in which [`Catalog::by_alias`] picks among an alias's kinds of image.
    fn rank(&self, kind: RootfsKind) -> u8 {
        match (kind, self.prefer_squashfs) {
            (RootfsKind::Squashfs, true) => 0,
            (RootfsKind::Squashfs, false) => 3,
            (RootfsKind::Tarball, _) => 1,
            (RootfsKind::Unified, _) => 2,
        }
    }

    /// The aliases usable on a host of architecture `arch` (LXD's name), sorted.
    pub fn aliases(&self, arch: &str) -> Vec<String> {
        let set: BTreeSet<&str> = self
            .images
            .iter()
            .filter(|i| i.architecture == arch)
            .flat_map(|i| i.aliases.iter().map(String::as_str))
            .collect();
        set.into_iter().map(str::to_string).collect()
    }

    /// The image named by `alias` for a host of architecture `arch` (LXD's name).
    pub fn by_alias(&self, alias: &str, arch: &str) -> Result<&RemoteImage, Error> {
        self.images
            .iter()
            .filter(|i| i.named_by(alias, arch))
            .min_by(|a, b| (self.rank(a.kind).cmp(&self.rank(b.kind))).then_with(|| b.version.cmp(&a.version)))
            .ok_or_else(|| Error::UnknownAlias {
                alias: alias.to_string(),
                available: self.aliases(arch),
            })
    }

    /// The image whose fingerprint is `fp` or starts with it (unambiguously).
    pub fn by_fingerprint(&self, fp: &str) -> Result<&RemoteImage, Error> {
        let fp = fp.trim().to_ascii_lowercase();
        let matching: Vec<&RemoteImage> = self
            .images
            .iter()
            .filter(|i| !fp.is_empty() && i.fingerprint.starts_with(&fp))
            .collect();
        let distinct: BTreeSet<&str> = matching.iter().map(|i| i.fingerprint.as_str()).collect();
        match distinct.len() {
            0 => Err(Error::UnknownFingerprint(fp)),
            1 => Ok(matching[0]),
            _ => Err(Error::AmbiguousFingerprint(fp)),
        }
    }

    /// An instance or image source, as LXD resolves it: the alias when given (`lxc image
    /// copy` sends the alias in both fields; an alias may also be a fingerprint, as
    /// `lxc launch <remote>:<fingerprint>` sends it), else the fingerprint.
    pub fn find(&self, alias: Option<&str>, fingerprint: Option<&str>, arch: &str) -> Result<&RemoteImage, Error> {
        let hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
        let mut fingerprint = fingerprint.filter(|f| !f.is_empty());
        let mut alias = alias.filter(|a| !a.is_empty());
        // `lxc image copy <remote>:<alias>` sends the alias as the fingerprint, alone.
        if alias.is_none() && fingerprint.is_some_and(|f| !hex(f)) {
            (alias, fingerprint) = (fingerprint, None);
        }
        let Some(alias) = alias else {
            return match fingerprint {
                Some(fp) => self.by_fingerprint(fp),
                None => Err(Error::Unsupported(
                    "the image source needs an alias or a fingerprint".into(),
                )),
            };
        };
        match self.by_alias(alias, arch) {
            Ok(img) => Ok(img),
            Err(e) => [fingerprint, Some(alias)]
                .into_iter()
                .flatten()
                .filter(|f| hex(f))
                .find_map(|f| self.by_fingerprint(f).ok())
                .ok_or(e),
        }
    }
}
