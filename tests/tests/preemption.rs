//! Preemption by position, not timing: 5,000 routine messages of 1 KiB are queued at the
//! relay for a recipient that is not reading, then one flash; once the recipient reads, the
//! flash's inbox position is within the per-lane write-ahead bound, not behind the backlog.
//!
//! The bound: a relay writes at most one QUIC stream receive window
//! (`hotline_net::quic::LANE_WINDOW_BYTES`, 256 KiB) ahead on the routine lane of a node that
//! is not reading, i.e. at most 256 KiB / ~1.1 KiB ≈ 230 routine frames can sit in front of
//! the flash; we assert the flash is within the first 256 positions.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a failed step is the test failing"
)]

use hotline_client::control::WaitLevel;
use hotline_e2e::{Exercise, Msg, Precedence, send_all, send_one};
use hotline_net::quic::LANE_WINDOW_BYTES;

const BACKLOG: usize = 5000;

/// Queues `BACKLOG` routine messages of 1 KiB, then one flash, all up to `accepted`; returns
/// the flash's id.
async fn backlog_then_flash(ex: &Exercise) -> String {
    let accepted = Some(WaitLevel::Accepted);
    let body = "r".repeat(1024);
    let routine: Vec<Msg> = (0..BACKLOG)
        .map(|_| Msg::new(Precedence::Routine, body.clone()))
        .collect();
    let mut us = ex.control("us").await;
    let sent = send_all(&mut us, &routine, accepted).await.unwrap();
    assert_eq!(sent.len(), BACKLOG);
    send_one(&mut us, Precedence::Flash, "FLASH", accepted)
        .await
        .unwrap()
        .id
}

/// Once jp has everything: the flash is within the write-ahead bound and routine order holds.
async fn assert_flash_within_bound(ex: &Exercise, flash_id: &str, what: &str) {
    let inbox = ex.wait_inbox("jp", BACKLOG + 1).await;
    let position = inbox
        .iter()
        .position(|m| m.id == flash_id)
        .expect("flash delivered");
    let bound = LANE_WINDOW_BYTES as usize / 1024;
    eprintln!(
        "{what}: flash delivered at inbox position {position} of {} (bound {bound})",
        inbox.len()
    );
    assert!(
        position <= bound,
        "{what}: flash delivered at position {position}, behind more than the {bound}-frame write-ahead bound"
    );
    let routine_seqs: Vec<u64> = inbox
        .iter()
        .filter(|m| m.precedence == "routine")
        .map(|m| m.seq)
        .collect();
    // A lane's sequence starts after the sender's incarnation (its store's start time).
    let first = routine_seqs.first().copied().unwrap_or_default();
    assert_eq!(
        routine_seqs,
        (first..first + BACKLOG as u64).collect::<Vec<_>>(),
        "routine order is intact"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flash_overtakes_a_5000_message_routine_backlog() {
    let ex = Exercise::new(&["us", "jp"], &[]);
    let [_relay, _us, mut jp] = ex.start_linked("us", "jp").await;
    // us now holds jp's sealing key; take jp away so the relay queues everything.
    jp.stop();
    ex.wait_status("us", "partner offline", |s| s.partner_online == Some(false))
        .await;
    let flash_id = backlog_then_flash(&ex).await;
    let _jp = ex.start_node("jp");
    assert_flash_within_bound(&ex, &flash_id, "offline recipient").await;
}

/// The same with the recipient connected but not reading (SIGSTOP), so the relay's routine
/// lane really fills the recipient's stream window before the flash arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flash_overtakes_a_backlog_at_a_stalled_recipient() {
    use nix::sys::signal::Signal;
    let ex = Exercise::new(&["us", "jp"], &[]);
    let [_relay, _us, jp] = ex.start_linked("us", "jp").await;
    jp.signal(Signal::SIGSTOP);
    let flash_id = backlog_then_flash(&ex).await;
    jp.signal(Signal::SIGCONT);
    assert_flash_within_bound(&ex, &flash_id, "stalled recipient").await;
}
