//! The GA/T 1400 source: vigil as a view library (视图库) for checkpoint cameras on its own
//! port (`[gat1400] listen`). Devices register with HTTP digest
//! (`/VIID/System/Register`), keep alive, unregister and ask the time; they push faces,
//! motor vehicles, persons, non-motor vehicles and APEs as list objects, which the device
//! profile for the path maps (`gat1400.face`, `gat1400.motor-vehicle`, ...). Each object gets
//! its own StatusCode in the `ResponseStatusListObject`: good objects are kept even when
//! others in the same request are refused. A registration lasts `validity` (3 × the usual
//! 60 s keepalive) and any request renews it; that is what presence sees. The codec
//! (`codec.rs`) is shared with the upstream sink.

pub mod codec;
mod server;

use std::net::SocketAddr;
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
    #[error("gat1400.max_body: {0}")]
    Config(String),
}

impl Error {
    pub fn kind(&self) -> crate::error::ErrorKind {
        match self {
            Error::Bind { .. } => crate::error::ErrorKind::Unavailable,
            Error::Config(_) => crate::error::ErrorKind::InvalidInput,
        }
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
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> Result<SocketAddr, Error> {
    let max_body = crate::config::parse_bytes(&cfg.max_body).map_err(Error::Config)? as usize;
    let listener =
        tokio::net::TcpListener::bind(cfg.listen).await.map_err(|source| Error::Bind { addr: cfg.listen, source })?;
    let addr = listener.local_addr().map_err(|source| Error::Bind { addr: cfg.listen, source })?;
    let ctx = server::Ctx::new(cfg, gateway_id, uppers, tz, profiles, ingest);
    let app = server::router(ctx, max_body);
    tracker.spawn(
        async move {
            let served = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
                .with_graceful_shutdown(async move { cancel.cancelled().await })
                .await;
            if let Err(e) = served {
                warn!(error = %e, "GA/T 1400 endpoint stopped with an error.");
            }
        }
        .instrument(tracing::info_span!("gat1400")),
    );
    info!(listen = %addr, "GA/T 1400 checkpoints register at http://{addr}/VIID/System/Register.");
    Ok(addr)
}
