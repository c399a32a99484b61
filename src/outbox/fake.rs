//! For unit tests: an outbox that never answers (for the code that must not wait
//! on it forever), webhooks to store, and a scenario each driver's tests run.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;

use super::row::{FullRow, Row};
use super::{
    Due, EventFilter, InsertOutcome, Inventory, NewEvent, Operate, OutboxError, Pipe, Settlement,
    Stats, Window,
};

/// Every call waits forever; `failed` never resolves. Counts the calls of
/// `stats`.
#[derive(Default)]
pub(crate) struct Hanging {
    /// How often `stats` was called.
    pub(crate) counted: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl Pipe for Hanging {
    async fn insert(&self, _: NewEvent) -> Result<InsertOutcome, OutboxError> {
        std::future::pending().await
    }
    async fn fetch_due(&self, _: usize, _: &HashSet<i64>) -> Result<Due, OutboxError> {
        std::future::pending().await
    }
    async fn settle(&self, _: Arc<[Settlement]>) -> Result<(), OutboxError> {
        std::future::pending().await
    }
    async fn failed(&self) {
        std::future::pending().await
    }
}

/// A recovery ledger that is closed, for a fake `Operate` (of which `Ledger` is
/// a part) whose tests do not recover.
macro_rules! closed_ledger {
    ($fake:ty) => {
        #[async_trait::async_trait]
        impl crate::outbox::recall::Ledger for $fake {
            fn dialect(&self) -> crate::outbox::sql::Dialect {
                crate::outbox::sql::Dialect::Sqlite
            }

            async fn transact(
                &self,
                _statements: Vec<crate::outbox::recall::Statement>,
            ) -> Result<crate::outbox::recall::Results, crate::outbox::OutboxError> {
                Err(crate::outbox::OutboxError::Closed)
            }
        }
    };
}
pub(crate) use closed_ledger;

closed_ledger!(Hanging);

#[async_trait]
impl Operate for Hanging {
    async fn stats(&self) -> Result<Stats, OutboxError> {
        self.counted
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::future::pending().await
    }
    async fn check_writable(&self) -> Result<(), OutboxError> {
        std::future::pending().await
    }
    async fn replication(&self) -> Result<super::Replication, OutboxError> {
        Ok(super::Replication::Local)
    }

    async fn inventory(&self) -> Result<Inventory, OutboxError> {
        std::future::pending().await
    }
    async fn id_range(&self) -> Result<Option<(i64, i64)>, OutboxError> {
        std::future::pending().await
    }
    async fn find(&self, _: &EventFilter, _: Window, _: usize) -> Result<Vec<Row>, OutboxError> {
        std::future::pending().await
    }
    async fn show(&self, _: i64) -> Result<Option<FullRow>, OutboxError> {
        std::future::pending().await
    }
    async fn replay(&self, _: Vec<i64>) -> Result<u64, OutboxError> {
        std::future::pending().await
    }
    async fn release(&self, _: Vec<i64>) -> Result<u64, OutboxError> {
        std::future::pending().await
    }
    async fn purge_published(&self, _: i64, _: usize) -> Result<u64, OutboxError> {
        std::future::pending().await
    }
    async fn forget_subjects(&self, _: i64, _: usize) -> Result<u64, OutboxError> {
        std::future::pending().await
    }
}

/// A webhook of source `whitepay` with `body`, unrecognized (so its subject and
/// key come from the body's bytes), received now.
pub(crate) fn event(body: &str) -> NewEvent {
    let origin = crate::event::Origin {
        provider: "whitepay",
        source: "whitepay",
        routing_prefix: "whitepay",
        redact: &[],
    };
    let parsed = crate::event::Parsed::unrecognized("test", None);
    let received = time::OffsetDateTime::now_utc();
    NewEvent {
        meta: crate::event::EventMeta::new(&origin, &parsed, body.as_bytes(), received),
        headers_json: "{}".to_owned(),
        body: bytes::Bytes::copy_from_slice(body.as_bytes()),
        received_at_us: crate::clock::micros(received),
        traceparent: String::new(),
    }
}

/// The sequence's life on a driver, run by each driver's tests: a subject's first
/// event is 1; its number survives the purge of its rows; it is forgotten only
/// once no row of the subject is left, and then starts again at 1.
pub(crate) async fn a_subject_is_forgotten_only_once_no_row_is_left<O: Pipe + Operate>(outbox: &O) {
    // Stores the body, waits until it is due (PostgreSQL's fence may hold it a
    // moment), settles its publish as the publisher would; its number.
    let publish = async |body: &str| {
        outbox.insert(event(body)).await.expect("insert");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let row = loop {
            let due = outbox.fetch_due(10, &HashSet::new()).await.expect("fetch");
            if let Some(row) = due.events.into_iter().next() {
                break row;
            }
            assert!(std::time::Instant::now() < deadline, "the row is due");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        let settled: Arc<[Settlement]> = Arc::from([Settlement::Published {
            id: row.id,
            first: row.place.first.clone(),
        }]);
        outbox.settle(settled).await.expect("settle");
        row.place.sequence
    };
    let everything = i64::MAX;
    assert_eq!(publish("kept").await, 1, "a subject's first event");
    assert_eq!(
        outbox.forget_subjects(everything, 10).await.ok(),
        Some(0),
        "a subject with a row left is kept"
    );
    assert_eq!(outbox.purge_published(everything, 10).await.ok(), Some(1));
    assert_eq!(
        publish("kept").await,
        2,
        "the number outlives the rows until the subject is forgotten"
    );
    assert_eq!(outbox.purge_published(everything, 10).await.ok(), Some(1));
    assert_eq!(outbox.forget_subjects(everything, 10).await.ok(), Some(1));
    assert_eq!(publish("kept").await, 1, "a forgotten subject starts again");
}
