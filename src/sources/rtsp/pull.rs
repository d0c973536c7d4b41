//! One camera's supervised pull: `run()` is the supervisor loop around `run_once()`, which is
//! connect + DESCRIBE → SETUP → PLAY → frames with retina, each step under a named deadline
//! (retina has none of its own), and the frame loop under a stall deadline derived from the
//! stream's own frame interval. Failures are classified into the stream states of the API and
//! paced by their own backoff curves: a wrong password is never hammered, a 453 backs off, an
//! I/O error retries with full jitter, a timestamp jump restarts at once.
//!
//! Writes: the stream's `Health`, presence `Observation`s (frames renew, failures end), and
//! diagnosis results through `quality`. Reads nothing but its socket and its settings.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use futures_util::{FutureExt, StreamExt};
use retina::client::{
    PlayOptions, Session, SessionGroup, SessionOptions, SetupOptions, TcpTransportOptions, TeardownPolicy, Transport,
    UdpTransportOptions,
};
use retina::codec::{CodecItem, FrameFormat, ParametersRef};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Camera, Context};
use crate::clock::now_ms;
use crate::event::{Evidence, Observation, StreamFault};
use crate::media::health::{Health, Keyframe, MediaInfo, StreamState, Unit};
use crate::media::quality;
use crate::media::snapshot::Codec;

/// The stall deadline never goes below this, however fast the camera.
const STALL_FLOOR: Duration = Duration::from_secs(2);
/// The beat pulls read their sockets on (and check their stall deadline).
pub const POLL: Duration = Duration::from_millis(25);
/// How often a playing stream renews its presence and flushes its counters.
const RENEW: Duration = Duration::from_secs(1);
/// A wrong password or a missing path is retried no sooner than this (a few tries a minute
/// at most, doubling up to `AUTH_CAP`): cameras lock accounts that are hammered.
const AUTH_MIN: Duration = Duration::from_secs(30);
const AUTH_CAP: Duration = Duration::from_secs(600);
/// A 453/503 (the camera's session limit) waits at least this.
const SESSION_LIMIT_MIN: Duration = Duration::from_secs(5);
/// Keyframes larger than this are counted but not kept for snapshots and diagnosis (a 4K
/// H.265 keyframe is well under it; two are kept per camera).
const MAX_KEYFRAME: usize = 4 << 20;
/// Immediate restarts (timestamp jumps, depacketization errors) allowed per minute before
/// they are paced like any other failure.
const QUICK_RESTARTS_PER_MIN: usize = 3;

/// Why a session ended.
#[derive(Debug)]
pub enum Failure {
    /// The camera answered with an RTSP error status.
    Status { code: u16, text: String },
    /// TCP connection refused: nothing listens there.
    Refused(String),
    /// A named step did not finish in time.
    Timeout { step: &'static str, after: Duration },
    /// Frames stopped while the connection stayed open.
    Stalled { after: Duration },
    /// The RTP timestamps jumped (camera clock step, bad rtptime).
    TimestampJump(String),
    /// RTP or depacketization error (corrupt or unexpected packets).
    Media(String),
    /// No H.264/H.265/MJPEG video stream, or one vigil cannot set up.
    BadMedia(String),
    /// The camera closed the session.
    Closed,
    /// Any other I/O or protocol error.
    Other(String),
}

impl Failure {
    /// Sorts retina's opaque error by what it says (it exposes only the status code).
    pub fn from_retina(e: &retina::Error) -> Failure {
        let text = e.to_string();
        let first = first_line(&text);
        if let Some(code) = e.status_code() {
            return Failure::Status { code, text: first };
        }
        if text.contains("Timestamp jumped") {
            return Failure::TimestampJump(first);
        }
        if text.contains("Connection refused") {
            return Failure::Refused(first);
        }
        // Errors about one packet carry its stream and packet context.
        if text.contains("\nstream: ") && text.contains("\npkt: ") {
            return Failure::Media(first);
        }
        Failure::Other(first)
    }

    /// The stream state this failure leaves the stream in while it waits.
    pub fn state(&self) -> StreamState {
        match self.fault() {
            StreamFault::AuthFailed => StreamState::AuthFailed,
            StreamFault::NotFound => StreamState::NotFound,
            StreamFault::SessionLimit => StreamState::SessionLimit,
            StreamFault::BadMedia => StreamState::BadMedia,
            StreamFault::Refused => StreamState::Refused,
            StreamFault::Stalled => StreamState::Stalled,
            StreamFault::Unreachable | StreamFault::Closed | StreamFault::MediaError | StreamFault::ProtocolError => {
                StreamState::Backoff
            }
        }
    }

    /// The cause presence records for the camera while it is down (the stream state is
    /// derived from it).
    pub fn fault(&self) -> StreamFault {
        match self {
            Failure::Status { code: 401 | 403, .. } => StreamFault::AuthFailed,
            Failure::Status { code: 404, .. } => StreamFault::NotFound,
            Failure::Status { code: 453 | 503, .. } => StreamFault::SessionLimit,
            // A 2xx "error" is a success whose body retina could not use (an SDP that is not one).
            Failure::Status { code: 200..=299 | 415 | 461, .. } | Failure::BadMedia(_) => StreamFault::BadMedia,
            Failure::Status { .. } => StreamFault::ProtocolError,
            Failure::Refused(_) => StreamFault::Refused,
            Failure::Stalled { .. } => StreamFault::Stalled,
            Failure::Timeout { .. } | Failure::Other(_) => StreamFault::Unreachable,
            Failure::Closed => StreamFault::Closed,
            Failure::TimestampJump(_) | Failure::Media(_) => StreamFault::MediaError,
        }
    }

    /// Restart at once (counted), rather than backing off.
    fn quick_restart(&self) -> bool {
        matches!(self, Failure::TimestampJump(_) | Failure::Media(_))
    }

    pub fn text(&self) -> String {
        match self {
            Failure::Status { text, .. } => text.clone(),
            Failure::Refused(t)
            | Failure::TimestampJump(t)
            | Failure::Media(t)
            | Failure::BadMedia(t)
            | Failure::Other(t) => t.clone(),
            Failure::Timeout { step, after } => format!("{step} did not finish within {} ms", after.as_millis()),
            Failure::Stalled { after } => format!("no frame for {} ms with the connection open", after.as_millis()),
            Failure::Closed => "the camera closed the session".into(),
        }
    }
}

fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or("").trim();
    line.chars().take(300).collect()
}

/// The wait before the next attempt after `failures` consecutive failures ending with `f`.
pub fn delay(f: &Failure, failures: u32, min: Duration, max: Duration) -> Duration {
    use crate::backoff::backoff;
    match f.state() {
        StreamState::AuthFailed | StreamState::NotFound | StreamState::BadMedia => {
            backoff(failures, AUTH_MIN, AUTH_CAP.max(max))
        }
        StreamState::SessionLimit => backoff(failures, min.max(SESSION_LIMIT_MIN), max.max(SESSION_LIMIT_MIN)),
        _ => backoff(failures, min, max),
    }
}

/// How one session ended.
enum Ended {
    Shutdown,
    Failed { failure: Failure, played: bool },
}

/// The supervisor: runs sessions until `cancel`, waiting between them as the failure says.
pub async fn run(cam: Camera, ctx: Arc<Context>, health: Arc<Health>, stagger: Duration, cancel: CancellationToken) {
    tokio::select! {
        _ = tokio::time::sleep(stagger) => {}
        _ = cancel.cancelled() => return,
    }
    let group = ctx.session_group(&cam.url);
    let judge = Arc::new(std::sync::Mutex::new(crate::media::diagnosis::Judge::default()));
    let mut failures = 0u32;
    let mut quick: VecDeque<Instant> = VecDeque::new();
    let mut attempts = 0u64;
    loop {
        // A camera with an old live555 may keep sending a stale session's data to a new
        // connection; retina tracks such sessions per group. Wait for them, within reason.
        let stale = group.stale_sessions();
        if stale.num_sessions > 0 {
            let _ = tokio::time::timeout(Duration::from_secs(5), group.await_stale_sessions(&stale)).await;
        }
        let ended = run_once(&cam, &ctx, &health, &group, attempts > 0, &judge, &cancel).await;
        attempts += 1;
        let (failure, played) = match ended {
            Ended::Shutdown => break,
            Ended::Failed { failure, played } => (failure, played),
        };
        if played {
            failures = 0;
        }
        failures = failures.saturating_add(1);
        let state = failure.state();
        let now = Instant::now();
        while quick.front().is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60)) {
            quick.pop_front();
        }
        let wait = if failure.quick_restart() && quick.len() < QUICK_RESTARTS_PER_MIN {
            quick.push_back(now);
            Duration::ZERO
        } else {
            delay(&failure, failures, ctx.settings.backoff_min, ctx.settings.backoff_max)
        };
        match &failure {
            Failure::TimestampJump(_) => health.count_timestamp_jump(),
            Failure::Media(_) => health.count_media_error(),
            Failure::Stalled { .. } => health.count_stall(),
            _ => {}
        }
        let text = failure.text();
        let wall = now_ms();
        health.failed(state, wall, text.clone(), wall + wait.as_millis() as i64);
        ctx.shared.metrics.rtsp_failures.with_label_values(&[state.as_str()]).inc();
        if played || failures == 1 || state == StreamState::AuthFailed {
            warn!(camera = %cam.id, url = %cam.url, state = state.as_str(), error = %text, retry_in_ms = wait.as_millis() as u64, attempt = failures, "RTSP stream down.");
        } else {
            debug!(camera = %cam.id, state = state.as_str(), error = %text, retry_in_ms = wait.as_millis() as u64, attempt = failures, "RTSP attempt failed.");
        }
        let obs = Observation {
            device: cam.key,
            at: wall,
            evidence: Evidence::RtspDown { fault: failure.fault() },
            detail: Some(Arc::from(format!("{}: {text}", state.as_str()))),
        };
        if ctx.shared.presence.observe(obs).await.is_err() {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = cancel.cancelled() => break,
        }
    }
    debug!(camera = %cam.id, "RTSP pull stopped.");
}

/// The next instant on the process-wide `POLL` grid, so every pull of a thread wakes together.
fn on_grid(now: Instant) -> Instant {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(|| now);
    let period = POLL.as_nanos();
    let since = now.saturating_duration_since(base).as_nanos();
    let next = since.div_ceil(period) * period;
    base + Duration::from_nanos(u64::try_from(next).unwrap_or(u64::MAX))
}

/// Runs `fut` under the named deadline.
async fn step<T>(
    name: &'static str,
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, retina::Error>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Failure::from_retina(&e)),
        Err(_) => Err(Failure::Timeout { step: name, after: limit }),
    }
}

fn media_info(stream: &retina::client::Stream, udp: bool) -> MediaInfo {
    let mut info = MediaInfo {
        codec: Codec::from_encoding(stream.encoding_name()).map(|c| c.as_str().to_owned()),
        declared_fps: stream.framerate().map(f64::from).filter(|f| f.is_finite() && *f > 0.0),
        transport: if udp { "udp" } else { "tcp" },
        ..MediaInfo::default()
    };
    if let Some(ParametersRef::Video(v)) = stream.parameters() {
        let (w, h) = v.pixel_dimensions();
        info.width = Some(w);
        info.height = Some(h);
        info.rfc6381 = Some(v.rfc6381_codec().to_owned());
        if let Some((num, den)) = v.frame_rate() {
            if num > 0 {
                info.declared_fps = Some((f64::from(den) / f64::from(num) * 100.0).round() / 100.0);
            }
        }
    }
    info
}

async fn run_once(
    cam: &Camera,
    ctx: &Arc<Context>,
    health: &Arc<Health>,
    group: &Arc<SessionGroup>,
    reconnect: bool,
    judge: &Arc<std::sync::Mutex<crate::media::diagnosis::Judge>>,
    cancel: &CancellationToken,
) -> Ended {
    let s = &ctx.settings;
    // The global cap on connect attempts in flight, held until the first frame.
    let permit = tokio::select! {
        p = ctx.connecting.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return Ended::Shutdown },
        _ = cancel.cancelled() => return Ended::Shutdown,
    };
    let started = Instant::now();
    if !health.state().is_some_and(StreamState::is_failure) {
        health.set_state(StreamState::Connecting, now_ms(), None);
    }
    health.session_started(started, reconnect);
    let opened = tokio::select! {
        r = open(cam, s, group) => r,
        _ = cancel.cancelled() => return Ended::Shutdown,
    };
    let (mut demuxed, video_i, codec) = match opened {
        Ok(v) => v,
        Err(failure) => return Ended::Failed { failure, played: false },
    };
    let mut media = media_info(&demuxed.streams()[video_i], cam.udp);
    health.set_media(media.clone());
    health.drop_keyframes();

    let mut permit = Some(permit);
    // Frames are read on a shared beat, not as each arrives: every pull of a thread wakes on
    // the same `POLL` grid and drains whatever its socket holds, so 500 cameras cost one
    // wake-up per beat instead of 12,500 a second (BENCHMARKS.md). Health is unchanged:
    // rates and intervals are averages, and the stall deadline is seconds.
    let mut tick = tokio::time::interval_at(on_grid(Instant::now()), POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let cancelled = cancel.cancelled();
    tokio::pin!(cancelled);
    let mut draining = false;
    let mut last_renew: Option<Instant> = None;
    let mut last_diag: Option<Instant> = None;
    let diag_busy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (mut frames, mut bytes) = (0u64, 0u64);
    let metrics = &ctx.shared.metrics;
    let ended = loop {
        let item = if draining {
            match demuxed.next().now_or_never() {
                Some(item) => item,
                None => {
                    // Drained: is the stream quiet for too long?
                    draining = false;
                    let limit = health.stall_timeout(STALL_FLOOR, s.stall_timeout);
                    let quiet = health.last_frame().unwrap_or(started).elapsed();
                    if quiet > limit {
                        break if permit.is_some() {
                            Failure::Timeout { step: "first frame", after: limit }
                        } else {
                            Failure::Stalled { after: quiet }
                        };
                    }
                    continue;
                }
            }
        } else {
            tokio::select! {
                biased;
                _ = &mut cancelled => {
                    flush(metrics, &mut frames, &mut bytes);
                    return Ended::Shutdown;
                }
                _ = tick.tick() => {
                    draining = true;
                    continue;
                }
            }
        };
        let frame = match item {
            Some(Ok(CodecItem::VideoFrame(f))) if f.stream_id() == video_i => f,
            Some(Ok(_)) => continue,
            Some(Err(e)) => break Failure::from_retina(&e),
            None => break Failure::Closed,
        };
        let now = Instant::now();
        if frame.has_new_parameters() {
            media = media_info(&demuxed.streams()[video_i], cam.udp);
            health.set_media(media.clone());
        }
        let loss = frame.loss();
        let len = frame.data().len();
        let pts = frame.timestamp().timestamp();
        let random_access = frame.is_random_access_point();
        // The access unit for listeners (an upper platform playing this camera), only while
        // one listens; published after `frame` so a new listener's cached keyframe is never
        // older than the first unit it is handed.
        let unit = health.tapped().then(|| Unit {
            codec,
            pts,
            keyframe: random_access,
            data: bytes::Bytes::copy_from_slice(frame.data()),
        });
        let key = if random_access && len <= MAX_KEYFRAME {
            Some(Keyframe { codec, data: Arc::from(frame.into_data()), pts, seq: 0 })
        } else {
            None
        };
        let is_key = key.is_some();
        let note = health.frame(now, len, loss, key);
        if let Some(u) = unit {
            health.publish(u);
        }
        frames += 1;
        bytes += len as u64;
        if let Some(ttff) = note.first {
            drop(permit.take());
            metrics.rtsp_first_frame.observe(ttff as f64 / 1000.0);
            health.set_state(StreamState::Playing, now_ms(), None);
            info!(
                camera = %cam.id,
                codec = media.codec.as_deref().unwrap_or("?"),
                width = media.width.unwrap_or(0),
                height = media.height.unwrap_or(0),
                first_frame_ms = ttff,
                transport = media.transport,
                "RTSP stream playing."
            );
        }
        if last_renew.is_none_or(|t| now.duration_since(t) >= RENEW) {
            last_renew = Some(now);
            flush(metrics, &mut frames, &mut bytes);
            let window = health.stall_timeout(STALL_FLOOR, s.stall_timeout) + RENEW + POLL;
            let obs = Observation {
                device: cam.key,
                at: now_ms(),
                evidence: Evidence::RtspFrame { stall_ms: window.as_millis() as i64 },
                detail: None,
            };
            if ctx.shared.presence.observe(obs).await.is_err() {
                return Ended::Shutdown;
            }
        }
        if is_key {
            if let Some(every) = s.diagnosis_every {
                let due = last_diag.is_none_or(|t| now.duration_since(t) >= every);
                if due && !diag_busy.swap(true, std::sync::atomic::Ordering::AcqRel) {
                    last_diag = Some(now);
                    let job = quality::Job {
                        subject: quality::Subject {
                            device_id: cam.id.clone(),
                            key: cam.key,
                            channel: None,
                            org_id: cam.org_id.clone(),
                            source: "rtsp",
                        },
                        health: health.clone(),
                        judge: judge.clone(),
                        busy: diag_busy.clone(),
                    };
                    tokio::spawn(quality::diagnose(ctx.diagnoser.clone(), job));
                }
            }
        }
    };
    flush(metrics, &mut frames, &mut bytes);
    Ended::Failed { failure: ended, played: permit.is_none() }
}

fn flush(metrics: &crate::telemetry::Metrics, frames: &mut u64, bytes: &mut u64) {
    if *frames > 0 {
        metrics.rtsp_frames.inc_by(*frames);
        metrics.rtsp_bytes.inc_by(*bytes);
        *frames = 0;
        *bytes = 0;
    }
}

/// connect + DESCRIBE → SETUP (the first usable video stream) → PLAY, each under its deadline.
async fn open(
    cam: &Camera,
    s: &super::Settings,
    group: &Arc<SessionGroup>,
) -> Result<(retina::client::Demuxed, usize, Codec), Failure> {
    let options = SessionOptions::default()
        .creds(cam.creds.clone())
        .user_agent(format!("vigil/{}", env!("CARGO_PKG_VERSION")))
        .session_group(group.clone())
        .teardown(TeardownPolicy::Auto);
    let mut session = step("connect+DESCRIBE", s.connect_timeout, Session::describe(cam.url.clone(), options)).await?;
    let found = session.streams().iter().enumerate().find_map(|(i, st)| {
        (st.media() == "video").then(|| Codec::from_encoding(st.encoding_name()).map(|c| (i, c))).flatten()
    });
    let Some((video_i, codec)) = found else {
        let offered: Vec<String> =
            session.streams().iter().map(|st| format!("{}/{}", st.media(), st.encoding_name())).collect();
        return Err(Failure::BadMedia(format!(
            "no H.264, H.265 or MJPEG video in the SDP (offered: {})",
            offered.join(", ")
        )));
    };
    let transport = if cam.udp {
        Transport::Udp(UdpTransportOptions::default())
    } else {
        Transport::Tcp(TcpTransportOptions::default())
    };
    step(
        "SETUP",
        s.connect_timeout,
        session.setup(video_i, SetupOptions::default().transport(transport).frame_format(FrameFormat::SIMPLE)),
    )
    .await?;
    // Hour-scale jumps in RTP time are an error (restart, counted) instead of a timeline
    // silently broken for everything downstream.
    let jump = NonZeroU32::new(10).unwrap_or(NonZeroU32::MIN);
    let playing = step(
        "PLAY",
        s.connect_timeout,
        session.play(PlayOptions::default().enforce_timestamps_with_max_jump_secs(jump)),
    )
    .await?;
    let demuxed = playing.demuxed().map_err(|e| Failure::BadMedia(first_line(&e.to_string())))?;
    Ok((demuxed, video_i, codec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_map_to_states_and_paces() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(60));
        let auth = Failure::Status { code: 401, text: "401".into() };
        assert_eq!(auth.state(), StreamState::AuthFailed);
        for n in 1..6 {
            assert!(delay(&auth, n, min, max) >= AUTH_MIN, "a wrong password is never retried quickly");
        }
        let limit = Failure::Status { code: 453, text: "453".into() };
        assert_eq!(limit.state(), StreamState::SessionLimit);
        assert!(delay(&limit, 1, min, max) >= SESSION_LIMIT_MIN);
        assert_eq!(Failure::Status { code: 404, text: String::new() }.state(), StreamState::NotFound);
        assert_eq!(Failure::Refused(String::new()).state(), StreamState::Refused);
        assert_eq!(Failure::Stalled { after: min }.state(), StreamState::Stalled);
        assert_eq!(Failure::Closed.state(), StreamState::Backoff);
        let io = Failure::Other("reset".into());
        assert!(delay(&io, 1, min, max) <= Duration::from_secs(1));
        assert!(delay(&io, 20, min, max) <= max);
        assert!(Failure::TimestampJump(String::new()).quick_restart());
        assert!(!auth.quick_restart());
    }

    #[test]
    fn first_line_is_bounded() {
        let long = "x".repeat(1000) + "\nconn: ...";
        assert_eq!(first_line(&long).len(), 300);
        assert_eq!(first_line("a\nb"), "a");
    }
}
