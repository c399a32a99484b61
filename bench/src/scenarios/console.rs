//! The `console` and `pg-console` scenarios: the admin API on a large outbox.
//!
//! 1. The relay starts once on an empty outbox (it creates its schema) and stops;
//!    [`seed`](crate::seed) writes `--console-rows` rows (1,000,000) into its
//!    tables; the relay starts again on them, broker up.
//! 2. Over the admin API, on one keep-alive connection (as a browser would), each
//!    query `--console-repeat` times (20): filtered list pages, text searches (the
//!    first page, and walks following the cursor over the whole outbox), subject
//!    timelines. Times are from sending the request to the last byte of the body.
//! 3. The closed-loop load (`--console-connections`, 16, for `--console-duration`,
//!    15 s) once alone and once while one client walks a search for a string
//!    that is nowhere, back to back: what a search costs ingest.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use serde_json::Value;

use crate::context::{Ctx, progress};
use crate::load::{self, LoadResult, LoadSpec, Mode};
use crate::measure::{
    conservation, cpu_windows_after, from_load, resources, rss_stop, wait_delivered,
};
use crate::relay::{Backend, OutboxHome, Relay, RelaySpec};
use crate::report::{ConsoleFigures, Latency, QueryFigure, Scenario, SearchWalk};
use crate::{broker, procfs, seed};

/// Sources configured on the relay besides `whitepay` (the seeded rows use them).
const EXTRA_SOURCES: [&str; 3] = ["shop_eu", "shop_us", "marketplace"];
/// Rows per list page, as the console asks.
const LIMIT: usize = 50;
/// Bound on the requests of one search walk.
const MAX_WALK_REQUESTS: u64 = 10_000;

/// A keep-alive client of the admin API.
struct Api {
    addr: SocketAddr,
    sender: Option<SendRequest<Empty<Bytes>>>,
}

impl Api {
    fn new(addr: SocketAddr) -> Self {
        Self { addr, sender: None }
    }

    /// `GET path`: the time from sending to the last byte, and the JSON answer.
    async fn get(&mut self, path: &str) -> anyhow::Result<(Duration, Value)> {
        if self.sender.as_ref().is_none_or(SendRequest::is_closed) {
            self.sender = Some(hookrelay_testkit::http::connect(self.addr).await?);
        }
        let sender = self.sender.as_mut().context("connected")?;
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, self.addr.to_string())
            .body(Empty::new())?;
        let started = Instant::now();
        let exchange = async {
            sender.ready().await?;
            let response = sender.send_request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body))
        };
        let (status, body) = match tokio::time::timeout(Duration::from_secs(30), exchange).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                self.sender = None;
                bail!("GET {path}: {e}");
            }
            Err(_) => {
                self.sender = None;
                bail!("GET {path}: no answer within 30 s");
            }
        };
        let elapsed = started.elapsed();
        anyhow::ensure!(
            status.is_success(),
            "GET {path}: {status}: {}",
            String::from_utf8_lossy(&body)
        );
        Ok((elapsed, serde_json::from_slice(&body)?))
    }
}

fn events_of(answer: &Value) -> &[Value] {
    answer["events"].as_array().map_or(&[], Vec::as_slice)
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record((d.as_micros() as u64).max(1));
}

/// Percent-encodes a query-string value (the seeded values need none, but a
/// changed seed must not break the URL).
fn enc(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn repeat(
    api: &mut Api,
    group: &str,
    what: &str,
    path: String,
    runs: u64,
    target_ms: f64,
) -> anyhow::Result<QueryFigure> {
    let mut h = load::histogram();
    let mut rows = 0;
    let mut with_cursor = 0;
    let paged = path.starts_with("/api/v1/events?");
    for _ in 0..runs {
        let (took, answer) = api.get(&path).await?;
        record(&mut h, took);
        rows = events_of(&answer).len();
        if !answer["next_cursor"].is_null() {
            with_cursor += 1;
        }
    }
    let figure = QueryFigure {
        group: group.to_owned(),
        what: what.to_owned(),
        path,
        latency: Latency::of(&h),
        rows,
        with_cursor: paged.then_some(with_cursor),
        target_ms,
    };
    progress(format!(
        "  {group} {what}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, {} rows{}",
        figure.latency.map_or(0.0, |l| l.p50_ms),
        figure.latency.map_or(0.0, |l| l.p99_ms),
        figure.latency.map_or(0.0, |l| l.max_ms),
        figure.rows,
        figure
            .with_cursor
            .map_or(String::new(), |c| format!(", cursor in {c} of {runs}"))
    ));
    Ok(figure)
}

/// Follows the cursor of `q` from the newest row until none is left (or the row
/// `want` shows up); returns (requests, total time, request of the find, rows).
async fn walk(
    api: &mut Api,
    q: &str,
    want: Option<i64>,
    per_request: &mut Histogram<u64>,
) -> anyhow::Result<(u64, Duration, Option<u64>, usize)> {
    let mut cursor: Option<i64> = None;
    let mut requests = 0;
    let mut total = Duration::ZERO;
    let mut rows = 0;
    while requests < MAX_WALK_REQUESTS {
        let path = match cursor {
            Some(c) => format!("/api/v1/events?q={}&limit={LIMIT}&cursor={c}", enc(q)),
            None => format!("/api/v1/events?q={}&limit={LIMIT}", enc(q)),
        };
        let (took, answer) = api.get(&path).await?;
        requests += 1;
        total += took;
        record(per_request, took);
        let events = events_of(&answer);
        rows += events.len();
        if let Some(id) = want
            && events.iter().any(|e| e["id"].as_i64() == Some(id))
        {
            return Ok((requests, total, Some(requests), rows));
        }
        match answer["next_cursor"].as_i64() {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    Ok((requests, total, None, rows))
}

async fn walks(
    api: &mut Api,
    what: &str,
    q: &str,
    want: Option<i64>,
    n: u64,
) -> anyhow::Result<SearchWalk> {
    let mut out = SearchWalk {
        what: what.to_owned(),
        q: q.to_owned(),
        walks: n,
        requests: Vec::new(),
        total_ms: Vec::new(),
        found_at_request: Vec::new(),
        rows: 0,
        request_latency: None,
    };
    let mut per_request = load::histogram();
    for _ in 0..n {
        let (requests, total, found, rows) = walk(api, q, want, &mut per_request).await?;
        out.requests.push(requests);
        out.total_ms.push(total.as_secs_f64() * 1000.0);
        out.found_at_request.push(found);
        out.rows = rows;
    }
    out.request_latency = Latency::of(&per_request);
    progress(format!(
        "  search walk {what}: {:?} requests, {:?} ms, found at {:?}",
        out.requests,
        out.total_ms.iter().map(|t| t.round()).collect::<Vec<_>>(),
        out.found_at_request
    ));
    Ok(out)
}

/// One seeded row's source and subject, read back through the API.
async fn subject_of(api: &mut Api, id: i64) -> anyhow::Result<(String, String)> {
    let (_, row) = api.get(&format!("/api/v1/events/{id}")).await?;
    let text = |k: &str| row[k].as_str().map(str::to_owned);
    Ok((
        text("source").with_context(|| format!("row {id}: no source"))?,
        text("subject").with_context(|| format!("row {id}: no subject"))?,
    ))
}

fn start_relay(ctx: &Ctx, exchange: &str, home: &OutboxHome) -> anyhow::Result<Relay> {
    Relay::start(&RelaySpec {
        binary: &ctx.relay_bin,
        exchange,
        broker: ctx.args.broker.clone(),
        outbox: home.outbox(),
        extra_sources: &EXTRA_SOURCES,
        wrapper: &[],
    })
}

/// Runs one console scenario; returns its two rows: the load alone (with the
/// console figures) and the load with a concurrent search.
pub async fn scenario(ctx: &Ctx, name: &str, backend: Backend) -> anyhow::Result<Vec<Scenario>> {
    let rows = ctx.args.console_rows;
    anyhow::ensure!(rows >= 1000, "--console-rows must be at least 1000");
    let exchange = ctx.exchange(name);
    let connection = broker::connect(&ctx.args.broker, "hookrelay-bench topology").await?;
    let queue = broker::declare(&connection, &exchange, ctx.args.queue_type).await?;
    let _ = connection.close(200, "declared".into()).await;
    let home = ctx.outbox_home(backend, name).await?;
    let result = run(ctx, name, backend, &exchange, &queue, &home).await;
    if ctx.args.keep_outbox {
        progress(format!("{name}: outbox kept: {}", home.keep()));
    } else {
        home.remove().await;
    }
    result
}

async fn run(
    ctx: &Ctx,
    name: &str,
    backend: Backend,
    exchange: &str,
    queue: &str,
    home: &OutboxHome,
) -> anyhow::Result<Vec<Scenario>> {
    let rows = ctx.args.console_rows;
    let mut figures = ConsoleFigures {
        rows,
        ..ConsoleFigures::default()
    };
    // The relay makes its schema, then stops.
    let first = start_relay(ctx, exchange, home)?;
    first.stop();
    progress(format!(
        "{name}: schema created by the relay; seeding {rows} rows"
    ));
    let newest_us = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)?
        .as_micros() as i64
        - 60_000_000;
    let started = Instant::now();
    seed::seed(&home.outbox().url(), rows, newest_us).await?;
    figures.seed_method = "through the relay's own driver (hookrelay::testing::seed: the Whitepay provider reads each body, 50,000 rows per call, no sync per commit), then VACUUM (ANALYZE) of both tables on PostgreSQL".to_owned();
    figures.seed_s = started.elapsed().as_secs_f64();
    figures.outbox_mib = home.size_mib().await;
    progress(format!(
        "{name}: seeded in {:.1} s, outbox {:.0} MiB; starting the relay on it",
        figures.seed_s, figures.outbox_mib
    ));
    let started = Instant::now();
    let mut relay = start_relay(ctx, exchange, home)?;
    figures.relay_listening_s = started.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(60);
    while relay
        .metrics()
        .await
        .map_or(true, |m| m.broker_connected < 1.0)
    {
        if Instant::now() > deadline {
            bail!(
                "the relay did not connect to the broker within 60 s:\n{}",
                relay.log_tail(20)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    figures.relay_ready_s = started.elapsed().as_secs_f64();
    progress(format!(
        "{name}: relay pid {} listening after {:.2} s, connected after {:.2} s (admin {})",
        relay.pid, figures.relay_listening_s, figures.relay_ready_s, relay.admin
    ));
    let mut api = Api::new(relay.admin);
    // The relay reads the seeded rows as its own.
    let (_, newest) = api.get("/api/v1/events?limit=1").await?;
    let top = events_of(&newest)
        .first()
        .context("no rows after seeding")?;
    anyhow::ensure!(
        top["id"].as_i64() == Some(i64::try_from(rows)?)
            && top["kind"].as_str().is_some_and(|k| k != "unreadable"),
        "the relay does not read the seeded rows as expected: {top}"
    );
    let (old_id, mid_id) = seed::needle_ids(rows);
    let newest_id = i64::try_from(rows)? - 10;
    let (old_source, old_subject) = subject_of(&mut api, old_id).await?;
    let (mid_source, mid_subject) = subject_of(&mut api, mid_id).await?;
    let (new_source, new_subject) = subject_of(&mut api, newest_id).await?;
    let runs = ctx.args.console_repeat;
    progress(format!("{name}: queries, {runs} times each"));
    let q = &mut figures.queries;
    for (what, query) in [
        ("no filter", format!("limit={LIMIT}")),
        ("state=dead", format!("state=dead&limit={LIMIT}")),
        ("kind=refund", format!("kind=refund&limit={LIMIT}")),
        (
            "source=shop_us&status=failed",
            format!("source=shop_us&status=failed&limit={LIMIT}"),
        ),
        (
            "subject= (recent)",
            format!("subject={}&limit={LIMIT}", enc(&new_subject)),
        ),
        (
            "subject= (old, 1 % of the ids)",
            format!("subject={}&limit={LIMIT}", enc(&old_subject)),
        ),
    ] {
        q.push(
            repeat(
                &mut api,
                "list",
                what,
                format!("/api/v1/events?{query}"),
                runs,
                100.0,
            )
            .await?,
        );
    }
    for (what, needle) in [
        ("q= in one old row (first page)", seed::NEEDLE_OLD),
        ("q= nowhere (first page)", seed::NEEDLE_ABSENT),
    ] {
        let path = format!("/api/v1/events?q={}&limit={LIMIT}", enc(needle));
        q.push(repeat(&mut api, "search", what, path, runs, 1000.0).await?);
    }
    for (what, source, subject) in [
        ("old subject (1 % of the ids)", &old_source, &old_subject),
        ("middle subject", &mid_source, &mid_subject),
        ("recent subject", &new_source, &new_subject),
    ] {
        let path = format!("/api/v1/subjects/{}/{}", enc(source), enc(subject));
        q.push(repeat(&mut api, "timeline", what, path, runs, 50.0).await?);
    }
    let n = ctx.args.console_walks;
    figures.walks.push(
        walks(
            &mut api,
            "in one old row, until found",
            seed::NEEDLE_OLD,
            Some(old_id),
            n,
        )
        .await?,
    );
    figures.walks.push(
        walks(
            &mut api,
            "nowhere, whole outbox",
            seed::NEEDLE_ABSENT,
            None,
            n,
        )
        .await?,
    );
    // The relay purges published rows past its retention: the oldest seeded row
    // must still be there, or the figures were taken on a shrinking outbox.
    subject_of(&mut api, 1)
        .await
        .context("the oldest seeded row is gone (purged by the relay's retention?)")?;
    // Ingest alone, then with a search walking the outbox back to back.
    let mut out = Vec::new();
    for with_search in [false, true] {
        let label = if with_search {
            format!("{name} +search")
        } else {
            name.to_owned()
        };
        let (mut s, searches) = ack_run(ctx, &label, &relay, queue, backend, with_search).await?;
        if let Some((count, latency, walks)) = searches {
            figures.searches_during_load = count;
            figures.search_latency_during_load = latency;
            figures.search_walks_during_load = walks;
            figures.ack_with_search = s.ack;
            figures.acked_per_s_with_search = s.acked_per_s;
            s.notes.push(format!(
                "{count} search requests (q={}, following the cursor, {walks} whole-outbox walks) answered during the load, p50 {} ms, max {} ms",
                seed::NEEDLE_ABSENT,
                latency.map_or("–".to_owned(), |l| format!("{:.0}", l.p50_ms)),
                latency.map_or("–".to_owned(), |l| format!("{:.0}", l.max_ms)),
            ));
        } else {
            figures.ack_alone = s.ack;
            figures.acked_per_s_alone = s.acked_per_s;
        }
        out.push(s);
    }
    let survived = relay.alive();
    let (warnings, errors) = relay.warnings_errors();
    if let Some(first) = out.first_mut() {
        first.notes.insert(
            0,
            format!(
                "{rows} rows seeded in {:.1} s ({}); outbox {:.0} MiB; relay listening {:.2} s and connected {:.2} s after its start on them",
                figures.seed_s,
                figures.seed_method,
                figures.outbox_mib,
                figures.relay_listening_s,
                figures.relay_ready_s
            ),
        );
        if warnings + errors > 0 {
            first.notes.push(format!(
                "relay logged {warnings} warnings, {errors} errors: {:?}",
                relay.problems()
            ));
        }
        first.relay_warnings = Some(warnings);
        first.relay_errors = Some(errors);
        first.relay_survived = Some(survived);
        first.console = Some(figures);
    }
    relay.stop();
    Ok(out)
}

type Searches = (u64, Option<Latency>, u64);

/// The closed-loop load, alone or with a client walking a search back to back;
/// the consumer checks that every acked webhook was published.
async fn ack_run(
    ctx: &Ctx,
    label: &str,
    relay: &Relay,
    queue: &str,
    backend: Backend,
    with_search: bool,
) -> anyhow::Result<(Scenario, Option<Searches>)> {
    let spec = LoadSpec {
        duration: Duration::from_secs_f64(ctx.args.console_duration),
        ..ctx.load(
            &label.replace([' ', '+'], ""),
            vec![relay.ingress],
            ctx.args.console_connections,
            Mode::Closed,
        )
    };
    let consumer = broker::Consumer::start(&ctx.args.broker, queue, &spec.tag, ctx.epoch).await?;
    progress(format!(
        "{label}: closed loop, {} connections, {:.0} s{}",
        spec.connections,
        spec.duration.as_secs_f64(),
        if with_search {
            format!(
                ", one client walking q={} back to back",
                seed::NEEDLE_ABSENT
            )
        } else {
            String::new()
        }
    ));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let admin = relay.admin;
    let searcher = with_search.then(|| tokio::spawn(search_loop(admin, stopped)));
    let (stop_rss, rss) = procfs::spawn_rss_sampler(relay.pid, Duration::from_millis(250));
    let with_postgres = backend == Backend::Postgres;
    let (result, cpu) = tokio::join!(
        load::run(spec.clone()),
        cpu_windows_after(ctx, ctx.warmup, vec![relay.pid], with_postgres)
    );
    let result: LoadResult = result?;
    let resources = resources(&cpu, &rss_stop(stop_rss, rss).await?, relay.pid, true);
    let _ = stop.send(true);
    let searches = match searcher {
        Some(task) => Some(task.await??),
        None => None,
    };
    let bound = 60.0 + result.acked.len() as f64 / 500.0;
    let drained = wait_delivered(&consumer, Some(relay), result.acked.len() as u64, bound).await;
    let consumed = consumer.finish().await?;
    let description = if with_search {
        "closed-loop ingest on the seeded outbox while one client walks a text search back to back"
    } else {
        "closed-loop ingest on the seeded outbox, no admin traffic"
    };
    let mut s = from_load(label, description, &spec, &result);
    s.load = format!(
        "closed, {} conn{}",
        spec.connections,
        if with_search { " + search" } else { "" }
    );
    s.outbox = Some(backend.name().to_owned());
    s.relays = Some(1);
    s.end_to_end = Latency::of(&consumed.end_to_end(ctx.epoch, result.window));
    s.published_per_s = Some(consumed.rate_in(ctx.epoch, result.window));
    conservation(&mut s, &consumed, &result.acked, drained);
    s.resources = resources;
    if let Some(e) = &result.first_error {
        s.notes.push(format!("first failure: {e}"));
    }
    if !drained {
        s.notes.push(format!(
            "not every acked message arrived within {bound:.0} s ({} of {})",
            consumed.first.len(),
            result.acked.len()
        ));
    }
    Ok((s, searches))
}

/// Walks `q=` absent string over the whole outbox, again and again, until told
/// to stop; returns the requests answered, their latency and the walks completed.
async fn search_loop(
    admin: SocketAddr,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Searches> {
    let mut api = Api::new(admin);
    let mut h = load::histogram();
    let mut cursor: Option<i64> = None;
    let mut walks = 0;
    // Bounded: an hour of requests at most.
    let deadline = Instant::now() + Duration::from_secs(3600);
    while !*stopped.borrow_and_update() && Instant::now() < deadline {
        let path = match cursor {
            Some(c) => format!(
                "/api/v1/events?q={}&limit={LIMIT}&cursor={c}",
                seed::NEEDLE_ABSENT
            ),
            None => format!("/api/v1/events?q={}&limit={LIMIT}", seed::NEEDLE_ABSENT),
        };
        let (took, answer) = api.get(&path).await?;
        record(&mut h, took);
        cursor = answer["next_cursor"].as_i64();
        if cursor.is_none() {
            walks += 1;
        }
    }
    Ok((h.len(), Latency::of(&h), walks))
}
