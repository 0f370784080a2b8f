//! The `keyless` binary: the CLI, the typed configuration and the wiring of
//! `keyless up`.
//!
//! Exit codes: 0 success, 1 a runtime failure (the fabric is unreachable, a
//! check failed), 2 bad input (a malformed SPIFFE ID, selector or TTL; what
//! clap refuses). Every failure prints one line on stderr.

mod admin;
mod agent;
mod cli;
mod cmd;
mod config;
mod console_api;
mod http;
mod internal;
mod pem;
mod signals;
mod tls;
mod up;

use std::process::ExitCode;

use clap::Parser;

/// An error that knows its exit code.
#[derive(Debug)]
pub enum CliError {
    /// Bad input from the user: exit 2, nothing changed.
    Usage(String),
    /// Anything else: exit 1.
    Failed(anyhow::Error),
    /// The command already printed its answer; exit with this code.
    Exit(u8),
}

impl From<anyhow::Error> for CliError {
    fn from(e: anyhow::Error) -> Self {
        Self::Failed(e)
    }
}

pub type CliResult<T = ()> = Result<T, CliError>;

/// See the `mimalloc` dependency in Cargo.toml for why.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(cmd::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Usage(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(2)
        }
        Err(CliError::Exit(code)) => ExitCode::from(code),
        Err(CliError::Failed(e)) => {
            // One line: the chain of causes joined, no backtrace.
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
