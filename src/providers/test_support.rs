//! What every provider's unit tests need: a source from settings, headers as hyper
//! hands them over, and the normalized event a body must parse to.

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use time::OffsetDateTime;

use super::api::{ApiAnswer, Asked};
use super::{Provider, VerifyError, WebhookRequest};
use crate::config::SourceConfig;
use crate::event::{Normalized, Parsed};

/// A source named `name` of `provider` with these settings, read as the
/// configuration reads them (so `timestamp_tolerance` and lists parse as in `serve`).
pub(super) fn source(name: &str, provider: &str, settings: &[(&str, &str)]) -> SourceConfig {
    let mut all: std::collections::BTreeMap<String, String> = settings
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    all.insert("provider".to_owned(), provider.to_owned());
    SourceConfig::from_settings(name, all).expect("valid test source")
}

/// Headers with lower-case names, as hyper hands them over; a name given twice is
/// sent twice.
pub(super) fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).expect("header name"),
            HeaderValue::from_str(value).expect("header value"),
        );
    }
    map
}

/// What `provider` makes of `body`; panics, naming the reason, when it is not a
/// recognized event.
pub(super) fn event(provider: &dyn Provider, body: &str) -> Normalized {
    match provider.parse(&WebhookRequest::body_only(body.as_bytes())) {
        Parsed::Event(event) => *event,
        Parsed::Unrecognized { reason, .. } => panic!("unrecognized ({reason}): {body}"),
    }
}

/// `provider`'s verdict on `body` sent with these headers at `now`.
pub(super) fn verify_at(
    provider: &dyn Provider,
    pairs: &[(&str, &str)],
    body: &[u8],
    now: OffsetDateTime,
) -> Result<(), VerifyError> {
    provider.verify(&WebhookRequest {
        headers: &headers(pairs),
        body,
        now,
    })
}

/// An answer of the provider's API with `status` and `body`, without headers.
pub(super) fn answer(status: u16, body: &[u8]) -> ApiAnswer<'_> {
    ApiAnswer {
        status,
        headers: &super::NO_HEADERS,
        body,
    }
}

/// The event `provider` makes of its API's 200 answer `body` about `asked`, read
/// into a webhook as recovery reads it; panics, naming the reason, when either
/// step fails.
pub(super) fn recovered(provider: &dyn Provider, asked: &Asked<'_>, body: &[u8]) -> Normalized {
    let api = provider.recovery().unwrap_or_else(|e| panic!("{e}"));
    let webhook = api
        .read_status(asked, &answer(200, body))
        .unwrap_or_else(|e| panic!("{e}"));
    event(provider, &String::from_utf8_lossy(&webhook))
}
