//! The node's audit log: append-only, hash-chained, with signed heads.
//!
//! Every envelope sent and received (by hash, with its id), every receipt, escalation,
//! re-alert, link-state change, security alarm and alarm clearing becomes an [`AuditEntry`]
//! whose `prev` is the hash of the entry before it. The node periodically signs the head (length, hash) with its
//! identity key and keeps those [`SignedHead`]s; the head also rides in every signed link test,
//! and each side stores the partner's link tests, so either side can show the other's log was
//! not rewritten afterwards.
//!
//! [`verify`] recomputes the chain and names the first bad record: an edited record breaks
//! its own hash; a chain rewritten consistently from record k no longer matches the first
//! signed head after k.

use hotline_proto::crypto::{Digest, Domain, IdentityKey, IdentityPublicKey, Signature};
use hotline_proto::engine::{DeadlineKind, Record};
use hotline_proto::envelope::{LinkTest, ReceiptKind, Signed};
use hotline_proto::types::Time;
use hotline_proto::{EndpointId, MessageId};
use serde::{Deserialize, Serialize};

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
// Externally tagged: postcard cannot decode internally tagged enums.
#[serde(rename_all = "snake_case")]
pub enum AuditEvent {
    /// We sealed and queued an envelope.
    EnvelopeSent {
        /// Message id.
        id: String,
        /// Envelope hash.
        hash: String,
    },
    /// We received, verified and stored an envelope.
    EnvelopeReceived {
        /// Message id.
        id: String,
        /// Envelope hash.
        hash: String,
        /// Transport precedence it arrived at.
        transport: String,
    },
    /// A signed receipt from the partner.
    ReceiptReceived {
        /// `delivered` (cumulative up to `id`) or `acknowledged`.
        kind: String,
        /// Message id (the lane head for delivered).
        id: String,
        /// The partner's signed time.
        at: String,
    },
    /// Our operator acknowledged a message (signed receipt sent).
    OperatorAcknowledged {
        /// Message id.
        id: String,
    },
    /// One of our messages missed a deadline.
    Escalated {
        /// Message id.
        id: String,
        /// `delivered` or `acknowledged`.
        deadline: String,
        /// New transport precedence.
        to: String,
    },
    /// The partner re-alerted us.
    PartnerRealert {
        /// Message id.
        id: String,
        /// Its level now.
        level: String,
    },
    /// The link state changed.
    LinkState {
        /// `up`, `degraded`, `down`.
        state: String,
    },
    /// A security or configuration alarm.
    Alarm {
        /// Kind.
        kind: String,
        /// Detail.
        detail: String,
    },
    /// The partner's signed audit head arrived in a link test.
    PartnerHead {
        /// Partner log length.
        len: u64,
        /// Partner log head.
        head: String,
    },
    /// An operator cleared an alarm-book entry ([`crate::alarms`]). Last variant: postcard
    /// numbers variants by position, so new ones go at the end and old logs still verify.
    AlarmCleared {
        /// The entry's id.
        id: u64,
        /// Its kind.
        kind: String,
        /// Who cleared it (the local user).
        by: String,
        /// When (RFC 3339).
        at: String,
    },
}

/// One entry in the chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position, from 0.
    pub index: u64,
    /// When it was committed.
    pub at: Time,
    /// Hash of the previous entry (zero for the first).
    pub prev: Digest,
    /// What happened.
    pub event: AuditEvent,
}

impl AuditEntry {
    /// This entry's chain hash.
    pub fn hash(&self) -> Digest {
        Digest::of(
            Domain::AuditRecord,
            &[&hotline_proto::wire::encode_value(self)],
        )
    }
}

/// A stored entry: the entry and the hash recorded when it was appended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEntry {
    /// The entry.
    pub entry: AuditEntry,
    /// Its hash at append time.
    pub hash: Digest,
}

/// Our signature over the log head at some length.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedHead {
    /// Signer.
    pub endpoint: EndpointId,
    /// Number of entries covered.
    pub len: u64,
    /// Hash of entry `len - 1`.
    pub head: Digest,
    /// When signed.
    pub at: Time,
    /// Ed25519 over `Domain::AuditHead ‖ postcard((endpoint, len, head, at))`.
    pub signature: Signature,
}

fn head_payload(endpoint: &EndpointId, len: u64, head: &Digest, at: Time) -> Vec<u8> {
    hotline_proto::wire::encode_value(&(endpoint, len, head, at))
}

impl SignedHead {
    /// Signs a head.
    pub fn sign(
        key: &IdentityKey,
        endpoint: &EndpointId,
        len: u64,
        head: Digest,
        at: Time,
    ) -> Self {
        let signature = key.sign(Domain::AuditHead, &head_payload(endpoint, len, &head, at));
        Self {
            endpoint: endpoint.clone(),
            len,
            head,
            at,
            signature,
        }
    }

    /// Checks the signature.
    pub fn verify(&self, key: &IdentityPublicKey) -> bool {
        key.verify(
            Domain::AuditHead,
            &head_payload(&self.endpoint, self.len, &self.head, self.at),
            &self.signature,
        )
        .is_ok()
    }
}

/// The audit events a record implies.
pub fn events_of(record: &Record) -> Vec<AuditEvent> {
    events_of_hashed(record, None)
}

/// [`events_of`], taking the envelope's chain hash as the engine computed it
/// ([`hotline_proto::engine::Action::Persist`]'s `envelope_hash`) instead of hashing the
/// envelope again; `None` computes it.
pub fn events_of_hashed(record: &Record, envelope_hash: Option<Digest>) -> Vec<AuditEvent> {
    let hash_of = |e: &hotline_proto::envelope::Envelope| envelope_hash.unwrap_or_else(|| e.hash());
    match record {
        Record::Outgoing {
            id,
            envelope: Some(e),
            ..
        }
        | Record::Sealed { id, envelope: e } => {
            vec![AuditEvent::EnvelopeSent {
                id: id.to_string(),
                hash: hash_of(e).to_hex(),
            }]
        }
        Record::Received {
            delivery, envelope, ..
        } => vec![AuditEvent::EnvelopeReceived {
            id: delivery.id.to_string(),
            hash: hash_of(envelope).to_hex(),
            transport: delivery.relay_transport.to_string(),
        }],
        Record::ReceiptReceived(r) => {
            let b = &r.body;
            let (kind, seq) = match &b.kind {
                ReceiptKind::Delivered { upto, .. } => ("delivered", *upto),
                ReceiptKind::Acknowledged { seq, .. } => ("acknowledged", *seq),
            };
            let id = MessageId {
                sender: b.to.clone(),
                channel: b.channel.clone(),
                precedence: b.precedence,
                seq,
            };
            vec![AuditEvent::ReceiptReceived {
                kind: kind.into(),
                id: id.to_string(),
                at: crate::time::format_time(b.at),
            }]
        }
        Record::OperatorAck { id, .. } => {
            vec![AuditEvent::OperatorAcknowledged { id: id.to_string() }]
        }
        Record::Escalated { id, kind, to, .. } => vec![AuditEvent::Escalated {
            id: id.to_string(),
            deadline: match kind {
                DeadlineKind::Delivered => "delivered",
                DeadlineKind::Acknowledged => "acknowledged",
            }
            .into(),
            to: to.to_string(),
        }],
        Record::PartnerEscalated { id, level } => {
            vec![AuditEvent::PartnerRealert {
                id: id.to_string(),
                level: level.to_string(),
            }]
        }
        _ => Vec::new(),
    }
}

/// The result of [`verify`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Entries checked.
    pub entries: u64,
    /// Our signed heads checked.
    pub signed_heads: usize,
    /// Partner link tests (signed heads) checked.
    pub partner_heads: usize,
    /// The first problem found, naming the record or head.
    pub first_bad: Option<String>,
}

/// Everything `verify` needs, as read from the store.
#[derive(Debug)]
pub struct AuditData {
    /// Entries in order.
    pub entries: Vec<StoredEntry>,
    /// Our signed heads in order.
    pub heads: Vec<SignedHead>,
    /// Partner link tests carrying their heads.
    pub partner_heads: Vec<Signed<LinkTest>>,
}

/// Checks the chain, every signature, and the partner's signed heads.
pub fn verify(
    data: &AuditData,
    own_key: &IdentityPublicKey,
    partner_key: &IdentityPublicKey,
) -> VerifyReport {
    let mut report = VerifyReport {
        entries: data.entries.len() as u64,
        signed_heads: data.heads.len(),
        partner_heads: data.partner_heads.len(),
        first_bad: None,
    };
    let mut prev = Digest::default();
    // head_at[len] = hash of entry len-1 as recomputed.
    let mut head_at = vec![Digest::default()];
    for (i, stored) in data.entries.iter().enumerate() {
        let e = &stored.entry;
        let problem = if e.index != i as u64 {
            Some(format!(
                "record {i}: index {} out of place (records removed or reordered)",
                e.index
            ))
        } else if e.prev != prev {
            Some(format!(
                "record {i}: chain broken (its prev does not match record {})",
                i.saturating_sub(1)
            ))
        } else if e.hash() != stored.hash {
            Some(format!("record {i}: content altered (hash mismatch)"))
        } else {
            None
        };
        if let Some(p) = problem {
            report.first_bad = Some(p);
            return report;
        }
        prev = stored.hash;
        head_at.push(prev);
    }
    for h in &data.heads {
        if !h.verify(own_key) {
            report.first_bad = Some(format!("signed head at length {}: bad signature", h.len));
            return report;
        }
        match head_at.get(h.len as usize) {
            None => {
                report.first_bad = Some(format!(
                    "signed head at length {}: the log has only {} records (truncated)",
                    h.len,
                    data.entries.len()
                ));
                return report;
            }
            Some(d) if *d != h.head => {
                report.first_bad = Some(format!(
                    "signed head at length {} (signed {}) does not match the log: records before it were rewritten",
                    h.len,
                    crate::time::format_time(h.at)
                ));
                return report;
            }
            Some(_) => {}
        }
    }
    for t in &data.partner_heads {
        if t.verify(partner_key).is_err() {
            report.first_bad = Some(format!(
                "partner head at length {}: bad signature",
                t.body.audit_len
            ));
            return report;
        }
    }
    report
}

/// `audit verify` (and with `export`, `audit export`) over the log in `db`: one JSON value per
/// output line, the verification report last.
pub fn report(
    db: &redb::Database,
    own: &IdentityPublicKey,
    partner: &IdentityPublicKey,
    export: bool,
) -> Result<Vec<serde_json::Value>, crate::store::StoreError> {
    use crate::time::format_time;

    let data = crate::store::Store::read_audit(db)?;
    let report = verify(&data, own, partner);
    let mut out = Vec::new();
    if export {
        for e in &data.entries {
            out.push(serde_json::json!({
                "type": "entry",
                "index": e.entry.index,
                "at": format_time(e.entry.at),
                "prev": e.entry.prev.to_hex(),
                "hash": e.hash.to_hex(),
                "event": e.entry.event,
            }));
        }
        for h in &data.heads {
            out.push(serde_json::json!({
                "type": "signed_head",
                "endpoint": h.endpoint.to_string(),
                "len": h.len,
                "head": h.head.to_hex(),
                "at": format_time(h.at),
                "signature": hex::encode(h.signature.0),
            }));
        }
        for t in &data.partner_heads {
            out.push(serde_json::json!({
                "type": "partner_head",
                "endpoint": t.body.from.to_string(),
                "len": t.body.audit_len,
                "head": t.body.audit_head.to_hex(),
                "at": format_time(t.body.at),
                "signature": hex::encode(t.signature.0),
            }));
        }
    }
    out.push(serde_json::json!({ "type": "verify", "report": report }));
    Ok(out)
}

#[cfg(test)]
mod tests;
