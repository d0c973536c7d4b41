//! The GA/T 1400 source: vigil as a view library (视图库) for checkpoint cameras on its own
//! port (`[gat1400] listen`). Devices register with HTTP digest
//! (`/VIID/System/Register`), keep alive, unregister and ask the time; they push faces,
//! motor vehicles, persons, non-motor vehicles and APEs as list objects, which the device
//! profile for the path maps (`gat1400.face`, `gat1400.motor-vehicle`, ...). Each object gets
//! its own StatusCode in the `ResponseStatusListObject`: good objects are kept even when
//! others in the same request are refused. A registration lasts `validity` (3 × the usual
//! 60 s keepalive) and any request renews it; that is what presence sees. The codec
//! (`protocol::gat1400::codec`) is shared with the upstream sink; who may speak is `guard.rs`.

mod guard;
mod server;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn, Instrument};

use super::ingest::Ingest;
use crate::profiles::ProfileSet;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen for GA/T 1400 on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

impl Error {
    pub fn kind(&self) -> crate::error::ErrorKind {
        match self {
            Error::Bind { .. } => crate::error::ErrorKind::Unavailable,
        }
    }
}

/// A subscription-mode upstream with the addresses its host resolved to at start.
#[derive(Debug, Clone)]
pub struct Upper {
    pub target: String,
    pub server_id: String,
    pub host: String,
    pub password: String,
    pub addresses: Vec<IpAddr>,
}

impl Upper {
    async fn resolve(u: crate::outbox::subscriptions::Upper) -> Upper {
        let addresses: Vec<IpAddr> = match u.host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => match tokio::net::lookup_host((u.host.as_str(), 0)).await {
                Ok(found) => found.map(|a| a.ip()).collect(),
                Err(e) => {
                    warn!(upstream = %u.target, host = %u.host, error = %e, "Cannot resolve the upper view library's host: its subscription requests will be refused until a restart.");
                    Vec::new()
                }
            },
        };
        Upper { target: u.target, server_id: u.server_id, host: u.host, password: u.password, addresses }
    }
}

/// How long a registration lasts without a request (3 × the 60 s keepalive devices use).
pub const VALIDITY_MS: i64 = 180_000;

/// Binds the listener and starts serving; answers the bound address.
#[allow(clippy::too_many_arguments)]
pub async fn spawn(
    cfg: &crate::config::Gat1400,
    gateway_id: String,
    uppers: Vec<crate::outbox::subscriptions::Upper>,
    tz: chrono_tz::Tz,
    profiles: Arc<ProfileSet>,
    ingest: Ingest,
    serve: crate::net::http::Serve,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> Result<SocketAddr, Error> {
    let max_body = usize::try_from(cfg.max_body.as_u64()).unwrap_or(usize::MAX);
    let listener =
        tokio::net::TcpListener::bind(cfg.listen).await.map_err(|source| Error::Bind { addr: cfg.listen, source })?;
    let addr = listener.local_addr().map_err(|source| Error::Bind { addr: cfg.listen, source })?;
    let mut resolved = Vec::with_capacity(uppers.len());
    for u in uppers {
        resolved.push(Upper::resolve(u).await);
    }
    let ctx = server::Ctx::new(cfg, max_body, gateway_id, resolved, tz, profiles, ingest);
    let app = server::router(ctx);
    tracker.spawn(crate::net::http::serve(listener, app, serve, cancel).instrument(tracing::info_span!("gat1400")));
    info!(listen = %addr, "GA/T 1400 checkpoints register at http://{addr}/VIID/System/Register.");
    Ok(addr)
}
