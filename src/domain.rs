//! The domain's shared words, at the bottom floor: a device's in-process key, its kind, the
//! protocol vigil hears it by, its admission, and the level of an org node — as the registry,
//! ids, events, presence, rates and every source and sink name them. Imports nothing of ours.

use serde::{Deserialize, Serialize};

/// Interned handle of a device inside this process: an index into presence and rate tables.
/// Assigned when the device enters the cache, never reused while the process runs.
pub type DeviceKey = u32;

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($text => Some($name::$variant),)+ _ => None }
            }
            pub fn names() -> String {
                [$($text),+].join(", ")
            }
            pub fn index(self) -> usize {
                self as usize
            }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum!(
    /// The level of an org node.
    OrgKind { District => "district", Street => "street", Community => "community", Unit => "unit" }
);

string_enum!(
    /// What a device is, as the assessment groups devices.
    DeviceKind {
        Camera => "camera",
        Nvr => "nvr",
        Platform => "platform",
        VehicleCheckpoint => "vehicle_checkpoint",
        FaceCheckpoint => "face_checkpoint",
        AccessControl => "access_control",
        Barrier => "barrier",
        Intercom => "intercom",
        Sensor => "sensor",
        Other => "other",
    }
);

string_enum!(
    /// How vigil hears from a device.
    Protocol {
        Gb28181 => "gb28181",
        Rtsp => "rtsp",
        Mqtt => "mqtt",
        Gat1400 => "gat1400",
        Quic => "quic",
        External => "external",
    }
);

string_enum!(
    /// Whether a device is accepted into the registry's counts.
    Admission { Approved => "approved", Quarantined => "quarantined", Rejected => "rejected" }
);
