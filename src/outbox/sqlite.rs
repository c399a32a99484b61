//! The embedded SQLite outbox (`sqlite://PATH`), WAL with `synchronous=FULL`.
//!
//! **Group commit.** Every write goes through one writer thread. It takes the first
//! command waiting, then everything else already queued (up to [`MAX_BATCH`]), runs
//! them in one transaction, commits (one WAL fsync), and only then answers each
//! caller. While a commit is syncing, new requests queue up and form the next batch:
//! the batch grows with load and no request ever waits on a timer.
//!
//! Reads (`fetch_due`, `stats`) use a second connection, which WAL lets run beside
//! the writer.
//!
//! **Two tables.** A webhook is stored in `events` (body, headers, metadata),
//! which is only ever inserted into and deleted from; its publishing state (state,
//! attempts, next attempt, last error…) is a small row of the same id in
//! `deliveries`. Settles, replays and releases update only `deliveries`, so they
//! never rewrite a body: a settle logs a few small pages in the WAL, however large
//! the webhook. The fetch joins the two for the bodies of the rows it returns.
//! The schema and its migrations from older relays: [`tables`], [`migrate`].

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::{mpsc, oneshot};

use super::{
    ATTEMPTS_KEPT, Access, Attempt, EventFilter, Fault, FaultKind, InsertHealth, InsertOutcome,
    Inventory, NewEvent, Outbox, OutboxError, PendingEvent, RowView, Settlement, Stats, Window,
    query::{Dialect, Value},
};
use crate::clock::now_micros;
use crate::event::EventMeta;
use crate::metrics::Metrics;

/// Most commands one transaction takes.
pub(crate) const MAX_BATCH: usize = 512;
/// Most settlements waiting for the writer (the publisher has at most
/// `MAX_BATCHES_IN_FLIGHT`, 8, batches in flight).
const SETTLE_QUEUE: usize = 64;
/// Most commands waiting for the writer; beyond it ingress answers 503 at once
/// instead of holding requests (and their bodies) in memory.
pub(crate) const QUEUE_CAPACITY: usize = 2048;
/// Longest wait for an insert's commit; then the webhook gets 503. Well under the
/// 10 s and more that providers wait for an answer, and over the 5 s that the
/// writer waits for another process's lock, so that case keeps its own message.
pub(crate) const INSERT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(8);
/// Queue slots webhooks may not take: kept for the publisher's settlements and the
/// operator's commands, so an ingress flood cannot starve the publisher of the
/// writer (and the outbox keep growing while nothing is marked published).
pub(crate) const RESERVED_SLOTS: usize = 64;

/// The tables of schema version 2, under the names given. A new outbox gets them
/// as `events` and `deliveries`; [`migrate`] builds them under other names beside
/// an older outbox's table, then renames them.
///
/// `events` is the webhook as received: written once by the insert, deleted by
/// retention, never updated. `deliveries` is its publishing state, one small row
/// per event with the same id: settles, replays and releases change only that
/// row, so they never rewrite (and log in the WAL) a body. `source` and `subject`
/// are copied into it so the order per subject is decided without reading
/// `events`. Its rows go with their event (`ON DELETE CASCADE`, with
/// `foreign_keys` on in every connection the relay opens).
fn tables(events: &str, deliveries: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {events} (
             id              INTEGER PRIMARY KEY AUTOINCREMENT,
             event_id        TEXT    NOT NULL,
             source          TEXT    NOT NULL,
             provider        TEXT    NOT NULL,
             idempotency_key TEXT    NOT NULL,
             subject         TEXT    NOT NULL,
             routing_key     TEXT    NOT NULL,
             meta            TEXT    NOT NULL,
             headers         TEXT    NOT NULL,
             body            BLOB    NOT NULL,
             traceparent     TEXT    NOT NULL,
             received_at     INTEGER NOT NULL,
             UNIQUE (source, idempotency_key)
         );
         CREATE TABLE IF NOT EXISTS {deliveries} (
             id                 INTEGER PRIMARY KEY REFERENCES {events} (id) ON DELETE CASCADE,
             source             TEXT    NOT NULL,
             subject            TEXT    NOT NULL,
             state              TEXT    NOT NULL DEFAULT 'pending'
                                CHECK (state IN ('pending', 'published', 'dead')),
             attempts           INTEGER NOT NULL DEFAULT 0,
             permanent_attempts INTEGER NOT NULL DEFAULT 0,
             next_attempt_at    INTEGER NOT NULL,
             last_error         TEXT,
             published_at       INTEGER,
             released_at        INTEGER
         );"
    )
}

/// The table of the write probe, unchanged since version 0.
const HEALTH: &str = "
CREATE TABLE IF NOT EXISTS health (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    probed_at INTEGER NOT NULL
);
";

/// Failed publish attempts (the last [`ATTEMPTS_KEPT`] per row), for the
/// console. Written only when a publish fails, so a healthy relay never writes
/// it; its rows go with their event.
const ATTEMPTS: &str = "
CREATE TABLE IF NOT EXISTS attempts (
    id      INTEGER NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    at      INTEGER NOT NULL,
    outcome TEXT    NOT NULL,
    error   TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS attempts_id ON attempts (id, at);
";

/// A row that holds back the later rows of its subject: pending, or dead and not
/// released by an operator. The fetch query and its index spell it the same way,
/// so SQLite can use the partial index.
const HOLDS_SUBJECT: &str = "(state = 'pending' OR (state = 'dead' AND released_at IS NULL))";

/// The indexes, created once the tables they name have their final names.
fn indexes() -> String {
    format!(
        "CREATE INDEX IF NOT EXISTS deliveries_state_id ON deliveries (state, id);
         CREATE INDEX IF NOT EXISTS deliveries_published_at ON deliveries (published_at) WHERE state = 'published';
         CREATE INDEX IF NOT EXISTS deliveries_holding_subject ON deliveries (source, subject, id) WHERE {HOLDS_SUBJECT};
         CREATE INDEX IF NOT EXISTS events_received_at ON events (received_at, id);
         CREATE INDEX IF NOT EXISTS events_subject ON events (subject, source, id);"
    )
}

/// The schema version this relay writes (`PRAGMA user_version`).
///
/// - 0: one `events` table holding both the webhook and its publishing state.
/// - 1: added `permanent_attempts` (permanent failures counted apart from
///   transient ones) and `released_at` (an operator let a dead row's subject go on).
/// - 2: the webhook in `events`, its publishing state in `deliveries` (see
///   [`tables`]).
const SCHEMA_VERSION: i64 = 2;

/// Whether `table` exists and has `column`.
fn has_column(conn: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2)",
        [table, column],
        |r| r.get(0),
    )
}

/// Whether the outbox has the one table of versions 0 and 1 (the publishing state
/// in `events`), which [`migrate`] copies into the two tables of version 2.
fn has_one_table(conn: &Connection) -> rusqlite::Result<bool> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    Ok(version < 2 && has_column(conn, "events", "state")?)
}

/// Brings an outbox to [`SCHEMA_VERSION`], in one transaction: a relay killed
/// during the migration leaves the outbox as it was, and the next start migrates
/// it again.
///
/// An outbox of version 0 or 1 has one `events` table with the publishing state
/// in it (detected by its `state` column, whatever `user_version` says). Version 0
/// first gets the two columns of version 1; then the rows are copied into the two
/// tables of version 2, made under temporary names, the old table (and its
/// indexes) is dropped and the new ones take the final names. The copy rewrites
/// every body once, so it takes time and free disk in proportion to the outbox's
/// size; later starts find version 2 and copy nothing.
fn migrate(conn: &mut Connection) -> Result<(), OutboxError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let copy = has_one_table(&tx)?;
    if copy {
        if !has_column(&tx, "events", "released_at")? {
            tx.execute_batch(
                "ALTER TABLE events ADD COLUMN permanent_attempts INTEGER NOT NULL DEFAULT 0;
                 ALTER TABLE events ADD COLUMN released_at INTEGER;",
            )?;
        }
        // Row ids must not be handed out again after the migration: rows may have
        // been purged above the highest id left, and an operator may have noted
        // ids in logs.
        let sequence: Option<i64> = tx
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = 'events'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        tx.execute_batch(&tables("events_v2", "deliveries_v2"))?;
        tx.execute_batch(
            "INSERT INTO events_v2 (id, event_id, source, provider, idempotency_key, subject,
                                    routing_key, meta, headers, body, traceparent, received_at)
             SELECT id, event_id, source, provider, idempotency_key, subject,
                    routing_key, meta, headers, body, traceparent, received_at
             FROM events ORDER BY id;
             INSERT INTO deliveries_v2 (id, source, subject, state, attempts, permanent_attempts,
                                        next_attempt_at, last_error, published_at, released_at)
             SELECT id, source, subject, state, attempts, permanent_attempts,
                    next_attempt_at, last_error, published_at, released_at
             FROM events ORDER BY id;
             DROP TABLE events;
             ALTER TABLE events_v2 RENAME TO events;
             ALTER TABLE deliveries_v2 RENAME TO deliveries;",
        )?;
        if let Some(sequence) = sequence {
            // The copy left the counter at the highest id copied (the rename
            // carried it over), or without a row if nothing was copied.
            let raised = tx.execute(
                "UPDATE sqlite_sequence SET seq = max(seq, ?1) WHERE name = 'events'",
                [sequence],
            )?;
            if raised == 0 {
                tx.execute(
                    "INSERT INTO sqlite_sequence (name, seq) VALUES ('events', ?1)",
                    [sequence],
                )?;
            }
        }
    }
    tx.execute_batch(&tables("events", "deliveries"))?;
    tx.execute_batch(HEALTH)?;
    tx.execute_batch(ATTEMPTS)?;
    tx.execute_batch(&indexes())?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    if copy {
        // The copy went through the WAL, which keeps its size once checkpointed:
        // give the space back now rather than carry a WAL as large as the outbox.
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "the outbox was migrated but its write-ahead log was not truncated");
        }
        tracing::info!(
            version = SCHEMA_VERSION,
            "outbox migrated: webhooks in `events`, their publishing state in `deliveries`"
        );
    }
    Ok(())
}

type Reply<T> = oneshot::Sender<Result<T, OutboxError>>;

enum Command {
    /// Wakes an idle writer to take the publisher's settlements, which wait in a
    /// queue of their own (never in a batch itself).
    Wake,
    Insert(Box<NewEvent>, Reply<InsertOutcome>),
    Settle(Arc<[Settlement]>, Reply<()>),
    Ping(Reply<()>),
    Release(Vec<i64>, Reply<u64>),
    Replay(Vec<i64>, Reply<u64>),
    Purge {
        cutoff_us: i64,
        limit: usize,
        reply: Reply<u64>,
    },
}

/// What one command of a committed batch produced.
enum Outcome {
    Stored(InsertOutcome),
    Count(u64),
    Done,
}

/// The SQLite outbox handle; cheap to share.
pub(crate) struct SqliteOutbox {
    writer: mpsc::Sender<Command>,
    /// The publisher's settlements: the writer takes all of them into its next
    /// batch, ahead of the webhooks queued in `writer`. Behind a full queue of
    /// webhooks they would wait a dozen commits, and every row they settle stays in
    /// flight, not fetchable, meanwhile.
    settles: mpsc::Sender<Command>,
    inserts: InsertHealth,
    /// [`INSERT_TIMEOUT`]; a field so a test can shorten it.
    insert_timeout: std::time::Duration,
    reader: Arc<Mutex<Connection>>,
    /// The operator's reads (admin API, console, `outbox` commands): run on a
    /// connection and a thread of their own (see [`browse_loop`]).
    browser: mpsc::UnboundedSender<Browse>,
    path: std::path::PathBuf,
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

impl From<rusqlite::Error> for OutboxError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode;
        let kind = match e.sqlite_error_code() {
            Some(ErrorCode::DiskFull) => FaultKind::DiskFull,
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => FaultKind::Busy,
            Some(ErrorCode::ReadOnly) => FaultKind::ReadOnly,
            Some(ErrorCode::SystemIoFailure | ErrorCode::CannotOpen) => FaultKind::Io,
            Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => FaultKind::Corrupt,
            _ => FaultKind::Other,
        };
        Self::Storage(Fault::new(kind, e.to_string()))
    }
}

/// A failure that is not the database's: a file-system call, a lost thread.
fn fault(kind: FaultKind, detail: impl std::fmt::Display) -> OutboxError {
    OutboxError::Storage(Fault::new(kind, detail.to_string()))
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

impl SqliteOutbox {
    /// Opens the database and starts the writer thread. For `serve`, creates file,
    /// folder and schema if absent, and takes the serve lock; for the `outbox`
    /// commands, the file must exist.
    pub(crate) async fn open(
        path: &Path,
        access: Access,
        metrics: Arc<Metrics>,
    ) -> Result<Self, OutboxError> {
        let db_path = path.to_owned();
        let path = path.to_owned();
        let (writer_conn, reader_conn, browser_conn, serve_lock) = tokio::task::spawn_blocking(move || {
            if access == Access::Operate && !path.exists() {
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
            let held = match access {
                Access::Serve => Some(serve_lock(&path)?),
                Access::Operate => None,
            };
            let mut writer = open_connection(&path)?;
            // An `outbox` command may run beside a `serve` of the release that made
            // the outbox: copying its table into two would pull the tables from
            // under that relay's statements (and answer every webhook with 503).
            // So a command migrates only an outbox no `serve` holds, and holds the
            // serve lock while it does.
            let _migrating = if access == Access::Operate && has_one_table(&writer)? {
                Some(serve_lock(&path).map_err(|e| match e {
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
            migrate(&mut writer)?;
            let reader = open_connection(&path)?;
            let browser = open_connection(&path)?;
            Ok::<_, OutboxError>((writer, reader, browser, held))
        })
        .await
        .map_err(|e| fault(FaultKind::Other, e))??;
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let (settles, settles_rx) = mpsc::channel(SETTLE_QUEUE);
        let inserts = InsertHealth::default();
        let health = inserts.clone();
        std::thread::Builder::new()
            .name("outbox-writer".to_owned())
            .spawn(move || writer_loop(writer_conn, rx, settles_rx, &metrics, &health))
            .map_err(|e| {
                fault(
                    FaultKind::Other,
                    format_args!("cannot start the writer thread: {e}"),
                )
            })?;
        Ok(Self {
            writer: tx,
            settles,
            inserts,
            insert_timeout: INSERT_TIMEOUT,
            reader: Arc::new(Mutex::new(reader_conn)),
            browser: start_browser(browser_conn)?,
            path: db_path,
            _serve_lock: serve_lock,
        })
    }

    /// Runs `f` on the publisher's and probes' read connection.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, OutboxError> {
        let reader = Arc::clone(&self.reader);
        tokio::task::spawn_blocking(move || {
            let conn = reader
                .lock()
                .map_err(|_| fault(FaultKind::Other, "reader connection poisoned"))?;
            Ok(f(&conn)?)
        })
        .await
        .map_err(|e| fault(FaultKind::Other, e))?
    }

    /// Runs `f` on the operator's read connection, on its low-priority thread.
    async fn browse<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, OutboxError> {
        let (reply, answer) = oneshot::channel();
        let job: Browse = Box::new(move |conn| {
            let _ = reply.send(f(conn).map_err(OutboxError::from));
        });
        self.browser.send(job).map_err(|_| OutboxError::Closed)?;
        answer.await.map_err(|_| OutboxError::Closed)?
    }
}

/// A read the operator asked for, run on the browser thread.
type Browse = Box<dyn FnOnce(&Connection) + Send>;

/// Starts the browser thread on `conn`.
fn start_browser(conn: Connection) -> Result<mpsc::UnboundedSender<Browse>, OutboxError> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("outbox-browser".to_owned())
        .spawn(move || browse_loop(&conn, rx))
        .map_err(|e| {
            fault(
                FaultKind::Other,
                format_args!("cannot start the browser thread: {e}"),
            )
        })?;
    Ok(tx)
}

/// Runs the operator's reads one after the other at the lowest CPU priority
/// (nice 19). A text search reads every body in its windows; at normal priority
/// it took a core from ingest on a busy machine (acked/s fell to 57 % during
/// back-to-back searches on two cores). At nice 19 it gets what ingest and the
/// publisher leave, and on an idle relay all of it. Ends when the outbox handle
/// is dropped.
fn browse_loop(conn: &Connection, mut jobs: mpsc::UnboundedReceiver<Browse>) {
    // On Linux, `setpriority(PRIO_PROCESS, 0, …)` sets the calling thread's nice
    // value. Best effort: a relay not allowed to lower it still works.
    // SAFETY: setpriority takes no pointers; it only reads its integer arguments.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) } != 0 {
        tracing::debug!("cannot lower the browser thread's priority");
    }
    while let Some(job) = jobs.blocking_recv() {
        job(conn);
    }
}

fn writer_loop(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Command>,
    mut settles: mpsc::Receiver<Command>,
    metrics: &Metrics,
    health: &InsertHealth,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        while let Ok(settle) = settles.try_recv() {
            batch.push(settle);
        }
        if !matches!(first, Command::Wake) {
            batch.push(first);
        }
        if batch.is_empty() {
            continue;
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(cmd) => batch.push(cmd),
                Err(_) => break,
            }
        }
        let inserts = batch
            .iter()
            .filter(|c| matches!(c, Command::Insert(..)))
            .count();
        match apply_batch(&mut conn, &batch) {
            Ok(outcomes) => {
                for (cmd, outcome) in batch.drain(..).zip(outcomes) {
                    match (cmd, outcome) {
                        (Command::Insert(_, reply), Outcome::Stored(stored)) => {
                            let _ = reply.send(Ok(stored));
                        }
                        (Command::Purge { reply, .. }, Outcome::Count(n))
                        | (Command::Release(_, reply), Outcome::Count(n))
                        | (Command::Replay(_, reply), Outcome::Count(n)) => {
                            let _ = reply.send(Ok(n));
                        }
                        (Command::Settle(_, reply), _) | (Command::Ping(reply), _) => {
                            let _ = reply.send(Ok(()));
                        }
                        (Command::Wake, _) => {}
                        (Command::Insert(_, reply), _) => {
                            let _ = reply.send(Err(fault(
                                FaultKind::Other,
                                "internal: insert without outcome",
                            )));
                        }
                        (Command::Purge { reply, .. }, _)
                        | (Command::Release(_, reply), _)
                        | (Command::Replay(_, reply), _) => {
                            let _ = reply.send(Err(fault(
                                FaultKind::Other,
                                "internal: write without a count",
                            )));
                        }
                    }
                }
                if inserts > 0 {
                    metrics.outbox_commit_batch_size.observe(inserts as f64);
                    health.succeeded();
                }
            }
            Err(e) => {
                tracing::error!(error = %e, commands = batch.len(), "outbox commit failed; every request in the batch gets 503");
                let err = OutboxError::from(e);
                metrics
                    .outbox_commit_failures
                    .with_label_values(&[err.reason()])
                    .inc();
                if inserts > 0 {
                    health.failed(&err);
                }
                for cmd in batch.drain(..) {
                    match cmd {
                        Command::Wake => {}
                        Command::Insert(_, reply) => {
                            let _ = reply.send(Err(err.clone()));
                        }
                        Command::Settle(_, reply) | Command::Ping(reply) => {
                            let _ = reply.send(Err(err.clone()));
                        }
                        Command::Purge { reply, .. }
                        | Command::Release(_, reply)
                        | Command::Replay(_, reply) => {
                            let _ = reply.send(Err(err.clone()));
                        }
                    }
                }
            }
        }
    }
}

/// Runs a batch in one transaction. On any error nothing is committed and every
/// caller is told so: an ack is never sent for a row that is not on disk.
fn apply_batch(conn: &mut Connection, batch: &[Command]) -> rusqlite::Result<Vec<Outcome>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut outcomes = Vec::with_capacity(batch.len());
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO events (event_id, source, provider, idempotency_key, subject, routing_key, meta,
                                 headers, body, traceparent, received_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
             ON CONFLICT (source, idempotency_key) DO NOTHING",
        )?;
        let mut deliver = tx.prepare_cached(
            "INSERT INTO deliveries (id, source, subject, next_attempt_at) VALUES (?1, ?2, ?3, ?4)",
        )?;
        let mut published = tx.prepare_cached(
            "UPDATE deliveries SET state = 'published', attempts = attempts + 1, last_error = NULL,
                                   published_at = ?2
             WHERE id = ?1 AND state = 'pending'",
        )?;
        let mut retry = tx.prepare_cached(
            "UPDATE deliveries SET attempts = attempts + 1, permanent_attempts = permanent_attempts + ?4,
                                   last_error = ?2, next_attempt_at = ?3
             WHERE id = ?1 AND state = 'pending'",
        )?;
        let mut dead = tx.prepare_cached(
            "UPDATE deliveries SET state = 'dead', attempts = attempts + 1,
                                   permanent_attempts = permanent_attempts + 1, last_error = ?2
             WHERE id = ?1 AND state = 'pending'",
        )?;
        let mut failure = tx.prepare_cached(
            "INSERT INTO attempts (id, at, outcome, error) VALUES (?1, ?2, ?3, ?4)",
        )?;
        let mut trim = tx.prepare_cached(
            "DELETE FROM attempts WHERE rowid IN (
                 SELECT rowid FROM attempts WHERE id = ?1 ORDER BY at DESC LIMIT -1 OFFSET ?2)",
        )?;
        let now_us = now_micros();
        for cmd in batch {
            match cmd {
                Command::Insert(ev, _) => {
                    let meta = serde_json::to_string(&ev.meta)
                        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
                    let changed = insert.execute(params![
                        ev.meta.id,
                        ev.meta.source,
                        ev.meta.provider,
                        ev.meta.idempotency_key,
                        ev.meta.subject,
                        ev.meta.routing_key(),
                        meta,
                        ev.headers_json,
                        &ev.body[..],
                        ev.traceparent,
                        ev.received_at_us,
                    ])?;
                    let stored = if changed == 0 {
                        InsertOutcome::Duplicate
                    } else {
                        // The row was inserted just now, so the last rowid is
                        // its id (on a duplicate it would be an older row's).
                        deliver.execute(params![
                            tx.last_insert_rowid(),
                            ev.meta.source,
                            ev.meta.subject,
                            ev.received_at_us,
                        ])?;
                        InsertOutcome::Inserted
                    };
                    outcomes.push(Outcome::Stored(stored));
                }
                Command::Wake => outcomes.push(Outcome::Done),
                Command::Settle(settlements, _) => {
                    for s in settlements.iter() {
                        match s {
                            Settlement::Published { id } => {
                                published.execute(params![id, now_us])?;
                            }
                            Settlement::Retry {
                                id,
                                error,
                                next_attempt_at_us,
                                permanent,
                            } => {
                                if retry.execute(params![
                                    id,
                                    error,
                                    next_attempt_at_us,
                                    i64::from(*permanent)
                                ])? > 0
                                {
                                    failure.execute(params![id, now_us, "retry", error])?;
                                    trim.execute(params![id, ATTEMPTS_KEPT])?;
                                }
                            }
                            Settlement::Dead { id, error } => {
                                if dead.execute(params![id, error])? > 0 {
                                    failure.execute(params![id, now_us, "dead", error])?;
                                    trim.execute(params![id, ATTEMPTS_KEPT])?;
                                }
                            }
                        }
                    }
                    outcomes.push(Outcome::Done);
                }
                Command::Ping(_) => {
                    // A real write, so a probe fails where inserts would.
                    tx.execute(
                        "INSERT INTO health (id, probed_at) VALUES (1, ?1)
                         ON CONFLICT (id) DO UPDATE SET probed_at = excluded.probed_at",
                        [now_us],
                    )?;
                    outcomes.push(Outcome::Done);
                }
                Command::Replay(ids, _) => {
                    // Attempts restart from zero so the retry schedule and the
                    // dead-letter bound start afresh; `last_error` is kept for the
                    // record.
                    let mut again = tx.prepare_cached(
                        "UPDATE deliveries SET state = 'pending', attempts = 0, permanent_attempts = 0,
                                               next_attempt_at = ?1, published_at = NULL,
                                               released_at = NULL
                         WHERE id = ?2 AND state != 'pending'",
                    )?;
                    let mut n = 0;
                    for id in ids {
                        n += again.execute(params![now_us, id])? as u64;
                    }
                    outcomes.push(Outcome::Count(n));
                }
                Command::Release(ids, _) => {
                    let mut release = tx.prepare_cached(
                        "UPDATE deliveries SET released_at = ?2
                         WHERE id = ?1 AND state = 'dead' AND released_at IS NULL",
                    )?;
                    let mut n = 0;
                    for id in ids {
                        n += release.execute(params![id, now_us])? as u64;
                    }
                    outcomes.push(Outcome::Count(n));
                }
                Command::Purge {
                    cutoff_us, limit, ..
                } => {
                    let limit = i64::try_from(*limit).unwrap_or(i64::MAX);
                    // The `deliveries` rows go with their events (ON DELETE
                    // CASCADE); the count is of events.
                    let n = tx.execute(
                        "DELETE FROM events WHERE id IN (
                             SELECT id FROM deliveries WHERE state = 'published' AND published_at < ?1
                             ORDER BY id LIMIT ?2)",
                        params![cutoff_us, limit],
                    )?;
                    outcomes.push(Outcome::Count(n as u64));
                }
            }
        }
    }
    tx.commit()?;
    Ok(outcomes)
}

/// What `find` and `show` read, from `events e JOIN deliveries d` (in the order
/// [`row_view`] reads it).
const ROW_COLUMNS: &str =
    "d.id, e.event_id, d.source, e.provider, e.routing_key, d.state, d.attempts, d.last_error,
     e.received_at, d.next_attempt_at, d.published_at, e.idempotency_key, d.permanent_attempts,
     d.released_at, e.subject, e.meta";

fn row_view(row: &rusqlite::Row<'_>) -> rusqlite::Result<RowView> {
    let time = super::shown_time;
    Ok(RowView {
        id: row.get(0)?,
        event_id: row.get(1)?,
        source: row.get(2)?,
        provider: row.get(3)?,
        routing_key: row.get(4)?,
        state: row.get(5)?,
        attempts: row.get(6)?,
        last_error: row.get(7)?,
        received_at: time(row.get(8)?),
        next_attempt_at: time(row.get(9)?),
        published_at: row.get::<_, Option<i64>>(10)?.map(time),
        idempotency_key: row.get(11)?,
        permanent_attempts: row.get(12)?,
        released_at: row.get::<_, Option<i64>>(13)?.map(time),
        subject: row.get(14)?,
        kind: String::new(),
        status: String::new(),
        provider_status: None,
        amount: None,
        currency: None,
        headers: None,
        body: None,
        traceparent: None,
        failures: None,
        meta: None,
    }
    .with_meta(&row.get::<_, String>(15)?))
}

/// A filter value as SQLite binds it.
fn bind(value: &Value) -> rusqlite::types::Value {
    match value {
        Value::Text(text) => rusqlite::types::Value::Text(text.clone()),
        Value::Int(n) => rusqlite::types::Value::Integer(*n),
        Value::Bytes(bytes) => rusqlite::types::Value::Blob(bytes.clone()),
    }
}

#[async_trait]
impl Outbox for SqliteOutbox {
    async fn insert(&self, event: NewEvent) -> Result<InsertOutcome, OutboxError> {
        let (reply, rx) = oneshot::channel();
        let permit = self.writer.try_reserve().map_err(|e| match e {
            mpsc::error::TrySendError::Full(()) => OutboxError::Overloaded,
            mpsc::error::TrySendError::Closed(()) => OutboxError::Closed,
        })?;
        // With this permit held, fewer than RESERVED_SLOTS free slots means the
        // queue is into the publisher's reserve.
        if self.writer.capacity() < RESERVED_SLOTS {
            return Err(OutboxError::Overloaded);
        }
        permit.send(Command::Insert(Box::new(event), reply));
        super::await_commit(rx, self.insert_timeout).await
    }

    async fn fetch_due(
        &self,
        now_us: i64,
        limit: usize,
        in_flight: &HashSet<i64>,
    ) -> Result<Vec<PendingEvent>, OutboxError> {
        // In-flight rows are still pending: the query leaves them out itself (as a
        // JSON array SQLite reads with json_each), so no body of theirs is read and
        // one query fills the batch.
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let in_flight = serde_json::to_string(in_flight).map_err(|e| fault(FaultKind::Other, e))?;
        let rows = self
            .read(move |conn| {
                // A row waits while an older row of its subject is pending, or dead
                // and not released: the order per subject holds. The rows are chosen
                // in `deliveries` alone; CROSS JOIN keeps SQLite from walking `events`
                // instead, so only the bodies of the rows returned are read.
                let mut due = conn.prepare_cached(&format!(
                    "SELECT d.id, e.meta, e.body, e.received_at, e.traceparent, d.attempts,
                            d.permanent_attempts
                     FROM deliveries d CROSS JOIN events e ON e.id = d.id
                     WHERE d.state = 'pending' AND d.next_attempt_at <= ?1
                       AND d.id NOT IN (SELECT value FROM json_each(?3))
                       AND NOT EXISTS (SELECT 1 FROM deliveries o
                                       WHERE {HOLDS_SUBJECT} AND o.source = d.source
                                         AND o.subject = d.subject AND o.id < d.id)
                     ORDER BY d.id
                     LIMIT ?2"
                ))?;
                let rows = due.query_map(params![now_us, limit, in_flight], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, u32>(5)?,
                        r.get::<_, u32>(6)?,
                    ))
                })?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        rows.into_iter()
            .map(
                |(id, meta, body, received_at_us, traceparent, attempts, permanent_attempts)| {
                    let meta: EventMeta = serde_json::from_str(&meta).map_err(|e| {
                        fault(
                            FaultKind::Corrupt,
                            format_args!("row {id} has unreadable metadata: {e}"),
                        )
                    })?;
                    Ok(PendingEvent {
                        id,
                        meta,
                        body,
                        received_at_us,
                        traceparent,
                        attempts,
                        permanent_attempts,
                    })
                },
            )
            .collect()
    }

    async fn settle(&self, settlements: Arc<[Settlement]>) -> Result<(), OutboxError> {
        let (reply, rx) = oneshot::channel();
        self.settles
            .send(Command::Settle(settlements, reply))
            .await
            .map_err(|_| OutboxError::Closed)?;
        // A busy writer takes it with its next batch anyway; an idle one is woken.
        // Full means busy: nothing to wake.
        if let Err(mpsc::error::TrySendError::Closed(_)) = self.writer.try_send(Command::Wake) {
            return Err(OutboxError::Closed);
        }
        rx.await.map_err(|_| OutboxError::Closed)?
    }

    async fn stats(&self) -> Result<Stats, OutboxError> {
        self.read(|conn| {
            let count = |state: &str| {
                conn.query_row(
                    "SELECT COUNT(*) FROM deliveries WHERE state = ?1",
                    [state],
                    |r| r.get::<_, i64>(0),
                )
                .map(|n| u64::try_from(n).unwrap_or(0))
            };
            let oldest_pending_us = conn
                .query_row(
                    "SELECT e.received_at FROM deliveries d CROSS JOIN events e ON e.id = d.id
                     WHERE d.state = 'pending' ORDER BY d.id LIMIT 1",
                    [],
                    |r| r.get::<_, i64>(0),
                )
                .optional()?;
            let held_subjects = conn.query_row(
                "SELECT COUNT(*) FROM (SELECT DISTINCT source, subject FROM deliveries
                                       WHERE state = 'dead' AND released_at IS NULL)",
                [],
                |r| r.get::<_, i64>(0),
            )?;
            Ok(Stats {
                pending: count("pending")?,
                dead: count("dead")?,
                oldest_pending_us,
                held_subjects: u64::try_from(held_subjects).unwrap_or(0),
                ..Stats::default()
            })
        })
        .await
    }

    async fn inventory(&self) -> Result<Inventory, OutboxError> {
        let stats = self.stats().await?;
        let published = self
            .read(|conn| {
                conn.query_row(
                    "SELECT COUNT(*) FROM deliveries WHERE state = 'published'",
                    [],
                    |r| r.get::<_, i64>(0),
                )
            })
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
        Ok(Inventory::from_stats(
            stats,
            u64::try_from(published).unwrap_or(0),
            size_bytes,
        ))
    }

    async fn id_range(&self) -> Result<Option<(i64, i64)>, OutboxError> {
        self.browse(|conn| {
            // Two subqueries: SQLite reads min() or max() off the index only when
            // it is alone in its query; together they scan the table.
            conn.query_row(
                "SELECT (SELECT min(id) FROM deliveries), (SELECT max(id) FROM deliveries)",
                [],
                |r| Ok(r.get::<_, Option<i64>>(0)?.zip(r.get::<_, Option<i64>>(1)?)),
            )
        })
        .await
    }

    async fn find(
        &self,
        filter: &EventFilter,
        window: Window,
        limit: usize,
    ) -> Result<Vec<RowView>, OutboxError> {
        let (conditions, values) = filter.sql(Dialect::Sqlite, 4);
        let order = if window.oldest_first { "ASC" } else { "DESC" };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut bound = vec![
            rusqlite::types::Value::Integer(window.above),
            rusqlite::types::Value::Integer(window.below),
            rusqlite::types::Value::Integer(limit),
        ];
        bound.extend(values.iter().map(bind));
        // CROSS JOIN fixes the order SQLite walks the tables in: a subject is
        // found through `events_subject`, so `events` goes first; every other
        // filter walks ids (or the state index) in `deliveries`.
        let tables = if filter.subject.is_some() {
            "events e CROSS JOIN deliveries d ON d.id = e.id"
        } else {
            "deliveries d CROSS JOIN events e ON e.id = d.id"
        };
        self.browse(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {ROW_COLUMNS} FROM {tables}
                 WHERE d.id > ?1 AND d.id < ?2 AND e.id > ?1 AND e.id < ?2 AND {conditions}
                 ORDER BY d.id {order} LIMIT ?3"
            ))?;
            let rows = stmt.query_map(rusqlite::params_from_iter(bound), row_view)?;
            rows.collect()
        })
        .await
    }

    async fn show(&self, id: i64) -> Result<Option<RowView>, OutboxError> {
        self.browse(move |conn| {
            conn.query_row(
                &format!(
                    "SELECT {ROW_COLUMNS}, e.headers, e.body, e.traceparent
                     FROM deliveries d CROSS JOIN events e ON e.id = d.id WHERE d.id = ?1"
                ),
                [id],
                |row| {
                    let mut view = row_view(row)?;
                    let headers: String = row.get(16)?;
                    view.headers = serde_json::from_str(&headers).ok();
                    view.body = Some(row.get(17)?);
                    view.traceparent = Some(row.get(18)?);
                    Ok(view)
                },
            )
            .optional()?
            .map(|mut view| {
                let mut stmt = conn.prepare_cached(
                    "SELECT at, outcome, error FROM attempts WHERE id = ?1 ORDER BY at, rowid",
                )?;
                let failures = stmt.query_map([id], |r| {
                    Ok(Attempt {
                        at: super::shown_time(r.get(0)?),
                        outcome: r.get(1)?,
                        error: r.get(2)?,
                    })
                })?;
                view.failures = Some(failures.collect::<rusqlite::Result<_>>()?);
                Ok(view)
            })
            .transpose()
        })
        .await
    }

    async fn replay(&self, ids: Vec<i64>) -> Result<u64, OutboxError> {
        let (reply, rx) = oneshot::channel();
        self.writer
            .send(Command::Replay(ids, reply))
            .await
            .map_err(|_| OutboxError::Closed)?;
        rx.await.map_err(|_| OutboxError::Closed)?
    }

    async fn release(&self, ids: Vec<i64>) -> Result<u64, OutboxError> {
        let (reply, rx) = oneshot::channel();
        self.writer
            .send(Command::Release(ids, reply))
            .await
            .map_err(|_| OutboxError::Closed)?;
        rx.await.map_err(|_| OutboxError::Closed)?
    }

    async fn purge_published(&self, cutoff_us: i64, limit: usize) -> Result<u64, OutboxError> {
        let (reply, rx) = oneshot::channel();
        self.writer
            .send(Command::Purge {
                cutoff_us,
                limit,
                reply,
            })
            .await
            .map_err(|_| OutboxError::Closed)?;
        rx.await.map_err(|_| OutboxError::Closed)?
    }

    async fn failed(&self) {
        // The writer thread owns the receiver: it is dropped when the thread ends,
        // by return or by panic.
        self.writer.closed().await;
    }

    async fn check_writable(&self) -> Result<(), OutboxError> {
        self.inserts.recent_failure()?;
        let (reply, rx) = oneshot::channel();
        self.writer
            .try_send(Command::Ping(reply))
            .map_err(|_| OutboxError::Overloaded)?;
        rx.await.map_err(|_| OutboxError::Closed)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Origin, Parsed};

    /// A new outbox as `serve` opens it, in a folder of its own: the folder (keep
    /// it alive), the database file, the outbox.
    async fn served() -> (tempfile::TempDir, std::path::PathBuf, SqliteOutbox) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("o.db");
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let outbox = SqliteOutbox::open(&path, Access::Serve, metrics)
            .await
            .expect("open");
        (dir, path, outbox)
    }

    fn event(body: &str) -> NewEvent {
        let origin = Origin {
            provider: "whitepay",
            source: "whitepay",
            routing_prefix: "whitepay",
            redact: &[],
        };
        let parsed = Parsed::unrecognized("test", None);
        let received = time::OffsetDateTime::now_utc();
        NewEvent {
            meta: EventMeta::new(&origin, &parsed, body.as_bytes(), received),
            headers_json: "{}".to_owned(),
            body: bytes::Bytes::copy_from_slice(body.as_bytes()),
            received_at_us: crate::clock::micros(received),
            traceparent: String::new(),
        }
    }

    #[tokio::test]
    async fn rows_in_flight_are_skipped_and_the_batch_still_fills() {
        let (_dir, _, outbox) = served().await;
        for body in ["a", "b", "c", "d"] {
            outbox.insert(event(body)).await.expect("insert");
        }
        let due = |in_flight: HashSet<i64>| {
            let outbox = &outbox;
            async move {
                outbox
                    .fetch_due(i64::MAX, 2, &in_flight)
                    .await
                    .expect("fetch")
                    .iter()
                    .map(|row| row.id)
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(due(HashSet::new()).await, vec![1, 2]);
        assert_eq!(due(HashSet::from([1, 2])).await, vec![3, 4]);
        assert_eq!(due(HashSet::from([1, 3])).await, vec![2, 4]);
    }

    #[tokio::test]
    async fn a_dead_row_holds_its_subject_until_released_or_replayed() {
        let (_dir, path, outbox) = served().await;
        for body in ["first", "second", "third"] {
            outbox.insert(event(body)).await.expect("insert");
        }
        // Rows 1 and 2 share a subject; row 1 went dead.
        Connection::open(&path)
            .expect("open")
            .execute_batch(
                "UPDATE events SET subject = 'order-1' WHERE id IN (1, 2);
                 UPDATE deliveries SET subject = 'order-1' WHERE id IN (1, 2);
                 UPDATE deliveries SET state = 'dead' WHERE id = 1;",
            )
            .expect("arrange");
        let due = || async {
            outbox
                .fetch_due(i64::MAX, 10, &HashSet::new())
                .await
                .expect("fetch")
                .iter()
                .map(|row| row.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(due().await, vec![3], "row 2 waits behind dead row 1");
        assert_eq!(outbox.stats().await.expect("stats").held_subjects, 1);
        assert_eq!(outbox.release(vec![1, 3]).await.expect("release"), 1);
        assert_eq!(due().await, vec![2, 3], "released: row 2 goes on");
        assert_eq!(outbox.stats().await.expect("stats").held_subjects, 0);
        assert_eq!(
            outbox.stats().await.expect("stats").dead,
            1,
            "row 1 stays dead"
        );
    }

    #[tokio::test]
    async fn an_outbox_of_an_older_relay_is_migrated_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("o.db");
        // The schema before version 1: no permanent_attempts, no released_at.
        let conn = Connection::open(&path).expect("open");
        conn.execute_batch(
            "CREATE TABLE events (
                id INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL,
                source TEXT NOT NULL, provider TEXT NOT NULL,
                idempotency_key TEXT NOT NULL, subject TEXT NOT NULL,
                routing_key TEXT NOT NULL, meta TEXT NOT NULL, headers TEXT NOT NULL,
                body BLOB NOT NULL, traceparent TEXT NOT NULL,
                received_at INTEGER NOT NULL, state TEXT NOT NULL DEFAULT 'pending',
                attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at INTEGER NOT NULL,
                last_error TEXT, published_at INTEGER,
                UNIQUE (source, idempotency_key));
             CREATE INDEX events_pending_subject ON events (source, subject, id)
                WHERE state = 'pending';",
        )
        .expect("old schema");
        // A dead row of that relay goes through versions 1 and 2.
        let old = event("before");
        conn.execute(
            "INSERT INTO events (event_id, source, provider, idempotency_key, subject, routing_key,
                                 meta, headers, body, traceparent, received_at, state, attempts,
                                 next_attempt_at, last_error)
             VALUES (?1, ?2, ?3, ?4, ?5, 'rk', ?6, '{}', ?7, '', 1, 'dead', 3, 1, 'too large')",
            params![
                old.meta.id,
                old.meta.source,
                old.meta.provider,
                old.meta.idempotency_key,
                old.meta.subject,
                serde_json::to_string(&old.meta).expect("meta"),
                &old.body[..],
            ],
        )
        .expect("old row");
        drop(conn);
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let outbox = SqliteOutbox::open(&path, Access::Serve, metrics)
            .await
            .expect("open migrates");
        let dead = outbox.show(1).await.expect("show").expect("row 1");
        assert_eq!(
            (dead.state.as_str(), dead.attempts, dead.permanent_attempts),
            ("dead", 3, 0)
        );
        assert_eq!(dead.last_error.as_deref(), Some("too large"));
        assert_eq!(dead.body.as_deref(), Some(&b"before"[..]));
        assert_eq!(
            outbox.insert(event("after")).await.expect("insert"),
            InsertOutcome::Inserted
        );
        assert_eq!(outbox.release(vec![1, 2]).await.expect("release"), 1);
        let version: i64 = Connection::open(&path)
            .expect("open")
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .expect("version");
        assert_eq!(version, SCHEMA_VERSION);
    }

    /// The schema of the previous release (version 1), as it made a new outbox.
    const V1_SCHEMA: &str = "
        CREATE TABLE events (
            id                 INTEGER PRIMARY KEY AUTOINCREMENT,
            event_id           TEXT    NOT NULL,
            source             TEXT    NOT NULL,
            provider           TEXT    NOT NULL,
            idempotency_key    TEXT    NOT NULL,
            subject            TEXT    NOT NULL,
            routing_key        TEXT    NOT NULL,
            meta               TEXT    NOT NULL,
            headers            TEXT    NOT NULL,
            body               BLOB    NOT NULL,
            traceparent        TEXT    NOT NULL,
            received_at        INTEGER NOT NULL,
            state              TEXT    NOT NULL DEFAULT 'pending'
                               CHECK (state IN ('pending', 'published', 'dead')),
            attempts           INTEGER NOT NULL DEFAULT 0,
            permanent_attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at    INTEGER NOT NULL,
            last_error         TEXT,
            published_at       INTEGER,
            released_at        INTEGER,
            UNIQUE (source, idempotency_key)
        );
        CREATE TABLE health (
            id        INTEGER PRIMARY KEY CHECK (id = 1),
            probed_at INTEGER NOT NULL
        );
        CREATE INDEX events_state_id ON events (state, id);
        CREATE INDEX events_published_at ON events (published_at) WHERE state = 'published';
        CREATE INDEX events_holding_subject ON events (source, subject, id)
            WHERE (state = 'pending' OR (state = 'dead' AND released_at IS NULL));
        CREATE INDEX events_received_at ON events (received_at, id);
        PRAGMA user_version = 1;";

    /// A row of a version-1 outbox: the webhook and its publishing state.
    struct V1Row {
        event: NewEvent,
        id: i64,
        state: &'static str,
        attempts: u32,
        permanent_attempts: u32,
        next_attempt_at: i64,
        last_error: Option<&'static str>,
        published_at: Option<i64>,
        released_at: Option<i64>,
    }

    impl V1Row {
        fn insert(&self, conn: &Connection) {
            let ev = &self.event;
            conn.execute(
                "INSERT INTO events (id, event_id, source, provider, idempotency_key, subject,
                                     routing_key, meta, headers, body, traceparent, received_at,
                                     state, attempts, permanent_attempts, next_attempt_at,
                                     last_error, published_at, released_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                         ?17, ?18, ?19)",
                params![
                    self.id,
                    ev.meta.id,
                    ev.meta.source,
                    ev.meta.provider,
                    ev.meta.idempotency_key,
                    ev.meta.subject,
                    ev.meta.routing_key(),
                    serde_json::to_string(&ev.meta).expect("meta"),
                    ev.headers_json,
                    &ev.body[..],
                    ev.traceparent,
                    ev.received_at_us,
                    self.state,
                    self.attempts,
                    self.permanent_attempts,
                    self.next_attempt_at,
                    self.last_error,
                    self.published_at,
                    self.released_at,
                ],
            )
            .expect("v1 row");
        }

        /// The row as `show` must present it.
        fn view(&self) -> serde_json::Value {
            let time =
                |us: i64| crate::event::rfc3339(crate::clock::from_micros(us).expect("time"));
            let ev = &self.event;
            serde_json::to_value(
                RowView {
                    id: self.id,
                    event_id: ev.meta.id.clone(),
                    source: ev.meta.source.clone(),
                    provider: ev.meta.provider.clone(),
                    routing_key: ev.meta.routing_key(),
                    state: self.state.to_owned(),
                    attempts: self.attempts,
                    permanent_attempts: self.permanent_attempts,
                    released_at: self.released_at.map(time),
                    last_error: self.last_error.map(str::to_owned),
                    received_at: time(ev.received_at_us),
                    next_attempt_at: time(self.next_attempt_at),
                    published_at: self.published_at.map(time),
                    idempotency_key: ev.meta.idempotency_key.clone(),
                    subject: ev.meta.subject.clone(),
                    kind: String::new(),
                    status: String::new(),
                    provider_status: None,
                    amount: None,
                    currency: None,
                    headers: Some(serde_json::from_str(&ev.headers_json).expect("headers")),
                    body: Some(ev.body.to_vec()),
                    traceparent: Some(ev.traceparent.clone()),
                    failures: Some(Vec::new()),
                    meta: None,
                }
                .with_meta(&serde_json::to_string(&ev.meta).expect("meta")),
            )
            .expect("view")
        }
    }

    #[tokio::test]
    async fn an_outbox_of_the_previous_release_is_migrated_with_its_rows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("o.db");
        let t0 = now_micros() - 3_600_000_000;
        let with = |body: &str, received_at_us: i64| NewEvent {
            headers_json: format!(r#"{{"x-signature":"sig-{body}"}}"#),
            traceparent: format!(
                "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b{received_at_us}-01"
            ),
            received_at_us,
            ..event(body)
        };
        let mut binary = with("published", t0 + 2);
        // Not UTF-8, so a text column would not have kept it.
        binary.body = bytes::Bytes::from_static(b"\x00\xff\xfe raw \x80");
        let rows = [
            V1Row {
                event: with("pending", t0 + 1),
                id: 1,
                state: "pending",
                attempts: 4,
                permanent_attempts: 1,
                next_attempt_at: t0 + 10,
                last_error: Some("confirm timed out"),
                published_at: None,
                released_at: None,
            },
            V1Row {
                event: binary,
                id: 2,
                state: "published",
                attempts: 1,
                permanent_attempts: 0,
                next_attempt_at: t0 + 2,
                last_error: None,
                published_at: Some(t0 + 20),
                released_at: None,
            },
            V1Row {
                event: with("dead", t0 + 3),
                id: 3,
                state: "dead",
                attempts: 5,
                permanent_attempts: 3,
                next_attempt_at: t0 + 30,
                last_error: Some("message too large"),
                published_at: None,
                released_at: Some(t0 + 40),
            },
        ];
        let conn = Connection::open(&path).expect("open");
        conn.execute_batch(V1_SCHEMA).expect("v1 schema");
        for row in &rows {
            row.insert(&conn);
        }
        // Rows 4 and 5 were purged: their ids are not handed out again.
        conn.execute_batch(
            "UPDATE sqlite_sequence SET seq = 5 WHERE name = 'events';
             INSERT INTO health (id, probed_at) VALUES (1, 7);",
        )
        .expect("arrange");
        drop(conn);

        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let outbox = SqliteOutbox::open(&path, Access::Serve, metrics)
            .await
            .expect("open migrates");

        let conn = Connection::open(&path).expect("open");
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .expect("version");
        assert_eq!(version, SCHEMA_VERSION);
        let mut names = conn
            .prepare("SELECT name FROM sqlite_schema ORDER BY name")
            .expect("schema");
        let names: Vec<String> = names
            .query_map([], |r| r.get(0))
            .expect("names")
            .collect::<Result<_, _>>()
            .expect("names");
        assert_eq!(
            names,
            [
                "attempts",
                "attempts_id",
                "deliveries",
                "deliveries_holding_subject",
                "deliveries_published_at",
                "deliveries_state_id",
                "events",
                "events_received_at",
                "events_subject",
                "health",
                "sqlite_autoindex_events_1",
                "sqlite_sequence",
            ],
            "the old table's indexes went with it, and no temporary table is left"
        );
        assert!(!has_column(&conn, "events", "state").expect("columns"));

        for row in &rows {
            let shown = outbox.show(row.id).await.expect("show").expect("row");
            assert_eq!(shown.body.as_deref(), Some(&row.event.body[..]));
            assert_eq!(
                serde_json::to_value(&shown).expect("json"),
                row.view(),
                "row {}",
                row.id
            );
        }
        let listed = outbox
            .find(&EventFilter::default(), Window::ALL, 10)
            .await
            .expect("find");
        let listed: Vec<(i64, String)> = listed.into_iter().map(|r| (r.id, r.state)).collect();
        assert_eq!(
            listed,
            [
                (3, "dead".to_owned()),
                (2, "published".to_owned()),
                (1, "pending".to_owned())
            ]
        );
        assert_eq!(
            outbox.stats().await.expect("stats"),
            Stats {
                pending: 1,
                dead: 1,
                oldest_pending_us: Some(t0 + 1),
                held_subjects: 0,
                ..Stats::default()
            },
            "the dead row stays released"
        );
        assert_eq!(outbox.inventory().await.expect("inventory").published, 1);

        let due = outbox
            .fetch_due(now_micros(), 10, &HashSet::new())
            .await
            .expect("fetch");
        assert_eq!(due.len(), 1, "{due:?}");
        let pending = &rows[0].event;
        assert_eq!(
            (due[0].id, due[0].attempts, due[0].permanent_attempts),
            (1, 4, 1)
        );
        assert_eq!(due[0].meta, pending.meta);
        assert_eq!(due[0].body, pending.body);
        assert_eq!(due[0].received_at_us, pending.received_at_us);
        assert_eq!(due[0].traceparent, pending.traceparent);

        assert_eq!(
            outbox.insert(event("new")).await.expect("insert"),
            InsertOutcome::Inserted
        );
        let new = outbox.show(6).await.expect("show");
        assert_eq!(
            new.map(|row| row.state).as_deref(),
            Some("pending"),
            "the new row took the id after the purged ones"
        );
        // A published row is still a duplicate of its idempotency key.
        assert_eq!(
            outbox.insert(rows[1].event.clone()).await.expect("insert"),
            InsertOutcome::Duplicate
        );
        outbox
            .settle(Arc::from([
                Settlement::Published { id: 1 },
                Settlement::Dead {
                    id: 6,
                    error: "no".to_owned(),
                },
            ]))
            .await
            .expect("settle");
        let states = outbox
            .find(&EventFilter::default(), Window::ALL, 10)
            .await
            .expect("find")
            .into_iter()
            .map(|r| (r.id, r.state, r.attempts))
            .collect::<Vec<_>>();
        assert_eq!(
            states,
            [
                (6, "dead".to_owned(), 1),
                (3, "dead".to_owned(), 5),
                (2, "published".to_owned(), 1),
                (1, "published".to_owned(), 5),
            ]
        );
        assert_eq!(
            outbox.purge_published(i64::MAX, 10).await.expect("purge"),
            2
        );
    }

    #[tokio::test]
    async fn a_command_does_not_migrate_an_outbox_an_older_serve_is_using() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("o.db");
        let conn = Connection::open(&path).expect("open");
        conn.execute_batch(V1_SCHEMA).expect("v1 schema");
        V1Row {
            event: event("a"),
            id: 1,
            state: "pending",
            attempts: 0,
            permanent_attempts: 0,
            next_attempt_at: 0,
            last_error: None,
            published_at: None,
            released_at: None,
        }
        .insert(&conn);
        let version = || -> i64 {
            conn.query_row("PRAGMA user_version", [], |r| r.get(0))
                .expect("version")
        };
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let running = serve_lock(&path).expect("an older serve");
        let refused = SqliteOutbox::open(&path, Access::Operate, Arc::clone(&metrics))
            .await
            .map(|_| ());
        assert!(
            matches!(&refused, Err(e) if e.to_string().contains("upgrade that relay first")),
            "{refused:?}"
        );
        assert_eq!(version(), 1, "left as the running relay needs it");
        drop(running);
        let outbox = SqliteOutbox::open(&path, Access::Operate, metrics)
            .await
            .expect("no serve: the command migrates");
        assert_eq!(version(), SCHEMA_VERSION);
        assert_eq!(outbox.stats().await.expect("stats").pending, 1);
        drop(outbox);
        serve_lock(&path).expect("the command let the serve lock go");
    }

    #[tokio::test]
    async fn settles_replays_and_releases_never_write_the_event_row() {
        let (_dir, path, outbox) = served().await;
        for body in ["a", "b", "c"] {
            outbox.insert(event(body)).await.expect("insert");
        }
        // From here on, any UPDATE of `events` fails the writer's transaction.
        Connection::open(&path)
            .expect("open")
            .execute_batch(
                "CREATE TRIGGER events_are_not_updated BEFORE UPDATE ON events
                 BEGIN SELECT RAISE(ABORT, 'an event row was rewritten'); END;",
            )
            .expect("trigger");
        outbox
            .settle(Arc::from([
                Settlement::Published { id: 1 },
                Settlement::Retry {
                    id: 2,
                    error: "nack".to_owned(),
                    next_attempt_at_us: 0,
                    permanent: true,
                },
                Settlement::Dead {
                    id: 3,
                    error: "too large".to_owned(),
                },
            ]))
            .await
            .expect("settle writes deliveries only");
        assert_eq!(outbox.release(vec![3]).await.expect("release"), 1);
        assert_eq!(outbox.replay(vec![1, 3]).await.expect("replay"), 2);
        assert_eq!(
            outbox.replay(vec![1, 2, 3]).await.expect("replay"),
            0,
            "all pending already"
        );
        let stats = outbox.stats().await.expect("stats");
        assert_eq!((stats.pending, stats.dead), (3, 0));
    }

    #[tokio::test]
    async fn a_settle_logs_far_less_than_the_body_in_the_wal() {
        let (_dir, path, outbox) = served().await;
        const BODY: usize = 1 << 20;
        let mut large = event("large");
        large.body = bytes::Bytes::from(vec![b'x'; BODY]);
        outbox.insert(large).await.expect("insert");
        // An empty WAL, so its size afterwards is what the settle wrote.
        let (busy, _, _): (i64, i64, i64) = Connection::open(&path)
            .expect("open")
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .expect("checkpoint");
        assert_eq!(busy, 0, "the checkpoint ran");
        let mut wal = path.clone().into_os_string();
        wal.push("-wal");
        assert_eq!(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0), 0);
        outbox
            .settle(Arc::from([Settlement::Published { id: 1 }]))
            .await
            .expect("settle");
        let logged = std::fs::metadata(&wal).expect("wal").len();
        assert!(
            logged < BODY as u64 / 16,
            "a settle of a 1 MiB webhook logged {logged} bytes"
        );
    }

    #[tokio::test]
    async fn a_purge_deletes_the_event_and_its_delivery() {
        let (_dir, path, outbox) = served().await;
        for body in ["a", "b", "c"] {
            outbox.insert(event(body)).await.expect("insert");
        }
        outbox
            .settle(Arc::from([
                Settlement::Published { id: 1 },
                Settlement::Published { id: 2 },
            ]))
            .await
            .expect("settle");
        assert_eq!(outbox.purge_published(i64::MAX, 1).await.expect("purge"), 1);
        assert_eq!(
            outbox.purge_published(i64::MAX, 10).await.expect("purge"),
            1
        );
        let conn = Connection::open(&path).expect("open");
        let ids = |table: &str| {
            let mut stmt = conn
                .prepare(&format!("SELECT id FROM {table} ORDER BY id"))
                .expect("select");
            stmt.query_map([], |r| r.get::<_, i64>(0))
                .expect("ids")
                .collect::<Result<Vec<_>, _>>()
                .expect("ids")
        };
        assert_eq!(ids("events"), [3]);
        assert_eq!(ids("deliveries"), [3]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_long_replay_lets_webhooks_commit_between_its_chunks() {
        let (_dir, path, outbox) = served().await;
        let outbox = Arc::new(outbox);
        // A week of published rows, written straight into the file.
        const ROWS: i64 = 100_000;
        let conn = Connection::open(&path).expect("open");
        conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
             INSERT INTO events (event_id, source, provider, idempotency_key, subject,
                 routing_key, meta, headers, body, traceparent, received_at)
             SELECT 'e' || i, 'whitepay', 'whitepay', 'k' || i, 's' || i, 'rk', '{}', '{}',
                    x'00', '', i FROM n",
            [ROWS],
        )
        .expect("bulk insert");
        conn.execute(
            "INSERT INTO deliveries (id, source, subject, state, next_attempt_at, published_at)
             SELECT id, source, subject, 'published', received_at, received_at FROM events",
            [],
        )
        .expect("bulk insert");
        let replaying = {
            let outbox = Arc::clone(&outbox);
            tokio::spawn(async move {
                let filter = EventFilter {
                    since_us: Some(0),
                    ..EventFilter::default()
                };
                let ids = super::super::query::matching_ids(outbox.as_ref(), &filter).await?;
                super::super::query::replay_ids(outbox.as_ref(), &ids).await
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        outbox.insert(event("during")).await.expect("insert");
        let replayed_so_far = outbox.stats().await.expect("stats").pending - 1;
        assert!(
            replayed_so_far < ROWS as u64,
            "the webhook committed while the replay was still going ({replayed_so_far} of {ROWS} replayed)"
        );
        assert_eq!(replaying.await.expect("join").expect("replay"), ROWS as u64);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn settlements_go_in_the_next_commit_ahead_of_queued_webhooks() {
        let (_dir, path, outbox) = served().await;
        let outbox = Arc::new(outbox);
        outbox.insert(event("to settle")).await.expect("insert");
        // Another process holds the write lock: the writer stalls and webhooks queue.
        let holder = Connection::open(&path).expect("open");
        holder.execute_batch("BEGIN IMMEDIATE").expect("write lock");
        const QUEUED: usize = 1500;
        let stored = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let inserts: Vec<_> = (0..QUEUED)
            .map(|i| {
                let (outbox, stored) = (Arc::clone(&outbox), Arc::clone(&stored));
                tokio::spawn(async move {
                    outbox
                        .insert(event(&format!("queued {i}")))
                        .await
                        .expect("insert");
                    stored.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let settling = {
            let (outbox, stored) = (Arc::clone(&outbox), Arc::clone(&stored));
            tokio::spawn(async move {
                outbox
                    .settle(Arc::from(vec![Settlement::Published { id: 1 }]))
                    .await
                    .expect("settle");
                stored.load(std::sync::atomic::Ordering::SeqCst)
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        holder.execute_batch("ROLLBACK").expect("release");
        let stored_before_settle = settling.await.expect("join");
        assert!(
            stored_before_settle <= 2 * MAX_BATCH,
            "the settlement waited behind {stored_before_settle} of {QUEUED} queued webhooks"
        );
        for insert in inserts {
            insert.await.expect("join");
        }
        assert_eq!(outbox.stats().await.expect("stats").pending, QUEUED as u64);
    }

    #[tokio::test]
    async fn an_insert_that_cannot_commit_in_time_fails_instead_of_waiting() {
        let (_dir, path, mut outbox) = served().await;
        // The commit stalls (here: another process holds the write lock, which
        // the writer waits 5 s for) for longer than the insert may wait.
        outbox.insert_timeout = std::time::Duration::from_secs(1);
        let holder = Connection::open(&path).expect("open");
        holder
            .execute_batch("BEGIN IMMEDIATE")
            .expect("take the write lock");
        let stalled = outbox.insert(event("a")).await;
        assert!(
            matches!(stalled, Err(OutboxError::TimedOut(1))),
            "{stalled:?}"
        );
        holder.execute_batch("ROLLBACK").expect("release");
        outbox.insert(event("b")).await.expect("inserts work again");
    }
}
