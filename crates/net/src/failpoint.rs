//! Named crash points for recovery tests, shared by the relay and the node.
//!
//! `HOTLINE_FAILPOINT=<name>` makes the process abort at that point, as a power cut or
//! `kill -9` would, with one line on stderr first; `HOTLINE_FAILPOINT_SKIP=<n>` lets the first
//! `n` hits pass and fires on hit `n + 1`. Both are read once, at the first hit. Unset (always,
//! outside tests), a hit costs one load of a `OnceLock`, so the points stay compiled into
//! release builds and the tests exercise the binaries that ship. Each binary names its own
//! points (`hotline_relay::failpoint`, `hotline_client::failpoint`).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable naming the armed failpoint.
pub const ENV: &str = "HOTLINE_FAILPOINT";
/// The environment variable with the number of hits to let pass first.
pub const ENV_SKIP: &str = "HOTLINE_FAILPOINT_SKIP";

#[derive(Debug)]
struct Armed {
    name: String,
    skip: u64,
    hits: AtomicU64,
}

fn armed_point() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let name = std::env::var(ENV).ok().filter(|n| !n.is_empty())?;
            let skip = std::env::var(ENV_SKIP)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            Some(Armed {
                name,
                skip,
                hits: AtomicU64::new(0),
            })
        })
        .as_ref()
}

/// The armed failpoint and its skip count, if the environment arms one (for a startup warning).
pub fn armed() -> Option<(&'static str, u64)> {
    armed_point().map(|a| (a.name.as_str(), a.skip))
}

/// Aborts the process if `name` is armed and its skip count is used up.
pub fn hit(name: &str) {
    let Some(armed) = armed_point() else {
        return;
    };
    if armed.name != name {
        return;
    }
    let n = armed.hits.fetch_add(1, Ordering::SeqCst);
    if n < armed.skip {
        return;
    }
    eprintln!("failpoint {name} hit (hit {}); aborting", n + 1);
    std::process::abort();
}
