//! What each source's requests came to over the last day, by minute: the
//! console's sources page ("when did CCPayment last reach us, and how many of
//! its webhooks did we refuse this hour, and why?") answered without a
//! Prometheus server. Prometheus has the same counts as counters.
//!
//! Kept in memory, per relay: a restart starts from zero, and behind a load
//! balancer each replica counts its own share.

use std::collections::HashMap;
use std::sync::Mutex;

/// Every `outcome` a source's webhooks can have (`unknown_source` is counted
/// without a source, so not here).
pub(crate) const OUTCOMES: [&str; 9] = [
    "accepted",
    "duplicate",
    "unrecognized",
    "unauthorized",
    "forbidden",
    "too_large",
    "throttled",
    "invalid",
    "unavailable",
];

/// Outcomes that mean the webhook was acked (stored, or already stored).
const ACKED: [&str; 3] = ["accepted", "duplicate", "unrecognized"];

/// Outcomes that mean the relay turned a webhook of the provider away: a
/// signature it could not check (a rotated secret) or an outbox that could not
/// store. A run of them is a gap recovery may fill (`recovery`).
const REFUSED: [&str; 2] = ["unauthorized", "unavailable"];

/// Minutes kept: one day.
const MINUTES: usize = 24 * 60;

/// One minute's counts, by outcome.
#[derive(Clone, Copy, Default)]
struct Minute {
    /// Which minute (Unix seconds / 60) the counts are of; an older one is stale.
    at: i64,
    counts: [u64; OUTCOMES.len()],
}

/// One source's minutes and last times.
struct Ring {
    minutes: Box<[Minute]>,
    last_received: Option<i64>,
    last_accepted: Option<i64>,
    /// The first and last refusal since the last acked webhook, Unix
    /// microseconds (seconds cannot order a refusal and an ack of one second).
    refusing: Option<(i64, i64)>,
    /// The last acked webhook, Unix microseconds.
    last_accepted_us: Option<i64>,
}

/// A source's activity as the console shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Summary {
    /// Last request of any outcome, Unix seconds.
    pub(crate) last_received: Option<i64>,
    /// Last webhook acked, Unix seconds.
    pub(crate) last_accepted: Option<i64>,
    /// Counts by outcome over the last hour.
    pub(crate) last_hour: HashMap<&'static str, u64>,
    /// Counts by outcome over the last day.
    pub(crate) last_day: HashMap<&'static str, u64>,
}

/// What [`Activity::take_refusals`] hands the ledger for one source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusing {
    /// The source.
    pub(crate) source: String,
    /// Its first and last refusal since its last acked webhook, Unix
    /// microseconds.
    pub(crate) window: Option<(i64, i64)>,
    /// Its last acked webhook, Unix microseconds.
    pub(crate) last_accepted: Option<i64>,
}

/// Per-source activity; cheap to record into from every request.
#[derive(Default)]
pub(crate) struct Activity {
    sources: Mutex<HashMap<String, Ring>>,
}

impl Activity {
    /// Counts one request of `source` with `outcome` at `now_us` (Unix
    /// microseconds). Outcomes not in [`OUTCOMES`] are ignored.
    pub(crate) fn record(&self, source: &str, outcome: &str, now_us: i64) {
        let now = now_us.div_euclid(1_000_000);
        let Some(index) = OUTCOMES.iter().position(|o| *o == outcome) else {
            return;
        };
        let mut sources = self
            .sources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !sources.contains_key(source) {
            sources.insert(
                source.to_owned(),
                Ring {
                    minutes: vec![Minute::default(); MINUTES].into_boxed_slice(),
                    last_received: None,
                    last_accepted: None,
                    refusing: None,
                    last_accepted_us: None,
                },
            );
        }
        let Some(ring) = sources.get_mut(source) else {
            return;
        };
        let minute = now.div_euclid(60);
        let slot =
            &mut ring.minutes[usize::try_from(minute.rem_euclid(MINUTES as i64)).unwrap_or(0)];
        if slot.at != minute {
            *slot = Minute {
                at: minute,
                counts: [0; OUTCOMES.len()],
            };
        }
        slot.counts[index] += 1;
        ring.last_received = Some(now);
        if ACKED.contains(&outcome) {
            ring.last_accepted = Some(now);
            ring.last_accepted_us = Some(now_us);
        } else if REFUSED.contains(&outcome) {
            let first = ring.refusing.map_or(now_us, |(first, _)| first);
            ring.refusing = Some((first, now_us));
        }
    }

    /// Each source's refusal window (first and last refusal) and
    /// last acked webhook, for the ledger; a window an acked webhook has closed
    /// is handed over one last time and forgotten.
    pub(crate) fn take_refusals(&self) -> Vec<Refusing> {
        let mut sources = self
            .sources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        sources
            .iter_mut()
            .map(|(source, ring)| {
                let window = ring.refusing;
                if let (Some((_, last)), Some(accepted)) = (window, ring.last_accepted_us)
                    && accepted > last
                {
                    ring.refusing = None;
                }
                Refusing {
                    source: source.clone(),
                    window,
                    last_accepted: ring.last_accepted_us,
                }
            })
            .collect()
    }

    /// The source's summary at `now` (Unix seconds); every outcome is present,
    /// at 0 for a source that had no request.
    pub(crate) fn summary(&self, source: &str, now: i64) -> Summary {
        let sources = self
            .sources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let minute = now.div_euclid(60);
        let mut last_hour: HashMap<&'static str, u64> = OUTCOMES.iter().map(|o| (*o, 0)).collect();
        let mut last_day = last_hour.clone();
        let Some(ring) = sources.get(source) else {
            return Summary {
                last_received: None,
                last_accepted: None,
                last_hour,
                last_day,
            };
        };
        for slot in ring.minutes.iter() {
            let age = minute - slot.at;
            if !(0..MINUTES as i64).contains(&age) {
                continue;
            }
            for (outcome, n) in OUTCOMES.iter().zip(slot.counts) {
                *last_day.entry(outcome).or_default() += n;
                if age < 60 {
                    *last_hour.entry(outcome).or_default() += n;
                }
            }
        }
        Summary {
            last_received: ring.last_received,
            last_accepted: ring.last_accepted,
            last_hour,
            last_day,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_fall_out_of_the_hour_and_the_day_as_time_passes() {
        let activity = Activity::default();
        let start = 1_800_000_000;
        activity.record("cc", "accepted", (start) * 1_000_000);
        activity.record("cc", "unauthorized", (start + 30 * 60) * 1_000_000);
        activity.record("cc", "unauthorized", (start + 90 * 60) * 1_000_000);

        let now = start + 100 * 60;
        let summary = activity.summary("cc", now);
        assert_eq!(summary.last_hour["unauthorized"], 1);
        assert_eq!(summary.last_hour["accepted"], 0);
        assert_eq!(summary.last_day["unauthorized"], 2);
        assert_eq!(summary.last_day["accepted"], 1);
        assert_eq!(summary.last_received, Some(start + 90 * 60));
        assert_eq!(summary.last_accepted, Some(start));

        let next_day = activity.summary("cc", start + MINUTES as i64 * 60 + 60);
        assert_eq!(next_day.last_day["accepted"], 0, "a day later it is gone");
        // A slot reused a day later starts from zero.
        activity.record("cc", "accepted", (start + MINUTES as i64 * 60) * 1_000_000);
        let summary = activity.summary("cc", start + MINUTES as i64 * 60);
        assert_eq!(summary.last_hour["accepted"], 1);
    }

    #[test]
    fn refusals_make_one_window_until_a_webhook_is_acked_again() {
        let activity = Activity::default();
        activity.record("cc", "accepted", (10) * 1_000_000);
        activity.record("cc", "unauthorized", (20) * 1_000_000);
        activity.record("cc", "unavailable", (25) * 1_000_000);
        activity.record("cc", "too_large", (26) * 1_000_000);
        let taken = activity.take_refusals();
        assert_eq!(taken[0].window, Some((20_000_000, 25_000_000)));
        assert_eq!(taken[0].last_accepted, Some(10_000_000));
        assert_eq!(
            activity.take_refusals()[0].window,
            Some((20_000_000, 25_000_000)),
            "still open"
        );
        activity.record("cc", "accepted", (30) * 1_000_000);
        let closed = activity.take_refusals();
        assert_eq!(
            closed[0].window,
            Some((20_000_000, 25_000_000)),
            "handed over once more"
        );
        assert_eq!(closed[0].last_accepted, Some(30_000_000));
        assert_eq!(activity.take_refusals()[0].window, None);
    }

    #[test]
    fn a_quiet_source_has_every_outcome_at_zero() {
        let summary = Activity::default().summary("none", 0);
        assert_eq!(summary.last_day.len(), OUTCOMES.len());
        assert_eq!(summary.last_received, None);
    }
}
