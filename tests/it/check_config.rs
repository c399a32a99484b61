//! `hookrelay check-config --connect` against the real broker and both outbox
//! backends: what it reaches it reports (the outbox's schema version), what it
//! cannot it names once with what to do, it declares and creates nothing, and
//! no password is shown.

use std::process::Command;

use lapin::options::ExchangeDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};

use crate::on_both_backends;
use crate::support::*;

/// What one run of `hookrelay check-config` printed.
struct Checked {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// `hookrelay check-config ARGS` with exactly `env` (plus a Whitepay token, so
/// the configuration itself has no problem).
fn check_config(args: &[&str], env: &[(&str, String)]) -> Checked {
    let output = Command::new(env!("CARGO_BIN_EXE_hookrelay"))
        .arg("check-config")
        .args(args)
        .env_clear()
        .env("HOOKRELAY_SOURCES__WHITEPAY__WEBHOOK_TOKEN", WHITEPAY_TOKEN)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run hookrelay check-config");
    Checked {
        ok: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A `postgres://` URL with a password in it (the tests' server trusts
/// loopback, so any password connects): the one the output must not show.
fn with_password(url: &str) -> String {
    url.replacen("postgres://postgres@", "postgres://postgres:s3cret@", 1)
}

async fn check_config_connect_reports_the_broker_and_the_outbox_schema_version(backend: Backend) {
    // A running relay made the outbox; the check reads it beside `serve`.
    let app = TestApp::build(backend, "checkconnect")
        .no_consumer()
        .start()
        .await;
    let exchange = TestExchange::new("checkconnect-undeclared");
    let env = [
        (
            "HOOKRELAY_AMQP_URL",
            format!("amqp://guest:guest@{BROKER}/%2f"),
        ),
        ("HOOKRELAY_EXCHANGE", exchange.to_string()),
        (
            "HOOKRELAY_OUTBOX_URL",
            with_password(&app.config.outbox_url()),
        ),
    ];
    let checked = check_config(&["--connect"], &env);
    assert!(checked.ok, "{}{}", checked.stdout, checked.stderr);
    assert!(
        checked.stdout.contains(&format!(
            "broker        amqp://guest:***@{BROKER}/%2f: connected"
        )),
        "{}",
        checked.stdout
    );
    let version: i64 = checked
        .stdout
        .split("schema version ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no schema version in:\n{}", checked.stdout));
    assert!(version >= 1, "a migrated outbox: {}", checked.stdout);
    // What a failover would keep: the machine's server has no standby.
    let replication = match backend {
        Backend::Sqlite => "embedded file: no standby",
        Backend::Postgres => "NO synchronous standby: a failover can lose acknowledged webhooks",
    };
    assert!(checked.stdout.contains(replication), "{}", checked.stdout);
    assert!(checked.stdout.contains("configuration OK"));
    for secret in ["s3cret", "guest:guest"] {
        assert!(
            !checked.stdout.contains(secret) && !checked.stderr.contains(secret),
            "{secret} shown:\n{}{}",
            checked.stdout,
            checked.stderr
        );
    }

    // Nothing was declared: the configured exchange still does not exist.
    let connection = Connection::connect(
        &format!("amqp://guest:guest@{BROKER}/%2f"),
        ConnectionProperties::default(),
    )
    .await
    .expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..ExchangeDeclareOptions::default()
    };
    assert!(
        channel
            .exchange_declare(
                (&*exchange).into(),
                ExchangeKind::Topic,
                passive,
                FieldTable::default()
            )
            .await
            .is_err(),
        "check-config --connect declared {}",
        &*exchange
    );
    app.relay.assert_still_serving().await;
}

on_both_backends!(check_config_connect_reports_the_broker_and_the_outbox_schema_version);

#[test]
fn check_config_connect_names_each_cause_once_with_what_to_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("typo").join("outbox.db");
    let port = free_port();
    let env = [
        (
            "HOOKRELAY_AMQP_URL",
            format!("amqp://relay:s3cret@127.0.0.1:{port}/%2f"),
        ),
        (
            "HOOKRELAY_OUTBOX_URL",
            format!("sqlite://{}", missing.display()),
        ),
    ];
    let checked = check_config(&["--connect"], &env);
    assert!(!checked.ok, "a failed connection fails the check");
    let err = &checked.stderr;
    for (cause, once) in [
        ("Connection refused", "the system's words"),
        ("cannot connect to the broker", "what failed"),
        (
            "check the host and port of HOOKRELAY_AMQP_URL",
            "what to do",
        ),
        ("there is no outbox at", "what failed"),
        ("check HOOKRELAY_OUTBOX_URL", "what to do"),
    ] {
        assert_eq!(err.matches(cause).count(), 1, "{once}, once: {err}");
    }
    assert!(
        checked
            .stdout
            .contains(&format!("amqp://relay:***@127.0.0.1:{port}/%2f: FAILED")),
        "{}",
        checked.stdout
    );
    assert!(!checked.stdout.contains("s3cret") && !err.contains("s3cret"));
    assert!(!missing.exists(), "no outbox was created");
    assert!(!dir.path().join("typo").exists(), "nor its folder");

    // Without --connect nothing is reached, and the configuration is fine.
    let unconnected = check_config(&[], &env);
    assert!(unconnected.ok, "{}", unconnected.stderr);
    assert!(!unconnected.stdout.contains("connections:"));
}

#[test]
fn check_config_connect_on_postgres_names_a_missing_outbox_and_an_unreachable_server() {
    let broker = (
        "HOOKRELAY_AMQP_URL",
        format!("amqp://guest:guest@{BROKER}/%2f"),
    );
    // A database without the outbox's tables: nothing is created in it.
    let empty = Database::create();
    let checked = check_config(
        &["--connect"],
        &[
            broker.clone(),
            ("HOOKRELAY_OUTBOX_URL", with_password(&empty.url())),
        ],
    );
    assert!(!checked.ok);
    assert_eq!(
        checked.stderr.matches("there is no outbox at").count(),
        1,
        "{}",
        checked.stderr
    );
    assert!(checked.stderr.contains(&format!(
        "postgres://postgres@127.0.0.1:5432/{}",
        empty.name
    )));
    assert_eq!(
        empty.sql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"),
        "0",
        "no table was created"
    );

    let port = free_port();
    let checked = check_config(
        &["--connect"],
        &[
            broker,
            (
                "HOOKRELAY_OUTBOX_URL",
                format!("postgres://relay:s3cret@127.0.0.1:{port}/outbox?sslmode=disable"),
            ),
        ],
    );
    assert!(!checked.ok);
    let err = &checked.stderr;
    assert_eq!(err.matches("Connection refused").count(), 1, "{err}");
    assert_eq!(
        err.matches("cannot reach the outbox database").count(),
        1,
        "{err}"
    );
    assert!(err.contains("HOOKRELAY_OUTBOX_URL"), "{err}");
    assert!(
        checked.stdout.contains("broker        amqp://guest:***@"),
        "the broker is still reported: {}",
        checked.stdout
    );
    assert!(!checked.stdout.contains("s3cret") && !err.contains("s3cret"));
}

#[test]
fn check_config_reaches_every_broker_node_and_masks_each_password() {
    let port = free_port();
    let env = [
        (
            "HOOKRELAY_AMQP_URL",
            format!("amqp://guest:guest@{BROKER}/%2f,amqp://relay:s3cret@127.0.0.1:{port}/%2f"),
        ),
        (
            "HOOKRELAY_OUTBOX_URL",
            "sqlite://outbox-never-made.db".to_owned(),
        ),
    ];
    let unconnected = check_config(&[], &env);
    assert!(unconnected.ok, "{}", unconnected.stderr);
    assert!(
        unconnected.stdout.contains(&format!(
            "amqp_url        amqp://guest:***@{BROKER}/%2f,amqp://relay:***@127.0.0.1:{port}/%2f"
        )),
        "{}",
        unconnected.stdout
    );
    assert!(
        unconnected.stdout.contains("2 nodes"),
        "{}",
        unconnected.stdout
    );

    let checked = check_config(&["--connect"], &env);
    assert!(!checked.ok, "an unreachable node fails the check");
    let out = &checked.stdout;
    assert!(
        out.contains(&format!("amqp://guest:***@{BROKER}/%2f: connected")),
        "{out}"
    );
    assert!(
        out.contains(&format!("amqp://relay:***@127.0.0.1:{port}/%2f: FAILED")),
        "{out}"
    );
    assert_eq!(
        checked
            .stderr
            .matches("cannot connect to the broker")
            .count(),
        1,
        "only the dead node is a problem: {}",
        checked.stderr
    );
    for text in [out, &checked.stderr] {
        assert!(
            !text.contains("s3cret") && !text.contains("guest:guest"),
            "{text}"
        );
    }

    // A list with a hole names the URL by its place, never its text.
    let holed = check_config(
        &[],
        &[(
            "HOOKRELAY_AMQP_URL",
            "amqp://relay:s3cret@mq-1/%2f,,amqp://relay:s3cret@mq-2/%2f".to_owned(),
        )],
    );
    assert!(!holed.ok);
    assert!(holed.stderr.contains("URL 2 is empty"), "{}", holed.stderr);
    assert!(!holed.stderr.contains("s3cret"), "{}", holed.stderr);
}

#[tokio::test]
async fn without_a_synchronous_standby_the_requirement_fails_the_check_and_the_start() {
    // An outbox made by a relay that did not require a standby.
    let app = TestApp::build(Backend::Postgres, "requiresync")
        .no_consumer()
        .start()
        .await;
    let (ready, body) = app.relay.readyz().await;
    assert_eq!(ready, 200);
    assert_eq!(body["outbox"]["synchronous_standby"], false, "{body}");
    let env = [
        (
            "HOOKRELAY_AMQP_URL",
            format!("amqp://guest:guest@{BROKER}/%2f"),
        ),
        ("HOOKRELAY_OUTBOX_URL", app.config.outbox_url()),
        ("HOOKRELAY_OUTBOX_REQUIRE_SYNC_STANDBY", "true".to_owned()),
    ];
    let checked = check_config(&["--connect"], &env);
    assert!(!checked.ok, "{}", checked.stdout);
    assert_eq!(
        checked
            .stderr
            .matches("do not wait for a synchronous standby")
            .count(),
        1,
        "{}",
        checked.stderr
    );

    // `serve` refuses to start, saying why and what to do.
    let refused = Command::new(env!("CARGO_BIN_EXE_hookrelay"))
        .arg("serve")
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("HOOKRELAY_SOURCES__WHITEPAY__WEBHOOK_TOKEN", WHITEPAY_TOKEN)
        .env("HOOKRELAY_LISTEN", "127.0.0.1:0")
        .env("HOOKRELAY_ADMIN_LISTEN", "127.0.0.1:0")
        .output()
        .expect("run hookrelay serve");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("the outbox has no synchronous standby")
            && stderr.contains("set synchronous_standby_names"),
        "{stderr}"
    );
}
