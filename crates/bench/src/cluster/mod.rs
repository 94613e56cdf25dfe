//! The system under test: a relay and pairs of endpoint nodes on loopback, reached through
//! their control sockets.
//!
//! By default [`Cluster::create`] makes a fresh exercise directory with the real
//! `hotline_client::certs::init` (endpoints `a0`/`b0`, `a1`/`b1`, …, paired `aN:bN`), starts
//! `hotline-relay` as a separate process through [`hotline_client::process`] (on `127.0.0.1:0`,
//! its metrics endpoint too, both addresses read back from its log, and the node configs pointed
//! at it) and, pair by pair as [`Cluster::start_pairs`] asks, the nodes:
//! either `hotline node` processes (the binaries next to this one, as `hotline demo` does) or,
//! for many pairs, `hotline_client::node::Node::spawn` tasks inside this process. Either way the bench
//! then talks to every node over its control socket only.
//!
//! With `--certs DIR` it uses an existing exercise directory instead: the pairs are the
//! `[[hotline]]` tables of `DIR/relay.toml`, a node already answering on its control socket is
//! used as it is, and a missing one is started from `DIR/<id>.toml` (its relay address replaced
//! by `--relay`, if given, in a copy of the config).
//!
//! A prepared pair need not be started: [`Cluster::prepared`] and [`Cluster::node_config`]
//! hand its endpoints' configs to a client of the bench's own (the `neighbours` scenario's
//! rogue client connects with one).
//!
//! Everything started here is stopped by [`Cluster::shutdown`] or on drop; relay memory is read
//! from `/proc/<pid>/status`.
//!
//! - `endpoints`: the endpoints and pairs of an exercise; a node's status and link.
//! - `measure`: CPU, memory and relay queue depths.

mod endpoints;
mod measure;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hotline_client::certs::{self, DeadlineOverrides, InitRequest, RelaySpec};
use hotline_client::config::{NodeConfig, NodeFile};
use hotline_client::control::ControlClient;
use hotline_client::process::{
    Binaries, LOOPBACK_ANY, Launcher, Process, point_node_at, set_top_level_key,
};
use hotline_impair::{Impairment, Proxy};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

pub use endpoints::{Endpoint, Pair, status};
use endpoints::{endpoint, exercise_pairs, wait_link_up};
pub use measure::{CpuTimes, cpu_of, hwm_of, relay_queues, relay_wrong_stream_frames, rss_of};

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
    /// Relays to start (each its own process and store); every node uses all of them.
    pub relays: usize,
    /// Put an impairment proxy with this setting (both directions) in front of every relay.
    pub impair: Option<Impairment>,
}

/// A relay and nodes.
#[derive(Debug)]
pub struct Cluster {
    opts: ClusterOptions,
    dir: PathBuf,
    tmp: Option<tempfile::TempDir>,
    /// The relays started here, in order; the first one's memory and metrics are reported.
    relays: Vec<Process>,
    /// Which of `relays` were killed on purpose ([`Cluster::kill_relay`]).
    killed: std::sync::Mutex<Vec<bool>>,
    /// The impairment proxy in front of each relay, when there are proxies.
    proxies: Vec<Proxy>,
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
        let launcher = launcher(&opts)?;
        let tmp = tempfile::Builder::new()
            .prefix("hotline-bench-")
            .tempdir()?;
        let dir = tmp.path().to_owned();
        let endpoints: Vec<String> = (0..max_pairs)
            .flat_map(|i| [format!("a{i}"), format!("b{i}")])
            .collect();
        let pair_names: Vec<String> = (0..max_pairs).map(|i| format!("a{i}:b{i}")).collect();
        let relay_count = opts.relays.max(1);
        certs::init(
            &dir,
            &InitRequest {
                endpoints,
                pairs: pair_names,
                // The relays pick their ports; the node configs are pointed at them below.
                relays: (0..relay_count)
                    .map(|_| RelaySpec::new("localhost", LOOPBACK_ANY))
                    .collect(),
                force: false,
                wipe_data: false,
                days: Default::default(),
                endpoint_keys: true,
            },
            &DeadlineOverrides::new(),
        )
        .context("making the exercise PKI")?;
        let mut relays = Vec::new();
        for i in 1..=relay_count {
            let (toml, log) = if relay_count == 1 {
                ("relay.toml".to_owned(), "relay.log".to_owned())
            } else {
                (format!("relay-{i}.toml"), format!("relay-{i}.log"))
            };
            // Turn the relay's metrics endpoint on: queue depths come from there.
            let relay_toml = dir.join(toml);
            set_top_level_key(&relay_toml, "metrics", &LOOPBACK_ANY.to_string())?;
            relays.push(launcher.start_relay(&relay_toml, LOOPBACK_ANY, &dir.join(log))?);
        }
        let mut addrs: Vec<SocketAddr> = relays.iter().map(|r| r.addr).collect();
        // Nodes reach each relay through its proxy, when asked for.
        let mut proxies = Vec::new();
        if let Some(imp) = opts.impair {
            for (i, addr) in addrs.iter_mut().enumerate() {
                let proxy = Proxy::start(*addr, 0x5eed + i as u64)
                    .with_context(|| format!("starting the impairment proxy for {addr}"))?;
                proxy.set(imp);
                *addr = proxy.addr();
                proxies.push(proxy);
            }
        }
        let pairs: Vec<Pair> = (0..max_pairs)
            .map(|i| Pair {
                index: i,
                sender: endpoint(&dir, &format!("a{i}")),
                receiver: endpoint(&dir, &format!("b{i}")),
            })
            .collect();
        for ep in pairs.iter().flat_map(|p| [&p.sender, &p.receiver]) {
            match addrs.as_slice() {
                [one] => point_node_at(&ep.config, *one)?,
                several => point_node_at_relays(&ep.config, several)?,
            }
        }
        let relay_pid = relays.first().and_then(|r| r.process.pid());
        let metrics = relays.first().and_then(|r| r.metrics);
        let killed = std::sync::Mutex::new(vec![false; relays.len()]);
        let cluster = Self {
            opts,
            dir,
            tmp: Some(tmp),
            relays: relays.into_iter().map(|r| r.process).collect(),
            killed,
            proxies,
            relay_pid,
            metrics,
            pairs,
            started: 0,
            nodes: Vec::new(),
            mode,
        };
        // Let its allocations settle before anyone measures "RSS with 0 endpoints".
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(cluster)
    }

    fn existing(
        opts: ClusterOptions,
        dir: PathBuf,
        max_pairs: usize,
        mode: NodeMode,
    ) -> Result<Self> {
        let pairs = exercise_pairs(&dir, max_pairs)?;
        let tmp = tempfile::Builder::new()
            .prefix("hotline-bench-")
            .tempdir()?;
        Ok(Self {
            relay_pid: opts.relay_pid,
            opts,
            dir: tmp.path().to_owned(),
            tmp: Some(tmp),
            relays: Vec::new(),
            killed: std::sync::Mutex::new(Vec::new()),
            proxies: Vec::new(),
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

    /// The `index`th pair prepared by [`Cluster::create`], whether or not its nodes run.
    pub fn prepared(&self, index: usize) -> Option<&Pair> {
        self.pairs.get(index)
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
                RunningNode::InProcess(Box::new(node))
            }
            _ => RunningNode::Process(launcher(&self.opts)?.start_node(
                &ep.id,
                &[&config],
                &self.dir.join(format!("{}.log", ep.id)),
                &[],
            )?),
        };
        self.nodes.push(node);
        Ok(())
    }

    /// Starts `endpoints` spread over `k` `hotline node` processes (`--processes K`).
    fn start_node_hosts(&mut self, endpoints: &[Endpoint], k: usize) -> Result<()> {
        let per = endpoints.len().div_ceil(k.max(1)).max(1);
        let launcher = launcher(&self.opts)?;
        for (i, group) in endpoints.chunks(per).enumerate() {
            let configs: Vec<PathBuf> = group
                .iter()
                .map(|ep| self.node_config(ep))
                .collect::<Result<_>>()?;
            let configs: Vec<&Path> = configs.iter().map(PathBuf::as_path).collect();
            let name = format!("nodes-{}-{i}", self.nodes.len());
            let log = self.dir.join(format!("{name}.log"));
            let proc = launcher.start_node(&name, &configs, &log, &[])?;
            self.nodes.push(RunningNode::Process(proc));
        }
        Ok(())
    }

    /// The config to start `ep` with: its own, or (with `--relay`) a copy pointing there.
    pub fn node_config(&self, ep: &Endpoint) -> Result<PathBuf> {
        let Some(relay) = self.opts.relay.filter(|_| self.opts.certs.is_some()) else {
            return Ok(ep.config.clone());
        };
        let mut file = NodeFile::read(&ep.config)?;
        if file.relay == Some(relay.to_string()) && file.relays.is_empty() {
            return Ok(ep.config.clone());
        }
        file.relay = Some(relay.to_string());
        file.relays.clear();
        let path = self.dir.join(format!("{}.toml", ep.id));
        std::fs::write(&path, toml::to_string(&file)?)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Fails, naming the process and its log, if anything the bench started has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        let killed = self.killed.lock().map(|k| k.clone()).unwrap_or_default();
        let procs = self
            .relays
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| !killed.get(*i).copied().unwrap_or(false))
            .map(|(_, p)| p)
            .chain(self.nodes.iter_mut().filter_map(|n| match n {
                RunningNode::Process(p) => Some(p),
                RunningNode::InProcess(_) => None,
            }));
        for p in procs {
            if let Some(status) = p.exited() {
                bail!(
                    "{} exited ({status}); its log: {}",
                    p.name(),
                    p.log_path().display()
                );
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

    /// The relay's peak resident memory (`VmHWM`), if the bench knows its pid.
    pub fn relay_hwm(&self) -> Option<u64> {
        self.relay_pid.and_then(hwm_of)
    }

    /// Resident memory of the nodes the bench runs: the sum of node processes, or the bench's
    /// own when they run in-process.
    pub fn nodes_rss(&self) -> Option<u64> {
        if self.mode == NodeMode::InProcess {
            return rss_of(std::process::id());
        }
        let pids = self.node_pids();
        if pids.is_empty() {
            return None;
        }
        Some(pids.into_iter().filter_map(rss_of).sum())
    }

    /// CPU seconds used so far by the relay, the node processes and the bench itself (which
    /// includes in-process nodes).
    pub fn cpu(&self) -> CpuTimes {
        let nodes = self.node_pids();
        CpuTimes {
            relay_s: self.relay_pid.and_then(cpu_of),
            nodes_s: (!nodes.is_empty()).then(|| nodes.into_iter().filter_map(cpu_of).sum()),
            bench_s: cpu_of(std::process::id()),
        }
    }

    /// The pids of the node processes the bench runs.
    fn node_pids(&self) -> Vec<u32> {
        self.nodes
            .iter()
            .filter_map(|n| match n {
                RunningNode::Process(p) => p.pid(),
                RunningNode::InProcess(_) => None,
            })
            .collect()
    }

    /// The relay's queued frames per stream (`control`, `flash`, …), from its metrics.
    pub async fn relay_queues(&self) -> Option<BTreeMap<String, u64>> {
        relay_queues(self.metrics?).await
    }

    /// The relay's count of frames refused for arriving on the wrong stream, per arrival
    /// stream, from its metrics.
    pub async fn relay_wrong_stream_frames(&self) -> Option<BTreeMap<String, u64>> {
        relay_wrong_stream_frames(self.metrics?).await
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
                RunningNode::Process(mut p) => p.stop(),
                RunningNode::InProcess(node) => {
                    in_process.spawn(node.shutdown());
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), in_process.join_all()).await;
        for mut r in self.relays.drain(..) {
            r.stop();
        }
    }

    /// Relays started here.
    pub fn relay_count(&self) -> usize {
        self.relays.len()
    }

    /// Cuts (or restores) every path between the nodes and the relays, like a partition: only
    /// with `--impair` (the paths run through the proxies). Returns whether there are proxies.
    pub fn blackout(&self, on: bool) -> bool {
        for p in &self.proxies {
            p.blackout(on);
        }
        !self.proxies.is_empty()
    }

    /// `kill -9` relay `i` (counting from 0): the nodes must carry on through the others.
    pub fn kill_relay(&self, i: usize) -> Result<()> {
        let Some(relay) = self.relays.get(i) else {
            bail!("no relay {i}: {} started", self.relays.len());
        };
        if let Ok(mut killed) = self.killed.lock() {
            killed[i] = true;
        }
        relay.signal(nix::sys::signal::Signal::SIGKILL);
        Ok(())
    }
}

/// Points the node config at `path` at every one of `relays` (a `[[relays]]` table each,
/// replacing `relay`), keeping the rest of the file.
fn point_node_at_relays(path: &Path, relays: &[SocketAddr]) -> Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut table: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    table.remove("relay");
    let list = relays
        .iter()
        .map(|a| {
            let mut t = toml::Table::new();
            t.insert("addr".into(), toml::Value::String(a.to_string()));
            t.insert("name".into(), toml::Value::String("localhost".into()));
            toml::Value::Table(t)
        })
        .collect();
    table.insert("relays".into(), toml::Value::Array(list));
    std::fs::write(path, toml::to_string(&table)?)
        .with_context(|| format!("writing {}", path.display()))
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
                p.stop();
            }
        }
        for r in &mut self.relays {
            r.stop();
        }
    }
}

#[derive(Debug)]
enum RunningNode {
    Process(Process),
    InProcess(Box<hotline_client::node::Node>),
}

/// A launcher for the binaries in `--bin-dir`, logging at `--log`.
fn launcher(opts: &ClusterOptions) -> Result<Launcher> {
    let binaries = Binaries::new(&opts.bin_dir).context(
        "build them first (cargo build --release --workspace --bins), or pass --bin-dir",
    )?;
    Ok(Launcher::new(binaries).log_filter(&opts.log))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_mode_switches_to_in_process_for_many_pairs() {
        assert_eq!(NodeMode::Auto.resolve(1), NodeMode::Process);
        assert_eq!(NodeMode::Auto.resolve(100), NodeMode::InProcess);
        assert_eq!(NodeMode::Process.resolve(100), NodeMode::Process);
    }
}
