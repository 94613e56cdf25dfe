//! Isolation between senders and between lanes: write classes (a flash is not committed behind a
//! routine batch), fairness across the senders of one destination, and the per-sender bound.

use super::*;

const I: Precedence = Precedence::Immediate;

/// The writes emitted so far with their class, without committing them; other outputs kept.
fn take_classed(r: &mut Router) -> Vec<(CommitId, WriteClass)> {
    let mut writes = Vec::new();
    let mut kept = VecDeque::new();
    for o in r.outputs.drain(..) {
        match o {
            Output::Persist { write, class, .. } => writes.push((write, class)),
            o => kept.push_back(o),
        }
    }
    r.outputs = kept;
    writes
}

fn classes(r: &mut Router) -> Vec<WriteClass> {
    take_classed(r).into_iter().map(|(_, c)| c).collect()
}

const URGENT: WriteClass = WriteClass::Urgent;
const BULK: WriteClass = WriteClass::Bulk;

#[test]
fn writes_are_classed_by_lane_and_by_what_they_depend_on() {
    let mut r = both_connected();
    r.receive(T0, US, envelope("us", "jp", R, 1));
    r.receive(T0, US, envelope("us", "jp", P, 1));
    r.receive(T0, US, envelope("us", "jp", I, 1));
    r.receive(T0, US, envelope("us", "jp", F, 1));
    r.receive(T0, US, announcement("us", 1));
    let writes = take_classed(&mut r);
    let got: Vec<WriteClass> = writes.iter().map(|(_, c)| *c).collect();
    assert_eq!(got, [BULK, BULK, URGENT, URGENT, URGENT]);

    // jp got them all; its delivered receipt for routine deletes a row whose put has not
    // committed: it must commit after that put, so it is bulk too.
    let _ = drain(&mut r, JP, Lane::Precedence(R));
    r.receive(T0, JP, delivered("jp", "us", R, 1));
    assert_eq!(classes(&mut r), [BULK]);
    // The flash receipt deletes a row an urgent write holds: urgent.
    r.receive(T0, JP, delivered("jp", "us", F, 1));
    assert_eq!(classes(&mut r), [URGENT]);

    // Once the priority put has committed, its receipt no longer depends on anything bulk.
    r.handle_persisted_writes(&[writes[1].0]);
    r.receive(T0, JP, delivered("jp", "us", P, 1));
    assert_eq!(classes(&mut r), [URGENT]);
}

#[test]
fn an_escalation_of_an_uncommitted_routine_envelope_stays_behind_its_put() {
    let mut r = us_connected();
    r.receive(T0, US, envelope("us", "jp", R, 1));
    let escalated = testing::envelope("us", "jp", R, 1, F, 16);
    r.receive(T0, US, Bytes::from(escalated));
    assert_eq!(
        classes(&mut r),
        [BULK, BULK],
        "the move to flash rewrites the routine row: never before its first put"
    );
    // Once the routine put committed, a further move is urgent.
    r.handle_persisted(CommitId(2));
    r.receive(T0, US, envelope("us", "jp", R, 2));
    r.handle_persisted(CommitId(3));
    r.receive(T0, US, testing::envelope("us", "jp", R, 2, F, 16).into());
    assert_eq!(classes(&mut r), [BULK, URGENT]);
}

#[test]
fn a_flash_accepted_leaves_before_an_earlier_routine_write_commits() {
    let mut r = us_connected();
    r.receive(T0, US, envelope("us", "jp", R, 1));
    r.receive(T0, US, envelope("us", "jp", F, 1));
    let writes = take_classed(&mut r);
    assert_eq!(writes[1].1, URGENT);
    // The store committed the flash first (the routine batch had not started).
    r.handle_persisted_writes(&[writes[1].0]);
    assert_eq!(pending_control(&mut r, US), [accepted(1, F)]);
    assert_eq!(r.committed(), CommitId(0), "write 1 is still pending");
    r.handle_persisted_writes(&[writes[0].0]);
    assert_eq!(pending_control(&mut r, US), [accepted(1, R)]);
    assert_eq!(r.committed(), CommitId(2));
}

#[test]
fn a_duplicates_accepted_waits_only_for_the_write_of_its_own_row() {
    let mut r = us_connected();
    r.receive(T0, US, envelope("us", "jp", R, 1));
    r.receive(T0, US, envelope("us", "jp", F, 1));
    let writes = take_classed(&mut r);
    r.handle_persisted_writes(&[writes[1].0]);
    let _ = pending_control(&mut r, US);
    // A retransmitted flash: its row is committed, the routine write is not.
    r.receive(T0, US, envelope("us", "jp", F, 1));
    assert!(
        take_classed(&mut r).is_empty(),
        "a duplicate writes nothing"
    );
    assert_eq!(pending_control(&mut r, US), [accepted(1, F)]);
    // A retransmitted routine waits for its own row's write.
    r.receive(T0, US, envelope("us", "jp", R, 1));
    assert!(pending_control(&mut r, US).is_empty());
    r.handle_persisted_writes(&[writes[0].0]);
    assert_eq!(
        pending_control(&mut r, US),
        [accepted(1, R), accepted(1, R)]
    );
}

/// us is in two hotlines: with jp and with uk.
fn shared_destination() -> Router {
    let hotlines = [(id("us"), id("jp")), (id("us"), id("uk"))];
    let mut r = Router::new(&hotlines, Limits::default()).unwrap();
    for (conn, name) in [(US, "us"), (JP, "jp"), (UK, "uk")] {
        r.handle_connected(T0, conn, id(name)).unwrap();
    }
    r
}

fn big(sender: &str, seq: u64) -> Bytes {
    let size = wire::MAX_BODY_LEN - 1024;
    testing::envelope(sender, "us", R, seq, R, size).into()
}

fn sender_of(bytes: &Bytes) -> String {
    let Frame::Envelope(e) = decode(bytes) else {
        panic!("not an envelope")
    };
    e.envelope.header.sender.to_string()
}

#[test]
fn one_senders_backlog_does_not_delay_another_senders_envelopes_to_the_same_destination() {
    let mut r = shared_destination();
    // jp floods us with 20 large routine envelopes, then uk sends two small ones.
    for seq in 1..=20 {
        r.receive(T0, JP, big("jp", seq));
    }
    r.receive(T0, UK, envelope("uk", "us", R, 1));
    r.receive(T0, UK, envelope("uk", "us", R, 2));
    let order: Vec<String> = drain(&mut r, US, Lane::Precedence(R))
        .iter()
        .map(sender_of)
        .collect();
    assert_eq!(order.len(), 22);
    let first_uk = order.iter().position(|s| s == "uk").unwrap();
    assert!(
        first_uk <= 1,
        "uk waits for at most one of jp's frames, not for jp's backlog: {order:?}"
    );
    assert_eq!(&order[first_uk..first_uk + 2], ["uk", "uk"]);
}

#[test]
fn the_destination_bound_is_per_sender() {
    let hotlines = [(id("us"), id("jp")), (id("us"), id("uk"))];
    let limits = Limits {
        max_queue_bytes: 1_000_000,
        ..Limits::default()
    };
    let mut r = Router::new(&hotlines, limits).unwrap();
    r.handle_connected(T0, JP, id("jp")).unwrap();
    r.handle_connected(T0, UK, id("uk")).unwrap();
    // us is offline; jp fills its share of us's queue.
    let mut seq = 0;
    loop {
        seq += 1;
        r.receive(T0, JP, big("jp", seq));
        let refused = refusals(&pending_control(&mut r, JP));
        if refused == [RefusalCode::Overloaded] {
            break;
        }
        assert!(seq < 10, "the bound never refused jp");
    }
    let from_jp = r.queued_bytes(&id("us"));
    assert!(from_jp <= 1_000_000, "{from_jp}");
    // uk is not refused for what jp queued: it has its own whole bound.
    for seq in 1..seq {
        r.receive(T0, UK, big("uk", seq));
    }
    let frames: Vec<Frame> = drain_frames(&mut r, UK, Lane::Control)
        .into_iter()
        .filter(|f| !matches!(f, Frame::Presence(_)))
        .collect();
    assert!(
        frames.iter().all(is_accepted) && frames.len() == usize::try_from(seq - 1).unwrap(),
        "{frames:?}"
    );
}

// Queued envelopes past the in-memory window live in the store only.

/// A router whose memory holds at most `window` bytes of queued envelopes, us online.
fn with_window(window: u64) -> Router {
    let mut r = router_with(Limits {
        max_in_memory_bytes: window,
        ..Limits::default()
    });
    r.handle_connected(T0, US, id("us")).unwrap();
    let _ = drain(&mut r, US, Lane::Control);
    r
}

/// Commits everything into `store` (one write at a time, in issue order) and answers every
/// read from it, until the router asks for nothing more; returns the outputs left.
fn serve_store(r: &mut Router, store: &mut MemStore) -> Vec<Output> {
    let mut kept = Vec::new();
    while let Some(o) = r.poll_output() {
        match o {
            Output::Persist { write, ops, .. } => {
                store.apply(ops);
                r.handle_persisted_writes(&[write]);
            }
            Output::Load {
                destination,
                lane,
                order,
            } => {
                let bytes = store.envelopes.get(&order).map(|e| e.bytes.clone());
                assert!(
                    store
                        .envelopes
                        .get(&order)
                        .is_none_or(|e| e.destination == destination),
                    "a read for the wrong destination"
                );
                r.handle_loaded(&destination, lane, order, bytes);
            }
            o => kept.push(o),
        }
    }
    kept
}

#[test]
fn envelopes_past_the_memory_window_are_read_back_from_the_store_in_order() {
    let probe = envelope("us", "jp", R, 1).len() as u64;
    let mut r = with_window(3 * probe);
    let mut store = MemStore::default();
    let sent: Vec<Bytes> = (1..=10).map(|seq| envelope("us", "jp", R, seq)).collect();
    for env in &sent {
        r.receive(T0, US, env.clone());
        let _ = serve_store(&mut r, &mut store);
    }
    let in_memory = r.stats().in_memory_bytes;
    assert!(
        (3 * probe..=4 * probe).contains(&in_memory),
        "jp is offline: 10 envelopes queued, {in_memory} bytes in memory (window {})",
        3 * probe
    );
    assert_eq!(r.queued_bytes(&id("jp")), 10 * probe, "all 10 stay queued");

    // jp connects: everything is written in order, the cold ones after a read.
    r.handle_connected(T0, JP, id("jp")).unwrap();
    let mut written = Vec::new();
    let mut loads = 0;
    for _ in 0..100 {
        let outputs = serve_store(&mut r, &mut store);
        loads += outputs.len();
        match r.poll_transmit(JP, Lane::Precedence(R)) {
            Some(t) => {
                written.push(t.bytes.clone());
                r.handle_written(JP, t);
            }
            None if r.outputs.iter().any(|o| matches!(o, Output::Load { .. })) => {}
            None => break,
        }
    }
    assert_eq!(written, sent);
    assert!(loads > 0);
    assert!(r.stats().in_memory_bytes <= 4 * probe);
    assert!(r.counter_drift().is_empty(), "{:?}", r.counter_drift());
}

#[test]
fn a_read_for_an_envelope_delivered_meanwhile_moves_the_writer_on() {
    let probe = envelope("us", "jp", R, 1).len() as u64;
    let mut r = with_window(probe);
    let mut store = MemStore::default();
    for seq in 1..=3 {
        r.receive(T0, US, envelope("us", "jp", R, seq));
        let _ = serve_store(&mut r, &mut store);
    }
    r.handle_connected(T0, JP, id("jp")).unwrap();
    let _ = serve_store(&mut r, &mut store);
    // The first is in memory; the second is not: its writer asks for a read.
    let first = r.poll_transmit(JP, Lane::Precedence(R)).unwrap();
    r.handle_written(JP, first);
    assert!(r.poll_transmit(JP, Lane::Precedence(R)).is_none());
    let Some(Output::Load { order, .. }) = r
        .outputs
        .iter()
        .find(|o| matches!(o, Output::Load { .. }))
        .cloned()
    else {
        panic!("no read asked for: {:?}", r.outputs)
    };
    // Before the read returns, a delivered receipt covering seq 2 deletes it.
    r.receive(T0, JP, delivered("jp", "us", R, 2));
    r.outputs.retain(|o| !matches!(o, Output::Load { .. }));
    let _ = serve_store(&mut r, &mut store);
    r.handle_loaded(&id("jp"), R, order, None);
    let t = r.poll_transmit(JP, Lane::Precedence(R)).or_else(|| {
        let _ = serve_store(&mut r, &mut store);
        r.poll_transmit(JP, Lane::Precedence(R))
    });
    let Frame::Envelope(e) = decode(&t.expect("the writer moved on to seq 3").bytes) else {
        panic!("not an envelope")
    };
    assert_eq!(e.envelope.header.seq, Seq(3));
    assert!(r.counter_drift().is_empty(), "{:?}", r.counter_drift());
}

#[test]
fn a_restored_backlog_past_the_window_stays_in_the_store() {
    let probe = envelope("us", "jp", R, 1).len() as u64;
    let frames: Vec<Bytes> = (1..=8).map(|seq| envelope("us", "jp", R, seq)).collect();
    let fresh = router_with(Limits {
        max_in_memory_bytes: 2 * probe,
        ..Limits::default()
    });
    let (r, restored) = restored_after(router(), &frames, fresh);
    assert_eq!(restored.envelopes, 8);
    assert_eq!(r.stats().in_memory_bytes, 2 * probe);
    assert!(r.counter_drift().is_empty(), "{:?}", r.counter_drift());
}
