//! Releases side by side on one outbox, as during a rolling update or a rollback:
//! a row this release cannot read (a newer one wrote it) is set aside and holds
//! back only its own subject; a release that reads it again replays it by itself;
//! an older release runs on a newer schema that says it still may, and refuses
//! one that says it may not.

use std::process::Command;
use std::time::Duration;

use crate::on_both_backends;
use crate::support::*;

on_both_backends!(
    a_row_this_release_cannot_read_is_set_aside_and_everything_else_goes_on,
    an_older_release_runs_on_a_newer_schema_only_when_it_says_so,
);

/// The metadata a newer release that knows a kind this one does not would store.
fn of_a_newer_release(meta: &serde_json::Value) -> String {
    let mut meta = meta.clone();
    meta["class"] = serde_json::json!(["payout", "settled"]);
    meta.to_string()
}

/// The outbox id of the first row of `subject` (`list` shows the newest first).
fn row_of(relay: &Relay, subject: &str) -> i64 {
    let rows = relay.outbox_command(&["list", "--subject", subject]);
    rows.as_array()
        .and_then(|rows| rows.last())
        .and_then(|row| row["id"].as_i64())
        .unwrap_or_else(|| panic!("a row of {subject}: {rows}"))
}

async fn a_row_this_release_cannot_read_is_set_aside_and_everything_else_goes_on(backend: Backend) {
    let mut app = TestApp::build(backend, "unreadable")
        .broker_cut()
        .start()
        .await;
    // Subject `held` has two events; the first becomes unreadable.
    for body in [
        whitepay_order_at("held", "OPEN"),
        whitepay_order_at("held", "COMPLETE"),
        whitepay_order("other"),
    ] {
        assert_eq!(app.relay.post_whitepay(&body).await.0, 200);
    }
    let unreadable = row_of(&app.relay, "held");
    let config = app.config.relay_config();
    // What this release stored, with only the class changed.
    let meta: serde_json::Value = serde_json::from_str(
        &hookrelay::testing::meta_of(&config, unreadable)
            .await
            .expect("read the row")
            .expect("the row's metadata"),
    )
    .expect("JSON");
    hookrelay::testing::rewrite_meta(&config, unreadable, &of_a_newer_release(&meta))
        .await
        .expect("rewrite the row's metadata");

    app.proxy.restore();
    let delivered = app.consumer.collect(3, Duration::from_secs(10)).await;
    let subjects: Vec<String> = delivered.iter().map(subject_of).collect();
    assert_eq!(
        subjects,
        ["other"],
        "the other subject was published; the set-aside row held back only its own"
    );
    let dead = app.relay.outbox_command(&["show", &unreadable.to_string()]);
    assert_eq!(dead["state"], "dead", "{dead}");
    let error = dead["last_error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("unreadable by this release") && error.contains("payout"),
        "the row says why it was set aside: {error}"
    );
    assert_eq!(
        app.relay
            .metric("hookrelay_outbox_unreadable_rows_total")
            .await,
        1.0
    );
    let (status, ready) = app.relay.readyz().await;
    assert_eq!(status, 200, "everything else goes on: {ready}");
    assert_eq!(ready["outbox"]["unreadable_rows"], 1, "{ready}");
    assert!(
        app.relay
            .logs()
            .iter()
            .any(|line| line.contains("cannot be read by this release")
                && line.contains(&format!("\"row\":{unreadable}"))),
        "the log names the row"
    );

    // A release that reads the row again (here: its metadata restored) replays it
    // by itself when it starts, and the subject goes on in order.
    hookrelay::testing::rewrite_meta(&config, unreadable, &meta.to_string())
        .await
        .expect("restore the row's metadata");
    assert!(app.relay.terminate(Duration::from_secs(15)).success());
    let _relay = Relay::start(&app.config);
    let delivered = app.consumer.collect(2, Duration::from_secs(10)).await;
    let statuses: Vec<String> = delivered
        .iter()
        .map(|d| {
            let event: serde_json::Value = serde_json::from_slice(&d.data).expect("json");
            event["data"]["status"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(
        statuses,
        ["pending", "succeeded"],
        "the revived row went first, then the one it held"
    );
}

/// The subject of a consumed CloudEvent.
fn subject_of(delivery: &lapin::message::Delivery) -> String {
    let event: serde_json::Value = serde_json::from_slice(&delivery.data).expect("json");
    event["subject"].as_str().unwrap_or_default().to_owned()
}

async fn an_older_release_runs_on_a_newer_schema_only_when_it_says_so(backend: Backend) {
    let app = TestApp::build(backend, "newerschema")
        .no_consumer()
        .start()
        .await;
    let config = app.config.relay_config();
    let (current, _) = hookrelay::testing::schema_version(&config)
        .await
        .expect("schema version");
    drop(app.relay);

    // A newer release that only added to the schema: this one runs on it.
    hookrelay::testing::record_schema_version(&config, current + 1, current)
        .await
        .expect("record");
    let relay = Relay::start(&app.config);
    relay.assert_still_serving().await;
    assert!(
        relay
            .logs()
            .iter()
            .any(|line| line.contains("newer than this release's and still readable by it")),
        "it says it runs on a newer schema"
    );
    drop(relay);

    // A newer release whose schema older ones cannot run on: refused, and why.
    hookrelay::testing::record_schema_version(&config, current + 2, current + 2)
        .await
        .expect("record");
    let output = Command::new(env!("CARGO_BIN_EXE_hookrelay"))
        .arg("serve")
        .env_clear()
        .env("HOOKRELAY_OUTBOX_URL", app.config.outbox_url())
        .env("HOOKRELAY_LISTEN", "127.0.0.1:0")
        .env("HOOKRELAY_ADMIN_LISTEN", "127.0.0.1:0")
        .output()
        .expect("run serve");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "refused: {stderr}");
    assert!(
        stderr.contains("made by a newer hookrelay") && stderr.contains("upgrade this relay"),
        "{stderr}"
    );
}
