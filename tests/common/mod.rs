//! Test harness: the real `hookrelay` binary as a child process, a real RabbitMQ
//! (127.0.0.1:5672), a TCP proxy that can cut the relay off the broker, and a
//! consumer on a queue bound to the test's own exchange.
#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod schema;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use hmac::{Hmac, Mac};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use sha2::Sha256;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The broker every test uses.
pub const BROKER: &str = "127.0.0.1:5672";
/// The clearly fake Whitepay token the fixtures are signed with.
pub const WHITEPAY_TOKEN: &str = "test_webhook_token";

/// A fixture body, byte for byte.
pub fn fixture(provider: &str, name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(provider)
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

/// Hex HMAC-SHA256 of the body, Whitepay's `Signature` header.
pub fn whitepay_signature(token: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(token.as_bytes()).expect("any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
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

/// A unique Whitepay order body, for tests that need many distinct webhooks.
pub fn whitepay_order(id: &str) -> Vec<u8> {
    format!(
        r#"{{"order":{{"id":"{id}","currency":"UAH","value":"200.10","status":"COMPLETE","external_order_id":"m-{id}","created_at":"2024-01-02 03:04:05","completed_at":null,"acquiring_url":"https:\/\/merchant.pay.whitepay.com\/fiat-order\/{id}"}},"event_type":"order::completed"}}"#
    )
    .into_bytes()
}

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

/// A running relay process.
pub struct Relay {
    child: Child,
    /// Ingress address.
    pub ingress: SocketAddr,
    /// Admin address.
    pub admin: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// How to start a relay.
#[derive(Clone)]
pub struct RelayConfig {
    /// Exchange to publish to.
    pub exchange: String,
    /// Broker address the relay connects to (the proxy, in outage tests).
    pub broker: String,
    /// Outbox database file.
    pub outbox: PathBuf,
    /// Extra environment.
    pub env: Vec<(String, String)>,
}

impl RelayConfig {
    /// A relay with one Whitepay source signed with [`WHITEPAY_TOKEN`].
    pub fn new(exchange: &str, dir: &Path) -> Self {
        Self {
            exchange: exchange.to_owned(),
            broker: BROKER.to_owned(),
            outbox: dir.join("outbox.db"),
            env: vec![(
                "HOOKRELAY_SOURCES__WHITEPAY__WEBHOOK_TOKEN".to_owned(),
                WHITEPAY_TOKEN.to_owned(),
            )],
        }
    }
}

impl Relay {
    /// Starts the relay and waits until both listeners are up.
    pub fn start(config: &RelayConfig) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_hookrelay"));
        command
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info,hookrelay=debug")
            .env("HOOKRELAY_LOG_FORMAT", "json")
            .env("HOOKRELAY_LISTEN", "127.0.0.1:0")
            .env("HOOKRELAY_ADMIN_LISTEN", "127.0.0.1:0")
            .env("HOOKRELAY_EXCHANGE", &config.exchange)
            .env(
                "HOOKRELAY_AMQP_URL",
                format!("amqp://guest:guest@{}/%2f", config.broker),
            )
            .env(
                "HOOKRELAY_OUTBOX_URL",
                format!("sqlite://{}", config.outbox.display()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in &config.env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("spawn hookrelay");
        let stdout = child.stdout.take().expect("stdout");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&logs);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().expect("logs").push(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (ingress, admin) = {
                let logs = logs.lock().expect("logs");
                (
                    find_addr(&logs, "ingress listening"),
                    find_addr(&logs, "admin listening"),
                )
            };
            if let (Some(ingress), Some(admin)) = (ingress, admin) {
                return Self {
                    child,
                    ingress,
                    admin,
                    logs,
                    reader: Some(reader),
                };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "relay exited during start ({status}): {:#?}",
                    logs.lock().expect("logs")
                );
            }
            assert!(
                Instant::now() < deadline,
                "relay did not start: {:#?}",
                logs.lock().expect("logs")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The URL of a source.
    pub fn url(&self, source: &str) -> String {
        format!("http://{}/webhooks/{source}", self.ingress)
    }

    /// Kills the process with SIGKILL: no shutdown code runs.
    pub fn kill9(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("wait");
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self, within: Duration) -> ExitStatus {
        let pid = i32::try_from(self.child.id()).expect("pid");
        // SAFETY: plain kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0, "send SIGTERM");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "relay did not exit within {within:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Log lines so far (JSON).
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().expect("logs").clone()
    }

    /// The admin `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body")
    }

    /// The value of one sample line of `/metrics`, e.g.
    /// `hookrelay_outbox_commit_batch_size_count`.
    pub async fn metric(&self, sample: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|line| {
                let (name, value) = line.rsplit_once(' ')?;
                (name == sample).then(|| value.parse().expect("number"))
            })
            .unwrap_or(0.0)
    }

    /// Waits until the publisher reports a broker connection.
    pub async fn wait_broker_connected(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.metric("hookrelay_broker_connected").await < 1.0 {
            assert!(
                Instant::now() < deadline,
                "relay never connected to the broker"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        // A failing test shows what the relay logged; HOOKRELAY_TEST_LOGS=1 always does.
        if std::thread::panicking() || std::env::var_os("HOOKRELAY_TEST_LOGS").is_some() {
            for line in self.logs() {
                eprintln!("relay: {line}");
            }
        }
    }
}

fn find_addr(logs: &[String], message: &str) -> Option<SocketAddr> {
    logs.iter().find_map(|line| {
        let value: serde_json::Value = serde_json::from_str(line).ok()?;
        (value["message"] == message).then(|| value["addr"].as_str()?.parse().ok())?
    })
}

/// Posts a body with the given headers; returns status and response body.
pub async fn post(url: &str, body: Vec<u8>, headers: &[(&str, String)]) -> (u16, Vec<u8>) {
    let client = reqwest::Client::new();
    let mut request = client.post(url).body(body);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.bytes().await.expect("body").to_vec())
}

/// Posts a Whitepay body signed with [`WHITEPAY_TOKEN`].
pub async fn post_whitepay(relay: &Relay, body: &[u8]) -> (u16, Vec<u8>) {
    let signature = whitepay_signature(WHITEPAY_TOKEN, body);
    post(
        &relay.url("whitepay"),
        body.to_vec(),
        &[("Signature", signature)],
    )
    .await
}

/// Counts outbox rows in a state, read straight from the SQLite file.
pub fn outbox_count(path: &Path, state: Option<&str>) -> i64 {
    let conn = rusqlite::Connection::open(path).expect("open outbox");
    match state {
        Some(state) => conn.query_row(
            "SELECT COUNT(*) FROM events WHERE state = ?1",
            [state],
            |r| r.get(0),
        ),
        None => conn.query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0)),
    }
    .expect("count")
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
        let connection = broker_connection().await;
        let channel = connection.create_channel().await.expect("channel");
        hookrelay::amqp::declare_topology(&channel, exchange)
            .await
            .expect("declare topology");
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
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

/// A TCP proxy in front of the broker that a test can cut and restore, like Svix
/// Bridge's test proxy: cutting closes every proxied connection and refuses new
/// ones until restored. Freezing keeps connections open but stops moving bytes, so
/// publishes and confirms hang (a broker that stopped answering).
pub struct TcpProxy {
    /// Where the relay should connect.
    pub addr: SocketAddr,
    state: Arc<Mutex<ProxyState>>,
    frozen: tokio::sync::watch::Sender<bool>,
    accept: JoinHandle<()>,
}

struct ProxyState {
    open: bool,
    links: Vec<JoinHandle<()>>,
}

/// Copies one direction, holding each chunk while the proxy is frozen.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if frozen.wait_for(|f| !*f).await.is_err() {
            break;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

impl TcpProxy {
    /// Starts a proxy to `upstream` on a free loopback port.
    pub async fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(ProxyState {
            open: true,
            links: Vec::new(),
        }));
        let (frozen, frozen_rx) = tokio::sync::watch::channel(false);
        let upstream = upstream.to_owned();
        let shared = Arc::clone(&state);
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let mut state = shared.lock().expect("proxy state");
                if !state.open {
                    drop(inbound);
                    continue;
                }
                let upstream = upstream.clone();
                let frozen = frozen_rx.clone();
                state.links.push(tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (in_read, in_write) = inbound.into_split();
                    let (out_read, out_write) = outbound.into_split();
                    tokio::join!(
                        pump(in_read, out_write, frozen.clone()),
                        pump(out_read, in_write, frozen)
                    );
                }));
            }
        });
        Self {
            addr,
            state,
            frozen,
            accept,
        }
    }

    /// Closes every proxied connection and refuses new ones.
    pub fn cut(&self) {
        let mut state = self.state.lock().expect("proxy state");
        state.open = false;
        for link in state.links.drain(..) {
            link.abort();
        }
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.state.lock().expect("proxy state").open = true;
    }

    /// Stops moving bytes (connections stay open) until [`thaw`](Self::thaw).
    pub fn freeze(&self) {
        let _ = self.frozen.send(true);
    }

    /// Moves bytes again.
    pub fn thaw(&self) {
        let _ = self.frozen.send(false);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}
