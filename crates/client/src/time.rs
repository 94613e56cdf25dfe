//! Wall-clock time for the node shell, and its one text form.
//!
//! The engine never reads the clock; the shell stamps every input with [`wall_now`]. Times shown
//! to operators (CLI, JSON, audit export) go through [`format_time`] only.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use hotline_proto::types::Time;

pub use hotline_net::clock::wall_now;

/// RFC 3339 with microseconds. Times RFC 3339 cannot write (after the year 9999, which a
/// hostile partner's clock may claim) are shown as a count, never a panic.
pub fn format_time(t: Time) -> String {
    let mut out = String::new();
    let written = SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_micros(t.0))
        .is_some_and(|st| write!(out, "{}", humantime::format_rfc3339_micros(st)).is_ok());
    if !written {
        out.clear();
        let _ = write!(out, "{}us after the Unix epoch", t.0);
    }
    out
}

/// Reads back a time [`format_time`] wrote (any RFC 3339 UTC time); `None` for anything else.
pub fn parse_time(text: &str) -> Option<Time> {
    let st = humantime::parse_rfc3339_weak(text).ok()?;
    st.duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .map(Time::from_unix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339_and_survives_far_future_times() {
        assert_eq!(format_time(Time(1_500_000)), "1970-01-01T00:00:01.500000Z");
        assert_eq!(
            format_time(Time(u64::MAX)),
            format!("{}us after the Unix epoch", u64::MAX)
        );
    }

    #[test]
    fn parses_what_it_formats() {
        let t = Time(1_764_270_000_123_456);
        assert_eq!(parse_time(&format_time(t)), Some(t));
        assert_eq!(parse_time("yesterday"), None);
    }
}
