//! What every listener shares at the connection level, below any protocol: the process's
//! file-descriptor budget and how it is split between the listeners (`fds`), connection caps
//! in total and per source address (`cap`), the per-address limit on failed authentication
//! and the summarising of log floods (`guard`), the HTTP accept loop with a deadline for
//! request headers that the API and the GA/T 1400 port run on (`http`), and the API's
//! optional built-in TLS (`tls`), messages cut off a byte stream by a framing rule the
//! protocol gives (`frames`), and the local address a peer can reach vigil at
//! (`route_to`). No protocol knowledge; nothing here imports a source, a
//! sink or the API.

pub mod accept;
pub mod cap;
pub mod fds;
pub mod frames;
pub mod guard;
pub mod http;
pub mod tls;

pub use accept::Acceptor;
pub use cap::{ConnCap, Refused, Slot};
pub use fds::Budget;
pub use guard::{FailureLimit, Hush, SharedHush};

/// The local address of the route to `peer`: what a device or an upper platform can reach
/// vigil at when vigil listens on all addresses (for SDP `c=`, Via and Contact).
pub async fn route_to(peer: std::net::SocketAddr) -> Option<std::net::IpAddr> {
    let any: std::net::SocketAddr =
        if peer.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() };
    let s = tokio::net::UdpSocket::bind(any).await.ok()?;
    s.connect(peer).await.ok()?;
    s.local_addr().ok().map(|a| a.ip())
}
