//! The relay under test: the release binary as a child process, its admin
//! `/metrics`, and the check that the binary is not older than the sources.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};

use crate::{http, postgres};

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
    fn url(&self) -> String {
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

/// A running relay.
pub struct Relay {
    child: Child,
    pub pid: u32,
    pub ingress: SocketAddr,
    pub admin: SocketAddr,
    /// `HOOKRELAY_OUTBOX_URL`.
    pub outbox: String,
    logs: Arc<Mutex<LogTail>>,
}

#[derive(Default)]
struct LogTail {
    lines: std::collections::VecDeque<String>,
    ingress: Option<SocketAddr>,
    admin: Option<SocketAddr>,
    warnings: u64,
    errors: u64,
    /// The first distinct WARN/ERROR messages, with how often each was logged.
    first: Vec<(String, u64)>,
}

impl LogTail {
    fn push(&mut self, line: String) {
        if let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) {
            let addr = || value["addr"].as_str().and_then(|a| a.parse().ok());
            match value["message"].as_str() {
                Some("ingress listening") => self.ingress = addr(),
                Some("admin listening") => self.admin = addr(),
                _ => {}
            }
            let level = value["level"].as_str();
            match level {
                Some("WARN") => self.warnings += 1,
                Some("ERROR") => self.errors += 1,
                _ => {}
            }
            if matches!(level, Some("WARN" | "ERROR")) {
                let fields = &value["fields"];
                let text = format!(
                    "{} {}{}",
                    level.unwrap_or_default(),
                    fields["message"]
                        .as_str()
                        .or(value["message"].as_str())
                        .unwrap_or("?"),
                    fields["error"]
                        .as_str()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                );
                if let Some(seen) = self.first.iter_mut().find(|(t, _)| *t == text) {
                    seen.1 += 1;
                } else if self.first.len() < 5 {
                    self.first.push((text, 1));
                }
            }
        }
        if self.lines.len() >= LOG_TAIL {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }
}

fn read_lines(stream: impl Read + Send + 'static, sink: Arc<Mutex<LogTail>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if let Ok(mut tail) = sink.lock() {
                tail.push(line);
            }
        }
    });
}

impl Relay {
    /// Starts the relay and waits (at most 30 s, 300 s under a wrapper) for both
    /// listeners.
    pub fn start(spec: &RelaySpec<'_>) -> anyhow::Result<Self> {
        let outbox = spec.outbox.url();
        let mut command = match spec.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(spec.binary);
                c
            }
            None => Command::new(spec.binary),
        };
        command.arg("serve").env_clear();
        for source in spec.extra_sources {
            let key = format!("HOOKRELAY_SOURCES__{}", source.to_uppercase());
            command
                .env(format!("{key}__PROVIDER"), "whitepay")
                .env(format!("{key}__WEBHOOK_TOKEN"), TOKEN);
        }
        let mut child = command
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "warn,hookrelay::relay=info")
            .env("HOOKRELAY_LOG_FORMAT", "json")
            .env("HOOKRELAY_LISTEN", "127.0.0.1:0")
            .env("HOOKRELAY_ADMIN_LISTEN", "127.0.0.1:0")
            .env("HOOKRELAY_EXCHANGE", spec.exchange)
            .env(
                "HOOKRELAY_AMQP_URL",
                format!("amqp://guest:guest@{}/%2f", spec.broker),
            )
            .env("HOOKRELAY_OUTBOX_URL", &outbox)
            .env("HOOKRELAY_SOURCES__WHITEPAY__WEBHOOK_TOKEN", TOKEN)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", spec.binary.display()))?;
        let logs = Arc::new(Mutex::new(LogTail::default()));
        read_lines(child.stdout.take().context("stdout")?, Arc::clone(&logs));
        read_lines(child.stderr.take().context("stderr")?, Arc::clone(&logs));
        let pid = child.id();
        let start_within = Duration::from_secs(if spec.wrapper.is_empty() { 30 } else { 300 });
        let deadline = Instant::now() + start_within;
        loop {
            let (ingress, admin) = {
                let tail = logs.lock().expect("logs");
                (tail.ingress, tail.admin)
            };
            if let (Some(ingress), Some(admin)) = (ingress, admin) {
                return Ok(Self {
                    child,
                    pid,
                    ingress,
                    admin,
                    outbox,
                    logs,
                });
            }
            if let Ok(Some(status)) = child.try_wait() {
                let tail = logs.lock().expect("logs").lines.clone();
                bail!("the relay exited during start ({status}):\n{}", join(&tail));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                let tail = logs.lock().expect("logs").lines.clone();
                bail!(
                    "the relay did not start within {} s:\n{}",
                    start_within.as_secs(),
                    join(&tail)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// WARN and ERROR lines logged so far.
    pub fn warnings_errors(&self) -> (u64, u64) {
        let tail = self.logs.lock().expect("logs");
        (tail.warnings, tail.errors)
    }

    /// The first distinct WARN/ERROR messages and their counts.
    pub fn problems(&self) -> Vec<(String, u64)> {
        self.logs.lock().expect("logs").first.clone()
    }

    /// The last log lines, for error reports.
    pub fn log_tail(&self, n: usize) -> String {
        let tail = self.logs.lock().expect("logs");
        let skip = tail.lines.len().saturating_sub(n);
        join(&tail.lines.iter().skip(skip).cloned().collect())
    }

    /// A snapshot of the metrics the bench reads.
    pub async fn metrics(&self) -> anyhow::Result<Metrics> {
        let text = http::get(self.admin, "/metrics").await?;
        Ok(Metrics::parse(&text))
    }

    /// Sends SIGTERM (a graceful stop) without waiting; [`stop`](Self::stop) waits.
    pub fn terminate(&mut self) {
        if self.alive() {
            // SAFETY: kill(2) on our own child's pid, which has not been waited for.
            let _ = unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
        }
    }

    /// Stops the relay with SIGTERM (graceful), SIGKILL after 10 s.
    pub fn stop(self) {
        self.stop_within(Duration::from_secs(10));
    }

    /// Stops the relay with SIGTERM (graceful), SIGKILL after `grace`; whether it
    /// exited by itself.
    pub fn stop_within(mut self, grace: Duration) -> bool {
        self.terminate();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !self.alive() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Drop kills it.
        false
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn join(lines: &std::collections::VecDeque<String>) -> String {
    lines.iter().cloned().collect::<Vec<_>>().join("\n")
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
                "hookrelay_broker_connected" => m.broker_connected = value,
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
            hookrelay_broker_connected 1\n\
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
