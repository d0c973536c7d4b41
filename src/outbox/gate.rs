//! The outbox's bound: it stops taking events when the backlog of undelivered rows reaches
//! `[relay] max_backlog` or free disk under the data directory falls below
//! `[relay] min_free_disk`, and opens again once both are back (with 10% hysteresis). While
//! closed, the event writer holds what it has and its bounded queue fills, so sources are
//! slowed (MQTT stops acknowledging, GA/T 1400 answers late, devices keep their records)
//! rather than anything being dropped. Below twice the free-disk minimum an alarm is raised
//! first, so the operator hears of it before it is a failure. Owns nothing in the database.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn, Instrument};

use crate::db::Db;

/// How often the backlog and the disk are looked at.
const EVERY: Duration = Duration::from_secs(2);

/// Whether the outbox takes events, and why not. Cheap to clone.
#[derive(Clone, Default)]
pub struct Gate {
    closed: Arc<AtomicBool>,
    why: Arc<Mutex<Option<String>>>,
    warning: Arc<Mutex<Option<String>>>,
}

impl Gate {
    pub fn is_open(&self) -> bool {
        !self.closed.load(Ordering::Acquire)
    }

    /// Why it is closed.
    pub fn reason(&self) -> Option<String> {
        self.why.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A warning short of closing (free disk under twice the minimum).
    pub fn warning(&self) -> Option<String> {
        self.warning.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, why: Option<String>) {
        self.closed.store(why.is_some(), Ordering::Release);
        *self.why.lock().unwrap_or_else(|p| p.into_inner()) = why;
    }
}

/// The limits, from `[relay]`.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_backlog: u64,
    pub min_free_disk: u64,
    /// The targets delivery rows are written for (`Routes::names`): their undelivered rows
    /// make the backlog (rows left by an upstream since removed from the configuration never
    /// drain and are not counted).
    pub targets: Vec<String>,
}

/// What the gate decides from one look: `Some(reason)` to be closed, and a warning.
pub fn judge(limits: &Limits, backlog: u64, free: Option<u64>, closed: bool) -> (Option<String>, Option<String>) {
    // Closed stays closed until 10% below / above the limits, so it does not flap.
    let (backlog_limit, free_limit) = if closed {
        (limits.max_backlog - limits.max_backlog / 10, limits.min_free_disk + limits.min_free_disk / 10)
    } else {
        (limits.max_backlog, limits.min_free_disk)
    };
    let mut why = None;
    if backlog >= backlog_limit {
        why = Some(format!(
            "the outbox holds {backlog} undelivered records (relay.max_backlog {}): sources are slowed until upstreams take them",
            limits.max_backlog
        ));
    }
    let mut warning = None;
    if let Some(free) = free {
        if free < free_limit {
            why = Some(format!(
                "{} MiB free under the data directory (relay.min_free_disk {} MiB): sources are slowed until space is freed",
                free >> 20,
                limits.min_free_disk >> 20
            ));
        } else if free < limits.min_free_disk.saturating_mul(2) {
            warning = Some(format!(
                "{} MiB free under the data directory; at {} MiB the gateway stops taking records",
                free >> 20,
                limits.min_free_disk >> 20
            ));
        }
    }
    (why, warning)
}

/// Free bytes for unprivileged writers on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    let s = rustix::fs::statvfs(dir).ok()?;
    Some(s.f_bavail.saturating_mul(s.f_frsize))
}

/// Starts watching; answers the gate the event writer consults.
pub fn spawn(
    db: Db,
    data_dir: PathBuf,
    limits: Limits,
    metrics: crate::telemetry::Metrics,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> Gate {
    let gate = Gate::default();
    let g = gate.clone();
    tracker.spawn(
        async move {
            let mut tick = tokio::time::interval(EVERY);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = cancel.cancelled() => break,
                }
                let cap = limits.max_backlog.saturating_add(1);
                let backlog = match super::store::pending_total(&db, &limits.targets, cap).await {
                    Ok(n) => n,
                    Err(e) => {
                        warn!(error = %e, "Cannot count the outbox backlog.");
                        continue;
                    }
                };
                let free = free_bytes(&data_dir);
                if let Some(f) = free {
                    metrics.outbox_free_disk.set(f as i64);
                }
                let was_closed = !g.is_open();
                let (why, warning) = judge(&limits, backlog, free, was_closed);
                let had_warning = g.warning().is_some();
                match (&warning, had_warning) {
                    (Some(w), false) => error!(warning = %w, "Free disk is running low."),
                    (None, true) => info!("Free disk is above twice the minimum again."),
                    _ => {}
                }
                *g.warning.lock().unwrap_or_else(|p| p.into_inner()) = warning;
                match (&why, was_closed) {
                    (Some(w), false) => error!(reason = %w, "The outbox is full: no more records are taken for now."),
                    (None, true) => info!(backlog, "The outbox takes records again."),
                    _ => {}
                }
                metrics.outbox_accepting.set(i64::from(why.is_none()));
                g.set(why);
            }
        }
        .instrument(tracing::info_span!("outbox_gate")),
    );
    gate
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closes_at_the_limits_warns_before_and_does_not_flap() {
        let l = Limits { max_backlog: 1000, min_free_disk: 1 << 30, targets: Vec::new() };
        let gib = 1u64 << 30;
        assert_eq!(judge(&l, 10, Some(10 * gib), false), (None, None));
        let (why, warn) = judge(&l, 10, Some(gib + gib / 2), false);
        assert!(why.is_none() && warn.is_some_and(|w| w.contains("1536 MiB")), "a warning before the failure");
        assert!(judge(&l, 10, Some(gib - 1), false).0.is_some_and(|w| w.contains("min_free_disk")));
        assert!(judge(&l, 1000, Some(10 * gib), false).0.is_some_and(|w| w.contains("max_backlog")));
        // Closed: stays closed just under the limit, opens 10% below it.
        assert!(judge(&l, 950, Some(10 * gib), true).0.is_some());
        assert!(judge(&l, 899, Some(10 * gib), true).0.is_none());
        assert!(judge(&l, 10, Some(gib + gib / 20), true).0.is_some(), "free space needs 10% over the minimum");
        assert!(judge(&l, 10, None, false).0.is_none(), "unknown free space does not close it");
    }

    #[test]
    fn free_space_is_read_from_the_file_system() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(free_bytes(dir.path()).is_some_and(|f| f > 0));
        assert!(free_bytes(&dir.path().join("nowhere")).is_none());
    }
}
