//! The receive side's per-message state stays within the settled history, and what compaction
//! forgets never breaks acknowledgements, restarts, duplicate answers or equivocation alarms.

use std::time::Duration;

use super::util::{Pair, Side};
use super::{Flash, Routine, feed, levels, rogue_envelopes};
use crate::engine::{AckError, AckLevel, AlarmKind, EngineConfig, Record, WriteId};
use crate::envelope::{Envelope, VerifyError};
use crate::types::MessageId;
use crate::wire::{EnvelopeFrame, Frame};

fn history(n: u64) -> EngineConfig {
    let mut cfg = EngineConfig::default();
    cfg.set_settled_history(n).unwrap();
    cfg
}

/// The envelope of B's stored `Received` record for `id`.
fn stored_envelope(pair: &Pair, id: &MessageId) -> Envelope {
    pair.b
        .durable
        .iter()
        .find_map(|r| match r {
            Record::Received { envelope, .. } if envelope.header.message_id() == *id => {
                Some(envelope.clone())
            }
            _ => None,
        })
        .unwrap()
}

/// B's operator acknowledges `id` as the node shell does it: from the stored envelope when the
/// engine forgot the message.
fn ack(pair: &mut Pair, id: &MessageId) -> Result<WriteId, AckError> {
    let now = pair.now;
    match pair.b.engine.acknowledge(now, id) {
        Err(AckError::Forgotten(_)) => {
            let envelope = stored_envelope(pair, id);
            pair.b.engine.acknowledge_stored(now, &envelope)
        }
        other => other,
    }
}

#[test]
fn settled_messages_beyond_the_history_are_forgotten_and_still_acknowledged() {
    let mut pair = Pair::new(history(3), 31);
    let ids: Vec<_> = (0..10)
        .map(|i| pair.send(Side::A, Routine, &format!("m{i}")))
        .collect();
    pair.settle(Duration::from_secs(1));
    assert_eq!(pair.b.delivered_ids(), ids);
    assert_eq!(pair.b.engine.inbound.held(), 3);
    assert!(matches!(
        pair.b.engine.acknowledge(pair.now, &ids[0]),
        Err(AckError::Forgotten(_))
    ));
    ack(&mut pair, &ids[0]).unwrap();
    ack(&mut pair, &ids[9]).unwrap();
    pair.settle(Duration::from_secs(1));
    for id in [&ids[0], &ids[9]] {
        assert!(
            levels(&pair, id).contains(&AckLevel::Acknowledged),
            "{id}: {:?}",
            levels(&pair, id)
        );
    }
    assert!(pair.a.alarms.is_empty() && pair.b.alarms.is_empty());
    assert_eq!(pair.b.engine.inbound.held(), 3);

    // Not ours to acknowledge: a lane position never delivered, or content other than the
    // delivered message's while its hash is still on record.
    let mut beyond = stored_envelope(&pair, &ids[9]);
    beyond.header.seq = ids[9].seq.next();
    assert!(matches!(
        pair.b.engine.acknowledge_stored(pair.now, &beyond),
        Err(AckError::Unknown(_))
    ));
    let mut altered = stored_envelope(&pair, &ids[1]);
    altered.sealed[0] ^= 1;
    assert!(matches!(
        pair.b.engine.acknowledge_stored(pair.now, &altered),
        Err(AckError::Unknown(_))
    ));

    // A restart replays an acknowledgement of a forgotten message and stays bounded.
    pair.crash(Side::B);
    assert_eq!(pair.b.engine.inbound.held(), 3);
    assert!(matches!(
        pair.b.engine.acknowledge(pair.now, &ids[0]),
        Err(AckError::Forgotten(_))
    ));
    assert!(matches!(
        pair.b.engine.acknowledge(pair.now, &ids[9]),
        Err(AckError::AlreadyAcknowledged(_))
    ));
}

#[test]
fn messages_awaiting_acknowledgement_are_kept_until_acknowledged() {
    let mut pair = Pair::new(history(2), 32);
    let ids: Vec<_> = (0..6)
        .map(|i| pair.send(Side::A, Flash, &format!("f{i}")))
        .collect();
    pair.settle(Duration::from_secs(1));
    assert_eq!(pair.b.delivered_ids(), ids);
    assert_eq!(pair.b.engine.inbound.held(), 6);
    assert_eq!(pair.b.engine.status().pending_operator_acks.len(), 6);
    for id in &ids {
        pair.b.engine.acknowledge(pair.now, id).unwrap();
    }
    pair.settle(Duration::from_secs(1));
    assert_eq!(pair.b.engine.inbound.held(), 2);
    assert!(pair.b.engine.status().pending_operator_acks.is_empty());
    for id in &ids {
        assert!(levels(&pair, id).contains(&AckLevel::Acknowledged));
    }
    // The newest two are still known as acknowledged; older ones are the inbox's word.
    assert!(matches!(
        pair.b.engine.acknowledge(pair.now, &ids[5]),
        Err(AckError::AlreadyAcknowledged(_))
    ));
    assert!(matches!(
        pair.b.engine.acknowledge(pair.now, &ids[0]),
        Err(AckError::Forgotten(_))
    ));
}

#[test]
fn forgotten_messages_still_get_duplicate_answers_and_equivocation_alarms() {
    let mut pair = Pair::new(history(1), 33);
    let m1 = pair.send(Side::A, Routine, "original");
    pair.send(Side::A, Routine, "second");
    pair.send(Side::A, Routine, "third");
    pair.settle(Duration::from_secs(1));
    assert_eq!(pair.b.engine.inbound.held(), 1);
    assert!(matches!(
        pair.b.engine.acknowledge(pair.now, &m1),
        Err(AckError::Forgotten(_))
    ));
    // An identical duplicate of the forgotten first message: answered silently.
    let duplicate = EnvelopeFrame {
        envelope: stored_envelope(&pair, &m1),
        transport: Routine,
        head: None,
        setup: None,
    };
    assert_eq!(
        feed(&mut pair, Side::B, &Frame::Envelope(duplicate)),
        Ok(())
    );
    assert_eq!(pair.b.delivered.len(), 3);
    // Different content at its position: still an equivocation alarm.
    let forged = rogue_envelopes(&pair, &["forged one"]);
    assert_eq!(
        feed(&mut pair, Side::B, &Frame::Envelope(forged[0].clone())),
        Err(VerifyError::Equivocation(m1))
    );
    assert!(
        pair.b
            .engine
            .status()
            .alarms
            .iter()
            .any(|a| matches!(a.kind, AlarmKind::Security(VerifyError::Equivocation(_))))
    );
    assert_eq!(pair.b.delivered.len(), 3);
}
