//! The set-up and tear-down the relay scenarios share (`relay_load`, `backlog`):
//! a fresh exchange with the bench's queue and consumer, a fresh outbox, the
//! relays started on it and connected; at the end, the relays stopped and the
//! outbox removed.

use std::time::{Duration, Instant};

use anyhow::bail;

use crate::broker::{self, Consumer};
use crate::context::{Ctx, progress};
use crate::measure::metrics_each;
use crate::relay::{Backend, OutboxHome, Relay, RelaySpec};

/// Relays on a fresh outbox and exchange, with the bench's consumer bound.
pub struct RelayRun {
    pub relays: Vec<Relay>,
    pub consumer: Consumer,
    pub home: OutboxHome,
    /// Several replicas: how the partitions were shared when the load started.
    pub partitions: Option<String>,
}

/// Stops the relays (SIGTERM to all, then waits for each) and removes the outbox.
pub async fn stop_all(mut relays: Vec<Relay>, home: OutboxHome) {
    for relay in &mut relays {
        let _ = relay.terminate();
    }
    for relay in relays {
        relay.stop();
    }
    home.remove().await;
}

/// Declares the scenario's exchange and queue, starts the consumer (order ids
/// tagged `tag`), a fresh outbox and `replicas` relays on it that reach the broker
/// at `broker_addr` (the broker, or a proxy in front of it); waits until they are
/// connected and, with several, until they share the partitions.
pub async fn start_relay_run(
    ctx: &Ctx,
    scenario: &str,
    tag: &str,
    broker_addr: &str,
    backend: Backend,
    replicas: usize,
) -> anyhow::Result<RelayRun> {
    let exchange = ctx.exchange(scenario);
    let connection = broker::connect(&ctx.args.broker, "hookrelay-bench topology").await?;
    let queue = broker::declare(&connection, &exchange, ctx.args.queue_type).await?;
    let _ = connection.close(200, "declared".into()).await;
    let consumer = Consumer::start(&ctx.args.broker, &queue, &ctx.tag(tag), ctx.epoch).await?;
    let home = ctx.outbox_home(backend, scenario).await?;
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
