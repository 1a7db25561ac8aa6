//! Where the daemon keeps things, all under `CORRAL_DIR` (default /var/lib/corral), as LXD does
//! under LXD_DIR.

use std::path::{Path, PathBuf};

/// The daemon's directories and files.
#[derive(Debug, Clone)]
pub struct Paths {
    pub dir: PathBuf,
}

impl Paths {
    /// From `CORRAL_DIR`, else /var/lib/corral.
    pub fn from_env() -> Paths {
        Paths::new(
            std::env::var_os("CORRAL_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/var/lib/corral")),
        )
    }

    pub fn new(dir: impl Into<PathBuf>) -> Paths {
        Paths { dir: dir.into() }
    }

    /// The API's unix socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("unix.socket")
    }

    /// Global state (instances, images, profiles ...).
    pub fn global_db(&self) -> PathBuf {
        self.dir.join("database/global.db")
    }

    /// This host's own state.
    pub fn node_db(&self) -> PathBuf {
        self.dir.join("database/node.db")
    }

    /// Image files as imported, by fingerprint.
    pub fn images(&self) -> PathBuf {
        self.dir.join("images")
    }

    pub fn image_file(&self, fingerprint: &str) -> PathBuf {
        self.images().join(fingerprint)
    }

    /// The rootfs of a split image sits beside its metadata file.
    pub fn image_rootfs_file(&self, fingerprint: &str) -> PathBuf {
        self.images().join(format!("{fingerprint}.rootfs"))
    }

    /// A storage pool's directory (dir driver).
    pub fn pool(&self, pool: &str) -> PathBuf {
        self.dir.join("storage-pools").join(pool)
    }

    /// Monitors' run directories. Under CORRAL_DIR so that daemons with different directories
    /// never see each other's containers.
    pub fn run_root(&self) -> PathBuf {
        self.dir.join("run")
    }

    pub fn run_dir(&self, instance: &str) -> PathBuf {
        self.run_root().join(instance)
    }

    /// Per-instance logs (console log of the last run, monitor log).
    pub fn logs(&self, instance: &str) -> PathBuf {
        self.dir.join("logs").join(instance)
    }

    /// The cgroup name of `instance`: the name itself for the default directory, else prefixed
    /// with a tag of this CORRAL_DIR so that two daemons on one host never share a cgroup.
    pub fn cgroup_name(&self, instance: &str) -> String {
        if self.dir == Path::new("/var/lib/corral") {
            return instance.to_string();
        }
        // FNV-1a: stable across runs and builds, which the std hasher is not.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.dir.as_os_str().as_encoded_bytes() {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
        format!("{:08x}.{instance}", h as u32)
    }

    /// Scratch space on the same filesystem as images and pools (for atomic renames).
    pub fn tmp(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    /// Networks' state directories (dnsmasq's files), one per network.
    pub fn networks(&self) -> PathBuf {
        self.dir.join("networks")
    }

    pub fn all_dirs(&self) -> Vec<PathBuf> {
        vec![
            self.dir.clone(),
            self.dir.join("database"),
            self.images(),
            self.dir.join("storage-pools"),
            self.run_root(),
            self.dir.join("logs"),
            self.networks(),
            self.tmp(),
        ]
    }
}

/// Whether `path` is inside `root` (both absolute, no symlink resolution).
pub fn is_under(path: &Path, root: &Path) -> bool {
    path.starts_with(root)
}
