//! Rows stored straight into a SQLite outbox, its metadata and schema version
//! rewritten as a newer release would, and its write lock held, for the tests and
//! the bench (feature `testing`; see `outbox/testing.rs`).

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior, params};

use super::{open_connection, schema, sql, writer};
use crate::outbox::OutboxError;
use crate::outbox::migrate::Version;
use crate::outbox::testing::Seeded;

/// Rows per transaction: few commits, and a write-ahead log that stays small.
const CHUNK: usize = 50_000;

/// Stores `rows` in order; a key already stored is skipped. Returns how many were
/// stored.
pub(crate) fn seed(path: &Path, rows: &[Seeded]) -> Result<u64, OutboxError> {
    if !path.exists() {
        return Err(OutboxError::Missing(path.display().to_string()));
    }
    let mut conn = open_connection(path)?;
    // Seeded rows are test data: a crash may lose them, a sync per commit is waste.
    conn.pragma_update(None, "synchronous", "OFF")?;
    let mut stored = 0;
    for chunk in rows.chunks(CHUNK) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut event = tx.prepare_cached(sql::INSERT_EVENT)?;
            let mut delivery = tx.prepare_cached(sql::SEED_DELIVERY)?;
            for row in chunk {
                if writer::insert_event(&mut event, &row.event)? == 0 {
                    continue;
                }
                let new = &row.event;
                delivery.execute(params![
                    tx.last_insert_rowid(),
                    new.meta.source,
                    new.meta.subject,
                    row.state.as_str(),
                    row.attempts,
                    row.permanent_attempts,
                    new.received_at_us,
                    row.last_error,
                    row.published_at_us,
                ])?;
                stored += 1;
            }
        }
        tx.commit()?;
    }
    conn.query_row(sql::TRUNCATE_WAL, [], |_| Ok(()))?;
    Ok(stored)
}

/// A connection holding the outbox's write lock.
pub(crate) fn write_lock(path: &Path) -> Result<Connection, OutboxError> {
    let conn = open_connection(path)?;
    conn.execute_batch(sql::LOCK_FOR_WRITING)?;
    Ok(conn)
}

/// Gives the lock `write_lock` took back.
pub(crate) fn release_write_lock(conn: &Connection) -> Result<(), OutboxError> {
    Ok(conn.execute_batch(sql::ROLLBACK)?)
}

/// Stores `meta` as row `id`'s metadata.
pub(crate) fn rewrite_meta(path: &Path, id: i64, meta: &str) -> Result<(), OutboxError> {
    open_connection(path)?.execute(sql::REWRITE_META, params![id, meta])?;
    Ok(())
}

/// The recorded schema version.
pub(crate) fn recorded_version(path: &Path) -> Result<Version, OutboxError> {
    Ok(schema::recorded(&open_connection(path)?)?)
}

/// Records `version`.
pub(crate) fn record_version(path: &Path, version: Version) -> Result<(), OutboxError> {
    let mut conn = open_connection(path)?;
    let tx = conn.transaction()?;
    schema::record(&tx, version)?;
    Ok(tx.commit()?)
}

/// Takes the sequence's schema step back out.
pub(crate) fn undo_sequences(path: &Path) -> Result<(), OutboxError> {
    Ok(open_connection(path)?.execute_batch(sql::UNDO_SEQUENCES)?)
}
