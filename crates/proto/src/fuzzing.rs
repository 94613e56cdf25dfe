//! Entry points for fuzz targets and the corpus test. Not a stable API.
//!
//! Each function takes arbitrary bytes and must never panic, whatever they are.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::crypto::{IdentityKey, SEALING_PUBLIC_KEY_LEN, SUITE_XWING_CHACHA20_ED25519};
use crate::engine::{Action, Engine, EngineConfig, Local, Partner};
use crate::envelope::{Announcement, Signed};
use crate::types::{EndpointId, Time};
use crate::wire;

/// Decodes `data` as a frame; re-encodes what decoded and checks it decodes the same.
pub fn decode_frame(data: &[u8]) {
    if let Ok((frame, used)) = wire::decode_frame(data) {
        assert!(used <= data.len());
        let again = wire::encode_frame(&frame);
        let (back, _) =
            wire::decode_frame(&again).unwrap_or_else(|e| panic!("re-decode failed: {e}"));
        assert_eq!(back, frame);
    }
}

/// Feeds `data` to a receiving engine as a frame from the relay, then drains its actions.
pub fn open_envelope(data: &[u8]) {
    let mut engine = receiver();
    let _ = engine.handle_frame(Time(2), data);
    while engine.poll_action().is_some() {}
}

/// Frames [`engine_frames`] takes from one input at most.
pub const MAX_ENGINE_FRAMES: usize = 64;

/// Feeds `data` to a connected receiving engine as a sequence of frames from the relay, with
/// time advancing and timeouts firing between them, confirming every write.
///
/// Input: repeated `[dt: u8][len: u16 big-endian][len bytes]`, at most [`MAX_ENGINE_FRAMES`]
/// of them; time advances by `dt` × 100 ms before each frame (a short last chunk is used as it
/// is). Checks that no message is delivered twice and that the engine never asks to be woken
/// in the past.
pub fn engine_frames(data: &[u8]) {
    let mut engine = receiver();
    let mut now = Time(2);
    engine.handle_connected(now);
    let mut delivered = BTreeSet::new();
    drain(&mut engine, now, &mut delivered);
    let mut rest = data;
    for _ in 0..MAX_ENGINE_FRAMES {
        let [dt, hi, lo, tail @ ..] = rest else {
            break;
        };
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
        let (frame, tail) = tail.split_at(len);
        rest = tail;
        now = now.plus(Duration::from_millis(100) * u32::from(*dt));
        if engine.poll_timeout().is_some_and(|t| t <= now) {
            engine.handle_timeout(now);
            drain(&mut engine, now, &mut delivered);
        }
        let _ = engine.handle_frame(now, frame);
        drain(&mut engine, now, &mut delivered);
        if let Some(t) = engine.poll_timeout() {
            // Re-arming at or before `now` is allowed only while work is due now.
            if t <= now {
                engine.handle_timeout(now);
                drain(&mut engine, now, &mut delivered);
                assert!(
                    engine.poll_timeout().is_none_or(|t| t > now),
                    "engine asks to be woken at {t:?}, not after {now:?}, after a timeout"
                );
            }
        }
    }
}

/// The receiving engine both entry points use (`jp`, whose partner is `us`).
fn receiver() -> Engine<FixedRng> {
    let id = |s: &str| EndpointId::new(s).unwrap_or_else(|e| panic!("{e}"));
    let local = Local {
        id: id("jp"),
        key: IdentityKey::from_seed(&[2; 32]),
    };
    let partner = Partner {
        id: id("us"),
        key: IdentityKey::from_seed(&[1; 32]).public(),
    };
    let rng = FixedRng(FIXED_RNG_SEED);
    let mut engine = Engine::new(EngineConfig::default(), local, partner, rng, Time(1));
    // The partner's announcement says where its lanes start; without it envelopes only wait.
    let _ = engine.handle_frame(Time(1), &partner_announcement());
    drain(&mut engine, Time(1), &mut BTreeSet::new());
    engine
}

/// Takes every action, confirming writes, until the engine is quiet; checks each delivery is
/// new.
fn drain(engine: &mut Engine<FixedRng>, now: Time, delivered: &mut BTreeSet<crate::MessageId>) {
    loop {
        let mut last = None;
        while let Some(action) = engine.poll_action() {
            match action {
                Action::Persist { id, .. } => last = Some(id),
                Action::Deliver(d) => {
                    assert!(delivered.insert(d.id.clone()), "{} delivered twice", d.id);
                }
                _ => {}
            }
        }
        match last {
            Some(id) => engine.handle_persisted(now, id),
            None => return,
        }
    }
}

/// The announcement of the partner (`us`, identity seed `[1; 32]`) that [`open_envelope`]
/// takes first: epoch 1, lanes starting where an engine made at `Time(1)` starts them. Its
/// sealing key is a placeholder (the receiver never seals to it).
pub fn partner_announcement() -> Vec<u8> {
    let key = IdentityKey::from_seed(&[1; 32]);
    let announcement = Announcement {
        endpoint: EndpointId::new("us").unwrap_or_else(|e| panic!("{e}")),
        identity: key.public(),
        epoch: 1,
        suite: SUITE_XWING_CHACHA20_ED25519,
        sealing_key: vec![0; SEALING_PUBLIC_KEY_LEN],
        expires_at: Time(u64::MAX),
        incarnation: 1,
        peer_incarnation: 0,
    };
    wire::encode_frame(&wire::Frame::Announcement(Signed::sign(announcement, &key)))
}

/// The start state of the generator [`open_envelope`] uses.
pub const FIXED_RNG_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// A deterministic splitmix64 generator so fuzz runs and their seed corpus reproduce; never
/// used outside fuzzing and tests.
#[derive(Debug)]
pub struct FixedRng(pub u64);

impl rand_core::TryRng for FixedRng {
    type Error = core::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        self.try_next_u64().map(|v| v as u32)
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Ok(z ^ (z >> 31))
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        for chunk in dst.chunks_mut(8) {
            let v = self.try_next_u64()?.to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        Ok(())
    }
}

impl rand_core::TryCryptoRng for FixedRng {}
