//! The SQLite side of the event writer: one connection of its own (rusqlite, the same
//! bundled libsqlite3 as the sqlx pool), used only from a blocking thread, that commits a
//! batch with one prepared `INSERT` stepped per row. sqlx has no statement to step many
//! times: its multi-row `INSERT`s are parsed afresh per batch, roll back through a statement
//! journal and hand every answer across threads (measured: ~32,000 → ~38,000 events/s for
//! the store alone at batches of 4,096; BENCHMARKS.md, relay). A new row's delivery rows
//! follow it under its `seq` (their SQL is the outbox's, `outbox::store::NativeDeliveries`).
//!
//! Folds: on SQLite the record keys (`event_keys`) and the per-device index
//! (`event_devices`) are not indexes of `events` but tables a fold fills in one sorted pass
//! over the events committed since the last one (migration 0012 says why). Between folds
//! the writer remembers the keys of that tail in memory (`Tail`), so a record sent again is
//! still a duplicate; a connection is opened with a fold, so a tail lost with a failed
//! connection or a killed process is folded before anything else is written. Owns nothing
//! the pool does not see: same tables, same file.

use std::collections::HashSet;
use std::path::Path;
use std::rc::Rc;
use tokio::time::Instant;

use rusqlite::types::Value;
use rusqlite::vtab::array::Array;
use rusqlite::{params, Connection, ToSql};

use super::keys::{Keys, Lookup};
use super::store::Row;
use crate::clock::Millis;

/// Opens the writer's connection to the database file the pool uses (migrations already
/// applied), with the pool's settings (`db::SQLITE_SETTINGS`; checkpointing is left to the
/// pool's checkpointer).
pub fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.set_prepared_statement_cache_capacity(16);
    // `rarray`: a batch's record keys bound as one table.
    rusqlite::vtab::array::load_module(&conn)?;
    for setting in crate::db::SQLITE_SETTINGS {
        conn.execute_batch(setting)?;
    }
    Ok(conn)
}

/// The events committed since the last fold, as the fold will write them: what
/// `event_keys` and `event_devices` do not hold yet. Empty whenever the writer has no
/// connection (opening one folds).
#[derive(Debug, Default)]
pub struct Tail {
    /// The record keys and their `seq`.
    keys: Keys,
    /// (device, occurred_at, seq), in `seq` order until the fold sorts them.
    devices: Vec<(String, Millis, i64)>,
    /// When the oldest of them was committed.
    since: Option<Instant>,
}

impl Tail {
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    /// When the oldest unfolded event was committed (`None`: nothing to fold).
    pub fn since(&self) -> Option<Instant> {
        self.since
    }

    fn clear(&mut self) {
        self.keys.clear();
        self.devices.clear();
        // A burst's list is not kept at its largest through the quiet hours after it.
        self.devices.shrink_to(4_096);
        self.since = None;
    }

    /// Whether it holds every event past `upto` up to `last` (it does whenever this
    /// connection alone wrote since it folded; else the fold reads them back instead).
    fn covers(&self, upto: i64, last: i64) -> bool {
        match (self.devices.first(), self.devices.last()) {
            (Some((_, _, first)), Some((_, _, newest))) => *first > upto && *newest == last,
            _ => false,
        }
    }
}

/// Commits `rows` and the delivery rows of the new ones (one per target in `routes` that
/// takes the event's kind) in one transaction; answers per row whether it was new. The new
/// rows join `tail` as they are written: on an error the caller drops the connection and
/// the tail with it (the next connection folds what was committed).
pub fn insert(
    conn: &mut Connection,
    rows: &[&Row],
    routes: &crate::outbox::Routes,
    now: Millis,
    tail: &mut Tail,
) -> rusqlite::Result<Vec<bool>> {
    // IMMEDIATE: the write lock at once (a deferred transaction that read first cannot take
    // it once a checkpoint restarted the WAL).
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut new = Vec::with_capacity(rows.len());
    {
        // The batch's records already folded, in one statement for the batch (measured
        // 2026-12-07: a lookup statement per record was ~6% of the CPU per event).
        // Sorted, so that consecutive seeks land on the leaves the last one read.
        let mut asked: Vec<&str> = rows.iter().map(|r| r.event.dedup_key.as_str()).collect();
        asked.sort_unstable();
        let asked: Array = Rc::new(asked.into_iter().map(|k| Value::Text(k.to_owned())).collect());
        let mut known = tx.prepare_cached(
            "SELECT k.dedup_key FROM rarray(?1) AS a CROSS JOIN event_keys AS k ON k.dedup_key = a.value",
        )?;
        let known: HashSet<String> = known.query_map([asked], |r| r.get(0))?.collect::<Result<_, _>>()?;
        let mut event = tx.prepare_cached(
            "INSERT INTO events (id, dedup_key, kind, source, device_id, org_id, occurred_at, received_at, body, object_id) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) ON CONFLICT DO NOTHING",
        )?;
        let mut deliveries = crate::outbox::store::NativeDeliveries::prepare(&tx)?;
        for r in rows {
            let e = &r.event;
            // In the tail: committed since the last fold, or earlier in this batch.
            let Lookup::Free(slot) = tail.keys.lookup(&e.dedup_key) else {
                new.push(false);
                continue;
            };
            if known.contains(&e.dedup_key) {
                new.push(false);
                continue;
            }
            let kind = e.kind();
            // Nothing changed: the same `id` is stored (a relayed record sent again).
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
                let seq = tx.last_insert_rowid();
                tail.keys.insert(slot, e.dedup_key.clone(), seq);
                tail.devices.push((e.device_id.clone(), e.occurred_at, seq));
                tail.since.get_or_insert_with(Instant::now);
                deliveries.add(seq, kind, routes, now)?;
            }
        }
    }
    tx.commit()?;
    Ok(new)
}

/// The fold's statements when it reads the events back (a new connection's fold, or a tail
/// this connection does not hold whole), run in one transaction after `upto` is read
/// (`?1`): the tail's keys and device entries, each sorted so that the b-tree takes them in
/// order, then the new high-water mark (`FOLD_MARK`). Shared with the pooled writer
/// (`store`).
pub const FOLD: [&str; 2] = [
    "INSERT OR IGNORE INTO event_keys (dedup_key, seq) \
     SELECT dedup_key, seq FROM events WHERE seq > ?1 ORDER BY dedup_key",
    "INSERT OR IGNORE INTO event_devices (device_id, occurred_at, seq) \
     SELECT device_id, occurred_at, seq FROM events WHERE seq > ?1 ORDER BY device_id, occurred_at, seq",
];
pub const FOLD_MARK: &str = "UPDATE event_folds SET upto = ?1 WHERE id = 1";
pub const FOLDED_UPTO: &str = "SELECT upto FROM event_folds WHERE id = 1";

/// Folds every event past the mark into `event_keys` and `event_devices` and moves the mark
/// to the last one, in one transaction; empties `tail` once committed. The entries come
/// from `tail`, sorted here, when it holds them all (measured 2026-12-07: reading a fold's
/// events back and sorting them in SQLite was most of its cost); else from the events.
/// Answers how many events it folded.
pub fn fold(conn: &mut Connection, tail: &mut Tail) -> rusqlite::Result<u64> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let upto: i64 = tx.query_row(FOLDED_UPTO, [], |r| r.get(0))?;
    let last: i64 = tx.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))?;
    if last > upto {
        if tail.covers(upto, last) {
            let keys = tail.keys.sorted();
            insert_rows(&tx, "event_keys (dedup_key, seq)", &keys, |(key, seq)| [key as &dyn ToSql, seq])?;
            tail.devices.sort_unstable();
            insert_rows(&tx, "event_devices (device_id, occurred_at, seq)", &tail.devices, |(device, at, seq)| {
                [device as &dyn ToSql, at, seq]
            })?;
        } else {
            for sql in FOLD {
                tx.execute(sql, [upto])?;
            }
        }
        tx.execute(FOLD_MARK, [last])?;
    }
    tx.commit()?;
    tail.clear();
    Ok(last.saturating_sub(upto).max(0) as u64)
}

/// Rows per statement in a fold's inserts: one statement steps many rows (measured
/// 2026-12-07: a statement per row spent over a third of the fold in executing and binding).
const FOLD_ROWS_PER_STATEMENT: usize = 64;

/// `INSERT OR IGNORE INTO {into} VALUES (...), ...` of `rows`, `FOLD_ROWS_PER_STATEMENT` at a
/// time (the remainder one by one), each row's values as `values` gives them.
fn insert_rows<T, const N: usize>(
    tx: &rusqlite::Transaction<'_>,
    into: &str,
    rows: &[T],
    values: impl for<'a> Fn(&'a T) -> [&'a dyn ToSql; N],
) -> rusqlite::Result<()> {
    let statement = |n: usize| {
        let row = format!("({})", vec!["?"; N].join(", "));
        format!("INSERT OR IGNORE INTO {into} VALUES {}", vec![row; n].join(", "))
    };
    let mut chunks = rows.chunks_exact(FOLD_ROWS_PER_STATEMENT);
    if chunks.len() > 0 {
        let mut many = tx.prepare_cached(&statement(FOLD_ROWS_PER_STATEMENT))?;
        for chunk in &mut chunks {
            let bound: Vec<&dyn ToSql> = chunk.iter().flat_map(&values).collect();
            many.execute(bound.as_slice())?;
        }
    }
    let mut one = tx.prepare_cached(&statement(1))?;
    for r in chunks.remainder() {
        one.execute(values(r).as_slice())?;
    }
    Ok(())
}
