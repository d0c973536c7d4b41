//! What sources produce: `Observation`s (evidence that a device is alive or dead) for
//! presence. Normalized `Event`s (access, vehicle pass, face capture, alarm, status) join
//! them here with the events-in work. Imports nothing of ours but ids and the clock.

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
