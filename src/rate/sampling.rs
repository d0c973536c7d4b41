//! The rate task: keeps the latest rollup fresh for the API and /metrics (every
//! `tuning.rate_refresh`), and stores the sampled rate at the assessment's instants
//! (`assessment.sample_every`, aligned to midnight in `assessment.timezone`) so history
//! survives restarts. Reads presence through its handle and the registry cache; writes
//! only the `rate_samples` table.

use std::sync::Arc;
use std::time::Duration;

use chrono::TimeZone;
use sqlx::AnyPool;
use sqlx::Row;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn, Instrument};

use super::{Counts, RateIndex, Rollup, ALL, KINDS};
use crate::clock::{instant_at, now_ms, Millis};
use crate::config::Assessment;
use crate::presence::runner::PresenceHandle;
use crate::registry::{DeviceKind, Registry};
use crate::telemetry::Metrics;

/// The org id stored for the whole gateway, and the kind stored for all kinds.
pub const ALL_KEY: &str = "";

/// The latest rollup and the index it was computed with.
#[derive(Debug, Clone)]
pub struct RateSnapshot {
    pub index: Arc<RateIndex>,
    pub rollup: Rollup,
    /// False only for the placeholder published before the task's first rollup.
    pub computed: bool,
}

impl RateSnapshot {
    pub fn empty() -> Self {
        let index = Arc::new(RateIndex::default());
        let rollup = index.rollup(&[], &Default::default(), 0);
        Self { index, rollup, computed: false }
    }
}

/// The first sampling instant strictly after `now`: multiples of `period` from local
/// midnight (so "1h" is on the hour), restarting at each midnight.
pub fn next_sample_after(now: Millis, period: Duration, tz: &chrono_tz::Tz) -> Millis {
    let period_ms = (period.as_millis() as Millis).max(1000);
    if period_ms >= 86_400_000 {
        return (now / period_ms + 1) * period_ms;
    }
    let local = crate::clock::to_datetime(now, tz);
    let date = local.date_naive();
    let midnight = |d: chrono::NaiveDate| -> Millis {
        d.and_hms_opt(0, 0, 0)
            .and_then(|t| tz.from_local_datetime(&t).earliest())
            .map(|t| t.timestamp_millis())
            .unwrap_or(now - now.rem_euclid(86_400_000))
    };
    let start = midnight(date);
    let next_midnight = date.succ_opt().map(midnight).unwrap_or(start + 86_400_000);
    let n = (now - start) / period_ms + 1;
    (start + n * period_ms).min(next_midnight)
}

/// What the rate task reads: the registry, presence, and the devices failing diagnosis.
pub struct Inputs {
    pub registry: Registry,
    pub presence: PresenceHandle,
    pub impaired: super::Impaired,
    /// Where each sample is reported as an `online_rate` event, as this gateway's id.
    pub reports: Option<(crate::events::EventLog, String)>,
}

/// How readers get the rate task's snapshots: the latest one, or, after a registry write,
/// one computed from that write on (read-your-writes for the API).
#[derive(Clone)]
pub struct RateView {
    rx: watch::Receiver<Arc<RateSnapshot>>,
    wake: Arc<tokio::sync::Notify>,
}

impl RateView {
    /// The latest snapshot, whatever registry generation it was computed from.
    pub fn latest(&self) -> Arc<RateSnapshot> {
        self.rx.borrow().clone()
    }

    /// A snapshot computed from registry generation `generation` or later: the latest one
    /// when it already is, else the rate task is woken to compute one now. `None` when none
    /// came within `within` (the task is stopped or far behind).
    pub async fn at_least(&self, generation: u64, within: Duration) -> Option<Arc<RateSnapshot>> {
        let fresh = |s: &Arc<RateSnapshot>| s.index.generation >= generation && s.computed;
        let mut rx = self.rx.clone();
        if fresh(&rx.borrow()) {
            return Some(rx.borrow().clone());
        }
        self.wake.notify_one();
        let got = match tokio::time::timeout(within, rx.wait_for(fresh)).await {
            Ok(Ok(s)) => Some(s.clone()),
            _ => None,
        };
        got
    }
}

/// Starts the rate task; returns the view of its snapshots.
pub fn spawn(
    inputs: Inputs,
    cfg: Assessment,
    refresh: Duration,
    metrics: Metrics,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> RateView {
    let (tx, rx) = watch::channel(Arc::new(RateSnapshot::empty()));
    let wake = Arc::new(tokio::sync::Notify::new());
    tracker.spawn(run(inputs, cfg, refresh, metrics, tx, wake.clone(), cancel).instrument(tracing::info_span!("rate")));
    RateView { rx, wake }
}

async fn run(
    inputs: Inputs,
    cfg: Assessment,
    refresh: Duration,
    metrics: Metrics,
    tx: watch::Sender<Arc<RateSnapshot>>,
    wake: Arc<tokio::sync::Notify>,
    cancel: CancellationToken,
) {
    let Inputs { registry, presence, impaired, reports } = inputs;
    let tz: chrono_tz::Tz = cfg.timezone.parse().unwrap_or(chrono_tz::Asia::Shanghai);
    let pool = registry.db().pool.clone();
    metrics.online_target.set(cfg.online_target);
    let mut index = Arc::new(RateIndex::default());
    let mut tick = tokio::time::interval(refresh);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_sample = next_sample_after(now_ms(), cfg.sample_every, &tz);
    let mut next_prune = now_ms();
    loop {
        let sample_due = instant_at(next_sample);
        let sampling = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep_until(sample_due) => true,
            _ = tick.tick() => false,
            // A reader waits for a snapshot that includes a registry write it made.
            _ = wake.notified() => false,
        };
        let generation = registry.read().counting_generation();
        if generation != index.generation || index.orgs.is_empty() && index.generation == 0 {
            let built = {
                let cache = registry.read();
                RateIndex::build(&cache, cfg.count_maintenance)
            };
            index = Arc::new(built);
        }
        let Ok(states) = presence.states().await else { break };
        let now = now_ms();
        let rollup = index.rollup(&states, &impaired.counts(), if sampling { next_sample } else { now });
        publish_metrics(&metrics, &index, &rollup);
        if sampling {
            let at = next_sample;
            match insert_samples(&pool, at, &index, &rollup).await {
                Ok(n) => tracing::debug!(at, rows = n, "Online rate sampled."),
                Err(e) => warn!(error = %e, at, "Cannot store the online-rate sample; it is missing from history."),
            }
            if let Some((events, gateway_id)) = &reports {
                let body = report_body(at, cfg.online_target, &index, &rollup);
                let event = crate::events::reports::online_rate_event(gateway_id, body, now);
                let events = events.clone();
                // Off the rate loop: a slow commit must not delay the next refresh.
                tokio::spawn(async move {
                    if let Err(e) = events.submit(event).await {
                        warn!(error = %e, at, "Cannot store the online-rate report; upstreams miss this sample.");
                    }
                });
            }
            next_sample = next_sample_after(now.max(at), cfg.sample_every, &tz);
        }
        if now >= next_prune {
            let before = now - cfg.retention.as_millis() as Millis;
            match (prune(&pool, before).await, crate::presence::store::prune(&pool, before).await) {
                (Ok(a), Ok(b)) if a + b > 0 => {
                    info!(samples = a, transitions = b, "Pruned history past the retention period.")
                }
                (Err(e), _) | (_, Err(e)) => warn!(error = %e, "Cannot prune old history."),
                _ => {}
            }
            next_prune = now + 3_600_000;
        }
        let _ = tx.send(Arc::new(RateSnapshot { index: index.clone(), rollup, computed: true }));
    }
}

fn publish_metrics(metrics: &Metrics, index: &RateIndex, rollup: &Rollup) {
    // Every state of each (kind, protocol) pair that has devices, zeros included, so a
    // series does not vanish when its count drops to zero.
    let present: std::collections::HashSet<(DeviceKind, crate::registry::Protocol)> =
        rollup.device_counts().filter(|(_, _, _, n)| *n > 0).map(|(k, p, _, _)| (k, p)).collect();
    for (k, p, s, n) in rollup.device_counts() {
        if present.contains(&(k, p)) {
            metrics.devices.with_label_values(&[s.as_str(), k.as_str(), p.as_str()]).set(n as i64);
        } else {
            let _ = metrics.devices.remove_label_values(&[s.as_str(), k.as_str(), p.as_str()]);
        }
    }
    metrics.online_rate.reset();
    if let Some(r) = rollup.root[ALL].rate() {
        metrics.online_rate.with_label_values(&["all", "all"]).set(r);
    }
    for k in DeviceKind::ALL {
        if let Some(r) = rollup.root[k.index()].rate() {
            metrics.online_rate.with_label_values(&["all", k.as_str()]).set(r);
        }
    }
    for (i, o) in index.orgs.iter().enumerate() {
        if let Some(r) = rollup.per_org[i][ALL].rate() {
            metrics.online_rate.with_label_values(&[o.id.as_str(), "all"]).set(r);
        }
    }
}

/// The body of an `online_rate` event: the same scopes a stored sample has.
pub fn report_body(at: Millis, target: f64, index: &RateIndex, rollup: &Rollup) -> crate::event::OnlineRateBody {
    let mut rows = Vec::new();
    let scopes = std::iter::once(("", "", &rollup.root))
        .chain(index.orgs.iter().zip(rollup.per_org.iter()).map(|(o, row)| (o.id.as_str(), o.name.as_str(), row)));
    for (org_id, org_name, kinds) in scopes {
        for (k, c) in kinds.iter().enumerate() {
            if c.total == 0 && k != ALL {
                continue;
            }
            rows.push(crate::event::RateRow {
                org_id: org_id.to_owned(),
                org_name: org_name.to_owned(),
                kind: if k == ALL { "all".into() } else { DeviceKind::ALL[k].as_str().into() },
                online: c.online,
                total: c.total,
                intact: c.intact,
                rate: c.rate(),
                intact_rate: c.intact_rate(),
            });
        }
    }
    crate::event::OnlineRateBody { sampled_at: at, target, rows }
}

/// Stores one sample: the gateway and every org node, all kinds and each kind present.
pub async fn insert_samples(
    pool: &AnyPool,
    at: Millis,
    index: &RateIndex,
    rollup: &Rollup,
) -> Result<usize, sqlx::Error> {
    let mut rows: Vec<(String, &'static str, Counts)> = Vec::new();
    let scopes = std::iter::once((ALL_KEY.to_owned(), &rollup.root))
        .chain(index.orgs.iter().zip(rollup.per_org.iter()).map(|(o, row)| (o.id.clone(), row)));
    for (org_id, kinds) in scopes {
        for (k, c) in kinds.iter().enumerate() {
            if c.total == 0 && k != ALL {
                continue;
            }
            let kind = if k == ALL { ALL_KEY } else { DeviceKind::ALL[k].as_str() };
            rows.push((org_id.clone(), kind, *c));
        }
    }
    let mut tx = pool.begin().await?;
    for chunk in rows.chunks(500) {
        let mut sql = String::from("INSERT INTO rate_samples (at, org_id, kind, online, total, intact) VALUES ");
        for i in 0..chunk.len() {
            let b = i * 6;
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!("(${},${},${},${},${},${})", b + 1, b + 2, b + 3, b + 4, b + 5, b + 6));
        }
        sql.push_str(
            " ON CONFLICT (org_id, kind, at) DO UPDATE SET online = excluded.online, total = excluded.total, intact = excluded.intact",
        );
        let mut q = sqlx::query(&sql);
        for (org, kind, c) in chunk {
            q = q
                .bind(at)
                .bind(org.clone())
                .bind(kind.to_string())
                .bind(c.online as i64)
                .bind(c.total as i64)
                .bind(c.intact as i64);
        }
        q.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    debug_assert!(KINDS == DeviceKind::ALL.len());
    Ok(rows.len())
}

/// One stored sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub at: Millis,
    pub online: i64,
    pub total: i64,
    /// Online and passing diagnosis (samples from before the intact rate: `online`).
    pub intact: i64,
}

/// Samples of one org (`""` the gateway) and kind (`""` all kinds) in [from, to).
pub async fn samples(
    pool: &AnyPool,
    org: &str,
    kind: &str,
    from: Millis,
    to: Millis,
) -> Result<Vec<Sample>, sqlx::Error> {
    let rows = sqlx::query("SELECT at, online, total, COALESCE(intact, online) AS intact FROM rate_samples WHERE org_id = $1 AND kind = $2 AND at >= $3 AND at < $4 ORDER BY at")
        .bind(org)
        .bind(kind)
        .bind(from)
        .bind(to)
        .fetch_all(pool)
        .await?;
    rows.into_iter()
        .map(|r| {
            Ok(Sample {
                at: r.try_get("at")?,
                online: r.try_get("online")?,
                total: r.try_get("total")?,
                intact: r.try_get("intact")?,
            })
        })
        .collect()
}

/// All samples in [from, to): (org, kind) → samples (reports).
pub async fn all_samples(
    pool: &AnyPool,
    from: Millis,
    to: Millis,
) -> Result<Vec<(String, String, Sample)>, sqlx::Error> {
    let rows = sqlx::query("SELECT org_id, kind, at, online, total, COALESCE(intact, online) AS intact FROM rate_samples WHERE at >= $1 AND at < $2")
        .bind(from)
        .bind(to)
        .fetch_all(pool)
        .await?;
    rows.into_iter()
        .map(|r| {
            Ok((
                r.try_get("org_id")?,
                r.try_get("kind")?,
                Sample {
                    at: r.try_get("at")?,
                    online: r.try_get("online")?,
                    total: r.try_get("total")?,
                    intact: r.try_get("intact")?,
                },
            ))
        })
        .collect()
}

fn counts(s: &Sample) -> Counts {
    Counts { online: s.online.max(0) as u64, total: s.total.max(0) as u64, intact: s.intact.max(0) as u64 }
}

/// Buckets samples by `step` from `from`: each point is the bucket's Σonline / Σtotal.
pub fn bucket(samples: &[Sample], from: Millis, step: Millis) -> Vec<(Millis, Counts, usize)> {
    let step = step.max(1);
    let mut out: Vec<(Millis, Counts, usize)> = Vec::new();
    for s in samples {
        let b = from + (s.at - from).div_euclid(step) * step;
        match out.last_mut() {
            Some((at, c, n)) if *at == b => {
                c.add(counts(s));
                *n += 1;
            }
            _ => out.push((b, counts(s), 1)),
        }
    }
    out
}

async fn prune(pool: &AnyPool, before: Millis) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query("DELETE FROM rate_samples WHERE at < $1").bind(before).execute(pool).await?.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_fall_on_the_hour_in_the_assessment_zone() {
        let tz = chrono_tz::Asia::Shanghai;
        // 2026-11-26T09:14:05+08:00
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-26T09:14:05+08:00").expect("valid").timestamp_millis();
        let next = next_sample_after(now, Duration::from_secs(3600), &tz);
        assert_eq!(crate::clock::rfc3339(next, &tz), "2026-11-26T10:00:00+08:00");
        let at_hour = next_sample_after(next, Duration::from_secs(3600), &tz);
        assert_eq!(crate::clock::rfc3339(at_hour, &tz), "2026-11-26T11:00:00+08:00");
        // 7 h does not divide a day: the last sample of the day is midnight.
        let late = chrono::DateTime::parse_from_rfc3339("2026-11-26T22:00:00+08:00").expect("valid").timestamp_millis();
        let n = next_sample_after(late, Duration::from_secs(7 * 3600), &tz);
        assert_eq!(crate::clock::rfc3339(n, &tz), "2026-11-27T00:00:00+08:00");
    }

    #[test]
    fn buckets_weigh_samples_by_points() {
        let s = [
            Sample { at: 0, online: 9, total: 10, intact: 8 },
            Sample { at: 10, online: 1, total: 10, intact: 1 },
            Sample { at: 100, online: 5, total: 5, intact: 5 },
        ];
        let b = bucket(&s, 0, 60);
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].1, Counts { online: 10, total: 20, intact: 9 });
        assert_eq!(b[1].0, 60);
    }
}
