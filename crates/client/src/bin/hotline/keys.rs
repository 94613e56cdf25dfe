//! `hotline keys init` and `hotline pin`: the endpoint's side of the PKI. Its identity key is
//! made where it stays; the partner's key is pinned from a fingerprint read out of band.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use hotline_client::certs::RelaySpec;
use hotline_client::lifecycle;
use hotline_net::ca;

#[derive(Debug, Subcommand)]
pub(crate) enum KeysCmd {
    /// Make this endpoint's identity key (it never leaves --out), a CSR for the organiser and a
    /// node config; prints the fingerprint to read to the partner.
    ///
    /// Example: hotline keys init --out site --endpoint us --relay relay.example --relay-addr relay.example:4433
    Init {
        /// Output directory (ID.key, ID.csr, ID.toml).
        #[arg(long)]
        out: PathBuf,
        /// This endpoint's id.
        #[arg(long)]
        endpoint: String,
        /// The relay's DNS name (in its certificate).
        #[arg(long, default_value = "localhost")]
        relay: String,
        /// The relay's address, IP:PORT or HOST:PORT.
        #[arg(long, default_value = "127.0.0.1:4433")]
        relay_addr: String,
    },
}

/// `hotline pin`.
#[derive(Debug, Args)]
pub(crate) struct PinArgs {
    /// This endpoint's node config.
    #[arg(long)]
    config: PathBuf,
    /// The partner's endpoint id.
    #[arg(long)]
    partner: String,
    /// The partner's fingerprint as it was read to you (64 hex digits; spaces ignored).
    #[arg(long)]
    fingerprint: String,
}

pub(crate) fn run(cmd: KeysCmd) -> Result<()> {
    let KeysCmd::Init {
        out,
        endpoint,
        relay,
        relay_addr,
    } = cmd;
    let made = lifecycle::keys_init(&out, &endpoint, &RelaySpec::new(relay, relay_addr))?;
    say!("identity key: {} (keep it here)", made.key.display());
    say!("send to the organiser: {}", made.csr.display());
    say!("node config: {}", made.config.display());
    say!(
        "fingerprint of {endpoint}: {}",
        ca::fingerprint(&made.identity)
    );
    Ok(())
}

pub(crate) fn pin(args: PinArgs) -> Result<()> {
    let previous = lifecycle::pin(&args.config, &args.partner, &args.fingerprint)?;
    if let Some(p) = previous {
        say!("replaced the pin {p}");
    }
    say!(
        "pinned {} in {}; restart the node to apply",
        args.partner,
        args.config.display()
    );
    Ok(())
}
