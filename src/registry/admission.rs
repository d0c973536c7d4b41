//! Admission of devices that announce themselves (a GB/T 28181 REGISTER, an MQTT hello):
//! `admission.policy` decides whether they are added approved, quarantined or refused.
//! Pure: the `Registry` handle writes the outcome.

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
}

/// The registry's answer to a device that announced itself.
#[derive(Debug, Clone)]
pub enum AdmissionOutcome {
    /// Already in the registry (its own admission state says whether it counts).
    Known(Arc<Device>),
    /// Added now, approved or quarantined by policy.
    Added(Arc<Device>),
    /// Refused by a closed policy; nothing was written.
    Refused,
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
        attrs: u.attrs.clone(),
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
        }
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
