//! GA/T 1400 subscriptions (视图库级联): an upper view library `POST`s `/VIID/Subscribes` to
//! vigil's view-library endpoint, and vigil then pushes what it asked for as
//! `SubscribeNotificationListObject`s to its `ReceiveAddr` (the subscription-mode GA/T 1400
//! sink). This module owns the `subscriptions` table, reads `SubscribeObject`s leniently, and
//! says which subscription wants which record (`SubscribeDetail` category codes: 4 device
//! status, 11 person, 12 face, 13 motor vehicle, 14 non-motor vehicle).

use serde_json::Value;
use sqlx::Row as _;

use crate::clock::Millis;
use crate::db::Db;
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

/// A subscription-mode upstream, as the view-library endpoint knows it: which upstream, the
/// upper view library's id (its `User-Identify`), the host of its configured URL (the only
/// host its requests may come from and notifications may go to) and the upstream's password
/// (the upper's requests carry a digest of it).
#[derive(Debug, Clone, PartialEq)]
pub struct Upper {
    pub target: String,
    pub server_id: String,
    pub host: String,
    pub password: String,
}

impl Upper {
    /// From a `[[upstreams]]` entry in subscription mode.
    pub fn of(u: &crate::config::Upstream) -> Upper {
        let host = url::Url::parse(&u.url).ok().and_then(|x| x.host_str().map(str::to_owned)).unwrap_or_default();
        Upper { target: u.name.clone(), server_id: u.server_id.clone(), host, password: u.password.clone() }
    }
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
        use crate::profiles::time::{read, Format, Zone};
        read(&Value::String(t), &Format::Pattern("%Y%m%d%H%M%S".into()), &Zone::Named(*tz))
            .map(Some)
            .map_err(|_| bad(key, "expected yyyyMMddHHmmss"))
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

/// Adds or replaces a subscription.
pub async fn save(db: &Db, s: &Subscription, now: Millis) -> Result<(), sqlx::Error> {
    let categories = s.categories.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
    sqlx::query(
        "INSERT INTO subscriptions (id, target, title, categories, resource_uri, receive_addr, begin_at, end_at, cancelled, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, $9) ON CONFLICT (id) DO UPDATE SET target = excluded.target, \
         title = excluded.title, categories = excluded.categories, resource_uri = excluded.resource_uri, \
         receive_addr = excluded.receive_addr, begin_at = excluded.begin_at, end_at = excluded.end_at, cancelled = 0",
    )
    .bind(&s.id)
    .bind(&s.target)
    .bind(&s.title)
    .bind(categories)
    .bind(&s.resource_uri)
    .bind(&s.receive_addr)
    .bind(s.begin_at)
    .bind(s.end_at)
    .bind(now)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// Cancels a subscription of `target`; answers whether there was one.
pub async fn cancel(db: &Db, target: &str, id: &str) -> Result<bool, sqlx::Error> {
    let r = sqlx::query("UPDATE subscriptions SET cancelled = 1 WHERE id = $1 AND target = $2")
        .bind(id)
        .bind(target)
        .execute(&db.pool)
        .await?;
    Ok(r.rows_affected() > 0)
}

/// How a relay failure begins when the upper's subscription was cancelled or expired with
/// records waiting: the relay runner raises an alarm on it.
pub const LAPSED: &str = "subscription lapsed";

/// How the last subscription of an upstream ended, when none is in force.
#[derive(Debug, Clone, PartialEq)]
pub struct Lapse {
    pub id: String,
    /// `cancelled` or `expired`.
    pub why: &'static str,
}

/// The most recent subscription of `target`, if it was cancelled or has expired by `now`
/// (`None`: there never was one, or the latest is still to begin or in force).
pub async fn lapsed(db: &Db, target: &str, now: Millis) -> Result<Option<Lapse>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT id, CAST(cancelled AS BIGINT) AS cancelled, end_at FROM subscriptions WHERE target = $1 \
         ORDER BY created_at DESC, id DESC LIMIT 1",
    )
    .bind(target)
    .fetch_optional(&db.pool)
    .await?;
    let Some(r) = row else { return Ok(None) };
    let cancelled: i64 = r.try_get("cancelled")?;
    let end_at: Option<Millis> = r.try_get("end_at")?;
    let why = if cancelled != 0 {
        "cancelled"
    } else if end_at.is_some_and(|t| t <= now) {
        "expired"
    } else {
        return Ok(None);
    };
    Ok(Some(Lapse { id: r.try_get("id")?, why }))
}

/// The subscriptions of `target` not cancelled (whether in force now is `wants`' to say).
pub async fn live(db: &Db, target: &str) -> Result<Vec<Subscription>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, target, title, categories, resource_uri, receive_addr, begin_at, end_at FROM subscriptions \
         WHERE target = $1 AND cancelled = 0 ORDER BY created_at",
    )
    .bind(target)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            let categories: String = r.try_get("categories")?;
            Ok(Subscription {
                id: r.try_get("id")?,
                target: r.try_get("target")?,
                title: r.try_get("title")?,
                categories: categories.split(',').filter_map(|c| c.parse().ok()).collect(),
                resource_uri: r.try_get("resource_uri")?,
                receive_addr: r.try_get("receive_addr")?,
                begin_at: r.try_get("begin_at")?,
                end_at: r.try_get("end_at")?,
                cancelled: false,
            })
        })
        .collect()
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
