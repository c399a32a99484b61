//! Property tests: every provider's `verify` and `parse` on arbitrary bytes and
//! headers never panic, and `verify` never accepts what was not signed with the
//! source's credentials. `PROPTEST_CASES=100000 cargo test --release --test it --
//! provider_fuzz::` runs a longer campaign (docs/reliability.md).

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use hookrelay::config::Config;
use hookrelay::event::Parsed;
use hookrelay::providers::{self, WebhookRequest};
use proptest::prelude::*;
use time::OffsetDateTime;

/// Sources with test credentials for every provider (as in `providers.rs`).
fn config() -> Config {
    let public_key = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/oslpay/test_public_key.pem"),
    )
    .expect("test key");
    let env: Vec<(String, String)> = [
        ("WHITEPAY__WEBHOOK_TOKEN", "test_webhook_token"),
        ("WCHECKOUT__SIGN_KEY", "test_sign_key"),
        ("CCPAYMENT__APP_ID", "202302010636261620672405236006912"),
        ("CCPAYMENT__APP_SECRET", "test_app_secret"),
        ("OSLPAY__APP_ID", "me114702259781634"),
        ("OSLPAY__PUBLIC_KEY", public_key.as_str()),
        ("STANDARD__SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        ("STANDARD__KIND_POINTER", "/kind"),
        ("STANDARD__STATUS_POINTER", "/status"),
    ]
    .iter()
    .map(|(k, v)| (format!("HOOKRELAY_SOURCES__{k}"), (*v).to_owned()))
    .collect();
    Config::load_from(None, &env).expect("config")
}

/// Header names every provider reads, plus noise.
const NAMES: &[&str] = &[
    "signature",
    "timestamp",
    "d-signature",
    "d-timestamp",
    "appid",
    "sign",
    "appId",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "content-type",
    "x-noise",
];

fn headers_strategy() -> impl Strategy<Value = Vec<(usize, Vec<u8>)>> {
    prop::collection::vec(
        (0..NAMES.len(), prop::collection::vec(any::<u8>(), 0..80)),
        0..8,
    )
}

fn body_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..2048),
        // JSON-looking bodies reach deeper into the parsers.
        "\\{\"(type|event_type|eventType|order|transaction|data|msg|pay_status|kind|status)\":(\"[a-zA-Z_:]{0,20}\"|\\{\\}|[0-9.e-]{1,30}|null)\\}"
            .prop_map(String::into_bytes),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_requests_never_panic_and_never_verify(
        headers in headers_strategy(),
        body in body_strategy(),
        now_s in 0i64..4_000_000_000,
    ) {
        let config = config();
        let mut map = HeaderMap::new();
        for (name, value) in &headers {
            if let Ok(value) = HeaderValue::from_bytes(value) {
                let name = HeaderName::from_bytes(NAMES[*name].as_bytes()).expect("valid name");
                map.append(name, value);
            }
        }
        let request = WebhookRequest {
            headers: &map,
            body: &body,
            now: OffsetDateTime::from_unix_timestamp(now_s).expect("time"),
        };
        for (name, source) in &config.sources {
            let spec = providers::find(&source.provider).expect("provider");
            let provider = (spec.build)(source).expect("build");
            prop_assert!(provider.verify(&request).is_err(), "{name} verified random input");
            match provider.parse(&request) {
                Parsed::Event(event) => prop_assert!(!event.idempotency_key.is_empty(), "{name}"),
                Parsed::Unrecognized { .. } => {}
            }
            let ack = provider.ack();
            prop_assert!(ack.status.is_success(), "{name}");
        }
    }

    /// Standard Webhooks signature headers of any number of entries, well formed
    /// or not, with a real id and a current timestamp: never a panic, never
    /// accepted, and more entries than the cap are refused as such.
    #[test]
    fn signature_headers_of_any_length_are_refused_within_the_cap(
        entries in prop::collection::vec(
            prop_oneof!["v1,[A-Za-z0-9+/=]{0,48}", "v1a,[A-Za-z0-9+/=]{0,8}", "[ -~]{0,12}"],
            0..40,
        ),
        body in body_strategy(),
    ) {
        let config = config();
        let source = &config.sources["standard"];
        let provider = (providers::find("standard").expect("standard").build)(source)
            .expect("build");
        let now = OffsetDateTime::now_utc();
        let signature = entries.join(" ");
        let mut map = HeaderMap::new();
        map.insert("webhook-id", HeaderValue::from_static("msg_fuzz"));
        map.insert(
            "webhook-timestamp",
            HeaderValue::from_str(&now.unix_timestamp().to_string()).expect("digits"),
        );
        if let Ok(value) = HeaderValue::from_str(&signature) {
            map.insert("webhook-signature", value);
        }
        let request = WebhookRequest { headers: &map, body: &body, now };
        let verdict = provider.verify(&request);
        prop_assert!(verdict.is_err());
        let counted = signature.split_ascii_whitespace().count();
        if counted > 16 && map.contains_key("webhook-signature") {
            prop_assert_eq!(verdict, Err(providers::VerifyError::TooManySignatures(16)));
        }
    }
}
