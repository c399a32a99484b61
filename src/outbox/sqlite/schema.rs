//! The SQLite outbox's schema steps (the scheme is [`migrate`](crate::outbox::migrate)'s),
//! its version kept in `PRAGMA user_version`.
//!
//! - 1: `permanent_attempts` (permanent failures counted apart from transient ones)
//!   and `released_at` (an operator let a dead row's subject go on) in the one
//!   `events` table of version 0.
//! - 2: the webhook in `events`, its publishing state in `deliveries` (see
//!   [`sql::tables`]), copied from the one table of an older outbox.
//! - 3: the failed-attempts log and the subject index.
//! - 4: the per-subject sequence ([`sql::SEQUENCES`]).
//! - 5: `deliveries` rebuilt with a state check SQLite evaluates without a
//!   temporary b-tree ([`sql::STATE_CHECK_WITHOUT_IN`]).
//! - 6: the recovery ledger ([`sql::ledger`]).

use std::path::Path;

use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior};

use super::sql;
use crate::outbox::OutboxError;
use crate::outbox::migrate::{self, Step, Version};

/// How a step runs: in the step's transaction, looking at the schema first.
type Apply = fn(&Transaction<'_>) -> rusqlite::Result<()>;

/// Every step, in order.
const STEPS: [Step<Apply>; 6] = [
    Step {
        what: "permanent failures counted apart; releases recorded",
        compatible: false,
        how: count_permanent_failures,
    },
    Step {
        what: "webhooks in `events`, their publishing state in `deliveries`",
        compatible: false,
        how: split_state_from_events,
    },
    Step {
        what: "failed attempts kept; subject index",
        compatible: true,
        how: |tx| tx.execute_batch(sql::ATTEMPTS_AND_SUBJECTS),
    },
    // Compatible: a release before it publishes without numbers and never reads
    // them; the subjects it publishes then go on from their last number.
    Step {
        what: "per-subject sequence numbers",
        compatible: true,
        how: |tx| tx.execute_batch(sql::SEQUENCES),
    },
    // Compatible: the same columns and indexes; only the check is spelled
    // differently. The copy rewrites the small `deliveries` rows, never a body.
    Step {
        what: "state check without a temporary b-tree",
        compatible: true,
        how: |tx| {
            tx.execute_batch(sql::STATE_CHECK_WITHOUT_IN)?;
            tx.execute_batch(&sql::delivery_indexes())
        },
    },
    // Compatible: tables and an index no older release reads.
    Step {
        what: "recovery ledger: heartbeat, gaps, provider calls",
        compatible: true,
        how: |tx| tx.execute_batch(&sql::ledger()),
    },
];

/// The version this release writes.
#[cfg(test)]
pub(super) const VERSION: i64 = STEPS.len() as i64;

/// The recorded version: `PRAGMA user_version`, and who reads it from
/// `schema_versions` (an outbox of a release before that table: the version
/// itself).
pub(super) fn recorded(conn: &Connection) -> rusqlite::Result<Version> {
    let version: i64 = conn.query_row(sql::VERSION, [], |r| r.get(0))?;
    let readable_by: Option<i64> = conn
        .query_row(sql::READABLE_BY, [version], |r| r.get(0))
        .optional()?;
    Ok(Version {
        version,
        readable_by: readable_by.unwrap_or(version),
    })
}

/// Records `version` in the step's transaction.
pub(super) fn record(tx: &Transaction<'_>, version: Version) -> rusqlite::Result<()> {
    tx.execute(sql::RECORD_VERSION, [version.version, version.readable_by])?;
    tx.execute_batch(&sql::set_version(version.version))
}

/// Whether `table` exists and has `column`.
pub(super) fn has_column(conn: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    conn.query_row(sql::HAS_COLUMN, [table, column], |r| r.get(0))
}

/// Whether the outbox has the one table of versions 0 and 1 (the publishing state
/// in `events`), which step 2 copies into two.
pub(super) fn has_one_table(conn: &Connection) -> rusqlite::Result<bool> {
    let version: i64 = conn.query_row(sql::VERSION, [], |r| r.get(0))?;
    Ok(version < 2 && has_column(conn, "events", "state")?)
}

/// Step 1, for an outbox of version 0; a new outbox has nothing to change yet.
fn count_permanent_failures(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    if has_column(tx, "events", "state")? && !has_column(tx, "events", "released_at")? {
        tx.execute_batch(sql::V1_COLUMNS)?;
    }
    Ok(())
}

/// Step 2. An older outbox's rows are copied into the two tables, made under
/// temporary names; its table (and its indexes) is dropped and the new ones take
/// the final names. The copy rewrites every body once, so it takes time and free
/// disk in proportion to the outbox's size. A new outbox gets the two tables.
fn split_state_from_events(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    if has_column(tx, "events", "state")? {
        // Row ids must not be handed out again after the migration: rows may have
        // been purged above the highest id left, and an operator may have noted
        // ids in logs.
        let counter: Option<i64> = tx.query_row(sql::ID_COUNTER, [], |r| r.get(0)).optional()?;
        tx.execute_batch(&sql::tables("events_v2", "deliveries_v2"))?;
        tx.execute_batch(sql::COPY_TO_TWO_TABLES)?;
        if let Some(counter) = counter {
            // The copy left the counter at the highest id copied (the rename
            // carried it over), or without a row if nothing was copied.
            if tx.execute(sql::RAISE_ID_COUNTER, [counter])? == 0 {
                tx.execute(sql::SET_ID_COUNTER, [counter])?;
            }
        }
    }
    tx.execute_batch(&sql::tables("events", "deliveries"))?;
    tx.execute_batch(sql::HEALTH)?;
    tx.execute_batch(&sql::indexes())
}

/// The schema version of the existing outbox at `path`, read on a connection
/// of its own that may neither create the file nor change it (no migration, no
/// journal mode): `check-config --connect`.
pub(in crate::outbox) fn schema_version(path: &Path) -> Result<i64, OutboxError> {
    // The `outbox` commands' rule: a mistyped path names no outbox.
    if !path.exists() {
        return Err(OutboxError::Missing(path.display().to_string()));
    }
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    // A `serve` committing beside it may hold a lock for a moment.
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn.query_row(sql::VERSION, [], |r| r.get(0))?)
}

/// Brings the outbox to this release's version, one step per transaction (taken
/// with the write lock at once), each recording its version.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), OutboxError> {
    conn.execute_batch(sql::VERSIONS)?;
    let copies = has_one_table(conn)?;
    for (version, step) in migrate::plan(recorded(conn)?, &STEPS)? {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        (step.how)(&tx)?;
        record(&tx, version)?;
        tx.commit()?;
        migrate::applied(version, step);
    }
    if copies {
        // The copy went through the WAL, which keeps its size once checkpointed:
        // give the space back now rather than carry a WAL as large as the outbox.
        if let Err(e) = conn.query_row(sql::TRUNCATE_WAL, [], |_| Ok(())) {
            tracing::warn!(error = %e, "the outbox was migrated but its write-ahead log was not truncated");
        }
    }
    Ok(())
}
