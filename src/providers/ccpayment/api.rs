//! CCPayment's recovery API (`docs/recovery.md`): the webhook resend of v1 and
//! v2, and v2's record lookups for stuck subjects. Requests are signed as
//! CCPayment's webhooks are (`Appid`, `Timestamp`, `Sign` over the exact body);
//! an answer that carries a `Sign` must match it, and a v1 answer must carry one.

use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;
use time::OffsetDateTime;

use super::{ApiVersion, Ccpayment, v1_digest, v2_mac};
use crate::event::Kind;
use crate::providers::api::{
    ApiAnswer, ApiError, ApiRequest, Asked, Limit, RecoveryApi, Resend, STATUS_QUERIES, http_status,
};

/// v1's documented limits for the resend ("once per minute, 25 calls per day").
/// v2 documents none for it, so the relay plans as if v1's applied.
const RESEND_LIMITS: &[Limit] = &[
    Limit {
        per: Duration::from_secs(60),
        calls: 1,
    },
    Limit {
        per: Duration::from_secs(24 * 3600),
        calls: 25,
    },
];

/// Success in CCPayment's envelope.
const SUCCESS: i64 = 10000;

/// The envelope of every answer.
#[derive(Deserialize)]
struct Envelope<'a> {
    code: Option<i64>,
    msg: Option<String>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ResendData {
    #[serde(rename = "resendCount")]
    resend_count: Option<u64>,
}

#[derive(Deserialize)]
struct RecordData<'a> {
    #[serde(borrow)]
    record: Option<&'a RawValue>,
}

impl Ccpayment {
    /// Whether the source calls v1's API (`api_version = v1`); `auto` and `v2`
    /// call v2's, the current one.
    fn calls_v1(&self) -> bool {
        self.api_version == ApiVersion::V1
    }

    /// A signed POST of `body` to `path`.
    fn post(&self, path: String, body: String, now: OffsetDateTime) -> ApiRequest {
        let app_id = self.app_id.as_deref().unwrap_or_default();
        let app_secret = self.app_secret.as_deref().unwrap_or_default();
        let timestamp = now.unix_timestamp().to_string();
        let sign = if self.calls_v1() {
            hex::encode(v1_digest(app_id, app_secret, &timestamp, body.as_bytes()))
        } else {
            v2_mac(app_id, app_secret, &timestamp, body.as_bytes())
                .map(|mac| hex::encode(hmac::Mac::finalize(mac).into_bytes()))
                .unwrap_or_default()
        };
        ApiRequest {
            method: "POST",
            path,
            headers: vec![
                ("content-type", "application/json".to_owned()),
                ("appid", app_id.to_owned()),
                ("timestamp", timestamp),
                ("sign", sign),
            ],
            body: body.into_bytes(),
        }
    }

    /// The answer's `data`, once its signature (when it has one, always on v1)
    /// and its `code` say it is a success.
    fn data<'a>(&self, answer: &ApiAnswer<'a>) -> Result<Option<&'a RawValue>, ApiError> {
        http_status(answer)?;
        self.check_answer_signature(answer)?;
        let envelope: Envelope<'_> = serde_json::from_slice(answer.body).map_err(|e| {
            ApiError::Transient(format!("CCPayment's answer is not its JSON envelope: {e}"))
        })?;
        let code = envelope.code.unwrap_or_default();
        if code == SUCCESS {
            return Ok(envelope.data);
        }
        let msg = envelope.msg.unwrap_or_default();
        let said = format!("CCPayment answered code {code} ({msg})");
        Err(match code {
            // RateLimit, ReqDailyLimit, ReqExpired (a clock off by minutes), and
            // the generic failure: worth asking again later.
            11004 | 11009 | 11006 | 10001 => ApiError::Transient(said),
            11003 => ApiError::NotFound(said),
            11013 => ApiError::Refused(format!(
                "{said}: the account is on API v1, set `api_version = \"v1\"`"
            )),
            _ => ApiError::Refused(said),
        })
    }

    fn check_answer_signature(&self, answer: &ApiAnswer<'_>) -> Result<(), ApiError> {
        let header = |name| {
            answer
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        };
        let Some(sign) = header("sign") else {
            return if self.calls_v1() {
                Err(ApiError::Untrusted(
                    "CCPayment's v1 answer carries no `Sign` header".to_owned(),
                ))
            } else {
                Ok(())
            };
        };
        let app_id = self.app_id.as_deref().unwrap_or_default();
        let app_secret = self.app_secret.as_deref().unwrap_or_default();
        let timestamp = header("timestamp").unwrap_or_default();
        let Ok(sign) = hex::decode(sign) else {
            return Err(ApiError::Untrusted(
                "CCPayment's answer has a `Sign` that is not hex".to_owned(),
            ));
        };
        let matches = if self.calls_v1() {
            crate::providers::ct_eq(
                &v1_digest(app_id, app_secret, timestamp, answer.body),
                &sign,
            )
        } else {
            v2_mac(app_id, app_secret, timestamp, answer.body)
                .is_ok_and(|mac| hmac::Mac::verify_slice(mac, &sign).is_ok())
        };
        if matches {
            Ok(())
        } else {
            Err(ApiError::Untrusted(
                "the signature of CCPayment's answer does not match its body: not trusted"
                    .to_owned(),
            ))
        }
    }
}

impl RecoveryApi for Ccpayment {
    fn base_url(&self) -> &str {
        match &self.api_url {
            Some(url) => url,
            None if self.calls_v1() => "https://admin.ccpayment.com",
            None => "https://ccpayment.com",
        }
    }

    fn resend(&self) -> Option<Resend> {
        Some(Resend {
            max_window: Duration::from_secs(3600),
            limits: RESEND_LIMITS,
        })
    }

    fn resend_request(&self, from: i64, until: i64, now: OffsetDateTime) -> Option<ApiRequest> {
        // Only the webhooks whose delivery failed: those are the ones a gap
        // lost, and CCPayment stops retrying them after about half an hour.
        Some(if self.calls_v1() {
            self.post(
                "/ccpayment/v1/webhook/resend".to_owned(),
                format!(
                    r#"{{"start_timestamp":{from},"end_timestamp":{until},"webhook_result":"Failed","transaction_type":"All Type"}}"#
                ),
                now,
            )
        } else {
            self.post(
                "/ccpayment/v2/webhook/resend".to_owned(),
                format!(
                    r#"{{"startTimestamp":{from},"endTimestamp":{until},"webhookResult":"Failed","transactionType":"AllType"}}"#
                ),
                now,
            )
        })
    }

    fn read_resend(&self, answer: &ApiAnswer<'_>) -> Result<Option<u64>, ApiError> {
        // v1's answer body is not documented beyond its code: `None`.
        Ok(self
            .data(answer)?
            .and_then(|data| serde_json::from_str::<ResendData>(data.get()).ok())
            .and_then(|data| data.resend_count))
    }

    fn status_limits(&self) -> Option<&'static [Limit]> {
        // v2's record lookups have no documented limit.
        (!self.calls_v1()).then_some(STATUS_QUERIES)
    }

    fn status_requests(&self, asked: &Asked<'_>, now: OffsetDateTime) -> Vec<ApiRequest> {
        // v1's `bill/info` takes merchant order ids and answers without record
        // ids: it cannot be matched to the subject (a record id).
        if self.calls_v1() {
            return Vec::new();
        }
        let endpoint = match (asked.provider_event_type, asked.kind) {
            (Some("ApiDeposit" | "DirectDeposit"), Kind::Deposit) => "getAppDepositRecord",
            (Some("UserDeposit"), Kind::Deposit) => "getUserDepositRecord",
            (Some("ApiWithdrawal"), Kind::Withdrawal) => "getAppWithdrawRecord",
            (Some("UserWithdrawal"), Kind::Withdrawal) => "getUserWithdrawRecord",
            _ => return Vec::new(),
        };
        let body = serde_json::json!({ "recordId": asked.subject }).to_string();
        vec![self.post(format!("/ccpayment/v2/{endpoint}"), body, now)]
    }

    fn read_status(&self, asked: &Asked<'_>, answer: &ApiAnswer<'_>) -> Result<Vec<u8>, ApiError> {
        let record = self
            .data(answer)?
            .and_then(|data| serde_json::from_str::<RecordData<'_>>(data.get()).ok())
            .and_then(|data| data.record)
            .ok_or_else(|| {
                ApiError::Transient("CCPayment's answer has no `data.record`".to_owned())
            })?;
        let event_type = serde_json::to_string(asked.provider_event_type.unwrap_or_default())
            .map_err(|e| ApiError::Transient(e.to_string()))?;
        // The record carries the webhook's `msg` fields under the same names.
        Ok(format!(r#"{{"type":{event_type},"msg":{}}}"#, record.get()).into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderMap;

    use super::*;
    use crate::providers::Provider;
    use crate::providers::test_support::{answer, recovered, source};

    const APP_ID: &str = "202302010636261620672405236006912";

    fn ccpayment(api_version: &str) -> Box<dyn Provider> {
        let source = source(
            "cc",
            "ccpayment",
            &[
                ("app_id", APP_ID),
                ("app_secret", "test_app_secret"),
                ("api_version", api_version),
            ],
        );
        (super::super::SPEC.build)(&source).unwrap_or_else(|e| panic!("{e}"))
    }

    fn at(seconds: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(seconds).unwrap_or_else(|e| panic!("{e}"))
    }

    fn header<'a>(request: &'a ApiRequest, name: &str) -> &'a str {
        request
            .headers
            .iter()
            .find(|(n, _)| *n == name)
            .map_or("", |(_, v)| v.as_str())
    }

    #[test]
    fn a_v2_resend_is_signed_with_the_hmac_of_app_id_timestamp_and_body() {
        let provider = ccpayment("v2");
        let api = provider.recovery().unwrap_or_else(|e| panic!("{e}"));
        let request = api
            .resend_request(1_710_142_200, 1_710_145_800, at(1_710_145_800))
            .unwrap_or_else(|| panic!("a resend"));
        assert_eq!(request.path, "/ccpayment/v2/webhook/resend");
        assert_eq!(header(&request, "timestamp"), "1710145800");
        let body = String::from_utf8_lossy(&request.body).into_owned();
        assert_eq!(
            body,
            r#"{"startTimestamp":1710142200,"endTimestamp":1710145800,"webhookResult":"Failed","transactionType":"AllType"}"#
        );
        // The vector of provider-apis.md §1.1, for its body with `AllResult`.
        let vector = r#"{"startTimestamp":1710142200,"endTimestamp":1710145800,"webhookResult":"AllResult","transactionType":"AllType"}"#;
        let sign = v2_mac(APP_ID, "test_app_secret", "1710145800", vector.as_bytes())
            .map(|mac| hex::encode(hmac::Mac::finalize(mac).into_bytes()))
            .unwrap_or_default();
        assert_eq!(
            sign,
            "1c6c4033a45b81936da9f079f388e4112695757b41a66d28a0091987f17e53f8"
        );
        let expected = v2_mac(APP_ID, "test_app_secret", "1710145800", &request.body)
            .map(|mac| hex::encode(hmac::Mac::finalize(mac).into_bytes()))
            .unwrap_or_default();
        assert_eq!(header(&request, "sign"), expected);
        assert_eq!(api.base_url(), "https://ccpayment.com");
    }

    #[test]
    fn a_v1_resend_is_signed_with_the_plain_hash_and_asks_v1s_host() {
        let provider = ccpayment("v1");
        let api = provider.recovery().unwrap_or_else(|e| panic!("{e}"));
        let request = api
            .resend_request(1_710_142_200, 1_710_145_800, at(1_710_145_800))
            .unwrap_or_else(|| panic!("a resend"));
        assert_eq!(request.path, "/ccpayment/v1/webhook/resend");
        assert_eq!(api.base_url(), "https://admin.ccpayment.com");
        let vector = r#"{"start_timestamp":1710142200,"end_timestamp":1710145800,"webhook_result":"All Result","transaction_type":"All Type"}"#;
        assert_eq!(
            hex::encode(v1_digest(
                APP_ID,
                "test_app_secret",
                "1710145800",
                vector.as_bytes()
            )),
            "0ec9a7400b8877b2c373bf4dcab280bd9c76a712aa147812e0c336f55a6abf07"
        );
        assert_eq!(
            header(&request, "sign"),
            hex::encode(v1_digest(
                APP_ID,
                "test_app_secret",
                "1710145800",
                &request.body
            ))
        );
        // v1 has no lookup by record id.
        let asked = Asked {
            subject: "r1",
            kind: Kind::Deposit,
            provider_event_type: Some("API Deposit"),
        };
        assert!(api.status_requests(&asked, at(0)).is_empty());
    }

    fn answer_headers(sign: Option<String>, timestamp: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(sign) = sign {
            headers.insert("sign", sign.parse().unwrap_or_else(|e| panic!("{e}")));
            headers.insert(
                "timestamp",
                timestamp.parse().unwrap_or_else(|e| panic!("{e}")),
            );
        }
        headers
    }

    #[test]
    fn an_answer_is_trusted_only_with_a_matching_signature_and_a_success_code() {
        let provider = ccpayment("v2");
        let api = provider.recovery().unwrap_or_else(|e| panic!("{e}"));
        let body = br#"{"code":10000,"msg":"success","data":{"resendCount":3}}"#;
        let signed = v2_mac(APP_ID, "test_app_secret", "1710145800", body)
            .map(|mac| hex::encode(hmac::Mac::finalize(mac).into_bytes()))
            .ok();
        let read = |headers: &HeaderMap, body: &[u8], status| {
            api.read_resend(&ApiAnswer {
                status,
                headers,
                body,
            })
        };
        assert_eq!(
            read(&answer_headers(signed.clone(), "1710145800"), body, 200),
            Ok(Some(3))
        );
        // v2 documents no answer signature: none is accepted, a wrong one never.
        assert_eq!(read(&HeaderMap::new(), body, 200), Ok(Some(3)));
        let forged = answer_headers(Some("00".repeat(32)), "1710145800");
        assert!(matches!(
            read(&forged, body, 200),
            Err(ApiError::Untrusted(_))
        ));
        let limited = br#"{"code":11004,"msg":"RateLimit","data":null}"#;
        assert!(matches!(
            read(&HeaderMap::new(), limited, 200),
            Err(ApiError::Transient(_))
        ));
        let refused = br#"{"code":12002,"msg":"IpNotInWhitelist","data":null}"#;
        assert!(matches!(
            read(&HeaderMap::new(), refused, 200),
            Err(ApiError::Refused(_))
        ));
        assert!(matches!(
            read(&HeaderMap::new(), b"oops", 502),
            Err(ApiError::Transient(_))
        ));
        // v1 answers must be signed.
        let v1 = ccpayment("v1");
        let v1 = v1.recovery().unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            v1.read_resend(&answer(200, body)),
            Err(ApiError::Untrusted(_))
        ));
    }

    #[test]
    fn a_record_answer_becomes_the_webhook_its_status_would_have_sent() {
        let provider = ccpayment("auto");
        let api = provider.recovery().unwrap_or_else(|e| panic!("{e}"));
        let asked = Asked {
            subject: "2025011607",
            kind: Kind::Deposit,
            provider_event_type: Some("ApiDeposit"),
        };
        let requests = api.status_requests(&asked, at(1_710_145_800));
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].path, "/ccpayment/v2/getAppDepositRecord");
        assert_eq!(requests[0].body, br#"{"recordId":"2025011607"}"#);
        let body = br#"{"code":10000,"msg":"success","data":{"record":{"recordId":"2025011607","orderId":"o-1","coinSymbol":"USDT","amount":"10.000001","status":"Success","isFlaggedAsRisky":false}}}"#;
        let event = recovered(provider.as_ref(), &asked, body);
        assert_eq!(event.idempotency_key, "ApiDeposit:2025011607:Success");
        assert_eq!(event.amount.as_deref(), Some("10.000001"));
        let missing = ccpayment("v2");
        assert!(missing.recovery().is_ok());
        let without = (super::super::SPEC.build)(&source("cc", "ccpayment", &[]))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(without.recovery().is_err());
    }
}
