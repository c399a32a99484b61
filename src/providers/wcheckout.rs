//! W Checkout (`providers.md` §1, SPEC §6).
//!
//! Authentication: `SIGNATURE` = base64 HMAC-SHA512(sign key, `TIMESTAMP` ‖ raw body),
//! `TIMESTAMP` in milliseconds and within the source's window (120 s, documented, unless
//! the source sets `timestamp_tolerance`). The docs say some environments name these
//! headers `D-Signature`/`D-Timestamp`, so both names are accepted. A source may hold
//! several sign keys (comma-separated, for rotation); any may match.
//! Ack: 200 `application/json` `{"retcode":"200","retmsg":"success"}`.
//!
//! Only `ABNORMAL_PAYMENT` is documented. Order, refund and settlement events exist but
//! their `eventType` strings are not, so their kind comes from the wording of the event
//! type or, failing that, from the shape of `data` (`providers.md` §1.7); their status
//! must then be in that kind's table (§1.8), or the event is unrecognized.

use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use hmac::digest::InvalidLength;
use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256, Sha512};
use time::{OffsetDateTime, UtcOffset};

use super::{
    Ack, BuildError, Normalized, Parsed, Provider, ProviderSpec, SampleContext, SampleError,
    TimeUnit, VerifyError, WebhookRequest,
};
use crate::config::SourceConfig;
use crate::event::{Kind, Status};

/// Registry entry.
pub const SPEC: ProviderSpec = ProviderSpec {
    name: "wcheckout",
    keys: &[SIGN_KEY],
    secret_keys: &[SIGN_KEY],
    default_redact: &[],
    build,
    sample_body,
    sign,
};

const SIGN_KEY: &str = "sign_key";

/// "Reject if it differs from local time by more than 2 minutes" (Quick Start → Webhook).
const DEFAULT_TOLERANCE: Duration = Duration::from_secs(120);

/// The endpoint spec's form; the quick start also shows `{"retcode": 200, "retmsg":
/// "SUCCESS"}`, and SPEC §6 settles on this one.
const ACK_BODY: &[u8] = br#"{"retcode":"200","retmsg":"success"}"#;

/// The documented header name first, then the `D-` form some environments use.
const SIGNATURE_HEADERS: [&str; 2] = ["SIGNATURE", "D-Signature"];
const TIMESTAMP_HEADERS: [&str; 2] = ["TIMESTAMP", "D-Timestamp"];

type HmacSha512 = Hmac<Sha512>;

fn build(source: &SourceConfig) -> Result<Box<dyn Provider>, BuildError> {
    Ok(Box::new(WCheckout {
        sign_keys: source.get_list(SIGN_KEY),
        tolerance: source.timestamp_tolerance.unwrap_or(DEFAULT_TOLERANCE),
    }))
}

fn sample_body(ctx: &SampleContext<'_>) -> Vec<u8> {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    let now = ctx.now.to_offset(UtcOffset::UTC);
    let at = now.format(&format).unwrap_or_default();
    let seconds = now.unix_timestamp();
    // `unique` comes from the caller: quoting it as a JSON string keeps the body valid
    // whatever it holds.
    let quoted = |prefix: &str| Value::String(format!("{prefix}{}", ctx.unique)).to_string();
    let event_id = quoted("evt_");
    let abnormal_payment_no = quoted("AP");
    let order_no = quoted("o");
    let hash = hex::encode(Sha256::digest(ctx.unique.as_bytes()));
    format!(
        r#"{{"eventId":{event_id},"eventType":"ABNORMAL_PAYMENT","timestamp":{seconds},"data":{{"abnormalPaymentNo":{abnormal_payment_no},"orderNo":{order_no},"token":"ETH_USDT","amount":"818.89","hash":"0x{hash}","pendingAmount":"739.00","createdTime":"{at}","updatedTime":"{at}"}}}}"#
    )
    .into_bytes()
}

fn sign(ctx: &SampleContext<'_>, body: &[u8]) -> Result<Vec<(String, String)>, SampleError> {
    let key = ctx
        .source
        .get_list(SIGN_KEY)
        .into_iter()
        .next()
        .ok_or(SampleError::MissingSetting(SIGN_KEY))?;
    let timestamp = (ctx.now.unix_timestamp_nanos() / 1_000_000).to_string();
    let mac = mac(&key, &[timestamp.as_bytes(), body])
        .map_err(|e| SampleError::Invalid(e.to_string()))?;
    Ok(vec![
        ("Content-Type".to_owned(), "application/json".to_owned()),
        ("TIMESTAMP".to_owned(), timestamp),
        (
            "SIGNATURE".to_owned(),
            BASE64.encode(mac.finalize().into_bytes()),
        ),
    ])
}

/// HMAC-SHA512 keyed with the UTF-8 bytes of the sign key (not hex- or base64-decoded,
/// as the XCheckout test vector shows) over the concatenated parts.
fn mac(key: &str, parts: &[&[u8]]) -> Result<HmacSha512, InvalidLength> {
    let mut mac = HmacSha512::new_from_slice(key.as_bytes())?;
    for part in parts {
        mac.update(part);
    }
    Ok(mac)
}

/// The first of `names` that the request carries, with the name it was found under.
fn first_header<'a>(
    headers: &'a HeaderMap,
    names: [&'static str; 2],
) -> Result<(&'a str, &'static str), VerifyError> {
    for name in names {
        if let Some(value) = super::header(headers, name)? {
            return Ok((value, name));
        }
    }
    Err(VerifyError::MissingHeader(names[0]))
}

/// A W Checkout source.
pub struct WCheckout {
    sign_keys: Vec<String>,
    tolerance: Duration,
}

impl Provider for WCheckout {
    fn missing_credentials(&self) -> Vec<&'static str> {
        if self.sign_keys.is_empty() {
            vec![SIGN_KEY]
        } else {
            Vec::new()
        }
    }

    fn verify(&self, request: &WebhookRequest<'_>) -> Result<(), VerifyError> {
        if self.sign_keys.is_empty() {
            return Err(VerifyError::MissingCredential(SIGN_KEY));
        }
        let (signature, signature_name) = first_header(request.headers, SIGNATURE_HEADERS)?;
        let (timestamp, timestamp_name) = first_header(request.headers, TIMESTAMP_HEADERS)?;
        let signed_at = super::unix_time(timestamp, TimeUnit::Millis, timestamp_name)?;
        super::check_window(signed_at, request.now, self.tolerance)?;
        // The standard engine rejects non-canonical padding and trailing bits, so
        // comparing decoded bytes is as strict as comparing the Base64 text exactly.
        let signature = BASE64
            .decode(signature)
            .map_err(|_| VerifyError::MalformedHeader(signature_name))?;
        super::any_key(&self.sign_keys, |key| {
            mac(key, &[timestamp.as_bytes(), request.body])
                .is_ok_and(|mac| mac.verify_slice(&signature).is_ok())
        })
    }

    fn parse(&self, request: &WebhookRequest<'_>) -> Parsed {
        let object = match super::json_object(request.body) {
            Ok(object) => object,
            Err(unrecognized) => return unrecognized,
        };
        let root = &object;
        let event_type = match root.get("eventType") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Parsed::unrecognized("`eventType` is not a string", None),
        };
        let unrecognized = |reason: String| Parsed::unrecognized(reason, event_type.clone());
        let Some(event_id) = text(root, "eventId") else {
            return unrecognized("no `eventId`".to_owned());
        };
        let Some(data) = root.get("data").and_then(Value::as_object) else {
            return unrecognized("no `data` object".to_owned());
        };
        let Some(entity) = Entity::of(event_type.as_deref(), data) else {
            return unrecognized(
                "neither `eventType` nor `data` says order, refund, settlement or abnormal payment"
                    .to_owned(),
            );
        };
        let provider_status = entity.provider_status(data);
        let status = match entity.status(provider_status.as_deref()) {
            Ok(status) => status,
            Err(reason) => return unrecognized(reason),
        };
        let Some(subject) = first_text(data, entity.subject_fields()) else {
            return unrecognized(format!(
                "no id for the {} (`{}`)",
                entity.kind().as_str(),
                entity.subject_fields().join("`, `")
            ));
        };
        let (amount, currency) = entity.amount(data);
        let event_time = text(root, "timestamp")
            .filter(|t| t.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|t| t.parse::<i64>().ok())
            .and_then(|seconds| OffsetDateTime::from_unix_timestamp(seconds).ok());
        Parsed::Event(Box::new(Normalized {
            idempotency_key: event_id,
            kind: entity.kind(),
            status,
            subject,
            provider_event_type: event_type.clone(),
            provider_status,
            order_id: text(data, "sysid"),
            merchant_order_id: first_text(data, entity.merchant_id_fields()),
            amount,
            currency,
            event_time,
        }))
    }

    fn ack(&self) -> Ack {
        Ack {
            status: StatusCode::OK,
            content_type: Some("application/json"),
            body: Bytes::from_static(ACK_BODY),
        }
    }
}

/// What a W Checkout event is about (`providers.md` §1.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entity {
    Order,
    Refund,
    Settlement,
    AbnormalPayment,
}

impl Entity {
    /// The documented `ABNORMAL_PAYMENT`; otherwise a word of the event type (refund and
    /// settlement first, as their event types may well also say "order"); otherwise a
    /// field only that entity has.
    fn of(event_type: Option<&str>, data: &Map<String, Value>) -> Option<Self> {
        if let Some(event_type) = event_type {
            if event_type.eq_ignore_ascii_case("ABNORMAL_PAYMENT") {
                return Some(Self::AbnormalPayment);
            }
            let upper = event_type.to_ascii_uppercase();
            let by_word = [
                ("REFUND", Self::Refund),
                ("SETTLEMENT", Self::Settlement),
                ("ORDER", Self::Order),
            ]
            .into_iter()
            .find(|(word, _)| upper.contains(word));
            if let Some((_, entity)) = by_word {
                return Some(entity);
            }
        }
        [
            ("refundOrderNo", Self::Refund),
            ("settlementOrderNo", Self::Settlement),
            ("orderStatus", Self::Order),
        ]
        .into_iter()
        .find(|(field, _)| data.get(*field).is_some_and(|v| !v.is_null()))
        .map(|(_, entity)| entity)
    }

    fn kind(self) -> Kind {
        match self {
            Self::Order => Kind::Order,
            Self::Refund => Kind::Refund,
            Self::Settlement => Kind::Settlement,
            Self::AbnormalPayment => Kind::AbnormalPayment,
        }
    }

    /// The entity's own status field, then a plain `status`. Only the entity's own
    /// field counts: a refund event that also carries its order's `orderStatus` must
    /// not be labelled with the order's status.
    fn provider_status(self, data: &Map<String, Value>) -> Option<String> {
        let own = match self {
            Self::Order => "orderStatus",
            Self::Refund => "refundStatus",
            Self::Settlement => "settlementStatus",
            Self::AbnormalPayment => "status",
        };
        text(data, own).or_else(|| text(data, "status"))
    }

    /// The status table of `providers.md` §1.8; the reason when the status is not in it.
    fn status(self, provider_status: Option<&str>) -> Result<Status, String> {
        if self == Self::AbnormalPayment {
            // Every abnormal payment needs a person, whether `PENDING`, `HANDLED` or
            // without a status.
            return Ok(Status::Abnormal);
        }
        let kind = self.kind().as_str();
        let Some(provider_status) = provider_status else {
            return Err(format!("the {kind} event has no status"));
        };
        let status = match (self, provider_status) {
            (Self::Order, "PAYING") => Status::Pending,
            (Self::Order, "PAID") => Status::Succeeded,
            (Self::Order, "CANCELLED") => Status::Cancelled,
            (Self::Order, "TIMEOUT") => Status::Expired,
            (Self::Order, "REFUNDING") => Status::Processing,
            (Self::Order, "PARTIAL_REFUNDED" | "REFUNDED") => Status::Refunded,
            (Self::Refund, "PENDING_REFUND") => Status::Pending,
            (Self::Refund, "REFUNDING") => Status::Processing,
            (Self::Refund, "REFUNDED") => Status::Succeeded,
            (Self::Refund, "CANCELLED") => Status::Cancelled,
            (Self::Refund, "FAILED") => Status::Failed,
            (Self::Settlement, "PENDING_SETTLEMENT") => Status::Pending,
            (Self::Settlement, "SETTLING") => Status::Processing,
            (Self::Settlement, "SETTLED") => Status::Succeeded,
            (Self::Settlement, "FAILED" | "REJECTED") => Status::Failed,
            (Self::Settlement, "CANCELLED") => Status::Cancelled,
            _ => {
                return Err(format!(
                    "status `{provider_status}` is not in the W Checkout {kind} table"
                ));
            }
        };
        Ok(status)
    }

    /// The entity's own number first (the merchant-generated one for refunds and
    /// settlements, as `providers.md` §1.7 lists), then W Checkout's `sysid`.
    fn subject_fields(self) -> &'static [&'static str] {
        match self {
            Self::Order => &["sysid", "orderNo"],
            Self::Refund => &["refundOrderNo", "sysid"],
            Self::Settlement => &["settlementOrderNo", "sysid"],
            Self::AbnormalPayment => &["abnormalPaymentNo", "sysid"],
        }
    }

    fn merchant_id_fields(self) -> &'static [&'static str] {
        match self {
            Self::Order | Self::AbnormalPayment => &["orderNo"],
            Self::Refund => &["refundOrderNo", "orderNo"],
            Self::Settlement => &["settlementOrderNo", "orderNo"],
        }
    }

    /// Amount and currency as sent. An order's `payingAmount` is in the stablecoin named
    /// by `token`; its `orderAmount` is documented as USD, so that is its currency.
    fn amount(self, data: &Map<String, Value>) -> (Option<String>, Option<String>) {
        if self == Self::Order {
            if let Some(paying) = text(data, "payingAmount") {
                return (Some(paying), text(data, "token"));
            }
            let ordered = text(data, "orderAmount");
            let currency = ordered.as_ref().map(|_| "USD".to_owned());
            return (ordered, currency);
        }
        (text(data, "amount"), text(data, "token"))
    }
}

/// A string's or number's literal text; empty strings count as absent.
fn text(object: &Map<String, Value>, key: &str) -> Option<String> {
    super::json_text(object.get(key)).filter(|s| !s.is_empty())
}

fn first_text(object: &Map<String, Value>, keys: &[&str]) -> Option<String> {
    keys.iter().find_map(|key| text(object, key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use time::macros::datetime;

    /// `providers.md` §1.3: the XCheckout quick start's API-signing vector.
    const XCHECKOUT_KEY: &str = "aR2822Y6XbehWMclnB0Y2NJK";
    const XCHECKOUT_STRING_TO_SIGN: &str = r#"POST1636360661729/openapi/test{"a":"124"}"#;
    const XCHECKOUT_SIGNATURE: &str =
        "MxrYnCm9Q7JOAvOrISf8+T2kuTW1d/w0at8aaPaoiX08VWfun3XPokVlIx1TkHXdcitls09wzfUGtXQZq23xdg==";

    /// `providers.md` §1.3: the webhook vector.
    const VECTOR_KEY: &str = "test_sign_key";
    const VECTOR_TIMESTAMP: &str = "1758701681000";
    const VECTOR_BODY: &str = r#"{"eventId":"evt_0a4fee0f8882","eventType":"ABNORMAL_PAYMENT","timestamp":1758701681,"data":{"abnormalPaymentNo":"AP0001","orderNo":"o456463453458","token":"ETH_USDT","amount":"818.89","hash":"0xabc","pendingAmount":"739.00","createdTime":"2025-12-23 12:56:47","updatedTime":"2025-12-23 12:56:47"}}"#;
    const VECTOR_SIGNATURE: &str =
        "5uhkTLyeIxS6y11ZxSzU7iBKxXpKtGOyRkZP+gzdNRjKEf3MipJKpwWpqwYN6HoSIkMrpLrnC0pFumr0/GqBog==";
    const VECTOR_NOW: OffsetDateTime = datetime!(2025-09-24 08:14:41 UTC);

    /// The seed's ABNORMAL_PAYMENT example, compact.
    const DOCUMENTED_BODY: &str = r#"{"eventId":"evt_0a4fee0f8882","eventType":"ABNORMAL_PAYMENT","timestamp":1758701681,"data":{"abnormalPaymentNo":"xxxxxxxx","orderNo":"xxxxxxx","token":"ETH_USDT","amount":"818.89","hash":"0xxxxxxxxxx","pendingAmount":"739.00","createdTime":"2025-12-23 12:56:47","updatedTime":"2025-12-23 12:56:47"}}"#;

    fn provider(keys: &[&str]) -> WCheckout {
        WCheckout {
            sign_keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            tolerance: DEFAULT_TOLERANCE,
        }
    }

    /// Headers as hyper hands them over: lower-case names.
    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            let name = axum::http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
                .expect("header name");
            map.insert(name, HeaderValue::from_str(value).expect("header value"));
        }
        map
    }

    fn verify_at(
        p: &WCheckout,
        pairs: &[(&str, &str)],
        body: &[u8],
        now: OffsetDateTime,
    ) -> Result<(), VerifyError> {
        p.verify(&WebhookRequest {
            headers: &headers(pairs),
            body,
            now,
        })
    }

    fn vector_headers() -> [(&'static str, &'static str); 2] {
        [
            ("TIMESTAMP", VECTOR_TIMESTAMP),
            ("SIGNATURE", VECTOR_SIGNATURE),
        ]
    }

    fn source(env: &[(&str, &str)]) -> SourceConfig {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let config = crate::config::Config::load_from(None, &env).expect("config");
        config.sources["wcheckout"].clone()
    }

    fn event(body: &str) -> Normalized {
        match provider(&[]).parse(&WebhookRequest::body_only(body.as_bytes())) {
            Parsed::Event(event) => *event,
            Parsed::Unrecognized { reason, .. } => panic!("unrecognized ({reason}): {body}"),
        }
    }

    #[test]
    fn xcheckout_vector_proves_the_hmac_and_base64_construction() {
        let mac = mac(XCHECKOUT_KEY, &[XCHECKOUT_STRING_TO_SIGN.as_bytes()]).expect("mac");
        assert_eq!(
            BASE64.encode(mac.finalize().into_bytes()),
            XCHECKOUT_SIGNATURE
        );
    }

    #[test]
    fn webhook_vector_verifies() {
        let p = provider(&[VECTOR_KEY]);
        assert_eq!(
            verify_at(&p, &vector_headers(), VECTOR_BODY.as_bytes(), VECTOR_NOW),
            Ok(())
        );
    }

    #[test]
    fn d_prefixed_header_names_are_accepted() {
        let p = provider(&[VECTOR_KEY]);
        let pairs = [
            ("D-Timestamp", VECTOR_TIMESTAMP),
            ("D-Signature", VECTOR_SIGNATURE),
        ];
        assert_eq!(
            verify_at(&p, &pairs, VECTOR_BODY.as_bytes(), VECTOR_NOW),
            Ok(())
        );
        let mixed = [
            ("TIMESTAMP", VECTOR_TIMESTAMP),
            ("D-Signature", VECTOR_SIGNATURE),
        ];
        assert_eq!(
            verify_at(&p, &mixed, VECTOR_BODY.as_bytes(), VECTOR_NOW),
            Ok(())
        );
    }

    #[test]
    fn any_of_several_keys_may_match() {
        let p = provider(&["old_key", VECTOR_KEY]);
        assert_eq!(
            verify_at(&p, &vector_headers(), VECTOR_BODY.as_bytes(), VECTOR_NOW),
            Ok(())
        );
    }

    #[test]
    fn wrong_key_and_flipped_byte_are_refused() {
        let wrong = provider(&["wrong_sign_key"]);
        assert_eq!(
            verify_at(
                &wrong,
                &vector_headers(),
                VECTOR_BODY.as_bytes(),
                VECTOR_NOW
            ),
            Err(VerifyError::BadSignature)
        );
        let p = provider(&[VECTOR_KEY]);
        let mut flipped = VECTOR_BODY.as_bytes().to_vec();
        flipped[20] ^= 1;
        assert_eq!(
            verify_at(&p, &vector_headers(), &flipped, VECTOR_NOW),
            Err(VerifyError::BadSignature)
        );
        let other_timestamp = [
            ("TIMESTAMP", "1758701681001"),
            ("SIGNATURE", VECTOR_SIGNATURE),
        ];
        assert_eq!(
            verify_at(&p, &other_timestamp, VECTOR_BODY.as_bytes(), VECTOR_NOW),
            Err(VerifyError::BadSignature),
            "the timestamp is part of the signed text"
        );
    }

    #[test]
    fn stale_and_future_timestamps_are_refused() {
        let p = provider(&[VECTOR_KEY]);
        let body = VECTOR_BODY.as_bytes();
        let edge = Duration::from_secs(120);
        let past = Duration::from_secs(121);
        assert_eq!(
            verify_at(&p, &vector_headers(), body, VECTOR_NOW + edge),
            Ok(())
        );
        assert_eq!(
            verify_at(&p, &vector_headers(), body, VECTOR_NOW + past),
            Err(VerifyError::StaleTimestamp(120))
        );
        assert_eq!(
            verify_at(&p, &vector_headers(), body, VECTOR_NOW - past),
            Err(VerifyError::StaleTimestamp(120)),
            "a timestamp in the future is refused too"
        );
    }

    #[test]
    fn a_source_may_widen_the_window() {
        let source = source(&[
            ("HOOKRELAY_SOURCES__WCHECKOUT__SIGN_KEY", VECTOR_KEY),
            ("HOOKRELAY_SOURCES__WCHECKOUT__TIMESTAMP_TOLERANCE", "10m"),
        ]);
        let p = (SPEC.build)(&source).expect("build");
        let request = |now| {
            p.verify(&WebhookRequest {
                headers: &headers(&vector_headers()),
                body: VECTOR_BODY.as_bytes(),
                now,
            })
        };
        assert_eq!(request(VECTOR_NOW + Duration::from_secs(590)), Ok(()));
        assert_eq!(
            request(VECTOR_NOW + Duration::from_secs(610)),
            Err(VerifyError::StaleTimestamp(600))
        );
    }

    #[test]
    fn missing_and_malformed_headers_are_refused() {
        let p = provider(&[VECTOR_KEY]);
        let body = VECTOR_BODY.as_bytes();
        assert_eq!(
            verify_at(&p, &[("TIMESTAMP", VECTOR_TIMESTAMP)], body, VECTOR_NOW),
            Err(VerifyError::MissingHeader("SIGNATURE"))
        );
        assert_eq!(
            verify_at(&p, &[("SIGNATURE", VECTOR_SIGNATURE)], body, VECTOR_NOW),
            Err(VerifyError::MissingHeader("TIMESTAMP"))
        );
        assert_eq!(
            verify_at(
                &p,
                &[
                    ("TIMESTAMP", "1758701681.000"),
                    ("SIGNATURE", VECTOR_SIGNATURE)
                ],
                body,
                VECTOR_NOW
            ),
            Err(VerifyError::MalformedHeader("TIMESTAMP"))
        );
        assert_eq!(
            verify_at(
                &p,
                &[("D-Timestamp", "soon"), ("D-Signature", VECTOR_SIGNATURE)],
                body,
                VECTOR_NOW
            ),
            Err(VerifyError::MalformedHeader("D-Timestamp"))
        );
        assert_eq!(
            verify_at(
                &p,
                &[
                    ("TIMESTAMP", VECTOR_TIMESTAMP),
                    ("SIGNATURE", "not base64!")
                ],
                body,
                VECTOR_NOW
            ),
            Err(VerifyError::MalformedHeader("SIGNATURE"))
        );
        let unpadded = VECTOR_SIGNATURE.trim_end_matches('=');
        assert_eq!(
            verify_at(
                &p,
                &[("TIMESTAMP", VECTOR_TIMESTAMP), ("SIGNATURE", unpadded)],
                body,
                VECTOR_NOW
            ),
            Err(VerifyError::MalformedHeader("SIGNATURE")),
            "Base64 is compared exactly, padding included"
        );
    }

    #[test]
    fn a_source_without_keys_refuses_and_names_the_setting() {
        let p = provider(&[]);
        assert_eq!(p.missing_credentials(), vec!["sign_key"]);
        assert_eq!(
            verify_at(&p, &vector_headers(), VECTOR_BODY.as_bytes(), VECTOR_NOW),
            Err(VerifyError::MissingCredential("sign_key"))
        );
        assert!(provider(&[VECTOR_KEY]).missing_credentials().is_empty());
    }

    #[test]
    fn sign_reproduces_the_vector_and_samples_verify() {
        let source = source(&[("HOOKRELAY_SOURCES__WCHECKOUT__SIGN_KEY", VECTOR_KEY)]);
        let ctx = SampleContext {
            source: &source,
            now: VECTOR_NOW,
            unique: "a1b2c3",
            private_key_pem: None,
        };
        let signed = sign(&ctx, VECTOR_BODY.as_bytes()).expect("sign");
        assert!(signed.contains(&("TIMESTAMP".to_owned(), VECTOR_TIMESTAMP.to_owned())));
        assert!(signed.contains(&("SIGNATURE".to_owned(), VECTOR_SIGNATURE.to_owned())));
        assert!(signed.contains(&("Content-Type".to_owned(), "application/json".to_owned())));

        let body = sample_body(&ctx);
        let signed = sign(&ctx, &body).expect("sign");
        let pairs: Vec<(&str, &str)> = signed
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let p = (SPEC.build)(&source).expect("build");
        assert_eq!(
            p.verify(&WebhookRequest {
                headers: &headers(&pairs),
                body: &body,
                now: VECTOR_NOW,
            }),
            Ok(())
        );
        let Parsed::Event(event) = p.parse(&WebhookRequest::body_only(&body)) else {
            panic!("the sample must be recognized");
        };
        assert_eq!(event.idempotency_key, "evt_a1b2c3");
        assert_eq!(event.subject, "APa1b2c3");
        assert_eq!(
            (event.kind, event.status),
            (Kind::AbnormalPayment, Status::Abnormal)
        );
        assert_eq!(event.event_time, Some(VECTOR_NOW));
    }

    #[test]
    fn sign_without_a_key_names_the_setting() {
        let source = source(&[]);
        let ctx = SampleContext {
            source: &source,
            now: VECTOR_NOW,
            unique: "x",
            private_key_pem: None,
        };
        assert!(matches!(
            sign(&ctx, b"{}"),
            Err(SampleError::MissingSetting("sign_key"))
        ));
    }

    #[test]
    fn samples_stay_valid_json_whatever_the_unique_token() {
        let source = source(&[]);
        let ctx = SampleContext {
            source: &source,
            now: VECTOR_NOW,
            unique: "a\"b\\c",
            private_key_pem: None,
        };
        let body = sample_body(&ctx);
        let value: Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(value["eventId"], "evt_a\"b\\c");
    }

    #[test]
    fn ack_is_the_endpoint_spec_body() {
        let ack = provider(&[]).ack();
        assert_eq!(ack.status, StatusCode::OK);
        assert_eq!(ack.content_type, Some("application/json"));
        assert_eq!(&ack.body[..], br#"{"retcode":"200","retmsg":"success"}"#);
    }

    #[test]
    fn documented_abnormal_payment_normalizes() {
        let event = event(DOCUMENTED_BODY);
        assert_eq!(
            event,
            Normalized {
                idempotency_key: "evt_0a4fee0f8882".to_owned(),
                kind: Kind::AbnormalPayment,
                status: Status::Abnormal,
                subject: "xxxxxxxx".to_owned(),
                provider_event_type: Some("ABNORMAL_PAYMENT".to_owned()),
                provider_status: None,
                order_id: None,
                merchant_order_id: Some("xxxxxxx".to_owned()),
                amount: Some("818.89".to_owned()),
                currency: Some("ETH_USDT".to_owned()),
                event_time: Some(datetime!(2025-09-24 08:14:41 UTC)),
            }
        );
    }

    #[test]
    fn abnormal_payments_are_abnormal_whatever_their_status() {
        for (status, expected) in [
            (r#","status":"PENDING""#, Some("PENDING")),
            (r#","status":"HANDLED""#, Some("HANDLED")),
            (r#","status":"SOMETHING_NEW""#, Some("SOMETHING_NEW")),
            ("", None),
        ] {
            let body = format!(
                r#"{{"eventId":"e","eventType":"ABNORMAL_PAYMENT","timestamp":1,"data":{{"abnormalPaymentNo":"AP1","type":"OVER_PAID"{status}}}}}"#
            );
            let event = event(&body);
            assert_eq!(event.status, Status::Abnormal, "{body}");
            assert_eq!(event.provider_status.as_deref(), expected);
        }
    }

    #[test]
    fn illustrative_order_event_prefers_the_paying_amount() {
        let event = event(
            r#"{"eventId":"evt_1b2c3d4e5f60","eventType":"ORDER_STATUS_CHANGED","timestamp":1758702000,"data":{"sysid":"OR1971467057612247041","orderNo":"o456463453458","orderAmount":123.45,"payingAmount":124.68,"token":"ETH_USDT","orderStatus":"PAID"}}"#,
        );
        assert_eq!((event.kind, event.status), (Kind::Order, Status::Succeeded));
        assert_eq!(event.subject, "OR1971467057612247041");
        assert_eq!(event.order_id.as_deref(), Some("OR1971467057612247041"));
        assert_eq!(event.merchant_order_id.as_deref(), Some("o456463453458"));
        assert_eq!(event.amount.as_deref(), Some("124.68"));
        assert_eq!(event.currency.as_deref(), Some("ETH_USDT"));
        assert_eq!(event.provider_status.as_deref(), Some("PAID"));
        assert_eq!(event.event_time, Some(datetime!(2025-09-24 08:20:00 UTC)));
    }

    #[test]
    fn numeric_amounts_keep_their_digits() {
        let order = event(
            r#"{"eventId":"e","eventType":"ORDER_STATUS_CHANGED","timestamp":1,"data":{"orderNo":"o1","orderAmount":123.450,"orderStatus":"TIMEOUT"}}"#,
        );
        assert_eq!(order.amount.as_deref(), Some("123.450"));
        assert_eq!(
            order.currency.as_deref(),
            Some("USD"),
            "orderAmount is in USD"
        );
        assert_eq!(order.subject, "o1", "no sysid: the merchant's number");
        assert_eq!(order.order_id, None);
        let refund = event(
            r#"{"eventId":"e","eventType":"REFUND_STATUS_CHANGED","data":{"refundOrderNo":"r1","amount":50.100000000000000000001,"token":"TRON_USDT","refundStatus":"REFUNDED"}}"#,
        );
        assert_eq!(refund.amount.as_deref(), Some("50.100000000000000000001"));
        assert_eq!(
            refund.event_time, None,
            "no timestamp: the relay uses receive time"
        );
    }

    #[test]
    fn every_row_of_the_status_table_maps() {
        let rows = [
            (
                "ORDER_STATUS_CHANGED",
                "orderStatus",
                "PAYING",
                Kind::Order,
                Status::Pending,
            ),
            (
                "ORDER_STATUS_CHANGED",
                "orderStatus",
                "PAID",
                Kind::Order,
                Status::Succeeded,
            ),
            (
                "ORDER_STATUS_CHANGED",
                "orderStatus",
                "CANCELLED",
                Kind::Order,
                Status::Cancelled,
            ),
            (
                "ORDER_STATUS_CHANGED",
                "orderStatus",
                "TIMEOUT",
                Kind::Order,
                Status::Expired,
            ),
            (
                "ORDER_STATUS_CHANGED",
                "orderStatus",
                "REFUNDING",
                Kind::Order,
                Status::Processing,
            ),
            (
                "ORDER_STATUS_CHANGED",
                "orderStatus",
                "PARTIAL_REFUNDED",
                Kind::Order,
                Status::Refunded,
            ),
            (
                "ORDER_STATUS_CHANGED",
                "orderStatus",
                "REFUNDED",
                Kind::Order,
                Status::Refunded,
            ),
            (
                "REFUND_STATUS_CHANGED",
                "refundStatus",
                "PENDING_REFUND",
                Kind::Refund,
                Status::Pending,
            ),
            (
                "REFUND_STATUS_CHANGED",
                "refundStatus",
                "REFUNDING",
                Kind::Refund,
                Status::Processing,
            ),
            (
                "REFUND_STATUS_CHANGED",
                "refundStatus",
                "REFUNDED",
                Kind::Refund,
                Status::Succeeded,
            ),
            (
                "REFUND_STATUS_CHANGED",
                "refundStatus",
                "CANCELLED",
                Kind::Refund,
                Status::Cancelled,
            ),
            (
                "REFUND_STATUS_CHANGED",
                "refundStatus",
                "FAILED",
                Kind::Refund,
                Status::Failed,
            ),
            (
                "SETTLEMENT_STATUS_CHANGED",
                "settlementStatus",
                "PENDING_SETTLEMENT",
                Kind::Settlement,
                Status::Pending,
            ),
            (
                "SETTLEMENT_STATUS_CHANGED",
                "settlementStatus",
                "SETTLING",
                Kind::Settlement,
                Status::Processing,
            ),
            (
                "SETTLEMENT_STATUS_CHANGED",
                "settlementStatus",
                "SETTLED",
                Kind::Settlement,
                Status::Succeeded,
            ),
            (
                "SETTLEMENT_STATUS_CHANGED",
                "settlementStatus",
                "FAILED",
                Kind::Settlement,
                Status::Failed,
            ),
            (
                "SETTLEMENT_STATUS_CHANGED",
                "settlementStatus",
                "REJECTED",
                Kind::Settlement,
                Status::Failed,
            ),
            (
                "SETTLEMENT_STATUS_CHANGED",
                "settlementStatus",
                "CANCELLED",
                Kind::Settlement,
                Status::Cancelled,
            ),
        ];
        for (event_type, field, provider_status, kind, status) in rows {
            let body = format!(
                r#"{{"eventId":"e","eventType":"{event_type}","data":{{"sysid":"X1","{field}":"{provider_status}"}}}}"#
            );
            let event = event(&body);
            assert_eq!((event.kind, event.status), (kind, status), "{body}");
            assert_eq!(event.provider_status.as_deref(), Some(provider_status));
        }
    }

    #[test]
    fn refunds_and_settlements_use_their_own_numbers() {
        let refund = event(
            r#"{"eventId":"e","eventType":"REFUND_ORDER_STATUS_CHANGED","data":{"sysid":"RF1","refundOrderNo":"rf-1","orderNo":"o-1","orderStatus":"PAID","status":"REFUNDING","amount":"5.00","token":"ETH_USDT"}}"#,
        );
        assert_eq!(refund.kind, Kind::Refund, "REFUND wins over ORDER");
        assert_eq!(
            refund.status,
            Status::Processing,
            "the order's status is not the refund's"
        );
        assert_eq!(refund.provider_status.as_deref(), Some("REFUNDING"));
        assert_eq!(refund.subject, "rf-1");
        assert_eq!(refund.merchant_order_id.as_deref(), Some("rf-1"));
        assert_eq!(refund.order_id.as_deref(), Some("RF1"));
        let settlement = event(
            r#"{"eventId":"e","eventType":"STATUS_UPDATE","data":{"sysid":"ST1","settlementOrderNo":"st-1","amount":"100","token":"TRON_USDT","orderNos":["o-1"],"settlementStatus":"SETTLED"}}"#,
        );
        assert_eq!(settlement.kind, Kind::Settlement, "by the shape of data");
        assert_eq!(settlement.subject, "st-1");
        assert_eq!(settlement.merchant_order_id.as_deref(), Some("st-1"));
        let order = event(r#"{"eventId":"e","data":{"sysid":"OR1","orderStatus":"PAYING"}}"#);
        assert_eq!(
            order.kind,
            Kind::Order,
            "no event type: by the shape of data"
        );
        assert_eq!(order.provider_event_type, None);
        assert_eq!(order.status, Status::Pending);
        let lower = event(
            r#"{"eventId":"e","eventType":"order.paid","data":{"sysid":"OR1","orderStatus":"PAID"}}"#,
        );
        assert_eq!(
            lower.kind,
            Kind::Order,
            "event type words match in any case"
        );
    }

    #[test]
    fn bodies_outside_the_tables_are_unrecognized_not_guessed() {
        let p = provider(&[]);
        for (body, event_type) in [
            ("not json", None),
            ("[1,2]", None),
            (r#"{"eventId":"e","eventType":7,"data":{}}"#, None),
            (
                r#"{"eventType":"ABNORMAL_PAYMENT","data":{"abnormalPaymentNo":"AP1"}}"#,
                Some("ABNORMAL_PAYMENT"),
            ),
            (
                r#"{"eventId":"","eventType":"ABNORMAL_PAYMENT","data":{"abnormalPaymentNo":"AP1"}}"#,
                Some("ABNORMAL_PAYMENT"),
            ),
            (
                r#"{"eventId":"e","eventType":"ABNORMAL_PAYMENT"}"#,
                Some("ABNORMAL_PAYMENT"),
            ),
            (
                r#"{"eventId":"e","eventType":"ABNORMAL_PAYMENT","data":{"orderNo":"o1"}}"#,
                Some("ABNORMAL_PAYMENT"),
            ),
            (
                r#"{"eventId":"e","eventType":"PAYOUT_DONE","data":{"sysid":"P1","status":"DONE"}}"#,
                Some("PAYOUT_DONE"),
            ),
            (
                r#"{"eventId":"e","eventType":"ORDER_STATUS_CHANGED","data":{"sysid":"OR1","orderStatus":"EXPLODED"}}"#,
                Some("ORDER_STATUS_CHANGED"),
            ),
            (
                r#"{"eventId":"e","eventType":"ORDER_STATUS_CHANGED","data":{"sysid":"OR1","orderStatus":"paid"}}"#,
                Some("ORDER_STATUS_CHANGED"),
            ),
            (
                r#"{"eventId":"e","eventType":"ORDER_STATUS_CHANGED","data":{"sysid":"OR1"}}"#,
                Some("ORDER_STATUS_CHANGED"),
            ),
            (
                r#"{"eventId":"e","eventType":"SETTLEMENT_STATUS_CHANGED","data":{"settlementOrderNo":"s1","settlementStatus":"PAID"}}"#,
                Some("SETTLEMENT_STATUS_CHANGED"),
            ),
            (
                r#"{"eventId":"e","eventType":"ORDER_REFUNDED","data":{"sysid":"OR1","orderStatus":"REFUNDED"}}"#,
                Some("ORDER_REFUNDED"),
            ),
            (
                r#"{"eventId":"e","eventType":"ORDER_STATUS_CHANGED","data":{"orderStatus":"PAID"}}"#,
                Some("ORDER_STATUS_CHANGED"),
            ),
        ] {
            match p.parse(&WebhookRequest::body_only(body.as_bytes())) {
                Parsed::Unrecognized {
                    provider_event_type,
                    ..
                } => assert_eq!(provider_event_type.as_deref(), event_type, "{body}"),
                Parsed::Event(event) => panic!("{body} was recognized as {event:?}"),
            }
        }
    }
}
