//! The PostgreSQL outbox (`postgres://…`), shared by several relays.
//!
//! **Ingest, group commit.** Webhooks queue for [`WRITERS`] writer tasks; each takes
//! whatever is queued (up to [`MAX_BATCH`]) and stores it with one autocommit
//! statement (`INSERT … SELECT FROM unnest(…) ON CONFLICT DO NOTHING`), rows sorted
//! by `(source, idempotency_key)` so that overlapping batches never deadlock. A
//! caller is answered only after that statement, and so its commit, returned. A
//! duplicate key, from any replica, is a success and one row: if the first insert
//! is still uncommitted elsewhere, ours waits for it, so "duplicate" always means
//! "durable".
//!
//! **Order across replicas.** Row ids are taken at insert, but transactions commit
//! in another order, so a reader could see id 11 before id 10 commits. Each
//! `hr_delivery` row records its transaction id, and the publisher reads only rows
//! below `pg_snapshot_xmin(pg_current_snapshot())` (the fence: every transaction
//! before it has ended), in `(txid, id)` order. Once a row passes the fence nothing
//! can appear before it. A transaction held open anywhere in the cluster holds the
//! fence back; `hookrelay_outbox_fenced_rows` shows the rows waiting behind it.
//!
//! **One publisher per subject.** See [`leases`]: subjects hash into partitions,
//! each leased to one live replica, and every settle is fenced by the lease's epoch.
//!
//! **Wake-up.** After commits, `NOTIFY hookrelay_outbox` (at most every 20 ms); every
//! replica listens on a connection of its own and wakes its publisher. Polling every
//! second remains the guarantee (a notification sent while disconnected is lost).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::{Notify, mpsc, oneshot, watch};

use super::{
    ATTEMPTS_KEPT, Access, Attempt, EventFilter, Fault, FaultKind, InsertHealth, InsertOutcome,
    Inventory, NewEvent, Options, Outbox, OutboxError, PendingEvent, RowView, Settlement, Stats,
    Window,
    query::{Dialect, Value},
};
use crate::clock::now_micros;
use crate::event::EventMeta;
use crate::metrics::Metrics;

mod connect;
mod leases;
mod maintenance;
mod schema;

use connect::Target;
use leases::Leases;
use schema::HOLDS_SUBJECT;

/// Most webhooks one insert statement takes.
const MAX_BATCH: usize = 512;
/// Body bytes past which a batch takes no more webhooks: one statement carries
/// its whole batch, so large bodies make smaller batches.
const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;
/// Most webhooks waiting for a writer; beyond it ingress answers 503 at once.
const QUEUE_CAPACITY: usize = 2048;
/// Writer tasks, each with its own connection while it writes: batches overlap, so
/// one commit's round trip does not stall the next.
const WRITERS: usize = 4;
/// Connections in the pool: the writers, plus fetch, settle, leases, readiness and
/// operator commands.
const POOL_SIZE: usize = WRITERS + 4;
/// Longest wait for a pooled connection (PostgreSQL down: a 503 at once).
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest wait for an insert's commit; then the webhook gets 503, as on SQLite.
const INSERT_TIMEOUT: Duration = Duration::from_secs(8);
/// Longest wait for any other statement.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);
/// `statement_timeout` of the relay's sessions: the server stops a statement the
/// relay gave up on (migrations and vacuums lift it for themselves).
const SERVER_STATEMENT_TIMEOUT: Duration = Duration::from_secs(12);
/// `pg_try_advisory_xact_lock` key of retention: one replica purges at a time.
const RETENTION_LOCK: i64 = 0x686f_6f6b_7265_7470;
/// The channel commits are announced on.
const CHANNEL: &str = "hookrelay_outbox";
/// Least time between two announcements of commits by one replica.
const ANNOUNCE_INTERVAL: Duration = Duration::from_millis(20);

type Reply<T> = oneshot::Sender<Result<T, OutboxError>>;
/// A webhook waiting for a writer, with where its outcome goes.
type Queued = (Box<NewEvent>, Reply<InsertOutcome>);
/// The writers' shared queue: whichever writer is free takes the next batch.
type Queue = Arc<tokio::sync::Mutex<mpsc::Receiver<Queued>>>;
/// Rows handed to the publisher: row id → (partition, lease epoch) at fetch time.
type Claims = Arc<Mutex<HashMap<i64, (i16, i64)>>>;

/// The PostgreSQL outbox handle; cheap to share.
pub(crate) struct PostgresOutbox {
    pool: Pool,
    writer: Option<mpsc::Sender<Queued>>,
    inserts: InsertHealth,
    leases: Arc<Leases>,
    claims: Claims,
    metrics: Arc<Metrics>,
    stop: watch::Sender<bool>,
}

/// What may be shown of a `postgres://` URL (no password).
pub(crate) fn describe_url(url: &str) -> Result<String, OutboxError> {
    Ok(Target::parse(url)?.describe())
}

/// The driver's error as a fault: its kind from the SQLSTATE, its words (and its
/// causes', for "connection refused") as the detail.
pub(super) fn pg_error(e: tokio_postgres::Error) -> OutboxError {
    use tokio_postgres::error::SqlState;
    let kind = match e.code() {
        Some(code) if *code == SqlState::DISK_FULL => FaultKind::DiskFull,
        Some(code)
            if *code == SqlState::T_R_DEADLOCK_DETECTED
                || *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::LOCK_NOT_AVAILABLE =>
        {
            FaultKind::Busy
        }
        Some(code) if *code == SqlState::READ_ONLY_SQL_TRANSACTION => FaultKind::ReadOnly,
        Some(code)
            if code.code().starts_with("08")
                || *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW =>
        {
            FaultKind::Unavailable
        }
        Some(code) if code.code().starts_with("XX") => FaultKind::Corrupt,
        Some(_) => FaultKind::Other,
        // No SQLSTATE: the driver's own failure. Losing the server is the usual
        // one; a parameter it could not encode is a bug, not an outage.
        None if e.is_closed() || UNREACHABLE.iter().any(|w| e.to_string().starts_with(w)) => {
            FaultKind::Unavailable
        }
        None => FaultKind::Other,
    };
    let detail = match e.as_db_error() {
        Some(db) => db.message().to_owned(),
        None => {
            let mut words = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                words.push_str(": ");
                words.push_str(&c.to_string());
                cause = c.source();
            }
            words
        }
    };
    OutboxError::Storage(Fault::new(kind, detail))
}

/// How tokio-postgres words the failures that mean "the server is out of reach".
const UNREACHABLE: [&str; 5] = [
    "error connecting to server",
    "error communicating with the server",
    "connection closed",
    "timeout waiting for server",
    "error performing TLS handshake",
];

/// A pooled connection, or a 503-worthy error within [`CHECKOUT_TIMEOUT`].
pub(super) async fn pooled(pool: &Pool) -> Result<deadpool_postgres::Object, OutboxError> {
    use deadpool_postgres::PoolError;
    pool.get().await.map_err(|e| match e {
        PoolError::Backend(e) => pg_error(e),
        PoolError::Timeout(_) => OutboxError::Storage(Fault::new(
            FaultKind::Unavailable,
            format!("no connection within {} s", CHECKOUT_TIMEOUT.as_secs()),
        )),
        PoolError::Closed => OutboxError::Closed,
        other => OutboxError::Storage(Fault::new(FaultKind::Unavailable, other.to_string())),
    })
}

/// Runs `work` with a bound on its time: a link that went silent costs a caller at
/// most this long.
async fn bounded<T>(
    limit: Duration,
    work: impl std::future::Future<Output = Result<T, OutboxError>>,
) -> Result<T, OutboxError> {
    tokio::time::timeout(limit, work)
        .await
        .unwrap_or(Err(OutboxError::TimedOut(limit.as_secs())))
}

impl PostgresOutbox {
    /// Connects, migrates (for `serve`) or checks that the tables exist (for the
    /// `outbox` commands), and for `serve` starts the writers, the lease task and the
    /// listener.
    pub(crate) async fn open(
        url: &str,
        access: Access,
        metrics: Arc<Metrics>,
        options: Options,
    ) -> Result<Self, OutboxError> {
        let target = Target::parse(url)?;
        let tls = target.connector()?;
        let manager = Manager::from_config(
            target.config.clone(),
            tls.clone(),
            ManagerConfig {
                // A connection is checked before it is handed out, so one left
                // behind by a timed-out statement on a silent link is replaced,
                // not reused.
                recycling_method: RecyclingMethod::Verified,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .wait_timeout(Some(CHECKOUT_TIMEOUT))
            .create_timeout(Some(CHECKOUT_TIMEOUT))
            .recycle_timeout(Some(Duration::from_secs(1)))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| OutboxError::Storage(Fault::new(FaultKind::Other, e.to_string())))?;
        {
            let mut client = pooled(&pool).await?;
            match access {
                Access::Serve => schema::migrate(&mut client).await?,
                Access::Operate => {
                    if !schema::exists(&client).await? {
                        return Err(OutboxError::Missing(target.describe()));
                    }
                }
            }
        }
        let replica = format!(
            "{}-{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "relay".to_owned()),
            uuid::Uuid::new_v4().simple()
        );
        let leases = Arc::new(Leases::new(replica, options.lease));
        let (stop, stop_rx) = watch::channel(false);
        let claims = Claims::default();
        let inserts = InsertHealth::default();
        let mut writer = None;
        if access == Access::Serve {
            let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
            let rx = Arc::new(tokio::sync::Mutex::new(rx));
            let committed = Arc::new(Notify::new());
            for _ in 0..WRITERS {
                tokio::spawn(write_loop(
                    pool.clone(),
                    Arc::clone(&rx),
                    Arc::clone(&metrics),
                    inserts.clone(),
                    Arc::clone(&committed),
                ));
            }
            tokio::spawn(announce(pool.clone(), committed, stop_rx.clone()));
            writer = Some(tx);
            let claimed = Arc::clone(&claims);
            tokio::spawn(leases::run(
                Arc::clone(&leases),
                pool.clone(),
                move |part| {
                    claimed
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .values()
                        .any(|(p, _)| *p == part)
                },
                Arc::clone(&metrics),
                stop_rx.clone(),
            ));
            tokio::spawn(maintenance::run(pool.clone(), stop_rx.clone()));
            tokio::spawn(listen(target, tls, options.wake, stop_rx));
        }
        Ok(Self {
            pool,
            writer,
            inserts,
            leases,
            claims,
            metrics,
            stop,
        })
    }

    fn claims(&self) -> std::sync::MutexGuard<'_, HashMap<i64, (i16, i64)>> {
        self.claims.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One writer: takes a batch off the shared queue, stores it, answers each caller.
async fn write_loop(
    pool: Pool,
    queue: Queue,
    metrics: Arc<Metrics>,
    health: InsertHealth,
    committed: Arc<Notify>,
) {
    loop {
        let batch = {
            let mut queue = queue.lock().await;
            let Some(first) = queue.recv().await else {
                return;
            };
            let mut bytes = first.0.body.len();
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
                match queue.try_recv() {
                    Ok(next) => {
                        bytes += next.0.body.len();
                        batch.push(next);
                    }
                    Err(_) => break,
                }
            }
            batch
        };
        let stored = bounded(INSERT_TIMEOUT, insert_batch(&pool, &batch)).await;
        match stored {
            Ok(outcomes) => {
                metrics.outbox_commit_batch_size.observe(batch.len() as f64);
                health.succeeded();
                for ((_, reply), outcome) in batch.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(outcome));
                }
                committed.notify_one();
            }
            Err(e) => {
                // The outcome of a commit cut short is unknown: 503, and the
                // provider's retry is a duplicate if it did commit.
                tracing::error!(error = %e, webhooks = batch.len(), "outbox insert failed; every webhook in the batch gets 503");
                metrics
                    .outbox_commit_failures
                    .with_label_values(&[e.reason()])
                    .inc();
                health.failed(&e);
                for (_, reply) in batch {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Stores a batch with one statement; returns each webhook's outcome in order.
///
/// The arrays are sorted by `(source, idempotency_key)` and inserted in that order
/// (`ORDER BY n`), so two batches that share keys take their index locks in the
/// same order and never deadlock. Ids within a batch therefore follow key order,
/// not arrival order: those webhooks were in flight together, and none of them
/// was acked before another arrived.
async fn insert_batch(pool: &Pool, batch: &[Queued]) -> Result<Vec<InsertOutcome>, OutboxError> {
    let mut rows: Vec<&NewEvent> = batch.iter().map(|(ev, _)| ev.as_ref()).collect();
    rows.sort_by(|a, b| {
        (&a.meta.source, &a.meta.idempotency_key).cmp(&(&b.meta.source, &b.meta.idempotency_key))
    });
    let metas = rows
        .iter()
        .map(|ev| serde_json::to_string(&ev.meta))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| OutboxError::Storage(Fault::new(FaultKind::Other, e.to_string())))?;
    let column = |f: fn(&NewEvent) -> &str| rows.iter().map(|ev| f(ev)).collect::<Vec<&str>>();
    let event_ids = column(|ev| &ev.meta.id);
    let sources = column(|ev| &ev.meta.source);
    let providers = column(|ev| &ev.meta.provider);
    let keys = column(|ev| &ev.meta.idempotency_key);
    let subjects = column(|ev| &ev.meta.subject);
    let headers = column(|ev| &ev.headers_json);
    let traceparents = column(|ev| &ev.traceparent);
    let routing_keys: Vec<String> = rows.iter().map(|ev| ev.meta.routing_key()).collect();
    let bodies: Vec<&[u8]> = rows.iter().map(|ev| &ev.body[..]).collect();
    let received: Vec<i64> = rows.iter().map(|ev| ev.received_at_us).collect();
    let parts: Vec<i16> = rows
        .iter()
        .map(|ev| schema::partition(&ev.meta.source, &ev.meta.subject))
        .collect();
    let client = pooled(pool).await?;
    let statement = client
        .prepare_cached(
            "WITH input AS (
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                                      $6::int2[], $7::text[], $8::text[], $9::text[], $10::bytea[],
                                      $11::text[], $12::int8[])
                   WITH ORDINALITY AS t(event_id, source, provider, idempotency_key, subject, part,
                                        routing_key, meta, headers, body, traceparent, received_at, n)
             ), stored AS (
                 INSERT INTO hr_event (event_id, source, provider, idempotency_key, subject, part,
                                       routing_key, meta, headers, body, traceparent, received_at)
                 SELECT event_id, source, provider, idempotency_key, subject, part,
                        routing_key, meta, headers, body, traceparent, received_at
                 FROM input ORDER BY n
                 ON CONFLICT (source, idempotency_key) DO NOTHING
                 RETURNING id, source, idempotency_key, subject, part, received_at
             ), queued AS (
                 INSERT INTO hr_delivery (id, part, source, subject, next_attempt_at)
                 SELECT id, part, source, subject, received_at FROM stored
             )
             SELECT source, idempotency_key FROM stored",
        )
        .await
        .map_err(pg_error)?;
    let stored = client
        .query(
            &statement,
            &[
                &event_ids,
                &sources,
                &providers,
                &keys,
                &subjects,
                &parts,
                &routing_keys,
                &metas,
                &headers,
                &bodies,
                &traceparents,
                &received,
            ],
        )
        .await
        .map_err(pg_error)?;
    let mut new: HashSet<(String, String)> =
        stored.iter().map(|row| (row.get(0), row.get(1))).collect();
    Ok(batch
        .iter()
        .map(|(ev, _)| {
            // The first of several webhooks with one key in a batch is the one stored.
            let key = (ev.meta.source.clone(), ev.meta.idempotency_key.clone());
            if new.remove(&key) {
                InsertOutcome::Inserted
            } else {
                InsertOutcome::Duplicate
            }
        })
        .collect())
}

/// Tells the other replicas' publishers that webhooks were committed: one
/// `NOTIFY` after a commit, then at most one per [`ANNOUNCE_INTERVAL`] however many
/// batches commit meanwhile (a `Notify` keeps one permit, so the last commit of an
/// interval is always announced). Each `NOTIFY` is a transaction of its own that
/// serialises with the others at commit, so one per batch would cost as much as
/// the inserts. A lost one costs at most the publishers' one-second poll.
async fn announce(pool: Pool, committed: Arc<Notify>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = committed.notified() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if let Ok(client) = pooled(&pool).await {
            let _ = bounded(STATEMENT_TIMEOUT, async move {
                client
                    .execute("SELECT pg_notify($1, '')", &[&CHANNEL])
                    .await
                    .map_err(pg_error)
            })
            .await;
        }
        tokio::time::sleep(ANNOUNCE_INTERVAL).await;
    }
}

/// Listens for other replicas' commits and wakes the publisher; reconnects after a
/// second when the connection drops, and wakes it then too (notifications sent
/// meanwhile are lost).
async fn listen(
    target: Target,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    wake: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        if let Ok(Ok((client, mut connection))) =
            tokio::time::timeout(CHECKOUT_TIMEOUT, target.config.connect(tls.clone())).await
        {
            let waker = Arc::clone(&wake);
            let driver = tokio::spawn(async move {
                while let Some(message) =
                    std::future::poll_fn(|cx| connection.poll_message(cx)).await
                {
                    match message {
                        Ok(tokio_postgres::AsyncMessage::Notification(_)) => waker.notify_one(),
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            });
            if client
                .batch_execute(&format!("LISTEN {CHANNEL}"))
                .await
                .is_ok()
            {
                wake.notify_one();
                tokio::select! {
                    _ = driver => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            } else {
                driver.abort();
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

const ROW_COLUMNS: &str =
    "d.id, e.event_id, e.source, e.provider, e.routing_key, d.state, d.attempts,
     d.last_error, e.received_at, d.next_attempt_at, d.published_at, e.idempotency_key,
     d.permanent_attempts, d.released_at, e.subject, e.meta";

fn row_view(row: &tokio_postgres::Row) -> RowView {
    let time = super::shown_time;
    let count = |n: i32| u32::try_from(n).unwrap_or(0);
    RowView {
        id: row.get(0),
        event_id: row.get(1),
        source: row.get(2),
        provider: row.get(3),
        routing_key: row.get(4),
        state: row.get(5),
        attempts: count(row.get(6)),
        last_error: row.get(7),
        received_at: time(row.get(8)),
        next_attempt_at: time(row.get(9)),
        published_at: row.get::<_, Option<i64>>(10).map(time),
        idempotency_key: row.get(11),
        permanent_attempts: count(row.get(12)),
        released_at: row.get::<_, Option<i64>>(13).map(time),
        subject: row.get(14),
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
    .with_meta(row.get::<_, &str>(15))
}

/// A filter value as the driver binds it.
fn bind(value: &Value) -> Box<dyn tokio_postgres::types::ToSql + Sync + Send> {
    match value {
        Value::Text(text) => Box::new(text.clone()),
        Value::Int(n) => Box::new(*n),
        Value::Bytes(bytes) => Box::new(bytes.clone()),
    }
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

#[async_trait]
impl Outbox for PostgresOutbox {
    async fn insert(&self, event: NewEvent) -> Result<InsertOutcome, OutboxError> {
        let writer = self.writer.as_ref().ok_or(OutboxError::Closed)?;
        let (reply, rx) = oneshot::channel();
        writer
            .try_send((Box::new(event), reply))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => OutboxError::Overloaded,
                mpsc::error::TrySendError::Closed(_) => OutboxError::Closed,
            })?;
        // The writer's own bound is the same; this one also covers the queue.
        super::await_commit(rx, INSERT_TIMEOUT).await
    }

    async fn fetch_due(
        &self,
        now_us: i64,
        limit: usize,
        in_flight: &HashSet<i64>,
    ) -> Result<Vec<PendingEvent>, OutboxError> {
        let leased = self.leases.fetchable();
        if leased.is_empty() {
            return Ok(Vec::new());
        }
        let parts: Vec<i16> = leased.iter().map(|(p, _)| *p).collect();
        let epochs: HashMap<i16, i64> = leased.into_iter().collect();
        let skip: Vec<i64> = in_flight.iter().copied().collect();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = bounded(STATEMENT_TIMEOUT, async {
            let mut client = pooled(&self.pool).await?;
            // The one good plan walks `hr_delivery_due` in order and stops after
            // `limit` rows; anything that reads every pending row first (a bitmap
            // scan and a sort, a hash anti-join over all holders) costs in
            // proportion to the backlog. The planner picks such a plan whenever the
            // statistics say pending rows are few, which they do at the start of
            // every backlog: then each fetch gets slower as the backlog grows, and
            // publishing stalls just when it is needed (a 20 s bench run stopped
            // publishing for good). So the fetch forbids those plans for itself,
            // and keeps "no older holder of the subject" a subplan run per
            // candidate row with its index condition (`OFFSET 0` stops the planner
            // from turning it into an anti-join): as an anti-join, on statistics
            // saying nothing is pending, it scanned every holder once per
            // candidate row (3.8 s a fetch at 100,000 pending, against 1.3 ms).
            let tx = client.transaction().await.map_err(pg_error)?;
            tx.batch_execute(
                "SET LOCAL enable_sort = off; SET LOCAL enable_bitmapscan = off;
                 SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off",
            )
            .await
            .map_err(pg_error)?;
            // Only rows below the fence, oldest transaction first; a row waits while
            // an older row of its subject is pending, or dead and not released. The
            // rows in flight are left out through a hashed subplan: `<> ALL($3)`
            // compares each candidate with every id once the plan is generic.
            let statement = tx
                .prepare_cached(&format!(
                    "SELECT d.id, d.part, e.meta, e.body, e.received_at, e.traceparent,
                            d.attempts, d.permanent_attempts
                     FROM hr_delivery d JOIN hr_event e ON e.id = d.id
                     WHERE d.state = 'pending' AND d.part = ANY($1) AND d.next_attempt_at <= $2
                       AND d.txid < pg_snapshot_xmin(pg_current_snapshot())
                       AND d.id NOT IN (SELECT unnest($3::int8[]))
                       AND NOT EXISTS (SELECT 1 FROM hr_delivery o
                                       WHERE {HOLDS_SUBJECT} AND o.source = d.source
                                         AND o.subject = d.subject
                                         AND (o.txid, o.id) < (d.txid, d.id)
                                       OFFSET 0)
                     ORDER BY d.txid, d.id
                     LIMIT $4"
                ))
                .await
                .map_err(pg_error)?;
            let rows = tx
                .query(&statement, &[&parts, &now_us, &skip, &limit])
                .await
                .map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)?;
            Ok(rows)
        })
        .await?;
        let mut fetched = Vec::with_capacity(rows.len());
        let mut claims = self.claims();
        for row in rows {
            let id: i64 = row.get(0);
            let part: i16 = row.get(1);
            let meta: String = row.get(2);
            let meta: EventMeta = serde_json::from_str(&meta).map_err(|e| {
                OutboxError::Storage(Fault::new(
                    FaultKind::Corrupt,
                    format!("row {id} has unreadable metadata: {e}"),
                ))
            })?;
            claims.insert(id, (part, epochs.get(&part).copied().unwrap_or(-1)));
            fetched.push(PendingEvent {
                id,
                meta,
                body: row.get(3),
                received_at_us: row.get(4),
                traceparent: row.get(5),
                attempts: u32::try_from(row.get::<_, i32>(6)).unwrap_or(0),
                permanent_attempts: u32::try_from(row.get::<_, i32>(7)).unwrap_or(0),
            });
        }
        Ok(fetched)
    }

    fn may_publish(&self, id: i64) -> bool {
        let claim = self.claims().get(&id).copied();
        claim.is_some_and(|(part, epoch)| self.leases.valid(part, epoch))
    }

    async fn settle(&self, settlements: Arc<[Settlement]>) -> Result<(), OutboxError> {
        let claimed: Vec<(i16, i64)> = {
            let claims = self.claims();
            settlements
                .iter()
                .map(|s| claims.get(&s.id()).copied().unwrap_or((-1, -1)))
                .collect()
        };
        let mut ids = Vec::with_capacity(settlements.len());
        let mut kinds = Vec::with_capacity(settlements.len());
        let mut errors: Vec<Option<&str>> = Vec::with_capacity(settlements.len());
        let mut next_at = Vec::with_capacity(settlements.len());
        let mut permanent = Vec::with_capacity(settlements.len());
        for s in settlements.iter() {
            ids.push(s.id());
            let (kind, error, next, perm) = match s {
                Settlement::Published { .. } => ("published", None, 0, 0),
                Settlement::Retry {
                    error,
                    next_attempt_at_us,
                    permanent,
                    ..
                } => (
                    "pending",
                    Some(error.as_str()),
                    *next_attempt_at_us,
                    i32::from(*permanent),
                ),
                Settlement::Dead { error, .. } => ("dead", Some(error.as_str()), 0, 1),
            };
            kinds.push(kind);
            errors.push(error);
            next_at.push(next);
            permanent.push(perm);
        }
        let parts: Vec<i16> = claimed.iter().map(|(p, _)| *p).collect();
        let epochs: Vec<i64> = claimed.iter().map(|(_, e)| *e).collect();
        let replica = self.leases.replica.as_str();
        let now_us = now_micros();
        let recorded = bounded(STATEMENT_TIMEOUT, async {
            let client = pooled(&self.pool).await?;
            // Fenced: only rows of partitions this replica still holds, under the
            // epoch they were fetched with, while the lease has not passed. The
            // partition rows are not locked: a takeover that commits while this
            // statement runs can at worst have the new owner publish a row this
            // one records as published, a duplicate like any takeover's, never a
            // loss or a reordering (a row is fetched only while pending and only
            // after the rows before it of its subject). Locking them cost a
            // multixact and a WAL record per partition per settle.
            let statement = client
                .prepare_cached(
                    "WITH s AS (
                         SELECT * FROM unnest($1::int8[], $2::int2[], $3::int8[], $4::text[],
                                              $5::text[], $6::int8[], $7::int4[])
                           AS s(id, part, epoch, state, error, next_at, permanent)
                     ), held AS (
                         SELECT p.p, p.epoch FROM hr_partition p
                         WHERE p.p = ANY($2) AND p.owner = $8 AND p.lease_until > now()
                     ), settled AS (
                     UPDATE hr_delivery d SET
                         state = s.state,
                         attempts = d.attempts + 1,
                         permanent_attempts = d.permanent_attempts + s.permanent,
                         last_error = s.error,
                         next_attempt_at = CASE WHEN s.state = 'pending' THEN s.next_at
                                                ELSE d.next_attempt_at END,
                         published_at = CASE WHEN s.state = 'published' THEN $9
                                             ELSE d.published_at END
                     FROM s JOIN held ON held.p = s.part AND held.epoch = s.epoch
                     WHERE d.id = s.id AND d.state = 'pending'
                     RETURNING d.id, s.state, s.error
                     ), failed AS (
                         SELECT id, state, error FROM settled WHERE state <> 'published'
                     ), logged AS (
                         INSERT INTO hr_attempt (id, at, outcome, error)
                         SELECT id, $9, CASE WHEN state = 'dead' THEN 'dead' ELSE 'retry' END,
                                coalesce(error, '')
                         FROM failed
                     ), trimmed AS (
                         -- Sees the log before this statement's insert: keeping
                         -- one fewer leaves the newest ATTEMPTS_KEPT.
                         DELETE FROM hr_attempt WHERE ctid IN (
                             SELECT ctid FROM (
                                 SELECT ctid, row_number() OVER (PARTITION BY id ORDER BY at DESC) AS n
                                 FROM hr_attempt WHERE id IN (SELECT id FROM failed)
                             ) old WHERE old.n >= $10)
                     )
                     SELECT id FROM settled",
                )
                .await
                .map_err(pg_error)?;
            client
                .query(
                    &statement,
                    &[
                        &ids,
                        &parts,
                        &epochs,
                        &kinds,
                        &errors,
                        &next_at,
                        &permanent,
                        &replica,
                        &now_us,
                        &ATTEMPTS_KEPT,
                    ],
                )
                .await
                .map_err(pg_error)
        })
        .await?;
        let recorded: HashSet<i64> = recorded.iter().map(|row| row.get(0)).collect();
        {
            let mut claims = self.claims();
            for id in &ids {
                claims.remove(id);
            }
        }
        let fenced = ids.len() - recorded.len();
        if fenced > 0 {
            self.metrics.outbox_fenced_settles.inc_by(fenced as u64);
            tracing::warn!(
                rows = fenced,
                "publish outcomes refused: this replica's lease on their partition had passed; the new owner publishes them again"
            );
        }
        Ok(())
    }

    async fn stats(&self) -> Result<Stats, OutboxError> {
        let row = bounded(STATEMENT_TIMEOUT, async {
            let client = pooled(&self.pool).await?;
            client
                .query_one(
                    "SELECT
                       (SELECT count(*) FROM hr_delivery WHERE state = 'pending'),
                       (SELECT count(*) FROM hr_delivery WHERE state = 'dead'),
                       (SELECT e.received_at FROM hr_delivery d JOIN hr_event e ON e.id = d.id
                        WHERE d.state = 'pending' ORDER BY d.txid, d.id LIMIT 1),
                       (SELECT count(*) FROM (SELECT DISTINCT source, subject FROM hr_delivery
                                              WHERE state = 'dead' AND released_at IS NULL) h),
                       (SELECT count(*) FROM hr_delivery WHERE state = 'pending'
                          AND txid >= pg_snapshot_xmin(pg_current_snapshot())),
                       (SELECT min(e.received_at) FROM hr_delivery d JOIN hr_event e ON e.id = d.id
                        WHERE d.state = 'pending'
                          AND d.txid >= pg_snapshot_xmin(pg_current_snapshot()))",
                    &[],
                )
                .await
                .map_err(pg_error)
        })
        .await?;
        Ok(Stats {
            pending: count(row.get(0)),
            dead: count(row.get(1)),
            oldest_pending_us: row.get(2),
            held_subjects: count(row.get(3)),
            fenced: count(row.get(4)),
            oldest_fenced_us: row.get(5),
            partitions: self.leases.count() as u64,
        })
    }

    async fn check_writable(&self) -> Result<(), OutboxError> {
        self.inserts.recent_failure()?;
        bounded(CHECKOUT_TIMEOUT, async {
            let client = pooled(&self.pool).await?;
            // A real write: a standby (read-only) or a full disk fails it. A row
            // it creates is no heartbeat: only the lease task makes a replica live.
            client
                .execute(
                    "INSERT INTO hr_member (replica, heartbeat_at, probed_at)
                     VALUES ($1, '-infinity', now())
                     ON CONFLICT (replica) DO UPDATE SET probed_at = now()",
                    &[&self.leases.replica],
                )
                .await
                .map_err(pg_error)
        })
        .await
        .map(|_| ())
    }

    async fn inventory(&self) -> Result<Inventory, OutboxError> {
        let stats = self.stats().await?;
        let row = bounded(STATEMENT_TIMEOUT, async {
            let client = pooled(&self.pool).await?;
            client
                .query_one(
                    "SELECT (SELECT count(*) FROM hr_delivery WHERE state = 'published'),
                            pg_total_relation_size('hr_event') + pg_total_relation_size('hr_delivery')",
                    &[],
                )
                .await
                .map_err(pg_error)
        })
        .await?;
        Ok(Inventory::from_stats(
            stats,
            count(row.get(0)),
            count(row.get(1)),
        ))
    }

    async fn id_range(&self) -> Result<Option<(i64, i64)>, OutboxError> {
        let row = bounded(STATEMENT_TIMEOUT, async {
            let client = pooled(&self.pool).await?;
            client
                .query_one("SELECT min(id), max(id) FROM hr_delivery", &[])
                .await
                .map_err(pg_error)
        })
        .await?;
        Ok(row
            .get::<_, Option<i64>>(0)
            .zip(row.get::<_, Option<i64>>(1)))
    }

    async fn find(
        &self,
        filter: &EventFilter,
        window: Window,
        limit: usize,
    ) -> Result<Vec<RowView>, OutboxError> {
        let (conditions, values) = filter.sql(Dialect::Postgres, 4);
        let order = if window.oldest_first { "ASC" } else { "DESC" };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut bound: Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>> = vec![
            Box::new(window.above),
            Box::new(window.below),
            Box::new(limit),
        ];
        bound.extend(values.iter().map(bind));
        let rows = bounded(STATEMENT_TIMEOUT, async {
            let client = pooled(&self.pool).await?;
            let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = bound
                .iter()
                .map(|b| b.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync))
                .collect();
            client
                .query(
                    &format!(
                        "SELECT {ROW_COLUMNS} FROM hr_delivery d JOIN hr_event e ON e.id = d.id
                         WHERE d.id > $1 AND d.id < $2 AND e.id > $1 AND e.id < $2
                           AND {conditions}
                         ORDER BY d.id {order} LIMIT $3"
                    ),
                    &params,
                )
                .await
                .map_err(pg_error)
        })
        .await?;
        Ok(rows.iter().map(row_view).collect())
    }

    async fn show(&self, id: i64) -> Result<Option<RowView>, OutboxError> {
        let (row, failures) = bounded(STATEMENT_TIMEOUT, async {
            let client = pooled(&self.pool).await?;
            let row = client
                .query_opt(
                    &format!(
                        "SELECT {ROW_COLUMNS}, e.headers, e.body, e.traceparent
                         FROM hr_delivery d JOIN hr_event e ON e.id = d.id WHERE d.id = $1"
                    ),
                    &[&id],
                )
                .await
                .map_err(pg_error)?;
            let failures = client
                .query(
                    "SELECT at, outcome, error FROM hr_attempt WHERE id = $1 ORDER BY at",
                    &[&id],
                )
                .await
                .map_err(pg_error)?;
            Ok::<_, OutboxError>((row, failures))
        })
        .await?;
        Ok(row.map(|row| {
            let mut view = row_view(&row);
            view.headers = serde_json::from_str(row.get::<_, &str>(16)).ok();
            view.body = Some(row.get(17));
            view.traceparent = Some(row.get(18));
            view.failures = Some(
                failures
                    .iter()
                    .map(|r| Attempt {
                        at: super::shown_time(r.get(0)),
                        outcome: r.get(1),
                        error: r.get(2),
                    })
                    .collect(),
            );
            view
        }))
    }

    async fn replay(&self, ids: Vec<i64>) -> Result<u64, OutboxError> {
        // Attempts restart from zero so the retry schedule and the dead-letter bound
        // start afresh; last_error is kept for the record.
        let now_us = now_micros();
        bounded(STATEMENT_TIMEOUT, async {
            let client = pooled(&self.pool).await?;
            client
                .execute(
                    "UPDATE hr_delivery SET state = 'pending', attempts = 0,
                         permanent_attempts = 0, next_attempt_at = $1,
                         published_at = NULL, released_at = NULL
                     WHERE id = ANY($2) AND state <> 'pending'",
                    &[&now_us, &ids],
                )
                .await
                .map_err(pg_error)
        })
        .await
    }

    async fn release(&self, ids: Vec<i64>) -> Result<u64, OutboxError> {
        let now_us = now_micros();
        bounded(STATEMENT_TIMEOUT, async {
            let client = pooled(&self.pool).await?;
            client
                .execute(
                    "UPDATE hr_delivery SET released_at = $2
                     WHERE id = ANY($1) AND state = 'dead' AND released_at IS NULL",
                    &[&ids, &now_us],
                )
                .await
                .map_err(pg_error)
        })
        .await
    }

    async fn purge_published(&self, cutoff_us: i64, limit: usize) -> Result<u64, OutboxError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        bounded(STATEMENT_TIMEOUT, async {
            let mut client = pooled(&self.pool).await?;
            let tx = client.transaction().await.map_err(pg_error)?;
            // One replica purges at a time; the others find the lock taken and skip.
            let mine: bool = tx
                .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&RETENTION_LOCK])
                .await
                .map_err(pg_error)?
                .get(0);
            if !mine {
                return Ok(0);
            }
            // Deleting the event deletes its delivery row (ON DELETE CASCADE).
            let n = tx
                .execute(
                    "DELETE FROM hr_event WHERE id IN (
                         SELECT id FROM hr_delivery WHERE state = 'published' AND published_at < $1
                         ORDER BY published_at LIMIT $2)",
                    &[&cutoff_us, &limit],
                )
                .await
                .map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)?;
            Ok(n)
        })
        .await
    }

    async fn failed(&self) {
        match &self.writer {
            // The writers share the receiver: it is dropped when the last one ends.
            Some(writer) => writer.closed().await,
            None => std::future::pending().await,
        }
    }

    async fn close(&self) {
        let _ = self.stop.send(true);
        if self.writer.is_some()
            && let Err(e) = bounded(CHECKOUT_TIMEOUT, self.leases.leave(&self.pool)).await
        {
            tracing::warn!(error = %e, "could not give the partitions back; other replicas take them when the lease passes");
        }
    }
}
