//! Rows as the operator sees them: the admin API, the console and the `outbox`
//! commands show the same [`RowView`], with times in RFC 3339 and the body
//! redacted as the published message redacts it, unless the raw bytes are asked
//! for on the box (`outbox show --raw`).

use super::Attempt;
use super::row::{FullRow, Row};
use crate::event::EventMeta;

/// One row as the admin API, the console and the `outbox` commands present it.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct RowView {
    /// Row id (received order; the paging cursor).
    pub(crate) id: i64,
    /// Event id (the published `message_id`).
    pub(crate) event_id: String,
    /// Source name.
    pub(crate) source: String,
    /// Provider name.
    pub(crate) provider: String,
    /// Kind (`unrecognized` for an event that could not be parsed).
    pub(crate) kind: String,
    /// Normalized status (`unrecognized` likewise).
    pub(crate) status: String,
    /// The provider's status, as sent.
    pub(crate) provider_status: Option<String>,
    /// Ordering subject (the provider's order or record id).
    pub(crate) subject: String,
    /// Amount, as sent.
    pub(crate) amount: Option<String>,
    /// Currency, as sent.
    pub(crate) currency: Option<String>,
    /// Routing key it is published with.
    pub(crate) routing_key: String,
    /// State.
    pub(crate) state: String,
    /// Publish attempts so far.
    pub(crate) attempts: u32,
    /// Of those, the permanent failures.
    pub(crate) permanent_attempts: u32,
    /// When an operator released this dead row's subject, RFC 3339.
    pub(crate) released_at: Option<String>,
    /// Last publish error.
    pub(crate) last_error: Option<String>,
    /// Receive time, RFC 3339.
    pub(crate) received_at: String,
    /// Next attempt time (pending rows), RFC 3339.
    pub(crate) next_attempt_at: String,
    /// When the broker confirmed it, RFC 3339.
    pub(crate) published_at: Option<String>,
    /// Idempotency key.
    pub(crate) idempotency_key: String,
    /// The `sequence` it was first published with; absent until then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) sequence: Option<i64>,
    /// Whether it was published as `stale`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(crate) stale: bool,
    /// Audit headers (only with `show`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) headers: Option<serde_json::Value>,
    /// The raw body (only with `show`).
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "body_text")]
    pub(crate) body: Option<Vec<u8>>,
    /// W3C `traceparent` the message carries (only with `show`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) traceparent: Option<String>,
    /// Failed publish attempts, oldest first, the last [`ATTEMPTS_KEPT`](super::ATTEMPTS_KEPT) of them
    /// (only with `show`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) failures: Option<Vec<AttemptView>>,
    /// The stored metadata, from which the CloudEvent is built.
    #[serde(skip)]
    pub(crate) meta: Option<EventMeta>,
}

/// Which body a view of a stored row shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Body {
    /// With the source's redaction applied, as the published message carries it:
    /// every view but one.
    AsPublished,
    /// The bytes as received (`outbox show --raw`, on the box only).
    AsReceived,
}

impl RowView {
    /// A row of a list or a timeline.
    pub(crate) fn of(row: Row) -> Self {
        let time = shown_time;
        let (kind, status) = match &row.meta {
            Some(meta) => meta.kind_status(),
            None => ("unreadable", "unreadable"),
        };
        let meta = row.meta.as_ref();
        Self {
            id: row.id,
            kind: kind.to_owned(),
            status: status.to_owned(),
            provider_status: meta.and_then(|m| m.provider_status.clone()),
            amount: meta.and_then(|m| m.amount.clone()),
            currency: meta.and_then(|m| m.currency.clone()),
            event_id: row.event_id,
            source: row.source,
            provider: row.provider,
            subject: row.subject,
            routing_key: row.routing_key,
            state: row.state,
            attempts: row.attempts,
            permanent_attempts: row.permanent_attempts,
            released_at: row.released_at_us.map(time),
            last_error: row.last_error,
            received_at: time(row.received_at_us),
            // New rows are due at once (0): shown as due since they arrived.
            next_attempt_at: time(row.next_attempt_at_us.max(row.received_at_us)),
            published_at: row.published_at_us.map(time),
            idempotency_key: row.idempotency_key,
            sequence: row.sequence,
            stale: row.stale,
            headers: None,
            body: None,
            traceparent: None,
            failures: None,
            meta: row.meta,
        }
    }

    /// One row with its headers, body (as `body` says), traceparent and failures.
    pub(crate) fn full(full: FullRow, body: Body) -> Self {
        let shown = match body {
            Body::AsReceived => full.body,
            Body::AsPublished => redacted(full.body, full.row.meta.as_ref()),
        };
        Self {
            headers: serde_json::from_str(&full.headers).ok(),
            body: Some(shown),
            traceparent: Some(full.traceparent),
            failures: Some(full.failures.into_iter().map(AttemptView::of).collect()),
            ..Self::of(full.row)
        }
    }
}

/// The body as the published message carries it: the string values at the
/// source's redaction paths (as they were when the row was stored) replaced. A
/// body that is not JSON text is shown as it is, as it is published.
fn redacted(body: Vec<u8>, meta: Option<&EventMeta>) -> Vec<u8> {
    let paths = meta.map_or(&[][..], |meta| &meta.redact[..]);
    std::str::from_utf8(&body)
        .ok()
        .and_then(|text| crate::event::redact(text, paths))
        .map_or(body, String::into_bytes)
}

/// One failed publish attempt, as shown.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct AttemptView {
    /// When it was recorded, RFC 3339.
    pub(crate) at: String,
    /// What the row became: `retry` or `dead`.
    pub(crate) outcome: String,
    /// Why it failed.
    pub(crate) error: String,
}

impl AttemptView {
    fn of(attempt: Attempt) -> Self {
        Self {
            at: shown_time(attempt.at_us),
            outcome: attempt.outcome,
            error: attempt.error,
        }
    }
}

/// Bodies are shown as text when they are UTF-8, else as base64, so `--json`
/// output is always valid JSON and never alters a readable body.
fn body_text<S: serde::Serializer>(body: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
    use base64::Engine;
    match body {
        None => s.serialize_none(),
        Some(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => s.serialize_str(text),
            Err(_) => s.serialize_str(&format!(
                "base64:{}",
                base64::engine::general_purpose::STANDARD.encode(bytes)
            )),
        },
    }
}

/// A stored time (Unix microseconds) as views print it: RFC 3339, or the raw
/// number when it is out of range.
pub(crate) fn shown_time(us: i64) -> String {
    crate::clock::from_micros(us).map_or_else(|| us.to_string(), crate::event::rfc3339)
}
