//! The binary's side of a reload: re-read `relay.toml` exactly as at startup, apply it to the
//! running [`Server`], and answer the admin socket. Part of the `hotline-relay` binary only.

use std::path::Path;

use hotline_relay::Server;
use hotline_relay::admin::{AdminReply, AdminRequest, AdminStatus};
use tracing::{info, warn};

use crate::relay_file::load;

/// Re-reads `path` and applies it; the one-line summary, or why the old configuration stays.
pub(crate) fn reload(server: &mut Server, path: &Path) -> anyhow::Result<String> {
    let config = load(path)?;
    let report = server.reload(&config)?;
    Ok(report.to_string())
}

/// [`reload`], logged in one line (for SIGHUP).
pub(crate) fn reload_logged(server: &mut Server, path: &Path) {
    match reload(server, path) {
        Ok(summary) => info!(%summary, "reloaded"),
        Err(e) => warn!(
            error = %format!("{e:#}"),
            "reload refused; the old configuration stays in force"
        ),
    }
}

/// The answer to one admin socket request.
pub(crate) fn answer(server: &mut Server, path: &Path, request: AdminRequest) -> AdminReply {
    match request {
        AdminRequest::Reload => match reload(server, path) {
            Ok(summary) => {
                info!(%summary, "reloaded (admin socket)");
                AdminReply::Reloaded { summary }
            }
            Err(e) => {
                let error = format!("{e:#}");
                warn!(%error, "reload refused; the old configuration stays in force");
                AdminReply::Error { error }
            }
        },
        AdminRequest::Status => {
            let status = server.connections();
            AdminReply::Status(AdminStatus {
                config: path.to_owned(),
                hotlines: status.hotlines,
                endpoints: status.endpoints,
                connected: status.connected,
            })
        }
    }
}
