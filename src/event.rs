//! What sources produce: `Observation`s (evidence that a device is alive or dead) for
//! presence, and normalized `Event`s (a record an investigator may look for later: a door
//! opened, a plate pass, a face capture, an alarm, a status change) for the event log and
//! the outbox. Bodies are typed per kind and aligned with GA/T 1400 field meanings
//! where those exist; they parse leniently (numbers as strings) and serialize strictly.
//! Imports nothing of ours but the registry's key type and the clock.

use std::sync::Arc;

use crate::clock::Millis;
use crate::domain::DeviceKey;

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
    /// The RTSP session failed or closed, for the cause the pull classified.
    RtspDown { fault: StreamFault },
    /// A message from a profile-mapped device (MQTT, GA/T 1400, HTTP push): a heartbeat or
    /// data; silent for `timeout_ms` means offline.
    MqttMessage { timeout_ms: i64, heartbeat: bool },
    /// The broker delivered the device's last will.
    MqttLastWill,
    /// A GA/T 1400 view-library registration (`register`) or keepalive / any request from a
    /// registered device: registered and alive for `validity_ms` more.
    ViewLibrary { validity_ms: i64, register: bool },
    /// A lower gateway's QUIC link heartbeat.
    LinkHeartbeat { timeout_ms: i64 },
}

/// Why a pulled stream is down, as its puller classified the failure: the cause an
/// operator acts on (a wrong password is not a cable fault).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamFault {
    /// 401/403: the credentials in the URL are refused.
    AuthFailed,
    /// 404: no such stream path on the camera.
    NotFound,
    /// TCP connection refused: nothing listens on the camera's port.
    Refused,
    /// 453/503: the camera's own limit of sessions is reached.
    SessionLimit,
    /// No usable video stream in what the camera describes.
    BadMedia,
    /// Frames stopped while the connection stayed open.
    Stalled,
    /// No answer in time, or a network error: power, cable or route.
    Unreachable,
    /// The camera closed the session.
    Closed,
    /// Corrupt RTP or a timestamp jump that ended the session.
    MediaError,
    /// Any other error status the camera answered with.
    ProtocolError,
}

/// The kinds of normalized event (`EventBody` carries the kind-specific part).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Access,
    VehiclePass,
    FaceCapture,
    Alarm,
    Status,
    OnlineRate,
}

impl EventKind {
    pub const ALL: [EventKind; 6] = [
        EventKind::Access,
        EventKind::VehiclePass,
        EventKind::FaceCapture,
        EventKind::Alarm,
        EventKind::Status,
        EventKind::OnlineRate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Access => "access",
            EventKind::VehiclePass => "vehicle_pass",
            EventKind::FaceCapture => "face_capture",
            EventKind::Alarm => "alarm",
            EventKind::Status => "status",
            EventKind::OnlineRate => "online_rate",
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

/// An alarm from a device: GB/T 28181 `Notify/Alarm` (codes in `priority`, `method`,
/// `alarm_type`, meanings in docs/glossary.md), an alarm panel or sensor mapped by a device
/// profile (`category`, `state`, `zone`), later video diagnosis.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlarmBody {
    /// The device, channel or zone id that raised it (a GB/T 28181 alarm names the channel).
    #[serde(deserialize_with = "lenient::string")]
    pub source_id: String,
    /// `AlarmPriority`: 1 first-level (most urgent) … 4 fourth-level.
    #[serde(deserialize_with = "lenient::opt_int", skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    /// `AlarmMethod`: 1 phone, 2 device, 3 SMS, 4 GPS, 5 video, 6 device fault, 7 other.
    #[serde(deserialize_with = "lenient::opt_int", skip_serializing_if = "Option::is_none")]
    pub method: Option<u8>,
    /// `Info/AlarmType` (meaning depends on the method, e.g. method 5: 1 manual, 2 motion,
    /// 3 left object, 4 removed object, 5 tripwire, 6 intrusion, 7 retrograde, …).
    #[serde(deserialize_with = "lenient::opt_int", skip_serializing_if = "Option::is_none")]
    pub alarm_type: Option<u16>,
    /// Normalized category from a profile: smoke, fire, intrusion, tamper, gas, water,
    /// emergency_button, ebike_charging_fault, device_fault, other.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// start, stop or pulse (an alarm with no duration).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// The panel's zone number.
    #[serde(deserialize_with = "lenient::opt_int", skip_serializing_if = "Option::is_none")]
    pub zone: Option<i64>,
    #[serde(deserialize_with = "lenient::string")]
    pub description: String,
    #[serde(deserialize_with = "lenient::opt_f64", skip_serializing_if = "Option::is_none")]
    pub longitude: Option<f64>,
    #[serde(deserialize_with = "lenient::opt_f64", skip_serializing_if = "Option::is_none")]
    pub latitude: Option<f64>,
    /// Structured evidence beside the text (a video quality diagnosis puts its scores here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

/// Granted or denied, for an access record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessResult {
    Granted,
    Denied,
}

/// How a person identified themself at a door: `kind` is card, face, fingerprint, qr,
/// password, remote, idcard or other; `value` (a card number, an id-card number) is hashed
/// or dropped by the profile's privacy rules before anything leaves the gateway.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Credential {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string", skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// Who: `id` is the person's id in the device's or community's roster; `kind` is
/// resident, visitor, stranger, blocklist or the vendor's own word.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Person {
    #[serde(deserialize_with = "lenient::opt_string", skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

/// Where: the door (or gate) id, the reader number and the direction (in, out).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Door {
    #[serde(deserialize_with = "lenient::opt_string", skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(deserialize_with = "lenient::opt_int", skip_serializing_if = "Option::is_none")]
    pub reader: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
}

/// A door-access record (门禁出入记录): an access-control terminal, face terminal or card
/// reader let someone through or refused them.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessBody {
    pub result: AccessResult,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<Credential>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub person: Option<Person>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub door: Option<Door>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny_reason: Option<String>,
    /// Recognition score, 0–100.
    #[serde(default, deserialize_with = "lenient::opt_f64", skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    /// Body temperature, °C, where the terminal measures it.
    #[serde(default, deserialize_with = "lenient::opt_f64", skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, deserialize_with = "lenient::opt_bool", skip_serializing_if = "Option::is_none")]
    pub mask: Option<bool>,
}

/// A vehicle passing a checkpoint or barrier (过车记录), GA/T 1400 `MotorVehicleObject`
/// meanings: `plate_color` is the GA/T 1400 colour code as text (see docs/events.md),
/// `capture_id` the checkpoint's own 48-character `MotorVehicleID` when it sent one.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VehiclePassBody {
    /// The plate as read (`None`: no plate, `HasPlate` 0).
    #[serde(deserialize_with = "lenient::opt_string", skip_serializing_if = "Option::is_none")]
    pub plate: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string", skip_serializing_if = "Option::is_none")]
    pub plate_color: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string", skip_serializing_if = "Option::is_none")]
    pub plate_class: Option<String>,
    #[serde(deserialize_with = "lenient::opt_f64", skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    #[serde(deserialize_with = "lenient::opt_int", skip_serializing_if = "Option::is_none")]
    pub lane: Option<i64>,
    /// in, out, or the device's direction code.
    #[serde(deserialize_with = "lenient::opt_string", skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    /// km/h.
    #[serde(deserialize_with = "lenient::opt_f64", skip_serializing_if = "Option::is_none")]
    pub speed: Option<f64>,
    #[serde(deserialize_with = "lenient::opt_string", skip_serializing_if = "Option::is_none")]
    pub vehicle_color: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string", skip_serializing_if = "Option::is_none")]
    pub vehicle_class: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string", skip_serializing_if = "Option::is_none")]
    pub vehicle_brand: Option<String>,
    /// video, coil, manual, or the device's trigger code.
    #[serde(deserialize_with = "lenient::opt_string", skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
    /// open, closed, none: what the barrier did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub barrier_action: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string", skip_serializing_if = "Option::is_none")]
    pub capture_id: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string", skip_serializing_if = "Option::is_none")]
    pub tollgate_id: Option<String>,
}

/// A face box in the scene picture, pixels.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BoundingBox {
    #[serde(deserialize_with = "lenient::opt_int", skip_serializing_if = "Option::is_none")]
    pub left: Option<i64>,
    #[serde(deserialize_with = "lenient::opt_int", skip_serializing_if = "Option::is_none")]
    pub top: Option<i64>,
    #[serde(deserialize_with = "lenient::opt_int", skip_serializing_if = "Option::is_none")]
    pub right: Option<i64>,
    #[serde(deserialize_with = "lenient::opt_int", skip_serializing_if = "Option::is_none")]
    pub bottom: Option<i64>,
}

/// A match against a face library, when the device did one.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaceMatch {
    #[serde(deserialize_with = "lenient::opt_string", skip_serializing_if = "Option::is_none")]
    pub person_id: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string", skip_serializing_if = "Option::is_none")]
    pub library: Option<String>,
    #[serde(deserialize_with = "lenient::opt_f64", skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
}

/// A face capture (人脸抓拍), GA/T 1400 `FaceObject` meanings: `capture_id` is the
/// checkpoint's 48-character `FaceID` when it sent one, `gender` the GB/T 2261.1 code
/// (1 male, 2 female, 0 unknown), `info_kind` 1 automatic, 2 manual, 0 other.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaceCaptureBody {
    #[serde(deserialize_with = "lenient::opt_string", skip_serializing_if = "Option::is_none")]
    pub capture_id: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string", skip_serializing_if = "Option::is_none")]
    pub source_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bbox: Option<BoundingBox>,
    #[serde(deserialize_with = "lenient::opt_string", skip_serializing_if = "Option::is_none")]
    pub gender: Option<String>,
    #[serde(deserialize_with = "lenient::opt_int", skip_serializing_if = "Option::is_none")]
    pub age_low: Option<i64>,
    #[serde(deserialize_with = "lenient::opt_int", skip_serializing_if = "Option::is_none")]
    pub age_high: Option<i64>,
    /// Picture quality or sharpness, 0–100, as the device scores it.
    #[serde(deserialize_with = "lenient::opt_f64", skip_serializing_if = "Option::is_none")]
    pub quality: Option<f64>,
    #[serde(deserialize_with = "lenient::opt_bool", skip_serializing_if = "Option::is_none")]
    pub mask: Option<bool>,
    #[serde(rename = "match", skip_serializing_if = "Option::is_none")]
    pub matched: Option<FaceMatch>,
    #[serde(deserialize_with = "lenient::opt_int", skip_serializing_if = "Option::is_none")]
    pub info_kind: Option<i64>,
    /// When the face left the view, device time text as sent.
    #[serde(deserialize_with = "lenient::opt_string", skip_serializing_if = "Option::is_none")]
    pub disappeared_at_raw: Option<String>,
}

/// The kind-specific part of an event.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventBody {
    Access(AccessBody),
    VehiclePass(VehiclePassBody),
    FaceCapture(FaceCaptureBody),
    Alarm(AlarmBody),
    /// A device went online or offline (from presence), with the reason presence gives.
    Status {
        online: bool,
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    /// The sampled online rate at one sampling instant.
    OnlineRate(OnlineRateBody),
}

impl EventBody {
    /// The body of `kind` from its fields (an object without the `kind` key). The four kinds
    /// devices send are read straight into their structs, which spares the buffering an
    /// internally tagged enum costs (a profile maps every message through here).
    pub fn from_fields(
        kind: EventKind,
        mut fields: serde_json::Map<String, serde_json::Value>,
    ) -> serde_json::Result<Self> {
        use serde_json::{from_value, Value};
        Ok(match kind {
            EventKind::Access => EventBody::Access(from_value(Value::Object(fields))?),
            EventKind::VehiclePass => EventBody::VehiclePass(from_value(Value::Object(fields))?),
            EventKind::FaceCapture => EventBody::FaceCapture(from_value(Value::Object(fields))?),
            EventKind::Alarm => EventBody::Alarm(from_value(Value::Object(fields))?),
            EventKind::Status | EventKind::OnlineRate => {
                fields.insert("kind".into(), Value::String(kind.as_str().into()));
                from_value(Value::Object(fields))?
            }
        })
    }
}

/// The online rate sampled at an assessment instant (`[assessment] sample_every`): the
/// gateway as a whole and every org, all kinds together and each kind present.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct OnlineRateBody {
    pub sampled_at: Millis,
    /// The assessed target (0.95).
    pub target: f64,
    pub rows: Vec<RateRow>,
}

/// One scope of a rate sample: `org_id` empty for the whole gateway, `kind` "all" or one.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct RateRow {
    pub org_id: String,
    pub org_name: String,
    pub kind: String,
    pub online: u64,
    pub total: u64,
    pub intact: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intact_rate: Option<f64>,
}

impl EventBody {
    pub fn kind(&self) -> EventKind {
        match self {
            EventBody::Access(_) => EventKind::Access,
            EventBody::VehiclePass(_) => EventKind::VehiclePass,
            EventBody::FaceCapture(_) => EventKind::FaceCapture,
            EventBody::Alarm(_) => EventKind::Alarm,
            EventBody::Status { .. } => EventKind::Status,
            EventBody::OnlineRate(_) => EventKind::OnlineRate,
        }
    }
}

/// An image an event refers to: stored once under the data directory, named by the
/// SHA-256 of its bytes (`GET /api/v1/images/{hash}`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MediaRef {
    pub hash: String,
    /// scene, face, plate, vehicle, snapshot.
    pub role: String,
    pub bytes: u64,
    pub mime: String,
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
    /// The stored images it refers to.
    #[serde(default)]
    pub media: Vec<MediaRef>,
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

/// Lenient readers for device data: numbers that arrive as strings (`"5"`, `""`), booleans
/// as 0/1 or "true". Serialization stays strict (the field's own type).
pub mod lenient {
    use serde::{Deserialize, Deserializer};
    use serde_json::Value;

    fn number(v: &Value) -> Option<f64> {
        match v {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse().ok(),
            Value::Bool(b) => Some(f64::from(u8::from(*b))),
            _ => None,
        }
    }

    fn fail<E: serde::de::Error>(v: &Value, what: &str) -> E {
        E::custom(format!("expected {what}, got {v}"))
    }

    /// An optional integer: a number, a numeric string; `null` and `""` are none.
    pub fn opt_int<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: TryFrom<i64>,
    {
        let v = Value::deserialize(d)?;
        match &v {
            Value::Null => Ok(None),
            Value::String(s) if s.trim().is_empty() => Ok(None),
            _ => {
                let n = number(&v)
                    .filter(|n| n.fract() == 0.0 && n.abs() < 9.0e15)
                    .ok_or_else(|| fail(&v, "an integer"))?;
                T::try_from(n as i64).map(Some).map_err(|_| fail(&v, "an integer in range"))
            }
        }
    }

    pub fn opt_f64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        let v = Value::deserialize(d)?;
        match &v {
            Value::Null => Ok(None),
            Value::String(s) if s.trim().is_empty() => Ok(None),
            _ => number(&v).filter(|n| n.is_finite()).map(Some).ok_or_else(|| fail(&v, "a number")),
        }
    }

    pub fn opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
        let v = Value::deserialize(d)?;
        match &v {
            Value::Null => Ok(None),
            Value::Bool(b) => Ok(Some(*b)),
            Value::Number(_) => Ok(number(&v).map(|n| n != 0.0)),
            Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                "" => Ok(None),
                "1" | "true" | "yes" => Ok(Some(true)),
                "0" | "false" | "no" => Ok(Some(false)),
                _ => Err(fail(&v, "a boolean")),
            },
            _ => Err(fail(&v, "a boolean")),
        }
    }

    /// A string: numbers become their decimal text; `null` is empty.
    pub fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        opt_string(d).map(Option::unwrap_or_default)
    }

    /// An optional string: numbers become their decimal text; `""` is none.
    pub fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        let v = Value::deserialize(d)?;
        match v {
            Value::Null => Ok(None),
            Value::String(s) if s.is_empty() => Ok(None),
            Value::String(s) => Ok(Some(s)),
            Value::Number(n) => Ok(Some(n.to_string())),
            Value::Bool(b) => Ok(Some(b.to_string())),
            other => Err(fail(&other, "a string")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_parse_leniently_and_refuse_unknown_fields() {
        let v = serde_json::json!({"kind": "vehicle_pass", "plate": "鄂AB7553", "lane": "2", "speed": "", "confidence": 97});
        let b: EventBody = serde_json::from_value(v).expect("lenient");
        let EventBody::VehiclePass(p) = &b else { panic!("kind") };
        assert_eq!((p.lane, p.speed, p.confidence), (Some(2), None, Some(97.0)));
        let back = serde_json::to_value(&b).expect("serialize");
        assert_eq!(back["lane"], 2, "emitted strictly as a number");
        assert!(back.get("speed").is_none());

        let typo = serde_json::json!({"kind": "access", "result": "granted", "persn": {"id": "1"}});
        let e = serde_json::from_value::<EventBody>(typo).expect_err("unknown field");
        assert!(e.to_string().contains("persn"), "{e}");
        let bad = serde_json::json!({"kind": "access", "result": "granted", "door": {"reader": "one"}});
        assert!(serde_json::from_value::<EventBody>(bad).is_err());
        let alarm = serde_json::json!({"kind": "alarm", "priority": "1", "category": "smoke", "zone": 12});
        let EventBody::Alarm(a) = serde_json::from_value(alarm).expect("alarm") else { panic!("kind") };
        assert_eq!((a.priority, a.zone, a.category.as_deref()), (Some(1), Some(12), Some("smoke")));
    }
}
