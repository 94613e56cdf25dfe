//! `hotline certs init`: an exercise PKI plus ready-to-run configs in one directory.
//!
//! Writes `ca.pem`/`ca.key`, `relay.pem`/`relay.key`, `<id>.pem`/`<id>.key` (keys 0600),
//! `relay.toml` (or, with several relays, `relay-1.toml` … `relay-N.toml`, each with its own
//! data directory and the one relay certificate naming them all) and one `<id>.toml` per
//! endpoint, each listing every relay and pinning its partner's identity key. Paths inside the
//! configs are relative to the directory, so it can be moved as a whole.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result, bail};
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
    fn listen(&self) -> Result<SocketAddr> {
        if let Ok(addr) = self.addr.parse() {
            return Ok(addr);
        }
        let port = self
            .addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .with_context(|| {
                format!("relay address {:?} is not IP:PORT or HOST:PORT", self.addr)
            })?;
        Ok(SocketAddr::from(([0, 0, 0, 0], port)))
    }
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
    if out.join("ca.pem").exists() && !req.force {
        bail!(
            "{} already holds a PKI (ca.pem); use --force to overwrite",
            out.display()
        );
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
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let names: Vec<&str> = req.relays.iter().map(|r| r.name.as_str()).collect();
    let pki = ExercisePki::generate_for_relays(&names, &ids)?;
    pki.write(out)?;
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
             data_dir = \"{data}\"\n\
             ca = \"ca.pem\"\n\
             cert = \"relay.pem\"\n\
             key = \"relay.key\"\n\
             {hotlines}",
            name = spec.name,
            addr = spec.addr,
        );
        write(out, &file, &relay)?;
    }
    let relay_lines = match req.relays.as_slice() {
        [one] => format!("relay = \"{}\"\nrelay_name = \"{}\"\n", one.addr, one.name),
        _ => String::new(),
    };
    let relay_tables: String = if several {
        let mut t =
            String::from("\n# Every relay is used at once: each frame goes out on all of them.\n");
        for r in &req.relays {
            t.push_str(&format!(
                "[[relays]]\naddr = \"{}\"\nname = \"{}\"\n",
                r.addr, r.name
            ));
        }
        t
    } else {
        String::new()
    };

    for id in &ids {
        let Some(partner) = partner_of.get(id) else {
            bail!("{id} is in no --pair")
        };
        let mut cfg = format!(
            "# Endpoint config for {id}, written by `hotline certs init`.\n\
             # Every key is documented in deploy/node.example.toml.\n\
             {relay_lines}\
             data_dir = \"data/{id}\"\n\
             ca = \"ca.pem\"\n\
             cert = \"{id}.pem\"\n\
             key = \"{id}.key\"\n\
             {relay_tables}\
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

fn write(dir: &Path, name: &str, text: &str) -> Result<()> {
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {

    use super::*;

    fn req(endpoints: &[&str], pairs: &[&str]) -> InitRequest {
        InitRequest {
            endpoints: endpoints.iter().map(|s| s.to_string()).collect(),
            pairs: pairs.iter().map(|s| s.to_string()).collect(),
            relays: vec![RelaySpec::new("localhost", "127.0.0.1:4433")],
            force: false,
        }
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
