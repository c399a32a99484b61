//! Providers: how each payment gateway authenticates, acknowledges and describes its
//! webhooks.
//!
//! A provider is one file implementing [`Provider`], plus one line in [`REGISTRY`].
//! Ingress calls [`Provider::verify`] on the raw bytes before anything parses them,
//! then [`Provider::parse`] to learn the routing facts, and answers with
//! [`Provider::ack`]. Nothing outside this folder knows a provider by name.

use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use serde_json::Value;
use time::OffsetDateTime;

use crate::config::SourceConfig;
use crate::event::{Kind, Status};

pub mod whitepay;

/// Everything the relay knows about a provider before a source is built from it.
pub struct ProviderSpec {
    /// Provider name: config value, routing-key prefix, metric label.
    pub name: &'static str,
    /// Source keys this provider reads, besides the common ones of SPEC §6.
    pub keys: &'static [&'static str],
    /// Keys whose values are secrets: masked in `check-config`, never logged.
    pub secret_keys: &'static [&'static str],
    /// Builds the provider for one source from that source's settings.
    pub build: fn(&SourceConfig) -> Result<Box<dyn Provider>, BuildError>,
}

/// The built-in providers. Adding one is a line here.
pub static REGISTRY: &[ProviderSpec] = &[whitepay::SPEC];

/// Looks a provider up by name.
pub fn find(name: &str) -> Option<&'static ProviderSpec> {
    REGISTRY.iter().find(|spec| spec.name == name)
}

/// One inbound webhook as the verifier sees it.
pub struct WebhookRequest<'a> {
    /// Request headers (names are lower case).
    pub headers: &'a HeaderMap,
    /// The raw body, exactly as received.
    pub body: &'a [u8],
    /// The receive time, for timestamp windows.
    pub now: OffsetDateTime,
}

/// A provider bound to one source's credentials.
pub trait Provider: Send + Sync {
    /// Settings this source needs for verification but does not have. A source
    /// with missing credentials refuses its webhooks unless it allows unsigned ones.
    fn missing_credentials(&self) -> Vec<&'static str>;

    /// Authenticates the request from its raw bytes. Comparisons are constant-time.
    fn verify(&self, request: &WebhookRequest<'_>) -> Result<(), VerifyError>;

    /// Extracts the routing facts from an authentic body. Anything that does not fit
    /// the provider's mapping tables is [`Parsed::Unrecognized`], never guessed.
    fn parse(&self, body: &[u8]) -> Parsed;

    /// The acknowledgement this provider expects for an accepted webhook (new,
    /// duplicate or unrecognized alike).
    fn ack(&self) -> Ack;
}

/// A source setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A value is present but malformed.
    #[error("invalid value for `{key}`: {reason}")]
    Invalid {
        /// The source key.
        key: &'static str,
        /// What is wrong and what is expected.
        reason: String,
    },
}

/// Why a webhook was not accepted as authentic. The text is sent to the caller in the
/// 401 body, so it names what is wrong and never echoes a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The source has no credentials to check against.
    #[error("this source is not configured to verify webhooks (missing setting `{0}`)")]
    MissingCredential(&'static str),
    /// A required header is absent.
    #[error("missing `{0}` header")]
    MissingHeader(&'static str),
    /// A header is present but malformed (not hex, not a number, …).
    #[error("malformed `{0}` header")]
    MalformedHeader(&'static str),
    /// The signature does not match the body.
    #[error("signature does not match the request body")]
    BadSignature,
}

/// The provider's expected reply to an accepted webhook.
#[derive(Debug, Clone)]
pub struct Ack {
    /// HTTP status.
    pub status: StatusCode,
    /// `Content-Type`, when the body has one.
    pub content_type: Option<&'static str>,
    /// Reply body.
    pub body: Bytes,
}

/// What an authentic body says, normalized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized {
    /// Unique per source: a second webhook with the same key is a duplicate.
    pub idempotency_key: String,
    /// Event kind.
    pub kind: Kind,
    /// Normalized status.
    pub status: Status,
    /// The provider's id of the thing the event is about; events that share a
    /// subject are published in received order.
    pub subject: String,
    /// The provider's event type, as sent.
    pub provider_event_type: Option<String>,
    /// The provider's status, as sent.
    pub provider_status: Option<String>,
    /// The provider's order id.
    pub order_id: Option<String>,
    /// The merchant's own order id.
    pub merchant_order_id: Option<String>,
    /// Amount as the literal decimal text the provider sent.
    pub amount: Option<String>,
    /// Currency as sent.
    pub currency: Option<String>,
    /// When the provider says the event happened.
    pub event_time: Option<OffsetDateTime>,
}

/// The outcome of [`Provider::parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A body that fits the provider's tables.
    Event(Box<Normalized>),
    /// An authentic body that does not: kept and published as `{provider}.unrecognized`.
    Unrecognized {
        /// Why, for the logs.
        reason: String,
        /// The provider's event type, when one could be read, for the logs.
        provider_event_type: Option<String>,
    },
}

impl Parsed {
    /// An unrecognized outcome with its reason.
    pub fn unrecognized(reason: impl Into<String>, provider_event_type: Option<String>) -> Self {
        Self::Unrecognized {
            reason: reason.into(),
            provider_event_type,
        }
    }
}

/// The literal text of a JSON string or number (numbers keep their exact digits
/// because `serde_json` is built with `arbitrary_precision`); `None` for anything else.
pub fn json_text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Parses `YYYY-MM-DD HH:MM:SS`, a format several providers use without a zone; the
/// relay reads it as UTC (documented in `docs/ARCHITECTURE.md`).
pub fn parse_naive_utc(text: &str) -> Option<OffsetDateTime> {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    time::PrimitiveDateTime::parse(text, &format)
        .ok()
        .map(time::PrimitiveDateTime::assume_utc)
}

/// Reads a header as text; `None` when absent, an error when not visible ASCII.
pub fn header<'a>(
    headers: &'a HeaderMap,
    name: &'static str,
) -> Result<Option<&'a str>, VerifyError> {
    match headers.get(name) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .map(|s| Some(s.trim()))
            .map_err(|_| VerifyError::MalformedHeader(name)),
    }
}
