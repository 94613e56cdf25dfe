//! `hotline send`, `inbox` and `ack`: the operator's messages.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use hotline_client::control::{self, ControlClient, Event, Request, WaitLevel};
use hotline_client::view;
use hotline_proto::{Channel, EndpointId, MessageId, Precedence};

#[derive(Debug, Args)]
pub(crate) struct SendArgs {
    /// Node config (TOML).
    #[arg(long, env = "HOTLINE_CONFIG")]
    config: PathBuf,
    /// Recipient; may be left out when the node has exactly one partner.
    #[arg(long)]
    to: Option<EndpointId>,
    /// Channel.
    #[arg(long, default_value = "main")]
    channel: Channel,
    /// routine, priority, immediate or flash.
    #[arg(long, default_value = "routine")]
    precedence: Precedence,
    /// Block until this ack level is reached, printing each level as it is reached. Stopping
    /// the wait (Ctrl-C, --timeout) leaves the message queued: it will still be delivered.
    #[arg(long, value_enum)]
    wait: Option<WaitLevel>,
    /// With --wait: give up waiting after SECS seconds (exit 1; the message stays queued).
    #[arg(long, value_name = "SECS", requires = "wait")]
    timeout: Option<f64>,
    /// The text (not empty; at most 256 KiB, 262144 bytes, of UTF-8), or - to read it from
    /// stdin (one trailing newline is dropped).
    text: String,
}

#[derive(Debug, Args)]
pub(crate) struct InboxArgs {
    /// Node config (TOML).
    #[arg(long, env = "HOTLINE_CONFIG")]
    config: PathBuf,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
    /// Keep printing new messages as they arrive.
    #[arg(long)]
    follow: bool,
    /// Only messages not yet acknowledged.
    #[arg(long)]
    unacked: bool,
    /// Only messages on this channel.
    #[arg(long, value_name = "NAME")]
    channel: Option<Channel>,
}

#[derive(Debug, Args)]
pub(crate) struct AckArgs {
    /// Node config (TOML).
    #[arg(long, env = "HOTLINE_CONFIG")]
    config: PathBuf,
    /// Message id, as shown by `inbox`.
    id: MessageId,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn send(args: SendArgs) -> Result<()> {
    let SendArgs {
        config,
        to,
        channel,
        precedence,
        wait,
        timeout,
        text,
    } = args;
    let body = if text == "-" {
        read_stdin_body()?
    } else {
        text
    };
    if body.is_empty() {
        bail!("the message is empty: give the text as an argument, or - to read it from stdin");
    }
    if let Some(t) = timeout {
        if !(t > 0.0 && t.is_finite()) {
            bail!("--timeout must be a positive number of seconds");
        }
    }
    let mut c = ControlClient::connect(&control::socket_for(&config)?).await?;
    let tag = c
        .request(Request::Send {
            to,
            channel: Some(channel),
            precedence: Some(precedence),
            body,
            wait,
            timeout_ms: timeout.map(|t| (t * 1000.0) as u64),
        })
        .await?;
    let mut events = c.events_for(tag);
    while let Some(event) = events.next().await? {
        match event {
            Event::Stored { id, .. } => {
                say!("{id}");
                if let Some(level) = wait {
                    eprintln!("{}", waiting_line(&id, level, timeout));
                }
            }
            Event::Level { level, at, .. } => say!("{level} at {at}"),
            _ => {}
        }
    }
    Ok(())
}

/// What `send --wait` tells the operator on stderr once the message is stored.
fn waiting_line(id: &str, level: WaitLevel, timeout: Option<f64>) -> String {
    let level = level
        .to_possible_value()
        .map_or_else(String::new, |v| v.get_name().to_owned());
    let limit = timeout.map_or_else(
        || "no --timeout, so until it is reached".to_owned(),
        |t| format!("for at most {t} s"),
    );
    format!(
        "waiting for {id} to be {level} ({limit}); stopping the wait (Ctrl-C) leaves the message queued and it will still be delivered"
    )
}

/// The message on stdin, at most [`hotline_proto::wire::MAX_BODY_LEN`] bytes, without its one
/// trailing newline (`echo text |` adds one; only one is dropped).
fn read_stdin_body() -> Result<String> {
    // Read one byte past the limit (plus the newline that is dropped), so an oversized message
    // is refused here without reading all of it into memory.
    // The length is checked on the bytes, before decoding: the cut at the limit may fall inside
    // a character, which must not turn "too long" into "not UTF-8".
    let limit = hotline_proto::wire::MAX_BODY_LEN;
    let mut bytes = Vec::new();
    std::io::stdin()
        .take(limit as u64 + 3)
        .read_to_end(&mut bytes)
        .context("reading the message from stdin")?;
    let trailing = match bytes.as_slice() {
        [.., b'\r', b'\n'] => 2,
        [.., b'\n'] => 1,
        _ => 0,
    };
    if bytes.len() - trailing > limit {
        bail!("the message on stdin is longer than the {limit}-byte limit");
    }
    let text = String::from_utf8(bytes).context("the message on stdin is not UTF-8 text")?;
    Ok(drop_one_trailing_newline(text))
}

/// `text` without one trailing `\n` (or `\r\n`).
fn drop_one_trailing_newline(mut text: String) -> String {
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    text
}

pub(crate) async fn inbox(args: InboxArgs) -> Result<()> {
    let InboxArgs {
        config,
        json,
        follow,
        unacked,
        channel,
    } = args;
    let mut c = ControlClient::connect(&control::socket_for(&config)?).await?;
    let tag = c
        .request(Request::Inbox {
            follow,
            unacked,
            channel,
            updates: false,
        })
        .await?;
    let mut events = c.events_for(tag);
    while let Some(event) = events.next().await? {
        let Event::Message(m) = event else { continue };
        if json {
            say!("{}", serde_json::to_string(&m)?);
        } else {
            say!("{}", view::inbox_line(&m));
        }
    }
    Ok(())
}

pub(crate) async fn ack(args: AckArgs) -> Result<()> {
    let AckArgs { config, id, json } = args;
    let mut c = ControlClient::connect(&control::socket_for(&config)?).await?;
    c.call(Request::Ack { id: id.clone() }).await?;
    if json {
        say!("{}", serde_json::json!({ "id": id, "acknowledged": true }));
    } else {
        say!("acknowledged {id}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_one_trailing_newline_is_dropped() {
        assert_eq!(drop_one_trailing_newline("a\n".into()), "a");
        assert_eq!(drop_one_trailing_newline("a\r\n".into()), "a");
        assert_eq!(drop_one_trailing_newline("a\n\n".into()), "a\n");
        assert_eq!(drop_one_trailing_newline("a\nb".into()), "a\nb");
        assert_eq!(drop_one_trailing_newline("\n".into()), "");
    }
}
