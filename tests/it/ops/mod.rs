//! The operations kit (docker-compose.yml, deploy/, docs/asyncapi.yaml) checked
//! against the real thing wherever this machine has it: every PromQL expression of
//! the dashboard and the alert rules on a real Prometheus scraping a real relay, the
//! RabbitMQ definitions against a real broker and the relay's own declare, the
//! compose and Kubernetes settings through `hookrelay check-config`, and the
//! published-message schema against real messages. No container engine runs here,
//! so compose, the Dockerfile and the manifests are otherwise checked for their
//! wiring (ports, names, paths, selectors), and by the linters in `.ci/run`.
//!
//! One file a part of the kit: [`promql`] (the dashboard's and the alert rules'
//! expressions), [`prometheus`] (those expressions on a real Prometheus),
//! [`rabbitmq`] (the broker definitions), [`compose`] (compose and the Dockerfile),
//! [`kubernetes`] (the manifests) and [`contract`] (the published events). This file
//! reads the kit for all of them.

mod compose;
mod contract;
mod kubernetes;
mod prometheus;
mod promql;
mod rabbitmq;

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

const ARRIVAL: Duration = Duration::from_secs(20);

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

/// The parts of a `postgres://` (or `postgresql://`) outbox URL that the kit wires
/// to a database.
#[derive(Debug)]
struct PostgresUrl {
    user: String,
    password: String,
    host: String,
    port: u16,
    database: String,
    /// The query string (`sslmode`, `sslrootcert`, …).
    params: BTreeMap<String, String>,
}

fn postgres_url(url: &str) -> PostgresUrl {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .unwrap_or_else(|| panic!("not a postgres:// URL: {url}"));
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, database) = rest
        .split_once('/')
        .unwrap_or_else(|| panic!("postgres://…/DATABASE: {url}"));
    let (userinfo, host_port) = authority
        .rsplit_once('@')
        .unwrap_or_else(|| panic!("postgres://USER:PASSWORD@HOST: {url}"));
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let (host, port) = match host_port.rsplit_once(':') {
        Some((host, port)) => (host, port.parse().expect("port")),
        None => (host_port, 5432),
    };
    let params = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect();
    PostgresUrl {
        user: user.to_owned(),
        password: password.to_owned(),
        host: host.to_owned(),
        port,
        database: database.to_owned(),
        params,
    }
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
        "src/metrics.rs names the metrics of docs/contract.md §5: {names:?}"
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
