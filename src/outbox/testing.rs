//! What the integration tests and the bench need of an outbox beyond the relay's
//! own commands: rows stored as if the relay had received them long ago, and a
//! SQLite write lock held from outside. Through the drivers, so the tests and the
//! bench never write SQL against the relay's tables (the architecture test checks
//! it). Compiled only with the `testing` feature, which they enable; never part of
//! the relay.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::migrate::Version;
use super::{Location, NewEvent, OutboxError, State};
use crate::config::{Config, ConfigError};
use crate::event::EventMeta;
use crate::providers::{Source, WebhookRequest};

/// One webhook to store, with the state it should have reached.
#[derive(Debug, Clone)]
pub struct Seed {
    /// The source it came in on (one of the configuration's).
    pub source: String,
    /// The body, as the provider sent it; its routing facts are what the source's
    /// provider reads from it.
    pub body: Vec<u8>,
    /// The audit headers, as the JSON object text the relay stores.
    pub headers_json: String,
    /// Receive time, Unix microseconds.
    pub received_at_us: i64,
    /// W3C `traceparent` to store with it.
    pub traceparent: String,
    /// Where it got to.
    pub state: SeedState,
}

/// The state a seeded row is stored in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeedState {
    /// Waiting to be published, due at once.
    Pending,
    /// Confirmed by the broker after one attempt, at this time (Unix
    /// microseconds).
    Published {
        /// When.
        at_us: i64,
    },
    /// Given up on after `attempts` attempts, the last one permanent.
    Dead {
        /// Publish attempts.
        attempts: u32,
        /// The last error.
        error: String,
    },
}

/// A webhook with the publishing state it is stored in, as a driver writes it.
pub(super) struct Seeded {
    pub(super) event: NewEvent,
    pub(super) state: State,
    pub(super) attempts: i64,
    pub(super) permanent_attempts: i64,
    pub(super) last_error: Option<String>,
    pub(super) published_at_us: Option<i64>,
}

/// Why rows could not be seeded.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// The configuration's sources could not be built.
    #[error("{0}")]
    Config(ConfigError),
    /// A row names a source the configuration does not have.
    #[error("no source `{0}` in the configuration")]
    UnknownSource(String),
    /// The outbox failed.
    #[error("{0}")]
    Outbox(OutboxError),
}

/// Stores `rows`, in order (so their ids follow it), in the existing outbox
/// `config` names (create it by starting a relay once), each with the metadata
/// its source's provider reads from its body. A relay running on the outbox
/// publishes the pending ones. Returns how many were stored.
pub async fn seed(config: &Config, rows: impl IntoIterator<Item = Seed>) -> Result<u64, SeedError> {
    let sources = crate::providers::build_sources(config).map_err(SeedError::Config)?;
    let rows = rows
        .into_iter()
        .map(|seed| seeded(&sources, seed))
        .collect::<Result<Vec<_>, _>>()?;
    let stored = match Location::parse(config.outbox_url.expose()).map_err(SeedError::Outbox)? {
        Location::Sqlite(path) => {
            tokio::task::spawn_blocking(move || super::sqlite::seed(&path, &rows))
                .await
                .map_err(|e| {
                    SeedError::Outbox(OutboxError::Storage(super::Fault::new(
                        super::FaultKind::Other,
                        e.to_string(),
                    )))
                })?
        }
        Location::Postgres(url) => super::postgres::seed(&url, &rows).await,
    };
    stored.map_err(SeedError::Outbox)
}

/// Vacuums and analyzes a PostgreSQL outbox's tables, as autovacuum would after a
/// bulk of inserts (the relay analyzes only its delivery table itself); nothing
/// to do on SQLite.
pub async fn vacuum(config: &Config) -> Result<(), OutboxError> {
    match Location::parse(config.outbox_url.expose())? {
        Location::Sqlite(_) => Ok(()),
        Location::Postgres(url) => super::postgres::vacuum(&url).await,
    }
}

/// The row `seed` stores for a webhook, as ingress would have built it.
fn seeded(sources: &BTreeMap<String, Source>, seed: Seed) -> Result<Seeded, SeedError> {
    let source = sources
        .get(&seed.source)
        .ok_or_else(|| SeedError::UnknownSource(seed.source.clone()))?;
    let received =
        crate::clock::from_micros(seed.received_at_us).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let headers = axum::http::HeaderMap::new();
    let parsed = source.provider.parse(&WebhookRequest {
        headers: &headers,
        body: &seed.body,
        now: received,
    });
    let mut meta = EventMeta::new(&source.origin(), &parsed, &seed.body, received);
    meta.verified = Some(true);
    let (state, attempts, permanent_attempts, last_error, published_at_us) = match seed.state {
        SeedState::Pending => (State::Pending, 0, 0, None, None),
        SeedState::Published { at_us } => (State::Published, 1, 0, None, Some(at_us)),
        SeedState::Dead { attempts, error } => {
            (State::Dead, i64::from(attempts), 1, Some(error), None)
        }
    };
    Ok(Seeded {
        event: NewEvent {
            meta,
            headers_json: seed.headers_json,
            body: bytes::Bytes::from(seed.body),
            received_at_us: seed.received_at_us,
            traceparent: seed.traceparent,
        },
        state,
        attempts,
        permanent_attempts,
        last_error,
        published_at_us,
    })
}

/// Stores `meta` (a JSON text) as row `id`'s metadata, as a newer release that
/// knows more kinds, statuses or fields would have written it.
pub async fn rewrite_meta(config: &Config, id: i64, meta: &str) -> Result<(), OutboxError> {
    match Location::parse(config.outbox_url.expose())? {
        Location::Sqlite(path) => super::sqlite::rewrite_meta(&path, id, meta),
        Location::Postgres(url) => super::postgres::rewrite_meta(&url, id, meta).await,
    }
}

/// Row `id`'s metadata as this release stores it (JSON text); `None` when there
/// is no such row or this release cannot read its metadata.
pub async fn meta_of(config: &Config, id: i64) -> Result<Option<String>, OutboxError> {
    let other = |e: &dyn std::fmt::Display| {
        OutboxError::Storage(super::Fault::new(super::FaultKind::Other, e.to_string()))
    };
    let metrics = Arc::new(crate::metrics::Metrics::new().map_err(|e| other(&e))?);
    let outbox = super::operate(config.outbox_url.expose(), metrics).await?;
    let meta = outbox.show(id).await?.and_then(|full| full.row.meta);
    meta.map(|meta| serde_json::to_string(&meta).map_err(|e| other(&e)))
        .transpose()
}

/// The outbox's schema version, and the oldest version whose releases may run on
/// it.
pub async fn schema_version(config: &Config) -> Result<(i64, i64), OutboxError> {
    let version = match Location::parse(config.outbox_url.expose())? {
        Location::Sqlite(path) => super::sqlite::recorded_version(&path)?,
        Location::Postgres(url) => super::postgres::recorded_version(&url).await?,
    };
    Ok((version.version, version.readable_by))
}

/// Records schema version `version`, readable by releases of `readable_by` and
/// later, as a newer release's migration would (without changing any table).
pub async fn record_schema_version(
    config: &Config,
    version: i64,
    readable_by: i64,
) -> Result<(), OutboxError> {
    let version = Version {
        version,
        readable_by,
    };
    match Location::parse(config.outbox_url.expose())? {
        Location::Sqlite(path) => super::sqlite::record_version(&path, version),
        Location::Postgres(url) => super::postgres::record_version(&url, version).await,
    }
}

/// Leaves the outbox (stopped) as the release before the per-subject sequence
/// left it: its rows without numbers, its schema a version back. The next relay
/// started on it migrates it again (tests of that migration).
pub async fn as_before_sequences(config: &Config) -> Result<(), OutboxError> {
    match Location::parse(config.outbox_url.expose())? {
        Location::Sqlite(path) => super::sqlite::undo_sequences(&path),
        Location::Postgres(url) => super::postgres::undo_sequences(&url).await,
    }
}

/// The outbox's tables locked by another session, as a long maintenance job or
/// an `outbox` command would lock them, until dropped: SQLite's write lock, or on
/// PostgreSQL an exclusive lock of its tables in a transaction held open.
pub struct WriteLock(Held);

enum Held {
    Sqlite(rusqlite::Connection),
    /// The session whose transaction holds the locks; its end gives them back.
    Postgres {
        _session: tokio_postgres::Client,
    },
}

/// Takes the outbox's write lock (see [`WriteLock`]) and holds it until the
/// returned guard is dropped.
pub async fn hold_write_lock(url: &str) -> Result<WriteLock, OutboxError> {
    Ok(WriteLock(match Location::parse(url)? {
        Location::Sqlite(path) => Held::Sqlite(super::sqlite::write_lock(&path)?),
        Location::Postgres(url) => Held::Postgres {
            _session: super::postgres::write_lock(&url).await?,
        },
    }))
}

impl Drop for WriteLock {
    fn drop(&mut self) {
        // PostgreSQL's lock goes with its session (the client, dropped with this).
        if let Held::Sqlite(conn) = &self.0 {
            let _ = super::sqlite::release_write_lock(conn);
        }
    }
}

/// Records a relay's beat at `at_us` in the outbox's recovery ledger, creating
/// the outbox if need be: a relay started after it sees the time since as a gap.
pub async fn beat_at(config: &Config, at_us: i64) -> Result<(), OutboxError> {
    let metrics = Arc::new(crate::metrics::Metrics::new().map_err(|e| {
        OutboxError::Storage(super::Fault::new(super::FaultKind::Other, e.to_string()))
    })?);
    let outbox = super::serve(
        config.outbox_url.expose(),
        metrics,
        super::Options::default(),
    )
    .await?;
    super::recall::Recall::new(outbox.operate)
        .beat(at_us, 5_000_000, 15_000_000, &[], &[], &[])
        .await?;
    outbox.pipe.close().await;
    Ok(())
}
