//! Several relays on one PostgreSQL outbox, with real processes, a real server and
//! real faults: replicas killed, paused past their lease, cut off from PostgreSQL;
//! PostgreSQL itself restarted; a transaction held open beside them.
//!
//! The oracle is the fault suite's, per event: every webhook that got a 2xx is
//! published (lost = 0), nothing is published that no one acked (phantom = 0), and
//! per subject the first deliveries come in the order the events were acked, which
//! is the order they were sent: each subject's next event goes to another replica
//! only after the previous one was acked. Duplicates are reported.
//!
//! `HOOKRELAY_REPLICA_KILLS` (default 10) makes the kill run longer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hookrelay::testing::{Seed, SeedState};
use rand::Rng;

use crate::support::admin::Admin;
use crate::support::*;

/// Short leases, so takeovers happen within the test's patience.
const LEASE: &str = "2s";

/// A config for replicas sharing `database`, with short leases.
fn replica_config(exchange: &str, dir: &std::path::Path, database: Arc<Database>) -> RelayConfig {
    let mut config = RelayConfig::new(exchange, dir);
    config.database = Some(database);
    config
        .env
        .push(("HOOKRELAY_OUTBOX_LEASE".to_owned(), LEASE.to_owned()));
    config
}

/// One relay on `database` as [`replica_config`] starts replicas, with short
/// leases.
fn one_replica(test: &str, database: Arc<Database>) -> TestAppBuilder {
    TestApp::build(Backend::Postgres, test)
        .database(database)
        .env("HOOKRELAY_OUTBOX_LEASE", LEASE)
}

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Two replicas on one database, sharing the partitions evenly: A reaches RabbitMQ
/// through a proxy the test can freeze or cut, B reaches it directly.
struct BrokerSplit {
    _dir: tempfile::TempDir,
    _exchange: TestExchange,
    consumer: Consumer,
    proxy: TcpProxy,
    a: Relay,
    b: Relay,
}

impl BrokerSplit {
    async fn start(name: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let exchange = TestExchange::new(name);
        let consumer = Consumer::bind(&exchange, "#").await;
        let database = Arc::new(Database::create());
        let proxy = TcpProxy::start(BROKER).await;
        let mut config_a = replica_config(&exchange, dir.path(), Arc::clone(&database));
        config_a.broker = proxy.addr.to_string();
        let config_b = replica_config(&exchange, dir.path(), database);
        let (a, b) = (Relay::start(&config_a), Relay::start(&config_b));
        a.wait_broker_connected().await;
        let split = Self {
            _dir: dir,
            _exchange: exchange,
            consumer,
            proxy,
            a,
            b,
        };
        wait_until(
            "the partitions are shared",
            Duration::from_secs(20),
            async || split.shares().await == (128.0, 128.0),
        )
        .await;
        split
    }

    /// The partitions A and B lease.
    async fn shares(&self) -> (f64, f64) {
        (
            self.a.metric("hookrelay_outbox_partitions_owned").await,
            self.b.metric("hookrelay_outbox_partitions_owned").await,
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_lose_nothing_and_keep_each_subjects_order_through_kill_9() {
    let kills = env_count("HOOKRELAY_REPLICA_KILLS", 10);
    let dir = tempfile::tempdir().expect("tempdir");
    let exchange = TestExchange::new("replicas");
    let mut consumer = Consumer::bind(&exchange, "#").await;
    let config = replica_config(&exchange, dir.path(), Arc::new(Database::create()));
    let mut relays: Vec<Relay> = (0..3).map(|_| Relay::start(&config)).collect();
    let load = Load::start(
        relays.iter().map(|r| r.url("whitepay")).collect(),
        24,
        Duration::from_millis(10),
        Walk::OrderLives,
    );
    for _ in 0..kills {
        tokio::time::sleep(Duration::from_millis(rand::rng().random_range(300..1500))).await;
        let victim = rand::rng().random_range(0..relays.len());
        let fresh = Relay::start(&config);
        load.retarget(victim, fresh.url("whitepay"));
        std::mem::replace(&mut relays[victim], fresh).kill9();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (v, LoadOutcome { refusals, .. }) =
        judged(load, &mut consumer, Duration::from_secs(30)).await;
    report(
        "replicas",
        "kill -9",
        &v,
        &format!("replicas=3 kills={kills} refused_then_retried={refusals}"),
    );
    assert!(v.acked > 100, "the load ran: {v:?}");
    assert_eq!((v.lost, v.phantom, v.out_of_order), (0, 0, 0), "{v:?}");
    // The killed replicas' partitions were taken over, and the shares evened out.
    wait_until(
        "every partition leased, about a third each",
        Duration::from_secs(20),
        async || {
            let mut shares = Vec::new();
            for relay in &relays {
                shares.push(relay.metric("hookrelay_outbox_partitions_owned").await);
            }
            shares.iter().sum::<f64>() == 256.0 && shares.iter().all(|s| (80.0..=90.0).contains(s))
        },
    )
    .await;
}

#[test]
fn replicas_starting_together_on_an_empty_database_migrate_it_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let database = Arc::new(Database::create());
    let config = replica_config("hookrelay-it-migrate", dir.path(), Arc::clone(&database));
    let relays: Vec<Relay> = std::thread::scope(|scope| {
        let starting: Vec<_> = (0..3)
            .map(|_| scope.spawn(|| Relay::start(&config)))
            .collect();
        starting
            .into_iter()
            .map(|s| s.join().expect("a replica started"))
            .collect()
    });
    assert_eq!(relays.len(), 3);
    let mut migrated: Vec<(usize, u64)> = relays
        .iter()
        .enumerate()
        .flat_map(|(replica, relay)| {
            relay.logs().into_iter().filter_map(move |line| {
                let line: serde_json::Value = serde_json::from_str(&line).ok()?;
                (line["message"] == "outbox schema migrated")
                    .then(|| (replica, line["version"].as_u64().unwrap_or(0)))
            })
        })
        .collect();
    migrated.sort_by_key(|(_, version)| *version);
    assert_eq!(
        migrated.iter().map(|(_, v)| *v).collect::<Vec<_>>(),
        [1, 2, 3, 4],
        "each migration applied once: {migrated:?}"
    );
    assert!(
        migrated
            .iter()
            .all(|(replica, _)| *replica == migrated[0].0),
        "one replica migrated, the others found it done: {migrated:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_webhook_sent_to_two_replicas_at_once_is_one_row_and_two_acks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exchange = TestExchange::new("samekey");
    let config = replica_config(&exchange, dir.path(), Arc::new(Database::create()));
    let (a, b) = (Relay::start(&config), Relay::start(&config));
    const KEYS: usize = 30;
    for i in 0..KEYS {
        let body = whitepay_order(&format!("twice-{i}"));
        let signature = whitepay_signature(WHITEPAY_TOKEN, &body);
        let (url_a, url_b) = (a.url("whitepay"), b.url("whitepay"));
        let headers = [("Signature", signature)];
        let (first, second) = tokio::join!(
            post(&url_a, body.clone(), &headers),
            post(&url_b, body, &headers),
        );
        assert_eq!((first.0, second.0), (200, 200), "both replicas ack key {i}");
    }
    assert_eq!(config.outbox_count(None), KEYS as i64, "one row per key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_paused_past_its_lease_has_its_late_outcomes_refused() {
    // A's publishes wait for confirms when it is paused: its proxy is frozen.
    // The folder and exchange are bound, not `..`: unbound fields would be dropped
    // (the exchange deleted) at the end of this statement.
    let BrokerSplit {
        _dir,
        _exchange,
        mut consumer,
        proxy,
        a,
        b,
    } = BrokerSplit::start("paused").await;
    proxy.freeze();
    let mut acked = AckedSteps::new();
    for s in 0..32 {
        let subject = format!("paused-{s}-{}", uuid::Uuid::new_v4().simple());
        assert_eq!(
            a.post_whitepay(&whitepay_order_at(&subject, ORDER_LIFE[0]))
                .await
                .0,
            200
        );
        acked.insert(subject, vec![ORDER_LIFE[0].to_owned()]);
    }
    // A has published its share and waits for confirms; now it stops for longer
    // than its lease.
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.pause();
    tokio::time::sleep(Duration::from_secs(6)).await;
    for (subject, steps) in &mut acked {
        assert_eq!(
            b.post_whitepay(&whitepay_order_at(subject, ORDER_LIFE[1]))
                .await
                .0,
            200
        );
        steps.push(ORDER_LIFE[1].to_owned());
    }
    proxy.thaw();
    a.resume();
    // A's confirms time out (or arrive) after the resume; its outcomes must be
    // refused, since B took the partitions over.
    wait_until(
        "the paused replica's outcomes are refused",
        hookrelay::publisher::CONFIRM_TIMEOUT + Duration::from_secs(15),
        async || a.metric("hookrelay_outbox_fenced_settles_total").await > 0.0,
    )
    .await;
    let delivered = drain(
        &mut consumer,
        &acked,
        Delivered::new(),
        Duration::from_secs(20),
    )
    .await;
    let v = judge(&acked, &delivered);
    report(
        "replicas",
        "paused past the lease",
        &v,
        &format!(
            "fenced_settles={}",
            a.metric("hookrelay_outbox_fenced_settles_total").await
        ),
    );
    assert_eq!((v.lost, v.phantom, v.out_of_order), (0, 0, 0), "{v:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_the_broker_hands_its_subjects_to_the_others() {
    let mut split = BrokerSplit::start("brokercut").await;
    split.proxy.cut();
    wait_until(
        "the replica without a broker gave its partitions away",
        Duration::from_secs(20),
        async || split.shares().await == (0.0, 256.0),
    )
    .await;
    // It still takes webhooks, and the other replica publishes them.
    let mut acked = AckedSteps::new();
    for s in 0..20 {
        let subject = format!("handed-{s}-{}", uuid::Uuid::new_v4().simple());
        assert_eq!(
            split
                .a
                .post_whitepay(&whitepay_order_at(&subject, ORDER_LIFE[0]))
                .await
                .0,
            200
        );
        acked.insert(subject, vec![ORDER_LIFE[0].to_owned()]);
    }
    let delivered = drain(
        &mut split.consumer,
        &acked,
        Delivered::new(),
        Duration::from_secs(20),
    )
    .await;
    let v = judge(&acked, &delivered);
    assert_eq!(
        (v.lost, v.phantom),
        (0, 0),
        "published while A is still cut: {v:?}"
    );
    split.proxy.restore();
    wait_until(
        "the replica takes its share again once the broker is back",
        Duration::from_secs(30),
        async || split.shares().await == (128.0, 128.0),
    )
    .await;
}

/// Cuts one replica off PostgreSQL twice, once for less than its lease and once for
/// more, under load on both replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_postgresql_answers_503_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exchange = TestExchange::new("pgcut");
    let mut consumer = Consumer::bind(&exchange, "#").await;
    let database = Arc::new(Database::create());
    let proxy = TcpProxy::start(&database.addr().to_string()).await;
    let mut config_a = replica_config(&exchange, dir.path(), Arc::clone(&database));
    config_a.database_via = Some(proxy.addr);
    let config_b = replica_config(&exchange, dir.path(), database);
    let a = Relay::start(&config_a);
    let b = Relay::start(&config_b);
    let load = Load::start(
        vec![a.url("whitepay"), b.url("whitepay")],
        12,
        Duration::from_millis(20),
        Walk::OrderLives,
    );
    let mut unready = 0;
    // Webhooks refused during the cuts; like a provider, the test sends them again
    // until they are acked.
    let mut probes = AckedSteps::new();
    for cut in [Duration::from_secs(1), Duration::from_secs(6)] {
        tokio::time::sleep(Duration::from_secs(2)).await;
        proxy.cut();
        let cut_at = Instant::now();
        let probe = format!("during-cut-{}", uuid::Uuid::new_v4().simple());
        let (status, reply) = a.post_whitepay(&whitepay_order(&probe)).await;
        probes.insert(probe, vec!["COMPLETE".to_owned()]);
        assert_eq!(status, 503, "{}", String::from_utf8_lossy(&reply));
        assert!(
            cut_at.elapsed() < Duration::from_secs(9),
            "503 within a bounded wait"
        );
        if a.readyz().await.0 == 503 {
            unready += 1;
        }
        tokio::time::sleep(cut.saturating_sub(cut_at.elapsed())).await;
        proxy.restore();
    }
    for probe in probes.keys() {
        wait_until(
            "the cut replica serves again",
            Duration::from_secs(20),
            async || a.post_whitepay(&whitepay_order(probe)).await.0 == 200,
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let LoadOutcome {
        mut acked,
        refusals,
        ..
    } = acked_by(load).await;
    acked.extend(probes);
    let delivered = drain(
        &mut consumer,
        &acked,
        Delivered::new(),
        Duration::from_secs(30),
    )
    .await;
    let v = judge(&acked, &delivered);
    report(
        "replicas",
        "cut off PostgreSQL",
        &v,
        &format!("refused_then_retried={refusals}"),
    );
    assert_eq!(unready, 2, "unready during both cuts");
    assert_eq!((v.lost, v.phantom, v.out_of_order), (0, 0, 0), "{v:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_restarted_under_load_costs_503s_and_no_acked_webhook() {
    let server = PgServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let exchange = TestExchange::new("pgrestart");
    let mut consumer = Consumer::bind(&exchange, "#").await;
    let config = replica_config(
        &exchange,
        dir.path(),
        Arc::new(Database::create_on(server.port)),
    );
    let (a, b) = (Relay::start(&config), Relay::start(&config));
    let load = Load::start(
        vec![a.url("whitepay"), b.url("whitepay")],
        12,
        Duration::from_millis(10),
        Walk::OrderLives,
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.stop_immediate();
    let (status, _) = a.post_whitepay(&whitepay_order("while-down")).await;
    assert_eq!(status, 503, "no ack while PostgreSQL is down");
    assert_eq!(a.readyz().await.0, 503, "unready while PostgreSQL is down");
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.start_again();
    wait_until("ready again", Duration::from_secs(45), async || {
        a.readyz().await.0 == 200 && b.readyz().await.0 == 200
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (v, LoadOutcome { refusals, .. }) =
        judged(load, &mut consumer, Duration::from_secs(30)).await;
    report(
        "replicas",
        "PostgreSQL restarted (-m immediate)",
        &v,
        &format!("refused_then_retried={refusals}"),
    );
    assert!(refusals > 0, "the restart cost some 503s");
    assert_eq!((v.lost, v.phantom, v.out_of_order), (0, 0, 0), "{v:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_held_open_holds_publishing_back_and_says_so() {
    // A server of its own: the held transaction would hold back every other test's
    // outbox on a shared server.
    let server = PgServer::start();
    let database = Arc::new(Database::create_on(server.port));
    let mut app = one_replica("fence", Arc::clone(&database)).start().await;
    let (relay, consumer) = (&app.relay, &mut app.consumer);
    let (holder, connection) = tokio_postgres::connect(&database.url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    holder
        .batch_execute("BEGIN; SELECT pg_current_xact_id();")
        .await
        .expect("a transaction that holds an id");
    for i in 0..5 {
        assert_eq!(
            relay
                .post_whitepay(&whitepay_order(&format!("fenced-{i}")))
                .await
                .0,
            200
        );
    }
    wait_until(
        "the metric shows the fenced rows",
        Duration::from_secs(10),
        async || relay.metric("hookrelay_outbox_fenced_rows").await == 5.0,
    )
    .await;
    assert!(
        relay.metric("hookrelay_outbox_fence_wait_seconds").await > 0.0,
        "and how long they have waited"
    );
    assert!(
        consumer.next(Duration::from_secs(2)).await.is_none(),
        "nothing is published past the open transaction"
    );
    holder.batch_execute("COMMIT").await.expect("commit");
    let got = consumer.collect(5, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 5, "published once the transaction ended");
    // The gauges are the latest count, at most a second old.
    wait_until(
        "the metric shows no fenced rows",
        Duration::from_secs(5),
        async || relay.metric("hookrelay_outbox_fenced_rows").await == 0.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_reaches_postgresql_over_tls_with_sslmode_require() {
    let database = Arc::new(Database::create());
    assert_eq!(
        database.sql("SHOW ssl"),
        "on",
        "the machine's PostgreSQL serves TLS (Debian's default, with its snakeoil certificate)"
    );
    let url = database.url().replace("sslmode=disable", "sslmode=require");
    let mut app = one_replica("pgtls", Arc::clone(&database))
        .env("HOOKRELAY_OUTBOX_URL", url)
        .start()
        .await;
    assert_eq!(
        app.relay.post_whitepay(&whitepay_order("over-tls")).await.0,
        200
    );
    assert!(app.consumer.next(Duration::from_secs(20)).await.is_some());
    let plain = database.sql(&format!(
        "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
         WHERE a.datname = '{}' AND a.application_name = 'hookrelay' AND NOT s.ssl",
        database.name
    ));
    let encrypted = database.sql(&format!(
        "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
         WHERE a.datname = '{}' AND a.application_name = 'hookrelay' AND s.ssl",
        database.name
    ));
    assert_eq!(plain, "0", "no connection of the relay is in the clear");
    assert_ne!(encrypted, "0", "the relay's connections are encrypted");
}

/// A backlog builds faster than autovacuum looks, and autovacuum may be off: the
/// relay analyzes its own tables once their rows changed by a fifth, so the fetch
/// is planned on the rows there are and not on an empty table's statistics (which
/// made it sort every pending row to return 256).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_that_grew_fast_are_analyzed_by_the_relay_itself() {
    let app = one_replica("analyze", Arc::new(Database::create()))
        .no_consumer()
        .start()
        .await;
    let analyzed = || {
        app.relay.logs().iter().any(|line| {
            let line: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
            line["message"] == "maintained an outbox table" && line["command"] == "analyze"
        })
    };
    assert!(!analyzed(), "a new outbox starts unanalyzed");
    // Rows written behind the relay's back, already published so it has nothing
    // to do with them but count them.
    let rows = (1..=15_000).map(|n: i64| Seed {
        source: "whitepay".to_owned(),
        body: whitepay_order(&format!("grown-{n}")),
        headers_json: "{}".to_owned(),
        received_at_us: n,
        traceparent: String::new(),
        state: SeedState::Published { at_us: n },
    });
    hookrelay::testing::seed(&app.config.relay_config(), rows)
        .await
        .expect("seed");
    wait_until(
        "the relay analyzed its delivery table",
        Duration::from_secs(30),
        async || analyzed(),
    )
    .await;
}

/// Counts that PostgreSQL is slow to answer (its tables locked by another
/// session) are taken one at a time: probes and scrapes that give up waiting
/// leave the running count to the next caller instead of stacking theirs beside
/// it, and they are served the latest count with its age.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_counts_are_taken_one_at_a_time_and_served_with_their_age() {
    let database = Arc::new(Database::create());
    let app = one_replica("slowcounts", Arc::clone(&database))
        .no_consumer()
        .start()
        .await;
    wait_until("a first count", Duration::from_secs(10), async || {
        app.relay
            .metric("hookrelay_outbox_counted_age_seconds")
            .await
            > 0.0
    })
    .await;
    let lock = hookrelay::testing::hold_write_lock(&app.config.outbox_url())
        .await
        .expect("lock the outbox's tables");
    // A scraper and a prober every half second for six seconds.
    for _ in 0..12 {
        let started = Instant::now();
        let (_, (status, _)) = tokio::join!(app.relay.metrics(), app.relay.readyz());
        assert!(status == 200 || status == 503);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "answered within the probe's bound"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let counting: i64 = database
        .sql(&format!(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = '{}' AND pid <> pg_backend_pid() AND state <> 'idle'
               AND query LIKE '%count(*) FROM%'",
            database.name
        ))
        .parse()
        .expect("a number");
    assert!(counting <= 1, "{counting} counts run in the server at once");
    let (_, ready) = app.relay.readyz().await;
    let age = ready["outbox"]["counted_seconds_ago"]
        .as_f64()
        .unwrap_or(0.0);
    assert!(
        age >= 5.0,
        "the count served is the latest one, with its age: {ready}"
    );
    drop(lock);
}

/// The lease heartbeat has a connection of its own: a pool that the writers,
/// the counts and the operator's reads hold (here, all stuck behind a lock of the
/// outbox's tables) does not cost the replica its leases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_are_renewed_while_the_pool_is_saturated() {
    let database = Arc::new(Database::create());
    let app = one_replica("saturated", Arc::clone(&database))
        .no_consumer()
        .start()
        .await;
    wait_until(
        "every partition leased",
        Duration::from_secs(20),
        async || app.relay.metric("hookrelay_outbox_partitions_owned").await == 256.0,
    )
    .await;
    let lock = hookrelay::testing::hold_write_lock(&app.config.outbox_url())
        .await
        .expect("lock the outbox's tables");
    // Webhooks for the writers, searches for the operator's reads: every pooled
    // connection waits on the lock.
    let admin = Admin::of(&app.relay);
    let mut held = Vec::new();
    for i in 0..8 {
        let url = app.relay.url("whitepay");
        let body = whitepay_order(&format!("saturate-{i}"));
        let signature = whitepay_signature(WHITEPAY_TOKEN, &body);
        held.push(tokio::spawn(async move {
            let _ = post(&url, body, &[("Signature", signature)]).await;
        }));
    }
    for _ in 0..8 {
        let admin = admin.clone();
        held.push(tokio::spawn(async move {
            let _ = admin.get("/api/v1/events?subject=nowhere").await;
        }));
    }
    // Three leases long.
    let mut fewest = 256.0_f64;
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        fewest = fewest.min(app.relay.metric("hookrelay_outbox_partitions_owned").await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(lock);
    for task in held {
        let _ = task.await;
    }
    assert_eq!(
        fewest, 256.0,
        "no lease was lost while the pool was saturated"
    );
    assert!(
        !app.relay
            .logs()
            .iter()
            .any(|line| line.contains("renewing partition leases timed out")
                || line.contains("leases lost")),
        "no renewal failed"
    );
}

/// A replica that stays connected to the broker but gets nowhere publishing (its
/// user may not write to the exchange: every publish is refused, the channel
/// recovers, and again) hands its subjects to the other replica within a bound,
/// and its /readyz says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_publisher_gets_nowhere_hands_its_subjects_to_the_others() {
    let user = format!("hr_nowrite_{}", uuid::Uuid::new_v4().simple());
    let ctl = |args: &[&str]| {
        let out = std::process::Command::new("rabbitmqctl")
            .args(args)
            .output()
            .expect("rabbitmqctl");
        assert!(out.status.success(), "rabbitmqctl {args:?}: {out:?}");
    };
    ctl(&["add_user", &user, "nowrite"]);
    // It may declare (configure) and bind (read; write on the unrouted queue), but
    // not publish to the exchange.
    ctl(&[
        "set_permissions",
        "-p",
        "/",
        &user,
        ".*",
        "\\.unrouted$",
        ".*",
    ]);
    let dir = tempfile::tempdir().expect("tempdir");
    let exchange = TestExchange::new("nowhere");
    let mut consumer = Consumer::bind(&exchange, "#").await;
    let database = Arc::new(Database::create());
    let mut config_a = replica_config(&exchange, dir.path(), Arc::clone(&database));
    config_a.env.push((
        "HOOKRELAY_AMQP_URL".to_owned(),
        format!("amqp://{user}:nowrite@{BROKER}/%2f"),
    ));
    let config_b = replica_config(&exchange, dir.path(), database);
    let a = Relay::start(&config_a);
    let b = Relay::start(&config_b);
    let mut acked = AckedSteps::new();
    for s in 0..20 {
        let subject = format!("nowhere-{s}-{}", uuid::Uuid::new_v4().simple());
        assert_eq!(
            a.post_whitepay(&whitepay_order_at(&subject, ORDER_LIFE[0]))
                .await
                .0,
            200
        );
        acked.insert(subject, vec![ORDER_LIFE[0].to_owned()]);
    }
    // Stuck for a confirm timeout and a lease, then handed on.
    let delivered = drain(
        &mut consumer,
        &acked,
        Delivered::new(),
        hookrelay::publisher::CONFIRM_TIMEOUT + Duration::from_secs(30),
    )
    .await;
    let v = judge(&acked, &delivered);
    let said = a
        .logs()
        .iter()
        .any(|line| line.contains("the publisher has got nowhere"));
    let (_, ready) = a.readyz().await;
    drop((a, b));
    ctl(&["delete_user", &user]);
    assert_eq!(
        (v.lost, v.phantom),
        (0, 0),
        "the other replica published the stuck one's subjects: {v:?}"
    );
    assert!(said, "the stuck replica's log says why");
    assert!(
        ready["publisher"]["stuck_seconds"].as_f64().is_some(),
        "its /readyz shows how long its publisher got nowhere: {ready}"
    );
}
