//! The QUIC link between gateway tiers (quinn, mutual TLS): a lower gateway relays its
//! outbox to an upper vigil acting as a hub. `sink` is the lower side (an outbox sink),
//! `hub` the upper side (a source: it commits what arrives into its own outbox, so records
//! flow on to the hub's upstreams), `tls` the certificates. This file owns the wire format.
//!
//! Wire format (ALPN `vigil-link/1`), every message a 4-byte big-endian length and JSON:
//! - the first bidirectional stream of a connection is the hello: `Hello` →
//!   `HelloAnswer`; the hub checks the gateway id against the certificate's common name;
//! - every later bidirectional stream is one batch: `BatchHead`, then the bytes of each
//!   picture it lists, back to back; the client finishes the stream. The hub answers with
//!   `BatchAnswer` only after the batch is committed in its own outbox. QUIC's own
//!   acknowledgements say nothing about the hub's database, so the sender marks records
//!   delivered on this answer and nothing else.

pub mod hub;
pub mod sink;
pub mod tls;

use serde::{Deserialize, Serialize};

/// The version of the messages below.
pub const VERSION: u32 = 1;
/// The largest JSON message (a batch head of 1,024 events of a few KB each fits easily).
pub const MAX_MESSAGE: usize = 32 << 20;
/// The most picture bytes one batch stream carries; the sender splits batches to stay under.
pub const MAX_BATCH_MEDIA: u64 = 48 << 20;

/// The lower gateway introduces itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    pub v: u32,
    pub gateway_id: String,
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HelloAnswer {
    pub v: u32,
    pub hub_id: String,
    pub accepted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One record of a batch: the event as the lower gateway stored it, with the upstream id
/// it was given there (kept, never derived again).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Item {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_id: Option<String>,
    /// Kept raw so one event the hub cannot read is refused alone.
    pub event: Box<serde_json::value::RawValue>,
}

/// A picture carried in the batch: its name (SHA-256) and length; the bytes follow the head.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Picture {
    pub hash: String,
    pub len: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchHead {
    pub events: Vec<Item>,
    #[serde(default)]
    pub pictures: Vec<Picture>,
}

/// The hub's answer: per event, in order, `None` when committed (new or already there) or
/// the reason it is refused for good; or an `error` for the whole batch (send it again).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BatchAnswer {
    #[serde(default)]
    pub results: Vec<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("link: {0}")]
    Io(String),
    #[error("link message of {0} bytes is over the limit")]
    TooLarge(u64),
    #[error("link message is not valid: {0}")]
    Bad(String),
}

/// Writes one length-prefixed JSON message.
pub async fn write_message<T: Serialize>(send: &mut quinn::SendStream, msg: &T) -> Result<(), Error> {
    let body = serde_json::to_vec(msg).map_err(|e| Error::Bad(e.to_string()))?;
    let len = u32::try_from(body.len()).map_err(|_| Error::TooLarge(body.len() as u64))?;
    send.write_all(&len.to_be_bytes()).await.map_err(|e| Error::Io(e.to_string()))?;
    send.write_all(&body).await.map_err(|e| Error::Io(e.to_string()))
}

/// Reads one length-prefixed message of at most `max` bytes. The buffer grows with what
/// arrives, not with what the length prefix claims.
pub async fn read_frame(recv: &mut quinn::RecvStream, max: usize) -> Result<Vec<u8>, Error> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await.map_err(|e| Error::Io(e.to_string()))?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(Error::TooLarge(len as u64));
    }
    read_exactly(recv, len).await
}

/// Reads exactly `len` bytes, growing the buffer chunk by chunk.
pub async fn read_exactly(recv: &mut quinn::RecvStream, len: usize) -> Result<Vec<u8>, Error> {
    let mut body = Vec::with_capacity(len.min(64 << 10));
    while body.len() < len {
        match recv.read_chunk(len - body.len(), true).await.map_err(|e| Error::Io(e.to_string()))? {
            Some(chunk) => body.extend_from_slice(&chunk.bytes),
            None => return Err(Error::Io(format!("stream ended after {} of {len} bytes", body.len()))),
        }
    }
    Ok(body)
}

/// Reads one length-prefixed JSON message of at most `max` bytes.
pub async fn read_message<T: for<'de> Deserialize<'de>>(recv: &mut quinn::RecvStream, max: usize) -> Result<T, Error> {
    let body = read_frame(recv, max).await?;
    serde_json::from_slice(&body).map_err(|e| Error::Bad(e.to_string()))
}
