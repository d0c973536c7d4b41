//! GA/T 1400 subscriptions (视图库级联), the message side: a `SubscribeObject` read leniently
//! and checked (`parse`), what a subscription wants (`Subscription::wants`) and the
//! `SubscribeDetail` category codes (4 device status, 11 person, 12 face, 13 motor vehicle,
//! 14 non-motor vehicle). Pure: where subscriptions are stored is the outbox's business.

use serde_json::Value;

use crate::clock::Millis;
use crate::event::EventKind;

/// One subscription of an upper view library.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Subscription {
    pub id: String,
    /// The configured upstream it belongs to.
    pub target: String,
    pub title: String,
    /// Category codes it asked for.
    pub categories: Vec<u16>,
    /// Which devices (ids, comma-separated) or the whole view library (empty, or our id).
    pub resource_uri: String,
    pub receive_addr: String,
    pub begin_at: Option<Millis>,
    pub end_at: Option<Millis>,
    pub cancelled: bool,
}

/// Device status (采集设备状态).
pub const CATEGORY_STATUS: u16 = 4;

/// The category code of a record kind, where GA/T 1400 has one.
pub fn category(kind: EventKind) -> Option<u16> {
    match kind {
        EventKind::Status => Some(CATEGORY_STATUS),
        EventKind::FaceCapture => Some(12),
        EventKind::VehiclePass => Some(13),
        _ => None,
    }
}

impl Subscription {
    /// Whether it is in force at `now` (not cancelled, between BeginTime and EndTime).
    pub fn in_force(&self, now: Millis) -> bool {
        !self.cancelled && self.begin_at.is_none_or(|t| t <= now) && self.end_at.is_none_or(|t| now < t)
    }

    /// Whether it is in force at `now` and wants records of `category` from `device`.
    pub fn wants(&self, category: u16, device: &str, own_id: &str, now: Millis) -> bool {
        self.in_force(now)
            && self.categories.contains(&category)
            && (self.resource_uri.is_empty()
                || self.resource_uri.split(',').map(str::trim).any(|r| r == own_id || r == device))
    }
}

/// What an upper view library sent: a subscription to add or replace, or one to cancel.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Subscribe(Subscription),
    Cancel(String),
}

fn text(o: &Value, key: &str) -> String {
    match o.get(key) {
        Some(Value::String(s)) => s.trim().to_owned(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

/// Reads one `SubscribeObject` (numbers as strings or numbers, times `yyyyMMddHHmmss` local).
/// `ReceiveAddr` must be on `upper_host`, the host of the upstream's configured URL: a
/// subscription names where records (faces among them) are sent, and `User-Identify` alone
/// proves nothing, so notifications never go anywhere but the configured upper platform.
/// `Err` names the field that is wrong.
pub fn parse(o: &Value, target: &str, upper_host: &str, tz: &chrono_tz::Tz) -> Result<Request, (String, String)> {
    let bad = |f: &str, m: &str| (f.to_owned(), m.to_owned());
    let id = text(o, "SubscribeID");
    if id.is_empty() || id.len() > 64 {
        return Err(bad("SubscribeID", "required, at most 64 characters"));
    }
    let operate = text(o, "OperateType");
    if operate == "1" {
        return Ok(Request::Cancel(id));
    }
    let detail = text(o, "SubscribeDetail");
    let categories: Vec<u16> = detail.split(',').filter_map(|c| c.trim().parse().ok()).collect();
    if categories.is_empty() {
        return Err(bad("SubscribeDetail", "no category codes (e.g. \"12,13,4\")"));
    }
    let receive_addr = text(o, "ReceiveAddr");
    match url::Url::parse(&receive_addr) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => {
            if u.host_str() != Some(upper_host) {
                return Err(bad("ReceiveAddr", &format!("must be on the upper platform's host {upper_host}")));
            }
        }
        _ => return Err(bad("ReceiveAddr", "an http:// URL is required")),
    }
    let time = |key: &str| -> Result<Option<Millis>, (String, String)> {
        let t = text(o, key);
        if t.is_empty() {
            return Ok(None);
        }
        super::codec::read_local_time(&t, tz).map(Some).ok_or_else(|| bad(key, "expected yyyyMMddHHmmss"))
    };
    Ok(Request::Subscribe(Subscription {
        id,
        target: target.to_owned(),
        title: text(o, "Title"),
        categories,
        resource_uri: text(o, "ResourceURI"),
        receive_addr,
        begin_at: time("BeginTime")?,
        end_at: time("EndTime")?,
        cancelled: false,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn subscribe_objects_are_read_leniently_and_checked() {
        let tz = chrono_tz::Asia::Shanghai;
        let o = json!({"SubscribeID": "420100000050300000012026112700001", "Title": "人脸与设备状态",
            "SubscribeDetail": "12, 4", "ResourceURI": "42010400005030000001", "OperateType": 0,
            "ReceiveAddr": "http://10.0.0.1/VIID/SubscribeNotifications", "BeginTime": "20261127000000"});
        let Ok(Request::Subscribe(s)) = parse(&o, "city", "10.0.0.1", &tz) else { panic!("a subscription") };
        assert_eq!(s.categories, vec![12, 4]);
        let start = s.begin_at.expect("begin");
        assert!(s.wants(12, "any", "42010400005030000001", start));
        assert!(s.wants(CATEGORY_STATUS, "gate-7", "42010400005030000001", start + 1));
        assert!(!s.wants(13, "any", "42010400005030000001", start), "vehicles were not asked for");
        assert!(!s.wants(12, "any", "42010400005030000001", start - 1), "not before BeginTime");
        assert!(!s.wants(12, "any", "another-gateway", start), "another view library's resources");
        assert_eq!(
            parse(&json!({"SubscribeID": "x", "OperateType": "1"}), "city", "10.0.0.1", &tz),
            Ok(Request::Cancel("x".into()))
        );
        let field = |o: Value| parse(&o, "city", "h", &tz).err().map(|(f, _)| f);
        assert_eq!(field(json!({"SubscribeDetail": "12"})).as_deref(), Some("SubscribeID"));
        assert_eq!(field(json!({"SubscribeID": "x", "SubscribeDetail": "faces"})).as_deref(), Some("SubscribeDetail"));
        assert_eq!(
            field(json!({"SubscribeID": "x", "SubscribeDetail": "12", "ReceiveAddr": "file:///etc/passwd"})).as_deref(),
            Some("ReceiveAddr")
        );
        assert_eq!(
            field(json!({"SubscribeID": "x", "SubscribeDetail": "12", "ReceiveAddr": "http://h/", "EndTime": "soon"}))
                .as_deref(),
            Some("EndTime")
        );
        assert_eq!(category(EventKind::Access), None);
    }
}
