//! The SQL both backends share: a filter's conditions, spelled for either one.
//! Everything else a backend says in SQL is in its own `sql.rs`.

use super::query::EventFilter;

impl EventFilter {
    /// The filter's conditions as SQL for `dialect`, joined by `AND` (or `TRUE`),
    /// over `events e` and `deliveries d` as each backend names them, with
    /// placeholders numbered from `first`; and their values in order.
    pub(crate) fn sql(&self, dialect: Dialect, first: usize) -> (String, Vec<Value>) {
        let mut sql = Vec::new();
        let mut values = Vec::new();
        let mut add = |template: &str, value: Value| {
            let n = first + values.len();
            sql.push(template.replace('?', &dialect.placeholder(n)));
            values.push(value);
        };
        if let Some(state) = self.state {
            add("d.state = ?", Value::Text(state.as_str().to_owned()));
        }
        if let Some(source) = &self.source {
            add("e.source = ?", Value::Text(source.clone()));
        }
        if let Some(provider) = &self.provider {
            add("e.provider = ?", Value::Text(provider.clone()));
        }
        if let Some(subject) = &self.subject {
            add("e.subject = ?", Value::Text(subject.clone()));
        }
        if let Some(key) = &self.routing_key {
            add("e.routing_key = ?", Value::Text(key.clone()));
        }
        if let Some(pattern) = self.routing_pattern() {
            add("e.routing_key LIKE ? ESCAPE '\\'", Value::Text(pattern));
        }
        if let Some(since) = self.since_us {
            add("e.received_at >= ?", Value::Int(since));
        }
        if let Some(until) = self.until_us {
            add("e.received_at < ?", Value::Int(until));
        }
        if let Some(q) = &self.q {
            add(
                dialect.body_contains(),
                Value::Bytes(q.clone().into_bytes()),
            );
        }
        let sql = if sql.is_empty() {
            "TRUE".to_owned()
        } else {
            sql.join(" AND ")
        };
        (sql, values)
    }
}

/// The SQL spelling that differs between the backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// `?1`, `instr` on a blob.
    Sqlite,
    /// `$1`, `position` in a `bytea`.
    Postgres,
}

impl Dialect {
    pub(crate) fn placeholder(self, n: usize) -> String {
        match self {
            Self::Sqlite => format!("?{n}"),
            Self::Postgres => format!("${n}"),
        }
    }

    /// The statement that makes a transaction wait for any other that reserves a
    /// provider call (SQLite's `IMMEDIATE` transaction already does).
    pub(crate) fn lock_calls(self) -> Option<&'static str> {
        match self {
            Self::Sqlite => None,
            // "hr_call" in ASCII.
            Self::Postgres => {
                Some("SELECT 1 FROM (SELECT pg_advisory_xact_lock(29399151592696940)) AS locked")
            }
        }
    }

    /// The webhooks' table.
    pub(crate) fn events_table(self) -> &'static str {
        match self {
            Self::Sqlite => "events",
            Self::Postgres => "hr_event",
        }
    }

    /// The subjects' sequence table.
    pub(crate) fn subjects_table(self) -> &'static str {
        match self {
            Self::Sqlite => "subjects",
            Self::Postgres => "hr_subject",
        }
    }

    fn body_contains(self) -> &'static str {
        match self {
            Self::Sqlite => "instr(e.body, ?) > 0",
            Self::Postgres => "position(?::bytea in e.body) > 0",
        }
    }
}

/// A subject with no final status published (stages 4 and 5, see `sequence`):
/// the condition of the partial index the stuck-subject query uses, spelled
/// alike in both, the index's and the query's.
pub(crate) const UNFINISHED: &str = "stages NOT LIKE '%:4%' AND stages NOT LIKE '%:5%'";

// The recovery ledger's statements (`recall.rs`), the same on both backends:
// `?N` placeholders, which the PostgreSQL driver spells `$N`.

/// The heartbeat's row, made by the first beat of an outbox.
pub(crate) const FIRST_BEAT: &str =
    "INSERT INTO hr_heartbeat (id, at_us, prev_us) VALUES (1, ?1, ?1) ON CONFLICT (id) DO NOTHING";

/// A beat at `?1`. Both sides read the row as it was, so `prev_us` keeps the
/// last beat; under concurrent beats PostgreSQL re-reads the newest row, so only
/// the first relay back after an outage sees the gap.
pub(crate) const BEAT: &str = "UPDATE hr_heartbeat SET prev_us = at_us, \
     at_us = CASE WHEN at_us > ?1 THEN at_us ELSE ?1 END WHERE id = 1 RETURNING prev_us";

/// A `down` gap of source `?1` up to `?2`, from one interval (`?4`) before the
/// last beat, when that beat is more than `?3` old.
pub(crate) const DOWN_GAP: &str = "INSERT INTO hr_gap \
     (source, reason, from_us, until_us, state, done_until_us, updated_us) \
     SELECT CAST(?1 AS TEXT), 'down', prev_us - ?4, ?2, 'pending', prev_us - ?4, ?2 \
     FROM hr_heartbeat WHERE id = 1 AND ?2 - prev_us > ?3 \
     ON CONFLICT (source, reason, from_us) DO NOTHING";

/// A refusal window of source `?1` from `?2` to `?3`, or its growth.
pub(crate) const REFUSED_GAP: &str = "INSERT INTO hr_gap \
     (source, reason, from_us, until_us, state, done_until_us, updated_us) \
     VALUES (?1, 'refused', ?2, ?3, 'open', ?2, ?4) \
     ON CONFLICT (source, reason, from_us) DO UPDATE SET \
     until_us = CASE WHEN hr_gap.until_us > excluded.until_us \
                     THEN hr_gap.until_us ELSE excluded.until_us END, \
     updated_us = excluded.updated_us";

/// Closes the open refusal windows of source `?1` that end before an accepted
/// webhook at `?2`.
pub(crate) const CLOSE_GAPS: &str = "UPDATE hr_gap SET state = 'pending', updated_us = ?3 \
     WHERE source = ?1 AND state = 'open' AND until_us < ?2";

/// The gaps of source `?1` (every source when empty) that end at `?2` or later.
pub(crate) const GAPS: &str = "SELECT id, source, reason, from_us, until_us, state, \
     done_until_us, attempts, next_try_us, detail FROM hr_gap \
     WHERE (?1 = '' OR source = ?1) AND until_us >= ?2 ORDER BY from_us, id LIMIT ?3";

/// Where recovery of gap `?1` stands.
pub(crate) const SAVE_GAP: &str = "UPDATE hr_gap SET state = ?2, done_until_us = ?3, \
     attempts = ?4, next_try_us = ?5, detail = ?6, updated_us = ?7 WHERE id = ?1";

/// Records a call (`?1` source, `?2` kind, `?3` subject, `?4` now) if each of
/// `limits` windows (`?5` since, `?6` calls allowed, then `?7`, `?8` …) has room.
pub(crate) fn reserve(limits: usize) -> String {
    let mut conditions = String::from("TRUE");
    for n in 0..limits {
        let since = 5 + 2 * n;
        conditions.push_str(&format!(
            " AND (SELECT count(*) FROM hr_call WHERE source = ?1 AND kind = ?2 \
             AND called_us > ?{since}) < ?{}",
            since + 1
        ));
    }
    format!(
        "INSERT INTO hr_call (source, kind, subject, called_us, outcome, detail) \
         SELECT CAST(?1 AS TEXT), CAST(?2 AS TEXT), CAST(?3 AS TEXT), CAST(?4 AS BIGINT), \
         'sent', '' WHERE {conditions} RETURNING id"
    )
}

/// The call that has to leave a window (since `?3`, `?4` + 1 calls allowed)
/// before another fits in it.
pub(crate) const CALL_IN_THE_WAY: &str = "SELECT called_us FROM hr_call \
     WHERE source = ?1 AND kind = ?2 AND called_us > ?3 \
     ORDER BY called_us DESC LIMIT 1 OFFSET ?4";

/// The outcome of call `?1`.
pub(crate) const FINISH_CALL: &str = "UPDATE hr_call SET outcome = ?2, detail = ?3 WHERE id = ?1";

/// The calls to source `?1` (every source when empty) since `?2`, newest first.
pub(crate) const CALLS: &str = "SELECT id, source, kind, subject, called_us, outcome, detail \
     FROM hr_call WHERE (?1 = '' OR source = ?1) AND called_us >= ?2 \
     ORDER BY called_us DESC, id DESC LIMIT ?3";

/// Takes or keeps lead `?1` for owner `?2` until `?3`, if it is free at `?4`.
pub(crate) const LEAD: &str = "INSERT INTO hr_lead (name, owner, until_us) VALUES (?1, ?2, ?3) \
     ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, until_us = excluded.until_us \
     WHERE hr_lead.owner = excluded.owner OR hr_lead.until_us < ?4 RETURNING owner";

/// Forgets the calls made before `?1`.
pub(crate) const FORGET_CALLS: &str = "DELETE FROM hr_call WHERE called_us < ?1 RETURNING id";

/// Forgets the gaps that ended before `?1` and are not open.
pub(crate) const FORGET_GAPS: &str =
    "DELETE FROM hr_gap WHERE until_us < ?1 AND state <> 'open' RETURNING id";

/// Gives lead `?1` up, if owner `?2` holds it.
pub(crate) const RELEASE_LEAD: &str =
    "UPDATE hr_lead SET until_us = 0 WHERE name = ?1 AND owner = ?2";

/// The subjects of source `?1` last published before `?2` (and at `?5` or
/// later) with no final status, not asked about since `?3`; at most `?4`.
pub(crate) fn stuck(dialect: Dialect) -> String {
    let unfinished = UNFINISHED.replace("stages", "s.stages");
    format!(
        "SELECT s.subject, s.at, \
         (SELECT e.meta FROM {events} e WHERE e.source = s.source \
          AND e.subject = s.subject ORDER BY e.id DESC LIMIT 1) \
         FROM {subjects} s \
         WHERE s.source = ?1 AND s.at < ?2 AND s.at >= ?5 AND s.stages <> '' AND {unfinished} \
         AND NOT EXISTS (SELECT 1 FROM hr_call c WHERE c.source = s.source \
          AND c.subject = s.subject AND c.kind = 'status' AND c.called_us > ?3) \
         ORDER BY s.at LIMIT ?4",
        events = dialect.events_table(),
        subjects = dialect.subjects_table(),
    )
}

/// A filter value, bound by the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    /// Text.
    Text(String),
    /// An integer.
    Int(i64),
    /// Bytes (the body search).
    Bytes(Vec<u8>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::State;

    #[test]
    fn an_empty_filter_matches_everything() {
        let (sql, values) = EventFilter::default().sql(Dialect::Sqlite, 1);
        assert_eq!(sql, "TRUE");
        assert!(values.is_empty());
    }

    #[test]
    fn conditions_are_numbered_from_the_first_placeholder() {
        let filter = EventFilter {
            state: Some(State::Dead),
            subject: Some("ord-1".to_owned()),
            q: Some("8f3".to_owned()),
            ..EventFilter::default()
        };
        let (sql, values) = filter.sql(Dialect::Postgres, 3);
        assert_eq!(
            sql,
            "d.state = $3 AND e.subject = $4 AND position($5::bytea in e.body) > 0"
        );
        assert_eq!(values.len(), 3);
    }
}
