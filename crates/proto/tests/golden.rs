//! Golden vectors: the exact bytes of one frame of every kind, committed under `tests/golden/`.
//!
//! A change to the encoding of any frame, or to how a statement is signed, fails here before it
//! reaches a peer running the previous build. Every frame is fully deterministic (Ed25519
//! signatures included), so the files only change when the wire format does.
//!
//! `HOTLINE_BLESS=1 cargo test -p hotline-proto --test golden` rewrites the vectors and the
//! fuzzing seeds derived from them (`fuzz/corpus/*/golden-*`); review the diff before
//! committing it.
#![expect(clippy::unwrap_used, reason = "a failed step is the test failing")]

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use hotline_proto::crypto::{
    Digest, ENCAPSULATED_KEY_LEN, IdentityKey, SEALING_PUBLIC_KEY_LEN,
    SUITE_XWING_CHACHA20_ED25519, SessionId,
};
use hotline_proto::engine::{Action, Engine, EngineConfig, Local, Outgoing, Partner, Record};
use hotline_proto::envelope::{
    Announcement, ChainHead, Envelope, EscalationNotice, Header, LinkTest, Receipt, ReceiptKind,
    SessionSetup, Signed, sign_head,
};
use hotline_proto::wire::{
    Accepted, EnvelopeFrame, Frame, Hello, Presence, Refusal, RefusalCode, decode_frame,
    encode_frame,
};
use hotline_proto::{Channel, EndpointId, MessageId, Precedence, Seq, Time};

/// 2023-11-14T22:13:20Z in microseconds: a fixed, plausible wall-clock time.
const AT: Time = Time(1_700_000_000_000_000);

fn ep(s: &str) -> EndpointId {
    EndpointId::new(s).unwrap()
}

fn main_channel() -> Channel {
    Channel::new("main").unwrap()
}

/// The key of `us`, the sender in every vector. The fuzzing engine pins it as its partner key,
/// so the signed vectors below verify when fed to `hotline_proto::fuzzing::open_envelope`.
fn us_key() -> IdentityKey {
    IdentityKey::from_seed(&[1; 32])
}

fn pattern(len: usize, mul: usize, add: usize) -> Vec<u8> {
    (0..len).map(|i| (i * mul + add) as u8).collect()
}

/// One frame of every kind, named by its file.
fn vectors() -> Vec<(&'static str, Frame)> {
    let key = us_key();

    let hello = Frame::Hello(Hello {
        version: 1,
        agent: "hotline/0.1.0".into(),
    });

    // An envelope from us to jp with a genuine chain-head signature and a session setup whose
    // id matches the header: it passes every check up to decapsulation.
    let encapsulated = pattern(ENCAPSULATED_KEY_LEN, 7, 3);
    let sealed = pattern(48, 1, 0);
    let envelope = Envelope {
        header: Header {
            sender: ep("us"),
            recipient: ep("jp"),
            channel: main_channel(),
            precedence: Precedence::Priority,
            seq: Seq(2),
            after: [0, 1, 0, 3],
            epoch: 1,
            session: SessionId::of_encapsulated(&encapsulated),
            prev: Digest([0x22; 32]),
            sealed_len: sealed.len() as u32,
        },
        sealed,
    };
    let head = sign_head(&ChainHead::of(&envelope, envelope.hash()), &key);
    let envelope = Frame::Envelope(EnvelopeFrame {
        transport: Precedence::Immediate,
        envelope,
        head: Some(head),
        setup: Some(SessionSetup {
            epoch: 1,
            encapsulated,
        }),
    });

    let accepted = Frame::Accepted(Accepted {
        id: "us:main:flash:3".parse::<MessageId>().unwrap(),
        durable: true,
    });

    let receipt = Frame::Receipt(Signed::sign(
        Receipt {
            from: ep("us"),
            to: ep("jp"),
            channel: main_channel(),
            precedence: Precedence::Flash,
            kind: ReceiptKind::Delivered {
                upto: Seq(3),
                head: Digest([0xab; 32]),
            },
            at: AT,
        },
        &key,
    ));

    let link_test = Frame::LinkTest(Signed::sign(
        LinkTest {
            from: ep("us"),
            to: ep("jp"),
            seq: 42,
            at: AT,
            audit_len: 1234,
            audit_head: Digest([0xcd; 32]),
        },
        &key,
    ));

    let announcement = Frame::Announcement(Signed::sign(
        Announcement {
            endpoint: ep("us"),
            identity: key.public(),
            epoch: 2,
            suite: SUITE_XWING_CHACHA20_ED25519,
            sealing_key: pattern(SEALING_PUBLIC_KEY_LEN, 13, 5),
            expires_at: Time(AT.0 + 30 * 24 * 3600 * 1_000_000),
            incarnation: AT.0,
            peer_incarnation: 0,
        },
        &key,
    ));

    let escalation = Frame::Escalation(Signed::sign(
        EscalationNotice {
            from: ep("us"),
            to: ep("jp"),
            message: "us:main:immediate:7".parse::<MessageId>().unwrap(),
            level: Precedence::Flash,
            count: 1,
            at: AT,
        },
        &key,
    ));

    let refused = Frame::Refused(Refusal {
        id: Some("us:main:routine:7".parse::<MessageId>().unwrap()),
        code: RefusalCode::Overloaded,
        detail: "relay queue for jp is full".into(),
    });

    let presence = Frame::Presence(Presence {
        endpoint: ep("jp"),
        online: true,
    });

    vec![
        ("hello", hello),
        ("envelope", envelope),
        ("accepted", accepted),
        ("receipt", receipt),
        ("link_test", link_test),
        ("announcement", announcement),
        ("escalation", escalation),
        ("refused", refused),
        ("presence", presence),
    ]
}

#[test]
fn frames_match_golden_vectors() {
    let dir = manifest_dir().join("tests/golden");
    let vectors = vectors();
    if blessing() {
        fs::create_dir_all(&dir).unwrap();
        for (name, frame) in &vectors {
            fs::write(
                dir.join(format!("{name}.hex")),
                to_hex_lines(&encode_frame(frame)),
            )
            .unwrap();
        }
    }

    let mut changed = Vec::new();
    for (name, frame) in &vectors {
        let path = dir.join(format!("{name}.hex"));
        let text = fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "reading {}: {e} (run with HOTLINE_BLESS=1 to create it)",
                path.display()
            )
        });
        let committed = from_hex(&text);
        // The committed bytes must still decode to the frame, whatever the encoder now does.
        assert_eq!(
            decode_frame(&committed),
            Ok((frame.clone(), committed.len())),
            "{} no longer decodes to its frame",
            path.display()
        );
        if encode_frame(frame) != committed {
            changed.push(*name);
        }
    }
    assert!(
        changed.is_empty(),
        "encoding changed for {changed:?}; if intended, rerun with HOTLINE_BLESS=1 and review the diff"
    );

    // No stale vector left behind by a rename.
    let expected: BTreeSet<String> = vectors.iter().map(|(n, _)| format!("{n}.hex")).collect();
    let present: BTreeSet<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(present, expected, "unexpected files in {}", dir.display());
}

#[test]
fn golden_vectors_are_signed_by_us() {
    let public = us_key().public();
    for (name, frame) in vectors() {
        let ok = match &frame {
            Frame::Receipt(s) => s.verify(&public).is_ok(),
            Frame::LinkTest(s) => s.verify(&public).is_ok(),
            Frame::Announcement(s) => s.verify(&public).is_ok(),
            Frame::Escalation(s) => s.verify(&public).is_ok(),
            Frame::Envelope(f) => {
                let e = &f.envelope;
                f.head.as_ref().is_some_and(|sig| {
                    hotline_proto::envelope::verify_head(&ChainHead::of(e, e.hash()), sig, &public)
                        .is_ok()
                })
            }
            _ => true,
        };
        assert!(ok, "{name} does not verify under the key of us");
    }
}

/// The fuzzing seeds named `golden-*` are the golden frames' bytes; the other committed seeds
/// (truncated, mutated) are written here too when blessing, and only checked to exist otherwise.
#[test]
fn fuzz_seeds_match_golden_vectors() {
    let corpus = manifest_dir().join("fuzz/corpus");
    let seeds = seeds();
    for target in ["decode_frame", "open_envelope"] {
        let dir = corpus.join(target);
        if blessing() {
            fs::create_dir_all(&dir).unwrap();
            for (name, bytes) in &seeds {
                fs::write(dir.join(name), bytes).unwrap();
            }
        }
        if blessing() && target == "open_envelope" {
            fs::write(dir.join("deliverable-envelope"), deliverable_envelope()).unwrap();
        }
        for (name, bytes) in &seeds {
            let path = dir.join(name);
            let committed = fs::read(&path).unwrap_or_else(|e| {
                panic!(
                    "reading {}: {e} (run with HOTLINE_BLESS=1 to create it)",
                    path.display()
                )
            });
            if name.starts_with("golden-") {
                assert_eq!(
                    &committed,
                    bytes,
                    "{} is stale; rerun with HOTLINE_BLESS=1",
                    path.display()
                );
            }
        }
    }
}

/// `engine_frames` takes sequences of frames: the golden frames one after another (always
/// checked), and the deliverable envelope, its duplicate and a pause that fires the engine's
/// timers (written when blessing, like `deliverable-envelope`).
#[test]
fn engine_frames_seeds_are_sequences_of_golden_frames() {
    let dir = manifest_dir().join("fuzz/corpus/engine_frames");
    let golden: Vec<Vec<u8>> = seeds()
        .into_iter()
        .filter(|(name, _)| name.starts_with("golden-"))
        .map(|(_, bytes)| bytes)
        .collect();
    let sequence = frame_sequence(golden.iter().map(|b| (1, b.as_slice())));
    if blessing() {
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("sequence-golden"), &sequence).unwrap();
        let envelope = deliverable_envelope();
        fs::write(
            dir.join("sequence-deliverable-twice"),
            frame_sequence([(0, &envelope[..]), (5, &envelope[..]), (100, &[][..])]),
        )
        .unwrap();
    }
    let committed = fs::read(dir.join("sequence-golden")).unwrap();
    assert_eq!(committed, sequence, "stale; rerun with HOTLINE_BLESS=1");
    assert!(dir.join("sequence-deliverable-twice").is_file());
}

/// The `engine_frames` input format: `[dt: u8][len: u16 BE][bytes]` per frame.
fn frame_sequence<'a>(frames: impl IntoIterator<Item = (u8, &'a [u8])>) -> Vec<u8> {
    let mut out = Vec::new();
    for (dt, frame) in frames {
        out.push(dt);
        out.extend_from_slice(&u16::try_from(frame.len()).unwrap().to_be_bytes());
        out.extend_from_slice(frame);
    }
    out
}

/// Seed inputs for both fuzz targets: each golden frame, plus a few broken variants that start
/// the fuzzer near interesting error paths.
fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let vectors = vectors();
    for (name, frame) in &vectors {
        out.push((format!("golden-{name}"), encode_frame(frame)));
    }
    let bytes_of = |wanted: &str| {
        vectors
            .iter()
            .find(|(n, _)| *n == wanted)
            .map(|(_, f)| encode_frame(f))
            .unwrap()
    };
    let refit = |mut b: Vec<u8>| {
        let len = (b.len() - 4) as u32;
        b[..4].copy_from_slice(&len.to_be_bytes());
        b
    };

    // Cut mid-header, still announcing the full length.
    let envelope = bytes_of("envelope");
    out.push((
        "truncated-envelope".into(),
        envelope[..envelope.len() / 2].to_vec(),
    ));
    // Cut mid-signature, with the length prefix shrunk to match.
    let receipt = bytes_of("receipt");
    out.push((
        "truncated-receipt-refit".into(),
        refit(receipt[..receipt.len() - 10].to_vec()),
    ));
    // Unknown version, unknown suite.
    let mut v = bytes_of("hello");
    v[4] = 2;
    out.push(("bad-version-hello".into(), v));
    let mut s = bytes_of("presence");
    s[5] = 0xff;
    out.push(("bad-suite-presence".into(), s));
    // A trailing byte inside the frame.
    let mut t = bytes_of("accepted");
    t.push(0);
    out.push(("trailing-accepted".into(), refit(t)));
    // An upper-case endpoint id.
    let mut upper = bytes_of("presence");
    let at = upper.windows(2).position(|w| w == b"jp").unwrap();
    upper[at..at + 2].copy_from_slice(b"JP");
    out.push(("hostile-name-presence".into(), upper));
    // A prefix announcing 4 GiB.
    out.push((
        "too-large-prefix".into(),
        vec![0xff, 0xff, 0xff, 0xff, 1, 1, 8],
    ));
    // A flipped bit in the receipt's signature.
    let mut flipped = bytes_of("receipt");
    let last = flipped.len() - 1;
    flipped[last] ^= 0x01;
    out.push(("bitflip-receipt".into(), flipped));
    out
}

/// An envelope that the engine in `hotline_proto::fuzzing::open_envelope` opens and delivers:
/// sealed by a real `us` engine to the sealing key that engine generates, so the fuzzer starts
/// from the delivery path rather than having to find a valid AEAD tag. Written only when
/// blessing; if the engine later draws its key differently the seed merely gets shallower.
fn deliverable_envelope() -> Vec<u8> {
    let jp = || {
        Engine::new(
            EngineConfig::default(),
            Local {
                id: ep("jp"),
                key: IdentityKey::from_seed(&[2; 32]),
            },
            Partner {
                id: ep("us"),
                key: us_key().public(),
            },
            FuzzRng(FUZZ_RNG_SEED),
            Time(1),
        )
    };
    let announcement = jp().announcement().cloned().unwrap();

    let mut us = Engine::new(
        EngineConfig::default(),
        Local {
            id: ep("us"),
            key: us_key(),
        },
        Partner {
            id: ep("jp"),
            key: IdentityKey::from_seed(&[2; 32]).public(),
        },
        FuzzRng(7),
        Time(1),
    );
    us.handle_connected(Time(1));
    us.handle_frame(Time(1), &encode_frame(&Frame::Announcement(announcement)))
        .unwrap();
    us.submit(
        Time(1),
        Outgoing {
            channel: main_channel(),
            precedence: Precedence::Flash,
            body: b"seed corpus: a message that opens".to_vec(),
        },
    )
    .unwrap();
    let envelope = drain(&mut us)
        .into_iter()
        .find(|bytes| matches!(decode_frame(bytes), Ok((Frame::Envelope(_), _))))
        .unwrap();

    // Check it really is delivered by a fresh copy of the fuzzing engine.
    let mut receiver = jp();
    receiver
        .handle_frame(Time(1), &hotline_proto::fuzzing::partner_announcement())
        .unwrap();
    receiver.handle_frame(Time(2), &envelope).unwrap();
    let mut received = false;
    while let Some(action) = receiver.poll_action() {
        received |= matches!(
            action,
            Action::Persist {
                record: Record::Received { .. },
                ..
            }
        );
    }
    assert!(received, "the seed envelope was not delivered");
    envelope
}

/// Runs an engine's actions to quiescence, confirming every write; returns the frames sent.
fn drain<R: rand_core::CryptoRng>(engine: &mut Engine<R>) -> Vec<Vec<u8>> {
    let mut sent = Vec::new();
    loop {
        let mut last_write = None;
        while let Some(action) = engine.poll_action() {
            match action {
                Action::Persist { id, .. } => last_write = Some(id),
                Action::Send { frame, .. } => sent.push(frame),
                _ => {}
            }
        }
        match last_write {
            Some(id) => engine.handle_persisted(Time(1), id),
            None => return sent,
        }
    }
}

use hotline_proto::fuzzing::{FIXED_RNG_SEED as FUZZ_RNG_SEED, FixedRng as FuzzRng};

fn manifest_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn blessing() -> bool {
    std::env::var_os("HOTLINE_BLESS").is_some_and(|v| v == "1")
}

/// Lower-case hex, 32 bytes a line, so a diff points at the changed region.
fn to_hex_lines(bytes: &[u8]) -> String {
    bytes.chunks(32).map(|c| hex::encode(c) + "\n").collect()
}

fn from_hex(text: &str) -> Vec<u8> {
    let digits: String = text.split_ascii_whitespace().collect();
    hex::decode(digits).unwrap()
}
