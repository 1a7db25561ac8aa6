//! Disk devices other than the root disk, as LXD has them: a host path, or a custom volume of a
//! storage pool, bound into the container when it starts.
//!
//! - `{"type": "disk", "source": "/host/path", "path": "/in/container"}`: a bind of a host
//!   directory or file. Host files keep their host ownership (an unprivileged container sees
//!   them as nobody) unless `shift=true`, which makes the bind an idmapped mount through the
//!   container's user namespace (host uid 0 is the container's root).
//! - `{"type": "disk", "pool": "P", "source": "VOL", "path": "/data"}`: custom volume `VOL` of
//!   pool `P`, always idmapped in an unprivileged container: stored unshifted, like the rootfs,
//!   so what the container's root creates there is owned by uid 0 on disk and is root's in
//!   every container that attaches it.
//!
//! Options: `readonly`, `propagation` (private by default), `recursive`, `shift`, `required`
//! (false: a missing host source is skipped). The binds are made by the container's monitor
//! ([`MountKind::MonitorBind`]) on its staged rootfs once the container's root exists, in order
//! of depth so that a disk inside another is mounted after it, and reach the container by
//! propagation: their flags are locked there (the container's root cannot lift `readonly`), yet
//! the monitor can take them out again. Only plain binds under /dev, /proc and /sys go through
//! the layout ([`MountKind::Bind`]), which mounts those first, inside the container (not locked).
//!
//! `propagation`: `private` and `unbindable` cut the bind off from the host's mounts below its
//! source, `slave` and `shared` keep receiving them; inside, the container's copy is a slave of
//! the monitor's mount (so that a disk inside another reaches it), made shared or unbindable
//! there for `shared` and `unbindable`. Nothing the container mounts ever reaches the host.
//!
//! On a running container, disks added, changed or removed (in the instance or one of its
//! profiles) are hot-plugged: [`hotplug_plan`] says what to unmount and mount, and the monitor
//! makes the same binds as at start ([`corral_runtime::hotplug`]). Every disk comes out the same
//! way, whether it was mounted at start or hot-plugged: the monitor unmounts its own mount, and
//! the unmount propagates into the container. Only the disks of a container restored from a
//! checkpoint stay until it stops.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use corral_runtime::spec::{Mount, MountKind, Propagation};
use corral_storage::Vol;

use crate::config::parse_bool;
use crate::instances::{Devices, Result, ServiceError};
use crate::pools::Pools;

/// The options of a disk device this daemon implements.
pub const DISK_KEYS: &[&str] = &[
    "type",
    "path",
    "source",
    "pool",
    "readonly",
    "propagation",
    "recursive",
    "shift",
    "required",
];

/// The container directories the layout mounts over: only plain binds, made after it, may go
/// there.
const LAYOUT_DIRS: &[&str] = &["/dev", "/proc", "/sys"];

/// Where a disk's content comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An absolute path on the host.
    Host(PathBuf),
    /// A custom volume of a pool.
    Volume { pool: String, volume: String },
}

/// One disk device, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    pub device: String,
    /// Where it is mounted in the container (absolute, normalized).
    pub path: PathBuf,
    pub source: Source,
    pub readonly: bool,
    pub propagation: Propagation,
    pub recursive: bool,
    pub shift: bool,
    /// False: a missing host source is skipped rather than failing the start.
    pub required: bool,
}

impl Disk {
    /// Whether, in an unprivileged container, the bind is idmapped.
    pub fn idmapped(&self) -> bool {
        self.shift || matches!(self.source, Source::Volume { .. })
    }
}

fn bad(device: &str, why: impl std::fmt::Display) -> ServiceError {
    ServiceError::BadRequest(format!("disk device {device:?}: {why}"))
}

fn is_disk(opts: &BTreeMap<String, String>) -> bool {
    opts.get("type").map(String::as_str) == Some("disk")
}

/// The root disk: `path` "/" and no `source` (its options are the pool's business).
pub fn is_root_disk(opts: &BTreeMap<String, String>) -> bool {
    is_disk(opts) && opts.get("path").map(String::as_str) == Some("/") && !opts.contains_key("source")
}

fn flag(device: &str, opts: &BTreeMap<String, String>, key: &str, default: bool) -> Result<bool> {
    match opts.get(key).map(String::as_str) {
        None | Some("") => Ok(default),
        Some(v) => parse_bool(v).ok_or_else(|| bad(device, format!("{key}={v:?} is not a boolean (true or false)"))),
    }
}

/// Parses one disk device that is not the root disk. Checks the options only, nothing on the
/// host.
pub fn parse(device: &str, opts: &BTreeMap<String, String>) -> Result<Disk> {
    if let Some(key) = opts.keys().find(|k| !DISK_KEYS.contains(&k.as_str())) {
        return Err(bad(
            device,
            format!("unknown disk option {key:?} (supported: {})", DISK_KEYS.join(", ")),
        ));
    }
    let path = match opts.get("path").map(String::as_str) {
        None | Some("") => return Err(bad(device, "missing \"path\" (where the disk goes in the instance)")),
        Some(p) => Path::new(p),
    };
    if !path.is_absolute() {
        return Err(bad(
            device,
            format!("path {:?} must be absolute", path.display().to_string()),
        ));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(bad(
            device,
            format!("path {:?} must not contain \"..\"", path.display().to_string()),
        ));
    }
    let path: PathBuf = path.components().filter(|c| *c != Component::CurDir).collect();
    if path == Path::new("/") {
        return Err(bad(
            device,
            "path \"/\" is reserved for the root disk (which has no \"source\")",
        ));
    }
    let source = match opts.get("source").map(String::as_str) {
        None | Some("") => {
            return Err(bad(
                device,
                "missing \"source\" (a host path, or a volume name with \"pool\")",
            ))
        }
        Some(s) => s,
    };
    let source = match opts.get("pool").map(String::as_str) {
        None | Some("") => {
            if !source.starts_with('/') {
                return Err(bad(
                    device,
                    format!("source {source:?} must be an absolute host path (or a volume name with \"pool\")"),
                ));
            }
            Source::Host(PathBuf::from(source))
        }
        Some(pool) => {
            if source.is_empty() || source.contains('/') || source == "." || source == ".." {
                return Err(bad(device, format!("source {source:?} is not a volume name")));
            }
            Source::Volume {
                pool: pool.to_string(),
                volume: source.to_string(),
            }
        }
    };
    let propagation = match opts.get("propagation").map(String::as_str) {
        None | Some("") => Propagation::Private,
        Some(p) => Propagation::parse(p).ok_or_else(|| {
            bad(
                device,
                format!("propagation {p:?} is not one of {}", Propagation::NAMES.join(", ")),
            )
        })?,
    };
    let disk = Disk {
        device: device.to_string(),
        readonly: flag(device, opts, "readonly", false)?,
        recursive: flag(device, opts, "recursive", false)?,
        shift: flag(device, opts, "shift", false)?,
        required: flag(device, opts, "required", true)?,
        propagation,
        source,
        path,
    };
    if disk.idmapped() && LAYOUT_DIRS.iter().any(|d| disk.path.starts_with(d)) {
        return Err(bad(
            device,
            format!(
                "an idmapped disk (shift=true, or a volume) cannot go under {}: the instance's own mounts there would hide it",
                LAYOUT_DIRS.join(", ")
            ),
        ));
    }
    Ok(disk)
}

/// The disk devices among `devices`, the root disk excepted, parents before the disks inside
/// them. Two disks on one path are refused.
pub fn disks(devices: &Devices) -> Result<Vec<Disk>> {
    let mut out: Vec<Disk> = Vec::new();
    for (device, opts) in devices {
        if !is_disk(opts) || is_root_disk(opts) {
            continue;
        }
        let disk = parse(device, opts)?;
        if let Some(other) = out.iter().find(|d| d.path == disk.path) {
            return Err(bad(
                device,
                format!(
                    "path {} is already the mount point of disk {:?}",
                    disk.path.display(),
                    other.device
                ),
            ));
        }
        out.push(disk);
    }
    out.sort_by_key(|d| d.path.components().count());
    Ok(out)
}

/// Where the disk's content is on the host; `None` for a missing host source that is not
/// required.
fn resolve(pools: &Pools, disk: &Disk) -> Result<Option<PathBuf>> {
    match &disk.source {
        Source::Host(path) => {
            if path.exists() {
                Ok(Some(path.clone()))
            } else if disk.required {
                Err(bad(
                    &disk.device,
                    format!("source {} does not exist on the host", path.display()),
                ))
            } else {
                Ok(None)
            }
        }
        Source::Volume { pool, volume } => {
            let p = pools.get(pool).map_err(|e| match e {
                ServiceError::NotFound(_) => bad(&disk.device, format!("storage pool {pool:?} does not exist")),
                e => bad(&disk.device, e),
            })?;
            let dir = p.driver.path(&Vol::custom(volume));
            if dir.is_dir() {
                Ok(Some(dir))
            } else {
                Err(bad(
                    &disk.device,
                    format!("storage volume {volume:?} does not exist in pool {pool:?}"),
                ))
            }
        }
    }
}

/// Checks an instance's disk devices (expanded with its profiles): their options, and that
/// their host paths, pools and volumes exist.
pub fn validate(pools: &Pools, devices: &Devices) -> Result<()> {
    for disk in disks(devices)? {
        resolve(pools, &disk)?;
    }
    Ok(())
}

/// The runtime mounts of an instance's disk devices, in the order they must be made.
pub fn mounts(pools: &Pools, devices: &Devices, privileged: bool) -> Result<Vec<Mount>> {
    let mut out = Vec::new();
    for disk in disks(devices)? {
        let Some(source) = resolve(pools, &disk)? else {
            tracing::info!(device = %disk.device, "disk source missing and not required: skipped");
            continue;
        };
        out.push(mount_of(&disk, source, privileged));
    }
    Ok(out)
}

/// The runtime mount of one disk, for a hot-plug; `None` for a missing host source that is not
/// required.
pub fn mount(pools: &Pools, disk: &Disk, privileged: bool) -> Result<Option<Mount>> {
    Ok(resolve(pools, disk)?.map(|source| mount_of(disk, source, privileged)))
}

/// What a change of devices from `old` to `new` does to a running instance's disks: the disks
/// to unmount, deepest first, and the disks to mount, parents first. Removed and changed disks
/// go, added and changed ones come; so do the disks below any of them, which a mount or an
/// unmount above would hide or take along, and which come back once their parent is in place.
pub fn hotplug_plan(old: &Devices, new: &Devices) -> Result<(Vec<Disk>, Vec<Disk>)> {
    let before = disks(old)?;
    let after = disks(new)?;
    let roots: Vec<PathBuf> = before
        .iter()
        .filter(|d| !after.contains(d))
        .chain(after.iter().filter(|d| !before.contains(d)))
        .map(|d| d.path.clone())
        .collect();
    let below = |d: &Disk| roots.iter().any(|r| d.path != *r && d.path.starts_with(r));
    let mut unplug: Vec<Disk> = before
        .iter()
        .filter(|d| !after.contains(d) || below(d))
        .cloned()
        .collect();
    unplug.sort_by_key(|d| std::cmp::Reverse(d.path.components().count()));
    let plug = after
        .iter()
        .filter(|d| !before.contains(d) || below(d))
        .cloned()
        .collect();
    Ok((unplug, plug))
}

fn mount_of(disk: &Disk, source: PathBuf, privileged: bool) -> Mount {
    let idmapped = disk.idmapped() && !privileged;
    let kind = if !idmapped && LAYOUT_DIRS.iter().any(|d| disk.path.starts_with(d)) {
        MountKind::Bind {
            recursive: disk.recursive,
        }
    } else {
        MountKind::MonitorBind {
            recursive: disk.recursive,
            idmapped,
        }
    };
    Mount {
        source,
        target: disk.path.clone(),
        kind,
        readonly: disk.readonly,
        propagation: disk.propagation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn err(opts: &[(&str, &str)]) -> String {
        parse("d", &dev(opts)).unwrap_err().to_string()
    }

    #[test]
    fn options_are_parsed_with_lxd_defaults() {
        let d = parse(
            "d",
            &dev(&[("type", "disk"), ("source", "/srv"), ("path", "/mnt/./srv")]),
        )
        .unwrap();
        assert_eq!(d.path, Path::new("/mnt/srv"));
        assert_eq!(d.source, Source::Host("/srv".into()));
        assert_eq!(
            (d.readonly, d.recursive, d.shift, d.required, d.propagation),
            (false, false, false, true, Propagation::Private)
        );
        assert!(!d.idmapped());
        let d = parse(
            "d",
            &dev(&[
                ("type", "disk"),
                ("pool", "default"),
                ("source", "vol"),
                ("path", "/data"),
                ("readonly", "yes"),
                ("propagation", "rslave"),
            ]),
        )
        .unwrap();
        assert!(d.idmapped() && d.readonly && d.propagation == Propagation::RSlave);
    }

    #[test]
    fn bad_devices_are_refused_with_the_reason() {
        let disk = [("type", "disk"), ("source", "/srv")];
        assert!(err(&disk).contains("missing \"path\""));
        assert!(err(&[disk[0], disk[1], ("path", "mnt")]).contains("must be absolute"));
        assert!(err(&[disk[0], disk[1], ("path", "/a/../b")]).contains("\"..\""));
        assert!(err(&[disk[0], disk[1], ("path", "/")]).contains("reserved for the root disk"));
        assert!(err(&[disk[0], ("path", "/x")]).contains("missing \"source\""));
        assert!(err(&[disk[0], ("source", "srv"), ("path", "/x")]).contains("absolute host path"));
        assert!(err(&[disk[0], disk[1], ("path", "/x"), ("size", "1GiB")]).contains("unknown disk option \"size\""));
        assert!(err(&[disk[0], disk[1], ("path", "/x"), ("readonly", "maybe")]).contains("not a boolean"));
        assert!(err(&[disk[0], disk[1], ("path", "/x"), ("propagation", "everywhere")]).contains("rshared"));
        assert!(err(&[disk[0], disk[1], ("path", "/dev/x"), ("shift", "true")]).contains("cannot go under"));
        assert!(err(&[disk[0], ("pool", "p"), ("source", "a/b"), ("path", "/x")]).contains("not a volume name"));
    }

    #[test]
    fn disks_come_parents_first_and_the_root_disk_is_left_out() {
        let devices: Devices = [
            (
                "a",
                dev(&[("type", "disk"), ("source", "/srv/a"), ("path", "/mnt/a/inner")]),
            ),
            ("b", dev(&[("type", "disk"), ("source", "/srv/b"), ("path", "/mnt/a")])),
            ("root", dev(&[("type", "disk"), ("pool", "default"), ("path", "/")])),
            ("eth0", dev(&[("type", "nic"), ("network", "corralbr0")])),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let names: Vec<_> = disks(&devices).unwrap().into_iter().map(|d| d.device).collect();
        assert_eq!(names, ["b", "a"]);

        let mut dup = devices.clone();
        dup.insert(
            "c".into(),
            dev(&[("type", "disk"), ("source", "/srv/c"), ("path", "/mnt/a/")]),
        );
        assert!(disks(&dup).unwrap_err().to_string().contains("already the mount point"));
    }

    #[test]
    fn hotplug_unmounts_deepest_first_and_mounts_parents_first() {
        let devices = |list: &[(&str, &str, &str)]| -> Devices {
            list.iter()
                .map(|(name, source, path)| {
                    (
                        name.to_string(),
                        dev(&[("type", "disk"), ("source", source), ("path", path)]),
                    )
                })
                .collect()
        };
        let names = |disks: Vec<Disk>| disks.into_iter().map(|d| d.device).collect::<Vec<_>>();
        let old = devices(&[
            ("a", "/srv/a", "/mnt"),
            ("b", "/srv/b", "/mnt/b"),
            ("c", "/srv/c", "/mnt/b/c"),
            ("other", "/srv/o", "/opt"),
        ]);
        // Nothing changed: nothing to do.
        let (unplug, plug) = hotplug_plan(&old, &old).unwrap();
        assert!(unplug.is_empty() && plug.is_empty());
        // A parent changes: the disks below it come down first and go back up after it.
        let mut new = old.clone();
        new.get_mut("a").unwrap().insert("readonly".into(), "true".into());
        let (unplug, plug) = hotplug_plan(&old, &new).unwrap();
        assert_eq!(names(unplug), ["c", "b", "a"]);
        assert_eq!(names(plug), ["a", "b", "c"]);
        // A leaf is removed, another added: only they move.
        let mut new = old.clone();
        new.remove("c");
        new.insert(
            "d".into(),
            dev(&[("type", "disk"), ("source", "/srv/d"), ("path", "/opt/d")]),
        );
        let (unplug, plug) = hotplug_plan(&old, &new).unwrap();
        assert_eq!(
            (names(unplug), names(plug)),
            (vec!["c".to_string()], vec!["d".to_string()])
        );
        // Options written differently but meaning the same are no change.
        let mut new = old.clone();
        new.get_mut("other").unwrap().insert("readonly".into(), "false".into());
        let (unplug, plug) = hotplug_plan(&old, &new).unwrap();
        assert!(unplug.is_empty() && plug.is_empty());
    }

    #[test]
    fn only_plain_binds_under_dev_go_through_the_layout() {
        let plain = parse("d", &dev(&[("type", "disk"), ("source", "/srv"), ("path", "/dev/srv")])).unwrap();
        assert_eq!(
            mount_of(&plain, "/srv".into(), false).kind,
            MountKind::Bind { recursive: false }
        );
        let shifted = parse(
            "d",
            &dev(&[
                ("type", "disk"),
                ("source", "/srv"),
                ("path", "/srv"),
                ("shift", "true"),
            ]),
        )
        .unwrap();
        assert_eq!(
            mount_of(&shifted, "/srv".into(), false).kind,
            MountKind::MonitorBind {
                recursive: false,
                idmapped: true
            }
        );
        assert_eq!(
            mount_of(&shifted, "/srv".into(), true).kind,
            MountKind::MonitorBind {
                recursive: false,
                idmapped: false
            },
            "a privileged container has no idmap"
        );
    }
}
