//! Patrol (轮巡): every `patrol.every` (and when an operator asks, for an org or one channel)
//! each approved GB/T 28181 channel is pulled through the media pipeline, watched until its
//! picture has a verdict (a diagnosis sample that passes, one that stays bad until alarmed, or
//! `hold` of playing), and let go. The outcome per channel — `ok`, `faults` with the faults,
//! `offline` (no SIP session, not INVITEd), `no_picture`, or the stream's failure state with
//! its error — is kept with a snapshot in the image store, in the database, and on the handle
//! the API reads.
//!
//! At most `concurrency` channels at once and at most `per_device` of one device; a device that
//! answers 486/503 (an NVR's preview links are full) has its share lowered for the round and
//! the channel is tried again later (twice), never hammered.

pub mod report;
pub mod store;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::clock::{now_ms, Millis};
use crate::images::ImageStore;
use crate::media::health::StreamState;
use crate::media::{channel_key, Demand, Holder, StreamBoard};
use crate::registry::{Admission, Protocol, Registry};
use crate::sessions::SessionBoard;

/// Results written per batch while a round runs.
const SAVE_EVERY: usize = 50;
/// A channel refused for the device's preview limit is tried again after this, at most
/// `RETRIES` times in a round.
const RETRY_AFTER: Duration = Duration::from_secs(10);
const RETRIES: u32 = 2;
/// How often a channel's stream is looked at while it is watched, at the latest (a keyframe,
/// a state change or a verdict wakes the look at once).
const LOOK_EVERY: Duration = Duration::from_millis(200);

/// The settings of `[patrol]` with what the channel's wait is bounded by.
#[derive(Debug, Clone)]
pub struct Settings {
    pub enabled: bool,
    pub every: Duration,
    pub first_after: Duration,
    pub hold: Duration,
    pub concurrency: usize,
    pub per_device: usize,
    /// `gb28181.invite_timeout + media_timeout`: the longest a stream takes to play or fail.
    pub start_within: Duration,
    /// Diagnosis samples until an alarm (`rtsp.diagnosis_alarm_after`).
    pub alarm_after: u32,
}

impl Settings {
    pub fn from_config(c: &crate::config::Config) -> Self {
        Settings {
            enabled: c.patrol.enabled && c.gb28181.enabled,
            every: c.patrol.every,
            first_after: c.patrol.first_after,
            hold: c.patrol.hold,
            concurrency: c.patrol.concurrency.max(1),
            per_device: c.patrol.per_device.max(1),
            start_within: c.gb28181.invite_timeout + c.gb28181.media_timeout,
            alarm_after: c.rtsp.diagnosis_alarm_after.max(1),
        }
    }
}

/// What a round covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    All,
    /// An org and everything under it.
    Org(String),
    /// Every channel of one device.
    Device(String),
    Channel {
        device: String,
        channel: String,
    },
}

impl Scope {
    pub fn label(&self) -> Option<String> {
        match self {
            Scope::All => None,
            Scope::Org(o) => Some(format!("org:{o}")),
            Scope::Device(d) => Some(format!("device:{d}")),
            Scope::Channel { device, channel } => Some(format!("channel:{device}/{channel}")),
        }
    }
}

/// One round as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    pub id: String,
    /// `schedule` or `operator`.
    pub trigger: String,
    pub scope: Option<String>,
    pub started_at: Millis,
    pub ended_at: Option<Millis>,
    pub total: usize,
    pub done: usize,
    /// Channels by outcome.
    pub counts: BTreeMap<String, u64>,
    pub items: Vec<Item>,
}

/// What one channel showed.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    pub device_id: String,
    pub channel_id: String,
    pub name: Option<String>,
    pub org_id: Option<String>,
    pub at: Millis,
    /// `ok`, `faults`, `offline`, `no_picture`, or a stream failure state (`invite_timeout`,
    /// `invite_refused`, `no_media`, `ssrc_mismatch`, `bad_media`, `stalled`,
    /// `bye_from_device`).
    pub outcome: String,
    pub error: Option<String>,
    pub faults: Vec<String>,
    /// The snapshot's hash in the image store (`GET /api/v1/images/{hash}`).
    pub image: Option<String>,
    pub first_frame_ms: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("patrol is off (patrol.enabled, or GB/T 28181 is disabled)")]
    Off,
    #[error("a patrol round is running; it must end before another starts")]
    Running,
}

struct Start {
    scope: Scope,
    trigger: &'static str,
}

/// The API's handle: start a round, read the last or running one.
#[derive(Clone)]
pub struct Patrol {
    tx: Option<mpsc::Sender<Start>>,
    current: Arc<RwLock<Option<Round>>>,
    running: Arc<std::sync::atomic::AtomicBool>,
    next_at: Arc<std::sync::atomic::AtomicI64>,
}

impl Patrol {
    /// A handle for a gateway without patrol.
    pub fn off() -> Self {
        Patrol { tx: None, current: Arc::default(), running: Arc::default(), next_at: Arc::default() }
    }

    pub fn start(&self, scope: Scope) -> Result<(), StartError> {
        use std::sync::atomic::Ordering;
        let tx = self.tx.as_ref().ok_or(StartError::Off)?;
        // Running from now: a second request before the scheduler takes this one is refused.
        if self.running.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return Err(StartError::Running);
        }
        tx.try_send(Start { scope, trigger: "operator" }).map_err(|_| {
            self.running.store(false, Ordering::Release);
            StartError::Running
        })
    }

    /// The running round, else the last one (items included).
    pub fn current(&self) -> Option<Round> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn running(&self) -> bool {
        self.running.load(std::sync::atomic::Ordering::Acquire)
    }

    /// When the next scheduled round starts (`None` when patrol is off).
    pub fn next_at(&self) -> Option<Millis> {
        let at = self.next_at.load(std::sync::atomic::Ordering::Acquire);
        (self.tx.is_some() && at > 0).then_some(at)
    }
}

/// What a round needs.
pub struct Deps {
    pub registry: Registry,
    pub board: StreamBoard,
    pub sessions: SessionBoard,
    pub images: ImageStore,
}

struct Ctx {
    settings: Settings,
    deps: Deps,
}

/// Starts the scheduler; answers the handle the API uses.
pub async fn spawn(settings: Settings, deps: Deps, cancel: CancellationToken, tracker: &TaskTracker) -> Patrol {
    if !settings.enabled {
        return Patrol::off();
    }
    let last = match store::last_round(deps.registry.db()).await {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "Cannot read the last patrol round; it is shown again after the next one.");
            None
        }
    };
    let (tx, rx) = mpsc::channel(1);
    let handle =
        Patrol { tx: Some(tx), current: Arc::new(RwLock::new(last)), running: Arc::default(), next_at: Arc::default() };
    let ctx = Arc::new(Ctx { settings, deps });
    tracker.spawn(schedule(ctx, handle.clone(), rx, cancel));
    handle
}

async fn schedule(ctx: Arc<Ctx>, handle: Patrol, mut starts: mpsc::Receiver<Start>, cancel: CancellationToken) {
    let mut next = Instant::now() + ctx.settings.first_after;
    loop {
        let at = now_ms() + next.saturating_duration_since(Instant::now()).as_millis() as i64;
        handle.next_at.store(at, std::sync::atomic::Ordering::Release);
        let start = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep_until(next) => {
                next = Instant::now() + ctx.settings.every;
                Start { scope: Scope::All, trigger: "schedule" }
            }
            s = starts.recv() => match s {
                Some(s) => s,
                None => return,
            },
        };
        if start.trigger == "schedule"
            && handle
                .running
                .compare_exchange(
                    false,
                    true,
                    std::sync::atomic::Ordering::AcqRel,
                    std::sync::atomic::Ordering::Acquire,
                )
                .is_err()
        {
            continue; // an operator's round is about to run
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = run_round(&ctx, &handle, start) => {}
        }
        handle.running.store(false, std::sync::atomic::Ordering::Release);
    }
}

/// A channel to look at.
#[derive(Debug, Clone)]
struct Target {
    device: String,
    channel: String,
    name: Option<String>,
    org_id: Option<String>,
}

/// The approved, enabled GB/T 28181 channels in `scope` (a device without catalog channels
/// is its own channel).
/// Whether `org` is `root` or under it.
pub fn in_org(cache: &crate::registry::Cache, org: Option<&str>, root: &str) -> bool {
    let mut cur = org.map(str::to_owned);
    for _ in 0..16 {
        match cur {
            Some(ref o) if o == root => return true,
            Some(ref o) => cur = cache.org(o).and_then(|x| x.parent_id.clone()),
            None => return false,
        }
    }
    false
}

fn targets(registry: &Registry, scope: &Scope) -> Vec<Target> {
    let cache = registry.read();
    let in_org = |org: Option<&str>, root: &str| in_org(&cache, org, root);
    let mut out = Vec::new();
    for d in cache.devices() {
        if d.protocol != Protocol::Gb28181 || d.admission != Admission::Approved || !d.enabled {
            continue;
        }
        match scope {
            Scope::Org(root) if !in_org(d.org_id.as_deref(), root) => continue,
            Scope::Channel { device, .. } | Scope::Device(device) if device != &d.id => continue,
            _ => {}
        }
        let channels = cache.channels(&d.id).filter(|c| !c.is_empty());
        let list: Vec<(String, Option<String>)> = match &channels {
            Some(chs) => chs.iter().map(|c| (c.id.clone(), Some(c.name.clone()))).collect(),
            None => vec![(d.id.clone(), Some(d.name.clone()))],
        };
        for (channel, name) in list {
            if let Scope::Channel { channel: want, .. } = scope {
                if &channel != want {
                    continue;
                }
            }
            out.push(Target { device: d.id.clone(), channel, name, org_id: d.org_id.clone() });
        }
    }
    out.sort_by(|a, b| (&a.device, &a.channel).cmp(&(&b.device, &b.channel)));
    out
}

async fn run_round(ctx: &Arc<Ctx>, handle: &Patrol, start: Start) {
    let list = targets(&ctx.deps.registry, &start.scope);
    let db = ctx.deps.registry.db();
    let mut round = Round {
        id: uuid::Uuid::now_v7().to_string(),
        trigger: start.trigger.into(),
        scope: start.scope.label(),
        started_at: now_ms(),
        ended_at: None,
        total: list.len(),
        done: 0,
        counts: BTreeMap::new(),
        items: Vec::with_capacity(list.len()),
    };
    info!(round = %round.id, trigger = start.trigger, scope = ?round.scope, channels = list.len(), "Patrol round started.");
    if let Err(e) = store::save_round(db, &round).await {
        warn!(error = %e, "Cannot store the patrol round; its results are shown but not kept.");
    }
    *handle.current.write().unwrap_or_else(|p| p.into_inner()) = Some(round.clone());
    let s = &ctx.settings;
    let mut queue: VecDeque<(Target, u32, Instant)> = list.into_iter().map(|t| (t, 0, Instant::now())).collect();
    let mut cap: HashMap<String, usize> = HashMap::new();
    let mut busy: HashMap<String, usize> = HashMap::new();
    let mut running: JoinSet<(Target, u32, Item)> = JoinSet::new();
    let mut unsaved: Vec<Item> = Vec::new();
    loop {
        let now = Instant::now();
        while running.len() < s.concurrency {
            let free = |t: &Target| {
                busy.get(&t.device).copied().unwrap_or(0) < cap.get(&t.device).copied().unwrap_or(s.per_device)
            };
            let Some(i) = queue.iter().position(|(t, _, at)| *at <= now && free(t)) else { break };
            let Some((t, tries, _)) = queue.remove(i) else { break };
            *busy.entry(t.device.clone()).or_default() += 1;
            let ctx = ctx.clone();
            running.spawn(async move {
                let item = look(&ctx, &t).await;
                (t, tries, item)
            });
        }
        if running.is_empty() && queue.is_empty() {
            break;
        }
        let done = if running.is_empty() {
            // Only channels waiting for their retry time.
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        } else {
            match running.join_next().await {
                Some(Ok(done)) => done,
                Some(Err(e)) => {
                    warn!(error = %e, "A patrol check ended abnormally.");
                    continue;
                }
                None => continue,
            }
        };
        let (t, tries, item) = done;
        let in_flight = busy.get(&t.device).copied().unwrap_or(1);
        if let Some(n) = busy.get_mut(&t.device) {
            *n = n.saturating_sub(1);
        }
        if preview_limit(&item) && tries < RETRIES {
            // The device's preview links are full: fewer of its channels at once, this one later.
            let c = cap.entry(t.device.clone()).or_insert(s.per_device);
            *c = in_flight.saturating_sub(1).clamp(1, *c);
            info!(device = %t.device, channel = %t.channel, per_device = *c, "Patrol: the device's preview links are full; its channel is tried again later.");
            queue.push_back((t, tries + 1, Instant::now() + RETRY_AFTER));
            continue;
        }
        *round.counts.entry(item.outcome.clone()).or_default() += 1;
        round.done += 1;
        unsaved.push(item.clone());
        round.items.push(item);
        {
            let mut g = handle.current.write().unwrap_or_else(|p| p.into_inner());
            if let Some(live) = g.as_mut().filter(|r| r.id == round.id) {
                *live = round.clone();
            }
        }
        if unsaved.len() >= SAVE_EVERY {
            if let Err(e) = store::save_items(db, &round.id, &unsaved).await {
                warn!(error = %e, "Cannot store patrol results.");
            }
            unsaved.clear();
        }
    }
    round.ended_at = Some(now_ms());
    round.items.sort_by(|a, b| (&a.device_id, &a.channel_id).cmp(&(&b.device_id, &b.channel_id)));
    if let Err(e) = store::save_items(db, &round.id, &unsaved).await {
        warn!(error = %e, "Cannot store patrol results.");
    }
    if let Err(e) = store::save_round(db, &round).await {
        warn!(error = %e, "Cannot store the patrol round.");
    }
    if let Err(e) = store::prune(db, now_ms() - store::KEEP_MS).await {
        warn!(error = %e, "Cannot prune old patrol rounds.");
    }
    info!(round = %round.id, channels = round.total, counts = ?round.counts, took_s = (now_ms() - round.started_at) / 1000, "Patrol round ended.");
    *handle.current.write().unwrap_or_else(|p| p.into_inner()) = Some(round);
}

/// A refusal for the device's preview-link limit (486 Busy Here, 503 Service Unavailable).
fn preview_limit(item: &Item) -> bool {
    item.outcome == StreamState::InviteRefused.as_str()
        && item.error.as_deref().is_some_and(|e| e.starts_with("SIP 486") || e.starts_with("SIP 503"))
}

/// Pulls one channel until its picture has a verdict, keeps a snapshot, lets it go.
async fn look(ctx: &Ctx, t: &Target) -> Item {
    let s = &ctx.settings;
    let board = &ctx.deps.board;
    let key = channel_key(&t.device, &t.channel);
    let mut item = Item {
        device_id: t.device.clone(),
        channel_id: t.channel.clone(),
        name: t.name.clone(),
        org_id: t.org_id.clone(),
        at: now_ms(),
        outcome: "no_picture".into(),
        error: None,
        faults: Vec::new(),
        image: None,
        first_frame_ms: None,
    };
    if ctx.deps.sessions.get(&t.device).is_none() {
        item.outcome = "offline".into();
        item.error = Some("the device has no SIP session (not registered)".into());
        return item;
    }
    let before = board.health(&key).map(|h| (h.state, h.since, h.attempts));
    let started = now_ms();
    let demand =
        |hold: Duration| Demand { device: t.device.clone(), channel: t.channel.clone(), hold, holder: Holder::Patrol };
    let bound = s.start_within + s.hold + Duration::from_secs(2);
    if let Err(e) = board.demand(demand(bound)) {
        item.error = Some(e.to_string());
        return item;
    }
    let deadline = Instant::now() + bound;
    let mut playing_since: Option<Instant> = None;
    let mut played = false;
    loop {
        board.changed(&key, LOOK_EVERY).await;
        let now = Instant::now();
        let Some(h) = board.health(&key) else {
            if now >= deadline {
                break;
            }
            continue;
        };
        if h.state.is_failure() && Some((h.state, h.since, h.attempts)) != before {
            item.outcome = h.state.as_str().into();
            item.error = h.error.clone();
            break;
        }
        if h.state == StreamState::Playing {
            played = true;
            item.first_frame_ms = h.time_to_first_frame_ms;
            let since = *playing_since.get_or_insert(now);
            // A verdict of this pull: a good sample, or a bad one that stayed bad to an alarm.
            if let Some(q) = h.quality.as_ref().filter(|q| q.at >= started) {
                let settled = q.faults.is_empty() || q.alarmed || q.consecutive_bad >= s.alarm_after;
                if settled || now.duration_since(since) >= s.hold {
                    item.faults = q.faults.iter().map(|f| (*f).to_owned()).collect();
                    item.outcome = if item.faults.is_empty() { "ok" } else { "faults" }.into();
                    break;
                }
            } else if now.duration_since(since) >= s.hold {
                item.outcome = "ok".into();
                item.error = Some(format!("not diagnosed: no second keyframe within {} s", s.hold.as_secs()));
                break;
            }
        }
        if now >= deadline {
            item.error = Some(format!("no picture within {} s", bound.as_secs()));
            break;
        }
    }
    if played {
        if let Ok(jpeg) = board.snapshot(&key).await {
            match ctx.deps.images.put(jpeg.as_ref().clone()).await {
                Ok(stored) => item.image = Some(stored.hash),
                Err(e) => warn!(error = %e, "Cannot keep the patrol snapshot."),
            }
        }
    }
    let _ = board.demand(demand(Duration::ZERO));
    item.at = now_ms();
    item
}
