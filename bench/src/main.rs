//! `hookrelay-bench`: one command that measures the relay against two ceilings on
//! the same machine, in the same run, and prints a results table.
//!
//! Scenarios, in order (each relay scenario gets a fresh relay process, outbox and
//! exchange; everything declared in RabbitMQ is deleted afterwards):
//!
//! 0. `fsync-probe`: 4 KiB append + `fdatasync` in a loop: the disk's commit ceiling.
//! 1. `http-ceiling`: the load generator against a bare axum server answering 200.
//! 2. `broker-ceiling`: a lapin publisher with a window of outstanding confirms,
//!    publishing relay-shaped persistent messages, consumed as in the relay runs.
//! 3. `steady`: the relay, closed loop at `--concurrency` (64).
//! 4. `half-rate`: the relay, open loop at half of `steady`'s acked rate.
//! 5. `overload`: open loop at `--overload-factor` (10) × that rate on up to
//!    `--overload-connections`, so requests outnumber the relay's bounded queue.
//! 6. `backlog`: `--backlog` (100,000) webhooks acked while the relay is cut off the
//!    broker (through a TCP proxy), then the broker is given back: drain rate.
//! 7. `pg-steady`: `steady` with the relay on a PostgreSQL outbox (`--postgres`).
//! 8. `pg-overload`: `overload` on PostgreSQL, at the factor × `pg-steady`'s rate.
//!    `pg-backlog`: `backlog` on PostgreSQL.
//! 9. `pg-steady-3`: three relays on one PostgreSQL database, the closed-loop
//!    connections spread round robin over their three ingress addresses.
//! 10. `console`, `pg-console` (only when named in `--scenarios`): the admin API
//!     on an outbox seeded with 1,000,000 rows, and ingest while a search runs.
//! 11. `callgrind` (only when named): instructions per webhook, counted by valgrind.
//!
//! The SQLite scenarios run first, so one run has them as the reference for the
//! PostgreSQL ones.
//!
//! See bench/README.md for how to run it and read the table.

mod broker;
mod callgrind;
mod console;
mod disk;
mod http;
mod load;
mod postgres;
mod procfs;
mod relay;
mod report;
mod seed;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};

use crate::load::{LoadResult, LoadSpec, Mode};
use crate::procfs::{CpuWindow, SystemWindow};
use crate::relay::{Backend, OutboxHome, Relay, RelaySpec};
use crate::report::{Check, Latency, PostgresWindow, Report, Resources, Scenario};

#[derive(Parser, Debug)]
#[command(
    name = "hookrelay-bench",
    about = "Benchmarks hookrelay (the release binary) against an HTTP and a broker ceiling measured in the same run",
    after_help = "Build the relay first: cargo build --release --bin hookrelay. RabbitMQ must listen on --broker, and PostgreSQL on --postgres for the pg-* scenarios (loopback only)."
)]
struct Args {
    #[command(subcommand)]
    command: Option<Sub>,
    /// Short run (~1 minute): 5 s scenarios, 1 s warm-up, a 20,000-event backlog.
    #[arg(long)]
    quick: bool,
    /// Measured seconds of each load scenario [default: 20, --quick 5].
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// Warm-up seconds before each measured window [default: 2, --quick 1].
    #[arg(long, value_name = "SECS")]
    warmup: Option<f64>,
    /// Connections of the closed-loop and half-rate scenarios.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Overload offers this many times the relay's maximum acked rate.
    #[arg(long, default_value_t = 10.0)]
    overload_factor: f64,
    /// Connections of the overload scenario (more than the relay's 2048-slot write
    /// queue, so that queue can fill).
    #[arg(long, default_value_t = 3000)]
    overload_connections: usize,
    /// Events acked while the broker is cut [default: 100000, --quick 20000].
    #[arg(long)]
    backlog: Option<u64>,
    /// The relay's maximum acked rate (req/s), used by half-rate (×0.5) and overload
    /// (×factor); by default it is what `steady` measured.
    #[arg(long, value_name = "REQ_PER_S")]
    max_rate: Option<f64>,
    /// RabbitMQ address (host:port, loopback only).
    #[arg(long, default_value = "127.0.0.1:5672")]
    broker: String,
    /// PostgreSQL server of the pg-* scenarios, as a URL prefix (loopback only): each
    /// scenario creates and drops its own database `hookrelay_bench_{run}_{scenario}`
    /// on it, and the relays get `{prefix}/{database}?sslmode=disable`.
    #[arg(
        long,
        value_name = "URL_PREFIX",
        default_value = "postgres://postgres@127.0.0.1:5432"
    )]
    postgres: String,
    /// The relay binary [default: <repository>/target/release/hookrelay].
    #[arg(long)]
    relay_bin: Option<PathBuf>,
    /// Run even if the relay binary is older than the sources in src/.
    #[arg(long)]
    allow_stale_relay: bool,
    /// Where the outboxes are created (the disk whose fsync is measured) [default:
    /// the system temp dir].
    #[arg(long)]
    outbox_dir: Option<PathBuf>,
    /// Scenarios to run, comma-separated (`console` and `pg-console` are not in
    /// the default list: seeding takes minutes).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "fsync-probe,http-ceiling,broker-ceiling,steady,half-rate,overload,backlog,pg-steady,pg-overload,pg-backlog,pg-steady-3"
    )]
    scenarios: Vec<Name>,
    /// Outstanding confirms of the broker ceiling's publisher (the relay's window is 256).
    #[arg(long, default_value_t = 256)]
    confirm_window: usize,
    /// Per-request bound, seconds.
    #[arg(long, default_value_t = 10.0)]
    request_timeout: f64,
    /// console: rows seeded into the outbox.
    #[arg(long, default_value_t = 1_000_000)]
    console_rows: u64,
    /// console: times each query is repeated.
    #[arg(long, default_value_t = 20)]
    console_repeat: u64,
    /// console: searches followed over the whole outbox (each one many requests).
    #[arg(long, default_value_t = 3)]
    console_walks: u64,
    /// console: connections of the ingest load measured with and without a search.
    #[arg(long, default_value_t = 16)]
    console_connections: usize,
    /// console: measured seconds of each of the two ingest loads.
    #[arg(long, default_value_t = 15.0)]
    console_duration: f64,
    /// console: leave the seeded outbox (SQLite file or PostgreSQL database) in
    /// place and print where it is, to look at its query plans afterwards;
    /// callgrind: keep the callgrind output files, for `callgrind_annotate`.
    #[arg(long)]
    keep_outbox: bool,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// The HTTP ceiling's server (started by the bench itself).
    #[command(hide = true)]
    HttpCeilingServer,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Name {
    FsyncProbe,
    HttpCeiling,
    BrokerCeiling,
    Steady,
    HalfRate,
    Overload,
    Backlog,
    PgSteady,
    PgOverload,
    PgBacklog,
    #[value(name = "pg-steady-3")]
    PgSteady3,
    Console,
    PgConsole,
    Callgrind,
}

impl Name {
    fn is_postgres(self) -> bool {
        matches!(
            self,
            Self::PgSteady | Self::PgOverload | Self::PgBacklog | Self::PgSteady3 | Self::PgConsole
        )
    }
}

/// Settings shared by the scenarios.
struct Ctx {
    args: Args,
    epoch: Instant,
    run_id: String,
    relay_bin: PathBuf,
    outbox_parent: PathBuf,
    warmup: Duration,
    duration: Duration,
    backlog: u64,
    bench_pid: u32,
    /// The `--postgres` server, checked (loopback) and reached when a pg-* scenario runs.
    postgres: Option<postgres::Server>,
}

impl Ctx {
    fn broker_pids(&self) -> Vec<u32> {
        procfs::pids_named("beam.smp")
    }

    fn postgres(&self) -> anyhow::Result<&postgres::Server> {
        self.postgres
            .as_ref()
            .context("no PostgreSQL server (a pg-* scenario was not selected)")
    }

    /// The database of a PostgreSQL scenario: `hookrelay_bench_{run}_{scenario}`.
    fn database(&self, scenario: &str) -> String {
        format!(
            "hookrelay_bench_{}_{}",
            self.run_id,
            scenario.replace('-', "_")
        )
    }

    fn exchange(&self, scenario: &str) -> String {
        format!("hookrelay-bench-{}-{scenario}", self.run_id)
    }

    fn tag(&self, scenario: &str) -> String {
        format!("{}{scenario}", self.run_id)
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.args.request_timeout)
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if let Some(Sub::HttpCeilingServer) = args.command {
        return match http::ceiling_server() {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("http ceiling server: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hookrelay-bench: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let broker = args.broker.clone();
    let postgres = postgres::Server::new(&args.postgres).ok();
    let outcome = runtime.block_on(async {
        let outcome = tokio::select! {
            r = run(args) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        };
        // Whatever happened, leave nothing behind in RabbitMQ and PostgreSQL.
        broker::cleanup_all(&broker).await;
        if let Some(server) = postgres {
            server.cleanup_all().await;
        }
        outcome
    });
    match outcome {
        // A missed target is a result, not a failure of the bench: exit 0 either way.
        Ok(_all_met) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hookrelay-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn progress(message: impl AsRef<str>) {
    eprintln!("bench: {}", message.as_ref());
}

async fn run(args: Args) -> anyhow::Result<bool> {
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
    let needs_relay = args.scenarios.iter().any(|s| {
        !matches!(
            s,
            Name::FsyncProbe | Name::HttpCeiling | Name::BrokerCeiling
        )
    });
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
    let postgres = if args.scenarios.iter().any(|s| s.is_postgres()) {
        let server = postgres::Server::new(&args.postgres)?;
        progress(server.probe().await?);
        Some(server)
    } else {
        None
    };
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let outbox_parent = args.outbox_dir.clone().unwrap_or_else(std::env::temp_dir);
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let ctx = Ctx {
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
    };
    progress(format!(
        "run {}: scenarios {:?}, {} s measured after {} s warm-up each",
        ctx.run_id, ctx.args.scenarios, duration, warmup
    ));
    let want = |n: Name| ctx.args.scenarios.contains(&n);
    let mut scenarios = Vec::new();
    let mut http_ceiling = None;
    let mut broker_ceiling = None;
    let mut steady = None;
    let mut half = None;
    let mut overload = None;
    let mut backlog = None;
    if want(Name::FsyncProbe) {
        let dir = ctx.outbox_parent.clone();
        let secs = if ctx.args.quick { 2.0 } else { 5.0 };
        progress(format!(
            "fsync-probe: 4 KiB append + fdatasync in {} for {secs} s",
            dir.display()
        ));
        let probe =
            tokio::task::spawn_blocking(move || disk::probe(&dir, Duration::from_secs_f64(secs)))
                .await??;
        let window = probe.window.as_secs_f64();
        scenarios.push(Scenario {
            name: "fsync-probe".to_owned(),
            description: "one thread appending 4 KiB + fdatasync: the disk's commit ceiling"
                .to_owned(),
            load: "1 thread, 4 KiB + fdatasync".to_owned(),
            window_s: window,
            acked_per_s: probe.count as f64 / window,
            ok: probe.count,
            latency_from: "send".to_owned(),
            ack: Latency::of(&probe.latency),
            commits_per_s: Some(probe.count as f64 / window),
            ..Scenario::default()
        });
    }
    if want(Name::HttpCeiling) {
        let s = http_ceiling_scenario(&ctx).await?;
        http_ceiling = Some(s.acked_per_s);
        scenarios.push(s);
    }
    if want(Name::BrokerCeiling) {
        let s = broker_ceiling_scenario(&ctx).await;
        let s = finish_scenario(&ctx, "broker-ceiling", s).await?;
        broker_ceiling = Some(s.acked_per_s);
        scenarios.push(s);
    }
    if want(Name::Steady) {
        let spec = |addrs| closed_spec(&ctx, "steady", addrs);
        let s = relay_scenario(
            &ctx,
            "steady",
            "closed loop: sustained fsync'd acks",
            Backend::Sqlite,
            1,
            &spec,
        )
        .await;
        let s = finish_scenario(&ctx, "steady", s).await?;
        steady = Some(s.clone());
        scenarios.push(s);
    }
    let max_rate = ctx
        .args
        .max_rate
        .or(steady.as_ref().map(|s| s.acked_per_s))
        .filter(|r| *r > 0.0);
    if want(Name::HalfRate) {
        let Some(max_rate) = max_rate else {
            bail!("half-rate needs the steady scenario or --max-rate");
        };
        let rate = max_rate / 2.0;
        let spec = |addrs| LoadSpec {
            addrs,
            path: "/webhooks/whitepay".to_owned(),
            token: relay::TOKEN.to_owned(),
            tag: ctx.tag("half"),
            connections: ctx.args.concurrency,
            mode: Mode::Open { rate },
            warmup: ctx.warmup,
            duration: ctx.duration,
            limit: None,
            timeout: ctx.timeout(),
            epoch: ctx.epoch,
        };
        let s = relay_scenario(
            &ctx,
            "half-rate",
            "open loop at half the steady acked rate; latency from the due time",
            Backend::Sqlite,
            1,
            &spec,
        )
        .await;
        let s = finish_scenario(&ctx, "half-rate", s).await?;
        half = Some(s.clone());
        scenarios.push(s);
    }
    if want(Name::Overload) {
        let Some(max_rate) = max_rate else {
            bail!("overload needs the steady scenario or --max-rate");
        };
        let spec = |addrs| overload_spec(&ctx, "overload", max_rate, addrs);
        let s = relay_scenario(
            &ctx,
            "overload",
            "open loop at overload-factor × the steady acked rate: expect 503s, bounded RSS",
            Backend::Sqlite,
            1,
            &spec,
        )
        .await;
        let s = finish_scenario(&ctx, "overload", s).await?;
        overload = Some(s.clone());
        scenarios.push(s);
    }
    if want(Name::Backlog) {
        let s = backlog_scenario(&ctx, "backlog", Backend::Sqlite).await;
        let s = finish_scenario(&ctx, "backlog", s).await?;
        backlog = Some(s.clone());
        scenarios.push(s);
    }
    // PostgreSQL, after the SQLite scenarios: the same run has the reference.
    let mut pg_rate = ctx.args.max_rate;
    if want(Name::PgSteady) {
        let spec = |addrs| closed_spec(&ctx, "pg-steady", addrs);
        let s = relay_scenario(
            &ctx,
            "pg-steady",
            "closed loop, one relay on a PostgreSQL outbox",
            Backend::Postgres,
            1,
            &spec,
        )
        .await;
        let s = finish_scenario(&ctx, "pg-steady", s).await?;
        pg_rate = pg_rate.or(Some(s.acked_per_s)).filter(|r| *r > 0.0);
        scenarios.push(s);
    }
    if want(Name::PgOverload) {
        let Some(max_rate) = pg_rate else {
            bail!("pg-overload needs the pg-steady scenario or --max-rate");
        };
        let spec = |addrs| overload_spec(&ctx, "pg-overload", max_rate, addrs);
        let s = relay_scenario(
            &ctx,
            "pg-overload",
            "open loop at overload-factor × the pg-steady acked rate, one relay on PostgreSQL",
            Backend::Postgres,
            1,
            &spec,
        )
        .await;
        scenarios.push(finish_scenario(&ctx, "pg-overload", s).await?);
    }
    if want(Name::PgBacklog) {
        let s = backlog_scenario(&ctx, "pg-backlog", Backend::Postgres).await;
        scenarios.push(finish_scenario(&ctx, "pg-backlog", s).await?);
    }
    if want(Name::PgSteady3) {
        let spec = |addrs| closed_spec(&ctx, "pg-steady-3", addrs);
        let s = relay_scenario(
            &ctx,
            "pg-steady-3",
            "closed loop spread round robin over three relays sharing one PostgreSQL outbox",
            Backend::Postgres,
            3,
            &spec,
        )
        .await;
        scenarios.push(finish_scenario(&ctx, "pg-steady-3", s).await?);
    }
    for (wanted, name, backend) in [
        (Name::Console, "console", Backend::Sqlite),
        (Name::PgConsole, "pg-console", Backend::Postgres),
    ] {
        if want(wanted) {
            let s = console::scenario(&ctx, name, backend).await;
            scenarios.extend(finish_scenario(&ctx, name, s).await?);
        }
    }
    let checks = checks(
        &ctx,
        http_ceiling,
        broker_ceiling,
        steady.as_ref(),
        half.as_ref(),
        overload.as_ref(),
        backlog.as_ref(),
        &scenarios,
    );
    let callgrind = if want(Name::Callgrind) {
        callgrind::run(&ctx).await?
    } else {
        Vec::new()
    };
    let all_met = checks.iter().all(|c| c.met != Some(false));
    let report = Report {
        command,
        started_unix: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        nproc: std::thread::available_parallelism().map_or(0, usize::from),
        scenarios,
        checks,
        callgrind,
    };
    println!("{}", report.markdown());
    if let Some(path) = &ctx.args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        progress(format!("JSON written to {}", path.display()));
    }
    Ok(all_met)
}

/// Cleans the broker after every scenario, failed or not.
async fn finish_scenario<T>(ctx: &Ctx, name: &str, result: anyhow::Result<T>) -> anyhow::Result<T> {
    broker::cleanup_all(&ctx.args.broker).await;
    result.with_context(|| format!("scenario {name}"))
}

/// The closed loop of `steady` and its PostgreSQL variants.
fn closed_spec(ctx: &Ctx, scenario: &str, addrs: Vec<std::net::SocketAddr>) -> LoadSpec {
    LoadSpec {
        addrs,
        path: "/webhooks/whitepay".to_owned(),
        token: relay::TOKEN.to_owned(),
        tag: ctx.tag(short(scenario)),
        connections: ctx.args.concurrency,
        mode: Mode::Closed,
        warmup: ctx.warmup,
        duration: ctx.duration,
        limit: None,
        timeout: ctx.timeout(),
        epoch: ctx.epoch,
    }
}

/// Fills the common fields from a load result.
fn from_load(name: &str, description: &str, spec: &LoadSpec, r: &LoadResult) -> Scenario {
    let window = r.window_secs().max(1e-6);
    let load = match spec.mode {
        Mode::Closed => format!("closed, {} conn", spec.connections),
        Mode::Open { rate } => format!("open {rate:.0}/s, {} conn", spec.connections),
    };
    let full_seconds = r.window_secs().floor() as usize;
    Scenario {
        name: name.to_owned(),
        description: description.to_owned(),
        load,
        window_s: window,
        sent_per_s: Some(r.sent as f64 / window),
        acked_per_s: r.ok as f64 / window,
        min_acked_in_a_second: r.ok_per_second.iter().take(full_seconds).min().copied(),
        acked_each_second: r.ok_per_second.iter().take(full_seconds).copied().collect(),
        ok: r.ok,
        unavailable_503: r.unavailable,
        other_status: r.other_status,
        errors: r.errors,
        timeouts: r.timeouts,
        unsent: r.unsent,
        over_1s: r.over_1s,
        first_error: r.first_error.clone(),
        latency_from: match spec.mode {
            Mode::Closed => "send".to_owned(),
            Mode::Open { .. } => "due".to_owned(),
        },
        ack: Latency::of(&r.ack),
        ack_from_due: matches!(spec.mode, Mode::Open { .. })
            .then(|| Latency::of(&r.ack))
            .flatten(),
        ack_service: Latency::of(&r.ack_service),
        rejected: Latency::of(&r.rejected),
        ..Scenario::default()
    }
}

/// CPU of the processes a scenario reports, over its measured window.
struct CpuWindows {
    /// The relay (all replicas together), or the ceiling's server.
    server: CpuWindow,
    broker: CpuWindow,
    /// PostgreSQL, every process named `postgres` (PostgreSQL scenarios only).
    postgres: Option<CpuWindow>,
    bench: CpuWindow,
    system: SystemWindow,
}

impl CpuWindows {
    fn start(ctx: &Ctx, server: &[u32], with_postgres: bool) -> Self {
        Self {
            server: CpuWindow::start(server),
            broker: CpuWindow::start(&ctx.broker_pids()),
            postgres: with_postgres.then(|| CpuWindow::named(postgres::PROCESS)),
            bench: CpuWindow::start(&[ctx.bench_pid]),
            system: SystemWindow::start(),
        }
    }
}

/// Measures CPU from `after` (the end of the warm-up) until the returned windows are read.
async fn cpu_windows_after(
    ctx: &Ctx,
    after: Duration,
    server: Vec<u32>,
    with_postgres: bool,
) -> CpuWindows {
    tokio::time::sleep(after).await;
    CpuWindows::start(ctx, &server, with_postgres)
}

/// `server_pid`: the process whose `VmHWM` is reported (the largest replica), and
/// whether the server is the broker itself (the broker ceiling).
fn resources(
    cpu: &CpuWindows,
    rss: &procfs::RssSeries,
    server_pid: u32,
    with_broker: bool,
) -> Resources {
    let broker_is_server = procfs::pids_named("beam.smp").contains(&server_pid);
    let (server, broker, db, bench, busy) = (
        cpu.server.percent(),
        cpu.broker.percent(),
        cpu.postgres.as_ref().map(CpuWindow::percent),
        cpu.bench.percent(),
        cpu.system.percent(),
    );
    let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
    let ours = broker + bench + db.unwrap_or(0.0) + if broker_is_server { 0.0 } else { server };
    Resources {
        server_rss_max_mib: Some(rss.max_mib()),
        server_rss_halves_mib: Some(rss.halves_mib()),
        server_rss_end_mib: Some(rss.last_mib()),
        server_rss_each_second_mib: rss.each_second_mib(),
        server_hwm_mib: procfs::sample(server_pid).map(|s| s.hwm_kib as f64 / 1024.0),
        server_cpu_pct: (!broker_is_server).then_some(server),
        broker_cpu_pct: with_broker.then_some(broker),
        postgres_cpu_pct: db,
        bench_cpu_pct: Some(bench),
        machine_busy_pct: Some(busy),
        other_cpu_pct: Some((busy * cores - ours).max(0.0)),
    }
}

/// The bare HTTP server, in its own process.
struct CeilingServer {
    child: Child,
    addr: std::net::SocketAddr,
}

impl CeilingServer {
    fn start() -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .arg("http-ceiling-server")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .context("the HTTP ceiling server did not start")?;
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .context("unexpected output of the HTTP ceiling server")?
            .parse()?;
        Ok(Self { child, addr })
    }
}

impl Drop for CeilingServer {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn http_ceiling_scenario(ctx: &Ctx) -> anyhow::Result<Scenario> {
    let server = CeilingServer::start()?;
    let pid = server.child.id();
    progress(format!(
        "http-ceiling: bare axum server (pid {pid}) on {}, closed loop {} connections",
        server.addr, ctx.args.concurrency
    ));
    let spec = LoadSpec {
        addrs: vec![server.addr],
        path: "/webhooks/whitepay".to_owned(),
        token: relay::TOKEN.to_owned(),
        tag: ctx.tag("http"),
        connections: ctx.args.concurrency,
        mode: Mode::Closed,
        warmup: ctx.warmup,
        duration: ctx.duration,
        limit: None,
        timeout: ctx.timeout(),
        epoch: ctx.epoch,
    };
    let (stop_rss, rss) = procfs::spawn_rss_sampler(pid, Duration::from_millis(250));
    let (result, cpu) = tokio::join!(
        load::run(spec.clone()),
        cpu_windows_after(ctx, ctx.warmup, vec![pid], false)
    );
    let result = result?;
    let _ = stop_rss.send(true);
    let rss = rss.await?;
    let mut s = from_load(
        "http-ceiling",
        "bare axum server answering 200: the HTTP ceiling of this machine",
        &spec,
        &result,
    );
    s.resources = resources(&cpu, &rss, pid, false);
    s.notes.push(format!(
        "bench (load generator) used {:.0} % CPU against the server's {:.0} %",
        s.resources.bench_cpu_pct.unwrap_or(0.0),
        s.resources.server_cpu_pct.unwrap_or(0.0)
    ));
    Ok(s)
}

async fn broker_ceiling_scenario(ctx: &Ctx) -> anyhow::Result<Scenario> {
    let exchange = ctx.exchange("broker");
    let tag = ctx.tag("broker");
    let connection = broker::connect(&ctx.args.broker, "hookrelay-bench topology").await?;
    let queue = broker::declare(&connection, &exchange).await?;
    let consumer = broker::Consumer::start(&ctx.args.broker, &queue, &tag, ctx.epoch).await?;
    progress(format!(
        "broker-ceiling: lapin publisher, {} confirms outstanding, to {exchange}",
        ctx.args.confirm_window
    ));
    let broker_pids = ctx.broker_pids();
    let rss_pid = broker_pids.first().copied().unwrap_or(ctx.bench_pid);
    let (stop_rss, rss) = procfs::spawn_rss_sampler(rss_pid, Duration::from_millis(250));
    let (published, cpu) = tokio::join!(
        broker::publish_ceiling(
            &ctx.args.broker,
            &exchange,
            &tag,
            ctx.epoch,
            ctx.args.confirm_window,
            ctx.warmup,
            ctx.duration,
        ),
        cpu_windows_after(ctx, ctx.warmup, vec![rss_pid], false)
    );
    let published = published?;
    // The "server" of this scenario is the broker itself.
    let resources = resources(&cpu, &rss_stop(stop_rss, rss).await?, rss_pid, true);
    let drained = wait_delivered(&consumer, None, published.acked.len() as u64, 120.0).await;
    let consumed = consumer.finish().await?;
    let window = published.window;
    let secs = (window.1 - window.0).as_secs_f64();
    let (lost, unacked) = consumed.conservation(&published.acked);
    let mut s = Scenario {
        name: "broker-ceiling".to_owned(),
        description: "lapin publisher, sliding window of outstanding confirms, persistent relay-shaped messages".to_owned(),
        load: format!("{} confirms in flight", ctx.args.confirm_window),
        window_s: secs,
        acked_per_s: published.confirmed as f64 / secs,
        ok: published.confirmed,
        other_status: published.refused,
        end_to_end: Latency::of(&consumed.end_to_end(ctx.epoch, window)),
        published_per_s: Some(consumed.rate_in(ctx.epoch, window)),
        lost: Some(lost),
        duplicated: Some(consumed.duplicates),
        delivered_without_ack: Some(unacked),
        drained: Some(drained),
        mean_message_bytes: Some(consumed.mean_bytes()),
        resources,
        ..Scenario::default()
    };
    s.notes.push(format!(
        "publish → confirm p50 {:.2} ms, p99 {:.2} ms; server RSS column is the broker's (beam.smp)",
        published.confirm_latency.value_at_quantile(0.5) as f64 / 1000.0,
        published.confirm_latency.value_at_quantile(0.99) as f64 / 1000.0,
    ));
    if let Some(e) = consumed.error {
        s.notes.push(format!("consumer error: {e}"));
    }
    Ok(s)
}

async fn rss_stop(
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<procfs::RssSeries>,
) -> anyhow::Result<procfs::RssSeries> {
    let _ = stop.send(true);
    Ok(task.await?)
}

/// Waits until the consumer has `expected` distinct messages and (with a relay)
/// the outbox has nothing pending, then a short quiet period for stragglers.
/// Bounded by `bound_s` seconds; returns whether it got there.
async fn wait_delivered(
    consumer: &broker::Consumer,
    relay: Option<&Relay>,
    expected: u64,
    bound_s: f64,
) -> bool {
    let deadline = Instant::now() + Duration::from_secs_f64(bound_s);
    loop {
        if consumer.unique() >= expected {
            let pending = match relay {
                Some(relay) => relay.metrics().await.map_or(1.0, |m| m.pending),
                None => 0.0,
            };
            if pending == 0.0 {
                // Let anything still on its way arrive (duplicates would, too).
                let mut last = consumer.unique();
                for _ in 0..10 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let now = consumer.unique();
                    if now == last {
                        break;
                    }
                    last = now;
                }
                return true;
            }
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Scrapes the relay's metrics every second; returns the largest pending count.
fn spawn_pending_poller(
    admin: std::net::SocketAddr,
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<f64>,
) {
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        let mut max: f64 = 0.0;
        // At most an hour of polls.
        for _ in 0..3600 {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stopped.wait_for(|s| *s) => break,
            }
            if let Ok(text) = hookrelay_testkit::http::get(admin, "/metrics").await {
                let pending: f64 = text
                    .lines()
                    .filter(|l| l.starts_with("hookrelay_outbox_events{state=\"pending\"}"))
                    .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
                    .sum();
                max = max.max(pending);
            }
        }
        max
    });
    (stop, task)
}

/// Relays on a fresh outbox and exchange, with the bench's consumer bound.
struct RelayRun {
    relays: Vec<Relay>,
    consumer: broker::Consumer,
    home: OutboxHome,
    /// Several replicas: how the partitions were shared when the load started.
    partitions: Option<String>,
}

/// Stops the relays (SIGTERM to all, then waits for each) and removes the outbox.
async fn stop_all(mut relays: Vec<Relay>, home: OutboxHome) {
    for relay in &mut relays {
        let _ = relay.terminate();
    }
    for relay in relays {
        relay.stop();
    }
    home.remove().await;
}

async fn start_relay_run(
    ctx: &Ctx,
    scenario: &str,
    broker_addr: &str,
    backend: Backend,
    replicas: usize,
) -> anyhow::Result<RelayRun> {
    let exchange = ctx.exchange(scenario);
    let connection = broker::connect(&ctx.args.broker, "hookrelay-bench topology").await?;
    let queue = broker::declare(&connection, &exchange).await?;
    let _ = connection.close(200, "declared".into()).await;
    let consumer = broker::Consumer::start(
        &ctx.args.broker,
        &queue,
        &ctx.tag(short(scenario)),
        ctx.epoch,
    )
    .await?;
    let home = match backend {
        Backend::Sqlite => OutboxHome::sqlite(&ctx.outbox_parent)?,
        Backend::Postgres => OutboxHome::postgres(ctx.postgres()?, &ctx.database(scenario)).await?,
    };
    let mut relays = Vec::with_capacity(replicas);
    for _ in 0..replicas.max(1) {
        relays.push(Relay::start(&RelaySpec {
            binary: &ctx.relay_bin,
            exchange: &exchange,
            broker: broker_addr.to_owned(),
            outbox: home.outbox(),
            extra_sources: &[],
            wrapper: &[],
        })?);
    }
    // Wait (bounded) until they are connected, so the run does not measure a cold start.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if metrics_each(&relays)
            .await
            .is_ok_and(|all| all.iter().all(|m| m.broker_connected >= 1.0))
        {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the relays did not connect to the broker within 30 s:\n{}",
                relays
                    .iter()
                    .map(|r| r.log_tail(20))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for relay in &relays {
        progress(format!(
            "{scenario}: relay pid {} ingress {} admin {}, outbox {}",
            relay.pid,
            relay.ingress,
            relay.admin,
            redact(&relay.outbox)
        ));
    }
    let partitions = if relays.len() > 1 {
        Some(wait_partitions_shared(scenario, &relays).await)
    } else {
        None
    };
    Ok(RelayRun {
        relays,
        consumer,
        home,
        partitions,
    })
}

/// The outbox URL without a password, for progress lines.
fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let user = &url[scheme + 3..at];
            match user.split_once(':') {
                Some((name, _)) => format!("{}{name}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Waits (at most 45 s) until the replicas have shared PostgreSQL's 256 partitions
/// evenly (each within 2 of its floor share), so the load does not start while they
/// are still being handed over; returns how they were shared and when.
async fn wait_partitions_shared(scenario: &str, relays: &[Relay]) -> String {
    const PARTITIONS: f64 = 256.0;
    let floor = (PARTITIONS / relays.len() as f64).floor();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(45);
    let mut owned = Vec::new();
    loop {
        if let Ok(all) = metrics_each(relays).await {
            owned = all.iter().map(|m| m.partitions_owned).collect();
            let sum: f64 = owned.iter().sum();
            if sum == PARTITIONS && owned.iter().all(|o| *o >= floor - 2.0) {
                break;
            }
        }
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let list = owned
        .iter()
        .map(|o| format!("{o:.0}"))
        .collect::<Vec<_>>()
        .join(" / ");
    let text = if owned.iter().sum::<f64>() == PARTITIONS && owned.iter().all(|o| *o >= floor - 2.0)
    {
        format!(
            "partitions owned when the load started: {list} (shared {:.1} s after the last relay started)",
            started.elapsed().as_secs_f64()
        )
    } else {
        format!("partitions NOT evenly shared after 45 s, the load started anyway: {list}")
    };
    progress(format!("{scenario}: {text}"));
    text
}

/// Every relay's metrics, in order.
async fn metrics_each(relays: &[Relay]) -> anyhow::Result<Vec<relay::Metrics>> {
    let mut out = Vec::with_capacity(relays.len());
    for relay in relays {
        out.push(relay.metrics().await?);
    }
    Ok(out)
}

/// The open loop of `overload` and `pg-overload`: `--overload-factor` × `max_rate`
/// over `--overload-connections`.
fn overload_spec(
    ctx: &Ctx,
    scenario: &str,
    max_rate: f64,
    addrs: Vec<std::net::SocketAddr>,
) -> LoadSpec {
    LoadSpec {
        addrs,
        path: "/webhooks/whitepay".to_owned(),
        token: relay::TOKEN.to_owned(),
        tag: ctx.tag(short(scenario)),
        connections: ctx.args.overload_connections,
        mode: Mode::Open {
            rate: max_rate * ctx.args.overload_factor,
        },
        warmup: ctx.warmup,
        duration: ctx.duration,
        limit: None,
        timeout: ctx.timeout(),
        epoch: ctx.epoch,
    }
}

/// The tag suffix of a scenario (order ids stay short).
fn short(scenario: &str) -> &str {
    match scenario {
        "steady" => "steady",
        "half-rate" => "half",
        "overload" => "over",
        "backlog" => "backlog",
        "pg-steady" => "pgsteady",
        "pg-overload" => "pgover",
        "pg-backlog" => "pgbacklog",
        "pg-steady-3" => "pgsteady3",
        other => other,
    }
}

/// PostgreSQL's counters over a window, from two readings `secs` apart.
fn postgres_window(
    before: Option<postgres::Stats>,
    after: Option<postgres::Stats>,
    secs: f64,
) -> Option<PostgresWindow> {
    let (b, a) = (before?, after?);
    let secs = secs.max(1e-3);
    Some(PostgresWindow {
        write_transactions_per_s: (a.next_xid - b.next_xid) as f64 / secs,
        wal_mib_per_s: (a.wal_bytes - b.wal_bytes) / (1024.0 * 1024.0) / secs,
        other_transactions: a.other_transactions - b.other_transactions,
    })
}

/// The notes of a PostgreSQL scenario's counters, per second of the window and per
/// `per_second` events (acked webhooks, or published messages for a drain).
fn postgres_notes(s: &mut Scenario, during: &str, per_second: f64, per_what: &str) {
    let Some(pg) = s.postgres else { return };
    let per = |v: f64| {
        if per_second > 0.0 {
            format!("{:.2}", v / per_second)
        } else {
            "–".to_owned()
        }
    };
    s.notes.push(format!(
        "PostgreSQL {during}: {:.0} write transactions/s ({} per {per_what}; each a synchronous commit), WAL {:.1} MiB/s ({} KiB per {per_what}), CPU {} ms per 1000 {per_what}s",
        pg.write_transactions_per_s,
        per(pg.write_transactions_per_s),
        pg.wal_mib_per_s,
        per(pg.wal_mib_per_s * 1024.0),
        s.resources
            .postgres_cpu_pct
            .map_or("–".to_owned(), |cpu| per(cpu * 10.0 * 1000.0)),
    ));
    if pg.other_transactions > 50 {
        s.notes.push(format!(
            "other databases of the PostgreSQL server ran at least {} transactions {during}: that work is in the PostgreSQL CPU column too",
            pg.other_transactions
        ));
    }
}

async fn relay_scenario(
    ctx: &Ctx,
    name: &str,
    description: &str,
    backend: Backend,
    replicas: usize,
    spec: &dyn Fn(Vec<std::net::SocketAddr>) -> LoadSpec,
) -> anyhow::Result<Scenario> {
    let RelayRun {
        mut relays,
        consumer,
        home,
        partitions,
    } = start_relay_run(ctx, name, &ctx.args.broker, backend, replicas).await?;
    let spec = spec(relays.iter().map(|r| r.ingress).collect());
    progress(format!(
        "{name}: {:?}, {} connections over {} relay(s), {:.0} s + {:.0} s warm-up",
        spec.mode,
        spec.connections,
        relays.len(),
        spec.duration.as_secs_f64(),
        spec.warmup.as_secs_f64()
    ));
    let pids: Vec<u32> = relays.iter().map(|r| r.pid).collect();
    let before_each = metrics_each(&relays).await?;
    let before = relay::Metrics::merged(&before_each);
    let before_at = Instant::now();
    let samplers: Vec<_> = pids
        .iter()
        .map(|pid| procfs::spawn_rss_sampler(*pid, Duration::from_millis(250)))
        .collect();
    let (stop_pending, pending) = spawn_pending_poller(relays[0].admin);
    let with_postgres = backend == Backend::Postgres;
    let (result, cpu, threads_before, pg_before) = tokio::join!(
        load::run(spec.clone()),
        cpu_windows_after(ctx, ctx.warmup, pids.clone(), with_postgres),
        async {
            tokio::time::sleep(ctx.warmup).await;
            (procfs::thread_ticks_of(&pids), Instant::now())
        },
        async {
            tokio::time::sleep(ctx.warmup).await;
            (home.postgres_stats().await, Instant::now())
        }
    );
    let result = result?;
    let pg_after = home.postgres_stats().await;
    let pg_secs = pg_before.1.elapsed().as_secs_f64();
    let threads = procfs::thread_percent(
        &threads_before.0,
        &procfs::thread_ticks_of(&pids),
        threads_before.1.elapsed().as_secs_f64(),
    );
    let threads_at_end: usize = pids
        .iter()
        .map(|pid| std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, Iterator::count))
        .sum();
    let rss_parts: Vec<_> = pids.iter().map(|pid| procfs::rss_parts(*pid)).collect();
    let after_each = metrics_each(&relays).await;
    let after_load = after_each.as_ref().map(|all| relay::Metrics::merged(all));
    let between = before_at.elapsed().as_secs_f64();
    // RSS per replica; the table shows the largest one's.
    let mut series = Vec::with_capacity(samplers.len());
    for (stop, task) in samplers {
        series.push(rss_stop(stop, task).await?);
    }
    let largest = (0..series.len())
        .max_by(|a, b| series[*a].max_mib().total_cmp(&series[*b].max_mib()))
        .unwrap_or(0);
    let resources = resources(&cpu, &series[largest], pids[largest], true);
    let outbox_mib = home.size_mib().await;
    let _ = stop_pending.send(true);
    let max_pending = pending.await?;
    let survived = relays.iter_mut().all(|relay| relay.alive());
    let bound = 60.0 + result.acked.len() as f64 / 1000.0;
    let drained = survived
        && wait_delivered(
            &consumer,
            Some(&relays[0]),
            result.acked.len() as u64,
            bound,
        )
        .await;
    let consumed = consumer.finish().await?;
    let (lost, unacked) = consumed.conservation(&result.acked);
    let mut s = from_load(name, description, &spec, &result);
    s.outbox = Some(backend.name().to_owned());
    s.relays = Some(relays.len());
    if relays.len() > 1 {
        s.load = format!("{} over {} relays", s.load, relays.len());
    }
    if let Some(text) = &partitions {
        s.notes.push(text.clone());
    }
    if let (Some(lag), Some(stall)) = (
        Latency::of(&result.send_lag),
        Latency::of(&result.runtime_stall),
    ) {
        s.notes.push(format!(
            "generator: sent after the due time p50 {:.2} / p99 {:.2} / max {:.1} ms; bench runtime 1 ms timer late by p99 {:.2} / max {:.1} ms",
            lag.p50_ms, lag.p99_ms, lag.max_ms, stall.p99_ms, stall.max_ms
        ));
    }
    if name == "overload" || name == "pg-overload" {
        // The generator cannot keep a 10× schedule on this machine, so the due time
        // would measure the generator's lag: report the relay's answer times.
        s.latency_from = "send".to_owned();
        s.ack = Latency::of(&result.ack_service);
        s.rejected = Latency::of(&result.rejected_service);
        s.over_1s = result.over_1s_service;
        s.notes.push(format!(
            "latencies from the send time (from the due time: ack p99 {}, the generator's lag); 503 answered in p50 {} / p99 {} ms",
            s.ack_from_due.map_or("–".to_owned(), |a| format!("{:.0} ms", a.p99_ms)),
            s.rejected.map_or("–".to_owned(), |a| format!("{:.2}", a.p50_ms)),
            s.rejected.map_or("–".to_owned(), |a| format!("{:.2}", a.p99_ms)),
        ));
    }
    s.end_to_end = Latency::of(&consumed.end_to_end(ctx.epoch, result.window));
    s.published_per_s = Some(consumed.rate_in(ctx.epoch, result.window));
    s.lost = Some(lost);
    s.duplicated = Some(consumed.duplicates);
    s.delivered_without_ack = Some(unacked);
    s.drained = Some(drained);
    s.mean_message_bytes = Some(consumed.mean_bytes());
    s.avg_commit_batch = after_load
        .as_ref()
        .ok()
        .map(|m| m.batch_size_since(&before));
    s.commits_per_s = after_load
        .as_ref()
        .ok()
        .map(|m| (m.batch_count - before.batch_count) / between);
    s.max_pending = Some(max_pending);
    s.resources = resources;
    s.relay_survived = Some(survived);
    s.relay_threads = threads;
    s.postgres = postgres_window(pg_before.0, pg_after, pg_secs);
    let who = if relays.len() > 1 {
        format!("the {} relays together", relays.len())
    } else {
        "relay".to_owned()
    };
    s.notes.push(format!(
        "{who} threads, CPU %: {} ({threads_at_end} threads at the end of the load)",
        thread_list(&s.relay_threads),
    ));
    if relays.len() > 1
        && let Ok(after) = &after_each
    {
        s.notes.push(format!(
            "per relay, since the load started (acked by its ingress / published by it / partitions owned at the end / RSS max MiB): {}",
            after
                .iter()
                .zip(&before_each)
                .zip(&series)
                .map(|((a, b), rss)| format!(
                    "{:.0} / {:.0} / {:.0} / {:.1}",
                    a.ingest_count - b.ingest_count,
                    a.published - b.published,
                    a.partitions_owned,
                    rss.max_mib()
                ))
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    for (i, parts) in rss_parts.iter().enumerate() {
        if let Some((anon, file, shmem)) = parts {
            let which = if pids.len() > 1 {
                format!("relay {} RSS", i + 1)
            } else {
                "relay RSS".to_owned()
            };
            s.notes.push(format!(
                "{which} at the end of the load: {anon:.1} MiB anonymous, {file:.1} MiB file, {shmem:.1} MiB shared"
            ));
        }
    }
    s.notes.push(format!(
        "outbox ({}) {outbox_mib:.0} MiB after the load",
        match backend {
            Backend::Sqlite => "files",
            Backend::Postgres => "pg_database_size",
        }
    ));
    s.outbox_mib = Some(outbox_mib);
    let acked_per_s = s.acked_per_s;
    postgres_notes(&mut s, "in the window", acked_per_s, "acked webhook");
    if let Ok(after) = &after_load {
        // Who owns the tail: the relay's own request timer against the client's.
        let n = after.ingest_count - before.ingest_count;
        let over_10 = n - (after.ingest_le_10ms - before.ingest_le_10ms);
        let over_50 = n - (after.ingest_le_50ms - before.ingest_le_50ms);
        let client_over = |ms: u64| {
            result.ack.len() - result.ack.count_between(0, ms * 1000) + result.rejected.len()
                - result.rejected.count_between(0, ms * 1000)
        };
        s.notes.push(format!(
            "over 10 ms / over 50 ms: relay's own timer (hookrelay_ingest_duration_seconds, warm-up included) {over_10:.0} / {over_50:.0} of {n:.0}; client {} / {} of {}",
            client_over(10),
            client_over(50),
            result.ack.len() + result.rejected.len()
        ));
    }
    let (warnings, errors) = warnings_errors(&relays);
    s.relay_warnings = Some(warnings);
    s.relay_errors = Some(errors);
    for relay in &mut relays {
        if !relay.alive() {
            s.notes.push(format!(
                "the relay (pid {}) DIED:\n{}",
                relay.pid,
                relay.log_tail(20)
            ));
        }
    }
    if !drained {
        s.notes.push(format!(
            "not every acked message arrived within {bound:.0} s ({} of {})",
            consumed.first.len(),
            result.acked.len()
        ));
    }
    if result.unsent > 0 {
        s.notes.push(format!(
            "the generator fell behind: {} due requests never sent (sent {:.0}/s)",
            result.unsent,
            s.sent_per_s.unwrap_or(0.0)
        ));
    }
    if let Some(e) = &result.first_error {
        s.notes.push(format!("first failure: {e}"));
    }
    if warnings + errors > 0 {
        s.notes.push(format!(
            "relay logged {warnings} warnings, {errors} errors: {}",
            problems(&relays)
        ));
    }
    if let Some(e) = consumed.error {
        s.notes.push(format!("consumer error: {e}"));
    }
    stop_all(relays, home).await;
    Ok(s)
}

async fn backlog_scenario(ctx: &Ctx, name: &str, backend: Backend) -> anyhow::Result<Scenario> {
    let proxy = hookrelay_testkit::TcpProxy::start(&ctx.args.broker).await?;
    let RelayRun {
        mut relays,
        consumer,
        home,
        partitions: _,
    } = start_relay_run(ctx, name, &proxy.addr.to_string(), backend, 1).await?;
    let relay = relays.first().context("no relay")?;
    proxy.cut();
    let deadline = Instant::now() + Duration::from_secs(15);
    while relay
        .metrics()
        .await
        .map_or(true, |m| m.broker_connected > 0.0)
    {
        if Instant::now() > deadline {
            bail!("the relay still reports a broker connection 15 s after the cut");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    progress(format!(
        "{name}: broker cut; sending {} webhooks at {} connections",
        ctx.backlog, ctx.args.concurrency
    ));
    // Bounded: at least 120 s, or 2 ms per event.
    let build_bound = Duration::from_secs_f64((ctx.backlog as f64 / 500.0).max(120.0));
    let spec = LoadSpec {
        addrs: vec![relay.ingress],
        path: "/webhooks/whitepay".to_owned(),
        token: relay::TOKEN.to_owned(),
        tag: ctx.tag(short(name)),
        connections: ctx.args.concurrency,
        mode: Mode::Closed,
        warmup: Duration::ZERO,
        duration: build_bound,
        limit: Some(ctx.backlog),
        timeout: ctx.timeout(),
        epoch: ctx.epoch,
    };
    let (stop_rss, rss) = procfs::spawn_rss_sampler(relay.pid, Duration::from_millis(250));
    let build = load::run(spec.clone()).await?;
    let built = relay.metrics().await?;
    progress(format!(
        "{name}: {} acked in {:.1} s, {} pending; giving the broker back",
        build.acked.len(),
        build.window_secs(),
        built.pending
    ));
    let with_postgres = backend == Backend::Postgres;
    let cpu = CpuWindows::start(ctx, &[relay.pid], with_postgres);
    let pg_before = home.postgres_stats().await;
    let threads_before = procfs::thread_ticks(relay.pid);
    let restored = Instant::now();
    proxy.restore();
    let bound = 120.0 + build.acked.len() as f64 / 500.0;
    let drained = wait_delivered(&consumer, Some(relay), build.acked.len() as u64, bound).await;
    let resources = resources(&cpu, &rss_stop(stop_rss, rss).await?, relay.pid, true);
    let pg_after = home.postgres_stats().await;
    let pg_secs = restored.elapsed().as_secs_f64();
    let threads = procfs::thread_percent(
        &threads_before,
        &procfs::thread_ticks(relay.pid),
        restored.elapsed().as_secs_f64(),
    );
    let after = relay.metrics().await;
    let outbox_mib = home.size_mib().await;
    let survived = relays.iter_mut().all(|relay| relay.alive());
    let consumed = consumer.finish().await?;
    let (lost, unacked) = consumed.conservation(&build.acked);
    let first = consumed.first.iter().map(|s| s.consumed_us).min();
    let last = consumed.first.iter().map(|s| s.consumed_us).max();
    let restored_us = broker::us(ctx.epoch, restored);
    let n = consumed.first.len() as f64;
    let mut s = from_load(
        name,
        "webhooks acked while the broker is cut, then drained when it is back",
        &spec,
        &build,
    );
    s.outbox = Some(backend.name().to_owned());
    s.relays = Some(1);
    s.load = format!("closed, {} conn, broker cut", spec.connections);
    s.backlog = Some(built.pending as u64);
    if let (Some(first), Some(last)) = (first, last) {
        s.reconnect_s = Some(first.saturating_sub(restored_us) as f64 / 1e6);
        s.drain_per_s = Some((n - 1.0).max(0.0) / ((last - first) as f64 / 1e6).max(1e-6));
        s.drain_from_restore_per_s =
            Some(n / ((last.saturating_sub(restored_us)) as f64 / 1e6).max(1e-6));
    }
    s.lost = Some(lost);
    s.duplicated = Some(consumed.duplicates);
    s.delivered_without_ack = Some(unacked);
    s.drained = Some(drained);
    s.mean_message_bytes = Some(consumed.mean_bytes());
    s.avg_commit_batch = after
        .as_ref()
        .ok()
        .map(|m| m.batch_size_since(&relay::Metrics::default()));
    s.max_pending = Some(built.pending);
    s.resources = resources;
    s.relay_survived = Some(survived);
    s.outbox_mib = Some(outbox_mib);
    let (warnings, errors) = warnings_errors(&relays);
    s.relay_warnings = Some(warnings);
    s.relay_errors = Some(errors);
    s.notes.push(format!(
        "acks while cut: p99 {} ms; CPU columns cover the drain (broker back → last message), RSS build and drain",
        s.ack.map_or("–".to_owned(), |a| format!("{:.2}", a.p99_ms))
    ));
    s.relay_threads = threads;
    s.notes.push(format!(
        "relay threads during the drain, CPU %: {}",
        thread_list(&s.relay_threads)
    ));
    // The drain's counters: per published message rather than per acked webhook.
    s.postgres = postgres_window(pg_before, pg_after, pg_secs);
    let drain_per_s = s.drain_from_restore_per_s.unwrap_or(0.0);
    postgres_notes(&mut s, "during the drain", drain_per_s, "published message");
    if backend == Backend::Postgres {
        s.notes.push(format!(
            "outbox {outbox_mib:.0} MiB (pg_database_size) after the drain"
        ));
    }
    if warnings + errors > 0 {
        s.notes.push(format!(
            "relay logged {warnings} warnings, {errors} errors (the cut is meant to cause warnings): {}",
            problems(&relays)
        ));
    }
    if !drained {
        s.notes.push(format!(
            "not every acked message arrived within {bound:.0} s ({} of {})",
            consumed.first.len(),
            build.acked.len()
        ));
    }
    if let Some(e) = &build.first_error {
        s.notes.push(format!("first failure: {e}"));
    }
    if let Some(e) = consumed.error {
        s.notes.push(format!("consumer error: {e}"));
    }
    stop_all(relays, home).await;
    drop(proxy);
    Ok(s)
}

fn thread_list(threads: &[(String, f64)]) -> String {
    threads
        .iter()
        .map(|(name, pct)| format!("{name} {pct:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The relay's first distinct WARN/ERROR messages with their counts.
/// (Several relays: the same message counted once, over all of them.)
fn problems(relays: &[Relay]) -> String {
    let mut merged: Vec<(String, u64)> = Vec::new();
    for (text, n) in relays.iter().flat_map(|relay| relay.problems()) {
        match merged.iter_mut().find(|(t, _)| *t == text) {
            Some(seen) => seen.1 += n,
            None => merged.push((text, n)),
        }
    }
    merged
        .into_iter()
        .map(|(text, n)| format!("{n} × {text}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// WARN and ERROR lines logged by the relays, summed.
fn warnings_errors(relays: &[Relay]) -> (u64, u64) {
    relays
        .iter()
        .map(|relay| relay.warnings_errors())
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
}

/// PostgreSQL against the SQLite reference of the same run, and three replicas
/// against one: reported, no target (on 2 cores the replicas share the CPU with
/// PostgreSQL, RabbitMQ and the bench, so three cannot beat one by much).
fn postgres_checks(all: &[Scenario]) -> Vec<Check> {
    let find = |name: &str| all.iter().find(|s| s.name == name);
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => pct(a / b),
        _ => "–".to_owned(),
    };
    let mut out = Vec::new();
    let mut compare = |what: &str, a: Option<&Scenario>, b: Option<&Scenario>| {
        if a.is_none() || b.is_none() {
            return;
        }
        out.push(Check {
            what: what.to_owned(),
            value: format!(
                "acked/s {}, published/s {}",
                ratio(a.map(|s| s.acked_per_s), b.map(|s| s.acked_per_s)),
                ratio(
                    a.and_then(|s| s.published_per_s),
                    b.and_then(|s| s.published_per_s)
                ),
            ),
            target: "reported".to_owned(),
            met: None,
        });
    };
    compare(
        "PostgreSQL / SQLite outbox, one relay (pg-steady / steady)",
        find("pg-steady"),
        find("steady"),
    );
    compare(
        "3 relays / 1 relay on PostgreSQL (pg-steady-3 / pg-steady)",
        find("pg-steady-3"),
        find("pg-steady"),
    );
    compare(
        "PostgreSQL / SQLite outbox under overload (pg-overload / overload)",
        find("pg-overload"),
        find("overload"),
    );
    if let (Some(pg), Some(lite)) = (find("pg-backlog"), find("backlog")) {
        out.push(Check {
            what: "PostgreSQL / SQLite backlog drain (pg-backlog / backlog, first → last)"
                .to_owned(),
            value: ratio(pg.drain_per_s, lite.drain_per_s),
            target: "reported".to_owned(),
            met: None,
        });
    }
    out
}

fn pct(v: f64) -> String {
    format!("{:.0} %", v * 100.0)
}

#[allow(clippy::too_many_arguments)]
fn checks(
    ctx: &Ctx,
    http_ceiling: Option<f64>,
    broker_ceiling: Option<f64>,
    steady: Option<&Scenario>,
    half: Option<&Scenario>,
    overload: Option<&Scenario>,
    backlog: Option<&Scenario>,
    all: &[Scenario],
) -> Vec<Check> {
    let mut out = Vec::new();
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let r = ratio(steady.map(|s| s.acked_per_s), http_ceiling);
    out.push(Check {
        what: format!(
            "relay / http ceiling (acked/s at {} conn)",
            ctx.args.concurrency
        ),
        value: r.map_or("–".to_owned(), pct),
        target: "≥ 50 %".to_owned(),
        met: r.map(|r| r >= 0.5),
    });
    let r = ratio(steady.and_then(|s| s.published_per_s), broker_ceiling);
    out.push(Check {
        what: "relay end-to-end / broker ceiling (steady: consumed/s)".to_owned(),
        value: r.map_or("–".to_owned(), pct),
        target: "≥ 80 %".to_owned(),
        met: r.map(|r| r >= 0.8),
    });
    let r = ratio(backlog.and_then(|s| s.drain_per_s), broker_ceiling);
    out.push(Check {
        what: "backlog drain / broker ceiling".to_owned(),
        value: r.map_or("–".to_owned(), pct),
        target: "≥ 80 %".to_owned(),
        met: r.map(|r| r >= 0.8),
    });
    let p99 = half.and_then(|s| s.ack).map(|a| a.p99_ms);
    out.push(Check {
        what: format!(
            "p99 ack latency at half the max rate, {} conn",
            ctx.args.concurrency
        ),
        value: p99.map_or("–".to_owned(), |v| format!("{v:.2} ms")),
        target: "≤ 10 ms".to_owned(),
        met: p99.map(|v| v <= 10.0),
    });
    let slow: Vec<&Scenario> = [steady, half].into_iter().flatten().collect();
    let over: u64 = slow.iter().map(|s| s.over_1s).sum();
    let max = slow
        .iter()
        .filter_map(|s| s.ack.map(|a| a.max_ms))
        .fold(0.0_f64, f64::max);
    out.push(Check {
        what: "requests over 1 s without a fault (steady, half-rate)".to_owned(),
        value: format!("{over} (max ack {max:.1} ms)"),
        target: "0".to_owned(),
        met: (!slow.is_empty()).then_some(over == 0),
    });
    let rss = steady.and_then(|s| s.resources.server_rss_max_mib);
    out.push(Check {
        what: "relay RSS at steady load".to_owned(),
        value: rss.map_or("–".to_owned(), |v| format!("{v:.1} MiB")),
        target: "≤ 64 MiB".to_owned(),
        met: rss.map(|v| v <= 64.0),
    });
    let halves = overload.and_then(|s| s.resources.server_rss_halves_mib);
    out.push(Check {
        what: "relay RSS under overload: max of 1st half → 2nd half".to_owned(),
        value: halves.map_or("–".to_owned(), |(a, b)| format!("{a:.1} → {b:.1} MiB")),
        target: "flat (2nd half ≤ 1st half + 10 %)".to_owned(),
        met: halves.map(|(a, b)| b <= a * 1.1),
    });
    if let Some(o) = overload {
        out.push(Check {
            what: "overload answered with 503 from bounded queues, relay alive".to_owned(),
            value: format!(
                "{} × 503, {} × 200, alive: {}",
                o.unavailable_503,
                o.ok,
                o.relay_survived.unwrap_or(false)
            ),
            target: "503s > 0, alive".to_owned(),
            met: Some(o.unavailable_503 > 0 && o.relay_survived == Some(true)),
        });
    }
    out.extend(postgres_checks(all));
    out.extend(console_checks(all));
    let lost: u64 = all.iter().filter_map(|s| s.lost).sum();
    let dup: u64 = all.iter().filter_map(|s| s.duplicated).sum();
    let undrained = all.iter().filter(|s| s.drained == Some(false)).count();
    out.push(Check {
        what: "lost (acked, never consumed), all scenarios".to_owned(),
        value: format!("{lost} lost, {dup} duplicated, {undrained} scenario(s) not drained"),
        target: "0 lost".to_owned(),
        met: Some(lost == 0 && undrained == 0),
    });
    out
}

/// The console targets of the issue, per console scenario: list pages, a text
/// search, a subject timeline, and ingest while searching.
fn console_checks(all: &[Scenario]) -> Vec<Check> {
    let mut out = Vec::new();
    for s in all {
        let Some(c) = &s.console else { continue };
        let worst = |group: &str| {
            c.queries
                .iter()
                .filter(|q| q.group == group)
                .filter_map(|q| q.latency.map(|l| (l.p99_ms, q.what.clone(), q.target_ms)))
                .max_by(|a, b| a.0.total_cmp(&b.0))
        };
        for (group, what) in [
            ("list", "filtered list page, worst p99"),
            (
                "search",
                "text search, first page (answers at its budget), worst p99",
            ),
            ("timeline", "subject timeline, worst p99"),
        ] {
            if let Some((p99, query, target)) = worst(group) {
                out.push(Check {
                    what: format!("{}: {what}", s.name),
                    value: format!("{p99:.1} ms ({query})"),
                    target: format!("≤ {target:.0} ms"),
                    met: Some(p99 <= target),
                });
            }
        }
        if let Some(walk) = c
            .walks
            .iter()
            .find(|w| w.found_at_request.iter().all(Option::is_none))
        {
            let worst = walk.total_ms.iter().copied().fold(0.0_f64, f64::max);
            out.push(Check {
                what: format!(
                    "{}: text search over the whole outbox ({} rows), following the cursor, slowest of {}",
                    s.name, c.rows, walk.walks
                ),
                value: format!(
                    "{:.2} s in {} requests",
                    worst / 1000.0,
                    walk.requests.iter().max().copied().unwrap_or(0)
                ),
                target: "≤ 1 s".to_owned(),
                met: Some(worst <= 1000.0),
            });
        }
        if let (Some(alone), Some(with)) = (c.ack_alone, c.ack_with_search) {
            let rate = c.acked_per_s_with_search / c.acked_per_s_alone.max(1e-9);
            out.push(Check {
                what: format!("{}: ingest while a search runs (ack p99, acked/s)", s.name),
                value: format!(
                    "p99 {:.2} → {:.2} ms, acked/s {:.0} → {:.0} ({})",
                    alone.p99_ms,
                    with.p99_ms,
                    c.acked_per_s_alone,
                    c.acked_per_s_with_search,
                    pct(rate)
                ),
                target: "not measurably slower: p99 ≤ alone × 1.2 + 1 ms, acked/s ≥ 90 %"
                    .to_owned(),
                met: Some(with.p99_ms <= alone.p99_ms * 1.2 + 1.0 && rate >= 0.9),
            });
        }
    }
    out
}
