//! `metadata.yaml`: LXD's `api.ImageMetadata` and `api.ImageMetadataTemplate`, field for field.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

/// The contents of an image's `metadata.yaml`, as LXD and Incus define it.
///
/// Reading is tolerant the way LXD's Go YAML decoder is: unknown fields are ignored, missing or `null` fields
/// take their default, and scalar property values (`serial: 20240101`, `release: 3.10`) are kept as the text
/// written. Field names are the same in JSON, so this struct also serves the REST API.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageMetadata {
    /// Architecture name as LXD spells it (`x86_64`, `aarch64`, `armv7l`, `i686`, `ppc64le`, `s390x`,
    /// `riscv64`, ...); some image builders write Debian names (`amd64`, `arm64`).
    #[serde(default, deserialize_with = "null_default")]
    pub architecture: String,
    /// When the image was built, in unix seconds.
    #[serde(default, deserialize_with = "null_default")]
    pub creation_date: i64,
    /// When the image stops being supported, in unix seconds (0: never said).
    #[serde(default, deserialize_with = "null_default")]
    pub expiry_date: i64,
    /// Free-form properties: `description`, `os`, `release`, `variant`, `architecture`, `serial`, `name`, ...
    #[serde(default, deserialize_with = "string_map")]
    pub properties: BTreeMap<String, String>,
    /// Files generated in the container from templates, keyed by their path in the container
    /// (e.g. `/etc/hostname`).
    #[serde(default, deserialize_with = "template_map")]
    pub templates: BTreeMap<String, ImageTemplate>,
}

/// One entry of `templates:` in `metadata.yaml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageTemplate {
    /// When to render it: any of `create`, `copy`, `start`, `rename` (kept as strings: unknown triggers
    /// written by a newer LXD are carried through, not refused).
    #[serde(default, deserialize_with = "null_default")]
    pub when: Vec<String>,
    /// Render only if the file does not exist yet in the container.
    #[serde(default, deserialize_with = "null_default")]
    pub create_only: bool,
    /// The template's file name inside the image's `templates/` directory, e.g. `hostname.tpl`.
    #[serde(default, deserialize_with = "null_default")]
    pub template: String,
    /// Extra values handed to the template as `properties`.
    #[serde(default, deserialize_with = "string_map")]
    pub properties: BTreeMap<String, String>,
}

impl ImageTemplate {
    /// Whether this template is rendered on `trigger` (`create`, `copy`, `start`, `rename`).
    pub fn applies_on(&self, trigger: &str) -> bool {
        self.when.iter().any(|w| w == trigger)
    }
}

impl ImageMetadata {
    /// Parse `metadata.yaml`.
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            // Go's decoder gives the zero value for an empty document; so do we.
            return Ok(Self::default());
        }
        serde_saphyr::from_str(text).map_err(|e| e.to_string())
    }

    /// Render as `metadata.yaml` (fields in LXD's order, every field present as LXD writes them).
    pub fn to_yaml(&self) -> String {
        // Serialising plain strings, integers and maps cannot fail.
        serde_saphyr::to_string(self).unwrap_or_else(|e| unreachable!("metadata.yaml serialisation: {e}"))
    }
}

/// `null` (or an empty value) becomes the type's default, as in Go.
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn string_map<'de, D>(d: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: Deserializer<'de>,
{
    let map = Option::<BTreeMap<String, Option<String>>>::deserialize(d)?.unwrap_or_default();
    Ok(map.into_iter().map(|(k, v)| (k, v.unwrap_or_default())).collect())
}

fn template_map<'de, D>(d: D) -> Result<BTreeMap<String, ImageTemplate>, D::Error>
where
    D: Deserializer<'de>,
{
    let map = Option::<BTreeMap<String, Option<ImageTemplate>>>::deserialize(d)?.unwrap_or_default();
    Ok(map.into_iter().map(|(k, v)| (k, v.unwrap_or_default())).collect())
}

/// `YYYYMMDD_HH:MM` in UTC for `unix` seconds: the `serial` property format of LXD's image servers.
pub fn image_serial(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}{month:02}{day:02}_{:02}:{:02}", secs / 3600, secs % 3600 / 60)
}

/// This machine's architecture under the name LXD and Incus use (their `osarch` package), e.g. `x86_64`,
/// `aarch64`, `armv7l`, `i686`, `ppc64le`.
pub fn host_architecture() -> &'static str {
    lxd_architecture_name(std::env::consts::ARCH)
}

/// Map a Rust `target_arch` name to LXD's architecture name.
pub fn lxd_architecture_name(rust_arch: &str) -> &str {
    match rust_arch {
        "x86" => "i686",
        "arm" => "armv7l",
        "powerpc" => "ppc",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "powerpc64" => "ppc64",
        "sparc64" => "sparc64",
        // x86_64, aarch64, s390x, mips, mips64, riscv64, loongarch64 are spelled the same.
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A metadata.yaml as distrobuilder writes it for images.linuxcontainers.org, with a few things Go
    /// tolerates and we must too.
    const REAL: &str = r#"architecture: x86_64
creation_date: 1700040000
expiry_date: 1702632000
properties:
  architecture: amd64
  description: Debian bookworm amd64 (20231115_05:24)
  name: debian-bookworm-amd64-default-20231115_05:24
  os: debian
  release: bookworm
  serial: "20231115_05:24"
  variant: default
  version: 12.10
  build: 20231115
  empty:
templates:
  /etc/hostname:
    when:
    - create
    - copy
    create_only: false
    template: hostname.tpl
    properties: {}
  /etc/hosts:
    when: [create, copy]
    template: hosts.tpl
  /etc/machine-id:
    when:
    - create
    create_only: true
    template: machine-id.tpl
    properties:
      default: unset
  /etc/null-entry:
unknown_top_level_field: [1, 2, 3]
"#;

    #[test]
    fn parses_real_metadata() {
        let m = ImageMetadata::from_yaml(REAL).unwrap();
        assert_eq!(m.architecture, "x86_64");
        assert_eq!(m.creation_date, 1_700_040_000);
        assert_eq!(m.expiry_date, 1_702_632_000);
        assert_eq!(m.properties["os"], "debian");
        assert_eq!(m.properties["serial"], "20231115_05:24");
        assert_eq!(m.properties["version"], "12.10", "scalars keep their text");
        assert_eq!(m.properties["build"], "20231115");
        assert_eq!(m.properties["empty"], "");
        assert_eq!(m.templates.len(), 4);
        let h = &m.templates["/etc/hostname"];
        assert_eq!(h.when, ["create", "copy"]);
        assert!(!h.create_only);
        assert_eq!(h.template, "hostname.tpl");
        assert!(h.applies_on("copy") && !h.applies_on("start"));
        assert_eq!(m.templates["/etc/hosts"].when, ["create", "copy"]);
        let mid = &m.templates["/etc/machine-id"];
        assert!(mid.create_only);
        assert_eq!(mid.properties["default"], "unset");
        assert_eq!(m.templates["/etc/null-entry"], ImageTemplate::default());
    }

    #[test]
    fn round_trips_through_yaml_and_json() {
        let m = ImageMetadata::from_yaml(REAL).unwrap();
        let yaml = m.to_yaml();
        assert_eq!(ImageMetadata::from_yaml(&yaml).unwrap(), m, "{yaml}");
        assert!(
            yaml.starts_with("architecture: x86_64\ncreation_date: 1700040000\n"),
            "{yaml}"
        );
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<ImageMetadata>(&json).unwrap(), m);
    }

    #[test]
    fn empty_and_null_documents() {
        assert_eq!(ImageMetadata::from_yaml("").unwrap(), ImageMetadata::default());
        let m = ImageMetadata::from_yaml("architecture: ~\nproperties:\ntemplates: null\n").unwrap();
        assert_eq!(m, ImageMetadata::default());
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(ImageMetadata::from_yaml("architecture: [x86_64\n").is_err());
        assert!(ImageMetadata::from_yaml("properties: [a, b]\n").is_err());
        assert!(ImageMetadata::from_yaml("creation_date: yesterday\n").is_err());
    }

    #[test]
    fn serials() {
        assert_eq!(image_serial(0), "19700101_00:00");
        assert_eq!(image_serial(1_700_040_000), "20231115_09:20");
        assert_eq!(image_serial(951_782_400), "20000229_00:00");
    }

    #[test]
    fn architecture_names() {
        assert_eq!(lxd_architecture_name("x86_64"), "x86_64");
        assert_eq!(lxd_architecture_name("aarch64"), "aarch64");
        assert_eq!(lxd_architecture_name("arm"), "armv7l");
        assert_eq!(lxd_architecture_name("x86"), "i686");
        assert!(!host_architecture().is_empty());
    }
}
