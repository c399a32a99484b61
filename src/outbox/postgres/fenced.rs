//! The publisher's half on a shared outbox: the fenced fetch, the claims it hands
//! out, and the fenced settle.
//!
//! **Order across replicas.** Row ids are taken at insert, but transactions commit
//! in another order, so a reader could see id 11 before id 10 commits. Each
//! `hr_delivery` row records its transaction id, and the publisher reads only rows
//! below `pg_snapshot_xmin(pg_current_snapshot())` (the fence: every transaction
//! before it has ended), in `(txid, id)` order. Once a row passes the fence nothing
//! can appear before it. A transaction held open anywhere in the cluster holds the
//! fence back; `hookrelay_outbox_fenced_rows` shows the rows waiting behind it.
//!
//! **One publisher per subject.** Only rows of the partitions this replica leases
//! are fetched, each is claimed under its partition's epoch, and a settle records
//! only the rows whose partition this replica still holds under that epoch.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use deadpool_postgres::Pool;

use super::error::{STATEMENT_TIMEOUT, bounded, pg_error, pooled};
use super::leases::Leases;
use super::sql;
use crate::clock::now_micros;
use crate::metrics::Metrics;
use crate::outbox::row::{Columns, DUE_COLUMNS};
use crate::outbox::{ATTEMPTS_KEPT, Due, OutboxError, Settlement};

/// Rows handed to the publisher: row id → (partition, lease epoch) at fetch time.
#[derive(Clone, Default)]
pub(super) struct Claims(Arc<Mutex<HashMap<i64, (i16, i64)>>>);

impl Claims {
    fn held(&self) -> MutexGuard<'_, HashMap<i64, (i16, i64)>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a row of `part` is claimed (published, not yet settled).
    pub(super) fn in_partition(&self, part: i16) -> bool {
        self.held().values().any(|(p, _)| *p == part)
    }

    /// Lets go of the claims of rows never sent.
    pub(super) fn release(&self, ids: &[i64]) {
        let mut held = self.held();
        for id in ids {
            held.remove(id);
        }
    }

    /// The claims of `ids`, to put them back with [`restore`](Self::restore) (a
    /// test of a settle whose first try committed unseen).
    #[cfg(test)]
    pub(super) fn of_rows(&self, ids: &[i64]) -> Vec<(i64, (i16, i64))> {
        ids.iter()
            .filter_map(|id| Some((*id, self.of(*id)?)))
            .collect()
    }

    /// Puts claims back.
    #[cfg(test)]
    pub(super) fn restore(&self, claims: &[(i64, (i16, i64))]) {
        self.held().extend(claims.iter().copied());
    }

    /// The partition and epoch row `id` was fetched under.
    fn of(&self, id: i64) -> Option<(i16, i64)> {
        self.held().get(&id).copied()
    }
}

/// Pending rows due by `now_us` in the leased partitions, claimed for the
/// publisher.
pub(super) async fn fetch(
    pool: &Pool,
    leases: &Leases,
    claims: &Claims,
    limit: usize,
    in_flight: &HashSet<i64>,
) -> Result<Due, OutboxError> {
    let leased = leases.fetchable();
    if leased.is_empty() {
        return Ok(Due::default());
    }
    let parts: Vec<i16> = leased.iter().map(|(p, _)| *p).collect();
    let epochs: HashMap<i16, i64> = leased.into_iter().collect();
    let skip: Vec<i64> = in_flight.iter().copied().collect();
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = bounded(STATEMENT_TIMEOUT, async {
        let mut client = pooled(pool).await?;
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
        // The rows in flight are left out through a hashed subplan: `<> ALL($3)`
        // compares each candidate with every id once the plan is generic.
        let tx = client.transaction().await.map_err(pg_error)?;
        tx.batch_execute(sql::PIN_FETCH_PLAN)
            .await
            .map_err(pg_error)?;
        let statement = tx
            .prepare_cached(&sql::fetch_due())
            .await
            .map_err(pg_error)?;
        let rows = tx
            .query(&statement, &[&parts, &skip, &limit])
            .await
            .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        Ok(rows)
    })
    .await?;
    let mut fetched = Due::default();
    let mut claimed = claims.held();
    for row in rows {
        fetched.read(&row)?;
        let part = i16::try_from(row.int(DUE_COLUMNS)?).unwrap_or(-1);
        claimed.insert(
            row.int(0)?,
            (part, epochs.get(&part).copied().unwrap_or(-1)),
        );
    }
    Ok(fetched)
}

/// Whether the row fetched as `id` may still be published: its claim's lease is
/// still valid by this replica's own clock.
pub(super) fn may_publish(leases: &Leases, claims: &Claims, id: i64) -> bool {
    claims
        .of(id)
        .is_some_and(|(part, epoch)| leases.valid(part, epoch))
}

/// Records the outcomes, fenced, and lets go of their claims.
pub(super) async fn settle(
    pool: &Pool,
    leases: &Leases,
    claims: &Claims,
    metrics: &Metrics,
    settlements: &[Settlement],
) -> Result<(), OutboxError> {
    let claimed: Vec<(i16, i64)> = settlements
        .iter()
        .map(|s| claims.of(s.id()).unwrap_or((-1, -1)))
        .collect();
    let ids: Vec<i64> = settlements.iter().map(Settlement::id).collect();
    let effects: Vec<_> = settlements.iter().map(Settlement::effect).collect();
    let states: Vec<&str> = effects.iter().map(|e| e.state.as_str()).collect();
    let errors: Vec<Option<&str>> = effects.iter().map(|e| e.error).collect();
    let next_at: Vec<Option<i64>> = effects.iter().map(|e| e.retry_in_us).collect();
    let permanent: Vec<i32> = effects.iter().map(|e| i32::from(e.permanent)).collect();
    let parts: Vec<i16> = claimed.iter().map(|(p, _)| *p).collect();
    let epochs: Vec<i64> = claimed.iter().map(|(_, e)| *e).collect();
    let firsts: Vec<_> = settlements.iter().map(Settlement::first).collect();
    let sequences: Vec<Option<i64>> = firsts.iter().map(|f| f.map(|f| f.sequence)).collect();
    let stale: Vec<i16> = firsts
        .iter()
        .map(|f| i16::from(f.is_some_and(|f| f.stale)))
        .collect();
    let stages: Vec<Option<&str>> = firsts
        .iter()
        .map(|f| f.map(|f| f.stages.as_str()))
        .collect();
    let replica = leases.replica.as_str();
    let now_us = now_micros();
    let recorded = bounded(STATEMENT_TIMEOUT, async {
        let client = pooled(pool).await?;
        // Fenced: only rows of partitions this replica still holds, under the
        // epoch they were fetched with, while the lease has not passed. The
        // partition rows are not locked: a takeover that commits while this
        // statement runs can at worst have the new owner publish a row this
        // one records as published, a duplicate like any takeover's, never a
        // loss or a reordering (a row is fetched only while pending and only
        // after the rows before it of its subject). Locking them cost a
        // multixact and a WAL record per partition per settle.
        let statement = client
            .prepare_cached(&sql::settle())
            .await
            .map_err(pg_error)?;
        client
            .query(
                &statement,
                &[
                    &ids,
                    &parts,
                    &epochs,
                    &states,
                    &errors,
                    &next_at,
                    &permanent,
                    &replica,
                    &now_us,
                    &ATTEMPTS_KEPT,
                    &sequences,
                    &stale,
                    &stages,
                ],
            )
            .await
            .map_err(pg_error)
    })
    .await?;
    claims.release(&ids);
    // Refused: the partition was no longer held under the epoch (a row already
    // settled by an earlier try of this settle is no refusal).
    let fenced = recorded.iter().filter(|row| !row.get::<_, bool>(1)).count();
    if fenced > 0 {
        metrics.outbox_fenced_settles.inc_by(fenced as u64);
        tracing::warn!(
            rows = fenced,
            "publish outcomes refused: this replica's lease on their partition had passed; the new owner publishes them again"
        );
    }
    Ok(())
}
