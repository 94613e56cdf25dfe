//! The `hotline-relay` binary: `check` verdicts and a run stopped by SIGTERM.

#![expect(
    clippy::unwrap_used,
    reason = "helpers outside #[test] functions fail the test loudly too"
)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hotline_relay::testing::{RELAY_TOML, TestPki};

const BIN: &str = env!("CARGO_BIN_EXE_hotline-relay");

fn setup(config: &str) -> TestPki {
    let pki = TestPki::generate(&["us", "jp"]);
    pki.write_config(config);
    pki
}

fn check(dir: &Path) -> std::process::Output {
    Command::new(BIN)
        .args(["check", "--config"])
        .arg(dir.join("relay.toml"))
        .output()
        .unwrap()
}

#[test]
fn check_prints_one_ok_line() {
    let dir = setup(RELAY_TOML);
    let out = check(dir.path());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.starts_with("ok: "), "{stdout}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
}

#[test]
fn check_names_what_is_wrong_in_one_line() {
    for (config, expect) in [
        (RELAY_TOML.replace("relay.key", "us.key"), "us.key"),
        (RELAY_TOML.replace("ca.pem", "nope.pem"), "nope.pem"),
        (format!("colour = \"red\"\n{RELAY_TOML}"), "colour"),
    ] {
        let dir = setup(&config);
        let out = check(dir.path());
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.starts_with("error: "), "{stderr}");
        assert!(stderr.contains(expect), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
}

#[test]
fn run_stops_cleanly_on_sigterm() {
    let dir = setup(RELAY_TOML);
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(dir.path().join("relay.toml"))
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert_ne!(
            stderr.read_line(&mut line).unwrap(),
            0,
            "relay exited early"
        );
        if line.contains("relay listening") {
            break;
        }
    }
    assert!(dir.path().join("data/relay/reset.key").exists());
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "relay did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{rest}");
    assert!(rest.contains("shutting down"), "{rest}");
}
