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

/// A delivery to make: the event, its upstream id, and how often it was tried.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub seq: i64,
    pub event: Event,
    pub object_id: Option<String>,
    pub attempts: i64,
}

/// The next due deliveries of `target`, oldest event first.
pub async fn claim(db: &Db, target: &str, now: Millis, limit: i64) -> Result<Vec<Claimed>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT d.event_seq AS seq, d.attempts AS attempts, e.body AS body, e.object_id AS object_id \
         FROM deliveries d JOIN events e ON e.seq = d.event_seq \
         WHERE d.target = $1 AND d.state = 'pending' AND d.next_attempt <= $2 ORDER BY d.event_seq LIMIT $3",
    )
    .bind(target)
    .bind(now)
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let body: String = r.try_get("body")?;
        let seq: i64 = r.try_get("seq")?;
        let attempts: i64 =
            r.try_get::<i64, _>("attempts").or_else(|_| r.try_get::<i32, _>("attempts").map(i64::from))?;
        match serde_json::from_str::<Event>(&body) {
            Ok(event) => out.push(Claimed { seq, event, object_id: r.try_get("object_id")?, attempts }),
            // A stored body that no longer reads is dead, not a stuck queue.
            Err(e) => mark_dead(db, target, seq, &format!("stored event unreadable: {e}")).await?,
        }
    }
    Ok(out)
}

pub async fn mark_delivered(db: &Db, target: &str, seqs: &[i64], now: Millis) -> Result<(), sqlx::Error> {
    if seqs.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = (0..seqs.len()).map(|i| format!("${}", i + 3)).collect();
    let sql = format!(
        "UPDATE deliveries SET state = 'delivered', delivered_at = $2, attempts = attempts + 1, last_error = NULL \
         WHERE target = $1 AND event_seq IN ({})",
        list.join(",")
    );
    let mut q = sqlx::query(&sql).bind(target).bind(now);
    for s in seqs {
        q = q.bind(*s);
    }
    q.execute(&db.pool).await?;
    Ok(())
}

pub async fn mark_retry(db: &Db, target: &str, seq: i64, next: Millis, error: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE deliveries SET attempts = attempts + 1, next_attempt = $3, last_error = $4 WHERE target = $1 AND event_seq = $2",
    )
    .bind(target)
    .bind(seq)
    .bind(next)
    .bind(error)
    .execute(&db.pool)
    .await?;
    Ok(())
}

pub async fn mark_dead(db: &Db, target: &str, seq: i64, error: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE deliveries SET state = 'dead', attempts = attempts + 1, last_error = $3 WHERE target = $1 AND event_seq = $2")
        .bind(target)
        .bind(seq)
        .bind(error)
        .execute(&db.pool)
        .await?;
    Ok(())
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

/// The dead deliveries of a target, newest first: (seq, object id, error).
pub async fn dead(
    db: &Db,
    target: &str,
    limit: i64,
) -> Result<Vec<(i64, Option<String>, Option<String>)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT d.event_seq AS seq, e.object_id AS object_id, d.last_error AS last_error FROM deliveries d \
         JOIN events e ON e.seq = d.event_seq WHERE d.target = $1 AND d.state = 'dead' ORDER BY d.event_seq DESC LIMIT $2",
    )
    .bind(target)
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    rows.into_iter().map(|r| Ok((r.try_get("seq")?, r.try_get("object_id")?, r.try_get("last_error")?))).collect()
}

/// Removes delivered rows delivered before `before` (the audit period is over).
pub async fn prune_delivered(db: &Db, before: Millis) -> Result<u64, sqlx::Error> {
    let r = sqlx::query("DELETE FROM deliveries WHERE state = 'delivered' AND delivered_at < $1")
        .bind(before)
        .execute(&db.pool)
        .await?;
    Ok(r.rows_affected())
}
