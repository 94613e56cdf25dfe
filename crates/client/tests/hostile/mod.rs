//! A hostile relay: a test double that speaks the relay's connection protocol well enough for
//! honest traffic to flow, and attacks the frames it forwards.
//!
//! The real relay is honest by construction, so it cannot show what the nodes do when the one
//! machine between them lies. This double holds the relay's real certificate and key (from the
//! exercise PKI `certs::init` writes), so the nodes accept it; from there on it may replay,
//! reorder, duplicate, drop, corrupt or forge anything, which is exactly the power the design
//! grants a compromised relay.
//!
//! What it does like the real relay (`crates/relay/src/server/client.rs` and the router):
//! - the node opens the control stream and says `Hello`; the relay answers `Hello` and opens its
//!   four lane streams, each starting with the lane byte; the node's lane streams are read after
//!   their lane byte; frames are length-prefixed;
//! - on connect the node learns its partner's presence and latest announcement; the partner is
//!   told the node is online (and offline when it goes);
//! - every envelope is answered `Accepted{durable: true}` on the sender's control stream and
//!   forwarded to the partner on the lane it came in on; receipts, link tests, announcements and
//!   escalation notices go to the partner's control stream; frames for an offline partner wait
//!   (link tests excepted).
//!
//! What it does not do: queue durably, deduplicate, expire, or check senders (it is the
//! attacker; nodes must check). One [`Attack`] applies to forwarded frames and can be changed
//! at any time with [`HostileRelay::set_attack`]; randomness comes from a seeded RNG, so each
//! test's choices are reproducible up to the interleaving of the nodes' own traffic.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use hotline_net::framed::{self, LaneTag};
use hotline_net::quic::{self, Timeouts};
use hotline_net::tls::{self, Credentials};
use hotline_proto::crypto::{Digest, IdentityKey, SUITE_XWING_CHACHA20_ED25519};
use hotline_proto::envelope::{ChainHead, LinkTest, Receipt, ReceiptKind, Signed, sign_head};
use hotline_proto::wire::{
    self, Accepted, Frame, Hello, LEN_PREFIX, PROTOCOL_VERSION, Presence, Refusal, RefusalCode,
};
use hotline_proto::{Channel, EndpointId, Lane, MessageId, Precedence, Seq, Time};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

/// How often held (reordered) frames are released and old frames replayed.
const TICK: Duration = Duration::from_millis(100);
/// Frames remembered for replay; enough for a test's traffic, bounded so replay stays cheap.
const MAX_RECORDED: usize = 600;
/// Bad-head twins injected per destination: each raises an alarm; kept few so the test stays
/// quick (the alarm book keeps each kind and cause once anyway).
const MAX_TWINS: usize = 5;
/// Size of the forged refusal's detail: far beyond anything a real relay writes, still within
/// the frame limit, so it reaches the node instead of closing the connection.
const HUGE_DETAIL: usize = 200 * 1024;

/// What the relay does to the frames it forwards (never to its own `Hello`, `Accepted` and
/// `Presence`, nor to the greeting a connecting node gets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Attack {
    /// Forward faithfully.
    Honest,
    /// Forward, remember, and every other tick send every remembered frame again.
    Replay,
    /// Forward nothing new; keep replaying what was remembered under [`Attack::Replay`].
    ReplayOnly,
    /// Hold forwarded frames and release them shuffled, `batch` at a time (or at each tick).
    Reorder { batch: usize },
    /// Forward every frame twice.
    Duplicate,
    /// Drop every frame `side` sends except its link tests (its envelopes are still
    /// `Accepted`, so its node believes the relay holds them).
    DropAllButLinkTestsFrom(EndpointId),
    /// Drop every envelope `side` sends in the `lane` ordering lane (whatever its transport),
    /// after answering `Accepted`.
    DropLaneFrom(EndpointId, Precedence),
    /// Drop every link test.
    DropLinkTests,
    /// Drop each envelope the first time its id is offered, without `Accepted`.
    DropFirstOffer,
    /// Flip one random bit after the length prefix in one forwarded frame in `one_in`.
    FlipBits { one_in: u64 },
    /// Before forwarded frames, send forgeries to the same node: each of `script` once, in
    /// turn, and with `twins`, bad-head twins of the first envelopes (see
    /// [`State::inject_before`]).
    Inject {
        script: &'static [Forgery],
        twins: bool,
    },
}

/// The forgeries [`Attack::Inject`] sends, each detectable except the last two, which a node
/// must merely ignore.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Forgery {
    /// A receipt in the partner's name signed by another key.
    WrongKeyReceipt,
    /// A link test from an endpoint outside the hotline, signed by its own key.
    StrangerLinkTest,
    /// A frame whose postcard payload is junk.
    Junk,
    /// `Refused` with a 200 KiB detail.
    HugeRefusal,
    /// `Presence` of an endpoint outside the hotline.
    StrangerPresence,
    /// `Accepted` for a message of an endpoint outside the hotline.
    StrangerAccepted,
}

impl Forgery {
    /// Each forgery once, in this order.
    pub(crate) const ALL: [Self; 6] = [
        Self::WrongKeyReceipt,
        Self::StrangerLinkTest,
        Self::Junk,
        Self::HugeRefusal,
        Self::StrangerPresence,
        Self::StrangerAccepted,
    ];
}

/// What the relay did, for tests to check that an attack actually happened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Stats {
    /// Frames dropped by the attack.
    pub(crate) dropped: u64,
    /// Rounds of replay by [`Attack::Replay`] or [`Attack::ReplayOnly`], each sending every
    /// remembered frame again.
    pub(crate) replay_rounds: u64,
    /// Frames with a flipped bit.
    pub(crate) flipped: u64,
    /// Forged frames sent (bad-head twins included).
    pub(crate) injected: u64,
}

/// A running hostile relay on `127.0.0.1`. Dropping it stops its tasks and closes its endpoint.
#[derive(Debug)]
pub(crate) struct HostileRelay {
    addr: SocketAddr,
    endpoint: quinn::Endpoint,
    state: Arc<Mutex<State>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for HostileRelay {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.endpoint.close(0u32.into(), b"test over");
    }
}

impl HostileRelay {
    /// Starts on `127.0.0.1:0` with the relay credentials and CA in `pki` (a `certs::init`
    /// directory), serving the hotline `pair`, honest until told otherwise.
    pub(crate) fn spawn(
        pki: &std::path::Path,
        pair: (EndpointId, EndpointId),
        seed: u64,
    ) -> Result<Self> {
        let ca = tls::load_certs(&pki.join("ca.pem"))?;
        let creds = Credentials::load(&pki.join("relay.pem"), &pki.join("relay.key"))?;
        let config = tls::server_config(&ca, creds, Vec::new(), Timeouts::default())?;
        let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let endpoint = quic::server(socket, config, None)?;
        let addr = endpoint.local_addr()?;
        let state = Arc::new(Mutex::new(State::new(pair, seed)));
        let accept = tokio::spawn(accept_loop(endpoint.clone(), state.clone()));
        let ticker = tokio::spawn(tick_loop(state.clone()));
        Ok(Self {
            addr,
            endpoint,
            state,
            tasks: vec![accept, ticker],
        })
    }

    /// Where nodes reach it.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes the attack from the next frame on (held frames are released first).
    pub(crate) fn set_attack(&self, attack: Attack) {
        let mut s = lock(&self.state);
        s.release_held();
        s.attack = attack;
    }

    /// What it did so far.
    pub(crate) fn stats(&self) -> Stats {
        lock(&self.state).stats
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panicking test task must not hide the relay's state from the rest of the test.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One node's current connection: a writer per outgoing stream, by [`Lane::index`].
#[derive(Debug)]
struct Conn {
    id: u64,
    lanes: [mpsc::UnboundedSender<Vec<u8>>; Lane::COUNT],
}

/// A frame on its way to `to` on `lane`.
#[derive(Clone, Debug)]
struct Out {
    to: EndpointId,
    lane: Lane,
    bytes: Vec<u8>,
}

#[derive(Debug)]
struct State {
    attack: Attack,
    rng: ChaCha20Rng,
    partners: BTreeMap<EndpointId, EndpointId>,
    conns: BTreeMap<EndpointId, Conn>,
    next_conn: u64,
    /// The latest announcement of each endpoint, handed to its partner on connect.
    announcements: BTreeMap<EndpointId, Vec<u8>>,
    /// Frames for an endpoint that is offline, in order.
    waiting: BTreeMap<EndpointId, Vec<(Lane, Vec<u8>)>>,
    /// Frames forwarded under [`Attack::Replay`].
    recorded: Vec<Out>,
    /// Frames held by [`Attack::Reorder`].
    held: Vec<Out>,
    /// Envelope ids offered so far, for [`Attack::DropFirstOffer`].
    offered: BTreeSet<MessageId>,
    /// Per destination: the next [`Forgery`] index and the bad-head twins sent.
    forged: BTreeMap<EndpointId, (usize, usize)>,
    ticks: u64,
    stats: Stats,
}

impl State {
    fn new((a, b): (EndpointId, EndpointId), seed: u64) -> Self {
        Self {
            attack: Attack::Honest,
            rng: ChaCha20Rng::seed_from_u64(seed),
            partners: BTreeMap::from([(a.clone(), b.clone()), (b, a)]),
            conns: BTreeMap::new(),
            next_conn: 0,
            announcements: BTreeMap::new(),
            waiting: BTreeMap::new(),
            recorded: Vec::new(),
            held: Vec::new(),
            offered: BTreeSet::new(),
            forged: BTreeMap::new(),
            ticks: 0,
            stats: Stats::default(),
        }
    }

    /// `peer` connected: greet it as the real router does (partner presence, then the
    /// partner's announcement), tell the partner, and hand over what waited.
    fn connected(
        &mut self,
        peer: &EndpointId,
        lanes: [mpsc::UnboundedSender<Vec<u8>>; Lane::COUNT],
    ) -> u64 {
        let id = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(peer.clone(), Conn { id, lanes });
        let Some(partner) = self.partners.get(peer).cloned() else {
            return id;
        };
        let online = self.conns.contains_key(&partner);
        self.write(peer, Lane::Control, presence(&partner, online));
        if let Some(ann) = self.announcements.get(&partner).cloned() {
            self.write(peer, Lane::Control, ann);
        }
        self.write(&partner, Lane::Control, presence(peer, true));
        for (lane, bytes) in self.waiting.remove(peer).unwrap_or_default() {
            self.write(peer, lane, bytes);
        }
        id
    }

    /// Connection `id` of `peer` closed.
    fn disconnected(&mut self, peer: &EndpointId, id: u64) {
        if self.conns.get(peer).is_none_or(|c| c.id != id) {
            return;
        }
        self.conns.remove(peer);
        if let Some(partner) = self.partners.get(peer).cloned() {
            self.write(&partner, Lane::Control, presence(peer, false));
        }
    }

    /// Writes `bytes` to `to`'s `lane` now, or keeps it until `to` connects. Link tests and
    /// presence only make sense live, as at the real relay.
    fn write(&mut self, to: &EndpointId, lane: Lane, bytes: Vec<u8>) {
        match self.conns.get(to) {
            Some(c) => {
                let _ = c.lanes[lane.index()].send(bytes);
            }
            None => {
                let live_only = matches!(
                    wire::decode_frame(&bytes),
                    Ok((Frame::LinkTest(_) | Frame::Presence(_), _))
                );
                if !live_only {
                    self.waiting
                        .entry(to.clone())
                        .or_default()
                        .push((lane, bytes));
                }
            }
        }
    }

    /// A whole frame from `from` on `lane`.
    fn on_frame(&mut self, from: &EndpointId, lane: Lane, bytes: Vec<u8>) {
        let Some(to) = self.partners.get(from).cloned() else {
            return;
        };
        // Honest nodes send frames that decode; anything else is not worth forwarding.
        let Ok((frame, _)) = wire::decode_frame(&bytes) else {
            return;
        };
        match &frame {
            Frame::Hello(_) | Frame::Accepted(_) | Frame::Refused(_) | Frame::Presence(_) => {
                return;
            }
            Frame::Envelope(env) => {
                let id = env.envelope.header.message_id();
                if self.attack == Attack::DropFirstOffer && self.offered.insert(id.clone()) {
                    self.stats.dropped += 1;
                    return;
                }
                let accepted = wire::encode_frame(&Frame::Accepted(Accepted { id, durable: true }));
                self.write(from, Lane::Control, accepted);
            }
            Frame::Announcement(_) => {
                self.announcements.insert(from.clone(), bytes.clone());
            }
            Frame::Receipt(_) | Frame::LinkTest(_) | Frame::Escalation(_) => {}
        }
        self.forward(from, &frame, Out { to, lane, bytes });
    }

    /// Applies the attack to one frame on its way.
    fn forward(&mut self, from: &EndpointId, frame: &Frame, out: Out) {
        let is_link_test = matches!(frame, Frame::LinkTest(_));
        match self.attack.clone() {
            Attack::Honest | Attack::DropFirstOffer => self.deliver(out),
            Attack::Replay => {
                if self.recorded.len() < MAX_RECORDED {
                    self.recorded.push(out.clone());
                }
                self.deliver(out);
            }
            Attack::ReplayOnly => self.stats.dropped += 1,
            Attack::Reorder { batch } => {
                self.held.push(out);
                if self.held.len() >= batch {
                    self.release_held();
                }
            }
            Attack::Duplicate => {
                self.deliver(out.clone());
                self.deliver(out);
            }
            Attack::DropAllButLinkTestsFrom(side) => {
                if *from == side && !is_link_test {
                    self.stats.dropped += 1;
                } else {
                    self.deliver(out);
                }
            }
            Attack::DropLaneFrom(side, lane) => {
                let in_lane =
                    matches!(frame, Frame::Envelope(e) if e.envelope.header.precedence == lane);
                if *from == side && in_lane {
                    self.stats.dropped += 1;
                } else {
                    self.deliver(out);
                }
            }
            Attack::DropLinkTests => {
                if is_link_test {
                    self.stats.dropped += 1;
                } else {
                    self.deliver(out);
                }
            }
            Attack::FlipBits { one_in } => {
                let mut out = out;
                if self.rng.next_u64() % one_in == 0 {
                    let body = out.bytes.len() - LEN_PREFIX;
                    let bit = self.rng.next_u64() % (body as u64 * 8);
                    out.bytes[LEN_PREFIX + (bit / 8) as usize] ^= 1 << (bit % 8);
                    self.stats.flipped += 1;
                }
                self.deliver(out);
            }
            Attack::Inject { script, twins } => {
                self.inject_before(from, frame, &out, script, twins);
                self.deliver(out);
            }
        }
    }

    fn deliver(&mut self, out: Out) {
        self.write(&out.to, out.lane, out.bytes);
    }

    /// Releases the frames [`Attack::Reorder`] holds, shuffled (Fisher–Yates).
    fn release_held(&mut self) {
        let mut held = std::mem::take(&mut self.held);
        for i in (1..held.len()).rev() {
            let j = (self.rng.next_u64() % (i as u64 + 1)) as usize;
            held.swap(i, j);
        }
        for out in held {
            self.deliver(out);
        }
    }

    fn tick(&mut self) {
        self.ticks += 1;
        match self.attack {
            Attack::Reorder { .. } => self.release_held(),
            Attack::Replay | Attack::ReplayOnly if self.ticks % 2 == 0 => {
                self.stats.replay_rounds += 1;
                for out in self.recorded.clone() {
                    self.deliver(out);
                }
            }
            _ => {}
        }
    }

    /// Sends `out.to` the forgeries due before `out`: with `with_twins`, a twin of an envelope
    /// with a chain-head signature by another key (while fewer than [`MAX_TWINS`] were sent),
    /// then the next forgery of `script` (each once).
    fn inject_before(
        &mut self,
        from: &EndpointId,
        frame: &Frame,
        out: &Out,
        script: &[Forgery],
        with_twins: bool,
    ) {
        let to = out.to.clone();
        let (next, twins) = *self.forged.entry(to.clone()).or_default();
        let twin_due = with_twins && twins < MAX_TWINS;
        let mut forged = Vec::new();
        if let (Frame::Envelope(env), true) = (frame, twin_due) {
            let mut twin = env.clone();
            let hash = twin.envelope.hash();
            twin.head = Some(sign_head(
                &ChainHead::of(&twin.envelope, hash),
                &wrong_key(),
            ));
            forged.push((out.lane, wire::encode_frame(&Frame::Envelope(twin))));
        }
        if let Some(kind) = script.get(next) {
            forged.push((Lane::Control, forgery(*kind, from, &to)));
        }
        let twins = twins + usize::from(matches!(frame, Frame::Envelope(_)) && twin_due);
        self.forged.insert(to.clone(), (next + 1, twins));
        for (lane, bytes) in forged {
            self.stats.injected += 1;
            self.write(&to, lane, bytes);
        }
    }
}

/// A key that is nobody's in the hotline.
fn wrong_key() -> IdentityKey {
    IdentityKey::from_seed(&[0x66; 32])
}

fn stranger() -> EndpointId {
    // A valid name; `unwrap_or_else` keeps clippy's `expect_used` out of non-test code.
    EndpointId::new("mallory").unwrap_or_else(|e| panic!("a valid endpoint name: {e}"))
}

fn presence(endpoint: &EndpointId, online: bool) -> Vec<u8> {
    wire::encode_frame(&Frame::Presence(Presence {
        endpoint: endpoint.clone(),
        online,
    }))
}

/// One forged frame for `to`, pretending where it can to come from its partner `from`.
fn forgery(kind: Forgery, from: &EndpointId, to: &EndpointId) -> Vec<u8> {
    let now = Time(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64),
    );
    match kind {
        Forgery::WrongKeyReceipt => wire::encode_frame(&Frame::Receipt(Signed::sign(
            Receipt {
                from: from.clone(),
                to: to.clone(),
                channel: Channel::default(),
                precedence: Precedence::Flash,
                kind: ReceiptKind::Delivered {
                    upto: Seq(u64::MAX / 2),
                    head: Digest::default(),
                },
                at: now,
            },
            &wrong_key(),
        ))),
        Forgery::StrangerLinkTest => wire::encode_frame(&Frame::LinkTest(Signed::sign(
            LinkTest {
                from: stranger(),
                to: to.clone(),
                seq: 1,
                at: now,
                audit_len: 0,
                audit_head: Digest::default(),
            },
            &wrong_key(),
        ))),
        Forgery::Junk => {
            // Version and suite are right; the postcard payload is an overlong varint.
            let mut body = vec![PROTOCOL_VERSION, SUITE_XWING_CHACHA20_ED25519];
            body.extend([0xFF; 64]);
            let mut frame = (body.len() as u32).to_be_bytes().to_vec();
            frame.extend(body);
            frame
        }
        Forgery::HugeRefusal => wire::encode_frame(&Frame::Refused(Refusal {
            id: None,
            code: RefusalCode::Malformed,
            detail: "x".repeat(HUGE_DETAIL),
        })),
        Forgery::StrangerPresence => presence(&stranger(), false),
        Forgery::StrangerAccepted => wire::encode_frame(&Frame::Accepted(Accepted {
            id: MessageId {
                sender: stranger(),
                channel: Channel::default(),
                precedence: Precedence::Flash,
                seq: Seq(1),
            },
            durable: true,
        })),
    }
}

async fn tick_loop(state: Arc<Mutex<State>>) {
    let mut every = tokio::time::interval(TICK);
    loop {
        every.tick().await;
        lock(&state).tick();
    }
}

async fn accept_loop(endpoint: quinn::Endpoint, state: Arc<Mutex<State>>) {
    let mut conns = JoinSet::new();
    while let Some(incoming) = endpoint.accept().await {
        let state = state.clone();
        conns.spawn(async move {
            // A failed handshake or hello only ends that connection; the node redials.
            let _ = serve(incoming, state).await;
        });
        while conns.try_join_next().is_some() {}
    }
}

/// One connection: identity, hello, streams, then frames until it closes.
async fn serve(incoming: quinn::Incoming, state: Arc<Mutex<State>>) -> Result<()> {
    let conn = incoming.await?;
    let (peer, _) = tls::peer_identity(&conn)?;
    let (mut control_send, mut control_recv) = conn.accept_bi().await?;
    let first = framed::read_frame(&mut control_recv)
        .await?
        .ok_or_else(|| anyhow!("control stream finished before hello"))?;
    match wire::decode_frame(&first) {
        Ok((Frame::Hello(h), _)) => h.check()?,
        _ => bail!("first frame is not a hello"),
    }
    let hello = wire::encode_frame(&Frame::Hello(Hello {
        version: PROTOCOL_VERSION,
        agent: "hostile-relay/0".into(),
    }));
    framed::write_frame(&mut control_send, &hello).await?;

    let mut tasks = JoinSet::new();
    let mut senders = Vec::with_capacity(Lane::COUNT);
    senders.push(spawn_writer(&mut tasks, control_send));
    for lane in Lane::ALL {
        let Some(p) = lane.precedence() else { continue };
        let mut s = conn.open_uni().await?;
        s.set_priority(lane.priority()).ok();
        LaneTag(p).write(&mut s).await?;
        senders.push(spawn_writer(&mut tasks, s));
    }
    let senders: [_; Lane::COUNT] = senders
        .try_into()
        .map_err(|_| anyhow!("one writer per lane"))?;
    let id = lock(&state).connected(&peer, senders);

    tasks.spawn(read_stream(
        state.clone(),
        peer.clone(),
        Lane::Control,
        control_recv,
    ));
    let reason = loop {
        match conn.accept_uni().await {
            Ok(mut recv) => {
                let LaneTag(p) = LaneTag::read(&mut recv).await.context("lane tag")?;
                tasks.spawn(read_stream(
                    state.clone(),
                    peer.clone(),
                    Lane::Precedence(p),
                    recv,
                ));
            }
            Err(e) => break e,
        }
    };
    lock(&state).disconnected(&peer, id);
    Err(reason.into())
}

fn spawn_writer(
    tasks: &mut JoinSet<()>,
    mut stream: quinn::SendStream,
) -> mpsc::UnboundedSender<Vec<u8>> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    tasks.spawn(async move {
        while let Some(frame) = rx.recv().await {
            if framed::write_frame(&mut stream, &frame).await.is_err() {
                return;
            }
        }
    });
    tx
}

async fn read_stream(
    state: Arc<Mutex<State>>,
    peer: EndpointId,
    lane: Lane,
    mut recv: quinn::RecvStream,
) {
    while let Ok(Some(frame)) = framed::read_frame(&mut recv).await {
        lock(&state).on_frame(&peer, lane, frame);
    }
}
