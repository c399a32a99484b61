//! `hookrelay outbox …`: inspect and operate the outbox the configuration names,
//! also while `serve` runs on it.

use std::fmt::Write as _;

use clap::Subcommand;

use crate::config::Config;
use crate::outbox::query::{self, FilterError};
use crate::outbox::select::{self, SelectError, Selection};
use crate::outbox::view::{Body, RowView};
use crate::outbox::{EventFilter, State};

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
        #[command(flatten)]
        filter: FilterArgs,
        /// Show rows older than this id (the cursor `list --json` prints).
        #[arg(long)]
        before: Option<i64>,
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
    /// Put rows back to pending so they are published again, with the same message
    /// id: the rows named by id, or every row the filters match.
    Replay {
        /// Row ids.
        ids: Vec<i64>,
        #[command(flatten)]
        filter: FilterArgs,
        /// Every dead row (the same as `--state dead`).
        #[arg(long, conflicts_with = "state")]
        dead: bool,
        /// Count the rows that would be replayed and change nothing.
        #[arg(long)]
        dry_run: bool,
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

/// The filters of `list` and `replay`: the admin API's, spelled as options.
#[derive(Debug, Default, clap::Args)]
pub(crate) struct FilterArgs {
    /// Only rows in this state.
    #[arg(long, value_enum)]
    state: Option<StateArg>,
    /// Only rows of this source.
    #[arg(long)]
    source: Option<String>,
    /// Only rows of this provider.
    #[arg(long)]
    provider: Option<String>,
    /// Only this kind (`order`, `refund`, … or `unrecognized`).
    #[arg(long)]
    kind: Option<String>,
    /// Only this normalized status.
    #[arg(long)]
    status: Option<String>,
    /// Only this subject (the provider's order or record id).
    #[arg(long)]
    subject: Option<String>,
    /// Only this routing key.
    #[arg(long)]
    routing_key: Option<String>,
    /// Rows received since TIME (RFC 3339, or a duration ago such as `2h`).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// …and before TIME.
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// Only rows whose raw body contains TEXT (case-sensitive).
    #[arg(long, value_name = "TEXT")]
    search: Option<String>,
}

impl FilterArgs {
    fn filter(self, now: time::OffsetDateTime) -> Result<EventFilter, OutboxCommandError> {
        let time = |text: Option<String>| text.map(|t| query::parse_time(&t, now)).transpose();
        let filter = EventFilter {
            state: self.state.map(State::from),
            source: self.source,
            provider: self.provider,
            kind: self.kind,
            status: self.status,
            subject: self.subject,
            routing_key: self.routing_key,
            since_us: time(self.since)?,
            until_us: time(self.until)?,
            q: self.search,
        };
        filter.check()?;
        Ok(filter)
    }
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
    /// A filter, time or duration argument is not valid.
    #[error("{0}")]
    Filter(FilterError),
    /// `replay` with neither ids nor a filter.
    #[error(
        "name the rows to replay: ids, or at least one filter (`--dead`, `--since 2h`, `--source …`); `--dry-run` shows how many match"
    )]
    NothingNamed,
    /// `replay` with more ids than one command takes.
    #[error("at most {} ids at once: use a filter for more", select::MAX_IDS)]
    TooManyIds,
    /// `show` of a row that does not exist.
    #[error("no row {0} in the outbox")]
    NoRow(i64),
    /// Metrics registration failed (a bug).
    #[error("cannot register metrics: {0}")]
    Metrics(prometheus::Error),
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

impl From<FilterError> for OutboxCommandError {
    fn from(e: FilterError) -> Self {
        Self::Filter(e)
    }
}

impl From<SelectError> for OutboxCommandError {
    fn from(e: SelectError) -> Self {
        match e {
            SelectError::NothingNamed => Self::NothingNamed,
            SelectError::TooManyIds => Self::TooManyIds,
            SelectError::Outbox(e) => Self::Outbox(e),
        }
    }
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
    let outbox =
        crate::outbox::operate(config.outbox_url.expose(), std::sync::Arc::new(metrics)).await?;
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
            filter,
            before,
            limit,
            json,
        } => {
            let filter = filter.filter(now)?;
            // No time budget here: a person at a terminal waits for the answer.
            let page = query::page(
                outbox.as_ref(),
                &filter,
                before,
                limit,
                std::time::Duration::MAX,
            )
            .await?;
            let rows = page.events;
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
            let full = outbox
                .show(id)
                .await?
                .ok_or(OutboxCommandError::NoRow(id))?;
            // A view of a stored body hides what the published message hides,
            // unless the operator asks for the bytes as received.
            let body = if raw {
                Body::AsReceived
            } else {
                Body::AsPublished
            };
            let row = RowView::full(full, body);
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
            filter,
            dead,
            dry_run,
            json,
        } => {
            let mut filter = filter.filter(now)?;
            if dead {
                filter.state = Some(State::Dead);
            }
            let selection = Selection { ids, filter };
            let ids = selection.ids(outbox.as_ref()).await?;
            if dry_run {
                out = if json {
                    to_json(&serde_json::json!({ "matched": ids.len() }))
                } else {
                    format!("{} rows match; nothing was changed", ids.len())
                };
            } else {
                let n = select::replay(outbox.as_ref(), &ids).await?;
                select::audit_replay("cli", "cli", &selection, ids.len(), n);
                out = if json {
                    to_json(&serde_json::json!({ "replayed": n }))
                } else {
                    format!(
                        "{n} rows back to pending; a running relay publishes them within a second"
                    )
                };
            }
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
            let cutoff = query::parse_time(&published_before, now)?;
            let total = select::purge_published(outbox.as_ref(), cutoff).await?;
            tracing::info!(
                target: "hookrelay::audit",
                action = "purge", via = "cli", purged = total, published_before = %published_before,
                "operator purged published rows"
            );
            out = if json {
                to_json(&serde_json::json!({ "purged": total }))
            } else {
                format!("{total} published rows deleted")
            };
        }
    }
    Ok(out)
}
