//! The API's start: the listener (plain or TLS), its share of the descriptors and header
//! deadline, and the router over the state every handler reads.

use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Error;
use crate::api::{self, AppState};
use crate::config::Config;
use crate::net::{Budget, ConnCap};

/// A serving API: its address, the task, and the token that stops it.
pub struct Api {
    pub addr: SocketAddr,
    pub task: tokio::task::JoinHandle<()>,
    pub stop: CancellationToken,
}

/// Binds `http.listen` and serves the API on it.
pub async fn spawn_api(config: &Config, state: AppState, fds: &Budget) -> Result<Api, Error> {
    if config.http.tokens.is_empty() {
        warn!(listen = %config.http.listen, "No API tokens configured: the API is open to anyone who can reach this loopback address.");
    }
    let listen = config.http.listen;
    let listener =
        tokio::net::TcpListener::bind(listen).await.map_err(|source| Error::Bind { addr: listen, source })?;
    let addr = listener.local_addr().map_err(|source| Error::Bind { addr: listen, source })?;
    let tls = if config.http.tls_cert.is_empty() {
        None
    } else {
        let cfg = crate::net::tls::server_config(
            std::path::Path::new(&config.http.tls_cert),
            std::path::Path::new(&config.http.tls_key),
        )
        .map_err(|e| Error::Config(format!("http.tls_cert: {e}")))?;
        Some(cfg)
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let serve = crate::net::http::Serve {
        cap: ConnCap::new("http", fds.http, Budget::per_address(fds.http, 8, 64), Some(&state.metrics)),
        header_deadline: config.http.header_deadline,
        tls,
    };
    let stop = CancellationToken::new();
    let task = tokio::spawn(crate::net::http::serve(listener, api::router(state), serve, stop.clone()));
    info!(http = %addr, "vigil is running; dashboard at {scheme}://{addr}/");
    Ok(Api { addr, task, stop })
}
