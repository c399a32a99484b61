//! Retention: published rows older than `HOOKRELAY_RETENTION` are deleted in the
//! background, every minute, in small batches. Pending and dead rows are never
//! touched.

use std::sync::Arc;
use std::time::Duration;

use super::driver::Operate;

/// How often retention looks for published rows to delete.
const INTERVAL: Duration = Duration::from_secs(60);

/// Deletes published rows older than `retention` now and every minute, until
/// `stop` turns true.
pub(crate) async fn run(
    outbox: Arc<dyn Operate>,
    retention: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let cutoff =
            crate::clock::now_micros() - i64::try_from(retention.as_micros()).unwrap_or(i64::MAX);
        match super::select::purge_published(outbox.as_ref(), cutoff).await {
            Ok(0) => {}
            Ok(purged) => tracing::info!(rows = purged, "retention purged published rows"),
            Err(e) => {
                tracing::warn!(error = %e, "retention could not purge published rows; will retry");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(INTERVAL) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
