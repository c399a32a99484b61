//! Standard Webhooks (<https://www.standardwebhooks.com>), for any sender that
//! follows that specification (contract §6).
//!
//! Authentication: `webhook-signature` holds space-separated `v1,<base64>` entries,
//! each an HMAC-SHA256 over `{webhook-id}.{webhook-timestamp}.{body}` with the key
//! decoded from a `whsec_…` secret; `webhook-timestamp` (seconds) must be within the
//! tolerance (default 300 s). A source may hold several secrets (rotation). Ack: 204.
//!
//! There is no fixed body schema, so the source says where the routing facts are
//! with JSON pointers: `kind_pointer` (value must be a kind name), `status_pointer`
//! (mapped through `status_map`, or a status name itself), and optional pointers for
//! subject, event type, amounts and ids. Events route under the source's own name.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use super::{
    Ack, BuildError, Provider, ProviderSpec, SampleContext, SampleError, TimeUnit, VerifyError,
    WebhookRequest,
};
use crate::config::SourceConfig;
use crate::event::{Kind, Normalized, Parsed, Status};

/// Registry entry.
pub(crate) const SPEC: ProviderSpec = ProviderSpec {
    name: "standard",
    keys: &[
        "secret",
        "kind_pointer",
        "status_pointer",
        "status_map",
        "subject_pointer",
        "event_type_pointer",
        "amount_pointer",
        "currency_pointer",
        "order_id_pointer",
        "merchant_order_id_pointer",
        "time_pointer",
    ],
    secret_keys: &["secret"],
    // Its signature is a MAC of the body: it authenticates that body alone.
    credential_headers: &[],
    default_redact: &[],
    build,
    sample_body,
    sign,
};

const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// Most entries a `webhook-signature` header may hold. A sender signs once per
/// secret it holds (two during a rotation); the cap keeps a hostile header from
/// costing more than its bytes to read.
const MAX_SIGNATURES: usize = 16;

/// An HMAC-SHA256 is 32 bytes; entries of any other length cannot match.
const SIGNATURE_LEN: usize = 32;
const SECRET_PREFIX: &str = "whsec_";

/// A Standard Webhooks source.
pub(crate) struct Standard {
    source: String,
    keys: Vec<Vec<u8>>,
    tolerance: Duration,
    pointers: Pointers,
    status_map: BTreeMap<String, Status>,
}

/// Where the routing facts are in this source's bodies (RFC 6901 JSON pointers).
#[derive(Default)]
struct Pointers {
    kind: Option<String>,
    status: Option<String>,
    subject: Option<String>,
    event_type: String,
    amount: Option<String>,
    currency: Option<String>,
    order_id: Option<String>,
    merchant_order_id: Option<String>,
    time: String,
}

/// Decodes a `whsec_<base64>` secret (the prefix is optional, as in the reference
/// libraries) into the HMAC key.
fn decode_secret(secret: &str) -> Result<Vec<u8>, BuildError> {
    let encoded = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
    BASE64.decode(encoded).map_err(|_| BuildError::Invalid {
        key: "secret",
        reason: "expected whsec_ followed by base64".to_owned(),
    })
}

fn pointer(source: &SourceConfig, key: &'static str) -> Result<Option<String>, BuildError> {
    match source.get(key) {
        None => Ok(None),
        Some(p) if p.is_empty() || p.starts_with('/') => Ok(Some(p.to_owned())),
        Some(_) => Err(BuildError::Invalid {
            key,
            reason: "a JSON pointer starts with `/`, e.g. /data/status".to_owned(),
        }),
    }
}

fn status_named(name: &str) -> Option<Status> {
    serde_json::from_value(Value::String(name.to_owned())).ok()
}

fn kind_named(name: &str) -> Option<Kind> {
    serde_json::from_value(Value::String(name.to_owned())).ok()
}

fn build(source: &SourceConfig) -> Result<Box<dyn Provider>, BuildError> {
    let keys = source
        .get_list("secret")
        .iter()
        .map(|s| decode_secret(s))
        .collect::<Result<Vec<_>, _>>()?;
    let mut status_map = BTreeMap::new();
    for pair in source.get_list("status_map") {
        let (from, to) = pair.split_once('=').ok_or_else(|| BuildError::Invalid {
            key: "status_map",
            reason: format!("`{pair}`: expected provider_status=normalized_status"),
        })?;
        let status = status_named(to.trim()).ok_or_else(|| BuildError::Invalid {
            key: "status_map",
            reason: format!("`{}` is not a status of contract §4", to.trim()),
        })?;
        status_map.insert(from.trim().to_owned(), status);
    }
    Ok(Box::new(Standard {
        source: source.name.clone(),
        keys,
        tolerance: source.timestamp_tolerance.unwrap_or(DEFAULT_TOLERANCE),
        pointers: Pointers {
            kind: pointer(source, "kind_pointer")?,
            status: pointer(source, "status_pointer")?,
            subject: pointer(source, "subject_pointer")?,
            event_type: pointer(source, "event_type_pointer")?
                .unwrap_or_else(|| "/type".to_owned()),
            amount: pointer(source, "amount_pointer")?,
            currency: pointer(source, "currency_pointer")?,
            order_id: pointer(source, "order_id_pointer")?,
            merchant_order_id: pointer(source, "merchant_order_id_pointer")?,
            time: pointer(source, "time_pointer")?.unwrap_or_else(|| "/timestamp".to_owned()),
        },
        status_map,
    }))
}

fn mac(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> Option<Hmac<Sha256>> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).ok()?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    Some(mac)
}

impl Provider for Standard {
    fn missing_credentials(&self) -> Vec<&'static str> {
        if self.keys.is_empty() {
            vec!["secret"]
        } else {
            Vec::new()
        }
    }

    fn verify(&self, request: &WebhookRequest<'_>) -> Result<(), VerifyError> {
        if self.keys.is_empty() {
            return Err(VerifyError::MissingCredential("secret"));
        }
        let id = super::header(request.headers, "webhook-id")?
            .ok_or(VerifyError::MissingHeader("webhook-id"))?;
        let timestamp = super::header(request.headers, "webhook-timestamp")?
            .ok_or(VerifyError::MissingHeader("webhook-timestamp"))?;
        let signatures = super::header(request.headers, "webhook-signature")?
            .ok_or(VerifyError::MissingHeader("webhook-signature"))?;
        let signed_at = super::unix_time(timestamp, TimeUnit::Seconds, "webhook-timestamp")?;
        super::check_window(signed_at, request.now, self.tolerance)?;
        if signatures
            .split_ascii_whitespace()
            .nth(MAX_SIGNATURES)
            .is_some()
        {
            return Err(VerifyError::TooManySignatures(MAX_SIGNATURES));
        }
        // Entries of other versions (`v1a`, …), undecodable ones and ones of the
        // wrong length cannot match.
        let v1: Vec<Vec<u8>> = signatures
            .split_ascii_whitespace()
            .filter_map(|entry| match entry.split_once(',') {
                Some(("v1", encoded)) => BASE64.decode(encoded).ok(),
                _ => None,
            })
            .filter(|signature| signature.len() == SIGNATURE_LEN)
            .collect();
        // The body is MAC'd once per key, never once per entry: the cost of a
        // request is bounded by its size times the number of keys the source holds.
        let expected: Vec<Vec<u8>> = self
            .keys
            .iter()
            .filter_map(|key| mac(key, id, timestamp, request.body))
            .map(|mac| mac.finalize().into_bytes().to_vec())
            .collect();
        let pairs = expected
            .iter()
            .flat_map(|mac| v1.iter().map(move |signature| (mac, signature)));
        super::any_key(pairs, |(mac, signature)| super::ct_eq(mac, signature))
    }

    fn parse(&self, request: &WebhookRequest<'_>) -> Parsed {
        let webhook_id = match super::header(request.headers, "webhook-id") {
            Ok(Some(id)) if !id.is_empty() => id.to_owned(),
            _ => return Parsed::unrecognized("no `webhook-id` header", None),
        };
        let root: Value = match serde_json::from_slice(request.body) {
            Ok(value) => value,
            Err(e) => return Parsed::unrecognized(format!("body is not JSON: {e}"), None),
        };
        let text =
            |p: &Option<String>| p.as_deref().and_then(|p| super::json_text(root.pointer(p)));
        let event_type = super::json_text(root.pointer(&self.pointers.event_type));
        let unrecognized = |reason: &str| Parsed::unrecognized(reason, event_type.clone());
        let Some(kind_text) = text(&self.pointers.kind) else {
            return unrecognized("no kind at the source's `kind_pointer`");
        };
        let Some(kind) = kind_named(&kind_text) else {
            return unrecognized("the value at `kind_pointer` is not a kind of contract §4");
        };
        let Some(provider_status) = text(&self.pointers.status) else {
            return unrecognized("no status at the source's `status_pointer`");
        };
        let status = if self.status_map.is_empty() {
            status_named(&provider_status)
        } else {
            self.status_map.get(&provider_status).copied()
        };
        let Some(status) = status else {
            return unrecognized("status not in the source's `status_map`");
        };
        let event_time = super::json_text(root.pointer(&self.pointers.time)).and_then(|t| {
            time::OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339).ok()
        });
        Parsed::Event(Box::new(Normalized {
            subject: text(&self.pointers.subject).unwrap_or_else(|| webhook_id.clone()),
            idempotency_key: webhook_id,
            kind,
            status,
            provider_event_type: event_type.clone(),
            provider_status: Some(provider_status),
            order_id: text(&self.pointers.order_id),
            merchant_order_id: text(&self.pointers.merchant_order_id),
            amount: text(&self.pointers.amount),
            currency: text(&self.pointers.currency),
            event_time,
        }))
    }

    fn ack(&self) -> Ack {
        Ack {
            status: StatusCode::NO_CONTENT,
            content_type: None,
            body: Bytes::new(),
        }
    }

    fn routing_prefix(&self) -> Option<&str> {
        Some(&self.source)
    }
}

fn sample_body(ctx: &SampleContext<'_>) -> Vec<u8> {
    let at = ctx
        .now
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let id = ctx.unique;
    format!(
        r#"{{"type":"order.paid","kind":"order","timestamp":"{at}","data":{{"id":"ord_{id}","status":"paid","amount":"49.90","currency":"EUR","merchant_order_id":"m-{id}"}}}}"#
    )
    .into_bytes()
}

fn sign(ctx: &SampleContext<'_>, body: &[u8]) -> Result<Vec<(String, String)>, SampleError> {
    let secret = ctx
        .source
        .get_list("secret")
        .into_iter()
        .next()
        .ok_or(SampleError::MissingSetting("secret"))?;
    let key = decode_secret(&secret).map_err(|e| SampleError::Invalid(e.to_string()))?;
    let id = format!("msg_{}", ctx.unique);
    let timestamp = ctx.now.unix_timestamp().to_string();
    let mac = mac(&key, &id, &timestamp, body)
        .ok_or_else(|| SampleError::Invalid("bad key".to_owned()))?;
    let signature = BASE64.encode(mac.finalize().into_bytes());
    Ok(vec![
        ("Content-Type".to_owned(), "application/json".to_owned()),
        ("webhook-id".to_owned(), id),
        ("webhook-timestamp".to_owned(), timestamp),
        ("webhook-signature".to_owned(), format!("v1,{signature}")),
    ])
}

#[cfg(test)]
mod tests;
