//! A short run of every scenario through the built binary, against real `hotline-relay` and
//! `hotline node` processes: zero lost, duplicated or out-of-order messages, a well-formed
//! JSON report and an SVG. Tiny rates and a couple of seconds each; nothing here judges
//! timing.
//!
//! Needs `hotline` and `hotline-relay` next to the bench binary: `cargo build --workspace
//! --bins` (make test does).
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a failed step is the test failing"
)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

use serde_json::Value;

/// One scenario at a time: they share two cores with the processes they start.
static SERIAL: Mutex<()> = Mutex::new(());

fn bench() -> PathBuf {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_hotline-bench"));
    let dir = exe.parent().expect("binary directory");
    for bin in ["hotline", "hotline-relay"] {
        assert!(
            dir.join(bin).exists(),
            "{} is missing: run `cargo build --workspace --bins` before these tests (make test does)",
            dir.join(bin).display()
        );
    }
    exe
}

fn run(args: &[&str]) -> Value {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.json");
    let svg = dir.path().join("out.svg");
    let out = Command::new(bench())
        .args(args)
        .arg("--json")
        .arg(&json)
        .arg("--plot")
        .arg(&svg)
        .args(["--drain", "60"])
        .output()
        .expect("running hotline-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "hotline-bench {args:?} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("latency (ms)"), "no table:\n{stdout}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    check_schema(&report, args[0]);
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    report
}

fn check_schema(r: &Value, scenario: &str) {
    assert_eq!(r["scenario"], scenario);
    assert!(r["params"].is_object());
    let c = &r["counts"];
    for k in [
        "sent",
        "accepted",
        "delivered",
        "lost",
        "duplicated",
        "order_violations",
    ] {
        assert!(c[k].is_u64(), "counts.{k} in {r}");
    }
    for k in ["lost", "duplicated", "order_violations", "unconfirmed"] {
        assert_eq!(c[k], 0, "counts.{k}: {c}");
    }
    assert!(c["sent"].as_u64().unwrap() > 0);
    assert_eq!(c["delivered"], c["sent"], "{c}");
    assert!(r["throughput_msgs_per_s"].is_number());
    assert!(r["relay_rss_bytes"].is_u64() || r["relay_rss_bytes"].is_null());
    let latency = r["latency_us"].as_object().expect("latency_us");
    assert!(latency["round_trip"]["all"]["count"].as_u64().unwrap() > 0);
    for (level, groups) in latency {
        assert!(
            ["accepted", "delivered", "round_trip", "acknowledged"].contains(&level.as_str()),
            "{level}"
        );
        for (group, s) in groups.as_object().unwrap() {
            assert!(
                ["all", "routine", "priority", "immediate", "flash"].contains(&group.as_str()),
                "{group}"
            );
            for k in ["count", "p50", "p90", "p99", "p999", "max"] {
                assert!(s[k].is_u64(), "{level}.{group}.{k}");
            }
        }
    }
    assert_eq!(r["ok"], true);
}

#[test]
fn baseline_with_auto_ack_and_floor() {
    let r = run(&[
        "baseline",
        "--rate",
        "40",
        "--duration",
        "2",
        "--warmup",
        "0.5",
        "--mix",
        "routine=3,flash=1",
        "--auto-ack",
        "--floor",
    ]);
    assert_eq!(r["counts"]["acknowledged"], 80);
    assert!(
        r["latency_us"]["acknowledged"]["flash"]["count"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(r["relay_rss_bytes"].as_u64().unwrap() > 0);
    assert!(
        r["floor"]["latency_us"]["round_trip"]["all"]["count"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(r["overhead_round_trip_p99_ratio"].is_number());
    // `--floor` alone runs both floors; the round trip is quoted against each.
    assert!(
        r["durable_floor"]["latency_us"]["round_trip"]["all"]["count"]
            .as_u64()
            .unwrap()
            > 0
    );
    for floor in ["bare", "durable"] {
        for p in ["p50", "p99", "p999"] {
            assert!(r["floor_ratios"][floor][p].is_number(), "{floor} {p}: {r}");
        }
    }
}

#[test]
fn flood() {
    let r = run(&[
        "flood",
        "--duration",
        "2",
        "--idle",
        "1.5",
        "--probe",
        "1.5",
        "--probe-window",
        "100",
        "--flash-rate",
        "20",
        "--warmup",
        "0.5",
    ]);
    assert!(r["max_throughput_msgs_per_s"].as_f64().unwrap() > 0.0);
    assert!(r["flash_idle"]["round_trip"]["count"].as_u64().unwrap() > 0);
    assert!(r["flash_flood"]["round_trip"]["count"].as_u64().unwrap() > 0);
    assert!(r["queues"]["relay_queued_frames_max"].is_object());
    assert_eq!(r["phases"].as_array().unwrap().len(), 3);
}

#[test]
fn scale() {
    let r = run(&[
        "scale",
        "--steps",
        "1,3",
        "--rate",
        "30",
        "--duration",
        "1.5",
        "--warmup",
        "0.5",
        "--settle",
        "0.5",
    ]);
    let steps = r["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2);
    assert_eq!(steps[1]["endpoints"], 6);
    assert!(steps[1]["relay_rss_per_endpoint_bytes"].is_number());
}

#[test]
fn pairs_spread_over_processes() {
    let r = run(&[
        "baseline",
        "--pairs",
        "3",
        "--processes",
        "2",
        "--rate",
        "60",
        "--duration",
        "1.5",
        "--warmup",
        "0.5",
    ]);
    assert_eq!(r["params"]["pairs"], 3);
}

#[test]
fn soak() {
    let r = run(&[
        "soak",
        "--rate",
        "30",
        "--duration",
        "3",
        "--interval",
        "1",
        "--warmup",
        "0.5",
    ]);
    assert!(r["intervals"].as_array().unwrap().len() >= 2);
}

#[test]
fn floor() {
    let r = run(&[
        "floor",
        "--rate",
        "200",
        "--duration",
        "1.5",
        "--warmup",
        "0.5",
    ]);
    assert!(r["relay_rss_bytes"].is_null());
    assert_eq!(r["counts"]["delivered"], 300);
}

#[test]
fn durable_floor() {
    let r = run(&[
        "floor",
        "--durable",
        "--rate",
        "200",
        "--duration",
        "1.5",
        "--warmup",
        "0.5",
    ]);
    assert_eq!(r["counts"]["delivered"], 300);
    let d = &r["durable_floor"];
    assert_eq!(d["name"], "durable_floor");
    assert_eq!(d["latency_us"]["round_trip"]["all"]["count"], 200);
    for side in ["sender", "receiver"] {
        assert_eq!(d["group_commit"][side]["records"], 300, "{side}");
        assert!(
            d["group_commit"][side]["fdatasync_us"]["count"]
                .as_u64()
                .unwrap()
                > 0
        );
    }
}

#[test]
fn durable_floor_refuses_tmpfs() {
    let shm = std::path::Path::new("/dev/shm");
    let on_tmpfs = std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            l.split_whitespace()
                .take(3)
                .eq(["tmpfs", "/dev/shm", "tmpfs"])
        });
    if !shm.is_dir() || !on_tmpfs {
        eprintln!("skipped: /dev/shm is not tmpfs here");
        return;
    }
    let out = Command::new(bench())
        .args([
            "floor",
            "--durable",
            "--floor-dir",
            "/dev/shm",
            "--duration",
            "2",
        ])
        .output()
        .expect("running hotline-bench");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "the durable floor needs a real disk: /dev/shm is on tmpfs, where fsync is free"
        ),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
}
