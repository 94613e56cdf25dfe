//! Where one side of the floor sends: straight onto its stream (the bare floor), or through a
//! group-commit log that releases each batch to the stream once it is synced (the durable
//! floor), so both floors share one forwarder and one driver.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use anyhow::{Context, Result, bail};
use hotline_net::framed;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::MAX_BATCH;
use crate::durable::{CommitStats, CommitSummary, GroupCommit};

/// Where a side's frames go: straight onto its stream (bare), or through a group-commit log
/// whose release task writes them once they are synced (durable).
pub(super) enum Outbox {
    Direct(quinn::SendStream),
    Logged {
        log: GroupCommit<Vec<u8>>,
        stats: Arc<Mutex<CommitStats>>,
        release: JoinHandle<Result<quinn::SendStream>>,
    },
}

impl Outbox {
    pub(super) fn new(stream: quinn::SendStream, log: Option<&Path>) -> Result<Self> {
        let Some(path) = log else {
            return Ok(Self::Direct(stream));
        };
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<Vec<u8>>>();
        let log = GroupCommit::start(path, MAX_BATCH, tx)
            .with_context(|| format!("creating {}", path.display()))?;
        let stats = log.stats();
        let release = tokio::spawn(async move {
            let mut stream = stream;
            while let Some(batch) = rx.recv().await {
                framed::write_frame(&mut stream, &batch.concat()).await?;
            }
            anyhow::Ok(stream)
        });
        Ok(Self::Logged {
            log,
            stats,
            release,
        })
    }

    /// The log writer's figures (durable only).
    pub(super) fn stats(&self) -> Option<Arc<Mutex<CommitStats>>> {
        match self {
            Self::Direct(_) => None,
            Self::Logged { stats, .. } => Some(stats.clone()),
        }
    }

    /// Sends each `(record, frame)`'s frame; durable: after `record` is appended and synced.
    pub(super) async fn send(&mut self, msgs: Vec<(Vec<u8>, Vec<u8>)>) -> Result<()> {
        match self {
            Self::Direct(stream) => {
                let bytes: Vec<u8> = msgs.into_iter().flat_map(|(_, frame)| frame).collect();
                framed::write_frame(stream, &bytes).await?;
            }
            Self::Logged { log, stats, .. } => {
                for (record, frame) in msgs {
                    if !log.submit(record, frame) {
                        let e = lock(stats).error.clone();
                        bail!(e.unwrap_or_else(|| "the floor log writer stopped".into()));
                    }
                }
            }
        }
        Ok(())
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        if let Self::Logged { release, .. } = self {
            release.abort();
        }
    }
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Direct(_) => "Outbox::Direct",
            Self::Logged { .. } => "Outbox::Logged",
        })
    }
}

/// The figures of a log writer, failing on the error that stopped it.
pub(super) fn log_summary(
    stats: Option<&Arc<Mutex<CommitStats>>>,
) -> Result<Option<CommitSummary>> {
    let Some(stats) = stats else { return Ok(None) };
    let s = lock(stats);
    if let Some(e) = &s.error {
        bail!("{e}");
    }
    Ok(Some(s.summary()))
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
