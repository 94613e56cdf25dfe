//! Storage faults: a full disk (a small tmpfs) and a read-only data directory each give one
//! clear error; nothing is reported `delivered` that is not stored; after space is freed the
//! node recovers and everything reported arrives.
//!
//! These tests mount tmpfs file systems and therefore need root (CI runs as root). Without the
//! privilege they fail with a message saying so rather than pretending to pass.
#![expect(clippy::unwrap_used, reason = "a failed step is the test failing")]

use std::path::Path;
use std::process::Command;

use hotline_client::control::WaitLevel;
use hotline_e2e::{Exercise, Msg, PATIENCE, Precedence, Process, send_all};

struct Mount(std::path::PathBuf);

impl Mount {
    fn tmpfs(at: &Path, opts: &str) -> Self {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
            .arg(at)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mounting a tmpfs needs root (CI runs as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(at.to_owned())
    }

    fn remount(&self, opts: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,{opts}")])
            .arg(&self.0)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "remount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Waits for `node` to exit (`why` says why it must) and returns the one `error:` line of its
/// log, failing if there is not exactly one.
fn the_one_error(node: &mut Process, why: &str) -> String {
    assert!(node.wait_exit(PATIENCE).is_some(), "{why}");
    let log = node.log();
    let errors: Vec<&str> = log.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one clear error line: {log}");
    errors[0].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_at_the_receiver_is_one_error_and_recovers_after_space_is_freed() {
    let ex = Exercise::new(&["us", "jp"], &[]);
    let disk = Mount::tmpfs(&ex.path("data/jp"), "size=3m,mode=0700");
    let [_relay, _us, mut jp] = ex.start_linked("us", "jp").await;
    // 64 KiB messages: the 3 MiB disk fills after a few dozen.
    let body = "x".repeat(64 * 1024);
    let msgs: Vec<Msg> = (0..80)
        .map(|_| Msg::new(Precedence::Routine, body.clone()))
        .collect();
    let mut c = ex.control("us").await;
    let sent = send_all(&mut c, &msgs, Some(WaitLevel::Accepted))
        .await
        .unwrap();
    let error = the_one_error(&mut jp, "jp stops when its disk is full");
    assert!(error.contains("store write failed"), "{error}");
    let delivered_before = ex.status("us").await.lanes["routine"].undelivered;
    assert!(
        delivered_before > 0,
        "the disk filled before everything was delivered"
    );

    // Free space and restart: everything arrives, exactly once.
    disk.remount("size=64m");
    let _jp = ex.start_node("jp");
    let inbox = ex.wait_inbox("jp", sent.len()).await;
    assert_eq!(inbox.len(), sent.len());
    let seqs: Vec<u64> = inbox.iter().map(|m| m.seq).collect();
    // A lane's sequence starts after the sender's incarnation (its store's start time).
    let first = seqs.first().copied().unwrap_or_default();
    assert_eq!(
        seqs,
        (first..first + sent.len() as u64).collect::<Vec<_>>(),
        "in order, no gaps, no duplicates"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_data_dir_is_one_clear_error() {
    let ex = Exercise::new(&["us", "jp"], &[]);
    let _disk = Mount::tmpfs(&ex.path("data/us"), "size=1m,ro");
    let mut us = ex.start_node("us");
    let error = the_one_error(&mut us, "the node refuses to run on a read-only data dir");
    assert!(
        error.to_lowercase().contains("read-only"),
        "names the problem: {error}"
    );
}
