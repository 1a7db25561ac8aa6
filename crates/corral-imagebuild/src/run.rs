//! Commands the build runs: bootstrappers, apt, and scripts in the image's root. Their output
//! goes to stderr (stdout is the caller's, for results); a command that fails is an error naming
//! the step.

use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::error::BuildError;

/// PATH and a few variables for what runs in the image: the host's environment stays out.
const ENV: &[(&str, &str)] = &[
    ("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
    ("HOME", "/root"),
    ("LC_ALL", "C"),
    ("DEBIAN_FRONTEND", "noninteractive"),
];

fn stderr_stdio() -> Stdio {
    match std::io::stderr().as_fd().try_clone_to_owned() {
        Ok(fd) => Stdio::from(fd),
        Err(_) => Stdio::null(),
    }
}

/// Run `cmd` (stdin closed, stdout to stderr); an error naming `step` if it fails.
pub(crate) fn run(step: &str, cmd: &mut Command) -> Result<(), BuildError> {
    let shown = show(cmd);
    let status = cmd
        .stdin(Stdio::null())
        .stdout(stderr_stdio())
        .status()
        .map_err(|e| BuildError::Command {
            step: step.to_string(),
            command: shown.clone(),
            status: format!("could not be run: {e}"),
        })?;
    if status.success() {
        return Ok(());
    }
    Err(BuildError::Command {
        step: step.to_string(),
        command: shown,
        status: match status.code() {
            Some(c) => format!("exited with status {c}"),
            None => format!("was killed ({status})"),
        },
    })
}

fn show(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| {
        let a = a.to_string_lossy();
        if a.len() > 60 || a.contains('\n') {
            format!(
                "{}...",
                a.lines()
                    .next()
                    .unwrap_or_default()
                    .chars()
                    .take(40)
                    .collect::<String>()
            )
        } else {
            a.into_owned()
        }
    }));
    parts.join(" ")
}

/// A command in a mount namespace of its own, private, so that whatever it mounts (debootstrap
/// mounts /proc and /sys in its target) is gone when it exits, however it exits.
pub(crate) fn private_mounts(program: &str) -> Command {
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "--", program]);
    c
}

/// The script that mounts /proc, /sys (read-only) and /dev into `$1` and runs `$2` there with
/// `chroot $1 /bin/sh -c`; run under [`private_mounts`], the mounts end with it.
const CHROOT_SH: &str = r#"set -e
root=$1
[ -d "$root/proc" ] && mount -t proc proc "$root/proc"
[ -d "$root/sys" ] && mount -t sysfs -o ro sysfs "$root/sys"
[ -d "$root/dev" ] && mount --bind /dev "$root/dev"
exec chroot "$root" /bin/sh -c "$2"
"#;

/// Run `script` with `/bin/sh -c` in `root` (chroot), with /proc, /sys and /dev mounted for it
/// in a private mount namespace.
pub(crate) fn in_root(step: &str, root: &Path, script: &str) -> Result<(), BuildError> {
    let mut c = private_mounts("sh");
    c.env_clear()
        .envs(ENV.iter().copied())
        .args(["-c", CHROOT_SH, "corral-imagebuild"])
        .arg(root)
        .arg(script);
    run(step, &mut c)
}

/// Whether `program` is on the PATH.
pub(crate) fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}
