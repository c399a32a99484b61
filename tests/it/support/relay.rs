//! The real `hookrelay` binary as a child process (the testkit's launcher, with
//! the settings and verbs of these tests), and HTTP requests to it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hookrelay_testkit::relay::{Launch, RelayProcess, sample};

use super::broker::BROKER;
use super::fixtures::{WHITEPAY_TOKEN, whitepay_order, whitepay_signature};
use super::postgres::{Backend, Database};

/// A running relay process.
pub struct Relay {
    process: RelayProcess,
    config: RelayConfig,
    /// Ingress address.
    pub ingress: SocketAddr,
    /// Admin address.
    pub admin: SocketAddr,
}

/// How to start a relay.
#[derive(Clone)]
pub struct RelayConfig {
    /// Exchange to publish to.
    pub exchange: String,
    /// Broker address the relay connects to (the proxy, in outage tests).
    pub broker: String,
    /// Outbox database file (SQLite).
    pub outbox: PathBuf,
    /// The PostgreSQL outbox instead, shared by every relay started from this config.
    pub database: Option<Arc<Database>>,
    /// Where the relay reaches PostgreSQL, when not directly (a proxy, in cut tests).
    pub database_via: Option<SocketAddr>,
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
            database: None,
            database_via: None,
            env: vec![(
                "HOOKRELAY_SOURCES__WHITEPAY__WEBHOOK_TOKEN".to_owned(),
                WHITEPAY_TOKEN.to_owned(),
            )],
        }
    }

    /// The same on `backend`: on PostgreSQL, a new database of the test's own.
    pub fn on(backend: Backend, exchange: &str, dir: &Path) -> Self {
        let mut config = Self::new(exchange, dir);
        if backend == Backend::Postgres {
            config.database = Some(Arc::new(Database::create()));
        }
        config
    }

    /// `HOOKRELAY_OUTBOX_URL` for this config.
    pub fn outbox_url(&self) -> String {
        match &self.database {
            Some(db) => db.url_via(self.database_via),
            None => format!("sqlite://{}", self.outbox.display()),
        }
    }

    /// Subjects of the rows marked published, as `hookrelay outbox list` shows
    /// them: also while no relay runs, e.g. after kill -9.
    pub fn published_subjects(&self) -> Vec<String> {
        let rows = self.outbox_command(&["list", "--state", "published", "--limit", "1000000"]);
        rows.as_array()
            .expect("list --json prints an array")
            .iter()
            .map(|row| row["subject"].as_str().expect("a subject").to_owned())
            .collect()
    }

    /// Counts the outbox rows in a state (every row for `None`), as `hookrelay
    /// outbox stats` counts them: also while no relay runs, e.g. after kill -9.
    pub fn outbox_count(&self, state: Option<&str>) -> i64 {
        let stats = self.outbox_command(&["stats"]);
        let count = |state: &str| stats[state].as_i64().expect("a count");
        match state {
            Some(state) => count(state),
            None => ["pending", "published", "dead"]
                .into_iter()
                .map(count)
                .sum(),
        }
    }

    /// Runs `hookrelay outbox ARGS --json` on this config's outbox and returns what
    /// it printed.
    pub fn outbox_command(&self, args: &[&str]) -> serde_json::Value {
        let output = Command::new(env!("CARGO_BIN_EXE_hookrelay"))
            .arg("outbox")
            .args(args)
            .arg("--json")
            .env_clear()
            .env("HOOKRELAY_OUTBOX_URL", self.outbox_url())
            .output()
            .expect("run hookrelay outbox");
        assert!(
            output.status.success(),
            "outbox {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("--json prints JSON")
    }

    /// The configuration the relay reads from this config's environment (for
    /// seeding its outbox through `hookrelay::testing`).
    pub fn relay_config(&self) -> hookrelay::config::Config {
        let mut env = vec![("HOOKRELAY_OUTBOX_URL".to_owned(), self.outbox_url())];
        env.extend(self.env.iter().cloned());
        hookrelay::config::Config::load_from(None, &env).expect("a valid configuration")
    }
}

impl Relay {
    /// Starts the relay and waits until both listeners are up.
    pub fn start(config: &RelayConfig) -> Self {
        let mut launch = Launch::serve(env!("CARGO_BIN_EXE_hookrelay"))
            .env("RUST_LOG", "info,hookrelay=debug")
            .exchange(&config.exchange)
            .broker(&config.broker)
            .outbox(&config.outbox_url());
        for (k, v) in &config.env {
            launch = launch.env(k, v);
        }
        let process = launch.start().unwrap_or_else(|e| panic!("{e:#}"));
        Self {
            ingress: process.ingress,
            admin: process.admin,
            process,
            config: config.clone(),
        }
    }

    /// The relay's process id.
    pub fn pid(&self) -> u32 {
        self.process.pid
    }

    /// The relay's resident memory now, in MiB (`VmRSS` of `/proc/PID/status`).
    pub fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("the relay's /proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kib| kib / 1024.0)
            .expect("VmRSS")
    }

    /// The URL of a source.
    pub fn url(&self, source: &str) -> String {
        format!("http://{}/webhooks/{source}", self.ingress)
    }

    /// Posts a Whitepay body signed with [`WHITEPAY_TOKEN`].
    pub async fn post_whitepay(&self, body: &[u8]) -> (u16, Vec<u8>) {
        let signature = whitepay_signature(WHITEPAY_TOKEN, body);
        post(
            &self.url("whitepay"),
            body.to_vec(),
            &[("Signature", signature)],
        )
        .await
    }

    /// Sends raw bytes on a fresh connection to the ingress and returns the status
    /// code of the answer (None when the relay closed the connection without one).
    pub fn send_raw(&self, request: &[u8]) -> Option<u16> {
        let mut stream = TcpStream::connect(self.ingress).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let _ = stream.write_all(request);
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        let text = String::from_utf8_lossy(&answer);
        text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
    }

    /// Asserts that a new signed webhook still gets its 200.
    pub async fn assert_still_serving(&self) {
        let (status, _) = self
            .post_whitepay(&whitepay_order(&uuid::Uuid::new_v4().to_string()))
            .await;
        assert_eq!(status, 200, "the relay still serves");
    }

    /// Counts this relay's outbox rows in a state (every row for `None`).
    pub fn outbox_count(&self, state: Option<&str>) -> i64 {
        self.config.outbox_count(state)
    }

    /// Runs `hookrelay outbox ARGS --json` on this relay's outbox, beside the
    /// running relay, and returns what it printed.
    pub fn outbox_command(&self, args: &[&str]) -> serde_json::Value {
        self.config.outbox_command(args)
    }

    /// Freezes the process (SIGSTOP), as a long pause or a stalled VM would.
    pub fn pause(&self) {
        self.process.pause().expect("send SIGSTOP");
    }

    /// Lets a paused process go on (SIGCONT).
    pub fn resume(&self) {
        self.process.resume().expect("send SIGCONT");
    }

    /// Kills the process with SIGKILL: no shutdown code runs. The handle stays,
    /// dead, until it is replaced (a relay started again on the same outbox).
    pub fn kill9(&mut self) {
        self.process.kill();
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self, within: Duration) -> ExitStatus {
        self.process.terminate().expect("send SIGTERM");
        self.process
            .wait_exit(within)
            .unwrap_or_else(|| panic!("relay did not exit within {within:?} of SIGTERM"))
    }

    /// Log lines so far (JSON).
    pub fn logs(&self) -> Vec<String> {
        self.process.logs()
    }

    /// The admin `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.process.metrics_text().await.expect("GET /metrics")
    }

    /// The value of one sample line of `/metrics`, e.g.
    /// `hookrelay_outbox_commit_batch_size_count` (0 when there is none).
    pub async fn metric(&self, name: &str) -> f64 {
        sample(&self.metrics().await, name).unwrap_or(0.0)
    }

    /// `GET /readyz`: status and JSON body.
    pub async fn readyz(&self) -> (u16, serde_json::Value) {
        let response = reqwest::get(format!("http://{}/readyz", self.admin))
            .await
            .expect("GET /readyz");
        let status = response.status().as_u16();
        let body = response.bytes().await.expect("body");
        (status, serde_json::from_slice(&body).expect("JSON body"))
    }

    /// The broker node (`host:port`) the publisher has a channel on, as
    /// `hookrelay_broker_connected{node}` says.
    pub async fn broker_node(&self) -> Option<String> {
        let text = self.metrics().await;
        text.lines().find_map(|line| {
            let rest = line.strip_prefix("hookrelay_broker_connected{node=\"")?;
            let (node, value) = rest.split_once("\"} ")?;
            (value == "1").then(|| node.to_owned())
        })
    }

    /// Waits until the publisher reports a broker connection.
    pub async fn wait_broker_connected(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.broker_node().await.is_none() {
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
        self.process.kill();
        // A failing test shows what the relay logged; HOOKRELAY_TEST_LOGS=1 always does.
        if std::thread::panicking() || std::env::var_os("HOOKRELAY_TEST_LOGS").is_some() {
            for line in self.logs() {
                eprintln!("relay: {line}");
            }
        }
    }
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
