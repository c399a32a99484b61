//! The whole pipe against a real RabbitMQ and real SQLite files: signed webhook →
//! fsync'd outbox → ack → confirmed publish.

use std::collections::BTreeSet;
use std::time::Duration;

use lapin::types::AMQPValue;

use crate::support::*;

const QUIET: Duration = Duration::from_secs(2);
const ARRIVAL: Duration = Duration::from_secs(20);

fn header<'a>(delivery: &'a lapin::message::Delivery, name: &str) -> Option<&'a AMQPValue> {
    delivery.properties.headers().as_ref()?.inner().get(name)
}

fn header_text(delivery: &lapin::message::Delivery, name: &str) -> String {
    match header(delivery, name) {
        Some(AMQPValue::LongString(s)) => s.to_string(),
        other => panic!("header {name}: {other:?}"),
    }
}

async fn signed_whitepay_webhook_is_acked_and_published_once_byte_for_byte(backend: Backend) {
    let mut app = TestApp::spawn(backend, "pipe").await;
    let body = fixture("whitepay", "transaction_completed.json");
    assert!(
        body.windows(2).any(|w| w == b"\\/"),
        "fixture keeps PHP's \\/ escapes"
    );

    let (status, ack) = app.relay.post_whitepay(&body).await;
    assert_eq!(status, 200);
    assert!(ack.is_empty(), "Whitepay's ack is an empty body");

    let delivery = app.consumer.next(ARRIVAL).await.expect("one message");
    assert_eq!(
        delivery.routing_key.as_str(),
        "whitepay.transaction.succeeded"
    );
    let envelope: serde_json::Value = serde_json::from_slice(&delivery.data).expect("JSON");
    let props = &delivery.properties;
    assert_eq!(
        props.message_id().as_ref().map(|s| s.to_string()),
        envelope["id"].as_str().map(str::to_owned)
    );
    assert_eq!(*props.delivery_mode(), Some(2), "persistent");
    assert_eq!(
        props
            .content_type()
            .as_ref()
            .map(|s| s.to_string())
            .as_deref(),
        Some("application/cloudevents+json")
    );
    assert_eq!(
        props.kind().as_ref().map(|s| s.to_string()).as_deref(),
        Some("transaction.succeeded")
    );
    assert_eq!(header_text(&delivery, "provider"), "whitepay");
    assert_eq!(header_text(&delivery, "source"), "whitepay");
    assert!(header_text(&delivery, "traceparent").starts_with("00-"));
    assert_eq!(envelope["specversion"], "1.0");
    assert_eq!(envelope["type"], "transaction.succeeded");
    assert_eq!(envelope["subject"], "4176141e-bd97-4f13-a71a-6547a230cf4a");
    assert_eq!(envelope["time"], "2022-03-22T14:03:34Z");
    assert_eq!(envelope["data"]["amount"], "200");
    assert_eq!(envelope["data"]["currency"], "UAH");
    assert_eq!(envelope["data"]["merchant_order_id"], "INV-123");
    assert_eq!(
        raw_payload(&delivery.data).expect("payload").as_bytes(),
        &body[..],
        "data.payload is the request body, byte for byte"
    );
    assert!(
        String::from_utf8_lossy(&delivery.data)
            .contains("\"exchange_rate\":\"31.84713375796178343949\""),
        "long decimals stay text"
    );

    assert!(
        app.consumer.next(QUIET).await.is_none(),
        "exactly one message"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_whitepay_fixture_gets_its_routing_key() {
    let mut app = TestApp::spawn(Backend::Sqlite, "fixtures").await;
    let cases = [
        ("order_declined.json", "whitepay.order.failed"),
        (
            "transaction_completed.json",
            "whitepay.transaction.succeeded",
        ),
        ("withdrawal_declined.json", "whitepay.withdrawal.cancelled"),
        (
            "transaction_was_final_exchange.json",
            "whitepay.transaction.succeeded",
        ),
        ("rollback_to_client.json", "whitepay.refund.succeeded"),
    ];
    for (file, _) in cases {
        let (status, _) = app.relay.post_whitepay(&fixture("whitepay", file)).await;
        assert_eq!(status, 200, "{file}");
    }
    let got = app.consumer.collect(cases.len(), ARRIVAL).await;
    let mut keys: Vec<String> = got.iter().map(|d| d.routing_key.to_string()).collect();
    keys.sort();
    let mut expected: Vec<&str> = cases.iter().map(|(_, key)| *key).collect();
    expected.sort();
    assert_eq!(
        keys, expected,
        "every fixture published with its mapped key"
    );
    // The transaction and the withdrawal share a subject (Whitepay's example reuses the id):
    // they must arrive in the order they were received.
    let shared: Vec<String> = got
        .iter()
        .filter(|d| {
            let v: serde_json::Value = serde_json::from_slice(&d.data).expect("JSON");
            v["subject"] == "4176141e-bd97-4f13-a71a-6547a230cf4a"
        })
        .map(|d| d.routing_key.to_string())
        .collect();
    assert_eq!(
        shared,
        [
            "whitepay.transaction.succeeded",
            "whitepay.withdrawal.cancelled"
        ],
        "same-subject events keep received order"
    );
}

async fn unknown_source_bad_signature_and_oversize_are_refused_and_nothing_is_stored(
    backend: Backend,
) {
    let mut app = TestApp::build(backend, "refuse")
        .env("HOOKRELAY_MAX_BODY", "2KiB")
        .start()
        .await;
    let relay = &app.relay;
    let body = fixture("whitepay", "order_declined.json");
    let signature = whitepay_signature(WHITEPAY_TOKEN, &body);

    let (status, reply) = post(
        &relay.url("nosuch"),
        body.clone(),
        &[("Signature", signature.clone())],
    )
    .await;
    assert_eq!(status, 404);
    let reply: serde_json::Value = serde_json::from_slice(&reply).expect("JSON error");
    assert!(
        reply["error"]
            .as_str()
            .expect("error text")
            .contains("unknown source")
    );

    let wrong = whitepay_signature("not-the-token", &body);
    let (status, reply) = post(
        &relay.url("whitepay"),
        body.clone(),
        &[("Signature", wrong)],
    )
    .await;
    assert_eq!(status, 401);
    let reply: serde_json::Value = serde_json::from_slice(&reply).expect("JSON error");
    assert_eq!(reply["error"], "signature does not match the request body");

    let (status, _) = post(&relay.url("whitepay"), body.clone(), &[]).await;
    assert_eq!(status, 401, "missing signature");

    let large = whitepay_order(&"x".repeat(3000));
    let large_signature = whitepay_signature(WHITEPAY_TOKEN, &large);
    let (status, reply) = post(
        &relay.url("whitepay"),
        large,
        &[("Signature", large_signature)],
    )
    .await;
    assert_eq!(status, 413);
    let reply: serde_json::Value = serde_json::from_slice(&reply).expect("JSON error");
    assert!(
        reply["error"]
            .as_str()
            .expect("text")
            .contains("2048 bytes")
    );

    assert!(
        app.consumer.next(QUIET).await.is_none(),
        "nothing published"
    );
    assert_eq!(relay.outbox_count(None), 0, "nothing stored");
    let metrics = relay.metrics().await;
    for outcome in ["unknown_source", "unauthorized", "too_large"] {
        assert!(
            metrics.contains(&format!("outcome=\"{outcome}\"")),
            "{outcome} counted"
        );
    }
}

async fn the_same_webhook_sent_twice_is_published_once(backend: Backend) {
    let mut app = TestApp::spawn(backend, "dup").await;
    let body = fixture("whitepay", "order_declined.json");
    for _ in 0..2 {
        let (status, ack) = app.relay.post_whitepay(&body).await;
        assert_eq!(status, 200, "a duplicate gets the provider's ack too");
        assert!(ack.is_empty());
    }
    assert!(app.consumer.next(ARRIVAL).await.is_some());
    assert!(
        app.consumer.next(QUIET).await.is_none(),
        "the duplicate is not published"
    );
    assert_eq!(app.relay.outbox_count(None), 1, "nor stored twice");
    assert!(app.relay.metrics().await.contains("outcome=\"duplicate\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_no_binding_matches_lands_in_the_unrouted_queue() {
    // Only a binding that cannot match: whitepay events are not abnormal payments.
    let mut app = TestApp::build(Backend::Sqlite, "unrouted")
        .binding("*.abnormal_payment.*")
        .start()
        .await;
    let mut unrouted = Consumer::existing(&hookrelay::amqp::unrouted_name(&app.exchange)).await;
    let (status, _) = app
        .relay
        .post_whitepay(&fixture("whitepay", "order_declined.json"))
        .await;
    assert_eq!(status, 200);
    let delivery = unrouted
        .next(ARRIVAL)
        .await
        .expect("kept in the unrouted queue");
    assert_eq!(delivery.routing_key.as_str(), "whitepay.order.failed");
    assert!(app.consumer.next(QUIET).await.is_none());
    // Confirmed, so the row is done.
    let deadline = std::time::Instant::now() + ARRIVAL;
    while app.relay.outbox_count(Some("published")) != 1 {
        assert!(std::time::Instant::now() < deadline, "row marked published");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_from_an_authentic_sender_is_published_as_unrecognized() {
    let mut app = TestApp::spawn(Backend::Sqlite, "unrecognized").await;
    let body = b"{\"order\": truncated".to_vec();
    let (status, _) = app.relay.post_whitepay(&body).await;
    assert_eq!(status, 200, "authentic, so acked and kept");
    let delivery = app.consumer.next(ARRIVAL).await.expect("published");
    assert_eq!(delivery.routing_key.as_str(), "whitepay.unrecognized");
    let envelope: serde_json::Value = serde_json::from_slice(&delivery.data).expect("JSON");
    assert!(envelope["data"].get("payload").is_none());
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(envelope["data"]["raw_base64"].as_str().expect("raw_base64"))
        .expect("base64");
    assert_eq!(raw, body);
}

async fn acked_webhooks_survive_a_broker_outage(backend: Backend) {
    let mut app = TestApp::build(backend, "outage")
        .broker_behind_proxy()
        .start()
        .await;
    let relay = &app.relay;
    relay.wait_broker_connected().await;

    let mut acked = BTreeSet::new();
    for i in 0..10 {
        let id = format!("before-{i}");
        assert_eq!(relay.post_whitepay(&whitepay_order(&id)).await.0, 200);
        acked.insert(id);
    }
    app.proxy.cut();
    for i in 0..30 {
        let id = format!("during-{i}");
        let (status, _) = relay.post_whitepay(&whitepay_order(&id)).await;
        assert_eq!(
            status, 200,
            "webhooks are acked while the broker is unreachable"
        );
        acked.insert(id);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(relay.broker_node().await, None, "no node connected");
    assert_eq!(relay.readyz().await.1["broker"]["connected"], false);
    app.proxy.restore();
    for i in 0..10 {
        let id = format!("after-{i}");
        assert_eq!(relay.post_whitepay(&whitepay_order(&id)).await.0, 200);
        acked.insert(id);
    }

    let mut seen = BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while seen.len() < acked.len() && std::time::Instant::now() < deadline {
        if let Some(d) = app.consumer.next(Duration::from_secs(5)).await {
            let envelope: serde_json::Value = serde_json::from_slice(&d.data).expect("JSON");
            seen.insert(envelope["subject"].as_str().expect("subject").to_owned());
        }
    }
    let lost: Vec<_> = acked.difference(&seen).collect();
    assert!(lost.is_empty(), "acked but never published: {lost:?}");
}

async fn acked_webhooks_survive_kill_9_and_restart(backend: Backend) {
    // The broker is unreachable, so every acked webhook is still only in the outbox
    // when the process dies.
    let mut app = TestApp::build(backend, "kill").broker_cut().start().await;
    let n = 25;
    for i in 0..n {
        let (status, _) = app
            .relay
            .post_whitepay(&whitepay_order(&format!("k-{i}")))
            .await;
        assert_eq!(status, 200);
    }
    app.relay.kill9();
    assert_eq!(
        app.config.outbox_count(Some("pending")),
        n,
        "all acked rows on disk"
    );

    app.proxy.restore();
    app.relay = Relay::start(&app.config);
    let got = app.consumer.collect(n as usize, ARRIVAL).await;
    let subjects: BTreeSet<String> = got
        .iter()
        .map(|d| {
            let v: serde_json::Value = serde_json::from_slice(&d.data).expect("JSON");
            v["subject"].as_str().expect("subject").to_owned()
        })
        .collect();
    assert_eq!(
        subjects.len(),
        n as usize,
        "all {n} published after restart"
    );
}

async fn concurrent_webhooks_share_outbox_commits(backend: Backend) {
    let app = TestApp::build(backend, "group").no_consumer().start().await;
    let relay = &app.relay;
    let n = 300;
    let mut tasks = Vec::new();
    for i in 0..n {
        let url = relay.url("whitepay");
        tasks.push(tokio::spawn(async move {
            let body = whitepay_order(&format!("g-{i}"));
            let signature = whitepay_signature(WHITEPAY_TOKEN, &body);
            post(&url, body, &[("Signature", signature)]).await.0
        }));
    }
    for task in tasks {
        assert_eq!(task.await.expect("task"), 200);
    }
    let rows = relay.metric("hookrelay_outbox_commit_batch_size_sum").await;
    let commits = relay
        .metric("hookrelay_outbox_commit_batch_size_count")
        .await;
    assert_eq!(rows, f64::from(n), "every webhook counted once");
    assert!(
        commits < rows,
        "group commit: {rows} webhooks in {commits} commits should share some commits"
    );
}

async fn sigterm_drains_and_exits_zero(backend: Backend) {
    let mut app = TestApp::spawn(backend, "term").await;
    let (status, _) = app
        .relay
        .post_whitepay(&fixture("whitepay", "order_declined.json"))
        .await;
    assert_eq!(status, 200);
    assert!(app.consumer.next(ARRIVAL).await.is_some());
    let status = app.relay.terminate(Duration::from_secs(30));
    assert!(status.success(), "exit status {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_ips_refuse_other_clients_and_trust_forwarded_for_only_from_trusted_proxies() {
    let app = TestApp::build(Backend::Sqlite, "allowips")
        .no_consumer()
        .env("HOOKRELAY_SOURCES__WHITEPAY__ALLOW_IPS", "203.0.113.0/24")
        .env("HOOKRELAY_TRUSTED_PROXIES", "127.0.0.1/32")
        .start()
        .await;
    let relay = &app.relay;
    let body = fixture("whitepay", "order_declined.json");
    let signature = whitepay_signature(WHITEPAY_TOKEN, &body);

    let (status, reply) = post(
        &relay.url("whitepay"),
        body.clone(),
        &[("Signature", signature.clone())],
    )
    .await;
    assert_eq!(status, 403, "127.0.0.1 itself is not in allow_ips");
    let reply: serde_json::Value = serde_json::from_slice(&reply).expect("JSON error");
    assert!(
        reply["error"]
            .as_str()
            .expect("text")
            .contains("not allowed")
    );

    let forwarded = |xff: &str| {
        vec![
            ("Signature", signature.clone()),
            ("X-Forwarded-For", xff.to_owned()),
        ]
    };
    let (status, _) = post(
        &relay.url("whitepay"),
        body.clone(),
        &forwarded("198.51.100.7"),
    )
    .await;
    assert_eq!(status, 403, "a forwarded client outside allow_ips");
    let (status, _) = post(
        &relay.url("whitepay"),
        body.clone(),
        &forwarded("203.0.113.50"),
    )
    .await;
    assert_eq!(
        status, 200,
        "the trusted proxy's X-Forwarded-For names an allowed client"
    );
    assert_eq!(relay.outbox_count(None), 1);
    assert!(relay.metrics().await.contains("outcome=\"forbidden\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_without_its_secret_refuses_and_says_which_setting_is_missing() {
    let app = TestApp::build(Backend::Sqlite, "nosecret")
        .no_consumer()
        .without_whitepay_token()
        .start()
        .await;
    let relay = &app.relay;
    let body = fixture("whitepay", "order_declined.json");
    let (status, reply) = relay.post_whitepay(&body).await;
    assert_eq!(status, 401);
    let reply: serde_json::Value = serde_json::from_slice(&reply).expect("JSON error");
    assert!(
        reply["error"]
            .as_str()
            .expect("text")
            .contains("webhook_token"),
        "{reply}"
    );
    assert!(
        !String::from_utf8_lossy(&serde_json::to_vec(&reply).expect("json"))
            .contains(WHITEPAY_TOKEN),
        "no secret echoed"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !relay
        .logs()
        .iter()
        .any(|l| l.contains("HOOKRELAY_SOURCES__WHITEPAY__WEBHOOK_TOKEN"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "a log line names the setting to set"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(relay.outbox_count(None), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_relay_exports_every_labelled_counter_at_zero_and_process_metrics() {
    let app = TestApp::build(Backend::Sqlite, "freshmetrics")
        .no_consumer()
        .start()
        .await;
    let text = app.relay.metrics().await;
    for sample in [
        r#"hookrelay_publish_failures_total{reason="nack"} 0"#,
        r#"hookrelay_publish_failures_total{reason="timeout"} 0"#,
        r#"hookrelay_webhooks_received_total{outcome="unauthorized",provider="whitepay",source="whitepay"} 0"#,
        r#"hookrelay_webhooks_received_total{outcome="accepted",provider="whitepay",source="whitepay"} 0"#,
        r#"hookrelay_webhooks_received_total{outcome="unknown_source",provider="",source=""} 0"#,
        r#"hookrelay_outbox_commit_failures_total{reason="disk_full"} 0"#,
        // Per configured provider, so `sum(rate(...))` is 0 from the start, not
        // empty; the pair every provider can publish.
        r#"hookrelay_events_published_total{kind="unrecognized",provider="whitepay",status="unrecognized"} 0"#,
        concat!(
            r#"hookrelay_build_info{version=""#,
            env!("CARGO_PKG_VERSION"),
            r#""} 1"#
        ),
    ] {
        assert!(
            text.lines().any(|line| line == sample),
            "missing `{sample}` in:\n{text}"
        );
    }
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(
            text.lines().any(|line| line.starts_with(name)),
            "missing {name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_warns_about_an_unsigned_body_source_without_allow_ips() {
    let mut app = TestApp::build(Backend::Sqlite, "oslwarn").no_consumer();
    for (source, ips) in [("osl_open", None), ("osl_fenced", Some("203.0.113.0/24"))] {
        let upper = source.to_ascii_uppercase();
        app = app.env(format!("HOOKRELAY_SOURCES__{upper}__PROVIDER"), "oslpay");
        if let Some(ips) = ips {
            app = app.env(format!("HOOKRELAY_SOURCES__{upper}__ALLOW_IPS"), ips);
        }
    }
    let app = app.start().await;
    let warned: Vec<String> = app
        .relay
        .logs()
        .into_iter()
        .filter(|line| line.contains("does not sign the body"))
        .collect();
    assert_eq!(warned.len(), 1, "{warned:#?}");
    assert!(warned[0].contains("osl_open"), "{warned:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_source_timestamps_tell_received_from_accepted() {
    let app = TestApp::build(Backend::Sqlite, "sourcetimes")
        .no_consumer()
        .env("HOOKRELAY_SOURCES__WHITEPAY__SILENCE_THRESHOLD", "10m")
        .start()
        .await;
    let relay = &app.relay;
    let received = r#"hookrelay_source_last_received_timestamp_seconds{source="whitepay"}"#;
    let accepted = r#"hookrelay_source_last_accepted_timestamp_seconds{source="whitepay"}"#;
    let started = relay.metric(accepted).await;
    assert!(started > 1.0e9, "the start time until the first webhook");
    assert_eq!(
        relay
            .metric(r#"hookrelay_source_silence_threshold_seconds{source="whitepay"}"#)
            .await,
        600.0
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (status, _) = post(
        &relay.url("whitepay"),
        whitepay_order("times-1"),
        &[("Signature", "00".repeat(32))],
    )
    .await;
    assert_eq!(status, 401);
    let refused_at = relay.metric(received).await;
    assert!(refused_at > started, "a refused request counts as received");
    assert_eq!(relay.metric(accepted).await, started, "but not as accepted");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(relay.post_whitepay(&whitepay_order("times-1")).await.0, 200);
    assert!(relay.metric(accepted).await > refused_at);
}

/// Past `HOOKRELAY_OUTBOX_MAX_PENDING` unpublished rows a long outage ends in 503s
/// the provider retries, not in a full disk; room comes back as rows are published.
async fn a_full_outbox_answers_503_until_the_broker_drains_it(backend: Backend) {
    let mut app = TestApp::build(backend, "maxpending")
        .broker_cut()
        .env("HOOKRELAY_OUTBOX_MAX_PENDING", "20")
        .start()
        .await;
    let relay = &app.relay;
    assert_eq!(relay.metric("hookrelay_outbox_max_pending").await, 20.0);
    for i in 0..20 {
        assert_eq!(
            relay
                .post_whitepay(&whitepay_order(&format!("room-{i}")))
                .await
                .0,
            200
        );
    }
    // The count is taken once a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, reply) = relay.post_whitepay(&whitepay_order("no-room")).await;
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&reply));
    let reply: serde_json::Value = serde_json::from_slice(&reply).expect("JSON error");
    assert!(
        reply["error"]
            .as_str()
            .is_some_and(|e| e.contains("full") && e.contains("not stored")),
        "{reply}"
    );
    assert_eq!(
        relay.outbox_count(None),
        20,
        "nothing stored past the limit"
    );
    app.proxy.restore();
    assert_eq!(app.consumer.collect(20, ARRIVAL).await.len(), 20);
    let deadline = std::time::Instant::now() + ARRIVAL;
    while relay.post_whitepay(&whitepay_order("no-room")).await.0 != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "room again once published"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        relay
            .metric(r#"hookrelay_webhooks_received_total{outcome="unavailable",provider="whitepay",source="whitepay"}"#)
            .await
            >= 1.0
    );
}

crate::on_both_backends!(
    a_full_outbox_answers_503_until_the_broker_drains_it,
    signed_whitepay_webhook_is_acked_and_published_once_byte_for_byte,
    unknown_source_bad_signature_and_oversize_are_refused_and_nothing_is_stored,
    the_same_webhook_sent_twice_is_published_once,
    acked_webhooks_survive_a_broker_outage,
    acked_webhooks_survive_kill_9_and_restart,
    concurrent_webhooks_share_outbox_commits,
    sigterm_drains_and_exits_zero,
);
