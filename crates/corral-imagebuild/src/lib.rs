//! Corral's offline image builder: a small YAML recipe in, an LXD image out (unified tarball,
//! split metadata + rootfs tarballs, or both, with their fingerprints), or just the root
//! filesystem directory. It builds Debian images (any suite a Debian mirror has, bootstrapped
//! by mmdebstrap or debootstrap) and busybox images (from Debian's `busybox-static` .deb).
//! The recipe format is described in `docs/image-recipes.md`; in short:
//!
//! ```yaml
//! image:
//!   name: bookworm                 # names the output files; the default hostname
//!   description: Debian bookworm   # properties: os (distribution), release, variant,
//!   expiry: 30d                    #   description, architecture, serial, name, + `properties:`
//! source:
//!   type: debian                   # or busybox (package: busybox-static, deb: /path.deb)
//!   suite: bookworm
//!   mirror: http://deb.debian.org/debian
//!   variant: minbase
//!   tool: auto                     # mmdebstrap if installed, else debootstrap
//! packages: [systemd, systemd-sysv, dbus, iproute2]
//! network:
//!   dhcp: eth0                     # systemd-networkd (Debian) or udhcpc (busybox)
//! files:
//! - path: /etc/hostname
//!   generator: hostname            # the file, and a template rendered on create and copy
//! - path: /etc/motd
//!   content: "hello\n"             # generator: dump (the default); mode "0644", uid, gid
//! actions:
//! - trigger: post-files            # or post-unpack, post-packages
//!   action: passwd -l root         # /bin/sh -c in a chroot with /proc, /sys, /dev mounted
//! ```
//!
//! The steps, in order: the source (Debian: bootstrap with the packages; busybox: the .deb's
//! binary, its applets, a locked root, busybox init), `post-unpack` and `post-packages`
//! actions, the network configuration, the files, `post-files` actions, Debian's clean-up, the
//! mtimes clamped to the creation date when it is fixed (`SOURCE_DATE_EPOCH`), and packing with
//! corral-image. Everything happens in a scratch directory beside the output; a build that
//! fails, at any step, leaves neither output nor scratch nor mounts (commands that mount run in
//! a private mount namespace of their own). Building needs root and runs the image's programs,
//! so it builds for this machine's architecture only. No daemon state, no HTTP: the only
//! network traffic is the bootstrapper's or apt's, to the mirror.

mod busybox;
mod debian;
mod error;
mod output;
pub mod recipe;
mod rootfs;
mod run;
mod scratch;

use std::fs;
use std::path::{Path, PathBuf};

pub use corral_image::Compression;
pub use error::{BuildError, RecipeError};
pub use output::Packed;
pub use recipe::Recipe;
pub use scratch::mounts_under;

use error::io;
use recipe::{FileKind, Source, Trigger};

/// The builder's version: part of the cache key of what it builds (tests/images/build.sh).
/// Bump it when a change makes the same recipe give different content.
pub const BUILDER_VERSION: u32 = 1;

/// What to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Only the root filesystem, as this directory (which must not exist yet).
    RootfsOnly(PathBuf),
    /// Images in this directory (made if missing): `NAME.tar.xz` (unified) and/or
    /// `NAME.meta.tar.xz` + `NAME.rootfs.tar.xz` (split).
    Images { dir: PathBuf, unified: bool, split: bool },
}

/// How to build.
pub struct BuildOptions<'a> {
    pub output: Output,
    /// Overrides a Debian source's mirror.
    pub mirror: Option<String>,
    pub compression: Compression,
    /// The image's creation date (unix seconds), e.g. from `SOURCE_DATE_EPOCH`: with it, every
    /// mtime in the tree later than it is set to it, so the same content packs to the same
    /// fingerprint. Without it: now, and the mtimes as built.
    pub creation_date: Option<i64>,
    /// Told each step as it starts.
    pub progress: &'a dyn Fn(&str),
}

/// What a build made.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Built {
    pub rootfs: Option<PathBuf>,
    pub unified: Option<Packed>,
    pub split: Option<Packed>,
}

/// Read and check the recipe file at `path`.
pub fn load_recipe(path: &Path) -> Result<Recipe, BuildError> {
    let text = fs::read_to_string(path).map_err(|err| BuildError::ReadRecipe {
        path: path.to_path_buf(),
        err,
    })?;
    Ok(Recipe::parse(&text)?)
}

/// Build `recipe`. Needs root.
pub fn build(recipe: &Recipe, opts: &BuildOptions<'_>) -> Result<Built, BuildError> {
    let mut recipe = recipe.clone();
    if let (Some(m), Source::Debian { mirror, .. }) = (&opts.mirror, &mut recipe.source) {
        recipe::check_mirror_url(m)?;
        *mirror = m.clone();
    }
    if !nix::unistd::geteuid().is_root() {
        return Err(BuildError::Invalid(
            "building an image needs root: the files belong to uid 0 and the image's programs run in a chroot".into(),
        ));
    }
    let tool = match &recipe.source {
        Source::Debian { tool, .. } => Some(debian::pick_tool(*tool)?),
        Source::Busybox { .. } => None,
    };

    // Where the scratch goes: beside the output, on the same filesystem, so that the rootfs
    // is renamed into place.
    let mut made_dir = None;
    let parent = match &opts.output {
        Output::RootfsOnly(dir) => {
            if dir.symlink_metadata().is_ok() {
                return Err(BuildError::Invalid(format!(
                    "{} already exists: --rootfs-only makes a new directory; remove it or name another",
                    dir.display()
                )));
            }
            let parent = dir
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf();
            if !parent.is_dir() {
                return Err(BuildError::Invalid(format!(
                    "{} is not a directory: make it first",
                    parent.display()
                )));
            }
            parent
        }
        Output::Images { dir, unified, split } => {
            if !unified && !split {
                return Err(BuildError::Invalid("no image format asked for".into()));
            }
            if !dir.exists() {
                fs::create_dir_all(dir).map_err(io(format!("cannot make {}", dir.display())))?;
                made_dir = Some(dir.clone());
            }
            dir.clone()
        }
    };
    let result = build_in(&recipe, opts, tool, &parent);
    if result.is_err() {
        if let Some(d) = made_dir {
            let _ = fs::remove_dir(d);
        }
    }
    result
}

fn build_in(recipe: &Recipe, opts: &BuildOptions<'_>, tool: Option<&str>, parent: &Path) -> Result<Built, BuildError> {
    let say = opts.progress;
    let scratch = scratch::Scratch::create(parent, &recipe.image.name)?;
    let root = scratch.path().join("rootfs");
    let dhcp = recipe.dhcp.as_deref();

    match &recipe.source {
        Source::Debian {
            suite, mirror, variant, ..
        } => {
            let tool = tool.unwrap_or("debootstrap");
            say(&format!("bootstrapping Debian {suite} from {mirror} with {tool}"));
            debian::unpack(tool, suite, mirror, variant, &recipe.packages, &root)?;
        }
        Source::Busybox { package, deb } => {
            say(&format!(
                "making a busybox tree from {}",
                deb.as_deref().unwrap_or(package)
            ));
            busybox::unpack(package, deb.as_deref(), dhcp, &root, scratch.path())?;
        }
    }
    run_actions(recipe, Trigger::PostUnpack, &root, say)?;
    run_actions(recipe, Trigger::PostPackages, &root, say)?;
    if let Some(iface) = dhcp {
        say(&format!("network: DHCP on {iface}"));
        match recipe.source {
            Source::Debian { .. } => debian::network(&root, iface)?,
            Source::Busybox { .. } => busybox::network(&root)?,
        }
    }
    for f in &recipe.files {
        match &f.kind {
            FileKind::Dump { content } | FileKind::Hostname { content } => {
                rootfs::write_file(&root, &f.path, content.as_bytes(), f.mode, f.uid, f.gid)?
            }
            FileKind::Hosts => rootfs::write_file(
                &root,
                &f.path,
                output::hosts_file(&recipe.image.name).as_bytes(),
                f.mode,
                f.uid,
                f.gid,
            )?,
            FileKind::Template { .. } => {}
        }
    }
    run_actions(recipe, Trigger::PostFiles, &root, say)?;
    if let Source::Debian { .. } = recipe.source {
        debian::cleanup(&root)?;
    }

    let created = match opts.creation_date {
        Some(t) => {
            rootfs::clamp_mtimes(&root, t)?;
            t
        }
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0),
    };

    let mut built = Built::default();
    match &opts.output {
        Output::RootfsOnly(dir) => {
            fs::rename(&root, dir).map_err(io(format!("cannot move the rootfs to {}", dir.display())))?;
            built.rootfs = Some(dir.clone());
        }
        Output::Images { dir, unified, split } => {
            let templates = scratch.path().join("templates");
            let meta = output::metadata(recipe, created, &templates)?;
            if opts.creation_date.is_some() {
                rootfs::clamp_mtimes(&templates, created)?;
            }
            let mut written = output::Written::default();
            let name = &recipe.image.name;
            if *unified {
                say("packing the unified image");
                built.unified = Some(output::pack_unified(
                    &root,
                    &meta,
                    &templates,
                    dir,
                    name,
                    opts.compression,
                    &mut written,
                )?);
            }
            if *split {
                say("packing the split image");
                built.split = Some(output::pack_split(
                    &root,
                    &meta,
                    &templates,
                    dir,
                    name,
                    opts.compression,
                    &mut written,
                )?);
            }
            written.keep();
        }
    }
    drop(scratch);
    Ok(built)
}

fn run_actions(recipe: &Recipe, trigger: Trigger, root: &Path, say: &dyn Fn(&str)) -> Result<(), BuildError> {
    for (i, a) in recipe.actions.iter().enumerate().filter(|(_, a)| a.trigger == trigger) {
        say(&format!("running actions[{i}]"));
        run::in_root(&format!("actions[{i}]"), root, &a.script)?;
    }
    Ok(())
}
