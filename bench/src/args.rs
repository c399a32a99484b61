//! The command line: every option of the bench, parsed once into [`Args`].

use std::path::PathBuf;

use clap::builder::PossibleValuesParser;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::broker::QueueKind;

#[derive(Parser, Debug)]
#[command(
    name = "hookrelay-bench",
    about = "Benchmarks hookrelay (the release binary) against an HTTP and a broker ceiling measured in the same run",
    after_help = "Build the relay first: cargo build --release --bin hookrelay. RabbitMQ must listen on --broker, and PostgreSQL on --postgres for the pg-* scenarios (loopback only)."
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Sub>,
    /// Short run (~1 minute): 5 s scenarios, 1 s warm-up, a 20,000-event backlog.
    #[arg(long)]
    pub quick: bool,
    /// Measured seconds of each load scenario [default: 20, --quick 5].
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Warm-up seconds before each measured window [default: 2, --quick 1].
    #[arg(long, value_name = "SECS")]
    pub warmup: Option<f64>,
    /// Connections of the closed-loop and half-rate scenarios.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Overload offers this many times the relay's maximum acked rate.
    #[arg(long, default_value_t = 10.0)]
    pub overload_factor: f64,
    /// Connections of the overload scenario (more than the relay's 2048-slot write
    /// queue, so that queue can fill).
    #[arg(long, default_value_t = 3000)]
    pub overload_connections: usize,
    /// Events acked while the broker is cut [default: 100000, --quick 20000].
    #[arg(long)]
    pub backlog: Option<u64>,
    /// The relay's maximum acked rate (req/s), used by half-rate (×0.5) and overload
    /// (×factor); by default it is what `steady` measured.
    #[arg(long, value_name = "REQ_PER_S")]
    pub max_rate: Option<f64>,
    /// RabbitMQ address (host:port, loopback only).
    #[arg(long, default_value = "127.0.0.1:5672")]
    pub broker: String,
    /// PostgreSQL server of the pg-* scenarios, as a URL prefix (loopback only): each
    /// scenario creates and drops its own database `hookrelay_bench_{run}_{scenario}`
    /// on it, and the relays get `{prefix}/{database}?sslmode=disable`.
    #[arg(
        long,
        value_name = "URL_PREFIX",
        default_value = "postgres://postgres@127.0.0.1:5432"
    )]
    pub postgres: String,
    /// The relay binary [default: <repository>/target/release/hookrelay].
    #[arg(long)]
    pub relay_bin: Option<PathBuf>,
    /// Run even if the relay binary is older than the sources in src/.
    #[arg(long)]
    pub allow_stale_relay: bool,
    /// Where the outboxes are created (the disk whose fsync is measured) [default:
    /// the system temp dir].
    #[arg(long)]
    pub outbox_dir: Option<PathBuf>,
    /// Scenarios to run, comma-separated (`console` and `pg-console` are not in
    /// the default list: seeding takes minutes).
    // Possible values and default: the scenario table's, set by `parse`.
    #[arg(long, value_delimiter = ',')]
    pub scenarios: Vec<String>,
    /// Outstanding confirms of the broker ceiling's publisher (the relay's window is 256).
    #[arg(long, default_value_t = 256)]
    pub confirm_window: usize,
    /// broker-ceiling-max: publishers, each on a connection of its own.
    #[arg(long, default_value_t = 4)]
    pub ceiling_publishers: usize,
    /// broker-ceiling-max: outstanding confirms of each publisher.
    #[arg(long, default_value_t = 1024)]
    pub ceiling_window: usize,
    /// The type of the queue every scenario's consumer reads.
    #[arg(long, value_enum, default_value_t = QueueKind::Quorum)]
    pub queue_type: QueueKind,
    /// A Svix Bridge binary for the `peer` scenario (built with the anchors'
    /// build kit; the repository does not depend on it); without it `peer` is
    /// skipped.
    #[arg(long, value_name = "PATH")]
    pub svix_bridge: Option<PathBuf>,
    /// Per-request bound, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub request_timeout: f64,
    /// console: rows seeded into the outbox.
    #[arg(long, default_value_t = 1_000_000)]
    pub console_rows: u64,
    /// console: times each query is repeated.
    #[arg(long, default_value_t = 20)]
    pub console_repeat: u64,
    /// console: searches followed over the whole outbox (each one many requests).
    #[arg(long, default_value_t = 3)]
    pub console_walks: u64,
    /// console: connections of the ingest load measured with and without a search.
    #[arg(long, default_value_t = 16)]
    pub console_connections: usize,
    /// console: measured seconds of each of the two ingest loads.
    #[arg(long, default_value_t = 15.0)]
    pub console_duration: f64,
    /// console: leave the seeded outbox (SQLite file or PostgreSQL database) in
    /// place and print where it is, to look at its query plans afterwards;
    /// callgrind: keep the callgrind output files, for `callgrind_annotate`.
    #[arg(long)]
    pub keep_outbox: bool,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Sub {
    /// The HTTP ceiling's server (started by the bench itself).
    #[command(hide = true)]
    HttpCeilingServer,
}

/// Parses the command line (exits with clap's message on an error or `--help`).
/// `--scenarios` takes the `names` of the scenario table, `default` when absent:
/// the table is the one place that lists them.
pub fn parse(names: &[&'static str], default: &'static str) -> Args {
    let matches = Args::command()
        .mut_arg("scenarios", |arg| {
            arg.value_parser(PossibleValuesParser::new(names.iter().copied()))
                .default_value(default)
        })
        .get_matches();
    Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}
