//! The node's durable store: the engine's records in one redb table, appended in order.
//!
//! redb gives transactions with fsync on commit (`Durability::Immediate`, its default) and a
//! file lock, so a second node on the same data directory fails to open it. A `meta` table
//! carries the schema version; an unknown version is refused, never reinterpreted.
//!
//! Group commit: [`Store::commit`] writes a whole batch — engine records and the audit entries
//! they imply — in one transaction, one fsync.
//!
//! The audit log ([`crate::audit`]) lives in the same file: `audit` (the hash chain), `heads`
//! (our signed heads) and `partner_heads` (the partner's signed link tests).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hotline_proto::EndpointId;
use hotline_proto::crypto::{Digest, IdentityKey};
use hotline_proto::engine::Record;
use hotline_proto::envelope::{LinkTest, Signed};
use hotline_proto::types::Time;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::audit::{AuditData, AuditEntry, AuditEvent, SignedHead, StoredEntry, events_of};
use crate::failpoint;

/// Page cache of the redb store.
const STORE_CACHE_BYTES: usize = 32 * 1024 * 1024;

const RECORDS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("records");
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
const AUDIT: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("audit");
const HEADS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("heads");
const PARTNER_HEADS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("partner_heads");

/// How often the audit head is signed while entries are being added.
pub const SIGN_HEAD_EVERY: Duration = Duration::from_secs(1);

/// One group commit.
#[derive(Debug, Default)]
pub struct Batch {
    /// Engine records, in order.
    pub records: Vec<Record>,
    /// Audit events that are not records (link changes, alarms).
    pub events: Vec<AuditEvent>,
    /// Partner link tests carrying new audit heads.
    pub partner_heads: Vec<Signed<LinkTest>>,
}

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
pub struct Store {
    db: Arc<Database>,
    next_key: u64,
    audit_len: u64,
    audit_head: Digest,
    partner_heads: u64,
    signer: Option<(IdentityKey, EndpointId)>,
    signed_len: u64,
    signed_at: Option<Instant>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("records", &self.next_key)
            .field("audit_len", &self.audit_len)
            .finish()
    }
}

impl Store {
    /// Opens (or creates) `dir/node.redb` and returns every record in order.
    pub fn open(dir: &Path) -> Result<(Self, Vec<Record>), StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Db(format!("creating {}: {e}", dir.display())))?;
        let path = dir.join("node.redb");
        // redb's default page cache (1 GiB) would let a long-running process grow towards it;
        // appends and the start-up scan need far less.
        let db = match Database::builder()
            .set_cache_size(STORE_CACHE_BYTES)
            .create(&path)
        {
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
                txn.open_table(AUDIT).map_err(db_err)?;
                txn.open_table(HEADS).map_err(db_err)?;
                txn.open_table(PARTNER_HEADS).map_err(db_err)?;
            }
            txn.commit().map_err(db_err)?;
        }
        let mut records = Vec::new();
        let mut next_key = 0;
        let (mut audit_len, mut audit_head, mut partner_heads, mut signed_len) =
            (0, Digest::default(), 0, 0);
        {
            let txn = db.begin_read().map_err(db_err)?;
            let audit = txn.open_table(AUDIT).map_err(db_err)?;
            if let Some(row) = audit.last().map_err(db_err)? {
                let (k, v) = row;
                let stored: StoredEntry =
                    postcard::from_bytes(v.value()).map_err(|e| StoreError::Corrupt {
                        key: k.value(),
                        detail: format!("audit entry: {e}"),
                    })?;
                audit_len = k.value() + 1;
                audit_head = stored.hash;
            }
            if let Some((k, _)) = txn
                .open_table(PARTNER_HEADS)
                .map_err(db_err)?
                .last()
                .map_err(db_err)?
            {
                partner_heads = k.value() + 1;
            }
            if let Some((k, _)) = txn
                .open_table(HEADS)
                .map_err(db_err)?
                .last()
                .map_err(db_err)?
            {
                signed_len = k.value();
            }
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
        let store = Self {
            db: Arc::new(db),
            next_key,
            audit_len,
            audit_head,
            partner_heads,
            signer: None,
            signed_len,
            signed_at: None,
        };
        Ok((store, records))
    }

    /// Signs audit heads with this key from now on.
    pub fn set_signer(&mut self, key: IdentityKey, endpoint: EndpointId) {
        self.signer = Some((key, endpoint));
    }

    /// The audit log's length and head hash.
    pub fn audit_head(&self) -> (u64, Digest) {
        (self.audit_len, self.audit_head)
    }

    /// A handle for concurrent readers (audit verify/export while the node runs).
    pub fn database(&self) -> Arc<Database> {
        Arc::clone(&self.db)
    }

    /// Appends records only, in one transaction (one fsync).
    pub fn append(&mut self, records: &[Record]) -> Result<(), StoreError> {
        let batch = Batch {
            records: records.to_vec(),
            ..Batch::default()
        };
        self.commit(&batch, Time(0)).map(|_| ())
    }

    /// Commits a batch and its audit entries in one transaction (one fsync); signs the audit
    /// head when [`SIGN_HEAD_EVERY`] has passed. Returns the new audit head.
    pub fn commit(&mut self, batch: &Batch, now: Time) -> Result<(u64, Digest), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let mut key = self.next_key;
        let (mut len, mut head) = (self.audit_len, self.audit_head);
        let mut partner_key = self.partner_heads;
        {
            let mut table = txn.open_table(RECORDS).map_err(db_err)?;
            let mut audit = txn.open_table(AUDIT).map_err(db_err)?;
            let mut append_event = |event: AuditEvent| -> Result<(), StoreError> {
                let entry = AuditEntry {
                    index: len,
                    at: now,
                    prev: head,
                    event,
                };
                let hash = entry.hash();
                let bytes = postcard::to_allocvec(&StoredEntry { entry, hash })
                    .map_err(|e| StoreError::Db(format!("encoding audit entry: {e}")))?;
                audit.insert(len, bytes.as_slice()).map_err(db_err)?;
                len += 1;
                head = hash;
                Ok(())
            };
            for r in &batch.records {
                let bytes = postcard::to_allocvec(r)
                    .map_err(|e| StoreError::Db(format!("encoding record: {e}")))?;
                table.insert(key, bytes.as_slice()).map_err(db_err)?;
                key += 1;
                for event in events_of(r) {
                    append_event(event)?;
                }
            }
            for event in &batch.events {
                append_event(event.clone())?;
            }
            let mut partner = txn.open_table(PARTNER_HEADS).map_err(db_err)?;
            for t in &batch.partner_heads {
                append_event(AuditEvent::PartnerHead {
                    len: t.body.audit_len,
                    head: t.body.audit_head.to_hex(),
                })?;
                let bytes = postcard::to_allocvec(t)
                    .map_err(|e| StoreError::Db(format!("encoding head: {e}")))?;
                partner
                    .insert(partner_key, bytes.as_slice())
                    .map_err(db_err)?;
                partner_key += 1;
            }
            let due = self
                .signed_at
                .is_none_or(|t| t.elapsed() >= SIGN_HEAD_EVERY);
            if let Some((signer, endpoint)) = &self.signer {
                if len > self.signed_len && due {
                    let signed = SignedHead::sign(signer, endpoint, len, head, now);
                    let bytes = postcard::to_allocvec(&signed)
                        .map_err(|e| StoreError::Db(format!("encoding head: {e}")))?;
                    txn.open_table(HEADS)
                        .map_err(db_err)?
                        .insert(len, bytes.as_slice())
                        .map_err(db_err)?;
                    self.signed_len = len;
                    self.signed_at = Some(Instant::now());
                }
            }
        }
        failpoint::hit(failpoint::MID_GROUP_COMMIT);
        txn.commit().map_err(db_err)?;
        self.next_key = key;
        self.audit_len = len;
        self.audit_head = head;
        self.partner_heads = partner_key;
        Ok((len, head))
    }

    /// Signs the current head now if it is not signed yet (e.g. before shutdown or in tests).
    pub fn sign_head_now(&mut self, now: Time) -> Result<(), StoreError> {
        self.signed_at = None;
        self.commit(&Batch::default(), now).map(|_| ())
    }

    /// Reads the whole audit log, our signed heads and the partner's heads.
    pub fn read_audit(db: &Database) -> Result<AuditData, StoreError> {
        let txn = db.begin_read().map_err(db_err)?;
        let mut data = AuditData {
            entries: Vec::new(),
            heads: Vec::new(),
            partner_heads: Vec::new(),
        };
        for row in txn
            .open_table(AUDIT)
            .map_err(db_err)?
            .iter()
            .map_err(db_err)?
        {
            let (k, v) = row.map_err(db_err)?;
            data.entries
                .push(
                    postcard::from_bytes(v.value()).map_err(|e| StoreError::Corrupt {
                        key: k.value(),
                        detail: format!("audit entry: {e}"),
                    })?,
                );
        }
        for row in txn
            .open_table(HEADS)
            .map_err(db_err)?
            .iter()
            .map_err(db_err)?
        {
            let (k, v) = row.map_err(db_err)?;
            data.heads.push(
                postcard::from_bytes(v.value()).map_err(|e| StoreError::Corrupt {
                    key: k.value(),
                    detail: format!("signed head: {e}"),
                })?,
            );
        }
        for row in txn
            .open_table(PARTNER_HEADS)
            .map_err(db_err)?
            .iter()
            .map_err(db_err)?
        {
            let (k, v) = row.map_err(db_err)?;
            data.partner_heads
                .push(
                    postcard::from_bytes(v.value()).map_err(|e| StoreError::Corrupt {
                        key: k.value(),
                        detail: format!("partner head: {e}"),
                    })?,
                );
        }
        Ok(data)
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

    fn event(i: u64) -> AuditEvent {
        AuditEvent::LinkState {
            state: format!("state {i}"),
        }
    }

    /// Six entries with signed heads at lengths 2, 4 and 6.
    fn audited_store(dir: &Path) -> (hotline_proto::crypto::IdentityPublicKey, Store) {
        let (mut store, _) = Store::open(dir).unwrap();
        let key = IdentityKey::from_seed(&[5; 32]);
        let public = key.public();
        store.set_signer(key, EndpointId::new("us").unwrap());
        for i in 0..3 {
            let batch = Batch {
                events: vec![event(2 * i), event(2 * i + 1)],
                ..Batch::default()
            };
            store.commit(&batch, Time(i)).unwrap();
            store.sign_head_now(Time(i)).unwrap();
        }
        (public, store)
    }

    fn rewrite(db: &Database, from: u64, consistent: bool) {
        let mut data = Store::read_audit(db).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut audit = txn.open_table(AUDIT).unwrap();
            let mut prev = data.entries[from as usize].entry.prev;
            for stored in data.entries.iter_mut().skip(from as usize) {
                stored.entry.event = AuditEvent::Alarm {
                    kind: "forged".into(),
                    detail: "rewritten".into(),
                };
                if consistent {
                    stored.entry.prev = prev;
                    stored.hash = stored.entry.hash();
                    prev = stored.hash;
                }
                audit
                    .insert(
                        stored.entry.index,
                        postcard::to_allocvec(&*stored).unwrap().as_slice(),
                    )
                    .unwrap();
                if !consistent {
                    break;
                }
            }
        }
        txn.commit().unwrap();
    }

    #[test]
    fn audit_log_verifies_and_names_an_edited_record() {
        let dir = tempfile::tempdir().unwrap();
        let (public, store) = audited_store(dir.path());
        let partner = IdentityKey::from_seed(&[6; 32]).public();
        let data = Store::read_audit(&store.database()).unwrap();
        assert_eq!(data.entries.len(), 6);
        assert_eq!(
            data.heads.iter().map(|h| h.len).collect::<Vec<_>>(),
            vec![2, 4, 6]
        );
        assert_eq!(
            crate::audit::verify(&data, &public, &partner).first_bad,
            None
        );
        rewrite(&store.database(), 3, false);
        let bad = crate::audit::verify(
            &Store::read_audit(&store.database()).unwrap(),
            &public,
            &partner,
        );
        assert_eq!(
            bad.first_bad.as_deref(),
            Some("record 3: content altered (hash mismatch)")
        );
    }

    #[test]
    fn consistent_rewrite_is_caught_by_the_first_signed_head_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let (public, store) = audited_store(dir.path());
        let partner = IdentityKey::from_seed(&[6; 32]).public();
        rewrite(&store.database(), 3, true);
        let report = crate::audit::verify(
            &Store::read_audit(&store.database()).unwrap(),
            &public,
            &partner,
        );
        let bad = report.first_bad.unwrap();
        assert!(bad.starts_with("signed head at length 4 "), "{bad}");
    }

    #[test]
    fn audit_head_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let head = {
            let (_, store) = audited_store(dir.path());
            store.audit_head()
        };
        let (store, _) = Store::open(dir.path()).unwrap();
        assert_eq!(store.audit_head(), head);
        assert_eq!(head.0, 6);
    }
}
