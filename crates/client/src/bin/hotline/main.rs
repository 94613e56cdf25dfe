//! `hotline`: run an endpoint node and talk to it.
//!
//! Parses arguments, installs logging and hands off to `hotline_client`; every failure is one
//! `error: …` line and a non-zero exit. What a command prints on stdout is its output, so this
//! binary is where stdout is written. One module per group of subcommands.

/// `println!` for the CLI's output, except that a closed stdout (`hotline status | head -1`)
/// ends the process quietly (exit 0: the reader has what it wanted) instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        if let Err(e) = writeln!(out, $($arg)*).and_then(|()| out.flush()) {
            $crate::stdout_failed(&e);
        }
    }};
}

mod alarms;
mod audit;
mod certs;
mod keys;
mod messages;
mod node;
mod status;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use hotline_client::console::BellPolicy;

/// Hotline endpoint node and operator CLI.
///
/// Quick start (three terminals; `export HOTLINE_CONFIG=ex/us.toml` saves the --config):
///   hotline certs init --out ex --relay localhost --endpoint us --endpoint jp
///   hotline-relay --config ex/relay.toml
///   hotline node --config ex/us.toml        (and ex/jp.toml)
///   hotline send --config ex/us.toml --precedence flash --wait delivered "hello"
///   hotline inbox --config ex/jp.toml
#[derive(Debug, Parser)]
#[command(name = "hotline", version, verbatim_doc_comment)]
struct Cli {
    /// Log lines on stderr: `text` (default) or `json` (one object per line, for log
    /// collectors; mostly for `hotline node`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Cmd,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Exercise PKI and ready-to-run configs.
    ///
    /// Example: hotline certs init --out ex --relay localhost --endpoint us --endpoint jp
    Certs {
        #[command(subcommand)]
        command: certs::CertsCmd,
    },
    /// This endpoint's own identity key and CSR.
    Keys {
        #[command(subcommand)]
        command: keys::KeysCmd,
    },
    /// Pin the partner's identity key from the fingerprint it read to you.
    ///
    /// Example: hotline pin --config us.toml --partner jp --fingerprint "1a2b 3c4d …"
    Pin(keys::PinArgs),
    /// Run an endpoint node (serves the CLI on DATA_DIR/control.sock).
    ///
    /// Repeat --config to host several endpoints in one process (load tests spread
    /// endpoints over a few processes this way); each keeps its own store and socket.
    ///
    /// Example: hotline node --config ex/us.toml
    Node(node::NodeArgs),
    /// Send a message; prints its id once it is durably in the outbox.
    ///
    /// The body is UTF-8 text, not empty, of at most 256 KiB (262144 bytes). With --wait, each
    /// ack level is printed as it is reached; a --timeout that runs out exits 1, and the
    /// message stays queued and will still be delivered.
    ///
    /// Example: hotline send --config ex/us.toml --precedence flash --wait acknowledged --timeout 60 "Confirm status"
    Send(messages::SendArgs),
    /// List received messages in delivery order.
    ///
    /// A multi-line body is shown indented under its message's line.
    ///
    /// Example: hotline inbox --config ex/jp.toml --unacked --channel main --follow
    Inbox(messages::InboxArgs),
    /// Acknowledge a received message (sends a signed receipt).
    ///
    /// Example: hotline ack --config ex/jp.toml us:main:flash:1
    Ack(messages::AckArgs),
    /// The operator's console: a live terminal view of the node, acknowledging with one key.
    ///
    /// Shows the link and each relay, the inbox (unacknowledged messages pinned on top, flash
    /// first, with the time left to acknowledge), our messages awaiting the partner, and the
    /// alarms. Keys: ↑/↓ or j/k select, Tab switches inbox/alarms, Enter opens, a acknowledges
    /// (a flash asks y/n), c composes, x clears an alarm, ? help, q quits. Keeps running when
    /// the node restarts and reconnects by itself.
    ///
    /// Example: hotline console --config ex/jp.toml
    Console {
        /// Node config (TOML).
        #[arg(long, env = "HOTLINE_CONFIG")]
        config: PathBuf,
        /// When to ring the terminal bell.
        #[arg(long, value_enum, default_value = "all")]
        bell: BellPolicy,
    },
    /// Link state, queue depths, pending acknowledgements, escalations and alarms.
    ///
    /// Example: hotline status --config ex/us.toml
    Status(status::StatusArgs),
    /// The alarm book: alarms deduplicated by kind and cause, with severity (critical,
    /// warning, notice), count and first/last time; uncleared ones, highest severity first.
    ///
    /// Example: hotline alarms --config ex/us.toml --follow
    Alarms(alarms::AlarmsArgs),
    /// Replace this node's sealing key now (keys also rotate on `key_rotation_secs`).
    ///
    /// The new key is announced to the partner once it is on disk; messages already sealed to
    /// the old key still open (the 8 newest keys are kept).
    ///
    /// Example: hotline rekey --config ex/us.toml
    Rekey(status::StatusArgs),
    /// Check or export the hash-chained audit log (works whether or not the node runs).
    ///
    /// Example: hotline audit verify --config ex/us.toml
    Audit {
        #[command(subcommand)]
        command: audit::AuditCmd,
    },
    /// Relay and two nodes on loopback, with a scripted exchange across all precedences.
    ///
    /// Example: hotline demo --keep
    Demo {
        /// Keep the demo directory (PKI, configs, logs, stores) afterwards.
        #[arg(long)]
        keep: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    // The console owns the terminal: a log line would tear its screen.
    let level = match cli.command {
        Cmd::Node { .. } => "info",
        Cmd::Console { .. } => "off",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => subscriber
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => subscriber.json().with_current_span(true).init(),
    }
    let runtime = match hotline_net::runtime::build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run(cli.command)) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// What [`say!`] does when stdout cannot be written: a closed pipe ends the process quietly,
/// anything else is the usual one `error:` line.
fn stdout_failed(e: &std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("error: writing to stdout: {e}");
    std::process::exit(1);
}

async fn run(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Certs { command } => certs::run(command),
        Cmd::Keys { command } => keys::run(command),
        Cmd::Pin(args) => keys::pin(args),
        Cmd::Node(args) => node::run(args).await,
        Cmd::Send(args) => messages::send(args).await,
        Cmd::Inbox(args) => messages::inbox(args).await,
        Cmd::Ack(args) => messages::ack(args).await,
        Cmd::Console { config, bell } => hotline_client::console::run(&config, bell).await,
        Cmd::Status(args) => status::status(args).await,
        Cmd::Alarms(args) => alarms::run(args).await,
        Cmd::Rekey(args) => status::rekey(args).await,
        Cmd::Audit { command } => audit::run(command).await,
        Cmd::Demo { keep } => hotline_client::demo::run(keep, &mut |line| say!("{line}")).await,
    }
}
