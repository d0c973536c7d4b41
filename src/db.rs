//! The database pool: one sqlx `AnyPool` over SQLite (embedded default, WAL) or PostgreSQL,
//! chosen by `database.url`, with the migrations of `migrations/<backend>/` applied at start.
//! Queries elsewhere use `$1`-style placeholders, epoch-millisecond BIGINTs, TEXT and 0/1
//! flags only, so one query text serves both backends.

use std::path::Path;
use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::AnyPool;
use sqlx::Executor;

use crate::error::ErrorKind;

/// How long a caller waits for a connection before the database counts as unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The `VALUES` list of a multi-row statement: `rows` tuples of `cols` placeholders.
    /// SQLite gets anonymous `?` (named `$N` costs a linear name lookup per parameter when
    /// the statement is parsed and bound: quadratic in a 5,000-parameter batch); PostgreSQL
    /// gets `$N`, numbered from `first`.
    pub fn values(self, rows: usize, cols: usize, first: usize) -> String {
        let mut sql = String::with_capacity(rows * (cols * 6 + 3));
        let mut n = first;
        for r in 0..rows {
            if r > 0 {
                sql.push(',');
            }
            sql.push('(');
            for c in 0..cols {
                if c > 0 {
                    sql.push(',');
                }
                match self {
                    Backend::Sqlite => sql.push('?'),
                    Backend::Postgres => {
                        sql.push('$');
                        sql.push_str(&n.to_string());
                    }
                }
                n += 1;
            }
            sql.push(')');
        }
        sql
    }
}

impl Backend {
    /// A subquery of the integers in the JSON array bound as parameter `$n`: `x IN` it takes
    /// a list of any length as one parameter (no per-item placeholders to parse and bind).
    pub fn int_list(self, n: usize) -> String {
        match self {
            Backend::Sqlite => format!("(SELECT value FROM json_each(${n}))"),
            Backend::Postgres => format!("(SELECT json_array_elements_text(${n}::json)::bigint)"),
        }
    }
}

/// The JSON array text of `ints`, for `Backend::int_list`.
pub fn json_ints(ints: &[i64]) -> String {
    serde_json::to_string(ints).unwrap_or_else(|_| "[]".into())
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("database migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot create the data directory {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error("database: {0}")]
    Query(#[from] sqlx::Error),
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Connect { .. } => ErrorKind::Unavailable,
            Error::Query(e) => sqlx_kind(e),
            _ => ErrorKind::Internal,
        }
    }
}

/// Classifies a sqlx error once: lost connections and timeouts are transient.
pub fn sqlx_kind(e: &sqlx::Error) -> ErrorKind {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => {
            ErrorKind::Unavailable
        }
        sqlx::Error::RowNotFound => ErrorKind::NotFound,
        sqlx::Error::Database(d) if d.is_unique_violation() => ErrorKind::Conflict,
        sqlx::Error::Database(d) if d.is_foreign_key_violation() => ErrorKind::Conflict,
        sqlx::Error::Database(d) => {
            // PostgreSQL: class 08 is connection trouble, 57P is an operator intervention
            // (shutdown); both pass.
            match d.code().as_deref() {
                Some(c) if c.starts_with("08") || c.starts_with("57P") => ErrorKind::Unavailable,
                _ => ErrorKind::Internal,
            }
        }
        _ => ErrorKind::Internal,
    }
}

/// Every SQLite connection's settings: the pool's and the event writer's own
/// (`events::native`).
pub const SQLITE_SETTINGS: &[&str] = &[
    // 16 KiB pages (set while the file is new; an existing database keeps its own): fewer,
    // wider b-tree pages to touch per commit (measured: +16% on the outbox commit over 4 KiB
    // in three paired runs; BENCHMARKS.md, relay).
    "PRAGMA page_size = 16384",
    "PRAGMA journal_mode = WAL",
    // FULL: a commit is on disk when it returns, so what a source acknowledged survives a
    // power cut (NORMAL in WAL mode may lose the last commits).
    "PRAGMA synchronous = FULL",
    "PRAGMA foreign_keys = ON",
    "PRAGMA busy_timeout = 5000",
    // Writes come in batches of events with several indexes: statement journals in memory, a
    // 64 MiB page cache, reads through mmap.
    "PRAGMA temp_store = MEMORY",
    "PRAGMA cache_size = -65536",
    "PRAGMA mmap_size = 268435456",
    // Checkpoints run on a connection of their own (`checkpointer`), off the event writer's
    // thread; a writer checkpoints itself only if the WAL reaches 16,384 pages (256 MiB; that
    // task stuck or gone). The WAL file is cut back only past 256 MiB: under load it grows
    // past 64 MiB before a restarting pass brings it back to its start, and a file cut back
    // to 64 MiB after each restart had the writer extend it again on every cycle (measured
    // 2026-12-07: 11% less CPU per committed MQTT event with the file kept, over six paired
    // runs; BENCHMARKS.md).
    "PRAGMA wal_autocheckpoint = 16384",
    "PRAGMA journal_size_limit = 268435456",
];

/// The pool and which backend it talks to.
#[derive(Clone, Debug)]
pub struct Db {
    pub pool: AnyPool,
    pub backend: Backend,
    /// SQLite: the database file (the event writer opens its own connection to it).
    pub path: Option<std::path::PathBuf>,
}

impl Db {
    /// Connects, prepares SQLite (WAL, foreign keys) and applies the migrations.
    pub async fn connect(url: &str, max_connections: Option<u32>) -> Result<Self, Error> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") { Backend::Sqlite } else { Backend::Postgres };
        let mut url = url.to_owned();
        let mut file = None;
        if backend == Backend::Sqlite {
            let path = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
            let path = path.split('?').next().unwrap_or_default();
            // In memory, the database is the pool's alone: no file for the writer to open.
            if !path.is_empty() && !path.contains(":memory:") && !url.contains("mode=memory") {
                file = Some(std::path::PathBuf::from(path));
            }
            if let Some(dir) = Path::new(path).parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|source| Error::DataDir { path: dir.display().to_string(), source })?;
            }
            if !url.contains("mode=") {
                url.push_str(if url.contains('?') { "&mode=rwc" } else { "?mode=rwc" });
            }
        }
        let opts = AnyPoolOptions::new()
            // SQLite: the event writer keeps one, the checkpointer takes one at times.
            .max_connections(max_connections.unwrap_or(if backend == Backend::Sqlite { 6 } else { 8 }))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        for setting in SQLITE_SETTINGS {
                            conn.execute(*setting).await?;
                        }
                    }
                    Ok(())
                })
            });
        let shown = redact(&url);
        let pool = opts.connect(&url).await.map_err(|source| Error::Connect { url: shown, source })?;
        match backend {
            Backend::Sqlite => {
                let migrator = sqlx::migrate!("./migrations/sqlite");
                announce_upgrade(&pool, &migrator).await;
                migrator.run(&pool).await?;
                tokio::spawn(checkpointer(pool.clone()));
            }
            Backend::Postgres => sqlx::migrate!("./migrations/postgres").run(&pool).await?,
        }
        Ok(Self { pool, backend, path: file })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Says so before migrations run on a database that holds events, so that a long first start
/// after an upgrade is not mistaken for a hang (SQLite's migration 0012 rebuilds the events
/// table: measured 2026-12-07, about 8 s per million events).
async fn announce_upgrade(pool: &AnyPool, migrator: &sqlx::migrate::Migrator) {
    let latest = migrator.iter().map(|m| m.version).max().unwrap_or(0);
    // A new database has neither table: nothing to say.
    let applied: Option<i64> =
        sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations").fetch_one(pool).await.ok().flatten();
    let Some(applied) = applied.filter(|v| *v < latest) else { return };
    let events: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM events").fetch_one(pool).await.unwrap_or(0);
    tracing::info!(
        from = applied,
        to = latest,
        events,
        "Upgrading the database schema; with many events stored this can take a while (about 8 s per million \
         for the events table's rebuild in 0012) and needs free disk about the events table's size."
    );
}

/// WAL size above which a checkpoint also restarts the WAL: it holds new writers back for
/// the frames the last passive pass left, then the next commit writes the WAL from its start
/// again (under steady load a passive pass never finds it idle).
const RESTART_BYTES: i64 = 64 << 20;

/// How often the checkpointer copies the WAL into the database file. A pass copies each page
/// once however many commits rewrote it since the last pass, and under load the same index
/// leaves are rewritten by every commit: once a second copies them a fifth as often as the
/// 200 ms this was until 2026-12-07 (measured then: 7% less CPU per committed MQTT event over
/// five rounds, and the outbox bench 28,052 and 29,638 events/s against 25,141 with commit
/// p99 unchanged at 55-57 ms; BENCHMARKS.md). The WAL grows further between passes: up to
/// the writer's own checkpoint at 256 MiB.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// SQLite: copies the WAL into the database file every `CHECKPOINT_EVERY` on a connection of
/// its own, so the event writer's thread only appends to the WAL (measured: the writer's own
/// checkpoints were about a tenth of its samples; BENCHMARKS.md, relay). Passive passes run
/// beside the writer; once the WAL holds more than `RESTART_BYTES`, a restarting pass brings
/// it back to its start. Ends when the pool closes.
async fn checkpointer(pool: AnyPool) {
    // The page size is the file's, fixed once it exists.
    let page: i64 = sqlx::query_scalar("PRAGMA page_size").fetch_one(&pool).await.unwrap_or(4096);
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failed = false;
    loop {
        tick.tick().await;
        if pool.is_closed() {
            break;
        }
        let r = checkpoint_pass(&pool, page).await;
        match r {
            Err(_) if pool.is_closed() => break,
            // Logged once per run of failures: the writer's own checkpoints are the fallback.
            Err(e) if !failed => {
                tracing::warn!(error = %e, "WAL checkpoint failed; the event writer checkpoints itself meanwhile.");
                failed = true;
            }
            Err(_) => {}
            Ok(()) => failed = false,
        }
    }
}

/// One pass on a pooled connection whose busy wait is short while it holds writers back.
async fn checkpoint_pass(pool: &AnyPool, page: i64) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let (_, log, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)").fetch_one(&mut *conn).await?;
    if log * page > RESTART_BYTES {
        conn.execute("PRAGMA busy_timeout = 200").await?;
        let restart =
            sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(RESTART)").fetch_one(&mut *conn).await;
        conn.execute("PRAGMA busy_timeout = 5000").await?;
        restart?;
    }
    Ok(())
}

/// A URL with its password replaced, for logs and errors.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

/// Reads a bookkeeping value (last checkpoint time, ...).
pub async fn get_state(pool: &AnyPool, key: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar::<_, String>("SELECT value FROM gateway_state WHERE key = $1")
        .bind(key)
        .fetch_optional(pool)
        .await
}

/// Writes a bookkeeping value.
pub async fn set_state<'e, E>(ex: E, key: &str, value: &str) -> Result<(), sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    sqlx::query(
        "INSERT INTO gateway_state (key, value) VALUES ($1, $2) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )
    .bind(key)
    .bind(value)
    .execute(ex)
    .await?;
    Ok(())
}

/// Rows per page of a bulk load.
const LOAD_PAGE: i64 = 20_000;

/// Loads a whole table fast: pages of rows aggregated into one JSON array each by the
/// database (`json_group_array` / `json_agg`), parsed with serde. sqlx hands rows over one
/// at a time, which costs ~10 µs a row; this costs well under 1 µs and keeps start-up with
/// 100,000 devices within its 2 s budget. `columns` are SQL expressions in the order of the
/// tuple `T`; `key` is the table's text primary key, used for paging; `convert` turns
/// each row into what the caller keeps.
pub async fn load_json_pages<T: serde::de::DeserializeOwned, U>(
    db: &Db,
    table: &str,
    key: &str,
    columns: &str,
    mut convert: impl FnMut(T) -> Result<U, sqlx::Error>,
) -> Result<Vec<U>, sqlx::Error> {
    let agg = match db.backend {
        Backend::Sqlite => format!("COALESCE(json_group_array(json_array({columns})), '[]')"),
        Backend::Postgres => format!("COALESCE(json_agg(json_build_array({columns})), '[]')::text"),
    };
    let sql = format!(
        "SELECT {agg}, MAX(k) FROM (SELECT *, {key} AS k FROM {table} WHERE {key} > $1 ORDER BY {key} LIMIT {LOAD_PAGE}) page"
    );
    let mut out = Vec::new();
    let mut after = String::new();
    loop {
        let (text, last): (String, Option<String>) = sqlx::query_as(&sql).bind(&after).fetch_one(&db.pool).await?;
        let page: Vec<T> =
            serde_json::from_str(&text).map_err(|e| sqlx::Error::Decode(format!("{table}: {e}").into()))?;
        let n = page.len();
        // Converted page by page, so only one page of raw rows is in memory at a time.
        for row in page {
            out.push(convert(row)?);
        }
        match last {
            Some(k) if n as i64 == LOAD_PAGE => after = k,
            _ => break,
        }
    }
    Ok(out)
}

/// The SQL type of a column written by `insert_json_rows`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Col {
    Text,
    BigInt,
}

/// Inserts many rows with one statement and one parameter: `rows` is a JSON array of
/// arrays (one per row, values in `columns` order) that the database unpacks itself
/// (`json_each` / `json_array_elements`). Binding thousands of parameters through sqlx
/// costs ~50 µs a row; this costs a few. `tail` is appended (e.g. `ON CONFLICT ...`).
pub async fn insert_json_rows(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    backend: Backend,
    table: &str,
    columns: &[(&str, Col)],
    rows: String,
    tail: &str,
) -> Result<(), sqlx::Error> {
    let names: Vec<&str> = columns.iter().map(|(n, _)| *n).collect();
    let values: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, (_, t))| match (backend, t) {
            (Backend::Sqlite, _) => format!("value ->> {i}"),
            (Backend::Postgres, Col::Text) => format!("e ->> {i}"),
            (Backend::Postgres, Col::BigInt) => format!("(e ->> {i})::bigint"),
        })
        .collect();
    let from = match backend {
        // `WHERE true` keeps SQLite's parser from reading ON CONFLICT as a join clause.
        Backend::Sqlite => "json_each($1) WHERE true",
        Backend::Postgres => "json_array_elements($1::json) AS e",
    };
    let sql = format!("INSERT INTO {table} ({}) SELECT {} FROM {from} {tail}", names.join(", "), values.join(", "));
    sqlx::query(&sql).bind(rows).execute(&mut **tx).await?;
    Ok(())
}
