//! The normalized event: what the outbox keeps beside the raw body, and the
//! CloudEvents JSON the publisher sends (contract §4), and [`Parsed`], what a
//! provider makes of an authentic body.
//!
//! The provider's body is embedded with [`RawValue`], so `data.payload` is the
//! provider's JSON text byte for byte: it is never parsed into numbers and
//! re-serialized.

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

/// Event kinds (contract §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A payment order.
    Order,
    /// A refund.
    Refund,
    /// A payout to the merchant or a third party.
    Withdrawal,
    /// Funds received on an address or account.
    Deposit,
    /// A settlement to the merchant.
    Settlement,
    /// A ledger transaction.
    Transaction,
    /// A payment that does not match an order.
    AbnormalPayment,
    /// A KYC decision.
    Kyc,
}

impl Kind {
    /// The routing-key segment.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Order => "order",
            Self::Refund => "refund",
            Self::Withdrawal => "withdrawal",
            Self::Deposit => "deposit",
            Self::Settlement => "settlement",
            Self::Transaction => "transaction",
            Self::AbnormalPayment => "abnormal_payment",
            Self::Kyc => "kyc",
        }
    }
}

/// Normalized statuses (contract §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Created, nothing paid yet.
    Created,
    /// Waiting for payment or confirmation.
    Pending,
    /// Being processed.
    Processing,
    /// Done and successful.
    Succeeded,
    /// Part of the amount was paid.
    PartiallyPaid,
    /// Done and failed.
    Failed,
    /// Cancelled.
    Cancelled,
    /// Expired unpaid.
    Expired,
    /// Refunded.
    Refunded,
    /// Abnormal, needs a person.
    Abnormal,
}

impl Status {
    /// The routing-key segment.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Pending => "pending",
            Self::Processing => "processing",
            Self::Succeeded => "succeeded",
            Self::PartiallyPaid => "partially_paid",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
            Self::Refunded => "refunded",
            Self::Abnormal => "abnormal",
        }
    }
}

impl Status {
    /// How far along a payment's life the status is: a later webhook with a lower
    /// stage arrived out of order (or the provider went back). Final outcomes
    /// share a stage; a refund comes after them.
    pub(crate) fn stage(self) -> u8 {
        match self {
            Self::Created => 0,
            Self::Pending => 1,
            Self::Processing => 2,
            Self::PartiallyPaid => 3,
            Self::Succeeded | Self::Failed | Self::Cancelled | Self::Expired | Self::Abnormal => 4,
            Self::Refunded => 5,
        }
    }
}

/// What an authentic body says, normalized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized {
    /// Unique per source: a second webhook with the same key is a duplicate.
    pub idempotency_key: String,
    /// Event kind.
    pub kind: Kind,
    /// Normalized status.
    pub status: Status,
    /// The provider's id of the thing the event is about; events that share a
    /// subject are published in received order.
    pub subject: String,
    /// The provider's event type, as sent.
    pub provider_event_type: Option<String>,
    /// The provider's status, as sent.
    pub provider_status: Option<String>,
    /// The provider's order id.
    pub order_id: Option<String>,
    /// The merchant's own order id.
    pub merchant_order_id: Option<String>,
    /// Amount as the literal decimal text the provider sent.
    pub amount: Option<String>,
    /// Currency as sent.
    pub currency: Option<String>,
    /// When the provider says the event happened.
    pub event_time: Option<OffsetDateTime>,
}

/// The outcome of [`Provider::parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A body that fits the provider's tables.
    Event(Box<Normalized>),
    /// An authentic body that does not: kept and published as `{provider}.unrecognized`.
    Unrecognized {
        /// Why, for the logs.
        reason: String,
        /// The provider's event type, when one could be read, for the logs.
        provider_event_type: Option<String>,
    },
}

impl Parsed {
    /// An unrecognized outcome with its reason.
    pub fn unrecognized(reason: impl Into<String>, provider_event_type: Option<String>) -> Self {
        Self::Unrecognized {
            reason: reason.into(),
            provider_event_type,
        }
    }
}

/// The routing-key segment, kind and status of an authentic event no mapping
/// table recognizes.
pub(crate) const UNRECOGNIZED: &str = "unrecognized";

/// Fixed namespace for event ids (UUID v5), so ids are the same on every replica.
const EVENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x5d2c_7a4e_3f1b_4c8a_9e6d_0b1f_2a3c_4d5e);

/// The event id: stable across retries, replays, restarts and replicas, derived from
/// provider, source and the provider's idempotency key.
pub(crate) fn event_id(provider: &str, source: &str, idempotency_key: &str) -> String {
    let name = format!("{provider}\n{source}\n{idempotency_key}");
    Uuid::new_v5(&EVENT_ID_NAMESPACE, name.as_bytes()).to_string()
}

/// Where a webhook came from and how its source publishes it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Origin<'a> {
    /// Provider name.
    pub(crate) provider: &'a str,
    /// Source name.
    pub(crate) source: &'a str,
    /// First routing-key segment (the provider's name, or the source's for
    /// Standard Webhooks sources).
    pub(crate) routing_prefix: &'a str,
    /// JSON paths whose string values are redacted in the published payload.
    pub(crate) redact: &'a [String],
}

/// Everything about an event except its raw body: stored in the outbox as JSON and
/// turned into the CloudEvents envelope at publish time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct EventMeta {
    /// Event id (`message_id`).
    pub(crate) id: String,
    /// Provider name.
    pub(crate) provider: String,
    /// Source name.
    pub(crate) source: String,
    /// Kind and status; `None` for an unrecognized event.
    pub(crate) class: Option<(Kind, Status)>,
    /// Ordering subject; events sharing it are published in received order.
    pub(crate) subject: String,
    /// Idempotency key, unique per source.
    pub(crate) idempotency_key: String,
    /// The provider's event type, as sent.
    pub(crate) provider_event_type: Option<String>,
    /// The provider's status, as sent.
    pub(crate) provider_status: Option<String>,
    /// The provider's order id.
    pub(crate) order_id: Option<String>,
    /// The merchant's order id.
    pub(crate) merchant_order_id: Option<String>,
    /// Amount, literal text.
    pub(crate) amount: Option<String>,
    /// Currency, as sent.
    pub(crate) currency: Option<String>,
    /// Provider event time, RFC 3339 UTC.
    pub(crate) event_time: Option<String>,
    /// Receive time, RFC 3339 UTC.
    pub(crate) received_at: String,
    /// First routing-key segment.
    pub(crate) routing_prefix: String,
    /// JSON paths redacted in the published payload (dot-separated object keys).
    #[serde(default)]
    pub(crate) redact: Vec<String>,
    /// Whether the signature was checked (`false`: the source has
    /// `allow_unsigned`); `None` in rows stored before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) verified: Option<bool>,
    /// Built by the relay from the provider's API, not received as a webhook
    /// (`docs/recovery.md`); absent on every received webhook.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) recovered: bool,
}

impl EventMeta {
    /// Builds the metadata for an authentic webhook from what its provider parsed.
    /// Unrecognized bodies are keyed by their SHA-256, so the same bytes sent twice
    /// are still deduplicated.
    pub(crate) fn new(
        origin: &Origin<'_>,
        parsed: &Parsed,
        body: &[u8],
        received: OffsetDateTime,
    ) -> Self {
        let Origin {
            provider, source, ..
        } = *origin;
        let received_at = rfc3339(received);
        let routing_prefix = origin.routing_prefix.to_owned();
        let redact = origin.redact.to_vec();
        match parsed {
            Parsed::Event(n) => {
                let Normalized {
                    idempotency_key,
                    kind,
                    status,
                    subject,
                    provider_event_type,
                    provider_status,
                    order_id,
                    merchant_order_id,
                    amount,
                    currency,
                    event_time,
                } = n.as_ref();
                Self {
                    id: event_id(provider, source, idempotency_key),
                    provider: provider.to_owned(),
                    source: source.to_owned(),
                    class: Some((*kind, *status)),
                    subject: subject.clone(),
                    idempotency_key: idempotency_key.clone(),
                    provider_event_type: provider_event_type.clone(),
                    provider_status: provider_status.clone(),
                    order_id: order_id.clone(),
                    merchant_order_id: merchant_order_id.clone(),
                    amount: amount.clone(),
                    currency: currency.clone(),
                    event_time: event_time.map(rfc3339),
                    received_at,
                    routing_prefix,
                    redact,
                    verified: None,
                    recovered: false,
                }
            }
            Parsed::Unrecognized {
                provider_event_type,
                ..
            } => {
                use sha2::Digest;
                let key = format!("unrecognized:{}", hex::encode(sha2::Sha256::digest(body)));
                let id = event_id(provider, source, &key);
                Self {
                    subject: id.clone(),
                    id,
                    provider: provider.to_owned(),
                    source: source.to_owned(),
                    class: None,
                    idempotency_key: key,
                    provider_event_type: provider_event_type.clone(),
                    provider_status: None,
                    order_id: None,
                    merchant_order_id: None,
                    amount: None,
                    currency: None,
                    event_time: None,
                    received_at,
                    routing_prefix,
                    redact,
                    verified: None,
                    recovered: false,
                }
            }
        }
    }

    /// The `kind` and `status` segments; both `unrecognized` for an unrecognized
    /// event.
    pub(crate) fn kind_status(&self) -> (&'static str, &'static str) {
        match self.class {
            Some((kind, status)) => (kind.as_str(), status.as_str()),
            None => (UNRECOGNIZED, UNRECOGNIZED),
        }
    }

    /// `{kind}.{status}`, or `unrecognized`.
    pub(crate) fn event_type(&self) -> String {
        match self.class {
            Some((kind, status)) => format!("{}.{}", kind.as_str(), status.as_str()),
            None => UNRECOGNIZED.to_owned(),
        }
    }

    /// `{prefix}.{kind}.{status}`, or `{prefix}.unrecognized`, where the prefix is
    /// the provider's name (a Standard Webhooks source's own name).
    pub(crate) fn routing_key(&self) -> String {
        format!("{}.{}", self.routing_prefix, self.event_type())
    }
}

/// Formats a time as RFC 3339 UTC.
pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// Why an envelope could not be built.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EventError {
    /// Serialization failed (only possible for a corrupted outbox row).
    #[error("cannot serialize the CloudEvents envelope: {0}")]
    Serialize(serde_json::Error),
}

/// An event's place in its subject's sequence, as published (contract §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sequence {
    /// 1 for a subject's first published event, then one more for each.
    pub(crate) number: i64,
    /// Its status is behind one already published for its subject and kind.
    pub(crate) stale: bool,
}

impl Sequence {
    /// The number as the `sequence` attribute carries it: decimal digits
    /// zero-padded to 20, so lexical order is numeric order.
    pub(crate) fn attribute(self) -> String {
        format!("{:020}", self.number)
    }
}

/// `{source}/{subject}`: the `partitionkey` of an event (events that share it are
/// numbered in one sequence).
pub(crate) fn partition_key(meta: &EventMeta) -> String {
    format!("{}/{}", meta.source, meta.subject)
}

#[derive(Serialize)]
struct CloudEvent<'a> {
    specversion: &'static str,
    id: &'a str,
    source: String,
    #[serde(rename = "type")]
    event_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<&'a str>,
    time: &'a str,
    datacontenttype: &'static str,
    provider: &'a str,
    partitionkey: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    sequence: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stale: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    recovered: bool,
    data: Data<'a>,
}

#[derive(Serialize)]
struct Data<'a> {
    provider: &'a str,
    source: &'a str,
    kind: &'a str,
    status: &'a str,
    provider_event_type: Option<&'a str>,
    provider_status: Option<&'a str>,
    order_id: Option<&'a str>,
    merchant_order_id: Option<&'a str>,
    amount: Option<&'a str>,
    currency: Option<&'a str>,
    received_at: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw_base64: Option<String>,
}

/// Builds the CloudEvents JSON body for a stored event and its raw body, with its
/// place in its subject's sequence (`None`: a preview, not a publish).
///
/// A recognized event embeds the body verbatim as `data.payload`; an unrecognized
/// one (or one whose body is not JSON after all) carries it as `data.raw_base64`.
pub(crate) fn cloudevent_json(
    meta: &EventMeta,
    sequence: Option<Sequence>,
    body: &[u8],
) -> Result<Vec<u8>, EventError> {
    // Redaction comes first, whatever the class: an unrecognized JSON body carries
    // the same secrets as a recognized one, only base64-encoded.
    let redacted = match meta.redact.is_empty() {
        false => std::str::from_utf8(body)
            .ok()
            .and_then(|text| redact(text, &meta.redact)),
        true => None,
    };
    let body = redacted.as_ref().map_or(body, String::as_bytes);
    let payload = match meta.class {
        Some(_) => serde_json::from_slice::<&RawValue>(body).ok(),
        None => None,
    };
    let raw_base64 = payload
        .is_none()
        .then(|| base64::engine::general_purpose::STANDARD.encode(body));
    let (kind, status) = meta.kind_status();
    let envelope = CloudEvent {
        specversion: "1.0",
        id: &meta.id,
        source: format!("/webhooks/{}", meta.source),
        event_type: meta.event_type(),
        subject: meta.class.map(|_| meta.subject.as_str()),
        time: meta.event_time.as_deref().unwrap_or(&meta.received_at),
        datacontenttype: "application/json",
        provider: &meta.provider,
        partitionkey: partition_key(meta),
        sequence: sequence.map(Sequence::attribute),
        stale: sequence.is_some_and(|s| s.stale),
        recovered: meta.recovered,
        data: Data {
            provider: &meta.provider,
            source: &meta.source,
            kind,
            status,
            provider_event_type: meta.provider_event_type.as_deref(),
            provider_status: meta.provider_status.as_deref(),
            order_id: meta.order_id.as_deref(),
            merchant_order_id: meta.merchant_order_id.as_deref(),
            amount: meta.amount.as_deref(),
            currency: meta.currency.as_deref(),
            received_at: &meta.received_at,
            payload,
            raw_base64,
        },
    };
    serde_json::to_vec(&envelope).map_err(EventError::Serialize)
}

/// The replacement for a redacted string value.
pub(crate) const REDACTED: &str = "\"[redacted]\"";

/// Replaces, in place, the string values at `paths` (dot-separated object keys, e.g.
/// `data.privateSecret`) with `"[redacted]"`, leaving every other byte as it was.
/// Every occurrence counts: an object that repeats a key (which JSON parsers
/// resolve differently) has each copy redacted. `None` when nothing needed
/// redacting (or the text is not JSON): the caller then uses the body unchanged.
pub(crate) fn redact(json: &str, paths: &[String]) -> Option<String> {
    let root: &RawValue = serde_json::from_str(json).ok()?;
    let mut spans: Vec<std::ops::Range<usize>> = Vec::new();
    for path in paths {
        let keys: Vec<&str> = path.split('.').collect();
        string_spans(json, root, &keys, &mut spans);
    }
    if spans.is_empty() {
        return None;
    }
    spans.sort_by_key(|span| std::cmp::Reverse(span.start));
    spans.dedup();
    let mut out = json.to_owned();
    for span in spans {
        out.replace_range(span, REDACTED);
    }
    Some(out)
}

/// Adds the byte ranges of the JSON strings at `keys` below `value` to `out`,
/// walking borrowed `RawValue`s so offsets point into the original text.
fn string_spans(
    json: &str,
    value: &RawValue,
    keys: &[&str],
    out: &mut Vec<std::ops::Range<usize>>,
) {
    let Some((first, rest)) = keys.split_first() else {
        let text = value.get();
        if let (true, Some(start)) = (
            text.starts_with('"'),
            (text.as_ptr() as usize).checked_sub(json.as_ptr() as usize),
        ) {
            out.push(start..start + text.len());
        }
        return;
    };
    let Ok(Entries(entries)) = serde_json::from_str::<Entries<'_>>(value.get()) else {
        return;
    };
    for (key, child) in entries {
        if key == *first {
            string_spans(json, child, rest, out);
        }
    }
}

/// Every member of a JSON object in order, duplicate keys included (a map would
/// keep only one of them).
struct Entries<'a>(Vec<(String, &'a RawValue)>);

impl<'de> Deserialize<'de> for Entries<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> serde::de::Visitor<'de> for Members {
            type Value = Entries<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, &'de RawValue>()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_map(Members)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = br#"{"transaction":{"id":"t-1","value":"200","currency":"UAH","status":"COMPLETE","url":"https:\/\/x\/y","exchange_rate":"31.84713375796178343949","n":1.50},"event_type":"transaction::completed"}"#;

    /// What the Whitepay provider makes of `BODY` (its own tests prove that); built
    /// here by hand so `event` stays a leaf below `providers`.
    fn parsed() -> Parsed {
        Parsed::Event(Box::new(Normalized {
            idempotency_key: "transaction::completed:t-1:COMPLETE".to_owned(),
            kind: Kind::Transaction,
            status: Status::Succeeded,
            subject: "t-1".to_owned(),
            provider_event_type: Some("transaction::completed".to_owned()),
            provider_status: Some("COMPLETE".to_owned()),
            order_id: None,
            merchant_order_id: None,
            amount: Some("200".to_owned()),
            currency: Some("UAH".to_owned()),
            event_time: None,
        }))
    }

    fn origin(source: &str) -> Origin<'_> {
        Origin {
            provider: "whitepay",
            source,
            routing_prefix: "whitepay",
            redact: &[],
        }
    }

    #[test]
    fn redaction_replaces_only_the_named_string_values() {
        let body = r#"{ "type":"order_status_change","data":{"orderId":"1","privateSecret":"s3\"cr\/et","n":1.50,"nested":{"k":"v"}},"privateSecret":"top" }"#;
        let paths = vec!["data.privateSecret".to_owned(), "data.nested.k".to_owned()];
        let out = redact(body, &paths).expect("redacted");
        assert_eq!(
            out,
            r#"{ "type":"order_status_change","data":{"orderId":"1","privateSecret":"[redacted]","n":1.50,"nested":{"k":"[redacted]"}},"privateSecret":"top" }"#
        );
        assert_eq!(
            redact(body, &["data.n".to_owned()]),
            None,
            "only strings are redacted"
        );
        assert_eq!(redact(body, &["data.missing".to_owned()]), None);
        assert_eq!(redact("not json", &paths), None);
    }

    #[test]
    fn every_copy_of_a_repeated_key_is_redacted() {
        let body = r#"{"data":{"privateSecret":"one","x":1,"privateSecret":"two"},"data":{"privateSecret":"three"}}"#;
        let out = redact(body, &["data.privateSecret".to_owned()]).expect("redacted");
        assert_eq!(
            out,
            r#"{"data":{"privateSecret":"[redacted]","x":1,"privateSecret":"[redacted]"},"data":{"privateSecret":"[redacted]"}}"#
        );
    }

    #[test]
    fn unrecognized_json_bodies_are_redacted_before_encoding() {
        let body = br#"{"type":"order_status_change","data":{"state":"TELEPORTED","privateSecret":"s3cret"}}"#;
        let parsed = Parsed::unrecognized("state not in the table", None);
        let redact = ["data.privateSecret".to_owned()];
        let origin = Origin {
            redact: &redact,
            ..origin("osl")
        };
        let meta = EventMeta::new(&origin, &parsed, body, OffsetDateTime::UNIX_EPOCH);
        let json = cloudevent_json(&meta, None, body).expect("envelope");
        let value: serde_json::Value = serde_json::from_slice(&json).expect("valid JSON");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(value["data"]["raw_base64"].as_str().expect("string"))
            .expect("base64");
        assert_eq!(
            decoded,
            br#"{"type":"order_status_change","data":{"state":"TELEPORTED","privateSecret":"[redacted]"}}"#
        );
        assert!(!String::from_utf8_lossy(&json).contains("s3cret"));
    }

    #[test]
    fn event_ids_are_stable_and_distinct_per_source() {
        let a = event_id("whitepay", "whitepay", "k");
        assert_eq!(a, event_id("whitepay", "whitepay", "k"));
        assert_ne!(a, event_id("whitepay", "other", "k"));
        assert_ne!(a, event_id("whitepay", "whitepay", "k2"));
    }

    #[test]
    fn payload_is_embedded_byte_for_byte() {
        let meta = EventMeta::new(
            &origin("whitepay"),
            &parsed(),
            BODY,
            OffsetDateTime::UNIX_EPOCH,
        );
        assert_eq!(meta.routing_key(), "whitepay.transaction.succeeded");
        let json = cloudevent_json(&meta, None, BODY).expect("envelope");
        let text = String::from_utf8(json).expect("utf8");
        let body = std::str::from_utf8(BODY).expect("utf8");
        assert!(text.contains(&format!("\"payload\":{body}}}")), "{text}");
        assert!(!text.contains("raw_base64"));
        let value: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(value["type"], "transaction.succeeded");
        assert_eq!(value["subject"], "t-1");
        assert_eq!(value["source"], "/webhooks/whitepay");
        assert_eq!(value["data"]["amount"], "200");
        assert_eq!(value["time"], "1970-01-01T00:00:00Z");
        assert_eq!(value["partitionkey"], "whitepay/t-1");
        assert!(value.get("sequence").is_none() && value.get("stale").is_none());
    }

    #[test]
    fn the_sequence_travels_zero_padded_and_stale_only_when_true() {
        let meta = EventMeta::new(
            &origin("whitepay"),
            &parsed(),
            BODY,
            OffsetDateTime::UNIX_EPOCH,
        );
        let published = |number, stale| {
            let json =
                cloudevent_json(&meta, Some(Sequence { number, stale }), BODY).expect("envelope");
            serde_json::from_slice::<serde_json::Value>(&json).expect("valid JSON")
        };
        let first = published(1, false);
        assert_eq!(first["sequence"], "00000000000000000001");
        assert!(first.get("stale").is_none());
        let late = published(i64::MAX, true);
        assert_eq!(late["sequence"], "09223372036854775807");
        assert_eq!(late["stale"], true);
    }

    #[test]
    fn unrecognized_bodies_travel_as_base64() {
        let body = b"\xff not json";
        let parsed = Parsed::unrecognized("not JSON", None);
        let meta = EventMeta::new(&origin("shop"), &parsed, body, OffsetDateTime::UNIX_EPOCH);
        assert_eq!(meta.routing_key(), "whitepay.unrecognized");
        let json = cloudevent_json(&meta, None, body).expect("envelope");
        let value: serde_json::Value = serde_json::from_slice(&json).expect("valid JSON");
        assert!(value["data"].get("payload").is_none());
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(value["data"]["raw_base64"].as_str().expect("string"))
            .expect("base64");
        assert_eq!(decoded, body);
        let again = EventMeta::new(&origin("shop"), &parsed, body, OffsetDateTime::now_utc());
        assert_eq!(meta.id, again.id, "the same bytes dedupe to the same event");
    }
}
