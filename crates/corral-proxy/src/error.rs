//! The errors of starting and running a proxy.

use std::io;
use std::path::PathBuf;

use nix::errno::Errno;

use crate::config::ConfigError;

/// Why a proxy could not start (or stopped serving).
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("opening namespace {path}: {source}")]
    OpenNamespace {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{side} side: {what}: {source}")]
    EnterNamespace {
        side: &'static str,
        what: &'static str,
        #[source]
        source: Errno,
    },
    #[error("starting the {side} side's thread: {source}")]
    Thread {
        side: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("the {0} side's thread has stopped")]
    SideGone(&'static str),
    #[error("listening on {endpoint}: {source}")]
    Listen {
        endpoint: String,
        #[source]
        source: io::Error,
    },
    #[error("switching to uid {uid} and gid {gid}: {source}")]
    DropPrivileges {
        uid: u32,
        gid: u32,
        #[source]
        source: io::Error,
    },
    #[error("starting the async runtime: {0}")]
    Runtime(#[source] io::Error),
    #[error("installing signal handlers: {0}")]
    Signals(#[source] io::Error),
}
