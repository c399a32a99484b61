//! Command-line interface (SPEC §1).

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{Config, OutboxUrl};
use crate::outbox::{ListFilter, PURGE_BATCH, ReplaySelector, State};
use crate::providers;

/// hookrelay: receives payment-provider webhooks, stores them durably, and publishes
/// them to RabbitMQ.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// TOML configuration file; environment variables override it.
    #[arg(long, global = true, env = "HOOKRELAY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay (ingress, publisher, admin listener) until SIGTERM/SIGINT.
    Serve,
    /// Load and validate the configuration, print the effective sources (secrets
    /// masked), and exit non-zero on any problem.
    CheckConfig,
    /// Post a correctly signed example webhook of PROVIDER to a running relay, with
    /// fresh ids and timestamp, and print the status and the ack.
    ///
    /// The sample is signed with the credentials configured for the source (the
    /// same configuration `serve` reads). For oslpay, OSL signs with its private key
    /// and the relay has only the public key: pass a PEM private key whose public
    /// half is the source's `public_key` with --private-key FILE.
    Sample(SampleArgs),
    /// Inspect and operate the outbox (works while `serve` runs on the same outbox).
    #[command(subcommand)]
    Outbox(OutboxCommand),
}

/// `hookrelay outbox …`
#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
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
        state: Option<State>,
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

/// Why an `outbox` command failed.
#[derive(Debug, thiserror::Error)]
pub enum OutboxCommandError {
    /// The outbox could not be opened or answered with an error.
    #[error(transparent)]
    Outbox(#[from] crate::outbox::OutboxError),
    /// A time or duration argument did not parse.
    #[error("`{0}` is neither an RFC 3339 time nor a duration like 2h or 7d")]
    Time(String),
    /// `show` of a row that does not exist.
    #[error("no row {0} in the outbox")]
    NoRow(i64),
    /// Metrics registration failed (a bug).
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// `RFC 3339` or "that long ago", as Unix microseconds.
fn time_arg(text: &str, now: time::OffsetDateTime) -> Result<i64, OutboxCommandError> {
    let at = match time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
    {
        Ok(at) => at,
        Err(_) => {
            let ago = humantime::parse_duration(text)
                .map_err(|_| OutboxCommandError::Time(text.to_owned()))?;
            now - ago
        }
    };
    i64::try_from(at.unix_timestamp_nanos() / 1_000)
        .map_err(|_| OutboxCommandError::Time(text.to_owned()))
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// Runs an `outbox` subcommand; returns what to print.
pub async fn outbox(config: &Config, command: OutboxCommand) -> Result<String, OutboxCommandError> {
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::new()?);
    let outbox = crate::outbox::open(&config.outbox_url, metrics).await?;
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
                    state,
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
        OutboxCommand::Show { id, json } => {
            let row = outbox
                .show(id)
                .await?
                .ok_or(OutboxCommandError::NoRow(id))?;
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

/// Arguments of `hookrelay sample`.
#[derive(Debug, clap::Args)]
pub struct SampleArgs {
    /// Provider to imitate: wcheckout, oslpay, ccpayment, whitepay or standard.
    pub provider: String,
    /// Relay base URL (the webhook path is added) or a full `/webhooks/…` URL.
    /// Default: the configured HOOKRELAY_LISTEN port on 127.0.0.1.
    #[arg(long)]
    pub url: Option<String>,
    /// Source to sign for. Default: the source named like the provider, else the
    /// only source using that provider.
    #[arg(long)]
    pub source: Option<String>,
    /// PEM (PKCS#8) private key to sign oslpay samples with.
    #[arg(long, value_name = "FILE")]
    pub private_key: Option<PathBuf>,
}

/// Why `hookrelay sample` could not post its webhook.
#[derive(Debug, thiserror::Error)]
pub enum SampleCommandError {
    /// No such provider.
    #[error("unknown provider `{0}`; known: {1}")]
    UnknownProvider(String, String),
    /// No source to sign for.
    #[error("{0}")]
    NoSource(String),
    /// The key file could not be read.
    #[error("cannot read {path}: {source}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Signing failed.
    #[error("cannot sign the sample: {0}")]
    Sign(#[from] providers::SampleError),
    /// The relay could not be reached.
    #[error("cannot reach the relay at {url}: {source} (is `hookrelay serve` running?)")]
    Http {
        /// The URL.
        url: String,
        /// The client error.
        source: reqwest::Error,
    },
}

/// What the relay answered to a sample.
#[derive(Debug)]
pub struct SampleReply {
    /// Where it was posted.
    pub url: String,
    /// HTTP status.
    pub status: u16,
    /// Response body, as text.
    pub body: String,
}

/// `hookrelay sample`: builds, signs and posts one example webhook.
pub async fn sample(config: &Config, args: &SampleArgs) -> Result<SampleReply, SampleCommandError> {
    let spec = providers::find(&args.provider).ok_or_else(|| {
        SampleCommandError::UnknownProvider(
            args.provider.clone(),
            providers::REGISTRY
                .iter()
                .map(|s| s.name)
                .collect::<Vec<_>>()
                .join(", "),
        )
    })?;
    let source = match &args.source {
        Some(name) => config.sources.get(name).ok_or_else(|| {
            SampleCommandError::NoSource(format!("no source `{name}` in the configuration"))
        })?,
        None => config.sources.get(spec.name).map_or_else(
            || {
                let mut matching = config.sources.values().filter(|s| s.provider == spec.name);
                match (matching.next(), matching.next()) {
                    (Some(only), None) => Ok(only),
                    (None, _) => Err(SampleCommandError::NoSource(format!(
                        "no source uses provider `{}`; configure one or pass --source",
                        spec.name
                    ))),
                    (Some(_), Some(_)) => Err(SampleCommandError::NoSource(format!(
                        "several sources use provider `{}`; pass --source NAME",
                        spec.name
                    ))),
                }
            },
            Ok,
        )?,
    };
    let private_key = args
        .private_key
        .as_ref()
        .map(|path| {
            std::fs::read_to_string(path).map_err(|source| SampleCommandError::KeyFile {
                path: path.clone(),
                source,
            })
        })
        .transpose()?;
    let unique = uuid::Uuid::new_v4().to_string();
    let ctx = providers::SampleContext {
        source,
        now: time::OffsetDateTime::now_utc(),
        unique: &unique,
        private_key_pem: private_key.as_deref(),
    };
    let body = (spec.sample_body)(&ctx);
    let headers = (spec.sign)(&ctx, &body)?;
    let url = match &args.url {
        Some(url) if url.contains("/webhooks/") => url.clone(),
        Some(base) => format!("{}/webhooks/{}", base.trim_end_matches('/'), source.name),
        None => format!(
            "http://127.0.0.1:{}/webhooks/{}",
            config.listen.port(),
            source.name
        ),
    };
    let client = reqwest::Client::new();
    let mut request = client.post(&url).body(body);
    for (name, value) in &headers {
        request = request.header(name, value);
    }
    let http = |source| SampleCommandError::Http {
        url: url.clone(),
        source,
    };
    let response = request.send().await.map_err(http)?;
    let status = response.status().as_u16();
    let body = response.text().await.map_err(http)?;
    Ok(SampleReply { url, status, body })
}

/// The effective configuration as text, and the problems found in it.
pub fn check_config(config: &Config) -> (String, Vec<String>) {
    let mut out = String::new();
    let mut problems = Vec::new();
    let outbox = match &config.outbox_url {
        OutboxUrl::Sqlite(path) => format!("sqlite://{}", path.display()),
        OutboxUrl::Postgres(_) => "postgres://***".to_owned(),
    };
    let _ = writeln!(out, "listen          {}", config.listen);
    let _ = writeln!(out, "admin_listen    {}", config.admin_listen);
    let _ = writeln!(
        out,
        "amqp_url        {}",
        crate::amqp::redact_url(&config.amqp_url)
    );
    let _ = writeln!(out, "exchange        {}", config.exchange);
    let _ = writeln!(out, "outbox_url      {outbox}");
    let _ = writeln!(
        out,
        "retention       {}",
        humantime::format_duration(config.retention)
    );
    let _ = writeln!(out, "max_body        {} bytes", config.max_body);
    let _ = writeln!(out, "sources:");
    match crate::relay::build_sources(config) {
        Err(e) => problems.push(e.to_string()),
        Ok(built) => {
            for (name, source) in &config.sources {
                let spec = providers::find(&source.provider);
                let _ = writeln!(
                    out,
                    "  {name}  (POST /webhooks/{name}, provider {})",
                    source.provider
                );
                for (key, value) in &source.settings {
                    let secret = spec.is_some_and(|s| s.secret_keys.contains(&key.as_str()));
                    let shown = if secret { "********" } else { value.as_str() };
                    let _ = writeln!(out, "    {key} = {shown}");
                }
                if source.allow_unsigned {
                    let _ = writeln!(out, "    WARNING: accepts unsigned webhooks");
                } else if let Some(b) = built.get(name) {
                    for key in b.provider.missing_credentials() {
                        problems.push(format!(
                            "source `{name}` is missing `{key}` and will refuse every webhook with 401 \
                             (set HOOKRELAY_SOURCES__{}__{}, or allow_unsigned = true)",
                            name.to_ascii_uppercase(),
                            key.to_ascii_uppercase()
                        ));
                    }
                }
            }
        }
    }
    (out, problems)
}
