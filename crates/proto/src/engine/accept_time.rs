//! How long the relay takes to accept what the outbox frames, and so how soon a retransmission
//! may fire (issue 12: a saturated relay was being sent every waiting message again).

use std::time::Duration;

/// How long the relay takes to accept what we frame, smoothed as TCP smooths its round-trip
/// time (RFC 6298: 7/8 old + 1/8 new). A retransmission on the same connection is only a
/// guard (QUIC already delivers the frame); firing it sooner than the relay answers under load
/// only doubles the load: a saturating flood once sent each waiting message four more times
/// and delivered throughput fell from 20,000 to 3,200 msg/s (issue 12). So the first timer is
/// at least four times the smoothed accept time.
#[derive(Debug, Default)]
pub(super) struct AcceptTime {
    smoothed: Option<Duration>,
}

impl AcceptTime {
    pub(super) fn sample(&mut self, took: Duration) {
        self.smoothed = Some(match self.smoothed {
            None => took,
            Some(s) => (s * 7 + took) / 8,
        });
    }

    /// The shortest first retransmission timer now (zero until something was accepted; the
    /// configured initial timer and maximum still apply).
    pub(super) fn retransmit_floor(&self) -> Duration {
        self.smoothed.map_or(Duration::ZERO, |s| s * 4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_follows_the_smoothed_accept_time() {
        let mut t = AcceptTime::default();
        assert_eq!(t.retransmit_floor(), Duration::ZERO);
        t.sample(Duration::from_millis(8));
        assert_eq!(t.retransmit_floor(), Duration::from_millis(32));
        t.sample(Duration::from_millis(16));
        // 7/8 of 8 ms + 1/8 of 16 ms = 9 ms.
        assert_eq!(t.retransmit_floor(), Duration::from_millis(36));
    }
}
