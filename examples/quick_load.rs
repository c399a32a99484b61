//! A first, quick load run against a running relay: closed-loop workers post unique,
//! signed Whitepay webhooks for a fixed time, then the relay's own metrics say how
//! many were published. Not the benchmark (that is `bench/`, with ceilings and
//! latency histograms); a starting point with honest numbers.
//!
//! ```sh
//! HOOKRELAY_SOURCES__WHITEPAY__WEBHOOK_TOKEN=test_webhook_token HOOKRELAY_LISTEN=127.0.0.1:8080 \
//!     target/release/hookrelay serve &
//! cargo run --release --example quick_load -- 64 10
//! ```
//!
//! Arguments: concurrency (default 64), seconds (default 10), ingress URL base
//! (default `http://127.0.0.1:8080`), admin URL base (default `http://127.0.0.1:9090`).
//! Only loopback addresses are accepted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

const TOKEN: &str = "test_webhook_token";

async fn published_total(client: &reqwest::Client, admin: &str) -> f64 {
    let Ok(response) = client.get(format!("{admin}/metrics")).send().await else {
        return 0.0;
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("hookrelay_events_published_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let concurrency: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(64);
    let seconds: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(10);
    let base = args
        .get(3)
        .cloned()
        .unwrap_or_else(|| "http://127.0.0.1:8080".to_owned());
    let admin = args
        .get(4)
        .cloned()
        .unwrap_or_else(|| "http://127.0.0.1:9090".to_owned());
    for url in [&base, &admin] {
        assert!(
            url.starts_with("http://127.") || url.starts_with("http://localhost"),
            "load goes to loopback only, not {url}"
        );
    }
    let client = reqwest::Client::new();
    let published_before = published_total(&client, &admin).await;
    let acked = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let run = uuid::Uuid::new_v4().simple().to_string();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut workers = Vec::new();
    for worker in 0..concurrency {
        let (client, base, run) = (client.clone(), base.clone(), run.clone());
        let (acked, failed) = (Arc::clone(&acked), Arc::clone(&failed));
        workers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                let id = format!("{run}-{worker}-{n}");
                let body = format!(
                    r#"{{"order":{{"id":"{id}","currency":"UAH","value":"200.00","status":"COMPLETE","external_order_id":"m-{id}","created_at":"2024-01-02 03:04:05","completed_at":null}},"event_type":"order::completed"}}"#
                );
                let mut mac = Hmac::<Sha256>::new_from_slice(TOKEN.as_bytes()).expect("key");
                mac.update(body.as_bytes());
                let signature = hex::encode(mac.finalize().into_bytes());
                let sent = client
                    .post(format!("{base}/webhooks/whitepay"))
                    .header("Signature", signature)
                    .body(body)
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().is_success() => acked.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let acked = acked.load(Ordering::Relaxed);
    // Wait (bounded) for the publisher to catch up, then report both rates.
    let drain_deadline = Instant::now() + Duration::from_secs(60);
    let mut published = published_total(&client, &admin).await - published_before;
    while published < acked as f64 && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        published = published_total(&client, &admin).await - published_before;
    }
    let total = started.elapsed().as_secs_f64();
    println!("concurrency {concurrency}, {seconds} s");
    println!("acked      {acked} ({:.0}/s)", acked as f64 / elapsed);
    println!("failed     {}", failed.load(Ordering::Relaxed));
    println!(
        "published  {published} ({:.0}/s from first request to last confirm)",
        published / total
    );
}
