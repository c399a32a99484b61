//! `hookrelay topology declare`: the partitioned consumer topology (a
//! consistent-hash exchange bound to the relay's exchange, and N quorum queues
//! with a single active consumer each), checked against the broker first and
//! declared only when nothing there conflicts (`docs/events.md`).

use std::fmt::Write as _;

use crate::amqp::topology::{self, Partitioned, Report, TopologyError};
use crate::config::Config;

/// `hookrelay topology …`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum TopologyCommand {
    /// Declare (idempotently) a partitioned consumer topology on the configured
    /// broker: exchange NAME of type x-consistent-hash (hashing the
    /// `partitionkey` header) bound to the relay's exchange with PATTERN, and
    /// the durable quorum queues NAME.0 … NAME.{N-1}, each with a single active
    /// consumer. Everything is checked first: if anything exists with other
    /// arguments, it is named and nothing is declared.
    Declare(DeclareArgs),
}

/// Arguments of `hookrelay topology declare`.
#[derive(Debug, clap::Args)]
pub(crate) struct DeclareArgs {
    /// How many partition queues (1 to 1024); one consumer works on each at a
    /// time.
    #[arg(long, value_name = "N")]
    partitions: u16,
    /// The routing-key pattern of the events to take from the relay's exchange
    /// (e.g. `*.order.*`).
    #[arg(long)]
    pattern: String,
    /// The consistent-hash exchange's name, and the queues' prefix.
    #[arg(long)]
    name: String,
    /// Check and print what would be declared; change nothing.
    #[arg(long)]
    dry_run: bool,
}

/// Checks and declares; the report as it is printed.
pub(crate) async fn run(
    config: &Config,
    command: TopologyCommand,
) -> Result<String, TopologyError> {
    let TopologyCommand::Declare(args) = command;
    let wanted = Partitioned::new(&args.name, &args.pattern, args.partitions, &config.exchange)?;
    let relay = (config.exchange.as_str(), config.unrouted_queue_type);
    // Any node of a cluster will do: the next is tried only when one cannot be
    // reached at all.
    let mut unreachable = None;
    for url in &config.amqp_urls {
        let url = url.expose();
        match topology::declare_partitioned(url, relay, &wanted, args.dry_run).await {
            Ok(report) => return Ok(render(&crate::amqp::redact_url(url), &report)),
            Err(e @ TopologyError::Connect(_)) => unreachable = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(unreachable.unwrap_or(TopologyError::Connect(
        "no broker URL is configured (HOOKRELAY_AMQP_URL)".to_owned(),
    )))
}

/// One line per entity, then what it came to.
fn render(url: &str, report: &Report) -> String {
    let mut out = format!("broker {url}\n");
    for (entity, outcome) in &report.entities {
        let _ = writeln!(out, "  {outcome:<12}  {entity}");
    }
    let _ = writeln!(
        out,
        "(a binding is declared again either way: AMQP cannot ask whether one exists, and binding again changes nothing)"
    );
    let created = report.created();
    let _ = match (report.dry_run, created) {
        (true, 0) => write!(
            out,
            "dry run: every exchange and queue exists with the wanted arguments; nothing changed"
        ),
        (true, n) => write!(
            out,
            "dry run: {n} exchange(s) and queue(s) would be created; nothing changed"
        ),
        (false, 0) => write!(
            out,
            "nothing created: every exchange and queue existed with the wanted arguments"
        ),
        (false, n) => write!(out, "{n} exchange(s) and queue(s) created"),
    };
    out
}
