//! The audit log's verification: every way a log can be altered is named, and nothing else.

use hotline_proto::envelope::{Receipt, ReceiptKind};
use hotline_proto::{Channel, Precedence, Seq};

use super::*;

const T: Time = Time(1_700_000_000_000_000);

fn own() -> IdentityKey {
    IdentityKey::from_seed(&[1; 32])
}

fn partner() -> IdentityKey {
    IdentityKey::from_seed(&[2; 32])
}

fn us() -> EndpointId {
    EndpointId::new("us").unwrap()
}

fn jp() -> EndpointId {
    EndpointId::new("jp").unwrap()
}

/// A log of `n` link-state entries, correctly chained, with our heads signed at `signed_at`
/// lengths and one partner head.
fn log(n: u64, signed_at: &[u64]) -> AuditData {
    let mut entries = Vec::new();
    let mut prev = Digest::default();
    for index in 0..n {
        let entry = AuditEntry {
            index,
            at: Time(T.0 + index),
            prev,
            event: AuditEvent::LinkState {
                state: format!("state {index}"),
            },
        };
        let hash = entry.hash();
        prev = hash;
        entries.push(StoredEntry { entry, hash });
    }
    let heads = signed_at
        .iter()
        .map(|&len| {
            let head = entries[len as usize - 1].hash;
            SignedHead::sign(&own(), &us(), len, head, Time(T.0 + len))
        })
        .collect();
    let partner_heads = vec![Signed::sign(
        LinkTest {
            from: jp(),
            to: us(),
            seq: 1,
            at: T,
            audit_len: 7,
            audit_head: Digest::default(),
        },
        &partner(),
    )];
    AuditData {
        entries,
        heads,
        partner_heads,
    }
}

fn check(data: &AuditData) -> Option<String> {
    verify(data, &own().public(), &partner().public()).first_bad
}

/// Rewrites record `i`'s event and recomputes its own stored hash, as a forger who knows the
/// hash function would; the next record still names the old hash.
fn rewrite_and_rehash(data: &mut AuditData, i: usize) {
    let stored = &mut data.entries[i];
    stored.entry.event = AuditEvent::LinkState {
        state: "forged".into(),
    };
    stored.hash = stored.entry.hash();
}

#[test]
fn an_intact_log_verifies() {
    let data = log(8, &[3, 8]);
    let report = verify(&data, &own().public(), &partner().public());
    assert_eq!(report.first_bad, None);
    assert_eq!(
        (report.entries, report.signed_heads, report.partner_heads),
        (8, 2, 1)
    );
}

#[test]
fn a_rehashed_middle_record_inside_a_signed_span_breaks_the_link_to_the_next() {
    let mut data = log(8, &[8]);
    rewrite_and_rehash(&mut data, 3);
    let bad = check(&data).expect("the edit is found");
    assert!(bad.starts_with("record 4: chain broken"), "{bad}");
}

#[test]
fn a_rehashed_record_in_the_unsigned_tail_breaks_the_link_to_the_next() {
    let mut data = log(8, &[3]);
    rewrite_and_rehash(&mut data, 5);
    let bad = check(&data).expect("the edit is found");
    assert!(bad.starts_with("record 6: chain broken"), "{bad}");
}

#[test]
fn an_edited_record_without_a_new_hash_is_content_altered() {
    let mut data = log(5, &[5]);
    data.entries[2].entry.event = AuditEvent::LinkState {
        state: "forged".into(),
    };
    assert_eq!(
        check(&data).as_deref(),
        Some("record 2: content altered (hash mismatch)")
    );
}

#[test]
fn a_removed_record_is_out_of_place() {
    let mut data = log(5, &[]);
    data.entries.remove(1);
    let bad = check(&data).expect("the removal is found");
    assert!(bad.starts_with("record 1: index 2 out of place"), "{bad}");
}

#[test]
fn a_chain_rewritten_consistently_no_longer_matches_the_signed_head() {
    let mut data = log(6, &[6]);
    // Rewrite from record 2 on, relinking every later record: the chain is consistent, but
    // the signed head names the old hash of record 5.
    rewrite_and_rehash(&mut data, 2);
    for i in 3..6 {
        data.entries[i].entry.prev = data.entries[i - 1].hash;
        data.entries[i].hash = data.entries[i].entry.hash();
    }
    let bad = check(&data).expect("the rewrite is found");
    assert!(bad.contains("records before it were rewritten"), "{bad}");
}

#[test]
fn a_truncated_log_is_named_by_the_head_beyond_it() {
    let mut data = log(6, &[6]);
    data.entries.truncate(4);
    let bad = check(&data).expect("the truncation is found");
    assert!(
        bad.contains("the log has only 4 records (truncated)"),
        "{bad}"
    );
}

#[test]
fn a_head_signed_by_another_key_is_refused() {
    let mut data = log(4, &[4]);
    let forged = SignedHead::sign(&partner(), &us(), 4, data.entries[3].hash, T);
    assert!(!forged.verify(&own().public()));
    data.heads = vec![forged];
    assert_eq!(
        check(&data).as_deref(),
        Some("signed head at length 4: bad signature")
    );
}

#[test]
fn a_signature_covers_the_length_the_hash_the_time_and_the_signer() {
    let data = log(6, &[]);
    let genuine = SignedHead::sign(&own(), &us(), 3, data.entries[2].hash, T);
    assert!(genuine.verify(&own().public()));
    let moved = |edit: &dyn Fn(&mut SignedHead)| {
        let mut h = genuine.clone();
        edit(&mut h);
        h.verify(&own().public())
    };
    assert!(!moved(&|h| {
        h.len = 6;
        h.head = data.entries[5].hash;
    }));
    assert!(!moved(&|h| h.at = Time(T.0 + 1)));
    assert!(!moved(&|h| h.endpoint = jp()));
    assert!(!moved(&|h| h.head = Digest::default()));

    // In a log: a head moved to cover a longer (rewritten) log fails its signature.
    let mut data = log(6, &[3]);
    data.heads[0].len = 6;
    data.heads[0].head = data.entries[5].hash;
    assert_eq!(
        check(&data).as_deref(),
        Some("signed head at length 6: bad signature")
    );
}

#[test]
fn a_partner_head_with_a_bad_signature_is_refused() {
    let mut data = log(3, &[3]);
    data.partner_heads[0].body.audit_len = 99;
    assert_eq!(
        check(&data).as_deref(),
        Some("partner head at length 99: bad signature")
    );
    let mut data = log(3, &[3]);
    data.partner_heads = vec![Signed::sign(data.partner_heads[0].body.clone(), &own())];
    assert!(check(&data).is_some(), "signed by the wrong key");
}

#[test]
fn operator_acknowledgements_and_receipts_enter_the_log() {
    let id = MessageId {
        sender: jp(),
        channel: Channel::default(),
        precedence: Precedence::Flash,
        seq: Seq(4),
    };
    let receipt = Signed::sign(
        Receipt {
            from: us(),
            to: jp(),
            channel: Channel::default(),
            precedence: Precedence::Flash,
            kind: ReceiptKind::Acknowledged {
                seq: Seq(4),
                hash: Digest::default(),
            },
            at: T,
        },
        &own(),
    );
    assert_eq!(
        events_of(&Record::OperatorAck {
            id: id.clone(),
            receipt: receipt.clone(),
        }),
        [AuditEvent::OperatorAcknowledged {
            id: "jp:main:flash:4".into()
        }]
    );
    assert_eq!(
        events_of(&Record::ReceiptReceived(receipt)),
        [AuditEvent::ReceiptReceived {
            kind: "acknowledged".into(),
            id: "jp:main:flash:4".into(),
            at: crate::time::format_time(T),
        }]
    );
    assert_eq!(
        events_of(&Record::PartnerEscalated {
            id,
            level: Precedence::Flash
        }),
        [AuditEvent::PartnerRealert {
            id: "jp:main:flash:4".into(),
            level: "flash".into()
        }]
    );
}

fn envelope(sender: &EndpointId, seq: u64) -> hotline_proto::envelope::Envelope {
    use hotline_proto::crypto::SessionId;
    use hotline_proto::envelope::{Envelope, Header};
    Envelope {
        header: Header {
            sender: sender.clone(),
            recipient: if *sender == us() { jp() } else { us() },
            channel: Channel::default(),
            precedence: Precedence::Immediate,
            seq: Seq(seq),
            after: [0, 0, seq - 1, 0],
            epoch: 1,
            session: SessionId([5; 16]),
            prev: Digest::default(),
            sealed_len: 4,
        },
        sealed: vec![1, 2, 3, 4],
    }
}

#[test]
fn sent_received_and_escalated_messages_enter_the_log_with_their_hashes() {
    use hotline_proto::engine::Delivery;

    let out = envelope(&us(), 1);
    let sent = AuditEvent::EnvelopeSent {
        id: "us:main:immediate:1".into(),
        hash: out.hash().to_hex(),
    };
    let id = out.header.message_id();
    let outgoing = Record::Outgoing {
        id: id.clone(),
        after: out.header.after,
        sent_at: T,
        body: None,
        envelope: Some(out.clone()),
    };
    assert_eq!(events_of(&outgoing), std::slice::from_ref(&sent));
    let awaiting = Record::Outgoing {
        id: id.clone(),
        after: out.header.after,
        sent_at: T,
        body: Some(b"secret".to_vec()),
        envelope: None,
    };
    assert_eq!(events_of(&awaiting), [], "nothing sealed yet, nothing sent");
    let sealed = Record::Sealed {
        id: id.clone(),
        envelope: out,
    };
    assert_eq!(events_of(&sealed), std::slice::from_ref(&sent));
    // The engine's own hash is taken as given, not computed again.
    let given = Digest::of(Domain::EnvelopeHash, &[b"given"]);
    assert_eq!(
        events_of_hashed(&sealed, Some(given)),
        [AuditEvent::EnvelopeSent {
            id: "us:main:immediate:1".into(),
            hash: given.to_hex(),
        }]
    );
    assert_eq!(events_of_hashed(&sealed, None), [sent]);

    let inbound = envelope(&jp(), 2);
    let received = Record::Received {
        delivery: Delivery {
            id: inbound.header.message_id(),
            to: us(),
            sent_at: T,
            received_at: T,
            relay_transport: Precedence::Flash,
            body: b"hello".to_vec(),
        },
        envelope: inbound.clone(),
        head: None,
    };
    assert_eq!(
        events_of(&received),
        [AuditEvent::EnvelopeReceived {
            id: "jp:main:immediate:2".into(),
            hash: inbound.hash().to_hex(),
            transport: "flash".into(),
        }]
    );

    for (kind, name) in [
        (DeadlineKind::Delivered, "delivered"),
        (DeadlineKind::Acknowledged, "acknowledged"),
    ] {
        let escalated = Record::Escalated {
            id: id.clone(),
            kind,
            to: Precedence::Flash,
            at: T,
        };
        assert_eq!(
            events_of(&escalated),
            [AuditEvent::Escalated {
                id: "us:main:immediate:1".into(),
                deadline: name.into(),
                to: "flash".into(),
            }]
        );
    }
}
