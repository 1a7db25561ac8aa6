//! Make a unified LXD/Incus image from a root filesystem directory.
//!
//! ```text
//! pack_image ROOTFS_DIR OUT.tar.xz --os Debian --release bookworm --description "Debian bookworm" \
//!     [--variant default] [--compression xz|gz|zstd|bz2|none]
//! ```
//!
//! The image gets a `metadata.yaml` (this machine's architecture under its LXD name, the creation date, and
//! the properties os/release/description/architecture/variant/serial) and the templates image builders
//! usually ship: `/etc/hostname` and `/etc/hosts`, rendered on create and copy.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use corral_image::{host_architecture, image_serial, pack_unified, Compression, ImageMetadata, ImageTemplate};

const USAGE: &str = "usage: pack_image ROOTFS_DIR OUT.tar.xz --os OS --release RELEASE --description TEXT \
                     [--variant VARIANT] [--compression xz|gz|zstd|bz2|none]";

const HOSTNAME_TPL: &str = "{{ container.name }}\n";
const HOSTS_TPL: &str = "127.0.1.1\t{{ container.name }}\n\
                         127.0.0.1\tlocalhost\n\
                         ::1\t\tlocalhost ip6-localhost ip6-loopback\n\
                         ff02::1\t\tip6-allnodes\n\
                         ff02::2\t\tip6-allrouters\n";

struct Args {
    rootfs: PathBuf,
    out: PathBuf,
    os: String,
    release: String,
    description: String,
    variant: String,
    compression: Compression,
}

fn parse_args() -> Result<Args, String> {
    let mut positional = Vec::new();
    let (mut os, mut release, mut description) = (None, None, None);
    let mut variant = "default".to_string();
    let mut compression = Compression::Xz;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value\n{USAGE}"));
        match arg.as_str() {
            "--os" => os = Some(value("--os")?),
            "--release" => release = Some(value("--release")?),
            "--description" => description = Some(value("--description")?),
            "--variant" => variant = value("--variant")?,
            "--compression" => compression = value("--compression")?.parse()?,
            "-h" | "--help" => return Err(USAGE.to_string()),
            s if s.starts_with("--") => return Err(format!("unknown option {s}\n{USAGE}")),
            _ => positional.push(PathBuf::from(arg)),
        }
    }
    let [rootfs, out] = <[PathBuf; 2]>::try_from(positional).map_err(|_| USAGE.to_string())?;
    let os = os.ok_or_else(|| format!("--os is required\n{USAGE}"))?;
    let release = release.ok_or_else(|| format!("--release is required\n{USAGE}"))?;
    let description = description.unwrap_or_else(|| format!("{os} {release}"));
    Ok(Args {
        rootfs,
        out,
        os,
        release,
        description,
        variant,
        compression,
    })
}

fn run(args: Args) -> Result<(), String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs() as i64;
    let arch = host_architecture();
    let mut metadata = ImageMetadata {
        architecture: arch.to_string(),
        creation_date: now,
        ..Default::default()
    };
    for (k, v) in [
        ("os", args.os.as_str()),
        ("release", &args.release),
        ("description", &args.description),
        ("architecture", arch),
        ("variant", &args.variant),
        ("serial", &image_serial(now)),
    ] {
        metadata.properties.insert(k.to_string(), v.to_string());
    }
    for (path, tpl) in [("/etc/hostname", "hostname.tpl"), ("/etc/hosts", "hosts.tpl")] {
        let template = ImageTemplate {
            when: vec!["create".into(), "copy".into()],
            template: tpl.into(),
            ..Default::default()
        };
        metadata.templates.insert(path.to_string(), template);
    }

    let templates = std::env::temp_dir().join(format!("pack_image-templates-{}", std::process::id()));
    std::fs::create_dir_all(&templates).map_err(|e| format!("{}: {e}", templates.display()))?;
    let result = (|| {
        for (name, text) in [("hostname.tpl", HOSTNAME_TPL), ("hosts.tpl", HOSTS_TPL)] {
            let p = templates.join(name);
            std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
        }
        let started = Instant::now();
        let fingerprint = pack_unified(&args.rootfs, &metadata, Some(&templates), &args.out, args.compression)
            .map_err(|e| e.to_string())?;
        let size = std::fs::metadata(&args.out).map(|m| m.len()).unwrap_or(0);
        println!("{}", fingerprint);
        eprintln!(
            "packed {} into {} ({} bytes, {}) in {:.2?}",
            args.rootfs.display(),
            args.out.display(),
            size,
            args.compression,
            started.elapsed()
        );
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&templates);
    result
}

fn main() -> ExitCode {
    match parse_args().and_then(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pack_image: {e}");
            ExitCode::FAILURE
        }
    }
}
