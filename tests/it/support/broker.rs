//! The real RabbitMQ (127.0.0.1:5672) as the tests see it: an exchange of a test's
//! own, removed again afterwards, and a consumer on a queue bound to it.

use std::process::Command;
use std::time::Duration;

use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::schema;

/// The broker every test uses.
pub const BROKER: &str = "127.0.0.1:5672";

/// A unique exchange for one test, so tests never see each other's messages. The
/// exchange, its alternate exchange and the `.unrouted` queue are deleted when the
/// guard drops, also when the test fails.
pub struct TestExchange(String);

impl TestExchange {
    /// A fresh exchange name for `test`.
    pub fn new(test: &str) -> Self {
        Self(format!(
            "hookrelay-test-{test}-{}",
            uuid::Uuid::new_v4().simple()
        ))
    }
}

impl std::ops::Deref for TestExchange {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Drop for TestExchange {
    fn drop(&mut self) {
        let exchange = self.0.clone();
        // Drop cannot await; a short-lived runtime on its own thread does the cleanup.
        let _ = std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                runtime.block_on(delete_topology(&exchange));
            }
        })
        .join();
    }
}

/// A consumer on a fresh exclusive queue bound to the test's exchange.
pub struct Consumer {
    _connection: Connection,
    consumer: lapin::Consumer,
}

/// Connects to the real broker directly (never through a test proxy).
pub async fn broker_connection() -> Connection {
    Connection::connect(
        &format!("amqp://guest:guest@{BROKER}/%2f"),
        ConnectionProperties::default(),
    )
    .await
    .expect("connect to RabbitMQ on 127.0.0.1:5672 (is it running?)")
}

impl Consumer {
    /// Declares the relay's topology (same arguments as the relay) and binds a new
    /// queue with `pattern`.
    pub async fn bind(exchange: &str, pattern: &str) -> Self {
        let options = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        };
        let connection = broker_connection().await;
        Self::declare_and_bind(
            connection,
            exchange,
            pattern,
            "",
            options,
            FieldTable::default(),
        )
        .await
    }

    /// A consumer on a durable quorum queue of its own, declared through the node
    /// at `url` (so its leader is on that node) and bound to `exchange` with
    /// `pattern`: for a cluster, where an exclusive queue would die with its node.
    pub async fn bind_quorum(url: &str, exchange: &str, pattern: &str) -> Self {
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-queue-type".into(),
            lapin::types::AMQPValue::LongString("quorum".into()),
        );
        let options = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let queue = format!("{exchange}.consumer");
        Self::declare_and_bind(connection, exchange, pattern, &queue, options, arguments).await
    }

    /// Declares the relay's topology and the queue `name` (the broker names it
    /// when empty), binds it with `pattern`, and consumes it.
    async fn declare_and_bind(
        connection: Connection,
        exchange: &str,
        pattern: &str,
        name: &str,
        options: QueueDeclareOptions,
        arguments: FieldTable,
    ) -> Self {
        let channel = connection.create_channel().await.expect("channel");
        hookrelay::amqp::declare_topology(&channel, exchange)
            .await
            .expect("declare topology");
        let queue = channel
            .queue_declare(name.into(), options, arguments)
            .await
            .expect("queue");
        channel
            .queue_bind(
                queue.name().clone(),
                exchange.into(),
                pattern.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind");
        Self::consume(connection, channel, queue.name().as_str()).await
    }

    /// Consumes an existing queue (e.g. `{exchange}.unrouted`).
    pub async fn existing(queue: &str) -> Self {
        let connection = broker_connection().await;
        let channel = connection.create_channel().await.expect("channel");
        Self::consume(connection, channel, queue).await
    }

    async fn consume(connection: Connection, channel: lapin::Channel, queue: &str) -> Self {
        let consumer = channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");
        Self {
            _connection: connection,
            consumer,
        }
    }

    /// The next message, acked, or `None` after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<Delivery> {
        let delivery = tokio::time::timeout(timeout, self.consumer.next())
            .await
            .ok()??;
        let delivery = delivery.expect("delivery");
        // Every message any test consumes must match the published event contract.
        schema::assert_valid_message(&delivery);
        delivery.ack(BasicAckOptions::default()).await.expect("ack");
        Some(delivery)
    }

    /// Collects messages until `count` arrived or nothing came for `idle`.
    pub async fn collect(&mut self, count: usize, idle: Duration) -> Vec<Delivery> {
        let mut out = Vec::new();
        while out.len() < count {
            match self.next(idle).await {
                Some(d) => out.push(d),
                None => break,
            }
        }
        out
    }
}

/// Deletes a test exchange with its unrouted exchange and queue.
async fn delete_topology(exchange: &str) {
    let connection = broker_connection().await;
    let channel = connection.create_channel().await.expect("channel");
    let unrouted = hookrelay::amqp::unrouted_name(exchange);
    let _ = channel
        .queue_delete(unrouted.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = channel
        .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
        .await;
    let _ = channel
        .exchange_delete(unrouted.as_str().into(), ExchangeDeleteOptions::default())
        .await;
}

/// Held exclusively while a test has lowered RabbitMQ's `max_message_size`, shared
/// by tests that publish messages above such a limit. The setting is the whole
/// broker's, and all tests run in parallel in this one process: without the lock, a
/// relay that another test starts meanwhile would publish on a limited channel.
static MAX_MESSAGE_SIZE: RwLock<()> = RwLock::const_new(());

/// Sets RabbitMQ's `max_message_size` for channels opened from now on, and puts the
/// old value back on drop. Meanwhile no test holding
/// [`unchanged`](Self::unchanged) runs.
pub struct BrokerMaxMessageSize {
    old: String,
    _exclusive: RwLockWriteGuard<'static, ()>,
}

impl BrokerMaxMessageSize {
    /// Sets the limit once no test holds [`unchanged`](Self::unchanged); `None`
    /// when `rabbitmqctl` cannot (not on this machine, or not allowed).
    pub async fn set(bytes: u64) -> Option<Self> {
        let exclusive = MAX_MESSAGE_SIZE.write().await;
        let get = Command::new("rabbitmqctl")
            .args(["eval", "application:get_env(rabbit, max_message_size)."])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&get.stdout);
        let old: String = text
            .trim()
            .strip_prefix("{ok,")?
            .trim_end_matches('}')
            .to_owned();
        let set = Command::new("rabbitmqctl")
            .args([
                "eval",
                &format!("application:set_env(rabbit, max_message_size, {bytes})."),
            ])
            .status()
            .ok()?;
        set.success().then_some(Self {
            old,
            _exclusive: exclusive,
        })
    }

    /// For a test that publishes messages larger than a test would set as the
    /// limit: while the guard is held, nobody lowers it. Take it before the relay
    /// starts (a channel keeps the limit it was opened with).
    pub async fn unchanged() -> RwLockReadGuard<'static, ()> {
        MAX_MESSAGE_SIZE.read().await
    }
}

impl Drop for BrokerMaxMessageSize {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args([
                "eval",
                &format!(
                    "application:set_env(rabbit, max_message_size, {}).",
                    self.old
                ),
            ])
            .status();
    }
}

/// The exact text of `data.payload` inside a published envelope, read without
/// re-serializing anything; `None` when the envelope has no payload.
pub fn raw_payload(envelope: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow)]
        data: Data<'a>,
    }
    #[derive(serde::Deserialize)]
    struct Data<'a> {
        #[serde(borrow)]
        payload: Option<&'a serde_json::value::RawValue>,
    }
    let parsed: Envelope<'_> = serde_json::from_slice(envelope).ok()?;
    parsed.data.payload.map(|p| p.get().to_owned())
}
