//! The PromQL of the dashboard and the alert rules, read out of the kit: what the
//! panels and the alerts ask for, and every expression (with Grafana's variables
//! replaced) for [`super::prometheus`] to run.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::{json_file, read, text, yaml_file};

/// One PromQL expression and where it came from.
pub(super) struct Expr {
    pub(super) origin: String,
    pub(super) promql: String,
    /// Dashboard panels must return data once their metrics exist; alert
    /// conditions are usually (and rightly) empty.
    pub(super) expect_data: bool,
}

fn dashboard() -> Value {
    json_file("deploy/grafana/dashboards/hookrelay.json")
}

pub(super) fn alert_rules() -> Vec<Value> {
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
pub(super) fn all_expressions() -> Vec<Expr> {
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
pub(super) fn selectors(expr: &str) -> Vec<(String, String)> {
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
        "time() - max by (source) (hookrelay_source_last_accepted_timestamp_seconds",
        "hookrelay_source_silence_threshold_seconds",
        "outcome=~\"unauthorized|forbidden\"",
        "hookrelay_outbox_held_subjects",
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
            "max without (node) (hookrelay_broker_connected) == 0",
        ),
        ("HookrelayBrokerBlocked", "hookrelay_broker_blocked == 1"),
        ("HookrelayUnauthorizedSpike", "outcome=\"unauthorized\""),
        ("HookrelayUnrecognizedSpike", "outcome=\"unrecognized\""),
        (
            "HookrelayDeadRows",
            "hookrelay_outbox_events{state=\"dead\"}",
        ),
        ("HookrelayDown", "up{job=\"hookrelay\"} == 0"),
        (
            "HookrelaySourceSilent",
            "hookrelay_source_silence_threshold_seconds",
        ),
        (
            "HookrelaySourceRefusedOnly",
            "outcome=~\"accepted|duplicate|unrecognized\"",
        ),
        ("HookrelaySubjectsHeld", "hookrelay_outbox_held_subjects"),
        (
            "HookrelayOutboxFenceHeld",
            "hookrelay_outbox_fence_wait_seconds",
        ),
        (
            "HookrelayGapUnrecovered",
            "hookrelay_recovery_gaps_total{outcome=~\"unrecovered|manual\"}",
        ),
        (
            "HookrelayRecoveryFailing",
            "hookrelay_recovery_requests_total{outcome=~\"refused|untrusted\"}",
        ),
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
