//! The hub side of the QUIC link (`[quic] listen`): lower gateways connect with a
//! certificate from the tier's CA, introduce themselves, and send their outbox in batches.
//! Each lower gateway is a device of the hub (protocol `quic`, kind `platform`): its link
//! being up is its presence. A batch's pictures are checked against their names and
//! stored, its events committed into the hub's own outbox (deduplicated by event id: a batch
//! sent again after a lost answer adds nothing), and only then answered, so the records flow
//! on to the hub's upstreams and nothing acknowledged can be lost.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn, Instrument};

use super::{
    read_frame, read_message, write_message, BatchAnswer, BatchHead, Hello, HelloAnswer, MAX_BATCH_MEDIA, MAX_MESSAGE,
};
use crate::clock::now_ms;
use crate::event::{Event, Evidence, Observation};
use crate::images::ImageStore;
use crate::registry::{Admission, DeviceKind, NewDevice, Protocol};
use crate::sources::Shared;

/// How often a live link renews its gateway's presence, and how long a renewal lasts.
const HEARTBEAT: Duration = Duration::from_secs(10);
const HEARTBEAT_VALID_MS: i64 = 35_000;
/// The hello must come this soon after the handshake.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Application close codes.
const CLOSE_BYE: u32 = 0;
const CLOSE_REFUSED: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Tls(#[from] super::tls::Error),
    #[error("cannot listen for QUIC links on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
}

impl Error {
    pub fn kind(&self) -> crate::error::ErrorKind {
        match self {
            Error::Tls(_) => crate::error::ErrorKind::InvalidInput,
            Error::Bind { .. } => crate::error::ErrorKind::Unavailable,
        }
    }
}

struct Hub {
    shared: Shared,
    media: ImageStore,
    hub_id: String,
}

/// Starts the hub on `listen`; answers the bound address.
pub fn spawn(
    listen: &str,
    identity: super::tls::Identity,
    hub_id: String,
    shared: Shared,
    media: ImageStore,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> Result<SocketAddr, Error> {
    let addr: SocketAddr = listen
        .parse()
        .map_err(|e| Error::Bind { addr: listen.into(), source: std::io::Error::other(format!("{e}")) })?;
    let config = super::tls::server_config(identity)?;
    let endpoint =
        quinn::Endpoint::server(config, addr).map_err(|source| Error::Bind { addr: listen.into(), source })?;
    let bound = endpoint.local_addr().map_err(|source| Error::Bind { addr: listen.into(), source })?;
    let hub = Arc::new(Hub { shared, media, hub_id });
    let conns = tracker.clone();
    tracker.spawn(
        async move {
            loop {
                let incoming = tokio::select! {
                    i = endpoint.accept() => i,
                    _ = cancel.cancelled() => break,
                };
                let Some(incoming) = incoming else { break };
                let hub = hub.clone();
                let cancel = cancel.clone();
                conns.spawn(async move {
                    let peer = incoming.remote_address();
                    match incoming.await {
                        Ok(conn) => serve(hub, conn, cancel).await,
                        Err(e) => warn!(%peer, error = %e, "QUIC link handshake failed (certificate not from the tier's CA?)."),
                    }
                });
            }
            endpoint.close(quinn::VarInt::from_u32(CLOSE_BYE), b"hub stopping");
            // Lets the peers learn of the close before the socket goes.
            let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
            info!("QUIC hub stopped.");
        }
        .instrument(tracing::info_span!("quic_hub")),
    );
    Ok(bound)
}

/// One lower gateway's connection: hello, then batches until it closes.
async fn serve(hub: Arc<Hub>, conn: quinn::Connection, cancel: CancellationToken) {
    let peer = conn.remote_address();
    let gateway = match tokio::time::timeout(HELLO_TIMEOUT, hello(&hub, &conn)).await {
        Ok(Ok(g)) => g,
        Ok(Err(why)) => {
            warn!(%peer, reason = %why, "QUIC link refused.");
            conn.close(quinn::VarInt::from_u32(CLOSE_REFUSED), why.to_string().as_bytes());
            return;
        }
        Err(_) => {
            conn.close(quinn::VarInt::from_u32(CLOSE_REFUSED), b"no hello");
            return;
        }
    };
    let (key, id) = gateway;
    info!(gateway = %id, %peer, "Lower gateway linked.");
    let observe = |evidence, detail: Option<Arc<str>>| {
        let presence = hub.shared.presence.clone();
        async move {
            let _ = presence.observe(Observation { device: key, at: now_ms(), evidence, detail }).await;
        }
    };
    observe(Evidence::LinkHeartbeat { timeout_ms: HEARTBEAT_VALID_MS }, None).await;
    let mut beat = tokio::time::interval(HEARTBEAT);
    beat.tick().await;
    let why: String = loop {
        tokio::select! {
            s = conn.accept_bi() => match s {
                Ok((send, recv)) => {
                    let hub = hub.clone();
                    let id = id.clone();
                    tokio::spawn(async move { batch(&hub, &id, send, recv).await });
                }
                Err(e) => break e.to_string(),
            },
            _ = beat.tick() => observe(Evidence::LinkHeartbeat { timeout_ms: HEARTBEAT_VALID_MS }, None).await,
            _ = cancel.cancelled() => {
                conn.close(quinn::VarInt::from_u32(CLOSE_BYE), b"hub stopping");
                break "hub stopping".into();
            }
        }
    };
    info!(gateway = %id, reason = %why, "Lower gateway's link closed.");
    observe(Evidence::Dead, Some(Arc::from(format!("QUIC link closed: {why}")))).await;
}

/// Why a lower gateway's hello was refused (the reason goes back to it in the answer).
#[derive(Debug, thiserror::Error)]
enum HelloError {
    #[error("the hello did not arrive whole: {0}")]
    Stream(String),
    #[error(transparent)]
    Message(#[from] super::Error),
    #[error("link version {0} is not spoken here (this hub speaks {v})", v = super::VERSION)]
    Version(u32),
    #[error("the certificate names no gateway")]
    Unnamed,
    #[error("gateway id {claimed} is not the one the certificate was issued for ({cn})")]
    NotCertified { claimed: String, cn: String },
    #[error("cannot add the gateway: {0}")]
    Registry(String),
    #[error("an operator rejected or disabled this gateway")]
    Refused,
}

/// Why a batch was not taken (it stays in the lower gateway's outbox and comes again).
#[derive(Debug, thiserror::Error)]
enum BatchError {
    #[error(transparent)]
    Message(#[from] super::Error),
    #[error("batch head: {0}")]
    Head(serde_json::Error),
    #[error("batch carries {0} bytes of pictures, over the {MAX_BATCH_MEDIA}-byte limit")]
    TooMuchMedia(u64),
    #[error("picture {hash}: {source}")]
    Picture { hash: String, source: super::Error },
    #[error("cannot store a picture: {0}")]
    Store(crate::images::Error),
    #[error("cannot commit the events: {0}")]
    Commit(crate::events::Error),
}

/// The hello: the gateway id it claims must be the one its certificate was issued for. A
/// gateway new to the hub is added as approved (the tier's CA issuing it a certificate is
/// the operator's approval); one an operator rejected or disabled is refused.
async fn hello(hub: &Hub, conn: &quinn::Connection) -> Result<(crate::registry::DeviceKey, String), HelloError> {
    let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| HelloError::Stream(e.to_string()))?;
    let hello: Hello = read_message(&mut recv, 64 << 10).await?;
    let refuse = |reason: String| HelloAnswer {
        v: super::VERSION,
        hub_id: hub.hub_id.clone(),
        accepted: false,
        reason: Some(reason),
    };
    let verdict: Result<(crate::registry::DeviceKey, String), HelloError> = async {
        if hello.v != super::VERSION {
            return Err(HelloError::Version(hello.v));
        }
        let cn = super::tls::peer_common_name(conn).ok_or(HelloError::Unnamed)?;
        if cn != hello.gateway_id {
            return Err(HelloError::NotCertified { claimed: hello.gateway_id.clone(), cn });
        }
        let registry = &hub.shared.registry;
        let known = registry.read().device(&hello.gateway_id);
        let device = match known {
            Some(d) => d,
            None => {
                let mut attrs = serde_json::Map::new();
                attrs.insert("source".into(), "quic".into());
                attrs.insert("ip".into(), conn.remote_address().ip().to_string().into());
                let new = NewDevice {
                    id: hello.gateway_id.clone(),
                    name: if hello.name.is_empty() { hello.gateway_id.clone() } else { hello.name.clone() },
                    kind: DeviceKind::Platform,
                    protocol: Protocol::Quic,
                    org_id: None,
                    profile: None,
                    rtsp_url: None,
                    password: None,
                    admission: Admission::Approved,
                    attrs,
                };
                let new = registry.prepare_device(new).map_err(|e| HelloError::Registry(e.to_string()))?;
                let (mut written, _) = registry
                    .upsert_devices(vec![new], |_| {})
                    .await
                    .map_err(|e| HelloError::Registry(e.to_string()))?;
                let d = written.pop().ok_or_else(|| HelloError::Registry("the gateway was not added".into()))?;
                info!(gateway = %d.id, "New lower gateway added from its link.");
                let _ = hub.shared.presence.track(vec![(d.key, Arc::from(d.id.as_str()), d.protocol.as_str())]).await;
                d
            }
        };
        if device.admission == Admission::Rejected || !device.enabled {
            return Err(HelloError::Refused);
        }
        Ok((device.key, device.id.clone()))
    }
    .await;
    let answer = match &verdict {
        Ok(_) => HelloAnswer { v: super::VERSION, hub_id: hub.hub_id.clone(), accepted: true, reason: None },
        Err(why) => refuse(why.to_string()),
    };
    write_message(&mut send, &answer).await?;
    let _ = send.finish();
    if verdict.is_err() {
        // Give the answer time to reach the peer before the connection is closed.
        let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
    }
    verdict
}

/// One batch stream: read it (bounded), store its pictures, commit its events, answer.
async fn batch(hub: &Hub, gateway: &str, mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let answer = match receive(hub, gateway, &mut recv).await {
        Ok(a) => a,
        Err(e) => BatchAnswer { results: Vec::new(), error: Some(e.to_string()) },
    };
    if let Some(e) = &answer.error {
        warn!(gateway, error = %e, "A batch from a lower gateway was not taken; it will be sent again.");
    }
    if write_message(&mut send, &answer).await.is_ok() {
        let _ = send.finish();
    }
}

async fn receive(hub: &Hub, gateway: &str, recv: &mut quinn::RecvStream) -> Result<BatchAnswer, BatchError> {
    let head_bytes = read_frame(recv, MAX_MESSAGE).await?;
    let head: BatchHead = serde_json::from_slice(&head_bytes).map_err(BatchError::Head)?;
    let media_total: u64 = head.pictures.iter().map(|p| p.len).sum();
    if media_total > MAX_BATCH_MEDIA {
        return Err(BatchError::TooMuchMedia(media_total));
    }
    // Pictures first: an event is committed only once what it refers to is stored. Nothing is
    // written while the outbox is closed (full disk or backlog): the batch waits here.
    hub.shared.events.accepting().await;
    let mut bad_pictures = std::collections::HashSet::new();
    let mut puts = Vec::new();
    for p in &head.pictures {
        let len = usize::try_from(p.len).map_err(|_| BatchError::TooMuchMedia(p.len))?;
        let bytes = super::read_exactly(recv, len)
            .await
            .map_err(|source| BatchError::Picture { hash: p.hash.clone(), source })?;
        if crate::protocol::digest::sha256_hex(&bytes) != p.hash {
            bad_pictures.insert(p.hash.clone());
            continue;
        }
        if !crate::images::is_picture(&bytes) {
            bad_pictures.insert(p.hash.clone());
            continue;
        }
        puts.push(hub.media.put(bytes));
    }
    for r in futures_util::future::join_all(puts).await {
        r.map_err(BatchError::Store)?;
    }
    let mut results: Vec<Option<String>> = vec![None; head.events.len()];
    let mut rows = Vec::with_capacity(head.events.len());
    for (i, item) in head.events.iter().enumerate() {
        match serde_json::from_str::<Event>(item.event.get()) {
            Ok(e) if e.id.is_empty() || e.dedup_key.is_empty() => {
                results[i] = Some("event without id or dedup_key".into());
            }
            Ok(e) => {
                if let Some(m) = e.media.iter().find(|m| bad_pictures.contains(&m.hash)) {
                    results[i] = Some(format!("picture {} does not match its name or is not a JPEG or PNG", m.hash));
                    continue;
                }
                rows.push((e, item.object_id.clone()));
            }
            Err(e) => results[i] = Some(format!("event not readable: {e}")),
        }
    }
    let refused = results.iter().filter(|r| r.is_some()).count();
    if refused > 0 {
        hub.shared.rejections.record(
            now_ms(),
            "quic",
            "bad_event",
            gateway.to_owned(),
            format!(
                "{refused} event(s) of a batch refused: {}",
                results.iter().flatten().next().cloned().unwrap_or_default()
            ),
            &head_bytes[..head_bytes.len().min(4096)],
        );
    }
    hub.shared.events.submit_many(rows).await.map_err(BatchError::Commit)?;
    Ok(BatchAnswer { results, error: None })
}
