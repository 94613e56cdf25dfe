//! A whole hotline in one process, for tests: an exercise PKI in a temporary directory, a relay
//! on `127.0.0.1:0` and nodes started and stopped at will on their own stores.
//!
//! Behind the `test-utils` feature. Ports are bound as 0 and read back from the relay, so tests
//! never race for a "free" port. Nodes are real [`Node`]s (QUIC, TLS, redb with fsync); only the
//! processes are missing, which is what `tests/` adds.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, bail};
use hotline_net::tls::{self, Credentials};
use hotline_proto::EndpointId;
use hotline_relay::{Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::certs::{self, DeadlineOverrides, InitRequest, RelaySpec};
use crate::config::{NodeConfig, RelayAddress};
use crate::control::{ControlClient, Event, Request, StatusView};
use crate::node::Node;

/// One or more relays serving the hotline `us` ↔ `jp`, with configs for both nodes.
#[derive(Debug)]
pub struct Hotline {
    dir: tempfile::TempDir,
    /// Each relay, `None` while stopped; its address stays, so a restart listens there again.
    relays: Vec<Option<Server>>,
    addrs: Vec<SocketAddr>,
    pairs: Vec<(EndpointId, EndpointId)>,
}

impl Hotline {
    /// Writes the PKI and configs (with `deadlines`) and starts the relay.
    pub async fn start(deadlines: &DeadlineOverrides) -> Result<Self> {
        Self::start_with(deadlines, |_| {}).await
    }

    /// As [`Hotline::start`], with the relay's configuration edited by `edit` first.
    pub async fn start_with(
        deadlines: &DeadlineOverrides,
        edit: impl FnMut(&mut ServerConfig),
    ) -> Result<Self> {
        Self::start_relays(1, deadlines, edit).await
    }

    /// As [`Hotline::start_with`], with `count` independent relays (each its own store); every
    /// node config lists all of them.
    pub async fn start_relays(
        count: usize,
        deadlines: &DeadlineOverrides,
        mut edit: impl FnMut(&mut ServerConfig),
    ) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("hotline-test-").tempdir()?;
        let pairs = certs::init(
            dir.path(),
            &InitRequest {
                endpoints: vec!["us".into(), "jp".into()],
                pairs: vec![],
                // Replaced by the relays' real addresses when a node is configured.
                relays: vec![RelaySpec::new("localhost", "127.0.0.1:9")],
                force: false,
                wipe_data: false,
                days: Default::default(),
                endpoint_keys: true,
            },
            deadlines,
        )?;
        let mut hotline = Self {
            dir,
            relays: Vec::new(),
            addrs: Vec::new(),
            pairs,
        };
        for i in 0..count {
            let mut config = hotline.relay_config(i, "127.0.0.1:0".parse()?)?;
            edit(&mut config);
            let relay = Server::spawn(config).await?;
            hotline.addrs.push(relay.local_addr());
            hotline.relays.push(Some(relay));
        }
        Ok(hotline)
    }

    fn relay_config(&self, i: usize, listen: SocketAddr) -> Result<ServerConfig> {
        let dir = self.dir.path();
        let ca = tls::load_certs(&dir.join("ca.pem"))?;
        let creds = Credentials::load(&dir.join("relay.pem"), &dir.join("relay.key"))?;
        let data = match i {
            0 => dir.join("relay-data"),
            i => dir.join(format!("relay-data-{}", i + 1)),
        };
        Ok(ServerConfig::new(
            listen,
            ca,
            creds,
            data,
            self.pairs.clone(),
        ))
    }

    /// Stops relay `i` (its connections are closed; its store is kept).
    pub async fn stop_relay(&mut self, i: usize) {
        if let Some(relay) = self.relays.get_mut(i).and_then(Option::take) {
            relay.shutdown().await;
        }
    }

    /// Starts relay `i` again, on its address and store, with a default configuration.
    pub async fn restart_relay(&mut self, i: usize) -> Result<()> {
        let Some(addr) = self.addrs.get(i).copied() else {
            bail!("no relay {i}");
        };
        let relay = Server::spawn(self.relay_config(i, addr)?).await?;
        self.relays[i] = Some(relay);
        Ok(())
    }

    /// The directory holding the PKI, configs and stores.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The config file of `endpoint`.
    pub fn config_path(&self, endpoint: &str) -> PathBuf {
        self.dir.path().join(format!("{endpoint}.toml"))
    }

    /// `endpoint`'s validated config, pointed at these relays.
    pub fn node_config(&self, endpoint: &str) -> Result<NodeConfig> {
        let mut cfg = NodeConfig::load(&self.config_path(endpoint))?;
        cfg.relays = self
            .addrs
            .iter()
            .map(|a| RelayAddress::at(*a, "localhost"))
            .collect();
        Ok(cfg)
    }

    /// Starts `endpoint`'s node (on its store, which survives restarts).
    pub async fn node(&self, endpoint: &str) -> Result<Node> {
        Ok(Node::spawn(self.node_config(endpoint)?).await?)
    }

    /// The first relay (panics if it is stopped: a test bug).
    pub fn relay(&self) -> &Server {
        self.relay_at(0)
    }

    /// Relay `i` (panics if it is stopped or does not exist: a test bug).
    pub fn relay_at(&self, i: usize) -> &Server {
        match self.relays.get(i) {
            Some(Some(relay)) => relay,
            _ => panic!("relay {i} is not running"),
        }
    }

    /// The first relay's `GET /metrics` body (the relay must have been started with metrics
    /// on).
    pub async fn relay_metrics(&self) -> Result<String> {
        self.relay_metrics_at(0).await
    }

    /// Relay `i`'s `GET /metrics` body (started with metrics on).
    pub async fn relay_metrics_at(&self, i: usize) -> Result<String> {
        let Some(addr) = self.relay_at(i).metrics_addr() else {
            bail!("the relay serves no metrics");
        };
        let mut socket = tokio::net::TcpStream::connect(addr).await?;
        socket
            .write_all(b"GET /metrics HTTP/1.1\r\nhost: relay\r\n\r\n")
            .await?;
        let mut out = String::new();
        socket.read_to_string(&mut out).await?;
        match out.split_once("\r\n\r\n") {
            Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_owned()),
            _ => bail!("metrics answered {out:?}"),
        }
    }
}

/// The value of the series `name` (with its labels, as printed) in a metrics body.
pub fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        (series == name).then(|| value.parse().ok())?
    })
}

/// `status` of a running node.
pub async fn status(node: &Node) -> Result<StatusView> {
    let mut c = ControlClient::connect(node.control_socket()).await?;
    for e in c.call(Request::Status).await? {
        if let Event::Status(s) = e {
            return Ok(*s);
        }
    }
    bail!("no status from {}", node.endpoint())
}

/// Waits (up to `within`) until `node` reports the link up.
pub async fn wait_link_up(node: &Node, within: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if status(node).await?.link == "up" {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "{} did not report the link up within {within:?}",
                node.endpoint()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
