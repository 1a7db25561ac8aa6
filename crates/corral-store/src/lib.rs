//! Corral's state store.
//!
//! # Shape: an etcd-like key-value store
//!
//! All daemon state lives behind one small trait, [`Store`], shaped after etcd's v3 API so that the multi-host
//! backend (etcd) can be added later without changing any caller:
//!
//! * keys are UTF-8 strings laid out as paths (`/instances/default/web1`, `/profiles/default/base`, ...) and
//!   values are opaque bytes (JSON in practice, see [`get_json`], [`put_json`] and [`cas_json`]);
//! * [`Store::list`] returns every key under a prefix, ordered by key (byte order). A prefix is a plain string
//!   prefix, so callers end directory-like prefixes with `/`: `/a/` matches `/a/x` but not `/ab/x`;
//! * there is one global, monotonically increasing **revision**. Every successful write transaction increments it
//!   exactly once, and every key touched by that transaction gets the new revision as its `mod_revision` (etcd
//!   semantics). A key also remembers the revision at which it was created (`create_revision`), which survives
//!   updates and is reset only when the key is deleted and created again;
//! * [`Store::txn`] is etcd's mini-transaction: if all [`Compare`]s hold, all [`Op`]s are applied atomically,
//!   otherwise nothing is. Compare-and-swap on a key's `mod_revision` is how every read-modify-write is done;
//! * [`Store::watch`] delivers the changes under a prefix committed after the call, in commit order.
//!
//! # Revisions are the API's ETags
//!
//! A key's `mod_revision` changes on every write to it and never repeats, so the REST API hands it out as the
//! `ETag` of an object and turns `If-Match` into [`Compare::ModRevision`] (see [`cas_json`]); a mismatch becomes
//! `412 Precondition Failed`. The global [`Store::revision`] is what watch-based caches resume from.
//!
//! # Global versus node-local state
//!
//! * **Global state** (instances, profiles, images, networks, storage pools, projects, certificates) is what every
//!   host of a cluster must agree on. On a single host it is a [`SqliteStore`] on `global.db`
//!   ([`GLOBAL_DB_FILE`]); a cluster will use an etcd implementation of the same trait. Daemon code should hold it
//!   as `Arc<dyn Store>`.
//! * **Node-local state** (this host's volatile keys, storage and network runtime state: which veth belongs to
//!   which instance, which volumes are mounted, ...) only makes sense on the host it describes, so it always lives
//!   in SQLite, in a separate file `node.db` ([`NODE_DB_FILE`]), behind [`NodeStore`]. `NodeStore` is the same
//!   implementation with a distinct type, so global and node-local handles cannot be mixed up by accident.
//!
//! Both files are opened in WAL mode with `synchronous=FULL`: once a write call returns, the change survives the
//! daemon being killed (and, fsync permitting, the machine losing power). A durable transaction costs about
//! 0.2 ms with the bundled SQLite.
//!
//! # Crash safety: intents
//!
//! Work that touches both the disk and the database (create a rootfs then record the instance, delete a volume
//! then drop its record, ...) is ordered as *record the intent, do the work, commit*:
//!
//! 1. [`record_intent`] durably writes what is about to happen (`kind` + JSON `data`) under [`INTENT_PREFIX`];
//! 2. the daemon does the disk/network work;
//! 3. it commits the resulting state and then calls [`finish_intent`] (ideally in the same [`Store::txn`], by
//!    adding `Op::Delete(intent_key(id))`).
//!
//! A crash at any point leaves either nothing, or a pending intent. At start-up the daemon walks
//! [`pending_intents`] and, per kind, finishes or undoes each one before serving requests.
//!
//! # Schema
//!
//! Each database file carries a schema version in `PRAGMA user_version`; the ordered migration list is applied
//! step by step, each in its own transaction, when a file is opened. A file written by a newer corrald (with a
//! higher version than this code knows) is refused instead of being misread.
//!
//! # Not yet: leases
//!
//! etcd leases (keys that vanish when their owner stops renewing them) will be needed for cluster membership and
//! distributed locks. A single host has no use for them, so they are not part of the trait yet; they will be added
//! as `grant`/`keep_alive`/`revoke` plus an optional lease on `Op::Put` when the etcd backend arrives.

mod error;
mod intent;
mod json;
mod sqlite;
mod watch;

#[cfg(test)]
mod testutil;

use std::sync::Arc;

pub use error::StoreError;
pub use intent::{finish_intent, intent_key, pending_intents, record_intent, Intent, INTENT_PREFIX};
pub use json::{cas_json, cas_json_finishing, get_json, put_json, Conflict};
pub use sqlite::{NodeStore, SqliteStore, GLOBAL_DB_FILE, NODE_DB_FILE, SCHEMA_VERSION};
pub use watch::{RecvTimeoutError, TryRecvError, Watcher};

/// One key with its value and revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value, opaque bytes.
    pub value: Vec<u8>,
    /// The revision of the transaction that created this key (kept across updates).
    pub create_revision: i64,
    /// The revision of the last transaction that wrote this key. Usable as an ETag.
    pub mod_revision: i64,
}

/// A condition checked by [`Store::txn`] before applying its operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key must not exist.
    Missing(String),
    /// The key's `mod_revision` must equal the given revision. As in etcd, a missing key has `mod_revision` 0, so
    /// `ModRevision(key, 0)` is the same as `Missing(key)`.
    ModRevision(String, i64),
    /// The key must exist.
    Exists(String),
}

/// A write applied by [`Store::txn`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create or replace a key.
    Put(String, Vec<u8>),
    /// Delete a key (no-op if it does not exist).
    Delete(String),
    /// Delete every key starting with the prefix (which must not be empty).
    DeletePrefix(String),
}

/// The outcome of [`Store::txn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnResult {
    /// Whether all compares held (and so all ops were applied).
    pub succeeded: bool,
    /// The store revision after the transaction: the new revision shared by all ops if the transaction changed
    /// anything, else the current revision.
    pub revision: i64,
}

/// A change delivered to a [`Watcher`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A key was created or updated.
    Put(KeyValue),
    /// A key was deleted, in the transaction of the given revision.
    Delete {
        /// The deleted key.
        key: String,
        /// The revision of the deleting transaction.
        revision: i64,
    },
}

impl WatchEvent {
    /// The key the event is about.
    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put(kv) => &kv.key,
            WatchEvent::Delete { key, .. } => key,
        }
    }

    /// The revision of the transaction that produced the event.
    pub fn revision(&self) -> i64 {
        match self {
            WatchEvent::Put(kv) => kv.mod_revision,
            WatchEvent::Delete { revision, .. } => *revision,
        }
    }
}

/// The state store: an etcd-shaped key-value store with revisions, transactions and watches.
///
/// See the [crate documentation](crate) for the model.
pub trait Store: Send + Sync {
    /// Reads one key.
    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// Reads every key starting with `prefix`, ordered by key. An empty prefix lists everything.
    fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError>;

    /// Creates or replaces a key unconditionally; returns the new revision.
    fn put(&self, key: &str, value: &[u8]) -> Result<i64, StoreError>;

    /// Deletes a key; returns whether it existed. Deleting a missing key does not change the revision.
    fn delete(&self, key: &str) -> Result<bool, StoreError>;

    /// Atomically: if every compare holds, applies every op (in order, all sharing one new revision); otherwise
    /// applies nothing.
    fn txn(&self, compares: &[Compare], ops: &[Op]) -> Result<TxnResult, StoreError>;

    /// The current global revision (0 for an empty, never written store).
    fn revision(&self) -> Result<i64, StoreError>;

    /// Starts watching `prefix`: the returned [`Watcher`] receives, in commit order, an event for every change to a
    /// key under `prefix` committed after this call. Dropping the watcher unregisters it.
    fn watch(&self, prefix: &str) -> Watcher;
}

macro_rules! forward_store {
    ($($ty:ty),*) => {$(
        impl<S: Store + ?Sized> Store for $ty {
            fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
                (**self).get(key)
            }
            fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
                (**self).list(prefix)
            }
            fn put(&self, key: &str, value: &[u8]) -> Result<i64, StoreError> {
                (**self).put(key, value)
            }
            fn delete(&self, key: &str) -> Result<bool, StoreError> {
                (**self).delete(key)
            }
            fn txn(&self, compares: &[Compare], ops: &[Op]) -> Result<TxnResult, StoreError> {
                (**self).txn(compares, ops)
            }
            fn revision(&self) -> Result<i64, StoreError> {
                (**self).revision()
            }
            fn watch(&self, prefix: &str) -> Watcher {
                (**self).watch(prefix)
            }
        }
    )*};
}

forward_store!(&S, Box<S>, Arc<S>);
