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
//!
//! See bench/README.md for how to run it and read the table.

mod broker;
mod disk;
mod http;
mod load;
mod procfs;
mod relay;
mod report;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};

use crate::load::{LoadResult, LoadSpec, Mode};
use crate::procfs::{CpuWindow, SystemWindow};
use crate::relay::{Relay, RelaySpec};
use crate::report::{Check, Latency, Report, Resources, Scenario};

#[derive(Parser, Debug)]
#[command(
    name = "hookrelay-bench",
    about = "Benchmarks hookrelay (the release binary) against an HTTP and a broker ceiling measured in the same run",
    after_help = "Build the relay first: cargo build --release --bin hookrelay. RabbitMQ must listen on --broker (loopback only)."
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
    /// Scenarios to run, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "fsync-probe,http-ceiling,broker-ceiling,steady,half-rate,overload,backlog"
    )]
    scenarios: Vec<Name>,
    /// Outstanding confirms of the broker ceiling's publisher (the relay's window is 256).
    #[arg(long, default_value_t = 256)]
    confirm_window: usize,
    /// Per-request bound, seconds.
    #[arg(long, default_value_t = 10.0)]
    request_timeout: f64,
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
}

impl Ctx {
    fn broker_pids(&self) -> Vec<u32> {
        procfs::pids_named("beam.smp")
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
    let outcome = runtime.block_on(async {
        let outcome = tokio::select! {
            r = run(args) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        };
        // Whatever happened, leave nothing behind in RabbitMQ.
        broker::cleanup_all(&broker).await;
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
    let relay_bin = args
        .relay_bin
        .clone()
        .unwrap_or_else(|| root.join("target/release/hookrelay"));
    let needs_relay = args.scenarios.iter().any(|s| {
        !matches!(
            s,
            Name::FsyncProbe | Name::HttpCeiling | Name::BrokerCeiling
        )
    });
    if needs_relay {
        relay::check_binary(&relay_bin, &root, args.allow_stale_relay)?;
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
        let spec = |addr| LoadSpec {
            addr,
            path: "/webhooks/whitepay".to_owned(),
            token: relay::TOKEN.to_owned(),
            tag: ctx.tag("steady"),
            connections: ctx.args.concurrency,
            mode: Mode::Closed,
            warmup: ctx.warmup,
            duration: ctx.duration,
            limit: None,
            timeout: ctx.timeout(),
            epoch: ctx.epoch,
        };
        let s = relay_scenario(&ctx, "steady", "closed loop: sustained fsync'd acks", &spec).await;
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
        let spec = |addr| LoadSpec {
            addr,
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
        let rate = max_rate * ctx.args.overload_factor;
        let spec = |addr| LoadSpec {
            addr,
            path: "/webhooks/whitepay".to_owned(),
            token: relay::TOKEN.to_owned(),
            tag: ctx.tag("over"),
            connections: ctx.args.overload_connections,
            mode: Mode::Open { rate },
            warmup: ctx.warmup,
            duration: ctx.duration,
            limit: None,
            timeout: ctx.timeout(),
            epoch: ctx.epoch,
        };
        let s = relay_scenario(
            &ctx,
            "overload",
            "open loop at overload-factor × the steady acked rate: expect 503s, bounded RSS",
            &spec,
        )
        .await;
        let s = finish_scenario(&ctx, "overload", s).await?;
        overload = Some(s.clone());
        scenarios.push(s);
    }
    if want(Name::Backlog) {
        let s = backlog_scenario(&ctx).await;
        let s = finish_scenario(&ctx, "backlog", s).await?;
        backlog = Some(s.clone());
        scenarios.push(s);
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
    let all_met = checks.iter().all(|c| c.met != Some(false));
    let report = Report {
        command,
        started_unix: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        nproc: std::thread::available_parallelism().map_or(0, usize::from),
        scenarios,
        checks,
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
async fn finish_scenario(
    ctx: &Ctx,
    name: &str,
    result: anyhow::Result<Scenario>,
) -> anyhow::Result<Scenario> {
    broker::cleanup_all(&ctx.args.broker).await;
    result.with_context(|| format!("scenario {name}"))
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

/// Measures CPU from `after` (the end of the warm-up) until the returned windows are read.
async fn cpu_windows_after(
    after: Duration,
    server: u32,
    broker: Vec<u32>,
    bench: u32,
) -> (CpuWindow, CpuWindow, CpuWindow, SystemWindow) {
    tokio::time::sleep(after).await;
    (
        CpuWindow::start(&[server]),
        CpuWindow::start(&broker),
        CpuWindow::start(&[bench]),
        SystemWindow::start(),
    )
}

fn resources(
    cpu: &(CpuWindow, CpuWindow, CpuWindow, SystemWindow),
    rss: &procfs::RssSeries,
    server_pid: u32,
    with_broker: bool,
) -> Resources {
    let broker_is_server = procfs::pids_named("beam.smp").contains(&server_pid);
    let (server, broker, bench, busy) = (
        cpu.0.percent(),
        cpu.1.percent(),
        cpu.2.percent(),
        cpu.3.percent(),
    );
    let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
    let ours = broker + bench + if broker_is_server { 0.0 } else { server };
    Resources {
        server_rss_max_mib: Some(rss.max_mib()),
        server_rss_halves_mib: Some(rss.halves_mib()),
        server_rss_end_mib: Some(rss.last_mib()),
        server_rss_each_second_mib: rss.each_second_mib(),
        server_hwm_mib: procfs::sample(server_pid).map(|s| s.hwm_kib as f64 / 1024.0),
        server_cpu_pct: (!broker_is_server).then_some(server),
        broker_cpu_pct: with_broker.then_some(broker),
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
        addr: server.addr,
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
        cpu_windows_after(ctx.warmup, pid, ctx.broker_pids(), ctx.bench_pid)
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
        cpu_windows_after(ctx.warmup, rss_pid, broker_pids.clone(), ctx.bench_pid)
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
            if let Ok(text) = http::get(admin, "/metrics").await {
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

/// Starts a relay on a fresh outbox and exchange, with the bench's consumer bound.
struct RelayRun {
    relay: Relay,
    consumer: broker::Consumer,
    _outbox: tempfile::TempDir,
}

async fn start_relay_run(ctx: &Ctx, scenario: &str, broker_addr: &str) -> anyhow::Result<RelayRun> {
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
    std::fs::create_dir_all(&ctx.outbox_parent)?;
    let outbox = tempfile::Builder::new()
        .prefix("hookrelay-bench-")
        .tempdir_in(&ctx.outbox_parent)?;
    let relay = Relay::start(&RelaySpec {
        binary: &ctx.relay_bin,
        exchange: &exchange,
        broker: broker_addr.to_owned(),
        outbox_dir: outbox.path(),
    })?;
    // Wait (bounded) until it is connected, so the run does not measure a cold start.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if relay
            .metrics()
            .await
            .is_ok_and(|m| m.broker_connected >= 1.0)
        {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the relay did not connect to the broker within 30 s:\n{}",
                relay.log_tail(20)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    progress(format!(
        "{scenario}: relay pid {} ingress {} admin {}, outbox {}",
        relay.pid,
        relay.ingress,
        relay.admin,
        relay.outbox.display()
    ));
    Ok(RelayRun {
        relay,
        consumer,
        _outbox: outbox,
    })
}

/// The tag suffix of a scenario (order ids stay short).
fn short(scenario: &str) -> &str {
    match scenario {
        "steady" => "steady",
        "half-rate" => "half",
        "overload" => "over",
        "backlog" => "backlog",
        other => other,
    }
}

async fn relay_scenario(
    ctx: &Ctx,
    name: &str,
    description: &str,
    spec: &dyn Fn(std::net::SocketAddr) -> LoadSpec,
) -> anyhow::Result<Scenario> {
    let RelayRun {
        mut relay,
        consumer,
        _outbox,
    } = start_relay_run(ctx, name, &ctx.args.broker).await?;
    let spec = spec(relay.ingress);
    progress(format!(
        "{name}: {:?}, {} connections, {:.0} s + {:.0} s warm-up",
        spec.mode,
        spec.connections,
        spec.duration.as_secs_f64(),
        spec.warmup.as_secs_f64()
    ));
    let before = relay.metrics().await?;
    let before_at = Instant::now();
    let (stop_rss, rss) = procfs::spawn_rss_sampler(relay.pid, Duration::from_millis(250));
    let (stop_pending, pending) = spawn_pending_poller(relay.admin);
    let relay_pid = relay.pid;
    let (result, cpu, threads_before) = tokio::join!(
        load::run(spec.clone()),
        cpu_windows_after(ctx.warmup, relay.pid, ctx.broker_pids(), ctx.bench_pid),
        async move {
            tokio::time::sleep(ctx.warmup).await;
            (procfs::thread_ticks(relay_pid), Instant::now())
        }
    );
    let result = result?;
    let threads = procfs::thread_percent(
        &threads_before.0,
        &procfs::thread_ticks(relay_pid),
        threads_before.1.elapsed().as_secs_f64(),
    );
    let threads_at_end =
        std::fs::read_dir(format!("/proc/{relay_pid}/task")).map_or(0, Iterator::count);
    let rss_parts = procfs::rss_parts(relay_pid);
    let outbox_mib = relay.outbox.parent().map_or(0.0, procfs::dir_mib);
    let after_load = relay.metrics().await;
    let between = before_at.elapsed().as_secs_f64();
    let resources = resources(&cpu, &rss_stop(stop_rss, rss).await?, relay.pid, true);
    let _ = stop_pending.send(true);
    let max_pending = pending.await?;
    let survived = relay.alive();
    let bound = 60.0 + result.acked.len() as f64 / 1000.0;
    let drained =
        survived && wait_delivered(&consumer, Some(&relay), result.acked.len() as u64, bound).await;
    let consumed = consumer.finish().await?;
    let (lost, unacked) = consumed.conservation(&result.acked);
    let mut s = from_load(name, description, &spec, &result);
    if let (Some(lag), Some(stall)) = (
        Latency::of(&result.send_lag),
        Latency::of(&result.runtime_stall),
    ) {
        s.notes.push(format!(
            "generator: sent after the due time p50 {:.2} / p99 {:.2} / max {:.1} ms; bench runtime 1 ms timer late by p99 {:.2} / max {:.1} ms",
            lag.p50_ms, lag.p99_ms, lag.max_ms, stall.p99_ms, stall.max_ms
        ));
    }
    if name == "overload" {
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
    s.notes.push(format!(
        "relay threads, CPU %: {} ({} threads at the end of the load)",
        thread_list(&s.relay_threads),
        threads_at_end
    ));
    if let Some((anon, file, shmem)) = rss_parts {
        s.notes.push(format!(
            "relay RSS at the end of the load: {anon:.1} MiB anonymous, {file:.1} MiB file, {shmem:.1} MiB shared; outbox files {outbox_mib:.0} MiB"
        ));
    }
    s.outbox_mib = Some(outbox_mib);
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
    let (warnings, errors) = relay.warnings_errors();
    s.relay_warnings = Some(warnings);
    s.relay_errors = Some(errors);
    if !survived {
        s.notes
            .push(format!("the relay DIED:\n{}", relay.log_tail(20)));
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
            problems(&relay)
        ));
    }
    if let Some(e) = consumed.error {
        s.notes.push(format!("consumer error: {e}"));
    }
    relay.stop();
    Ok(s)
}

async fn backlog_scenario(ctx: &Ctx) -> anyhow::Result<Scenario> {
    let name = "backlog";
    let proxy = broker::Proxy::start(&ctx.args.broker).await?;
    let RelayRun {
        mut relay,
        consumer,
        _outbox,
    } = start_relay_run(ctx, name, &proxy.addr.to_string()).await?;
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
        "backlog: broker cut; sending {} webhooks at {} connections",
        ctx.backlog, ctx.args.concurrency
    ));
    // Bounded: at least 120 s, or 2 ms per event.
    let build_bound = Duration::from_secs_f64((ctx.backlog as f64 / 500.0).max(120.0));
    let spec = LoadSpec {
        addr: relay.ingress,
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
        "backlog: {} acked in {:.1} s, {} pending; giving the broker back",
        build.acked.len(),
        build.window_secs(),
        built.pending
    ));
    let cpu = (
        CpuWindow::start(&[relay.pid]),
        CpuWindow::start(&ctx.broker_pids()),
        CpuWindow::start(&[ctx.bench_pid]),
        SystemWindow::start(),
    );
    let threads_before = procfs::thread_ticks(relay.pid);
    let restored = Instant::now();
    proxy.restore();
    let bound = 120.0 + build.acked.len() as f64 / 500.0;
    let drained = wait_delivered(&consumer, Some(&relay), build.acked.len() as u64, bound).await;
    let resources = resources(&cpu, &rss_stop(stop_rss, rss).await?, relay.pid, true);
    let threads = procfs::thread_percent(
        &threads_before,
        &procfs::thread_ticks(relay.pid),
        restored.elapsed().as_secs_f64(),
    );
    let after = relay.metrics().await;
    let survived = relay.alive();
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
    let (warnings, errors) = relay.warnings_errors();
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
    if warnings + errors > 0 {
        s.notes.push(format!(
            "relay logged {warnings} warnings, {errors} errors (the cut is meant to cause warnings): {}",
            problems(&relay)
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
    relay.stop();
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
fn problems(relay: &Relay) -> String {
    relay
        .problems()
        .into_iter()
        .map(|(text, n)| format!("{n} × {text}"))
        .collect::<Vec<_>>()
        .join("; ")
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
