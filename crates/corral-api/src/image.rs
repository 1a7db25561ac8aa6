//! Images and image aliases: `/1.0/images/...` (LXD's `image.go`), and the image's own
//! `metadata.yaml` ([`ImageMetadata`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::instance::InstanceType;
use crate::time::Timestamp;
use crate::wire::nullable;

/// An image's writable fields: the body of `PUT /1.0/images/<fingerprint>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ImagePut {
    /// Keep the image up to date from its `update_source`.
    #[serde(deserialize_with = "nullable")]
    pub auto_update: bool,
    /// Descriptive properties (`"os": "Debian"`, `"release": "bookworm"`, `"description": ...`).
    #[serde(deserialize_with = "nullable")]
    pub properties: BTreeMap<String, String>,
    /// Whether untrusted clients may see and use it.
    #[serde(deserialize_with = "nullable")]
    pub public: bool,
    /// When it is deleted; zero time for never.
    #[serde(deserialize_with = "nullable")]
    pub expires_at: Timestamp,
    /// Profiles applied to instances made from it. `None` (`null`, absent) means
    /// `["default"]` to LXD, while `Some([])` means none.
    pub profiles: Option<Vec<String>>,
}

/// An image, as `GET /1.0/images/<fingerprint>` returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Image {
    /// Keep the image up to date from its `update_source`.
    #[serde(deserialize_with = "nullable")]
    pub auto_update: bool,
    /// Descriptive properties (`"os": "Debian"`, `"release": "bookworm"`, `"description": ...`).
    #[serde(deserialize_with = "nullable")]
    pub properties: BTreeMap<String, String>,
    /// Whether untrusted clients may see and use it.
    #[serde(deserialize_with = "nullable")]
    pub public: bool,
    /// When it is deleted; zero time for never.
    #[serde(deserialize_with = "nullable")]
    pub expires_at: Timestamp,
    /// Profiles applied to instances made from it.
    #[serde(deserialize_with = "nullable")]
    pub profiles: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    pub aliases: Vec<ImageAlias>,
    /// `"x86_64"`...
    #[serde(deserialize_with = "nullable")]
    pub architecture: String,
    /// Whether it was downloaded only to create an instance (and may be pruned).
    #[serde(deserialize_with = "nullable")]
    pub cached: bool,
    /// The original file name (`"lxd.tar.xz"`).
    #[serde(deserialize_with = "nullable")]
    pub filename: String,
    /// SHA-256 of the image's file(s), hex.
    #[serde(deserialize_with = "nullable")]
    pub fingerprint: String,
    /// Bytes.
    #[serde(deserialize_with = "nullable")]
    pub size: i64,
    /// Where it came from, for auto-update.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update_source: Option<ImageSource>,
    /// Container or virtual-machine image.
    #[serde(rename = "type", deserialize_with = "nullable")]
    pub kind: InstanceType,
    /// When the image was built.
    #[serde(deserialize_with = "nullable")]
    pub created_at: Timestamp,
    /// When an instance was last created from it; zero time for never.
    #[serde(deserialize_with = "nullable")]
    pub last_used_at: Timestamp,
    /// When it was added to this server.
    #[serde(deserialize_with = "nullable")]
    pub uploaded_at: Timestamp,
    /// The project it is in (newer than LXD 5.0; older clients ignore it).
    #[serde(deserialize_with = "nullable")]
    pub project: String,
}

/// An alias of an image, as listed in [`Image::aliases`] and [`ImagesPost::aliases`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ImageAlias {
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    #[serde(deserialize_with = "nullable")]
    pub description: String,
}

/// Where an image comes from: a remote image server and alias.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ImageSource {
    /// Alias on the remote (`"debian/12"`).
    #[serde(deserialize_with = "nullable")]
    pub alias: String,
    /// The remote's certificate, PEM; `""` for a publicly trusted one.
    #[serde(deserialize_with = "nullable")]
    pub certificate: String,
    /// `"lxd"` or `"simplestreams"`.
    #[serde(deserialize_with = "nullable")]
    pub protocol: String,
    /// The remote's URL.
    #[serde(deserialize_with = "nullable")]
    pub server: String,
    /// The kind of image to get for the alias.
    #[serde(deserialize_with = "nullable")]
    pub image_type: InstanceType,
}

/// The body of `POST /1.0/images`: add an image.
///
/// Its first fields are those of [`ImagePut`] (Go embeds it), at the top level of the JSON
/// object like the rest. With a JSON body, `source` says where to get the image (another
/// server, a URL, an instance or snapshot); an upload instead carries the image file as the
/// body, and these fields in headers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ImagesPost {
    /// Keep the image up to date from its source.
    #[serde(deserialize_with = "nullable")]
    pub auto_update: bool,
    /// Descriptive properties (`"os"`, `"release"`, `"description"`...).
    #[serde(deserialize_with = "nullable")]
    pub properties: BTreeMap<String, String>,
    /// Whether untrusted clients may see and use it.
    #[serde(deserialize_with = "nullable")]
    pub public: bool,
    /// When it is deleted; zero time for never.
    #[serde(deserialize_with = "nullable")]
    pub expires_at: Timestamp,
    /// Profiles applied to instances made from it; `None` means `["default"]`.
    pub profiles: Option<Vec<String>>,
    /// The original file name.
    #[serde(deserialize_with = "nullable")]
    pub filename: String,
    pub source: Option<ImagesPostSource>,
    /// For an image made from an instance: `"gzip"`, `"xz"`, `"none"`...; `""` for the server's.
    #[serde(deserialize_with = "nullable")]
    pub compression_algorithm: String,
    /// Aliases to create for it.
    #[serde(deserialize_with = "nullable")]
    pub aliases: Vec<ImageAlias>,
}

/// Where a new image comes from (`source` of [`ImagesPost`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ImagesPostSource {
    /// Alias on the remote (`"debian/12"`).
    #[serde(deserialize_with = "nullable")]
    pub alias: String,
    /// The remote's certificate, PEM.
    #[serde(deserialize_with = "nullable")]
    pub certificate: String,
    /// `"lxd"` or `"simplestreams"`.
    #[serde(deserialize_with = "nullable")]
    pub protocol: String,
    /// The remote's URL.
    #[serde(deserialize_with = "nullable")]
    pub server: String,
    /// The kind of image to get for the alias.
    #[serde(deserialize_with = "nullable")]
    pub image_type: InstanceType,
    /// `"pull"` (default) or `"push"`.
    #[serde(deserialize_with = "nullable")]
    pub mode: String,
    /// `"image"` (from a server), `"url"`, `"instance"` or `"snapshot"`.
    #[serde(rename = "type", deserialize_with = "nullable")]
    pub kind: String,
    /// For type `url`: where to download it.
    #[serde(deserialize_with = "nullable")]
    pub url: String,
    /// For type `instance`/`snapshot`: its name (`"c1"`, `"c1/snap0"`).
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    /// For type `image`: the image on the remote.
    #[serde(deserialize_with = "nullable")]
    pub fingerprint: String,
    /// For a private remote image: the secret from `POST /1.0/images/<fp>/secret`.
    #[serde(deserialize_with = "nullable")]
    pub secret: String,
    /// The project on the remote.
    #[serde(deserialize_with = "nullable")]
    pub project: String,
}

/// The body of `POST /1.0/images/<fingerprint>/export`: push the image to another server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ImageExportPost {
    /// The target server's URL.
    #[serde(deserialize_with = "nullable")]
    pub target: String,
    /// The token the target gave.
    #[serde(deserialize_with = "nullable")]
    pub secret: String,
    /// The target's certificate, PEM.
    #[serde(deserialize_with = "nullable")]
    pub certificate: String,
    /// Aliases to create on the target.
    #[serde(deserialize_with = "nullable")]
    pub aliases: Vec<ImageAlias>,
    /// The project on the target.
    #[serde(deserialize_with = "nullable")]
    pub project: String,
    /// Profiles to give the image on the target.
    #[serde(deserialize_with = "nullable")]
    pub profiles: Vec<String>,
}

/// The body of `POST /1.0/images/aliases`: create an alias (same fields as the entry).
pub type ImageAliasesPost = ImageAliasesEntry;

/// An alias, as `GET /1.0/images/aliases/<name>` returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ImageAliasesEntry {
    #[serde(deserialize_with = "nullable")]
    pub description: String,
    /// The fingerprint of the image it names.
    #[serde(deserialize_with = "nullable")]
    pub target: String,
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    /// The kind of the image it names.
    #[serde(rename = "type", deserialize_with = "nullable")]
    pub kind: InstanceType,
}

/// The body of `PUT /1.0/images/aliases/<name>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ImageAliasesEntryPut {
    #[serde(deserialize_with = "nullable")]
    pub description: String,
    /// The fingerprint of the image it names.
    #[serde(deserialize_with = "nullable")]
    pub target: String,
}

/// The body of `POST /1.0/images/aliases/<name>`: rename.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ImageAliasesEntryPost {
    /// The new name.
    #[serde(deserialize_with = "nullable")]
    pub name: String,
}

/// An image's `metadata.yaml` (also served as JSON at `/1.0/instances/<name>/metadata`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ImageMetadata {
    /// `"x86_64"`, `"amd64"`, `"aarch64"`...
    #[serde(deserialize_with = "nullable")]
    pub architecture: String,
    /// When the image was built, Unix seconds.
    #[serde(deserialize_with = "nullable")]
    pub creation_date: i64,
    /// When it expires, Unix seconds; 0 for never.
    #[serde(deserialize_with = "nullable")]
    pub expiry_date: i64,
    /// Descriptive properties (`"os"`, `"release"`, `"description"`...).
    #[serde(deserialize_with = "nullable")]
    pub properties: BTreeMap<String, String>,
    /// Templates to render into the instance, by path inside it (`"/etc/hostname"`).
    #[serde(deserialize_with = "nullable")]
    pub templates: BTreeMap<String, ImageMetadataTemplate>,
}

/// A file template of an image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ImageMetadataTemplate {
    /// When to render it: `"create"`, `"copy"`, `"start"`, `"rename"`.
    #[serde(deserialize_with = "nullable")]
    pub when: Vec<String>,
    /// Render only if the file doesn't exist yet.
    #[serde(deserialize_with = "nullable")]
    pub create_only: bool,
    /// The template's file name, in the image's `templates/` directory (`"hostname.tpl"`).
    #[serde(deserialize_with = "nullable")]
    pub template: String,
    /// Values the template can use.
    #[serde(deserialize_with = "nullable")]
    pub properties: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{nulls_and_missing_are_default, parse_and_write, round_trip, unknown_fields_ignored};

    #[test]
    fn lxd_image_round_trips() {
        let image: Image = round_trip(
            r#"{"auto_update":true,
                "properties":{"architecture":"amd64","description":"Debian bookworm amd64 (20240101_05:24)",
                  "os":"Debian","release":"bookworm","serial":"20240101_05:24","type":"squashfs","variant":"default"},
                "public":false,"expires_at":"0001-01-01T00:00:00Z","profiles":["default"],
                "aliases":[{"name":"deb12","description":""}],
                "architecture":"x86_64","cached":true,"filename":"lxd.tar.xz",
                "fingerprint":"ac3e8d3f0e2a3e5b7d1f6c2b4a9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e",
                "size":95143752,
                "update_source":{"alias":"debian/12","certificate":"","protocol":"simplestreams",
                  "server":"https://images.linuxcontainers.org","image_type":"container"},
                "type":"container","created_at":"2024-01-01T00:00:00Z",
                "last_used_at":"2024-01-01T10:00:00.123456789Z","uploaded_at":"2024-01-01T09:59:30.05Z",
                "project":"default"}"#,
        );
        assert!(image.auto_update && image.cached && !image.public);
        assert_eq!(image.properties["release"], "bookworm");
        assert!(image.expires_at.is_zero());
        assert_eq!(
            image.aliases,
            [ImageAlias {
                name: "deb12".into(),
                description: String::new()
            }]
        );
        assert_eq!(image.size, 95_143_752);
        assert_eq!(image.kind, InstanceType::Container);
        let source = image.update_source.unwrap();
        assert_eq!(source.protocol, "simplestreams");
        assert_eq!(source.image_type, InstanceType::Container);
        assert_eq!(image.uploaded_at.to_string(), "2024-01-01T09:59:30.05Z");
    }

    #[test]
    fn image_without_update_source_omits_it() {
        let v = serde_json::to_value(Image::default()).unwrap();
        assert!(v.get("update_source").is_none());
        assert_eq!(v["expires_at"], "0001-01-01T00:00:00Z");
        assert_eq!(v["type"], "");
    }

    #[test]
    fn image_copy_from_lxc() {
        // `lxc image copy images:debian/12 local: --alias deb12 --auto-update` (pull mode),
        // as lxc 5.0 marshals it: nil properties and profiles.
        let post: ImagesPost = parse_and_write(
            r#"{"auto_update":true,"properties":null,"public":false,"expires_at":"0001-01-01T00:00:00Z",
                "profiles":null,"filename":"",
                "source":{"alias":"debian/12","certificate":"","protocol":"simplestreams",
                  "server":"https://images.linuxcontainers.org","image_type":"","mode":"pull","type":"image",
                  "url":"","name":"","fingerprint":"ac3e8d3f","secret":"","project":""},
                "compression_algorithm":"","aliases":[{"name":"deb12","description":""}]}"#,
            r#"{"auto_update":true,"properties":{},"public":false,"expires_at":"0001-01-01T00:00:00Z",
                "profiles":null,"filename":"",
                "source":{"alias":"debian/12","certificate":"","protocol":"simplestreams",
                  "server":"https://images.linuxcontainers.org","image_type":"","mode":"pull","type":"image",
                  "url":"","name":"","fingerprint":"ac3e8d3f","secret":"","project":""},
                "compression_algorithm":"","aliases":[{"name":"deb12","description":""}]}"#,
        );
        assert!(post.auto_update);
        assert_eq!(post.profiles, None);
        let source = post.source.unwrap();
        assert_eq!(source.kind, "image");
        assert_eq!(source.mode, "pull");
        assert_eq!(source.fingerprint, "ac3e8d3f");
        assert_eq!(post.aliases[0].name, "deb12");
    }

    #[test]
    fn image_publish_from_pylxd() {
        // pylxd's `instance.publish(public=True)`.
        let post: ImagesPost =
            serde_json::from_str(r#"{"public":true,"source":{"type":"container","name":"c1"}}"#).unwrap();
        assert!(post.public);
        let source = post.source.unwrap();
        assert_eq!((source.kind.as_str(), source.name.as_str()), ("container", "c1"));
        assert!(post.aliases.is_empty());
    }

    #[test]
    fn image_put() {
        let put: ImagePut = round_trip(
            r#"{"auto_update":false,"properties":{"os":"Debian"},"public":true,
                "expires_at":"2025-01-01T00:00:00Z","profiles":[]}"#,
        );
        assert_eq!(put.profiles, Some(vec![]));
        assert_eq!(put.expires_at.to_string(), "2025-01-01T00:00:00Z");
    }

    #[test]
    fn aliases() {
        // `lxc image alias create deb12 <fp>`.
        let post: ImageAliasesPost = round_trip(r#"{"description":"","target":"ac3e8d3f","name":"deb12","type":""}"#);
        assert_eq!(post.name, "deb12");
        assert_eq!(post.target, "ac3e8d3f");
        // pylxd's `image.add_alias`.
        let post: ImageAliasesPost =
            serde_json::from_str(r#"{"description":"d","target":"ac3e8d3f","name":"x"}"#).unwrap();
        assert_eq!(post.kind, InstanceType::Any);
        let entry: ImageAliasesEntry =
            round_trip(r#"{"description":"Debian 12","target":"ac3e8d3f","name":"deb12","type":"container"}"#);
        assert_eq!(entry.kind, InstanceType::Container);
        let put: ImageAliasesEntryPut = round_trip(r#"{"description":"new","target":"bbbb"}"#);
        assert_eq!(put.target, "bbbb");
        let rename: ImageAliasesEntryPost = round_trip(r#"{"name":"debian12"}"#);
        assert_eq!(rename.name, "debian12");
    }

    #[test]
    fn export() {
        let post: ImageExportPost = round_trip(
            r#"{"target":"https://10.0.0.2:8443","secret":"tok","certificate":"PEM",
                "aliases":[{"name":"deb12","description":""}],"project":"default","profiles":["default"]}"#,
        );
        assert_eq!(post.target, "https://10.0.0.2:8443");
        assert_eq!(post.profiles, ["default"]);
    }

    #[test]
    fn metadata_yaml_as_json() {
        // An LXC image's metadata.yaml (as distrobuilder writes it), in its JSON form.
        let meta: ImageMetadata = round_trip(
            r#"{"architecture":"x86_64","creation_date":1704067200,"expiry_date":1706659200,
                "properties":{"architecture":"amd64","description":"Debian bookworm amd64 (20240101_05:24)",
                  "name":"debian-bookworm-amd64-default-20240101_05:24","os":"debian","release":"bookworm",
                  "serial":"20240101_05:24","variant":"default"},
                "templates":{
                  "/etc/hostname":{"when":["create","copy"],"create_only":false,"template":"hostname.tpl",
                    "properties":{}},
                  "/etc/hosts":{"when":["create","copy"],"create_only":false,"template":"hosts.tpl",
                    "properties":{"default_ip":"127.0.1.1"}}}}"#,
        );
        assert_eq!(meta.creation_date, 1_704_067_200);
        assert_eq!(meta.properties["os"], "debian");
        let hostname = &meta.templates["/etc/hostname"];
        assert_eq!(hostname.when, ["create", "copy"]);
        assert_eq!(hostname.template, "hostname.tpl");
        assert!(!hostname.create_only);
        assert_eq!(meta.templates["/etc/hosts"].properties["default_ip"], "127.0.1.1");
        // Template entries written without `create_only` or `properties`.
        let meta: ImageMetadata =
            serde_json::from_str(r#"{"templates":{"/etc/hostname":{"when":["start"],"template":"h.tpl"}}}"#).unwrap();
        assert_eq!(
            meta.templates["/etc/hostname"],
            ImageMetadataTemplate {
                when: vec!["start".into()],
                template: "h.tpl".into(),
                ..ImageMetadataTemplate::default()
            }
        );
    }

    #[test]
    fn lenient() {
        nulls_and_missing_are_default::<ImagePut>();
        nulls_and_missing_are_default::<Image>();
        nulls_and_missing_are_default::<ImageAlias>();
        nulls_and_missing_are_default::<ImageSource>();
        nulls_and_missing_are_default::<ImagesPost>();
        nulls_and_missing_are_default::<ImagesPostSource>();
        nulls_and_missing_are_default::<ImageExportPost>();
        nulls_and_missing_are_default::<ImageAliasesEntry>();
        nulls_and_missing_are_default::<ImageAliasesEntryPut>();
        nulls_and_missing_are_default::<ImageAliasesEntryPost>();
        nulls_and_missing_are_default::<ImageMetadata>();
        nulls_and_missing_are_default::<ImageMetadataTemplate>();
        unknown_fields_ignored::<Image>();
        unknown_fields_ignored::<ImagesPost>();
        unknown_fields_ignored::<ImageMetadata>();
    }
}
