//! RabbitMQ side of the bench: the scenario's topology and its clean-up, the
//! consumer that checks conservation and end-to-end latency, and the broker
//! ceiling (a lapin publisher with a window of outstanding confirms). The TCP proxy
//! that cuts the relay off the broker is the testkit's.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_lite::StreamExt;
use hdrhistogram::Histogram;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use tokio::task::JoinHandle;

use crate::load::{self, histogram};

/// Consumer prefetch, and how many deliveries one multiple-ack covers at most.
const PREFETCH: u16 = 1024;
const ACK_EVERY: u64 = 128;
/// Routing key the relay gives a completed Whitepay order.
pub const ROUTING_KEY: &str = "whitepay.order.succeeded";

/// The type of the bench's queue (`--queue-type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum QueueKind {
    /// Replicated (Raft), what a production consumer declares on a cluster; the
    /// queue of the side-by-side comparison with Svix Bridge.
    Quorum,
    /// A single-node classic queue, the bench's queue before round 3.
    Classic,
}

impl QueueKind {
    fn arguments(self) -> FieldTable {
        let mut arguments = FieldTable::default();
        if self == Self::Quorum {
            arguments.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
        }
        arguments
    }
}

/// Exchanges declared by this process, deleted (with their queues) by
/// [`cleanup_all`] even when a scenario fails.
static DECLARED: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// Connects to the broker (loopback only), bounded by 10 s.
pub async fn connect(broker: &str, name: &str) -> anyhow::Result<Connection> {
    let addr: SocketAddr = broker
        .parse()
        .with_context(|| format!("broker address {broker}"))?;
    hookrelay_testkit::http::ensure_loopback(addr)?;
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect(&format!("amqp://guest:guest@{broker}/%2f"), properties),
    )
    .await
    .with_context(|| format!("connecting to RabbitMQ on {broker} timed out"))?
    .with_context(|| format!("cannot connect to RabbitMQ on {broker} (is it running?)"))
}

/// The bench's queue on a scenario's exchange.
pub fn queue_name(exchange: &str) -> String {
    format!("{exchange}.bench")
}

/// Declares the relay's topology (`hookrelay::amqp::declare_topology`, the same
/// arguments as the relay) and a durable queue of type `kind` bound with `#`, so it
/// receives every event, as a production consumer's queue would.
pub async fn declare(
    connection: &Connection,
    exchange: &str,
    kind: QueueKind,
) -> anyhow::Result<String> {
    let queue = queue_name(exchange);
    DECLARED
        .lock()
        .expect("declared")
        .push((exchange.to_owned(), queue.clone()));
    let channel = connection.create_channel().await?;
    hookrelay::amqp::declare_topology(&channel, exchange).await?;
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            kind.arguments(),
        )
        .await?;
    channel
        .queue_bind(
            queue.as_str().into(),
            exchange.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let _ = channel.close(200, "declared".into()).await;
    Ok(queue)
}

/// Deletes every exchange this process declared, with its `.unrouted` exchange and
/// queue and the bench queue. Bounded by 10 s per exchange.
pub async fn cleanup_all(broker: &str) {
    let declared: Vec<(String, String)> = std::mem::take(&mut *DECLARED.lock().expect("declared"));
    if declared.is_empty() {
        return;
    }
    let Ok(connection) = connect(broker, "hookrelay-bench cleanup").await else {
        eprintln!("bench: cannot reach the broker to delete {declared:?}");
        return;
    };
    for (exchange, queue) in declared {
        let work = async {
            let channel = connection.create_channel().await?;
            let unrouted = hookrelay::amqp::unrouted_name(&exchange);
            for q in [queue.as_str(), unrouted.as_str()] {
                channel
                    .queue_delete(q.into(), QueueDeleteOptions::default())
                    .await?;
            }
            for x in [exchange.as_str(), unrouted.as_str()] {
                channel
                    .exchange_delete(x.into(), ExchangeDeleteOptions::default())
                    .await?;
            }
            let _ = channel.close(200, "cleaned".into()).await;
            Ok::<(), lapin::Error>(())
        };
        match tokio::time::timeout(Duration::from_secs(10), work).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("bench: deleting {exchange}: {e}"),
            Err(_) => eprintln!("bench: deleting {exchange} timed out"),
        }
    }
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        connection.close(200, "bench done".into()),
    )
    .await;
}

/// First deliveries of a scenario's messages.
#[derive(Clone, Copy)]
pub struct Seen {
    pub seq: u64,
    pub sent_us: u64,
    pub consumed_us: u64,
}

/// What the consumer saw.
#[derive(Default)]
pub struct Consumed {
    /// First delivery of each message, in arrival order.
    pub first: Vec<Seen>,
    /// Deliveries of a message already seen.
    pub duplicates: u64,
    /// Messages that did not carry an order id of this scenario.
    pub foreign: u64,
    /// Total bytes of message bodies.
    pub bytes: u64,
    /// Set when the consumer stopped on a broker error.
    pub error: Option<String>,
}

impl Consumed {
    /// End-to-end latency (sent → consumed) of first deliveries sent inside a window.
    pub fn end_to_end(&self, epoch: Instant, window: (Instant, Instant)) -> Histogram<u64> {
        let (from, to) = (us(epoch, window.0), us(epoch, window.1));
        let mut h = histogram();
        for s in self
            .first
            .iter()
            .filter(|s| s.sent_us >= from && s.sent_us < to)
        {
            h.saturating_record(s.consumed_us.saturating_sub(s.sent_us).max(1));
        }
        h
    }

    /// First deliveries consumed inside a window, per second.
    pub fn rate_in(&self, epoch: Instant, window: (Instant, Instant)) -> f64 {
        let (from, to) = (us(epoch, window.0), us(epoch, window.1));
        let n = self
            .first
            .iter()
            .filter(|s| s.consumed_us >= from && s.consumed_us < to)
            .count();
        n as f64 / ((to - from) as f64 / 1e6).max(1e-6)
    }

    /// Average message size in bytes.
    pub fn mean_bytes(&self) -> f64 {
        let n = self.first.len() as u64 + self.duplicates + self.foreign;
        if n == 0 {
            0.0
        } else {
            self.bytes as f64 / n as f64
        }
    }

    /// Acked requests that never arrived; messages that arrived without a 200
    /// (their request failed or timed out on the client side after the relay had
    /// stored it, so they are not losses).
    pub fn conservation(&self, acked: &[u64]) -> (u64, u64) {
        let mut seen = Bits::default();
        for s in &self.first {
            seen.insert(s.seq);
        }
        let lost = acked.iter().filter(|seq| !seen.contains(**seq)).count() as u64;
        let mut was_acked = Bits::default();
        for seq in acked {
            was_acked.insert(*seq);
        }
        let unacked = self
            .first
            .iter()
            .filter(|s| !was_acked.contains(s.seq))
            .count() as u64;
        (lost, unacked)
    }
}

/// Microseconds from `epoch` to `t`.
pub fn us(epoch: Instant, t: Instant) -> u64 {
    t.saturating_duration_since(epoch).as_micros() as u64
}

/// A growable bit set of sequence numbers.
#[derive(Default)]
struct Bits(Vec<u64>);

impl Bits {
    /// Sets `n`; returns whether it was new.
    fn insert(&mut self, n: u64) -> bool {
        let (word, bit) = ((n / 64) as usize, n % 64);
        if word >= self.0.len() {
            self.0.resize(word + 1, 0);
        }
        let new = self.0[word] & (1 << bit) == 0;
        self.0[word] |= 1 << bit;
        new
    }

    fn contains(&self, n: u64) -> bool {
        self.0
            .get((n / 64) as usize)
            .is_some_and(|w| w & (1 << (n % 64)) != 0)
    }
}

/// A running consumer on a scenario's queue.
pub struct Consumer {
    stop: tokio::sync::watch::Sender<bool>,
    task: JoinHandle<Consumed>,
    unique: Arc<AtomicU64>,
    _connection: Connection,
}

impl Consumer {
    /// Starts consuming `queue`, keeping messages whose order id starts with `tag`.
    pub async fn start(
        broker: &str,
        queue: &str,
        tag: &str,
        epoch: Instant,
    ) -> anyhow::Result<Self> {
        let connection = connect(broker, "hookrelay-bench consumer").await?;
        let channel = connection.create_channel().await?;
        channel
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await?;
        let mut deliveries = channel
            .basic_consume(
                queue.into(),
                "hookrelay-bench".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let unique = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&unique);
        let tag = tag.to_owned();
        let task = tokio::spawn(async move {
            let mut out = Consumed::default();
            let mut seen = Bits::default();
            let mut unacked: Option<u64> = None;
            let mut unacked_count = 0u64;
            // A safety bound: no consumer outlives an hour.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(3600);
            loop {
                let next = tokio::select! {
                    biased;
                    _ = stopped.wait_for(|s| *s) => break,
                    () = tokio::time::sleep_until(deadline) => break,
                    next = tokio::time::timeout(Duration::from_millis(100), deliveries.next()) => next,
                };
                match next {
                    Ok(Some(Ok(delivery))) => {
                        let consumed_us = us(epoch, Instant::now());
                        out.bytes += delivery.data.len() as u64;
                        match subject(&delivery.data).and_then(|s| load::parse_order_id(&tag, &s)) {
                            Some((seq, sent_us)) => {
                                if seen.insert(seq) {
                                    out.first.push(Seen {
                                        seq,
                                        sent_us,
                                        consumed_us,
                                    });
                                    counter.fetch_add(1, Ordering::Relaxed);
                                } else {
                                    out.duplicates += 1;
                                }
                            }
                            None => out.foreign += 1,
                        }
                        unacked = Some(delivery.delivery_tag);
                        unacked_count += 1;
                        if unacked_count >= ACK_EVERY {
                            if let Err(e) = ack_up_to(&channel, unacked.take()).await {
                                out.error = Some(e.to_string());
                                break;
                            }
                            unacked_count = 0;
                        }
                    }
                    Ok(Some(Err(e))) => {
                        out.error = Some(e.to_string());
                        break;
                    }
                    Ok(None) => break,
                    Err(_) => {
                        // Idle for 100 ms: ack what was taken so far.
                        if let Err(e) = ack_up_to(&channel, unacked.take()).await {
                            out.error = Some(e.to_string());
                            break;
                        }
                        unacked_count = 0;
                    }
                }
            }
            let _ = ack_up_to(&channel, unacked.take()).await;
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                channel.close(200, "consumer done".into()),
            )
            .await;
            out
        });
        Ok(Self {
            stop,
            task,
            unique,
            _connection: connection,
        })
    }

    /// Distinct messages of this scenario consumed so far.
    pub fn unique(&self) -> u64 {
        self.unique.load(Ordering::Relaxed)
    }

    /// Stops and returns what was consumed.
    pub async fn finish(self) -> anyhow::Result<Consumed> {
        let _ = self.stop.send(true);
        let consumed = tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .context("the consumer did not stop within 30 s")??;
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            self._connection.close(200, "bench done".into()),
        )
        .await;
        Ok(consumed)
    }
}

async fn ack_up_to(channel: &lapin::Channel, tag: Option<u64>) -> Result<(), lapin::Error> {
    match tag {
        Some(tag) => {
            channel
                .basic_ack(tag, BasicAckOptions { multiple: true })
                .await
        }
        None => Ok(()),
    }
}

/// The `subject` of a CloudEvent, or the order id of a raw Whitepay body (what
/// the `peer` scenario's Svix Bridge publishes).
fn subject(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Order {
        id: String,
    }
    #[derive(serde::Deserialize)]
    struct Envelope {
        subject: Option<String>,
        order: Option<Order>,
    }
    let envelope = serde_json::from_slice::<Envelope>(body).ok()?;
    envelope.subject.or(envelope.order.map(|o| o.id))
}

/// A CloudEvent shaped like the relay's for a completed Whitepay order (same
/// fields, same embedded payload, same size within a few bytes).
pub fn envelope(order_id: &str) -> String {
    let payload = load::whitepay_order(order_id);
    let event_id = uuid::Uuid::new_v4();
    format!(
        r#"{{"specversion":"1.0","id":"{event_id}","source":"/webhooks/whitepay","type":"order.succeeded","subject":"{order_id}","time":"2024-01-02T03:04:05Z","datacontenttype":"application/json","provider":"whitepay","data":{{"provider":"whitepay","source":"whitepay","kind":"order","status":"succeeded","provider_event_type":"order::completed","provider_status":"COMPLETE","order_id":"{order_id}","merchant_order_id":"m-{order_id}","amount":"200.10","currency":"UAH","received_at":"2024-01-02T03:04:05.123456Z","payload":{payload}}}}}"#
    )
}

/// Message properties as the relay sets them.
fn properties(message_id: &str) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (key, value) in [
        ("provider", "whitepay"),
        ("source", "whitepay"),
        ("kind", "order"),
        ("status", "succeeded"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
    ] {
        headers.insert(key.into(), AMQPValue::LongString(value.into()));
    }
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/cloudevents+json".into())
        .with_message_id(message_id.into())
        .with_timestamp(1_700_000_000)
        .with_type("order.succeeded".into())
        .with_app_id("hookrelay".into())
        .with_headers(headers)
}

/// What the broker ceiling measured.
pub struct CeilingRun {
    /// Confirmed (acked, not returned) publishes of the measured window.
    pub confirmed: u64,
    /// Nacked or returned publishes (should be 0).
    pub refused: u64,
    /// Every publish that was confirmed, warm-up included (for conservation).
    pub acked: Vec<u64>,
    pub window: (Instant, Instant),
    /// Publish → confirm latency.
    pub confirm_latency: Histogram<u64>,
}

impl CeilingRun {
    /// A run over `window` that has confirmed nothing yet.
    fn nothing_yet(window: (Instant, Instant)) -> Self {
        Self {
            confirmed: 0,
            refused: 0,
            acked: Vec::new(),
            window,
            confirm_latency: histogram(),
        }
    }
}

/// Publishes relay-shaped persistent messages for `warmup + duration` from
/// `publishers` tasks, each on a connection of its own with up to `window`
/// confirms outstanding (a sliding window); what they measured, merged.
#[allow(clippy::too_many_arguments)]
pub async fn publish_ceiling(
    broker: &str,
    exchange: &str,
    tag: &str,
    epoch: Instant,
    publishers: usize,
    window: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<CeilingRun> {
    let start = Instant::now();
    let (from, end) = (start + warmup, start + warmup + duration);
    let publishers = publishers.max(1);
    let mut tasks = tokio::task::JoinSet::new();
    for first in 0..publishers {
        let (broker, exchange, tag) = (broker.to_owned(), exchange.to_owned(), tag.to_owned());
        let stride = Stride {
            first: first as u64,
            step: publishers as u64,
        };
        tasks.spawn(async move {
            publish_one(&broker, &exchange, &tag, epoch, window, (from, end), stride).await
        });
    }
    let runs = tasks.join_all().await;
    let mut merged = CeilingRun::nothing_yet((from, end));
    for run in runs {
        let run = run?;
        merged.confirmed += run.confirmed;
        merged.refused += run.refused;
        merged.acked.extend(run.acked);
        merged.confirm_latency.add(&run.confirm_latency)?;
    }
    Ok(merged)
}

/// The sequence numbers one publisher of several uses: `first`, `first + step` …
struct Stride {
    first: u64,
    step: u64,
}

/// One publisher of [`publish_ceiling`], on its own connection and channel.
async fn publish_one(
    broker: &str,
    exchange: &str,
    tag: &str,
    epoch: Instant,
    window: usize,
    (from, end): (Instant, Instant),
    stride: Stride,
) -> anyhow::Result<CeilingRun> {
    let connection = connect(broker, "hookrelay-bench ceiling publisher").await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut run = CeilingRun::nothing_yet((from, end));
    let mut outstanding: VecDeque<(u64, Instant, lapin::PublisherConfirm)> =
        VecDeque::with_capacity(window);
    let mut seq = stride.first;
    let settle = |run: &mut CeilingRun,
                  seq: u64,
                  sent: Instant,
                  confirmation: Result<Confirmation, lapin::Error>|
     -> anyhow::Result<()> {
        let measured = sent >= from;
        match confirmation? {
            Confirmation::Ack(None) => {
                run.acked.push(seq);
                if measured {
                    run.confirmed += 1;
                    run.confirm_latency
                        .saturating_record((sent.elapsed().as_micros() as u64).max(1));
                }
            }
            _ => run.refused += 1,
        }
        Ok(())
    };
    while Instant::now() < end {
        while outstanding.len() >= window {
            let (seq, sent, confirm) = outstanding.pop_front().expect("non-empty");
            let confirmation = tokio::time::timeout(Duration::from_secs(10), confirm)
                .await
                .context("no confirm within 10 s")?;
            settle(&mut run, seq, sent, confirmation)?;
        }
        let sent = Instant::now();
        let id = load::order_id(tag, seq, us(epoch, sent));
        let body = envelope(&id);
        let confirm = channel
            .basic_publish(
                exchange.into(),
                ROUTING_KEY.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body.as_bytes(),
                properties(&uuid::Uuid::new_v4().to_string()),
            )
            .await?;
        outstanding.push_back((seq, sent, confirm));
        seq += stride.step;
    }
    while let Some((seq, sent, confirm)) = outstanding.pop_front() {
        let confirmation = tokio::time::timeout(Duration::from_secs(10), confirm)
            .await
            .context("no confirm within 10 s")?;
        settle(&mut run, seq, sent, confirmation)?;
    }
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        connection.close(200, "ceiling done".into()),
    )
    .await;
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_envelope_carries_the_order_id_as_subject() {
        let id = load::order_id("t", 7, 99);
        let body = envelope(&id);
        assert_eq!(subject(body.as_bytes()).as_deref(), Some(id.as_str()));
        let value: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(value["data"]["payload"]["order"]["id"], id.as_str());
    }

    #[test]
    fn a_raw_whitepay_body_is_matched_by_its_order_id() {
        let id = load::order_id("t", 8, 100);
        let body = load::whitepay_order(&id);
        assert_eq!(subject(body.as_bytes()).as_deref(), Some(id.as_str()));
    }

    #[test]
    fn bits_and_conservation() {
        let mut consumed = Consumed::default();
        for seq in [0, 1, 3, 200] {
            consumed.first.push(Seen {
                seq,
                sent_us: 0,
                consumed_us: 0,
            });
        }
        // 2 was acked and never arrived; 200 arrived without an ack.
        assert_eq!(consumed.conservation(&[0, 1, 2, 3]), (1, 1));
    }
}
