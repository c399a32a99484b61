//! The webhook ingress: `POST /webhooks/{source}` (contract §3).
//!
//! Order of checks: known source (404) → body size (413) → authenticity (401) →
//! parse (never rejects: unknown shapes become `unrecognized`) → room in the outbox
//! (503 past `HOOKRELAY_OUTBOX_MAX_PENDING` unpublished rows) → durable outbox
//! write (503 if it fails) → the provider's own ack. The ack is sent only after the
//! outbox has committed and synced the raw body; it never waits for RabbitMQ.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use ipnet::IpNet;
use time::OffsetDateTime;
use tokio::sync::Notify;
use tracing::Instrument;

use crate::activity::Activity;
use crate::budget::{BodyBudget, Refusal, Reservation};
use crate::event::EventMeta;
use crate::event::Parsed;
use crate::metrics::Metrics;
use crate::outbox::counts::{Counted, Counts};
use crate::outbox::{InsertOutcome, NewEvent, OutboxError, Pipe};
use crate::providers::{Source, VerifyError, WebhookRequest};
use crate::telemetry::{self, Throttle, TraceParent};

/// Headers never written to the outbox: credentials of the caller, not of the event.
const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
    "x-secret-key",
];

/// Shared state of the ingress handlers.
pub(crate) struct Ingress {
    /// Sources by name.
    pub(crate) sources: Arc<BTreeMap<String, Source>>,
    /// Where webhooks are stored.
    pub(crate) outbox: Arc<dyn Pipe>,
    /// Metrics.
    pub(crate) metrics: Arc<Metrics>,
    /// Largest accepted body.
    pub(crate) max_body: usize,
    /// Reverse proxies whose `X-Forwarded-For` is believed.
    pub(crate) trusted_proxies: Vec<IpNet>,
    /// Longest wait for a request body.
    pub(crate) read_timeout: std::time::Duration,
    /// Notified on every stored webhook, so the publisher starts at once.
    pub(crate) wake: Arc<Notify>,
    /// Where a webhook gives way to a busy publisher before it is stored.
    pub(crate) pace: Arc<crate::pace::Pace>,
    /// Log lines a sender can cause, at most one a second of each kind.
    pub(crate) logs: LogThrottles,
    /// The outbox's unpublished rows against their limit.
    pub(crate) backlog: Arc<Backlog>,
    /// The memory the bodies being read may hold.
    pub(crate) budget: Arc<BodyBudget>,
    /// Each source's outcomes by minute, for the console.
    pub(crate) activity: Arc<Activity>,
}

/// How often the outbox's pending rows are counted for admission.
const BACKLOG_COUNT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The outbox's pending rows as last counted, against `HOOKRELAY_OUTBOX_MAX_PENDING`.
/// Past it webhooks get 503, so a long broker outage or a sustained overload ends
/// in retries the providers make later, not in a full disk. Counted once a second
/// (on a shared outbox, every replica sees the whole outbox), so the limit may be
/// passed by a second's worth of webhooks.
pub(crate) struct Backlog {
    limit: u64,
    pending: std::sync::atomic::AtomicU64,
    /// Seconds since the last count, once that is [`UNCOUNTED_AFTER`] or more: then
    /// the limit cannot be checked, and webhooks are refused rather than admitted
    /// unchecked (the backlog may have grown past the limit meanwhile). 0 while
    /// counts come.
    uncounted_for: std::sync::atomic::AtomicU64,
}

/// How long the backlog may go uncounted before webhooks are refused.
const UNCOUNTED_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

impl Backlog {
    /// A backlog with no rows counted yet.
    pub(crate) fn new(limit: u64) -> Self {
        Self {
            limit,
            pending: std::sync::atomic::AtomicU64::new(0),
            uncounted_for: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Whether a webhook may be stored now.
    fn admit(&self) -> Result<(), OutboxError> {
        use std::sync::atomic::Ordering::Relaxed;
        let uncounted = self.uncounted_for.load(Relaxed);
        if uncounted > 0 {
            return Err(OutboxError::Uncounted(uncounted));
        }
        let pending = self.pending.load(Relaxed);
        if pending >= self.limit {
            return Err(OutboxError::Full {
                pending,
                limit: self.limit,
            });
        }
        Ok(())
    }

    /// Takes the latest count: its pending rows, or, once the latest is older
    /// than [`UNCOUNTED_AFTER`] (or none has finished for that long since the
    /// start), a refusal until one does.
    fn counted(&self, latest: Option<&Counted>, since_start: std::time::Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        let age = latest.map_or(since_start, Counted::age);
        if age >= UNCOUNTED_AFTER {
            self.uncounted_for.store(age.as_secs().max(1), Relaxed);
            return;
        }
        if let Some(counted) = latest {
            self.pending.store(counted.stats.pending, Relaxed);
        }
        self.uncounted_for.store(0, Relaxed);
    }

    /// Takes the latest count every second until `stop` (counts are shared with
    /// the admin listener and taken one at a time, so a slow one is waited for,
    /// not abandoned and started again beside it).
    pub(crate) async fn track(
        self: Arc<Self>,
        counts: Arc<Counts>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let started = std::time::Instant::now();
        loop {
            tokio::select! {
                latest = counts.latest(BACKLOG_COUNT_EVERY) => {
                    self.counted(latest.as_ref(), started.elapsed());
                }
                _ = stop.wait_for(|s| *s) => return,
            }
            tokio::select! {
                () = tokio::time::sleep(BACKLOG_COUNT_EVERY) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}

/// One [`Throttle`] per kind of log line a sender controls.
pub(crate) struct LogThrottles {
    refused: Throttle,
    unrecognized: Throttle,
    unavailable: Throttle,
    duplicate: Throttle,
}

impl Default for LogThrottles {
    fn default() -> Self {
        let second = std::time::Duration::from_secs(1);
        Self {
            refused: Throttle::new(second),
            unrecognized: Throttle::new(second),
            unavailable: Throttle::new(second),
            duplicate: Throttle::new(second),
        }
    }
}

use crate::activity::OUTCOMES;

impl Ingress {
    /// Exports every source's outcome counters at 0, so `rate()` over them is
    /// defined before the first webhook (an alert on an absent series never fires).
    /// Also sets each source's last-received and last-accepted times to now (the
    /// start), so a silent source alerts one threshold after a restart, not at
    /// once, and exports each source's silence threshold.
    pub(crate) fn count_from_zero(&self) {
        let received = &self.metrics.webhooks_received;
        received.with_label_values(&["", "", "unknown_source"]);
        let now = unix_seconds();
        let metrics = &self.metrics;
        for source in self.sources.values() {
            let name = source.config.name.as_str();
            metrics
                .source_last_received
                .with_label_values(&[name])
                .set(now);
            metrics
                .source_last_accepted
                .with_label_values(&[name])
                .set(now);
            metrics
                .source_silence_threshold
                .with_label_values(&[name])
                .set(source.config.silence_threshold.as_secs_f64());
            for outcome in OUTCOMES {
                received.with_label_values(&[name, source.config.provider.as_str(), outcome]);
            }
        }
    }
}

/// Now as Unix seconds, for the per-source timestamp gauges.
fn unix_seconds() -> f64 {
    crate::clock::now_micros() as f64 / 1e6
}

/// The ingress router.
pub(crate) fn router(ingress: Arc<Ingress>) -> Router {
    Router::new()
        .route(
            "/webhooks/{source}",
            post(receive).fallback(|| async {
                error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "webhooks are delivered with POST",
                )
            }),
        )
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such endpoint; webhooks go to POST /webhooks/{source}",
            )
        })
        .with_state(ingress)
}

/// Most connections served at once; further clients wait in the listen backlog
/// instead of costing memory.
pub(crate) const MAX_CONNECTIONS: usize = 4096;
/// Most request headers; more get 431 from the HTTP layer.
pub(crate) const MAX_HEADERS: usize = 100;
/// Largest read buffer of one connection (its headers must fit; the body passes
/// through it in pieces): with [`MAX_CONNECTIONS`], what connections may hold
/// beside the bodies' budget (hyper's default, about 400 KiB, would let 4096
/// connections that send huge headers hold 1.6 GiB).
pub(crate) const MAX_BUFFER: usize = 32 * 1024;

/// Serves the ingress on `listener` until `shutdown` completes, then stops
/// accepting and waits (at most `drain`) for the requests in flight.
///
/// Built on hyper directly rather than `axum::serve` for what a public endpoint
/// needs: a header read timeout (a slowloris client cannot hold a connection open
/// by trickling headers), a header count limit, and a bound on connections.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    max_connections: usize,
    read_timeout: std::time::Duration,
    drain: std::time::Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;

    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let permits = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(read_timeout)
        .max_headers(MAX_HEADERS)
        .max_buf_size(MAX_BUFFER);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // With every slot taken, the shutdown signal must still be heard.
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(
            move |mut request: hyper::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                router.clone().oneshot(request.map(axum::body::Body::new))
            },
        );
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after {drain:?}; closing them");
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

async fn receive(
    State(ingress): State<Arc<Ingress>>,
    Path(source_name): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let started = Instant::now();
    let incoming = request
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let Some(source) = ingress.sources.get(&source_name) else {
        // The source label stays empty: names from the URL must not grow metric cardinality.
        ingress
            .metrics
            .webhooks_received
            .with_label_values(&["", "", "unknown_source"])
            .inc();
        return error(
            StatusCode::NOT_FOUND,
            "unknown source: check the URL against the sources in the relay's configuration",
        );
    };
    ingress
        .metrics
        .source_last_received
        .with_label_values(&[source_name.as_str()])
        .set(unix_seconds());
    // Checked before the request's span starts: only a request that passed them
    // continues its sender's trace (and obeys its sampled flag); a refused one,
    // whatever it claims, starts a trace of its own.
    let admitted = admit(&ingress, source, peer.ip(), request).await;
    let continued = incoming.filter(|_| admitted.is_ok());
    // The server span of the request, named and attributed after OpenTelemetry's
    // HTTP conventions; exported only when OTLP export is on.
    let span = tracing::info_span!("webhook",
        otel.name = "POST /webhooks/{source}", otel.kind = "server",
        http.request.method = "POST", http.route = "/webhooks/{source}",
        url.path = %format_args!("/webhooks/{source_name}"), client.address = %peer.ip(),
        http.response.status_code = tracing::field::Empty,
        source = %source_name, provider = %source.config.provider,
        trace_id = tracing::field::Empty, %peer);
    if let Some(incoming) = &continued {
        telemetry::continue_trace(&span, incoming);
    }
    // Stored with the row: the publish span continues from it. Without export, the
    // relay's own W3C context (the caller's trace, a new span id).
    let traceparent = telemetry::span_traceparent(&span)
        .unwrap_or_else(|| TraceParent::continue_or_start(continued.as_deref()).header_value());
    span.record("trace_id", traceparent.get(3..35).unwrap_or_default());
    let response = match admitted {
        Ok(admitted) => {
            store(&ingress, source, admitted, traceparent)
                .instrument(span.clone())
                .await
        }
        Err(refused) => refused,
    };
    span.record("http.response.status_code", response.status().as_u16());
    ingress
        .metrics
        .ingest_duration
        .with_label_values(&[source_name.as_str()])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// Counts a request's outcome for its source, in the metrics and the console's
/// activity.
fn count(ingress: &Ingress, source: &Source, outcome: &str) {
    let name = source.config.name.as_str();
    ingress
        .metrics
        .webhooks_received
        .with_label_values(&[name, source.config.provider.as_str(), outcome])
        .inc();
    ingress
        .activity
        .record(name, outcome, crate::clock::now_micros());
}

/// A request that passed the checks that come before storing it: from an
/// allowed address, its body read within the budget, its signature verified.
struct Admitted {
    headers: HeaderMap,
    body: Bytes,
    received: OffsetDateTime,
    /// How long the signature check took (its span is made inside the request's,
    /// which starts only once the request is admitted); `None` for an unsigned
    /// source.
    verified_in: Option<std::time::Duration>,
    /// The body's hold on the budget, given back when the request ends.
    _budget: Reservation,
}

/// Checks the client's address, reads the body within the budget and its limit,
/// and verifies its signature; or answers why not.
async fn admit(
    ingress: &Ingress,
    source: &Source,
    peer: IpAddr,
    request: Request,
) -> Result<Admitted, Response> {
    let name = source.config.name.as_str();
    let client = client_ip(peer, request.headers(), &ingress.trusted_proxies);
    if !source.config.allow_ips.is_empty() {
        let allowed =
            client.is_some_and(|ip| source.config.allow_ips.iter().any(|net| net.contains(&ip)));
        if !allowed {
            count(ingress, source, "forbidden");
            if let Some(left_out) = ingress.logs.refused.allow() {
                tracing::warn!(client = ?client, left_out,
                    "webhook refused: client address not in allow_ips (one line a second at most; see hookrelay_webhooks_received_total)");
            }
            return Err(error(
                StatusCode::FORBIDDEN,
                "client address is not allowed to post to this source",
            ));
        }
    }
    let too_large = || {
        count(ingress, source, "too_large");
        closing(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "body is larger than the relay's limit of {} bytes",
                ingress.max_body
            ),
        ))
    };
    let declared_length = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let (parts, mut body) = request.into_parts();
    let headers = parts.headers;
    if let Some(length) = declared_length.filter(|len| *len > ingress.max_body as u64) {
        if length - ingress.max_body as u64 <= LINGER_BYTES {
            linger(&mut body).await;
        }
        return Err(too_large());
    }
    let over_budget = |refusal: Refusal| {
        let (status, outcome) = match refusal {
            Refusal::Full(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Refusal::Share(_) => (StatusCode::TOO_MANY_REQUESTS, "throttled"),
        };
        count(ingress, source, outcome);
        if let Some(left_out) = ingress.logs.refused.allow() {
            tracing::warn!(client = ?client, reason = %refusal, left_out,
                "webhook refused before its body was read (one line a second at most; see hookrelay_webhooks_received_total)");
        }
        let mut response = closing(error(status, refusal.to_string()));
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        response
    };
    // A body's bytes are reserved before they are read: all that it declares at
    // once, or as they arrive when it declares nothing.
    let declared = declared_length.map_or(0, |len| usize::try_from(len).unwrap_or(usize::MAX));
    let mut reservation = match ingress.budget.reserve(client.unwrap_or(peer), declared) {
        Ok(reservation) => reservation,
        Err(refusal) => return Err(over_budget(refusal)),
    };
    let body = match read_body(
        &mut body,
        ingress.max_body,
        ingress.read_timeout,
        &mut reservation,
    )
    .await
    {
        Ok(body) => body,
        Err(BodyError::TooLarge) => {
            linger(&mut body).await;
            return Err(too_large());
        }
        Err(BodyError::OverBudget(refusal)) => return Err(over_budget(refusal)),
        Err(BodyError::Unreadable(e)) => {
            tracing::debug!(error = %e, "could not read the request body");
            return Err(error(
                StatusCode::BAD_REQUEST,
                "could not read the request body",
            ));
        }
        Err(BodyError::TimedOut) => {
            tracing::debug!("request body not received in time");
            return Err(error(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the body did not arrive within {} s",
                    ingress.read_timeout.as_secs()
                ),
            ));
        }
    };
    let received = OffsetDateTime::now_utc();
    let mut verified_in = None;
    if !source.config.allow_unsigned {
        let verifying = Instant::now();
        let verdict = source.provider.verify(&WebhookRequest {
            headers: &headers,
            body: &body,
            now: received,
        });
        verified_in = Some(verifying.elapsed());
        if let Err(e) = verdict {
            count(ingress, source, "unauthorized");
            if let Some(left_out) = ingress.logs.refused.allow() {
                match &e {
                    VerifyError::MissingCredential(key) => tracing::error!(
                        setting = %key, left_out,
                        "source `{name}` refuses its webhooks: set `{key}` (HOOKRELAY_SOURCES__{}__{}) or allow_unsigned",
                        name.to_ascii_uppercase(), key.to_ascii_uppercase()
                    ),
                    other => tracing::warn!(reason = %other, left_out,
                        "webhook refused (one line a second at most; see hookrelay_webhooks_received_total)"),
                }
            }
            return Err(error(StatusCode::UNAUTHORIZED, e.to_string()));
        }
    }
    Ok(Admitted {
        headers,
        body,
        received,
        verified_in,
        _budget: reservation,
    })
}

/// The response, with the connection closed after it (the client may still be
/// sending a body the relay will not read).
fn closing(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    response
}

/// Parses an admitted webhook, stores it and answers with its provider's ack, in
/// the request's span.
async fn store(
    ingress: &Ingress,
    source: &Source,
    admitted: Admitted,
    traceparent: String,
) -> Response {
    let name = source.config.name.as_str();
    let count = |outcome: &str| count(ingress, source, outcome);
    if let Some(took) = admitted.verified_in {
        // The check ran before the request's span began; its span says how long.
        let _verified = tracing::info_span!(
            "verify",
            otel.name = "verify signature",
            hookrelay.verify.duration_us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX)
        )
        .entered();
    }
    let Admitted {
        headers,
        body,
        received,
        _budget,
        ..
    } = admitted;
    let webhook = WebhookRequest {
        headers: &headers,
        body: &body,
        now: received,
    };
    let parsed = source.provider.parse(&webhook);
    if let Parsed::Unrecognized {
        reason,
        provider_event_type,
    } = &parsed
        && let Some(left_out) = ingress.logs.unrecognized.allow()
    {
        tracing::warn!(%reason, provider_event_type = provider_event_type.as_deref().unwrap_or(""), left_out,
            "authentic webhook not understood; stored and published as unrecognized (one line a second at most)");
    }
    let mut meta = EventMeta::new(&source.origin(), &parsed, &body, received);
    meta.verified = Some(!source.config.allow_unsigned);
    let event_id = meta.id.clone();
    let event = NewEvent {
        meta,
        headers_json: audit_headers(&headers, source.spec.credential_headers),
        body,
        received_at_us: crate::clock::micros(received),
        traceparent,
    };
    let accepted = || {
        ingress
            .metrics
            .source_last_accepted
            .with_label_values(&[name])
            .set(unix_seconds());
    };
    let commit = tracing::info_span!("outbox commit", otel.name = "outbox commit");
    let stored = match ingress.backlog.admit() {
        Ok(()) => {
            // Only a webhook that will be stored gives way; a refusal goes at once.
            ingress.pace.give_way().await;
            ingress.outbox.insert(event).instrument(commit).await
        }
        Err(full) => Err(full),
    };
    match stored {
        Ok(InsertOutcome::Inserted) => {
            ingress.wake.notify_one();
            accepted();
            count(match parsed {
                Parsed::Event(_) => "accepted",
                Parsed::Unrecognized { .. } => "unrecognized",
            });
            tracing::debug!(%event_id, "webhook stored");
        }
        Ok(InsertOutcome::Duplicate) => {
            accepted();
            count("duplicate");
            // A sender can repeat a signed webhook as often as it likes: counted
            // (outcome="duplicate") always, logged once a second at most.
            if let Some(left_out) = ingress.logs.duplicate.allow() {
                tracing::info!(%event_id, left_out,
                    "duplicate webhook acknowledged, not stored again (one line a second at most)");
            }
        }
        Err(e @ OutboxError::Unstorable { .. }) => {
            // No retry stores it: refused alone, with what is wrong with it.
            count("invalid");
            if let Some(left_out) = ingress.logs.refused.allow() {
                tracing::warn!(error = %e, left_out,
                    "webhook refused: the outbox cannot store it (one line a second at most)");
            }
            return error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string());
        }
        Err(e) => {
            count("unavailable");
            // Counted (outcome="unavailable") always, logged once a second at most:
            // a flood would otherwise also flood the logs.
            if let Some(left_out) = ingress.logs.unavailable.allow() {
                tracing::error!(error = %e, left_out, "webhook not stored; answering 503 so the provider retries");
            }
            return error(StatusCode::SERVICE_UNAVAILABLE, unavailable_message(&e));
        }
    }
    let ack = source.provider.ack();
    // Built by hand so an empty ack carries no invented Content-Type.
    let mut response = Response::new(axum::body::Body::from(ack.body));
    *response.status_mut() = ack.status;
    if let Some(content_type) = ack.content_type {
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(content_type),
        );
    }
    response
}

/// Most bytes of an oversized body read and thrown away before its 413 …
const LINGER_BYTES: u64 = 16 * 1024 * 1024;
/// … and the longest time spent on it.
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// Why a body was not read.
enum BodyError {
    /// It is larger than `HOOKRELAY_MAX_BODY`.
    TooLarge,
    /// The bodies in flight hold the budget (or this client's share of it).
    OverBudget(Refusal),
    /// The connection failed or the framing is broken.
    Unreadable(String),
    /// It did not arrive within `HOOKRELAY_READ_TIMEOUT`.
    TimedOut,
}

/// Reads the body, holding at most `max` bytes: one byte more is `TooLarge`, and
/// the rest stays unread in `body`.
async fn read_body(
    body: &mut axum::body::Body,
    max: usize,
    within: std::time::Duration,
    reservation: &mut Reservation,
) -> Result<Bytes, BodyError> {
    use http_body_util::BodyExt;
    let read = async {
        let mut bytes = bytes::BytesMut::with_capacity(reservation.bytes().min(max));
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| BodyError::Unreadable(e.to_string()))?;
            if let Some(data) = frame.data_ref() {
                let length = bytes.len() + data.len();
                if length > max {
                    return Err(BodyError::TooLarge);
                }
                reservation
                    .grow(length.saturating_sub(reservation.bytes()))
                    .map_err(BodyError::OverBudget)?;
                bytes.extend_from_slice(data);
            }
        }
        Ok(bytes.freeze())
    };
    tokio::time::timeout(within, read)
        .await
        .unwrap_or(Err(BodyError::TimedOut))
}

/// Reads and discards what the client is still sending of a body the relay will
/// not take, up to [`LINGER_BYTES`] and [`LINGER_TIME`], as nginx's lingering close
/// does: a client that writes its whole request before reading (most HTTP
/// libraries) then reads the 413 instead of a broken pipe.
async fn linger(body: &mut axum::body::Body) {
    use http_body_util::BodyExt;
    let drain = async {
        let mut drained = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            drained += frame.data_ref().map_or(0, |data| data.len() as u64);
            if drained > LINGER_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
}

/// The 503 body: what happened in a word and what the sender should do, never the
/// storage layer's own message (paths, SQL), which goes to the log.
fn unavailable_message(error: &OutboxError) -> String {
    format!(
        "the relay cannot store webhooks right now ({}); the webhook was not stored: retry later",
        error.reason()
    )
}

/// The address the request came from: the socket peer, or, when the peer is a
/// trusted proxy, the nearest `X-Forwarded-For` hop that is not a trusted proxy.
/// `None` when a believed hop is not an IP address: the client is then unknown.
fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> Option<IpAddr> {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let peer = peer.to_canonical();
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        client = hop.parse::<IpAddr>().ok()?.to_canonical();
        if !is_trusted(&client) {
            break;
        }
    }
    Some(client)
}

/// The request headers as a JSON object for the audit trail, without the
/// caller's credentials, and with the provider's `credentials` (headers that
/// authenticate other bodies too) as `[redacted]`: kept by name, so the trail
/// still says they were sent. Repeated headers are joined with `, ` as HTTP
/// allows. Written straight to text: building a `serde_json::Value` first cost
/// as much as parsing the body.
fn audit_headers(headers: &HeaderMap, credentials: &[&str]) -> String {
    struct Audit<'a>(&'a HeaderMap, &'a [&'a str]);
    impl serde::Serialize for Audit<'_> {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let kept = self
                .0
                .keys()
                .filter(|name| !SECRET_HEADERS.contains(&name.as_str()));
            serializer.collect_map(kept.map(|name| {
                if self.1.contains(&name.as_str()) {
                    // The body's redaction marker, without its JSON quotes.
                    let marker = crate::event::REDACTED.trim_matches('"');
                    return (name.as_str(), std::borrow::Cow::Borrowed(marker));
                }
                let mut values = self
                    .0
                    .get_all(name)
                    .iter()
                    .map(|v| String::from_utf8_lossy(v.as_bytes()));
                let first = values.next().unwrap_or_default();
                let joined = values.fold(first, |mut all, next| {
                    let all_mut = all.to_mut();
                    all_mut.push_str(", ");
                    all_mut.push_str(&next);
                    all
                });
                (name.as_str(), joined)
            }))
        }
    }
    // Serializing string keys and values into a String cannot fail.
    serde_json::to_string(&Audit(headers, credentials)).unwrap_or_else(|_| "{}".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhooks_are_refused_once_the_outbox_holds_its_limit() {
        let backlog = Backlog::new(3);
        assert!(backlog.admit().is_ok());
        backlog
            .pending
            .store(3, std::sync::atomic::Ordering::Relaxed);
        let full = backlog.admit().map_err(|e| (e.reason(), e.to_string()));
        assert!(
            matches!(&full, Err(("full", text)) if text.contains("HOOKRELAY_OUTBOX_MAX_PENDING")),
            "{full:?}"
        );
        backlog
            .pending
            .store(2, std::sync::atomic::Ordering::Relaxed);
        assert!(
            backlog.admit().is_ok(),
            "room again once rows were published"
        );
    }

    #[test]
    fn a_backlog_that_goes_uncounted_refuses_webhooks_until_a_count_comes() {
        use std::time::{Duration, Instant};
        let backlog = Backlog::new(1000);
        let count = |pending, ago: Duration| Counted {
            stats: crate::outbox::Stats {
                pending,
                ..crate::outbox::Stats::default()
            },
            at: Instant::now() - ago,
        };
        backlog.counted(None, Duration::from_secs(5));
        assert!(backlog.admit().is_ok(), "the first count may take a moment");
        backlog.counted(Some(&count(10, Duration::ZERO)), Duration::from_secs(6));
        assert!(backlog.admit().is_ok());
        // The counts stop coming (each times out); the last one, below the
        // limit, must not admit webhooks for ever.
        backlog.counted(
            Some(&count(10, Duration::from_secs(31))),
            Duration::from_secs(40),
        );
        let refused = backlog.admit().map_err(|e| (e.reason(), e.to_string()));
        assert!(
            matches!(&refused, Err(("uncounted", text)) if text.contains("31 s")),
            "{refused:?}"
        );
        backlog.counted(None, Duration::from_secs(45));
        assert!(backlog.admit().is_err(), "no count at all for as long");
        backlog.counted(Some(&count(10, Duration::ZERO)), Duration::from_secs(50));
        assert!(backlog.admit().is_ok(), "a count came: admitted again");
    }
    use axum::http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("cidr")];
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("203.0.113.9, 10.0.0.7"),
        );
        assert_eq!(
            client_ip(ip("10.0.0.1"), &headers, &trusted),
            Some(ip("203.0.113.9")),
            "the nearest untrusted hop behind the proxies"
        );
        assert_eq!(
            client_ip(ip("198.51.100.1"), &headers, &trusted),
            Some(ip("198.51.100.1")),
            "an untrusted peer cannot claim another address"
        );
        headers.insert("x-forwarded-for", HeaderValue::from_static("garbage"));
        assert_eq!(client_ip(ip("10.0.0.1"), &headers, &trusted), None);
        assert_eq!(
            client_ip(ip("::ffff:198.51.100.1"), &HeaderMap::new(), &trusted),
            Some(ip("198.51.100.1"))
        );
    }

    #[tokio::test]
    async fn shutdown_is_heard_when_every_connection_slot_is_taken() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            Router::new(),
            1,
            std::time::Duration::from_secs(60),
            std::time::Duration::from_millis(100),
            async {
                let _ = stopped.await;
            },
        ));
        // One idle client takes the only slot and holds it for the header timeout.
        let _idle = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let _waiting = tokio::net::TcpStream::connect(addr).await.expect("connect");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        stop.send(()).expect("signal");
        let ended = tokio::time::timeout(std::time::Duration::from_secs(5), server).await;
        assert!(ended.is_ok(), "serve returned after the shutdown signal");
    }

    #[test]
    fn a_503_body_names_the_cause_but_never_the_storage_message() {
        let fault = crate::outbox::Fault::new(
            crate::outbox::FaultKind::Io,
            "disk I/O error at /var/lib/hookrelay/outbox.db",
        );
        let body = unavailable_message(&OutboxError::Storage(fault));
        assert!(body.contains("(io)"), "{body}");
        assert!(body.contains("not stored"), "{body}");
        assert!(!body.contains("/var/lib"), "{body}");
    }

    #[test]
    fn audit_headers_drop_credentials_mask_the_providers_and_keep_body_macs() {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_static("Bearer s3cret"));
        headers.insert("signature", HeaderValue::from_static("abc123"));
        headers.insert("timestamp", HeaderValue::from_static("1700000000000"));
        headers.append("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        headers.append("x-forwarded-for", HeaderValue::from_static("5.6.7.8"));
        let json: serde_json::Value =
            serde_json::from_str(&audit_headers(&headers, &[])).expect("json");
        assert!(json.get("authorization").is_none());
        assert_eq!(json["signature"], "abc123", "a MAC of the body stays");
        assert_eq!(json["x-forwarded-for"], "1.2.3.4, 5.6.7.8");
        let json: serde_json::Value =
            serde_json::from_str(&audit_headers(&headers, &["signature"])).expect("json");
        assert_eq!(json["signature"], "[redacted]", "a credential is masked");
        assert_eq!(json["timestamp"], "1700000000000");
        assert!(json.get("authorization").is_none());
    }
}
