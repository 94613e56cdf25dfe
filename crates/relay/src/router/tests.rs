#![allow(clippy::unwrap_used)]

use hotline_proto::crypto::{Digest, IdentityKey, SessionId};
use hotline_proto::envelope::{Announcement, Envelope, Header};
use hotline_proto::wire::Hello;
use hotline_proto::{Channel, Time};

use super::*;

fn id(s: &str) -> EndpointId {
    EndpointId::new(s).unwrap()
}

fn router_with(limits: Limits) -> Router {
    Router::new(&[(id("us"), id("jp")), (id("uk"), id("fr"))], limits).unwrap()
}

fn router() -> Router {
    router_with(Limits::default())
}

fn key() -> IdentityKey {
    IdentityKey::from_seed(&[7; 32])
}

fn envelope_sized(
    sender: &str,
    recipient: &str,
    precedence: Precedence,
    seq: u64,
    transport: Precedence,
    sealed: usize,
) -> Bytes {
    let header = Header {
        sender: id(sender),
        recipient: id(recipient),
        channel: Channel::default(),
        precedence,
        seq: Seq(seq),
        after: [0; 4],
        epoch: 1,
        session: SessionId([1; 16]),
        prev: Digest::default(),
        sealed_len: sealed as u32,
    };
    encode(&Frame::Envelope(EnvelopeFrame {
        transport,
        envelope: Envelope {
            header,
            sealed: vec![0xAB; sealed],
        },
        head: None,
        setup: None,
    }))
}

fn envelope(sender: &str, recipient: &str, precedence: Precedence, seq: u64) -> Bytes {
    envelope_sized(sender, recipient, precedence, seq, precedence, 16)
}

fn delivered(from: &str, to: &str, precedence: Precedence, upto: u64) -> Bytes {
    let receipt = Receipt {
        from: id(from),
        to: id(to),
        channel: Channel::default(),
        precedence,
        kind: ReceiptKind::Delivered {
            upto: Seq(upto),
            head: Digest::default(),
        },
        at: Time(1),
    };
    encode(&Frame::Receipt(Signed::sign(receipt, &key())))
}

fn announcement(endpoint: &str, epoch: u32) -> Bytes {
    let ann = Announcement {
        endpoint: id(endpoint),
        identity: key().public(),
        epoch,
        suite: 1,
        sealing_key: vec![epoch as u8; 32],
        expires_at: Time(10),
    };
    encode(&Frame::Announcement(Signed::sign(ann, &key())))
}

fn link_test(from: &str, to: &str) -> Bytes {
    let lt = LinkTest {
        from: id(from),
        to: id(to),
        seq: 1,
        at: Time(1),
        audit_len: 0,
        audit_head: Digest::default(),
    };
    encode(&Frame::LinkTest(Signed::sign(lt, &key())))
}

fn decode(bytes: &Bytes) -> Frame {
    wire::decode_frame(bytes).unwrap().0
}

/// Everything the writer of `stream` would write now, reported as written.
fn drain(r: &mut Router, conn: ConnId, stream: Stream) -> Vec<Bytes> {
    let mut out = Vec::new();
    while let Some(t) = r.poll_transmit(conn, stream) {
        out.push(t.bytes.clone());
        r.handle_written(conn, t);
    }
    out
}

fn drain_frames(r: &mut Router, conn: ConnId, stream: Stream) -> Vec<Frame> {
    drain(r, conn, stream).iter().map(decode).collect()
}

fn outputs(r: &mut Router) -> Vec<Output> {
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
        durable: false,
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

const US: ConnId = ConnId(1);
const JP: ConnId = ConnId(2);
const R: Precedence = Precedence::Routine;
const F: Precedence = Precedence::Flash;

#[test]
fn queued_envelope_is_written_when_the_destination_connects() {
    let mut r = router();
    r.handle_connected(US, id("us")).unwrap();
    let _ = drain(&mut r, US, Stream::Control);
    let env = envelope("us", "jp", R, 1);
    r.handle_frame(US, env.clone());
    assert_eq!(drain_frames(&mut r, US, Stream::Control), [accepted(1, R)]);
    assert_eq!(r.queued_envelopes(&id("jp")).len(), 1);

    r.handle_connected(JP, id("jp")).unwrap();
    let wakes = outputs(&mut r);
    assert!(wakes.contains(&Output::Wake {
        conn: JP,
        stream: Stream::Lane(R)
    }));
    // Byte for byte, on the lane of its transport precedence.
    assert_eq!(drain(&mut r, JP, Stream::Lane(R)), [env]);
    assert!(drain(&mut r, JP, Stream::Lane(F)).is_empty());
    // Written is not delivered: still queued.
    assert_eq!(r.queued_envelopes(&id("jp"))[0].state, ItemState::Written);
}

#[test]
fn duplicates_are_queued_once_and_accepted_each_time() {
    let mut r = router();
    r.handle_connected(US, id("us")).unwrap();
    let _ = drain(&mut r, US, Stream::Control);
    for _ in 0..3 {
        r.handle_frame(US, envelope("us", "jp", R, 1));
    }
    assert_eq!(
        drain_frames(&mut r, US, Stream::Control),
        [accepted(1, R), accepted(1, R), accepted(1, R)]
    );
    assert_eq!(r.queued_envelopes(&id("jp")).len(), 1);
    r.handle_connected(JP, id("jp")).unwrap();
    assert_eq!(drain(&mut r, JP, Stream::Lane(R)).len(), 1);
}

#[test]
fn escalation_moves_the_queued_copy_to_the_higher_lane() {
    let mut r = router();
    r.handle_connected(US, id("us")).unwrap();
    r.handle_connected(JP, id("jp")).unwrap();
    r.handle_frame(US, envelope("us", "jp", R, 1));
    r.handle_frame(US, envelope("us", "jp", R, 2));
    assert_eq!(drain(&mut r, JP, Stream::Lane(R)).len(), 2);

    // Seq 1 is escalated to flash: written again on the flash lane, with the new bytes.
    let escalated = envelope_sized("us", "jp", R, 1, F, 16);
    r.handle_frame(US, escalated.clone());
    let _ = outputs(&mut r);
    let q = r.queued_envelopes(&id("jp"));
    assert_eq!((q[0].transport, q[0].state), (F, ItemState::Unwritten));
    assert_eq!((q[1].transport, q[1].state), (R, ItemState::Written));
    assert_eq!(drain(&mut r, JP, Stream::Lane(F)), [escalated]);
    assert!(drain(&mut r, JP, Stream::Lane(R)).is_empty());

    // A lower transport for a queued message changes nothing.
    r.handle_frame(US, envelope("us", "jp", R, 1));
    assert_eq!(r.queued_envelopes(&id("jp"))[0].transport, F);
    assert!(drain(&mut r, JP, Stream::Lane(R)).is_empty());
    assert!(drain(&mut r, JP, Stream::Lane(F)).is_empty());
    assert_eq!(r.stats().queued_frames[F.index()], 1);
    assert_eq!(r.stats().queued_frames[R.index()], 1);
}

#[test]
fn escalation_while_in_flight_is_written_again() {
    let mut r = router();
    r.handle_connected(US, id("us")).unwrap();
    r.handle_connected(JP, id("jp")).unwrap();
    r.handle_frame(US, envelope("us", "jp", R, 1));
    let t = r.poll_transmit(JP, Stream::Lane(R)).unwrap();
    r.handle_frame(US, envelope_sized("us", "jp", R, 1, F, 16));
    r.handle_written(JP, t);
    assert_eq!(r.queued_envelopes(&id("jp"))[0].state, ItemState::Unwritten);
    assert_eq!(drain(&mut r, JP, Stream::Lane(F)).len(), 1);
}

#[test]
fn delivered_receipt_deletes_covered_envelopes_and_reaches_the_sender() {
    let mut r = router();
    r.handle_connected(US, id("us")).unwrap();
    r.handle_connected(JP, id("jp")).unwrap();
    for seq in 1..=3 {
        r.handle_frame(US, envelope("us", "jp", R, seq));
    }
    r.handle_frame(US, envelope("us", "jp", F, 1));
    let _ = drain(&mut r, US, Stream::Control);
    let receipt = delivered("jp", "us", R, 2);
    r.handle_frame(JP, receipt.clone());
    let left: Vec<_> = r
        .queued_envelopes(&id("jp"))
        .into_iter()
        .map(|q| (q.id.precedence, q.id.seq))
        .collect();
    assert_eq!(left, [(R, Seq(3)), (F, Seq(1))]);
    assert_eq!(drain(&mut r, US, Stream::Control), [receipt]);
}

#[test]
fn reconnection_writes_everything_still_queued_again() {
    let mut r = router();
    r.handle_connected(US, id("us")).unwrap();
    r.handle_connected(JP, id("jp")).unwrap();
    r.handle_frame(US, envelope("us", "jp", R, 1));
    r.handle_frame(US, envelope("us", "jp", R, 2));
    assert_eq!(drain(&mut r, JP, Stream::Lane(R)).len(), 2);
    r.handle_frame(JP, delivered("jp", "us", R, 1));
    r.handle_disconnected(JP);
    let jp2 = ConnId(3);
    r.handle_connected(jp2, id("jp")).unwrap();
    let again: Vec<_> = drain_frames(&mut r, jp2, Stream::Lane(R));
    assert_eq!(again.len(), 1);
    let Frame::Envelope(e) = &again[0] else {
        panic!("{again:?}")
    };
    assert_eq!(e.envelope.header.seq, Seq(2));
}

#[test]
fn wrong_sender_and_unpaired_recipient_are_refused() {
    let mut r = router();
    r.handle_connected(US, id("us")).unwrap();
    let _ = drain(&mut r, US, Stream::Control);
    r.handle_frame(US, envelope("jp", "us", R, 1));
    r.handle_frame(US, envelope("us", "uk", R, 1));
    r.handle_frame(US, delivered("jp", "us", R, 1)); // signed as jp
    r.handle_frame(US, delivered("us", "fr", R, 1)); // addressed outside the hotline
    r.handle_frame(US, announcement("jp", 1));
    r.handle_frame(US, link_test("us", "uk"));
    let frames = drain_frames(&mut r, US, Stream::Control);
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
    r.handle_connected(US, id("us")).unwrap();
    let presence = |endpoint: &str, online| {
        Frame::Presence(Presence {
            endpoint: id(endpoint),
            online,
        })
    };
    assert_eq!(
        drain_frames(&mut r, US, Stream::Control),
        [presence("jp", false)]
    );
    r.handle_connected(JP, id("jp")).unwrap();
    assert_eq!(
        drain_frames(&mut r, JP, Stream::Control),
        [presence("us", true)]
    );
    assert_eq!(
        drain_frames(&mut r, US, Stream::Control),
        [presence("jp", true)]
    );
    r.handle_disconnected(JP);
    assert_eq!(
        drain_frames(&mut r, US, Stream::Control),
        [presence("jp", false)]
    );
    // Unrelated hotlines hear nothing.
    let uk = ConnId(9);
    r.handle_connected(uk, id("uk")).unwrap();
    assert!(drain(&mut r, US, Stream::Control).is_empty());
}

#[test]
fn announcements_are_stored_and_replayed_to_partners() {
    let mut r = router();
    r.handle_connected(US, id("us")).unwrap();
    let a1 = announcement("us", 1);
    r.handle_frame(US, a1.clone());
    r.handle_frame(US, announcement("us", 0)); // older: ignored
    r.handle_disconnected(US);

    // jp connects while us is offline and still gets us's latest announcement.
    r.handle_connected(JP, id("jp")).unwrap();
    let frames = drain(&mut r, JP, Stream::Control);
    assert_eq!(frames.len(), 2, "presence, then the announcement");
    assert_eq!(frames[1], a1);

    // A newer one is forwarded to the online partner at once.
    let us2 = ConnId(5);
    r.handle_connected(us2, id("us")).unwrap();
    let _ = drain(&mut r, JP, Stream::Control);
    let a2 = announcement("us", 2);
    r.handle_frame(us2, a2.clone());
    assert_eq!(
        drain(&mut r, JP, Stream::Control),
        std::slice::from_ref(&a2)
    );
    r.handle_disconnected(JP);
    let jp2 = ConnId(6);
    r.handle_connected(jp2, id("jp")).unwrap();
    assert_eq!(drain(&mut r, jp2, Stream::Control)[1], a2);
}

#[test]
fn overload_refuses_routine_first_then_higher_lanes() {
    let probe = envelope_sized("us", "jp", R, 1, R, 100).len() as u64;
    // Room for exactly 10 envelopes of this size below the bound.
    let mut r = router_with(Limits {
        max_queue_bytes: probe * 10,
    });
    r.handle_connected(US, id("us")).unwrap();
    let _ = drain(&mut r, US, Stream::Control);
    let send = |r: &mut Router, p: Precedence, seq: u64| -> Frame {
        r.handle_frame(US, envelope_sized("us", "jp", p, seq, p, 100));
        let mut f = drain_frames(r, US, Stream::Control);
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
    r.handle_connected(JP, id("jp")).unwrap();
    r.handle_frame(JP, delivered("jp", "us", R, 10));
    let _ = drain(&mut r, US, Stream::Control); // presence and the receipt
    assert_eq!(send(&mut r, R, 11), accepted(11, R));
}

#[test]
fn receipts_wait_for_an_offline_addressee() {
    let mut r = router();
    r.handle_connected(JP, id("jp")).unwrap();
    let receipt = delivered("jp", "us", R, 1);
    r.handle_frame(JP, receipt.clone());
    r.handle_frame(JP, link_test("jp", "us")); // offline partner: dropped
    r.handle_connected(US, id("us")).unwrap();
    let frames = drain(&mut r, US, Stream::Control);
    assert_eq!(frames.len(), 2, "presence, then the receipt: {frames:?}");
    assert_eq!(frames[1], receipt);
}

#[test]
fn receipt_being_written_when_the_connection_drops_is_kept() {
    let mut r = router();
    r.handle_connected(US, id("us")).unwrap();
    r.handle_connected(JP, id("jp")).unwrap();
    let _ = drain(&mut r, US, Stream::Control);
    let receipt = delivered("jp", "us", R, 1);
    r.handle_frame(JP, receipt.clone());
    let t = r.poll_transmit(US, Stream::Control).unwrap();
    r.handle_disconnected(US);
    r.handle_written(US, t); // too late: that connection is gone
    let us2 = ConnId(7);
    r.handle_connected(us2, id("us")).unwrap();
    assert_eq!(drain(&mut r, us2, Stream::Control)[1], receipt);
}

#[test]
fn link_tests_go_to_online_partners_only() {
    let mut r = router();
    r.handle_connected(US, id("us")).unwrap();
    r.handle_connected(JP, id("jp")).unwrap();
    let _ = drain(&mut r, JP, Stream::Control);
    let lt = link_test("us", "jp");
    r.handle_frame(US, lt.clone());
    assert_eq!(drain(&mut r, JP, Stream::Control), [lt]);
}

#[test]
fn malformed_frames_are_refused_and_the_connection_kept() {
    let mut r = router();
    r.handle_connected(US, id("us")).unwrap();
    let _ = drain(&mut r, US, Stream::Control);
    let mut garbage = vec![0, 0, 0, 5, 1, 1, 0xFF, 0xFF, 0xFF];
    r.handle_frame(US, Bytes::from(garbage.clone()));
    garbage[5] = 9; // unknown suite
    r.handle_frame(US, Bytes::from(garbage));
    r.handle_frame(
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
    r.handle_frame(US, hello);
    let frames = drain_frames(&mut r, US, Stream::Control);
    assert_eq!(refusals(&frames), [RefusalCode::Malformed; 3]);
    assert_eq!(frames.len(), 3, "a repeated hello is ignored");
    r.handle_frame(US, envelope("us", "jp", R, 1));
    assert_eq!(drain_frames(&mut r, US, Stream::Control), [accepted(1, R)]);
}

#[test]
fn a_new_connection_replaces_the_old_one() {
    let mut r = router();
    r.handle_connected(US, id("us")).unwrap();
    let _ = outputs(&mut r);
    let us2 = ConnId(8);
    r.handle_connected(us2, id("us")).unwrap();
    assert!(outputs(&mut r).contains(&Output::Close {
        conn: US,
        reason: "replaced by a newer connection with the same identity",
    }));
    // Frames and the late disconnect of the old connection change nothing.
    r.handle_frame(US, envelope("us", "jp", R, 1));
    r.handle_disconnected(US);
    assert!(r.queued_envelopes(&id("jp")).is_empty());
    assert_eq!(r.endpoint_of(us2), Some(&id("us")));
    assert_eq!(r.stats().connections, 1);
}

#[test]
fn unconfigured_endpoints_and_bad_configs_are_refused() {
    let mut r = router();
    assert_eq!(
        r.handle_connected(US, id("xx")),
        Err(ConnectError::NotConfigured(id("xx")))
    );
    assert_eq!(
        Router::new(&[(id("us"), id("us"))], Limits::default()).unwrap_err(),
        ConfigError::SelfPaired(id("us"))
    );
    assert_eq!(
        Router::new(&[], Limits::default()).unwrap_err(),
        ConfigError::NoHotlines
    );
}

#[test]
fn queued_byte_counts_stay_exact() {
    let mut r = router();
    r.handle_connected(US, id("us")).unwrap();
    let _ = drain(&mut r, US, Stream::Control);
    let a = envelope("us", "jp", R, 1);
    let b = envelope_sized("us", "jp", R, 1, F, 16);
    r.handle_frame(US, a);
    r.handle_frame(US, b.clone());
    let _ = drain(&mut r, US, Stream::Control);
    assert_eq!(r.queued_bytes(&id("jp")), b.len() as u64);
    r.handle_connected(JP, id("jp")).unwrap();
    r.handle_frame(JP, delivered("jp", "us", R, 1));
    // The receipt waits on us's control stream; jp's queue is empty.
    let _ = drain(&mut r, JP, Stream::Control);
    assert_eq!(r.queued_bytes(&id("jp")), 0);
    let _ = drain(&mut r, US, Stream::Control);
    assert_eq!(r.queued_bytes(&id("us")), 0);
    assert_eq!(r.stats().queued_bytes, [0; 5]);
}
