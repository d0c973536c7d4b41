//! The lower side of the QUIC link: an outbox sink that sends batches to the hub. It
//! connects (mutual TLS, no 0-RTT), says hello, and sends each batch on a stream of its own
//! with the pictures its events refer to; a record is delivered when the hub's answer says
//! it is committed there, refused for good when the hub says why, and otherwise stays in the
//! outbox. A lost connection is found on the next call and made again with backoff.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;
use tracing::info;

use super::{read_message, write_message, BatchAnswer, BatchHead, Hello, HelloAnswer, Item, Picture, MAX_BATCH_MEDIA};
use crate::backoff::backoff;
use crate::images::ImageStore;
use crate::outbox::runner::{Delivery, FailureKind, Sink, SinkError};
use crate::outbox::store::Claimed;

/// How long a batch may take from open to the hub's answer (its commit included).
const BATCH_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const RECONNECT_MIN: Duration = Duration::from_secs(1);
const RECONNECT_MAX: Duration = Duration::from_secs(60);
/// Records per claim: a batch is one stream and one commit at the hub, whose writer gains
/// from larger commits (BENCHMARKS.md, relay; 1,024 before 4cceba4).
const BATCH: i64 = 4096;
/// Record bytes per stream, well under the hub's `MAX_MESSAGE` for the batch head.
const MAX_BATCH_RECORDS_BYTES: usize = super::MAX_MESSAGE / 2;

pub struct Link {
    endpoint: quinn::Endpoint,
    /// `host:port` of the hub, resolved on each connect.
    target: String,
    server_name: String,
    gateway_id: String,
    gateway_name: String,
    media: ImageStore,
    conn: Option<quinn::Connection>,
    failures: u32,
    retry_at: Instant,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("upstream url {0:?}: expected quic://host:port")]
    Url(String),
    #[error(transparent)]
    Tls(#[from] super::tls::Error),
    #[error("cannot open a UDP socket for the link: {0}")]
    Socket(std::io::Error),
}

impl Link {
    /// A link to the hub at `url` (`quic://host:port`); `server_name` is the name the hub's
    /// certificate is checked for (default: the URL's host).
    pub fn new(
        url: &str,
        server_name: &str,
        identity: super::tls::Identity,
        gateway_id: &str,
        gateway_name: &str,
        media: ImageStore,
    ) -> Result<Link, Error> {
        let parsed = url::Url::parse(url).map_err(|_| Error::Url(url.into()))?;
        if parsed.scheme() != "quic" {
            return Err(Error::Url(url.into()));
        }
        let (Some(host), Some(port)) = (parsed.host_str(), parsed.port()) else {
            return Err(Error::Url(url.into()));
        };
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let bind: SocketAddr =
            if host.contains(':') { "[::]:0" } else { "0.0.0.0:0" }.parse().map_err(|_| Error::Url(url.into()))?;
        let mut endpoint = quinn::Endpoint::client(bind).map_err(Error::Socket)?;
        endpoint.set_default_client_config(super::tls::client_config(identity)?);
        Ok(Link {
            endpoint,
            target: format!("{}:{port}", if host.contains(':') { format!("[{host}]") } else { host.clone() }),
            server_name: if server_name.is_empty() { host } else { server_name.to_owned() },
            gateway_id: gateway_id.to_owned(),
            gateway_name: gateway_name.to_owned(),
            media,
            conn: None,
            failures: 0,
            retry_at: Instant::now(),
        })
    }

    async fn connect(&mut self) -> Result<quinn::Connection, SinkError> {
        let unreachable = |m: String| SinkError::new(FailureKind::Unreachable, m);
        let addr = tokio::net::lookup_host(&self.target)
            .await
            .map_err(|e| unreachable(format!("cannot resolve {}: {e}", self.target)))?
            .next()
            .ok_or_else(|| unreachable(format!("{} resolves to no address", self.target)))?;
        let connecting = self.endpoint.connect(addr, &self.server_name).map_err(|e| unreachable(e.to_string()))?;
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| {
                SinkError::new(
                    FailureKind::Timeout,
                    format!("no answer from the hub at {addr} within {CONNECT_TIMEOUT:?}"),
                )
            })?
            .map_err(|e| unreachable(format!("cannot connect to the hub at {addr}: {e}")))?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| unreachable(e.to_string()))?;
        let hello = Hello { v: super::VERSION, gateway_id: self.gateway_id.clone(), name: self.gateway_name.clone() };
        write_message(&mut send, &hello).await.map_err(|e| unreachable(e.to_string()))?;
        let _ = send.finish();
        let answer: HelloAnswer = tokio::time::timeout(CONNECT_TIMEOUT, read_message(&mut recv, 64 << 10))
            .await
            .map_err(|_| SinkError::new(FailureKind::Timeout, "the hub did not answer the hello"))?
            .map_err(|e| unreachable(format!("hello: {e}")))?;
        if !answer.accepted {
            conn.close(quinn::VarInt::from_u32(0), b"refused");
            return Err(SinkError::new(
                FailureKind::Unauthorized,
                format!("the hub refused the link: {}", answer.reason.unwrap_or_default()),
            ));
        }
        info!(hub = %answer.hub_id, %addr, "Linked to the hub.");
        Ok(conn)
    }

    /// The live connection, made when there is none (no sooner than the backoff allows).
    async fn connection(&mut self) -> Result<quinn::Connection, SinkError> {
        if let Some(c) = &self.conn {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
            self.conn = None;
        }
        if Instant::now() < self.retry_at {
            return Err(SinkError::new(FailureKind::Unreachable, "waiting to reconnect to the hub"));
        }
        match self.connect().await {
            Ok(c) => {
                self.failures = 0;
                self.conn = Some(c.clone());
                Ok(c)
            }
            Err(e) => {
                self.failures = self.failures.saturating_add(1);
                self.retry_at = Instant::now() + backoff(self.failures, RECONNECT_MIN, RECONNECT_MAX);
                Err(e)
            }
        }
    }

    /// Sends the records `batch[range]` with `pictures` on one stream; the hub's answer.
    async fn send(
        conn: &quinn::Connection,
        items: Vec<Item>,
        pictures: Vec<(Picture, Vec<u8>)>,
    ) -> Result<BatchAnswer, SinkError> {
        let lost = |e: String| SinkError::new(FailureKind::Unreachable, e);
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| lost(e.to_string()))?;
        let n = items.len();
        let head = BatchHead { events: items, pictures: pictures.iter().map(|(p, _)| p.clone()).collect() };
        write_message(&mut send, &head).await.map_err(|e| lost(e.to_string()))?;
        for (_, bytes) in &pictures {
            send.write_all(bytes).await.map_err(|e| lost(e.to_string()))?;
        }
        send.finish().map_err(|e| lost(e.to_string()))?;
        let answer: BatchAnswer =
            read_message(&mut recv, 16 << 20).await.map_err(|e| lost(format!("hub's answer: {e}")))?;
        if let Some(e) = answer.error {
            return Err(SinkError::new(FailureKind::Refused, format!("the hub did not take the batch: {e}")));
        }
        if answer.results.len() != n {
            return Err(SinkError::new(
                FailureKind::Refused,
                format!("the hub answered {} results for {n} records", answer.results.len()),
            ));
        }
        Ok(answer)
    }
}

impl Sink for Link {
    fn batch_size(&self) -> i64 {
        BATCH
    }

    async fn tick(&mut self) -> Result<bool, SinkError> {
        let fresh = self.conn.as_ref().is_none_or(|c| c.close_reason().is_some());
        if !fresh {
            return Ok(false);
        }
        if Instant::now() < self.retry_at {
            return Ok(false);
        }
        self.connection().await.map(|_| true)
    }

    async fn deliver(&mut self, batch: &[Claimed]) -> Result<Vec<Delivery>, SinkError> {
        let conn = self.connection().await?;
        let mut out = Vec::with_capacity(batch.len());
        // Split where the pictures or the records would pass the per-stream limits.
        let mut start = 0;
        while start < batch.len() {
            let mut items = Vec::new();
            let mut pictures: Vec<(Picture, Vec<u8>)> = Vec::new();
            let mut seen = std::collections::HashSet::new();
            let mut bytes = 0u64;
            let mut record_bytes = 0usize;
            let mut end = start;
            while end < batch.len() {
                let c = &batch[end];
                let mut mine = Vec::new();
                for m in &c.event.media {
                    if seen.contains(&m.hash) || mine.iter().any(|(p, _): &(Picture, Vec<u8>)| p.hash == m.hash) {
                        continue;
                    }
                    match self.media.get(&m.hash).await {
                        Ok(Some(b)) => mine.push((Picture { hash: m.hash.clone(), len: b.len() as u64 }, b)),
                        // A picture that is gone (pruned) does not hold the record back.
                        Ok(None) => {}
                        Err(e) => {
                            return Err(SinkError::new(
                                FailureKind::Local,
                                format!("cannot read picture {}: {e}", m.hash),
                            ))
                        }
                    }
                }
                let size: u64 = mine.iter().map(|(p, _)| p.len).sum();
                let event = serde_json::value::to_raw_value(&c.event)
                    .map_err(|e| SinkError::new(FailureKind::Local, e.to_string()))?;
                if end > start
                    && (bytes + size > MAX_BATCH_MEDIA || record_bytes + event.get().len() > MAX_BATCH_RECORDS_BYTES)
                {
                    break;
                }
                bytes += size;
                record_bytes += event.get().len();
                for p in mine {
                    seen.insert(p.0.hash.clone());
                    pictures.push(p);
                }
                items.push(Item { object_id: c.object_id.clone(), event });
                end += 1;
            }
            let answer = match tokio::time::timeout(BATCH_TIMEOUT, Self::send(&conn, items, pictures)).await {
                Ok(Ok(a)) => a,
                Ok(Err(e)) => {
                    if conn.close_reason().is_some() {
                        self.conn = None;
                    }
                    return Err(e);
                }
                Err(_) => {
                    self.conn = None;
                    conn.close(quinn::VarInt::from_u32(0), b"batch timed out");
                    return Err(SinkError::new(
                        FailureKind::Timeout,
                        format!("the hub did not answer a batch within {BATCH_TIMEOUT:?}"),
                    ));
                }
            };
            out.extend(answer.results.into_iter().map(|r| match r {
                None => Delivery::Delivered,
                Some(why) => Delivery::Rejected(format!("refused by the hub: {why}").into()),
            }));
            start = end;
        }
        Ok(out)
    }
}
