//! Real `hotline-relay` and `hotline node` processes on loopback, for `hotline demo`, the
//! end-to-end tests and `hotline-bench`.
//!
//! - [`Process`]: a child with its stderr in a log file; [`Process::stop`] sends SIGTERM, waits a
//!   bounded time, then SIGKILLs and reaps; dropping it does the same.
//! - [`Binaries`]: where `hotline` and `hotline-relay` are, checked once.
//! - [`Launcher`]: starts them with one `RUST_LOG`. [`Launcher::start_relay`] rewrites the relay
//!   config's `listen` (normally to `127.0.0.1:0`) and its `metrics` (to `127.0.0.1:0`, unless
//!   `"off"`), starts the relay and reads the addresses it bound back from its `relay listening`
//!   log line, so no port is ever guessed free and then
//!   raced for; [`point_node_at`] then writes that address into a node config's `relay` key.
//!
//! It will not wait for a node's link or control socket: callers know what "ready" means to
//! them. Every wait is bounded, and a failed one names the process and its log file.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use hotline_client::process::{Binaries, Launcher, LOOPBACK_ANY, point_node_at};
//! let dir = std::path::Path::new("exercise"); // written by `hotline certs init`
//! let launcher = Launcher::new(Binaries::beside_current_exe()?);
//! let relay = launcher.start_relay(&dir.join("relay.toml"), LOOPBACK_ANY, &dir.join("relay.log"))?;
//! point_node_at(&dir.join("us.toml"), relay.addr)?;
//! let us = launcher.start_node("us", &[&dir.join("us.toml")], &dir.join("us.log"), &[])?;
//! # Ok(()) }
//! ```

use std::ffi::OsStr;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// `127.0.0.1:0`: let the kernel choose the port, then read it back.
pub const LOOPBACK_ANY: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

/// How long [`Launcher::start_relay`] waits for the `relay listening` line.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`Process::stop`] (and drop) waits after SIGTERM before sending SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// The log line the relay writes once its socket is bound, with `addr=` and `metrics=`.
const LISTENING: &str = "relay listening";

/// How often waits look at the process and its log.
const POLL: Duration = Duration::from_millis(10);

/// What went wrong starting or watching a process.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// A binary is not where it was looked for.
    #[error(
        "{} not found: build the workspace binaries first (cargo build --workspace --bins)",
        path.display()
    )]
    MissingBinary {
        /// The path looked at.
        path: PathBuf,
    },
    /// The current executable's path could not be read.
    #[error("locating the current executable")]
    CurrentExe(#[source] std::io::Error),
    /// The log file could not be created, or the process not started.
    #[error("starting {name} ({}) with its log in {}", bin.display(), log.display())]
    Spawn {
        /// Name for messages.
        name: String,
        /// The binary.
        bin: PathBuf,
        /// Its log file.
        log: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The process ended while we waited for it.
    #[error("{name} exited ({status}) before {waiting_for}; see its log {}", log.display())]
    Exited {
        /// Name for messages.
        name: String,
        /// How it ended.
        status: ExitStatus,
        /// What we were waiting for.
        waiting_for: String,
        /// Its log file.
        log: PathBuf,
    },
    /// The process kept running without doing what we waited for.
    #[error("{name}: no {waiting_for} within {timeout:?}; see its log {}", log.display())]
    Timeout {
        /// Name for messages.
        name: String,
        /// What we were waiting for.
        waiting_for: String,
        /// How long we waited.
        timeout: Duration,
        /// Its log file.
        log: PathBuf,
    },
    /// The relay's `relay listening` line lacks a field or holds a bad address.
    #[error("{name}: no valid {key}= in its log line {line:?}")]
    BadListeningLine {
        /// Name for messages.
        name: String,
        /// The field.
        key: &'static str,
        /// The line.
        line: String,
    },
    /// A config file could not be read, parsed or written.
    #[error("rewriting {key} in {}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// The key being written.
        key: String,
        /// What failed.
        #[source]
        source: ConfigEditError,
    },
}

/// Why a config file could not be rewritten.
#[derive(Debug, thiserror::Error)]
pub enum ConfigEditError {
    /// Reading or writing the file.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The file is not TOML.
    #[error(transparent)]
    Toml(Box<toml::de::Error>),
}

/// A running child process with its stderr in a log file.
///
/// Invariant: once `stop`, `kill` or drop returns, the child has exited and been reaped.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Process {
    /// Starts `command` with stdin and stdout closed and stderr in a new file at `log`.
    pub fn spawn(name: &str, mut command: Command, log: &Path) -> Result<Self, ProcessError> {
        let bin = PathBuf::from(command.get_program());
        let spawn_error = |source| ProcessError::Spawn {
            name: name.into(),
            bin: bin.clone(),
            log: log.to_owned(),
            source,
        };
        let file = std::fs::File::create(log).map_err(spawn_error)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .map_err(spawn_error)?;
        Ok(Self {
            name: name.into(),
            child: Some(child),
            log: log.to_owned(),
        })
    }

    /// The name used in messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id, until the child is reaped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The log file (the child's stderr).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The log so far (empty if it cannot be read).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How the child ended, if it has (reaping it); `None` while it runs.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Whether the child is still running (false once stopped or reaped).
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends `signal` (SIGSTOP, SIGCONT, SIGTERM, …) to a running child.
    pub fn signal(&self, signal: Signal) {
        if let Some(pid) = self.pid() {
            // A pid is a positive i32 on every Unix; a child that is gone makes this a no-op.
            let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), signal);
        }
    }

    /// Sends SIGTERM without waiting, so several processes can shut down at once before
    /// [`stop`](Self::stop) reaps each.
    pub fn terminate(&self) {
        self.signal(Signal::SIGTERM);
    }

    /// SIGTERM, up to [`STOP_GRACE`] for the child to exit, then SIGKILL; reaps it.
    pub fn stop(&mut self) {
        self.stop_within(STOP_GRACE);
    }

    /// SIGTERM, up to `grace` for the child to exit, then SIGKILL; reaps it.
    pub fn stop_within(&mut self, grace: Duration) {
        self.terminate();
        if self.wait_exit(grace).is_none() {
            self.kill();
        }
        self.child = None;
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits up to `timeout` for the child to exit on its own; its status if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits up to `timeout` for a complete log line containing `needle` and returns it; fails
    /// early if the child exits first.
    pub fn wait_log(&mut self, needle: &str, timeout: Duration) -> Result<String, ProcessError> {
        let deadline = Instant::now() + timeout;
        loop {
            // Only whole lines: the child may be half-way through writing the last one.
            let log = self.log();
            let complete = log.rfind('\n').map_or("", |end| &log[..end]);
            if let Some(line) = complete.lines().find(|l| l.contains(needle)) {
                return Ok(line.to_owned());
            }
            let waiting_for = || format!("a log line containing {needle:?}");
            if let Some(status) = self.exited() {
                return Err(ProcessError::Exited {
                    name: self.name.clone(),
                    status,
                    waiting_for: waiting_for(),
                    log: self.log.clone(),
                });
            }
            if Instant::now() >= deadline {
                return Err(ProcessError::Timeout {
                    name: self.name.clone(),
                    waiting_for: waiting_for(),
                    timeout,
                    log: self.log.clone(),
                });
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
    }
}

/// The directory holding `hotline` and `hotline-relay`.
#[derive(Clone, Debug)]
pub struct Binaries {
    dir: PathBuf,
}

impl Binaries {
    /// The binaries in `dir`; fails if either is missing.
    pub fn new(dir: &Path) -> Result<Self, ProcessError> {
        for bin in ["hotline", "hotline-relay"] {
            let path = dir.join(bin);
            if !path.exists() {
                return Err(ProcessError::MissingBinary { path });
            }
        }
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    /// The binaries next to the running executable (`target/debug/hotline` finds
    /// `target/debug/hotline-relay`).
    pub fn beside_current_exe() -> Result<Self, ProcessError> {
        let exe = std::env::current_exe().map_err(ProcessError::CurrentExe)?;
        Self::new(exe.parent().unwrap_or(Path::new(".")))
    }

    /// `hotline`.
    pub fn hotline(&self) -> PathBuf {
        self.dir.join("hotline")
    }

    /// `hotline-relay`.
    pub fn relay(&self) -> PathBuf {
        self.dir.join("hotline-relay")
    }
}

/// Starts relays and nodes from one set of [`Binaries`] with one log filter.
#[derive(Clone, Debug)]
pub struct Launcher {
    binaries: Binaries,
    filter: Option<String>,
}

/// A relay started by [`Launcher::start_relay`], with the addresses it bound.
#[derive(Debug)]
pub struct RunningRelay {
    /// The process.
    pub process: Process,
    /// The UDP address it listens on.
    pub addr: SocketAddr,
    /// Its metrics endpoint, if its config turns one on.
    pub metrics: Option<SocketAddr>,
}

impl Launcher {
    /// A launcher whose children inherit `RUST_LOG`.
    pub fn new(binaries: Binaries) -> Self {
        Self {
            binaries,
            filter: None,
        }
    }

    /// Gives every child `RUST_LOG=filter`.
    #[must_use]
    pub fn log_filter(mut self, filter: &str) -> Self {
        self.filter = Some(filter.to_owned());
        self
    }

    /// The binaries it starts.
    pub fn binaries(&self) -> &Binaries {
        &self.binaries
    }

    /// Sets the relay config's `listen` to `listen` (in place: [`LOOPBACK_ANY`] for a fresh
    /// port, or the address a previous run bound, so that running nodes find it again) and its
    /// `metrics` to [`LOOPBACK_ANY`] unless it is `"off"`, starts
    /// `hotline-relay --config <config>` with its stderr in `log`, and waits up to
    /// [`STARTUP_TIMEOUT`] for its `relay listening` line.
    ///
    /// The relay's filter gets `hotline_relay::server=info` appended, because that line is
    /// how the bound address is learnt.
    pub fn start_relay(
        &self,
        config: &Path,
        listen: SocketAddr,
        log: &Path,
    ) -> Result<RunningRelay, ProcessError> {
        set_top_level_key(config, "listen", &listen.to_string())?;
        // Several relays run at once in tests and demos: each gets a free loopback port for
        // its metrics listener (read back below), unless the file turns metrics off.
        if !metrics_off(config)? {
            set_top_level_key(config, "metrics", &LOOPBACK_ANY.to_string())?;
        }
        let base = self
            .filter
            .clone()
            .or_else(|| std::env::var("RUST_LOG").ok())
            .unwrap_or_else(|| "info".to_owned());
        let mut command = Command::new(self.binaries.relay());
        command
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", format!("{base},hotline_relay::server=info"));
        let mut process = Process::spawn("relay", command, log)?;
        let line = process.wait_log(LISTENING, STARTUP_TIMEOUT)?;
        let bad = |key| ProcessError::BadListeningLine {
            name: process.name.clone(),
            key,
            line: line.clone(),
        };
        let field = |key| log_field(&line, key).ok_or_else(|| bad(key));
        let addr = field("addr")?.parse().map_err(|_| bad("addr"))?;
        let metrics = match field("metrics")? {
            "off" => None,
            m => Some(m.parse().map_err(|_| bad("metrics"))?),
        };
        Ok(RunningRelay {
            process,
            addr,
            metrics,
        })
    }

    /// Starts `hotline node` with one `--config` per file (one process can host several
    /// endpoints), extra environment `env` (e.g. a failpoint) and its stderr in `log`. It does
    /// not wait for the node to be ready.
    pub fn start_node(
        &self,
        name: &str,
        configs: &[&Path],
        log: &Path,
        env: &[(&str, &str)],
    ) -> Result<Process, ProcessError> {
        let mut command = Command::new(self.binaries.hotline());
        command.arg("node");
        for config in configs {
            command.arg("--config").arg(config);
        }
        if let Some(filter) = &self.filter {
            command.env("RUST_LOG", filter);
        }
        command.envs(env.iter().map(|(k, v)| (OsStr::new(k), OsStr::new(v))));
        Process::spawn(name, command, log)
    }
}

/// Whether the relay config at `path` says `metrics = "off"`.
fn metrics_off(path: &Path) -> Result<bool, ProcessError> {
    let read = || -> Result<bool, ConfigEditError> {
        let text = std::fs::read_to_string(path)?;
        let table: toml::Table =
            toml::from_str(&text).map_err(|e| ConfigEditError::Toml(Box::new(e)))?;
        Ok(table.get("metrics").and_then(toml::Value::as_str) == Some("off"))
    };
    read().map_err(|source| ProcessError::Config {
        path: path.to_owned(),
        key: "metrics".to_owned(),
        source,
    })
}

/// Points the node config at `relay`: rewrites its `relay = "…"` key in place.
pub fn point_node_at(config: &Path, relay: SocketAddr) -> Result<(), ProcessError> {
    set_top_level_key(config, "relay", &relay.to_string())
}

/// Sets the top-level string key `key` of the TOML file at `path` to `value`, keeping every other
/// line (comments included) as it is; a missing key is added as the first line.
pub fn set_top_level_key(path: &Path, key: &str, value: &str) -> Result<(), ProcessError> {
    let edit = || -> Result<(), ConfigEditError> {
        let text = std::fs::read_to_string(path)?;
        // Parse first, so a file that is not TOML is an error rather than edited blindly.
        let _: toml::Table =
            toml::from_str(&text).map_err(|e| ConfigEditError::Toml(Box::new(e)))?;
        let new_line = format!("{key} = {}", toml::Value::String(value.to_owned()));
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        // Top-level keys come before the first table header.
        let top = lines
            .iter()
            .position(|l| l.trim_start().starts_with('['))
            .unwrap_or(lines.len());
        let existing = lines[..top].iter().position(|l| {
            l.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        });
        match existing {
            Some(i) => lines[i] = new_line,
            None => lines.insert(0, new_line),
        }
        let mut out = lines.join("\n");
        out.push('\n');
        std::fs::write(path, out)?;
        Ok(())
    };
    edit().map_err(|source| ProcessError::Config {
        path: path.to_owned(),
        key: key.to_owned(),
        source,
    })
}

/// The value of ` key=` in a tracing log line (up to the next space).
pub fn log_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    line[start..].split_whitespace().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_line_fields_are_read() {
        let line = "2026-01-01T00:00:00Z  INFO hotline_relay::server: relay listening \
                    addr=127.0.0.1:40123 hotlines=1 endpoints=2 queued=0 metrics=off";
        assert_eq!(log_field(line, "addr"), Some("127.0.0.1:40123"));
        assert_eq!(log_field(line, "metrics"), Some("off"));
        assert_eq!(log_field(line, "queued"), Some("0"));
        assert_eq!(log_field(line, "missing"), None);
    }

    #[test]
    fn top_level_key_is_replaced_in_place_and_tables_are_left_alone() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("us.toml");
        std::fs::write(
            &path,
            "# comment\nrelay = \"127.0.0.1:0\"\ndata_dir = \"x\"\n\n[[partner]]\nrelay = 1\n",
        )?;
        point_node_at(&path, "127.0.0.1:4433".parse()?)?;
        set_top_level_key(&path, "metrics", "127.0.0.1:0")?;
        assert_eq!(
            std::fs::read_to_string(&path)?,
            "metrics = \"127.0.0.1:0\"\n# comment\nrelay = \"127.0.0.1:4433\"\ndata_dir = \"x\"\n\n[[partner]]\nrelay = 1\n"
        );
        Ok(())
    }

    #[test]
    fn a_process_that_exits_while_awaited_names_its_log() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("false.log");
        let mut p = Process::spawn("false", Command::new("false"), &log)?;
        let err = p
            .wait_log("never", STARTUP_TIMEOUT)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.starts_with("false exited"), "{err}");
        assert!(err.contains("false.log"), "{err}");
        assert!(!p.running());
        Ok(())
    }
}
