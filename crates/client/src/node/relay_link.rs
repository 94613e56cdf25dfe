//! The relay links: one QUIC connection to each configured relay, each redialled with backoff
//! while the node runs. All are used at once (the engine loop offers every frame on every live
//! link and takes whatever arrives first; the engine's dedupe does the rest).
//!
//! Per connection the node opens the bidirectional control stream (starting with our `Hello`;
//! the relay's own `Hello` must pass [`Hello::check`] before anything else happens) and one
//! unidirectional stream per precedence lane (starting with its lane byte), each fed by
//! its own writer task, and stream priorities follow [`Lane::priority`]. Frames the relay sends
//! are read whole and handed to the engine loop on one bounded channel per lane (shared by
//! every relay, each frame tagged with its relay), so a flood on routine never queues ahead of
//! flash or control. A relay address may be a host name: it is resolved at every dial.
//!
//! It does not interpret frames (the engine does) nor decide what to resend (the engine re-offers
//! on [`LinkEventKind::Connected`]).
//!
//! A connection the relay closes because another connection took our identity
//! ([`CloseReason::IdentityConflict`]) or because it keeps the other one for a while
//! ([`CloseReason::IdentityInUse`]) is reported as [`LinkEventKind::IdentityConflict`]: another node
//! runs with our identity (a copied configuration, or a stolen key). The link keeps redialling,
//! but such a close does not reset the backoff, so a refused node retries every
//! [`MAX_BACKOFF`] rather than hammering the relay.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use hotline_net::close::CloseReason;
use hotline_net::framed::{self, LaneTag};
use hotline_proto::wire::{self, Frame, Hello};
use hotline_proto::{Lane, Precedence};
use tokio::sync::{Notify, mpsc};
use tracing::{debug, info, warn};

use crate::config::RelayAddress;

/// Frames from the relay waiting for the engine loop, per lane.
const READ_QUEUE_FRAMES: usize = 1024;
/// First redial delay after a failure; doubles up to [`MAX_BACKOFF`], and each wait is
/// jittered down by up to half so that many nodes do not redial a returning relay in step.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// At most this long between redials: a healed path is never left idle for longer (it was 5 s;
/// with several relays a relay that comes back should carry traffic again at once).
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long the relay has to answer our hello with its own.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Frames queued on a connection's writers at or above which the engine loop stops taking
/// routine, priority and immediate sends (see [`Writers::backlog`]).
pub(super) const EGRESS_PAUSE_FRAMES: usize = 2048;
/// A paused engine loop is woken when a connection's queue falls to this many frames.
const EGRESS_RESUME_FRAMES: usize = EGRESS_PAUSE_FRAMES / 2;

/// Senders feeding the per-stream writer tasks of the current connection, by [`Lane::index`],
/// and how many frames they hold that are not yet written.
#[derive(Debug)]
pub(super) struct Writers {
    lanes: [mpsc::UnboundedSender<Vec<u8>>; Lane::COUNT],
    queued: Arc<AtomicUsize>,
}

impl Writers {
    /// Queues `frame` on `lane`'s stream; dropped if the connection just went away (the engine
    /// re-offers everything unconfirmed on the next connection).
    pub(super) fn send(&self, lane: Lane, frame: Vec<u8>) {
        self.queued.fetch_add(1, Ordering::Relaxed);
        if self.lanes[lane.index()].send(frame).is_err() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Frames handed to this connection and not yet written to QUIC. When the relay or the
    /// path takes frames more slowly than operators submit them, the backlog shows here: the
    /// engine loop then stops taking new non-flash sends, so the node's one thread goes to
    /// moving what it already holds rather than to taking in more (issue 12: under a flood
    /// at 1.2× capacity, intake took the thread and delivery fell to a fifth of the maximum).
    pub(super) fn backlog(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
}

/// A whole frame read from relay number `relay` (its index in the configuration).
#[derive(Debug)]
pub(super) struct RelayFrame {
    pub(super) relay: usize,
    pub(super) bytes: Vec<u8>,
}

/// Frames read from the relays, one channel per lane, by [`Lane::index`].
pub(super) type LaneSenders = [mpsc::Sender<RelayFrame>; Lane::COUNT];
/// The engine loop's ends of [`LaneSenders`].
pub(super) type LaneReceivers = [mpsc::Receiver<RelayFrame>; Lane::COUNT];

/// One bounded channel per lane.
pub(super) fn lane_channels() -> (LaneSenders, LaneReceivers) {
    let pairs: [_; Lane::COUNT] = std::array::from_fn(|_| mpsc::channel(READ_QUEUE_FRAMES));
    let senders = pairs.each_ref().map(|(tx, _)| tx.clone());
    (senders, pairs.map(|(_, rx)| rx))
}

/// What relay number `relay`'s link tells the engine loop.
#[derive(Debug)]
pub(super) struct LinkEvent {
    pub(super) relay: usize,
    pub(super) kind: LinkEventKind,
}

/// What happened on one relay link.
#[derive(Debug)]
pub(super) enum LinkEventKind {
    /// A connection is up; frames for it go to these writers.
    Connected(Writers),
    /// The connection ended, for this reason.
    Disconnected(String),
    /// A dial failed, for this reason; the link retries.
    Failed(String),
    /// The relay closed the connection (or the dial) because another connection uses our
    /// identity; the link retries.
    IdentityConflict(CloseReason),
}

/// The relay closed the connection while it was being set up, with one of its close codes.
#[derive(Debug, thiserror::Error)]
#[error("closed by relay: {}", .0.reason())]
struct RelayClosed(CloseReason);

/// The relay's reason, if it closed `conn` with one of its close codes.
fn relay_close(conn: &quinn::Connection) -> Option<CloseReason> {
    conn.close_reason().as_ref().and_then(CloseReason::of)
}

/// Where and how to reach one relay.
#[derive(Debug)]
pub(super) struct RelayTarget {
    /// Its index in the configuration.
    pub(super) index: usize,
    pub(super) address: RelayAddress,
    pub(super) client_config: quinn::ClientConfig,
    /// Told when a connection's writers drain (see [`Writers::backlog`]).
    pub(super) drained: Arc<Notify>,
}

/// Dials one relay, serves each connection until it ends, and redials with backoff; runs until
/// the engine loop goes away.
pub(super) async fn run(
    target: RelayTarget,
    net: LaneSenders,
    events: mpsc::UnboundedSender<LinkEvent>,
) {
    let mut backoff = MIN_BACKOFF;
    let mut endpoint = None;
    let send = |kind| {
        events
            .send(LinkEvent {
                relay: target.index,
                kind,
            })
            .is_ok()
    };
    loop {
        let event = match connect_once(&target, &mut endpoint).await {
            Ok((conn, writers, control)) => {
                info!("connected to relay");
                if !send(LinkEventKind::Connected(writers)) {
                    return;
                }
                let reason = serve_connection(&conn, control, &net, target.index).await;
                match relay_close(&conn) {
                    Some(close) if close.is_identity_conflict() => {
                        warn!(
                            reason = close.reason(),
                            "relay closed the connection: another node uses our identity"
                        );
                        LinkEventKind::IdentityConflict(close)
                    }
                    close => {
                        backoff = MIN_BACKOFF;
                        // The relay's typed reason (unpaired or revoked by a reload, shutdown)
                        // rather than whichever stream noticed the close first.
                        let reason =
                            close.map_or(reason, |c| format!("closed by relay: {}", c.reason()));
                        warn!(reason = %reason, "relay connection lost");
                        LinkEventKind::Disconnected(reason)
                    }
                }
            }
            Err(e) => match e.downcast_ref::<RelayClosed>() {
                Some(RelayClosed(close)) if close.is_identity_conflict() => {
                    warn!(
                        reason = close.reason(),
                        "relay refused the connection: another node uses our identity"
                    );
                    LinkEventKind::IdentityConflict(*close)
                }
                _ => {
                    let msg = format!("{e:#}");
                    warn!(error = %msg, "cannot connect to relay");
                    LinkEventKind::Failed(msg)
                }
            },
        };
        if !send(event) {
            return;
        }
        tokio::time::sleep(jittered(backoff)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// `backoff` less a pseudo-random part of up to half of it. The clock's nanoseconds are
/// entropy enough to spread redials; nothing here needs to be unpredictable.
fn jittered(backoff: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let fraction = f64::from(nanos % 1000) / 2000.0;
    backoff.mul_f64(1.0 - fraction)
}

/// Resolves the relay's address (a host name, at every dial), makes sure `endpoint` is a UDP
/// socket of the right address family, and connects.
async fn connect_once(
    target: &RelayTarget,
    endpoint: &mut Option<quinn::Endpoint>,
) -> Result<(quinn::Connection, Writers, quinn::RecvStream)> {
    let RelayAddress { addr, name } = &target.address;
    let addr = tokio::net::lookup_host(addr.as_str())
        .await
        .with_context(|| format!("resolving relay address {addr}"))?
        .next()
        .with_context(|| format!("relay address {addr} resolves to nothing"))?;
    let family_ok = endpoint
        .as_ref()
        .and_then(|e| e.local_addr().ok())
        .is_some_and(|local| local.is_ipv6() == addr.is_ipv6());
    if !family_ok {
        *endpoint = Some(hotline_net::quic::client(
            addr,
            target.client_config.clone(),
        )?);
    }
    let Some(endpoint) = endpoint.as_ref() else {
        unreachable!("set just above")
    };
    let conn = endpoint
        .connect(addr, name)
        .context("connecting")?
        .await
        .with_context(|| format!("handshake with relay {addr} as {name:?}"))?;
    match set_up(&conn, &target.drained).await {
        Ok((writers, control)) => Ok((conn, writers, control)),
        // A close by the relay explains whatever step it interrupted.
        Err(e) => match relay_close(&conn) {
            Some(close) => {
                debug!(error = %format!("{e:#}"), "setting up the connection");
                Err(RelayClosed(close).into())
            }
            None => Err(e),
        },
    }
}

/// Hello exchange and streams of a new connection.
async fn set_up(
    conn: &quinn::Connection,
    drained: &Arc<Notify>,
) -> Result<(Writers, quinn::RecvStream)> {
    let (mut control, mut control_recv) = conn.open_bi().await.context("opening control stream")?;
    control.set_priority(Lane::Control.priority()).ok();
    let hello = wire::encode_frame(&Frame::Hello(Hello {
        version: wire::PROTOCOL_VERSION,
        agent: format!("hotline-node/{}", env!("CARGO_PKG_VERSION")),
    }));
    framed::write_frame(&mut control, &hello)
        .await
        .context("sending hello")?;
    let agent = relay_hello(&mut control_recv).await?;
    info!(%agent, "relay hello");
    let queued = Arc::new(AtomicUsize::new(0));
    let spawn_writer = |stream| spawn_writer(stream, queued.clone(), drained.clone());
    let mut writers = Vec::with_capacity(Lane::COUNT);
    writers.push(spawn_writer(control));
    for lane in Lane::ALL {
        let Some(p) = lane.precedence() else { continue };
        let mut s = conn.open_uni().await.context("opening lane stream")?;
        s.set_priority(lane.priority()).ok();
        LaneTag(p).write(&mut s).await.context("writing lane tag")?;
        writers.push(spawn_writer(s));
    }
    let lanes = writers
        .try_into()
        .map_err(|_| anyhow!("one writer per lane expected"))?;
    Ok((Writers { lanes, queued }, control_recv))
}

/// Reads and checks the relay's hello, the first frame on the control stream; returns the
/// relay's agent. Also used by `hotline-bench`'s misbehaving client.
pub async fn relay_hello(control: &mut quinn::RecvStream) -> Result<String> {
    let first = tokio::time::timeout(HELLO_TIMEOUT, framed::read_frame(control))
        .await
        .map_err(|_| anyhow!("the relay sent no hello within {HELLO_TIMEOUT:?}"))?
        .context("reading the relay's hello")?
        .ok_or_else(|| anyhow!("the relay closed the control stream before its hello"))?;
    match wire::decode_frame(&first) {
        Ok((Frame::Hello(hello), _)) => {
            hello.check().context("the relay's hello")?;
            Ok(hello.agent)
        }
        Ok(_) => Err(anyhow!("the relay's first frame is not a hello")),
        Err(e) => Err(anyhow!("the relay's hello does not decode: {e}")),
    }
}

/// A task writing whole frames to `stream` in order, until its sender is dropped. Each frame
/// written leaves the connection's `queued` count; `drained` hears when it falls to
/// [`EGRESS_RESUME_FRAMES`].
fn spawn_writer(
    mut stream: quinn::SendStream,
    queued: Arc<AtomicUsize>,
    drained: Arc<Notify>,
) -> mpsc::UnboundedSender<Vec<u8>> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            let written = framed::write_frame(&mut stream, &frame).await;
            if queued.fetch_sub(1, Ordering::Relaxed) == EGRESS_RESUME_FRAMES + 1 {
                drained.notify_one();
            }
            if written.is_err() {
                // What waits here will never be written: it leaves the count (later sends to
                // this closed writer take themselves off, `Writers::send`).
                rx.close();
                let mut left = 0;
                while rx.try_recv().is_ok() {
                    left += 1;
                }
                queued.fetch_sub(left, Ordering::Relaxed);
                drained.notify_one();
                return;
            }
        }
        let _ = stream.finish();
    });
    tx
}

/// Reads the control stream and the relay's lane streams until the connection ends; returns
/// why it ended.
async fn serve_connection(
    conn: &quinn::Connection,
    mut control: quinn::RecvStream,
    net: &LaneSenders,
    relay: usize,
) -> String {
    let control_tx = net[Lane::Control.index()].clone();
    let flash_tx = net[Lane::Precedence(Precedence::Flash).index()].clone();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(async move { read_into(&mut control, control_tx, Some(flash_tx), relay).await });
    loop {
        tokio::select! {
            uni = conn.accept_uni() => match uni {
                Ok(mut stream) => {
                    let net = net.clone();
                    tasks.spawn(async move {
                        let lane = match LaneTag::read(&mut stream).await {
                            Ok(LaneTag(p)) => Lane::Precedence(p),
                            Err(e) => return format!("bad lane stream: {e}"),
                        };
                        read_into(&mut stream, net[lane.index()].clone(), None, relay).await
                    });
                }
                Err(e) => {
                    tasks.abort_all();
                    return e.to_string();
                }
            },
            Some(done) = tasks.join_next() => {
                if let Ok(reason) = done {
                    if !reason.is_empty() {
                        // A stream that failed on a live connection: close it. One the relay
                        // already closed keeps the relay's reason; closing it again would
                        // replace that with our own (quinn records the last close), and the
                        // operator would see "connection lost" instead of, say, "revoked".
                        if conn.close_reason().is_none() {
                            conn.close(1u32.into(), b"stream error");
                        }
                        tasks.abort_all();
                        return reason;
                    }
                }
            }
        }
    }
}

/// Reads whole frames from `stream` into `tx` until it ends. On the control stream (`flash`
/// given), the partner's word about a flash (its receipt, its escalation notice:
/// [`wire::is_flash_word`]) goes to the flash channel instead: the engine loop takes that ahead
/// of the control channel, where under a flood thousands of the relay's `Accepted` replies wait.
async fn read_into(
    stream: &mut quinn::RecvStream,
    tx: mpsc::Sender<RelayFrame>,
    flash: Option<mpsc::Sender<RelayFrame>>,
    relay: usize,
) -> String {
    loop {
        match framed::read_frame(stream).await {
            Ok(Some(bytes)) => {
                let tx = match &flash {
                    Some(flash) if wire::is_flash_word(&bytes) => flash,
                    _ => &tx,
                };
                if tx.send(RelayFrame { relay, bytes }).await.is_err() {
                    return "node stopping".into();
                }
            }
            Ok(None) => return String::new(),
            Err(e) => return e.to_string(),
        }
    }
}
