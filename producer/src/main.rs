//! `fleet`: the dexter-fleet producer CLI. Thin: parse the command line (`cli`), run
//! the command (`commands`, `demo`, `api` for `fleet serve`) on a single-threaded
//! runtime (multi-threaded for `serve`), print any error and exit with the code it
//! means (`exit`; documented in `fleet --help`).

mod api;
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
    let serving = matches!(cli.command, cli::Command::Serve(_));
    init_logging(if serving { "info" } else { "warn" });
    // The HTTP API serves many clients at once; every other command is one task.
    let mut builder = if serving {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    let runtime = match builder.enable_all().build() {
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

/// Logs (e.g. Redis retry warnings) go to stderr; RUST_LOG sets the level (default
/// warn; info for `fleet serve`, which logs each request).
fn init_logging(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}
