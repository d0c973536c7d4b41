//! The `events` table: batch insert (`Writer`: SQLite through `native`, PostgreSQL with
//! bound multi-row `INSERT`s; duplicates skipped by `dedup_key`), and reads for the API
//! (one device on SQLite: its folded events through `event_devices` and the tail past the
//! fold, in one statement).
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
        /// The keys committed since the last fold (empty while `conn` is `None`).
        tail: super::native::Tail,
    },
    /// PostgreSQL (and an in-memory SQLite database, which only the pool can reach).
    Pooled { conn: Option<sqlx::pool::PoolConnection<sqlx::Any>> },
}

impl Writer {
    pub fn new(db: &Db) -> Writer {
        match (&db.path, db.backend) {
            (Some(path), Backend::Sqlite) => {
                Writer::Sqlite { path: path.clone(), conn: None, tail: Default::default() }
            }
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
            Writer::Sqlite { path, conn, tail } => {
                let routes = std::sync::Arc::clone(routes);
                on_own_connection(path, conn, tail, batch, move |c, t, batch| {
                    super::native::insert(c, &rows(batch), &routes, now, t)
                })
                .await
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

impl Writer {
    /// How many committed events wait for the next fold, and since when (SQLite's own
    /// connection only; the pooled writer folds in every commit).
    pub fn unfolded(&self) -> (usize, Option<tokio::time::Instant>) {
        match self {
            Writer::Sqlite { tail, .. } => (tail.len(), tail.since()),
            Writer::Pooled { .. } => (0, None),
        }
    }

    /// Folds the events committed since the last fold into `event_keys` and `event_devices`
    /// (SQLite; nothing to do on the pooled writer). Answers how many it folded. On failure
    /// the connection is dropped, and the next commit opens one with a fold.
    pub async fn fold(&mut self) -> Result<u64, Error> {
        let Writer::Sqlite { path, conn, tail } = self else { return Ok(0) };
        on_own_connection(path, conn, tail, (), |c, t, ()| super::native::fold(c, t)).await.1
    }
}

/// Runs `job` on the SQLite writer's own connection, on a blocking thread, with the tail and
/// `input` (handed back unless the runtime shut down under the thread). A missing
/// connection is opened with a fold first: the tail of one that failed (or of a process that
/// was killed) is known only to the database. The connection and the tail are kept when the
/// job succeeds and dropped with it when it fails (the next connection folds again). A panic
/// inside is a bug; it fails this job (a batch's sources answer with an error and send
/// again), not the writer.
async fn on_own_connection<I: Send + 'static, R: Send + 'static>(
    path: &std::path::Path,
    conn: &mut Option<rusqlite::Connection>,
    tail: &mut super::native::Tail,
    input: I,
    job: impl FnOnce(&mut rusqlite::Connection, &mut super::native::Tail, &I) -> rusqlite::Result<R> + Send + 'static,
) -> (Option<I>, Result<R, Error>) {
    let c = conn.take();
    let path = path.to_owned();
    let mut t = std::mem::take(tail);
    let done = tokio::task::spawn_blocking(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut c = match c {
                Some(c) => c,
                None => {
                    let mut c = super::native::open(&path)?;
                    super::native::fold(&mut c, &mut t)?;
                    c
                }
            };
            job(&mut c, &mut t, &input).map(|r| (c, r))
        }));
        (input, t, r)
    })
    .await;
    match done {
        Ok((input, t, Ok(Ok((c, r))))) => {
            *conn = Some(c);
            *tail = t;
            (Some(input), Ok(r))
        }
        Ok((input, _, Ok(Err(e)))) => (Some(input), Err(Error::Native(e))),
        Ok((input, _, Err(_))) => (Some(input), Err(Error::Writer("the SQLite writer panicked".into()))),
        Err(e) => (None, Err(Error::Writer(format!("the SQLite writer's thread ended: {e}")))),
    }
}

/// PostgreSQL (which several instances may share, their commits interleaving): multi-row
/// `INSERT`s that return the new rows, and the delivery rows for those. An in-memory SQLite
/// database (no file for the writer's own connection) has no unique `dedup_key`: the
/// records already in `event_keys` and repeats within the batch are left out first, and the
/// commit folds what it wrote (migration 0012).
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
    let fresh: Vec<&Row> = match backend {
        Backend::Postgres => rows.to_vec(),
        Backend::Sqlite => {
            let asked = serde_json::to_string(&rows.iter().map(|r| r.event.dedup_key.as_str()).collect::<Vec<_>>())
                .unwrap_or_else(|_| "[]".into());
            let known: HashSet<String> = sqlx::query_scalar(
                "SELECT dedup_key FROM event_keys WHERE dedup_key IN (SELECT value FROM json_each($1))",
            )
            .bind(asked)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
            let mut first = HashSet::with_capacity(rows.len());
            rows.iter()
                .copied()
                .filter(|r| !known.contains(&r.event.dedup_key) && first.insert(r.event.dedup_key.as_str()))
                .collect()
        }
    };
    for chunk in fresh.chunks(ROWS_PER_STATEMENT) {
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
    if backend == Backend::Sqlite {
        let upto: i64 = sqlx::query_scalar(super::native::FOLDED_UPTO).fetch_one(&mut *tx).await?;
        let last: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM events").fetch_one(&mut *tx).await?;
        for sql in super::native::FOLD {
            sqlx::query(sql).bind(upto).execute(&mut *tx).await?;
        }
        sqlx::query(super::native::FOLD_MARK).bind(last).execute(&mut *tx).await?;
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

/// A query's text and its parameters, numbered as they are added.
#[derive(Default)]
struct Query {
    sql: String,
    params: Vec<Param>,
}

enum Param {
    Text(String),
    Int(i64),
}

impl Query {
    /// Adds `p`, answering its placeholder.
    fn param(&mut self, p: Param) -> String {
        self.params.push(p);
        format!("${}", self.params.len())
    }

    /// Appends `f`'s conditions (all but the device) on the columns `c` names.
    fn conditions(&mut self, f: &Filter, backend: Backend, c: Columns) {
        if let Some(k) = &f.kind {
            let p = self.param(Param::Text(k.clone()));
            self.sql += &format!(" AND {} = {p}", c.kind);
        }
        if let Some(o) = &f.orgs {
            let p = self.param(Param::Text(serde_json::to_string(o).unwrap_or_else(|_| "[]".into())));
            self.sql += &match backend {
                Backend::Sqlite => format!(" AND {} IN (SELECT value FROM json_each({p}))", c.org),
                Backend::Postgres => format!(" AND {} IN (SELECT json_array_elements_text({p}::json))", c.org),
            };
        }
        if let Some(s) = f.since {
            let p = self.param(Param::Int(s));
            self.sql += &format!(" AND {} >= {p}", c.occurred);
        }
        if let Some(u) = f.until {
            let p = self.param(Param::Int(u));
            self.sql += &format!(" AND {} < {p}", c.occurred);
        }
        if let Some((at, seq)) = f.before {
            let (a, b, s) = (self.param(Param::Int(at)), self.param(Param::Int(at)), self.param(Param::Int(seq)));
            self.sql += &format!(" AND ({0} < {a} OR ({0} = {b} AND {1} < {s}))", c.occurred, c.seq);
        }
    }
}

/// The columns a filter's conditions name, by the table (alias) that holds them.
#[derive(Clone, Copy)]
struct Columns {
    kind: &'static str,
    org: &'static str,
    occurred: &'static str,
    seq: &'static str,
}

const PLAIN: Columns = Columns { kind: "kind", org: "org_id", occurred: "occurred_at", seq: "seq" };

/// Events matching `f`, newest first, each with its `seq` (for the next page's cursor).
pub async fn list(db: &Db, f: &Filter) -> Result<Vec<(i64, Event)>, Error> {
    // The API asks for one more than a page (1,000 at most) to know whether another follows.
    let limit = f.limit.clamp(1, 1001);
    let mut q = Query::default();
    match (&f.device, db.backend) {
        // One device on SQLite: its folded events through `event_devices`, and the tail past
        // the fold (scanned by `seq`, never through a time index) — in one statement, so
        // both halves read one snapshot and no event is in both or in neither.
        (Some(d), Backend::Sqlite) => {
            let dev = q.param(Param::Text(d.clone()));
            q.sql = format!(
                "SELECT seq, body FROM (\
                 SELECT * FROM (SELECT e.seq AS seq, e.occurred_at AS occurred_at, e.body AS body \
                 FROM event_devices x CROSS JOIN events e ON e.seq = x.seq WHERE x.device_id = {dev}"
            );
            q.conditions(
                f,
                db.backend,
                Columns { kind: "e.kind", org: "e.org_id", occurred: "x.occurred_at", seq: "x.seq" },
            );
            q.sql += &format!(" ORDER BY x.occurred_at DESC, x.seq DESC LIMIT {limit}) UNION ALL ");
            let dev = q.param(Param::Text(d.clone()));
            q.sql += &format!(
                "SELECT * FROM (SELECT seq, occurred_at, body FROM events NOT INDEXED \
                 WHERE seq > (SELECT upto FROM event_folds WHERE id = 1) AND device_id = {dev}"
            );
            q.conditions(f, db.backend, PLAIN);
            q.sql += &format!(" ORDER BY occurred_at DESC, seq DESC LIMIT {limit})) ORDER BY occurred_at DESC, seq DESC LIMIT {limit}");
        }
        (device, _) => {
            q.sql = String::from("SELECT seq, body FROM events WHERE 1 = 1");
            if let Some(d) = device {
                let p = q.param(Param::Text(d.clone()));
                q.sql += &format!(" AND device_id = {p}");
            }
            q.conditions(f, db.backend, PLAIN);
            q.sql += &format!(" ORDER BY occurred_at DESC, seq DESC LIMIT {limit}");
        }
    }
    let mut query = sqlx::query(&q.sql);
    for p in &q.params {
        query = match p {
            Param::Text(t) => query.bind(t.as_str()),
            Param::Int(i) => query.bind(*i),
        };
    }
    let rows = query.fetch_all(&db.pool).await?;
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
