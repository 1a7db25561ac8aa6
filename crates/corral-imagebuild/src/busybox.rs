//! A busybox image: the static busybox of Debian's `busybox-static` .deb, its applets as
//! symlinks, a root account (locked), busybox init with a shell on the console, and udhcpc for
//! the network.

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::error::{io, BuildError};
use crate::rootfs::{make_dir, write_file};
use crate::run::run;

/// busybox init: the sysinit script, a shell respawned on the console (a pty in a container).
/// Shutdown only syncs: `umount -a -r` could remount the host's filesystem read-only in a
/// privileged container.
pub(crate) const INITTAB: &str = "::sysinit:/etc/init.d/rcS
::respawn:-/bin/sh
::ctrlaltdel:/sbin/reboot
::shutdown:/bin/sync
::restart:/sbin/init
";

/// What udhcpc runs on each lease event: addresses, default route, resolv.conf.
pub(crate) const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
# Called by udhcpc with $1 = deconfig|bound|renew|leasefail|nak; env has the lease.
case "$1" in
deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" ${broadcast:+broadcast "$broadcast"} dev "$interface"
    for r in $router; do ip route replace default via "$r" dev "$interface"; break; done
    {
        [ -n "$domain" ] && echo "search $domain"
        for d in $dns; do echo "nameserver $d"; done
    } > /etc/resolv.conf
    ;;
esac
exit 0
"#;

pub(crate) const UDHCPC_SCRIPT_PATH: &str = "/usr/share/udhcpc/default.script";

/// `/etc/init.d/rcS`: loopback up, and DHCP in the background on `dhcp` if the container has it.
pub(crate) fn rcs(dhcp: Option<&str>) -> String {
    let mut s = String::from("#!/bin/sh\nip link set lo up\n");
    if let Some(i) = dhcp {
        s.push_str(&format!(
            "if ip link show {i} >/dev/null 2>&1; then\n    udhcpc -b -q -i {i} -s {UDHCPC_SCRIPT_PATH} \
             >/run/udhcpc.log 2>&1 &\nfi\n"
        ));
    }
    s.push_str("exit 0\n");
    s
}

/// Get the .deb: the recipe's file, or `apt-get download` into `scratch` (retried once after
/// `apt-get update`: a fresh machine has no package lists).
fn fetch_deb(package: &str, deb: Option<&str>, scratch: &Path) -> Result<std::path::PathBuf, BuildError> {
    if let Some(d) = deb {
        let p = Path::new(d);
        if !p.is_file() {
            return Err(BuildError::Invalid(format!(
                "source.deb {d} is not a file: give the path of a {package} .deb"
            )));
        }
        return Ok(p.to_path_buf());
    }
    let dir = scratch.join("deb");
    fs::create_dir_all(&dir).map_err(io("cannot make the download directory"))?;
    let download = || {
        let mut c = Command::new("apt-get");
        c.current_dir(&dir).env("DEBIAN_FRONTEND", "noninteractive").args([
            "-q",
            "-o",
            "APT::Sandbox::User=root",
            "download",
            package,
        ]);
        run(&format!("downloading {package}"), &mut c)
    };
    if download().is_err() {
        run("apt-get update", Command::new("apt-get").args(["-q", "update"]))?;
        download()?;
    }
    let found = fs::read_dir(&dir)
        .map_err(io("cannot list the download directory"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"));
    found.ok_or_else(|| BuildError::Invalid(format!("apt-get download {package} gave no .deb")))
}

/// Make the busybox tree in `root` (which does not exist yet).
pub(crate) fn unpack(
    package: &str,
    deb: Option<&str>,
    dhcp: Option<&str>,
    root: &Path,
    scratch: &Path,
) -> Result<(), BuildError> {
    let deb = fetch_deb(package, deb, scratch)?;
    let x = scratch.join("debx");
    run(
        "unpacking the .deb",
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&x),
    )?;
    let busybox = ["bin/busybox", "usr/bin/busybox"]
        .iter()
        .map(|p| x.join(p))
        .find(|p| p.is_file())
        .ok_or_else(|| BuildError::Invalid(format!("{} has no bin/busybox", deb.display())))?;

    fs::create_dir(root).map_err(io(format!("cannot make {}", root.display())))?;
    fs::set_permissions(root, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .map_err(io("cannot set the rootfs mode"))?;
    for d in [
        "/bin",
        "/sbin",
        "/usr/bin",
        "/usr/sbin",
        "/etc/init.d",
        "/usr/share/udhcpc",
        "/proc",
        "/sys",
        "/dev",
        "/run",
        "/var",
    ] {
        make_dir(root, d, 0o755)?;
    }
    make_dir(root, "/root", 0o700)?;
    make_dir(root, "/tmp", 0o1777)?;
    let bytes = fs::read(&busybox).map_err(io(format!("cannot read {}", busybox.display())))?;
    write_file(root, "/bin/busybox", &bytes, 0o755, 0, 0)?;
    // The applets as symlinks, /sbin/init among them.
    run(
        "installing the busybox applets",
        Command::new("chroot")
            .arg(root)
            .args(["/bin/busybox", "--install", "-s"]),
    )?;
    if !root
        .join("sbin/init")
        .symlink_metadata()
        .is_ok_and(|m| m.file_type().is_symlink())
    {
        return Err(BuildError::Invalid("busybox did not install /sbin/init".into()));
    }
    write_file(root, "/etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644, 0, 0)?;
    write_file(root, "/etc/group", b"root:x:0:\n", 0o644, 0, 0)?;
    // '!': root's password is locked.
    write_file(root, "/etc/shadow", b"root:!::0:99999:7:::\n", 0o600, 0, 0)?;
    write_file(root, "/etc/resolv.conf", b"", 0o644, 0, 0)?;
    write_file(root, "/etc/inittab", INITTAB.as_bytes(), 0o644, 0, 0)?;
    write_file(root, "/etc/init.d/rcS", rcs(dhcp).as_bytes(), 0o755, 0, 0)?;
    Ok(())
}

/// The network step: the udhcpc script rcS calls.
pub(crate) fn network(root: &Path) -> Result<(), BuildError> {
    write_file(root, UDHCPC_SCRIPT_PATH, UDHCPC_SCRIPT.as_bytes(), 0o755, 0, 0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn rcs_with_and_without_dhcp() {
        assert_eq!(
            super::rcs(Some("eth0")),
            "#!/bin/sh\nip link set lo up\nif ip link show eth0 >/dev/null 2>&1; then\n    udhcpc -b -q -i eth0 -s \
             /usr/share/udhcpc/default.script >/run/udhcpc.log 2>&1 &\nfi\nexit 0\n"
        );
        assert_eq!(super::rcs(None), "#!/bin/sh\nip link set lo up\nexit 0\n");
    }
}
