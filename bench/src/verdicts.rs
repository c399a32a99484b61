//! The verdicts of a run: each ratio and target of issue 5 with whether it was
//! met, the PostgreSQL comparisons (reported, no target), the console's targets.
//! They read the rows only, through one [`Reference`].

use crate::report::{Check, Scenario};

/// What the verdicts compare: the run's rows, and the reference rows among them
/// found by name (`None` when that scenario did not run).
pub struct Reference<'a> {
    /// `--concurrency`, which the checks name.
    pub concurrency: usize,
    pub http_ceiling: Option<&'a Scenario>,
    pub broker_ceiling: Option<&'a Scenario>,
    pub steady: Option<&'a Scenario>,
    pub half_rate: Option<&'a Scenario>,
    pub overload: Option<&'a Scenario>,
    pub backlog: Option<&'a Scenario>,
    /// Every row of the run.
    pub all: &'a [Scenario],
}

impl<'a> Reference<'a> {
    /// Finds the reference rows in `all`.
    pub fn of(all: &'a [Scenario], concurrency: usize) -> Self {
        let find = |name: &str| all.iter().find(|s| s.name == name);
        Self {
            concurrency,
            http_ceiling: find("http-ceiling"),
            broker_ceiling: find("broker-ceiling"),
            steady: find("steady"),
            half_rate: find("half-rate"),
            overload: find("overload"),
            backlog: find("backlog"),
            all,
        }
    }
}

/// The ratios and targets of issue 5, the PostgreSQL comparisons, the console
/// targets, and conservation over every scenario.
pub fn checks(r: &Reference<'_>) -> Vec<Check> {
    let mut out = Vec::new();
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let acked = |s: Option<&Scenario>| s.map(|s| s.acked_per_s);
    let (steady, half, overload, all) = (r.steady, r.half_rate, r.overload, r.all);
    let value = ratio(acked(steady), acked(r.http_ceiling));
    out.push(Check {
        what: format!("relay / http ceiling (acked/s at {} conn)", r.concurrency),
        value: value.map_or("–".to_owned(), pct),
        target: "≥ 50 %".to_owned(),
        met: value.map(|v| v >= 0.5),
    });
    for (what, value) in [
        (
            "relay end-to-end / broker ceiling (steady: consumed/s)",
            ratio(
                steady.and_then(|s| s.published_per_s),
                acked(r.broker_ceiling),
            ),
        ),
        (
            "backlog drain / broker ceiling",
            ratio(
                r.backlog.and_then(|s| s.drain_per_s),
                acked(r.broker_ceiling),
            ),
        ),
    ] {
        out.push(Check {
            what: what.to_owned(),
            value: value.map_or("–".to_owned(), pct),
            target: "≥ 80 %".to_owned(),
            met: value.map(|v| v >= 0.8),
        });
    }
    let p99 = half.and_then(|s| s.ack).map(|a| a.p99_ms);
    out.push(Check {
        what: format!(
            "p99 ack latency at half the max rate, {} conn",
            r.concurrency
        ),
        value: p99.map_or("–".to_owned(), |v| format!("{v:.2} ms")),
        target: "≤ 10 ms".to_owned(),
        met: p99.map(|v| v <= 10.0),
    });
    let slow: Vec<&Scenario> = [steady, half].into_iter().flatten().collect();
    let over: u64 = slow.iter().map(|s| s.over_1s).sum();
    let max = slow
        .iter()
        .filter_map(|s| s.ack.map(|a| a.max_ms))
        .fold(0.0_f64, f64::max);
    out.push(Check {
        what: "requests over 1 s without a fault (steady, half-rate)".to_owned(),
        value: format!("{over} (max ack {max:.1} ms)"),
        target: "0".to_owned(),
        met: (!slow.is_empty()).then_some(over == 0),
    });
    let rss = steady.and_then(|s| s.resources.server_rss_max_mib);
    out.push(Check {
        what: "relay RSS at steady load".to_owned(),
        value: rss.map_or("–".to_owned(), |v| format!("{v:.1} MiB")),
        target: "≤ 64 MiB".to_owned(),
        met: rss.map(|v| v <= 64.0),
    });
    let halves = overload.and_then(|s| s.resources.server_rss_halves_mib);
    out.push(Check {
        what: "relay RSS under overload: max of 1st half → 2nd half".to_owned(),
        value: halves.map_or("–".to_owned(), |(a, b)| format!("{a:.1} → {b:.1} MiB")),
        target: "flat (2nd half ≤ 1st half + 10 %)".to_owned(),
        met: halves.map(|(a, b)| b <= a * 1.1),
    });
    if let Some(o) = overload {
        out.push(Check {
            what: "overload answered with 503 from bounded queues, relay alive".to_owned(),
            value: format!(
                "{} × 503, {} × 200, alive: {}",
                o.unavailable_503,
                o.ok,
                o.relay_survived.unwrap_or(false)
            ),
            target: "503s > 0, alive".to_owned(),
            met: Some(o.unavailable_503 > 0 && o.relay_survived == Some(true)),
        });
    }
    out.extend(round3_checks(all));
    out.extend(postgres_checks(all));
    out.extend(console_checks(all));
    // The peer's losses are its own figure (its row), not the relay's.
    let ours = || all.iter().filter(|s| s.name != "peer");
    let lost: u64 = ours().filter_map(|s| s.lost).sum();
    let dup: u64 = ours().filter_map(|s| s.duplicated).sum();
    let undrained = ours().filter(|s| s.drained == Some(false)).count();
    out.push(Check {
        what: "lost (acked, never consumed), every relay scenario".to_owned(),
        value: format!("{lost} lost, {dup} duplicated, {undrained} scenario(s) not drained"),
        target: "0 lost".to_owned(),
        met: Some(lost == 0 && undrained == 0),
    });
    out
}

/// The targets of speed round 3 (issue 25) that read rows: CPU per webhook,
/// the peer, the confirmed ceiling (PostgreSQL against SQLite is one of
/// [`postgres_checks`]).
fn round3_checks(all: &[Scenario]) -> Vec<Check> {
    let find = |name: &str| all.iter().find(|s| s.name == name);
    let mut out = Vec::new();
    for (name, target) in [("steady", Some(25.0)), ("pg-steady", None)] {
        let Some(s) = find(name) else { continue };
        let Some(cpu) = cpu_per_webhook_us(s) else {
            continue;
        };
        out.push(Check {
            what: format!("relay CPU per acked webhook, {name}"),
            value: format!("{cpu:.1} µs"),
            target: target.map_or("reported".to_owned(), |t| format!("≤ {t:.0} µs")),
            met: target.map(|t| cpu <= t),
        });
    }
    if let (Some(steady), Some(peer)) = (find("steady"), find("peer")) {
        let ratio = steady.acked_per_s / peer.acked_per_s.max(1e-9);
        out.push(Check {
            what: "steady acked/s ÷ peer (Svix Bridge) acked/s, same broker and queue".to_owned(),
            value: format!(
                "{:.0} ÷ {:.0} = {ratio:.2}; in the queue: {:.0}/s ÷ {:.0}/s; peer lost {}",
                steady.acked_per_s,
                peer.acked_per_s,
                steady.published_per_s.unwrap_or(0.0),
                peer.published_per_s.unwrap_or(0.0),
                peer.lost.unwrap_or(0)
            ),
            target: "≥ 1.0 (or ≥ 0.9 × the confirmed ceiling when that is below the peer)"
                .to_owned(),
            met: Some(ratio >= 1.0),
        });
    }
    if let Some(ceiling) = find("broker-ceiling-max") {
        for name in ["steady", "pg-steady"] {
            let Some(published) = find(name).and_then(|s| s.published_per_s) else {
                continue;
            };
            out.push(Check {
                what: format!("{name} published/s ÷ the confirmed ceiling (broker-ceiling-max)"),
                value: pct(published / ceiling.acked_per_s.max(1e-9)),
                target: "reported".to_owned(),
                met: None,
            });
        }
    }
    out
}

/// The relay's CPU per acked webhook in the measured window, µs: % of one core
/// × 10,000 ÷ acked/s.
fn cpu_per_webhook_us(s: &Scenario) -> Option<f64> {
    let cpu = s.resources.server_cpu_pct?;
    (s.acked_per_s > 0.0).then(|| cpu * 10_000.0 / s.acked_per_s)
}

/// PostgreSQL against the SQLite reference of the same run, and three replicas
/// against one: reported, no target (on 2 cores the replicas share the CPU with
/// PostgreSQL, RabbitMQ and the bench, so three cannot beat one by much), except
/// round 3's: one relay on PostgreSQL acks at least 90 % of SQLite's rate.
fn postgres_checks(all: &[Scenario]) -> Vec<Check> {
    let find = |name: &str| all.iter().find(|s| s.name == name);
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => pct(a / b),
        _ => "–".to_owned(),
    };
    let mut out = Vec::new();
    // `least`: the acked/s ratio it must reach, where there is a target.
    let mut compare =
        |what: &str, a: Option<&Scenario>, b: Option<&Scenario>, least: Option<f64>| {
            let (Some(a), Some(b)) = (a, b) else {
                return;
            };
            let acked = a.acked_per_s / b.acked_per_s.max(1e-9);
            out.push(Check {
                what: what.to_owned(),
                value: format!(
                    "acked/s {}, published/s {}",
                    ratio(Some(a.acked_per_s), Some(b.acked_per_s)),
                    ratio(a.published_per_s, b.published_per_s),
                ),
                target: least.map_or("reported".to_owned(), |l| format!("acked/s ≥ {}", pct(l))),
                met: least.map(|l| acked >= l),
            });
        };
    compare(
        "PostgreSQL / SQLite outbox, one relay (pg-steady / steady)",
        find("pg-steady"),
        find("steady"),
        Some(0.9),
    );
    compare(
        "3 relays / 1 relay on PostgreSQL (pg-steady-3 / pg-steady)",
        find("pg-steady-3"),
        find("pg-steady"),
        None,
    );
    compare(
        "PostgreSQL / SQLite outbox under overload (pg-overload / overload)",
        find("pg-overload"),
        find("overload"),
        None,
    );
    if let (Some(pg), Some(lite)) = (find("pg-backlog"), find("backlog")) {
        out.push(Check {
            what: "PostgreSQL / SQLite backlog drain (pg-backlog / backlog, first → last)"
                .to_owned(),
            value: ratio(pg.drain_per_s, lite.drain_per_s),
            target: "reported".to_owned(),
            met: None,
        });
    }
    out
}

fn pct(v: f64) -> String {
    format!("{:.0} %", v * 100.0)
}

/// The console targets of the issue, per console scenario: list pages, a text
/// search, a subject timeline, and ingest while searching.
fn console_checks(all: &[Scenario]) -> Vec<Check> {
    let mut out = Vec::new();
    for s in all {
        let Some(c) = &s.console else { continue };
        let worst = |group: &str| {
            c.queries
                .iter()
                .filter(|q| q.group == group)
                .filter_map(|q| q.latency.map(|l| (l.p99_ms, q.what.clone(), q.target_ms)))
                .max_by(|a, b| a.0.total_cmp(&b.0))
        };
        for (group, what) in [
            ("list", "filtered list page, worst p99"),
            (
                "search",
                "text search, first page (answers at its budget), worst p99",
            ),
            ("timeline", "subject timeline, worst p99"),
        ] {
            if let Some((p99, query, target)) = worst(group) {
                out.push(Check {
                    what: format!("{}: {what}", s.name),
                    value: format!("{p99:.1} ms ({query})"),
                    target: format!("≤ {target:.0} ms"),
                    met: Some(p99 <= target),
                });
            }
        }
        if let Some(walk) = c
            .walks
            .iter()
            .find(|w| w.found_at_request.iter().all(Option::is_none))
        {
            let worst = walk.total_ms.iter().copied().fold(0.0_f64, f64::max);
            out.push(Check {
                what: format!(
                    "{}: text search over the whole outbox ({} rows), following the cursor, slowest of {}",
                    s.name, c.rows, walk.walks
                ),
                value: format!(
                    "{:.2} s in {} requests",
                    worst / 1000.0,
                    walk.requests.iter().max().copied().unwrap_or(0)
                ),
                target: "≤ 1 s".to_owned(),
                met: Some(worst <= 1000.0),
            });
        }
        if let (Some(alone), Some(with)) = (c.ack_alone, c.ack_with_search) {
            let rate = c.acked_per_s_with_search / c.acked_per_s_alone.max(1e-9);
            out.push(Check {
                what: format!("{}: ingest while a search runs (ack p99, acked/s)", s.name),
                value: format!(
                    "p99 {:.2} → {:.2} ms, acked/s {:.0} → {:.0} ({})",
                    alone.p99_ms,
                    with.p99_ms,
                    c.acked_per_s_alone,
                    c.acked_per_s_with_search,
                    pct(rate)
                ),
                target: "not measurably slower: p99 ≤ alone × 1.2 + 1 ms, acked/s ≥ 90 %"
                    .to_owned(),
                met: Some(with.p99_ms <= alone.p99_ms * 1.2 + 1.0 && rate >= 0.9),
            });
        }
    }
    out
}
