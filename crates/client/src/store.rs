//! The node's durable store: the engine's records in one redb table, appended in order.
//!
//! redb gives transactions with fsync on commit (`Durability::Immediate`, its default) and a
//! file lock, so a second node on the same data directory fails to open it. A `meta` table
//! carries the schema version; an unknown version is refused, never reinterpreted.
//!
//! Group commit: [`Store::append`] writes a whole batch in one transaction, one fsync.

use std::path::{Path, PathBuf};

use hotline_proto::engine::Record;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

const RECORDS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("records");
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");

/// The schema this build writes and reads.
pub const SCHEMA_VERSION: u64 = 1;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process has the store open.
    #[error("another node is already running on data dir {}", .0.display())]
    Locked(PathBuf),
    /// The store was written by a different schema version.
    #[error("store {} has schema version {found}; this build reads version {SCHEMA_VERSION}", path.display())]
    UnknownSchema {
        /// Store path.
        path: PathBuf,
        /// Version found.
        found: u64,
    },
    /// A record does not decode.
    #[error("record {key} in the store does not decode: {detail}")]
    Corrupt {
        /// Row key.
        key: u64,
        /// Decoder message.
        detail: String,
    },
    /// The database reported an error (I/O, full disk, …).
    #[error("store: {0}")]
    Db(String),
}

fn db_err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Db(e.into().to_string())
}

/// An open store.
#[derive(Debug)]
pub struct Store {
    db: Database,
    next_key: u64,
}

impl Store {
    /// Opens (or creates) `dir/node.redb` and returns every record in order.
    pub fn open(dir: &Path) -> Result<(Self, Vec<Record>), StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Db(format!("creating {}: {e}", dir.display())))?;
        let path = dir.join("node.redb");
        let db = match Database::create(&path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(StoreError::Locked(dir.to_owned()));
            }
            Err(e) => return Err(db_err(e)),
        };
        {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut meta = txn.open_table(META).map_err(db_err)?;
                let found = meta
                    .get("schema_version")
                    .map_err(db_err)?
                    .map(|v| v.value());
                match found {
                    None => {
                        meta.insert("schema_version", SCHEMA_VERSION)
                            .map_err(db_err)?;
                    }
                    Some(SCHEMA_VERSION) => {}
                    Some(found) => return Err(StoreError::UnknownSchema { path, found }),
                }
                txn.open_table(RECORDS).map_err(db_err)?;
            }
            txn.commit().map_err(db_err)?;
        }
        let mut records = Vec::new();
        let mut next_key = 0;
        {
            let txn = db.begin_read().map_err(db_err)?;
            let table = txn.open_table(RECORDS).map_err(db_err)?;
            for row in table.iter().map_err(db_err)? {
                let (k, v) = row.map_err(db_err)?;
                let key = k.value();
                let record = postcard::from_bytes(v.value()).map_err(|e| StoreError::Corrupt {
                    key,
                    detail: e.to_string(),
                })?;
                records.push(record);
                next_key = key + 1;
            }
        }
        Ok((Self { db, next_key }, records))
    }

    /// Appends records in one transaction (one fsync).
    pub fn append(&mut self, records: &[Record]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let mut key = self.next_key;
        {
            let mut table = txn.open_table(RECORDS).map_err(db_err)?;
            for r in records {
                let bytes = postcard::to_allocvec(r)
                    .map_err(|e| StoreError::Db(format!("encoding record: {e}")))?;
                table.insert(key, bytes.as_slice()).map_err(db_err)?;
                key += 1;
            }
        }
        txn.commit().map_err(db_err)?;
        self.next_key = key;
        Ok(())
    }

    /// Number of records stored.
    pub fn len(&self) -> u64 {
        self.next_key
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.next_key == 0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use hotline_proto::Precedence;
    use hotline_proto::types::Time;

    fn rec(i: u64) -> Record {
        Record::PartnerEscalated {
            id: format!("us:main:flash:{i}").parse().unwrap(),
            level: Precedence::Flash,
        }
    }

    #[test]
    fn records_survive_reopen_in_order_and_second_open_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut store, records) = Store::open(dir.path()).unwrap();
            assert!(records.is_empty());
            store.append(&[rec(1), rec(2)]).unwrap();
            store.append(&[rec(3)]).unwrap();
            assert!(matches!(
                Store::open(dir.path()),
                Err(StoreError::Locked(_))
            ));
        }
        let (store, records) = Store::open(dir.path()).unwrap();
        assert_eq!(records, vec![rec(1), rec(2), rec(3)]);
        assert_eq!(store.len(), 3);
        let _ = Time(0);
    }

    #[test]
    fn unknown_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Database::create(dir.path().join("node.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert("schema_version", 99)
                .unwrap();
            txn.commit().unwrap();
        }
        let err = Store::open(dir.path()).unwrap_err();
        assert!(
            matches!(err, StoreError::UnknownSchema { found: 99, .. }),
            "{err}"
        );
    }
}
