//! The outbox: the durable queue between ingress and publisher.
//!
//! A row is written (and synced) before the provider gets its ack; a row leaves the
//! `pending` state only when the broker has confirmed the publish. Everything
//! outside sees only the two halves of one driver interface ([`Pipe`] and
//! [`Operate`]), so the backend (SQLite embedded, or PostgreSQL shared by
//! replicas) is chosen by `HOOKRELAY_OUTBOX_URL` alone: this module is the only
//! one that parses that URL or names a backend.
//!
//! **One core, two drivers.** The files here are written once for both backends:
//! the row model ([`model`], [`row`]), the ingest queue and its batch answering
//! ([`ingest`]), the migration scheme ([`migrate`]), finding rows ([`query`]), the
//! operator's changes ([`select`]), the views of a row ([`view`]) and retention.
//! Each backend folder (`sqlite/`, `postgres/`) keeps only what is its own: its SQL
//! (in one `sql.rs`), its schema steps, its threads or tasks, its error mapping.

use std::path::PathBuf;
use std::sync::Arc;

pub(crate) mod counts;
mod driver;
mod error;
mod ingest;
mod migrate;
mod model;
mod postgres;
pub(crate) mod query;
pub(crate) mod recall;
pub(crate) mod retention;
pub(crate) mod row;
pub(crate) mod select;
pub(crate) mod sequence;
mod sql;
mod sqlite;
#[cfg(feature = "testing")]
pub mod testing;
pub(crate) mod view;

#[cfg(test)]
pub(crate) mod fake;

pub(crate) use driver::{Operate, Pipe};
pub(crate) use error::{Fault, FaultKind, OutboxError};
pub(crate) use model::{
    ATTEMPTS_KEPT, Attempt, Due, InsertOutcome, Inventory, LONGEST_RETRY, NewEvent, PendingEvent,
    Replication, Settlement, State, Stats, UNREADABLE, Unreadable,
};
pub(crate) use query::{EventFilter, Window};

/// Where an outbox lives, as `HOOKRELAY_OUTBOX_URL` names it.
enum Location {
    /// `sqlite://PATH`: an embedded database file.
    Sqlite(PathBuf),
    /// `postgres://…` or `postgresql://…`: a server shared by replicas.
    Postgres(String),
}

impl Location {
    fn parse(url: &str) -> Result<Self, OutboxError> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(OutboxError::InvalidUrl(
                    "sqlite:// needs a file path, e.g. sqlite://data/outbox.db",
                ));
            }
            Ok(Self::Sqlite(PathBuf::from(path)))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres(url.to_owned()))
        } else {
            Err(OutboxError::InvalidUrl(
                "expected sqlite://PATH or postgres://…",
            ))
        }
    }
}

/// The outbox URL as it may be shown (`check-config`): a server URL's credentials
/// and parameters are masked. Fails on a URL `open` would refuse.
pub(crate) fn describe_url(url: &str) -> Result<String, OutboxError> {
    match Location::parse(url)? {
        Location::Sqlite(path) => Ok(format!("sqlite://{}", path.display())),
        Location::Postgres(url) => postgres::describe_url(&url),
    }
}

/// The schema version of the existing outbox the URL names, and what stands
/// behind its commits, as `check-config --connect` reports them: the outbox
/// must exist, as for the `outbox` commands, and is read without being created,
/// migrated or locked.
pub(crate) async fn inspect(url: &str) -> Result<(i64, Replication), OutboxError> {
    match Location::parse(url)? {
        Location::Sqlite(path) => {
            let version =
                tokio::task::spawn_blocking(move || sqlite::schema::schema_version(&path))
                    .await
                    .map_err(|e| {
                        OutboxError::Storage(Fault::new(FaultKind::Other, e.to_string()))
                    })??;
            Ok((version, Replication::Local))
        }
        Location::Postgres(url) => postgres::schema::inspect(&url).await,
    }
}

/// Who opens the outbox, which decides what may happen to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `serve`: creates the outbox if absent, and is its only server.
    Serve,
    /// The `outbox` commands: the outbox must exist already (a mistyped path must
    /// not leave an empty outbox behind), and may be in use by `serve`.
    Operate,
}

/// What `serve` tells the outbox beyond its URL.
pub(crate) struct Options {
    /// How long a shared outbox's partition lease lasts (`HOOKRELAY_OUTBOX_LEASE`).
    pub(crate) lease: std::time::Duration,
    /// Notified when another relay committed webhooks, to wake the publisher.
    pub(crate) wake: Arc<tokio::sync::Notify>,
    /// The publisher's progress: a shared outbox hands the partitions of a
    /// replica whose publisher gets nowhere to the others.
    pub(crate) pace: Arc<crate::pace::Pace>,
    /// How long the publisher may get nowhere before that (a confirm timeout and
    /// a lease, so that a slow broker is not taken for a stuck one).
    pub(crate) stuck_after: std::time::Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            lease: std::time::Duration::from_secs(10),
            wake: Arc::default(),
            pace: Arc::default(),
            stuck_after: std::time::Duration::from_secs(20),
        }
    }
}

/// An outbox opened for `serve`, as its two halves (one backend behind both).
pub(crate) struct Outbox {
    /// What ingress and the publisher use.
    pub(crate) pipe: Arc<dyn Pipe>,
    /// What the admin listener, the backlog count and retention use.
    pub(crate) operate: Arc<dyn Operate>,
}

/// Opens (creating and migrating it if need be) the outbox the URL names, for
/// `serve`: its writers, and on PostgreSQL its leases and listener, start here.
pub(crate) async fn serve(
    url: &str,
    metrics: Arc<crate::metrics::Metrics>,
    options: Options,
) -> Result<Outbox, OutboxError> {
    let location = Location::parse(url)?;
    // Every reason present from the start, whatever the backend, so `rate()` over
    // it is defined.
    for kind in FaultKind::ALL {
        metrics
            .outbox_commit_failures
            .with_label_values(&[kind.as_str()]);
    }
    match location {
        Location::Sqlite(path) => {
            let outbox = Arc::new(sqlite::SqliteOutbox::open(&path, Mode::Serve, metrics).await?);
            Ok(Outbox {
                pipe: outbox.clone(),
                operate: outbox,
            })
        }
        Location::Postgres(url) => {
            let outbox = Arc::new(
                postgres::PostgresOutbox::open(&url, Mode::Serve, metrics, options).await?,
            );
            Ok(Outbox {
                pipe: outbox.clone(),
                operate: outbox,
            })
        }
    }
}

/// Opens the existing outbox the URL names for the `outbox` commands, also while a
/// `serve` uses it.
pub(crate) async fn operate(
    url: &str,
    metrics: Arc<crate::metrics::Metrics>,
) -> Result<Arc<dyn Operate>, OutboxError> {
    Ok(match Location::parse(url)? {
        Location::Sqlite(path) => {
            Arc::new(sqlite::SqliteOutbox::open(&path, Mode::Operate, metrics).await?)
        }
        Location::Postgres(url) => Arc::new(
            postgres::PostgresOutbox::open(&url, Mode::Operate, metrics, Options::default())
                .await?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sqlite_and_postgres_urls_are_outboxes() {
        assert!(matches!(
            Location::parse("sqlite://data/outbox.db"),
            Ok(Location::Sqlite(path)) if path == std::path::Path::new("data/outbox.db")
        ));
        assert!(matches!(
            Location::parse("postgresql://h/db"),
            Ok(Location::Postgres(_))
        ));
        let err = describe_url("mysql://x").map(|_| ()).unwrap_err();
        assert!(err.to_string().contains("sqlite://"), "{err}");
        assert!(describe_url("sqlite://").is_err());
        assert_eq!(
            describe_url("postgres://app:s3cret@db/outbox")
                .ok()
                .as_deref(),
            Some("postgres://app@db:5432/outbox?sslmode=prefer")
        );
    }
}
