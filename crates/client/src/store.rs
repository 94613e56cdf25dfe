//! The node's durable store: the engine's records in one redb table, appended in order.
//!
//! redb gives transactions with fsync on commit (`Durability::Immediate`, its default) and a
//! file lock, so a second node on the same data directory fails to open it
//! ([`OpenError::Locked`]). The file is opened through [`hotline_db::open`]: created private,
//! with a `meta` table carrying the schema version; an unknown version is refused, never
//! reinterpreted.
//!
//! Group commit: [`Store::commit`] writes a whole batch — engine records and the audit entries
//! they imply — in one transaction, one fsync.
//!
//! The audit log ([`crate::audit`]) lives in the same file: `audit` (the hash chain), `heads`
//! (our signed heads) and `partner_heads` (the partner's signed link tests). So does the
//! operator's alarm book ([`crate::alarms`]): `alarm_book` (one row per entry, by id) and
//! `alarm_next_id`, written in the same transaction as the alarm's audit record. Adding those
//! tables did not change [`SCHEMA_VERSION`]: an older build ignores them, and an older file
//! gets them, empty, when opened.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hotline_db::{DbError, InTable, OpenError, Schema, Unversioned};
use hotline_proto::EndpointId;
use hotline_proto::crypto::{Digest, IdentityKey};
use hotline_proto::engine::Record;
use hotline_proto::envelope::{LinkTest, Signed};
use hotline_proto::types::Time;
use hotline_proto::wire::encode_value;
use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, TableHandle,
};
use serde::de::DeserializeOwned;

use crate::alarms::{AlarmBook, AlarmEntry, BookWrite};
use crate::audit::{AuditData, AuditEntry, AuditEvent, SignedHead, StoredEntry, events_of_hashed};
use crate::failpoint;

/// Every table of this store: a row key, and the postcard encoding of one of our types.
type Rows = TableDefinition<'static, u64, &'static [u8]>;

const RECORDS: Rows = TableDefinition::new("records");
const AUDIT: Rows = TableDefinition::new("audit");
const HEADS: Rows = TableDefinition::new("heads");
const PARTNER_HEADS: Rows = TableDefinition::new("partner_heads");
const ALARM_BOOK: Rows = TableDefinition::new("alarm_book");
/// One row, key 0: the alarm book's next id (ids are never reused, even after eviction).
const ALARM_NEXT_ID: TableDefinition<'static, u64, u64> = TableDefinition::new("alarm_next_id");

/// How often the audit head is signed while entries are being added.
pub const SIGN_HEAD_EVERY: Duration = Duration::from_secs(1);

/// One group commit.
#[derive(Debug, Default)]
pub struct Batch {
    /// Engine records, in order.
    pub records: Vec<Record>,
    /// The chain hash of the envelope each record holds, as the engine computed it, by
    /// position in `records` (the audit entry reuses it); a record without one here is hashed.
    pub envelope_hashes: Vec<Option<Digest>>,
    /// The key of each record, by position in `records`, when the caller numbers them (the
    /// node's store thread numbers them in the engine's order and may commit some ahead);
    /// a record without one here takes the key after the highest so far.
    pub keys: Vec<u64>,
    /// Audit events that are not records (link changes, alarms).
    pub events: Vec<AuditEvent>,
    /// Partner link tests carrying new audit heads.
    pub partner_heads: Vec<Signed<LinkTest>>,
    /// Alarm-book changes, in order (the alarms' audit records are in `events`).
    pub alarm_book: Vec<BookWrite>,
}

/// The schema this build writes and reads. 2: announcements carry incarnations and the
/// `Incarnation` record exists.
pub const SCHEMA_VERSION: u64 = 2;

/// The store's file name inside the data directory.
pub const FILE_NAME: &str = "node.redb";

const SCHEMA: Schema = Schema {
    owner: "node",
    version: SCHEMA_VERSION,
    // A node's data directory holds only its own files, so a versionless `node.redb` is ours;
    // refusing it would strand a data directory that opens today.
    unversioned: Unversioned::Adopt,
};

/// Why the store failed. All are the environment's fault (another node, an old file, the disk).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store did not open: another node has it, or it has another schema version.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// A redb step failed (I/O, full disk, a damaged file).
    #[error(transparent)]
    Db(#[from] DbError),
    /// A row does not decode as what its table holds.
    #[error("store table {table}, row {key} does not decode: {error}")]
    Decode {
        /// The table.
        table: String,
        /// The row key.
        key: u64,
        /// postcard's error.
        error: postcard::Error,
    },
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
        let db = hotline_db::open(&dir.join(FILE_NAME), SCHEMA, |txn| {
            txn.open_table(RECORDS).in_table(RECORDS)?;
            txn.open_table(AUDIT).in_table(AUDIT)?;
            txn.open_table(HEADS).in_table(HEADS)?;
            txn.open_table(PARTNER_HEADS).in_table(PARTNER_HEADS)?;
            txn.open_table(ALARM_BOOK).in_table(ALARM_BOOK)?;
            txn.open_table(ALARM_NEXT_ID).in_table(ALARM_NEXT_ID)?;
            Ok(())
        })?;
        let txn = db.begin_read().map_err(DbError::from)?;
        let (audit_len, audit_head) = match last_row::<StoredEntry>(&txn, AUDIT)? {
            Some((key, stored)) => (key + 1, stored.hash),
            None => (0, Digest::default()),
        };
        let partner_heads = last_key(&txn, PARTNER_HEADS)?.map_or(0, |k| k + 1);
        let signed_len = last_key(&txn, HEADS)?.unwrap_or(0);
        let mut next_key = last_key(&txn, RECORDS)?.map_or(0, |k| k + 1);
        let records: Vec<Record> = read_rows(&txn, RECORDS)?;
        drop(txn);
        if (records.len() as u64) < next_key {
            // The node commits a flash message's records ahead of a routine batch handed over
            // before them, under their own keys: a crash between the two leaves gaps. Close
            // them, so that a record's key is its position again (the inbox index relies on it).
            let txn = db.begin_write().map_err(DbError::from)?;
            txn.delete_table(RECORDS).in_table(RECORDS)?;
            {
                let mut table = txn.open_table(RECORDS).in_table(RECORDS)?;
                for (key, r) in (0u64..).zip(&records) {
                    table
                        .insert(key, encode_value(r).as_slice())
                        .in_table(RECORDS)?;
                }
            }
            txn.commit().map_err(DbError::from)?;
            next_key = records.len() as u64;
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
        let txn = self.db.begin_write().map_err(DbError::from)?;
        let mut key = self.next_key;
        let (mut len, mut head) = (self.audit_len, self.audit_head);
        let mut partner_key = self.partner_heads;
        {
            let mut table = txn.open_table(RECORDS).in_table(RECORDS)?;
            let mut audit = txn.open_table(AUDIT).in_table(AUDIT)?;
            let mut append_event = |event: AuditEvent| -> Result<(), DbError> {
                let entry = AuditEntry {
                    index: len,
                    at: now,
                    prev: head,
                    event,
                };
                let hash = entry.hash();
                let bytes = encode_value(&StoredEntry { entry, hash });
                audit.insert(len, bytes.as_slice()).in_table(AUDIT)?;
                len += 1;
                head = hash;
                Ok(())
            };
            for (i, r) in batch.records.iter().enumerate() {
                let k = batch.keys.get(i).copied().unwrap_or(key);
                table
                    .insert(k, encode_value(r).as_slice())
                    .in_table(RECORDS)?;
                key = key.max(k + 1);
                let hash = batch.envelope_hashes.get(i).copied().flatten();
                for event in events_of_hashed(r, hash) {
                    append_event(event)?;
                }
            }
            for event in &batch.events {
                append_event(event.clone())?;
            }
            let mut partner = txn.open_table(PARTNER_HEADS).in_table(PARTNER_HEADS)?;
            for t in &batch.partner_heads {
                append_event(AuditEvent::PartnerHead {
                    len: t.body.audit_len,
                    head: t.body.audit_head.to_hex(),
                })?;
                partner
                    .insert(partner_key, encode_value(t).as_slice())
                    .in_table(PARTNER_HEADS)?;
                partner_key += 1;
            }
            write_alarm_book(&txn, &batch.alarm_book)?;
            let due = self
                .signed_at
                .is_none_or(|t| t.elapsed() >= SIGN_HEAD_EVERY);
            if let Some((signer, endpoint)) = &self.signer {
                if len > self.signed_len && due {
                    let signed = SignedHead::sign(signer, endpoint, len, head, now);
                    txn.open_table(HEADS)
                        .in_table(HEADS)?
                        .insert(len, encode_value(&signed).as_slice())
                        .in_table(HEADS)?;
                    self.signed_len = len;
                    self.signed_at = Some(Instant::now());
                }
            }
        }
        failpoint::hit(failpoint::MID_GROUP_COMMIT);
        txn.commit().map_err(DbError::from)?;
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
        let txn = db.begin_read().map_err(DbError::from)?;
        Ok(AuditData {
            entries: read_rows(&txn, AUDIT)?,
            heads: read_rows(&txn, HEADS)?,
            partner_heads: read_rows(&txn, PARTNER_HEADS)?,
        })
    }

    /// The record stored at `key`, if any; a reader beside the store thread (the inbox reads
    /// delivered messages back this way instead of keeping them in memory).
    pub fn read_record(db: &Database, key: u64) -> Result<Option<Record>, StoreError> {
        let txn = db.begin_read().map_err(DbError::from)?;
        let rows = txn.open_table(RECORDS).in_table(RECORDS)?;
        let Some(v) = rows.get(key).in_table(RECORDS)? else {
            return Ok(None);
        };
        decode(RECORDS, key, v.value()).map(Some)
    }

    /// Up to `max` records from key `from` up to `to` (inclusive), in order, with their keys,
    /// read in one transaction.
    pub fn read_records(
        db: &Database,
        from: u64,
        to: u64,
        max: usize,
    ) -> Result<Vec<(u64, Record)>, StoreError> {
        let txn = db.begin_read().map_err(DbError::from)?;
        let rows = txn.open_table(RECORDS).in_table(RECORDS)?;
        let rows = rows.range(from..=to).in_table(RECORDS)?;
        rows.take(max)
            .map(|row| {
                let (k, v) = row.in_table(RECORDS)?;
                Ok((k.value(), decode(RECORDS, k.value(), v.value())?))
            })
            .collect()
    }

    /// The stored alarm book: its entries, and the next id to hand out.
    pub fn read_alarm_book(&self) -> Result<AlarmBook, StoreError> {
        let txn = self.db.begin_read().map_err(DbError::from)?;
        let entries: Vec<AlarmEntry> = read_rows(&txn, ALARM_BOOK)?;
        let next_id = txn
            .open_table(ALARM_NEXT_ID)
            .in_table(ALARM_NEXT_ID)?
            .get(0)
            .in_table(ALARM_NEXT_ID)?
            .map_or(1, |v| v.value());
        Ok(AlarmBook::restore(entries, next_id))
    }

    /// Number of records stored (the next record's key: keys have no gaps once opened).
    pub fn len(&self) -> u64 {
        self.next_key
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.next_key == 0
    }
}

/// Applies alarm-book changes inside the commit's transaction.
fn write_alarm_book(txn: &redb::WriteTransaction, writes: &[BookWrite]) -> Result<(), DbError> {
    if writes.is_empty() {
        return Ok(());
    }
    let mut book = txn.open_table(ALARM_BOOK).in_table(ALARM_BOOK)?;
    let mut next = txn.open_table(ALARM_NEXT_ID).in_table(ALARM_NEXT_ID)?;
    for w in writes {
        match w {
            BookWrite::Put { entry, next_id } => {
                book.insert(entry.id, encode_value(entry).as_slice())
                    .in_table(ALARM_BOOK)?;
                next.insert(0, *next_id).in_table(ALARM_NEXT_ID)?;
            }
            BookWrite::Remove(id) => {
                book.remove(*id).in_table(ALARM_BOOK)?;
            }
        }
    }
    Ok(())
}

/// Every row of `table`, decoded, in key order.
fn read_rows<T: DeserializeOwned>(
    txn: &ReadTransaction,
    table: Rows,
) -> Result<Vec<T>, StoreError> {
    let rows = txn.open_table(table).in_table(table)?;
    let rows = rows.iter().in_table(table)?;
    rows.map(|row| {
        let (k, v) = row.in_table(table)?;
        decode(table, k.value(), v.value())
    })
    .collect()
}

/// The last row of `table`, decoded.
fn last_row<T: DeserializeOwned>(
    txn: &ReadTransaction,
    table: Rows,
) -> Result<Option<(u64, T)>, StoreError> {
    let rows = txn.open_table(table).in_table(table)?;
    let Some((k, v)) = rows.last().in_table(table)? else {
        return Ok(None);
    };
    Ok(Some((k.value(), decode(table, k.value(), v.value())?)))
}

/// The last key of `table`.
fn last_key(txn: &ReadTransaction, table: Rows) -> Result<Option<u64>, DbError> {
    let rows = txn.open_table(table).in_table(table)?;
    Ok(rows.last().in_table(table)?.map(|(k, _)| k.value()))
}

fn decode<T: DeserializeOwned>(table: Rows, key: u64, bytes: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|error| StoreError::Decode {
        table: table.name().to_owned(),
        key,
        error,
    })
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
    fn records_read_back_by_key_and_by_range() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(dir.path()).unwrap();
        store.append(&[rec(1), rec(2), rec(3), rec(4)]).unwrap();
        let db = store.database();
        assert_eq!(Store::read_record(&db, 2).unwrap(), Some(rec(3)));
        assert_eq!(Store::read_record(&db, 4).unwrap(), None);
        let keys = |v: Vec<(u64, Record)>| v.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(keys(Store::read_records(&db, 1, 3, 10).unwrap()), [1, 2, 3]);
        assert_eq!(keys(Store::read_records(&db, 1, 3, 2).unwrap()), [1, 2]);
        assert_eq!(keys(Store::read_records(&db, 3, 9, 10).unwrap()), [3]);
        assert_eq!(Store::read_records(&db, 1, 3, 10).unwrap()[0].1, rec(2));
    }

    #[test]
    fn records_survive_reopen_in_order_and_second_open_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut store, records) = Store::open(dir.path()).unwrap();
            assert!(records.is_empty());
            store.append(&[rec(1), rec(2)]).unwrap();
            store.append(&[rec(3)]).unwrap();
            let err = Store::open(dir.path()).unwrap_err();
            assert!(
                matches!(err, StoreError::Open(OpenError::Locked { .. })),
                "{err}"
            );
            assert!(err.to_string().contains("already running"), "{err}");
        }
        let (store, records) = Store::open(dir.path()).unwrap();
        assert_eq!(records, vec![rec(1), rec(2), rec(3)]);
        assert_eq!(store.len(), 3);
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
    fn audit_report_lists_every_entry_and_head_then_the_verdict() {
        let dir = tempfile::tempdir().unwrap();
        let (public, store) = audited_store(dir.path());
        let partner = IdentityKey::from_seed(&[6; 32]).public();
        let db = store.database();
        let types = |values: &[serde_json::Value]| -> Vec<String> {
            values.iter().map(|v| v["type"].to_string()).collect()
        };

        let verify_only = crate::audit::report(&db, &public, &partner, false).unwrap();
        assert_eq!(types(&verify_only), [r#""verify""#]);
        assert_eq!(verify_only[0]["report"]["entries"], 6);
        assert!(verify_only[0]["report"]["first_bad"].is_null());

        let export = crate::audit::report(&db, &public, &partner, true).unwrap();
        let t = types(&export);
        assert_eq!(t.iter().filter(|t| *t == r#""entry""#).count(), 6);
        assert_eq!(t.iter().filter(|t| *t == r#""signed_head""#).count(), 3);
        assert_eq!(t.last().map(String::as_str), Some(r#""verify""#));
        assert_eq!(export[2]["index"], 2);

        rewrite(&db, 3, false);
        let after = crate::audit::report(&db, &public, &partner, false).unwrap();
        assert_eq!(
            after[0]["report"]["first_bad"],
            "record 3: content altered (hash mismatch)"
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
