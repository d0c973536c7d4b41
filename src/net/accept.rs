//! The accept loop every TCP listener of vigil shares: the next connection that fits its
//! listener's `ConnCap`, with its place. A failed accept (EMFILE and friends: the connection
//! stays in the kernel's backlog) is retried shortly; a connection past the cap is closed at
//! once. Both are counted by the cap and written to the log at most once per 10 s with the
//! number held back, so a flood cannot flood the log.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{ConnCap, Hush, Slot};
use crate::clock::now_ms;

/// A listener under its cap.
pub struct Acceptor {
    listener: TcpListener,
    cap: ConnCap,
    errors: Hush,
    refusals: Hush,
}

impl Acceptor {
    pub fn new(listener: TcpListener, cap: ConnCap) -> Acceptor {
        Acceptor { listener, cap, errors: Hush::new(10_000), refusals: Hush::new(10_000) }
    }

    /// The next connection with its place under the cap; `None` once `cancel` fires.
    pub async fn next(&mut self, cancel: &CancellationToken) -> Option<(TcpStream, SocketAddr, Slot)> {
        loop {
            let accepted = tokio::select! {
                biased;
                _ = cancel.cancelled() => return None,
                r = self.listener.accept() => r,
            };
            let (stream, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    if let Some(held) = self.errors.tick(now_ms()) {
                        warn!(listener = self.cap.listener(), error = %e, held_back = held, "Accept failed; trying again.");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            match self.cap.try_take(peer.ip()) {
                Ok(slot) => {
                    let _ = stream.set_nodelay(true);
                    return Some((stream, peer, slot));
                }
                Err(why) => {
                    if let Some(held) = self.refusals.tick(now_ms()) {
                        warn!(
                            listener = self.cap.listener(), %peer, reason = why.as_str(), cap = self.cap.total(),
                            per_address = self.cap.per_address(), held_back = held,
                            "Connection refused: the listener's share of descriptors is taken."
                        );
                    }
                }
            }
        }
    }
}
