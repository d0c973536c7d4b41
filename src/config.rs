//! Configuration: the serde structs of shared/CONFIG.md, their defaults, loading (TOML file,
//! then `VIGIL_<SECTION>__<KEY>` environment overrides) and `validate()`, which returns every
//! problem with its key path. No I/O beyond reading the file; nothing is started here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::domain::{DeviceKind, OrgKind};
use crate::event::EventKind;

/// A problem found in the configuration, with the key path it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// A period that may be switched off: "5m" → Some(5 min), "off" → None.
/// `FIRST-LAST` (or one port): the inclusive range of UDP/TCP ports, no port 0.
pub fn parse_ports(s: &str) -> Result<std::ops::RangeInclusive<u16>, String> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let port = |t: &str| t.trim().parse::<u16>().ok().filter(|p| *p > 0);
    match (port(a), port(b)) {
        (Some(a), Some(b)) if a <= b => Ok(a..=b),
        _ => Err(format!("{s:?} is not a port range FIRST-LAST (1-65535, FIRST <= LAST)")),
    }
}

pub fn parse_every(s: &str) -> Result<Option<Duration>, String> {
    match s.trim() {
        "off" | "" => Ok(None),
        t => match humantime::parse_duration(t) {
            Ok(d) if d >= Duration::from_millis(100) => Ok(Some(d)),
            Ok(_) => Err(format!("{t:?} is too short (at least 100ms, or \"off\")")),
            Err(e) => Err(format!("{t:?} is not a duration or \"off\": {e}")),
        },
    }
}

pub fn parse_bytes(s: &str) -> Result<u64, String> {
    s.trim().parse::<ByteSize>().map(|b| b.as_u64()).map_err(|e| format!("{s:?} is not a size such as 4MiB: {e}"))
}

/// Sets the value at `path` (keys and array indices) of a TOML document to `value`, or removes
/// the key when `value` is `None`; false when the path's table is not in it.
fn replace_at(text: &mut String, path: &[String], value: Option<&str>) -> bool {
    let Ok(mut doc) = toml::from_str::<toml::Value>(text) else { return false };
    let Some((last, parents)) = path.split_last() else { return false };
    let mut at = &mut doc;
    for p in parents {
        let next = match at {
            toml::Value::Table(t) => t.get_mut(p),
            toml::Value::Array(a) => p.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            _ => None,
        };
        let Some(n) = next else { return false };
        at = n;
    }
    let value = value.map(|v| toml::Value::String(v.to_owned()));
    match (at, last.parse::<usize>()) {
        (toml::Value::Table(table), _) => {
            match value {
                Some(v) => table.insert(last.clone(), v),
                None => table.remove(last),
            };
        }
        (toml::Value::Array(list), Ok(i)) if i < list.len() => match value {
            Some(v) => list[i] = v,
            None => {
                list.remove(i);
            }
        },
        _ => return false,
    }
    match toml::to_string(&doc) {
        Ok(t) => {
            *text = t;
            true
        }
        Err(_) => false,
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Parse(String),
    #[error("{} problem(s) in the configuration:\n{}", .0.len(), .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ConfigProblem>),
}

impl Error {
    pub fn kind(&self) -> crate::error::ErrorKind {
        crate::error::ErrorKind::InvalidInput
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub gateway: Gateway,
    pub database: Database,
    pub http: Http,
    pub assessment: Assessment,
    pub orgs: Vec<OrgSeed>,
    pub admission: Admission,
    pub presence: Presence,
    pub gb28181: Gb28181,
    pub rtsp: Rtsp,
    pub patrol: Patrol,
    pub mqtt: Mqtt,
    pub gat1400: Gat1400,
    pub media: Media,
    pub quic: Quic,
    pub upstreams: Vec<Upstream>,
    pub relay: Relay,
    pub tuning: Tuning,
}

/// Patrol (轮巡): every approved GB/T 28181 channel pulled in turn, its picture checked.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Patrol {
    pub enabled: bool,
    /// A round starts this often. Default 6h.
    #[serde(with = "humantime_serde")]
    pub every: Duration,
    /// The first scheduled round, after start (devices have registered by then). Default 5m.
    #[serde(with = "humantime_serde")]
    pub first_after: Duration,
    /// How long each channel is looked at once its picture plays. Default 8s.
    #[serde(with = "humantime_serde")]
    pub hold: Duration,
    /// Channels pulled at once. Default 16.
    pub concurrency: usize,
    /// Channels of one device (NVR, lower platform) pulled at once; lowered for the round when
    /// the device answers 486/503 (its preview links are full). Default 4.
    pub per_device: usize,
}

impl Default for Patrol {
    fn default() -> Self {
        Patrol {
            enabled: true,
            every: Duration::from_secs(6 * 3600),
            first_after: Duration::from_secs(300),
            hold: Duration::from_secs(8),
            concurrency: 16,
            per_device: 4,
        }
    }
}

/// The relay's outbox.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Relay {
    /// Delivered rows are kept this long for audit ("which record went where, when"), then
    /// pruned. Default 7 days.
    #[serde(with = "humantime_serde")]
    pub keep_delivered: Duration,
    /// Undelivered records (over all upstreams) at which the outbox stops taking more and
    /// sources are slowed. Default 5,000,000.
    pub max_backlog: u64,
    /// Free disk under the data directory below which the outbox stops taking records; an
    /// alarm is raised below twice this. Default "1GiB".
    pub min_free_disk: ByteSize,
}

impl Default for Relay {
    fn default() -> Self {
        Relay {
            keep_delivered: Duration::from_secs(7 * 86_400),
            max_backlog: 5_000_000,
            min_free_disk: ByteSize::gib(1),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Gateway {
    /// This gateway's own 20-digit GB/T 28181 id. Default "42010400002000000001".
    pub id: String,
    /// A name for operators. Default "vigil gateway".
    pub name: String,
    /// Directory for the SQLite file, images and state. Default "./data".
    pub data_dir: PathBuf,
}

impl Default for Gateway {
    fn default() -> Self {
        Self { id: "42010400002000000001".into(), name: "vigil gateway".into(), data_dir: PathBuf::from("./data") }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Database {
    /// `sqlite://PATH` or `postgres://user@host/db`. Default: empty, meaning
    /// `sqlite://<gateway.data_dir>/vigil.db`.
    pub url: String,
    /// Connections in the pool. Default 8 (PostgreSQL), 4 (SQLite).
    pub max_connections: Option<u32>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Http {
    /// Address of the API, dashboard and /metrics. Default 127.0.0.1:8080.
    pub listen: SocketAddr,
    /// Bearer tokens and their roles. Default: none, which leaves the API open; allowed
    /// only while `listen` is a loopback address.
    pub tokens: Vec<Token>,
    /// Serve /api/v1/health and /metrics without a token. Default true.
    pub public_health: bool,
    /// Largest request body accepted, bytes (CSV imports are the big ones). Default 64 MiB.
    pub max_body: usize,
    /// Deadline for one request. Default 30s.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// A request's headers (and the next request on an idle kept-alive connection) must
    /// arrive within this, else the connection is closed. Default 30s.
    #[serde(with = "humantime_serde")]
    pub header_deadline: Duration,
    /// Serve HTTPS: the certificate chain and its private key, PEM files. Default: both
    /// empty (plain HTTP; put TLS in front, or set both).
    pub tls_cert: String,
    pub tls_key: String,
}

impl Default for Http {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tokens: Vec::new(),
            public_health: true,
            max_body: 64 * 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            header_deadline: Duration::from_secs(30),
            tls_cert: String::new(),
            tls_key: String::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Token {
    pub token: String,
    pub role: Role,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Admin,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Assessment {
    /// How often the online rate is sampled, aligned to the zone's midnight (so "1h" is on
    /// the hour). Default 1h; at least 10s.
    #[serde(with = "humantime_serde")]
    pub sample_every: Duration,
    /// IANA zone for sampling instants, days of reports and times in responses.
    /// Default "Asia/Shanghai".
    pub timezone: String,
    /// The rate below which dashboards and metrics show a warning. Default 0.95.
    pub online_target: f64,
    /// Count devices in maintenance in the denominator (some local rules do). Default false.
    pub count_maintenance: bool,
    /// How long samples and presence history are kept. Default 400 days.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
}

impl Default for Assessment {
    fn default() -> Self {
        Self {
            sample_every: Duration::from_secs(3600),
            timezone: "Asia/Shanghai".into(),
            online_target: 0.95,
            count_maintenance: false,
            retention: Duration::from_secs(400 * 86_400),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OrgSeed {
    pub id: String,
    pub name: String,
    pub kind: OrgKind,
    #[serde(default)]
    pub parent: Option<String>,
    #[serde(default)]
    pub gb_prefix: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AdmissionPolicy {
    /// Unknown devices are approved and counted at once.
    Open,
    /// Unknown devices are listed as quarantined until an operator approves them.
    #[default]
    Quarantine,
    /// Unknown devices are refused and not listed.
    Closed,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Admission {
    /// What happens to devices that register themselves unannounced. Default quarantine.
    pub policy: AdmissionPolicy,
    /// Place a GB/T 28181 device in the org whose gb_prefix is the longest prefix of its id.
    /// Default true.
    pub org_from_gb_prefix: bool,
    /// Most devices waiting in quarantine at once; past it new ones are refused (counted).
    /// Default 10000.
    pub max_quarantined: usize,
    /// Most devices in quarantine from one source address (or one MQTT broker). Default 500.
    pub max_quarantined_per_origin: usize,
    /// New devices one source address may announce per minute, whatever the policy.
    /// Default 120.
    pub new_per_origin_per_minute: u32,
    /// A quarantined device no operator approved within this is deleted. Default 7d.
    #[serde(with = "humantime_serde")]
    pub quarantine_ttl: Duration,
}

impl Default for Admission {
    fn default() -> Self {
        Self {
            policy: AdmissionPolicy::Quarantine,
            org_from_gb_prefix: true,
            max_quarantined: 10_000,
            max_quarantined_per_origin: 500,
            new_per_origin_per_minute: 120,
            quarantine_ttl: Duration::from_secs(7 * 86_400),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Presence {
    /// How often hot presence state (last seen, validity windows) is written. A kill -9
    /// loses at most this much of it; transitions are written as they happen. Default 30s.
    #[serde(with = "humantime_serde")]
    pub checkpoint_every: Duration,
    /// Longest time transitions wait to be batched into one write. Default 200ms.
    #[serde(with = "humantime_serde")]
    pub flush_every: Duration,
    /// Transitions held in memory while the database is away; past it presence slows
    /// its sources rather than forget. Default 100000.
    pub max_pending: usize,
}

impl Default for Presence {
    fn default() -> Self {
        Self {
            checkpoint_every: Duration::from_secs(30),
            flush_every: Duration::from_millis(200),
            max_pending: 100_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Gb28181 {
    pub enabled: bool,
    /// Require HTTP Digest on REGISTER. Default true. `false` accepts any REGISTER from an
    /// approved device without a password: for benchmarks and isolated test networks only.
    pub digest: bool,
    pub listen: SocketAddr,
    pub realm: String,
    pub password: String,
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    pub keepalive_misses: u32,
    #[serde(with = "humantime_serde")]
    pub register_expires_max: Duration,
    /// What vigil writes to devices: `auto` (as each device declared), or one for all.
    pub charset: SipCharset,
    /// RTP receive ports for live media, `FIRST-LAST` (one port per stream).
    pub media_ports: String,
    /// One port for every stream, told apart by SSRC (UDP; and TCP with `tcp_passive`);
    /// 0: one port per stream from `media_ports`.
    pub media_single_port: u16,
    /// `udp`, `tcp_passive` or `tcp_active`.
    pub media_transport: GbMediaTransport,
    /// The serials (last 6 digits, `FIRST-LAST`) of the GB/T 28181 ids vigil allocates for
    /// devices that have none (RTSP cameras, checkpoints) so cascade uppers see them.
    pub id_serials: String,
    /// How often an RTCP receiver report goes to each device sending RTP over UDP; 0s: never.
    #[serde(with = "humantime_serde")]
    pub rtcp_interval: Duration,
    /// The address devices send media to (the SDP `c=` line); empty: the local address of
    /// the route to each device.
    pub media_address: String,
    /// A device that has not answered an INVITE within this is given up (`invite_timeout`).
    #[serde(with = "humantime_serde")]
    pub invite_timeout: Duration,
    /// No RTP within this after the 200 is `no_media`; no picture for this long while playing
    /// is `stalled`.
    #[serde(with = "humantime_serde")]
    pub media_timeout: Duration,
    /// An operator's pull (a snapshot, `POST .../stream`) keeps the stream this long.
    #[serde(with = "humantime_serde")]
    pub stream_hold: Duration,
    /// A SIP message begun on a TCP connection must be whole within this, else the
    /// connection is closed. Default 32s (RFC 3261 Timer F).
    #[serde(with = "humantime_serde")]
    pub message_deadline: Duration,
}

impl Default for Gb28181 {
    fn default() -> Self {
        Self {
            enabled: true,
            digest: true,
            listen: SocketAddr::from(([0, 0, 0, 0], 5060)),
            realm: "4201040000".into(),
            password: "12345678".into(),
            keepalive_interval: Duration::from_secs(60),
            keepalive_misses: 3,
            register_expires_max: Duration::from_secs(3600),
            charset: SipCharset::Auto,
            media_ports: "30000-30999".into(),
            media_single_port: 0,
            media_transport: GbMediaTransport::Udp,
            id_serials: "900000-999999".into(),
            rtcp_interval: Duration::from_secs(5),
            media_address: String::new(),
            invite_timeout: Duration::from_secs(10),
            media_timeout: Duration::from_secs(10),
            stream_hold: Duration::from_secs(60),
            message_deadline: Duration::from_secs(32),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rtsp {
    pub enabled: bool,
    pub transport: RtspTransport,
    #[serde(with = "humantime_serde")]
    pub stall_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_min: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// Video quality check per stream: a duration ("5m") or "off".
    pub diagnosis_every: String,
    /// Consecutive bad diagnosis samples before an alarm. Default 3.
    pub diagnosis_alarm_after: u32,
    /// Deadline for each of connect+DESCRIBE, SETUP and PLAY. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Connect attempts in flight at once over all cameras (a connect storm cap). Default 32.
    pub max_connecting: usize,
    /// A snapshot younger than this is answered from cache. Default 2 s.
    #[serde(with = "humantime_serde")]
    pub snapshot_max_age: Duration,
    /// Threads the pulls run on (each drives its share of the cameras). Default 1: one
    /// thread takes 500 cameras at ~1 Mbit/s with most of its time to spare.
    pub threads: usize,
    pub cameras: Vec<RtspCamera>,
}

impl Default for Rtsp {
    fn default() -> Self {
        Self {
            enabled: true,
            transport: RtspTransport::Tcp,
            stall_timeout: Duration::from_secs(10),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            diagnosis_every: "5m".into(),
            diagnosis_alarm_after: 3,
            connect_timeout: Duration::from_secs(10),
            max_connecting: 32,
            snapshot_max_age: Duration::from_secs(2),
            threads: 1,
            cameras: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RtspCamera {
    pub id: String,
    #[serde(default)]
    pub name: String,
    pub url: String,
    #[serde(default)]
    pub org: Option<String>,
    #[serde(default = "default_camera_kind")]
    pub kind: DeviceKind,
}

fn default_camera_kind() -> DeviceKind {
    DeviceKind::Camera
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Mqtt {
    /// embedded (vigil runs a broker on `listen`), external (connect to `url`) or off.
    pub mode: MqttMode,
    /// The embedded broker's listener. Default 127.0.0.1:1884.
    pub listen: SocketAddr,
    /// The external broker: `mqtt://host:port` or `mqtts://host:port` (TLS with the
    /// system's roots, or `ca`: a broker certificate they do not vouch for is refused, counted
    /// in vigil_mqtt_connection_errors_total, and tried again). Default mqtt://127.0.0.1:1883.
    pub url: String,
    /// mqtts:// only: the CA certificates (PEM) the broker's certificate is checked against,
    /// instead of the system's roots (a district's own CA). Default "" (the system's roots).
    pub ca: String,
    /// mqtts:// only: vigil's client certificate chain and private key (PEM), for a broker
    /// that asks for one (Mosquitto's `require_certificate true`). Both or neither.
    pub cert: String,
    pub key: String,
    /// Stable client id: with a persistent session the broker keeps what arrived while vigil
    /// was away and redelivers what was not acknowledged. Default "vigil-1".
    pub client_id: String,
    pub username: String,
    pub password: String,
    /// e.g. "vigil": subscribe as `$share/vigil/...` so several instances split the load.
    pub shared_group: String,
    /// Device profiles (one TOML file each). Default "device-profiles".
    pub profiles_dir: PathBuf,
    /// Largest MQTT packet accepted (inline images are big). Default "8MiB".
    pub max_packet: ByteSize,
    /// MQTT keep-alive. Default 30s.
    #[serde(with = "humantime_serde")]
    pub keep_alive: Duration,
    /// Messages taken from the broker and not yet committed and acknowledged; past it vigil
    /// stops reading (the broker holds the rest). Default 1024.
    pub inflight: usize,
    /// Reconnect backoff bounds (exponential, full jitter). Default 1s and 30s.
    #[serde(with = "humantime_serde")]
    pub backoff_min: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// The embedded broker: the password of a device that has none of its own in the
    /// registry (devices log in with their id as the username). Default "12345678".
    pub device_password: String,
    /// The embedded broker: let clients in without a username (a lab; they are not checked).
    /// Default false.
    pub allow_anonymous: bool,
    /// The embedded broker's gate: a packet a device has begun must be whole within this, and
    /// what the gate writes to a device must be taken within it; else the connection is
    /// closed and counted. Default 60s (an 8 MiB picture over about 1.1 Mbit/s).
    #[serde(with = "humantime_serde")]
    pub message_deadline: Duration,
}

impl Default for Mqtt {
    fn default() -> Self {
        Self {
            mode: MqttMode::Embedded,
            listen: SocketAddr::from(([127, 0, 0, 1], 1884)),
            url: "mqtt://127.0.0.1:1883".into(),
            ca: String::new(),
            cert: String::new(),
            key: String::new(),
            client_id: "vigil-1".into(),
            username: String::new(),
            password: String::new(),
            shared_group: String::new(),
            profiles_dir: PathBuf::from("device-profiles"),
            max_packet: ByteSize::mib(8),
            keep_alive: Duration::from_secs(30),
            inflight: 1024,
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            device_password: "12345678".into(),
            allow_anonymous: false,
            message_deadline: Duration::from_secs(60),
        }
    }
}

/// Images that events refer to.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Media {
    /// Largest single image kept. Default "4MiB".
    pub max_image: ByteSize,
}

impl Default for Media {
    fn default() -> Self {
        Self { max_image: ByteSize::mib(4) }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Gat1400 {
    pub enabled: bool,
    pub listen: SocketAddr,
    pub realm: String,
    pub password: String,
    pub max_body: ByteSize,
    /// Every request after Register carries a digest (not only the registering address).
    pub digest_every_request: bool,
    /// Request headers must arrive within this (slow senders are closed). Default 15s.
    #[serde(with = "humantime_serde")]
    pub header_deadline: Duration,
}

impl Default for Gat1400 {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([0, 0, 0, 0], 9100)),
            realm: "vigil".into(),
            password: "12345678".into(),
            max_body: ByteSize::mib(16),
            digest_every_request: false,
            header_deadline: Duration::from_secs(15),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Quic {
    pub listen: String,
    pub cert: String,
    pub key: String,
    pub ca: String,
}

/// One upstream platform. Which keys apply depends on `protocol`; `validate()` checks them.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Upstream {
    pub name: String,
    /// Required: one of gat1400, quic, gb28181.
    pub protocol: Option<UpstreamProtocol>,
    pub url: String,
    pub user_id: String,
    pub password: String,
    pub events: Vec<EventKind>,
    pub server_id: String,
    pub server_addr: String,
    /// protocol quic: the name the hub's certificate is checked for (default: the URL's host).
    pub server_name: String,
    /// protocol gat1400: the path under `url` where records GA/T 1400 has no standard object
    /// for (access, alarm, status, online_rate) are pushed, e.g. "/Community". Empty: they are
    /// not relayed to this upstream.
    pub extension: String,
    /// protocol gat1400: "push" (the default: POST to the view library's collections) or
    /// "subscription" (the upper view library subscribes at our `[gat1400]` endpoint, sending
    /// `User-Identify` = `server_id`, and records go as notifications to its `ReceiveAddr`).
    pub mode: RelayMode,
    /// protocol gb28181: the upper's SIP domain (default: the first 10 digits of `server_id`).
    pub domain: String,
    /// protocol gb28181: "udp" (the default) or "tcp" (vigil connects to `server_addr`, keeps
    /// the connection and takes the upper's requests on it; it also accepts the upper's own
    /// connections at `listen`).
    pub transport: String,
    /// protocol gb28181: the registration asked for (default 3600s; refreshed at half of
    /// what the upper grants).
    #[serde(with = "humantime_serde")]
    pub expires: Option<Duration>,
    /// protocol gb28181: how often a keepalive goes up (default 60s).
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Option<Duration>,
    /// protocol gb28181: keepalives unanswered in a row before registering again (default 3).
    pub keepalive_misses: u32,
    /// protocol gb28181: vigil's SIP address for this upper (default "0.0.0.0:5061").
    pub listen: String,
    /// protocol gb28181: `host:port` written in Via and Contact when vigil sits behind NAT
    /// (default: the local address of the route to the upper, with the bound port).
    pub advertise: String,
    /// protocol gb28181: send channel status NOTIFYs even to an upper that never subscribed
    /// (some uppers expect them without a catalog SUBSCRIBE).
    pub notify_without_subscription: bool,
    /// protocol gb28181: an INVITE without `y=` is answered with an SSRC vigil picks (default:
    /// refused with 400, as GB/T 28181 requires the upper's `y=`).
    pub pick_ssrc: bool,
    /// protocol gb28181: the orgs whose devices (with their sub-orgs') this upper sees; empty:
    /// all.
    pub scope_orgs: Vec<String>,
    /// protocol gb28181: the device kinds this upper sees (e.g. camera, nvr); empty: all.
    pub scope_kinds: Vec<DeviceKind>,
    /// protocol gb28181: how the orgs appear in this upper's catalog: `civil` (regions by
    /// their `gb_prefix`, the default), `groups` (business group 215 and virtual orgs 216) or
    /// `flat` (every channel under the platform).
    pub catalog_tree: CatalogTree,
    /// protocol gb28181: community devices (MQTT: access terminals, barriers, sensors) appear
    /// in this upper's catalog too, under ids vigil gives them (default false).
    pub catalog_community: bool,
}

/// `upstreams[].catalog_tree`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CatalogTree {
    #[default]
    Civil,
    Groups,
    Flat,
}

/// `gb28181.id_serials`: `FIRST-LAST`, 6-digit serials, FIRST ≤ LAST.
pub fn parse_serials(s: &str) -> Result<std::ops::RangeInclusive<u32>, String> {
    let bad = || format!("{s:?} is not FIRST-LAST with 6-digit serials, FIRST <= LAST (e.g. \"900000-999999\")");
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let six =
        |x: &str| (x.len() == 6 && x.bytes().all(|c| c.is_ascii_digit())).then(|| x.parse::<u32>().ok()).flatten();
    match (six(a.trim()), six(b.trim())) {
        (Some(a), Some(b)) if a <= b => Ok(a..=b),
        _ => Err(bad()),
    }
}

/// `gb28181.charset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SipCharset {
    /// As each device declared in its messages.
    #[default]
    Auto,
    Gb2312,
    Gbk,
    Gb18030,
    #[serde(rename = "utf-8")]
    Utf8,
}

/// `gb28181.media_transport`: how vigil asks devices to send live media.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GbMediaTransport {
    /// RTP over UDP to a port of `media_ports`.
    #[default]
    Udp,
    /// RTP over TCP: vigil listens on a port of `media_ports`, the device connects.
    TcpPassive,
    /// RTP over TCP: the device listens, vigil connects.
    TcpActive,
}

/// `rtsp.transport`: RTP interleaved on the RTSP connection, or over UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RtspTransport {
    #[default]
    Tcp,
    Udp,
}

/// `mqtt.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MqttMode {
    /// vigil runs the broker devices connect to.
    #[default]
    Embedded,
    /// vigil connects to the district's broker.
    External,
    Off,
}

/// `upstreams[].protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    Gat1400,
    Quic,
    Gb28181,
}

impl UpstreamProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamProtocol::Gat1400 => "gat1400",
            UpstreamProtocol::Quic => "quic",
            UpstreamProtocol::Gb28181 => "gb28181",
        }
    }
}

/// `upstreams[].mode` (GA/T 1400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RelayMode {
    /// POST to the view library's collections.
    #[default]
    Push,
    /// The upper view library subscribes; records go as notifications.
    Subscription,
}

/// Channel capacities and batch sizes. The defaults suit a district of ~10,000 devices.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tuning {
    /// Observations queued for the presence task. Default 65536.
    pub observation_queue: usize,
    /// Transitions queued for the presence writer. Default 16384.
    pub transition_queue: usize,
    /// How often the online-rate rollup is recomputed for the API. Default 1s.
    #[serde(with = "humantime_serde")]
    pub rate_refresh: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Self { observation_queue: 65_536, transition_queue: 16_384, rate_refresh: Duration::from_secs(1) }
    }
}

/// Environment variables that override the file: `VIGIL_<SECTION>__<KEY>`.
pub const ENV_PREFIX: &str = "VIGIL_";

impl Config {
    /// Reads a TOML file (missing path: defaults only), applies `VIGIL_*` overrides, and
    /// validates. Returns every problem found.
    pub fn load(path: Option<&Path>) -> Result<Self, Error> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|source| Error::Read { path: p.to_owned(), source })?,
            None => String::new(),
        };
        Self::from_toml_with_env(&text, true)
    }

    /// Parses TOML text (and, if asked, the `VIGIL_*` environment) and validates.
    pub fn from_toml_with_env(text: &str, env: bool) -> Result<Self, Error> {
        let vars: Vec<(String, String)> = if env {
            Env::prefixed(ENV_PREFIX).split("__").iter().map(|(k, v)| (k.as_str().to_owned(), v)).collect()
        } else {
            Vec::new()
        };
        Self::from_toml_with_vars(text, &vars)
    }

    /// Parses TOML text with overrides given as (dotted lower-case key, raw text) pairs, the
    /// form `VIGIL_GB28181__PASSWORD=…` takes, and validates.
    ///
    /// An override's text is read as TOML would read a bare value (`8080`, `true`,
    /// `[1, 2]`), except where the key's type is a string: there the text is taken as it is,
    /// so a password `12345678`, a realm `4201040000` or a 20-digit id stays the text the
    /// operator wrote (leading zeros and all). Which keys are strings is learnt from the
    /// structs themselves: a key whose parsed value the struct refuses as "expected a
    /// string" is given its raw text and the extraction is tried again.
    ///
    /// A value outside a closed set (an enum) is a problem like the semantic ones: it is
    /// listed with its key and the allowed values, and the rest of the file is still checked,
    /// so `check-config` names every bad key in one run.
    pub fn from_toml_with_vars(text: &str, vars: &[(String, String)]) -> Result<Self, Error> {
        let (config, mut problems) = Self::extract(text, vars)?;
        // A refused value's key is named once: with what was wrong with it.
        for p in config.validate() {
            if !problems.iter().any(|q: &ConfigProblem| q.key == p.key) {
                problems.push(p);
            }
        }
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(Error::Invalid(problems))
        }
    }

    /// The extraction step of [`Config::from_toml_with_vars`], without `validate()`.
    pub fn extract_with_vars(text: &str, vars: &[(String, String)]) -> Result<Self, Error> {
        match Self::extract(text, vars)? {
            (config, problems) if problems.is_empty() => Ok(config),
            (_, problems) => Err(Error::Invalid(problems)),
        }
    }

    /// Extracts, answering the values outside closed sets as problems: each is replaced by
    /// the set's first value and the extraction tried again.
    fn extract(text: &str, vars: &[(String, String)]) -> Result<(Self, Vec<ConfigProblem>), Error> {
        let mut as_text: Vec<usize> = Vec::new();
        let mut problems = Vec::new();
        let mut removed: Vec<(Vec<String>, &'static str)> = Vec::new();
        let mut text = text.to_owned();
        let mut vars = vars.to_vec();
        loop {
            let (text, vars) = (&mut text, &mut vars);
            let mut fig = Figment::new().merge(Toml::string(text.as_str()));
            for (i, (key, raw)) in vars.iter().enumerate() {
                fig = if as_text.contains(&i) {
                    fig.merge((key.as_str(), raw.as_str()))
                } else {
                    let parsed: figment::value::Value = match raw.parse() {
                        Ok(v) => v,
                        Err(never) => match never {},
                    };
                    fig.merge((key.as_str(), parsed))
                };
            }
            let err = match fig.extract::<Config>() {
                Ok(config) => return Ok((config, problems)),
                Err(e) => e,
            };
            let outside = err.clone().into_iter().find_map(|one| match one.kind {
                figment::error::Kind::UnknownVariant(got, allowed) if !allowed.is_empty() => {
                    Some((one.path, got, allowed))
                }
                _ => None,
            });
            // The refused value is taken out, so the key's default stands in for it and no check
            // runs against a value nobody wrote; a key without a default gets the set's first
            // value instead (below, when its absence is the next error).
            if let Some((path, got, allowed)) = outside {
                let dotted = path.join(".");
                if let Some(v) = vars.iter_mut().find(|(k, _)| k.eq_ignore_ascii_case(&dotted)) {
                    v.1 = allowed[0].to_owned();
                } else if !replace_at(text, &path, None) {
                    return Err(Self::parse_error(err));
                }
                removed.push((path.clone(), allowed[0]));
                let key = path
                    .iter()
                    .map(|p| if p.bytes().all(|b| b.is_ascii_digit()) { format!("[{p}]") } else { format!(".{p}") })
                    .collect::<String>();
                let message = format!("{got:?} is not one of {}", allowed.join(", "));
                problems.push(ConfigProblem { key: key.trim_start_matches('.').to_owned(), message });
                continue;
            }
            let required = err.clone().into_iter().find_map(|one| match &one.kind {
                figment::error::Kind::MissingField(field) => removed
                    .iter()
                    .find(|(p, _)| p.split_last().is_some_and(|(l, parents)| l == field && parents == one.path))
                    .cloned(),
                _ => None,
            });
            if let Some((path, first)) = required {
                if replace_at(text, &path, Some(first)) {
                    continue;
                }
            }
            // A string key that was handed a number, a boolean or a list: give it its text.
            let retry = err.clone().into_iter().find_map(|one| match &one.kind {
                figment::error::Kind::InvalidType(_, expected) if expected.contains("string") => {
                    let path = one.path.join(".");
                    (0..vars.len()).find(|i| !as_text.contains(i) && vars[*i].0.eq_ignore_ascii_case(&path))
                }
                _ => None,
            });
            match retry {
                Some(i) => as_text.push(i),
                None => return Err(Self::parse_error(err)),
            }
        }
    }

    fn parse_error(e: figment::Error) -> Error {
        let msgs: Vec<String> = e
            .into_iter()
            .map(|one| {
                let path = one.path.join(".");
                let mut kind = one.kind.to_string();
                if let figment::error::Kind::UnknownField(f, _) = &one.kind {
                    kind = format!("unknown key `{f}` (keys are checked: see shared CONFIG.md)");
                }
                if path.is_empty() {
                    kind
                } else {
                    format!("{path}: {kind}")
                }
            })
            .collect();
        Error::Parse(msgs.join("\n"))
    }

    /// The database URL actually used.
    pub fn database_url(&self) -> String {
        if self.database.url.is_empty() {
            format!("sqlite://{}/vigil.db", self.gateway.data_dir.display())
        } else {
            self.database.url.clone()
        }
    }

    /// The zone of the assessment (validated, so the fallback never shows in practice).
    pub fn timezone(&self) -> chrono_tz::Tz {
        self.assessment.timezone.parse().unwrap_or(chrono_tz::Asia::Shanghai)
    }

    /// Every problem in the configuration, each with its key path.
    pub fn validate(&self) -> Vec<ConfigProblem> {
        let mut p = Vec::new();
        let mut add = |key: String, message: String| p.push(ConfigProblem { key, message });

        if let Err(e) = crate::ids::GbCode::parse(&self.gateway.id) {
            add("gateway.id".into(), e.to_string());
        }
        let url = self.database_url();
        if !(url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            add("database.url".into(), format!("{url:?} is neither sqlite://PATH nor postgres://..."));
        }
        if self.http.tokens.is_empty() && !self.http.listen.ip().is_loopback() {
            add(
                "http.tokens".into(),
                format!(
                    "no tokens while http.listen is {} (not loopback): add [[http.tokens]] or listen on 127.0.0.1",
                    self.http.listen
                ),
            );
        }
        match (self.http.tls_cert.is_empty(), self.http.tls_key.is_empty()) {
            (true, true) => {}
            (false, false) => {
                if let Err(e) = crate::net::tls::server_config(
                    std::path::Path::new(&self.http.tls_cert),
                    std::path::Path::new(&self.http.tls_key),
                ) {
                    add("http.tls_cert".into(), e.to_string());
                }
            }
            (false, true) => add("http.tls_key".into(), "http.tls_cert is set: set its private key too".into()),
            (true, false) => add("http.tls_cert".into(), "http.tls_key is set: set its certificate too".into()),
        }
        for (i, t) in self.http.tokens.iter().enumerate() {
            if t.token.len() < 8 {
                add(format!("http.tokens[{i}].token"), "shorter than 8 characters".into());
            }
        }
        if self.http.max_body < 1024 {
            add("http.max_body".into(), "below 1024 bytes".into());
        }
        if self.assessment.sample_every < Duration::from_secs(10) {
            add("assessment.sample_every".into(), "must be at least 10s".into());
        }
        if self.assessment.timezone.parse::<chrono_tz::Tz>().is_err() {
            add(
                "assessment.timezone".into(),
                format!("{:?} is not an IANA zone such as \"Asia/Shanghai\"", self.assessment.timezone),
            );
        }
        if !(0.0..=1.0).contains(&self.assessment.online_target) {
            add("assessment.online_target".into(), "must be between 0 and 1 (0.95 means 95%)".into());
        }
        let mut seen = std::collections::HashSet::new();
        for (i, o) in self.orgs.iter().enumerate() {
            if let Err(e) = crate::ids::OrgId::parse(&o.id) {
                add(format!("orgs[{i}].id"), e.to_string());
            }
            if !seen.insert(o.id.as_str()) {
                add(format!("orgs[{i}].id"), format!("{:?} appears twice", o.id));
            }
            if o.name.trim().is_empty() {
                add(format!("orgs[{i}].name"), "must not be empty".into());
            }
            if let Some(parent) = &o.parent {
                if !self.orgs[..i].iter().any(|q| &q.id == parent) {
                    add(format!("orgs[{i}].parent"), format!("{parent:?} is not an org listed before this one"));
                }
            }
            if let Some(prefix) = &o.gb_prefix {
                if prefix.is_empty() || prefix.len() > 10 || !prefix.chars().all(|c| c.is_ascii_digit()) {
                    add(
                        format!("orgs[{i}].gb_prefix"),
                        format!("{prefix:?} is not 1 to 10 digits of an administrative-division code"),
                    );
                }
            }
        }
        if self.presence.checkpoint_every < Duration::from_secs(1) {
            add("presence.checkpoint_every".into(), "must be at least 1s".into());
        }
        if self.presence.max_pending == 0 {
            add("presence.max_pending".into(), "must be at least 1".into());
        }
        if self.gb28181.keepalive_interval < Duration::from_secs(1) {
            add("gb28181.keepalive_interval".into(), "must be at least 1s".into());
        }
        if self.patrol.every < Duration::from_secs(60) {
            add("patrol.every".into(), "must be at least 1m".into());
        }
        if self.patrol.hold < Duration::from_secs(1) || self.patrol.hold > Duration::from_secs(600) {
            add("patrol.hold".into(), "must be between 1s and 10m".into());
        }
        if self.patrol.concurrency == 0 || self.patrol.per_device == 0 {
            add("patrol.concurrency".into(), "concurrency and per_device must be at least 1".into());
        }
        if let Err(e) = parse_ports(&self.gb28181.media_ports) {
            add("gb28181.media_ports".into(), e);
        }
        let single = self.gb28181.media_single_port;
        if single != 0 && parse_ports(&self.gb28181.media_ports).is_ok_and(|r| r.contains(&single)) {
            add(
                "gb28181.media_single_port".into(),
                format!("{single} is inside media_ports {:?}; pick a port outside the range", self.gb28181.media_ports),
            );
        }
        if let Err(e) = parse_serials(&self.gb28181.id_serials) {
            add("gb28181.id_serials".into(), e);
        }
        let rtcp = self.gb28181.rtcp_interval;
        if !rtcp.is_zero() && rtcp < Duration::from_secs(1) {
            add("gb28181.rtcp_interval".into(), "must be 0s (never) or at least 1s".into());
        }
        if !self.gb28181.media_address.is_empty() && self.gb28181.media_address.parse::<std::net::IpAddr>().is_err() {
            add("gb28181.media_address".into(), format!("{:?} is not an IP address", self.gb28181.media_address));
        }
        for (key, v) in [
            ("gb28181.invite_timeout", self.gb28181.invite_timeout),
            ("gb28181.media_timeout", self.gb28181.media_timeout),
        ] {
            if v < Duration::from_secs(1) {
                add(key.into(), "must be at least 1s".into());
            }
        }
        if self.gb28181.keepalive_misses == 0 {
            add("gb28181.keepalive_misses".into(), "must be at least 1".into());
        }
        if let Err(e) = parse_every(&self.rtsp.diagnosis_every) {
            add("rtsp.diagnosis_every".into(), e);
        }
        if !(1..=64).contains(&self.rtsp.threads) {
            add("rtsp.threads".into(), "must be 1 to 64".into());
        }
        if self.rtsp.stall_timeout < Duration::from_secs(2) {
            add("rtsp.stall_timeout".into(), "must be at least 2s (the stall deadline's floor)".into());
        }
        if self.rtsp.backoff_min > self.rtsp.backoff_max {
            add("rtsp.backoff_min".into(), "is greater than rtsp.backoff_max".into());
        }
        for (i, c) in self.rtsp.cameras.iter().enumerate() {
            if let Err(e) = crate::ids::DeviceId::parse(&c.id) {
                add(format!("rtsp.cameras[{i}].id"), e.to_string());
            }
            if !c.url.starts_with("rtsp://") && !c.url.starts_with("rtsps://") {
                add(format!("rtsp.cameras[{i}].url"), "must start with rtsp://".into());
            }
        }
        if self.mqtt.mode == MqttMode::External {
            if let Err(e) = url::Url::parse(&self.mqtt.url).map_err(|e| e.to_string()).and_then(|u| {
                if !["mqtt", "mqtts", "tcp", "ssl"].contains(&u.scheme()) || u.host_str().is_none() {
                    Err("use mqtt://host:port or mqtts://host:port".to_owned())
                } else {
                    Ok(())
                }
            }) {
                add("mqtt.url".into(), format!("{:?}: {e}", self.mqtt.url));
            }
        }
        // A CA or client certificate on a connection without TLS would be silently unused.
        let tls = self.mqtt.mode == MqttMode::External
            && url::Url::parse(&self.mqtt.url).is_ok_and(|u| matches!(u.scheme(), "mqtts" | "ssl"));
        for (key, v) in [("mqtt.ca", &self.mqtt.ca), ("mqtt.cert", &self.mqtt.cert), ("mqtt.key", &self.mqtt.key)] {
            if !v.is_empty() && !tls {
                add(key.into(), "applies only to mqtt.mode = \"external\" with an mqtts:// url".into());
            }
        }
        if self.mqtt.cert.is_empty() != self.mqtt.key.is_empty() {
            add("mqtt.cert".into(), "mqtt.cert and mqtt.key go together (the client certificate and its key)".into());
        }
        if self.mqtt.client_id.is_empty() || self.mqtt.client_id.len() > 64 {
            add("mqtt.client_id".into(), "1 to 64 characters".into());
        }
        match self.mqtt.max_packet.as_u64() {
            n if n < 64 * 1024 => add("mqtt.max_packet".into(), "at least 64KiB (images arrive inline)".into()),
            n if n > 256 << 20 => add("mqtt.max_packet".into(), "at most 256MiB (MQTT's own limit)".into()),
            _ => {}
        }
        if !(1..=65_535).contains(&self.mqtt.inflight) {
            add("mqtt.inflight".into(), "between 1 and 65535".into());
        }
        if self.mqtt.message_deadline < Duration::from_secs(1) {
            add("mqtt.message_deadline".into(), "must be at least 1s".into());
        }
        if self.mqtt.backoff_min.is_zero() || self.mqtt.backoff_min > self.mqtt.backoff_max {
            add("mqtt.backoff_min".into(), "must be above zero and not above mqtt.backoff_max".into());
        }
        if self.relay.max_backlog < 10 {
            add("relay.max_backlog".into(), "must be at least 10".into());
        }
        if self.gat1400.max_body.as_u64() < 1024 {
            add("gat1400.max_body".into(), "below 1024 bytes".into());
        }
        let mut names = std::collections::HashSet::new();
        for (i, u) in self.upstreams.iter().enumerate() {
            if u.name.is_empty() {
                add(format!("upstreams[{i}].name"), "must not be empty".into());
            } else if !names.insert(u.name.as_str()) {
                add(format!("upstreams[{i}].name"), format!("{:?} appears twice", u.name));
            }
            use UpstreamProtocol::{Gat1400, Gb28181, Quic};
            match u.protocol {
                None => add(format!("upstreams[{i}].protocol"), "required: one of gat1400, quic, gb28181".into()),
                Some(p @ (Gat1400 | Quic)) if u.url.is_empty() => {
                    add(format!("upstreams[{i}].url"), format!("required for protocol {}", p.as_str()))
                }
                Some(Gat1400) if u.mode == RelayMode::Subscription && !self.gat1400.enabled => add(
                    format!("upstreams[{i}].mode"),
                    "subscription mode needs [gat1400] enabled: the upper view library subscribes there".into(),
                ),
                Some(Quic) if !u.url.starts_with("quic://") => {
                    add(format!("upstreams[{i}].url"), format!("{:?}: expected quic://host:port", u.url))
                }
                Some(Gb28181) => {
                    let key = |k: &str| format!("upstreams[{i}].{k}");
                    if let Err(e) = crate::ids::GbCode::parse(&u.server_id) {
                        add(key("server_id"), format!("the upper platform's id: {e}"));
                    }
                    if !u.user_id.is_empty() {
                        if let Err(e) = crate::ids::GbCode::parse(&u.user_id) {
                            add(key("user_id"), format!("vigil's platform id as the upper knows it: {e}"));
                        }
                    }
                    if u.server_addr.parse::<SocketAddr>().is_err() {
                        add(key("server_addr"), format!("{:?} is not an address like 10.0.0.1:5060", u.server_addr));
                    }
                    if !matches!(u.transport.to_ascii_lowercase().as_str(), "" | "udp" | "tcp") {
                        add(key("transport"), format!("{:?}: one of \"udp\" (the default) or \"tcp\"", u.transport));
                    }
                    if !u.domain.is_empty() && !u.domain.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.') {
                        add(key("domain"), format!("{:?} is not a SIP domain", u.domain));
                    }
                    for (k, v) in [("listen", &u.listen), ("advertise", &u.advertise)] {
                        if !v.is_empty() && v.parse::<SocketAddr>().is_err() {
                            add(key(k), format!("{v:?} is not an address like 0.0.0.0:5061"));
                        }
                    }
                    if u.expires.is_some_and(|e| e < Duration::from_secs(60)) {
                        add(key("expires"), "must be at least 60s".into());
                    }
                    if u.keepalive_interval.is_some_and(|k| k < Duration::from_secs(5)) {
                        add(key("keepalive_interval"), "must be at least 5s".into());
                    }
                }
                _ => {}
            }
        }
        let links = self.upstreams.iter().any(|u| u.protocol == Some(UpstreamProtocol::Quic));
        if !self.quic.listen.is_empty() && self.quic.listen.parse::<SocketAddr>().is_err() {
            add("quic.listen".into(), format!("{:?} is not an address like 0.0.0.0:4433", self.quic.listen));
        }
        if links || !self.quic.listen.is_empty() {
            for (key, v) in [("quic.cert", &self.quic.cert), ("quic.key", &self.quic.key), ("quic.ca", &self.quic.ca)] {
                if v.is_empty() {
                    add(key.into(), "required for the QUIC link (mutual TLS; `vigil certs` makes them)".into());
                }
            }
        }
        if self.tuning.observation_queue == 0 || self.tuning.transition_queue == 0 {
            add("tuning".into(), "queue capacities must be at least 1".into());
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_file(rel: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// Every key path whose default is a string or absent (arrays of tables left out: the
    /// environment names keys, not list items).
    fn leaf_keys(v: &serde_json::Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    path.push(k.clone());
                    leaf_keys(v, path, out);
                    path.pop();
                }
            }
            serde_json::Value::String(_) | serde_json::Value::Null => out.push(path.clone()),
            _ => {}
        }
    }

    fn value_at(c: &Config, path: &[String]) -> serde_json::Value {
        let v = serde_json::to_value(c).expect("config serializes");
        v.pointer(&format!("/{}", path.join("/"))).cloned().unwrap_or(serde_json::Value::Null)
    }

    /// `VIGIL_GB28181__PASSWORD=12345678`: every key whose type is a string takes the
    /// variable's text as it is, whatever it looks like (digits past u64, leading zeros,
    /// a float, a boolean, a TOML list). Which keys are strings is found, not listed: a key
    /// is one when free text given through the environment comes back as that text.
    #[test]
    fn environment_overrides_keep_the_text_of_string_keys() {
        let mut keys = Vec::new();
        let default = serde_json::to_value(Config::default()).expect("serializes");
        leaf_keys(&default, &mut Vec::new(), &mut keys);
        let texts = ["12345678", "4201040000", "42010400002000000001", "0012", "1.50", "true", "[1, 2]"];
        let mut strings = 0;
        for path in &keys {
            let key = path.join(".");
            let free = vec![(key.clone(), "free text".to_owned())];
            let Ok(c) = Config::extract_with_vars("", &free) else { continue };
            if value_at(&c, path) != serde_json::json!("free text") {
                continue;
            }
            strings += 1;
            for text in texts {
                let vars = vec![(key.clone(), text.to_owned())];
                let c = Config::extract_with_vars("", &vars).unwrap_or_else(|e| panic!("{key}={text}: {e}"));
                assert_eq!(value_at(&c, path), serde_json::json!(text), "{key}={text}");
            }
        }
        // The ones an operator sets by environment most: all must be among them.
        for must in ["gb28181.password", "gb28181.realm", "gateway.id", "gat1400.password", "mqtt.password"] {
            let c = Config::extract_with_vars("", &[(must.to_owned(), "0042".to_owned())]).expect(must);
            let path: Vec<String> = must.split('.').map(str::to_owned).collect();
            assert_eq!(value_at(&c, &path), serde_json::json!("0042"), "{must}");
        }
        assert!(strings >= 15, "only {strings} string keys found among {keys:?}");
        // Typed keys still read the variable as a value, and a wrong one names the key.
        let c = Config::extract_with_vars("", &[("gb28181.keepalive_misses".into(), "5".into())]).expect("number");
        assert_eq!(c.gb28181.keepalive_misses, 5);
        let e = Config::extract_with_vars("", &[("gb28181.keepalive_misses".into(), "many".into())])
            .expect_err("not a number");
        assert!(e.to_string().contains("gb28181.keepalive_misses"), "{e}");
        // Through the real loader too, with the file's own value overridden.
        let file = "[gb28181]\npassword = \"from-file\"\n";
        let vars = vec![
            ("gb28181.password".to_owned(), "12345678".to_owned()),
            ("gb28181.realm".to_owned(), "4201040000".to_owned()),
        ];
        let c = Config::from_toml_with_vars(file, &vars).expect("valid");
        assert_eq!((c.gb28181.password.as_str(), c.gb28181.realm.as_str()), ("12345678", "4201040000"));
    }

    /// Every key path of a TOML document, tables walked, arrays as leaves.
    fn toml_keys(v: &toml::Value, path: &mut Vec<String>, out: &mut std::collections::BTreeSet<String>) {
        if let toml::Value::Table(t) = v {
            for (k, v) in t {
                path.push(k.clone());
                toml_keys(v, path, out);
                path.pop();
            }
        } else {
            out.insert(path.join("."));
        }
    }

    /// `config/vigil.toml` says it lists every key with its default: it has exactly the keys
    /// of `Config::default()`, and each value is the default.
    #[test]
    fn the_documented_default_file_is_the_default_key_for_key() {
        let text = repo_file("config/vigil.toml");
        let file: toml::Value = toml::from_str(&text).expect("config/vigil.toml is TOML");
        let default = toml::Value::try_from(Config::default()).expect("the default serializes");
        let (mut in_file, mut in_default) = (Default::default(), Default::default());
        toml_keys(&file, &mut Vec::new(), &mut in_file);
        toml_keys(&default, &mut Vec::new(), &mut in_default);
        let missing: Vec<_> = in_default.difference(&in_file).collect();
        let unknown: Vec<_> = in_file.difference(&in_default).collect();
        assert!(missing.is_empty() && unknown.is_empty(), "missing from the file: {missing:?}; not keys: {unknown:?}");
        let parsed = Config::from_toml_with_env(&text, false).expect("valid");
        let (a, b) = (toml::Value::try_from(parsed).expect("serializes"), default);
        for key in &in_default {
            let at = |v: &toml::Value| key.split('.').try_fold(v.clone(), |v, k| v.get(k).cloned());
            assert_eq!(at(&a), at(&b), "config/vigil.toml's {key} is not the default");
        }
    }

    #[test]
    fn a_gb28181_cascade_upstream_is_checked_key_by_key() {
        let good = "[[upstreams]]\nname = \"city\"\nprotocol = \"gb28181\"\nserver_id = \"42010000002000000001\"\nserver_addr = \"127.0.0.1:15060\"\n";
        Config::from_toml_with_env(good, false).expect("a cascade upstream with its id and address");
        for transport in ["udp", "tcp", "TCP"] {
            Config::from_toml_with_env(&format!("{good}transport = \"{transport}\"\n"), false).expect(transport);
        }
        for (bad, key) in [
            (good.replace("42010000002000000001", "4201"), "upstreams[0].server_id"),
            (good.replace("127.0.0.1:15060", "upper.example"), "upstreams[0].server_addr"),
            (format!("{good}transport = \"sctp\"\n"), "upstreams[0].transport"),
            (format!("{good}user_id = \"123\"\n"), "upstreams[0].user_id"),
            (format!("{good}expires = \"10s\"\n"), "upstreams[0].expires"),
            (format!("{good}listen = \"5061\"\n"), "upstreams[0].listen"),
        ] {
            let e = Config::from_toml_with_env(&bad, false).expect_err(key);
            assert!(e.to_string().contains(key), "{key}: {e}");
        }
    }

    #[test]
    fn an_empty_file_is_a_working_gateway() {
        let c = Config::from_toml_with_env("", false).expect("empty config is valid");
        assert_eq!(c.http.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.database_url(), "sqlite://./data/vigil.db");
        assert_eq!(c.assessment.sample_every, Duration::from_secs(3600));
    }

    #[test]
    fn shipped_configs_parse_and_validate() {
        Config::from_toml_with_env(&repo_file("config/vigil.toml"), false).expect("config/vigil.toml");
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("config/examples exists") {
            let path = entry.expect("dir entry").path();
            if path.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&path).expect("readable");
                if let Err(e) = Config::from_toml_with_env(&text, false) {
                    panic!("{}: {e}", path.display());
                }
                n += 1;
            }
        }
        assert!(n >= 1, "no example configs found");
    }

    #[test]
    fn mqtt_certificates_are_refused_where_no_tls_would_use_them() {
        let err = |toml: &str| Config::from_toml_with_env(toml, false).expect_err(toml).to_string();
        let plain = err("[mqtt]\nmode = \"external\"\nurl = \"mqtt://broker:1883\"\nca = \"ca.pem\"\n");
        assert!(plain.contains("mqtt.ca") && plain.contains("mqtts://"), "{plain}");
        let embedded = err("[mqtt]\ncert = \"vigil.pem\"\nkey = \"vigil.key\"\n");
        assert!(embedded.contains("mqtt.cert") && embedded.contains("mqtt.key"), "{embedded}");
        let half = err("[mqtt]\nmode = \"external\"\nurl = \"mqtts://broker:8883\"\ncert = \"vigil.pem\"\n");
        assert!(half.contains("go together"), "{half}");
        let tls = "[mqtt]\nmode = \"external\"\nurl = \"mqtts://broker:8883\"\nca = \"ca.pem\"\ncert = \"v.pem\"\nkey = \"v.key\"\n";
        Config::from_toml_with_env(tls, false).expect("a CA and a client certificate on mqtts://");
    }

    #[test]
    fn unknown_keys_are_named() {
        let err =
            Config::from_toml_with_env("[http]\nlisten = \"127.0.0.1:1\"\nlistne = 3\n", false).expect_err("typo");
        let text = err.to_string();
        assert!(text.contains("listne"), "{text}");
        assert!(text.contains("http"), "{text}");
    }

    #[test]
    fn every_semantic_problem_is_listed_with_its_key() {
        let toml = r#"
            [gateway]
            id = "123"
            [http]
            listen = "0.0.0.0:8080"
            [assessment]
            timezone = "Mars/Olympus"
            online_target = 95
            [[orgs]]
            id = "a"
            name = ""
            kind = "district"
            [[orgs]]
            id = "b"
            name = "B"
            kind = "street"
            parent = "nope"
        "#;
        let Err(Error::Invalid(problems)) = Config::from_toml_with_env(toml, false) else {
            panic!("expected validation problems");
        };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        for k in [
            "gateway.id",
            "http.tokens",
            "assessment.timezone",
            "assessment.online_target",
            "orgs[0].name",
            "orgs[1].parent",
        ] {
            assert!(keys.contains(&k), "missing {k} in {keys:?}");
        }
    }

    /// A closed set (a mode, a transport, a charset, a kind) is an enum: a value outside it
    /// is refused at load, naming the key and every allowed value; sizes take IEC and SI units.
    #[test]
    fn closed_sets_name_their_key_and_allowed_values_and_sizes_read_units() {
        for (toml, key, allowed) in [
            ("[rtsp]\ntransport = \"sctp\"\n", "rtsp.transport", &["tcp", "udp"][..]),
            ("[mqtt]\nmode = \"cloud\"\n", "mqtt.mode", &["embedded", "external", "off"][..]),
            ("[gb28181]\ncharset = \"latin1\"\n", "gb28181.charset", &["auto", "gb2312", "utf-8"][..]),
            ("[[upstreams]]\nname = \"x\"\nprotocol = \"ftp\"\n", "protocol", &["gat1400", "quic", "gb28181"][..]),
            (
                "[[upstreams]]\nname = \"x\"\nprotocol = \"gat1400\"\nurl = \"http://h\"\nmode = \"pull\"\n",
                "mode",
                &["push", "subscription"][..],
            ),
            (
                "[[upstreams]]\nname = \"x\"\nprotocol = \"gat1400\"\nurl = \"http://h\"\nevents = [\"smell\"]\n",
                "events",
                &["face_capture", "vehicle_pass"][..],
            ),
            ("[[orgs]]\nid = \"a\"\nname = \"A\"\nkind = \"province\"\n", "kind", &["district", "street"][..]),
        ] {
            let e = Config::from_toml_with_env(toml, false).expect_err(toml).to_string();
            assert!(e.contains(key), "{toml}: {e}");
            // Only the refused value is named: nothing is judged against a stand-in for it.
            assert!(e.starts_with("1 problem"), "{toml}: {e}");
            for a in allowed {
                assert!(e.contains(a), "{toml}: {a} not named in {e}");
            }
        }
        let c = Config::from_toml_with_env("[media]\nmax_image = \"512KiB\"\n[mqtt]\nmax_packet = 1048576\n", false)
            .expect("sizes");
        assert_eq!((c.media.max_image.as_u64(), c.mqtt.max_packet.as_u64()), (512 << 10, 1 << 20));
        let e = Config::from_toml_with_env("[media]\nmax_image = \"lots\"\n", false).expect_err("not a size");
        assert!(e.to_string().contains("media.max_image"), "{e}");
        assert!(Config::from_toml_with_env("[[upstreams]]\nname = \"x\"\n", false)
            .expect_err("no protocol")
            .to_string()
            .contains("upstreams[0].protocol"));
    }

    #[test]
    fn bad_durations_and_addresses_name_the_key() {
        let err =
            Config::from_toml_with_env("[gb28181]\nkeepalive_interval = \"sixty\"\n", false).expect_err("bad duration");
        assert!(err.to_string().contains("gb28181.keepalive_interval"), "{err}");
        let err = Config::from_toml_with_env("[http]\nlisten = \"localhost\"\n", false).expect_err("bad addr");
        assert!(err.to_string().contains("http.listen"), "{err}");
    }
}
