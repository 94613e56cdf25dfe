//! `hotline send`, `inbox` and `ack`: the operator's messages.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use hotline_client::control::{self, ControlClient, Event, Request, WaitLevel};
use hotline_client::view;
use hotline_proto::{Channel, EndpointId, MessageId, Precedence};

#[derive(Debug, Args)]
pub(crate) struct SendArgs {
    /// Node config (TOML).
    #[arg(long)]
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
    /// Block until this ack level is reached.
    #[arg(long, value_enum)]
    wait: Option<WaitLevel>,
    /// Give up waiting after SECS seconds (exit 1).
    #[arg(long, value_name = "SECS")]
    timeout: Option<f64>,
    /// The text, or - to read it from stdin.
    text: String,
}

#[derive(Debug, Args)]
pub(crate) struct InboxArgs {
    /// Node config (TOML).
    #[arg(long)]
    config: PathBuf,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
    /// Keep printing new messages as they arrive.
    #[arg(long)]
    follow: bool,
}

#[derive(Debug, Args)]
pub(crate) struct AckArgs {
    /// Node config (TOML).
    #[arg(long)]
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
        // Read one byte past the limit, so an oversized message is refused here without
        // reading all of it into memory.
        let limit = hotline_proto::wire::MAX_BODY_LEN;
        let mut s = String::new();
        std::io::stdin()
            .take(limit as u64 + 1)
            .read_to_string(&mut s)
            .context("reading the message from stdin")?;
        if s.len() > limit {
            bail!("the message on stdin is longer than the {limit}-byte limit");
        }
        s
    } else {
        text
    };
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
            Event::Stored { id, .. } => println!("{id}"),
            Event::Level { level, at, .. } => println!("{level} at {at}"),
            _ => {}
        }
    }
    Ok(())
}

pub(crate) async fn inbox(args: InboxArgs) -> Result<()> {
    let InboxArgs {
        config,
        json,
        follow,
    } = args;
    let mut c = ControlClient::connect(&control::socket_for(&config)?).await?;
    let tag = c.request(Request::Inbox { follow }).await?;
    let mut events = c.events_for(tag);
    while let Some(event) = events.next().await? {
        let Event::Message(m) = event else { continue };
        if json {
            println!("{}", serde_json::to_string(&m)?);
        } else {
            println!("{}", view::inbox_line(&m));
        }
    }
    Ok(())
}

pub(crate) async fn ack(args: AckArgs) -> Result<()> {
    let AckArgs { config, id, json } = args;
    let mut c = ControlClient::connect(&control::socket_for(&config)?).await?;
    c.call(Request::Ack { id: id.clone() }).await?;
    if json {
        println!("{}", serde_json::json!({ "id": id, "acknowledged": true }));
    } else {
        println!("acknowledged {id}");
    }
    Ok(())
}
