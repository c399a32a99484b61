//! The `hookrelay` binary: parses the command line and reports errors; everything
//! else lives in the library.

use std::process::ExitCode;

use clap::Parser;
use hookrelay::cli::{self, Cli};

fn main() -> ExitCode {
    match cli::run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            // `{:#}` prints the whole chain; each error in it names its cause once.
            eprintln!("hookrelay: {:#}", anyhow::Error::from(e));
            ExitCode::FAILURE
        }
    }
}
