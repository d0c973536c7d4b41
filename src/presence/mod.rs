//! Presence: the online state machine of every device. Pure: no sockets, no sqlx, no clock;
//! time comes in as `now` (quinn-proto's `handle(now, ...)` shape).
//!
//! `PresenceTable::observe(now, obs)` applies one observation and `tick(now)` fires the
//! deadlines that passed; both return the transitions they cause, each with its reason.
//! Online means: the liveness window (keepalive, TTL, frame, message) is open and, for
//! protocols that register, the registration has not expired: two separate facts.
//! The task around it is `runner.rs`; what it persists is `store.rs`.

pub mod runner;
pub mod store;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use serde::Serialize;

use crate::clock::Millis;
use crate::event::{Evidence, Observation, StreamFault};
use crate::registry::DeviceKey;

const NONE: Millis = Millis::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum State {
    Unknown = 0,
    Online = 1,
    Offline = 2,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Unknown => "unknown",
            State::Online => "online",
            State::Offline => "offline",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "unknown" => Some(State::Unknown),
            "online" => Some(State::Online),
            "offline" => Some(State::Offline),
            _ => None,
        }
    }
    pub fn from_u8(v: u8) -> Self {
        match v {
            1 => State::Online,
            2 => State::Offline,
            _ => State::Unknown,
        }
    }
}

/// Why a device is in its state: the evidence that decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Known to the registry, no evidence yet.
    Added,
    Alive,
    Dead,
    Register,
    Unregister,
    RegistrationExpired,
    Keepalive,
    KeepaliveTimeout,
    TtlExpired,
    Frame,
    StreamStalled,
    /// The camera refused the stream's credentials.
    AuthFailed,
    /// The camera has no stream at the configured path.
    NotFound,
    /// Nothing listens on the camera's port.
    Refused,
    /// The camera's session limit is reached.
    SessionLimit,
    /// The camera offers no usable video.
    BadMedia,
    /// No answer in time, or a network error.
    Unreachable,
    /// The camera closed the session.
    StreamClosed,
    /// Corrupt media ended the session.
    MediaError,
    /// The camera answered with another error status.
    ProtocolError,
    Message,
    /// A device's heartbeat message (MQTT, or a profile's heartbeat rule).
    Heartbeat,
    /// A device's data message (an event it sent).
    Data,
    MessageTimeout,
    LastWill,
    LinkHeartbeat,
    LinkTimeout,
    /// The gateway was down: nothing is known of the gap.
    GatewayDown,
    /// After a restart, a validity window granted before it (registration, TTL) still holds.
    WindowStillOpen,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Added => "added",
            Reason::Alive => "alive",
            Reason::Dead => "dead",
            Reason::Register => "register",
            Reason::Unregister => "unregister",
            Reason::RegistrationExpired => "registration_expired",
            Reason::Keepalive => "keepalive",
            Reason::KeepaliveTimeout => "keepalive_timeout",
            Reason::TtlExpired => "ttl_expired",
            Reason::Frame => "frame",
            Reason::StreamStalled => "stream_stalled",
            Reason::AuthFailed => "auth_failed",
            Reason::NotFound => "not_found",
            Reason::Refused => "refused",
            Reason::SessionLimit => "session_limit",
            Reason::BadMedia => "bad_media",
            Reason::Unreachable => "unreachable",
            Reason::StreamClosed => "stream_closed",
            Reason::MediaError => "media_error",
            Reason::ProtocolError => "protocol_error",
            Reason::Message => "message",
            Reason::Heartbeat => "heartbeat",
            Reason::Data => "data",
            Reason::MessageTimeout => "message_timeout",
            Reason::LastWill => "last_will",
            Reason::LinkHeartbeat => "link_heartbeat",
            Reason::LinkTimeout => "link_timeout",
            Reason::GatewayDown => "gateway_down",
            Reason::WindowStillOpen => "window_still_open",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Every reason, for parsing what was stored.
    pub const ALL: [Reason; 29] = [
        Reason::Added,
        Reason::Alive,
        Reason::Dead,
        Reason::Register,
        Reason::Unregister,
        Reason::RegistrationExpired,
        Reason::Keepalive,
        Reason::KeepaliveTimeout,
        Reason::TtlExpired,
        Reason::Frame,
        Reason::StreamStalled,
        Reason::AuthFailed,
        Reason::NotFound,
        Reason::Refused,
        Reason::SessionLimit,
        Reason::BadMedia,
        Reason::Unreachable,
        Reason::StreamClosed,
        Reason::MediaError,
        Reason::ProtocolError,
        Reason::Message,
        Reason::Heartbeat,
        Reason::Data,
        Reason::MessageTimeout,
        Reason::LastWill,
        Reason::LinkHeartbeat,
        Reason::LinkTimeout,
        Reason::GatewayDown,
        Reason::WindowStillOpen,
    ];
}

impl From<StreamFault> for Reason {
    fn from(f: StreamFault) -> Self {
        match f {
            StreamFault::AuthFailed => Reason::AuthFailed,
            StreamFault::NotFound => Reason::NotFound,
            StreamFault::Refused => Reason::Refused,
            StreamFault::SessionLimit => Reason::SessionLimit,
            StreamFault::BadMedia => Reason::BadMedia,
            StreamFault::Stalled => Reason::StreamStalled,
            StreamFault::Unreachable => Reason::Unreachable,
            StreamFault::Closed => Reason::StreamClosed,
            StreamFault::MediaError => Reason::MediaError,
            StreamFault::ProtocolError => Reason::ProtocolError,
        }
    }
}

/// What kind of liveness window is open; names the reason when it closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AliveKind {
    Ttl,
    Keepalive,
    Frame,
    Message,
    Link,
}

impl AliveKind {
    fn timeout_reason(self) -> Reason {
        match self {
            AliveKind::Ttl => Reason::TtlExpired,
            AliveKind::Keepalive => Reason::KeepaliveTimeout,
            AliveKind::Frame => Reason::StreamStalled,
            AliveKind::Message => Reason::MessageTimeout,
            AliveKind::Link => Reason::LinkTimeout,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            AliveKind::Ttl => "ttl",
            AliveKind::Keepalive => "keepalive",
            AliveKind::Frame => "frame",
            AliveKind::Message => "message",
            AliveKind::Link => "link",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [AliveKind::Ttl, AliveKind::Keepalive, AliveKind::Frame, AliveKind::Message, AliveKind::Link]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// A change of state, with the evidence that caused it.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub device: DeviceKey,
    pub device_id: Arc<str>,
    pub protocol: &'static str,
    pub at: Millis,
    pub from: State,
    pub to: State,
    pub reason: Reason,
    pub detail: Option<Arc<str>>,
}

/// What the API shows of one device's presence.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    pub state: State,
    pub since: Millis,
    pub last_seen: Option<Millis>,
    pub reason: Reason,
    pub detail: Option<Arc<str>>,
}

/// The state row persisted at checkpoints and transitions (and read back at start).
#[derive(Debug, Clone, PartialEq)]
pub struct StateRow {
    pub device_id: Arc<str>,
    pub state: State,
    pub since: Millis,
    pub last_seen: Option<Millis>,
    pub reason: Reason,
    pub detail: Option<Arc<str>>,
    pub alive_until: Option<Millis>,
    pub alive_kind: Option<AliveKind>,
    pub registered_until: Option<Millis>,
}

#[derive(Debug, Clone)]
struct Slot {
    id: Arc<str>,
    protocol: &'static str,
    state: State,
    since: Millis,
    last_seen: Millis,
    reason: Reason,
    detail: Option<Arc<str>>,
    alive_until: Millis,
    alive_kind: AliveKind,
    needs_registration: bool,
    registered_until: Millis,
    /// Deadline of this slot's earliest live timer entry, NONE if it has none.
    scheduled: Millis,
    dirty: bool,
}

impl Slot {
    fn deadline(&self) -> Millis {
        let reg = if self.needs_registration { self.registered_until } else { NONE };
        self.alive_until.min(reg)
    }
    fn online_at(&self, now: Millis) -> bool {
        self.alive_until > now && (!self.needs_registration || self.registered_until > now)
    }
}

/// Every tracked device's presence, indexed by `DeviceKey`, with one timer heap.
#[derive(Debug, Default)]
pub struct PresenceTable {
    slots: Vec<Option<Slot>>,
    timers: BinaryHeap<Reverse<(Millis, DeviceKey)>>,
    ignored: u64,
}

impl PresenceTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts tracking a device (state unknown) unless it is tracked already.
    pub fn track(&mut self, key: DeviceKey, id: Arc<str>, protocol: &'static str, now: Millis) {
        let i = key as usize;
        if self.slots.len() <= i {
            self.slots.resize(i + 1, None);
        }
        if self.slots[i].is_none() {
            self.slots[i] = Some(Slot {
                id,
                protocol,
                state: State::Unknown,
                since: now,
                last_seen: NONE,
                reason: Reason::Added,
                detail: None,
                alive_until: 0,
                alive_kind: AliveKind::Ttl,
                needs_registration: false,
                registered_until: 0,
                scheduled: NONE,
                // No row is needed for a device nothing is known about: absent means unknown.
                dirty: false,
            });
        }
    }

    /// Stops tracking a device (deleted from the registry).
    pub fn forget(&mut self, key: DeviceKey) {
        if let Some(s) = self.slots.get_mut(key as usize) {
            *s = None;
        }
    }

    /// Observations for devices that are not tracked (counted, then dropped).
    pub fn ignored(&self) -> u64 {
        self.ignored
    }

    pub fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies one observation at `now`; returns the transition it causes, if any.
    pub fn observe(&mut self, now: Millis, obs: &Observation) -> Option<Transition> {
        let Some(Some(slot)) = self.slots.get_mut(obs.device as usize) else {
            self.ignored += 1;
            return None;
        };
        slot.last_seen = obs.at;
        slot.dirty = true;
        let at = obs.at;
        let (target, reason) = match obs.evidence {
            Evidence::Alive { ttl_ms } => {
                slot.alive_until = at.saturating_add(ttl_ms);
                slot.alive_kind = AliveKind::Ttl;
                (None, Reason::Alive)
            }
            Evidence::SipRegister { expires_ms, window_ms } => {
                slot.needs_registration = true;
                slot.registered_until = at.saturating_add(expires_ms);
                slot.alive_until = slot.alive_until.max(at.saturating_add(window_ms));
                slot.alive_kind = AliveKind::Keepalive;
                (None, Reason::Register)
            }
            Evidence::SipKeepalive { window_ms } => {
                // A keepalive speaks for a protocol that registers: it never makes a device
                // online without a registration (registered_until stays as it was).
                slot.needs_registration = true;
                slot.alive_until = at.saturating_add(window_ms);
                slot.alive_kind = AliveKind::Keepalive;
                (None, Reason::Keepalive)
            }
            Evidence::ViewLibrary { validity_ms, register } => {
                // Any successful request renews a GA/T 1400 registration.
                slot.needs_registration = true;
                slot.registered_until = at.saturating_add(validity_ms);
                slot.alive_until = at.saturating_add(validity_ms);
                slot.alive_kind = AliveKind::Keepalive;
                (None, if register { Reason::Register } else { Reason::Keepalive })
            }
            Evidence::RtspFrame { stall_ms } => {
                slot.alive_until = at.saturating_add(stall_ms);
                slot.alive_kind = AliveKind::Frame;
                (None, Reason::Frame)
            }
            Evidence::MqttMessage { timeout_ms, heartbeat } => {
                slot.alive_until = at.saturating_add(timeout_ms);
                slot.alive_kind = AliveKind::Message;
                (None, if heartbeat { Reason::Heartbeat } else { Reason::Data })
            }
            Evidence::LinkHeartbeat { timeout_ms } => {
                slot.alive_until = at.saturating_add(timeout_ms);
                slot.alive_kind = AliveKind::Link;
                (None, Reason::LinkHeartbeat)
            }
            Evidence::Dead => (Some(State::Offline), Reason::Dead),
            Evidence::SipUnregister => {
                slot.registered_until = 0;
                (Some(State::Offline), Reason::Unregister)
            }
            Evidence::RtspDown { fault } => (Some(State::Offline), Reason::from(fault)),
            Evidence::MqttLastWill => (Some(State::Offline), Reason::LastWill),
        };
        let target = match target {
            Some(t) => {
                slot.alive_until = 0;
                t
            }
            None if slot.online_at(now) => State::Online,
            // Alive evidence that does not make the device online (a keepalive without a
            // registration, or evidence older than its own window) changes nothing.
            None => slot.state,
        };
        let mut out = None;
        if target != slot.state {
            let from = slot.state;
            slot.state = target;
            slot.since = now;
            slot.reason = reason;
            slot.detail = obs.detail.clone();
            out = Some(Transition {
                device: obs.device,
                device_id: slot.id.clone(),
                protocol: slot.protocol,
                at: now,
                from,
                to: target,
                reason,
                detail: obs.detail.clone(),
            });
        } else if target == State::Online && slot.reason != reason && obs.detail.is_some() {
            slot.detail = obs.detail.clone();
        } else if target == State::Offline && matches!(obs.evidence, Evidence::RtspDown { .. }) {
            // Still down, for what may be another cause now (frames stopped, then the
            // reconnect is refused): the reason shown is the latest classified cause. No
            // transition: the device did not change state.
            slot.reason = reason;
            slot.detail = obs.detail.clone();
        }
        if slot.state == State::Online {
            let d = slot.deadline();
            if d < slot.scheduled {
                slot.scheduled = d;
                self.timers.push(Reverse((d, obs.device)));
            }
        }
        out
    }

    /// The earliest pending deadline, if any (the runner sleeps until it).
    pub fn next_deadline(&self) -> Option<Millis> {
        self.timers.peek().map(|Reverse((d, _))| *d)
    }

    /// Fires every deadline at or before `now`; returns the offline transitions.
    pub fn tick(&mut self, now: Millis) -> Vec<Transition> {
        let mut out = Vec::new();
        while let Some(Reverse((d, key))) = self.timers.peek().copied() {
            if d > now {
                break;
            }
            self.timers.pop();
            let Some(Some(slot)) = self.slots.get_mut(key as usize) else { continue };
            if slot.scheduled != d {
                continue; // superseded by an earlier entry
            }
            slot.scheduled = NONE;
            if slot.state != State::Online {
                continue;
            }
            let actual = slot.deadline();
            if actual > now {
                slot.scheduled = actual;
                self.timers.push(Reverse((actual, key)));
                continue;
            }
            let reason = if slot.needs_registration && slot.registered_until <= now {
                Reason::RegistrationExpired
            } else {
                slot.alive_kind.timeout_reason()
            };
            let detail: Arc<str> = match reason {
                Reason::RegistrationExpired => "registration expired without a refresh".into(),
                _ if slot.last_seen == NONE => "no evidence received".into(),
                _ => format!(
                    "no {} evidence for {} s",
                    slot.alive_kind.as_str(),
                    (actual - slot.last_seen).max(0) / 1000
                )
                .into(),
            };
            let from = slot.state;
            slot.state = State::Offline;
            slot.since = actual;
            slot.reason = reason;
            slot.detail = Some(detail.clone());
            slot.dirty = true;
            out.push(Transition {
                device: key,
                device_id: slot.id.clone(),
                protocol: slot.protocol,
                at: actual,
                from,
                to: State::Offline,
                reason,
                detail: Some(detail),
            });
        }
        out
    }

    /// The presence of one device.
    pub fn view(&self, key: DeviceKey) -> Option<View> {
        let s = self.slots.get(key as usize)?.as_ref()?;
        Some(View {
            state: s.state,
            since: s.since,
            last_seen: (s.last_seen != NONE).then_some(s.last_seen),
            reason: s.reason,
            detail: s.detail.clone(),
        })
    }

    /// Every slot's state as a byte (`State as u8`), indexed by key; untracked keys unknown.
    pub fn states(&self) -> Vec<u8> {
        self.slots.iter().map(|s| s.as_ref().map(|s| s.state as u8).unwrap_or(0)).collect()
    }

    /// Devices that are not online, with their presence.
    pub fn not_online(&self) -> Vec<(DeviceKey, View)> {
        (0..self.slots.len() as DeviceKey)
            .filter_map(|k| self.view(k).filter(|v| v.state != State::Online).map(|v| (k, v)))
            .collect()
    }

    fn row(s: &Slot) -> StateRow {
        StateRow {
            device_id: s.id.clone(),
            state: s.state,
            since: s.since,
            last_seen: (s.last_seen != NONE).then_some(s.last_seen),
            reason: s.reason,
            detail: s.detail.clone(),
            alive_until: (s.alive_until > 0 && s.alive_until != NONE).then_some(s.alive_until),
            alive_kind: Some(s.alive_kind),
            registered_until: s.needs_registration.then_some(s.registered_until),
        }
    }

    /// Rows of the devices changed since the last call (the checkpoint), marking them clean.
    pub fn take_dirty(&mut self) -> Vec<StateRow> {
        self.slots
            .iter_mut()
            .flatten()
            .filter(|s| s.dirty)
            .map(|s| {
                s.dirty = false;
                Self::row(s)
            })
            .collect()
    }

    /// Rows of the given devices (written with their transitions).
    pub fn rows(&self, keys: impl IntoIterator<Item = DeviceKey>) -> Vec<StateRow> {
        keys.into_iter().filter_map(|k| self.slots.get(k as usize)?.as_ref().map(Self::row)).collect()
    }

    /// Restores tracked devices from their persisted rows after a restart at `now`.
    ///
    /// The gap is made visible: a device that was not `unknown` gets a transition to
    /// `unknown` at `down_since` (the last instant the gateway vouched for), reason
    /// `gateway_down`. If a validity window granted before the stop is still open it goes
    /// online again at `now` (reason `window_still_open`) and its timers resume; otherwise it
    /// stays unknown until fresh evidence arrives. Never silently online.
    pub fn restore(&mut self, rows: &[(DeviceKey, StateRow)], down_since: Millis, now: Millis) -> Vec<Transition> {
        // One shared text per kind of detail: a restart of 100,000 devices allocates three.
        let gap: Arc<str> = format!("gateway stopped; no evidence was received between the last checkpoint ({down_since}) and the restart ({now})").into();
        let open: [Arc<str>; 5] =
            [AliveKind::Ttl, AliveKind::Keepalive, AliveKind::Frame, AliveKind::Message, AliveKind::Link]
                .map(|k| Arc::from(format!("a {} window granted before the restart is still open", k.as_str())));
        let mut out = Vec::new();
        for (key, row) in rows {
            let key = *key;
            let Some(Some(slot)) = self.slots.get_mut(key as usize) else { continue };
            slot.last_seen = row.last_seen.unwrap_or(NONE);
            slot.alive_until = row.alive_until.unwrap_or(0);
            slot.alive_kind = row.alive_kind.unwrap_or(AliveKind::Ttl);
            slot.needs_registration = row.registered_until.is_some();
            slot.registered_until = row.registered_until.unwrap_or(0);
            slot.state = row.state;
            slot.since = row.since;
            slot.reason = row.reason;
            slot.detail = row.detail.clone();
            if row.state != State::Unknown {
                let gap_at = down_since.max(row.since);
                out.push(Transition {
                    device: key,
                    device_id: slot.id.clone(),
                    protocol: slot.protocol,
                    at: gap_at,
                    from: row.state,
                    to: State::Unknown,
                    reason: Reason::GatewayDown,
                    detail: Some(gap.clone()),
                });
                slot.state = State::Unknown;
                slot.since = gap_at;
                slot.reason = Reason::GatewayDown;
                slot.detail = Some(gap.clone());
                slot.dirty = true;
            }
            if row.state == State::Online && slot.online_at(now) {
                let until = slot.deadline();
                let detail = open[slot.alive_kind as usize].clone();
                out.push(Transition {
                    device: key,
                    device_id: slot.id.clone(),
                    protocol: slot.protocol,
                    at: now,
                    from: State::Unknown,
                    to: State::Online,
                    reason: Reason::WindowStillOpen,
                    detail: Some(detail.clone()),
                });
                slot.state = State::Online;
                slot.since = now;
                slot.reason = Reason::WindowStillOpen;
                slot.detail = Some(detail);
                slot.scheduled = until;
                self.timers.push(Reverse((until, key)));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
