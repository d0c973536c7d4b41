//! The `events` table: batch insert (`Writer`: SQLite through `native`, PostgreSQL with
//! bound multi-row `INSERT`s; duplicates skipped by `dedup_key`), and reads for the API.
//! The whole event is kept as JSON in `body`; the columns beside it are what queries filter
//! on.

use std::collections::HashSet;

use sqlx::Row as _;

use super::Error;
use crate::clock::Millis;
use crate::db::{Backend, Db};
use crate::event::Event;

/// What `GET /api/v1/events` filters on. `orgs` is the org and its subtree, resolved by the
/// caller; empty means any org.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub kind: Option<String>,
    pub device: Option<String>,
    pub orgs: Option<Vec<String>>,
    pub since: Option<Millis>,
    pub until: Option<Millis>,
    /// Continue after this `(occurred_at, seq)` (the previous page's cursor).
    pub before: Option<(Millis, i64)>,
    pub limit: usize,
}

/// An event ready for the writer: the row's columns, with the body already serialized by
/// the submitter (so the one writer only binds).
pub struct Row {
    pub event: Event,
    pub body: String,
    /// The 48-digit GA/T 1400 id upstream knows it by (faces and vehicles).
    pub object_id: Option<String>,
}

impl Row {
    pub fn new(event: Event, object_id: Option<String>) -> Row {
        // Written into a buffer this thread keeps, then copied once at its final size:
        // `to_string` grows its buffer from 128 bytes, copying a 1.2 KB body four times on
        // the way (BENCHMARKS.md, "2026-12-07, 24cbf55 against de72d9a").
        let body = BODY.with_borrow_mut(|buf| {
            buf.clear();
            let body = match serde_json::to_writer(&mut *buf, &event) {
                Ok(()) => String::from_utf8(buf.as_slice().to_vec()).unwrap_or_default(),
                Err(_) => String::new(),
            };
            if buf.capacity() > BODY_KEPT {
                *buf = Vec::new();
            }
            body
        });
        Row { event, body, object_id }
    }
}

/// Largest buffer `Row::new` keeps between bodies (a rare large body is not held).
const BODY_KEPT: usize = 64 * 1024;

thread_local! {
    /// `Row::new`'s buffer, kept between bodies up to `BODY_KEPT`.
    static BODY: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Columns per row, and rows per statement (PostgreSQL allows 65,535 parameters).
const COLUMNS: usize = 10;
const ROWS_PER_STATEMENT: usize = 1000;

const INSERT: &str = "INSERT INTO events (id, dedup_key, kind, source, device_id, org_id, occurred_at, received_at, body, object_id) VALUES ";

fn bind_rows<'q>(sql: &'q str, chunk: &[&'q Row]) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    let mut q = sqlx::query(sql);
    for r in chunk {
        let e = &r.event;
        q = q
            .bind(e.id.as_str())
            .bind(e.dedup_key.as_str())
            .bind(e.kind().as_str())
            .bind(e.source.as_str())
            .bind(e.device_id.as_str())
            .bind(e.org_id.as_deref())
            .bind(e.occurred_at)
            .bind(e.received_at)
            .bind(r.body.as_str())
            .bind(r.object_id.as_deref());
    }
    q
}

/// The event writer's connection: SQLite's own (`native`, stepped on a blocking thread) or
/// one kept from the PostgreSQL pool. Kept across batches so its page cache stays warm;
/// dropped after a failure, so the next attempt starts on a fresh one.
pub enum Writer {
    Sqlite {
        path: std::path::PathBuf,
        conn: Option<rusqlite::Connection>,
    },
    /// PostgreSQL (and an in-memory SQLite database, which only the pool can reach).
    Pooled {
        conn: Option<sqlx::pool::PoolConnection<sqlx::Any>>,
    },
}

impl Writer {
    pub fn new(db: &Db) -> Writer {
        match (&db.path, db.backend) {
            (Some(path), Backend::Sqlite) => Writer::Sqlite { path: path.clone(), conn: None },
            _ => Writer::Pooled { conn: None },
        }
    }

    /// Commits the rows of `batch` (listed by `rows`) in one transaction, duplicates skipped
    /// by `dedup_key` or `id`, with the delivery rows of the new events to the targets in
    /// `routes`; answers per row whether it was new (a record twice in one batch is new once)
    /// and hands the batch back (`None` only when the runtime shut down under the SQLite
    /// writer's thread: the batch went with it, and its submitters see their channels close).
    pub async fn insert<B: Send + 'static>(
        &mut self,
        db: &Db,
        batch: B,
        rows: for<'a> fn(&'a B) -> Vec<&'a Row>,
        routes: &std::sync::Arc<crate::outbox::Routes>,
        now: Millis,
    ) -> (Option<B>, Result<Vec<bool>, Error>) {
        match self {
            Writer::Sqlite { path, conn } => {
                let open = match conn.take() {
                    Some(c) => Ok(c),
                    None => super::native::open(path),
                };
                let mut c = match open {
                    Ok(c) => c,
                    Err(e) => return (Some(batch), Err(Error::Native(e))),
                };
                let routes = std::sync::Arc::clone(routes);
                let done = tokio::task::spawn_blocking(move || {
                    // A panic inside is a bug; it fails this batch (its sources answer with an
                    // error and send again), not the writer.
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        super::native::insert(&mut c, &rows(&batch), &routes, now)
                    }));
                    (c, batch, r)
                })
                .await;
                match done {
                    Ok((c, batch, Ok(r))) => {
                        if r.is_ok() {
                            *conn = Some(c);
                        }
                        (Some(batch), r.map_err(Error::Native))
                    }
                    Ok((_, batch, Err(_))) => (Some(batch), Err(Error::Writer("the SQLite writer panicked".into()))),
                    Err(e) => (None, Err(Error::Writer(format!("the SQLite writer's thread ended: {e}")))),
                }
            }
            Writer::Pooled { conn } => {
                let c = match conn {
                    Some(c) => c,
                    None => match db.pool.acquire().await {
                        Ok(c) => conn.insert(c),
                        Err(e) => return (Some(batch), Err(Error::Store(e))),
                    },
                };
                let r = insert_pooled(c, db.backend, &rows(&batch), routes, now).await;
                if r.is_err() {
                    *conn = None;
                }
                (Some(batch), r.map_err(Error::Store))
            }
        }
    }
}

/// PostgreSQL (which several instances may share, their commits interleaving): multi-row
/// `INSERT`s that return the new rows, and the delivery rows for those.
async fn insert_pooled(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
    rows: &[&Row],
    routes: &crate::outbox::Routes,
    now: Millis,
) -> Result<Vec<bool>, sqlx::Error> {
    use sqlx::Connection as _;
    let mut tx = conn.begin().await?;
    let mut routed: Vec<(i64, crate::event::EventKind)> = Vec::new();
    let mut keys = HashSet::with_capacity(rows.len());
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "{INSERT}{} ON CONFLICT DO NOTHING RETURNING seq, dedup_key, kind",
            backend.values(chunk.len(), COLUMNS, 1)
        );
        for r in bind_rows(&sql, chunk).fetch_all(&mut *tx).await? {
            let seq: i64 = r.try_get("seq")?;
            let kind: String = r.try_get("kind")?;
            if let Some(k) = crate::event::EventKind::parse(&kind) {
                routed.push((seq, k));
            }
            keys.insert(r.try_get::<String, _>("dedup_key")?);
        }
    }
    if !routes.is_empty() {
        crate::outbox::store::add(&mut tx, backend, &routed, routes, now).await?;
    }
    tx.commit().await?;
    Ok(first_seen(rows, |r| keys.contains(&r.event.dedup_key)))
}

/// Per row: `stored(row)`, and not a repeat of a record earlier in the same batch.
fn first_seen(rows: &[&Row], stored: impl Fn(&Row) -> bool) -> Vec<bool> {
    let mut seen = HashSet::with_capacity(rows.len());
    rows.iter().map(|r| stored(r) && seen.insert(r.event.dedup_key.as_str())).collect()
}

fn decode(body: &str) -> Result<Event, Error> {
    serde_json::from_str(body)
        .map_err(|e| Error::Corrupt { id: body.chars().take(60).collect(), reason: e.to_string() })
}

/// Events matching `f`, newest first, each with its `seq` (for the next page's cursor).
pub async fn list(db: &Db, f: &Filter) -> Result<Vec<(i64, Event)>, Error> {
    let mut sql = String::from("SELECT seq, body FROM events WHERE 1 = 1");
    let mut n = 0;
    let mut next = || {
        n += 1;
        format!("${n}")
    };
    if f.kind.is_some() {
        sql += &format!(" AND kind = {}", next());
    }
    if f.device.is_some() {
        sql += &format!(" AND device_id = {}", next());
    }
    if f.orgs.is_some() {
        let p = next();
        sql += &match db.backend {
            Backend::Sqlite => format!(" AND org_id IN (SELECT value FROM json_each({p}))"),
            Backend::Postgres => format!(" AND org_id IN (SELECT json_array_elements_text({p}::json))"),
        };
    }
    if f.since.is_some() {
        sql += &format!(" AND occurred_at >= {}", next());
    }
    if f.until.is_some() {
        sql += &format!(" AND occurred_at < {}", next());
    }
    if f.before.is_some() {
        let (a, b, c) = (next(), next(), next());
        sql += &format!(" AND (occurred_at < {a} OR (occurred_at = {b} AND seq < {c}))");
    }
    // The API asks for one more than a page (1,000 at most) to know whether another follows.
    sql += &format!(" ORDER BY occurred_at DESC, seq DESC LIMIT {}", f.limit.clamp(1, 1001));
    let mut q = sqlx::query(&sql);
    if let Some(k) = &f.kind {
        q = q.bind(k.clone());
    }
    if let Some(d) = &f.device {
        q = q.bind(d.clone());
    }
    if let Some(o) = &f.orgs {
        q = q.bind(serde_json::to_string(o).unwrap_or_else(|_| "[]".into()));
    }
    if let Some(s) = f.since {
        q = q.bind(s);
    }
    if let Some(u) = f.until {
        q = q.bind(u);
    }
    if let Some((at, seq)) = f.before {
        q = q.bind(at).bind(at).bind(seq);
    }
    let rows = q.fetch_all(&db.pool).await?;
    rows.iter()
        .map(|r| {
            let seq: i64 = r.try_get(0)?;
            let body: String = r.try_get(1)?;
            Ok((seq, decode(&body)?))
        })
        .collect()
}

pub async fn get(db: &Db, id: &str) -> Result<Option<Event>, Error> {
    let body: Option<String> =
        sqlx::query_scalar("SELECT body FROM events WHERE id = $1").bind(id).fetch_optional(&db.pool).await?;
    body.as_deref().map(decode).transpose()
}
