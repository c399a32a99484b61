//! Unit tests of the oslpay provider: signature vectors, mapping tables, samples.

use super::*;
use crate::providers::test_support::{self, verify_at};
use rsa::pkcs1::EncodeRsaPublicKey;
use rsa::pkcs8::{EncodePublicKey, LineEnding};

const APP_ID: &str = "me114702259781634";
const PUBLIC_PEM: &str = include_str!("../../../tests/fixtures/oslpay/test_public_key.pem");
const PRIVATE_PEM: &str = include_str!("../../../tests/fixtures/oslpay/test_private_key.pem");

/// The documented example (`docs/providers/oslpay.md`) signed with the test private key
/// by `openssl dgst -sha256 -sign test_private_key.pem | base64`: an independent
/// implementation of SHA256withRSA.
const VECTOR_TIMESTAMP: &str = "1756802303227";
const VECTOR_SIGNATURE: &str = "aluEhno9B3t2q3h6ILQI19Ce1CiPT77l7MbFP1LW35RvkP10mOsgh/2QiWYTYJvluwiLTE9Ns2mIEDoCDC05RLdX66uzyIphzbimmh0NI/oSUXy5YFGBPvFq6Z1SUFlJIIIsnNqMF+BXnHzLw3mjJ2MdqzFjjRWw0c5lBfZkx7+9WACSjKgtNTR3HzJX9iH4cJKXu6qLxB1/2yEgN0ksPPwbtSd1IYFyLGzAUYWOCtpLHqXhh0pPsUii8wqgj7dMU22MxHWdANJe8VXyr5adIWUsKHs+Aflslq1+MLXSjoeIb/omwtEJNQuHYZeBIQhZMX4zpKmoFN4D1b9ZocFkbQ==";

fn vector_time() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(1_756_802_303_227_000_000).expect("time")
}

fn provider_with_key(public_key: &str) -> Box<dyn Provider> {
    build(&source(&[("app_id", APP_ID), ("public_key", public_key)])).expect("build")
}

fn provider() -> Box<dyn Provider> {
    provider_with_key(PUBLIC_PEM)
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
    test_support::event(provider().as_ref(), body)
}

fn source(settings: &[(&str, &str)]) -> SourceConfig {
    test_support::source("oslpay", "oslpay", settings)
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
    assert_eq!(sent[2].1, unix_millis(now).to_string());
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
    let before = unix_millis(OffsetDateTime::now_utc());
    let ack = provider().ack();
    let after = unix_millis(OffsetDateTime::now_utc());
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
