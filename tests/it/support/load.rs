//! A provider's traffic for the fault tests: workers that send signed Whitepay
//! webhooks, retry each on the next target in turn until one acks it (as a provider
//! retries), and keep what was acked for the oracle.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::fixtures::{WHITEPAY_TOKEN, whitepay_order_at, whitepay_signature};

/// The statuses of an order's life, in the order its events are sent.
pub const ORDER_LIFE: [&str; 4] = ["INIT", "OPEN", "PARTIALLY_FULFILLED", "COMPLETE"];

/// What each worker sends.
#[derive(Debug, Clone, Copy)]
pub enum Walk {
    /// One event per order (`COMPLETE`), a new order each time.
    NewOrders,
    /// Each order through [`ORDER_LIFE`], an event only after the previous one of
    /// the order was acked, then a new order.
    OrderLives,
    /// The same for this many orders per worker, then the worker stops.
    OrdersThroughLife(usize),
}

/// One webhook that got a 2xx.
pub struct Acked {
    /// The order id: the event's subject.
    pub subject: String,
    /// The provider status it carried.
    pub status: String,
    /// The body, byte for byte.
    pub body: Vec<u8>,
    /// When the 2xx came.
    pub at: Instant,
}

/// Workers sending until [`Load::finish`].
pub struct Load {
    targets: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    refusals: Arc<AtomicUsize>,
    workers: Vec<tokio::task::JoinHandle<Vec<Acked>>>,
}

impl Load {
    /// Starts `workers` workers over `targets` (webhook URLs), each pausing `pause`
    /// after an ack.
    pub fn start(targets: Vec<String>, workers: usize, pause: Duration, walk: Walk) -> Self {
        let targets = Arc::new(Mutex::new(targets));
        let stop = Arc::new(AtomicBool::new(false));
        let refusals = Arc::new(AtomicUsize::new(0));
        let run = uuid::Uuid::new_v4().simple().to_string();
        let workers = (0..workers)
            .map(|w| {
                let (targets, stop, refusals) = (
                    Arc::clone(&targets),
                    Arc::clone(&stop),
                    Arc::clone(&refusals),
                );
                let run = run.clone();
                tokio::spawn(async move {
                    let client = reqwest::Client::builder()
                        .timeout(Duration::from_secs(10))
                        .build()
                        .expect("client");
                    let (statuses, orders): (&[&str], usize) = match walk {
                        Walk::NewOrders => (&ORDER_LIFE[3..], usize::MAX),
                        Walk::OrderLives => (&ORDER_LIFE, usize::MAX),
                        Walk::OrdersThroughLife(orders) => (&ORDER_LIFE, orders),
                    };
                    let mut acked = Vec::new();
                    let mut target = w;
                    for order in 0..orders {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let subject = format!("{run}-{w}-{order}");
                        for status in statuses {
                            let body = whitepay_order_at(&subject, status);
                            let signature = whitepay_signature(WHITEPAY_TOKEN, &body);
                            // Bounded, so a broken relay fails the test instead of
                            // hanging it.
                            let deadline = Instant::now() + Duration::from_secs(90);
                            loop {
                                assert!(
                                    Instant::now() < deadline,
                                    "{subject} {status} never acked"
                                );
                                let url = {
                                    let targets = targets.lock().expect("targets");
                                    targets[target % targets.len()].clone()
                                };
                                target += 1;
                                let answer = client
                                    .post(&url)
                                    .header("Signature", &signature)
                                    .body(body.clone())
                                    .send()
                                    .await;
                                if answer.is_ok_and(|r| r.status().is_success()) {
                                    break;
                                }
                                refusals.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                            acked.push(Acked {
                                subject: subject.clone(),
                                status: (*status).to_owned(),
                                body,
                                at: Instant::now(),
                            });
                            tokio::time::sleep(pause).await;
                        }
                    }
                    acked
                })
            })
            .collect();
        Self {
            targets,
            stop,
            refusals,
            workers,
        }
    }

    /// Points target `index` elsewhere (a restarted relay).
    pub fn retarget(&self, index: usize, url: String) {
        self.targets.lock().expect("targets")[index] = url;
    }

    /// Waits until every worker sent all its orders (a bounded walk); returns
    /// what [`finish`](Self::finish) returns.
    pub async fn completed(self) -> (Vec<Acked>, usize) {
        let mut acked = Vec::new();
        for worker in self.workers {
            acked.extend(worker.await.expect("worker"));
        }
        (acked, self.refusals.load(Ordering::Relaxed))
    }

    /// Stops after each worker's current order; returns everything acked, each
    /// worker's in the order it was acked, and how many answers were not a 2xx.
    pub async fn finish(self) -> (Vec<Acked>, usize) {
        self.stop.store(true, Ordering::Relaxed);
        let mut acked = Vec::new();
        for worker in self.workers {
            acked.extend(worker.await.expect("worker"));
        }
        (acked, self.refusals.load(Ordering::Relaxed))
    }
}
