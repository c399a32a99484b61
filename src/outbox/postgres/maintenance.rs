//! Keeps the queue table lean on a cluster whose autovacuum is off or behind.
//!
//! Every publish updates a row of `hr_delivery`, leaving a dead row version behind
//! and dead entries at the head of the fetch index. On a healthy cluster autovacuum
//! clears them (the table's own settings make it eager). Where autovacuum is off, or
//! starved by other work, each fetch walks more dead entries than the last and
//! publishing slows to a crawl: with autovacuum off, a backlog drain fell to about
//! 200 messages a second once 170,000 dead rows had piled up. So every few seconds
//! one replica (whichever takes the advisory lock) vacuums the outbox's tables whose
//! dead rows passed a threshold; with a working autovacuum that threshold is rarely
//! reached and the check is one read of `pg_stat_user_tables`.
//!
//! It also analyzes `hr_delivery` once its rows changed by a fifth since its last
//! analyze. A backlog builds fast (100,000 rows in 5 s when the broker is cut), faster than
//! autovacuum looks (once a minute by default), and never when it is off: planned
//! on the statistics of a nearly empty table, the fetch read and sorted every
//! pending row to return 256 (335 ms a fetch at 100,000 pending, against 2 ms on
//! the index once analyzed), and a drain crawled at 3,400 rows a second.

use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::watch;

use super::error::{pg_error, pooled};
use super::sql;
use crate::outbox::OutboxError;

/// How often the dead and changed rows are looked at.
const CHECK_EVERY: Duration = Duration::from_secs(2);
/// Dead rows in a table past which it is vacuumed.
const DEAD_ROWS: i64 = 20_000;
/// Rows changed since the last analyze past which [`PLANNED_ON`] is analyzed, if
/// they are also a fifth of its rows.
const CHANGED_ROWS: i64 = 10_000;
/// The table whose statistics decide the fetch's plan. `hr_event` is reached by
/// its primary key whatever its statistics say, and analyzing it reads a sample
/// of its bodies: hundreds of megabytes on a large outbox, every time it grew by
/// a fifth.
const PLANNED_ON: &str = "hr_delivery";
/// `pg_try_advisory_lock` key: one replica vacuums at a time.
const VACUUM_LOCK: i64 = 0x686f_6f6b_7661_6375;
/// The tables this may vacuum (names are never taken from the database).
const TABLES: [&str; 2] = ["hr_delivery", "hr_event"];

/// Checks and vacuums until `stop`; says once at start when autovacuum is off.
pub(super) async fn run(pool: Pool, mut stop: watch::Receiver<bool>) {
    if let Ok(client) = pooled(&pool).await
        && let Ok(row) = client.query_one(sql::AUTOVACUUM_OFF, &[]).await
        && row.get::<_, bool>(0)
    {
        tracing::warn!(
            "autovacuum is off on the outbox's PostgreSQL: the relay vacuums its own tables when their dead rows pass {DEAD_ROWS}; turn autovacuum on (see docs/high-availability.md)"
        );
    }
    loop {
        tokio::select! {
            () = tokio::time::sleep(CHECK_EVERY) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if let Err(e) = vacuum_if_needed(&pool).await {
            tracing::warn!(error = %e, "cannot check or vacuum the outbox tables; will retry");
        }
    }
}

async fn vacuum_if_needed(pool: &Pool) -> Result<(), OutboxError> {
    let client = pooled(pool).await?;
    let rows = client
        .query(
            sql::DUE_FOR_MAINTENANCE,
            &[&TABLES.as_slice(), &DEAD_ROWS, &CHANGED_ROWS, &PLANNED_ON],
        )
        .await
        .map_err(pg_error)?;
    // Each due table with what it needs: the statement is built from this
    // module's own names, never from the database's.
    let due: Vec<(&str, bool)> = TABLES
        .into_iter()
        .filter_map(|t| {
            let row = rows.iter().find(|r| r.get::<_, &str>(0) == t)?;
            Some((t, row.get::<_, bool>(1)))
        })
        .collect();
    if due.is_empty() {
        return Ok(());
    }
    let mine: bool = client
        .query_one(sql::TRY_LOCK, &[&VACUUM_LOCK])
        .await
        .map_err(pg_error)?
        .get(0);
    if !mine {
        return Ok(());
    }
    // A vacuum of a large table may take longer than the session's statement
    // timeout; it is reset below.
    if let Err(e) = client.batch_execute(sql::NO_STATEMENT_TIMEOUT).await {
        let _ = client.execute(sql::UNLOCK, &[&VACUUM_LOCK]).await;
        return Err(pg_error(e));
    }
    let mut result = Ok(());
    for (table, vacuum) in due {
        let started = std::time::Instant::now();
        let command = if vacuum { "vacuum" } else { "analyze" };
        // VACUUM cannot run in a transaction: the pooled connection is in none.
        if let Err(e) = client.batch_execute(&sql::maintain(table, vacuum)).await {
            result = Err(pg_error(e));
            break;
        }
        tracing::info!(
            table,
            command,
            took_ms = started.elapsed().as_millis() as u64,
            "maintained an outbox table"
        );
    }
    // Also released when the session ends, should this fail.
    let _ = client.execute(sql::UNLOCK, &[&VACUUM_LOCK]).await;
    let _ = client.batch_execute(sql::RESET_STATEMENT_TIMEOUT).await;
    result
}
