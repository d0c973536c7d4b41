//! Stream health of one pulled stream (RTSP today; GB/T 28181 channels next): the state with
//! its reason and `since`, and the figures an operator reads at 3 a.m. (codec, resolution,
//! declared and received fps, bitrate, GOP, last-frame and last-keyframe age, RTP loss,
//! timestamp jumps, reconnects, time to first frame), plus the latest keyframes for snapshots
//! and diagnosis.
//!
//! Written by the stream's own pull task (one writer), read by the API and the diagnosis
//! job. The per-frame path takes one uncontended lock and does arithmetic only: no
//! allocation except to keep a keyframe. No sockets, no sqlx here.
//!
//! The stream's access units are also handed to whoever taps it (an upper platform playing
//! the channel through the cascade): `tap` gives the cached keyframe to start from and a
//! bounded queue of what follows; the pull publishes only while someone listens, and a
//! listener too slow for its queue loses frames up to the next keyframe, never the pull's time.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use serde::Serialize;

use crate::clock::Millis;

/// Where a stream is. The failure states are kept while vigil waits to retry, so an operator
/// sees "auth_failed since 10:02, 4 attempts" rather than a flicker through `connecting`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamState {
    Connecting,
    Playing,
    Stalled,
    Backoff,
    AuthFailed,
    Refused,
    NotFound,
    SessionLimit,
    BadMedia,
    /// GB/T 28181: the device did not answer the INVITE.
    InviteTimeout,
    /// GB/T 28181: the device refused the INVITE (the SIP code is in the error).
    InviteRefused,
    /// GB/T 28181: answered, but no RTP came.
    NoMedia,
    /// GB/T 28181: RTP came, none of it with the SSRC agreed.
    SsrcMismatch,
    /// GB/T 28181: the device ended the dialog.
    ByeFromDevice,
}

impl StreamState {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamState::Connecting => "connecting",
            StreamState::Playing => "playing",
            StreamState::Stalled => "stalled",
            StreamState::Backoff => "backoff",
            StreamState::AuthFailed => "auth_failed",
            StreamState::Refused => "refused",
            StreamState::NotFound => "not_found",
            StreamState::SessionLimit => "session_limit",
            StreamState::BadMedia => "bad_media",
            StreamState::InviteTimeout => "invite_timeout",
            StreamState::InviteRefused => "invite_refused",
            StreamState::NoMedia => "no_media",
            StreamState::SsrcMismatch => "ssrc_mismatch",
            StreamState::ByeFromDevice => "bye_from_device",
        }
    }

    /// A failure state: the stream is waiting to retry.
    pub fn is_failure(self) -> bool {
        !matches!(self, StreamState::Connecting | StreamState::Playing)
    }
}

/// A keyframe as retina gives it with `FrameFormat::SIMPLE`: Annex B with the parameter
/// sets in front (or a whole JPEG for MJPEG), so a fresh decoder can start from it.
#[derive(Clone)]
pub struct Keyframe {
    pub codec: super::snapshot::Codec,
    pub data: Arc<[u8]>,
    /// RTP timestamp in clock-rate units (advances while a camera streams).
    pub pts: i64,
    /// Counts keyframes of this stream; a cache keyed by it never decodes one twice.
    pub seq: u64,
}

/// What the stream's own parameters say (from the SDP and the SPS).
#[derive(Debug, Clone, Default, Serialize)]
pub struct MediaInfo {
    pub codec: Option<String>,
    pub rfc6381: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub declared_fps: Option<f64>,
    pub transport: &'static str,
}

/// The latest video quality diagnosis of a stream.
#[derive(Debug, Clone, Serialize)]
pub struct Quality {
    pub at: Millis,
    /// Each check's score (see `diagnosis`), the raw numbers a central team tunes with.
    pub scores: super::diagnosis::Scores,
    /// The checks failing now (empty when the picture is usable).
    pub faults: Vec<&'static str>,
    /// Checks that failed this many consecutive samples (an alarm is raised at the limit).
    pub consecutive_bad: u32,
    /// True once the alarm limit was reached and until a good sample.
    pub alarmed: bool,
    /// The per-camera baseline is learned from the first healthy samples.
    pub baseline_ready: bool,
}

#[derive(Default)]
struct Inner {
    state: Option<StreamState>,
    since: Millis,
    error: Option<String>,
    attempts: u32,
    next_attempt_at: Option<Millis>,
    media: MediaInfo,
    // Session figures (reset on every session).
    session_start: Option<Instant>,
    first_frame_ms: Option<u64>,
    first_keyframe_ms: Option<u64>,
    last_frame: Option<Instant>,
    last_keyframe: Option<Instant>,
    frame_interval_ms: Option<f64>,
    frames_since_key: u32,
    gop_frames: Option<u32>,
    keyframe_interval_ms: Option<f64>,
    window_start: Option<Instant>,
    window_frames: u32,
    window_bytes: u64,
    received_fps: Option<f64>,
    bitrate_bps: Option<f64>,
    // Totals over the stream's life in this process.
    frames: u64,
    bytes: u64,
    rtp_loss: u64,
    /// RTP packets received (GB/T 28181 pulls count them; retina does not say).
    rtp_packets: Option<u64>,
    timestamp_jumps: u64,
    media_errors: u64,
    reconnects: u64,
    stalls: u64,
    keyframes: u64,
    latest_key: Option<Keyframe>,
    previous_key: Option<Keyframe>,
    quality: Option<Quality>,
}

/// One access unit of a stream, for its listeners (Annex B for H.264/H.265).
#[derive(Clone)]
pub struct Unit {
    pub codec: super::snapshot::Codec,
    /// Presentation time, 90 kHz.
    pub pts: i64,
    pub keyframe: bool,
    pub data: bytes::Bytes,
}

/// A listener of the stream's access units.
struct Listener {
    tx: tokio::sync::mpsc::Sender<Unit>,
    /// It missed a unit (its queue was full): nothing more until a keyframe.
    gap: bool,
}

/// One stream's health. Cheap to share (`Arc`).
#[derive(Default)]
pub struct Health {
    inner: Mutex<Inner>,
    listeners: Mutex<Vec<Listener>>,
    /// Listeners now (read on every frame without the lock).
    listening: std::sync::atomic::AtomicUsize,
    /// Woken on a keyframe, a state change and a diagnosis verdict (waiters for a snapshot
    /// or a patrol outcome).
    changed: tokio::sync::Notify,
}

/// How often received fps and bitrate are recomputed.
const RATE_WINDOW: Duration = Duration::from_secs(2);

/// What the frame path tells its caller.
pub struct FrameNote {
    /// The first frame of the session: time to first frame in ms.
    pub first: Option<u64>,
}

impl Health {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves figures, not invariants: go on.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state(&self) -> Option<StreamState> {
        self.lock().state
    }

    /// Resolves at the next keyframe, state change or verdict after it is first polled.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// Enters `state` (keeping `since` when it is the state already).
    pub fn set_state(&self, state: StreamState, now: Millis, error: Option<String>) {
        let mut g = self.lock();
        if g.state != Some(state) {
            g.state = Some(state);
            g.since = now;
        }
        g.error = error;
        if state == StreamState::Playing {
            g.attempts = 0;
            g.next_attempt_at = None;
        }
        drop(g);
        self.changed.notify_waiters();
    }

    /// A failed attempt: the state it leaves the stream in and when the next try is.
    pub fn failed(&self, state: StreamState, now: Millis, error: String, next_attempt_at: Millis) {
        let mut g = self.lock();
        if g.state != Some(state) {
            g.state = Some(state);
            g.since = now;
        }
        g.error = Some(error);
        g.attempts = g.attempts.saturating_add(1);
        g.next_attempt_at = Some(next_attempt_at);
        g.last_frame = None;
        g.session_start = None;
        drop(g);
        self.changed.notify_waiters();
    }

    pub fn count_timestamp_jump(&self) {
        self.lock().timestamp_jumps += 1;
    }

    pub fn count_media_error(&self) {
        self.lock().media_errors += 1;
    }

    /// RTP packets received since the last call.
    pub fn count_packets(&self, n: u64) {
        let mut g = self.lock();
        *g.rtp_packets.get_or_insert(0) += n;
    }

    pub fn count_stall(&self) {
        self.lock().stalls += 1;
    }

    /// A new session begins (connect + DESCRIBE starts now).
    pub fn session_started(&self, started: Instant, reconnect: bool) {
        let mut g = self.lock();
        g.session_start = Some(started);
        g.first_frame_ms = None;
        g.first_keyframe_ms = None;
        g.last_frame = None;
        g.frame_interval_ms = None;
        g.frames_since_key = 0;
        g.window_start = None;
        g.window_frames = 0;
        g.window_bytes = 0;
        if reconnect {
            g.reconnects += 1;
        }
    }

    pub fn set_media(&self, media: MediaInfo) {
        self.lock().media = media;
    }

    /// One video frame arrived. `key` carries the keyframe to keep, when it is one.
    pub fn frame(&self, now: Instant, len: usize, loss: u16, key: Option<Keyframe>) -> FrameNote {
        let mut g = self.lock();
        let mut note = FrameNote { first: None };
        if g.first_frame_ms.is_none() {
            let ttff = g.session_start.map(|s| now.saturating_duration_since(s).as_millis() as u64).unwrap_or(0);
            g.first_frame_ms = Some(ttff);
            note.first = Some(ttff);
        }
        if let Some(prev) = g.last_frame {
            let dt = now.saturating_duration_since(prev).as_secs_f64() * 1000.0;
            // An exponentially weighted mean (1/8) of the receive interval: smooth enough to
            // ignore a burst, quick enough to follow a camera that changes its frame rate.
            g.frame_interval_ms = Some(match g.frame_interval_ms {
                Some(m) => m + (dt - m) / 8.0,
                None => dt,
            });
        }
        g.last_frame = Some(now);
        g.frames += 1;
        g.bytes += len as u64;
        g.rtp_loss += u64::from(loss);
        g.frames_since_key = g.frames_since_key.saturating_add(1);
        let start = *g.window_start.get_or_insert(now);
        g.window_frames += 1;
        g.window_bytes += len as u64;
        let span = now.saturating_duration_since(start);
        if span >= RATE_WINDOW {
            let secs = span.as_secs_f64();
            g.received_fps = Some(f64::from(g.window_frames) / secs);
            g.bitrate_bps = Some(g.window_bytes as f64 * 8.0 / secs);
            g.window_start = Some(now);
            g.window_frames = 0;
            g.window_bytes = 0;
        }
        if key.is_some() && g.first_keyframe_ms.is_none() {
            g.first_keyframe_ms = g.session_start.map(|s| now.saturating_duration_since(s).as_millis() as u64);
        }
        if let Some(k) = key {
            if let Some(prev) = g.last_keyframe {
                g.keyframe_interval_ms = Some(now.saturating_duration_since(prev).as_secs_f64() * 1000.0);
                g.gop_frames = Some(g.frames_since_key);
            }
            g.frames_since_key = 0;
            g.last_keyframe = Some(now);
            g.keyframes += 1;
            let k = Keyframe { seq: g.keyframes, ..k };
            g.previous_key = g.latest_key.replace(k);
            drop(g);
            self.changed.notify_waiters();
        }
        note
    }

    /// What an upper platform's catalog NOTIFY says of the picture beyond ON: `VLOST` while
    /// the stream is stalled, `DEFECT` while its diagnosis alarm holds.
    pub fn fault(&self) -> Option<&'static str> {
        let g = self.lock();
        if g.state == Some(StreamState::Stalled) {
            return Some("VLOST");
        }
        g.quality.as_ref().filter(|q| q.alarmed).map(|_| "DEFECT")
    }

    /// True while someone listens to the access units (`publish` is worth a copy).
    pub fn tapped(&self) -> bool {
        self.listening.load(std::sync::atomic::Ordering::Relaxed) > 0
    }

    /// Hands an access unit to every listener; one whose queue is full skips units until the
    /// next keyframe. Listeners that went away are forgotten.
    pub fn publish(&self, unit: Unit) {
        let mut ls = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        ls.retain(|l| !l.tx.is_closed());
        for l in ls.iter_mut() {
            if l.gap && !unit.keyframe {
                continue;
            }
            l.gap = l.tx.try_send(unit.clone()).is_err();
        }
        self.listening.store(ls.len(), std::sync::atomic::Ordering::Relaxed);
    }

    /// Listens to the stream: the latest keyframe (to start a decoder at once) and a queue of
    /// the units after it, `depth` deep.
    pub fn tap(&self, depth: usize) -> (Option<Keyframe>, tokio::sync::mpsc::Receiver<Unit>) {
        let (tx, rx) = tokio::sync::mpsc::channel(depth.max(1));
        let mut ls = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        ls.retain(|l| !l.tx.is_closed());
        ls.push(Listener { tx, gap: false });
        self.listening.store(ls.len(), std::sync::atomic::Ordering::Relaxed);
        drop(ls);
        (self.lock().latest_key.clone(), rx)
    }

    /// The stall deadline now: `max(3 × observed frame interval, floor)` capped by `cap`;
    /// before the first frame interval is known, `cap`.
    pub fn stall_timeout(&self, floor: Duration, cap: Duration) -> Duration {
        let g = self.lock();
        match g.frame_interval_ms {
            Some(ms) => Duration::from_secs_f64((3.0 * ms / 1000.0).clamp(0.0, 3600.0)).max(floor).min(cap),
            None => cap,
        }
    }

    /// When the last frame arrived (None before the first frame of a session).
    pub fn last_frame(&self) -> Option<Instant> {
        self.lock().last_frame
    }

    /// The latest keyframe and the one before it.
    pub fn keyframes(&self) -> (Option<Keyframe>, Option<Keyframe>) {
        let g = self.lock();
        (g.latest_key.clone(), g.previous_key.clone())
    }

    pub fn set_quality(&self, q: Quality) {
        self.lock().quality = Some(q);
        self.changed.notify_waiters();
    }

    /// Forgets the keyframes (a new session may have other parameters).
    pub fn drop_keyframes(&self) {
        let mut g = self.lock();
        g.latest_key = None;
        g.previous_key = None;
    }

    /// The figures as the API shows them, ages relative to `now`.
    pub fn view(&self, now: Instant, wall: Millis) -> HealthView {
        let g = self.lock();
        let age = |t: Option<Instant>| t.map(|t| now.saturating_duration_since(t).as_millis() as u64);
        HealthView {
            state: g.state.unwrap_or(StreamState::Connecting),
            since: g.since,
            error: g.error.clone(),
            attempts: g.attempts,
            next_attempt_at: g.next_attempt_at,
            media: g.media.clone(),
            received_fps: g.received_fps.map(round2),
            bitrate_kbps: g.bitrate_bps.map(|b| round2(b / 1000.0)),
            gop_frames: g.gop_frames,
            keyframe_interval_ms: g.keyframe_interval_ms.map(|v| v.round() as u64),
            frame_interval_ms: g.frame_interval_ms.map(round2),
            last_frame_age_ms: age(g.last_frame),
            last_keyframe_age_ms: age(g.last_keyframe),
            time_to_first_frame_ms: g.first_frame_ms,
            time_to_first_keyframe_ms: g.first_keyframe_ms,
            frames: g.frames,
            bytes: g.bytes,
            rtp_loss: g.rtp_loss,
            rtp_packets: g.rtp_packets,
            timestamp_jumps: g.timestamp_jumps,
            media_errors: g.media_errors,
            reconnects: g.reconnects,
            stalls: g.stalls,
            quality: g.quality.clone(),
            at: wall,
        }
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// `GET /api/v1/devices/{id}/stream`'s body (ages in milliseconds).
#[derive(Debug, Clone, Serialize)]
pub struct HealthView {
    pub state: StreamState,
    pub since: Millis,
    pub error: Option<String>,
    pub attempts: u32,
    pub next_attempt_at: Option<Millis>,
    #[serde(flatten)]
    pub media: MediaInfo,
    pub received_fps: Option<f64>,
    pub bitrate_kbps: Option<f64>,
    pub gop_frames: Option<u32>,
    pub keyframe_interval_ms: Option<u64>,
    pub frame_interval_ms: Option<f64>,
    pub last_frame_age_ms: Option<u64>,
    pub last_keyframe_age_ms: Option<u64>,
    pub time_to_first_frame_ms: Option<u64>,
    /// From the session's start (RTSP connect, GB/T 28181 INVITE) to its first keyframe.
    pub time_to_first_keyframe_ms: Option<u64>,
    pub frames: u64,
    pub bytes: u64,
    pub rtp_loss: u64,
    /// RTP packets received (GB/T 28181 streams; `null` for RTSP).
    pub rtp_packets: Option<u64>,
    pub timestamp_jumps: u64,
    pub media_errors: u64,
    pub reconnects: u64,
    pub stalls: u64,
    pub quality: Option<Quality>,
    #[serde(skip)]
    pub at: Millis,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Keyframe {
        Keyframe { codec: super::super::snapshot::Codec::H264, data: Arc::from(&b"k"[..]), pts: 0, seq: 0 }
    }

    #[test]
    fn stall_timeout_follows_the_frame_interval_within_floor_and_cap() {
        let h = Health::default();
        let floor = Duration::from_secs(2);
        let cap = Duration::from_secs(10);
        let t0 = Instant::now();
        h.session_started(t0, false);
        assert_eq!(h.stall_timeout(floor, cap), cap, "before frames: the cap (first-frame deadline)");
        // 25 fps: 3 × 40 ms is below the floor.
        for i in 0..50 {
            h.frame(t0 + Duration::from_millis(40 * i), 1000, 0, None);
        }
        assert_eq!(h.stall_timeout(floor, cap), floor);
        // A camera sending one frame every 2 s gets 6 s, not a false stall at 2 s.
        let h = Health::default();
        h.session_started(t0, false);
        for i in 0..10 {
            h.frame(t0 + Duration::from_secs(2 * i), 1000, 0, None);
        }
        let t = h.stall_timeout(floor, cap);
        assert!(t >= Duration::from_millis(5900) && t <= Duration::from_millis(6100), "{t:?}");
        // One frame a minute: capped.
        let h = Health::default();
        h.session_started(t0, false);
        h.frame(t0, 1, 0, None);
        h.frame(t0 + Duration::from_secs(60), 1, 0, None);
        assert_eq!(h.stall_timeout(floor, cap), cap);
    }

    #[test]
    fn figures_fps_bitrate_gop_loss_and_first_frame() {
        let h = Health::default();
        let t0 = Instant::now();
        h.session_started(t0, true);
        let mut first = None;
        for i in 0..100u64 {
            let at = t0 + Duration::from_millis(200 + 40 * i);
            let k = (i % 25 == 0).then(key);
            let n = h.frame(at, 5000, u16::from(i == 10), k);
            if i == 0 {
                first = n.first;
            } else {
                assert!(n.first.is_none());
            }
        }
        assert_eq!(first, Some(200));
        let v = h.view(t0 + Duration::from_millis(4200), 0);
        assert_eq!(v.gop_frames, Some(25));
        assert_eq!(v.keyframe_interval_ms, Some(1000));
        let fps = v.received_fps.unwrap_or_default();
        assert!((fps - 25.0).abs() < 1.0, "{fps}");
        let kbps = v.bitrate_kbps.unwrap_or_default();
        assert!((kbps - 1000.0).abs() < 40.0, "{kbps}");
        assert_eq!(v.rtp_loss, 1);
        assert_eq!(v.reconnects, 1);
        assert_eq!(v.frames, 100);
        assert_eq!(v.last_frame_age_ms, Some(40));
        let (latest, prev) = h.keyframes();
        assert_eq!(latest.map(|k| k.seq), Some(4));
        assert_eq!(prev.map(|k| k.seq), Some(3));
    }

    #[test]
    fn failure_states_keep_since_and_count_attempts() {
        let h = Health::default();
        h.set_state(StreamState::Connecting, 1, None);
        h.failed(StreamState::AuthFailed, 10, "401".into(), 40);
        h.failed(StreamState::AuthFailed, 50, "401".into(), 90);
        let v = h.view(Instant::now(), 0);
        assert_eq!(v.state, StreamState::AuthFailed);
        assert_eq!(v.since, 10);
        assert_eq!(v.attempts, 2);
        assert_eq!(v.next_attempt_at, Some(90));
        h.set_state(StreamState::Playing, 100, None);
        let v = h.view(Instant::now(), 0);
        assert_eq!((v.state, v.since, v.attempts), (StreamState::Playing, 100, 0));
    }
}
