//! Crash recovery, proven with processes aborted at named failpoints and killed with SIGKILL.
//!
//! After each crash and restart: every message `send` reported is in the recipient's inbox
//! exactly once, the ordering rule holds, acknowledgements given before the crash are still
//! there, and deadlines pending at the crash still fire.

use std::time::Duration;

use hotline_client::control::WaitLevel;
use hotline_e2e::{Exercise, Msg, PATIENCE, Precedence, check_order, hotline, send_one};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_aborted_after_outbox_append_still_delivers() {
    let ex = Exercise::new(&["us", "jp"], &[]);
    let [_relay, _jp, mut us] = ex
        .start_linked_with("jp", "us", &[("HOTLINE_FAILPOINT", "after-outbox-append")])
        .await;
    let out = ex.hotline_send("us", Precedence::Flash, "survives");
    assert!(
        !out.status.success(),
        "the node aborted before confirming the send"
    );
    assert!(
        us.wait_exit(PATIENCE).is_some(),
        "us aborted at the failpoint"
    );
    let _us = ex.start_node("us");
    let inbox = ex.wait_inbox("jp", 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let inbox2 = ex.inbox("jp").await;
    assert_eq!(inbox2.len(), 1, "delivered exactly once: {inbox2:?}");
    assert_eq!(inbox[0].body, "survives");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_aborted_after_inbox_commit_neither_loses_nor_duplicates() {
    let ex = Exercise::new(&["us", "jp"], &[]);
    let [_relay, _us, mut jp] = ex
        .start_linked_with(
            "us",
            "jp",
            &[("HOTLINE_FAILPOINT", "after-inbox-commit-before-receipt")],
        )
        .await;
    let sent = ex
        .send_one("us", Precedence::Immediate, "once", None)
        .await
        .unwrap();
    assert!(
        jp.wait_exit(PATIENCE).is_some(),
        "jp aborted after committing the inbox record"
    );
    let _jp = ex.start_node("jp");
    ex.wait_status("us", "delivered receipt after jp restarts", |s| {
        s.lanes["immediate"].undelivered == 0
    })
    .await;
    let inbox = ex.inbox("jp").await;
    assert_eq!(inbox.len(), 1, "{inbox:?}");
    assert_eq!(inbox[0].id, sent.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgement_committed_before_a_crash_survives_and_reaches_the_sender() {
    let ex = Exercise::new(&["us", "jp"], &[]);
    let [_relay, _us, mut jp] = ex
        .start_linked_with("us", "jp", &[("HOTLINE_FAILPOINT", "after-ack-commit")])
        .await;
    let sent = ex
        .send_one(
            "us",
            Precedence::Flash,
            "ack me",
            Some(WaitLevel::Delivered),
        )
        .await
        .unwrap();
    let out = hotline(&[
        "ack",
        "--config",
        ex.config("jp").to_str().unwrap(),
        &sent.id,
    ]);
    assert!(!out.status.success(), "jp aborted before answering");
    assert!(jp.wait_exit(PATIENCE).is_some());
    let _jp = ex.start_node("jp");
    let inbox = ex.wait_inbox("jp", 1).await;
    assert!(
        inbox[0].acknowledged.is_some(),
        "the acknowledgement survived the crash"
    );
    ex.wait_status("us", "acknowledged receipt", |s| {
        s.lanes["flash"].unacknowledged == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_in_the_middle_of_a_group_commit_loses_nothing_reported() {
    let ex = Exercise::new(&["us", "jp"], &[]);
    let failpoint = [
        ("HOTLINE_FAILPOINT", "mid-group-commit"),
        ("HOTLINE_FAILPOINT_SKIP", "30"),
    ];
    let [_relay, _jp, mut us] = ex.start_linked_with("jp", "us", &failpoint).await;
    let msgs: Vec<Msg> = (0..300)
        .map(|i| Msg::new(Precedence::ALL[i % 4], format!("g{i}")))
        .collect();
    let mut c = ex.control("us").await;
    // One send at a time, so each is its own commit; the node dies part-way. Collect what
    // was reported stored before it did.
    let mut stored = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        match send_one(&mut c, m.precedence, &m.body, None).await {
            Ok(s) => stored.push((i, s.id)),
            Err(_) => break,
        }
    }
    assert!(
        us.wait_exit(PATIENCE).is_some(),
        "us aborted mid group commit"
    );
    assert!(
        !stored.is_empty() && stored.len() < msgs.len(),
        "the crash came part-way ({} stored)",
        stored.len()
    );
    let _us = ex.start_node("us");
    let inbox = ex.wait_inbox("jp", stored.len()).await;
    stored.sort();
    for (_, id) in &stored {
        assert_eq!(
            inbox.iter().filter(|m| &m.id == id).count(),
            1,
            "{id} delivered exactly once"
        );
    }
    let order: Vec<(String, Precedence)> = stored
        .iter()
        .map(|(i, id)| (id.clone(), msgs[*i].precedence))
        .collect();
    check_order(&order, &inbox).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escalation_pending_at_a_crash_still_fires_after_restart() {
    let ex = Exercise::new(&["us", "jp"], &[]);
    ex.edit_config("us", |t| {
        let mut flash = toml::Table::new();
        flash.insert("acknowledged_ms".into(), 3000.into());
        let mut d = toml::Table::new();
        d.insert("flash".into(), flash.into());
        t.insert("deadlines".into(), d.into());
    });
    let [_relay, _jp, mut us] = ex.start_linked("jp", "us").await;
    let sent = ex
        .send_one(
            "us",
            Precedence::Flash,
            "unanswered",
            Some(WaitLevel::Delivered),
        )
        .await
        .unwrap();
    us.kill();
    // Stay down past the deadline.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let _us = ex.start_node("us");
    let s = ex
        .wait_status("us", "the escalation pending at the crash", |s| {
            !s.open_escalations.is_empty()
        })
        .await;
    assert_eq!(s.open_escalations[0].id, sent.id);
    // The partner's operator is re-alerted: the inbox shows the escalation.
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let inbox = ex.wait_inbox("jp", 1).await;
        if inbox[0].escalated_to.is_some() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "jp never re-alerted: {inbox:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
