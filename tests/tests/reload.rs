//! Reload without dropping anyone (issue 14 part 1), with real `hotline-relay` and `hotline
//! node` processes: SIGHUP never kills either; a relay reload that removes a hotline closes its
//! endpoints with a typed reason their node shows, while the other pair's connections stay up
//! (the node's `relays[0].since` does not move); a node reload applies new deadlines and
//! refuses a changed data directory in one line, and keeps running; a node reload adds and
//! removes relays while the link to an unchanged relay stays up; `hotline certs revoke` then
//! `hotline-relay reload` closes the revoked node as revoked while its partner stays up.
#![expect(clippy::unwrap_used, reason = "a failed step is the test failing")]

use std::process::Command;

use hotline_e2e::{Exercise, PATIENCE, bin_dir};
use nix::sys::signal::Signal;

fn relay_reload(ex: &Exercise) -> std::process::Output {
    Command::new(bin_dir().join("hotline-relay"))
        .args(["reload", "--config"])
        .arg(ex.path("relay.toml"))
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_reload_unpairs_one_hotline_and_leaves_the_other_connected() {
    let ex = Exercise::new(&["us", "jp", "fr", "uk"], &["us:jp", "fr:uk"]);
    let mut relay = ex.start_relay();
    let mut nodes = [
        ex.start_node("us"),
        ex.start_node("jp"),
        ex.start_node("fr"),
        ex.start_node("uk"),
    ];
    ex.wait_links_up(&["us", "jp", "fr", "uk"]).await;
    let since = ex.status("us").await.relays[0].since.clone();

    // SIGHUP with nothing changed: the relay stays up, nobody is dropped.
    relay.signal(Signal::SIGHUP);
    relay.wait_log("reloaded", PATIENCE).unwrap();
    assert!(relay.running(), "SIGHUP must not kill the relay");

    // Remove fr:uk.
    let text = std::fs::read_to_string(ex.path("relay.toml")).unwrap();
    let cut = text
        .find("[[hotline]]\na = \"fr\"")
        .expect("the fr:uk hotline");
    let end = text[cut..].find("b = \"uk\"\n").unwrap() + cut + "b = \"uk\"\n".len();
    std::fs::write(
        ex.path("relay.toml"),
        format!("{}{}", &text[..cut], &text[end..]),
    )
    .unwrap();
    let out = relay_reload(&ex);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("reloaded: "), "{stdout}");
    assert!(stdout.contains("closed unpaired: fr uk"), "{stdout}");

    // fr's node says why: unpaired, then (redialling) not configured.
    let line = nodes[2].wait_log("no longer pairs", PATIENCE).unwrap();
    assert!(line.contains("closed by relay"), "{line}");
    let s = ex
        .wait_status("fr", "the typed close", |s| {
            s.relays[0].last_error.as_deref().is_some_and(|e| {
                e.contains("no longer pairs") || e.contains("no configured hotline")
            })
        })
        .await;
    assert!(!s.relays[0].connected, "{s:?}");
    // us and jp never reconnected.
    let us = ex.status("us").await;
    assert!(us.relays[0].connected, "{us:?}");
    assert_eq!(us.relays[0].since, since, "us kept its connection");
    ex.wait_links_up(&["us", "jp"]).await;

    // A broken file: one error line, exit 1, the relay keeps serving.
    std::fs::write(
        ex.path("relay.toml"),
        text.replace("[[hotline]]", "[[hotlines]]"),
    )
    .unwrap();
    let out = relay_reload(&ex);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("error: ") && stderr.lines().count() == 1,
        "{stderr}"
    );
    assert_eq!(ex.status("us").await.relays[0].since, since);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_sighup_reloads_deadlines_refuses_a_new_data_dir_and_never_kills_it() {
    let ex = Exercise::new(&["us", "jp"], &[]);
    let [_relay, mut us, _jp] = ex.start_linked("us", "jp").await;
    let since = ex.status("us").await.relays[0].since.clone();

    ex.edit_config("us", |t| {
        let mut flash = toml::Table::new();
        flash.insert("delivered_ms".into(), 20_000.into());
        let mut deadlines = toml::Table::new();
        deadlines.insert("flash".into(), flash.into());
        t.insert("deadlines".into(), deadlines.into());
    });
    us.signal(Signal::SIGHUP);
    let line = us.wait_log("reloaded", PATIENCE).unwrap();
    assert!(line.contains("applied: deadlines"), "{line}");
    assert!(us.running(), "SIGHUP must not kill the node");

    ex.edit_config("us", |t| {
        t.insert("data_dir".into(), "data/elsewhere".into());
    });
    us.signal(Signal::SIGHUP);
    let line = us.wait_log("reload refused", PATIENCE).unwrap();
    assert!(line.contains("data_dir cannot change on reload"), "{line}");
    assert!(us.running());
    let s = ex.status("us").await;
    assert!(s.connected, "{s:?}");
    assert_eq!(
        s.relays[0].since, since,
        "the link stayed up through both reloads"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_sighup_applies_a_changed_relay_list_and_keeps_the_unchanged_link() {
    let ex = Exercise::new(&["us", "jp"], &[]);
    let [_relay, mut us, _jp] = ex.start_linked("us", "jp").await;
    let since = ex.status("us").await.relays[0].since.clone();
    let live = ex.relay_addr().to_string();
    // Nothing listens there (a UDP port bound and held by this test, never answered).
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead = silent.local_addr().unwrap().to_string();
    let set_relays = |addrs: &[&str]| {
        ex.edit_config("us", |t| {
            t.remove("relay");
            let list: Vec<toml::Value> = addrs
                .iter()
                .map(|a| {
                    let mut r = toml::Table::new();
                    r.insert("addr".into(), (*a).into());
                    r.into()
                })
                .collect();
            t.insert("relays".into(), list.into());
        });
    };

    // Add a second relay: the first link stays up, the second is dialled.
    set_relays(&[&live, &dead]);
    us.signal(Signal::SIGHUP);
    let line = us.wait_log("reloaded", PATIENCE).unwrap();
    assert!(line.contains("applied: relays"), "{line}");
    let s = ex
        .wait_status("us", "two relays", |s| s.relays.len() == 2)
        .await;
    assert!(s.relays[0].connected, "{s:?}");
    assert_eq!(
        s.relays[0].since, since,
        "the unchanged relay's link stayed up"
    );
    assert_eq!(s.relays[1].addr, dead);
    assert!(!s.relays[1].connected);

    // Remove the live relay: the node disconnects from it, and keeps running.
    set_relays(&[&dead]);
    us.signal(Signal::SIGHUP);
    us.wait_log("reloaded", PATIENCE).unwrap();
    let s = ex
        .wait_status("us", "only the dead relay", |s| {
            s.relays.len() == 1 && !s.connected
        })
        .await;
    assert_eq!(s.relays[0].addr, dead, "{s:?}");

    // And back: the node reconnects to it.
    set_relays(&[&live]);
    us.signal(Signal::SIGHUP);
    us.wait_log("reloaded", PATIENCE).unwrap();
    ex.wait_links_up(&["us"]).await;
    assert!(us.running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certs_revoke_then_relay_reload_closes_the_revoked_node_and_keeps_its_partner() {
    let ex = Exercise::new(&["us", "jp"], &[]);
    let [_relay, mut us, _jp] = ex.start_linked("us", "jp").await;
    let jp_since = ex.status("jp").await.relays[0].since.clone();
    let dir = ex.dir.path().to_str().unwrap().to_owned();
    let out = hotline_e2e::hotline(&["certs", "revoke", "--ca", &dir, "us"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = relay_reload(&ex);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("closed revoked: us"), "{stdout}");
    // us's node says why, with the relay's typed reason.
    let line = us.wait_log("was revoked", PATIENCE).unwrap();
    assert!(line.contains("closed by relay"), "{line}");
    ex.wait_status("us", "us refused as revoked", |s| {
        !s.connected
            && s.last_error
                .as_deref()
                .is_some_and(|e| e.to_lowercase().contains("revoked"))
    })
    .await;
    let jp = ex.status("jp").await;
    assert!(jp.relays[0].connected, "{jp:?}");
    assert_eq!(jp.relays[0].since, jp_since, "jp kept its connection");
}
