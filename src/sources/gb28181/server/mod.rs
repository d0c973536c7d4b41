//! The SIP server task: one owner of the nonces, sessions, server and client transactions.
//! Receives messages from both transports, answers REGISTER, MESSAGE and NOTIFY, absorbs
//! retransmissions (the same request gets the same answer, not a second side effect),
//! rate-limits addresses that keep failing digest, and hands evidence to presence. What it
//! asks of devices (queries, subscriptions) and how MANSCDP bodies are handled live in
//! `outbound.rs` and `inbound.rs`. Registry and event-log writes run in spawned tasks so a
//! slow database never stalls SIP; their results come back on the `internal` channel.

mod inbound;
mod invite;
mod outbound;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::catalog::Assemblies;
use super::register::{self, Decision, Registrar};
use crate::clock::{now_ms, Millis};
use crate::config::Gb28181 as Gb28181Config;
use crate::event::{Evidence, Observation};
use crate::events::EventLog;
use crate::presence::runner::PresenceHandle;
use crate::protocol::manscdp::Charset;
use crate::protocol::sip::message::{self, param, uri_user, Message, StartLine};
use crate::protocol::sip::transactions::{ClientTransactions, Purpose};
use crate::registry::{AdmissionOutcome, AdmissionRefusal, DeviceKind, Protocol, Registry, UnknownDevice};
use crate::rejections::Rejections;
use crate::sessions::{SessionBoard, SessionInfo};
use crate::telemetry::Metrics;

/// How long an answer is kept for retransmissions of its request (RFC 3261 Timer J, 64×T1).
const TRANSACTION_TTL_MS: Millis = 32_000;
/// A log line that a flood repeats is written at most once per this, with a count.
const HUSH_MS: Millis = 10_000;
/// Entries past which the maps are swept of stale ones.
const SWEEP_AT: usize = 50_000;

/// Answers kept for retransmissions, in two generations: entries live 16–32 s (RFC 3261
/// Timer J is 32 s), and at most `2 × ANSWERS_PER_GENERATION` are held whatever the load.
#[derive(Default)]
struct Answered {
    current: HashMap<String, Arc<Vec<u8>>>,
    previous: HashMap<String, Arc<Vec<u8>>>,
    rotated_at: Millis,
}

const ANSWERS_PER_GENERATION: usize = 20_000;

impl Answered {
    fn get(&self, key: &str) -> Option<&Arc<Vec<u8>>> {
        self.current.get(key).or_else(|| self.previous.get(key))
    }
    fn insert(&mut self, key: String, answer: Arc<Vec<u8>>, now: Millis) {
        if self.current.len() >= ANSWERS_PER_GENERATION || now - self.rotated_at >= TRANSACTION_TTL_MS / 2 {
            self.previous = std::mem::take(&mut self.current);
            self.rotated_at = now;
        }
        self.current.insert(key, answer);
    }
}

/// A registered device's SIP session: what the API shows, and what the server needs to
/// reach the device and to judge its answers.
struct Session {
    info: SessionInfo,
    /// The TCP connection it registered over (requests to it go down the same one).
    tcp: Option<mpsc::Sender<Vec<u8>>>,
    /// The device's own SN counter for what vigil sends it.
    sn: u64,
    /// Queries sent and not yet answered, by SN (a response to anything else is refused).
    asked: VecDeque<(u64, &'static str, Millis)>,
    /// When to ask for its DeviceStatus, and its whole Catalog, again.
    next_status_at: Millis,
    next_catalog_at: Millis,
    /// When to renew its catalog subscription (it accepted one), if ever.
    renew_subscription_at: Option<Millis>,
}

/// Queries remembered per device, and for how long an answer is accepted.
const ASKED_MAX: usize = 16;
const ASKED_TTL_MS: Millis = 120_000;

impl Session {
    fn next_sn(&mut self) -> u64 {
        self.sn += 1;
        self.sn
    }

    /// The charset the device writes in (what vigil answers in).
    fn charset(&self) -> Charset {
        if self.info.charset == Charset::Utf8.xml_name() {
            Charset::Utf8
        } else {
            Charset::Gb18030
        }
    }

    /// Remembers a query sent (its answer will be believed), forgetting the oldest.
    fn remember_asked(&mut self, sn: u64, cmd: &'static str, now: Millis) {
        self.asked.push_back((sn, cmd, now));
        if self.asked.len() > ASKED_MAX {
            self.asked.pop_front();
        }
    }

    /// Whether `sn` answers a query of type `cmd` sent to this device recently.
    fn was_asked(&self, sn: Option<u64>, cmd: &str, now: Millis) -> bool {
        sn.is_some_and(|sn| self.asked.iter().any(|(s, c, at)| *s == sn && *c == cmd && now - at < ASKED_TTL_MS))
    }
}

/// An authenticated REGISTER from a device the registry does not know yet.
pub(super) struct WaitingAdmission {
    unknown: UnknownDevice,
    raw: Vec<u8>,
    from: SocketAddr,
    reply: Reply,
    key: String,
}

/// Most REGISTERs waiting for admission; past it unknown devices are told to come back.
const WAITING_ADMISSION_MAX: usize = 50_000;

/// Results of work the server handed to spawned tasks.
pub(super) enum Internal {
    /// A batch of admissions written (or not).
    Admitted(Vec<(WaitingAdmission, Result<AdmissionOutcome, String>)>),
    /// An answer to send once a write committed (an alarm's 200).
    Answer { bytes: Vec<u8>, to: SocketAddr, reply: Reply },
    /// A request to queue for a device (the `Response/Alarm`).
    Request { device: String, purpose: Purpose },
    /// The board changed in a way worth saving.
    Save(Result<(), String>),
}

pub struct Server {
    cfg: Gb28181Config,
    tz: chrono_tz::Tz,
    registry: Registry,
    presence: PresenceHandle,
    metrics: Metrics,
    events: EventLog,
    udp: Arc<UdpSocket>,
    /// The REGISTER decisions: nonces and the per-address failure limit.
    registrar: Registrar,
    sessions: HashMap<String, Session>,
    board: SessionBoard,
    board_dirty: bool,
    saving: bool,
    next_save_at: Millis,
    /// Log lines a flood would repeat (malformed datagrams, bad ids, wrong passwords): one per
    /// interval with the count held back.
    hush_malformed: crate::net::Hush,
    hush_auth: crate::net::Hush,
    /// REGISTERs from quarantined devices: (count, when last written to the registry).
    attempts: HashMap<String, (u64, Millis)>,
    /// REGISTERs of unknown devices waiting for their admission to be written (in batches),
    /// and their transaction keys (a retransmission meanwhile is absorbed).
    waiting_admission: Vec<WaitingAdmission>,
    admitting: std::collections::HashSet<String>,
    admission_in_flight: bool,
    /// Attributes learned from devices, written once a second in one transaction.
    pending_attrs: HashMap<String, serde_json::Map<String, serde_json::Value>>,
    attrs_flushing: Arc<std::sync::atomic::AtomicBool>,
    answered: Answered,
    tag: String,
    gateway_id: String,
    rejections: Rejections,
    /// The first bytes of the message being handled, kept if it is refused.
    raw: Vec<u8>,
    catalogs: Assemblies,
    transactions: ClientTransactions,
    /// Requests waiting for room among the transactions in flight, and the same as a set
    /// (a device that registers again before its requests left is not asked twice).
    backlog: VecDeque<(String, Purpose)>,
    queued: std::collections::HashSet<(String, Purpose)>,
    internal_tx: mpsc::Sender<Internal>,
    internal_rx: Option<mpsc::Receiver<Internal>>,
    /// Writes spawned for what devices send (alarms, catalog change notifies): bounded, so a
    /// device flooding them is told to come back (503) instead of growing tasks without end.
    writes_in_flight: Arc<tokio::sync::Semaphore>,
    cseq: u32,
    /// Media dialogs vigil opened toward devices, by Call-ID (`invite.rs`).
    dialogs: HashMap<String, invite::Dialog>,
    commands: Option<mpsc::Receiver<super::dialog::Command>>,
}

/// Most alarm and catalog-notify writes in flight at once.
const WRITES_IN_FLIGHT: usize = 1024;

/// Most devices with attributes waiting to be written.
const PENDING_ATTRS_MAX: usize = 100_000;

/// Most requests waiting for room; beyond it new registrations are not queried (counted).
const BACKLOG_MAX: usize = 100_000;

/// The methods vigil answers.
const ALLOW: &str = "REGISTER, MESSAGE, NOTIFY, OPTIONS, ACK, BYE";

/// A request handled: the answer to send, if any.
type Answer = Option<Vec<u8>>;

/// Where an answer goes.
#[derive(Clone)]
pub enum Reply {
    /// Back to the datagram's source.
    Udp,
    /// Down the TCP connection it came on.
    Tcp(mpsc::Sender<Vec<u8>>),
}

/// One received message and how to answer it.
pub struct Inbound {
    pub bytes: Vec<u8>,
    pub from: SocketAddr,
    pub reply: Reply,
}

/// What the server is handed at start.
pub struct Parts {
    pub cfg: Gb28181Config,
    pub tz: chrono_tz::Tz,
    pub gateway_id: String,
    pub shared: crate::sources::Shared,
    pub udp: Arc<UdpSocket>,
    pub board: SessionBoard,
    /// INVITE and hang-up requests from the players.
    pub commands: mpsc::Receiver<super::dialog::Command>,
}

impl Server {
    pub fn new(p: Parts) -> Self {
        let tag = uuid::Uuid::now_v7().simple().to_string()[..16].to_owned();
        let (internal_tx, internal_rx) = mpsc::channel(1024);
        Server {
            registrar: Registrar::new(register::Settings {
                digest: p.cfg.digest,
                realm: p.cfg.realm.clone(),
                password: p.cfg.password.clone(),
                expires_max_s: p.cfg.register_expires_max.as_secs(),
            }),
            cfg: p.cfg,
            tz: p.tz,
            registry: p.shared.registry,
            presence: p.shared.presence,
            metrics: p.shared.metrics,
            events: p.shared.events,
            udp: p.udp,
            sessions: HashMap::new(),
            board: p.board,
            board_dirty: false,
            saving: false,
            next_save_at: 0,
            hush_malformed: crate::net::Hush::new(HUSH_MS),
            hush_auth: crate::net::Hush::new(HUSH_MS),
            attempts: HashMap::new(),
            pending_attrs: HashMap::new(),
            attrs_flushing: Arc::default(),
            waiting_admission: Vec::new(),
            admitting: Default::default(),
            admission_in_flight: false,
            answered: Answered::default(),
            gateway_id: p.gateway_id,
            rejections: p.shared.rejections,
            raw: Vec::with_capacity(crate::rejections::RAW_MAX),
            catalogs: Assemblies::default(),
            transactions: ClientTransactions::default(),
            backlog: VecDeque::new(),
            queued: Default::default(),
            internal_tx,
            internal_rx: Some(internal_rx),
            writes_in_flight: Arc::new(tokio::sync::Semaphore::new(WRITES_IN_FLIGHT)),
            cseq: 1,
            dialogs: HashMap::new(),
            commands: Some(p.commands),
            tag,
        }
    }

    /// Takes back the sessions an earlier run saved whose registration still holds: such a
    /// device keeps its registered address (its answers are accepted) and is asked for its
    /// status and catalog again, over UDP (a TCP connection does not survive a restart).
    pub async fn restore_sessions(&mut self) {
        let now = now_ms();
        let saved = match self.registry.load_state(crate::sessions::STATE_KEY).await {
            Ok(Some(json)) => SessionBoard::restore(&json, now),
            Ok(None) => return,
            Err(e) => {
                warn!(error = %e, "Cannot read the saved GB/T 28181 sessions; devices are known again when they register.");
                return;
            }
        };
        let n = saved.len();
        for (id, mut info) in saved {
            if self.registry.read().device(&id).is_none() {
                continue;
            }
            info.transport = "udp".into();
            info.catalog_subscription_until = None;
            self.board.put(&id, info.clone());
            self.sessions.insert(
                id.clone(),
                Session {
                    info,
                    tcp: None,
                    sn: initial_sn(),
                    asked: VecDeque::new(),
                    next_status_at: now,
                    next_catalog_at: now + CATALOG_EVERY_MS,
                    renew_subscription_at: None,
                },
            );
            self.ask_after_registration(&id);
        }
        if n > 0 {
            info!(sessions = n, "GB/T 28181 sessions restored: registered devices are judged by their granted expiry.");
        }
    }

    /// Serves requests from both transports until cancelled: one owner of all SIP state.
    pub async fn run(mut self, mut inbound: mpsc::Receiver<Inbound>, cancel: CancellationToken) {
        info!("GB/T 28181 source listening (UDP and TCP).");
        let Some(mut internal) = self.internal_rx.take() else { return };
        let Some(mut commands) = self.commands.take() else { return };
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut slow_tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                Some(job) = internal.recv() => self.internal(job).await,
                Some(cmd) = commands.recv() => self.command(cmd).await,
                r = inbound.recv() => match r {
                    Some(req) => {
                        if let Some(answer) = self.handle(&req.bytes, req.from, &req.reply).await {
                            self.send(req.from, &req.reply, answer).await;
                        }
                    }
                    None => break,
                },
                _ = tick.tick() => self.pump().await,
                _ = slow_tick.tick() => self.housekeeping(),
            }
        }
        if self.board_dirty {
            if let Err(e) = self.registry.save_state(crate::sessions::STATE_KEY, &self.board.to_json()).await {
                warn!(error = %e, "Cannot save the GB/T 28181 sessions at shutdown.");
            }
        }
        info!("GB/T 28181 source stopped.");
    }

    /// Sends an answer (or a request) the way a message came.
    async fn send(&self, to: SocketAddr, reply: &Reply, bytes: Vec<u8>) {
        self.count_out(&bytes);
        match reply {
            Reply::Udp => {
                if let Err(e) = self.udp.send_to(&bytes, to).await {
                    debug!(peer = %to, error = %e, "Cannot send a SIP message.");
                }
            }
            Reply::Tcp(tx) => {
                let _ = tx.try_send(bytes);
            }
        }
    }

    async fn internal(&mut self, job: Internal) {
        match job {
            Internal::Answer { bytes, to, reply } => self.send(to, &reply, bytes).await,
            Internal::Request { device, purpose } => self.enqueue(device, purpose),
            Internal::Admitted(batch) => self.admitted(batch).await,
            Internal::Save(r) => {
                self.saving = false;
                if let Err(e) = r {
                    self.board_dirty = true;
                    warn!(error = %e, "Cannot save the GB/T 28181 sessions; trying again later.");
                }
            }
        }
    }

    /// Once a second: catalogs whose parts stopped coming, scheduled status queries and
    /// subscription renewals, saving the board.
    fn housekeeping(&mut self) {
        let now = now_ms();
        for partial in self.catalogs.expire(now) {
            self.store_catalog(partial);
        }
        self.schedule(now);
        // One attribute write at a time: while the database is slow, what devices report
        // gathers in `pending_attrs` (bounded) rather than in ever more tasks.
        if !self.pending_attrs.is_empty() && !self.attrs_flushing.swap(true, std::sync::atomic::Ordering::AcqRel) {
            let batch: Vec<_> = self.pending_attrs.drain().collect();
            let registry = self.registry.clone();
            let flushing = self.attrs_flushing.clone();
            tokio::spawn(async move {
                let n = batch.len();
                let written = registry.merge_attrs_many(batch).await;
                flushing.store(false, std::sync::atomic::Ordering::Release);
                if let Err(e) = written {
                    warn!(devices = n, error = %e, "Cannot store what devices reported; they report again at their next registration.");
                }
            });
        }
        if self.board_dirty && !self.saving && now >= self.next_save_at {
            self.board_dirty = false;
            self.saving = true;
            self.next_save_at = now + crate::sessions::SAVE_EVERY_MS;
            let json = self.board.to_json();
            let registry = self.registry.clone();
            let done = self.internal_tx.clone();
            tokio::spawn(async move {
                let r = registry.save_state(crate::sessions::STATE_KEY, &json).await.map_err(|e| e.to_string());
                let _ = done.send(Internal::Save(r)).await;
            });
        }
    }

    fn count_out(&self, answer: &[u8]) {
        let label = match answer.get(8..9) {
            Some(b"1") => "1xx",
            Some(b"2") => "2xx",
            Some(b"4") => "4xx",
            Some(b"5") => "5xx",
            _ => "other",
        };
        self.metrics.sip_messages.with_label_values(&[label, "out"]).inc();
    }

    /// Counts a refused message and keeps its raw bytes for `GET /api/v1/rejections`.
    fn reject(&self, reason: &str, peer: SocketAddr, detail: String) {
        self.rejections.record(now_ms(), "gb28181", reason, peer.to_string(), detail, &self.raw);
    }

    /// Handles one message; returns the answer to send at once, if any.
    pub async fn handle(&mut self, bytes: &[u8], from: SocketAddr, reply: &Reply) -> Answer {
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            return None; // CRLF keep-alive
        }
        self.raw.clear();
        self.raw.extend_from_slice(&bytes[..bytes.len().min(crate::rejections::RAW_MAX)]);
        let msg = match Message::parse(bytes) {
            Ok(m) => m,
            Err(e) => {
                self.reject(e.reason(), from, e.to_string());
                self.metrics.sip_messages.with_label_values(&["invalid", "in"]).inc();
                // A request is answered (400, or 505 for another SIP version) when enough
                // of it can be read to address the answer; a response never is.
                let answer = Message::salvage(bytes).map(|m| {
                    let (code, phrase) = e.status();
                    let reason = format!("{phrase} ({e})");
                    let reason: String = reason.chars().filter(|c| !c.is_control()).take(120).collect();
                    message::response(&m, code, &reason, from, &self.tag, &[], b"")
                });
                if let Some(held) = self.hush_malformed.tick(crate::clock::now_ms()) {
                    warn!(peer = %from, error = %e, answered = answer.is_some(), held_back = held, excerpt = %String::from_utf8_lossy(&bytes[..bytes.len().min(80)]), "Malformed SIP message refused (one line per 10 s; held_back counts the others).");
                }
                return answer;
            }
        };
        let method = match &msg.start {
            StartLine::Request { method, .. } => method.to_ascii_uppercase(),
            StartLine::Response { code, .. } => {
                self.metrics.sip_messages.with_label_values(&["response", "in"]).inc();
                if msg.cseq().is_some_and(|(_, m)| m.eq_ignore_ascii_case("INVITE")) {
                    self.invite_response(&msg, *code, from).await;
                } else {
                    self.response(&msg, *code, from);
                }
                return None;
            }
        };
        let label = match method.as_str() {
            "REGISTER" | "MESSAGE" | "OPTIONS" | "NOTIFY" | "BYE" | "ACK" | "INVITE" | "SUBSCRIBE" | "INFO"
            | "CANCEL" => method.as_str(),
            _ => "other",
        };
        self.metrics.sip_messages.with_label_values(&[label, "in"]).inc();
        let (Some(call_id), Some((cseq, _)), Some(_)) = (msg.header("Call-ID"), msg.cseq(), msg.header("Via")) else {
            self.reject("missing_header", from, "Via, Call-ID and CSeq are required".into());
            return Some(message::response(
                &msg,
                400,
                "Bad Request (Via, Call-ID and CSeq are required)",
                from,
                &self.tag,
                &[],
                b"",
            ));
        };
        if method == "ACK" {
            return None;
        }
        let now = now_ms();
        let key = format!("{call_id}|{cseq}|{method}|{}", msg.branch().unwrap_or(""));
        if let Some(answer) = self.answered.get(&key) {
            return Some(answer.to_vec());
        }
        if self.admitting.contains(&key) {
            return None; // its answer comes once the admission is written
        }
        let mut remember = true;
        let answer = match method.as_str() {
            "REGISTER" => match self.register(&msg, from, now, reply, (&key, bytes)).await {
                Some(a) => a,
                None => return None,
            },
            "MESSAGE" | "NOTIFY" => {
                let (answer, idempotent) = self.message(&msg, from, now, reply).await;
                // A repeated keepalive is harmless evidence; only side effects are remembered.
                remember = !idempotent;
                match answer {
                    Some(a) => a,
                    None => return None, // answered once its write commits
                }
            }
            "OPTIONS" => message::response(&msg, 200, "OK", from, &self.tag, &[("Allow", ALLOW.into())], b""),
            "BYE" => self.bye_from_device(&msg, from),
            "INVITE" => self.invite_from_device(&msg, from),
            _ => message::response(&msg, 405, "Method Not Allowed", from, &self.tag, &[("Allow", ALLOW.into())], b""),
        };
        if remember {
            self.answered.insert(key, Arc::new(answer.clone()), now);
        }
        Some(answer)
    }

    /// The keepalive window from config (interval × misses).
    fn config_window_ms(&self) -> i64 {
        (self.cfg.keepalive_interval.as_millis() as i64) * i64::from(self.cfg.keepalive_misses)
    }

    /// The keepalive window for a device: learned from it where it reported one.
    fn window_ms(&self, device: &str) -> i64 {
        self.sessions.get(device).map(|s| s.info.keepalive_window_ms).unwrap_or_else(|| self.config_window_ms())
    }

    /// Answers a REGISTER; `None` when the answer waits for the device's admission (an
    /// unknown device: admissions are written in batches). The decision is the registrar's
    /// (`register.rs`, pure); this turns it into the answer, the session and the evidence.
    async fn register(
        &mut self,
        msg: &Message<'_>,
        from: SocketAddr,
        now: Millis,
        reply: &Reply,
        (key, bytes): (&str, &[u8]),
    ) -> Option<Vec<u8>> {
        let req = register::Request {
            from_user: msg.header("From").and_then(uri_user),
            authorization: msg.header("Authorization").or_else(|| msg.header("Proxy-Authorization")),
            expires: requested_expires(msg),
            ip: from.ip(),
        };
        let (id, code) = match Registrar::device_id(&req) {
            Ok(x) => x,
            Err(refusal) => return Some(self.refused(msg, from, now, req.from_user.unwrap_or(""), refusal)),
        };
        let device = self.registry.read().device(&id);
        let known = device.as_ref().map(|d| register::Known { admission: d.admission, password: d.password.clone() });
        match self.registrar.decide(&req, (&id, &code), known.as_ref(), now) {
            Decision::Unknown { kind } => self.defer_admission(msg, from, reply, id, kind, (key, bytes)),
            decision => match device {
                Some(device) => Some(self.registered(msg, from, now, reply, id, device, decision).await),
                None => Some(self.refused(msg, from, now, &id, decision)),
            },
        }
    }

    /// The answer to a REGISTER the registrar refused or challenged, counted.
    fn refused(&mut self, msg: &Message<'_>, from: SocketAddr, now: Millis, id: &str, decision: Decision) -> Vec<u8> {
        let outcome = |s: &Self, o: &str| s.metrics.sip_registrations.with_label_values(&[o]).inc();
        let (code, phrase, extra): (u16, &str, Vec<(&str, String)>) = match decision {
            Decision::NoDeviceId => {
                self.reject("no_device_id", from, "no device id in From".into());
                (400, "Bad Request (no device id in From)", Vec::new())
            }
            Decision::BadDeviceId(e) => {
                self.reject("bad_device_id", from, e.clone());
                if let Some(held) = self.hush_malformed.tick(now) {
                    warn!(peer = %from, device = %id, error = %e, held_back = held, "REGISTER with a device id that is not a GB/T 28181 code.");
                }
                (400, "Bad Request (device id is not a 20-digit GB/T 28181 code)", Vec::new())
            }
            Decision::RateLimited => {
                outcome(self, "rate_limited");
                (403, "Forbidden (too many failed attempts)", Vec::new())
            }
            Decision::Challenge { www_authenticate, outcome: o } => {
                outcome(self, o);
                (401, "Unauthorized", vec![("WWW-Authenticate", www_authenticate)])
            }
            Decision::WrongUsername => {
                outcome(self, "wrong_username");
                (403, "Forbidden (username is not the device id)", Vec::new())
            }
            Decision::WrongPassword => {
                outcome(self, "wrong_password");
                if let Some(held) = self.hush_auth.tick(now) {
                    warn!(peer = %from, device = %id, held_back = held, "REGISTER with a wrong password (or a replayed nonce) refused (one line per 10 s; held_back counts the others).");
                }
                (403, "Forbidden", Vec::new())
            }
            Decision::Quarantined => {
                outcome(self, "quarantined");
                self.note_attempt(id, from, now);
                (403, "Forbidden (awaiting approval)", Vec::new())
            }
            Decision::Rejected => {
                outcome(self, "rejected");
                (403, "Forbidden (rejected)", Vec::new())
            }
            // Registrations are answered by `registered`; reaching here is a device the
            // registry no longer holds: ask it to come again.
            Decision::Unknown { .. } | Decision::Register { .. } | Decision::Unregister => {
                (503, "Service Unavailable", vec![("Retry-After", "10".to_owned())])
            }
        };
        message::response(msg, code, phrase, from, &self.tag, &extra, b"")
    }

    /// A REGISTER the registrar decided for a device the registry holds: the session, the
    /// presence evidence and the 200 (with the time, GB "校时"), or the refusal.
    #[allow(clippy::too_many_arguments)]
    async fn registered(
        &mut self,
        msg: &Message<'_>,
        from: SocketAddr,
        now: Millis,
        reply: &Reply,
        id: String,
        device: Arc<crate::registry::Device>,
        decision: Decision,
    ) -> Vec<u8> {
        let outcome = |s: &Self, o: &str| s.metrics.sip_registrations.with_label_values(&[o]).inc();
        let contact = msg.header("Contact").map(str::to_owned).unwrap_or_else(|| format!("<sip:{id}@{from}>"));
        let (evidence, granted) = match decision {
            Decision::Unregister => {
                if self.sessions.remove(&id).is_some() {
                    self.board.remove(&id);
                    self.board_dirty = true;
                }
                outcome(self, "unregistered");
                info!(device = %id, peer = %from, "Device un-registered.");
                (Evidence::SipUnregister, 0)
            }
            Decision::Register { granted_s } => {
                let expires_at = now + granted_s as i64 * 1000;
                let tcp = match reply {
                    Reply::Tcp(tx) => Some(tx.clone()),
                    Reply::Udp => None,
                };
                let fresh = self.refresh_session(&id, msg, from, now, expires_at, contact.clone(), tcp);
                // A new registration (not a refresh from the same place) asks the device what
                // it is, what it has and how it keeps alive, and subscribes to its catalog.
                if fresh {
                    self.ask_after_registration(&id);
                }
                outcome(self, "registered");
                let expires_ms = granted_s as i64 * 1000;
                (Evidence::SipRegister { expires_ms, window_ms: self.window_ms(&id) }, granted_s)
            }
            refusal => return self.refused(msg, from, now, &id, refusal),
        };
        if self.presence.observe(Observation { device: device.key, at: now, evidence, detail: None }).await.is_err() {
            return message::response(msg, 503, "Service Unavailable", from, &self.tag, &[], b"");
        }
        // GB "校时": devices set their clocks from this (local time, no zone).
        let date = crate::clock::to_datetime(now, &self.tz).format("%Y-%m-%dT%H:%M:%S%.3f").to_string();
        message::response(
            msg,
            200,
            "OK",
            from,
            &self.tag,
            &[("Contact", contact), ("Expires", granted.to_string()), ("Date", date)],
            b"",
        )
    }

    /// Holds an unknown device's authenticated REGISTER until its admission is written with
    /// others in one transaction (a storm of new devices is not a storm of commits).
    fn defer_admission(
        &mut self,
        msg: &Message<'_>,
        from: SocketAddr,
        reply: &Reply,
        id: String,
        kind: Option<DeviceKind>,
        (key, bytes): (&str, &[u8]),
    ) -> Option<Vec<u8>> {
        if self.waiting_admission.len() >= WAITING_ADMISSION_MAX {
            return Some(message::response(
                msg,
                503,
                "Service Unavailable (admissions backlog)",
                from,
                &self.tag,
                &[("Retry-After", "10".into())],
                b"",
            ));
        }
        let mut attrs = serde_json::Map::new();
        attrs.insert("contact".into(), serde_json::json!(msg.header("Contact").unwrap_or("")));
        attrs.insert("source".into(), serde_json::json!(from.to_string()));
        if let Some(ua) = msg.header("User-Agent") {
            attrs.insert("user_agent".into(), serde_json::json!(ua));
        }
        let unknown = UnknownDevice {
            id,
            protocol: Protocol::Gb28181,
            kind,
            name: None,
            attrs,
            org_id: None,
            profile: None,
            origin: Some(from.ip().to_string()),
        };
        self.admitting.insert(key.to_owned());
        self.waiting_admission.push(WaitingAdmission {
            unknown,
            raw: bytes.to_vec(),
            from,
            reply: reply.clone(),
            key: key.to_owned(),
        });
        None
    }

    /// Writes the waiting admissions in one go (called every 100 ms).
    pub(super) fn flush_admissions(&mut self) {
        if self.waiting_admission.is_empty() || self.admission_in_flight {
            return;
        }
        self.admission_in_flight = true;
        let batch = std::mem::take(&mut self.waiting_admission);
        let registry = self.registry.clone();
        let done = self.internal_tx.clone();
        tokio::spawn(async move {
            let unknowns: Vec<UnknownDevice> = batch.iter().map(|w| w.unknown.clone()).collect();
            let results: Vec<Result<AdmissionOutcome, String>> = match registry.admit_many(unknowns).await {
                Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
                Err(e) => batch.iter().map(|_| Err(e.to_string())).collect(),
            };
            let _ = done.send(Internal::Admitted(batch.into_iter().zip(results).collect())).await;
        });
    }

    /// Answers the REGISTERs whose admission was written.
    async fn admitted(&mut self, batch: Vec<(WaitingAdmission, Result<AdmissionOutcome, String>)>) {
        self.admission_in_flight = false;
        let now = now_ms();
        let mut track = Vec::new();
        for (w, result) in &batch {
            if let Ok(AdmissionOutcome::Added(d)) = result {
                info!(device = %d.id, peer = %w.from, admission = %d.admission, org = ?d.org_id, "New GB/T 28181 device registered itself.");
                track.push((d.key, Arc::from(d.id.as_str()), d.protocol.as_str()));
            }
        }
        if !track.is_empty() {
            let _ = self.presence.track(track).await;
        }
        for (w, result) in batch {
            self.admitting.remove(&w.key);
            let Ok(msg) = Message::parse(&w.raw) else { continue };
            let answer = match result {
                Ok(AdmissionOutcome::Added(d)) | Ok(AdmissionOutcome::Known(d)) => {
                    let decision = self.registrar.admitted(d.admission, requested_expires(&msg));
                    self.registered(&msg, w.from, now, &w.reply, w.unknown.id.clone(), d, decision).await
                }
                Ok(AdmissionOutcome::Refused(r)) => {
                    self.metrics.sip_registrations.with_label_values(&["refused"]).inc();
                    self.metrics.admission_refusals.with_label_values(&["gb28181", r.reason()]).inc();
                    self.rejections.record(
                        now,
                        "gb28181",
                        "unknown_device",
                        w.from.to_string(),
                        format!("{}: {}", w.unknown.id, r.detail()),
                        &w.raw,
                    );
                    let (code, phrase, retry) = match r {
                        AdmissionRefusal::Closed => (403, "Forbidden (unknown device; admission is closed)", None),
                        AdmissionRefusal::QuarantineFull | AdmissionRefusal::OriginQuarantineFull => {
                            (403, "Forbidden (unknown device; the quarantine is full)", None)
                        }
                        AdmissionRefusal::OriginRate => {
                            (503, "Service Unavailable (too many new devices from this address)", Some("60"))
                        }
                    };
                    let extra: Vec<(&str, String)> = retry.map(|r| ("Retry-After", r.to_owned())).into_iter().collect();
                    message::response(&msg, code, phrase, w.from, &self.tag, &extra, b"")
                }
                Err(e) => {
                    warn!(device = %w.unknown.id, error = %e, "Cannot admit a new device.");
                    message::response(
                        &msg,
                        503,
                        "Service Unavailable",
                        w.from,
                        &self.tag,
                        &[("Retry-After", "30".into())],
                        b"",
                    )
                }
            };
            self.answered.insert(w.key, Arc::new(answer.clone()), now);
            self.send(w.from, &w.reply, answer).await;
        }
    }

    /// Counts an authenticated REGISTER from a device awaiting approval, so operators see
    /// how often (and from where) it keeps trying: kept in its attributes, written at most
    /// once a minute per device.
    fn note_attempt(&mut self, id: &str, from: SocketAddr, now: Millis) {
        if self.attempts.len() >= SWEEP_AT {
            self.attempts.retain(|_, (_, written)| now - *written < 3_600_000);
        }
        let e = self.attempts.entry(id.to_owned()).or_insert((0, 0));
        e.0 += 1;
        if now - e.1 < 60_000 {
            return;
        }
        e.1 = now;
        let mut attrs = serde_json::Map::new();
        attrs.insert("register_attempts".into(), serde_json::json!(e.0));
        attrs.insert("last_attempt".into(), serde_json::json!(crate::clock::rfc3339(now, &self.tz)));
        attrs.insert("source".into(), serde_json::json!(from.to_string()));
        self.merge_attrs(id.to_owned(), attrs);
    }

    /// Creates or refreshes a device's session; true when it is new or moved (a new
    /// address or transport), which is when vigil asks the device about itself.
    #[allow(clippy::too_many_arguments)]
    fn refresh_session(
        &mut self,
        id: &str,
        msg: &Message<'_>,
        from: SocketAddr,
        now: Millis,
        expires_at: Millis,
        contact: String,
        tcp: Option<mpsc::Sender<Vec<u8>>>,
    ) -> bool {
        let transport = if tcp.is_some() { "tcp" } else { "udp" };
        let user_agent = msg.header("User-Agent").map(str::to_owned);
        let gb_version = msg.header("X-GB-Ver").map(|v| v.trim().to_owned());
        let config_window = self.config_window_ms();
        let fresh = match self.sessions.get_mut(id) {
            Some(s) => {
                let moved = s.info.source != from || s.info.transport != transport;
                if moved {
                    info!(device = %id, peer = %from, was = %s.info.source, transport, "Device registered from a new address; contact updated.");
                    s.info.registered_at = now;
                }
                s.info.source = from;
                s.info.transport = transport.into();
                s.info.contact = contact;
                s.info.expires_at = expires_at;
                s.info.user_agent = user_agent;
                s.info.gb_version = gb_version;
                s.tcp = tcp;
                moved
            }
            None => {
                let info = SessionInfo {
                    source: from,
                    transport: transport.into(),
                    contact,
                    registered_at: now,
                    expires_at,
                    last_keepalive: None,
                    keepalive_window_ms: config_window,
                    keepalive_from: "config".into(),
                    charset: Charset::Gb18030.xml_name().into(),
                    user_agent,
                    gb_version,
                    catalog_subscription_until: None,
                };
                self.sessions.insert(
                    id.to_owned(),
                    Session {
                        info,
                        tcp,
                        sn: initial_sn(),
                        asked: VecDeque::new(),
                        next_status_at: now + STATUS_EVERY_MS,
                        next_catalog_at: now + CATALOG_EVERY_MS,
                        renew_subscription_at: None,
                    },
                );
                true
            }
        };
        if let Some(s) = self.sessions.get(id) {
            self.board.put(id, s.info.clone());
        }
        self.board_dirty = true;
        fresh
    }
}

/// How often a registered device is asked for its DeviceStatus, and for its whole catalog
/// (which the subscription keeps current between times where the device supports one).
const STATUS_EVERY_MS: Millis = 10 * 60_000;
const CATALOG_EVERY_MS: Millis = 6 * 3_600_000;

/// The expiry a REGISTER asks for: `Expires`, else the Contact's `expires` parameter.
fn requested_expires(msg: &Message<'_>) -> Option<u64> {
    msg.header("Expires")
        .and_then(|v| v.trim().parse().ok())
        .or_else(|| msg.header("Contact").and_then(|c| param(c, "expires")).and_then(|v| v.parse().ok()))
}

/// A starting SN that differs between runs (devices may remember the last one they saw).
fn initial_sn() -> u64 {
    u64::from(now_ms().rem_euclid(900_000) as u32) + 100_000
}

/// The non-empty texts as JSON attributes.
fn text_attrs<const N: usize>(pairs: [(&str, String); N]) -> serde_json::Map<String, serde_json::Value> {
    pairs
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.to_owned(), serde_json::Value::String(v)))
        .collect()
}
