//! `relay.toml` parsing: defaults, ranges, paths and the example file.

use hotline_relay::testing::{RELAY_TOML as MINIMAL, TestPki};

use super::*;

fn pki_dir() -> TestPki {
    TestPki::generate(&["us", "jp"])
}

fn load_text(dir: &Path, text: &str) -> anyhow::Result<ServerConfig> {
    let path = dir.join("relay.toml");
    std::fs::write(&path, text).unwrap();
    load(&path)
}

#[test]
fn minimal_file_gets_defaults_and_resolved_paths() {
    let dir = pki_dir();
    let c = load_text(
        dir.path(),
        &MINIMAL.replace("metrics = \"127.0.0.1:0\"\n", ""),
    )
    .unwrap();
    assert_eq!(c.data_dir, dir.path().join("data/relay"));
    assert_eq!(c.timeouts, Timeouts::default());
    assert_eq!(c.max_queue_bytes_per_endpoint, 256 * 1024 * 1024);
    assert_eq!(c.max_queued_bytes_total, 1024 * 1024 * 1024);
    assert_eq!(c.max_queued_bytes_in_memory, 64 * 1024 * 1024);
    assert_eq!(c.ttl, Ttl::default());
    assert_eq!(c.ttl.routine, Some(Duration::from_secs(86_400)));
    assert_eq!(c.metrics, Some(DEFAULT_METRICS.parse().unwrap()));
    assert!(c.crls.is_empty());
    assert_eq!(c.hotlines.len(), 1);
}

#[test]
fn the_example_file_parses() {
    let example = include_str!("../../../../deploy/relay.example.toml");
    let config: Config = toml::from_str(example).unwrap();
    assert_eq!(config.keep_alive_ms, 1000);
    assert_eq!(config.idle_timeout_ms, 5000);
    assert_eq!(config.max_queue_bytes_per_endpoint, 268_435_456);
    assert_eq!(config.max_queued_bytes_total, 1_073_741_824);
    assert_eq!(config.max_queued_bytes_in_memory, 67_108_864);
    assert_eq!(config.ttl.into_ttl(), Ok(Ttl::default()));
    assert_eq!(config.hotlines.len(), 2);
}

#[test]
fn ttl_keys_are_seconds_and_zero_is_never() {
    let dir = pki_dir();
    let text = MINIMAL.replace(
        "[[hotline]]",
        "[ttl]\nroutine_s = 60\nflash_s = 0\n[[hotline]]",
    );
    let c = load_text(dir.path(), &text).unwrap();
    assert_eq!(c.ttl.routine, Some(Duration::from_secs(60)));
    assert_eq!(c.ttl.priority, Some(Ttl::DEFAULT_PRIORITY));
    assert_eq!(c.ttl.flash, None);
    let bad = MINIMAL.replace("[[hotline]]", "[ttl]\nroutine = 60\n[[hotline]]");
    let e = format!("{:#}", load_text(dir.path(), &bad).unwrap_err());
    assert!(e.contains("routine") && e.contains("line"), "{e}");
    // The same one-line form as the node's file: file, line, key with its table, expectation.
    let e = format!(
        "{:#}",
        load_text(
            dir.path(),
            &MINIMAL.replace("[[hotline]]", "[ttl]\nflash_s = \"x\"\n[[hotline]]")
        )
        .unwrap_err()
    );
    assert!(
        e.contains("relay.toml line ")
            && e.contains(", key [ttl] flash_s: invalid type: string \"x\", expected u64")
            && !e.contains('\n'),
        "{e}"
    );
}

#[test]
fn errors_are_one_line_naming_the_problem() {
    let dir = pki_dir();
    let err = |text: &str| format!("{:#}", load_text(dir.path(), text).unwrap_err());

    let e = err(&format!("listen_port = 4\n{MINIMAL}"));
    assert!(e.contains("listen_port") && e.contains("line"), "{e}");
    assert!(!e.contains('\n'), "{e}");

    let e = err(&MINIMAL.replace("b = \"jp\"", "b = \"us\""));
    assert!(e.contains("us:us"), "{e}");

    let e = err(&MINIMAL.replace("b = \"jp\"", "b = \"JP\""));
    assert!(e.contains("line 10"), "{e}");

    let e = err(&MINIMAL.replace("relay.key", "us.key"));
    assert!(e.contains("relay.pem") && e.contains("us.key"), "{e}");

    let e = err(&MINIMAL.replace("ca.pem", "missing.pem"));
    assert!(e.contains("missing.pem"), "{e}");

    let e = err(&format!("keep_alive_ms = 9000\n{MINIMAL}"));
    assert!(e.contains("keep_alive_ms"), "{e}");
}

#[test]
fn out_of_range_numbers_name_the_key_and_range() {
    let dir = pki_dir();
    let err = |text: &str| format!("{:#}", load_text(dir.path(), text).unwrap_err());

    let e = err(&format!(
        "idle_timeout_ms = 18446744073709551615\n{MINIMAL}"
    ));
    assert!(
        e.contains("idle_timeout_ms must be between 1000 and 3600000, got 18446744073709551615"),
        "{e}"
    );
    let e = err(&format!("keep_alive_ms = 0\n{MINIMAL}"));
    assert!(
        e.contains("keep_alive_ms must be between 100 and 60000, got 0"),
        "{e}"
    );
    let e = err(&format!("max_queue_bytes_per_endpoint = 1\n{MINIMAL}"));
    assert!(
        e.contains("max_queue_bytes_per_endpoint must be between 1048576 and 68719476736, got 1"),
        "{e}"
    );
    let e = err(&format!("max_queued_bytes_total = 0\n{MINIMAL}"));
    assert!(
        e.contains("max_queued_bytes_total must be between 16777216 and 1099511627776, got 0"),
        "{e}"
    );
    let e = err(&format!("max_queued_bytes_in_memory = 1000\n{MINIMAL}"));
    assert!(
        e.contains(
            "max_queued_bytes_in_memory must be between 1048576 and 1099511627776, got 1000"
        ),
        "{e}"
    );
    let e = err(&MINIMAL.replace(
        "[[hotline]]",
        "[ttl]\nflash_s = 18446744073709551615\n[[hotline]]",
    ));
    assert!(
        e.contains("flash_s (0 = until delivered) must be between 1 and 31622400"),
        "{e}"
    );
    assert!(!e.contains('\n'), "{e}");
}

#[test]
fn handshake_and_identity_limits_are_read_and_range_checked() {
    let dir = pki_dir();
    let with = |section: &str| MINIMAL.replace("[[hotline]]", &format!("{section}\n[[hotline]]"));
    let c = load_text(
        dir.path(),
        &with("[handshake]\nmax_per_identity = 2\nhello_timeout_ms = 2000\n[identity]\nflips = 5\nbackoff_s = 10"),
    )
    .unwrap();
    assert_eq!(c.handshake.max_per_identity, 2);
    assert_eq!(c.handshake.hello_timeout, Duration::from_secs(2));
    assert_eq!(
        c.handshake.max_handshakes,
        HandshakeLimits::default().max_handshakes
    );
    assert_eq!(c.identity.flips, 5);
    assert_eq!(c.identity.backoff, Duration::from_secs(10));
    assert_eq!(c.identity.window, IdentityLimits::default().window);

    let err = |text: &str| format!("{:#}", load_text(dir.path(), text).unwrap_err());
    let e = err(&with("[handshake]\nhello_timeout_ms = 0"));
    assert!(
        e.contains("[handshake] hello_timeout_ms must be between 500 and 60000, got 0"),
        "{e}"
    );
    let e = err(&with("[identity]\nbackoff_s = 100\nmax_backoff_s = 10"));
    assert!(
        e.contains("max_backoff_s must be at least backoff_s"),
        "{e}"
    );
    let e = err(&with("[identity]\nflipz = 1"));
    assert!(e.contains("flipz"), "{e}");
}

#[test]
fn dev_zero_as_ca_crl_or_config_is_refused_naming_the_path() {
    let dir = pki_dir();
    let started = std::time::Instant::now();
    let err = |text: &str| format!("{:#}", load_text(dir.path(), text).unwrap_err());
    let e = err(&MINIMAL.replace("ca.pem", "/dev/zero"));
    assert!(
        e.contains("/dev/zero") && e.contains("4194304-byte limit"),
        "{e}"
    );
    let e = err(&format!("crl = \"/dev/zero\"\n{MINIMAL}"));
    assert!(e.contains("/dev/zero") && e.contains("limit"), "{e}");
    let e = format!("{:#}", load(Path::new("/dev/zero")).unwrap_err());
    assert!(
        e.contains("/dev/zero") && e.contains("1048576-byte limit"),
        "{e}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn metrics_is_an_address_or_off_and_loopback_unless_allowed() {
    let dir = pki_dir();
    let with = |line: &str| MINIMAL.replace("metrics = \"127.0.0.1:0\"", line);
    let c = load_text(dir.path(), &with("metrics = \"off\"")).unwrap();
    assert_eq!(c.metrics, None);
    let c = load_text(dir.path(), &with("metrics = \"[::1]:9000\"")).unwrap();
    assert_eq!(c.metrics, Some("[::1]:9000".parse().unwrap()));
    for (line, expect) in [
        ("metrics = \"on\"", "expected an IP address with a port"),
        (
            "metrics = \"localhost:9464\"",
            "expected an IP address with a port",
        ),
        ("metrics = \"0.0.0.0:9464\"", "metrics_allow_remote = true"),
        ("metrics = 9464", "metrics"),
    ] {
        let e = format!("{:#}", load_text(dir.path(), &with(line)).unwrap_err());
        assert!(e.contains(expect), "{line}: {e}");
        assert_eq!(e.lines().count(), 1, "{e}");
    }
    let allowed = with("metrics = \"0.0.0.0:9464\"\nmetrics_allow_remote = true");
    let c = load_text(dir.path(), &allowed).unwrap();
    assert_eq!(c.metrics, Some("0.0.0.0:9464".parse().unwrap()));
    let path = dir.path().join("relay.toml");
    std::fs::write(&path, with("metrics = \"off\"")).unwrap();
    assert_eq!(load_metrics_addr(&path).unwrap(), None);
}
