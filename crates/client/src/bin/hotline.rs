//! `hotline`: run an endpoint node and talk to it.
//!
//! Parses arguments, installs logging and hands off to `hotline_client`; every failure is one
//! `error: …` line and a non-zero exit. What a command prints on stdout is its output, so this
//! file is where stdout is written.
#![expect(clippy::print_stdout, reason = "the CLI's output")]

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use hotline_client::certs::{self, DeadlineOverrides, InitRequest, RelaySpec};
use hotline_client::config::NodeConfig;
use hotline_client::control::{self, ControlClient, Event, Request, WaitLevel};
use hotline_client::node::Node;
use hotline_client::view;
use hotline_proto::{Channel, EndpointId, MessageId, Precedence};

/// Hotline endpoint node and operator CLI.
///
/// Quick start (three terminals):
///   hotline certs init --out ex --relay localhost --endpoint us --endpoint jp
///   hotline-relay --config ex/relay.toml
///   hotline node --config ex/us.toml        (and ex/jp.toml)
///   hotline send --config ex/us.toml --precedence flash --wait delivered "hello"
///   hotline inbox --config ex/jp.toml
#[derive(Debug, Parser)]
#[command(name = "hotline", version, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Exercise PKI and ready-to-run configs.
    Certs {
        #[command(subcommand)]
        command: CertsCmd,
    },
    /// Run an endpoint node (serves the CLI on DATA_DIR/control.sock).
    ///
    /// Repeat --config to host several endpoints in one process (load tests spread
    /// endpoints over a few processes this way); each keeps its own store and socket.
    ///
    /// Example: hotline node --config ex/us.toml
    Node {
        /// Node config (TOML); repeat for several endpoints in one process.
        #[arg(long, required = true)]
        config: Vec<PathBuf>,
    },
    /// Send a message; prints its id once it is durably in the outbox.
    ///
    /// Example: hotline send --config ex/us.toml --precedence flash --wait acknowledged --timeout 60 "Confirm status"
    Send {
        /// Node config (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Recipient; may be left out when the node has exactly one partner.
        #[arg(long)]
        to: Option<EndpointId>,
        /// Channel.
        #[arg(long, default_value = "main")]
        channel: Channel,
        /// routine, priority, immediate or flash.
        #[arg(long, default_value = "routine")]
        precedence: Precedence,
        /// Block until this ack level is reached.
        #[arg(long, value_enum)]
        wait: Option<WaitLevel>,
        /// Give up waiting after SECS seconds (exit 1).
        #[arg(long, value_name = "SECS")]
        timeout: Option<f64>,
        /// The text, or - to read it from stdin.
        text: String,
    },
    /// List received messages in delivery order.
    ///
    /// Example: hotline inbox --config ex/jp.toml --json --follow
    Inbox {
        /// Node config (TOML).
        #[arg(long)]
        config: PathBuf,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Keep printing new messages as they arrive.
        #[arg(long)]
        follow: bool,
    },
    /// Acknowledge a received message (sends a signed receipt).
    ///
    /// Example: hotline ack --config ex/jp.toml us:main:flash:1
    Ack {
        /// Node config (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Message id, as shown by `inbox`.
        id: MessageId,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Link state, queue depths, pending acknowledgements, escalations and alarms.
    Status {
        /// Node config (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Replace this node's sealing key now (keys also rotate on `key_rotation_secs`).
    ///
    /// The new key is announced to the partner once it is on disk; messages already sealed to
    /// the old key still open (the 8 newest keys are kept).
    Rekey {
        /// Node config (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check or export the hash-chained audit log (works whether or not the node runs).
    ///
    /// Example: hotline audit verify --config ex/us.toml
    Audit {
        #[command(subcommand)]
        command: AuditCmd,
    },
    /// Relay and two nodes on loopback, with a scripted exchange across all precedences.
    Demo {
        /// Keep the demo directory (PKI, configs, logs, stores) afterwards.
        #[arg(long)]
        keep: bool,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCmd {
    /// Check the chain, every signed head and the partner's signed heads; name the first bad
    /// record. Exit 1 if anything is wrong.
    Verify {
        /// Node config (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print every entry, signed head and partner head (for oversight bodies), then the
    /// verification report.
    Export {
        /// Node config (TOML).
        #[arg(long)]
        config: PathBuf,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum CertsCmd {
    /// Write an exercise CA, relay and endpoint certificates, relay.toml (relay-1.toml …
    /// relay-N.toml with several relays) and ENDPOINT.toml.
    ///
    /// Example: hotline certs init --out ex --relay localhost --endpoint us --endpoint jp
    ///
    /// Two relays, used at once by both nodes: hotline certs init --out ex --relay r1
    /// --relay-addr 127.0.0.1:4433 --relay r2 --relay-addr 127.0.0.1:4434 --endpoint us
    /// --endpoint jp
    Init {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Relay DNS name (repeat for several relays; the certificate also covers localhost,
        /// 127.0.0.1 and ::1).
        #[arg(long = "relay", required = true)]
        relays: Vec<String>,
        /// An endpoint id (repeat).
        #[arg(long = "endpoint", required = true)]
        endpoints: Vec<String>,
        /// A hotline a:b (repeat); two endpoints are paired by default.
        #[arg(long = "pair")]
        pairs: Vec<String>,
        /// Relay address the nodes dial, IP:PORT or HOST:PORT (repeat, paired with --relay by
        /// position). Default 127.0.0.1:4433 with one relay; required for each of several.
        #[arg(long = "relay-addr")]
        relay_addrs: Vec<String>,
        /// Overwrite an existing PKI in --out.
        #[arg(long)]
        force: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    let verbose = matches!(cli.command, Cmd::Node { .. });
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(if verbose { "info" } else { "warn" })
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run(cli.command)) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Certs {
            command:
                CertsCmd::Init {
                    out,
                    relays,
                    endpoints,
                    pairs,
                    relay_addrs,
                    force,
                },
        } => {
            let relays = match (relays.len(), relay_addrs.len()) {
                (1, 0) => vec![RelaySpec::new(relays[0].clone(), "127.0.0.1:4433")],
                (n, m) if n == m => relays
                    .into_iter()
                    .zip(relay_addrs)
                    .map(|(name, addr)| RelaySpec::new(name, addr))
                    .collect(),
                (n, m) => bail!(
                    "{n} --relay and {m} --relay-addr given: give one --relay-addr per --relay (paired by position)"
                ),
            };
            let relay_count = relays.len();
            let made = certs::init(
                &out,
                &InitRequest {
                    relays,
                    endpoints: endpoints.clone(),
                    pairs,
                    force,
                },
                &DeadlineOverrides::new(),
            )?;
            println!(
                "wrote exercise PKI and configs to {} (never use these keys in production)",
                out.display()
            );
            let relay_files: Vec<String> = match relay_count {
                1 => vec!["relay.toml".into()],
                n => (1..=n).map(|i| format!("relay-{i}.toml")).collect(),
            };
            for file in relay_files {
                println!(
                    "  relay:     hotline-relay --config {}",
                    out.join(file).display()
                );
            }
            for e in &endpoints {
                println!(
                    "  endpoint:  hotline node --config {}",
                    out.join(format!("{e}.toml")).display()
                );
            }
            for (a, b) in made {
                println!("  hotline:   {a} <-> {b}");
            }
            Ok(())
        }
        Cmd::Node { config } => {
            let configs = config
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
        Cmd::Send {
            config,
            to,
            channel,
            precedence,
            wait,
            timeout,
            text,
        } => {
            let body = if text == "-" {
                // Read one byte past the limit, so an oversized message is refused here without
                // reading all of it into memory.
                let limit = hotline_proto::wire::MAX_BODY_LEN;
                let mut s = String::new();
                std::io::stdin()
                    .take(limit as u64 + 1)
                    .read_to_string(&mut s)
                    .context("reading the message from stdin")?;
                if s.len() > limit {
                    bail!("the message on stdin is longer than the {limit}-byte limit");
                }
                s
            } else {
                text
            };
            if let Some(t) = timeout {
                if !(t > 0.0 && t.is_finite()) {
                    bail!("--timeout must be a positive number of seconds");
                }
            }
            let mut c = ControlClient::connect(&control::socket_for(&config)?).await?;
            let tag = c
                .request(Request::Send {
                    to,
                    channel: Some(channel),
                    precedence: Some(precedence),
                    body,
                    wait,
                    timeout_ms: timeout.map(|t| (t * 1000.0) as u64),
                })
                .await?;
            let mut events = c.events_for(tag);
            while let Some(event) = events.next().await? {
                match event {
                    Event::Stored { id, .. } => println!("{id}"),
                    Event::Level { level, at, .. } => println!("{level} at {at}"),
                    _ => {}
                }
            }
            Ok(())
        }
        Cmd::Inbox {
            config,
            json,
            follow,
        } => {
            let mut c = ControlClient::connect(&control::socket_for(&config)?).await?;
            let tag = c.request(Request::Inbox { follow }).await?;
            let mut events = c.events_for(tag);
            while let Some(event) = events.next().await? {
                let Event::Message(m) = event else { continue };
                if json {
                    println!("{}", serde_json::to_string(&m)?);
                } else {
                    println!("{}", view::inbox_line(&m));
                }
            }
            Ok(())
        }
        Cmd::Ack { config, id, json } => {
            let mut c = ControlClient::connect(&control::socket_for(&config)?).await?;
            c.call(Request::Ack { id: id.clone() }).await?;
            if json {
                println!("{}", serde_json::json!({ "id": id, "acknowledged": true }));
            } else {
                println!("acknowledged {id}");
            }
            Ok(())
        }
        Cmd::Status { config, json } => {
            let mut c = ControlClient::connect(&control::socket_for(&config)?).await?;
            for e in c.call(Request::Status).await? {
                if let Event::Status(s) = e {
                    if json {
                        println!("{}", serde_json::to_string(&s)?);
                    } else {
                        for line in view::status_lines(&s) {
                            println!("{line}");
                        }
                    }
                }
            }
            Ok(())
        }
        Cmd::Rekey { config, json } => {
            let mut c = ControlClient::connect(&control::socket_for(&config)?).await?;
            for e in c.call(Request::Rekey).await? {
                if let Event::Rekeyed { epoch } = e {
                    if json {
                        println!("{}", serde_json::json!({ "epoch": epoch }));
                    } else {
                        println!("new sealing key: epoch {epoch}");
                    }
                }
            }
            Ok(())
        }
        Cmd::Audit { command } => {
            let (config, json, export) = match command {
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
                    println!("{v}");
                } else {
                    println!("{}", view::audit_entry_line(&v));
                }
            }
            let report = report.context("no verification report")?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "type": "verify", "report": report })
                );
            }
            match report["first_bad"].as_str() {
                Some(bad) => bail!("audit log does not verify: {}", view::escape_control(bad)),
                None => {
                    if !json {
                        println!(
                            "audit log ok: {} records, {} signed heads, {} partner heads verified",
                            report["entries"], report["signed_heads"], report["partner_heads"]
                        );
                    }
                    Ok(())
                }
            }
        }
        Cmd::Demo { keep } => hotline_client::demo::run(keep, &mut |line| println!("{line}")).await,
    }
}

/// Asks the running node, or reads the store directly when the node is stopped.
async fn audit_values(config: &std::path::Path, export: bool) -> Result<Vec<serde_json::Value>> {
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
