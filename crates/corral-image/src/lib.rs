//! LXD's image formats, exactly as LXD and Incus define them, so that the same files have the same
//! fingerprint on LXD, Incus and Corral.
//!
//! * A **unified image** is one tarball (plain, gzip, xz, zstd or bzip2) holding `metadata.yaml`,
//!   `templates/` and `rootfs/`. Its fingerprint is the sha256 of the tarball file as given.
//! * A **split image** is a metadata tarball (`metadata.yaml` and `templates/`) plus a separate rootfs: a
//!   tarball of the tree, or a squashfs file (unpacked with `unsquashfs`). Its
//!   fingerprint is the sha256 over the metadata file's bytes followed by the rootfs file's bytes.
//!
//! Formats are recognised by their magic bytes, never by file name. [`inspect`] reads an image in one
//! streaming pass (fingerprint, `metadata.yaml`, integrity of the compressed data), [`verify`] checks a
//! fingerprint, [`unpack_rootfs`] / [`unpack_templates`] / [`unpack()`] unpack safely (see the
//! [`unpack`](mod@unpack) module documentation for what is preserved and what keeps writes inside the
//! destination), and [`pack_unified`] / [`pack_split`] make images.

mod compression;
mod error;
mod metadata;
mod pack;
mod read;
pub mod unpack;

use std::fmt;
use std::path::{Path, PathBuf};

pub use compression::{detect_compression, detect_format, Compression, FileFormat};
pub use error::ImageError;
pub use metadata::{host_architecture, image_serial, lxd_architecture_name, ImageMetadata, ImageTemplate};
pub use pack::{pack_directory, pack_split, pack_unified};
pub use read::{fingerprint, fingerprint_split, fingerprint_unified, inspect, read_metadata, verify};
pub use unpack::{unpack, unpack_paced, unpack_rootfs, unpack_templates, unsquashfs_available};

/// The file(s) of an image.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageFiles {
    /// The unified tarball, or the metadata tarball of a split image.
    pub metadata: PathBuf,
    /// The rootfs of a split image (tarball or squashfs); `None` for a unified image.
    pub rootfs: Option<PathBuf>,
}

impl ImageFiles {
    /// A unified image.
    pub fn unified(path: impl Into<PathBuf>) -> Self {
        ImageFiles {
            metadata: path.into(),
            rootfs: None,
        }
    }

    /// A split image.
    pub fn split(metadata: impl Into<PathBuf>, rootfs: impl Into<PathBuf>) -> Self {
        ImageFiles {
            metadata: metadata.into(),
            rootfs: Some(rootfs.into()),
        }
    }

    /// Whether this is a split image.
    pub fn is_split(&self) -> bool {
        self.rootfs.is_some()
    }

    /// The file that holds the root filesystem.
    pub fn rootfs_file(&self) -> &Path {
        self.rootfs.as_deref().unwrap_or(&self.metadata)
    }
}

impl fmt::Display for ImageFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.rootfs {
            None => write!(f, "{}", self.metadata.display()),
            Some(r) => write!(f, "{} + {}", self.metadata.display(), r.display()),
        }
    }
}

/// What [`inspect`] learns about an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// The image's fingerprint: lowercase hex sha256 (see the crate documentation).
    pub fingerprint: String,
    /// Its `metadata.yaml`.
    pub metadata: ImageMetadata,
    /// Total bytes of the file(s).
    pub size: u64,
    /// Whether it is a split image.
    pub split: bool,
    /// The format of the file holding the rootfs (the unified tarball, or the split image's rootfs file).
    pub rootfs_format: FileFormat,
}
