//! The one interface a backend implements, in two halves, as River's driver
//! interface: [`Pipe`] is what ingress and the publisher use, [`Operate`] what
//! the operator's tools (admin API, console, `outbox` commands, retention, the
//! readiness probe) use. The publisher holds only a `Pipe`, so "the publisher only
//! settles" is a fact of its type: it cannot replay, release or purge.
//!
//! Everything built on these calls (pages, replay by filter, retention, views) is
//! written once, above the drivers, in the other files of `outbox/`.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;

use super::recall::Ledger;
use super::row::{FullRow, Row};
use super::{
    Due, EventFilter, InsertOutcome, Inventory, NewEvent, OutboxError, Replication, Settlement,
    Stats, Window,
};

/// The pipe's half: webhooks in, due rows out, publish outcomes back.
#[async_trait]
pub(crate) trait Pipe: Send + Sync {
    /// Stores a webhook durably (committed and synced) or fails; never both.
    async fn insert(&self, event: NewEvent) -> Result<InsertOutcome, OutboxError>;

    /// At most `limit` pending rows whose next attempt is due by the outbox's own
    /// clock, oldest first, at most one per subject (a row waits while an older
    /// row of its subject is pending), leaving out the rows in `in_flight`
    /// (published, outcome not yet recorded) before any body is read. A row whose
    /// metadata this release cannot read comes back apart, to be set aside.
    async fn fetch_due(&self, limit: usize, in_flight: &HashSet<i64>) -> Result<Due, OutboxError>;

    /// Whether the row fetched as `id` may still be published by this relay. On a
    /// shared outbox, false once the lease that the row was fetched under has
    /// passed: another relay may be publishing its subject by now.
    fn may_publish(&self, _id: i64) -> bool {
        true
    }

    /// Lets go of rows fetched and never sent (they stay due as they are): on a
    /// shared outbox their claims no longer hold back the handoff of their
    /// partitions.
    fn unclaim(&self, _ids: &[i64]) {}

    /// Records the outcome of a batch of publish attempts in one transaction.
    /// Shared, so a caller that retries after a failure does not copy the batch.
    async fn settle(&self, settlements: Arc<[Settlement]>) -> Result<(), OutboxError>;

    /// Resolves when the outbox can no longer work at all (its writer is gone), so
    /// the process can exit and be restarted instead of answering 503 forever.
    async fn failed(&self);

    /// Called once at shutdown, after the publisher stopped: a shared outbox hands
    /// this relay's share of the work to the others at once.
    async fn close(&self) {}
}

/// The operator's half: counts, probes, finding rows, and the changes a person
/// asks for; and the recovery ledger ([`Ledger`], read and written through
/// [`Recall`](super::recall::Recall)).
#[async_trait]
pub(crate) trait Operate: Ledger + Send + Sync {
    /// Counts by state and the oldest pending receive time.
    async fn stats(&self) -> Result<Stats, OutboxError>;

    /// Succeeds when the outbox can take writes now: a probe write commits, and no
    /// insert commit has failed recently without one succeeding since.
    async fn check_writable(&self) -> Result<(), OutboxError>;

    /// What stands behind the outbox's commits if its server is lost.
    async fn replication(&self) -> Result<Replication, OutboxError>;

    /// Counts by state and size on disk (slower than [`stats`](Self::stats): it
    /// counts published rows too).
    async fn inventory(&self) -> Result<Inventory, OutboxError>;

    /// The lowest and highest row ids, or `None` when the outbox is empty.
    async fn id_range(&self) -> Result<Option<(i64, i64)>, OutboxError>;

    /// At most `limit` rows matching `filter` inside `window`, in the window's
    /// order, without headers and body ([`query`](super::query) builds pages,
    /// counts and timelines on it).
    async fn find(
        &self,
        filter: &EventFilter,
        window: Window,
        limit: usize,
    ) -> Result<Vec<Row>, OutboxError>;

    /// One row with its headers, raw body, traceparent and failed attempts.
    async fn show(&self, id: i64) -> Result<Option<FullRow>, OutboxError>;

    /// Puts these rows back to `pending`, due now, in one transaction, so they are
    /// published again with the same message id. Returns how many rows changed.
    async fn replay(&self, ids: Vec<i64>) -> Result<u64, OutboxError>;

    /// Lets the later events of these dead rows' subjects be published while the
    /// rows themselves stay dead (until replayed). Returns how many rows were
    /// released; the time is recorded with each.
    async fn release(&self, ids: Vec<i64>) -> Result<u64, OutboxError>;

    /// Deletes at most `limit` published rows confirmed before `cutoff_us`; returns
    /// how many. Never touches pending or dead rows.
    async fn purge_published(&self, cutoff_us: i64, limit: usize) -> Result<u64, OutboxError>;

    /// Forgets the sequences of at most `limit` subjects unchanged since
    /// `cutoff_us` that have no row left (a later event of one starts again at
    /// 1); returns how many.
    async fn forget_subjects(&self, cutoff_us: i64, limit: usize) -> Result<u64, OutboxError>;
}
