//! Tests for the wire format: fixed cases first, then proptests over every [`Frame`] variant
//! (roundtrip, length accounting, truncation, mutation, version and suite checks, trailing
//! bytes, hostile names inside frames).

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::{Index, select};

use super::*;
use crate::crypto::{
    Digest, ENCAPSULATED_KEY_LEN, IdentityPublicKey, SEALING_PUBLIC_KEY_LEN, SessionId,
};
use crate::envelope::{Header, ReceiptKind};
use crate::fuzzing;
use crate::types::{Channel, MAX_NAME_LEN, Seq, Time};

// ----- helpers ------------------------------------------------------------------------------

fn ep(s: &str) -> EndpointId {
    EndpointId::new(s).unwrap()
}

fn ch(s: &str) -> Channel {
    Channel::new(s).unwrap()
}

fn mid(sender: &str, channel: &str, precedence: Precedence, seq: u64) -> MessageId {
    MessageId {
        sender: ep(sender),
        channel: ch(channel),
        precedence,
        seq: Seq(seq),
    }
}

fn prefix_of(bytes: &[u8]) -> usize {
    let mut p = [0u8; LEN_PREFIX];
    p.copy_from_slice(&bytes[..LEN_PREFIX]);
    u32::from_be_bytes(p) as usize
}

/// Rewrites the length prefix to match the buffer, so a change inside the payload reaches the
/// payload decoder instead of tripping the framing.
fn fix_prefix(bytes: &mut [u8]) {
    if bytes.len() >= LEN_PREFIX {
        let len = (bytes.len() - LEN_PREFIX) as u32;
        bytes[..LEN_PREFIX].copy_from_slice(&len.to_be_bytes());
    }
}

/// Postcard's LEB128 varint, as used for string and sequence lengths.
fn push_varint(out: &mut Vec<u8>, mut v: usize) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Replaces the postcard string `placeholder` (length byte and text) in an encoded frame with
/// `replacement` as raw string bytes, bypassing the name validation of the encoder, and fixes
/// the length prefix.
fn substitute(encoded: &[u8], placeholder: &str, replacement: &[u8]) -> Vec<u8> {
    let mut needle = Vec::new();
    push_varint(&mut needle, placeholder.len());
    needle.extend_from_slice(placeholder.as_bytes());
    let positions: Vec<usize> = encoded
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle.as_slice())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(positions.len(), 1, "placeholder must occur exactly once");
    let at = positions[0];
    let mut out = encoded[..at].to_vec();
    push_varint(&mut out, replacement.len());
    out.extend_from_slice(replacement);
    out.extend_from_slice(&encoded[at + needle.len()..]);
    fix_prefix(&mut out);
    out
}

/// A name that occurs nowhere else in the template frames.
const PLACEHOLDER: &str = "zq9placeholder9zq";

fn header_with(sender: &str, recipient: &str, channel: &str) -> Header {
    Header {
        sender: ep(sender),
        recipient: ep(recipient),
        channel: ch(channel),
        precedence: Precedence::Priority,
        seq: Seq(2),
        after: [0, 1, 0, 0],
        epoch: 1,
        session: SessionId([3; 16]),
        prev: Digest([4; 32]),
        sealed_len: 3,
    }
}

fn envelope_frame_with(header: Header) -> Frame {
    Frame::Envelope(EnvelopeFrame {
        transport: Precedence::Immediate,
        envelope: Envelope {
            header,
            sealed: vec![1, 2, 3],
        },
        head: Some(Signature([5; 64])),
        setup: None,
    })
}

fn receipt_with(from: &str, channel: &str) -> Frame {
    Frame::Receipt(Signed {
        body: Receipt {
            from: ep(from),
            to: ep("us"),
            channel: ch(channel),
            precedence: Precedence::Flash,
            kind: ReceiptKind::Delivered {
                upto: Seq(9),
                head: Digest([6; 32]),
            },
            at: Time(7),
        },
        signature: Signature([8; 64]),
    })
}

/// Frames that carry the name `n` in one endpoint-id or channel position each.
fn frames_naming(n: &str) -> Vec<Frame> {
    vec![
        Frame::Presence(Presence {
            endpoint: ep(n),
            online: true,
        }),
        Frame::Accepted(Accepted {
            id: mid(n, "main", Precedence::Routine, 1),
            durable: true,
        }),
        Frame::Accepted(Accepted {
            id: mid("us", n, Precedence::Routine, 1),
            durable: false,
        }),
        Frame::Refused(Refusal {
            id: Some(mid("us", n, Precedence::Flash, 4)),
            code: RefusalCode::NotPaired,
            detail: "no".into(),
        }),
        envelope_frame_with(header_with(n, "jp", "main")),
        envelope_frame_with(header_with("us", n, "main")),
        envelope_frame_with(header_with("us", "jp", n)),
        receipt_with(n, "main"),
        receipt_with("jp", n),
        Frame::LinkTest(Signed {
            body: LinkTest {
                from: ep("us"),
                to: ep(n),
                seq: 1,
                at: Time(2),
                audit_len: 3,
                audit_head: Digest([9; 32]),
            },
            signature: Signature([10; 64]),
        }),
        Frame::Announcement(Signed {
            body: Announcement {
                endpoint: ep(n),
                identity: IdentityPublicKey([11; 32]),
                epoch: 1,
                suite: SUITE_XWING_CHACHA20_ED25519,
                sealing_key: vec![12; 16],
                expires_at: Time(13),
                incarnation: 15,
                peer_incarnation: 16,
            },
            signature: Signature([14; 64]),
        }),
        Frame::Escalation(Signed {
            body: EscalationNotice {
                from: ep("us"),
                to: ep("jp"),
                message: mid("us", n, Precedence::Immediate, 5),
                level: Precedence::Flash,
                count: 2,
                at: Time(15),
            },
            signature: Signature([16; 64]),
        }),
    ]
}

#[derive(Clone, Debug)]
enum Mutation {
    FlipBit { at: Index, bit: u8 },
    Set { at: Index, byte: u8 },
    Insert { at: Index, bytes: Vec<u8> },
    Remove { at: Index, len: usize },
    Truncate { at: Index },
}

impl Mutation {
    fn apply(&self, buf: &mut Vec<u8>) {
        match self {
            Self::FlipBit { at, bit } if !buf.is_empty() => {
                let i = at.index(buf.len());
                buf[i] ^= 1 << (bit % 8);
            }
            Self::Set { at, byte } if !buf.is_empty() => {
                let i = at.index(buf.len());
                buf[i] = *byte;
            }
            Self::Insert { at, bytes } => {
                let i = at.index(buf.len() + 1);
                buf.splice(i..i, bytes.iter().copied());
            }
            Self::Remove { at, len } if !buf.is_empty() => {
                let i = at.index(buf.len());
                let end = (i + len).min(buf.len());
                buf.drain(i..end);
            }
            Self::Truncate { at } => {
                let i = at.index(buf.len() + 1);
                buf.truncate(i);
            }
            _ => {}
        }
    }
}

/// Checks what must hold for any input: no panic, a sane `used`, and a frame that re-encodes to
/// something decoding to itself.
fn check_arbitrary_input(bytes: &[u8]) {
    match decode_frame(bytes) {
        Ok((frame, used)) => {
            assert!(used <= bytes.len());
            assert_eq!(used, LEN_PREFIX + prefix_of(bytes));
            let again = encode_frame(&frame);
            assert!(
                again.len() <= used,
                "re-encoding is never longer than what decoded"
            );
            assert_eq!(decode_frame(&again), Ok((frame, again.len())));
        }
        Err(DecodeError::Incomplete { needed }) => assert!(needed > bytes.len()),
        Err(DecodeError::TooLarge { len }) => assert!(len > MAX_FRAME_LEN),
        Err(_) => {}
    }
    fuzzing::decode_frame(bytes);
}

// ----- strategies ---------------------------------------------------------------------------

fn endpoint() -> impl Strategy<Value = EndpointId> {
    "[a-z0-9]{1,10}".prop_map(|s| EndpointId::new(s).unwrap())
}

fn channel() -> impl Strategy<Value = Channel> {
    "[a-z0-9]{1,10}".prop_map(|s| Channel::new(s).unwrap())
}

fn precedence() -> impl Strategy<Value = Precedence> {
    select(Precedence::ALL.to_vec())
}

fn seq() -> impl Strategy<Value = Seq> {
    any::<u64>().prop_map(Seq)
}

fn time() -> impl Strategy<Value = Time> {
    any::<u64>().prop_map(Time)
}

fn digest() -> impl Strategy<Value = Digest> {
    any::<[u8; 32]>().prop_map(Digest)
}

fn signature() -> impl Strategy<Value = Signature> {
    any::<[u8; 64]>().prop_map(Signature)
}

fn session_id() -> impl Strategy<Value = SessionId> {
    any::<[u8; 16]>().prop_map(SessionId)
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..=max)
}

fn message_id() -> impl Strategy<Value = MessageId> {
    (endpoint(), channel(), precedence(), seq()).prop_map(|(sender, channel, precedence, seq)| {
        MessageId {
            sender,
            channel,
            precedence,
            seq,
        }
    })
}

fn header() -> impl Strategy<Value = Header> {
    (
        endpoint(),
        endpoint(),
        channel(),
        precedence(),
        seq(),
        any::<[u64; 4]>(),
        any::<u32>(),
        session_id(),
        digest(),
        any::<u32>(),
    )
        .prop_map(
            |(
                sender,
                recipient,
                channel,
                precedence,
                seq,
                after,
                epoch,
                session,
                prev,
                sealed_len,
            )| {
                Header {
                    sender,
                    recipient,
                    channel,
                    precedence,
                    seq,
                    after,
                    epoch,
                    session,
                    prev,
                    sealed_len,
                }
            },
        )
}

fn envelope_frame() -> impl Strategy<Value = EnvelopeFrame> {
    let envelope = (header(), bytes(4096)).prop_map(|(header, sealed)| Envelope { header, sealed });
    let setup =
        (any::<u32>(), bytes(ENCAPSULATED_KEY_LEN + 64)).prop_map(|(epoch, encapsulated)| {
            SessionSetup {
                epoch,
                encapsulated,
            }
        });
    (
        precedence(),
        envelope,
        option::of(signature()),
        option::of(setup),
    )
        .prop_map(|(transport, envelope, head, setup)| EnvelopeFrame {
            transport,
            envelope,
            head,
            setup,
        })
}

fn signed<T: std::fmt::Debug>(body: impl Strategy<Value = T>) -> impl Strategy<Value = Signed<T>> {
    (body, signature()).prop_map(|(body, signature)| Signed { body, signature })
}

fn receipt() -> impl Strategy<Value = Receipt> {
    let kind = prop_oneof![
        (seq(), digest()).prop_map(|(upto, head)| ReceiptKind::Delivered { upto, head }),
        (seq(), digest()).prop_map(|(seq, hash)| ReceiptKind::Acknowledged { seq, hash }),
    ];
    (
        endpoint(),
        endpoint(),
        channel(),
        precedence(),
        kind,
        time(),
    )
        .prop_map(|(from, to, channel, precedence, kind, at)| Receipt {
            from,
            to,
            channel,
            precedence,
            kind,
            at,
        })
}

fn link_test() -> impl Strategy<Value = LinkTest> {
    (
        endpoint(),
        endpoint(),
        any::<u64>(),
        time(),
        any::<u64>(),
        digest(),
    )
        .prop_map(|(from, to, seq, at, audit_len, audit_head)| LinkTest {
            from,
            to,
            seq,
            at,
            audit_len,
            audit_head,
        })
}

fn announcement() -> impl Strategy<Value = Announcement> {
    (
        endpoint(),
        any::<[u8; 32]>().prop_map(IdentityPublicKey),
        any::<u32>(),
        any::<u8>(),
        bytes(SEALING_PUBLIC_KEY_LEN + 64),
        time(),
        any::<(u64, u64)>(),
    )
        .prop_map(
            |(endpoint, identity, epoch, suite, sealing_key, expires_at, (inc, peer))| {
                Announcement {
                    endpoint,
                    identity,
                    epoch,
                    suite,
                    sealing_key,
                    expires_at,
                    incarnation: inc,
                    peer_incarnation: peer,
                }
            },
        )
}

fn escalation() -> impl Strategy<Value = EscalationNotice> {
    (
        endpoint(),
        endpoint(),
        message_id(),
        precedence(),
        any::<u32>(),
        time(),
    )
        .prop_map(|(from, to, message, level, count, at)| EscalationNotice {
            from,
            to,
            message,
            level,
            count,
            at,
        })
}

fn refusal() -> impl Strategy<Value = Refusal> {
    let code = select(vec![
        RefusalCode::NotPaired,
        RefusalCode::SenderMismatch,
        RefusalCode::Overloaded,
        RefusalCode::Malformed,
        RefusalCode::Expired,
    ]);
    (option::of(message_id()), code, any::<String>()).prop_map(|(id, code, detail)| Refusal {
        id,
        code,
        detail,
    })
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (any::<u8>(), any::<String>())
            .prop_map(|(version, agent)| Frame::Hello(Hello { version, agent })),
        envelope_frame().prop_map(Frame::Envelope),
        (message_id(), any::<bool>())
            .prop_map(|(id, durable)| Frame::Accepted(Accepted { id, durable })),
        signed(receipt()).prop_map(Frame::Receipt),
        signed(link_test()).prop_map(Frame::LinkTest),
        signed(announcement()).prop_map(Frame::Announcement),
        signed(escalation()).prop_map(Frame::Escalation),
        refusal().prop_map(Frame::Refused),
        (endpoint(), any::<bool>())
            .prop_map(|(endpoint, online)| Frame::Presence(Presence { endpoint, online })),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), any::<u8>()).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set { at, byte }),
        (any::<Index>(), bytes(16)).prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (any::<Index>(), 1..16usize).prop_map(|(at, len)| Mutation::Remove { at, len }),
        any::<Index>().prop_map(|at| Mutation::Truncate { at }),
    ]
}

/// Names that validation must refuse: upper case, separators, other characters, empty, too long.
fn hostile_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9]{0,8}[A-Z][a-zA-Z0-9]{0,8}",
        "[a-z0-9]{0,8}:[a-z0-9:]{0,8}",
        "[a-z0-9]{0,8}[ /@\\x00\\n\u{e9}\u{212a}][a-z0-9]{0,8}",
        "[a-z0-9._-]{65,100}",
        Just(String::new()),
    ]
}

// ----- fixed cases --------------------------------------------------------------------------

#[test]
fn hello_check_accepts_our_version_and_newer() {
    for version in [PROTOCOL_VERSION, PROTOCOL_VERSION + 1, u8::MAX] {
        let hello = Hello {
            version,
            agent: "test/1".into(),
        };
        assert_eq!(hello.check(), Ok(()), "version {version}");
    }
}

#[test]
fn hello_check_refuses_older_versions() {
    for version in 0..PROTOCOL_VERSION {
        let hello = Hello {
            version,
            agent: String::new(),
        };
        assert_eq!(
            hello.check(),
            Err(HelloError::UnsupportedVersion {
                version,
                needed: PROTOCOL_VERSION
            })
        );
    }
}

#[test]
fn header_bytes_are_length_version_suite() {
    let bytes = encode_frame(&Frame::Presence(Presence {
        endpoint: ep("jp"),
        online: true,
    }));
    // len = 2 (version, suite) + variant 8 + string "jp" (3) + bool (1)
    assert_eq!(
        bytes,
        [
            0,
            0,
            0,
            7,
            PROTOCOL_VERSION,
            SUITE_XWING_CHACHA20_ED25519,
            8,
            2,
            b'j',
            b'p',
            1
        ]
    );
    assert_eq!(
        decode_frame(&bytes),
        Ok((
            Frame::Presence(Presence {
                endpoint: ep("jp"),
                online: true
            }),
            11
        ))
    );
}

#[test]
fn short_input_is_incomplete() {
    assert_eq!(
        decode_frame(&[]),
        Err(DecodeError::Incomplete { needed: LEN_PREFIX })
    );
    assert_eq!(
        decode_frame(&[0, 0, 0]),
        Err(DecodeError::Incomplete { needed: LEN_PREFIX })
    );
    assert_eq!(
        decode_frame(&[0, 0, 0, 9, 1, 1]),
        Err(DecodeError::Incomplete { needed: 13 })
    );
}

#[test]
fn frame_len_limits() {
    assert_eq!(frame_len([0, 0, 0, 2]), Ok(2));
    assert_eq!(
        frame_len((MAX_FRAME_LEN as u32).to_be_bytes()),
        Ok(MAX_FRAME_LEN)
    );
    assert_eq!(
        frame_len((MAX_FRAME_LEN as u32 + 1).to_be_bytes()),
        Err(DecodeError::TooLarge {
            len: MAX_FRAME_LEN + 1
        })
    );
    assert_eq!(
        frame_len([0xff; 4]),
        Err(DecodeError::TooLarge {
            len: u32::MAX as usize
        })
    );
    assert!(matches!(
        frame_len([0, 0, 0, 0]),
        Err(DecodeError::Malformed(_))
    ));
    assert!(matches!(
        frame_len([0, 0, 0, 1]),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn oversized_prefix_is_refused_from_the_prefix_alone() {
    // Only the four prefix bytes have arrived: a too-large frame is refused now, not after the
    // caller has buffered (or reserved) the announced length.
    assert_eq!(
        decode_frame(&[0xff; 4]),
        Err(DecodeError::TooLarge {
            len: u32::MAX as usize
        })
    );
    let just_over = (MAX_FRAME_LEN as u32 + 1).to_be_bytes();
    assert_eq!(
        decode_frame(&just_over),
        Err(DecodeError::TooLarge {
            len: MAX_FRAME_LEN + 1
        })
    );
    // At the limit, it waits for the rest.
    let at_limit = (MAX_FRAME_LEN as u32).to_be_bytes();
    assert_eq!(
        decode_frame(&at_limit),
        Err(DecodeError::Incomplete {
            needed: LEN_PREFIX + MAX_FRAME_LEN
        })
    );
}

#[test]
fn largest_legitimate_envelope_fits_and_larger_is_refused() {
    let long = "x".repeat(MAX_NAME_LEN);
    // A sealed body: postcard(Plaintext) with the longest varint time and body, plus the tag.
    let sealed_len = MAX_BODY_LEN + 10 + 3 + 16;
    let header = Header {
        sender: ep(&long),
        recipient: ep(&long),
        channel: ch(&long),
        precedence: Precedence::Routine,
        seq: Seq(u64::MAX),
        after: [u64::MAX; 4],
        epoch: u32::MAX,
        session: SessionId([0xff; 16]),
        prev: Digest([0xff; 32]),
        sealed_len: sealed_len as u32,
    };
    let mut frame = EnvelopeFrame {
        transport: Precedence::Flash,
        envelope: Envelope {
            header,
            sealed: vec![0xff; sealed_len],
        },
        head: Some(Signature([0xff; 64])),
        setup: Some(SessionSetup {
            epoch: u32::MAX,
            encapsulated: vec![0xff; ENCAPSULATED_KEY_LEN],
        }),
    };
    let bytes = encode_frame(&Frame::Envelope(frame.clone()));
    assert!(
        bytes.len() - LEN_PREFIX <= MAX_FRAME_LEN,
        "{} bytes",
        bytes.len()
    );
    assert_eq!(decode_frame(&bytes).map(|(_, used)| used), Ok(bytes.len()));

    // The encoder does not enforce the limit; the decoder does.
    frame.envelope.sealed = vec![0; MAX_FRAME_LEN];
    let bytes = encode_frame(&Frame::Envelope(frame));
    assert_eq!(
        decode_frame(&bytes),
        Err(DecodeError::TooLarge {
            len: bytes.len() - LEN_PREFIX
        })
    );
}

#[test]
fn payload_shorter_than_version_and_suite_is_malformed() {
    assert!(matches!(
        decode_payload(&[]),
        Err(DecodeError::Malformed(_))
    ));
    assert!(matches!(
        decode_payload(&[PROTOCOL_VERSION]),
        Err(DecodeError::Malformed(_))
    ));
    // Version and suite but no frame.
    assert!(matches!(
        decode_frame(&[0, 0, 0, 2, PROTOCOL_VERSION, 1]),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn unknown_variant_and_bad_primitives_are_malformed() {
    // Frame variant 9 does not exist.
    assert!(matches!(
        decode_frame(&[0, 0, 0, 3, PROTOCOL_VERSION, 1, 9]),
        Err(DecodeError::Malformed(_))
    ));
    // Presence with a bool of 2.
    assert!(matches!(
        decode_frame(&[0, 0, 0, 7, PROTOCOL_VERSION, 1, 8, 2, b'j', b'p', 2]),
        Err(DecodeError::Malformed(_))
    ));
    // Refusal code 5 does not exist.
    assert!(matches!(
        decode_frame(&[0, 0, 0, 6, PROTOCOL_VERSION, 1, 7, 0, 5, 0]),
        Err(DecodeError::Malformed(_))
    ));
    // Hello with an agent that is not UTF-8.
    assert!(matches!(
        decode_frame(&[0, 0, 0, 7, PROTOCOL_VERSION, 1, 0, 1, 2, 0xc3, 0x28]),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn signature_of_wrong_length_is_malformed() {
    let frame = receipt_with("jp", "main");
    let bytes = encode_frame(&frame);
    // The signature is last: its length byte (64) then 64 bytes. Claim 63 and drop one byte.
    let at = bytes.len() - 65;
    assert_eq!(bytes[at], 64);
    let mut short = bytes.clone();
    short[at] = 63;
    short.pop();
    fix_prefix(&mut short);
    assert!(matches!(
        decode_frame(&short),
        Err(DecodeError::Malformed(_))
    ));
    let mut long = bytes;
    long[at] = 65;
    long.push(0);
    fix_prefix(&mut long);
    assert!(matches!(
        decode_frame(&long),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn fixed_hostile_names_are_rejected_in_every_position() {
    let upper = "ABC".to_owned();
    let colon = "a:b".to_owned();
    let long = "x".repeat(MAX_NAME_LEN + 1);
    for template in frames_naming(PLACEHOLDER) {
        let encoded = encode_frame(&template);
        for hostile in [&upper, &colon, &long] {
            let bytes = substitute(&encoded, PLACEHOLDER, hostile.as_bytes());
            assert!(
                matches!(decode_frame(&bytes), Err(DecodeError::Malformed(_))),
                "{hostile:?} accepted in {template:?}"
            );
        }
        // Not UTF-8 at all.
        let bytes = substitute(&encoded, PLACEHOLDER, &[0xff, b'a']);
        assert!(matches!(
            decode_frame(&bytes),
            Err(DecodeError::Malformed(_))
        ));
        // The longest valid name still decodes.
        let max = "x".repeat(MAX_NAME_LEN);
        let bytes = substitute(&encoded, PLACEHOLDER, max.as_bytes());
        assert!(decode_frame(&bytes).is_ok());
    }
}

#[test]
fn frames_follow_each_other_in_a_stream() {
    let frames = frames_naming("us");
    let mut stream = Vec::new();
    for f in &frames {
        stream.extend(encode_frame(f));
    }
    let mut rest = stream.as_slice();
    for f in &frames {
        let (got, used) = decode_frame(rest).unwrap();
        assert_eq!(&got, f);
        rest = &rest[used..];
    }
    assert!(rest.is_empty());
}

// ----- properties ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// (a), (b): encode then decode gives the frame back, consuming exactly the encoding, whose
    /// prefix is its length minus the prefix.
    #[test]
    fn roundtrip(frame in frame()) {
        let bytes = encode_frame(&frame);
        prop_assert_eq!(prefix_of(&bytes), bytes.len() - LEN_PREFIX);
        prop_assert_eq!(bytes[LEN_PREFIX], PROTOCOL_VERSION);
        prop_assert_eq!(bytes[LEN_PREFIX + 1], SUITE_XWING_CHACHA20_ED25519);
        prop_assert_eq!(frame_len(bytes[..LEN_PREFIX].try_into().unwrap()), Ok(bytes.len() - LEN_PREFIX));
        prop_assert_eq!(decode_payload(&bytes[LEN_PREFIX..]), Ok(frame.clone()));
        let (back, used) = decode_frame(&bytes).unwrap();
        prop_assert_eq!(used, bytes.len());
        prop_assert_eq!(back, frame);
    }

    /// A frame followed by more bytes (the next frame on the stream) decodes alone.
    #[test]
    fn decode_stops_at_the_frame_end(a in frame(), b in frame()) {
        let mut stream = encode_frame(&a);
        let first = stream.len();
        stream.extend(encode_frame(&b));
        let (got, used) = decode_frame(&stream).unwrap();
        prop_assert_eq!(used, first);
        prop_assert_eq!(got, a);
        prop_assert_eq!(decode_frame(&stream[used..]), Ok((b, stream.len() - first)));
    }

    /// Every strict prefix of an encoding asks for more, naming the total it needs.
    #[test]
    fn truncation_is_incomplete(frame in frame(), cut in any::<Index>()) {
        let bytes = encode_frame(&frame);
        let cut = cut.index(bytes.len());
        let needed = if cut < LEN_PREFIX { LEN_PREFIX } else { bytes.len() };
        prop_assert_eq!(decode_frame(&bytes[..cut]), Err(DecodeError::Incomplete { needed }));
        // Truncating the payload but shrinking the prefix to match is malformed, never a frame.
        if cut > LEN_PREFIX + 2 {
            let mut short = bytes[..cut].to_vec();
            fix_prefix(&mut short);
            prop_assert!(matches!(decode_frame(&short), Err(DecodeError::Malformed(_))));
        }
    }

    /// (c): mutated encodings never panic; whatever decodes re-encodes consistently.
    #[test]
    fn mutations_never_panic(
        frame in frame(),
        mutations in vec(mutation(), 1..6),
        refit in any::<bool>(),
    ) {
        let mut bytes = encode_frame(&frame);
        for m in &mutations {
            m.apply(&mut bytes);
        }
        if refit {
            fix_prefix(&mut bytes);
        }
        check_arbitrary_input(&bytes);
        if bytes.len() >= LEN_PREFIX {
            let _ = decode_payload(&bytes[LEN_PREFIX..]);
        }
    }

    /// (c): arbitrary bytes, with or without a plausible header, never panic.
    #[test]
    fn arbitrary_bytes_never_panic(
        mut data in bytes(600),
        framed in any::<bool>(),
        variant in 0u8..10,
    ) {
        if framed {
            let mut head = vec![0, 0, 0, 0, PROTOCOL_VERSION, SUITE_XWING_CHACHA20_ED25519, variant];
            head.append(&mut data);
            data = head;
            fix_prefix(&mut data);
        }
        check_arbitrary_input(&data);
        let _ = decode_payload(&data);
    }

    /// (d): the prefix alone decides whether a length is acceptable.
    #[test]
    fn frame_len_accepts_exactly_the_valid_range(len in prop_oneof![
        any::<u32>(),
        0u32..16,
        (MAX_FRAME_LEN as u32 - 8)..(MAX_FRAME_LEN as u32 + 8),
    ]) {
        let got = frame_len(len.to_be_bytes());
        let len = len as usize;
        if len > MAX_FRAME_LEN {
            prop_assert_eq!(got, Err(DecodeError::TooLarge { len }));
            // decode_frame refuses before looking for (or reserving) the body.
            prop_assert_eq!(decode_frame(&(len as u32).to_be_bytes()), Err(DecodeError::TooLarge { len }));
        } else if len < 2 {
            prop_assert!(matches!(got, Err(DecodeError::Malformed(_))));
        } else {
            prop_assert_eq!(got, Ok(len));
            prop_assert_eq!(
                decode_frame(&(len as u32).to_be_bytes()),
                Err(DecodeError::Incomplete { needed: LEN_PREFIX + len })
            );
        }
    }

    /// (e): an unknown version or suite is reported as such; the version is checked first.
    #[test]
    fn unknown_version_and_suite(
        frame in frame(),
        version in any::<u8>().prop_filter("known", |v| *v != PROTOCOL_VERSION),
        suite in any::<u8>().prop_filter("known", |s| *s != SUITE_XWING_CHACHA20_ED25519),
    ) {
        let bytes = encode_frame(&frame);

        let mut v = bytes.clone();
        v[LEN_PREFIX] = version;
        prop_assert_eq!(decode_frame(&v), Err(DecodeError::UnknownVersion(version)));
        prop_assert_eq!(decode_payload(&v[LEN_PREFIX..]), Err(DecodeError::UnknownVersion(version)));

        let mut s = bytes.clone();
        s[LEN_PREFIX + 1] = suite;
        prop_assert_eq!(decode_frame(&s), Err(DecodeError::UnknownSuite(suite)));
        prop_assert_eq!(decode_payload(&s[LEN_PREFIX..]), Err(DecodeError::UnknownSuite(suite)));

        let mut both = bytes;
        both[LEN_PREFIX] = version;
        both[LEN_PREFIX + 1] = suite;
        prop_assert_eq!(decode_frame(&both), Err(DecodeError::UnknownVersion(version)));
    }

    /// (f): bytes after the postcard payload, inside the announced length, are refused.
    #[test]
    fn trailing_bytes_inside_a_frame_are_rejected(frame in frame(), extra in vec(any::<u8>(), 1..64)) {
        let mut bytes = encode_frame(&frame);
        bytes.extend_from_slice(&extra);
        fix_prefix(&mut bytes);
        let err = decode_frame(&bytes).unwrap_err();
        prop_assert!(
            matches!(&err, DecodeError::Malformed(m) if m.contains("trailing")),
            "{:?}", err
        );
        prop_assert_eq!(decode_payload(&bytes[LEN_PREFIX..]), Err(err));
    }

    /// (g): a hostile endpoint id or channel name, in any position, makes the frame malformed;
    /// a valid name of any length in the same position decodes to the frame built with it.
    #[test]
    fn hostile_names_inside_frames_are_rejected(
        hostile in hostile_name(),
        valid in "[a-z0-9._-]{1,64}",
    ) {
        for template in frames_naming(PLACEHOLDER) {
            let encoded = encode_frame(&template);
            let bytes = substitute(&encoded, PLACEHOLDER, hostile.as_bytes());
            let got = decode_frame(&bytes);
            prop_assert!(matches!(got, Err(DecodeError::Malformed(_))), "{:?} gave {:?}", hostile, got);
        }
        for (template, expected) in frames_naming(PLACEHOLDER).into_iter().zip(frames_naming(&valid)) {
            let bytes = substitute(&encode_frame(&template), PLACEHOLDER, valid.as_bytes());
            prop_assert_eq!(decode_frame(&bytes), Ok((expected, bytes.len())));
        }
    }
}

#[test]
fn flash_receipts_and_notices_are_told_apart_from_other_control_frames() {
    let flash_receipt = receipt_with("jp", "main");
    let mut routine_receipt = flash_receipt.clone();
    if let Frame::Receipt(r) = &mut routine_receipt {
        r.body.precedence = Precedence::Routine;
    }
    let notice = |level| {
        Frame::Escalation(Signed {
            body: EscalationNotice {
                from: ep("jp"),
                to: ep("us"),
                message: mid("jp", "main", Precedence::Routine, 3),
                level,
                count: 1,
                at: Time(7),
            },
            signature: Signature([8; 64]),
        })
    };
    let accepted = Frame::Accepted(Accepted {
        id: mid("us", "main", Precedence::Flash, 1),
        durable: true,
    });
    let told = |f: &Frame| is_flash_word(&encode_frame(f));
    assert!(told(&flash_receipt));
    assert!(told(&notice(Precedence::Flash)));
    assert!(!told(&routine_receipt));
    assert!(!told(&notice(Precedence::Immediate)));
    assert!(
        !told(&accepted),
        "the relay's reply about a flash is not the partner's word"
    );
    let mut cut = encode_frame(&flash_receipt);
    cut.truncate(cut.len() - 1);
    assert!(!is_flash_word(&cut));
    assert!(!is_flash_word(&[]));
}
