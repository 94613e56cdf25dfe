//! `hotline node`: run one or more endpoint nodes until SIGINT or SIGTERM. SIGHUP re-reads
//! each node's configuration file and applies what can change live (see [`Node::reload`]); it
//! never stops the node. A file that does not load, or changes what needs a restart, is
//! refused with one warning line and the node keeps running on the configuration it has.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use hotline_client::config::NodeConfig;
use hotline_client::node::Node;
use tokio::sync::mpsc;
use tracing::{info, warn};

#[derive(Debug, Args)]
pub(crate) struct NodeArgs {
    /// Node config (TOML); repeat for several endpoints in one process.
    #[arg(long, required = true, env = "HOTLINE_CONFIG")]
    config: Vec<PathBuf>,
}

pub(crate) async fn run(args: NodeArgs) -> Result<()> {
    // Installed before anything is loaded, so a SIGHUP while the node starts (a `systemctl
    // reload` right after `start`) never takes the default action (exit); it reloads once the
    // node runs.
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    let configs = args
        .config
        .iter()
        .map(|c| NodeConfig::load(c))
        .collect::<Result<Vec<_>>>()?;
    let mut nodes = Vec::with_capacity(configs.len());
    for cfg in configs {
        let local = cfg.local.clone();
        let node = Node::spawn(cfg)
            .await
            .with_context(|| format!("starting node {local}"))?;
        nodes.push(node);
    }
    // Runs until a signal, or until one node stops on its own (a store failure).
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let mut reloads = Vec::with_capacity(nodes.len());
    for (mut node, path) in nodes.into_iter().zip(args.config.clone()) {
        let mut stop = stop_rx.clone();
        let (reload_tx, mut reload_rx) = mpsc::unbounded_channel::<()>();
        reloads.push(reload_tx);
        tasks.spawn(async move {
            let endpoint = node.endpoint().clone();
            let by_itself = loop {
                tokio::select! {
                    r = node.stopped() => break Some(r),
                    _ = stop.wait_for(|s| *s) => break None,
                    Some(()) = reload_rx.recv() => reload(&mut node, &path),
                }
            };
            let result = match by_itself {
                Some(r) => r,
                None => node.shutdown().await,
            };
            result.with_context(|| format!("node {endpoint}"))
        });
    }
    let mut result = Ok(());
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(done) = tasks.join_next() => {
                result = done.context("node task")?;
                break;
            }
            _ = hangup.recv() => {
                for reload in &reloads {
                    let _ = reload.send(());
                }
            }
        }
    }
    let _ = stop.send(true);
    while let Some(done) = tasks.join_next().await {
        if let (Ok(()), Ok(Err(e))) = (&result, done) {
            result = Err(e);
        }
    }
    result
}

/// Re-reads `path` and applies it to `node`; one log line either way.
fn reload(node: &mut Node, path: &std::path::Path) {
    let endpoint = node.endpoint().clone();
    let result = NodeConfig::load(path).and_then(|cfg| Ok(node.reload(cfg)?));
    match result {
        Ok(summary) => info!(%endpoint, config = %path.display(), %summary, "reloaded"),
        Err(e) => warn!(
            %endpoint,
            config = %path.display(),
            error = %format!("{e:#}"),
            "reload refused; the node keeps its configuration"
        ),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
