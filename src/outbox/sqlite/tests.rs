//! The SQLite driver's own tests: its queries, migrations from every older
//! release, and its writer's batching, on files in temporary folders.

use std::collections::HashSet;
use std::sync::Arc;

use rusqlite::{Connection, params};

use super::schema::{self, has_column};
use super::writer::LIMITS;
use super::{Mode, SqliteOutbox, serve_lock};
use crate::clock::now_micros;
use crate::metrics::Metrics;
use crate::outbox::fake::event;
use crate::outbox::row::{FullRow, Row};
use crate::outbox::view::{Body, RowView};
use crate::outbox::{
    EventFilter, InsertOutcome, NewEvent, Operate, OutboxError, Pipe, Settlement, Stats, Window,
};

/// A new outbox as `serve` opens it, in a folder of its own: the folder (keep
/// it alive), the database file, the outbox.
async fn served() -> (tempfile::TempDir, std::path::PathBuf, SqliteOutbox) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("o.db");
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    let outbox = SqliteOutbox::open(&path, Mode::Serve, metrics)
        .await
        .expect("open");
    (dir, path, outbox)
}

#[tokio::test]
async fn rows_in_flight_are_skipped_and_the_batch_still_fills() {
    let (_dir, _, outbox) = served().await;
    for body in ["a", "b", "c", "d"] {
        outbox.insert(event(body)).await.expect("insert");
    }
    let due = |in_flight: HashSet<i64>| {
        let outbox = &outbox;
        async move {
            outbox
                .fetch_due(2, &in_flight)
                .await
                .expect("fetch")
                .events
                .iter()
                .map(|row| row.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(due(HashSet::new()).await, vec![1, 2]);
    assert_eq!(due(HashSet::from([1, 2])).await, vec![3, 4]);
    assert_eq!(due(HashSet::from([1, 3])).await, vec![2, 4]);
}

#[tokio::test]
async fn a_dead_row_holds_its_subject_until_released_or_replayed() {
    let (_dir, path, outbox) = served().await;
    for body in ["first", "second", "third"] {
        outbox.insert(event(body)).await.expect("insert");
    }
    // Rows 1 and 2 share a subject; row 1 went dead.
    Connection::open(&path)
        .expect("open")
        .execute_batch(
            "UPDATE events SET subject = 'order-1' WHERE id IN (1, 2);
             UPDATE deliveries SET subject = 'order-1' WHERE id IN (1, 2);
             UPDATE deliveries SET state = 'dead' WHERE id = 1;",
        )
        .expect("arrange");
    let due = || async {
        outbox
            .fetch_due(10, &HashSet::new())
            .await
            .expect("fetch")
            .events
            .iter()
            .map(|row| row.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(due().await, vec![3], "row 2 waits behind dead row 1");
    assert_eq!(outbox.stats().await.expect("stats").held_subjects, 1);
    assert_eq!(outbox.release(vec![1, 3]).await.expect("release"), 1);
    assert_eq!(due().await, vec![2, 3], "released: row 2 goes on");
    assert_eq!(outbox.stats().await.expect("stats").held_subjects, 0);
    assert_eq!(
        outbox.stats().await.expect("stats").dead,
        1,
        "row 1 stays dead"
    );
}

#[tokio::test]
async fn an_outbox_of_an_older_relay_is_migrated_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("o.db");
    // The schema before version 1: no permanent_attempts, no released_at.
    let conn = Connection::open(&path).expect("open");
    conn.execute_batch(
        "CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL,
            source TEXT NOT NULL, provider TEXT NOT NULL,
            idempotency_key TEXT NOT NULL, subject TEXT NOT NULL,
            routing_key TEXT NOT NULL, meta TEXT NOT NULL, headers TEXT NOT NULL,
            body BLOB NOT NULL, traceparent TEXT NOT NULL,
            received_at INTEGER NOT NULL, state TEXT NOT NULL DEFAULT 'pending',
            attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at INTEGER NOT NULL,
            last_error TEXT, published_at INTEGER,
            UNIQUE (source, idempotency_key));
         CREATE INDEX events_pending_subject ON events (source, subject, id)
            WHERE state = 'pending';",
    )
    .expect("old schema");
    // A dead row of that relay goes through versions 1 and 2.
    let old = event("before");
    conn.execute(
        "INSERT INTO events (event_id, source, provider, idempotency_key, subject, routing_key,
                             meta, headers, body, traceparent, received_at, state, attempts,
                             next_attempt_at, last_error)
         VALUES (?1, ?2, ?3, ?4, ?5, 'rk', ?6, '{}', ?7, '', 1, 'dead', 3, 1, 'too large')",
        params![
            old.meta.id,
            old.meta.source,
            old.meta.provider,
            old.meta.idempotency_key,
            old.meta.subject,
            serde_json::to_string(&old.meta).expect("meta"),
            &old.body[..],
        ],
    )
    .expect("old row");
    drop(conn);
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    let outbox = SqliteOutbox::open(&path, Mode::Serve, metrics)
        .await
        .expect("open migrates");
    let dead = outbox.show(1).await.expect("show").expect("row 1");
    assert_eq!(dead.body, b"before");
    let dead = dead.row;
    assert_eq!(
        (dead.state.as_str(), dead.attempts, dead.permanent_attempts),
        ("dead", 3, 0)
    );
    assert_eq!(dead.last_error.as_deref(), Some("too large"));
    assert_eq!(
        outbox.insert(event("after")).await.expect("insert"),
        InsertOutcome::Inserted
    );
    assert_eq!(outbox.release(vec![1, 2]).await.expect("release"), 1);
    let version: i64 = Connection::open(&path)
        .expect("open")
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("version");
    assert_eq!(version, schema::VERSION);
}

/// The schema of the previous release (version 1), as it made a new outbox.
const V1_SCHEMA: &str = "
    CREATE TABLE events (
        id                 INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id           TEXT    NOT NULL,
        source             TEXT    NOT NULL,
        provider           TEXT    NOT NULL,
        idempotency_key    TEXT    NOT NULL,
        subject            TEXT    NOT NULL,
        routing_key        TEXT    NOT NULL,
        meta               TEXT    NOT NULL,
        headers            TEXT    NOT NULL,
        body               BLOB    NOT NULL,
        traceparent        TEXT    NOT NULL,
        received_at        INTEGER NOT NULL,
        state              TEXT    NOT NULL DEFAULT 'pending'
                           CHECK (state IN ('pending', 'published', 'dead')),
        attempts           INTEGER NOT NULL DEFAULT 0,
        permanent_attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at    INTEGER NOT NULL,
        last_error         TEXT,
        published_at       INTEGER,
        released_at        INTEGER,
        UNIQUE (source, idempotency_key)
    );
    CREATE TABLE health (
        id        INTEGER PRIMARY KEY CHECK (id = 1),
        probed_at INTEGER NOT NULL
    );
    CREATE INDEX events_state_id ON events (state, id);
    CREATE INDEX events_published_at ON events (published_at) WHERE state = 'published';
    CREATE INDEX events_holding_subject ON events (source, subject, id)
        WHERE (state = 'pending' OR (state = 'dead' AND released_at IS NULL));
    CREATE INDEX events_received_at ON events (received_at, id);
    PRAGMA user_version = 1;";

/// A row of a version-1 outbox: the webhook and its publishing state.
struct V1Row {
    event: NewEvent,
    id: i64,
    state: &'static str,
    attempts: u32,
    permanent_attempts: u32,
    next_attempt_at: i64,
    last_error: Option<&'static str>,
    published_at: Option<i64>,
    released_at: Option<i64>,
}

impl V1Row {
    fn insert(&self, conn: &Connection) {
        let ev = &self.event;
        conn.execute(
            "INSERT INTO events (id, event_id, source, provider, idempotency_key, subject,
                                 routing_key, meta, headers, body, traceparent, received_at,
                                 state, attempts, permanent_attempts, next_attempt_at,
                                 last_error, published_at, released_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                     ?17, ?18, ?19)",
            params![
                self.id,
                ev.meta.id,
                ev.meta.source,
                ev.meta.provider,
                ev.meta.idempotency_key,
                ev.meta.subject,
                ev.meta.routing_key(),
                serde_json::to_string(&ev.meta).expect("meta"),
                ev.headers_json,
                &ev.body[..],
                ev.traceparent,
                ev.received_at_us,
                self.state,
                self.attempts,
                self.permanent_attempts,
                self.next_attempt_at,
                self.last_error,
                self.published_at,
                self.released_at,
            ],
        )
        .expect("v1 row");
    }

    /// The row as `show` must present it.
    fn view(&self) -> serde_json::Value {
        let ev = &self.event;
        let row = Row {
            id: self.id,
            event_id: ev.meta.id.clone(),
            source: ev.meta.source.clone(),
            provider: ev.meta.provider.clone(),
            routing_key: ev.meta.routing_key(),
            state: self.state.to_owned(),
            attempts: self.attempts,
            last_error: self.last_error.map(str::to_owned),
            received_at_us: ev.received_at_us,
            next_attempt_at_us: self.next_attempt_at,
            published_at_us: self.published_at,
            idempotency_key: ev.meta.idempotency_key.clone(),
            permanent_attempts: self.permanent_attempts,
            released_at_us: self.released_at,
            subject: ev.meta.subject.clone(),
            meta: Some(ev.meta.clone()),
            // Each row is its own subject: the migration numbers a published
            // one 1.
            sequence: (self.state == "published").then_some(1),
            stale: false,
        };
        let full = FullRow {
            row,
            headers: ev.headers_json.clone(),
            body: ev.body.to_vec(),
            traceparent: ev.traceparent.clone(),
            failures: Vec::new(),
        };
        serde_json::to_value(RowView::full(full, Body::AsReceived)).expect("view")
    }
}

#[tokio::test]
async fn an_outbox_of_the_previous_release_is_migrated_with_its_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("o.db");
    let t0 = now_micros() - 3_600_000_000;
    let with = |body: &str, received_at_us: i64| NewEvent {
        headers_json: format!(r#"{{"x-signature":"sig-{body}"}}"#),
        traceparent: format!(
            "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b{received_at_us}-01"
        ),
        received_at_us,
        ..event(body)
    };
    let mut binary = with("published", t0 + 2);
    // Not UTF-8, so a text column would not have kept it.
    binary.body = bytes::Bytes::from_static(b"\x00\xff\xfe raw \x80");
    let rows = [
        V1Row {
            event: with("pending", t0 + 1),
            id: 1,
            state: "pending",
            attempts: 4,
            permanent_attempts: 1,
            next_attempt_at: t0 + 10,
            last_error: Some("confirm timed out"),
            published_at: None,
            released_at: None,
        },
        V1Row {
            event: binary,
            id: 2,
            state: "published",
            attempts: 1,
            permanent_attempts: 0,
            next_attempt_at: t0 + 2,
            last_error: None,
            published_at: Some(t0 + 20),
            released_at: None,
        },
        V1Row {
            event: with("dead", t0 + 3),
            id: 3,
            state: "dead",
            attempts: 5,
            permanent_attempts: 3,
            next_attempt_at: t0 + 30,
            last_error: Some("message too large"),
            published_at: None,
            released_at: Some(t0 + 40),
        },
    ];
    let conn = Connection::open(&path).expect("open");
    conn.execute_batch(V1_SCHEMA).expect("v1 schema");
    for row in &rows {
        row.insert(&conn);
    }
    // Rows 4 and 5 were purged: their ids are not handed out again.
    conn.execute_batch(
        "UPDATE sqlite_sequence SET seq = 5 WHERE name = 'events';
         INSERT INTO health (id, probed_at) VALUES (1, 7);",
    )
    .expect("arrange");
    drop(conn);

    let metrics = Arc::new(Metrics::new().expect("metrics"));
    let outbox = SqliteOutbox::open(&path, Mode::Serve, metrics)
        .await
        .expect("open migrates");

    let conn = Connection::open(&path).expect("open");
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("version");
    assert_eq!(version, schema::VERSION);
    let mut names = conn
        .prepare("SELECT name FROM sqlite_schema ORDER BY name")
        .expect("schema");
    let names: Vec<String> = names
        .query_map([], |r| r.get(0))
        .expect("names")
        .collect::<Result<_, _>>()
        .expect("names");
    assert_eq!(
        names,
        [
            "attempts",
            "attempts_id",
            "deliveries",
            "deliveries_holding_subject",
            "deliveries_published_at",
            "deliveries_state_id",
            "events",
            "events_received_at",
            "events_subject",
            "health",
            "hr_call",
            "hr_call_limit",
            "hr_call_subject",
            "hr_gap",
            "hr_gap_until",
            "hr_heartbeat",
            "hr_lead",
            "schema_versions",
            "sqlite_autoindex_events_1",
            "sqlite_autoindex_hr_gap_1",
            "sqlite_autoindex_hr_lead_1",
            "sqlite_sequence",
            "subjects",
            "subjects_unfinished",
        ],
        "the old table's indexes went with it, and no temporary table is left"
    );
    assert!(!has_column(&conn, "events", "state").expect("columns"));

    for row in &rows {
        let shown = outbox.show(row.id).await.expect("show").expect("row");
        assert_eq!(shown.body, row.event.body);
        assert_eq!(
            serde_json::to_value(RowView::full(shown, Body::AsReceived)).expect("json"),
            row.view(),
            "row {}",
            row.id
        );
    }
    let listed = outbox
        .find(&EventFilter::default(), Window::ALL, 10)
        .await
        .expect("find");
    let listed: Vec<(i64, String)> = listed.into_iter().map(|r| (r.id, r.state)).collect();
    assert_eq!(
        listed,
        [
            (3, "dead".to_owned()),
            (2, "published".to_owned()),
            (1, "pending".to_owned())
        ]
    );
    assert_eq!(
        outbox.stats().await.expect("stats"),
        Stats {
            pending: 1,
            dead: 1,
            oldest_pending_us: Some(t0 + 1),
            held_subjects: 0,
            ..Stats::default()
        },
        "the dead row stays released"
    );
    assert_eq!(outbox.inventory().await.expect("inventory").published, 1);

    let due = outbox
        .fetch_due(10, &HashSet::new())
        .await
        .expect("fetch")
        .events;
    assert_eq!(due.len(), 1, "{due:?}");
    let pending = &rows[0].event;
    assert_eq!(
        (due[0].id, due[0].attempts, due[0].permanent_attempts),
        (1, 4, 1)
    );
    assert_eq!(due[0].meta, pending.meta);
    assert_eq!(due[0].body, pending.body);
    assert_eq!(due[0].received_at_us, pending.received_at_us);
    assert_eq!(due[0].traceparent, pending.traceparent);

    assert_eq!(
        outbox.insert(event("new")).await.expect("insert"),
        InsertOutcome::Inserted
    );
    let new = outbox.show(6).await.expect("show");
    assert_eq!(
        new.map(|full| full.row.state).as_deref(),
        Some("pending"),
        "the new row took the id after the purged ones"
    );
    // A published row is still a duplicate of its idempotency key.
    assert_eq!(
        outbox.insert(rows[1].event.clone()).await.expect("insert"),
        InsertOutcome::Duplicate
    );
    outbox
        .settle(Arc::from([
            Settlement::Published { id: 1, first: None },
            Settlement::Dead {
                id: 6,
                error: "no".to_owned(),
            },
        ]))
        .await
        .expect("settle");
    let states = outbox
        .find(&EventFilter::default(), Window::ALL, 10)
        .await
        .expect("find")
        .into_iter()
        .map(|r| (r.id, r.state, r.attempts))
        .collect::<Vec<_>>();
    assert_eq!(
        states,
        [
            (6, "dead".to_owned(), 1),
            (3, "dead".to_owned(), 5),
            (2, "published".to_owned(), 1),
            (1, "published".to_owned(), 5),
        ]
    );
    assert_eq!(
        outbox.purge_published(i64::MAX, 10).await.expect("purge"),
        2
    );
}

#[tokio::test]
async fn a_command_does_not_migrate_an_outbox_an_older_serve_is_using() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("o.db");
    let conn = Connection::open(&path).expect("open");
    conn.execute_batch(V1_SCHEMA).expect("v1 schema");
    V1Row {
        event: event("a"),
        id: 1,
        state: "pending",
        attempts: 0,
        permanent_attempts: 0,
        next_attempt_at: 0,
        last_error: None,
        published_at: None,
        released_at: None,
    }
    .insert(&conn);
    let version = || -> i64 {
        conn.query_row("PRAGMA user_version", [], |r| r.get(0))
            .expect("version")
    };
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    let running = serve_lock(&path).expect("an older serve");
    let refused = SqliteOutbox::open(&path, Mode::Operate, Arc::clone(&metrics))
        .await
        .map(|_| ());
    assert!(
        matches!(&refused, Err(e) if e.to_string().contains("upgrade that relay first")),
        "{refused:?}"
    );
    assert_eq!(version(), 1, "left as the running relay needs it");
    drop(running);
    let outbox = SqliteOutbox::open(&path, Mode::Operate, metrics)
        .await
        .expect("no serve: the command migrates");
    assert_eq!(version(), schema::VERSION);
    assert_eq!(outbox.stats().await.expect("stats").pending, 1);
    drop(outbox);
    serve_lock(&path).expect("the command let the serve lock go");
}

#[tokio::test]
async fn settles_replays_and_releases_never_write_the_event_row() {
    let (_dir, path, outbox) = served().await;
    for body in ["a", "b", "c"] {
        outbox.insert(event(body)).await.expect("insert");
    }
    // From here on, any UPDATE of `events` fails the writer's transaction.
    Connection::open(&path)
        .expect("open")
        .execute_batch(
            "CREATE TRIGGER events_are_not_updated BEFORE UPDATE ON events
             BEGIN SELECT RAISE(ABORT, 'an event row was rewritten'); END;",
        )
        .expect("trigger");
    outbox
        .settle(Arc::from([
            Settlement::Published { id: 1, first: None },
            Settlement::Retry {
                id: 2,
                error: "nack".to_owned(),
                retry_in: std::time::Duration::ZERO,
                permanent: true,
            },
            Settlement::Dead {
                id: 3,
                error: "too large".to_owned(),
            },
        ]))
        .await
        .expect("settle writes deliveries only");
    assert_eq!(outbox.release(vec![3]).await.expect("release"), 1);
    assert_eq!(outbox.replay(vec![1, 3]).await.expect("replay"), 2);
    assert_eq!(
        outbox.replay(vec![1, 2, 3]).await.expect("replay"),
        0,
        "all pending already"
    );
    let stats = outbox.stats().await.expect("stats");
    assert_eq!((stats.pending, stats.dead), (3, 0));
}

#[tokio::test]
async fn a_settle_logs_far_less_than_the_body_in_the_wal() {
    let (_dir, path, outbox) = served().await;
    const BODY: usize = 1 << 20;
    let mut large = event("large");
    large.body = bytes::Bytes::from(vec![b'x'; BODY]);
    outbox.insert(large).await.expect("insert");
    // An empty WAL, so its size afterwards is what the settle wrote.
    let (busy, _, _): (i64, i64, i64) = Connection::open(&path)
        .expect("open")
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .expect("checkpoint");
    assert_eq!(busy, 0, "the checkpoint ran");
    let mut wal = path.clone().into_os_string();
    wal.push("-wal");
    assert_eq!(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0), 0);
    outbox
        .settle(Arc::from([Settlement::Published { id: 1, first: None }]))
        .await
        .expect("settle");
    let logged = std::fs::metadata(&wal).expect("wal").len();
    assert!(
        logged < BODY as u64 / 16,
        "a settle of a 1 MiB webhook logged {logged} bytes"
    );
}

#[tokio::test]
async fn a_purge_deletes_the_event_and_its_delivery() {
    let (_dir, path, outbox) = served().await;
    for body in ["a", "b", "c"] {
        outbox.insert(event(body)).await.expect("insert");
    }
    outbox
        .settle(Arc::from([
            Settlement::Published { id: 1, first: None },
            Settlement::Published { id: 2, first: None },
        ]))
        .await
        .expect("settle");
    assert_eq!(outbox.purge_published(i64::MAX, 1).await.expect("purge"), 1);
    assert_eq!(
        outbox.purge_published(i64::MAX, 10).await.expect("purge"),
        1
    );
    let conn = Connection::open(&path).expect("open");
    let ids = |table: &str| {
        let mut stmt = conn
            .prepare(&format!("SELECT id FROM {table} ORDER BY id"))
            .expect("select");
        stmt.query_map([], |r| r.get::<_, i64>(0))
            .expect("ids")
            .collect::<Result<Vec<_>, _>>()
            .expect("ids")
    };
    assert_eq!(ids("events"), [3]);
    assert_eq!(ids("deliveries"), [3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_replay_lets_webhooks_commit_between_its_chunks() {
    let (_dir, path, outbox) = served().await;
    let outbox = Arc::new(outbox);
    // A week of published rows, written straight into the file.
    const ROWS: i64 = 100_000;
    let conn = Connection::open(&path).expect("open");
    conn.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
         INSERT INTO events (event_id, source, provider, idempotency_key, subject,
             routing_key, meta, headers, body, traceparent, received_at)
         SELECT 'e' || i, 'whitepay', 'whitepay', 'k' || i, 's' || i, 'rk', '{}', '{}',
                x'00', '', i FROM n",
        [ROWS],
    )
    .expect("bulk insert");
    conn.execute(
        "INSERT INTO deliveries (id, source, subject, state, next_attempt_at, published_at)
         SELECT id, source, subject, 'published', received_at, received_at FROM events",
        [],
    )
    .expect("bulk insert");
    let replaying = {
        let outbox = Arc::clone(&outbox);
        tokio::spawn(async move {
            let filter = EventFilter {
                since_us: Some(0),
                ..EventFilter::default()
            };
            let ids = crate::outbox::query::matching_ids(outbox.as_ref(), &filter).await?;
            crate::outbox::select::replay(outbox.as_ref(), &ids).await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    outbox.insert(event("during")).await.expect("insert");
    let replayed_so_far = outbox.stats().await.expect("stats").pending - 1;
    assert!(
        replayed_so_far < ROWS as u64,
        "the webhook committed while the replay was still going ({replayed_so_far} of {ROWS} replayed)"
    );
    assert_eq!(replaying.await.expect("join").expect("replay"), ROWS as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settlements_go_in_the_next_commit_ahead_of_queued_webhooks() {
    let (_dir, path, outbox) = served().await;
    let outbox = Arc::new(outbox);
    outbox.insert(event("to settle")).await.expect("insert");
    // Another process holds the write lock: the writer stalls and webhooks queue.
    let holder = Connection::open(&path).expect("open");
    holder.execute_batch("BEGIN IMMEDIATE").expect("write lock");
    const QUEUED: usize = 1500;
    let stored = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let inserts: Vec<_> = (0..QUEUED)
        .map(|i| {
            let (outbox, stored) = (Arc::clone(&outbox), Arc::clone(&stored));
            tokio::spawn(async move {
                outbox
                    .insert(event(&format!("queued {i}")))
                    .await
                    .expect("insert");
                stored.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let settling = {
        let (outbox, stored) = (Arc::clone(&outbox), Arc::clone(&stored));
        tokio::spawn(async move {
            outbox
                .settle(Arc::from(vec![Settlement::Published {
                    id: 1,
                    first: None,
                }]))
                .await
                .expect("settle");
            stored.load(std::sync::atomic::Ordering::SeqCst)
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    holder.execute_batch("ROLLBACK").expect("release");
    let stored_before_settle = settling.await.expect("join");
    assert!(
        stored_before_settle <= 2 * LIMITS.webhooks,
        "the settlement waited behind {stored_before_settle} of {QUEUED} queued webhooks"
    );
    for insert in inserts {
        insert.await.expect("join");
    }
    assert_eq!(outbox.stats().await.expect("stats").pending, QUEUED as u64);
}

#[tokio::test]
async fn an_insert_that_cannot_commit_in_time_fails_instead_of_waiting() {
    let (_dir, path, mut outbox) = served().await;
    // The commit stalls (here: another process holds the write lock, which
    // the writer waits 5 s for) for longer than the insert may wait.
    outbox.intake = outbox
        .intake
        .clone()
        .with_timeout(std::time::Duration::from_secs(1));
    let holder = Connection::open(&path).expect("open");
    holder
        .execute_batch("BEGIN IMMEDIATE")
        .expect("take the write lock");
    let stalled = outbox.insert(event("a")).await;
    assert!(
        matches!(stalled, Err(OutboxError::TimedOut(1))),
        "{stalled:?}"
    );
    holder.execute_batch("ROLLBACK").expect("release");
    outbox.insert(event("b")).await.expect("inserts work again");
}

#[tokio::test]
async fn a_subject_is_forgotten_only_once_no_row_is_left() {
    let (_dir, _path, outbox) = served().await;
    crate::outbox::fake::a_subject_is_forgotten_only_once_no_row_is_left(&outbox).await;
}

#[tokio::test]
async fn the_writes_of_every_webhook_build_no_temporary_btree_and_the_state_is_still_checked() {
    let (_dir, path, outbox) = served().await;
    outbox.insert(event("one")).await.expect("insert");
    drop(outbox);
    let conn = Connection::open(&path).expect("open");
    for (name, statement) in [
        ("insert event", super::sql::INSERT_EVENT),
        ("insert delivery", super::sql::INSERT_DELIVERY),
        ("settle", super::sql::SETTLE),
        ("number subject", super::sql::NUMBER_SUBJECT),
    ] {
        let mut explain = conn
            .prepare(&format!("EXPLAIN {statement}"))
            .expect("explain");
        // Unbound parameters are NULL: EXPLAIN only lists the program.
        let mut rows = explain.raw_query();
        let mut opcodes = Vec::new();
        while let Some(row) = rows.next().expect("row") {
            opcodes.push(row.get::<_, String>(1).expect("opcode"));
        }
        assert!(
            !opcodes.iter().any(|op| op == "OpenEphemeral"),
            "{name} builds a temporary b-tree for every webhook"
        );
    }
    let refused = conn.execute("UPDATE deliveries SET state = 'lost' WHERE id = 1", []);
    assert!(
        matches!(&refused, Err(e) if e.to_string().contains("CHECK constraint failed")),
        "{refused:?}"
    );
    conn.execute("UPDATE deliveries SET state = 'dead' WHERE id = 1", [])
        .expect("a known state is accepted");
}

#[tokio::test]
async fn the_fetch_keeps_its_prepared_plan_whatever_limit_it_is_asked_for() {
    let (_dir, path, outbox) = served().await;
    for body in ["a", "b", "c"] {
        outbox.insert(event(body)).await.expect("insert");
    }
    drop(outbox);
    let conn = Connection::open(&path).expect("open");
    let mut due = conn.prepare(&super::sql::fetch_due()).expect("prepare");
    for limit in [1_i64, 2, 3, 1] {
        let mut rows = due
            .query(params![now_micros(), limit, "[]", i64::MAX / 2])
            .expect("query");
        let mut n = 0;
        while rows.next().expect("row").is_some() {
            n += 1;
        }
        assert_eq!(n, limit.min(3), "the fetch honours its limit");
    }
    assert_eq!(
        due.get_status(rusqlite::StatementStatus::RePrepare),
        0,
        "a new limit made SQLite plan the fetch again"
    );
}

#[tokio::test]
async fn stuck_subjects_are_found_through_the_index_of_unfinished_ones() {
    let (_dir, path, outbox) = served().await;
    drop(outbox);
    let conn = Connection::open(&path).expect("open");
    let statement = crate::outbox::sql::stuck(crate::outbox::sql::Dialect::Sqlite);
    let mut explain = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {statement}"))
        .expect("explain");
    let mut rows = explain.raw_query();
    let mut plan = Vec::new();
    while let Some(row) = rows.next().expect("row") {
        plan.push(row.get::<_, String>(3).expect("detail"));
    }
    assert!(
        plan.iter()
            .any(|step| step.contains("USING INDEX subjects_unfinished")),
        "the finished subjects are read too: {plan:?}"
    );
}
