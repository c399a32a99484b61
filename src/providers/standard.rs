//! Standard Webhooks (<https://www.standardwebhooks.com>), for any sender that
//! follows that specification (SPEC §6).
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
    Ack, BuildError, Normalized, Parsed, Provider, ProviderSpec, SampleContext, SampleError,
    TimeUnit, VerifyError, WebhookRequest,
};
use crate::config::SourceConfig;
use crate::event::{Kind, Status};

/// Registry entry.
pub const SPEC: ProviderSpec = ProviderSpec {
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
    default_redact: &[],
    build,
    sample_body,
    sign,
};

const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);
const SECRET_PREFIX: &str = "whsec_";

/// A Standard Webhooks source.
pub struct Standard {
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
            reason: format!("`{}` is not a status of SPEC §4", to.trim()),
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
        // Entries of other versions (`v1a`, …) and undecodable ones cannot match.
        let v1: Vec<Vec<u8>> = signatures
            .split_ascii_whitespace()
            .filter_map(|entry| match entry.split_once(',') {
                Some(("v1", encoded)) => BASE64.decode(encoded).ok(),
                _ => None,
            })
            .collect();
        let pairs = v1
            .iter()
            .flat_map(|signature| self.keys.iter().map(move |key| (signature, key)));
        super::any_key(pairs, |(signature, key)| {
            mac(key, id, timestamp, request.body)
                .is_some_and(|mac| mac.verify_slice(signature).is_ok())
        })
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
            return unrecognized("the value at `kind_pointer` is not a kind of SPEC §4");
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
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue};
    use time::OffsetDateTime;

    /// The test vector of the Standard Webhooks reference libraries.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const MSG_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: i64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn source(pairs: &[(&str, &str)]) -> SourceConfig {
        let mut env = vec![(
            "HOOKRELAY_SOURCES__ACME__PROVIDER".to_owned(),
            "standard".to_owned(),
        )];
        for (k, v) in pairs {
            env.push((
                format!("HOOKRELAY_SOURCES__ACME__{}", k.to_uppercase()),
                (*v).to_owned(),
            ));
        }
        let cfg = crate::config::Config::load_from(None, &env).expect("config");
        cfg.sources["acme"].clone()
    }

    fn provider(pairs: &[(&str, &str)]) -> Box<dyn Provider> {
        build(&source(pairs)).expect("build")
    }

    fn headers(id: &str, ts: &str, sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("webhook-id", id),
            ("webhook-timestamp", ts),
            ("webhook-signature", sig),
        ] {
            h.insert(k, HeaderValue::from_str(v).expect("header"));
        }
        h
    }

    fn verify_at(
        p: &dyn Provider,
        h: &HeaderMap,
        body: &[u8],
        now: i64,
    ) -> Result<(), VerifyError> {
        p.verify(&WebhookRequest {
            headers: h,
            body,
            now: OffsetDateTime::from_unix_timestamp(now).expect("time"),
        })
    }

    #[test]
    fn reference_test_vector_verifies() {
        let p = provider(&[("secret", SECRET)]);
        let h = headers(MSG_ID, &TIMESTAMP.to_string(), SIGNATURE);
        assert_eq!(verify_at(p.as_ref(), &h, BODY, TIMESTAMP), Ok(()));
        let several = format!("v1,bm90LWl0 {SIGNATURE} v2,ignored");
        let h = headers(MSG_ID, &TIMESTAMP.to_string(), &several);
        assert_eq!(
            verify_at(p.as_ref(), &h, BODY, TIMESTAMP),
            Ok(()),
            "any listed signature may match"
        );
    }

    #[test]
    fn wrong_key_flipped_byte_stale_future_and_missing_headers_are_refused() {
        let ts = TIMESTAMP.to_string();
        let p = provider(&[("secret", "whsec_dGhlIHdyb25nIGtleQ==")]);
        let h = headers(MSG_ID, &ts, SIGNATURE);
        assert_eq!(
            verify_at(p.as_ref(), &h, BODY, TIMESTAMP),
            Err(VerifyError::BadSignature)
        );
        let p = provider(&[("secret", SECRET)]);
        assert_eq!(
            verify_at(p.as_ref(), &h, br#"{"test": 2432232315}"#, TIMESTAMP),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            verify_at(p.as_ref(), &h, BODY, TIMESTAMP + 301),
            Err(VerifyError::StaleTimestamp(300))
        );
        assert_eq!(
            verify_at(p.as_ref(), &h, BODY, TIMESTAMP - 301),
            Err(VerifyError::StaleTimestamp(300)),
            "a timestamp from the future is refused too"
        );
        let mut missing = h.clone();
        missing.remove("webhook-id");
        assert_eq!(
            verify_at(p.as_ref(), &missing, BODY, TIMESTAMP),
            Err(VerifyError::MissingHeader("webhook-id"))
        );
        let garbled = headers(MSG_ID, "16142653x0", SIGNATURE);
        assert_eq!(
            verify_at(p.as_ref(), &garbled, BODY, TIMESTAMP),
            Err(VerifyError::MalformedHeader("webhook-timestamp"))
        );
    }

    #[test]
    fn a_rotated_secret_list_accepts_either_key_and_a_custom_tolerance_applies() {
        let p = provider(&[
            ("secret", &format!("whsec_b2xkLWtleQ==, {SECRET}")),
            ("timestamp_tolerance", "10s"),
        ]);
        let h = headers(MSG_ID, &TIMESTAMP.to_string(), SIGNATURE);
        assert_eq!(verify_at(p.as_ref(), &h, BODY, TIMESTAMP + 10), Ok(()));
        assert_eq!(
            verify_at(p.as_ref(), &h, BODY, TIMESTAMP + 11),
            Err(VerifyError::StaleTimestamp(10))
        );
    }

    #[test]
    fn pointers_and_status_map_give_kind_status_and_fields() {
        let p = provider(&[
            ("secret", SECRET),
            ("kind_pointer", "/kind"),
            ("status_pointer", "/data/status"),
            ("status_map", "paid=succeeded, open=pending"),
            ("subject_pointer", "/data/id"),
            ("amount_pointer", "/data/amount"),
        ]);
        let body = br#"{"type":"invoice.paid","kind":"order","timestamp":"2024-05-01T10:00:00Z","data":{"id":"inv_1","status":"paid","amount":12.340}}"#;
        let h = headers("msg_1", "0", "v1,x");
        let request = WebhookRequest {
            headers: &h,
            body,
            now: OffsetDateTime::UNIX_EPOCH,
        };
        let Parsed::Event(event) = p.parse(&request) else {
            panic!("recognized");
        };
        assert_eq!((event.kind, event.status), (Kind::Order, Status::Succeeded));
        assert_eq!(event.idempotency_key, "msg_1");
        assert_eq!(event.subject, "inv_1");
        assert_eq!(event.amount.as_deref(), Some("12.340"));
        assert_eq!(event.provider_event_type.as_deref(), Some("invoice.paid"));
        assert_eq!(
            event.event_time,
            Some(time::macros::datetime!(2024-05-01 10:00:00 UTC))
        );
        assert_eq!(p.routing_prefix(), Some("acme"));
        let unmapped = br#"{"kind":"order","data":{"status":"weird"}}"#;
        let request = WebhookRequest {
            body: unmapped,
            ..request
        };
        assert!(matches!(p.parse(&request), Parsed::Unrecognized { .. }));
    }

    #[test]
    fn invalid_settings_are_refused_at_build() {
        assert!(build(&source(&[("secret", "whsec_%%%")])).is_err());
        assert!(build(&source(&[("status_map", "paid=paidish")])).is_err());
        assert!(build(&source(&[("kind_pointer", "kind")])).is_err());
    }

    #[test]
    fn samples_verify_with_the_same_source() {
        let src = source(&[("secret", SECRET)]);
        let p = build(&src).expect("build");
        let now = OffsetDateTime::now_utc();
        let ctx = SampleContext {
            source: &src,
            now,
            unique: "u1",
            private_key_pem: None,
        };
        let body = sample_body(&ctx);
        let mut h = HeaderMap::new();
        for (k, v) in sign(&ctx, &body).expect("sign") {
            h.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(&v).expect("value"),
            );
        }
        assert_eq!(
            verify_at(p.as_ref(), &h, &body, now.unix_timestamp()),
            Ok(())
        );
    }
}
