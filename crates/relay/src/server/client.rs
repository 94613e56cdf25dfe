//! One actor per client connection, from the QUIC handshake until the connection closes.
//!
//! Flow (span `conn{peer, conn_id, remote}`):
//! - the peer's endpoint id comes from its client certificate (verified against the CA by
//!   rustls); an endpoint in no configured hotline is closed with [`CloseReason::NotConfigured`];
//! - the actor starts holding an [`Admission`] (see [`super::handshake`]): after TLS it counts
//!   the identity against its limit ([`CloseReason::TooManyPending`] beyond it), and releases
//!   it once `Hello` is done;
//! - the node opens the control stream and both sides send `Hello` on it; the node's must pass
//!   [`Hello::check`](hotline_proto::wire::Hello::check). TLS, control stream and `Hello`
//!   together have one deadline, [`HandshakeLimits::hello_timeout`](super::HandshakeLimits)
//!   (closed with [`CloseReason::ProtocolViolation`] past it); then the
//!   connection is registered with the router and the relay opens its four lane streams, each
//!   starting with its lane byte; a registration the router refuses because the identity flaps
//!   is closed with [`CloseReason::IdentityInUse`];
//! - one reader per incoming stream hands whole frames to the router, with the stream they came
//!   on (the router refuses a frame on the wrong stream); a frame whose length prefix exceeds
//!   [`MAX_FRAME_LEN`] closes the connection ([`CloseReason::FrameTooLarge`]) before anything
//!   is allocated;
//! - one writer per outgoing stream pulls the next frame from the router only when the previous
//!   one has been handed to quinn, which bounds write-ahead (see [`super`]).
//!
//! The actor never routes: every frame goes to the [`Router`](crate::router::Router) through
//! [`Shared::run`], and what to write comes back from it. Reading pauses while the node's own
//! control backlog exceeds [`CONTROL_BACKLOG_BYTES`], or (per stream, control included) while
//! what this connection sent on that stream waits too long for the store.
//!
//! Main types: [`ConnHandle`] (what other tasks need to reach the connection) and the private
//! `ServeError`.
//!
//! Invariant: the actor owns its stream tasks (they end with it), and a registered connection
//! is unregistered however the actor ends, abort included.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use bytes::Bytes;
use hotline_net::framed::{self, LaneTag, ReadError};
use hotline_net::tls;
use hotline_proto::wire::{
    self, DecodeError, Frame, Hello, HelloError, MAX_FRAME_LEN, PROTOCOL_VERSION,
};
use hotline_proto::{EndpointId, Lane, Precedence};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tracing::{Instrument, debug, field, info, info_span, warn};

use super::handshake::{Admission, Outcome};
use super::shared::Shared;
use super::timer::wall_clock;
use super::{AGENT, CloseReason};
use crate::router::{ConnId, ConnectError, Decoded};

/// Reading from a node pauses while this many bytes wait on its own control stream, so a node
/// that never reads its replies cannot grow them without bound.
const CONTROL_BACKLOG_BYTES: u64 = 4 * 1024 * 1024;

/// What other tasks need to reach one connection.
#[derive(Debug)]
pub(super) struct ConnHandle {
    pub(super) connection: quinn::Connection,
    /// One per [`Lane::index`]: wakes that stream's writer.
    pub(super) wake: [Notify; Lane::COUNT],
    /// Signalled after each control-stream write, for readers waiting on the backlog.
    drained: Notify,
    /// When it registered (for the status view).
    pub(super) since: SystemTime,
    /// When its last frame arrived, milliseconds since the Unix epoch; 0 before the first.
    pub(super) last_frame_ms: AtomicU64,
}

impl ConnHandle {
    fn new(connection: quinn::Connection) -> Self {
        Self {
            connection,
            wake: Default::default(),
            drained: Notify::new(),
            since: SystemTime::now(),
            last_frame_ms: AtomicU64::new(0),
        }
    }

    /// Waits until this connection's own control backlog is small enough to read more.
    async fn room_to_read(&self, shared: &Shared, conn: ConnId) {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if shared.lock().router.control_backlog(conn) <= CONTROL_BACKLOG_BYTES {
                return;
            }
            drained.await;
        }
    }
}

/// Unregisters a connection when its task ends, however it ends (including abort).
struct Registered {
    shared: Arc<Shared>,
    conn: ConnId,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.shared.unregister(self.conn);
    }
}

/// Runs one connection from the QUIC handshake until it closes, in its span
/// `conn{peer, conn_id, remote}`: identity and hello (within the hello deadline, holding
/// `admission`), registration, then its streams.
pub(super) async fn run(
    shared: Arc<Shared>,
    connecting: quinn::Connecting,
    admission: Admission,
    conn: ConnId,
) {
    let span = info_span!(
        "conn",
        peer = field::Empty,
        conn_id = conn.0,
        remote = %connecting.remote_address()
    );
    async move {
        let deadline = tokio::time::Instant::now() + shared.gate.limits().hello_timeout;
        let Some((connection, peer, control, agent)) =
            handshake(&shared, connecting, admission, deadline).await
        else {
            return;
        };
        shared.metrics.handshake(Outcome::Accepted);
        match serve(&shared, &connection, conn, peer, control, agent).await {
            Ok(reason) => info!(%reason, "disconnected"),
            Err(e) => {
                warn!(error = %e, "connection ended");
                if let Some(reason) = e.close_reason() {
                    reason.close(&connection);
                }
            }
        }
    }
    .instrument(span)
    .await
}

/// The node's side of the control stream.
type Control = (quinn::SendStream, quinn::RecvStream);

/// TLS, identity and the hello exchange, all before `deadline`; `admission` is released when
/// this returns. On failure, releases it, counts the [`Outcome`] and only then closes the
/// connection (so a node that hears of it finds it counted), and returns `None`.
async fn handshake(
    shared: &Shared,
    connecting: quinn::Connecting,
    mut admission: Admission,
    deadline: tokio::time::Instant,
) -> Option<(quinn::Connection, EndpointId, Control, String)> {
    let refuse = |admission: Admission, connection: Option<&quinn::Connection>, outcome, reason| {
        drop(admission);
        shared.metrics.handshake(outcome);
        if let (Some(connection), Some(reason)) = (connection, reason) {
            CloseReason::close(reason, connection);
        }
        None
    };
    // Dropping the unfinished handshake at the deadline abandons the connection.
    let connection = match tokio::time::timeout_at(deadline, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            warn!(error = %e, "handshake failed");
            shared.metrics.rejected("handshake");
            return refuse(admission, None, Outcome::Failed, None);
        }
        Err(_) => {
            warn!("no TLS handshake before the hello deadline");
            return refuse(admission, None, Outcome::HelloTimeout, None);
        }
    };
    let peer = match tls::peer_identity(&connection) {
        Ok((peer, _)) => peer,
        Err(e) => {
            warn!(error = %e, "client certificate names no endpoint; closing");
            shared.metrics.rejected("no_identity");
            let reason = Some(CloseReason::NoIdentity);
            return refuse(admission, Some(&connection), Outcome::Failed, reason);
        }
    };
    tracing::Span::current().record("peer", field::display(&peer));
    if !shared.lock().router.is_configured(&peer) {
        warn!("endpoint is in no configured hotline; closing");
        shared.metrics.rejected("not_configured");
        let reason = Some(CloseReason::NotConfigured);
        return refuse(admission, Some(&connection), Outcome::Failed, reason);
    }
    if let Err(outcome) = admission.identify(&peer) {
        warn!("too many connections of this identity await hello; closing");
        let reason = Some(CloseReason::TooManyPending);
        return refuse(admission, Some(&connection), outcome, reason);
    }
    match tokio::time::timeout_at(deadline, hello(&connection)).await {
        Ok(Ok((control, agent))) => Some((connection, peer, control, agent)),
        Ok(Err(e)) => {
            warn!(error = %e, "hello failed; closing");
            refuse(
                admission,
                Some(&connection),
                Outcome::Failed,
                e.close_reason(),
            )
        }
        Err(_) => {
            warn!("no hello before the deadline; closing");
            let reason = Some(CloseReason::ProtocolViolation);
            refuse(admission, Some(&connection), Outcome::HelloTimeout, reason)
        }
    }
}

/// Why serving a registered (or registering) connection stopped early.
#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("writing: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("stream closed: {0}")]
    ClosedStream(#[from] quinn::ClosedStream),
    #[error("reading hello: {0}")]
    Read(#[from] ReadError),
    #[error("{0}")]
    Protocol(String),
    #[error("hello refused: {0}")]
    Hello(#[from] HelloError),
    #[error("registration: {0}")]
    Register(#[from] ConnectError),
}

impl ServeError {
    fn close_reason(&self) -> Option<CloseReason> {
        match self {
            Self::Protocol(_) | Self::Hello(_) => Some(CloseReason::ProtocolViolation),
            Self::Read(e) => read_error_reason(e),
            Self::Register(ConnectError::NotConfigured(_)) => Some(CloseReason::NotConfigured),
            Self::Register(ConnectError::IdentityInUse { .. }) => Some(CloseReason::IdentityInUse),
            _ => None,
        }
    }
}

/// The hello exchange on the control stream the node opens: ours, then the node's, checked.
/// Returns the control stream and the node's agent.
async fn hello(connection: &quinn::Connection) -> Result<(Control, String), ServeError> {
    let (mut control_send, mut control_recv) = connection.accept_bi().await?;
    control_send.set_priority(Lane::Control.priority())?;
    let hello = wire::encode_frame(&Frame::Hello(Hello {
        version: PROTOCOL_VERSION,
        agent: AGENT.to_owned(),
    }));
    framed::write_frame(&mut control_send, &hello).await?;
    let first = framed::read_frame(&mut control_recv)
        .await?
        .ok_or_else(|| ServeError::Protocol("control stream finished before hello".into()))?;
    let hello = match wire::decode_frame(&first) {
        Ok((Frame::Hello(h), _)) => h,
        Ok(_) => return Err(ServeError::Protocol("first frame is not a hello".into())),
        Err(e) => return Err(ServeError::Protocol(format!("unreadable hello: {e}"))),
    };
    hello.check()?;
    Ok(((control_send, control_recv), hello.agent))
}

/// Registration and streams, after a good hello; returns when the connection closes.
async fn serve(
    shared: &Arc<Shared>,
    connection: &quinn::Connection,
    conn: ConnId,
    peer: EndpointId,
    (control_send, control_recv): Control,
    agent: String,
) -> Result<quinn::ConnectionError, ServeError> {
    let handle = Arc::new(ConnHandle::new(connection.clone()));
    shared.register(conn, peer.clone(), handle.clone())?;
    let _registered = Registered {
        shared: shared.clone(),
        conn,
    };
    info!(%agent, "connected");

    let mut tasks = JoinSet::new();
    tasks.spawn(
        write_stream(
            shared.clone(),
            handle.clone(),
            (conn, peer.clone()),
            Lane::Control,
            control_send,
        )
        .in_current_span(),
    );
    for lane in Precedence::ALL.into_iter().rev() {
        let mut send = connection.open_uni().await?;
        send.set_priority(Lane::Precedence(lane).priority())?;
        LaneTag(lane).write(&mut send).await?;
        tasks.spawn(
            write_stream(
                shared.clone(),
                handle.clone(),
                (conn, peer.clone()),
                Lane::Precedence(lane),
                send,
            )
            .in_current_span(),
        );
    }
    tasks.spawn(
        read_stream(
            shared.clone(),
            handle.clone(),
            conn,
            control_recv,
            Lane::Control,
        )
        .in_current_span(),
    );
    tasks.spawn(accept_lanes(shared.clone(), handle, conn).in_current_span());
    Ok(connection.closed().await)
}

/// One writer per outgoing stream: takes the next frame from the router only when the previous
/// one is handed to quinn, which is what bounds write-ahead (see the module docs).
async fn write_stream(
    shared: Arc<Shared>,
    handle: Arc<ConnHandle>,
    (conn, peer): (ConnId, EndpointId),
    stream: Lane,
    mut send: quinn::SendStream,
) {
    let wake = &handle.wake[stream.index()];
    loop {
        let Some(transmit) = shared.run(|r| r.poll_transmit(conn, stream)) else {
            // `notify_one` stores a permit, so a wake between the poll and here is not lost.
            wake.notified().await;
            continue;
        };
        // `write_chunk` hands the frame's buffer to quinn without copying it.
        if let Err(e) = send.write_chunk(transmit.bytes.clone()).await {
            match e {
                quinn::WriteError::Stopped(code) => {
                    warn!(%stream, %code, "node stopped a relay stream; closing");
                    CloseReason::ProtocolViolation.close(&handle.connection);
                }
                e => debug!(%stream, error = %e, "write failed"),
            }
            return;
        }
        shared.metrics.forwarded(stream);
        if let (Lane::Precedence(lane), Some((sender, queued_at))) = (stream, transmit.envelope()) {
            let latency = wall_clock().since(queued_at);
            shared
                .metrics
                .envelope_forwarded(sender, &peer, lane, latency);
        }
        shared.run(|r| r.handle_written(conn, transmit));
        if stream == Lane::Control {
            handle.drained.notify_waiters();
        }
    }
}

/// Accepts the node's lane streams and reads each after its lane byte.
async fn accept_lanes(shared: Arc<Shared>, handle: Arc<ConnHandle>, conn: ConnId) {
    let mut readers = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            Some(_) = readers.join_next(), if !readers.is_empty() => {}
            accepted = handle.connection.accept_uni() => {
                let Ok(mut recv) = accepted else { return };
                let (shared, handle) = (shared.clone(), handle.clone());
                readers.spawn(async move {
                    match LaneTag::read(&mut recv).await {
                        Ok(LaneTag(lane)) => {
                            debug!(%lane, "lane stream opened");
                            read_stream(shared, handle, conn, recv, Lane::Precedence(lane)).await;
                        }
                        Err(e) => on_read_error(&handle.connection, Lane::Control, &e),
                    }
                }.in_current_span());
            }
        }
    }
}

/// One reader per incoming stream: whole frames to the router, in order.
async fn read_stream(
    shared: Arc<Shared>,
    handle: Arc<ConnHandle>,
    conn: ConnId,
    mut recv: quinn::RecvStream,
    stream: Lane,
) {
    loop {
        handle.room_to_read(&shared, conn).await;
        shared.room_to_store(conn, stream).await;
        match framed::read_frame(&mut recv).await {
            Ok(Some(frame)) => {
                // Decoded before taking the shared lock: no other connection waits for it.
                let decoded = Decoded::new(Bytes::from(frame));
                let now = wall_clock();
                handle
                    .last_frame_ms
                    .store(crate::status::unix_ms(SystemTime::now()), Ordering::Relaxed);
                shared.run(|r| r.handle_decoded(now, conn, stream, decoded));
            }
            Ok(None) => {
                debug!(%stream, "node finished a stream");
                return;
            }
            Err(e) => {
                on_read_error(&handle.connection, stream, &e);
                return;
            }
        }
    }
}

fn on_read_error(connection: &quinn::Connection, stream: Lane, e: &ReadError) {
    match read_error_reason(e) {
        Some(reason) => {
            warn!(%stream, error = %e, limit = MAX_FRAME_LEN, "unreadable stream; closing");
            reason.close(connection);
        }
        None => debug!(%stream, error = %e, "stream ended"),
    }
}

/// Framing errors close the connection: the stream can no longer be split into frames. A
/// stream that merely ended does not.
fn read_error_reason(e: &ReadError) -> Option<CloseReason> {
    match e {
        ReadError::Frame(DecodeError::TooLarge { .. }) => Some(CloseReason::FrameTooLarge),
        ReadError::Frame(_) => Some(CloseReason::ProtocolViolation),
        ReadError::Stream(_) => None,
    }
}
