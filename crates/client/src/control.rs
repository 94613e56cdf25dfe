//! The local control protocol between the `hotline` CLI and a running node.
//!
//! JSON lines over a Unix socket (`<data_dir>/control.sock`, mode 0600). Each request line
//! carries a `tag`; every response line echoes it, and the last line for a request is a
//! `done` event. Requests on one connection are served concurrently, so a client may pipeline
//! many sends and the node group-commits them.
//!
//! ```text
//! → {"tag":1,"cmd":"send","precedence":"flash","body":"hello","wait":"delivered"}
//! ← {"tag":1,"event":"stored","id":"us:main:flash:1","at":"2026-11-25T10:00:00.000001Z"}
//! ← {"tag":1,"event":"level","id":"us:main:flash:1","level":"accepted (relay memory)","at":"…"}
//! ← {"tag":1,"event":"level","id":"us:main:flash:1","level":"delivered","at":"…"}
//! ← {"tag":1,"event":"done","ok":true}
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// The ack level a `send` waits for.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum WaitLevel {
    /// The relay holds it.
    Accepted,
    /// The partner node stored it (signed receipt).
    Delivered,
    /// A partner operator acknowledged it (signed receipt).
    Acknowledged,
}

/// One request line.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RequestLine {
    /// Echoed in every response line.
    pub tag: u64,
    /// The request.
    #[serde(flatten)]
    pub request: Request,
}

/// What the CLI asks.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Queue a message.
    Send {
        /// Recipient (default: the only partner).
        #[serde(default)]
        to: Option<String>,
        /// Channel (default `main`).
        #[serde(default)]
        channel: Option<String>,
        /// Precedence (default `routine`).
        #[serde(default)]
        precedence: Option<String>,
        /// Text.
        body: String,
        /// Block until this level.
        #[serde(default)]
        wait: Option<WaitLevel>,
        /// Give up waiting after this many milliseconds.
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    /// List the inbox in delivery order; with `follow`, keep streaming new messages.
    Inbox {
        /// Keep the stream open.
        #[serde(default)]
        follow: bool,
    },
    /// Acknowledge a delivered message.
    Ack {
        /// Message id.
        id: String,
    },
    /// Link state, queues, escalations, alarms.
    Status,
    /// Verify the audit log (and with `export`, list it).
    Audit {
        /// Also list every entry and head.
        #[serde(default)]
        export: bool,
    },
}

/// One response line.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ResponseLine {
    /// The request's tag.
    pub tag: u64,
    /// What happened.
    #[serde(flatten)]
    pub event: Event,
}

/// Response events.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The message is durably in the outbox.
    Stored {
        /// Its id.
        id: String,
        /// When.
        at: String,
    },
    /// The message reached an ack level.
    Level {
        /// Its id.
        id: String,
        /// `accepted (relay memory)`, `accepted`, `delivered`, `acknowledged`, `refused: …`.
        level: String,
        /// When (receipts: the partner's signed time).
        at: String,
        /// Microseconds since the Unix epoch, for tools.
        at_us: u64,
    },
    /// An inbox entry.
    Message(InboxEntry),
    /// A status snapshot.
    Status(Box<StatusView>),
    /// An audit entry, head or the verification report.
    Audit {
        /// The value.
        value: serde_json::Value,
    },
    /// The last line for a request.
    Done {
        /// Success.
        ok: bool,
        /// What went wrong.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

/// One inbox message, as `inbox --json` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxEntry {
    /// `sender:channel:precedence:seq`.
    pub id: String,
    /// Sender.
    pub from: String,
    /// Recipient.
    pub to: String,
    /// Channel.
    pub channel: String,
    /// Original precedence.
    pub precedence: String,
    /// Lane sequence.
    pub seq: u64,
    /// Text (lossy UTF-8).
    pub body: String,
    /// Sender's time (RFC 3339).
    pub sent_at: String,
    /// Our delivery time (RFC 3339).
    pub received_at: String,
    /// When our operator acknowledged it, if so.
    pub acknowledged: Option<String>,
    /// Raised transport precedence, if it escalated.
    pub escalated_to: Option<String>,
}

/// Per-lane queue depths.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaneView {
    /// Waiting for the partner's key.
    pub awaiting_key: usize,
    /// Not yet accepted by the relay.
    pub unaccepted: usize,
    /// Not yet delivered.
    pub undelivered: usize,
    /// Delivered, not yet acknowledged.
    pub unacknowledged: usize,
    /// Received, waiting for earlier messages.
    pub receive_buffered: usize,
}

/// An alarm as shown by `status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlarmView {
    /// When.
    pub at: String,
    /// Kind.
    pub kind: String,
    /// Message, if any.
    pub message: Option<String>,
    /// Detail.
    pub detail: String,
}

/// An open escalation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EscalationView {
    /// Message id.
    pub id: String,
    /// Current transport precedence.
    pub escalated_to: String,
    /// Escalations so far.
    pub count: u32,
}

/// `status --json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusView {
    /// This endpoint.
    pub endpoint: String,
    /// The partner.
    pub partner: String,
    /// `up`, `degraded` or `down`.
    pub link: String,
    /// Since when.
    pub link_since: String,
    /// Connected to the relay.
    pub connected: bool,
    /// Relay's word on the partner.
    pub partner_online: Option<bool>,
    /// Last connection error, if any.
    pub last_error: Option<String>,
    /// Queue depths by precedence name.
    pub lanes: std::collections::BTreeMap<String, LaneView>,
    /// Delivered messages our operator has not acknowledged.
    pub pending_acks: Vec<String>,
    /// Our messages that escalated.
    pub open_escalations: Vec<EscalationView>,
    /// Recent alarms, newest last.
    pub alarms: Vec<AlarmView>,
    /// Inbox size.
    pub inbox: usize,
}

/// A connection to a node's control socket.
#[derive(Debug)]
pub struct ControlClient {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    next_tag: u64,
}

impl ControlClient {
    /// Connects; a missing or dead socket means the node is not running, said in one line.
    pub async fn connect(socket: &Path) -> Result<Self> {
        let stream = match UnixStream::connect(socket).await {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                bail!(
                    "node is not running (no control socket at {})",
                    socket.display()
                )
            }
            Err(e) => return Err(e).with_context(|| format!("connecting to {}", socket.display())),
        };
        let (r, w) = stream.into_split();
        Ok(Self {
            reader: BufReader::new(r),
            writer: w,
            next_tag: 1,
        })
    }

    /// Sends a request; returns its tag.
    pub async fn request(&mut self, request: Request) -> Result<u64> {
        let tag = self.next_tag;
        self.next_tag += 1;
        let mut line = serde_json::to_vec(&RequestLine { tag, request })?;
        line.push(b'\n');
        self.writer
            .write_all(&line)
            .await
            .context("writing to the node's control socket")?;
        Ok(tag)
    }

    /// Reads the next response line; `None` when the node closed the connection.
    pub async fn next(&mut self) -> Result<Option<ResponseLine>> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .await
            .context("reading from the node's control socket")?;
        if n == 0 {
            return Ok(None);
        }
        Ok(Some(serde_json::from_str(&line).with_context(|| {
            format!("bad response from node: {line}")
        })?))
    }

    /// Sends one request and collects its events up to (excluding) `done`; a `done` with an
    /// error becomes the error.
    pub async fn call(&mut self, request: Request) -> Result<Vec<Event>> {
        let tag = self.request(request).await?;
        let mut events = Vec::new();
        loop {
            let Some(line) = self.next().await? else {
                bail!("node closed the control connection")
            };
            if line.tag != tag {
                continue;
            }
            match line.event {
                Event::Done { ok: true, .. } => return Ok(events),
                Event::Done { ok: false, error } => {
                    bail!("{}", error.unwrap_or_else(|| "request failed".into()))
                }
                e => events.push(e),
            }
        }
    }
}

/// The control socket of the node whose config is at `config`.
pub fn socket_for(config: &Path) -> Result<PathBuf> {
    Ok(crate::config::NodeFile::read(config)?.control_socket())
}
