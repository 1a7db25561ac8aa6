//! [`StatusCode`]: the status of an operation, an instance, or a response (LXD's `status_code.go`).

use std::fmt;

use serde::{Deserialize, Serialize};

/// An LXD status code, written as a JSON number (`"status_code": 103`).
///
/// A number rather than a closed enum, as in LXD: an error response carries `0`, which has no
/// name, and a code from a newer server must not make a whole object unreadable. The known codes
/// are the associated constants; match on them like enum variants. The default is `0`, Go's zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StatusCode(pub u16);

impl StatusCode {
    /// 100, "Operation created" (Go's `OperationCreated`): the status of an async response.
    pub const CREATED: Self = Self(100);
    /// 101, "Started".
    pub const STARTED: Self = Self(101);
    /// 102, "Stopped".
    pub const STOPPED: Self = Self(102);
    /// 103, "Running".
    pub const RUNNING: Self = Self(103);
    /// 104, "Cancelling".
    pub const CANCELLING: Self = Self(104);
    /// 105, "Pending".
    pub const PENDING: Self = Self(105);
    /// 106, "Starting".
    pub const STARTING: Self = Self(106);
    /// 107, "Stopping".
    pub const STOPPING: Self = Self(107);
    /// 108, "Aborting".
    pub const ABORTING: Self = Self(108);
    /// 109, "Freezing".
    pub const FREEZING: Self = Self(109);
    /// 110, "Frozen".
    pub const FROZEN: Self = Self(110);
    /// 111, "Thawed".
    pub const THAWED: Self = Self(111);
    /// 112, "Error".
    pub const ERROR: Self = Self(112);
    /// 113, "Ready".
    pub const READY: Self = Self(113);
    /// 200, "Success".
    pub const SUCCESS: Self = Self(200);
    /// 400, "Failure".
    pub const FAILURE: Self = Self(400);
    /// 401, "Cancelled".
    pub const CANCELLED: Self = Self(401);

    /// Every code LXD names, in numeric order.
    pub const ALL: [Self; 17] = [
        Self::CREATED,
        Self::STARTED,
        Self::STOPPED,
        Self::RUNNING,
        Self::CANCELLING,
        Self::PENDING,
        Self::STARTING,
        Self::STOPPING,
        Self::ABORTING,
        Self::FREEZING,
        Self::FROZEN,
        Self::THAWED,
        Self::ERROR,
        Self::READY,
        Self::SUCCESS,
        Self::FAILURE,
        Self::CANCELLED,
    ];

    /// The number.
    pub const fn as_u16(self) -> u16 {
        self.0
    }

    /// LXD's name for the code, as sent in `status` fields (`"Running"`); `""` for a code LXD
    /// doesn't name (as Go's map lookup gives, e.g. the `0` of an error response).
    pub const fn name(self) -> &'static str {
        match self.0 {
            100 => "Operation created",
            101 => "Started",
            102 => "Stopped",
            103 => "Running",
            104 => "Cancelling",
            105 => "Pending",
            106 => "Starting",
            107 => "Stopping",
            108 => "Aborting",
            109 => "Freezing",
            110 => "Frozen",
            111 => "Thawed",
            112 => "Error",
            113 => "Ready",
            200 => "Success",
            400 => "Failure",
            401 => "Cancelled",
            _ => "",
        }
    }

    /// The code LXD names `name` (exact, case-sensitive match), if any.
    pub fn from_status_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|code| code.name() == name)
    }

    /// Whether an operation with this status is over (200 and above: success, failure, cancelled).
    pub const fn is_final(self) -> bool {
        self.0 >= 200
    }
}

impl From<StatusCode> for u16 {
    fn from(code: StatusCode) -> Self {
        code.0
    }
}

/// Writes LXD's name (`""` for an unnamed code).
impl fmt::Display for StatusCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_names_match_lxd() {
        let expected = [
            (100, "Operation created"),
            (101, "Started"),
            (102, "Stopped"),
            (103, "Running"),
            (104, "Cancelling"),
            (105, "Pending"),
            (106, "Starting"),
            (107, "Stopping"),
            (108, "Aborting"),
            (109, "Freezing"),
            (110, "Frozen"),
            (111, "Thawed"),
            (112, "Error"),
            (113, "Ready"),
            (200, "Success"),
            (400, "Failure"),
            (401, "Cancelled"),
        ];
        let got: Vec<(u16, &str)> = StatusCode::ALL.iter().map(|c| (c.as_u16(), c.name())).collect();
        assert_eq!(got, expected);
        for (number, name) in expected {
            assert_eq!(StatusCode::from_status_name(name), Some(StatusCode(number)));
            assert_eq!(StatusCode(number).to_string(), name);
        }
    }

    #[test]
    fn unnamed_codes() {
        assert_eq!(StatusCode::default(), StatusCode(0));
        assert_eq!(StatusCode(0).name(), "");
        assert_eq!(StatusCode(114).name(), "");
        assert_eq!(StatusCode::from_status_name("running"), None);
        assert_eq!(StatusCode::from_status_name(""), None);
    }

    #[test]
    fn wire_form_is_a_number() {
        assert_eq!(serde_json::to_string(&StatusCode::RUNNING).unwrap(), "103");
        assert_eq!(
            serde_json::from_str::<StatusCode>("401").unwrap(),
            StatusCode::CANCELLED
        );
        assert_eq!(serde_json::from_str::<StatusCode>("0").unwrap(), StatusCode(0));
        assert!(serde_json::from_str::<StatusCode>("\"Running\"").is_err());
    }

    #[test]
    fn final_codes() {
        assert!(!StatusCode::RUNNING.is_final());
        assert!(!StatusCode::CREATED.is_final());
        assert!(StatusCode::SUCCESS.is_final());
        assert!(StatusCode::FAILURE.is_final());
        assert!(StatusCode::CANCELLED.is_final());
    }
}
