//! The CLI against a stopped node, bad arguments and bad configs: one clear line, non-zero exit;
//! and what an operator sees of `send --wait`, multi-line bodies and `inbox` filters.

#![expect(clippy::unwrap_used, reason = "a failed step is the test failing")]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use hotline_e2e::{Exercise, PATIENCE, bin_dir, certs_init, hotline};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn cli_against_a_stopped_node_says_so_in_one_line() {
    let ex = Exercise::new(&["us", "jp"], &[]);
    let cfg = ex.config("us");
    for args in [
        vec!["status", "--config", cfg.to_str().unwrap()],
        vec!["send", "--config", cfg.to_str().unwrap(), "hello"],
        vec!["inbox", "--config", cfg.to_str().unwrap()],
        vec!["ack", "--config", cfg.to_str().unwrap(), "jp:main:flash:1"],
    ] {
        let o = hotline(&args);
        assert!(!o.status.success(), "{args:?} should fail");
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.starts_with("error: node is not running"), "{err}");
    }
}

#[test]
fn bad_config_is_one_line_naming_the_problem() {
    let ex = Exercise::new(&["us", "jp"], &[]);
    let cfg = ex.config("us");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("{text}\nrelay_nmae = \"x\"\n")).unwrap();
    let o = hotline(&["node", "--config", cfg.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("relay_nmae"), "names the unknown key: {err}");
    assert_eq!(
        err.trim()
            .lines()
            .filter(|l| l.starts_with("error:"))
            .count(),
        1,
        "{err}"
    );

    std::fs::write(&cfg, text.replace("us.pem", "missing.pem")).unwrap();
    let o = hotline(&["node", "--config", cfg.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("missing.pem"), "{}", stderr(&o));

    // A value of the wrong type: file, line, key and what was expected, on one line.
    std::fs::write(&cfg, format!("keep_alive_ms = \"soon\"\n{text}")).unwrap();
    let o = hotline(&["node", "--config", cfg.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(
            "us.toml line 1, key keep_alive_ms: invalid type: string \"soon\", expected u64"
        ),
        "{err}"
    );
}

#[test]
fn certs_init_refuses_to_overwrite_and_validates_pairs() {
    let ex = Exercise::new(&["us", "jp"], &[]);
    let out = ex.dir.path().to_str().unwrap();
    let o = certs_init(out, &["us", "jp"], &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--force"), "{}", stderr(&o));
    let o = certs_init(out, &["a", "b", "c"], &["--force"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--pair"), "{}", stderr(&o));
}

#[test]
fn second_node_on_the_same_data_dir_exits_with_one_line() {
    let ex = Exercise::new(&["us", "jp"], &[]);
    let _first = ex.start_node("us");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(ex.control("us"));
    let o = hotline(&["node", "--config", ex.config("us").to_str().unwrap()]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("already running"), "{err}");
}

/// Runs `hotline` with `args`, extra environment `env`, and `stdin` as its standard input.
fn hotline_with(args: &[&str], env: &[(&str, &Path)], stdin: &str) -> Output {
    let mut child = Command::new(bin_dir().join("hotline"))
        .args(args)
        .env_remove("HOTLINE_CONFIG")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn every_subcommand_help_has_an_example_and_send_states_the_body_limit() {
    for path in [
        &["certs"][..],
        &["certs", "init"],
        &["node"],
        &["send"],
        &["inbox"],
        &["ack"],
        &["status"],
        &["rekey"],
        &["audit"],
        &["audit", "verify"],
        &["audit", "export"],
        &["demo"],
    ] {
        let mut args = path.to_vec();
        args.push("--help");
        let o = hotline(&args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        assert!(
            stdout(&o).contains("Example: hotline "),
            "{args:?}:\n{}",
            stdout(&o)
        );
    }
    let help = stdout(&hotline(&["send", "--help"]));
    let limit = hotline_proto::wire::MAX_BODY_LEN.to_string();
    assert!(
        help.contains(&limit),
        "send --help names the {limit}-byte limit:\n{help}"
    );
    assert!(help.contains("HOTLINE_CONFIG"), "{help}");
}

#[test]
fn hotline_config_is_the_default_config_and_timeout_needs_wait() {
    let ex = Exercise::new(&["us", "jp"], &[]);
    let cfg = ex.config("us");
    let env = [("HOTLINE_CONFIG", cfg.as_path())];
    for args in [
        &["status"][..],
        &["rekey"],
        &["send", "hello"],
        &["inbox"],
        &["ack", "jp:main:flash:1"],
    ] {
        // With the variable, the command finds the (stopped) node's socket from the config.
        let o = hotline_with(args, &env, "");
        assert!(
            stderr(&o).starts_with("error: node is not running"),
            "{args:?}: {}",
            stderr(&o)
        );
        // Without it, --config is missing.
        let o = hotline_with(args, &[], "");
        assert!(!o.status.success());
        assert!(stderr(&o).contains("--config"), "{args:?}: {}", stderr(&o));
    }
    let o = hotline_with(&["audit", "verify"], &env, "");
    assert!(
        o.status.success(),
        "audit verify reads the store: {}",
        stderr(&o)
    );

    let o = hotline_with(&["send", "--timeout", "5", "hello"], &env, "");
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("--timeout") && err.contains("--wait"), "{err}");
}

#[test]
fn os_errors_are_printed_once() {
    let ex = Exercise::new(&["us", "jp"], &[]);
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let relay_toml = ex.path("relay.toml");
    let mut t: toml::Table = std::fs::read_to_string(&relay_toml)
        .unwrap()
        .parse()
        .unwrap();
    t.insert(
        "listen".into(),
        taken.local_addr().unwrap().to_string().into(),
    );
    std::fs::write(&relay_toml, toml::to_string(&t).unwrap()).unwrap();
    let o = Command::new(bin_dir().join("hotline-relay"))
        .args(["--config", relay_toml.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = stderr(&o);
    assert_eq!(err.matches("os error").count(), 1, "{err}");
    assert!(err.contains("Address already in use"), "{err}");

    let missing = ex.path("missing.toml");
    for o in [
        hotline(&["status", "--config", missing.to_str().unwrap()]),
        Command::new(bin_dir().join("hotline-relay"))
            .args(["--config", missing.to_str().unwrap()])
            .output()
            .unwrap(),
    ] {
        let err = stderr(&o);
        assert_eq!(err.matches("os error 2").count(), 1, "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

/// The text `inbox` lines of `endpoint` with `filters`.
fn inbox_text(ex: &Exercise, endpoint: &str, filters: &[&str]) -> String {
    let cfg = ex.config(endpoint);
    let mut args = vec!["inbox", "--config", cfg.to_str().unwrap()];
    args.extend_from_slice(filters);
    let o = hotline(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o)
}

#[test]
fn send_wait_bodies_and_inbox_filters_as_an_operator_sees_them() {
    let ex = Exercise::new(&["us", "jp"], &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let [_relay, _us, mut jp] = rt.block_on(ex.start_linked("us", "jp"));
    let us = ex.config("us");
    let us = us.to_str().unwrap();

    // Empty bodies: the CLI refuses them, and so does the node for other clients.
    let o = hotline(&["send", "--config", us, ""]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).starts_with("error: the message is empty"),
        "{}",
        stderr(&o)
    );
    let o = hotline_with(&["send", "--config", us, "-"], &[], "\n");
    assert!(
        stderr(&o).starts_with("error: the message is empty"),
        "{}",
        stderr(&o)
    );
    let refused = rt.block_on(ex.send_one("us", hotline_e2e::Precedence::Flash, "", None));
    let e = format!("{:#}", refused.unwrap_err());
    assert!(e.contains("empty message refused"), "{e}");

    // A multi-line body from stdin, waited for: levels on stdout as reached, what it waits for
    // on stderr; one trailing newline dropped.
    let o = hotline_with(
        &[
            "send",
            "--config",
            us,
            "--wait",
            "delivered",
            "--timeout",
            "60",
            "-",
        ],
        &[],
        "line one\n  line two\n\n",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let first = out.lines().next().unwrap().to_owned();
    assert!(first.starts_with("us:main:routine:"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("delivered at ")), "{out}");
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "waiting for {first} to be delivered (for at most 60 s)"
        )) && err.contains("leaves the message queued and it will still be delivered"),
        "{err}"
    );
    let got = rt.block_on(ex.wait_inbox("jp", 1));
    assert_eq!(
        got[0].body, "line one\n  line two\n",
        "only one newline dropped"
    );
    let text = inbox_text(&ex, "jp", &[]);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].contains(&first) && lines[0].ends_with(&first),
        "{text}"
    );
    assert_eq!(
        lines[1..],
        ["    line one", "      line two", "    "],
        "{text}"
    );

    // Filters, served by the node: --unacked and --channel, on the listing and on --follow.
    let o = hotline(&[
        "send",
        "--config",
        us,
        "--channel",
        "ops",
        "--wait",
        "delivered",
        "ops one",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ops_one = stdout(&o).lines().next().unwrap().to_owned();
    rt.block_on(ex.wait_inbox("jp", 2));
    let jp_cfg = ex.config("jp");
    let jp_cfg = jp_cfg.to_str().unwrap();
    assert!(
        hotline(&["ack", "--config", jp_cfg, &first])
            .status
            .success()
    );
    let unacked = inbox_text(&ex, "jp", &["--unacked"]);
    assert!(
        unacked.contains(&ops_one) && !unacked.contains(&first),
        "{unacked}"
    );
    let ops = inbox_text(&ex, "jp", &["--channel", "ops"]);
    assert!(ops.contains(&ops_one) && !ops.contains(&first), "{ops}");
    let main = inbox_text(&ex, "jp", &["--channel", "main", "--json"]);
    assert!(main.contains(&first) && !main.contains(&ops_one), "{main}");

    let mut follow = Command::new(bin_dir().join("hotline"))
        .args([
            "inbox",
            "--config",
            jp_cfg,
            "--follow",
            "--unacked",
            "--channel",
            "ops",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut follow_out = BufReader::new(follow.stdout.take().unwrap()).lines();
    assert!(follow_out.next().unwrap().unwrap().contains(&ops_one));
    // A main-channel message delivered before an ops one must not show up in the stream.
    let o = hotline(&["send", "--config", us, "--wait", "delivered", "main two"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let main_two = stdout(&o).lines().next().unwrap().to_owned();
    rt.block_on(ex.wait_inbox("jp", 3));
    let o = hotline(&["send", "--config", us, "--channel", "ops", "ops two"]);
    let ops_two = stdout(&o).lines().next().unwrap().to_owned();
    let next = follow_out.next().unwrap().unwrap();
    assert!(
        next.contains(&ops_two),
        "got {next:?}, not {main_two} and not ops two"
    );
    let _ = follow.kill();
    let _ = follow.wait();

    // A timed-out wait: one error line naming the message, which stays queued.
    jp.stop();
    let o = hotline(&[
        "send",
        "--config",
        us,
        "--wait",
        "delivered",
        "--timeout",
        "1",
        "while jp is down",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let id = stdout(&o).lines().next().unwrap().to_owned();
    let err = stderr(&o);
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(
        errors[0].contains(&id)
            && errors[0].contains("still queued")
            && errors[0].contains("will still be delivered"),
        "{err}"
    );
    // And it is: once jp is back, it arrives.
    let _jp = ex.start_node("jp");
    let deadline = Instant::now() + PATIENCE;
    while !rt.block_on(ex.inbox("jp")).iter().any(|m| m.id == id) {
        assert!(Instant::now() < deadline, "{id} never arrived");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `hotline … | head -1` closes the pipe early: the CLI ends quietly instead of panicking on a
/// broken pipe. (`head -c0` exits before the PKI is generated, so the first write meets a closed
/// pipe.)
#[test]
fn a_closed_stdout_ends_the_cli_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ex");
    let script = format!(
        "set -o pipefail; \"$0\" certs init --out '{}' --relay localhost --endpoint us --endpoint jp | head -c0",
        out.display()
    );
    let o = Command::new("bash")
        .args(["-c", &script])
        .arg(bin_dir().join("hotline"))
        .output()
        .unwrap();
    let err = stderr(&o);
    assert!(!err.contains("panicked"), "{err}");
    assert!(o.status.success(), "exit {:?}: {err}", o.status);
}

/// A body on stdin past the limit is "too long", also when the cut at the limit falls inside a
/// character (it used to read as "not UTF-8").
#[test]
fn an_oversized_multibyte_body_on_stdin_is_too_long_not_bad_utf8() {
    let mut child = Command::new(bin_dir().join("hotline"))
        .args(["send", "--config", "/nonexistent/us.toml", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let body = "é".repeat(200_000);
    // The CLI stops reading at the limit; a broken pipe here is expected.
    let _ = child.stdin.take().unwrap().write_all(body.as_bytes());
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(err.contains("longer than the 262144-byte limit"), "{err}");
}
