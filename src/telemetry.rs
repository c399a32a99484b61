//! Logging setup and W3C trace context.

use rand::RngCore;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber: level from `RUST_LOG` (default `info`), format
/// from `HOOKRELAY_LOG_FORMAT`.
pub(crate) fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    // A second init (tests) keeps the first subscriber; nothing to report.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
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
    Some((trace_id.to_owned(), u8::from_str_radix(flags, 16).ok()?))
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
