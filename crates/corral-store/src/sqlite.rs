//! The SQLite implementation of [`Store`], used for all state on a single host and for node-local state always.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Row, TransactionBehavior};

use crate::watch::WatchRegistry;
use crate::{Compare, KeyValue, Op, Store, StoreError, TxnResult, WatchEvent, Watcher};

/// The file name of the global-state database in the daemon's state directory.
pub const GLOBAL_DB_FILE: &str = "global.db";

/// The file name of the node-local-state database in the daemon's state directory.
pub const NODE_DB_FILE: &str = "node.db";

/// How long a write waits for another connection (e.g. an admin tool) holding the database lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The schema migrations, in order. Step `i` takes the database from `user_version` `i` to `i + 1` and runs in its
/// own transaction. To change the schema, append a step; never edit or reorder a released one.
const MIGRATIONS: &[&str] = &[
    // 1: the key-value table (keys stored as BLOBs so that prefix ranges compare raw UTF-8 bytes) and the global
    // revision counter.
    "CREATE TABLE kv (
        key BLOB NOT NULL PRIMARY KEY,
        value BLOB NOT NULL,
        create_revision INTEGER NOT NULL,
        mod_revision INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE meta (
        name TEXT NOT NULL PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO meta (name, value) VALUES ('revision', 0);",
];

/// The schema version this code writes: the number of migration steps.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

const MEMORY_PATH: &str = ":memory:";

/// A [`Store`] on one SQLite file (WAL mode, `synchronous=FULL`), with watches delivered in-process.
///
/// Watches only see writes made through this instance: other processes writing the same file are not observed.
pub struct SqliteStore {
    path: PathBuf,
    conn: Mutex<Connection>,
    watchers: WatchRegistry,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating it if needed) the database at `path` and brings its schema up to date. The parent directory
    /// must exist.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let conn = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.to_owned(),
            source,
        })?;
        Self::init(conn, path.to_owned())
    }

    /// Opens a private, empty in-memory database (for tests and tools).
    pub fn open_in_memory() -> Result<SqliteStore, StoreError> {
        let path = PathBuf::from(MEMORY_PATH);
        let conn = Connection::open_in_memory().map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?;
        Self::init(conn, path)
    }

    /// The database file (`:memory:` for an in-memory store).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn init(mut conn: Connection, path: PathBuf) -> Result<SqliteStore, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") && path != Path::new(MEMORY_PATH) {
            tracing::warn!(path = %path.display(), %mode, "database does not support WAL mode; using its journal mode");
        }
        conn.pragma_update(None, "synchronous", "FULL").map_err(open_err)?;
        migrate(&mut conn, &path)?;
        tracing::debug!(path = %path.display(), version = SCHEMA_VERSION, "opened database");
        Ok(SqliteStore {
            path,
            conn: Mutex::new(conn),
            watchers: WatchRegistry::default(),
        })
    }

    /// Locks the connection. A panic while holding the lock cannot leave a transaction open (rusqlite rolls back
    /// on drop), so a poisoned lock is still usable.
    fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn read_err(&self, what: &str) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        let what = what.to_owned();
        move |source| StoreError::Read {
            what: what.clone(),
            path: self.path.clone(),
            source,
        }
    }

    fn write_err(&self, what: &str) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        let what = what.to_owned();
        move |source| StoreError::Write {
            what: what.clone(),
            path: self.path.clone(),
            source,
        }
    }

    fn decode_key(&self, raw: Vec<u8>) -> Result<String, StoreError> {
        String::from_utf8(raw).map_err(|e| StoreError::CorruptKey {
            key: String::from_utf8_lossy(e.as_bytes()).into_owned(),
            path: self.path.clone(),
        })
    }

    fn read_kv(row: &Row<'_>) -> rusqlite::Result<(Vec<u8>, KeyValueRest)> {
        Ok((
            row.get(0)?,
            KeyValueRest {
                value: row.get(1)?,
                create_revision: row.get(2)?,
                mod_revision: row.get(3)?,
            },
        ))
    }

    /// Runs one write transaction; returns its result and the number of keys it changed.
    fn apply(&self, compares: &[Compare], ops: &[Op]) -> Result<(TxnResult, usize), StoreError> {
        for op in ops {
            let (key, reason) = match op {
                Op::Put(key, _) | Op::Delete(key) => (key, "key must not be empty"),
                Op::DeletePrefix(prefix) => (prefix, "prefix of a prefix delete must not be empty"),
            };
            if key.is_empty() {
                return Err(StoreError::InvalidKey {
                    key: key.clone(),
                    reason,
                });
            }
        }
        let what = match ops.first() {
            Some(Op::Put(key, _) | Op::Delete(key) | Op::DeletePrefix(key)) if ops.len() == 1 => key.as_str(),
            _ => "transaction",
        };

        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.write_err(what))?;
        let current: i64 = tx
            .query_row("SELECT value FROM meta WHERE name = 'revision'", [], |row| row.get(0))
            .map_err(self.write_err(what))?;

        for compare in compares {
            let key = match compare {
                Compare::Missing(key) | Compare::ModRevision(key, _) | Compare::Exists(key) => key,
            };
            let mod_revision: Option<i64> = tx
                .prepare_cached("SELECT mod_revision FROM kv WHERE key = ?1")
                .and_then(|mut stmt| stmt.query_row([key.as_bytes()], |row| row.get(0)).optional())
                .map_err(self.write_err(key))?;
            let holds = match compare {
                Compare::Missing(_) => mod_revision.is_none(),
                Compare::Exists(_) => mod_revision.is_some(),
                Compare::ModRevision(_, expected) => mod_revision.unwrap_or(0) == *expected,
            };
            if !holds {
                // Dropping `tx` rolls back the (read-only) transaction.
                return Ok((
                    TxnResult {
                        succeeded: false,
                        revision: current,
                    },
                    0,
                ));
            }
        }

        let revision = current + 1;
        let mut events = Vec::new();
        for op in ops {
            match op {
                Op::Put(key, value) => {
                    let create_revision: i64 = tx
                        .prepare_cached(
                            "INSERT INTO kv (key, value, create_revision, mod_revision) VALUES (?1, ?2, ?3, ?3)
                             ON CONFLICT (key) DO UPDATE SET value = excluded.value, mod_revision = excluded.mod_revision
                             RETURNING create_revision",
                        )
                        .and_then(|mut stmt| {
                            stmt.query_row(params![key.as_bytes(), value, revision], |row| row.get(0))
                        })
                        .map_err(self.write_err(key))?;
                    events.push(WatchEvent::Put(KeyValue {
                        key: key.clone(),
                        value: value.clone(),
                        create_revision,
                        mod_revision: revision,
                    }));
                }
                Op::Delete(key) => {
                    let deleted = tx
                        .prepare_cached("DELETE FROM kv WHERE key = ?1")
                        .and_then(|mut stmt| stmt.execute([key.as_bytes()]))
                        .map_err(self.write_err(key))?;
                    if deleted > 0 {
                        events.push(WatchEvent::Delete {
                            key: key.clone(),
                            revision,
                        });
                    }
                }
                Op::DeletePrefix(prefix) => {
                    let (range, args) = prefix_range(prefix);
                    let keys = tx
                        .prepare_cached(&format!("SELECT key FROM kv WHERE {range} ORDER BY key"))
                        .and_then(|mut stmt| {
                            stmt.query_map(params_from_iter(&args), |row| row.get::<_, Vec<u8>>(0))?
                                .collect::<Result<Vec<_>, _>>()
                        })
                        .map_err(self.write_err(prefix))?;
                    tx.prepare_cached(&format!("DELETE FROM kv WHERE {range}"))
                        .and_then(|mut stmt| stmt.execute(params_from_iter(&args)))
                        .map_err(self.write_err(prefix))?;
                    for key in keys {
                        events.push(WatchEvent::Delete {
                            key: self.decode_key(key)?,
                            revision,
                        });
                    }
                }
            }
        }

        if events.is_empty() {
            // Nothing changed (only deletes of missing keys): like etcd, the revision does not move.
            return Ok((
                TxnResult {
                    succeeded: true,
                    revision: current,
                },
                0,
            ));
        }
        tx.execute("UPDATE meta SET value = ?1 WHERE name = 'revision'", [revision])
            .map_err(self.write_err(what))?;
        tx.commit().map_err(self.write_err(what))?;
        // Still under the connection lock, so watchers see transactions in commit order.
        self.watchers.dispatch(&events);
        Ok((
            TxnResult {
                succeeded: true,
                revision,
            },
            events.len(),
        ))
    }
}

struct KeyValueRest {
    value: Vec<u8>,
    create_revision: i64,
    mod_revision: i64,
}

/// The smallest byte string greater than every string starting with `prefix` (etcd's range end), or `None` if there
/// is none (empty prefix: the range is unbounded).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// The SQL condition on `key` selecting the keys under `prefix`, and its parameters.
fn prefix_range(prefix: &str) -> (&'static str, Vec<Vec<u8>>) {
    let start = prefix.as_bytes().to_vec();
    match prefix_end(prefix.as_bytes()) {
        Some(end) => ("key >= ?1 AND key < ?2", vec![start, end]),
        None => ("key >= ?1", vec![start]),
    }
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let open_err = |source| StoreError::Open {
        path: path.to_owned(),
        source,
    };
    let user_version = |conn: &Connection| -> Result<i64, StoreError> {
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(open_err)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                path: path.to_owned(),
                found: version,
                known: SCHEMA_VERSION,
            });
        }
        if version < 0 {
            return Err(open_err(rusqlite::Error::IntegralValueOutOfRange(0, version)));
        }
        Ok(version)
    };
    if user_version(conn)? == SCHEMA_VERSION {
        return Ok(());
    }
    loop {
        // Re-read the version under the write lock: another process may have migrated meanwhile.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(open_err)?;
        let version = user_version(&tx)?;
        let Some(step) = usize::try_from(version).ok().and_then(|v| MIGRATIONS.get(v)) else {
            return Ok(());
        };
        let next = version + 1;
        let migrate_err = |source| StoreError::Migrate {
            path: path.to_owned(),
            version: next,
            source,
        };
        tx.execute_batch(step).map_err(migrate_err)?;
        tx.pragma_update(None, "user_version", next).map_err(migrate_err)?;
        tx.commit().map_err(migrate_err)?;
        tracing::info!(path = %path.display(), version = next, "migrated database schema");
    }
}

impl Store for SqliteStore {
    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let conn = self.lock();
        let row = conn
            .prepare_cached("SELECT value, create_revision, mod_revision FROM kv WHERE key = ?1")
            .and_then(|mut stmt| {
                stmt.query_row([key.as_bytes()], |row| {
                    Ok(KeyValue {
                        key: key.to_owned(),
                        value: row.get(0)?,
                        create_revision: row.get(1)?,
                        mod_revision: row.get(2)?,
                    })
                })
                .optional()
            })
            .map_err(self.read_err(key))?;
        Ok(row)
    }

    fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        let conn = self.lock();
        let (range, args) = prefix_range(prefix);
        let rows = conn
            .prepare_cached(&format!(
                "SELECT key, value, create_revision, mod_revision FROM kv WHERE {range} ORDER BY key"
            ))
            .and_then(|mut stmt| {
                stmt.query_map(params_from_iter(&args), Self::read_kv)?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(self.read_err(prefix))?;
        drop(conn);
        rows.into_iter()
            .map(|(key, rest)| {
                Ok(KeyValue {
                    key: self.decode_key(key)?,
                    value: rest.value,
                    create_revision: rest.create_revision,
                    mod_revision: rest.mod_revision,
                })
            })
            .collect()
    }

    fn put(&self, key: &str, value: &[u8]) -> Result<i64, StoreError> {
        let (result, _) = self.apply(&[], &[Op::Put(key.to_owned(), value.to_vec())])?;
        Ok(result.revision)
    }

    fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let (_, changed) = self.apply(&[], &[Op::Delete(key.to_owned())])?;
        Ok(changed > 0)
    }

    fn txn(&self, compares: &[Compare], ops: &[Op]) -> Result<TxnResult, StoreError> {
        self.apply(compares, ops).map(|(result, _)| result)
    }

    fn revision(&self) -> Result<i64, StoreError> {
        self.lock()
            .query_row("SELECT value FROM meta WHERE name = 'revision'", [], |row| row.get(0))
            .map_err(self.read_err("revision"))
    }

    fn watch(&self, prefix: &str) -> Watcher {
        // Register under the connection lock so that no commit is half-dispatched around the registration: the
        // watcher sees exactly the transactions committed after this call.
        let _conn = self.lock();
        self.watchers.register(prefix)
    }
}

/// The node-local store (`node.db`): this host's volatile keys and storage/network runtime state.
///
/// It is a [`SqliteStore`] under a distinct type so that node-local and global handles cannot be confused; unlike
/// the global store it stays in SQLite when the host joins a cluster.
#[derive(Debug)]
pub struct NodeStore(SqliteStore);

impl NodeStore {
    /// Opens (creating it if needed) the node-local database at `path`, normally `<state dir>/node.db`
    /// ([`NODE_DB_FILE`]).
    pub fn open(path: &Path) -> Result<NodeStore, StoreError> {
        SqliteStore::open(path).map(NodeStore)
    }

    /// Opens a private, empty in-memory node-local store (for tests).
    pub fn open_in_memory() -> Result<NodeStore, StoreError> {
        SqliteStore::open_in_memory().map(NodeStore)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Store for NodeStore {
    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.0.get(key)
    }
    fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        self.0.list(prefix)
    }
    fn put(&self, key: &str, value: &[u8]) -> Result<i64, StoreError> {
        self.0.put(key, value)
    }
    fn delete(&self, key: &str) -> Result<bool, StoreError> {
        self.0.delete(key)
    }
    fn txn(&self, compares: &[Compare], ops: &[Op]) -> Result<TxnResult, StoreError> {
        self.0.txn(compares, ops)
    }
    fn revision(&self) -> Result<i64, StoreError> {
        self.0.revision()
    }
    fn watch(&self, prefix: &str) -> Watcher {
        self.0.watch(prefix)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};
    use std::sync::mpsc::TryRecvError;

    use super::*;
    use crate::testutil::TempDir;

    fn mem() -> SqliteStore {
        SqliteStore::open_in_memory().unwrap()
    }

    fn keys(kvs: &[KeyValue]) -> Vec<&str> {
        kvs.iter().map(|kv| kv.key.as_str()).collect()
    }

    fn put_op(key: &str, value: &[u8]) -> Op {
        Op::Put(key.to_owned(), value.to_vec())
    }

    #[test]
    fn revisions_increase_and_are_shared_by_a_txn() {
        let store = mem();
        assert_eq!(store.revision().unwrap(), 0);
        let r1 = store.put("/a", b"1").unwrap();
        let r2 = store.put("/b", b"2").unwrap();
        assert_eq!((r1, r2), (1, 2));

        let result = store
            .txn(&[], &[put_op("/c", b"3"), put_op("/d", b"4"), Op::Delete("/a".into())])
            .unwrap();
        assert_eq!(
            result,
            TxnResult {
                succeeded: true,
                revision: 3
            }
        );
        assert_eq!(store.revision().unwrap(), 3);
        assert_eq!(store.get("/c").unwrap().unwrap().mod_revision, 3);
        assert_eq!(store.get("/d").unwrap().unwrap().mod_revision, 3);
        assert_eq!(store.get("/a").unwrap(), None);
        assert_eq!(store.get("/b").unwrap().unwrap().mod_revision, 2);

        // Writes that change nothing do not move the revision.
        assert!(!store.delete("/nope").unwrap());
        assert_eq!(
            store.txn(&[], &[]).unwrap(),
            TxnResult {
                succeeded: true,
                revision: 3
            }
        );
        assert_eq!(store.txn(&[], &[Op::DeletePrefix("/zz/".into())]).unwrap().revision, 3);
        assert_eq!(store.revision().unwrap(), 3);
        assert!(store.delete("/b").unwrap());
        assert_eq!(store.revision().unwrap(), 4);
    }

    #[test]
    fn create_revision_is_kept_across_updates() {
        let store = mem();
        store.put("/other", b"x").unwrap();
        let created = store.put("/k", b"v1").unwrap();
        let updated = store.put("/k", b"v2").unwrap();
        let kv = store.get("/k").unwrap().unwrap();
        assert_eq!(
            kv,
            KeyValue {
                key: "/k".into(),
                value: b"v2".to_vec(),
                create_revision: created,
                mod_revision: updated
            }
        );
        assert!(updated > created);

        // Deleting and re-creating starts a new life.
        store.delete("/k").unwrap();
        let recreated = store.put("/k", b"v3").unwrap();
        let kv = store.get("/k").unwrap().unwrap();
        assert_eq!((kv.create_revision, kv.mod_revision), (recreated, recreated));
    }

    #[test]
    fn list_is_ordered_and_bounded_by_prefix() {
        let store = mem();
        for key in [
            "/b/2",
            "/a/y",
            "/ab/x",
            "/a/x",
            "/a",
            "/a/sub/z",
            "/b/1",
            "/a0",
            "/a/\u{e9}",
            "/a/\u{10ffff}",
        ] {
            store.put(key, key.as_bytes()).unwrap();
        }
        assert_eq!(
            keys(&store.list("/a/").unwrap()),
            ["/a/sub/z", "/a/x", "/a/y", "/a/\u{e9}", "/a/\u{10ffff}"]
        );
        assert_eq!(
            keys(&store.list("/a").unwrap()),
            [
                "/a",
                "/a/sub/z",
                "/a/x",
                "/a/y",
                "/a/\u{e9}",
                "/a/\u{10ffff}",
                "/a0",
                "/ab/x"
            ]
        );
        assert_eq!(keys(&store.list("/ab/").unwrap()), ["/ab/x"]);
        assert_eq!(keys(&store.list("/b/").unwrap()), ["/b/1", "/b/2"]);
        assert!(store.list("/c/").unwrap().is_empty());
        assert_eq!(store.list("").unwrap().len(), 10);
        let kv = &store.list("/b/1").unwrap()[0];
        assert_eq!(kv.value, b"/b/1");
    }

    #[test]
    fn cas_succeeds_on_match_and_applies_nothing_on_conflict() {
        let store = mem();
        let rev = store.put("/inst/a", b"v1").unwrap();
        store.put("/inst/b", b"b").unwrap();
        let before = store.revision().unwrap();

        let stale = store
            .txn(
                &[
                    Compare::Exists("/inst/b".into()),
                    Compare::ModRevision("/inst/a".into(), rev - 1),
                ],
                &[
                    put_op("/inst/a", b"v2"),
                    put_op("/inst/c", b"c"),
                    Op::Delete("/inst/b".into()),
                ],
            )
            .unwrap();
        assert_eq!(
            stale,
            TxnResult {
                succeeded: false,
                revision: before
            }
        );
        assert_eq!(store.revision().unwrap(), before);
        assert_eq!(store.get("/inst/a").unwrap().unwrap().value, b"v1");
        assert_eq!(store.get("/inst/b").unwrap().unwrap().value, b"b");
        assert_eq!(store.get("/inst/c").unwrap(), None);

        let ok = store
            .txn(
                &[Compare::ModRevision("/inst/a".into(), rev)],
                &[put_op("/inst/a", b"v2"), put_op("/inst/c", b"c")],
            )
            .unwrap();
        assert_eq!(
            ok,
            TxnResult {
                succeeded: true,
                revision: before + 1
            }
        );
        assert_eq!(store.get("/inst/a").unwrap().unwrap().value, b"v2");
        assert_eq!(store.get("/inst/c").unwrap().unwrap().mod_revision, before + 1);
    }

    #[test]
    fn missing_and_exists_compares() {
        let store = mem();
        let create = |value: &[u8]| {
            store
                .txn(&[Compare::Missing("/k".into())], &[put_op("/k", value)])
                .unwrap()
        };
        assert!(create(b"first").succeeded);
        assert!(!create(b"second").succeeded);
        assert_eq!(store.get("/k").unwrap().unwrap().value, b"first");

        assert!(
            store
                .txn(&[Compare::Exists("/k".into())], &[put_op("/k", b"u")])
                .unwrap()
                .succeeded
        );
        assert!(
            !store
                .txn(&[Compare::Exists("/none".into())], &[put_op("/none", b"u")])
                .unwrap()
                .succeeded
        );
        assert_eq!(store.get("/none").unwrap(), None);
        // etcd: a missing key has mod_revision 0.
        assert!(
            store
                .txn(&[Compare::ModRevision("/none".into(), 0)], &[put_op("/none", b"u")])
                .unwrap()
                .succeeded
        );
        assert!(
            !store
                .txn(&[Compare::ModRevision("/none".into(), 0)], &[])
                .unwrap()
                .succeeded
        );
    }

    #[test]
    fn delete_prefix_removes_only_the_prefix() {
        let store = mem();
        for key in ["/p/a/1", "/p/a/2", "/p/a/sub/3", "/p/ab", "/p/b/1"] {
            store.put(key, b"x").unwrap();
        }
        let result = store.txn(&[], &[Op::DeletePrefix("/p/a/".into())]).unwrap();
        assert!(result.succeeded);
        assert_eq!(keys(&store.list("/p/").unwrap()), ["/p/ab", "/p/b/1"]);
    }

    #[test]
    fn empty_keys_are_refused() {
        let store = mem();
        for op in [
            put_op("", b"x"),
            Op::Delete(String::new()),
            Op::DeletePrefix(String::new()),
        ] {
            let err = store.txn(&[], &[op]).unwrap_err();
            assert!(matches!(err, StoreError::InvalidKey { .. }), "{err}");
        }
        assert!(store.put("", b"x").is_err());
        assert_eq!(store.revision().unwrap(), 0);
    }

    #[test]
    fn watch_sees_later_changes_under_its_prefix_in_order() {
        let store = mem();
        store.put("/inst/before", b"0").unwrap();
        let watcher = store.watch("/inst/");
        let r1 = store.put("/inst/a", b"1").unwrap();
        store.put("/instances/x", b"not mine").unwrap();
        store.put("/other/a", b"not mine").unwrap();
        let r2 = store
            .txn(&[], &[put_op("/inst/b", b"2"), Op::Delete("/inst/a".into())])
            .unwrap()
            .revision;
        let r3 = store.txn(&[], &[Op::DeletePrefix("/inst/".into())]).unwrap().revision;

        let events: Vec<_> = watcher.try_iter().collect();
        assert_eq!(
            events,
            [
                WatchEvent::Put(KeyValue {
                    key: "/inst/a".into(),
                    value: b"1".to_vec(),
                    create_revision: r1,
                    mod_revision: r1
                }),
                WatchEvent::Put(KeyValue {
                    key: "/inst/b".into(),
                    value: b"2".to_vec(),
                    create_revision: r2,
                    mod_revision: r2
                }),
                WatchEvent::Delete {
                    key: "/inst/a".into(),
                    revision: r2
                },
                WatchEvent::Delete {
                    key: "/inst/b".into(),
                    revision: r3
                },
                WatchEvent::Delete {
                    key: "/inst/before".into(),
                    revision: r3
                },
            ]
        );
        assert_eq!(watcher.try_recv(), Err(TryRecvError::Empty));

        // A failed txn produces nothing.
        store
            .txn(&[Compare::Exists("/nope".into())], &[put_op("/inst/c", b"3")])
            .unwrap();
        assert_eq!(watcher.try_recv(), Err(TryRecvError::Empty));
    }

    #[test]
    fn watch_from_another_thread() {
        let store = std::sync::Arc::new(mem());
        let watcher = store.watch("/w/");
        let writer = {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    store.put(&format!("/w/{i:02}"), b"x").unwrap();
                }
            })
        };
        for i in 0..50 {
            let event = watcher.recv_timeout(Duration::from_secs(10)).unwrap();
            assert_eq!(event.key(), format!("/w/{i:02}"));
            assert_eq!(event.revision(), i + 1);
        }
        writer.join().unwrap();
    }

    #[test]
    fn dropped_watchers_do_not_break_writers_and_are_pruned() {
        let store = mem();
        let kept = store.watch("/k/");
        let dropped = store.watch("/k/");
        let quiet = store.watch("/elsewhere/");
        assert_eq!(store.watchers.len(), 3);
        drop(dropped);
        drop(quiet);
        store.put("/k/1", b"1").unwrap();
        store.put("/k/2", b"2").unwrap();
        assert_eq!(store.watchers.len(), 1);
        assert_eq!(
            kept.try_iter().map(|e| e.key().to_owned()).collect::<Vec<_>>(),
            ["/k/1", "/k/2"]
        );
        drop(kept);
        store.put("/k/3", b"3").unwrap();
        assert_eq!(store.watchers.len(), 0);
    }

    #[test]
    fn fresh_database_is_at_the_current_schema_and_reopens() {
        let dir = TempDir::new();
        let path = dir.path().join(GLOBAL_DB_FILE);
        drop(SqliteStore::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        let version: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0)).unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |row| row.get(0)).unwrap();
        assert_eq!(mode, "wal");
        drop(conn);
        // Re-opening does not re-run migrations (they would fail: the tables exist).
        SqliteStore::open(&path).unwrap();
    }

    #[test]
    fn too_new_schema_is_refused() {
        let dir = TempDir::new();
        let path = dir.path().join(GLOBAL_DB_FILE);
        drop(SqliteStore::open(&path).unwrap());
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", SCHEMA_VERSION + 5)
            .unwrap();
        let err = SqliteStore::open(&path).unwrap_err();
        assert!(
            matches!(err, StoreError::SchemaTooNew { found, known, .. } if found == SCHEMA_VERSION + 5 && known == SCHEMA_VERSION)
        );
        let expected = format!(
            "database schema version {} is newer than this corrald ({SCHEMA_VERSION}): upgrade corrald",
            SCHEMA_VERSION + 5
        );
        assert!(err.to_string().ends_with(&expected), "{err}");
        assert!(err.to_string().contains(&path.display().to_string()), "{err}");
    }

    #[test]
    fn open_error_names_the_path() {
        let dir = TempDir::new();
        let path = dir.path().join("no/such/dir/global.db");
        let err = SqliteStore::open(&path).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("cannot open database {}: ", path.display())),
            "{err}"
        );
    }

    #[test]
    fn data_survives_close_and_reopen() {
        let dir = TempDir::new();
        let path = dir.path().join(GLOBAL_DB_FILE);
        let (created, updated) = {
            let store = SqliteStore::open(&path).unwrap();
            let created = store.put("/instances/default/web1", b"v1").unwrap();
            let updated = store.put("/instances/default/web1", b"v2").unwrap();
            store.put("/instances/default/web2", b"x").unwrap();
            store.delete("/instances/default/web2").unwrap();
            (created, updated)
        };
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.revision().unwrap(), 4);
        assert_eq!(
            store.list("/instances/").unwrap(),
            [KeyValue {
                key: "/instances/default/web1".into(),
                value: b"v2".to_vec(),
                create_revision: created,
                mod_revision: updated
            }]
        );
        assert_eq!(store.put("/x", b"y").unwrap(), 5);
    }

    #[test]
    fn node_store_is_a_separate_database() {
        let dir = TempDir::new();
        let global = SqliteStore::open(&dir.path().join(GLOBAL_DB_FILE)).unwrap();
        let node = NodeStore::open(&dir.path().join(NODE_DB_FILE)).unwrap();
        global.put("/instances/default/a", b"g").unwrap();
        node.put("/volatile/a/veth", b"veth1234").unwrap();
        assert_eq!(global.get("/volatile/a/veth").unwrap(), None);
        assert_eq!(node.get("/instances/default/a").unwrap(), None);
        assert_eq!(node.revision().unwrap(), 1);
        assert_eq!(node.path(), dir.path().join(NODE_DB_FILE));
        let in_memory = NodeStore::open_in_memory().unwrap();
        assert_eq!(in_memory.revision().unwrap(), 0);
    }

    #[test]
    fn prefix_end_is_the_etcd_range_end() {
        assert_eq!(prefix_end(b"/a/"), Some(b"/a0".to_vec()));
        assert_eq!(prefix_end(b"a\xff\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }

    const CRASH_WRITER_ENV: &str = "CORRAL_STORE_CRASH_WRITER_DB";
    const CRASH_ACKS_BEFORE_KILL: usize = 200;

    /// Not a test by itself: when re-executed by `acknowledged_writes_survive_kill_9` with the environment variable
    /// set, it writes keys forever, printing each one once its `put` has returned.
    #[test]
    fn crash_writer_child() {
        let Some(path) = std::env::var_os(CRASH_WRITER_ENV) else {
            return;
        };
        let store = SqliteStore::open(Path::new(&path)).unwrap();
        let mut out = std::io::stdout().lock();
        for i in 0..10_000_000u64 {
            let key = format!("/crash/{i:08}");
            store.put(&key, &i.to_le_bytes()).unwrap();
            writeln!(out, "ACK {key}").unwrap();
            out.flush().unwrap();
        }
    }

    #[test]
    fn acknowledged_writes_survive_kill_9() {
        use std::os::unix::process::ExitStatusExt;

        let dir = TempDir::new();
        let path = dir.path().join(GLOBAL_DB_FILE);
        let test_name = format!("{}::crash_writer_child", module_path!().split_once("::").unwrap().1);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([test_name.as_str(), "--exact", "--nocapture", "--test-threads=1"])
            .env(CRASH_WRITER_ENV, &path)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut acked = Vec::new();
        let mut killed = false;
        for line in stdout.lines() {
            let line = line.unwrap();
            // The harness prints "test ... " without a newline before the child's first line.
            if let Some((_, key)) = line.split_once("ACK ") {
                acked.push(key.to_owned());
                if acked.len() == CRASH_ACKS_BEFORE_KILL && !killed {
                    child.kill().unwrap(); // SIGKILL
                    killed = true;
                }
            }
            // Keep reading after the kill: lines already in the pipe were acknowledged before the process died.
        }
        let status = child.wait().unwrap();
        assert_eq!(
            status.signal(),
            Some(9 /* SIGKILL */),
            "writer was not killed: {status}, {} acks",
            acked.len()
        );
        assert!(acked.len() >= CRASH_ACKS_BEFORE_KILL);

        let store = SqliteStore::open(&path).unwrap();
        for (i, key) in acked.iter().enumerate() {
            assert_eq!(*key, format!("/crash/{i:08}"), "acknowledgements are not contiguous");
            let kv = store
                .get(key)
                .unwrap()
                .unwrap_or_else(|| panic!("acknowledged key {key} lost"));
            assert_eq!(kv.value, (i as u64).to_le_bytes());
        }
        // At most the one write in flight at the kill may have landed unacknowledged.
        let stored = store.list("/crash/").unwrap().len();
        assert!(
            stored == acked.len() || stored == acked.len() + 1,
            "{stored} stored, {} acked",
            acked.len()
        );
    }
}
