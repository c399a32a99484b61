//! The outbox: the durable queue between ingress and publisher.
//!
//! A row is written (and synced) before the provider gets its ack; a row leaves the
//! `pending` state only when the broker has confirmed the publish. Ingress and
//! publisher see only the [`Outbox`] trait, so the backend (SQLite embedded, or
//! PostgreSQL shared by replicas) is chosen by `HOOKRELAY_OUTBOX_URL` alone: this
//! module is the only one that parses that URL or names a backend.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::event::EventMeta;

pub(crate) mod postgres;
pub(crate) mod query;
pub(crate) mod sqlite;

pub(crate) use query::{EventFilter, Window};

#[cfg(test)]
pub(crate) mod fake;

/// Row states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum State {
    /// Waiting to be published (new, or retrying).
    Pending,
    /// Confirmed by the broker.
    Published,
    /// Given up on after a permanent failure; needs a person (`outbox replay`).
    Dead,
}

impl State {
    /// The state as stored.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Published => "published",
            Self::Dead => "dead",
        }
    }
}

/// A webhook to store.
#[derive(Debug, Clone)]
pub(crate) struct NewEvent {
    /// Normalized metadata (id, source, routing facts).
    pub(crate) meta: EventMeta,
    /// Request headers kept for audit, as a JSON object (secrets removed).
    pub(crate) headers_json: String,
    /// The raw body, exactly as received.
    pub(crate) body: Bytes,
    /// Receive time, Unix microseconds.
    pub(crate) received_at_us: i64,
    /// W3C `traceparent` to carry into the published message.
    pub(crate) traceparent: String,
}

/// The result of storing a webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InsertOutcome {
    /// Stored as a new pending row.
    Inserted,
    /// The source already has a row with this idempotency key; nothing was stored.
    Duplicate,
}

/// A pending row handed to the publisher.
#[derive(Debug, Clone)]
pub(crate) struct PendingEvent {
    /// Row id (received order).
    pub(crate) id: i64,
    /// Normalized metadata.
    pub(crate) meta: EventMeta,
    /// Raw body.
    pub(crate) body: Vec<u8>,
    /// Receive time, Unix microseconds.
    pub(crate) received_at_us: i64,
    /// W3C `traceparent`.
    pub(crate) traceparent: String,
    /// Publish attempts so far.
    pub(crate) attempts: u32,
    /// Of those, the ones that failed for a reason that will not pass by itself.
    pub(crate) permanent_attempts: u32,
}

/// What became of one publish attempt.
#[derive(Debug, Clone)]
pub(crate) enum Settlement {
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
        /// The failure will not pass by itself (counted apart: only these lead to
        /// `dead`).
        permanent: bool,
    },
    /// It failed permanently too often: the row becomes `dead` until a person
    /// replays it.
    Dead {
        /// Row id.
        id: i64,
        /// Why, for `last_error`.
        error: String,
    },
}

impl Settlement {
    /// The row it is about.
    pub(crate) fn id(&self) -> i64 {
        match self {
            Self::Published { id } | Self::Retry { id, .. } | Self::Dead { id, .. } => *id,
        }
    }
}

/// One row as the admin API, the console and the `outbox` commands present it.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct RowView {
    /// Row id (received order; the paging cursor).
    pub(crate) id: i64,
    /// Event id (the published `message_id`).
    pub(crate) event_id: String,
    /// Source name.
    pub(crate) source: String,
    /// Provider name.
    pub(crate) provider: String,
    /// Kind (`unrecognized` for an event that could not be parsed).
    pub(crate) kind: String,
    /// Normalized status (`unrecognized` likewise).
    pub(crate) status: String,
    /// The provider's status, as sent.
    pub(crate) provider_status: Option<String>,
    /// Ordering subject (the provider's order or record id).
    pub(crate) subject: String,
    /// Amount, as sent.
    pub(crate) amount: Option<String>,
    /// Currency, as sent.
    pub(crate) currency: Option<String>,
    /// Routing key it is published with.
    pub(crate) routing_key: String,
    /// State.
    pub(crate) state: String,
    /// Publish attempts so far.
    pub(crate) attempts: u32,
    /// Of those, the permanent failures.
    pub(crate) permanent_attempts: u32,
    /// When an operator released this dead row's subject, RFC 3339.
    pub(crate) released_at: Option<String>,
    /// Last publish error.
    pub(crate) last_error: Option<String>,
    /// Receive time, RFC 3339.
    pub(crate) received_at: String,
    /// Next attempt time (pending rows), RFC 3339.
    pub(crate) next_attempt_at: String,
    /// When the broker confirmed it, RFC 3339.
    pub(crate) published_at: Option<String>,
    /// Idempotency key.
    pub(crate) idempotency_key: String,
    /// Audit headers (only with `show`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) headers: Option<serde_json::Value>,
    /// The raw body (only with `show`).
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "body_text")]
    pub(crate) body: Option<Vec<u8>>,
    /// W3C `traceparent` the message carries (only with `show`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) traceparent: Option<String>,
    /// Failed publish attempts, oldest first, the last [`ATTEMPTS_KEPT`] of them
    /// (only with `show`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) failures: Option<Vec<Attempt>>,
    /// The stored metadata, from which the CloudEvent is built.
    #[serde(skip)]
    pub(crate) meta: Option<EventMeta>,
}

impl RowView {
    /// Fills the fields that come from the stored metadata (`meta` as JSON). A row
    /// whose metadata does not parse keeps placeholders: it is still shown.
    pub(crate) fn with_meta(mut self, meta: &str) -> Self {
        match serde_json::from_str::<EventMeta>(meta) {
            Ok(meta) => {
                let (kind, status) = meta.kind_status();
                kind.clone_into(&mut self.kind);
                status.clone_into(&mut self.status);
                self.provider_status.clone_from(&meta.provider_status);
                self.amount.clone_from(&meta.amount);
                self.currency.clone_from(&meta.currency);
                self.meta = Some(meta);
            }
            Err(_) => {
                "unreadable".clone_into(&mut self.kind);
                "unreadable".clone_into(&mut self.status);
            }
        }
        self
    }

    /// The source's redaction paths when the row was stored, so a view of the body
    /// hides what the published message hides.
    pub(crate) fn redact(&self) -> &[String] {
        self.meta.as_ref().map_or(&[], |meta| &meta.redact)
    }
}

/// Failed publish attempts kept per row: enough to see a pattern, bounded so a
/// long outage does not grow the log without end.
pub(crate) const ATTEMPTS_KEPT: i64 = 20;

/// One failed publish attempt.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Attempt {
    /// When it was recorded, RFC 3339.
    pub(crate) at: String,
    /// What the row became: `retry` or `dead`.
    pub(crate) outcome: String,
    /// Why it failed.
    pub(crate) error: String,
}

/// Bodies are shown as text when they are UTF-8, else as base64, so `--json`
/// output is always valid JSON and never alters a readable body.
fn body_text<S: serde::Serializer>(body: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
    use base64::Engine;
    match body {
        None => s.serialize_none(),
        Some(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => s.serialize_str(text),
            Err(_) => s.serialize_str(&format!(
                "base64:{}",
                base64::engine::general_purpose::STANDARD.encode(bytes)
            )),
        },
    }
}

/// Counts for `outbox stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Inventory {
    /// Rows waiting to be published.
    pub(crate) pending: u64,
    /// Rows confirmed by the broker and not yet purged.
    pub(crate) published: u64,
    /// Rows given up on.
    pub(crate) dead: u64,
    /// Age of the oldest pending row, seconds.
    pub(crate) oldest_pending_seconds: Option<u64>,
    /// Bytes on disk (database and write-ahead log).
    pub(crate) size_bytes: u64,
}

/// Counts for metrics and `/readyz`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Stats {
    /// Rows waiting to be published.
    pub(crate) pending: u64,
    /// Rows given up on.
    pub(crate) dead: u64,
    /// Receive time of the oldest pending row, Unix microseconds.
    pub(crate) oldest_pending_us: Option<i64>,
    /// Subjects whose later events wait behind a dead row nobody released.
    pub(crate) held_subjects: u64,
    /// Committed pending rows the publisher may not read yet, because a transaction
    /// that started before them is still open (PostgreSQL's fence; 0 on SQLite).
    pub(crate) fenced: u64,
    /// Receive time of the oldest of those, Unix microseconds: how long the fence
    /// has held publishing back (a moment whenever commits overlap; long when a
    /// transaction stays open).
    pub(crate) oldest_fenced_us: Option<i64>,
    /// Partitions this relay leases (PostgreSQL; 0 on SQLite, where one relay
    /// publishes everything).
    pub(crate) partitions: u64,
}

/// Why the outbox could not do what was asked. Ingress answers all of them with 503,
/// so the provider retries later.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OutboxError {
    /// The write queue is full: the disk cannot keep up with the request rate.
    #[error("the outbox write queue is full; retry later")]
    Overloaded,
    /// The database refused or failed the operation.
    #[error("{0}")]
    Storage(Fault),
    /// The outbox is shutting down.
    #[error("the outbox is shutting down")]
    Closed,
    /// The outbox holds as many unpublished webhooks as it may
    /// (`HOOKRELAY_OUTBOX_MAX_PENDING`): the broker is down or slower than the
    /// providers, and taking more would only fill the disk.
    #[error(
        "the outbox holds {pending} webhooks not yet published, its limit (HOOKRELAY_OUTBOX_MAX_PENDING is {limit}); they go out when the broker takes them: retry later"
    )]
    Full {
        /// Pending rows when last counted.
        pending: u64,
        /// The limit.
        limit: u64,
    },
    /// A commit did not finish in time (a stalled disk).
    #[error("the outbox did not commit within {0} s; retry later")]
    TimedOut(u64),
    /// `HOOKRELAY_OUTBOX_URL` is not a URL the outbox understands.
    #[error("invalid HOOKRELAY_OUTBOX_URL: {0}")]
    InvalidUrl(&'static str),
    /// The `outbox` commands were pointed at an outbox that does not exist.
    #[error(
        "there is no outbox at {0}: check HOOKRELAY_OUTBOX_URL (`hookrelay serve` creates the outbox)"
    )]
    Missing(String),
    /// Another `serve` holds the outbox.
    #[error(
        "another `hookrelay serve` is using the outbox at {0}: stop it first, or give this relay its own HOOKRELAY_OUTBOX_URL (replicas share one outbox only on PostgreSQL)"
    )]
    InUse(String),
}

impl OutboxError {
    /// A short, stable name for the cause: the `reason` of metrics and of the
    /// `/readyz` body.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Overloaded => "overloaded",
            Self::Storage(fault) => fault.kind.as_str(),
            Self::Closed => "closed",
            Self::Full { .. } => "full",
            Self::TimedOut(_) => "timeout",
            Self::InvalidUrl(_) | Self::Missing(_) => "config",
            Self::InUse(_) => "in_use",
        }
    }
}

/// A storage failure: what kind it is, so callers can tell a full disk from a busy
/// database, and the database's own words for the operator.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", self.describe())]
pub struct Fault {
    /// What failed.
    pub kind: FaultKind,
    /// The database's message.
    pub detail: String,
}

impl Fault {
    pub(crate) fn new(kind: FaultKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }

    fn describe(&self) -> String {
        let detail = &self.detail;
        match self.kind {
            FaultKind::DiskFull => "the outbox's disk is full: free space on it".to_owned(),
            FaultKind::Busy => {
                "the outbox database stayed locked by another writer; retry later".to_owned()
            }
            FaultKind::ReadOnly => {
                "the outbox database is read-only: check the file's permissions and mount"
                    .to_owned()
            }
            FaultKind::Io => format!("the outbox cannot read or write its files: {detail}"),
            FaultKind::Corrupt => {
                format!("the outbox database is damaged ({detail}): restore it from a backup")
            }
            FaultKind::Unavailable => format!(
                "cannot reach the outbox database ({detail}): check that it runs and that HOOKRELAY_OUTBOX_URL points at it"
            ),
            FaultKind::Other => format!("the outbox failed: {detail}"),
        }
    }
}

/// Kinds of storage failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// No space left for the database or its log.
    DiskFull,
    /// Another writer held the lock for longer than the relay waits.
    Busy,
    /// The database file or its folder cannot be written.
    ReadOnly,
    /// The operating system failed a read, write, sync or open.
    Io,
    /// The file is not a (healthy) database.
    Corrupt,
    /// The database server cannot be reached, or dropped the connection.
    Unavailable,
    /// Anything else.
    Other,
}

impl FaultKind {
    /// Every kind, for metrics initialised at zero.
    pub(crate) const ALL: [Self; 7] = [
        Self::DiskFull,
        Self::Busy,
        Self::ReadOnly,
        Self::Io,
        Self::Corrupt,
        Self::Unavailable,
        Self::Other,
    ];

    /// The `reason` label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::DiskFull => "disk_full",
            Self::Busy => "busy",
            Self::ReadOnly => "read_only",
            Self::Io => "io",
            Self::Corrupt => "corrupt",
            Self::Unavailable => "unavailable",
            Self::Other => "other",
        }
    }
}

/// The durable store behind ingress and publisher.
#[async_trait]
pub(crate) trait Outbox: Send + Sync {
    /// Stores a webhook durably (committed and synced) or fails; never both.
    async fn insert(&self, event: NewEvent) -> Result<InsertOutcome, OutboxError>;

    /// Pending rows whose next attempt is due, oldest first, at most one per subject
    /// (a row waits while an older row of its subject is pending), leaving out the
    /// rows in `in_flight` (published, outcome not yet recorded) before any body is
    /// read.
    async fn fetch_due(
        &self,
        now_us: i64,
        limit: usize,
        in_flight: &HashSet<i64>,
    ) -> Result<Vec<PendingEvent>, OutboxError>;

    /// Whether the row fetched as `id` may still be published by this relay. On a
    /// shared outbox, false once the lease that the row was fetched under has
    /// passed: another relay may be publishing its subject by now.
    fn may_publish(&self, _id: i64) -> bool {
        true
    }

    /// Records the outcome of a batch of publish attempts in one transaction.
    /// Shared, so a caller that retries after a failure does not copy the batch.
    async fn settle(&self, settlements: Arc<[Settlement]>) -> Result<(), OutboxError>;

    /// Counts by state and the oldest pending receive time.
    async fn stats(&self) -> Result<Stats, OutboxError>;

    /// Succeeds when the outbox can take writes now: a probe write commits, and no
    /// insert commit has failed recently without one succeeding since.
    async fn check_writable(&self) -> Result<(), OutboxError>;

    /// Counts by state and size on disk (slower than [`stats`](Self::stats): it
    /// counts published rows too).
    async fn inventory(&self) -> Result<Inventory, OutboxError>;

    /// The lowest and highest row ids, or `None` when the outbox is empty.
    async fn id_range(&self) -> Result<Option<(i64, i64)>, OutboxError>;

    /// At most `limit` rows matching `filter` inside `window`, in the window's
    /// order, without headers and body ([`query`] builds pages, counts and
    /// timelines on it).
    async fn find(
        &self,
        filter: &EventFilter,
        window: Window,
        limit: usize,
    ) -> Result<Vec<RowView>, OutboxError>;

    /// One row with its headers, raw body, traceparent and failed attempts.
    async fn show(&self, id: i64) -> Result<Option<RowView>, OutboxError>;

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

    /// Resolves when the outbox can no longer work at all (its writer is gone), so
    /// the process can exit and be restarted instead of answering 503 forever.
    async fn failed(&self);

    /// Called once at shutdown, after the publisher stopped: a shared outbox hands
    /// this relay's share of the work to the others at once.
    async fn close(&self) {}
}

/// How long a failed insert commit keeps the outbox unready when no insert has
/// succeeded since: long enough for `/readyz` probes to see it, short enough that
/// a relay taken out of a load balancer (so getting no webhooks to prove recovery)
/// comes back on its write probe alone.
const RECENT_FAILURE: std::time::Duration = std::time::Duration::from_secs(30);

/// The last insert commit that failed, while no insert commit has succeeded since:
/// what `check_writable` reports before it even probes. Cheap to clone (shared).
#[derive(Clone, Default)]
pub(crate) struct InsertHealth(Arc<std::sync::Mutex<Option<(std::time::Instant, OutboxError)>>>);

impl InsertHealth {
    fn slot(&self) -> std::sync::MutexGuard<'_, Option<(std::time::Instant, OutboxError)>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// An insert commit succeeded: whatever failed before is over.
    pub(crate) fn succeeded(&self) {
        *self.slot() = None;
    }

    /// An insert commit failed with `error`.
    pub(crate) fn failed(&self, error: &OutboxError) {
        *self.slot() = Some((std::time::Instant::now(), error.clone()));
    }

    /// The failure, if one happened lately and nothing succeeded since.
    pub(crate) fn recent_failure(&self) -> Result<(), OutboxError> {
        match self.slot().as_ref() {
            Some((at, error)) if at.elapsed() < RECENT_FAILURE => Err(error.clone()),
            _ => Ok(()),
        }
    }
}

/// Waits for a writer's answer to an insert, at most `limit`: a stalled disk or a
/// silent database must not pile requests up without bound. If the commit lands
/// after this 503, the provider's retry is a duplicate and gets a 200.
pub(crate) async fn await_commit<T>(
    answer: tokio::sync::oneshot::Receiver<Result<T, OutboxError>>,
    limit: std::time::Duration,
) -> Result<T, OutboxError> {
    match tokio::time::timeout(limit, answer).await {
        Ok(answer) => answer.map_err(|_| OutboxError::Closed)?,
        Err(_) => Err(OutboxError::TimedOut(limit.as_secs())),
    }
}

/// A stored time (Unix microseconds) as `outbox list` and `show` print it: RFC 3339,
/// or the raw number when it is out of range.
pub(crate) fn shown_time(us: i64) -> String {
    crate::clock::from_micros(us).map_or_else(|| us.to_string(), crate::event::rfc3339)
}

impl Inventory {
    /// The counts `stats` has, with the published rows and the size on disk.
    pub(crate) fn from_stats(stats: Stats, published: u64, size_bytes: u64) -> Self {
        Self {
            pending: stats.pending,
            published,
            dead: stats.dead,
            oldest_pending_seconds: stats.oldest_pending_us.map(|us| {
                u64::try_from((crate::clock::now_micros() - us) / 1_000_000).unwrap_or(0)
            }),
            size_bytes,
        }
    }
}

/// Rows deleted per transaction by retention and `outbox purge`, so a purge never
/// holds the write lock for long.
pub(crate) const PURGE_BATCH: usize = 1000;

/// How often retention looks for published rows to delete.
const RETENTION_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// Deletes published rows older than `retention` now and every minute, in small
/// batches, until `stop` turns true. Pending and dead rows are never touched.
pub(crate) async fn run_retention(
    outbox: Arc<dyn Outbox>,
    retention: std::time::Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let cutoff =
            crate::clock::now_micros() - i64::try_from(retention.as_micros()).unwrap_or(i64::MAX);
        let mut purged = 0;
        loop {
            match outbox.purge_published(cutoff, PURGE_BATCH).await {
                Ok(n) => {
                    purged += n;
                    if n < PURGE_BATCH as u64 {
                        break;
                    }
                    // Let webhooks in between batches.
                    tokio::task::yield_now().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "retention could not purge published rows; will retry");
                    break;
                }
            }
        }
        if purged > 0 {
            tracing::info!(rows = purged, "retention purged published rows");
        }
        tokio::select! {
            () = tokio::time::sleep(RETENTION_INTERVAL) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Where an outbox lives, as `HOOKRELAY_OUTBOX_URL` names it.
enum Location {
    /// `sqlite://PATH`: an embedded database file.
    Sqlite(PathBuf),
    /// `postgres://…` or `postgresql://…`: a server shared by replicas.
    Postgres(String),
}

impl Location {
    fn parse(url: &str) -> Result<Self, OutboxError> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(OutboxError::InvalidUrl(
                    "sqlite:// needs a file path, e.g. sqlite://data/outbox.db",
                ));
            }
            Ok(Self::Sqlite(PathBuf::from(path)))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres(url.to_owned()))
        } else {
            Err(OutboxError::InvalidUrl(
                "expected sqlite://PATH or postgres://…",
            ))
        }
    }
}

/// The outbox URL as it may be shown (`check-config`): a server URL's credentials
/// and parameters are masked. Fails on a URL `open` would refuse.
pub(crate) fn describe_url(url: &str) -> Result<String, OutboxError> {
    match Location::parse(url)? {
        Location::Sqlite(path) => Ok(format!("sqlite://{}", path.display())),
        Location::Postgres(url) => postgres::describe_url(&url),
    }
}

/// Who opens the outbox, which decides what may happen to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// `serve`: creates the outbox if absent, and is its only server.
    Serve,
    /// The `outbox` commands: the outbox must exist already (a mistyped path must
    /// not leave an empty outbox behind), and may be in use by `serve`.
    Operate,
}

/// What `serve` tells the outbox beyond its URL.
pub(crate) struct Options {
    /// How long a shared outbox's partition lease lasts (`HOOKRELAY_OUTBOX_LEASE`).
    pub(crate) lease: std::time::Duration,
    /// Notified when another relay committed webhooks, to wake the publisher.
    pub(crate) wake: Arc<tokio::sync::Notify>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            lease: std::time::Duration::from_secs(10),
            wake: Arc::default(),
        }
    }
}

/// Opens the outbox named by the URL.
pub(crate) async fn open(
    url: &str,
    access: Access,
    metrics: Arc<crate::metrics::Metrics>,
    options: Options,
) -> Result<Arc<dyn Outbox>, OutboxError> {
    let location = Location::parse(url)?;
    // Every reason present from the start, whatever the backend, so `rate()` over
    // it is defined.
    for kind in FaultKind::ALL {
        metrics
            .outbox_commit_failures
            .with_label_values(&[kind.as_str()]);
    }
    match location {
        Location::Sqlite(path) => Ok(Arc::new(
            sqlite::SqliteOutbox::open(&path, access, metrics).await?,
        )),
        Location::Postgres(url) => Ok(Arc::new(
            postgres::PostgresOutbox::open(&url, access, metrics, options).await?,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sqlite_and_postgres_urls_are_outboxes() {
        assert!(matches!(
            Location::parse("sqlite://data/outbox.db"),
            Ok(Location::Sqlite(path)) if path == std::path::Path::new("data/outbox.db")
        ));
        assert!(matches!(
            Location::parse("postgresql://h/db"),
            Ok(Location::Postgres(_))
        ));
        let err = describe_url("mysql://x").map(|_| ()).unwrap_err();
        assert!(err.to_string().contains("sqlite://"), "{err}");
        assert!(describe_url("sqlite://").is_err());
        assert_eq!(
            describe_url("postgres://app:s3cret@db/outbox")
                .ok()
                .as_deref(),
            Some("postgres://app@db:5432/outbox?sslmode=prefer")
        );
    }
}
