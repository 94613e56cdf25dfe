//! `hotline console` in a real terminal: the binary runs in a tmux pane (a pseudo-terminal)
//! against real nodes and a relay. A flash arrives, `a` then `y` acknowledges it, and the
//! sender's `send --wait acknowledged` completes; the node restarts and the console says so;
//! an acknowledgement made with `hotline ack` shows at once.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a failed step is the test failing"
)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hotline_e2e::{Exercise, PATIENCE, bin_dir, hotline};

/// A private tmux server (its own socket name) running one command in a fixed-size pane;
/// killed on drop.
struct Pane {
    server: String,
}

impl Pane {
    fn start(command: &[&str]) -> Self {
        let server = format!("hotline-console-test-{}", std::process::id());
        let ok = Command::new("tmux")
            .args(["-L", &server, "-f", "/dev/null", "new-session", "-d"])
            .args(["-x", "160", "-y", "40", "--"])
            .args(command)
            .env("TERM", "xterm-256color")
            .status()
            .expect("tmux is needed for this test (apt-get install tmux; .ci/run installs it)");
        assert!(ok.success(), "tmux new-session failed");
        Self { server }
    }

    fn tmux(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .args(["-L", &self.server])
            .args(args)
            .output()
            .unwrap()
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.tmux(&["capture-pane", "-p"]).stdout).into_owned()
    }

    fn keys(&self, keys: &str) {
        assert!(self.tmux(&["send-keys", "-l", keys]).status.success());
    }

    /// Waits until the screen shows `what`; returns the screen.
    fn wait_for(&self, what: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let screen = self.screen();
            if screen.contains(what) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "the console never showed {what:?}; it shows:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn session_alive(&self) -> bool {
        self.tmux(&["has-session"]).status.success()
    }
}

impl Drop for Pane {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-server"]);
    }
}

#[test]
fn the_console_acknowledges_a_flash_with_a_and_y_and_follows_a_node_restart() {
    let ex = Exercise::new(&["us", "jp"], &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let [_relay, _us, mut jp] = rt.block_on(ex.start_linked("us", "jp"));

    let hotline_bin = bin_dir().join("hotline");
    let pane = Pane::start(&[
        hotline_bin.to_str().unwrap(),
        "console",
        "--config",
        ex.config("jp").to_str().unwrap(),
    ]);
    pane.wait_for("node: connected");
    pane.wait_for("LINK UP");

    let mut sender = Command::new(&hotline_bin)
        .args(["send", "--config", ex.config("us").to_str().unwrap()])
        .args([
            "--precedence",
            "flash",
            "--wait",
            "acknowledged",
            "--timeout",
            "120",
        ])
        .arg("confirm readiness")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // The new flash is selected at once.
    let screen = pane.wait_for("confirm readiness");
    let row = screen
        .lines()
        .find(|l| l.contains("confirm readiness"))
        .unwrap();
    assert!(row.contains("▶") && row.contains("FLASH"), "{screen}");
    assert!(screen.contains("1 to acknowledge"), "{screen}");

    pane.keys("a");
    pane.wait_for("Acknowledge FLASH");
    pane.keys("y");

    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = sender.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "send --wait acknowledged never returned"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = sender.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        status.success(),
        "sender failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("acknowledged at"), "{stdout}");
    pane.wait_for("0 to acknowledge");

    // The node restarts: the console says it lost the node, then that it reconnected, and
    // lists the inbox again.
    jp.stop();
    pane.wait_for("NOT REACHABLE");
    let _jp = ex.start_node("jp");
    pane.wait_for("reconnected to the node");
    pane.wait_for("confirm readiness");

    // An acknowledgement made elsewhere (`hotline ack`) shows at once.
    let sent = hotline(&[
        "send",
        "--config",
        ex.config("us").to_str().unwrap(),
        "--precedence",
        "priority",
        "observers arrive at 05:30Z",
    ]);
    assert!(sent.status.success());
    let id = String::from_utf8_lossy(&sent.stdout)
        .lines()
        .next()
        .unwrap()
        .to_owned();
    pane.wait_for("1 to acknowledge");
    let acked = hotline(&["ack", "--config", ex.config("jp").to_str().unwrap(), &id]);
    assert!(acked.status.success());
    pane.wait_for("0 to acknowledge");

    pane.keys("q");
    let deadline = Instant::now() + PATIENCE;
    while pane.session_alive() {
        assert!(
            Instant::now() < deadline,
            "q did not quit:\n{}",
            pane.screen()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
