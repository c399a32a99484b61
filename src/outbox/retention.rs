//! Retention: published rows older than `HOOKRELAY_RETENTION` are deleted in the
//! background, every minute, in small batches. Pending and dead rows are never
//! touched. Every hour, the sequences of subjects that have no row left and have
//! not changed for `HOOKRELAY_SEQUENCE_RETENTION` are forgotten too.

use std::sync::Arc;
use std::time::Duration;

use super::driver::Operate;

/// How often retention looks for published rows to delete.
const INTERVAL: Duration = Duration::from_secs(60);

/// Every how many passes it looks for subjects to forget: finding them reads
/// every subject's sequence (an index on their age would cost a write per
/// publish), and forgetting one a little late costs nothing.
const FORGET_EVERY: u32 = 60;

/// How long rows and sequences are kept.
pub(crate) struct Keep {
    /// Published rows (`HOOKRELAY_RETENTION`).
    pub(crate) published: Duration,
    /// A subject's sequence, once none of its rows is left
    /// (`HOOKRELAY_SEQUENCE_RETENTION`).
    pub(crate) sequences: Duration,
}

/// The time `age` before now, Unix microseconds.
fn before_now(age: Duration) -> i64 {
    crate::clock::now_micros() - i64::try_from(age.as_micros()).unwrap_or(i64::MAX)
}

/// Deletes published rows older than `keep.published` now and every minute, and
/// forgets old subjects' sequences every hour, until `stop` turns true.
pub(crate) async fn run(
    outbox: Arc<dyn Operate>,
    keep: Keep,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    for pass in 0u32.. {
        match super::select::purge_published(outbox.as_ref(), before_now(keep.published)).await {
            Ok(0) => {}
            Ok(purged) => tracing::info!(rows = purged, "retention purged published rows"),
            Err(e) => {
                tracing::warn!(error = %e, "retention could not purge published rows; will retry");
            }
        }
        if pass % FORGET_EVERY == 0 {
            match super::select::forget_subjects(outbox.as_ref(), before_now(keep.sequences)).await
            {
                Ok(0) => {}
                Ok(forgotten) => tracing::info!(
                    subjects = forgotten,
                    "retention forgot the sequences of subjects with no row left"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "retention could not forget old subjects' sequences; will retry");
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(INTERVAL) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
