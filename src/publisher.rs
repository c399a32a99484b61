//! The publisher: takes due rows from the outbox, publishes their CloudEvents to the
//! exchange with publisher confirms, and records what the broker said.
//!
//! A batch of up to [`WINDOW`] rows is published back to back, then a task awaits
//! every confirm against one deadline and writes the outcomes in one outbox
//! transaction, while the loop already publishes the next batch (at most
//! [`MAX_BATCHES_IN_FLIGHT`] batches, so at most `WINDOW × MAX_BATCHES_IN_FLIGHT`
//! confirms outstanding). A row becomes `published`
//! only on a broker ack that carries no returned message; anything else (nack,
//! return, timeout, dropped connection) leaves it pending with its next attempt
//! pushed back exponentially, with jitter.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation};
use tokio::sync::{Notify, watch};
use tracing::Instrument;

use crate::amqp::BrokerLink;
use crate::clock::now_micros;
use crate::event::{Sequence, cloudevent_json, partition_key};
use crate::metrics::Metrics;
use crate::outbox::{LONGEST_RETRY, OutboxError, PendingEvent, Pipe, Settlement, Unreadable};
use crate::pace::Pace;
use crate::telemetry;
use crate::telemetry::Throttle;

/// Most confirms outstanding at once (and rows per outbox fetch).
pub(crate) const WINDOW: usize = 256;
/// Bound on one batch's publishes and confirms.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the publisher looks for rows whose retry time has come, when no new
/// webhook wakes it sooner.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// Attempts after which a row that keeps failing permanently becomes `dead`.
/// Transient failures (broker down, timeouts, nacks) never make a row dead.
pub const MAX_PERMANENT_ATTEMPTS: u32 = 3;

/// RabbitMQ's default `max_message_size` (16 MiB since 3.13/4.x). Larger messages
/// would be refused, and the refusal closes the channel for the whole batch.
pub(crate) const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// The size in RabbitMQ's refusal of an oversized message ("PRECONDITION_FAILED -
/// message size 2000000 is larger than configured max size 1048576"), so the one
/// row it was about can be told from the others of its batch.
fn rejected_size(error: &str) -> Option<usize> {
    let rest = &error[error.find("message size ")? + "message size ".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    if !rest[digits.len()..].starts_with(" is larger than") {
        return None;
    }
    digits.parse().ok()
}

/// The retry schedule: 1 s doubling to 5 min, with jitter. Persisted per row as
/// `next_attempt_at`, so it survives restarts.
pub(crate) fn retry_delay(attempts: u32) -> Duration {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(Duration::from_secs(300))
        .with_jitter()
        .without_max_times()
        .build()
        .nth(attempts as usize)
        .map_or(LONGEST_RETRY, |delay| delay.min(LONGEST_RETRY))
}

/// Most publish batches awaiting their confirms at once. While one batch waits for
/// its confirms and its outcome commit, the next is already being published, so
/// neither the broker round trip nor the outbox fsync stalls the pipe. With 4 the
/// publisher fell behind a steady closed-loop ingest on two cores (its threads
/// idle, waiting for confirms from a broker short of CPU); with 8 it kept up and
/// published 7,293/s instead of 5,890/s under the bench's overload.
pub(crate) const MAX_BATCHES_IN_FLIGHT: usize = 8;

/// The publishing loop and what it needs.
pub(crate) struct Publisher {
    link: BrokerLink,
    exchange: String,
    /// `publish {exchange}`: every publish span's name, built once.
    span_name: String,
    wake: Arc<Notify>,
    /// Told the rows in flight and whether it is behind, so ingress can give way.
    pace: Arc<Pace>,
    settler: Arc<Settler>,
}

/// What awaits a batch's confirms and records their outcomes: shared by the
/// publishing loop and its batch tasks.
struct Settler {
    outbox: Arc<dyn Pipe>,
    metrics: Arc<Metrics>,
    /// Rows set aside as unreadable are logged once a second at most: a newer
    /// release may have written many.
    unreadable_logs: Throttle,
}

/// Why a publish was not confirmed: the `reason` of
/// `hookrelay_publish_failures_total`.
#[derive(Debug, Clone, Copy)]
enum Failure {
    /// The envelope could not be built (permanent).
    Encode,
    /// Over the broker's message size (permanent).
    TooLarge,
    /// The channel failed.
    Channel,
    /// No publish or confirm in time.
    Timeout,
    /// The broker returned it unroutable (`mandatory`).
    Returned,
    /// The broker nacked it.
    Nack,
}

impl Failure {
    const ALL: [Self; 6] = [
        Self::Encode,
        Self::TooLarge,
        Self::Channel,
        Self::Timeout,
        Self::Returned,
        Self::Nack,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::Encode => "encode",
            Self::TooLarge => "too_large",
            Self::Channel => "channel",
            Self::Timeout => "timeout",
            Self::Returned => "returned",
            Self::Nack => "nack",
        }
    }
}

/// What went wrong with the channel during a batch, if anything.
enum ChannelTrouble {
    Error(lapin::Error),
    Timeout,
    /// The broker nacked a publish. A quorum queue whose leader was lost nacks
    /// every later publish of a channel that first published to it before a new
    /// leader was elected (RabbitMQ 3.10, seen on a cluster's node loss), so the
    /// channel is renewed rather than trusted again.
    Nacked,
}

/// A batch whose messages went out and whose confirms are awaited.
struct SentBatch {
    settled: Vec<Settlement>,
    unsent: Vec<i64>,
    awaiting: Vec<Awaiting>,
    trouble: Option<ChannelTrouble>,
    deadline: tokio::time::Instant,
}

/// A message published and not yet confirmed.
struct Awaiting {
    row: PendingEvent,
    confirm: lapin::PublisherConfirm,
    /// When it went out.
    sent_at: Instant,
    /// Its size in bytes, to tell which message a size refusal is about.
    size: usize,
    /// Its publish span, ended when the confirm arrives.
    span: tracing::Span,
}

/// What a finished batch tells the loop: which rows left flight, and whether the
/// channel needs recovering.
struct BatchDone {
    ids: Vec<i64>,
    /// How many of them the broker confirmed: the publisher got somewhere.
    published: usize,
    /// How many failed (to be tried again, or dead).
    failed: usize,
    /// Of those, how many failed for good (over the size limit, unencodable):
    /// an outcome for the row, not a broker that takes nothing.
    permanent: usize,
    trouble: Option<ChannelTrouble>,
}

impl Publisher {
    /// A publisher over `outbox` and `link`; `wake` is notified by ingress on every
    /// stored webhook, and `pace` told the rows in flight.
    pub(crate) fn new(
        outbox: Arc<dyn Pipe>,
        link: BrokerLink,
        exchange: String,
        metrics: Arc<Metrics>,
        wake: Arc<Notify>,
        pace: Arc<Pace>,
    ) -> Self {
        // Every reason present from the start, so `rate()` over it is defined.
        for reason in Failure::ALL {
            metrics
                .publish_failures
                .with_label_values(&[reason.as_str()]);
        }
        Self {
            link,
            span_name: format!("publish {exchange}"),
            exchange,
            wake,
            pace,
            settler: Arc::new(Settler {
                outbox,
                metrics,
                unreadable_logs: Throttle::new(Duration::from_secs(1)),
            }),
        }
    }

    /// Runs until `shutdown` turns true; the batches in flight then finish (each
    /// bounded by [`CONFIRM_TIMEOUT`]) and their outcomes are recorded before
    /// returning.
    pub(crate) async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut batches: tokio::task::JoinSet<BatchDone> = tokio::task::JoinSet::new();
        // Rows published but not yet settled: still `pending` in the outbox, so a
        // fetch returns them again; they are skipped until their batch is settled.
        let mut in_flight: HashSet<i64> = HashSet::new();
        loop {
            while let Some(done) = batches.try_join_next() {
                if let Some(trouble) = self.finish(done, &mut in_flight) {
                    self.recover(trouble, &mut batches, &mut in_flight, &mut shutdown)
                        .await;
                }
            }
            if *shutdown.borrow() {
                break;
            }
            if batches.len() >= MAX_BATCHES_IN_FLIGHT {
                if let Some(done) = batches.join_next().await
                    && let Some(trouble) = self.finish(done, &mut in_flight)
                {
                    self.recover(trouble, &mut batches, &mut in_flight, &mut shutdown)
                        .await;
                }
                continue;
            }
            if !self.link.is_up() {
                // Nothing is published until the link is back: ingress must not
                // wait on the rows that were in flight when it went down.
                self.pace.pause();
            }
            let Some(channel) = self.link.channel(&mut shutdown).await else {
                break;
            };
            self.pace.resume();
            let fetched = self.settler.outbox.fetch_due(WINDOW, &in_flight).await;
            let rows: Vec<PendingEvent> = match fetched {
                Ok(due) => {
                    if !due.unreadable.is_empty() {
                        self.settler.set_aside(due.unreadable).await;
                    }
                    due.events
                }
                Err(e) => {
                    self.pace.set_behind(false);
                    tracing::error!(error = %e, "cannot read the outbox; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(IDLE_POLL) => {}
                        _ = shutdown.changed() => {}
                    }
                    continue;
                }
            };
            // A full window means more rows are due than were taken.
            self.pace.set_behind(rows.len() >= WINDOW);
            if rows.is_empty() {
                tokio::select! {
                    () = self.wake.notified() => {}
                    () = tokio::time::sleep(IDLE_POLL) => {}
                    Some(done) = batches.join_next(), if !batches.is_empty() => {
                        if let Some(trouble) = self.finish(done, &mut in_flight) {
                            self.recover(trouble, &mut batches, &mut in_flight, &mut shutdown).await;
                        }
                    }
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            in_flight.extend(rows.iter().map(|row| row.id));
            self.pace.set_in_flight(in_flight.len());
            let sent = self.send(&channel, rows).await;
            if sent.trouble.is_some() {
                // The channel broke while sending: settle this batch now and recover
                // before publishing anything else onto it.
                let done = Arc::clone(&self.settler).confirm_and_settle(sent).await;
                if let Some(trouble) = self.finish(Ok(done), &mut in_flight) {
                    self.recover(trouble, &mut batches, &mut in_flight, &mut shutdown)
                        .await;
                }
            } else {
                batches.spawn(Arc::clone(&self.settler).confirm_and_settle(sent));
            }
        }
        while let Some(done) = batches.join_next().await {
            self.finish(done, &mut in_flight);
        }
        self.link.disconnect().await;
        tracing::info!("publisher stopped");
    }

    /// Takes a finished batch's rows out of flight; returns its channel trouble.
    fn finish(
        &self,
        done: Result<BatchDone, tokio::task::JoinError>,
        in_flight: &mut HashSet<i64>,
    ) -> Option<ChannelTrouble> {
        let trouble = match done {
            Ok(done) => {
                for id in &done.ids {
                    in_flight.remove(id);
                }
                // A row that failed for good would fail on any replica: handing
                // the partitions on would only stop the others' rows behind it.
                if done.published > 0 || done.permanent > 0 {
                    self.pace.progressed();
                } else if done.failed > 0 {
                    self.pace.failed();
                }
                done.trouble
            }
            Err(e) => {
                // A panicked batch task: its rows were never settled, so they are
                // still pending and will be published again.
                tracing::error!(error = %e, "a publish batch task failed");
                in_flight.clear();
                Some(ChannelTrouble::Timeout)
            }
        };
        self.pace.set_in_flight(in_flight.len());
        trouble
    }

    /// The channel broke: every other batch on it is finishing with errors too, so
    /// wait for all of them, then recover the link once.
    async fn recover(
        &mut self,
        trouble: ChannelTrouble,
        batches: &mut tokio::task::JoinSet<BatchDone>,
        in_flight: &mut HashSet<i64>,
        shutdown: &mut watch::Receiver<bool>,
    ) {
        while let Some(done) = batches.join_next().await {
            self.finish(done, in_flight);
        }
        // Nothing is published until the link is back: ingress must not wait.
        self.pace.set_behind(false);
        self.pace.pause();
        match trouble {
            ChannelTrouble::Error(e) => self.link.recover(Some(e), shutdown).await,
            ChannelTrouble::Timeout => self.link.recover(None, shutdown).await,
            ChannelTrouble::Nacked => self.link.renew_after_nack().await,
        }
    }

    /// Publishes a batch back to back and returns it with its confirms to await.
    ///
    /// Every message is handed to lapin before the first one's write is awaited
    /// ([`in_order`]); awaiting each write in turn cost two thread switches per
    /// message (to lapin's I/O thread and back), the largest share of the relay's
    /// CPU on a small machine. A batch holds at most one row per subject (a
    /// subject's next row is due only once this one is settled), so the order
    /// within it promises nothing; it is kept anyway.
    async fn send(&self, channel: &Channel, rows: Vec<PendingEvent>) -> SentBatch {
        let deadline = tokio::time::Instant::now() + CONFIRM_TIMEOUT;
        let mut batch = SentBatch {
            settled: Vec::new(),
            unsent: Vec::new(),
            awaiting: Vec::with_capacity(rows.len()),
            trouble: None,
            deadline,
        };
        let mut going = Vec::with_capacity(rows.len());
        let mut publishes = Vec::with_capacity(rows.len());
        for row in rows {
            // Never sent (on a shared outbox this relay's lease on the row's subject
            // passed): the row stays due as it is, no attempt counted.
            if !self.settler.outbox.may_publish(row.id) {
                batch.unsent.push(row.id);
                continue;
            }
            let body = match cloudevent_json(&row.meta, Some(sequence(&row)), &row.body) {
                Ok(body) => body,
                Err(e) => {
                    batch.settled.push(self.settler.permanent(
                        &row,
                        Failure::Encode,
                        e.to_string(),
                    ));
                    continue;
                }
            };
            if body.len() > MAX_MESSAGE_BYTES {
                let why = format!(
                    "the message is {} bytes, over the broker's default max_message_size of {MAX_MESSAGE_BYTES}",
                    body.len()
                );
                batch
                    .settled
                    .push(self.settler.permanent(&row, Failure::TooLarge, why));
                continue;
            }
            let size = body.len();
            let routing_key = row.meta.routing_key();
            // The producer span, after OpenTelemetry's messaging conventions, in the
            // webhook's trace; it ends with the broker's answer.
            let span = tracing::info_span!("publish",
                otel.name = %self.span_name, otel.kind = "producer",
                messaging.system = "rabbitmq", messaging.operation.type = "send",
                messaging.operation.name = "publish",
                messaging.destination.name = %self.exchange,
                messaging.rabbitmq.destination.routing_key = %routing_key,
                messaging.message.id = %row.meta.id,
                hookrelay.confirm = tracing::field::Empty,
                otel.status_code = tracing::field::Empty,
                event_id = %row.meta.id, routing_key = %routing_key);
            telemetry::continue_trace(&span, &row.traceparent);
            // Consumers continue the publish span's context when spans are exported,
            // the stored one otherwise.
            let traceparent =
                telemetry::span_traceparent(&span).unwrap_or_else(|| row.traceparent.clone());
            let properties = properties(&row, &traceparent);
            let exchange = self.exchange.as_str().into();
            let publish = async move {
                channel
                    .basic_publish(
                        exchange,
                        routing_key.into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..BasicPublishOptions::default()
                        },
                        &body,
                        properties,
                    )
                    .await
            };
            publishes.push(tokio::time::timeout_at(
                deadline,
                publish.instrument(span.clone()),
            ));
            going.push((row, span, size));
        }
        let written = in_order(publishes).await;
        for ((row, span, size), outcome) in going.into_iter().zip(written) {
            // After the channel broke, the rest of the batch failed with it: those
            // rows stay due as they are, no attempt counted.
            if batch.trouble.is_some() && !matches!(outcome, Ok(Ok(_))) {
                confirmed(&span, "unsent");
                batch.unsent.push(row.id);
                continue;
            }
            match outcome {
                Ok(Ok(confirm)) => batch.awaiting.push(Awaiting {
                    row,
                    confirm,
                    sent_at: Instant::now(),
                    size,
                    span,
                }),
                Ok(Err(e)) => {
                    confirmed(&span, "channel");
                    batch
                        .settled
                        .push(self.settler.retry(&row, Failure::Channel, e.to_string()));
                    batch.trouble = Some(ChannelTrouble::Error(e));
                }
                Err(_) => {
                    confirmed(&span, "timeout");
                    batch.settled.push(self.settler.retry(
                        &row,
                        Failure::Timeout,
                        "publish timed out".to_owned(),
                    ));
                    batch.trouble = Some(ChannelTrouble::Timeout);
                }
            }
        }
        batch
    }
}

/// Runs `futures` to completion and returns their outputs in order: first one
/// pass that polls each in order (which starts them in order: lapin queues a
/// message's frames and registers its confirm, its delivery tag, in the first
/// poll of `basic_publish`, before its first await), then each awaited in turn.
/// By the time the first write is done, lapin's I/O thread has usually written
/// the rest, so the later awaits find them ready; polling every unfinished one on
/// every wake-up instead would cost a pass over the batch per wake-up.
async fn in_order<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    enum Slot<F: Future> {
        Running(std::pin::Pin<Box<F>>),
        Done(F::Output),
    }
    let mut slots: Vec<Slot<F>> = futures
        .into_iter()
        .map(|f| Slot::Running(Box::pin(f)))
        .collect();
    std::future::poll_fn(|cx| {
        for slot in &mut slots {
            if let Slot::Running(future) = slot
                && let std::task::Poll::Ready(output) = future.as_mut().poll(cx)
            {
                *slot = Slot::Done(output);
            }
        }
        std::task::Poll::Ready(())
    })
    .await;
    let mut outputs = Vec::with_capacity(slots.len());
    for slot in slots {
        outputs.push(match slot {
            Slot::Done(output) => output,
            Slot::Running(future) => future.await,
        });
    }
    outputs
}

impl Settler {
    /// Awaits a batch's confirms against its deadline and records every outcome in
    /// one outbox transaction.
    async fn confirm_and_settle(self: Arc<Self>, batch: SentBatch) -> BatchDone {
        let SentBatch {
            mut settled,
            unsent,
            awaiting,
            mut trouble,
            deadline,
        } = batch;
        for Awaiting {
            row,
            confirm,
            sent_at,
            size,
            span,
        } in awaiting
        {
            match tokio::time::timeout_at(deadline, confirm).await {
                Ok(Ok(Confirmation::Ack(None))) => {
                    confirmed(&span, "ack");
                    self.metrics
                        .publish_duration
                        .observe(sent_at.elapsed().as_secs_f64());
                    let lag = (now_micros() - row.received_at_us).max(0) as f64 / 1e6;
                    self.metrics.delivery_lag.observe(lag);
                    let (kind, status) = row.meta.kind_status();
                    self.metrics
                        .events_published
                        .with_label_values(&[row.meta.provider.as_str(), kind, status])
                        .inc();
                    if row.place.first.as_ref().is_some_and(|first| first.stale) {
                        self.metrics
                            .events_stale
                            .with_label_values(&[row.meta.source.as_str()])
                            .inc();
                    }
                    tracing::debug!(event_id = %row.meta.id, sequence = row.place.sequence, "published");
                    settled.push(Settlement::Published {
                        id: row.id,
                        first: row.place.first,
                    });
                }
                Ok(Ok(Confirmation::Ack(Some(returned)))) => {
                    confirmed(&span, "returned");
                    let why = format!("returned by the broker: {}", returned.reply_text);
                    settled.push(self.retry(&row, Failure::Returned, why));
                }
                Ok(Ok(Confirmation::Nack(_))) => {
                    confirmed(&span, "nack");
                    settled.push(self.retry(
                        &row,
                        Failure::Nack,
                        "nacked by the broker".to_owned(),
                    ));
                    trouble.get_or_insert(ChannelTrouble::Nacked);
                }
                Ok(Ok(Confirmation::NotRequested)) => {
                    confirmed(&span, "not_requested");
                    settled.push(self.retry(
                        &row,
                        Failure::Channel,
                        "channel is not in confirm mode".to_owned(),
                    ));
                    trouble.get_or_insert(ChannelTrouble::Timeout);
                }
                Ok(Err(e)) if rejected_size(&e.to_string()) == Some(size) => {
                    confirmed(&span, "too_large");
                    settled.push(self.permanent(&row, Failure::TooLarge, e.to_string()));
                    trouble.get_or_insert(ChannelTrouble::Error(e));
                }
                Ok(Err(e)) => {
                    confirmed(&span, "channel");
                    settled.push(self.retry(&row, Failure::Channel, e.to_string()));
                    trouble.get_or_insert(ChannelTrouble::Error(e));
                }
                Err(_) => {
                    confirmed(&span, "timeout");
                    settled.push(self.retry(
                        &row,
                        Failure::Timeout,
                        "no confirm within the timeout".to_owned(),
                    ));
                    trouble.get_or_insert(ChannelTrouble::Timeout);
                }
            }
        }
        let published = settled
            .iter()
            .filter(|s| matches!(s, Settlement::Published { .. }))
            .count();
        let failed = settled.len() - published;
        let permanent = settled
            .iter()
            .filter(|s| {
                matches!(
                    s,
                    Settlement::Dead { .. }
                        | Settlement::Retry {
                            permanent: true,
                            ..
                        }
                )
            })
            .count();
        // Rows never sent stay due as they are; their claims go now, so that a
        // partition being handed on does not wait for them.
        self.outbox.unclaim(&unsent);
        let ids = settled.iter().map(Settlement::id).chain(unsent).collect();
        self.settle_until_recorded(settled).await;
        BatchDone {
            ids,
            published,
            failed,
            permanent,
            trouble,
        }
    }

    /// Records a batch's outcomes, retrying with backoff while the outbox cannot
    /// write (disk full, locked past `busy_timeout`). The outcomes are known, so it
    /// is the settlement that is retried, not the publish: the rows stay in flight
    /// meanwhile and are not fetched and published again. Only a closing outbox
    /// gives up; its rows stay pending and the next start publishes them again (a
    /// duplicate, never a loss).
    async fn settle_until_recorded(&self, settled: Vec<Settlement>) {
        let settled: Arc<[Settlement]> = settled.into();
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(5))
            .with_jitter()
            .without_max_times()
            .build();
        loop {
            match self.outbox.settle(Arc::clone(&settled)).await {
                Ok(()) => return,
                Err(OutboxError::Closed) => {
                    tracing::warn!(
                        "outbox closed before publish outcomes were recorded; those rows will be published again at the next start"
                    );
                    return;
                }
                Err(e) => {
                    let delay = delays.next().unwrap_or(Duration::from_secs(5));
                    tracing::error!(error = %e, retry_in = ?delay,
                        "cannot record publish outcomes; retrying the record, not the publish");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Sets aside the due rows this release cannot read: each becomes dead with an
    /// error that says so (holding back only its own subject), so that nothing
    /// behind it, of any other subject, waits for it. A release that reads them
    /// replays them when it starts.
    async fn set_aside(&self, unreadable: Vec<Unreadable>) {
        let settled = unreadable
            .iter()
            .map(|row| {
                self.metrics.outbox_unreadable_rows.inc();
                if let Some(left_out) = self.unreadable_logs.allow() {
                    tracing::error!(row = row.id, why = %row.why, left_out,
                        "row {} cannot be read by this release (a newer one wrote it?): set aside as dead, its subject held; a release that reads it replays it when it starts (one line a second at most)",
                        row.id);
                }
                Settlement::Dead {
                    id: row.id,
                    error: row.error(),
                }
            })
            .collect();
        self.settle_until_recorded(settled).await;
    }

    /// A failure that will happen again however often the row is retried (it cannot
    /// be encoded, or the broker refuses its size): retried a bounded number of
    /// times in case the cause was misjudged, then `dead`. Only permanent failures
    /// count towards that bound; a broker outage never makes a row dead.
    fn permanent(&self, row: &PendingEvent, reason: Failure, error: String) -> Settlement {
        if row.permanent_attempts + 1 >= MAX_PERMANENT_ATTEMPTS {
            self.metrics
                .publish_failures
                .with_label_values(&[reason.as_str()])
                .inc();
            let (id, subject, source) = (row.id, &row.meta.subject, &row.meta.source);
            tracing::error!(event_id = %row.meta.id, row = id, %subject, %source,
                attempts = row.attempts + 1, %error,
                "row {id} is dead and holds back the later events of subject `{subject}` of source `{source}`: fix the cause and `hookrelay outbox replay {id}`, or `hookrelay outbox release {id}` to let them pass");
            return Settlement::Dead { id, error };
        }
        self.settle_retry(row, reason, error, true)
    }

    /// A failure that may pass by itself (broker down, nack, timeout).
    fn retry(&self, row: &PendingEvent, reason: Failure, error: String) -> Settlement {
        self.settle_retry(row, reason, error, false)
    }

    fn settle_retry(
        &self,
        row: &PendingEvent,
        reason: Failure,
        error: String,
        permanent: bool,
    ) -> Settlement {
        self.metrics
            .publish_failures
            .with_label_values(&[reason.as_str()])
            .inc();
        let delay = retry_delay(row.attempts);
        tracing::warn!(event_id = %row.meta.id, attempts = row.attempts + 1, %error, retry_in = ?delay, "publish not confirmed");
        Settlement::Retry {
            id: row.id,
            error,
            retry_in: delay,
            permanent,
        }
    }
}

/// Records the broker's answer on a publish span (an error status unless it is
/// an ack).
fn confirmed(span: &tracing::Span, answer: &str) {
    span.record("hookrelay.confirm", answer);
    span.record(
        "otel.status_code",
        if answer == "ack" { "ok" } else { "error" },
    );
}

/// A row's place in its subject's sequence, as the envelope carries it.
fn sequence(row: &PendingEvent) -> Sequence {
    Sequence {
        number: row.place.sequence,
        stale: row.place.stale,
    }
}

fn properties(row: &PendingEvent, traceparent: &str) -> BasicProperties {
    let (kind, status) = row.meta.kind_status();
    let mut headers = FieldTable::default();
    for (key, value) in [
        ("provider", row.meta.provider.as_str()),
        ("source", row.meta.source.as_str()),
        ("kind", kind),
        ("status", status),
        ("traceparent", traceparent),
    ] {
        headers.insert(key.into(), AMQPValue::LongString(value.into()));
    }
    headers.insert(
        "partitionkey".into(),
        AMQPValue::LongString(partition_key(&row.meta).into()),
    );
    headers.insert(
        "sequence".into(),
        AMQPValue::LongLongInt(row.place.sequence),
    );
    if row.place.stale {
        headers.insert("stale".into(), AMQPValue::Boolean(true));
    }
    if row.meta.recovered {
        headers.insert("recovered".into(), AMQPValue::Boolean(true));
    }
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/cloudevents+json".into())
        .with_message_id(row.meta.id.as_str().into())
        .with_timestamp(u64::try_from(row.received_at_us / 1_000_000).unwrap_or(0))
        .with_type(row.meta.event_type().into())
        .with_app_id("hookrelay".into())
        .with_headers(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(attempts: u32, permanent_attempts: u32) -> PendingEvent {
        PendingEvent {
            id: 7,
            meta: crate::outbox::fake::event("x").meta,
            body: b"x".to_vec(),
            received_at_us: 0,
            traceparent: String::new(),
            place: crate::outbox::sequence::Place {
                sequence: 1,
                stale: false,
                first: None,
            },
            attempts,
            permanent_attempts,
        }
    }

    #[test]
    fn only_permanent_failures_count_towards_dead() {
        let settler = Settler {
            outbox: Arc::new(crate::outbox::fake::Hanging::default()),
            metrics: Arc::new(Metrics::new().expect("metrics")),
            unreadable_logs: Throttle::new(Duration::from_secs(1)),
        };
        let why = || "refused as too large".to_owned();
        // Five broker timeouts, then the first permanent failure: not dead yet.
        let after_outage = settler.permanent(&row(5, 0), Failure::TooLarge, why());
        assert!(
            matches!(
                after_outage,
                Settlement::Retry {
                    permanent: true,
                    ..
                }
            ),
            "{after_outage:?}"
        );
        let last = settler.permanent(
            &row(9, MAX_PERMANENT_ATTEMPTS - 1),
            Failure::TooLarge,
            why(),
        );
        assert!(matches!(last, Settlement::Dead { id: 7, .. }), "{last:?}");
        let transient = settler.retry(&row(50, 0), Failure::Timeout, why());
        assert!(matches!(
            transient,
            Settlement::Retry {
                permanent: false,
                ..
            }
        ));
    }

    #[test]
    fn the_oversized_message_is_told_from_its_batch() {
        assert_eq!(
            rejected_size(
                "channel error: PRECONDITION_FAILED - message size 2000000 is larger than configured max size 1048576"
            ),
            Some(2_000_000)
        );
        assert_eq!(rejected_size("IO error: connection reset"), None);
        assert_eq!(rejected_size("message size unknown"), None);
    }

    #[test]
    fn retry_delays_grow_and_are_capped() {
        let first = retry_delay(0);
        assert!(
            first >= Duration::from_secs(1) && first <= Duration::from_secs(2),
            "{first:?}"
        );
        let later = retry_delay(5);
        assert!(later >= Duration::from_secs(32), "{later:?}");
        assert!(retry_delay(60) <= Duration::from_secs(600));
    }

    #[tokio::test]
    async fn in_order_starts_every_future_before_awaiting_any_and_keeps_their_order() {
        let started = Arc::new(std::sync::Mutex::new(Vec::new()));
        let gate = Arc::new(Notify::new());
        let futures: Vec<_> = (0..5)
            .map(|i| {
                let (started, gate) = (Arc::clone(&started), Arc::clone(&gate));
                async move {
                    // What lapin does on the first poll: queue the message.
                    started.lock().expect("started").push(i);
                    gate.notified().await;
                    i * 10
                }
            })
            .collect();
        let all = tokio::spawn(in_order(futures));
        // Every one is started, in order, while the first still waits.
        tokio::time::timeout(Duration::from_secs(5), async {
            while started.lock().expect("started").len() < 5 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("all five started before any finished");
        assert_eq!(*started.lock().expect("started"), vec![0, 1, 2, 3, 4]);
        assert!(!all.is_finished());
        gate.notify_waiters();
        let outputs = tokio::time::timeout(Duration::from_secs(5), all)
            .await
            .expect("finished")
            .expect("joined");
        assert_eq!(outputs, vec![0, 10, 20, 30, 40]);
    }
}
