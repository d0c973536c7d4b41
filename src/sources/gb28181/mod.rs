//! The GB/T 28181 source: SIP over UDP on `gb28181.listen`. Devices REGISTER with digest
//! (MD5, qop=auth) and keep alive with MANSCDP `Notify/Keepalive`; registration and
//! keepalive become two separate pieces of evidence for presence. Unknown devices follow
//! `admission.policy`. Reads datagrams, writes observations to presence and admissions to
//! the registry; never touches the database or another module's tables.
//!
//! Done so far: UDP transport, parsing, retransmission absorption, registration with digest,
//! un-REGISTER, keepalive. Next: TCP framing, MANSCDP catalog/info/status/alarm, queries
//! vigil sends, the simulator (see the GB/T 28181 issue).

pub mod digest;
pub mod manscdp;
pub mod message;
mod server;

use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::Gb28181 as Gb28181Config;
use crate::presence::runner::PresenceHandle;
use crate::registry::Registry;
use crate::telemetry::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen for SIP on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

impl Error {
    pub fn kind(&self) -> crate::error::ErrorKind {
        crate::error::ErrorKind::Unavailable
    }
}

/// Binds the SIP socket and starts the source; returns the bound address.
pub async fn spawn(
    cfg: Gb28181Config,
    registry: Registry,
    presence: PresenceHandle,
    metrics: Metrics,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> Result<SocketAddr, Error> {
    let socket =
        tokio::net::UdpSocket::bind(cfg.listen).await.map_err(|source| Error::Bind { addr: cfg.listen, source })?;
    let addr = socket.local_addr().map_err(|source| Error::Bind { addr: cfg.listen, source })?;
    let server = server::Server::new(cfg, registry, presence, metrics);
    tracker.spawn(server.run_udp(socket, cancel).instrument(tracing::info_span!("gb28181", listen = %addr)));
    Ok(addr)
}
