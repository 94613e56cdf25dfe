//! Named failpoints for crash tests.
//!
//! `HOTLINE_FAILPOINT=<name>` makes the process abort (no unwinding, no flushing: like a
//! power cut after the last fsync) the first time it reaches that point;
//! `HOTLINE_FAILPOINT_SKIP=<n>` lets the first `n` hits pass. Unset, a failpoint costs one
//! relaxed load.
//!
//! Node failpoints: `after-outbox-append`, `after-inbox-commit-before-receipt`,
//! `after-ack-commit`, `mid-group-commit`.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

struct Armed {
    name: String,
    skip: u64,
    hits: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let name = std::env::var("HOTLINE_FAILPOINT")
                .ok()
                .filter(|s| !s.is_empty())?;
            let skip = std::env::var("HOTLINE_FAILPOINT_SKIP")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            Some(Armed {
                name,
                skip,
                hits: AtomicU64::new(0),
            })
        })
        .as_ref()
}

/// Aborts the process if `name` is the armed failpoint (after its skip count).
pub fn hit(name: &str) {
    let Some(a) = armed() else { return };
    if a.name != name {
        return;
    }
    if a.hits.fetch_add(1, Ordering::Relaxed) >= a.skip {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}
