//! A real Prometheus scraping a real relay, running every expression of the
//! dashboard and the alert rules (skipped, and said so, without a `prometheus`
//! binary on PATH; CI has one).

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::promql::{alert_rules, all_expressions, selectors};
use super::{ARRIVAL, relay_job_name, relay_metric_names, root};
use crate::support::schema;
use crate::support::*;

fn find_on_path(binary: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(binary))
        .find(|path| path.is_file())
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
    let mut app = TestApp::spawn(Backend::Sqlite, "ops-prom").await;
    let relay = &app.relay;
    relay.wait_broker_connected().await;
    let order = whitepay_order(&uuid::Uuid::new_v4().to_string());
    assert_eq!(relay.post_whitepay(&order).await.0, 200);
    assert_eq!(relay.post_whitepay(&order).await.0, 200, "duplicate");
    assert_eq!(
        relay
            .post_whitepay(&fixture("whitepay", "malformed.json"))
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
    let published = app.consumer.collect(2, ARRIVAL).await;
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
