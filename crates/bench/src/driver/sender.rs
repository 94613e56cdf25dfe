//! The sending side of a pair: the **writer** submits `send` requests at their intended times
//! (open loop) or whenever the window has room (closed loop); the **reader** on the same
//! connection turns the node's answers into flags, counts and latencies.
//!
//! Invariant: a message's latency is taken from its intended send time, never from when the
//! writer got round to it, so a slow bench cannot hide a slow system.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, bail};
use hotline_client::control::{ControlReader, ControlWriter, Event, Request};
use hotline_proto::Precedence;
use tokio::sync::Semaphore;

use super::{
    ACCEPTED, ACKED, Ctx, DELIVERED, DONE, MsgState, PairState, REFUSED, STORED, body, hops, lock,
};
use crate::schedule::{Mix, Schedule, latency_us};
use crate::stats::{self, Level};

pub(super) type ClosedLoop = (Arc<Semaphore>, Mix, Duration, Duration);

/// Which pair a sending connection belongs to, and its number among the pair's connections.
#[derive(Clone, Copy, Debug)]
pub(super) struct SendingConn {
    pub(super) pair: usize,
    pub(super) conn: usize,
}

pub(super) async fn write_loop(
    ctx: Arc<Ctx>,
    SendingConn { pair, conn }: SendingConn,
    mut w: ControlWriter,
    state: Arc<Mutex<PairState>>,
    mut sched: Schedule,
    closed: Option<ClosedLoop>,
    warmup_end: Duration,
) -> Result<()> {
    let mut mix = closed.as_ref().map(|c| c.1.iter());
    loop {
        let mut batch: Vec<(Duration, Precedence)> = Vec::new();
        if let (Some((permits, _, start, end)), Some(mix)) = (&closed, &mut mix) {
            ctx.ticker.sleep_until(ctx.clock.at(*start)).await;
            let left = end.saturating_sub(ctx.clock.elapsed());
            if left.is_zero() {
                break;
            }
            let Ok(Ok(p)) = tokio::time::timeout(left, permits.acquire()).await else {
                break;
            };
            p.forget();
            let mut n = 1;
            while n < 256 {
                match permits.try_acquire() {
                    Ok(p) => p.forget(),
                    Err(_) => break,
                }
                n += 1;
            }
            let now = ctx.clock.elapsed();
            for _ in 0..n {
                batch.push((now, mix.next().unwrap_or(Precedence::Routine)));
            }
        } else {
            let now = ctx.clock.elapsed();
            while batch.len() < 1024 {
                let Some(p) = sched.next_due(now) else { break };
                batch.push((p.intended, p.precedence));
            }
            if batch.is_empty() {
                match sched.next_wakeup() {
                    None => break,
                    Some(t) => {
                        ctx.ticker.sleep_until(ctx.clock.at(t)).await;
                        continue;
                    }
                }
            }
        }
        {
            let mut s = lock(&state);
            for &(intended, precedence) in &batch {
                let index = s.msgs.len() as u64;
                let conn_state = &mut s.conns[conn];
                conn_state.msgs.push(index as usize);
                let expected_tag = conn_state.msgs.len() as u64;
                let tag = w.push(&Request::Send {
                    to: None,
                    channel: None,
                    precedence: Some(precedence),
                    body: body(&ctx.run, pair, index, ctx.size),
                    wait: Some(ctx.wait),
                    timeout_ms: Some(ctx.timeout_ms),
                })?;
                debug_assert_eq!(tag, expected_tag);
                s.msgs.push(MsgState {
                    intended,
                    precedence,
                    measured: intended >= warmup_end,
                    flags: 0,
                    stamps: hops::Stamps::default(),
                });
            }
        }
        lock(&ctx.rec).counts.sent += batch.len() as u64;
        w.flush().await?;
    }
    lock(&state).conns[conn].writer_done = true;
    Ok(())
}

pub(super) async fn read_loop(
    ctx: Arc<Ctx>,
    conn: usize,
    mut r: ControlReader,
    state: Arc<Mutex<PairState>>,
    permits: Option<Arc<Semaphore>>,
) -> Result<()> {
    while let Some(line) = r.next().await? {
        let now = ctx.clock.elapsed();
        let mut s = lock(&state);
        let i = line.tag.wrapping_sub(1) as usize;
        let Some(&i) = s.conns[conn].msgs.get(i) else {
            continue;
        };
        let Some(m) = s.msgs.get_mut(i) else {
            continue;
        };
        let before = m.flags;
        let (intended, precedence, measured) = (m.intended, m.precedence, m.measured);
        let mut samples: [Option<(Level, u64)>; 2] = [None, None];
        let mut error = None;
        match line.event {
            Event::Stored { seen_us, .. } => {
                m.flags |= STORED;
                // `at` is the submission time; `seen_us` when the sender knew it durable.
                if let Some(seen) = seen_us {
                    let at = ctx.clock.from_unix_us(seen);
                    m.stamps.set(hops::STORED, latency_us(intended, at));
                }
            }
            Event::Level {
                level,
                at_us,
                seen_us,
                ..
            } => {
                if level.starts_with("accepted") {
                    if before & ACCEPTED == 0 {
                        m.flags |= ACCEPTED;
                        let at = ctx.clock.from_unix_us(at_us);
                        samples[0] = Some((Level::Accepted, latency_us(intended, at)));
                    }
                } else if level == "delivered" {
                    if before & DELIVERED == 0 {
                        m.flags |= DELIVERED;
                        let at = ctx.clock.from_unix_us(at_us);
                        samples[0] = Some((Level::Delivered, latency_us(intended, at)));
                        samples[1] = Some((Level::RoundTrip, latency_us(intended, now)));
                        m.stamps.set(hops::AT_RECEIVER, latency_us(intended, at));
                        if let Some(seen) = seen_us {
                            let seen = ctx.clock.from_unix_us(seen);
                            m.stamps.set(hops::SEEN, latency_us(intended, seen));
                        }
                        m.stamps.set(hops::BENCH, latency_us(intended, now));
                    }
                } else if level == "acknowledged" {
                    if before & ACKED == 0 {
                        m.flags |= ACKED;
                        samples[0] = Some((Level::Acknowledged, latency_us(intended, now)));
                    }
                } else if level.starts_with("refused") {
                    m.flags |= REFUSED;
                }
            }
            Event::Done { ok, error: e } if before & DONE == 0 => {
                m.flags |= DONE;
                if !ok {
                    error = Some(e.unwrap_or_else(|| "request failed".into()));
                    if before & STORED == 0 {
                        // Refused at submission: never in the outbox.
                        m.flags |= REFUSED;
                    }
                }
            }
            _ => {}
        }
        let after = m.flags;
        let newly = after & !before;
        if newly & STORED != 0 {
            s.stored += 1;
        }
        if newly & DONE != 0 {
            s.done += 1;
            s.conns[conn].done += 1;
        }
        drop(s);
        if newly == 0 {
            continue;
        }
        let mut rec = lock(&ctx.rec);
        let c = &mut rec.counts;
        for (bit, count) in [
            (STORED, &mut c.stored),
            (ACCEPTED, &mut c.accepted),
            (DELIVERED, &mut c.delivered),
            (ACKED, &mut c.acknowledged),
            (REFUSED, &mut c.refused),
        ] {
            if newly & bit != 0 {
                *count += 1;
            }
        }
        if newly & DONE != 0 {
            rec.done += 1;
            if error.is_some() {
                rec.counts.failed += 1;
            }
        }
        for (level, us) in samples.into_iter().flatten() {
            if level == Level::RoundTrip {
                stats::record(&mut rec.tick, us);
                stats::record(&mut rec.interval, us);
                if precedence == Precedence::Flash {
                    stats::record(&mut rec.tick_flash, us);
                }
            }
            if measured {
                rec.stats.record(level, precedence, us);
            }
            if level == Level::RoundTrip && now >= rec.window.0 && now < rec.window.1 {
                rec.window_delivered[precedence.index()] += 1;
            }
        }
        drop(rec);
        if newly & DONE != 0 {
            if let Some(p) = &permits {
                p.add_permits(1);
            }
            if let Some(e) = error {
                lock(&ctx.first_error).get_or_insert(e);
            }
        }
    }
    if !lock(&state).conns[conn].finished() {
        bail!("a sender node closed its control connection mid-run");
    }
    Ok(())
}
