//! The admin listener (contract §5): the probes and `/metrics`, open to all;
//! the admin API (`api`) and the console (`ui`) behind the access rules of
//! `auth`, both showing what `views` builds from the outbox's `query` module.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::activity::Activity;
use crate::clock::now_micros;
use crate::metrics::Metrics;
use crate::outbox::Operate;
use crate::outbox::counts::Counts;

mod api;
pub(crate) mod auth;
mod ui;
mod views;

/// Longest wait for the outbox in a probe or a scrape: probes have deadlines of
/// their own, and an answer that says "unknown" beats none.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Shared state of the admin handlers.
pub(crate) struct Admin {
    /// The outbox, for readiness and what the API and console show.
    pub(crate) outbox: Arc<dyn Operate>,
    /// Its counts, shared with admission, one count at a time.
    pub(crate) counts: Arc<Counts>,
    /// Metrics to render.
    pub(crate) metrics: Arc<Metrics>,
    /// Each source's recent outcomes.
    pub(crate) activity: Arc<Activity>,
    /// Configured sources: name and provider.
    pub(crate) sources: Vec<(String, String)>,
    /// Who may use the API and the console.
    pub(crate) access: auth::Access,
    /// One text search at a time.
    pub(crate) searches: tokio::sync::Semaphore,
    /// The publisher's progress, for `/readyz`.
    pub(crate) pace: Arc<crate::pace::Pace>,
    /// Console logins with a wrong token, logged once a second at most.
    pub(crate) failed_logins: crate::telemetry::Throttle,
    /// Recovery from providers, for `POST /api/v1/recover` and the sources page.
    pub(crate) recovery: Arc<crate::recovery::Recovery>,
}

/// The admin router. Serve it with `ConnectInfo<SocketAddr>`: replays are logged
/// with the address they came from.
pub(crate) fn router(admin: Arc<Admin>) -> Router {
    let guarded = api::router()
        .merge(ui::router())
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&admin),
            auth::guard,
        ));
    Router::new()
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(guarded)
        .merge(ui::login_router())
        .with_state(admin)
}

/// Ready means the outbox takes writes; a broker outage does not make the relay
/// unready, because the outbox absorbs it (contract §5).
async fn readyz(State(admin): State<Arc<Admin>>) -> Response {
    let writable = tokio::time::timeout(READ_TIMEOUT, admin.outbox.check_writable()).await;
    let outbox_error = match writable {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some((e.reason(), e.to_string())),
        Err(_) => Some(("timeout", "the outbox did not answer within 2 s".to_owned())),
    };
    // A slow count must not hold the probe (or the prober) either: the latest one
    // is answered, with its age.
    let counted = admin.counts.latest(READ_TIMEOUT).await;
    let stats = counted.map(|c| c.stats);
    let broker = admin.metrics.broker.now();
    let replication = tokio::time::timeout(READ_TIMEOUT, admin.outbox.replication())
        .await
        .ok()
        .and_then(Result::ok);
    let body = serde_json::json!({
        "ready": outbox_error.is_none(),
        "outbox": {
            "writable": outbox_error.is_none(),
            "reason": outbox_error.as_ref().map(|(reason, _)| *reason),
            "error": outbox_error.as_ref().map(|(_, message)| message),
            "pending": stats.map(|s| s.pending),
            "dead": stats.map(|s| s.dead),
            "held_subjects": stats.map(|s| s.held_subjects),
            "fenced": stats.map(|s| s.fenced),
            "partitions": stats.map(|s| s.partitions),
            "counted_seconds_ago": counted.map(|c| c.age().as_secs_f64()),
            // Rows this relay could not read (a newer release wrote them) and set
            // aside as dead since it started: everything else went on.
            "unreadable_rows": admin.metrics.outbox_unreadable_rows.get(),
            // Whether a failover of its server keeps every acknowledged webhook
            // (null: not known within the probe's time).
            "synchronous_standby": replication.as_ref().map(|r| r.synchronous()),
            "replication": replication.as_ref().map(|r| r.describe()),
        },
        // Which node the publisher is on, and whether that node blocks it (it
        // moves to another node within 10 s when there is one).
        "broker": {
            "connected": broker.node.is_some(),
            "node": broker.node,
            "blocked": broker.blocked_since.is_some(),
            "blocked_seconds": broker.blocked_since.map(|since| since.elapsed().as_secs_f64()),
        },
        // How long the publisher has got nowhere (no publish confirmed while rows
        // wait): past a confirm timeout and a lease, a shared outbox hands this
        // replica's subjects to the others.
        "publisher": {
            "stuck_seconds": admin.pace.stuck_for().as_secs_f64(),
        },
    });
    let status = if outbox_error.is_none() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// Seconds since a receive time; 0 when there is none.
fn age(received_us: Option<i64>) -> f64 {
    received_us.map_or(0.0, |at| (now_micros() - at).max(0) as f64 / 1e6)
}

async fn metrics(State(admin): State<Arc<Admin>>) -> Response {
    // Outbox gauges are the latest count (a new one each scrape, unless one still
    // runs): a slow count is served late, with its age, never started twice.
    match admin.counts.latest(READ_TIMEOUT).await {
        Some(counted) => {
            let stats = counted.stats;
            let gauges = &admin.metrics.outbox_events;
            gauges
                .with_label_values(&["pending"])
                .set(i64::try_from(stats.pending).unwrap_or(i64::MAX));
            gauges
                .with_label_values(&["dead"])
                .set(i64::try_from(stats.dead).unwrap_or(i64::MAX));
            admin
                .metrics
                .outbox_oldest_pending
                .set(age(stats.oldest_pending_us));
            admin
                .metrics
                .outbox_held_subjects
                .set(i64::try_from(stats.held_subjects).unwrap_or(i64::MAX));
            admin
                .metrics
                .outbox_fenced_rows
                .set(i64::try_from(stats.fenced).unwrap_or(i64::MAX));
            admin
                .metrics
                .outbox_fence_wait
                .set(age(stats.oldest_fenced_us));
            admin
                .metrics
                .outbox_counted_age
                .set(counted.age().as_secs_f64());
        }
        None => tracing::warn!("cannot read outbox stats for /metrics: no count has finished yet"),
    }
    match admin.metrics.render() {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot render metrics: {e}\n"),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn probes_and_scrapes_answer_even_when_the_outbox_hangs() {
        let admin = Arc::new(Admin {
            outbox: Arc::new(crate::outbox::fake::Hanging::default()),
            counts: Counts::new(Arc::new(crate::outbox::fake::Hanging::default())),
            metrics: Arc::new(Metrics::new().expect("metrics")),
            activity: Arc::default(),
            sources: Vec::new(),
            access: auth::Access::new(None, true, Vec::new()),
            searches: tokio::sync::Semaphore::new(1),
            pace: Arc::default(),
            failed_logins: crate::telemetry::Throttle::new(std::time::Duration::from_secs(1)),
            recovery: Arc::new(
                crate::recovery::Recovery::new(
                    Arc::default(),
                    crate::outbox::recall::Recall::new(Arc::new(
                        crate::outbox::fake::Hanging::default(),
                    )),
                    None,
                    Arc::new(Metrics::new().expect("metrics")),
                )
                .expect("recovery"),
            ),
        });
        tokio::time::pause();
        let ready = readyz(State(Arc::clone(&admin))).await;
        assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
        let scrape = metrics(State(admin)).await;
        assert_eq!(scrape.status(), StatusCode::OK);
    }
}
