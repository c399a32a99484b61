//! The publisher: takes due rows from the outbox, publishes their CloudEvents to the
//! exchange with publisher confirms, and records what the broker said.
//!
//! A batch of up to [`WINDOW`] rows is published back to back (the window of
//! outstanding confirms), then every confirm is awaited against one deadline, then
//! the outcomes are written in one outbox transaction. A row becomes `published`
//! only on a broker ack that carries no returned message; anything else (nack,
//! return, timeout, dropped connection) leaves it pending with its next attempt
//! pushed back exponentially, with jitter.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation};
use tokio::sync::{Notify, watch};
use tracing::Instrument;

use crate::amqp::BrokerLink;
use crate::event::cloudevent_json;
use crate::metrics::Metrics;
use crate::outbox::sqlite::now_micros;
use crate::outbox::{Outbox, PendingEvent, Settlement};

/// Most confirms outstanding at once (and rows per outbox fetch).
pub const WINDOW: usize = 256;
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
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

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
pub fn retry_delay(attempts: u32) -> Duration {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(Duration::from_secs(300))
        .with_jitter()
        .without_max_times()
        .build()
        .nth(attempts as usize)
        .unwrap_or(Duration::from_secs(300))
}

/// The publishing loop and what it needs.
pub struct Publisher {
    outbox: Arc<dyn Outbox>,
    link: BrokerLink,
    exchange: String,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
}

/// What went wrong with the channel during a batch, if anything.
enum ChannelTrouble {
    Error(lapin::Error),
    Timeout,
}

impl Publisher {
    /// A publisher over `outbox` and `link`; `wake` is notified by ingress on every
    /// stored webhook.
    pub fn new(
        outbox: Arc<dyn Outbox>,
        link: BrokerLink,
        exchange: String,
        metrics: Arc<Metrics>,
        wake: Arc<Notify>,
    ) -> Self {
        Self {
            outbox,
            link,
            exchange,
            metrics,
            wake,
        }
    }

    /// Runs until `shutdown` turns true; the batch in flight then finishes (bounded
    /// by [`CONFIRM_TIMEOUT`]) and its outcomes are recorded before returning.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        loop {
            if *shutdown.borrow() {
                break;
            }
            let Some(channel) = self.link.channel(&mut shutdown).await else {
                break;
            };
            let rows = match self.outbox.fetch_due(now_micros(), WINDOW).await {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the outbox; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(IDLE_POLL) => {}
                        _ = shutdown.changed() => {}
                    }
                    continue;
                }
            };
            if rows.is_empty() {
                tokio::select! {
                    () = self.wake.notified() => {}
                    () = tokio::time::sleep(IDLE_POLL) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            let (settlements, trouble) = self.publish_batch(&channel, rows).await;
            if let Err(e) = self.outbox.settle(settlements).await {
                // The rows stay pending and are published again: a duplicate, never a loss.
                tracing::error!(error = %e, "cannot record publish outcomes; those rows will be published again");
            }
            match trouble {
                Some(ChannelTrouble::Error(e)) => self.link.recover(Some(e), &mut shutdown).await,
                Some(ChannelTrouble::Timeout) => self.link.recover(None, &mut shutdown).await,
                None => {}
            }
        }
        self.link.disconnect().await;
        tracing::info!("publisher stopped");
    }

    async fn publish_batch(
        &self,
        channel: &Channel,
        rows: Vec<PendingEvent>,
    ) -> (Vec<Settlement>, Option<ChannelTrouble>) {
        let deadline = tokio::time::Instant::now() + CONFIRM_TIMEOUT;
        let mut settlements = Vec::with_capacity(rows.len());
        let mut in_flight = Vec::with_capacity(rows.len());
        let mut trouble = None;
        let mut rows = rows.into_iter();
        for row in rows.by_ref() {
            let body = match cloudevent_json(&row.meta, &row.body) {
                Ok(body) => body,
                Err(e) => {
                    settlements.push(self.permanent(&row, "encode", e.to_string()));
                    continue;
                }
            };
            if body.len() > MAX_MESSAGE_BYTES {
                let why = format!(
                    "the message is {} bytes, over the broker's default max_message_size of {MAX_MESSAGE_BYTES}",
                    body.len()
                );
                settlements.push(self.permanent(&row, "too_large", why));
                continue;
            }
            let size = body.len();
            let span = tracing::info_span!("publish", event_id = %row.meta.id, routing_key = %row.meta.routing_key(),
                traceparent = %row.traceparent);
            let publish = channel.basic_publish(
                self.exchange.as_str().into(),
                row.meta.routing_key().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &body,
                properties(&row),
            );
            match tokio::time::timeout_at(deadline, publish.instrument(span)).await {
                Ok(Ok(confirm)) => in_flight.push((row, confirm, Instant::now(), size)),
                Ok(Err(e)) => {
                    settlements.push(self.retry(&row, "channel", e.to_string()));
                    trouble = Some(ChannelTrouble::Error(e));
                    break;
                }
                Err(_) => {
                    settlements.push(self.retry(&row, "timeout", "publish timed out".to_owned()));
                    trouble = Some(ChannelTrouble::Timeout);
                    break;
                }
            }
        }
        // Rows after a broken channel were never sent; they stay due, untouched.
        drop(rows);
        for (row, confirm, started, size) in in_flight {
            match tokio::time::timeout_at(deadline, confirm).await {
                Ok(Ok(Confirmation::Ack(None))) => {
                    self.metrics
                        .publish_duration
                        .observe(started.elapsed().as_secs_f64());
                    let lag = (now_micros() - row.received_at_us).max(0) as f64 / 1e6;
                    self.metrics.delivery_lag.observe(lag);
                    let (kind, status) = match row.meta.class {
                        Some((k, s)) => (k.as_str(), s.as_str()),
                        None => ("unrecognized", "unrecognized"),
                    };
                    self.metrics
                        .events_published
                        .with_label_values(&[row.meta.provider.as_str(), kind, status])
                        .inc();
                    tracing::debug!(event_id = %row.meta.id, "published");
                    settlements.push(Settlement::Published { id: row.id });
                }
                Ok(Ok(Confirmation::Ack(Some(returned)))) => {
                    let why = format!("returned by the broker: {}", returned.reply_text);
                    settlements.push(self.retry(&row, "returned", why));
                }
                Ok(Ok(Confirmation::Nack(_))) => {
                    settlements.push(self.retry(&row, "nack", "nacked by the broker".to_owned()));
                }
                Ok(Ok(Confirmation::NotRequested)) => {
                    settlements.push(self.retry(
                        &row,
                        "channel",
                        "channel is not in confirm mode".to_owned(),
                    ));
                    trouble.get_or_insert(ChannelTrouble::Timeout);
                }
                Ok(Err(e)) if rejected_size(&e.to_string()) == Some(size) => {
                    settlements.push(self.permanent(&row, "too_large", e.to_string()));
                    trouble.get_or_insert(ChannelTrouble::Error(e));
                }
                Ok(Err(e)) => {
                    settlements.push(self.retry(&row, "channel", e.to_string()));
                    trouble.get_or_insert(ChannelTrouble::Error(e));
                }
                Err(_) => {
                    settlements.push(self.retry(
                        &row,
                        "timeout",
                        "no confirm within the timeout".to_owned(),
                    ));
                    trouble.get_or_insert(ChannelTrouble::Timeout);
                }
            }
        }
        (settlements, trouble)
    }

    /// A failure that will happen again however often the row is retried (it cannot
    /// be encoded, or the broker refuses its size): retried a bounded number of
    /// times in case the cause was misjudged, then `dead`.
    fn permanent(&self, row: &PendingEvent, reason: &str, error: String) -> Settlement {
        if row.attempts + 1 >= MAX_PERMANENT_ATTEMPTS {
            self.metrics
                .publish_failures
                .with_label_values(&[reason])
                .inc();
            tracing::error!(event_id = %row.meta.id, attempts = row.attempts + 1, %error,
                "giving up on this event: it is now dead (see `hookrelay outbox list --state dead`)");
            return Settlement::Dead { id: row.id, error };
        }
        self.retry(row, reason, error)
    }

    fn retry(&self, row: &PendingEvent, reason: &str, error: String) -> Settlement {
        self.metrics
            .publish_failures
            .with_label_values(&[reason])
            .inc();
        let delay = retry_delay(row.attempts);
        tracing::warn!(event_id = %row.meta.id, attempts = row.attempts + 1, %error, retry_in = ?delay, "publish not confirmed");
        Settlement::Retry {
            id: row.id,
            error,
            next_attempt_at_us: now_micros()
                + i64::try_from(delay.as_micros()).unwrap_or(i64::MAX / 2),
        }
    }
}

fn properties(row: &PendingEvent) -> BasicProperties {
    let (kind, status) = match row.meta.class {
        Some((k, s)) => (k.as_str(), s.as_str()),
        None => ("unrecognized", "unrecognized"),
    };
    let mut headers = FieldTable::default();
    for (key, value) in [
        ("provider", row.meta.provider.as_str()),
        ("source", row.meta.source.as_str()),
        ("kind", kind),
        ("status", status),
        ("traceparent", row.traceparent.as_str()),
    ] {
        headers.insert(key.into(), AMQPValue::LongString(value.into()));
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
}
