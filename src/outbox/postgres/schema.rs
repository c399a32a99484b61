//! The PostgreSQL tables, and their migrations, applied at start under an advisory
//! lock so that replicas starting together take turns.
//!
//! The logical schema is the SQLite backend's: the raw webhook in an insert-only
//! table (`hr_event`), its publishing state in a small one (`hr_delivery`), so a
//! settle rewrites a few dozen bytes and never a body.

use tokio_postgres::Client;

use super::pg_error;
use crate::outbox::OutboxError;

/// `pg_advisory_lock` key of the migrations ("hookrelay" in ASCII, truncated).
const MIGRATION_LOCK: i64 = 0x686f_6f6b_7265_6c61;

/// A row that holds back the later rows of its subject: pending, or dead and not
/// released. The fetch query and its partial index spell it alike.
pub(super) const HOLDS_SUBJECT: &str =
    "(state = 'pending' OR (state = 'dead' AND released_at IS NULL))";

/// Number of partitions subjects are hashed into. Fixed: changing it would move
/// subjects between owners.
pub(super) const PARTITIONS: i16 = 256;

/// Each step brings the schema from version `index` to `index + 1`.
///
/// - 1: events, deliveries, partitions, members.
/// - 2: failed attempts (`hr_attempt`, for the console) and the subject index
///   (timelines and the `subject` filter).
fn migrations() -> [String; 2] {
    [
        format!(
            "CREATE TABLE hr_event (
             id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
             event_id        text     NOT NULL,
             source          text     NOT NULL,
             provider        text     NOT NULL,
             idempotency_key text     NOT NULL,
             subject         text     NOT NULL,
             part            smallint NOT NULL,
             routing_key     text     NOT NULL,
             meta            text     NOT NULL,
             headers         text     NOT NULL,
             body            bytea    NOT NULL,
             traceparent     text     NOT NULL,
             received_at     bigint   NOT NULL,
             UNIQUE (source, idempotency_key)
         );
         CREATE INDEX hr_event_received_at ON hr_event (received_at, id);
         CREATE TABLE hr_delivery (
             id                 bigint   PRIMARY KEY REFERENCES hr_event (id) ON DELETE CASCADE,
             part               smallint NOT NULL,
             source             text     NOT NULL,
             subject            text     NOT NULL,
             txid               xid8     NOT NULL DEFAULT pg_current_xact_id(),
             state              text     NOT NULL DEFAULT 'pending'
                                CHECK (state IN ('pending', 'published', 'dead')),
             attempts           integer  NOT NULL DEFAULT 0,
             permanent_attempts integer  NOT NULL DEFAULT 0,
             next_attempt_at    bigint   NOT NULL,
             last_error         text,
             published_at       bigint,
             released_at        bigint
         ) WITH (fillfactor = 80, autovacuum_vacuum_scale_factor = 0,
                 autovacuum_vacuum_threshold = 1000, autovacuum_vacuum_cost_delay = 0);
         CREATE INDEX hr_delivery_due ON hr_delivery (txid, id) WHERE state = 'pending';
         CREATE INDEX hr_delivery_holding ON hr_delivery (source, subject, txid, id)
             WHERE {HOLDS_SUBJECT};
         CREATE INDEX hr_delivery_state ON hr_delivery (state, id);
         CREATE INDEX hr_delivery_published_at ON hr_delivery (published_at)
             WHERE state = 'published';
         CREATE TABLE hr_partition (
             p           smallint    PRIMARY KEY,
             owner       text,
             epoch       bigint      NOT NULL DEFAULT 0,
             lease_until timestamptz NOT NULL DEFAULT '-infinity'
         );
         INSERT INTO hr_partition (p) SELECT generate_series(0, {last});
         CREATE TABLE hr_member (
             replica      text        PRIMARY KEY,
             heartbeat_at timestamptz NOT NULL,
             probed_at    timestamptz
         );",
            last = PARTITIONS - 1
        ),
        "CREATE TABLE hr_attempt (
         id      bigint NOT NULL REFERENCES hr_event (id) ON DELETE CASCADE,
         at      bigint NOT NULL,
         outcome text   NOT NULL,
         error   text   NOT NULL
     );
     CREATE INDEX hr_attempt_id ON hr_attempt (id, at);
     CREATE INDEX hr_event_subject ON hr_event (subject, source, id);"
            .to_owned(),
    ]
}

/// Whether the outbox's tables exist (the `outbox` commands never create them).
pub(super) async fn exists(client: &Client) -> Result<bool, OutboxError> {
    let row = client
        .query_one("SELECT to_regclass('hr_schema') IS NOT NULL", &[])
        .await
        .map_err(pg_error)?;
    Ok(row.get(0))
}

/// Brings the schema to the newest version, one replica at a time.
pub(super) async fn migrate(client: &mut Client) -> Result<(), OutboxError> {
    // Waiting for another replica's migration, and a migration's own index builds
    // on a large outbox, may take longer than the session's statement timeout.
    client
        .batch_execute("SET statement_timeout = 0")
        .await
        .map_err(pg_error)?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg_error)?;
    let migrated = apply(client).await;
    // Also released when the session ends, should the unlock fail.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    // Back to the connection's own bound before the pool hands it out again; if
    // this fails the connection is broken and the pool replaces it.
    let _ = client.batch_execute("RESET statement_timeout").await;
    migrated
}

async fn apply(client: &mut Client) -> Result<(), OutboxError> {
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS hr_schema (version integer NOT NULL)")
        .await
        .map_err(pg_error)?;
    let version: i32 = client
        .query_one("SELECT coalesce(max(version), 0) FROM hr_schema", &[])
        .await
        .map_err(pg_error)?
        .get(0);
    let steps = migrations();
    let current = usize::try_from(version).unwrap_or(0);
    if current > steps.len() {
        return Err(OutboxError::Storage(crate::outbox::Fault::new(
            crate::outbox::FaultKind::Other,
            format!(
                "the outbox has schema version {version}, made by a newer hookrelay than this one (which knows {}): upgrade this relay",
                steps.len()
            ),
        )));
    }
    for (index, step) in steps.iter().enumerate().skip(current) {
        let next = i32::try_from(index + 1).unwrap_or(i32::MAX);
        let tx = client.transaction().await.map_err(pg_error)?;
        tx.batch_execute(step).await.map_err(pg_error)?;
        tx.execute("INSERT INTO hr_schema (version) VALUES ($1)", &[&next])
            .await
            .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        tracing::info!(version = next, "outbox schema migrated");
    }
    Ok(())
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
