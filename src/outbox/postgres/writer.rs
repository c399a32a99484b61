//! The writer tasks: each takes a batch off the shared ingest queue and stores it
//! with one autocommit statement (`INSERT … SELECT FROM unnest(…) ON CONFLICT DO
//! NOTHING`), then answers its callers.
//!
//! Rows are sorted by `(source, idempotency_key)` so that overlapping batches never
//! deadlock. A caller is answered only after that statement, and so its commit,
//! returned. A duplicate key, from any replica, is a success and one row: if the
//! first insert is still uncommitted elsewhere, ours waits for it, so "duplicate"
//! always means "durable".

use std::collections::HashSet;
use std::sync::Arc;

use deadpool_postgres::Pool;
use tokio::sync::Notify;
use tokio_postgres::types::ToSql;

use super::error::{bounded, pg_error, pooled};
use super::{schema, sql};
use crate::metrics::Metrics;
use crate::outbox::ingest::{Batch, INSERT_TIMEOUT, InsertHealth, Limits, Queue};
use crate::outbox::row::Encoded;
use crate::outbox::{FaultKind, InsertOutcome, OutboxError};

/// Most webhooks, and body bytes, one insert statement takes: it carries its
/// whole batch, so large bodies make smaller batches.
const LIMITS: Limits = Limits {
    webhooks: 512,
    bytes: 16 * 1024 * 1024,
};

/// Writer tasks, each with its own connection while it writes: batches overlap, so
/// one commit's round trip does not stall the next.
pub(super) const WRITERS: usize = 4;

/// The queue the writers share: whichever is free takes the next batch.
pub(super) type Shared = Arc<tokio::sync::Mutex<Queue>>;

/// One writer, until the queue's intake is dropped: takes a batch, stores it,
/// answers each caller, and tells `committed` after each commit.
pub(super) async fn run(
    pool: Pool,
    queue: Shared,
    metrics: Arc<Metrics>,
    health: InsertHealth,
    committed: Arc<Notify>,
) {
    loop {
        let Some(batch) = queue.lock().await.next(LIMITS).await else {
            return;
        };
        // The outcome of a commit cut short is unknown: 503, and the provider's
        // retry is a duplicate if it did commit.
        let stored = bounded(INSERT_TIMEOUT, insert(&pool, &batch)).await;
        if refused(&stored) && batch.len() > 1 {
            // One webhook's data failed the whole statement: store the others, and
            // refuse only that one.
            for single in batch.one_by_one() {
                let stored = bounded(INSERT_TIMEOUT, insert(&pool, &single)).await;
                store_or_refuse(single, stored, &metrics, &health, &committed);
            }
        } else {
            store_or_refuse(batch, stored, &metrics, &health, &committed);
        }
    }
}

/// Whether the database refused a batch's data (not the outbox failing).
fn refused(stored: &Result<Vec<InsertOutcome>, OutboxError>) -> bool {
    matches!(stored, Err(OutboxError::Storage(fault)) if fault.kind == FaultKind::Invalid)
}

/// Answers a batch: its outcomes, its failure, or, for data the database refused
/// (a batch of one by then), that it cannot be stored.
fn store_or_refuse(
    batch: Batch,
    stored: Result<Vec<InsertOutcome>, OutboxError>,
    metrics: &Metrics,
    health: &InsertHealth,
    committed: &Notify,
) {
    match stored {
        Err(OutboxError::Storage(fault)) if fault.kind == FaultKind::Invalid => {
            batch.refuse(&OutboxError::Unstorable {
                field: "content",
                what: format!("data the database refuses ({})", fault.detail),
            });
        }
        stored => {
            let ok = stored.is_ok();
            batch.answer(stored, metrics, health);
            if ok {
                committed.notify_one();
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
async fn insert(pool: &Pool, batch: &Batch) -> Result<Vec<InsertOutcome>, OutboxError> {
    let mut rows = batch
        .events()
        .map(Encoded::new)
        .collect::<Result<Vec<_>, _>>()?;
    rows.sort_by(|a, b| {
        let (a, b) = (&a.event.meta, &b.event.meta);
        (&a.source, &a.idempotency_key).cmp(&(&b.source, &b.idempotency_key))
    });
    let arrays = Arrays::of(&rows);
    let client = pooled(pool).await?;
    let statement = client
        .prepare_cached(sql::INSERT_BATCH)
        .await
        .map_err(pg_error)?;
    let stored = client
        .query(&statement, &arrays.params())
        .await
        .map_err(pg_error)?;
    let mut new: HashSet<(String, String)> =
        stored.iter().map(|row| (row.get(0), row.get(1))).collect();
    Ok(batch
        .events()
        .map(|event| {
            // The first of several webhooks with one key in a batch is the one stored.
            let key = (
                event.meta.source.clone(),
                event.meta.idempotency_key.clone(),
            );
            if new.remove(&key) {
                InsertOutcome::Inserted
            } else {
                InsertOutcome::Duplicate
            }
        })
        .collect())
}

/// The `hr_event` columns of a batch (and each row's partition), one array each,
/// in the order of [`sql::INSERT_BATCH`]'s parameters `$1` … `$12`.
pub(super) struct Arrays<'a> {
    event_ids: Vec<&'a str>,
    sources: Vec<&'a str>,
    providers: Vec<&'a str>,
    keys: Vec<&'a str>,
    subjects: Vec<&'a str>,
    parts: Vec<i16>,
    routing_keys: Vec<&'a str>,
    metas: Vec<&'a str>,
    headers: Vec<&'a str>,
    bodies: Vec<&'a [u8]>,
    traceparents: Vec<&'a str>,
    received: Vec<i64>,
}

impl<'a> Arrays<'a> {
    /// The arrays of `rows`, in their order.
    pub(super) fn of(rows: &'a [Encoded<'a>]) -> Self {
        let column = |f: fn(&'a Encoded<'a>) -> &'a str| rows.iter().map(f).collect::<Vec<_>>();
        Self {
            event_ids: column(|row| &row.event.meta.id),
            sources: column(|row| &row.event.meta.source),
            providers: column(|row| &row.event.meta.provider),
            keys: column(|row| &row.event.meta.idempotency_key),
            subjects: column(|row| &row.event.meta.subject),
            parts: rows
                .iter()
                .map(|row| schema::partition(&row.event.meta.source, &row.event.meta.subject))
                .collect(),
            routing_keys: column(|row| &row.routing_key),
            metas: column(|row| &row.meta),
            headers: column(|row| &row.event.headers_json),
            bodies: rows.iter().map(|row| &row.event.body[..]).collect(),
            traceparents: column(|row| &row.event.traceparent),
            received: rows.iter().map(|row| row.event.received_at_us).collect(),
        }
    }

    /// The statement's parameters `$1` … `$12`.
    pub(super) fn params(&self) -> [&(dyn ToSql + Sync); 12] {
        [
            &self.event_ids,
            &self.sources,
            &self.providers,
            &self.keys,
            &self.subjects,
            &self.parts,
            &self.routing_keys,
            &self.metas,
            &self.headers,
            &self.bodies,
            &self.traceparents,
            &self.received,
        ]
    }
}
