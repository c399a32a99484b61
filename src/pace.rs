//! Ingress gives way to the publisher.
//!
//! Under a closed-loop load that fills the CPU, every queue between the provider
//! and the broker fills to its limit: without a rule, webhooks pile up as rows
//! published seconds later. The publisher reports how many rows it holds
//! unconfirmed, and whether its last fetch came back full (more rows are due than
//! it took: it is behind). While it is behind or holds [`BUSY_ROWS`] or more, a
//! webhook waits (at most [`MAX_WAIT`]) before it is stored, so the CPU goes to
//! publishing what is already stored and the rows between ingress and the broker
//! stay few. Acks are not slower for it on average (the same providers'
//! connections share the same throughput); what shrinks is the time from ack to
//! publish.
//!
//! The wait is bounded and applies only while the publisher is publishing: while
//! its broker link is down it is [paused](Pace::pause), so an outage never slows
//! ingest (also one first noticed while reconnecting, before the rows in flight
//! have failed), and a broker that stops confirming costs each webhook
//! [`MAX_WAIT`] at most.
//!
//! **Progress.** The publisher also reports its publishes that failed and those
//! confirmed. One that renews its leases but gets nowhere (every publish refused,
//! blocked or unconfirmed since the first failure) is seen by
//! [`stuck_for`](Pace::stuck_for), so that a shared outbox hands its subjects to
//! the other replicas.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Rows in flight (published, not yet settled) from which webhooks wait: one
/// publish window. The broker's ceiling in the bench is measured with 256
/// confirms outstanding; with 512 here a steady load's end-to-end p99 was 157 ms,
/// with 256 57–106 ms at the same throughput (`docs/performance.md`).
pub(crate) const BUSY_ROWS: usize = 256;

/// The longest a webhook waits for the publisher before it is stored anyway. It
/// is also what sheds a flood without a 503 for every request: 3,000 connections
/// that each wait this long offer at most 12,000 webhooks a second. Under the
/// bench's 10x overload, with 50 ms the publisher kept 49 % of the broker's pace on
/// SQLite and 17 % on PostgreSQL; with 250 ms 58-65 % and 45 %, and end-to-end p50
/// fell from 8.5 s to 0.3-0.4 s (`docs/performance.md`).
pub(crate) const MAX_WAIT: Duration = Duration::from_millis(250);

/// The publisher's state as ingress needs it.
#[derive(Debug, Default)]
pub(crate) struct Pace {
    in_flight: AtomicUsize,
    behind: AtomicBool,
    /// The broker link is down: nothing is being published, so nothing to give
    /// way to.
    paused: AtomicBool,
    room: Notify,
    /// Since when every publish failed (`None`: the last one was confirmed, or
    /// none failed).
    failing_since: Mutex<Option<Instant>>,
}

impl Pace {
    /// The publisher now holds `rows` unconfirmed rows.
    pub(crate) fn set_in_flight(&self, rows: usize) {
        self.in_flight.store(rows, Ordering::Relaxed);
        self.announce();
    }

    /// The publisher's last fetch left due rows behind (`true`), or it caught up
    /// or stopped publishing (`false`).
    pub(crate) fn set_behind(&self, behind: bool) {
        self.behind.store(behind, Ordering::Relaxed);
        self.announce();
    }

    /// The broker link is down (or being brought back): webhooks stop giving way
    /// until [`resume`](Self::resume).
    pub(crate) fn pause(&self) {
        self.paused.store(true, Ordering::Relaxed);
        self.announce();
    }

    /// The broker link is up again.
    pub(crate) fn resume(&self) {
        self.paused.store(false, Ordering::Relaxed);
        self.announce();
    }

    fn failing_since(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.failing_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A publish was confirmed, or a row failed for good (it would on any
    /// replica): the publisher gets somewhere.
    pub(crate) fn progressed(&self) {
        *self.failing_since() = None;
    }

    /// A publish failed (refused, returned, nacked, unconfirmed, its channel lost).
    pub(crate) fn failed(&self) {
        self.failing_since().get_or_insert_with(Instant::now);
    }

    /// How long every publish has failed, since the first failure after the last
    /// confirmed publish; zero while publishes go through or none failed.
    pub(crate) fn stuck_for(&self) -> Duration {
        self.failing_since()
            .map_or(Duration::ZERO, |since| since.elapsed())
    }

    fn busy(&self) -> bool {
        !self.paused.load(Ordering::Relaxed)
            && (self.behind.load(Ordering::Relaxed)
                || self.in_flight.load(Ordering::Relaxed) >= BUSY_ROWS)
    }

    /// Lets the waiting webhooks go once the publisher is no longer busy.
    fn announce(&self) {
        if !self.busy() {
            self.room.notify_waiters();
        }
    }

    /// Waits until the publisher is neither behind nor holding [`BUSY_ROWS`] rows
    /// in flight, or [`MAX_WAIT`] has passed; whether it waited at all.
    pub(crate) async fn give_way(&self) -> bool {
        if !self.busy() {
            return false;
        }
        let deadline = tokio::time::Instant::now() + MAX_WAIT;
        loop {
            // Registered before the check, so a notification between the check
            // and the await is not missed.
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if !self.busy() {
                return true;
            }
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                return true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn webhooks_pass_at_once_while_the_publisher_has_room() {
        let pace = Pace::default();
        pace.set_in_flight(BUSY_ROWS - 1);
        assert!(!pace.give_way().await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_publisher_holds_webhooks_until_it_has_room() {
        let pace = Arc::new(Pace::default());
        pace.set_in_flight(BUSY_ROWS);
        let waiter = tokio::spawn({
            let pace = Arc::clone(&pace);
            async move {
                let started = tokio::time::Instant::now();
                pace.give_way().await;
                started.elapsed()
            }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiter.is_finished(), "passed while the publisher was busy");
        pace.set_in_flight(0);
        let waited = waiter.await.expect("waiter");
        assert!(waited < MAX_WAIT, "waited {waited:?}, beyond the room made");
    }

    #[tokio::test(start_paused = true)]
    async fn a_publisher_behind_holds_webhooks_until_it_caught_up() {
        let pace = Arc::new(Pace::default());
        pace.set_behind(true);
        let waiter = tokio::spawn({
            let pace = Arc::clone(&pace);
            async move { pace.give_way().await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(
            !waiter.is_finished(),
            "passed while the publisher was behind"
        );
        pace.set_behind(false);
        assert!(waiter.await.expect("waiter"));
        assert!(!pace.give_way().await, "waited although caught up");
    }

    #[tokio::test(start_paused = true)]
    async fn a_publisher_whose_link_is_down_holds_no_webhook() {
        let pace = Arc::new(Pace::default());
        // Busy as the link dropped: a full window in flight, behind.
        pace.set_in_flight(BUSY_ROWS * 4);
        pace.set_behind(true);
        let waiter = tokio::spawn({
            let pace = Arc::clone(&pace);
            async move { pace.give_way().await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        pace.pause();
        assert!(
            waiter.await.expect("waiter"),
            "the waiting webhook goes on at the pause"
        );
        let started = tokio::time::Instant::now();
        assert!(!pace.give_way().await, "no wait while the link is down");
        assert_eq!(started.elapsed(), Duration::ZERO);
        pace.resume();
        assert!(pace.give_way().await, "busy again once the link is back");
    }

    #[test]
    fn a_publisher_is_stuck_from_its_first_failure_until_a_publish_is_confirmed() {
        let pace = Pace::default();
        assert_eq!(pace.stuck_for(), Duration::ZERO, "nothing failed yet");
        pace.failed();
        std::thread::sleep(Duration::from_millis(20));
        pace.failed();
        let stuck = pace.stuck_for();
        assert!(
            stuck >= Duration::from_millis(20),
            "counted from the first failure: {stuck:?}"
        );
        pace.progressed();
        assert_eq!(pace.stuck_for(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_publisher_that_stays_busy_delays_a_webhook_by_the_bound_only() {
        let pace = Pace::default();
        pace.set_in_flight(BUSY_ROWS * 4);
        let started = tokio::time::Instant::now();
        assert!(pace.give_way().await);
        assert_eq!(started.elapsed(), MAX_WAIT);
    }
}
