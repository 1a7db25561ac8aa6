//! The recipe: its YAML shape, and the checks that turn it into a [`Recipe`] the build can trust.
//!
//! Parsing refuses unknown keys (a typo is an error, not a silently ignored setting) and names
//! the field at fault; [`Recipe::parse`] then checks what YAML types cannot say (a source type's
//! required fields, absolute file paths without `..`, octal modes, interface names).

use std::collections::BTreeMap;
use std::path::{Component, Path};

use serde::Deserialize;

use crate::error::RecipeError;

/// A recipe as written (see the crate documentation for every field).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecipe {
    image: RawImage,
    source: RawSource,
    #[serde(default)]
    packages: Vec<String>,
    #[serde(default)]
    network: Option<RawNetwork>,
    #[serde(default)]
    files: Vec<RawFile>,
    #[serde(default)]
    actions: Vec<RawAction>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImage {
    name: Option<String>,
    distribution: Option<String>,
    release: Option<String>,
    variant: Option<String>,
    description: Option<String>,
    architecture: Option<String>,
    expiry: Option<String>,
    #[serde(default)]
    properties: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    #[serde(rename = "type")]
    kind: Option<String>,
    suite: Option<String>,
    mirror: Option<String>,
    variant: Option<String>,
    tool: Option<String>,
    package: Option<String>,
    deb: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    dhcp: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    path: Option<String>,
    generator: Option<String>,
    content: Option<String>,
    mode: Option<String>,
    uid: Option<u32>,
    gid: Option<u32>,
    #[serde(default)]
    when: Option<Vec<String>>,
    #[serde(default)]
    create_only: bool,
    #[serde(default)]
    properties: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAction {
    trigger: Option<String>,
    action: Option<String>,
}

/// A checked recipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipe {
    pub image: Image,
    pub source: Source,
    /// Packages added to the image (Debian: installed by the bootstrap).
    pub packages: Vec<String>,
    /// The interface configured by DHCP when the container starts, if any.
    pub dhcp: Option<String>,
    pub files: Vec<FileSpec>,
    pub actions: Vec<Action>,
}

/// The `image:` section: what the image's metadata says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Names the output files; the default hostname.
    pub name: String,
    /// The `os` property (default `Debian` or `BusyBox`).
    pub distribution: String,
    /// The `release` property (default: the Debian suite; none for busybox).
    pub release: Option<String>,
    pub variant: String,
    pub description: String,
    /// LXD's architecture name (default: this machine's).
    pub architecture: String,
    /// Seconds from the creation date to the expiry date (0: no expiry).
    pub expiry_secs: i64,
    /// More properties, over the ones above.
    pub properties: BTreeMap<String, String>,
}

/// Where the root filesystem comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A Debian suite bootstrapped from a mirror.
    Debian {
        suite: String,
        mirror: String,
        /// debootstrap/mmdebstrap variant (`minbase` by default).
        variant: String,
        tool: Tool,
    },
    /// busybox from a Debian `busybox-static` .deb: a local file, or downloaded with apt.
    Busybox { package: String, deb: Option<String> },
}

/// Which bootstrapper makes a Debian rootfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// mmdebstrap if installed, else debootstrap.
    Auto,
    Debootstrap,
    Mmdebstrap,
}

/// One entry of `files:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSpec {
    /// Absolute path in the container, normalised (no `.`, `..` or empty components).
    pub path: String,
    pub kind: FileKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// What a `files:` entry makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileKind {
    /// `generator: dump` (the default): the file with `content`.
    Dump { content: String },
    /// `generator: hostname`: the file with the image name (or `content`), and an LXD template
    /// that writes the instance's name there on create and copy.
    Hostname { content: String },
    /// `generator: hosts`: an /etc/hosts for the image name, and its template (create, copy).
    Hosts,
    /// `generator: template`: only an LXD template, rendered into the instance.
    Template {
        content: String,
        when: Vec<String>,
        create_only: bool,
        properties: BTreeMap<String, String>,
    },
}

/// When an action runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Trigger {
    /// Right after the source is unpacked.
    PostUnpack,
    /// After the packages are in.
    PostPackages,
    /// After the network configuration and the files (the default).
    PostFiles,
}

/// One entry of `actions:`: a shell script run in the image's root (`chroot ROOT /bin/sh -c`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub trigger: Trigger,
    pub script: String,
}

/// The mirror a Debian source uses by default.
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

const TEMPLATE_TRIGGERS: &[&str] = &["create", "copy", "start", "rename"];

impl Recipe {
    /// Parse and check a recipe's text.
    pub fn parse(text: &str) -> Result<Recipe, RecipeError> {
        let raw = parse_yaml(text)?;
        check(raw)
    }
}

fn parse_yaml(text: &str) -> Result<RawRecipe, RecipeError> {
    if text.trim().is_empty() {
        return Err(RecipeError::new(
            "(document)",
            "the recipe is empty: it needs at least `image:` and `source:`",
        ));
    }
    let mut path = String::new();
    // One line: "line L column C: what"; the field's path is said first.
    let mut options = serde_saphyr::Options::default();
    options.with_snippet = false;
    serde_saphyr::with_deserializer_from_str_with_options(text, options, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            path = e.path().to_string();
            e.into_inner()
        })
    })
    .map_err(|e| {
        let field = if path.is_empty() || path == "." || path == "?" {
            "(document)".to_string()
        } else {
            path
        };
        let msg = e.to_string();
        RecipeError::new(field, msg.strip_prefix("error: ").unwrap_or(&msg).to_string())
    })
}

fn required(value: Option<String>, field: &str, hint: &str) -> Result<String, RecipeError> {
    match value {
        Some(v) if !v.trim().is_empty() => Ok(v),
        _ => Err(RecipeError::new(field, format!("is required: {hint}"))),
    }
}

fn refuse_for(value: &Option<String>, field: &str, kind: &str) -> Result<(), RecipeError> {
    if value.is_some() {
        return Err(RecipeError::new(
            field,
            format!("is not a setting of a {kind} source: remove it"),
        ));
    }
    Ok(())
}

fn check(raw: RawRecipe) -> Result<Recipe, RecipeError> {
    let source = check_source(raw.source)?;
    let is_debian = matches!(source, Source::Debian { .. });

    let name = required(raw.image.name, "image.name", "the image's name, e.g. `name: bookworm`")?;
    check_name(&name, "image.name")?;
    let distribution = raw
        .image
        .distribution
        .unwrap_or_else(|| if is_debian { "Debian" } else { "BusyBox" }.to_string());
    let release = raw.image.release.or_else(|| match &source {
        Source::Debian { suite, .. } => Some(suite.clone()),
        Source::Busybox { .. } => None,
    });
    let description = raw.image.description.unwrap_or_else(|| match &release {
        Some(r) => format!("{distribution} {r}"),
        None => distribution.clone(),
    });
    let architecture = raw
        .image
        .architecture
        .unwrap_or_else(|| corral_image::host_architecture().to_string());
    if architecture != corral_image::host_architecture() {
        return Err(RecipeError::new(
            "image.architecture",
            format!(
                "{architecture:?} is not this machine's architecture ({}): the builder runs the image's \
                 programs, so it builds only for the host",
                corral_image::host_architecture()
            ),
        ));
    }
    let expiry_secs = match raw.image.expiry {
        None => 0,
        Some(e) => parse_duration(&e).ok_or_else(|| {
            RecipeError::new(
                "image.expiry",
                format!("{e:?} is not a duration: write a number with a unit, e.g. `30d`, `12h`, `2w`"),
            )
        })?,
    };
    let image = Image {
        name,
        distribution,
        release,
        variant: raw.image.variant.unwrap_or_else(|| "default".to_string()),
        description,
        architecture,
        expiry_secs,
        properties: raw.image.properties,
    };

    for (i, p) in raw.packages.iter().enumerate() {
        let ok = !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.:".contains(c));
        if !ok {
            return Err(RecipeError::new(
                format!("packages[{i}]"),
                format!("{p:?} is not a Debian package name (lowercase letters, digits, + - . :)"),
            ));
        }
    }
    if !is_debian && !raw.packages.is_empty() {
        return Err(RecipeError::new(
            "packages",
            "a busybox image has no package manager: remove `packages`, or use a debian source",
        ));
    }

    let dhcp = match raw.network {
        None => None,
        Some(n) => match n.dhcp {
            None => None,
            Some(iface) => {
                let ok = !iface.is_empty()
                    && iface.len() <= 15
                    && iface.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
                if !ok {
                    return Err(RecipeError::new(
                        "network.dhcp",
                        format!("{iface:?} is not an interface name (1 to 15 of A-Z a-z 0-9 _ . -), e.g. eth0"),
                    ));
                }
                Some(iface)
            }
        },
    };

    let mut files = Vec::new();
    for (i, f) in raw.files.into_iter().enumerate() {
        files.push(check_file(f, i, &image.name)?);
    }
    let mut templates = BTreeMap::new();
    for (i, f) in files.iter().enumerate() {
        for key in [f.template_name(), f.kind.makes_template().then(|| f.path.clone())]
            .into_iter()
            .flatten()
        {
            if let Some(j) = templates.insert(key, i) {
                return Err(RecipeError::new(
                    format!("files[{i}]"),
                    format!("{} has the same template as files[{j}]: keep one of them", f.path),
                ));
            }
        }
    }

    let mut actions = Vec::new();
    for (i, a) in raw.actions.into_iter().enumerate() {
        let trigger = match a.trigger.as_deref() {
            None | Some("post-files") => Trigger::PostFiles,
            Some("post-unpack") => Trigger::PostUnpack,
            Some("post-packages") => Trigger::PostPackages,
            Some(t) => {
                return Err(RecipeError::new(
                    format!("actions[{i}].trigger"),
                    format!("unknown trigger {t:?}: use post-unpack, post-packages or post-files"),
                ))
            }
        };
        let script = required(
            a.action,
            &format!("actions[{i}].action"),
            "the shell script to run in the image's root",
        )?;
        actions.push(Action { trigger, script });
    }

    Ok(Recipe {
        image,
        source,
        packages: raw.packages,
        dhcp,
        files,
        actions,
    })
}

fn check_source(s: RawSource) -> Result<Source, RecipeError> {
    let kind = required(s.kind.clone(), "source.type", "`debian` or `busybox`")?;
    match kind.as_str() {
        "debian" => {
            refuse_for(&s.package, "source.package", "debian")?;
            refuse_for(&s.deb, "source.deb", "debian")?;
            let suite = required(
                s.suite,
                "source.suite",
                "the Debian suite to bootstrap, e.g. `suite: bookworm` (any suite the mirror has)",
            )?;
            check_name(&suite, "source.suite")?;
            let mirror = s.mirror.unwrap_or_else(|| DEFAULT_MIRROR.to_string());
            check_mirror(&mirror, "source.mirror")?;
            let variant = s.variant.unwrap_or_else(|| "minbase".to_string());
            check_name(&variant, "source.variant")?;
            let tool = match s.tool.as_deref() {
                None | Some("auto") => Tool::Auto,
                Some("debootstrap") => Tool::Debootstrap,
                Some("mmdebstrap") => Tool::Mmdebstrap,
                Some(t) => {
                    return Err(RecipeError::new(
                        "source.tool",
                        format!("unknown tool {t:?}: use auto, debootstrap or mmdebstrap"),
                    ))
                }
            };
            Ok(Source::Debian {
                suite,
                mirror,
                variant,
                tool,
            })
        }
        "busybox" => {
            for (v, f) in [
                (&s.suite, "source.suite"),
                (&s.mirror, "source.mirror"),
                (&s.variant, "source.variant"),
                (&s.tool, "source.tool"),
            ] {
                refuse_for(v, f, "busybox")?;
            }
            let package = s.package.unwrap_or_else(|| "busybox-static".to_string());
            check_name(&package, "source.package")?;
            if let Some(deb) = &s.deb {
                if !deb.starts_with('/') {
                    return Err(RecipeError::new(
                        "source.deb",
                        format!("{deb:?} must be an absolute path to a .deb file"),
                    ));
                }
            }
            Ok(Source::Busybox { package, deb: s.deb })
        }
        other => Err(RecipeError::new(
            "source.type",
            format!("unknown source type {other:?}: use `debian` (a suite bootstrapped from a mirror) or `busybox`"),
        )),
    }
}

fn check_file(f: RawFile, i: usize, image_name: &str) -> Result<FileSpec, RecipeError> {
    let field = |name: &str| format!("files[{i}].{name}");
    let path = required(f.path, &field("path"), "the file's absolute path in the image")?;
    check_path(&path, &field("path"))?;
    let generator = f.generator.as_deref().unwrap_or("dump");
    let not_here = |v: bool, name: &str| -> Result<(), RecipeError> {
        if v {
            return Err(RecipeError::new(
                field(name),
                format!("is not a setting of generator {generator}: remove it"),
            ));
        }
        Ok(())
    };
    if generator != "template" {
        not_here(f.when.is_some(), "when")?;
        not_here(f.create_only, "create_only")?;
        not_here(!f.properties.is_empty(), "properties")?;
    }
    let kind = match generator {
        "dump" => FileKind::Dump {
            content: required_content(f.content, &field("content"))?,
        },
        "hostname" => FileKind::Hostname {
            content: f.content.unwrap_or_else(|| format!("{image_name}\n")),
        },
        "hosts" => {
            not_here(f.content.is_some(), "content")?;
            FileKind::Hosts
        }
        "template" => {
            let when = f.when.unwrap_or_else(|| vec!["create".into(), "copy".into()]);
            for w in &when {
                if !TEMPLATE_TRIGGERS.contains(&w.as_str()) {
                    return Err(RecipeError::new(
                        field("when"),
                        format!("unknown trigger {w:?}: use create, copy, start or rename"),
                    ));
                }
            }
            FileKind::Template {
                content: required_content(f.content, &field("content"))?,
                when,
                create_only: f.create_only,
                properties: f.properties,
            }
        }
        other => {
            return Err(RecipeError::new(
                field("generator"),
                format!("unknown generator {other:?}: use dump (the default), hostname, hosts or template"),
            ))
        }
    };
    if matches!(kind, FileKind::Template { .. }) {
        not_here(f.mode.is_some(), "mode")?;
        not_here(f.uid.is_some(), "uid")?;
        not_here(f.gid.is_some(), "gid")?;
    }
    let mode = match f.mode {
        None => 0o644,
        Some(m) => parse_mode(&m).ok_or_else(|| {
            RecipeError::new(
                field("mode"),
                format!("{m:?} is not a file mode: write it in octal as a string, e.g. \"0644\" or \"0755\""),
            )
        })?,
    };
    Ok(FileSpec {
        path,
        kind,
        mode,
        uid: f.uid.unwrap_or(0),
        gid: f.gid.unwrap_or(0),
    })
}

fn required_content(content: Option<String>, field: &str) -> Result<String, RecipeError> {
    content.ok_or_else(|| RecipeError::new(field, "is required: the file's text (`content: |` and the lines)"))
}

impl FileSpec {
    /// The file name of this entry's template in the image's `templates/`, if it has one:
    /// `hostname.tpl` and `hosts.tpl` as image builders name them, else the path with `/` as `_`.
    pub fn template_name(&self) -> Option<String> {
        match self.kind {
            FileKind::Dump { .. } => None,
            FileKind::Hostname { .. } => Some("hostname.tpl".into()),
            FileKind::Hosts => Some("hosts.tpl".into()),
            FileKind::Template { .. } => Some(format!("{}.tpl", self.path.trim_start_matches('/').replace('/', "_"))),
        }
    }
}

impl FileKind {
    /// Whether this entry gives the image an LXD template.
    pub fn makes_template(&self) -> bool {
        !matches!(self, FileKind::Dump { .. })
    }
}

/// An absolute path inside the image, without `.`, `..` or empty components.
fn check_path(path: &str, field: &str) -> Result<(), RecipeError> {
    let bad = |why: &str| Err(RecipeError::new(field, format!("{path:?} {why}")));
    if !path.starts_with('/') {
        return bad("must be an absolute path in the image, e.g. /etc/motd");
    }
    if path.contains('\0') {
        return bad("contains a NUL byte");
    }
    if path.split('/').any(|c| c == "..") {
        return bad("contains `..`: a file must stay inside the image; write the path without it");
    }
    if path.ends_with('/') || path.contains("//") || path.split('/').any(|c| c == ".") {
        return bad("is not a normalised file path (no trailing /, no // or /./)");
    }
    if Path::new(path)
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .count()
        == 0
    {
        return bad("names the image's root, not a file");
    }
    Ok(())
}

/// Names that end up in paths and command lines: no `/`, no spaces, no leading `-`.
fn check_name(v: &str, field: &str) -> Result<(), RecipeError> {
    let ok = !v.is_empty()
        && !v.starts_with(['-', '.'])
        && v.chars().all(|c| c.is_ascii_alphanumeric() || "_.+-:".contains(c));
    if !ok {
        return Err(RecipeError::new(
            field,
            format!("{v:?} must be letters, digits and _ . + - : (not starting with - or .)"),
        ));
    }
    Ok(())
}

fn check_mirror(v: &str, field: &str) -> Result<(), RecipeError> {
    let ok = ["http://", "https://", "file:///"].iter().any(|p| v.starts_with(p))
        && !v.chars().any(|c| c.is_whitespace() || c.is_control());
    if !ok {
        return Err(RecipeError::new(
            field,
            format!("{v:?} is not a mirror URL: write http://, https:// or file:/// and the archive's root"),
        ));
    }
    Ok(())
}

/// Check a mirror given on the command line.
pub fn check_mirror_url(v: &str) -> Result<(), RecipeError> {
    check_mirror(v, "--mirror")
}

fn parse_mode(m: &str) -> Option<u32> {
    let digits = m.strip_prefix("0o").unwrap_or(m);
    if digits.is_empty() || digits.len() > 5 {
        return None;
    }
    u32::from_str_radix(digits, 8).ok().filter(|v| *v <= 0o7777)
}

fn parse_duration(s: &str) -> Option<i64> {
    let s = s.trim();
    let unit_at = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(unit_at);
    let n: i64 = n.parse().ok()?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUSYBOX: &str = "image:\n  name: busybox\nsource:\n  type: busybox\nnetwork:\n  dhcp: eth0\n";

    fn err(text: &str) -> RecipeError {
        Recipe::parse(text).expect_err("must be refused")
    }

    #[test]
    fn minimal_recipes() {
        let r = Recipe::parse(BUSYBOX).unwrap();
        assert_eq!(r.image.distribution, "BusyBox");
        assert_eq!(r.dhcp.as_deref(), Some("eth0"));
        assert_eq!(
            r.source,
            Source::Busybox {
                package: "busybox-static".into(),
                deb: None
            }
        );
        let r =
            Recipe::parse("image: {name: t}\nsource: {type: debian, suite: trixie}\npackages: [systemd]\n").unwrap();
        assert_eq!(r.image.release.as_deref(), Some("trixie"));
        assert_eq!(r.image.description, "Debian trixie");
        let Source::Debian {
            mirror, variant, tool, ..
        } = r.source
        else {
            panic!()
        };
        assert_eq!(
            (mirror.as_str(), variant.as_str(), tool),
            (DEFAULT_MIRROR, "minbase", Tool::Auto)
        );
    }

    #[test]
    fn files_and_actions() {
        let text = format!(
            "{BUSYBOX}files:\n- path: /etc/motd\n  content: hi\n  mode: \"0600\"\n  uid: 5\n- path: /etc/hostname\n  \
             generator: hostname\n- path: /etc/issue\n  generator: template\n  content: \"{{{{ container.name }}}}\"\n  \
             when: [start]\nactions:\n- action: echo hi\n- trigger: post-unpack\n  action: true\n"
        );
        let r = Recipe::parse(&text).unwrap();
        assert_eq!(r.files[0].mode, 0o600);
        assert_eq!(r.files[0].uid, 5);
        assert_eq!(
            r.files[1].kind,
            FileKind::Hostname {
                content: "busybox\n".into()
            }
        );
        assert!(matches!(&r.files[2].kind, FileKind::Template { when, .. } if when == &["start"]));
        assert_eq!(r.actions[0].trigger, Trigger::PostFiles);
        assert_eq!(r.actions[1].trigger, Trigger::PostUnpack);
    }

    #[test]
    fn refusals_name_the_field() {
        let e = err("image: {name: x}\nsource: {type: alpine}\n");
        assert_eq!(e.field, "source.type");
        assert!(e.message.contains("unknown source type \"alpine\""), "{e}");
        let e = err("image: {name: x}\nsource: {type: debian}\n");
        assert_eq!(e.field, "source.suite");
        assert!(e.to_string().contains("is required"), "{e}");
        let e = err(&format!("{BUSYBOX}files:\n- path: /etc/../../x\n  content: a\n"));
        assert_eq!(e.field, "files[0].path");
        assert!(e.message.contains("`..`"), "{e}");
        let e = err(&format!("{BUSYBOX}colour: blue\n"));
        assert!(e.to_string().contains("colour"), "{e}");
        let e = err("image: {name: x}\nsource: {type: busybox, sute: a}\n");
        assert_eq!(e.field, "source.sute", "{e}");
        assert!(e.message.contains("unknown field `sute`"), "{e}");
        let e = err(&format!("{BUSYBOX}files:\n- path: /a\n  content: a\n  mode: 644x\n"));
        assert_eq!(e.field, "files[0].mode");
        let e = err(&format!("{BUSYBOX}files:\n- path: etc/a\n  content: a\n"));
        assert_eq!(e.field, "files[0].path");
        let e = err(&format!("{BUSYBOX}files:\n- path: /a\n"));
        assert_eq!(e.field, "files[0].content");
        let e = err(&format!("{BUSYBOX}packages: [vim]\n"));
        assert_eq!(e.field, "packages");
        let e = err("image: {name: x}\nsource: {type: busybox, suite: bookworm}\n");
        assert_eq!(e.field, "source.suite");
        let e = err("image: {name: x}\nsource: {type: debian, suite: a, mirror: ftp.debian.org}\n");
        assert_eq!(e.field, "source.mirror");
        let e = err("source: {type: busybox}\n");
        assert!(e.to_string().contains("image"), "{e}");

        let e = err("");
        assert_eq!(e.field, "(document)");
        let e = err(&format!("{BUSYBOX}actions:\n- trigger: later\n  action: x\n"));
        assert_eq!(e.field, "actions[0].trigger");
        let e = err("image: {name: x}\nsource: {type: busybox}\nnetwork: {dhcp: \"eth 0\"}\n");
        assert_eq!(e.field, "network.dhcp");
    }

    #[test]
    fn durations_and_modes() {
        assert_eq!(parse_duration("30d"), Some(30 * 86_400));
        assert_eq!(parse_duration("12h"), Some(43_200));
        assert_eq!(parse_duration("30"), None);
        assert_eq!(parse_duration("d"), None);
        assert_eq!(parse_mode("0755"), Some(0o755));
        assert_eq!(parse_mode("4755"), Some(0o4755));
        assert_eq!(parse_mode("0o600"), Some(0o600));
        assert_eq!(parse_mode("888"), None);
        assert_eq!(parse_mode("17777"), None);
    }
}
