//! What the scenarios share to measure and to write it down: CPU windows of the
//! relay, the broker, PostgreSQL, the bench and the machine; RSS series; the
//! resources column of a row; the bounded waits for delivery; the pending poller;
//! the relays' metrics; and the row and notes made of a load run.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::broker::{Consumed, Consumer};
use crate::context::Ctx;
use crate::load::{LoadResult, LoadSpec, Mode};
use crate::postgres;
use crate::procfs::{self, CpuWindow, RssSeries, SystemWindow};
use crate::relay::{Metrics, Relay};
use crate::report::{Latency, PostgresWindow, Resources, Scenario};

/// CPU of the processes a scenario reports, over its measured window.
pub struct CpuWindows {
    /// The relay (all replicas together), or the ceiling's server.
    pub server: CpuWindow,
    pub broker: CpuWindow,
    /// PostgreSQL, every process named `postgres` (PostgreSQL scenarios only).
    pub postgres: Option<CpuWindow>,
    pub bench: CpuWindow,
    pub system: SystemWindow,
}

impl CpuWindows {
    pub fn start(ctx: &Ctx, server: &[u32], with_postgres: bool) -> Self {
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
pub async fn cpu_windows_after(
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
pub fn resources(
    cpu: &CpuWindows,
    rss: &RssSeries,
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

pub async fn rss_stop(
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<RssSeries>,
) -> anyhow::Result<RssSeries> {
    let _ = stop.send(true);
    Ok(task.await?)
}

/// Waits until the consumer has `expected` distinct messages and (with a relay)
/// the outbox has nothing pending, then a short quiet period for stragglers.
/// Bounded by `bound_s` seconds; returns whether it got there.
pub async fn wait_delivered(
    consumer: &Consumer,
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
pub fn spawn_pending_poller(
    admin: SocketAddr,
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

/// Every relay's metrics, in order.
pub async fn metrics_each(relays: &[Relay]) -> anyhow::Result<Vec<Metrics>> {
    let mut out = Vec::with_capacity(relays.len());
    for relay in relays {
        out.push(relay.metrics().await?);
    }
    Ok(out)
}

/// The consumer's verdict in a row: messages acked and never consumed (`lost`),
/// consumed twice, consumed without a 200, and whether all arrived in time.
pub fn conservation(s: &mut Scenario, consumed: &Consumed, acked: &[u64], drained: bool) {
    let (lost, unacked) = consumed.conservation(acked);
    s.lost = Some(lost);
    s.duplicated = Some(consumed.duplicates);
    s.delivered_without_ack = Some(unacked);
    s.drained = Some(drained);
}

/// Fills the common fields from a load result.
pub fn from_load(name: &str, description: &str, spec: &LoadSpec, r: &LoadResult) -> Scenario {
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

/// PostgreSQL's counters over a window, from two readings `secs` apart.
pub fn postgres_window(
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
pub fn postgres_notes(s: &mut Scenario, during: &str, per_second: f64, per_what: &str) {
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

pub fn thread_list(threads: &[(String, f64)]) -> String {
    threads
        .iter()
        .map(|(name, pct)| format!("{name} {pct:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The relay's first distinct WARN/ERROR messages with their counts.
/// (Several relays: the same message counted once, over all of them.)
pub fn problems(relays: &[Relay]) -> String {
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
pub fn warnings_errors(relays: &[Relay]) -> (u64, u64) {
    relays
        .iter()
        .map(|relay| relay.warnings_errors())
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
}
