//! The SQLite side of the event writer: one connection of its own (rusqlite, the same
//! bundled libsqlite3 as the sqlx pool), used only from a blocking thread, that commits a
//! batch with one prepared `INSERT` stepped per row. sqlx has no statement to step many
//! times: its multi-row `INSERT`s are parsed afresh per batch, roll back through a statement
//! journal and hand every answer across threads (measured: ~32,000 → ~38,000 events/s for
//! the store alone at batches of 4,096; BENCHMARKS.md, relay). Here each step says itself
//! whether its row was new (1 row changed) or a duplicate (0), and a new row's delivery rows
//! follow it under its `seq` (their SQL is the outbox's, `outbox::store::NativeDeliveries`). Owns
//! nothing the pool does not see: same tables, same file.

use std::path::Path;

use rusqlite::{params, Connection};

use super::store::Row;
use crate::clock::Millis;

/// Opens the writer's connection to the database file the pool uses (migrations already
/// applied), with the pool's settings (`db::SQLITE_SETTINGS`; checkpointing is left to the
/// pool's checkpointer).
pub fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.set_prepared_statement_cache_capacity(8);
    for setting in crate::db::SQLITE_SETTINGS {
        conn.execute_batch(setting)?;
    }
    Ok(conn)
}

/// Commits `rows` and the delivery rows of the new ones (one per target in `routes` that
/// takes the event's kind) in one transaction; answers per row whether it was new.
pub fn insert(
    conn: &mut Connection,
    rows: &[&Row],
    routes: &crate::outbox::Routes,
    now: Millis,
) -> rusqlite::Result<Vec<bool>> {
    // IMMEDIATE: the write lock at once (a deferred transaction that read first cannot take
    // it once a checkpoint restarted the WAL).
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut new = Vec::with_capacity(rows.len());
    {
        let mut event = tx.prepare_cached(
            "INSERT INTO events (id, dedup_key, kind, source, device_id, org_id, occurred_at, received_at, body, object_id) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) ON CONFLICT DO NOTHING",
        )?;
        let mut deliveries = crate::outbox::store::NativeDeliveries::prepare(&tx)?;
        for r in rows {
            let e = &r.event;
            let kind = e.kind();
            let changed = event.execute(params![
                e.id,
                e.dedup_key,
                kind.as_str(),
                e.source,
                e.device_id,
                e.org_id,
                e.occurred_at,
                e.received_at,
                r.body,
                r.object_id,
            ])?;
            new.push(changed == 1);
            if changed == 1 {
                deliveries.add(tx.last_insert_rowid(), kind, routes, now)?;
            }
        }
    }
    tx.commit()?;
    Ok(new)
}
