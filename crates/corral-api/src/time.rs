//! [`Timestamp`]: a point in time as LXD writes it.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Seconds from the Unix epoch back to `0001-01-01T00:00:00Z`, Go's zero `time.Time`.
const ZERO_UNIX_SECONDS: i64 = -62_135_596_800;

/// A UTC point in time, written as Go's `encoding/json` writes a `time.Time` (RFC 3339 with the
/// fraction's trailing zeros cut: `2024-01-01T10:00:00.123456789Z`, `2024-01-01T10:00:00Z`).
///
/// It reads any RFC 3339 time (any offset, converted to UTC). Its default is Go's zero time,
/// `0001-01-01T00:00:00Z`, which LXD sends for "never" (an unused instance's `last_used_at`, an
/// image that doesn't expire); JSON `null` and `""` also read as the zero time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub DateTime<Utc>);

impl Timestamp {
    /// Go's zero time, `0001-01-01T00:00:00Z`.
    pub fn zero() -> Self {
        Self(DateTime::from_timestamp(ZERO_UNIX_SECONDS, 0).expect("0001-01-01T00:00:00Z is representable"))
    }

    /// Whether this is Go's zero time (LXD's "never").
    pub fn is_zero(&self) -> bool {
        *self == Self::zero()
    }

    /// The current time.
    pub fn now() -> Self {
        Self(Utc::now())
    }
}

impl Default for Timestamp {
    fn default() -> Self {
        Self::zero()
    }
}

impl From<DateTime<Utc>> for Timestamp {
    fn from(time: DateTime<Utc>) -> Self {
        Self(time)
    }
}

impl From<Timestamp> for DateTime<Utc> {
    fn from(time: Timestamp) -> Self {
        time.0
    }
}

/// Go's `time.RFC3339Nano` for a UTC time.
impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.0;
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            t.year(),
            t.month(),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        )?;
        // chrono keeps a leap second as nanoseconds past 1e9: clamp it into this second.
        let nanos = t.nanosecond().min(999_999_999);
        if nanos != 0 {
            let fraction = format!("{nanos:09}");
            write!(f, ".{}", fraction.trim_end_matches('0'))?;
        }
        f.write_str("Z")
    }
}

impl FromStr for Timestamp {
    type Err = chrono::ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DateTime::parse_from_rfc3339(s).map(|t| Self(t.with_timezone(&Utc)))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TimestampVisitor;

        impl<'de> Visitor<'de> for TimestampVisitor {
            type Value = Timestamp;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 3339 time string")
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<Timestamp, E> {
                if s.is_empty() {
                    return Ok(Timestamp::zero());
                }
                s.parse()
                    .map_err(|e| E::custom(format_args!("invalid time {s:?}: {e}")))
            }

            fn visit_unit<E: de::Error>(self) -> Result<Timestamp, E> {
                Ok(Timestamp::zero())
            }

            fn visit_none<E: de::Error>(self) -> Result<Timestamp, E> {
                Ok(Timestamp::zero())
            }

            fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Timestamp, D::Error> {
                deserializer.deserialize_str(self)
            }
        }

        deserializer.deserialize_option(TimestampVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn write(t: Timestamp) -> String {
        serde_json::to_string(&t).unwrap()
    }

    fn read(json: &str) -> Timestamp {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn default_is_go_zero_time() {
        assert_eq!(write(Timestamp::default()), r#""0001-01-01T00:00:00Z""#);
        assert!(Timestamp::default().is_zero());
        assert!(read(r#""0001-01-01T00:00:00Z""#).is_zero());
        assert!(!Timestamp::now().is_zero());
    }

    #[test]
    fn writes_like_go_rfc3339nano() {
        let base = Utc.with_ymd_and_hms(2024, 1, 1, 10, 0, 0).unwrap();
        assert_eq!(write(Timestamp(base)), r#""2024-01-01T10:00:00Z""#);
        let nanos = |n: u32| Timestamp(base.with_nanosecond(n).unwrap());
        assert_eq!(write(nanos(123_456_789)), r#""2024-01-01T10:00:00.123456789Z""#);
        assert_eq!(write(nanos(100_000_000)), r#""2024-01-01T10:00:00.1Z""#);
        assert_eq!(write(nanos(120_000)), r#""2024-01-01T10:00:00.00012Z""#);
        assert_eq!(write(nanos(1)), r#""2024-01-01T10:00:00.000000001Z""#);
    }

    #[test]
    fn reads_lxd_times() {
        let t = read(r#""2024-01-01T10:00:00.123456789Z""#);
        assert_eq!(
            t.0,
            Utc.with_ymd_and_hms(2024, 1, 1, 10, 0, 0)
                .unwrap()
                .with_nanosecond(123_456_789)
                .unwrap()
        );
        assert_eq!(write(t), r#""2024-01-01T10:00:00.123456789Z""#);

        // A time in another zone (LXD sends local times in some places) is converted to UTC.
        let t = read(r#""2023-02-13T09:18:06.558214356+01:00""#);
        assert_eq!(write(t), r#""2023-02-13T08:18:06.558214356Z""#);
    }

    #[test]
    fn null_and_empty_read_as_zero_and_garbage_fails() {
        assert!(read("null").is_zero());
        assert!(read(r#""""#).is_zero());
        assert!(serde_json::from_str::<Timestamp>(r#""yesterday""#).is_err());
        assert!(serde_json::from_str::<Timestamp>("12").is_err());
        assert_eq!(serde_json::from_str::<Option<Timestamp>>("null").unwrap(), None);
    }
}
