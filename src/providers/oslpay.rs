//! OSL Pay, the fiat-to-crypto on-ramp of seed 001 (`providers.md` §2, SPEC §6).
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
    Ack, BuildError, Normalized, Parsed, Provider, ProviderSpec, SampleContext, SampleError,
    TimeUnit, VerifyError, WebhookRequest,
};
use crate::config::SourceConfig;
use crate::event::{Kind, Status};

/// Registry entry.
pub const SPEC: ProviderSpec = ProviderSpec {
    name: "oslpay",
    keys: &["app_id", "public_key"],
    // The app id travels in clear in every webhook header and the key is public:
    // masking them would only hide from the operator which key is configured.
    secret_keys: &[],
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

fn millis(t: OffsetDateTime) -> i128 {
    t.unix_timestamp_nanos() / 1_000_000
}

fn sample_body(ctx: &SampleContext<'_>) -> Vec<u8> {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    let at = ctx.now.format(&format).unwrap_or_default();
    let ms = millis(ctx.now);
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
    let key = if pem.contains("BEGIN RSA PRIVATE KEY") {
        RsaPrivateKey::from_pkcs1_pem(pem).map_err(|e| e.to_string())
    } else {
        RsaPrivateKey::from_pkcs8_pem(pem).map_err(|e| e.to_string())
    }
    .map_err(|e| SampleError::Invalid(format!("cannot read the RSA private key PEM: {e}")))?;
    let timestamp = millis(ctx.now).to_string();
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
pub struct OslPay {
    app_id: Option<String>,
    key: Option<VerifyingKey<Sha256>>,
    tolerance: Duration,
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
        let now = millis(OffsetDateTime::now_utc());
        Ack {
            status: StatusCode::OK,
            content_type: Some("application/json"),
            body: Bytes::from(format!(
                r#"{{"code":"00000","msg":"success","data":null,"requestTime":{now}}}"#
            )),
        }
    }
}

/// A string or number field as its literal text; empty text counts as absent.
fn text(data: &Map<String, Value>, key: &str) -> Option<String> {
    super::json_text(data.get(key)).filter(|s| !s.is_empty())
}

/// `order_status_change` (`providers.md` §2.6–2.8).
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

/// `providers.md` §2.8, with OSL's own misspellings accepted as the table lists them.
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

/// SPEC §6. `REJECT` is a temporary rejection, but the decision is still negative.
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
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use rsa::pkcs1::EncodeRsaPublicKey;
    use rsa::pkcs8::{EncodePublicKey, LineEnding};
    use std::collections::BTreeMap;

    const APP_ID: &str = "me114702259781634";
    const PUBLIC_PEM: &str = include_str!("../../tests/fixtures/oslpay/test_public_key.pem");
    const PRIVATE_PEM: &str = include_str!("../../tests/fixtures/oslpay/test_private_key.pem");

    /// The documented example (`providers.md` §2.3) signed with the test private key
    /// by `openssl dgst -sha256 -sign test_private_key.pem | base64`: an independent
    /// implementation of SHA256withRSA.
    const VECTOR_TIMESTAMP: &str = "1756802303227";
    const VECTOR_SIGNATURE: &str = "aluEhno9B3t2q3h6ILQI19Ce1CiPT77l7MbFP1LW35RvkP10mOsgh/2QiWYTYJvluwiLTE9Ns2mIEDoCDC05RLdX66uzyIphzbimmh0NI/oSUXy5YFGBPvFq6Z1SUFlJIIIsnNqMF+BXnHzLw3mjJ2MdqzFjjRWw0c5lBfZkx7+9WACSjKgtNTR3HzJX9iH4cJKXu6qLxB1/2yEgN0ksPPwbtSd1IYFyLGzAUYWOCtpLHqXhh0pPsUii8wqgj7dMU22MxHWdANJe8VXyr5adIWUsKHs+Aflslq1+MLXSjoeIb/omwtEJNQuHYZeBIQhZMX4zpKmoFN4D1b9ZocFkbQ==";

    fn vector_time() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(1_756_802_303_227_000_000).expect("time")
    }

    fn source(settings: &[(&str, &str)]) -> SourceConfig {
        SourceConfig {
            name: "oslpay".to_owned(),
            provider: "oslpay".to_owned(),
            allow_unsigned: false,
            timestamp_tolerance: None,
            allow_ips: Vec::new(),
            redact: None,
            settings: settings
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    fn provider_with_key(public_key: &str) -> Box<dyn Provider> {
        build(&source(&[("app_id", APP_ID), ("public_key", public_key)])).expect("build")
    }

    fn provider() -> Box<dyn Provider> {
        provider_with_key(PUBLIC_PEM)
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(
                axum::http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        map
    }

    fn verify_at(
        p: &dyn Provider,
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

    fn vector_headers() -> Vec<(&'static str, &'static str)> {
        vec![
            ("appid", APP_ID),
            ("timestamp", VECTOR_TIMESTAMP),
            ("signature", VECTOR_SIGNATURE),
        ]
    }

    /// Headers from `sign`, as a client would send them.
    fn signed(app_id: &str, now: OffsetDateTime, private_pem: &str) -> Vec<(String, String)> {
        let src = source(&[("app_id", app_id)]);
        let ctx = SampleContext {
            source: &src,
            now,
            unique: "t",
            private_key_pem: Some(private_pem),
        };
        sign(&ctx, b"{}").expect("sign")
    }

    fn as_pairs(headers: &[(String, String)]) -> Vec<(&str, &str)> {
        headers
            .iter()
            .filter(|(k, _)| k != "Content-Type")
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    fn event(body: &str) -> Normalized {
        match provider().parse(&WebhookRequest::body_only(body.as_bytes())) {
            Parsed::Event(event) => *event,
            other => panic!("{body}: {other:?}"),
        }
    }

    fn order_body(state: &str) -> String {
        format!(
            r#"{{"type":"order_status_change","data":{{"merchantOrderId":"m-1","orderId":"1971467057612247041","fiatCurrency":"EUR","fiatAmount":"100.00","cryptoAmount":"104.21","state":"{state}","updateTime":"2025-09-24 10:21:55"}}}}"#
        )
    }

    /// A deterministic RNG for generating a second, unrelated key pair in tests.
    struct TestRng(u64);

    impl rsa::rand_core::RngCore for TestRng {
        fn next_u32(&mut self) -> u32 {
            (self.next_u64() >> 32) as u32
        }
        fn next_u64(&mut self) -> u64 {
            // splitmix64: fast and well mixed; cryptographic quality is not needed
            // for a throwaway test key.
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            for chunk in dest.chunks_mut(8) {
                let bytes = self.next_u64().to_le_bytes();
                chunk.copy_from_slice(&bytes[..chunk.len()]);
            }
        }
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rsa::rand_core::Error> {
            self.fill_bytes(dest);
            Ok(())
        }
    }

    impl rsa::rand_core::CryptoRng for TestRng {}

    #[test]
    fn the_signed_string_is_the_documented_format() {
        assert_eq!(
            signed_message(APP_ID, VECTOR_TIMESTAMP),
            "appId=me114702259781634&timestamp=1756802303227"
        );
    }

    #[test]
    fn an_independently_made_signature_verifies() {
        assert_eq!(
            verify_at(&*provider(), &vector_headers(), b"{}", vector_time()),
            Ok(())
        );
    }

    #[test]
    fn sign_then_verify_with_the_test_key_pair() {
        let now = OffsetDateTime::now_utc();
        let sent = signed(APP_ID, now, PRIVATE_PEM);
        let names: Vec<&str> = sent.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["Content-Type", "appId", "timestamp", "signature"]);
        assert_eq!(sent[1].1, APP_ID);
        assert_eq!(sent[2].1, millis(now).to_string());
        assert_eq!(
            verify_at(&*provider(), &as_pairs(&sent), b"any body", now),
            Ok(())
        );
    }

    #[test]
    fn a_signature_from_another_key_or_tampered_is_refused() {
        let other = RsaPrivateKey::new(&mut TestRng(7), 1024).expect("keygen");
        let other_pem = rsa::pkcs8::EncodePrivateKey::to_pkcs8_pem(&other, LineEnding::LF)
            .expect("pem")
            .to_string();
        let now = OffsetDateTime::now_utc();
        let sent = signed(APP_ID, now, &other_pem);
        assert_eq!(
            verify_at(&*provider(), &as_pairs(&sent), b"{}", now),
            Err(VerifyError::BadSignature)
        );

        let mut tampered = BASE64.decode(VECTOR_SIGNATURE).expect("base64");
        tampered[100] ^= 1;
        let tampered = BASE64.encode(tampered);
        let mut pairs = vector_headers();
        pairs[2].1 = &tampered;
        assert_eq!(
            verify_at(&*provider(), &pairs, b"{}", vector_time()),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn a_tampered_app_id_is_refused() {
        let mut pairs = vector_headers();
        pairs[0].1 = "me999999999999999";
        assert_eq!(
            verify_at(&*provider(), &pairs, b"{}", vector_time()),
            Err(VerifyError::UnknownAppId)
        );
        // A source configured for that other app still refuses: the signature
        // covers the app id the headers were signed for.
        let other = build(&source(&[
            ("app_id", "me999999999999999"),
            ("public_key", PUBLIC_PEM),
        ]))
        .expect("build");
        assert_eq!(
            verify_at(&*other, &pairs, b"{}", vector_time()),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn stale_and_future_timestamps_are_refused() {
        let p = provider();
        let pairs = vector_headers();
        let at = vector_time();
        for offset in [
            time::Duration::seconds(-300),
            time::Duration::seconds(300),
            time::Duration::ZERO,
        ] {
            assert_eq!(verify_at(&*p, &pairs, b"{}", at + offset), Ok(()));
        }
        for offset in [time::Duration::seconds(301), time::Duration::seconds(-301)] {
            assert_eq!(
                verify_at(&*p, &pairs, b"{}", at + offset),
                Err(VerifyError::StaleTimestamp(300)),
                "{offset}"
            );
        }
        let mut tight = source(&[("app_id", APP_ID), ("public_key", PUBLIC_PEM)]);
        tight.timestamp_tolerance = Some(Duration::from_secs(30));
        let tight = build(&tight).expect("build");
        assert_eq!(
            verify_at(&*tight, &pairs, b"{}", at + time::Duration::seconds(31)),
            Err(VerifyError::StaleTimestamp(30))
        );
    }

    #[test]
    fn missing_and_malformed_headers_are_refused() {
        let p = provider();
        for (drop, name) in [(0, "appId"), (1, "timestamp"), (2, "signature")] {
            let mut pairs = vector_headers();
            pairs.remove(drop);
            assert_eq!(
                verify_at(&*p, &pairs, b"{}", vector_time()),
                Err(VerifyError::MissingHeader(name))
            );
        }
        let mut pairs = vector_headers();
        pairs[1].1 = "1756802303.227";
        assert_eq!(
            verify_at(&*p, &pairs, b"{}", vector_time()),
            Err(VerifyError::MalformedHeader("timestamp"))
        );
        let mut pairs = vector_headers();
        pairs[2].1 = "not*base64";
        assert_eq!(
            verify_at(&*p, &pairs, b"{}", vector_time()),
            Err(VerifyError::MalformedHeader("signature"))
        );
    }

    #[test]
    fn a_body_naming_another_app_is_refused_after_the_headers_verify() {
        let p = provider();
        let at = vector_time();
        let pairs = vector_headers();
        for ok in [
            format!(r#"{{"type":"x","data":{{"appid":"{APP_ID}"}}}}"#),
            r#"{"type":"x","data":{"appid":""}}"#.to_owned(),
            r#"{"type":"x","data":{"appid":null}}"#.to_owned(),
            r#"{"type":"x","data":{}}"#.to_owned(),
            "not json".to_owned(),
        ] {
            assert_eq!(verify_at(&*p, &pairs, ok.as_bytes(), at), Ok(()), "{ok}");
        }
        for bad in [
            r#"{"type":"x","data":{"appid":"me999999999999999"}}"#,
            r#"{"type":"x","data":{"appid":{"id":"me114702259781634"}}}"#,
        ] {
            assert_eq!(
                verify_at(&*p, &pairs, bad.as_bytes(), at),
                Err(VerifyError::UnknownAppId),
                "{bad}"
            );
        }
    }

    #[test]
    fn public_keys_read_in_every_documented_encoding() {
        let key = RsaPublicKey::from_public_key_pem(PUBLIC_PEM).expect("pem");
        let bare_der: String = PUBLIC_PEM
            .lines()
            .filter(|line| !line.starts_with("-----"))
            .collect();
        let pkcs1_pem = key.to_pkcs1_pem(LineEnding::LF).expect("pkcs1");
        let one_line = PUBLIC_PEM.trim().replace('\n', "\\n");
        let pkcs1_der = BASE64.encode(key.to_pkcs1_der().expect("der").as_bytes());
        let spki_crlf = key
            .to_public_key_pem(LineEnding::CRLF)
            .expect("pem")
            .replace("-----\r\n", "-----\r\n  ");
        for text in [
            bare_der.as_str(),
            &pkcs1_pem,
            &one_line,
            &pkcs1_der,
            &spki_crlf,
        ] {
            assert_eq!(
                verify_at(
                    &*provider_with_key(text),
                    &vector_headers(),
                    b"{}",
                    vector_time()
                ),
                Ok(()),
                "{text}"
            );
        }
    }

    #[test]
    fn unusable_public_keys_fail_the_build_without_echoing_them() {
        for text in [
            "not a key",
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
            "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOC\n",
            "bm90IGEga2V5",
            PRIVATE_PEM,
        ] {
            let Err(BuildError::Invalid { key, reason }) =
                build(&source(&[("app_id", APP_ID), ("public_key", text)]))
            else {
                panic!("{text} must not build");
            };
            assert_eq!(key, "public_key");
            assert!(
                reason.contains("expected OSL's webhook public key"),
                "{reason}"
            );
            assert!(!reason.contains("MII"), "{reason}");
        }
    }

    #[test]
    fn a_source_without_credentials_refuses_and_names_them() {
        let p = build(&source(&[])).expect("build");
        assert_eq!(p.missing_credentials(), ["app_id", "public_key"]);
        assert_eq!(
            verify_at(&*p, &vector_headers(), b"{}", vector_time()),
            Err(VerifyError::MissingCredential("app_id"))
        );
        let p = build(&source(&[("app_id", APP_ID)])).expect("build");
        assert_eq!(p.missing_credentials(), ["public_key"]);
        assert_eq!(
            verify_at(&*p, &vector_headers(), b"{}", vector_time()),
            Err(VerifyError::MissingCredential("public_key"))
        );
        assert!(provider().missing_credentials().is_empty());
    }

    #[test]
    fn every_order_state_normalizes_by_the_mapping_table() {
        for (state, status) in [
            ("CREATEED", Status::Created),
            ("CREATED", Status::Created),
            ("PROCESSING", Status::Pending),
            ("SUCCESSED", Status::Processing),
            ("SUCCESS", Status::Processing),
            ("CHAIN_WITHDRAW_WAIT", Status::Processing),
            ("COMPLETED", Status::Succeeded),
            ("FAILED", Status::Failed),
            ("CONVERSION_FAILED", Status::Abnormal),
        ] {
            let e = event(&order_body(state));
            assert_eq!((e.kind, e.status), (Kind::Order, status), "{state}");
            assert_eq!(e.provider_status.as_deref(), Some(state));
            assert_eq!(
                e.idempotency_key,
                format!("order_status_change:1971467057612247041:{state}")
            );
        }
    }

    #[test]
    fn order_fields_are_extracted_as_sent() {
        let e = event(&order_body("COMPLETED"));
        assert_eq!(e.subject, "1971467057612247041");
        assert_eq!(e.order_id.as_deref(), Some("1971467057612247041"));
        assert_eq!(e.merchant_order_id.as_deref(), Some("m-1"));
        assert_eq!(e.amount.as_deref(), Some("100.00"));
        assert_eq!(e.currency.as_deref(), Some("EUR"));
        assert_eq!(
            e.provider_event_type.as_deref(),
            Some("order_status_change")
        );
        assert_eq!(
            e.event_time,
            Some(time::macros::datetime!(2025-09-24 10:21:55 UTC))
        );
    }

    #[test]
    fn white_label_spelling_numbers_and_epoch_times_are_tolerated() {
        let e = event(
            r#"{"type":"order_status_change","data":{"merchantOrder":"wl-7","orderId":"42","fiatAmount":100.10,"fiatCurrency":"USD","state":"SUCCESS","updateTime":"1758709315123"}}"#,
        );
        assert_eq!(e.merchant_order_id.as_deref(), Some("wl-7"));
        assert_eq!(e.amount.as_deref(), Some("100.10"));
        assert_eq!(
            e.event_time,
            Some(time::macros::datetime!(2025-09-24 10:21:55.123 UTC))
        );
        let e = event(
            r#"{"type":"order_status_change","data":{"orderId":"42","state":"FAILED","updateTime":"24/09/2025"}}"#,
        );
        assert_eq!(
            e.event_time, None,
            "unparsable times fall back to receive time"
        );
        assert_eq!(
            (e.amount, e.currency, e.merchant_order_id),
            (None, None, None)
        );
    }

    #[test]
    fn every_kyc_status_normalizes() {
        for (kyc_status, status) in [
            ("PASS", Status::Succeeded),
            ("REJECT", Status::Failed),
            ("FINAL_REJECT", Status::Failed),
            ("PROCESS", Status::Pending),
            ("REVIEW", Status::Pending),
        ] {
            let e = event(&format!(
                r#"{{"type":"kyc_status_change","data":{{"merchantUserId":"mu-1","userId":"us1148829301","kycShareFailedReason":"","merchantCode":"M1","kycStatus":"{kyc_status}"}}}}"#
            ));
            assert_eq!((e.kind, e.status), (Kind::Kyc, status), "{kyc_status}");
            assert_eq!(e.subject, "us1148829301");
            assert_eq!(
                e.idempotency_key,
                format!("kyc_status_change:us1148829301:{kyc_status}")
            );
            assert_eq!(e.provider_event_type.as_deref(), Some("kyc_status_change"));
            assert_eq!(e.provider_status.as_deref(), Some(kyc_status));
            assert_eq!(e.order_id, None);
            assert_eq!(e.event_time, None);
        }
    }

    #[test]
    fn bodies_outside_the_tables_are_unrecognized_not_guessed() {
        let p = provider();
        for (body, event_type) in [
            ("not json", None),
            ("[1,2]", None),
            (r#"{"data":{"orderId":"1","state":"COMPLETED"}}"#, None),
            (
                r#"{"type":"order_status_change","data":"x"}"#,
                Some("order_status_change"),
            ),
            (
                r#"{"type":"defi_account_bind_status","data":{"userId":"u1","status":"SUCCESS"}}"#,
                Some("defi_account_bind_status"),
            ),
            (
                r#"{"type":"defi_account_auth_status","data":{"userId":"u1"}}"#,
                Some("defi_account_auth_status"),
            ),
            (
                r#"{"type":"order_status_change","data":{"orderId":"1","state":"REFUNDED"}}"#,
                Some("order_status_change"),
            ),
            (
                r#"{"type":"order_status_change","data":{"orderId":"1","state":"completed"}}"#,
                Some("order_status_change"),
            ),
            (
                r#"{"type":"order_status_change","data":{"orderId":"","state":"COMPLETED"}}"#,
                Some("order_status_change"),
            ),
            (
                r#"{"type":"order_status_change","data":{"orderId":"1"}}"#,
                Some("order_status_change"),
            ),
            (
                r#"{"type":"kyc_status_change","data":{"userId":"u1","kycStatus":"EXPIRED"}}"#,
                Some("kyc_status_change"),
            ),
            (
                r#"{"type":"kyc_status_change","data":{"kycStatus":"PASS"}}"#,
                Some("kyc_status_change"),
            ),
        ] {
            match p.parse(&WebhookRequest::body_only(body.as_bytes())) {
                Parsed::Unrecognized {
                    provider_event_type,
                    ..
                } => assert_eq!(provider_event_type.as_deref(), event_type, "{body}"),
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_ack_is_osls_success_envelope_with_the_current_time() {
        let before = millis(OffsetDateTime::now_utc());
        let ack = provider().ack();
        let after = millis(OffsetDateTime::now_utc());
        assert_eq!(ack.status, StatusCode::OK);
        assert_eq!(ack.content_type, Some("application/json"));
        let body: Value = serde_json::from_slice(&ack.body).expect("JSON");
        let mut keys: Vec<&String> = body.as_object().expect("object").keys().collect();
        keys.sort();
        assert_eq!(keys, ["code", "data", "msg", "requestTime"]);
        assert_eq!(body["code"], "00000");
        assert_eq!(body["msg"], "success");
        assert_eq!(body["data"], Value::Null);
        let at: i128 = body["requestTime"].to_string().parse().expect("integer");
        assert!((before..=after).contains(&at), "{at}");
    }

    #[test]
    fn the_sample_is_a_signed_recognized_order() {
        let src = source(&[("app_id", APP_ID), ("public_key", PUBLIC_PEM)]);
        let now = OffsetDateTime::now_utc();
        let ctx = SampleContext {
            source: &src,
            now,
            unique: "s1234",
            private_key_pem: Some(PRIVATE_PEM),
        };
        let body = sample_body(&ctx);
        let p = build(&src).expect("build");
        let sent = sign(&ctx, &body).expect("sign");
        assert_eq!(verify_at(&*p, &as_pairs(&sent), &body, now), Ok(()));
        let Parsed::Event(e) = p.parse(&WebhookRequest::body_only(&body)) else {
            panic!("the sample must be recognized");
        };
        assert_eq!((e.kind, e.status), (Kind::Order, Status::Succeeded));
        assert_eq!(e.subject, "s1234");
        assert_eq!(e.amount.as_deref(), Some("100.00"));
    }

    #[test]
    fn signing_needs_an_app_id_and_a_private_key() {
        let now = OffsetDateTime::now_utc();
        let with_id = source(&[("app_id", APP_ID)]);
        let ctx = SampleContext {
            source: &with_id,
            now,
            unique: "u",
            private_key_pem: None,
        };
        assert!(matches!(
            sign(&ctx, b"{}"),
            Err(SampleError::MissingSetting(
                "private key (--private-key FILE)"
            ))
        ));
        let without_id = source(&[]);
        let ctx = SampleContext {
            source: &without_id,
            now,
            unique: "u",
            private_key_pem: Some(PRIVATE_PEM),
        };
        assert!(matches!(
            sign(&ctx, b"{}"),
            Err(SampleError::MissingSetting("app_id"))
        ));
        let ctx = SampleContext {
            source: &with_id,
            now,
            unique: "u",
            private_key_pem: Some(PUBLIC_PEM),
        };
        assert!(matches!(sign(&ctx, b"{}"), Err(SampleError::Invalid(_))));
    }
}
