//! Background operations: `/1.0/operations/<id>` (LXD's `operation.go`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::status::StatusCode;
use crate::time::Timestamp;
use crate::wire::nullable;

/// What an operation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OperationClass {
    /// A background task (create, start, delete...).
    #[default]
    Task,
    /// Has websockets to connect to (exec, console, migration); their secrets are in `metadata`.
    Websocket,
    /// A token (a join or trust token) whose secret is in `metadata`.
    Token,
}

/// A background operation, as `GET /1.0/operations/<id>` returns it and as the `metadata` of
/// an async response or an `operation` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Operation {
    /// UUID.
    #[serde(deserialize_with = "nullable")]
    pub id: String,
    /// `task`, `websocket` or `token`.
    #[serde(deserialize_with = "nullable")]
    pub class: OperationClass,
    /// Human description (`"Creating instance"`, `"Executing command"`).
    #[serde(deserialize_with = "nullable")]
    pub description: String,
    #[serde(deserialize_with = "nullable")]
    pub created_at: Timestamp,
    #[serde(deserialize_with = "nullable")]
    pub updated_at: Timestamp,
    /// The name of `status_code` (`"Running"`).
    #[serde(deserialize_with = "nullable")]
    pub status: String,
    #[serde(deserialize_with = "nullable")]
    pub status_code: StatusCode,
    /// What the operation touches, by kind: `{"instances": ["/1.0/instances/c1"]}`.
    #[serde(deserialize_with = "nullable")]
    pub resources: BTreeMap<String, Vec<String>>,
    /// Free-form: an exec's `{"fds": {"0": <secret>, "control": <secret>}}`, its
    /// `{"return": 0}` once done... `null` when there is none.
    pub metadata: Value,
    /// Whether `DELETE /1.0/operations/<id>` can cancel it.
    #[serde(deserialize_with = "nullable")]
    pub may_cancel: bool,
    /// The error, once failed; `""` otherwise.
    #[serde(deserialize_with = "nullable")]
    pub err: String,
    /// The cluster member running it; `"none"` when not clustered.
    #[serde(deserialize_with = "nullable")]
    pub location: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{nulls_and_missing_are_default, round_trip, unknown_fields_ignored};
    use serde_json::json;

    #[test]
    fn exec_operation_round_trips() {
        // `GET /1.0/operations/<id>` for an `lxc exec c1 -- bash` on LXD 5.0.
        let op: Operation = round_trip(
            r#"{"id":"6916c8a6-9b7d-4abd-90b3-aedfec7f7492","class":"websocket","description":"Executing command",
                "created_at":"2024-01-01T10:00:00.123456789Z","updated_at":"2024-01-01T10:00:00.123456789Z",
                "status":"Running","status_code":103,
                "resources":{"containers":["/1.0/containers/c1"],"instances":["/1.0/instances/c1"]},
                "metadata":{"command":["bash"],"environment":{"HOME":"/root","TERM":"xterm-256color","USER":"root"},
                  "fds":{"0":"c4e5d23e4d4c2b5a7b7f1b0b5d7c0fd0","control":"a1b2c3d4e5f60718293a4b5c6d7e8f90"},
                  "interactive":true},
                "may_cancel":false,"err":"","location":"none"}"#,
        );
        assert_eq!(op.id, "6916c8a6-9b7d-4abd-90b3-aedfec7f7492");
        assert_eq!(op.class, OperationClass::Websocket);
        assert_eq!(op.status_code, StatusCode::RUNNING);
        assert_eq!(op.created_at.to_string(), "2024-01-01T10:00:00.123456789Z");
        assert_eq!(op.resources.len(), 2);
        assert_eq!(op.metadata["fds"]["control"], "a1b2c3d4e5f60718293a4b5c6d7e8f90");
        assert_eq!(op.location, "none");
    }

    #[test]
    fn default_writes_like_go() {
        assert_eq!(
            serde_json::to_value(Operation::default()).unwrap(),
            json!({"id":"","class":"task","description":"","created_at":"0001-01-01T00:00:00Z",
                   "updated_at":"0001-01-01T00:00:00Z","status":"","status_code":0,"resources":{},"metadata":null,
                   "may_cancel":false,"err":"","location":""})
        );
    }

    #[test]
    fn token_class_and_null_resources() {
        let op: Operation =
            serde_json::from_str(r#"{"class":"token","resources":null,"metadata":{"secret":"s"},"status_code":200}"#)
                .unwrap();
        assert_eq!(op.class, OperationClass::Token);
        assert!(op.resources.is_empty());
        assert_eq!(op.metadata, json!({"secret":"s"}));
        assert!(op.status_code.is_final());
    }

    #[test]
    fn lenient() {
        nulls_and_missing_are_default::<Operation>();
        unknown_fields_ignored::<Operation>();
    }
}
