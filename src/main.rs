//! The `hookrelay` binary: parses the command line and reports errors; everything
//! else lives in the library.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use hookrelay::cli::{Cli, Command};
use hookrelay::config::Config;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hookrelay: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = Config::load(cli.config.as_deref()).context("invalid configuration")?;
    match cli.command {
        Command::Serve => {
            hookrelay::telemetry::init(config.log_format);
            let runtime =
                tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            runtime.block_on(hookrelay::relay::serve(config))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Sample(args) => {
            let runtime =
                tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            let reply = runtime.block_on(hookrelay::cli::sample(&config, &args))?;
            println!("POST {}", reply.url);
            println!("{}", reply.status);
            println!("{}", reply.body);
            Ok(if (200..300).contains(&reply.status) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Outbox(command) => {
            let runtime =
                tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            println!(
                "{}",
                runtime.block_on(hookrelay::cli::outbox(&config, command))?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig => {
            let (report, problems) = hookrelay::cli::check_config(&config);
            print!("{report}");
            if problems.is_empty() {
                println!("configuration OK");
                Ok(ExitCode::SUCCESS)
            } else {
                for problem in &problems {
                    eprintln!("problem: {problem}");
                }
                Ok(ExitCode::FAILURE)
            }
        }
    }
}
