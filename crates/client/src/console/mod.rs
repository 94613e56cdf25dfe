//! `hotline console`: the operator's terminal UI on a node's control socket.
//!
//! The people on duty need, at a glance, what arrived, what waits for their acknowledgement and
//! how long they have, whether the link is up and what went wrong, and to acknowledge with one
//! key. This module is that screen, split the sans-IO way:
//! - [`app`]: the state and what each key does ([`App`], [`Update`], [`Effect`]), pure;
//! - [`ui`]: drawing an [`App`] at a given time with ratatui (tested on `TestBackend`);
//! - [`feed`]: the node connection (control socket, re-made when the node restarts);
//! - [`run`] (here): the terminal, the key-reading thread and the loop between them.

pub mod app;
pub mod feed;
pub mod ui;

#[cfg(test)]
mod tests;

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use hotline_proto::Precedence;
use ratatui::crossterm::event::{self, Event as TermEvent, KeyEventKind};
use tokio::sync::mpsc;

pub use app::{App, BellPolicy, Effect, Update};

use crate::config::NodeFile;
use crate::time::wall_now;

/// How often the screen is redrawn when nothing happens (the clock and countdowns move).
const REDRAW: Duration = Duration::from_millis(250);

/// Runs the console for the node configured at `config` until the operator quits.
pub async fn run(config: &Path, bell: BellPolicy) -> Result<()> {
    let file = NodeFile::read(config)?;
    let engine = file
        .engine_config()
        .with_context(|| format!("config {}", config.display()))?;
    let deadlines = Precedence::ALL.map(|p| engine.acknowledged_deadline(p));
    let socket = file.control_socket();

    let (update_tx, mut updates) = mpsc::unbounded_channel();
    let (effect_tx, effects) = mpsc::unbounded_channel();
    let feed = tokio::spawn(feed::run(socket, update_tx, effects));
    let (key_tx, mut keys) = mpsc::unbounded_channel();
    // crossterm's reader blocks; it lives on its own thread and stops when the loop is gone.
    std::thread::spawn(move || {
        loop {
            match event::poll(Duration::from_millis(100)) {
                Ok(true) => match event::read() {
                    Ok(ev) => {
                        if key_tx.send(ev).is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                },
                Ok(false) if key_tx.is_closed() => return,
                Ok(false) => {}
                Err(_) => return,
            }
        }
    });

    let mut terminal = ratatui::try_init().context("setting up the terminal")?;
    let mut app = App::new(wall_now(), deadlines, bell);
    let mut redraw = tokio::time::interval(REDRAW);
    let result: Result<()> = loop {
        tokio::select! {
            Some(ev) = keys.recv() => {
                if let TermEvent::Key(k) = ev {
                    if k.kind != KeyEventKind::Release {
                        let mut quit = false;
                        for effect in app.key(k) {
                            if effect == Effect::Quit {
                                quit = true;
                            } else {
                                let _ = effect_tx.send(effect);
                            }
                        }
                        if quit {
                            break Ok(());
                        }
                    }
                }
            }
            Some(u) = updates.recv() => app.apply(u),
            _ = redraw.tick() => {}
        }
        let now = wall_now();
        app.tick(now);
        if app.take_bell() {
            let mut out = std::io::stdout();
            let _ = out.write_all(b"\x07").and_then(|()| out.flush());
        }
        if let Err(e) = terminal.draw(|f| ui::draw(f, &app, now)) {
            break Err(e).context("drawing the console");
        }
    };
    ratatui::try_restore().context("restoring the terminal")?;
    drop(effect_tx);
    feed.abort();
    result
}
