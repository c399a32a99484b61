//! What a provider's own API offers to recover webhooks that never reached the
//! relay (`docs/recovery.md`), as pure functions: the request to send and the
//! reading of its answer. Sending is `recovery`'s; nothing here does I/O.
//!
//! Two tools exist among the providers: a **resend** of every webhook of a time
//! window (CCPayment), and a **status query** of one subject the relay has seen,
//! whose answer the provider turns into a webhook body of its own format, so that
//! [`Provider::parse`](super::Provider::parse) gives it the idempotency key the
//! real webhook of that status has.

use std::time::Duration;

use axum::http::HeaderMap;
use time::OffsetDateTime;

use crate::event::Kind;

/// A request to a provider's API, relative to the source's API base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiRequest {
    /// `GET` or `POST`.
    pub method: &'static str,
    /// Path and query, appended to the base URL.
    pub path: String,
    /// Headers, authentication included.
    pub headers: Vec<(&'static str, String)>,
    /// The exact body that was signed (empty for a `GET`).
    pub body: Vec<u8>,
}

/// A provider's answer, as received.
pub struct ApiAnswer<'a> {
    /// HTTP status.
    pub status: u16,
    /// Response headers (names lower case).
    pub headers: &'a HeaderMap,
    /// The raw body.
    pub body: &'a [u8],
}

/// Why an answer brings nothing. Every kind is retried with backoff and counted
/// under its own outcome; none is taken as a success.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The provider could not answer now (5xx, its rate limit, a clock off by
    /// minutes): worth asking again later.
    #[error("{0}")]
    Transient(String),
    /// The provider said no to what was asked (credentials, IP allow-list, a
    /// window it will not take): needs a person, so it alerts.
    #[error("{0}")]
    Refused(String),
    /// The answer's signature does not match: it is not trusted, whatever it says.
    #[error("{0}")]
    Untrusted(String),
    /// The provider does not know what was asked for here; the next request of
    /// the list may.
    #[error("{0}")]
    NotFound(String),
}

impl ApiError {
    /// The `outcome` label of `hookrelay_recovery_requests_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Transient(_) => "failed",
            Self::Refused(_) => "refused",
            Self::Untrusted(_) => "untrusted",
            Self::NotFound(_) => "not_found",
        }
    }
}

/// At most `calls` calls in any `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// The length of the sliding window.
    pub per: Duration,
    /// The calls allowed in it.
    pub calls: u32,
}

/// The status queries recovery makes of a source at most: a stuck subject is
/// no emergency, and no provider documents a lower limit.
pub(crate) const STATUS_QUERIES: &[Limit] = &[Limit {
    per: Duration::from_secs(60),
    calls: 30,
}];

/// `api`, when none of its credentials is missing; else which are.
pub(crate) fn usable<'a>(
    api: &'a dyn RecoveryApi,
    missing: Vec<&'static str>,
) -> Result<&'a dyn RecoveryApi, NoRecovery> {
    if missing.is_empty() {
        Ok(api)
    } else {
        Err(NoRecovery::MissingCredentials(missing))
    }
}

/// A provider's resend API.
#[derive(Debug, Clone, Copy)]
pub struct Resend {
    /// The longest window one call may cover.
    pub max_window: Duration,
    /// Its rate limits, shared by every replica and command of one outbox.
    pub limits: &'static [Limit],
}

/// The subject a status query asks about, as the relay last stored it.
#[derive(Debug, Clone, Copy)]
pub struct Asked<'a> {
    /// The provider's id of the subject.
    pub subject: &'a str,
    /// Its kind.
    pub kind: Kind,
    /// The provider's event type of its last webhook.
    pub provider_event_type: Option<&'a str>,
}

/// Why a source cannot recover from its provider.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoRecovery {
    /// The provider offers nothing the relay can use (see the provider's page).
    #[error("{0}")]
    NoApi(&'static str),
    /// The source lacks the credentials the provider's API needs.
    #[error("the source has no {}: set it to let the relay ask the provider", .0.join(", "))]
    MissingCredentials(Vec<&'static str>),
}

/// A provider's recovery API, bound to one source's credentials and base URL.
pub trait RecoveryApi: Send + Sync {
    /// The base URL requests are relative to.
    fn base_url(&self) -> &str;

    /// The resend API, if the provider has one.
    fn resend(&self) -> Option<Resend> {
        None
    }

    /// Asks for every webhook of `[from, until]` (Unix seconds) that did not
    /// reach the relay, signed at `now`.
    fn resend_request(&self, _from: i64, _until: i64, _now: OffsetDateTime) -> Option<ApiRequest> {
        None
    }

    /// Reads a resend answer: how many webhooks the provider says it resent, when
    /// it says.
    fn read_resend(&self, _answer: &ApiAnswer<'_>) -> Result<Option<u64>, ApiError> {
        Err(ApiError::Refused(
            "the provider has no resend API".to_owned(),
        ))
    }

    /// The status query's rate limits, if the provider has such a query.
    fn status_limits(&self) -> Option<&'static [Limit]> {
        None
    }

    /// The requests that may know `asked`, to try in order (the next one on
    /// [`ApiError::NotFound`]); empty when this kind of subject cannot be asked.
    fn status_requests(&self, _asked: &Asked<'_>, _now: OffsetDateTime) -> Vec<ApiRequest> {
        Vec::new()
    }

    /// Reads a status answer into a webhook body of the provider's own format, for
    /// `parse` to read as the real webhook of that status.
    fn read_status(
        &self,
        _asked: &Asked<'_>,
        _answer: &ApiAnswer<'_>,
    ) -> Result<Vec<u8>, ApiError> {
        Err(ApiError::Refused(
            "the provider has no status query".to_owned(),
        ))
    }
}

/// An answer's HTTP status as an error, when it is not a success: 429 and 5xx
/// are transient, 404 is not found, any other refusal needs a person.
pub(crate) fn http_status(answer: &ApiAnswer<'_>) -> Result<(), ApiError> {
    match answer.status {
        200..=299 => Ok(()),
        404 => Err(ApiError::NotFound("the provider answered 404".to_owned())),
        429 | 500..=599 => Err(ApiError::Transient(format!(
            "the provider answered HTTP {}",
            answer.status
        ))),
        status => Err(ApiError::Refused(format!(
            "the provider refused the request with HTTP {status}"
        ))),
    }
}
