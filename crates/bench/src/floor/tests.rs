use super::*;

#[test]
fn frames_carry_the_index_and_their_size() {
    let f = data_frame(42, 256);
    assert_eq!(f.len(), 4 + 256);
    assert_eq!(u32::from_be_bytes(f[..4].try_into().unwrap()), 256);
    assert_eq!(read_index(&f).unwrap(), 42);
    let a = ack_frame(7);
    assert_eq!(a.len(), 4 + ACK_BYTES);
    assert_eq!(read_index(&a).unwrap(), 7);
    assert!(read_index(&[0, 0, 0, 2, 1]).is_err());
    // Tiny sizes still carry the index.
    assert_eq!(data_frame(1, 0).len(), 12);
}

fn params(durable_dir: Option<PathBuf>) -> FloorParams {
    FloorParams {
        rate: 200.0,
        duration: Duration::from_millis(500),
        warmup: Duration::ZERO,
        size: 256,
        drain: Duration::from_secs(10),
        durable_dir,
    }
}

#[tokio::test]
async fn floor_round_trips_are_measured_and_correct() {
    let ticker = Arc::new(Ticker::start().unwrap());
    let run = run(&params(None), &ticker).await.unwrap();
    assert!(!run.durable());
    let r = run.phase;
    assert_eq!(r.name, "floor");
    assert!(r.drained);
    assert_eq!(r.counts.sent, 100);
    assert_eq!(r.counts.delivered, 100);
    assert!(r.counts.correct(), "{:?}", r.counts);
    assert_eq!(r.stats.summary(Level::RoundTrip, Group::All).count, 100);
}

#[tokio::test]
async fn the_durable_floor_logs_every_message_at_both_ends() {
    let dir = tempfile::tempdir().unwrap();
    if crate::durable::fs_type(dir.path()).ok() == Some(crate::durable::TMPFS_MAGIC) {
        eprintln!("skipped: the temporary directory is on tmpfs");
        return;
    }
    let ticker = Arc::new(Ticker::start().unwrap());
    let run = run(&params(Some(dir.path().to_path_buf())), &ticker)
        .await
        .unwrap();
    assert!(run.durable());
    let r = &run.phase;
    assert_eq!(r.name, "durable_floor");
    assert!(r.drained);
    assert_eq!(r.counts.delivered, 100);
    assert!(r.counts.correct(), "{:?}", r.counts);
    for log in [&run.sender_log, &run.receiver_log] {
        let log = log.as_ref().unwrap();
        assert_eq!(log.records, 100);
        assert!(log.syncs >= 1 && log.max_batch <= MAX_BATCH);
        assert_eq!(log.fdatasync_us.count, log.syncs);
    }
    let v = run.json();
    assert_eq!(v["group_commit"]["receiver"]["records"], 100);
    // The logs went in a temporary directory that is gone after the run.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn the_durable_floor_refuses_tmpfs() {
    let shm = PathBuf::from("/dev/shm");
    if crate::durable::fs_type(&shm).ok() != Some(crate::durable::TMPFS_MAGIC) {
        eprintln!("skipped: /dev/shm is not tmpfs here");
        return;
    }
    let ticker = Arc::new(Ticker::start().unwrap());
    let e = run(&params(Some(shm)), &ticker).await.unwrap_err();
    assert_eq!(
        format!("{e:#}"),
        "the durable floor needs a real disk: /dev/shm is on tmpfs, where fsync is free"
    );
}
