//! The ingest queue, the same for every backend: webhooks wait here for the
//! driver's writer, which takes them in batches (group commit) and answers each
//! caller only once its batch is committed.
//!
//! The queue is bounded: when it is full, ingress answers 503 at once instead of
//! holding requests (and their bodies) in memory. A caller waits at most
//! [`INSERT_TIMEOUT`] for its answer, so a stalled disk or a silent database cannot
//! pile requests up without bound. Batches grow with load and never wait on a
//! timer: a writer takes the first webhook waiting, then whatever else is queued.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::{InsertOutcome, NewEvent, OutboxError};
use crate::metrics::Metrics;

/// Most webhooks waiting for a writer; beyond it ingress answers 503 at once.
pub(crate) const QUEUE_CAPACITY: usize = 2048;

/// Longest wait for an insert's commit; then the webhook gets 503. Well under the
/// 10 s and more that providers wait for an answer, and over the 5 s that SQLite's
/// writer waits for another process's lock, so that case keeps its own message.
pub(crate) const INSERT_TIMEOUT: Duration = Duration::from_secs(8);

/// How long a failed insert commit keeps the outbox unready when no insert has
/// succeeded since: long enough for `/readyz` probes to see it, short enough that
/// a relay taken out of a load balancer (so getting no webhooks to prove recovery)
/// comes back on its write probe alone.
const RECENT_FAILURE: Duration = Duration::from_secs(30);

/// Where a caller's outcome goes.
type Reply = oneshot::Sender<Result<InsertOutcome, OutboxError>>;

/// A webhook waiting for a writer.
pub(crate) struct Queued {
    event: Box<NewEvent>,
    reply: Reply,
}

/// The callers' side of the queue; cheap to clone.
#[derive(Clone)]
pub(crate) struct Intake {
    queue: mpsc::Sender<Queued>,
    timeout: Duration,
    health: InsertHealth,
}

/// The writers' side of the queue.
pub(crate) struct Queue(mpsc::Receiver<Queued>);

/// A new, empty queue: its intake for callers, its receiving end for the writer(s),
/// and the insert health they share.
pub(crate) fn queue() -> (Intake, Queue) {
    let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
    let intake = Intake {
        queue: tx,
        timeout: INSERT_TIMEOUT,
        health: InsertHealth::default(),
    };
    (intake, Queue(rx))
}

impl Intake {
    /// Queues a webhook and waits for its commit, at most [`INSERT_TIMEOUT`]. If the
    /// commit lands after this 503, the provider's retry is a duplicate and gets a
    /// 200.
    pub(crate) async fn insert(&self, event: NewEvent) -> Result<InsertOutcome, OutboxError> {
        storable(&event)?;
        let (reply, answer) = oneshot::channel();
        self.queue
            .try_send(Queued {
                event: Box::new(event),
                reply,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => OutboxError::Overloaded,
                mpsc::error::TrySendError::Closed(_) => OutboxError::Closed,
            })?;
        match tokio::time::timeout(self.timeout, answer).await {
            Ok(answer) => answer.map_err(|_| OutboxError::Closed)?,
            Err(_) => Err(OutboxError::TimedOut(self.timeout.as_secs())),
        }
    }

    /// Queues a webhook without [`storable`]'s check, as if it had passed it: for
    /// tests of what a driver does with data its database refuses.
    #[cfg(test)]
    pub(crate) async fn insert_unchecked(
        &self,
        event: NewEvent,
    ) -> Result<InsertOutcome, OutboxError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .try_send(Queued {
                event: Box::new(event),
                reply,
            })
            .map_err(|_| OutboxError::Overloaded)?;
        answer.await.map_err(|_| OutboxError::Closed)?
    }

    /// Resolves when no writer is left to take webhooks: the writers own the
    /// receiving end, which is dropped when the last of them ends (by return or by
    /// panic).
    pub(crate) async fn closed(&self) {
        self.queue.closed().await;
    }

    /// The health of insert commits, as the writers report it.
    pub(crate) fn health(&self) -> &InsertHealth {
        &self.health
    }

    /// The same intake with another commit timeout (tests of a stalled commit).
    #[cfg(test)]
    pub(crate) fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// Refuses a webhook whose texts kept as columns hold a character a backend cannot
/// keep (PostgreSQL's `text` cannot hold NUL), on every backend alike: the same
/// webhooks are stored whatever the backend, and one that cannot be is refused
/// alone, never with the batch it would have been committed in.
pub(crate) fn storable(event: &NewEvent) -> Result<(), OutboxError> {
    let texts = [
        ("subject (its order or record id)", &event.meta.subject),
        ("idempotency key", &event.meta.idempotency_key),
    ];
    for (field, text) in texts {
        if text.contains('\0') {
            return Err(OutboxError::Unstorable {
                field,
                what: "a NUL character (U+0000)".to_owned(),
            });
        }
    }
    Ok(())
}

/// How large one batch may grow.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Most webhooks.
    pub(crate) webhooks: usize,
    /// Body bytes past which it takes no more.
    pub(crate) bytes: usize,
}

impl Queue {
    /// Waits for the first webhook of the next batch; `None` once the intake is
    /// dropped and the queue is empty.
    pub(crate) async fn first(&mut self) -> Option<Queued> {
        self.0.recv().await
    }

    /// Waits for the next batch: the first webhook queued and whatever else is
    /// queued by then, within `limits`; `None` once the intake is dropped.
    pub(crate) async fn next(&mut self, limits: Limits) -> Option<Batch> {
        let first = self.first().await?;
        self.take(Some(first), limits)
    }

    /// A batch of `first` (or, without it, of the first webhook already queued, if
    /// any) and whatever else is already queued, within `limits`.
    pub(crate) fn take(&mut self, first: Option<Queued>, limits: Limits) -> Option<Batch> {
        let first = first.or_else(|| self.0.try_recv().ok())?;
        let mut bytes = first.event.body.len();
        let mut queued = vec![first];
        while queued.len() < limits.webhooks && bytes < limits.bytes {
            match self.0.try_recv() {
                Ok(next) => {
                    bytes += next.event.body.len();
                    queued.push(next);
                }
                Err(_) => break,
            }
        }
        Some(Batch(queued))
    }
}

/// Webhooks committed together.
pub(crate) struct Batch(Vec<Queued>);

impl Batch {
    /// The webhooks, in the order they were queued.
    pub(crate) fn events(&self) -> impl Iterator<Item = &NewEvent> {
        self.0.iter().map(|queued| queued.event.as_ref())
    }

    /// How many webhooks it holds.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Answers every caller once the batch's transaction has ended: each its own
    /// outcome (in the order of [`events`](Self::events)), or all of them the
    /// error; nothing is acked that is not committed. Records the commit in the
    /// metrics and the insert health.
    pub(crate) fn answer(
        self,
        stored: Result<Vec<InsertOutcome>, OutboxError>,
        metrics: &Metrics,
        health: &InsertHealth,
    ) {
        match stored {
            Ok(outcomes) => {
                metrics
                    .outbox_commit_batch_size
                    .observe(self.0.len() as f64);
                health.succeeded();
                for (queued, outcome) in self.0.into_iter().zip(outcomes) {
                    let _ = queued.reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                commit_failed(metrics, &e, self.0.len());
                health.failed(&e);
                for queued in self.0 {
                    let _ = queued.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

impl Batch {
    /// The same webhooks as batches of one each, to store them one by one when
    /// the database refused the batch for one of them.
    pub(crate) fn one_by_one(self) -> Vec<Batch> {
        self.0
            .into_iter()
            .map(|queued| Batch(vec![queued]))
            .collect()
    }

    /// Answers every caller `error`: the database refused the data itself, which no
    /// retry changes. The outbox is healthy, so neither its health nor its commit
    /// failures record it.
    pub(crate) fn refuse(self, error: &OutboxError) {
        for queued in self.0 {
            let _ = queued.reply.send(Err(error.clone()));
        }
    }
}

/// Logs and counts a transaction that failed with `requests` callers in it, who
/// all get `error` (and ingress a 503).
pub(crate) fn commit_failed(metrics: &Metrics, error: &OutboxError, requests: usize) {
    tracing::error!(error = %error, requests, "outbox commit failed; every request in it gets 503");
    metrics
        .outbox_commit_failures
        .with_label_values(&[error.reason()])
        .inc();
}

/// The last insert commit that failed, while no insert commit has succeeded since:
/// what `check_writable` reports before it even probes. Cheap to clone (shared).
#[derive(Clone, Default)]
pub(crate) struct InsertHealth(Arc<Mutex<Option<(Instant, OutboxError)>>>);

impl InsertHealth {
    fn slot(&self) -> MutexGuard<'_, Option<(Instant, OutboxError)>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An insert commit succeeded: whatever failed before is over.
    pub(crate) fn succeeded(&self) {
        *self.slot() = None;
    }

    /// An insert commit failed with `error`.
    pub(crate) fn failed(&self, error: &OutboxError) {
        *self.slot() = Some((Instant::now(), error.clone()));
    }

    /// The failure, if one happened lately and nothing succeeded since.
    pub(crate) fn recent_failure(&self) -> Result<(), OutboxError> {
        match self.slot().as_ref() {
            Some((at, error)) if at.elapsed() < RECENT_FAILURE => Err(error.clone()),
            _ => Ok(()),
        }
    }
}
