//! `fleet`: the dexter-fleet producer CLI. This step has the command line, exit codes
//! and output formats; the commands are wired in next.

mod cli;
mod exit;
mod output;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let _cli = cli::Cli::parse();
    eprintln!("error: not wired yet");
    std::process::ExitCode::from(exit::FAILED)
}
