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
//! The wait is bounded and applies only while the publisher is publishing: a
//! broker outage empties its flight and clears "behind", so an outage never slows
//! ingest, and a broker that stops confirming costs each webhook [`MAX_WAIT`] at
//! most.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

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
    room: Notify,
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

    fn busy(&self) -> bool {
        self.behind.load(Ordering::Relaxed) || self.in_flight.load(Ordering::Relaxed) >= BUSY_ROWS
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
    async fn a_publisher_that_stays_busy_delays_a_webhook_by_the_bound_only() {
        let pace = Pace::default();
        pace.set_in_flight(BUSY_ROWS * 4);
        let started = tokio::time::Instant::now();
        assert!(pace.give_way().await);
        assert_eq!(started.elapsed(), MAX_WAIT);
    }
}
