//! Logging, W3C trace context, and OpenTelemetry trace export.
//!
//! Spans are exported over OTLP (HTTP/protobuf) only when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set;
//! the SDK reads the other standard variables (`OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER[_ARG]`,
//! `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_BSP_*`). The batch processor runs on a
//! thread of its own with a blocking HTTP client: an async client there panics and
//! then exports nothing (opentelemetry-rust #3125). Its queue is bounded and it
//! drops spans rather than wait, so an unreachable collector never slows ingest.

use std::sync::OnceLock;

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_sdk::trace::SdkTracerProvider;
use rand::RngCore;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::config::LogFormat;

/// The exporting tracer provider, kept to flush it at shutdown.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// The service name when neither `OTEL_SERVICE_NAME` nor `OTEL_RESOURCE_ATTRIBUTES`
/// names one (the SDK's own default is `unknown_service`).
const SERVICE_NAME: &str = "hookrelay";

/// Installs the global subscriber: logs with their level from `RUST_LOG` (default
/// `info`) in the format of `HOOKRELAY_LOG_FORMAT`, and, when an OTLP endpoint is
/// set, this crate's spans exported over OTLP. Call it outside any async runtime:
/// the blocking HTTP client of the exporter must not be built inside one.
pub(crate) fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let logs = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer().with_ansi(ansi).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .boxed(),
    }
    .with_filter(filter);
    let (traces, problem) = match otlp_provider() {
        Ok(Some(provider)) => {
            let tracer = provider.tracer("hookrelay");
            let _ = PROVIDER.set(provider);
            let only_ours = tracing_subscriber::filter::Targets::new()
                .with_target("hookrelay", tracing::Level::INFO);
            (
                Some(
                    tracing_opentelemetry::layer()
                        .with_tracer(tracer)
                        .with_filter(only_ours),
                ),
                None,
            )
        }
        Ok(None) => (None, None),
        Err(problem) => (None, Some(problem)),
    };
    // A second init (tests) keeps the first subscriber; nothing to report.
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init();
    if let Some(problem) = problem {
        tracing::warn!(%problem, "traces are not exported");
    }
}

/// The OTLP exporting provider, when an endpoint is set.
fn otlp_provider() -> Result<Option<SdkTracerProvider>, String> {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    if !set("OTEL_EXPORTER_OTLP_ENDPOINT") && !set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        return Ok(None);
    }
    for name in [
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    ] {
        if let Ok(protocol) = std::env::var(name)
            && !protocol.trim().is_empty()
            && protocol.trim() != "http/protobuf"
        {
            return Err(format!(
                "{name}={protocol} is not supported: this build exports http/protobuf only"
            ));
        }
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| format!("cannot build the OTLP exporter: {e}"))?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    let named = set("OTEL_SERVICE_NAME")
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|a| a.contains("service.name="));
    if !named {
        resource = resource.with_service_name(SERVICE_NAME);
    }
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build(),
    ))
}

/// For a command whose standard output is its answer: the `hookrelay::audit`
/// lines and warnings go to standard error.
pub(crate) fn init_audit_to_stderr() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "warn,hookrelay::audit=info",
        ))
        .try_init();
}

/// Exports the spans still buffered, waiting at most `within`. Blocking: call it
/// from a blocking thread.
pub(crate) fn flush_traces(within: std::time::Duration) {
    if let Some(provider) = PROVIDER.get()
        && let Err(e) = provider.shutdown_with_timeout(within)
    {
        tracing::warn!(error = %e, "buffered spans were not all exported at shutdown");
    }
}

/// The OpenTelemetry context of a `traceparent` value, to continue its trace.
fn remote_context(header: &str) -> Option<opentelemetry::Context> {
    let (trace_id, parent_id, flags) = parse_full(header)?;
    let span_context = SpanContext::new(
        TraceId::from_hex(&trace_id).ok()?,
        SpanId::from_hex(&parent_id).ok()?,
        TraceFlags::new(flags),
        true,
        TraceState::default(),
    );
    Some(opentelemetry::Context::new().with_remote_span_context(span_context))
}

/// Makes `span` continue the trace of `traceparent` (when spans are exported).
pub(crate) fn continue_trace(span: &tracing::Span, traceparent: &str) {
    if let Some(parent) = remote_context(traceparent) {
        let _ = span.set_parent(parent);
    }
}

/// The `traceparent` of an exported span: its own trace and span id. `None` when
/// spans are not exported (the span has no OpenTelemetry context).
pub(crate) fn span_traceparent(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let span_ref = context.span();
    let current = span_ref.span_context();
    current.is_valid().then(|| {
        TraceParent {
            trace_id: current.trace_id().to_string(),
            span_id: current.span_id().to_string(),
            flags: current.trace_flags().to_u8(),
        }
        .header_value()
    })
}

/// At most one log line per interval for a kind of event that a sender controls
/// (refusals, unrecognized bodies): a sender can cause thousands a second, and the
/// counters, not the log, are the signal. The lines left out are counted and
/// reported with the next line written.
pub(crate) struct Throttle {
    every: std::time::Duration,
    state: std::sync::Mutex<ThrottleState>,
}

struct ThrottleState {
    next: Option<std::time::Instant>,
    suppressed: u64,
}

impl Throttle {
    /// One line per `every` at most.
    pub(crate) const fn new(every: std::time::Duration) -> Self {
        Self {
            every,
            state: std::sync::Mutex::new(ThrottleState {
                next: None,
                suppressed: 0,
            }),
        }
    }

    /// `Some(left_out)` when a line may be written now, `left_out` being how many
    /// were left out since the last one; `None` when this one is left out.
    pub(crate) fn allow(&self) -> Option<u64> {
        let now = std::time::Instant::now();
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.next.is_some_and(|next| now < next) {
            state.suppressed += 1;
            return None;
        }
        state.next = Some(now + self.every);
        Some(std::mem::take(&mut state.suppressed))
    }
}

/// A W3C trace context (`traceparent`, version 00).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TraceParent {
    /// 32 lower-case hex digits.
    pub(crate) trace_id: String,
    /// 16 lower-case hex digits: this relay's span.
    pub(crate) span_id: String,
    /// Trace flags (bit 0: sampled).
    pub(crate) flags: u8,
}

impl TraceParent {
    /// Continues the caller's trace when it sent a valid `traceparent` (keeping its
    /// trace id and flags, with a new span id for the relay), or starts a new one.
    pub(crate) fn continue_or_start(header: Option<&str>) -> Self {
        let span_id = random_hex::<8>();
        match header.and_then(parse) {
            Some((trace_id, flags)) => Self {
                trace_id,
                span_id,
                flags,
            },
            None => Self {
                trace_id: random_hex::<16>(),
                span_id,
                flags: 1,
            },
        }
    }

    /// The header value.
    pub(crate) fn header_value(&self) -> String {
        format!("00-{}-{}-{:02x}", self.trace_id, self.span_id, self.flags)
    }
}

fn parse(value: &str) -> Option<(String, u8)> {
    parse_full(value).map(|(trace_id, _, flags)| (trace_id, flags))
}

/// Trace id, parent span id and flags of a valid version-00 `traceparent`.
fn parse_full(value: &str) -> Option<(String, String, u8)> {
    let mut parts = value.trim().split('-');
    let (version, trace_id, parent_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let is_hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if version != "00" || parts.next().is_some() {
        return None;
    }
    if !is_hex(trace_id, 32) || !is_hex(parent_id, 16) || !is_hex(flags, 2) {
        return None;
    }
    if trace_id.bytes().all(|b| b == b'0') || parent_id.bytes().all(|b| b == b'0') {
        return None;
    }
    Some((
        trace_id.to_owned(),
        parent_id.to_owned(),
        u8::from_str_radix(flags, 16).ok()?,
    ))
}

fn random_hex<const N: usize>() -> String {
    let mut bytes = [0u8; N];
    loop {
        rand::rng().fill_bytes(&mut bytes);
        if bytes.iter().any(|b| *b != 0) {
            return hex::encode(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttle_writes_one_line_per_interval_and_counts_the_rest() {
        let throttle = Throttle::new(std::time::Duration::from_secs(3600));
        assert_eq!(throttle.allow(), Some(0));
        for _ in 0..999 {
            assert_eq!(throttle.allow(), None);
        }
        let open = Throttle::new(std::time::Duration::ZERO);
        assert_eq!(open.allow(), Some(0));
        assert_eq!(open.allow(), Some(0));
    }

    #[test]
    fn a_valid_traceparent_keeps_its_trace_id_with_a_new_span() {
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let tp = TraceParent::continue_or_start(Some(incoming));
        assert_eq!(tp.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(tp.span_id, "00f067aa0ba902b7");
        assert!(
            tp.header_value()
                .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
        );
        assert!(tp.header_value().ends_with("-01"));
    }

    #[test]
    fn garbage_starts_a_new_trace() {
        for bad in [
            "",
            "00-xyz",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            let tp = TraceParent::continue_or_start(Some(bad));
            assert_eq!(tp.trace_id.len(), 32, "{bad}");
            assert_ne!(tp.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        }
    }
}
