//! GA/T 1400 (视图库) messages as vigil reads and writes them: the system objects
//! (`RegisterObject`, `KeepaliveObject`, `UnRegisterObject`, `SystemTimeObject`), the answers
//! (`ResponseStatusObject`, `ResponseStatusListObject`), status codes and the
//! `yyyyMMddHHmmss` time. Parse leniently (StatusCode `0` or `"0"`, ids as numbers, any of
//! the three content types), emit strictly. Shared by the view-library endpoint
//! (`sources/gat1400`) and the upstream sink (`sinks/gat1400`). Shapes: shared reference
//! relay.md §1.3–1.5.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::clock::Millis;

/// StatusCode values (GA/T 1400.4; `nanguantong/gat-1400` gat1400_status_code.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    Ok = 0,
    OtherError = 1,
    DeviceBusy = 2,
    DeviceError = 3,
    InvalidOperation = 4,
    InvalidXmlFormat = 5,
    InvalidXmlContent = 6,
    InvalidJsonFormat = 7,
    InvalidJsonContent = 8,
    SystemReboot = 9,
}

impl Status {
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn text(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::OtherError => "Other error",
            Status::DeviceBusy => "Device busy",
            Status::DeviceError => "Device error",
            Status::InvalidOperation => "Invalid operation",
            Status::InvalidXmlFormat => "Invalid XML format",
            Status::InvalidXmlContent => "Invalid XML content",
            Status::InvalidJsonFormat => "Invalid JSON format",
            Status::InvalidJsonContent => "Invalid JSON content",
            Status::SystemReboot => "System reboot",
        }
    }

    /// Whether a sender should try the object again later (1, 2, 3, 9) rather than give up.
    pub fn retryable(code: u8) -> bool {
        matches!(code, 1 | 2 | 3 | 9)
    }
}

/// Reads a StatusCode sent as a number or a numeric string.
pub fn status_code(v: &Value) -> Option<u8> {
    match v {
        Value::Number(n) => n.as_u64().and_then(|c| u8::try_from(c).ok()),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// GA/T 1400 local time: `yyyyMMddHHmmss` in `tz`.
pub fn local_time(at: Millis, tz: &chrono_tz::Tz) -> String {
    DateTime::<Utc>::from_timestamp_millis(at)
        .map(|d| d.with_timezone(tz).format("%Y%m%d%H%M%S").to_string())
        .unwrap_or_default()
}

/// Reads a GA/T 1400 local time (`yyyyMMddHHmmss` in `tz`); `None` when it is not one. A
/// time that a clock change makes ambiguous is taken at its earlier instant.
pub fn read_local_time(text: &str, tz: &chrono_tz::Tz) -> Option<Millis> {
    use chrono::TimeZone as _;
    let naive = chrono::NaiveDateTime::parse_from_str(text.trim(), "%Y%m%d%H%M%S").ok()?;
    tz.from_local_datetime(&naive).earliest().map(|d| d.timestamp_millis())
}

/// The objects of a list (`v[list][object]`), sent as an array or, by some peers, as a lone
/// object; `None` when the list is missing.
pub fn list_items(v: &Value, list: &str, object: &str) -> Option<Vec<Value>> {
    match v.get(list)?.get(object)? {
        Value::Array(a) => Some(a.clone()),
        o @ Value::Object(_) => Some(vec![o.clone()]),
        _ => None,
    }
}

/// One `ResponseStatusObject`. `detail` is appended to the standard text.
pub fn status_object(url: &str, status: Status, id: &str, detail: &str, at: Millis, tz: &chrono_tz::Tz) -> Value {
    let text = if detail.is_empty() { status.text().to_owned() } else { format!("{}: {detail}", status.text()) };
    json!({
        "RequestURL": url,
        "StatusCode": status.code(),
        "StatusString": text,
        "Id": id,
        "LocalTime": local_time(at, tz),
    })
}

/// `{"ResponseStatusObject": {...}}`.
pub fn response(url: &str, status: Status, id: &str, detail: &str, at: Millis, tz: &chrono_tz::Tz) -> Value {
    json!({ "ResponseStatusObject": status_object(url, status, id, detail, at, tz) })
}

/// `{"ResponseStatusListObject": {"ResponseStatusObject": [...]}}`.
pub fn response_list(items: Vec<Value>) -> Value {
    json!({ "ResponseStatusListObject": { "ResponseStatusObject": items } })
}

/// `{"SystemTimeObject": ...}`: TimeMode 1 = network (NTP) time.
pub fn system_time(server_id: &str, at: Millis, tz: &chrono_tz::Tz) -> Value {
    json!({ "SystemTimeObject": { "VIIDServerID": server_id, "TimeMode": "1", "LocalTime": local_time(at, tz), "TimeZone": tz.name() } })
}

/// The `DeviceID` inside `{"<Kind>Object": {"DeviceID": ...}}` (register, keepalive,
/// unregister); numbers are accepted as text.
pub fn system_device_id(body: &Value, object: &str) -> Option<String> {
    let v = body.get(object)?.get("DeviceID")?;
    match v {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The list key and object key of a collection path (`/VIID/Faces` → `FaceListObject`,
/// `FaceObject`), for answering objects a profile does not map.
pub fn list_keys(path: &str) -> Option<(&'static str, &'static str, &'static str)> {
    Some(match path {
        "/VIID/Faces" => ("FaceListObject", "FaceObject", "FaceID"),
        "/VIID/MotorVehicles" => ("MotorVehicleListObject", "MotorVehicleObject", "MotorVehicleID"),
        "/VIID/Persons" => ("PersonListObject", "PersonObject", "PersonID"),
        "/VIID/NonMotorVehicles" => ("NonMotorVehicleListObject", "NonMotorVehicleObject", "NonMotorVehicleID"),
        "/VIID/APEs" => ("APEListObject", "APEObject", "ApeID"),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenient_in_strict_out() {
        assert_eq!(status_code(&json!("0")), Some(0));
        assert_eq!(status_code(&json!(8)), Some(8));
        assert_eq!(status_code(&json!("x")), None);
        assert_eq!(
            system_device_id(&json!({"RegisterObject": {"DeviceID": 11111}}), "RegisterObject").as_deref(),
            Some("11111")
        );
        assert_eq!(system_device_id(&json!({"RegisterObject": {"DeviceID": " "}}), "RegisterObject"), None);
        let tz = chrono_tz::Asia::Shanghai;
        // 2020-06-24T17:43:12Z is 20200625014312 in Shanghai (relay.md vector F).
        let r = response("/VIID/System/Register", Status::Ok, "32050500001320000007", "", 1_593_020_592_000, &tz);
        assert_eq!(r["ResponseStatusObject"]["LocalTime"], "20200625014312");
        assert_eq!(r["ResponseStatusObject"]["StatusCode"], 0, "a number, not a string");
        assert!(Status::retryable(2) && !Status::retryable(8));
    }
}
