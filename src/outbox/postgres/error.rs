//! The driver's errors as the outbox's (the SQLSTATE decides the kind of fault),
//! and the bounds every call to the database runs under.

use std::time::Duration;

use deadpool_postgres::Pool;

use crate::outbox::row::Columns;
use crate::outbox::{Fault, FaultKind, OutboxError};

/// Longest wait for a pooled connection (PostgreSQL down: a 503 at once).
pub(super) const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest wait for any statement but an insert's.
pub(super) const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);
/// `statement_timeout` of the relay's sessions: the server stops a statement the
/// relay gave up on (migrations and vacuums lift it for themselves).
pub(super) const SERVER_STATEMENT_TIMEOUT: Duration = Duration::from_secs(12);

/// The driver's error as a fault: its kind from the SQLSTATE, its words (and its
/// causes', for "connection refused") as the detail.
pub(super) fn pg_error(e: tokio_postgres::Error) -> OutboxError {
    use tokio_postgres::error::SqlState;
    let kind = match e.code() {
        Some(code) if *code == SqlState::DISK_FULL => FaultKind::DiskFull,
        Some(code)
            if *code == SqlState::T_R_DEADLOCK_DETECTED
                || *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::LOCK_NOT_AVAILABLE =>
        {
            FaultKind::Busy
        }
        Some(code) if *code == SqlState::READ_ONLY_SQL_TRANSACTION => FaultKind::ReadOnly,
        Some(code)
            if code.code().starts_with("08")
                || *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW =>
        {
            FaultKind::Unavailable
        }
        Some(code) if code.code().starts_with("XX") => FaultKind::Corrupt,
        // Data exceptions (a NUL in a text, a value out of range): the same data
        // fails again.
        Some(code) if code.code().starts_with("22") => FaultKind::Invalid,
        Some(_) => FaultKind::Other,
        // No SQLSTATE: the driver's own failure. Losing the server is the usual
        // one; a parameter it could not encode is a bug, not an outage.
        None if e.is_closed() || UNREACHABLE.iter().any(|w| e.to_string().starts_with(w)) => {
            FaultKind::Unavailable
        }
        None => FaultKind::Other,
    };
    let detail = match e.as_db_error() {
        Some(db) => db.message().to_owned(),
        None => {
            let mut words = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                words.push_str(": ");
                words.push_str(&c.to_string());
                cause = c.source();
            }
            words
        }
    };
    OutboxError::Storage(Fault::new(kind, detail))
}

/// How tokio-postgres words the failures that mean "the server is out of reach".
const UNREACHABLE: [&str; 5] = [
    "error connecting to server",
    "error communicating with the server",
    "connection closed",
    "timeout waiting for server",
    "error performing TLS handshake",
];

/// A pooled connection, or a 503-worthy error within [`CHECKOUT_TIMEOUT`].
pub(super) async fn pooled(pool: &Pool) -> Result<deadpool_postgres::Object, OutboxError> {
    use deadpool_postgres::PoolError;
    pool.get().await.map_err(|e| match e {
        PoolError::Backend(e) => pg_error(e),
        PoolError::Timeout(_) => OutboxError::Storage(Fault::new(
            FaultKind::Unavailable,
            format!("no connection within {} s", CHECKOUT_TIMEOUT.as_secs()),
        )),
        PoolError::Closed => OutboxError::Closed,
        other => OutboxError::Storage(Fault::new(FaultKind::Unavailable, other.to_string())),
    })
}

/// Runs `work` with a bound on its time: a link that went silent costs a caller at
/// most this long.
pub(super) async fn bounded<T>(
    limit: Duration,
    work: impl std::future::Future<Output = Result<T, OutboxError>>,
) -> Result<T, OutboxError> {
    tokio::time::timeout(limit, work)
        .await
        .unwrap_or(Err(OutboxError::TimedOut(limit.as_secs())))
}

impl Columns for tokio_postgres::Row {
    fn int(&self, at: usize) -> Result<i64, OutboxError> {
        use tokio_postgres::types::Type;
        let column = self.columns().get(at).map(|c| c.type_().clone());
        Ok(match column {
            Some(Type::INT4) => i64::from(self.try_get::<_, i32>(at).map_err(pg_error)?),
            Some(Type::INT2) => i64::from(self.try_get::<_, i16>(at).map_err(pg_error)?),
            _ => self.try_get(at).map_err(pg_error)?,
        })
    }

    fn opt_int(&self, at: usize) -> Result<Option<i64>, OutboxError> {
        self.try_get(at).map_err(pg_error)
    }

    fn text(&self, at: usize) -> Result<String, OutboxError> {
        self.try_get(at).map_err(pg_error)
    }

    fn opt_text(&self, at: usize) -> Result<Option<String>, OutboxError> {
        self.try_get(at).map_err(pg_error)
    }

    fn bytes(&self, at: usize) -> Result<Vec<u8>, OutboxError> {
        self.try_get(at).map_err(pg_error)
    }
}
