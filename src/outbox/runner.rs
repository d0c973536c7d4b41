//! The runner of one upstream: claims its due deliveries in event order, hands them to the
//! sink, and marks each by its own outcome: delivered; to try again later (exponential backoff
//! with jitter, forever: a transient failure never drops a record); or dead (refused for good,
//! the reason kept, the rest flows on). A failure of the whole call (upstream down, refused,
//! timing out) leaves the rows as they are and waits with backoff. Status for the API is
//! published in `TargetStatus`.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use super::failure::{FailureKind, SinkError};
use super::store::{self, Claimed};
use crate::backoff::backoff;
use crate::clock::{now_ms, Millis};
use crate::db::Db;

/// What became of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
    Retry(String),
    /// Refused for good: parked as dead with the reason (and the request and answer).
    Rejected(store::Refusal),
}

/// One upstream protocol.
pub trait Sink: Send + 'static {
    /// Records per claim (one call of `deliver`).
    fn batch_size(&self) -> i64 {
        BATCH
    }
    /// Delivers a batch; answers per record, in order, or fails as a whole.
    fn deliver(&mut self, batch: &[Claimed]) -> impl Future<Output = Result<Vec<Delivery>, SinkError>> + Send;
    /// Called between batches (registration, keepalives). `Ok(true)` when it spoke with the
    /// upstream successfully.
    fn tick(&mut self) -> impl Future<Output = Result<bool, SinkError>> + Send;
}

/// How a target is doing, for `GET /api/v1/relay/targets` and the dashboard.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TargetStatus {
    pub name: String,
    pub protocol: String,
    /// The last call to the upstream succeeded.
    pub connected: bool,
    pub last_error: Option<String>,
    pub last_error_at: Option<Millis>,
    pub last_delivery_at: Option<Millis>,
    /// Records delivered, retried, parked as dead since vigil started.
    pub delivered: u64,
    pub retried: u64,
    pub dead: u64,
    /// A condition an operator must act on while it lasts (an upper view library's
    /// subscription cancelled or expired with records waiting).
    pub alarm: Option<String>,
    /// Upstreams that hold a session with vigil (GB/T 28181 cascade: the registration).
    pub session: Option<SessionStatus>,
}

/// A session with an upstream: its state word (`registering`, `registered`, `failing`), until
/// when it holds, the last keepalive the upstream answered, the next attempt after a failure.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SessionStatus {
    pub state: &'static str,
    pub until: Option<Millis>,
    pub last_keepalive_at: Option<Millis>,
    pub next_attempt_at: Option<Millis>,
    /// Failures in a row.
    pub failures: u32,
    /// What the upstream sees of vigil (GB/T 28181 cascade).
    pub view: Option<UpperView>,
}

/// What a GB/T 28181 upper platform sees: the channels in its scope and how many are ON now,
/// how many it was last told are ON (`None` without a subscription), until when it
/// subscribes, and the plays it has open.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct UpperView {
    pub channels: usize,
    pub on: usize,
    pub told_on: Option<usize>,
    pub subscribed_until: Option<Millis>,
    pub plays: usize,
}

/// Records per claim, unless the sink says otherwise.
const BATCH: i64 = 64;
/// The longest a runner sleeps before looking again without being woken.
const IDLE: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A record to try again waits at most this long.
const RECORD_BACKOFF_MAX: Duration = Duration::from_secs(300);

/// What a runner needs beside its sink.
pub struct Context {
    pub db: Db,
    pub metrics: crate::telemetry::Metrics,
    /// Woken after a commit that added delivery rows.
    pub added: Arc<Notify>,
    /// Delivered rows older than this are pruned.
    pub keep_delivered: Duration,
}

/// How often backlog gauges are refreshed and old delivered rows pruned.
const HOUSEKEEPING: Duration = Duration::from_secs(5);
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Marks a batch by its outcomes; answers (delivered, retried, dead) counts.
async fn mark(db: &Db, name: &str, batch: &[Claimed], outcomes: &[Delivery]) -> (u64, u64, u64) {
    let now = now_ms();
    let mut delivered = Vec::new();
    let (mut retried, mut dead) = (0u64, 0u64);
    for (c, o) in batch.iter().zip(outcomes.iter()) {
        let r = match o {
            Delivery::Delivered => {
                delivered.push(c.seq);
                Ok(())
            }
            Delivery::Retry(why) => {
                retried += 1;
                let attempts = u32::try_from(c.attempts + 1).unwrap_or(u32::MAX);
                let next = now + backoff(attempts, BACKOFF_MIN, RECORD_BACKOFF_MAX).as_millis() as Millis;
                store::mark_retry(db, name, c.seq, next, why).await
            }
            Delivery::Rejected(refusal) => {
                dead += 1;
                warn!(target = %name, seq = c.seq, event = %c.event.id, reason = %refusal.reason, "Upstream refused a record for good; parked as dead.");
                store::mark_dead(db, name, c.seq, refusal).await
            }
        };
        if let Err(e) = r {
            warn!(target = %name, error = %e, "Cannot mark a delivery; it will be sent again after its lease.");
        }
    }
    if let Err(e) = store::mark_delivered(db, name, &delivered, now).await {
        warn!(target = %name, error = %e, "Cannot mark deliveries; they will be sent again (the upstream drops duplicates by id).");
    }
    (delivered.len() as u64, retried, dead)
}

/// Runs one upstream until `cancel`. A window of two batches: while one is with the
/// upstream, the next is claimed (leased, so never the same rows) and the one before is
/// marked, so the database and the upstream work at once; one call at a time goes to the
/// upstream, so it receives records in event order.
pub async fn run<S: Sink>(ctx: Context, mut sink: S, status: Arc<Mutex<TargetStatus>>, cancel: CancellationToken) {
    let Context { db, metrics, added, keep_delivered } = ctx;
    let name = status.lock().unwrap_or_else(|p| p.into_inner()).name.clone();
    // This process's name on its leases.
    let owner = format!("{}-{}", std::process::id(), uuid::Uuid::now_v7().simple());
    if db.backend == crate::db::Backend::Sqlite {
        match store::release_all(&db, &name).await {
            Ok(n) if n > 0 => info!(target = %name, rows = n, "Leases left by the previous run released."),
            Ok(_) => {}
            Err(e) => {
                warn!(target = %name, error = %e, "Cannot release old leases; those rows wait for them to run out.")
            }
        }
    }
    let mut next_housekeeping = tokio::time::Instant::now();
    let mut next_prune = tokio::time::Instant::now();
    let set = |f: &dyn Fn(&mut TargetStatus)| f(&mut status.lock().unwrap_or_else(|p| p.into_inner()));
    let mut failures = 0u32;
    let mut ahead: Vec<Claimed> = Vec::new();
    let mut marking: Option<tokio::task::JoinHandle<()>> = None;
    let claim = |db: Db, name: String, owner: String, limit: i64| async move {
        match store::claim(&db, &name, &owner, now_ms(), limit).await {
            Ok(b) => b,
            Err(e) => {
                warn!(target = %name, error = %e, "Cannot read the outbox; trying again.");
                Vec::new()
            }
        }
    };
    loop {
        if cancel.is_cancelled() {
            break;
        }
        let now_i = tokio::time::Instant::now();
        if now_i >= next_housekeeping {
            next_housekeeping = now_i + HOUSEKEEPING;
            // Pending rows only, through the index: this runs in the delivery loop, and the
            // delivered history of the audit period may be millions of rows.
            if let (Ok(pending), Ok(oldest)) =
                (store::pending_of(&db, &name, u64::MAX).await, store::oldest_pending_at(&db, &name).await)
            {
                metrics.relay_backlog.with_label_values(&[&name]).set(i64::try_from(pending).unwrap_or(i64::MAX));
                let age = oldest.map(|t| (now_ms() - t).max(0) / 1000).unwrap_or(0);
                metrics.relay_oldest.with_label_values(&[&name]).set(age);
            }
        }
        if now_i >= next_prune {
            next_prune = now_i + PRUNE_EVERY;
            let before = now_ms() - keep_delivered.as_millis() as Millis;
            match store::prune_delivered(&db, before).await {
                Ok(n) if n > 0 => info!(target = %name, rows = n, "Pruned delivered rows past the audit period."),
                Ok(_) => {}
                Err(e) => warn!(target = %name, error = %e, "Cannot prune delivered rows."),
            }
        }
        match sink.tick().await {
            Ok(true) => set(&|s| s.connected = true),
            Ok(false) => {}
            Err(e) => set(&|s| {
                s.connected = false;
                s.last_error = Some(e.to_string());
                s.last_error_at = Some(now_ms());
            }),
        }
        let limit = sink.batch_size();
        let batch = if ahead.is_empty() {
            claim(db.clone(), name.clone(), owner.clone(), limit).await
        } else {
            std::mem::take(&mut ahead)
        };
        if batch.is_empty() {
            if let Some(m) = marking.take() {
                let _ = m.await;
            }
            let woken = added.notified();
            tokio::select! {
                _ = woken => {}
                _ = tokio::time::sleep(IDLE) => {}
                _ = cancel.cancelled() => break,
            }
            continue;
        }
        // The upstream takes this batch while the next is claimed.
        let (result, upcoming) =
            tokio::join!(sink.deliver(&batch), claim(db.clone(), name.clone(), owner.clone(), limit));
        ahead = upcoming;
        let wait = match result {
            Ok(outcomes) => {
                let n = outcomes.iter().filter(|o| **o == Delivery::Delivered).count() as u64;
                let retried = outcomes.iter().filter(|o| matches!(o, Delivery::Retry(_))).count() as u64;
                let dead = outcomes.iter().filter(|o| matches!(o, Delivery::Rejected(_))).count() as u64;
                // The previous batch's marks finish before this one's start (one writer's
                // worth of updates at a time); this one's run while the next is delivered.
                if let Some(m) = marking.take() {
                    let _ = m.await;
                }
                let (db2, name2) = (db.clone(), name.clone());
                marking = Some(tokio::spawn(async move {
                    mark(&db2, &name2, &batch, &outcomes).await;
                }));
                metrics.relay_records.with_label_values(&[&name, "delivered"]).inc_by(n);
                metrics.relay_records.with_label_values(&[&name, "retry"]).inc_by(retried);
                metrics.relay_records.with_label_values(&[&name, "dead"]).inc_by(dead);
                let was_down = failures > 0;
                failures = 0;
                let now = now_ms();
                metrics.relay_alarm.with_label_values(&[&name]).set(0);
                set(&|s| {
                    s.connected = true;
                    s.alarm = None;
                    s.delivered += n;
                    s.retried += retried;
                    s.dead += dead;
                    if n > 0 {
                        s.last_delivery_at = Some(now);
                    }
                });
                if was_down {
                    info!(target = %name, "Upstream reachable again; delivering the backlog.");
                }
                Duration::ZERO
            }
            Err(e) => {
                // Nothing of this batch or the next was sent: both are due again as they
                // were, in order, after the wait.
                let mut seqs: Vec<i64> = batch.iter().map(|c| c.seq).collect();
                seqs.extend(ahead.drain(..).map(|c| c.seq));
                if let Err(e) = store::release(&db, &name, &seqs).await {
                    warn!(target = %name, error = %e, "Cannot release leases; those rows wait for them to run out.");
                }
                failures = failures.saturating_add(1);
                let kind = e.kind();
                metrics.relay_failures.with_label_values(&[&name, kind.label()]).inc();
                let alarm = kind.is_alarm();
                metrics.relay_alarm.with_label_values(&[&name]).set(i64::from(alarm));
                let wait = backoff(failures, BACKOFF_MIN, BACKOFF_MAX);
                if failures == 1 {
                    warn!(target = %name, error = %e, retry_in_ms = wait.as_millis() as u64, "Upstream failed; records stay in the outbox.");
                }
                if alarm && failures == 1 {
                    warn!(target = %name, error = %e, "ALARM: the upper view library no longer subscribes; records wait for it.");
                }
                set(&|s| {
                    s.connected = false;
                    s.alarm = alarm.then(|| e.to_string());
                    s.last_error = Some(e.to_string());
                    s.last_error_at = Some(now_ms());
                });
                wait
            }
        };
        if !wait.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = cancel.cancelled() => break,
            }
        }
    }
    if let Some(m) = marking.take() {
        let _ = m.await;
    }
    // Whatever was claimed ahead and not sent is due again at once after a restart.
    let seqs: Vec<i64> = ahead.iter().map(|c| c.seq).collect();
    let _ = store::release(&db, &name, &seqs).await;
}
