//! Rows stored straight into a PostgreSQL outbox, for the tests and the bench
//! (feature `testing`; see `outbox/testing.rs`).

use tokio_postgres::types::ToSql;

use super::connect::Target;
use super::error::pg_error;
use super::schema;
use super::sql;
use super::writer::Arrays;
use crate::outbox::OutboxError;
use crate::outbox::migrate::Version;
use crate::outbox::row::Encoded;
use crate::outbox::testing::Seeded;

/// Rows per statement.
const CHUNK: usize = 5_000;

/// Stores `rows` in order; a key already stored is skipped. Returns how many were
/// stored.
pub(crate) async fn seed(url: &str, rows: &[Seeded]) -> Result<u64, OutboxError> {
    let (client, driver) = connect(url).await?;
    // Seeded rows are test data: no wait for a sync at each commit.
    client
        .batch_execute(sql::NO_SYNC_WAIT)
        .await
        .map_err(pg_error)?;
    let statement = client.prepare(sql::SEED_BATCH).await.map_err(pg_error)?;
    let mut stored = 0;
    for chunk in rows.chunks(CHUNK) {
        let encoded = chunk
            .iter()
            .map(|row| Encoded::new(&row.event))
            .collect::<Result<Vec<_>, _>>()?;
        let arrays = Arrays::of(&encoded);
        let states: Vec<&str> = chunk.iter().map(|row| row.state.as_str()).collect();
        let attempts: Vec<i32> = chunk.iter().map(|row| count(row.attempts)).collect();
        let permanent: Vec<i32> = chunk
            .iter()
            .map(|row| count(row.permanent_attempts))
            .collect();
        let errors: Vec<Option<&str>> = chunk.iter().map(|row| row.last_error.as_deref()).collect();
        let published: Vec<Option<i64>> = chunk.iter().map(|row| row.published_at_us).collect();
        let mut params: Vec<&(dyn ToSql + Sync)> = arrays.params().to_vec();
        params.extend([
            &states as &(dyn ToSql + Sync),
            &attempts,
            &permanent,
            &errors,
            &published,
        ]);
        stored += client
            .execute(&statement, &params)
            .await
            .map_err(pg_error)?;
    }
    drop(client);
    let _ = driver.await;
    Ok(stored)
}

/// `VACUUM (ANALYZE)` of both tables.
pub(crate) async fn vacuum(url: &str) -> Result<(), OutboxError> {
    let (client, driver) = connect(url).await?;
    client
        .batch_execute(sql::NO_STATEMENT_TIMEOUT)
        .await
        .map_err(pg_error)?;
    for table in ["hr_event", "hr_delivery"] {
        client
            .batch_execute(&sql::maintain(table, true))
            .await
            .map_err(pg_error)?;
    }
    drop(client);
    let _ = driver.await;
    Ok(())
}

/// Stores `meta` as row `id`'s metadata.
pub(crate) async fn rewrite_meta(url: &str, id: i64, meta: &str) -> Result<(), OutboxError> {
    let (client, driver) = connect(url).await?;
    client
        .execute(sql::REWRITE_META, &[&id, &meta])
        .await
        .map_err(pg_error)?;
    drop(client);
    let _ = driver.await;
    Ok(())
}

/// The recorded schema version.
pub(crate) async fn recorded_version(url: &str) -> Result<Version, OutboxError> {
    let (client, driver) = connect(url).await?;
    let version = schema::recorded(&client).await;
    drop(client);
    let _ = driver.await;
    version
}

/// Records `version`.
pub(crate) async fn record_version(url: &str, version: Version) -> Result<(), OutboxError> {
    let (mut client, driver) = connect(url).await?;
    let tx = client.transaction().await.map_err(pg_error)?;
    schema::record(&tx, version).await?;
    tx.commit().await.map_err(pg_error)?;
    drop(client);
    let _ = driver.await;
    Ok(())
}

/// Takes the sequence's schema step back out.
pub(crate) async fn undo_sequences(url: &str) -> Result<(), OutboxError> {
    let (client, driver) = connect(url).await?;
    client
        .batch_execute(sql::UNDO_SEQUENCES)
        .await
        .map_err(pg_error)?;
    drop(client);
    let _ = driver.await;
    Ok(())
}

/// A session holding an exclusive lock of the outbox's tables in an open
/// transaction, until the client is dropped.
pub(crate) async fn write_lock(url: &str) -> Result<tokio_postgres::Client, OutboxError> {
    let (client, _driver) = connect(url).await?;
    client
        .batch_execute(sql::LOCK_TABLES)
        .await
        .map_err(pg_error)?;
    Ok(client)
}

/// A connection of its own to the outbox at `url`, and the task that drives it
/// (ended once the client is dropped).
async fn connect(
    url: &str,
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), OutboxError> {
    let target = Target::parse(url)?;
    let (client, connection) = target
        .config
        .connect(target.connector()?)
        .await
        .map_err(pg_error)?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((client, driver))
}

fn count(n: i64) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}
