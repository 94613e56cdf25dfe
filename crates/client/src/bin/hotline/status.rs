//! `hotline status` and `rekey`: the node's state, and replacing its sealing key.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use hotline_client::control::{self, ControlClient, Event, Request};
use hotline_client::view;

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// Node config (TOML).
    #[arg(long, env = "HOTLINE_CONFIG")]
    config: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn status(args: StatusArgs) -> Result<()> {
    let mut c = ControlClient::connect(&control::socket_for(&args.config)?).await?;
    for e in c.call(Request::Status).await? {
        if let Event::Status(s) = e {
            if args.json {
                say!("{}", serde_json::to_string(&s)?);
            } else {
                for line in view::status_lines(&s) {
                    say!("{line}");
                }
            }
        }
    }
    Ok(())
}

pub(crate) async fn rekey(args: StatusArgs) -> Result<()> {
    let mut c = ControlClient::connect(&control::socket_for(&args.config)?).await?;
    for e in c.call(Request::Rekey).await? {
        if let Event::Rekeyed { epoch } = e {
            if args.json {
                say!("{}", serde_json::json!({ "epoch": epoch }));
            } else {
                say!("new sealing key: epoch {epoch}");
            }
        }
    }
    Ok(())
}
