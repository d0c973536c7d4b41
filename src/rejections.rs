//! The rejections log (dead letters): every message a source refuses is counted
//! (`vigil_events_rejected_total{source,reason}`) and kept with its error and its raw bytes,
//! truncated: in a bounded in-memory ring at once, and in the bounded `rejections` table by a
//! writer task (batched; pruned to the newest `KEEP_STORED`), so an operator can see exactly
//! what a device sent, after a restart too (`GET /api/v1/rejections`). Shared by sources
//! (write) and the API (read), like metrics. Owns the `rejections` table.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use sqlx::Row;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{warn, Instrument};

use crate::clock::Millis;
use crate::db::Db;
use crate::telemetry::Metrics;

/// Most rejections kept in memory (the oldest go first).
pub const KEEP: usize = 2_000;
/// Most rejections kept in the table.
pub const KEEP_STORED: i64 = 20_000;
/// Rejections queued for the table; past it they stay in memory only (still counted).
const QUEUE: usize = 4_096;
/// Most raw bytes kept of one message.
pub const RAW_MAX: usize = 2_048;

#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub at: Millis,
    pub source: String,
    pub reason: String,
    pub peer: String,
    pub detail: String,
    /// The message as received, lossily decoded, at most `RAW_MAX` bytes of it.
    pub raw: String,
    pub raw_len: usize,
}

#[derive(Clone)]
pub struct Rejections {
    ring: Arc<Mutex<VecDeque<Rejection>>>,
    metrics: Metrics,
    store: Arc<OnceLock<(Db, mpsc::Sender<Rejection>)>>,
}

impl Rejections {
    pub fn new(metrics: Metrics) -> Self {
        Rejections { ring: Arc::default(), metrics, store: Arc::default() }
    }

    /// Starts keeping rejections in the database too.
    pub fn persist(&self, db: Db, cancel: CancellationToken, tracker: &TaskTracker) {
        let (tx, rx) = mpsc::channel(QUEUE);
        if self.store.set((db.clone(), tx)).is_ok() {
            tracker.spawn(writer(db, rx, cancel).instrument(tracing::info_span!("rejections")));
        }
    }

    /// Newest first, filtered: this process's recent ones from memory (the table is written
    /// up to a second later), then older ones from the table (earlier runs too).
    pub async fn list_stored(&self, source: Option<&str>, reason: Option<&str>, limit: usize) -> Vec<Rejection> {
        let mut out = self.list(source, reason, limit);
        let Some((db, _)) = self.store.get() else { return out };
        if out.len() >= limit {
            return out;
        }
        match query(db, source, reason, limit).await {
            Ok(rows) => {
                let oldest = out.last().map(|r| r.at);
                for r in rows {
                    if out.len() >= limit {
                        break;
                    }
                    let older = oldest.is_none_or(|at| r.at <= at);
                    if older && !out.contains(&r) {
                        out.push(r);
                    }
                }
            }
            Err(e) => warn!(error = %e, "Cannot read stored rejections; answering from memory."),
        }
        out
    }

    /// Counts and keeps one rejection.
    pub fn record(&self, at: Millis, source: &'static str, reason: &str, peer: String, detail: String, raw: &[u8]) {
        self.metrics.events_rejected.with_label_values(&[source, reason]).inc();
        let r = Rejection {
            at,
            source: source.to_owned(),
            reason: reason.to_owned(),
            peer,
            detail,
            raw: String::from_utf8_lossy(&raw[..raw.len().min(RAW_MAX)]).into_owned(),
            raw_len: raw.len(),
        };
        if let Some((_, tx)) = self.store.get() {
            let _ = tx.try_send(r.clone());
        }
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if ring.len() == KEEP {
            ring.pop_front();
        }
        ring.push_back(r);
    }

    /// The most recent rejections first, filtered.
    pub fn list(&self, source: Option<&str>, reason: Option<&str>, limit: usize) -> Vec<Rejection> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.iter()
            .rev()
            .filter(|r| source.is_none_or(|s| r.source == s) && reason.is_none_or(|x| r.reason == x))
            .take(limit)
            .cloned()
            .collect()
    }
}

async fn query(
    db: &Db,
    source: Option<&str>,
    reason: Option<&str>,
    limit: usize,
) -> Result<Vec<Rejection>, sqlx::Error> {
    let mut sql = String::from("SELECT at, source, reason, peer, detail, raw, raw_len FROM rejections WHERE 1 = 1");
    let mut n = 0;
    let mut next = || {
        n += 1;
        if db.backend == crate::db::Backend::Postgres {
            format!("${n}")
        } else {
            "?".to_owned()
        }
    };
    if source.is_some() {
        sql += &format!(" AND source = {}", next());
    }
    if reason.is_some() {
        sql += &format!(" AND reason = {}", next());
    }
    sql += &format!(" ORDER BY id DESC LIMIT {}", limit.clamp(1, 1000));
    let mut q = sqlx::query(&sql);
    if let Some(s) = source {
        q = q.bind(s.to_owned());
    }
    if let Some(r) = reason {
        q = q.bind(r.to_owned());
    }
    let rows = q.fetch_all(&db.pool).await?;
    rows.iter()
        .map(|r| {
            Ok(Rejection {
                at: r.try_get(0)?,
                source: r.try_get(1)?,
                reason: r.try_get(2)?,
                peer: r.try_get(3)?,
                detail: r.try_get(4)?,
                raw: r.try_get(5)?,
                raw_len: usize::try_from(r.try_get::<i64, _>(6)?).unwrap_or(0),
            })
        })
        .collect()
}

/// Writes queued rejections in batches (at most once a second) and prunes the table.
async fn writer(db: Db, mut rx: mpsc::Receiver<Rejection>, cancel: CancellationToken) {
    let mut batch: Vec<Rejection> = Vec::new();
    let mut since_prune = 0usize;
    loop {
        let first = tokio::select! {
            r = rx.recv() => r,
            _ = cancel.cancelled() => { rx.close(); rx.recv().await }
        };
        let Some(first) = first else { break };
        batch.push(first);
        // Gather what arrives within a second (a flood becomes one insert a second).
        let until = tokio::time::Instant::now() + Duration::from_secs(1);
        while batch.len() < 500 {
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(r)) => batch.push(r),
                _ => break,
            }
        }
        since_prune += batch.len();
        if let Err(e) = insert(&db, &batch).await {
            warn!(error = %e, count = batch.len(), "Cannot store rejections; they stay in memory.");
        }
        batch.clear();
        if since_prune >= 1_000 {
            since_prune = 0;
            let sql = "DELETE FROM rejections WHERE id <= (SELECT MAX(id) FROM rejections) - ";
            if let Err(e) = sqlx::query(&format!("{sql}{KEEP_STORED}")).execute(&db.pool).await {
                warn!(error = %e, "Cannot prune rejections.");
            }
        }
    }
}

async fn insert(db: &Db, batch: &[Rejection]) -> Result<(), sqlx::Error> {
    let mut tx = db.pool.begin().await?;
    let sql = if db.backend == crate::db::Backend::Postgres {
        "INSERT INTO rejections (at, source, reason, peer, detail, raw, raw_len) VALUES ($1, $2, $3, $4, $5, $6, $7)"
    } else {
        "INSERT INTO rejections (at, source, reason, peer, detail, raw, raw_len) VALUES (?, ?, ?, ?, ?, ?, ?)"
    };
    for r in batch {
        sqlx::query(sql)
            .bind(r.at)
            .bind(r.source.clone())
            .bind(r.reason.clone())
            .bind(r.peer.clone())
            .bind(r.detail.clone())
            .bind(r.raw.replace('\0', "\u{fffd}"))
            .bind(r.raw_len as i64)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_is_bounded_and_newest_first() {
        let r = Rejections::new(Metrics::new());
        for i in 0..(KEEP + 10) {
            r.record(
                i as i64,
                "gb28181",
                if i % 2 == 0 { "even" } else { "odd" },
                "p".into(),
                String::new(),
                &vec![b'x'; RAW_MAX + 5],
            );
        }
        let all = r.list(None, None, usize::MAX);
        assert_eq!(all.len(), KEEP);
        assert_eq!(all[0].at, (KEEP + 9) as i64);
        assert_eq!(all[0].raw.len(), RAW_MAX);
        assert_eq!(all[0].raw_len, RAW_MAX + 5);
        assert!(r.list(Some("gb28181"), Some("even"), 10).iter().all(|x| x.reason == "even"));
    }
}
