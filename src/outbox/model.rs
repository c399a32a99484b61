//! What the outbox stores and hands out, the same for every backend: a webhook to
//! store, a row due for publishing, the outcome of a publish, the counts.
//!
//! Leaf of `outbox/`: it knows no backend and no SQL.

use bytes::Bytes;

use super::sequence::{First, Place};
use crate::event::EventMeta;

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
    /// Its place in its subject's sequence.
    pub(crate) place: Place,
}

/// The longest wait between two publish attempts of a row (the backoff's 5 min,
/// doubled at most by its jitter). A next attempt further ahead than this can
/// only come from a clock that stepped back since it was written: such a row
/// counts as due, so a step back delays no row by more.
pub(crate) const LONGEST_RETRY: std::time::Duration = std::time::Duration::from_secs(600);

/// The prefix of the error a due row this release cannot read is set aside with
/// (dead): a release that reads it replays such a row by itself at start.
pub(crate) const UNREADABLE: &str = "unreadable by this release";

/// A due row whose stored metadata this release cannot read (written by a newer
/// release: a kind or status it does not know, a field it cannot parse).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unreadable {
    /// Row id.
    pub(crate) id: i64,
    /// What could not be read.
    pub(crate) why: String,
}

impl Unreadable {
    /// The error the row is set aside with.
    pub(crate) fn error(&self) -> String {
        format!(
            "{UNREADABLE} ({}): {}; a release that reads it replays it by itself when it starts, or `hookrelay outbox replay {}` with one",
            env!("CARGO_PKG_VERSION"),
            self.why,
            self.id
        )
    }
}

/// The rows a fetch found due: those to publish, and those this release cannot
/// read, which the publisher sets aside.
#[derive(Debug, Default)]
pub(crate) struct Due {
    /// Rows to publish, oldest first.
    pub(crate) events: Vec<PendingEvent>,
    /// Rows set aside.
    pub(crate) unreadable: Vec<Unreadable>,
}

/// What became of one publish attempt.
#[derive(Debug, Clone)]
pub(crate) enum Settlement {
    /// The broker confirmed it: the row becomes `published`.
    Published {
        /// Row id.
        id: i64,
        /// For the row's first publish, the number it went out with: recorded
        /// with the row and raised for its subject in the same transaction.
        first: Option<First>,
    },
    /// It was not confirmed: the row stays `pending`, due again `retry_in` from now
    /// by the outbox's own clock (the database's on PostgreSQL, so replicas whose
    /// clocks disagree do not delay each other's rows).
    Retry {
        /// Row id.
        id: i64,
        /// Why, for `last_error`.
        error: String,
        /// How long until the next attempt.
        retry_in: std::time::Duration,
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
            Self::Published { id, .. } | Self::Retry { id, .. } | Self::Dead { id, .. } => *id,
        }
    }

    /// The number a first publish went out with, to record.
    pub(crate) fn first(&self) -> Option<&First> {
        match self {
            Self::Published { first, .. } => first.as_ref(),
            _ => None,
        }
    }

    /// What it does to its row.
    pub(crate) fn effect(&self) -> Effect<'_> {
        match self {
            Self::Published { .. } => Effect {
                state: State::Published,
                error: None,
                retry_in_us: None,
                permanent: false,
            },
            Self::Retry {
                error,
                retry_in,
                permanent,
                ..
            } => Effect {
                state: State::Pending,
                error: Some(error),
                retry_in_us: Some(i64::try_from(retry_in.as_micros()).unwrap_or(i64::MAX / 2)),
                permanent: *permanent,
            },
            Self::Dead { error, .. } => Effect {
                state: State::Dead,
                error: Some(error),
                retry_in_us: None,
                permanent: true,
            },
        }
    }
}

/// What a settlement does to its row, spelled out once for every backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Effect<'a> {
    /// The row's state afterwards.
    pub(crate) state: State,
    /// The error to record (and log as a failed attempt), if it failed.
    pub(crate) error: Option<&'a str>,
    /// For a row that stays pending, how long until its next attempt
    /// (microseconds, added to the outbox's clock).
    pub(crate) retry_in_us: Option<i64>,
    /// Whether the failure counts towards `dead` (`permanent_attempts`).
    pub(crate) permanent: bool,
}

impl Effect<'_> {
    /// The word the failed-attempts log records, for a failure.
    pub(crate) fn outcome(&self) -> &'static str {
        if self.state == State::Dead {
            "dead"
        } else {
            "retry"
        }
    }
}

/// Failed publish attempts kept per row: enough to see a pattern, bounded so a
/// long outage does not grow the log without end.
pub(crate) const ATTEMPTS_KEPT: i64 = 20;

/// One failed publish attempt, as the log of failures keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Attempt {
    /// When it was recorded, Unix microseconds.
    pub(crate) at_us: i64,
    /// What the row became: `retry` or `dead`.
    pub(crate) outcome: String,
    /// Why it failed.
    pub(crate) error: String,
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

/// What stands behind the outbox's commits if its server is lost: whether an
/// acknowledged webhook survives a failover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Replication {
    /// An embedded file on this replica's disk: no standby to fail over to.
    Local,
    /// A server, as this relay's sessions see it.
    Server {
        /// `synchronous_standby_names`: the standbys a commit waits for.
        standby_names: String,
        /// `synchronous_commit` of the relay's session.
        commit: String,
        /// Standbys streaming synchronously now, where the role may see them
        /// (`pg_read_all_stats`); `None` when it may not.
        synchronous_standbys: Option<i64>,
    },
}

impl Replication {
    /// Whether every commit waits until a standby has the webhook: then a
    /// promoted standby holds everything that was acknowledged.
    pub(crate) fn synchronous(&self) -> bool {
        match self {
            Self::Local => false,
            Self::Server {
                standby_names,
                commit,
                ..
            } => {
                !standby_names.trim().is_empty()
                    && matches!(commit.as_str(), "on" | "remote_write" | "remote_apply")
            }
        }
    }

    /// One line for logs, `check-config --connect` and the console.
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Local => "embedded file: no standby".to_owned(),
            Self::Server {
                standby_names,
                commit,
                synchronous_standbys,
            } => {
                let names = if standby_names.trim().is_empty() {
                    "none"
                } else {
                    standby_names
                };
                let streaming = synchronous_standbys
                    .map(|n| format!(", {n} streaming synchronously now"))
                    .unwrap_or_default();
                let verdict = if self.synchronous() {
                    "commits wait for a synchronous standby"
                } else {
                    "NO synchronous standby: a failover can lose acknowledged webhooks"
                };
                format!(
                    "{verdict} (synchronous_standby_names = {names}, synchronous_commit = {commit}{streaming})"
                )
            }
        }
    }
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

/// A count as the database returns it (a signed integer), as a count.
pub(crate) fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}
