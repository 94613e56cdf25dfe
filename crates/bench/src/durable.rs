//! What makes the durable floor durable: a group-commit log writer, and the refusal to measure
//! it on tmpfs.
//!
//! [`GroupCommit`] owns an append-only file and a thread. Callers [`submit`](GroupCommit::submit)
//! a record and an item; the thread takes whatever is pending (at most `max_batch` records),
//! appends each record length-prefixed (`u32` big-endian, then the bytes), calls
//! [`File::sync_data`] (`fdatasync`) once for the batch, and only then releases the batch's
//! items, in submission order, on the release channel. Nothing is released before the sync that
//! covers it has returned.

use std::fmt;
use std::fs::File;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use serde::Serialize;
use tokio::sync::mpsc::UnboundedSender;

use crate::stats::{self, Summary};

/// `statfs(2)`'s `f_type` for tmpfs (`TMPFS_MAGIC` in `linux/magic.h`).
pub const TMPFS_MAGIC: i64 = 0x0102_1994;

/// Why a directory cannot hold the durable floor's files.
#[derive(Debug)]
pub enum DiskError {
    /// The directory is on tmpfs: `fdatasync` there returns at once and measures nothing.
    Tmpfs(PathBuf),
    /// `statfs` failed (the directory is missing, or unreadable).
    Statfs {
        /// The directory.
        dir: PathBuf,
        /// What `statfs` said.
        source: io::Error,
    },
}

impl fmt::Display for DiskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tmpfs(dir) => write!(
                f,
                "the durable floor needs a real disk: {} is on tmpfs, where fsync is free",
                dir.display()
            ),
            Self::Statfs { dir, .. } => {
                write!(f, "cannot tell which filesystem {} is on", dir.display())
            }
        }
    }
}

impl std::error::Error for DiskError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Tmpfs(_) => None,
            Self::Statfs { source, .. } => Some(source),
        }
    }
}

/// The filesystem type (`statfs` `f_type`) of `dir`.
pub fn fs_type(dir: &Path) -> io::Result<i64> {
    let st = rustix::fs::statfs(dir)?;
    #[allow(
        clippy::useless_conversion,
        reason = "f_type is an i64 here but a u32 on some targets"
    )]
    Ok(i64::from(st.f_type))
}

/// Ok if `dir` is on a filesystem where `fdatasync` reaches a device (anything but tmpfs).
pub fn check_real_disk(dir: &Path) -> Result<(), DiskError> {
    match fs_type(dir) {
        Ok(TMPFS_MAGIC) => Err(DiskError::Tmpfs(dir.to_path_buf())),
        Ok(_) => Ok(()),
        Err(source) => Err(DiskError::Statfs {
            dir: dir.to_path_buf(),
            source,
        }),
    }
}

/// What a group-commit writer did, so far.
#[derive(Debug)]
pub struct CommitStats {
    /// Records appended and synced.
    pub records: u64,
    /// `fdatasync` calls (one per batch).
    pub syncs: u64,
    /// The most records one sync covered.
    pub max_batch: usize,
    /// Time each `fdatasync` took, µs.
    pub sync_us: hdrhistogram::Histogram<u64>,
    /// The first write or sync error; the writer stops at it.
    pub error: Option<String>,
}

impl Default for CommitStats {
    fn default() -> Self {
        Self {
            records: 0,
            syncs: 0,
            max_batch: 0,
            sync_us: stats::histogram(),
            error: None,
        }
    }
}

/// [`CommitStats`] as the JSON report writes it.
#[derive(Clone, Debug, Serialize)]
pub struct CommitSummary {
    /// Records appended and synced.
    pub records: u64,
    /// `fdatasync` calls.
    pub syncs: u64,
    /// Mean records per sync.
    pub mean_batch: f64,
    /// The most records one sync covered.
    pub max_batch: usize,
    /// `fdatasync` time, µs.
    pub fdatasync_us: Summary,
}

impl CommitStats {
    /// The figures for the report.
    pub fn summary(&self) -> CommitSummary {
        CommitSummary {
            records: self.records,
            syncs: self.syncs,
            mean_batch: if self.syncs == 0 {
                0.0
            } else {
                crate::report::round2(self.records as f64 / self.syncs as f64)
            },
            max_batch: self.max_batch,
            fdatasync_us: Summary::of(&self.sync_us),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An append-only file with a group-commit thread. Dropping it lets the thread finish what was
/// submitted and stop; the release channel closes when it has.
#[derive(Debug)]
pub struct GroupCommit<T> {
    jobs: Option<Sender<(Vec<u8>, T)>>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<Mutex<CommitStats>>,
}

impl<T: Send + 'static> GroupCommit<T> {
    /// Creates `path` (truncating it) and starts the thread. Batches hold at most `max_batch`
    /// records (at least 1); each released batch is sent on `release` as one `Vec`.
    pub fn start(
        path: &Path,
        max_batch: usize,
        release: UnboundedSender<Vec<T>>,
    ) -> io::Result<Self> {
        let file = File::create(path)?;
        let (jobs, pending) = channel();
        let stats = Arc::new(Mutex::new(CommitStats::default()));
        let thread = {
            let stats = stats.clone();
            std::thread::Builder::new()
                .name("group-commit".into())
                .spawn(move || commit_loop(file, &pending, max_batch.max(1), &release, &stats))?
        };
        Ok(Self {
            jobs: Some(jobs),
            thread: Some(thread),
            stats,
        })
    }

    /// Queues `record` to be appended and synced, then `item` to be released. False if the
    /// writer has stopped (on an error: see [`CommitStats::error`]).
    pub fn submit(&self, record: Vec<u8>, item: T) -> bool {
        self.jobs
            .as_ref()
            .is_some_and(|j| j.send((record, item)).is_ok())
    }

    /// The writer's figures, shared (readable while it runs and after it stops).
    pub fn stats(&self) -> Arc<Mutex<CommitStats>> {
        self.stats.clone()
    }
}

impl<T> Drop for GroupCommit<T> {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn commit_loop<T>(
    mut file: File,
    pending: &Receiver<(Vec<u8>, T)>,
    max_batch: usize,
    release: &UnboundedSender<Vec<T>>,
    stats: &Mutex<CommitStats>,
) {
    let mut buf = Vec::new();
    // Block for the first record of a batch, then take what else is already pending.
    while let Ok(first) = pending.recv() {
        let mut items = Vec::with_capacity(max_batch.min(1024));
        buf.clear();
        let mut push = |(record, item): (Vec<u8>, T)| {
            let len = u32::try_from(record.len()).unwrap_or(u32::MAX);
            buf.extend_from_slice(&len.to_be_bytes());
            buf.extend_from_slice(&record[..len as usize]);
            items.push(item);
            items.len()
        };
        let mut n = push(first);
        let mut open = true;
        while n < max_batch {
            match pending.try_recv() {
                Ok(job) => n = push(job),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        let written = file.write_all(&buf).and_then(|()| {
            let t = Instant::now();
            file.sync_data()?;
            Ok(t.elapsed())
        });
        let mut s = lock(stats);
        match written {
            Ok(took) => {
                stats::record(&mut s.sync_us, took.as_micros() as u64);
                s.syncs += 1;
                s.records += items.len() as u64;
                s.max_batch = s.max_batch.max(items.len());
            }
            Err(e) => {
                s.error = Some(format!("appending to the floor log: {e}"));
                return;
            }
        }
        drop(s);
        if release.send(items).is_err() || !open {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses a log of length-prefixed records.
    fn records(bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut rest = bytes;
        while rest.len() >= 4 {
            let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
            out.push(rest[4..4 + len].to_vec());
            rest = &rest[4 + len..];
        }
        assert!(rest.is_empty(), "a torn record");
        out
    }

    #[test]
    fn every_record_is_in_the_file_before_its_release_and_batches_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let gc = GroupCommit::start(&path, 8, tx).unwrap();
        let stats = gc.stats();
        for i in 0..200u32 {
            assert!(gc.submit(format!("message {i}").into_bytes(), i));
        }
        let mut released = Vec::new();
        let mut batches = 0;
        while released.len() < 200 {
            let batch = rx.blocking_recv().unwrap();
            batches += 1;
            assert!(
                !batch.is_empty() && batch.len() <= 8,
                "batch of {}",
                batch.len()
            );
            released.extend(batch);
            // Everything released so far was written (and synced) first.
            let on_disk = records(&std::fs::read(&path).unwrap());
            assert!(on_disk.len() >= released.len());
            for &i in &released {
                assert_eq!(on_disk[i as usize], format!("message {i}").into_bytes());
            }
        }
        assert_eq!(released, (0..200).collect::<Vec<_>>(), "released in order");
        let s = lock(&stats);
        assert_eq!(s.records, 200);
        assert_eq!(s.syncs, batches);
        assert!(s.syncs >= 25, "200 records in batches of at most 8");
        assert!(s.max_batch <= 8);
        assert_eq!(s.sync_us.len(), s.syncs);
        assert!(s.error.is_none());
        drop(s);
        drop(gc);
        assert!(
            rx.blocking_recv().is_none(),
            "release closes after the writer stops"
        );
    }

    #[test]
    fn empty_records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let gc = GroupCommit::start(&path, 1, tx).unwrap();
        assert!(gc.submit(Vec::new(), "a"));
        assert_eq!(rx.blocking_recv().unwrap(), ["a"]);
        drop(gc);
        assert_eq!(std::fs::read(&path).unwrap(), [0, 0, 0, 0]);
    }

    #[test]
    fn tmpfs_is_refused_with_one_line() {
        let shm = Path::new("/dev/shm");
        if fs_type(shm).ok() != Some(TMPFS_MAGIC) {
            eprintln!("skipped: /dev/shm is not tmpfs here");
            return;
        }
        let e = check_real_disk(shm).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the durable floor needs a real disk: /dev/shm is on tmpfs, where fsync is free"
        );
    }

    #[test]
    fn a_missing_directory_is_an_error_not_a_panic() {
        let e = check_real_disk(Path::new("/nonexistent/hotline-bench")).unwrap_err();
        assert!(matches!(e, DiskError::Statfs { .. }));
        assert!(std::error::Error::source(&e).is_some());
        // The cause is the source, not repeated in the message.
        assert!(!e.to_string().contains("No such file"), "{e}");
    }
}
