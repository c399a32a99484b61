//! The load generator: unique, correctly signed Whitepay webhooks at a fixed
//! concurrency (closed loop) or at a fixed rate (open loop, wrk2-style: latency is
//! measured from the time a request was *due*, so a stall that delays the
//! following requests shows in their latency instead of hiding as coordinated
//! omission).
//!
//! Every worker owns one keep-alive HTTP/1.1 connection. Each request carries a
//! fresh order id `{tag}-{seq}-{sent_us}`: unique, so the relay's dedup never
//! short-cuts the path, and readable back from the published event's `subject`, so
//! the consumer can match messages to requests (conservation) and compute
//! end-to-end latency from the send time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use sha2::Sha256;

use hookrelay_testkit::http;

/// A request body the load workers send.
pub type Body = Full<Bytes>;

/// Longest latency a histogram holds: 5 minutes, in microseconds.
pub const HIST_MAX_US: u64 = 300_000_000;

/// A latency histogram in microseconds, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("valid histogram bounds")
}

/// A Whitepay `order::completed` body with order id `id` (the shape of
/// `tests/it/support/fixtures.rs::whitepay_order`).
pub fn whitepay_order(id: &str) -> String {
    format!(
        r#"{{"order":{{"id":"{id}","currency":"UAH","value":"200.10","status":"COMPLETE","external_order_id":"m-{id}","created_at":"2024-01-02 03:04:05","completed_at":null,"acquiring_url":"https:\/\/merchant.pay.whitepay.com\/fiat-order\/{id}"}},"event_type":"order::completed"}}"#
    )
}

/// The order id of request `seq` of a run tagged `tag`, sent at `sent_us`
/// microseconds after the bench's epoch.
pub fn order_id(tag: &str, seq: u64, sent_us: u64) -> String {
    format!("{tag}-{seq}-{sent_us}")
}

/// Reads back `(seq, sent_us)` from an order id of the run tagged `tag`.
pub fn parse_order_id(tag: &str, id: &str) -> Option<(u64, u64)> {
    let rest = id.strip_prefix(tag)?.strip_prefix('-')?;
    let (seq, sent) = rest.split_once('-')?;
    Some((seq.parse().ok()?, sent.parse().ok()?))
}

/// Closed loop (each worker sends its next request when the previous one is
/// answered) or open loop at a fixed total rate.
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    Closed,
    Open { rate: f64 },
}

/// One load run.
#[derive(Clone)]
pub struct LoadSpec {
    /// Where to send: connection *i* goes to `addrs[i % addrs.len()]` (round robin,
    /// so several relays share the connections evenly).
    pub addrs: Vec<SocketAddr>,
    pub path: String,
    pub token: String,
    /// Order-id prefix, unique per scenario.
    pub tag: String,
    pub connections: usize,
    pub mode: Mode,
    /// Requests sent before `warmup` has passed are not measured.
    pub warmup: Duration,
    /// Measured time after the warm-up; nothing is sent after it.
    pub duration: Duration,
    /// Stop after this many requests (the backlog scenario); `None`: time only.
    pub limit: Option<u64>,
    /// Per-request bound; a request that takes longer is abandoned and its
    /// connection replaced.
    pub timeout: Duration,
    /// Zero point of the send times written into order ids.
    pub epoch: Instant,
}

/// What a load run saw.
pub struct LoadResult {
    /// Sequence numbers of every request answered 200 (warm-up included).
    pub acked: Vec<u64>,
    /// Requests sent (warm-up included).
    pub sent_total: u64,
    /// Start and end of the measured window.
    pub window: (Instant, Instant),
    /// Measured window: requests sent, answered 200, 503, another status, failed
    /// (connection error), abandoned after the timeout.
    pub sent: u64,
    pub ok: u64,
    pub unavailable: u64,
    pub other_status: u64,
    pub errors: u64,
    pub timeouts: u64,
    /// Open loop: requests due before the end (warm-up included) that were never
    /// sent because every worker was still busy (the generator fell behind).
    pub unsent: u64,
    /// 200s: latency from when the request was due (closed loop: sent).
    pub ack: Histogram<u64>,
    /// 200s: latency from when it was actually sent (service time).
    pub ack_service: Histogram<u64>,
    /// 503s: latency from when the request was due.
    pub rejected: Histogram<u64>,
    /// 503s: latency from when it was actually sent.
    pub rejected_service: Histogram<u64>,
    /// Open loop: how late requests were sent after their due time (the
    /// generator's own lag: busy connections or a stalled bench process).
    pub send_lag: Histogram<u64>,
    /// How late a 1 ms timer of the bench's runtime fired, sampled all along: a
    /// stalled bench process (not scheduled, runtime blocked) shows here.
    pub runtime_stall: Histogram<u64>,
    /// Requests (any outcome) that took over 1 s from when they were due.
    pub over_1s: u64,
    /// Requests (any outcome) that took over 1 s from when they were sent.
    pub over_1s_service: u64,
    /// 200s per second of the window.
    pub ok_per_second: Vec<u64>,
    /// The first failure seen, for the report.
    pub first_error: Option<String>,
}

impl LoadResult {
    /// Window length in seconds.
    pub fn window_secs(&self) -> f64 {
        (self.window.1 - self.window.0).as_secs_f64()
    }
}

/// Latency histograms, shared by the workers (one set per worker would cost
/// ~0.8 MB each, too much for thousands of connections).
struct Hists {
    ack: Histogram<u64>,
    ack_service: Histogram<u64>,
    rejected: Histogram<u64>,
    rejected_service: Histogram<u64>,
    send_lag: Histogram<u64>,
}

#[derive(Default)]
struct Worker {
    acked: Vec<u64>,
    sent_total: u64,
    sent: u64,
    ok: u64,
    unavailable: u64,
    other_status: u64,
    errors: u64,
    timeouts: u64,
    over_1s: u64,
    over_1s_service: u64,
    ok_per_second: Vec<u64>,
    first_error: Option<String>,
}

enum Outcome {
    Status(u16),
    Error(String),
    Timeout,
}

/// The schedule, fixed once every worker is connected.
#[derive(Clone, Copy)]
struct Times {
    start: Instant,
    measure_from: Instant,
    end: Instant,
}

struct Run {
    spec: LoadSpec,
    seq: AtomicU64,
    ticket: AtomicU64,
    /// Open loop: tickets claimed, due before the end, but not sent because the
    /// end had come.
    abandoned: AtomicU64,
    mac: Hmac<Sha256>,
    hists: std::sync::Mutex<Hists>,
    /// Bounds concurrent connection attempts during the connect phase.
    connecting: tokio::sync::Semaphore,
    ready: tokio::sync::Barrier,
    times: tokio::sync::watch::Receiver<Option<Times>>,
}

/// How long the connect phase may take before the run starts anyway.
const CONNECT_PHASE: Duration = Duration::from_secs(30);

/// Runs the load and returns what it saw. Every worker connects first (at most 128
/// connection attempts at once, so thousands of connections do not overflow the
/// server's listen backlog and stall on SYN retransmits); then the clock starts.
/// Bounded by the connect phase (30 s), `warmup + duration`, and one request timeout.
pub async fn run(spec: LoadSpec) -> anyhow::Result<LoadResult> {
    anyhow::ensure!(!spec.addrs.is_empty(), "at least one target address");
    for addr in &spec.addrs {
        http::ensure_loopback(*addr)?;
    }
    anyhow::ensure!(spec.connections > 0, "at least one connection");
    if let Mode::Open { rate } = spec.mode {
        anyhow::ensure!(
            rate.is_finite() && rate > 0.0,
            "open-loop rate must be positive"
        );
    }
    let mac = Hmac::<Sha256>::new_from_slice(spec.token.as_bytes()).expect("any key length");
    let (set_times, times) = tokio::sync::watch::channel(None);
    let run = Arc::new(Run {
        seq: AtomicU64::new(0),
        ticket: AtomicU64::new(0),
        abandoned: AtomicU64::new(0),
        mac,
        hists: std::sync::Mutex::new(Hists {
            ack: histogram(),
            ack_service: histogram(),
            rejected: histogram(),
            rejected_service: histogram(),
            send_lag: histogram(),
        }),
        connecting: tokio::sync::Semaphore::new(128),
        ready: tokio::sync::Barrier::new(spec.connections + 1),
        times,
        spec,
    });
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..run.spec.connections {
        let addr = run.spec.addrs[i % run.spec.addrs.len()];
        tasks.spawn(worker(Arc::clone(&run), addr));
    }
    run.ready.wait().await;
    let start = Instant::now();
    let t = Times {
        start,
        measure_from: start + run.spec.warmup,
        end: start + run.spec.warmup + run.spec.duration,
    };
    set_times.send_replace(Some(t));
    let workers_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let canary_done = Arc::clone(&workers_done);
    let canary = tokio::spawn(async move {
        let mut stalls = histogram();
        while Instant::now() < t.end && !canary_done.load(Ordering::Relaxed) {
            let asked = Instant::now();
            tokio::time::sleep(Duration::from_millis(1)).await;
            let late = asked.elapsed().saturating_sub(Duration::from_millis(1));
            if asked >= t.measure_from {
                stalls.saturating_record((late.as_micros() as u64).max(1));
            }
        }
        stalls
    });
    let seconds = run.spec.duration.as_secs() as usize + 1;
    let mut result = LoadResult {
        acked: Vec::new(),
        sent_total: 0,
        window: (t.measure_from, t.end),
        sent: 0,
        ok: 0,
        unavailable: 0,
        other_status: 0,
        errors: 0,
        timeouts: 0,
        unsent: 0,
        ack: histogram(),
        ack_service: histogram(),
        rejected: histogram(),
        rejected_service: histogram(),
        send_lag: histogram(),
        runtime_stall: histogram(),
        over_1s: 0,
        over_1s_service: 0,
        ok_per_second: vec![0; seconds],
        first_error: None,
    };
    while let Some(done) = tasks.join_next().await {
        let w = done?;
        result.acked.extend(w.acked);
        result.sent_total += w.sent_total;
        result.sent += w.sent;
        result.ok += w.ok;
        result.unavailable += w.unavailable;
        result.other_status += w.other_status;
        result.errors += w.errors;
        result.timeouts += w.timeouts;
        result.over_1s += w.over_1s;
        result.over_1s_service += w.over_1s_service;
        for (total, n) in result.ok_per_second.iter_mut().zip(w.ok_per_second) {
            *total += n;
        }
        if result.first_error.is_none() {
            result.first_error = w.first_error;
        }
    }
    let finished = Instant::now();
    workers_done.store(true, Ordering::Relaxed);
    result.runtime_stall = canary.await?;
    {
        let hists = run.hists.lock().expect("histograms");
        result.ack.add(&hists.ack)?;
        result.ack_service.add(&hists.ack_service)?;
        result.rejected.add(&hists.rejected)?;
        result.rejected_service.add(&hists.rejected_service)?;
        result.send_lag.add(&hists.send_lag)?;
    }
    if let Mode::Open { rate } = run.spec.mode {
        let due = ((t.end - t.start).as_secs_f64() * rate) as u64;
        let claimed = run.ticket.load(Ordering::Relaxed);
        result.unsent = run.abandoned.load(Ordering::Relaxed) + due.saturating_sub(claimed);
    }
    // The backlog run ends on its count: the window is what it took.
    if run.spec.limit.is_some() {
        result.window.1 = finished.min(t.end);
    }
    Ok(result)
}

async fn worker(run: Arc<Run>, addr: SocketAddr) -> Worker {
    let spec = &run.spec;
    let mut w = Worker {
        ok_per_second: vec![0; spec.duration.as_secs() as usize + 1],
        ..Worker::default()
    };
    let uri = spec.path.clone();
    let host = addr.to_string();
    // Connect phase.
    let mut connection: Option<SendRequest<Body>> = None;
    let phase_end = Instant::now() + CONNECT_PHASE;
    while connection.is_none() && Instant::now() < phase_end {
        let Ok(_permit) = run.connecting.acquire().await else {
            break;
        };
        match tokio::time::timeout(Duration::from_secs(5), http::connect::<Body>(addr)).await {
            Ok(Ok(c)) => connection = Some(c),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    run.ready.wait().await;
    let mut times = run.times.clone();
    let Ok(t) = times
        .wait_for(Option::is_some)
        .await
        .map(|t| t.expect("set"))
    else {
        return w;
    };
    loop {
        // When is this request due?
        let due = match spec.mode {
            Mode::Closed => {
                let now = Instant::now();
                if now >= t.end {
                    break;
                }
                now
            }
            Mode::Open { rate } => {
                let k = run.ticket.fetch_add(1, Ordering::Relaxed);
                let due = t.start + Duration::from_secs_f64(k as f64 / rate);
                if due >= t.end {
                    break;
                }
                // Stop at the end even when behind: a generator that cannot keep up
                // reports the requests it never sent instead of running on.
                if Instant::now() >= t.end {
                    run.abandoned.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
                due
            }
        };
        let seq = run.seq.fetch_add(1, Ordering::Relaxed);
        if spec.limit.is_some_and(|limit| seq >= limit) {
            break;
        }
        // (Re)connect if needed; a failure counts as a failed request.
        if connection.as_ref().is_none_or(SendRequest::is_closed) {
            match tokio::time::timeout(spec.timeout, http::connect::<Body>(addr)).await {
                Ok(Ok(c)) => connection = Some(c),
                Ok(Err(e)) => {
                    let measured = Instant::now() >= t.measure_from;
                    w.fail(measured, Outcome::Error(format!("connect: {e}")));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                Err(_) => {
                    let measured = Instant::now() >= t.measure_from;
                    w.fail(measured, Outcome::Timeout);
                    continue;
                }
            }
        }
        let sender = connection.as_mut().expect("connected above");
        let sent = Instant::now();
        // Measured by send time: in an open loop that fell behind, requests due
        // during the warm-up but sent in the window count, with their full delay.
        let measured = sent >= t.measure_from;
        let sent_us = (sent - spec.epoch).as_micros() as u64;
        let body = whitepay_order(&order_id(&spec.tag, seq, sent_us));
        let mut mac = run.mac.clone();
        mac.update(body.as_bytes());
        let signature = hex::encode(mac.finalize().into_bytes());
        let request = hyper::Request::post(uri.as_str())
            .header(hyper::header::HOST, host.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header("signature", signature)
            .body(Full::new(Bytes::from(body)))
            .expect("valid request");
        w.sent_total += 1;
        if measured {
            w.sent += 1;
        }
        let exchange = async {
            sender.ready().await?;
            let response = sender.send_request(request).await?;
            let status = response.status().as_u16();
            response.into_body().collect().await?;
            Ok::<u16, hyper::Error>(status)
        };
        let outcome = match tokio::time::timeout(spec.timeout, exchange).await {
            Ok(Ok(status)) => Outcome::Status(status),
            Ok(Err(e)) => Outcome::Error(e.to_string()),
            Err(_) => Outcome::Timeout,
        };
        let done = Instant::now();
        if !matches!(outcome, Outcome::Status(_)) {
            connection = None;
        }
        // Any 2xx is an ack: the relay answers 200, Svix Bridge (the `peer`) 204.
        if let Outcome::Status(200..=299) = outcome {
            w.acked.push(seq);
        }
        if !measured {
            continue;
        }
        let latency = (done - due).as_micros() as u64;
        let service = (done - sent).as_micros() as u64;
        if done - due > Duration::from_secs(1) {
            w.over_1s += 1;
        }
        if done - sent > Duration::from_secs(1) {
            w.over_1s_service += 1;
        }
        match outcome {
            Outcome::Status(200..=299) => {
                w.ok += 1;
                let mut hists = run.hists.lock().expect("histograms");
                if matches!(spec.mode, Mode::Open { .. }) {
                    hists.send_lag.saturating_record(
                        (sent.saturating_duration_since(due).as_micros() as u64).max(1),
                    );
                }
                hists.ack.saturating_record(latency.max(1));
                hists.ack_service.saturating_record(service.max(1));
                drop(hists);
                let second = done.saturating_duration_since(t.measure_from).as_secs() as usize;
                if let Some(slot) = w.ok_per_second.get_mut(second) {
                    *slot += 1;
                }
            }
            Outcome::Status(503) => {
                w.unavailable += 1;
                let mut hists = run.hists.lock().expect("histograms");
                hists.rejected.saturating_record(latency.max(1));
                hists.rejected_service.saturating_record(service.max(1));
            }
            Outcome::Status(other) => {
                w.other_status += 1;
                if w.first_error.is_none() {
                    w.first_error = Some(format!("HTTP {other}"));
                }
            }
            failure => w.fail(true, failure),
        }
    }
    w
}

impl Worker {
    fn fail(&mut self, measured: bool, outcome: Outcome) {
        if !measured {
            return;
        }
        match outcome {
            Outcome::Timeout => {
                self.timeouts += 1;
                self.over_1s += 1;
                self.over_1s_service += 1;
                if self.first_error.is_none() {
                    self.first_error = Some("request timed out".to_owned());
                }
            }
            Outcome::Error(e) => {
                self.errors += 1;
                if self.first_error.is_none() {
                    self.first_error = Some(e);
                }
            }
            Outcome::Status(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_ids_read_back() {
        let id = order_id("r1a2b3c4-steady", 42, 1_234_567);
        assert_eq!(
            parse_order_id("r1a2b3c4-steady", &id),
            Some((42, 1_234_567))
        );
        assert_eq!(parse_order_id("r1a2b3c4-other", &id), None);
        let body = whitepay_order(&id);
        let value: serde_json::Value = serde_json::from_str(&body).expect("valid JSON");
        assert_eq!(value["order"]["id"], id.as_str());
    }
}
