//! Fixtures for end-to-end tests: an exercise directory made by the real `hotline certs init`,
//! and real `hotline-relay` / `hotline node` processes on loopback, started by
//! [`hotline_client::process`]. The relay's first start binds `127.0.0.1:0` and the nodes'
//! configs are pointed at the address it reports; a restarted relay binds that same address
//! again, so that running nodes reconnect to it.
//!
//! The binaries are taken from the same target directory as the test executable; `make test`
//! builds them first (`cargo build --workspace --bins`).
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a failed step is the test failing"
)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hotline_client::control::{ControlClient, Event, InboxEntry, Request, StatusView, WaitLevel};
pub use hotline_client::process::Process;
use hotline_client::process::{Binaries, LOOPBACK_ANY, Launcher, point_node_at};
pub use hotline_proto::Precedence;

/// The impairment proxy, from its own crate (the bench uses it too).
pub use hotline_impair as impair;
pub mod netns;
pub mod relays;

/// Generous limit for anything a test waits for; no test asserts on timing.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Directory holding the workspace binaries.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/<test> → target/debug
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf();
    for b in ["hotline", "hotline-relay"] {
        assert!(
            dir.join(b).exists(),
            "{} missing: run `cargo build --workspace --bins` first (make test does)",
            dir.join(b).display()
        );
    }
    dir
}

/// Runs `hotline` with arguments and returns its output.
pub fn hotline(args: &[&str]) -> Output {
    Command::new(bin_dir().join("hotline"))
        .args(args)
        .output()
        .expect("running hotline")
}

/// Runs `hotline certs init --out OUT --relay localhost` with an `--endpoint` for each of
/// `endpoints`, then `extra`, and returns its output.
pub fn certs_init(out: &str, endpoints: &[&str], extra: &[&str]) -> Output {
    let mut args = vec!["certs", "init", "--out", out, "--relay", "localhost"];
    for e in endpoints {
        args.push("--endpoint");
        args.push(e);
    }
    args.extend_from_slice(extra);
    hotline(&args)
}

/// An exercise directory: PKI and configs from `hotline certs init`.
#[derive(Debug)]
pub struct Exercise {
    /// The directory (deleted on drop).
    pub dir: tempfile::TempDir,
    endpoints: Vec<String>,
    /// The address the relay bound on its first start.
    relay_addr: Mutex<Option<SocketAddr>>,
    /// The relay's config, `relay.toml` in the directory unless set up otherwise.
    relay_config: PathBuf,
    pub(crate) launcher: Launcher,
}

impl Exercise {
    /// `hotline certs init` for `endpoints` (paired by `pairs`, or the two by default).
    pub fn new(endpoints: &[&str], pairs: &[&str]) -> Self {
        // The relay chooses its port when it starts; see `start_relay`.
        let addr = LOOPBACK_ANY.to_string();
        let mut extra = vec!["--relay-addr", &addr];
        for p in pairs {
            extra.push("--pair");
            extra.push(p);
        }
        Self::init(endpoints, |out| certs_init(out, endpoints, &extra))
    }

    /// `hotline certs init` for the two `endpoints` with one `--relay NAME --relay-addr ADDR`
    /// per entry of `relays` (written as `relay-1.toml` …; see [`relays::TwoRelays`]).
    pub fn with_relays(endpoints: &[&str], relays: &[(&str, &str)]) -> Self {
        Self::init(endpoints, |out| {
            let mut args = vec!["certs", "init", "--out", out];
            for (name, addr) in relays {
                args.extend_from_slice(&["--relay", name, "--relay-addr", addr]);
            }
            for e in endpoints {
                args.extend_from_slice(&["--endpoint", e]);
            }
            hotline(&args)
        })
    }

    /// An exercise directory filled by `setup(dir)` instead of `certs init` (e.g. keys made
    /// by `hotline keys init` in it, the organiser's CA in a subdirectory): the endpoints'
    /// configs must be `<id>.toml` in it with `data/<id>`, and the relay's config is
    /// `relay_config` (relative to the directory).
    pub fn with_setup(endpoints: &[&str], relay_config: &str, setup: impl FnOnce(&Path)) -> Self {
        let mut ex = Self::init(endpoints, |out| {
            setup(Path::new(out));
            Command::new("true").output().unwrap()
        });
        ex.relay_config = ex.path(relay_config);
        ex
    }

    /// A new exercise directory filled by `certs_init(dir)`.
    fn init(endpoints: &[&str], certs_init: impl FnOnce(&str) -> Output) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("hotline-e2e-")
            .tempdir()
            .unwrap();
        let out = dir.path().to_str().unwrap().to_owned();
        let o = certs_init(&out);
        assert!(
            o.status.success(),
            "certs init failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        Self {
            relay_config: dir.path().join("relay.toml"),
            dir,
            endpoints: endpoints.iter().map(|e| (*e).to_owned()).collect(),
            relay_addr: Mutex::new(None),
            launcher: Launcher::new(Binaries::new(&bin_dir()).unwrap()).log_filter("info"),
        }
    }

    /// The relay's address; panics if the relay was never started.
    pub fn relay_addr(&self) -> SocketAddr {
        self.relay_addr
            .lock()
            .unwrap()
            .expect("the relay has been started")
    }

    /// Path of a file in the exercise directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The config of an endpoint.
    pub fn config(&self, endpoint: &str) -> PathBuf {
        self.path(&format!("{endpoint}.toml"))
    }

    /// Runs `hotline send --config <endpoint's config> --precedence PRECEDENCE TEXT`.
    pub fn hotline_send(&self, endpoint: &str, precedence: Precedence, text: &str) -> Output {
        hotline(&[
            "send",
            "--config",
            self.config(endpoint).to_str().unwrap(),
            "--precedence",
            precedence.as_str(),
            text,
        ])
    }

    /// Rewrites keys in an endpoint's TOML config.
    pub fn edit_config(&self, endpoint: &str, edit: impl FnOnce(&mut toml::Table)) {
        let path = self.config(endpoint);
        let mut t: toml::Table = std::fs::read_to_string(&path).unwrap().parse().unwrap();
        edit(&mut t);
        std::fs::write(&path, toml::to_string(&t).unwrap()).unwrap();
    }

    /// Starts the relay. The first start binds a port of the kernel's choosing and points every
    /// endpoint's config at it; later starts bind the same address again.
    pub fn start_relay(&self) -> Process {
        let mut bound = self.relay_addr.lock().unwrap();
        let relay = self
            .launcher
            .start_relay(
                &self.relay_config,
                bound.unwrap_or(LOOPBACK_ANY),
                &self.next_log("relay"),
            )
            .unwrap();
        if bound.is_none() {
            for e in &self.endpoints {
                point_node_at(&self.config(e), relay.addr).unwrap();
            }
            *bound = Some(relay.addr);
        }
        relay.process
    }

    /// Starts an endpoint node.
    pub fn start_node(&self, endpoint: &str) -> Process {
        self.start_node_with(endpoint, &[])
    }

    /// Starts an endpoint node with extra environment (e.g. a failpoint).
    pub fn start_node_with(&self, endpoint: &str, env: &[(&str, &str)]) -> Process {
        self.launcher
            .start_node(
                endpoint,
                &[&self.config(endpoint)],
                &self.next_log(endpoint),
                env,
            )
            .unwrap()
    }

    /// Starts the relay, then `first`, then `second` (with extra environment `second_env`, e.g.
    /// a failpoint), and waits until both report their link up. Returns the relay's and the two
    /// nodes' processes, in that order.
    pub async fn start_linked_with(
        &self,
        first: &str,
        second: &str,
        second_env: &[(&str, &str)],
    ) -> [Process; 3] {
        let relay = self.start_relay();
        let a = self.start_node(first);
        let b = self.start_node_with(second, second_env);
        self.wait_links_up(&[first, second]).await;
        [relay, a, b]
    }

    /// [`Exercise::start_linked_with`] without extra environment.
    pub async fn start_linked(&self, first: &str, second: &str) -> [Process; 3] {
        self.start_linked_with(first, second, &[]).await
    }

    /// `<name>.<n>.log` for the first `n` not yet used, so a restart keeps the earlier log.
    pub(crate) fn next_log(&self, name: &str) -> PathBuf {
        (0..)
            .map(|i| self.path(&format!("{name}.{i}.log")))
            .find(|p| !p.exists())
            .unwrap()
    }

    /// The control socket of an endpoint.
    pub fn socket(&self, endpoint: &str) -> PathBuf {
        self.path(&format!("data/{endpoint}/control.sock"))
    }

    /// Connects to an endpoint's control socket, waiting for the node to start.
    pub async fn control(&self, endpoint: &str) -> ControlClient {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match ControlClient::connect(&self.socket(endpoint)).await {
                Ok(c) => return c,
                Err(e) if Instant::now() > deadline => panic!("{endpoint} control socket: {e:#}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// An endpoint's status.
    pub async fn status(&self, endpoint: &str) -> StatusView {
        let mut c = self.control(endpoint).await;
        for e in c.call(Request::Status).await.unwrap() {
            if let Event::Status(s) = e {
                return *s;
            }
        }
        panic!("no status");
    }

    /// Sends one message from `endpoint` on a new control connection, as [`send_one`] does.
    pub async fn send_one(
        &self,
        endpoint: &str,
        precedence: Precedence,
        body: &str,
        wait: Option<WaitLevel>,
    ) -> Result<Sent> {
        send_one(&mut self.control(endpoint).await, precedence, body, wait).await
    }

    /// An endpoint's inbox in delivery order.
    pub async fn inbox(&self, endpoint: &str) -> Vec<InboxEntry> {
        let mut c = self.control(endpoint).await;
        c.call(Request::Inbox {
            follow: false,
            unacked: false,
            channel: None,
            updates: false,
        })
        .await
        .unwrap()
        .into_iter()
        .filter_map(|e| match e {
            Event::Message(m) => Some(m),
            _ => None,
        })
        .collect()
    }

    /// Waits until `check` holds for the endpoint's status.
    pub async fn wait_status(
        &self,
        endpoint: &str,
        what: &str,
        check: impl Fn(&StatusView) -> bool,
    ) -> StatusView {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let s = self.status(endpoint).await;
            if check(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{endpoint}: {what} did not happen; last status {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every one of `endpoints` reports its link to its partner up.
    pub async fn wait_links_up(&self, endpoints: &[&str]) {
        for e in endpoints {
            self.wait_status(e, "link up", |s| s.link == "up").await;
        }
    }

    /// Waits until the endpoint's inbox has at least `n` messages.
    pub async fn wait_inbox(&self, endpoint: &str, n: usize) -> Vec<InboxEntry> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let inbox = self.inbox(endpoint).await;
            if inbox.len() >= n {
                return inbox;
            }
            assert!(
                Instant::now() < deadline,
                "{endpoint}: inbox has {} of {n} messages",
                inbox.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// One message to send in a pipelined batch.
#[derive(Debug, Clone)]
pub struct Msg {
    /// Precedence.
    pub precedence: Precedence,
    /// Body.
    pub body: String,
}

impl Msg {
    /// A message of `precedence` with `body`.
    pub fn new(precedence: Precedence, body: impl Into<String>) -> Self {
        Self {
            precedence,
            body: body.into(),
        }
    }
}

/// What happened to one sent message.
#[derive(Debug, Clone, Default)]
pub struct Sent {
    /// Its id.
    pub id: String,
    /// Ack levels seen, in order.
    pub levels: Vec<String>,
}

/// Sends `msgs` pipelined on one control connection (so they enter the outbox in this order),
/// each waiting for `wait`; returns one `Sent` per message, in send order.
pub async fn send_all(
    client: &mut ControlClient,
    msgs: &[Msg],
    wait: Option<WaitLevel>,
) -> Result<Vec<Sent>> {
    let mut tags = BTreeMap::new();
    for (i, m) in msgs.iter().enumerate() {
        let tag = client
            .request(Request::Send {
                to: None,
                channel: None,
                precedence: Some(m.precedence),
                body: m.body.clone(),
                wait,
                timeout_ms: Some(PATIENCE.as_millis() as u64 * 3),
            })
            .await?;
        tags.insert(tag, i);
    }
    let mut out = vec![Sent::default(); msgs.len()];
    let mut done = 0;
    while done < msgs.len() {
        let Some(line) = client.next().await? else {
            bail!("node closed the control connection")
        };
        let Some(&i) = tags.get(&line.tag) else {
            continue;
        };
        match line.event {
            Event::Stored { id, .. } => out[i].id = id,
            Event::Level { level, .. } => out[i].levels.push(level),
            Event::Done { ok: true, .. } => done += 1,
            Event::Done { ok: false, error } => {
                bail!("send {i} failed: {}", error.unwrap_or_default())
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Sends one message and waits for `wait` (or only for it to be stored); returns what happened
/// to it.
pub async fn send_one(
    client: &mut ControlClient,
    precedence: Precedence,
    body: &str,
    wait: Option<WaitLevel>,
) -> Result<Sent> {
    let mut sent = send_all(client, &[Msg::new(precedence, body)], wait).await?;
    sent.pop().context("no outcome for the one message sent")
}

/// Checks the ordering rule on `inbox` (one sender) against the send order of `sent`
/// (ids with precedences): nothing overtakes an earlier message of the same or higher
/// precedence; no duplicates; returns the first violation.
pub fn check_order(sent: &[(String, Precedence)], inbox: &[InboxEntry]) -> Result<()> {
    let pos: BTreeMap<&str, usize> = inbox
        .iter()
        .enumerate()
        .map(|(i, m)| (m.id.as_str(), i))
        .collect();
    if pos.len() != inbox.len() {
        bail!("duplicate in inbox");
    }
    for (j, (id, p)) in sent.iter().enumerate() {
        let Some(&at) = pos.get(id.as_str()) else {
            continue;
        };
        for (earlier, q) in &sent[..j] {
            if q >= p {
                match pos.get(earlier.as_str()) {
                    Some(&e) if e < at => {}
                    _ => bail!("{id} was delivered before {earlier}, which it may not overtake"),
                }
            }
        }
    }
    Ok(())
}

/// Acknowledges ids on `endpoint`, pipelined.
pub async fn ack_all(client: &mut ControlClient, ids: &[String]) -> Result<()> {
    let mut tags = std::collections::BTreeSet::new();
    for id in ids {
        tags.insert(client.request(Request::Ack { id: id.parse()? }).await?);
    }
    while !tags.is_empty() {
        let Some(line) = client.next().await? else {
            bail!("node closed the control connection")
        };
        if let Event::Done { ok, error } = line.event {
            if tags.remove(&line.tag) && !ok {
                bail!("ack failed: {}", error.unwrap_or_default());
            }
        }
    }
    Ok(())
}

/// Context for a failing check.
pub fn ctx<T>(r: Result<T>, what: &str) -> T {
    r.context(what.to_owned()).unwrap()
}
