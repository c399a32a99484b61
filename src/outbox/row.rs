//! A stored row, as both drivers write and read it: the columns of a webhook in one
//! order, encoded and decoded once.
//!
//! A driver's `sql.rs` selects the columns in the order the readers here take them
//! ([`Row::read`], [`FullRow::read`], [`Due::read`], [`Attempt::read`])
//! and hands each result row over as [`Columns`]; what the values mean (times,
//! counts, the stored metadata, a row this release cannot read) is decided here.

use super::{Attempt, Due, NewEvent, OutboxError, PendingEvent, Unreadable};
use crate::event::EventMeta;

/// A result row as a driver hands it over: typed reads by position. Each method
/// fails with the driver's own error, mapped to [`OutboxError`].
pub(crate) trait Columns {
    /// An integer column (any width).
    fn int(&self, at: usize) -> Result<i64, OutboxError>;
    /// An integer column that may be NULL.
    fn opt_int(&self, at: usize) -> Result<Option<i64>, OutboxError>;
    /// A text column.
    fn text(&self, at: usize) -> Result<String, OutboxError>;
    /// A text column that may be NULL.
    fn opt_text(&self, at: usize) -> Result<Option<String>, OutboxError>;
    /// A blob (`BLOB`, `bytea`) column.
    fn bytes(&self, at: usize) -> Result<Vec<u8>, OutboxError>;
}

/// A count column (attempts) as a count: a negative one cannot be written by the
/// relay, so it reads as 0.
fn count(columns: &dyn Columns, at: usize) -> Result<u32, OutboxError> {
    Ok(u32::try_from(columns.int(at)?).unwrap_or(0))
}

/// A webhook as the columns it is stored in: what an insert writes.
pub(crate) struct Encoded<'a> {
    /// The event as it came from ingress.
    pub(crate) event: &'a NewEvent,
    /// Its routing key.
    pub(crate) routing_key: String,
    /// Its metadata as JSON text.
    pub(crate) meta: String,
}

impl<'a> Encoded<'a> {
    /// Encodes one webhook for an insert.
    pub(crate) fn new(event: &'a NewEvent) -> Result<Self, OutboxError> {
        let meta = serde_json::to_string(&event.meta).map_err(|e| {
            OutboxError::Storage(super::Fault::new(
                super::FaultKind::Other,
                format!("cannot encode the metadata of event {}: {e}", event.meta.id),
            ))
        })?;
        Ok(Self {
            event,
            routing_key: event.meta.routing_key(),
            meta,
        })
    }
}

/// One row without its headers and body: what lists, timelines and replays read.
///
/// Columns, in order: id, event id, source, provider, routing key, state,
/// attempts, last error, received at, next attempt at, published at, idempotency
/// key, permanent attempts, released at, subject, metadata, sequence number,
/// stale flag.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    /// Row id (received order; the paging cursor).
    pub(crate) id: i64,
    /// Event id (the published `message_id`).
    pub(crate) event_id: String,
    /// Source name.
    pub(crate) source: String,
    /// Provider name.
    pub(crate) provider: String,
    /// Routing key it is published with.
    pub(crate) routing_key: String,
    /// State, as stored (`pending`, `published`, `dead`).
    pub(crate) state: String,
    /// Publish attempts so far.
    pub(crate) attempts: u32,
    /// Last publish error.
    pub(crate) last_error: Option<String>,
    /// Receive time, Unix microseconds.
    pub(crate) received_at_us: i64,
    /// Next attempt time, Unix microseconds.
    pub(crate) next_attempt_at_us: i64,
    /// When the broker confirmed it, Unix microseconds.
    pub(crate) published_at_us: Option<i64>,
    /// Idempotency key.
    pub(crate) idempotency_key: String,
    /// Of the attempts, the permanent failures.
    pub(crate) permanent_attempts: u32,
    /// When an operator released this dead row's subject, Unix microseconds.
    pub(crate) released_at_us: Option<i64>,
    /// Ordering subject.
    pub(crate) subject: String,
    /// The stored metadata, or `None` when this release cannot read it (the row is
    /// still shown).
    pub(crate) meta: Option<EventMeta>,
    /// The number it was first published with (`None`: never published).
    pub(crate) sequence: Option<i64>,
    /// Whether it was published as `stale`.
    pub(crate) stale: bool,
}

/// How many columns [`Due::read`] takes; a driver reads its own after them.
pub(crate) const DUE_COLUMNS: usize = 11;

/// How many columns [`Row::read`] takes; [`FullRow::read`] reads its own after them.
pub(crate) const ROW_COLUMNS: usize = 18;

impl Row {
    /// Reads the columns listed on [`Row`], from position 0.
    pub(crate) fn read(columns: &dyn Columns) -> Result<Self, OutboxError> {
        Ok(Self {
            id: columns.int(0)?,
            event_id: columns.text(1)?,
            source: columns.text(2)?,
            provider: columns.text(3)?,
            routing_key: columns.text(4)?,
            state: columns.text(5)?,
            attempts: count(columns, 6)?,
            last_error: columns.opt_text(7)?,
            received_at_us: columns.int(8)?,
            next_attempt_at_us: columns.int(9)?,
            published_at_us: columns.opt_int(10)?,
            idempotency_key: columns.text(11)?,
            permanent_attempts: count(columns, 12)?,
            released_at_us: columns.opt_int(13)?,
            subject: columns.text(14)?,
            meta: serde_json::from_str(&columns.text(15)?).ok(),
            sequence: columns.opt_int(16)?,
            stale: columns.int(17)? != 0,
        })
    }
}

/// One row with everything stored about it: what `outbox show` and the event page
/// read.
#[derive(Debug, Clone)]
pub(crate) struct FullRow {
    /// The row.
    pub(crate) row: Row,
    /// Audit headers, as the JSON object text they were stored as.
    pub(crate) headers: String,
    /// The raw body, as received.
    pub(crate) body: Vec<u8>,
    /// W3C `traceparent` the message carries.
    pub(crate) traceparent: String,
    /// Failed publish attempts, oldest first.
    pub(crate) failures: Vec<Attempt>,
}

impl FullRow {
    /// Reads the columns of [`Row`], then headers, body and traceparent; the
    /// failures are read apart.
    pub(crate) fn read(columns: &dyn Columns) -> Result<Self, OutboxError> {
        Ok(Self {
            row: Row::read(columns)?,
            headers: columns.text(ROW_COLUMNS)?,
            body: columns.bytes(ROW_COLUMNS + 1)?,
            traceparent: columns.text(ROW_COLUMNS + 2)?,
            failures: Vec::new(),
        })
    }
}

impl Attempt {
    /// Reads time, outcome and error.
    pub(crate) fn read(columns: &dyn Columns) -> Result<Self, OutboxError> {
        Ok(Self {
            at_us: columns.int(0)?,
            outcome: columns.text(1)?,
            error: columns.text(2)?,
        })
    }
}

impl Due {
    /// Reads a due row (id, metadata, body, received at, traceparent, attempts,
    /// permanent attempts, then its own number and `stale` flag, and its
    /// subject's last number and stages: see [`sequence`](super::sequence)) into
    /// the events, or into the unreadable rows when its metadata does not parse.
    pub(crate) fn read(&mut self, columns: &dyn Columns) -> Result<(), OutboxError> {
        let id = columns.int(0)?;
        match serde_json::from_str::<EventMeta>(&columns.text(1)?) {
            Ok(meta) => self.events.push(PendingEvent {
                id,
                place: super::sequence::place(
                    &super::sequence::Stored {
                        sequence: columns.opt_int(7)?,
                        stale: columns.int(8)? != 0,
                        last: columns.opt_int(9)?,
                        stages: columns.opt_text(10)?,
                    },
                    meta.class,
                ),
                meta,
                body: columns.bytes(2)?,
                received_at_us: columns.int(3)?,
                traceparent: columns.text(4)?,
                attempts: count(columns, 5)?,
                permanent_attempts: count(columns, 6)?,
            }),
            Err(e) => self.unreadable.push(Unreadable {
                id,
                why: format!("its metadata does not parse: {e}"),
            }),
        }
        Ok(())
    }
}
