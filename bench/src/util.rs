//! Small measuring helpers shared by every scenario: wall-clock microseconds, process
//! CPU time and RSS from `/proc`, Redis `INFO` parsing (memory, commandstats), and a
//! description of the machine the numbers came from.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use redis::aio::ConnectionManager;

/// Microseconds since the Unix epoch (comparable across processes on one machine).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// User + system CPU time a process has used so far.
pub fn proc_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after its closing ')' are fixed.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(Duration::from_secs_f64((utime + stime) as f64 / ticks))
}

/// `VmRSS` and `VmHWM` (peak RSS) of a process, in KiB.
pub fn proc_rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// One section of `INFO`, as key -> value.
pub async fn info(conn: &mut ConnectionManager, section: &str) -> Result<BTreeMap<String, String>> {
    let text: String = redis::cmd("INFO")
        .arg(section)
        .query_async(conn)
        .await
        .with_context(|| format!("INFO {section}"))?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect())
}

/// `used_memory` in bytes.
pub async fn used_memory(conn: &mut ConnectionManager) -> Result<u64> {
    info(conn, "memory")
        .await?
        .get("used_memory")
        .and_then(|v| v.parse().ok())
        .context("INFO memory has no used_memory")
}

/// Per command: (calls, total microseconds inside Redis).
pub type CommandStats = BTreeMap<String, (u64, u64)>;

pub async fn command_stats(conn: &mut ConnectionManager) -> Result<CommandStats> {
    let mut out = CommandStats::new();
    for (key, value) in info(conn, "commandstats").await? {
        let Some(cmd) = key.strip_prefix("cmdstat_") else {
            continue;
        };
        let mut calls = 0;
        let mut usec = 0;
        for part in value.split(',') {
            if let Some(v) = part.strip_prefix("calls=") {
                calls = v.parse().unwrap_or(0);
            } else if let Some(v) = part.strip_prefix("usec=") {
                usec = v.parse().unwrap_or(0);
            }
        }
        out.insert(cmd.to_string(), (calls, usec));
    }
    Ok(out)
}

/// `after - before`, per command, dropping commands that did not run.
pub fn stats_delta(before: &CommandStats, after: &CommandStats) -> CommandStats {
    after
        .iter()
        .filter_map(|(cmd, (calls, usec))| {
            let (c0, u0) = before.get(cmd).copied().unwrap_or_default();
            (calls > &c0).then(|| (cmd.clone(), (calls - c0, usec.saturating_sub(u0))))
        })
        .collect()
}

/// The pid of the redis-server process (from `INFO server`).
pub async fn redis_pid(conn: &mut ConnectionManager) -> Result<u32> {
    info(conn, "server")
        .await?
        .get("process_id")
        .and_then(|v| v.parse().ok())
        .context("INFO server has no process_id")
}

/// What the numbers were measured on.
#[derive(Debug, Clone)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub redis_version: String,
    pub kernel: String,
    pub load_at_start: String,
}

pub async fn machine(conn: &mut ConnectionManager) -> Result<Machine> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let server = info(conn, "server").await?;
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let load_at_start = std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    Ok(Machine {
        nproc: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        cpu_model,
        redis_version: server
            .get("redis_version")
            .cloned()
            .unwrap_or_else(|| "?".into()),
        kernel,
        load_at_start,
    })
}

/// The value at quantile `q` (0..=1) of sorted samples (nearest rank).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
    }

    #[test]
    fn own_process_has_cpu_and_rss() {
        let pid = std::process::id();
        assert!(proc_cpu(pid).is_some());
        let (rss, hwm) = proc_rss_kib(pid).unwrap();
        assert!(rss > 0 && hwm >= rss);
    }
}
