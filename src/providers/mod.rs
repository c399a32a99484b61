//! Providers: how each payment gateway authenticates, acknowledges and describes its
//! webhooks.
//!
//! A provider is one file implementing [`Provider`], plus one line in [`REGISTRY`].
//! Ingress calls [`Provider::verify`] on the raw bytes before anything parses them,
//! then [`Provider::parse`] to learn the routing facts, and answers with
//! [`Provider::ack`]. Nothing outside this folder knows a provider by name.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use serde_json::Value;
use time::OffsetDateTime;

use crate::config::{Config, ConfigError, SourceConfig};
use crate::event::Parsed;

pub mod api;
mod ccpayment;
mod oslpay;
mod standard;
mod wcheckout;
mod whitepay;

#[cfg(test)]
mod test_support;

/// Everything the relay knows about a provider before a source is built from it.
pub struct ProviderSpec {
    /// Provider name: config value, routing-key prefix, metric label.
    pub name: &'static str,
    /// Source keys this provider reads, besides the common ones of contract §6.
    pub keys: &'static [&'static str],
    /// Keys whose values are secrets: masked in `check-config`, never logged.
    pub secret_keys: &'static [&'static str],
    /// Request headers (lower case) that work as a credential: they authenticate
    /// other bodies than this one for a while (a signature that does not cover
    /// the body). Ingress stores them as `[redacted]`, so no view shows them. A
    /// MAC of the body authenticates only that body and is not listed.
    pub credential_headers: &'static [&'static str],
    /// JSON paths (dot-separated) whose string values are redacted in published
    /// payloads when the source sets no `redact` of its own.
    pub default_redact: &'static [&'static str],
    /// Builds the provider for one source from that source's settings.
    pub build: fn(&SourceConfig) -> Result<Box<dyn Provider>, BuildError>,
    /// A realistic example body with fresh ids and the context's time (`hookrelay sample`).
    pub sample_body: fn(&SampleContext<'_>) -> Vec<u8>,
    /// The headers that make `body` authentic for the context's source, as the
    /// provider itself would send them (`hookrelay sample`, tests).
    pub sign: SignFn,
}

/// Signs a sample or fixture body: the headers the provider would send with it.
pub(crate) type SignFn =
    fn(&SampleContext<'_>, &[u8]) -> Result<Vec<(String, String)>, SampleError>;

/// What `sample_body` and `sign` work from.
pub struct SampleContext<'a> {
    /// The source whose credentials sign the sample.
    pub source: &'a SourceConfig,
    /// The time to put in bodies and timestamp headers.
    pub now: OffsetDateTime,
    /// A fresh token to build unique ids from.
    pub unique: &'a str,
    /// A PEM private key, for providers that sign with RSA (the relay itself only has
    /// the public key).
    pub private_key_pem: Option<&'a str>,
}

/// Why a sample could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    /// The source lacks a credential needed to sign.
    #[error(
        "the source has no `{0}`: set it in the configuration (or pass it on the command line) to sign samples"
    )]
    MissingSetting(&'static str),
    /// A credential is present but unusable.
    #[error("{0}")]
    Invalid(String),
}

/// The built-in providers. Adding one is a line here.
pub static REGISTRY: &[ProviderSpec] = &[
    wcheckout::SPEC,
    oslpay::SPEC,
    ccpayment::SPEC,
    whitepay::SPEC,
    standard::SPEC,
];

/// Looks a provider up by name.
pub fn find(name: &str) -> Option<&'static ProviderSpec> {
    REGISTRY.iter().find(|spec| spec.name == name)
}

/// The registered providers' names, for messages that list them.
pub(crate) fn known_names() -> String {
    REGISTRY
        .iter()
        .map(|spec| spec.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A configured source with its provider built.
pub struct Source {
    /// The source's settings.
    pub config: SourceConfig,
    /// Its provider's registry entry.
    pub spec: &'static ProviderSpec,
    /// Its provider, bound to its credentials.
    pub provider: Box<dyn Provider>,
    /// Effective redaction paths: the source's own, or its provider's default.
    pub redact: Vec<String>,
}

/// The configured sources with their providers built; with none configured, one
/// source per provider under the provider's own name (contract §2). Checks what
/// `config` cannot: that each provider exists and that every key is one it reads.
pub fn build_sources(config: &Config) -> Result<BTreeMap<String, Source>, ConfigError> {
    let defaults;
    let configured = if config.sources.is_empty() {
        defaults = default_sources()?;
        &defaults
    } else {
        &config.sources
    };
    configured
        .iter()
        .map(|(name, source)| Ok((name.clone(), build_source(source)?)))
        .collect()
}

fn default_sources() -> Result<BTreeMap<String, SourceConfig>, ConfigError> {
    REGISTRY
        .iter()
        .map(|spec| {
            let settings = BTreeMap::from([("provider".to_owned(), spec.name.to_owned())]);
            Ok((
                spec.name.to_owned(),
                SourceConfig::from_settings(spec.name, settings)?,
            ))
        })
        .collect()
}

fn build_source(source: &SourceConfig) -> Result<Source, ConfigError> {
    let name = &source.name;
    let spec = find(&source.provider).ok_or_else(|| ConfigError::Invalid {
        key: format!("sources.{name}.provider"),
        reason: format!(
            "unknown provider `{}`; known: {}",
            source.provider,
            known_names()
        ),
    })?;
    if let Some(key) = source.unknown_keys(spec.keys).next() {
        return Err(ConfigError::UnknownKey(format!("sources.{name}.{key}")));
    }
    let provider = (spec.build)(source).map_err(|BuildError::Invalid { key, reason }| {
        ConfigError::Invalid {
            key: format!("sources.{name}.{key}"),
            reason,
        }
    })?;
    let redact = source.redact.clone().unwrap_or_else(|| {
        spec.default_redact
            .iter()
            .map(|path| (*path).to_owned())
            .collect()
    });
    Ok(Source {
        config: source.clone(),
        spec,
        provider,
        redact,
    })
}

impl Source {
    /// Where this source's events come from and how they are published.
    pub(crate) fn origin(&self) -> crate::event::Origin<'_> {
        crate::event::Origin {
            provider: &self.config.provider,
            source: &self.config.name,
            routing_prefix: self
                .provider
                .routing_prefix()
                .unwrap_or(&self.config.provider),
            redact: &self.redact,
        }
    }
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

#[cfg(test)]
static NO_HEADERS: std::sync::LazyLock<HeaderMap> = std::sync::LazyLock::new(HeaderMap::new);

#[cfg(test)]
impl<'a> WebhookRequest<'a> {
    /// A request with no headers, to parse a body on its own in tests.
    pub(crate) fn body_only(body: &'a [u8]) -> Self {
        Self {
            headers: &NO_HEADERS,
            body,
            now: OffsetDateTime::UNIX_EPOCH,
        }
    }
}

/// A provider bound to one source's credentials.
pub trait Provider: Send + Sync {
    /// Settings this source needs for verification but does not have. A source
    /// with missing credentials refuses its webhooks unless it allows unsigned ones.
    fn missing_credentials(&self) -> Vec<&'static str>;

    /// Authenticates the request from its raw bytes. Comparisons are constant-time.
    fn verify(&self, request: &WebhookRequest<'_>) -> Result<(), VerifyError>;

    /// Extracts the routing facts from an authentic request (the body, and headers
    /// where the provider puts facts there, like Standard Webhooks' `webhook-id`).
    /// Anything that does not fit the provider's mapping tables is
    /// [`Parsed::Unrecognized`], never guessed.
    fn parse(&self, request: &WebhookRequest<'_>) -> Parsed;

    /// The acknowledgement this provider expects for an accepted webhook (new,
    /// duplicate or unrecognized alike).
    fn ack(&self) -> Ack;

    /// The first routing-key segment, when it is not the provider's name (Standard
    /// Webhooks sources route under their source name).
    fn routing_prefix(&self) -> Option<&str> {
        None
    }

    /// Whether the signature covers the body. When it does not (OSL Pay signs only
    /// its app id and a timestamp), anyone who saw one signed request can send any
    /// body with it, and only `allow_ips` keeps strangers out.
    fn signs_body(&self) -> bool {
        true
    }

    /// The provider's API to recover missed webhooks with, bound to this source's
    /// credentials, or why the source has none (`docs/recovery.md`).
    fn recovery(&self) -> Result<&dyn api::RecoveryApi, api::NoRecovery> {
        Err(api::NoRecovery::NoApi(
            "the provider has no API to resend webhooks or query a status",
        ))
    }
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
    /// An authentication header is sent more than once.
    #[error("`{0}` header sent more than once")]
    DuplicateHeader(&'static str),
    /// The signature does not match the body.
    #[error("signature does not match the request body")]
    BadSignature,
    /// The signed timestamp is too far from the relay's clock.
    #[error("timestamp is outside the allowed window of {0} seconds (check the sender's clock)")]
    StaleTimestamp(u64),
    /// A signature header holds more entries than any sender needs.
    #[error("the signature header holds more than {0} signatures")]
    TooManySignatures(usize),
    /// The app id in the request is not this source's.
    #[error("unknown app id")]
    UnknownAppId,
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

/// The body as a JSON object, or the unrecognized outcome that says why it is not one.
pub(crate) fn json_object(body: &[u8]) -> Result<serde_json::Map<String, Value>, Parsed> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(root)) => Ok(root),
        Ok(_) => Err(Parsed::unrecognized("body is not a JSON object", None)),
        Err(e) => Err(Parsed::unrecognized(format!("body is not JSON: {e}"), None)),
    }
}

/// The literal text of a JSON string or number. Numbers keep their exact digits
/// (`serde_json` is built with `arbitrary_precision`), except numbers in exponent
/// notation, which the parser rewrites (`1e5` becomes `1e+5`): their text cannot be
/// recovered, so they give `None` rather than a figure the provider did not write.
/// The published payload keeps them as sent either way.
pub(crate) fn json_text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => {
            let text = n.to_string();
            (!text.contains(['e', 'E'])).then_some(text)
        }
        _ => None,
    }
}

/// The literal text of `object[key]` (see [`json_text`]); empty strings count as
/// absent.
pub(crate) fn text(object: &serde_json::Map<String, Value>, key: &str) -> Option<String> {
    json_text(object.get(key)).filter(|s| !s.is_empty())
}

/// Milliseconds since the epoch, as providers put them in timestamp headers.
pub(crate) fn unix_millis(t: OffsetDateTime) -> i128 {
    t.unix_timestamp_nanos() / 1_000_000
}

/// Parses `YYYY-MM-DD HH:MM:SS`, a format several providers use without a zone; the
/// relay reads it as UTC (documented in `docs/ARCHITECTURE.md`).
pub(crate) fn parse_naive_utc(text: &str) -> Option<OffsetDateTime> {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    time::PrimitiveDateTime::parse(text, &format)
        .ok()
        .map(time::PrimitiveDateTime::assume_utc)
}

/// Reads a header as text; `None` when absent, an error when not visible ASCII or
/// sent more than once.
pub(crate) fn header<'a>(
    headers: &'a HeaderMap,
    name: &'static str,
) -> Result<Option<&'a str>, VerifyError> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    // Two copies of an authentication header are ambiguous: which one did the
    // provider sign? Refuse rather than pick one.
    if values.next().is_some() {
        return Err(VerifyError::DuplicateHeader(name));
    }
    value
        .to_str()
        .map(|s| Some(s.trim()))
        .map_err(|_| VerifyError::MalformedHeader(name))
}

/// Checks a signed timestamp against the receive time, in both directions.
pub(crate) fn check_window(
    signed: OffsetDateTime,
    now: OffsetDateTime,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    if (now - signed).unsigned_abs() > tolerance {
        return Err(VerifyError::StaleTimestamp(tolerance.as_secs()));
    }
    Ok(())
}

/// Unit of a Unix timestamp header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimeUnit {
    /// Seconds since the epoch.
    Seconds,
    /// Milliseconds since the epoch.
    Millis,
}

/// Parses a Unix timestamp header value (ASCII digits only).
pub(crate) fn unix_time(
    value: &str,
    unit: TimeUnit,
    header_name: &'static str,
) -> Result<OffsetDateTime, VerifyError> {
    if value.is_empty() || value.len() > 19 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(VerifyError::MalformedHeader(header_name));
    }
    let n: i128 = value
        .parse()
        .map_err(|_| VerifyError::MalformedHeader(header_name))?;
    let nanos = match unit {
        TimeUnit::Seconds => n * 1_000_000_000,
        TimeUnit::Millis => n * 1_000_000,
    };
    OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .map_err(|_| VerifyError::MalformedHeader(header_name))
}

/// Succeeds when `matches` holds for any of `keys`. Every key is checked even after
/// a match, so timing does not reveal which key (if any) is in use; each check
/// itself must compare in constant time (`Mac::verify_slice`).
pub(crate) fn any_key<K>(
    keys: impl IntoIterator<Item = K>,
    mut matches: impl FnMut(K) -> bool,
) -> Result<(), VerifyError> {
    let mut matched = false;
    for key in keys {
        matched |= matches(key);
    }
    if matched {
        Ok(())
    } else {
        Err(VerifyError::BadSignature)
    }
}

/// Constant-time equality of two byte strings (length may leak, content does not).
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(env: &[(&str, &str)]) -> Config {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::load_from(None, &env).expect("config")
    }

    #[test]
    fn no_configured_source_means_one_per_provider_under_its_name() {
        let sources = build_sources(&config(&[])).expect("defaults build");
        assert_eq!(sources.len(), REGISTRY.len());
        for spec in REGISTRY {
            assert_eq!(sources[spec.name].config.provider, spec.name);
            assert_eq!(sources[spec.name].spec.name, spec.name);
        }
    }

    #[test]
    fn unknown_providers_and_keys_are_refused_with_the_key_named() {
        let err = build_sources(&config(&[("HOOKRELAY_SOURCES__X__PROVIDER", "nope")]))
            .map(|_| ())
            .unwrap_err();
        assert!(err.to_string().contains("unknown provider `nope`"), "{err}");
        assert!(err.to_string().contains("sources.x.provider"), "{err}");
        let err = build_sources(&config(&[(
            "HOOKRELAY_SOURCES__WHITEPAY__WEBHOOK_TOKN",
            "t",
        )]))
        .map(|_| ())
        .unwrap_err();
        assert!(
            err.to_string().contains("sources.whitepay.webhook_tokn"),
            "{err}"
        );
    }

    #[test]
    fn the_default_redaction_applies_unless_the_source_sets_its_own() {
        let sources = build_sources(&config(&[
            ("HOOKRELAY_SOURCES__OSL__PROVIDER", "oslpay"),
            ("HOOKRELAY_SOURCES__OSL2__PROVIDER", "oslpay"),
            ("HOOKRELAY_SOURCES__OSL2__REDACT", "data.orderId"),
        ]))
        .expect("build");
        assert_eq!(sources["osl"].redact, vec!["data.privateSecret"]);
        assert_eq!(sources["osl2"].redact, vec!["data.orderId"]);
    }
}
