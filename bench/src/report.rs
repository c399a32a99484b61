//! Results of a run: per-scenario rows (with the console's and callgrind's figures),
//! the ratios and targets, the markdown tables printed on stdout and the JSON
//! written with `--json`. What the scenarios measure is written here as data; no
//! scenario is imported.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency summary in milliseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    /// Summarizes a microsecond histogram; `None` when it is empty.
    pub fn of(h: &Histogram<u64>) -> Option<Self> {
        (!h.is_empty()).then(|| Self {
            count: h.len(),
            p50_ms: h.value_at_quantile(0.50) as f64 / 1000.0,
            p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
            p999_ms: h.value_at_quantile(0.999) as f64 / 1000.0,
            max_ms: h.max() as f64 / 1000.0,
        })
    }
}

/// Resource use of the processes during a scenario's measured window.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Resources {
    /// Relay (or the HTTP ceiling server): RSS max over the window, MiB.
    pub server_rss_max_mib: Option<f64>,
    /// Largest RSS in the first and the second half of the window, MiB.
    pub server_rss_halves_mib: Option<(f64, f64)>,
    /// RSS at the end of the window, MiB.
    pub server_rss_end_mib: Option<f64>,
    /// Largest RSS in each second since the server was sampled (from before the
    /// connect phase and warm-up), MiB.
    pub server_rss_each_second_mib: Vec<f64>,
    /// Peak RSS since the process started (`VmHWM`), MiB.
    pub server_hwm_mib: Option<f64>,
    /// CPU, % of one core (200 % = both cores of a 2-core machine). With several
    /// relays (replicas), `server` is their sum.
    pub server_cpu_pct: Option<f64>,
    pub broker_cpu_pct: Option<f64>,
    /// PostgreSQL: every process named `postgres` (postmaster, backends, WAL writer,
    /// checkpointer, autovacuum…), the whole server. PostgreSQL scenarios only.
    pub postgres_cpu_pct: Option<f64>,
    pub bench_cpu_pct: Option<f64>,
    /// Whole machine busy, % of all cores.
    pub machine_busy_pct: Option<f64>,
    /// CPU used by everything else on the machine (% of one core): machine busy
    /// minus server, broker, PostgreSQL (when measured) and bench. Other work
    /// running shows here.
    pub other_cpu_pct: Option<f64>,
}

/// PostgreSQL's own counters over a scenario's measured window, for the whole
/// server.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct PostgresWindow {
    /// Write transactions (those that took a transaction id: inserts, settles,
    /// lease renewals, `NOTIFY`) per second; each is a synchronous commit.
    pub write_transactions_per_s: f64,
    /// WAL written, MiB/s.
    pub wal_mib_per_s: f64,
    /// Transactions in the server's other databases during the window (at least;
    /// the bench's own few statistics queries included): other work in the
    /// PostgreSQL CPU column.
    pub other_transactions: i64,
}

/// One scenario's results.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    /// `sqlite` or `postgres` for the relay scenarios.
    pub outbox: Option<String>,
    /// Relay processes (replicas on one outbox) in the relay scenarios.
    pub relays: Option<usize>,
    /// `closed, 64 conn` or `open 4000/s, 64 conn`.
    pub load: String,
    pub window_s: f64,
    /// Requests sent per second in the window (the offered load actually sent).
    pub sent_per_s: Option<f64>,
    /// 200s per second (for the broker ceiling: confirmed publishes per second).
    pub acked_per_s: f64,
    /// Lowest 200s in any one second of the window.
    pub min_acked_in_a_second: Option<u64>,
    /// 200s in each second of the window.
    pub acked_each_second: Vec<u64>,
    pub ok: u64,
    pub unavailable_503: u64,
    pub other_status: u64,
    pub errors: u64,
    pub timeouts: u64,
    /// Open loop: due requests never sent because the generator fell behind.
    pub unsent: u64,
    pub over_1s: u64,
    pub first_error: Option<String>,
    /// What the `ack` and `rejected` latencies are measured from: `due` (open loop,
    /// wrk2-style), `send` (closed loop, where due = sent; and overload, where the
    /// generator falls behind its schedule so the due time measures the generator).
    pub latency_from: String,
    /// 200s, from `latency_from`.
    pub ack: Option<Latency>,
    /// 200s, from the due time (open loop only).
    pub ack_from_due: Option<Latency>,
    /// 200s, from the actual send time.
    pub ack_service: Option<Latency>,
    /// 503s, from `latency_from`.
    pub rejected: Option<Latency>,
    /// Request sent → message consumed.
    pub end_to_end: Option<Latency>,
    /// Messages consumed per second inside the window.
    pub published_per_s: Option<f64>,
    pub lost: Option<u64>,
    pub duplicated: Option<u64>,
    /// Messages that arrived whose request had no 200 (timed out or failed on the
    /// client side after the relay stored it): delivered, not lost.
    pub delivered_without_ack: Option<u64>,
    /// Whether every acked message arrived before the bounded wait ended.
    pub drained: Option<bool>,
    pub mean_message_bytes: Option<f64>,
    pub avg_commit_batch: Option<f64>,
    /// Outbox commits (with inserts) per second; for fsync-probe, fdatasyncs per second.
    pub commits_per_s: Option<f64>,
    pub max_pending: Option<f64>,
    /// Size of the outbox after the load, MiB: SQLite's files (database, WAL, shared
    /// memory), or PostgreSQL's `pg_database_size`.
    pub outbox_mib: Option<f64>,
    /// PostgreSQL scenarios: the server's counters over the window.
    pub postgres: Option<PostgresWindow>,
    pub resources: Resources,
    /// Backlog: rows pending when the broker came back; drain rate from the first
    /// to the last message consumed; time from restore to the first message.
    pub backlog: Option<u64>,
    pub drain_per_s: Option<f64>,
    pub drain_from_restore_per_s: Option<f64>,
    pub reconnect_s: Option<f64>,
    pub relay_warnings: Option<u64>,
    pub relay_errors: Option<u64>,
    pub relay_survived: Option<bool>,
    /// Relay CPU % (of one core) per thread name over the window.
    pub relay_threads: Vec<(String, f64)>,
    /// `console` scenarios: the admin API on the seeded outbox (on the row of the
    /// load without search).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub console: Option<ConsoleFigures>,
    pub notes: Vec<String>,
}

/// One query repeated: its latency and what the last answer held.
#[derive(Clone, Debug, Serialize)]
pub struct QueryFigure {
    /// `list`, `search` (first page) or `timeline`.
    pub group: String,
    pub what: String,
    /// The request path (and query string).
    pub path: String,
    /// From sending the request to the last byte of the answer.
    pub latency: Option<Latency>,
    /// Rows in the last answer.
    pub rows: usize,
    /// Answers with a non-null `next_cursor` (pages only): a page that stopped at
    /// its time budget, or a full page with more rows after it.
    pub with_cursor: Option<u64>,
    /// Target of the issue, ms.
    pub target_ms: f64,
}

/// A search that follows `next_cursor` until the outbox is covered (or the row
/// is found).
#[derive(Clone, Debug, Serialize)]
pub struct SearchWalk {
    pub what: String,
    pub q: String,
    pub walks: u64,
    /// Requests of each walk.
    pub requests: Vec<u64>,
    /// Total time of each walk, ms.
    pub total_ms: Vec<f64>,
    /// The request whose page held the row searched for (each walk), when there is one.
    pub found_at_request: Vec<Option<u64>>,
    /// Rows returned over a walk.
    pub rows: usize,
    /// Each request's time, over all walks.
    pub request_latency: Option<Latency>,
}

/// What a console scenario measured besides its load.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ConsoleFigures {
    pub rows: u64,
    /// How the rows were made.
    pub seed_method: String,
    pub seed_s: f64,
    /// Outbox size after seeding, MiB (SQLite's files, or `pg_database_size`).
    pub outbox_mib: f64,
    /// Relay start on the seeded outbox: until both listeners, and until
    /// connected to the broker.
    pub relay_listening_s: f64,
    pub relay_ready_s: f64,
    pub queries: Vec<QueryFigure>,
    pub walks: Vec<SearchWalk>,
    /// The ack load alone and with a concurrent search (the two scenario rows).
    pub ack_alone: Option<Latency>,
    pub ack_with_search: Option<Latency>,
    pub acked_per_s_alone: f64,
    pub acked_per_s_with_search: f64,
    /// Search requests answered during the loaded run, their latency, and the
    /// whole-outbox walks they completed.
    pub searches_during_load: u64,
    pub search_latency_during_load: Option<Latency>,
    pub search_walks_during_load: u64,
}

/// One mode's result.
#[derive(Debug, Serialize)]
pub struct InstructionCount {
    pub mode: &'static str,
    /// Instructions (callgrind `Ir`) of the whole process in the small and the large run.
    pub instructions: [u64; 2],
    pub webhooks: [u64; 2],
    /// (large − small) instructions ÷ (large − small) webhooks.
    pub per_webhook: f64,
}

/// A ratio or target line.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub what: String,
    pub value: String,
    pub target: String,
    /// `None` when it could not be computed (a scenario was not run).
    pub met: Option<bool>,
}

/// The whole run.
#[derive(Debug, Serialize)]
pub struct Report {
    pub command: String,
    pub started_unix: u64,
    pub nproc: usize,
    pub scenarios: Vec<Scenario>,
    pub checks: Vec<Check>,
    /// Instructions per webhook (the `callgrind` scenario), when it ran.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub callgrind: Vec<InstructionCount>,
}

fn ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

fn opt<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map_or_else(|| "–".to_owned(), f)
}

fn rate(v: f64) -> String {
    format!("{v:.0}")
}

impl Report {
    /// The markdown tables.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        out.push_str("### Throughput, latency, conservation\n\n");
        out.push_str("| scenario | load | sent/s | acked/s | ack p50 ms | p99 | p99.9 | max | >1 s | 503 | err+timeout | e2e p50 ms | e2e p99 | published/s | lost | dup |\n");
        out.push_str("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
        for s in &self.scenarios {
            let a = s.ack;
            let e = s.end_to_end;
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                s.name,
                s.load,
                opt(s.sent_per_s, rate),
                rate(s.acked_per_s),
                opt(a, |a| ms(a.p50_ms)),
                opt(a, |a| ms(a.p99_ms)),
                opt(a, |a| ms(a.p999_ms)),
                opt(a, |a| ms(a.max_ms)),
                s.over_1s,
                s.unavailable_503,
                s.errors + s.timeouts + s.other_status,
                opt(e, |e| ms(e.p50_ms)),
                opt(e, |e| ms(e.p99_ms)),
                opt(s.published_per_s.or(s.drain_per_s), rate),
                opt(s.lost, |v| v.to_string()),
                opt(s.duplicated, |v| v.to_string()),
            ));
        }
        out.push_str("\n### Resources (measured window; CPU in % of one core, 200 % = the whole 2-core machine)\n\n");
        out.push_str("| scenario | server RSS max MiB | RSS 1st half → 2nd half | VmHWM MiB | server CPU % | broker CPU % | PostgreSQL CPU % | bench CPU % | other CPU % | commits/s | avg commit batch | max pending |\n");
        out.push_str(
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        );
        for s in &self.scenarios {
            let r = &s.resources;
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                s.name,
                opt(r.server_rss_max_mib, |v| format!("{v:.1}")),
                opt(r.server_rss_halves_mib, |(a, b)| format!("{a:.1} → {b:.1}")),
                opt(r.server_hwm_mib, |v| format!("{v:.1}")),
                opt(r.server_cpu_pct, |v| format!("{v:.0}")),
                opt(r.broker_cpu_pct, |v| format!("{v:.0}")),
                opt(r.postgres_cpu_pct, |v| format!("{v:.0}")),
                opt(r.bench_cpu_pct, |v| format!("{v:.0}")),
                opt(r.other_cpu_pct, |v| format!("{v:.0}")),
                opt(s.commits_per_s, |v| format!("{v:.0}")),
                opt(s.avg_commit_batch, |v| format!("{v:.1}")),
                opt(s.max_pending, |v| format!("{v:.0}")),
            ));
        }
        let backlog: Vec<&Scenario> = self
            .scenarios
            .iter()
            .filter(|s| s.backlog.is_some())
            .collect();
        if !backlog.is_empty() {
            out.push_str("\n### Backlog drain\n\n");
            out.push_str("| backlog | built at acked/s | broker back → first message s | drain msg/s (first → last) | drain msg/s (from restore) | lost | dup |\n");
            out.push_str("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
            for s in backlog {
                out.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {} | {} |\n",
                    opt(s.backlog, |v| v.to_string()),
                    rate(s.acked_per_s),
                    opt(s.reconnect_s, |v| format!("{v:.2}")),
                    opt(s.drain_per_s, rate),
                    opt(s.drain_from_restore_per_s, rate),
                    opt(s.lost, |v| v.to_string()),
                    opt(s.duplicated, |v| v.to_string()),
                ));
            }
        }
        self.console_tables(&mut out);
        out.push_str(
            "\n### Ratios and targets\n\n| | value | target | met |\n| --- | ---: | --- | --- |\n",
        );
        for c in &self.checks {
            out.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                c.what,
                c.value,
                c.target,
                match c.met {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "–",
                }
            ));
        }
        let notes: Vec<String> = self
            .scenarios
            .iter()
            .flat_map(|s| s.notes.iter().map(move |n| format!("- {}: {n}", s.name)))
            .collect();
        if !notes.is_empty() {
            out.push_str("\nNotes:\n");
            for n in notes {
                out.push_str(&n);
                out.push('\n');
            }
        }
        self.callgrind_table(&mut out);
        out
    }
}

impl Report {
    /// The console scenarios' queries, searches and ingest with and without search.
    fn console_tables(&self, out: &mut String) {
        let console: Vec<(&Scenario, &ConsoleFigures)> = self
            .scenarios
            .iter()
            .filter_map(|s| s.console.as_ref().map(|c| (s, c)))
            .collect();
        if console.is_empty() {
            return;
        }
        out.push_str(
            "\n### Admin API on a seeded outbox (ms, request sent → last byte of the answer)\n\n",
        );
        out.push_str("| scenario | rows | seeded in s | outbox MiB | query | runs | rows returned | with cursor | p50 | p99 | max | target |\n");
        out.push_str(
            "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        );
        for (s, c) in &console {
            for q in &c.queries {
                let l = q.latency;
                out.push_str(&format!(
                    "| {} | {} | {:.0} | {:.0} | {} {} | {} | {} | {} | {} | {} | {} | ≤ {:.0} |\n",
                    s.name,
                    c.rows,
                    c.seed_s,
                    c.outbox_mib,
                    q.group,
                    q.what,
                    opt(l, |l| l.count.to_string()),
                    q.rows,
                    opt(q.with_cursor, |v| v.to_string()),
                    opt(l, |l| ms(l.p50_ms)),
                    opt(l, |l| ms(l.p99_ms)),
                    opt(l, |l| ms(l.max_ms)),
                    q.target_ms,
                ));
            }
        }
        out.push_str("\n| scenario | search followed by cursor | walks | requests per walk | total s per walk | found at request | per request p50 ms | max |\n");
        out.push_str("| --- | --- | ---: | --- | --- | --- | ---: | ---: |\n");
        for (s, c) in &console {
            for w in &c.walks {
                let list = |v: Vec<String>| v.join(", ");
                out.push_str(&format!(
                    "| {} | q={} ({}) | {} | {} | {} | {} | {} | {} |\n",
                    s.name,
                    w.q,
                    w.what,
                    w.walks,
                    list(w.requests.iter().map(u64::to_string).collect()),
                    list(
                        w.total_ms
                            .iter()
                            .map(|t| format!("{:.2}", t / 1000.0))
                            .collect()
                    ),
                    list(
                        w.found_at_request
                            .iter()
                            .map(|f| opt(*f, |v| v.to_string()))
                            .collect()
                    ),
                    opt(w.request_latency, |l| ms(l.p50_ms)),
                    opt(w.request_latency, |l| ms(l.max_ms)),
                ));
            }
        }
        out.push_str("\n| scenario | ack p50 ms alone | p99 alone | acked/s alone | ack p50 + search | p99 + search | acked/s + search | search requests during load (p50 / max ms) |\n");
        out.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n");
        for (s, c) in &console {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} ({} / {}), {} whole walks |\n",
                s.name,
                opt(c.ack_alone, |a| ms(a.p50_ms)),
                opt(c.ack_alone, |a| ms(a.p99_ms)),
                rate(c.acked_per_s_alone),
                opt(c.ack_with_search, |a| ms(a.p50_ms)),
                opt(c.ack_with_search, |a| ms(a.p99_ms)),
                rate(c.acked_per_s_with_search),
                c.searches_during_load,
                opt(c.search_latency_during_load, |l| ms(l.p50_ms)),
                opt(c.search_latency_during_load, |l| ms(l.max_ms)),
                c.search_walks_during_load,
            ));
        }
    }

    /// Instructions per webhook, when `callgrind` ran.
    fn callgrind_table(&self, out: &mut String) {
        if self.callgrind.is_empty() {
            return;
        }
        out.push_str(
            "\n### Instructions per webhook (callgrind, SQLite outbox)\n\n\
             | mode | instructions, 500 webhooks | 2,500 webhooks | per webhook |\n\
             | --- | ---: | ---: | ---: |\n",
        );
        for c in &self.callgrind {
            out.push_str(&format!(
                "| {} | {} | {} | {:.0} |\n",
                c.mode, c.instructions[0], c.instructions[1], c.per_webhook
            ));
        }
    }
}
