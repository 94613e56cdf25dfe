//! The index against a reference model: the whole lines the inbox used to keep in memory.

use hotline_proto::crypto::{Digest, IdentityKey, SessionId};
use hotline_proto::envelope::{Envelope, Header, Receipt, ReceiptKind, Signed};
use hotline_proto::{Channel, EndpointId, MessageId, Precedence, Seq};

use super::*;
use crate::store::Batch;

const T: Time = Time(1_700_000_000_000_000);

fn us() -> EndpointId {
    EndpointId::new("us").unwrap()
}

fn jp() -> EndpointId {
    EndpointId::new("jp").unwrap()
}

fn id(p: Precedence, seq: u64) -> MessageId {
    MessageId {
        sender: jp(),
        channel: Channel::default(),
        precedence: p,
        seq: Seq(seq),
    }
}

fn received(p: Precedence, seq: u64, transport: Precedence) -> Record {
    let id = id(p, seq);
    Record::Received {
        delivery: Delivery {
            id: id.clone(),
            to: us(),
            sent_at: Time(T.0 + seq),
            received_at: Time(T.0 + seq + 7),
            relay_transport: transport,
            body: format!("body {id}").into_bytes(),
        },
        envelope: Envelope {
            header: Header {
                sender: jp(),
                recipient: us(),
                channel: Channel::default(),
                precedence: p,
                seq: Seq(seq),
                after: [0; 4],
                epoch: 1,
                session: SessionId([5; 16]),
                prev: Digest::default(),
                sealed_len: 1,
            },
            sealed: vec![1],
        },
        head: None,
    }
}

fn ack(id: &MessageId, at: Time) -> Record {
    Record::OperatorAck {
        id: id.clone(),
        receipt: Signed::sign(
            Receipt {
                from: us(),
                to: jp(),
                channel: Channel::default(),
                precedence: id.precedence,
                kind: ReceiptKind::Acknowledged {
                    seq: id.seq,
                    hash: Digest::default(),
                },
                at,
            },
            &IdentityKey::from_seed(&[1; 32]),
        ),
    }
}

/// A record that is not about the inbox (it takes a row all the same).
fn other(n: u64) -> Record {
    Record::Incarnation {
        incarnation: n,
        peer: 0,
    }
}

/// The inbox as the old in-memory index showed it: whole lines, updated in place.
#[derive(Default)]
struct Model {
    lines: Vec<InboxEntry>,
}

impl Model {
    fn apply(&mut self, r: &Record) {
        let find = |lines: &mut Vec<InboxEntry>, id: &MessageId| {
            let id = id.to_string();
            lines.iter_mut().position(|l| l.id == id)
        };
        match r {
            Record::Received { delivery, .. } => self.lines.push(view::inbox_entry(delivery)),
            Record::OperatorAck { id, receipt } => {
                if let Some(i) = find(&mut self.lines, id) {
                    self.lines[i].acknowledged = Some(format_time(receipt.body.at));
                }
            }
            Record::PartnerEscalated { id, level } => {
                if let Some(i) = find(&mut self.lines, id) {
                    self.lines[i].escalated_to = Some(level.to_string());
                }
            }
            _ => {}
        }
    }
}

/// Records of every kind the index cares about, interleaved with others, over three lanes.
fn history() -> Vec<Record> {
    let (r, i, f) = (
        Precedence::Routine,
        Precedence::Immediate,
        Precedence::Flash,
    );
    vec![
        other(1),
        received(r, 1, r),
        received(f, 1, f),
        received(r, 2, i),
        other(2),
        ack(&id(f, 1), Time(T.0 + 100)),
        received(i, 1, i),
        Record::PartnerEscalated {
            id: id(r, 2),
            level: f,
        },
        received(r, 3, r),
        ack(&id(r, 3), Time(T.0 + 200)),
        // For a message that is not in the inbox: ignored.
        ack(&id(i, 9), Time(T.0 + 300)),
        other(3),
    ]
}

fn listing(index: &InboxIndex, db: &redb::Database) -> Vec<InboxEntry> {
    listing_in_chunks(index, db, READ_CHUNK)
}

fn listing_in_chunks(index: &InboxIndex, db: &redb::Database, chunk: usize) -> Vec<InboxEntry> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    assert!(index.snapshot().send_all(db, &tx, chunk).unwrap());
    drop(tx);
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        out.push(e);
    }
    out
}

fn json(lines: &[InboxEntry]) -> Vec<String> {
    lines
        .iter()
        .map(|l| serde_json::to_string(l).unwrap())
        .collect()
}

#[test]
fn listing_read_from_the_store_matches_the_whole_lines_model() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = Store::open(dir.path()).unwrap();
    let records = history();
    // Two commits, as the store thread groups them.
    store.append(&records[..5]).unwrap();
    store.append(&records[5..]).unwrap();
    let mut model = Model::default();
    records.iter().for_each(|r| model.apply(r));

    let index = InboxIndex::from_records(&records);
    assert_eq!(index.len(), 5);
    assert_eq!(
        json(&listing(&index, &store.database())),
        json(&model.lines)
    );
    // Long listings are read in chunks: the same lines, whatever the chunk.
    for chunk in [1, 2, 3] {
        assert_eq!(
            json(&listing_in_chunks(&index, &store.database(), chunk)),
            json(&model.lines)
        );
    }
}

#[test]
fn live_updates_find_their_rows_by_counting_what_the_loop_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = Store::open(dir.path()).unwrap();
    let records = history();
    let (before, after) = records.split_at(4);
    store.append(before).unwrap();
    // Restart with the first records, then run: persist, commit, deliver, as the engine loop.
    let mut index = InboxIndex::from_records(before);
    let mut model = Model::default();
    before.iter().for_each(|r| model.apply(r));
    for r in after {
        index.persisting(r);
        store.append(std::slice::from_ref(r)).unwrap();
        model.apply(r);
        match r {
            Record::Received { delivery, .. } => index.push(delivery),
            Record::OperatorAck { id, receipt } => {
                let row = index.acknowledged(id, receipt.body.at);
                if let Some(row) = row {
                    let line = index.line(&store.database(), row).unwrap().unwrap();
                    let want = model.lines.iter().find(|l| l.id == id.to_string());
                    assert_eq!(
                        Some(json(&[line])),
                        want.map(std::slice::from_ref).map(json)
                    );
                } else {
                    assert!(!model.lines.iter().any(|l| l.id == id.to_string()));
                }
            }
            Record::PartnerEscalated { id, level } => {
                index.realerted(id, *level);
            }
            _ => {}
        }
    }
    assert_eq!(index.len(), model.lines.len());
    assert_eq!(
        json(&listing(&index, &store.database())),
        json(&model.lines)
    );
    // A restart from the store gives the same listing.
    let (reopened, all) = {
        drop(store);
        Store::open(dir.path()).unwrap()
    };
    assert_eq!(
        json(&listing(
            &InboxIndex::from_records(&all),
            &reopened.database()
        )),
        json(&model.lines)
    );
}

#[test]
fn an_empty_inbox_lists_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = Store::open(dir.path()).unwrap();
    store.append(&[other(1), other(2)]).unwrap();
    let index = InboxIndex::from_records(&[other(1), other(2)]);
    assert!(listing(&index, &store.database()).is_empty());
}

#[tokio::test]
async fn stream_sends_the_listing_then_what_arrived_live_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = Store::open(dir.path()).unwrap();
    let records = history();
    store.append(&records).unwrap();
    let mut index = InboxIndex::from_records(&records);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (live_tx, live_rx) = mpsc::unbounded_channel();
    // A delivery queued on the live channel before the listing is read comes after it.
    let new = received(Precedence::Routine, 4, Precedence::Routine);
    index.persisting(&new);
    let Record::Received { delivery, .. } = &new else {
        unreachable!()
    };
    index.push(delivery);
    live_tx.send(view::inbox_entry(delivery)).unwrap();
    let (failed, mut failure) = oneshot::channel();
    InboxIndex::from_records(&records).stream(store.database(), tx, Some(live_rx), failed);
    drop(live_tx);
    let mut got = Vec::new();
    while let Some(e) = rx.recv().await {
        got.push(e.id);
    }
    assert!(failure.try_recv().is_err(), "no failure reported");
    let ids: Vec<String> = [
        "jp:main:routine:1",
        "jp:main:flash:1",
        "jp:main:routine:2",
        "jp:main:immediate:1",
        "jp:main:routine:3",
        "jp:main:routine:4",
    ]
    .map(String::from)
    .into();
    assert_eq!(got, ids);
    assert_eq!(index.len(), 6);
}

#[test]
fn lane_runs_find_every_row_in_any_delivery_pattern() {
    // (seq, row) as delivered: a run, a gap in rows, a jump in sequence (a new partner
    // incarnation), then an older sequence arriving late.
    let delivered = [
        (1, 10),
        (2, 11),
        (3, 12),
        (4, 20),
        (5, 21),
        (100, 22),
        (101, 23),
        (50, 30),
    ];
    let mut lane = Vec::new();
    for (seq, row) in delivered {
        add_to_lane(&mut lane, Seq(seq), row);
    }
    // Consecutive rows and sequences share a run.
    assert_eq!(lane.len(), 4, "{lane:?}");
    for (seq, row) in delivered {
        assert_eq!(row_in_lane(&lane, Seq(seq)), Some(row), "seq {seq}");
    }
    for missing in [0, 6, 49, 51, 99, 102] {
        assert_eq!(row_in_lane(&lane, Seq(missing)), None, "seq {missing}");
    }
    // A sequence already recorded keeps its row.
    add_to_lane(&mut lane, Seq(2), 99);
    assert_eq!(row_in_lane(&lane, Seq(2)), Some(11));
}

#[tokio::test]
async fn a_listing_that_cannot_read_a_row_says_so_before_it_ends() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = Store::open(dir.path()).unwrap();
    let records = history();
    store.append(&records).unwrap();
    let index = InboxIndex::from_records(&records);
    // Damage the row of the second delivered message.
    let db = store.database();
    let txn = db.begin_write().unwrap();
    {
        let rows: redb::TableDefinition<'_, u64, &[u8]> = redb::TableDefinition::new("records");
        let mut table = txn.open_table(rows).unwrap();
        let flash: MessageId = "jp:main:flash:1".parse().unwrap();
        let second = index.row_of(&flash).unwrap();
        table.insert(second, [0xff_u8; 3].as_slice()).unwrap();
    }
    txn.commit().unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (failed, mut failure) = oneshot::channel();
    index.stream(db, tx, None, failed);
    let mut got = 0;
    while rx.recv().await.is_some() {
        got += 1;
    }
    // Lines are read a chunk at a time, so none or some of the earlier ones may have gone.
    assert!(got < 5, "an incomplete listing, got {got} lines");
    let error = failure.try_recv().expect("the failure is reported");
    assert!(error.contains("does not decode"), "{error}");
}

#[test]
fn a_flash_delivered_ahead_of_an_earlier_row_leaves_that_row_listed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = Store::open(dir.path()).unwrap();
    let (r, f) = (Precedence::Routine, Precedence::Flash);
    let records = [received(r, 1, r), received(f, 1, f)];
    let mut index = InboxIndex::default();
    let keys: Vec<u64> = records.iter().map(|rec| index.persisting(rec)).collect();
    // The store thread commits the flash first, under its own key, and the engine delivers it
    // before the routine message whose record comes first; that one is committed next but
    // not delivered yet when the operator lists the inbox.
    let commit = |store: &mut Store, i: usize| {
        let batch = Batch {
            records: vec![records[i].clone()],
            keys: vec![keys[i]],
            ..Batch::default()
        };
        store.commit(&batch, T).unwrap();
    };
    let deliver = |index: &mut InboxIndex, i: usize| {
        let Record::Received { delivery, .. } = &records[i] else {
            unreachable!()
        };
        index.push(delivery);
    };
    let listed = |index: &InboxIndex, store: &Store| -> Vec<String> {
        listing(index, &store.database())
            .into_iter()
            .map(|l| l.id)
            .collect()
    };
    commit(&mut store, 1);
    deliver(&mut index, 1);
    commit(&mut store, 0);
    assert_eq!(
        listed(&index, &store),
        [id(f, 1).to_string()],
        "a committed row not delivered yet is not listed"
    );
    deliver(&mut index, 0);
    assert_eq!(
        listed(&index, &store),
        [id(r, 1).to_string(), id(f, 1).to_string()]
    );
}
