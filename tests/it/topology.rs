//! `hookrelay topology declare` against the real broker: it declares the
//! partitioned topology once (a second run changes nothing), the events it
//! routes land by their `partitionkey` header in one partition queue each, a
//! conflicting queue is named with its argument and stops everything before
//! anything is made, and `--dry-run` makes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ExchangeKind};

use crate::support::*;

/// Whether an exchange exists (a passive declare, on a channel of its own:
/// a refusal closes it).
async fn exchange_exists(connection: &Connection, name: &str) -> bool {
    let channel = connection.create_channel().await.expect("channel");
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            name.into(),
            ExchangeKind::Topic,
            passive,
            FieldTable::default(),
        )
        .await
        .is_ok()
}

/// Declares queue `name` with `args` on a channel of its own: whether the
/// broker took it (a passive declare when `args` is `None`).
async fn queue_declare(connection: &Connection, name: &str, args: Option<FieldTable>) -> bool {
    let channel = connection.create_channel().await.expect("channel");
    let options = QueueDeclareOptions {
        passive: args.is_none(),
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(name.into(), options, args.unwrap_or_default())
        .await
        .is_ok()
}

/// The partition queues' arguments, as the command declares them.
fn partition_args() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    args
}

#[tokio::test]
async fn topology_declare_routes_each_partition_key_to_one_queue_and_runs_again_as_a_no_op() {
    let exchange = TestExchange::new("topology");
    let partitions = Partitions::new(&exchange, 4);
    let first = partitions.declare(&exchange, &[]);
    assert!(first.ok, "{}{}", first.stdout, first.stderr);
    assert!(
        first.stdout.contains("8 exchange(s) and queue(s) created"),
        "{}",
        first.stdout
    );
    let second = partitions.declare(&exchange, &[]);
    assert!(second.ok, "{}{}", second.stdout, second.stderr);
    assert!(
        second
            .stdout
            .contains("nothing created: every exchange and queue existed"),
        "{}",
        second.stdout
    );
    assert!(!second.stdout.contains("created "), "{}", second.stdout);

    // The queues are quorum queues with a single active consumer: declared again
    // with those arguments they are taken, with a classic queue's refused.
    let connection = broker_connection().await;
    for i in 0..4 {
        let queue = partitions.queue(i);
        assert!(queue_declare(&connection, &queue, Some(partition_args())).await);
        assert!(!queue_declare(&connection, &queue, Some(FieldTable::default())).await);
    }

    // Events published as the relay does (to its exchange, with the
    // `partitionkey` header), each key twice: each copy lands in exactly one
    // queue, both copies of a key in the same one, and the keys spread.
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    let keys: Vec<String> = (0..64).map(|k| format!("whitepay/order-{k}")).collect();
    let publish = |routing_key: &'static str, key: String| {
        let channel = channel.clone();
        let exchange = exchange.to_string();
        async move {
            let mut headers = FieldTable::default();
            headers.insert(
                "partitionkey".into(),
                AMQPValue::LongString(key.as_str().into()),
            );
            channel
                .basic_publish(
                    exchange.as_str().into(),
                    routing_key.into(),
                    BasicPublishOptions::default(),
                    key.as_bytes(),
                    BasicProperties::default().with_headers(headers),
                )
                .await
                .expect("publish")
                .await
                .expect("confirm");
        }
    };
    for _copy in 0..2 {
        for key in &keys {
            publish("whitepay.order.succeeded", key.clone()).await;
        }
    }
    // A routing key the pattern does not match reaches no partition queue.
    publish("whitepay.refund.succeeded", "whitepay/refund-1".to_owned()).await;

    let mut queue_of: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
    let mut copies: BTreeMap<String, usize> = BTreeMap::new();
    let mut used = BTreeSet::new();
    for i in 0..4 {
        for body in partitions.drain(&connection, i).await {
            queue_of.entry(body.clone()).or_default().insert(i);
            *copies.entry(body).or_default() += 1;
            used.insert(i);
        }
    }
    assert_eq!(
        copies.keys().cloned().collect::<Vec<_>>(),
        keys.iter()
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>(),
        "every order event arrived, and no refund"
    );
    assert!(copies.values().all(|n| *n == 2), "{copies:?}");
    assert!(
        queue_of.values().all(|queues| queues.len() == 1),
        "a key in two queues: {queue_of:?}"
    );
    assert!(used.len() > 1, "64 keys all in one queue: {queue_of:?}");
}

#[tokio::test]
async fn topology_declare_names_a_conflicting_queue_and_declares_nothing() {
    let exchange = TestExchange::new("topology-conflict");
    let partitions = Partitions::new(&exchange, 3);
    let connection = broker_connection().await;
    // A classic queue in the place of partition 1.
    assert!(
        queue_declare(
            &connection,
            &partitions.queue(1),
            Some(FieldTable::default())
        )
        .await
    );

    let declared = partitions.declare(&exchange, &[]);
    assert!(!declared.ok, "{}", declared.stdout);
    let queue = partitions.queue(1);
    assert!(
        declared.stderr.contains(&format!("queue `{queue}`"))
            && declared.stderr.contains("x-queue-type")
            && declared.stderr.contains("Nothing was declared"),
        "{}",
        declared.stderr
    );

    // Nothing else was made: no hash exchange, no relay exchange, no other queue.
    assert!(!exchange_exists(&connection, &partitions.name).await);
    assert!(!exchange_exists(&connection, &exchange).await);
    for i in [0, 2] {
        assert!(!queue_declare(&connection, &partitions.queue(i), None).await);
    }
}

#[tokio::test]
async fn topology_declare_dry_run_declares_nothing() {
    let exchange = TestExchange::new("topology-dry");
    let partitions = Partitions::new(&exchange, 2);
    let declared = partitions.declare(&exchange, &["--dry-run"]);
    assert!(declared.ok, "{}{}", declared.stdout, declared.stderr);
    assert!(
        declared
            .stdout
            .contains(&format!("would create  queue `{}`", partitions.queue(1)))
            && declared.stdout.contains("nothing changed"),
        "{}",
        declared.stdout
    );
    let connection = broker_connection().await;
    assert!(!exchange_exists(&connection, &partitions.name).await);
    assert!(!exchange_exists(&connection, &exchange).await);
    for i in 0..2 {
        assert!(!queue_declare(&connection, &partitions.queue(i), None).await);
    }
}

#[test]
fn topology_declare_refuses_bad_arguments_before_reaching_the_broker() {
    // The exchange is never used: nothing is declared.
    for (args, says) in [
        (
            ["0", "*.order.*", "orders"],
            "--partitions 0 is out of range",
        ),
        (["4", "*.order.*", "amq.orders"], "reserved by the broker"),
        (["4", "order*", "orders"], "is not a topic pattern"),
        (["4", "*.order.*", "or ders"], "ASCII letters"),
    ] {
        let declared = topology_declare(
            "hookrelay-test-topology-unused",
            &[
                "--partitions",
                args[0],
                "--pattern",
                args[1],
                "--name",
                args[2],
            ],
        );
        assert!(
            !declared.ok && declared.stderr.contains(says),
            "{args:?}: {}",
            declared.stderr
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_classic_unrouted_queue_of_an_older_release_is_kept_with_a_warning() {
    let exchange = TestExchange::new("classicunrouted");
    let unrouted = hookrelay::amqp::unrouted_name(&exchange);
    // What a release before quorum queues declared: a durable classic queue.
    let connection = broker_connection().await;
    let channel = connection.create_channel().await.expect("channel");
    channel
        .queue_declare(
            unrouted.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("a classic queue");
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(&RelayConfig::new(&exchange, dir.path()));
    relay.wait_broker_connected().await;
    assert!(
        relay
            .logs()
            .iter()
            .any(|line| line.contains("the unrouted queue exists as a classic queue")),
        "the relay says what it kept and how to move it"
    );
    // Nothing is bound to the exchange: the webhook lands in the kept queue.
    let mut unrouted_consumer = Consumer::existing(&unrouted).await;
    let (code, _) = relay.post_whitepay(&whitepay_order("unrouted")).await;
    assert_eq!(code, 200);
    let kept = unrouted_consumer
        .next(Duration::from_secs(20))
        .await
        .expect("the event, in the classic unrouted queue");
    let event: serde_json::Value = serde_json::from_slice(&kept.data).expect("JSON");
    assert_eq!(event["subject"], "unrouted");
}
