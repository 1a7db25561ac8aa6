//! The messages of `/1.0/events` (LXD's `event.go` and `event_lifecycle.go`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::time::Timestamp;
use crate::wire::nullable;

/// Values of [`Event::kind`] (and of the `type` query parameter of `/1.0/events`).
pub mod event_type {
    /// Something happened to an API object; metadata is an [`EventLifecycle`](super::EventLifecycle).
    pub const LIFECYCLE: &str = "lifecycle";
    /// An operation changed; metadata is an [`Operation`](crate::Operation).
    pub const OPERATION: &str = "operation";
    /// A daemon log line; metadata is an [`EventLogging`](super::EventLogging).
    pub const LOGGING: &str = "logging";
}

/// Values of [`EventLifecycle::action`] for the objects Corral has (LXD's
/// `event_lifecycle.go` names many more).
pub mod lifecycle_action {
    pub const CONFIG_UPDATED: &str = "config-updated";
    pub const IMAGE_ALIAS_CREATED: &str = "image-alias-created";
    pub const IMAGE_ALIAS_DELETED: &str = "image-alias-deleted";
    pub const IMAGE_ALIAS_RENAMED: &str = "image-alias-renamed";
    pub const IMAGE_ALIAS_UPDATED: &str = "image-alias-updated";
    pub const IMAGE_CREATED: &str = "image-created";
    pub const IMAGE_DELETED: &str = "image-deleted";
    pub const IMAGE_REFRESHED: &str = "image-refreshed";
    pub const IMAGE_RETRIEVED: &str = "image-retrieved";
    pub const IMAGE_SECRET_CREATED: &str = "image-secret-created";
    pub const IMAGE_UPDATED: &str = "image-updated";
    pub const INSTANCE_CONSOLE: &str = "instance-console";
    pub const INSTANCE_CONSOLE_RESET: &str = "instance-console-reset";
    pub const INSTANCE_CONSOLE_RETRIEVED: &str = "instance-console-retrieved";
    pub const INSTANCE_CREATED: &str = "instance-created";
    pub const INSTANCE_DELETED: &str = "instance-deleted";
    pub const INSTANCE_EXEC: &str = "instance-exec";
    pub const INSTANCE_FILE_DELETED: &str = "instance-file-deleted";
    pub const INSTANCE_FILE_PUSHED: &str = "instance-file-pushed";
    pub const INSTANCE_FILE_RETRIEVED: &str = "instance-file-retrieved";
    pub const INSTANCE_LOG_DELETED: &str = "instance-log-deleted";
    pub const INSTANCE_LOG_RETRIEVED: &str = "instance-log-retrieved";
    pub const INSTANCE_METADATA_RETRIEVED: &str = "instance-metadata-retrieved";
    pub const INSTANCE_METADATA_UPDATED: &str = "instance-metadata-updated";
    pub const INSTANCE_PAUSED: &str = "instance-paused";
    pub const INSTANCE_READY: &str = "instance-ready";
    pub const INSTANCE_RENAMED: &str = "instance-renamed";
    pub const INSTANCE_RESTARTED: &str = "instance-restarted";
    pub const INSTANCE_RESTORED: &str = "instance-restored";
    pub const INSTANCE_RESUMED: &str = "instance-resumed";
    pub const INSTANCE_SHUTDOWN: &str = "instance-shutdown";
    pub const INSTANCE_SNAPSHOT_CREATED: &str = "instance-snapshot-created";
    pub const INSTANCE_SNAPSHOT_DELETED: &str = "instance-snapshot-deleted";
    pub const INSTANCE_SNAPSHOT_RENAMED: &str = "instance-snapshot-renamed";
    pub const INSTANCE_SNAPSHOT_UPDATED: &str = "instance-snapshot-updated";
    pub const INSTANCE_STARTED: &str = "instance-started";
    pub const INSTANCE_STOPPED: &str = "instance-stopped";
    pub const INSTANCE_UPDATED: &str = "instance-updated";
    pub const OPERATION_CANCELLED: &str = "operation-cancelled";
    pub const PROFILE_CREATED: &str = "profile-created";
    pub const PROFILE_DELETED: &str = "profile-deleted";
    pub const PROFILE_RENAMED: &str = "profile-renamed";
    pub const PROFILE_UPDATED: &str = "profile-updated";
    pub const PROJECT_CREATED: &str = "project-created";
    pub const PROJECT_DELETED: &str = "project-deleted";
    pub const PROJECT_RENAMED: &str = "project-renamed";
    pub const PROJECT_UPDATED: &str = "project-updated";
    pub const STORAGE_POOL_CREATED: &str = "storage-pool-created";
    pub const STORAGE_POOL_DELETED: &str = "storage-pool-deleted";
    pub const STORAGE_POOL_UPDATED: &str = "storage-pool-updated";
}

/// One message on the `/1.0/events` websocket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Event {
    /// `"lifecycle"`, `"operation"` or `"logging"` (see [`event_type`]); a string, since newer
    /// servers have more.
    #[serde(rename = "type", deserialize_with = "nullable")]
    pub kind: String,
    #[serde(deserialize_with = "nullable")]
    pub timestamp: Timestamp,
    /// Raw JSON, by `type`: an [`EventLifecycle`], an [`Operation`](crate::Operation), or an
    /// [`EventLogging`]; read it with `serde_json::from_value`.
    pub metadata: Value,
    /// The cluster member it comes from (`"none"` when not clustered).
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "nullable")]
    pub location: String,
    /// The project of the object concerned.
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "nullable")]
    pub project: String,
}

/// The metadata of a `lifecycle` event: something happened to an API object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct EventLifecycle {
    /// What happened (`"instance-started"`; see [`lifecycle_action`]).
    #[serde(deserialize_with = "nullable")]
    pub action: String,
    /// The object's URL (`"/1.0/instances/c1"`).
    #[serde(deserialize_with = "nullable")]
    pub source: String,
    /// Details, by action (`{"command": ["bash"]}` for an exec).
    #[serde(skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "nullable")]
    pub context: BTreeMap<String, Value>,
    /// Who asked, when a client did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requestor: Option<EventLifecycleRequestor>,
}

/// Who caused a lifecycle event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct EventLifecycleRequestor {
    /// The user name (unix socket), or the certificate fingerprint (TLS).
    #[serde(deserialize_with = "nullable")]
    pub username: String,
    /// `"unix"`, `"tls"`, `"candid"`...
    #[serde(deserialize_with = "nullable")]
    pub protocol: String,
    /// The client's address (`"@"` on the unix socket).
    #[serde(deserialize_with = "nullable")]
    pub address: String,
}

/// The metadata of a `logging` event: one log line of the daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct EventLogging {
    #[serde(deserialize_with = "nullable")]
    pub message: String,
    /// `"debug"`, `"info"`, `"warning"`, `"error"`...
    #[serde(deserialize_with = "nullable")]
    pub level: String,
    /// The log line's fields.
    #[serde(deserialize_with = "nullable")]
    pub context: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{nulls_and_missing_are_default, round_trip, unknown_fields_ignored};
    use crate::{Operation, StatusCode};
    use serde_json::json;

    #[test]
    fn lifecycle_event() {
        let event: Event = round_trip(
            r#"{"type":"lifecycle","timestamp":"2024-01-01T10:00:00.123456789Z",
                "metadata":{"action":"instance-started","source":"/1.0/instances/c1",
                  "requestor":{"username":"root","protocol":"unix","address":"@"}},
                "location":"none","project":"default"}"#,
        );
        assert_eq!(event.kind, event_type::LIFECYCLE);
        assert_eq!(event.project, "default");
        let life: EventLifecycle = serde_json::from_value(event.metadata).unwrap();
        assert_eq!(life.action, lifecycle_action::INSTANCE_STARTED);
        assert_eq!(life.source, "/1.0/instances/c1");
        assert!(life.context.is_empty());
        assert_eq!(
            life.requestor,
            Some(EventLifecycleRequestor {
                username: "root".into(),
                protocol: "unix".into(),
                address: "@".into()
            })
        );
    }

    #[test]
    fn lifecycle_with_context_round_trips() {
        let life: EventLifecycle =
            round_trip(r#"{"action":"instance-exec","source":"/1.0/instances/c1","context":{"command":["bash"]}}"#);
        assert_eq!(life.context["command"], json!(["bash"]));
        assert_eq!(life.requestor, None);
    }

    #[test]
    fn logging_event() {
        let event: Event = round_trip(
            r#"{"type":"logging","timestamp":"2024-01-01T10:00:00.5Z",
                "metadata":{"message":"Started instance","level":"info",
                  "context":{"action":"start","instance":"c1","project":"default"}},
                "location":"none"}"#,
        );
        assert_eq!(event.project, "");
        let log: EventLogging = serde_json::from_value(event.metadata).unwrap();
        assert_eq!(log.message, "Started instance");
        assert_eq!(log.level, "info");
        assert_eq!(log.context["instance"], "c1");
    }

    #[test]
    fn operation_event() {
        let event: Event = serde_json::from_str(
            r#"{"type":"operation","timestamp":"2024-01-01T10:00:01Z","metadata":{"id":"abc","class":"task",
                "description":"Starting instance","status":"Success","status_code":200,"may_cancel":false,
                "err":"","location":"none"},"location":"none","project":"default"}"#,
        )
        .unwrap();
        assert_eq!(event.kind, event_type::OPERATION);
        let op: Operation = serde_json::from_value(event.metadata).unwrap();
        assert_eq!(op.status_code, StatusCode::SUCCESS);
        assert_eq!(op.description, "Starting instance");
    }

    #[test]
    fn default_event_omits_location_and_project() {
        assert_eq!(
            serde_json::to_value(Event::default()).unwrap(),
            json!({"type":"","timestamp":"0001-01-01T00:00:00Z","metadata":null})
        );
    }

    #[test]
    fn lenient() {
        nulls_and_missing_are_default::<Event>();
        nulls_and_missing_are_default::<EventLifecycle>();
        nulls_and_missing_are_default::<EventLifecycleRequestor>();
        nulls_and_missing_are_default::<EventLogging>();
        unknown_fields_ignored::<Event>();
        unknown_fields_ignored::<EventLifecycle>();
    }
}
