//! Partition leases: which replica publishes which subjects.
//!
//! Subjects hash into [`PARTITIONS`] partitions. Each live replica leases about
//! `PARTITIONS / live replicas` of them in `hr_partition`, and only the owner
//! fetches, publishes and settles their rows, so one subject has one publisher and
//! its order holds across replicas.
//!
//! Every tick (a fifth of the lease) a replica heartbeats, renews its leases, and
//! takes or gives back partitions towards its fair share. It stops publishing a
//! partition `lease − tick` after the renewal was *sent*, by its own monotonic
//! clock, before the database could hand the partition to anyone else; and each
//! acquisition bumps the partition's epoch, which every settle checks, so a replica
//! that was paused or cut off cannot record anything once its lease has passed.
//!
//! Every statement that locks several `hr_partition` rows locks them in `p` order,
//! so two replicas' renewals, give-backs and takeovers never deadlock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use tokio::sync::watch;
use tokio_postgres::Client;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::connect::Target;
use super::error::{CHECKOUT_TIMEOUT, pg_error, pooled};
use super::schema::PARTITIONS;
use super::sql;
use crate::outbox::OutboxError;
use crate::pace::Pace;

/// Longest wait for a partition's rows in flight before it is given back anyway:
/// longer than a publish batch may take to be confirmed (10 s). A row whose outcome
/// was not recorded by then is published again by the next owner.
const RELEASE_PATIENCE: Duration = Duration::from_secs(15);

/// A partition this replica holds.
#[derive(Debug, Clone, Copy)]
struct Lease {
    epoch: i64,
    /// After this the replica must not publish the partition's rows.
    valid_until: Instant,
    /// Being given back: nothing new is fetched; it is released once its rows in
    /// flight are settled.
    releasing_since: Option<Instant>,
}

/// This replica's leases, shared by the lease task and the outbox's fetch, publish
/// check and settle.
pub(super) struct Leases {
    pub(super) replica: String,
    ttl: Duration,
    held: Mutex<HashMap<i16, Lease>>,
}

impl Leases {
    pub(super) fn new(replica: String, ttl: Duration) -> Self {
        Self {
            replica,
            ttl,
            held: Mutex::new(HashMap::new()),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<i16, Lease>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How often leases are renewed.
    pub(super) fn tick(&self) -> Duration {
        self.ttl / 5
    }

    /// Partitions to fetch from, with their epochs: held, valid, not being given back.
    pub(super) fn fetchable(&self) -> Vec<(i16, i64)> {
        let now = Instant::now();
        self.held()
            .iter()
            .filter(|(_, l)| l.valid_until > now && l.releasing_since.is_none())
            .map(|(p, l)| (*p, l.epoch))
            .collect()
    }

    /// Whether a row fetched under `(part, epoch)` may still be published.
    pub(super) fn valid(&self, part: i16, epoch: i64) -> bool {
        self.held()
            .get(&part)
            .is_some_and(|l| l.epoch == epoch && l.valid_until > Instant::now())
    }

    /// How many partitions are held.
    pub(super) fn count(&self) -> usize {
        self.held().len()
    }

    /// One tick: heartbeat, renew, then move towards the fair share. `in_flight`
    /// tells whether a partition still has rows published and not yet settled.
    /// A replica that cannot publish (its broker link has been down for a lease)
    /// leaves the member list and gives all its partitions back, so the others
    /// publish its subjects meanwhile; it still takes webhooks.
    pub(super) async fn tick_once(
        &self,
        client: &Client,
        in_flight: impl Fn(i16) -> bool,
        publishing: bool,
    ) -> Result<(), OutboxError> {
        let sent = Instant::now();
        let ttl = self.ttl.as_secs_f64();
        let valid_until = sent + self.ttl - self.tick();
        let heartbeat = if publishing {
            sql::HEARTBEAT
        } else {
            sql::LEAVE
        };
        client
            .execute(heartbeat, &[&self.replica])
            .await
            .map_err(pg_error)?;
        // Members gone for ten leases (killed replicas, the write probes of
        // replicas that never published) are forgotten.
        client
            .execute(sql::FORGET_MEMBERS, &[&(ttl * 10.0)])
            .await
            .map_err(pg_error)?;
        let live: i64 = client
            .query_one(sql::LIVE_MEMBERS, &[&ttl])
            .await
            .map_err(pg_error)?
            .get(0);
        // Renewal reports what the database says is ours; anything else was taken.
        let renewed = client
            .query(sql::RENEW, &[&self.replica, &ttl])
            .await
            .map_err(pg_error)?;
        {
            let mut held = self.held();
            let mut next = HashMap::with_capacity(renewed.len());
            for row in &renewed {
                let (p, epoch): (i16, i64) = (row.get(0), row.get(1));
                let releasing_since = held
                    .get(&p)
                    .filter(|l| l.epoch == epoch)
                    .and_then(|l| l.releasing_since);
                next.insert(
                    p,
                    Lease {
                        epoch,
                        valid_until,
                        releasing_since,
                    },
                );
            }
            let lost = held.keys().filter(|p| !next.contains_key(p)).count();
            if lost > 0 {
                tracing::warn!(
                    partitions = lost,
                    "leases lost to another replica (this one was paused or cut off); their rows are published by the new owner"
                );
            }
            *held = next;
        }
        let share = if publishing {
            usize::try_from((i64::from(PARTITIONS) + live.max(1) - 1) / live.max(1))
                .unwrap_or(usize::from(PARTITIONS.unsigned_abs()))
        } else {
            0
        };
        self.give_back(client, share, in_flight).await?;
        self.take(client, share, valid_until).await
    }

    /// Marks partitions over the fair share for release, and releases those whose
    /// rows in flight are settled (or that waited out a confirm timeout).
    async fn give_back(
        &self,
        client: &tokio_postgres::Client,
        share: usize,
        in_flight: impl Fn(i16) -> bool,
    ) -> Result<(), OutboxError> {
        let done: Vec<i16> = {
            let mut held = self.held();
            let keeping = held
                .values()
                .filter(|l| l.releasing_since.is_none())
                .count();
            if keeping > share {
                let mut extra: Vec<i16> = held
                    .iter()
                    .filter(|(_, l)| l.releasing_since.is_none())
                    .map(|(p, _)| *p)
                    .collect();
                extra.sort_unstable_by(|a, b| b.cmp(a));
                for p in extra.into_iter().take(keeping - share) {
                    if let Some(lease) = held.get_mut(&p) {
                        lease.releasing_since = Some(Instant::now());
                    }
                }
            }
            held.iter()
                .filter(|(p, l)| {
                    l.releasing_since
                        .is_some_and(|since| !in_flight(**p) || since.elapsed() > RELEASE_PATIENCE)
                })
                .map(|(p, _)| *p)
                .collect()
        };
        if done.is_empty() {
            return Ok(());
        }
        client
            .execute(sql::GIVE_BACK, &[&self.replica, &done])
            .await
            .map_err(pg_error)?;
        let mut held = self.held();
        for p in &done {
            held.remove(p);
        }
        tracing::info!(
            partitions = done.len(),
            "gave partitions back for rebalancing"
        );
        Ok(())
    }

    /// Takes free or expired partitions up to the fair share, and any whose lease
    /// passed a whole lease ago whatever the share, so none stays orphaned (a
    /// partition just given back is not orphaned: its `lease_until` is the moment
    /// it was given back, and the replicas under their share take it first).
    async fn take(
        &self,
        client: &tokio_postgres::Client,
        share: usize,
        valid_until: Instant,
    ) -> Result<(), OutboxError> {
        let wanted = i64::try_from(share.saturating_sub(self.count())).unwrap_or(0);
        let ttl = self.ttl.as_secs_f64();
        let acquire = |orphaned_for: f64, limit: i64| {
            let replica = self.replica.clone();
            async move {
                client
                    .query(sql::TAKE, &[&replica, &ttl, &orphaned_for, &limit])
                    .await
                    .map_err(pg_error)
            }
        };
        let mut rows = Vec::new();
        if wanted > 0 {
            rows.extend(acquire(0.0, wanted).await?);
        }
        rows.extend(acquire(ttl, i64::from(PARTITIONS)).await?);
        if rows.is_empty() {
            return Ok(());
        }
        let mut held = self.held();
        for row in &rows {
            held.insert(
                row.get(0),
                Lease {
                    epoch: row.get(1),
                    valid_until,
                    releasing_since: None,
                },
            );
        }
        tracing::info!(taken = rows.len(), held = held.len(), "partitions leased");
        Ok(())
    }

    /// Gives every partition back and leaves the member list, so that the others
    /// take over at their next tick instead of after the lease.
    pub(super) async fn leave(&self, pool: &Pool) -> Result<(), OutboxError> {
        self.held().clear();
        let client = pooled(pool).await?;
        client
            .execute(sql::GIVE_ALL_BACK, &[&self.replica])
            .await
            .map_err(pg_error)?;
        client
            .execute(sql::LEAVE, &[&self.replica])
            .await
            .map_err(pg_error)?;
        Ok(())
    }
}

/// The lease task's own connection to the database: renewals never wait for a
/// pooled connection held by the writers, the settles, the counts or the
/// operator's reads (a saturated pool would otherwise cost a replica its leases
/// for no reason). Connected again when it drops.
pub(super) struct Session {
    target: Target,
    tls: MakeRustlsConnect,
    client: Option<Client>,
}

impl Session {
    pub(super) fn new(target: Target, tls: MakeRustlsConnect) -> Self {
        Self {
            target,
            tls,
            client: None,
        }
    }

    /// The connection, made again if it is closed.
    async fn client(&mut self) -> Result<&Client, OutboxError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            let connecting = self.target.config.connect(self.tls.clone());
            let (client, connection) = tokio::time::timeout(CHECKOUT_TIMEOUT, connecting)
                .await
                .map_err(|_| OutboxError::TimedOut(CHECKOUT_TIMEOUT.as_secs()))?
                .map_err(pg_error)?;
            tokio::spawn(connection);
            self.client = Some(client);
        }
        self.client.as_ref().ok_or(OutboxError::Closed)
    }
}

/// What says whether this replica can publish: its broker link and its
/// publisher's progress.
pub(super) struct Publishing {
    /// Where the broker link's state is.
    pub(super) metrics: Arc<crate::metrics::Metrics>,
    /// Where the publisher's progress is.
    pub(super) pace: Arc<Pace>,
    /// How long the publisher may get nowhere before this replica hands its
    /// partitions on.
    pub(super) stuck_after: Duration,
}

/// Renews and balances the leases every tick until `stop`. A replica that cannot
/// publish (its broker link down for a lease, or its publisher getting nowhere
/// for a confirm timeout and a lease: a broker that blocks it, confirms that
/// never come) leaves the member list and gives its partitions to the others.
pub(super) async fn run(
    leases: Arc<Leases>,
    mut session: Session,
    in_flight: impl Fn(i16) -> bool + Send + Sync + 'static,
    publishing: Publishing,
    mut stop: watch::Receiver<bool>,
) {
    let stuck_after = publishing.stuck_after;
    // When the broker link was last seen up (or the task started).
    let mut broker_seen = Instant::now();
    let mut able = true;
    loop {
        if publishing.metrics.broker.is_connected() {
            broker_seen = Instant::now();
        }
        let stuck = publishing.pace.stuck_for();
        let now_able = broker_seen.elapsed() < leases.ttl && stuck < stuck_after;
        if now_able != able {
            able = now_able;
            if able {
                tracing::info!("publishing again: taking a share of the partitions again");
            } else if stuck >= stuck_after {
                tracing::warn!(
                    stuck_s = stuck.as_secs(),
                    "the publisher has got nowhere for {} s (no publish confirmed, rows to publish): giving this replica's partitions to the others (webhooks are still taken)",
                    stuck.as_secs()
                );
            } else {
                tracing::warn!(
                    "the broker has been unreachable for longer than the lease: giving this replica's partitions to the others (webhooks are still taken)"
                );
            }
        }
        let tick = tokio::time::timeout(leases.tick(), async {
            let client = session.client().await?;
            leases.tick_once(client, &in_flight, able).await
        });
        match tick.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot renew partition leases; retrying")
            }
            Err(_) => tracing::warn!("renewing partition leases timed out; retrying"),
        }
        publishing
            .metrics
            .outbox_partitions_owned
            .set(i64::try_from(leases.count()).unwrap_or(0));
        tokio::select! {
            () = tokio::time::sleep(leases.tick()) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
