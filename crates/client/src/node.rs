//! The endpoint node: a thin async shell around the channel engine.
//!
//! Tasks, each with one job:
//! - the **engine loop** owns the [`Engine`] and the operator-facing state (inbox, waiters);
//!   a biased `select!` takes store confirmations first, then control frames, flash, operator
//!   commands, and the lower lanes in precedence order; after each input it drains
//!   `poll_action` and re-arms its timer from `poll_timeout`, checking the clock rather than
//!   trusting the sleep (as quinn's `ConnectionDriver` does);
//! - the **store thread** group-commits `Persist` records to redb (everything queued while the
//!   previous commit ran goes into the next one) and confirms them back, in order;
//! - the **connection task** dials the relay (backoff 100 ms → 5 s), opens the control stream
//!   and four lane streams, and feeds frames from the relay into per-lane channels;
//! - the **control server** serves the CLI on a Unix socket (mode 0600).
//!
//! Nothing acknowledged is lost on a crash: every record that made a receipt, a delivery or a
//! `stored` report possible was committed first (the engine's durability contract).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, anyhow};
use hotline_net::framed::{self, LaneTag};
use hotline_proto::engine::{
    AckLevel, Action, Alarm, AlarmKind, Delivery, Engine, LinkState, Local, Outgoing, Record,
    Report, WriteId,
};
use hotline_proto::types::Time;
use hotline_proto::wire::{self, Frame, Hello};
use hotline_proto::{Channel, Lane, MessageId, Precedence};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::audit::{self, AuditEvent};
use crate::config::NodeConfig;
use crate::control::{
    AlarmView, EscalationView, Event, InboxEntry, LaneView, Request, RequestLine, ResponseLine,
    StatusView, WaitLevel,
};
use crate::failpoint;
use crate::store::{Batch, Store};
use hotline_proto::crypto::{Digest, IdentityPublicKey};
use hotline_proto::envelope::{LinkTest, Signed};
use std::sync::Arc;

/// Runs a node until `shutdown` resolves or a fatal error (store failure) occurs.
pub async fn run(cfg: NodeConfig, shutdown: impl Future<Output = ()>) -> Result<()> {
    create_private_dir(&cfg.data_dir)?;
    let (mut store, records) = Store::open(&cfg.data_dir)?;
    let now = wall_now();
    let local = Local {
        id: cfg.local.clone(),
        key: cfg.identity_key()?,
    };
    let rng = ChaCha20Rng::from_seed(os_seed()?);
    let fresh = records.is_empty();
    let inbox = InboxIndex::from_records(&records);
    let engine = if fresh {
        Engine::new(cfg.engine.clone(), local, cfg.partner.clone(), rng, now)
    } else {
        Engine::restore(
            cfg.engine.clone(),
            local,
            cfg.partner.clone(),
            rng,
            now,
            records,
        )
        .context("restoring the engine from the store")?
    };
    info!(endpoint = %cfg.local, partner = %cfg.partner.id, records = store.len(), "node starting");

    // Store thread: group commit of records and the audit entries they imply.
    store.set_signer(cfg.identity_key()?, cfg.local.clone());
    let audit = AuditCtx {
        db: store.database(),
        own: cfg.identity_key()?.public(),
        partner: cfg.partner.key,
    };
    let initial_head = store.audit_head();
    let (persist_tx, mut persist_rx) = mpsc::unbounded_channel::<StoreMsg>();
    let (persisted_tx, persisted_rx) = mpsc::unbounded_channel::<Persisted>();
    let store_thread = std::thread::Builder::new()
        .name("store".into())
        .spawn(move || {
            let mut msgs = Vec::new();
            while let Some(first) = persist_rx.blocking_recv() {
                msgs.push(first);
                while let Ok(more) = persist_rx.try_recv() {
                    msgs.push(more);
                }
                let mut batch = Batch::default();
                let mut last = None;
                for m in msgs.drain(..) {
                    match m {
                        StoreMsg::Record(id, r) => {
                            last = Some(id);
                            batch.records.push(r);
                        }
                        StoreMsg::Event(e) => batch.events.push(e),
                        StoreMsg::PartnerHead(t) => batch.partner_heads.push(t),
                    }
                }
                let result = store.commit(&batch, wall_now());
                if result.is_ok() {
                    let has = |f: fn(&Record) -> bool| batch.records.iter().any(f);
                    if has(|r| matches!(r, Record::Outgoing { .. })) {
                        failpoint::hit(failpoint::AFTER_OUTBOX_APPEND);
                    }
                    if has(|r| matches!(r, Record::Received { .. })) {
                        failpoint::hit(failpoint::AFTER_INBOX_COMMIT_BEFORE_RECEIPT);
                    }
                    if has(|r| matches!(r, Record::OperatorAck { .. })) {
                        failpoint::hit(failpoint::AFTER_ACK_COMMIT);
                    }
                }
                let failed = result.is_err();
                let msg = match result {
                    Ok(head) => Persisted::Ok { last, head },
                    Err(e) => Persisted::Failed {
                        last: last.unwrap_or(WriteId(0)),
                        error: e.to_string(),
                    },
                };
                if persisted_tx.send(msg).is_err() || failed {
                    break;
                }
            }
        })?;

    // Control socket.
    let socket_path = cfg.data_dir.join("control.sock");
    let _ = std::fs::remove_file(&socket_path);
    let listener = UnixListener::bind(&socket_path)
        .with_context(|| format!("binding control socket {}", socket_path.display()))?;
    set_mode(&socket_path, 0o600)?;
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel::<Command>();
    let (urgent_tx, urgent_rx) = mpsc::unbounded_channel::<Command>();
    let control = tokio::spawn(serve_control(
        listener,
        Commands {
            normal: cmd_tx,
            urgent: urgent_tx,
        },
    ));

    // Connection manager.
    let (net_tx, net_rx) = lane_channels();
    let (conn_tx, conn_rx) = mpsc::unbounded_channel::<ConnEvent>();
    let client_config = cfg.client_config()?;
    let connection = tokio::spawn(
        connect_loop(
            cfg.relay,
            cfg.relay_name.clone(),
            client_config,
            net_tx,
            conn_tx,
        )
        .instrument(info_span!("conn", relay = %cfg.relay)),
    );

    let mut engine = engine;
    engine.set_audit_head(initial_head.0, initial_head.1);
    let mut driver = Driver {
        audit,
        engine,
        local: cfg.local.clone(),
        partner: cfg.partner.id.clone(),
        persist_tx,
        writers: None,
        inbox,
        followers: Vec::new(),
        subscribers: BTreeMap::new(),
        last_error: None,
        fatal: None,
        ack_waiters: Vec::new(),
        reports: 0,
    };
    let result = driver
        .run(persisted_rx, net_rx, (urgent_rx, cmd_rx), conn_rx, shutdown)
        .await;
    control.abort();
    connection.abort();
    drop(driver);
    let _ = store_thread.join();
    let _ = std::fs::remove_file(&socket_path);
    result
}

/// Wall-clock now as engine time.
pub fn wall_now() -> Time {
    Time::from_unix(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default(),
    )
}

/// RFC 3339 with microseconds.
pub fn format_time(t: Time) -> String {
    humantime::format_rfc3339_micros(SystemTime::UNIX_EPOCH + Duration::from_micros(t.0))
        .to_string()
}

fn os_seed() -> Result<[u8; 32]> {
    let mut seed = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
        .map_err(|_| anyhow!("the system random generator failed"))?;
    Ok(seed)
}

fn create_private_dir(dir: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating data dir {}", dir.display()))?;
    set_mode(dir, 0o700)
}

fn set_mode(path: &std::path::Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting permissions on {}", path.display()))
}

// ----- engine loop ---------------------------------------------------------------------------

enum Command {
    Send {
        out: Outgoing,
        to: Option<String>,
        events: mpsc::UnboundedSender<Report>,
        submitted: oneshot::Sender<Result<MessageId, String>>,
    },
    Inbox {
        follow: bool,
        entries: mpsc::UnboundedSender<InboxEntry>,
    },
    Ack {
        id: String,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Status {
        reply: oneshot::Sender<StatusView>,
    },
    Audit {
        export: bool,
        reply: oneshot::Sender<Result<Vec<serde_json::Value>, String>>,
    },
}

enum ConnEvent {
    Connected(Writers),
    Disconnected(String),
    Failed(String),
}

/// Senders feeding the per-stream writer tasks of the current connection, by [`Lane::index`].
struct Writers([mpsc::UnboundedSender<Vec<u8>>; Lane::COUNT]);

/// Frames read from the relay, one channel per lane, by [`Lane::index`].
type LaneSenders = [mpsc::Sender<Vec<u8>>; Lane::COUNT];
type LaneReceivers = [mpsc::Receiver<Vec<u8>>; Lane::COUNT];

fn lane_channels() -> (LaneSenders, LaneReceivers) {
    let pairs: [_; Lane::COUNT] = std::array::from_fn(|_| mpsc::channel(1024));
    let senders = pairs.each_ref().map(|(tx, _)| tx.clone());
    (senders, pairs.map(|(_, rx)| rx))
}

/// An operator acknowledgement waiting for its write (known once emitted) to commit.
type AckWaiter = (
    MessageId,
    Option<WriteId>,
    oneshot::Sender<Result<(), String>>,
);

/// What the store thread is asked to write.
#[allow(clippy::large_enum_variant)] // moved once into the store thread's batch
enum StoreMsg {
    Record(WriteId, Record),
    Event(AuditEvent),
    PartnerHead(Signed<LinkTest>),
}

/// What the store thread reports back.
enum Persisted {
    Ok {
        last: Option<WriteId>,
        head: (u64, Digest),
    },
    Failed {
        last: WriteId,
        error: String,
    },
}

/// What `audit verify/export` needs while the node runs.
#[derive(Clone)]
struct AuditCtx {
    db: Arc<redb::Database>,
    own: IdentityPublicKey,
    partner: IdentityPublicKey,
}

struct Driver {
    audit: AuditCtx,
    engine: Engine<ChaCha20Rng>,
    local: hotline_proto::EndpointId,
    partner: hotline_proto::EndpointId,
    persist_tx: mpsc::UnboundedSender<StoreMsg>,
    writers: Option<Writers>,
    inbox: InboxIndex,
    followers: Vec<mpsc::UnboundedSender<InboxEntry>>,
    subscribers: BTreeMap<MessageId, Vec<mpsc::UnboundedSender<Report>>>,
    last_error: Option<String>,
    fatal: Option<String>,
    /// Acknowledgements waiting for their write to commit.
    ack_waiters: Vec<AckWaiter>,
    /// Reports seen, to sweep closed subscribers now and then.
    reports: u64,
}

impl Driver {
    async fn run(
        &mut self,
        mut persisted: mpsc::UnboundedReceiver<Persisted>,
        net: LaneReceivers,
        (mut urgent, mut cmds): (
            mpsc::UnboundedReceiver<Command>,
            mpsc::UnboundedReceiver<Command>,
        ),
        mut conn: mpsc::UnboundedReceiver<ConnEvent>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<()> {
        let [
            mut control,
            mut flash,
            mut immediate,
            mut priority,
            mut routine,
        ] = net;
        tokio::pin!(shutdown);
        self.drain();
        loop {
            let deadline = self.engine.poll_timeout();
            let sleep_for = deadline.map_or(Duration::from_secs(3600), |d| d.since(wall_now()));
            tokio::select! {
                biased;
                // Confirmations first: they release receipts and deliveries.
                Some(r) = persisted.recv() => match r {
                    Persisted::Ok { last, head } => {
                        self.engine.set_audit_head(head.0, head.1);
                        if let Some(id) = last {
                            self.engine.handle_persisted(wall_now(), id);
                            let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.ack_waiters)
                                .into_iter()
                                .partition(|w| w.1.is_some_and(|w| w <= id));
                            self.ack_waiters = waiting;
                            for (_, _, reply) in done {
                                let _ = reply.send(Ok(()));
                            }
                        }
                    }
                    Persisted::Failed { last, error } => {
                        error!(error = %error, "store write failed; stopping");
                        self.engine.handle_persist_failed(wall_now(), last, &error);
                        self.fatal = Some(error);
                    }
                },
                Some(f) = control.recv() => self.frame(&f),
                Some(f) = flash.recv() => self.frame(&f),
                // Flash sends and operator queries never wait behind queued routine sends.
                Some(c) = urgent.recv() => self.command(c),
                Some(c) = cmds.recv() => self.command(c),
                Some(f) = immediate.recv() => self.frame(&f),
                Some(f) = priority.recv() => self.frame(&f),
                Some(f) = routine.recv() => self.frame(&f),
                Some(ev) = conn.recv() => self.connection(ev),
                () = tokio::time::sleep(sleep_for) => {}
                () = &mut shutdown => {
                    info!("shutting down");
                    return Ok(());
                }
            }
            let now = wall_now();
            if deadline.is_some_and(|d| d <= now) {
                self.engine.handle_timeout(now);
            }
            self.drain();
            if let Some(e) = self.fatal.take() {
                return Err(anyhow!("store write failed: {e}"));
            }
        }
    }

    fn frame(&mut self, bytes: &[u8]) {
        if let Err(e) = self.engine.handle_frame(wall_now(), bytes) {
            warn!(error = %e, "frame rejected");
        }
    }

    fn connection(&mut self, ev: ConnEvent) {
        match ev {
            ConnEvent::Connected(w) => {
                self.writers = Some(w);
                self.last_error = None;
                self.engine.handle_connected(wall_now());
            }
            ConnEvent::Disconnected(reason) => {
                self.writers = None;
                self.last_error = Some(reason);
                self.engine.handle_disconnected(wall_now());
            }
            ConnEvent::Failed(reason) => self.last_error = Some(reason),
        }
    }

    fn command(&mut self, c: Command) {
        let now = wall_now();
        match c {
            Command::Send {
                out,
                to,
                events,
                submitted,
            } => {
                if let Some(to) = to {
                    if to != self.partner.as_str() {
                        let _ = submitted.send(Err(format!(
                            "{to} is not a partner of {} (partner: {})",
                            self.local, self.partner
                        )));
                        return;
                    }
                }
                match self.engine.submit(now, out) {
                    Ok(id) => {
                        self.subscribers.entry(id.clone()).or_default().push(events);
                        let _ = submitted.send(Ok(id));
                    }
                    Err(e) => {
                        let _ = submitted.send(Err(e.to_string()));
                    }
                }
            }
            Command::Inbox { follow, entries } => {
                for e in self.inbox.entries() {
                    if entries.send(e).is_err() {
                        return;
                    }
                }
                if follow {
                    self.followers.push(entries);
                }
            }
            Command::Ack { id, reply } => {
                let result = id
                    .parse::<MessageId>()
                    .map_err(|e| e.to_string())
                    .and_then(|id| {
                        self.engine
                            .acknowledge(now, &id)
                            .map(|write| (id, write))
                            .map_err(|e| e.to_string())
                    });
                match result {
                    Ok((id, write)) => {
                        self.inbox.acknowledged(&id, now);
                        // Answer only once the acknowledgement is durable.
                        self.ack_waiters.push((id, Some(write), reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Command::Audit { export, reply } => {
                let ctx = self.audit.clone();
                tokio::task::spawn_blocking(move || {
                    let _ = reply.send(audit_report(&ctx.db, &ctx.own, &ctx.partner, export));
                });
            }
        }
    }

    fn drain(&mut self) {
        while let Some(action) = self.engine.poll_action() {
            match action {
                Action::Send { lane, frame } => {
                    if let Some(w) = &self.writers {
                        let _ = w.0[lane.index()].send(frame);
                    }
                }
                Action::Persist { id, record } => {
                    let _ = self.persist_tx.send(StoreMsg::Record(id, record));
                }
                Action::Deliver(d) => self.deliver(d),
                Action::Report(r) => self.report(r),
                Action::Escalate(e) => {
                    warn!(id = %e.id, kind = ?e.kind, escalated_to = %e.escalated_to, count = e.count, "ESCALATION: deadline missed");
                }
                Action::Realert(n) => {
                    warn!(id = %n.message, level = %n.level, count = n.count, "RE-ALERT from partner: acknowledge this message");
                    self.inbox.realerted(&n.message, n.level);
                }
                Action::Alarm(a) => {
                    log_alarm(&a);
                    let _ = self.persist_tx.send(StoreMsg::Event(AuditEvent::Alarm {
                        kind: alarm_kind(&a.kind),
                        detail: a.detail.clone(),
                    }));
                }
                Action::PartnerAuditHead(t) => {
                    debug!(len = t.body.audit_len, head = %t.body.audit_head, "partner audit head");
                    let _ = self.persist_tx.send(StoreMsg::PartnerHead(t));
                }
                Action::Link { state, since } => {
                    let _ = self.persist_tx.send(StoreMsg::Event(AuditEvent::LinkState {
                        state: link_name(state).into(),
                    }));
                    info!(state = ?state, since = %format_time(since), "link state");
                }
            }
        }
    }

    fn deliver(&mut self, d: Delivery) {
        info!(id = %d.id, transport = %d.transport, "delivered to inbox");
        let entry = self.inbox.push(&d);
        self.followers.retain(|f| f.send(entry.clone()).is_ok());
    }

    fn report(&mut self, r: Report) {
        debug!(id = %r.id, level = ?r.level, "ack level");
        self.reports += 1;
        if self.reports % 4096 == 0 {
            // Waiters that stopped listening (e.g. `--wait delivered` on a message nobody
            // will acknowledge) would otherwise stay subscribed forever.
            self.subscribers.retain(|_, subs| {
                subs.retain(|s| !s.is_closed());
                !subs.is_empty()
            });
        }
        let done = matches!(r.level, AckLevel::Acknowledged);
        if let Some(subs) = self.subscribers.get_mut(&r.id) {
            subs.retain(|s| s.send(r.clone()).is_ok());
            if subs.is_empty() || done {
                self.subscribers.remove(&r.id);
            }
        }
    }

    fn status(&self) -> StatusView {
        let s = self.engine.status();
        let lanes = Precedence::ALL
            .into_iter()
            .map(|p| {
                let l = s.lanes[p.index()];
                (
                    p.to_string(),
                    LaneView {
                        awaiting_key: l.awaiting_key,
                        unaccepted: l.unaccepted,
                        undelivered: l.undelivered,
                        unacknowledged: l.unacknowledged,
                        receive_buffered: l.receive_buffered,
                    },
                )
            })
            .collect();
        StatusView {
            endpoint: self.local.to_string(),
            partner: self.partner.to_string(),
            link: link_name(s.link).into(),
            link_since: format_time(s.link_since),
            connected: s.connected,
            partner_online: s.partner_online,
            last_error: self.last_error.clone(),
            lanes,
            pending_acks: s
                .pending_operator_acks
                .iter()
                .map(ToString::to_string)
                .collect(),
            open_escalations: s
                .open_escalations
                .iter()
                .map(|(id, to, count)| EscalationView {
                    id: id.to_string(),
                    escalated_to: to.to_string(),
                    count: *count,
                })
                .collect(),
            alarms: s
                .alarms
                .iter()
                .map(|a| AlarmView {
                    at: format_time(a.at),
                    kind: alarm_kind(&a.kind),
                    message: a.message.as_ref().map(ToString::to_string),
                    detail: a.detail.clone(),
                })
                .collect(),
            inbox: self.inbox.len(),
        }
    }
}

fn link_name(s: LinkState) -> &'static str {
    match s {
        LinkState::Up => "up",
        LinkState::Degraded => "degraded",
        LinkState::Down => "down",
    }
}

fn alarm_kind(k: &AlarmKind) -> String {
    match k {
        AlarmKind::Security(e) => format!("security: {e}"),
        AlarmKind::PartnerKeyChanged => "partner identity key changed".into(),
        AlarmKind::Refused(code) => format!("refused by relay: {code:?}"),
        AlarmKind::StoreFailed => "store failed".into(),
    }
}

fn log_alarm(a: &Alarm) {
    match &a.kind {
        AlarmKind::Refused(_) => warn!(kind = %alarm_kind(&a.kind), detail = %a.detail, "ALARM"),
        _ => error!(kind = %alarm_kind(&a.kind), detail = %a.detail, "SECURITY ALARM"),
    }
}

/// The operator's inbox in delivery order, rebuilt from records at start-up.
#[derive(Debug, Default)]
struct InboxIndex {
    entries: Vec<InboxEntry>,
    by_id: BTreeMap<MessageId, usize>,
}

impl InboxIndex {
    fn from_records(records: &[Record]) -> Self {
        let mut index = Self::default();
        for r in records {
            match r {
                Record::Received { delivery, .. } => {
                    index.push(delivery);
                }
                Record::OperatorAck { id, receipt } => index.acknowledged(id, receipt.body.at),
                Record::PartnerEscalated { id, level } => index.realerted(id, *level),
                _ => {}
            }
        }
        index
    }

    fn push(&mut self, d: &Delivery) -> InboxEntry {
        let escalated = (d.transport > d.id.precedence).then(|| d.transport.to_string());
        let entry = InboxEntry {
            id: d.id.to_string(),
            from: d.id.sender.to_string(),
            to: d.to.to_string(),
            channel: d.id.channel.to_string(),
            precedence: d.id.precedence.to_string(),
            seq: d.id.seq.0,
            body: String::from_utf8_lossy(&d.body).into_owned(),
            sent_at: format_time(d.sent_at),
            received_at: format_time(d.received_at),
            acknowledged: None,
            escalated_to: escalated,
        };
        self.by_id.insert(d.id.clone(), self.entries.len());
        self.entries.push(entry.clone());
        entry
    }

    fn acknowledged(&mut self, id: &MessageId, at: Time) {
        if let Some(&i) = self.by_id.get(id) {
            self.entries[i].acknowledged = Some(format_time(at));
        }
    }

    fn realerted(&mut self, id: &MessageId, level: Precedence) {
        if let Some(&i) = self.by_id.get(id) {
            self.entries[i].escalated_to = Some(level.to_string());
        }
    }

    fn entries(&self) -> impl Iterator<Item = InboxEntry> + '_ {
        self.entries.iter().cloned()
    }

    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Verifies (or exports) the audit log in `db`: one JSON value per line of output.
pub fn audit_report(
    db: &redb::Database,
    own: &IdentityPublicKey,
    partner: &IdentityPublicKey,
    export: bool,
) -> Result<Vec<serde_json::Value>, String> {
    let data = Store::read_audit(db).map_err(|e| e.to_string())?;
    let report = audit::verify(&data, own, partner);
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
                "type": "signed_head", "endpoint": h.endpoint.to_string(), "len": h.len,
                "head": h.head.to_hex(), "at": format_time(h.at), "signature": hotline_proto::crypto::hex(&h.signature.0),
            }));
        }
        for t in &data.partner_heads {
            out.push(serde_json::json!({
                "type": "partner_head", "endpoint": t.body.from.to_string(), "len": t.body.audit_len,
                "head": t.body.audit_head.to_hex(), "at": format_time(t.body.at),
                "signature": hotline_proto::crypto::hex(&t.signature.0),
            }));
        }
    }
    out.push(serde_json::json!({ "type": "verify", "report": report }));
    Ok(out)
}

// ----- connection ----------------------------------------------------------------------------

async fn connect_loop(
    relay: std::net::SocketAddr,
    relay_name: String,
    client_config: quinn::ClientConfig,
    net: LaneSenders,
    events: mpsc::UnboundedSender<ConnEvent>,
) {
    let mut backoff = Duration::from_millis(100);
    let endpoint = match hotline_net::quic::client(relay, client_config) {
        Ok(e) => e,
        Err(e) => {
            error!(error = %e, "cannot create QUIC endpoint");
            let _ = events.send(ConnEvent::Failed(e.to_string()));
            return;
        }
    };
    loop {
        match connect_once(&endpoint, relay, &relay_name).await {
            Ok((conn, writers, readers)) => {
                backoff = Duration::from_millis(100);
                info!("connected to relay");
                if events.send(ConnEvent::Connected(writers)).is_err() {
                    return;
                }
                let reason = serve_connection(&conn, readers, &net).await;
                warn!(reason = %reason, "relay connection lost");
                if events.send(ConnEvent::Disconnected(reason)).is_err() {
                    return;
                }
            }
            Err(e) => {
                let msg = format!("{e:#}");
                warn!(error = %msg, "cannot connect to relay");
                if events.send(ConnEvent::Failed(msg)).is_err() {
                    return;
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

struct Readers {
    control: quinn::RecvStream,
}

async fn connect_once(
    endpoint: &quinn::Endpoint,
    relay: std::net::SocketAddr,
    relay_name: &str,
) -> Result<(quinn::Connection, Writers, Readers)> {
    let conn = endpoint
        .connect(relay, relay_name)
        .context("connecting")?
        .await
        .with_context(|| format!("handshake with relay {relay} as {relay_name:?}"))?;
    let (mut ctrl_send, ctrl_recv) = conn.open_bi().await.context("opening control stream")?;
    ctrl_send.set_priority(Lane::Control.priority()).ok();
    let hello = wire::encode_frame(&Frame::Hello(Hello {
        version: wire::PROTOCOL_VERSION,
        agent: format!("hotline-node/{}", env!("CARGO_PKG_VERSION")),
    }));
    framed::write_frame(&mut ctrl_send, &hello)
        .await
        .context("sending hello")?;
    let mut writers = Vec::with_capacity(Lane::COUNT);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(write_stream(ctrl_send, rx));
    writers.push(tx);
    for lane in &Lane::ALL[Lane::Control.index() + 1..] {
        let Some(p) = lane.precedence() else { continue };
        let mut s = conn.open_uni().await.context("opening lane stream")?;
        s.set_priority(lane.priority()).ok();
        LaneTag(p).write(&mut s).await.context("writing lane tag")?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_stream(s, rx));
        writers.push(tx);
    }
    let writers = writers
        .try_into()
        .map_err(|_| anyhow!("one writer per lane expected"))?;
    Ok((conn, Writers(writers), Readers { control: ctrl_recv }))
}

async fn write_stream(mut stream: quinn::SendStream, mut rx: mpsc::UnboundedReceiver<Vec<u8>>) {
    while let Some(frame) = rx.recv().await {
        if framed::write_frame(&mut stream, &frame).await.is_err() {
            return;
        }
    }
    let _ = stream.finish();
}

/// Reads the control stream and the relay's lane streams until the connection ends.
async fn serve_connection(conn: &quinn::Connection, readers: Readers, net: &LaneSenders) -> String {
    let control_tx = net[Lane::Control.index()].clone();
    let mut tasks = tokio::task::JoinSet::new();
    let mut control = readers.control;
    tasks.spawn(async move { read_into(&mut control, control_tx).await });
    loop {
        tokio::select! {
            uni = conn.accept_uni() => match uni {
                Ok(mut stream) => {
                    let net = net.clone();
                    tasks.spawn(async move {
                        let lane = match LaneTag::read(&mut stream).await {
                            Ok(LaneTag(p)) => p,
                            Err(e) => return format!("bad lane stream: {e}"),
                        };
                        read_into(&mut stream, net[Lane::Precedence(lane).index()].clone()).await
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
                        conn.close(1u32.into(), b"stream error");
                        tasks.abort_all();
                        return reason;
                    }
                }
            }
        }
    }
}

async fn read_into(stream: &mut quinn::RecvStream, tx: mpsc::Sender<Vec<u8>>) -> String {
    loop {
        match framed::read_frame(stream).await {
            Ok(Some(frame)) => {
                if tx.send(frame).await.is_err() {
                    return "node stopping".into();
                }
            }
            Ok(None) => return String::new(),
            Err(e) => return e.to_string(),
        }
    }
}

// ----- control server ------------------------------------------------------------------------

/// The engine loop's two command queues: flash sends and operator queries go to `urgent`,
/// which the loop serves first; other sends keep their order in `normal`.
#[derive(Clone)]
struct Commands {
    normal: mpsc::UnboundedSender<Command>,
    urgent: mpsc::UnboundedSender<Command>,
}

async fn serve_control(listener: UnixListener, cmds: Commands) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_control_conn(stream, cmds.clone()));
            }
            Err(e) => {
                warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_control_conn(stream: UnixStream, cmds: Commands) {
    let (r, mut w) = stream.into_split();
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<ResponseLine>();
    let writer = tokio::spawn(async move {
        while let Some(line) = out_rx.recv().await {
            let Ok(mut bytes) = serde_json::to_vec(&line) else {
                continue;
            };
            bytes.push(b'\n');
            if w.write_all(&bytes).await.is_err() {
                return;
            }
        }
    });
    let mut lines = BufReader::new(r).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let out = out_tx.clone();
        match serde_json::from_str::<RequestLine>(&line) {
            Ok(req) => {
                // Sends are submitted here, in line order, so one connection's messages enter
                // the outbox in the order the client wrote them; waiting happens in a task.
                let req = match req.request {
                    Request::Send {
                        to,
                        channel,
                        precedence,
                        body,
                        wait,
                        timeout_ms,
                    } => {
                        let tag = req.tag;
                        // Only flash may jump the queue: a flash overtakes lower precedences
                        // anyway, so the ordering rule is unaffected.
                        let queue = if precedence.as_deref() == Some("flash") {
                            &cmds.urgent
                        } else {
                            &cmds.normal
                        };
                        match submit(queue, to, channel, precedence, body) {
                            Ok(pending) => {
                                tokio::spawn(async move {
                                    let emit = |event: Event| {
                                        let _ = out.send(ResponseLine { tag, event });
                                    };
                                    let result =
                                        await_levels(pending, wait, timeout_ms, &emit).await;
                                    emit(done(result));
                                });
                            }
                            Err(e) => {
                                let _ = out.send(ResponseLine {
                                    tag,
                                    event: done(Err(e)),
                                });
                            }
                        }
                        continue;
                    }
                    request => RequestLine {
                        tag: req.tag,
                        request,
                    },
                };
                tokio::spawn(handle_request(req, cmds.urgent.clone(), out));
            }
            Err(e) => {
                let _ = out.send(ResponseLine {
                    tag: 0,
                    event: Event::Done {
                        ok: false,
                        error: Some(format!("bad request: {e}")),
                    },
                });
            }
        }
    }
    drop(out_tx);
    let _ = writer.await;
}

async fn handle_request(
    req: RequestLine,
    cmds: mpsc::UnboundedSender<Command>,
    out: mpsc::UnboundedSender<ResponseLine>,
) {
    let tag = req.tag;
    let emit = |event: Event| {
        let _ = out.send(ResponseLine { tag, event });
    };
    let result = match req.request {
        Request::Send { .. } => Err("internal: send handled by the connection reader".to_string()),
        Request::Inbox { follow } => {
            let (tx, mut rx) = mpsc::unbounded_channel();
            if cmds
                .send(Command::Inbox {
                    follow,
                    entries: tx,
                })
                .is_err()
            {
                Err("node is stopping".to_string())
            } else {
                while let Some(e) = rx.recv().await {
                    emit(Event::Message(e));
                }
                Ok(())
            }
        }
        Request::Ack { id } => {
            let (tx, rx) = oneshot::channel();
            let _ = cmds.send(Command::Ack { id, reply: tx });
            rx.await.unwrap_or_else(|_| Err("node is stopping".into()))
        }
        Request::Audit { export } => {
            let (tx, rx) = oneshot::channel();
            let _ = cmds.send(Command::Audit { export, reply: tx });
            match rx.await {
                Ok(Ok(values)) => {
                    for value in values {
                        emit(Event::Audit { value });
                    }
                    Ok(())
                }
                Ok(Err(e)) => Err(e),
                Err(_) => Err("node is stopping".into()),
            }
        }
        Request::Status => {
            let (tx, rx) = oneshot::channel();
            let _ = cmds.send(Command::Status { reply: tx });
            match rx.await {
                Ok(s) => {
                    emit(Event::Status(Box::new(s)));
                    Ok(())
                }
                Err(_) => Err("node is stopping".into()),
            }
        }
    };
    emit(done(result));
}

fn done(result: Result<(), String>) -> Event {
    match result {
        Ok(()) => Event::Done {
            ok: true,
            error: None,
        },
        Err(e) => Event::Done {
            ok: false,
            error: Some(e),
        },
    }
}

/// A submitted send whose id and ack levels are still to come.
struct PendingSend {
    events: mpsc::UnboundedReceiver<Report>,
    submitted: oneshot::Receiver<Result<MessageId, String>>,
}

fn submit(
    cmds: &mpsc::UnboundedSender<Command>,
    to: Option<String>,
    channel: Option<String>,
    precedence: Option<String>,
    body: String,
) -> Result<PendingSend, String> {
    let channel = match channel {
        Some(c) => c.parse::<Channel>().map_err(|e| format!("channel: {e}"))?,
        None => Channel::default(),
    };
    let precedence = match precedence {
        Some(p) => p.parse::<Precedence>().map_err(|e| e.to_string())?,
        None => Precedence::Routine,
    };
    let (events_tx, events) = mpsc::unbounded_channel();
    let (sub_tx, submitted) = oneshot::channel();
    cmds.send(Command::Send {
        out: Outgoing {
            channel,
            precedence,
            body: body.into_bytes(),
        },
        to,
        events: events_tx,
        submitted: sub_tx,
    })
    .map_err(|_| "node is stopping".to_string())?;
    Ok(PendingSend { events, submitted })
}

async fn await_levels(
    pending: PendingSend,
    wait: Option<WaitLevel>,
    timeout_ms: Option<u64>,
    emit: &impl Fn(Event),
) -> Result<(), String> {
    let PendingSend {
        mut events,
        submitted,
    } = pending;
    let id = submitted
        .await
        .map_err(|_| "node is stopping".to_string())??;
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(timeout_ms.unwrap_or(u64::MAX / 4));
    let mut stored = false;
    loop {
        let next = tokio::time::timeout_at(deadline, events.recv()).await;
        let report = match next {
            Ok(Some(r)) => r,
            Ok(None) => return Err("node is stopping".into()),
            Err(_) => {
                return Err(format!(
                    "timed out waiting for {} of {id}",
                    wait.map_or("stored", |w| match w {
                        WaitLevel::Accepted => "accepted",
                        WaitLevel::Delivered => "delivered",
                        WaitLevel::Acknowledged => "acknowledged",
                    })
                ));
            }
        };
        let reached = match report.level {
            AckLevel::Stored => {
                stored = true;
                emit(Event::Stored {
                    id: id.to_string(),
                    at: format_time(report.at),
                });
                None
            }
            AckLevel::Accepted { durable } => Some((
                WaitLevel::Accepted,
                if durable {
                    "accepted".to_string()
                } else {
                    "accepted (relay memory)".to_string()
                },
            )),
            AckLevel::Delivered => Some((WaitLevel::Delivered, "delivered".into())),
            AckLevel::Acknowledged => Some((WaitLevel::Acknowledged, "acknowledged".into())),
            AckLevel::Refused(code) => {
                emit(Event::Level {
                    id: id.to_string(),
                    level: format!("refused: {code:?} (kept in outbox, will retry)"),
                    at: format_time(report.at),
                    at_us: report.at.0,
                });
                None
            }
        };
        if let Some((level, text)) = reached {
            emit(Event::Level {
                id: id.to_string(),
                level: text,
                at: format_time(report.at),
                at_us: report.at.0,
            });
            if wait.is_some_and(|w| level >= w) {
                return Ok(());
            }
        }
        if stored && wait.is_none() {
            return Ok(());
        }
    }
}
