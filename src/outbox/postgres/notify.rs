//! Wake-up across replicas: after commits, `NOTIFY hookrelay_outbox` (at most
//! every [`ANNOUNCE_INTERVAL`]); every replica listens on a connection of its own
//! and wakes its publisher. Polling every second remains the guarantee (a
//! notification sent while disconnected is lost).

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::{Notify, watch};

use super::connect::Target;
use super::error::{CHECKOUT_TIMEOUT, STATEMENT_TIMEOUT, bounded, pg_error, pooled};
use super::sql;

/// The channel commits are announced on.
const CHANNEL: &str = "hookrelay_outbox";
/// Least time between two announcements of commits by one replica.
const ANNOUNCE_INTERVAL: Duration = Duration::from_millis(20);

/// Tells the other replicas' publishers that webhooks were committed: one
/// `NOTIFY` after a commit, then at most one per [`ANNOUNCE_INTERVAL`] however many
/// batches commit meanwhile (a `Notify` keeps one permit, so the last commit of an
/// interval is always announced). Each `NOTIFY` is a transaction of its own that
/// serialises with the others at commit, so one per batch would cost as much as
/// the inserts. A lost one costs at most the publishers' one-second poll.
pub(super) async fn announce(pool: Pool, committed: Arc<Notify>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = committed.notified() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if let Ok(client) = pooled(&pool).await {
            let _ = bounded(STATEMENT_TIMEOUT, async move {
                client
                    .execute(sql::ANNOUNCE, &[&CHANNEL])
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
pub(super) async fn listen(
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
            if client.batch_execute(&sql::listen(CHANNEL)).await.is_ok() {
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
