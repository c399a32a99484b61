//! The changes an operator asks for, with one meaning for every front end: the
//! admin API, the console and the `outbox` commands name rows the same way
//! ([`Selection`]), replay them in the same short transactions, and purge in the
//! same batches as retention does.

use std::collections::BTreeSet;

use super::driver::Operate;
use super::query::{self, EventFilter};
use super::{OutboxError, State, UNREADABLE};

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
    in_batches(|limit| outbox.purge_published(cutoff_us, limit)).await
}

/// Forgets the sequences of every subject with no row left that has not changed
/// since `cutoff_us`, [`PURGE_BATCH`] per transaction; returns how many.
pub(crate) async fn forget_subjects(
    outbox: &dyn Operate,
    cutoff_us: i64,
) -> Result<u64, OutboxError> {
    in_batches(|limit| outbox.forget_subjects(cutoff_us, limit)).await
}

/// Runs `batch` (which deletes at most its argument's rows and says how many)
/// until a batch comes back short, yielding in between; returns the total.
async fn in_batches<F, Fut>(mut batch: F) -> Result<u64, OutboxError>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<u64, OutboxError>>,
{
    let mut total = 0;
    loop {
        let n = batch(PURGE_BATCH).await?;
        total += n;
        if n < PURGE_BATCH as u64 {
            return Ok(total);
        }
        tokio::task::yield_now().await;
    }
}

/// Replays the dead rows an older release set aside as unreadable (their error
/// starts with [`UNREADABLE`]) that this release reads: each held its subject, so
/// nothing after it was published, and it goes first again. Run once at start;
/// returns how many rows it put back.
pub(crate) async fn revive_unreadable(outbox: &dyn Operate) -> Result<u64, OutboxError> {
    let dead = EventFilter {
        state: Some(State::Dead),
        ..EventFilter::default()
    };
    let readable_now = |row: &crate::outbox::row::Row| {
        row.meta.is_some()
            && row
                .last_error
                .as_deref()
                .is_some_and(|error| error.starts_with(UNREADABLE))
    };
    let ids = query::matching_ids_where(outbox, &dead, readable_now).await?;
    replay(outbox, &ids).await
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use async_trait::async_trait;

    use super::*;
    use crate::outbox::row::{FullRow, Row};
    use crate::outbox::{Inventory, Stats, Window};

    /// An outbox whose `find` answers the rows with ids in `matching` (as if
    /// those matched the filter); any other call is a test failure.
    struct Matching(Vec<i64>);

    fn row(id: i64) -> Row {
        Row {
            id,
            event_id: String::new(),
            source: String::new(),
            provider: String::new(),
            routing_key: String::new(),
            state: "dead".to_owned(),
            attempts: 0,
            last_error: None,
            received_at_us: 0,
            next_attempt_at_us: 0,
            published_at_us: None,
            idempotency_key: String::new(),
            permanent_attempts: 0,
            released_at_us: None,
            subject: String::new(),
            meta: None,
            sequence: None,
            stale: false,
        }
    }

    crate::outbox::fake::closed_ledger!(Matching);

    #[async_trait]
    impl Operate for Matching {
        async fn id_range(&self) -> Result<Option<(i64, i64)>, OutboxError> {
            Ok(Some((1, 100)))
        }
        async fn find(
            &self,
            _: &EventFilter,
            window: Window,
            _: usize,
        ) -> Result<Vec<Row>, OutboxError> {
            Ok(self
                .0
                .iter()
                .filter(|id| **id > window.above && **id < window.below)
                .map(|id| row(*id))
                .collect())
        }
        async fn stats(&self) -> Result<Stats, OutboxError> {
            panic!("not asked")
        }
        async fn check_writable(&self) -> Result<(), OutboxError> {
            panic!("not asked")
        }
        async fn replication(&self) -> Result<crate::outbox::Replication, OutboxError> {
            Ok(crate::outbox::Replication::Local)
        }

        async fn inventory(&self) -> Result<Inventory, OutboxError> {
            panic!("not asked")
        }
        async fn show(&self, _: i64) -> Result<Option<FullRow>, OutboxError> {
            panic!("not asked")
        }
        async fn replay(&self, _: Vec<i64>) -> Result<u64, OutboxError> {
            panic!("not asked")
        }
        async fn release(&self, _: Vec<i64>) -> Result<u64, OutboxError> {
            panic!("not asked")
        }
        async fn purge_published(&self, _: i64, _: usize) -> Result<u64, OutboxError> {
            panic!("not asked")
        }
        async fn forget_subjects(&self, _: i64, _: usize) -> Result<u64, OutboxError> {
            panic!("not asked")
        }
    }

    fn dead() -> EventFilter {
        EventFilter {
            state: Some(crate::outbox::State::Dead),
            ..EventFilter::default()
        }
    }

    #[tokio::test]
    async fn ids_and_a_filter_name_the_given_rows_that_match() {
        let outbox = Matching(vec![3, 5, 8]);
        let both = Selection {
            ids: vec![8, 4, 3, 3],
            filter: dead(),
        };
        assert_eq!(both.ids(&outbox).await.ok(), Some(vec![3, 8]));
        let filter = Selection {
            ids: Vec::new(),
            filter: dead(),
        };
        assert_eq!(filter.ids(&outbox).await.ok(), Some(vec![3, 5, 8]));
    }

    #[tokio::test]
    async fn ids_alone_are_taken_once_each_without_asking_the_outbox() {
        let ids = Selection {
            ids: vec![9, 2, 9],
            filter: EventFilter::default(),
        };
        let taken = tokio::time::timeout(
            Duration::from_secs(1),
            ids.ids(&crate::outbox::fake::Hanging::default()),
        )
        .await;
        assert_eq!(taken.ok().and_then(Result::ok), Some(vec![2, 9]));
    }

    #[tokio::test]
    async fn nothing_named_and_too_many_ids_are_refused() {
        let outbox = Matching(Vec::new());
        let nothing = Selection::default().ids(&outbox).await;
        assert!(matches!(nothing, Err(SelectError::NothingNamed)));
        let many = Selection {
            ids: (0..=i64::try_from(MAX_IDS).unwrap_or(i64::MAX)).collect(),
            filter: EventFilter::default(),
        };
        assert!(matches!(
            many.ids(&outbox).await,
            Err(SelectError::TooManyIds)
        ));
    }
}
