//! Admission of devices that announce themselves (a GB/T 28181 REGISTER, an MQTT hello):
//! `admission.policy` decides whether they are added approved, quarantined or refused, and
//! the limits bound what a flood of new ids can cost: new devices per source address per
//! minute, devices in quarantine in total and per address (quarantined devices no operator
//! approves expire after `quarantine_ttl`). Pure: time comes in as `now`; the `Registry`
//! handle writes the outcome.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Admission, Device, DeviceKind, NewDevice, Protocol};
use crate::config::{Admission as AdmissionConfig, AdmissionPolicy};
use crate::ids::GbCode;

/// What a source knows about a device it has not seen before.
#[derive(Debug, Clone)]
pub struct UnknownDevice {
    pub id: String,
    pub protocol: Protocol,
    pub kind: Option<DeviceKind>,
    pub name: Option<String>,
    pub attrs: serde_json::Map<String, serde_json::Value>,
    /// Where the source would place it (a site captured from an MQTT topic), when that org
    /// exists; otherwise the id's GB/T 28181 prefix decides, if it has one.
    pub org_id: Option<String>,
    /// The device profile that matched its messages (MQTT, GA/T 1400): shown to the operator
    /// as the suggestion, used once approved.
    pub profile: Option<String>,
    /// Where the announcement came from (the source address): what the per-origin limits
    /// count by, kept as the device's `origin` attribute. `None` for a broker relaying many
    /// devices' messages: only the total quarantine cap applies (the broker's own
    /// authentication and ACLs say who may announce what).
    pub origin: Option<String>,
}

/// Why an unknown device was not added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `admission.policy = "closed"`.
    Closed,
    /// `admission.max_quarantined` devices wait already.
    QuarantineFull,
    /// Its origin has `max_quarantined_per_origin` devices waiting already.
    OriginQuarantineFull,
    /// Its origin announced `new_per_origin_per_minute` new devices this minute.
    OriginRate,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Closed => "admission_closed",
            Refusal::QuarantineFull => "quarantine_full",
            Refusal::OriginQuarantineFull => "origin_quarantine_full",
            Refusal::OriginRate => "origin_rate",
        }
    }

    pub fn detail(self) -> &'static str {
        match self {
            Refusal::Closed => "admission is closed",
            Refusal::QuarantineFull => "the quarantine is full: approve or reject waiting devices",
            Refusal::OriginQuarantineFull => "this address has too many devices waiting in quarantine",
            Refusal::OriginRate => "this address announced too many new devices this minute; try again later",
        }
    }
}

/// Entries past which the per-origin windows are swept of stale ones.
const SWEEP_AT: usize = 50_000;
const MINUTE_MS: crate::clock::Millis = 60_000;

/// New devices per origin in the current minute.
#[derive(Debug, Default)]
pub struct Rates {
    windows: HashMap<String, (crate::clock::Millis, u32)>,
}

impl Rates {
    /// Counts one new device from `origin` at `now`; `false` when over `per_minute`.
    pub fn take(&mut self, origin: &str, per_minute: u32, now: crate::clock::Millis) -> bool {
        if self.windows.len() >= SWEEP_AT {
            self.windows.retain(|_, (since, _)| now - *since < MINUTE_MS);
        }
        let w = self.windows.entry(origin.to_owned()).or_insert((now, 0));
        if now - w.0 >= MINUTE_MS {
            *w = (now, 0);
        }
        if w.1 >= per_minute {
            return false;
        }
        w.1 += 1;
        true
    }
}

/// Whether one more device may wait in quarantine, given how many wait now in total and
/// from its origin (`None`: no per-origin share applies).
pub fn room(cfg: &AdmissionConfig, total: usize, from_origin: Option<usize>) -> Result<(), Refusal> {
    if total >= cfg.max_quarantined {
        Err(Refusal::QuarantineFull)
    } else if from_origin.is_some_and(|n| n >= cfg.max_quarantined_per_origin) {
        Err(Refusal::OriginQuarantineFull)
    } else {
        Ok(())
    }
}

/// The registry's answer to a device that announced itself.
#[derive(Debug, Clone)]
pub enum AdmissionOutcome {
    /// Already in the registry (its own admission state says whether it counts).
    Known(Arc<Device>),
    /// Added now, approved or quarantined by policy.
    Added(Arc<Device>),
    /// Refused (a closed policy, or a limit); nothing was written.
    Refused(Refusal),
}

/// The device to write for an unknown one, or `None` when the policy refuses it.
pub fn decide(cfg: &AdmissionConfig, u: &UnknownDevice) -> Option<NewDevice> {
    let admission = match cfg.policy {
        AdmissionPolicy::Open => Admission::Approved,
        AdmissionPolicy::Quarantine => Admission::Quarantined,
        AdmissionPolicy::Closed => return None,
    };
    let kind = u.kind.or_else(|| GbCode::parse(&u.id).ok().and_then(|c| c.device_kind())).unwrap_or(DeviceKind::Other);
    Some(NewDevice {
        id: u.id.clone(),
        name: u.name.clone().unwrap_or_else(|| u.id.clone()),
        kind,
        protocol: u.protocol,
        org_id: u.org_id.clone(),
        profile: u.profile.clone(),
        rtsp_url: None,
        password: None,
        admission,
        attrs: {
            let mut a = u.attrs.clone();
            if let Some(o) = &u.origin {
                a.insert("origin".into(), serde_json::Value::String(o.clone()));
            }
            a
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unknown(id: &str) -> UnknownDevice {
        UnknownDevice {
            id: id.into(),
            protocol: Protocol::Gb28181,
            kind: None,
            name: None,
            attrs: Default::default(),
            org_id: None,
            profile: None,
            origin: Some("10.0.0.1".into()),
        }
    }

    #[test]
    fn new_devices_per_origin_are_rate_limited_and_quarantine_is_bounded() {
        let mut r = Rates::default();
        for _ in 0..3 {
            assert!(r.take("10.0.0.1", 3, 0));
        }
        assert!(!r.take("10.0.0.1", 3, 59_999), "the fourth in the minute");
        assert!(r.take("10.0.0.2", 3, 59_999), "another origin has its own");
        assert!(r.take("10.0.0.1", 3, 60_000), "a new minute");
        let cfg = AdmissionConfig { max_quarantined: 10, max_quarantined_per_origin: 4, ..AdmissionConfig::default() };
        assert_eq!(room(&cfg, 9, Some(3)), Ok(()));
        assert_eq!(room(&cfg, 10, Some(0)), Err(Refusal::QuarantineFull));
        assert_eq!(room(&cfg, 5, Some(4)), Err(Refusal::OriginQuarantineFull));
        assert_eq!(room(&cfg, 5, None), Ok(()), "a broker's devices share only the total");
        let d = decide(&cfg, &unknown("42010400001320000001")).expect("adds");
        assert_eq!(d.attrs["origin"], "10.0.0.1");
    }

    #[test]
    fn policy_decides_the_admission_state_and_the_type_code_the_kind() {
        let mut cfg = AdmissionConfig::default();
        let d = decide(&cfg, &unknown("42010400001180000001")).expect("quarantine adds");
        assert_eq!(d.admission, Admission::Quarantined);
        assert_eq!(d.kind, DeviceKind::Nvr);
        cfg.policy = AdmissionPolicy::Open;
        let d = decide(&cfg, &unknown("42010400001320000001")).expect("open adds");
        assert_eq!(d.admission, Admission::Approved);
        assert_eq!(d.kind, DeviceKind::Camera);
        cfg.policy = AdmissionPolicy::Closed;
        assert!(decide(&cfg, &unknown("42010400001320000001")).is_none());
    }
}
