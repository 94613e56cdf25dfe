//! `hotline audit verify|export`: the hash-chained audit log, with or without a running node.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use hotline_client::config::NodeConfig;
use hotline_client::control::{self, ControlClient, Event, Request};
use hotline_client::view;

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCmd {
    /// Check the chain, every signed head and the partner's signed heads; name the first bad
    /// record. Exit 1 if anything is wrong.
    ///
    /// Example: hotline audit verify --config ex/us.toml
    Verify {
        /// Node config (TOML).
        #[arg(long, env = "HOTLINE_CONFIG")]
        config: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print every entry, signed head and partner head (for oversight bodies), then the
    /// verification report.
    ///
    /// Example: hotline audit export --config ex/us.toml --json > us-audit.jsonl
    Export {
        /// Node config (TOML).
        #[arg(long, env = "HOTLINE_CONFIG")]
        config: PathBuf,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) async fn run(cmd: AuditCmd) -> Result<()> {
    let (config, json, export) = match cmd {
        AuditCmd::Verify { config, json } => (config, json, false),
        AuditCmd::Export { config, json } => (config, json, true),
    };
    let values = audit_values(&config, export).await?;
    let mut report = None;
    for v in values {
        if v["type"] == "verify" {
            report = Some(v["report"].clone());
            continue;
        }
        if json {
            say!("{v}");
        } else {
            say!("{}", view::audit_entry_line(&v));
        }
    }
    let report = report.context("no verification report")?;
    if json {
        say!(
            "{}",
            serde_json::json!({ "type": "verify", "report": report })
        );
    }
    match report["first_bad"].as_str() {
        Some(bad) => bail!("audit log does not verify: {}", view::escape_control(bad)),
        None => {
            if !json {
                say!(
                    "audit log ok: {} records, {} signed heads, {} partner heads verified",
                    report["entries"],
                    report["signed_heads"],
                    report["partner_heads"]
                );
            }
            Ok(())
        }
    }
}

/// Asks the running node, or reads the store directly when the node is stopped.
async fn audit_values(config: &Path, export: bool) -> Result<Vec<serde_json::Value>> {
    match ControlClient::connect(&control::socket_for(config)?).await {
        Ok(mut c) => Ok(c
            .call(Request::Audit { export })
            .await?
            .into_iter()
            .filter_map(|e| match e {
                Event::Audit { value } => Some(value),
                _ => None,
            })
            .collect()),
        Err(_) => {
            let cfg = NodeConfig::load(config)?;
            let (store, _) = hotline_client::store::Store::open(&cfg.data_dir)?;
            let own = cfg.identity_key().public();
            Ok(hotline_client::audit::report(
                &store.database(),
                &own,
                &cfg.partner.key,
                export,
            )?)
        }
    }
}
