//! The intent journal: durable notes of multi-step work in progress, reconciled at daemon start-up.
//!
//! See the [crate documentation](crate#crash-safety-intents) for the protocol.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::{Compare, Op, Store, StoreError};

/// The key prefix under which intents are stored.
pub const INTENT_PREFIX: &str = "/intents/";

/// A piece of work that was started and not yet finished.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Intent {
    /// The intent's id (its key is [`intent_key`]`(id)`). Ids sort in creation order.
    pub id: String,
    /// What kind of work this is, e.g. `"instance-create"`; selects the reconciler.
    pub kind: String,
    /// Whatever the reconciler needs to finish or undo the work.
    pub data: serde_json::Value,
    /// When the intent was recorded, in seconds since the Unix epoch.
    pub created_at: i64,
}

/// The key of the intent with the given id. Use it to finish an intent in the same [`Store::txn`] that commits the
/// work's result: `Op::Delete(intent_key(&id))`.
pub fn intent_key(id: &str) -> String {
    format!("{INTENT_PREFIX}{id}")
}

/// Durably records that work of `kind` described by `data` is about to start; returns the intent's id.
pub fn record_intent(store: &dyn Store, kind: &str, data: serde_json::Value) -> Result<String, StoreError> {
    let created_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let mut intent = Intent {
        id: String::new(),
        kind: kind.to_owned(),
        data,
        created_at,
    };
    loop {
        // Name the intent after the revision its write is expected to get: unique (guarded by the `Missing`
        // compare), and increasing with creation order, so listing the prefix yields the journal in order.
        intent.id = format!("{:020}", store.revision()? + 1);
        let key = intent_key(&intent.id);
        let value = serde_json::to_vec(&intent).map_err(|source| StoreError::Encode {
            key: key.clone(),
            source,
        })?;
        if store
            .txn(&[Compare::Missing(key.clone())], &[Op::Put(key, value)])?
            .succeeded
        {
            tracing::debug!(id = %intent.id, kind, "recorded intent");
            return Ok(intent.id);
        }
    }
}

/// Marks the intent as done (removes it); returns whether it was still pending.
pub fn finish_intent(store: &dyn Store, id: &str) -> Result<bool, StoreError> {
    let finished = store.delete(&intent_key(id))?;
    tracing::debug!(id, finished, "finished intent");
    Ok(finished)
}

/// All unfinished intents, oldest first.
pub fn pending_intents(store: &dyn Store) -> Result<Vec<Intent>, StoreError> {
    store
        .list(INTENT_PREFIX)?
        .into_iter()
        .map(|kv| {
            let mut intent: Intent = serde_json::from_slice(&kv.value).map_err(|source| StoreError::Corrupt {
                key: kv.key.clone(),
                source,
            })?;
            // The key is authoritative: it is what `finish_intent` deletes.
            intent.id = kv.key[INTENT_PREFIX.len()..].to_owned();
            Ok(intent)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::SqliteStore;

    #[test]
    fn intents_round_trip_in_order() {
        let store = SqliteStore::open_in_memory().unwrap();
        store.put("/instances/default/a", b"{}").unwrap();
        let first = record_intent(&store, "instance-create", json!({"name": "web1"})).unwrap();
        let second = record_intent(&store, "volume-delete", json!({"pool": "default", "volume": "v"})).unwrap();
        assert!(first < second);

        let pending = pending_intents(&store).unwrap();
        assert_eq!(pending.len(), 2);
        assert_eq!(pending[0].id, first);
        assert_eq!(pending[0].kind, "instance-create");
        assert_eq!(pending[0].data, json!({"name": "web1"}));
        assert!(pending[0].created_at > 0);
        assert_eq!(pending[1].id, second);
        assert_eq!(pending[1].kind, "volume-delete");

        assert!(finish_intent(&store, &first).unwrap());
        assert!(!finish_intent(&store, &first).unwrap());
        let pending = pending_intents(&store).unwrap();
        assert_eq!(
            pending.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
            [second.as_str()]
        );
    }

    #[test]
    fn intent_finished_in_the_commit_txn() {
        let store = SqliteStore::open_in_memory().unwrap();
        let id = record_intent(&store, "instance-create", json!({"name": "web1"})).unwrap();
        let result = store
            .txn(
                &[Compare::Missing("/instances/default/web1".into())],
                &[
                    Op::Put("/instances/default/web1".into(), b"{}".to_vec()),
                    Op::Delete(intent_key(&id)),
                ],
            )
            .unwrap();
        assert!(result.succeeded);
        assert!(pending_intents(&store).unwrap().is_empty());
    }

    #[test]
    fn corrupt_intent_is_reported_with_its_key() {
        let store = SqliteStore::open_in_memory().unwrap();
        store.put("/intents/00000000000000000001", b"not json").unwrap();
        let err = pending_intents(&store).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("corrupt value at /intents/00000000000000000001: "),
            "{err}"
        );
    }
}
