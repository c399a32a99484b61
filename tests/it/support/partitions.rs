//! The partitioned consumer topology `hookrelay topology declare` makes, as the
//! tests run it on the tests' broker, a guard that deletes it, and what is in its queues.

use std::process::Command;
use std::time::Duration;

use futures_lite::StreamExt;
use lapin::Connection;
use lapin::options::{BasicConsumeOptions, ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::types::FieldTable;

use super::broker::{BROKER, broker_connection};

/// What one run of `hookrelay topology declare` printed.
pub struct Declared {
    /// It exited 0.
    pub ok: bool,
    /// What it printed.
    pub stdout: String,
    /// Its errors.
    pub stderr: String,
}

/// `hookrelay topology declare ARGS` on the tests' broker, with `exchange` as
/// the relay's exchange.
pub fn topology_declare(exchange: &str, args: &[&str]) -> Declared {
    let output = Command::new(env!("CARGO_BIN_EXE_hookrelay"))
        .args(["topology", "declare"])
        .args(args)
        .env_clear()
        .env(
            "HOOKRELAY_AMQP_URL",
            format!("amqp://guest:guest@{BROKER}/%2f"),
        )
        .env("HOOKRELAY_EXCHANGE", exchange)
        .output()
        .expect("run hookrelay topology declare");
    Declared {
        ok: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The consistent-hash exchange `{name}` and its queues `{name}.{i}`, deleted
/// when the guard drops (also when the test fails); the relay's exchange is the
/// [`TestExchange`]'s to delete.
pub struct Partitions {
    /// The consistent-hash exchange, `{exchange}-orders`.
    pub name: String,
    /// How many queues.
    pub count: u16,
}

impl Partitions {
    /// The names for `count` queues behind the test's `exchange`.
    pub fn new(exchange: &str, count: u16) -> Self {
        Self {
            name: format!("{exchange}-orders"),
            count,
        }
    }

    /// Queue `i`.
    pub fn queue(&self, i: u16) -> String {
        format!("{}.{i}", self.name)
    }

    /// `hookrelay topology declare` of these queues for the order events of the
    /// relay's `exchange` (`--pattern '*.order.*'`), with `more` arguments.
    pub fn declare(&self, exchange: &str, more: &[&str]) -> Declared {
        let count = self.count.to_string();
        let mut args = vec![
            "--partitions",
            &count,
            "--pattern",
            "*.order.*",
            "--name",
            &self.name,
        ];
        args.extend_from_slice(more);
        topology_declare(exchange, &args)
    }

    /// Every message in queue `i` (consumed until none came for half a second;
    /// a queue with a single active consumer refuses `basic.get`), acknowledged:
    /// their bodies.
    pub async fn drain(&self, connection: &Connection, i: u16) -> Vec<String> {
        let queue = self.queue(i);
        let channel = connection.create_channel().await.expect("channel");
        let mut consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consume");
        let mut bodies = Vec::new();
        while let Ok(Some(delivery)) =
            tokio::time::timeout(Duration::from_millis(500), consumer.next()).await
        {
            let delivery = delivery.expect("delivery");
            bodies.push(String::from_utf8_lossy(&delivery.data).into_owned());
        }
        let _ = channel.close(200, "drained".into()).await;
        bodies
    }
}

impl Drop for Partitions {
    fn drop(&mut self) {
        let name = self.name.clone();
        let queues: Vec<String> = (0..self.count).map(|i| self.queue(i)).collect();
        // Drop cannot await; a short-lived runtime on its own thread cleans up.
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                let connection = broker_connection().await;
                let Ok(channel) = connection.create_channel().await else {
                    return;
                };
                for queue in &queues {
                    let _ = channel
                        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                        .await;
                }
                let _ = channel
                    .exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
                    .await;
            });
        })
        .join();
    }
}
