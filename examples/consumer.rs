//! The reference consumer of one partition queue of `hookrelay topology declare`
//! (see `examples/README.md` and `docs/events.md#partitioned-consumers`): it takes
//! a bounded number of unacknowledged messages at a time (prefetch), keeps per
//! `partitionkey` the last `sequence` it processed, and acknowledges a message only
//! after its work committed.
//!
//! ```sh
//! hookrelay topology declare --partitions 4 --pattern '*.order.*' --name orders
//! cargo run --example consumer -- amqp://guest:guest@127.0.0.1:5672/%2f orders.0
//! ```
//!
//! Arguments: broker URL (default the tests' broker), queue (default `orders.0`).
//! The queue must exist (the command declares it); this consumer declares nothing.
//!
//! What it does with each event, by its `sequence` against the last one processed
//! for its `partitionkey`:
//! - **next** (`last + 1`, or the first seen of the key): processed.
//! - **at or below the last**: a duplicate (delivery is at least once) or a replay
//!   of something already processed: acknowledged without work. The one exception
//!   is a number recorded as missing (below): that is a late event.
//! - **a gap** (`sequence > last + 1`): logged, and the event (with any later one of
//!   its key) is held, unacknowledged, for at most [`GAP_PATIENCE`] while the
//!   other keys of the queue go on. If the missing numbers arrive meanwhile they
//!   are processed first; otherwise the held events are processed and the
//!   numbers recorded as missing. The wait is short on purpose: the queue has a
//!   single active consumer and the relay publishes a key's events in order, so a
//!   number missing from the queue is almost always an event an operator released
//!   (`hookrelay outbox release`), which comes only if someone replays it, maybe
//!   days later; and held messages take prefetch slots from every other key.
//! - **a late event** (a missing number that arrives after all, replayed): logged
//!   as "late event filled gap N" and processed; the work must not let it overwrite
//!   newer state (it is older than what was applied).
//! - **stale** (header `stale`): the provider's status went backwards (e.g.
//!   `pending` after `succeeded`). It is in order and counts as processed, but the
//!   work records it without applying the older status.
//!
//! What a production consumer must add, beyond this example:
//! - **Durable state.** `last` per key lives in memory here and is lost on restart
//!   (the first event of a key after a restart is taken as it comes). Keep it in
//!   the same database transaction as the work, so "processed" and "recorded as
//!   processed" cannot diverge; that also makes the dedup durable.
//! - **Poison messages.** A message that always fails is redelivered forever, and on
//!   a single-active-consumer queue it holds every key behind it. Declare the
//!   queues with `x-delivery-limit` and a dead-letter exchange, or park the message
//!   yourself and alert a person.
//! - **Reconnection.** This example exits when the connection drops; a service
//!   reconnects with backoff (another consumer of the queue, waiting, takes over
//!   meanwhile).
//! - **Money as text.** Parse `data.amount` with a decimal type, never a float; read
//!   provider specifics from `data.payload`, which is the provider's JSON verbatim.
//! - **Observability.** Continue the trace from the `traceparent` header; count
//!   processed, duplicate, gapped, late and failed messages.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};
use serde_json::Value;

/// At most this many messages are delivered and not yet acknowledged: bounds memory
/// and the work redone after a crash. Messages still arrive in queue order.
const PREFETCH: u16 = 16;

/// At most this many missing numbers are remembered per key: a gap of millions
/// (a mistaken release of a whole backlog) must not fill memory. Past it, a late
/// event is taken for a duplicate, which a production consumer's durable state
/// would tell apart.
const MAX_MISSING: usize = 1024;

/// How long events after a gap are held for the missing numbers before going on
/// without them.
const GAP_PATIENCE: Duration = Duration::from_secs(5);

/// How long to wait before a message whose work failed is delivered again.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// What the consumer knows of one `partitionkey`.
#[derive(Default)]
struct KeyState {
    /// The highest sequence processed.
    last: i64,
    /// Numbers skipped by a gap and not seen since.
    missing: BTreeSet<i64>,
}

/// Where an event stands against its key's state.
#[derive(Debug, PartialEq, Eq)]
enum Place {
    /// The next one (or the first seen of the key).
    Next,
    /// After a gap: the numbers in between are missing.
    Gap { from: i64, to: i64 },
    /// A number recorded as missing, arriving late.
    Late,
    /// Already processed (or older than anything missing).
    Duplicate,
}

impl KeyState {
    fn place(state: Option<&Self>, sequence: i64) -> Place {
        let Some(state) = state else {
            return Place::Next;
        };
        match sequence {
            s if s == state.last + 1 => Place::Next,
            s if s > state.last + 1 => Place::Gap {
                from: state.last + 1,
                to: s - 1,
            },
            s if state.missing.contains(&s) => Place::Late,
            _ => Place::Duplicate,
        }
    }

    /// Records that `sequence` was processed at `place`.
    fn processed(&mut self, sequence: i64, place: &Place) {
        match place {
            Place::Next => self.last = sequence,
            Place::Gap { from, to } => {
                let room = MAX_MISSING.saturating_sub(self.missing.len());
                self.missing.extend((*from..=*to).take(room));
                self.last = sequence;
            }
            Place::Late => {
                self.missing.remove(&sequence);
            }
            Place::Duplicate => {}
        }
    }
}

/// The ordering facts of one event, from its AMQP headers (or, failing those,
/// its CloudEvent extension attributes).
struct Ordering {
    key: String,
    sequence: i64,
    stale: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let queue = args
        .get(2)
        .cloned()
        .unwrap_or_else(|| "orders.0".to_owned());

    let connection = Connection::connect(
        &url,
        ConnectionProperties::default()
            .with_connection_name(format!("hookrelay-example-consumer {queue}").into()),
    )
    .await?;
    let channel = connection.create_channel().await?;
    // Passive: the queue's arguments (quorum, single active consumer) are the
    // topology command's to declare; a consumer that declared them too would
    // have to repeat them exactly.
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    if let Err(e) = channel
        .queue_declare(queue.as_str().into(), passive, FieldTable::default())
        .await
    {
        return Err(format!(
            "queue {queue} not found ({e}): declare it with \
             `hookrelay topology declare --partitions N --pattern PATTERN --name NAME`"
        )
        .into());
    }
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "hookrelay-example".into(),
            // no_ack = false: the broker keeps each message until we ack it, and
            // redelivers it (to us or the consumer that takes over) if we die first.
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    println!(
        "consuming {queue}, prefetch {PREFETCH} (if another consumer is active on it, this one waits)"
    );

    let mut keys: HashMap<String, KeyState> = HashMap::new();
    let mut held: HashMap<String, Held> = HashMap::new();
    loop {
        let due = held.values().map(|h| h.until).min();
        tokio::select! {
            delivery = consumer.next() => {
                let Some(delivery) = delivery else { break };
                take(&mut keys, &mut held, delivery?).await?;
            }
            () = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                let now = Instant::now();
                let expired: Vec<String> = held
                    .iter()
                    .filter(|(_, h)| h.until <= now)
                    .map(|(key, _)| key.clone())
                    .collect();
                for key in expired {
                    if let Some(h) = held.remove(&key) {
                        println!("{key}: gap not filled within {GAP_PATIENCE:?}; going on");
                        for event in h.events {
                            handle(&mut keys, event).await?;
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// Events of one key held after a gap, in arrival order, until `until`.
struct Held {
    until: Instant,
    events: VecDeque<Event>,
}

/// A delivery with what was read out of it, once.
struct Event {
    delivery: Delivery,
    envelope: Value,
    order: Ordering,
}

/// Reads a delivery; handles at once what has no place in a sequence (not a
/// CloudEvent: rejected; no ordering facts: processed), and otherwise handles
/// the event or holds it behind a gap of its key. A gap starts a hold; while a
/// key is held its later events join the hold, and the missing number itself is
/// handled at once, after which the held events that no longer follow a gap are
/// handled too.
async fn take(
    keys: &mut HashMap<String, KeyState>,
    held: &mut HashMap<String, Held>,
    delivery: Delivery,
) -> Result<(), lapin::Error> {
    let envelope = match serde_json::from_slice::<Value>(&delivery.data) {
        Ok(value) if value["specversion"] == "1.0" => value,
        // Will never succeed: reject without requeue, so the queue's dead-letter
        // exchange (if any) keeps it.
        _ => {
            eprintln!("rejecting a message that is not a CloudEvents 1.0 envelope");
            let reject = BasicNackOptions {
                requeue: false,
                ..BasicNackOptions::default()
            };
            return delivery.nack(reject).await.map(|_| ());
        }
    };
    let Some(order) = ordering(&delivery, &envelope) else {
        // Published by a relay older than the ordering headers: nothing to
        // compare; production dedupes these on `message_id`.
        println!("no partitionkey/sequence: processed without order checks");
        return finish(&delivery, commit(&envelope, false)).await;
    };
    let event = Event {
        delivery,
        envelope,
        order,
    };
    let (key, sequence) = (event.order.key.clone(), event.order.sequence);
    let place = KeyState::place(keys.get(&key), sequence);
    if let Some(h) = held.get_mut(&key) {
        if !matches!(place, Place::Next) {
            h.events.push_back(event);
            return Ok(());
        }
        println!("{key}: #{sequence} arrived while the later events waited");
        handle(keys, event).await?;
        // The held events that now follow on (or are duplicates) go; a hold
        // behind a further gap keeps waiting until its deadline.
        while let Some(h) = held.get_mut(&key) {
            let Some(next) = h.events.pop_front() else {
                held.remove(&key);
                break;
            };
            let place = KeyState::place(keys.get(&key), next.order.sequence);
            if matches!(place, Place::Gap { .. }) {
                h.events.push_front(next);
                break;
            }
            handle(keys, next).await?;
        }
        return Ok(());
    }
    if let Place::Gap { from, to } = place {
        println!("{key} #{sequence}: gap, #{from}..=#{to} missing; waiting up to {GAP_PATIENCE:?}");
        held.insert(
            key,
            Held {
                until: Instant::now() + GAP_PATIENCE,
                events: VecDeque::from([event]),
            },
        );
        return Ok(());
    }
    handle(keys, event).await
}

/// Places, works, and acknowledges one event.
async fn handle(keys: &mut HashMap<String, KeyState>, event: Event) -> Result<(), lapin::Error> {
    let Event {
        delivery,
        envelope,
        order,
    } = event;
    let place = KeyState::place(keys.get(&order.key), order.sequence);
    let (key, sequence) = (&order.key, order.sequence);
    match &place {
        Place::Duplicate => {
            println!("{key} #{sequence}: already processed (duplicate or replay), acknowledged");
            return delivery.ack(BasicAckOptions::default()).await.map(|_| ());
        }
        Place::Gap { from, to } => println!(
            "{key} #{sequence}: #{from}..=#{to} recorded as missing (released, or replayed later)"
        ),
        Place::Late => println!("{key}: late event filled gap {sequence}"),
        Place::Next => {}
    }
    let result = commit(&envelope, order.stale);
    if result.is_ok() {
        keys.entry(order.key)
            .or_default()
            .processed(sequence, &place);
    }
    finish(&delivery, result).await
}

/// Acknowledges after the work committed; after a failure, requeues (the message
/// goes back, and this key's later events wait behind it on this queue).
async fn finish(delivery: &Delivery, committed: Result<(), String>) -> Result<(), lapin::Error> {
    match committed {
        Ok(()) => delivery.ack(BasicAckOptions::default()).await.map(|_| ()),
        Err(why) => {
            eprintln!("work failed ({why}); delivered again in {RETRY_DELAY:?}");
            tokio::time::sleep(RETRY_DELAY).await;
            delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await
                .map(|_| ())
        }
    }
}

/// The ordering facts: the AMQP headers `partitionkey` (string), `sequence`
/// (signed 64-bit) and `stale` (true when present), or else the envelope's
/// extension attributes of the same names (`sequence` a zero-padded decimal,
/// `stale` `true` or `"true"`).
fn ordering(delivery: &Delivery, envelope: &Value) -> Option<Ordering> {
    let headers = delivery.properties.headers().as_ref();
    let header = |name: &str| headers.and_then(|h| h.inner().get(name));
    let key = match header("partitionkey") {
        Some(AMQPValue::LongString(text)) => Some(text.to_string()),
        Some(AMQPValue::ShortString(text)) => Some(text.to_string()),
        _ => None,
    }
    .or_else(|| envelope["partitionkey"].as_str().map(str::to_owned))?;
    let sequence = match header("sequence") {
        Some(AMQPValue::LongLongInt(n)) => Some(*n),
        Some(AMQPValue::LongInt(n)) => Some(i64::from(*n)),
        Some(AMQPValue::LongUInt(n)) => Some(i64::from(*n)),
        _ => None,
    }
    .or_else(|| envelope["sequence"].as_str()?.parse().ok())?;
    let stale = matches!(header("stale"), Some(AMQPValue::Boolean(true)))
        || envelope["stale"] == true
        || envelope["stale"] == "true";
    Some(Ordering {
        key,
        sequence,
        stale,
    })
}

/// The business logic and its commit, in one transaction in production (with the
/// key's new `last`): here, print the normalized facts. Amounts stay text.
fn commit(envelope: &Value, stale: bool) -> Result<(), String> {
    let data = &envelope["data"];
    let field = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    let applied = if stale {
        "recorded, not applied (stale: the status went backwards)"
    } else {
        "applied"
    };
    println!(
        "{} {} order {} (merchant {}) amount {} {}: {applied}",
        field(&envelope["type"]),
        field(&envelope["subject"]),
        field(&data["order_id"]),
        field(&data["merchant_order_id"]),
        field(&data["amount"]),
        field(&data["currency"]),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Processes `sequences` of one key in order; what each was taken for.
    fn run(sequences: &[i64]) -> Vec<Place> {
        let mut state: Option<KeyState> = None;
        sequences
            .iter()
            .map(|&s| {
                let place = KeyState::place(state.as_ref(), s);
                state
                    .get_or_insert_with(KeyState::default)
                    .processed(s, &place);
                place
            })
            .collect()
    }

    #[test]
    fn duplicates_gaps_and_late_events() {
        assert_eq!(
            run(&[1, 2, 2, 5, 3, 3, 6, 1]),
            [
                Place::Next,
                Place::Next,
                Place::Duplicate,
                Place::Gap { from: 3, to: 4 },
                Place::Late,
                Place::Duplicate,
                Place::Next,
                Place::Duplicate,
            ]
        );
        // The first seen of a key is taken as it comes (no state yet).
        assert_eq!(run(&[7, 8]), [Place::Next, Place::Next]);
    }
}
