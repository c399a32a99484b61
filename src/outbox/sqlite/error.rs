//! SQLite's errors as the outbox's: the error code decides the kind of fault.

use crate::outbox::row::Columns;
use crate::outbox::{Fault, FaultKind, OutboxError};

impl From<rusqlite::Error> for OutboxError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode;
        let kind = match e.sqlite_error_code() {
            Some(ErrorCode::DiskFull) => FaultKind::DiskFull,
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => FaultKind::Busy,
            Some(ErrorCode::ReadOnly) => FaultKind::ReadOnly,
            Some(ErrorCode::SystemIoFailure | ErrorCode::CannotOpen) => FaultKind::Io,
            Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => FaultKind::Corrupt,
            _ => FaultKind::Other,
        };
        Self::Storage(Fault::new(kind, e.to_string()))
    }
}

/// A failure that is not the database's: a file-system call, a lost thread.
pub(super) fn fault(kind: FaultKind, detail: impl std::fmt::Display) -> OutboxError {
    OutboxError::Storage(Fault::new(kind, detail.to_string()))
}

impl Columns for rusqlite::Row<'_> {
    fn int(&self, at: usize) -> Result<i64, OutboxError> {
        Ok(self.get(at)?)
    }

    fn opt_int(&self, at: usize) -> Result<Option<i64>, OutboxError> {
        Ok(self.get(at)?)
    }

    fn text(&self, at: usize) -> Result<String, OutboxError> {
        Ok(self.get(at)?)
    }

    fn opt_text(&self, at: usize) -> Result<Option<String>, OutboxError> {
        Ok(self.get(at)?)
    }

    fn bytes(&self, at: usize) -> Result<Vec<u8>, OutboxError> {
        Ok(self.get(at)?)
    }
}
