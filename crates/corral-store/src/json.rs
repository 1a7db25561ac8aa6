//! Typed JSON access on top of the byte-valued [`Store`].

use std::fmt;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{Compare, Op, Store, StoreError};

/// A compare-and-swap lost: the key was not at the expected revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The key.
    pub key: String,
    /// The revision the caller expected (`None`: the key should not have existed).
    pub expected: Option<i64>,
    /// The key's `mod_revision` as read just after the failed attempt (`None`: missing). Informational only: it
    /// may have changed again since.
    pub current: Option<i64>,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |rev: Option<i64>| rev.map_or_else(|| "missing".to_owned(), |r| format!("revision {r}"));
        write!(
            f,
            "conflict at {}: expected {}, found {}",
            self.key,
            show(self.expected),
            show(self.current)
        )
    }
}

impl std::error::Error for Conflict {}

/// Reads `key` as JSON; returns the value and its `mod_revision` (the ETag to pass to [`cas_json`]).
pub fn get_json<T: DeserializeOwned>(store: &dyn Store, key: &str) -> Result<Option<(T, i64)>, StoreError> {
    let Some(kv) = store.get(key)? else {
        return Ok(None);
    };
    let value = serde_json::from_slice(&kv.value).map_err(|source| StoreError::Corrupt { key: kv.key, source })?;
    Ok(Some((value, kv.mod_revision)))
}

/// Writes `value` as JSON to `key` unconditionally; returns the new revision.
pub fn put_json<T: Serialize + ?Sized>(store: &dyn Store, key: &str, value: &T) -> Result<i64, StoreError> {
    store.put(key, &encode(key, value)?)
}

/// Writes `value` as JSON to `key` only if the key is at `expected_revision` (its `mod_revision`), or, with `None`,
/// only if the key does not exist. Returns `Ok(Ok(new_revision))` on success, `Ok(Err(Conflict))` if the key was
/// changed (or created, or deleted) by someone else; nothing is written then.
pub fn cas_json<T: Serialize + ?Sized>(
    store: &dyn Store,
    key: &str,
    expected_revision: Option<i64>,
    value: &T,
) -> Result<Result<i64, Conflict>, StoreError> {
    let bytes = encode(key, value)?;
    let compare = match expected_revision {
        Some(revision) => Compare::ModRevision(key.to_owned(), revision),
        None => Compare::Missing(key.to_owned()),
    };
    let result = store.txn(&[compare], &[Op::Put(key.to_owned(), bytes)])?;
    if result.succeeded {
        return Ok(Ok(result.revision));
    }
    let current = store.get(key)?.map(|kv| kv.mod_revision);
    Ok(Err(Conflict {
        key: key.to_owned(),
        expected: expected_revision,
        current,
    }))
}

/// [`cas_json`], and on success the intent `intent` finished in the same transaction (one
/// durable write instead of two). On a conflict nothing is written: the intent stays.
pub fn cas_json_finishing<T: Serialize + ?Sized>(
    store: &dyn Store,
    key: &str,
    expected_revision: Option<i64>,
    value: &T,
    intent: &str,
) -> Result<Result<i64, Conflict>, StoreError> {
    let bytes = encode(key, value)?;
    let compare = match expected_revision {
        Some(revision) => Compare::ModRevision(key.to_owned(), revision),
        None => Compare::Missing(key.to_owned()),
    };
    let result = store.txn(
        &[compare],
        &[
            Op::Put(key.to_owned(), bytes),
            Op::Delete(crate::intent::intent_key(intent)),
        ],
    )?;
    if result.succeeded {
        tracing::debug!(id = intent, "finished intent");
        return Ok(Ok(result.revision));
    }
    let current = store.get(key)?.map(|kv| kv.mod_revision);
    Ok(Err(Conflict {
        key: key.to_owned(),
        expected: expected_revision,
        current,
    }))
}

fn encode<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|source| StoreError::Encode {
        key: key.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;
    use crate::SqliteStore;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Profile {
        name: String,
        limit: u32,
    }

    #[test]
    fn a_cas_finishing_an_intent_writes_both_or_neither() {
        let store = SqliteStore::open_in_memory().unwrap();
        let key = "/profiles/default/base";
        let p = Profile {
            name: "base".into(),
            limit: 1,
        };
        let id = crate::record_intent(&store, "test", serde_json::json!({})).unwrap();
        let rev = cas_json_finishing(&store, key, None, &p, &id).unwrap().unwrap();
        assert!(
            crate::pending_intents(&store).unwrap().is_empty(),
            "finished with the write"
        );
        // A conflict: nothing written, the intent stays for its caller.
        let id = crate::record_intent(&store, "test", serde_json::json!({})).unwrap();
        let conflict = cas_json_finishing(&store, key, None, &p, &id).unwrap().unwrap_err();
        assert_eq!(conflict.current, Some(rev));
        assert_eq!(crate::pending_intents(&store).unwrap().len(), 1);
    }

    #[test]
    fn json_round_trip_and_cas() {
        let store = SqliteStore::open_in_memory().unwrap();
        let key = "/profiles/default/base";
        assert_eq!(get_json::<Profile>(&store, key).unwrap(), None);

        let created = cas_json(
            &store,
            key,
            None,
            &Profile {
                name: "base".into(),
                limit: 1,
            },
        )
        .unwrap()
        .unwrap();
        let (profile, revision) = get_json::<Profile>(&store, key).unwrap().unwrap();
        assert_eq!(
            profile,
            Profile {
                name: "base".into(),
                limit: 1
            }
        );
        assert_eq!(revision, created);

        // Create-if-absent on an existing key conflicts and writes nothing.
        let conflict = cas_json(
            &store,
            key,
            None,
            &Profile {
                name: "base".into(),
                limit: 9,
            },
        )
        .unwrap()
        .unwrap_err();
        assert_eq!(
            conflict,
            Conflict {
                key: key.into(),
                expected: None,
                current: Some(created)
            }
        );
        assert_eq!(
            conflict.to_string(),
            format!("conflict at {key}: expected missing, found revision {created}")
        );

        let updated = cas_json(
            &store,
            key,
            Some(created),
            &Profile {
                name: "base".into(),
                limit: 2,
            },
        )
        .unwrap()
        .unwrap();
        assert!(updated > created);
        // The old ETag no longer matches.
        let stale = cas_json(
            &store,
            key,
            Some(created),
            &Profile {
                name: "base".into(),
                limit: 3,
            },
        )
        .unwrap();
        assert_eq!(
            stale,
            Err(Conflict {
                key: key.into(),
                expected: Some(created),
                current: Some(updated)
            })
        );
        assert_eq!(
            get_json::<Profile>(&store, key).unwrap().unwrap(),
            (
                Profile {
                    name: "base".into(),
                    limit: 2
                },
                updated
            )
        );

        let put = put_json(
            &store,
            key,
            &Profile {
                name: "base".into(),
                limit: 4,
            },
        )
        .unwrap();
        assert_eq!(get_json::<Profile>(&store, key).unwrap().unwrap().1, put);
    }

    #[test]
    fn corrupt_json_names_the_key() {
        let store = SqliteStore::open_in_memory().unwrap();
        store.put("/profiles/default/bad", b"{").unwrap();
        let err = get_json::<Profile>(&store, "/profiles/default/bad").unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }));
        assert!(
            err.to_string().starts_with("corrupt value at /profiles/default/bad: "),
            "{err}"
        );
    }

    #[test]
    fn concurrent_cas_increments_are_exact() {
        let store = std::sync::Arc::new(SqliteStore::open_in_memory().unwrap());
        concurrent_increments(|| store.clone());
    }

    #[test]
    fn concurrent_cas_increments_across_connections() {
        // Two stores on one file: SQLite's write lock (BEGIN IMMEDIATE + busy_timeout) serialises them.
        let dir = crate::testutil::TempDir::new();
        let path = dir.path().join("global.db");
        SqliteStore::open(&path).unwrap();
        concurrent_increments(|| std::sync::Arc::new(SqliteStore::open(&path).unwrap()));
    }

    fn concurrent_increments(store: impl Fn() -> std::sync::Arc<SqliteStore>) {
        const THREADS: u64 = 2;
        const PER_THREAD: u64 = 200;
        let key = "/counter";
        let threads: Vec<_> = (0..THREADS)
            .map(|_| {
                let store = store();
                std::thread::spawn(move || {
                    let mut conflicts = 0;
                    for _ in 0..PER_THREAD {
                        loop {
                            let current = get_json::<u64>(&*store, key).unwrap();
                            let (next, expected) = match current {
                                Some((n, revision)) => (n + 1, Some(revision)),
                                None => (1, None),
                            };
                            match cas_json(&*store, key, expected, &next).unwrap() {
                                Ok(_) => break,
                                Err(_) => conflicts += 1,
                            }
                        }
                    }
                    conflicts
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let (count, _) = get_json::<u64>(&*store(), key).unwrap().unwrap();
        assert_eq!(count, THREADS * PER_THREAD);
    }
}
