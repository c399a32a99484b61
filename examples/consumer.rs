//! A small consumer of hookrelay's events: binds a durable queue to every provider's
//! order events (`*.order.*`), takes a bounded number of unacknowledged messages at a
//! time (prefetch), processes each, and acknowledges it only afterwards (manual
//! acks), skipping duplicates by `message_id`.
//!
//! ```sh
//! # against the compose stack (docker compose up):
//! cargo run --example consumer -- amqp://hookrelay:hookrelay@127.0.0.1:5672/%2f
//! # against the broker the tests use:
//! cargo run --example consumer -- amqp://guest:guest@127.0.0.1:5672/%2f
//! ```
//!
//! Arguments: broker URL (default the tests' broker), exchange (default `webhooks`),
//! queue (default `orders`, the example queue of `deploy/rabbitmq/definitions.json`).
//! The event contract is `docs/events.md`.
//!
//! What a production consumer must add, beyond this example:
//! - **Durable dedup.** The seen-set here lives in memory and is lost on restart. Record
//!   `message_id` in the same database transaction as the effect of the event (e.g. a
//!   `processed_events` table with a unique key), so "processed" and "recorded as
//!   processed" cannot diverge; keep ids at least as long as the relay's
//!   `HOOKRELAY_RETENTION` (a replay can resend anything younger).
//! - **Ordering by subject.** Events of one `subject` leave the relay in order, but
//!   with prefetch above 1, several consumers, or a requeue, they can be handled out
//!   of order. Compare the provider's status or time with what you stored and ignore
//!   regressions (an `order.pending` after `order.succeeded`).
//! - **Poison messages.** A message that always fails would be redelivered forever.
//!   Use a quorum queue with `x-delivery-limit` and a dead-letter exchange
//!   (`x-dead-letter-exchange`) so it is parked for a person instead.
//! - **Reconnection.** This example exits when the connection drops; a service
//!   reconnects with backoff and re-declares its queue and bindings.
//! - **Money as text.** Parse `data.amount` with a decimal type, never a float; read
//!   provider specifics from `data.payload`, which is the provider's JSON verbatim.
//! - **Observability.** Continue the trace from the `traceparent` header; count
//!   processed, duplicate and failed messages.

use std::collections::HashSet;

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};
use serde_json::Value;

/// At most this many messages are delivered and not yet acknowledged: bounds memory
/// and the work redone after a crash, and lets other consumers share the queue.
const PREFETCH: u16 = 16;

/// What processing decided for a message.
enum Outcome {
    /// Done (or already done): acknowledge.
    Done,
    /// Will never succeed (not a hookrelay envelope): reject without requeue, so the
    /// queue's dead-letter exchange (if any) keeps it.
    Reject(String),
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let exchange = args
        .get(2)
        .cloned()
        .unwrap_or_else(|| "webhooks".to_owned());
    let queue = args.get(3).cloned().unwrap_or_else(|| "orders".to_owned());

    let connection = Connection::connect(
        &url,
        ConnectionProperties::default().with_connection_name("hookrelay-example-consumer".into()),
    )
    .await?;
    let channel = connection.create_channel().await?;

    // Declare what we depend on, with the relay's exact arguments (a mismatch is a
    // PRECONDITION_FAILED), so the example works with or without the compose
    // stack's definitions.
    hookrelay::amqp::declare_topology(&channel, &exchange).await?;
    // A durable quorum queue survives broker restarts and is replicated in a
    // cluster; the arguments match deploy/rabbitmq/definitions.json.
    let mut queue_args = FieldTable::default();
    queue_args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            queue_args,
        )
        .await?;
    channel
        .queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            "*.order.*".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await?;

    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "hookrelay-example".into(),
            // no_ack = false: the broker keeps each message until we ack it, and
            // redelivers it if we die first.
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    println!("consuming {queue} (bound to {exchange} with *.order.*), prefetch {PREFETCH}");

    let mut seen: HashSet<String> = HashSet::new();
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        // Delivery is at least once: the same event can arrive again (a relay crash
        // between the broker's confirm and its own bookkeeping, a replay). The
        // message_id is the event id, stable across all of those.
        let id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.to_string());
        let outcome = match id {
            None => Outcome::Reject("no message_id".to_owned()),
            Some(id) if seen.contains(&id) => {
                println!("duplicate {id}: already processed, acknowledging");
                Outcome::Done
            }
            Some(id) => {
                let outcome = process(delivery.routing_key.as_str(), &delivery.data);
                if matches!(outcome, Outcome::Done) {
                    seen.insert(id);
                }
                outcome
            }
        };
        // Acknowledge only after the work is done: a crash before this line means
        // the broker redelivers, and the dedup above makes that harmless.
        match outcome {
            Outcome::Done => {
                delivery.ack(BasicAckOptions::default()).await?;
            }
            Outcome::Reject(why) => {
                eprintln!("rejecting message: {why}");
                delivery
                    .nack(BasicNackOptions {
                        requeue: false,
                        ..BasicNackOptions::default()
                    })
                    .await?;
            }
        }
    }
    Ok(())
}

/// The business logic: here, print the normalized facts. Amounts stay text.
fn process(routing_key: &str, body: &[u8]) -> Outcome {
    let envelope: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(e) => return Outcome::Reject(format!("body is not JSON: {e}")),
    };
    if envelope["specversion"] != "1.0" {
        return Outcome::Reject("not a CloudEvents 1.0 envelope".to_owned());
    }
    let data = &envelope["data"];
    let field = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    println!(
        "{routing_key}: {} {} order {} (merchant {}) amount {} {}",
        field(&envelope["type"]),
        field(&envelope["subject"]),
        field(&data["order_id"]),
        field(&data["merchant_order_id"]),
        field(&data["amount"]),
        field(&data["currency"]),
    );
    Outcome::Done
}
