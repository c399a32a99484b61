//! Whitepay's Private API, as recovery uses it (`docs/recovery.md`): the order
//! details of a stuck order. Whitepay has no resend API. Requests carry the
//! Private API token (`Authorization: Bearer`); Whitepay signs no answer, so an
//! answer is trusted as far as TLS to its host goes.

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use serde_json::value::RawValue;
use time::OffsetDateTime;

use crate::config::SourceConfig;
use crate::event::Kind;
use crate::providers::api::{
    ApiAnswer, ApiError, ApiRequest, Asked, Limit, NoRecovery, RecoveryApi, STATUS_QUERIES,
    http_status, usable,
};

/// The Private API of one payment page (`api_token`, `slug`).
pub(super) struct Api {
    base_url: String,
    token: Option<String>,
    slug: Option<String>,
}

#[derive(Deserialize)]
struct Details<'a> {
    #[serde(borrow)]
    order: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Status {
    status: Option<String>,
}

impl Api {
    pub(super) fn new(source: &SourceConfig) -> Self {
        Self {
            base_url: source
                .api_url
                .clone()
                .unwrap_or_else(|| "https://api.whitepay.com".to_owned()),
            token: source.get("api_token").map(|v| v.trim().to_owned()),
            slug: source.get("slug").map(|v| v.trim().to_owned()),
        }
    }

    /// Itself, once the token and the slug are set.
    pub(super) fn usable(&self) -> Result<&dyn RecoveryApi, NoRecovery> {
        let missing = [("api_token", &self.token), ("slug", &self.slug)]
            .into_iter()
            .filter(|(_, value)| value.is_none())
            .map(|(key, _)| key)
            .collect();
        usable(self, missing)
    }
}

/// The `event_type` Whitepay sends an order's webhook with at this status.
fn event_type(status: &str) -> String {
    match status {
        "COMPLETE" => "order::completed".to_owned(),
        other => format!("order::{}", other.to_ascii_lowercase()),
    }
}

impl RecoveryApi for Api {
    fn base_url(&self) -> &str {
        &self.base_url
    }

    fn status_limits(&self) -> Option<&'static [Limit]> {
        // Whitepay documents no limit.
        Some(STATUS_QUERIES)
    }

    fn status_requests(&self, asked: &Asked<'_>, _now: OffsetDateTime) -> Vec<ApiRequest> {
        // Withdrawals and transactions have no documented query.
        if asked.kind != Kind::Order {
            return Vec::new();
        }
        let slug = utf8_percent_encode(self.slug.as_deref().unwrap_or_default(), NON_ALPHANUMERIC);
        let id = utf8_percent_encode(asked.subject, NON_ALPHANUMERIC);
        let token = self.token.as_deref().unwrap_or_default();
        // Crypto orders first; "Show Order Details" answers for the fiat ones.
        ["crypto-orders", "orders"]
            .into_iter()
            .map(|list| ApiRequest {
                method: "GET",
                path: format!("/private-api/{list}/{slug}/{id}"),
                headers: vec![
                    ("authorization", format!("Bearer {token}")),
                    ("accept", "application/json".to_owned()),
                ],
                body: Vec::new(),
            })
            .collect()
    }

    fn read_status(&self, _asked: &Asked<'_>, answer: &ApiAnswer<'_>) -> Result<Vec<u8>, ApiError> {
        http_status(answer)?;
        let order = serde_json::from_slice::<Details<'_>>(answer.body)
            .ok()
            .and_then(|details| details.order)
            .ok_or_else(|| {
                ApiError::Transient("Whitepay's answer has no `order` object".to_owned())
            })?;
        let status = serde_json::from_str::<Status>(order.get())
            .ok()
            .and_then(|order| order.status)
            .ok_or_else(|| {
                ApiError::Transient("Whitepay's order has no string `status`".to_owned())
            })?;
        let event_type = serde_json::to_string(&event_type(&status))
            .map_err(|e| ApiError::Transient(e.to_string()))?;
        Ok(format!(r#"{{"order":{},"event_type":{event_type}}}"#, order.get()).into_bytes())
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::providers::Provider;
    use crate::providers::test_support::{answer, recovered, source};

    fn whitepay(settings: &[(&str, &str)]) -> Box<dyn Provider> {
        (super::super::SPEC.build)(&source("wp", "whitepay", settings))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn an_order_is_asked_for_with_the_bearer_token_on_the_slugs_page() {
        let provider = whitepay(&[("api_token", "tok"), ("slug", "my shop")]);
        let api = provider.recovery().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(api.base_url(), "https://api.whitepay.com");
        let asked = Asked {
            subject: "9a/b",
            kind: Kind::Order,
            provider_event_type: Some("order::partially_fulfilled"),
        };
        let requests = api.status_requests(&asked, OffsetDateTime::UNIX_EPOCH);
        let paths: Vec<_> = requests.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/private-api/crypto-orders/my%20shop/9a%2Fb",
                "/private-api/orders/my%20shop/9a%2Fb"
            ]
        );
        assert!(
            requests[0]
                .headers
                .contains(&("authorization", "Bearer tok".to_owned()))
        );
        let transaction = Asked {
            kind: Kind::Transaction,
            ..asked
        };
        assert!(
            api.status_requests(&transaction, OffsetDateTime::UNIX_EPOCH)
                .is_empty()
        );
    }

    #[test]
    fn order_details_become_the_webhook_of_that_status_with_the_same_key() {
        let provider = whitepay(&[("api_token", "tok"), ("slug", "s")]);
        let api = provider.recovery().unwrap_or_else(|e| panic!("{e}"));
        let asked = Asked {
            subject: "o-1",
            kind: Kind::Order,
            provider_event_type: Some("order::partially_fulfilled"),
        };
        let body = br#"{"order":{"id":"o-1","currency":"USDT","value":"100.000000000000000001","status":"COMPLETE","external_order_id":"INV-1"}}"#;
        let event = recovered(provider.as_ref(), &asked, body);
        assert_eq!(event.idempotency_key, "order::completed:o-1:COMPLETE");
        assert_eq!(event.amount.as_deref(), Some("100.000000000000000001"));
        let missing = api.read_status(&asked, &answer(404, b"{}"));
        assert!(matches!(missing, Err(ApiError::NotFound(_))));
    }

    #[test]
    fn without_the_token_and_slug_there_is_nothing_to_ask_with() {
        let provider = whitepay(&[("webhook_token", "w")]);
        let Err(NoRecovery::MissingCredentials(missing)) = provider.recovery().map(|_| ()) else {
            panic!("recovery without credentials");
        };
        assert_eq!(missing, ["api_token", "slug"]);
    }
}
