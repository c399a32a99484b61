//! Whitepay (`docs/providers/whitepay.md`, contract §6).
//!
//! Authentication: `Signature` = hex HMAC-SHA256(webhook token, raw body). Whitepay
//! issues two tokens (per payment page and per account), so a source holds a list
//! and any may match. There is no timestamp: replays are absorbed by deduplication.
//! Ack: 200 with an empty body.

use axum::http::StatusCode;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use sha2::Sha256;

use super::api::{NoRecovery, RecoveryApi};
use super::{
    Ack, BuildError, Provider, ProviderSpec, SampleContext, SampleError, VerifyError,
    WebhookRequest,
};
use crate::config::SourceConfig;
use crate::event::{Kind, Normalized, Parsed, Status};

/// Registry entry.
pub(crate) const SPEC: ProviderSpec = ProviderSpec {
    name: "whitepay",
    keys: &["webhook_token", "api_token", "slug"],
    secret_keys: &["webhook_token", "api_token"],
    // Its signature is a MAC of the body: it authenticates that body alone.
    credential_headers: &[],
    default_redact: &[],
    build,
    sample_body,
    sign,
};

const SIGNATURE_HEADER: &str = "signature";

fn build(source: &SourceConfig) -> Result<Box<dyn Provider>, BuildError> {
    Ok(Box::new(Whitepay {
        tokens: source.get_list("webhook_token"),
        api: api::Api::new(source),
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
pub(crate) struct Whitepay {
    tokens: Vec<String>,
    /// The Private API, for status queries.
    api: api::Api,
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
        // A struct also deserializes from a JSON array: only an object is a webhook.
        if request.body.trim_ascii_start().first() != Some(&b'{') {
            return match super::json_object(request.body) {
                Err(unrecognized) => unrecognized,
                Ok(_) => Parsed::unrecognized("body is not a JSON object", None),
            };
        }
        let root: Root<'_> = match serde_json::from_slice(request.body) {
            Ok(root) => root,
            // Valid JSON that does not fit: a mapped member named twice (which
            // copy would Whitepay mean?).
            Err(e) if e.classify() == serde_json::error::Category::Data => {
                return Parsed::unrecognized(format!("the body is not understood: {e}"), None);
            }
            Err(e) => return Parsed::unrecognized(format!("body is not JSON: {e}"), None),
        };
        let Some(event_type) = string(root.event_type) else {
            return Parsed::unrecognized("no `event_type`", None);
        };
        let unrecognized = |reason: &str| Parsed::unrecognized(reason, Some(event_type.clone()));
        let (entity_key, entity) = match (entity(root.order), entity(root.transaction)) {
            (Some(Ok(order)), _) => ("order", order),
            // Only a member named twice fails here: which copy would the provider mean?
            (Some(Err(e)), _) | (None, Some(Err(e))) => {
                return unrecognized(&format!("the entity is not understood: {e}"));
            }
            (None, Some(Ok(transaction))) => ("transaction", transaction),
            (None, None) => return unrecognized("neither an `order` nor a `transaction` object"),
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
        // An empty id would make unrelated events share the subject `""` and hold
        // each other back.
        let Some(id) = string(entity.id).filter(|id| !id.trim().is_empty()) else {
            return unrecognized("the entity has no non-empty string `id`");
        };
        let provider_status = string(entity.status);
        let status = match provider_status.as_deref() {
            Some(s) => status_from_entity(s),
            None => status_from_suffix(suffix),
        };
        let Some(status) = status else {
            return unrecognized("status not in the Whitepay mapping table");
        };
        let order_id = if entity_key == "transaction" {
            non_null_text(entity.order_id).unwrap_or_else(|| id.clone())
        } else {
            id.clone()
        };
        let merchant_order_id = if kind == Kind::Withdrawal {
            non_null_text(entity.external_id)
        } else {
            non_null_text(entity.external_order_id)
        };
        let event_time = non_null_text(entity.completed_at)
            .or_else(|| non_null_text(entity.created_at))
            .and_then(|t| super::parse_naive_utc(&t));
        Parsed::Event(Box::new(Normalized {
            idempotency_key: format!(
                "{event_type}:{id}:{}",
                provider_status.as_deref().unwrap_or("")
            ),
            kind,
            status,
            subject: id,
            provider_event_type: Some(event_type.clone()),
            provider_status,
            order_id: Some(order_id),
            merchant_order_id,
            amount: text(entity.value),
            currency: text(entity.currency),
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

    fn recovery(&self) -> Result<&dyn RecoveryApi, NoRecovery> {
        self.api.usable()
    }
}

/// The top level of a Whitepay webhook: only what the mapping reads, each value
/// borrowed unparsed from the body (unknown members are skipped, not copied).
/// Reading the body into a `serde_json::Value` tree cost a tenth of the relay's
/// instructions per webhook.
#[derive(Deserialize)]
struct Root<'a> {
    #[serde(borrow)]
    event_type: Option<&'a RawValue>,
    #[serde(borrow)]
    order: Option<&'a RawValue>,
    #[serde(borrow)]
    transaction: Option<&'a RawValue>,
}

/// The `order` or `transaction` object, as [`Root`] reads the top level.
#[derive(Deserialize)]
struct Entity<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    status: Option<&'a RawValue>,
    #[serde(borrow)]
    order_id: Option<&'a RawValue>,
    #[serde(borrow)]
    external_id: Option<&'a RawValue>,
    #[serde(borrow)]
    external_order_id: Option<&'a RawValue>,
    #[serde(borrow)]
    completed_at: Option<&'a RawValue>,
    #[serde(borrow)]
    created_at: Option<&'a RawValue>,
    #[serde(borrow)]
    value: Option<&'a RawValue>,
    #[serde(borrow)]
    currency: Option<&'a RawValue>,
}

/// The entity, if `raw` is an object.
fn entity(raw: Option<&RawValue>) -> Option<Result<Entity<'_>, serde_json::Error>> {
    raw.filter(|raw| raw.get().starts_with('{'))
        .map(|raw| serde_json::from_str(raw.get()))
}

/// A JSON string, unescaped; `None` for any other value.
fn string(raw: Option<&RawValue>) -> Option<String> {
    let raw = raw?.get();
    if raw.starts_with('"') {
        serde_json::from_str(raw).ok()
    } else {
        None
    }
}

/// The literal text of a string or a number, as [`super::json_text`] reads it.
fn text(raw: Option<&RawValue>) -> Option<String> {
    let raw = raw?;
    if raw.get().starts_with('"') {
        return string(Some(raw));
    }
    super::json_text(Some(&serde_json::from_str::<Value>(raw.get()).ok()?))
}

/// A text field, with JSON null and Whitepay's literal string `"null"` read as absent.
fn non_null_text(raw: Option<&RawValue>) -> Option<String> {
    text(raw).filter(|s| s != "null")
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
mod tests;

mod api;
