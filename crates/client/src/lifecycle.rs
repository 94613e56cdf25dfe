//! The PKI lifecycle after `certs init`/`certs ca`: keys born at the endpoint, CSR signing,
//! revocation with a CRL, adding endpoints, and pinning a partner from its fingerprint.
//!
//! The CA directory (`--ca DIR`) is what `certs init` or `certs ca` wrote: `ca.pem`, `ca.key`,
//! `relay.toml` (or `relay-N.toml`), `pki.toml` (the relays), one `<id>.pem` per issued
//! endpoint (the record `revoke` reads the serial from), and once something is revoked
//! `revoked.toml` (every serial revoked so far and the CRL number) and `crl.pem`.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result, bail};
use hotline_net::ca::{self, Ca, Revoked};
use hotline_net::{crl, tls};
use hotline_proto::EndpointId;
use hotline_proto::crypto::IdentityPublicKey;
use serde::{Deserialize, Serialize};

use crate::certs::{RelaySpec, check_relay_addr, node_config_head, write};

/// The revocation ledger in the CA directory.
pub const REVOKED_FILE: &str = "revoked.toml";
/// The CRL `revoke` writes in the CA directory.
pub const CRL_FILE: &str = "crl.pem";
/// What `certs init`/`certs ca` record about the exercise.
pub const PKI_FILE: &str = "pki.toml";

#[derive(Debug, Default, Serialize, Deserialize)]
struct PkiRecord {
    #[serde(default)]
    relay: Vec<RelayRecord>,
}

#[derive(Debug, Serialize, Deserialize)]
struct RelayRecord {
    name: String,
    addr: String,
}

/// Writes `pki.toml` (the relays) into the CA directory.
pub(crate) fn write_pki_record(dir: &Path, relays: &[RelaySpec]) -> Result<()> {
    let record = PkiRecord {
        relay: relays
            .iter()
            .map(|r| RelayRecord {
                name: r.name.clone(),
                addr: r.addr.clone(),
            })
            .collect(),
    };
    let text = toml::to_string(&record).context("encoding pki.toml")?;
    write(
        dir,
        PKI_FILE,
        &format!("# Written by `hotline certs`.\n{text}"),
    )
}

fn read_toml<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.message()))
}

/// Loads the CA of a CA directory.
pub fn load_ca(dir: &Path) -> Result<Ca> {
    if !dir.join("ca.key").exists() {
        bail!(
            "--ca {}: no ca.key there; give the directory `hotline certs init` or `certs ca` wrote",
            dir.display()
        );
    }
    Ok(Ca::load(&dir.join("ca.pem"), &dir.join("ca.key"))?)
}

/// What `keys init` made.
#[derive(Debug)]
pub struct KeysMade {
    /// The private key (never leaves the endpoint).
    pub key: PathBuf,
    /// The CSR, to send to the organiser.
    pub csr: PathBuf,
    /// The node config, to complete with `hotline pin`.
    pub config: PathBuf,
    /// The identity key, read aloud as [`ca::fingerprint`].
    pub identity: IdentityPublicKey,
}

/// `hotline keys init`: the endpoint's identity key, its CSR and a node config naming `relay`.
pub fn keys_init(out: &Path, endpoint: &str, relay: &RelaySpec) -> Result<KeysMade> {
    let id = EndpointId::new(endpoint).with_context(|| format!("--endpoint {endpoint:?}"))?;
    crate::certs::check_dns_name(&relay.name)
        .with_context(|| format!("--relay {:?}", relay.name))?;
    check_relay_addr(&relay.addr)?;
    let key = out.join(format!("{id}.key"));
    if key.exists() {
        bail!(
            "{} exists: an identity key is never overwritten",
            key.display()
        );
    }
    let request = ca::endpoint_request(&id)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    hotline_net::quic::write_private(&key, request.key_pem.as_bytes())
        .with_context(|| format!("writing {}", key.display()))?;
    let csr = out.join(format!("{id}.csr"));
    write(out, &format!("{id}.csr"), &request.csr_pem)?;
    let config = out.join(format!("{id}.toml"));
    let text = format!(
        "# Endpoint config for {id}, written by `hotline keys init`: the key was made here.\n\
         # Every key is documented in deploy/node.example.toml. Still needed: {id}.pem and ca.pem\n\
         # from the organiser (`hotline certs sign`), and the partner's pinned key:\n\
         #   hotline pin --config {id}.toml --partner ID --fingerprint \"…\"\n\
         {head}",
        head = node_config_head(std::slice::from_ref(relay), &id),
    );
    write(out, &format!("{id}.toml"), &text)?;
    Ok(KeysMade {
        key,
        csr,
        config,
        identity: request.identity,
    })
}

/// What `certs sign` made.
#[derive(Debug)]
pub struct Signed {
    /// The endpoint.
    pub id: EndpointId,
    /// Its certificate, for the endpoint.
    pub cert: PathBuf,
    /// The CA certificate, for the endpoint.
    pub ca: PathBuf,
    /// Its identity key.
    pub identity: IdentityPublicKey,
}

/// `hotline certs sign`: signs `csr` for `days`; writes `<id>.pem` into the CA directory (the
/// record) and, with `ca.pem`, into `out` (default: the CSR's directory).
pub fn sign(ca_dir: &Path, csr: &Path, days: u32, out: Option<&Path>) -> Result<Signed> {
    ca::check_days(days)?;
    let authority = load_ca(ca_dir)?;
    let text = ca::read_pem_text(csr)?;
    let signed = authority
        .sign_csr(&text, days)
        .with_context(|| csr.display().to_string())?;
    let id = signed.id.clone();
    refuse_if_issued(ca_dir, &id)?;
    write(ca_dir, &format!("{id}.pem"), &signed.cert_pem)?;
    let out = out
        .map(Path::to_owned)
        .unwrap_or_else(|| csr.parent().unwrap_or(Path::new(".")).to_owned());
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let same = |a: &Path, b: &Path| matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y);
    if !same(&out, ca_dir) {
        write(&out, &format!("{id}.pem"), &signed.cert_pem)?;
        write(&out, "ca.pem", &authority.cert_pem)?;
    }
    Ok(Signed {
        cert: out.join(format!("{id}.pem")),
        ca: out.join("ca.pem"),
        id,
        identity: signed.identity,
    })
}

/// `<ca>/<id>.pem` is the CA's only record of the certificate it issued to `id`, and what
/// `certs revoke` revokes: signing again for `id` (a re-key, or a CSR that claims a team's
/// name) must not overwrite a certificate that is still valid, or it could never be revoked.
/// A revoked one (in the ledger) may be replaced.
fn refuse_if_issued(ca_dir: &Path, id: &EndpointId) -> Result<()> {
    let cert_path = ca_dir.join(format!("{id}.pem"));
    if !cert_path.exists() {
        return Ok(());
    }
    let cert = tls::load_certs(&cert_path)?;
    let serial = hex::encode(crl::serial(&cert[0])?);
    let ledger_path = ca_dir.join(REVOKED_FILE);
    let ledger: Ledger = if ledger_path.exists() {
        read_toml(&ledger_path)?
    } else {
        Ledger::default()
    };
    if ledger.revoked.iter().any(|e| e.serial == serial) {
        return Ok(());
    }
    bail!(
        "{id} already holds a certificate from this CA ({}, serial {serial}): revoke it first \
         (hotline certs revoke --ca {} {id}), then sign the new request",
        cert_path.display(),
        ca_dir.display()
    )
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Ledger {
    /// The number of the last CRL written.
    crl_number: u64,
    #[serde(default)]
    revoked: Vec<LedgerEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct LedgerEntry {
    endpoint: String,
    /// Hex serial number.
    serial: String,
    /// RFC 3339.
    revoked_at: String,
}

/// What `certs revoke` did.
#[derive(Debug)]
pub struct Revocation {
    /// The CRL written.
    pub crl: PathBuf,
    /// How many certificates it lists.
    pub count: usize,
    /// Relay configs that now name the CRL.
    pub relay_configs: Vec<PathBuf>,
}

/// `hotline certs revoke`: adds `endpoint`'s current certificate to the ledger and writes a
/// CRL of everything revoked so far, next update in `days`; points the relay configs in the CA
/// directory at it.
pub fn revoke(ca_dir: &Path, endpoint: &str, days: u32) -> Result<Revocation> {
    let id = EndpointId::new(endpoint).with_context(|| format!("endpoint {endpoint:?}"))?;
    ca::check_days(days)?;
    let authority = load_ca(ca_dir)?;
    let cert_path = ca_dir.join(format!("{id}.pem"));
    if !cert_path.exists() {
        bail!(
            "{} not found: this CA issued no certificate to {id} (certs init, sign or add-endpoint write it)",
            cert_path.display()
        );
    }
    let cert = tls::load_certs(&cert_path)?;
    let serial = crl::serial(&cert[0])?;
    let ledger_path = ca_dir.join(REVOKED_FILE);
    let mut ledger: Ledger = if ledger_path.exists() {
        read_toml(&ledger_path)?
    } else {
        Ledger::default()
    };
    let serial_hex = hex::encode(&serial);
    if !ledger.revoked.iter().any(|e| e.serial == serial_hex) {
        ledger.revoked.push(LedgerEntry {
            endpoint: id.to_string(),
            serial: serial_hex,
            revoked_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        });
    }
    let mut revoked = Vec::new();
    for e in &ledger.revoked {
        revoked.push(Revoked {
            serial: hex::decode(&e.serial)
                .with_context(|| format!("{}: serial {:?}", ledger_path.display(), e.serial))?,
            at: humantime::parse_rfc3339(&e.revoked_at).with_context(|| {
                format!("{}: revoked_at {:?}", ledger_path.display(), e.revoked_at)
            })?,
        });
    }
    ledger.crl_number += 1;
    let pem = authority.crl(&revoked, ledger.crl_number, days)?;
    write(ca_dir, CRL_FILE, &pem)?;
    let text = toml::to_string(&ledger).context("encoding the revocation ledger")?;
    write(
        ca_dir,
        REVOKED_FILE,
        &format!("# Every certificate this CA revoked; `hotline certs revoke` keeps it.\n{text}"),
    )?;
    let mut relay_configs = Vec::new();
    for path in relay_configs_in(ca_dir)? {
        let table: toml::Table = read_toml(&path)?;
        if !table.contains_key("crl") {
            crate::process::set_top_level_key(&path, "crl", CRL_FILE)?;
        }
        relay_configs.push(path);
    }
    Ok(Revocation {
        crl: ca_dir.join(CRL_FILE),
        count: revoked.len(),
        relay_configs,
    })
}

/// `relay.toml` and `relay-N.toml` in `dir`.
fn relay_configs_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name == "relay.toml" || (name.starts_with("relay-") && name.ends_with(".toml")) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// `hotline pin`: pins `partner`'s identity key, given as a fingerprint, in the node config at
/// `config` (replacing the `[[partner]]` there). Returns the previous pin if it changed.
pub fn pin(config: &Path, partner: &str, fingerprint: &str) -> Result<Option<String>> {
    let id = EndpointId::new(partner).with_context(|| format!("--partner {partner:?}"))?;
    let key = ca::parse_fingerprint(fingerprint)?;
    let text =
        std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    let mut table: toml::Table = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: {}", config.display(), e.message()))?;
    let entry = |id: &EndpointId| {
        let mut t = toml::Table::new();
        t.insert("id".into(), toml::Value::String(id.to_string()));
        t.insert("identity_key".into(), toml::Value::String(key.to_hex()));
        t
    };
    let previous = match table.get("partner").and_then(|p| p.as_array()) {
        None => {
            // Appending keeps the file, comments included, as it was.
            let mut text = text;
            if !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&format!(
                "\n# The partner's identity key, pinned from its fingerprint (`hotline pin`).\n\
                 [[partner]]\nid = \"{id}\"\nidentity_key = \"{}\"\n",
                key.to_hex()
            ));
            std::fs::write(config, text)
                .with_context(|| format!("writing {}", config.display()))?;
            return Ok(None);
        }
        Some(list) => list.first().map(|p| {
            format!(
                "{} {}",
                p.get("id").and_then(|v| v.as_str()).unwrap_or("?"),
                p.get("identity_key")
                    .and_then(|v| v.as_str())
                    .unwrap_or("?")
            )
        }),
    };
    table.insert(
        "partner".into(),
        toml::Value::Array(vec![toml::Value::Table(entry(&id))]),
    );
    let out = toml::to_string(&table).context("encoding the config")?;
    std::fs::write(config, out).with_context(|| format!("writing {}", config.display()))?;
    Ok(previous.filter(|p| *p != format!("{id} {}", key.to_hex())))
}

/// What `certs add-endpoint` made.
#[derive(Debug)]
pub struct Added {
    /// The new endpoints' configs and fingerprints.
    pub endpoints: Vec<(EndpointId, PathBuf, IdentityPublicKey)>,
    /// The relay configs given the new hotlines.
    pub relay_configs: Vec<PathBuf>,
}

/// `hotline certs add-endpoint`: issues keys and certificates for `endpoints` (development:
/// made here), writes their configs, and adds `pairs` to the relay configs. Each new endpoint
/// must be paired, with another new one or with one this CA issued that is in no hotline yet.
pub fn add_endpoints(
    ca_dir: &Path,
    endpoints: &[String],
    pairs: &[String],
    days: u32,
) -> Result<Added> {
    ca::check_days(days)?;
    let authority = load_ca(ca_dir)?;
    let record: PkiRecord = read_toml(&ca_dir.join(PKI_FILE))?;
    let relays: Vec<RelaySpec> = record
        .relay
        .into_iter()
        .map(|r| RelaySpec::new(r.name, r.addr))
        .collect();
    let relay_configs = relay_configs_in(ca_dir)?;
    let mut hotlined = std::collections::BTreeSet::new();
    for path in &relay_configs {
        let t: toml::Table = read_toml(path)?;
        for h in t
            .get("hotline")
            .and_then(|h| h.as_array())
            .into_iter()
            .flatten()
        {
            for k in ["a", "b"] {
                if let Some(x) = h.get(k).and_then(|v| v.as_str()) {
                    hotlined.insert(x.to_owned());
                }
            }
        }
    }
    let mut new = Vec::new();
    for e in endpoints {
        let id = EndpointId::new(e.clone()).with_context(|| format!("--endpoint {e:?}"))?;
        if ca_dir.join(format!("{id}.pem")).exists() || new.contains(&id) {
            bail!("--endpoint {id}: this CA already has an endpoint {id}");
        }
        new.push(id);
    }
    let mut partner_of = std::collections::BTreeMap::new();
    for p in pairs {
        let Some((a, b)) = p.split_once(':') else {
            bail!("--pair {p:?} is not of the form a:b")
        };
        let a = EndpointId::new(a).with_context(|| format!("--pair {p:?}"))?;
        let b = EndpointId::new(b).with_context(|| format!("--pair {p:?}"))?;
        for (x, y) in [(&a, &b), (&b, &a)] {
            let known = new.contains(x) || ca_dir.join(format!("{x}.pem")).exists();
            if !known {
                bail!(
                    "--pair {p:?} names {x}, which is neither an --endpoint nor issued by this CA"
                );
            }
            if hotlined.contains(x.as_str()) {
                bail!(
                    "--pair {p:?}: {x} already has a hotline; this version supports one partner per endpoint"
                );
            }
            if partner_of.insert(x.clone(), y.clone()).is_some() {
                bail!("--pair {p:?}: {x} is paired twice");
            }
        }
    }
    for id in &new {
        if !partner_of.contains_key(id) {
            bail!("--endpoint {id} is in no --pair; every endpoint needs a partner");
        }
    }
    // Checked: now issue and write.
    let mut issued = std::collections::BTreeMap::new();
    for id in &new {
        let e = authority.issue_endpoint(id, days)?;
        hotline_net::pki::write_issued(ca_dir, id.as_str(), &e.issued)?;
        issued.insert(id.clone(), e.identity);
    }
    let mut made = Vec::new();
    for id in &new {
        let partner = &partner_of[id];
        let partner_key = match issued.get(partner) {
            Some(k) => *k,
            None => {
                tls::identity_key(&tls::load_certs(&ca_dir.join(format!("{partner}.pem")))?[0])?
            }
        };
        let text = format!(
            "# Endpoint config for {id}, written by `hotline certs add-endpoint` (development: the\n\
             # organiser made this key).\n{head}\n\
             [[partner]]\nid = \"{partner}\"\nidentity_key = \"{key}\"\n",
            head = node_config_head(&relays, id),
            key = partner_key.to_hex(),
        );
        write(ca_dir, &format!("{id}.toml"), &text)?;
        made.push((id.clone(), ca_dir.join(format!("{id}.toml")), issued[id]));
    }
    let mut hotlines = String::new();
    for p in pairs {
        if let Some((a, b)) = p.split_once(':') {
            hotlines.push_str(&format!("\n[[hotline]]\na = \"{a}\"\nb = \"{b}\"\n"));
        }
    }
    for path in &relay_configs {
        let mut text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        text.push_str(&hotlines);
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(Added {
        endpoints: made,
        relay_configs,
    })
}

#[cfg(test)]
mod tests;
