//! Wall clocks that disagree or step: a replica whose clock runs ahead does not
//! delay the webhooks it takes, on any replica; a clock that steps back does not
//! delay the webhooks taken before the step. The relays run under libfaketime
//! (Debian's `faketime`), which shifts the wall clock of one process only.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;

/// Debian's libfaketime for multithreaded programs.
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// The environment that runs a relay's wall clock `offset` off (`+60s`, `-2m`)
/// from the one given in `file` (read again at every call, so a test can step
/// the clock while the relay runs); monotonic time is left alone, so its timers
/// run as they would.
fn faketime(file: &Path, offset: &str) -> Vec<(String, String)> {
    assert!(
        Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} is missing: install Debian's faketime (.ci/run does)"
    );
    std::fs::write(file, offset).expect("write the offset");
    [
        ("LD_PRELOAD", LIBFAKETIME),
        ("FAKETIME_TIMESTAMP_FILE", &file.display().to_string()),
        ("FAKETIME_NO_CACHE", "1"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// A replica whose clock runs a minute ahead stores webhooks that every replica
/// publishes at once: due is decided by the database's clock, not the ingesting
/// replica's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_clock_runs_ahead_delays_no_webhook() {
    let database = Arc::new(Database::create());
    let honest = TestApp::build(Backend::Postgres, "clockahead")
        .database(Arc::clone(&database))
        .env("HOOKRELAY_OUTBOX_LEASE", "4s")
        .start()
        .await;
    let mut mine = honest.consumer;
    let clock = tempfile::NamedTempFile::new().expect("a file");
    let mut ahead = honest.config.clone();
    ahead.env.extend(faketime(clock.path(), "+60s"));
    let fast = Relay::start(&ahead);
    // Both replicas lease partitions (two live members share them).
    wait_until(
        "the fast replica leases partitions",
        Duration::from_secs(30),
        async || fast.metric("hookrelay_outbox_partitions_owned").await > 0.0,
    )
    .await;
    const WEBHOOKS: usize = 40;
    for i in 0..WEBHOOKS {
        let body = whitepay_order(&format!("ahead-{i}"));
        assert_eq!(fast.post_whitepay(&body).await.0, 200);
    }
    let delivered = mine.collect(WEBHOOKS, Duration::from_secs(8)).await;
    assert_eq!(
        delivered.len(),
        WEBHOOKS,
        "every webhook the fast replica took was published within seconds, not a minute"
    );
}

/// The wall clock steps back two minutes after webhooks were stored: they are
/// published as soon as the broker is back, not two minutes later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_that_steps_back_delays_no_stored_webhook() {
    let clock = tempfile::NamedTempFile::new().expect("a file");
    let mut app = TestApp::build(Backend::Sqlite, "clockback")
        .broker_cut()
        .envs(faketime(clock.path(), "+0"))
        .start()
        .await;
    const WEBHOOKS: usize = 5;
    for i in 0..WEBHOOKS {
        let body = whitepay_order(&format!("back-{i}"));
        assert_eq!(app.relay.post_whitepay(&body).await.0, 200);
    }
    std::fs::write(clock.path(), "-120s").expect("step the clock back");
    app.proxy.restore();
    let delivered = app
        .consumer
        .collect(WEBHOOKS, Duration::from_secs(10))
        .await;
    assert_eq!(
        delivered.len(),
        WEBHOOKS,
        "the webhooks stored before the step were published at once"
    );
}
