//! The control server: the CLI's JSON-lines protocol ([`crate::control`]) on a Unix socket.
//!
//! Each connection is read line by line; a line is parsed into a typed [`Request`] once, here,
//! and refused with its tag if it does not parse. Sends are submitted in line order, so one
//! connection's messages enter the outbox in the order the client wrote them. Waiting for their
//! ack levels runs concurrently in one task per connection ([`drive_sends`]), every other
//! request in its own task, so requests on one connection are served concurrently and their
//! answers interleave by tag.
//!
//! `alarms --follow` streams until the client's connection is gone: a write to a closed Unix
//! socket fails at once, so a client that went away is noticed at the next change (the
//! connection's writer ends).
//!
//! Flash sends and queries go to the engine loop's urgent queue; other sends to the normal one.
//! A flash overtakes lower precedences anyway, so the ordering rule is unaffected. The normal
//! queue is bounded and the engine loop stops taking from it while the relay links fall behind:
//! a connection whose send finds it full waits, and reads no further line, until there is room
//! (back-pressure; the CLI's `send` is one such wait).

mod sends;

use std::time::Duration;

use hotline_proto::Precedence;
use hotline_proto::engine::Outgoing;
use hotline_proto::wire::MAX_BODY_LEN;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::warn;

use super::RequestError;
use super::commands::Command;
use crate::alarms::ClearTarget;
use crate::control::{Event, InboxEntry, Request, RequestLine, ResponseLine};
use sends::{await_levels, drive_sends, send_command};

/// The engine loop's two command queues.
#[derive(Clone, Debug)]
pub(super) struct Commands {
    /// Non-flash sends, served in order after urgent ones; bounded, so a connection that
    /// submits faster than the node sends waits here.
    pub(super) normal: mpsc::Sender<Command>,
    /// Flash sends and queries, served first.
    pub(super) urgent: mpsc::UnboundedSender<Command>,
}

/// Answers are gathered into one write up to this many bytes.
const WRITE_BATCH: usize = 64 * 1024;

/// Requests are read from the socket in reads of up to this many bytes.
const READ_BUFFER: usize = 64 * 1024;

/// Accepts connections until the task is aborted.
pub(super) async fn serve(listener: UnixListener, cmds: Commands) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_connection(stream, cmds.clone()));
            }
            Err(e) => {
                warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Where a request's answers go: its tag and the connection's writer, and whether the client
/// has gone (its side of the socket reached end of file).
#[derive(Clone, Debug)]
struct Replies {
    tag: u64,
    out: mpsc::UnboundedSender<ResponseLine>,
    gone: watch::Receiver<bool>,
    /// The connecting process's uid, from the socket (not from what it says).
    peer_uid: Option<u32>,
}

impl Replies {
    /// Returns once the client has closed the connection. A follow stream waits on this: the
    /// writer only notices a closed socket when it writes, and a quiet stream never writes.
    async fn client_gone(&self) {
        let mut gone = self.gone.clone();
        let _ = gone.wait_for(|g| *g).await;
    }

    fn emit(&self, event: Event) {
        let _ = self.out.send(ResponseLine {
            tag: self.tag,
            event,
        });
    }

    fn done(&self, result: Result<(), RequestError>) {
        self.emit(match result {
            Ok(()) => Event::Done {
                ok: true,
                error: None,
            },
            Err(e) => Event::Done {
                ok: false,
                error: Some(e.to_string()),
            },
        });
    }
}

async fn serve_connection(stream: UnixStream, cmds: Commands) {
    let peer_uid = stream.peer_cred().ok().map(|c| c.uid());
    let (r, mut w) = stream.into_split();
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<ResponseLine>();
    let (gone_tx, gone_rx) = watch::channel(false);
    let writer = tokio::spawn(async move {
        // Every answer already waiting goes out in one write (up to WRITE_BATCH bytes): under
        // load a connection carries thousands of events a second, and a write per event was a
        // system call and a wake-up each.
        let mut bytes = Vec::new();
        while let Some(line) = out_rx.recv().await {
            bytes.clear();
            let mut next = Some(line);
            while let Some(line) = next.take() {
                let start = bytes.len();
                if serde_json::to_writer(&mut bytes, &line).is_err() {
                    bytes.truncate(start);
                } else {
                    bytes.push(b'\n');
                }
                if bytes.len() < WRITE_BATCH {
                    next = out_rx.try_recv().ok();
                }
            }
            if w.write_all(&bytes).await.is_err() {
                return;
            }
        }
    });
    let (sends, sends_rx) = mpsc::unbounded_channel();
    // Outside tokio's cooperative budget: the budget is per task, and this one task stands
    // for thousands of sends (with it, each poll moved 128 answers and the rest waited).
    let driver = tokio::spawn(tokio::task::unconstrained(drive_sends(sends_rx)));
    let mut reader = BufReader::with_capacity(READ_BUFFER, r);
    let mut buf = Vec::new();
    loop {
        let line = match read_request_line(&mut reader, &mut buf).await {
            Ok(LineRead::Line) => String::from_utf8_lossy(&buf),
            Ok(LineRead::TooLong) => {
                // The rest of the line cannot be told apart from the next request: answer and
                // close.
                let _ = out_tx.send(ResponseLine {
                    tag: 0,
                    event: Event::Done {
                        ok: false,
                        error: Some(format!(
                            "request line longer than {MAX_REQUEST_LINE} bytes refused \
                             (message bodies are limited to {MAX_BODY_LEN} bytes)"
                        )),
                    },
                });
                break;
            }
            Ok(LineRead::Eof) | Err(_) => break,
        };
        let req = match RequestLine::parse(&line) {
            Ok(req) => req,
            Err((tag, error)) => {
                let _ = out_tx.send(ResponseLine {
                    tag,
                    event: Event::Done {
                        ok: false,
                        error: Some(error),
                    },
                });
                continue;
            }
        };
        let replies = Replies {
            tag: req.tag,
            out: out_tx.clone(),
            gone: gone_rx.clone(),
            peer_uid,
        };
        match req.request {
            Request::Send {
                to,
                channel,
                precedence,
                body,
                wait,
                timeout_ms,
            } => {
                if body.is_empty() {
                    replies.done(Err(RequestError::EmptyBody));
                    continue;
                }
                let precedence = precedence.unwrap_or(Precedence::Routine);
                let out = Outgoing {
                    channel: channel.unwrap_or_default(),
                    precedence,
                    body: body.into_bytes(),
                };
                let (command, pending) = send_command(out, to);
                let queued = if precedence == Precedence::Flash {
                    cmds.urgent.send(command).is_ok()
                } else {
                    // Back-pressure: this connection's next line waits until the engine loop
                    // takes sends again.
                    cmds.normal.send(command).await.is_ok()
                };
                if queued {
                    let _ = sends.send(Box::pin(async move {
                        let result = await_levels(pending, wait, timeout_ms, &replies).await;
                        replies.done(result);
                    }));
                } else {
                    replies.done(Err(RequestError::Stopping));
                }
            }
            request => {
                tokio::spawn(handle_query(request, cmds.urgent.clone(), replies));
            }
        }
    }
    let _ = gone_tx.send(true);
    drop(sends);
    drop(out_tx);
    let _ = driver.await;
    let _ = writer.await;
}

/// The longest request line read: a body at [`MAX_BODY_LEN`] with every byte escaped by JSON
/// (`\u00XX`, six bytes each), plus room for the other fields. A longer line is refused before
/// it is held in memory.
const MAX_REQUEST_LINE: usize = 6 * MAX_BODY_LEN + 4096;

/// How reading one request line ended.
#[derive(Debug, PartialEq, Eq)]
enum LineRead {
    /// `buf` holds a line, without its newline.
    Line,
    /// The client closed the connection.
    Eof,
    /// The line grew past [`MAX_REQUEST_LINE`]; what was read is discarded.
    TooLong,
}

/// Reads one newline-terminated line into `buf`, holding at most [`MAX_REQUEST_LINE`] bytes.
async fn read_request_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
) -> std::io::Result<LineRead> {
    buf.clear();
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(if buf.is_empty() {
                LineRead::Eof
            } else {
                LineRead::Line
            });
        }
        let (chunk, used, done) = match available.iter().position(|b| *b == b'\n') {
            Some(i) => (&available[..i], i + 1, true),
            None => (available, available.len(), false),
        };
        if buf.len() + chunk.len() > MAX_REQUEST_LINE {
            buf.clear();
            return Ok(LineRead::TooLong);
        }
        buf.extend_from_slice(chunk);
        reader.consume(used);
        if done {
            return Ok(LineRead::Line);
        }
    }
}

/// Every request but `send`.
async fn handle_query(request: Request, cmds: mpsc::UnboundedSender<Command>, replies: Replies) {
    let result = match request {
        Request::Send { .. } => Ok(()),
        Request::Inbox {
            follow,
            unacked,
            channel,
            updates,
        } => {
            let (tx, mut rx) = mpsc::unbounded_channel();
            let (failed, mut failure) = oneshot::channel();
            let channel = channel.map(|c| c.to_string());
            let wanted = |e: &InboxEntry| {
                !(unacked && e.acknowledged.is_some())
                    && channel.as_ref().is_none_or(|c| *c == e.channel)
            };
            match cmds.send(Command::Inbox {
                follow,
                updates,
                entries: tx,
                failed,
            }) {
                Ok(()) => loop {
                    tokio::select! {
                        e = rx.recv() => match e {
                            Some(e) if wanted(&e) => replies.emit(Event::Message(e)),
                            Some(_) => {}
                            // The lister says why before it closes the stream.
                            None => match failure.try_recv() {
                                Ok(error) => break Err(RequestError::InboxListing(error)),
                                Err(_) => break Ok(()),
                            },
                        },
                        // Dropping `rx` lets the engine loop forget this follower.
                        () = replies.client_gone() => break Ok(()),
                    }
                },
                Err(_) => Err(RequestError::Stopping),
            }
        }
        Request::Ack { id } => ask(&cmds, |reply| Command::Ack { id, reply })
            .await
            .and_then(|r| r),
        Request::Audit { export } => ask(&cmds, |reply| Command::Audit { export, reply })
            .await
            .and_then(|r| r)
            .map(|values| {
                for value in values {
                    replies.emit(Event::Audit { value });
                }
            }),
        Request::Status => ask(&cmds, |reply| Command::Status { reply })
            .await
            .map(|s| replies.emit(Event::Status(Box::new(s)))),
        Request::Sent => ask(&cmds, |reply| Command::Sent { reply })
            .await
            .map(|sent| {
                for s in sent {
                    replies.emit(Event::Sent(s));
                }
            }),
        Request::Rekey => ask(&cmds, |reply| Command::Rekey { reply })
            .await
            .map(|epoch| replies.emit(Event::Rekeyed { epoch })),
        Request::Alarms { follow, all } => alarms(&cmds, follow, all, &replies).await,
        Request::ClearAlarm { id, all, by } => {
            let by = cleared_by(&by, replies.peer_uid);
            clear_alarm(&cmds, id, all, by, &replies).await
        }
    };
    replies.done(result);
}

/// Who cleared an alarm, for the audit log: the name the client gives (at most 64 characters)
/// and the uid the socket reports, which the client cannot choose.
fn cleared_by(claimed: &str, uid: Option<u32>) -> String {
    let name: String = claimed.chars().take(64).collect();
    match uid {
        Some(uid) => format!("{name} (uid {uid})"),
        None => name,
    }
}

/// `alarms`: the book's entries, then (with `follow`) every change until the client goes away
/// or the node stops.
async fn alarms(
    cmds: &mpsc::UnboundedSender<Command>,
    follow: bool,
    all: bool,
    replies: &Replies,
) -> Result<(), RequestError> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    cmds.send(Command::Alarms {
        follow,
        all,
        entries: tx,
    })
    .map_err(|_| RequestError::Stopping)?;
    loop {
        tokio::select! {
            entry = rx.recv() => match entry {
                Some(view) => replies.emit(Event::Alarm(view)),
                None => return Ok(()),
            },
            // The connection's writer ended, or the client closed: nobody is listening.
            () = replies.out.closed() => return Ok(()),
            () = replies.client_gone() => return Ok(()),
        }
    }
}

/// `clear_alarm`: answered with each cleared entry once the clearing is durable.
async fn clear_alarm(
    cmds: &mpsc::UnboundedSender<Command>,
    id: Option<u64>,
    all: bool,
    by: String,
    replies: &Replies,
) -> Result<(), RequestError> {
    let target = match (id, all) {
        (Some(id), false) => ClearTarget::One(id),
        (None, true) => ClearTarget::All,
        _ => return Err(RequestError::ClearTarget),
    };
    let (cleared, durable) = ask(cmds, |reply| Command::ClearAlarm { target, by, reply }).await??;
    // Dropped unanswered only if the commit failed, and then the node stops.
    durable.await.map_err(|_| RequestError::Stopping)?;
    for view in cleared {
        replies.emit(Event::Alarm(view));
    }
    Ok(())
}

/// Sends a command carrying a reply channel and waits for the answer.
async fn ask<T>(
    cmds: &mpsc::UnboundedSender<Command>,
    command: impl FnOnce(oneshot::Sender<T>) -> Command,
) -> Result<T, RequestError> {
    let (tx, rx) = oneshot::channel();
    cmds.send(command(tx)).map_err(|_| RequestError::Stopping)?;
    rx.await.map_err(|_| RequestError::Stopping)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_all(input: &[u8]) -> Vec<(LineRead, Vec<u8>)> {
        let mut reader = BufReader::with_capacity(7, input);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        loop {
            let r = read_request_line(&mut reader, &mut buf).await.unwrap();
            let stop = r != LineRead::Line;
            out.push((r, buf.clone()));
            if stop {
                return out;
            }
        }
    }

    #[tokio::test]
    async fn lines_are_split_across_reads_and_the_last_may_lack_its_newline() {
        let got = read_all(b"{\"tag\":1}\nsecond line\nlast").await;
        let lines: Vec<_> = got.iter().map(|(_, b)| b.as_slice()).collect();
        assert_eq!(lines, [&b"{\"tag\":1}"[..], b"second line", b"last", b""]);
        assert_eq!(got.last().map(|(r, _)| r), Some(&LineRead::Eof));
    }

    #[tokio::test]
    async fn a_line_past_the_limit_is_refused_without_holding_it() {
        let mut input = vec![b'x'; MAX_REQUEST_LINE + 1];
        input.push(b'\n');
        let got = read_all(&input).await;
        assert_eq!(got[0].0, LineRead::TooLong);
        assert!(got[0].1.is_empty());

        let mut at_limit = vec![b'y'; MAX_REQUEST_LINE];
        at_limit.push(b'\n');
        assert_eq!(read_all(&at_limit).await[0].0, LineRead::Line);
    }
}
