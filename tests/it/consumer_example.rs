//! The reference consumer (`examples/consumer.rs`) as its README runs it: the
//! example's own binary on a partition queue that `hookrelay topology declare`
//! made on the real broker, fed events with the relay's ordering headers. Per
//! `partitionkey` it does the work in `sequence` order, acknowledges a copy
//! without work, holds the events after a gap until the missing number comes
//! (or, after a bounded wait, goes on and takes the missing one as late), and
//! leaves no message unacknowledged.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};

use crate::support::*;

/// The example's binary, which `cargo test` builds beside the test binaries
/// (`target/debug/examples/consumer`).
fn example_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let target = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("target/debug");
    let binary = target.join("examples/consumer");
    assert!(
        binary.exists(),
        "{} is missing: `cargo test` builds it (or `cargo build --example consumer`)",
        binary.display()
    );
    binary
}

/// The example consumer running on `queue`, its stdout collected line by line;
/// killed on drop.
struct ExampleConsumer {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl ExampleConsumer {
    fn start(queue: &str) -> Self {
        let mut child = Command::new(example_binary())
            .arg(format!("amqp://guest:guest@{BROKER}/%2f"))
            .arg(queue)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the example consumer");
        let stdout = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().expect("lines").push(line);
            }
        });
        Self { child, lines }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }

    /// Waits until a printed line contains `text`.
    async fn wait_for(&self, text: &str) {
        wait_until(text, Duration::from_secs(30), async || {
            self.lines().iter().any(|line| line.contains(text))
        })
        .await;
    }

    /// The order ids of the events it applied, in the order it applied them.
    fn applied(&self) -> Vec<String> {
        self.lines()
            .iter()
            .filter(|line| line.ends_with(": applied"))
            .filter_map(|line| {
                let rest = line.split(" order ").nth(1)?;
                Some(rest.split(' ').next()?.to_owned())
            })
            .collect()
    }
}

impl Drop for ExampleConsumer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Publishes, as the relay does, event `sequence` of order `subject` to the
/// relay's `exchange`; its order id `{subject}-{sequence}` says which it is.
async fn publish(channel: &Channel, exchange: &str, subject: &str, sequence: i64) {
    let key = format!("whitepay/{subject}");
    let envelope = serde_json::json!({
        "specversion": "1.0",
        "id": format!("{subject}-{sequence}"),
        "source": "/webhooks/whitepay",
        "type": "com.hookrelay.whitepay.order.pending",
        "subject": subject,
        "partitionkey": key,
        "sequence": format!("{sequence:020}"),
        "data": {"order_id": format!("{subject}-{sequence}"), "amount": "200", "currency": "UAH"},
    });
    let mut headers = FieldTable::default();
    headers.insert(
        "partitionkey".into(),
        AMQPValue::LongString(key.as_str().into()),
    );
    headers.insert("sequence".into(), AMQPValue::LongLongInt(sequence));
    channel
        .basic_publish(
            exchange.into(),
            "whitepay.order.pending".into(),
            BasicPublishOptions::default(),
            &serde_json::to_vec(&envelope).expect("JSON"),
            BasicProperties::default().with_headers(headers),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
}

#[tokio::test]
async fn the_reference_consumer_keeps_each_key_in_sequence_and_acks_every_message() {
    let exchange = TestExchange::new("consumer-example");
    let partitions = Partitions::new(&exchange, 1);
    let declared = partitions.declare(&exchange, &[]);
    assert!(declared.ok, "topology declare: {}", declared.stderr);
    let consumer = ExampleConsumer::start(&partitions.queue(0));
    consumer.wait_for("consuming").await;

    let connection = broker_connection().await;
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    // Order a: a copy of 2, then 5 before 3 and 4, which come within the wait.
    // Order b: 3 before 2, which comes only after the wait gave up on it.
    for (subject, sequence) in [("a", 1), ("a", 2), ("a", 2), ("a", 5), ("b", 1), ("b", 3)] {
        publish(&channel, &exchange, subject, sequence).await;
    }
    consumer
        .wait_for("whitepay/a #5: gap, #3..=#4 missing")
        .await;
    publish(&channel, &exchange, "a", 3).await;
    publish(&channel, &exchange, "a", 4).await;
    consumer.wait_for("whitepay/b: gap not filled within").await;
    publish(&channel, &exchange, "b", 2).await;
    consumer
        .wait_for("whitepay/b: late event filled gap 2")
        .await;

    let applied = consumer.applied();
    let of = |subject: &str| -> Vec<String> {
        applied
            .iter()
            .filter(|id| id.starts_with(&format!("{subject}-")))
            .cloned()
            .collect()
    };
    assert_eq!(of("a"), ["a-1", "a-2", "a-3", "a-4", "a-5"], "{applied:?}");
    assert_eq!(of("b"), ["b-1", "b-3", "b-2"], "{applied:?}");
    assert!(
        consumer
            .lines()
            .iter()
            .any(|line| line.contains("whitepay/a #2: already processed")),
        "the copy of a-2 was taken for one: {:?}",
        consumer.lines()
    );

    // Every message was acknowledged: with the consumer gone, the queue has
    // nothing to deliver again.
    drop(consumer);
    let left = partitions.drain(&connection, 0).await;
    assert!(left.is_empty(), "left unacknowledged: {left:?}");
}
