//! Extreme values that got past the edge — a record written by an older version, by
//! hand, or by a library caller that skipped validation (`RedisQueue::enqueue` does
//! not validate): the worker's duration and timestamp arithmetic saturates instead of
//! panicking or wrapping, so such a job runs, and the jobs after it are served.

use std::time::Duration;

use fleet_shared::job::JobSpec;
use fleet_shared::results::JobStatus;
use fleet_tests::fixture::Fleet;

/// The test agent answers with the query.
const ECHO: &str = r#"q=$(cat); printf '%s' "$q""#;

const WITHIN: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread")]
async fn a_job_with_extreme_options_runs_and_the_worker_keeps_serving() {
    let mut fleet = Fleet::start(ECHO, "").await;
    fleet.start_worker("w1");
    let mut extreme = JobSpec::research("extreme", "test");
    extreme.options.attempt_timeout_secs = Some(u64::MAX);
    extreme.options.max_attempts = Some(u32::MAX);
    extreme.options.backoff_base_ms = Some(u64::MAX);
    extreme.options.backoff_cap_ms = Some(u64::MAX);
    let extreme = fleet.submit(extreme).await.to_string();
    let r = fleet
        .wait_status(&extreme, JobStatus::Succeeded, WITHIN)
        .await;
    assert_eq!(r.attempts, 1, "{r:?}");

    let after = fleet.submit(JobSpec::research("after", "test")).await;
    let r = fleet
        .wait_status(&after.to_string(), JobStatus::Succeeded, WITHIN)
        .await;
    assert_eq!(r.result.unwrap()["output"]["answer"], "after");
    assert!(
        !fleet.logs().contains("panicked"),
        "no panic in the worker:\n{}",
        fleet.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_far_deadline_saturates_instead_of_wrapping_into_the_past() {
    let mut fleet = Fleet::start(ECHO, "").await;
    fleet.start_worker("w1");
    let mut far = JobSpec::research("far", "test");
    far.options.deadline_secs = Some(u64::MAX);
    let far = fleet.submit(far).await.to_string();
    let r = fleet.wait_status(&far, JobStatus::Succeeded, WITHIN).await;
    assert_eq!(r.attempts, 1, "{r:?}");
}
