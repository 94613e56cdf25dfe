use std::sync::mpsc;

use hotline_proto::Time;
use hotline_proto::testing::{self, id};

use super::*;
use crate::router::{ConnId, Lane, Limits, Output, Router};

fn envelope(precedence: Precedence, seq: u64, transport: Precedence) -> Bytes {
    testing::envelope("us", "jp", precedence, seq, transport, 8).into()
}

fn put(order: u64, lane: Precedence, bytes: Bytes) -> StoreOp {
    StoreOp::PutEnvelope(StoredEnvelope {
        order,
        destination: id("jp"),
        lane,
        queued_at: Time(order * 10),
        bytes,
    })
}

/// Hands every write the router emitted to `store`, one commit each, and reports them.
fn persist(router: &mut Router, store: &mut Store) {
    loop {
        let mut writes = Vec::new();
        let mut kept = Vec::new();
        while let Some(o) = router.poll_output() {
            match o {
                Output::Persist { write, ops, .. } => writes.push((write, ops)),
                o => kept.push(o),
            }
        }
        if writes.is_empty() {
            return;
        }
        for (write, ops) in writes {
            store.commit(&ops).unwrap();
            router.handle_persisted(write);
        }
    }
}

fn lane_order(router: &mut Router, conn: ConnId) -> Vec<(Lane, Vec<Bytes>)> {
    Lane::ALL[1..]
        .iter()
        .map(|&stream| {
            let mut out = Vec::new();
            while let Some(t) = router.poll_transmit(conn, stream) {
                out.push(t.bytes.clone());
                router.handle_written(conn, t);
            }
            (stream, out)
        })
        .collect()
}

const R: Precedence = Precedence::Routine;
const P: Precedence = Precedence::Priority;
const F: Precedence = Precedence::Flash;

#[test]
fn committed_operations_are_read_back_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let receipt = Bytes::from_static(b"receipt-frame");
    let ann = |epoch| StoredAnnouncement {
        endpoint: id("us"),
        epoch,
        bytes: Bytes::from(format!("announcement {epoch}")),
    };
    {
        let (mut store, snapshot) = Store::open(dir.path()).unwrap();
        assert_eq!(snapshot, Snapshot::default());
        store
            .commit(&[
                put(0, R, envelope(R, 1, R)),
                put(1, R, envelope(R, 2, R)),
                put(2, F, envelope(F, 1, F)),
                StoreOp::PutAnnouncement(ann(1)),
            ])
            .unwrap();
        store
            .commit(&[
                // seq 2 escalated: same row, new lane and bytes.
                put(1, P, envelope(R, 2, P)),
                StoreOp::DeleteEnvelope { order: 0 },
                StoreOp::PutControl(StoredControl {
                    key: 0,
                    addressee: id("us"),
                    bytes: receipt.clone(),
                }),
                StoreOp::PutControl(StoredControl {
                    key: 1,
                    addressee: id("us"),
                    bytes: Bytes::from_static(b"written already"),
                }),
                StoreOp::DeleteControl { key: 1 },
                StoreOp::PutAnnouncement(ann(2)),
            ])
            .unwrap();
        assert_eq!(store.commits(), 2);
    }
    let (_store, snapshot) = Store::open(dir.path()).unwrap();
    let StoreOp::PutEnvelope(escalated) = put(1, P, envelope(R, 2, P)) else {
        unreachable!()
    };
    let StoreOp::PutEnvelope(flash) = put(2, F, envelope(F, 1, F)) else {
        unreachable!()
    };
    assert_eq!(snapshot.envelopes, [escalated, flash]);
    assert_eq!(
        snapshot.control,
        [StoredControl {
            key: 0,
            addressee: id("us"),
            bytes: receipt,
        }]
    );
    assert_eq!(snapshot.announcements, [ann(2)]);
}

#[test]
fn a_router_restored_from_the_reopened_store_has_the_same_queues_in_the_same_order() {
    let dir = tempfile::tempdir().unwrap();
    let hotlines = [(id("us"), id("jp"))];
    let (us, jp) = (ConnId(1), ConnId(2));
    let now = Time(5_000_000);
    let mut original = Router::new(&hotlines, Limits::default()).unwrap();
    {
        let (mut store, _) = Store::open(dir.path()).unwrap();
        original.handle_connected(Time(0), us, id("us")).unwrap();
        for (p, seq, t) in [
            (R, 1, R),
            (R, 2, R),
            (F, 1, F),
            (P, 1, P),
            (R, 3, R),
            (R, 2, F), // escalated: moves to flash, keeps its place by arrival
            (P, 2, P),
        ] {
            original.handle_frame(now, us, Lane::Precedence(t), envelope(p, seq, t));
            persist(&mut original, &mut store);
        }
    }
    let (_store, snapshot) = Store::open(dir.path()).unwrap();
    let mut restored = Router::new(&hotlines, Limits::default()).unwrap();
    let report = restored.restore(snapshot).unwrap();
    assert_eq!(report.envelopes, 6);
    assert_eq!(
        restored.queued_envelopes(&id("jp")),
        original
            .queued_envelopes(&id("jp"))
            .into_iter()
            .map(|mut q| {
                q.state = crate::router::ItemState::Unwritten;
                q
            })
            .collect::<Vec<_>>()
    );
    original.handle_connected(Time(0), jp, id("jp")).unwrap();
    restored.handle_connected(Time(0), jp, id("jp")).unwrap();
    let got = lane_order(&mut restored, jp);
    assert_eq!(got, lane_order(&mut original, jp));
    assert_eq!(
        got[0].1,
        [envelope(R, 2, F), envelope(F, 1, F)],
        "flash lane by first arrival"
    );
    assert_eq!(got[3].1, [envelope(R, 1, R), envelope(R, 3, R)]);
}

#[test]
fn a_second_open_of_the_same_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Store::open(dir.path()).unwrap();
    let err = Store::open(dir.path()).unwrap_err();
    assert!(
        matches!(err, StoreError::Open(OpenError::Locked { .. })),
        "{err}"
    );
    let line = err.to_string();
    assert!(line.contains("already running"), "{line}");
    assert!(!line.contains('\n'), "{line}");
}

#[test]
fn a_new_data_dir_and_store_file_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("relay");
    drop(Store::open(&dir).unwrap());
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join(FILE_NAME)), 0o600);
}

#[test]
fn a_file_without_a_schema_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let database = Database::create(dir.path().join(FILE_NAME)).unwrap();
        let txn = database.begin_write().unwrap();
        let other: TableDefinition<'_, u64, u64> = TableDefinition::new("records");
        txn.open_table(other).unwrap().insert(1, 1).unwrap();
        txn.commit().unwrap();
    }
    let err = Store::open(dir.path()).unwrap_err();
    assert!(
        matches!(err, StoreError::Open(OpenError::Unversioned { .. })),
        "{err}"
    );
}

fn write(id: u64, class: WriteClass, ops: Vec<StoreOp>) -> Request {
    Request::Write {
        id: CommitId(id),
        class,
        ops,
    }
}

const URGENT: WriteClass = WriteClass::Urgent;
const BULK: WriteClass = WriteClass::Bulk;

#[test]
fn group_commit_takes_everything_queued_in_one_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = Store::open(dir.path()).unwrap();
    let (tx, rx) = mpsc::channel();
    for order in 0..5 {
        tx.send(write(
            order + 1,
            BULK,
            vec![put(order, R, envelope(R, order + 1, R))],
        ))
        .unwrap();
    }
    tx.send(Request::Stop).unwrap();
    // Sent after Stop: never taken.
    tx.send(write(6, BULK, vec![put(5, R, envelope(R, 6, R))]))
        .unwrap();
    let mut reports = Vec::new();
    group_commit(&mut store, &rx, |c| reports.push(c)).unwrap();
    assert_eq!(
        reports,
        [Committed {
            writes: (1..=5).map(CommitId).collect(),
            bulk: 5,
            ops: 5
        }]
    );
    assert_eq!(store.commits(), 1);
    drop(store);
    let (_store, snapshot) = Store::open(dir.path()).unwrap();
    assert_eq!(snapshot.envelopes.len(), 5);
}

#[test]
fn group_commit_commits_again_as_soon_as_the_previous_commit_returns() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = Store::open(dir.path()).unwrap();
    let (tx, rx) = mpsc::channel();
    let feeder = tx.clone();
    tx.send(write(1, BULK, vec![put(0, R, envelope(R, 1, R))]))
        .unwrap();
    let mut reports = Vec::new();
    let mut next = 2;
    // Each report queues one more write, as new envelopes would arrive during a commit.
    group_commit(&mut store, &rx, |c| {
        reports.extend(c.writes);
        if next <= 4 {
            feeder
                .send(write(
                    next,
                    URGENT,
                    vec![put(next - 1, F, envelope(F, next, F))],
                ))
                .unwrap();
            next += 1;
        } else {
            feeder.send(Request::Stop).unwrap();
        }
    })
    .unwrap();
    assert_eq!(
        reports,
        [CommitId(1), CommitId(2), CommitId(3), CommitId(4)]
    );
    assert_eq!(store.commits(), 4);
}

/// A bulk write of `size` body bytes (routine, order = id - 1).
fn bulk_write(id: u64, size: usize) -> Request {
    let bytes = Bytes::from(testing::envelope("us", "jp", R, id, R, size));
    write(id, BULK, vec![put(id - 1, R, bytes)])
}

#[test]
fn urgent_writes_go_ahead_of_bulk_batches_that_have_not_started() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = Store::open(dir.path()).unwrap();
    let (tx, rx) = mpsc::channel();
    let feeder = tx.clone();
    // 12 routine writes of about 256 KiB queue up: a commit takes four (1 MiB).
    let quarter = usize::try_from(BULK_BATCH_BYTES / 4).unwrap() - 400;
    for id in 1..=12 {
        tx.send(bulk_write(id, quarter)).unwrap();
    }
    let mut reports = Vec::new();
    group_commit(&mut store, &rx, |c| {
        if reports.is_empty() {
            // A flash arrives while the first routine batch is committing.
            feeder
                .send(write(13, URGENT, vec![put(12, F, envelope(F, 1, F))]))
                .unwrap();
        }
        reports.push(c);
        if reports.len() == 3 {
            feeder.send(Request::Stop).unwrap();
        }
    })
    .unwrap();
    let ids = |c: &Committed| c.writes.iter().map(|w| w.0).collect::<Vec<_>>();
    assert_eq!(ids(&reports[0]), [1, 2, 3, 4], "a routine batch is bounded");
    assert_eq!(
        ids(&reports[1]),
        [13, 5, 6, 7, 8],
        "the flash waits for one routine batch only, and goes first in the next"
    );
    assert_eq!(reports[1].bulk, 4);
    // Stopping commits everything left at once.
    assert_eq!(ids(&reports[2]), [9, 10, 11, 12]);
    drop(store);
    let (_store, snapshot) = Store::open(dir.path()).unwrap();
    assert_eq!(snapshot.envelopes.len(), 13);
}

#[test]
fn a_bulk_write_larger_than_the_batch_bound_is_committed_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = Store::open(dir.path()).unwrap();
    let (tx, rx) = mpsc::channel();
    let feeder = tx.clone();
    let big = usize::try_from(BULK_BATCH_BYTES).unwrap() + 10;
    tx.send(bulk_write(1, big)).unwrap();
    tx.send(bulk_write(2, 10)).unwrap();
    let mut reports = Vec::new();
    group_commit(&mut store, &rx, |c| {
        reports.push(c.writes);
        if reports.len() == 2 {
            feeder.send(Request::Stop).unwrap();
        }
    })
    .unwrap();
    assert_eq!(reports, [vec![CommitId(1)], vec![CommitId(2)]]);
}

#[test]
fn a_reader_sees_committed_envelopes_only() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = Store::open(dir.path()).unwrap();
    let reader = store.reader();
    assert_eq!(reader.envelope(0).unwrap(), None);
    let env = envelope(R, 1, R);
    store.commit(&[put(0, R, env.clone())]).unwrap();
    assert_eq!(reader.envelope(0).unwrap(), Some(env));
    store
        .commit(&[StoreOp::DeleteEnvelope { order: 0 }])
        .unwrap();
    assert_eq!(reader.envelope(0).unwrap(), None);
}
