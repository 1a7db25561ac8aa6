//! The store's error type.

use std::path::PathBuf;

/// An error from the state store. Messages name the database file or the key involved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file could not be opened or configured.
    #[error("cannot open database {path}: {source}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// The SQLite error.
        source: rusqlite::Error,
    },

    /// The database was written by a newer corrald with a schema this code does not know.
    #[error("{path}: database schema version {found} is newer than this corrald ({known}): upgrade corrald")]
    SchemaTooNew {
        /// The database file.
        path: PathBuf,
        /// The schema version found in the file.
        found: i64,
        /// The newest schema version this code knows.
        known: i64,
    },

    /// A schema migration step failed (the step was rolled back).
    #[error("cannot migrate database {path} to schema version {version}: {source}")]
    Migrate {
        /// The database file.
        path: PathBuf,
        /// The version the failed step would have produced.
        version: i64,
        /// The SQLite error.
        source: rusqlite::Error,
    },

    /// Reading from the database failed.
    #[error("cannot read {what} from database {path}: {source}")]
    Read {
        /// The key, prefix or item being read.
        what: String,
        /// The database file.
        path: PathBuf,
        /// The SQLite error.
        source: rusqlite::Error,
    },

    /// Writing to the database failed (the transaction was rolled back).
    #[error("cannot write {what} to database {path}: {source}")]
    Write {
        /// The key, prefix or item being written.
        what: String,
        /// The database file.
        path: PathBuf,
        /// The SQLite error.
        source: rusqlite::Error,
    },

    /// A key or prefix is not acceptable (empty key, empty prefix for a prefix delete, ...).
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey {
        /// The offending key.
        key: String,
        /// Why it was refused.
        reason: &'static str,
    },

    /// A stored key is not valid UTF-8 (the database was modified behind corrald's back).
    #[error("corrupt key {key} in database {path}: not valid utf-8")]
    CorruptKey {
        /// The key, lossily decoded.
        key: String,
        /// The database file.
        path: PathBuf,
    },

    /// A stored value could not be decoded as the expected JSON type.
    #[error("corrupt value at {key}: {source}")]
    Corrupt {
        /// The key holding the value.
        key: String,
        /// The JSON error.
        source: serde_json::Error,
    },

    /// A value could not be encoded as JSON.
    #[error("cannot encode value for {key}: {source}")]
    Encode {
        /// The key the value was meant for.
        key: String,
        /// The JSON error.
        source: serde_json::Error,
    },
}
