use std::time::Duration;

use hotline_proto::wire::{Accepted, Hello, PROTOCOL_VERSION, Refusal};
use hotline_proto::{Channel, MessageId, Seq, Time};

use hotline_proto::testing::{self, id};

use super::*;

fn router_with(limits: Limits) -> Router {
    Router::new(&[(id("us"), id("jp")), (id("uk"), id("fr"))], limits).unwrap()
}

fn router() -> Router {
    router_with(Limits::default())
}

/// A router with us connected and what it was sent on connecting drained.
fn us_connected() -> Router {
    let mut r = router();
    r.handle_connected(T0, US, id("us")).unwrap();
    let _ = drain(&mut r, US, Lane::Control);
    r
}

/// A router with both us and jp connected.
fn both_connected() -> Router {
    let mut r = router();
    r.handle_connected(T0, US, id("us")).unwrap();
    r.handle_connected(T0, JP, id("jp")).unwrap();
    r
}

fn envelope(sender: &str, recipient: &str, precedence: Precedence, seq: u64) -> Bytes {
    testing::envelope(sender, recipient, precedence, seq, precedence, 16).into()
}

fn delivered(from: &str, to: &str, precedence: Precedence, upto: u64) -> Bytes {
    testing::delivered(from, to, precedence, upto).into()
}

fn announcement(endpoint: &str, epoch: u32) -> Bytes {
    testing::announcement(endpoint, epoch).into()
}

fn link_test(from: &str, to: &str) -> Bytes {
    testing::link_test(from, to).into()
}

impl Router {
    /// [`Router::handle_frame`] on the stream an honest node uses: an envelope on its transport
    /// lane, anything else (unreadable bytes too) on the control stream.
    fn receive(&mut self, now: Time, conn: ConnId, bytes: Bytes) {
        let stream = match wire::decode_frame(&bytes) {
            Ok((Frame::Envelope(e), _)) => Lane::Precedence(e.transport),
            _ => Lane::Control,
        };
        self.handle_frame(now, conn, stream, bytes);
    }
}

fn decode(bytes: &Bytes) -> Frame {
    wire::decode_frame(bytes).unwrap().0
}

/// Commits every write the router asked for (a store that never fails); keeps other outputs.
/// Returns the operations committed.
fn commit(r: &mut Router) -> Vec<StoreOp> {
    let mut ops = Vec::new();
    loop {
        let mut upto = None;
        let mut kept = VecDeque::new();
        for o in r.outputs.drain(..) {
            match o {
                Output::Persist {
                    write, ops: more, ..
                } => {
                    upto = Some(write);
                    ops.extend(more);
                }
                o => kept.push_back(o),
            }
        }
        r.outputs = kept;
        match upto {
            Some(w) => r.handle_persisted(w),
            None => return ops,
        }
    }
}

/// Everything the writer of `stream` would write now, reported as written (after committing
/// every pending write).
fn drain(r: &mut Router, conn: ConnId, stream: Lane) -> Vec<Bytes> {
    let _ = commit(r);
    let mut out = Vec::new();
    while let Some(t) = r.poll_transmit(conn, stream) {
        out.push(t.bytes.clone());
        r.handle_written(conn, t);
    }
    out
}

fn drain_frames(r: &mut Router, conn: ConnId, stream: Lane) -> Vec<Frame> {
    drain(r, conn, stream).iter().map(decode).collect()
}

/// Outputs other than writes, after committing the writes.
fn outputs(r: &mut Router) -> Vec<Output> {
    let _ = commit(r);
    std::iter::from_fn(|| r.poll_output()).collect()
}

fn accepted(seq: u64, precedence: Precedence) -> Frame {
    Frame::Accepted(Accepted {
        id: MessageId {
            sender: id("us"),
            channel: Channel::default(),
            precedence,
            seq: Seq(seq),
        },
        durable: true,
    })
}

fn refusals(frames: &[Frame]) -> Vec<RefusalCode> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Refused(r) => Some(r.code),
            _ => None,
        })
        .collect()
}

const T0: Time = Time(1_000_000_000);
const US: ConnId = ConnId(1);
const JP: ConnId = ConnId(2);
const R: Precedence = Precedence::Routine;
const F: Precedence = Precedence::Flash;

#[test]
fn queued_envelope_is_written_when_the_destination_connects() {
    let mut r = us_connected();
    let env = envelope("us", "jp", R, 1);
    r.receive(T0, US, env.clone());
    assert_eq!(drain_frames(&mut r, US, Lane::Control), [accepted(1, R)]);
    assert_eq!(r.queued_envelopes(&id("jp")).len(), 1);

    r.handle_connected(T0, JP, id("jp")).unwrap();
    let wakes = outputs(&mut r);
    assert!(wakes.contains(&Output::Wake {
        conn: JP,
        stream: Lane::Precedence(R)
    }));
    // Byte for byte, on the lane of its transport precedence.
    assert_eq!(drain(&mut r, JP, Lane::Precedence(R)), [env]);
    assert!(drain(&mut r, JP, Lane::Precedence(F)).is_empty());
    // Written is not delivered: still queued.
    assert_eq!(r.queued_envelopes(&id("jp"))[0].state, ItemState::Written);
}

#[test]
fn duplicates_are_queued_once_and_accepted_each_time() {
    let mut r = us_connected();
    for _ in 0..3 {
        r.receive(T0, US, envelope("us", "jp", R, 1));
    }
    assert_eq!(
        drain_frames(&mut r, US, Lane::Control),
        [accepted(1, R), accepted(1, R), accepted(1, R)]
    );
    assert_eq!(r.queued_envelopes(&id("jp")).len(), 1);
    r.handle_connected(T0, JP, id("jp")).unwrap();
    assert_eq!(drain(&mut r, JP, Lane::Precedence(R)).len(), 1);
}

#[test]
fn escalation_moves_the_queued_copy_to_the_higher_lane() {
    let mut r = both_connected();
    r.receive(T0, US, envelope("us", "jp", R, 1));
    r.receive(T0, US, envelope("us", "jp", R, 2));
    assert_eq!(drain(&mut r, JP, Lane::Precedence(R)).len(), 2);

    // Seq 1 is escalated to flash: written again on the flash lane, with the new bytes.
    let escalated = Bytes::from(testing::envelope("us", "jp", R, 1, F, 16));
    r.receive(T0, US, escalated.clone());
    let _ = outputs(&mut r);
    let q = r.queued_envelopes(&id("jp"));
    assert_eq!((q[0].transport, q[0].state), (F, ItemState::Unwritten));
    assert_eq!((q[1].transport, q[1].state), (R, ItemState::Written));
    assert_eq!(drain(&mut r, JP, Lane::Precedence(F)), [escalated]);
    assert!(drain(&mut r, JP, Lane::Precedence(R)).is_empty());

    // A lower transport for a queued message changes nothing.
    r.receive(T0, US, envelope("us", "jp", R, 1));
    assert_eq!(r.queued_envelopes(&id("jp"))[0].transport, F);
    assert!(drain(&mut r, JP, Lane::Precedence(R)).is_empty());
    assert!(drain(&mut r, JP, Lane::Precedence(F)).is_empty());
    assert_eq!(r.stats().queued_frames[Lane::Precedence(F).index()], 1);
    assert_eq!(r.stats().queued_frames[Lane::Precedence(R).index()], 1);
}

#[test]
fn escalation_while_in_flight_is_written_again() {
    let mut r = both_connected();
    r.receive(T0, US, envelope("us", "jp", R, 1));
    let t = r.poll_transmit(JP, Lane::Precedence(R)).unwrap();
    r.receive(
        T0,
        US,
        Bytes::from(testing::envelope("us", "jp", R, 1, F, 16)),
    );
    r.handle_written(JP, t);
    assert_eq!(r.queued_envelopes(&id("jp"))[0].state, ItemState::Unwritten);
    assert_eq!(drain(&mut r, JP, Lane::Precedence(F)).len(), 1);
}

#[test]
fn delivered_receipt_deletes_covered_envelopes_and_reaches_the_sender() {
    let mut r = both_connected();
    for seq in 1..=3 {
        r.receive(T0, US, envelope("us", "jp", R, seq));
    }
    r.receive(T0, US, envelope("us", "jp", F, 1));
    let _ = drain(&mut r, US, Lane::Control);
    let receipt = delivered("jp", "us", R, 2);
    r.receive(T0, JP, receipt.clone());
    let left: Vec<_> = r
        .queued_envelopes(&id("jp"))
        .into_iter()
        .map(|q| (q.id.precedence, q.id.seq))
        .collect();
    assert_eq!(left, [(R, Seq(3)), (F, Seq(1))]);
    assert_eq!(drain(&mut r, US, Lane::Control), [receipt]);
}

#[test]
fn reconnection_writes_everything_still_queued_again() {
    let mut r = both_connected();
    r.receive(T0, US, envelope("us", "jp", R, 1));
    r.receive(T0, US, envelope("us", "jp", R, 2));
    assert_eq!(drain(&mut r, JP, Lane::Precedence(R)).len(), 2);
    r.receive(T0, JP, delivered("jp", "us", R, 1));
    r.handle_disconnected(JP);
    let jp2 = ConnId(3);
    r.handle_connected(T0, jp2, id("jp")).unwrap();
    let again: Vec<_> = drain_frames(&mut r, jp2, Lane::Precedence(R));
    assert_eq!(again.len(), 1);
    let Frame::Envelope(e) = &again[0] else {
        panic!("{again:?}")
    };
    assert_eq!(e.envelope.header.seq, Seq(2));
}

#[test]
fn every_signed_frame_kind_is_checked_for_signer_and_addressee() {
    let mut r = router();
    r.handle_connected(T0, US, id("us")).unwrap();
    r.handle_connected(T0, JP, id("jp")).unwrap();
    let _ = drain(&mut r, US, Lane::Control);
    let _ = drain(&mut r, JP, Lane::Control);
    use RefusalCode::*;
    let cases: [(Bytes, RefusalCode); 7] = [
        (delivered("jp", "us", R, 1), SenderMismatch),
        (delivered("us", "uk", R, 1), NotPaired),
        (testing::escalation("jp", "us", 1).into(), SenderMismatch),
        (testing::escalation("us", "fr", 1).into(), NotPaired),
        (announcement("jp", 1), SenderMismatch),
        (link_test("jp", "us"), SenderMismatch),
        (link_test("us", "fr"), NotPaired),
    ];
    for (frame, code) in cases {
        r.receive(T0, US, frame.clone());
        let got = refusals(&drain_frames(&mut r, US, Lane::Control));
        assert_eq!(got, [code], "{:?}", decode(&frame));
        assert!(
            drain(&mut r, JP, Lane::Control).is_empty(),
            "nothing forwarded: {:?}",
            decode(&frame)
        );
    }
    // The same kinds, correctly signed and addressed, pass.
    for frame in [
        delivered("us", "jp", R, 1),
        testing::escalation("us", "jp", 1).into(),
        announcement("us", 1),
        link_test("us", "jp"),
    ] {
        r.receive(T0, US, frame.clone());
        let _ = commit(&mut r);
        assert!(refusals(&drain_frames(&mut r, US, Lane::Control)).is_empty());
        assert_eq!(drain(&mut r, JP, Lane::Control), [frame]);
    }
}

#[test]
fn wrong_sender_and_unpaired_recipient_are_refused() {
    let mut r = us_connected();
    r.receive(T0, US, envelope("jp", "us", R, 1));
    r.receive(T0, US, envelope("us", "uk", R, 1));
    r.receive(T0, US, delivered("jp", "us", R, 1)); // signed as jp
    r.receive(T0, US, delivered("us", "fr", R, 1)); // addressed outside the hotline
    r.receive(T0, US, announcement("jp", 1));
    r.receive(T0, US, link_test("us", "uk"));
    let frames = drain_frames(&mut r, US, Lane::Control);
    use RefusalCode::*;
    assert_eq!(
        refusals(&frames),
        [
            SenderMismatch,
            NotPaired,
            SenderMismatch,
            NotPaired,
            SenderMismatch,
            NotPaired
        ]
    );
    let Frame::Refused(first) = &frames[0] else {
        panic!()
    };
    assert_eq!(first.id.as_ref().unwrap().sender, id("jp"));
    assert!(r.queued_envelopes(&id("uk")).is_empty());
    assert!(r.queued_envelopes(&id("us")).is_empty());
    let refused = outputs(&mut r)
        .into_iter()
        .filter(|o| matches!(o, Output::Refused { .. }))
        .count();
    assert_eq!(refused, 6);
}

#[test]
fn presence_follows_connections() {
    let mut r = router();
    r.handle_connected(T0, US, id("us")).unwrap();
    let presence = |endpoint: &str, online| {
        Frame::Presence(Presence {
            endpoint: id(endpoint),
            online,
        })
    };
    assert_eq!(
        drain_frames(&mut r, US, Lane::Control),
        [presence("jp", false)]
    );
    r.handle_connected(T0, JP, id("jp")).unwrap();
    assert_eq!(
        drain_frames(&mut r, JP, Lane::Control),
        [presence("us", true)]
    );
    assert_eq!(
        drain_frames(&mut r, US, Lane::Control),
        [presence("jp", true)]
    );
    r.handle_disconnected(JP);
    assert_eq!(
        drain_frames(&mut r, US, Lane::Control),
        [presence("jp", false)]
    );
    // Unrelated hotlines hear nothing.
    let uk = ConnId(9);
    r.handle_connected(T0, uk, id("uk")).unwrap();
    assert!(drain(&mut r, US, Lane::Control).is_empty());
}

#[test]
fn announcements_are_stored_and_replayed_to_partners() {
    let mut r = router();
    r.handle_connected(T0, US, id("us")).unwrap();
    let a1 = announcement("us", 1);
    r.receive(T0, US, a1.clone());
    r.receive(T0, US, announcement("us", 0)); // older: ignored
    r.handle_disconnected(US);

    // jp connects while us is offline and still gets us's latest announcement.
    r.handle_connected(T0, JP, id("jp")).unwrap();
    let frames = drain(&mut r, JP, Lane::Control);
    assert_eq!(frames.len(), 2, "presence, then the announcement");
    assert_eq!(frames[1], a1);

    // A newer one is forwarded to the online partner at once.
    let us2 = ConnId(5);
    r.handle_connected(T0, us2, id("us")).unwrap();
    let _ = drain(&mut r, JP, Lane::Control);
    let a2 = announcement("us", 2);
    r.receive(T0, us2, a2.clone());
    assert_eq!(drain(&mut r, JP, Lane::Control), std::slice::from_ref(&a2));
    r.handle_disconnected(JP);
    let jp2 = ConnId(6);
    r.handle_connected(T0, jp2, id("jp")).unwrap();
    assert_eq!(drain(&mut r, jp2, Lane::Control)[1], a2);

    // us lost its store: its new incarnation wins even with a lower epoch, and an announcement
    // of the old incarnation no longer replaces it.
    let restored: Bytes = testing::announcement_in("us", 7, 1).into();
    r.receive(T0, us2, restored.clone());
    assert_eq!(
        drain(&mut r, jp2, Lane::Control),
        std::slice::from_ref(&restored)
    );
    r.receive(T0, us2, announcement("us", 9));
    assert!(drain(&mut r, jp2, Lane::Control).is_empty());
}

#[test]
fn overload_refuses_routine_first_then_higher_lanes() {
    let probe = Bytes::from(testing::envelope("us", "jp", R, 1, R, 100)).len() as u64;
    // Room for exactly 10 envelopes of this size below the bound.
    let mut r = router_with(Limits {
        max_queue_bytes: probe * 10,
        ..Limits::default()
    });
    r.handle_connected(T0, US, id("us")).unwrap();
    let _ = drain(&mut r, US, Lane::Control);
    let send = |r: &mut Router, p: Precedence, seq: u64| -> Frame {
        r.receive(
            T0,
            US,
            Bytes::from(testing::envelope("us", "jp", p, seq, p, 100)),
        );
        let mut f = drain_frames(r, US, Lane::Control);
        assert_eq!(f.len(), 1);
        f.remove(0)
    };
    for seq in 1..=10 {
        assert_eq!(send(&mut r, R, seq), accepted(seq, R));
    }
    assert_eq!(refusals(&[send(&mut r, R, 11)]), [RefusalCode::Overloaded]);
    // Priority has 125 %: two and a half more envelopes.
    let p = Precedence::Priority;
    assert_eq!(send(&mut r, p, 1), accepted(1, p));
    assert_eq!(send(&mut r, p, 2), accepted(2, p));
    assert_eq!(refusals(&[send(&mut r, p, 3)]), [RefusalCode::Overloaded]);
    // Flash has 150 %.
    for seq in 1..=3 {
        assert_eq!(send(&mut r, F, seq), accepted(seq, F));
    }
    assert_eq!(refusals(&[send(&mut r, F, 4)]), [RefusalCode::Overloaded]);
    // Routine is still refused, and nothing was dropped.
    assert_eq!(refusals(&[send(&mut r, R, 12)]), [RefusalCode::Overloaded]);
    assert_eq!(r.queued_envelopes(&id("jp")).len(), 15);
    // A delivered receipt frees space again.
    r.handle_connected(T0, JP, id("jp")).unwrap();
    r.receive(T0, JP, delivered("jp", "us", R, 10));
    let _ = drain(&mut r, US, Lane::Control); // presence and the receipt
    assert_eq!(send(&mut r, R, 11), accepted(11, R));
}

/// The global budget's test bed: hotlines us:jp and uk:fr (four endpoints), a per-destination
/// bound far above the budget, and a budget of 80 envelopes of 100 sealed bytes: each endpoint's
/// quota is 10 of them (half the budget, shared by four), the other 40 are borrowed.
struct BudgetBed {
    r: Router,
    probe: u64,
}

const UK: ConnId = ConnId(3);
const FR: ConnId = ConnId(4);

impl BudgetBed {
    /// us, uk and fr online, jp offline (so nothing is delivered until it connects).
    fn new() -> Self {
        let probe = Bytes::from(testing::envelope("us", "jp", R, 1, R, 100)).len() as u64;
        let mut r = router_with(Limits {
            max_queue_bytes: probe * 1000,
            max_queued_bytes_total: probe * 80,
            ..Limits::default()
        });
        for (conn, name) in [(US, "us"), (UK, "uk"), (FR, "fr")] {
            r.handle_connected(T0, conn, id(name)).unwrap();
        }
        for conn in [US, UK, FR] {
            let _ = drain(&mut r, conn, Lane::Control);
        }
        Self { r, probe }
    }

    fn quota(&self) -> u64 {
        self.probe * 10
    }

    /// Offers one envelope of 100 sealed bytes; returns the reply to it.
    fn offer(&mut self, conn: ConnId, from: &str, to: &str, p: Precedence, seq: u64) -> Frame {
        let env = Bytes::from(testing::envelope(from, to, p, seq, p, 100));
        assert_eq!(
            env.len() as u64,
            self.probe,
            "every envelope here is the same size"
        );
        self.r.receive(T0, conn, env);
        let mut replies: Vec<Frame> = drain_frames(&mut self.r, conn, Lane::Control)
            .into_iter()
            .filter(|f| !matches!(f, Frame::Presence(_)))
            .collect();
        assert_eq!(replies.len(), 1, "{replies:?}");
        replies.remove(0)
    }

    /// Offers envelopes seq 1, 2, ... until one is refused; returns how many were accepted and
    /// the refusal.
    fn flood(&mut self, conn: ConnId, from: &str, to: &str, p: Precedence) -> (u64, Refusal) {
        for seq in 1..=100 {
            match self.offer(conn, from, to, p, seq) {
                Frame::Accepted(_) => {}
                Frame::Refused(refusal) => return (seq - 1, refusal),
                other => panic!("{other:?}"),
            }
        }
        panic!("{from} was never refused");
    }
}

fn is_accepted(frame: &Frame) -> bool {
    matches!(frame, Frame::Accepted(Accepted { durable: true, .. }))
}

#[test]
fn budget_refuses_the_heaviest_sender_first_while_a_quiet_pair_gets_through() {
    let mut b = BudgetBed::new();
    let budget = b.probe * 80;
    // us floods its offline partner: within its quota, then borrowing, until refused.
    let (us_accepted, refusal) = b.flood(US, "us", "jp", R);
    let us_used = b.r.queued_bytes_from(&id("us"));
    assert_eq!(us_used, us_accepted * b.probe);
    assert!(us_used > b.quota(), "us borrowed past its quota: {us_used}");
    assert!(us_used < budget, "the per-destination bound played no part");
    assert_eq!(refusal.code, RefusalCode::Overloaded);
    assert!(
        refusal
            .detail
            .contains(&format!("relay budget {budget} bytes"))
            && refusal
                .detail
                .contains(&format!("us holds {us_used} bytes")),
        "the detail names the budget and the sender's usage: {}",
        refusal.detail
    );
    // uk also goes past its quota, but it is lighter than us: its routine still gets in.
    for seq in 1..=15 {
        assert!(
            is_accepted(&b.offer(UK, "uk", "fr", R, seq)),
            "uk seq {seq}"
        );
    }
    assert!(b.r.queued_bytes_from(&id("uk")) > b.quota());
    // us, the heaviest, is still refused, on routine and priority alike.
    for p in [R, P] {
        let reply = b.offer(US, "us", "jp", p, 90);
        assert_eq!(refusals(&[reply]), [RefusalCode::Overloaded], "{p}");
    }
    // fr, quiet and within its quota, gets routine and flash through.
    assert!(is_accepted(&b.offer(FR, "fr", "uk", R, 1)));
    assert!(is_accepted(&b.offer(FR, "fr", "uk", F, 1)));
    assert!(b.r.queued_envelope_bytes() <= budget);
    assert!(b.r.counter_drift().is_empty(), "{:?}", b.r.counter_drift());
}

#[test]
fn a_flash_within_its_quota_is_accepted_at_the_edge_of_the_budget() {
    let mut b = BudgetBed::new();
    let budget = b.probe * 80;
    // us takes everything it can borrow, flash included: its flash is refused only once
    // nothing is left to borrow.
    let (_, routine) = b.flood(US, "us", "jp", R);
    assert_eq!(routine.code, RefusalCode::Overloaded);
    let (flashes, refusal) = b.flood(US, "us", "jp", F);
    assert!(
        flashes > 0,
        "flash outlasts routine for a sender past its quota"
    );
    assert_eq!(refusal.code, RefusalCode::Overloaded);
    // The edge: what is queued plus the other three quotas, held free, leaves no envelope's
    // room.
    let owed = 3 * b.quota();
    let total = b.r.queued_envelope_bytes();
    assert!(
        total + owed <= budget && total + owed + b.probe > budget,
        "{total}"
    );
    // uk, within its quota, still gets its flash in, and all of its quota after it.
    assert!(is_accepted(&b.offer(UK, "uk", "fr", F, 1)));
    for seq in 1..10 {
        assert!(
            is_accepted(&b.offer(UK, "uk", "fr", R, seq)),
            "uk seq {seq}"
        );
    }
    assert_eq!(b.r.queued_bytes_from(&id("uk")), b.quota());
    assert!(b.r.queued_envelope_bytes() <= budget);
}

#[test]
fn budget_refusals_drop_nothing_already_accepted() {
    let mut b = BudgetBed::new();
    let (accepted_r, _) = b.flood(US, "us", "jp", R);
    let (accepted_f, _) = b.flood(US, "us", "jp", F);
    // More refusals, from both lanes; none of them may touch what is queued.
    let before = b.r.queued_envelopes(&id("jp"));
    for seq in 50..60 {
        assert!(!is_accepted(&b.offer(US, "us", "jp", R, seq)));
        assert!(!is_accepted(&b.offer(US, "us", "jp", F, seq)));
    }
    assert_eq!(b.r.queued_envelopes(&id("jp")), before);
    assert_eq!(before.len() as u64, accepted_r + accepted_f);
    // jp connects: every accepted envelope is written to it, the flashes and the routine ones.
    b.r.handle_connected(T0, JP, id("jp")).unwrap();
    let flash = drain(&mut b.r, JP, Lane::Precedence(F));
    let routine = drain(&mut b.r, JP, Lane::Precedence(R));
    assert_eq!(flash.len() as u64, accepted_f);
    assert_eq!(routine.len() as u64, accepted_r);
    // Its receipts free the budget, and us is accepted again.
    b.r.receive(T0, JP, delivered("jp", "us", R, accepted_r));
    b.r.receive(T0, JP, delivered("jp", "us", F, accepted_f));
    let _ = drain(&mut b.r, JP, Lane::Control);
    let _ = drain(&mut b.r, US, Lane::Control); // the receipts
    assert_eq!(b.r.queued_bytes_from(&id("us")), 0);
    assert_eq!(b.r.queued_envelope_bytes(), 0);
    assert!(is_accepted(&b.offer(US, "us", "jp", R, accepted_r + 1)));
    assert!(b.r.counter_drift().is_empty(), "{:?}", b.r.counter_drift());
}

#[test]
fn receipts_wait_for_an_offline_addressee() {
    let mut r = router();
    r.handle_connected(T0, JP, id("jp")).unwrap();
    let receipt = delivered("jp", "us", R, 1);
    r.receive(T0, JP, receipt.clone());
    r.receive(T0, JP, link_test("jp", "us")); // offline partner: dropped
    r.handle_connected(T0, US, id("us")).unwrap();
    let frames = drain(&mut r, US, Lane::Control);
    assert_eq!(frames.len(), 2, "presence, then the receipt: {frames:?}");
    assert_eq!(frames[1], receipt);
}

#[test]
fn receipt_being_written_when_the_connection_drops_is_kept() {
    let mut r = both_connected();
    let _ = drain(&mut r, US, Lane::Control);
    let receipt = delivered("jp", "us", R, 1);
    r.receive(T0, JP, receipt.clone());
    let _ = commit(&mut r);
    let t = r.poll_transmit(US, Lane::Control).unwrap();
    r.handle_disconnected(US);
    r.handle_written(US, t); // too late: that connection is gone
    let us2 = ConnId(7);
    r.handle_connected(T0, us2, id("us")).unwrap();
    assert_eq!(drain(&mut r, us2, Lane::Control)[1], receipt);
}

#[test]
fn link_tests_go_to_online_partners_only() {
    let mut r = both_connected();
    let _ = drain(&mut r, JP, Lane::Control);
    let lt = link_test("us", "jp");
    r.receive(T0, US, lt.clone());
    assert_eq!(drain(&mut r, JP, Lane::Control), [lt]);
}

#[test]
fn malformed_frames_are_refused_and_the_connection_kept() {
    let mut r = us_connected();
    let mut garbage = vec![0, 0, 0, 5, PROTOCOL_VERSION, 1, 0xFF, 0xFF, 0xFF];
    r.receive(T0, US, Bytes::from(garbage.clone()));
    garbage[5] = 9; // unknown suite
    r.receive(T0, US, Bytes::from(garbage));
    r.receive(
        T0,
        US,
        encode(&Frame::Presence(Presence {
            endpoint: id("us"),
            online: true,
        })),
    );
    let hello = encode(&Frame::Hello(Hello {
        version: 1,
        agent: "again".into(),
    }));
    r.receive(T0, US, hello);
    let frames = drain_frames(&mut r, US, Lane::Control);
    assert_eq!(refusals(&frames), [RefusalCode::Malformed; 3]);
    assert_eq!(frames.len(), 3, "a repeated hello is ignored");
    r.receive(T0, US, envelope("us", "jp", R, 1));
    assert_eq!(drain_frames(&mut r, US, Lane::Control), [accepted(1, R)]);
}

#[test]
fn a_new_connection_replaces_the_old_one() {
    let mut r = router();
    r.handle_connected(T0, US, id("us")).unwrap();
    let _ = outputs(&mut r);
    let us2 = ConnId(8);
    r.handle_connected(T0, us2, id("us")).unwrap();
    assert!(outputs(&mut r).contains(&Output::Close { conn: US, by: us2 }));
    // Frames and the late disconnect of the old connection change nothing.
    r.receive(T0, US, envelope("us", "jp", R, 1));
    r.handle_disconnected(US);
    assert!(r.queued_envelopes(&id("jp")).is_empty());
    assert_eq!(r.endpoint_of(us2), Some(&id("us")));
    assert_eq!(r.stats().connections, 1);
}

/// Connects `n` connections of `us` in turn, `step` apart from `at`, each displacing the one
/// before; returns the last time used.
fn flip(r: &mut Router, ids: std::ops::Range<u64>, at: Time, step: Duration) -> Time {
    let mut now = at;
    for (i, c) in ids.enumerate() {
        now = at.plus(step * i as u32);
        let before = r.connection_of(&id("us"));
        r.handle_connected(now, ConnId(c), id("us")).unwrap();
        let closes: Vec<Output> = outputs(r)
            .into_iter()
            .filter(|o| matches!(o, Output::Close { .. }))
            .collect();
        match before {
            Some(old) => assert_eq!(
                closes,
                [Output::Close {
                    conn: old,
                    by: ConnId(c)
                }]
            ),
            None => assert!(closes.is_empty(), "{closes:?}"),
        }
    }
    now
}

#[test]
fn a_second_connection_displaces_the_first_and_each_flip_is_a_close() {
    let mut r = router();
    // First connection, then three displacements a second apart: each closes the one before.
    let last = flip(&mut r, 10..14, T0, Duration::from_secs(1));
    assert_eq!(r.connection_of(&id("us")), Some(ConnId(13)));
    assert_eq!(r.stats().connections, 1);
    // The displaced connections are unregistered: their frames and disconnects change nothing.
    r.handle_disconnected(ConnId(12));
    assert_eq!(r.endpoint_of(ConnId(13)), Some(&id("us")));
    assert!(last > T0);
}

#[test]
fn a_flapping_identity_keeps_the_live_connection_and_refuses_newcomers_until_the_backoff_ends() {
    let limits = IdentityLimits::default();
    let mut r = router();
    // Connection 10, then 3 flips (11, 12, 13) within the window.
    let t = flip(&mut r, 10..14, T0, Duration::from_secs(1));
    // The fourth newcomer is refused; 13 (the live one) is kept and nothing is closed.
    let refused = r.handle_connected(t.plus(Duration::from_secs(1)), ConnId(14), id("us"));
    let until = t.plus(Duration::from_secs(1)).plus(limits.backoff);
    assert_eq!(
        refused,
        Err(ConnectError::IdentityInUse {
            endpoint: id("us"),
            kept: ConnId(13),
            until,
        })
    );
    assert!(
        !outputs(&mut r)
            .iter()
            .any(|o| matches!(o, Output::Close { .. }))
    );
    assert_eq!(r.connection_of(&id("us")), Some(ConnId(13)));
    assert_eq!(r.endpoint_of(ConnId(14)), None);
    // Refused for the whole back-off, however often it retries.
    let just_before = Time(until.0 - 1);
    assert!(matches!(
        r.handle_connected(just_before, ConnId(15), id("us")),
        Err(ConnectError::IdentityInUse {
            kept: ConnId(13),
            ..
        })
    ));
    assert_eq!(r.connection_of(&id("us")), Some(ConnId(13)));
    // Once it ends, a newcomer displaces the live one again.
    r.handle_connected(until, ConnId(16), id("us")).unwrap();
    assert!(outputs(&mut r).contains(&Output::Close {
        conn: ConnId(13),
        by: ConnId(16),
    }));
    assert_eq!(r.connection_of(&id("us")), Some(ConnId(16)));
}

#[test]
fn flips_spread_wider_than_the_window_are_never_refused() {
    let limits = IdentityLimits::default();
    let mut r = router();
    // Twenty flips, each a window apart: never three within one window.
    let t = flip(&mut r, 10..30, T0, limits.window);
    assert_eq!(r.connection_of(&id("us")), Some(ConnId(29)));
    assert!(t > T0);
}

#[test]
fn a_newcomer_while_no_connection_is_live_is_accepted_even_during_a_backoff() {
    let mut r = router();
    let t = flip(&mut r, 10..14, T0, Duration::from_secs(1));
    assert!(r.handle_connected(t, ConnId(14), id("us")).is_err());
    // The kept connection goes away: the identity is free, back-off or not.
    r.handle_disconnected(ConnId(13));
    r.handle_connected(t, ConnId(15), id("us")).unwrap();
    assert_eq!(r.connection_of(&id("us")), Some(ConnId(15)));
    // Other identities never were affected.
    r.handle_connected(t, JP, id("jp")).unwrap();
}

#[test]
fn repeated_flapping_doubles_the_backoff_up_to_the_cap_and_quiet_resets_it() {
    let limits = IdentityLimits {
        flips: 1,
        window: Duration::from_secs(30),
        backoff: Duration::from_secs(60),
        max_backoff: Duration::from_secs(200),
    };
    let mut r = router_with(Limits {
        identity: limits,
        ..Limits::default()
    });
    r.handle_connected(T0, ConnId(10), id("us")).unwrap();
    let mut now = T0;
    let mut next = 11;
    let mut backoffs = Vec::new();
    for _ in 0..4 {
        // One flip is tolerated, the next newcomer starts a back-off.
        r.handle_connected(now, ConnId(next), id("us")).unwrap();
        let Err(ConnectError::IdentityInUse { until, .. }) =
            r.handle_connected(now, ConnId(next + 1), id("us"))
        else {
            panic!("second newcomer accepted");
        };
        backoffs.push(until.since(now));
        now = until;
        next += 2;
    }
    let secs: Vec<u64> = backoffs.iter().map(Duration::as_secs).collect();
    assert_eq!(secs, [60, 120, 200, 200]);
    // Quiet for the longest back-off: the next one starts from the base again.
    now = now.plus(limits.max_backoff);
    r.handle_connected(now, ConnId(next), id("us")).unwrap();
    let Err(ConnectError::IdentityInUse { until, .. }) =
        r.handle_connected(now, ConnId(next + 1), id("us"))
    else {
        panic!("second newcomer accepted");
    };
    assert_eq!(until.since(now), limits.backoff);
}

#[test]
fn unconfigured_endpoints_and_bad_configs_are_refused() {
    let mut r = router();
    assert_eq!(
        r.handle_connected(T0, US, id("xx")),
        Err(ConnectError::NotConfigured(id("xx")))
    );
    assert_eq!(
        Router::new(&[(id("us"), id("us"))], Limits::default()).unwrap_err(),
        RouterConfigError::SelfPaired(id("us"))
    );
    assert_eq!(
        Router::new(&[], Limits::default()).unwrap_err(),
        RouterConfigError::NoHotlines
    );
    let pair = [(id("us"), id("jp"))];
    for (limits, err) in [
        (
            Limits {
                max_queue_bytes: 0,
                ..Limits::default()
            },
            RouterConfigError::ZeroQueueBound,
        ),
        (
            Limits {
                max_queued_bytes_total: 0,
                ..Limits::default()
            },
            RouterConfigError::ZeroBudget,
        ),
    ] {
        assert_eq!(Router::new(&pair, limits).unwrap_err(), err);
    }
}

#[test]
fn queued_byte_counts_stay_exact() {
    let mut r = us_connected();
    let a = envelope("us", "jp", R, 1);
    let b = Bytes::from(testing::envelope("us", "jp", R, 1, F, 16));
    r.receive(T0, US, a);
    r.receive(T0, US, b.clone());
    let _ = drain(&mut r, US, Lane::Control);
    assert_eq!(r.queued_bytes(&id("jp")), b.len() as u64);
    r.handle_connected(T0, JP, id("jp")).unwrap();
    r.receive(T0, JP, delivered("jp", "us", R, 1));
    // The receipt waits on us's control stream; jp's queue is empty.
    let _ = drain(&mut r, JP, Lane::Control);
    assert_eq!(r.queued_bytes(&id("jp")), 0);
    let _ = drain(&mut r, US, Lane::Control);
    assert_eq!(r.queued_bytes(&id("us")), 0);
    assert_eq!(r.stats().queued_bytes, [0; 5]);
}

// Durability: writes, deferred replies, time-to-live, restore.

/// The writes emitted so far, without committing them; other outputs are kept.
fn take_writes(r: &mut Router) -> Vec<(CommitId, Vec<StoreOp>)> {
    let mut writes = Vec::new();
    let mut kept = VecDeque::new();
    for o in r.outputs.drain(..) {
        match o {
            Output::Persist { write, ops, .. } => writes.push((write, ops)),
            o => kept.push_back(o),
        }
    }
    r.outputs = kept;
    writes
}

/// Frames waiting on `conn`'s control stream, without committing anything.
fn pending_control(r: &mut Router, conn: ConnId) -> Vec<Frame> {
    let mut out = Vec::new();
    while let Some(t) = r.poll_transmit(conn, Lane::Control) {
        out.push(decode(&t.bytes));
        r.handle_written(conn, t);
    }
    out
}

/// A store that never fails, kept in memory: what the router's writes leave behind.
#[derive(Debug, Default)]
struct MemStore {
    envelopes: BTreeMap<u64, StoredEnvelope>,
    control: BTreeMap<u64, StoredControl>,
    announcements: BTreeMap<EndpointId, StoredAnnouncement>,
}

impl MemStore {
    fn apply(&mut self, ops: Vec<StoreOp>) {
        for op in ops {
            match op {
                StoreOp::PutEnvelope(e) => {
                    self.envelopes.insert(e.order, e);
                }
                StoreOp::DeleteEnvelope { order } => {
                    self.envelopes.remove(&order);
                }
                StoreOp::PutControl(c) => {
                    self.control.insert(c.key, c);
                }
                StoreOp::DeleteControl { key } => {
                    self.control.remove(&key);
                }
                StoreOp::PutAnnouncement(a) => {
                    self.announcements.insert(a.endpoint.clone(), a);
                }
            }
        }
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            // Reversed: restore must not depend on the order rows come back in.
            envelopes: self.envelopes.values().rev().cloned().collect(),
            control: self.control.values().rev().cloned().collect(),
            announcements: self.announcements.values().cloned().collect(),
        }
    }
}

/// Commits everything `r` has written into a [`MemStore`] and restores `fresh` from it.
fn restore_from(r: &mut Router, mut fresh: Router) -> (Router, Restored) {
    let mut store = MemStore::default();
    store.apply(commit(r));
    let restored = fresh.restore(store.snapshot()).unwrap();
    (fresh, restored)
}

/// `r` with us connected and `frames` from us handled at `T0`, committed; then `fresh`
/// restored from what it wrote, as by [`restore_from`].
fn restored_after(mut r: Router, frames: &[Bytes], fresh: Router) -> (Router, Restored) {
    r.handle_connected(T0, US, id("us")).unwrap();
    for f in frames {
        r.receive(T0, US, f.clone());
    }
    restore_from(&mut r, fresh)
}

/// Handles `frame` from `conn` at `T0` and commits; returns the order of the one envelope row
/// that wrote (panics, showing the writes, if it wrote anything else).
fn order_written(r: &mut Router, conn: ConnId, frame: Bytes) -> u64 {
    r.receive(T0, conn, frame);
    let ops = commit(r);
    match &ops[..] {
        [StoreOp::PutEnvelope(e)] => e.order,
        _ => panic!("{ops:?}"),
    }
}

fn with_ttl(ttl: Ttl) -> Router {
    router_with(Limits {
        ttl,
        ..Limits::default()
    })
}

const SECOND: Duration = Duration::from_secs(1);
const P: Precedence = Precedence::Priority;

#[test]
fn accepted_is_durable_and_waits_for_the_write_that_holds_the_envelope() {
    let mut r = us_connected();
    let env = envelope("us", "jp", R, 1);
    r.receive(T0, US, env.clone());
    let writes = take_writes(&mut r);
    assert_eq!(writes.len(), 1);
    let (write, ops) = &writes[0];
    let [StoreOp::PutEnvelope(stored)] = &ops[..] else {
        panic!("{ops:?}")
    };
    assert_eq!(stored.destination, id("jp"));
    assert_eq!(stored.lane, R);
    assert_eq!(stored.queued_at, T0);
    assert_eq!(stored.bytes, env);
    assert!(
        pending_control(&mut r, US).is_empty(),
        "nothing before commit"
    );

    // A duplicate while the first write is pending waits too, even though it writes nothing.
    r.receive(T0, US, env);
    assert!(take_writes(&mut r).is_empty());
    assert!(pending_control(&mut r, US).is_empty());

    r.handle_persisted(*write);
    assert_eq!(r.committed(), *write);
    assert_eq!(
        pending_control(&mut r, US),
        [accepted(1, R), accepted(1, R)]
    );
    let Frame::Accepted(a) = accepted(1, R) else {
        unreachable!()
    };
    assert!(a.durable);

    // Once everything is committed, a duplicate's Accepted leaves at once.
    r.receive(T0, US, envelope("us", "jp", R, 1));
    assert!(take_writes(&mut r).is_empty());
    assert_eq!(pending_control(&mut r, US), [accepted(1, R)]);
}

#[test]
fn a_commit_releases_every_earlier_write_in_order() {
    let mut r = us_connected();
    for seq in 1..=3 {
        r.receive(T0, US, envelope("us", "jp", R, seq));
    }
    r.receive(T0, US, envelope("us", "jp", F, 1));
    let writes = take_writes(&mut r);
    let ids: Vec<u64> = writes.iter().map(|(w, _)| w.0).collect();
    assert_eq!(ids, [1, 2, 3, 4]);
    r.handle_persisted(CommitId(2));
    assert_eq!(
        pending_control(&mut r, US),
        [accepted(1, R), accepted(2, R)]
    );
    // One group commit covering the rest.
    r.handle_persisted(CommitId(4));
    assert_eq!(
        pending_control(&mut r, US),
        [accepted(3, R), accepted(1, F)]
    );
    // A late report of an older write changes nothing.
    r.handle_persisted(CommitId(1));
    assert_eq!(r.committed(), CommitId(4));
}

#[test]
fn a_refused_envelope_writes_nothing_and_is_answered_at_once() {
    let mut r = us_connected();
    r.receive(T0, US, envelope("us", "uk", R, 1));
    assert!(take_writes(&mut r).is_empty());
    assert_eq!(
        refusals(&pending_control(&mut r, US)),
        [RefusalCode::NotPaired]
    );
}

#[test]
fn delivered_receipt_is_stored_with_its_deletions_and_forwarded_before_the_commit() {
    let mut r = both_connected();
    r.receive(T0, US, envelope("us", "jp", R, 1));
    r.receive(T0, US, envelope("us", "jp", R, 2));
    let _ = drain(&mut r, US, Lane::Control);
    assert_eq!(drain(&mut r, JP, Lane::Precedence(R)).len(), 2);

    let receipt = delivered("jp", "us", R, 2);
    r.receive(T0, JP, receipt.clone());
    let writes = take_writes(&mut r);
    assert_eq!(
        writes.len(),
        1,
        "one write: deletions and the stored receipt"
    );
    let (write, ops) = &writes[0];
    assert!(matches!(
        &ops[..],
        [
            StoreOp::DeleteEnvelope { order: 0 },
            StoreOp::DeleteEnvelope { order: 1 },
            StoreOp::PutControl(c),
        ] if c.addressee == id("us") && c.bytes == receipt
    ));
    let StoreOp::PutControl(c) = &ops[2] else {
        unreachable!()
    };
    // Forwarded while its write commits (the partner's signed word needs no relay fsync).
    let t = r.poll_transmit(US, Lane::Control).unwrap();
    assert_eq!(t.bytes, receipt);
    r.handle_written(US, t);
    assert!(
        take_writes(&mut r).is_empty(),
        "its row is not deleted before the put commits"
    );
    r.handle_persisted(*write);
    // The put committed: now its row goes.
    let writes = take_writes(&mut r);
    assert_eq!(writes.len(), 1);
    assert_eq!(writes[0].1, [StoreOp::DeleteControl { key: c.key }]);
}

#[test]
fn a_receipt_written_after_its_commit_deletes_its_row_at_once() {
    let mut r = both_connected();
    r.receive(T0, US, envelope("us", "jp", R, 1));
    let _ = drain(&mut r, US, Lane::Control);
    let _ = drain(&mut r, JP, Lane::Precedence(R));
    let receipt = delivered("jp", "us", R, 1);
    r.receive(T0, JP, receipt.clone());
    let writes = take_writes(&mut r);
    let Some(StoreOp::PutControl(c)) = writes[0].1.last() else {
        panic!("the receipt is stored: {:?}", writes[0].1)
    };
    let key = c.key;
    r.handle_persisted(writes[0].0);
    let t = r.poll_transmit(US, Lane::Control).unwrap();
    assert_eq!(t.bytes, receipt);
    r.handle_written(US, t);
    let writes = take_writes(&mut r);
    assert_eq!(writes.len(), 1);
    assert_eq!(writes[0].1, [StoreOp::DeleteControl { key }]);
}

#[test]
fn announcements_are_stored() {
    let mut r = router();
    r.handle_connected(T0, US, id("us")).unwrap();
    let a = announcement("us", 3);
    r.receive(T0, US, a.clone());
    let ops = commit(&mut r);
    assert_eq!(
        ops,
        [StoreOp::PutAnnouncement(StoredAnnouncement {
            endpoint: id("us"),
            epoch: 3,
            bytes: a
        })]
    );
}

#[test]
fn expired_envelope_is_freed_and_its_sender_told() {
    let mut r = with_ttl(Ttl {
        routine: Some(60 * SECOND),
        ..Ttl::NEVER
    });
    r.handle_connected(T0, US, id("us")).unwrap();
    let _ = drain(&mut r, US, Lane::Control);
    let env = envelope("us", "jp", R, 1);
    r.receive(T0, US, env.clone());
    r.receive(T0.plus(10 * SECOND), US, envelope("us", "jp", R, 2));
    r.receive(T0, US, envelope("us", "jp", F, 1)); // flash: no time-to-live
    let _ = drain(&mut r, US, Lane::Control);
    let deadline = T0.plus(60 * SECOND);
    assert_eq!(r.poll_timeout(), Some(deadline));
    assert_eq!(r.queued_envelopes(&id("jp"))[0].expires_at, Some(deadline));

    // Early: nothing happens.
    r.handle_timeout(T0.plus(59 * SECOND));
    assert!(take_writes(&mut r).is_empty());
    assert_eq!(r.queued_envelopes(&id("jp")).len(), 3);

    let before = r.queued_bytes(&id("jp"));
    r.handle_timeout(deadline);
    let writes = take_writes(&mut r);
    assert_eq!(writes.len(), 1);
    let ops = &writes[0].1;
    assert!(
        matches!(&ops[..], [StoreOp::DeleteEnvelope { order: 0 }, StoreOp::PutControl(c)]
            if c.addressee == id("us")),
        "{ops:?}"
    );
    assert_eq!(r.queued_bytes(&id("jp")), before - env.len() as u64);
    assert_eq!(r.poll_timeout(), Some(T0.plus(70 * SECOND)));
    assert!(r.outputs.contains(&Output::Refused {
        conn: None,
        code: RefusalCode::Expired
    }));
    // The refusal leaves once stored.
    assert!(pending_control(&mut r, US).is_empty());
    r.handle_persisted(writes[0].0);
    let frames = pending_control(&mut r, US);
    let [Frame::Refused(refusal)] = &frames[..] else {
        panic!("{frames:?}")
    };
    assert_eq!(refusal.code, RefusalCode::Expired);
    assert_eq!(
        refusal.id.as_ref().map(|m| (m.precedence, m.seq)),
        Some((R, Seq(1)))
    );
    assert!(refusal.detail.contains("jp"), "{}", refusal.detail);
    let left: Vec<_> = r
        .queued_envelopes(&id("jp"))
        .into_iter()
        .map(|q| (q.id.precedence, q.id.seq))
        .collect();
    assert_eq!(left, [(R, Seq(2)), (F, Seq(1))]);
}

#[test]
fn expired_refusal_waits_for_an_offline_sender() {
    let mut r = with_ttl(Ttl {
        routine: Some(SECOND),
        ..Ttl::NEVER
    });
    r.handle_connected(T0, US, id("us")).unwrap();
    r.receive(T0, US, envelope("us", "jp", R, 1));
    let _ = drain(&mut r, US, Lane::Control);
    r.handle_disconnected(US);
    r.handle_timeout(T0.plus(SECOND));
    let _ = commit(&mut r);
    assert!(r.queued_envelopes(&id("jp")).is_empty());
    assert_eq!(r.poll_timeout(), None);
    let us2 = ConnId(5);
    r.handle_connected(T0, us2, id("us")).unwrap();
    let frames = drain_frames(&mut r, us2, Lane::Control);
    assert_eq!(refusals(&frames), [RefusalCode::Expired]);
}

#[test]
fn escalation_moves_the_expiry_to_the_new_lane_and_delivery_clears_it() {
    let mut r = with_ttl(Ttl {
        routine: Some(60 * SECOND),
        priority: Some(600 * SECOND),
        ..Ttl::NEVER
    });
    r.handle_connected(T0, US, id("us")).unwrap();
    r.receive(T0, US, envelope("us", "jp", R, 1));
    r.receive(T0, US, envelope("us", "jp", R, 2));
    // Escalated to priority later on: its time-to-live is priority's, from its first arrival.
    r.receive(
        T0.plus(30 * SECOND),
        US,
        Bytes::from(testing::envelope("us", "jp", R, 1, P, 16)),
    );
    let ops = commit(&mut r);
    assert!(matches!(
        ops.last(),
        Some(StoreOp::PutEnvelope(e)) if e.order == 0 && e.lane == P && e.queued_at == T0
    ));
    let q = r.queued_envelopes(&id("jp"));
    assert_eq!(q[0].expires_at, Some(T0.plus(600 * SECOND)));
    assert_eq!(r.poll_timeout(), Some(T0.plus(60 * SECOND)));

    r.handle_connected(T0, JP, id("jp")).unwrap();
    r.receive(T0, JP, delivered("jp", "us", R, 2));
    let _ = commit(&mut r);
    assert_eq!(
        r.poll_timeout(),
        None,
        "delivered envelopes leave the expiry index"
    );
    r.handle_timeout(T0.plus(3600 * SECOND));
    assert!(take_writes(&mut r).is_empty());
}

#[test]
fn restore_reproduces_queues_lanes_and_waiting_frames() {
    let mut r = router();
    r.handle_connected(T0, US, id("us")).unwrap();
    // Interleaved lanes; seq 2 escalated to flash after seq 3 arrived.
    r.receive(T0, US, envelope("us", "jp", R, 1));
    r.receive(T0, US, envelope("us", "jp", R, 2));
    r.receive(T0, US, envelope("us", "jp", F, 1));
    r.receive(T0, US, envelope("us", "jp", R, 3));
    r.receive(
        T0,
        US,
        Bytes::from(testing::envelope("us", "jp", R, 2, F, 16)),
    );
    r.receive(T0, US, envelope("us", "jp", P, 1));
    r.receive(T0, US, announcement("us", 4));
    // While us is away, jp reports us's routine seq 1 delivered and sends us a message.
    r.handle_disconnected(US);
    r.handle_connected(T0, JP, id("jp")).unwrap();
    r.receive(T0, JP, envelope("jp", "us", R, 1));
    r.receive(T0, JP, delivered("jp", "us", R, 1));
    r.receive(T0, JP, announcement("jp", 2));
    let (mut fresh, restored) = restore_from(&mut r, router());

    let lanes = |r: &mut Router, conn: ConnId| -> Vec<(Lane, Vec<Bytes>)> {
        Lane::ALL[1..]
            .iter()
            .map(|s| (*s, drain(r, conn, *s)))
            .collect()
    };
    assert_eq!(
        restored.envelopes, 5,
        "4 of us's messages for jp, jp's one for us"
    );
    assert_eq!(restored.control, 1, "the receipt waiting for us");
    assert_eq!(restored.announcements, 2);
    assert!(restored.unconfigured.is_empty());
    assert_eq!(
        fresh
            .queued_envelopes(&id("jp"))
            .iter()
            .map(|q| (q.id.clone(), q.transport))
            .collect::<Vec<_>>(),
        r.queued_envelopes(&id("jp"))
            .iter()
            .map(|q| (q.id.clone(), q.transport))
            .collect::<Vec<_>>(),
    );
    // Lanes only: the original's control queues also hold frames for its live connections.
    assert_eq!(fresh.stats().queued_bytes[1..], r.stats().queued_bytes[1..]);
    assert_eq!(
        fresh.stats().queued_frames[1..],
        r.stats().queued_frames[1..]
    );

    // Same lanes, same order, byte for byte, as the original would write them now.
    let us2 = ConnId(10);
    r.handle_connected(T0, us2, id("us")).unwrap();
    fresh.handle_connected(T0, us2, id("us")).unwrap();
    let original_us = drain(&mut r, us2, Lane::Control);
    let restored_us = drain(&mut fresh, us2, Lane::Control);
    // Presence differs (jp is online in the original only); then jp's announcement, the receipt.
    assert_eq!(restored_us.len(), 3);
    assert_eq!(restored_us[1..], original_us[1..]);
    assert_eq!(
        drain(&mut fresh, us2, Lane::Precedence(R)),
        [envelope("jp", "us", R, 1)]
    );
    r.handle_disconnected(JP);
    let jp2 = ConnId(11);
    r.handle_connected(T0, jp2, id("jp")).unwrap();
    fresh.handle_connected(T0, jp2, id("jp")).unwrap();
    let expected = lanes(&mut r, jp2);
    let got = lanes(&mut fresh, jp2);
    assert_eq!(got, expected);
    let seqs = |bytes: &[Bytes]| -> Vec<(Precedence, u64)> {
        bytes
            .iter()
            .map(|b| match decode(b) {
                Frame::Envelope(e) => (e.envelope.header.precedence, e.envelope.header.seq.0),
                f => panic!("{f:?}"),
            })
            .collect()
    };
    // Escalated routine seq 2 keeps its first arrival, which is before flash seq 1.
    assert_eq!(
        seqs(&got[0].1),
        [(R, 2), (F, 1)],
        "flash lane in arrival order"
    );
    assert_eq!(seqs(&got[2].1), [(P, 1)]);
    assert_eq!(seqs(&got[3].1), [(R, 3)], "seq 1 was delivered");
    assert_eq!(
        drain(&mut fresh, jp2, Lane::Control)[1],
        announcement("us", 4)
    );

    // New envelopes get orders after the restored ones.
    assert_eq!(
        order_written(&mut fresh, us2, envelope("us", "jp", R, 4)),
        6
    );
}

#[test]
fn restore_keeps_rows_of_unconfigured_endpoints_out_of_the_queues() {
    let r = Router::new(
        &[(id("us"), id("jp")), (id("us"), id("de"))],
        Limits::default(),
    )
    .unwrap();
    // de's hotline was removed from the configuration.
    let (mut fresh, restored) = restored_after(
        r,
        &[envelope("us", "de", R, 1), envelope("us", "jp", R, 1)],
        router(),
    );
    assert_eq!(restored.envelopes, 1);
    assert_eq!(restored.unconfigured, [(id("de"), 1)]);
    // Its row's order is not reused.
    fresh.handle_connected(T0, US, id("us")).unwrap();
    assert_eq!(order_written(&mut fresh, US, envelope("us", "jp", R, 2)), 2);
}

#[test]
fn restore_applies_the_time_to_live_from_the_first_arrival() {
    let ttl = with_ttl(Ttl {
        routine: Some(SECOND),
        ..Ttl::NEVER
    });
    let (mut fresh, _) = restored_after(router(), &[envelope("us", "jp", R, 1)], ttl);
    assert_eq!(fresh.poll_timeout(), Some(T0.plus(SECOND)));
    fresh.handle_timeout(T0.plus(3600 * SECOND));
    let ops = commit(&mut fresh);
    assert!(matches!(
        &ops[..],
        [StoreOp::DeleteEnvelope { order: 0 }, StoreOp::PutControl(_)]
    ));
}

#[test]
fn restore_refuses_what_the_router_never_writes() {
    let stored = |order, destination: &str, bytes: Bytes| StoredEnvelope {
        order,
        destination: id(destination),
        lane: R,
        queued_at: T0,
        bytes,
    };
    let restore = |envelopes| {
        router().restore(Snapshot {
            envelopes,
            ..Snapshot::default()
        })
    };
    assert!(matches!(
        restore(vec![stored(3, "us", envelope("us", "jp", R, 1))]),
        Err(SnapshotError::Misaddressed { order: 3, .. })
    ));
    assert!(matches!(
        restore(vec![stored(4, "jp", link_test("us", "jp"))]),
        Err(SnapshotError::NotAnEnvelope { order: 4 })
    ));
    assert_eq!(
        restore(vec![
            stored(1, "jp", envelope("us", "jp", R, 1)),
            stored(2, "jp", envelope("us", "jp", R, 1)),
        ]),
        Err(SnapshotError::DuplicateEnvelope {
            first: 1,
            second: 2
        })
    );
    let mut used = router();
    used.handle_connected(T0, US, id("us")).unwrap();
    used.receive(T0, US, envelope("us", "jp", R, 1));
    assert_eq!(
        used.restore(Snapshot::default()),
        Err(SnapshotError::NotFresh)
    );
}

#[test]
fn uncommitted_bytes_are_counted_per_connection_and_stream_until_the_commit() {
    let mut r = both_connected();
    let a = envelope("us", "jp", R, 1);
    let b = envelope("us", "jp", F, 1);
    let c = envelope("jp", "us", R, 1);
    r.receive(T0, US, a.clone());
    r.receive(T0, US, b.clone());
    r.receive(T0, US, a.clone()); // a duplicate writes nothing
    r.receive(T0, JP, c.clone());
    let stream = |p| Lane::Precedence(p);
    assert_eq!(r.uncommitted_bytes(US, stream(R)), a.len() as u64);
    assert_eq!(r.uncommitted_bytes(US, stream(F)), b.len() as u64);
    assert_eq!(r.uncommitted_bytes(US, stream(P)), 0);
    assert_eq!(r.uncommitted_bytes(JP, stream(R)), c.len() as u64);
    let writes = take_writes(&mut r);
    r.handle_persisted_writes(&[writes[0].0]);
    assert_eq!(r.uncommitted_bytes(US, stream(R)), 0);
    assert_eq!(r.uncommitted_bytes(US, stream(F)), b.len() as u64);
    assert_eq!(
        r.uncommitted_bytes(JP, stream(R)),
        c.len() as u64,
        "jp's own"
    );
    r.handle_persisted(writes[2].0);
    assert_eq!(r.uncommitted_bytes(US, stream(F)), 0);
    assert_eq!(r.uncommitted_bytes(JP, stream(R)), 0);
    // A stored receipt counts against the control stream it came on.
    let receipt = delivered("jp", "us", R, 1);
    r.receive(T0, JP, receipt.clone());
    assert_eq!(r.uncommitted_bytes(JP, Lane::Control), receipt.len() as u64);
}

#[test]
fn receipts_overtake_queued_replies_on_the_control_stream() {
    let mut r = both_connected();
    let _ = drain(&mut r, US, Lane::Control);
    // A burst of envelopes from us leaves `Accepted` replies queued on us's control stream.
    for seq in 1..=5 {
        r.receive(T0, US, envelope("us", "jp", R, seq));
    }
    let _ = commit(&mut r);
    let receipt = delivered("jp", "us", R, 1);
    r.receive(T0, JP, receipt.clone());
    let _ = commit(&mut r);
    let frames = drain(&mut r, US, Lane::Control);
    assert_eq!(
        frames.first(),
        Some(&receipt),
        "the receipt goes before the queued replies"
    );
}

#[test]
fn control_bytes_stay_exact_when_a_frame_being_written_is_requeued() {
    let mut r = both_connected();
    let _ = drain(&mut r, US, Lane::Control);
    let receipt = delivered("jp", "us", R, 1);
    r.receive(T0, JP, receipt.clone());
    let _ = commit(&mut r);
    let t = r.poll_transmit(US, Lane::Control).unwrap();
    assert_eq!(r.control_backlog(US), receipt.len() as u64);
    // The connection drops mid-write: the receipt goes back to the queue, counted once.
    r.handle_disconnected(US);
    assert_eq!(r.queued_bytes(&id("us")), receipt.len() as u64);
    r.handle_written(US, t);
    // Again on the next connection, then written: nothing left counted.
    let us2 = ConnId(7);
    r.handle_connected(T0, us2, id("us")).unwrap();
    let t = r.poll_transmit(us2, Lane::Control).unwrap(); // jp's presence
    r.handle_connected(T0, ConnId(8), id("us")).unwrap();
    r.handle_written(us2, t);
    assert!(r.counter_drift().is_empty(), "{:?}", r.counter_drift());
    assert!(drain(&mut r, ConnId(8), Lane::Control).contains(&receipt));
    assert_eq!(r.queued_bytes(&id("us")), 0);
    assert_eq!(r.control_backlog(ConnId(8)), 0);
}

/// Refusals told to `conn`, with their details, and the wrong-stream outputs emitted so far.
fn wrong_stream_refusals(r: &mut Router, conn: ConnId) -> (Vec<Refusal>, Vec<Output>) {
    let wrong = outputs(r)
        .into_iter()
        .filter(|o| matches!(o, Output::WrongStream { .. }))
        .collect();
    let refusals = drain_frames(r, conn, Lane::Control)
        .into_iter()
        .filter_map(|f| match f {
            Frame::Refused(refusal) => Some(refusal),
            _ => None,
        })
        .collect();
    (refusals, wrong)
}

#[test]
fn frames_on_the_wrong_stream_are_refused_and_counted() {
    let mut r = both_connected();
    let _ = drain(&mut r, US, Lane::Control);
    let _ = drain(&mut r, JP, Lane::Control);
    let _ = outputs(&mut r);
    let flash = envelope("us", "jp", F, 1);
    // A flash envelope on the control stream, then on the routine stream.
    r.handle_frame(T0, US, Lane::Control, flash.clone());
    r.handle_frame(T0, US, Lane::Precedence(R), flash);
    let (refused, wrong) = wrong_stream_refusals(&mut r, US);
    let details: Vec<&str> = refused.iter().map(|f| f.detail.as_str()).collect();
    assert_eq!(
        details,
        [
            "envelope for lane flash arrived on stream control",
            "envelope for lane flash arrived on stream routine"
        ]
    );
    for f in &refused {
        assert_eq!(f.code, RefusalCode::Malformed);
        assert_eq!(f.id, Some(testing::message_id("us", F, 1)));
    }
    assert_eq!(
        wrong,
        [
            Output::WrongStream {
                conn: US,
                expected: Lane::Precedence(F),
                arrived: Lane::Control
            },
            Output::WrongStream {
                conn: US,
                expected: Lane::Precedence(F),
                arrived: Lane::Precedence(R)
            }
        ]
    );
    // An escalated copy belongs on its raised transport lane, not its precedence's.
    r.handle_frame(
        T0,
        US,
        Lane::Precedence(R),
        Bytes::from(testing::envelope("us", "jp", R, 1, F, 16)),
    );
    // Control frames on a lane stream.
    r.handle_frame(T0, US, Lane::Precedence(F), delivered("us", "jp", R, 1));
    r.handle_frame(T0, US, Lane::Precedence(F), announcement("us", 1));
    r.handle_frame(T0, US, Lane::Precedence(R), link_test("us", "jp"));
    let (refused, wrong) = wrong_stream_refusals(&mut r, US);
    assert_eq!(refused.len(), 4, "{refused:?}");
    assert_eq!(wrong.len(), 4, "{wrong:?}");
    assert_eq!(
        refused[1].detail,
        "receipt frame arrived on stream flash; it belongs on control"
    );
    // Nothing was routed, queued or stored.
    assert!(r.queued_envelopes(&id("jp")).is_empty());
    assert!(drain(&mut r, JP, Lane::Control).is_empty());
    assert!(commit(&mut r).is_empty());
    assert_eq!(r.queued_bytes(&id("jp")), 0);
}

#[test]
fn frames_on_their_own_stream_are_accepted() {
    let mut r = both_connected();
    let _ = drain(&mut r, JP, Lane::Control);
    r.handle_frame(T0, US, Lane::Precedence(F), envelope("us", "jp", F, 1));
    r.handle_frame(T0, US, Lane::Precedence(R), envelope("us", "jp", R, 1));
    // Escalated: precedence routine, transport flash, on the flash stream.
    let escalated = Bytes::from(testing::envelope("us", "jp", R, 1, F, 16));
    r.handle_frame(T0, US, Lane::Precedence(F), escalated.clone());
    let receipt = delivered("us", "jp", R, 1);
    r.handle_frame(T0, US, Lane::Control, receipt.clone());
    let (refused, wrong) = wrong_stream_refusals(&mut r, US);
    assert!(refused.is_empty(), "{refused:?}");
    assert!(wrong.is_empty(), "{wrong:?}");
    assert_eq!(drain(&mut r, JP, Lane::Control), [receipt]);
    let flash = drain(&mut r, JP, Lane::Precedence(F));
    assert_eq!(flash, [envelope("us", "jp", F, 1), escalated]);
}

mod isolation;
