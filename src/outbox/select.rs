//! The changes an operator asks for, with one meaning for every front end: the
//! admin API, the console and the `outbox` commands name rows the same way
//! ([`Selection`]), replay them in the same short transactions, and purge in the
//! same batches as retention does.

use std::collections::BTreeSet;

use super::OutboxError;
use super::driver::Operate;
use super::query::{self, EventFilter};

/// Most ids one request may name: a longer list is a filter's job.
pub(crate) const MAX_IDS: usize = 10_000;

/// Ids replayed per call to [`Operate::replay`]: each call is one short
/// transaction, so webhooks commit between them.
const REPLAY_CHUNK: usize = 1000;

/// Rows deleted per transaction by retention and `outbox purge`, so a purge never
/// holds the write lock for long.
pub(crate) const PURGE_BATCH: usize = 1000;

/// Rows an operator names: ids, a filter, or both, which means the named rows
/// that match the filter.
#[derive(Debug, Clone, Default)]
pub(crate) struct Selection {
    /// Row ids.
    pub(crate) ids: Vec<i64>,
    /// Filters; the default filter matches every row.
    pub(crate) filter: EventFilter,
}

/// Why a selection names no rows it may act on.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SelectError {
    /// Neither ids nor a filter: "every row" has to be asked for with a filter.
    #[error("neither ids nor a filter name the rows")]
    NothingNamed,
    /// More ids than [`MAX_IDS`].
    #[error("at most {MAX_IDS} ids at once: use a filter for more")]
    TooManyIds,
    /// Looking the rows up failed.
    #[error("{0}")]
    Outbox(#[from] OutboxError),
}

impl Selection {
    /// Whether it holds a filter that narrows anything.
    pub(crate) fn filtered(&self) -> bool {
        self.filter != EventFilter::default()
    }

    /// The ids of the rows it names, each once, oldest first. Ids alone are taken
    /// as given (without a look at the outbox); with a filter every row is
    /// matched against it.
    pub(crate) async fn ids(&self, outbox: &dyn Operate) -> Result<Vec<i64>, SelectError> {
        if self.ids.len() > MAX_IDS {
            return Err(SelectError::TooManyIds);
        }
        let named: BTreeSet<i64> = self.ids.iter().copied().collect();
        match (named.is_empty(), self.filtered()) {
            (true, false) => Err(SelectError::NothingNamed),
            (false, false) => Ok(named.into_iter().collect()),
            (true, true) => Ok(query::matching_ids(outbox, &self.filter).await?),
            (false, true) => {
                let mut matching = query::matching_ids(outbox, &self.filter).await?;
                matching.retain(|id| named.contains(id));
                Ok(matching)
            }
        }
    }
}

/// Puts `ids` back to pending in chunks of [`REPLAY_CHUNK`]; returns how many
/// rows changed.
pub(crate) async fn replay(outbox: &dyn Operate, ids: &[i64]) -> Result<u64, OutboxError> {
    let mut total = 0;
    for chunk in ids.chunks(REPLAY_CHUNK) {
        total += outbox.replay(chunk.to_vec()).await?;
    }
    Ok(total)
}

/// Deletes every published row confirmed before `cutoff_us`, [`PURGE_BATCH`] rows
/// per transaction, letting other work in between; returns how many.
pub(crate) async fn purge_published(
    outbox: &dyn Operate,
    cutoff_us: i64,
) -> Result<u64, OutboxError> {
    let mut total = 0;
    loop {
        let n = outbox.purge_published(cutoff_us, PURGE_BATCH).await?;
        total += n;
        if n < PURGE_BATCH as u64 {
            return Ok(total);
        }
        tokio::task::yield_now().await;
    }
}

/// Writes an operator's replay to the `hookrelay::audit` log: through what (`cli`,
/// `api`, `console`) and from where it was asked, what it named, how many rows
/// matched and how many changed.
pub(crate) fn audit_replay(
    via: &str,
    from: &str,
    selection: &Selection,
    matched: usize,
    replayed: u64,
) {
    tracing::info!(
        target: "hookrelay::audit",
        action = "replay", via, from, ids = selection.ids.len(), matched, replayed,
        filter = %serde_json::to_string(&selection.filter).unwrap_or_default(),
        "operator replayed events"
    );
}
