//! The media pipeline, the second data path: what a pulled stream becomes once its access
//! units arrive. `health` (frames, fps, GOP, bitrate, stalls, the keyframe cache), `snapshot`
//! (keyframe → picture, on a bounded pool of blocking threads), `diagnosis` (video quality
//! scores and verdicts). `StreamBoard` is where the pulls publish their streams and where the
//! API and the metrics read them; the API never calls into a pull.
//!
//! The RTSP pull (`sources::rtsp`) and the GB/T 28181 player (`sources::gb28181::play`) feed
//! it. RTSP cameras are pulled always; a GB/T 28181 channel is pulled while something needs
//! it: the API asks through `demand` (the board forwards to the player; the API never calls
//! into a source). Video never goes through the outbox.

pub mod diagnosis;
pub mod health;
pub mod quality;
pub mod snapshot;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use crate::clock::now_ms;
use health::{Health, HealthView, StreamState};

/// The last JPEG made: from which keyframe, when, the bytes.
type CachedJpeg = Option<(u64, Instant, Arc<Vec<u8>>)>;

/// A stream as the API sees it.
struct Stream {
    health: Arc<Health>,
    kind: &'static str,
    jpeg: Mutex<CachedJpeg>,
}

/// What snapshots need: the decode pool and how long a JPEG is answered from cache.
#[derive(Clone)]
struct Snapshots {
    pool: snapshot::Pool,
    max_age: Duration,
}

/// The streams vigil pulls, by device id: written by the pulls, read by the API and the
/// metrics.
#[derive(Clone)]
pub struct StreamBoard {
    streams: Arc<RwLock<HashMap<String, Arc<Stream>>>>,
    snapshots: Option<Snapshots>,
    puller: Arc<std::sync::OnceLock<tokio::sync::mpsc::Sender<Demand>>>,
    /// Woken when a stream is added.
    added: Arc<tokio::sync::Notify>,
}

/// A request to pull a GB/T 28181 channel for at least `hold` on behalf of `holder`; a hold
/// of zero releases that holder's claim. The stream stops when no holder's claim runs.
#[derive(Debug, Clone)]
pub struct Demand {
    pub device: String,
    pub channel: String,
    pub hold: Duration,
    pub holder: Holder,
}

/// Who wants a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Holder {
    /// An operator (a snapshot, `POST .../stream`).
    Operator,
    /// A patrol round.
    Patrol,
    /// An upper platform playing the channel through the cascade (one number per play).
    Upper(u64),
}

/// The board key of a device's channel.
pub fn channel_key(device: &str, channel: &str) -> String {
    format!("{device}/{channel}")
}

#[derive(Debug, thiserror::Error)]
pub enum DemandError {
    #[error("GB/T 28181 video is not enabled")]
    NoPuller,
    #[error("too many pulls are waiting to start; try again shortly")]
    Busy,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("no stream is pulled for this device")]
    NotPulled,
    #[error("no keyframe yet (the stream is {0})")]
    NoKeyframe(&'static str),
    #[error("the keyframe could not be turned into a picture: {0}")]
    Decode(#[from] snapshot::Error),
}

impl StreamBoard {
    /// A board with no streams (no pull configured).
    pub fn empty() -> Self {
        StreamBoard { streams: Arc::default(), snapshots: None, puller: Arc::default(), added: Arc::default() }
    }

    /// A board whose snapshots are decoded on `pool`; a JPEG younger than `max_age` (or made
    /// from the same keyframe) is answered from cache.
    pub fn new(pool: snapshot::Pool, max_age: Duration) -> Self {
        StreamBoard {
            streams: Arc::default(),
            snapshots: Some(Snapshots { pool, max_age }),
            puller: Arc::default(),
            added: Arc::default(),
        }
    }

    /// The decode pool snapshots and diagnosis run on.
    pub fn pool(&self) -> Option<snapshot::Pool> {
        self.snapshots.as_ref().map(|s| s.pool.clone())
    }

    /// Where demands for channels go (the GB/T 28181 player; set once at start).
    pub fn set_puller(&self, tx: tokio::sync::mpsc::Sender<Demand>) {
        let _ = self.puller.set(tx);
    }

    /// Asks for a channel to be pulled (or kept) for at least `demand.hold`.
    pub fn demand(&self, demand: Demand) -> Result<(), DemandError> {
        let tx = self.puller.get().ok_or(DemandError::NoPuller)?;
        tx.try_send(demand).map_err(|_| DemandError::Busy)
    }

    /// Publishes a new stream (state `connecting`) and answers the health its pull feeds.
    pub fn add(&self, id: &str, kind: &'static str) -> Arc<Health> {
        let health = Arc::new(Health::default());
        health.set_state(StreamState::Connecting, now_ms(), None);
        let stream = Arc::new(Stream { health: health.clone(), kind, jpeg: Mutex::new(None) });
        self.streams.write().unwrap_or_else(|p| p.into_inner()).insert(id.to_owned(), stream);
        self.added.notify_waiters();
        health
    }

    /// Waits until something about stream `id` may have changed — a keyframe, its state, a
    /// diagnosis verdict, the stream appearing — or `within` has passed (a change between
    /// the caller's look and this wait is caught by `within`).
    pub async fn changed(&self, id: &str, within: Duration) {
        let stream = self.get(id);
        let wait = async {
            match &stream {
                Some(s) => s.health.changed().await,
                None => self.added.notified().await,
            }
        };
        let _ = tokio::time::timeout(within, wait).await;
    }

    /// Takes a stream off the board (its pull stopped).
    pub fn remove(&self, id: &str) {
        self.streams.write().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    /// The health (and access units, `Health::tap`) of stream `id`, while it is on the board.
    pub fn stream(&self, id: &str) -> Option<Arc<Health>> {
        self.get(id).map(|s| s.health.clone())
    }

    /// The picture fault of stream `id` for an upper's NOTIFY (`Health::fault`); `None` when
    /// it is fine or not pulled.
    pub fn fault(&self, id: &str) -> Option<&'static str> {
        self.get(id).and_then(|s| s.health.fault())
    }

    /// A digest of every stream's picture fault (`fault`): it differs whenever one of them
    /// does (whatever order the board keeps them in), so a caller can tell cheaply.
    pub fn faults_digest(&self) -> u64 {
        use std::hash::{BuildHasher, BuildHasherDefault};
        let hasher = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default();
        let streams = self.streams.read().unwrap_or_else(|p| p.into_inner());
        streams
            .iter()
            .filter_map(|(id, s)| s.health.fault().map(|f| hasher.hash_one((id, f))))
            .fold(0u64, u64::wrapping_add)
    }

    fn get(&self, id: &str) -> Option<Arc<Stream>> {
        self.streams.read().unwrap_or_else(|p| p.into_inner()).get(id).cloned()
    }

    pub fn health(&self, id: &str) -> Option<HealthView> {
        self.get(id).map(|s| s.health.view(Instant::now(), now_ms()))
    }

    /// A JPEG of the stream's latest keyframe, no wider than 1920 pixels; a JPEG made less
    /// than the board's `max_age` ago (or from the same keyframe) is answered from cache.
    pub async fn snapshot(&self, id: &str) -> Result<Arc<Vec<u8>>, SnapshotError> {
        let stream = self.get(id).ok_or(SnapshotError::NotPulled)?;
        let snapshots = self.snapshots.as_ref().ok_or(SnapshotError::NotPulled)?;
        let (latest, _) = stream.health.keyframes();
        let Some(key) = latest else {
            return Err(SnapshotError::NoKeyframe(stream.health.state().unwrap_or(StreamState::Connecting).as_str()));
        };
        if let Some((seq, made, jpeg)) = stream.jpeg.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            if *seq == key.seq || made.elapsed() < snapshots.max_age {
                return Ok(jpeg.clone());
            }
        }
        let seq = key.seq;
        let jpeg = snapshots
            .pool
            .run(move || snapshot::decode(key.codec, &key.data).and_then(|p| snapshot::jpeg(&p, 1920)))
            .await??;
        let jpeg = Arc::new(jpeg);
        *stream.jpeg.lock().unwrap_or_else(|p| p.into_inner()) = Some((seq, Instant::now(), jpeg.clone()));
        Ok(jpeg)
    }

    /// Streams by (state, kind), for the metrics.
    pub fn count_states(&self) -> HashMap<(StreamState, &'static str), i64> {
        let mut out = HashMap::new();
        for s in self.streams.read().unwrap_or_else(|p| p.into_inner()).values() {
            let state = s.health.state().unwrap_or(StreamState::Connecting);
            *out.entry((state, s.kind)).or_default() += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the cascade's status loop relies on to skip building its catalog: the digest is
    /// the same while no picture fault changes, and differs once one does (and back).
    #[test]
    fn the_faults_digest_moves_with_the_faults_and_only_with_them() {
        let board = StreamBoard::empty();
        let a = board.add("cam-a", "rtsp");
        let b = board.add("cam-b", "rtsp");
        let none = board.faults_digest();
        a.set_state(StreamState::Playing, now_ms(), None);
        assert_eq!(board.faults_digest(), none, "playing is no fault");
        b.set_state(StreamState::Stalled, now_ms(), None);
        let b_lost = board.faults_digest();
        assert_ne!(b_lost, none, "a stalled picture is VLOST");
        b.set_state(StreamState::Playing, now_ms(), None);
        a.set_state(StreamState::Stalled, now_ms(), None);
        assert_ne!(board.faults_digest(), b_lost, "another camera lost is another digest");
        a.set_state(StreamState::Playing, now_ms(), None);
        assert_eq!(board.faults_digest(), none);
    }
}
