//! Recovery from providers (`docs/recovery.md`): webhooks that never reached the
//! relay are asked for again from the provider's own API.
//!
//! Every relay beats in the outbox's ledger ([`Recall`]) every [`BEAT`] and hands
//! it its sources' refusal windows (401, 503), so the ledger knows the gaps: the
//! times no relay was up, and the times a source's webhooks were turned away.
//! One relay leads recovery (a lead in the ledger, renewed every beat); it
//! settles each gap, once over: a gap shorter than the source's `recover_after`
//! is left to the provider's retries; otherwise the provider is asked to resend
//! the gap's window, split into its longest window and paced by its rate limits,
//! which the ledger counts for every relay and command of the outbox. Where the
//! provider answers status queries, a subject that has stayed at a status that
//! is not final for `stuck_after` is asked about once, and a status the provider
//! is further on is stored as an event of its own, marked `recovered`, with the
//! idempotency key its real webhook has.
//!
//! `hookrelay recover` and `POST /api/v1/recover` run the same steps on demand
//! ([`Recovery::on_demand`]). Every call to a provider is written to the
//! `hookrelay::audit` log and counted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::{Notify, watch};

use crate::activity::Activity;
use crate::clock::{from_micros, now_micros};
use crate::config::RecoverMode;
use crate::event::{EventMeta, Parsed, rfc3339};
use crate::metrics::Metrics;
use crate::outbox::query::{FilterError, parse_time};
use crate::outbox::recall::{Call, Gap, Recall, Refusals, Reservation, gap_state};
use crate::outbox::{InsertOutcome, NewEvent, OutboxError, Pipe};
use crate::providers::api::{ApiError, Asked, Limit, NoRecovery, RecoveryApi};
use crate::providers::{Source, WebhookRequest};

pub(crate) mod http;

/// How often every relay beats.
pub(crate) const BEAT: Duration = Duration::from_secs(5);

/// No beat for this long is a time no relay was up (three beats: one late beat
/// of a busy relay is no gap).
const STALE: Duration = Duration::from_secs(15);

/// The name of recovery's lead in the ledger.
const LEAD: &str = "recovery";

/// How long a lead lasts unless renewed (a relay killed while leading holds
/// recovery up this long).
const LEAD_FOR: Duration = Duration::from_secs(30);

/// How often the leader looks for stuck subjects, at most (a source whose
/// `stuck_after` is shorter is looked at as often, down to every beat).
const STUCK_EVERY: Duration = Duration::from_secs(60);

/// Failed attempts after which a gap is given up on (about half a day with the
/// backoff below).
const MAX_ATTEMPTS: i64 = 16;

/// How long calls and settled gaps are kept in the ledger.
const KEEP_LEDGER: Duration = Duration::from_secs(30 * 24 * 3600);

/// How often the leader forgets what is older.
const FORGET_EVERY: Duration = Duration::from_secs(3600);

/// How far back the gaps are looked at.
const DAY_US: i64 = 24 * 3600 * 1_000_000;

/// The most gaps read at once.
const GAPS_READ: usize = 1000;

/// A source's recovery settings as they apply: its `recover` (or the default:
/// `auto` when its provider's API is usable, else `off`) and that API.
pub(crate) fn mode(source: &Source) -> (RecoverMode, Result<&dyn RecoveryApi, NoRecovery>) {
    let api = source.provider.recovery();
    let default = if api.is_ok() {
        RecoverMode::Auto
    } else {
        RecoverMode::Off
    };
    (source.config.recover.unwrap_or(default), api)
}

/// Where recovered events are stored: the relay's pipe, and the publisher's bell.
#[derive(Clone)]
pub(crate) struct Store {
    /// The outbox's pipe.
    pub(crate) pipe: Arc<dyn Pipe>,
    /// Woken when an event is stored.
    pub(crate) wake: Arc<Notify>,
}

/// Recovery of one relay or command.
pub(crate) struct Recovery {
    sources: Arc<BTreeMap<String, Source>>,
    recall: Recall,
    /// `None` for the `recover` command, which stores nothing: it asks for
    /// resends, and lists the stuck subjects for the relay to ask about.
    store: Option<Store>,
    metrics: Arc<Metrics>,
    client: http::Client,
    owner: String,
}

/// What an on-demand recovery asks for.
#[derive(Debug, Clone)]
pub(crate) struct Demand {
    /// The source.
    pub(crate) source: String,
    /// Gaps that end at or after this, and subjects last published at or after
    /// it, Unix microseconds.
    pub(crate) since_us: i64,
    /// Gaps that start before this, and subjects last published before it.
    pub(crate) until_us: i64,
    /// Only say what would be asked.
    pub(crate) dry_run: bool,
    /// Who asks, for the audit log (`cli`, `api`, `console`).
    pub(crate) by: &'static str,
}

/// How far back an on-demand recovery looks unless told.
const DEMAND_SINCE: &str = "7d";

impl Demand {
    /// A demand for `source` from `since` (default 7 days ago) to `until`
    /// (default now), each RFC 3339 or a duration ago such as `2h`.
    pub(crate) fn new(
        source: &str,
        since: Option<&str>,
        until: Option<&str>,
        dry_run: bool,
        by: &'static str,
    ) -> Result<Self, FilterError> {
        let now = time::OffsetDateTime::now_utc();
        Ok(Self {
            source: source.to_owned(),
            since_us: parse_time(since.unwrap_or(DEMAND_SINCE), now)?,
            until_us: match until {
                Some(until) => parse_time(until, now)?,
                None => crate::clock::micros(now),
            },
            dry_run,
            by,
        })
    }
}

/// What an on-demand recovery found, asked and got.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Report {
    /// The source.
    pub(crate) source: String,
    /// Its provider.
    pub(crate) provider: String,
    /// Its `recover` as it applies.
    pub(crate) recover: &'static str,
    /// Why its provider cannot be asked, if it cannot.
    pub(crate) no_api: Option<String>,
    /// Whether nothing was asked.
    pub(crate) dry_run: bool,
    /// The gaps in the range.
    pub(crate) gaps: Vec<GapReport>,
    /// The subjects stuck in the range.
    pub(crate) stuck: Vec<StuckReport>,
    /// When the provider's limits allow the next resend, if not now (RFC 3339).
    pub(crate) next_resend_at: Option<String>,
}

/// One gap of a report.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct GapReport {
    /// Its id in the ledger.
    pub(crate) id: i64,
    /// `down` or `refused`.
    pub(crate) reason: String,
    /// Start, RFC 3339.
    pub(crate) from: String,
    /// End, RFC 3339.
    pub(crate) until: String,
    /// Its state after this run.
    pub(crate) state: String,
    /// The windows still to ask for (Unix seconds, `[from, until]`).
    pub(crate) windows: Vec<(i64, i64)>,
    /// The last outcome, in words.
    pub(crate) detail: String,
}

/// One stuck subject of a report.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct StuckReport {
    /// The subject.
    pub(crate) subject: String,
    /// Its last status as published.
    pub(crate) status: String,
    /// What asking came to (`would ask`, `unchanged`, `recovered`, an error).
    pub(crate) outcome: String,
}

/// Why an on-demand recovery could not run.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RecoveryError {
    /// The source is not configured.
    #[error("unknown source `{0}`: name one of the configured sources")]
    UnknownSource(String),
    /// The ledger could not be read or written.
    #[error("{0}")]
    Outbox(#[from] OutboxError),
}

/// The windows of at most `max` seconds that cover `[from_us, until_us]`, in
/// whole seconds (a window's end is rounded up, so no second is left out).
pub(crate) fn windows(from_us: i64, until_us: i64, max: Duration) -> Vec<(i64, i64)> {
    let max = i64::try_from(max.as_secs()).unwrap_or(i64::MAX).max(1);
    let from = from_us.div_euclid(1_000_000);
    let until = until_us.div_euclid(1_000_000) + i64::from(until_us.rem_euclid(1_000_000) > 0);
    let mut windows = Vec::new();
    let mut start = from;
    while start < until {
        let end = (start + max).min(until);
        windows.push((start, end));
        start = end;
    }
    windows
}

/// The wait after a gap's `attempts`-th failed attempt: 1 min doubling to 1 h.
fn retry_after(attempts: i64) -> Duration {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(60))
        .with_max_delay(Duration::from_secs(3600))
        .without_max_times()
        .build()
        .nth(usize::try_from(attempts.max(1) - 1).unwrap_or(0))
        .unwrap_or(Duration::from_secs(3600))
}

/// A provider's limits as the ledger counts them: each window in microseconds
/// and the calls it allows.
fn ledger_limits(limits: &[Limit]) -> Vec<(i64, u32)> {
    limits
        .iter()
        .map(|limit| (micros(limit.per), limit.calls))
        .collect()
}

fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

fn time(us: i64) -> String {
    from_micros(us).map(rfc3339).unwrap_or_default()
}

impl Recovery {
    /// Recovery over `recall`, storing into `store` when given.
    pub(crate) fn new(
        sources: Arc<BTreeMap<String, Source>>,
        recall: Recall,
        store: Option<Store>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        for name in sources.keys() {
            for outcome in [
                gap_state::RECOVERED,
                gap_state::SHORT,
                gap_state::MANUAL,
                gap_state::UNRECOVERED,
            ] {
                metrics.recovery_gaps.with_label_values(&[name, outcome]);
            }
            metrics
                .source_gap_seconds
                .with_label_values(&[name])
                .set(0.0);
            metrics.recovered_events.with_label_values(&[name]);
            // The outcomes the alerts watch, from 0: `increase()` misses a
            // series whose first sample is already 1.
            for kind in ["resend", "status"] {
                for outcome in ["ok", "failed", "refused", "untrusted"] {
                    metrics
                        .recovery_requests
                        .with_label_values(&[name, kind, outcome]);
                }
            }
        }
        Ok(Self {
            sources,
            recall,
            store,
            metrics,
            client: http::Client::new()?,
            owner: format!(
                "{}-{}",
                std::env::var("HOSTNAME").unwrap_or_else(|_| "relay".to_owned()),
                uuid::Uuid::new_v4().simple()
            ),
        })
    }

    /// Beats, and leads recovery when no other relay does, until `stop`.
    pub(crate) async fn run(
        self: Arc<Self>,
        activity: Arc<Activity>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut ticks = tokio::time::interval(BEAT);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_stuck_round = None::<tokio::time::Instant>;
        let mut last_forget = None::<tokio::time::Instant>;
        let stuck_every = self
            .sources
            .values()
            .map(|source| source.config.stuck_after)
            .min()
            .unwrap_or(STUCK_EVERY)
            .clamp(BEAT, STUCK_EVERY);
        let failures = crate::telemetry::Throttle::new(Duration::from_secs(60));
        loop {
            let stopping = tokio::select! {
                _ = ticks.tick() => false,
                _ = stop.wait_for(|stop| *stop) => true,
            };
            if stopping {
                // The refusal windows seen since the last beat are recorded
                // before the relay goes: a restart (a rotated secret) is often
                // what ends them.
                if let Err(e) = self.beat(&activity, now_micros()).await {
                    tracing::warn!(error = %e, "the last beat before stopping was not recorded");
                }
                if let Err(e) = self.recall.release(LEAD, &self.owner).await {
                    tracing::warn!(error = %e, "the lead of recovery was not given up: another relay takes it when it passes");
                }
                return;
            }
            let stuck_due = last_stuck_round.is_none_or(|at| at.elapsed() >= stuck_every);
            if let Err(e) = self.tick(&activity, stuck_due).await {
                if let Some(left_out) = failures.allow() {
                    tracing::warn!(error = %e, left_out,
                        "recovery could not read or write the outbox's ledger; it tries again at the next beat (one line a minute at most)");
                }
            } else if stuck_due {
                last_stuck_round = Some(tokio::time::Instant::now());
            }
            if last_forget.is_none_or(|at| at.elapsed() >= FORGET_EVERY) {
                last_forget = Some(tokio::time::Instant::now());
                match self.recall.forget(now_micros() - micros(KEEP_LEDGER)).await {
                    Ok(0) => {}
                    Ok(rows) => tracing::info!(
                        rows,
                        "forgot the recovery ledger's calls and gaps older than 30 days"
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot forget the recovery ledger's old rows; tried again in an hour")
                    }
                }
            }
        }
    }

    async fn tick(&self, activity: &Activity, stuck_due: bool) -> Result<(), OutboxError> {
        let now_us = now_micros();
        self.beat(activity, now_us).await?;
        let gaps = self.recall.gaps(None, now_us - DAY_US, GAPS_READ).await?;
        self.export_gap_seconds(&gaps, now_us);
        if !self
            .recall
            .lead(LEAD, &self.owner, now_us, micros(LEAD_FOR))
            .await?
        {
            return Ok(());
        }
        for gap in gaps {
            if gap.state == gap_state::PENDING && gap.next_try_us <= now_us {
                self.settle(gap, false).await?;
            }
        }
        if stuck_due && self.store.is_some() {
            for source in self.sources.values() {
                if mode(source).0 == RecoverMode::Auto {
                    self.ask_stuck(source, 0, now_us, false).await?;
                }
            }
        }
        Ok(())
    }

    /// Records this relay's beat and the refusal windows it saw.
    async fn beat(&self, activity: &Activity, now_us: i64) -> Result<(), OutboxError> {
        let taken = activity.take_refusals();
        let refusals: Vec<Refusals> = taken
            .iter()
            .filter_map(|refusing| {
                let (first_us, last_us) = refusing.window?;
                Some(Refusals {
                    source: refusing.source.clone(),
                    // One beat before the first refusal, as for a `down` gap.
                    first_us: first_us - micros(BEAT),
                    last_us,
                })
            })
            .collect();
        let accepted: Vec<(String, i64)> = taken
            .iter()
            .filter_map(|refusing| Some((refusing.source.clone(), refusing.last_accepted?)))
            .collect();
        let names: Vec<String> = self.sources.keys().cloned().collect();
        if let Some(last) = self
            .recall
            .beat(
                now_us,
                micros(BEAT),
                micros(STALE),
                &names,
                &refusals,
                &accepted,
            )
            .await?
        {
            tracing::warn!(
                last_beat = %time(last),
                seconds = (now_us - last) / 1_000_000,
                "no relay was up since the last beat: a gap is recorded for every source (docs/recovery.md)"
            );
        }
        Ok(())
    }

    fn export_gap_seconds(&self, gaps: &[Gap], now_us: i64) {
        let mut seconds: BTreeMap<&str, f64> = self
            .sources
            .keys()
            .map(|name| (name.as_str(), 0.0))
            .collect();
        for gap in gaps {
            let missing = matches!(
                gap.state.as_str(),
                gap_state::OPEN | gap_state::PENDING | gap_state::MANUAL | gap_state::UNRECOVERED
            );
            if let (true, Some(total)) = (missing, seconds.get_mut(gap.source.as_str())) {
                let until = if gap.state == gap_state::OPEN {
                    now_us
                } else {
                    gap.until_us
                };
                *total += (until - gap.done_until_us.max(gap.from_us)).max(0) as f64 / 1e6;
            }
        }
        for (name, total) in seconds {
            self.metrics
                .source_gap_seconds
                .with_label_values(&[name])
                .set(total);
        }
    }

    /// Settles `gap` as far as it goes now; `forced` (on demand) also asks for
    /// a short or manual gap, and for one given up on.
    async fn settle(&self, mut gap: Gap, forced: bool) -> Result<Gap, OutboxError> {
        let now_us = now_micros();
        let verdict = match self.sources.get(&gap.source) {
            None => Err((
                gap_state::UNRECOVERED,
                "the source is no longer configured".to_owned(),
            )),
            Some(source) => self.verdict(source, &gap, forced),
        };
        let (source, api, resend) = match verdict {
            Ok(usable) => usable,
            Err((state, detail)) => {
                return self.close(gap, state, detail, now_us).await;
            }
        };
        let limits = ledger_limits(resend.limits);
        for (from, until) in windows(gap.done_until_us, gap.until_us, resend.max_window) {
            let call = match self
                .recall
                .reserve(&gap.source, "resend", "", &limits, now_micros())
                .await?
            {
                Reservation::Wait(at) => {
                    gap.next_try_us = at;
                    gap.detail = format!(
                        "resent up to {}; the provider's limits allow the next call at {}",
                        time(gap.done_until_us),
                        time(at)
                    );
                    self.recall.save(&gap, now_micros()).await?;
                    return Ok(gap);
                }
                Reservation::Granted(id) => id,
            };
            let asked = format!(
                "resend of {} to {}",
                time(from * 1_000_000),
                time(until * 1_000_000)
            );
            let outcome = match api.resend_request(from, until, time::OffsetDateTime::now_utc()) {
                Some(request) => match self.client.send(api.base_url(), &request).await {
                    Ok(answer) => api.read_resend(&answer.as_api()),
                    Err(e) => Err(e),
                },
                None => Err(ApiError::Refused(
                    "the provider has no resend API".to_owned(),
                )),
            };
            let label = outcome.as_ref().map_or_else(ApiError::outcome, |_| "ok");
            let detail = match &outcome {
                Ok(Some(n)) => format!("{asked}: the provider resent {n} webhooks"),
                Ok(None) => format!("{asked}: the provider accepted it"),
                Err(e) => format!("{asked}: {e}"),
            };
            self.record_call(source, "resend", call, label, &detail)
                .await?;
            gap.detail = detail;
            if outcome.is_err() {
                gap.attempts += 1;
                if gap.attempts >= MAX_ATTEMPTS {
                    let detail = format!(
                        "given up after {} attempts: {}; reconcile by hand (docs/recovery.md)",
                        gap.attempts, gap.detail
                    );
                    return self
                        .close(gap, gap_state::UNRECOVERED, detail, now_micros())
                        .await;
                }
                gap.state = gap_state::PENDING.to_owned();
                gap.next_try_us = now_micros() + micros(retry_after(gap.attempts));
                tracing::warn!(source = %gap.source, attempts = gap.attempts, next_try = %time(gap.next_try_us),
                    detail = %gap.detail, "a resend failed; it is asked for again later");
                self.recall.save(&gap, now_micros()).await?;
                return Ok(gap);
            }
            gap.done_until_us = until * 1_000_000;
            self.recall.save(&gap, now_micros()).await?;
        }
        let detail = format!("{} (resent in full)", gap.detail);
        self.close(gap, gap_state::RECOVERED, detail, now_micros())
            .await
    }

    /// Whether `gap` can be asked for, and with what; else its final state and
    /// why.
    fn verdict<'a>(
        &self,
        source: &'a Source,
        gap: &Gap,
        forced: bool,
    ) -> Result<
        (
            &'a Source,
            &'a dyn RecoveryApi,
            crate::providers::api::Resend,
        ),
        (&'static str, String),
    > {
        let length = Duration::from_micros(u64::try_from(gap.until_us - gap.from_us).unwrap_or(0));
        if !forced && length < source.config.recover_after {
            return Err((
                gap_state::SHORT,
                format!(
                    "shorter than recover_after ({}): left to the provider's own retries",
                    humantime::format_duration(source.config.recover_after)
                ),
            ));
        }
        let (mode, api) = mode(source);
        let api = api.map_err(|why| {
            (
                gap_state::UNRECOVERED,
                format!("{why}; reconcile by hand (docs/recovery.md)"),
            )
        })?;
        let resend = api.resend().ok_or_else(|| {
            (
                gap_state::UNRECOVERED,
                format!(
                    "{} has no resend API: webhooks of orders the relay never saw cannot be asked for; reconcile by hand (docs/recovery.md)",
                    source.config.provider
                ),
            )
        })?;
        match mode {
            RecoverMode::Off if !forced => Err((
                gap_state::UNRECOVERED,
                "recover = off: reconcile by hand, or run `hookrelay recover` (docs/recovery.md)"
                    .to_owned(),
            )),
            RecoverMode::Manual if !forced => Err((
                gap_state::MANUAL,
                "recover = manual: waits for `hookrelay recover` or POST /api/v1/recover"
                    .to_owned(),
            )),
            _ => Ok((source, api, resend)),
        }
    }

    async fn close(
        &self,
        mut gap: Gap,
        state: &str,
        detail: String,
        now_us: i64,
    ) -> Result<Gap, OutboxError> {
        gap.state = state.to_owned();
        gap.detail = detail;
        self.recall.save(&gap, now_us).await?;
        self.metrics
            .recovery_gaps
            .with_label_values(&[&gap.source, state])
            .inc();
        if state == gap_state::RECOVERED || state == gap_state::SHORT {
            tracing::info!(source = %gap.source, reason = %gap.reason, from = %time(gap.from_us),
                until = %time(gap.until_us), state, detail = %gap.detail, "gap settled");
        } else {
            tracing::warn!(source = %gap.source, reason = %gap.reason, from = %time(gap.from_us),
                until = %time(gap.until_us), state, detail = %gap.detail,
                "a gap is not recovered: webhooks of it may be missing");
        }
        Ok(gap)
    }

    /// Records the outcome of call `call` (of `kind`) to `source`'s provider:
    /// in the ledger, the metrics and the audit log.
    async fn record_call(
        &self,
        source: &Source,
        kind: &'static str,
        call: i64,
        outcome: &str,
        detail: &str,
    ) -> Result<(), OutboxError> {
        let name = &source.config.name;
        self.recall.finish(call, outcome, detail).await?;
        self.metrics
            .recovery_requests
            .with_label_values(&[name, kind, outcome])
            .inc();
        tracing::info!(target: "hookrelay::audit", source = %name,
            provider = %source.config.provider, kind, outcome, %detail,
            "called the provider's API to recover webhooks");
        Ok(())
    }

    /// Asks the provider about the subjects of `source` stuck in `[since_us,
    /// until_us)`; with `dry_run`, only lists them.
    async fn ask_stuck(
        &self,
        source: &Source,
        since_us: i64,
        until_us: i64,
        dry_run: bool,
    ) -> Result<Vec<StuckReport>, OutboxError> {
        let Ok(api) = source.provider.recovery() else {
            return Ok(Vec::new());
        };
        let Some(limits) = api.status_limits() else {
            return Ok(Vec::new());
        };
        let name = &source.config.name;
        let stuck_after = micros(source.config.stuck_after);
        let now_us = now_micros();
        let budget = limits.iter().map(|l| l.calls).min().unwrap_or(0);
        let stuck = self
            .recall
            .stuck(
                name,
                since_us,
                until_us.min(now_us - stuck_after),
                now_us - stuck_after,
                usize::try_from(budget).unwrap_or(0),
            )
            .await?;
        let limits = ledger_limits(limits);
        let mut reports = Vec::new();
        for subject in stuck {
            let meta = subject
                .meta
                .as_deref()
                .and_then(|meta| serde_json::from_str::<EventMeta>(meta).ok());
            let Some((meta, (kind, status))) = meta.and_then(|m| m.class.map(|c| (m, c))) else {
                continue;
            };
            let mut report = StuckReport {
                subject: subject.subject.clone(),
                status: status.as_str().to_owned(),
                outcome: "would ask".to_owned(),
            };
            let asked = Asked {
                subject: &subject.subject,
                kind,
                provider_event_type: meta.provider_event_type.as_deref(),
            };
            let requests = api.status_requests(&asked, time::OffsetDateTime::now_utc());
            if dry_run || self.store.is_none() {
                if requests.is_empty() {
                    report.outcome = "cannot be asked about".to_owned();
                } else if self.store.is_none() {
                    report.outcome =
                        "listed: the relay asks about it (recover = auto) or POST /api/v1/recover"
                            .to_owned();
                }
                reports.push(report);
                continue;
            }
            let call = match self
                .recall
                .reserve(name, "status", &subject.subject, &limits, now_micros())
                .await?
            {
                Reservation::Wait(_) => break,
                Reservation::Granted(id) => id,
            };
            let (label, detail) = if requests.is_empty() {
                (
                    "unsupported",
                    format!(
                        "{} {} cannot be asked about",
                        kind.as_str(),
                        subject.subject
                    ),
                )
            } else {
                self.ask_status(source, api, &asked, status, requests).await
            };
            self.record_call(source, "status", call, label, &detail)
                .await?;
            report.outcome = detail;
            reports.push(report);
        }
        Ok(reports)
    }

    /// Asks each request in turn until one knows the subject; stores the
    /// provider's status when it is further on than `last`.
    async fn ask_status(
        &self,
        source: &Source,
        api: &dyn RecoveryApi,
        asked: &Asked<'_>,
        last: crate::event::Status,
        requests: Vec<crate::providers::api::ApiRequest>,
    ) -> (&'static str, String) {
        let mut outcome = (
            "not_found",
            format!("the provider does not know {}", asked.subject),
        );
        for request in requests {
            let answer = match self.client.send(api.base_url(), &request).await {
                Ok(answer) => answer,
                Err(e) => return (e.outcome(), e.to_string()),
            };
            let body = match api.read_status(asked, &answer.as_api()) {
                Ok(body) => body,
                Err(e @ ApiError::NotFound(_)) => {
                    outcome = (e.outcome(), e.to_string());
                    continue;
                }
                Err(e) => return (e.outcome(), e.to_string()),
            };
            return self
                .store_if_ahead(source, asked, last, &request.path, body)
                .await;
        }
        outcome
    }

    async fn store_if_ahead(
        &self,
        source: &Source,
        asked: &Asked<'_>,
        last: crate::event::Status,
        path: &str,
        body: Vec<u8>,
    ) -> (&'static str, String) {
        let now = time::OffsetDateTime::now_utc();
        let headers = axum::http::HeaderMap::new();
        let parsed = source.provider.parse(&WebhookRequest {
            headers: &headers,
            body: &body,
            now,
        });
        let Parsed::Event(event) = &parsed else {
            return (
                "unrecognized",
                format!(
                    "the provider's answer about {} is not understood",
                    asked.subject
                ),
            );
        };
        if event.subject != asked.subject || event.status.stage() <= last.stage() {
            return (
                "ok",
                format!(
                    "{} is {} at the provider ({}): nothing new",
                    asked.subject,
                    event.status.as_str(),
                    event.provider_status.as_deref().unwrap_or("")
                ),
            );
        }
        let Some(store) = &self.store else {
            return ("ok", "not stored: no outbox to store into".to_owned());
        };
        let mut meta = EventMeta::new(&source.origin(), &parsed, &body, now);
        meta.verified = Some(true);
        meta.recovered = true;
        let new = NewEvent {
            meta,
            headers_json: serde_json::json!({ "hookrelay-recovered-from": path }).to_string(),
            body: body.into(),
            received_at_us: crate::clock::micros(now),
            traceparent: crate::telemetry::TraceParent::continue_or_start(None).header_value(),
        };
        match store.pipe.insert(new).await {
            Ok(InsertOutcome::Inserted) => {
                store.wake.notify_one();
                self.metrics
                    .recovered_events
                    .with_label_values(&[&source.config.name])
                    .inc();
                (
                    "recovered",
                    format!(
                        "{} is {} at the provider: stored as a recovered event",
                        asked.subject,
                        event.status.as_str()
                    ),
                )
            }
            Ok(InsertOutcome::Duplicate) => (
                "ok",
                format!(
                    "{} is {} at the provider, and its webhook is already stored",
                    asked.subject,
                    event.status.as_str()
                ),
            ),
            Err(e) => (
                "failed",
                format!("the recovered event could not be stored: {e}"),
            ),
        }
    }

    /// The source's `recover` as it applies, and why its provider cannot be
    /// asked, if it cannot; `None` for a source not configured.
    pub(crate) fn describe(&self, name: &str) -> Option<(&'static str, Option<String>)> {
        let (mode, api) = mode(self.sources.get(name)?);
        Some((mode.as_str(), api.err().map(|why| why.to_string())))
    }

    /// The gaps and the calls to providers of the last day, for the console.
    pub(crate) async fn recent(&self, limit: usize) -> Result<(Vec<Gap>, Vec<Call>), OutboxError> {
        let since = now_micros() - DAY_US;
        Ok((
            self.recall.gaps(None, since, limit).await?,
            self.recall.calls(None, since, limit).await?,
        ))
    }

    /// Runs recovery of one source now: the gaps of the range (settled as far as
    /// the limits allow, whatever their state but recovered), and its stuck
    /// subjects; with `dry_run`, only says what it would ask.
    pub(crate) async fn on_demand(&self, demand: &Demand) -> Result<Report, RecoveryError> {
        let source = self
            .sources
            .get(&demand.source)
            .ok_or_else(|| RecoveryError::UnknownSource(demand.source.clone()))?;
        let (mode, api) = mode(source);
        tracing::info!(target: "hookrelay::audit", by = demand.by, source = %demand.source,
            since = %time(demand.since_us), until = %time(demand.until_us), dry_run = demand.dry_run,
            "recovery asked for");
        let resend = api.as_ref().ok().and_then(|api| api.resend());
        let mut gaps = Vec::new();
        for gap in self
            .recall
            .gaps(Some(&demand.source), demand.since_us, GAPS_READ)
            .await?
        {
            if gap.from_us >= demand.until_us
                || gap.state == gap_state::RECOVERED
                || gap.state == gap_state::OPEN
            {
                continue;
            }
            let gap = if demand.dry_run {
                gap
            } else {
                self.settle(gap, true).await?
            };
            let windows = match resend {
                Some(resend) if gap.state != gap_state::RECOVERED => {
                    windows(gap.done_until_us, gap.until_us, resend.max_window)
                }
                _ => Vec::new(),
            };
            gaps.push(GapReport {
                id: gap.id,
                reason: gap.reason,
                from: time(gap.from_us),
                until: time(gap.until_us),
                state: gap.state,
                windows,
                detail: gap.detail,
            });
        }
        let next_resend_at = match resend {
            Some(resend) => self
                .recall
                .next_allowed(
                    &demand.source,
                    "resend",
                    &ledger_limits(resend.limits),
                    now_micros(),
                )
                .await?
                .map(time),
            None => None,
        };
        let stuck = self
            .ask_stuck(source, demand.since_us, demand.until_us, demand.dry_run)
            .await?;
        Ok(Report {
            source: demand.source.clone(),
            provider: source.config.provider.clone(),
            recover: mode.as_str(),
            no_api: api.err().map(|why| why.to_string()),
            dry_run: demand.dry_run,
            gaps,
            stuck,
            next_resend_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_is_split_into_the_providers_longest_and_loses_no_second() {
        let hour = Duration::from_secs(3600);
        assert_eq!(windows(0, 1_500_000, hour), [(0, 2)]);
        assert_eq!(
            windows(10_000_000, 7_300_000_000, hour),
            [(10, 3610), (3610, 7210), (7210, 7300)]
        );
        assert!(windows(5_000_000, 5_000_000, hour).is_empty());
    }

    #[test]
    fn a_failed_gap_waits_a_minute_then_doubling_up_to_an_hour() {
        assert_eq!(retry_after(1), Duration::from_secs(60));
        assert_eq!(retry_after(2), Duration::from_secs(120));
        assert_eq!(retry_after(12), Duration::from_secs(3600));
    }
}
