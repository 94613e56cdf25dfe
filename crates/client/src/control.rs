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
//!
//! Alarms (see [`crate::alarms`]) are listed, followed and cleared with `alarms` and
//! `clear_alarm`:
//!
//! ```text
//! → {"tag":2,"cmd":"clear_alarm","id":3,"by":"alice"}
//! ← {"tag":2,"event":"alarm","id":3,"severity":"critical","kind":"security: bad signature",…,"cleared":{"by":"alice","at":"…"}}
//! ← {"tag":2,"event":"done","ok":true}
//! ```
//!
//! The values carried (status, inbox entries, alarms) are in the `views` submodule and
//! re-exported here.

use std::path::{Path, PathBuf};

use hotline_proto::{Channel, EndpointId, MessageId, Precedence};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

mod views;
pub use views::{
    AlarmView, ClearedView, EscalationView, InboxEntry, LaneView, RelayView, SentView, StatusView,
};

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

/// What the CLI asks. Values arrive typed: a bad channel, precedence or id is refused when the
/// line is parsed, with the request's tag, before anything reaches the engine.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Queue a message.
    Send {
        /// Recipient (default: the only partner).
        #[serde(default)]
        to: Option<EndpointId>,
        /// Channel (default `main`).
        #[serde(default)]
        channel: Option<Channel>,
        /// Precedence (default `routine`).
        #[serde(default)]
        precedence: Option<Precedence>,
        /// Text: not empty, at most [`hotline_proto::wire::MAX_BODY_LEN`] bytes.
        body: String,
        /// Block until this level.
        #[serde(default)]
        wait: Option<WaitLevel>,
        /// Give up waiting after this many milliseconds.
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    /// List the inbox in delivery order; with `follow`, keep streaming new messages. The
    /// filters apply to both (a changed line sent with `updates` is filtered too).
    Inbox {
        /// Keep the stream open.
        #[serde(default)]
        follow: bool,
        /// Only messages our operator has not acknowledged yet.
        #[serde(default)]
        unacked: bool,
        /// Only messages on this channel.
        #[serde(default)]
        channel: Option<Channel>,
        /// With `follow`, also send a message again whenever its line changes (acknowledged
        /// here, or re-alerted by the partner), so a live view stays current.
        #[serde(default)]
        updates: bool,
    },
    /// Acknowledge a delivered message.
    Ack {
        /// Message id, written `sender:channel:precedence:seq`.
        #[serde(with = "as_text")]
        id: MessageId,
    },
    /// Link state, queues, escalations, alarms.
    Status,
    /// Our messages that await the partner's delivery receipt or acknowledgement, in id order.
    Sent,
    /// Replace our sealing key now (a new epoch, announced once durable).
    Rekey,
    /// Verify the audit log (and with `export`, list it).
    Audit {
        /// Also list every entry and head.
        #[serde(default)]
        export: bool,
    },
    /// The alarm book: one [`Event::Alarm`] per entry, highest severity first, then most
    /// recent first; with `follow`, then one for every new or changed entry (count up,
    /// cleared, re-opened) until the client goes away.
    Alarms {
        /// Keep the stream open.
        #[serde(default)]
        follow: bool,
        /// Cleared entries too (by default only uncleared ones).
        #[serde(default)]
        all: bool,
    },
    /// Clear one alarm (`id`) or every uncleared one (`all`; exactly one of the two). Answers
    /// one [`Event::Alarm`] per entry cleared, once the clearing and its audit record are
    /// durable. An unknown id is refused (`no alarm 7`).
    ClearAlarm {
        /// The entry to clear.
        #[serde(default)]
        id: Option<u64>,
        /// Clear every uncleared entry.
        #[serde(default)]
        all: bool,
        /// Who clears (the local user), for the audit log.
        by: String,
    },
}

impl RequestLine {
    /// Parses one request line. A line that is JSON with a `tag` but not a valid request is
    /// refused with that tag, so the client waiting on it hears why.
    pub fn parse(line: &str) -> Result<Self, (u64, String)> {
        #[derive(Deserialize)]
        struct Tagged {
            tag: u64,
        }
        serde_json::from_str::<Self>(line).map_err(|e| {
            let tag = serde_json::from_str::<Tagged>(line).map_or(0, |t| t.tag);
            (tag, format!("bad request: {e}"))
        })
    }
}

/// Serde as the value's text form (`Display`/`FromStr`), so ids read as in the CLI.
mod as_text {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<T: Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub(super) fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: FromStr<Err: Display>,
        D: Deserializer<'de>,
    {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
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
        /// The same, microseconds since the Unix epoch, for tools.
        #[serde(default)]
        at_us: u64,
        /// When this node knew it durable (microseconds since the Unix epoch): `at` is the
        /// submission time, this the commit's (`hotline-bench`'s per-hop breakdown).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seen_us: Option<u64>,
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
        /// When this node learned of it (microseconds since the Unix epoch, its clock): with
        /// `at`, where a receipt's time went (`hotline-bench`'s per-hop breakdown).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seen_us: Option<u64>,
    },
    /// An inbox entry.
    Message(InboxEntry),
    /// A status snapshot.
    Status(Box<StatusView>),
    /// One of our messages that awaits the partner.
    Sent(SentView),
    /// A new sealing key is in place.
    Rekeyed {
        /// Its epoch.
        epoch: u32,
    },
    /// An alarm-book entry (from `alarms` or `clear_alarm`).
    Alarm(AlarmView),
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

/// Why talking to a node's control socket failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No node listens on the socket.
    #[error("node is not running (no control socket at {})", socket.display())]
    NotRunning {
        /// The socket path tried.
        socket: PathBuf,
    },
    /// Reading or writing the socket failed.
    #[error("control socket {}: {error}", socket.display())]
    Io {
        /// The socket path.
        socket: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// The node answered something that is not a response line.
    #[error("bad response from node ({detail}): {line}")]
    BadResponse {
        /// The parse error.
        detail: String,
        /// The line, trimmed.
        line: String,
    },
    /// The node closed the connection before answering.
    #[error("node closed the control connection")]
    Closed,
    /// A request did not encode.
    #[error("encoding a request: {0}")]
    Encode(serde_json::Error),
    /// The node refused the request (its `done` error).
    #[error("{0}")]
    Refused(String),
}

// serde_json's error is in the message, not a `source()`: anyhow's `{:#}` would print it twice.
impl From<serde_json::Error> for ControlError {
    fn from(e: serde_json::Error) -> Self {
        Self::Encode(e)
    }
}

/// A connection to a node's control socket: a [`ControlWriter`] and a [`ControlReader`], which
/// [`ControlClient::split`] separates so one task can pace requests while another reads.
#[derive(Debug)]
pub struct ControlClient {
    writer: ControlWriter,
    reader: ControlReader,
}

impl ControlClient {
    /// Connects; a missing or dead socket means the node is not running, said in one line.
    pub async fn connect(socket: &Path) -> Result<Self, ControlError> {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                    ControlError::NotRunning {
                        socket: socket.to_owned(),
                    }
                }
                _ => ControlError::Io {
                    socket: socket.to_owned(),
                    error: e,
                },
            })?;
        let (r, w) = stream.into_split();
        Ok(Self {
            writer: ControlWriter {
                inner: w,
                socket: socket.to_owned(),
                next_tag: 1,
                buf: Vec::new(),
            },
            reader: ControlReader {
                inner: BufReader::with_capacity(256 * 1024, r),
                socket: socket.to_owned(),
                line: String::new(),
            },
        })
    }

    /// The two halves.
    pub fn split(self) -> (ControlWriter, ControlReader) {
        (self.writer, self.reader)
    }

    /// Sends a request now; returns its tag.
    pub async fn request(&mut self, request: Request) -> Result<u64, ControlError> {
        let tag = self.writer.push(&request)?;
        self.writer.flush().await?;
        Ok(tag)
    }

    /// Reads the next response line, whatever its tag.
    pub async fn next(&mut self) -> Result<Option<ResponseLine>, ControlError> {
        self.reader.next().await
    }

    /// The events of request `tag`, in order, up to its `done`.
    pub fn events_for(&mut self, tag: u64) -> EventsFor<'_> {
        EventsFor {
            reader: &mut self.reader,
            tag,
        }
    }

    /// Sends one request and collects its events up to (excluding) `done`; a `done` with an
    /// error becomes [`ControlError::Refused`].
    pub async fn call(&mut self, request: Request) -> Result<Vec<Event>, ControlError> {
        let tag = self.request(request).await?;
        let mut events = self.events_for(tag);
        let mut out = Vec::new();
        while let Some(e) = events.next().await? {
            out.push(e);
        }
        Ok(out)
    }
}

/// The events of one request; see [`ControlClient::events_for`].
#[derive(Debug)]
pub struct EventsFor<'a> {
    reader: &'a mut ControlReader,
    tag: u64,
}

impl EventsFor<'_> {
    /// The next event of this request; `None` after a successful `done`, the node's error after
    /// a failed one. Lines of other requests are skipped.
    pub async fn next(&mut self) -> Result<Option<Event>, ControlError> {
        loop {
            let Some(line) = self.reader.next().await? else {
                return Err(ControlError::Closed);
            };
            if line.tag != self.tag {
                continue;
            }
            return match line.event {
                Event::Done { ok: true, .. } => Ok(None),
                Event::Done { ok: false, error } => Err(ControlError::Refused(
                    error.unwrap_or_else(|| "request failed".into()),
                )),
                e => Ok(Some(e)),
            };
        }
    }
}

/// The writing half: requests are queued with [`ControlWriter::push`] and written by
/// [`ControlWriter::flush`], so a burst goes out in one write.
#[derive(Debug)]
pub struct ControlWriter {
    inner: OwnedWriteHalf,
    socket: PathBuf,
    next_tag: u64,
    buf: Vec<u8>,
}

impl ControlWriter {
    /// Queues a request; returns its tag (1, 2, 3, … on this connection).
    pub fn push(&mut self, request: &Request) -> Result<u64, ControlError> {
        let tag = self.next_tag;
        serde_json::to_writer(&mut self.buf, &RequestRef { tag, request })?;
        self.buf.push(b'\n');
        self.next_tag += 1;
        Ok(tag)
    }

    /// The tag the next [`ControlWriter::push`] returns.
    pub fn next_tag(&self) -> u64 {
        self.next_tag
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> Result<(), ControlError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.inner
            .write_all(&self.buf)
            .await
            .map_err(|error| ControlError::Io {
                socket: self.socket.clone(),
                error,
            })?;
        self.buf.clear();
        Ok(())
    }
}

/// [`RequestLine`] by reference, to serialize without cloning the body.
#[derive(Serialize)]
struct RequestRef<'a> {
    tag: u64,
    #[serde(flatten)]
    request: &'a Request,
}

/// The reading half.
#[derive(Debug)]
pub struct ControlReader {
    inner: BufReader<OwnedReadHalf>,
    socket: PathBuf,
    line: String,
}

impl ControlReader {
    /// The next response line; `None` when the node closed the connection. Not
    /// cancellation-safe: keep it out of `select!`.
    pub async fn next(&mut self) -> Result<Option<ResponseLine>, ControlError> {
        self.line.clear();
        let n = self
            .inner
            .read_line(&mut self.line)
            .await
            .map_err(|error| ControlError::Io {
                socket: self.socket.clone(),
                error,
            })?;
        if n == 0 {
            return Ok(None);
        }
        serde_json::from_str(&self.line)
            .map(Some)
            .map_err(|e| ControlError::BadResponse {
                detail: e.to_string(),
                line: self.line.trim_end().to_owned(),
            })
    }
}

/// The control socket of the node whose config is at `config`.
pub fn socket_for(config: &Path) -> anyhow::Result<PathBuf> {
    Ok(crate::config::NodeFile::read(config)?.control_socket())
}
