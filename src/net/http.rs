//! The HTTP accept loop the API and the GA/T 1400 port run on (instead of `axum::serve`, which
//! has neither a connection cap nor a deadline for request headers): each connection takes a
//! place under its listener's `ConnCap` or is closed at once; request headers (and the wait
//! for the next request on a kept-alive connection) must arrive within `header_deadline`;
//! handlers see the peer as `ConnectInfo<SocketAddr>`. On cancel it stops accepting, lets
//! requests in flight finish, and returns when every connection has closed.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::{debug, warn};

use super::{ConnCap, Hush};
use crate::clock::now_ms;

/// How an HTTP listener is run.
#[derive(Debug, Clone)]
pub struct Serve {
    pub cap: ConnCap,
    /// Headers of a request, and the next request on an idle kept-alive connection, must come
    /// within this (the TLS handshake too, where there is one).
    pub header_deadline: Duration,
    /// Serve HTTPS with this configuration.
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
}

/// Serves `router` on `listener` until `cancel`.
pub async fn serve(listener: TcpListener, router: Router, how: Serve, cancel: CancellationToken) {
    let conns = TaskTracker::new();
    let mut accept_errors = Hush::new(10_000);
    let mut refusals = Hush::new(10_000);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: the connection stays in the backlog; try again shortly.
                if let Some(held) = accept_errors.tick(now_ms()) {
                    warn!(listener = how.cap.listener(), error = %e, held_back = held, "HTTP accept failed.");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let slot = match how.cap.try_take(peer.ip()) {
            Ok(s) => s,
            Err(why) => {
                if let Some(held) = refusals.tick(now_ms()) {
                    warn!(
                        listener = how.cap.listener(), %peer, reason = why.as_str(), cap = how.cap.total(),
                        per_address = how.cap.per_address(), held_back = held,
                        "Connection refused: the listener's share of descriptors is taken."
                    );
                }
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let cancel = cancel.clone();
        let deadline = how.header_deadline;
        let tls = how.tls.clone();
        conns.spawn(async move {
            match tls {
                None => connection(TokioIo::new(stream), peer, router, deadline, cancel).await,
                Some(cfg) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
                    match tokio::time::timeout(deadline, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => connection(TokioIo::new(s), peer, router, deadline, cancel).await,
                        Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed."),
                        Err(_) => debug!(%peer, "TLS handshake did not finish within the header deadline."),
                    }
                }
            }
            drop(slot);
        });
    }
    conns.close();
    conns.wait().await;
}

/// Serves one connection (plain or TLS) until it ends or `cancel`.
async fn connection<I>(io: I, peer: std::net::SocketAddr, router: Router, deadline: Duration, cancel: CancellationToken)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let router = router.clone();
        async move {
            let r: Result<axum::response::Response, Infallible> = router.oneshot(req.map(axum::body::Body::new)).await;
            r
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(deadline).keep_alive(true);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let served = tokio::select! {
        r = conn.as_mut() => r,
        _ = cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = served {
        debug!(%peer, error = %e, "HTTP connection ended with an error.");
    }
}
