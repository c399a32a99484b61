//! Prometheus metrics (contract §5), on a registry of our own rather than the global one
//! so that tests can run several relays in one process.

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric the relay exports.
pub(crate) struct Metrics {
    registry: Registry,
    /// `hookrelay_webhooks_received_total{source, provider, outcome}`.
    pub(crate) webhooks_received: IntCounterVec,
    /// `hookrelay_ingest_duration_seconds{source}`: request start to ack.
    pub(crate) ingest_duration: HistogramVec,
    /// `hookrelay_events_published_total{provider, kind, status}`.
    pub(crate) events_published: IntCounterVec,
    /// `hookrelay_events_stale_total{source}`: events first published with a
    /// status behind one already published for their subject and kind.
    pub(crate) events_stale: IntCounterVec,
    /// `hookrelay_publish_failures_total{reason}`.
    pub(crate) publish_failures: IntCounterVec,
    /// `hookrelay_source_gap_seconds{source}`: seconds of the source's gaps of
    /// the last day that are not recovered (open, pending, manual, unrecovered).
    pub(crate) source_gap_seconds: prometheus::GaugeVec,
    /// `hookrelay_recovery_gaps_total{source, outcome}`: gaps settled as
    /// recovered, short, manual or unrecovered.
    pub(crate) recovery_gaps: IntCounterVec,
    /// `hookrelay_recovery_requests_total{source, kind, outcome}`: calls to a
    /// provider's API.
    pub(crate) recovery_requests: IntCounterVec,
    /// `hookrelay_recovered_events_total{source}`: events stored from a
    /// provider's answer.
    pub(crate) recovered_events: IntCounterVec,
    /// `hookrelay_publish_duration_seconds`: publish to broker confirm.
    pub(crate) publish_duration: Histogram,
    /// `hookrelay_delivery_lag_seconds`: receive to broker confirm.
    pub(crate) delivery_lag: Histogram,
    /// `hookrelay_outbox_events{state}` for pending and dead.
    pub(crate) outbox_events: IntGaugeVec,
    /// `hookrelay_outbox_held_subjects`: subjects held back by a dead row.
    pub(crate) outbox_held_subjects: IntGauge,
    /// `hookrelay_outbox_oldest_pending_seconds`.
    pub(crate) outbox_oldest_pending: prometheus::Gauge,
    /// `hookrelay_broker_connected{node}`, `hookrelay_broker_blocked`, and what
    /// the broker link is doing now.
    pub(crate) broker: BrokerGauges,
    /// `hookrelay_broker_reconnects_total{reason}`: broker connections replaced.
    pub(crate) broker_reconnects: IntCounterVec,
    /// `hookrelay_source_last_received_timestamp_seconds{source}`: last request,
    /// whatever its outcome.
    pub(crate) source_last_received: GaugeVec,
    /// `hookrelay_source_last_accepted_timestamp_seconds{source}`: last webhook
    /// acked (stored, or a duplicate of a stored one).
    pub(crate) source_last_accepted: GaugeVec,
    /// `hookrelay_source_silence_threshold_seconds{source}`: the source's
    /// `silence_threshold`, for the alert to compare against.
    pub(crate) source_silence_threshold: GaugeVec,
    /// `hookrelay_outbox_commit_batch_size`: webhooks stored per commit (group commit).
    pub(crate) outbox_commit_batch_size: Histogram,
    /// `hookrelay_outbox_commit_failures_total{reason}`: the outbox's fault kinds.
    pub(crate) outbox_commit_failures: IntCounterVec,
    /// `hookrelay_outbox_fenced_rows`: committed pending rows held behind an older,
    /// still open transaction (PostgreSQL).
    pub(crate) outbox_fenced_rows: IntGauge,
    /// `hookrelay_outbox_max_pending`: the pending rows past which ingress answers 503.
    pub(crate) outbox_max_pending: IntGauge,
    /// `hookrelay_outbox_fence_wait_seconds`: age of the oldest of those rows.
    pub(crate) outbox_fence_wait: prometheus::Gauge,
    /// `hookrelay_outbox_partitions_owned`: partitions this replica leases.
    pub(crate) outbox_partitions_owned: IntGauge,
    /// `hookrelay_outbox_fenced_settles_total`: publish outcomes refused because
    /// the lease had passed.
    pub(crate) outbox_fenced_settles: prometheus::IntCounter,
    /// `hookrelay_outbox_counted_age_seconds`: how old the outbox counts behind the
    /// gauges above are (they are counted one at a time and shared).
    pub(crate) outbox_counted_age: prometheus::Gauge,
    /// `hookrelay_outbox_unreadable_rows_total`: due rows this release could not
    /// read (written by a newer release), set aside as dead.
    pub(crate) outbox_unreadable_rows: prometheus::IntCounter,
    /// `hookrelay_admin_actions_total{action, via}`: replays run from the admin
    /// API (`api`) or the console (`console`).
    pub(crate) admin_actions: IntCounterVec,
}

/// Latency buckets from 0.5 ms to 10 s: acks are expected in milliseconds, delivery
/// lag may reach seconds during an outage.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

impl Metrics {
    /// Creates and registers every metric.
    pub(crate) fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let webhooks_received = IntCounterVec::new(
            Opts::new(
                "hookrelay_webhooks_received_total",
                "Webhooks received, by outcome",
            ),
            &["source", "provider", "outcome"],
        )?;
        let ingest_duration = HistogramVec::new(
            HistogramOpts::new(
                "hookrelay_ingest_duration_seconds",
                "Request start to ack (includes the outbox commit)",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["source"],
        )?;
        let events_published = IntCounterVec::new(
            Opts::new(
                "hookrelay_events_published_total",
                "Events confirmed by the broker",
            ),
            &["provider", "kind", "status"],
        )?;
        let events_stale = IntCounterVec::new(
            Opts::new(
                "hookrelay_events_stale_total",
                "Events published with stale=true: their status is behind one already published for their subject and kind",
            ),
            &["source"],
        )?;
        let source_gap_seconds = prometheus::GaugeVec::new(
            Opts::new(
                "hookrelay_source_gap_seconds",
                "Seconds of the source's gaps of the last day (no relay up, or its webhooks refused) that are not recovered",
            ),
            &["source"],
        )?;
        let recovery_gaps = IntCounterVec::new(
            Opts::new(
                "hookrelay_recovery_gaps_total",
                "Gaps settled, by outcome: recovered, short (left to the provider's retries), manual, unrecovered",
            ),
            &["source", "outcome"],
        )?;
        let recovery_requests = IntCounterVec::new(
            Opts::new(
                "hookrelay_recovery_requests_total",
                "Calls to a provider's API to recover webhooks, by kind (resend, status) and outcome",
            ),
            &["source", "kind", "outcome"],
        )?;
        let recovered_events = IntCounterVec::new(
            Opts::new(
                "hookrelay_recovered_events_total",
                "Events stored from a provider's status answer (recovered=true)",
            ),
            &["source"],
        )?;
        let publish_failures = IntCounterVec::new(
            Opts::new(
                "hookrelay_publish_failures_total",
                "Publish attempts that were not confirmed",
            ),
            &["reason"],
        )?;
        let publish_duration = Histogram::with_opts(
            HistogramOpts::new(
                "hookrelay_publish_duration_seconds",
                "Publish to broker confirm",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )?;
        let delivery_lag = Histogram::with_opts(
            HistogramOpts::new(
                "hookrelay_delivery_lag_seconds",
                "Receive to broker confirm",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 1800.0, 3600.0,
            ]),
        )?;
        let outbox_events = IntGaugeVec::new(
            Opts::new("hookrelay_outbox_events", "Outbox rows by state"),
            &["state"],
        )?;
        let outbox_oldest_pending = prometheus::Gauge::new(
            "hookrelay_outbox_oldest_pending_seconds",
            "Age of the oldest pending outbox row (0 when none)",
        )?;
        let per_source = |name: &str, help: &str| GaugeVec::new(Opts::new(name, help), &["source"]);
        let source_last_received = per_source(
            "hookrelay_source_last_received_timestamp_seconds",
            "Last request for the source, whatever its outcome (the relay's start time until then)",
        )?;
        let source_last_accepted = per_source(
            "hookrelay_source_last_accepted_timestamp_seconds",
            "Last webhook of the source that got the provider's ack (the relay's start time until then)",
        )?;
        let source_silence_threshold = per_source(
            "hookrelay_source_silence_threshold_seconds",
            "How long the source may go without an accepted webhook (its silence_threshold)",
        )?;
        let outbox_held_subjects = IntGauge::new(
            "hookrelay_outbox_held_subjects",
            "Subjects whose later events wait behind a dead row nobody replayed or released",
        )?;
        let broker_connected = IntGaugeVec::new(
            Opts::new(
                "hookrelay_broker_connected",
                "1 for the broker node the publisher has a channel on, 0 for the others",
            ),
            &["node"],
        )?;
        let broker_blocked = IntGauge::new(
            "hookrelay_broker_blocked",
            "1 while the broker blocks the publisher's connection (a memory or disk alarm)",
        )?;
        let broker_reconnects = IntCounterVec::new(
            Opts::new(
                "hookrelay_broker_reconnects_total",
                "Broker connections the publisher replaced, by why (lost, timeout, blocked, nacked)",
            ),
            &["reason"],
        )?;
        for reason in ["lost", "timeout", "blocked", "nacked"] {
            broker_reconnects.with_label_values(&[reason]).inc_by(0);
        }
        let outbox_commit_batch_size = Histogram::with_opts(
            HistogramOpts::new(
                "hookrelay_outbox_commit_batch_size",
                "Webhooks stored per outbox commit (group commit)",
            )
            .buckets(vec![
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0,
            ]),
        )?;
        let outbox_commit_failures = IntCounterVec::new(
            Opts::new(
                "hookrelay_outbox_commit_failures_total",
                "Outbox transactions that failed (every request in them got 503), by reason",
            ),
            &["reason"],
        )?;
        let outbox_fenced_rows = IntGauge::new(
            "hookrelay_outbox_fenced_rows",
            "Committed pending rows the publisher may not read yet because an older transaction is still open (PostgreSQL; 0 on SQLite)",
        )?;
        let outbox_max_pending = IntGauge::new(
            "hookrelay_outbox_max_pending",
            "Pending outbox rows past which webhooks are answered with 503 (HOOKRELAY_OUTBOX_MAX_PENDING)",
        )?;
        let outbox_fence_wait = prometheus::Gauge::new(
            "hookrelay_outbox_fence_wait_seconds",
            "Age of the oldest committed pending row held behind an older, still open transaction (PostgreSQL; 0 when none, and on SQLite)",
        )?;
        let outbox_partitions_owned = IntGauge::new(
            "hookrelay_outbox_partitions_owned",
            "Subject partitions this replica leases and publishes (PostgreSQL; 0 on SQLite)",
        )?;
        let outbox_fenced_settles = prometheus::IntCounter::new(
            "hookrelay_outbox_fenced_settles_total",
            "Publish outcomes refused because this replica's lease had passed (their rows are published again by the new owner)",
        )?;
        registry.register(Box::new(outbox_fenced_rows.clone()))?;
        registry.register(Box::new(outbox_fence_wait.clone()))?;
        registry.register(Box::new(outbox_max_pending.clone()))?;
        registry.register(Box::new(outbox_partitions_owned.clone()))?;
        registry.register(Box::new(outbox_fenced_settles.clone()))?;
        let outbox_counted_age = prometheus::Gauge::new(
            "hookrelay_outbox_counted_age_seconds",
            "Age of the outbox counts behind the outbox gauges: they are counted one at a time, and a slow count is served late rather than started again",
        )?;
        registry.register(Box::new(outbox_counted_age.clone()))?;
        let outbox_unreadable_rows = prometheus::IntCounter::new(
            "hookrelay_outbox_unreadable_rows_total",
            "Due rows this release could not read (a newer release wrote them), set aside as dead; a release that reads them replays them when it starts",
        )?;
        registry.register(Box::new(outbox_unreadable_rows.clone()))?;
        let admin_actions = IntCounterVec::new(
            Opts::new(
                "hookrelay_admin_actions_total",
                "Replays run by operators, by where they came from",
            ),
            &["action", "via"],
        )?;
        registry.register(Box::new(admin_actions.clone()))?;
        for via in ["api", "console"] {
            admin_actions.with_label_values(&["replay", via]);
        }
        registry.register(Box::new(webhooks_received.clone()))?;
        registry.register(Box::new(ingest_duration.clone()))?;
        registry.register(Box::new(events_published.clone()))?;
        registry.register(Box::new(events_stale.clone()))?;
        registry.register(Box::new(publish_failures.clone()))?;
        registry.register(Box::new(source_gap_seconds.clone()))?;
        registry.register(Box::new(recovery_gaps.clone()))?;
        registry.register(Box::new(recovery_requests.clone()))?;
        registry.register(Box::new(recovered_events.clone()))?;
        registry.register(Box::new(publish_duration.clone()))?;
        registry.register(Box::new(delivery_lag.clone()))?;
        registry.register(Box::new(outbox_events.clone()))?;
        registry.register(Box::new(outbox_oldest_pending.clone()))?;
        registry.register(Box::new(broker_connected.clone()))?;
        registry.register(Box::new(broker_blocked.clone()))?;
        registry.register(Box::new(broker_reconnects.clone()))?;
        registry.register(Box::new(outbox_held_subjects.clone()))?;
        registry.register(Box::new(source_last_received.clone()))?;
        registry.register(Box::new(source_last_accepted.clone()))?;
        registry.register(Box::new(source_silence_threshold.clone()))?;
        registry.register(Box::new(outbox_commit_batch_size.clone()))?;
        registry.register(Box::new(outbox_commit_failures.clone()))?;
        for state in ["pending", "dead"] {
            outbox_events.with_label_values(&[state]).set(0);
        }
        let build_info = IntGaugeVec::new(
            Opts::new("hookrelay_build_info", "Always 1; the version is the label"),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        registry.register(Box::new(build_info))?;
        // CPU, memory, file descriptors and start time of this process.
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Self {
            registry,
            webhooks_received,
            ingest_duration,
            events_published,
            events_stale,
            publish_failures,
            source_gap_seconds,
            recovery_gaps,
            recovery_requests,
            recovered_events,
            publish_duration,
            delivery_lag,
            outbox_events,
            outbox_oldest_pending,
            outbox_held_subjects,
            source_last_received,
            source_last_accepted,
            source_silence_threshold,
            broker: BrokerGauges {
                connected: broker_connected,
                blocked: broker_blocked,
                now: std::sync::Mutex::default(),
            },
            broker_reconnects,
            outbox_commit_batch_size,
            outbox_commit_failures,
            outbox_fenced_rows,
            outbox_fence_wait,
            outbox_max_pending,
            outbox_partitions_owned,
            outbox_fenced_settles,
            outbox_counted_age,
            outbox_unreadable_rows,
            admin_actions,
        })
    }

    /// The registry in Prometheus text format.
    pub(crate) fn render(&self) -> Result<String, prometheus::Error> {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

/// Which broker node the publisher is on and whether it is blocked: the gauges,
/// and the same state for `/readyz`, the console and the leases.
pub(crate) struct BrokerGauges {
    connected: IntGaugeVec,
    blocked: IntGauge,
    now: std::sync::Mutex<BrokerNow>,
}

/// The broker link's state at one moment.
#[derive(Debug, Clone, Default)]
pub(crate) struct BrokerNow {
    /// The node (`host:port`) the publisher has a channel on, if any.
    pub(crate) node: Option<String>,
    /// Since when the broker has blocked that connection.
    pub(crate) blocked_since: Option<std::time::Instant>,
}

impl BrokerGauges {
    /// Exports every configured node at 0, so a dashboard lists them all.
    pub(crate) fn nodes<'a>(&self, nodes: impl IntoIterator<Item = &'a str>) {
        for node in nodes {
            self.connected.with_label_values(&[node]).set(0);
        }
    }

    /// The publisher has a channel on `node`, or (`None`) on no node.
    pub(crate) fn on(&self, node: Option<&str>) {
        let mut now = self.lock();
        if let Some(was) = now.node.take() {
            self.connected.with_label_values(&[was.as_str()]).set(0);
        }
        if let Some(node) = node {
            self.connected.with_label_values(&[node]).set(1);
        }
        now.node = node.map(str::to_owned);
        if node.is_none() {
            now.blocked_since = None;
            self.blocked.set(0);
        }
    }

    /// The broker blocked (or unblocked) the current connection.
    pub(crate) fn set_blocked(&self, blocked: bool) {
        let mut now = self.lock();
        match (blocked, now.blocked_since) {
            (true, None) => now.blocked_since = Some(std::time::Instant::now()),
            (false, Some(_)) => now.blocked_since = None,
            _ => {}
        }
        self.blocked.set(i64::from(blocked));
    }

    /// The state now.
    pub(crate) fn now(&self) -> BrokerNow {
        self.lock().clone()
    }

    /// Whether the publisher has a channel on some node.
    pub(crate) fn is_connected(&self) -> bool {
        self.lock().node.is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BrokerNow> {
        // The state is replaced whole, so a panic elsewhere cannot leave it torn.
        self.now
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
