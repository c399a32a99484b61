//! The PostgreSQL outbox (`postgres://…`), shared by several relays.
//!
//! - `writer.rs`: the writer tasks, one `INSERT … unnest` statement per batch;
//! - `fenced.rs`: the publisher's fenced fetch and settle, and the order across
//!   replicas;
//! - `leases.rs`: which replica publishes which subjects;
//! - `notify.rs`: waking the other replicas' publishers after commits;
//! - `maintenance.rs`: the tables' own vacuum and analyze;
//! - `schema.rs`: the schema steps and the subject → partition hash; `sql.rs`:
//!   every statement; `connect.rs`: the URL and TLS; `error.rs`: the driver's
//!   errors as faults, and the time bounds of every call.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::{Notify, watch};
use tokio_postgres::types::ToSql;

use super::driver::{Operate, Pipe};
use super::ingest::{self, Intake};
use super::model::count;
use super::recall::{Cell, Ledger, Results, Statement};
use super::row::{FullRow, Row};
use super::sql::{Dialect, Value};
use super::{
    Attempt, Due, EventFilter, Fault, FaultKind, InsertOutcome, Inventory, Mode, NewEvent, Options,
    OutboxError, Replication, Settlement, Stats, Window,
};
use crate::clock::now_micros;
use crate::metrics::Metrics;

mod connect;
mod error;
mod fenced;
mod leases;
mod maintenance;
mod notify;
pub(super) mod schema;
#[cfg(feature = "testing")]
mod seed;
mod sql;
#[cfg(test)]
mod tests;
mod writer;

#[cfg(feature = "testing")]
pub(crate) use seed::{
    record_version, recorded_version, rewrite_meta, seed, undo_sequences, vacuum, write_lock,
};

use connect::Target;
use error::{CHECKOUT_TIMEOUT, STATEMENT_TIMEOUT, bounded, pg_error, pooled};
use fenced::Claims;
use leases::Leases;

/// Connections in the pool: the writers, plus fetch, settle, leases, readiness and
/// operator commands.
const POOL_SIZE: usize = writer::WRITERS + 4;
/// `pg_try_advisory_xact_lock` key of retention: one replica purges at a time.
const RETENTION_LOCK: i64 = 0x686f_6f6b_7265_7470;

/// The PostgreSQL outbox handle; cheap to share.
pub(crate) struct PostgresOutbox {
    pool: Pool,
    /// Only for `serve`: the `outbox` commands take no webhooks.
    intake: Option<Intake>,
    leases: Arc<Leases>,
    /// The lease task (`serve` only), awaited at close so that no renewal in
    /// flight takes partitions back after they were given up.
    lease_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    claims: Claims,
    metrics: Arc<Metrics>,
    stop: watch::Sender<bool>,
}

/// What may be shown of a `postgres://` URL (no password).
pub(crate) fn describe_url(url: &str) -> Result<String, OutboxError> {
    Ok(Target::parse(url)?.describe())
}

/// What a commit of `client`'s session waits for.
async fn replication(client: &tokio_postgres::Client) -> Result<Replication, OutboxError> {
    let row = client
        .query_one(sql::REPLICATION, &[])
        .await
        .map_err(pg_error)?;
    Ok(Replication::Server {
        standby_names: row.try_get(0).map_err(pg_error)?,
        commit: row.try_get(1).map_err(pg_error)?,
        synchronous_standbys: row.try_get(2).map_err(pg_error)?,
    })
}

/// A statement's parameters, as the driver takes them.
type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

impl PostgresOutbox {
    /// Connects, migrates (for `serve`) or checks that the tables exist (for the
    /// `outbox` commands), and for `serve` starts the writers, the lease task and the
    /// listener.
    pub(crate) async fn open(
        url: &str,
        mode: Mode,
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
            match mode {
                Mode::Serve => schema::migrate(&mut client).await?,
                Mode::Operate => {
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
        let mut intake = None;
        let mut lease_task = Mutex::new(None);
        if mode == Mode::Serve {
            let (taken, queue) = ingest::queue();
            let queue: writer::Shared = Arc::new(tokio::sync::Mutex::new(queue));
            let committed = Arc::new(Notify::new());
            for _ in 0..writer::WRITERS {
                tokio::spawn(writer::run(
                    pool.clone(),
                    Arc::clone(&queue),
                    Arc::clone(&metrics),
                    taken.health().clone(),
                    Arc::clone(&committed),
                ));
            }
            intake = Some(taken);
            tokio::spawn(notify::announce(pool.clone(), committed, stop_rx.clone()));
            let claimed = claims.clone();
            let publishing = leases::Publishing {
                metrics: Arc::clone(&metrics),
                pace: options.pace,
                stuck_after: options.stuck_after,
            };
            *lease_task.get_mut().unwrap_or_else(PoisonError::into_inner) =
                Some(tokio::spawn(leases::run(
                    Arc::clone(&leases),
                    leases::Session::new(target.clone(), tls.clone()),
                    move |part| claimed.in_partition(part),
                    publishing,
                    stop_rx.clone(),
                )));
            tokio::spawn(maintenance::run(pool.clone(), stop_rx.clone()));
            tokio::spawn(notify::listen(target, tls, options.wake, stop_rx));
        }
        Ok(Self {
            pool,
            intake,
            leases,
            lease_task,
            claims,
            metrics,
            stop,
        })
    }

    /// Runs one statement on a pooled connection within [`STATEMENT_TIMEOUT`].
    async fn query(
        &self,
        statement: &str,
        params: Params<'_>,
    ) -> Result<Vec<tokio_postgres::Row>, OutboxError> {
        bounded(STATEMENT_TIMEOUT, async {
            let client = pooled(&self.pool).await?;
            client.query(statement, params).await.map_err(pg_error)
        })
        .await
    }

    /// The one row a statement returns.
    async fn query_one(
        &self,
        statement: &str,
        params: Params<'_>,
    ) -> Result<tokio_postgres::Row, OutboxError> {
        let mut rows = self.query(statement, params).await?;
        rows.pop().ok_or_else(|| {
            OutboxError::Storage(Fault::new(
                FaultKind::Other,
                "a statement that returns one row returned none",
            ))
        })
    }

    /// Runs one statement that changes rows; returns how many.
    async fn execute(&self, statement: &str, params: Params<'_>) -> Result<u64, OutboxError> {
        bounded(STATEMENT_TIMEOUT, async {
            let client = pooled(&self.pool).await?;
            client.execute(statement, params).await.map_err(pg_error)
        })
        .await
    }

    /// Runs a retention statement (`$1` cutoff, `$2` limit) in a transaction of
    /// its own; returns the rows it deleted.
    async fn purge(
        &self,
        statement: &str,
        cutoff_us: i64,
        limit: usize,
    ) -> Result<u64, OutboxError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        bounded(STATEMENT_TIMEOUT, async {
            let mut client = pooled(&self.pool).await?;
            let tx = client.transaction().await.map_err(pg_error)?;
            // One replica purges at a time; the others find the lock taken and skip.
            let mine: bool = tx
                .query_one(sql::TRY_LOCK_FOR_TRANSACTION, &[&RETENTION_LOCK])
                .await
                .map_err(pg_error)?
                .get(0);
            if !mine {
                return Ok(0);
            }
            let n = tx
                .execute(statement, &[&cutoff_us, &limit])
                .await
                .map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)?;
            Ok(n)
        })
        .await
    }
}

#[async_trait]
impl Pipe for PostgresOutbox {
    async fn insert(&self, event: NewEvent) -> Result<InsertOutcome, OutboxError> {
        let intake = self.intake.as_ref().ok_or(OutboxError::Closed)?;
        intake.insert(event).await
    }

    async fn fetch_due(&self, limit: usize, in_flight: &HashSet<i64>) -> Result<Due, OutboxError> {
        fenced::fetch(&self.pool, &self.leases, &self.claims, limit, in_flight).await
    }

    fn may_publish(&self, id: i64) -> bool {
        fenced::may_publish(&self.leases, &self.claims, id)
    }

    async fn settle(&self, settlements: Arc<[Settlement]>) -> Result<(), OutboxError> {
        fenced::settle(
            &self.pool,
            &self.leases,
            &self.claims,
            &self.metrics,
            &settlements,
        )
        .await
    }

    async fn failed(&self) {
        match &self.intake {
            Some(intake) => intake.closed().await,
            None => std::future::pending().await,
        }
    }

    fn unclaim(&self, ids: &[i64]) {
        self.claims.release(ids);
    }

    async fn close(&self) {
        let _ = self.stop.send(true);
        let task = self
            .lease_task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            // The lease task ends at its next check of `stop`: after the tick in
            // flight, which is bounded by a tick.
            let _ = tokio::time::timeout(self.leases.tick() * 2, task).await;
        }
        if self.intake.is_some()
            && let Err(e) = bounded(CHECKOUT_TIMEOUT, self.leases.leave(&self.pool)).await
        {
            tracing::warn!(error = %e, "could not give the partitions back; other replicas take them when the lease passes");
        }
    }
}

#[async_trait]
impl Operate for PostgresOutbox {
    async fn stats(&self) -> Result<Stats, OutboxError> {
        let row = self.query_one(sql::STATS, &[]).await?;
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
        if let Some(intake) = &self.intake {
            intake.health().recent_failure()?;
        }
        bounded(CHECKOUT_TIMEOUT, async {
            let client = pooled(&self.pool).await?;
            client
                .execute(sql::PROBE, &[&self.leases.replica])
                .await
                .map_err(pg_error)
        })
        .await
        .map(|_| ())
    }

    async fn replication(&self) -> Result<Replication, OutboxError> {
        bounded(CHECKOUT_TIMEOUT, async {
            let client = pooled(&self.pool).await?;
            replication(&client).await
        })
        .await
    }

    async fn inventory(&self) -> Result<Inventory, OutboxError> {
        let stats = self.stats().await?;
        let row = self.query_one(sql::INVENTORY, &[]).await?;
        Ok(Inventory::from_stats(
            stats,
            count(row.get(0)),
            count(row.get(1)),
        ))
    }

    async fn id_range(&self) -> Result<Option<(i64, i64)>, OutboxError> {
        let row = self.query_one(sql::ID_RANGE, &[]).await?;
        Ok(row
            .get::<_, Option<i64>>(0)
            .zip(row.get::<_, Option<i64>>(1)))
    }

    async fn find(
        &self,
        filter: &EventFilter,
        window: Window,
        limit: usize,
    ) -> Result<Vec<Row>, OutboxError> {
        let (conditions, values) = filter.sql(Dialect::Postgres, 4);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let values = boxed(values);
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&window.above, &window.below, &limit];
        params.extend(values.iter().map(|v| v.as_ref() as &(dyn ToSql + Sync)));
        let rows = self
            .query(&sql::find(&conditions, window.oldest_first), &params)
            .await?;
        rows.iter().map(|row| Row::read(row)).collect()
    }

    async fn show(&self, id: i64) -> Result<Option<FullRow>, OutboxError> {
        let Some(row) = self.query(&sql::show(), &[&id]).await?.pop() else {
            return Ok(None);
        };
        let mut full = FullRow::read(&row)?;
        for failure in self.query(sql::FAILURES, &[&id]).await? {
            full.failures.push(Attempt::read(&failure)?);
        }
        Ok(Some(full))
    }

    async fn replay(&self, ids: Vec<i64>) -> Result<u64, OutboxError> {
        self.execute(sql::REPLAY, &[&now_micros(), &ids]).await
    }

    async fn release(&self, ids: Vec<i64>) -> Result<u64, OutboxError> {
        let row = self.query_one(sql::RELEASE, &[&ids, &now_micros()]).await?;
        Ok(count(row.get(0)))
    }

    async fn purge_published(&self, cutoff_us: i64, limit: usize) -> Result<u64, OutboxError> {
        self.purge(sql::PURGE, cutoff_us, limit).await
    }

    async fn forget_subjects(&self, cutoff_us: i64, limit: usize) -> Result<u64, OutboxError> {
        self.purge(sql::FORGET_SUBJECTS, cutoff_us, limit).await
    }
}

#[async_trait]
impl Ledger for PostgresOutbox {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    async fn transact(&self, statements: Vec<Statement>) -> Result<Results, OutboxError> {
        bounded(STATEMENT_TIMEOUT, async {
            let mut client = pooled(&self.pool).await?;
            let tx = client.transaction().await.map_err(pg_error)?;
            let mut results = Vec::with_capacity(statements.len());
            for statement in statements {
                let text = postgres_placeholders(&statement.sql);
                let values = boxed(statement.values);
                let params: Vec<&(dyn ToSql + Sync)> = values
                    .iter()
                    .map(|v| v.as_ref() as &(dyn ToSql + Sync))
                    .collect();
                let rows = tx.query(&text, &params).await.map_err(pg_error)?;
                results.push(rows.iter().map(cells).collect());
            }
            tx.commit().await.map_err(pg_error)?;
            Ok(results)
        })
        .await
    }
}

/// Values as tokio-postgres binds them.
fn boxed(values: Vec<Value>) -> Vec<Box<dyn ToSql + Sync + Send>> {
    values
        .into_iter()
        .map(|value| -> Box<dyn ToSql + Sync + Send> {
            match value {
                Value::Text(text) => Box::new(text),
                Value::Int(n) => Box::new(n),
                Value::Bytes(bytes) => Box::new(bytes),
            }
        })
        .collect()
}

/// `?N` placeholders as PostgreSQL spells them.
fn postgres_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

/// A ledger row's columns: bigint and text, or `NULL`.
fn cells(row: &tokio_postgres::Row) -> Vec<Cell> {
    (0..row.len())
        .map(|i| {
            if let Ok(n) = row.try_get::<_, Option<i64>>(i) {
                n.map_or(Cell::Null, Cell::Int)
            } else if let Ok(n) = row.try_get::<_, Option<i32>>(i) {
                n.map_or(Cell::Null, |n| Cell::Int(i64::from(n)))
            } else {
                row.try_get::<_, Option<String>>(i)
                    .ok()
                    .flatten()
                    .map_or(Cell::Null, Cell::Text)
            }
        })
        .collect()
}
