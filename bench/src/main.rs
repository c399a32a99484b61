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
//! This file parses the options and runs the chosen rows of the scenario table
//! ([`scenarios::TABLE`], one file per family under `scenarios/`) in order, each
//! followed by the broker's clean-up; then the verdicts ([`verdicts`]) and the
//! report ([`report`]). What the scenarios share: [`context`] (options, run id,
//! progress), [`measure`] (CPU, RSS, waits, rows of a load run).
//!
//! See bench/README.md for how to run it and read the table.

mod args;
mod broker;
mod context;
mod disk;
mod load;
mod measure;
mod postgres;
mod procfs;
mod relay;
mod report;
mod scenarios;
mod seed;
mod verdicts;

use std::time::SystemTime;

use anyhow::Context;

use crate::args::{Args, Sub};
use crate::context::{Ctx, progress};
use crate::report::Report;
use crate::scenarios::{Output, TABLE};
use crate::verdicts::Reference;

fn main() -> std::process::ExitCode {
    let args = args::parse(&scenarios::names(), scenarios::default_list());
    if let Some(Sub::HttpCeilingServer) = args.command {
        return match scenarios::ceilings::serve_http() {
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

/// Runs the chosen scenarios in the table's order and prints the report; whether
/// every target was met.
async fn run(args: Args) -> anyhow::Result<bool> {
    let chosen: Vec<&scenarios::Entry> = TABLE
        .iter()
        .filter(|entry| args.scenarios.iter().any(|name| name == entry.name))
        .collect();
    let needs_relay = chosen.iter().any(|entry| entry.family.needs_relay());
    let needs_postgres = chosen.iter().any(|entry| entry.family.needs_postgres());
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let ctx = Ctx::new(args, needs_relay, needs_postgres).await?;
    progress(format!(
        "run {}: scenarios {:?}, {} s measured after {} s warm-up each",
        ctx.run_id,
        ctx.args.scenarios,
        ctx.duration.as_secs_f64(),
        ctx.warmup.as_secs_f64()
    ));
    let mut rows = Vec::new();
    let mut callgrind = Vec::new();
    for entry in chosen {
        let output = scenarios::run(&ctx, entry, &rows).await;
        // Whatever happened, nothing the scenario declared stays in RabbitMQ.
        broker::cleanup_all(&ctx.args.broker).await;
        match output.with_context(|| format!("scenario {}", entry.name))? {
            Output::Rows(new) => rows.extend(new),
            Output::Instructions(counts) => callgrind = counts,
        }
    }
    let checks = verdicts::checks(&Reference::of(&rows, ctx.args.concurrency));
    let all_met = checks.iter().all(|c| c.met != Some(false));
    let report = Report {
        command,
        started_unix: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        nproc: std::thread::available_parallelism().map_or(0, usize::from),
        scenarios: rows,
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
