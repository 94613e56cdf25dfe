//! A rogue client: one endpoint's own credentials on the real QUIC/TLS stack, sending its
//! envelopes on the wrong streams.
//!
//! Why it exists: a `hotline node` always sends an envelope on the stream its transport
//! precedence names, so no node can show what a misbehaving one costs everyone else on the
//! relay. `neighbours --flood-wrong-streams` connects this client instead of the flooding
//! endpoint's node: it loads the endpoint's config as the node does ([`NodeConfig::load`]: CA,
//! certificate, key, relay address and name), says `Hello` on the control stream and checks the
//! relay's, opens the FLASH lane stream (starting with its [`LaneTag`]) and then writes
//! maximum-size *routine* envelopes on it, every [`CONTROL_EVERY`]th one on the control stream
//! instead, as fast as QUIC flow control lets it, until the plan's deadline or frame budget.
//! The relay refuses each one (`Refused{Malformed}`, counted in its
//! `hotline_relay_wrong_stream_frames_total`); a reader task counts the replies that come back
//! on the control stream.
//!
//! The envelopes carry a correct routing header (sender = this endpoint, recipient = its
//! partner, routine, increasing seq) and filler bytes as the sealed body: the relay opens no
//! body and checks no signature, so this is what a misbehaving node would send.
//!
//! The client runs on its own thread and single-threaded runtime, as a node runs in its own
//! process, so its frame building and encryption do not share the bench driver's runtime.
//! Nothing here prints; the scenario reports [`RogueFlood`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use hotline_client::config::NodeConfig;
use hotline_net::framed::{self, LaneTag};
use hotline_net::quic;
use hotline_proto::crypto::{Digest, SessionId};
use hotline_proto::envelope::{Envelope, Header};
use hotline_proto::wire::{
    self, EnvelopeFrame, Frame, Hello, MAX_BODY_LEN, PROTOCOL_VERSION, RefusalCode,
};
use hotline_proto::{Channel, EndpointId, Lane, Precedence, Seq};
use tokio::sync::oneshot;
use tokio::task::JoinSet;

/// Every this many frames, one goes on the control stream instead of the flash lane stream.
pub const CONTROL_EVERY: u64 = 8;
/// After the flood, the longest wait for the replies to frames already written.
const REPLY_WAIT: Duration = Duration::from_secs(5);
/// The longest wait for the connection to close cleanly.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// How long and how much to flood.
#[derive(Clone, Copy, Debug)]
pub struct FloodPlan {
    /// Writing stops at this much after the flood starts (a frame being written is cut short).
    pub duration: Duration,
    /// Writing stops after this many whole frames.
    pub max_frames: u64,
}

/// What came back on the control stream.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Replies {
    /// `Refused{Malformed}`: what the relay answers a frame on the wrong stream.
    pub malformed_refusals: u64,
    /// Refusals with any other code.
    pub other_refusals: u64,
    /// `Accepted`: envelopes the relay took (none expected).
    pub accepted: u64,
    /// Anything else (presence, announcements, frames on the relay's lane streams).
    pub other_frames: u64,
    /// The first `Refused{Malformed}` detail, as an example.
    pub first_malformed_detail: Option<String>,
    /// The first other refusal, as `code: detail`.
    pub first_other_refusal: Option<String>,
}

impl Replies {
    fn refusals(&self) -> u64 {
        self.malformed_refusals + self.other_refusals
    }
}

/// The figures of one flood.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RogueFlood {
    /// The endpoint whose identity the client used.
    pub endpoint: String,
    /// Its partner, the envelopes' recipient.
    pub recipient: String,
    /// Whole frames written.
    pub frames: u64,
    /// Of those, on the flash lane stream.
    pub flash_stream_frames: u64,
    /// Of those, on the control stream.
    pub control_stream_frames: u64,
    /// Bytes of whole frames written (length prefixes included).
    pub bytes: u64,
    /// Sealed-body bytes per envelope.
    pub body_bytes: usize,
    /// Seconds of writing.
    pub seconds: f64,
    /// Writing stopped at the frame budget rather than the deadline.
    pub frame_budget_hit: bool,
    /// Why writing stopped early, if a write failed.
    pub write_error: Option<String>,
    /// What the relay sent back, read until every frame had its reply or a bounded wait.
    pub replies: Replies,
}

impl RogueFlood {
    /// Frames written per second.
    pub fn frames_per_s(&self) -> f64 {
        per_s(self.frames as f64, self.seconds)
    }

    /// MiB written per second.
    pub fn mib_per_s(&self) -> f64 {
        per_s(self.bytes as f64 / (1024.0 * 1024.0), self.seconds)
    }
}

fn per_s(amount: f64, seconds: f64) -> f64 {
    if seconds > 0.0 { amount / seconds } else { 0.0 }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A connected rogue client, waiting on its own thread for [`Rogue::flood`]. Dropped without
/// flooding, it closes its connection and its thread ends.
#[derive(Debug)]
pub struct Rogue {
    start: oneshot::Sender<FloodPlan>,
    done: oneshot::Receiver<Result<RogueFlood>>,
}

impl Rogue {
    /// Connects as the endpoint of the node config at `config` and completes the hello
    /// exchange and the flash lane stream's tag; the connection then idles (keep-alives, replies
    /// read) until [`Rogue::flood`].
    pub async fn connect(config: PathBuf) -> Result<Self> {
        let (ready_tx, ready_rx) = oneshot::channel::<Result<()>>();
        let (start, start_rx) = oneshot::channel::<FloodPlan>();
        let (done_tx, done) = oneshot::channel();
        std::thread::Builder::new()
            .name("rogue-client".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow!("rogue client runtime: {e}")));
                        return;
                    }
                };
                rt.block_on(async move {
                    let mut link = match Link::connect(&config).await {
                        Ok(link) => link,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    let flood = match start_rx.await {
                        Ok(plan) => Some(link.flood(plan).await),
                        Err(_) => None,
                    };
                    link.close().await;
                    if let Some(flood) = flood {
                        let _ = done_tx.send(Ok(flood));
                    }
                });
            })
            .context("starting the rogue client thread")?;
        ready_rx
            .await
            .map_err(|_| anyhow!("the rogue client thread stopped"))??;
        Ok(Self { start, done })
    }

    /// Floods as planned, waits (bounded) for the replies, closes the connection and returns
    /// the figures.
    pub async fn flood(self, plan: FloodPlan) -> Result<RogueFlood> {
        self.start
            .send(plan)
            .map_err(|_| anyhow!("the rogue client stopped before its flood"))?;
        self.done
            .await
            .map_err(|_| anyhow!("the rogue client stopped during its flood"))?
    }
}

/// The connection and its two streams, on the client's own runtime.
struct Link {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    control: quinn::SendStream,
    flash: quinn::SendStream,
    local: EndpointId,
    partner: EndpointId,
    replies: Arc<Mutex<Replies>>,
    readers: JoinSet<()>,
}

impl Link {
    async fn connect(config: &Path) -> Result<Self> {
        let cfg = NodeConfig::load(config)?;
        // The bench's exercise has one relay, at an IP address.
        let Some(relay) = cfg.relays.first() else {
            bail!("{} lists no relay", config.display());
        };
        let addr: std::net::SocketAddr = relay
            .addr
            .parse()
            .with_context(|| format!("relay address {:?}", relay.addr))?;
        let endpoint = quic::client(addr, cfg.client_config()?)?;
        let name = relay.name.as_str();
        let conn = endpoint
            .connect(addr, name)
            .context("connecting")?
            .await
            .with_context(|| format!("handshake with relay {addr} as {name:?}"))?;
        let (mut control, mut control_recv) =
            conn.open_bi().await.context("opening control stream")?;
        control.set_priority(Lane::Control.priority()).ok();
        let hello = wire::encode_frame(&Frame::Hello(Hello {
            version: PROTOCOL_VERSION,
            agent: format!("hotline-bench-rogue/{}", env!("CARGO_PKG_VERSION")),
        }));
        framed::write_frame(&mut control, &hello)
            .await
            .context("sending hello")?;
        hotline_client::node::relay_hello(&mut control_recv).await?;
        let flash_lane = Lane::Precedence(Precedence::Flash);
        let mut flash = conn.open_uni().await.context("opening flash lane stream")?;
        flash.set_priority(flash_lane.priority()).ok();
        LaneTag(Precedence::Flash)
            .write(&mut flash)
            .await
            .context("writing flash lane tag")?;
        let replies = Arc::new(Mutex::new(Replies::default()));
        let mut readers = JoinSet::new();
        readers.spawn(read_replies(control_recv, replies.clone()));
        readers.spawn(drain_lanes(conn.clone(), replies.clone()));
        Ok(Self {
            endpoint,
            conn,
            control,
            flash,
            local: cfg.local,
            partner: cfg.partner.id,
            replies,
            readers,
        })
    }

    async fn flood(&mut self, plan: FloodPlan) -> RogueFlood {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + plan.duration;
        // One frame value, its seq set per write, so the 256 KiB body is not rebuilt per frame.
        let mut flood_frame = Frame::Envelope(routine_frame(&self.local, &self.partner));
        let (mut flash_frames, mut control_frames, mut bytes) = (0u64, 0u64, 0u64);
        let mut write_error = None;
        let mut frames = 0;
        while frames < plan.max_frames {
            if let Frame::Envelope(f) = &mut flood_frame {
                f.envelope.header.seq = Seq(frames + 1);
            }
            let frame = wire::encode_frame(&flood_frame);
            let on_control = (frames + 1) % CONTROL_EVERY == 0;
            let stream = if on_control {
                &mut self.control
            } else {
                &mut self.flash
            };
            match tokio::time::timeout_at(deadline, framed::write_frame(stream, &frame)).await {
                // The deadline: this frame is cut short, and the connection closes after.
                Err(_) => break,
                Ok(Err(e)) => {
                    write_error = Some(format!("writing frame {}: {e}", frames + 1));
                    break;
                }
                Ok(Ok(())) => {}
            }
            frames += 1;
            bytes += frame.len() as u64;
            if on_control {
                control_frames += 1;
            } else {
                flash_frames += 1;
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        // Bounded wait for the replies to what was written.
        let wait_until = Instant::now() + REPLY_WAIT;
        while self.answered() < frames
            && Instant::now() < wait_until
            && self.conn.close_reason().is_none()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        RogueFlood {
            endpoint: self.local.to_string(),
            recipient: self.partner.to_string(),
            frames,
            flash_stream_frames: flash_frames,
            control_stream_frames: control_frames,
            bytes,
            body_bytes: MAX_BODY_LEN,
            seconds,
            frame_budget_hit: frames >= plan.max_frames,
            write_error,
            replies: lock(&self.replies).clone(),
        }
    }

    /// Frames the relay has answered, with a refusal or an acceptance.
    fn answered(&self) -> u64 {
        let r = lock(&self.replies);
        r.refusals() + r.accepted
    }

    async fn close(mut self) {
        self.conn.close(0u32.into(), b"bench done");
        self.readers.abort_all();
        let _ = tokio::time::timeout(CLOSE_WAIT, self.endpoint.wait_idle()).await;
    }
}

/// A routine envelope from `sender` to `recipient` with a maximum-size filler body, offered
/// on the routine lane; the caller sets its seq.
fn routine_frame(sender: &EndpointId, recipient: &EndpointId) -> EnvelopeFrame {
    let envelope = Envelope {
        header: Header {
            sender: sender.clone(),
            recipient: recipient.clone(),
            channel: Channel::default(),
            precedence: Precedence::Routine,
            seq: Seq(1),
            after: [0; 4],
            epoch: 1,
            session: SessionId([0; 16]),
            prev: Digest::default(),
            sealed_len: MAX_BODY_LEN as u32,
        },
        sealed: vec![0xAB; MAX_BODY_LEN],
    };
    EnvelopeFrame {
        transport: Precedence::Routine,
        envelope,
        head: None,
        setup: None,
    }
}

/// Counts the relay's replies on the control stream until it ends.
async fn read_replies(mut control: quinn::RecvStream, replies: Arc<Mutex<Replies>>) {
    while let Ok(Some(frame)) = framed::read_frame(&mut control).await {
        let mut r = lock(&replies);
        match wire::decode_frame(&frame) {
            Ok((Frame::Refused(refusal), _)) if refusal.code == RefusalCode::Malformed => {
                r.malformed_refusals += 1;
                r.first_malformed_detail.get_or_insert(refusal.detail);
            }
            Ok((Frame::Refused(refusal), _)) => {
                r.other_refusals += 1;
                r.first_other_refusal
                    .get_or_insert_with(|| format!("{:?}: {}", refusal.code, refusal.detail));
            }
            Ok((Frame::Accepted(_), _)) => r.accepted += 1,
            _ => r.other_frames += 1,
        }
    }
}

/// Reads and counts whatever the relay sends on its lane streams, so they never back up.
async fn drain_lanes(conn: quinn::Connection, replies: Arc<Mutex<Replies>>) {
    let mut lanes = JoinSet::new();
    while let Ok(mut stream) = conn.accept_uni().await {
        let replies = replies.clone();
        lanes.spawn(async move {
            if LaneTag::read(&mut stream).await.is_err() {
                return;
            }
            while let Ok(Some(_)) = framed::read_frame(&mut stream).await {
                lock(&replies).other_frames += 1;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flood_envelope_is_a_maximum_size_routine_envelope_on_the_routine_lane() {
        let a = EndpointId::new("a3").unwrap();
        let b = EndpointId::new("b3").unwrap();
        let mut f = routine_frame(&a, &b);
        f.envelope.header.seq = Seq(42);
        let frame = wire::encode_frame(&Frame::Envelope(f));
        assert!(frame.len() - wire::LEN_PREFIX <= wire::MAX_FRAME_LEN);
        let Ok((Frame::Envelope(e), used)) = wire::decode_frame(&frame) else {
            panic!("the flood frame does not decode");
        };
        assert_eq!(used, frame.len());
        assert_eq!(e.transport, Precedence::Routine);
        assert_eq!(e.envelope.header.precedence, Precedence::Routine);
        assert_eq!(e.envelope.header.sender, a);
        assert_eq!(e.envelope.header.recipient, b);
        assert_eq!(e.envelope.header.seq, Seq(42));
        assert_eq!(e.envelope.sealed.len(), MAX_BODY_LEN);
        assert_eq!(e.envelope.header.sealed_len as usize, MAX_BODY_LEN);
    }

    #[test]
    fn rates_need_elapsed_time() {
        assert_eq!(per_s(10.0, 0.0), 0.0);
        assert_eq!(per_s(10.0, 2.0), 5.0);
    }
}
