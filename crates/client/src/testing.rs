//! A whole hotline in one process, for tests: an exercise PKI in a temporary directory, a relay
//! on `127.0.0.1:0` and nodes started and stopped at will on their own stores.
//!
//! Behind the `test-utils` feature. Ports are bound as 0 and read back from the relay, so tests
//! never race for a "free" port. Nodes are real [`Node`]s (QUIC, TLS, redb with fsync); only the
//! processes are missing, which is what `tests/` adds.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, bail};
use hotline_net::tls::{self, Credentials};
use hotline_relay::{Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::certs::{self, DeadlineOverrides, InitRequest};
use crate::config::NodeConfig;
use crate::control::{ControlClient, Event, Request, StatusView};
use crate::node::Node;

/// A relay serving the hotline `us` ↔ `jp`, with configs for both nodes.
#[derive(Debug)]
pub struct Hotline {
    dir: tempfile::TempDir,
    relay: Server,
}

impl Hotline {
    /// Writes the PKI and configs (with `deadlines`) and starts the relay.
    pub async fn start(deadlines: &DeadlineOverrides) -> Result<Self> {
        Self::start_with(deadlines, |_| {}).await
    }

    /// As [`Hotline::start`], with the relay's configuration edited by `edit` first.
    pub async fn start_with(
        deadlines: &DeadlineOverrides,
        edit: impl FnOnce(&mut ServerConfig),
    ) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("hotline-test-").tempdir()?;
        let pairs = certs::init(
            dir.path(),
            &InitRequest {
                relay_name: "localhost".into(),
                endpoints: vec!["us".into(), "jp".into()],
                pairs: vec![],
                // Replaced by the relay's real address when a node is configured.
                relay_addr: "127.0.0.1:9".parse()?,
                force: false,
            },
            deadlines,
        )?;
        let ca = tls::load_certs(&dir.path().join("ca.pem"))?;
        let creds =
            Credentials::load(&dir.path().join("relay.pem"), &dir.path().join("relay.key"))?;
        let mut config = ServerConfig::new(
            "127.0.0.1:0".parse()?,
            ca,
            creds,
            dir.path().join("relay-data"),
            pairs,
        );
        edit(&mut config);
        let relay = Server::spawn(config).await?;
        Ok(Self { dir, relay })
    }

    /// The directory holding the PKI, configs and stores.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The config file of `endpoint`.
    pub fn config_path(&self, endpoint: &str) -> PathBuf {
        self.dir.path().join(format!("{endpoint}.toml"))
    }

    /// `endpoint`'s validated config, pointed at this relay.
    pub fn node_config(&self, endpoint: &str) -> Result<NodeConfig> {
        let mut cfg = NodeConfig::load(&self.config_path(endpoint))?;
        cfg.relay = self.relay.local_addr();
        Ok(cfg)
    }

    /// Starts `endpoint`'s node (on its store, which survives restarts).
    pub async fn node(&self, endpoint: &str) -> Result<Node> {
        Ok(Node::spawn(self.node_config(endpoint)?).await?)
    }

    /// The relay.
    pub fn relay(&self) -> &Server {
        &self.relay
    }

    /// The relay's `GET /metrics` body (the relay must have been started with metrics on).
    pub async fn relay_metrics(&self) -> Result<String> {
        let Some(addr) = self.relay.metrics_addr() else {
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
