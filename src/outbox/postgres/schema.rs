//! The PostgreSQL outbox's schema steps (the scheme is
//! [`migrate`](crate::outbox::migrate)'s), its version kept in `hr_schema`, applied
//! at start under an advisory lock so that replicas starting together take turns;
//! and the pinned subject → partition hash.
//!
//! - 1: events, deliveries, partitions, members ([`sql::tables`]).
//! - 2: failed attempts (`hr_attempt`, for the console) and the subject index
//!   (timelines and the `subject` filter).
//! - 3: the per-subject sequence (`hr_subject`).
//! - 4: the recovery ledger ([`sql::ledger`]).

use tokio_postgres::Client;

use super::error::{STATEMENT_TIMEOUT, bounded, pg_error};
use super::sql;
use crate::outbox::migrate::{self, Step, Version};
use crate::outbox::{OutboxError, Replication};

/// `pg_advisory_lock` key of the migrations ("hookrelay" in ASCII, truncated).
const MIGRATION_LOCK: i64 = 0x686f_6f6b_7265_6c61;

/// Number of partitions subjects are hashed into. Fixed: changing it would move
/// subjects between owners.
pub(super) const PARTITIONS: i16 = 256;

/// Every step, in order, as SQL.
fn steps() -> [Step<String>; 4] {
    [
        Step {
            what: "events, deliveries, partitions, members",
            compatible: false,
            how: sql::tables(PARTITIONS),
        },
        Step {
            what: "failed attempts kept; subject index",
            compatible: true,
            how: sql::ATTEMPTS_AND_SUBJECTS.to_owned(),
        },
        // Compatible: a release before it publishes without numbers and never
        // reads them; the subjects it publishes then go on from their last number.
        Step {
            what: "per-subject sequence numbers",
            compatible: true,
            how: sql::SEQUENCES.to_owned(),
        },
        // Compatible: tables and an index no older release reads.
        Step {
            what: "recovery ledger: heartbeat, gaps, provider calls",
            compatible: true,
            how: sql::ledger(),
        },
    ]
}

/// Whether the outbox's tables exist (the `outbox` commands never create them).
pub(super) async fn exists(client: &Client) -> Result<bool, OutboxError> {
    let row = client.query_one(sql::EXISTS, &[]).await.map_err(pg_error)?;
    Ok(row.get(0))
}

/// Brings the schema to the newest version, one replica at a time.
pub(super) async fn migrate(client: &mut Client) -> Result<(), OutboxError> {
    // Waiting for another replica's migration, and a migration's own index builds
    // on a large outbox, may take longer than the session's statement timeout.
    client
        .batch_execute(sql::NO_STATEMENT_TIMEOUT)
        .await
        .map_err(pg_error)?;
    client
        .execute(sql::LOCK, &[&MIGRATION_LOCK])
        .await
        .map_err(pg_error)?;
    let migrated = apply(client).await;
    // Also released when the session ends, should the unlock fail.
    let _ = client.execute(sql::UNLOCK, &[&MIGRATION_LOCK]).await;
    // Back to the connection's own bound before the pool hands it out again; if
    // this fails the connection is broken and the pool replaces it.
    let _ = client.batch_execute(sql::RESET_STATEMENT_TIMEOUT).await;
    migrated
}

async fn apply(client: &mut Client) -> Result<(), OutboxError> {
    client
        .batch_execute(sql::VERSIONS)
        .await
        .map_err(pg_error)?;
    let steps = steps();
    for (version, step) in migrate::plan(recorded(client).await?, &steps)? {
        let tx = client.transaction().await.map_err(pg_error)?;
        tx.batch_execute(&step.how).await.map_err(pg_error)?;
        record(&tx, version).await?;
        tx.commit().await.map_err(pg_error)?;
        migrate::applied(version, step);
    }
    Ok(())
}

/// The recorded version (an outbox of a release before `readable_by`: read by
/// its own version only).
pub(super) async fn recorded(client: &Client) -> Result<Version, OutboxError> {
    let row = client
        .query_opt(sql::VERSION, &[])
        .await
        .map_err(pg_error)?;
    Ok(row.map_or(Version::EMPTY, |row| Version {
        version: row.get(0),
        readable_by: row.get(1),
    }))
}

/// Records `version` in the step's transaction.
pub(super) async fn record(
    tx: &tokio_postgres::Transaction<'_>,
    version: Version,
) -> Result<(), OutboxError> {
    tx.execute(sql::SET_VERSION, &[&version.version, &version.readable_by])
        .await
        .map_err(pg_error)
        .map(|_| ())
}

/// The schema version of the existing outbox at `url`, and what its commits wait
/// for, on one connection of its own with the settings and the existence check
/// of the `outbox` commands; nothing is created or migrated (`check-config
/// --connect`).
pub(in crate::outbox) async fn inspect(url: &str) -> Result<(i64, Replication), OutboxError> {
    let target = super::connect::Target::parse(url)?;
    let tls = target.connector()?;
    bounded(STATEMENT_TIMEOUT, async {
        let (client, connection) = target.config.connect(tls).await.map_err(pg_error)?;
        // The connection's messages are driven beside the queries; it ends when
        // the client is dropped.
        tokio::spawn(connection);
        if !exists(&client).await? {
            return Err(OutboxError::Missing(target.describe()));
        }
        let row = client
            .query_one(sql::SCHEMA_VERSION, &[])
            .await
            .map_err(pg_error)?;
        let version = row.try_get(0).map_err(pg_error)?;
        Ok((version, super::replication(&client).await?))
    })
    .await
}

/// The partition of a subject: the first byte of SHA-256 over `source NUL subject`.
/// Computed here, not in SQL, and pinned by a test: every replica and every release
/// must agree on it, or two replicas would publish one subject.
pub(super) fn partition(source: &str, subject: &str) -> i16 {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    hash.update(source.as_bytes());
    hash.update([0]);
    hash.update(subject.as_bytes());
    i16::from(hash.finalize()[0]) % PARTITIONS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_partition_of_a_subject_never_changes() {
        // Pinned (the first byte of `printf "whitepay\0order-1" | sha256sum`): a
        // change here moves subjects between replicas during an upgrade.
        assert_eq!(partition("whitepay", "order-1"), 0xc2);
        assert_eq!(partition("ccpayment", "ord_8f3a"), 0xb3);
        assert_eq!(partition("", ""), 0x6e);
        assert!((0..PARTITIONS).contains(&partition("x", "\u{1F4B8}")));
    }
}
