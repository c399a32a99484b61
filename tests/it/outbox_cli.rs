//! `hookrelay outbox stats | list | show | replay | purge` against the same outbox
//! while `serve` runs, and the dead-letter path: a message the broker refuses as too
//! large becomes `dead` after a bounded number of attempts, and `replay --dead`
//! publishes it again with the same message id once the broker accepts it.

use std::time::{Duration, Instant};

use hookrelay::testing::{Seed, SeedState};

use crate::support::*;

/// RabbitMQ's `max_message_size` lowered to 64 KiB for as long as the guard
/// lives; `None` (a skip) only where `rabbitmqctl` cannot run, never in CI.
async fn lowered_max_message_size() -> Option<BrokerMaxMessageSize> {
    let limit = BrokerMaxMessageSize::set(64 * 1024).await;
    assert!(
        limit.is_some() || std::env::var_os("CI").is_none(),
        "CI must be able to run rabbitmqctl"
    );
    limit
}

/// Waits until `done`, for up to 90 s: retries back off from 1 s, doubling, and
/// oversized rows that share a batch fail for good one per batch (the broker's
/// refusal closes the channel and quotes one size), so two of them can take five
/// retries, about 30 s, to go dead.
async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A relay whose broker is cut, with three rows pending: the fixture
/// `order_declined.json`, then the orders `cli-1` and `cli-2`.
async fn three_pending_rows(backend: Backend) -> TestApp {
    let app = TestApp::build(backend, "outboxcli")
        .broker_cut()
        .start()
        .await;
    for i in 0..3 {
        let body = if i == 0 {
            fixture("whitepay", "order_declined.json")
        } else {
            whitepay_order(&format!("cli-{i}"))
        };
        assert_eq!(app.relay.post_whitepay(&body).await.0, 200);
    }
    app
}

/// The id of the first row received (the fixture), as `list` shows it.
fn first_id(relay: &Relay) -> String {
    let listed = relay.outbox_command(&["list", "--state", "pending"]);
    let rows = listed.as_array().expect("array");
    assert_eq!(rows.len(), 3);
    rows[2]["id"].as_i64().expect("id").to_string()
}

/// Lets the broker in and waits until the three rows are published; returns the
/// deliveries.
async fn publish_the_three(app: &mut TestApp) -> Vec<lapin::message::Delivery> {
    app.proxy.restore();
    let first = app.consumer.collect(3, Duration::from_secs(20)).await;
    assert_eq!(first.len(), 3);
    wait_for("rows published", || {
        app.relay.outbox_count(Some("published")) == 3
    })
    .await;
    first
}

async fn outbox_stats_list_and_show_read_the_outbox_of_a_running_relay(backend: Backend) {
    let app = three_pending_rows(backend).await;
    let relay = &app.relay;
    let stats = relay.outbox_command(&["stats"]);
    assert_eq!(stats["pending"], 3);
    assert_eq!(stats["published"], 0);
    assert!(stats["size_bytes"].as_u64().expect("size") > 0);
    let shown = relay.outbox_command(&["show", &first_id(relay)]);
    assert_eq!(
        shown["body"].as_str().expect("body").as_bytes(),
        &fixture("whitepay", "order_declined.json")[..],
        "raw body as received"
    );
    assert!(
        shown["headers"]["signature"].is_string(),
        "audit headers kept"
    );
    assert_eq!(shown["routing_key"], "whitepay.order.failed");
}

async fn outbox_replay_of_a_row_publishes_it_again_with_the_same_message_id(backend: Backend) {
    let mut app = three_pending_rows(backend).await;
    let first_id = first_id(&app.relay);
    let first = publish_the_three(&mut app).await;
    let original_id = first
        .iter()
        .find(|d| d.routing_key.as_str() == "whitepay.order.failed")
        .and_then(|d| d.properties.message_id().clone())
        .expect("message id");

    let replayed = app.relay.outbox_command(&["replay", &first_id]);
    assert_eq!(replayed["replayed"], 1);
    let again = app
        .consumer
        .next(Duration::from_secs(20))
        .await
        .expect("published again");
    assert_eq!(
        again.properties.message_id().clone(),
        Some(original_id),
        "same message id"
    );
    wait_for("replayed row published", || {
        app.relay.outbox_count(Some("published")) == 3
    })
    .await;
}

/// The admin API's filters, on the command line: a dry run counts and changes
/// nothing.
async fn outbox_list_filters_and_a_replay_dry_run_counts_without_changing_anything(
    backend: Backend,
) {
    let mut app = three_pending_rows(backend).await;
    publish_the_three(&mut app).await;
    let relay = &app.relay;
    let subject = relay.outbox_command(&["list", "--subject", "cli-2"]);
    assert_eq!(subject.as_array().map(Vec::len), Some(1));
    let searched = relay.outbox_command(&["list", "--search", "m-cli-1", "--kind", "order"]);
    assert_eq!(searched[0]["subject"], "cli-1");
    let counted = relay.outbox_command(&["replay", "--status", "succeeded", "--dry-run"]);
    assert_eq!(counted["matched"], 2);
    assert_eq!(
        relay.outbox_count(Some("published")),
        3,
        "a dry run changes nothing"
    );
}

/// By receive time: every row of the last hour goes out again.
async fn outbox_replay_since_publishes_every_row_received_since_then_again(backend: Backend) {
    let mut app = three_pending_rows(backend).await;
    publish_the_three(&mut app).await;
    let replayed = app.relay.outbox_command(&["replay", "--since", "1h"]);
    assert_eq!(replayed["replayed"], 3);
    assert_eq!(
        app.consumer.collect(3, Duration::from_secs(20)).await.len(),
        3
    );
    wait_for("rows replayed by time published", || {
        app.relay.outbox_count(Some("published")) == 3
    })
    .await;
}

/// Retention's manual form: published rows go, pending ones stay.
async fn outbox_purge_removes_published_rows_and_keeps_pending_ones(backend: Backend) {
    let mut app = three_pending_rows(backend).await;
    publish_the_three(&mut app).await;
    app.proxy.cut();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let relay = &app.relay;
    assert_eq!(
        relay.post_whitepay(&whitepay_order("cli-pending")).await.0,
        200
    );
    let purged = relay.outbox_command(&["purge", "--published-before", "0s"]);
    assert_eq!(purged["purged"], 3);
    let stats = relay.outbox_command(&["stats"]);
    assert_eq!(
        (stats["published"].as_u64(), stats["pending"].as_u64()),
        (Some(0), Some(1))
    );
}

async fn a_message_the_broker_refuses_as_too_large_goes_dead_and_replays_with_the_same_id(
    backend: Backend,
) {
    let Some(limit) = lowered_max_message_size().await else {
        return;
    };
    let mut app = TestApp::spawn(backend, "dead").await;
    let relay = &app.relay;
    relay.wait_broker_connected().await;
    let big = whitepay_order(&format!("big-{}", "x".repeat(100 * 1024)));
    assert_eq!(
        relay.post_whitepay(&big).await.0,
        200,
        "acked: it is on disk"
    );
    let small = whitepay_order("small-1");
    assert_eq!(relay.post_whitepay(&small).await.0, 200);

    wait_for("the oversized row to go dead", || {
        relay.outbox_count(Some("dead")) == 1
    })
    .await;
    let dead = relay.outbox_command(&["list", "--state", "dead"]);
    let row = &dead.as_array().expect("array")[0];
    assert_eq!(
        row["attempts"],
        hookrelay::publisher::MAX_PERMANENT_ATTEMPTS
    );
    assert!(
        row["last_error"]
            .as_str()
            .expect("error")
            .contains("larger than"),
        "{row}"
    );
    // The small one, in the same batches, still went through.
    let delivered = app
        .consumer
        .next(Duration::from_secs(20))
        .await
        .expect("small published");
    let envelope: serde_json::Value = serde_json::from_slice(&delivered.data).expect("JSON");
    assert_eq!(envelope["subject"], "small-1");
    // The gauges are the latest count, at most a second old.
    wait_until(
        "the dead gauge shows it",
        Duration::from_secs(5),
        async || {
            app.relay
                .metrics()
                .await
                .contains("hookrelay_outbox_events{state=\"dead\"} 1")
        },
    )
    .await;

    drop(limit);
    // Another test may lower the limit again as soon as this one lets go: wait
    // until the broker takes large messages, and keep it so while replaying.
    let _unlimited = BrokerMaxMessageSize::unchanged().await;
    let replayed = app.relay.outbox_command(&["replay", "--dead"]);
    assert_eq!(replayed["replayed"], 1);
    let delivery = app
        .consumer
        .next(Duration::from_secs(30))
        .await
        .expect("published after replay");
    let envelope: serde_json::Value = serde_json::from_slice(&delivery.data).expect("JSON");
    assert_eq!(
        raw_payload(&delivery.data).expect("payload").as_bytes(),
        &big[..]
    );
    assert_eq!(
        delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.to_string()),
        envelope["id"].as_str().map(str::to_owned)
    );
}

/// Runs the binary with only `env`; returns its exit success and stderr.
fn hookrelay(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_hookrelay"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("run hookrelay");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_binary_names_each_cause_of_an_error_once() {
    // Nothing listens on port 1: the driver's error and its cause, once each, and
    // never the password.
    let (ok, stderr) = hookrelay(
        &["outbox", "stats"],
        &[(
            "HOOKRELAY_OUTBOX_URL",
            "postgres://relay:s3cret@127.0.0.1:1/outbox",
        )],
    );
    assert!(!ok);
    assert_eq!(stderr.matches("Connection refused").count(), 1, "{stderr}");
    assert_eq!(stderr.matches("cannot reach").count(), 1, "{stderr}");
    assert!(!stderr.contains("s3cret"), "{stderr}");
    let (ok, stderr) = hookrelay(&["sample", "wcheckout", "--url", "http://127.0.0.1:9"], &[]);
    assert!(!ok);
    assert_eq!(stderr.matches("no `sign_key`").count(), 1, "{stderr}");
    let (ok, stderr) = hookrelay(
        &["check-config"],
        &[("HOOKRELAY_CONFIG", "/nonexistent.toml")],
    );
    assert!(!ok);
    assert_eq!(stderr.matches("No such file").count(), 1, "{stderr}");
}

async fn outbox_show_redacts_like_the_published_message_unless_asked_for_raw(backend: Backend) {
    let app = TestApp::build(backend, "showredact")
        .no_consumer()
        .redact_whitepay("order.external_order_id")
        .start()
        .await;
    let relay = &app.relay;
    assert_eq!(relay.post_whitepay(&whitepay_order("r-1")).await.0, 200);
    let id = relay.outbox_command(&["list"])[0]["id"].to_string();

    let shown = relay.outbox_command(&["show", &id]);
    let body = shown["body"].as_str().expect("body text");
    assert!(
        body.contains(r#""external_order_id":"[redacted]""#),
        "{body}"
    );
    assert!(!body.contains("m-r-1"), "{body}");
    let raw = relay.outbox_command(&["show", &id, "--raw"]);
    assert_eq!(
        raw["body"].as_str().expect("body text").as_bytes(),
        whitepay_order("r-1"),
        "the outbox keeps the body as received"
    );
}

#[test]
fn outbox_commands_on_a_wrong_path_say_so_and_create_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("typo").join("outbox.db");
    let url = format!("sqlite://{}", path.display());
    let (ok, stderr) = hookrelay(&["outbox", "stats"], &[("HOOKRELAY_OUTBOX_URL", &url)]);
    assert!(!ok);
    assert!(stderr.contains("there is no outbox at"), "{stderr}");
    assert!(!path.exists(), "no empty outbox was created");
    assert!(!dir.path().join("typo").exists(), "no folder either");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_serve_on_the_same_sqlite_outbox_refuses_to_start() {
    let app = TestApp::build(Backend::Sqlite, "secondserve")
        .no_consumer()
        .start()
        .await;
    let url = format!("sqlite://{}", app.config.outbox.display());
    let (ok, stderr) = hookrelay(
        &["serve"],
        &[
            ("HOOKRELAY_OUTBOX_URL", &url),
            ("HOOKRELAY_LISTEN", "127.0.0.1:0"),
            ("HOOKRELAY_ADMIN_LISTEN", "127.0.0.1:0"),
        ],
    );
    assert!(!ok, "the second serve exits non-zero");
    assert!(
        stderr.contains("another `hookrelay serve` is using the outbox"),
        "{stderr}"
    );
    assert_eq!(
        app.relay.post_whitepay(&whitepay_order("still-1")).await.0,
        200
    );
    drop(app.relay);
    // The lock goes with the process that held it.
    let again = Relay::start(&app.config);
    assert_eq!(again.post_whitepay(&whitepay_order("still-2")).await.0, 200);
}

/// A Whitepay order event whose body is padded past the broker's lowered limit.
fn oversized_order(id: &str) -> Vec<u8> {
    let body = String::from_utf8(whitepay_order(id)).expect("text");
    let padding = "x".repeat(100 * 1024);
    body.replacen(
        r#""event_type""#,
        &format!(r#""padding":"{padding}","event_type""#),
        1,
    )
    .into_bytes()
}

/// The same order, a later status (another idempotency key, the same subject).
fn declined_order(id: &str) -> Vec<u8> {
    String::from_utf8(whitepay_order(id))
        .expect("text")
        .replace(r#""status":"COMPLETE""#, r#""status":"DECLINED""#)
        .replace("order::completed", "order::declined")
        .into_bytes()
}

/// A dead row holds its subject; released, the subject goes on past it with a
/// gap in its sequence (the row's number is skipped), and replayed later it gets
/// the next free number; replayed without a release, it takes the number it would
/// have had.
async fn a_dead_row_holds_its_subject_until_replayed_or_released(backend: Backend) {
    let Some(limit) = lowered_max_message_size().await else {
        return;
    };
    let mut app = TestApp::spawn(backend, "deadhold").await;
    let (relay, consumer) = (&app.relay, &mut app.consumer);
    relay.wait_broker_connected().await;
    // Two subjects, each an oversized event followed by a later one.
    for body in [
        oversized_order("held-a"),
        declined_order("held-a"),
        oversized_order("held-b"),
        declined_order("held-b"),
    ] {
        assert_eq!(relay.post_whitepay(&body).await.0, 200);
    }
    wait_for("both oversized rows to go dead", || {
        relay.outbox_count(Some("dead")) == 2
    })
    .await;
    assert!(
        consumer.next(Duration::from_secs(3)).await.is_none(),
        "nothing of a held subject is published past its dead row"
    );
    assert!(
        relay
            .metrics()
            .await
            .contains("hookrelay_outbox_held_subjects 2"),
        "the gauge shows both held subjects"
    );

    // Released: the later event of held-b goes on; the dead row stays dead.
    let dead = relay.outbox_command(&["list", "--state", "dead"]);
    let id_of = |subject: &str| -> String {
        dead.as_array()
            .expect("array")
            .iter()
            .find(|row| {
                row["idempotency_key"]
                    .as_str()
                    .expect("key")
                    .contains(subject)
            })
            .expect("dead row of the subject")["id"]
            .to_string()
    };
    let released = relay.outbox_command(&["release", &id_of("held-b")]);
    assert_eq!(released["released"], 1);
    let next = consumer
        .next(Duration::from_secs(20))
        .await
        .expect("the released subject goes on");
    let envelope: serde_json::Value = serde_json::from_slice(&next.data).expect("JSON");
    assert_eq!(envelope["subject"], "held-b");
    assert_eq!(envelope["data"]["status"], "failed");
    // The released row's number is skipped: consumers see the gap.
    assert_eq!(envelope["sequence"], "00000000000000000002");
    assert_eq!(
        relay.outbox_count(Some("dead")),
        2,
        "a release publishes nothing of the row"
    );

    // Replayed once the broker takes it: held-a's events arrive in received order.
    drop(limit);
    // Another test may lower the limit again as soon as this one lets go: wait
    // until the broker takes large messages, and keep it so while replaying.
    let _unlimited = BrokerMaxMessageSize::unchanged().await;
    let replayed = relay.outbox_command(&["replay", &id_of("held-a")]);
    assert_eq!(replayed["replayed"], 1);
    let first = consumer
        .next(Duration::from_secs(30))
        .await
        .expect("replayed");
    let second = consumer
        .next(Duration::from_secs(30))
        .await
        .expect("then the held one");
    let statuses: Vec<String> = [&first, &second]
        .iter()
        .map(|d| {
            let envelope: serde_json::Value = serde_json::from_slice(&d.data).expect("JSON");
            assert_eq!(envelope["subject"], "held-a");
            envelope["data"]["status"]
                .as_str()
                .expect("status")
                .to_owned()
        })
        .collect();
    assert_eq!(statuses, ["succeeded", "failed"], "received order");
    // Never released, so nothing was skipped: 1, 2.
    let numbers: Vec<String> = [&first, &second]
        .iter()
        .map(|d| {
            let envelope: serde_json::Value = serde_json::from_slice(&d.data).expect("JSON");
            envelope["sequence"].as_str().expect("sequence").to_owned()
        })
        .collect();
    assert_eq!(numbers, ["00000000000000000001", "00000000000000000002"]);

    // The released row, replayed at last: the late event gets the next free
    // number, after the one its subject went on with.
    let replayed = relay.outbox_command(&["replay", &id_of("held-b")]);
    assert_eq!(replayed["replayed"], 1);
    let late = consumer
        .next(Duration::from_secs(30))
        .await
        .expect("the late event");
    let envelope: serde_json::Value = serde_json::from_slice(&late.data).expect("JSON");
    assert_eq!(envelope["subject"], "held-b");
    assert_eq!(envelope["data"]["status"], "succeeded");
    assert_eq!(envelope["sequence"], "00000000000000000003");
}

crate::on_both_backends!(
    outbox_stats_list_and_show_read_the_outbox_of_a_running_relay,
    outbox_replay_of_a_row_publishes_it_again_with_the_same_message_id,
    outbox_list_filters_and_a_replay_dry_run_counts_without_changing_anything,
    outbox_replay_since_publishes_every_row_received_since_then_again,
    outbox_purge_removes_published_rows_and_keeps_pending_ones,
    a_message_the_broker_refuses_as_too_large_goes_dead_and_replays_with_the_same_id,
    outbox_show_redacts_like_the_published_message_unless_asked_for_raw,
    a_dead_row_holds_its_subject_until_replayed_or_released,
);

/// A replay by receive time on PostgreSQL runs in chunks of 1,000 rows along the
/// `(received_at, id)` index; this one needs three, and must change every row once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_by_time_on_postgresql_walks_every_chunk() {
    // The broker stays out of reach, so nothing is fetched or published meanwhile.
    let app = TestApp::build(Backend::Postgres, "replaychunks")
        .no_consumer()
        .broker_cut()
        .start()
        .await;
    // 2,500 published rows received within the last minute, some at the same
    // microsecond (the cursor must not skip or repeat them).
    let now_us = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_micros(),
    )
    .expect("in range");
    let rows = (1..=2500).map(|i: i64| {
        let received_at_us = now_us - i / 3;
        Seed {
            source: "whitepay".to_owned(),
            body: whitepay_order(&format!("chunked-{i}")),
            headers_json: "{}".to_owned(),
            received_at_us,
            traceparent: String::new(),
            state: SeedState::Published {
                at_us: received_at_us,
            },
        }
    });
    let seeded = hookrelay::testing::seed(&app.config.relay_config(), rows)
        .await
        .expect("seed");
    assert_eq!(seeded, 2500);
    let replayed = app.relay.outbox_command(&["replay", "--since", "1h"]);
    assert_eq!(replayed["replayed"], 2500);
    assert_eq!(app.relay.outbox_count(Some("pending")), 2500);
}
