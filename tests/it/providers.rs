//! Every provider's fixtures through a running relay: each fixture is signed the way
//! the provider signs it, posted, and the message read back from a real RabbitMQ
//! queue bound with `#` is checked against `tests/fixtures/{provider}/expected.json`.
//!
//! `expected.json` maps a fixture file name to what its published event must show:
//! - `routing_key`: the delivery's routing key;
//! - `subject`, `time`, `type`: the CloudEvents attributes (JSON null = absent);
//! - `payload`: `"verbatim"` (default; `data.payload` is the body byte for byte),
//!   `"raw_base64"` (unrecognized: `data.raw_base64` decodes to the body), or
//!   `"redacted"` (`data.payload` differs from the body only where `"[redacted]"` stands);
//! - any other key: compared with `data.<key>` (e.g. `amount`, `currency`, `order_id`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use base64::Engine;
use hookrelay::config::Config;
use hookrelay::providers::{self, SampleContext};
use serde_json::Value;

use crate::support::*;

/// Test credentials: clearly fake, used only against the local relay.
fn credentials(provider: &str) -> Vec<(String, String)> {
    let key = |k: &str| format!("HOOKRELAY_SOURCES__{}__{k}", provider.to_ascii_uppercase());
    let pairs: Vec<(&str, String)> = match provider {
        "whitepay" => vec![("WEBHOOK_TOKEN", WHITEPAY_TOKEN.to_owned())],
        "wcheckout" => vec![("SIGN_KEY", "test_sign_key".to_owned())],
        "ccpayment" => vec![
            ("APP_ID", "202302010636261620672405236006912".to_owned()),
            ("APP_SECRET", "test_app_secret".to_owned()),
        ],
        "oslpay" => vec![
            ("APP_ID", "me114702259781634".to_owned()),
            (
                "PUBLIC_KEY",
                String::from_utf8(fixture("oslpay", "test_public_key.pem")).expect("PEM"),
            ),
        ],
        "standard" => vec![
            (
                "SECRET",
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned(),
            ),
            ("KIND_POINTER", "/kind".to_owned()),
            ("STATUS_POINTER", "/data/status".to_owned()),
            ("SUBJECT_POINTER", "/data/id".to_owned()),
            ("AMOUNT_POINTER", "/data/amount".to_owned()),
            ("CURRENCY_POINTER", "/data/currency".to_owned()),
            ("EVENT_TYPE_POINTER", "/type".to_owned()),
            (
                "STATUS_MAP",
                "paid=succeeded,open=pending,failed=failed,refunded=refunded".to_owned(),
            ),
        ],
        other => panic!("no test credentials for {other}"),
    };
    pairs.into_iter().map(|(k, v)| (key(k), v)).collect()
}

fn data_field<'a>(envelope: &'a Value, key: &str) -> &'a Value {
    match key {
        "subject" | "time" | "type" | "id" | "source" => envelope.get(key).unwrap_or(&Value::Null),
        _ => envelope["data"].get(key).unwrap_or(&Value::Null),
    }
}

async fn run_fixtures(provider: &str) {
    let env = credentials(provider);
    let mut app = TestApp::build(Backend::Sqlite, provider)
        .without_whitepay_token()
        .envs(env.clone())
        .start()
        .await;
    let (relay, consumer) = (&app.relay, &mut app.consumer);

    let source_config = Config::load_from(None, &env).expect("test config");
    let source = &source_config.sources[provider];
    let spec = providers::find(provider).expect("registered provider");
    let private_key = (provider == "oslpay")
        .then(|| String::from_utf8(fixture("oslpay", "test_private_key.pem")).expect("PEM"));

    let folder = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(provider);
    let expected: BTreeMap<String, serde_json::Map<String, Value>> =
        serde_json::from_slice(&fixture(provider, "expected.json")).expect("expected.json");
    let mut files: Vec<String> = std::fs::read_dir(&folder)
        .expect("fixture folder")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".json") && name != "expected.json")
        .collect();
    files.sort();
    let listed: Vec<&String> = expected.keys().collect();
    let mut on_disk: Vec<&String> = files.iter().collect();
    on_disk.sort();
    assert_eq!(
        listed, on_disk,
        "every fixture has an expectation and vice versa"
    );

    for file in &files {
        let body = fixture(provider, file);
        let ctx = SampleContext {
            source,
            now: time::OffsetDateTime::now_utc(),
            unique: file.trim_end_matches(".json"),
            private_key_pem: private_key.as_deref(),
        };
        let headers = (spec.sign)(&ctx, &body).expect("sign fixture");
        let headers: Vec<(&str, String)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        let (status, reply) = post(&relay.url(provider), body.clone(), &headers).await;
        assert!(
            (200..300).contains(&status),
            "{provider}/{file}: status {status}, reply {}",
            String::from_utf8_lossy(&reply)
        );

        let delivery = consumer
            .next(Duration::from_secs(20))
            .await
            .unwrap_or_else(|| panic!("{provider}/{file}: no message published"));
        let envelope: Value = serde_json::from_slice(&delivery.data).expect("envelope JSON");
        let want = &expected[file];
        let mut mismatches = Vec::new();
        for (key, value) in want {
            match key.as_str() {
                "routing_key" => {
                    if delivery.routing_key.as_str() != value.as_str().unwrap_or_default() {
                        mismatches.push(format!(
                            "routing_key: got {}, want {value}",
                            delivery.routing_key
                        ));
                    }
                }
                "payload" => {}
                _ => {
                    let got = data_field(&envelope, key);
                    if got != value {
                        mismatches.push(format!("{key}: got {got}, want {value}"));
                    }
                }
            }
        }
        match want
            .get("payload")
            .and_then(Value::as_str)
            .unwrap_or("verbatim")
        {
            "verbatim" => {
                if raw_payload(&delivery.data).as_deref().map(str::as_bytes) != Some(&body[..]) {
                    mismatches.push("data.payload is not the body byte for byte".to_owned());
                }
            }
            "raw_base64" => {
                let raw = envelope["data"]["raw_base64"].as_str().unwrap_or_default();
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(raw)
                    .unwrap_or_default();
                if decoded != body {
                    mismatches.push("data.raw_base64 does not decode to the body".to_owned());
                }
            }
            "redacted" => {
                let payload = raw_payload(&delivery.data).unwrap_or_default();
                if !payload.contains("\"[redacted]\"") || payload.as_bytes() == &body[..] {
                    mismatches.push(format!("data.payload is not redacted: {payload}"));
                }
            }
            other => mismatches.push(format!("unknown payload expectation {other}")),
        }
        assert!(
            mismatches.is_empty(),
            "{provider}/{file}:\n  {}\nenvelope: {envelope:#}",
            mismatches.join("\n  ")
        );
    }
    assert!(
        consumer.next(Duration::from_millis(500)).await.is_none(),
        "no extra messages"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whitepay_fixtures_route_and_normalize() {
    run_fixtures("whitepay").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wcheckout_fixtures_route_and_normalize() {
    run_fixtures("wcheckout").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ccpayment_fixtures_route_and_normalize() {
    run_fixtures("ccpayment").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oslpay_fixtures_route_and_normalize() {
    run_fixtures("oslpay").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_fixtures_route_and_normalize() {
    run_fixtures("standard").await;
}

/// `hookrelay sample PROVIDER` against a running relay: accepted, and published.
async fn sample_command(provider: &str) {
    let env = credentials(provider);
    let mut app = TestApp::build(Backend::Sqlite, &format!("sample-{provider}"))
        .without_whitepay_token()
        .envs(env.clone())
        .start()
        .await;

    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_hookrelay"));
    command
        .args([
            "sample",
            provider,
            "--url",
            &format!("http://{}", app.relay.ingress),
        ])
        .env_clear()
        .envs(env);
    if provider == "oslpay" {
        let key = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/oslpay/test_private_key.pem");
        command.arg("--private-key").arg(key);
    }
    let output = command.output().expect("run hookrelay sample");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{provider}: sample failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains(&format!("/webhooks/{provider}")),
        "{stdout}"
    );
    let delivery = app
        .consumer
        .next(Duration::from_secs(20))
        .await
        .unwrap_or_else(|| panic!("{provider}: sample not published"));
    assert!(
        delivery
            .routing_key
            .as_str()
            .starts_with(&format!("{provider}.")),
        "{}",
        delivery.routing_key
    );
    assert!(
        !delivery.routing_key.as_str().ends_with(".unrecognized"),
        "{provider}: the sample must be a recognized event, got {}",
        delivery.routing_key
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_command_posts_accepted_webhooks_for_every_provider() {
    for spec in providers::REGISTRY {
        sample_command(spec.name).await;
    }
}

/// OSL Pay signs its app id and a timestamp, not the body: within the timestamp's
/// window its `signature` header authenticates any body, so it is a credential,
/// never stored nor shown. Whitepay's `Signature` is a MAC of its own body (it
/// authenticates nothing else) and is kept for the audit trail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oslpay_signature_is_neither_stored_nor_shown_but_a_body_mac_is() {
    let env = credentials("oslpay");
    let app = TestApp::build(Backend::Sqlite, "credheaders")
        .no_consumer()
        .envs(env.clone())
        .start()
        .await;
    let relay = &app.relay;

    let config = Config::load_from(None, &env).expect("test config");
    let private_key = String::from_utf8(fixture("oslpay", "test_private_key.pem")).expect("PEM");
    let ctx = SampleContext {
        source: &config.sources["oslpay"],
        now: time::OffsetDateTime::now_utc(),
        unique: "cred-1",
        private_key_pem: Some(&private_key),
    };
    let body = fixture("oslpay", "order_completed.json");
    let signed = (providers::find("oslpay").expect("oslpay").sign)(&ctx, &body).expect("sign");
    let osl_signature = signed
        .iter()
        .find(|(name, _)| name == "signature")
        .map(|(_, value)| value.clone())
        .expect("OSL sends a signature header");
    let headers: Vec<(&str, String)> = signed
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    assert_eq!(post(&relay.url("oslpay"), body, &headers).await.0, 200);
    let order = whitepay_order("cred-2");
    assert_eq!(relay.post_whitepay(&order).await.0, 200);
    let whitepay_mac = whitepay_signature(WHITEPAY_TOKEN, &order);

    let admin = crate::support::admin::Admin::of(relay);
    let rows = relay.outbox_command(&["list"]);
    let rows = rows.as_array().expect("list prints an array");
    assert_eq!(rows.len(), 2);
    for row in rows {
        let id = row["id"].to_string();
        let views = [
            ("outbox show", relay.outbox_command(&["show", &id])),
            (
                "outbox show --raw",
                relay.outbox_command(&["show", &id, "--raw"]),
            ),
            (
                "the admin API",
                admin.get(&format!("/api/v1/events/{id}")).await.json(),
            ),
        ];
        for (view, shown) in views {
            let headers = &shown["headers"];
            match row["source"].as_str() {
                Some("oslpay") => {
                    assert_eq!(headers["signature"], "[redacted]", "{view}: {headers}");
                    assert_eq!(headers["appid"], "me114702259781634", "{view}: {headers}");
                    assert!(headers["timestamp"].is_string(), "{view}: {headers}");
                    assert!(
                        !shown.to_string().contains(&osl_signature),
                        "{view} shows OSL's signature: {shown}"
                    );
                }
                Some("whitepay") => {
                    assert_eq!(
                        headers["signature"],
                        whitepay_mac.as_str(),
                        "{view}: {headers}"
                    );
                }
                other => panic!("unexpected source {other:?}"),
            }
        }
    }
}
