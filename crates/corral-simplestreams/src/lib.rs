//! Simplestreams, the format of LXD's and Incus' image servers (`images:`, `ubuntu:`, and any
//! static tree that `incus-simplestreams` or [`write_tree`] makes): the documents
//! ([`types`]), what images they offer and which files make an image ([`Catalog`]), a writer
//! of static trees ([`write_tree`]), and a blocking HTTP(S) client ([`Client`]) that
//! downloads to a `.partial` file, resumes it with a Range request after an interruption, and
//! checks each file's sha256.
//!
//! Nothing here contacts a server on its own: a [`Client`] talks only to the URL it is given.

mod direct;
mod fetch;
mod pinned;
mod resolve;
pub mod types;
mod writer;

use std::path::PathBuf;

pub use direct::{resolve_url, UrlImage};
pub use fetch::{partial_path, Client, ClientOptions, Fingerprint, Progress, UrlAnswer};
pub use pinned::certificate_fingerprint;
pub use resolve::{lxd_arch, server_arch, Catalog, RemoteFile, RemoteImage, RootfsKind};
pub use types::{Item, Product, ProductVersion, Products, Stream, StreamIndex};
pub use writer::{add_image, index_of, names_of, write_tree, NewImage, ServedFile, ServedImage};

/// The index every simplestreams server has.
pub const INDEX_PATH: &str = "streams/v1/index.json";
/// Where [`write_tree`] puts its product file (as every image server does).
pub const IMAGES_PATH: &str = "streams/v1/images.json";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach the image server at {url}: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("the image server answered {status} for {url}")]
    Http { url: String, status: u16 },
    #[error("invalid simplestreams document {url}: {detail}")]
    Parse { url: String, detail: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("checksum mismatch for {url}: expected sha256 {expected}, got {actual}")]
    Checksum {
        url: String,
        expected: String,
        actual: String,
    },
    #[error("size mismatch for {url}: expected {expected} bytes, got {actual}")]
    Size { url: String, expected: u64, actual: u64 },
    #[error("the download of {url} was interrupted too often: {detail}")]
    Interrupted { url: String, detail: String },
    #[error("{}", unknown_alias(alias, available))]
    UnknownAlias { alias: String, available: Vec<String> },
    #[error("no image with fingerprint {0} on the server")]
    UnknownFingerprint(String),
    #[error("more than one image matches fingerprint {0}: give more of it")]
    AmbiguousFingerprint(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Image(#[from] corral_image::ImageError),
}

fn unknown_alias(alias: &str, available: &[String]) -> String {
    const SHOWN: usize = 10;
    let mut msg = format!("no image alias {alias:?} on the server");
    if available.is_empty() {
        msg.push_str(" (it offers no container image for this architecture)");
    } else {
        let list: Vec<&str> = available.iter().take(SHOWN).map(String::as_str).collect();
        msg.push_str(&format!("; available aliases include: {}", list.join(", ")));
        if available.len() > SHOWN {
            msg.push_str(&format!(" (and {} more)", available.len() - SHOWN));
        }
    }
    msg
}

/// Whether the remote path `p` is one a static tree may hold: relative, no `..`, no empty or
/// `.` components, no backslash.
pub(crate) fn safe_relative(p: &str) -> bool {
    !p.is_empty() && !p.contains('\\') && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

#[cfg(test)]
mod tests;
