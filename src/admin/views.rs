//! What the admin API and the console show, built once: `api` renders it as
//! JSON, `ui` as HTML. Filters come in as the same query parameters for both.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::Admin;
use crate::activity::Summary;
use crate::outbox::query::{self, FilterError};
use crate::outbox::select::{self, SelectError, Selection};
use crate::outbox::view::{Body, RowView};
use crate::outbox::{EventFilter, OutboxError, State};
use crate::recovery::{Demand, RecoveryError, Report};

/// Rows a list page holds unless asked otherwise.
pub(crate) const DEFAULT_LIMIT: usize = 50;
/// Most rows a list page holds.
pub(crate) const MAX_LIMIT: usize = 500;

/// The filters as query parameters (`GET /api/v1/events?state=dead&q=8f3`) or
/// form fields. Empty values mean "any", so a submitted form with blank fields
/// filters nothing.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub(crate) struct FilterParams {
    /// `pending`, `published` or `dead`.
    #[serde(default)]
    pub(crate) state: Option<String>,
    /// Source name.
    #[serde(default)]
    pub(crate) source: Option<String>,
    /// Provider name.
    #[serde(default)]
    pub(crate) provider: Option<String>,
    /// Kind, or `unrecognized`.
    #[serde(default)]
    pub(crate) kind: Option<String>,
    /// Normalized status.
    #[serde(default)]
    pub(crate) status: Option<String>,
    /// Subject, exactly.
    #[serde(default)]
    pub(crate) subject: Option<String>,
    /// Routing key, exactly.
    #[serde(default)]
    pub(crate) routing_key: Option<String>,
    /// RFC 3339 time or a duration ago (`2h`).
    #[serde(default)]
    pub(crate) since: Option<String>,
    /// RFC 3339 time or a duration ago.
    #[serde(default)]
    pub(crate) until: Option<String>,
    /// Text in the raw body.
    #[serde(default)]
    pub(crate) q: Option<String>,
}

/// A list request: filters, page size and cursor.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct ListParams {
    /// The filters.
    #[serde(flatten)]
    pub(crate) filter: FilterParams,
    /// Page size.
    #[serde(default)]
    pub(crate) limit: Option<String>,
    /// The `next_cursor` of the previous page.
    #[serde(default)]
    pub(crate) cursor: Option<String>,
}

/// A request the admin cannot answer as asked.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ViewError {
    /// A filter or parameter is not valid.
    #[error("{0}")]
    Invalid(String),
    /// No such row.
    #[error("no event {0} in the outbox")]
    NotFound(i64),
    /// The outbox failed.
    #[error("{0}")]
    Outbox(OutboxError),
    /// Another text search holds the relay's one search slot.
    #[error("another text search is running on this relay; retry in a moment")]
    Busy,
    /// No count of the outbox has finished yet (one runs).
    #[error("the outbox's rows are being counted; retry in a moment")]
    Uncounted,
}

impl From<FilterError> for ViewError {
    fn from(e: FilterError) -> Self {
        Self::Invalid(e.to_string())
    }
}

impl From<OutboxError> for ViewError {
    fn from(e: OutboxError) -> Self {
        Self::Outbox(e)
    }
}

/// A blank value is no value.
fn given(text: &Option<String>) -> Option<String> {
    text.as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
}

impl FilterParams {
    /// The outbox filter these parameters describe.
    pub(crate) fn filter(&self) -> Result<EventFilter, ViewError> {
        let now = time::OffsetDateTime::now_utc();
        let time =
            |text: &Option<String>| given(text).map(|t| query::parse_time(&t, now)).transpose();
        let filter = EventFilter {
            state: given(&self.state).map(|s| State::parse(&s)).transpose()?,
            source: given(&self.source),
            provider: given(&self.provider),
            kind: given(&self.kind),
            status: given(&self.status),
            subject: given(&self.subject),
            routing_key: given(&self.routing_key),
            since_us: time(&self.since)?,
            until_us: time(&self.until)?,
            // Searched as typed: leading or trailing spaces may be meant.
            q: self.q.clone().filter(|q| !q.is_empty()),
        };
        filter.check()?;
        Ok(filter)
    }
}

impl ListParams {
    /// Page size and cursor.
    pub(crate) fn paging(&self) -> Result<(usize, Option<i64>), ViewError> {
        let limit = match given(&self.limit) {
            None => DEFAULT_LIMIT,
            Some(text) => match text.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => {
                    return Err(ViewError::Invalid(format!(
                        "limit `{text}` must be a number from 1 to {MAX_LIMIT}"
                    )));
                }
            },
        };
        let cursor = given(&self.cursor)
            .map(|text| {
                text.parse::<i64>().map_err(|_| {
                    ViewError::Invalid(format!(
                        "cursor `{text}` is not one this API gave: pass next_cursor as it came"
                    ))
                })
            })
            .transpose()?;
        Ok((limit, cursor))
    }
}

/// How long a text search waits for the one running before it to finish.
const SEARCH_QUEUE: std::time::Duration = std::time::Duration::from_secs(2);

/// Holds the relay's one text-search slot for a filter with `q`: a search reads
/// every body in its windows, and two operators (or one impatient script)
/// searching at once must not take the CPU the ingest and the database need.
async fn search_slot<'a>(
    admin: &'a Admin,
    filter: &EventFilter,
) -> Result<Option<tokio::sync::SemaphorePermit<'a>>, ViewError> {
    if filter.q.is_none() {
        return Ok(None);
    }
    match tokio::time::timeout(SEARCH_QUEUE, admin.searches.acquire()).await {
        Ok(Ok(permit)) => Ok(Some(permit)),
        _ => Err(ViewError::Busy),
    }
}

/// One page of events.
pub(crate) async fn events(admin: &Admin, params: &ListParams) -> Result<query::Page, ViewError> {
    let filter = params.filter.filter()?;
    let (limit, cursor) = params.paging()?;
    let _slot = search_slot(admin, &filter).await?;
    Ok(query::page(
        admin.outbox.as_ref(),
        &filter,
        cursor,
        limit,
        query::PAGE_BUDGET,
    )
    .await?)
}

/// One event as an operator needs to see it.
#[derive(Debug, Serialize)]
pub(crate) struct Detail {
    /// The row, with headers and the body (redacted as published).
    #[serde(flatten)]
    pub(crate) row: RowView,
    /// `verified`, `unsigned` (the source has `allow_unsigned`) or `not recorded`.
    pub(crate) verification: &'static str,
    /// The CloudEvent as it is (or would be) published, byte for byte.
    pub(crate) cloudevent: Option<Box<serde_json::value::RawValue>>,
    /// Why the CloudEvent cannot be built, if it cannot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cloudevent_error: Option<String>,
}

/// The place a row was first published with, which its CloudEvent shows
/// (`None` before its first publish).
fn published_as(row: &crate::outbox::row::Row) -> Option<crate::event::Sequence> {
    row.sequence.map(|number| crate::event::Sequence {
        number,
        stale: row.stale,
    })
}

/// An event with its headers, redacted body, verification, failed attempts and
/// CloudEvent.
pub(crate) async fn detail(admin: &Admin, id: i64) -> Result<Detail, ViewError> {
    let full = admin
        .outbox
        .show(id)
        .await?
        .ok_or(ViewError::NotFound(id))?;
    let (cloudevent, cloudevent_error) = match &full.row.meta {
        Some(meta) => {
            match crate::event::cloudevent_json(meta, published_as(&full.row), &full.body)
                .map_err(|e| e.to_string())
                .and_then(|bytes| String::from_utf8(bytes).map_err(|e| e.to_string()))
                .and_then(|text| {
                    serde_json::value::RawValue::from_string(text).map_err(|e| e.to_string())
                }) {
                Ok(raw) => (Some(raw), None),
                Err(e) => (None, Some(e)),
            }
        }
        None => (None, Some("the row's metadata is unreadable".to_owned())),
    };
    let verification = match full.row.meta.as_ref().and_then(|meta| meta.verified) {
        Some(true) => "verified",
        Some(false) => "unsigned",
        None => "not recorded",
    };
    Ok(Detail {
        row: RowView::full(full, Body::AsPublished),
        verification,
        cloudevent,
        cloudevent_error,
    })
}

/// One event of a subject's timeline.
#[derive(Debug, Serialize)]
pub(crate) struct Step {
    /// The row.
    #[serde(flatten)]
    pub(crate) row: RowView,
    /// The status goes backwards here: an earlier event of the same kind had a
    /// later stage (`pending` after `succeeded`).
    pub(crate) backwards: bool,
}

/// A subject's events in received order, with the backwards steps flagged.
pub(crate) async fn timeline(
    admin: &Admin,
    source: &str,
    subject: &str,
) -> Result<Vec<Step>, ViewError> {
    let rows = query::timeline(admin.outbox.as_ref(), source, subject).await?;
    Ok(flag_backwards(rows.into_iter().map(RowView::of).collect()))
}

/// Flags each row whose status is at an earlier stage than one already seen for
/// its kind.
fn flag_backwards(rows: Vec<RowView>) -> Vec<Step> {
    let mut furthest: std::collections::HashMap<String, u8> = std::collections::HashMap::new();
    rows.into_iter()
        .map(|row| {
            let stage = row
                .meta
                .as_ref()
                .and_then(|meta| meta.class)
                .map(|(_, status)| status.stage());
            let backwards = match stage {
                Some(stage) => {
                    let seen = furthest.entry(row.kind.clone()).or_insert(stage);
                    let backwards = stage < *seen;
                    *seen = (*seen).max(stage);
                    backwards
                }
                None => false,
            };
            Step { row, backwards }
        })
        .collect()
}

/// One source on the sources page.
#[derive(Debug, Serialize)]
pub(crate) struct SourceView {
    /// Source name.
    pub(crate) name: String,
    /// Provider.
    pub(crate) provider: String,
    /// Last request and last acked, outcomes over the last hour and day.
    #[serde(flatten)]
    pub(crate) activity: Summary,
    /// Its `recover` as it applies (`docs/recovery.md`).
    pub(crate) recover: &'static str,
    /// Why its provider cannot be asked for missed webhooks, if it cannot.
    pub(crate) recovery_unavailable: Option<String>,
}

/// Every configured source with its activity.
pub(crate) fn sources(admin: &Admin) -> Vec<SourceView> {
    let now = crate::clock::now_micros() / 1_000_000;
    admin
        .sources
        .iter()
        .map(|(name, provider)| {
            let (recover, recovery_unavailable) =
                admin.recovery.describe(name).unwrap_or(("off", None));
            SourceView {
                name: name.clone(),
                provider: provider.clone(),
                activity: admin.activity.summary(name, now),
                recover,
                recovery_unavailable,
            }
        })
        .collect()
}

/// A recovery request (`POST /api/v1/recover`, the sources page).
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct RecoverRequest {
    /// The source.
    pub(crate) source: String,
    /// Gaps and stuck subjects from TIME (RFC 3339, or a duration ago such as
    /// `2h`); default 7 days ago.
    #[serde(default)]
    pub(crate) since: Option<String>,
    /// Up to TIME; default now.
    #[serde(default)]
    pub(crate) until: Option<String>,
    /// Say what would be asked; ask nothing.
    #[serde(default)]
    pub(crate) dry_run: bool,
}

/// Runs recovery of a source now, or says what it would ask (`dry_run`).
pub(crate) async fn recover(
    admin: &Admin,
    request: &RecoverRequest,
    by: &'static str,
) -> Result<Report, ViewError> {
    let demand = Demand::new(
        &request.source,
        request.since.as_deref(),
        request.until.as_deref(),
        request.dry_run,
        by,
    )?;
    admin
        .recovery
        .on_demand(&demand)
        .await
        .map_err(|e| match e {
            RecoveryError::UnknownSource(_) => ViewError::Invalid(e.to_string()),
            RecoveryError::Outbox(e) => ViewError::Outbox(e),
        })
}

/// A replay request: ids, filters, or both (the named rows that match), and
/// whether only to count.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct ReplayRequest {
    /// Row ids.
    #[serde(default)]
    pub(crate) ids: Vec<i64>,
    /// Filters.
    #[serde(flatten)]
    pub(crate) filter: FilterParams,
    /// Count only; change nothing.
    #[serde(default)]
    pub(crate) dry_run: bool,
}

/// What a replay did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Replayed {
    /// A dry run: this many rows match.
    Matched(usize),
    /// This many rows went back to pending.
    Replayed(u64),
}

impl From<SelectError> for ViewError {
    fn from(e: SelectError) -> Self {
        match e {
            SelectError::NothingNamed => Self::Invalid(
                "name the events to replay: `ids`, or at least one filter (state, source, since, …)"
                    .to_owned(),
            ),
            SelectError::TooManyIds => Self::Invalid(e.to_string()),
            SelectError::Outbox(e) => Self::Outbox(e),
        }
    }
}

/// Runs (or counts) a replay and, when it runs, logs and counts it as the
/// operator's action.
pub(crate) async fn replay(
    admin: &Admin,
    request: &ReplayRequest,
    via: &'static str,
    from: SocketAddr,
) -> Result<Replayed, ViewError> {
    let selection = Selection {
        ids: request.ids.clone(),
        filter: request.filter.filter()?,
    };
    let _slot = search_slot(admin, &selection.filter).await?;
    let ids = selection.ids(admin.outbox.as_ref()).await?;
    if request.dry_run {
        return Ok(Replayed::Matched(ids.len()));
    }
    let replayed = select::replay(admin.outbox.as_ref(), &ids).await?;
    admin
        .metrics
        .admin_actions
        .with_label_values(&["replay", via])
        .inc();
    select::audit_replay(via, &from.to_string(), &selection, ids.len(), replayed);
    Ok(Replayed::Replayed(replayed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventMeta, Kind, Status};
    use crate::outbox::row::Row;

    fn row(id: i64, status: Status) -> RowView {
        let meta = EventMeta {
            id: format!("e{id}"),
            provider: "whitepay".to_owned(),
            source: "whitepay".to_owned(),
            class: Some((Kind::Order, status)),
            subject: "o-1".to_owned(),
            idempotency_key: format!("k{id}"),
            provider_event_type: None,
            provider_status: None,
            order_id: None,
            merchant_order_id: None,
            amount: None,
            currency: None,
            event_time: None,
            received_at: String::new(),
            routing_prefix: "whitepay".to_owned(),
            redact: Vec::new(),
            verified: Some(true),
            recovered: false,
        };
        RowView::of(Row {
            id,
            event_id: meta.id.clone(),
            source: meta.source.clone(),
            provider: meta.provider.clone(),
            routing_key: String::new(),
            state: "published".to_owned(),
            attempts: 1,
            last_error: None,
            received_at_us: 0,
            next_attempt_at_us: 0,
            published_at_us: None,
            idempotency_key: meta.idempotency_key.clone(),
            permanent_attempts: 0,
            released_at_us: None,
            subject: meta.subject.clone(),
            meta: Some(meta),
            sequence: None,
            stale: false,
        })
    }

    #[test]
    fn a_status_that_goes_back_is_flagged_and_the_furthest_stage_is_kept() {
        use Status::{Failed, Pending, Processing, Refunded, Succeeded};
        let steps = flag_backwards(vec![
            row(1, Pending),
            row(2, Succeeded),
            row(3, Pending),
            row(4, Processing),
            row(5, Refunded),
            row(6, Failed),
        ]);
        let flags: Vec<bool> = steps.iter().map(|s| s.backwards).collect();
        assert_eq!(flags, [false, false, true, true, false, true]);
    }

    #[test]
    fn blank_form_fields_filter_nothing_and_bad_ones_are_named() {
        let blank = FilterParams {
            state: Some(String::new()),
            q: Some(String::new()),
            ..FilterParams::default()
        };
        assert_eq!(blank.filter().ok(), Some(EventFilter::default()));
        let bad = FilterParams {
            state: Some("lost".to_owned()),
            ..FilterParams::default()
        };
        assert!(
            bad.filter()
                .err()
                .is_some_and(|e| e.to_string().contains("lost"))
        );
        let paging = ListParams {
            limit: Some("0".to_owned()),
            ..ListParams::default()
        };
        assert!(paging.paging().is_err());
    }
}
