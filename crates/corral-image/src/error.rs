//! The one error type of this crate.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong reading, checking, unpacking or packing an image.
///
/// Messages are lowercase, name the file concerned, and say what to do where there is something to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// The image file could not be opened or read (missing, permission denied, I/O error).
    #[error("cannot read image file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },

    /// The compressed stream or the tar archive inside it is damaged or cut short.
    #[error("image file {} is truncated or corrupt ({detail}); download it again", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What the decompressor or the tar reader said.
        detail: String,
    },

    /// The file is neither a (compressed) tarball nor another format we recognise.
    #[error("{} is not an image file: {detail}", path.display())]
    UnknownFormat {
        /// The file.
        path: PathBuf,
        /// What was found instead.
        detail: String,
    },

    /// A format we recognise but do not handle (yet).
    #[error("{}: {reason}", path.display())]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What is unsupported, e.g. "squashfs rootfs: not yet supported".
        reason: String,
    },

    /// The (metadata) tarball has no `metadata.yaml`.
    #[error("not an image: no metadata.yaml in {}", path.display())]
    NoMetadata {
        /// The tarball.
        path: PathBuf,
    },

    /// A unified image without `rootfs/`: most likely the metadata half of a split image.
    #[error(
        "not a unified image: no rootfs/ in {}; if it is the metadata part of a split image, give its rootfs file too",
        path.display()
    )]
    NoRootfs {
        /// The tarball.
        path: PathBuf,
    },

    /// `metadata.yaml` exists but cannot be parsed (or is unreasonably large).
    #[error("metadata.yaml in {} is not valid: {detail}", path.display())]
    InvalidMetadata {
        /// The tarball holding it.
        path: PathBuf,
        /// The parser's message.
        detail: String,
    },

    /// The fingerprint of the file(s) is not the expected one.
    #[error(
        "fingerprint mismatch for {files}: expected {expected}, got {actual}; the file is corrupt or not the image you asked for, download it again"
    )]
    FingerprintMismatch {
        /// The file (or "META + ROOTFS").
        files: String,
        /// What the caller expected.
        expected: String,
        /// What the file(s) hash to.
        actual: String,
    },

    /// The caller's expected fingerprint is not a sha256 in hex.
    #[error("invalid fingerprint {0:?}: a fingerprint is the 64 hexadecimal digits of a sha256")]
    InvalidFingerprint(String),

    /// An archive entry would land outside the destination (`..`, a symlink leading out, a hard link to
    /// something outside the image root).
    #[error(
        "unsafe entry {entry:?} in image file {}: {reason}; the image is malformed or malicious, do not use it",
        path.display()
    )]
    UnsafeEntry {
        /// The image file.
        path: PathBuf,
        /// The entry's path as written in the archive.
        entry: String,
        /// Why it was refused.
        reason: String,
    },

    /// An archive entry cannot be unpacked for a reason of the archive's own making (e.g. a hard link to a
    /// file that is not in the archive).
    #[error("invalid entry {entry:?} in image file {}: {reason}", path.display())]
    InvalidEntry {
        /// The image file.
        path: PathBuf,
        /// The entry's path as written in the archive.
        entry: String,
        /// What is wrong.
        reason: String,
    },

    /// Unpacking needs an empty or missing destination.
    #[error("destination {} already exists and is not an empty directory; remove it or choose another path", path.display())]
    DestinationNotEmpty {
        /// The destination.
        path: PathBuf,
    },

    /// Writing the unpacked tree failed (disk full, permission, ...). The image itself is fine.
    #[error("cannot unpack image file {} into {}: {source}", image.display(), dest.display())]
    Unpack {
        /// The image file.
        image: PathBuf,
        /// The destination directory.
        dest: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },

    /// Reading the tree to pack failed.
    #[error("cannot pack {}: {source}", path.display())]
    Pack {
        /// The file or directory being read.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },

    /// Writing the image file failed.
    #[error("cannot write image file {}: {source}", path.display())]
    Write {
        /// The image file being written.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },

    /// The caller's arguments do not make sense (a rootfs that is not a directory, a missing template, ...).
    #[error("{0}")]
    InvalidInput(String),
}
