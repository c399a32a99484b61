//! Unit tests of the standard provider: signature vectors, mapping tables, samples.

use super::*;
use crate::providers::test_support;
use axum::http::{HeaderMap, HeaderValue};
use time::OffsetDateTime;

/// The test vector of the Standard Webhooks reference libraries.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const MSG_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
const TIMESTAMP: i64 = 1_614_265_330;
const BODY: &[u8] = br#"{"test": 2432232314}"#;
const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

fn source(pairs: &[(&str, &str)]) -> SourceConfig {
    test_support::source("acme", "standard", pairs)
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

fn verify_at(p: &dyn Provider, h: &HeaderMap, body: &[u8], now: i64) -> Result<(), VerifyError> {
    p.verify(&WebhookRequest {
        headers: h,
        body,
        now: OffsetDateTime::from_unix_timestamp(now).expect("time"),
    })
}

#[test]
fn a_flood_of_signature_entries_is_refused_before_any_mac() {
    let p = provider(&[("secret", SECRET)]);
    let body = vec![b'x'; 1024 * 1024];
    // The probe that kept a core busy for 14 s: 20,000 entries over a 1 MB body.
    let flood = vec!["v1,AAAA"; 20_000].join(" ");
    let h = headers(MSG_ID, &TIMESTAMP.to_string(), &flood);
    assert_eq!(
        verify_at(p.as_ref(), &h, &body, TIMESTAMP),
        Err(VerifyError::TooManySignatures(MAX_SIGNATURES))
    );
    let mut at_the_cap = vec!["v1,bm90LWl0"; MAX_SIGNATURES - 1];
    at_the_cap.push(SIGNATURE);
    let h = headers(MSG_ID, &TIMESTAMP.to_string(), &at_the_cap.join(" "));
    assert_eq!(
        verify_at(p.as_ref(), &h, BODY, TIMESTAMP),
        Ok(()),
        "a header at the cap is read, and its last entry may match"
    );
}

#[test]
fn entries_of_the_wrong_length_never_match() {
    let p = provider(&[("secret", SECRET)]);
    // The right signature with one byte cut off, and with one byte added.
    let right = BASE64
        .decode(SIGNATURE.trim_start_matches("v1,"))
        .expect("base64");
    let short = format!("v1,{}", BASE64.encode(&right[..31]));
    let mut longer = right.clone();
    longer.push(0);
    let long = format!("v1,{}", BASE64.encode(&longer));
    for entry in [short, long] {
        let h = headers(MSG_ID, &TIMESTAMP.to_string(), &entry);
        assert_eq!(
            verify_at(p.as_ref(), &h, BODY, TIMESTAMP),
            Err(VerifyError::BadSignature),
            "{entry}"
        );
    }
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
