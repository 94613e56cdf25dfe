//! `hotline demo`: a dev PKI in a temporary directory, a relay and two nodes as real processes
//! on loopback (the relay on a port it chooses, started by [`crate::process`]), and a scripted crisis exchange across all four precedences.
//!
//! One flash is deliberately left unacknowledged under a short acknowledgement deadline so the
//! audience sees an escalation: the sender's operator is alarmed and the partner re-alerted.
//! Every process the demo starts is stopped before it returns. What the nodes report back (ids,
//! escalation levels) is printed through [`escape_control`], like the CLI's other text output.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hotline_proto::{MessageId, Precedence};

use crate::certs::{self, DeadlineOverrides, InitRequest, RelaySpec};
use crate::control::{ControlClient, Event, Request, StatusView, WaitLevel};
use crate::process::{Binaries, LOOPBACK_ANY, Launcher, Process, point_node_at};
use crate::view::escape_control;

/// Flash acknowledgement deadline used by the demo, to show an escalation quickly.
const DEMO_FLASH_ACK_MS: u64 = 4000;

/// One line of the timeline.
#[derive(Debug, Clone)]
pub struct TimelineRow {
    /// Sender endpoint.
    pub from: String,
    /// Message id.
    pub id: String,
    /// Precedence.
    pub precedence: String,
    /// The text.
    pub body: String,
    /// Milliseconds from send to each level.
    pub accepted_ms: Option<f64>,
    /// To `delivered`.
    pub delivered_ms: Option<f64>,
    /// To `acknowledged`.
    pub acknowledged_ms: Option<f64>,
    /// `accepted` wording (`accepted (relay memory)` until the relay stores durably).
    pub accepted_label: String,
}

/// Runs the demo; prints the timeline to stdout via `print`.
pub async fn run(keep: bool, print: &mut dyn FnMut(&str)) -> Result<()> {
    let tmp = tempfile::Builder::new().prefix("hotline-demo-").tempdir()?;
    let dir = tmp.path().to_owned();
    let mut deadlines = DeadlineOverrides::new();
    deadlines.insert("flash".into(), (None, Some(DEMO_FLASH_ACK_MS)));
    certs::init(
        &dir,
        &InitRequest {
            endpoints: vec!["us".into(), "jp".into()],
            pairs: vec![],
            // The relay picks its port; the node configs are pointed at it once it runs.
            relays: vec![RelaySpec::new("localhost", LOOPBACK_ANY)],
            force: false,
            wipe_data: false,
            days: Default::default(),
            endpoint_keys: true,
        },
        &deadlines,
    )?;
    print(&format!(
        "dev PKI and configs in {} (exercise keys only)",
        dir.display()
    ));

    let launcher = Launcher::new(
        Binaries::beside_current_exe()
            .context("the demo runs the relay next to this binary (make run builds both)")?,
    );
    let relay = launcher.start_relay(
        &dir.join("relay.toml"),
        LOOPBACK_ANY,
        &dir.join("relay.log"),
    )?;
    let relay_addr = relay.addr;
    // Each is stopped when dropped, should the demo fail part-way.
    let mut procs = vec![relay.process];
    for ep in ["us", "jp"] {
        let config = dir.join(format!("{ep}.toml"));
        point_node_at(&config, relay_addr)?;
        procs.push(launcher.start_node(ep, &[&config], &dir.join(format!("{ep}.log")), &[])?);
    }
    print(&format!(
        "relay on {relay_addr}, nodes us and jp started (logs in {})",
        dir.display()
    ));

    let us_sock = dir.join("data/us/control.sock");
    let jp_sock = dir.join("data/jp/control.sock");
    for (name, sock) in [("us", &us_sock), ("jp", &jp_sock)] {
        wait_link_up(name, sock, &mut procs).await?;
    }
    print("link up on both sides\n");

    use Precedence::{Flash, Immediate, Priority, Routine};
    let script: [(&str, Precedence, &str, bool); 5] = [
        (
            "us",
            Flash,
            "Unidentified launch detected over the Sea of Japan. Confirm status.",
            true,
        ),
        (
            "jp",
            Immediate,
            "No launch from our territory. We are tracking it too.",
            true,
        ),
        (
            "us",
            Priority,
            "Requesting a joint assessment call at 14:00Z.",
            true,
        ),
        (
            "jp",
            Routine,
            "Assessment team assembled; data link open.",
            false,
        ),
        (
            "us",
            Flash,
            "Second track detected. Acknowledge immediately.",
            false,
        ),
    ];
    let mut rows = Vec::new();
    for (from, precedence, body, ack) in script {
        let (sender, receiver) = if from == "us" {
            (&us_sock, &jp_sock)
        } else {
            (&jp_sock, &us_sock)
        };
        let row = exchange(from, sender, receiver, precedence, body, ack).await?;
        print(&format!(
            "{:<3} → {:<3} {:<9} {:<34} {}",
            from,
            if from == "us" { "jp" } else { "us" },
            precedence,
            escape_control(&row.id),
            body
        ));
        rows.push(row);
    }

    print("\nwaiting for the unacknowledged flash to miss its acknowledgement deadline…");
    let escalation = wait_escalation(&us_sock).await?;
    print(&format!(
        "ESCALATION at us: {} escalated {} time(s), transport now {}; jp's operator re-alerted",
        escape_control(&escalation.id),
        escalation.count,
        escape_control(&escalation.escalated_to)
    ));
    let jp_status = status(&jp_sock).await?;
    let mut inbox = ControlClient::connect(&jp_sock).await?;
    let entries = inbox
        .call(Request::Inbox {
            follow: false,
            unacked: false,
            channel: None,
            updates: false,
        })
        .await?;
    for e in entries {
        if let Event::Message(m) = e {
            if m.escalated_to.is_some() {
                print(&format!(
                    "jp inbox: {} escalated_to={} acknowledged={}",
                    escape_control(&m.id),
                    escape_control(&m.escalated_to.unwrap_or_default()),
                    escape_control(m.acknowledged.as_deref().unwrap_or("no"))
                ));
            }
        }
    }
    print(&format!(
        "jp pending acknowledgements: {}",
        escape_control(&jp_status.pending_acks.join(", "))
    ));

    print("\ntimeline (milliseconds from send):");
    print(&format!(
        "{:<5} {:<34} {:<10} {:>10} {:>10} {:>13}",
        "from", "message", "precedence", "accepted", "delivered", "acknowledged"
    ));
    let fmt = |v: Option<f64>| v.map_or("—".to_string(), |ms| format!("{ms:.1}"));
    for r in &rows {
        let memory = if r.accepted_label.contains("memory") {
            " (relay memory)"
        } else {
            ""
        };
        print(&format!(
            "{:<5} {:<34} {:<10} {:>10} {:>10} {:>13}{memory}",
            r.from,
            escape_control(&r.id),
            r.precedence,
            fmt(r.accepted_ms),
            fmt(r.delivered_ms),
            fmt(r.acknowledged_ms),
        ));
    }
    // SIGTERM to all first, so they shut down together; then reap each.
    for p in &procs {
        p.terminate();
    }
    for p in &mut procs {
        p.stop();
    }
    if keep {
        let kept: PathBuf = tmp.keep();
        print(&format!("\nkept {}", kept.display()));
    }
    print("\ndemo finished: every process stopped");
    Ok(())
}

async fn wait_link_up(name: &str, sock: &Path, procs: &mut [Process]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for p in procs.iter_mut() {
            if let Some(status) = p.exited() {
                bail!(
                    "{} exited early ({status}); see its log {}",
                    p.name(),
                    p.log_path().display()
                );
            }
        }
        if let Ok(s) = status(sock).await {
            if s.link == "up" {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("{name} did not report the link up within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn status(sock: &Path) -> Result<StatusView> {
    let mut c = ControlClient::connect(sock).await?;
    for e in c.call(Request::Status).await? {
        if let Event::Status(s) = e {
            return Ok(*s);
        }
    }
    bail!("no status from node")
}

async fn exchange(
    from: &str,
    sender: &Path,
    receiver: &Path,
    precedence: Precedence,
    body: &str,
    ack: bool,
) -> Result<TimelineRow> {
    let mut c = ControlClient::connect(sender).await?;
    let started = Instant::now();
    let tag = c
        .request(Request::Send {
            to: None,
            channel: None,
            precedence: Some(precedence),
            body: body.into(),
            wait: Some(if ack {
                WaitLevel::Acknowledged
            } else {
                WaitLevel::Delivered
            }),
            timeout_ms: Some(30_000),
        })
        .await?;
    let mut row = TimelineRow {
        from: from.into(),
        id: String::new(),
        precedence: precedence.to_string(),
        body: body.into(),
        accepted_ms: None,
        delivered_ms: None,
        acknowledged_ms: None,
        accepted_label: String::new(),
    };
    let mut acked = false;
    let mut events = c.events_for(tag);
    while let Some(event) = events.next().await.context("send failed")? {
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        match event {
            Event::Stored { id, .. } => row.id = id,
            Event::Level { level, .. } if level.starts_with("accepted") => {
                row.accepted_ms = Some(ms);
                row.accepted_label = level;
            }
            Event::Level { level, .. } if level == "delivered" => {
                row.delivered_ms = Some(ms);
                if ack && !acked {
                    acked = true;
                    let id: MessageId = row.id.parse().context("message id from the node")?;
                    let mut r = ControlClient::connect(receiver).await?;
                    r.call(Request::Ack { id }).await?;
                }
            }
            Event::Level { level, .. } if level == "acknowledged" => row.acknowledged_ms = Some(ms),
            _ => {}
        }
    }
    Ok(row)
}

async fn wait_escalation(sock: &Path) -> Result<crate::control::EscalationView> {
    let deadline = Instant::now() + Duration::from_millis(DEMO_FLASH_ACK_MS * 3);
    loop {
        let s = status(sock).await?;
        if let Some(e) = s.open_escalations.into_iter().next() {
            return Ok(e);
        }
        if Instant::now() > deadline {
            bail!("no escalation appeared");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
