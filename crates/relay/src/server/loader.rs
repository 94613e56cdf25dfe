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
//! [`Shared`] (which holds the sending side) is dropped, and [`Loader::join`] waits for that.

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
}

impl Loader {
    /// Starts the thread that answers `loads` from `reader`.
    pub(super) fn spawn(
        reader: StoreReader,
        loads: mpsc::Receiver<Load>,
        shared: Weak<Shared>,
    ) -> Result<Self, SpawnError> {
        let thread = std::thread::Builder::new()
            .name("relay-loader".into())
            .spawn(move || {
                while let Ok(load) = loads.recv() {
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
        Ok(Self { thread })
    }

    /// Waits, at most `grace`, for the thread to end, which it does once [`Shared`] is gone: it
    /// holds the store open, so a relay restarted in the same process after
    /// [`Server::shutdown`](super::Server::shutdown) would otherwise find the store locked.
    pub(super) async fn join(self, grace: std::time::Duration) {
        let thread = self.thread;
        let _ =
            tokio::time::timeout(grace, tokio::task::spawn_blocking(move || thread.join())).await;
    }
}
