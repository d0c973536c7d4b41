//! The `events` table: batch insert (bound multi-row `INSERT`s, duplicates skipped by
//! `dedup_key`), and reads for the API. The whole event is kept as JSON in `body`; the columns beside it
//! are what queries filter on.

use sqlx::Row as _;

use super::Error;
use crate::clock::Millis;
use crate::db::{Backend, Db};
use crate::event::Event;

/// What `GET /api/v1/events` filters on. `orgs` is the org and its subtree, resolved by the
/// caller; empty means any org.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub kind: Option<String>,
    pub device: Option<String>,
    pub orgs: Option<Vec<String>>,
    pub since: Option<Millis>,
    pub until: Option<Millis>,
    /// Continue after this `(occurred_at, seq)` (the previous page's cursor).
    pub before: Option<(Millis, i64)>,
    pub limit: usize,
}

/// An event ready for the writer: the row's columns, with the body already serialized by
/// the submitter (so the one writer only binds).
pub struct Row {
    pub event: Event,
    pub body: String,
    /// The 48-digit GA/T 1400 id upstream knows it by (faces and vehicles).
    pub object_id: Option<String>,
}

impl Row {
    pub fn new(event: Event, object_id: Option<String>) -> Row {
        let body = serde_json::to_string(&event).unwrap_or_default();
        Row { event, body, object_id }
    }
}

/// Columns per row, and rows per statement (SQLite allows 32,766 parameters).
const COLUMNS: usize = 10;
const ROWS_PER_STATEMENT: usize = 1000;

/// Inserts a batch in one transaction (multi-row `INSERT` with bound values, duplicates
/// skipped by `dedup_key`) with the delivery rows of the new events to the targets in
/// `routes`; returns the dedup keys that were new.
pub async fn insert(
    db: &Db,
    rows: &[&Row],
    routes: &crate::outbox::Routes,
    now: Millis,
) -> Result<std::collections::HashSet<String>, sqlx::Error> {
    let mut new = std::collections::HashSet::with_capacity(rows.len());
    let mut routed: Vec<(i64, crate::event::EventKind)> = Vec::new();
    let mut tx = db.pool.begin().await?;
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut sql = String::from(
            "INSERT INTO events (id, dedup_key, kind, source, device_id, org_id, occurred_at, received_at, body, object_id) VALUES ",
        );
        sql.push_str(&db.backend.values(chunk.len(), COLUMNS, 1));
        sql.push_str(" ON CONFLICT DO NOTHING RETURNING seq, dedup_key, kind");
        let mut q = sqlx::query(&sql);
        for r in chunk {
            let e = &r.event;
            q = q
                .bind(e.id.as_str())
                .bind(e.dedup_key.as_str())
                .bind(e.kind().as_str())
                .bind(e.source.as_str())
                .bind(e.device_id.as_str())
                .bind(e.org_id.as_deref())
                .bind(e.occurred_at)
                .bind(e.received_at)
                .bind(r.body.as_str())
                .bind(r.object_id.as_deref());
        }
        for r in q.fetch_all(&mut *tx).await? {
            let seq: i64 = r.try_get("seq")?;
            let kind: String = r.try_get("kind")?;
            if let Some(k) = crate::event::EventKind::parse(&kind) {
                routed.push((seq, k));
            }
            new.insert(r.try_get("dedup_key")?);
        }
    }
    if !routes.is_empty() {
        crate::outbox::store::add(&mut tx, db.backend, &routed, routes, now).await?;
    }
    tx.commit().await?;
    Ok(new)
}

fn decode(body: &str) -> Result<Event, Error> {
    serde_json::from_str(body)
        .map_err(|e| Error::Corrupt { id: body.chars().take(60).collect(), reason: e.to_string() })
}

/// Events matching `f`, newest first, each with its `seq` (for the next page's cursor).
pub async fn list(db: &Db, f: &Filter) -> Result<Vec<(i64, Event)>, Error> {
    let mut sql = String::from("SELECT seq, body FROM events WHERE 1 = 1");
    let mut n = 0;
    let mut next = || {
        n += 1;
        format!("${n}")
    };
    if f.kind.is_some() {
        sql += &format!(" AND kind = {}", next());
    }
    if f.device.is_some() {
        sql += &format!(" AND device_id = {}", next());
    }
    if f.orgs.is_some() {
        let p = next();
        sql += &match db.backend {
            Backend::Sqlite => format!(" AND org_id IN (SELECT value FROM json_each({p}))"),
            Backend::Postgres => format!(" AND org_id IN (SELECT json_array_elements_text({p}::json))"),
        };
    }
    if f.since.is_some() {
        sql += &format!(" AND occurred_at >= {}", next());
    }
    if f.until.is_some() {
        sql += &format!(" AND occurred_at < {}", next());
    }
    if f.before.is_some() {
        let (a, b, c) = (next(), next(), next());
        sql += &format!(" AND (occurred_at < {a} OR (occurred_at = {b} AND seq < {c}))");
    }
    // The API asks for one more than a page (1,000 at most) to know whether another follows.
    sql += &format!(" ORDER BY occurred_at DESC, seq DESC LIMIT {}", f.limit.clamp(1, 1001));
    let mut q = sqlx::query(&sql);
    if let Some(k) = &f.kind {
        q = q.bind(k.clone());
    }
    if let Some(d) = &f.device {
        q = q.bind(d.clone());
    }
    if let Some(o) = &f.orgs {
        q = q.bind(serde_json::to_string(o).unwrap_or_else(|_| "[]".into()));
    }
    if let Some(s) = f.since {
        q = q.bind(s);
    }
    if let Some(u) = f.until {
        q = q.bind(u);
    }
    if let Some((at, seq)) = f.before {
        q = q.bind(at).bind(at).bind(seq);
    }
    let rows = q.fetch_all(&db.pool).await?;
    rows.iter()
        .map(|r| {
            let seq: i64 = r.try_get(0)?;
            let body: String = r.try_get(1)?;
            Ok((seq, decode(&body)?))
        })
        .collect()
}

pub async fn get(db: &Db, id: &str) -> Result<Option<Event>, Error> {
    let body: Option<String> =
        sqlx::query_scalar("SELECT body FROM events WHERE id = $1").bind(id).fetch_optional(&db.pool).await?;
    body.as_deref().map(decode).transpose()
}
