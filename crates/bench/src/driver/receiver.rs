//! The receiving side of a pair: the **follower** streams the receiver's inbox
//! (`inbox --follow`) in delivery order and, with auto-ack, hands each id to the **acker**,
//! which acknowledges it on its own connection.
//!
//! Only messages tagged with this phase's run tag are recorded; anything else in the inbox is
//! ignored.

use std::sync::{Arc, Mutex};

use anyhow::Result;
use hotline_client::control::{ControlReader, ControlWriter, Event, Request};
use hotline_proto::{MessageId, Precedence};
use tokio::sync::mpsc;

use super::{Ctx, PairState, hops, lock, parse_body};
use crate::check;
use crate::schedule::latency_us;

pub(super) async fn follow_loop(
    ctx: Arc<Ctx>,
    pair: usize,
    mut w: ControlWriter,
    mut r: ControlReader,
    state: Arc<Mutex<PairState>>,
    acks: Option<mpsc::UnboundedSender<MessageId>>,
) -> Result<()> {
    w.push(&Request::Inbox {
        follow: true,
        unacked: false,
        channel: None,
        updates: false,
    })?;
    w.flush().await?;
    while let Some(line) = r.next().await? {
        let Event::Message(m) = line.event else {
            continue;
        };
        let Some(index) = parse_body(&m.body, &ctx.run, pair) else {
            continue;
        };
        let Ok(precedence) = m.precedence.parse::<Precedence>() else {
            continue;
        };
        {
            let mut s = lock(&state);
            s.received.push(check::Msg { index, precedence });
            if let (Some(durable), Some(msg)) = (m.durable_us, s.msgs.get_mut(index as usize)) {
                let at = ctx.clock.from_unix_us(durable);
                msg.stamps.set(hops::DURABLE, latency_us(msg.intended, at));
            }
        }
        if let Some(tx) = &acks {
            if let Ok(id) = m.id.parse() {
                let _ = tx.send(id);
            }
        }
    }
    Ok(())
}

pub(super) async fn ack_loop(
    mut w: ControlWriter,
    mut ids: mpsc::UnboundedReceiver<MessageId>,
) -> Result<()> {
    while let Some(id) = ids.recv().await {
        w.push(&Request::Ack { id })?;
        while let Ok(id) = ids.try_recv() {
            w.push(&Request::Ack { id })?;
        }
        w.flush().await?;
    }
    Ok(())
}

pub(super) async fn drain_replies(mut r: ControlReader) -> Result<()> {
    while r.next().await?.is_some() {}
    Ok(())
}
