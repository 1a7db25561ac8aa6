//! Projects: `/1.0/projects/...` (LXD's `project.go`).

use serde::{Deserialize, Serialize};

use crate::wire::nullable;
use crate::Config;

/// A project, as `GET /1.0/projects/<name>` returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Project {
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    #[serde(deserialize_with = "nullable")]
    pub description: String,
    /// Project options (`"features.images": "true"`, `"limits.instances": "10"`).
    #[serde(deserialize_with = "nullable")]
    pub config: Config,
    /// URLs of the objects in it (`"/1.0/instances/c1?project=p1"`).
    #[serde(deserialize_with = "nullable")]
    pub used_by: Vec<String>,
}

/// A project's writable fields: the body of `PUT /1.0/projects/<name>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ProjectPut {
    #[serde(deserialize_with = "nullable")]
    pub config: Config,
    #[serde(deserialize_with = "nullable")]
    pub description: String,
}

/// The body of `POST /1.0/projects`: create a project.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ProjectsPost {
    #[serde(deserialize_with = "nullable")]
    pub config: Config,
    #[serde(deserialize_with = "nullable")]
    pub description: String,
    #[serde(deserialize_with = "nullable")]
    pub name: String,
}

/// The body of `POST /1.0/projects/<name>`: rename.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ProjectPost {
    /// The new name.
    #[serde(deserialize_with = "nullable")]
    pub name: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{nulls_and_missing_are_default, parse_and_write, round_trip, unknown_fields_ignored};

    #[test]
    fn default_project_round_trips() {
        let project: Project = round_trip(
            r#"{"name":"default","description":"Default LXD project",
                "config":{"features.images":"true","features.networks":"true","features.profiles":"true",
                          "features.storage.volumes":"true"},
                "used_by":["/1.0/images/ac3e8d3f","/1.0/instances/c1","/1.0/profiles/default"]}"#,
        );
        assert_eq!(project.name, "default");
        assert_eq!(project.config["features.images"], "true");
        assert_eq!(project.used_by.len(), 3);
    }

    #[test]
    fn create_from_lxc() {
        // `lxc project create p1 -c features.images=false`.
        let post: ProjectsPost = round_trip(r#"{"config":{"features.images":"false"},"description":"","name":"p1"}"#);
        assert_eq!(post.name, "p1");
        assert_eq!(post.config["features.images"], "false");
        let post: ProjectsPost = parse_and_write(
            r#"{"name":"p2","config":null}"#,
            r#"{"config":{},"description":"","name":"p2"}"#,
        );
        assert!(post.config.is_empty());
    }

    #[test]
    fn put_and_rename() {
        let put: ProjectPut = round_trip(r#"{"config":{"limits.instances":"5"},"description":"small"}"#);
        assert_eq!(put.config["limits.instances"], "5");
        let post: ProjectPost = round_trip(r#"{"name":"p3"}"#);
        assert_eq!(post.name, "p3");
    }

    #[test]
    fn lenient() {
        nulls_and_missing_are_default::<Project>();
        nulls_and_missing_are_default::<ProjectPut>();
        nulls_and_missing_are_default::<ProjectsPost>();
        nulls_and_missing_are_default::<ProjectPost>();
        unknown_fields_ignored::<Project>();
        unknown_fields_ignored::<ProjectsPost>();
    }
}
