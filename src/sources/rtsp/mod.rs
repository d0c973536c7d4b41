//! RTSP cameras: one supervised retina pull per camera (`pull`) feeding the media pipeline
//! (`crate::media`: health, keyframe cache, snapshots, and the diagnosis job per stream).
//!
//! The supervisor here keeps the pulls in step with the registry: every approved, enabled
//! device with `protocol = rtsp` and an `rtsp_url` has a pull; adding, changing or removing
//! one (config, API, CSV import) starts, restarts or stops it within a second, without a
//! restart of vigil. Start-up is staggered and connect attempts are capped globally, so
//! 2,000 cameras coming back together are not a connect storm. The API reads the
//! `media::StreamBoard` only; it never calls into a pull.

pub mod pull;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use retina::client::{Credentials, SessionGroup};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::media::{snapshot, StreamBoard};
use crate::registry::{Admission, DeviceKey, Protocol};

/// A camera as its pull needs it: the URL without credentials (safe to log) and the
/// credentials apart, as retina wants them.
#[derive(Clone)]
pub struct Camera {
    pub id: Arc<str>,
    pub key: DeviceKey,
    pub org_id: Option<String>,
    pub kind: &'static str,
    pub url: url::Url,
    pub creds: Option<Credentials>,
    pub udp: bool,
}

/// The settings of `[rtsp]`, parsed.
#[derive(Debug, Clone)]
pub struct Settings {
    pub udp: bool,
    pub stall_timeout: Duration,
    pub connect_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub max_connecting: usize,
    pub diagnosis_every: Option<Duration>,
    pub alarm_after: u32,
    pub snapshot_max_age: Duration,
}

impl Settings {
    pub fn from_config(c: &crate::config::Rtsp) -> Self {
        Settings {
            udp: c.transport == crate::config::RtspTransport::Udp,
            stall_timeout: c.stall_timeout,
            connect_timeout: c.connect_timeout,
            backoff_min: c.backoff_min,
            backoff_max: c.backoff_max,
            max_connecting: c.max_connecting.max(1),
            diagnosis_every: crate::config::parse_every(&c.diagnosis_every).ok().flatten(),
            alarm_after: c.diagnosis_alarm_after.max(1),
            snapshot_max_age: c.snapshot_max_age,
        }
    }
}

/// What every pull shares.
pub struct Context {
    pub settings: Settings,
    pub shared: super::Shared,
    pub connecting: Arc<tokio::sync::Semaphore>,
    pub pool: snapshot::Pool,
    /// The diagnosis every pulled stream shares (decode pool, alarms, the impaired set).
    pub diagnoser: Arc<crate::media::quality::Diagnoser>,
    groups: Mutex<HashMap<String, Arc<SessionGroup>>>,
}

impl Context {
    /// One retina `SessionGroup` per camera host (stale-session tracking and TEARDOWN are
    /// per server).
    fn session_group(&self, url: &url::Url) -> Arc<SessionGroup> {
        let host = format!("{}:{}", url.host_str().unwrap_or(""), url.port().unwrap_or(554));
        let mut g = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        g.entry(host.clone()).or_insert_with(|| Arc::new(SessionGroup::default().named(host))).clone()
    }
}

/// What a pull was started with; a change restarts it.
#[derive(Clone, PartialEq, Eq)]
struct Spec {
    url: String,
    password: Option<String>,
    org_id: Option<String>,
    kind: &'static str,
}

struct Running {
    key: DeviceKey,
    spec: Spec,
    cancel: CancellationToken,
}

/// Splits the credentials off a camera URL (retina wants them apart, and logs must not show
/// them); a device password overrides the URL's.
pub fn camera_url(raw: &str, password: Option<&str>) -> Result<(url::Url, Option<Credentials>), String> {
    let mut url = url::Url::parse(raw).map_err(|e| format!("not a URL: {e}"))?;
    if url.scheme() != "rtsp" {
        return Err(format!("scheme {:?} is not supported (rtsp:// only; retina has no RTSPS)", url.scheme()));
    }
    let decode = |s: &str| percent_decode(s);
    let user = decode(url.username());
    let pass = password.map(str::to_owned).or_else(|| url.password().map(decode));
    let creds = (!user.is_empty()).then(|| Credentials { username: user, password: pass.unwrap_or_default() });
    let _ = url.set_username("");
    let _ = url.set_password(None);
    Ok((url, creds))
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// How often a pull thread without cameras turns its runtime.
const IDLE_BEAT: Duration = Duration::from_millis(200);

/// The threads pulls run on: each a current-thread tokio runtime driving its share of the
/// cameras. Frames arrive 25 times a second per camera; on one thread a wake-up is a poll, not
/// a hand-off between worker threads (which cost more than the frame itself: measured in
/// BENCHMARKS.md). A pull lives on the shard its camera id hashes to.
struct Shards {
    handles: Vec<tokio::runtime::Handle>,
    trackers: Vec<TaskTracker>,
}

impl Shards {
    fn start(n: usize, cancel: &CancellationToken) -> std::io::Result<Shards> {
        let mut handles = Vec::with_capacity(n);
        let mut trackers = Vec::with_capacity(n);
        for i in 0..n.max(1) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let tracker = TaskTracker::new();
            handles.push(rt.handle().clone());
            trackers.push(tracker.clone());
            let cancel = cancel.clone();
            std::thread::Builder::new().name(format!("vigil-rtsp-{i}")).spawn(move || {
                // The runtime is driven in short turns on the `pull::POLL` beat and the thread
                // sleeps between them: packets arriving meanwhile wait in the socket buffers
                // instead of waking the thread once each (one wake-up per beat for all the
                // cameras of this thread, not one per packet; see BENCHMARKS.md).
                while !cancel.is_cancelled() {
                    rt.block_on(async { tokio::time::sleep(Duration::from_millis(1)).await });
                    // A thread with no camera looks for new ones less often.
                    std::thread::sleep(if tracker.is_empty() { IDLE_BEAT } else { pull::POLL });
                }
                // Let the pulls end (and retina send their TEARDOWNs) before the runtime
                // drops whatever is left.
                tracker.close();
                rt.block_on(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(3), tracker.wait()).await;
                });
            })?;
        }
        Ok(Shards { handles, trackers })
    }

    fn spawn(&self, id: &str, app: &TaskTracker, fut: impl std::future::Future<Output = ()> + Send + 'static) {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        id.hash(&mut h);
        let i = (h.finish() % self.handles.len() as u64) as usize;
        self.handles[i].spawn(app.track_future(self.trackers[i].track_future(fut)));
    }
}

/// Starts the supervisor and the pull threads, publishing on `board` (whose decode pool
/// snapshots and diagnosis use).
pub fn spawn(
    config: &crate::config::Rtsp,
    shared: super::Shared,
    diagnoser: Arc<crate::media::quality::Diagnoser>,
    board: StreamBoard,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> std::io::Result<()> {
    let settings = Settings::from_config(config);
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).div_ceil(2);
    let pool = board.pool().unwrap_or_else(|| snapshot::Pool::new(threads));
    let shards = Shards::start(config.threads, &cancel)?;
    let ctx = Arc::new(Context {
        connecting: Arc::new(tokio::sync::Semaphore::new(settings.max_connecting)),
        settings,
        shared,
        pool,
        diagnoser,
        groups: Mutex::default(),
    });
    let sup_tracker = tracker.clone();
    tracker.spawn(async move { supervise(ctx, board, shards, cancel, sup_tracker).await });
    Ok(())
}

/// Reconciles pulls with the registry once a second (when it changed); the stream-state
/// gauges are computed from the board at each scrape (`api::metrics`).
async fn supervise(
    ctx: Arc<Context>,
    board: StreamBoard,
    shards: Shards,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let mut running: HashMap<String, Running> = HashMap::new();
    let mut seen_generation = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = cancel.cancelled() => break,
        }
        let generation = ctx.shared.registry.read().generation();
        if seen_generation != Some(generation) {
            seen_generation = Some(generation);
            reconcile(&ctx, &board, &shards, &mut running, &cancel, &tracker);
        }
    }
    for (_, r) in running.drain() {
        r.cancel.cancel();
    }
    // Give TEARDOWNs a moment to go out (retina sends them as sessions drop).
    let groups: Vec<Arc<SessionGroup>> =
        ctx.groups.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
    for g in groups {
        let _ = tokio::time::timeout(Duration::from_secs(2), g.await_teardown()).await;
    }
}

fn reconcile(
    ctx: &Arc<Context>,
    board: &StreamBoard,
    shards: &Shards,
    running: &mut HashMap<String, Running>,
    cancel: &CancellationToken,
    tracker: &TaskTracker,
) {
    let mut wanted: HashMap<String, (DeviceKey, Spec)> = HashMap::new();
    {
        let cache = ctx.shared.registry.read();
        for d in cache.devices() {
            if d.protocol != Protocol::Rtsp || !d.enabled || d.admission != Admission::Approved {
                continue;
            }
            let Some(url) = &d.rtsp_url else { continue };
            let spec = Spec {
                url: url.clone(),
                password: d.password.clone(),
                org_id: d.org_id.clone(),
                kind: d.kind.as_str(),
            };
            wanted.insert(d.id.clone(), (d.key, spec));
        }
    }
    // Stop what is gone or changed.
    let mut stopped = 0;
    running.retain(|id, r| {
        let keep = wanted.get(id).is_some_and(|(_, spec)| *spec == r.spec);
        if !keep {
            r.cancel.cancel();
            stopped += 1;
            if !wanted.contains_key(id) {
                board.remove(id);
                ctx.diagnoser.impaired.set(r.key, None, false);
            }
        }
        keep
    });
    // Start what is new (or changed), spread over a window that grows with their number.
    let new: Vec<(String, DeviceKey, Spec)> = wanted
        .into_iter()
        .filter(|(id, _)| !running.contains_key(id))
        .map(|(id, (key, spec))| (id, key, spec))
        .collect();
    let window = Duration::from_millis((new.len() as u64).saturating_mul(5).min(10_000));
    let mut started = 0;
    for (id, key, spec) in new {
        let (url, creds) = match camera_url(&spec.url, spec.password.as_deref()) {
            Ok(v) => v,
            Err(e) => {
                warn!(camera = %id, error = %e, "RTSP camera URL refused; not pulling it.");
                continue;
            }
        };
        let health = board.add(&id, spec.kind);
        let camera = Camera {
            id: Arc::from(id.as_str()),
            key,
            org_id: spec.org_id.clone(),
            kind: spec.kind,
            url,
            creds,
            udp: ctx.settings.udp,
        };
        let child = cancel.child_token();
        shards.spawn(
            &id,
            tracker,
            pull::run(camera, ctx.clone(), health, crate::backoff::uniform(window), child.clone()),
        );
        running.insert(id, Running { key, spec, cancel: child });
        started += 1;
    }
    if started > 0 || stopped > 0 {
        info!(started, stopped, pulling = running.len(), "RTSP pulls reconciled with the registry.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_leave_the_url() {
        let (url, creds) = camera_url("rtsp://admin:p%40ss@10.0.0.5:554/Streaming/Channels/101", None).expect("valid");
        assert_eq!(url.as_str(), "rtsp://10.0.0.5:554/Streaming/Channels/101");
        let creds = creds.expect("creds");
        assert_eq!((creds.username.as_str(), creds.password.as_str()), ("admin", "p@ss"));
        let (_, creds) = camera_url("rtsp://admin:old@cam/1", Some("new")).expect("valid");
        assert_eq!(creds.map(|c| c.password), Some("new".into()));
        let (url, creds) = camera_url("rtsp://cam/1", None).expect("valid");
        assert!(creds.is_none());
        assert_eq!(url.as_str(), "rtsp://cam/1");
        assert!(camera_url("rtsps://cam/1", None).is_err());
        assert!(camera_url("not a url", None).is_err());
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%e4%bd%a0好%"), "你好%");
    }
}
