//! `fleet`: the dexter-fleet producer CLI. Thin: parse the command line (`cli`), run
//! the command (`commands`, `demo`) on a single-threaded runtime, print any error and
//! exit with the code it means (`exit`; documented in `fleet --help`).

mod cli;
mod commands;
mod context;
mod demo;
mod exit;
mod output;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    init_logging();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILED);
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) if exit::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", exit::render(&e));
            ExitCode::from(exit::code_of(&e))
        }
    }
}

/// Logs (e.g. Redis retry warnings) go to stderr; RUST_LOG sets the level (default warn).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
