//! The event log: one writer task that commits normalized `Event`s in batches (group commit:
//! whatever is queued when a transaction starts, up to `BATCH`), and the reads behind
//! `GET /api/v1/events`. `submit` resolves only once the event is committed, so a source
//! acknowledges its device (SIP 200 to an alarm, MQTT PUBACK) only for what is stored. A
//! record seen twice (same `dedup_key`) is stored once and reported as a duplicate. The
//! relay's outbox (delivery rows per upstream) is written in the same transaction when it
//! lands. Between batches the writer folds (SQLite: `native`) the record keys and the
//! per-device index of what it committed. Owns the `events` table and, on SQLite,
//! `event_keys`, `event_devices` and `event_folds`.

mod keys;
mod native;
pub mod reports;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn, Instrument};

use crate::db::Db;
use crate::event::Event;
use crate::telemetry::Metrics;

pub use store::Filter;

/// Events queued for the writer; a full queue slows the sources that submit.
const QUEUE: usize = 32_768;
/// Most events in one transaction.
const BATCH: usize = 16_384;
/// A fold (SQLite: the record keys and per-device index of the events committed since the
/// last one; `native`) runs once this many events wait for it, or `FOLD_EVERY` after the
/// oldest of them was committed. Larger folds touch each device's leaves once for more
/// events; the device view scans what waits, so it stays a fold's worth.
const FOLD_ROWS: usize = 32_768;
const FOLD_EVERY: Duration = Duration::from_secs(1);
/// Attempts at one batch before its submitters are told the store is unavailable (they
/// answer their devices with an error, and the devices send again).
const ATTEMPTS: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("event store unavailable: {0}")]
    Store(#[from] sqlx::Error),
    #[error("event store unavailable: {0}")]
    Native(#[from] rusqlite::Error),
    #[error("event writer failed: {0}")]
    Writer(String),
    #[error("event writer has stopped")]
    Closed,
    #[error("stored event {id} cannot be read: {reason}")]
    Corrupt { id: String, reason: String },
}

impl Error {
    pub fn kind(&self) -> crate::error::ErrorKind {
        match self {
            Error::Store(e) => crate::db::sqlx_kind(e),
            Error::Native(_) => crate::error::ErrorKind::Unavailable,
            Error::Writer(_) => crate::error::ErrorKind::Internal,
            Error::Closed => crate::error::ErrorKind::Unavailable,
            Error::Corrupt { .. } => crate::error::ErrorKind::Internal,
        }
    }
}

/// What became of a submitted event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Committed now.
    New,
    /// The same record (`dedup_key`) was committed before; nothing was written.
    Duplicate,
}

/// Rows committed together (one event from a source, a whole batch from a link).
struct Submit {
    rows: Vec<store::Row>,
    done: oneshot::Sender<Result<Vec<Stored>, Error>>,
}

/// Where stored events go next: the outbox routes, how events are named upstream, and the
/// signal runners wait on.
#[derive(Clone)]
pub struct Relay {
    pub routes: Arc<crate::outbox::Routes>,
    pub gateway_id: Arc<str>,
    pub tz: chrono_tz::Tz,
    /// Woken after a commit that added delivery rows.
    pub added: Arc<tokio::sync::Notify>,
    /// Closed while the outbox is full (backlog or disk): the writer waits, sources slow.
    pub gate: crate::outbox::gate::Gate,
}

impl Relay {
    /// No upstreams: events are stored, nothing is routed.
    pub fn none(gateway_id: &str, tz: chrono_tz::Tz) -> Relay {
        Relay {
            routes: Arc::default(),
            gateway_id: Arc::from(gateway_id),
            tz,
            added: Arc::default(),
            gate: Default::default(),
        }
    }
}

/// Submits and reads events. Cheap to clone.
#[derive(Clone)]
pub struct EventLog {
    tx: mpsc::Sender<Submit>,
    db: Db,
    relay: Relay,
    held: prometheus::IntGauge,
}

/// Counts a record held at the closed outbox for as long as it waits (dropped with it when
/// the device goes away meanwhile).
struct Held(prometheus::IntGauge);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl EventLog {
    /// Waits while the outbox is closed (a full backlog or disk). Sources call it before they
    /// write anything for a record (its pictures), so a device's push is held, not failed,
    /// while the disk is under `relay.min_free_disk`, and answered once there is room.
    pub async fn accepting(&self) {
        if self.relay.gate.is_open() {
            return;
        }
        self.held.inc();
        let _held = Held(self.held.clone());
        while !self.relay.gate.is_open() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Queues `event` and waits until it is committed (or found to be a duplicate).
    pub async fn submit(&self, event: Event) -> Result<Stored, Error> {
        let object_id = crate::outbox::object_id(&event, &self.relay.gateway_id, &self.relay.tz);
        let mut stored = self.submit_rows(vec![store::Row::new(event, object_id)]).await?;
        stored.pop().ok_or(Error::Closed)
    }

    /// Queues events that already have their upstream ids (records relayed from a lower
    /// gateway keep the id it gave them) and waits until all are committed, in one
    /// transaction; answers per event, in order.
    pub async fn submit_many(&self, events: Vec<(Event, Option<String>)>) -> Result<Vec<Stored>, Error> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let rows = events
            .into_iter()
            .map(|(e, id)| {
                let id = id.or_else(|| crate::outbox::object_id(&e, &self.relay.gateway_id, &self.relay.tz));
                store::Row::new(e, id)
            })
            .collect();
        self.submit_rows(rows).await
    }

    async fn submit_rows(&self, rows: Vec<store::Row>) -> Result<Vec<Stored>, Error> {
        // Serialized by `Row::new`, on the submitter's task, so the one writer only binds.
        let (done, rx) = oneshot::channel();
        self.tx.send(Submit { rows, done }).await.map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Events matching `filter`, newest first.
    pub async fn list(&self, filter: &Filter) -> Result<Vec<(i64, Event)>, Error> {
        store::list(&self.db, filter).await
    }

    pub async fn get(&self, id: &str) -> Result<Option<Event>, Error> {
        store::get(&self.db, id).await
    }
}

/// Starts the writer. It drains what is queued after `cancel` before it stops.
pub fn spawn(db: Db, relay: Relay, metrics: Metrics, cancel: CancellationToken, tracker: &TaskTracker) -> EventLog {
    let (tx, rx) = mpsc::channel(QUEUE);
    let held = metrics.outbox_held.clone();
    tracker.spawn(writer(db.clone(), relay.clone(), rx, metrics, cancel).instrument(tracing::info_span!("events")));
    EventLog { tx, db, relay, held }
}

async fn writer(db: Db, relay: Relay, mut rx: mpsc::Receiver<Submit>, metrics: Metrics, cancel: CancellationToken) {
    let mut batch: Vec<Submit> = Vec::with_capacity(BATCH);
    // The writer keeps one connection: its page cache stays warm (a pooled connection's
    // cache is dropped whenever another connection wrote since it was last used).
    let mut conn = store::Writer::new(&db);
    loop {
        let fold_at = conn.unfolded().1.map(|since| since + FOLD_EVERY);
        let first = tokio::select! {
            biased;
            r = rx.recv() => r,
            _ = cancel.cancelled() => {
                // Sources stopped before this token fired: take what is left, then stop.
                rx.close();
                rx.recv().await
            }
            // Quiet: what waits is folded once it is due.
            _ = sleep_until(fold_at), if fold_at.is_some() => {
                fold(&mut conn).await;
                continue;
            }
        };
        let Some(first) = first else { break };
        // A full outbox: hold this batch (the queue behind it fills and slows the sources)
        // until there is room again, or shutdown.
        if !relay.gate.is_open() {
            metrics.outbox_accepting.set(0);
            while !relay.gate.is_open() && !cancel.is_cancelled() {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = cancel.cancelled() => {}
                }
            }
        }
        let mut rows = first.rows.len();
        batch.push(first);
        while rows < BATCH {
            match rx.try_recv() {
                Ok(s) => {
                    rows += s.rows.len();
                    batch.push(s);
                }
                Err(_) => break,
            }
        }
        commit(&db, &mut conn, &relay, &mut batch, &metrics).await;
        // After the batch is answered: its acknowledgements do not wait for the fold.
        if let (waiting, Some(since)) = conn.unfolded() {
            if waiting >= FOLD_ROWS || since.elapsed() >= FOLD_EVERY {
                fold(&mut conn).await;
            }
        }
    }
    info!("Event writer stopped.");
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Folds what waits; a failure is logged (the next commit opens a connection that folds).
async fn fold(conn: &mut store::Writer) {
    match conn.fold().await {
        Ok(n) => tracing::debug!(events = n, "Folded the record keys and device index."),
        Err(e) => warn!(error = %e, "Cannot fold the record keys and device index; the next commit tries again."),
    }
}

// `&Vec`: the writer hands the batch (a `Vec`) to a blocking thread and lists its rows there.
#[allow(clippy::ptr_arg)]
fn rows_of(batch: &Vec<Submit>) -> Vec<&store::Row> {
    batch.iter().flat_map(|s| s.rows.iter()).collect()
}

/// Writes one batch and answers its submitters.
async fn commit(db: &Db, conn: &mut store::Writer, relay: &Relay, batch: &mut Vec<Submit>, metrics: &Metrics) {
    let events: usize = batch.iter().map(|s| s.rows.len()).sum();
    let (back, mut result) =
        conn.insert(db, std::mem::take(batch), rows_of, &relay.routes, crate::clock::now_ms()).await;
    *batch = back.unwrap_or_default();
    let mut tries = 1;
    while let Err(e) = &result {
        if tries >= ATTEMPTS || batch.is_empty() {
            break;
        }
        warn!(error = %e, attempt = tries, events, "Cannot commit events; trying again.");
        tokio::time::sleep(Duration::from_millis(100 << tries)).await;
        tries += 1;
        let (back, r) = conn.insert(db, std::mem::take(batch), rows_of, &relay.routes, crate::clock::now_ms()).await;
        *batch = back.unwrap_or_default();
        result = r;
    }
    match result {
        Ok(new) => {
            if new.iter().any(|n| *n) && !relay.routes.is_empty() {
                relay.added.notify_waiters();
            }
            let mut new = new.into_iter();
            // Counted per batch, by (kind, source): one label lookup for each pair, not each event.
            let mut counts: Vec<(crate::event::EventKind, String, u64)> = Vec::new();
            let mut answers = Vec::with_capacity(batch.len());
            for s in batch.drain(..) {
                let stored = s
                    .rows
                    .iter()
                    .map(|r| {
                        let e = &r.event;
                        if new.next().unwrap_or(false) {
                            let kind = e.kind();
                            match counts.iter_mut().find(|(k, src, _)| *k == kind && *src == e.source) {
                                Some(c) => c.2 += 1,
                                None => counts.push((kind, e.source.clone(), 1)),
                            }
                            Stored::New
                        } else {
                            Stored::Duplicate
                        }
                    })
                    .collect::<Vec<_>>();
                answers.push((s.done, stored));
            }
            // Counted before anyone is answered: whoever sees the event sees it counted.
            for (kind, source, n) in counts {
                metrics.events.with_label_values(&[kind.as_str(), source.as_str()]).inc_by(n);
            }
            for (done, stored) in answers {
                let _ = done.send(Ok(stored));
            }
        }
        Err(e) => {
            warn!(error = %e, events = batch.len(), "Events not committed; their sources answer with an error so devices send again.");
            let reason = e.to_string();
            for s in batch.drain(..) {
                let _ = s.done.send(Err(Error::Store(sqlx::Error::Protocol(reason.clone()))));
            }
        }
    }
}
