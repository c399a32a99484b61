//! The relay under a load it can carry or cannot: `steady` (closed loop),
//! `half-rate` (open loop at half of `steady`'s acked rate), `overload` (open loop
//! at `--overload-factor` × that rate over `--overload-connections`), their
//! PostgreSQL counterparts, and `pg-steady-3` (three relays on one outbox). Each
//! starts fresh relays ([`setup`](crate::scenarios::setup)), measures the window
//! after the warm-up, waits for every acked webhook to be consumed, and stops them.

use std::time::{Duration, Instant};

use anyhow::bail;

use crate::context::{Ctx, progress};
use crate::load::{self, Mode};
use crate::measure::{
    conservation, cpu_windows_after, from_load, metrics_each, postgres_notes, postgres_window,
    problems, resources, rss_stop, spawn_pending_poller, thread_list, wait_delivered,
    warnings_errors,
};
use crate::procfs;
use crate::relay::{Backend, Metrics};
use crate::report::{Latency, Scenario};
use crate::scenarios::setup::{RelayRun, start_relay_run, stop_all};

/// One relay load scenario of the table.
pub struct Load {
    /// Order-id prefix of its webhooks (after the run id; short, so the ids are).
    pub tag: &'static str,
    /// The row's description.
    pub description: &'static str,
    pub backend: Backend,
    /// Relay processes on the one outbox (replicas), the connections spread round
    /// robin over their ingress addresses.
    pub relays: usize,
    pub pace: Pace,
}

/// How the load is offered.
pub enum Pace {
    /// Closed loop over `--concurrency` connections.
    Closed,
    /// Open loop over `--concurrency` connections at half the maximum rate: the
    /// acked rate of the named scenario, or `--max-rate`.
    HalfOf(&'static str),
    /// Open loop over `--overload-connections` at `--overload-factor` × that
    /// maximum; latencies are reported from the send time.
    OverloadOf(&'static str),
}

/// `--max-rate`, or the acked rate of the `reference` scenario of this run.
fn max_rate(ctx: &Ctx, name: &str, reference: &str, done: &[Scenario]) -> anyhow::Result<f64> {
    let measured = done
        .iter()
        .find(|s| s.name == reference)
        .map(|s| s.acked_per_s);
    match ctx.args.max_rate.or(measured).filter(|r| *r > 0.0) {
        Some(rate) => Ok(rate),
        None => bail!("{name} needs the {reference} scenario or --max-rate"),
    }
}

/// Runs one relay load scenario named `name`; `done` holds the rows of the
/// scenarios that ran before it (where an open loop finds its reference rate).
pub async fn run(
    ctx: &Ctx,
    name: &str,
    plan: &Load,
    done: &[Scenario],
) -> anyhow::Result<Scenario> {
    let mode = match plan.pace {
        Pace::Closed => Mode::Closed,
        Pace::HalfOf(reference) => Mode::Open {
            rate: max_rate(ctx, name, reference, done)? / 2.0,
        },
        Pace::OverloadOf(reference) => Mode::Open {
            rate: max_rate(ctx, name, reference, done)? * ctx.args.overload_factor,
        },
    };
    let connections = match plan.pace {
        Pace::OverloadOf(_) => ctx.args.overload_connections,
        Pace::Closed | Pace::HalfOf(_) => ctx.args.concurrency,
    };
    let RelayRun {
        mut relays,
        consumer,
        home,
        partitions,
    } = start_relay_run(
        ctx,
        name,
        plan.tag,
        &ctx.args.broker,
        plan.backend,
        plan.relays,
    )
    .await?;
    let spec = ctx.load(
        plan.tag,
        relays.iter().map(|r| r.ingress).collect(),
        connections,
        mode,
    );
    let (description, backend) = (plan.description, plan.backend);
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
    let before = Metrics::merged(&before_each);
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
    let after_load = after_each.as_ref().map(|all| Metrics::merged(all));
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
    if let Pace::OverloadOf(_) = plan.pace {
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
    conservation(&mut s, &consumed, &result.acked, drained);
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
