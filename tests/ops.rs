//! The operations kit (docker-compose.yml, deploy/, docs/asyncapi.yaml) checked
//! against the real thing wherever this machine has it: every PromQL expression of
//! the dashboard and the alert rules on a real Prometheus scraping a real relay, the
//! RabbitMQ definitions against a real broker and the relay's own declare, the
//! compose and Kubernetes settings through `hookrelay check-config`, and the
//! published-message schema against real messages. No container engine runs here,
//! so compose, the Dockerfile and the manifests are otherwise checked for their
//! wiring (ports, names, paths, selectors), and by the linters in `.ci/run`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::schema;
use common::*;
use lapin::options::{
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Value, json};
use sha2::Digest;

const ARRIVAL: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------
// Reading the kit
// ---------------------------------------------------------------------------------

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn json_file(rel: &str) -> Value {
    serde_json::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Every YAML document in a file, as JSON values.
fn yaml_docs(rel: &str) -> Vec<Value> {
    let text = read(rel);
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| {
            <Value as serde::Deserialize>::deserialize(doc).unwrap_or_else(|e| panic!("{rel}: {e}"))
        })
        .filter(|doc| !doc.is_null())
        .collect()
}

fn yaml_file(rel: &str) -> Value {
    let mut docs = yaml_docs(rel);
    assert_eq!(docs.len(), 1, "{rel} holds one YAML document");
    docs.remove(0)
}

fn text(value: &Value) -> &str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("expected a string, got {value}"))
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr:?}"))
}

/// The path of a `sqlite://PATH` outbox URL.
fn sqlite_path(url: &str) -> PathBuf {
    PathBuf::from(
        url.strip_prefix("sqlite://")
            .unwrap_or_else(|| panic!("not a sqlite:// URL: {url}")),
    )
}

/// Every metric name the relay registers, read from src/metrics.rs so a renamed
/// metric is noticed without a hand-kept list.
fn relay_metric_names() -> BTreeSet<String> {
    let source = read("src/metrics.rs");
    let names: BTreeSet<String> = source
        .split('"')
        .filter(|s| {
            s.starts_with("hookrelay_")
                && s.len() > "hookrelay_".len()
                && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        })
        .map(str::to_owned)
        .collect();
    assert!(
        names.len() >= 11,
        "src/metrics.rs names the SPEC §5 metrics: {names:?}"
    );
    names
}

/// `hookrelay check-config` with exactly `env` (plus PATH): its exit status and output.
fn check_config(env: &BTreeMap<String, String>) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_hookrelay"))
        .arg("check-config")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env)
        .output()
        .expect("run hookrelay check-config");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

// ---------------------------------------------------------------------------------
// PromQL from the dashboard and the alert rules
// ---------------------------------------------------------------------------------

/// One PromQL expression and where it came from.
struct Expr {
    origin: String,
    promql: String,
    /// Dashboard panels must return data once their metrics exist; alert
    /// conditions are usually (and rightly) empty.
    expect_data: bool,
}

fn dashboard() -> Value {
    json_file("deploy/grafana/dashboards/hookrelay.json")
}

fn alert_rules() -> Vec<Value> {
    let rules = yaml_file("deploy/prometheus/alerts.yml");
    rules["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").clone())
        .collect()
}

/// Grafana's variables replaced by what Grafana would send with "All" selected,
/// and its interval macros by durations that suit a 1 s scrape interval.
fn grafana_substitutions(dashboard: &Value) -> Vec<(String, String)> {
    let mut subs: Vec<(String, String)> = ["__rate_interval", "__interval", "__range"]
        .iter()
        .map(|macro_| (macro_.to_string(), "1m".to_owned()))
        .collect();
    for var in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        let name = text(&var["name"]).to_owned();
        let all = var["allValue"].as_str().unwrap_or(".*").to_owned();
        subs.push((name, all));
    }
    // Longest first, so `$__rate_interval` is not read as `$__range` + "…".
    subs.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
    subs
}

fn substitute(expr: &str, subs: &[(String, String)]) -> String {
    let mut out = expr.to_owned();
    for (name, value) in subs {
        out = out
            .replace(&format!("${{{name}}}"), value)
            .replace(&format!("[[{name}]]"), value)
            .replace(&format!("${name}"), value);
    }
    out
}

fn dashboard_panels(dashboard: &Value) -> Vec<Value> {
    let mut panels = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        panels.push(panel.clone());
        if let Some(nested) = panel["panels"].as_array() {
            panels.extend(nested.iter().cloned());
        }
    }
    panels
}

/// Every expression of the dashboard (panels and the selectors of `label_values`
/// variables) and of the alert rules.
fn all_expressions() -> Vec<Expr> {
    let dashboard = dashboard();
    let subs = grafana_substitutions(&dashboard);
    let mut exprs = Vec::new();
    for panel in dashboard_panels(&dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let Some(expr) = target["expr"].as_str().filter(|e| !e.is_empty()) else {
                continue;
            };
            exprs.push(Expr {
                origin: format!(
                    "dashboard panel {:?} target {}",
                    panel["title"], target["refId"]
                ),
                promql: substitute(expr, &subs),
                expect_data: true,
            });
        }
    }
    for var in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        let query = var["query"]["query"]
            .as_str()
            .or_else(|| var["query"].as_str())
            .unwrap_or_default();
        // label_values(SELECTOR, LABEL) is Grafana's; its SELECTOR is PromQL.
        if let Some(args) = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
        {
            let selector = args.rsplit_once(',').map_or(args, |(s, _)| s).trim();
            exprs.push(Expr {
                origin: format!("dashboard variable {:?}", var["name"]),
                promql: substitute(selector, &subs),
                expect_data: true,
            });
        }
    }
    for rule in alert_rules() {
        let name = rule["alert"].as_str().or(rule["record"].as_str());
        exprs.push(Expr {
            origin: format!("alert rule {}", name.unwrap_or("(unnamed)")),
            promql: text(&rule["expr"]).to_owned(),
            expect_data: false,
        });
    }
    for expr in &exprs {
        assert!(
            !expr.promql.contains("$__") && !expr.promql.contains("${"),
            "{}: a Grafana variable was left unsubstituted: {}",
            expr.origin,
            expr.promql
        );
    }
    exprs
}

/// The vector selectors (`name{matchers}`) in an expression, for metric names of
/// interest: `hookrelay_*`, `rabbitmq_*` and `up`. String literals are skipped.
fn selectors(expr: &str) -> Vec<(String, String)> {
    let bytes = expr.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'"' {
            i += 1;
            while i < bytes.len() && bytes[i] != b'"' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            continue;
        }
        if !(ident(b) && (i == 0 || !ident(bytes[i - 1]))) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && ident(bytes[i]) {
            i += 1;
        }
        let name = &expr[start..i];
        if !(name.starts_with("hookrelay_") || name.starts_with("rabbitmq_") || name == "up") {
            continue;
        }
        let mut end = i;
        if bytes.get(i) == Some(&b'{') {
            let mut in_string = false;
            while end < bytes.len() {
                match bytes[end] {
                    b'\\' if in_string => end += 1,
                    b'"' => in_string = !in_string,
                    b'}' if !in_string => break,
                    _ => {}
                }
                end += 1;
            }
            end += 1;
            i = end;
        }
        out.push((
            name.to_owned(),
            expr[start..end.min(bytes.len())].to_owned(),
        ));
    }
    out
}

// ---------------------------------------------------------------------------------
// A real Prometheus
// ---------------------------------------------------------------------------------

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

fn find_on_path(binary: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(binary))
        .find(|path| path.is_file())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free loopback port")
        .port()
}

/// A Prometheus server on a loopback port with a throwaway TSDB; killed on drop.
struct Prometheus {
    child: Child,
    base: String,
    dir: tempfile::TempDir,
    client: reqwest::Client,
}

impl Prometheus {
    fn start(binary: &Path, config: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let port = free_port();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            dir,
            client: reqwest::Client::new(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// GET an API path; `None` while the server is not answering yet.
    async fn get(&self, path: &str) -> Option<Value> {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .ok()?;
        serde_json::from_slice(&response.bytes().await.ok()?).ok()
    }

    /// An instant query through `/api/v1/query`: the whole API answer, whatever its
    /// status (errors come back as `status: error` with HTTP 400/422).
    async fn query(&self, promql: &str) -> Value {
        let body = format!("query={}", urlencode(promql));
        let response = self
            .client
            .post(format!("{}/api/v1/query", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .expect("POST /api/v1/query");
        let bytes = response.bytes().await.expect("query answer");
        serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "query answer is not JSON ({e}): {}",
                String::from_utf8_lossy(&bytes)
            )
        })
    }

    async fn wait_for<T>(
        &self,
        what: &str,
        within: Duration,
        mut check: impl AsyncFnMut(&Self) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + within;
        loop {
            if let Some(value) = check(self).await {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus: {what} within {within:?}. Its log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn result_len(answer: &Value) -> usize {
    match &answer["data"]["result"] {
        Value::Array(items) => items.len(),
        Value::Null => 0,
        _ => 1, // scalar or string
    }
}

/// The job name deploy/prometheus/prometheus.yml gives the relay (the one the
/// alert rules select), found by its target `relay:…`.
fn relay_job_name() -> String {
    let config = yaml_file("deploy/prometheus/prometheus.yml");
    config["scrape_configs"]
        .as_array()
        .expect("scrape_configs")
        .iter()
        .find(|job| {
            job["static_configs"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|s| s["targets"].as_array().cloned().unwrap_or_default())
                .any(|t| t.as_str().is_some_and(|t| t.starts_with("relay:")))
        })
        .map(|job| text(&job["job_name"]).to_owned())
        .expect("a scrape job for the relay")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_and_alert_expression_runs_on_a_real_prometheus_scraping_the_relay() {
    let Some(binary) = find_on_path("prometheus") else {
        assert!(
            !in_ci(),
            "CI=true but no `prometheus` binary on PATH: .ci/run installs Debian's prometheus package"
        );
        // Written past the test harness's capture, so the skip is seen in a passing run.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: no `prometheus` binary on PATH (apt-get install prometheus); CI runs this test"
        );
        return;
    };
    let known = relay_metric_names();
    let exprs = all_expressions();
    let rule_count = alert_rules().len();
    assert!(
        exprs.iter().filter(|e| e.expect_data).count() >= 10,
        "the dashboard has its panels"
    );

    // A relay with traffic of every outcome a panel or alert looks at.
    let dir = tempfile::tempdir().expect("tempdir");
    let exchange = TestExchange::new("ops-prom");
    let mut consumer = Consumer::bind(&exchange, "#").await;
    let relay = Relay::start(&RelayConfig::new(&exchange, dir.path()));
    relay.wait_broker_connected().await;
    let order = whitepay_order(&uuid::Uuid::new_v4().to_string());
    assert_eq!(post_whitepay(&relay, &order).await.0, 200);
    assert_eq!(post_whitepay(&relay, &order).await.0, 200, "duplicate");
    assert_eq!(
        post_whitepay(&relay, &fixture("whitepay", "malformed.json"))
            .await
            .0,
        200,
        "unrecognized is acked"
    );
    let forged = post(
        &relay.url("whitepay"),
        order.clone(),
        &[("Signature", "00".repeat(32))],
    )
    .await;
    assert_eq!(forged.0, 401);
    assert_eq!(post(&relay.url("nope"), b"{}".to_vec(), &[]).await.0, 404);
    let published = consumer.collect(2, ARRIVAL).await;
    assert_eq!(published.len(), 2, "order and unrecognized are published");
    for delivery in &published {
        schema::assert_valid_message(delivery);
    }

    let job = relay_job_name();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         rule_files:\n  - {rules}\n\
         scrape_configs:\n  - job_name: {job}\n    static_configs:\n      - targets: [\"{admin}\"]\n",
        rules = root().join("deploy/prometheus/alerts.yml").display(),
        admin = relay.admin,
    );
    let prometheus = Prometheus::start(&binary, &config);
    prometheus
        .wait_for("scrapes the relay", Duration::from_secs(30), async |p| {
            let targets = p.get("/api/v1/targets").await?;
            targets["data"]["activeTargets"]
                .as_array()?
                .iter()
                .any(|t| t["health"] == "up")
                .then_some(())
        })
        .await;

    // Selectors first: every metric name is one the relay exports, and every
    // selector (labels included) matches series once its metric has any.
    let mut problems = Vec::new();
    let mut unchecked = BTreeSet::new();
    let mut checked = BTreeSet::new();
    for expr in &exprs {
        for (name, selector) in selectors(&expr.promql) {
            if name.starts_with("rabbitmq_") {
                // RabbitMQ's Prometheus plugin is not on the test broker.
                unchecked.insert(name);
                continue;
            }
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .filter(|base| known.contains(*base))
                .unwrap_or(&name);
            if name != "up" && !known.contains(base) {
                problems.push(format!(
                    "{}: {name} is not a relay metric ({known:?})",
                    expr.origin
                ));
                continue;
            }
            checked.insert(selector.clone());
        }
    }
    // Data arrives with the first scrapes and rates need two samples: wait until
    // every selector whose metric has series matches some, then run the
    // expressions. What is still empty at the deadline is reported.
    let deadline = Instant::now() + Duration::from_secs(30);
    let empty = loop {
        let mut empty = Vec::new();
        for selector in &checked {
            let name = selector.split('{').next().unwrap_or_default();
            let family = prometheus.query(&format!("{{__name__=\"{name}\"}}")).await;
            let matched = prometheus.query(selector).await;
            if matched["status"] != "success" {
                empty.push(format!(
                    "{selector}: {} {}",
                    matched["errorType"], matched["error"]
                ));
            } else if result_len(&family) > 0 && result_len(&matched) == 0 {
                empty.push(format!(
                    "{selector} matches no series, although {name} has some"
                ));
            }
        }
        let rates = prometheus
            .query("sum(rate(hookrelay_webhooks_received_total[1m]))")
            .await;
        if (empty.is_empty() && result_len(&rates) > 0) || Instant::now() > deadline {
            break empty;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    problems.extend(empty);

    let mut families_present = BTreeSet::new();
    for expr in &exprs {
        let answer = prometheus.query(&expr.promql).await;
        if answer["status"] != "success" {
            problems.push(format!(
                "{}: query failed: {} {}\n    {}",
                expr.origin, answer["errorType"], answer["error"], expr.promql
            ));
            continue;
        }
        if !expr.expect_data {
            continue;
        }
        // A panel on a metric that has no series yet (publish failures, RabbitMQ's)
        // is rightly empty; any other empty panel selects labels that do not exist.
        let mut all_present = true;
        for (name, _) in selectors(&expr.promql) {
            let family = prometheus.query(&format!("{{__name__=\"{name}\"}}")).await;
            if result_len(&family) > 0 {
                families_present.insert(name);
            } else {
                all_present = false;
            }
        }
        if all_present && result_len(&answer) == 0 {
            problems.push(format!(
                "{}: no data although its metrics have series\n    {}",
                expr.origin, expr.promql
            ));
        }
    }

    // The rules file loaded into Prometheus as it is, and every rule evaluates.
    let rules = prometheus
        .wait_for(
            "evaluated every alert rule",
            Duration::from_secs(30),
            async |p| {
                let answer = p.get("/api/v1/rules").await?;
                let rules: Vec<Value> = answer["data"]["groups"]
                    .as_array()?
                    .iter()
                    .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                    .collect();
                let evaluated = rules.len() == rule_count
                    && rules.iter().all(|r| {
                        !r["lastEvaluation"]
                            .as_str()
                            .unwrap_or("0001")
                            .starts_with("0001")
                    });
                evaluated.then_some(rules)
            },
        )
        .await;
    for rule in &rules {
        if rule["health"] != "ok" {
            problems.push(format!(
                "alert rule {}: health {} {}",
                rule["name"], rule["health"], rule["lastError"]
            ));
        }
    }
    let firing_down = rules
        .iter()
        .any(|r| r["name"] == "HookrelayDown" && r["state"] != "inactive");
    assert!(
        !firing_down,
        "HookrelayDown is not active while the relay is up"
    );

    assert!(
        problems.is_empty(),
        "PromQL problems:\n  {}",
        problems.join("\n  ")
    );
    assert!(
        families_present.contains("hookrelay_webhooks_received_total")
            && families_present.contains("hookrelay_ingest_duration_seconds_bucket"),
        "the panels were checked with data present: {families_present:?}"
    );
    eprintln!(
        "checked {} expressions and {} selectors; not checkable without RabbitMQ's plugin: {unchecked:?}",
        exprs.len(),
        checked.len()
    );
}

// ---------------------------------------------------------------------------------
// RabbitMQ definitions
// ---------------------------------------------------------------------------------

fn amqp_arguments(args: &Value) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in args.as_object().into_iter().flatten() {
        let value = match value {
            Value::String(s) => AMQPValue::LongString(s.as_str().into()),
            Value::Bool(b) => AMQPValue::Boolean(*b),
            Value::Number(n) => AMQPValue::LongLongInt(n.as_i64().expect("integer argument")),
            other => panic!("unsupported argument {key}: {other}"),
        };
        table.insert(key.as_str().into(), value);
    }
    table
}

/// The relay's exchange in definitions.json: the topic exchange with an
/// alternate exchange.
fn definitions_exchange(definitions: &Value) -> String {
    definitions["exchanges"]
        .as_array()
        .expect("exchanges")
        .iter()
        .find(|e| e["type"] == "topic" && e["arguments"]["alternate-exchange"].is_string())
        .map(|e| text(&e["name"]).to_owned())
        .expect("definitions.json declares the relay's topic exchange")
}

/// Deletes the renamed example queues when the test ends, also on failure.
struct QueueCleanup(Vec<String>);

impl Drop for QueueCleanup {
    fn drop(&mut self) {
        let queues = std::mem::take(&mut self.0);
        let _ = std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                runtime.block_on(async {
                    let connection = broker_connection().await;
                    if let Ok(channel) = connection.create_channel().await {
                        for queue in queues {
                            let _ = channel
                                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                                .await;
                        }
                    }
                });
            }
        })
        .join();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_definitions_match_the_relays_declare_and_route_the_example_queues() {
    let definitions = json_file("deploy/rabbitmq/definitions.json");
    let relay_exchange = definitions_exchange(&definitions);
    // RabbitMQ compares only some arguments on redeclare (for exchanges, only
    // `alternate-exchange`), so also require the exact arguments src/amqp.rs uses.
    let unrouted = hookrelay::amqp::unrouted_name(&relay_exchange);
    let find = |list: &str, name: &str| -> Value {
        definitions[list]
            .as_array()
            .expect("list")
            .iter()
            .find(|item| item["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("definitions.json {list} has {name}"))
    };
    let topic = find("exchanges", &relay_exchange);
    assert_eq!(
        topic["arguments"],
        json!({ "alternate-exchange": unrouted })
    );
    assert_eq!(topic["durable"], true);
    let fanout = find("exchanges", &unrouted);
    assert_eq!(
        (&fanout["type"], &fanout["durable"]),
        (&json!("fanout"), &json!(true))
    );
    assert_eq!(fanout["arguments"], json!({}));
    let queue = find("queues", &unrouted);
    assert_eq!(
        (&queue["durable"], &queue["auto_delete"]),
        (&json!(true), &json!(false))
    );
    assert_eq!(queue["arguments"], json!({}));
    // The same topology under a fresh name, so nothing shared is touched: `webhooks`
    // becomes the test exchange and every other name gets it as a prefix.
    let exchange = TestExchange::new("ops-defs");
    let rename = |name: &str| match name.strip_prefix(relay_exchange.as_str()) {
        Some(rest) => format!("{}{rest}", &*exchange),
        None => format!("{}.{name}", &*exchange),
    };
    let connection = broker_connection().await;
    let channel = connection.create_channel().await.expect("channel");
    for e in definitions["exchanges"].as_array().expect("exchanges") {
        let kind = match text(&e["type"]) {
            "topic" => lapin::ExchangeKind::Topic,
            "fanout" => lapin::ExchangeKind::Fanout,
            "direct" => lapin::ExchangeKind::Direct,
            "headers" => lapin::ExchangeKind::Headers,
            other => panic!("exchange type {other}"),
        };
        let mut args = e["arguments"].clone();
        if let Some(ae) = args.get_mut("alternate-exchange") {
            *ae = Value::String(rename(text(ae)));
        }
        channel
            .exchange_declare(
                rename(text(&e["name"])).as_str().into(),
                kind,
                ExchangeDeclareOptions {
                    durable: e["durable"] == true,
                    auto_delete: e["auto_delete"] == true,
                    internal: e["internal"] == true,
                    ..ExchangeDeclareOptions::default()
                },
                amqp_arguments(&args),
            )
            .await
            .unwrap_or_else(|err| panic!("declare exchange {}: {err}", e["name"]));
    }
    let mut cleanup = QueueCleanup(Vec::new());
    for q in definitions["queues"].as_array().expect("queues") {
        let name = rename(text(&q["name"]));
        if !name.starts_with(&format!("{}.unrouted", &*exchange)) {
            cleanup.0.push(name.clone());
        }
        channel
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    durable: q["durable"] == true,
                    auto_delete: q["auto_delete"] == true,
                    ..QueueDeclareOptions::default()
                },
                amqp_arguments(&q["arguments"]),
            )
            .await
            .unwrap_or_else(|err| panic!("declare queue {name}: {err}"));
    }
    let mut bound = BTreeMap::new();
    for b in definitions["bindings"].as_array().expect("bindings") {
        assert_eq!(b["destination_type"], "queue");
        let (queue, source) = (text(&b["destination"]), text(&b["source"]));
        channel
            .queue_bind(
                rename(queue).as_str().into(),
                rename(source).as_str().into(),
                text(&b["routing_key"]).into(),
                QueueBindOptions::default(),
                amqp_arguments(&b["arguments"]),
            )
            .await
            .expect("bind");
        bound.insert(text(&b["routing_key"]).to_owned(), queue.to_owned());
    }
    for (pattern, queue) in [
        ("*.order.*", "orders"),
        ("*.refund.*", "refunds"),
        ("*.withdrawal.*", "withdrawals"),
    ] {
        assert_eq!(bound.get(pattern).map(String::as_str), Some(queue));
    }

    // The relay redeclares the same topology at connect: had definitions.json used
    // other arguments, the broker would refuse with PRECONDITION_FAILED and the
    // relay would never report a connection.
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(&RelayConfig::new(&exchange, dir.path()));
    relay.wait_broker_connected().await;
    let mut orders = Consumer::existing(&rename("orders")).await;
    let mut withdrawals = Consumer::existing(&rename("withdrawals")).await;
    let mut unrouted = Consumer::existing(&rename(&format!("{relay_exchange}.unrouted"))).await;
    for (name, consumer, key) in [
        (
            "order_completed.json",
            &mut orders,
            "whitepay.order.succeeded",
        ),
        (
            "withdrawal_completed.json",
            &mut withdrawals,
            "whitepay.withdrawal.succeeded",
        ),
        (
            "transaction_completed.json",
            &mut unrouted,
            "whitepay.transaction.succeeded",
        ),
    ] {
        assert_eq!(
            post_whitepay(&relay, &fixture("whitepay", name)).await.0,
            200
        );
        let delivery = consumer
            .next(ARRIVAL)
            .await
            .unwrap_or_else(|| panic!("{name} reaches its queue"));
        assert_eq!(delivery.routing_key.as_str(), key);
        schema::assert_valid_message(&delivery);
    }
}

/// RabbitMQ's `rabbit_password_hashing_sha256`: base64(salt ‖ SHA-256(salt ‖ password)).
fn rabbitmq_password_matches(hash_b64: &str, password: &str) -> bool {
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(hash_b64) else {
        return false;
    };
    if raw.len() != 4 + 32 {
        return false;
    }
    let (salt, digest) = raw.split_at(4);
    let mut hasher = sha2::Sha256::new();
    hasher.update(salt);
    hasher.update(password.as_bytes());
    hasher.finalize().as_slice() == digest
}

// ---------------------------------------------------------------------------------
// Compose and the Dockerfile
// ---------------------------------------------------------------------------------

/// Dockerfile instructions with continuation lines joined: (INSTRUCTION, rest).
fn dockerfile() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in read("deploy/Dockerfile").lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(part) = trimmed.strip_suffix('\\') {
            current.push_str(part);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (instruction, rest) = current.split_once(' ').unwrap_or((&current, ""));
        out.push((instruction.to_ascii_uppercase(), rest.trim().to_owned()));
        current.clear();
    }
    out
}

/// The `ENV` of the Dockerfile's final stage.
fn dockerfile_env() -> BTreeMap<String, String> {
    let instructions = dockerfile();
    let last_from = instructions
        .iter()
        .rposition(|(i, _)| i == "FROM")
        .expect("FROM");
    let mut env = BTreeMap::new();
    for (_, rest) in instructions[last_from..].iter().filter(|(i, _)| i == "ENV") {
        for pair in rest.split_whitespace() {
            let (k, v) = pair.split_once('=').expect("ENV KEY=VALUE");
            env.insert(k.to_owned(), v.trim_matches('"').to_owned());
        }
    }
    env
}

#[test]
fn dockerfile_builds_in_stages_and_runs_non_root_with_a_healthcheck_on_healthz() {
    let instructions = dockerfile();
    let stages: Vec<&String> = instructions
        .iter()
        .filter(|(i, _)| i == "FROM")
        .map(|(_, r)| r)
        .collect();
    assert!(stages.len() >= 2, "multi-stage: {stages:?}");
    let last_from = instructions
        .iter()
        .rposition(|(i, _)| i == "FROM")
        .expect("FROM");
    let final_stage = &instructions[last_from..];
    let user = final_stage
        .iter()
        .rfind(|(i, _)| i == "USER")
        .map(|(_, r)| r.clone())
        .expect("the final stage sets USER");
    let uid = user.split(':').next().unwrap_or_default();
    assert!(
        !uid.is_empty() && uid != "root" && uid != "0",
        "non-root: {user}"
    );
    let env = dockerfile_env();
    let admin = &env["HOOKRELAY_ADMIN_LISTEN"];
    assert!(
        admin.starts_with("0.0.0.0:"),
        "admin listens on every interface in a container"
    );
    let healthcheck = final_stage
        .iter()
        .find(|(i, _)| i == "HEALTHCHECK")
        .map(|(_, r)| r.clone())
        .expect("HEALTHCHECK");
    assert!(
        healthcheck.contains(&format!("127.0.0.1:{}/healthz", port_of(admin))),
        "the healthcheck asks /healthz on the admin port: {healthcheck}"
    );
    // What the healthcheck runs is in the image.
    let program = healthcheck
        .split('"')
        .nth(1)
        .expect("HEALTHCHECK CMD [\"program\", …]");
    assert!(
        final_stage
            .iter()
            .any(|(i, r)| i == "COPY" && r.ends_with(&format!(" {program}"))),
        "{program} is copied into the final stage"
    );
    let entry = final_stage
        .iter()
        .rfind(|(i, _)| i == "ENTRYPOINT")
        .map(|(_, r)| r.clone())
        .unwrap_or_default();
    let cmd = final_stage
        .iter()
        .rfind(|(i, _)| i == "CMD")
        .map(|(_, r)| r.clone())
        .unwrap_or_default();
    assert!(
        entry.contains("hookrelay") && cmd.contains("\"serve\""),
        "runs `hookrelay serve`: {entry} {cmd}"
    );
    // The build context (narrowed by Dockerfile.dockerignore) holds what COPY takes.
    let ignore = read("deploy/Dockerfile.dockerignore");
    for (_, rest) in instructions
        .iter()
        .filter(|(i, r)| i == "COPY" && !r.starts_with("--from"))
    {
        let mut parts: Vec<&str> = rest.split_whitespace().collect();
        parts.pop(); // destination
        for source in parts {
            assert!(root().join(source).exists(), "COPY source {source} exists");
            let name = source.trim_end_matches('/');
            assert!(
                ignore
                    .lines()
                    .any(|l| l.trim().trim_end_matches('/') == format!("!{name}")),
                "{source} is let into the build context by Dockerfile.dockerignore"
            );
        }
    }
    // The image's settings are a valid configuration (unknown variables are errors).
    let mut config = env.clone();
    config.insert(
        "HOOKRELAY_SOURCES__WHITEPAY__WEBHOOK_TOKEN".into(),
        "t".into(),
    );
    let (ok, output) = check_config(&config);
    assert!(ok, "hookrelay check-config with the image's ENV:\n{output}");
}

fn compose() -> Value {
    yaml_file("docker-compose.yml")
}

fn depends_on(service: &Value) -> BTreeMap<String, String> {
    service["depends_on"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, v)| (name.clone(), text(&v["condition"]).to_owned()))
        .collect()
}

#[test]
fn compose_starts_rabbitmq_relay_prometheus_grafana_in_order_through_healthchecks() {
    let compose = compose();
    let services = compose["services"].as_object().expect("services");
    // Every service has a healthcheck, every dependency waits for one, and the
    // dependencies order the stack.
    let mut order: Vec<String> = Vec::new();
    while order.len() < services.len() {
        let next = services
            .iter()
            .filter(|(name, _)| !order.contains(name))
            .find(|(_, s)| depends_on(s).keys().all(|d| order.contains(d)))
            .map(|(name, _)| name.clone())
            .expect("depends_on has no cycle");
        order.push(next);
    }
    assert_eq!(order, ["rabbitmq", "relay", "prometheus", "grafana"]);
    for (name, service) in services {
        assert!(
            service["healthcheck"]["test"].is_array(),
            "{name} has a healthcheck"
        );
        for (dependency, condition) in depends_on(service) {
            assert_eq!(
                condition, "service_healthy",
                "{name} waits for {dependency} to be healthy"
            );
        }
        for port in service["ports"].as_array().into_iter().flatten() {
            assert!(
                text(port).starts_with("127.0.0.1:"),
                "{name} publishes {port} on loopback only"
            );
        }
        for volume in service["volumes"].as_array().into_iter().flatten() {
            let source = text(volume).split(':').next().unwrap_or_default();
            if let Some(rel) = source.strip_prefix("./") {
                assert!(root().join(rel).exists(), "{name} mounts {source}");
            } else {
                assert!(
                    compose["volumes"].get(source).is_some(),
                    "{name}'s volume {source} is declared"
                );
            }
        }
    }

    // RabbitMQ loads the definitions from where they are mounted.
    let rabbitmq = &services["rabbitmq"];
    let mounts = |service: &Value| -> BTreeMap<String, String> {
        service["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| {
                let mut parts = text(v).split(':');
                Some((
                    parts.nth(1)?.to_owned(),
                    text(v).split(':').next()?.to_owned(),
                ))
            })
            .collect()
    };
    let conf = read("deploy/rabbitmq/rabbitmq.conf");
    let conf_value = |key: &str| {
        conf.lines()
            .filter_map(|l| l.split_once('='))
            .find(|(k, _)| k.trim() == key)
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_else(|| panic!("rabbitmq.conf sets {key}"))
    };
    let rabbit_mounts = mounts(rabbitmq);
    assert_eq!(
        rabbit_mounts
            .get(&conf_value("load_definitions"))
            .map(String::as_str),
        Some("./deploy/rabbitmq/definitions.json")
    );
    assert_eq!(
        rabbit_mounts
            .get("/etc/rabbitmq/rabbitmq.conf")
            .map(String::as_str),
        Some("./deploy/rabbitmq/rabbitmq.conf")
    );
    assert!(
        read("deploy/rabbitmq/enabled_plugins").contains("rabbitmq_prometheus"),
        "the Prometheus plugin is enabled"
    );

    // The relay: image settings + compose environment is a valid configuration,
    // its broker credentials are a user of definitions.json, its outbox is on the
    // named volume, and its healthcheck asks the admin port.
    let relay = &services["relay"];
    assert!(root().join(text(&relay["build"]["dockerfile"])).is_file());
    let mut env = dockerfile_env();
    for (k, v) in relay["environment"].as_object().expect("relay environment") {
        // Compose's ${VAR:-default} interpolation, as compose would resolve it
        // with VAR unset.
        let value = text(v);
        let value = match value.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
            Some(inner) => inner.split_once(":-").map_or("", |(_, d)| d).to_owned(),
            None => value.to_owned(),
        };
        env.insert(k.clone(), value);
    }
    let (ok, output) = check_config(&env);
    assert!(
        ok,
        "check-config with the compose relay's environment:\n{output}"
    );
    let amqp = &env["HOOKRELAY_AMQP_URL"];
    let (userinfo, host) = amqp
        .strip_prefix("amqp://")
        .and_then(|r| r.split_once('@'))
        .expect("amqp://user:pass@host");
    let (user, password) = userinfo.split_once(':').expect("user:password");
    assert!(
        host.starts_with(&format!("rabbitmq:{}", conf_value("listeners.tcp.default"))),
        "{host}"
    );
    let definitions = json_file("deploy/rabbitmq/definitions.json");
    let account = definitions["users"]
        .as_array()
        .expect("users")
        .iter()
        .find(|u| u["name"] == user)
        .unwrap_or_else(|| panic!("definitions.json has the relay's user {user}"));
    assert!(
        rabbitmq_password_matches(text(&account["password_hash"]), password),
        "the password hash of {user} in definitions.json is the password in the relay's URL"
    );
    assert!(
        definitions["permissions"]
            .as_array()
            .expect("permissions")
            .iter()
            .any(|p| p["user"] == user && p["write"] == ".*" && p["configure"] == ".*"),
        "{user} may declare and publish"
    );
    assert_eq!(
        env.get("HOOKRELAY_EXCHANGE")
            .map(String::as_str)
            .unwrap_or("webhooks"),
        definitions_exchange(&definitions)
    );
    let outbox_dir = sqlite_path(&env["HOOKRELAY_OUTBOX_URL"])
        .parent()
        .expect("outbox directory")
        .to_string_lossy()
        .into_owned();
    let relay_mounts = mounts(relay);
    let outbox_volume = relay_mounts
        .get(&outbox_dir)
        .unwrap_or_else(|| panic!("a volume is mounted at {outbox_dir}"));
    assert!(
        compose["volumes"].get(outbox_volume).is_some(),
        "named volume"
    );
    let admin_port = port_of(&env["HOOKRELAY_ADMIN_LISTEN"]);
    let health: Vec<&str> = relay["healthcheck"]["test"]
        .as_array()
        .expect("test")
        .iter()
        .map(text)
        .collect();
    assert!(
        health.contains(&format!("http://127.0.0.1:{admin_port}/healthz").as_str()),
        "{health:?}"
    );

    // Prometheus scrapes services that exist, on the ports they listen on, and
    // loads the rules from beside its config.
    let prometheus_config = yaml_file("deploy/prometheus/prometheus.yml");
    let listening: BTreeMap<&str, u16> = [
        ("relay", admin_port),
        (
            "rabbitmq",
            conf_value("prometheus.tcp.port").parse().expect("port"),
        ),
    ]
    .into_iter()
    .collect();
    for job in prometheus_config["scrape_configs"]
        .as_array()
        .expect("jobs")
    {
        for target in job["static_configs"][0]["targets"]
            .as_array()
            .expect("targets")
        {
            let (host, port) = text(target).split_once(':').expect("host:port");
            assert_eq!(
                listening.get(host),
                Some(&port.parse().expect("port")),
                "scrape target {target}"
            );
        }
    }
    let prom_mounts = mounts(&services["prometheus"]);
    let config_in_container = prom_mounts
        .iter()
        .find(|(_, source)| source.ends_with("prometheus.yml"))
        .map(|(target, _)| PathBuf::from(target))
        .expect("prometheus.yml is mounted");
    for rule_file in prometheus_config["rule_files"]
        .as_array()
        .expect("rule_files")
    {
        let path = config_in_container
            .parent()
            .expect("dir")
            .join(text(rule_file));
        let source = prom_mounts
            .get(&*path.to_string_lossy())
            .unwrap_or_else(|| panic!("rule file {} is mounted", path.display()));
        assert!(root().join(source.trim_start_matches("./")).is_file());
    }
    assert_eq!(relay_job_name(), "hookrelay", "the job the alerts select");

    // Grafana's data source points at the prometheus service.
    let datasources = yaml_file("deploy/grafana/provisioning/datasources/prometheus.yml");
    let url = text(&datasources["datasources"][0]["url"]);
    assert_eq!(url, "http://prometheus:9090");
    let grafana_mounts = mounts(&services["grafana"]);
    let provider = yaml_file("deploy/grafana/provisioning/dashboards/hookrelay.yml");
    let dashboards_path = text(&provider["providers"][0]["options"]["path"]);
    assert_eq!(
        grafana_mounts.get(dashboards_path).map(String::as_str),
        Some("./deploy/grafana/dashboards"),
        "the provisioned dashboard folder is mounted"
    );
}

#[test]
fn dashboard_shows_every_metric_the_issue_asks_for() {
    let dashboard = dashboard();
    let exprs: Vec<String> = dashboard_panels(&dashboard)
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    let shows = |needle: &str| exprs.iter().any(|e| e.contains(needle));
    for needle in [
        "by (outcome) (rate(hookrelay_webhooks_received_total",
        "by (source, provider) (rate(hookrelay_webhooks_received_total",
        "histogram_quantile(0.99, sum by (le) (rate(hookrelay_ingest_duration_seconds_bucket",
        "by (provider, kind, status) (rate(hookrelay_events_published_total",
        "hookrelay_outbox_events{state=\"pending\"",
        "hookrelay_outbox_oldest_pending_seconds",
        "hookrelay_delivery_lag_seconds_bucket",
        "hookrelay_publish_failures_total",
        "hookrelay_broker_connected",
    ] {
        assert!(shows(needle), "a panel shows {needle}");
    }
    // Panels use the data-source variable, so the dashboard imports anywhere.
    for panel in dashboard_panels(&dashboard) {
        if panel["type"] != "row" {
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{}",
                panel["title"]
            );
        }
    }
    // Unique panel ids and non-overlapping positions, as Grafana expects.
    let ids: BTreeSet<i64> = dashboard_panels(&dashboard)
        .iter()
        .map(|p| p["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(ids.len(), dashboard_panels(&dashboard).len());
}

#[test]
fn alert_rules_cover_the_failure_modes_the_issue_lists() {
    let rules = alert_rules();
    let by_name: BTreeMap<&str, &Value> = rules.iter().map(|r| (text(&r["alert"]), r)).collect();
    for (alert, needle) in [
        (
            "HookrelayOutboxOldestPending",
            "hookrelay_outbox_oldest_pending_seconds",
        ),
        (
            "HookrelayOutboxPendingGrowing",
            "deriv(hookrelay_outbox_events{state=\"pending\"}",
        ),
        (
            "HookrelayBrokerDisconnected",
            "hookrelay_broker_connected == 0",
        ),
        ("HookrelayUnauthorizedSpike", "outcome=\"unauthorized\""),
        ("HookrelayUnrecognizedSpike", "outcome=\"unrecognized\""),
        (
            "HookrelayDeadRows",
            "hookrelay_outbox_events{state=\"dead\"}",
        ),
        ("HookrelayDown", "up{job=\"hookrelay\"} == 0"),
    ] {
        let rule = by_name
            .get(alert)
            .unwrap_or_else(|| panic!("alert {alert} exists"));
        assert!(
            text(&rule["expr"]).contains(needle),
            "{alert}: {}",
            rule["expr"]
        );
        assert!(
            ["critical", "warning"].contains(&text(&rule["labels"]["severity"])),
            "{alert} has a severity"
        );
        assert!(
            rule["annotations"]["summary"].is_string(),
            "{alert} summary"
        );
    }
    // Every alert has a unit test in alerts.test.yml (run by promtool in CI).
    let tests = read("deploy/prometheus/alerts.test.yml");
    for alert in by_name.keys() {
        assert!(
            tests.contains(&format!("alertname: {alert}\n")),
            "{alert} is unit-tested"
        );
    }
}

// ---------------------------------------------------------------------------------
// Kubernetes
// ---------------------------------------------------------------------------------

fn k8s() -> BTreeMap<String, (String, Value)> {
    let mut out = BTreeMap::new();
    let dir = root().join("deploy/k8s");
    for entry in std::fs::read_dir(&dir).expect("deploy/k8s") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let file = path
            .file_name()
            .and_then(|f| f.to_str())
            .expect("name")
            .to_owned();
        for doc in yaml_docs(&format!("deploy/k8s/{file}")) {
            let kind = text(&doc["kind"]).to_owned();
            assert!(
                out.insert(kind.clone(), (file.clone(), doc)).is_none(),
                "one {kind}"
            );
        }
    }
    out
}

fn subset(small: &Value, big: &Value) -> bool {
    small
        .as_object()
        .is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| big.get(k) == Some(v)))
}

#[test]
fn kubernetes_manifests_agree_with_each_other_and_with_the_relay() {
    let manifests = k8s();
    let get = |kind: &str| -> &Value {
        &manifests
            .get(kind)
            .unwrap_or_else(|| panic!("deploy/k8s has a {kind}"))
            .1
    };
    let (deployment, service, config_map, secret, pvc, pdb, monitor) = (
        get("Deployment"),
        get("Service"),
        get("ConfigMap"),
        get("Secret"),
        get("PersistentVolumeClaim"),
        get("PodDisruptionBudget"),
        get("ServiceMonitor"),
    );
    // kustomization.yaml lists every manifest except the example Secret.
    let listed: BTreeSet<String> = get("Kustomization")["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| text(r).to_owned())
        .collect();
    let expected: BTreeSet<String> = manifests
        .values()
        .map(|(file, _)| file.clone())
        .filter(|f| f != "kustomization.yaml" && f != "secret.example.yaml")
        .collect();
    assert_eq!(listed, expected);

    // One replica, replaced (not rolled) so the ReadWriteOnce claim is released.
    let spec = &deployment["spec"];
    assert_eq!(spec["replicas"], 1, "one replica with the SQLite outbox");
    assert_eq!(spec["strategy"]["type"], "Recreate");
    let pod = &spec["template"];
    let pod_labels = &pod["metadata"]["labels"];
    assert!(subset(&spec["selector"]["matchLabels"], pod_labels));
    assert!(subset(&service["spec"]["selector"], pod_labels));
    assert!(subset(&pdb["spec"]["selector"]["matchLabels"], pod_labels));
    assert!(subset(
        &monitor["spec"]["selector"]["matchLabels"],
        &service["metadata"]["labels"]
    ));
    assert!(
        pod["spec"]["securityContext"]["runAsNonRoot"] == true,
        "non-root pod"
    );

    let container = &pod["spec"]["containers"][0];
    let ports: BTreeMap<&str, u64> = container["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| (text(&p["name"]), p["containerPort"].as_u64().expect("port")))
        .collect();
    let settings = &config_map["data"];
    assert_eq!(
        ports["admin"],
        u64::from(port_of(text(&settings["HOOKRELAY_ADMIN_LISTEN"])))
    );
    assert_eq!(
        ports["http"],
        u64::from(port_of(text(&settings["HOOKRELAY_LISTEN"])))
    );
    for (probe, path) in [
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
        ("startupProbe", "/healthz"),
    ] {
        assert_eq!(container[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(container[probe]["httpGet"]["port"], "admin", "{probe}");
    }
    for kind in ["requests", "limits"] {
        assert!(
            container["resources"][kind]["memory"].is_string(),
            "memory {kind}"
        );
    }
    for port in service["spec"]["ports"].as_array().expect("service ports") {
        assert!(
            ports.contains_key(text(&port["targetPort"])),
            "Service port {} targets a container port",
            port["name"]
        );
    }
    let service_ports: BTreeSet<&str> = service["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| text(&p["name"]))
        .collect();
    for endpoint in monitor["spec"]["endpoints"].as_array().expect("endpoints") {
        assert!(service_ports.contains(text(&endpoint["port"])));
        assert_eq!(endpoint["path"], "/metrics");
    }
    assert_eq!(
        service["metadata"]["name"], "hookrelay",
        "the ServiceMonitor's job label is the Service name, which the alerts select"
    );

    // The outbox is on the claim, at the directory the ConfigMap's URL names.
    let outbox_dir = sqlite_path(text(&settings["HOOKRELAY_OUTBOX_URL"]))
        .parent()
        .expect("dir")
        .to_string_lossy()
        .into_owned();
    let mount = container["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .find(|m| m["mountPath"] == outbox_dir.as_str())
        .unwrap_or_else(|| panic!("a volume is mounted at {outbox_dir}"));
    let volume = pod["spec"]["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mounted volume");
    assert_eq!(
        volume["persistentVolumeClaim"]["claimName"],
        pvc["metadata"]["name"]
    );
    assert!(
        pvc["spec"]["accessModes"]
            .as_array()
            .expect("accessModes")
            .contains(&json!("ReadWriteOnce"))
    );

    // The settings come from this ConfigMap and Secret, and together they are a
    // configuration the relay accepts.
    let refs: Vec<(&str, &Value)> = container["envFrom"]
        .as_array()
        .expect("envFrom")
        .iter()
        .flat_map(|e| e.as_object().expect("ref").iter())
        .map(|(k, v)| (k.as_str(), &v["name"]))
        .collect();
    assert!(refs.contains(&("configMapRef", &config_map["metadata"]["name"])));
    assert!(refs.contains(&("secretRef", &secret["metadata"]["name"])));
    let mut env = BTreeMap::new();
    for data in [&config_map["data"], &secret["stringData"]] {
        for (k, v) in data.as_object().expect("data") {
            env.insert(k.clone(), text(v).to_owned());
        }
    }
    let (ok, output) = check_config(&env);
    assert!(
        ok,
        "check-config with the ConfigMap and the example Secret:\n{output}"
    );
}

// ---------------------------------------------------------------------------------
// The event contract
// ---------------------------------------------------------------------------------

/// A `- kinds: `a`, `b`` style list from SPEC §4.
fn spec_list(label: &str) -> BTreeSet<String> {
    let path = root().join("../shared/SPEC.md");
    let spec = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{} (the external contract): {e}", path.display()));
    let line = spec
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("- {label}:")))
        .unwrap_or_else(|| panic!("SPEC lists {label}"));
    let list = line.split_once(':').map_or("", |(_, rest)| rest);
    let list = list.split(" (").next().unwrap_or(list);
    list.split(',')
        .map(|s| s.trim().trim_matches('`').to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

fn strings(value: &Value) -> BTreeSet<String> {
    value
        .as_array()
        .expect("array")
        .iter()
        .map(|v| text(v).to_owned())
        .collect()
}

#[test]
fn asyncapi_and_the_schema_describe_the_spec_contract() {
    let api = yaml_file("docs/asyncapi.yaml");
    assert_eq!(api["asyncapi"], "3.0.0");
    let schema: Value = serde_json::from_str(schema::SCHEMA).expect("schema JSON");
    let kinds = spec_list("kinds");
    let statuses = spec_list("statuses");
    assert_eq!(kinds.len(), 8, "{kinds:?}");
    assert_eq!(statuses.len(), 10, "{statuses:?}");
    assert_eq!(strings(&schema["definitions"]["kind"]["enum"]), kinds);
    assert_eq!(strings(&schema["definitions"]["status"]["enum"]), statuses);
    let params = &api["channels"]["events"]["parameters"];
    assert_eq!(strings(&params["kind"]["enum"]), kinds);
    assert_eq!(strings(&params["status"]["enum"]), statuses);
    // Every kind and status is one the relay itself knows.
    for kind in &kinds {
        serde_json::from_value::<hookrelay::event::Kind>(json!(kind))
            .unwrap_or_else(|e| panic!("kind {kind}: {e}"));
    }
    for status in &statuses {
        serde_json::from_value::<hookrelay::event::Status>(json!(status))
            .unwrap_or_else(|e| panic!("status {status}: {e}"));
    }

    // The exchange and its unrouted queue are the relay's defaults and the
    // definitions' names.
    let exchange = definitions_exchange(&json_file("deploy/rabbitmq/definitions.json"));
    let channels = &api["channels"];
    assert_eq!(
        channels["events"]["bindings"]["amqp"]["exchange"]["name"],
        exchange.as_str()
    );
    assert_eq!(
        channels["unrouted"]["address"],
        hookrelay::amqp::unrouted_name(&exchange).as_str()
    );

    // Every message's payload is the schema file, and every example in the
    // document is a valid envelope.
    let mut examples = 0;
    for (name, message) in api["components"]["messages"].as_object().expect("messages") {
        assert_eq!(message["contentType"], "application/cloudevents+json");
        let payload = text(&message["payload"]["$ref"]);
        assert_eq!(payload, "./cloudevent.schema.json", "{name}");
        for example in message["examples"].as_array().expect("examples") {
            let body = serde_json::to_vec(&example["payload"]).expect("example JSON");
            let errors = schema::envelope_errors(&body);
            assert!(errors.is_empty(), "example {}: {errors:?}", example["name"]);
            examples += 1;
        }
    }
    assert!(examples >= 2, "a recognized and an unrecognized example");
}

#[test]
fn the_schema_rejects_envelopes_that_break_the_contract() {
    let api = yaml_file("docs/asyncapi.yaml");
    let messages = &api["components"]["messages"];
    let good = messages["event"]["examples"][0]["payload"].clone();
    let unrecognized = messages["unrecognized"]["examples"][0]["payload"].clone();
    for valid in [&good, &unrecognized] {
        let body = serde_json::to_vec(valid).expect("JSON");
        schema::assert_valid_envelope(&body);
    }
    /// What is wrong, a valid envelope, and the change that breaks it.
    type Mutation = (&'static str, Value, fn(&mut Value));
    let broken: Vec<Mutation> = vec![
        ("amount as a JSON number", good.clone(), |v| {
            v["data"]["amount"] = json!(200)
        }),
        ("recognized without subject", good.clone(), |v| {
            v.as_object_mut().map(|o| o.remove("subject"));
        }),
        ("kind not in SPEC", good.clone(), |v| {
            v["type"] = json!("order.shipped")
        }),
        ("time not in UTC", good.clone(), |v| {
            v["time"] = json!("2022-03-22T16:01:34+02:00")
        }),
        ("payload and raw_base64 together", good.clone(), |v| {
            v["data"]["raw_base64"] = json!("e30=")
        }),
        ("unknown attribute", good.clone(), |v| v["extra"] = json!(1)),
        ("id that is not a UUID", good.clone(), |v| {
            v["id"] = json!("42")
        }),
        ("unrecognized with a subject", unrecognized.clone(), |v| {
            v["subject"] = json!("x")
        }),
        ("unrecognized with a payload", unrecognized.clone(), |v| {
            v["data"]["payload"] = json!({});
            v["data"].as_object_mut().map(|o| o.remove("raw_base64"));
        }),
        ("unrecognized with an amount", unrecognized, |v| {
            v["data"]["amount"] = json!("1")
        }),
    ];
    for (what, mut value, mutate) in broken {
        mutate(&mut value);
        let body = serde_json::to_vec(&value).expect("JSON");
        assert!(
            !schema::envelope_errors(&body).is_empty(),
            "the schema accepts an envelope with {what}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_whitepay_fixture_publishes_a_message_that_matches_the_schema() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exchange = TestExchange::new("ops-schema");
    let mut consumer = Consumer::bind(&exchange, "#").await;
    let relay = Relay::start(&RelayConfig::new(&exchange, dir.path()));
    let fixtures: Vec<String> = std::fs::read_dir(root().join("tests/fixtures/whitepay"))
        .expect("fixtures")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|f| f.ends_with(".json") && f != "expected.json")
        .collect();
    let mut accepted = BTreeSet::new();
    for name in &fixtures {
        let body = fixture("whitepay", name);
        assert_eq!(post_whitepay(&relay, &body).await.0, 200, "{name}");
        accepted.insert(body);
    }
    // Fixtures may share an idempotency key; each distinct event arrives once.
    let deliveries = consumer
        .collect(fixtures.len(), Duration::from_secs(5))
        .await;
    assert!(
        deliveries.len() >= 10,
        "the fixtures were published: {}",
        deliveries.len()
    );
    let mut types = BTreeSet::new();
    for delivery in &deliveries {
        schema::assert_valid_message(delivery);
        let envelope: Value = serde_json::from_slice(&delivery.data).expect("JSON");
        types.insert(text(&envelope["type"]).to_owned());
    }
    assert!(
        types.contains("unrecognized") && types.len() >= 4,
        "recognized and unrecognized events were checked: {types:?}"
    );
}

#[test]
fn events_md_lists_every_routing_key_the_provider_fixtures_produce() {
    // The table rows: | `provider` | `kind` | `status`, `status` |
    let doc = read("docs/events.md");
    let mut table: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for line in doc.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() != 5 {
            continue;
        }
        let ticked = |cell: &str| -> Vec<String> {
            cell.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect()
        };
        if let ([provider], [kind]) = (&ticked(cells[1])[..], &ticked(cells[2])[..]) {
            table
                .entry((provider.clone(), kind.clone()))
                .or_default()
                .extend(ticked(cells[3]));
        }
    }
    let mut checked = 0;
    for entry in std::fs::read_dir(root().join("tests/fixtures")).expect("fixtures") {
        let dir = entry.expect("entry").path();
        let provider = dir.file_name().and_then(|n| n.to_str()).expect("name");
        if provider == "standard" {
            continue; // routes under each source's own name: one generic row
        }
        let expected = json_file(&format!("tests/fixtures/{provider}/expected.json"));
        for (fixture, facts) in expected.as_object().expect("expected.json") {
            let key = text(&facts["routing_key"]);
            let parts: Vec<&str> = key.split('.').collect();
            if parts == [provider, "unrecognized"] {
                continue;
            }
            let [p, kind, status] = parts[..] else {
                panic!("{provider}/{fixture}: routing key {key}");
            };
            let statuses = table
                .get(&(p.to_owned(), kind.to_owned()))
                .unwrap_or_else(|| panic!("docs/events.md has a row for {p} {kind} ({fixture})"));
            assert!(
                statuses.contains(status),
                "docs/events.md lists {key} ({provider}/{fixture})"
            );
            checked += 1;
        }
    }
    assert!(checked >= 40, "fixtures checked: {checked}");
}
