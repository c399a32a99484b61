//! `hookrelay outbox …`: inspect and operate the outbox the configuration names,
//! also while `serve` runs on it.

use std::fmt::Write as _;

use clap::Subcommand;

use crate::config::Config;
use crate::outbox::{ListFilter, PURGE_BATCH, ReplaySelector, State};

/// `hookrelay outbox …`
#[derive(Debug, Subcommand)]
pub(crate) enum OutboxCommand {
    /// Counts by state, oldest pending age, size on disk.
    Stats {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Recent rows, newest first.
    List {
        /// Only rows in this state.
        #[arg(long, value_enum)]
        state: Option<StateArg>,
        /// Only rows of this source.
        #[arg(long)]
        source: Option<String>,
        /// How many rows.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print JSON (one array) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// One row: headers, raw body, attempts, last error.
    Show {
        /// Row id (from `list`).
        id: i64,
        /// Show the body as received, without the source's redaction.
        #[arg(long)]
        raw: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Put rows back to pending so they are published again, with the same message id.
    Replay {
        /// Row ids.
        #[arg(conflicts_with_all = ["dead", "since"], required_unless_present_any = ["dead", "since"])]
        ids: Vec<i64>,
        /// Every dead row.
        #[arg(long, conflicts_with = "since")]
        dead: bool,
        /// Rows received since TIME (RFC 3339, or a duration ago such as `2h`).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// …and before TIME (default: now).
        #[arg(long, value_name = "TIME", requires = "since")]
        until: Option<String>,
        /// Only rows of this source.
        #[arg(long, requires = "since")]
        source: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Let the later events of dead rows' subjects be published past them. The
    /// rows stay dead (replay them once the cause is fixed); the release time is
    /// recorded with each row.
    Release {
        /// Dead row ids.
        #[arg(required = true)]
        ids: Vec<i64>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Delete published rows confirmed longer ago than DURATION (pending and dead rows
    /// are never deleted).
    Purge {
        /// e.g. `7d`, `12h`.
        #[arg(long, value_name = "DURATION")]
        published_before: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// A row state as the command line spells it; the outbox's own `State` knows
/// nothing of clap.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum StateArg {
    /// Waiting to be published.
    Pending,
    /// Confirmed by the broker.
    Published,
    /// Given up on; needs a person.
    Dead,
}

impl From<StateArg> for State {
    fn from(state: StateArg) -> Self {
        match state {
            StateArg::Pending => Self::Pending,
            StateArg::Published => Self::Published,
            StateArg::Dead => Self::Dead,
        }
    }
}

/// Why an `outbox` command failed.
#[derive(Debug, thiserror::Error)]
pub enum OutboxCommandError {
    /// The outbox could not be opened or answered with an error.
    #[error("{0}")]
    Outbox(crate::outbox::OutboxError),
    /// A time or duration argument did not parse.
    #[error("`{0}` is neither an RFC 3339 time nor a duration like 2h or 7d")]
    Time(String),
    /// `show` of a row that does not exist.
    #[error("no row {0} in the outbox")]
    NoRow(i64),
    /// Metrics registration failed (a bug).
    #[error("cannot register metrics: {0}")]
    Metrics(prometheus::Error),
}

/// `RFC 3339` or "that long ago", as Unix microseconds.
fn time_arg(text: &str, now: time::OffsetDateTime) -> Result<i64, OutboxCommandError> {
    let at = match time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
    {
        Ok(at) => at,
        Err(_) => {
            let ago = humantime::parse_duration(text)
                .map_err(|_| OutboxCommandError::Time(text.to_owned()))?;
            time::Duration::try_from(ago)
                .ok()
                .and_then(|ago| now.checked_sub(ago))
                .ok_or_else(|| OutboxCommandError::Time(text.to_owned()))?
        }
    };
    Ok(crate::clock::micros(at))
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

impl From<crate::outbox::OutboxError> for OutboxCommandError {
    fn from(e: crate::outbox::OutboxError) -> Self {
        Self::Outbox(e)
    }
}

/// Runs an `outbox` subcommand; returns what to print.
pub(crate) async fn run(
    config: &Config,
    command: OutboxCommand,
) -> Result<String, OutboxCommandError> {
    let metrics = crate::metrics::Metrics::new().map_err(OutboxCommandError::Metrics)?;
    let outbox = crate::outbox::open(
        config.outbox_url.expose(),
        crate::outbox::Access::Operate,
        std::sync::Arc::new(metrics),
        crate::outbox::Options::default(),
    )
    .await?;
    let now = time::OffsetDateTime::now_utc();
    let mut out = String::new();
    match command {
        OutboxCommand::Stats { json } => {
            let inv = outbox.inventory().await?;
            if json {
                out = to_json(&inv);
            } else {
                let _ = writeln!(out, "pending     {}", inv.pending);
                let _ = writeln!(out, "published   {}", inv.published);
                let _ = writeln!(out, "dead        {}", inv.dead);
                let oldest = inv
                    .oldest_pending_seconds
                    .map_or_else(|| "-".to_owned(), |s| format!("{s} s"));
                let _ = writeln!(out, "oldest pending  {oldest}");
                let _ = write!(out, "size on disk    {} bytes", inv.size_bytes);
            }
        }
        OutboxCommand::List {
            state,
            source,
            limit,
            json,
        } => {
            let rows = outbox
                .list(ListFilter {
                    state: state.map(State::from),
                    source,
                    limit,
                })
                .await?;
            if json {
                out = to_json(&rows);
            } else {
                let _ = writeln!(
                    out,
                    "{:>8}  {:<9}  {:>3}  {:<25}  {:<36}  routing key",
                    "id", "state", "try", "received", "event id"
                );
                for r in rows {
                    let _ = writeln!(
                        out,
                        "{:>8}  {:<9}  {:>3}  {:<25}  {:<36}  {}",
                        r.id, r.state, r.attempts, r.received_at, r.event_id, r.routing_key
                    );
                }
            }
        }
        OutboxCommand::Show { id, raw, json } => {
            let mut row = outbox
                .show(id)
                .await?
                .ok_or(OutboxCommandError::NoRow(id))?;
            // A view of a stored body hides what the published message hides,
            // unless the operator asks for the bytes as received.
            if !raw && let Some(body) = &row.body {
                let redacted = std::str::from_utf8(body)
                    .ok()
                    .and_then(|text| crate::event::redact(text, &row.redact));
                if let Some(text) = redacted {
                    row.body = Some(text.into_bytes());
                }
            }
            if json {
                out = to_json(&row);
            } else {
                let mut value = serde_json::to_value(&row).unwrap_or_default();
                let body = value.as_object_mut().and_then(|o| o.remove("body"));
                out = to_json(&value);
                if let Some(serde_json::Value::String(body)) = body {
                    let _ = write!(out, "\nbody:\n{body}");
                }
            }
        }
        OutboxCommand::Replay {
            ids,
            dead,
            since,
            until,
            source,
            json,
        } => {
            let selector = match (dead, since) {
                (true, _) => ReplaySelector::Dead,
                (false, Some(since)) => ReplaySelector::Received {
                    since_us: time_arg(&since, now)?,
                    until_us: until.map_or(Ok(i64::MAX), |u| time_arg(&u, now))?,
                    source,
                },
                (false, None) => ReplaySelector::Ids(ids),
            };
            let n = outbox.replay(selector).await?;
            out = if json {
                to_json(&serde_json::json!({ "replayed": n }))
            } else {
                format!("{n} rows back to pending; a running relay publishes them within a second")
            };
        }
        OutboxCommand::Release { ids, json } => {
            let n = outbox.release(ids).await?;
            out = if json {
                to_json(&serde_json::json!({ "released": n }))
            } else {
                format!(
                    "{n} dead rows released: the later events of their subjects are published \
                     past them; the rows stay dead until replayed"
                )
            };
        }
        OutboxCommand::Purge {
            published_before,
            json,
        } => {
            let cutoff = time_arg(&published_before, now)?;
            let mut total = 0;
            loop {
                let n = outbox.purge_published(cutoff, PURGE_BATCH).await?;
                total += n;
                if n < PURGE_BATCH as u64 {
                    break;
                }
            }
            out = if json {
                to_json(&serde_json::json!({ "purged": total }))
            } else {
                format!("{total} published rows deleted")
            };
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_before_the_calendar_are_errors_not_panics() {
        let now = time::OffsetDateTime::now_utc();
        assert!(matches!(
            time_arg("100000y", now),
            Err(OutboxCommandError::Time(_))
        ));
        assert!(time_arg("2h", now).is_ok());
        assert!(time_arg("2026-11-30T00:00:00Z", now).is_ok());
    }
}
