//! `backlog` and `pg-backlog`: the relay behind a TCP proxy in front of the
//! broker; the proxy is cut, `--backlog` webhooks are acked into the outbox, the
//! proxy is restored, and the drain is measured (from the first to the last message
//! consumed, and from the restore).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hookrelay_testkit::TcpProxy;

use crate::broker::us;
use crate::context::{Ctx, progress};
use crate::load::{self, LoadSpec, Mode};
use crate::measure::{
    CpuWindows, conservation, from_load, postgres_notes, postgres_window, problems, resources,
    rss_stop, thread_list, wait_delivered, warnings_errors,
};
use crate::procfs;
use crate::relay::{Backend, Metrics};
use crate::report::Scenario;
use crate::scenarios::setup::{RelayRun, start_relay_run, stop_all};

/// Runs one backlog scenario named `name`: its webhooks' order ids are tagged
/// `tag`, its relay runs on `backend`.
pub async fn run(ctx: &Ctx, name: &str, tag: &str, backend: Backend) -> anyhow::Result<Scenario> {
    let proxy = TcpProxy::start(&ctx.args.broker).await?;
    let RelayRun {
        mut relays,
        consumer,
        home,
        partitions: _,
    } = start_relay_run(ctx, name, tag, &proxy.addr.to_string(), backend, 1).await?;
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
        warmup: Duration::ZERO,
        duration: build_bound,
        limit: Some(ctx.backlog),
        ..ctx.load(tag, vec![relay.ingress], ctx.args.concurrency, Mode::Closed)
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
    let first = consumed.first.iter().map(|s| s.consumed_us).min();
    let last = consumed.first.iter().map(|s| s.consumed_us).max();
    let restored_us = us(ctx.epoch, restored);
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
    conservation(&mut s, &consumed, &build.acked, drained);
    s.mean_message_bytes = Some(consumed.mean_bytes());
    s.avg_commit_batch = after
        .as_ref()
        .ok()
        .map(|m| m.batch_size_since(&Metrics::default()));
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
