//! The outbox: the durable queue between ingress and publisher.
//!
//! A row is written (and synced) before the provider gets its ack; a row leaves the
//! `pending` state only when the broker has confirmed the publish. Ingress and
//! publisher see only the [`Outbox`] trait, so the backend (SQLite embedded, or
//! PostgreSQL shared by replicas) is chosen by `HOOKRELAY_OUTBOX_URL` alone.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::config::OutboxUrl;
use crate::event::EventMeta;

pub mod sqlite;

/// Row states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Waiting to be published (new, or retrying).
    Pending,
    /// Confirmed by the broker.
    Published,
    /// Given up on after a permanent failure; needs a person (`outbox replay`).
    Dead,
}

impl State {
    /// The state as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Published => "published",
            Self::Dead => "dead",
        }
    }
}

/// A webhook to store.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Normalized metadata (id, source, routing facts).
    pub meta: EventMeta,
    /// Request headers kept for audit, as a JSON object (secrets removed).
    pub headers_json: String,
    /// The raw body, exactly as received.
    pub body: Bytes,
    /// Receive time, Unix microseconds.
    pub received_at_us: i64,
    /// W3C `traceparent` to carry into the published message.
    pub traceparent: String,
}

/// The result of storing a webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertOutcome {
    /// Stored as a new pending row.
    Inserted,
    /// The source already has a row with this idempotency key; nothing was stored.
    Duplicate,
}

/// A pending row handed to the publisher.
#[derive(Debug, Clone)]
pub struct PendingEvent {
    /// Row id (received order).
    pub id: i64,
    /// Normalized metadata.
    pub meta: EventMeta,
    /// Raw body.
    pub body: Vec<u8>,
    /// Receive time, Unix microseconds.
    pub received_at_us: i64,
    /// W3C `traceparent`.
    pub traceparent: String,
    /// Publish attempts so far.
    pub attempts: u32,
}

/// What became of one publish attempt.
#[derive(Debug, Clone)]
pub enum Settlement {
    /// The broker confirmed it: the row becomes `published`.
    Published {
        /// Row id.
        id: i64,
    },
    /// It was not confirmed: the row stays `pending` until `next_attempt_at_us`.
    Retry {
        /// Row id.
        id: i64,
        /// Why, for `last_error`.
        error: String,
        /// Earliest next attempt, Unix microseconds.
        next_attempt_at_us: i64,
    },
}

/// Counts for metrics and `/readyz`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Rows waiting to be published.
    pub pending: u64,
    /// Rows given up on.
    pub dead: u64,
    /// Receive time of the oldest pending row, Unix microseconds.
    pub oldest_pending_us: Option<i64>,
}

/// Why the outbox could not do what was asked. Ingress answers all of them with 503,
/// so the provider retries later.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OutboxError {
    /// The write queue is full: the disk cannot keep up with the request rate.
    #[error("the outbox write queue is full; retry later")]
    Overloaded,
    /// The database refused or failed the operation (disk full, read-only, down).
    #[error("the outbox cannot write: {0}")]
    Storage(String),
    /// The outbox is shutting down.
    #[error("the outbox is shutting down")]
    Closed,
    /// The outbox URL names a backend this build does not have yet.
    #[error("outbox backend not available: {0}")]
    Unsupported(String),
}

/// The durable store behind ingress and publisher.
#[async_trait]
pub trait Outbox: Send + Sync {
    /// Stores a webhook durably (committed and synced) or fails; never both.
    async fn insert(&self, event: NewEvent) -> Result<InsertOutcome, OutboxError>;

    /// Pending rows whose next attempt is due, oldest first, at most one per subject
    /// (a row waits while an older row of its subject is pending).
    async fn fetch_due(&self, now_us: i64, limit: usize) -> Result<Vec<PendingEvent>, OutboxError>;

    /// Records the outcome of a batch of publish attempts in one transaction.
    async fn settle(&self, settlements: Vec<Settlement>) -> Result<(), OutboxError>;

    /// Counts by state and the oldest pending receive time.
    async fn stats(&self) -> Result<Stats, OutboxError>;

    /// Succeeds when the outbox can take writes now.
    async fn check_writable(&self) -> Result<(), OutboxError>;
}

/// Opens the outbox named by the URL, creating it if absent.
pub async fn open(
    url: &OutboxUrl,
    metrics: Arc<crate::metrics::Metrics>,
) -> Result<Arc<dyn Outbox>, OutboxError> {
    match url {
        OutboxUrl::Sqlite(path) => Ok(Arc::new(sqlite::SqliteOutbox::open(path, metrics).await?)),
        OutboxUrl::Postgres(_) => Err(OutboxError::Unsupported(
            "the PostgreSQL outbox is not built yet; use sqlite://PATH".to_owned(),
        )),
    }
}
