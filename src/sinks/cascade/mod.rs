//! GB/T 28181 cascade: vigil as a lower platform to the district's and the city's platforms
//! (`[[upstreams]] protocol = "gb28181"`). One SIP user agent per upstream, on its own
//! socket (`listen`; UDP, or TCP with the connection to the upper kept: `link`), so an upper's
//! requests come back to it and nothing of the device side is shared: it registers with
//! digest and keeps the registration up (`register`), answers the upper's OPTIONS and its
//! `Query` for `Catalog` (paced MESSAGEs of `CATALOG_BATCH` items, the next after the upper's
//! 200 or a fallback timer; `catalog`), `DeviceInfo` and `DeviceStatus`, accepts its catalog SUBSCRIBE and tells it every channel's status change in
//! NOTIFYs (compared every 250 ms with what it was last told, so a flapping channel's last
//! state wins; the channels built again only when `Catalog::version` says they may have
//! changed, or every 10 s; everything again after a re-registration, a new subscription or a NOTIFY lost;
//! without a subscription too where `notify_without_subscription`), and publishes its state
//! for `GET /api/v1/relay/targets`. The upper's INVITEs play channels (`play` holds the
//! dialogs, `forward` sends the video as PS over RTP).
//! Requests go out as RFC 3261 non-INVITE client transactions (over UDP retransmitted from T1
//! doubling to T2; given up at Timer F, or at once when the TCP connection they went on is
//! lost); answers are taken from the upper's host only.

pub mod alarm;
pub mod catalog;
pub mod forward;
pub mod ids;
pub mod link;
pub mod play;
pub mod register;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::clock::{now_ms, Millis};
use crate::outbox::runner::{SessionStatus, TargetStatus, UpperView};
use crate::protocol::sip::message::{self, Message, StartLine};
use crate::protocol::sip::transactions::{T1_MS, T2_MS, TIMER_F_MS};
use register::{Kind, Phase, Registration, Settings};

/// Methods the cascade's user agent answers.
const ALLOW: &str = "REGISTER, MESSAGE, OPTIONS, SUBSCRIBE, INVITE, ACK, BYE, CANCEL";
/// Catalog items per MESSAGE.
const CATALOG_BATCH: usize = 8;
/// The next catalog MESSAGE goes this long after the last if the upper has not answered it.
const CATALOG_FALLBACK_MS: Millis = 1_000;
/// How often channel status is compared with what the upper was told.
const STATUS_EVERY: Duration = Duration::from_millis(250);
/// Requests queued for the upper at most (a catalog of 160,000 channels); past it the oldest
/// are dropped, so an upper that queries in a loop cannot grow vigil's memory.
const MAX_QUEUED: usize = 20_000;
/// The longest catalog subscription granted.
const SUBSCRIPTION_MAX_S: i64 = 3600;

/// What one upper may see: devices of these orgs (and their sub-orgs) and kinds; empty: all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    pub orgs: Vec<String>,
    pub kinds: Vec<crate::domain::DeviceKind>,
    /// How the orgs appear in its catalog.
    pub tree: crate::config::CatalogTree,
    /// Community devices (MQTT) appear too.
    pub community: bool,
}

/// The channels an upper may see within its scope, as they are now (from the registry and
/// presence; given by the wiring, so the sink reads no source's tables), and a number that
/// changes whenever they may have (so the status loop builds them only then).
#[derive(Clone)]
pub struct Catalog {
    build: BuildFn,
    version: VersionFn,
}

type BuildFn = Arc<dyn Fn(Scope) -> Pin<Box<dyn Future<Output = Vec<catalog::Item>> + Send>> + Send + Sync>;
type VersionFn = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = u64> + Send>> + Send + Sync>;

impl Catalog {
    /// `build` answers the channels of a scope; `version` a number that differs whenever any
    /// scope's channels, their status or their picture faults may differ.
    pub fn new(build: BuildFn, version: VersionFn) -> Catalog {
        Catalog { build, version }
    }

    pub fn build(&self, scope: Scope) -> Pin<Box<dyn Future<Output = Vec<catalog::Item>> + Send>> {
        (self.build)(scope)
    }

    pub async fn version(&self) -> u64 {
        (self.version)().await
    }
}

/// The status loop builds the channels again at least this often, however `Catalog::version`
/// stands (what it cannot see: a GB/T 28181 id that could not be stored is tried again).
const REBUILD_AT_LEAST_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen for the upper platform's SIP on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// One configured upper platform, its socket bound.
pub struct Cascade {
    settings: Settings,
    socket: link::Bound,
    advertise: Option<String>,
    notify_without_subscription: bool,
    scope: Scope,
    /// Alarms from the outbox (`alarm::AlarmSink`), when this upstream takes them.
    alarms: Option<tokio::sync::mpsc::Receiver<alarm::Job>>,
    registered: Arc<std::sync::atomic::AtomicBool>,
    pick_ssrc: bool,
    /// The streams an upper's INVITE plays (none: INVITEs answered 488).
    media: Option<Arc<forward::Media>>,
}

impl Cascade {
    /// From `[[upstreams]]` (already validated): binds `listen` (default `0.0.0.0:5061`).
    pub fn new(u: &crate::config::Upstream, gateway_id: &str) -> Result<Cascade, Error> {
        let server_addr: SocketAddr =
            u.server_addr.parse().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 5060)));
        let domain = if u.domain.is_empty() {
            u.server_id.get(..10).unwrap_or(&u.server_id).to_owned()
        } else {
            u.domain.clone()
        };
        let user_id = if u.user_id.is_empty() { gateway_id.to_owned() } else { u.user_id.clone() };
        let transport = link::Transport::parse(&u.transport).unwrap_or_default();
        let settings = Settings {
            name: u.name.clone(),
            transport,
            server_id: u.server_id.clone(),
            domain,
            server_addr,
            user_id,
            password: u.password.clone(),
            expires: u.expires.unwrap_or(Duration::from_secs(3600)),
            keepalive: u.keepalive_interval.unwrap_or(Duration::from_secs(60)),
            misses: if u.keepalive_misses == 0 { 3 } else { u.keepalive_misses },
        };
        let addr: SocketAddr = if u.listen.is_empty() {
            SocketAddr::from(([0, 0, 0, 0], 5061))
        } else {
            u.listen.parse().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 5061)))
        };
        let socket = link::Bound::bind(transport, addr).map_err(|source| Error::Bind { addr, source })?;
        Ok(Cascade {
            settings,
            socket,
            advertise: (!u.advertise.is_empty()).then(|| u.advertise.clone()),
            notify_without_subscription: u.notify_without_subscription,
            scope: Scope {
                orgs: u.scope_orgs.clone(),
                kinds: u.scope_kinds.clone(),
                tree: u.catalog_tree,
                community: u.catalog_community,
            },
            alarms: None,
            registered: Arc::default(),
            pick_ssrc: u.pick_ssrc,
            media: None,
        })
    }

    /// The stream board the upper's INVITEs play from; a channel gets `ready_wait` to give a
    /// keyframe.
    pub fn set_media(&mut self, board: crate::media::StreamBoard, ready_wait: Duration) {
        self.media = Some(Arc::new(forward::Media { board, ready_wait }));
    }

    /// The outbox side of this upstream's alarms (`Notify/Alarm` MESSAGEs).
    pub fn alarm_sink(&mut self, tz: chrono_tz::Tz, given: Option<Arc<ids::Ids>>) -> alarm::AlarmSink {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        self.alarms = Some(rx);
        alarm::AlarmSink::new(tx, self.registered.clone(), tz, self.settings.server_id.clone(), given)
    }
}

/// What goes to the upper one at a time, paced by its answers.
enum Outgoing {
    /// A MESSAGE answering a query (DeviceInfo, DeviceStatus).
    Message(Vec<u8>),
    /// A MESSAGE with a batch of the catalog (a newer query's catalog supersedes it).
    Catalog(Vec<u8>),
    /// A catalog NOTIFY of channels' status.
    Notify(Vec<u8>),
}

/// A request in flight.
struct Outstanding {
    kind: Kind,
    /// A status NOTIFY: unanswered, the upper's view is pushed whole again.
    notify: bool,
    /// An alarm: who waits for the upper's answer.
    reply: Option<tokio::sync::oneshot::Sender<Option<u16>>>,
    bytes: Vec<u8>,
    to: SocketAddr,
    next_send: Millis,
    interval: Millis,
    deadline: Millis,
}

impl Outstanding {
    /// A request just sent to `to`: retransmitted from T1 when the transport is `unreliable`,
    /// given up at Timer F.
    fn new(kind: Kind, bytes: Vec<u8>, to: SocketAddr, now: Millis, unreliable: bool) -> Self {
        Outstanding {
            kind,
            notify: false,
            reply: None,
            bytes,
            to,
            next_send: if unreliable { now + T1_MS } else { Millis::MAX },
            interval: T1_MS,
            deadline: now + TIMER_F_MS,
        }
    }
}

/// Runs the user agent of one upstream until `cancel`.
pub async fn run(
    c: Cascade,
    catalog: Catalog,
    status: Arc<Mutex<TargetStatus>>,
    metrics: crate::telemetry::Metrics,
    cancel: CancellationToken,
) {
    let name = c.settings.name.clone();
    let upper = c.settings.server_addr;
    let transport = c.settings.transport;
    let unreliable = transport.unreliable();
    let mut link = match link::Link::new(c.socket, upper, &cancel) {
        Ok(l) => l,
        Err(e) => {
            warn!(upstream = %name, error = %e, "Cascade socket unusable; this upstream stays unregistered.");
            return;
        }
    };
    let port = link.port();
    let advertise = match c.advertise {
        Some(a) => a,
        None => format!(
            "{}:{port}",
            crate::net::route_to(upper).await.unwrap_or_else(|| std::net::Ipv4Addr::LOCALHOST.into())
        ),
    };
    info!(upstream = %name, upper = %upper, transport = transport.via(), advertise = %advertise, "GB/T 28181 cascade: registering to the upper platform.");
    let tag = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
    let (mut plays, mut play_events) =
        play::Plays::new(c.media, c.pick_ssrc, c.settings.user_id.clone(), advertise.clone(), transport);
    let mut reg = Registration::new(c.settings, advertise, now_ms());
    let mut outstanding: HashMap<String, Outstanding> = HashMap::new();
    let mut last_phase = None;
    // Catalog bodies waiting, and the one in flight (its branch, when it went).
    let mut answers: VecDeque<Outgoing> = VecDeque::new();
    let mut answer_in_flight: Option<(String, Millis)> = None;
    // The upper's catalog subscription, what it was last told of each channel (event, name),
    // and whether to tell it everything again (after a (re-)registration, a subscription or a
    // lost NOTIFY; what it was told stays, so a channel gone meanwhile is still told DEL).
    let mut sub: Option<register::Subscription> = None;
    let mut told: HashMap<String, (&'static str, String)> = HashMap::new();
    let mut full = true;
    // The catalog's version and whether the upper wanted status when the channels were last
    // built, and when that was: the same again (and nothing to tell in full) is nothing to do.
    let mut built: Option<(u64, bool, tokio::time::Instant)> = None;
    let mut notify_sn: u64 = 0;
    let mut alarms = c.alarms;
    let registered = c.registered;
    let scope = c.scope;
    let mut status_tick = tokio::time::interval(STATUS_EVERY);
    status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let now = now_ms();
        let mut requests = reg.due(now);
        let mut notifies = std::collections::HashSet::new();
        if answer_in_flight.as_ref().is_none_or(|(_, at)| now >= at + CATALOG_FALLBACK_MS) {
            answer_in_flight = None;
            if let Some(out) = answers.pop_front() {
                let r = match out {
                    Outgoing::Message(body) | Outgoing::Catalog(body) => reg.message(body),
                    Outgoing::Notify(body) => {
                        let r = reg.notify(sub.as_ref().filter(|d| d.until > now), body, now);
                        notifies.insert(r.branch.clone());
                        r
                    }
                };
                answer_in_flight = Some((r.branch.clone(), now));
                requests.push(r);
            }
        }
        for r in requests {
            link.send(&r.bytes, upper).await;
            let notify = notifies.contains(&r.branch);
            outstanding
                .insert(r.branch, Outstanding { notify, ..Outstanding::new(r.kind, r.bytes, upper, now, unreliable) });
        }
        if publish(&reg, &status, &name, &mut last_phase) {
            full = true; // registered anew: bring the upper back to the true state
        }
        let is_registered = reg.view().phase == Phase::Registered;
        registered.store(is_registered, std::sync::atomic::Ordering::Release);
        metrics.cascade_registered.with_label_values(&[&name]).set(i64::from(is_registered));
        metrics.cascade_plays.with_label_values(&[&name]).set(plays.len() as i64);
        let next_alarm = async {
            match alarms.as_mut() {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        let wake = outstanding
            .values()
            .map(|o| o.next_send.min(o.deadline))
            .chain(reg.next_due())
            .chain(plays.next_due())
            .chain(answer_in_flight.as_ref().filter(|_| !answers.is_empty()).map(|(_, at)| at + CATALOG_FALLBACK_MS))
            .chain((answer_in_flight.is_none() && !answers.is_empty()).then_some(now))
            .min()
            .unwrap_or(now + 1_000)
            .clamp(now, now + 1_000);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis((wake - now).max(0) as u64)) => {
                let now = now_ms();
                for o in plays.due(now) {
                    link.send(&o.bytes, o.to).await;
                }
                let mut gone = Vec::new();
                for (branch, o) in outstanding.iter_mut() {
                    if now >= o.deadline {
                        gone.push(branch.clone());
                    } else if now >= o.next_send {
                        link.send(&o.bytes, o.to).await;
                        o.interval = (o.interval * 2).min(T2_MS);
                        o.next_send = now + o.interval;
                    }
                }
                for b in gone {
                    if let Some(o) = outstanding.remove(&b) {
                        debug!(upstream = %name, request = ?o.kind, "The upper platform did not answer (Timer F).");
                        reg.timed_out(o.kind, now);
                        full |= unanswered(o, &metrics, &name);
                    }
                }
            }
            Some(e) = play_events.recv() => {
                let now = now_ms();
                let (answer, bye) = plays.event(e, now);
                if let Some(o) = answer {
                    link.send(&o.bytes, o.to).await;
                }
                if let Some(b) = bye {
                    link.send(&b.bytes, b.to).await;
                    outstanding.insert(b.branch, Outstanding::new(Kind::Bye, b.bytes, b.to, now, unreliable));
                }
            }
            job = next_alarm => {
                let Some(job) = job else { alarms = None; continue };
                if reg.view().phase != Phase::Registered {
                    let _ = job.answer.send(None);
                    continue;
                }
                let r = reg.message(job.body);
                let now = now_ms();
                link.send(&r.bytes, upper).await;
                let reply = Some(job.answer);
                outstanding.insert(r.branch, Outstanding { reply, ..Outstanding::new(r.kind, r.bytes, upper, now, unreliable) });
            }
            _ = status_tick.tick() => {
                let now = now_ms();
                if sub.as_ref().is_some_and(|d| d.until <= now) {
                    info!(upstream = %name, "The upper platform's catalog subscription ran out.");
                    sub = None;
                }
                let wanted = sub.is_some() || c.notify_without_subscription;
                if reg.view().phase != Phase::Registered {
                    continue;
                }
                let version = catalog.version().await;
                let unchanged = built.is_some_and(|(v, w, at)| {
                    v == version && w == wanted && at.elapsed() < REBUILD_AT_LEAST_EVERY
                });
                if unchanged && !full {
                    // Nothing the upper sees changed: only its subscription and plays may have.
                    if let Some(view) = status
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .session
                        .as_mut()
                        .and_then(|s| s.view.as_mut())
                    {
                        view.subscribed_until = sub.as_ref().map(|d| d.until);
                        view.plays = plays.len();
                        view.told_on = wanted.then(|| told.values().filter(|(e, _)| *e != "OFF").count());
                    }
                    continue;
                }
                built = Some((version, wanted, tokio::time::Instant::now()));
                let mut items: HashMap<String, catalog::Item> =
                    catalog.build(scope.clone()).await.into_iter().filter(|i| i.node.is_none()).map(|i| (i.id.clone(), i)).collect();
                let now_view: HashMap<String, (&'static str, String)> =
                    items.iter().map(|(id, i)| (id.clone(), (i.event(), i.name.clone()))).collect();
                let upper_view = UpperView {
                    channels: now_view.len(),
                    on: now_view.values().filter(|(e, _)| *e != "OFF").count(),
                    told_on: (wanted && !full).then(|| told.values().filter(|(e, _)| *e != "OFF").count()),
                    subscribed_until: sub.as_ref().map(|d| d.until),
                    plays: plays.len(),
                };
                if let Some(s) = status.lock().unwrap_or_else(|p| p.into_inner()).session.as_mut() {
                    s.view = Some(upper_view);
                }
                if !wanted {
                    continue;
                }
                // Everything again (ON/OFF of each) after a (re-)registration, a new
                // subscription or a lost NOTIFY; else what changed: a channel new to the upper
                // as ADD with its item, one gone as DEL, a status as ON/OFF.
                let mut changes: Vec<catalog::Change> = now_view
                    .iter()
                    .filter(|(id, now)| full || told.get(*id) != Some(*now))
                    .filter_map(|(id, (e, name))| match told.get(id) {
                        // Renamed: the whole item again.
                        Some((_, told_name)) if told_name != name => {
                            items.remove(id).map(|i| catalog::Change::Update(Box::new(i)))
                        }
                        Some(_) => Some(catalog::Change::Status(id.clone(), e)),
                        // New to the upper; in a full push after a (re-)registration, the upper
                        // has its catalog: its status is enough.
                        None if full => Some(catalog::Change::Status(id.clone(), e)),
                        None => items.remove(id).map(|i| catalog::Change::Add(Box::new(i))),
                    })
                    .collect();
                changes.extend(told.keys().filter(|id| !now_view.contains_key(*id)).map(|id| catalog::Change::Del(id.clone())));
                changes.sort_by(|a, b| change_id(a).cmp(change_id(b)));
                if full {
                    // The whole view goes again: status NOTIFYs still queued are superseded.
                    answers.retain(|o| !matches!(o, Outgoing::Notify(_)));
                    full = false;
                }
                if !changes.is_empty() {
                    notify_sn += 1;
                    debug!(upstream = %name, changes = changes.len(), "Channel status to the upper platform.");
                    for body in catalog::notifies(notify_sn, reg.user_id(), &changes, CATALOG_BATCH) {
                        answers.push_back(Outgoing::Notify(body));
                    }
                }
                if answers.len() > MAX_QUEUED {
                    // An upper slower than the district's changes: what is queued for it is
                    // dropped and the whole view goes again next time (coalesced, last state).
                    answers.retain(|o| !matches!(o, Outgoing::Notify(_)));
                    full = true;
                    warn!(upstream = %name, "Status NOTIFYs queued past the bound for a slow upper platform; the whole view goes again.");
                }
                told = now_view;
            }
            incoming = link.recv() => {
                let (bytes, from) = match incoming {
                    link::Incoming::Message(bytes, from) => (bytes, from),
                    link::Incoming::Lost { peer, why, unframeable } => {
                        if unframeable {
                            metrics.cascade_requests.with_label_values(&[&name, "unreadable", "none"]).inc();
                        }
                        // What went on that connection will not be answered.
                        let lost: Vec<String> =
                            outstanding.iter().filter(|(_, o)| o.to == peer).map(|(b, _)| b.clone()).collect();
                        for b in lost {
                            if answer_in_flight.as_ref().is_some_and(|(x, _)| *x == b) {
                                answer_in_flight = None;
                            }
                            if let Some(o) = outstanding.remove(&b) {
                                full |= unanswered(o, &metrics, &name);
                            }
                        }
                        if peer == upper {
                            info!(upstream = %name, why = %why, "The SIP connection to the upper platform ended.");
                            reg.lost(format!("TCP connection to the upper: {why}"), now_ms());
                        }
                        continue;
                    }
                };
                if from.ip() != upper.ip() {
                    debug!(upstream = %name, peer = %from, "SIP from another host than the upper platform, ignored.");
                    continue;
                }
                let Ok(msg) = Message::parse(&bytes) else {
                    debug!(upstream = %name, peer = %from, "Unreadable SIP from the upper platform, ignored.");
                    metrics.cascade_requests.with_label_values(&[&name, "unreadable", "none"]).inc();
                    continue;
                };
                match &msg.start {
                    StartLine::Response { code, .. } => {
                        let code = *code;
                        if code < 200 {
                            continue;
                        }
                        let Some(branch) = msg.branch() else { continue };
                        if answer_in_flight.as_ref().is_some_and(|(b, _)| b == branch) {
                            answer_in_flight = None; // the upper took it: the next one now
                        }
                        let Some(mut o) = outstanding.remove(branch) else { continue };
                        if o.notify {
                            metrics.cascade_notifies.with_label_values(&[&name, "answered"]).inc();
                        }
                        if let Some(tx) = o.reply.take() {
                            let _ = tx.send(Some(code));
                        }
                        let challenge = msg.header("WWW-Authenticate").or_else(|| msg.header("Proxy-Authenticate"));
                        reg.answered(o.kind, code, challenge, granted(&msg), now_ms());
                    }
                    StartLine::Request { method, .. } => {
                        let answer = match method.to_ascii_uppercase().as_str() {
                            "ACK" => {
                                plays.ack(&msg);
                                continue;
                            }
                            "BYE" | "CANCEL" => {
                                let method = method.to_ascii_uppercase();
                                for o in plays.stop(&msg, from, &method) {
                                    count(&metrics, &name, &method, &o.bytes);
                                    link.send(&o.bytes, o.to).await;
                                }
                                continue;
                            }
                            "INVITE" => match plays.again(&msg) {
                                Some(again) => again,
                                None => {
                                    let channel = match &msg.start {
                                        StartLine::Request { uri, .. } => message::uri_user(uri).unwrap_or(""),
                                        StartLine::Response { .. } => "",
                                    };
                                    let found = catalog.build(scope.clone())
                                        .await
                                        .into_iter()
                                        .find(|i| i.id == channel)
                                        .map(|i| i.video);
                                    plays.invite(&msg, &bytes, from, found, &cancel)
                                }
                            },
                            "OPTIONS" => message::response(&msg, 200, "OK", from, &tag, &[("Allow", ALLOW.into())], b""),
                            "MESSAGE" => {
                                let (code, reason, out) = query(&msg, &reg, &catalog, &scope, &name).await;
                                if out.iter().any(|o| matches!(o, Outgoing::Catalog(_))) {
                                    // A new catalog query: the rest of an older one is superseded.
                                    answers.retain(|o| !matches!(o, Outgoing::Catalog(_)));
                                }
                                answers.extend(out);
                                if answers.len() > MAX_QUEUED {
                                    let drop = answers.len() - MAX_QUEUED;
                                    answers.drain(..drop);
                                    warn!(upstream = %name, dropped = drop, "Answers to the upper platform queued past the bound; the oldest dropped.");
                                }
                                message::response(&msg, code, reason, from, &tag, &[], b"")
                            }
                            "SUBSCRIBE" => {
                                let (answer, subscribed) = subscribe(&msg, from, &tag, reg.user_id(), now_ms());
                                if let Some(d) = subscribed {
                                    info!(upstream = %name, until_s = (d.until - now_ms()) / 1000, "The upper platform subscribed to the catalog.");
                                    full = true;
                                    sub = Some(d);
                                } else if answer.starts_with(b"SIP/2.0 200") {
                                    sub = None;
                                }
                                answer
                            }
                            m => {
                                debug!(upstream = %name, method = m, "Upper platform request not served yet: 501.");
                                message::response(&msg, 501, "Not Implemented", from, &tag, &[("Allow", ALLOW.into())], b"")
                            }
                        };
                        count(&metrics, &name, method, &answer);
                        link.send(&answer, from).await;
                    }
                }
            }
        }
    }
}

fn change_id(c: &catalog::Change) -> &str {
    match c {
        catalog::Change::Status(id, _) | catalog::Change::Del(id) => id,
        catalog::Change::Add(i) | catalog::Change::Update(i) => &i.id,
    }
}

/// Counts a request from the upper by its method and the class of `answer`.
fn count(metrics: &crate::telemetry::Metrics, name: &str, method: &str, answer: &[u8]) {
    let class = match answer.get(8..9) {
        Some(b"1") => "1xx",
        Some(b"2") => "2xx",
        Some(b"3") => "3xx",
        Some(b"4") => "4xx",
        Some(b"5") => "5xx",
        _ => "6xx",
    };
    let method = match method.to_ascii_uppercase().as_str() {
        m @ ("MESSAGE" | "SUBSCRIBE" | "INVITE" | "OPTIONS" | "BYE" | "CANCEL" | "NOTIFY" | "INFO") => m.to_owned(),
        _ => "other".to_owned(),
    };
    metrics.cascade_requests.with_label_values(&[name, &method, class]).inc();
}

/// What the upper asks in a MESSAGE: the answer's code and reason, and the MESSAGE bodies
/// that answer it.
async fn query(
    msg: &Message<'_>,
    reg: &Registration,
    catalog: &Catalog,
    scope: &Scope,
    name: &str,
) -> (u16, &'static str, Vec<Outgoing>) {
    let (text, _) = crate::protocol::manscdp::decode(msg.body);
    let Ok(e) = crate::protocol::manscdp::envelope(&text) else {
        return (400, "Bad Request", Vec::new());
    };
    let sn = e.sn.unwrap_or(0);
    let me = reg.user_id();
    match (e.root.as_str(), e.cmd_type.as_str()) {
        ("Query", "Catalog") => {
            let items = catalog.build(scope.clone()).await;
            info!(upstream = %name, sn, items = items.len(), "The upper platform queried the catalog.");
            (200, "OK", catalog::bodies(sn, me, &items, CATALOG_BATCH).into_iter().map(Outgoing::Catalog).collect())
        }
        ("Query", "DeviceInfo") => {
            let n = catalog.build(scope.clone()).await.iter().filter(|i| i.node.is_none()).count();
            (200, "OK", vec![Outgoing::Message(catalog::device_info(sn, me, "vigil", n))])
        }
        ("Query", "DeviceStatus") => (200, "OK", vec![Outgoing::Message(catalog::device_status(sn, me))]),
        ("Query", "RecordInfo") => {
            // A channel of this upper's: no recordings (vigil records nothing); another: 404.
            let channel = e.device_id.clone();
            match catalog.build(scope.clone()).await.into_iter().find(|i| i.id == channel) {
                Some(i) => (200, "OK", vec![Outgoing::Message(catalog::record_info(sn, &i.id, &i.name))]),
                None => (404, "Not Found", Vec::new()),
            }
        }
        (_, cmd) => {
            debug!(upstream = %name, cmd, "Upper platform MESSAGE not served yet: 501.");
            (501, "Not Implemented", Vec::new())
        }
    }
}

/// Answers a SUBSCRIBE: `Event: Catalog` only (489 otherwise), `Expires` required (400
/// without, as WVP does); 0 ends the subscription. The subscription when one starts or is
/// renewed.
fn subscribe(
    msg: &Message<'_>,
    from: SocketAddr,
    tag: &str,
    me: &str,
    now: Millis,
) -> (Vec<u8>, Option<register::Subscription>) {
    let event = msg.header("Event").unwrap_or("");
    if !event.trim().to_ascii_lowercase().starts_with("catalog") {
        return (message::response(msg, 489, "Bad Event", from, tag, &[("Allow-Events", "Catalog".into())], b""), None);
    }
    let Some(expires) = msg.header("Expires").and_then(|v| v.trim().parse::<i64>().ok()) else {
        return (message::response(msg, 400, "Bad Request (Expires required)", from, tag, &[], b""), None);
    };
    let granted = expires.clamp(0, SUBSCRIPTION_MAX_S);
    let (text, _) = crate::protocol::manscdp::decode(msg.body);
    let sn = crate::protocol::manscdp::envelope(&text).ok().and_then(|e| e.sn).unwrap_or(0);
    let body = catalog::subscribed(sn, me);
    let headers = [("Expires", granted.to_string()), ("Content-Type", "Application/MANSCDP+xml".into())];
    let answer = message::response(msg, 200, "OK", from, tag, &headers, &body);
    if granted == 0 {
        return (answer, None);
    }
    let their_tag = msg.header("From").and_then(|f| message::param(f, "tag")).unwrap_or("").to_owned();
    let d = register::Subscription {
        call_id: msg.header("Call-ID").unwrap_or("").to_owned(),
        their_tag,
        our_tag: tag.to_owned(),
        event_id: message::param(event, "id").unwrap_or("").to_owned(),
        until: now + granted * 1000,
    };
    (answer, Some(d))
}

/// The expiry the upper granted: `Expires`, or the Contact's `expires` parameter.
fn granted(msg: &Message<'_>) -> Option<u64> {
    msg.header("Expires").and_then(|v| v.trim().parse().ok()).or_else(|| {
        msg.header("Contact").and_then(|c| message::param(c, "expires")).and_then(|v| v.trim().parse().ok())
    })
}

/// A request given up: who waited for its answer hears none. True when it was a status
/// NOTIFY (the upper's view goes whole again).
fn unanswered(o: Outstanding, metrics: &crate::telemetry::Metrics, name: &str) -> bool {
    if let Some(tx) = o.reply {
        let _ = tx.send(None);
    }
    if o.notify {
        metrics.cascade_notifies.with_label_values(&[name, "unanswered"]).inc();
    }
    o.notify
}

/// Puts the registration's state where the API reads it; logs a change of phase. True when
/// the registration has just (re-)entered `registered`.
fn publish(reg: &Registration, status: &Mutex<TargetStatus>, name: &str, last: &mut Option<Phase>) -> bool {
    let v = reg.view();
    let became_registered = v.phase == Phase::Registered && *last != Some(Phase::Registered);
    let phase_changed = *last != Some(v.phase);
    if phase_changed {
        match v.phase {
            Phase::Registered => info!(upstream = %name, "Registered to the upper platform."),
            Phase::Failing => {
                warn!(upstream = %name, error = ?v.last_error, "Registration to the upper platform failing; trying again.")
            }
            Phase::Registering => {}
        }
        *last = Some(v.phase);
    }
    let mut s = status.lock().unwrap_or_else(|p| p.into_inner());
    s.connected = v.phase == Phase::Registered;
    // The registration's own error, when it changes (the alarm runner writes its own there).
    if phase_changed || s.session.as_ref().map(|x| x.failures) != Some(v.failures) {
        if v.last_error.is_some() {
            s.last_error_at = Some(now_ms());
        }
        s.last_error = v.last_error.clone();
    }
    let view = s.session.as_ref().and_then(|x| x.view.clone());
    s.session = Some(SessionStatus {
        state: v.phase.as_str(),
        until: v.registered_until,
        last_keepalive_at: v.last_keepalive_at,
        next_attempt_at: v.next_attempt_at,
        failures: v.failures,
        view,
    });
    became_registered
}
