//! Per-message cost of the channel engine, with signatures amortized as designed.
//!
//! - `sender/{idle,batched}/{256,65536}`: `submit` → drain → confirm the persist → drain, which
//!   seals, extends the lane's hash chain, signs the chain head and encodes the frame. *Idle*
//!   flushes each message on its own (one Ed25519 signature per message); *batched* submits 64
//!   messages and flushes them together (one signature per 64).
//! - `receiver/{idle,batched}/{256,65536}`: envelope frames made beforehand by a real sender
//!   engine (outside the timed region) → `handle_frame` → drain → confirm → drain, which decodes,
//!   verifies the chain head, opens, chains, delivers and signs a receipt. *Idle* frames each carry
//!   a signed head; *batched* frames come 64 at a time with the head on the last one only, exactly
//!   as the sender emits them when batched.
//! - `baseline/*`: the per-message public-key costs the design avoids: an Ed25519 signature and
//!   a verification (ring), and a fresh X-Wing HPKE setup per message on each side.
//!
//! One iteration is one flush: a message when idle, 64 when batched, so the throughput is
//! reported in messages and the per-message time of a batched bench is its time divided by 64.
//! Engines are fresh for every sample. Every 256 messages, outside the timed region, the sender
//! gets a delivered receipt and fires its timers, so the outbox stays as small as it does with a
//! live partner instead of growing through the run.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark stops at the first failure"
)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use hotline_proto::crypto::{Domain, IdentityKey, RecvSession, SealingKey, SendSession};
use hotline_proto::engine::{Action, Engine, EngineConfig, Local, Outgoing, Partner, WriteId};
use hotline_proto::envelope::{Receipt, ReceiptKind, Signed};
use hotline_proto::wire::{self, EnvelopeFrame, Frame};
use hotline_proto::{Channel, EndpointId, Precedence, Time};

const START: Time = Time(1_700_000_000_000_000);
/// Messages per flush in batched mode.
const BATCH: usize = 64;
/// Messages between untimed clean-ups (a multiple of `BATCH`).
const CHUNK: usize = 256;
/// Body sizes measured.
const SIZES: [usize; 2] = [256, 64 * 1024];
/// Jumped after each chunk so that every retransmit and deadline timer fires (routine's
/// delivered deadline is 10 minutes).
const TIMER_JUMP: Duration = Duration::from_secs(11 * 60);

const SENDER: (&str, u8) = ("us", 1);
const RECIPIENT: (&str, u8) = ("jp", 2);

type Eng = Engine<ChaCha20Rng>;

#[derive(Clone, Copy)]
enum Mode {
    Idle,
    Batched,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Batched => "batched",
        }
    }

    fn per_flush(self) -> usize {
        match self {
            Self::Idle => 1,
            Self::Batched => BATCH,
        }
    }
}

#[expect(
    clippy::disallowed_methods,
    reason = "a benchmark measures wall-clock time; the engine itself never reads the clock"
)]
fn stopwatch() -> Instant {
    Instant::now()
}

fn engine(me: (&str, u8), partner: (&str, u8)) -> Eng {
    Engine::new(
        EngineConfig::default(),
        Local {
            id: EndpointId::new(me.0).unwrap(),
            key: IdentityKey::from_seed(&[me.1; 32]),
        },
        Partner {
            id: EndpointId::new(partner.0).unwrap(),
            key: IdentityKey::from_seed(&[partner.1; 32]).public(),
        },
        ChaCha20Rng::seed_from_u64(u64::from(me.1)),
        START,
    )
}

/// What draining an engine produced that the bench keeps.
#[derive(Default)]
struct Out {
    /// Frames to send, in order.
    sends: Vec<Vec<u8>>,
    /// How many messages were delivered.
    delivered: usize,
}

impl Out {
    fn with_capacity(n: usize) -> Self {
        Self {
            sends: Vec::with_capacity(n),
            delivered: 0,
        }
    }
}

/// Drains every action, as a shell would: keeps frames, counts deliveries, drops the records
/// (a real shell would hand them to its store) and returns the last write to confirm.
fn drain(e: &mut Eng, out: &mut Out) -> Option<WriteId> {
    let mut last = None;
    while let Some(action) = e.poll_action() {
        match action {
            Action::Send { frame, .. } => out.sends.push(frame),
            Action::Persist { id, record, .. } => {
                black_box(record);
                last = Some(id);
            }
            Action::Deliver(d) => {
                black_box(d);
                out.delivered += 1;
            }
            Action::Alarm(a) => panic!("unexpected alarm: {a:?}"),
            other => {
                black_box(other);
            }
        }
    }
    last
}

/// Drains and confirms until quiet (set-up and clean-up only).
fn settle(e: &mut Eng, now: Time, out: &mut Out) {
    while let Some(w) = drain(e, out) {
        e.handle_persisted(now, w);
    }
}

/// The sender path for one flush: submit, drain, confirm the persist, drain the sends.
fn flush(tx: &mut Eng, now: Time, msgs: impl Iterator<Item = Outgoing>, out: &mut Out) {
    for m in msgs {
        tx.submit(now, m).unwrap();
    }
    let w = drain(tx, out).expect("submit persists the outgoing message");
    tx.handle_persisted(now, w);
    let more = drain(tx, out);
    debug_assert!(more.is_none());
}

/// The receiver path for one flush's frames: handle each, drain, confirm, drain.
fn receive(rx: &mut Eng, now: Time, frames: &[Vec<u8>], out: &mut Out) {
    let mut last = None;
    for f in frames {
        rx.handle_frame(now, f).unwrap();
        last = drain(rx, out).or(last);
    }
    rx.handle_persisted(now, last.expect("a delivery persists its record"));
    let more = drain(rx, out);
    debug_assert!(more.is_none());
}

fn decode_envelope(frame: &[u8]) -> Option<EnvelopeFrame> {
    match wire::decode_frame(frame) {
        Ok((Frame::Envelope(e), _)) => Some(e),
        _ => None,
    }
}

/// `n` routine messages on the default channel with `size`-byte bodies (built outside the timed
/// region: the operator's text is the caller's).
fn outgoing(n: usize, size: usize) -> Vec<Outgoing> {
    (0..n)
        .map(|i| Outgoing {
            channel: Channel::default(),
            precedence: Precedence::Routine,
            body: vec![i as u8; size],
        })
        .collect()
}

/// A connected sender and recipient that have exchanged announcements and one message, so the
/// HPKE session is set up and confirmed (later frames carry no session setup).
struct Pair {
    tx: Eng,
    rx: Eng,
    rx_key: IdentityKey,
    now: Time,
}

impl Pair {
    fn new() -> Self {
        let now = START;
        let mut tx = engine(SENDER, RECIPIENT);
        let mut rx = engine(RECIPIENT, SENDER);
        let (mut a, mut b) = (Out::default(), Out::default());
        settle(&mut tx, now, &mut a);
        settle(&mut rx, now, &mut b);
        tx.handle_connected(now);
        rx.handle_connected(now);
        settle(&mut tx, now, &mut a);
        settle(&mut rx, now, &mut b);
        // Each announcement goes to the other side.
        for f in &a.sends {
            rx.handle_frame(now, f).unwrap();
        }
        for f in &b.sends {
            tx.handle_frame(now, f).unwrap();
        }
        let mut pair = Self {
            tx,
            rx,
            rx_key: IdentityKey::from_seed(&[RECIPIENT.1; 32]),
            now,
        };
        pair.settle_both();
        let mut frames = Out::default();
        let first = outgoing(1, 16);
        flush(&mut pair.tx, now, first.into_iter(), &mut frames);
        let mut receipts = Out::default();
        receive(&mut pair.rx, now, &frames.sends, &mut receipts);
        assert_eq!(receipts.delivered, 1);
        pair.feed_receipt(&receipts.sends);
        pair
    }

    fn settle_both(&mut self) {
        let mut sink = Out::default();
        settle(&mut self.tx, self.now, &mut sink);
        settle(&mut self.rx, self.now, &mut sink);
    }

    /// Gives the sender the recipient's latest receipt (a `Receipt` frame among `rx_sends`).
    fn feed_receipt(&mut self, rx_sends: &[Vec<u8>]) {
        let receipt = rx_sends
            .iter()
            .rev()
            .find(|f| matches!(wire::decode_frame(f), Ok((Frame::Receipt(_), _))))
            .expect("the recipient sent a receipt");
        self.tx.handle_frame(self.now, receipt).unwrap();
        self.clean_up();
    }

    /// Gives the sender a delivered receipt, signed by the recipient's key, for the last envelope
    /// among `tx_sends` (the sender bench runs without a recipient engine).
    fn ack_last(&mut self, tx_sends: &[Vec<u8>]) {
        let f = tx_sends
            .iter()
            .rev()
            .find_map(|f| decode_envelope(f))
            .expect("the sender sent an envelope");
        let h = &f.envelope.header;
        let receipt = Signed::sign(
            Receipt {
                from: h.recipient.clone(),
                to: h.sender.clone(),
                channel: h.channel.clone(),
                precedence: h.precedence,
                kind: ReceiptKind::Delivered {
                    upto: h.seq,
                    head: f.envelope.hash(),
                },
                at: self.now,
            },
            &self.rx_key,
        );
        let frame = wire::encode_frame(&Frame::Receipt(receipt));
        self.tx.handle_frame(self.now, &frame).unwrap();
        self.clean_up();
    }

    /// Settles the sender after a receipt, then fires every timer of messages now forgotten.
    fn clean_up(&mut self) {
        let mut sink = Out::default();
        settle(&mut self.tx, self.now, &mut sink);
        assert!(
            self.tx.outbox().next().is_none(),
            "the receipt covers every message"
        );
        self.now = self.now.plus(TIMER_JUMP);
        self.tx.handle_timeout(self.now);
        settle(&mut self.tx, self.now, &mut sink);
    }
}

/// Checks, once, that the modes are what the benches claim (signed heads and receipts).
fn check_modes() {
    let mut pair = Pair::new();
    let now = pair.now;
    for mode in [Mode::Idle, Mode::Batched] {
        let per = mode.per_flush();
        let mut frames = Out::default();
        flush(
            &mut pair.tx,
            now,
            outgoing(per, 256).into_iter(),
            &mut frames,
        );
        assert_eq!(frames.sends.len(), per);
        for (i, f) in frames.sends.iter().enumerate() {
            let e = decode_envelope(f).expect("an envelope frame");
            assert_eq!(e.head.is_some(), i + 1 == per, "{} frame {i}", mode.name());
            assert!(e.setup.is_none(), "the session setup is already confirmed");
        }
        let mut receipts = Out::default();
        receive(&mut pair.rx, now, &frames.sends, &mut receipts);
        assert_eq!(receipts.delivered, per);
        assert_eq!(receipts.sends.len(), 1, "one signed receipt per flush");
        pair.feed_receipt(&receipts.sends);
    }
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
}

/// Runs `chunk(pair, n, per, size)` over fresh pairs until `iters` flushes of `per` messages are
/// done, `CHUNK` messages at a time, and sums the durations `chunk` timed.
fn bench_flushes(
    c: &mut Criterion,
    group: &str,
    mut chunk: impl FnMut(&mut Pair, usize, usize, usize) -> Duration,
) {
    let mut g = c.benchmark_group(group);
    for size in SIZES {
        for mode in [Mode::Idle, Mode::Batched] {
            let per = mode.per_flush();
            g.throughput(Throughput::Elements(per as u64));
            g.bench_with_input(BenchmarkId::new(mode.name(), size), &size, |b, &size| {
                b.iter_custom(|iters| {
                    let mut pair = Pair::new();
                    let mut elapsed = Duration::ZERO;
                    let mut left = iters;
                    while left > 0 {
                        let n = left.min((CHUNK / per) as u64) as usize;
                        left -= n as u64;
                        elapsed += chunk(&mut pair, n, per, size);
                    }
                    elapsed
                });
            });
        }
    }
    g.finish();
}

fn bench_sender(c: &mut Criterion) {
    check_modes();
    bench_flushes(c, "sender", |pair, n, per, size| {
        let now = pair.now;
        let mut msgs = outgoing(n * per, size).into_iter();
        let mut out = Out::with_capacity(n * per);
        let t = stopwatch();
        for _ in 0..n {
            flush(&mut pair.tx, now, msgs.by_ref().take(per), &mut out);
        }
        let elapsed = t.elapsed();
        assert_eq!(out.sends.len(), n * per);
        pair.ack_last(&out.sends);
        elapsed
    });
}

fn bench_receiver(c: &mut Criterion) {
    bench_flushes(c, "receiver", |pair, n, per, size| {
        let now = pair.now;
        // Untimed: the sender makes this chunk's frames, flush by flush.
        let mut msgs = outgoing(n * per, size).into_iter();
        let mut frames = Out::with_capacity(n * per);
        for _ in 0..n {
            flush(&mut pair.tx, now, msgs.by_ref().take(per), &mut frames);
        }
        assert_eq!(frames.sends.len(), n * per);
        let mut out = Out::with_capacity(n);
        let t = stopwatch();
        for batch in frames.sends.chunks(per) {
            receive(&mut pair.rx, now, batch, &mut out);
        }
        let elapsed = t.elapsed();
        assert_eq!(out.delivered, n * per);
        drop(frames);
        pair.feed_receipt(&out.sends);
        elapsed
    });
}

fn bench_baseline(c: &mut Criterion) {
    let mut g = c.benchmark_group("baseline");
    g.throughput(Throughput::Elements(1));

    let key = IdentityKey::from_seed(&[SENDER.1; 32]);
    let public = key.public();
    // About the size of an encoded chain head.
    let payload = [0x42u8; 96];
    g.bench_function("ed25519_sign", |b| {
        b.iter(|| key.sign(Domain::ChainHead, black_box(&payload)));
    });
    let sig = key.sign(Domain::ChainHead, &payload);
    g.bench_function("ed25519_verify", |b| {
        b.iter(|| {
            public
                .verify(Domain::ChainHead, black_box(&payload), &sig)
                .unwrap();
        });
    });

    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let sealing = SealingKey::generate(&mut rng);
    let sealing_public = sealing.public_bytes();
    let info = b"hotline/v1 session\0us\0jp\0\0\0\0\x01";
    // About the size of an encoded header (the AEAD's associated data).
    let aad = [0x17u8; 112];
    for size in SIZES {
        let body = vec![0x5au8; size];
        g.bench_with_input(
            BenchmarkId::new("hpke_setup_seal", size),
            &body,
            |b, body| {
                b.iter(|| {
                    let (session, enc) =
                        SendSession::establish(&mut rng, &sealing_public, info).unwrap();
                    let sealed = session.seal(0, 1, &aad, body).unwrap();
                    (enc, sealed)
                });
            },
        );
        let (session, enc) = SendSession::establish(&mut rng, &sealing_public, info).unwrap();
        let sealed = session.seal(0, 1, &aad, &body).unwrap();
        g.bench_with_input(
            BenchmarkId::new("hpke_accept_open", size),
            &sealed,
            |b, sealed| {
                b.iter(|| {
                    let session = RecvSession::accept(&sealing, black_box(&enc), info).unwrap();
                    session.open(0, 1, &aad, sealed).unwrap()
                });
            },
        );
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_sender, bench_receiver, bench_baseline
}
criterion_main!(benches);
