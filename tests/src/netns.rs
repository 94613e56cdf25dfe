//! A network namespace joined to the host by a veth pair, for fault tests that cut a real kernel
//! link instead of going through the user-space proxy ([`crate::impair`]). Needs root (and
//! `ip`); [`NetNs::create`] says why it cannot be had, so a test can skip with that reason.
//!
//! The host side is `10.213.N.1/24`, the namespace side `10.213.N.2/24`. A relay started in the
//! namespace with [`NetNs::start_relay`] listens on the namespace side, and nodes on the host
//! reach it over the veth. [`NetNs::cut`] takes the namespace's end of the veth down (packets
//! are dropped silently, like a cut cable); everything is removed when the value is dropped.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use hotline_client::process::{Process, log_field, set_top_level_key};

/// A namespace and its veth pair; removed on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    host_if: String,
    ns_if: String,
    /// The namespace side's address.
    pub ns_ip: Ipv4Addr,
}

/// Runs `ip ARGS`, or says why it failed.
fn ip(args: &[&str]) -> Result<(), String> {
    let o = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("running ip: {e}"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

impl NetNs {
    /// Creates a namespace with a veth pair to the host, or says why it cannot (not root, no
    /// `ip`, no permission to make namespaces).
    pub fn create() -> Result<Self, String> {
        let uid = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        if uid != "0" {
            return Err(format!("not root (uid {uid:?})"));
        }
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}{n}", std::process::id() % 100_000);
        // Interface names are at most 15 bytes.
        let ns = Self {
            name: format!("hotline-{id}"),
            host_if: format!("hlh{id}"),
            ns_if: format!("hln{id}"),
            // One /24 per namespace of this process; the pid spreads parallel test processes.
            ns_ip: Ipv4Addr::new(10, 213, ((std::process::id() + n * 7) % 250) as u8, 2),
        };
        let host_ip = {
            let [a, b, c, _] = ns.ns_ip.octets();
            format!("{a}.{b}.{c}.1/24")
        };
        let ns_ip = format!("{}/24", ns.ns_ip);
        ip(&["netns", "add", &ns.name])?;
        // From here on, drop removes what was made.
        ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns.ns_if,
        ])?;
        ip(&["link", "set", &ns.ns_if, "netns", &ns.name])?;
        ip(&["addr", "add", &host_ip, "dev", &ns.host_if])?;
        ip(&["link", "set", &ns.host_if, "up"])?;
        ns.exec(&["addr", "add", &ns_ip, "dev", &ns.ns_if])?;
        ns.exec(&["link", "set", &ns.ns_if, "up"])?;
        ns.exec(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Runs `ip ARGS` inside the namespace.
    fn exec(&self, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["netns", "exec", &self.name, "ip"];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Cuts (`true`) or restores the link: the namespace's end of the veth goes down or up.
    pub fn cut(&self, on: bool) -> Result<(), String> {
        self.exec(&["link", "set", &self.ns_if, if on { "down" } else { "up" }])
    }

    /// Starts `relay_bin --config config` inside the namespace listening on `port` of the
    /// namespace side (0 for one of the kernel's choosing), with its stderr in `log`; waits
    /// for its `relay listening` line and returns the process and the address it bound.
    pub fn start_relay(
        &self,
        relay_bin: &Path,
        config: &Path,
        port: u16,
        log: &Path,
    ) -> Result<(Process, SocketAddr), String> {
        let listen = SocketAddr::new(IpAddr::V4(self.ns_ip), port);
        set_top_level_key(config, "listen", &listen.to_string()).map_err(|e| e.to_string())?;
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name])
            .arg(relay_bin)
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info,hotline_relay::server=info");
        // `ip netns exec` execs the relay, so the process is the relay itself.
        let mut p = Process::spawn("relay-ns", c, log).map_err(|e| e.to_string())?;
        let line = p
            .wait_log("relay listening", Duration::from_secs(30))
            .map_err(|e| e.to_string())?;
        let addr = log_field(&line, "addr")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("no addr in {line:?}"))?;
        Ok((p, addr))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the veth, and with it the host's end.
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.host_if]);
    }
}
