//! `callgrind` (only when named in `--scenarios`): the instructions the relay
//! executes per webhook, counted by valgrind's callgrind. Unlike CPU time, the count
//! does not move with the machine's other load, so a change to the hot path can be
//! judged by one run before and one after.
//!
//! The relay (SQLite outbox) runs under callgrind twice per mode, taking a small and
//! a large number of webhooks; the difference of the two totals divided by the
//! difference of the webhook counts is the cost of one webhook, with start-up and
//! shutdown cancelled out. Two modes:
//! - `ingest`: the broker address is a closed loopback port, so the relay only
//!   authenticates, parses, stores and acks;
//! - `ingest + publish`: the real broker; the relay is stopped once every webhook is
//!   published (confirmed), so the count includes the publisher's share.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::broker;
use crate::context::{Ctx, progress};
use crate::load::{self, Body};
use crate::relay::{self, Metrics, OutboxHome, Relay, RelaySpec};
use crate::report::InstructionCount;

/// Webhook counts of the two runs of each mode.
const SMALL: u64 = 500;
const LARGE: u64 = 2_500;
/// Connections the webhooks are sent over (closed loop).
const CONNECTIONS: u64 = 8;

/// Runs both modes.
pub async fn run(ctx: &Ctx) -> anyhow::Result<Vec<InstructionCount>> {
    let mut counts = Vec::new();
    for publish in [false, true] {
        let mode = if publish {
            "ingest + publish"
        } else {
            "ingest"
        };
        let mut instructions = [0; 2];
        for (i, webhooks) in [SMALL, LARGE].into_iter().enumerate() {
            instructions[i] = one(ctx, publish, webhooks).await?;
            progress(format!(
                "callgrind {mode}: {webhooks} webhooks, {} instructions",
                instructions[i]
            ));
        }
        let per_webhook =
            instructions[1].saturating_sub(instructions[0]) as f64 / (LARGE - SMALL) as f64;
        counts.push(InstructionCount {
            mode,
            instructions,
            webhooks: [SMALL, LARGE],
            per_webhook,
        });
    }
    Ok(counts)
}

/// One relay under callgrind taking `webhooks` webhooks; its instruction total.
async fn one(ctx: &Ctx, publish: bool, webhooks: u64) -> anyhow::Result<u64> {
    let tag = format!("cg{}{webhooks}", if publish { "p" } else { "i" });
    let exchange = ctx.exchange(&tag);
    let broker = if publish {
        let connection = broker::connect(&ctx.args.broker, "hookrelay-bench topology").await?;
        broker::declare(&connection, &exchange, ctx.args.queue_type).await?;
        let _ = connection.close(200, "declared".into()).await;
        ctx.args.broker.clone()
    } else {
        closed_port()?
    };
    let home = OutboxHome::sqlite(&ctx.outbox_parent)?;
    let out_file = ctx
        .outbox_parent
        .join(format!("hookrelay-bench-{}-{tag}.callgrind", ctx.run_id));
    let wrapper = [
        "valgrind".to_owned(),
        "--tool=callgrind".to_owned(),
        format!("--callgrind-out-file={}", out_file.display()),
    ];
    let relay = Relay::start(&RelaySpec {
        binary: &ctx.relay_bin,
        exchange: &exchange,
        broker,
        outbox: home.outbox(),
        extra_sources: &[],
        wrapper: &wrapper,
    })
    .context("starting the relay under valgrind (is valgrind installed?)")?;
    let result = drive(&relay, publish, webhooks, &tag).await;
    let exited = relay.stop_within(Duration::from_secs(120));
    home.remove().await;
    result?;
    if !exited {
        bail!("the relay under callgrind did not exit within 120 s of SIGTERM");
    }
    let total = read_total(&out_file);
    if ctx.args.keep_outbox {
        progress(format!(
            "callgrind output kept: callgrind_annotate {}",
            out_file.display()
        ));
    } else {
        let _ = std::fs::remove_file(&out_file);
    }
    total
}

/// Sends the webhooks and, when publishing, waits until all are published.
async fn drive(relay: &Relay, publish: bool, webhooks: u64, tag: &str) -> anyhow::Result<()> {
    let patience = Duration::from_secs(600);
    if publish {
        wait_for(relay, patience, |m| m.broker_connected >= 1.0).await?;
    }
    let mut senders = Vec::new();
    for c in 0..CONNECTIONS {
        let addr = relay.ingress;
        let tag = format!("{tag}c{c}");
        let share = webhooks / CONNECTIONS + u64::from(c < webhooks % CONNECTIONS);
        senders.push(tokio::spawn(async move { send(addr, &tag, share).await }));
    }
    for sender in senders {
        sender.await.context("sender task")??;
    }
    if publish {
        wait_for(relay, patience, |m| m.published >= webhooks as f64).await?;
    }
    Ok(())
}

/// Sends `n` signed webhooks one after another on one connection; each must be acked.
async fn send(addr: std::net::SocketAddr, tag: &str, n: u64) -> anyhow::Result<()> {
    let mut sender = hookrelay_testkit::http::connect::<Body>(addr).await?;
    let key = Hmac::<Sha256>::new_from_slice(relay::TOKEN.as_bytes()).context("hmac key")?;
    for seq in 0..n {
        let body = load::whitepay_order(&load::order_id(tag, seq, 0));
        let mut mac = key.clone();
        mac.update(body.as_bytes());
        let request = hyper::Request::post("/webhooks/whitepay")
            .header(hyper::header::HOST, addr.to_string())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header("signature", hex::encode(mac.finalize().into_bytes()))
            .body(Body::new(Bytes::from(body)))?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        // Read the body so the connection is ready for the next request.
        http_body_util::BodyExt::collect(response.into_body()).await?;
        anyhow::ensure!(status.is_success(), "webhook {seq} of {tag}: {status}");
    }
    Ok(())
}

async fn wait_for(
    relay: &Relay,
    patience: Duration,
    done: impl Fn(&Metrics) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + patience;
    loop {
        if let Ok(m) = relay.metrics().await
            && done(&m)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the relay under callgrind did not get there within {patience:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A loopback address nothing listens on (bound, then released).
fn closed_port() -> anyhow::Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.to_string())
}

/// The `totals:` (or `summary:`) line of a callgrind output file: the `Ir` count.
fn read_total(path: &Path) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading callgrind output {}", path.display()))?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no instruction total in {}", path.display()))
}
