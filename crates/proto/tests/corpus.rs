//! Runs the fuzzing entry points over the committed seed corpus and over seeded pseudo-random
//! and mutated inputs, so stable CI covers what `cargo fuzz` explores on nightly.
//!
//! Nothing here asserts a result: the entry points carry their own checks (a decoded frame must
//! re-encode and decode to itself) and the test fails if any input makes them panic.
#![expect(clippy::unwrap_used, reason = "a failed step is the test failing")]

use std::fs;
use std::path::{Path, PathBuf};

use hotline_proto::fuzzing::{decode_frame, engine_frames, open_envelope};
use hotline_proto::wire::{LEN_PREFIX, PROTOCOL_VERSION};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

const RANDOM_INPUTS: usize = 2_000;
const MUTATED_INPUTS: usize = 2_000;
/// `open_envelope` builds an engine (and a sealing key) per call, so it gets fewer inputs.
const OPEN_ENVELOPE_INPUTS: usize = 200;
/// Sequences of mutated frames for `engine_frames`.
const ENGINE_FRAMES_INPUTS: usize = 100;

#[test]
fn committed_corpus_does_not_panic() {
    let mut count = 0;
    for target in ["decode_frame", "open_envelope", "engine_frames"] {
        for (path, bytes) in corpus(target) {
            eprintln!("{}", path.display());
            decode_frame(&bytes);
            open_envelope(&bytes);
            engine_frames(&bytes);
            count += 1;
        }
    }
    assert!(
        count >= 20,
        "only {count} corpus files: is fuzz/corpus missing?"
    );
    assert!(
        corpus("engine_frames").len() >= 2,
        "engine_frames seeds missing"
    );
}

/// Sequences of valid and mutated frames, with random pauses, through one engine each.
#[test]
fn mutated_frame_sequences_do_not_panic() {
    let bases = valid_frames();
    let mut rng = ChaCha20Rng::seed_from_u64(0x686f_746c_696e_6503);
    for _ in 0..ENGINE_FRAMES_INPUTS {
        let mut input = Vec::new();
        for _ in 0..1 + below(&mut rng, 12) {
            let base = &bases[below(&mut rng, bases.len())];
            let frame = if below(&mut rng, 2) == 0 {
                base.clone()
            } else {
                mutate(&mut rng, base)
            };
            let len = frame.len().min(usize::from(u16::MAX));
            input.push([0, 1, 20, 70][below(&mut rng, 4)]);
            input.extend_from_slice(&(len as u16).to_be_bytes());
            input.extend_from_slice(&frame[..len]);
        }
        engine_frames(&input);
    }
}

#[test]
fn random_bytes_do_not_panic() {
    let mut rng = ChaCha20Rng::seed_from_u64(0x686f_746c_696e_6501);
    for i in 0..RANDOM_INPUTS {
        let input = random_input(&mut rng);
        decode_frame(&input);
        if i % (RANDOM_INPUTS / OPEN_ENVELOPE_INPUTS * 2) == 0 {
            open_envelope(&input);
        }
    }
}

#[test]
fn mutated_frames_do_not_panic() {
    let bases = valid_frames();
    assert!(!bases.is_empty());
    let mut rng = ChaCha20Rng::seed_from_u64(0x686f_746c_696e_6502);
    for i in 0..MUTATED_INPUTS {
        let base = &bases[below(&mut rng, bases.len())];
        let input = mutate(&mut rng, base);
        decode_frame(&input);
        if i % (MUTATED_INPUTS / OPEN_ENVELOPE_INPUTS * 2) == 0 {
            open_envelope(&input);
        }
    }
}

/// Every file of one target's committed corpus, sorted by name.
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = manifest_dir().join("fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| (p.clone(), fs::read(&p).unwrap()))
        .collect()
}

/// The golden vectors (one valid frame of each kind) and every committed seed that decodes.
fn valid_frames() -> Vec<Vec<u8>> {
    let dir = manifest_dir().join("tests/golden");
    let mut frames: Vec<Vec<u8>> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| from_hex(&fs::read_to_string(e.unwrap().path()).unwrap()))
        .collect();
    frames.extend(
        corpus("open_envelope")
            .into_iter()
            .map(|(_, b)| b)
            .filter(|b| hotline_proto::wire::decode_frame(b).is_ok()),
    );
    frames.sort();
    frames.dedup();
    frames
}

/// Random bytes: half of them behind a well-formed header (length, version, suite, a frame
/// variant) so they reach the payload decoder rather than failing on the prefix.
fn random_input(rng: &mut ChaCha20Rng) -> Vec<u8> {
    let len = match below(rng, 4) {
        0 => below(rng, 8),
        1 => below(rng, 64),
        2 => below(rng, 512),
        _ => below(rng, 4096),
    };
    let mut body = vec![0u8; len];
    rng.fill_bytes(&mut body);
    if rng.next_u32() % 2 == 0 {
        return body;
    }
    let mut framed = vec![0; LEN_PREFIX];
    framed.push(PROTOCOL_VERSION);
    framed.push(hotline_proto::crypto::SUITE_XWING_CHACHA20_ED25519);
    framed.push(below(rng, 10) as u8);
    framed.extend_from_slice(&body);
    refit(&mut framed);
    framed
}

/// One to eight edits of a valid frame, with the length prefix refitted most of the time so
/// the edit reaches the payload decoder.
fn mutate(rng: &mut ChaCha20Rng, base: &[u8]) -> Vec<u8> {
    let mut out = base.to_vec();
    for _ in 0..1 + below(rng, 8) {
        match below(rng, 7) {
            0 if !out.is_empty() => {
                let i = below(rng, out.len());
                out[i] ^= 1 << below(rng, 8);
            }
            1 if !out.is_empty() => {
                let i = below(rng, out.len());
                out[i] = rng.next_u32() as u8;
            }
            2 if !out.is_empty() => {
                // Interesting values: varint continuation, extremes, small lengths.
                let i = below(rng, out.len());
                out[i] = [0x00, 0x01, 0x02, 0x3f, 0x40, 0x7f, 0x80, 0xff][below(rng, 8)];
            }
            3 => {
                let i = below(rng, out.len() + 1);
                let mut ins = vec![0u8; 1 + below(rng, 16)];
                rng.fill_bytes(&mut ins);
                out.splice(i..i, ins);
            }
            4 if !out.is_empty() => {
                let i = below(rng, out.len());
                let end = (i + 1 + below(rng, 16)).min(out.len());
                out.drain(i..end);
            }
            5 => {
                let i = below(rng, out.len() + 1);
                out.truncate(i);
            }
            6 if out.len() > 1 => {
                // Duplicate a slice in place.
                let i = below(rng, out.len());
                let end = (i + 1 + below(rng, 32)).min(out.len());
                let slice = out[i..end].to_vec();
                out.splice(i..i, slice);
            }
            _ => {}
        }
    }
    if below(rng, 4) != 0 {
        refit(&mut out);
    }
    out
}

fn refit(bytes: &mut [u8]) {
    if bytes.len() >= LEN_PREFIX {
        let len = (bytes.len() - LEN_PREFIX) as u32;
        bytes[..LEN_PREFIX].copy_from_slice(&len.to_be_bytes());
    }
}

fn below(rng: &mut ChaCha20Rng, n: usize) -> usize {
    (rng.next_u64() % n as u64) as usize
}

fn manifest_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn from_hex(text: &str) -> Vec<u8> {
    let digits: String = text.split_ascii_whitespace().collect();
    hex::decode(digits).unwrap()
}
