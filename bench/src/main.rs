//! `fleet-bench`: benchmarks of this project's Redis queue against apalis-redis 1.0,
//! side by side, on one redis-server the program starts itself (AOF off).
//!
//! ```text
//! cargo run --release -p fleet-bench                         # everything, ~5 minutes
//! cargo run --release -p fleet-bench -- --only drain --jobs 20000
//! ```
//!
//! The same binary is also the worker process the scenarios start (`--worker`), so
//! multi-worker and crash scenarios use real, separate processes.

mod baseline;
mod child;
mod events;
mod fleet;
mod gateway;
mod pool;
mod report;
mod scenarios;
mod shards;
mod util;
mod work;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, ValueEnum};

/// Which queue a worker process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum System {
    /// This project (`fleet_shared::queue`).
    Fleet,
    /// apalis-redis 1.0 (the baseline).
    Apalis,
    /// This project's worker with an agent pool (makespan scenario).
    FleetPool,
}

impl System {
    pub fn as_str(self) -> &'static str {
        match self {
            System::Fleet => "fleet",
            System::Apalis => "apalis",
            System::FleetPool => "fleet-pool",
        }
    }
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "fleet-bench",
    about = "Benchmarks: this project's Redis queue vs apalis-redis 1.0"
)]
pub struct Cli {
    /// Scenarios to run, comma-separated: enqueue, drain, latency, recovery, memory, pool,
    /// events; also (not by default) gateway, ratelimit, shards (sharded queues on a
    /// local 3-primary cluster beside one node; this project only).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "enqueue,drain,latency,recovery,memory,pool,events"
    )]
    pub only: Vec<String>,
    /// Jobs for bulk enqueue, drain, memory and RSS.
    #[arg(long, default_value_t = 100_000)]
    pub jobs: usize,
    /// Jobs per drain run. Kept well below --jobs by default: with all of them queued up
    /// front, apalis-redis slows down as its backlog grows (an LREM over its whole
    /// `active` list per task), so 100,000 would take it many minutes.
    #[arg(long, default_value_t = 20_000)]
    pub drain_jobs: usize,
    /// Runs per drain figure (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub drain_repeat: usize,
    /// Pickup-latency samples (one job at a time).
    #[arg(long, default_value_t = 500)]
    pub samples: usize,
    /// Time limit of each side's pickup-latency run (seconds).
    #[arg(long, default_value_t = 60)]
    pub latency_budget_secs: u64,
    /// Concurrency of each worker process in drain and latency.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Lease TTLs (seconds) for the crash-recovery rows.
    #[arg(long, value_delimiter = ',', default_value = "30,5")]
    pub recovery_ttls: Vec<u64>,
    /// How long to wait for a crashed worker's job to run again before reporting "> cap".
    #[arg(long, default_value_t = 60)]
    pub recovery_cap_secs: u64,
    /// apalis-redis: `poll_with_interval` (ms).
    #[arg(long, default_value_t = 10)]
    pub apalis_poll_ms: u64,
    /// apalis-redis: `Config::batch_size`.
    #[arg(long, default_value_t = 100)]
    pub apalis_batch: usize,
    /// apalis-redis: leave out `.parallelize(tokio::spawn)`.
    #[arg(long)]
    pub apalis_no_parallelize: bool,
    /// apalis-redis: replace apalis' interval poll timer by one that re-arms itself
    /// (not part of apalis; to confirm why its idle workers stall). Off for the report.
    #[arg(long)]
    pub apalis_rearming_poll: bool,
    /// ratelimit: the shared limit (requests per minute) and the batch's requests.
    #[arg(long, default_value_t = 600)]
    pub gateway_rpm: u32,
    #[arg(long, default_value_t = 600)]
    pub gateway_batch: usize,
    /// Lines in the live-events latency scenario (one every 20 ms).
    #[arg(long, default_value_t = 500)]
    pub event_samples: usize,
    /// Jobs in the pool makespan scenario (each runs a 200 ms agent command).
    #[arg(long, default_value_t = 1000)]
    pub makespan_jobs: usize,
    /// Drain: run this project only, no baseline (for profiling its Redis side with perf;
    /// the report then has no ratios).
    #[arg(long)]
    pub fleet_only: bool,
    /// Where to write the Markdown report (default: <target dir>/bench-report.md).
    #[arg(long)]
    pub report: Option<PathBuf>,

    // ---- worker-process mode (started by the scenarios themselves) ----
    #[arg(long, hide = true)]
    pub worker: bool,
    #[arg(long, hide = true, value_enum, default_value = "fleet")]
    pub system: System,
    #[arg(long, hide = true, default_value = "")]
    pub redis_url: String,
    #[arg(long, hide = true, default_value = "bench-worker")]
    pub name: String,
    #[arg(long, hide = true, default_value_t = 30)]
    pub lease_ttl_secs: u64,
    #[arg(long, hide = true, default_value_t = 30)]
    pub apalis_heartbeat_secs: u64,
    #[arg(long, hide = true, default_value_t = 10)]
    pub apalis_missed: usize,
    #[arg(long, hide = true)]
    pub pool_root: Option<PathBuf>,
    #[arg(long, hide = true, default_value_t = 1)]
    pub shards: u16,
}

impl Cli {
    fn worker_spec(&self) -> child::WorkerSpec {
        child::WorkerSpec {
            system: self.system,
            redis_url: self.redis_url.clone(),
            name: self.name.clone(),
            concurrency: self.concurrency,
            lease_ttl_secs: self.lease_ttl_secs,
            apalis_poll_ms: self.apalis_poll_ms,
            apalis_batch: self.apalis_batch,
            apalis_heartbeat_secs: self.apalis_heartbeat_secs,
            apalis_missed: self.apalis_missed,
            apalis_parallelize: !self.apalis_no_parallelize,
            apalis_rearming_poll: self.apalis_rearming_poll,
            pool_root: self.pool_root.clone(),
            shards: self.shards,
        }
    }

    fn report_path(&self) -> PathBuf {
        self.report.clone().unwrap_or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
                .join("bench-report.md")
        })
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    if cli.worker {
        let spec = cli.worker_spec();
        return match spec.system {
            System::Fleet => fleet::worker_main(spec).await,
            System::Apalis => baseline::worker_main(spec).await,
            System::FleetPool => pool::worker_main(spec).await,
        };
    }
    let report = scenarios::run_all(&cli).await?;
    let text = report.markdown();
    println!("\n{text}");
    let path = cli.report_path();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, &text)?;
    eprintln!("report written to {}", path.display());
    Ok(())
}
