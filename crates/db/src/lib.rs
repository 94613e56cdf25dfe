//! Opening Hotline's redb stores: the node's `node.redb` and the relay's `relay.redb` both open
//! through [`open`], so they agree on how a store file is created, locked, cached and versioned.
//!
//! [`open`] creates the store's directory (mode 0700) and file (mode 0600) when they are missing,
//! opens the file with a page cache of [`CACHE_BYTES`], refuses a file that another process has
//! open ([`OpenError::Locked`]), and in one write transaction checks the schema version in the
//! `meta` table (`&str → u64`, key `schema_version`), writing it into a new file, and lets the
//! caller create its own tables.
//!
//! It will not define, read or write a store's own tables, migrate a file between schema versions,
//! change the mode of a directory or file that already exists, or lower redb's durability: every
//! commit still fsyncs (`Durability::Immediate`, redb's default). Callers that own their data
//! directory make an existing one private with [`tighten`], once the store is open (so a second
//! process on the same directory, refused as [`OpenError::Locked`], has changed nothing).
//!
//! Types:
//! - [`Schema`]: the version a store reads and writes, and what to do with a file whose tables
//!   carry no version ([`Unversioned`]);
//! - [`OpenError`]: why [`open`] failed;
//! - [`DbError`]: a failed redb step, naming the step and the table; [`InTable`] attaches the
//!   table to redb's own errors.
//!
//! Invariant: a [`redb::Database`] returned by [`open`] holds exactly [`Schema::version`] in its
//! `meta` table and every table the caller created; a file with another version, or one refused
//! as [`Unversioned::Refuse`], is left exactly as it was found.
//!
//! ```no_run
//! use hotline_db::{InTable, Schema, Unversioned};
//! use redb::TableDefinition;
//!
//! const RECORDS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("records");
//! let schema = Schema { owner: "relay", version: 1, unversioned: Unversioned::Refuse };
//! let db = hotline_db::open("data/store.redb".as_ref(), schema, |txn| {
//!     txn.open_table(RECORDS).in_table(RECORDS)?;
//!     Ok(())
//! })?;
//! # Ok::<(), hotline_db::OpenError>(())
//! ```

use std::fs::{DirBuilder, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use redb::backends::FileBackend;
use redb::{Builder, Database, ReadableTable, TableDefinition, TableHandle, WriteTransaction};

/// Page cache of every store. redb's default (1 GiB) would let a long-running process grow
/// towards it; appends and the start-up scan need far less.
pub const CACHE_BYTES: usize = 32 * 1024 * 1024;

/// Mode of a store directory that [`open`] creates.
pub const DIR_MODE: u32 = 0o700;

/// Mode of a store file that [`open`] creates.
pub const FILE_MODE: u32 = 0o600;

const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
const SCHEMA_VERSION_KEY: &str = "schema_version";

/// The schema a store reads and writes, and who writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schema {
    /// The program that writes the store, as errors name it (`"node"`, `"relay"`).
    pub owner: &'static str,
    /// The version this build writes into a new file and accepts in an existing one.
    pub version: u64,
    /// What to do with a file that has tables but no schema version.
    pub unversioned: Unversioned,
}

/// What [`open`] does with a file that has tables but no schema version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unversioned {
    /// Write [`Schema::version`] into it and use it.
    Adopt,
    /// Refuse it ([`OpenError::Unversioned`]): this store did not write it.
    Refuse,
}

/// Why [`open`] failed. All are the environment's fault: another process, an old or foreign
/// file, the disk.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Another process has the store file open.
    #[error("another {owner} is already running on this data dir: {} is locked", path.display())]
    Locked {
        /// [`Schema::owner`].
        owner: &'static str,
        /// The store file.
        path: PathBuf,
    },
    /// The file was written with another schema version.
    #[error(
        "store {} has schema version {found}; this build reads version {expected}",
        path.display()
    )]
    Schema {
        /// The store file.
        path: PathBuf,
        /// The version in the file.
        found: u64,
        /// The version this build reads.
        expected: u64,
    },
    /// The file has tables but no schema version, and the store refuses such files.
    #[error(
        "store {} has no schema version; it was not written by a hotline {owner}",
        path.display()
    )]
    Unversioned {
        /// [`Schema::owner`].
        owner: &'static str,
        /// The store file.
        path: PathBuf,
    },
    /// The store's directory or file could not be created or opened.
    #[error("{}: {error}", path.display())]
    Io {
        /// The directory or file.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// redb could not open the file (damaged, an old format, I/O).
    #[error("opening store {}: {error}", path.display())]
    Database {
        /// The store file.
        path: PathBuf,
        /// redb's error.
        error: redb::DatabaseError,
    },
    /// Checking the schema version or creating the tables failed.
    #[error("preparing store {}: {error}", path.display())]
    Prepare {
        /// The store file.
        path: PathBuf,
        /// The failed step.
        error: DbError,
    },
}

impl From<redb::TransactionError> for DbError {
    fn from(error: redb::TransactionError) -> Self {
        Self::Transaction { error }
    }
}

/// A redb step that failed, and the table it was working on.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// A transaction could not be started.
    #[error("starting a store transaction: {error}")]
    Transaction {
        /// redb's error (in the message, not a `source()`, so it is printed once).
        error: redb::TransactionError,
    },
    /// A table could not be opened or created.
    #[error("opening store table {table}: {error}")]
    Table {
        /// The table's name.
        table: String,
        /// redb's error (boxed: it carries type names, and every store result holds this enum).
        error: Box<redb::TableError>,
    },
    /// Reading or writing a table failed.
    #[error("reading or writing store table {table}: {error}")]
    Storage {
        /// The table's name.
        table: String,
        /// redb's error.
        error: redb::StorageError,
    },
    /// The transaction could not be committed.
    #[error("committing a store transaction: {error}")]
    Commit {
        /// redb's error (in the message only, so it is printed once).
        error: redb::CommitError,
    },
}

impl From<redb::CommitError> for DbError {
    fn from(error: redb::CommitError) -> Self {
        Self::Commit { error }
    }
}

/// Names the table a redb table or storage error happened in, turning it into a [`DbError`].
pub trait InTable<T> {
    /// This result, its error tagged with `table`'s name.
    fn in_table(self, table: impl TableHandle) -> Result<T, DbError>;
}

impl<T> InTable<T> for Result<T, redb::TableError> {
    fn in_table(self, table: impl TableHandle) -> Result<T, DbError> {
        self.map_err(|error| DbError::Table {
            table: table.name().to_owned(),
            error: Box::new(error),
        })
    }
}

impl<T> InTable<T> for Result<T, redb::StorageError> {
    fn in_table(self, table: impl TableHandle) -> Result<T, DbError> {
        self.map_err(|error| DbError::Storage {
            table: table.name().to_owned(),
            error,
        })
    }
}

/// Opens (or creates) the store file at `path` and checks its schema version (see the module
/// docs); `create_tables` runs in the same write transaction, after the check, and should open
/// every table the store reads so that reading an empty store finds them.
pub fn open(
    path: &Path,
    schema: Schema,
    create_tables: impl FnOnce(&WriteTransaction) -> Result<(), DbError>,
) -> Result<Database, OpenError> {
    let file = create_private(path)?;
    let backend = FileBackend::new(file).map_err(|e| database_error(path, schema, e))?;
    let db = Builder::new()
        .set_cache_size(CACHE_BYTES)
        .create_with_backend(backend)
        .map_err(|e| database_error(path, schema, e))?;
    let prepare = |error| OpenError::Prepare {
        path: path.to_owned(),
        error,
    };
    let txn = db.begin_write().map_err(|e| prepare(e.into()))?;
    match check_version(&txn, schema).map_err(prepare)? {
        Version::Ours => {}
        Version::Other(found) => {
            return Err(OpenError::Schema {
                path: path.to_owned(),
                found,
                expected: schema.version,
            });
        }
        Version::Missing => {
            return Err(OpenError::Unversioned {
                owner: schema.owner,
                path: path.to_owned(),
            });
        }
    }
    create_tables(&txn).map_err(prepare)?;
    txn.commit().map_err(|e| prepare(e.into()))?;
    Ok(db)
}

/// Clears every permission bit of `path` outside `mode` (never adds one): a store file left 0644
/// becomes 0600 with `mode` [`FILE_MODE`], a data directory left 0755 becomes 0700 with
/// [`DIR_MODE`]. Returns the old mode (permission bits only) when it changed, `None` when
/// `path` was private enough already. Follows symbolic links.
pub fn tighten(path: &Path, mode: u32) -> std::io::Result<Option<u32>> {
    use std::os::unix::fs::PermissionsExt;
    let old = std::fs::metadata(path)?.permissions().mode() & 0o7777;
    let new = old & (mode | !0o777);
    if new == old {
        return Ok(None);
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(new))?;
    Ok(Some(old & 0o777))
}

/// Creates `path`'s directory and `path` itself, private, if they are missing; opens `path`.
fn create_private(path: &Path) -> Result<File, OpenError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |error| OpenError::Io { path, error }
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
            .map_err(io(dir))?;
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(path)
        .map_err(io(path))
}

fn database_error(path: &Path, schema: Schema, error: redb::DatabaseError) -> OpenError {
    match error {
        redb::DatabaseError::DatabaseAlreadyOpen => OpenError::Locked {
            owner: schema.owner,
            path: path.to_owned(),
        },
        error => OpenError::Database {
            path: path.to_owned(),
            error,
        },
    }
}

/// What the `meta` table says, after writing our version where the schema allows it.
enum Version {
    Ours,
    Other(u64),
    Missing,
}

fn check_version(txn: &WriteTransaction, schema: Schema) -> Result<Version, DbError> {
    let others = txn
        .list_tables()
        .in_table(META)?
        .filter(|t| t.name() != META.name())
        .count();
    let mut meta = txn.open_table(META).in_table(META)?;
    let found = meta
        .get(SCHEMA_VERSION_KEY)
        .in_table(META)?
        .map(|v| v.value());
    Ok(match found {
        Some(found) if found == schema.version => Version::Ours,
        Some(found) => Version::Other(found),
        None if others > 0 && schema.unversioned == Unversioned::Refuse => Version::Missing,
        None => {
            meta.insert(SCHEMA_VERSION_KEY, schema.version)
                .in_table(META)?;
            Version::Ours
        }
    })
}

#[cfg(test)]
mod tests;
