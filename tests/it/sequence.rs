//! The per-subject sequence end to end (docs/events.md, "Order and duplicates"):
//! every order's events carry 1, 2, 3 … in the order they were received, through
//! kill -9, takeovers and broker cuts, to consumers of a consistent-hash topology
//! declared by `hookrelay topology declare`; a republish or replay carries the
//! number it was first published with; a status that goes backwards is marked
//! `stale`; an outbox of the release before numbers existed goes on from where
//! each subject stands.
//!
//! (A dead row released and replayed, and the gap a consumer sees then:
//! `outbox_cli::a_dead_row_holds_its_subject_until_replayed_or_released`.)

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::time::Duration;

use hookrelay::testing::{Seed, SeedState};
use lapin::message::Delivery;

use lapin::types::AMQPValue;

use crate::on_both_backends;
use crate::support::schema;
use crate::support::*;

on_both_backends!(
    each_orders_events_are_numbered_in_received_order_through_kills_and_a_cut,
    a_replay_keeps_its_number_and_a_late_status_is_marked_stale,
    an_outbox_of_the_release_before_numbers_goes_on_from_where_each_subject_stands,
);

/// What a consumer needs of a delivery.
#[derive(Debug, Clone)]
struct Numbered {
    key: String,
    sequence: i64,
    message_id: String,
    provider_status: String,
    stale: bool,
}

/// Reads the sequence's attributes and headers of a delivery (the harness has
/// checked that headers and attributes agree).
fn numbered(delivery: &Delivery) -> Numbered {
    let envelope: serde_json::Value = serde_json::from_slice(&delivery.data).expect("JSON");
    let headers = delivery.properties.headers().clone().unwrap_or_default();
    let sequence = match headers.inner().get("sequence") {
        Some(AMQPValue::LongLongInt(n)) => *n,
        other => panic!("a sequence header: {other:?}"),
    };
    Numbered {
        key: envelope["partitionkey"]
            .as_str()
            .expect("partitionkey")
            .to_owned(),
        sequence,
        message_id: envelope["id"].as_str().expect("id").to_owned(),
        provider_status: envelope["data"]["provider_status"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        stale: envelope["stale"] == true,
    }
}

/// What the four consumers saw, and what the oracle makes of it.
#[derive(Debug, Default)]
struct Verdict {
    sent: usize,
    delivered: usize,
    duplicates: BTreeMap<i64, usize>,
    lost: usize,
    keys_in_several_queues: usize,
    misnumbered: usize,
    number_changed: usize,
    number_reused: usize,
    gaps: usize,
}

/// Judges deliveries per queue (each in arrival order) against what was acked
/// per order, in the order acked.
fn judge(acked: &BTreeMap<String, Vec<String>>, queues: &[Vec<Numbered>]) -> Verdict {
    let mut v = Verdict {
        sent: acked.values().map(Vec::len).sum(),
        delivered: queues.iter().map(Vec::len).sum(),
        ..Verdict::default()
    };
    let mut queue_of: BTreeMap<&str, BTreeSet<usize>> = BTreeMap::new();
    let mut by_key: BTreeMap<&str, Vec<&Numbered>> = BTreeMap::new();
    for (q, deliveries) in queues.iter().enumerate() {
        for d in deliveries {
            queue_of.entry(&d.key).or_default().insert(q);
            by_key.entry(&d.key).or_default().push(d);
        }
    }
    v.keys_in_several_queues = queue_of.values().filter(|qs| qs.len() > 1).count();
    for (subject, statuses) in acked {
        let key = format!("whitepay/{subject}");
        let got = by_key.get(key.as_str()).cloned().unwrap_or_default();
        let mut number_of: BTreeMap<&str, i64> = BTreeMap::new();
        let mut event_of: BTreeMap<i64, &str> = BTreeMap::new();
        let mut first: Vec<(&str, i64)> = Vec::new();
        for d in &got {
            match number_of.get(d.message_id.as_str()) {
                Some(n) => {
                    *v.duplicates.entry(d.sequence).or_default() += 1;
                    v.number_changed += usize::from(*n != d.sequence);
                }
                None => {
                    number_of.insert(&d.message_id, d.sequence);
                    first.push((&d.provider_status, d.sequence));
                    if event_of.insert(d.sequence, &d.message_id).is_some() {
                        v.number_reused += 1;
                    }
                }
            }
        }
        v.lost += statuses
            .iter()
            .filter(|s| !first.iter().any(|(f, _)| f == s))
            .count();
        let expected: Vec<(&str, i64)> = statuses.iter().map(String::as_str).zip(1..).collect();
        if first != expected {
            v.misnumbered += 1;
        }
        let numbers: BTreeSet<i64> = first.iter().map(|(_, n)| *n).collect();
        let top = numbers.iter().next_back().copied().unwrap_or(0);
        if numbers.len() as i64 != top {
            v.gaps += 1;
        }
    }
    v
}

/// Several relays on PostgreSQL (one on SQLite) behind one broker proxy; orders
/// sent to random relays; two relays killed with -9 and the broker cut meanwhile;
/// four consumers on a 4-queue consistent-hash topology.
async fn each_orders_events_are_numbered_in_received_order_through_kills_and_a_cut(
    backend: Backend,
) {
    const WORKERS: usize = 20;
    const ORDERS_EACH: usize = 15;
    let mut app = TestApp::build(backend, "sequence")
        .broker_behind_proxy()
        .no_consumer()
        .env("HOOKRELAY_OUTBOX_LEASE", "2s")
        .start()
        .await;
    let partitions = Partitions::new(&app.exchange, 4);
    let declared = partitions.declare(&app.exchange, &[]);
    assert!(declared.ok, "topology declare: {}", declared.stderr);
    let mut consumers = Vec::new();
    for i in 0..partitions.count {
        consumers.push(Consumer::existing(&partitions.queue(i)).await);
    }
    let replicas = if backend == Backend::Postgres { 2 } else { 1 };
    let mut relays: Vec<Relay> = (1..replicas).map(|_| Relay::start(&app.config)).collect();
    let mut targets = vec![app.relay.url("whitepay")];
    targets.extend(relays.iter().map(|r| r.url("whitepay")));
    let load = Load::start(
        targets,
        WORKERS,
        Duration::from_millis(40),
        Walk::OrdersThroughLife(ORDERS_EACH),
    );
    // Two kills -9 (of a random relay on PostgreSQL), each followed by a fresh
    // relay on the same outbox, and a broker cut between them.
    let kill = |app: &mut TestApp, relays: &mut Vec<Relay>| {
        let victim = rand::random_range(0..replicas);
        let slot = match victim {
            0 => &mut app.relay,
            n => &mut relays[n - 1],
        };
        slot.kill9();
        *slot = Relay::start(&app.config);
        load.retarget(victim, slot.url("whitepay"));
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    kill(&mut app, &mut relays);
    tokio::time::sleep(Duration::from_millis(400)).await;
    app.proxy.cut();
    tokio::time::sleep(Duration::from_millis(800)).await;
    app.proxy.restore();
    tokio::time::sleep(Duration::from_millis(400)).await;
    kill(&mut app, &mut relays);
    let (events, refusals) = load.completed().await;
    let mut acked: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for event in events {
        acked.entry(event.subject).or_default().push(event.status);
    }
    let total = acked.values().map(Vec::len).sum::<usize>() as i64;
    wait_until(
        "every acked event published",
        Duration::from_secs(120),
        async || app.relay.outbox_count(Some("published")) >= total,
    )
    .await;
    let mut queues = Vec::new();
    for consumer in &mut consumers {
        let deliveries = consumer.collect(usize::MAX, Duration::from_secs(2)).await;
        queues.push(deliveries.iter().map(numbered).collect::<Vec<_>>());
    }
    let v = judge(&acked, &queues);
    let _ = writeln!(
        std::io::stderr(),
        "sequence [{backend:?}] orders={} sent={} delivered={} duplicates={} by_number={:?} lost={} gaps={} misnumbered={} number_changed={} number_reused={} keys_in_several_queues={} relays={replicas} kills=2 cuts=1 refused_then_retried={refusals} per_queue={:?}",
        acked.len(),
        v.sent,
        v.delivered,
        v.duplicates.values().sum::<usize>(),
        v.duplicates,
        v.lost,
        v.gaps,
        v.misnumbered,
        v.number_changed,
        v.number_reused,
        v.keys_in_several_queues,
        queues.iter().map(Vec::len).collect::<Vec<_>>(),
    );
    assert_eq!(acked.len(), WORKERS * ORDERS_EACH, "every order was sent");
    assert_eq!(v.sent, WORKERS * ORDERS_EACH * ORDER_LIFE.len());
    assert_eq!(
        (
            v.lost,
            v.keys_in_several_queues,
            v.misnumbered,
            v.number_changed,
            v.number_reused,
            v.gaps
        ),
        (0, 0, 0, 0, 0, 0),
        "{v:?}"
    );
    assert!(
        queues.iter().all(|q| !q.is_empty()),
        "the orders spread over every queue: {:?}",
        queues.iter().map(Vec::len).collect::<Vec<_>>()
    );
}

/// The outbox id of the row of `subject` with `status`.
fn row_of(relay: &Relay, subject: &str, status: &str) -> String {
    let rows = relay.outbox_command(&["list", "--subject", subject]);
    rows.as_array()
        .expect("rows")
        .iter()
        .find(|row| {
            row["routing_key"]
                .as_str()
                .is_some_and(|k| k.ends_with(status))
        })
        .unwrap_or_else(|| panic!("a row of {subject} {status}: {rows}"))["id"]
        .to_string()
}

async fn a_replay_keeps_its_number_and_a_late_status_is_marked_stale(backend: Backend) {
    let mut app = TestApp::spawn(backend, "seqreplay").await;
    // The last one is late: `pending` after `succeeded`.
    for status in ["INIT", "COMPLETE", "OPEN"] {
        let (code, _) = app
            .relay
            .post_whitepay(&whitepay_order_at("r-1", status))
            .await;
        assert_eq!(code, 200);
    }
    let mut bodies = Vec::new();
    let first: Vec<Numbered> = app
        .consumer
        .collect(3, Duration::from_secs(20))
        .await
        .iter()
        .inspect(|d| bodies.push(d.data.clone()))
        .map(numbered)
        .collect();
    let seen: Vec<(i64, &str, bool)> = first
        .iter()
        .map(|d| (d.sequence, d.provider_status.as_str(), d.stale))
        .collect();
    assert_eq!(
        seen,
        [
            (1, "INIT", false),
            (2, "COMPLETE", false),
            (3, "OPEN", true)
        ]
    );
    assert!(first.iter().all(|d| d.key == "whitepay/r-1"));
    // Counted when the relay reads the broker's confirm, which can come after
    // the consumer has the message.
    let stale = r#"hookrelay_events_stale_total{source="whitepay"}"#;
    wait_until(
        "the stale event counted",
        Duration::from_secs(10),
        async || app.relay.metric(stale).await == 1.0,
    )
    .await;

    // Replayed: the same number, and the same mark, as first published.
    let opened = row_of(&app.relay, "r-1", "pending");
    // Operators see the number and the mark too, once the confirm's settle
    // has committed (it follows the counter).
    wait_until("the number recorded", Duration::from_secs(10), async || {
        app.relay.outbox_command(&["show", &opened])["sequence"] == 3
    })
    .await;
    let shown = app.relay.outbox_command(&["show", &opened]);
    assert_eq!(
        (&shown["sequence"], &shown["stale"]),
        (&serde_json::json!(3), &serde_json::json!(true))
    );
    let replayed = app.relay.outbox_command(&["replay", &opened]);
    assert_eq!(replayed["replayed"], 1);
    let again = app
        .consumer
        .next(Duration::from_secs(20))
        .await
        .expect("the replayed event");
    bodies.push(again.data.clone());
    let again = numbered(&again);
    assert_eq!(
        (again.sequence, again.provider_status.as_str(), again.stale),
        (3, "OPEN", true),
        "{again:?}"
    );
    // The next new event goes on after the highest number.
    let (code, _) = app
        .relay
        .post_whitepay(&whitepay_order_at("r-1", "CANCELED"))
        .await;
    assert_eq!(code, 200);
    let next = numbered(
        &app.consumer
            .next(Duration::from_secs(20))
            .await
            .expect("the next event"),
    );
    // A final outcome after another is no step back.
    assert_eq!((next.sequence, next.stale), (4, false), "{next:?}");
    // Event 4 waited behind the replay's settle, so the replay's confirm is in.
    assert_eq!(
        app.relay.metric(stale).await,
        1.0,
        "a replay is not counted again"
    );
    // What a consumer in another language reads: the SDK keeps the attributes.
    schema::assert_python_sdk_parses(&bodies);
}

async fn an_outbox_of_the_release_before_numbers_goes_on_from_where_each_subject_stands(
    backend: Backend,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let exchange = TestExchange::new("seqmigrate");
    let mut consumer = Consumer::bind(&exchange, "#").await;
    let relay_config = RelayConfig::on(backend, &exchange, dir.path());
    // A first start creates the outbox.
    Relay::start(&relay_config).kill9();
    let config = relay_config.relay_config();
    // `old` had two events published and a third waiting; `new` one waiting.
    // Recent times: retention would purge rows published long ago.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
    let seed = |subject: &str, status: &str, n: i64, state: SeedState| Seed {
        source: "whitepay".to_owned(),
        body: whitepay_order_at(subject, status),
        headers_json: "{}".to_owned(),
        received_at_us: n,
        traceparent: "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01".to_owned(),
        state,
    };
    hookrelay::testing::seed(
        &config,
        [
            seed(
                "old",
                "INIT",
                now - 4,
                SeedState::Published { at_us: now - 2 },
            ),
            seed(
                "old",
                "OPEN",
                now - 3,
                SeedState::Published { at_us: now - 1 },
            ),
            seed("old", "COMPLETE", now - 2, SeedState::Pending),
            seed("new", "OPEN", now - 1, SeedState::Pending),
        ],
    )
    .await
    .expect("seed");
    hookrelay::testing::as_before_sequences(&config)
        .await
        .expect("the outbox as the previous release left it");

    let relay = Relay::start(&relay_config);
    let deliveries: Vec<Numbered> = consumer
        .collect(2, Duration::from_secs(20))
        .await
        .iter()
        .map(numbered)
        .collect();
    let mut got: Vec<(&str, i64)> = deliveries
        .iter()
        .map(|d| (d.key.as_str(), d.sequence))
        .collect();
    got.sort_unstable();
    assert_eq!(got, [("whitepay/new", 1), ("whitepay/old", 3)]);
    // The rows published before the migration have their numbers too.
    let opened = row_of(&relay, "old", "pending");
    relay.outbox_command(&["replay", &opened]);
    let again = numbered(
        &consumer
            .next(Duration::from_secs(20))
            .await
            .expect("the replayed event"),
    );
    assert_eq!((again.key.as_str(), again.sequence), ("whitepay/old", 2));
}
