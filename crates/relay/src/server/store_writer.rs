//! The store's writer thread: group-commits the router's writes and tells the router of each
//! commit.
//!
//! redb is blocking, so the writer is a thread rather than a task. It runs
//! [`store::group_commit`] over a queue of [`Request`]s that [`Shared`] fills, under its lock,
//! in the order the router issued the writes; after each commit (fsync) it calls
//! [`Router::handle_persisted`](crate::router::Router::handle_persisted), which releases the
//! replies that waited for durability, and wakes the lane readers paused on the store backlog.
//! It never decides what to write, and never reports a write that is not committed.
//!
//! Main type: [`StoreWriter`], the server's side of the thread.
//!
//! Invariant: a store error stops the thread, so nothing after it is acknowledged; the error
//! reaches [`StoreWriter::failure`]. The thread holds only a weak reference to [`Shared`], so
//! dropping the server is not delayed by it; [`Request::Stop`] makes it commit what it was
//! given, close the store (releasing its lock) and end.

use std::sync::atomic::Ordering;
use std::sync::{Weak, mpsc};
use std::time::Duration;

use tokio::sync::oneshot;
use tracing::{debug, error, warn};

use super::SpawnError;
use super::shared::{STORE_FAILED, STORE_STOPPED, Shared};
use crate::store::{self, Request, Store, StoreError};

/// How long [`StoreWriter::stop`] waits for the store's last commit.
const STORE_STOP_GRACE: Duration = Duration::from_secs(30);

/// The store's writer thread, from the server's side.
#[derive(Debug)]
pub(super) struct StoreWriter {
    requests: mpsc::Sender<Request>,
    /// The thread's result: `Ok` when stopped, the error that stopped it otherwise.
    done: Option<oneshot::Receiver<Result<(), StoreError>>>,
}

impl StoreWriter {
    /// Starts the thread that runs [`store::group_commit`] over `requests_rx` and tells the
    /// router of each commit. `requests` is the sending side the server keeps to stop it.
    pub(super) fn spawn(
        mut store: Store,
        requests: mpsc::Sender<Request>,
        requests_rx: mpsc::Receiver<Request>,
        shared: Weak<Shared>,
    ) -> Result<Self, SpawnError> {
        let (done_tx, done) = oneshot::channel();
        std::thread::Builder::new()
            .name("relay-store".into())
            .spawn(move || {
                let result = store::group_commit(&mut store, &requests_rx, |committed| {
                    let Some(shared) = shared.upgrade() else {
                        return;
                    };
                    shared.handle_committed(&committed);
                });
                if let Err(e) = &result {
                    error!(error = %e, "store failed; nothing more will be acknowledged");
                }
                if let Some(shared) = shared.upgrade() {
                    let state = if result.is_err() {
                        STORE_FAILED
                    } else {
                        STORE_STOPPED
                    };
                    shared.store_state.store(state, Ordering::Release);
                }
                drop(store);
                let _ = done_tx.send(result);
            })
            .map_err(SpawnError::StoreThread)?;
        Ok(Self {
            requests,
            done: Some(done),
        })
    }

    /// Resolves with the error if the store fails; pending forever otherwise (including once
    /// the thread stopped cleanly).
    pub(super) async fn failure(&mut self) -> StoreError {
        if let Some(done) = &mut self.done {
            if let Ok(Err(e)) = done.await {
                self.done = None;
                return e;
            }
            self.done = None;
        }
        std::future::pending().await
    }

    /// Asks the thread to commit what it was given, close the store and end, without waiting.
    pub(super) fn request_stop(&self) {
        // If the thread already ended, there is nothing left to stop.
        let _ = self.requests.send(Request::Stop);
    }

    /// Asks the thread to stop and waits (at most [`STORE_STOP_GRACE`]) for it to end.
    pub(super) async fn stop(&mut self) {
        self.request_stop();
        if let Some(done) = self.done.take() {
            match tokio::time::timeout(STORE_STOP_GRACE, done).await {
                Ok(Ok(Err(e))) => error!(error = %e, "store failed"),
                Ok(_) => debug!("store closed"),
                Err(_) => warn!("store writer did not stop in time"),
            }
        }
    }
}
