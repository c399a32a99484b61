//! Every SQL statement of the PostgreSQL outbox, and nothing else: the schema
//! steps, the writers', publisher's, leases' and maintenance's statements, and the
//! reads. The other files of `postgres/` say why each runs when it does.

/// The database's clock, in Unix microseconds: what decides when a row is due, so
/// that replicas whose own clocks disagree never delay each other's rows.
const DB_NOW_US: &str = "(extract(epoch FROM now()) * 1000000)::int8";

/// A row that holds back the later rows of its subject: pending, or dead and not
/// released. The fetch query and its partial index spell it alike.
const HOLDS_SUBJECT: &str = "(state = 'pending' OR (state = 'dead' AND released_at IS NULL))";

/// Step 1: events, deliveries, partitions (`partitions` of them), members.
///
/// The logical schema is the SQLite backend's: the raw webhook in an insert-only
/// table (`hr_event`), its publishing state in a small one (`hr_delivery`), so a
/// settle rewrites a few dozen bytes and never a body.
pub(super) fn tables(partitions: i16) -> String {
    format!(
        "CREATE TABLE hr_event (
             id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
             event_id        text     NOT NULL,
             source          text     NOT NULL,
             provider        text     NOT NULL,
             idempotency_key text     NOT NULL,
             subject         text     NOT NULL,
             part            smallint NOT NULL,
             routing_key     text     NOT NULL,
             meta            text     NOT NULL,
             headers         text     NOT NULL,
             body            bytea    NOT NULL,
             traceparent     text     NOT NULL,
             received_at     bigint   NOT NULL,
             UNIQUE (source, idempotency_key)
         );
         CREATE INDEX hr_event_received_at ON hr_event (received_at, id);
         CREATE TABLE hr_delivery (
             id                 bigint   PRIMARY KEY REFERENCES hr_event (id) ON DELETE CASCADE,
             part               smallint NOT NULL,
             source             text     NOT NULL,
             subject            text     NOT NULL,
             txid               xid8     NOT NULL DEFAULT pg_current_xact_id(),
             state              text     NOT NULL DEFAULT 'pending'
                                CHECK (state IN ('pending', 'published', 'dead')),
             attempts           integer  NOT NULL DEFAULT 0,
             permanent_attempts integer  NOT NULL DEFAULT 0,
             next_attempt_at    bigint   NOT NULL,
             last_error         text,
             published_at       bigint,
             released_at        bigint
         ) WITH (fillfactor = 80, autovacuum_vacuum_scale_factor = 0,
                 autovacuum_vacuum_threshold = 1000, autovacuum_vacuum_cost_delay = 0);
         CREATE INDEX hr_delivery_due ON hr_delivery (txid, id) WHERE state = 'pending';
         CREATE INDEX hr_delivery_holding ON hr_delivery (source, subject, txid, id)
             WHERE {HOLDS_SUBJECT};
         CREATE INDEX hr_delivery_state ON hr_delivery (state, id);
         CREATE INDEX hr_delivery_published_at ON hr_delivery (published_at)
             WHERE state = 'published';
         CREATE TABLE hr_partition (
             p           smallint    PRIMARY KEY,
             owner       text,
             epoch       bigint      NOT NULL DEFAULT 0,
             lease_until timestamptz NOT NULL DEFAULT '-infinity'
         );
         INSERT INTO hr_partition (p) SELECT generate_series(0, {last});
         CREATE TABLE hr_member (
             replica      text        PRIMARY KEY,
             heartbeat_at timestamptz NOT NULL,
             probed_at    timestamptz
         );",
        last = partitions - 1
    )
}

/// Step 2: failed attempts (`hr_attempt`, for the console) and the subject index
/// (timelines and the `subject` filter).
pub(super) const ATTEMPTS_AND_SUBJECTS: &str = "
CREATE TABLE hr_attempt (
    id      bigint NOT NULL REFERENCES hr_event (id) ON DELETE CASCADE,
    at      bigint NOT NULL,
    outcome text   NOT NULL,
    error   text   NOT NULL
);
CREATE INDEX hr_attempt_id ON hr_attempt (id, at);
CREATE INDEX hr_event_subject ON hr_event (subject, source, id);";

/// Step 3: the per-subject sequence (see `outbox::sequence`). Each delivery
/// gets the number it was first published with (`seq`, NULL until then) and its
/// `stale` flag; `hr_subject` keeps each subject's last number, its furthest
/// stage per kind and when it last changed (`at`, for forgetting it). The rows
/// published already are numbered 1, 2, 3 … per subject in the order they were
/// published, and each subject goes on from its last.
pub(super) const SEQUENCES: &str = "
ALTER TABLE hr_delivery ADD COLUMN seq bigint,
                        ADD COLUMN stale smallint NOT NULL DEFAULT 0;
CREATE TABLE hr_subject (
    source  text   NOT NULL,
    subject text   NOT NULL,
    seq     bigint NOT NULL,
    stages  text   NOT NULL DEFAULT '',
    at      bigint NOT NULL,
    PRIMARY KEY (source, subject)
);
UPDATE hr_delivery d SET seq = numbered.n
FROM (SELECT id, row_number() OVER (PARTITION BY source, subject
                                    ORDER BY published_at, id) AS n
      FROM hr_delivery WHERE state = 'published') AS numbered
WHERE d.id = numbered.id;
INSERT INTO hr_subject (source, subject, seq, at)
SELECT source, subject, max(seq), max(published_at) FROM hr_delivery
WHERE seq IS NOT NULL GROUP BY source, subject;";

/// Whether the outbox's tables exist.
pub(super) const EXISTS: &str = "SELECT to_regclass('hr_schema') IS NOT NULL";

/// The versions' own table: each version the outbox went through, with the
/// oldest version whose releases may still run on it (see `migrate`; releases
/// before that column read NULL as the version itself).
pub(super) const VERSIONS: &str = "
CREATE TABLE IF NOT EXISTS hr_schema (version integer NOT NULL);
ALTER TABLE hr_schema ADD COLUMN IF NOT EXISTS readable_by integer";

/// The newest version and who reads it; no row for an empty outbox.
pub(super) const VERSION: &str = "
SELECT version::int8, coalesce(readable_by, version)::int8 FROM hr_schema
ORDER BY version DESC LIMIT 1";

/// What a commit of this session waits for, and the synchronous standbys
/// streaming now (counted only where the role may see `sync_state`: otherwise
/// the column is null for every row and the count is null too).
pub(super) const REPLICATION: &str = "
    SELECT current_setting('synchronous_standby_names'),
           current_setting('synchronous_commit'),
           CASE WHEN bool_and(sync_state IS NULL) THEN NULL
                ELSE count(*) FILTER (WHERE sync_state IN ('sync', 'quorum')) END
    FROM pg_stat_replication";

/// The newest version recorded, read by `check-config --connect` without
/// migrating: it names only the column every release's `hr_schema` has.
pub(super) const SCHEMA_VERSION: &str = "SELECT coalesce(max(version), 0)::int8 FROM hr_schema";

/// Records version `$1`, readable by releases of `$2` and later.
pub(super) const SET_VERSION: &str =
    "INSERT INTO hr_schema (version, readable_by) VALUES ($1::int8::int4, $2::int8::int4)";

/// Waits for, takes and gives back an advisory lock of the session (`$1`).
pub(super) const LOCK: &str = "SELECT pg_advisory_lock($1)";
pub(super) const TRY_LOCK: &str = "SELECT pg_try_advisory_lock($1)";
pub(super) const UNLOCK: &str = "SELECT pg_advisory_unlock($1)";

/// Takes advisory lock `$1` for the transaction, if free.
pub(super) const TRY_LOCK_FOR_TRANSACTION: &str = "SELECT pg_try_advisory_xact_lock($1)";

/// Commits without waiting for their WAL to be synced (seeding test data).
#[cfg(feature = "testing")]
pub(super) const NO_SYNC_WAIT: &str = "SET synchronous_commit = off";

/// Lifts and restores the session's statement timeout, for migrations and
/// vacuums that may run long.
pub(super) const NO_STATEMENT_TIMEOUT: &str = "SET statement_timeout = 0";
pub(super) const RESET_STATEMENT_TIMEOUT: &str = "RESET statement_timeout";

/// Stores a batch: one array per column (`$1` … `$12`, in the order of the
/// `hr_event` columns from `event_id`), inserted in array order; a key already
/// stored is skipped. Each row is due at once (its next attempt at 0, so no clock
/// decides when it is first due). Returns the source and key of each row stored.
pub(super) const INSERT_BATCH: &str = "
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                         $6::int2[], $7::text[], $8::text[], $9::text[], $10::bytea[],
                         $11::text[], $12::int8[])
      WITH ORDINALITY AS t(event_id, source, provider, idempotency_key, subject, part,
                           routing_key, meta, headers, body, traceparent, received_at, n)
), stored AS (
    INSERT INTO hr_event (event_id, source, provider, idempotency_key, subject, part,
                          routing_key, meta, headers, body, traceparent, received_at)
    SELECT event_id, source, provider, idempotency_key, subject, part,
           routing_key, meta, headers, body, traceparent, received_at
    FROM input ORDER BY n
    ON CONFLICT (source, idempotency_key) DO NOTHING
    RETURNING id, source, idempotency_key, subject, part, received_at
), queued AS (
    INSERT INTO hr_delivery (id, part, source, subject, next_attempt_at)
    SELECT id, part, source, subject, 0 FROM stored
)
SELECT source, idempotency_key FROM stored";

/// Tells the replicas listening on `$1` that webhooks were committed.
pub(super) const ANNOUNCE: &str = "SELECT pg_notify($1, '')";

/// Listens on `channel`.
pub(super) fn listen(channel: &str) -> String {
    format!("LISTEN {channel}")
}

/// The fetch's plan, pinned for its transaction: see `fenced.rs`.
pub(super) const PIN_FETCH_PLAN: &str = "
SET LOCAL enable_sort = off; SET LOCAL enable_bitmapscan = off;
SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off";

/// Pending rows of the partitions `$1`, due by the database's clock, below the
/// fence, not in `$2` (in flight), at most `$3`, oldest transaction first; a row
/// waits while an older row of its subject holds it. Columns as `Due::read` takes
/// them (with the subject's sequence), then the partition.
pub(super) fn fetch_due() -> String {
    format!(
        "SELECT d.id, e.meta, e.body, e.received_at, e.traceparent,
                d.attempts, d.permanent_attempts, d.seq, d.stale, s.seq, s.stages, d.part
         FROM hr_delivery d JOIN hr_event e ON e.id = d.id
              LEFT JOIN hr_subject s ON s.source = d.source AND s.subject = d.subject
         WHERE d.state = 'pending' AND d.part = ANY($1) AND d.next_attempt_at <= {DB_NOW_US}
           AND d.txid < pg_snapshot_xmin(pg_current_snapshot())
           AND d.id NOT IN (SELECT unnest($2::int8[]))
           AND NOT EXISTS (SELECT 1 FROM hr_delivery o
                           WHERE {HOLDS_SUBJECT} AND o.source = d.source
                             AND o.subject = d.subject
                             AND (o.txid, o.id) < (d.txid, d.id)
                           OFFSET 0)
         ORDER BY d.txid, d.id
         LIMIT $3"
    )
}

/// Records a batch of publish outcomes (`$1` ids, `$2` partitions, `$3` epochs,
/// `$4` states, `$5` errors, `$6` microseconds until the next attempt, added to
/// the database's clock (NULL: unchanged), `$7` permanent failures to add),
/// fenced: only rows of partitions replica `$8` still holds under the epoch they
/// were fetched with, while the lease has not passed. `$9` is now; failures go to
/// the attempts log, which keeps the newest `$10` per row. A first publish
/// records its number (`$11`, NULL otherwise; a number once recorded stays) and
/// `stale` flag (`$12`) with the row, and raises its subject's last number
/// (never lowers it) with its stages (`$13`). Returns each id with
/// whether its partition was still held under its epoch (if not, the outcome was
/// refused); a held row not recorded had been settled already (a settle that
/// committed after its caller gave up on it, retried).
pub(super) fn settle() -> String {
    format!(
        "
WITH s AS (
    SELECT * FROM unnest($1::int8[], $2::int2[], $3::int8[], $4::text[],
                         $5::text[], $6::int8[], $7::int4[], $11::int8[], $12::int2[],
                         $13::text[])
      AS s(id, part, epoch, state, error, next_at, permanent, seq, stale, stages)
), held AS (
    SELECT p.p, p.epoch FROM hr_partition p
    WHERE p.p = ANY($2) AND p.owner = $8 AND p.lease_until > now()
), settled AS (
UPDATE hr_delivery d SET
    state = s.state,
    attempts = d.attempts + 1,
    permanent_attempts = d.permanent_attempts + s.permanent,
    last_error = s.error,
    next_attempt_at = coalesce({DB_NOW_US} + s.next_at,
                               d.next_attempt_at),
    published_at = CASE WHEN s.state = 'published' THEN $9 ELSE d.published_at END,
    stale = CASE WHEN d.seq IS NULL AND s.seq IS NOT NULL THEN s.stale ELSE d.stale END,
    seq = coalesce(d.seq, s.seq)
FROM s JOIN held ON held.p = s.part AND held.epoch = s.epoch
WHERE d.id = s.id AND d.state = 'pending'
RETURNING d.id, d.source, d.subject, s.state, s.error, s.seq, s.stages
), numbered AS (
    INSERT INTO hr_subject (source, subject, seq, stages, at)
    SELECT DISTINCT ON (source, subject) source, subject, seq, stages, $9 FROM settled
    WHERE state = 'published' AND seq IS NOT NULL
    ORDER BY source, subject, seq DESC
    ON CONFLICT (source, subject) DO UPDATE
    SET seq = greatest(hr_subject.seq, excluded.seq), stages = excluded.stages,
        at = excluded.at
), failed AS (
    SELECT id, state, error FROM settled WHERE state <> 'published'
), logged AS (
    INSERT INTO hr_attempt (id, at, outcome, error)
    SELECT id, $9, CASE WHEN state = 'dead' THEN 'dead' ELSE 'retry' END,
           coalesce(error, '')
    FROM failed
), trimmed AS (
    -- Sees the log before this statement's insert: keeping
    -- one fewer leaves the newest $10.
    DELETE FROM hr_attempt WHERE ctid IN (
        SELECT ctid FROM (
            SELECT ctid, row_number() OVER (PARTITION BY id ORDER BY at DESC) AS n
            FROM hr_attempt WHERE id IN (SELECT id FROM failed)
        ) old WHERE old.n >= $10)
)
SELECT s.id, h.p IS NOT NULL FROM s LEFT JOIN held h ON h.p = s.part AND h.epoch = s.epoch"
    )
}

/// Counts: pending, dead, the oldest pending receive time, held subjects, rows
/// behind the fence and the oldest of them.
pub(super) const STATS: &str = "
SELECT
  (SELECT count(*) FROM hr_delivery WHERE state = 'pending'),
  (SELECT count(*) FROM hr_delivery WHERE state = 'dead'),
  (SELECT e.received_at FROM hr_delivery d JOIN hr_event e ON e.id = d.id
   WHERE d.state = 'pending' ORDER BY d.txid, d.id LIMIT 1),
  (SELECT count(*) FROM (SELECT DISTINCT source, subject FROM hr_delivery
                         WHERE state = 'dead' AND released_at IS NULL) h),
  (SELECT count(*) FROM hr_delivery WHERE state = 'pending'
     AND txid >= pg_snapshot_xmin(pg_current_snapshot())),
  (SELECT min(e.received_at) FROM hr_delivery d JOIN hr_event e ON e.id = d.id
   WHERE d.state = 'pending'
     AND d.txid >= pg_snapshot_xmin(pg_current_snapshot()))";

/// The write probe of replica `$1`: a real write, so a standby (read-only) or a
/// full disk fails it. The row it may create is no heartbeat.
pub(super) const PROBE: &str = "
INSERT INTO hr_member (replica, heartbeat_at, probed_at)
VALUES ($1, '-infinity', now())
ON CONFLICT (replica) DO UPDATE SET probed_at = now()";

/// Published rows and the size of the tables.
pub(super) const INVENTORY: &str = "
SELECT (SELECT count(*) FROM hr_delivery WHERE state = 'published'),
       pg_total_relation_size('hr_event') + pg_total_relation_size('hr_delivery')";

/// The lowest and highest ids.
pub(super) const ID_RANGE: &str = "SELECT min(id), max(id) FROM hr_delivery";

/// The columns of a row, from `hr_event e` and `hr_delivery d`, in the order
/// `Row::read` takes them.
const ROW_COLUMNS: &str =
    "d.id, e.event_id, e.source, e.provider, e.routing_key, d.state, d.attempts,
     d.last_error, e.received_at, d.next_attempt_at, d.published_at, e.idempotency_key,
     d.permanent_attempts, d.released_at, e.subject, e.meta, d.seq, d.stale";

/// Rows with ids between `$1` and `$2` matching `conditions` (placeholders from
/// `$4`), in id order (`oldest_first`, else newest first), at most `$3`.
pub(super) fn find(conditions: &str, oldest_first: bool) -> String {
    let order = if oldest_first { "ASC" } else { "DESC" };
    format!(
        "SELECT {ROW_COLUMNS} FROM hr_delivery d JOIN hr_event e ON e.id = d.id
         WHERE d.id > $1 AND d.id < $2 AND e.id > $1 AND e.id < $2
           AND {conditions}
         ORDER BY d.id {order} LIMIT $3"
    )
}

/// Row `$1` with its headers, body and traceparent, in the order `FullRow::read`
/// takes them.
pub(super) fn show() -> String {
    format!(
        "SELECT {ROW_COLUMNS}, e.headers, e.body, e.traceparent
         FROM hr_delivery d JOIN hr_event e ON e.id = d.id WHERE d.id = $1"
    )
}

/// The failed attempts of row `$1`, oldest first.
pub(super) const FAILURES: &str =
    "SELECT at, outcome, error FROM hr_attempt WHERE id = $1 ORDER BY at";

/// Puts the rows `$2` back to pending, due at `$1`. Attempts restart from zero so
/// the retry schedule and the dead-letter bound start afresh; `last_error` is kept
/// for the record.
pub(super) const REPLAY: &str = "
UPDATE hr_delivery SET state = 'pending', attempts = 0,
    permanent_attempts = 0, next_attempt_at = $1,
    published_at = NULL, released_at = NULL
WHERE id = ANY($2) AND state <> 'pending'";

/// Releases the dead rows `$1` at `$2`. Each skips the number it would have
/// been published with, unless it was published before: the subject's next event
/// shows consumers the gap.
pub(super) const RELEASE: &str = "
WITH released AS (
    UPDATE hr_delivery SET released_at = $2
    WHERE id = ANY($1) AND state = 'dead' AND released_at IS NULL
    RETURNING source, subject, seq
), skipped AS (
    INSERT INTO hr_subject (source, subject, seq, at)
    SELECT source, subject, count(*), $2 FROM released WHERE seq IS NULL
    GROUP BY source, subject
    ON CONFLICT (source, subject) DO UPDATE
    SET seq = hr_subject.seq + excluded.seq, at = excluded.at
)
SELECT count(*) FROM released";

/// Deletes at most `$2` published rows confirmed before `$1`; deleting the event
/// deletes its delivery row (ON DELETE CASCADE).
pub(super) const PURGE: &str = "
DELETE FROM hr_event WHERE id IN (
    SELECT id FROM hr_delivery WHERE state = 'published' AND published_at < $1
    ORDER BY published_at LIMIT $2)";

/// Forgets at most `$2` subjects unchanged since `$1` that have no row left.
pub(super) const FORGET_SUBJECTS: &str = "
DELETE FROM hr_subject WHERE (source, subject) IN (
    SELECT s.source, s.subject FROM hr_subject s
    WHERE s.at < $1
      AND NOT EXISTS (SELECT 1 FROM hr_event e WHERE e.subject = s.subject AND e.source = s.source)
    LIMIT $2)";

/// Replica `$1` is alive.
pub(super) const HEARTBEAT: &str = "
INSERT INTO hr_member (replica, heartbeat_at) VALUES ($1, now())
ON CONFLICT (replica) DO UPDATE SET heartbeat_at = now()";

/// Replica `$1` leaves the member list.
pub(super) const LEAVE: &str = "DELETE FROM hr_member WHERE replica = $1";

/// Forgets the members whose heartbeat and write probe are both older than `$1`
/// seconds.
pub(super) const FORGET_MEMBERS: &str = "
DELETE FROM hr_member
WHERE greatest(heartbeat_at, coalesce(probed_at, '-infinity')) < now() - make_interval(secs => $1)";

/// Replicas that heartbeat within the last `$1` seconds.
pub(super) const LIVE_MEMBERS: &str =
    "SELECT count(*) FROM hr_member WHERE heartbeat_at > now() - make_interval(secs => $1)";

/// Renews every lease of replica `$1` for `$2` seconds; returns what it holds.
pub(super) const RENEW: &str = "
UPDATE hr_partition SET lease_until = now() + make_interval(secs => $2)
WHERE p IN (SELECT p FROM hr_partition WHERE owner = $1 ORDER BY p FOR UPDATE)
RETURNING p, epoch";

/// Gives the partitions `$2` of replica `$1` back.
pub(super) const GIVE_BACK: &str = "
UPDATE hr_partition SET owner = NULL, lease_until = now()
WHERE p IN (SELECT p FROM hr_partition WHERE owner = $1 AND p = ANY($2)
            ORDER BY p FOR UPDATE)";

/// Gives every partition of replica `$1` back.
pub(super) const GIVE_ALL_BACK: &str = "
UPDATE hr_partition SET owner = NULL, lease_until = now()
WHERE p IN (SELECT p FROM hr_partition WHERE owner = $1 ORDER BY p FOR UPDATE)";

/// Leases to replica `$1`, for `$2` seconds, at most `$4` partitions that are free
/// (`$3` = 0) or whose lease passed `$3` seconds ago, bumping their epochs.
pub(super) const TAKE: &str = "
UPDATE hr_partition SET owner = $1, epoch = epoch + 1,
                        lease_until = now() + make_interval(secs => $2)
WHERE p IN (SELECT p FROM hr_partition
            WHERE ($3::float8 = 0 AND owner IS NULL)
               OR lease_until < now() - make_interval(secs => $3)
            ORDER BY p LIMIT $4 FOR UPDATE SKIP LOCKED)
RETURNING p, epoch";

/// Whether autovacuum is off on the cluster.
pub(super) const AUTOVACUUM_OFF: &str = "SELECT current_setting('autovacuum') = 'off'";

/// Of the tables `$1`, those past `$2` dead rows (and whether they are), or
/// `$4` if it changed by `$3` rows and a fifth since its last analyze.
pub(super) const DUE_FOR_MAINTENANCE: &str = "
SELECT relname::text, n_dead_tup > $2 FROM pg_stat_user_tables
WHERE relname = ANY($1) AND schemaname = current_schema()
  AND (n_dead_tup > $2
       OR (relname = $4 AND n_mod_since_analyze > $3
           AND n_mod_since_analyze * 5 > n_live_tup))";

/// Vacuums (with `vacuum`) or analyzes `table`, one of this module's own names.
pub(super) fn maintain(table: &str, vacuum: bool) -> String {
    let command = if vacuum {
        "VACUUM (ANALYZE)"
    } else {
        "ANALYZE"
    };
    format!("{command} {table}")
}

/// Stores seeded rows (tests and the bench): the arrays of [`INSERT_BATCH`] (`$1`
/// … `$12`) and each row's state (`$13`), attempts (`$14`), permanent attempts
/// (`$15`), last error (`$16`) and publish time (`$17`), in array order, so their
/// ids follow it. A key already stored is skipped.
#[cfg(feature = "testing")]
pub(super) const SEED_BATCH: &str = "
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                         $6::int2[], $7::text[], $8::text[], $9::text[], $10::bytea[],
                         $11::text[], $12::int8[], $13::text[], $14::int4[], $15::int4[],
                         $16::text[], $17::int8[])
      WITH ORDINALITY AS t(event_id, source, provider, idempotency_key, subject, part,
                           routing_key, meta, headers, body, traceparent, received_at,
                           state, attempts, permanent_attempts, last_error, published_at, n)
), stored AS (
    INSERT INTO hr_event (event_id, source, provider, idempotency_key, subject, part,
                          routing_key, meta, headers, body, traceparent, received_at)
    SELECT event_id, source, provider, idempotency_key, subject, part,
           routing_key, meta, headers, body, traceparent, received_at
    FROM input ORDER BY n
    ON CONFLICT (source, idempotency_key) DO NOTHING
    RETURNING id, source, idempotency_key
)
INSERT INTO hr_delivery (id, part, source, subject, state, attempts, permanent_attempts,
                         next_attempt_at, last_error, published_at)
SELECT s.id, i.part, i.source, i.subject, i.state, i.attempts, i.permanent_attempts,
       i.received_at, i.last_error, i.published_at
FROM stored s JOIN input i USING (source, idempotency_key)";

/// Row `$1`'s metadata becomes `$2` (a newer release's, in tests).
#[cfg(feature = "testing")]
pub(super) const REWRITE_META: &str = "UPDATE hr_event SET meta = $2 WHERE id = $1";

/// Locks the outbox's tables against every other session until the transaction
/// ends (tests).
#[cfg(feature = "testing")]
pub(super) const LOCK_TABLES: &str =
    "BEGIN; LOCK TABLE hr_event, hr_delivery IN ACCESS EXCLUSIVE MODE";

/// Takes step 3 and the later ones back out, leaving the outbox as the release
/// before the sequence left it (tests of its migration).
#[cfg(feature = "testing")]
pub(super) const UNDO_SEQUENCES: &str = "
ALTER TABLE hr_delivery DROP COLUMN seq, DROP COLUMN stale;
DROP TABLE hr_subject;
DROP TABLE hr_heartbeat, hr_gap, hr_call, hr_lead;
DELETE FROM hr_schema WHERE version >= 3;";

/// The recovery ledger (`outbox/recall.rs`): the heartbeat, the gaps, the calls
/// made to providers and the lead of recovery, with the index of unfinished
/// subjects its stuck-subject query reads.
pub(super) fn ledger() -> String {
    format!(
        "CREATE TABLE hr_heartbeat (
    id      bigint PRIMARY KEY CHECK (id = 1),
    at_us   bigint NOT NULL,
    prev_us bigint NOT NULL
);
CREATE TABLE hr_gap (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source        text NOT NULL,
    reason        text NOT NULL,
    from_us       bigint NOT NULL,
    until_us      bigint NOT NULL,
    state         text NOT NULL,
    done_until_us bigint NOT NULL,
    attempts      bigint NOT NULL DEFAULT 0,
    next_try_us   bigint NOT NULL DEFAULT 0,
    detail        text NOT NULL DEFAULT '',
    updated_us    bigint NOT NULL,
    UNIQUE (source, reason, from_us)
);
CREATE INDEX hr_gap_until ON hr_gap (until_us);
CREATE TABLE hr_call (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source    text NOT NULL,
    kind      text NOT NULL,
    subject   text NOT NULL,
    called_us bigint NOT NULL,
    outcome   text NOT NULL,
    detail    text NOT NULL
);
CREATE INDEX hr_call_limit ON hr_call (source, kind, called_us);
CREATE INDEX hr_call_subject ON hr_call (source, subject, called_us);
CREATE TABLE hr_lead (
    name     text PRIMARY KEY,
    owner    text NOT NULL,
    until_us bigint NOT NULL
);
CREATE INDEX hr_subject_unfinished ON hr_subject (source, at) WHERE {unfinished};",
        unfinished = crate::outbox::sql::UNFINISHED
    )
}
