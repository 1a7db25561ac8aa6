//! The envelope around every REST API 1.0 answer (LXD's `response.go`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::operation::Operation;
use crate::status::StatusCode;
use crate::wire::nullable;

/// The kind of a [`Response`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResponseType {
    /// The request is done; `metadata` is its result.
    #[default]
    Sync,
    /// The request started an [`Operation`]; `operation` is its URL and `metadata` the operation.
    Async,
    /// The request failed; `error_code` and `error` say why.
    Error,
}

/// The envelope of every answer, with all seven fields always present, as LXD writes them:
///
/// - sync: `{"type":"sync","status":"Success","status_code":200,"operation":"","error_code":0,"error":"","metadata":...}`
/// - async: `{"type":"async","status":"Operation created","status_code":100,"operation":"/1.0/operations/<uuid>","error_code":0,"error":"","metadata":<Operation>}`
/// - error: `{"type":"error","status":"","status_code":0,"operation":"","error_code":404,"error":"not found","metadata":null}`
///
/// `metadata` is raw JSON: read it into the type the endpoint returns with
/// `serde_json::from_value`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Response {
    /// `sync`, `async` or `error`.
    #[serde(rename = "type", deserialize_with = "nullable")]
    pub kind: ResponseType,
    /// The name of `status_code` (`"Success"`, `"Operation created"`); `""` in an error.
    #[serde(deserialize_with = "nullable")]
    pub status: String,
    /// 200 in a sync response, 100 in an async one, 0 in an error.
    #[serde(deserialize_with = "nullable")]
    pub status_code: StatusCode,
    /// The operation's URL (`/1.0/operations/<uuid>`) in an async response; `""` otherwise.
    #[serde(deserialize_with = "nullable")]
    pub operation: String,
    /// The HTTP status of an error (`404`); 0 otherwise.
    #[serde(deserialize_with = "nullable")]
    pub error_code: u16,
    /// The error message; `""` otherwise.
    #[serde(deserialize_with = "nullable")]
    pub error: String,
    /// The result (sync), the [`Operation`] (async), or `null` (error).
    pub metadata: Value,
}

impl Response {
    /// A sync response carrying `metadata`.
    ///
    /// Should `metadata` fail to serialize (it can't for this crate's types), the answer is an
    /// error response with code 500 saying so.
    pub fn sync<T: Serialize>(metadata: T) -> Self {
        match serde_json::to_value(metadata) {
            Ok(metadata) => Self {
                kind: ResponseType::Sync,
                status: StatusCode::SUCCESS.name().to_owned(),
                status_code: StatusCode::SUCCESS,
                metadata,
                ..Self::default()
            },
            Err(e) => Self::error(500, format!("Failed to encode the response: {e}")),
        }
    }

    /// A sync response without a result: LXD's `EmptySyncResponse`, whose metadata is `{}`.
    pub fn sync_empty() -> Self {
        Self::sync(Value::Object(serde_json::Map::new()))
    }

    /// An async response for a newly created operation: `operation` is `/1.0/operations/<id>`.
    pub fn async_op(op: Operation) -> Self {
        let operation = format!("/1.0/operations/{}", op.id);
        match serde_json::to_value(op) {
            Ok(metadata) => Self {
                kind: ResponseType::Async,
                status: StatusCode::CREATED.name().to_owned(),
                status_code: StatusCode::CREATED,
                operation,
                metadata,
                ..Self::default()
            },
            Err(e) => Self::error(500, format!("Failed to encode the operation: {e}")),
        }
    }

    /// An error response: `code` is the HTTP status (404), `message` the error text.
    pub fn error(code: u16, message: impl Into<String>) -> Self {
        Self {
            kind: ResponseType::Error,
            error_code: code,
            error: message.into(),
            metadata: Value::Null,
            ..Self::default()
        }
    }

    /// The HTTP status LXD answers with: 200 (sync), 202 (async), or the `error_code` (error).
    pub fn http_status(&self) -> u16 {
        match self.kind {
            ResponseType::Sync => 200,
            ResponseType::Async => 202,
            ResponseType::Error => self.error_code,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operation::OperationClass;
    use crate::test_util::{nulls_and_missing_are_default, round_trip, unknown_fields_ignored};
    use crate::Instance;
    use serde_json::json;

    #[test]
    fn sync_envelope() {
        let r = Response::sync(json!(["/1.0/instances/c1"]));
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"type":"sync","status":"Success","status_code":200,"operation":"","error_code":0,"error":"",
                   "metadata":["/1.0/instances/c1"]})
        );
        assert_eq!(r.http_status(), 200);
        assert_eq!(
            serde_json::to_value(Response::sync_empty()).unwrap(),
            json!({"type":"sync","status":"Success","status_code":200,"operation":"","error_code":0,"error":"",
                   "metadata":{}})
        );
    }

    #[test]
    fn error_envelope() {
        let r = Response::error(404, "not found");
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"type":"error","status":"","status_code":0,"operation":"","error_code":404,"error":"not found","metadata":null}"#
        );
        assert_eq!(r.http_status(), 404);
    }

    #[test]
    fn async_envelope() {
        let op = Operation {
            id: "3c1ab1cd-0b1b-4a9e-9b0b-6d8c0f6b8f7e".into(),
            class: OperationClass::Task,
            description: "Creating instance".into(),
            status: "Running".into(),
            status_code: StatusCode::RUNNING,
            ..Operation::default()
        };
        let r = Response::async_op(op.clone());
        assert_eq!(r.kind, ResponseType::Async);
        assert_eq!(r.status, "Operation created");
        assert_eq!(r.status_code, StatusCode(100));
        assert_eq!(r.operation, "/1.0/operations/3c1ab1cd-0b1b-4a9e-9b0b-6d8c0f6b8f7e");
        assert_eq!(r.http_status(), 202);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["type"], "async");
        assert_eq!(v["error_code"], 0);
        assert_eq!(v["error"], "");
        assert_eq!(v["metadata"]["id"], "3c1ab1cd-0b1b-4a9e-9b0b-6d8c0f6b8f7e");
        assert_eq!(v["metadata"]["class"], "task");
        assert_eq!(serde_json::from_value::<Operation>(r.metadata).unwrap(), op);
    }

    #[test]
    fn lxd_async_response_round_trips() {
        // As LXD 5.0 answers `POST /1.0/instances`.
        let r: Response = round_trip(
            r#"{"type":"async","status":"Operation created","status_code":100,
                "operation":"/1.0/operations/b3c3d9a3-4f6d-4d8a-a7b7-9e0e8f5f1c2d","error_code":0,"error":"",
                "metadata":{"id":"b3c3d9a3-4f6d-4d8a-a7b7-9e0e8f5f1c2d","class":"task","description":"Creating instance",
                  "created_at":"2024-01-01T10:00:00.123456789Z","updated_at":"2024-01-01T10:00:00.123456789Z",
                  "status":"Running","status_code":103,
                  "resources":{"containers":["/1.0/containers/c1"],"instances":["/1.0/instances/c1"]},
                  "metadata":null,"may_cancel":false,"err":"","location":"none"}}"#,
        );
        let op: Operation = serde_json::from_value(r.metadata).unwrap();
        assert_eq!(op.status_code, StatusCode::RUNNING);
        assert_eq!(op.resources["instances"], vec!["/1.0/instances/c1".to_owned()]);
    }

    #[test]
    fn sync_metadata_reads_into_its_type() {
        let r: Response = serde_json::from_str(
            r#"{"type":"sync","status":"Success","status_code":200,"operation":"","error_code":0,"error":"",
                "metadata":{"name":"c1","status":"Stopped","status_code":102,"type":"container"}}"#,
        )
        .unwrap();
        let inst: Instance = serde_json::from_value(r.metadata).unwrap();
        assert_eq!(inst.name, "c1");
        assert_eq!(inst.status_code, StatusCode::STOPPED);
    }

    #[test]
    fn lenient() {
        nulls_and_missing_are_default::<Response>();
        unknown_fields_ignored::<Response>();
        // An error envelope without `operation` still reads.
        let r: Response = serde_json::from_str(
            r#"{"type":"error","status":"","status_code":0,"error_code":404,"error":"not found","metadata":null}"#,
        )
        .unwrap();
        assert_eq!(r, Response::error(404, "not found"));
        assert!(serde_json::from_str::<Response>(r#"{"type":"weird"}"#).is_err());
    }
}
