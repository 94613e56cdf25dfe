//! The shells' wall clock: the one place the relay and the node read the time of day.
//!
//! The engines never read a clock; their shells stamp every input with [`wall_now`], and
//! deadlines and time-to-live are wall-clock times so they survive restarts.

use std::time::SystemTime;

use hotline_proto::Time;

/// Wall-clock now as protocol time; a clock set before 1970 reads as the epoch.
pub fn wall_now() -> Time {
    Time::from_unix(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default(),
    )
}
