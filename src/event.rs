//! What sources produce: `Observation`s (evidence that a device is alive or dead) for
//! presence, and normalized `Event`s (a record an investigator may look for later: an
//! alarm, a status change; access, vehicle pass and face capture join with the device
//! profiles) for the event log and, later, the outbox. Imports nothing of ours but the
//! registry's key type and the clock.

use std::sync::Arc;

use crate::clock::Millis;
use crate::registry::DeviceKey;

/// One piece of evidence about a device, with when it was seen.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub device: DeviceKey,
    pub at: Millis,
    pub evidence: Evidence,
    /// Free text from the source (an operator's or another system's reason); kept with the
    /// transition it causes. `None` on the hot path.
    pub detail: Option<Arc<str>>,
}

/// The kinds of evidence, per protocol. Windows are in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evidence {
    /// Another system says the device is alive; it stays online for `ttl_ms` without news.
    Alive { ttl_ms: i64 },
    /// Another system says the device is dead: offline at once.
    Dead,
    /// GB/T 28181 REGISTER accepted for `expires_ms`; the register counts as a keepalive
    /// with the device's keepalive `window_ms` (interval × misses).
    SipRegister { expires_ms: i64, window_ms: i64 },
    /// GB/T 28181 un-REGISTER (Expires: 0): offline at once.
    SipUnregister,
    /// GB/T 28181 MANSCDP Keepalive: alive for `window_ms` more.
    SipKeepalive { window_ms: i64 },
    /// An RTSP frame arrived; the stream stalls after `stall_ms` without another.
    RtspFrame { stall_ms: i64 },
    /// The RTSP session failed or closed.
    RtspStalled,
    /// An MQTT message or heartbeat; silent for `timeout_ms` means offline.
    MqttMessage { timeout_ms: i64 },
    /// The broker delivered the device's last will.
    MqttLastWill,
    /// A lower gateway's QUIC link heartbeat.
    LinkHeartbeat { timeout_ms: i64 },
}

/// The kinds of normalized event (`EventBody` carries the kind-specific part).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Alarm,
    Status,
}

impl EventKind {
    pub const ALL: [EventKind; 2] = [EventKind::Alarm, EventKind::Status];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Alarm => "alarm",
            EventKind::Status => "status",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Whose clock `occurred_at` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeSource {
    /// The device's own timestamp, believed.
    Device,
    /// The device's timestamp was outside the sanity window; the gateway's time was used.
    Corrected,
    /// The device sent no time.
    Gateway,
}

/// An alarm from a device (GB/T 28181 `Notify/Alarm`; later also alarm panels and video
/// diagnosis). Codes are kept as the device sent them, with GB/T 28181 meanings in
/// docs/glossary.md.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AlarmBody {
    /// The device or channel id that raised it (a GB/T 28181 alarm names the channel).
    pub source_id: String,
    /// `AlarmPriority`: 1 first-level (most urgent) … 4 fourth-level.
    pub priority: Option<u8>,
    /// `AlarmMethod`: 1 phone, 2 device, 3 SMS, 4 GPS, 5 video, 6 device fault, 7 other.
    pub method: Option<u8>,
    /// `Info/AlarmType` (meaning depends on the method, e.g. method 5: 1 manual, 2 motion,
    /// 3 left object, 4 removed object, 5 tripwire, 6 intrusion, 7 retrograde, …).
    pub alarm_type: Option<u16>,
    pub description: String,
    pub longitude: Option<f64>,
    pub latitude: Option<f64>,
}

/// The kind-specific part of an event.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventBody {
    Alarm(AlarmBody),
    Status { online: bool, reason: String },
}

impl EventBody {
    pub fn kind(&self) -> EventKind {
        match self {
            EventBody::Alarm(_) => EventKind::Alarm,
            EventBody::Status { .. } => EventKind::Status,
        }
    }
}

/// A normalized record. `id` is a UUID v7 given when the event is first made and never
/// regenerated; `dedup_key` names the record as its device knows it (device + sequence or
/// time), so a retransmission or a replay after a crash is recognised as the same record.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Event {
    pub id: String,
    pub dedup_key: String,
    /// Which source made it: `gb28181`, `mqtt`, `gat1400`, `api`.
    pub source: String,
    pub device_id: String,
    pub org_id: Option<String>,
    pub occurred_at: Millis,
    /// The device's time text as it arrived, when it sent one.
    pub occurred_at_raw: Option<String>,
    pub time_source: TimeSource,
    pub received_at: Millis,
    /// The device's sequence number (MANSCDP `SN`), when it has one.
    pub seq: Option<i64>,
    /// The device sent it late, from its own store, after being offline.
    pub offline_replay: bool,
    /// `name@version` of the device profile that mapped it.
    pub profile: Option<String>,
    /// Content hashes of the stored images it refers to.
    pub media: Vec<String>,
    pub body: EventBody,
}

impl Event {
    pub fn kind(&self) -> EventKind {
        self.body.kind()
    }

    /// A fresh UUID v7 event id.
    pub fn new_id() -> String {
        uuid::Uuid::now_v7().to_string()
    }
}

/// How far a device's clock may be from the gateway's before its time is not believed.
pub const CLOCK_SANITY_MS: Millis = 24 * 3600 * 1000;

/// Picks `occurred_at`: the device's time when it is within the sanity window of the
/// gateway's, the gateway's otherwise.
pub fn judge_time(device_time: Option<Millis>, received_at: Millis) -> (Millis, TimeSource) {
    match device_time {
        Some(t) if (t - received_at).abs() <= CLOCK_SANITY_MS => (t, TimeSource::Device),
        Some(_) => (received_at, TimeSource::Corrected),
        None => (received_at, TimeSource::Gateway),
    }
}
