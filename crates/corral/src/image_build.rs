//! `corral image build RECIPE.yaml`: builds an image on this machine with corral-imagebuild.
//! No daemon is involved: the result is files to import (`corral image import`) or a rootfs.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use corral_imagebuild::{build, load_recipe, BuildError, BuildOptions, Compression, Output};

/// `corral image build`.
#[derive(Args)]
pub struct BuildArgs {
    /// The recipe (YAML; see docs/image-recipes.md)
    pub recipe: PathBuf,
    /// Directory for the image files (made if missing)
    #[arg(long, short = 'o', value_name = "DIR", default_value = ".")]
    pub output: PathBuf,
    /// Which image format(s) to write
    #[arg(long, value_enum, default_value_t = ImageFormat::Unified)]
    pub format: ImageFormat,
    /// Write only the root filesystem, as this new directory (no image, no metadata)
    #[arg(long, value_name = "DIR", conflicts_with_all = ["format", "compression"])]
    pub rootfs_only: Option<PathBuf>,
    /// Debian mirror to use instead of the recipe's
    #[arg(long, value_name = "URL")]
    pub mirror: Option<String>,
    /// Compression of the tarballs: xz, gz, zstd, bz2 or none
    #[arg(long, default_value = "xz")]
    pub compression: String,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ImageFormat {
    /// One tarball: metadata.yaml, templates/, rootfs/
    Unified,
    /// A metadata tarball and a rootfs tarball
    Split,
    /// Both
    Both,
}

pub fn run(a: BuildArgs) -> Result<()> {
    let compression: Compression = a.compression.parse().map_err(anyhow::Error::msg)?;
    let recipe = match load_recipe(&a.recipe) {
        Err(BuildError::Recipe(e)) => bail!("{}: {e}", a.recipe.display()),
        r => r?,
    };
    let output = match a.rootfs_only {
        Some(dir) => Output::RootfsOnly(dir),
        None => Output::Images {
            dir: a.output,
            unified: a.format != ImageFormat::Split,
            split: a.format != ImageFormat::Unified,
        },
    };
    let creation_date = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => Some(
            v.parse::<i64>()
                .ok()
                .filter(|t| *t >= 0)
                .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds since 1970"))?,
        ),
        _ => None,
    };
    let progress = |step: &str| eprintln!("corral image build: {step}");
    let opts = BuildOptions {
        output,
        mirror: a.mirror,
        compression,
        creation_date,
        progress: &progress,
    };
    let built = build(&recipe, &opts).with_context(|| format!("building {}", a.recipe.display()))?;
    // Results on stdout, one line each: what, fingerprint, file(s).
    if let Some(r) = built.rootfs {
        outln!("rootfs {}", r.display());
    }
    if let Some(u) = built.unified {
        outln!("unified {} {}", u.fingerprint, u.metadata.display());
    }
    if let Some(s) = built.split {
        let Some(rootfs) = s.rootfs else {
            bail!("a split image without its rootfs file")
        };
        outln!("split {} {} {}", s.fingerprint, s.metadata.display(), rootfs.display());
    }
    Ok(())
}
