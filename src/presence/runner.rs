//! The presence task and its writer.
//!
//! One task owns the `PresenceTable` (rumqttd's router shape). It reads observations and
//! commands from two bounded channels, fires deadlines from its own timer, and hands
//! transitions and checkpoints to the writer task over a third bounded channel. The writer
//! batches them into transactions; while the database is away it holds up to
//! `presence.max_pending` transitions and then stops reading, which slows presence and its
//! sources rather than forget anything. No protocol knowledge here.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn, Instrument};

use super::{store, PresenceTable, StateRow, Transition, View};
use crate::clock::{instant_at, now_ms, Millis};
use crate::config::{Presence as PresenceConfig, Tuning};
use crate::event::Observation;
use crate::registry::DeviceKey;
use crate::telemetry::Metrics;

/// How long the writer keeps trying to write after shutdown began.
const SHUTDOWN_WRITE_GRACE: Duration = Duration::from_secs(5);
/// Most observations handled in one wake-up before other work gets a turn.
const OBSERVATION_BURST: usize = 4096;

/// The presence task is gone (shutdown).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("presence task has stopped")]
pub struct Closed;

enum Command {
    Track(Vec<(DeviceKey, Arc<str>, &'static str)>),
    Forget(DeviceKey),
    Views(Vec<DeviceKey>, oneshot::Sender<Vec<Option<View>>>),
    States(oneshot::Sender<Vec<u8>>),
    NotOnline(oneshot::Sender<Vec<(DeviceKey, View)>>),
}

/// Talks to the presence task. Cheap to clone.
#[derive(Clone)]
pub struct PresenceHandle {
    obs_tx: mpsc::Sender<Observation>,
    cmd_tx: mpsc::Sender<Command>,
}

impl PresenceHandle {
    /// Hands in one observation; waits while the presence queue is full.
    pub async fn observe(&self, obs: Observation) -> Result<(), Closed> {
        self.obs_tx.send(obs).await.map_err(|_| Closed)
    }
    pub async fn track(&self, devices: Vec<(DeviceKey, Arc<str>, &'static str)>) -> Result<(), Closed> {
        self.cmd_tx.send(Command::Track(devices)).await.map_err(|_| Closed)
    }
    pub async fn forget(&self, key: DeviceKey) -> Result<(), Closed> {
        self.cmd_tx.send(Command::Forget(key)).await.map_err(|_| Closed)
    }
    pub async fn views(&self, keys: Vec<DeviceKey>) -> Result<Vec<Option<View>>, Closed> {
        let (tx, rx) = oneshot::channel();
        self.cmd_tx.send(Command::Views(keys, tx)).await.map_err(|_| Closed)?;
        rx.await.map_err(|_| Closed)
    }
    /// Every device's state as `State as u8`, indexed by key.
    pub async fn states(&self) -> Result<Vec<u8>, Closed> {
        let (tx, rx) = oneshot::channel();
        self.cmd_tx.send(Command::States(tx)).await.map_err(|_| Closed)?;
        rx.await.map_err(|_| Closed)
    }
    pub async fn not_online(&self) -> Result<Vec<(DeviceKey, View)>, Closed> {
        let (tx, rx) = oneshot::channel();
        self.cmd_tx.send(Command::NotOnline(tx)).await.map_err(|_| Closed)?;
        rx.await.map_err(|_| Closed)
    }
}

/// Whether the last database write succeeded (the API reports it).
#[derive(Debug, Default)]
pub struct WriterHealth {
    pub db_ok: AtomicBool,
}

struct WriteBatch {
    transitions: Vec<Transition>,
    states: Vec<StateRow>,
    checkpoint_at: Option<Millis>,
}

/// Starts the presence task and its writer on `tracker`; both stop on `cancel` after a
/// final checkpoint.
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    table: PresenceTable,
    initial: Vec<Transition>,
    cfg: &PresenceConfig,
    tuning: &Tuning,
    db: crate::db::Db,
    metrics: Metrics,
    health: Arc<WriterHealth>,
    status: Option<mpsc::Sender<Arc<Vec<Transition>>>>,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> PresenceHandle {
    let (obs_tx, obs_rx) = mpsc::channel(tuning.observation_queue);
    let (cmd_tx, cmd_rx) = mpsc::channel(1024);
    let (write_tx, write_rx) = mpsc::channel(tuning.transition_queue.div_ceil(64).max(4));
    health.db_ok.store(true, Ordering::Relaxed);
    tracker.spawn(
        writer(write_rx, db, cfg.max_pending, health, status, metrics.clone(), cancel.clone())
            .instrument(tracing::info_span!("presence_writer")),
    );
    tracker.spawn(
        run(table, initial, obs_rx, cmd_rx, write_tx, cfg.flush_every, cfg.checkpoint_every, metrics, cancel)
            .instrument(tracing::info_span!("presence")),
    );
    PresenceHandle { obs_tx, cmd_tx }
}

#[allow(clippy::too_many_arguments)]
async fn run(
    mut table: PresenceTable,
    initial: Vec<Transition>,
    mut obs_rx: mpsc::Receiver<Observation>,
    mut cmd_rx: mpsc::Receiver<Command>,
    write_tx: mpsc::Sender<WriteBatch>,
    flush_every: Duration,
    checkpoint_every: Duration,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    let mut pending: Vec<Transition> = initial;
    let mut flush = tokio::time::interval(flush_every);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut checkpoint = tokio::time::interval(checkpoint_every);
    checkpoint.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    checkpoint.tick().await; // the first tick is immediate; start-up wrote already
    let far = Duration::from_secs(86_400);
    loop {
        let wake = table.next_deadline().map(instant_at).unwrap_or_else(|| tokio::time::Instant::now() + far);
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            Some(cmd) = cmd_rx.recv() => handle(&mut table, cmd),
            Some(obs) = obs_rx.recv() => {
                let now = now_ms();
                metrics.observations.inc();
                record(&metrics, &mut pending, table.observe(now, &obs));
                for _ in 0..OBSERVATION_BURST {
                    match obs_rx.try_recv() {
                        Ok(obs) => {
                            metrics.observations.inc();
                            record(&metrics, &mut pending, table.observe(now, &obs));
                        }
                        Err(_) => break,
                    }
                }
            }
            _ = tokio::time::sleep_until(wake) => {
                for t in table.tick(now_ms()) {
                    record(&metrics, &mut pending, Some(t));
                }
            }
            _ = flush.tick() => {
                if !pending.is_empty() {
                    let transitions = std::mem::take(&mut pending);
                    let mut keys: Vec<DeviceKey> = transitions.iter().map(|t| t.device).collect();
                    keys.sort_unstable();
                    keys.dedup();
                    let states = table.rows(keys);
                    if write_tx.send(WriteBatch { transitions, states, checkpoint_at: None }).await.is_err() {
                        break;
                    }
                }
            }
            _ = checkpoint.tick() => {
                let states = table.take_dirty();
                let transitions = std::mem::take(&mut pending);
                if write_tx.send(WriteBatch { transitions, states, checkpoint_at: Some(now_ms()) }).await.is_err() {
                    break;
                }
            }
        }
    }
    // Final checkpoint: everything not yet written, and the instant we vouch for.
    for t in table.tick(now_ms()) {
        record(&metrics, &mut pending, Some(t));
    }
    let states = table.take_dirty();
    let n = (pending.len(), states.len());
    let batch = WriteBatch { transitions: pending, states, checkpoint_at: Some(now_ms()) };
    if write_tx.send(batch).await.is_ok() {
        info!(transitions = n.0, states = n.1, "Presence stopped; final checkpoint handed to the writer.");
    }
}

fn record(metrics: &Metrics, pending: &mut Vec<Transition>, t: Option<Transition>) {
    if let Some(t) = t {
        metrics.transitions.with_label_values(&[t.to.as_str(), t.protocol]).inc();
        pending.push(t);
    }
}

fn handle(table: &mut PresenceTable, cmd: Command) {
    match cmd {
        Command::Track(list) => {
            let now = now_ms();
            for (k, id, proto) in list {
                table.track(k, id, proto, now);
            }
        }
        Command::Forget(k) => table.forget(k),
        Command::Views(keys, tx) => {
            let _ = tx.send(keys.into_iter().map(|k| table.view(k)).collect());
        }
        Command::States(tx) => {
            let _ = tx.send(table.states());
        }
        Command::NotOnline(tx) => {
            let _ = tx.send(table.not_online());
        }
    }
}

/// Merges queued batches: transitions in order, the newest state row per device.
fn merge(batches: &mut Vec<WriteBatch>) -> WriteBatch {
    if batches.len() == 1 {
        if let Some(b) = batches.pop() {
            return b;
        }
    }
    let mut transitions = Vec::new();
    let mut states: HashMap<Arc<str>, StateRow> = HashMap::new();
    let mut checkpoint_at = None;
    for b in batches.drain(..) {
        transitions.extend(b.transitions);
        for s in b.states {
            states.insert(s.device_id.clone(), s);
        }
        checkpoint_at = b.checkpoint_at.or(checkpoint_at);
    }
    WriteBatch { transitions, states: states.into_values().collect(), checkpoint_at }
}

async fn writer(
    mut rx: mpsc::Receiver<WriteBatch>,
    db: crate::db::Db,
    max_pending: usize,
    health: Arc<WriterHealth>,
    status: Option<mpsc::Sender<Arc<Vec<Transition>>>>,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    let mut held: Option<WriteBatch> = None;
    let mut backoff = Duration::from_millis(250);
    let mut failing_since: Option<tokio::time::Instant> = None;
    loop {
        let mut queue: Vec<WriteBatch> = held.take().into_iter().collect();
        if queue.is_empty() {
            match rx.recv().await {
                Some(b) => queue.push(b),
                None => break,
            }
        }
        let mut count: usize = queue.iter().map(|b| b.transitions.len()).sum();
        while count < max_pending {
            match rx.try_recv() {
                Ok(b) => {
                    count += b.transitions.len();
                    queue.push(b);
                }
                Err(_) => break,
            }
        }
        let batch = merge(&mut queue);
        metrics.presence_pending.set(batch.transitions.len() as i64);
        let started = tokio::time::Instant::now();
        match store::write_batch(&db, &batch.transitions, &batch.states, batch.checkpoint_at, now_ms()).await {
            Ok(()) => {
                let took = started.elapsed();
                if took > Duration::from_secs(1) {
                    info!(
                        transitions = batch.transitions.len(),
                        states = batch.states.len(),
                        took_ms = took.as_millis() as u64,
                        "Large presence batch written."
                    );
                }
                if let Some(since) = failing_since.take() {
                    info!(
                        transitions = batch.transitions.len(),
                        outage_s = since.elapsed().as_secs(),
                        "Database is back; queued presence transitions written."
                    );
                }
                health.db_ok.store(true, Ordering::Relaxed);
                metrics.presence_pending.set(0);
                if let Some(at) = batch.checkpoint_at {
                    metrics.presence_checkpoint.set(at / 1000);
                }
                backoff = Duration::from_millis(250);
                // Committed: now they may be reported upstream as status events.
                if let Some(tx) = &status {
                    if !batch.transitions.is_empty() {
                        let n = batch.transitions.len();
                        if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(Arc::new(batch.transitions)) {
                            error!(transitions = n, "Status reports are not keeping up; these transitions are not reported upstream (the presence history has them).");
                        }
                    }
                }
            }
            Err(e) => {
                health.db_ok.store(false, Ordering::Relaxed);
                let stopping = cancel.is_cancelled();
                match failing_since {
                    None => {
                        failing_since = Some(tokio::time::Instant::now());
                        warn!(error = %e, pending = batch.transitions.len(), "Cannot write presence; holding transitions and retrying.");
                    }
                    Some(since) if stopping && since.elapsed() > SHUTDOWN_WRITE_GRACE => {
                        error!(error = %e, lost = batch.transitions.len(), "Shutting down with the database away: presence transitions not written.");
                        return;
                    }
                    Some(_) => {}
                }
                held = Some(batch);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
