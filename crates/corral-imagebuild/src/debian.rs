//! A Debian image: a suite bootstrapped from a mirror by mmdebstrap or debootstrap with the
//! recipe's packages, systemd-networkd for the network, and what a container image should not
//! carry removed (the host's resolv.conf, a machine id, apt's lists and downloads).

use std::fs;
use std::path::Path;

use crate::error::{io, BuildError};
use crate::recipe::Tool;
use crate::rootfs::write_file;
use crate::run::{have, in_root, private_mounts, run};

/// Which bootstrapper `tool` means on this machine.
pub(crate) fn pick_tool(tool: Tool) -> Result<&'static str, BuildError> {
    let (name, hint) = match tool {
        Tool::Debootstrap => ("debootstrap", "apt-get install debootstrap"),
        Tool::Mmdebstrap => ("mmdebstrap", "apt-get install mmdebstrap"),
        Tool::Auto if have("mmdebstrap") => return Ok("mmdebstrap"),
        Tool::Auto => ("debootstrap", "apt-get install debootstrap (or mmdebstrap)"),
    };
    if !have(name) {
        return Err(BuildError::Invalid(format!(
            "{name} is not installed: {hint}, or set source.tool to the other bootstrapper"
        )));
    }
    Ok(name)
}

/// Bootstrap `suite` into `root` (which does not exist yet) with `packages`.
pub(crate) fn unpack(
    tool: &str,
    suite: &str,
    mirror: &str,
    variant: &str,
    packages: &[String],
    root: &Path,
) -> Result<(), BuildError> {
    // In a private mount namespace: debootstrap's mounts in the target end with it, even when
    // it fails half-way.
    let mut c = private_mounts(tool);
    c.arg(format!("--variant={variant}"));
    if !packages.is_empty() {
        c.arg(format!("--include={}", packages.join(",")));
    }
    if tool == "mmdebstrap" {
        // A directory target, made as root like debootstrap's; its default is a tarball for
        // some targets.
        c.args(["--mode=root", "--format=directory"]);
    }
    c.arg(suite).arg(root).arg(mirror);
    run(&format!("bootstrapping Debian {suite} with {tool}"), &mut c)
}

/// The network step: DHCP on `iface` by systemd-networkd, enabled (systemctl works offline in
/// a chroot: it only makes the symlinks).
pub(crate) fn network(root: &Path, iface: &str) -> Result<(), BuildError> {
    if !["bin/systemctl", "usr/bin/systemctl"]
        .iter()
        .any(|p| root.join(p).exists())
    {
        return Err(BuildError::Invalid(
            "network.dhcp on a Debian image uses systemd-networkd: add systemd to packages".into(),
        ));
    }
    let unit = format!("[Match]\nName={iface}\n\n[Network]\nDHCP=yes\n");
    write_file(
        root,
        &format!("/etc/systemd/network/{iface}.network"),
        unit.as_bytes(),
        0o644,
        0,
        0,
    )?;
    in_root("enabling systemd-networkd", root, "systemctl enable systemd-networkd")
}

/// What a container image should not carry: an fstab, the host's resolv.conf (the bootstrap
/// copied it), a machine id (systemd makes one at first boot; dbus falls back to it), apt's
/// lists and downloaded packages, the bootstrap log.
pub(crate) fn cleanup(root: &Path) -> Result<(), BuildError> {
    for f in ["/etc/fstab", "/etc/resolv.conf", "/etc/machine-id"] {
        empty_file(root, f)?;
    }
    // The bootstrap copied the host's resolv.conf with the host's mode.
    fs::set_permissions(
        root.join("etc/resolv.conf"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .map_err(io("cannot set the mode of /etc/resolv.conf"))?;
    let remove_file = |p: &Path| match fs::remove_file(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(BuildError::Io {
            what: format!("cannot remove {}", p.display()),
            err: e,
        }),
        _ => Ok(()),
    };
    remove_file(&root.join("var/lib/dbus/machine-id"))?;
    remove_file(&root.join("var/log/bootstrap.log"))?;
    // apt's lists (all of them), its caches (*.bin) and downloaded packages (*.deb).
    for (dir, ext) in [
        ("var/lib/apt/lists", None),
        ("var/cache/apt", Some("bin")),
        ("var/cache/apt/archives", Some("deb")),
    ] {
        let Ok(rd) = fs::read_dir(root.join(dir)) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            match ext {
                Some(x) if p.extension().is_some_and(|e| e == x) && !p.is_dir() => remove_file(&p)?,
                Some(_) => {}
                None if e.file_type().is_ok_and(|t| t.is_dir()) => {
                    fs::remove_dir_all(&p).map_err(io(format!("cannot remove {}", p.display())))?
                }
                None => remove_file(&p)?,
            }
        }
    }
    Ok(())
}

/// Empty `path` in the image, keeping its mode and owner if it is a file there already (a
/// symlink is replaced by an empty file).
fn empty_file(root: &Path, path: &str) -> Result<(), BuildError> {
    let host = root.join(path.trim_start_matches('/'));
    match host.symlink_metadata() {
        Ok(m) if m.is_file() => fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&host)
            .map(drop)
            .map_err(io(format!("cannot empty {path} in the image"))),
        Ok(m) if m.file_type().is_symlink() => {
            fs::remove_file(&host).map_err(io(format!("cannot replace {path} in the image")))?;
            write_file(root, path, b"", 0o644, 0, 0)
        }
        _ => write_file(root, path, b"", 0o644, 0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleanup_leaves_what_a_container_image_should_have() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        for d in [
            "etc",
            "var/lib/dbus",
            "var/log",
            "var/lib/apt/lists/partial",
            "var/cache/apt/archives/partial",
        ] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::write(root.join("etc/fstab"), "# UNCONFIGURED FSTAB\n").unwrap();
        fs::write(root.join("etc/machine-id"), "0123\n").unwrap();
        std::os::unix::fs::symlink("/run/host-resolv.conf", root.join("etc/resolv.conf")).unwrap();
        std::os::unix::fs::symlink("/etc/machine-id", root.join("var/lib/dbus/machine-id")).unwrap();
        fs::write(root.join("var/log/bootstrap.log"), "x").unwrap();
        fs::write(root.join("var/log/keep.log"), "x").unwrap();
        fs::write(root.join("var/lib/apt/lists/deb.debian.org_Packages"), "x").unwrap();
        fs::write(root.join("var/cache/apt/pkgcache.bin"), "x").unwrap();
        fs::write(root.join("var/cache/apt/archives/a_1_amd64.deb"), "x").unwrap();
        fs::write(root.join("var/cache/apt/archives/lock"), "").unwrap();
        cleanup(root).unwrap();
        for f in ["etc/fstab", "etc/machine-id", "etc/resolv.conf"] {
            let m = fs::symlink_metadata(root.join(f)).unwrap();
            assert!(m.is_file() && m.len() == 0, "{f}");
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(root.join("etc/resolv.conf")).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o644);
        assert!(root.join("var/log/keep.log").exists());
        for gone in [
            "var/lib/dbus/machine-id",
            "var/log/bootstrap.log",
            "var/cache/apt/pkgcache.bin",
            "var/cache/apt/archives/a_1_amd64.deb",
        ] {
            assert!(root.join(gone).symlink_metadata().is_err(), "{gone}");
        }
        assert_eq!(fs::read_dir(root.join("var/lib/apt/lists")).unwrap().count(), 0);
        assert!(root.join("var/cache/apt/archives/partial").is_dir());
        assert!(root.join("var/cache/apt/archives/lock").exists());
    }
}
