//! The store's reader thread: reads a queued envelope that left memory back for the writer
//! that waits for it.
//!
//! The router keeps at most `max_in_memory_bytes` of queued envelope frames in memory
//! ([`Limits::max_in_memory_bytes`](crate::Limits::max_in_memory_bytes)); the others are only
//! in the store. When a lane writer's next envelope is one of those, the router emits
//! [`Output::Load`](crate::router::Output::Load); [`Shared`] sends it here, and this thread
//! reads the row (a redb read transaction, which never waits for the writer thread) and hands
//! the frame to [`Router::handle_loaded`](crate::router::Router::handle_loaded), which wakes the
//! writer. redb is blocking, so this is a thread rather than a task.
//!
//! Main types: [`Load`] and [`Loader`].
//!
//! Invariant: every request is answered (with the frame, or `None` when the row is gone or
//! cannot be read, which is logged), so no writer waits forever; the thread ends when
//! [`Shared`] (which holds the sending side) is dropped or when [`Loader::join`] stops it.

use std::sync::{Weak, mpsc};

use hotline_proto::{EndpointId, Precedence};
use tracing::error;

use super::SpawnError;
use super::shared::Shared;
use crate::store::StoreReader;

/// One frame to read back: what [`Output::Load`](crate::router::Output::Load) asked for.
#[derive(Debug)]
pub(super) struct Load {
    pub(super) destination: EndpointId,
    pub(super) lane: Precedence,
    pub(super) order: u64,
}

/// The reader thread, from the server's side.
#[derive(Debug)]
pub(super) struct Loader {
    thread: std::thread::JoinHandle<()>,
    /// Set by [`Loader::join`]: the thread ends even while [`Shared`] lives on.
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// How often the thread, idle, looks at its stop flag.
const STOP_POLL: std::time::Duration = std::time::Duration::from_millis(50);

impl Loader {
    /// Starts the thread that answers `loads` from `reader`.
    pub(super) fn spawn(
        reader: StoreReader,
        loads: mpsc::Receiver<Load>,
        shared: Weak<Shared>,
    ) -> Result<Self, SpawnError> {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("relay-loader".into())
            .spawn(move || {
                loop {
                    if stopped.load(std::sync::atomic::Ordering::Relaxed) {
                        return;
                    }
                    let load = match loads.recv_timeout(STOP_POLL) {
                        Ok(load) => load,
                        Err(mpsc::RecvTimeoutError::Timeout) => continue,
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    };
                    let bytes = reader.envelope(load.order).unwrap_or_else(|e| {
                        error!(
                            error = %e,
                            order = load.order,
                            "reading a queued envelope back from the store failed"
                        );
                        None
                    });
                    let Some(shared) = shared.upgrade() else {
                        return;
                    };
                    shared.metrics.loaded();
                    shared.run(|r| {
                        r.handle_loaded(&load.destination, load.lane, load.order, bytes);
                    });
                }
            })
            .map_err(SpawnError::LoaderThread)?;
        Ok(Self { thread, stop })
    }

    /// Stops the thread and waits, at most `grace`, for it to end: it holds the store open, so
    /// a relay restarted in the same process after
    /// [`Server::shutdown`](super::Server::shutdown) would otherwise find the store locked.
    pub(super) async fn join(self, grace: std::time::Duration) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let thread = self.thread;
        let _ =
            tokio::time::timeout(grace, tokio::task::spawn_blocking(move || thread.join())).await;
    }
}
