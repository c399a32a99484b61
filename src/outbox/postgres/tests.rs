//! The PostgreSQL driver's own tests, each on a database of its own on the
//! machine's server (127.0.0.1:5432, user `postgres` without a password, as the
//! integration tests use it), dropped afterwards.

use std::sync::Arc;

use tokio::sync::Notify;

use super::{PostgresOutbox, connect::Target, writer};
use crate::metrics::Metrics;
use crate::outbox::fake::event;
use crate::outbox::{InsertOutcome, Mode, Options, OutboxError, ingest};

/// The machine's server.
const SERVER: &str = "postgres://postgres@127.0.0.1:5432";

/// A database of a test's own, dropped with it.
struct Scratch {
    name: String,
}

impl Scratch {
    async fn create() -> Self {
        let name = format!("hr_unit_{}", uuid::Uuid::new_v4().simple());
        admin(&format!("CREATE DATABASE {name}")).await;
        Self { name }
    }

    fn url(&self) -> String {
        format!("{SERVER}/{}?sslmode=disable", self.name)
    }

    /// The outbox as `serve` opens it, with its writers and its lease task.
    async fn serve(&self, metrics: &Arc<Metrics>) -> PostgresOutbox {
        PostgresOutbox::open(
            &self.url(),
            Mode::Serve,
            Arc::clone(metrics),
            Options::default(),
        )
        .await
        .expect("open")
    }

    /// A connection of its own to the database.
    async fn client(&self) -> tokio_postgres::Client {
        let target = Target::parse(&self.url()).expect("url");
        let (client, connection) = target
            .config
            .connect(target.connector().expect("tls"))
            .await
            .expect("connect to the scratch database");
        tokio::spawn(connection);
        client
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::process::Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-X",
                "-q",
                "-d",
                "postgres",
            ])
            .arg("-c")
            .arg(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .output();
    }
}

/// Runs `sql` in the server's `postgres` database.
async fn admin(sql: &str) {
    let (client, connection) =
        tokio_postgres::connect(&format!("{SERVER}/postgres"), tokio_postgres::NoTls)
            .await
            .expect("the machine's PostgreSQL on 127.0.0.1:5432");
    tokio::spawn(connection);
    client.batch_execute(sql).await.expect(sql);
}

/// One webhook whose subject PostgreSQL cannot store, committed among ordinary
/// ones in one batch, fails alone: the others are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_holding_a_webhook_the_database_refuses_stores_the_others() {
    let scratch = Scratch::create().await;
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    let outbox = scratch.serve(&metrics).await;
    // A writer of the test's own over a queue the test fills before it runs, so
    // that every webhook goes into one batch.
    let (intake, queue) = ingest::queue();
    let inserts: Vec<_> = (0..120)
        .map(|i| {
            let mut webhook = event(&format!("ordinary {i}"));
            if i == 60 {
                webhook.meta.subject = "ord\u{0}1".to_owned();
            }
            let intake = intake.clone();
            tokio::spawn(async move { intake.insert_unchecked(webhook).await })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    tokio::spawn(writer::run(
        outbox.pool.clone(),
        Arc::new(tokio::sync::Mutex::new(queue)),
        metrics,
        intake.health().clone(),
        Arc::new(Notify::new()),
    ));
    let mut stored = 0;
    let mut refused = Vec::new();
    for (i, insert) in inserts.into_iter().enumerate() {
        match insert.await.expect("join") {
            Ok(InsertOutcome::Inserted) => stored += 1,
            Ok(other) => panic!("webhook {i}: {other:?}"),
            Err(e) => refused.push((i, e)),
        }
    }
    assert_eq!(stored, 119, "every ordinary webhook is stored: {refused:?}");
    assert!(
        matches!(refused.as_slice(), [(60, OutboxError::Unstorable { .. })]),
        "only the one the database refuses fails, as unstorable: {refused:?}"
    );
    assert!(
        intake.health().recent_failure().is_ok(),
        "a refused webhook is no failure of the outbox"
    );
}

/// `0,1,…,255`: every partition, as a replica alone leases them.
fn every_partition() -> String {
    (0..256)
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The fetch's plan stays a walk of the due index with a per-row check of the
/// subject's older rows, also when the statistics say the table is empty while a
/// backlog has built (no sort of every pending row, no anti-join over all of
/// them), for the custom plan and the generic one a prepared statement gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fetch_plan_neither_sorts_nor_anti_joins_the_backlog_on_stale_statistics() {
    let scratch = Scratch::create().await;
    let outbox = PostgresOutbox::open(
        &scratch.url(),
        Mode::Serve,
        Arc::new(Metrics::new().expect("metrics")),
        Options::default(),
    )
    .await
    .expect("open");
    let client = scratch.client().await;
    // Statistics of an empty outbox, then a backlog the planner has not seen.
    client
        .batch_execute(
            "ANALYZE hr_event; ANALYZE hr_delivery;
             WITH ev AS (
                 INSERT INTO hr_event (event_id, source, provider, idempotency_key, subject, part,
                                       routing_key, meta, headers, body, traceparent, received_at)
                 SELECT 'e' || n, 'whitepay', 'whitepay', 'k' || n, 's' || (n % 5000), (n % 256)::int2,
                        'rk', '{}', '{}', '\\x00', '', n
                 FROM generate_series(1, 50000) n
                 RETURNING id, part, source, subject)
             INSERT INTO hr_delivery (id, part, source, subject, next_attempt_at)
             SELECT id, part, source, subject, 0 FROM ev",
        )
        .await
        .expect("a backlog");
    let plan = |generic: bool| {
        let client = &client;
        async move {
            let mode = if generic {
                "force_generic_plan"
            } else {
                "force_custom_plan"
            };
            let text = format!(
                "BEGIN; {}; SET LOCAL plan_cache_mode = {mode};
                 PREPARE due (int2[], int8[], int8) AS {};",
                super::sql::PIN_FETCH_PLAN,
                super::sql::fetch_due()
            );
            client
                .batch_execute(&text)
                .await
                .expect("prepare the fetch");
            let rows = client
                .query(
                    &format!(
                        "EXPLAIN EXECUTE due('{{{}}}', '{{}}', 256)",
                        every_partition()
                    ),
                    &[],
                )
                .await
                .expect("explain");
            client
                .batch_execute("DEALLOCATE due; ROLLBACK")
                .await
                .expect("end");
            rows.iter()
                .map(|row| row.get::<_, String>(0))
                .collect::<Vec<_>>()
                .join("\n")
        }
    };
    for generic in [false, true] {
        let plan = plan(generic).await;
        assert!(
            !plan.contains("Sort") && !plan.contains("Anti Join") && !plan.contains("Hash Join"),
            "generic {generic}: the fetch reads the backlog whole:\n{plan}"
        );
        assert!(
            plan.contains("hr_delivery_due"),
            "generic {generic}: the fetch walks the due index:\n{plan}"
        );
    }
    drop(outbox);
}

/// The replica's outbox once its leases hold every partition (it is alone).
async fn leasing_everything(scratch: &Scratch, metrics: &Arc<Metrics>) -> PostgresOutbox {
    let outbox = scratch.serve(metrics).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while outbox.leases.count() < 256 {
        assert!(std::time::Instant::now() < deadline, "leases taken");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    outbox
}

/// The replica's outbox once its leases hold every partition, with `rows` webhooks
/// stored and fetched (claimed).
async fn fetched(
    scratch: &Scratch,
    metrics: &Arc<Metrics>,
    rows: usize,
) -> (PostgresOutbox, Vec<i64>) {
    use crate::outbox::Pipe;
    let outbox = leasing_everything(scratch, metrics).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    for i in 0..rows {
        outbox
            .insert(event(&format!("claimed {i}")))
            .await
            .expect("insert");
    }
    // Rows wait behind the fence while any transaction of the cluster that began
    // before them is open (other tests run beside this one).
    loop {
        let due = outbox
            .fetch_due(rows, &std::collections::HashSet::new())
            .await
            .expect("fetch");
        if due.events.len() == rows {
            return (outbox, due.events.iter().map(|row| row.id).collect());
        }
        assert!(std::time::Instant::now() < deadline, "rows fetched");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A settle that committed after its caller gave up on it, tried again, records
/// nothing twice and is no refused outcome: the lease was held all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settle_tried_again_after_it_committed_is_not_counted_as_fenced() {
    use crate::outbox::{Pipe, Settlement};
    let scratch = Scratch::create().await;
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    let (outbox, ids) = fetched(&scratch, &metrics, 3).await;
    let settled: Arc<[Settlement]> = ids
        .iter()
        .map(|id| Settlement::Published {
            id: *id,
            first: None,
        })
        .collect();
    // The first try commits, but its caller does not learn it (it timed out):
    // the claims stay, and the publisher settles the same outcomes again.
    let claims = outbox.claims.of_rows(&ids);
    outbox.settle(Arc::clone(&settled)).await.expect("settle");
    outbox.claims.restore(&claims);
    outbox.settle(settled).await.expect("settle again");
    assert_eq!(metrics.outbox_fenced_settles.get(), 0);
}

/// Rows fetched and never sent let go of their claims, so that a partition being
/// handed on does not wait for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_never_sent_let_go_of_their_partitions() {
    use crate::outbox::Pipe;
    let scratch = Scratch::create().await;
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    let (outbox, ids) = fetched(&scratch, &metrics, 5).await;
    let parts: Vec<i16> = (0..256)
        .filter(|p| outbox.claims.in_partition(*p))
        .collect();
    assert!(!parts.is_empty(), "fetched rows claim their partitions");
    outbox.unclaim(&ids);
    assert!(
        (0..256).all(|p| !outbox.claims.in_partition(p)),
        "no claim is left"
    );
}

/// A replica killed long ago (or a write probe that never published) leaves the
/// member list after ten leases; one gone for less is kept, so a replica paused
/// for a while finds its place again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_gone_for_ten_leases_are_forgotten() {
    use super::leases::Leases;
    let scratch = Scratch::create().await;
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    let outbox = scratch.serve(&metrics).await;
    let client = scratch.client().await;
    // The default lease is 10 s: ten leases are 100 s.
    client
        .batch_execute(
            "INSERT INTO hr_member (replica, heartbeat_at, probed_at) VALUES
               ('killed', now() - interval '101 seconds', NULL),
               ('probe', now() - interval '500 seconds', now() - interval '200 seconds'),
               ('paused', now() - interval '99 seconds', NULL),
               ('probed lately', now() - interval '500 seconds', now() - interval '5 seconds')",
        )
        .await
        .expect("members");
    let leases = Leases::new("ticking".to_owned(), Options::default().lease);
    leases
        .tick_once(&client, |_| false, true)
        .await
        .expect("tick");
    let mut left: Vec<String> = client
        .query("SELECT replica FROM hr_member", &[])
        .await
        .expect("members")
        .iter()
        .map(|row| row.get(0))
        .filter(|replica: &String| replica != &outbox.leases.replica)
        .collect();
    left.sort();
    assert_eq!(left, ["paused", "probed lately", "ticking"]);
}

/// The sequence's life on this driver (the scenario is `fake`'s, run by both).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_is_forgotten_only_once_no_row_is_left() {
    let scratch = Scratch::create().await;
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    let outbox = leasing_everything(&scratch, &metrics).await;
    crate::outbox::fake::a_subject_is_forgotten_only_once_no_row_is_left(&outbox).await;
}
