//! Watching a phase while it runs: the once-a-second progress line and time-series point, the
//! soak snapshots, and queue depths sampled from the relay's metrics and the first sender.
//!
//! Progress goes to stderr; it never changes what is sent.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;

use super::{Ctx, Interval, Point, Queues, lock};
use crate::cluster::{self, Cluster};
use crate::stats::{self, Group, Level, Summary};

pub(super) async fn next_snapshot(s: &mut Option<tokio::time::Interval>) {
    match s {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// The progress line, and one point of the time series.
pub(super) fn tick(
    ctx: &Ctx,
    name: &str,
    series: &mut Vec<Point>,
    last: &mut (u64, u64),
    pairs: usize,
) {
    let t = ctx.clock.elapsed();
    let mut rec = lock(&ctx.rec);
    let point = Point {
        t_s: t.as_secs_f64(),
        sent: rec.counts.sent - last.0,
        delivered: rec.counts.delivered - last.1,
        in_flight: rec.counts.sent - rec.done,
        round_trip: Summary::of(&rec.tick),
        flash_round_trip: Summary::of(&rec.tick_flash),
    };
    *last = (rec.counts.sent, rec.counts.delivered);
    rec.tick.reset();
    rec.tick_flash.reset();
    let so_far = rec.stats.summary(Level::RoundTrip, Group::All);
    let p99 = if so_far.count > 0 {
        format!("{} ms", stats::ms(so_far.p99))
    } else {
        "-".into()
    };
    eprintln!(
        "[{name} {:>6.1}s] {} pair(s)  sent {} ({}/s)  delivered {} ({}/s)  in flight {}  refused {}  failed {}  round-trip p99 so far {p99}",
        t.as_secs_f64(),
        pairs,
        rec.counts.sent,
        point.sent,
        rec.counts.delivered,
        point.delivered,
        point.in_flight,
        rec.counts.refused,
        rec.counts.failed,
    );
    series.push(point);
}

pub(super) fn snapshot(ctx: &Ctx, cluster: &Cluster, t: Duration) -> Interval {
    let mut rec = lock(&ctx.rec);
    let round_trip = Summary::of(&rec.interval);
    rec.interval.reset();
    let delivered_total = rec.counts.delivered;
    drop(rec);
    let i = Interval {
        t_s: t.as_secs_f64(),
        round_trip,
        delivered_total,
        relay_rss_bytes: cluster.relay_rss(),
        nodes_rss_bytes: cluster.nodes_rss(),
    };
    eprintln!(
        "[interval {:>6.1}s] round trip p50 {} ms  p99 {} ms  max {} ms  ({} samples)  relay RSS {}  nodes RSS {}",
        i.t_s,
        stats::ms(i.round_trip.p50),
        stats::ms(i.round_trip.p99),
        stats::ms(i.round_trip.max),
        i.round_trip.count,
        i.relay_rss_bytes.map_or("-".into(), crate::report::mib),
        i.nodes_rss_bytes.map_or("-".into(), crate::report::mib),
    );
    i
}

pub(super) async fn sample_queues(
    metrics: Option<std::net::SocketAddr>,
    sender: PathBuf,
    q: Arc<Mutex<Queues>>,
) -> Result<()> {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        every.tick().await;
        if let Some(relay) = match metrics {
            Some(addr) => cluster::relay_queues(addr).await,
            None => None,
        } {
            let mut q = lock(&q);
            for (k, v) in relay {
                let e = q.relay_queued_frames_max.entry(k).or_default();
                *e = (*e).max(v);
            }
        }
        let asked = std::time::Instant::now();
        let status = tokio::time::timeout(Duration::from_secs(2), cluster::status(&sender)).await;
        let took = asked.elapsed().as_secs_f64() * 1000.0;
        let mut q = lock(&q);
        q.sender_status_ms_max = q.sender_status_ms_max.max((took * 10.0).round() / 10.0);
        match status {
            Ok(Ok(s)) => {
                for (lane, l) in s.lanes {
                    let e = q.sender_unaccepted_max.entry(lane.clone()).or_default();
                    *e = (*e).max(l.unaccepted as u64);
                    let e = q.sender_undelivered_max.entry(lane).or_default();
                    *e = (*e).max(l.undelivered as u64);
                }
            }
            Ok(Err(_)) => {}
            Err(_) => q.sender_status_timeouts += 1,
        }
    }
}
