//! Fault tests with a conservation oracle (after Vector's and RabbitMQ's Jepsen
//! checker): a ledger of every webhook that got a 2xx, a consumer that records every
//! message, and at the end the counts of **lost** (acked, never published),
//! **phantom** (published, never acked), **duplicated** and **corrupted** (payload
//! not byte-identical). Lost, phantom and corrupted must be 0; duplicates are
//! reported per fault class (at-least-once delivery allows them).
//!
//! Like a real provider, the load generator retries a webhook until it gets a 2xx,
//! so a webhook stored by a relay that died before answering is acked on a retry
//! (as a duplicate) and is not a phantom.
//!
//! `HOOKRELAY_FAULT_KILLS` (default 10) and `HOOKRELAY_FAULT_CUTS` (default 4) make
//! the run longer; see docs/reliability.md.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::time::{Duration, Instant};

use rand::Rng;

use crate::support::*;

/// What the load generator knows: the body of every webhook that got a 2xx.
#[derive(Default)]
struct Ledger {
    acked: BTreeMap<String, Vec<u8>>,
    refusals: usize,
}

/// What the consumer saw: every payload per subject.
#[derive(Default)]
struct Seen {
    by_subject: BTreeMap<String, Vec<Vec<u8>>>,
}

/// The verdict of the oracle.
#[derive(Debug, Default, PartialEq, Eq)]
struct Conservation {
    acked: usize,
    published: usize,
    lost: usize,
    phantom: usize,
    duplicated: usize,
    corrupted: usize,
}

fn check(ledger: &Ledger, seen: &Seen) -> Conservation {
    let mut c = Conservation {
        acked: ledger.acked.len(),
        published: seen.by_subject.len(),
        ..Conservation::default()
    };
    for (subject, body) in &ledger.acked {
        match seen.by_subject.get(subject) {
            None => c.lost += 1,
            Some(copies) => {
                c.duplicated += copies.len() - 1;
                c.corrupted += copies.iter().filter(|p| p != &body).count();
            }
        }
    }
    c.phantom = seen
        .by_subject
        .keys()
        .filter(|s| !ledger.acked.contains_key(*s))
        .count();
    c
}

/// Writes straight to stderr so the report shows in CI even when the test passes
/// (libtest captures only the print macros).
fn report(class: &str, c: &Conservation, extra: &str) {
    let _ = writeln!(
        std::io::stderr(),
        "conservation [{class}] acked={} published={} lost={} phantom={} duplicated={} corrupted={} {extra}",
        c.acked,
        c.published,
        c.lost,
        c.phantom,
        c.duplicated,
        c.corrupted
    );
}

/// The ledger of what `load` got acked, once it has stopped.
async fn ledger_of(load: Load) -> Ledger {
    let (acked, refusals) = load.finish().await;
    Ledger {
        acked: acked.into_iter().map(|a| (a.subject, a.body)).collect(),
        refusals,
    }
}

/// Reads messages from the app's consumer until every acked subject has been seen
/// or `patience` passes without progress.
async fn drain(app: &mut TestApp, ledger: &Ledger, seen: &mut Seen, patience: Duration) {
    loop {
        let missing = ledger
            .acked
            .keys()
            .any(|k| !seen.by_subject.contains_key(k));
        let wait = if missing {
            patience
        } else {
            Duration::from_millis(500)
        };
        match app.consumer.next(wait).await {
            Some(delivery) => record(seen, &delivery.data),
            None => return,
        }
    }
}

fn record(seen: &mut Seen, envelope: &[u8]) {
    let value: serde_json::Value = serde_json::from_slice(envelope).expect("envelope JSON");
    let subject = value["subject"].as_str().expect("subject").to_owned();
    let payload = raw_payload(envelope)
        .map(String::into_bytes)
        .unwrap_or_default();
    seen.by_subject.entry(subject).or_default().push(payload);
}

/// Closes, from the broker side, the connections whose name mentions `exchange`
/// (the relay names its connection `hookrelay {exchange} pid {pid}`).
fn close_connections_of(exchange: &str) -> bool {
    let Ok(out) = std::process::Command::new("rabbitmqctl")
        .args(["list_connections", "pid", "client_properties", "-q"])
        .output()
    else {
        return false;
    };
    let mut closed = false;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some((pid, properties)) = line.split_once('\t') else {
            continue;
        };
        if !properties.contains(exchange) {
            continue;
        }
        closed |= std::process::Command::new("rabbitmqctl")
            .args([
                "close_connection",
                pid,
                "closed by the hookrelay fault test",
            ])
            .output()
            .is_ok_and(|o| o.status.success());
    }
    closed
}

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn nothing_acked_is_lost_when_the_relay_is_killed_repeatedly(backend: Backend) {
    let kills = env_count("HOOKRELAY_FAULT_KILLS", 10);
    let mut app = TestApp::spawn(backend, "kill9").await;
    let load = Load::start(
        vec![app.relay.url("whitepay")],
        4,
        Duration::from_millis(5),
        Walk::NewOrders,
    );
    let mut seen = Seen::default();
    for _ in 0..kills {
        let uptime = Duration::from_millis(rand::rng().random_range(200..900));
        let until = Instant::now() + uptime;
        while Instant::now() < until {
            if let Some(d) = app.consumer.next(Duration::from_millis(20)).await {
                record(&mut seen, &d.data);
            }
        }
        app.relay.kill9();
        app.relay = Relay::start(&app.config);
        load.retarget(0, app.relay.url("whitepay"));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ledger = ledger_of(load).await;
    drain(&mut app, &ledger, &mut seen, Duration::from_secs(20)).await;
    let c = check(&ledger, &seen);
    report(
        "kill -9",
        &c,
        &format!("kills={kills} refused_then_retried={}", ledger.refusals),
    );
    assert!(c.acked > 0, "the load ran");
    assert_eq!((c.lost, c.phantom, c.corrupted), (0, 0, 0), "{c:?}");
}

async fn nothing_acked_is_lost_when_the_broker_is_cut_repeatedly(backend: Backend) {
    let cuts = env_count("HOOKRELAY_FAULT_CUTS", 4);
    let mut app = TestApp::build(backend, "cuts")
        .broker_behind_proxy()
        .start()
        .await;
    let load = Load::start(
        vec![app.relay.url("whitepay")],
        4,
        Duration::from_millis(5),
        Walk::NewOrders,
    );
    let mut seen = Seen::default();
    let pump = |seen: &mut Seen, d: lapin::message::Delivery| record(seen, &d.data);
    for _ in 0..cuts {
        let until = Instant::now() + Duration::from_millis(rand::rng().random_range(300..1200));
        while Instant::now() < until {
            if let Some(d) = app.consumer.next(Duration::from_millis(20)).await {
                pump(&mut seen, d);
            }
        }
        app.proxy.cut();
        tokio::time::sleep(Duration::from_millis(rand::rng().random_range(300..1500))).await;
        app.proxy.restore();
    }
    // The broker itself closes the relay's connection (as `rabbitmqctl
    // close_connection` or a node restart would), touching no other test's.
    let mut forced = 0;
    for _ in 0..2 {
        // The connection may be mid-recovery from the last cut: look again briefly.
        for _ in 0..20 {
            app.relay.wait_broker_connected().await;
            if close_connections_of(&app.exchange) {
                forced += 1;
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ledger = ledger_of(load).await;
    drain(&mut app, &ledger, &mut seen, Duration::from_secs(30)).await;
    let c = check(&ledger, &seen);
    report(
        "broker cut",
        &c,
        &format!(
            "cuts={cuts} forced_closes={forced} refusals={}",
            ledger.refusals
        ),
    );
    assert_eq!(forced, 2, "the broker closed the relay's connection twice");
    assert!(c.acked > 0);
    assert_eq!(ledger.refusals, 0, "a broker outage never costs an ack");
    assert_eq!((c.lost, c.phantom, c.corrupted), (0, 0, 0), "{c:?}");
}

async fn a_broker_that_stops_confirming_never_gets_rows_marked_published(backend: Backend) {
    let mut app = TestApp::build(backend, "freeze")
        .broker_behind_proxy()
        .start()
        .await;
    app.relay.wait_broker_connected().await;
    let load = Load::start(
        vec![app.relay.url("whitepay")],
        2,
        Duration::from_millis(20),
        Walk::NewOrders,
    );
    let mut seen = Seen::default();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Publishes go out but no confirm comes back for longer than the confirm timeout.
    app.proxy.freeze();
    tokio::time::sleep(hookrelay::publisher::CONFIRM_TIMEOUT + Duration::from_secs(2)).await;
    app.proxy.thaw();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ledger = ledger_of(load).await;
    drain(&mut app, &ledger, &mut seen, Duration::from_secs(30)).await;
    let c = check(&ledger, &seen);
    let timeouts = app
        .relay
        .metric("hookrelay_publish_failures_total{reason=\"timeout\"}")
        .await;
    report("slow confirms", &c, &format!("confirm_timeouts={timeouts}"));
    assert!(timeouts >= 1.0, "the freeze outlasted the confirm timeout");
    assert_eq!((c.lost, c.phantom, c.corrupted), (0, 0, 0), "{c:?}");
    // Every row marked published was really delivered.
    let published = app.config.published_subjects();
    let unseen: Vec<&String> = published
        .iter()
        .filter(|s| !seen.by_subject.contains_key(*s))
        .collect();
    assert!(
        unseen.is_empty(),
        "marked published without a delivery: {unseen:?}"
    );
}

/// A tmpfs of a few MiB, so the outbox really runs out of space.
struct TinyDisk {
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl TinyDisk {
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().to_owned();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Self { path, _dir: dir })
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_gets_503s_loses_nothing_and_recovers_by_itself() {
    let Some(disk) = TinyDisk::mount("8m") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must be able to mount a tmpfs (root)"
        );
        let _ = writeln!(
            std::io::stderr(),
            "skipped: cannot mount a tmpfs here (not root?)"
        );
        return;
    };
    let mut app = TestApp::build(Backend::Sqlite, "diskfull")
        .outbox_file(&disk.path.join("outbox.db"))
        .start()
        .await;
    let relay = &app.relay;
    // Leave the outbox a sliver of space.
    let ballast = disk.path.join("ballast");
    let free = {
        let out = std::process::Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&disk.path)
            .output()
            .expect("df");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse::<u64>().ok())
            .expect("free bytes")
    };
    std::fs::write(
        &ballast,
        vec![0u8; usize::try_from(free.saturating_sub(256 * 1024)).expect("size")],
    )
    .expect("ballast");

    let mut ledger = Ledger::default();
    let mut unavailable = 0;
    let padding = "x".repeat(8 * 1024);
    for i in 0..400 {
        let id = format!("disk-{i}-{padding}");
        let body = whitepay_order(&id);
        let (status, reply) = relay.post_whitepay(&body).await;
        match status {
            200 => {
                ledger.acked.insert(id, body);
            }
            503 => {
                unavailable += 1;
                let reply: serde_json::Value = serde_json::from_slice(&reply).expect("JSON error");
                assert!(
                    reply["error"]
                        .as_str()
                        .expect("text")
                        .contains("not stored")
                );
                if unavailable >= 5 {
                    break;
                }
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(
        unavailable > 0,
        "the outbox ran out of space and said so with 503"
    );
    let (status, ready) = relay.readyz().await;
    assert_eq!(status, 503, "not ready while inserts fail: {ready}");
    assert_eq!(ready["outbox"]["reason"], "disk_full", "{ready}");
    std::fs::remove_file(&ballast).expect("free the disk");
    // Recovery without a restart: the next webhooks are stored again.
    let mut recovered = 0;
    for i in 0..20 {
        let id = format!("after-{i}");
        let body = whitepay_order(&id);
        if relay.post_whitepay(&body).await.0 == 200 {
            ledger.acked.insert(id, body);
            recovered += 1;
        }
    }
    assert_eq!(
        relay.readyz().await.0,
        200,
        "ready again once inserts commit"
    );
    assert_eq!(
        recovered, 20,
        "the relay recovered by itself once space returned"
    );
    let mut seen = Seen::default();
    drain(&mut app, &ledger, &mut seen, Duration::from_secs(20)).await;
    let c = check(&ledger, &seen);
    report("disk full", &c, &format!("503s={unavailable}"));
    assert_eq!((c.lost, c.phantom, c.corrupted), (0, 0, 0), "{c:?}");
    // A settle that fails while the disk is full is retried as a settle, so the
    // episode republishes nothing beyond one confirm window's worth of rows.
    assert!(
        c.duplicated <= ledger.acked.len().min(256),
        "duplicates within one window: {c:?}"
    );
}

/// A settle that fails (here: another process holds the outbox's write lock longer
/// than the relay's 5 s `busy_timeout`) is retried as a settle: the confirmed rows
/// are not fetched and published again while the fault lasts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_settle_is_retried_without_publishing_again() {
    let mut app = TestApp::build(Backend::Sqlite, "settlefail")
        .broker_cut()
        .start()
        .await;
    const ROWS: usize = 20;
    for i in 0..ROWS {
        let body = whitepay_order(&format!("settle-{i}"));
        assert_eq!(app.relay.post_whitepay(&body).await.0, 200);
    }

    // Hold the write lock for two busy timeouts and more, so settles fail twice.
    let lock = hookrelay::testing::hold_write_lock(&app.config.outbox_url())
        .await
        .expect("take the write lock");
    app.proxy.restore();
    tokio::time::sleep(Duration::from_secs(12)).await;
    drop(lock);

    let deliveries = app
        .consumer
        .collect(ROWS * 10, Duration::from_secs(5))
        .await;
    let mut per_message: BTreeMap<String, usize> = BTreeMap::new();
    for delivery in &deliveries {
        let id = delivery
            .properties
            .message_id()
            .as_ref()
            .expect("message id")
            .to_string();
        *per_message.entry(id).or_default() += 1;
    }
    assert_eq!(per_message.len(), ROWS, "every acked webhook was published");
    let republished: Vec<_> = per_message.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        republished.is_empty(),
        "confirmed rows were published again while their settle failed: {republished:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while app.relay.outbox_count(Some("published")) < ROWS as i64 {
        assert!(
            Instant::now() < deadline,
            "the settle was recorded once the lock was gone"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Per subject, the first delivery of each event is in received order, through
/// confirm timeouts and retries with backoff, a kill -9 while the first events wait
/// for their retry (the later ones are due at once), and a broker cut. (A dead row
/// that is then replayed: `outbox_cli::a_dead_row_holds_its_subject_until_replayed_or_released`.)
async fn events_of_a_subject_are_first_delivered_in_received_order_through_faults(
    backend: Backend,
) {
    const SUBJECTS: usize = 8;
    let subject = |s: usize| format!("ordered-{s}");
    let post_step = |relay: &Relay, step: usize| {
        let bodies: Vec<Vec<u8>> = (0..SUBJECTS)
            .map(|s| whitepay_order_at(&subject(s), ORDER_LIFE[step]))
            .collect();
        let url = relay.url("whitepay");
        async move {
            for body in bodies {
                let signature = whitepay_signature(WHITEPAY_TOKEN, &body);
                let (status, _) = post(&url, body, &[("Signature", signature)]).await;
                assert_eq!(status, 200);
            }
        }
    };

    let mut app = TestApp::build(backend, "ordering")
        .broker_behind_proxy()
        .start()
        .await;
    app.relay.wait_broker_connected().await;
    // The broker stops answering: the first events are published, their confirms
    // time out, and they are retried with backoff (due a second or two later).
    app.proxy.freeze();
    post_step(&app.relay, 0).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while app
        .relay
        .metric(r#"hookrelay_publish_failures_total{reason="timeout"}"#)
        .await
        < 1.0
    {
        assert!(Instant::now() < deadline, "the confirms timed out");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Killed while they wait for their retry; the next events arrive due at once.
    app.relay.kill9();
    app.proxy.cut();
    app.proxy.thaw();
    app.proxy.restore();
    app.relay = Relay::start(&app.config);
    post_step(&app.relay, 1).await;
    post_step(&app.relay, 2).await;
    // Another cut mid-way.
    app.proxy.cut();
    post_step(&app.relay, 3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    app.proxy.restore();

    let total = (SUBJECTS * ORDER_LIFE.len()) as i64;
    // Rows that failed in several of the faults above wait out a retry backoff
    // that doubles (1 s, 2 s, 4 s, …): on a machine busy with the rest of the
    // suite the last of them can take longer than a minute. The claim here is
    // "in the end", and in order; not how soon.
    let deadline = Instant::now() + Duration::from_secs(120);
    while app.relay.outbox_count(Some("published")) < total {
        assert!(
            Instant::now() < deadline,
            "everything is published in the end"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deliveries = app
        .consumer
        .collect(SUBJECTS * ORDER_LIFE.len() * 3, Duration::from_secs(3))
        .await;
    let mut first_seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for delivery in &deliveries {
        let envelope: serde_json::Value =
            serde_json::from_slice(&delivery.data).expect("JSON envelope");
        let seen = first_seen
            .entry(envelope["subject"].as_str().expect("subject").to_owned())
            .or_default();
        let status = envelope["data"]["provider_status"]
            .as_str()
            .expect("provider status")
            .to_owned();
        if !seen.contains(&status) {
            seen.push(status);
        }
    }
    assert_eq!(first_seen.len(), SUBJECTS);
    for (subject, seen) in &first_seen {
        assert_eq!(seen, &ORDER_LIFE, "first deliveries of {subject}");
    }
}

crate::on_both_backends!(
    nothing_acked_is_lost_when_the_relay_is_killed_repeatedly,
    nothing_acked_is_lost_when_the_broker_is_cut_repeatedly,
    a_broker_that_stops_confirming_never_gets_rows_marked_published,
    events_of_a_subject_are_first_delivered_in_received_order_through_faults,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nacked_publish_renews_the_channel_and_is_published_later() {
    let mut app = TestApp::spawn(Backend::Sqlite, "nack").await;
    app.relay.wait_broker_connected().await;
    // A queue that refuses everything: the broker nacks every publish routed to it.
    let connection = broker_connection().await;
    let channel = connection.create_channel().await.expect("channel");
    let refusing = format!("{}.refusing", &*app.exchange);
    let mut arguments = lapin::types::FieldTable::default();
    arguments.insert(
        "x-max-length".into(),
        lapin::types::AMQPValue::LongLongInt(0),
    );
    arguments.insert(
        "x-overflow".into(),
        lapin::types::AMQPValue::LongString("reject-publish".into()),
    );
    channel
        .queue_declare(
            refusing.as_str().into(),
            lapin::options::QueueDeclareOptions::default(),
            arguments,
        )
        .await
        .expect("declare the refusing queue");
    channel
        .queue_bind(
            refusing.as_str().into(),
            (*app.exchange).into(),
            "#".into(),
            lapin::options::QueueBindOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("bind it");

    assert_eq!(
        app.relay.post_whitepay(&whitepay_order("nacked")).await.0,
        200
    );
    wait_until(
        "the nack renewed the channel",
        Duration::from_secs(20),
        async || {
            app.relay
                .metric(r#"hookrelay_broker_reconnects_total{reason="nacked"}"#)
                .await
                >= 1.0
        },
    )
    .await;
    assert!(
        app.relay
            .metric(r#"hookrelay_publish_failures_total{reason="nack"}"#)
            .await
            >= 1.0
    );
    // Once nothing refuses it, the row is published on the new channel.
    channel
        .queue_delete(
            refusing.as_str().into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await
        .expect("delete the refusing queue");
    let delivered = app
        .consumer
        .next(Duration::from_secs(30))
        .await
        .expect("the nacked webhook, published again");
    let event: serde_json::Value = serde_json::from_slice(&delivered.data).expect("JSON");
    assert_eq!(event["subject"], "nacked");
    app.relay.wait_broker_connected().await;
}
