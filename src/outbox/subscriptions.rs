//! GA/T 1400 subscriptions (视图库级联), the stored side: an upper view library `POST`s
//! `/VIID/Subscribes` to vigil's view-library endpoint (which reads it with
//! `protocol::gat1400::subscriptions`), and vigil then pushes what it asked for as
//! `SubscribeNotificationListObject`s to its `ReceiveAddr` (the subscription-mode GA/T 1400
//! sink). This module owns the `subscriptions` table, the upstreams that may subscribe
//! (`Upper`) and the lapse alarm (`lapsed`): both the endpoint and the sink meet here.

use sqlx::Row as _;

use crate::clock::Millis;
use crate::db::Db;
pub use crate::protocol::gat1400::subscriptions::{category, Subscription, CATEGORY_STATUS};

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
