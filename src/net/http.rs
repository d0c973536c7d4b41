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
use tracing::debug;

use super::{Acceptor, ConnCap};

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
    let mut acceptor = Acceptor::new(listener, how.cap.clone());
    while let Some((stream, peer, slot)) = acceptor.next(&cancel).await {
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
