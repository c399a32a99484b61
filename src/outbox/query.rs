//! Finding rows: the one filter behind the admin API, the console and the
//! `outbox` commands, and the walks that page, count and replay by it.
//!
//! A backend answers one question, [`Operate::find`]: the rows that match a
//! filter within a range of ids. Everything else is built here on top of it, the
//! same way for both backends. A page walks id windows from the newest row down,
//! widening them while they come back empty, and stops at its time budget with a
//! cursor to go on from: a search for a string that is nowhere costs one budget
//! per request, never a scan of the whole outbox in one go.

use std::time::{Duration, Instant};

use super::driver::Operate;
use super::row::Row;
use super::view::RowView;
use super::{OutboxError, State};

/// Which rows to find. Every field narrows; an empty filter matches every row.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub(crate) struct EventFilter {
    /// Only rows in this state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) state: Option<State>,
    /// Only this source.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) source: Option<String>,
    /// Only this provider.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) provider: Option<String>,
    /// Only this kind (`unrecognized` for events that could not be parsed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) kind: Option<String>,
    /// Only this normalized status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) status: Option<String>,
    /// Only this subject (the provider's order or record id), exactly.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) subject: Option<String>,
    /// Only this routing key, exactly.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) routing_key: Option<String>,
    /// Received at or after, Unix microseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) since_us: Option<i64>,
    /// Received before, Unix microseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) until_us: Option<i64>,
    /// Only rows whose raw body contains this text (bytes, case-sensitive).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) q: Option<String>,
}

/// Why a filter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// A state that does not exist.
    #[error("`{0}` is not a state: use pending, published or dead")]
    State(String),
    /// A time that does not parse.
    #[error("`{0}` is neither an RFC 3339 time nor a duration like 2h or 7d")]
    Time(String),
    /// Text too long to be a reasonable filter.
    #[error("the filter `{0}` is longer than {MAX_TEXT} bytes")]
    TooLong(&'static str),
}

/// Longest filter text: a search is for an id or a phrase, and a request must
/// not make the database compare megabytes per row.
pub(crate) const MAX_TEXT: usize = 256;

impl State {
    /// The state named `text`.
    pub(crate) fn parse(text: &str) -> Result<Self, FilterError> {
        match text {
            "pending" => Ok(Self::Pending),
            "published" => Ok(Self::Published),
            "dead" => Ok(Self::Dead),
            other => Err(FilterError::State(other.to_owned())),
        }
    }
}

impl EventFilter {
    /// Refuses text filters longer than [`MAX_TEXT`].
    pub(crate) fn check(&self) -> Result<(), FilterError> {
        let texts = [
            ("source", &self.source),
            ("provider", &self.provider),
            ("kind", &self.kind),
            ("status", &self.status),
            ("subject", &self.subject),
            ("routing_key", &self.routing_key),
            ("q", &self.q),
        ];
        for (name, text) in texts {
            if text.as_ref().is_some_and(|t| t.len() > MAX_TEXT) {
                return Err(FilterError::TooLong(name));
            }
        }
        Ok(())
    }

    /// Kind and status as a `LIKE` pattern on the routing key
    /// (`{prefix}.{kind}.{status}`, or `{provider}.unrecognized`). The prefix is a
    /// provider or source name, which has no dot, so `.kind.` can only match the
    /// middle segment.
    pub(crate) fn routing_pattern(&self) -> Option<String> {
        let escape = |s: &str| {
            s.replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        };
        match (self.kind.as_deref(), self.status.as_deref()) {
            (None, None) => None,
            (Some("unrecognized"), _) => Some("%.unrecognized".to_owned()),
            (Some(kind), None) => Some(format!("%.{}.%", escape(kind))),
            (None, Some(status)) => Some(format!("%.%.{}", escape(status))),
            (Some(kind), Some(status)) => Some(format!("%.{}.{}", escape(kind), escape(status))),
        }
    }
}

/// Rows strictly between two ids, newest or oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    /// Ids above this one.
    pub(crate) above: i64,
    /// Ids below this one.
    pub(crate) below: i64,
    /// Oldest first (a subject's timeline) instead of newest first.
    pub(crate) oldest_first: bool,
}

impl Window {
    /// Every row.
    pub(crate) const ALL: Self = Self {
        above: i64::MIN,
        below: i64::MAX,
        oldest_first: false,
    };
}

/// One page of rows, newest first, and where the next one starts.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Page {
    /// The rows.
    pub(crate) events: Vec<RowView>,
    /// Pass as `cursor` for the rows after these; `None` when no older row is left.
    /// A page may hold fewer rows than asked while a cursor is still given: the
    /// search spent its time budget and stopped there.
    pub(crate) next_cursor: Option<i64>,
}

/// The first id window a page looks at; each empty one doubles the next.
const FIRST_WINDOW: i64 = 4096;

/// The widest window: bounds what one query reads when the filter matches
/// nothing, and so how far past its budget a page can run (one window).
const WIDEST_WINDOW: i64 = 1 << 16;

/// The window of a walk over every matching row (replay, dry run): each window's
/// rows are held in memory at once, and only their ids are kept.
const WALK_WINDOW: i64 = 1 << 14;

/// Time a page may spend before it answers with what it found and a cursor.
pub(crate) const PAGE_BUDGET: Duration = Duration::from_millis(800);

/// Rows matching `filter`, newest first, below `cursor` (an id; `None`: from the
/// newest), at most `limit`, within `budget`.
pub(crate) async fn page(
    outbox: &dyn Operate,
    filter: &EventFilter,
    cursor: Option<i64>,
    limit: usize,
    budget: Duration,
) -> Result<Page, OutboxError> {
    let started = Instant::now();
    let Some((oldest, newest)) = outbox.id_range().await? else {
        return Ok(Page {
            events: Vec::new(),
            next_cursor: None,
        });
    };
    let mut below = cursor.unwrap_or(i64::MAX).min(newest.saturating_add(1));
    let mut events: Vec<Row> = Vec::new();
    let mut width = FIRST_WINDOW;
    while events.len() < limit && below > oldest {
        let above = below.saturating_sub(width).max(oldest - 1);
        let window = Window {
            above,
            below,
            oldest_first: false,
        };
        let asked = Instant::now();
        let found = outbox.find(filter, window, limit - events.len()).await?;
        let took = asked.elapsed();
        let filled = events.len() + found.len() >= limit;
        events.extend(found);
        below = if filled {
            events.last().map_or(above + 1, |row| row.id)
        } else {
            above + 1
        };
        if filled {
            break;
        }
        let next = (width * 2).min(WIDEST_WINDOW);
        // Stop before a window that would end past the budget, judged by what the
        // last one cost per id, so a page answers within its budget, not one
        // window after it.
        let expected = took.mul_f64(next as f64 / width as f64);
        if started.elapsed() + expected >= budget {
            break;
        }
        width = next;
    }
    Ok(Page {
        events: events.into_iter().map(RowView::of).collect(),
        next_cursor: (below > oldest).then_some(below),
    })
}

/// Ids of every row matching `filter`, oldest first (for replay and its dry
/// run).
pub(crate) async fn matching_ids(
    outbox: &dyn Operate,
    filter: &EventFilter,
) -> Result<Vec<i64>, OutboxError> {
    matching_ids_where(outbox, filter, |_| true).await
}

/// Ids of every row matching `filter` that `keep` also takes, oldest first.
pub(crate) async fn matching_ids_where(
    outbox: &dyn Operate,
    filter: &EventFilter,
    keep: impl Fn(&Row) -> bool,
) -> Result<Vec<i64>, OutboxError> {
    let Some((oldest, newest)) = outbox.id_range().await? else {
        return Ok(Vec::new());
    };
    let mut ids = Vec::new();
    let mut above = oldest - 1;
    while above < newest {
        let below = above.saturating_add(WALK_WINDOW).min(newest) + 1;
        let window = Window {
            above,
            below,
            oldest_first: true,
        };
        let found = outbox.find(filter, window, usize::MAX).await?;
        ids.extend(found.iter().filter(|row| keep(row)).map(|row| row.id));
        above = below - 1;
    }
    Ok(ids)
}

/// Most events a subject timeline shows: an order has a handful; a subject with
/// more is shown to this many, oldest first.
pub(crate) const TIMELINE_LIMIT: usize = 1000;

/// The events of one subject in received order.
pub(crate) async fn timeline(
    outbox: &dyn Operate,
    source: &str,
    subject: &str,
) -> Result<Vec<Row>, OutboxError> {
    let filter = EventFilter {
        source: Some(source.to_owned()),
        subject: Some(subject.to_owned()),
        ..EventFilter::default()
    };
    let window = Window {
        oldest_first: true,
        ..Window::ALL
    };
    outbox.find(&filter, window, TIMELINE_LIMIT).await
}

/// RFC 3339, or "that long ago" (`2h`, `7d`), as Unix microseconds.
pub(crate) fn parse_time(text: &str, now: time::OffsetDateTime) -> Result<i64, FilterError> {
    let at = match time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
    {
        Ok(at) => at,
        Err(_) => {
            let ago =
                humantime::parse_duration(text).map_err(|_| FilterError::Time(text.to_owned()))?;
            time::Duration::try_from(ago)
                .ok()
                .and_then(|ago| now.checked_sub(ago))
                .ok_or_else(|| FilterError::Time(text.to_owned()))?
        }
    };
    Ok(crate::clock::micros(at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_and_status_match_only_their_own_segment_of_the_routing_key() {
        let pattern = |kind: Option<&str>, status: Option<&str>| {
            EventFilter {
                kind: kind.map(str::to_owned),
                status: status.map(str::to_owned),
                ..EventFilter::default()
            }
            .routing_pattern()
        };
        assert_eq!(pattern(Some("order"), None).as_deref(), Some("%.order.%"));
        assert_eq!(
            pattern(Some("abnormal_payment"), Some("abnormal")).as_deref(),
            Some("%.abnormal\\_payment.abnormal")
        );
        assert_eq!(
            pattern(None, Some("partially_paid")).as_deref(),
            Some("%.%.partially\\_paid")
        );
        assert_eq!(
            pattern(Some("unrecognized"), None).as_deref(),
            Some("%.unrecognized")
        );
    }

    #[test]
    fn long_filters_and_unknown_states_are_refused() {
        let filter = EventFilter {
            q: Some("x".repeat(MAX_TEXT + 1)),
            ..EventFilter::default()
        };
        assert_eq!(filter.check(), Err(FilterError::TooLong("q")));
        assert!(State::parse("lost").is_err());
    }

    #[test]
    fn times_before_the_calendar_are_errors_not_panics() {
        let now = time::OffsetDateTime::now_utc();
        assert!(matches!(
            parse_time("100000y", now),
            Err(FilterError::Time(_))
        ));
        assert!(parse_time("2h", now).is_ok());
        assert!(parse_time("2026-11-30T00:00:00Z", now).is_ok());
    }
}
