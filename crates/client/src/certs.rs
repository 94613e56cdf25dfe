//! `hotline certs init`: an exercise PKI plus ready-to-run configs in one directory.
//!
//! Writes `ca.pem`/`ca.key`, `relay.pem`/`relay.key`, `<id>.pem`/`<id>.key` (keys 0600),
//! `relay.toml` and one `<id>.toml` per endpoint, each pinning its partner's identity key.
//! Paths inside the configs are relative to the directory, so it can be moved as a whole.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result, bail};
use hotline_net::pki::ExercisePki;
use hotline_proto::EndpointId;

/// What `certs init` was asked for.
#[derive(Debug, Clone)]
pub struct InitRequest {
    /// Relay DNS name (also in its certificate).
    pub relay_name: String,
    /// Endpoint ids.
    pub endpoints: Vec<String>,
    /// `a:b` pairs; empty with two endpoints pairs them.
    pub pairs: Vec<String>,
    /// Relay address written into the configs.
    pub relay_addr: SocketAddr,
    /// Overwrite an existing PKI.
    pub force: bool,
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
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let pki = ExercisePki::generate(&req.relay_name, &ids)?;
    pki.write(out)?;
    let identity: BTreeMap<&EndpointId, String> = pki
        .endpoints
        .iter()
        .map(|e| (&e.id, e.identity.to_hex()))
        .collect();

    let mut relay = format!(
        "# Relay config written by `hotline certs init` (exercise PKI; never production keys).\n\
         # Every key is documented in deploy/relay.example.toml.\n\
         listen = \"{addr}\"\n\
         data_dir = \"data/relay\"\n\
         ca = \"ca.pem\"\n\
         cert = \"relay.pem\"\n\
         key = \"relay.key\"\n",
        addr = req.relay_addr
    );
    for (a, b) in &pairs {
        relay.push_str(&format!("\n[[hotline]]\na = \"{a}\"\nb = \"{b}\"\n"));
    }
    write(out, "relay.toml", &relay)?;

    for id in &ids {
        let Some(partner) = partner_of.get(id) else {
            bail!("{id} is in no --pair")
        };
        let mut cfg = format!(
            "# Endpoint config for {id}, written by `hotline certs init`.\n\
             # Every key is documented in deploy/node.example.toml.\n\
             relay = \"{addr}\"\n\
             relay_name = \"{name}\"\n\
             data_dir = \"data/{id}\"\n\
             ca = \"ca.pem\"\n\
             cert = \"{id}.pem\"\n\
             key = \"{id}.key\"\n\
             \n\
             # The partner's identity key is pinned: a different key is a security alarm.\n\
             [[partner]]\n\
             id = \"{partner}\"\n\
             identity_key = \"{key}\"\n",
            addr = req.relay_addr,
            name = req.relay_name,
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
            relay_name: "localhost".into(),
            endpoints: endpoints.iter().map(|s| s.to_string()).collect(),
            pairs: pairs.iter().map(|s| s.to_string()).collect(),
            relay_addr: "127.0.0.1:4433".parse().unwrap(),
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
}
