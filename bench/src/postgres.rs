//! PostgreSQL side of the bench: the server (`--postgres`, loopback only), one
//! fresh database per scenario and its clean-up, and counters from the server's
//! statistics views. PostgreSQL's CPU is read from `/proc` (`procfs::CpuWindow::named`).

use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config, NoTls};

/// Command name of PostgreSQL's processes (the postmaster and every backend).
pub const PROCESS: &str = "postgres";

/// Databases created by this process, dropped by [`Server::cleanup_all`] even when
/// a scenario fails.
static CREATED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// A PostgreSQL server on loopback: `postgres://USER[:PASSWORD]@HOST:PORT`, to which
/// the bench appends `/DATABASE?sslmode=disable`.
#[derive(Clone, Debug)]
pub struct Server {
    prefix: String,
}

impl Server {
    /// Checks the prefix: a `postgres://` or `postgresql://` URL without a database
    /// or parameters, whose hosts are all loopback (TCP; `localhost` or an address in
    /// 127.0.0.0/8 or ::1).
    pub fn new(prefix: &str) -> anyhow::Result<Self> {
        let prefix = prefix.trim_end_matches('/');
        let Some(rest) = prefix
            .strip_prefix("postgres://")
            .or_else(|| prefix.strip_prefix("postgresql://"))
        else {
            bail!("--postgres must start with postgres:// (got {prefix})");
        };
        if rest.contains(['/', '?']) {
            bail!(
                "--postgres is a URL prefix without a database or parameters, e.g. postgres://postgres@127.0.0.1:5432"
            );
        }
        let server = Self {
            prefix: prefix.to_owned(),
        };
        let config = Config::from_str(&server.url("postgres")).context("--postgres")?;
        let loopback_host = |host: &Host| match host {
            Host::Tcp(name) => {
                name == "localhost"
                    || name
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .parse::<IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
            #[cfg(unix)]
            Host::Unix(_) => false,
        };
        anyhow::ensure!(
            !config.get_hosts().is_empty()
                && config.get_hosts().iter().all(loopback_host)
                && config.get_hostaddrs().iter().all(IpAddr::is_loopback),
            "--postgres {prefix}: the bench only talks to loopback TCP addresses (127.0.0.0/8, ::1, localhost)"
        );
        Ok(server)
    }

    /// The URL of `database` on this server, as the relay gets it.
    pub fn url(&self, database: &str) -> String {
        format!("{}/{database}?sslmode=disable", self.prefix)
    }

    /// Leaves `database` out of the clean-up (`--keep-outbox`).
    pub fn forget(&self, database: &str) {
        CREATED.lock().expect("created").retain(|n| n != database);
    }

    /// A connection to `database`, bounded by 10 s.
    async fn connect(&self, database: &str) -> anyhow::Result<Client> {
        let url = self.url(database);
        let (client, connection) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_postgres::connect(&url, NoTls),
        )
        .await
        .with_context(|| format!("connecting to PostgreSQL ({}) timed out", self.prefix))?
        .with_context(|| {
            format!(
                "cannot connect to PostgreSQL as {} (is it running?)",
                self.prefix
            )
        })?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Fails early, with a clear message, when the server is not there; returns its
    /// version and the settings that decide a commit's cost.
    pub async fn probe(&self) -> anyhow::Result<String> {
        let client = self.connect("postgres").await?;
        let row = bounded(client.query_one(
            "SELECT current_setting('server_version'), current_setting('synchronous_commit'),
                    current_setting('wal_sync_method'), current_setting('shared_buffers'),
                    current_setting('max_connections')",
            &[],
        ))
        .await?;
        let get = |i: usize| row.get::<_, String>(i);
        Ok(format!(
            "PostgreSQL {} (synchronous_commit {}, wal_sync_method {}, shared_buffers {}, max_connections {})",
            get(0),
            get(1),
            get(2),
            get(3),
            get(4)
        ))
    }

    /// Creates a fresh database `name` (dropped first if a previous run left it);
    /// returns its URL.
    pub async fn create(&self, name: &str) -> anyhow::Result<String> {
        anyhow::ensure!(
            !name.is_empty()
                && name.len() <= 63
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "database name {name:?}: lower-case letters, digits and _ only"
        );
        CREATED.lock().expect("created").push(name.to_owned());
        let client = self.connect("postgres").await?;
        bounded(client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
            .await?;
        bounded(client.batch_execute(&format!("CREATE DATABASE {name}")))
            .await
            .with_context(|| format!("CREATE DATABASE {name}"))?;
        Ok(self.url(name))
    }

    /// Drops a database this process created (its sessions are ended first).
    pub async fn drop_database(&self, name: &str) -> anyhow::Result<()> {
        let client = self.connect("postgres").await?;
        bounded(client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
            .await?;
        CREATED.lock().expect("created").retain(|n| n != name);
        Ok(())
    }

    /// Drops every database this process created and has not dropped yet.
    pub async fn cleanup_all(&self) {
        let created: Vec<String> = CREATED.lock().expect("created").clone();
        for name in created {
            if let Err(e) = self.drop_database(&name).await {
                eprintln!("bench: cannot drop the PostgreSQL database {name}: {e:#}");
            }
        }
    }

    /// The server's counters now, for `database`. The transaction ids and the WAL
    /// position are exact at any moment; `pg_stat_database` is not (see [`Stats`]).
    pub async fn stats(&self, database: &str) -> anyhow::Result<Stats> {
        let client = self.connect("postgres").await?;
        let row = bounded(client.query_one(
            "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::int8,
                    (pg_current_wal_lsn() - '0/0'::pg_lsn)::float8,
                    (SELECT coalesce(sum(xact_commit + xact_rollback), 0)::int8
                       FROM pg_stat_database WHERE datname <> $1),
                    pg_database_size($1)",
            &[&database],
        ))
        .await?;
        Ok(Stats {
            next_xid: row.get(0),
            wal_bytes: row.get(1),
            other_transactions: row.get(2),
            database_bytes: row.get(3),
        })
    }
}

/// Bounds one statement by 30 s (a `DROP DATABASE … WITH (FORCE)` waits for the
/// sessions it ends).
async fn bounded<T>(
    work: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> anyhow::Result<T> {
    Ok(tokio::time::timeout(Duration::from_secs(30), work)
        .await
        .context("PostgreSQL statement timed out")??)
}

/// Cumulative counters of the server.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    /// The next transaction id (`pg_snapshot_xmax`): the difference of two readings
    /// is how many transactions took an id, i.e. wrote something (inserts, settles,
    /// lease renewals, `NOTIFY`), in the whole server. With `synchronous_commit` on,
    /// each one commits with a WAL flush (PostgreSQL groups concurrent flushes).
    pub next_xid: i64,
    /// WAL position (`pg_current_wal_lsn`), bytes: WAL written by the whole server.
    pub wal_bytes: f64,
    /// Transactions (`pg_stat_database`) in every other database of the server,
    /// the bench's own few statistics queries included: other work that the
    /// PostgreSQL CPU column also counts. A floor: a busy backend may hold its
    /// statistics back for up to a minute before publishing them.
    pub other_transactions: i64,
    /// `pg_database_size`, bytes.
    pub database_bytes: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_prefixes() {
        for ok in [
            "postgres://postgres@127.0.0.1:5432",
            "postgresql://u:p@localhost:5433/",
            "postgres://postgres@[::1]:5432",
        ] {
            let server = Server::new(ok).expect(ok);
            assert!(
                server.url("db_1").ends_with("/db_1?sslmode=disable"),
                "{ok}"
            );
        }
        for bad in [
            "postgres://postgres@10.0.0.1:5432",
            "postgres://postgres@db.example:5432",
            "postgres://postgres@127.0.0.1:5432/other",
            "postgres://postgres@127.0.0.1:5432?hostaddr=10.0.0.1",
            "mysql://127.0.0.1",
        ] {
            assert!(Server::new(bad).is_err(), "{bad}");
        }
    }
}
