//! The operator's alarm book on real processes: a node that pins a wrong partner key raises
//! the same security alarms again and again; `hotline alarms` shows each once with a count and
//! its cause (across a restart of the node), `status` shows them too, `alarms --follow` prints
//! a new entry as it is raised, and `alarms clear` clears one and records who did it in the
//! audit log.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a failed step is the test failing"
)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use hotline_client::control::AlarmView;
use hotline_e2e::{Exercise, bin_dir};

/// How long an alarm may take to repeat: the engine emits a repeat at most once a minute.
const REPEAT_PATIENCE: Duration = Duration::from_secs(180);

/// `hotline ARGS --config <endpoint's config>` as operator `tester`.
fn hotline_as_tester(ex: &Exercise, endpoint: &str, args: &[&str]) -> Output {
    Command::new(bin_dir().join("hotline"))
        .args(args)
        .arg("--config")
        .arg(ex.config(endpoint))
        .env("USER", "tester")
        .output()
        .expect("running hotline")
}

fn stdout_of(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn alarm_lines(text: &str) -> Vec<AlarmView> {
    json_lines(text)
        .into_iter()
        .map(|v| serde_json::from_value(v).unwrap())
        .collect()
}

/// `hotline alarms --json` (with `--all` if `all`).
fn alarms(ex: &Exercise, endpoint: &str, all: bool) -> Vec<AlarmView> {
    let mut args = vec!["alarms", "--json"];
    if all {
        args.push("--all");
    }
    alarm_lines(&stdout_of(
        &hotline_as_tester(ex, endpoint, &args),
        "alarms --json",
    ))
}

/// Polls `hotline alarms --json --all` until `check` finds what it wants.
fn wait_alarms<T>(
    ex: &Exercise,
    endpoint: &str,
    what: &str,
    patience: Duration,
    check: impl Fn(&[AlarmView]) -> Option<T>,
) -> T {
    let deadline = Instant::now() + patience;
    loop {
        let entries = alarms(ex, endpoint, true);
        if let Some(found) = check(&entries) {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{endpoint}: {what} did not happen; alarms {entries:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `hotline alarms --follow --json` with its stdout in a file; killed (by its own pid) on drop.
struct Follower {
    child: Child,
    out: PathBuf,
}

impl Follower {
    fn start(ex: &Exercise, endpoint: &str) -> Self {
        let out = ex.path(&format!("{endpoint}.alarms-follow.jsonl"));
        let child = Command::new(bin_dir().join("hotline"))
            .args(["alarms", "--follow", "--json", "--config"])
            .arg(ex.config(endpoint))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(ex.path("follow.err")).unwrap())
            .spawn()
            .expect("starting hotline alarms --follow");
        Self { child, out }
    }

    /// The complete lines printed so far.
    fn lines(&self) -> Vec<AlarmView> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        alarm_lines(complete)
    }

    fn wait_for(&mut self, what: &str, check: impl Fn(&AlarmView) -> bool) -> AlarmView {
        let deadline = Instant::now() + REPEAT_PATIENCE;
        loop {
            if let Some(found) = self.lines().into_iter().find(|a| check(a)) {
                return found;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("alarms --follow exited ({status}) before {what}");
            }
            assert!(
                Instant::now() < deadline,
                "alarms --follow did not print {what}; printed {:#?}",
                self.lines()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Makes `endpoint` pin its own identity key as its partner's: every signed frame from the
/// partner then fails verification.
fn pin_wrong_partner_key(ex: &Exercise, endpoint: &str, other: &str) {
    let other_cfg: toml::Table = std::fs::read_to_string(ex.config(other))
        .unwrap()
        .parse()
        .unwrap();
    // `other` pins `endpoint`'s key: that is `endpoint`'s own key, not the partner's.
    let own_key = other_cfg["partner"].as_array().unwrap()[0]["identity_key"].clone();
    ex.edit_config(endpoint, |t| {
        let p = t["partner"].as_array_mut().unwrap()[0]
            .as_table_mut()
            .unwrap();
        p.insert("identity_key".into(), own_key);
    });
}

fn config_str(ex: &Exercise, endpoint: &str) -> String {
    let path: &Path = &ex.config(endpoint);
    path.to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_security_alarms_are_one_entry_that_can_be_followed_and_cleared() {
    let ex = Exercise::new(&["us", "jp"], &[]);
    pin_wrong_partner_key(&ex, "us", "jp");
    let _relay = ex.start_relay();
    let mut us = ex.start_node("us");
    // The node is up (its control socket answers) before anything can alarm it.
    let _ = ex.status("us").await;
    let mut follower = Follower::start(&ex, "us");
    let _jp = ex.start_node("jp");

    // `--follow` prints the entry as it is raised.
    let followed = follower.wait_for("a critical alarm", |a| a.severity == "critical");
    assert!(followed.cleared.is_none(), "{followed:?}");
    drop(follower);

    // The partner-key alarm keeps its cause.
    let key_changed = wait_alarms(&ex, "us", "a partner-key alarm", REPEAT_PATIENCE, |all| {
        all.iter()
            .find(|a| a.kind == "partner identity key changed")
            .cloned()
    });
    assert_eq!(key_changed.severity, "critical");
    assert!(key_changed.cause.contains("is pinned"), "{key_changed:?}");

    // A restart forgets the engine's coalescing window, so the next occurrence is emitted at
    // once, and the book (restored from the store) counts it into the same entry.
    us.stop();
    let _us = ex.start_node("us");
    // Waits for the restarted node's control socket.
    let _ = ex.status("us").await;
    let repeated = wait_alarms(
        &ex,
        "us",
        "a critical alarm counted more than once",
        REPEAT_PATIENCE,
        |all| {
            all.iter()
                .find(|a| a.severity == "critical" && a.count > 1)
                .cloned()
        },
    );
    let entries = alarms(&ex, "us", true);
    eprintln!("after the restart: {entries:#?}");
    let keys: BTreeSet<(&str, &str)> = entries
        .iter()
        .map(|a| (a.kind.as_str(), a.cause.as_str()))
        .collect();
    assert_eq!(
        keys.len(),
        entries.len(),
        "one entry per kind and cause: {entries:#?}"
    );
    for a in &entries {
        assert!(
            !a.cause.is_empty() && !a.cause.contains(&a.kind),
            "the cause does not repeat the kind: {a:?}"
        );
    }
    assert!(
        entries
            .iter()
            .any(|a| a.id == key_changed.id && a.cause == key_changed.cause),
        "the partner-key alarm and its cause survive the restart: {entries:#?}"
    );
    let text = stdout_of(&hotline_as_tester(&ex, "us", &["alarms"]), "alarms");
    assert!(
        text.contains(&format!("#{} CRITICAL {}", repeated.id, repeated.kind)),
        "{text}"
    );

    // `status` shows the same entry.
    let status = ex.status("us").await;
    assert!(
        status.alarms.iter().any(|a| a.id == repeated.id),
        "{:#?}",
        status.alarms
    );
    let status_text = stdout_of(&hotline_as_tester(&ex, "us", &["status"]), "status");
    assert!(
        status_text.contains(&format!("#{} CRITICAL", repeated.id)),
        "{status_text}"
    );

    // Clearing: answered with the cleared entry, recorded in the audit log with who.
    let id = repeated.id.to_string();
    let cleared = alarm_lines(&stdout_of(
        &hotline_as_tester(&ex, "us", &["alarms", "clear", "--json", &id]),
        "alarms clear",
    ));
    assert_eq!(cleared.len(), 1, "{cleared:?}");
    assert_eq!(cleared[0].id, repeated.id);
    // The name is what the client says; the uid is what the socket says.
    let uid = std::fs::metadata("/proc/self").map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid()
    });
    let by = format!("tester (uid {})", uid.unwrap());
    assert_eq!(cleared[0].cleared.as_ref().unwrap().by, by);
    let unknown = hotline_as_tester(&ex, "us", &["alarms", "clear", "999999"]);
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("no alarm 999999"),
        "{}",
        String::from_utf8_lossy(&unknown.stderr)
    );

    let cfg = config_str(&ex, "us");
    let export = hotline_as_tester(&ex, "us", &["audit", "export", "--json"]);
    let values = json_lines(&stdout_of(&export, "audit export"));
    let clearing = values
        .iter()
        .find_map(|v| v["event"].get("alarm_cleared"))
        .unwrap_or_else(|| panic!("no alarm_cleared entry in the audit log of {cfg}"));
    assert_eq!(clearing["id"], repeated.id);
    assert_eq!(clearing["by"], by.as_str());
    assert_eq!(clearing["kind"], repeated.kind.as_str());
    assert!(clearing["at"].as_str().is_some_and(|at| !at.is_empty()));
    let verify = hotline_as_tester(&ex, "us", &["audit", "verify"]);
    assert!(
        stdout_of(&verify, "audit verify").starts_with("audit log ok:"),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}
