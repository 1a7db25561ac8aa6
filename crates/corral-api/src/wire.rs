//! Small serde helpers shared by the API types.

use serde::{Deserialize, Deserializer};

/// Deserializes `T`, taking JSON `null` as `T::default()`.
///
/// Go clients write nil maps and slices as `null`, and pylxd writes unset arguments as `null`;
/// LXD (Go's `encoding/json`) reads those as the zero value, and so do we.
pub(crate) fn nullable<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Option::<T>::deserialize(deserializer).map(Option::unwrap_or_default)
}

/// For `skip_serializing_if`: Go's `omitempty` on a `bool`.
pub(crate) fn is_false(value: &bool) -> bool {
    !*value
}
