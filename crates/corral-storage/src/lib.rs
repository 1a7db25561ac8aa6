//! Storage pool drivers behind one trait, [`Driver`]: what a pool is made of on this host and
//! how its volumes are created, cloned, snapshotted, restored, limited and removed.
//!
//! - [`dir`]: plain directories on the host's filesystem; clones and snapshots are copies
//!   (reflinked where the filesystem can).
//! - [`btrfs`]: a btrfs filesystem (on a loop file the pool creates and sizes, on a block device,
//!   or an existing btrfs directory); every volume a subvolume, clones and snapshots CoW
//!   snapshots, quotas by qgroups.
//!
//! Layout inside a pool, as LXD's: `images/<fingerprint>`, `containers/<name>`,
//! `containers-snapshots/<name>/<snapshot>`, `custom/<name>`, `custom-snapshots/<name>/<snapshot>`.
//! A volume's directory holds `rootfs/` (instances and images), `metadata.yaml` and `templates/`.
//!
//! Everything is blocking and acts on the host's mount namespace. No daemon state, no HTTP, no
//! SQL: the daemon keeps the records and calls these.

use std::fmt;
use std::path::PathBuf;

pub mod btrfs;
mod btrfs_ioctl;
pub mod dir;
mod dir_restore;
mod dir_stamp;
mod util;

pub use util::{copy_tree, remove_tree};

/// What a volume holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VolumeKind {
    /// An unpacked image, the read-only base instances are cloned from.
    Image,
    /// An instance's root.
    Container,
    /// A custom volume (attached to instances as a disk).
    Custom,
}

impl VolumeKind {
    /// The pool directory volumes of this kind live in.
    pub fn dir(self) -> &'static str {
        match self {
            VolumeKind::Image => "images",
            VolumeKind::Container => "containers",
            VolumeKind::Custom => "custom",
        }
    }

    /// The pool directory their snapshots live in.
    pub fn snapshot_dir(self) -> &'static str {
        match self {
            VolumeKind::Image => "images-snapshots",
            VolumeKind::Container => "containers-snapshots",
            VolumeKind::Custom => "custom-snapshots",
        }
    }

    pub const ALL: [VolumeKind; 3] = [VolumeKind::Image, VolumeKind::Container, VolumeKind::Custom];
}

/// One volume, or one snapshot of a volume.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Vol {
    pub kind: VolumeKind,
    pub name: String,
    pub snapshot: Option<String>,
}

impl Vol {
    pub fn new(kind: VolumeKind, name: &str) -> Vol {
        Vol {
            kind,
            name: name.to_string(),
            snapshot: None,
        }
    }

    pub fn image(fingerprint: &str) -> Vol {
        Vol::new(VolumeKind::Image, fingerprint)
    }

    pub fn container(name: &str) -> Vol {
        Vol::new(VolumeKind::Container, name)
    }

    pub fn custom(name: &str) -> Vol {
        Vol::new(VolumeKind::Custom, name)
    }

    /// Snapshot `snapshot` of this volume.
    pub fn snapshot(&self, snapshot: &str) -> Vol {
        Vol {
            snapshot: Some(snapshot.to_string()),
            ..self.clone()
        }
    }

    /// The volume's path relative to the pool's root.
    pub fn relative_path(&self) -> PathBuf {
        match &self.snapshot {
            None => PathBuf::from(self.kind.dir()).join(&self.name),
            Some(s) => PathBuf::from(self.kind.snapshot_dir()).join(&self.name).join(s),
        }
    }
}

impl fmt::Display for Vol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} volume {}", self.kind.dir().trim_end_matches('s'), self.name)?;
        if let Some(s) = &self.snapshot {
            write!(f, "/{s}")?;
        }
        Ok(())
    }
}

/// Space in a pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Space {
    pub total_bytes: u64,
    pub used_bytes: u64,
    pub total_inodes: u64,
    pub used_inodes: u64,
}

/// What a driver can do, for the API's `storage_drivers` and for callers' choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DriverInfo {
    pub name: &'static str,
    /// Clones and snapshots share blocks with their origin and cost no copy.
    pub copy_on_write: bool,
    /// A snapshot is one point in time of the whole volume, taken atomically: a running
    /// container need not be frozen around it.
    pub atomic_snapshots: bool,
    /// `size` quotas on volumes.
    pub quotas: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{command} failed: {detail}")]
    Command { command: String, detail: String },
    #[error("{0} does not exist")]
    NotFound(String),
    #[error("{0} already exists")]
    Exists(String),
    #[error("invalid pool configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Unsupported(String),
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// A pool's driver. Implementations are cheap to share (`Send + Sync`); every method blocks.
pub trait Driver: Send + Sync + fmt::Debug {
    fn info(&self) -> DriverInfo;

    /// The pool's root: where volumes are, once mounted.
    fn root(&self) -> PathBuf;

    /// Makes the pool's storage (a loop file and its filesystem, directories) the first time.
    /// Fails, leaving nothing, if it cannot; a source that already holds a pool is refused.
    fn create(&self) -> Result<()>;

    /// Makes an existing pool usable (after a reboot: attach its loop file, mount it).
    /// Idempotent.
    fn mount(&self) -> Result<()>;

    /// Unmounts the pool (and detaches its loop device). Idempotent.
    fn unmount(&self) -> Result<()>;

    /// Removes the pool and everything in it, its loop file included.
    fn delete(&self) -> Result<()>;

    /// Where a volume (or snapshot) is.
    fn path(&self, vol: &Vol) -> PathBuf {
        self.root().join(vol.relative_path())
    }

    /// Creates an empty volume.
    fn create_volume(&self, vol: &Vol) -> Result<()>;

    /// Makes `to` a copy of `from` (a volume or a snapshot): a CoW clone where the driver can.
    fn clone_volume(&self, from: &Vol, to: &Vol) -> Result<()>;

    /// Deletes a volume or a snapshot (a volume's snapshots are the caller's to delete first).
    fn delete_volume(&self, vol: &Vol) -> Result<()>;

    /// Renames a volume, its snapshots along.
    fn rename_volume(&self, vol: &Vol, new_name: &str) -> Result<()>;

    /// Takes a read-only snapshot of a volume.
    fn snapshot(&self, vol: &Vol, snapshot: &str) -> Result<()>;

    /// Puts a volume back to one of its snapshots (any, not only the latest).
    fn restore(&self, vol: &Vol, snapshot: &str) -> Result<()>;

    /// Limits a volume to `bytes` (None: no limit).
    fn set_quota(&self, vol: &Vol, bytes: Option<u64>) -> Result<()>;

    /// Bytes a volume uses (for a CoW volume, what it holds, shared or not).
    fn usage(&self, vol: &Vol) -> Result<u64>;

    /// The pool's space and inodes.
    fn space(&self) -> Result<Space>;

    /// Starts the driver's native stream of a snapshot (`btrfs send`), incremental from
    /// `parent` (an older snapshot of the same volume) if given; the stream is the child's
    /// stdout. Drivers without one refuse.
    fn send(&self, snapshot: &Vol, parent: Option<&Vol>) -> Result<std::process::Child> {
        let _ = (snapshot, parent);
        Err(StorageError::Unsupported(format!(
            "{} pools have no optimized (native) stream format: use a btrfs pool",
            self.info().name
        )))
    }

    /// Receives a native stream into `scratch` (a directory on the pool, made here, empty);
    /// the path of what it made. Drivers without one refuse.
    fn receive(&self, stream: &mut dyn std::io::Read, scratch: &std::path::Path) -> Result<PathBuf> {
        let _ = (stream, scratch);
        Err(StorageError::Unsupported(format!(
            "{} pools cannot receive optimized (native) streams: import into a btrfs pool",
            self.info().name
        )))
    }

    /// Makes `to` from what [`Driver::receive`] made at `received` (a snapshot read-only, a
    /// volume writable); what was received goes. Call it once every stream is received (a later
    /// incremental stream needs its parent as received).
    fn adopt(&self, received: &std::path::Path, to: &Vol) -> Result<()> {
        let _ = (received, to);
        Err(StorageError::Unsupported(format!(
            "{} pools cannot adopt received streams",
            self.info().name
        )))
    }

    /// Removes a staging directory of the pool, whatever received streams it holds.
    fn remove_staged(&self, path: &std::path::Path) -> Result<()> {
        remove_tree(path)
    }
}
