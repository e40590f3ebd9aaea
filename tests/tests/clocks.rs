//! One clock: leases, reclaim, retry delays and deadlines are stamped and compared with
//! Redis' clock inside the scripts, so workers whose host clocks disagree behave like
//! workers in step. Real `fleet-worker` processes, one of them a minute ahead
//! (`FLEET_CLOCK_OFFSET_MS`, honoured by `fleet_shared::time` only).

use std::collections::HashMap;
use std::time::Duration;

use fleet_shared::job::JobSpec;
use fleet_shared::results::JobStatus;
use fleet_tests::fixture::{FAST_RECOVERY, Fleet};

/// "slow …" runs 5 s (past the 3 s lease: only renewal keeps it); "flaky …" fails
/// (transient) on its first run and answers on its second; each run is logged.
const AGENT: &str = r#"q=$(cat); echo "$q" >> {dir}/runs.log
case "$q" in
  slow*) sleep 5 ;;
  flaky*) f="{dir}/$(printf '%s' "$q" | tr -c 'a-z0-9' _)"; if [ ! -e "$f" ]; then touch "$f"; echo "busy" >&2; exit 75; fi ;;
esac
printf '%s' "$q""#;

const AHEAD_MS: &str = "60000";

fn runs(fleet: &Fleet) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for line in fleet.lines("runs.log") {
        *m.entry(line).or_default() += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread")]
async fn workers_a_minute_apart_keep_each_others_leases_and_the_retry_delays() {
    // Retry delays of up to 1.5 s (full jitter), so an early start is visible.
    let extra = FAST_RECOVERY
        .replace("backoff_base_ms = 50", "backoff_base_ms = 1500")
        .replace("backoff_cap_ms = 200", "backoff_cap_ms = 1500");
    let mut fleet = Fleet::start(AGENT, &extra).await;
    fleet.start_worker("in-step");
    let slow = fleet.submit(JobSpec::research("slow one", "test")).await;
    let slow = slow.to_string();
    fleet
        .wait_status(&slow, JobStatus::Running, Duration::from_secs(30))
        .await;
    // A worker whose clock runs a minute ahead: by its own clock every lease of the
    // other has expired, and every delayed job is due.
    fleet.start_worker_with_env("ahead", &[("FLEET_CLOCK_OFFSET_MS", AHEAD_MS.into())]);
    fleet.wait_started(1).await;
    let mut flaky = Vec::new();
    for i in 0..6 {
        let id = fleet
            .submit(JobSpec::research(format!("flaky {i}"), "test"))
            .await;
        flaky.push(id.to_string());
    }

    let r = fleet
        .wait_status(&slow, JobStatus::Succeeded, Duration::from_secs(60))
        .await;
    assert_eq!(r.attempts, 1, "the slow job's lease was taken early: {r:?}");
    assert_eq!(r.history.len(), 1, "{r:?}");
    assert_eq!(r.history[0].worker, "in-step", "{r:?}");

    let mut workers = std::collections::HashSet::new();
    for id in &flaky {
        // Run at Redis' time: a job delayed by the worker ahead would wait a minute
        // longer than planned (past this timeout), one delayed by the other would be
        // promoted at once by the worker ahead.
        let r = fleet
            .wait_status(id, JobStatus::Succeeded, Duration::from_secs(30))
            .await;
        assert_eq!(r.attempts, 2, "{r:?}");
        let h = &r.history;
        assert_eq!(h[0].outcome, "transient", "{r:?}");
        workers.insert(h[0].worker.clone());
        workers.insert(h[1].worker.clone());
        let planned = h[0].retry_in_ms.expect("a planned retry delay");
        let gap = h[1].started_at.saturating_sub(h[0].ended_at);
        assert!(
            gap + 50 >= planned,
            "{id} ran again {gap} ms after failing, before its {planned} ms delay: {h:?}"
        );
        assert!(
            gap <= planned + 2000,
            "{id} ran again {gap} ms after failing; planned {planned} ms: {h:?}"
        );
    }
    assert!(
        workers.contains("ahead"),
        "the worker ahead took part: {workers:?}"
    );
    let runs = runs(&fleet);
    assert_eq!(runs.get("slow one"), Some(&1), "{runs:?}");
    let lost = fleet_records_lease_lost(&fleet, &flaky).await;
    assert!(lost.is_empty(), "leases were taken early: {lost:?}");
}

/// Jobs among `ids` with a `lease_lost` attempt.
async fn fleet_records_lease_lost(fleet: &Fleet, ids: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for id in ids {
        let r = fleet.record(id).await;
        if r.history.iter().any(|h| h.outcome == "lease_lost") {
            out.push(format!("{id}: {:?}", r.history));
        }
    }
    out
}
