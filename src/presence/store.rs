//! SQL for presence: the state rows (checkpoints), the transition log (history) and the
//! reads the reports need. Called by the presence writer task, the API and reports.

use std::sync::Arc;

use sqlx::AnyPool;
use sqlx::Row;

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

/// Writes transitions and state rows in one transaction, and the checkpoint instant.
pub async fn write_batch(
    pool: &AnyPool,
    transitions: &[Transition],
    states: &[StateRow],
    checkpoint_at: Option<Millis>,
    now: Millis,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    for chunk in transitions.chunks(400) {
        let mut sql = String::from(
            "INSERT INTO presence_transitions (device_id, at, from_state, to_state, reason, detail) VALUES ",
        );
        for i in 0..chunk.len() {
            let b = i * 6;
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!("(${},${},${},${},${},${})", b + 1, b + 2, b + 3, b + 4, b + 5, b + 6));
        }
        let mut q = sqlx::query(&sql);
        for t in chunk {
            q = q
                .bind(t.device_id.to_string())
                .bind(t.at)
                .bind(t.from.as_str())
                .bind(t.to.as_str())
                .bind(t.reason.as_str())
                .bind(t.detail.as_deref().map(str::to_owned));
        }
        q.execute(&mut *tx).await?;
    }
    for chunk in states.chunks(400) {
        let mut sql = String::from(
            "INSERT INTO presence_state (device_id, state, since, last_seen, reason, detail, alive_until, alive_kind, registered_until, updated_at) VALUES ",
        );
        for i in 0..chunk.len() {
            let b = i * 10;
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!(
                "(${},${},${},${},${},${},${},${},${},${})",
                b + 1,
                b + 2,
                b + 3,
                b + 4,
                b + 5,
                b + 6,
                b + 7,
                b + 8,
                b + 9,
                b + 10
            ));
        }
        sql.push_str(
            " ON CONFLICT (device_id) DO UPDATE SET state = excluded.state, since = excluded.since, \
             last_seen = excluded.last_seen, reason = excluded.reason, detail = excluded.detail, \
             alive_until = excluded.alive_until, alive_kind = excluded.alive_kind, \
             registered_until = excluded.registered_until, updated_at = excluded.updated_at",
        );
        let mut q = sqlx::query(&sql);
        for s in chunk {
            q = q
                .bind(s.device_id.to_string())
                .bind(s.state.as_str())
                .bind(s.since)
                .bind(s.last_seen)
                .bind(s.reason.as_str())
                .bind(s.detail.as_deref().map(str::to_owned))
                .bind(s.alive_until)
                .bind(s.alive_kind.map(AliveKind::as_str))
                .bind(s.registered_until)
                .bind(now);
        }
        q.execute(&mut *tx).await?;
    }
    if let Some(at) = checkpoint_at {
        crate::db::set_state(&mut *tx, CHECKPOINT_KEY, &at.to_string()).await?;
    }
    tx.commit().await
}

/// Every persisted state row (start-up).
pub async fn load_states(pool: &AnyPool) -> Result<Vec<StateRow>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT device_id, state, since, last_seen, reason, detail, alive_until, alive_kind, registered_until FROM presence_state",
    )
    .fetch_all(pool)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let state: String = r.try_get("state")?;
        let reason: String = r.try_get("reason")?;
        let kind: Option<String> = r.try_get("alive_kind")?;
        let detail: Option<String> = r.try_get("detail")?;
        let id: String = r.try_get("device_id")?;
        out.push(StateRow {
            device_id: Arc::from(id),
            state: State::parse(&state).unwrap_or(State::Unknown),
            since: r.try_get("since")?,
            last_seen: r.try_get("last_seen")?,
            reason: Reason::parse(&reason).unwrap_or(Reason::Added),
            detail: detail.map(Arc::from),
            alive_until: r.try_get("alive_until")?,
            alive_kind: kind.as_deref().and_then(AliveKind::parse),
            registered_until: r.try_get("registered_until")?,
        });
    }
    Ok(out)
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
