//! `hotline-relay`: runs a Hotline relay from a TOML file, or checks that file.
//!
//! Thin on purpose: it parses arguments, turns the TOML file into the library's typed
//! [`ServerConfig`](hotline_relay::ServerConfig) (loading and checking the certificates on the way), installs the tracing
//! subscriber and runs [`Server`] until SIGINT or SIGTERM. `check` runs the same conversion and
//! stops there. Every error is one `error: …` line on stderr and exit status 1.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use hotline_relay::Server;
use tracing::info;

mod relay_file;
mod reloading;

use relay_file::load;

const EXAMPLES: &str = "\
Examples:
  hotline-relay --config relay.toml          run the relay
  hotline-relay check --config relay.toml    validate config and certificates, then exit
  hotline-relay status --config relay.toml   hotlines, connected endpoints, queues, store size
  hotline-relay --log-format json --config relay.toml   one JSON object per log line
  hotline-relay reload --config relay.toml   make the running relay re-read its config (as SIGHUP)
  RUST_LOG=hotline_relay=debug hotline-relay --config relay.toml

The configuration format is documented in deploy/relay.example.toml; `hotline certs init`
writes a ready-to-run relay.toml. Relative paths in it are resolved against its directory.";

/// Hotline relay: forwards sealed messages between the endpoints of each configured hotline.
#[derive(Debug, Parser)]
#[command(name = "hotline-relay", version, after_help = EXAMPLES)]
struct Cli {
    /// The relay's TOML configuration file.
    #[arg(long, short, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log lines on stderr: `text` (default) or `json` (one object per line, for collectors).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the configuration and certificates (validity, CA, key matches certificate,
    /// serverAuth usage, CRL signed by the CA and not expired), print one `ok:` line and exit.
    Check,
    /// Ask the running relay (over its metrics listener, `GET /status`) for its hotlines,
    /// each endpoint's connection (address, since, last frame) and queues per lane, and the
    /// store's size; one line per hotline and per endpoint.
    Status {
        /// Print the JSON snapshot instead.
        #[arg(long)]
        json: bool,
    },
    /// Make the running relay re-read its configuration, certificates and CRL (as SIGHUP does),
    /// through its admin socket `<data_dir>/admin.sock`; prints one `reloaded:` line, or
    /// `error:` and exit 1 if the new configuration was refused (the old one stays in force).
    Reload,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(config) = cli.config else {
        Cli::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "--config FILE is required",
            )
            .exit()
    };
    let result = match cli.command {
        Some(Command::Check) => check(&config),
        Some(Command::Status { json }) => status(&config, json),
        Some(Command::Reload) => reload(&config),
        None => run(&config, cli.log_format),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[expect(clippy::print_stdout, reason = "`check` reports its verdict on stdout")]
fn check(path: &Path) -> anyhow::Result<()> {
    let config = load(path)?;
    if let Some(next) = config.crl_next_update {
        if next < std::time::SystemTime::now() {
            eprintln!(
                "warning: the CRL expired at {} (next update); crl_expired = \"warn\" lets the relay run",
                humantime::format_rfc3339_seconds(next)
            );
        }
    }
    let endpoints: std::collections::BTreeSet<_> =
        config.hotlines.iter().flat_map(|(a, b)| [a, b]).collect();
    println!(
        "ok: {}: listen {}, {} hotline(s) between {} endpoint(s), certificates valid",
        path.display(),
        config.listen,
        config.hotlines.len(),
        endpoints.len()
    );
    Ok(())
}

#[expect(
    clippy::print_stdout,
    reason = "`status` prints the relay's status on stdout"
)]
fn status(path: &Path, json: bool) -> anyhow::Result<()> {
    let Some(addr) = relay_file::load_metrics_addr(path)? else {
        anyhow::bail!(
            "{}: metrics = \"off\": the status is served on the metrics listener",
            path.display()
        );
    };
    let status = hotline_relay::status::fetch(addr)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", status.to_text());
    }
    Ok(())
}

#[expect(
    clippy::print_stdout,
    reason = "`reload` reports its outcome on stdout"
)]
fn reload(path: &Path) -> anyhow::Result<()> {
    let data_dir = relay_file::data_dir(path)?;
    let socket = hotline_relay::admin::socket_path(&data_dir);
    match hotline_relay::admin::request(&socket, hotline_relay::admin::AdminRequest::Reload)
        .context("is the relay running?")?
    {
        hotline_relay::admin::AdminReply::Reloaded { summary } => {
            println!("reloaded: {summary}");
            Ok(())
        }
        hotline_relay::admin::AdminReply::Error { error } => anyhow::bail!("{error}"),
        other => anyhow::bail!("unexpected reply {other:?}"),
    }
}

fn run(path: &Path, format: LogFormat) -> anyhow::Result<()> {
    let subscriber = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        );
    match format {
        LogFormat::Text => subscriber
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => subscriber.json().with_current_span(true).init(),
    }
    let runtime = hotline_net::runtime::build()?;
    runtime.block_on(async {
        // Handlers first: a signal that arrives while the relay starts (a `systemctl reload`
        // right after `start`) must not kill it; a SIGHUP then reloads once it runs.
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt =
            signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let mut terminate =
            signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        // SIGHUP reloads; it never kills the relay.
        let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        let config = load(path)?;
        let socket = hotline_relay::admin::socket_path(&config.data_dir);
        let mut server = Server::spawn(config).await.context("starting the relay")?;
        let (jobs, mut admin) = tokio::sync::mpsc::channel(1);
        let listener = hotline_relay::admin::bind(&socket)?;
        let admin_task = tokio::spawn(hotline_relay::admin::serve(listener, jobs));
        let signal = loop {
            tokio::select! {
                _ = interrupt.recv() => break "SIGINT",
                _ = terminate.recv() => break "SIGTERM",
                _ = hangup.recv() => reloading::reload_logged(&mut server, path),
                Some((request, reply)) = admin.recv() => {
                    let _ = reply.send(reloading::answer(&mut server, path, request));
                }
                e = server.store_failure() => {
                    admin_task.abort();
                    let _ = std::fs::remove_file(&socket);
                    server.shutdown().await;
                    return Err(anyhow::Error::new(e).context("the relay's store failed"));
                }
            }
        };
        info!(signal, "shutting down");
        admin_task.abort();
        let _ = std::fs::remove_file(&socket);
        server.shutdown().await;
        Ok(())
    })
}
