//! The relay is killed (SIGKILL) and restarted mid-run: nodes notice within seconds,
//! reconnect, and every message still arrives exactly once, in order.

use hotline_client::control::WaitLevel;
use hotline_e2e::{Exercise, Msg, Precedence, check_order, send_all};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relay_killed_and_restarted_mid_run_loses_nothing() {
    let ex = Exercise::new(&["us", "jp"], &[]);
    let [mut relay, _us, _jp] = ex.start_linked("us", "jp").await;
    let msgs: Vec<Msg> = (0..400)
        .map(|i| Msg::new(Precedence::ALL[i % 7 % 4], format!("m{i}")))
        .collect();
    let mut us = ex.control("us").await;
    // First half goes through; the relay dies while the second half is in flight.
    let first = send_all(&mut us, &msgs[..200], Some(WaitLevel::Delivered))
        .await
        .unwrap();
    let second_batch = msgs[200..].to_vec();
    let sender = tokio::spawn({
        let mut us2 = ex.control("us").await;
        async move { send_all(&mut us2, &second_batch, Some(WaitLevel::Delivered)).await }
    });
    relay.kill();
    ex.wait_status("us", "noticing the relay is gone", |s| !s.connected)
        .await;
    ex.wait_status("jp", "noticing the relay is gone", |s| !s.connected)
        .await;
    let _relay = ex.start_relay();
    for e in ["us", "jp"] {
        ex.wait_status(e, "reconnected, link up", |s| s.connected && s.link == "up")
            .await;
    }
    let second = sender.await.unwrap().unwrap();
    let inbox = ex.wait_inbox("jp", msgs.len()).await;
    assert_eq!(inbox.len(), msgs.len(), "every message exactly once");
    let order: Vec<(String, Precedence)> = first
        .iter()
        .chain(second.iter())
        .zip(msgs.iter())
        .map(|(s, m)| (s.id.clone(), m.precedence))
        .collect();
    check_order(&order, &inbox).unwrap();
}
