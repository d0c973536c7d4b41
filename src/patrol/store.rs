//! Patrol rounds and results in the database: a round's row when it starts and ends, its
//! results in batches as channels finish, the last round back at start, the rounds of a day
//! for the daily report, and pruning after `KEEP_MS`.

use sqlx::Row;

use super::{Item, Round};
use crate::clock::Millis;
use crate::db::Db;

/// Rounds are kept this long.
pub const KEEP_MS: Millis = 30 * 86_400_000;

pub async fn save_round(db: &Db, r: &Round) -> Result<(), sqlx::Error> {
    let counts = serde_json::to_string(&r.counts).unwrap_or_else(|_| "{}".into());
    sqlx::query(
        "INSERT INTO patrol_rounds (id, trigger, scope, started_at, ended_at, total, counts) VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (id) DO UPDATE SET ended_at = excluded.ended_at, total = excluded.total, counts = excluded.counts",
    )
    .bind(&r.id)
    .bind(&r.trigger)
    .bind(&r.scope)
    .bind(r.started_at)
    .bind(r.ended_at)
    .bind(r.total as i64)
    .bind(counts)
    .execute(&db.pool)
    .await?;
    Ok(())
}

pub async fn save_items(db: &Db, round: &str, items: &[Item]) -> Result<(), sqlx::Error> {
    let mut tx = db.pool.begin().await?;
    for i in items {
        let faults = serde_json::to_string(&i.faults).unwrap_or_else(|_| "[]".into());
        sqlx::query(
            "INSERT INTO patrol_results (round_id, device_id, channel_id, name, org_id, at, outcome, error, faults, image, first_frame_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
             ON CONFLICT (round_id, device_id, channel_id) DO UPDATE SET at = excluded.at, outcome = excluded.outcome, \
             error = excluded.error, faults = excluded.faults, image = excluded.image, first_frame_ms = excluded.first_frame_ms",
        )
        .bind(round)
        .bind(&i.device_id)
        .bind(&i.channel_id)
        .bind(&i.name)
        .bind(&i.org_id)
        .bind(i.at)
        .bind(&i.outcome)
        .bind(&i.error)
        .bind(faults)
        .bind(&i.image)
        .bind(i.first_frame_ms.map(|v| v as i64))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

fn round_of(r: &sqlx::any::AnyRow) -> Result<Round, sqlx::Error> {
    let counts: String = r.try_get("counts")?;
    Ok(Round {
        id: r.try_get("id")?,
        trigger: r.try_get("trigger")?,
        scope: r.try_get("scope")?,
        started_at: r.try_get("started_at")?,
        ended_at: r.try_get("ended_at")?,
        total: r.try_get::<i64, _>("total")?.max(0) as usize,
        done: 0,
        counts: serde_json::from_str(&counts).unwrap_or_default(),
        items: Vec::new(),
    })
}

/// The rounds that started in `[from, to)`, oldest first, without their items.
pub async fn rounds_between(db: &Db, from: Millis, to: Millis) -> Result<Vec<Round>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, trigger, scope, started_at, ended_at, total, counts FROM patrol_rounds \
         WHERE started_at >= $1 AND started_at < $2 ORDER BY started_at",
    )
    .bind(from)
    .bind(to)
    .fetch_all(&db.pool)
    .await?;
    rows.iter().map(round_of).collect()
}

/// The latest round with its items.
pub async fn last_round(db: &Db) -> Result<Option<Round>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT id, trigger, scope, started_at, ended_at, total, counts FROM patrol_rounds ORDER BY started_at DESC LIMIT 1",
    )
    .fetch_optional(&db.pool)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let mut round = round_of(&row)?;
    round.items = items(db, &round.id).await?;
    round.done = round.items.len();
    Ok(Some(round))
}

/// A round's results, by device and channel.
pub async fn items(db: &Db, round: &str) -> Result<Vec<Item>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT device_id, channel_id, name, org_id, at, outcome, error, faults, image, first_frame_ms \
         FROM patrol_results WHERE round_id = $1 ORDER BY device_id, channel_id",
    )
    .bind(round)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            let faults: Option<String> = r.try_get("faults")?;
            Ok(Item {
                device_id: r.try_get("device_id")?,
                channel_id: r.try_get("channel_id")?,
                name: r.try_get("name")?,
                org_id: r.try_get("org_id")?,
                at: r.try_get("at")?,
                outcome: r.try_get("outcome")?,
                error: r.try_get("error")?,
                faults: faults.and_then(|f| serde_json::from_str(&f).ok()).unwrap_or_default(),
                image: r.try_get("image")?,
                first_frame_ms: r.try_get::<Option<i64>, _>("first_frame_ms")?.map(|v| v.max(0) as u64),
            })
        })
        .collect()
}

/// Forgets rounds that started before `before`.
pub async fn prune(db: &Db, before: Millis) -> Result<(), sqlx::Error> {
    let mut tx = db.pool.begin().await?;
    sqlx::query("DELETE FROM patrol_results WHERE round_id IN (SELECT id FROM patrol_rounds WHERE started_at < $1)")
        .bind(before)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM patrol_rounds WHERE started_at < $1").bind(before).execute(&mut *tx).await?;
    tx.commit().await
}
