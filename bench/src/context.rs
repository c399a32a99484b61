//! What every scenario is given: the parsed options, the run's id and clock, the
//! relay binary, where outboxes go, the PostgreSQL server; and the progress lines
//! on stderr.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::args::Args;
use crate::load::{LoadSpec, Mode};
use crate::relay::{Backend, OutboxHome};
use crate::{broker, postgres, procfs, relay};

/// Settings shared by the scenarios.
pub struct Ctx {
    pub args: Args,
    pub epoch: Instant,
    pub run_id: String,
    pub relay_bin: PathBuf,
    pub outbox_parent: PathBuf,
    pub warmup: Duration,
    pub duration: Duration,
    pub backlog: u64,
    pub bench_pid: u32,
    /// The `--postgres` server, checked (loopback) and reached when a pg-* scenario runs.
    pub postgres: Option<postgres::Server>,
}

/// A progress line on stderr.
pub fn progress(message: impl AsRef<str>) {
    eprintln!("bench: {}", message.as_ref());
}

impl Ctx {
    /// Checks what the chosen scenarios need, failing early with a clear message:
    /// a relay binary not older than its sources (`needs_relay`), the broker, and
    /// PostgreSQL (`needs_postgres`).
    pub async fn new(args: Args, needs_relay: bool, needs_postgres: bool) -> anyhow::Result<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("repository root")?
            .to_path_buf();
        // Where `cargo build --release` put the relay: `$CARGO_TARGET_DIR` when set
        // (as for the build), else the repository's `target/`.
        let target_dir = std::env::var_os("CARGO_TARGET_DIR")
            .filter(|dir| !dir.is_empty())
            .map_or_else(|| root.join("target"), PathBuf::from);
        let relay_bin = args
            .relay_bin
            .clone()
            .unwrap_or_else(|| target_dir.join("release/hookrelay"));
        if needs_relay {
            relay::check_binary(&relay_bin, &root, args.allow_stale_relay)?;
            progress(format!("relay binary {}", relay_bin.display()));
        }
        let (duration, warmup, backlog) = if args.quick {
            (5.0, 1.0, 20_000)
        } else {
            (20.0, 2.0, 100_000)
        };
        let duration = args.duration.unwrap_or(duration);
        let warmup = args.warmup.unwrap_or(warmup);
        anyhow::ensure!(
            (0.5..=3600.0).contains(&duration) && (0.0..=600.0).contains(&warmup),
            "--duration must be 0.5..3600 s and --warmup 0..600 s"
        );
        // Fail early, with a clear message, when the broker is not there.
        let probe = broker::connect(&args.broker, "hookrelay-bench probe").await?;
        let _ = probe.close(200, "probe".into()).await;
        // And PostgreSQL, when a scenario needs it.
        let postgres = if needs_postgres {
            let server = postgres::Server::new(&args.postgres)?;
            progress(server.probe().await?);
            Some(server)
        } else {
            None
        };
        let outbox_parent = args.outbox_dir.clone().unwrap_or_else(std::env::temp_dir);
        let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        Ok(Self {
            backlog: args.backlog.unwrap_or(backlog),
            args,
            epoch: Instant::now(),
            run_id,
            relay_bin,
            outbox_parent,
            warmup: Duration::from_secs_f64(warmup),
            duration: Duration::from_secs_f64(duration),
            bench_pid: std::process::id(),
            postgres,
        })
    }

    pub fn broker_pids(&self) -> Vec<u32> {
        procfs::pids_named("beam.smp")
    }

    pub fn postgres(&self) -> anyhow::Result<&postgres::Server> {
        self.postgres
            .as_ref()
            .context("no PostgreSQL server (a pg-* scenario was not selected)")
    }

    /// The database of a PostgreSQL scenario: `hookrelay_bench_{run}_{scenario}`.
    pub fn database(&self, scenario: &str) -> String {
        format!(
            "hookrelay_bench_{}_{}",
            self.run_id,
            scenario.replace('-', "_")
        )
    }

    /// A fresh outbox for `scenario`: a SQLite directory under `--outbox-dir`, or
    /// the scenario's own PostgreSQL database.
    pub async fn outbox_home(
        &self,
        backend: Backend,
        scenario: &str,
    ) -> anyhow::Result<OutboxHome> {
        match backend {
            Backend::Sqlite => OutboxHome::sqlite(&self.outbox_parent),
            Backend::Postgres => {
                OutboxHome::postgres(self.postgres()?, &self.database(scenario)).await
            }
        }
    }

    pub fn exchange(&self, scenario: &str) -> String {
        format!("hookrelay-bench-{}-{scenario}", self.run_id)
    }

    pub fn tag(&self, scenario: &str) -> String {
        format!("{}{scenario}", self.run_id)
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.args.request_timeout)
    }

    /// A load of Whitepay webhooks signed with the bench's token, order ids tagged
    /// `tag` (see [`tag`](Self::tag)), over `connections` to `addrs`, for the
    /// warm-up and the measured window, without a request limit.
    pub fn load(
        &self,
        tag: &str,
        addrs: Vec<SocketAddr>,
        connections: usize,
        mode: Mode,
    ) -> LoadSpec {
        LoadSpec {
            addrs,
            path: "/webhooks/whitepay".to_owned(),
            token: relay::TOKEN.to_owned(),
            tag: self.tag(tag),
            connections,
            mode,
            warmup: self.warmup,
            duration: self.duration,
            limit: None,
            timeout: self.timeout(),
            epoch: self.epoch,
        }
    }
}
