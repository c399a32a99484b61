//! Every SQL statement of the SQLite outbox, and nothing else: the schema of each
//! version, the writer's statements, the reads. The other files of `sqlite/` run
//! them; the schema's meaning is on [`tables`].

/// The tables of schema version 2, under the names given. A new outbox gets them
/// as `events` and `deliveries`; the step to version 2 builds them under other
/// names beside an older outbox's table, then renames them.
///
/// `events` is the webhook as received: written once by the insert, deleted by
/// retention, never updated. `deliveries` is its publishing state, one small row
/// per event with the same id: settles, replays and releases change only that
/// row, so they never rewrite (and log in the WAL) a body. `source` and `subject`
/// are copied into it so the order per subject is decided without reading
/// `events`. Its rows go with their event (`ON DELETE CASCADE`, with
/// `foreign_keys` on in every connection the relay opens).
pub(super) fn tables(events: &str, deliveries: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {events} (
             id              INTEGER PRIMARY KEY AUTOINCREMENT,
             event_id        TEXT    NOT NULL,
             source          TEXT    NOT NULL,
             provider        TEXT    NOT NULL,
             idempotency_key TEXT    NOT NULL,
             subject         TEXT    NOT NULL,
             routing_key     TEXT    NOT NULL,
             meta            TEXT    NOT NULL,
             headers         TEXT    NOT NULL,
             body            BLOB    NOT NULL,
             traceparent     TEXT    NOT NULL,
             received_at     INTEGER NOT NULL,
             UNIQUE (source, idempotency_key)
         );
         CREATE TABLE IF NOT EXISTS {deliveries} (
             id                 INTEGER PRIMARY KEY REFERENCES {events} (id) ON DELETE CASCADE,
             source             TEXT    NOT NULL,
             subject            TEXT    NOT NULL,
             state              TEXT    NOT NULL DEFAULT 'pending'
                                CHECK (state IN ('pending', 'published', 'dead')),
             attempts           INTEGER NOT NULL DEFAULT 0,
             permanent_attempts INTEGER NOT NULL DEFAULT 0,
             next_attempt_at    INTEGER NOT NULL,
             last_error         TEXT,
             published_at       INTEGER,
             released_at        INTEGER
         );"
    )
}

/// The table of the write probe, unchanged since version 0.
pub(super) const HEALTH: &str = "
CREATE TABLE IF NOT EXISTS health (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    probed_at INTEGER NOT NULL
);
";

/// A row that holds back the later rows of its subject: pending, or dead and not
/// released by an operator. The fetch query and its index spell it the same way,
/// so SQLite can use the partial index.
const HOLDS_SUBJECT: &str = "(state = 'pending' OR (state = 'dead' AND released_at IS NULL))";

/// The indexes of version 2.
pub(super) fn indexes() -> String {
    format!(
        "{}
         CREATE INDEX IF NOT EXISTS events_received_at ON events (received_at, id);",
        delivery_indexes()
    )
}

/// The indexes on `deliveries` (of version 2; version 5 makes them again on the
/// rebuilt table).
pub(super) fn delivery_indexes() -> String {
    format!(
        "CREATE INDEX IF NOT EXISTS deliveries_state_id ON deliveries (state, id);
         CREATE INDEX IF NOT EXISTS deliveries_published_at ON deliveries (published_at) WHERE state = 'published';
         CREATE INDEX IF NOT EXISTS deliveries_holding_subject ON deliveries (source, subject, id) WHERE {HOLDS_SUBJECT};"
    )
}

/// Version 3: failed publish attempts (the last `ATTEMPTS_KEPT` per row), for the
/// console, written only when a publish fails, so a healthy relay never writes
/// it (its rows go with their event); and the index of subject timelines and the
/// `subject` filter. Releases of version 2 created both without counting a
/// version, so both are created only if absent.
pub(super) const ATTEMPTS_AND_SUBJECTS: &str = "
CREATE TABLE IF NOT EXISTS attempts (
    id      INTEGER NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    at      INTEGER NOT NULL,
    outcome TEXT    NOT NULL,
    error   TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS attempts_id ON attempts (id, at);
CREATE INDEX IF NOT EXISTS events_subject ON events (subject, source, id);
";

/// Version 4: the per-subject sequence (see `outbox::sequence`). Each delivery
/// gets the number it was first published with (`seq`, NULL until then) and its
/// `stale` flag; `subjects` keeps each subject's last number, its furthest stage
/// per kind and when it last changed (`at`, for forgetting it). The rows
/// published already are numbered 1, 2, 3 … per subject in the order they were
/// published, and each subject goes on from its last.
pub(super) const SEQUENCES: &str = "
ALTER TABLE deliveries ADD COLUMN seq INTEGER;
ALTER TABLE deliveries ADD COLUMN stale INTEGER NOT NULL DEFAULT 0;
CREATE TABLE subjects (
    source  TEXT    NOT NULL,
    subject TEXT    NOT NULL,
    seq     INTEGER NOT NULL,
    stages  TEXT    NOT NULL DEFAULT '',
    at      INTEGER NOT NULL,
    PRIMARY KEY (source, subject)
) WITHOUT ROWID;
UPDATE deliveries SET seq = numbered.n
FROM (SELECT id, row_number() OVER (PARTITION BY source, subject
                                    ORDER BY published_at, id) AS n
      FROM deliveries WHERE state = 'published') AS numbered
WHERE deliveries.id = numbered.id;
INSERT INTO subjects (source, subject, seq, at)
SELECT source, subject, max(seq), max(published_at) FROM deliveries
WHERE seq IS NOT NULL GROUP BY source, subject;
";

/// Version 5: `deliveries` rebuilt with its state check spelled as `=` tests
/// joined by OR. SQLite evaluates `state IN ('pending', 'published', 'dead')`
/// in a CHECK by building a temporary b-tree of the three values every time a
/// row is inserted or its state changes: two per webhook, a tenth of the
/// instructions the relay spent on one. The columns, their order, the indexes
/// and the meaning are version 4's, so a release of version 4 runs on it.
pub(super) const STATE_CHECK_WITHOUT_IN: &str = "
CREATE TABLE deliveries_v5 (
    id                 INTEGER PRIMARY KEY REFERENCES events (id) ON DELETE CASCADE,
    source             TEXT    NOT NULL,
    subject            TEXT    NOT NULL,
    state              TEXT    NOT NULL DEFAULT 'pending'
                       CHECK (state = 'pending' OR state = 'published' OR state = 'dead'),
    attempts           INTEGER NOT NULL DEFAULT 0,
    permanent_attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at    INTEGER NOT NULL,
    last_error         TEXT,
    published_at       INTEGER,
    released_at        INTEGER,
    seq                INTEGER,
    stale              INTEGER NOT NULL DEFAULT 0
);
INSERT INTO deliveries_v5
SELECT id, source, subject, state, attempts, permanent_attempts, next_attempt_at,
       last_error, published_at, released_at, seq, stale
FROM deliveries;
DROP TABLE deliveries;
ALTER TABLE deliveries_v5 RENAME TO deliveries;
";

/// The columns version 1 added to the one table of version 0.
pub(super) const V1_COLUMNS: &str =
    "ALTER TABLE events ADD COLUMN permanent_attempts INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE events ADD COLUMN released_at INTEGER;";

/// Whether table `?1` exists and has column `?2`.
pub(super) const HAS_COLUMN: &str =
    "SELECT EXISTS (SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2)";

/// The schema version.
pub(super) const VERSION: &str = "PRAGMA user_version";

/// Each version the outbox went through, with the oldest version whose releases
/// may still run on it (see `migrate`).
pub(super) const VERSIONS: &str = "
CREATE TABLE IF NOT EXISTS schema_versions (
    version     INTEGER PRIMARY KEY,
    readable_by INTEGER NOT NULL
)";

/// Who reads version `?1`.
pub(super) const READABLE_BY: &str = "SELECT readable_by FROM schema_versions WHERE version = ?1";

/// Records version `?1`, readable by releases of `?2` and later.
pub(super) const RECORD_VERSION: &str =
    "INSERT OR REPLACE INTO schema_versions (version, readable_by) VALUES (?1, ?2)";

/// Records schema version `version`.
pub(super) fn set_version(version: i64) -> String {
    format!("PRAGMA user_version = {version}")
}

/// The highest row id ever handed out.
pub(super) const ID_COUNTER: &str = "SELECT seq FROM sqlite_sequence WHERE name = 'events'";

/// Raises the id counter to at least `?1`; changes nothing when it has no row.
pub(super) const RAISE_ID_COUNTER: &str =
    "UPDATE sqlite_sequence SET seq = max(seq, ?1) WHERE name = 'events'";

/// Sets the id counter to `?1` where it has no row.
pub(super) const SET_ID_COUNTER: &str =
    "INSERT INTO sqlite_sequence (name, seq) VALUES ('events', ?1)";

/// Copies the one table of versions 0 and 1 into the two of version 2 (made as
/// `events_v2` and `deliveries_v2`), drops it, and gives the new ones its name.
pub(super) const COPY_TO_TWO_TABLES: &str = "
INSERT INTO events_v2 (id, event_id, source, provider, idempotency_key, subject,
                       routing_key, meta, headers, body, traceparent, received_at)
SELECT id, event_id, source, provider, idempotency_key, subject,
       routing_key, meta, headers, body, traceparent, received_at
FROM events ORDER BY id;
INSERT INTO deliveries_v2 (id, source, subject, state, attempts, permanent_attempts,
                           next_attempt_at, last_error, published_at, released_at)
SELECT id, source, subject, state, attempts, permanent_attempts,
       next_attempt_at, last_error, published_at, released_at
FROM events ORDER BY id;
DROP TABLE events;
ALTER TABLE events_v2 RENAME TO events;
ALTER TABLE deliveries_v2 RENAME TO deliveries;";

/// Gives the space of a large copy back: the WAL keeps its size once checkpointed.
pub(super) const TRUNCATE_WAL: &str = "PRAGMA wal_checkpoint(TRUNCATE)";

/// Stores a webhook, unless its source already has its idempotency key.
pub(super) const INSERT_EVENT: &str = "
INSERT INTO events (event_id, source, provider, idempotency_key, subject, routing_key, meta,
                    headers, body, traceparent, received_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
ON CONFLICT (source, idempotency_key) DO NOTHING";

/// The publishing state of the event just inserted: pending, due at once (its
/// next attempt at 0, so no clock decides when it is first due).
pub(super) const INSERT_DELIVERY: &str =
    "INSERT INTO deliveries (id, source, subject, next_attempt_at) VALUES (?1, ?2, ?3, 0)";

/// Records one publish outcome of a pending row: `?2` state, `?3` permanent
/// failures to add, `?4` error (NULL when published), `?5` next attempt (NULL:
/// unchanged), `?6` now; for a first publish, `?7` its number and `?8` its
/// `stale` flag (NULL and 0 otherwise; a number once recorded stays).
pub(super) const SETTLE: &str = "
UPDATE deliveries SET state = ?2, attempts = attempts + 1,
                      permanent_attempts = permanent_attempts + ?3, last_error = ?4,
                      next_attempt_at = coalesce(?5, next_attempt_at),
                      published_at = CASE WHEN ?2 = 'published' THEN ?6 ELSE published_at END,
                      stale = CASE WHEN seq IS NULL AND ?7 IS NOT NULL THEN ?8 ELSE stale END,
                      seq = coalesce(seq, ?7)
WHERE id = ?1 AND state = 'pending'";

/// Row `?1`'s subject has handed out number `?2` (never lowered), with stages
/// `?3`, at `?4`.
pub(super) const NUMBER_SUBJECT: &str = "
INSERT INTO subjects (source, subject, seq, stages, at)
SELECT source, subject, ?2, ?3, ?4 FROM deliveries WHERE id = ?1
ON CONFLICT (source, subject) DO UPDATE SET seq = max(seq, excluded.seq),
                                            stages = excluded.stages, at = excluded.at";

/// Releasing dead row `?1` (at `?2`) skips the number it would have been
/// published with, unless it was published before: the subject's next event shows
/// consumers the gap. Runs before [`RELEASE`], whose conditions it repeats.
pub(super) const SKIP_NUMBER: &str = "
INSERT INTO subjects (source, subject, seq, at)
SELECT source, subject, 1, ?2 FROM deliveries
WHERE id = ?1 AND state = 'dead' AND released_at IS NULL AND seq IS NULL
ON CONFLICT (source, subject) DO UPDATE SET seq = seq + 1, at = excluded.at";

/// Forgets at most `?2` subjects unchanged since `?1` that have no row left.
pub(super) const FORGET_SUBJECTS: &str = "
DELETE FROM subjects WHERE (source, subject) IN (
    SELECT s.source, s.subject FROM subjects s
    WHERE s.at < ?1
      AND NOT EXISTS (SELECT 1 FROM events e WHERE e.subject = s.subject AND e.source = s.source)
    LIMIT ?2)";

/// Logs a failed attempt.
pub(super) const LOG_FAILURE: &str =
    "INSERT INTO attempts (id, at, outcome, error) VALUES (?1, ?2, ?3, ?4)";

/// Keeps the newest `?2` failed attempts of row `?1`.
pub(super) const TRIM_FAILURES: &str = "
DELETE FROM attempts WHERE rowid IN (
    SELECT rowid FROM attempts WHERE id = ?1 ORDER BY at DESC LIMIT -1 OFFSET ?2)";

/// The write probe: a real write, so it fails where inserts would.
pub(super) const PROBE: &str = "
INSERT INTO health (id, probed_at) VALUES (1, ?1)
ON CONFLICT (id) DO UPDATE SET probed_at = excluded.probed_at";

/// Puts row `?2` back to pending, due at `?1`. Attempts restart from zero so the
/// retry schedule and the dead-letter bound start afresh; `last_error` is kept for
/// the record.
pub(super) const REPLAY: &str = "
UPDATE deliveries SET state = 'pending', attempts = 0, permanent_attempts = 0,
                      next_attempt_at = ?1, published_at = NULL, released_at = NULL
WHERE id = ?2 AND state != 'pending'";

/// Releases dead row `?1` at `?2`.
pub(super) const RELEASE: &str = "
UPDATE deliveries SET released_at = ?2
WHERE id = ?1 AND state = 'dead' AND released_at IS NULL";

/// Deletes at most `?2` published rows confirmed before `?1`; their `deliveries`
/// rows go with them (ON DELETE CASCADE), and the count is of events.
pub(super) const PURGE: &str = "
DELETE FROM events WHERE id IN (
    SELECT id FROM deliveries WHERE state = 'published' AND published_at < ?1
    ORDER BY id LIMIT ?2)";

/// Pending rows due by `?1` (or whose next attempt is more than `?4` ahead of it:
/// the clock stepped back since), oldest first, at most `?2`, leaving out the ids
/// in the JSON array `?3` (the rows in flight). A row waits while an older row of
/// its subject holds it. The rows are chosen in `deliveries` alone; CROSS JOIN keeps
/// SQLite from walking `events` instead, so only the bodies of the rows returned
/// are read. Columns as `Due::read` takes them, with the subject's sequence.
///
/// `LIMIT +?2`, not `LIMIT ?2`: SQLite (the bundled 3.54) re-prepares a statement
/// whose LIMIT is a bare parameter every time a new value is bound to it, and the
/// publisher asks for as many rows as its window has room for, a different number
/// almost every time: the unary plus keeps the prepared statement (a re-prepare of
/// this query cost about as much as storing ten webhooks).
pub(super) fn fetch_due() -> String {
    format!(
        "SELECT d.id, e.meta, e.body, e.received_at, e.traceparent, d.attempts,
                d.permanent_attempts, d.seq, d.stale, s.seq, s.stages
         FROM deliveries d CROSS JOIN events e ON e.id = d.id
              LEFT JOIN subjects s ON s.source = d.source AND s.subject = d.subject
         WHERE d.state = 'pending'
           AND (d.next_attempt_at <= ?1 OR d.next_attempt_at > ?1 + ?4)
           AND d.id NOT IN (SELECT value FROM json_each(?3))
           AND NOT EXISTS (SELECT 1 FROM deliveries o
                           WHERE {HOLDS_SUBJECT} AND o.source = d.source
                             AND o.subject = d.subject AND o.id < d.id)
         ORDER BY d.id
         LIMIT +?2"
    )
}

/// Rows in state `?1`.
pub(super) const COUNT_STATE: &str = "SELECT COUNT(*) FROM deliveries WHERE state = ?1";

/// The receive time of the oldest pending row.
pub(super) const OLDEST_PENDING: &str = "
SELECT e.received_at FROM deliveries d CROSS JOIN events e ON e.id = d.id
WHERE d.state = 'pending' ORDER BY d.id LIMIT 1";

/// Subjects held by a dead row nobody released.
pub(super) const HELD_SUBJECTS: &str = "
SELECT COUNT(*) FROM (SELECT DISTINCT source, subject FROM deliveries
                      WHERE state = 'dead' AND released_at IS NULL)";

/// The lowest and highest ids. Two subqueries: SQLite reads min() or max() off the
/// index only when it is alone in its query; together they scan the table.
pub(super) const ID_RANGE: &str =
    "SELECT (SELECT min(id) FROM deliveries), (SELECT max(id) FROM deliveries)";

/// The columns of a row, from `events e` and `deliveries d`, in the order
/// `Row::read` takes them.
const ROW_COLUMNS: &str =
    "d.id, e.event_id, d.source, e.provider, e.routing_key, d.state, d.attempts, d.last_error,
     e.received_at, d.next_attempt_at, d.published_at, e.idempotency_key, d.permanent_attempts,
     d.released_at, e.subject, e.meta, d.seq, d.stale";

/// Rows with ids between `?1` and `?2` matching `conditions` (placeholders from
/// `?4`), in id order (`oldest_first`, else newest first), at most `?3`. CROSS
/// JOIN fixes the order SQLite walks the tables in: a subject is found through
/// `events_subject`, so `events` goes first; every other filter walks ids (or the
/// state index) in `deliveries`.
pub(super) fn find(conditions: &str, by_subject: bool, oldest_first: bool) -> String {
    let tables = if by_subject {
        "events e CROSS JOIN deliveries d ON d.id = e.id"
    } else {
        "deliveries d CROSS JOIN events e ON e.id = d.id"
    };
    let order = if oldest_first { "ASC" } else { "DESC" };
    format!(
        "SELECT {ROW_COLUMNS} FROM {tables}
         WHERE d.id > ?1 AND d.id < ?2 AND e.id > ?1 AND e.id < ?2 AND {conditions}
         ORDER BY d.id {order} LIMIT ?3"
    )
}

/// Row `?1` with its headers, body and traceparent, in the order `FullRow::read`
/// takes them.
pub(super) fn show() -> String {
    format!(
        "SELECT {ROW_COLUMNS}, e.headers, e.body, e.traceparent
         FROM deliveries d CROSS JOIN events e ON e.id = d.id WHERE d.id = ?1"
    )
}

/// The failed attempts of row `?1`, oldest first.
pub(super) const FAILURES: &str =
    "SELECT at, outcome, error FROM attempts WHERE id = ?1 ORDER BY at, rowid";

/// A seeded row's publishing state (tests and the bench): `?1` id, `?2` source,
/// `?3` subject, `?4` state, `?5` attempts, `?6` permanent attempts, `?7` next
/// attempt, `?8` last error, `?9` published at.
#[cfg(feature = "testing")]
pub(super) const SEED_DELIVERY: &str = "
INSERT INTO deliveries (id, source, subject, state, attempts, permanent_attempts,
                        next_attempt_at, last_error, published_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";

/// Takes the write lock, as another process would.
#[cfg(feature = "testing")]
pub(super) const LOCK_FOR_WRITING: &str = "BEGIN IMMEDIATE";

/// Gives it back.
#[cfg(feature = "testing")]
pub(super) const ROLLBACK: &str = "ROLLBACK";

/// Row `?1`'s metadata becomes `?2` (a newer release's, in tests).
#[cfg(feature = "testing")]
pub(super) const REWRITE_META: &str = "UPDATE events SET meta = ?2 WHERE id = ?1";

/// Takes version 4 and the later ones back out, leaving the outbox as the
/// release before the sequence left it (tests of its migration).
#[cfg(feature = "testing")]
pub(super) const UNDO_SEQUENCES: &str = "
ALTER TABLE deliveries DROP COLUMN seq;
ALTER TABLE deliveries DROP COLUMN stale;
DROP TABLE subjects;
DROP TABLE hr_heartbeat;
DROP TABLE hr_gap;
DROP TABLE hr_call;
DROP TABLE hr_lead;
DELETE FROM schema_versions WHERE version >= 4;
PRAGMA user_version = 3;";

/// The recovery ledger (`outbox/recall.rs`): the heartbeat, the gaps, the calls
/// made to providers and the lead of recovery, with the index of unfinished
/// subjects its stuck-subject query reads.
pub(super) fn ledger() -> String {
    format!(
        "CREATE TABLE hr_heartbeat (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    at_us   INTEGER NOT NULL,
    prev_us INTEGER NOT NULL
);
CREATE TABLE hr_gap (
    id            INTEGER PRIMARY KEY,
    source        TEXT NOT NULL,
    reason        TEXT NOT NULL,
    from_us       INTEGER NOT NULL,
    until_us      INTEGER NOT NULL,
    state         TEXT NOT NULL,
    done_until_us INTEGER NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    next_try_us   INTEGER NOT NULL DEFAULT 0,
    detail        TEXT NOT NULL DEFAULT '',
    updated_us    INTEGER NOT NULL,
    UNIQUE (source, reason, from_us)
);
CREATE INDEX hr_gap_until ON hr_gap (until_us);
CREATE TABLE hr_call (
    id        INTEGER PRIMARY KEY,
    source    TEXT NOT NULL,
    kind      TEXT NOT NULL,
    subject   TEXT NOT NULL,
    called_us INTEGER NOT NULL,
    outcome   TEXT NOT NULL,
    detail    TEXT NOT NULL
);
CREATE INDEX hr_call_limit ON hr_call (source, kind, called_us);
CREATE INDEX hr_call_subject ON hr_call (source, subject, called_us);
CREATE TABLE hr_lead (
    name     TEXT PRIMARY KEY,
    owner    TEXT NOT NULL,
    until_us INTEGER NOT NULL
);
CREATE INDEX subjects_unfinished ON subjects (source, at) WHERE {unfinished};",
        unfinished = crate::outbox::sql::UNFINISHED
    )
}
