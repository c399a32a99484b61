//! The outbox's counts (pending, dead, held subjects, fenced rows), counted one at
//! a time and shared: `/readyz`, `/metrics` and the admission check read the
//! latest count with its age, and a caller that gives up waiting leaves the count
//! running for the next one instead of starting another beside it. (On a large or
//! busy PostgreSQL outbox a count can take seconds; probes and scrapes that each
//! started one and abandoned it after 2 s stacked them up in the server.)

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::{Operate, Stats};

/// A count younger than this is served as it is, without counting again.
const FRESH: Duration = Duration::from_secs(1);

/// The counts as last taken.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Counted {
    /// The counts.
    pub(crate) stats: Stats,
    /// When they were taken.
    pub(crate) at: Instant,
}

impl Counted {
    /// How old the counts are.
    pub(crate) fn age(&self) -> Duration {
        self.at.elapsed()
    }
}

/// The shared counter; cheap to share behind an `Arc`.
pub(crate) struct Counts {
    outbox: Arc<dyn Operate>,
    state: Mutex<State>,
    done: Notify,
}

#[derive(Default)]
struct State {
    latest: Option<Counted>,
    running: bool,
}

impl Counts {
    /// Counts `outbox`'s rows on demand, one count at a time.
    pub(crate) fn new(outbox: Arc<dyn Operate>) -> Arc<Self> {
        Arc::new(Self {
            outbox,
            state: Mutex::new(State::default()),
            done: Notify::new(),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The latest counts: when they are older than a second, a new count is
    /// started (unless one runs) and waited for at most `wait`; then whatever is
    /// latest is answered, with its age, or `None` if no count ever finished.
    pub(crate) async fn latest(self: &Arc<Self>, wait: Duration) -> Option<Counted> {
        let done = self.done.notified();
        {
            let mut state = self.state();
            if let Some(latest) = state.latest.filter(|c| c.age() < FRESH) {
                return Some(latest);
            }
            if !state.running {
                state.running = true;
                let counts = Arc::clone(self);
                tokio::spawn(async move { counts.count().await });
            }
        }
        let _ = tokio::time::timeout(wait, done).await;
        self.state().latest
    }

    /// One count; a failed one keeps the latest (its age tells).
    async fn count(&self) {
        let counted = self.outbox.stats().await;
        {
            let mut state = self.state();
            state.running = false;
            match counted {
                Ok(stats) => {
                    state.latest = Some(Counted {
                        stats,
                        at: Instant::now(),
                    });
                }
                Err(e) => tracing::debug!(error = %e, "cannot count the outbox's rows"),
            }
        }
        self.done.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::fake::Hanging;

    #[tokio::test]
    async fn a_count_that_does_not_finish_is_waited_for_and_never_started_twice() {
        let outbox = Arc::new(Hanging::default());
        let counts = Counts::new(Arc::clone(&outbox) as Arc<dyn Operate>);
        for _ in 0..5 {
            assert!(counts.latest(Duration::from_millis(20)).await.is_none());
        }
        assert_eq!(
            outbox.counted.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "five callers gave up waiting; one count runs"
        );
    }
}
