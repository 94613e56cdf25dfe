//! The systemd units in `deploy/` pass `systemd-analyze verify` with no warning about them.
//!
//! `systemd-analyze verify` checks that every `ExecStart=` binary exists, so the units are copied
//! into a temporary directory with `/usr/local/bin/` rewritten to the directory of the binaries
//! just built. Lines it prints about the host (other units, missing targets) are ignored; any
//! line naming one of our unit files fails the test. Without `systemd-analyze` on the machine
//! the test prints a note and passes.

use std::path::{Path, PathBuf};
use std::process::Command;

use hotline_e2e::bin_dir;

const UNITS: [&str; 2] = ["hotline-relay.service", "hotline-node@.service"];

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let probe = Command::new("systemd-analyze").arg("--version").output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("note: systemd-analyze not found; the units in deploy/ were not verified");
        return;
    }
    let bins = bin_dir();
    let dir = tempfile::tempdir().unwrap();
    for unit in UNITS {
        let text = std::fs::read_to_string(deploy_dir().join(unit)).unwrap();
        assert!(
            text.contains("ExecStart=/usr/local/bin/"),
            "{unit}: ExecStart should run a binary in /usr/local/bin"
        );
        let text = text.replace("/usr/local/bin/", &format!("{}/", bins.display()));
        std::fs::write(dir.path().join(unit), text).unwrap();
    }
    // The template is verified through an instance; systemd loads it from the same directory.
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.path().join("hotline-relay.service"))
        .arg(dir.path().join("hotline-node@us.service"))
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
        .expect("running systemd-analyze verify");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let ours: Vec<&str> = all
        .lines()
        .filter(|line| line.contains("hotline-relay") || line.contains("hotline-node@"))
        .collect();
    assert!(
        ours.is_empty(),
        "systemd-analyze verify complained about our units:\n{}",
        ours.join("\n")
    );
    assert!(
        output.status.success(),
        "systemd-analyze verify failed:\n{all}"
    );
}

#[test]
fn units_reload_with_sighup() {
    // Both processes reload on SIGHUP (tests/tests/reload.rs, crates/relay/tests/reload.rs), so
    // `systemctl reload` sends it.
    for unit in UNITS {
        let text = std::fs::read_to_string(deploy_dir().join(unit)).unwrap();
        let reload: Vec<&str> = text
            .lines()
            .filter(|line| line.trim_start().starts_with("ExecReload="))
            .collect();
        assert_eq!(reload, ["ExecReload=/bin/kill -HUP $MAINPID"], "{unit}");
    }
}
