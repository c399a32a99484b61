//! The ceilings the relay is measured against, in the same run on the same machine:
//! `fsync-probe` (the disk's syncs per second), `http-ceiling` (the load generator
//! against a bare HTTP server that answers 200, in a process of its own) and
//! `broker-ceiling` (the most confirmed messages per second from this broker).

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use hyper_util::rt::TokioIo;

use crate::broker::{self, Consumer};
use crate::context::{Ctx, progress};
use crate::load::{self, Mode};
use crate::measure::{
    conservation, cpu_windows_after, from_load, resources, rss_stop, wait_delivered,
};
use crate::report::{Latency, Scenario};
use crate::{disk, procfs};

/// `fsync-probe`: 4 KiB append + `fdatasync` in `--outbox-dir`, for 5 s (2 s with
/// `--quick`).
pub async fn fsync_probe(ctx: &Ctx) -> anyhow::Result<Scenario> {
    let dir = ctx.outbox_parent.clone();
    let secs = if ctx.args.quick { 2.0 } else { 5.0 };
    progress(format!(
        "fsync-probe: 4 KiB append + fdatasync in {} for {secs} s",
        dir.display()
    ));
    let probe =
        tokio::task::spawn_blocking(move || disk::probe(&dir, Duration::from_secs_f64(secs)))
            .await??;
    let window = probe.window.as_secs_f64();
    Ok(Scenario {
        name: "fsync-probe".to_owned(),
        description: "one thread appending 4 KiB + fdatasync: the disk's commit ceiling".to_owned(),
        load: "1 thread, 4 KiB + fdatasync".to_owned(),
        window_s: window,
        acked_per_s: probe.count as f64 / window,
        ok: probe.count,
        latency_from: "send".to_owned(),
        ack: Latency::of(&probe.latency),
        commits_per_s: Some(probe.count as f64 / window),
        ..Scenario::default()
    })
}

/// `http-ceiling`: the load generator, closed loop, against [`serve_http`] in a
/// process of its own.
pub async fn http_ceiling(ctx: &Ctx) -> anyhow::Result<Scenario> {
    let server = CeilingServer::start()?;
    let pid = server.child.id();
    progress(format!(
        "http-ceiling: bare axum server (pid {pid}) on {}, closed loop {} connections",
        server.addr, ctx.args.concurrency
    ));
    let spec = ctx.load(
        "http",
        vec![server.addr],
        ctx.args.concurrency,
        Mode::Closed,
    );
    let (stop_rss, rss) = procfs::spawn_rss_sampler(pid, Duration::from_millis(250));
    let (result, cpu) = tokio::join!(
        load::run(spec.clone()),
        cpu_windows_after(ctx, ctx.warmup, vec![pid], false)
    );
    let result = result?;
    let _ = stop_rss.send(true);
    let rss = rss.await?;
    let mut s = from_load(
        "http-ceiling",
        "bare axum server answering 200: the HTTP ceiling of this machine",
        &spec,
        &result,
    );
    s.resources = resources(&cpu, &rss, pid, false);
    s.notes.push(format!(
        "bench (load generator) used {:.0} % CPU against the server's {:.0} %",
        s.resources.bench_cpu_pct.unwrap_or(0.0),
        s.resources.server_cpu_pct.unwrap_or(0.0)
    ));
    Ok(s)
}

/// The bare HTTP server, in its own process.
struct CeilingServer {
    child: Child,
    addr: std::net::SocketAddr,
}

impl CeilingServer {
    fn start() -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .arg("http-ceiling-server")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .context("the HTTP ceiling server did not start")?;
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .context("unexpected output of the HTTP ceiling server")?
            .parse()?;
        Ok(Self { child, addr })
    }
}

impl Drop for CeilingServer {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The HTTP ceiling: a bare axum router that reads the body and answers 200 with an
/// empty body, served by hyper's HTTP/1 connection builder with TCP_NODELAY on a
/// default multi-threaded tokio runtime, the same serving stack as the relay's
/// ingress. Runs in its own process (`hookrelay-bench http-ceiling-server`) so the
/// OS schedules it as it schedules the relay. Prints `listening ADDR` on stdout,
/// then serves until its stdin closes (the bench dropping it) or 10 minutes pass.
pub fn serve_http() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        use tower::ServiceExt;
        let router = axum::Router::new().route(
            "/webhooks/{source}",
            axum::routing::post(|body: Bytes| async move {
                drop(body);
                hyper::StatusCode::OK
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("listening {}", listener.local_addr()?);
        let stdin_closed = tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        });
        let serve = async {
            let builder = hyper::server::conn::http1::Builder::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let router = router.clone();
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        router.clone().oneshot(request.map(axum::body::Body::new))
                    },
                );
                let connection = builder.serve_connection(TokioIo::new(stream), service);
                tokio::spawn(async move {
                    let _ = connection.await;
                });
            }
        };
        tokio::select! {
            () = serve => {}
            _ = stdin_closed => {}
            () = tokio::time::sleep(Duration::from_secs(600)) => {}
        }
        Ok(())
    })
}

/// How many publishers a broker ceiling runs, and the confirms each keeps in flight.
#[derive(Clone, Copy)]
pub enum Publishers {
    /// `broker-ceiling`: one lapin channel with `--confirm-window` confirms in
    /// flight, the shape of the relay's publisher.
    One,
    /// `broker-ceiling-max`: `--ceiling-publishers`, each on a connection of its
    /// own with `--ceiling-window` confirms in flight: the most this broker
    /// confirms, whoever publishes.
    Max,
}

/// `broker-ceiling` and `broker-ceiling-max`: relay-shaped persistent messages,
/// published with confirms and consumed as in the relay scenarios.
pub async fn broker_ceiling(ctx: &Ctx, name: &str, shape: Publishers) -> anyhow::Result<Scenario> {
    let (publishers, in_flight) = match shape {
        Publishers::One => (1, ctx.args.confirm_window),
        Publishers::Max => (ctx.args.ceiling_publishers, ctx.args.ceiling_window),
    };
    let exchange = ctx.exchange(name);
    let tag = ctx.tag(name);
    let connection = broker::connect(&ctx.args.broker, "hookrelay-bench topology").await?;
    let queue = broker::declare(&connection, &exchange, ctx.args.queue_type).await?;
    let consumer = Consumer::start(&ctx.args.broker, &queue, &tag, ctx.epoch).await?;
    progress(format!(
        "{name}: {publishers} lapin publisher(s), {in_flight} confirms outstanding each, to {exchange}"
    ));
    let broker_pids = ctx.broker_pids();
    let rss_pid = broker_pids.first().copied().unwrap_or(ctx.bench_pid);
    let (stop_rss, rss) = procfs::spawn_rss_sampler(rss_pid, Duration::from_millis(250));
    let (published, cpu) = tokio::join!(
        broker::publish_ceiling(
            &ctx.args.broker,
            &exchange,
            &tag,
            ctx.epoch,
            publishers,
            in_flight,
            ctx.warmup,
            ctx.duration,
        ),
        cpu_windows_after(ctx, ctx.warmup, vec![rss_pid], false)
    );
    let published = published?;
    // The "server" of this scenario is the broker itself.
    let resources = resources(&cpu, &rss_stop(stop_rss, rss).await?, rss_pid, true);
    let drained = wait_delivered(&consumer, None, published.acked.len() as u64, 120.0).await;
    let consumed = consumer.finish().await?;
    let window = published.window;
    let secs = (window.1 - window.0).as_secs_f64();
    let mut s = Scenario {
        name: name.to_owned(),
        description: format!(
            "{publishers} lapin publisher(s) on connections of their own, sliding windows of outstanding confirms, persistent relay-shaped messages, {:?} queue",
            ctx.args.queue_type
        ),
        load: if publishers == 1 {
            format!("{in_flight} confirms in flight")
        } else {
            format!("{publishers} × {in_flight} confirms in flight")
        },
        window_s: secs,
        acked_per_s: published.confirmed as f64 / secs,
        ok: published.confirmed,
        other_status: published.refused,
        end_to_end: Latency::of(&consumed.end_to_end(ctx.epoch, window)),
        published_per_s: Some(consumed.rate_in(ctx.epoch, window)),
        mean_message_bytes: Some(consumed.mean_bytes()),
        resources,
        ..Scenario::default()
    };
    conservation(&mut s, &consumed, &published.acked, drained);
    s.notes.push(format!(
        "publish → confirm p50 {:.2} ms, p99 {:.2} ms; server RSS column is the broker's (beam.smp)",
        published.confirm_latency.value_at_quantile(0.5) as f64 / 1000.0,
        published.confirm_latency.value_at_quantile(0.99) as f64 / 1000.0,
    ));
    if let Some(e) = consumed.error {
        s.notes.push(format!("consumer error: {e}"));
    }
    Ok(s)
}
