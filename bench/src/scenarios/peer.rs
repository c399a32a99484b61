//! `peer`: Svix Bridge, the relay we measure against, under `steady`'s load on the
//! same broker and the same kind of queue, so the ratio of the two comes out of
//! one run. The binary is given with `--svix-bridge PATH` (built with the anchors'
//! build kit outside this repository); without it the scenario is skipped.
//!
//! Svix Bridge stores nothing and publishes without publisher confirms: its 204
//! means lapin accepted the frame, not that the broker has the message. So the
//! row counts what reached the queue as well as what was acked, and the report
//! shows both.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::broker::{self, Consumer, ROUTING_KEY};
use crate::context::{Ctx, progress};
use crate::load::{self, Mode};
use crate::measure::{
    conservation, cpu_windows_after, from_load, resources, rss_stop, wait_delivered,
};
use crate::procfs;
use crate::report::{Latency, Scenario};

/// Runs `peer`: no rows without `--svix-bridge`.
pub async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Scenario>> {
    let Some(binary) = &ctx.args.svix_bridge else {
        progress("peer: skipped (no --svix-bridge PATH)");
        return Ok(Vec::new());
    };
    let exchange = ctx.exchange("peer");
    let connection = broker::connect(&ctx.args.broker, "hookrelay-bench topology").await?;
    let queue = broker::declare(&connection, &exchange, ctx.args.queue_type).await?;
    let _ = connection.close(200, "declared".into()).await;
    let consumer = Consumer::start(&ctx.args.broker, &queue, &ctx.tag("peer"), ctx.epoch).await?;
    let bridge = Bridge::start(binary, &ctx.args.broker, &exchange).await?;
    let pid = bridge.child.id();
    let mut spec = ctx.load(
        "peer",
        vec![bridge.addr],
        ctx.args.concurrency,
        Mode::Closed,
    );
    spec.path = "/webhook/whitepay".to_owned();
    progress(format!(
        "peer: Svix Bridge (pid {pid}) on {}, closed loop {} connections",
        bridge.addr, spec.connections
    ));
    let (stop_rss, rss) = procfs::spawn_rss_sampler(pid, Duration::from_millis(250));
    let (result, cpu) = tokio::join!(
        load::run(spec.clone()),
        cpu_windows_after(ctx, ctx.warmup, vec![pid], false)
    );
    let result = result?;
    let rss = rss_stop(stop_rss, rss).await?;
    let resources = resources(&cpu, &rss, pid, true);
    // What Svix acked without a confirm may still be on its way: the same bound as
    // the relay scenarios'.
    let bound = 60.0 + result.acked.len() as f64 / 1000.0;
    let drained = wait_delivered(&consumer, None, result.acked.len() as u64, bound).await;
    let consumed = consumer.finish().await?;
    let mut s = from_load(
        "peer",
        "Svix Bridge (no verification, no store, no publisher confirms) under steady's load, same broker and queue",
        &spec,
        &result,
    );
    s.end_to_end = Latency::of(&consumed.end_to_end(ctx.epoch, result.window));
    s.published_per_s = Some(consumed.rate_in(ctx.epoch, result.window));
    conservation(&mut s, &consumed, &result.acked, drained);
    s.mean_message_bytes = Some(consumed.mean_bytes());
    s.resources = resources;
    s.notes.push(format!(
        "acked {} (whole run), in the queue {} of them; Svix's ack does not wait for the broker",
        result.acked.len(),
        consumed.first.len()
    ));
    if let Some(e) = &result.first_error {
        s.notes.push(format!("first failure: {e}"));
    }
    if let Some(e) = consumed.error {
        s.notes.push(format!("consumer error: {e}"));
    }
    drop(bridge);
    Ok(vec![s])
}

/// A running Svix Bridge, killed on drop; its configuration and log in a
/// temporary directory.
struct Bridge {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Bridge {
    /// Starts `binary` receiving `POST /webhook/whitepay` on a free loopback
    /// port and publishing persistent messages to `exchange` with the relay's
    /// routing key for a completed Whitepay order (the bench's queue is bound
    /// with `#`); waits (bounded) until it accepts connections.
    async fn start(binary: &Path, broker: &str, exchange: &str) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("svix-bridge.yaml");
        std::fs::write(
            &config,
            format!(
                r#"log_level: "info"
http_listen_address: "{addr}"
receivers:
  - name: "whitepay-to-rabbitmq"
    input:
      type: "webhook"
      path_id: "whitepay"
      verification:
        type: "none"
    output:
      type: "rabbitmq"
      uri: "amqp://guest:guest@{broker}/%2f"
      exchange: "{exchange}"
      routing_key: "{ROUTING_KEY}"
      publish_properties:
        delivery_mode: 2
        content_type: "application/json"
"#
            ),
        )?;
        let log = std::fs::File::create(dir.path().join("svix-bridge.log"))?;
        let child = Command::new(binary)
            .arg("--cfg-file")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting Svix Bridge {}", binary.display()))?;
        let mut bridge = Self { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if let Ok(Some(status)) = bridge.child.try_wait() {
                bail!(
                    "Svix Bridge exited ({status}) before listening:\n{}",
                    bridge.log()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "Svix Bridge did not listen on {addr} within 20 s:\n{}",
                    bridge.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(bridge)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("svix-bridge.log")).unwrap_or_default()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
