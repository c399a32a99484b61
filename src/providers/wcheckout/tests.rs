//! Unit tests of the wcheckout provider: signature vectors, mapping tables, samples.

use super::*;
use crate::providers::test_support::{self, headers, verify_at};
use time::macros::datetime;

/// `docs/providers/wcheckout.md`: the XCheckout quick start's API-signing vector.
const XCHECKOUT_KEY: &str = "aR2822Y6XbehWMclnB0Y2NJK";
const XCHECKOUT_STRING_TO_SIGN: &str = r#"POST1636360661729/openapi/test{"a":"124"}"#;
const XCHECKOUT_SIGNATURE: &str =
    "MxrYnCm9Q7JOAvOrISf8+T2kuTW1d/w0at8aaPaoiX08VWfun3XPokVlIx1TkHXdcitls09wzfUGtXQZq23xdg==";

/// `docs/providers/wcheckout.md`: the webhook vector.
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

fn vector_headers() -> [(&'static str, &'static str); 2] {
    [
        ("TIMESTAMP", VECTOR_TIMESTAMP),
        ("SIGNATURE", VECTOR_SIGNATURE),
    ]
}

fn event(body: &str) -> Normalized {
    test_support::event(&provider(&[]), body)
}

fn source(settings: &[(&str, &str)]) -> SourceConfig {
    test_support::source("wcheckout", "wcheckout", settings)
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
    let source = source(&[("sign_key", VECTOR_KEY), ("timestamp_tolerance", "10m")]);
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
    let source = source(&[("sign_key", VECTOR_KEY)]);
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
