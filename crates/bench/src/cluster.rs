//! The system under test: a relay and pairs of endpoint nodes on loopback, reached through
//! their control sockets.
//!
//! By default [`Cluster::create`] makes a fresh exercise directory with the real
//! `hotline_client::certs::init` (endpoints `a0`/`b0`, `a1`/`b1`, …, paired `aN:bN`), starts
//! `hotline-relay` as a separate process on a free UDP port (with its metrics endpoint on a free
//! TCP port, for queue depths) and, pair by pair as [`Cluster::start_pairs`] asks, the nodes:
//! either `hotline node` processes (the binaries next to this one, as `hotline demo` does) or,
//! for many pairs, `hotline_client::node::Node::spawn` tasks inside this process. Either way the bench
//! then talks to every node over its control socket only.
//!
//! With `--certs DIR` it uses an existing exercise directory instead: the pairs are the
//! `[[hotline]]` tables of `DIR/relay.toml`, a node already answering on its control socket is
//! used as it is, and a missing one is started from `DIR/<id>.toml` (its relay address replaced
//! by `--relay`, if given, in a copy of the config).
//!
//! Everything started here is stopped by [`Cluster::shutdown`] or on drop; relay memory is read
//! from `/proc/<pid>/status`.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hotline_client::certs::{self, DeadlineOverrides, InitRequest};
use hotline_client::config::{NodeConfig, NodeFile};
use hotline_client::control::{ControlClient, Event, Request, StatusView};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// How endpoint nodes are run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeMode {
    /// Processes up to 16 pairs, in-process above.
    Auto,
    /// One `hotline node` process per endpoint.
    Process,
    /// `hotline_client::node::Node`s inside the bench.
    InProcess,
}

impl NodeMode {
    /// The mode used for `pairs` pairs.
    pub fn resolve(self, pairs: usize) -> Self {
        match self {
            Self::Auto if pairs <= 16 => Self::Process,
            Self::Auto => Self::InProcess,
            m => m,
        }
    }
}

/// What the cluster is made of.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Directory holding `hotline` and `hotline-relay`.
    pub bin_dir: PathBuf,
    /// How nodes run.
    pub node_mode: NodeMode,
    /// `RUST_LOG` for started processes.
    pub log: String,
    /// Keep the exercise directory.
    pub keep: bool,
    /// A running relay to target.
    pub relay: Option<SocketAddr>,
    /// An existing exercise directory.
    pub certs: Option<PathBuf>,
    /// The pid of a running relay, to read its memory.
    pub relay_pid: Option<u32>,
    /// Host the started nodes in this many `hotline node` processes.
    pub processes: Option<usize>,
}

/// One endpoint.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// Endpoint id.
    pub id: String,
    /// Its config file.
    pub config: PathBuf,
    /// Its control socket.
    pub socket: PathBuf,
}

/// One hotline: the bench sends from `sender` to `receiver`.
#[derive(Clone, Debug)]
pub struct Pair {
    /// Position in the cluster (0-based).
    pub index: usize,
    /// Sending side.
    pub sender: Endpoint,
    /// Receiving side (auto-acks, inbox checked).
    pub receiver: Endpoint,
}

/// A relay and nodes.
#[derive(Debug)]
pub struct Cluster {
    opts: ClusterOptions,
    dir: PathBuf,
    tmp: Option<tempfile::TempDir>,
    relay: Option<Proc>,
    relay_pid: Option<u32>,
    metrics: Option<SocketAddr>,
    pairs: Vec<Pair>,
    started: usize,
    nodes: Vec<RunningNode>,
    mode: NodeMode,
}

impl Cluster {
    /// Makes (or opens) the exercise directory for `max_pairs` pairs and starts the relay.
    pub async fn create(opts: ClusterOptions, max_pairs: usize) -> Result<Self> {
        if max_pairs == 0 {
            bail!("at least one pair is needed");
        }
        // `--processes K` hosts every node in `hotline node` processes.
        let mode = if opts.processes.is_some() {
            NodeMode::Process
        } else {
            opts.node_mode.resolve(max_pairs)
        };
        if let Some(dir) = opts.certs.clone() {
            return Self::existing(opts, dir, max_pairs, mode);
        }
        for bin in ["hotline", "hotline-relay"] {
            let path = opts.bin_dir.join(bin);
            if !path.exists() {
                bail!(
                    "{} not found: build the workspace binaries first (cargo build --release --workspace --bins), or pass --bin-dir",
                    path.display()
                );
            }
        }
        let tmp = tempfile::Builder::new()
            .prefix("hotline-bench-")
            .tempdir()?;
        let dir = tmp.path().to_owned();
        let relay_addr = free_udp()?;
        let endpoints: Vec<String> = (0..max_pairs)
            .flat_map(|i| [format!("a{i}"), format!("b{i}")])
            .collect();
        let pair_names: Vec<String> = (0..max_pairs).map(|i| format!("a{i}:b{i}")).collect();
        certs::init(
            &dir,
            &InitRequest {
                relay_name: "localhost".into(),
                endpoints,
                pairs: pair_names,
                relay_addr,
                force: false,
            },
            &DeadlineOverrides::new(),
        )
        .context("making the exercise PKI")?;
        // Turn the relay's metrics endpoint on: queue depths come from there.
        let metrics = free_tcp()?;
        let relay_toml = dir.join("relay.toml");
        let text = std::fs::read_to_string(&relay_toml)?;
        std::fs::write(&relay_toml, format!("metrics = \"{metrics}\"\n{text}"))?;
        let pairs = (0..max_pairs)
            .map(|i| Pair {
                index: i,
                sender: endpoint(&dir, &format!("a{i}")),
                receiver: endpoint(&dir, &format!("b{i}")),
            })
            .collect();
        let relay = Proc::spawn(
            "relay",
            &opts.bin_dir.join("hotline-relay"),
            &["--config".as_ref(), relay_toml.as_os_str()],
            &dir,
            &opts.log,
        )?;
        let relay_pid = Some(relay.pid());
        let mut cluster = Self {
            opts,
            dir,
            tmp: Some(tmp),
            relay: Some(relay),
            relay_pid,
            metrics: Some(metrics),
            pairs,
            started: 0,
            nodes: Vec::new(),
            mode,
        };
        cluster.wait_relay().await?;
        Ok(cluster)
    }

    fn existing(
        opts: ClusterOptions,
        dir: PathBuf,
        max_pairs: usize,
        mode: NodeMode,
    ) -> Result<Self> {
        let relay_toml = dir.join("relay.toml");
        let text = std::fs::read_to_string(&relay_toml)
            .with_context(|| format!("--certs: reading {}", relay_toml.display()))?;
        let table: toml::Table = text
            .parse()
            .with_context(|| format!("--certs: {}", relay_toml.display()))?;
        let hotlines = table
            .get("hotline")
            .and_then(|h| h.as_array())
            .with_context(|| format!("{} has no [[hotline]]", relay_toml.display()))?;
        let mut pairs = Vec::new();
        for h in hotlines.iter().take(max_pairs) {
            let (Some(a), Some(b)) = (
                h.get("a").and_then(|v| v.as_str()),
                h.get("b").and_then(|v| v.as_str()),
            ) else {
                bail!("{}: a [[hotline]] lacks a or b", relay_toml.display());
            };
            let index = pairs.len();
            let sender = existing_endpoint(&dir, a)?;
            let receiver = existing_endpoint(&dir, b)?;
            pairs.push(Pair {
                index,
                sender,
                receiver,
            });
        }
        if pairs.len() < max_pairs {
            bail!(
                "--certs {}: {} pair(s) asked for, the exercise has {}",
                dir.display(),
                max_pairs,
                pairs.len()
            );
        }
        let tmp = tempfile::Builder::new()
            .prefix("hotline-bench-")
            .tempdir()?;
        Ok(Self {
            relay_pid: opts.relay_pid,
            opts,
            dir: tmp.path().to_owned(),
            tmp: Some(tmp),
            relay: None,
            metrics: None,
            pairs,
            started: 0,
            nodes: Vec::new(),
            mode,
        })
    }

    /// The directory holding configs, stores and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How nodes run.
    pub fn node_mode(&self) -> NodeMode {
        self.mode
    }

    /// The first `n` pairs (all started).
    pub fn pairs(&self, n: usize) -> &[Pair] {
        &self.pairs[..n.min(self.started)]
    }

    /// Makes sure the first `n` pairs' nodes run and report their link up.
    pub async fn start_pairs(&mut self, n: usize) -> Result<()> {
        if n > self.pairs.len() {
            bail!("{n} pairs asked for, {} prepared", self.pairs.len());
        }
        let new: Vec<Pair> = self.pairs[self.started..n].to_vec();
        if let Some(k) = self.opts.processes {
            let endpoints: Vec<Endpoint> = new
                .iter()
                .flat_map(|p| [p.sender.clone(), p.receiver.clone()])
                .collect();
            self.start_node_hosts(&endpoints, k)?;
        } else {
            for pair in &new {
                for ep in [&pair.sender, &pair.receiver] {
                    self.start_node(ep).await?;
                }
            }
        }
        // Wait for every new node's link, a bounded number at a time.
        let limit = Arc::new(Semaphore::new(32));
        let deadline =
            Instant::now() + Duration::from_secs(60) + Duration::from_millis(30 * n as u64);
        let mut waits = JoinSet::new();
        for pair in &new {
            for ep in [pair.sender.clone(), pair.receiver.clone()] {
                let limit = limit.clone();
                waits.spawn(async move {
                    let _permit = limit.acquire().await;
                    wait_link_up(&ep, deadline).await
                });
            }
        }
        while let Some(r) = waits.join_next().await {
            if let Err(e) = r.context("link wait task")? {
                self.check_alive()?;
                return Err(e.context(format!("see the logs in {}", self.dir.display())));
            }
        }
        self.started = n;
        Ok(())
    }

    async fn start_node(&mut self, ep: &Endpoint) -> Result<()> {
        if self.opts.certs.is_some() && ControlClient::connect(&ep.socket).await.is_ok() {
            // A node of the exercise is running already: use it as it is.
            return Ok(());
        }
        let config = self.node_config(ep)?;
        let node = match self.mode {
            NodeMode::InProcess => {
                let cfg = NodeConfig::load(&config)?;
                let node = hotline_client::node::Node::spawn(cfg)
                    .await
                    .with_context(|| format!("starting in-process node {}", ep.id))?;
                RunningNode::InProcess(node)
            }
            _ => RunningNode::Process(Proc::spawn(
                &ep.id,
                &self.opts.bin_dir.join("hotline"),
                &["node".as_ref(), "--config".as_ref(), config.as_os_str()],
                &self.dir,
                &self.opts.log,
            )?),
        };
        self.nodes.push(node);
        Ok(())
    }

    /// Starts `endpoints` spread over `k` `hotline node` processes (`--processes K`).
    fn start_node_hosts(&mut self, endpoints: &[Endpoint], k: usize) -> Result<()> {
        let per = endpoints.len().div_ceil(k.max(1)).max(1);
        for (i, group) in endpoints.chunks(per).enumerate() {
            let configs: Vec<PathBuf> = group
                .iter()
                .map(|ep| self.node_config(ep))
                .collect::<Result<_>>()?;
            let mut args: Vec<&std::ffi::OsStr> = vec!["node".as_ref()];
            for c in &configs {
                args.push("--config".as_ref());
                args.push(c.as_os_str());
            }
            let name = format!("nodes-{}-{i}", self.nodes.len());
            let proc = Proc::spawn(
                &name,
                &self.opts.bin_dir.join("hotline"),
                &args,
                &self.dir,
                &self.opts.log,
            )?;
            self.nodes.push(RunningNode::Process(proc));
        }
        Ok(())
    }

    /// The config to start `ep` with: its own, or (with `--relay`) a copy pointing there.
    fn node_config(&self, ep: &Endpoint) -> Result<PathBuf> {
        let Some(relay) = self.opts.relay.filter(|_| self.opts.certs.is_some()) else {
            return Ok(ep.config.clone());
        };
        let mut file = NodeFile::read(&ep.config)?;
        if file.relay == relay.to_string() {
            return Ok(ep.config.clone());
        }
        file.relay = relay.to_string();
        let path = self.dir.join(format!("{}.toml", ep.id));
        std::fs::write(&path, toml::to_string(&file)?)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    async fn wait_relay(&mut self) -> Result<()> {
        let Some(metrics) = self.metrics else {
            return Ok(());
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(metrics).await.is_err() {
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "the relay did not start within 30 s; see {}",
                    self.dir.join("relay.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Let its allocations settle before anyone measures "RSS with 0 endpoints".
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(())
    }

    /// Fails, naming the process and its log, if anything the bench started has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        let procs = self
            .relay
            .iter_mut()
            .chain(self.nodes.iter_mut().filter_map(|n| match n {
                RunningNode::Process(p) => Some(p),
                RunningNode::InProcess(_) => None,
            }));
        for p in procs {
            if let Some(status) = p.exited() {
                bail!("{} exited ({status}); its log: {}", p.name, p.log.display());
            }
        }
        for n in &self.nodes {
            if let RunningNode::InProcess(node) = n {
                if node.is_finished() {
                    bail!("in-process node {} stopped", node.endpoint());
                }
            }
        }
        Ok(())
    }

    /// The relay's resident memory, if the bench knows its pid.
    pub fn relay_rss(&self) -> Option<u64> {
        self.relay_pid.and_then(rss_of)
    }

    /// Resident memory of the nodes the bench runs: the sum of node processes, or the bench's
    /// own when they run in-process.
    pub fn nodes_rss(&self) -> Option<u64> {
        if self.mode == NodeMode::InProcess {
            return rss_of(std::process::id());
        }
        let pids: Vec<u32> = self
            .nodes
            .iter()
            .filter_map(|n| match n {
                RunningNode::Process(p) => Some(p.pid()),
                RunningNode::InProcess(_) => None,
            })
            .collect();
        if pids.is_empty() {
            return None;
        }
        Some(pids.into_iter().filter_map(rss_of).sum())
    }

    /// CPU seconds used so far by the relay, the node processes and the bench itself (which
    /// includes in-process nodes).
    pub fn cpu(&self) -> CpuTimes {
        let nodes: Vec<u32> = self
            .nodes
            .iter()
            .filter_map(|n| match n {
                RunningNode::Process(p) => Some(p.pid()),
                RunningNode::InProcess(_) => None,
            })
            .collect();
        CpuTimes {
            relay_s: self.relay_pid.and_then(cpu_of),
            nodes_s: (!nodes.is_empty()).then(|| nodes.into_iter().filter_map(cpu_of).sum()),
            bench_s: cpu_of(std::process::id()),
        }
    }

    /// The relay's queued frames per stream (`control`, `flash`, …), from its metrics.
    pub async fn relay_queues(&self) -> Option<BTreeMap<String, u64>> {
        relay_queues(self.metrics?).await
    }

    /// The relay's metrics address, when the bench started the relay.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics
    }

    /// Stops everything the bench started; keeps the directory if asked to.
    pub async fn shutdown(mut self) -> Option<PathBuf> {
        self.stop_all().await;
        let tmp = self.tmp.take()?;
        if self.opts.keep {
            Some(tmp.keep())
        } else {
            None
        }
    }

    async fn stop_all(&mut self) {
        let mut in_process = JoinSet::new();
        for n in &mut self.nodes {
            if let RunningNode::Process(p) = n {
                p.terminate();
            }
        }
        for n in self.nodes.drain(..) {
            match n {
                RunningNode::Process(mut p) => p.reap(),
                RunningNode::InProcess(node) => {
                    in_process.spawn(node.shutdown());
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), in_process.join_all()).await;
        if let Some(mut r) = self.relay.take() {
            r.terminate();
            r.reap();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            match n {
                RunningNode::Process(p) => p.terminate(),
                // Dropping the handle stops the node.
                RunningNode::InProcess(_) => {}
            }
        }
        for n in &mut self.nodes {
            if let RunningNode::Process(p) = n {
                p.reap();
            }
        }
        if let Some(r) = &mut self.relay {
            r.terminate();
            r.reap();
        }
    }
}

#[derive(Debug)]
enum RunningNode {
    Process(Proc),
    InProcess(hotline_client::node::Node),
}

/// A child process with its stderr in `<dir>/<name>.log`.
#[derive(Debug)]
struct Proc {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    fn spawn(
        name: &str,
        bin: &Path,
        args: &[&std::ffi::OsStr],
        dir: &Path,
        log_level: &str,
    ) -> Result<Self> {
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(bin)
            .args(args)
            .env("RUST_LOG", log_level)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Self {
            name: name.into(),
            child: Some(child),
            log,
        })
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    fn terminate(&mut self) {
        if let Some(c) = &self.child {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
    }

    /// Waits up to 10 s for a terminated child, then kills it.
    fn reap(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(c.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn endpoint(dir: &Path, id: &str) -> Endpoint {
    Endpoint {
        id: id.into(),
        config: dir.join(format!("{id}.toml")),
        socket: dir.join(format!("data/{id}/control.sock")),
    }
}

fn existing_endpoint(dir: &Path, id: &str) -> Result<Endpoint> {
    let config = dir.join(format!("{id}.toml"));
    let file = NodeFile::read(&config).with_context(|| format!("--certs: endpoint {id}"))?;
    Ok(Endpoint {
        id: id.into(),
        socket: file.control_socket(),
        config,
    })
}

/// A free UDP port on 127.0.0.1 (free when asked; the relay binds it right after).
pub fn free_udp() -> Result<SocketAddr> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?)
}

fn free_tcp() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// CPU seconds (user + system) of the processes of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct CpuTimes {
    /// The relay, if its pid is known.
    pub relay_s: Option<f64>,
    /// Node processes, if any.
    pub nodes_s: Option<f64>,
    /// The bench (with in-process nodes, those too).
    pub bench_s: Option<f64>,
}

impl CpuTimes {
    /// Cores used between `earlier` and `self`, over `wall` seconds.
    pub fn cores_since(&self, earlier: &Self, wall: f64) -> Self {
        let d = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if wall > 0.0 => Some(((a - b) / wall * 100.0).round() / 100.0),
            _ => None,
        };
        Self {
            relay_s: d(self.relay_s, earlier.relay_s),
            nodes_s: d(self.nodes_s, earlier.nodes_s),
            bench_s: d(self.bench_s, earlier.bench_s),
        }
    }
}

/// User + system CPU seconds of a process, from `/proc/<pid>/stat`.
pub fn cpu_of(pid: u32) -> Option<f64> {
    parse_cpu(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn parse_cpu(stat: &str) -> Option<f64> {
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15,
    // in USER_HZ (100 per second on Linux, whatever the kernel's HZ).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// `VmRSS` of a process, in bytes.
pub fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&status)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// A node's status over its control socket.
pub async fn status(socket: &Path) -> Result<StatusView> {
    let mut c = ControlClient::connect(socket).await?;
    for event in c.call(Request::Status).await.context("status")? {
        if let Event::Status(s) = event {
            return Ok(*s);
        }
    }
    bail!("node answered status without a status")
}

async fn wait_link_up(ep: &Endpoint, deadline: Instant) -> Result<()> {
    loop {
        let last = match status(&ep.socket).await {
            Ok(s) if s.link == "up" => return Ok(()),
            Ok(s) => format!(
                "link {}, connected {}, last error {:?}",
                s.link, s.connected, s.last_error
            ),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() > deadline {
            bail!("endpoint {}: link not up in time ({last})", ep.id);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The queued frames per stream of the relay whose metrics are at `addr`.
pub async fn relay_queues(addr: SocketAddr) -> Option<BTreeMap<String, u64>> {
    let text = scrape(addr).await.ok()?;
    Some(parse_queued_frames(&text))
}

async fn scrape(addr: SocketAddr) -> Result<String> {
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await?;
        let mut text = String::new();
        s.read_to_string(&mut text).await?;
        anyhow::Ok(text)
    };
    tokio::time::timeout(Duration::from_secs(2), fetch)
        .await
        .context("metrics scrape timed out")?
}

/// `hotline_relay_queued_frames{stream="flash"} 12` lines → `{"flash": 12}`.
fn parse_queued_frames(text: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("hotline_relay_queued_frames{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once('}') else {
            continue;
        };
        let Some(stream) = labels
            .split(',')
            .find_map(|l| l.strip_prefix("stream=\""))
            .map(|s| s.trim_end_matches('"'))
        else {
            continue;
        };
        if let Ok(v) = value.trim().parse::<f64>() {
            out.insert(stream.to_owned(), v.max(0.0) as u64);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\thotline-relay\nVmPeak:\t  9000 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(12345 * 1024));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
        assert!(rss_of(std::process::id()).is_some_and(|b| b > 0));
    }

    #[test]
    fn cpu_seconds_are_read_from_proc_stat() {
        let stat = "4242 (hotline relay) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0";
        assert_eq!(parse_cpu(stat), Some(3.0));
        assert!(cpu_of(std::process::id()).is_some());
        let a = CpuTimes {
            relay_s: Some(1.0),
            nodes_s: None,
            bench_s: Some(2.0),
        };
        let b = CpuTimes {
            relay_s: Some(3.0),
            nodes_s: None,
            bench_s: Some(2.5),
        };
        let c = b.cores_since(&a, 2.0);
        assert_eq!(c.relay_s, Some(1.0));
        assert_eq!(c.bench_s, Some(0.25));
        assert_eq!(c.nodes_s, None);
    }

    #[test]
    fn queued_frames_are_read_from_openmetrics() {
        let text = "# HELP hotline_relay_queued_frames Frames queued\n\
                    hotline_relay_queued_frames{stream=\"flash\"} 3\n\
                    hotline_relay_queued_frames{stream=\"routine\"} 1200\n\
                    hotline_relay_queued_bytes{stream=\"routine\"} 99\n";
        let q = parse_queued_frames(text);
        assert_eq!(q.len(), 2);
        assert_eq!(q["routine"], 1200);
        assert_eq!(q["flash"], 3);
    }

    #[test]
    fn auto_mode_switches_to_in_process_for_many_pairs() {
        assert_eq!(NodeMode::Auto.resolve(1), NodeMode::Process);
        assert_eq!(NodeMode::Auto.resolve(100), NodeMode::InProcess);
        assert_eq!(NodeMode::Process.resolve(100), NodeMode::Process);
    }
}
