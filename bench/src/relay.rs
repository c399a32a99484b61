//! The relay under test: the release binary as a child process (the testkit's
//! launcher with the bench's settings), its outbox, its admin `/metrics` as the
//! numbers the bench reports, and the check that the binary is not older than the
//! sources.

use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use hookrelay_testkit::{Launch, RelayProcess};

use crate::postgres;

/// Webhook token of the bench's Whitepay source.
pub const TOKEN: &str = "bench_token";
/// Log lines kept for error reports.
const LOG_TAIL: usize = 200;

/// The newest modification time of any file under `dir` (recursively).
fn newest_mtime(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    let mut stack = vec![dir.to_path_buf()];
    let mut visited = 0usize;
    while let Some(dir) = stack.pop() {
        visited += 1;
        if visited > 10_000 {
            break;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if let Ok(modified) = meta.modified() {
                newest = newest.max(Some(modified));
            }
        }
    }
    newest
}

/// Refuses a missing binary, or one older than the relay's sources (`src/**`).
pub fn check_binary(binary: &Path, root: &Path, allow_stale: bool) -> anyhow::Result<()> {
    let build = "build it with `cargo build --release --bin hookrelay` (at the repository root)";
    let Ok(meta) = std::fs::metadata(binary) else {
        bail!("the relay binary {} is missing: {build}", binary.display());
    };
    let built = meta.modified().context("binary mtime")?;
    if let Some(newest) = newest_mtime(&root.join("src"))
        && newest > built
        && !allow_stale
    {
        bail!(
            "the relay binary {} is older than its sources in {}: {build} (or pass --allow-stale-relay)",
            binary.display(),
            root.join("src").display()
        );
    }
    Ok(())
}

/// The outbox a relay is started on.
#[derive(Clone, Copy, Debug)]
pub enum Outbox<'a> {
    /// A new SQLite file `outbox.db` in this directory.
    Sqlite { dir: &'a Path },
    /// A PostgreSQL database (`postgres://…`), possibly shared with other relays.
    Postgres { url: &'a str },
}

impl Outbox<'_> {
    /// `HOOKRELAY_OUTBOX_URL`.
    pub fn url(&self) -> String {
        match self {
            Self::Sqlite { dir } => format!("sqlite://{}", dir.join("outbox.db").display()),
            Self::Postgres { url } => (*url).to_owned(),
        }
    }
}

/// Which outbox backend a scenario's relays run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

/// Where a scenario's outbox lives, removed after the scenario: a temp directory
/// for SQLite, a fresh database for PostgreSQL (dropped by [`remove`](Self::remove),
/// or by `postgres::Server::cleanup_all` at the end of the run if a scenario fails).
pub enum OutboxHome {
    Sqlite(tempfile::TempDir),
    Postgres {
        server: postgres::Server,
        database: String,
        url: String,
    },
}

impl OutboxHome {
    /// A new SQLite directory under `parent`.
    pub fn sqlite(parent: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(parent)?;
        Ok(Self::Sqlite(
            tempfile::Builder::new()
                .prefix("hookrelay-bench-")
                .tempdir_in(parent)?,
        ))
    }

    /// A new PostgreSQL database `database` on `server`.
    pub async fn postgres(server: &postgres::Server, database: &str) -> anyhow::Result<Self> {
        let url = server.create(database).await?;
        Ok(Self::Postgres {
            server: server.clone(),
            database: database.to_owned(),
            url,
        })
    }

    /// The outbox to give the relays.
    pub fn outbox(&self) -> Outbox<'_> {
        match self {
            Self::Sqlite(dir) => Outbox::Sqlite { dir: dir.path() },
            Self::Postgres { url, .. } => Outbox::Postgres { url },
        }
    }

    /// Size of the outbox, MiB: SQLite's files, or `pg_database_size`.
    pub async fn size_mib(&self) -> f64 {
        match self {
            Self::Sqlite(dir) => crate::procfs::dir_mib(dir.path()),
            Self::Postgres {
                server, database, ..
            } => server
                .stats(database)
                .await
                .map_or(0.0, |s| s.database_bytes as f64 / (1024.0 * 1024.0)),
        }
    }

    /// PostgreSQL's counters now (`None` for SQLite, or if they cannot be read).
    pub async fn postgres_stats(&self) -> Option<postgres::Stats> {
        match self {
            Self::Sqlite(_) => None,
            Self::Postgres {
                server, database, ..
            } => server.stats(database).await.ok(),
        }
    }

    /// Leaves the outbox in place (`--keep-outbox`); returns where it is.
    pub fn keep(self) -> String {
        match self {
            Self::Sqlite(dir) => {
                let path = dir.keep();
                path.join("outbox.db").display().to_string()
            }
            Self::Postgres {
                server, database, ..
            } => {
                server.forget(&database);
                server.url(&database)
            }
        }
    }

    /// Removes the outbox (the relays must be stopped).
    pub async fn remove(self) {
        if let Self::Postgres {
            server, database, ..
        } = self
            && let Err(e) = server.drop_database(&database).await
        {
            eprintln!("bench: cannot drop the PostgreSQL database {database}: {e:#}");
        }
    }
}

/// How to start one relay.
pub struct RelaySpec<'a> {
    pub binary: &'a Path,
    pub exchange: &'a str,
    /// `host:port` of the broker the relay connects to (possibly the bench's proxy).
    pub broker: String,
    pub outbox: Outbox<'a>,
    /// Whitepay sources configured besides `whitepay`, all with [`TOKEN`].
    pub extra_sources: &'a [&'a str],
    /// A program (with its arguments) the relay runs under, such as valgrind;
    /// empty for none.
    pub wrapper: &'a [String],
}

/// A running relay: the testkit's process (its `pid`, `ingress`, `admin`, log,
/// signals) with the bench's metrics and stop. Killed when dropped.
pub struct Relay {
    process: RelayProcess,
    /// `HOOKRELAY_OUTBOX_URL`.
    pub outbox: String,
}

impl Deref for Relay {
    type Target = RelayProcess;

    fn deref(&self) -> &RelayProcess {
        &self.process
    }
}

impl DerefMut for Relay {
    fn deref_mut(&mut self) -> &mut RelayProcess {
        &mut self.process
    }
}

impl Relay {
    /// Starts the relay and waits (at most 30 s, 300 s under a wrapper) for both
    /// listeners. Its stdout and stderr go to its log, of which the last
    /// [`LOG_TAIL`] lines are kept.
    pub fn start(spec: &RelaySpec<'_>) -> anyhow::Result<Self> {
        let outbox = spec.outbox.url();
        let start_within = Duration::from_secs(if spec.wrapper.is_empty() { 30 } else { 300 });
        let mut launch = Launch::serve(spec.binary)
            .under(spec.wrapper)
            .start_within(start_within)
            .keep_lines(LOG_TAIL)
            .log_stderr()
            .exchange(spec.exchange)
            .broker(&spec.broker)
            .outbox(&outbox)
            .env("HOOKRELAY_SOURCES__WHITEPAY__WEBHOOK_TOKEN", TOKEN);
        for source in spec.extra_sources {
            let key = format!("HOOKRELAY_SOURCES__{}", source.to_uppercase());
            launch = launch
                .env(format!("{key}__PROVIDER"), "whitepay")
                .env(format!("{key}__WEBHOOK_TOKEN"), TOKEN);
        }
        Ok(Self {
            process: launch.start()?,
            outbox,
        })
    }

    /// A snapshot of the metrics the bench reads.
    pub async fn metrics(&self) -> anyhow::Result<Metrics> {
        Ok(Metrics::parse(&self.process.metrics_text().await?))
    }

    /// Stops the relay with SIGTERM (graceful), SIGKILL after 10 s.
    pub fn stop(self) {
        self.stop_within(Duration::from_secs(10));
    }

    /// Stops the relay with SIGTERM (graceful), SIGKILL after `grace`; whether it
    /// exited by itself.
    pub fn stop_within(self, grace: Duration) -> bool {
        self.process.stop_within(grace).is_some()
    }
}

/// The relay metrics the bench reports.
#[derive(Clone, Copy, Debug, Default)]
pub struct Metrics {
    pub published: f64,
    pub batch_sum: f64,
    pub batch_count: f64,
    pub pending: f64,
    pub unavailable: f64,
    pub broker_connected: f64,
    /// `hookrelay_ingest_duration_seconds`: all requests, and those within 10 ms and
    /// within 50 ms (bucket bounds), as the relay itself measured them.
    pub ingest_count: f64,
    pub ingest_le_10ms: f64,
    pub ingest_le_50ms: f64,
    /// `hookrelay_outbox_partitions_owned` (PostgreSQL; 0 on SQLite).
    pub partitions_owned: f64,
}

impl Metrics {
    fn parse(text: &str) -> Self {
        let mut m = Self::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let bare = name.split('{').next().unwrap_or(name);
            match bare {
                "hookrelay_events_published_total" => m.published += value,
                "hookrelay_outbox_commit_batch_size_sum" => m.batch_sum += value,
                "hookrelay_outbox_commit_batch_size_count" => m.batch_count += value,
                "hookrelay_outbox_events" if name.contains("state=\"pending\"") => {
                    m.pending += value;
                }
                "hookrelay_webhooks_received_total" if name.contains("outcome=\"unavailable\"") => {
                    m.unavailable += value;
                }
                // 1 on the node the publisher is on, 0 on the others.
                "hookrelay_broker_connected" => m.broker_connected += value,
                "hookrelay_outbox_partitions_owned" => m.partitions_owned = value,
                "hookrelay_ingest_duration_seconds_count" => m.ingest_count += value,
                "hookrelay_ingest_duration_seconds_bucket" if name.contains("le=\"0.01\"") => {
                    m.ingest_le_10ms += value;
                }
                "hookrelay_ingest_duration_seconds_bucket" if name.contains("le=\"0.05\"") => {
                    m.ingest_le_50ms += value;
                }
                _ => {}
            }
        }
        m
    }

    /// Several replicas' metrics as one: their own counters summed; `pending`, read
    /// from the shared outbox by every replica, taken once (the largest);
    /// `broker_connected` the smallest (every replica connected).
    pub fn merged(all: &[Self]) -> Self {
        let mut m = Self::default();
        for (i, r) in all.iter().enumerate() {
            m.published += r.published;
            m.batch_sum += r.batch_sum;
            m.batch_count += r.batch_count;
            m.pending = m.pending.max(r.pending);
            m.unavailable += r.unavailable;
            m.broker_connected = if i == 0 {
                r.broker_connected
            } else {
                m.broker_connected.min(r.broker_connected)
            };
            m.ingest_count += r.ingest_count;
            m.ingest_le_10ms += r.ingest_le_10ms;
            m.ingest_le_50ms += r.ingest_le_50ms;
            m.partitions_owned += r.partitions_owned;
        }
        m
    }

    /// Average webhooks per group commit between two snapshots.
    pub fn batch_size_since(&self, before: &Self) -> f64 {
        let n = self.batch_count - before.batch_count;
        if n > 0.0 {
            (self.batch_sum - before.batch_sum) / n
        } else {
            0.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_summed_over_labels() {
        let text = "# HELP x\n\
            hookrelay_events_published_total{kind=\"order\",provider=\"whitepay\",status=\"succeeded\"} 7\n\
            hookrelay_events_published_total{kind=\"order\",provider=\"whitepay\",status=\"failed\"} 3\n\
            hookrelay_outbox_commit_batch_size_sum 40\n\
            hookrelay_outbox_commit_batch_size_count 4\n\
            hookrelay_outbox_events{state=\"dead\"} 1\n\
            hookrelay_outbox_events{state=\"pending\"} 12\n\
            hookrelay_broker_connected{node=\"127.0.0.1:5672\"} 1\n\
            hookrelay_broker_connected{node=\"127.0.0.1:5673\"} 0\n\
            hookrelay_outbox_partitions_owned 86\n\
            hookrelay_ingest_duration_seconds_bucket{source=\"whitepay\",le=\"0.01\"} 90\n\
            hookrelay_ingest_duration_seconds_bucket{source=\"whitepay\",le=\"0.05\"} 99\n\
            hookrelay_ingest_duration_seconds_count{source=\"whitepay\"} 100\n";
        let m = Metrics::parse(text);
        assert_eq!(m.published, 10.0);
        assert_eq!(m.pending, 12.0);
        assert_eq!(m.batch_size_since(&Metrics::default()), 10.0);
        assert_eq!(m.broker_connected, 1.0);
        assert_eq!(m.partitions_owned, 86.0);
        let two = Metrics::merged(&[m, m]);
        assert_eq!((two.published, two.pending), (20.0, 12.0));
        assert_eq!(two.partitions_owned, 172.0);
        assert_eq!(
            (m.ingest_count, m.ingest_le_10ms, m.ingest_le_50ms),
            (100.0, 90.0, 99.0)
        );
    }
}
