//! The `events` table: batch insert (one JSON parameter, duplicates skipped by `dedup_key`),
//! and reads for the API. The whole event is kept as JSON in `body`; the columns beside it
//! are what queries filter on.

use sqlx::Row;

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

/// Inserts a batch in one transaction; returns the dedup keys that were new.
pub async fn insert(db: &Db, events: &[&Event]) -> Result<std::collections::HashSet<String>, sqlx::Error> {
    let rows: Vec<serde_json::Value> = events
        .iter()
        .map(|e| {
            serde_json::json!([
                e.id,
                e.dedup_key,
                e.kind().as_str(),
                e.source,
                e.device_id,
                e.org_id,
                e.occurred_at,
                e.received_at,
                serde_json::to_string(e).unwrap_or_default(),
            ])
        })
        .collect();
    let rows = serde_json::Value::Array(rows).to_string();
    let (values, from) = match db.backend {
        Backend::Sqlite => (
            "value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, value ->> 6, value ->> 7, value ->> 8",
            "json_each($1) WHERE true",
        ),
        Backend::Postgres => (
            "e ->> 0, e ->> 1, e ->> 2, e ->> 3, e ->> 4, e ->> 5, (e ->> 6)::bigint, (e ->> 7)::bigint, e ->> 8",
            "json_array_elements($1::json) WITH ORDINALITY AS t(e, n) ORDER BY n",
        ),
    };
    let sql = format!(
        "INSERT INTO events (id, dedup_key, kind, source, device_id, org_id, occurred_at, received_at, body) \
         SELECT {values} FROM {from} ON CONFLICT DO NOTHING RETURNING dedup_key"
    );
    let mut tx = db.pool.begin().await?;
    let new: Vec<String> = sqlx::query_scalar(&sql).bind(rows).fetch_all(&mut *tx).await?;
    tx.commit().await?;
    Ok(new.into_iter().collect())
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
