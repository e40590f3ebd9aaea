//! `fleet-worker`: takes jobs from Redis, leases an agent from the pool, runs the job
//! in its sandbox, and stores the result under the job ID.
//!
//! Everything of substance lives in `fleet-shared`; this binary wires it together:
//! settings → sandbox provider and agent pool → one apalis worker per queue (research,
//! lifecycle) on the project's Redis backend → health and metrics server → graceful
//! shutdown (see `shutdown.rs`).

mod execute;
mod github;
mod http;
mod shutdown;
mod usage;
mod wiring;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use fleet_shared::settings::{LogFormat, Settings};

/// Run the dexter-fleet worker pool.
///
/// Settings come from config/default.toml (compiled in), then --config FILE (or
/// FLEET_CONFIG), then FLEET_<SECTION>__<KEY> environment variables (.env honoured).
/// SIGTERM/SIGINT drain in-flight jobs (worker.drain_timeout_secs) and release the
/// rest back to the queue; a second signal releases at once.
#[derive(Debug, Parser)]
#[command(name = "fleet-worker", version)]
struct Args {
    /// A TOML file layered over the defaults.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// A name for this worker process (default: host-pid-random).
    #[arg(long)]
    name: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // The worker is the one process that calls the sandbox provider: only it needs
    // the provider's credentials.
    let settings = match Settings::load(args.config.as_deref())
        .and_then(|s| s.check_provider_credentials().map(|()| s))
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fleet-worker: bad configuration: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing(settings.worker.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(wiring::run(settings, args.name)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "worker stopped on an error");
            eprintln!("fleet-worker: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
