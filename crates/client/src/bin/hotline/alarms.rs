//! `hotline alarms` and `hotline alarms clear`: the operator's alarm book (deduplicated
//! alarms with severity, count and first/last time), followed live or cleared.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use hotline_client::control::{self, AlarmView, ControlClient, Event, Request};
use hotline_client::view;

/// List alarms (uncleared ones, highest severity first), or clear them.
#[derive(Debug, Args)]
#[command(subcommand_negates_reqs = true, args_conflicts_with_subcommands = true)]
pub(crate) struct AlarmsArgs {
    #[command(subcommand)]
    command: Option<AlarmsCmd>,
    /// Node config (TOML).
    #[arg(long, required = true)]
    config: Option<PathBuf>,
    /// Keep printing new and changed entries as they happen.
    #[arg(long)]
    follow: bool,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
    /// Cleared entries too.
    #[arg(long)]
    all: bool,
}

#[derive(Debug, Subcommand)]
enum AlarmsCmd {
    /// Clear (acknowledge) one alarm by id, or every uncleared one; recorded in the audit log
    /// with who ($USER) and when. A repeat of a cleared alarm re-opens it.
    ///
    /// Example: hotline alarms clear --config ex/us.toml 3
    Clear(ClearArgs),
}

#[derive(Debug, Args)]
struct ClearArgs {
    /// Node config (TOML).
    #[arg(long)]
    config: PathBuf,
    /// The alarm's id, as `hotline alarms` shows it (`#3`).
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    id: Option<u64>,
    /// Clear every uncleared alarm.
    #[arg(long)]
    all: bool,
    /// Print the cleared entries as JSON, one per line.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(args: AlarmsArgs) -> Result<()> {
    match args.command {
        Some(AlarmsCmd::Clear(clear_args)) => clear(clear_args).await,
        None => {
            let config = args.config.context("--config is required")?;
            list(config, args.follow, args.json, args.all).await
        }
    }
}

async fn list(config: PathBuf, follow: bool, json: bool, all: bool) -> Result<()> {
    let mut c = ControlClient::connect(&control::socket_for(&config)?).await?;
    let tag = c.request(Request::Alarms { follow, all }).await?;
    let mut events = c.events_for(tag);
    let mut shown = 0usize;
    while let Some(event) = events.next().await? {
        let Event::Alarm(a) = event else { continue };
        print_entry(&a, json)?;
        shown += 1;
    }
    if shown == 0 && !json {
        say!("no alarms");
    }
    Ok(())
}

async fn clear(args: ClearArgs) -> Result<()> {
    let ClearArgs {
        config,
        id,
        all,
        json,
    } = args;
    let mut c = ControlClient::connect(&control::socket_for(&config)?).await?;
    let events = c
        .call(Request::ClearAlarm {
            id,
            all,
            by: hotline_client::alarms::local_user(),
        })
        .await?;
    let mut cleared = 0usize;
    for event in events {
        if let Event::Alarm(a) = event {
            print_entry(&a, json)?;
            cleared += 1;
        }
    }
    if cleared == 0 && !json {
        say!("no uncleared alarms");
    }
    Ok(())
}

fn print_entry(a: &AlarmView, json: bool) -> Result<()> {
    if json {
        say!("{}", serde_json::to_string(a)?);
    } else {
        say!("{}", view::alarm_line(a));
    }
    Ok(())
}
