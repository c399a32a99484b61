//! Test harness: one relay of a test's own with its folder, exchange and consumer,
//! started in one call ([`app`]), over the lower layer: the real `hookrelay` binary
//! as a child process ([`relay`]), a real RabbitMQ on 127.0.0.1:5672 with an
//! exchange and a consumer of the test's own ([`broker`]), a TCP proxy that can cut
//! the relay off the broker ([`proxy`]), the bodies the tests send ([`fixtures`])
//! and the event contract every consumed message is checked against ([`schema`]).

pub mod admin;
pub mod app;
pub mod broker;
pub mod ccpayment;
pub mod cluster;
pub mod fixtures;
pub mod load;
pub mod oracle;
pub mod partitions;
pub mod postgres;
pub mod proxy;
pub mod relay;
pub mod schema;

pub use app::*;
pub use broker::*;
pub use ccpayment::*;
pub use cluster::*;
pub use fixtures::*;
pub use load::*;
pub use oracle::*;
pub use partitions::*;
pub use postgres::*;
pub use proxy::*;
pub use relay::*;

/// Runs each named async test, `async fn NAME(backend: Backend)`, once per outbox
/// backend, as `NAME::sqlite` and `NAME::postgres`: one body, both backends.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::support::Backend::Sqlite).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::support::Backend::Postgres).await
            }
        }
    )*};
}

/// Whether the tests run in CI (`CI=true`), where every tool the tests use is
/// installed by `.ci/run` and none may be skipped.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// A loopback port free now (nothing listens on it until someone binds it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free loopback port")
        .port()
}

/// Waits until `done` says so, checking every 100 ms; fails the test, naming
/// `what`, after `within`.
pub async fn wait_until(
    what: &str,
    within: std::time::Duration,
    mut done: impl AsyncFnMut() -> bool,
) {
    let deadline = std::time::Instant::now() + within;
    while !done().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
