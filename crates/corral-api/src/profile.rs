//! Profiles: `/1.0/profiles/...` (LXD's `profile.go`).

use serde::{Deserialize, Serialize};

use crate::wire::nullable;
use crate::{Config, Devices};

/// A profile, as `GET /1.0/profiles/<name>` returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Profile {
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    #[serde(deserialize_with = "nullable")]
    pub description: String,
    /// Instance options it sets.
    #[serde(deserialize_with = "nullable")]
    pub config: Config,
    /// Devices it adds.
    #[serde(deserialize_with = "nullable")]
    pub devices: Devices,
    /// URLs of the instances using it (`"/1.0/instances/c1"`).
    #[serde(deserialize_with = "nullable")]
    pub used_by: Vec<String>,
    /// The project it is in (newer than LXD 5.0; older clients ignore it).
    #[serde(deserialize_with = "nullable")]
    pub project: String,
}

/// A profile's writable fields: the body of `PUT /1.0/profiles/<name>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ProfilePut {
    #[serde(deserialize_with = "nullable")]
    pub config: Config,
    #[serde(deserialize_with = "nullable")]
    pub description: String,
    #[serde(deserialize_with = "nullable")]
    pub devices: Devices,
}

/// The body of `POST /1.0/profiles`: create a profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ProfilesPost {
    #[serde(deserialize_with = "nullable")]
    pub config: Config,
    #[serde(deserialize_with = "nullable")]
    pub description: String,
    #[serde(deserialize_with = "nullable")]
    pub devices: Devices,
    #[serde(deserialize_with = "nullable")]
    pub name: String,
}

/// The body of `POST /1.0/profiles/<name>`: rename.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ProfilePost {
    /// The new name.
    #[serde(deserialize_with = "nullable")]
    pub name: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{nulls_and_missing_are_default, parse_and_write, round_trip, unknown_fields_ignored};
    use std::collections::BTreeMap;

    #[test]
    fn default_profile_round_trips() {
        let profile: Profile = round_trip(
            r#"{"name":"default","description":"Default LXD profile","config":{},
                "devices":{"eth0":{"name":"eth0","network":"lxdbr0","type":"nic"},
                           "root":{"path":"/","pool":"default","type":"disk"}},
                "used_by":["/1.0/instances/c1","/1.0/instances/c2?project=p1"],"project":"default"}"#,
        );
        assert_eq!(profile.name, "default");
        assert_eq!(profile.devices.len(), 2);
        assert_eq!(profile.devices["root"]["path"], "/");
        assert_eq!(profile.used_by[1], "/1.0/instances/c2?project=p1");
    }

    #[test]
    fn create_from_lxc_with_nil_maps() {
        // `lxc profile create p1`: lxc 5.0 marshals nil config and devices as null.
        let post: ProfilesPost = parse_and_write(
            r#"{"config":null,"description":"","devices":null,"name":"p1"}"#,
            r#"{"config":{},"description":"","devices":{},"name":"p1"}"#,
        );
        assert_eq!(
            post,
            ProfilesPost {
                name: "p1".into(),
                ..ProfilesPost::default()
            }
        );
    }

    #[test]
    fn create_from_pylxd() {
        let post: ProfilesPost = serde_json::from_str(
            r#"{"name":"gpu","config":{"limits.memory":"2GiB"},"devices":{"gpu0":{"type":"gpu"}}}"#,
        )
        .unwrap();
        assert_eq!(post.config["limits.memory"], "2GiB");
        assert_eq!(
            post.devices["gpu0"],
            BTreeMap::from([("type".to_owned(), "gpu".to_owned())])
        );
    }

    #[test]
    fn put_and_rename() {
        let put: ProfilePut =
            round_trip(r#"{"config":{"security.nesting":"true"},"description":"nesting","devices":{}}"#);
        assert_eq!(put.config["security.nesting"], "true");
        let post: ProfilePost = round_trip(r#"{"name":"p2"}"#);
        assert_eq!(post.name, "p2");
    }

    #[test]
    fn lenient() {
        nulls_and_missing_are_default::<Profile>();
        nulls_and_missing_are_default::<ProfilePut>();
        nulls_and_missing_are_default::<ProfilesPost>();
        nulls_and_missing_are_default::<ProfilePost>();
        unknown_fields_ignored::<Profile>();
        unknown_fields_ignored::<ProfilesPost>();
    }
}
