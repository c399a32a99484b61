//! The oracle of the tests that kill, cut and fail things under load, per event:
//! every webhook that got a 2xx is published (lost = 0), nothing is published
//! that no one acked (phantom = 0), and per subject the first deliveries come in
//! the order the events were acked. Duplicates are counted, and the longest
//! pauses in acks and deliveries are measured, for the reports.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lapin::message::Delivery;

use super::broker::Consumer;
use super::load::Load;

/// Each subject's statuses, in the order they were acked.
pub type AckedSteps = BTreeMap<String, Vec<String>>;

/// Every delivery per subject, in arrival order.
pub type Delivered = BTreeMap<String, Vec<String>>;

/// What the load got acked, per subject, with how many answers were not a 2xx
/// and when each ack came.
pub struct LoadOutcome {
    /// The statuses acked per subject, in the order they were acked.
    pub acked: AckedSteps,
    /// Answers that were not a 2xx (each retried).
    pub refusals: usize,
    /// When each ack came, in order.
    pub ack_times: Vec<Instant>,
}

/// Stops the load after each worker's current order, and sorts what it got.
pub async fn acked_by(load: Load) -> LoadOutcome {
    let (events, refusals) = load.finish().await;
    let mut acked = AckedSteps::new();
    let mut ack_times: Vec<Instant> = events.iter().map(|e| e.at).collect();
    ack_times.sort();
    for event in events {
        acked.entry(event.subject).or_default().push(event.status);
    }
    LoadOutcome {
        acked,
        refusals,
        ack_times,
    }
}

/// The subject and provider status of a delivered event.
fn subject_status(delivery: &Delivery) -> (String, String) {
    let envelope: serde_json::Value =
        serde_json::from_slice(&delivery.data).expect("JSON envelope");
    (
        envelope["subject"].as_str().expect("subject").to_owned(),
        envelope["data"]["provider_status"]
            .as_str()
            .expect("provider status")
            .to_owned(),
    )
}

/// Reads until every acked event was delivered, or `patience` passes without one,
/// adding to what was `delivered` before.
pub async fn drain(
    consumer: &mut Consumer,
    acked: &AckedSteps,
    mut delivered: Delivered,
    patience: Duration,
) -> Delivered {
    let missing = |delivered: &Delivered| {
        acked.iter().any(|(subject, steps)| {
            let got = delivered.get(subject);
            steps.iter().any(|s| got.is_none_or(|g| !g.contains(s)))
        })
    };
    loop {
        let wait = if missing(&delivered) {
            patience
        } else {
            Duration::from_millis(500)
        };
        let Some(delivery) = consumer.next(wait).await else {
            return delivered;
        };
        let (subject, status) = subject_status(&delivery);
        delivered.entry(subject).or_default().push(status);
    }
}

/// A consumer read while the load runs, so that when each event arrived is known.
pub struct Recorder {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(Consumer, Delivered, Vec<Instant>)>,
}

impl Recorder {
    /// Reads `consumer` in the background from now on.
    pub fn start(mut consumer: Consumer) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let (mut delivered, mut times) = (Delivered::new(), Vec::new());
            while !stopped.load(Ordering::Relaxed) {
                if let Some(delivery) = consumer.next(Duration::from_millis(100)).await {
                    times.push(Instant::now());
                    let (subject, status) = subject_status(&delivery);
                    delivered.entry(subject).or_default().push(status);
                }
            }
            (consumer, delivered, times)
        });
        Self { stop, task }
    }

    /// Stops reading; the consumer, what it delivered so far, and when.
    pub async fn stop(self) -> (Consumer, Delivered, Vec<Instant>) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the recorder")
    }
}

/// Stops the load, reads `consumer` until everything acked arrived (or `patience`
/// passed without a delivery), and judges: the verdict and what the load got.
pub async fn judged(
    load: Load,
    consumer: &mut Consumer,
    patience: Duration,
) -> (Verdict, LoadOutcome) {
    let outcome = acked_by(load).await;
    let delivered = drain(consumer, &outcome.acked, Delivered::new(), patience).await;
    (judge(&outcome.acked, &delivered), outcome)
}

/// The same for a consumer a [`Recorder`] read during the load; also when each
/// of the recorded deliveries arrived.
pub async fn judged_recorded(
    load: Load,
    recorder: Recorder,
    patience: Duration,
) -> (Verdict, LoadOutcome, Vec<Instant>) {
    let outcome = acked_by(load).await;
    let (mut consumer, delivered, delivered_at) = recorder.stop().await;
    let delivered = drain(&mut consumer, &outcome.acked, delivered, patience).await;
    (judge(&outcome.acked, &delivered), outcome, delivered_at)
}

/// The longest pause between consecutive `times` (sorted) inside `from..to`,
/// counting from `from` and up to `to`.
pub fn longest_pause(times: &[Instant], from: Instant, to: Instant) -> Duration {
    let inside = times.iter().copied().filter(|t| (from..to).contains(t));
    let mut last = from;
    let mut longest = Duration::ZERO;
    for t in inside.chain(std::iter::once(to)) {
        longest = longest.max(t.saturating_duration_since(last));
        last = t;
    }
    longest
}

/// How many of `times` fall inside `from..to`, per second.
pub fn rate(times: &[Instant], from: Instant, to: Instant) -> f64 {
    let n = times.iter().filter(|t| (from..to).contains(*t)).count();
    n as f64 / to.saturating_duration_since(from).as_secs_f64().max(0.001)
}

/// The oracle's verdict.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Webhooks that got a 2xx.
    pub acked: usize,
    /// Of those, never delivered.
    pub lost: usize,
    /// Delivered, but never acked.
    pub phantom: usize,
    /// Delivered more than once.
    pub duplicated: usize,
    /// Subjects whose first deliveries are not in the order they were acked.
    pub out_of_order: usize,
}

/// Judges `delivered` against `acked`.
pub fn judge(acked: &AckedSteps, delivered: &Delivered) -> Verdict {
    let mut v = Verdict::default();
    for (subject, steps) in acked {
        v.acked += steps.len();
        let got = delivered.get(subject).cloned().unwrap_or_default();
        let mut first: Vec<&String> = Vec::new();
        for step in &got {
            if first.contains(&step) {
                v.duplicated += 1;
            } else {
                first.push(step);
            }
        }
        v.lost += steps.iter().filter(|s| !got.contains(s)).count();
        v.phantom += first.iter().filter(|s| !steps.contains(s)).count();
        let in_order: Vec<&String> = first.into_iter().filter(|s| steps.contains(s)).collect();
        if in_order != steps.iter().collect::<Vec<_>>() {
            v.out_of_order += 1;
        }
    }
    v.phantom += delivered.keys().filter(|s| !acked.contains_key(*s)).count();
    v
}

/// One line on stderr, the figures the closing notes quote: `{suite} [{class}]
/// acked=… lost=… …`.
pub fn report(suite: &str, class: &str, v: &Verdict, extra: &str) {
    let _ = writeln!(
        std::io::stderr(),
        "{suite} [{class}] acked={} lost={} phantom={} duplicated={} out_of_order_subjects={} {extra}",
        v.acked,
        v.lost,
        v.phantom,
        v.duplicated,
        v.out_of_order
    );
}
