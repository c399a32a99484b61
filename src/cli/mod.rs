//! The command line (contract §1): the clap types here, one file per command, and a
//! [`run`] that loads the configuration and hands it to the command.
//!
//! Each command returns its own typed error; `main` prints the chain with `anyhow`.

mod check_config;
mod outbox;
mod sample;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigError};

pub(crate) use outbox::OutboxCommand;
pub(crate) use sample::SampleArgs;

/// hookrelay: receives payment-provider webhooks, stores them durably, and publishes
/// them to RabbitMQ.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// TOML configuration file; environment variables override it.
    #[arg(long, global = true, env = "HOOKRELAY_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
enum Command {
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

/// Why a command failed. Each variant names its cause once (its message includes
/// the cause's; none is also exposed as `source`), so a printed chain never repeats.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The configuration does not load.
    #[error("invalid configuration: {0}")]
    Config(ConfigError),
    /// Tokio could not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    /// `serve` failed.
    #[error("{0}")]
    Serve(crate::relay::RelayError),
    /// An `outbox` command failed.
    #[error("{0}")]
    Outbox(outbox::OutboxCommandError),
    /// `sample` failed.
    #[error("{0}")]
    Sample(sample::SampleCommandError),
}

/// Runs the parsed command line; the exit code says whether it succeeded.
pub fn run(cli: Cli) -> Result<ExitCode, CliError> {
    let config = Config::load(cli.config.as_deref()).map_err(CliError::Config)?;
    let runtime = || tokio::runtime::Runtime::new().map_err(CliError::Runtime);
    match cli.command {
        Command::Serve => {
            crate::telemetry::init(config.log_format);
            runtime()?
                .block_on(crate::relay::serve(config))
                .map_err(CliError::Serve)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig => Ok(check_config::run(&config)),
        Command::Sample(args) => runtime()?
            .block_on(sample::run(&config, &args))
            .map_err(CliError::Sample),
        Command::Outbox(command) => {
            let out = runtime()?
                .block_on(outbox::run(&config, command))
                .map_err(CliError::Outbox)?;
            println!("{out}");
            Ok(ExitCode::SUCCESS)
        }
    }
}
