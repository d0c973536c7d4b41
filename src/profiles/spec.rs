//! The device-profile file as written (TOML, `device-profiles/*.toml`): serde structs with
//! no logic. `profiles::compile` (in mod.rs) turns one into a checked `Profile`. docs/profiles.md is the
//! operator's guide to every key.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileFile {
    /// Dotted name, e.g. `vzenith.ivs-plate`.
    pub profile: String,
    /// Bump on any mapping change; stored with every event as `name@version`.
    pub version: u32,
    #[serde(default)]
    pub vendor: String,
    #[serde(default)]
    pub description: String,
    /// Registry kind of the devices (access_control, barrier, sensor, …).
    pub kind: String,
    /// Globs (`DS-K1T*`) matched against the fingerprint model to suggest this profile.
    #[serde(default)]
    pub models: Vec<String>,
    pub routes: Vec<RouteSpec>,
    pub identity: IdentitySpec,
    /// Text encoding of the payload: auto (UTF-8, else GB18030), utf-8, gbk.
    #[serde(default)]
    pub charset: Option<String>,
    #[serde(default)]
    pub decode: Vec<DecodeSpec>,
    #[serde(default)]
    pub time: Option<TimeSpec>,
    #[serde(default)]
    pub sequence: Option<String>,
    /// Parts of the dedup key (expressions), joined after the device id.
    #[serde(default)]
    pub dedup: Vec<String>,
    #[serde(default)]
    pub tables: BTreeMap<String, BTreeMap<String, toml::Value>>,
    pub emit: Vec<EmitSpec>,
    #[serde(default)]
    pub liveness: LivenessSpec,
    #[serde(default)]
    pub privacy: PrivacySpec,
    #[serde(default)]
    pub media: MediaDefaults,
    #[serde(default)]
    pub tests: Vec<TestSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    #[serde(default)]
    pub mqtt: Option<String>,
    #[serde(default)]
    pub http: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentitySpec {
    /// The hardware key: serial, MAC, 20-digit code. Never a display name.
    pub key: String,
    #[serde(default)]
    pub site: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub firmware: Option<String>,
    /// The record's own id as its sender knows it (GA/T 1400 `FaceID`), answered back per
    /// object.
    #[serde(default)]
    pub object: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum DecodeSpec {
    /// `"json"`.
    Word(String),
    Step(DecodeStep),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecodeStep {
    #[serde(default)]
    pub unwrap: Option<String>,
    #[serde(default)]
    pub base64: Option<String>,
    #[serde(default)]
    pub json_text: Option<String>,
    #[serde(default)]
    pub each: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeSpec {
    pub field: String,
    #[serde(default = "auto")]
    pub format: String,
    #[serde(default = "cst")]
    pub zone: String,
    #[serde(default, with = "humantime_serde")]
    pub max_future: Option<std::time::Duration>,
    #[serde(default, with = "humantime_serde")]
    pub max_past: Option<std::time::Duration>,
    #[serde(default)]
    pub clock_reset_before: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub replay_after: Option<std::time::Duration>,
}

fn auto() -> String {
    "auto".into()
}
fn cst() -> String {
    "+08:00".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmitSpec {
    #[serde(default)]
    pub when: Option<String>,
    /// access, vehicle_pass, face_capture, alarm, heartbeat, or drop.
    pub event: String,
    /// For `drop`: the reason counted.
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub offline_replay: Option<String>,
    /// Body field (dotted for nested: `credential.type`) → expression. For `heartbeat`:
    /// device attributes to keep (firmware, ip, …).
    #[serde(default)]
    pub map: BTreeMap<String, String>,
    #[serde(default)]
    pub media: Vec<MediaSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaSpec {
    /// A path to an array: one image per element, `data` and `role` relative to it.
    #[serde(default)]
    pub each: Option<String>,
    /// Base64 image bytes.
    pub data: String,
    /// scene, face, plate, vehicle, snapshot (an expression; a bare word is a literal).
    pub role: String,
    #[serde(default)]
    pub max_bytes: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaDefaults {
    #[serde(default)]
    pub max_bytes: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LivenessSpec {
    /// Heartbeat or data at least this often. Default 60s.
    #[serde(default, with = "humantime_serde")]
    pub expect_every: Option<std::time::Duration>,
    /// Missed intervals before offline. Default 3.
    #[serde(default)]
    pub misses: Option<u32>,
    #[serde(default)]
    pub lwt: Option<LwtSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LwtSpec {
    pub topic: String,
    #[serde(default = "online")]
    pub online: String,
    #[serde(default = "offline")]
    pub offline: String,
}

fn online() -> String {
    "online".into()
}
fn offline() -> String {
    "offline".into()
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacySpec {
    /// Body fields (dotted) replaced by their SHA-256 before the event is stored.
    #[serde(default)]
    pub hash: Vec<String>,
    /// Body fields removed before the event is stored.
    #[serde(default)]
    pub drop: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestSpec {
    pub name: String,
    /// The MQTT topic or HTTP path the message arrives on.
    pub route: String,
    /// Receipt time (RFC 3339), so time judgements are reproducible. Default: the first
    /// expected event's `occurred_at` plus one second.
    #[serde(default)]
    pub received_at: Option<String>,
    /// The payload as text.
    #[serde(default)]
    pub input: Option<String>,
    /// Or as base64 (binary or GBK payloads).
    #[serde(default)]
    pub input_base64: Option<String>,
    /// One entry per record the message yields, each a subset of the mapped record's JSON
    /// view: `{kind, device, site, occurred_at, time_source, seq, dedup_key,
    /// offline_replay, body, media, attrs}`; or `reject = "text"` for a vector that must fail.
    #[serde(default)]
    pub expect: Vec<toml::Value>,
}
