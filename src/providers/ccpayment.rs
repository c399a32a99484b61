//! CCPayment, API v1 and v2 (`docs/providers/ccpayment.md`, contract §6).
//!
//! Authentication: headers `Appid`, `Timestamp` (Unix seconds, valid for two minutes)
//! and `Sign` (hex) over the raw body. v1 signs with SHA-256(app id ‖ app secret ‖
//! Timestamp ‖ body), v2 with HMAC-SHA256(app secret, app id ‖ Timestamp ‖ body). Both
//! generations share the headers, so a source accepts either scheme (`api_version =
//! auto`) or pins one. v1's secret-prefix hash is open to length extension: whoever saw
//! one signed v1 body can append bytes and keep a valid v1 `Sign`; the appended padding
//! makes the body invalid JSON, so such a body can only become `unrecognized`, and
//! pinning `api_version = v2` refuses it outright.
//! Ack: 200, `text/plain`, `success`.

use std::time::Duration;

use axum::http::StatusCode;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::api::{NoRecovery, RecoveryApi};
use super::{
    Ack, BuildError, Provider, ProviderSpec, SampleContext, SampleError, TimeUnit, VerifyError,
    WebhookRequest, text,
};
use crate::config::SourceConfig;
use crate::event::{Kind, Normalized, Parsed, Status};

/// Registry entry.
pub(crate) const SPEC: ProviderSpec = ProviderSpec {
    name: "ccpayment",
    keys: &["app_id", "app_secret", "api_version"],
    secret_keys: &["app_secret"],
    // Its signature is a MAC of the body: it authenticates that body alone.
    credential_headers: &[],
    default_redact: &[],
    build,
    sample_body,
    sign,
};

const APPID_HEADER: &str = "appid";
const TIMESTAMP_HEADER: &str = "timestamp";
const SIGN_HEADER: &str = "sign";

/// CCPayment: "The request is valid for two minutes".
const DEFAULT_TOLERANCE: Duration = Duration::from_secs(120);

/// Which signature scheme a source accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ApiVersion {
    /// Either scheme: an account may be on v1 or v2, and the headers do not say which.
    Auto,
    /// Only the v1 SHA-256 concatenation.
    V1,
    /// Only the v2 HMAC.
    V2,
}

impl ApiVersion {
    fn from_setting(value: Option<&str>) -> Result<Self, String> {
        let Some(value) = value.map(str::trim) else {
            return Ok(Self::Auto);
        };
        if value.eq_ignore_ascii_case("auto") {
            Ok(Self::Auto)
        } else if value.eq_ignore_ascii_case("v1") {
            Ok(Self::V1)
        } else if value.eq_ignore_ascii_case("v2") {
            Ok(Self::V2)
        } else {
            Err(format!("expected `auto`, `v1` or `v2`, got `{value}`"))
        }
    }
}

fn build(source: &SourceConfig) -> Result<Box<dyn Provider>, BuildError> {
    let api_version = ApiVersion::from_setting(source.get("api_version")).map_err(|reason| {
        BuildError::Invalid {
            key: "api_version",
            reason,
        }
    })?;
    Ok(Box::new(Ccpayment {
        app_id: setting(source, "app_id"),
        app_secret: setting(source, "app_secret"),
        api_version,
        tolerance: source.timestamp_tolerance.unwrap_or(DEFAULT_TOLERANCE),
        api_url: source.api_url.clone(),
    }))
}

fn setting(source: &SourceConfig, key: &str) -> Option<String> {
    source.get(key).map(|v| v.trim().to_owned())
}

fn sample_body(ctx: &SampleContext<'_>) -> Vec<u8> {
    let format = time::macros::format_description!("[year][month][day][hour][minute][second]");
    let stamp = ctx.now.format(&format).unwrap_or_default();
    // Ids are spliced into JSON text, so only characters that need no escaping are kept.
    let token: String = ctx
        .unique
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    let api_version = ApiVersion::from_setting(ctx.source.get("api_version"));
    if api_version == Ok(ApiVersion::V1) {
        format!(
            r#"{{"pay_status":"success","order_type":"API Deposit","record_id":"{stamp}1{token}","order_id":"{stamp}0{token}","product_price":"25","denominated_currency":"USD","order_amount":"25","fiat_rate":"1","paid_amount":"25","token_rate":"1","chain":"POLYGON","txid":"0x3f1c{token}","contract":"0xc2132d05d31c914a87c6611c10748aeb04b58e8f","crypto":"USDT","extend":{{"merchant_order_id":"order_{token}"}}}}"#
        )
        .into_bytes()
    } else {
        format!(
            r#"{{"type":"ApiDeposit","msg":{{"recordId":"{stamp}{token}","orderId":"order_{token}","coinId":1329,"coinSymbol":"POL","status":"Success","isFlaggedAsRisky":false}}}}"#
        )
        .into_bytes()
    }
}

fn sign(ctx: &SampleContext<'_>, body: &[u8]) -> Result<Vec<(String, String)>, SampleError> {
    let app_id = setting(ctx.source, "app_id").ok_or(SampleError::MissingSetting("app_id"))?;
    let app_secret =
        setting(ctx.source, "app_secret").ok_or(SampleError::MissingSetting("app_secret"))?;
    let api_version =
        ApiVersion::from_setting(ctx.source.get("api_version")).map_err(SampleError::Invalid)?;
    let timestamp = ctx.now.unix_timestamp().to_string();
    // An `auto` source accepts both; sign as CCPayment would: v1 bodies are the flat
    // ones with `pay_status`, everything else (including the risky-address notice,
    // which has no `type`) is a v2 webhook.
    let use_v1 = match api_version {
        ApiVersion::V1 => true,
        ApiVersion::V2 => false,
        ApiVersion::Auto => is_v1_body(body),
    };
    let signature = if use_v1 {
        hex::encode(v1_digest(&app_id, &app_secret, &timestamp, body))
    } else {
        let mac = v2_mac(&app_id, &app_secret, &timestamp, body)
            .map_err(|e| SampleError::Invalid(e.to_string()))?;
        hex::encode(mac.finalize().into_bytes())
    };
    Ok(vec![
        (
            "Content-Type".to_owned(),
            "application/json; charset=utf-8".to_owned(),
        ),
        ("Appid".to_owned(), app_id),
        ("Timestamp".to_owned(), timestamp),
        ("Sign".to_owned(), signature),
    ])
}

fn is_v1_body(body: &[u8]) -> bool {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|root| root.get("pay_status").map(|_| ()))
        .is_some()
}

fn v1_digest(app_id: &str, app_secret: &str, timestamp: &str, body: &[u8]) -> [u8; 32] {
    Sha256::new()
        .chain_update(app_id)
        .chain_update(app_secret)
        .chain_update(timestamp)
        .chain_update(body)
        .finalize()
        .into()
}

fn v2_mac(
    app_id: &str,
    app_secret: &str,
    timestamp: &str,
    body: &[u8],
) -> Result<Hmac<Sha256>, hmac::digest::InvalidLength> {
    let mut mac = Hmac::<Sha256>::new_from_slice(app_secret.as_bytes())?;
    mac.update(app_id.as_bytes());
    mac.update(timestamp.as_bytes());
    mac.update(body);
    Ok(mac)
}

/// A CCPayment source.
pub(crate) struct Ccpayment {
    app_id: Option<String>,
    app_secret: Option<String>,
    api_version: ApiVersion,
    tolerance: Duration,
    /// The API host (`api_url`); `None`: CCPayment's own for the API version.
    api_url: Option<String>,
}

impl Provider for Ccpayment {
    fn missing_credentials(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        if self.app_id.is_none() {
            missing.push("app_id");
        }
        if self.app_secret.is_none() {
            missing.push("app_secret");
        }
        missing
    }

    fn verify(&self, request: &WebhookRequest<'_>) -> Result<(), VerifyError> {
        let app_id = self
            .app_id
            .as_deref()
            .ok_or(VerifyError::MissingCredential("app_id"))?;
        let app_secret = self
            .app_secret
            .as_deref()
            .ok_or(VerifyError::MissingCredential("app_secret"))?;
        let sent_app_id = super::header(request.headers, APPID_HEADER)?
            .ok_or(VerifyError::MissingHeader("Appid"))?;
        let timestamp = super::header(request.headers, TIMESTAMP_HEADER)?
            .ok_or(VerifyError::MissingHeader("Timestamp"))?;
        let signature = super::header(request.headers, SIGN_HEADER)?
            .ok_or(VerifyError::MissingHeader("Sign"))?;
        if !super::ct_eq(sent_app_id.as_bytes(), app_id.as_bytes()) {
            return Err(VerifyError::UnknownAppId);
        }
        let signed_at = super::unix_time(timestamp, TimeUnit::Seconds, "Timestamp")?;
        let signature = hex::decode(signature).map_err(|_| VerifyError::MalformedHeader("Sign"))?;
        let v2_matches = self.api_version != ApiVersion::V1
            && v2_mac(app_id, app_secret, timestamp, request.body)
                .map_err(|_| VerifyError::BadSignature)?
                .verify_slice(&signature)
                .is_ok();
        let v1_matches = self.api_version != ApiVersion::V2
            && super::ct_eq(
                &v1_digest(app_id, app_secret, timestamp, request.body),
                &signature,
            );
        if !(v2_matches || v1_matches) {
            return Err(VerifyError::BadSignature);
        }
        // Checked after the signature, so a stale error tells the operator about a
        // clock or a replay of a genuine webhook, not about a forgery.
        super::check_window(signed_at, request.now, self.tolerance)?;
        if self.api_version == ApiVersion::Auto {
            // Which scheme an `auto` source sees tells whether it can be pinned to v2.
            tracing::debug!(
                scheme = if v2_matches { "v2" } else { "v1" },
                "ccpayment signature verified"
            );
        }
        Ok(())
    }

    fn parse(&self, request: &WebhookRequest<'_>) -> Parsed {
        let object = match super::json_object(request.body) {
            Ok(object) => object,
            Err(unrecognized) => return unrecognized,
        };
        let root = &object;
        if root.contains_key("pay_status") || root.contains_key("order_type") {
            parse_v1(root)
        } else if root.contains_key("type") || root.contains_key("msg") {
            parse_v2(root)
        } else if root.contains_key("riskAt") {
            parse_risky_address(root)
        } else {
            Parsed::unrecognized(
                "neither a v1 (`pay_status`, `order_type`), a v2 (`type`, `msg`) nor a risky-address body",
                None,
            )
        }
    }

    fn ack(&self) -> Ack {
        Ack {
            status: StatusCode::OK,
            content_type: Some("text/plain; charset=utf-8"),
            body: Bytes::from_static(b"success"),
        }
    }

    fn recovery(&self) -> Result<&dyn RecoveryApi, NoRecovery> {
        super::api::usable(self, self.missing_credentials())
    }
}

/// v1: a flat body (`docs/providers/ccpayment.md`).
fn parse_v1(root: &Map<String, Value>) -> Parsed {
    let Some(order_type) = root.get("order_type").and_then(Value::as_str) else {
        return Parsed::unrecognized("v1 body without a string `order_type`", None);
    };
    let unrecognized = |reason: &str| Parsed::unrecognized(reason, Some(order_type.to_owned()));
    let (kind, amount_key) = match order_type {
        // `Invocie` is how CCPayment's own v1 page spells the invoice type.
        "API Deposit" | "Direct Deposit" | "Invoice" | "Invocie" => (Kind::Deposit, "paid_amount"),
        "API Withdrawal" => (Kind::Withdrawal, "withdraw_amount"),
        "Refund" => (Kind::Refund, "amount"),
        _ => return unrecognized("`order_type` not in the CCPayment v1 table"),
    };
    let Some(record_id) = text(root, "record_id") else {
        return unrecognized("v1 body without `record_id`");
    };
    let Some(pay_status) = root.get("pay_status").and_then(Value::as_str) else {
        return unrecognized("v1 body without a string `pay_status`");
    };
    let Some(status) = v1_status(pay_status) else {
        return unrecognized("`pay_status` not in the CCPayment v1 table");
    };
    let merchant_order_id = root
        .get("extend")
        .and_then(Value::as_object)
        .and_then(|extend| text(extend, "merchant_order_id"))
        .or_else(|| text(root, "merchant_order_id"));
    Parsed::Event(Box::new(Normalized {
        idempotency_key: format!("{order_type}:{record_id}:{pay_status}"),
        kind,
        status,
        subject: record_id.clone(),
        provider_event_type: Some(order_type.to_owned()),
        provider_status: Some(pay_status.to_owned()),
        order_id: Some(text(root, "order_id").unwrap_or(record_id)),
        merchant_order_id,
        amount: text(root, amount_key),
        currency: text(root, "crypto"),
        event_time: None,
    }))
}

fn v1_status(pay_status: &str) -> Option<Status> {
    let status = pay_status.to_ascii_lowercase();
    Some(match status.as_str() {
        "pending" => Status::Pending,
        "processing" => Status::Processing,
        "success" => Status::Succeeded,
        "failed" => Status::Failed,
        _ => return None,
    })
}

/// v2: `{type, msg}` (`docs/providers/ccpayment.md`).
fn parse_v2(root: &Map<String, Value>) -> Parsed {
    let Some(event_type) = root.get("type").and_then(Value::as_str) else {
        return Parsed::unrecognized("v2 body without a string `type`", None);
    };
    let unrecognized = |reason: &str| Parsed::unrecognized(reason, Some(event_type.to_owned()));
    let kind = match event_type {
        "DirectDeposit" | "ApiDeposit" | "UserDeposit" => Kind::Deposit,
        "ApiWithdrawal" | "UserWithdrawal" => Kind::Withdrawal,
        _ => return unrecognized("`type` not in the CCPayment v2 table"),
    };
    let Some(msg) = root.get("msg").and_then(Value::as_object) else {
        return unrecognized("v2 body without a `msg` object");
    };
    let Some(record_id) = text(msg, "recordId") else {
        return unrecognized("v2 body without `msg.recordId`");
    };
    let Some(provider_status) = msg.get("status").and_then(Value::as_str) else {
        return unrecognized("v2 body without a string `msg.status`");
    };
    let flagged = match msg.get("isFlaggedAsRisky") {
        None => false,
        Some(Value::Bool(flag)) => *flag,
        Some(_) => return unrecognized("`msg.isFlaggedAsRisky` is not a boolean"),
    };
    let status = if flagged {
        // CCPayment documents the flag on deposits only; on anything else its meaning
        // is unknown, and dropping it would hide a risk signal.
        if kind != Kind::Deposit {
            return unrecognized("`msg.isFlaggedAsRisky` on a withdrawal is not in the tables");
        }
        Status::Abnormal
    } else {
        match v2_status(provider_status) {
            Some(status) => status,
            None => return unrecognized("`msg.status` not in the CCPayment v2 table"),
        }
    };
    Parsed::Event(Box::new(Normalized {
        idempotency_key: format!("{event_type}:{record_id}:{provider_status}"),
        kind,
        status,
        subject: record_id.clone(),
        provider_event_type: Some(event_type.to_owned()),
        provider_status: Some(provider_status.to_owned()),
        order_id: Some(record_id),
        merchant_order_id: text(msg, "orderId")
            .or_else(|| text(msg, "referenceId"))
            .or_else(|| text(msg, "userId")),
        amount: text(msg, "amount"),
        currency: text(msg, "coinSymbol"),
        event_time: None,
    }))
}

fn v2_status(status: &str) -> Option<Status> {
    let status = status.to_ascii_lowercase();
    Some(match status.as_str() {
        "processing" => Status::Processing,
        "success" => Status::Succeeded,
        "failed" => Status::Failed,
        "waitingapproval" => Status::Pending,
        "rejected" => Status::Cancelled,
        _ => return None,
    })
}

/// v2 risky-address notice: a flat `{chainId, address, riskAt}` without `type`.
fn parse_risky_address(root: &Map<String, Value>) -> Parsed {
    let (Some(chain_id), Some(address), Some(risk_at)) = (
        text(root, "chainId"),
        text(root, "address"),
        text(root, "riskAt"),
    ) else {
        return Parsed::unrecognized(
            "risky-address body without `chainId`, `address` and `riskAt`",
            None,
        );
    };
    // CCPayment's v2 timestamps are 10-digit seconds; anything else leaves the event
    // at its receive time rather than guessing a unit.
    let event_time = risk_at
        .parse::<i64>()
        .ok()
        .and_then(|seconds| OffsetDateTime::from_unix_timestamp(seconds).ok());
    Parsed::Event(Box::new(Normalized {
        idempotency_key: format!("RiskyAddress:{chain_id}:{address}:{risk_at}"),
        kind: Kind::Deposit,
        status: Status::Abnormal,
        subject: address,
        provider_event_type: None,
        provider_status: None,
        order_id: None,
        merchant_order_id: None,
        amount: None,
        currency: None,
        event_time,
    }))
}

#[cfg(test)]
mod tests;

mod api;
