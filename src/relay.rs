//! `hookrelay serve`: wires outbox, ingress, publisher and admin listener together,
//! and shuts them down in order on SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Notify, oneshot, watch};

use crate::admin::{self, Admin};
use crate::amqp::BrokerLink;
use crate::config::{Config, ConfigError};
use crate::ingress::{self, Backlog, Ingress};
use crate::metrics::Metrics;
use crate::outbox::recall::Recall;
use crate::outbox::{self, OutboxError};
use crate::providers;
use crate::publisher::{CONFIRM_TIMEOUT, Publisher};
use crate::recovery::{self, Recovery};

/// Longest wait for buffered spans at shutdown.
const TRACE_FLUSH: Duration = Duration::from_secs(5);

/// Why the relay could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// A listener address is taken or not allowed.
    #[error("cannot listen on {addr}: {error} (is another process using it? set {var})")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Which setting chose it.
        var: &'static str,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The outbox could not be opened.
    #[error("cannot open the outbox: {0}")]
    Outbox(OutboxError),
    /// `HOOKRELAY_OUTBOX_REQUIRE_SYNC_STANDBY=true`, and the outbox's commits do
    /// not wait for a synchronous standby.
    #[error(
        "the outbox has no synchronous standby and HOOKRELAY_OUTBOX_REQUIRE_SYNC_STANDBY=true: {found}; set synchronous_standby_names (and synchronous_commit = on) on the primary, or unset the requirement"
    )]
    NoSyncStandby {
        /// What the outbox reported.
        found: String,
    },
    /// The sources do not build.
    #[error("invalid configuration: {0}")]
    Config(ConfigError),
    /// Recovery's HTTP client could not be made (its TLS settings).
    #[error("cannot make the HTTP client that asks providers for missed webhooks: {0}")]
    Recovery(String),
    /// Metrics registration failed (a bug).
    #[error("cannot register metrics: {0}")]
    Metrics(prometheus::Error),
    /// A server failed while running.
    #[error("server error: {0}")]
    Serve(std::io::Error),
    /// A part that runs for the whole life of the relay ended on its own.
    #[error(
        "the {part} stopped unexpectedly ({detail}); exiting so that the process supervisor restarts the relay"
    )]
    Crashed {
        /// Which part.
        part: &'static str,
        /// How it ended.
        detail: String,
    },
}

/// Runs `serving` (the ingress, until the shutdown signal) while watching the
/// parts that must never end on their own: if the publisher or the outbox's writer
/// ends first, the relay would go on acking with nothing published, or answering
/// 503 while `/healthz` says 200. It exits instead, non-zero, for a restart.
async fn supervise(
    serving: impl std::future::Future<Output = ()>,
    publisher: &mut oneshot::Receiver<()>,
    outbox: &dyn outbox::Pipe,
) -> Result<(), RelayError> {
    let crashed = |part, detail: String| {
        tracing::error!(part, %detail, "a part of the relay stopped unexpectedly; exiting");
        Err(RelayError::Crashed { part, detail })
    };
    tokio::select! {
        () = serving => Ok(()),
        ended = publisher => crashed(
            "publisher",
            ended.map_or_else(|_| "it panicked".to_owned(), |()| "it returned".to_owned()),
        ),
        () = outbox.failed() => crashed("outbox writer", "it ended (a thread on SQLite, the writer tasks on PostgreSQL)".to_owned()),
    }
}

/// The nice value of the threads that take webhooks (ingress, admin, and the
/// tasks beside them), above the publisher's 0: when the CPU is short, the
/// publisher (and the broker's share of the machine) come first, so a sustained
/// overload ends in 503s the providers retry, not in a backlog that only grows.
/// Under the bench's 10x overload the publisher published 43-45 % of the broker's
/// ceiling with ingress at nice 5, and 51-53 % at 10 (`docs/performance.md`).
const INGRESS_NICE: i32 = 10;

/// The runtime `serve` runs on: ingress, admin and the outbox's tasks, on
/// threads at [`INGRESS_NICE`]. The publisher has a runtime of its own
/// ([`spawn_publisher`]) at normal priority.
pub(crate) fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(|| {
            // On Linux, `setpriority(PRIO_PROCESS, 0, …)` sets the calling
            // thread's nice value; raising it needs no privilege. Best effort.
            // SAFETY: setpriority takes no pointers; it only reads its integers.
            let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, INGRESS_NICE) };
        })
        .build()
}

/// Runs the publisher on a runtime of its own (two worker threads, and the
/// thread that drives it, all named `publisher`, at normal priority); the
/// receiver resolves when it returns (`Ok`) or panics (`Err`). Two workers so a
/// batch's confirm-and-settle task can run while the next batch is built; a
/// current-thread runtime measured about the same in the bench's steady run.
///
/// On the ingress's runtime the publisher waited, at each of its awaits (a fetch,
/// every publish, a confirm, a settle), behind every runnable request task: under
/// an overload, thousands. Published/s then fell to a few hundred while
/// webhooks were acked by the tens of thousands. On its own thread the operating
/// system shares the CPU between its threads and the ingress threads instead, and the
/// broker connection's I/O (spawned where the connection is made) comes with it.
fn spawn_publisher(
    publisher: Publisher,
    stop: watch::Receiver<bool>,
) -> Result<oneshot::Receiver<()>, RelayError> {
    let (done, ended) = oneshot::channel();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("publisher")
        .build()
        .map_err(RelayError::Serve)?;
    std::thread::Builder::new()
        .name("publisher".to_owned())
        .spawn(move || {
            runtime.block_on(publisher.run(stop));
            let _ = done.send(());
        })
        .map_err(RelayError::Serve)?;
    Ok(ended)
}

async fn bind(addr: SocketAddr, var: &'static str) -> Result<TcpListener, RelayError> {
    TcpListener::bind(addr)
        .await
        .map_err(|error| RelayError::Bind { addr, var, error })
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

/// Says what stands behind the outbox's commits, warning when a failover could
/// lose acknowledged webhooks; refuses to start then if `required`.
async fn check_replication(outbox: &dyn outbox::Operate, required: bool) -> Result<(), RelayError> {
    let replication = outbox.replication().await.map_err(RelayError::Outbox)?;
    let found = replication.describe();
    if replication.synchronous() {
        tracing::info!(replication = %found, "outbox replication");
    } else if required {
        return Err(RelayError::NoSyncStandby { found });
    } else if replication != outbox::Replication::Local {
        // One file on one disk is the deployment's choice
        // (docs/high-availability.md), not news at every start.
        tracing::warn!(replication = %found,
            "the outbox's commits do not wait for a synchronous standby: if its server fails over, webhooks acknowledged in the last moments can be lost (docs/high-availability.md); set HOOKRELAY_OUTBOX_REQUIRE_SYNC_STANDBY=true to refuse to start so");
    }
    Ok(())
}

/// Runs the relay until SIGTERM/SIGINT, then: stops accepting, answers the requests
/// in flight, lets the publisher finish its batch (bounded), and returns.
pub(crate) async fn serve(config: Config) -> Result<(), RelayError> {
    let metrics = Arc::new(Metrics::new().map_err(RelayError::Metrics)?);
    let sources = Arc::new(providers::build_sources(&config).map_err(RelayError::Config)?);
    // Woken by ingress on every stored webhook, and by a shared outbox when another
    // replica committed some.
    let wake = Arc::new(Notify::new());
    // Told by the publisher its rows in flight and its progress: ingress gives way
    // to it, a shared outbox hands on the partitions of one that gets nowhere.
    let pace = Arc::new(crate::pace::Pace::default());
    let outbox::Outbox { pipe, operate } = outbox::serve(
        config.outbox_url.expose(),
        Arc::clone(&metrics),
        outbox::Options {
            lease: config.outbox_lease,
            wake: Arc::clone(&wake),
            pace: Arc::clone(&pace),
            stuck_after: crate::publisher::CONFIRM_TIMEOUT + config.outbox_lease,
        },
    )
    .await
    .map_err(RelayError::Outbox)?;
    check_replication(operate.as_ref(), config.outbox_require_sync_standby).await?;
    for source in sources.values() {
        let name = &source.config.name;
        if source.config.allow_unsigned {
            tracing::warn!(source = %name, "source accepts UNSIGNED webhooks (allow_unsigned = true): anyone can post to it");
        } else {
            for key in source.provider.missing_credentials() {
                tracing::warn!(source = %name, setting = %key,
                    "source `{name}` has no `{key}` and will refuse its webhooks with 401");
            }
            if !source.provider.signs_body() && source.config.allow_ips.is_empty() {
                tracing::warn!(source = %name,
                    "source `{name}`'s provider does not sign the body: set allow_ips to the provider's addresses, or anyone holding one signed request can post any body");
            }
        }
    }
    let ingress_listener = bind(config.listen, "HOOKRELAY_LISTEN").await?;
    let admin_listener = bind(config.admin_listen, "HOOKRELAY_ADMIN_LISTEN").await?;
    let ingress_addr = ingress_listener.local_addr().map_err(RelayError::Serve)?;
    let admin_addr = admin_listener.local_addr().map_err(RelayError::Serve)?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let urls: Vec<String> = config
        .amqp_urls
        .iter()
        .map(|url| url.expose().to_owned())
        .collect();
    let link = BrokerLink::new(
        &urls,
        config.exchange.clone(),
        config.unrouted_queue_type,
        Arc::clone(&metrics),
    );
    let publisher = Publisher::new(
        Arc::clone(&pipe),
        link,
        config.exchange.clone(),
        Arc::clone(&metrics),
        Arc::clone(&wake),
        Arc::clone(&pace),
    );
    let publisher_task = spawn_publisher(publisher, stop_rx.clone())?;
    // Rows an older release set aside as unreadable, and this one reads, go back
    // to pending; their subjects waited behind them.
    let reviving = Arc::clone(&operate);
    tokio::spawn(async move {
        match outbox::select::revive_unreadable(reviving.as_ref()).await {
            Ok(0) => {}
            Ok(revived) => tracing::info!(
                rows = revived,
                "replayed the rows a release that could not read them had set aside"
            ),
            Err(e) => tracing::warn!(error = %e,
                "cannot look for rows set aside as unreadable; replay them with `hookrelay outbox replay --dead` once the outbox answers"),
        }
    });
    let retention_task = tokio::spawn(outbox::retention::run(
        Arc::clone(&operate),
        outbox::retention::Keep {
            published: config.retention,
            sequences: config.sequence_retention,
        },
        stop_rx.clone(),
    ));

    let backlog = Arc::new(Backlog::new(config.outbox_max_pending));
    metrics
        .outbox_max_pending
        .set(i64::try_from(config.outbox_max_pending).unwrap_or(i64::MAX));
    let counts = outbox::counts::Counts::new(Arc::clone(&operate));
    let backlog_task =
        tokio::spawn(Arc::clone(&backlog).track(Arc::clone(&counts), stop_rx.clone()));
    let source_list = sources
        .values()
        .map(|s| (s.config.name.clone(), s.config.provider.clone()))
        .collect();
    let activity = Arc::new(crate::activity::Activity::default());
    let recovery = Arc::new(
        Recovery::new(
            Arc::clone(&sources),
            Recall::new(operate.clone()),
            Some(recovery::Store {
                pipe: Arc::clone(&pipe),
                wake: Arc::clone(&wake),
            }),
            Arc::clone(&metrics),
        )
        .map_err(RelayError::Recovery)?,
    );
    let recovery_task =
        tokio::spawn(Arc::clone(&recovery).run(Arc::clone(&activity), stop_rx.clone()));
    let ingress = Arc::new(Ingress {
        sources,
        outbox: Arc::clone(&pipe),
        metrics: Arc::clone(&metrics),
        max_body: config.max_body,
        budget: crate::budget::BodyBudget::new(config.body_budget, config.body_budget_per_client),
        trusted_proxies: config.trusted_proxies.clone(),
        read_timeout: config.read_timeout,
        wake,
        pace: Arc::clone(&pace),
        logs: ingress::LogThrottles::default(),
        backlog,
        activity: Arc::clone(&activity),
    });
    ingress.count_from_zero();
    // `hookrelay_events_published_total` at 0 for each configured provider with
    // the one kind and status every provider can publish, so `rate()` over it is
    // 0, not empty, before the first publish; the other pairs are a provider's
    // mapping (or a `standard` source's configuration) and appear when published.
    for source in ingress.sources.values() {
        let unrecognized = crate::event::UNRECOGNIZED;
        metrics.events_published.with_label_values(&[
            source.config.provider.as_str(),
            unrecognized,
            unrecognized,
        ]);
    }
    for name in ingress.sources.keys() {
        metrics.events_stale.with_label_values(&[name.as_str()]);
    }
    let admin = Arc::new(Admin {
        outbox: operate,
        counts,
        metrics,
        activity,
        sources: source_list,
        access: admin::auth::Access::new(
            config.admin_token.clone(),
            admin_addr.ip().is_loopback(),
            config.admin_hosts.clone(),
        ),
        searches: tokio::sync::Semaphore::new(1),
        pace: Arc::clone(&pace),
        failed_logins: crate::telemetry::Throttle::new(std::time::Duration::from_secs(1)),
        recovery,
    });
    let mut admin_stop = stop_rx.clone();
    let admin_server = axum::serve(
        admin_listener,
        admin::router(admin).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = admin_stop.wait_for(|stop| *stop).await;
    });
    let admin_task = tokio::spawn(async move { admin_server.await });
    tracing::info!(addr = %admin_addr, "admin listening");
    tracing::info!(addr = %ingress_addr, "ingress listening");

    let mut publisher_task = publisher_task;
    let serving = ingress::serve(
        ingress_listener,
        ingress::router(ingress),
        ingress::MAX_CONNECTIONS,
        config.read_timeout,
        CONFIRM_TIMEOUT,
        async {
            shutdown_signal().await;
            tracing::info!("shutting down: no new requests; answering those in flight");
        },
    );
    supervise(serving, &mut publisher_task, pipe.as_ref()).await?;
    // Ingress has answered everything in flight; now the publisher finishes its batch.
    let _ = stop_tx.send(true);
    match tokio::time::timeout(CONFIRM_TIMEOUT + Duration::from_secs(5), publisher_task).await {
        Ok(_) => {}
        Err(_) => tracing::warn!(
            "publisher did not stop in time; unconfirmed rows stay pending for the next start"
        ),
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), admin_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), retention_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), recovery_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), backlog_task).await;
    pipe.close().await;
    // Spans still buffered go out now, bounded: a collector that is down costs
    // the shutdown at most this long.
    let flush = tokio::task::spawn_blocking(|| crate::telemetry::flush_traces(TRACE_FLUSH));
    let _ = tokio::time::timeout(TRACE_FLUSH + Duration::from_secs(1), flush).await;
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_relay_exits_when_the_publisher_ends_on_its_own() {
        let (returned, mut publisher) = oneshot::channel();
        let _ = returned.send(());
        let outcome = supervise(
            std::future::pending(),
            &mut publisher,
            &outbox::fake::Hanging::default(),
        )
        .await;
        assert!(
            matches!(
                outcome,
                Err(RelayError::Crashed {
                    part: "publisher",
                    ..
                })
            ),
            "{outcome:?}"
        );
        let (_running, mut publisher) = oneshot::channel();
        let outcome = supervise(async {}, &mut publisher, &outbox::fake::Hanging::default()).await;
        assert!(outcome.is_ok(), "a shutdown is not a crash: {outcome:?}");
    }
}
