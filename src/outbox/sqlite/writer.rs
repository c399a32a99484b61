//! The one writer thread: every write of the SQLite outbox goes through it, so the
//! relay never contends with itself for the write lock.
//!
//! **Group commit.** It takes the first command waiting, then everything else
//! already queued, runs them in one transaction, commits (one WAL fsync), and only
//! then answers each caller. While a commit is syncing, new requests queue up and
//! form the next batch. The publisher's settlements and the operator's commands
//! wait in a queue of their own and go into the next batch ahead of the webhooks:
//! behind a full queue of webhooks they would wait a dozen commits, and every row
//! a settle is about stays in flight, not fetchable, meanwhile.

use std::sync::Arc;

use rusqlite::{Connection, TransactionBehavior, params};
use tokio::sync::{mpsc, oneshot};

use super::sql;
use crate::clock::now_micros;
use crate::metrics::Metrics;
use crate::outbox::ingest::{self, Batch, InsertHealth, Limits, Queue};
use crate::outbox::recall::{Cell, Results, Statement};
use crate::outbox::row::Encoded;
use crate::outbox::{ATTEMPTS_KEPT, InsertOutcome, NewEvent, OutboxError, Settlement};

/// Most webhooks one transaction takes.
pub(super) const LIMITS: Limits = Limits {
    webhooks: 512,
    bytes: usize::MAX,
};

/// Most settlements and operator commands waiting for the writer (the publisher
/// has at most `MAX_BATCHES_IN_FLIGHT`, 8, batches in flight).
pub(super) const CONTROL_QUEUE: usize = 64;

/// Where a command's answer goes.
type Reply<T> = oneshot::Sender<Result<T, OutboxError>>;

/// A write that is not a webhook.
pub(super) enum Control {
    /// The publisher's outcomes.
    Settle(Arc<[Settlement]>, Reply<()>),
    /// The write probe behind `/readyz`.
    Probe(Reply<()>),
    /// An operator's replay.
    Replay(Vec<i64>, Reply<u64>),
    /// An operator's release.
    Release(Vec<i64>, Reply<u64>),
    /// The recovery ledger's statements, run in a transaction of their own
    /// (never in a batch of webhooks, which a failing one would fail).
    Ledger(Vec<Statement>, Reply<Results>),
    /// Retention or an operator's purge.
    Purge {
        /// What goes: published rows, or subjects' sequences.
        what: Purged,
        cutoff_us: i64,
        limit: usize,
        reply: Reply<u64>,
    },
}

/// What a purge deletes.
#[derive(Debug, Clone, Copy)]
pub(super) enum Purged {
    /// Published rows confirmed before the cutoff.
    Published,
    /// Sequences of subjects unchanged since the cutoff, with no row left.
    Subjects,
}

impl Control {
    /// Answers the caller: the rows it changed (for a replay, release or purge),
    /// or why nothing was.
    fn answer(self, result: Result<u64, OutboxError>) {
        match self {
            Self::Settle(_, reply) | Self::Probe(reply) => {
                let _ = reply.send(result.map(|_| ()));
            }
            Self::Replay(_, reply) | Self::Release(_, reply) | Self::Purge { reply, .. } => {
                let _ = reply.send(result);
            }
            Self::Ledger(_, reply) => {
                let _ = reply.send(result.map(|_| Vec::new()));
            }
        }
    }
}

/// The writer's loop, on its own thread, until the outbox handle is dropped.
pub(super) fn run(
    mut conn: Connection,
    mut queue: Queue,
    mut controls: mpsc::Receiver<Control>,
    metrics: &Metrics,
    health: &InsertHealth,
) {
    // The queues are tokio channels; a runtime of this thread's own waits on both.
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().build() else {
        tracing::error!("the outbox writer cannot start its runtime");
        return;
    };
    loop {
        let first = runtime.block_on(async {
            tokio::select! {
                biased;
                control = controls.recv() => control.map(Ok),
                queued = queue.first() => queued.map(Err),
            }
        });
        let (mut commands, first) = match first {
            None => return,
            Some(Ok(control)) => (vec![control], None),
            Some(Err(queued)) => (Vec::new(), Some(queued)),
        };
        while commands.len() < CONTROL_QUEUE {
            match controls.try_recv() {
                Ok(control) => commands.push(control),
                Err(_) => break,
            }
        }
        let (ledgers, commands): (Vec<_>, Vec<_>) = commands
            .into_iter()
            .partition(|command| matches!(command, Control::Ledger(..)));
        for command in ledgers {
            if let Control::Ledger(statements, reply) = command {
                let _ = reply.send(ledger(&mut conn, &statements).map_err(OutboxError::from));
            }
        }
        if commands.is_empty() && first.is_none() {
            continue;
        }
        let batch = queue.take(first, LIMITS);
        match apply(&mut conn, &commands, batch.as_ref()) {
            Ok((changed, stored)) => {
                if let Some(batch) = batch {
                    batch.answer(Ok(stored), metrics, health);
                }
                for (command, n) in commands.into_iter().zip(changed) {
                    command.answer(Ok(n));
                }
            }
            Err(e) => {
                let e = OutboxError::from(e);
                match batch {
                    Some(batch) => batch.answer(Err(e.clone()), metrics, health),
                    None => ingest::commit_failed(metrics, &e, commands.len()),
                }
                for command in commands {
                    command.answer(Err(e.clone()));
                }
            }
        }
    }
}

/// Runs a batch in one transaction. On any error nothing is committed and every
/// caller is told so: an ack is never sent for a row that is not on disk.
fn apply(
    conn: &mut Connection,
    commands: &[Control],
    batch: Option<&Batch>,
) -> rusqlite::Result<(Vec<u64>, Vec<InsertOutcome>)> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let now_us = now_micros();
    let mut changed = Vec::with_capacity(commands.len());
    for command in commands {
        changed.push(match command {
            Control::Settle(settlements, _) => {
                settle(&tx, settlements, now_us)?;
                0
            }
            Control::Probe(_) => {
                tx.execute(sql::PROBE, [now_us])?;
                0
            }
            Control::Replay(ids, _) => {
                let mut replay = tx.prepare_cached(sql::REPLAY)?;
                let mut n = 0;
                for id in ids {
                    n += replay.execute(params![now_us, id])? as u64;
                }
                n
            }
            Control::Release(ids, _) => {
                let mut skip = tx.prepare_cached(sql::SKIP_NUMBER)?;
                let mut release = tx.prepare_cached(sql::RELEASE)?;
                let mut n = 0;
                for id in ids {
                    skip.execute(params![id, now_us])?;
                    n += release.execute(params![id, now_us])? as u64;
                }
                n
            }
            // Taken out of the batch by `run`, into a transaction of its own.
            Control::Ledger(..) => 0,
            Control::Purge {
                what,
                cutoff_us,
                limit,
                ..
            } => {
                let limit = i64::try_from(*limit).unwrap_or(i64::MAX);
                let statement = match what {
                    Purged::Published => sql::PURGE,
                    Purged::Subjects => sql::FORGET_SUBJECTS,
                };
                tx.execute(statement, params![cutoff_us, limit])? as u64
            }
        });
    }
    let stored = match batch {
        Some(batch) => insert(&tx, batch)?,
        None => Vec::new(),
    };
    tx.commit()?;
    Ok((changed, stored))
}

/// Runs the recovery ledger's statements in one transaction; the rows each
/// returned.
fn ledger(conn: &mut Connection, statements: &[Statement]) -> rusqlite::Result<Results> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut results = Vec::with_capacity(statements.len());
    for statement in statements {
        let mut prepared = tx.prepare_cached(&statement.sql)?;
        let columns = prepared.column_count();
        let values = statement.values.iter().cloned().map(super::sqlite_value);
        let mut rows = prepared.query(rusqlite::params_from_iter(values))?;
        let mut read = Vec::new();
        while let Some(row) = rows.next()? {
            read.push(
                (0..columns)
                    .map(|i| {
                        Ok(match row.get::<_, rusqlite::types::Value>(i)? {
                            rusqlite::types::Value::Integer(n) => Cell::Int(n),
                            rusqlite::types::Value::Text(text) => Cell::Text(text),
                            _ => Cell::Null,
                        })
                    })
                    .collect::<rusqlite::Result<Vec<_>>>()?,
            );
        }
        results.push(read);
    }
    tx.commit()?;
    Ok(results)
}

/// Stores the batch's webhooks; each one's outcome in order.
fn insert(tx: &rusqlite::Transaction<'_>, batch: &Batch) -> rusqlite::Result<Vec<InsertOutcome>> {
    let mut event = tx.prepare_cached(sql::INSERT_EVENT)?;
    let mut delivery = tx.prepare_cached(sql::INSERT_DELIVERY)?;
    let mut outcomes = Vec::with_capacity(batch.len());
    for new in batch.events() {
        let changed = insert_event(&mut event, new)?;
        outcomes.push(if changed == 0 {
            InsertOutcome::Duplicate
        } else {
            // The row was inserted just now, so the last rowid is its id (on a
            // duplicate it would be an older row's).
            delivery.execute(params![
                tx.last_insert_rowid(),
                new.meta.source,
                new.meta.subject,
            ])?;
            InsertOutcome::Inserted
        });
    }
    Ok(outcomes)
}

/// Runs [`sql::INSERT_EVENT`] for one webhook; returns the rows it inserted (0 for
/// a duplicate).
pub(super) fn insert_event(
    statement: &mut rusqlite::CachedStatement<'_>,
    new: &NewEvent,
) -> rusqlite::Result<usize> {
    let row =
        Encoded::new(new).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    statement.execute(params![
        new.meta.id,
        new.meta.source,
        new.meta.provider,
        new.meta.idempotency_key,
        new.meta.subject,
        row.routing_key,
        row.meta,
        new.headers_json,
        &new.body[..],
        new.traceparent,
        new.received_at_us,
    ])
}

/// Records publish outcomes, and each failure in the attempts log.
fn settle(
    tx: &rusqlite::Transaction<'_>,
    settlements: &[Settlement],
    now_us: i64,
) -> rusqlite::Result<()> {
    let mut record = tx.prepare_cached(sql::SETTLE)?;
    let mut log = tx.prepare_cached(sql::LOG_FAILURE)?;
    let mut trim = tx.prepare_cached(sql::TRIM_FAILURES)?;
    let mut number = tx.prepare_cached(sql::NUMBER_SUBJECT)?;
    for settlement in settlements {
        let id = settlement.id();
        let effect = settlement.effect();
        let first = settlement.first();
        let changed = record.execute(params![
            id,
            effect.state.as_str(),
            i64::from(effect.permanent),
            effect.error,
            effect.retry_in_us.map(|delay| now_us.saturating_add(delay)),
            now_us,
            first.map(|f| f.sequence),
            first.is_some_and(|f| f.stale),
        ])?;
        if let (1.., Some(error)) = (changed, effect.error) {
            log.execute(params![id, now_us, effect.outcome(), error])?;
            trim.execute(params![id, ATTEMPTS_KEPT])?;
        }
        if let (1.., Some(first)) = (changed, first) {
            number.execute(params![id, first.sequence, first.stages, now_us])?;
        }
    }
    Ok(())
}
