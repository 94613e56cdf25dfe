//! Shared test utilities for the relay and its users (feature `test-utils`).
//!
//! - [`TestPki`]: a temporary directory holding a fresh exercise PKI (`ca.pem`, `relay.pem`,
//!   `<id>.pem` and their keys), from [`hotline_net::pki`];
//! - [`TestPki::server_config`]: a [`ServerConfig`] on `127.0.0.1:0` with its data directory
//!   inside the PKI's directory;
//! - [`TestNode`]: a raw quinn node that speaks the wire protocol, to drive a relay frame by frame;
//! - frame builders ([`envelope`], [`delivered`], ...) and [`subscribe`] for per-test logs.
//!
//! For tests only: everything here panics on failure rather than returning errors a test would
//! unwrap anyway, and nothing here is fit for production (the keys are exercise keys).

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test utilities fail the test loudly"
)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use hotline_net::framed::{self, LaneTag};
use hotline_net::pki::ExercisePki;
use hotline_net::quic::{self, Timeouts};
use hotline_net::tls::{self, Credentials};
use hotline_proto::Lane;
use hotline_proto::wire::{self, EnvelopeFrame, Frame, Hello, PROTOCOL_VERSION};
use hotline_proto::{EndpointId, Precedence};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::ServerConfig;

/// The relay's name in test certificates.
pub const RELAY_NAME: &str = "relay.test";

/// A `relay.toml` for the hotline us–jp, using the files a [`TestPki`] writes; its data goes to
/// `data/relay` beside it, its metrics listener on a free loopback port (read back from the
/// `relay listening` line).
pub const RELAY_TOML: &str = r#"
listen = "127.0.0.1:0"
metrics = "127.0.0.1:0"
data_dir = "data/relay"
ca = "ca.pem"
cert = "relay.pem"
key = "relay.key"
[[hotline]]
a = "us"
b = "jp"
"#;

/// A temporary directory with a fresh exercise PKI; removed when dropped.
#[derive(Debug)]
pub struct TestPki {
    dir: tempfile::TempDir,
}

impl TestPki {
    /// A CA, a relay certificate and one certificate per endpoint in `endpoints`, written to a
    /// new temporary directory.
    pub fn generate(endpoints: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::write_to(dir.path(), endpoints);
        Self { dir }
    }

    /// Writes a fresh PKI for `endpoints` into `dir` (an existing directory).
    pub fn write_to(dir: &Path, endpoints: &[&str]) {
        let ids: Vec<EndpointId> = endpoints.iter().map(|e| id(e)).collect();
        ExercisePki::generate(RELAY_NAME, &ids)
            .unwrap()
            .write(dir)
            .unwrap();
    }

    /// Writes `toml` as `relay.toml` beside the certificates, for the `hotline-relay` binary.
    pub fn write_config(&self, toml: &str) {
        std::fs::write(self.path().join("relay.toml"), toml).unwrap();
    }

    /// The directory holding the certificates.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A relay configuration on `127.0.0.1:0` with this PKI, its data in `<dir>/data`, and
    /// these hotlines; defaults otherwise (no metrics).
    pub fn server_config(&self, hotlines: &[(&str, &str)]) -> ServerConfig {
        let dir = self.path();
        let ca = tls::load_certs(&dir.join("ca.pem")).unwrap();
        let credentials =
            Credentials::load(&dir.join("relay.pem"), &dir.join("relay.key")).unwrap();
        ServerConfig::new(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            ca,
            credentials,
            dir.join("data"),
            hotlines.iter().map(|(a, b)| (id(a), id(b))).collect(),
        )
    }
}

/// How long a test waits for anything before failing: generous, it only turns a hang into a
/// failure.
pub const WAIT: Duration = Duration::from_secs(30);

/// Installs a per-test tracing subscriber (`RUST_LOG`, else `hotline_relay=debug`), once.
pub fn subscribe() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("hotline_relay=debug")),
        )
        .try_init();
}

/// A raw node speaking the wire protocol: the control stream, four lane streams each way, and
/// every frame it receives in `rx`, tagged with the stream it came on.
#[derive(Debug)]
pub struct TestNode {
    /// The connection to the relay.
    pub conn: quinn::Connection,
    /// The node's side of the control stream.
    pub control: quinn::SendStream,
    /// The node's lane streams, routine first.
    pub lanes: Vec<(Precedence, quinn::SendStream)>,
    /// Every frame received, with its stream.
    pub rx: mpsc::UnboundedReceiver<(Lane, Bytes)>,
    _endpoint: quinn::Endpoint,
    _tasks: JoinSet<()>,
}

impl TestNode {
    /// Connects to the relay at `addr` as `name`, trusting `ca_dir/ca.pem` and presenting
    /// `cert_dir/<name>.pem`, and exchanges hellos. With `stall`, never reads the relay's
    /// stream of that lane, so the relay's writes to it hit flow control.
    pub async fn connect(
        addr: SocketAddr,
        ca_dir: &Path,
        cert_dir: &Path,
        name: &str,
        stall: Option<Precedence>,
    ) -> anyhow::Result<Self> {
        let ca = tls::load_certs(&ca_dir.join("ca.pem"))?;
        let creds = Credentials::load(
            &cert_dir.join(format!("{name}.pem")),
            &cert_dir.join(format!("{name}.key")),
        )?;
        let config = tls::client_config(&ca, creds, Timeouts::default())?;
        let endpoint = quic::client(addr, config)?;
        let conn = endpoint.connect(addr, "localhost")?.await?;
        let (mut control, mut control_recv) = conn.open_bi().await?;
        let hello = wire::encode_frame(&Frame::Hello(Hello {
            version: PROTOCOL_VERSION,
            agent: "test-node".into(),
        }));
        framed::write_frame(&mut control, &hello).await?;
        let first = framed::read_frame(&mut control_recv)
            .await?
            .ok_or_else(|| anyhow::anyhow!("control stream finished before hello"))?;
        let (Frame::Hello(_), _) = wire::decode_frame(&first)? else {
            anyhow::bail!("relay's first frame is not a hello");
        };
        let mut lanes = Vec::new();
        for lane in Precedence::ALL {
            let mut send = conn.open_uni().await?;
            LaneTag(lane).write(&mut send).await?;
            lanes.push((lane, send));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let mut tasks = JoinSet::new();
        let control_tx = tx.clone();
        tasks.spawn(async move {
            while let Ok(Some(f)) = framed::read_frame(&mut control_recv).await {
                let _ = control_tx.send((Lane::Control, Bytes::from(f)));
            }
        });
        let accept_conn = conn.clone();
        tasks.spawn(async move {
            let mut readers = JoinSet::new();
            while let Ok(mut recv) = accept_conn.accept_uni().await {
                let tx = tx.clone();
                readers.spawn(async move {
                    let Ok(LaneTag(lane)) = LaneTag::read(&mut recv).await else {
                        return;
                    };
                    if stall == Some(lane) {
                        // Never read this lane: the relay's writes to it hit flow control.
                        std::future::pending::<()>().await;
                    }
                    while let Ok(Some(f)) = framed::read_frame(&mut recv).await {
                        let _ = tx.send((Lane::Precedence(lane), Bytes::from(f)));
                    }
                });
            }
        });
        Ok(Self {
            conn,
            control,
            lanes,
            rx,
            _endpoint: endpoint,
            _tasks: tasks,
        })
    }

    /// Writes one frame on the control stream.
    pub async fn send_control(&mut self, bytes: &[u8]) {
        framed::write_frame(&mut self.control, bytes).await.unwrap();
    }

    /// Writes one frame on the stream of `lane`.
    pub async fn send_lane(&mut self, lane: Precedence, bytes: &[u8]) {
        let (_, s) = self.lanes.iter_mut().find(|(l, _)| *l == lane).unwrap();
        framed::write_frame(s, bytes).await.unwrap();
    }

    /// The next received frame for which `pick` says yes; others are skipped.
    pub async fn recv_where(
        &mut self,
        mut pick: impl FnMut(&Frame) -> bool,
    ) -> (Lane, Bytes, Frame) {
        tokio::time::timeout(WAIT, async {
            loop {
                let (stream, bytes) = self.rx.recv().await.expect("node connection ended");
                let (frame, _) = wire::decode_frame(&bytes).unwrap();
                if pick(&frame) {
                    return (stream, bytes, frame);
                }
            }
        })
        .await
        .expect("timed out waiting for a frame")
    }

    /// The next envelope received, with its stream and bytes.
    pub async fn next_envelope(&mut self) -> (Lane, Bytes, EnvelopeFrame) {
        let (stream, bytes, frame) = self.recv_where(|f| matches!(f, Frame::Envelope(_))).await;
        let Frame::Envelope(e) = frame else {
            unreachable!()
        };
        (stream, bytes, e)
    }

    /// The next `Accepted` or `Refused` received.
    pub async fn next_reply(&mut self) -> Frame {
        self.recv_where(|f| matches!(f, Frame::Accepted(_) | Frame::Refused(_)))
            .await
            .2
    }

    /// Waits for the connection to close, and says why.
    pub async fn closed_with(&self) -> quinn::ConnectionError {
        tokio::time::timeout(WAIT, self.conn.closed())
            .await
            .unwrap()
    }
}

/// An envelope frame with 64 sealed bytes, on the lane of its own precedence.
pub fn envelope(sender: &str, recipient: &str, precedence: Precedence, seq: u64) -> Vec<u8> {
    envelope_on(sender, recipient, precedence, seq, precedence)
}

/// An envelope frame with 64 sealed bytes, on the `transport` lane.
pub fn envelope_on(
    sender: &str,
    recipient: &str,
    precedence: Precedence,
    seq: u64,
    transport: Precedence,
) -> Vec<u8> {
    envelope_sized(sender, recipient, precedence, seq, transport, 64)
}

pub use hotline_proto::testing::{delivered, envelope as envelope_sized, id, message_id};

/// `GET path` over plain HTTP/1.1 to `addr` (the relay's metrics listener): the whole response,
/// head included. Panics if it takes more than 30 s.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tokio::time::timeout(Duration::from_secs(30), async {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    })
    .await
    .unwrap()
}
