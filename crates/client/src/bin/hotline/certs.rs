//! `hotline certs`: the exercise PKI and ready-to-run configs.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Subcommand;
use hotline_client::certs::{self, DeadlineOverrides, InitRequest, RelaySpec};

#[derive(Debug, Subcommand)]
pub(crate) enum CertsCmd {
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

pub(crate) fn run(cmd: CertsCmd) -> Result<()> {
    let CertsCmd::Init {
        out,
        relays,
        endpoints,
        pairs,
        relay_addrs,
        force,
    } = cmd;
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
