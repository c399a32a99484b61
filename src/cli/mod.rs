//! The command line (contract §1): the clap types here, one file per command, and a
//! [`run`] that loads the configuration and hands it to the command.
//!
//! Each command returns its own typed error; `main` prints the chain with `anyhow`.

mod check_config;
mod outbox;
mod recover;
mod sample;
mod topology;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigError};

pub(crate) use outbox::OutboxCommand;
pub(crate) use sample::SampleArgs;
pub(crate) use topology::TopologyCommand;

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
    /// masked), and exit non-zero on any problem; with --connect, also reach the
    /// broker and the outbox.
    CheckConfig(check_config::CheckConfigArgs),
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
    /// Declare the broker topology consumers read from (checked first; nothing
    /// is changed when something conflicts).
    #[command(subcommand)]
    Topology(TopologyCommand),
    /// List a source's gaps and stuck subjects and ask its provider for what
    /// they missed (docs/recovery.md); --dry-run asks nothing.
    Recover(recover::RecoverArgs),
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
    /// A `topology` command failed.
    #[error("{0}")]
    Topology(crate::amqp::topology::TopologyError),
    /// `recover` failed.
    #[error("{0}")]
    Recover(recover::RecoverCommandError),
}

/// Runs the parsed command line; the exit code says whether it succeeded.
pub fn run(cli: Cli) -> Result<ExitCode, CliError> {
    let config = Config::load(cli.config.as_deref()).map_err(CliError::Config)?;
    let runtime = || tokio::runtime::Runtime::new().map_err(CliError::Runtime);
    match cli.command {
        Command::Serve => {
            crate::telemetry::init(config.log_format);
            crate::relay::runtime()
                .map_err(CliError::Runtime)?
                .block_on(crate::relay::serve(config))
                .map_err(CliError::Serve)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig(args) => {
            let reached = if args.connect {
                runtime()?.block_on(check_config::connect(&config))
            } else {
                Vec::new()
            };
            Ok(check_config::run(&config, &reached))
        }
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
        Command::Topology(command) => {
            let out = runtime()?
                .block_on(topology::run(&config, command))
                .map_err(CliError::Topology)?;
            println!("{out}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Recover(args) => {
            let out = runtime()?
                .block_on(recover::run(&config, args))
                .map_err(CliError::Recover)?;
            println!("{out}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;
    use crate::outbox::{Fault, FaultKind, OutboxError};
    use crate::relay::RelayError;

    /// What `main` prints for `error`, after asserting that `cause` is in it once.
    fn printed_once(error: CliError, cause: &str) -> String {
        assert!(
            error.source().is_none(),
            "a CliError includes its cause's text instead of exposing it as source"
        );
        let text = format!("{:#}", anyhow::Error::from(error));
        assert_eq!(text.matches(cause).count(), 1, "{text}");
        text
    }

    #[test]
    fn each_kind_of_error_names_its_cause_once() {
        printed_once(
            CliError::Serve(RelayError::Outbox(OutboxError::InvalidUrl(
                "expected a scheme",
            ))),
            "expected a scheme",
        );
        printed_once(
            CliError::Serve(RelayError::Outbox(OutboxError::Storage(Fault::new(
                FaultKind::Io,
                "disk I/O error",
            )))),
            "disk I/O error",
        );
        printed_once(
            CliError::Sample(sample::SampleCommandError::Sign(
                crate::providers::SampleError::MissingSetting("sign_key"),
            )),
            "no `sign_key`",
        );
        let missing = std::path::Path::new("/nonexistent/hookrelay.toml");
        let config = Config::load_from(Some(missing), &[])
            .map(|_| ())
            .unwrap_err();
        printed_once(CliError::Config(config), "No such file");
        printed_once(
            CliError::Serve(RelayError::Bind {
                addr: ([127, 0, 0, 1], 8080).into(),
                var: "HOOKRELAY_LISTEN",
                error: std::io::Error::from(std::io::ErrorKind::AddrInUse),
            }),
            "address in use",
        );
        printed_once(
            CliError::Topology(crate::amqp::topology::TopologyError::Conflict {
                entity: "queue `orders.1`".to_owned(),
                broker: "inequivalent arg 'x-queue-type'".to_owned(),
            }),
            "inequivalent arg 'x-queue-type'",
        );
    }
}
