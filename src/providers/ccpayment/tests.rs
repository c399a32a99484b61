//! Unit tests of the ccpayment provider: signature vectors, mapping tables, samples.

use super::*;
use crate::providers::test_support::{self, headers};
use axum::http::{HeaderMap, HeaderValue};

/// Test vectors from `docs/providers/ccpayment.md` (self-computed there, reproduced here).
const APP_ID: &str = "202302010636261620672405236006912";
const APP_SECRET: &str = "test_app_secret";
const TIMESTAMP: &str = "1677152490";
const V1_BODY: &str = r#"{"pay_status":"success","order_type":"API Deposit","record_id":"202302201213531627642695975706624","order_id":"202302200951001627606736097771520","product_price":"25","denominated_currency":"USD","order_amount":"25","fiat_rate":"0.08","paid_amount":"10","token_rate":"0.08","chain":"BSC","txid":"0xabc","contract":"0xbA2aE424d960c26247Dd6c32edC70B295c744C43","crypto":"DOGE","extend":{"merchant_order_id":"202211154785795"}}"#;
const V1_SIGN: &str = "2d348dbf1da6c34f486e0fca6dd25e6aa895ba2fffda2cf0f9babe47f179d670";
const V2_BODY: &str = r#"{"type":"ApiDeposit","msg":{"recordId":"20240313121919176795999999999999","orderId":"order_001","coinId":1329,"coinSymbol":"POL","status":"Success","isFlaggedAsRisky":false}}"#;
const V2_SIGN: &str = "c34b4ae33fadb075b677330657b435559ac3278e67c56ec92926f65a919e2d37";

fn vector_now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_677_152_490).expect("time")
}

fn provider(api_version: ApiVersion) -> Ccpayment {
    Ccpayment {
        app_id: Some(APP_ID.to_owned()),
        app_secret: Some(APP_SECRET.to_owned()),
        api_version,
        tolerance: DEFAULT_TOLERANCE,
        api_url: None,
    }
}

fn verify_at(
    p: &Ccpayment,
    headers: &HeaderMap,
    body: &[u8],
    now: OffsetDateTime,
) -> Result<(), VerifyError> {
    p.verify(&WebhookRequest { headers, body, now })
}

fn verify(p: &Ccpayment, sign: &str, body: &str) -> Result<(), VerifyError> {
    let h = headers(&[("Appid", APP_ID), ("Timestamp", TIMESTAMP), ("Sign", sign)]);
    verify_at(p, &h, body.as_bytes(), vector_now())
}

fn event(body: &str) -> Normalized {
    test_support::event(&provider(ApiVersion::Auto), body)
}

fn source(settings: &[(&str, &str)]) -> SourceConfig {
    test_support::source("ccpayment", "ccpayment", settings)
}

#[test]
fn documented_test_vectors_verify() {
    let p = provider(ApiVersion::Auto);
    assert_eq!(verify(&p, V1_SIGN, V1_BODY), Ok(()));
    assert_eq!(verify(&p, V2_SIGN, V2_BODY), Ok(()));
    assert_eq!(
        verify(&p, &V2_SIGN.to_uppercase(), V2_BODY),
        Ok(()),
        "hex is compared case-insensitively"
    );
    assert_eq!(verify(&provider(ApiVersion::V1), V1_SIGN, V1_BODY), Ok(()));
    assert_eq!(verify(&provider(ApiVersion::V2), V2_SIGN, V2_BODY), Ok(()));
}

#[test]
fn a_pinned_version_refuses_the_other_scheme() {
    assert_eq!(
        verify(&provider(ApiVersion::V2), V1_SIGN, V1_BODY),
        Err(VerifyError::BadSignature)
    );
    assert_eq!(
        verify(&provider(ApiVersion::V1), V2_SIGN, V2_BODY),
        Err(VerifyError::BadSignature)
    );
}

#[test]
fn wrong_key_and_flipped_byte_are_refused() {
    let mut wrong = provider(ApiVersion::Auto);
    wrong.app_secret = Some("wrong_app_secret".to_owned());
    assert_eq!(
        verify(&wrong, V1_SIGN, V1_BODY),
        Err(VerifyError::BadSignature)
    );
    assert_eq!(
        verify(&wrong, V2_SIGN, V2_BODY),
        Err(VerifyError::BadSignature)
    );
    let p = provider(ApiVersion::Auto);
    for (sign, body) in [(V1_SIGN, V1_BODY), (V2_SIGN, V2_BODY)] {
        let mut flipped = body.as_bytes().to_vec();
        flipped[20] ^= 1;
        let h = headers(&[("Appid", APP_ID), ("Timestamp", TIMESTAMP), ("Sign", sign)]);
        assert_eq!(
            verify_at(&p, &h, &flipped, vector_now()),
            Err(VerifyError::BadSignature)
        );
    }
    // A signature over another timestamp does not carry over.
    let h = headers(&[
        ("Appid", APP_ID),
        ("Timestamp", "1677152491"),
        ("Sign", V2_SIGN),
    ]);
    assert_eq!(
        verify_at(&p, &h, V2_BODY.as_bytes(), vector_now()),
        Err(VerifyError::BadSignature)
    );
}

#[test]
fn stale_and_future_timestamps_are_refused() {
    let p = provider(ApiVersion::Auto);
    let h = headers(&[
        ("Appid", APP_ID),
        ("Timestamp", TIMESTAMP),
        ("Sign", V2_SIGN),
    ]);
    let body = V2_BODY.as_bytes();
    let at = |seconds: i64| vector_now() + time::Duration::seconds(seconds);
    assert_eq!(verify_at(&p, &h, body, at(120)), Ok(()));
    assert_eq!(verify_at(&p, &h, body, at(-120)), Ok(()));
    assert_eq!(
        verify_at(&p, &h, body, at(121)),
        Err(VerifyError::StaleTimestamp(120)),
        "the webhook is too old"
    );
    assert_eq!(
        verify_at(&p, &h, body, at(-121)),
        Err(VerifyError::StaleTimestamp(120)),
        "the webhook is from the future"
    );
    let mut lenient = provider(ApiVersion::Auto);
    lenient.tolerance = Duration::from_secs(600);
    assert_eq!(verify_at(&lenient, &h, body, at(500)), Ok(()));
}

#[test]
fn the_source_tolerance_overrides_the_default() {
    let mut config = source(&[("app_id", APP_ID), ("app_secret", APP_SECRET)]);
    config.timestamp_tolerance = Some(Duration::from_secs(10));
    let p = build(&config).expect("build");
    let h = headers(&[
        ("Appid", APP_ID),
        ("Timestamp", TIMESTAMP),
        ("Sign", V2_SIGN),
    ]);
    let request = |now| WebhookRequest {
        headers: &h,
        body: V2_BODY.as_bytes(),
        now,
    };
    assert_eq!(
        p.verify(&request(vector_now() + time::Duration::seconds(11))),
        Err(VerifyError::StaleTimestamp(10))
    );
    assert_eq!(p.verify(&request(vector_now())), Ok(()));
}

#[test]
fn missing_and_malformed_headers_are_refused() {
    let p = provider(ApiVersion::Auto);
    let body = V2_BODY.as_bytes();
    let cases: [(&[(&str, &str)], VerifyError); 6] = [
        (
            &[("Timestamp", TIMESTAMP), ("Sign", V2_SIGN)],
            VerifyError::MissingHeader("Appid"),
        ),
        (
            &[("Appid", APP_ID), ("Sign", V2_SIGN)],
            VerifyError::MissingHeader("Timestamp"),
        ),
        (
            &[("Appid", APP_ID), ("Timestamp", TIMESTAMP)],
            VerifyError::MissingHeader("Sign"),
        ),
        (
            &[
                ("Appid", APP_ID),
                ("Timestamp", "16771524x0"),
                ("Sign", V2_SIGN),
            ],
            VerifyError::MalformedHeader("Timestamp"),
        ),
        (
            &[
                ("Appid", APP_ID),
                ("Timestamp", TIMESTAMP),
                ("Sign", "not-hex"),
            ],
            VerifyError::MalformedHeader("Sign"),
        ),
        (
            &[
                ("Appid", APP_ID),
                ("Timestamp", TIMESTAMP),
                ("Sign", "abcd"),
            ],
            VerifyError::BadSignature,
        ),
    ];
    for (pairs, want) in cases {
        assert_eq!(
            verify_at(&p, &headers(pairs), body, vector_now()),
            Err(want)
        );
    }
}

#[test]
fn another_app_id_is_refused() {
    let p = provider(ApiVersion::Auto);
    let h = headers(&[
        ("Appid", "202302010636261620672405236006913"),
        ("Timestamp", TIMESTAMP),
        ("Sign", V2_SIGN),
    ]);
    assert_eq!(
        verify_at(&p, &h, V2_BODY.as_bytes(), vector_now()),
        Err(VerifyError::UnknownAppId)
    );
}

#[test]
fn a_source_without_credentials_refuses_and_names_the_settings() {
    let p = build(&source(&[])).expect("build");
    assert_eq!(p.missing_credentials(), vec!["app_id", "app_secret"]);
    let h = headers(&[
        ("Appid", APP_ID),
        ("Timestamp", TIMESTAMP),
        ("Sign", V2_SIGN),
    ]);
    let request = WebhookRequest {
        headers: &h,
        body: V2_BODY.as_bytes(),
        now: vector_now(),
    };
    assert_eq!(
        p.verify(&request),
        Err(VerifyError::MissingCredential("app_id"))
    );
    let p = build(&source(&[("app_id", APP_ID)])).expect("build");
    assert_eq!(p.missing_credentials(), vec!["app_secret"]);
    assert_eq!(
        p.verify(&request),
        Err(VerifyError::MissingCredential("app_secret"))
    );
    let p = build(&source(&[("app_id", APP_ID), ("app_secret", APP_SECRET)])).expect("build");
    assert!(p.missing_credentials().is_empty());
    assert_eq!(p.verify(&request), Ok(()));
}

#[test]
fn api_version_setting_is_checked() {
    for (value, want) in [
        ("auto", ApiVersion::Auto),
        ("v1", ApiVersion::V1),
        ("V2", ApiVersion::V2),
    ] {
        assert_eq!(ApiVersion::from_setting(Some(value)), Ok(want));
    }
    assert_eq!(ApiVersion::from_setting(None), Ok(ApiVersion::Auto));
    let Err(BuildError::Invalid { key, reason }) = build(&source(&[("api_version", "v3")])) else {
        panic!("v3 must be refused");
    };
    assert_eq!(key, "api_version");
    assert!(reason.contains("v3"), "{reason}");
}

#[test]
fn errors_never_echo_the_secret() {
    let p = provider(ApiVersion::Auto);
    let h = headers(&[
        ("Appid", APP_ID),
        ("Timestamp", TIMESTAMP),
        ("Sign", V1_SIGN),
    ]);
    let error = verify_at(&p, &h, b"{}", vector_now()).expect_err("bad signature");
    assert!(!error.to_string().contains(APP_SECRET));
}

/// `docs/providers/ccpayment.md` note 4: the v1 construction admits length extension. The
/// forged `Sign` below was computed from `V1_SIGN` and the lengths alone (SHA-256
/// state continued over padding ‖ suffix, secret length guessed), without the secret.
#[test]
fn a_length_extended_v1_body_is_only_unrecognized_and_v2_refuses_it() {
    const FORGED_SIGN: &str = "ce1b349a8096b6b15a9447355400cf8c0c6b755f532e18664a58cf08e2a9ce1b";
    let signed_len = APP_ID.len() + APP_SECRET.len() + TIMESTAMP.len() + V1_BODY.len();
    let mut forged = V1_BODY.as_bytes().to_vec();
    forged.push(0x80);
    forged.resize(forged.len() + (119 - signed_len % 64) % 64, 0);
    forged.extend_from_slice(&(signed_len as u64 * 8).to_be_bytes());
    forged.extend_from_slice(
        br#"{"pay_status":"success","order_type":"API Deposit","record_id":"1","paid_amount":"1000000"}"#,
    );
    let h = headers(&[
        ("Appid", APP_ID),
        ("Timestamp", TIMESTAMP),
        ("Sign", FORGED_SIGN),
    ]);
    assert_eq!(
        verify_at(&provider(ApiVersion::Auto), &h, &forged, vector_now()),
        Ok(())
    );
    assert!(matches!(
        provider(ApiVersion::Auto).parse(&WebhookRequest::body_only(&forged)),
        Parsed::Unrecognized { .. }
    ));
    assert_eq!(
        verify_at(&provider(ApiVersion::V2), &h, &forged, vector_now()),
        Err(VerifyError::BadSignature)
    );
}

#[test]
fn the_ack_is_plain_text_success() {
    let ack = provider(ApiVersion::Auto).ack();
    assert_eq!(ack.status, StatusCode::OK);
    assert_eq!(ack.content_type, Some("text/plain; charset=utf-8"));
    assert_eq!(&ack.body[..], b"success");
}

#[test]
fn v1_vector_normalizes_by_the_tables() {
    let event = event(V1_BODY);
    assert_eq!(
        (event.kind, event.status),
        (Kind::Deposit, Status::Succeeded)
    );
    assert_eq!(
        event.idempotency_key,
        "API Deposit:202302201213531627642695975706624:success"
    );
    assert_eq!(event.subject, "202302201213531627642695975706624");
    assert_eq!(
        event.order_id.as_deref(),
        Some("202302200951001627606736097771520")
    );
    assert_eq!(event.merchant_order_id.as_deref(), Some("202211154785795"));
    assert_eq!(event.amount.as_deref(), Some("10"));
    assert_eq!(event.currency.as_deref(), Some("DOGE"));
    assert_eq!(event.provider_event_type.as_deref(), Some("API Deposit"));
    assert_eq!(event.provider_status.as_deref(), Some("success"));
    assert_eq!(event.event_time, None);
}

#[test]
fn v1_types_pick_kind_amount_and_ids() {
    let withdrawal = event(
        r#"{"pay_status":"failed","order_type":"API Withdrawal","order_id":"o1","record_id":"r1","withdraw_amount":"0.05","crypto":"USDC","merchant_order_id":"m1"}"#,
    );
    assert_eq!(
        (withdrawal.kind, withdrawal.status),
        (Kind::Withdrawal, Status::Failed)
    );
    assert_eq!(withdrawal.amount.as_deref(), Some("0.05"));
    assert_eq!(withdrawal.merchant_order_id.as_deref(), Some("m1"));
    assert_eq!(withdrawal.order_id.as_deref(), Some("o1"));

    let refund = event(
        r#"{"pay_status":"success","order_type":"Refund","record_id":"r2","amount":"1","crypto":"USDT","merchant_order_id":""}"#,
    );
    assert_eq!(
        (refund.kind, refund.status),
        (Kind::Refund, Status::Succeeded)
    );
    assert_eq!(refund.amount.as_deref(), Some("1"));
    assert_eq!(
        refund.order_id.as_deref(),
        Some("r2"),
        "no order_id: the record"
    );
    assert_eq!(refund.merchant_order_id, None, "an empty id is no id");

    let direct = event(
        r#"{"pay_status":"Processing","order_type":"Direct Deposit","record_id":"r3","paid_amount":"666","crypto":"USDT"}"#,
    );
    assert_eq!(
        (direct.kind, direct.status),
        (Kind::Deposit, Status::Processing)
    );
    assert_eq!(direct.provider_status.as_deref(), Some("Processing"));
    assert_eq!(direct.idempotency_key, "Direct Deposit:r3:Processing");

    let invoice = event(
        r#"{"pay_status":"pending","order_type":"Invocie","record_id":"r4","paid_amount":"10","crypto":"USDT","extend":{"invoice_id":"i1"}}"#,
    );
    assert_eq!(
        (invoice.kind, invoice.status),
        (Kind::Deposit, Status::Pending)
    );
}

#[test]
fn v2_vector_normalizes_by_the_tables() {
    let event = event(V2_BODY);
    assert_eq!(
        (event.kind, event.status),
        (Kind::Deposit, Status::Succeeded)
    );
    assert_eq!(
        event.idempotency_key,
        "ApiDeposit:20240313121919176795999999999999:Success"
    );
    assert_eq!(event.subject, "20240313121919176795999999999999");
    assert_eq!(
        event.order_id.as_deref(),
        Some("20240313121919176795999999999999")
    );
    assert_eq!(event.merchant_order_id.as_deref(), Some("order_001"));
    assert_eq!(event.amount, None);
    assert_eq!(event.currency.as_deref(), Some("POL"));
    assert_eq!(event.provider_event_type.as_deref(), Some("ApiDeposit"));
    assert_eq!(event.provider_status.as_deref(), Some("Success"));
}

#[test]
fn v2_statuses_and_merchant_ids() {
    for (status, want) in [
        ("Processing", Status::Processing),
        ("Success", Status::Succeeded),
        ("Failed", Status::Failed),
        ("WaitingApproval", Status::Pending),
        ("Rejected", Status::Cancelled),
        ("rejected", Status::Cancelled),
    ] {
        let body = format!(
            r#"{{"type":"UserWithdrawal","msg":{{"recordId":"r1","orderId":"wd1","userId":"u1","coinId":1891,"coinSymbol":"TETH","status":"{status}"}}}}"#
        );
        let event = event(&body);
        assert_eq!(
            (event.kind, event.status),
            (Kind::Withdrawal, want),
            "{status}"
        );
        assert_eq!(event.merchant_order_id.as_deref(), Some("wd1"));
    }
    let direct = event(
        r#"{"type":"DirectDeposit","msg":{"recordId":"r2","referenceId":"ref1","coinId":1329,"coinSymbol":"MATIC","status":"Success","isFlaggedAsRisky":false}}"#,
    );
    assert_eq!(direct.merchant_order_id.as_deref(), Some("ref1"));
    let user = event(
        r#"{"type":"UserDeposit","msg":{"recordId":"r3","userId":"user_12345","coinId":1329,"coinSymbol":"MATIC","amount":"0.1","status":"Success","isFlaggedAsRisky":false}}"#,
    );
    assert_eq!(user.merchant_order_id.as_deref(), Some("user_12345"));
    assert_eq!(user.amount.as_deref(), Some("0.1"));
}

#[test]
fn numeric_amounts_keep_their_exact_text() {
    let event = event(
        r#"{"type":"UserDeposit","msg":{"recordId":"r1","userId":"u1","coinId":1329,"coinSymbol":"MATIC","amount":0.100000000000000000001,"status":"Success","isFlaggedAsRisky":false}}"#,
    );
    assert_eq!(event.amount.as_deref(), Some("0.100000000000000000001"));
}

#[test]
fn risky_deposits_and_addresses_are_abnormal() {
    let flagged = event(
        r#"{"type":"ApiDeposit","msg":{"recordId":"r1","orderId":"o1","coinId":1329,"coinSymbol":"POL","status":"Success","isFlaggedAsRisky":true}}"#,
    );
    assert_eq!(
        (flagged.kind, flagged.status),
        (Kind::Deposit, Status::Abnormal)
    );
    assert_eq!(flagged.provider_status.as_deref(), Some("Success"));

    let address = event(
        r#"{"chainId":"POLYGON","address":"0x7C631947c139F0163fECc0eef39f251D72dAE3B8","riskAt":1710145756}"#,
    );
    assert_eq!(
        (address.kind, address.status),
        (Kind::Deposit, Status::Abnormal)
    );
    assert_eq!(
        address.idempotency_key,
        "RiskyAddress:POLYGON:0x7C631947c139F0163fECc0eef39f251D72dAE3B8:1710145756"
    );
    assert_eq!(
        address.subject,
        "0x7C631947c139F0163fECc0eef39f251D72dAE3B8"
    );
    assert_eq!(
        address.event_time,
        Some(time::macros::datetime!(2024-03-11 08:29:16 UTC))
    );
    assert_eq!(address.provider_event_type, None);
}

#[test]
fn bodies_outside_the_tables_are_unrecognized_not_guessed() {
    let p = provider(ApiVersion::Auto);
    for (body, event_type) in [
        ("not json", None),
        ("[1,2]", None),
        (r#"{"hello":"world"}"#, None),
        // The v2 doc's own ApiDeposit example, trailing comma and all.
        (
            r#"{"type":"ApiDeposit","msg":{"recordId":"r1","orderId":"o1","coinId":2541,"coinSymbol":"POL","status":"Success","isFlaggedAsRisky":false,}}"#,
            None,
        ),
        (
            r#"{"pay_status":"success","order_type":"Swap","record_id":"r1"}"#,
            Some("Swap"),
        ),
        (
            r#"{"pay_status":"expired","order_type":"API Deposit","record_id":"r1"}"#,
            Some("API Deposit"),
        ),
        (
            r#"{"pay_status":"success","order_type":"API Deposit"}"#,
            Some("API Deposit"),
        ),
        (r#"{"pay_status":"success","record_id":"r1"}"#, None),
        (
            r#"{"type":"UserSwap","msg":{"recordId":"r1","status":"Success"}}"#,
            Some("UserSwap"),
        ),
        (
            r#"{"type":"ApiDeposit","msg":{"recordId":"r1","status":"Pending"}}"#,
            Some("ApiDeposit"),
        ),
        (
            r#"{"type":"ApiDeposit","msg":{"status":"Success"}}"#,
            Some("ApiDeposit"),
        ),
        (r#"{"type":"ApiDeposit","msg":"r1"}"#, Some("ApiDeposit")),
        (
            r#"{"type":"ApiDeposit","msg":{"recordId":"r1","status":"Success","isFlaggedAsRisky":"true"}}"#,
            Some("ApiDeposit"),
        ),
        (
            r#"{"type":"ApiWithdrawal","msg":{"recordId":"r1","status":"Success","isFlaggedAsRisky":true}}"#,
            Some("ApiWithdrawal"),
        ),
        (r#"{"msg":{"recordId":"r1","status":"Success"}}"#, None),
        (r#"{"chainId":"POLYGON","riskAt":1710145756}"#, None),
    ] {
        match p.parse(&WebhookRequest::body_only(body.as_bytes())) {
            Parsed::Unrecognized {
                provider_event_type,
                ..
            } => assert_eq!(provider_event_type.as_deref(), event_type, "{body}"),
            Parsed::Event(event) => panic!("{body} recognized as {event:?}"),
        }
    }
}

#[test]
fn samples_are_signed_the_way_the_source_verifies() {
    for version in ["auto", "v1", "v2"] {
        let config = source(&[
            ("app_id", APP_ID),
            ("app_secret", APP_SECRET),
            ("api_version", version),
        ]);
        let ctx = SampleContext {
            source: &config,
            now: vector_now(),
            unique: "a1-b2",
            private_key_pem: None,
        };
        let body = sample_body(&ctx);
        let signed = sign(&ctx, &body).expect("sign");
        let mut h = HeaderMap::new();
        for (name, value) in &signed {
            h.insert(
                axum::http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
                    .expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        assert_eq!(
            h.get("content-type").and_then(|v| v.to_str().ok()),
            Some("application/json; charset=utf-8")
        );
        assert_eq!(
            h.get("timestamp").and_then(|v| v.to_str().ok()),
            Some(TIMESTAMP)
        );
        let p = build(&config).expect("build");
        let request = WebhookRequest {
            headers: &h,
            body: &body,
            now: vector_now(),
        };
        assert_eq!(p.verify(&request), Ok(()), "{version}");
        let Parsed::Event(event) = p.parse(&WebhookRequest::body_only(&body)) else {
            panic!(
                "the sample must be recognized: {}",
                String::from_utf8_lossy(&body)
            );
        };
        assert_eq!(
            (event.kind, event.status),
            (Kind::Deposit, Status::Succeeded)
        );
        assert!(event.subject.ends_with("a1b2"), "{}", event.subject);
        assert_eq!(version == "v1", is_v1_body(&body), "{version}");
        // Pinned sources would refuse the other scheme, so the sample matches the pin.
        if version != "auto" {
            let other = if version == "v1" {
                ApiVersion::V2
            } else {
                ApiVersion::V1
            };
            let other = Ccpayment {
                api_version: other,
                ..provider(ApiVersion::Auto)
            };
            assert_eq!(
                verify_at(&other, &h, &body, vector_now()),
                Err(VerifyError::BadSignature)
            );
        }
    }
}

#[test]
fn auto_signing_follows_the_body_shape() {
    let config = source(&[("app_id", APP_ID), ("app_secret", APP_SECRET)]);
    let ctx = SampleContext {
        source: &config,
        now: vector_now(),
        unique: "x",
        private_key_pem: None,
    };
    let sign_of = |body: &str| {
        sign(&ctx, body.as_bytes())
            .expect("sign")
            .into_iter()
            .find(|(k, _)| k == "Sign")
            .map(|(_, v)| v)
    };
    assert_eq!(sign_of(V1_BODY).as_deref(), Some(V1_SIGN));
    assert_eq!(sign_of(V2_BODY).as_deref(), Some(V2_SIGN));
}

#[test]
fn signing_without_credentials_names_the_setting() {
    let now = vector_now();
    for (settings, missing) in [
        (&[("app_secret", APP_SECRET)][..], "app_id"),
        (&[("app_id", APP_ID)][..], "app_secret"),
    ] {
        let config = source(settings);
        let ctx = SampleContext {
            source: &config,
            now,
            unique: "x",
            private_key_pem: None,
        };
        assert!(matches!(
            sign(&ctx, V2_BODY.as_bytes()),
            Err(SampleError::MissingSetting(name)) if name == missing
        ));
    }
}
