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

/// `--log-format json` writes one JSON object per line; `status` (text and `--json`) lists the
/// hotline's connected endpoints, fetched from the running relay's metrics listener.
#[test]
fn json_logs_and_status_of_a_running_relay() {
    // `status` needs a fixed port in the file: take a free one.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = RELAY_TOML.replace(
        "metrics = \"127.0.0.1:0\"",
        &format!("metrics = \"127.0.0.1:{port}\""),
    );
    let dir = setup(&config);
    let relay_toml = dir.path().join("relay.toml");
    let mut child = Command::new(BIN)
        .args(["--log-format", "json", "--config"])
        .arg(&relay_toml)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let listening = loop {
        line.clear();
        assert_ne!(
            stderr.read_line(&mut line).unwrap(),
            0,
            "relay exited early"
        );
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{v}");
        if v["fields"]["message"] == "relay listening" {
            break v;
        }
    };
    assert_eq!(
        listening["fields"]["metrics"],
        format!("127.0.0.1:{port}"),
        "{listening}"
    );
    let addr: std::net::SocketAddr = listening["fields"]["addr"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (_us, _jp) = runtime.block_on(async {
        let connect = |name| {
            hotline_relay::testing::TestNode::connect(addr, dir.path(), dir.path(), name, None)
        };
        (connect("us").await.unwrap(), connect("jp").await.unwrap())
    });
    let status = |args: &[&str]| {
        let o = Command::new(BIN)
            .arg("status")
            .args(args)
            .arg("--config")
            .arg(&relay_toml)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    // The relay registers a node just after its hello: wait for both to show.
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = status(&[]);
        if text.matches("connected from 127.0.0.1:").count() == 2 || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines[0].contains("relay.redb"), "{text}");
    assert!(
        lines[1].starts_with("hotline us:jp: queued us→jp 0 B"),
        "{text}"
    );
    assert!(lines[2].trim_start().starts_with("us "), "{text}");
    assert!(lines[3].trim_start().starts_with("jp "), "{text}");
    for l in &lines[2..] {
        assert!(l.contains("connected from 127.0.0.1:"), "{text}");
        assert!(l.contains("queued control"), "{text}");
    }
    let json: hotline_relay::status::Status = serde_json::from_str(&status(&["--json"])).unwrap();
    assert!(
        json.hotlines[0]
            .endpoints
            .iter()
            .all(|e| e.connection.is_some())
    );

    child.kill().unwrap();
    child.wait().unwrap();
    // With the relay gone, status says so in one line.
    let o = Command::new(BIN)
        .args(["status", "--config"])
        .arg(&relay_toml)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: GET http://127.0.0.1:"), "{err}");
}
