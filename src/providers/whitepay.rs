//! Whitepay (`providers.md` §4, SPEC §6).
//!
//! Authentication: `Signature` = hex HMAC-SHA256(webhook token, raw body). Whitepay
//! issues two tokens (per payment page and per account), so a source holds a list
//! and any may match. There is no timestamp: replays are absorbed by deduplication.
//! Ack: 200 with an empty body.

use axum::http::StatusCode;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::Sha256;

use super::{
    Ack, BuildError, Normalized, Parsed, Provider, ProviderSpec, SampleContext, SampleError,
    VerifyError, WebhookRequest,
};
use crate::config::SourceConfig;
use crate::event::{Kind, Status};

/// Registry entry.
pub const SPEC: ProviderSpec = ProviderSpec {
    name: "whitepay",
    keys: &["webhook_token"],
    secret_keys: &["webhook_token"],
    default_redact: &[],
    build,
    sample_body,
    sign,
};

const SIGNATURE_HEADER: &str = "signature";

fn build(source: &SourceConfig) -> Result<Box<dyn Provider>, BuildError> {
    Ok(Box::new(Whitepay {
        tokens: source.get_list("webhook_token"),
    }))
}

fn sample_body(ctx: &SampleContext<'_>) -> Vec<u8> {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    let at = ctx.now.format(&format).unwrap_or_default();
    let id = ctx.unique;
    format!(
        r#"{{"order":{{"id":"{id}","currency":"UAH","value":"200.50","expected_amount":"200.50","status":"COMPLETE","external_order_id":"INV-{id}","created_at":"{at}","completed_at":"{at}","acquiring_url":"https:\/\/merchant.pay.whitepay.com\/fiat-order\/{id}","is_internal":false}},"event_type":"order::completed"}}"#
    )
    .into_bytes()
}

fn sign(ctx: &SampleContext<'_>, body: &[u8]) -> Result<Vec<(String, String)>, SampleError> {
    let token = ctx
        .source
        .get_list("webhook_token")
        .into_iter()
        .next()
        .ok_or(SampleError::MissingSetting("webhook_token"))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(token.as_bytes())
        .map_err(|e| SampleError::Invalid(e.to_string()))?;
    mac.update(body);
    Ok(vec![
        ("Content-Type".to_owned(), "application/json".to_owned()),
        (
            "Signature".to_owned(),
            hex::encode(mac.finalize().into_bytes()),
        ),
    ])
}

/// A Whitepay source.
pub struct Whitepay {
    tokens: Vec<String>,
}

impl Provider for Whitepay {
    fn missing_credentials(&self) -> Vec<&'static str> {
        if self.tokens.is_empty() {
            vec!["webhook_token"]
        } else {
            Vec::new()
        }
    }

    fn verify(&self, request: &WebhookRequest<'_>) -> Result<(), VerifyError> {
        if self.tokens.is_empty() {
            return Err(VerifyError::MissingCredential("webhook_token"));
        }
        let signature = super::header(request.headers, SIGNATURE_HEADER)?
            .ok_or(VerifyError::MissingHeader("Signature"))?;
        let signature =
            hex::decode(signature).map_err(|_| VerifyError::MalformedHeader("Signature"))?;
        super::any_key(&self.tokens, |token| {
            Hmac::<Sha256>::new_from_slice(token.as_bytes()).is_ok_and(|mut mac| {
                mac.update(request.body);
                mac.verify_slice(&signature).is_ok()
            })
        })
    }

    fn parse(&self, request: &WebhookRequest<'_>) -> Parsed {
        let object = match super::json_object(request.body) {
            Ok(object) => object,
            Err(unrecognized) => return unrecognized,
        };
        let root = &object;
        let event_type = root
            .get("event_type")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let Some(event_type) = event_type else {
            return Parsed::unrecognized("no `event_type`", None);
        };
        let unrecognized = |reason: &str| Parsed::unrecognized(reason, Some(event_type.clone()));
        let (entity_key, entity) = match (root.get("order"), root.get("transaction")) {
            (Some(Value::Object(order)), _) => ("order", order),
            (_, Some(Value::Object(transaction))) => ("transaction", transaction),
            _ => return unrecognized("neither an `order` nor a `transaction` object"),
        };
        let (prefix, suffix) = event_type
            .split_once("::")
            .unwrap_or((event_type.as_str(), ""));
        let kind = match (prefix, suffix) {
            ("order", _) => Kind::Order,
            ("transaction", _) => Kind::Transaction,
            ("withdrawal", _) => Kind::Withdrawal,
            ("rollback", "to_client") => Kind::Refund,
            ("rollback", "to_merchant") => Kind::Transaction,
            _ if entity_key == "order" => Kind::Order,
            _ => Kind::Transaction,
        };
        let Some(id) = entity.get("id").and_then(Value::as_str) else {
            return unrecognized("the entity has no string `id`");
        };
        let provider_status = entity
            .get("status")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let status = match provider_status.as_deref() {
            Some(s) => status_from_entity(s),
            None => status_from_suffix(suffix),
        };
        let Some(status) = status else {
            return unrecognized("status not in the Whitepay mapping table");
        };
        let order_id = if entity_key == "transaction" {
            non_null_text(entity, "order_id").unwrap_or_else(|| id.to_owned())
        } else {
            id.to_owned()
        };
        let merchant_order_id = if kind == Kind::Withdrawal {
            non_null_text(entity, "external_id")
        } else {
            non_null_text(entity, "external_order_id")
        };
        let event_time = non_null_text(entity, "completed_at")
            .or_else(|| non_null_text(entity, "created_at"))
            .and_then(|t| super::parse_naive_utc(&t));
        Parsed::Event(Box::new(Normalized {
            idempotency_key: format!(
                "{event_type}:{id}:{}",
                provider_status.as_deref().unwrap_or("")
            ),
            kind,
            status,
            subject: id.to_owned(),
            provider_event_type: Some(event_type.clone()),
            provider_status,
            order_id: Some(order_id),
            merchant_order_id,
            amount: super::json_text(entity.get("value")),
            currency: super::json_text(entity.get("currency")),
            event_time,
        }))
    }

    fn ack(&self) -> Ack {
        Ack {
            status: StatusCode::OK,
            content_type: None,
            body: Bytes::new(),
        }
    }
}

/// A text field, with JSON null and Whitepay's literal string `"null"` read as absent.
fn non_null_text(entity: &Map<String, Value>, key: &str) -> Option<String> {
    super::json_text(entity.get(key)).filter(|s| s != "null")
}

fn status_from_entity(status: &str) -> Option<Status> {
    Some(match status {
        "INIT" => Status::Created,
        "OPEN" => Status::Pending,
        // `PATIALLY_FULFILLED` is a typo seen in Whitepay's own WooCommerce plugin.
        "PARTIALLY_FULFILLED" | "PATIALLY_FULFILLED" => Status::PartiallyPaid,
        "COMPLETE" => Status::Succeeded,
        "DECLINED" => Status::Failed,
        "CANCELLED" | "CANCELED" => Status::Cancelled,
        _ => return None,
    })
}

fn status_from_suffix(suffix: &str) -> Option<Status> {
    Some(match suffix {
        "completed" | "complete" | "final_amount_was_received" | "was_final_exchange" => {
            Status::Succeeded
        }
        "declined" | "decline" => Status::Failed,
        "partially_fulfilled" => Status::PartiallyPaid,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue};
    use time::OffsetDateTime;

    /// Test vector from `providers.md` §4.2 (reproduced independently there).
    const VECTOR_TOKEN: &str = "test_webhook_token";
    const VECTOR_BODY: &str = r#"{"order":{"id":"08d585b1-86c6-496d-b493-ab17a574fdd6","currency":"UAH","value":"200","expected_amount":"200","status":"DECLINED","external_order_id":"INV-123","created_at":"2022-03-22 14:01:34","completed_at":null,"acquiring_url":"https:\/\/merchant.pay.whitepay.com\/fiat-order\/08d585b1-86c6-496d-b493-ab17a574fdd6","is_internal":false},"event_type":"order::declined"}"#;
    const VECTOR_SIGNATURE: &str =
        "4bf8ac70f3943766651b2b565a13a567e8d3962884075729056fcf6ce40b3592";

    fn provider(tokens: &[&str]) -> Whitepay {
        Whitepay {
            tokens: tokens.iter().map(|t| (*t).to_owned()).collect(),
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
}
