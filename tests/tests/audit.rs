//! `hotline audit verify|export` on real nodes, running and stopped.

use hotline_client::control::WaitLevel;
use hotline_e2e::{Exercise, Msg, Precedence, hotline, send_all};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_log_verifies_live_and_offline_and_exports_json() {
    let ex = Exercise::new(&["us", "jp"], &[]);
    let [_relay, mut us, _jp] = ex.start_linked("us", "jp").await;
    let msgs: Vec<Msg> = (0..20)
        .map(|i| Msg::new(Precedence::Priority, format!("a{i}")))
        .collect();
    let mut c = ex.control("us").await;
    send_all(&mut c, &msgs, Some(WaitLevel::Delivered))
        .await
        .unwrap();
    // Wait for a link test carrying jp's (now non-empty) audit head.
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    let cfg = ex.config("us");
    let out = hotline(&["audit", "verify", "--config", cfg.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("audit log ok:"), "{stdout}");

    let out = hotline(&[
        "audit",
        "export",
        "--json",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let sent = lines
        .iter()
        .filter(|v| v["type"] == "entry" && v["event"].get("envelope_sent").is_some())
        .count();
    assert_eq!(sent, 20, "every envelope sent is in the log");
    assert!(
        lines.iter().any(|v| v["type"] == "signed_head"),
        "our head is signed"
    );
    assert!(
        lines.iter().any(|v| v["type"] == "partner_head"),
        "jp's signed head is stored"
    );
    let report = lines.last().unwrap();
    assert_eq!(report["type"], "verify");
    assert!(report["report"]["first_bad"].is_null());

    // Offline: the CLI opens the store itself.
    us.stop();
    let out = hotline(&["audit", "verify", "--config", cfg.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
