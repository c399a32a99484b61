//! What can go wrong in the outbox, typed so that callers can tell a full disk from a
//! busy database and answer each with the right status and words.

/// Why the outbox could not do what was asked. Ingress answers all of them with 503,
/// so the provider retries later, but for [`Unstorable`](Self::Unstorable): a
/// webhook no retry can store, refused alone with 422.
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
    /// No count of the outbox's backlog has finished for this many seconds, so
    /// `HOOKRELAY_OUTBOX_MAX_PENDING` cannot be checked.
    #[error(
        "the outbox's backlog has not been counted for {0} s, so its limit (HOOKRELAY_OUTBOX_MAX_PENDING) cannot be checked; retry later"
    )]
    Uncounted(u64),
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
    /// This webhook cannot be stored, however often it is sent: a text the outbox
    /// keeps as a column holds a character the database cannot keep. Refused on
    /// every backend alike, before any of them sees it.
    #[error(
        "the webhook's {field} contains {what}, which the outbox cannot store: the provider must send it without"
    )]
    Unstorable {
        /// Which of its routing facts.
        field: &'static str,
        /// What it contains.
        what: String,
    },
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
            Self::Uncounted(_) => "uncounted",
            Self::TimedOut(_) => "timeout",
            Self::InvalidUrl(_) | Self::Missing(_) => "config",
            Self::InUse(_) => "in_use",
            Self::Unstorable { .. } => "unstorable",
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
            FaultKind::Invalid => format!("the outbox database refused the data: {detail}"),
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
    /// The database refused the data itself (a value it cannot hold): retrying
    /// the same data fails the same way.
    Invalid,
    /// Anything else.
    Other,
}

impl FaultKind {
    /// Every kind, for metrics initialised at zero.
    pub(crate) const ALL: [Self; 8] = [
        Self::DiskFull,
        Self::Busy,
        Self::ReadOnly,
        Self::Io,
        Self::Corrupt,
        Self::Unavailable,
        Self::Invalid,
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
            Self::Invalid => "invalid",
            Self::Other => "other",
        }
    }
}
