//! The `hookrelay` binary: parses the command line and reports errors; everything
//! else lives in the library.

use std::process::ExitCode;

use clap::Parser;
use hookrelay::cli::{self, Cli};

/// mimalloc instead of glibc's malloc: allocation and free were the largest
/// user-space cost per webhook after SHA-256 and SQLite (callgrind, `bench/`), and
/// glibc's arenas consolidate on the request path (`docs/performance.md`). Built
/// with `no_thp`: with transparent huge pages its heaps doubled the relay's RSS
/// at steady load (76 MiB against glibc's 34); without, 40 MiB.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
