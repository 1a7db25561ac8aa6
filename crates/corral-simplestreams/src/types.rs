//! The two documents of a simplestreams image server, as serde types.
//!
//! Field names are those of the published format (LXD's and Incus' `shared/simplestreams`
//! read and write the same JSON): `streams/v1/index.json` lists the product files, and a
//! product file (`streams/v1/images.json`) maps each product (`os:release:variant:arch`) to
//! its versions (build serials), each with its items (files). Every field defaults when absent
//! and unknown fields are ignored: real servers add their own.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `streams/v1/index.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Stream {
    /// `"index:1.0"`.
    pub format: String,
    /// The product files by name (`"images"`).
    pub index: BTreeMap<String, StreamIndex>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub updated: String,
}

/// One entry of [`Stream::index`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct StreamIndex {
    /// `"image-downloads"` for image servers.
    pub datatype: String,
    /// The product file, relative to the server's root (`"streams/v1/images.json"`).
    pub path: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub updated: String,
    /// The product names it holds.
    pub products: Vec<String>,
    /// `"products:1.0"`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub format: String,
}

/// A product file (`streams/v1/images.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Products {
    /// `"images"`.
    pub content_id: String,
    /// `"image-downloads"`.
    pub datatype: String,
    /// `"products:1.0"`.
    pub format: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub license: String,
    pub products: BTreeMap<String, Product>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub updated: String,
}

/// One product: an operating system release, variant and architecture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Product {
    /// Comma-separated aliases (`"debian/12/default,debian/12"`).
    pub aliases: String,
    /// The architecture as the server names it (`"amd64"`, `"arm64"`...).
    pub arch: String,
    pub os: String,
    pub release: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub release_codename: String,
    pub release_title: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub supported: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub support_eol: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// Build serial (`"20240101_05:24"`) to version.
    pub versions: BTreeMap<String, ProductVersion>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub variant: String,
    /// LXD's name for the image's requirements (`secureboot`, `cgroup`...).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub lxd_requirements: BTreeMap<String, String>,
    /// Incus' name for them.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub requirements: BTreeMap<String, String>,
}

impl Product {
    /// The aliases, split and trimmed.
    pub fn alias_list(&self) -> impl Iterator<Item = &str> {
        self.aliases.split(',').map(str::trim).filter(|a| !a.is_empty())
    }
}

/// One build of a product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ProductVersion {
    /// The files, by item name (usually the ftype: `"incus.tar.xz"`, `"squashfs"`...).
    pub items: BTreeMap<String, Item>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub label: String,
    #[serde(rename = "pubname", skip_serializing_if = "String::is_empty")]
    pub public_name: String,
}

/// One file of a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Item {
    /// What the file is: metadata `lxd.tar.xz` / `incus.tar.xz`; rootfs `squashfs`,
    /// `root.tar.xz`, `disk-kvm.img`...; unified `lxd_combined.tar.gz` /
    /// `incus_combined.tar.gz`; deltas `*.vcdiff`.
    pub ftype: String,
    /// Relative to the server's root.
    pub path: String,
    /// Of this file.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub sha256: String,
    pub size: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub md5: String,
    /// On a metadata item: the fingerprint of the split image it makes with the version's
    /// `root.tar.xz` (older servers) ...
    #[serde(skip_serializing_if = "String::is_empty")]
    pub combined_sha256: String,
    /// ... with its `squashfs` ...
    #[serde(skip_serializing_if = "String::is_empty")]
    pub combined_squashfs_sha256: String,
    /// ... with its `root.tar.xz` ...
    #[serde(skip_serializing_if = "String::is_empty")]
    pub combined_rootxz_sha256: String,
    /// ... with its `disk-kvm.img` (a virtual machine) ...
    #[serde(rename = "combined_disk-kvm-img_sha256", skip_serializing_if = "String::is_empty")]
    pub combined_disk_kvm_img_sha256: String,
    /// ... with its `uefi1.img`.
    #[serde(rename = "combined_uefi1-img_sha256", skip_serializing_if = "String::is_empty")]
    pub combined_uefi1_img_sha256: String,
    /// For a delta: the version it applies to.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub delta_base: String,
}

/// Metadata item types.
pub const FTYPE_LXD_META: &str = "lxd.tar.xz";
pub const FTYPE_INCUS_META: &str = "incus.tar.xz";
/// Unified image item types.
pub const FTYPE_LXD_COMBINED: &str = "lxd_combined.tar.gz";
pub const FTYPE_INCUS_COMBINED: &str = "incus_combined.tar.gz";
/// Container rootfs item types.
pub const FTYPE_SQUASHFS: &str = "squashfs";
pub const FTYPE_ROOT_TAR_XZ: &str = "root.tar.xz";
/// Virtual-machine disk item types (recognised, never chosen: Corral runs containers).
pub const FTYPE_DISK_KVM: &str = "disk-kvm.img";
pub const FTYPE_DISK1: &str = "disk1.img";
pub const FTYPE_UEFI1: &str = "uefi1.img";
