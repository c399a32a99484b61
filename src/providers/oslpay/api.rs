//! OSL Pay's OpenAPI, as recovery uses it (`docs/recovery.md`): the order detail
//! of a stuck order (`/api/v1/order/query-order-detail`). OSL has no resend
//! API. A request carries `appId`, `timestamp` (ms) and `signature`: base64
//! RSA-SHA256, with the merchant's OpenAPI private key (`api_private_key`), of
//! `appId={appId}&timestamp={timestamp}`, as OSL signs its webhooks with its own
//! key. OSL documents no answer signature: an answer is trusted as far as TLS to
//! its host goes. OSL serves only addresses it has allow-listed.

use rsa::pkcs1v15::SigningKey;
use rsa::signature::{SignatureEncoding, Signer};
use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::Sha256;
use time::OffsetDateTime;

use super::{BASE64, signed_message};
use crate::config::SourceConfig;
use crate::event::Kind;
use crate::providers::api::{
    ApiAnswer, ApiError, ApiRequest, Asked, Limit, NoRecovery, RecoveryApi, STATUS_QUERIES,
    http_status, usable,
};
use crate::providers::{BuildError, unix_millis};

/// The OpenAPI of one merchant (`app_id`, `api_private_key`).
pub(super) struct Api {
    base_url: String,
    app_id: Option<String>,
    key: Option<SigningKey<Sha256>>,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    code: Option<String>,
    msg: Option<String>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

impl Api {
    /// The API of `source`, or why its private key cannot be read.
    pub(super) fn new(source: &SourceConfig) -> Result<Self, BuildError> {
        let key = source
            .get("api_private_key")
            .map(|pem| super::parse_private_key(&pem.replace("\\n", "\n")))
            .transpose()
            .map_err(|reason| BuildError::Invalid {
                key: "api_private_key",
                reason,
            })?;
        Ok(Self {
            base_url: source
                .api_url
                .clone()
                .unwrap_or_else(|| "https://openapi.osl-pay.com".to_owned()),
            app_id: source.get("app_id").map(|id| id.trim().to_owned()),
            key: key.map(SigningKey::<Sha256>::new),
        })
    }

    /// Itself, once the app id and the private key are set.
    pub(super) fn usable(&self) -> Result<&dyn RecoveryApi, NoRecovery> {
        let mut missing = Vec::new();
        if self.app_id.is_none() {
            missing.push("app_id");
        }
        if self.key.is_none() {
            missing.push("api_private_key");
        }
        usable(self, missing)
    }
}

impl RecoveryApi for Api {
    fn base_url(&self) -> &str {
        &self.base_url
    }

    fn status_limits(&self) -> Option<&'static [Limit]> {
        // Well under OSL's 10 requests a second.
        Some(STATUS_QUERIES)
    }

    fn status_requests(&self, asked: &Asked<'_>, now: OffsetDateTime) -> Vec<ApiRequest> {
        // KYC statuses have no documented query.
        let (Kind::Order, Some(app_id), Some(key)) = (asked.kind, &self.app_id, &self.key) else {
            return Vec::new();
        };
        let timestamp = unix_millis(now).to_string();
        let Ok(signature) = key.try_sign(signed_message(app_id, &timestamp).as_bytes()) else {
            return Vec::new();
        };
        vec![ApiRequest {
            method: "POST",
            path: "/api/v1/order/query-order-detail".to_owned(),
            headers: vec![
                ("content-type", "application/json".to_owned()),
                ("appid", app_id.clone()),
                ("timestamp", timestamp),
                (
                    "signature",
                    base64::Engine::encode(&BASE64, signature.to_bytes()),
                ),
            ],
            body: serde_json::json!({ "orderId": asked.subject })
                .to_string()
                .into_bytes(),
        }]
    }

    fn read_status(&self, _asked: &Asked<'_>, answer: &ApiAnswer<'_>) -> Result<Vec<u8>, ApiError> {
        http_status(answer)?;
        let envelope: Envelope<'_> = serde_json::from_slice(answer.body).map_err(|e| {
            ApiError::Transient(format!("OSL Pay's answer is not its JSON envelope: {e}"))
        })?;
        let code = envelope.code.unwrap_or_default();
        let said = || {
            format!(
                "OSL Pay answered code {code} ({})",
                envelope.msg.as_deref().unwrap_or("")
            )
        };
        match code.as_str() {
            "00000" => {}
            // Authorization failed: the IP allow-list or the key.
            "00001" | "00002" => return Err(ApiError::Refused(said())),
            _ => return Err(ApiError::Transient(said())),
        }
        let data = envelope
            .data
            .filter(|data| data.get().starts_with('{'))
            .ok_or_else(|| ApiError::NotFound(format!("{}: no order", said())))?;
        // The detail carries the webhook's `data` fields under the same names
        // (`merchantOrder` for the webhook's `merchantOrderId`, which parse reads).
        Ok(format!(r#"{{"type":"order_status_change","data":{}}}"#, data.get()).into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use rsa::pkcs1v15::{Signature, VerifyingKey};
    use rsa::signature::Verifier;

    use super::*;
    use crate::providers::Provider;
    use crate::providers::test_support::{answer, recovered, source};

    const PRIVATE_PEM: &str = include_str!("../../../tests/fixtures/oslpay/test_private_key.pem");

    fn osl(settings: &[(&str, &str)]) -> Box<dyn Provider> {
        (super::super::SPEC.build)(&source("osl", "oslpay", settings))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn an_order_detail_is_asked_for_signed_with_the_merchants_private_key() {
        let provider = osl(&[("app_id", "app-1"), ("api_private_key", PRIVATE_PEM)]);
        let api = provider.recovery().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(api.base_url(), "https://openapi.osl-pay.com");
        let asked = Asked {
            subject: "OR-1",
            kind: Kind::Order,
            provider_event_type: Some("order_status_change"),
        };
        let now =
            OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap_or_else(|e| panic!("{e}"));
        let requests = api.status_requests(&asked, now);
        assert_eq!(requests.len(), 1);
        let request = &requests[0];
        assert_eq!(request.path, "/api/v1/order/query-order-detail");
        assert_eq!(request.body, br#"{"orderId":"OR-1"}"#);
        let header = |name: &str| {
            request
                .headers
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(String::new(), |(_, v)| v.clone())
        };
        assert_eq!(header("timestamp"), "1700000000000");
        let key = super::super::parse_private_key(PRIVATE_PEM).unwrap_or_else(|e| panic!("{e}"));
        let signature = base64::Engine::decode(&BASE64, header("signature"))
            .ok()
            .and_then(|bytes| Signature::try_from(bytes.as_slice()).ok())
            .unwrap_or_else(|| panic!("a base64 signature"));
        assert!(
            VerifyingKey::<Sha256>::new(key.to_public_key())
                .verify(b"appId=app-1&timestamp=1700000000000", &signature)
                .is_ok(),
            "signed over appId and timestamp with the private key"
        );
        let kyc = Asked {
            kind: Kind::Kyc,
            ..asked
        };
        assert!(api.status_requests(&kyc, now).is_empty());
    }

    #[test]
    fn an_order_detail_becomes_the_webhook_of_its_state_and_refusals_are_refusals() {
        let provider = osl(&[("app_id", "app-1"), ("api_private_key", PRIVATE_PEM)]);
        let api = provider.recovery().unwrap_or_else(|e| panic!("{e}"));
        let asked = Asked {
            subject: "OR-1",
            kind: Kind::Order,
            provider_event_type: Some("order_status_change"),
        };
        let read = |body: &[u8]| api.read_status(&asked, &answer(200, body));
        let event = recovered(
            provider.as_ref(),
            &asked,
            br#"{"code":"00000","msg":"success","data":{"orderId":"OR-1","merchantOrder":"m-1","fiatAmount":"100.10","fiatCurrency":"EUR","state":"COMPLETED","subState":"WITHDRAWAL_SUCCESS"},"requestTime":"1"}"#,
        );
        assert_eq!(event.idempotency_key, "order_status_change:OR-1:COMPLETED");
        assert_eq!(event.merchant_order_id.as_deref(), Some("m-1"));
        assert_eq!(event.amount.as_deref(), Some("100.10"));
        assert!(matches!(
            read(br#"{"code":"00001","msg":"authorization failed","data":null}"#),
            Err(ApiError::Refused(_))
        ));
        assert!(matches!(
            read(br#"{"code":"99999","msg":"system error","data":null}"#),
            Err(ApiError::Transient(_))
        ));
    }

    #[test]
    fn without_the_private_key_there_is_nothing_to_ask_with_and_a_bad_one_stops_the_start() {
        let provider = osl(&[("app_id", "app-1")]);
        let Err(NoRecovery::MissingCredentials(missing)) = provider.recovery().map(|_| ()) else {
            panic!("recovery without a key");
        };
        assert_eq!(missing, ["api_private_key"]);
        let built = (super::super::SPEC.build)(&source(
            "osl",
            "oslpay",
            &[("api_private_key", "not a key")],
        ));
        assert!(built.is_err());
    }
}
