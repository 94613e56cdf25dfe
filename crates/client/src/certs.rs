//! `hotline certs init`: an exercise PKI plus ready-to-run configs in one directory.
//!
//! Writes `ca.pem`/`ca.key`, `relay.pem`/`relay.key`, `<id>.pem`/`<id>.key` (keys 0600),
//! `relay.toml` (or, with several relays, `relay-1.toml` … `relay-N.toml`, each with its own
//! data directory and the one relay certificate naming them all) and one `<id>.toml` per
//! endpoint, each listing every relay and pinning its partner's identity key. Paths inside the
//! configs are relative to the directory, so it can be moved as a whole. `pki.toml` records
//! the relays, for `hotline certs add-endpoint`.
//!
//! Everything asked for (names, addresses, pairs, validity, the `--force`/`--wipe-data` rule) is
//! checked before the first file is written: a refused `init` leaves nothing behind.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result, bail};
use hotline_net::ca::Validity;
use hotline_net::pki::ExercisePki;
use hotline_proto::EndpointId;

use crate::config::MAX_RELAYS;

/// What `certs init` was asked for.
#[derive(Debug, Clone)]
pub struct InitRequest {
    /// The relays (at least one): the name in their certificate and the address nodes dial.
    pub relays: Vec<RelaySpec>,
    /// Endpoint ids.
    pub endpoints: Vec<String>,
    /// `a:b` pairs; empty with two endpoints pairs them.
    pub pairs: Vec<String>,
    /// Overwrite an existing PKI.
    pub force: bool,
    /// With `force`, delete the directory's `data/` from an earlier run (its stores would
    /// otherwise meet new keys and raise equivocation alarms).
    pub wipe_data: bool,
    /// Validity of the certificates, in days.
    pub days: Validity,
    /// Make endpoint keys, certificates and configs here (`certs init`, development: the
    /// organiser holds every key); without, only the CA, the relay and relay.toml (`certs ca`,
    /// for keys born at the endpoints).
    pub endpoint_keys: bool,
}

impl InitRequest {
    /// A development `certs init` request with default validity and no `--force`.
    pub fn new(relays: Vec<RelaySpec>, endpoints: Vec<String>, pairs: Vec<String>) -> Self {
        Self {
            relays,
            endpoints,
            pairs,
            force: false,
            wipe_data: false,
            days: Validity::default(),
            endpoint_keys: true,
        }
    }
}

/// One relay of an exercise.
#[derive(Debug, Clone)]
pub struct RelaySpec {
    /// DNS name (in the relay certificate).
    pub name: String,
    /// `IP:PORT`, or `HOST:PORT` (resolved by the nodes at each connection).
    pub addr: String,
}

impl RelaySpec {
    /// A relay named `name` at `addr`.
    pub fn new(name: impl Into<String>, addr: impl ToString) -> Self {
        Self {
            name: name.into(),
            addr: addr.to_string(),
        }
    }

    /// What the relay listens on: its address, or for a host name every interface on its port.
    /// The name must be a DNS name and a host a DNS name too.
    fn listen(&self) -> Result<SocketAddr> {
        check_dns_name(&self.name).with_context(|| format!("--relay {:?}", self.name))?;
        check_relay_addr(&self.addr)
    }
}

/// Checks that `name` is a DNS name (what a relay certificate can carry and a node can check).
pub fn check_dns_name(name: &str) -> Result<()> {
    match rustls_pki_types::ServerName::try_from(name) {
        Ok(rustls_pki_types::ServerName::DnsName(_)) => Ok(()),
        Ok(_) => bail!("is an IP address; a relay name must be a DNS name"),
        Err(_) => bail!("is not a valid DNS name"),
    }
}

/// Checks a relay address, `IP:PORT` or `HOST:PORT` (a DNS name and a port), and returns what
/// the relay listens on: the address, or every interface on the port for a host name.
pub fn check_relay_addr(addr: &str) -> Result<SocketAddr> {
    if let Ok(a) = addr.parse() {
        return Ok(a);
    }
    let bad = || format!("relay address {addr:?} is not IP:PORT or HOST:PORT");
    let (host, port) = addr.rsplit_once(':').with_context(bad)?;
    let port = port.parse::<u16>().ok().with_context(bad)?;
    check_dns_name(host).with_context(|| format!("relay address {addr:?}: host {host:?}"))?;
    Ok(SocketAddr::from(([0, 0, 0, 0], port)))
}

/// Per-precedence deadline overrides written into endpoint configs (the demo uses short ones).
pub type DeadlineOverrides = BTreeMap<String, (Option<u64>, Option<u64>)>;

/// Runs `certs init` into `out`; returns the pairs made.
pub fn init(
    out: &Path,
    req: &InitRequest,
    deadlines: &DeadlineOverrides,
) -> Result<Vec<(EndpointId, EndpointId)>> {
    let mut ids = Vec::new();
    for e in &req.endpoints {
        let id = EndpointId::new(e.clone()).with_context(|| format!("--endpoint {e:?}"))?;
        if ids.contains(&id) {
            bail!("--endpoint {id} given twice");
        }
        ids.push(id);
    }
    if ids.len() < 2 {
        bail!("at least two --endpoint values are needed to make a hotline");
    }
    let pairs = if req.pairs.is_empty() {
        if ids.len() != 2 {
            bail!(
                "{} endpoints given: say which are paired with --pair a:b",
                ids.len()
            );
        }
        vec![(ids[0].clone(), ids[1].clone())]
    } else {
        let mut pairs = Vec::new();
        for p in &req.pairs {
            let Some((a, b)) = p.split_once(':') else {
                bail!("--pair {p:?} is not of the form a:b")
            };
            let a = EndpointId::new(a).with_context(|| format!("--pair {p:?}"))?;
            let b = EndpointId::new(b).with_context(|| format!("--pair {p:?}"))?;
            for x in [&a, &b] {
                if !ids.contains(x) {
                    bail!("--pair {p:?} names {x}, which is not an --endpoint");
                }
            }
            if a == b {
                bail!("--pair {p:?} pairs an endpoint with itself");
            }
            pairs.push((a, b));
        }
        pairs
    };
    let mut partner_of: BTreeMap<EndpointId, EndpointId> = BTreeMap::new();
    for (a, b) in &pairs {
        for (x, y) in [(a, b), (b, a)] {
            if let Some(prev) = partner_of.insert(x.clone(), y.clone()) {
                bail!(
                    "{x} is paired with both {prev} and {y}; this version supports one partner per endpoint"
                );
            }
        }
    }
    for id in &ids {
        if !partner_of.contains_key(id) {
            bail!("--endpoint {id} is in no --pair; every endpoint needs a partner");
        }
    }
    if out.join("ca.pem").exists() && !req.force {
        bail!(
            "{} already holds a PKI (ca.pem); use --force to overwrite",
            out.display()
        );
    }
    let data = out.join("data");
    if req.force && data.exists() && !req.wipe_data {
        bail!(
            "{} holds the stores of an earlier run, which new keys would meet as equivocation; \
             add --wipe-data to delete it, or move it away",
            data.display()
        );
    }
    for d in [req.days.ca, req.days.relay, req.days.endpoint] {
        hotline_net::ca::check_days(d)?;
    }
    if req.relays.is_empty() {
        bail!("at least one relay is needed");
    }
    if req.relays.len() > MAX_RELAYS {
        bail!("{} relays given; at most {MAX_RELAYS}", req.relays.len());
    }
    let listens = req
        .relays
        .iter()
        .map(RelaySpec::listen)
        .collect::<Result<Vec<_>>>()?;
    let names: Vec<&str> = req.relays.iter().map(|r| r.name.as_str()).collect();
    let keyed: &[EndpointId] = if req.endpoint_keys { &ids } else { &[] };
    let pki = ExercisePki::generate_with(&names, keyed, req.days)?;
    // Everything is checked and made: now write.
    if req.force && req.wipe_data && data.exists() {
        std::fs::remove_dir_all(&data).with_context(|| format!("deleting {}", data.display()))?;
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    pki.write(out)?;
    crate::lifecycle::write_pki_record(out, &req.relays)?;
    let identity: BTreeMap<&EndpointId, String> = pki
        .endpoints
        .iter()
        .map(|e| (&e.id, e.identity.to_hex()))
        .collect();

    let mut hotlines = String::new();
    for (a, b) in &pairs {
        hotlines.push_str(&format!("\n[[hotline]]\na = \"{a}\"\nb = \"{b}\"\n"));
    }
    let several = req.relays.len() > 1;
    for (i, (spec, listen)) in req.relays.iter().zip(&listens).enumerate() {
        let (file, data) = if several {
            (
                format!("relay-{}.toml", i + 1),
                format!("data/relay-{}", i + 1),
            )
        } else {
            ("relay.toml".to_owned(), "data/relay".to_owned())
        };
        let relay = format!(
            "# Relay config written by `hotline certs init` (exercise PKI; never production keys).\n\
             # Every key is documented in deploy/relay.example.toml.\n\
             # Nodes reach this relay as {name} at {addr}.\n\
             listen = \"{listen}\"\n\
             # Metrics, /healthz, /readyz and /status (`hotline-relay status`); loopback only.\n\
             metrics = \"127.0.0.1:{metrics_port}\"\n\
             data_dir = \"{data}\"\n\
             ca = \"ca.pem\"\n\
             cert = \"relay.pem\"\n\
             key = \"relay.key\"\n\
             {hotlines}",
            name = spec.name,
            addr = spec.addr,
            // Several relays on one host each get their own port.
            metrics_port = 9464 + i,
        );
        write(out, &file, &relay)?;
    }
    if !req.endpoint_keys {
        return Ok(pairs);
    }
    for id in &ids {
        let Some(partner) = partner_of.get(id) else {
            bail!("{id} is in no --pair")
        };
        let relay_lines = node_config_head(&req.relays, id);
        let mut cfg = format!(
            "# Endpoint config for {id}, written by `hotline certs init` (development: the\n\
             # organiser made this key; see `hotline keys init` for keys born at the endpoint).\n\
             # Every key is documented in deploy/node.example.toml.\n\
             {relay_lines}\
             \n\
             # The partner's identity key is pinned: a different key is a security alarm.\n\
             [[partner]]\n\
             id = \"{partner}\"\n\
             identity_key = \"{key}\"\n",
            key = identity[partner],
        );
        for (p, (delivered, acknowledged)) in deadlines {
            cfg.push_str(&format!("\n[deadlines.{p}]\n"));
            if let Some(ms) = delivered {
                cfg.push_str(&format!("delivered_ms = {ms}\n"));
            }
            if let Some(ms) = acknowledged {
                cfg.push_str(&format!("acknowledged_ms = {ms}\n"));
            }
        }
        write(out, &format!("{id}.toml"), &cfg)?;
    }
    Ok(pairs)
}

/// The top-level keys of a node config naming `relays` (`relay`/`relay_name`, or `[[relays]]`
/// tables), its data directory and its PKI files `ca.pem`, `<id>.pem`, `<id>.key`.
pub fn node_config_head(relays: &[RelaySpec], id: &EndpointId) -> String {
    let mut out = match relays {
        [one] => format!("relay = \"{}\"\nrelay_name = \"{}\"\n", one.addr, one.name),
        _ => String::new(),
    };
    out.push_str(&format!(
        "data_dir = \"data/{id}\"\nca = \"ca.pem\"\ncert = \"{id}.pem\"\nkey = \"{id}.key\"\n"
    ));
    if relays.len() > 1 {
        out.push_str("\n# Every relay is used at once: each frame goes out on all of them.\n");
        for r in relays {
            out.push_str(&format!(
                "[[relays]]\naddr = \"{}\"\nname = \"{}\"\n",
                r.addr, r.name
            ));
        }
    }
    out
}

pub(crate) fn write(dir: &Path, name: &str, text: &str) -> Result<()> {
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {

    use super::*;

    fn req(endpoints: &[&str], pairs: &[&str]) -> InitRequest {
        InitRequest::new(
            vec![RelaySpec::new("localhost", "127.0.0.1:4433")],
            endpoints.iter().map(|s| s.to_string()).collect(),
            pairs.iter().map(|s| s.to_string()).collect(),
        )
    }

    #[test]
    fn writes_loadable_configs_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        init(
            dir.path(),
            &req(&["us", "jp"], &[]),
            &DeadlineOverrides::new(),
        )
        .unwrap();
        let us = crate::config::NodeConfig::load(&dir.path().join("us.toml")).unwrap();
        assert_eq!(us.local.as_str(), "us");
        assert_eq!(us.partner.id.as_str(), "jp");
        let jp = crate::config::NodeConfig::load(&dir.path().join("jp.toml")).unwrap();
        assert_eq!(
            jp.identity_key().public(),
            us.partner.key,
            "us pins jp's real key"
        );
        let err = init(
            dir.path(),
            &req(&["us", "jp"], &[]),
            &DeadlineOverrides::new(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
    }

    #[test]
    fn a_refused_init_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("ex");
        let bad_relay = InitRequest {
            relays: vec![RelaySpec::new("bad name!", "127.0.0.1:4433")],
            ..req(&["us", "jp"], &[])
        };
        let bad_addr = InitRequest {
            relays: vec![RelaySpec::new("r", "bad host!:4433")],
            ..req(&["us", "jp"], &[])
        };
        let mut bad_days = req(&["us", "jp"], &[]);
        bad_days.days.endpoint = 0;
        for (request, needle) in [
            (bad_relay, "not a valid DNS name"),
            (bad_addr, "not a valid DNS name"),
            (
                req(&["a", "b", "c", "d"], &["a:b", "c:a"]),
                "paired with both",
            ),
            (req(&["a", "b", "c"], &["a:b"]), "c is in no --pair"),
            (bad_days, "between 1 and"),
        ] {
            let err = init(&out, &request, &DeadlineOverrides::new()).unwrap_err();
            assert!(format!("{err:#}").contains(needle), "{err:#}");
            assert!(!out.exists(), "{needle}: nothing written");
        }
    }

    #[test]
    fn force_over_an_exercise_that_ran_needs_wipe_data() {
        let dir = tempfile::tempdir().unwrap();
        init(
            dir.path(),
            &req(&["us", "jp"], &[]),
            &DeadlineOverrides::new(),
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("data/us")).unwrap();
        let mut again = req(&["us", "jp"], &[]);
        again.force = true;
        let err = init(dir.path(), &again, &DeadlineOverrides::new()).unwrap_err();
        assert!(err.to_string().contains("--wipe-data"), "{err}");
        assert!(dir.path().join("data/us").exists());
        again.wipe_data = true;
        init(dir.path(), &again, &DeadlineOverrides::new()).unwrap();
        assert!(!dir.path().join("data").exists());
    }

    #[test]
    fn more_than_two_endpoints_need_pairs() {
        let dir = tempfile::tempdir().unwrap();
        let err = init(
            dir.path(),
            &req(&["a", "b", "c"], &[]),
            &DeadlineOverrides::new(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("--pair"), "{err}");
        let err = init(
            dir.path(),
            &req(&["a", "b"], &["a:z"]),
            &DeadlineOverrides::new(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("not an --endpoint"), "{err}");
        init(
            dir.path(),
            &req(&["a", "b", "c", "d"], &["a:b", "c:d"]),
            &DeadlineOverrides::new(),
        )
        .unwrap();
    }

    #[test]
    fn two_relays_make_two_relay_configs_and_nodes_list_both() {
        let dir = tempfile::tempdir().unwrap();
        let request = InitRequest {
            relays: vec![
                RelaySpec::new("relay-a", "127.0.0.1:4433"),
                RelaySpec::new("relay-b", "relay-b.example:4434"),
            ],
            ..req(&["us", "jp"], &[])
        };
        init(dir.path(), &request, &DeadlineOverrides::new()).unwrap();
        assert!(!dir.path().join("relay.toml").exists());
        let one = std::fs::read_to_string(dir.path().join("relay-1.toml")).unwrap();
        let two = std::fs::read_to_string(dir.path().join("relay-2.toml")).unwrap();
        assert!(one.contains("listen = \"127.0.0.1:4433\"") && one.contains("data/relay-1"));
        assert!(two.contains("listen = \"0.0.0.0:4434\"") && two.contains("data/relay-2"));
        let us = crate::config::NodeConfig::load(&dir.path().join("us.toml")).unwrap();
        let relays: Vec<(&str, &str)> = us
            .relays
            .iter()
            .map(|r| (r.addr.as_str(), r.name.as_str()))
            .collect();
        assert_eq!(
            relays,
            [
                ("127.0.0.1:4433", "relay-a"),
                ("relay-b.example:4434", "relay-b")
            ]
        );
        let bad = InitRequest {
            relays: vec![RelaySpec::new("r", "nowhere")],
            force: true,
            ..req(&["us", "jp"], &[])
        };
        let err = init(dir.path(), &bad, &DeadlineOverrides::new()).unwrap_err();
        assert!(
            err.to_string().contains("not IP:PORT or HOST:PORT"),
            "{err}"
        );
    }
}
