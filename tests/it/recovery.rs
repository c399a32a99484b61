//! Recovery from providers (`docs/recovery.md`) against a fake CCPayment of the
//! test's own (`support/ccpayment.rs`): gaps when no relay was up or a source was
//! refused, resends split, paced and made once across replicas, stuck subjects
//! asked about once and deduplicated against the late webhook, answers that are
//! not trusted, and a dry run that asks nothing.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use crate::support::*;

const SECRET: &str = "cc_recovery_secret";
const ROTATED: &str = "cc_recovery_secret_rotated";

/// A CCPayment source `cc` whose API is `fake`.
fn cc_source(fake: &FakeCcpayment, secret: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = vec![
        ("PROVIDER", "ccpayment"),
        ("APP_ID", CC_APP_ID),
        ("APP_SECRET", secret),
        ("API_VERSION", "v2"),
        ("API_URL", fake.url.as_str()),
        ("RECOVER_AFTER", "5s"),
    ];
    env.extend_from_slice(extra);
    env.into_iter()
        .map(|(k, v)| (format!("HOOKRELAY_SOURCES__CC__{k}"), v.to_owned()))
        .collect()
}

/// `hookrelay recover ARGS --json` on `config`'s outbox and sources.
fn recover(config: &RelayConfig, args: &[&str]) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_hookrelay"))
        .arg("recover")
        .args(args)
        .arg("--json")
        .env_clear()
        .env("HOOKRELAY_OUTBOX_URL", config.outbox_url())
        .envs(config.env.iter().cloned())
        .output()
        .expect("run hookrelay recover");
    assert!(
        output.status.success(),
        "recover {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("--json prints JSON")
}

/// The record id and `recovered` flag of each delivered CCPayment event.
fn records(deliveries: &[lapin::message::Delivery]) -> Vec<(String, String, bool)> {
    deliveries
        .iter()
        .map(|d| {
            let event: serde_json::Value = serde_json::from_slice(&d.data).expect("JSON");
            let header = d
                .properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get("recovered").cloned());
            let flagged = event["recovered"] == true;
            assert_eq!(
                flagged,
                header == Some(lapin::types::AMQPValue::Boolean(true)),
                "the attribute and the header agree"
            );
            (
                event["subject"].as_str().unwrap_or("").to_owned(),
                event["data"]["status"].as_str().unwrap_or("").to_owned(),
                flagged,
            )
        })
        .collect()
}

fn count_by_subject(records: &[(String, String, bool)]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (subject, _, _) in records {
        *counts.entry(subject.clone()).or_default() += 1;
    }
    counts
}

fn unix_micros() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_micros(),
    )
    .expect("micros")
}

async fn a_relay_down_longer_than_recover_after_has_the_missed_webhooks_resent_once(
    backend: Backend,
) {
    let fake = FakeCcpayment::start(SECRET).await;
    let mut app = TestApp::build(backend, "recovery_down")
        .binding("ccpayment.#")
        .envs(cc_source(&fake, SECRET, &[]))
        .env("HOOKRELAY_LISTEN", format!("127.0.0.1:{}", free_port()))
        .start()
        .await;
    fake.deliver_to(&app.relay.url("cc"));
    for n in 1..=3 {
        let status = fake.send(cc_deposit(&format!("before-{n}"), "Success")).await;
        assert_eq!(status, Some(200));
    }
    app.relay.kill9();
    for n in 1..=3 {
        let status = fake.send(cc_deposit(&format!("down-{n}"), "Success")).await;
        assert_eq!(status, None, "nothing listens while the relay is down");
    }
    // Longer than three beats: no relay was up.
    tokio::time::sleep(Duration::from_secs(17)).await;
    // The relay listens on the port it had: the provider keeps its URL.
    app.relay = Relay::start(&app.config);
    wait_until("the missed webhooks are resent and acked", Duration::from_secs(30), async || {
        fake.sent().iter().all(|sent| sent.delivered)
    })
    .await;
    let delivered = records(&app.consumer.collect(7, Duration::from_secs(3)).await);
    let counts = count_by_subject(&delivered);
    for n in 1..=3 {
        assert_eq!(counts.get(&format!("down-{n}")), Some(&1), "{delivered:?}");
        assert!(counts.contains_key(&format!("before-{n}")), "{delivered:?}");
    }
    assert!(delivered.iter().all(|(_, _, recovered)| !recovered), "resent webhooks are webhooks");
    let resends = fake.resends();
    assert_eq!(resends.len(), 1, "{resends:?}");
    assert_eq!(resends[0].code, 10000);
    let report = recover(&app.config, &["--source", "cc", "--dry-run"]);
    assert_eq!(report["gaps"], serde_json::json!([]), "nothing is left to ask for: {report}");
    let recovered = app
        .relay
        .metric(r#"hookrelay_recovery_gaps_total{outcome="recovered",source="cc"}"#)
        .await;
    assert_eq!(recovered, 1.0);
}

async fn a_refused_window_after_a_secret_rotation_is_recovered_once_the_new_secret_is_set(
    backend: Backend,
) {
    let fake = FakeCcpayment::start(SECRET).await;
    let mut app = TestApp::build(backend, "recovery_refused")
        .binding("ccpayment.#")
        .envs(cc_source(&fake, SECRET, &[]))
        .env("HOOKRELAY_LISTEN", format!("127.0.0.1:{}", free_port()))
        .start()
        .await;
    fake.deliver_to(&app.relay.url("cc"));
    assert_eq!(fake.send(cc_deposit("kept-1", "Success")).await, Some(200));
    fake.rotate_secret(ROTATED);
    for n in 1..=2 {
        let status = fake.send(cc_deposit(&format!("rotated-{n}"), "Success")).await;
        assert_eq!(status, Some(401), "signed with a secret the relay does not know");
    }
    // The operator sets the new secret and restarts the relay: its last beat
    // records the refusals.
    assert!(app.relay.terminate(Duration::from_secs(30)).success());
    for (key, value) in &mut app.config.env {
        if key == "HOOKRELAY_SOURCES__CC__APP_SECRET" {
            *value = ROTATED.to_owned();
        }
    }
    app.relay = Relay::start(&app.config);
    // The first webhook the relay acks again closes the refusal window.
    assert_eq!(fake.send(cc_deposit("after-1", "Success")).await, Some(200));
    wait_until("the refused webhooks are resent and acked", Duration::from_secs(30), async || {
        fake.sent().iter().all(|sent| sent.delivered)
    })
    .await;
    let delivered = records(&app.consumer.collect(5, Duration::from_secs(3)).await);
    let counts = count_by_subject(&delivered);
    assert_eq!(counts.get("rotated-1"), Some(&1), "{delivered:?}");
    assert_eq!(counts.get("rotated-2"), Some(&1), "{delivered:?}");
    assert_eq!(fake.resends().len(), 1, "{:?}", fake.resends());
}

crate::on_both_backends!(
    a_relay_down_longer_than_recover_after_has_the_missed_webhooks_resent_once,
    a_refused_window_after_a_secret_rotation_is_recovered_once_the_new_secret_is_set,
);
