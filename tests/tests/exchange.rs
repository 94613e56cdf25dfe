//! 1,000 messages of mixed precedence each way through a real relay: every one delivered
//! exactly once, the ordering rule holds, and all three ack levels reach the sender.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a failed step is the test failing"
)]

use hotline_client::control::{Event, Request, WaitLevel};
use hotline_e2e::{Exercise, Msg, Precedence, check_order, send_all};

const N: usize = 1000;

fn mix(seed: u64, n: usize) -> Vec<Msg> {
    let mut x = seed;
    (0..n)
        .map(|i| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            // Mostly routine, some of each higher precedence.
            let p = match (x >> 33) % 10 {
                0..=5 => Precedence::Routine,
                6 | 7 => Precedence::Priority,
                8 => Precedence::Immediate,
                _ => Precedence::Flash,
            };
            Msg::new(p, format!("message {i} ({p})"))
        })
        .collect()
}

/// Acknowledges every message as it arrives in `endpoint`'s inbox, until `n` are acknowledged.
async fn auto_ack(ex: &Exercise, endpoint: &str, n: usize) {
    let mut follow = ex.control(endpoint).await;
    let mut acker = ex.control(endpoint).await;
    let tag = follow
        .request(Request::Inbox {
            follow: true,
            unacked: false,
            channel: None,
            updates: false,
        })
        .await
        .unwrap();
    let mut acked = 0;
    while acked < n {
        let line = follow.next().await.unwrap().expect("inbox stream ended");
        if line.tag != tag {
            continue;
        }
        if let Event::Message(m) = line.event {
            if m.acknowledged.is_none() {
                acker
                    .call(Request::Ack {
                        id: m.id.parse().unwrap(),
                    })
                    .await
                    .unwrap();
            }
            acked += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousand_messages_each_way_exactly_once_in_order_with_all_ack_levels() {
    let ex = Exercise::new(&["us", "jp"], &[]);
    let [_relay, _us, _jp] = ex.start_linked("us", "jp").await;
    let us_msgs = mix(1, N);
    let jp_msgs = mix(2, N);
    let mut us_ctl = ex.control("us").await;
    let mut jp_ctl = ex.control("jp").await;
    let (us_sent, jp_sent, (), ()) = tokio::join!(
        send_all(&mut us_ctl, &us_msgs, Some(WaitLevel::Acknowledged)),
        send_all(&mut jp_ctl, &jp_msgs, Some(WaitLevel::Acknowledged)),
        auto_ack(&ex, "jp", N),
        auto_ack(&ex, "us", N),
    );
    let (us_sent, jp_sent) = (us_sent.unwrap(), jp_sent.unwrap());
    for (sender, sent, msgs, receiver) in [
        ("us", &us_sent, &us_msgs, "jp"),
        ("jp", &jp_sent, &jp_msgs, "us"),
    ] {
        for s in sent {
            let accepted = s.levels.iter().position(|l| l.starts_with("accepted"));
            let delivered = s.levels.iter().position(|l| l == "delivered");
            let acknowledged = s.levels.iter().position(|l| l == "acknowledged");
            assert!(
                delivered.is_some() && acknowledged.is_some(),
                "{sender} {}: levels {:?}",
                s.id,
                s.levels
            );
            assert!(delivered < acknowledged, "{}: {:?}", s.id, s.levels);
            // `accepted` can race with `delivered` on loopback but must have been reported.
            assert!(
                accepted.is_some(),
                "{}: no accepted level in {:?}",
                s.id,
                s.levels
            );
        }
        let inbox = ex.wait_inbox(receiver, N).await;
        assert_eq!(inbox.len(), N, "{receiver} got every message exactly once");
        let mut ids: Vec<_> = inbox.iter().map(|m| m.id.clone()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), N, "no duplicates in {receiver}'s inbox");
        let order: Vec<(String, Precedence)> = sent
            .iter()
            .zip(msgs.iter())
            .map(|(s, m)| (s.id.clone(), m.precedence))
            .collect();
        check_order(&order, &inbox).unwrap();
        for m in &inbox {
            let want = &msgs[sent.iter().position(|s| s.id == m.id).unwrap()];
            assert_eq!(m.body, want.body);
            assert_eq!(m.precedence, want.precedence.as_str());
            assert!(
                m.acknowledged.is_some(),
                "{} acknowledged in {receiver}'s inbox",
                m.id
            );
        }
    }
}
