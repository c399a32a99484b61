//! W Checkout (`docs/providers/wcheckout.md`, contract §6).
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
//! type or, failing that, from the shape of `data` (`docs/providers/wcheckout.md`); their status
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
    Ack, BuildError, Provider, ProviderSpec, SampleContext, SampleError, TimeUnit, VerifyError,
    WebhookRequest, text, unix_millis,
};
use crate::config::SourceConfig;
use crate::event::{Kind, Normalized, Parsed, Status};

/// Registry entry.
pub(crate) const SPEC: ProviderSpec = ProviderSpec {
    name: "wcheckout",
    keys: &[SIGN_KEY],
    secret_keys: &[SIGN_KEY],
    // Its signature is a MAC of the body: it authenticates that body alone.
    credential_headers: &[],
    default_redact: &[],
    build,
    sample_body,
    sign,
};

const SIGN_KEY: &str = "sign_key";

/// "Reject if it differs from local time by more than 2 minutes" (Quick Start → Webhook).
const DEFAULT_TOLERANCE: Duration = Duration::from_secs(120);

/// The endpoint spec's form; the quick start also shows `{"retcode": 200, "retmsg":
/// "SUCCESS"}`, and contract §6 settles on this one.
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
    let timestamp = unix_millis(ctx.now).to_string();
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
pub(crate) struct WCheckout {
    sign_keys: Vec<String>,
    tolerance: Duration,
}

impl Provider for WCheckout {
    fn recovery(&self) -> Result<&dyn super::api::RecoveryApi, super::api::NoRecovery> {
        Err(super::api::NoRecovery::NoApi(
            "W Checkout has no resend API, and this release does not query its orders: its access-token API is not documented and its query signing is ambiguous until settled against the sandbox (docs/recovery.md)",
        ))
    }

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

/// What a W Checkout event is about (`docs/providers/wcheckout.md`).
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

    /// The status table of `docs/providers/wcheckout.md`; the reason when the status is not in it.
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
    /// settlements, as `docs/providers/wcheckout.md` lists), then W Checkout's `sysid`.
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

fn first_text(object: &Map<String, Value>, keys: &[&str]) -> Option<String> {
    keys.iter().find_map(|key| text(object, key))
}

#[cfg(test)]
mod tests;
