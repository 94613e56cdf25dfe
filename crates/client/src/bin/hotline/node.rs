//! `hotline node`: run one or more endpoint nodes until a signal.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use hotline_client::config::NodeConfig;
use hotline_client::node::Node;

#[derive(Debug, Args)]
pub(crate) struct NodeArgs {
    /// Node config (TOML); repeat for several endpoints in one process.
    #[arg(long, required = true, env = "HOTLINE_CONFIG")]
    config: Vec<PathBuf>,
}

pub(crate) async fn run(args: NodeArgs) -> Result<()> {
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
    for mut node in nodes {
        let mut stop = stop_rx.clone();
        tasks.spawn(async move {
            let endpoint = node.endpoint().clone();
            let by_itself = tokio::select! {
                r = node.stopped() => Some(r),
                _ = stop.wait_for(|s| *s) => None,
            };
            let result = match by_itself {
                Some(r) => r,
                None => node.shutdown().await,
            };
            result.with_context(|| format!("node {endpoint}"))
        });
    }
    let mut result = Ok(());
    tokio::select! {
        () = shutdown_signal() => {}
        Some(done) = tasks.join_next() => result = done.context("node task")?,
    }
    let _ = stop.send(true);
    while let Some(done) = tasks.join_next().await {
        if let (Ok(()), Ok(Err(e))) = (&result, done) {
            result = Err(e);
        }
    }
    result
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
