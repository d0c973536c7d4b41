//! The `deliveries` table: rows added with their events (same transaction), claimed in
//! event order per target, and marked delivered, to try again, or dead. SQL only; the
//! policy is the runner's.

use sqlx::Row as _;

use crate::clock::Millis;
use crate::db::Db;
use crate::event::{Event, EventKind};

use super::Routes;

/// Adds one delivery row per target that takes each new event (`seq`, `kind`), inside the
/// caller's transaction.
pub async fn add(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    backend: crate::db::Backend,
    new: &[(i64, EventKind)],
    routes: &Routes,
    now: Millis,
) -> Result<usize, sqlx::Error> {
    let rows: Vec<(&str, i64)> =
        new.iter().flat_map(|(seq, kind)| routes.targets(*kind).map(move |t| (t, *seq))).collect();
    for chunk in rows.chunks(5000) {
        let mut sql = String::from("INSERT INTO deliveries (target, event_seq, created_at) VALUES ");
        sql.push_str(&backend.values(chunk.len(), 3, 1));
        sql.push_str(" ON CONFLICT DO NOTHING");
        let mut q = sqlx::query(&sql);
        for (t, seq) in chunk {
            q = q.bind(*t).bind(*seq).bind(now);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(rows.len())
}

/// `add` for the SQLite event writer (`events::native`): the delivery-row statement prepared
/// once per batch inside the writer's rusqlite transaction, then stepped for each new event.
pub struct NativeDeliveries<'t>(rusqlite::CachedStatement<'t>);

impl<'t> NativeDeliveries<'t> {
    pub fn prepare(tx: &'t rusqlite::Transaction<'_>) -> rusqlite::Result<Self> {
        tx.prepare_cached("INSERT INTO deliveries (target, event_seq, created_at) VALUES (?1, ?2, ?3)").map(Self)
    }

    /// One delivery row per target that takes `kind`, for the event just inserted as `seq`.
    pub fn add(&mut self, seq: i64, kind: EventKind, routes: &Routes, now: Millis) -> rusqlite::Result<()> {
        for target in routes.targets(kind) {
            self.0.execute(rusqlite::params![target, seq, now])?;
        }
        Ok(())
    }
}

/// A delivery to make: the event, its upstream id, and how often it was tried.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub seq: i64,
    pub event: Event,
    pub object_id: Option<String>,
    pub attempts: i64,
}

/// How long a claim holds its rows: longer than any one call to an upstream takes.
pub const LEASE_MS: Millis = 120_000;

/// Leases the next due deliveries of `target` (oldest event first) to `owner` and reads
/// them. Rows leased by another claim are skipped: on PostgreSQL with `FOR UPDATE SKIP
/// LOCKED`, so instances sharing the database split the work rather than wait on each other.
pub async fn claim(db: &Db, target: &str, owner: &str, now: Millis, limit: i64) -> Result<Vec<Claimed>, sqlx::Error> {
    let lock = match db.backend {
        crate::db::Backend::Postgres => " FOR UPDATE SKIP LOCKED",
        crate::db::Backend::Sqlite => "",
    };
    let sql = format!(
        "UPDATE deliveries SET lease_until = $1, lease_owner = $2 WHERE target = $3 AND event_seq IN \
         (SELECT event_seq FROM deliveries WHERE target = $3 AND state = 'pending' AND next_attempt <= $4 \
         AND lease_until <= $4 ORDER BY event_seq LIMIT $5{lock}) RETURNING event_seq, attempts"
    );
    let leased = sqlx::query(&sql)
        .bind(now + LEASE_MS)
        .bind(owner)
        .bind(target)
        .bind(now)
        .bind(limit)
        .fetch_all(&db.pool)
        .await?;
    if leased.is_empty() {
        return Ok(Vec::new());
    }
    let mut attempts = std::collections::HashMap::with_capacity(leased.len());
    for r in &leased {
        let seq: i64 = r.try_get("event_seq")?;
        let a: i64 = r.try_get::<i64, _>("attempts").or_else(|_| r.try_get::<i32, _>("attempts").map(i64::from))?;
        attempts.insert(seq, a);
    }
    let mut seqs: Vec<i64> = attempts.keys().copied().collect();
    seqs.sort_unstable();
    let sql = format!("SELECT seq, body, object_id FROM events WHERE seq IN {} ORDER BY seq", db.backend.int_list(1));
    let rows = sqlx::query(&sql).bind(crate::db::json_ints(&seqs)).fetch_all(&db.pool).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let body: String = r.try_get("body")?;
        let seq: i64 = r.try_get("seq")?;
        match serde_json::from_str::<Event>(&body) {
            Ok(event) => out.push(Claimed {
                seq,
                event,
                object_id: r.try_get("object_id")?,
                attempts: attempts.get(&seq).copied().unwrap_or_default(),
            }),
            // A stored body that no longer reads is dead, not a stuck queue.
            Err(e) => mark_dead(db, target, seq, &Refusal::from(format!("stored event unreadable: {e}"))).await?,
        }
    }
    Ok(out)
}

/// Gives up the leases on `seqs` (the call failed as a whole): due again at once.
pub async fn release(db: &Db, target: &str, seqs: &[i64]) -> Result<(), sqlx::Error> {
    if seqs.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "UPDATE deliveries SET lease_until = 0 WHERE target = $1 AND state = 'pending' AND event_seq IN {}",
        db.backend.int_list(2)
    );
    sqlx::query(&sql).bind(target).bind(crate::db::json_ints(seqs)).execute(&db.pool).await?;
    Ok(())
}

/// Clears every lease of `target`: at start-up with SQLite, where this process is the only
/// one (leases left by a killed predecessor would otherwise hold rows back until they run out).
pub async fn release_all(db: &Db, target: &str) -> Result<u64, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE deliveries SET lease_until = 0 WHERE target = $1 AND state = 'pending' AND lease_until > 0",
    )
    .bind(target)
    .execute(&db.pool)
    .await?;
    Ok(r.rows_affected())
}

/// Puts dead deliveries of `target` back in the queue (an operator fixed the cause): those
/// in `seqs`, or all when `seqs` is empty. Answers how many.
pub async fn requeue(db: &Db, target: &str, seqs: &[i64], now: Millis) -> Result<u64, sqlx::Error> {
    let mut sql = String::from(
        "UPDATE deliveries SET state = 'pending', next_attempt = $2, lease_until = 0, attempts = 0 WHERE target = $1 AND state = 'dead'",
    );
    if !seqs.is_empty() {
        sql.push_str(&format!(" AND event_seq IN {}", db.backend.int_list(3)));
    }
    let mut q = sqlx::query(&sql).bind(target).bind(now);
    if !seqs.is_empty() {
        q = q.bind(crate::db::json_ints(seqs));
    }
    Ok(q.execute(&db.pool).await?.rows_affected())
}

pub async fn mark_delivered(db: &Db, target: &str, seqs: &[i64], now: Millis) -> Result<(), sqlx::Error> {
    if seqs.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "UPDATE deliveries SET state = 'delivered', delivered_at = $2, attempts = attempts + 1, last_error = NULL \
         WHERE target = $1 AND event_seq IN {}",
        db.backend.int_list(3)
    );
    sqlx::query(&sql).bind(target).bind(now).bind(crate::db::json_ints(seqs)).execute(&db.pool).await?;
    Ok(())
}

pub async fn mark_retry(db: &Db, target: &str, seq: i64, next: Millis, error: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE deliveries SET attempts = attempts + 1, next_attempt = $3, last_error = $4, lease_until = 0 WHERE target = $1 AND event_seq = $2",
    )
    .bind(target)
    .bind(seq)
    .bind(next)
    .bind(error)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// Parks a delivery as dead, with what was sent and what the upstream answered when the sink
/// knows them (one transaction: the row and its detail together).
pub async fn mark_dead(db: &Db, target: &str, seq: i64, refusal: &Refusal) -> Result<(), sqlx::Error> {
    let mut tx = db.pool.begin().await?;
    sqlx::query("UPDATE deliveries SET state = 'dead', attempts = attempts + 1, last_error = $3 WHERE target = $1 AND event_seq = $2")
        .bind(target)
        .bind(seq)
        .bind(&refusal.reason)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO relay_dead (target, event_seq, request, response, parked_at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (target, event_seq) DO UPDATE SET request = excluded.request, \
         response = excluded.response, parked_at = excluded.parked_at",
    )
    .bind(target)
    .bind(seq)
    .bind(refusal.request.as_deref())
    .bind(refusal.response.as_deref())
    .bind(crate::clock::now_ms())
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Why an upstream refused a record for good, and, when the sink has them, the request it
/// sent for that record (long strings such as inline pictures elided) and the upstream's
/// answer to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: String,
    pub request: Option<String>,
    pub response: Option<String>,
}

impl From<String> for Refusal {
    fn from(reason: String) -> Self {
        Refusal { reason, request: None, response: None }
    }
}

impl From<&str> for Refusal {
    fn from(reason: &str) -> Self {
        Refusal::from(reason.to_owned())
    }
}

/// A dead delivery with its detail, for the API (`reason` is the delivery row's last error).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Dead {
    pub seq: i64,
    pub event_id: String,
    pub object_id: Option<String>,
    pub reason: Option<String>,
    pub request: Option<String>,
    pub response: Option<String>,
    pub parked_at: Option<Millis>,
}

/// The dead deliveries of a target with what was sent and answered, newest first.
pub async fn dead_detail(db: &Db, target: &str, limit: i64) -> Result<Vec<Dead>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT d.event_seq AS seq, e.id AS event_id, e.object_id AS object_id, d.last_error AS reason, \
         r.request AS request, r.response AS response, r.parked_at AS parked_at FROM deliveries d \
         JOIN events e ON e.seq = d.event_seq \
         LEFT JOIN relay_dead r ON r.target = d.target AND r.event_seq = d.event_seq \
         WHERE d.target = $1 AND d.state = 'dead' ORDER BY d.event_seq DESC LIMIT $2",
    )
    .bind(target)
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(Dead {
                seq: r.try_get("seq")?,
                event_id: r.try_get("event_id")?,
                object_id: r.try_get("object_id")?,
                reason: r.try_get("reason")?,
                request: r.try_get("request")?,
                response: r.try_get("response")?,
                parked_at: r.try_get("parked_at")?,
            })
        })
        .collect()
}

/// Undelivered rows of the configured targets (the outbox's fill), each counted through the
/// `(target, state, …)` index so only pending rows are read, never the delivered history the
/// audit period keeps; a target's count stops at `cap` (the gate only asks whether the
/// backlog reached its bound).
pub async fn pending_total(db: &Db, targets: &[String], cap: u64) -> Result<u64, sqlx::Error> {
    let mut total = 0u64;
    for t in targets {
        total = total.saturating_add(pending_of(db, t, cap).await?);
    }
    Ok(total)
}

/// Undelivered rows of `target`, counted up to `cap`, through the index.
pub async fn pending_of(db: &Db, target: &str, cap: u64) -> Result<u64, sqlx::Error> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM (SELECT 1 FROM deliveries WHERE target = $1 AND state = 'pending' LIMIT $2) AS p",
    )
    .bind(target)
    .bind(i64::try_from(cap).unwrap_or(i64::MAX))
    .fetch_one(&db.pool)
    .await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// When the oldest undelivered row of `target` (the lowest `event_seq`) was added.
pub async fn oldest_pending_at(db: &Db, target: &str) -> Result<Option<Millis>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT created_at FROM deliveries WHERE target = $1 AND state = 'pending' ORDER BY event_seq LIMIT 1",
    )
    .bind(target)
    .fetch_optional(&db.pool)
    .await
}

/// A target's rows by state, and when its oldest pending row was added.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Counts {
    pub pending: i64,
    pub delivered: i64,
    pub dead: i64,
    pub oldest_pending_at: Option<Millis>,
}

pub async fn counts(db: &Db, target: &str) -> Result<Counts, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT state, COUNT(*) AS n, MIN(created_at) AS oldest FROM deliveries WHERE target = $1 GROUP BY state",
    )
    .bind(target)
    .fetch_all(&db.pool)
    .await?;
    let mut c = Counts::default();
    for r in rows {
        let state: String = r.try_get("state")?;
        let n: i64 = r.try_get("n")?;
        match state.as_str() {
            "pending" => {
                c.pending = n;
                c.oldest_pending_at = r.try_get("oldest")?;
            }
            "delivered" => c.delivered = n,
            _ => c.dead = n,
        }
    }
    Ok(c)
}

/// Removes delivered rows delivered before `before` (the audit period is over).
pub async fn prune_delivered(db: &Db, before: Millis) -> Result<u64, sqlx::Error> {
    let r = sqlx::query("DELETE FROM deliveries WHERE state = 'delivered' AND delivered_at < $1")
        .bind(before)
        .execute(&db.pool)
        .await?;
    // The detail of records that died once and were delivered after a requeue goes with them.
    sqlx::query(
        "DELETE FROM relay_dead WHERE NOT EXISTS (SELECT 1 FROM deliveries d \
         WHERE d.target = relay_dead.target AND d.event_seq = relay_dead.event_seq AND d.state = 'dead')",
    )
    .execute(&db.pool)
    .await?;
    Ok(r.rows_affected())
}
