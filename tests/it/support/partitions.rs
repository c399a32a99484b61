//! The partitioned consumer topology `hookrelay topology declare` makes, as the
//! tests run it on the tests' broker, and a guard that deletes it.

use std::process::Command;

use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};

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
