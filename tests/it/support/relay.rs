//! The real `hookrelay` binary as a child process, and HTTP requests to it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::broker::BROKER;
use super::fixtures::{WHITEPAY_TOKEN, whitepay_order, whitepay_signature};
use super::postgres::{Backend, Database};

/// A running relay process.
pub struct Relay {
    child: Child,
    config: RelayConfig,
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
            .env("HOOKRELAY_OUTBOX_URL", config.outbox_url())
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
                    config: config.clone(),
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
        self.signal(libc::SIGSTOP);
    }

    /// Lets a paused process go on (SIGCONT).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = i32::try_from(self.child.id()).expect("pid");
        // SAFETY: plain kill(2) on our own child's pid.
        assert_eq!(
            unsafe { libc::kill(pid, signal) },
            0,
            "send signal {signal}"
        );
    }

    /// Kills the process with SIGKILL: no shutdown code runs.
    pub fn kill9(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("wait");
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self, within: Duration) -> ExitStatus {
        self.signal(libc::SIGTERM);
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

    /// `GET /readyz`: status and JSON body.
    pub async fn readyz(&self) -> (u16, serde_json::Value) {
        let response = reqwest::get(format!("http://{}/readyz", self.admin))
            .await
            .expect("GET /readyz");
        let status = response.status().as_u16();
        let body = response.bytes().await.expect("body");
        (status, serde_json::from_slice(&body).expect("JSON body"))
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
