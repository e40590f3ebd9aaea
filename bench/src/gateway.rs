//! The model gateway's scenarios (not run by default; `--only gateway,ratelimit`):
//!
//! - `gateway`: what one gateway adds to a request, against the fake Anthropic endpoint on
//!   this machine: the latency of a whole answer (p50, p99; the same requests sent
//!   directly are subtracted), the time to the first byte of a streamed answer, and
//!   requests per second through one gateway with 64 clients.
//! - `ratelimit`: three gateways (as three workers would run) sharing one limiter of R
//!   requests per minute, 30 agents firing back to back (far more than 2× R) at a fake that
//!   answers 429 beyond R per sliding minute: the share of agent requests that saw a 429,
//!   the 429s the provider gave, and the batch's time against the ideal for R.
//!
//! Each gateway runs in this process on the benchmark's redis-server, with an attempt token
//! issued for a real leased job, exactly as a worker issues one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use fleet_shared::gateway::{AttemptPass, Gateway};
use fleet_shared::job::{JobSpec, QueueKind};
use fleet_shared::queue::{QueueConfig, RedisQueue};
use fleet_shared::settings::Settings;
use fleet_tests::fake_anthropic::{FakeAnthropic, Mode};
use futures::StreamExt as _;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::report::{Better, Row, Value};
use crate::util::quantile;

const KEY: &str = "sk-ant-bench-key-0123456789";

struct Rig {
    settings: Settings,
    queue: RedisQueue,
    _dir: tempfile::TempDir,
    stop: CancellationToken,
}

async fn rig(redis_url: &str, upstream: &str, extra_env: &[(&str, &str)]) -> Result<Rig> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("key"), KEY)?;
    let text = format!(
        "[redis]\nurl = \"{redis_url}\"\n[gateway]\nenabled = true\nlisten = \"127.0.0.1:0\"\n\
         max_waiting = 100000\nmax_wait_secs = 600\n[gateway.anthropic]\nbase_url = \"{upstream}\"\n\
         key_env = []\nkey_files = [\"{}\"]\n",
        dir.path().join("key").display()
    );
    let env: Vec<(String, String)> = extra_env
        .iter()
        .map(|(k, v)| (format!("FLEET_{k}"), v.to_string()))
        .collect();
    let settings = Settings::from_layers(Some(&text), &env).context("bench gateway settings")?;
    let queue = RedisQueue::open(
        &settings.redis,
        QueueConfig::from_settings(&settings, QueueKind::Research),
    )
    .await?;
    Ok(Rig {
        settings,
        queue,
        _dir: dir,
        stop: CancellationToken::new(),
    })
}

impl Rig {
    async fn gateway(&self) -> Result<(Arc<Gateway>, String)> {
        let gw = Gateway::open(&self.settings).await?;
        gw.serve(self.stop.clone()).await?;
        let url = gw.public_url();
        Ok((gw, url))
    }

    /// A token for a freshly leased job.
    async fn token(&self, gw: &Gateway) -> Result<(AttemptPass, String)> {
        let mut spec = JobSpec::research("bench", "demo");
        spec.options.attempt_timeout_secs = Some(3600);
        self.queue.enqueue(spec).await?;
        let lease = self.queue.fetch("bench", 1).await?.leases.remove(0);
        let job = lease.decode().map_err(anyhow::Error::msg)?;
        let pass = gw
            .begin_attempt(gw.binding(&job, &lease, "bench"), &CancellationToken::new())
            .await?;
        let token = pass.env["ANTHROPIC_API_KEY"].clone();
        Ok((pass, token))
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn request(stream: bool) -> serde_json::Value {
    json!({"model": "claude-sonnet-4-5-20250929", "max_tokens": 64, "stream": stream,
           "messages": [{"role": "user", "content": "What was Apple's revenue in 2024?"}]})
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    stream: bool,
) -> Result<(u16, Duration, Duration)> {
    let started = Instant::now();
    let resp = client
        .post(format!("{url}/v1/messages"))
        .header("x-api-key", key)
        .header("anthropic-version", "2023-06-01")
        .json(&request(stream))
        .send()
        .await?;
    let status = resp.status().as_u16();
    let mut body = resp.bytes_stream();
    let mut first = None;
    while let Some(chunk) = body.next().await {
        chunk?;
        first.get_or_insert_with(|| started.elapsed());
    }
    let total = started.elapsed();
    Ok((status, first.unwrap_or(total), total))
}

fn ms(d: &[Duration], q: f64) -> f64 {
    let mut v: Vec<f64> = d.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    quantile(&v, q)
}

fn row(name: &str, unit: &'static str, better: Better, v: f64) -> Row {
    let mut r = Row::new(name, unit, better);
    r.fleet = Value::Num(v);
    r.apalis = Value::Skipped("n/a".into());
    r
}

/// `gateway`: latency added per request, time to first streamed byte, requests/s.
pub async fn overhead(redis_url: &str, samples: usize) -> Result<(Vec<Row>, Vec<String>)> {
    let fake = FakeAnthropic::start(Mode::Answer("Revenue was $391.0B.".into())).await;
    let r = rig(redis_url, &fake.url, &[]).await?;
    let (gw, url) = r.gateway().await?;
    let (_pass, token) = r.token(&gw).await?;
    let client = reqwest::Client::new();
    let n = samples.max(200);
    // Warm up both paths (connections, script cache).
    for _ in 0..20 {
        post(&client, &fake.url, KEY, false).await?;
        post(&client, &url, &token, false).await?;
    }
    let (mut direct, mut through, mut d_first, mut g_first) = (vec![], vec![], vec![], vec![]);
    // Interleaved, so drift in the machine's load hits both alike.
    for _ in 0..n {
        direct.push(post(&client, &fake.url, KEY, false).await?.2);
        let (status, _, total) = post(&client, &url, &token, false).await?;
        anyhow::ensure!(status == 200, "the gateway answered {status}");
        through.push(total);
        d_first.push(post(&client, &fake.url, KEY, true).await?.1);
        g_first.push(post(&client, &url, &token, true).await?.1);
    }
    let mut rows = vec![
        row(
            "gateway: latency added, whole answer, p50",
            "ms",
            Better::Lower,
            ms(&through, 0.5) - ms(&direct, 0.5),
        ),
        row(
            "gateway: latency added, whole answer, p99",
            "ms",
            Better::Lower,
            ms(&through, 0.99) - ms(&direct, 0.99),
        ),
        row(
            "gateway: time to first streamed byte added, p50",
            "ms",
            Better::Lower,
            ms(&g_first, 0.5) - ms(&d_first, 0.5),
        ),
        row(
            "gateway: time to first streamed byte added, p99",
            "ms",
            Better::Lower,
            ms(&g_first, 0.99) - ms(&d_first, 0.99),
        ),
    ];
    // Throughput: 64 clients, whole answers, for 5 s.
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(5);
    let clients = (0..64).map(|_| {
        let (client, url, token, done) = (client.clone(), url.clone(), token.clone(), done.clone());
        tokio::spawn(async move {
            while Instant::now() < until {
                if let Ok((200, _, _)) = post(&client, &url, &token, false).await {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    });
    let started = Instant::now();
    futures::future::join_all(clients).await;
    let rps = done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    rows.push(row(
        "gateway: requests/s through one gateway (64 clients)",
        "req/s",
        Better::Higher,
        rps,
    ));
    let notes = vec![format!(
        "gateway: {n} whole and {n} streamed requests each way, interleaved, one at a time, to the fake Anthropic endpoint on this machine; \
         the direct request's percentile is subtracted from the gateway's. Each gateway request runs the reserve and settle \
         scripts and the limiter script in Redis (3 round trips) plus one proxy hop."
    )];
    Ok((rows, notes))
}

/// `ratelimit`: 3 gateways, 30 agents, a provider limited to `rpm` per sliding minute.
pub async fn shared_limit(
    redis_url: &str,
    rpm: u32,
    batch: usize,
) -> Result<(Vec<Row>, Vec<String>)> {
    let fake = FakeAnthropic::start(Mode::Limited {
        per_minute: rpm,
        text: "ok".into(),
    })
    .await;
    let rpm_s = rpm.to_string();
    let r = rig(
        redis_url,
        &fake.url,
        &[("GATEWAY__ANTHROPIC__REQUESTS_PER_MINUTE", &rpm_s)],
    )
    .await?;
    let mut gateways = Vec::new();
    for _ in 0..3 {
        let (gw, url) = r.gateway().await?;
        let (pass, token) = r.token(&gw).await?;
        gateways.push((gw, url, pass, token));
    }
    let left = Arc::new(AtomicUsize::new(batch));
    let seen_429 = Arc::new(AtomicU64::new(0));
    let client = reqwest::Client::new();
    let started = Instant::now();
    let agents = (0..30).map(|i| {
        let (_, url, _, token) = &gateways[i % 3];
        let (url, token, left, seen, client) = (
            url.clone(),
            token.clone(),
            left.clone(),
            seen_429.clone(),
            client.clone(),
        );
        tokio::spawn(async move {
            while left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                loop {
                    match post(&client, &url, &token, false).await {
                        Ok((200, _, _)) => break,
                        Ok((429, _, _)) => {
                            seen.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {}
                    }
                }
            }
        })
    });
    futures::future::join_all(agents).await;
    let elapsed = started.elapsed().as_secs_f64();
    // R per minute, the first at once: the last of `batch` goes at (batch - 1) / R minutes.
    let ideal = (batch as f64 - 1.0) * 60.0 / rpm as f64;
    let upstream_429 = fake.requests().iter().filter(|r| r.status == 429).count();
    let agent_requests = batch as u64 + seen_429.load(Ordering::Relaxed);
    let rows = vec![
        row(
            "ratelimit: agent requests that saw a 429",
            "%",
            Better::Lower,
            100.0 * seen_429.load(Ordering::Relaxed) as f64 / agent_requests as f64,
        ),
        row(
            "ratelimit: 429s from the provider",
            "count",
            Better::Lower,
            upstream_429 as f64,
        ),
        row(
            "ratelimit: batch time over the ideal for R",
            "%",
            Better::Lower,
            100.0 * (elapsed - ideal) / ideal,
        ),
    ];
    let notes = vec![format!(
        "ratelimit: {batch} requests by 30 agents (back to back) through 3 gateways sharing `requests_per_minute = {rpm}`, \
         to a fake that allows {rpm} per sliding minute and answers 429 with retry-after beyond; ideal {ideal:.1} s, took {elapsed:.1} s."
    )];
    Ok((rows, notes))
}
