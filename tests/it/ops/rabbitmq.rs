//! deploy/rabbitmq/definitions.json against a real broker and the relay's own
//! declare.

use std::collections::BTreeMap;

use base64::Engine;
use lapin::options::{
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Value, json};
use sha2::Digest;

use super::{ARRIVAL, json_file, text};
use crate::support::schema;
use crate::support::*;

fn amqp_arguments(args: &Value) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in args.as_object().into_iter().flatten() {
        let value = match value {
            Value::String(s) => AMQPValue::LongString(s.as_str().into()),
            Value::Bool(b) => AMQPValue::Boolean(*b),
            Value::Number(n) => AMQPValue::LongLongInt(n.as_i64().expect("integer argument")),
            other => panic!("unsupported argument {key}: {other}"),
        };
        table.insert(key.as_str().into(), value);
    }
    table
}

/// The relay's exchange in definitions.json: the topic exchange with an
/// alternate exchange.
pub(super) fn definitions_exchange(definitions: &Value) -> String {
    definitions["exchanges"]
        .as_array()
        .expect("exchanges")
        .iter()
        .find(|e| e["type"] == "topic" && e["arguments"]["alternate-exchange"].is_string())
        .map(|e| text(&e["name"]).to_owned())
        .expect("definitions.json declares the relay's topic exchange")
}

/// Deletes the renamed example queues when the test ends, also on failure.
struct QueueCleanup(Vec<String>);

impl Drop for QueueCleanup {
    fn drop(&mut self) {
        let queues = std::mem::take(&mut self.0);
        let _ = std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                runtime.block_on(async {
                    let connection = broker_connection().await;
                    if let Ok(channel) = connection.create_channel().await {
                        for queue in queues {
                            let _ = channel
                                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                                .await;
                        }
                    }
                });
            }
        })
        .join();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_definitions_match_the_relays_declare_and_route_the_example_queues() {
    let definitions = json_file("deploy/rabbitmq/definitions.json");
    let relay_exchange = definitions_exchange(&definitions);
    // RabbitMQ compares only some arguments on redeclare (for exchanges, only
    // `alternate-exchange`), so also require the exact arguments src/amqp.rs uses.
    let unrouted = hookrelay::amqp::unrouted_name(&relay_exchange);
    let find = |list: &str, name: &str| -> Value {
        definitions[list]
            .as_array()
            .expect("list")
            .iter()
            .find(|item| item["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("definitions.json {list} has {name}"))
    };
    let topic = find("exchanges", &relay_exchange);
    assert_eq!(
        topic["arguments"],
        json!({ "alternate-exchange": unrouted })
    );
    assert_eq!(topic["durable"], true);
    let fanout = find("exchanges", &unrouted);
    assert_eq!(
        (&fanout["type"], &fanout["durable"]),
        (&json!("fanout"), &json!(true))
    );
    assert_eq!(fanout["arguments"], json!({}));
    let queue = find("queues", &unrouted);
    assert_eq!(
        (&queue["durable"], &queue["auto_delete"]),
        (&json!(true), &json!(false))
    );
    assert_eq!(queue["arguments"], json!({}));
    // The same topology under a fresh name, so nothing shared is touched: `webhooks`
    // becomes the test exchange and every other name gets it as a prefix.
    let exchange = TestExchange::new("ops-defs");
    let rename = |name: &str| match name.strip_prefix(relay_exchange.as_str()) {
        Some(rest) => format!("{}{rest}", &*exchange),
        None => format!("{}.{name}", &*exchange),
    };
    let connection = broker_connection().await;
    let channel = connection.create_channel().await.expect("channel");
    for e in definitions["exchanges"].as_array().expect("exchanges") {
        let kind = match text(&e["type"]) {
            "topic" => lapin::ExchangeKind::Topic,
            "fanout" => lapin::ExchangeKind::Fanout,
            "direct" => lapin::ExchangeKind::Direct,
            "headers" => lapin::ExchangeKind::Headers,
            other => panic!("exchange type {other}"),
        };
        let mut args = e["arguments"].clone();
        if let Some(ae) = args.get_mut("alternate-exchange") {
            *ae = Value::String(rename(text(ae)));
        }
        channel
            .exchange_declare(
                rename(text(&e["name"])).as_str().into(),
                kind,
                ExchangeDeclareOptions {
                    durable: e["durable"] == true,
                    auto_delete: e["auto_delete"] == true,
                    internal: e["internal"] == true,
                    ..ExchangeDeclareOptions::default()
                },
                amqp_arguments(&args),
            )
            .await
            .unwrap_or_else(|err| panic!("declare exchange {}: {err}", e["name"]));
    }
    let mut cleanup = QueueCleanup(Vec::new());
    for q in definitions["queues"].as_array().expect("queues") {
        let name = rename(text(&q["name"]));
        if !name.starts_with(&format!("{}.unrouted", &*exchange)) {
            cleanup.0.push(name.clone());
        }
        channel
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    durable: q["durable"] == true,
                    auto_delete: q["auto_delete"] == true,
                    ..QueueDeclareOptions::default()
                },
                amqp_arguments(&q["arguments"]),
            )
            .await
            .unwrap_or_else(|err| panic!("declare queue {name}: {err}"));
    }
    let mut bound = BTreeMap::new();
    for b in definitions["bindings"].as_array().expect("bindings") {
        assert_eq!(b["destination_type"], "queue");
        let (queue, source) = (text(&b["destination"]), text(&b["source"]));
        channel
            .queue_bind(
                rename(queue).as_str().into(),
                rename(source).as_str().into(),
                text(&b["routing_key"]).into(),
                QueueBindOptions::default(),
                amqp_arguments(&b["arguments"]),
            )
            .await
            .expect("bind");
        bound.insert(text(&b["routing_key"]).to_owned(), queue.to_owned());
    }
    for (pattern, queue) in [
        ("*.order.*", "orders"),
        ("*.refund.*", "refunds"),
        ("*.withdrawal.*", "withdrawals"),
    ] {
        assert_eq!(bound.get(pattern).map(String::as_str), Some(queue));
    }

    // The relay redeclares the same topology at connect: had definitions.json used
    // other arguments, the broker would refuse with PRECONDITION_FAILED and the
    // relay would never report a connection.
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(&RelayConfig::new(&exchange, dir.path()));
    relay.wait_broker_connected().await;
    let mut orders = Consumer::existing(&rename("orders")).await;
    let mut withdrawals = Consumer::existing(&rename("withdrawals")).await;
    let mut unrouted = Consumer::existing(&rename(&format!("{relay_exchange}.unrouted"))).await;
    for (name, consumer, key) in [
        (
            "order_completed.json",
            &mut orders,
            "whitepay.order.succeeded",
        ),
        (
            "withdrawal_completed.json",
            &mut withdrawals,
            "whitepay.withdrawal.succeeded",
        ),
        (
            "transaction_completed.json",
            &mut unrouted,
            "whitepay.transaction.succeeded",
        ),
    ] {
        assert_eq!(relay.post_whitepay(&fixture("whitepay", name)).await.0, 200);
        let delivery = consumer
            .next(ARRIVAL)
            .await
            .unwrap_or_else(|| panic!("{name} reaches its queue"));
        assert_eq!(delivery.routing_key.as_str(), key);
        schema::assert_valid_message(&delivery);
    }
}

/// RabbitMQ's `rabbit_password_hashing_sha256`: base64(salt ‖ SHA-256(salt ‖ password)).
pub(super) fn rabbitmq_password_matches(hash_b64: &str, password: &str) -> bool {
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(hash_b64) else {
        return false;
    };
    if raw.len() != 4 + 32 {
        return false;
    }
    let (salt, digest) = raw.split_at(4);
    let mut hasher = sha2::Sha256::new();
    hasher.update(salt);
    hasher.update(password.as_bytes());
    hasher.finalize().as_slice() == digest
}
