//! Helpers shared by the relay's integration tests: a raw quinn node speaking the wire
//! protocol, and frame builders.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use hotline_net::framed::{self, LaneTag};
use hotline_net::quic::{self, Timeouts};
use hotline_net::tls::{self, Credentials};
use hotline_proto::Lane;
use hotline_proto::crypto::{Digest, IdentityKey, SessionId};
use hotline_proto::envelope::{Envelope, Header, Receipt, ReceiptKind, Signed};
use hotline_proto::wire::{self, EnvelopeFrame, Frame, Hello, PROTOCOL_VERSION};
use hotline_proto::{Channel, EndpointId, MessageId, Precedence, Seq, Time};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

pub const WAIT: Duration = Duration::from_secs(30);

pub fn id(s: &str) -> EndpointId {
    EndpointId::new(s).unwrap()
}

pub fn subscribe() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("hotline_relay=debug")),
        )
        .try_init();
}

pub struct Node {
    pub conn: quinn::Connection,
    pub control: quinn::SendStream,
    pub lanes: Vec<(Precedence, quinn::SendStream)>,
    pub rx: mpsc::UnboundedReceiver<(Lane, Bytes)>,
    _endpoint: quinn::Endpoint,
    _tasks: JoinSet<()>,
}

pub async fn connect_with(
    addr: SocketAddr,
    ca_dir: &Path,
    cert_dir: &Path,
    name: &str,
    stall: Option<Precedence>,
) -> anyhow::Result<Node> {
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
    Ok(Node {
        conn,
        control,
        lanes,
        rx,
        _endpoint: endpoint,
        _tasks: tasks,
    })
}

impl Node {
    pub async fn send_control(&mut self, bytes: &[u8]) {
        framed::write_frame(&mut self.control, bytes).await.unwrap();
    }

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

    pub async fn next_envelope(&mut self) -> (Lane, Bytes, EnvelopeFrame) {
        let (stream, bytes, frame) = self.recv_where(|f| matches!(f, Frame::Envelope(_))).await;
        let Frame::Envelope(e) = frame else {
            unreachable!()
        };
        (stream, bytes, e)
    }

    pub async fn next_reply(&mut self) -> Frame {
        self.recv_where(|f| matches!(f, Frame::Accepted(_) | Frame::Refused(_)))
            .await
            .2
    }

    pub async fn closed_with(&self) -> quinn::ConnectionError {
        tokio::time::timeout(WAIT, self.conn.closed())
            .await
            .unwrap()
    }
}

pub fn envelope(sender: &str, recipient: &str, precedence: Precedence, seq: u64) -> Vec<u8> {
    envelope_on(sender, recipient, precedence, seq, precedence)
}

pub fn envelope_on(
    sender: &str,
    recipient: &str,
    precedence: Precedence,
    seq: u64,
    transport: Precedence,
) -> Vec<u8> {
    envelope_sized(sender, recipient, precedence, seq, transport, 64)
}

pub fn envelope_sized(
    sender: &str,
    recipient: &str,
    precedence: Precedence,
    seq: u64,
    transport: Precedence,
    sealed: usize,
) -> Vec<u8> {
    let sealed = vec![0x5A; sealed];
    let header = Header {
        sender: id(sender),
        recipient: id(recipient),
        channel: Channel::default(),
        precedence,
        seq: Seq(seq),
        after: [0; 4],
        epoch: 1,
        session: SessionId([3; 16]),
        prev: Digest::default(),
        sealed_len: sealed.len() as u32,
    };
    wire::encode_frame(&Frame::Envelope(EnvelopeFrame {
        transport,
        envelope: Envelope { header, sealed },
        head: None,
        setup: None,
    }))
}

pub fn message_id(sender: &str, precedence: Precedence, seq: u64) -> MessageId {
    MessageId {
        sender: id(sender),
        channel: Channel::default(),
        precedence,
        seq: Seq(seq),
    }
}

pub fn delivered(from: &str, to: &str, precedence: Precedence, upto: u64) -> Vec<u8> {
    let receipt = Receipt {
        from: id(from),
        to: id(to),
        channel: Channel::default(),
        precedence,
        kind: ReceiptKind::Delivered {
            upto: Seq(upto),
            head: Digest::default(),
        },
        at: Time(1),
    };
    let key = IdentityKey::from_seed(&[9; 32]);
    wire::encode_frame(&Frame::Receipt(Signed::sign(receipt, &key)))
}
