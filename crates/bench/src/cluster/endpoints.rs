//! The endpoints and pairs of an exercise directory, and a node reached over its control socket.
//!
//! A fresh exercise names its endpoints `aN`/`bN`; an existing one (`--certs`) is read from its
//! `relay.toml` and node configs. Nothing here starts or stops a process.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hotline_client::config::NodeFile;
use hotline_client::control::{ControlClient, Event, Request, StatusView};

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

/// The first `max_pairs` `[[hotline]]` tables of `dir/relay.toml`, as pairs of endpoints whose
/// configs are in `dir`.
pub(super) fn exercise_pairs(dir: &Path, max_pairs: usize) -> Result<Vec<Pair>> {
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
        let sender = existing_endpoint(dir, a)?;
        let receiver = existing_endpoint(dir, b)?;
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
    Ok(pairs)
}

pub(super) fn endpoint(dir: &Path, id: &str) -> Endpoint {
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

pub(super) async fn wait_link_up(ep: &Endpoint, deadline: Instant) -> Result<()> {
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
