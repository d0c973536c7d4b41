//! SQL for presence: the state rows (checkpoints), the transition log (history) and the
//! reads the reports need. Called by the presence writer task, the API and reports.

use std::sync::Arc;

use serde_json::json;
use sqlx::AnyPool;
use sqlx::Row;

use crate::db::{insert_json_rows, Col, Db};

use super::{AliveKind, Reason, State, StateRow, Transition};
use crate::clock::Millis;

/// The bookkeeping key holding the last instant the gateway vouched for presence.
pub const CHECKPOINT_KEY: &str = "presence_checkpoint_at";

/// One row of a device's history.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryRow {
    pub device_id: String,
    pub at: Millis,
    pub from: State,
    pub to: State,
    pub reason: String,
    pub detail: Option<String>,
}

/// Rows per transaction: a restart of 100,000 devices writes ~200,000 gap transitions;
/// smaller transactions keep memory flat and let other writers in between.
const ROWS_PER_TXN: usize = 5_000;

const TRANSITION_COLUMNS: [(&str, Col); 6] = [
    ("device_id", Col::Text),
    ("at", Col::BigInt),
    ("from_state", Col::Text),
    ("to_state", Col::Text),
    ("reason", Col::Text),
    ("detail", Col::Text),
];

const STATE_COLUMNS: [(&str, Col); 10] = [
    ("device_id", Col::Text),
    ("state", Col::Text),
    ("since", Col::BigInt),
    ("last_seen", Col::BigInt),
    ("reason", Col::Text),
    ("detail", Col::Text),
    ("alive_until", Col::BigInt),
    ("alive_kind", Col::Text),
    ("registered_until", Col::BigInt),
    ("updated_at", Col::BigInt),
];

const STATE_UPSERT: &str = "ON CONFLICT (device_id) DO UPDATE SET state = excluded.state, since = excluded.since, \
     last_seen = excluded.last_seen, reason = excluded.reason, detail = excluded.detail, \
     alive_until = excluded.alive_until, alive_kind = excluded.alive_kind, \
     registered_until = excluded.registered_until, updated_at = excluded.updated_at";

/// Writes transitions and state rows, then the checkpoint instant. Large batches are
/// split into transactions of `ROWS_PER_TXN` rows; history is append-only and state rows
/// are last-writer-wins, so a crash between two of them leaves nothing inconsistent, and
/// the checkpoint is written last.
pub async fn write_batch(
    db: &Db,
    transitions: &[Transition],
    states: &[StateRow],
    checkpoint_at: Option<Millis>,
    now: Millis,
) -> Result<(), sqlx::Error> {
    for part in transitions.chunks(ROWS_PER_TXN) {
        let rows: Vec<serde_json::Value> = part
            .iter()
            .map(|t| {
                json!([&*t.device_id, t.at, t.from.as_str(), t.to.as_str(), t.reason.as_str(), t.detail.as_deref()])
            })
            .collect();
        let mut tx = db.pool.begin().await?;
        insert_json_rows(&mut tx, db.backend, "presence_transitions", &TRANSITION_COLUMNS, json_text(&rows), "")
            .await?;
        tx.commit().await?;
    }
    for part in states.chunks(ROWS_PER_TXN) {
        let rows: Vec<serde_json::Value> = part
            .iter()
            .map(|s| {
                json!([
                    &*s.device_id,
                    s.state.as_str(),
                    s.since,
                    s.last_seen,
                    s.reason.as_str(),
                    s.detail.as_deref(),
                    s.alive_until,
                    s.alive_kind.map(AliveKind::as_str),
                    s.registered_until,
                    now
                ])
            })
            .collect();
        let mut tx = db.pool.begin().await?;
        insert_json_rows(&mut tx, db.backend, "presence_state", &STATE_COLUMNS, json_text(&rows), STATE_UPSERT).await?;
        tx.commit().await?;
    }
    if let Some(at) = checkpoint_at {
        crate::db::set_state(&db.pool, CHECKPOINT_KEY, &at.to_string()).await?;
    }
    Ok(())
}

fn json_text(rows: &[serde_json::Value]) -> String {
    serde_json::to_string(rows).unwrap_or_else(|_| "[]".into())
}

type StateTuple = (String, String, i64, Option<i64>, String, Option<String>, Option<i64>, Option<String>, Option<i64>);

/// Every persisted state row (start-up).
pub async fn load_states(db: &crate::db::Db) -> Result<Vec<StateRow>, sqlx::Error> {
    crate::db::load_json_pages(
        db,
        "presence_state",
        "device_id",
        "device_id, state, since, last_seen, reason, detail, alive_until, alive_kind, registered_until",
        |(id, state, since, last_seen, reason, detail, alive_until, kind, registered_until): StateTuple| {
            Ok(StateRow {
                device_id: Arc::from(id),
                state: State::parse(&state).unwrap_or(State::Unknown),
                since,
                last_seen,
                reason: Reason::parse(&reason).unwrap_or(Reason::Added),
                detail: detail.map(Arc::from),
                alive_until,
                alive_kind: kind.as_deref().and_then(AliveKind::parse),
                registered_until,
            })
        },
    )
    .await
}

/// The last checkpoint instant, if the gateway ever wrote one.
pub async fn last_checkpoint(pool: &AnyPool) -> Result<Option<Millis>, sqlx::Error> {
    Ok(crate::db::get_state(pool, CHECKPOINT_KEY).await?.and_then(|v| v.parse().ok()))
}

fn history_row(r: sqlx::any::AnyRow) -> Result<HistoryRow, sqlx::Error> {
    let from: String = r.try_get("from_state")?;
    let to: String = r.try_get("to_state")?;
    Ok(HistoryRow {
        device_id: r.try_get("device_id")?,
        at: r.try_get("at")?,
        from: State::parse(&from).unwrap_or(State::Unknown),
        to: State::parse(&to).unwrap_or(State::Unknown),
        reason: r.try_get("reason")?,
        detail: r.try_get("detail")?,
    })
}

/// One device's transitions in [from, to), oldest first, at most `limit`.
pub async fn history(
    pool: &AnyPool,
    device_id: &str,
    from: Millis,
    to: Millis,
    limit: i64,
) -> Result<Vec<HistoryRow>, sqlx::Error> {
    sqlx::query(
        "SELECT device_id, at, from_state, to_state, reason, detail FROM presence_transitions \
         WHERE device_id = $1 AND at >= $2 AND at < $3 ORDER BY at, seq LIMIT $4",
    )
    .bind(device_id)
    .bind(from)
    .bind(to)
    .bind(limit)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(history_row)
    .collect()
}

/// All transitions in [from, to), ordered by device then time (reports).
pub async fn transitions_between(pool: &AnyPool, from: Millis, to: Millis) -> Result<Vec<HistoryRow>, sqlx::Error> {
    sqlx::query(
        "SELECT device_id, at, from_state, to_state, reason, detail FROM presence_transitions \
         WHERE at >= $1 AND at < $2 ORDER BY device_id, at, seq",
    )
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(history_row)
    .collect()
}

/// Each device's state as of `at`: the target of its last transition before it.
pub async fn states_at(pool: &AnyPool, at: Millis) -> Result<Vec<(String, State, String)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT device_id, to_state, reason FROM (SELECT device_id, to_state, reason, \
         ROW_NUMBER() OVER (PARTITION BY device_id ORDER BY at DESC, seq DESC) AS rn \
         FROM presence_transitions WHERE at < $1) last WHERE rn = 1",
    )
    .bind(at)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| {
            let to: String = r.try_get("to_state")?;
            Ok((r.try_get("device_id")?, State::parse(&to).unwrap_or(State::Unknown), r.try_get("reason")?))
        })
        .collect()
}

/// Drops history older than `before` (retention).
pub async fn prune(pool: &AnyPool, before: Millis) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query("DELETE FROM presence_transitions WHERE at < $1").bind(before).execute(pool).await?.rows_affected())
}
