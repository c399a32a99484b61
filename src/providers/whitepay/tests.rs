//! Unit tests of the whitepay provider: signature vectors, mapping tables, samples.

use super::*;
use axum::http::{HeaderMap, HeaderValue};
use time::OffsetDateTime;

/// Test vector from `docs/providers/whitepay.md` (reproduced independently there).
const VECTOR_TOKEN: &str = "test_webhook_token";
const VECTOR_BODY: &str = r#"{"order":{"id":"08d585b1-86c6-496d-b493-ab17a574fdd6","currency":"UAH","value":"200","expected_amount":"200","status":"DECLINED","external_order_id":"INV-123","created_at":"2022-03-22 14:01:34","completed_at":null,"acquiring_url":"https:\/\/merchant.pay.whitepay.com\/fiat-order\/08d585b1-86c6-496d-b493-ab17a574fdd6","is_internal":false},"event_type":"order::declined"}"#;
const VECTOR_SIGNATURE: &str = "4bf8ac70f3943766651b2b565a13a567e8d3962884075729056fcf6ce40b3592";

fn provider(tokens: &[&str]) -> Whitepay {
    Whitepay {
        tokens: tokens.iter().map(|t| (*t).to_owned()).collect(),
        api: super::api::Api::new(&crate::providers::test_support::source(
            "whitepay",
            "whitepay",
            &[],
        )),
    }
}

fn verify(p: &Whitepay, signature: Option<&str>, body: &[u8]) -> Result<(), VerifyError> {
    let mut headers = HeaderMap::new();
    if let Some(sig) = signature {
        headers.insert("signature", HeaderValue::from_str(sig).expect("header"));
    }
    p.verify(&WebhookRequest {
        headers: &headers,
        body,
        now: OffsetDateTime::now_utc(),
    })
}

#[test]
fn documented_test_vector_verifies() {
    let p = provider(&[VECTOR_TOKEN]);
    assert_eq!(
        verify(&p, Some(VECTOR_SIGNATURE), VECTOR_BODY.as_bytes()),
        Ok(())
    );
    assert_eq!(
        verify(
            &p,
            Some(&VECTOR_SIGNATURE.to_uppercase()),
            VECTOR_BODY.as_bytes()
        ),
        Ok(()),
        "hex is compared case-insensitively"
    );
}

#[test]
fn any_of_several_tokens_may_match() {
    let p = provider(&["other", VECTOR_TOKEN]);
    assert_eq!(
        verify(&p, Some(VECTOR_SIGNATURE), VECTOR_BODY.as_bytes()),
        Ok(())
    );
}

#[test]
fn wrong_key_flipped_byte_and_missing_header_are_refused() {
    let p = provider(&["wrong"]);
    assert_eq!(
        verify(&p, Some(VECTOR_SIGNATURE), VECTOR_BODY.as_bytes()),
        Err(VerifyError::BadSignature)
    );
    let p = provider(&[VECTOR_TOKEN]);
    let mut flipped = VECTOR_BODY.as_bytes().to_vec();
    flipped[10] ^= 1;
    assert_eq!(
        verify(&p, Some(VECTOR_SIGNATURE), &flipped),
        Err(VerifyError::BadSignature)
    );
    // The unescaped form Node's JSON.stringify would produce is a different body.
    let unescaped = VECTOR_BODY.replace("\\/", "/");
    assert_eq!(
        verify(&p, Some(VECTOR_SIGNATURE), unescaped.as_bytes()),
        Err(VerifyError::BadSignature)
    );
    assert_eq!(
        verify(&p, None, VECTOR_BODY.as_bytes()),
        Err(VerifyError::MissingHeader("Signature"))
    );
    assert_eq!(
        verify(&p, Some("zz-not-hex"), VECTOR_BODY.as_bytes()),
        Err(VerifyError::MalformedHeader("Signature"))
    );
}

#[test]
fn a_source_without_tokens_refuses_and_names_the_setting() {
    let p = provider(&[]);
    assert_eq!(p.missing_credentials(), vec!["webhook_token"]);
    assert_eq!(
        verify(&p, Some(VECTOR_SIGNATURE), VECTOR_BODY.as_bytes()),
        Err(VerifyError::MissingCredential("webhook_token"))
    );
}

#[test]
fn declined_order_normalizes_by_the_mapping_table() {
    let Parsed::Event(event) =
        provider(&[]).parse(&WebhookRequest::body_only(VECTOR_BODY.as_bytes()))
    else {
        panic!("the documented body must be recognized");
    };
    assert_eq!(event.kind, Kind::Order);
    assert_eq!(event.status, Status::Failed);
    assert_eq!(event.subject, "08d585b1-86c6-496d-b493-ab17a574fdd6");
    assert_eq!(
        event.idempotency_key,
        "order::declined:08d585b1-86c6-496d-b493-ab17a574fdd6:DECLINED"
    );
    assert_eq!(event.merchant_order_id.as_deref(), Some("INV-123"));
    assert_eq!(event.amount.as_deref(), Some("200"));
    assert_eq!(event.currency.as_deref(), Some("UAH"));
    assert_eq!(
        event.event_time,
        Some(time::macros::datetime!(2022-03-22 14:01:34 UTC)),
        "completed_at is null, so created_at is the event time"
    );
}

#[test]
fn numeric_amounts_keep_their_exact_text() {
    let body = br#"{"transaction":{"id":"t1","value":31.84713375796178343949,"currency":"UAH","status":"COMPLETE"},"event_type":"transaction::completed"}"#;
    let Parsed::Event(event) = provider(&[]).parse(&WebhookRequest::body_only(body)) else {
        panic!("recognized");
    };
    assert_eq!(event.amount.as_deref(), Some("31.84713375796178343949"));
}

#[test]
fn entity_without_status_falls_back_to_the_event_suffix() {
    let body = br#"{"order":{"id":"o1"},"event_type":"order::partially_fulfilled"}"#;
    let Parsed::Event(event) = provider(&[]).parse(&WebhookRequest::body_only(body)) else {
        panic!("recognized");
    };
    assert_eq!(event.status, Status::PartiallyPaid);
}

#[test]
fn bodies_outside_the_tables_are_unrecognized_not_guessed() {
    let p = provider(&[]);
    for body in [
        &b"not json"[..],
        br#"[1,2]"#,
        br#"{"order":{"id":"o1","status":"COMPLETE"}}"#,
        br#"{"invoice":{"id":"i1"},"event_type":"invoice::completed"}"#,
        br#"{"order":{"id":"o1","status":"TELEPORTED"},"event_type":"order::completed"}"#,
        br#"{"order":{"id":"o1"},"event_type":"order::exploded"}"#,
    ] {
        assert!(
            matches!(
                p.parse(&WebhookRequest::body_only(body)),
                Parsed::Unrecognized { .. }
            ),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn an_empty_entity_id_is_unrecognized_not_a_shared_subject() {
    for body in [
        r#"{"order":{"id":"","status":"COMPLETE"},"event_type":"order::completed"}"#,
        r#"{"transaction":{"id":"  ","status":"COMPLETE"},"event_type":"transaction::completed"}"#,
    ] {
        assert!(
            matches!(
                provider(&[]).parse(&WebhookRequest::body_only(body.as_bytes())),
                Parsed::Unrecognized { .. }
            ),
            "{body}"
        );
    }
}

#[test]
fn values_are_read_as_the_provider_wrote_them_whatever_else_the_body_holds() {
    // Escapes are undone, null and "null" are absent, members the mapping does not
    // read (of any type) are skipped, and an `order` that is not an object gives
    // way to the `transaction`.
    let body = br#" {"extra":[1,{"a":null}],"order":null,"transaction":{"id":"t\/1\u00e9","order_id":null,"external_order_id":"null","value":"0.10","currency":"USDT","status":"COMPLETE","created_at":"2024-01-02 03:04:05","completed_at":null,"nested":{"id":"x"}},"event_type":"transaction::completed"}"#;
    let Parsed::Event(event) = provider(&[]).parse(&WebhookRequest::body_only(body)) else {
        panic!("recognized");
    };
    assert_eq!(event.subject, "t/1é");
    assert_eq!(event.order_id.as_deref(), Some("t/1é"));
    assert_eq!(event.merchant_order_id, None);
    assert_eq!(event.amount.as_deref(), Some("0.10"));
    assert_eq!(event.currency.as_deref(), Some("USDT"));
    assert_eq!(event.kind, Kind::Transaction);
    assert_eq!(
        event.event_time.map(|t| t.unix_timestamp()),
        Some(1_704_164_645)
    );
    assert_eq!(
        event.idempotency_key,
        "transaction::completed:t/1é:COMPLETE"
    );
}

#[test]
fn an_entity_that_names_a_member_twice_is_unrecognized_not_guessed() {
    let body =
        br#"{"order":{"id":"o1","id":"o2","status":"COMPLETE"},"event_type":"order::completed"}"#;
    let parsed = provider(&[]).parse(&WebhookRequest::body_only(body));
    assert!(
        matches!(&parsed, Parsed::Unrecognized { reason, .. } if reason.contains("duplicate field `id`")),
        "{parsed:?}"
    );
}

#[test]
fn a_body_that_names_its_event_type_twice_is_not_understood_rather_than_not_json() {
    let body =
        br#"{"event_type":"order::completed","order":{"id":"o1"},"event_type":"order::declined"}"#;
    let parsed = provider(&[]).parse(&WebhookRequest::body_only(body));
    assert!(
        matches!(&parsed, Parsed::Unrecognized { reason, .. }
            if reason.starts_with("the body is not understood") && reason.contains("duplicate field `event_type`")),
        "{parsed:?}"
    );
}
