//! What recovery keeps in the outbox (`docs/recovery.md`): a heartbeat, the gaps
//! in which a source's webhooks could not reach the relay, every call made to a
//! provider's API (the shared rate limits count them), and who leads recovery.
//! On PostgreSQL all replicas share it, so a gap is a time when no replica was
//! up, and two replicas never both make a call the limits allow once.
//!
//! Written once for both backends: each operation is a few statements over the
//! `hr_*` tables (the same names and columns on both), which a driver runs in one
//! transaction ([`Ledger::transact`]); only placeholders and the names of the
//! older tables differ, spelled by [`Dialect`].

use std::sync::Arc;

use async_trait::async_trait;

use super::OutboxError;
use super::sql::{self, Dialect, Value};

/// A statement and its values, `?1`, `?2` … in the text.
#[derive(Debug, Clone)]
pub(crate) struct Statement {
    /// The SQL, with `?N` placeholders (rewritten for PostgreSQL by the driver).
    pub(crate) sql: String,
    /// The values, in placeholder order.
    pub(crate) values: Vec<Value>,
}

/// One column of a row a statement returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cell {
    /// SQL `NULL`.
    Null,
    /// An integer.
    Int(i64),
    /// Text.
    Text(String),
}

impl Cell {
    fn int(&self) -> i64 {
        match self {
            Self::Int(n) => *n,
            _ => 0,
        }
    }

    fn text(&self) -> String {
        match self {
            Self::Text(text) => text.clone(),
            _ => String::new(),
        }
    }
}

/// The rows each statement returned, in order.
pub(crate) type Results = Vec<Vec<Vec<Cell>>>;

/// The driver's part: run statements in one transaction that takes the write
/// lock at once (SQLite's `IMMEDIATE`), so that reading and writing the limits
/// is one step for every writer of the outbox.
#[async_trait]
pub(crate) trait Ledger: Send + Sync {
    /// The driver's SQL spelling.
    fn dialect(&self) -> Dialect;

    /// Runs `statements` in one committed transaction; the rows each returned.
    async fn transact(&self, statements: Vec<Statement>) -> Result<Results, OutboxError>;
}

/// The states of a gap, in the order they are passed through.
pub(crate) mod gap_state {
    /// Refusals still go on: the gap may grow.
    pub(crate) const OPEN: &str = "open";
    /// Over and not yet recovered (recovery retries it until `next_try_us`).
    pub(crate) const PENDING: &str = "pending";
    /// Shorter than the source's `recover_after`: left to the provider's retries.
    pub(crate) const SHORT: &str = "short";
    /// Every window of it was resent by the provider.
    pub(crate) const RECOVERED: &str = "recovered";
    /// Cannot be recovered by the relay (no API, no credentials, `recover =
    /// off`, or it kept failing): a person reconciles it.
    pub(crate) const UNRECOVERED: &str = "unrecovered";
    /// Waits for an operator (`recover = manual`).
    pub(crate) const MANUAL: &str = "manual";
}

/// A time in which a source's webhooks could not reach the relay.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Gap {
    /// Its id in the ledger.
    pub(crate) id: i64,
    /// The source.
    pub(crate) source: String,
    /// `down` (no relay was up) or `refused` (the relay answered 401 or 503).
    pub(crate) reason: String,
    /// Start, Unix microseconds (one heartbeat before the last sign of life).
    pub(crate) from_us: i64,
    /// End, Unix microseconds.
    pub(crate) until_us: i64,
    /// One of [`gap_state`].
    pub(crate) state: String,
    /// How far the provider has resent it, Unix microseconds.
    pub(crate) done_until_us: i64,
    /// Failed attempts so far.
    pub(crate) attempts: i64,
    /// Not to be tried again before this, Unix microseconds.
    pub(crate) next_try_us: i64,
    /// The last outcome, in words.
    pub(crate) detail: String,
}

/// A call made to a provider's API.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Call {
    /// Its id in the ledger.
    pub(crate) id: i64,
    /// The source.
    pub(crate) source: String,
    /// `resend` or `status`.
    pub(crate) kind: String,
    /// The subject asked about (`status`), else empty.
    pub(crate) subject: String,
    /// When, Unix microseconds.
    pub(crate) called_us: i64,
    /// `sent` until its answer is read, then an outcome of
    /// `hookrelay_recovery_requests_total`.
    pub(crate) outcome: String,
    /// What was asked and answered, in words.
    pub(crate) detail: String,
}

/// A refusal window a relay saw for a source, Unix microseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusals {
    /// The source.
    pub(crate) source: String,
    /// The first refusal.
    pub(crate) first_us: i64,
    /// The last refusal so far.
    pub(crate) last_us: i64,
}

/// The answer to a call's reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reservation {
    /// The call is recorded and may be made now.
    Granted(i64),
    /// The limits allow the next call at this time, Unix microseconds.
    Wait(i64),
}

/// A subject that has stayed at a status that is not final.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stuck {
    /// The subject.
    pub(crate) subject: String,
    /// Its last event's stored metadata (JSON), if one is left.
    pub(crate) meta: Option<String>,
    /// When its last event was published, Unix microseconds.
    pub(crate) at_us: i64,
}

/// The ledger's operations, over one driver.
#[derive(Clone)]
pub(crate) struct Recall {
    ledger: Arc<dyn Ledger>,
}

fn statement(sql: impl Into<String>, values: Vec<Value>) -> Statement {
    Statement {
        sql: sql.into(),
        values,
    }
}

fn text(value: &str) -> Value {
    Value::Text(value.to_owned())
}

/// Per limit, the call that has to leave its window before another fits in it.
fn in_the_way(source: &str, kind: &str, limits: &[(i64, u32)], now_us: i64) -> Vec<Statement> {
    limits
        .iter()
        .map(|(per_us, calls)| {
            statement(
                sql::CALL_IN_THE_WAY,
                vec![
                    text(source),
                    text(kind),
                    Value::Int(now_us - per_us),
                    Value::Int(i64::from(*calls) - 1),
                ],
            )
        })
        .collect()
}

/// When the calls [`in_the_way`] found have left their windows.
fn next_free(limits: &[(i64, u32)], found: &[Vec<Vec<Cell>>]) -> Option<i64> {
    limits
        .iter()
        .zip(found)
        .filter_map(|((per_us, _), rows)| {
            rows.first()
                .and_then(|row| row.first())
                .map(|at| at.int() + per_us)
        })
        .max()
}

impl Recall {
    /// Over `ledger`.
    pub(crate) fn new(ledger: Arc<dyn Ledger>) -> Self {
        Self { ledger }
    }

    /// Records that this relay is up at `now_us`, and what it saw since its last
    /// beat: the refusal windows of its sources, and each source's last accepted
    /// webhook (which closes the refusal gaps before it). When no relay beat for
    /// longer than `stale_us`, every one of `sources` gets a `down` gap from one
    /// `interval_us` before the last beat to now; returns that last beat.
    pub(crate) async fn beat(
        &self,
        now_us: i64,
        interval_us: i64,
        stale_us: i64,
        sources: &[String],
        refusals: &[Refusals],
        accepted: &[(String, i64)],
    ) -> Result<Option<i64>, OutboxError> {
        let mut statements = vec![
            statement(sql::FIRST_BEAT, vec![Value::Int(now_us)]),
            statement(sql::BEAT, vec![Value::Int(now_us)]),
        ];
        for source in sources {
            statements.push(statement(
                sql::DOWN_GAP,
                vec![
                    text(source),
                    Value::Int(now_us),
                    Value::Int(stale_us),
                    Value::Int(interval_us),
                ],
            ));
        }
        for window in refusals {
            statements.push(statement(
                sql::REFUSED_GAP,
                vec![
                    text(&window.source),
                    Value::Int(window.first_us),
                    Value::Int(window.last_us),
                    Value::Int(now_us),
                ],
            ));
        }
        for (source, at_us) in accepted {
            statements.push(statement(
                sql::CLOSE_GAPS,
                vec![text(source), Value::Int(*at_us), Value::Int(now_us)],
            ));
        }
        let results = self.ledger.transact(statements).await?;
        let previous = results
            .get(1)
            .and_then(|rows| rows.first())
            .and_then(|row| row.first())
            .map(Cell::int);
        Ok(previous.filter(|prev| now_us - prev > stale_us))
    }

    /// The gaps of `source` (every source when `None`) that ended at or after
    /// `since_us`, oldest first, at most `limit`.
    pub(crate) async fn gaps(
        &self,
        source: Option<&str>,
        since_us: i64,
        limit: usize,
    ) -> Result<Vec<Gap>, OutboxError> {
        let rows = self.recent(sql::GAPS, source, since_us, limit).await?;
        Ok(rows
            .iter()
            .map(|row| Gap {
                id: row[0].int(),
                source: row[1].text(),
                reason: row[2].text(),
                from_us: row[3].int(),
                until_us: row[4].int(),
                state: row[5].text(),
                done_until_us: row[6].int(),
                attempts: row[7].int(),
                next_try_us: row[8].int(),
                detail: row[9].text(),
            })
            .collect())
    }

    /// Records where recovery of `gap` stands.
    pub(crate) async fn save(&self, gap: &Gap, now_us: i64) -> Result<(), OutboxError> {
        self.one(statement(
            sql::SAVE_GAP,
            vec![
                Value::Int(gap.id),
                text(&gap.state),
                Value::Int(gap.done_until_us),
                Value::Int(gap.attempts),
                Value::Int(gap.next_try_us),
                text(&gap.detail),
                Value::Int(now_us),
            ],
        ))
        .await
        .map(|_| ())
    }

    /// Records a call of `kind` to `source`'s provider, if `limits` (each a
    /// window in microseconds and the calls it allows) let one be made at
    /// `now_us`; else when they next do.
    pub(crate) async fn reserve(
        &self,
        source: &str,
        kind: &str,
        subject: &str,
        limits: &[(i64, u32)],
        now_us: i64,
    ) -> Result<Reservation, OutboxError> {
        let mut statements = Vec::new();
        if let Some(lock) = self.ledger.dialect().lock_calls() {
            statements.push(statement(lock, Vec::new()));
        }
        let mut values = vec![text(source), text(kind), text(subject), Value::Int(now_us)];
        for (per_us, calls) in limits {
            values.push(Value::Int(now_us - per_us));
            values.push(Value::Int(i64::from(*calls)));
        }
        statements.push(statement(sql::reserve(limits.len()), values));
        let granted_at = statements.len() - 1;
        statements.extend(in_the_way(source, kind, limits, now_us));
        let results = self.ledger.transact(statements).await?;
        if let Some(id) = results[granted_at].first().and_then(|row| row.first()) {
            return Ok(Reservation::Granted(id.int()));
        }
        Ok(Reservation::Wait(
            next_free(limits, &results[granted_at + 1..]).unwrap_or(now_us),
        ))
    }

    /// When `limits` allow the next call of `kind` to `source`'s provider, if
    /// not at `now_us`.
    pub(crate) async fn next_allowed(
        &self,
        source: &str,
        kind: &str,
        limits: &[(i64, u32)],
        now_us: i64,
    ) -> Result<Option<i64>, OutboxError> {
        let results = self
            .ledger
            .transact(in_the_way(source, kind, limits, now_us))
            .await?;
        Ok(next_free(limits, &results).filter(|at| *at > now_us))
    }

    /// Records the outcome of call `id`.
    pub(crate) async fn finish(
        &self,
        id: i64,
        outcome: &str,
        detail: &str,
    ) -> Result<(), OutboxError> {
        self.one(statement(
            sql::FINISH_CALL,
            vec![Value::Int(id), text(outcome), text(detail)],
        ))
        .await
        .map(|_| ())
    }

    /// The calls to `source`'s provider (every source's when `None`) since
    /// `since_us`, newest first, at most `limit`.
    pub(crate) async fn calls(
        &self,
        source: Option<&str>,
        since_us: i64,
        limit: usize,
    ) -> Result<Vec<Call>, OutboxError> {
        let rows = self.recent(sql::CALLS, source, since_us, limit).await?;
        Ok(rows
            .iter()
            .map(|row| Call {
                id: row[0].int(),
                source: row[1].text(),
                kind: row[2].text(),
                subject: row[3].text(),
                called_us: row[4].int(),
                outcome: row[5].text(),
                detail: row[6].text(),
            })
            .collect())
    }

    /// Takes or keeps the lead of `name` for `owner` until `now_us + ttl_us`;
    /// whether `owner` leads.
    pub(crate) async fn lead(
        &self,
        name: &str,
        owner: &str,
        now_us: i64,
        ttl_us: i64,
    ) -> Result<bool, OutboxError> {
        let rows = self
            .one(statement(
                sql::LEAD,
                vec![
                    text(name),
                    text(owner),
                    Value::Int(now_us + ttl_us),
                    Value::Int(now_us),
                ],
            ))
            .await?;
        Ok(!rows.is_empty())
    }

    /// Forgets the calls and the settled gaps older than `before_us`; how many
    /// rows went.
    pub(crate) async fn forget(&self, before_us: i64) -> Result<usize, OutboxError> {
        let results = self
            .ledger
            .transact(vec![
                statement(sql::FORGET_CALLS, vec![Value::Int(before_us)]),
                statement(sql::FORGET_GAPS, vec![Value::Int(before_us)]),
            ])
            .await?;
        Ok(results.iter().map(Vec::len).sum())
    }

    /// Gives the lead of `name` up, if `owner` holds it: another relay takes it
    /// at its next beat instead of when the lead would have passed.
    pub(crate) async fn release(&self, name: &str, owner: &str) -> Result<(), OutboxError> {
        self.one(statement(sql::RELEASE_LEAD, vec![text(name), text(owner)]))
            .await
            .map(|_| ())
    }

    /// At most `limit` subjects of `source` whose last published event is older
    /// than `before_us` (and not older than `since_us`) with no final status,
    /// that were not asked about since `asked_since_us`; longest stuck first.
    pub(crate) async fn stuck(
        &self,
        source: &str,
        since_us: i64,
        before_us: i64,
        asked_since_us: i64,
        limit: usize,
    ) -> Result<Vec<Stuck>, OutboxError> {
        let rows = self
            .one(statement(
                sql::stuck(self.ledger.dialect()),
                vec![
                    text(source),
                    Value::Int(before_us),
                    Value::Int(asked_since_us),
                    Value::Int(i64::try_from(limit).unwrap_or(i64::MAX)),
                    Value::Int(since_us),
                ],
            ))
            .await?;
        Ok(rows
            .iter()
            .map(|row| Stuck {
                subject: row[0].text(),
                at_us: row[1].int(),
                meta: match &row[2] {
                    Cell::Text(meta) => Some(meta.clone()),
                    _ => None,
                },
            })
            .collect())
    }

    /// The rows of `query` (`?1` a source or empty for all, `?2` since, `?3` a
    /// limit).
    async fn recent(
        &self,
        query: &str,
        source: Option<&str>,
        since_us: i64,
        limit: usize,
    ) -> Result<Vec<Vec<Cell>>, OutboxError> {
        self.one(statement(
            query,
            vec![
                text(source.unwrap_or_default()),
                Value::Int(since_us),
                Value::Int(i64::try_from(limit).unwrap_or(i64::MAX)),
            ],
        ))
        .await
    }

    async fn one(&self, statement: Statement) -> Result<Vec<Vec<Cell>>, OutboxError> {
        Ok(self
            .ledger
            .transact(vec![statement])
            .await?
            .pop()
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::sqlite::SqliteOutbox;

    const MINUTE: i64 = 60_000_000;

    async fn recall(dir: &tempfile::TempDir) -> Recall {
        let outbox = SqliteOutbox::open(
            &dir.path().join("outbox.db"),
            crate::outbox::Mode::Serve,
            Arc::new(crate::metrics::Metrics::new().unwrap_or_else(|e| panic!("{e}"))),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        Recall::new(Arc::new(outbox))
    }

    #[tokio::test]
    async fn a_beat_after_a_silence_records_a_down_gap_per_source_once() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let recall = recall(&dir).await;
        let sources = ["a".to_owned(), "b".to_owned()];
        let beat = |now| recall.beat(now, 5_000_000, 15_000_000, &sources, &[], &[]);
        assert_eq!(
            beat(MINUTE).await.ok(),
            Some(None),
            "a first beat is no gap"
        );
        assert_eq!(beat(MINUTE + 5_000_000).await.ok(), Some(None));
        let back = 3 * MINUTE;
        assert_eq!(beat(back).await.ok(), Some(Some(MINUTE + 5_000_000)));
        assert_eq!(beat(back + 5_000_000).await.ok(), Some(None), "once");
        let gaps = recall
            .gaps(None, 0, 10)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(gaps.len(), 2);
        for gap in &gaps {
            assert_eq!(gap.reason, "down");
            assert_eq!(gap.state, gap_state::PENDING);
            assert_eq!((gap.from_us, gap.until_us), (MINUTE, back));
        }
    }

    #[tokio::test]
    async fn a_refusal_window_grows_until_an_accepted_webhook_closes_it() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let recall = recall(&dir).await;
        let window = |last_us| Refusals {
            source: "a".to_owned(),
            first_us: MINUTE,
            last_us,
        };
        let beat = async |refusals: Vec<Refusals>, accepted: Vec<(String, i64)>| {
            recall
                .beat(2 * MINUTE, 5_000_000, 15_000_000, &[], &refusals, &accepted)
                .await
                .unwrap_or_else(|e| panic!("{e}"))
        };
        beat(vec![window(MINUTE + 1)], Vec::new()).await;
        beat(vec![window(MINUTE + 9)], vec![("a".to_owned(), MINUTE + 5)]).await;
        let gaps = recall
            .gaps(Some("a"), 0, 10)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(gaps.len(), 1);
        assert_eq!(gaps[0].until_us, MINUTE + 9);
        assert_eq!(gaps[0].state, gap_state::OPEN, "accepted before its end");
        beat(Vec::new(), vec![("a".to_owned(), MINUTE + 10)]).await;
        let gaps = recall
            .gaps(Some("a"), 0, 10)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(gaps[0].state, gap_state::PENDING);
    }

    #[tokio::test]
    async fn calls_are_granted_within_every_limit_and_otherwise_told_when() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let recall = recall(&dir).await;
        let limits = [(MINUTE, 1), (60 * MINUTE, 2)];
        let reserve = |now| recall.reserve("a", "resend", "", &limits, now);
        assert!(matches!(reserve(0).await, Ok(Reservation::Granted(_))));
        assert_eq!(reserve(1).await.ok(), Some(Reservation::Wait(MINUTE)));
        assert!(matches!(
            reserve(MINUTE + 1).await,
            Ok(Reservation::Granted(_))
        ));
        assert_eq!(
            reserve(3 * MINUTE).await.ok(),
            Some(Reservation::Wait(60 * MINUTE)),
            "two an hour"
        );
        // Another source's limits are its own.
        assert!(matches!(
            recall.reserve("b", "resend", "", &limits, 1).await,
            Ok(Reservation::Granted(_))
        ));
        let calls = recall
            .calls(Some("a"), 0, 10)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(calls.len(), 2);
        assert!(calls.iter().all(|call| call.outcome == "sent"));
    }

    #[tokio::test]
    async fn old_calls_and_settled_gaps_are_forgotten_open_gaps_are_not() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let recall = recall(&dir).await;
        let refusals = [Refusals {
            source: "a".to_owned(),
            first_us: 1,
            last_us: 2,
        }];
        recall
            .beat(MINUTE, 5_000_000, 15_000_000, &[], &refusals, &[])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let _ = recall.reserve("a", "resend", "", &[], 3).await;
        assert_eq!(
            recall.forget(MINUTE).await.ok(),
            Some(1),
            "the call, not the open gap"
        );
        assert_eq!(
            recall.gaps(None, 0, 10).await.map(|g| g.len()).ok(),
            Some(1)
        );
    }

    #[tokio::test]
    async fn one_owner_leads_until_its_lead_passes() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let recall = recall(&dir).await;
        assert_eq!(
            recall.lead("recovery", "x", 0, MINUTE).await.ok(),
            Some(true)
        );
        assert_eq!(
            recall.lead("recovery", "y", 1, MINUTE).await.ok(),
            Some(false)
        );
        assert_eq!(
            recall.lead("recovery", "x", 2, MINUTE).await.ok(),
            Some(true)
        );
        assert_eq!(
            recall
                .lead("recovery", "y", 2 * MINUTE + 3, MINUTE)
                .await
                .ok(),
            Some(true)
        );
    }
}
