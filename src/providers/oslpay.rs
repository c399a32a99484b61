//! OSL Pay, the fiat-to-crypto on-ramp of OSL Group (`docs/providers/oslpay.md`, contract §6).
//!
//! Authentication: headers `appId`, `timestamp` (ms) and `signature` = base64 RSA
//! PKCS#1 v1.5 SHA-256 over `appId={appId}&timestamp={timestamp}`, checked with the
//! OSL webhook public key the merchant receives at onboarding. The body is **not**
//! signed, so a captured header set authenticates any body until its timestamp
//! leaves the window: operators should set `allow_ips` and keep the window tight.
//! Ack: 200 with OSL's OpenAPI envelope, success code `00000`.

use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use bytes::Bytes;
use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey};
use rsa::pkcs1v15::{Signature, SigningKey, VerifyingKey};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
use rsa::signature::{SignatureEncoding, Signer, Verifier};
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde_json::{Map, Value};
use sha2::Sha256;
use time::OffsetDateTime;

use super::{
    Ack, BuildError, Provider, ProviderSpec, SampleContext, SampleError, TimeUnit, VerifyError,
    WebhookRequest, text, unix_millis,
};
use crate::config::SourceConfig;
use crate::event::{Kind, Normalized, Parsed, Status};

/// Registry entry.
pub(crate) const SPEC: ProviderSpec = ProviderSpec {
    name: "oslpay",
    keys: &["app_id", "public_key", "api_private_key"],
    // The app id travels in clear in every webhook header and the public key is
    // public: masking them would only hide from the operator which key is
    // configured. The merchant's OpenAPI private key (recovery) is a secret.
    secret_keys: &["api_private_key"],
    // OSL signs `appId` and `timestamp`, not the body: within the timestamp's
    // window the signature authenticates any body, as a password would.
    credential_headers: &["signature"],
    // OSL documents an optional `privateSecret` ("App private secret") in order
    // bodies: it must not reach every consumer of the exchange.
    default_redact: &["data.privateSecret"],
    build,
    sample_body,
    sign,
};

/// No documented window: five minutes absorbs clock skew and OSL's queueing while
/// bounding how long a captured header set can be replayed with another body.
const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

const ORDER_EVENT: &str = "order_status_change";
const KYC_EVENT: &str = "kyc_status_change";

/// Standard alphabet with or without padding: Java encoders pad, but a proxy or an
/// environment file may have dropped the `=`.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

fn build(source: &SourceConfig) -> Result<Box<dyn Provider>, BuildError> {
    let key = source
        .get("public_key")
        .map(parse_public_key)
        .transpose()
        .map_err(|reason| BuildError::Invalid {
            key: "public_key",
            reason,
        })?;
    Ok(Box::new(OslPay {
        app_id: source.get("app_id").map(|id| id.trim().to_owned()),
        key: key.map(VerifyingKey::new),
        tolerance: source.timestamp_tolerance.unwrap_or(DEFAULT_TOLERANCE),
        api: api::Api::new(source)?,
    }))
}

/// Reads OSL's webhook public key as PEM (`PUBLIC KEY` or `RSA PUBLIC KEY`) or as
/// bare base64 DER. Whitespace and literal `\n` escapes are ignored inside the base64,
/// so a PEM pasted into one environment-variable line still reads.
fn parse_public_key(text: &str) -> Result<RsaPublicKey, String> {
    const EXPECTED: &str = "expected OSL's webhook public key as PEM (`-----BEGIN PUBLIC KEY-----` or \
        `-----BEGIN RSA PUBLIC KEY-----`) or as base64 DER SubjectPublicKeyInfo";
    if text.contains("PRIVATE KEY-----") {
        return Err(format!(
            "this is a private key: the relay needs only OSL's webhook public key; {EXPECTED}"
        ));
    }
    let (label, base64_text) = match pem_body(text) {
        Some((label, body)) => (Some(label), body),
        None if text.contains("-----") => {
            return Err(format!("unsupported or truncated PEM block; {EXPECTED}"));
        }
        None => (None, text),
    };
    let der =
        decode_base64(base64_text).map_err(|e| format!("not valid base64 ({e}); {EXPECTED}"))?;
    let key = match label {
        Some("PUBLIC KEY") => RsaPublicKey::from_public_key_der(&der).map_err(|e| e.to_string()),
        Some(_) => RsaPublicKey::from_pkcs1_der(&der).map_err(|e| e.to_string()),
        // Bare DER is what Java's `X509EncodedKeySpec` prints (SPKI); PKCS#1 is the
        // other encoding an RSA key is commonly handed out in.
        None => RsaPublicKey::from_public_key_der(&der)
            .or_else(|_| RsaPublicKey::from_pkcs1_der(&der))
            .map_err(|e| e.to_string()),
    };
    key.map_err(|e| format!("not an RSA public key ({e}); {EXPECTED}"))
}

/// The label and base64 text of the first `PUBLIC KEY` or `RSA PUBLIC KEY` PEM block.
fn pem_body(text: &str) -> Option<(&'static str, &str)> {
    ["RSA PUBLIC KEY", "PUBLIC KEY"]
        .into_iter()
        .find_map(|label| {
            let begin = format!("-----BEGIN {label}-----");
            let end = format!("-----END {label}-----");
            let start = text.find(&begin)? + begin.len();
            let stop = text[start..].find(&end)? + start;
            Some((label, &text[start..stop]))
        })
}

fn decode_base64(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    let compact: String = text
        .replace("\\n", "")
        .replace("\\r", "")
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    BASE64.decode(compact)
}

/// The exact text OSL signs: the two header values as received, never re-rendered.
fn signed_message(app_id: &str, timestamp: &str) -> String {
    format!("appId={app_id}&timestamp={timestamp}")
}

fn sample_body(ctx: &SampleContext<'_>) -> Vec<u8> {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    let at = ctx.now.format(&format).unwrap_or_default();
    let ms = unix_millis(ctx.now);
    let id = ctx.unique;
    let source = &ctx.source.name;
    let appid = ctx
        .source
        .get("app_id")
        .map(|app_id| format!(r#","appid":"{}""#, app_id.trim()))
        .unwrap_or_default();
    format!(
        r#"{{"type":"order_status_change","data":{{"merchantOrderId":"order_{ms}_{id}","orderId":"{id}","userId":"us1148829301","fiatCurrency":"EUR","cryptoCurrency":"USDT","fiatAmount":"100.00","cryptoAmount":"104.21","orderFee":"2.90","price":"0.9318","payWayCode":"CARD_PAYMENT","state":"COMPLETED","completedTime":"{at}","createTime":"{at}","updateTime":"{at}","network":"TRC20","address":"TBZmSS1Phxy8jJ9aK3Q6PyxYeNk2abcde","merchantUser":"user_{id}","txId":"f39abf3275607fe2ffd40c06adf877f249829f6d1146a4f72ca2ad79ed7ed072","networkFee":"1.00","chainArrivalTime":"{at}","actualReceivedAmount":"103.21","orderCallBackUrl":"https://merchant.example/webhooks/{source}"{appid}}}}}"#
    )
    .into_bytes()
}

/// An RSA private key in PEM, PKCS#1 (`RSA PRIVATE KEY`) or PKCS#8.
fn parse_private_key(pem: &str) -> Result<RsaPrivateKey, String> {
    if pem.contains("BEGIN RSA PRIVATE KEY") {
        RsaPrivateKey::from_pkcs1_pem(pem).map_err(|e| e.to_string())
    } else {
        RsaPrivateKey::from_pkcs8_pem(pem).map_err(|e| e.to_string())
    }
    .map_err(|e| format!("cannot read the RSA private key PEM: {e}"))
}

fn sign(ctx: &SampleContext<'_>, _body: &[u8]) -> Result<Vec<(String, String)>, SampleError> {
    // OSL signs only the app id and the timestamp, so the body plays no part here.
    let app_id = ctx
        .source
        .get("app_id")
        .map(str::trim)
        .ok_or(SampleError::MissingSetting("app_id"))?;
    let pem = ctx.private_key_pem.ok_or(SampleError::MissingSetting(
        "private key (--private-key FILE)",
    ))?;
    let key = parse_private_key(pem).map_err(SampleError::Invalid)?;
    let timestamp = unix_millis(ctx.now).to_string();
    let signature = SigningKey::<Sha256>::new(key)
        .try_sign(signed_message(app_id, &timestamp).as_bytes())
        .map_err(|e| SampleError::Invalid(format!("cannot sign: {e}")))?;
    Ok(vec![
        ("Content-Type".to_owned(), "application/json".to_owned()),
        ("appId".to_owned(), app_id.to_owned()),
        ("timestamp".to_owned(), timestamp),
        ("signature".to_owned(), BASE64.encode(signature.to_bytes())),
    ])
}

/// An OSL Pay source.
pub(crate) struct OslPay {
    app_id: Option<String>,
    key: Option<VerifyingKey<Sha256>>,
    tolerance: Duration,
    /// The OpenAPI, for status queries.
    api: api::Api,
}

/// A header OSL always sends; `display` is OSL's spelling, for the 401 body.
fn required<'a>(
    headers: &'a HeaderMap,
    lookup: &'static str,
    display: &'static str,
) -> Result<&'a str, VerifyError> {
    super::header(headers, lookup)
        .map_err(|e| match e {
            VerifyError::DuplicateHeader(_) => VerifyError::DuplicateHeader(display),
            _ => VerifyError::MalformedHeader(display),
        })?
        .ok_or(VerifyError::MissingHeader(display))
}

impl OslPay {
    /// The body is unsigned, so `data.appid` proves nothing on its own; but a body
    /// naming another app under our signed headers is not ours to publish. Runs only
    /// after the headers verified, so unauthenticated bodies are never parsed. A body
    /// that is not JSON passes here and becomes `unrecognized` in `parse`.
    fn check_body_app_id(app_id: &str, body: &[u8]) -> Result<(), VerifyError> {
        let Ok(root) = serde_json::from_slice::<Value>(body) else {
            return Ok(());
        };
        match root.pointer("/data/appid") {
            None | Some(Value::Null) => Ok(()),
            Some(value) => match super::json_text(Some(value)) {
                Some(text) if text.is_empty() => Ok(()),
                Some(text) if super::ct_eq(text.as_bytes(), app_id.as_bytes()) => Ok(()),
                _ => Err(VerifyError::UnknownAppId),
            },
        }
    }
}

impl Provider for OslPay {
    fn recovery(&self) -> Result<&dyn super::api::RecoveryApi, super::api::NoRecovery> {
        self.api.usable()
    }

    fn signs_body(&self) -> bool {
        false
    }

    fn missing_credentials(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        if self.app_id.is_none() {
            missing.push("app_id");
        }
        if self.key.is_none() {
            missing.push("public_key");
        }
        missing
    }

    fn verify(&self, request: &WebhookRequest<'_>) -> Result<(), VerifyError> {
        let app_id = self
            .app_id
            .as_deref()
            .ok_or(VerifyError::MissingCredential("app_id"))?;
        let key = self
            .key
            .as_ref()
            .ok_or(VerifyError::MissingCredential("public_key"))?;
        let sent_app_id = required(request.headers, "appid", "appId")?;
        let timestamp = required(request.headers, "timestamp", "timestamp")?;
        let signature = required(request.headers, "signature", "signature")?;
        if !super::ct_eq(sent_app_id.as_bytes(), app_id.as_bytes()) {
            return Err(VerifyError::UnknownAppId);
        }
        let signed_at = super::unix_time(timestamp, TimeUnit::Millis, "timestamp")?;
        super::check_window(signed_at, request.now, self.tolerance)?;
        let signature = BASE64
            .decode(signature)
            .ok()
            .and_then(|bytes| Signature::try_from(bytes.as_slice()).ok())
            .ok_or(VerifyError::MalformedHeader("signature"))?;
        key.verify(
            signed_message(sent_app_id, timestamp).as_bytes(),
            &signature,
        )
        .map_err(|_| VerifyError::BadSignature)?;
        Self::check_body_app_id(app_id, request.body)
    }

    fn parse(&self, request: &WebhookRequest<'_>) -> Parsed {
        let object = match super::json_object(request.body) {
            Ok(object) => object,
            Err(unrecognized) => return unrecognized,
        };
        let root = &object;
        let Some(event_type) = root.get("type").and_then(Value::as_str) else {
            return Parsed::unrecognized("no string `type`", None);
        };
        let event_type = event_type.to_owned();
        let Some(data) = root.get("data").and_then(Value::as_object) else {
            return Parsed::unrecognized("no `data` object", Some(event_type));
        };
        let outcome = match event_type.as_str() {
            ORDER_EVENT => order(&event_type, data),
            KYC_EVENT => kyc(&event_type, data),
            _ => Err("event type not in the OSL Pay mapping table"),
        };
        match outcome {
            Ok(event) => Parsed::Event(Box::new(event)),
            Err(reason) => Parsed::unrecognized(reason, Some(event_type)),
        }
    }

    fn ack(&self) -> Ack {
        let now = unix_millis(OffsetDateTime::now_utc());
        Ack {
            status: StatusCode::OK,
            content_type: Some("application/json"),
            body: Bytes::from(format!(
                r#"{{"code":"00000","msg":"success","data":null,"requestTime":{now}}}"#
            )),
        }
    }
}

/// `order_status_change` (`docs/providers/oslpay.md`).
fn order(event_type: &str, data: &Map<String, Value>) -> Result<Normalized, &'static str> {
    let state = data
        .get("state")
        .and_then(Value::as_str)
        .ok_or("order without a string `data.state`")?;
    let status = order_status(state).ok_or("order state not in the OSL Pay mapping table")?;
    let order_id = text(data, "orderId").ok_or("order without `data.orderId`")?;
    Ok(Normalized {
        // A state normally occurs once per order; the state is kept as sent, so a
        // `CREATEED` and a `CREATED` of the same order are two events.
        idempotency_key: format!("{event_type}:{order_id}:{state}"),
        kind: Kind::Order,
        status,
        subject: order_id.clone(),
        provider_event_type: Some(event_type.to_owned()),
        provider_status: Some(state.to_owned()),
        order_id: Some(order_id),
        // `merchantOrder` is the white-label copy's spelling of the same field.
        merchant_order_id: text(data, "merchantOrderId").or_else(|| text(data, "merchantOrder")),
        amount: text(data, "fiatAmount"),
        currency: text(data, "fiatCurrency"),
        event_time: text(data, "updateTime").and_then(|t| event_time(&t)),
    })
}

/// `kyc_status_change`: about a user, so the subject is OSL's `userId` and there is
/// no order, amount or documented time.
fn kyc(event_type: &str, data: &Map<String, Value>) -> Result<Normalized, &'static str> {
    let kyc_status = data
        .get("kycStatus")
        .and_then(Value::as_str)
        .ok_or("KYC event without a string `data.kycStatus`")?;
    let status = kyc_status_of(kyc_status).ok_or("KYC status not in the OSL Pay mapping table")?;
    let user_id = text(data, "userId").ok_or("KYC event without `data.userId`")?;
    Ok(Normalized {
        idempotency_key: format!("{event_type}:{user_id}:{kyc_status}"),
        kind: Kind::Kyc,
        status,
        subject: user_id,
        provider_event_type: Some(event_type.to_owned()),
        provider_status: Some(kyc_status.to_owned()),
        order_id: None,
        merchant_order_id: None,
        amount: None,
        currency: None,
        event_time: None,
    })
}

/// `docs/providers/oslpay.md`, with OSL's own misspellings accepted as the table lists them.
fn order_status(state: &str) -> Option<Status> {
    Some(match state {
        "CREATEED" | "CREATED" => Status::Created,
        "PROCESSING" => Status::Pending,
        "SUCCESSED" | "SUCCESS" | "CHAIN_WITHDRAW_WAIT" => Status::Processing,
        // The seed says COMPLETED may also mean the coin transfer failed; consumers
        // check `txId`/`errorCode` in the payload, the relay does not guess.
        "COMPLETED" => Status::Succeeded,
        "FAILED" => Status::Failed,
        "CONVERSION_FAILED" => Status::Abnormal,
        _ => return None,
    })
}

/// contract §6. `REJECT` is a temporary rejection, but the decision is still negative.
fn kyc_status_of(status: &str) -> Option<Status> {
    Some(match status {
        "PASS" => Status::Succeeded,
        "REJECT" | "FINAL_REJECT" => Status::Failed,
        "PROCESS" | "REVIEW" => Status::Pending,
        _ => return None,
    })
}

/// OSL does not document its time format: `YYYY-MM-DD HH:MM:SS` (read as UTC, like
/// every zone-less provider time) or 13-digit epoch milliseconds; anything else
/// leaves the receive time in charge.
fn event_time(text: &str) -> Option<OffsetDateTime> {
    if let Some(at) = super::parse_naive_utc(text) {
        return Some(at);
    }
    if text.len() != 13 {
        return None;
    }
    super::unix_time(text, TimeUnit::Millis, "updateTime").ok()
}

#[cfg(test)]
mod tests;

mod api;
