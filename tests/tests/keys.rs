//! A node whose data directory is deleted comes back as a new incarnation and re-pairs by
//! itself: both operators are told, the message that was in flight to the lost store is
//! reported undelivered to its sender, and new messages flow both ways.

use std::time::Instant;

use hotline_client::control::WaitLevel;
use hotline_e2e::{Exercise, Precedence};

const PARTNER_LOST: &str = "partner lost its store";
const OWN_LOST: &str = "this node's store was lost; re-paired";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleting_a_nodes_data_dir_re_pairs_both_ways() {
    let ex = Exercise::new(&["us", "jp"], &[]);
    let [_relay, _us, mut jp] = ex.start_linked("us", "jp").await;
    let before = ex
        .send_one(
            "us",
            Precedence::Routine,
            "before",
            Some(WaitLevel::Delivered),
        )
        .await
        .unwrap();
    ex.send_one(
        "jp",
        Precedence::Routine,
        "back",
        Some(WaitLevel::Delivered),
    )
    .await
    .unwrap();

    // jp goes away; a flash for it is accepted by the relay, then jp's store is lost.
    jp.stop();
    ex.wait_status("us", "partner offline", |s| s.partner_online == Some(false))
        .await;
    let in_flight = ex
        .send_one(
            "us",
            Precedence::Flash,
            "in flight to the lost store",
            Some(WaitLevel::Accepted),
        )
        .await
        .unwrap();
    std::fs::remove_dir_all(ex.path("data/jp")).unwrap();
    let started = Instant::now();
    let _jp = ex.start_node("jp");

    // Both operators see a notice; the sender's names the message that was in flight.
    let us = ex
        .wait_status("us", "partner-lost-its-store notice", |s| {
            s.alarms.iter().any(|a| a.kind == PARTNER_LOST)
        })
        .await;
    let notice = us.alarms.iter().find(|a| a.kind == PARTNER_LOST).unwrap();
    assert!(
        notice.cause.contains(&in_flight.id),
        "the notice names {}: {}",
        in_flight.id,
        notice.cause
    );
    assert!(
        !notice.cause.contains(&before.id),
        "a delivered and finished message is not reported lost: {}",
        notice.cause
    );
    ex.wait_status("jp", "own-store-lost notice", |s| {
        s.alarms.iter().any(|a| a.kind == OWN_LOST)
    })
    .await;
    ex.wait_links_up(&["us", "jp"]).await;
    eprintln!("re-paired {:?} after the node restarted", started.elapsed());

    // New messages flow both ways.
    ex.send_one(
        "us",
        Precedence::Routine,
        "after",
        Some(WaitLevel::Delivered),
    )
    .await
    .unwrap();
    ex.send_one(
        "jp",
        Precedence::Routine,
        "reply",
        Some(WaitLevel::Delivered),
    )
    .await
    .unwrap();
    eprintln!(
        "messages flowed both ways {:?} after the restart",
        started.elapsed()
    );
    let jp_bodies: Vec<String> = ex.inbox("jp").await.into_iter().map(|m| m.body).collect();
    assert_eq!(
        jp_bodies,
        ["after"],
        "the new store holds only what came after"
    );
    let us_bodies: Vec<String> = ex.inbox("us").await.into_iter().map(|m| m.body).collect();
    assert_eq!(us_bodies, ["back", "reply"]);
    assert_eq!(
        ex.status("us")
            .await
            .alarms
            .iter()
            .filter(|a| a.kind == PARTNER_LOST)
            .count(),
        1,
        "one notice, no restart loop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hotline_rekey_announces_a_new_epoch_the_partner_seals_to() {
    let ex = Exercise::new(&["us", "jp"], &[]);
    let [_relay, _us, _jp] = ex.start_linked("us", "jp").await;
    let before = ex.status("jp").await.own_epoch.unwrap();
    let cfg = ex.config("jp");
    let out = hotline_e2e::hotline(&["rekey", "--config", cfg.to_str().unwrap(), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let epoch = u32::try_from(reply["epoch"].as_u64().unwrap()).unwrap();
    assert!(epoch > before, "new epoch {epoch} after {before}");
    assert_eq!(ex.status("jp").await.own_epoch, Some(epoch));
    ex.wait_status("us", "partner's new key taken", |s| {
        s.partner_epoch == Some(epoch)
    })
    .await;
    ex.send_one(
        "us",
        Precedence::Flash,
        "sealed to the new key",
        Some(WaitLevel::Delivered),
    )
    .await
    .unwrap();
    let bodies: Vec<String> = ex.inbox("jp").await.into_iter().map(|m| m.body).collect();
    assert_eq!(bodies, ["sealed to the new key"]);
}
