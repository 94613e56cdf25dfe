//! Resource measurements of a run, read from `/proc` and the relay's metrics endpoint: CPU
//! seconds and resident memory (current and peak) per process, the relay's queued frames per
//! stream, and its count of frames refused for arriving on the wrong stream.
//!
//! It never fails a run: a value that cannot be read is `None` and is reported as `-`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// CPU seconds (user + system) of the processes of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct CpuTimes {
    /// The relay, if its pid is known.
    pub relay_s: Option<f64>,
    /// Node processes, if any.
    pub nodes_s: Option<f64>,
    /// The bench (with in-process nodes, those too).
    pub bench_s: Option<f64>,
}

impl CpuTimes {
    /// Cores used between `earlier` and `self`, over `wall` seconds.
    pub fn cores_since(&self, earlier: &Self, wall: f64) -> Self {
        let d = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if wall > 0.0 => Some(((a - b) / wall * 100.0).round() / 100.0),
            _ => None,
        };
        Self {
            relay_s: d(self.relay_s, earlier.relay_s),
            nodes_s: d(self.nodes_s, earlier.nodes_s),
            bench_s: d(self.bench_s, earlier.bench_s),
        }
    }
}

/// User + system CPU seconds of a process, from `/proc/<pid>/stat`.
pub fn cpu_of(pid: u32) -> Option<f64> {
    parse_cpu(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn parse_cpu(stat: &str) -> Option<f64> {
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15,
    // in USER_HZ (100 per second on Linux, whatever the kernel's HZ).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// `VmRSS` of a process, in bytes.
pub fn rss_of(pid: u32) -> Option<u64> {
    status_kb(pid, "VmRSS:")
}

/// `VmHWM` (peak resident memory) of a process, in bytes.
pub fn hwm_of(pid: u32) -> Option<u64> {
    status_kb(pid, "VmHWM:")
}

fn status_kb(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_kb(&status, key)
}

/// The `key` line of `/proc/<pid>/status` (a value in kB), in bytes.
fn parse_status_kb(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line
        .trim_start_matches(key)
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// The queued frames per stream of the relay whose metrics are at `addr`.
pub async fn relay_queues(addr: SocketAddr) -> Option<BTreeMap<String, u64>> {
    let text = scrape(addr).await.ok()?;
    Some(parse_by_stream(&text, "hotline_relay_queued_frames"))
}

/// The frames the relay whose metrics are at `addr` refused for arriving on a stream other than
/// their own, per arrival stream (`hotline_relay_wrong_stream_frames_total`).
pub async fn relay_wrong_stream_frames(addr: SocketAddr) -> Option<BTreeMap<String, u64>> {
    let text = scrape(addr).await.ok()?;
    Some(parse_by_stream(
        &text,
        "hotline_relay_wrong_stream_frames_total",
    ))
}

async fn scrape(addr: SocketAddr) -> Result<String> {
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await?;
        let mut text = String::new();
        s.read_to_string(&mut text).await?;
        anyhow::Ok(text)
    };
    tokio::time::timeout(Duration::from_secs(2), fetch)
        .await
        .context("metrics scrape timed out")?
}

/// `METRIC{stream="flash"} 12` lines → `{"flash": 12}`.
fn parse_by_stream(text: &str, metric: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line
            .strip_prefix(metric)
            .and_then(|rest| rest.strip_prefix('{'))
        else {
            continue;
        };
        let Some((labels, value)) = rest.split_once('}') else {
            continue;
        };
        let Some(stream) = labels
            .split(',')
            .find_map(|l| l.strip_prefix("stream=\""))
            .map(|s| s.trim_end_matches('"'))
        else {
            continue;
        };
        if let Ok(v) = value.trim().parse::<f64>() {
            out.insert(stream.to_owned(), v.max(0.0) as u64);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\thotline-relay\nVmPeak:\t  9000 kB\nVmHWM:\t   20000 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(parse_status_kb(status, "VmRSS:"), Some(12345 * 1024));
        assert_eq!(parse_status_kb(status, "VmHWM:"), Some(20000 * 1024));
        assert_eq!(parse_status_kb("Name: x\n", "VmRSS:"), None);
        assert!(rss_of(std::process::id()).is_some_and(|b| b > 0));
        assert!(hwm_of(std::process::id()).is_some_and(|b| b > 0));
    }

    #[test]
    fn cpu_seconds_are_read_from_proc_stat() {
        let stat = "4242 (hotline relay) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0";
        assert_eq!(parse_cpu(stat), Some(3.0));
        assert!(cpu_of(std::process::id()).is_some());
        let a = CpuTimes {
            relay_s: Some(1.0),
            nodes_s: None,
            bench_s: Some(2.0),
        };
        let b = CpuTimes {
            relay_s: Some(3.0),
            nodes_s: None,
            bench_s: Some(2.5),
        };
        let c = b.cores_since(&a, 2.0);
        assert_eq!(c.relay_s, Some(1.0));
        assert_eq!(c.bench_s, Some(0.25));
        assert_eq!(c.nodes_s, None);
    }

    #[test]
    fn queued_frames_are_read_from_openmetrics() {
        let text = "# HELP hotline_relay_queued_frames Frames queued\n\
                    hotline_relay_queued_frames{stream=\"flash\"} 3\n\
                    hotline_relay_queued_frames{stream=\"routine\"} 1200\n\
                    hotline_relay_queued_bytes{stream=\"routine\"} 99\n";
        let q = parse_by_stream(text, "hotline_relay_queued_frames");
        assert_eq!(q.len(), 2);
        assert_eq!(q["routine"], 1200);
        assert_eq!(q["flash"], 3);
    }

    #[test]
    fn wrong_stream_frames_are_read_from_openmetrics() {
        let text = "# TYPE hotline_relay_wrong_stream_frames counter\n\
                    hotline_relay_wrong_stream_frames_total{stream=\"control\"} 7\n\
                    hotline_relay_wrong_stream_frames_total{stream=\"flash\"} 120\n\
                    hotline_relay_refusals_total{code=\"malformed\"} 127\n";
        let w = parse_by_stream(text, "hotline_relay_wrong_stream_frames_total");
        assert_eq!(w.len(), 2);
        assert_eq!(w["flash"], 120);
        assert_eq!(w["control"], 7);
    }
}
