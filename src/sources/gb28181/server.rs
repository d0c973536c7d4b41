//! The SIP server task: one owner of the nonces, sessions and transaction cache. Receives
//! datagrams, answers REGISTER and MESSAGE, absorbs retransmissions (the same request gets
//! the same answer, not a second side effect), rate-limits addresses that keep failing
//! digest, and hands evidence to presence.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::catalog::{Assembled, Assemblies};
use super::digest::{parse_authorization, Nonces, Verdict};
use super::manscdp;
use super::message::{self, param, uri_user, Message, StartLine};
use crate::clock::{now_ms, Millis};
use crate::config::Gb28181 as Gb28181Config;
use crate::event::{Evidence, Observation};
use crate::ids::GbCode;
use crate::presence::runner::PresenceHandle;
use crate::registry::{Admission, AdmissionOutcome, Channel, Protocol, Registry, UnknownDevice};
use crate::rejections::Rejections;
use crate::telemetry::Metrics;

/// How long an answer is kept for retransmissions of its request (RFC 3261 Timer J, 64×T1).
const TRANSACTION_TTL_MS: Millis = 32_000;
/// Digest failures from one address within the window before it is refused unheard.
const MAX_FAILURES: u32 = 5;
const FAILURE_WINDOW_MS: Millis = 60_000;
/// The shortest registration granted.
const MIN_EXPIRES_S: u64 = 60;
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

/// What vigil knows of a registered device's SIP side (shown in the API later).
#[derive(Debug, Clone)]
struct Session {
    source: SocketAddr,
    expires_at: Millis,
}

pub struct Server {
    cfg: Gb28181Config,
    registry: Registry,
    presence: PresenceHandle,
    metrics: Metrics,
    nonces: Nonces,
    sessions: HashMap<String, Session>,
    failures: HashMap<IpAddr, (u32, Millis)>,
    answered: Answered,
    tag: String,
    gateway_id: String,
    rejections: Rejections,
    /// The first bytes of the message being handled, kept if it is refused.
    raw: Vec<u8>,
    /// Requests vigil sends (catalog queries), flushed by the transport after each message.
    outgoing: Vec<(SocketAddr, Vec<u8>)>,
    catalogs: Assemblies,
    sn: u64,
    cseq: u32,
}

/// A request handled: the answer to send, if any.
type Answer = Option<Vec<u8>>;

/// Where an answer goes.
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

impl Server {
    pub fn new(
        cfg: Gb28181Config,
        gateway_id: String,
        registry: Registry,
        presence: PresenceHandle,
        metrics: Metrics,
        rejections: Rejections,
    ) -> Self {
        let tag = uuid::Uuid::now_v7().simple().to_string()[..16].to_owned();
        Server {
            cfg,
            registry,
            presence,
            metrics,
            nonces: Nonces::default(),
            sessions: HashMap::new(),
            failures: HashMap::new(),
            answered: Answered::default(),
            gateway_id,
            rejections,
            raw: Vec::with_capacity(crate::rejections::RAW_MAX),
            outgoing: Vec::new(),
            catalogs: Assemblies::default(),
            sn: u64::from(now_ms().rem_euclid(900_000) as u32) + 100_000,
            cseq: 1,
            tag,
        }
    }

    /// Serves requests from both transports until cancelled: one owner of all SIP state.
    pub async fn run(mut self, udp: Arc<UdpSocket>, mut inbound: mpsc::Receiver<Inbound>, cancel: CancellationToken) {
        info!("GB/T 28181 source listening (UDP and TCP).");
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            let req = tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                r = inbound.recv() => match r {
                    Some(r) => r,
                    None => break,
                },
                _ = tick.tick() => {
                    self.expire_catalogs().await;
                    continue;
                }
            };
            let udp_peer = matches!(req.reply, Reply::Udp);
            if let Some(answer) = self.handle(&req.bytes, req.from, udp_peer).await {
                self.count_out(&answer);
                match req.reply {
                    Reply::Udp => {
                        if let Err(e) = udp.send_to(&answer, req.from).await {
                            debug!(peer = %req.from, error = %e, "Cannot send a SIP answer.");
                        }
                    }
                    Reply::Tcp(tx) => {
                        let _ = tx.try_send(answer);
                    }
                }
            }
            // Requests vigil sends go after the answer that prompted them.
            for (to, bytes) in std::mem::take(&mut self.outgoing) {
                self.metrics.sip_messages.with_label_values(&["MESSAGE", "out"]).inc();
                if let Err(e) = udp.send_to(&bytes, to).await {
                    debug!(peer = %to, error = %e, "Cannot send a SIP request.");
                }
            }
        }
        info!("GB/T 28181 source stopped.");
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

    /// Handles one datagram.
    pub async fn handle(&mut self, bytes: &[u8], from: SocketAddr, udp_peer: bool) -> Answer {
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            return None; // CRLF keep-alive
        }
        self.raw.clear();
        self.raw.extend_from_slice(&bytes[..bytes.len().min(crate::rejections::RAW_MAX)]);
        let msg = match Message::parse(bytes) {
            Ok(m) => m,
            Err(e) => {
                self.reject(e.reason(), from, e.to_string());
                warn!(peer = %from, error = %e, excerpt = %String::from_utf8_lossy(&bytes[..bytes.len().min(80)]), "Unparseable SIP message dropped.");
                return None;
            }
        };
        let method = match &msg.start {
            StartLine::Request { method, .. } => method.to_ascii_uppercase(),
            StartLine::Response { .. } => {
                self.metrics.sip_messages.with_label_values(&["response", "in"]).inc();
                return None; // answers to requests vigil sends come with the queries
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
        let mut remember = true;
        let answer = match method.as_str() {
            "REGISTER" => self.register(&msg, from, now, udp_peer).await,
            "MESSAGE" => {
                let (answer, idempotent) = self.message(&msg, from, now).await;
                // A repeated keepalive is harmless evidence; only side effects are remembered.
                remember = !idempotent;
                answer
            }
            "OPTIONS" => message::response(
                &msg,
                200,
                "OK",
                from,
                &self.tag,
                &[("Allow", "REGISTER, MESSAGE, OPTIONS, ACK, BYE".into())],
                b"",
            ),
            _ => message::response(
                &msg,
                405,
                "Method Not Allowed",
                from,
                &self.tag,
                &[("Allow", "REGISTER, MESSAGE, OPTIONS, ACK, BYE".into())],
                b"",
            ),
        };
        if remember {
            self.answered.insert(key, Arc::new(answer.clone()), now);
        }
        Some(answer)
    }

    fn window_ms(&self) -> i64 {
        (self.cfg.keepalive_interval.as_millis() as i64) * i64::from(self.cfg.keepalive_misses)
    }

    fn failed(&mut self, ip: IpAddr, now: Millis) {
        if self.failures.len() >= SWEEP_AT {
            self.failures.retain(|_, (_, since)| now - *since < FAILURE_WINDOW_MS);
        }
        let e = self.failures.entry(ip).or_insert((0, now));
        if now - e.1 >= FAILURE_WINDOW_MS {
            *e = (0, now);
        }
        e.0 += 1;
    }

    fn limited(&self, ip: IpAddr, now: Millis) -> bool {
        self.failures.get(&ip).is_some_and(|(n, since)| *n >= MAX_FAILURES && now - *since < FAILURE_WINDOW_MS)
    }

    async fn register(&mut self, msg: &Message<'_>, from: SocketAddr, now: Millis, udp_peer: bool) -> Vec<u8> {
        let outcome = |s: &Self, o: &str| s.metrics.sip_registrations.with_label_values(&[o]).inc();
        let Some(id) = msg.header("From").and_then(uri_user).map(str::to_owned) else {
            self.reject("no_device_id", from, "no device id in From".into());
            return message::response(msg, 400, "Bad Request (no device id in From)", from, &self.tag, &[], b"");
        };
        let code = match GbCode::parse(&id) {
            Ok(c) => c,
            Err(e) => {
                self.reject("bad_device_id", from, e.to_string());
                warn!(peer = %from, device = %id, error = %e, "REGISTER with a device id that is not a GB/T 28181 code.");
                return message::response(
                    msg,
                    400,
                    "Bad Request (device id is not a 20-digit GB/T 28181 code)",
                    from,
                    &self.tag,
                    &[],
                    b"",
                );
            }
        };
        if self.limited(from.ip(), now) {
            outcome(self, "rate_limited");
            return message::response(msg, 403, "Forbidden (too many failed attempts)", from, &self.tag, &[], b"");
        }
        let known = self.registry.read().device(&id);
        if self.cfg.digest {
            if let Some(refusal) =
                self.authenticate(msg, from, now, &id, known.as_ref().and_then(|d| d.password.clone()))
            {
                return refusal;
            }
        }
        self.admit_and_register(msg, from, now, udp_peer, id, code, known).await
    }

    /// A 401 with a fresh Digest challenge (`stale=true` when the old nonce only expired).
    fn challenge(&mut self, msg: &Message<'_>, from: SocketAddr, now: Millis, stale: bool) -> Vec<u8> {
        let challenge = self.nonces.challenge(&self.cfg.realm, now, stale);
        message::response(msg, 401, "Unauthorized", from, &self.tag, &[("WWW-Authenticate", challenge)], b"")
    }

    /// Checks the digest; `Some(answer)` when the request must be challenged or refused.
    fn authenticate(
        &mut self,
        msg: &Message<'_>,
        from: SocketAddr,
        now: Millis,
        id: &str,
        own_password: Option<String>,
    ) -> Option<Vec<u8>> {
        let outcome = |s: &Self, o: &str| s.metrics.sip_registrations.with_label_values(&[o]).inc();
        let Some(auth) = msg.header("Authorization").or_else(|| msg.header("Proxy-Authorization")) else {
            outcome(self, "challenged");
            return Some(self.challenge(msg, from, now, false));
        };
        let Some(params) = parse_authorization(auth) else {
            outcome(self, "malformed");
            return Some(self.challenge(msg, from, now, false));
        };
        let password = own_password.unwrap_or_else(|| self.cfg.password.clone());
        if params.get("username").is_some_and(|u| u != id) {
            outcome(self, "wrong_username");
            self.failed(from.ip(), now);
            return Some(message::response(
                msg,
                403,
                "Forbidden (username is not the device id)",
                from,
                &self.tag,
                &[],
                b"",
            ));
        }
        match self.nonces.check(now, &params, "REGISTER", &password) {
            Verdict::Ok => {}
            Verdict::Stale | Verdict::Malformed => {
                outcome(self, "challenged");
                return Some(self.challenge(msg, from, now, true));
            }
            Verdict::Wrong | Verdict::Replay => {
                outcome(self, "wrong_password");
                self.failed(from.ip(), now);
                warn!(peer = %from, device = %id, "REGISTER with a wrong password (or a replayed nonce) refused.");
                return Some(message::response(msg, 403, "Forbidden", from, &self.tag, &[], b""));
            }
        }
        None
    }

    /// After authentication: admission, then the registration itself.
    #[allow(clippy::too_many_arguments)]
    async fn admit_and_register(
        &mut self,
        msg: &Message<'_>,
        from: SocketAddr,
        now: Millis,
        udp_peer: bool,
        id: String,
        code: GbCode,
        known: Option<Arc<crate::registry::Device>>,
    ) -> Vec<u8> {
        let outcome = |s: &Self, o: &str| s.metrics.sip_registrations.with_label_values(&[o]).inc();
        // Authenticated. Now: is this device admitted?
        let device = match known {
            Some(d) => d,
            None => {
                let mut attrs = serde_json::Map::new();
                attrs.insert("contact".into(), serde_json::json!(msg.header("Contact").unwrap_or("")));
                attrs.insert("source".into(), serde_json::json!(from.to_string()));
                if let Some(ua) = msg.header("User-Agent") {
                    attrs.insert("user_agent".into(), serde_json::json!(ua));
                }
                let unknown = UnknownDevice {
                    id: id.clone(),
                    protocol: Protocol::Gb28181,
                    kind: code.device_kind(),
                    name: None,
                    attrs,
                };
                match self.registry.admit(unknown).await {
                    Ok(AdmissionOutcome::Added(d)) | Ok(AdmissionOutcome::Known(d)) => {
                        info!(device = %id, peer = %from, admission = %d.admission, org = ?d.org_id, "New GB/T 28181 device registered itself.");
                        let _ = self.presence.track(vec![(d.key, Arc::from(d.id.as_str()), d.protocol.as_str())]).await;
                        d
                    }
                    Ok(AdmissionOutcome::Refused) => {
                        outcome(self, "refused");
                        return message::response(
                            msg,
                            403,
                            "Forbidden (unknown device; admission is closed)",
                            from,
                            &self.tag,
                            &[],
                            b"",
                        );
                    }
                    Err(e) => {
                        warn!(device = %id, error = %e, "Cannot admit a new device.");
                        return message::response(
                            msg,
                            503,
                            "Service Unavailable",
                            from,
                            &self.tag,
                            &[("Retry-After", "30".into())],
                            b"",
                        );
                    }
                }
            }
        };
        match device.admission {
            Admission::Approved => {}
            Admission::Quarantined => {
                outcome(self, "quarantined");
                return message::response(msg, 403, "Forbidden (awaiting approval)", from, &self.tag, &[], b"");
            }
            Admission::Rejected => {
                outcome(self, "rejected");
                return message::response(msg, 403, "Forbidden (rejected)", from, &self.tag, &[], b"");
            }
        }
        let requested: u64 = msg
            .header("Expires")
            .and_then(|v| v.trim().parse().ok())
            .or_else(|| msg.header("Contact").and_then(|c| param(c, "expires")).and_then(|v| v.parse().ok()))
            .unwrap_or(self.cfg.register_expires_max.as_secs());
        let contact = msg.header("Contact").map(str::to_owned).unwrap_or_else(|| format!("<sip:{id}@{from}>"));
        let evidence = if requested == 0 {
            self.sessions.remove(&id);
            outcome(self, "unregistered");
            info!(device = %id, peer = %from, "Device un-registered.");
            Evidence::SipUnregister
        } else {
            let granted = requested.clamp(MIN_EXPIRES_S, self.cfg.register_expires_max.as_secs().max(MIN_EXPIRES_S));
            let previous = self.sessions.get(&id).map(|s| s.source);
            if previous.is_some_and(|p| p != from) {
                info!(device = %id, peer = %from, "Device registered from a new address; contact updated.");
            }
            // A new registration (not a refresh) asks for the device's catalog. Over TCP the
            // query waits for the TCP client transactions (next step).
            if previous != Some(from) && udp_peer {
                self.query(&id, from, "Catalog");
                self.query(&id, from, "DeviceInfo");
            }
            self.sessions.insert(id.clone(), Session { source: from, expires_at: now + granted as i64 * 1000 });
            outcome(self, "registered");
            Evidence::SipRegister { expires_ms: granted as i64 * 1000, window_ms: self.window_ms() }
        };
        let granted = match evidence {
            Evidence::SipRegister { expires_ms, .. } => expires_ms / 1000,
            _ => 0,
        };
        if self.presence.observe(Observation { device: device.key, at: now, evidence, detail: None }).await.is_err() {
            return message::response(msg, 503, "Service Unavailable", from, &self.tag, &[], b"");
        }
        let date =
            crate::clock::to_datetime(now, &chrono_tz::Asia::Shanghai).format("%Y-%m-%dT%H:%M:%S%.3f").to_string();
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

    /// Answers a MESSAGE; the flag says whether handling it again would change nothing.
    async fn message(&mut self, msg: &Message<'_>, from: SocketAddr, now: Millis) -> (Vec<u8>, bool) {
        let Some(id) = msg.header("From").and_then(uri_user).map(str::to_owned) else {
            self.reject("no_device_id", from, "no device id in From".into());
            return (
                message::response(msg, 400, "Bad Request (no device id in From)", from, &self.tag, &[], b""),
                true,
            );
        };
        let (text, _charset) = manscdp::decode(msg.body);
        let env = match manscdp::envelope(&text) {
            Ok(e) => e,
            Err(e) => {
                self.reject(e.reason(), from, e.to_string());
                warn!(device = %id, peer = %from, error = %e, "MANSCDP body refused.");
                return (message::response(msg, 400, "Bad Request (MANSCDP body)", from, &self.tag, &[], b""), true);
            }
        };
        let Some(device) = self.registry.read().device(&id) else {
            self.reject("unknown_device", from, format!("MESSAGE from {id}, which is not in the registry"));
            return (message::response(msg, 403, "Forbidden (not registered)", from, &self.tag, &[], b""), true);
        };
        // Answers that write to the registry (catalog, device info) are taken only from the
        // address the device registered from: MESSAGE carries no credentials, and a forged
        // From must not rewrite a device's channels.
        let writes = env.root == "Response" || env.cmd_type == "Catalog";
        if writes && !self.sessions.get(&id).is_some_and(|s| s.source.ip() == from.ip() && s.expires_at > now) {
            self.reject(
                "not_from_registered_address",
                from,
                format!("{}/{} for {id} from an address it did not register from", env.root, env.cmd_type),
            );
            return (
                message::response(msg, 403, "Forbidden (not registered from this address)", from, &self.tag, &[], b""),
                true,
            );
        }
        // Keepalives are harmless evidence and catalog parts are deduplicated by channel id.
        let idempotent = matches!(env.cmd_type.as_str(), "Keepalive" | "Catalog" | "DeviceInfo");
        match (env.root.as_str(), env.cmd_type.as_str()) {
            ("Notify", "Keepalive") => {
                if self.sessions.get(&id).is_none_or(|s| s.expires_at <= now) {
                    debug!(device = %id, "Keepalive from a device with no registration in this process; presence judges it.");
                }
                let obs = Observation {
                    device: device.key,
                    at: now,
                    evidence: Evidence::SipKeepalive { window_ms: self.window_ms() },
                    detail: None,
                };
                if self.presence.observe(obs).await.is_err() {
                    return (message::response(msg, 503, "Service Unavailable", from, &self.tag, &[], b""), true);
                }
            }
            ("Response", "DeviceInfo") => match manscdp::device_info(&text) {
                Ok(info) => {
                    let mut attrs = text_attrs([
                        ("device_name", info.device_name),
                        ("manufacturer", info.manufacturer),
                        ("model", info.model),
                        ("firmware", info.firmware),
                    ]);
                    if let Some(n) = info.channels {
                        attrs.insert("channel_count".into(), serde_json::json!(n));
                    }
                    if let Err(e) = self.registry.merge_attrs(&id, attrs).await {
                        warn!(device = %id, error = %e, "Cannot store the device's DeviceInfo.");
                    }
                }
                Err(e) => {
                    self.reject(e.reason(), from, e.to_string());
                    return (
                        message::response(msg, 400, "Bad Request (DeviceInfo body)", from, &self.tag, &[], b""),
                        true,
                    );
                }
            },
            ("Response", "Catalog") | ("Notify", "Catalog") => match manscdp::catalog(&text) {
                Ok(part) => {
                    if let Some(done) = self.catalogs.add(&id, part, now) {
                        self.store_catalog(done).await;
                    }
                }
                Err(e) => {
                    self.reject(e.reason(), from, e.to_string());
                    return (
                        message::response(msg, 400, "Bad Request (catalog body)", from, &self.tag, &[], b""),
                        true,
                    );
                }
            },
            (root, cmd) => {
                self.reject("unhandled_manscdp", from, format!("{root}/{cmd} is not handled yet"));
                debug!(device = %id, root, cmd, "MANSCDP message not handled yet; answered 200.");
            }
        }
        (message::response(msg, 200, "OK", from, &self.tag, &[], b""), idempotent)
    }

    /// Queues a MANSCDP `Query` MESSAGE (`Catalog`, `DeviceInfo`) to a device at `to`.
    fn query(&mut self, device: &str, to: SocketAddr, cmd_type: &str) {
        self.sn += 1;
        self.cseq += 1;
        let body = manscdp::query(cmd_type, self.sn, device);
        let realm = &self.cfg.realm;
        let call = uuid::Uuid::now_v7().simple().to_string();
        let head = format!(
            "MESSAGE sip:{device}@{to} SIP/2.0\r\nVia: SIP/2.0/UDP {listen};rport;branch=z9hG4bK{call}\r\n\
From: <sip:{gw}@{realm}>;tag={tag}\r\nTo: <sip:{device}@{realm}>\r\nCall-ID: {call}\r\nCSeq: {cseq} MESSAGE\r\n\
Content-Type: Application/MANSCDP+xml\r\nMax-Forwards: 70\r\nUser-Agent: vigil/{ver}\r\nContent-Length: {len}\r\n\r\n",
            listen = self.cfg.listen,
            gw = self.gateway_id,
            tag = self.tag,
            cseq = self.cseq,
            ver = env!("CARGO_PKG_VERSION"),
            len = body.len(),
        );
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&body);
        debug!(device, sn = self.sn, cmd_type, "Query sent.");
        self.outgoing.push((to, bytes));
    }

    async fn expire_catalogs(&mut self) {
        for partial in self.catalogs.expire(now_ms()) {
            self.store_catalog(partial).await;
        }
    }

    /// Stores an assembled catalog: a complete one replaces the channel list, a partial one
    /// only adds and updates.
    async fn store_catalog(&mut self, done: Assembled) {
        let n = done.items.len();
        let channels: Vec<Channel> = done
            .items
            .into_iter()
            .filter(|i| i.device_id != done.device_id)
            .map(|i| {
                let attrs = text_attrs([
                    ("manufacturer", i.manufacturer),
                    ("model", i.model),
                    ("parent_id", i.parent_id),
                    ("civil_code", i.civil_code),
                    ("address", i.address),
                    ("longitude", i.longitude),
                    ("latitude", i.latitude),
                ]);
                Channel { id: i.device_id, name: i.name, status_on: i.status_on, attrs }
            })
            .collect();
        let stored = if done.complete {
            self.registry.replace_channels(&done.device_id, channels).await
        } else {
            self.registry.merge_channels(&done.device_id, channels).await
        };
        match stored {
            Ok(()) => info!(device = %done.device_id, items = n, complete = done.complete, "Catalog stored."),
            Err(e) => warn!(device = %done.device_id, error = %e, "Cannot store a catalog."),
        }
    }
}

/// The non-empty texts as JSON attributes.
fn text_attrs<const N: usize>(pairs: [(&str, String); N]) -> serde_json::Map<String, serde_json::Value> {
    pairs
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.to_owned(), serde_json::Value::String(v)))
        .collect()
}
