//! The SQLite outbox's reads, beside the writer (WAL lets them run while it
//! commits): the publisher's and the probes' on one connection, the operator's
//! on another, on a thread of its own at the lowest priority.

use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::error::fault;
use crate::outbox::{FaultKind, OutboxError};

/// The publisher's and the probes' read connection; cheap to share.
#[derive(Clone)]
pub(super) struct Reader(Arc<Mutex<Connection>>);

impl Reader {
    pub(super) fn new(conn: Connection) -> Self {
        Self(Arc::new(Mutex::new(conn)))
    }

    /// Runs `read` on the connection, on a blocking thread of the runtime.
    pub(super) async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Connection) -> Result<T, OutboxError> + Send + 'static,
    ) -> Result<T, OutboxError> {
        let conn = Arc::clone(&self.0);
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
            read(&conn)
        })
        .await
        .map_err(|e| fault(FaultKind::Other, e))?
    }
}

/// A read the operator asked for, run on the browser thread.
type Browse = Box<dyn FnOnce(&Connection) + Send>;

/// The operator's reads (admin API, console, `outbox` commands), one after the
/// other on a connection and a thread of their own.
pub(super) struct Browser(mpsc::UnboundedSender<Browse>);

impl Browser {
    /// Starts the browser thread on `conn`; it ends when the handle is dropped.
    pub(super) fn start(conn: Connection) -> Result<Self, OutboxError> {
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("outbox-browser".to_owned())
            .spawn(move || browse_loop(&conn, rx))
            .map_err(|e| {
                fault(
                    FaultKind::Other,
                    format_args!("cannot start the browser thread: {e}"),
                )
            })?;
        Ok(Self(tx))
    }

    /// Runs `read` on the browser thread.
    pub(super) async fn browse<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Connection) -> Result<T, OutboxError> + Send + 'static,
    ) -> Result<T, OutboxError> {
        let (reply, answer) = oneshot::channel();
        let job: Browse = Box::new(move |conn| {
            let _ = reply.send(read(conn));
        });
        self.0.send(job).map_err(|_| OutboxError::Closed)?;
        answer.await.map_err(|_| OutboxError::Closed)?
    }
}

/// Runs the operator's reads one after the other at the lowest CPU priority
/// (nice 19). A text search reads every body in its windows; at normal priority
/// it took a core from ingest on a busy machine (acked/s fell to 57 % during
/// back-to-back searches on two cores). At nice 19 it gets what ingest and the
/// publisher leave, and on an idle relay all of it.
fn browse_loop(conn: &Connection, mut jobs: mpsc::UnboundedReceiver<Browse>) {
    // On Linux, `setpriority(PRIO_PROCESS, 0, …)` sets the calling thread's nice
    // value. Best effort: a relay not allowed to lower it still works.
    // SAFETY: setpriority takes no pointers; it only reads its integer arguments.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) } != 0 {
        tracing::debug!("cannot lower the browser thread's priority");
    }
    while let Some(job) = jobs.blocking_recv() {
        job(conn);
    }
}
