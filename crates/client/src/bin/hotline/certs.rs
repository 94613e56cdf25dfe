//! `hotline certs`: the exercise PKI and ready-to-run configs.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use hotline_client::certs::{self, DeadlineOverrides, InitRequest, RelaySpec};
use hotline_client::lifecycle;
use hotline_net::ca::{self, Validity};

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
    Init(InitArgs),
    /// The organiser's side without endpoint keys: CA, relay certificate and relay.toml for the
    /// hotlines given; endpoints make their own keys (`hotline keys init`) and send CSRs.
    ///
    /// Example: hotline certs ca --out org --relay relay.example --relay-addr relay.example:4433 --pair us:jp
    Ca {
        /// Output directory (the CA directory: keep ca.key safe).
        #[arg(long)]
        out: PathBuf,
        /// Relay DNS name.
        #[arg(long)]
        relay: String,
        /// Relay address the nodes dial, IP:PORT or HOST:PORT.
        #[arg(long, default_value = "127.0.0.1:4433")]
        relay_addr: String,
        /// A hotline a:b (repeat).
        #[arg(long = "pair", required = true)]
        pairs: Vec<String>,
        /// Validity of the relay certificate in days (the CA's is five years).
        #[arg(long, default_value_t = ca::DEFAULT_RELAY_DAYS)]
        days: u32,
    },
    /// Sign an endpoint's CSR: writes ID.pem into the CA directory (the record) and, with
    /// ca.pem, next to the CSR (or into --out), for the endpoint.
    ///
    /// Example: hotline certs sign --ca org --csr us.csr --days 365
    Sign {
        /// The CA directory (ca.pem, ca.key).
        #[arg(long)]
        ca: PathBuf,
        /// The endpoint's CSR, from `hotline keys init`.
        #[arg(long)]
        csr: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = ca::DEFAULT_ENDPOINT_DAYS)]
        days: u32,
        /// Where to write ID.pem and ca.pem for the endpoint (default: the CSR's directory).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Revoke an endpoint's certificate: writes crl.pem (every revocation so far, with a next
    /// update) and points relay.toml at it; `hotline-relay reload` (or SIGHUP) applies it.
    ///
    /// Example: hotline certs revoke --ca org us
    Revoke {
        /// The CA directory.
        #[arg(long)]
        ca: PathBuf,
        /// The endpoint whose current certificate (CA/ID.pem) is revoked.
        endpoint: String,
        /// Days until the CRL's next update (re-run revoke, or issue a new one, before).
        #[arg(long, default_value_t = ca::DEFAULT_CRL_DAYS)]
        days: u32,
    },
    /// Add endpoints to an existing exercise (development: keys made here) and their hotlines
    /// to relay.toml (`hotline-relay reload` applies it).
    ///
    /// Example: hotline certs add-endpoint --ca ex --endpoint fr --endpoint uk --pair fr:uk
    AddEndpoint {
        /// The CA directory.
        #[arg(long)]
        ca: PathBuf,
        /// A new endpoint id (repeat).
        #[arg(long = "endpoint", required = true)]
        endpoints: Vec<String>,
        /// A hotline a:b (repeat), with a new endpoint or one without a hotline yet.
        #[arg(long = "pair", required = true)]
        pairs: Vec<String>,
        /// Validity in days.
        #[arg(long, default_value_t = ca::DEFAULT_ENDPOINT_DAYS)]
        days: u32,
    },
}

/// `certs init`'s arguments.
#[derive(Debug, Args)]
pub(crate) struct InitArgs {
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
    /// Overwrite an existing PKI in --out (refused while --out/data exists, unless
    /// --wipe-data).
    #[arg(long)]
    force: bool,
    /// With --force, delete --out/data (the stores of an earlier run).
    #[arg(long, requires = "force")]
    wipe_data: bool,
    /// Validity of the endpoint certificates in days (the relay's too; the CA's is five
    /// years).
    #[arg(long, default_value_t = ca::DEFAULT_ENDPOINT_DAYS)]
    days: u32,
}

pub(crate) fn run(cmd: CertsCmd) -> Result<()> {
    match cmd {
        CertsCmd::Init(args) => init(args),
        CertsCmd::Ca {
            out,
            relay,
            relay_addr,
            pairs,
            days,
        } => organiser(&out, RelaySpec::new(relay, relay_addr), pairs, days),
        CertsCmd::Sign { ca, csr, days, out } => {
            let s = lifecycle::sign(&ca, &csr, days, out.as_deref())?;
            say!(
                "signed {} for {days} days; give the endpoint {} and {}",
                s.id,
                s.cert.display(),
                s.ca.display()
            );
            say!("fingerprint of {}: {}", s.id, ca::fingerprint(&s.identity));
            Ok(())
        }
        CertsCmd::Revoke { ca, endpoint, days } => {
            let r = lifecycle::revoke(&ca, &endpoint, days)?;
            say!(
                "revoked {endpoint}: {} lists {} certificate(s), next update in {days} days",
                r.crl.display(),
                r.count
            );
            say_apply(&r.relay_configs);
            Ok(())
        }
        CertsCmd::AddEndpoint {
            ca,
            endpoints,
            pairs,
            days,
        } => {
            let added = lifecycle::add_endpoints(&ca, &endpoints, &pairs, days)?;
            for (_, config, key) in added.endpoints {
                say!(
                    "  endpoint:  hotline node --config {}  (fingerprint {})",
                    config.display(),
                    ca::fingerprint(&key)
                );
            }
            say_apply(&added.relay_configs);
            Ok(())
        }
    }
}

/// How to make a running relay take a changed relay.toml.
fn say_apply(relay_configs: &[PathBuf]) {
    for c in relay_configs {
        say!(
            "  apply to a running relay: hotline-relay reload --config {} (or SIGHUP)",
            c.display()
        );
    }
}

/// `certs init`: the whole exercise PKI and every config, keys made here.
fn init(args: InitArgs) -> Result<()> {
    let InitArgs {
        out,
        relays,
        endpoints,
        pairs,
        relay_addrs,
        force,
        wipe_data,
        days,
    } = args;
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
            wipe_data,
            days: Validity {
                endpoint: days,
                relay: days,
                ..Validity::default()
            },
            endpoint_keys: true,
        },
        &DeadlineOverrides::new(),
    )?;
    say!(
        "wrote exercise PKI and configs to {} (never use these keys in production)",
        out.display()
    );
    let relay_files: Vec<String> = match relay_count {
        1 => vec!["relay.toml".into()],
        n => (1..=n).map(|i| format!("relay-{i}.toml")).collect(),
    };
    for file in relay_files {
        say!(
            "  relay:     hotline-relay --config {}",
            out.join(file).display()
        );
    }
    for e in &endpoints {
        say!(
            "  endpoint:  hotline node --config {}",
            out.join(format!("{e}.toml")).display()
        );
    }
    for (a, b) in made {
        say!("  hotline:   {a} <-> {b}");
    }
    Ok(())
}

/// `certs ca`: the CA, relay certificate and relay.toml, no endpoint keys.
fn organiser(out: &std::path::Path, relay: RelaySpec, pairs: Vec<String>, days: u32) -> Result<()> {
    let mut endpoints: Vec<String> = Vec::new();
    for p in &pairs {
        for e in p.split(':') {
            if !endpoints.iter().any(|x| x == e) {
                endpoints.push(e.to_owned());
            }
        }
    }
    let mut req = InitRequest::new(vec![relay], endpoints, pairs);
    req.days.relay = days;
    req.endpoint_keys = false;
    let made = certs::init(out, &req, &DeadlineOverrides::new())?;
    say!(
        "wrote a CA, relay certificate and relay.toml to {}",
        out.display()
    );
    say!(
        "  relay:     hotline-relay --config {}",
        out.join("relay.toml").display()
    );
    for (a, b) in made {
        say!("  hotline:   {a} <-> {b}  (each makes its key: hotline keys init; then certs sign)");
    }
    Ok(())
}
