//! The embedded SQLite outbox (`sqlite://PATH`), WAL with `synchronous=FULL`, for
//! one relay.
//!
//! - `writer.rs`: the one writer thread and its group commit;
//! - `reader.rs`: the reads beside it (the publisher's, and the operator's on a
//!   thread of their own);
//! - `schema.rs`: the schema steps; `sql.rs`: every statement; `error.rs`: SQLite's
//!   error codes as faults.
//!
//! **Two tables.** A webhook is stored in `events` (body, headers, metadata),
//! which is only ever inserted into and deleted from; its publishing state (state,
//! attempts, next attempt, last error…) is a small row of the same id in
//! `deliveries`. Settles, replays and releases update only `deliveries`, so they
//! never rewrite a body: a settle logs a few small pages in the WAL, however large
//! the webhook. The fetch joins the two for the bodies of the rows it returns.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};

use super::driver::{Operate, Pipe};
use super::ingest::{self, Intake};
use super::model::count;
use super::recall::{Ledger, Results, Statement};
use super::row::{FullRow, Row};
use super::sql::{Dialect, Value};
use super::{
    Attempt, Due, EventFilter, FaultKind, InsertOutcome, Inventory, LONGEST_RETRY, Mode, NewEvent,
    OutboxError, Settlement, Stats, Window,
};
use crate::clock::now_micros;
use crate::metrics::Metrics;

mod error;
mod reader;
pub(super) mod schema;
mod sql;
mod writer;

#[cfg(feature = "testing")]
mod seed;
#[cfg(test)]
mod tests;

#[cfg(feature = "testing")]
pub(crate) use seed::{
    record_version, recorded_version, release_write_lock, rewrite_meta, seed, undo_sequences,
    write_lock,
};

use error::fault;
use reader::{Browser, Reader};
use writer::{Control, Purged};

/// The SQLite outbox handle; cheap to share.
pub(crate) struct SqliteOutbox {
    intake: Intake,
    /// Settlements and operator commands, taken into the writer's next batch ahead
    /// of the webhooks.
    controls: mpsc::Sender<Control>,
    reader: Reader,
    browser: Browser,
    path: PathBuf,
    /// Held while `serve` runs: the lock that keeps a second `serve` out.
    _serve_lock: Option<std::fs::File>,
}

/// Takes `{database}.lock` exclusively. Two relays on one SQLite file would each
/// publish the other's rows and break the order per subject, so the second refuses
/// to start. The lock dies with the process, however it ends.
fn serve_lock(path: &Path) -> Result<std::fs::File, OutboxError> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&name)
        .map_err(|e| {
            fault(
                FaultKind::Io,
                format_args!("cannot open {}: {e}", Path::new(&name).display()),
            )
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(OutboxError::InUse(path.display().to_string()))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(fault(
            FaultKind::Io,
            format_args!("cannot lock {}: {e}", Path::new(&name).display()),
        )),
    }
}

fn open_connection(path: &Path) -> Result<Connection, OutboxError> {
    let conn = Connection::open(path).map_err(|e| {
        fault(
            FaultKind::Io,
            format_args!("cannot open {}: {e}", path.display()),
        )
    })?;
    // Another process (the `outbox` CLI) may hold the write lock briefly.
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    // Off by default in SQLite, per connection: on, deleting an event deletes its
    // `deliveries` row too.
    conn.pragma_update(None, "foreign_keys", true)?;
    Ok(conn)
}

/// The writer's, the reader's and the browser's connections, and the serve lock
/// for `serve`: the outbox created (with its folder) and migrated.
fn connect(
    path: &Path,
    mode: Mode,
) -> Result<(Connection, Connection, Connection, Option<std::fs::File>), OutboxError> {
    if mode == Mode::Operate && !path.exists() {
        return Err(OutboxError::Missing(path.display().to_string()));
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| {
            fault(
                FaultKind::Io,
                format_args!("cannot create {}: {e}", parent.display()),
            )
        })?;
    }
    let held = match mode {
        Mode::Serve => Some(serve_lock(path)?),
        Mode::Operate => None,
    };
    let mut writer = open_connection(path)?;
    // An `outbox` command may run beside a `serve` of the release that made the
    // outbox: copying its table into two would pull the tables from under that
    // relay's statements (and answer every webhook with 503). So a command
    // migrates only an outbox no `serve` holds, and holds the serve lock while it
    // does.
    let _migrating = if mode == Mode::Operate && schema::has_one_table(&writer)? {
        Some(serve_lock(path).map_err(|e| match e {
            OutboxError::InUse(path) => fault(
                FaultKind::Other,
                format_args!(
                    "the outbox at {path} has the layout of an older release and a `hookrelay serve` is using it: upgrade that relay first (`serve` migrates the outbox when it starts)"
                ),
            ),
            other => other,
        })?)
    } else {
        None
    };
    schema::migrate(&mut writer)?;
    Ok((writer, open_connection(path)?, open_connection(path)?, held))
}

impl SqliteOutbox {
    /// Opens the database and starts the writer thread. For `serve`, creates file,
    /// folder and schema if absent, and takes the serve lock; for the `outbox`
    /// commands, the file must exist.
    pub(crate) async fn open(
        path: &Path,
        mode: Mode,
        metrics: Arc<Metrics>,
    ) -> Result<Self, OutboxError> {
        let opening = path.to_owned();
        let (writer, reader, browser, serve_lock) =
            tokio::task::spawn_blocking(move || connect(&opening, mode))
                .await
                .map_err(|e| fault(FaultKind::Other, e))??;
        let (intake, queue) = ingest::queue();
        let (controls, controls_rx) = mpsc::channel(writer::CONTROL_QUEUE);
        let health = intake.health().clone();
        std::thread::Builder::new()
            .name("outbox-writer".to_owned())
            .spawn(move || writer::run(writer, queue, controls_rx, &metrics, &health))
            .map_err(|e| {
                fault(
                    FaultKind::Other,
                    format_args!("cannot start the writer thread: {e}"),
                )
            })?;
        Ok(Self {
            intake,
            controls,
            reader: Reader::new(reader),
            browser: Browser::start(browser)?,
            path: path.to_owned(),
            _serve_lock: serve_lock,
        })
    }

    /// Hands `command` to the writer and waits for its answer.
    async fn write<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<T, OutboxError>>) -> Control,
    ) -> Result<T, OutboxError> {
        let (reply, answer) = oneshot::channel();
        self.controls
            .send(command(reply))
            .await
            .map_err(|_| OutboxError::Closed)?;
        answer.await.map_err(|_| OutboxError::Closed)?
    }

    /// Has the writer delete at most `limit` of `what`, older than `cutoff_us`.
    async fn purge(&self, what: Purged, cutoff_us: i64, limit: usize) -> Result<u64, OutboxError> {
        self.write(|reply| Control::Purge {
            what,
            cutoff_us,
            limit,
            reply,
        })
        .await
    }
}

#[async_trait]
impl Pipe for SqliteOutbox {
    async fn insert(&self, event: NewEvent) -> Result<InsertOutcome, OutboxError> {
        self.intake.insert(event).await
    }

    async fn fetch_due(&self, limit: usize, in_flight: &HashSet<i64>) -> Result<Due, OutboxError> {
        // In-flight rows are still pending: the query leaves them out itself (as a
        // JSON array SQLite reads with json_each), so no body of theirs is read and
        // one query fills the batch.
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let in_flight = serde_json::to_string(in_flight).map_err(|e| fault(FaultKind::Other, e))?;
        let longest = i64::try_from(LONGEST_RETRY.as_micros()).unwrap_or(i64::MAX / 2);
        self.reader
            .read(move |conn| {
                let mut due = conn.prepare_cached(&sql::fetch_due())?;
                let mut rows = due.query(params![now_micros(), limit, in_flight, longest])?;
                let mut fetched = Due::default();
                while let Some(row) = rows.next()? {
                    fetched.read(row)?;
                }
                Ok(fetched)
            })
            .await
    }

    async fn settle(&self, settlements: Arc<[Settlement]>) -> Result<(), OutboxError> {
        self.write(|reply| Control::Settle(settlements, reply))
            .await
    }

    async fn failed(&self) {
        self.intake.closed().await;
    }
}

#[async_trait]
impl Operate for SqliteOutbox {
    async fn stats(&self) -> Result<Stats, OutboxError> {
        self.reader
            .read(|conn| {
                let number = |sql: &str, state: Option<&str>| -> rusqlite::Result<u64> {
                    let n: i64 = match state {
                        Some(state) => conn.query_row(sql, [state], |r| r.get(0))?,
                        None => conn.query_row(sql, [], |r| r.get(0))?,
                    };
                    Ok(count(n))
                };
                Ok(Stats {
                    pending: number(sql::COUNT_STATE, Some("pending"))?,
                    dead: number(sql::COUNT_STATE, Some("dead"))?,
                    oldest_pending_us: conn
                        .query_row(sql::OLDEST_PENDING, [], |r| r.get(0))
                        .optional()?,
                    held_subjects: number(sql::HELD_SUBJECTS, None)?,
                    ..Stats::default()
                })
            })
            .await
    }

    async fn check_writable(&self) -> Result<(), OutboxError> {
        self.intake.health().recent_failure()?;
        let (reply, answer) = oneshot::channel();
        // A full queue is a writer too busy to take a probe now.
        self.controls
            .try_send(Control::Probe(reply))
            .map_err(|_| OutboxError::Overloaded)?;
        answer.await.map_err(|_| OutboxError::Closed)?
    }

    async fn replication(&self) -> Result<super::Replication, OutboxError> {
        Ok(super::Replication::Local)
    }

    async fn inventory(&self) -> Result<Inventory, OutboxError> {
        let stats = self.stats().await?;
        let published: i64 = self
            .reader
            .read(|conn| Ok(conn.query_row(sql::COUNT_STATE, ["published"], |r| r.get(0))?))
            .await?;
        let size_bytes = ["", "-wal"]
            .iter()
            .filter_map(|suffix| {
                let mut name = self.path.clone().into_os_string();
                name.push(suffix);
                std::fs::metadata(name).ok()
            })
            .map(|m| m.len())
            .sum();
        Ok(Inventory::from_stats(stats, count(published), size_bytes))
    }

    async fn id_range(&self) -> Result<Option<(i64, i64)>, OutboxError> {
        self.browser
            .browse(|conn| {
                Ok(conn.query_row(sql::ID_RANGE, [], |r| {
                    Ok(r.get::<_, Option<i64>>(0)?.zip(r.get::<_, Option<i64>>(1)?))
                })?)
            })
            .await
    }

    async fn find(
        &self,
        filter: &EventFilter,
        window: Window,
        limit: usize,
    ) -> Result<Vec<Row>, OutboxError> {
        let mut bound = vec![
            rusqlite::types::Value::Integer(window.above),
            rusqlite::types::Value::Integer(window.below),
            rusqlite::types::Value::Integer(i64::try_from(limit).unwrap_or(i64::MAX)),
        ];
        let (conditions, values) = filter.sql(Dialect::Sqlite, 4);
        let statement = sql::find(&conditions, filter.subject.is_some(), window.oldest_first);
        bound.extend(values.into_iter().map(sqlite_value));
        self.browser
            .browse(move |conn| {
                let mut stmt = conn.prepare_cached(&statement)?;
                let mut rows = stmt.query(rusqlite::params_from_iter(bound))?;
                let mut found = Vec::new();
                while let Some(row) = rows.next()? {
                    found.push(Row::read(row)?);
                }
                Ok(found)
            })
            .await
    }

    async fn show(&self, id: i64) -> Result<Option<FullRow>, OutboxError> {
        self.browser
            .browse(move |conn| {
                let mut stmt = conn.prepare_cached(&sql::show())?;
                let mut rows = stmt.query([id])?;
                let Some(row) = rows.next()? else {
                    return Ok(None);
                };
                let mut full = FullRow::read(row)?;
                let mut stmt = conn.prepare_cached(sql::FAILURES)?;
                let mut failures = stmt.query([id])?;
                while let Some(failure) = failures.next()? {
                    full.failures.push(Attempt::read(failure)?);
                }
                Ok(Some(full))
            })
            .await
    }

    async fn replay(&self, ids: Vec<i64>) -> Result<u64, OutboxError> {
        self.write(|reply| Control::Replay(ids, reply)).await
    }

    async fn release(&self, ids: Vec<i64>) -> Result<u64, OutboxError> {
        self.write(|reply| Control::Release(ids, reply)).await
    }

    async fn purge_published(&self, cutoff_us: i64, limit: usize) -> Result<u64, OutboxError> {
        self.purge(Purged::Published, cutoff_us, limit).await
    }

    async fn forget_subjects(&self, cutoff_us: i64, limit: usize) -> Result<u64, OutboxError> {
        self.purge(Purged::Subjects, cutoff_us, limit).await
    }
}

#[async_trait]
impl Ledger for SqliteOutbox {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    /// Through the writer thread, in a transaction of its own beside its
    /// batches: no second connection contends for the write lock.
    async fn transact(&self, statements: Vec<Statement>) -> Result<Results, OutboxError> {
        self.write(|reply| Control::Ledger(statements, reply)).await
    }
}

/// A value as rusqlite binds it.
pub(super) fn sqlite_value(value: Value) -> rusqlite::types::Value {
    match value {
        Value::Text(text) => rusqlite::types::Value::Text(text),
        Value::Int(n) => rusqlite::types::Value::Integer(n),
        Value::Bytes(bytes) => rusqlite::types::Value::Blob(bytes),
    }
}
