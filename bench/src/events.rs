//! Live-events latency: from an agent printing a line to an SSE client seeing it.
//!
//! A real `fleet-worker` runs a command agent in a local sandbox that prints its own
//! wall-clock time (`date +%s%N`) every 20 ms; a real `fleet serve` streams the job's
//! events (`GET /v1/jobs/{id}/events`) to this process, which subtracts each line's
//! timestamp from its own clock when the event arrives. The path measured is the whole
//! one: the sandbox's pipe → the worker's splitter and writer task → `XADD` → Redis →
//! the server's `XREAD BLOCK` → HTTP → the client. The worker and server are the
//! workspace's debug binaries (`fleet_tests::processes::binary` builds them), so the
//! figure is an upper bound of a release build's.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use fleet_shared::job::JobSpec;
use fleet_tests::fixture::Fleet;
use fleet_tests::processes::ServeProcess;
use futures::StreamExt as _;

/// Milliseconds from each printed line to its arrival at the SSE client, in order.
pub async fn sse_latency(samples: usize) -> Result<Vec<f64>> {
    // The agent waits for the client to be connected, then prints a timestamp per line.
    let script = format!(
        "while [ ! -e {{dir}}/go ]; do sleep 0.01; done; \
         i=0; while [ $i -lt {samples} ]; do date +%s%N; sleep 0.02; i=$((i+1)); done"
    );
    let mut fleet = Fleet::start(&script, "").await;
    fleet.start_worker("bench-events");
    let config = fleet.config.display().to_string();
    let server = ServeProcess::start(&["--config", &config], &[], fleet.dir.path());
    let id = fleet.submit(JobSpec::research("latency", "test")).await;
    let url = server.url(&format!("/v1/jobs/{id}/events"));
    let http = reqwest::Client::new();
    let response = http.get(&url).send().await.context("GET events")?;
    if !response.status().is_success() {
        bail!("GET {url}: {}", response.status());
    }
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    let mut latencies = Vec::with_capacity(samples);
    let mut started = false;
    while latencies.len() < samples {
        let chunk = tokio::time::timeout(Duration::from_secs(60), body.next())
            .await
            .context("the event stream went silent for 60 s")?
            .context("the event stream ended early")??;
        let arrived_ns = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as f64;
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..end + 2).collect();
            let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data: ")) else {
                continue;
            };
            let event: serde_json::Value = serde_json::from_str(data)?;
            match event["kind"].as_str() {
                Some("attempt_started") if !started => {
                    // Connected and the attempt runs: let the agent print.
                    started = true;
                    std::fs::write(fleet.path("go"), "")?;
                }
                Some("stdout") => {
                    let printed: f64 = event["data"]
                        .as_str()
                        .and_then(|s| s.trim().parse().ok())
                        .context("a line without a timestamp")?;
                    latencies.push((arrived_ns - printed) / 1e6);
                }
                _ => {}
            }
        }
    }
    fleet
        .wait_status(
            &id.to_string(),
            fleet_shared::results::JobStatus::Succeeded,
            Duration::from_secs(60),
        )
        .await;
    Ok(latencies)
}
