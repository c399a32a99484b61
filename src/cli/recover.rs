//! `hookrelay recover`: the gaps and stuck subjects of a source, and what the
//! relay would ask its provider (`--dry-run`), or asks (`docs/recovery.md`).
//! The command asks for resends itself, within the limits every relay of the
//! outbox shares; the stuck subjects it lists are asked about by the relay
//! (`recover = auto`) or `POST /api/v1/recover`, which store what they learn.

use std::fmt::Write as _;
use std::sync::Arc;

use crate::config::{Config, ConfigError};
use crate::outbox::OutboxError;
use crate::outbox::query::FilterError;
use crate::outbox::recall::Recall;
use crate::recovery::{Demand, Recovery, RecoveryError, Report};

/// `hookrelay recover`.
#[derive(Debug, clap::Args)]
pub(crate) struct RecoverArgs {
    /// The source whose provider to ask.
    #[arg(long, value_name = "NAME")]
    source: String,
    /// From TIME (RFC 3339, or a duration ago such as `2h`); default 7 days ago.
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Up to TIME (RFC 3339, or a duration ago); default now.
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// Say what would be asked; ask nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Why `recover` failed.
#[derive(Debug, thiserror::Error)]
pub enum RecoverCommandError {
    /// The sources do not build.
    #[error("invalid configuration: {0}")]
    Config(ConfigError),
    /// A time does not parse.
    #[error("{0}")]
    Time(FilterError),
    /// Metrics registration failed (a bug).
    #[error("cannot register metrics: {0}")]
    Metrics(prometheus::Error),
    /// The outbox could not be opened.
    #[error("cannot open the outbox: {0}")]
    Outbox(OutboxError),
    /// The HTTP client could not be made.
    #[error("cannot make the HTTP client that asks providers: {0}")]
    Client(String),
    /// The source is not configured.
    #[error("unknown source `{0}`: name one of the configured sources")]
    UnknownSource(String),
}

/// Runs `recover`; returns what to print.
pub(crate) async fn run(config: &Config, args: RecoverArgs) -> Result<String, RecoverCommandError> {
    crate::telemetry::init_audit_to_stderr();
    let sources = crate::providers::build_sources(config).map_err(RecoverCommandError::Config)?;
    let metrics = Arc::new(crate::metrics::Metrics::new().map_err(RecoverCommandError::Metrics)?);
    let outbox = crate::outbox::operate(config.outbox_url.expose(), Arc::clone(&metrics))
        .await
        .map_err(RecoverCommandError::Outbox)?;
    let recovery = Recovery::new(Arc::new(sources), Recall::new(outbox), None, metrics)
        .map_err(RecoverCommandError::Client)?;
    let demand = Demand::new(
        &args.source,
        args.since.as_deref(),
        args.until.as_deref(),
        args.dry_run,
        "cli",
    )
    .map_err(RecoverCommandError::Time)?;
    let report = recovery.on_demand(&demand).await.map_err(|e| match e {
        RecoveryError::UnknownSource(name) => RecoverCommandError::UnknownSource(name),
        RecoveryError::Outbox(e) => RecoverCommandError::Outbox(e),
    })?;
    Ok(if args.json {
        serde_json::to_string_pretty(&report).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    } else {
        text(&report)
    })
}

/// The report for a person.
fn text(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "source {} ({}), recover = {}{}",
        report.source,
        report.provider,
        report.recover,
        if report.dry_run {
            ", dry run: nothing asked"
        } else {
            ""
        }
    );
    if let Some(why) = &report.no_api {
        let _ = writeln!(out, "the provider cannot be asked: {why}");
    }
    let _ = writeln!(out, "gaps: {}", report.gaps.len());
    for gap in &report.gaps {
        let _ = writeln!(
            out,
            "  #{} {} {} .. {}  {}  {} window(s) to ask for  {}",
            gap.id,
            gap.reason,
            gap.from,
            gap.until,
            gap.state,
            gap.windows.len(),
            gap.detail
        );
    }
    if let Some(at) = &report.next_resend_at {
        let _ = writeln!(out, "the provider's limits allow the next resend at {at}");
    }
    let _ = writeln!(out, "stuck subjects: {}", report.stuck.len());
    for stuck in &report.stuck {
        let _ = writeln!(
            out,
            "  {}  {}  {}",
            stuck.subject, stuck.status, stuck.outcome
        );
    }
    out.trim_end().to_owned()
}
