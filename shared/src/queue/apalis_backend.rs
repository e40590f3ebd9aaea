//! The queue as an apalis 1.0 backend: [`RedisBackend`] feeds a `WorkerBuilder`, and
//! its middleware, [`AttemptLayer`], settles every attempt through the fenced scripts.
//!
//! ```text
//!  fetcher task ──(leases, ≤ free slots)──► channel ──poll_next──► apalis worker
//!     │ blocks in BZPOPMIN when idle                                   │
//!     │                                       AttemptLayer (backend middleware)
//!     │                                         └─ user layers (tracing, catch_panic)
//!     │                                              └─ handler: the job's own logic
//!     └─ a slot (semaphore permit) per leased job, freed when the attempt is settled
//! ```
//!
//! The backend never returns an error to apalis: Redis faults are retried inside, so
//! a Redis restart does not kill the worker (apalis-redis 1.0.0's defect #8). Jobs that
//! cannot be decoded are dead-lettered with the reason and never reach the handler.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use apalis_core::backend::finalize::Ephemeral;
use apalis_core::backend::{Backend, BackendConfig};
use apalis_core::error::BoxDynError;
use apalis_core::task::Task;
use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::task_id::RandomId;
use apalis_core::task::task_id::TaskId;
use apalis_core::worker::context::WorkerContext;
use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::{Layer, Service};

use super::attempt::{AbortReason, AttemptContext};
use super::backoff::{is_transient, retry_delay};
use super::lease_keeper::LeaseKeeper;
use super::{
    AttemptRecord, Completion, Fenced, Lease, QueueError, RedisQueue, Settlement, new_fetch_id,
};
use crate::error::{ErrorClass, JobError};
use crate::job::Job;
use crate::time::{millis, redis_now_ms};

/// How long an idle fetcher blocks before looking again (also bounded by the next
/// delayed job's due time).
const IDLE_BLOCK: Duration = Duration::from_secs(5);
/// The most jobs one fetch leases.
const MAX_FETCH: usize = 64;
/// Extra time an attempt gets past its timeout before the layer gives up on it (the
/// runtime should have killed the work at the timeout already).
const TIMEOUT_GRACE: Duration = Duration::from_secs(10);
/// How long the fetcher waits before trying Redis again after a failed call.
const RECONNECT_PAUSE: Duration = Duration::from_millis(200);

/// The handler's answer: JSON stored as the job's output.
pub type JobOutput = serde_json::Value;

/// What a task carries into the middleware and handler besides the job.
#[derive(Clone)]
pub struct Slot(#[allow(dead_code)] Arc<OwnedSemaphorePermit>);

/// Most completions written in one script call.
const MAX_COMPLETE_BATCH: usize = 256;
/// Most result bytes written in one script call (a larger single result goes alone):
/// one call holds Redis, and must finish within the response timeout.
const MAX_COMPLETE_BYTES: usize = 4 << 20;

type CompletionReply = oneshot::Sender<Result<Fenced, String>>;

/// Writes results to Redis in batches without adding latency: a completion that
/// arrives when no call is in flight goes at once; those that arrive while one is in
/// flight go together in the next call, up to a count and a size. One script call per
/// job was the drain path's largest cost (see BENCHMARKS.md). A call that fails (a
/// timeout, an error) is split in halves and each half tried alone, so one huge or
/// refused result cannot block the others; what still fails is answered with the
/// error, and the attempt retries it (see `settle`).
#[derive(Clone)]
pub struct CompletionBatcher {
    tx: mpsc::UnboundedSender<(Completion, CompletionReply)>,
}

impl CompletionBatcher {
    /// Start the batching task; it ends when the last handle is dropped.
    pub fn start(queue: RedisQueue) -> CompletionBatcher {
        let (tx, mut rx) = mpsc::unbounded_channel::<(Completion, CompletionReply)>();
        tokio::spawn(async move {
            let mut next = None;
            loop {
                let first = match next.take() {
                    Some(c) => c,
                    None => match rx.recv().await {
                        Some(c) => c,
                        None => return,
                    },
                };
                let mut bytes = first.0.result_json.len();
                let mut batch = vec![first];
                while batch.len() < MAX_COMPLETE_BATCH {
                    match rx.try_recv() {
                        Ok(c) if bytes + c.0.result_json.len() > MAX_COMPLETE_BYTES => {
                            next = Some(c);
                            break;
                        }
                        Ok(c) => {
                            bytes += c.0.result_json.len();
                            batch.push(c);
                        }
                        Err(_) => break,
                    }
                }
                write_completions(&queue, batch).await;
            }
        });
        CompletionBatcher { tx }
    }

    /// Write one result (fenced), batched with others in flight.
    pub async fn complete(&self, completion: Completion) -> Result<Fenced, QueueError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((completion, reply))
            .map_err(|_| QueueError::Batch("the completion writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| QueueError::Batch("the completion writer has stopped".into()))?
            .map_err(QueueError::Batch)
    }
}

/// Write one batch of completions; a failed call is split until the failing
/// completions are alone.
async fn write_completions(queue: &RedisQueue, batch: Vec<(Completion, CompletionReply)>) {
    let mut todo = vec![batch];
    while let Some(mut batch) = todo.pop() {
        let completions: Vec<Completion> = batch.iter().map(|(c, _)| c.clone()).collect();
        match queue.complete_many_once(&completions).await {
            Ok(outcomes) => {
                for ((_, reply), outcome) in batch.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(outcome));
                }
            }
            // A timeout or an error reply may be this batch's own doing; a dropped or
            // refused connection is not, and splitting would only multiply the calls.
            Err(e) if batch.len() > 1 && (e.is_timeout() || !is_transient(&e)) => {
                tracing::warn!(error = %e, completions = batch.len(), "writing a batch of results failed; splitting it");
                let second = batch.split_off(batch.len() / 2);
                todo.push(second);
                todo.push(batch);
            }
            Err(e) => {
                let message = QueueError::Redis(e).to_string();
                for (_, reply) in batch {
                    let _ = reply.send(Err(message.clone()));
                }
            }
        }
    }
}

/// One shard of the queue a backend fetches from, with what settles its attempts.
struct Shard {
    queue: RedisQueue,
    keeper: Arc<LeaseKeeper>,
    completions: CompletionBatcher,
}

/// Which of the backend's shards a task was leased from (task data).
#[derive(Debug, Clone, Copy)]
pub struct ShardIndex(pub usize);

/// The apalis backend of one queue (of all its shards).
pub struct RedisBackend {
    shards: Arc<[Shard]>,
    rx: mpsc::Receiver<Task<Job>>,
    stop: CancellationToken,
    fetchers: Vec<JoinHandle<()>>,
    closing: Option<JoinHandle<()>>,
}

impl RedisBackend {
    /// Start fetching for `worker` with at most `concurrency` jobs leased at once.
    /// Cancelling `stop` stops fetching; the worker then drains and ends.
    pub fn start(
        queue: RedisQueue,
        keeper: Arc<LeaseKeeper>,
        worker: &str,
        concurrency: usize,
        stop: CancellationToken,
    ) -> RedisBackend {
        Self::start_sharded(vec![(queue, keeper)], worker, concurrency, stop)
    }

    /// [`RedisBackend::start`] over the shards of a queue (`shards.rs`), each with its
    /// own lease keeper: one fetcher per shard, each blocking on its shard's marker when
    /// that shard is idle (no polling), all drawing on the same `concurrency` slots.
    /// Fetchers with work take turns (a FIFO lock held while one gathers free slots
    /// and fetches), so a backlog on one shard cannot starve another, and each fetch
    /// still leases as many jobs as there are free slots.
    pub fn start_sharded(
        shards: Vec<(RedisQueue, Arc<LeaseKeeper>)>,
        worker: &str,
        concurrency: usize,
        stop: CancellationToken,
    ) -> RedisBackend {
        let (tx, rx) = mpsc::channel(concurrency.max(1));
        let slots = Arc::new(Semaphore::new(concurrency.max(1)));
        let turns = Arc::new(tokio::sync::Mutex::new(()));
        let worker: Arc<str> = Arc::from(worker);
        let fetchers = shards
            .iter()
            .enumerate()
            .map(|(index, (queue, keeper))| {
                tokio::spawn(fetch_loop(
                    queue.clone(),
                    keeper.clone(),
                    worker.clone(),
                    slots.clone(),
                    tx.clone(),
                    stop.clone(),
                    (ShardIndex(index), turns.clone()),
                ))
            })
            .collect();
        let shards: Arc<[Shard]> = shards
            .into_iter()
            .map(|(queue, keeper)| Shard {
                completions: CompletionBatcher::start(queue.clone()),
                queue,
                keeper,
            })
            .collect();
        RedisBackend {
            shards,
            rx,
            stop,
            fetchers,
            closing: None,
        }
    }
}

/// The shard a task came from (shard 0 for a task without the mark).
fn shard_of<'a>(shards: &'a [Shard], task: &Task<Job>) -> &'a Shard {
    let index = task.data().get::<ShardIndex>().map_or(0, |s| s.0);
    &shards[index.min(shards.len() - 1)]
}

async fn fetch_loop(
    queue: RedisQueue,
    keeper: Arc<LeaseKeeper>,
    worker: Arc<str>,
    slots: Arc<Semaphore>,
    tx: mpsc::Sender<Task<Job>>,
    stop: CancellationToken,
    (shard, turns): (ShardIndex, Arc<tokio::sync::Mutex<()>>),
) {
    let mut blocking = None;
    let policy = queue.config().policy.clone();
    loop {
        // The fetchers of a sharded queue take turns (a FIFO mutex): one gathers free
        // slots and fetches while the others wait, so the slots freed meanwhile go to
        // the next one as a batch (one fetch call for many jobs, as with one shard), and
        // a shard that gets work waits at most one turn of each other shard. An idle
        // fetcher blocks on its marker without the turn.
        let turn = tokio::select! {
            _ = stop.cancelled() => return,
            turn = turns.clone().lock_owned() => turn,
        };
        let first = tokio::select! {
            _ = stop.cancelled() => return,
            permit = slots.clone().acquire_owned() => permit.expect("slots never close"),
        };
        let mut permits = vec![first];
        while permits.len() < MAX_FETCH {
            match slots.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        // Never raced against `stop`: a fetch abandoned in flight would leave the jobs
        // it leased running with no holder until their leases expire, each charged an
        // attempt. A failed try is tried again under the same fetch ID, which returns
        // what the lost try leased; once stopped, what a fetch got is handed back.
        let fetch_id = new_fetch_id();
        let mut turn = Some(turn);
        let fetched = loop {
            let tried = queue.fetch_once(&worker, permits.len(), &fetch_id).await;
            // After the first try the next shard may go: one whose Redis fails holds
            // no one up while it retries.
            turn.take();
            match tried {
                Ok(f) => break Some(f),
                Err(e) if stop.is_cancelled() => {
                    tracing::debug!(error = %e, "fetch failed while stopping");
                    break None;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "fetch failed; retrying");
                    // On a stop the pause ends early and the same fetch is tried once
                    // more, to hand back whatever the failed try may have leased.
                    pause(&stop, RECONNECT_PAUSE).await;
                }
            }
        };
        let Some(fetched) = fetched else { return };
        if stop.is_cancelled() {
            for lease in &fetched.leases {
                hand_back(&queue, &worker, lease).await;
            }
            return;
        }
        if fetched.leases.is_empty() {
            drop(permits);
            let block = match fetched.next_due_ms {
                Some(due) => {
                    Duration::from_millis(due.saturating_sub(fetched.redis_now_ms)).min(IDLE_BLOCK)
                }
                None => IDLE_BLOCK,
            };
            if block.is_zero() {
                continue;
            }
            let conn = match blocking.as_mut() {
                Some(conn) => conn,
                None => match queue.blocking_connection(IDLE_BLOCK).await {
                    Ok(conn) => blocking.insert(conn),
                    Err(e) => {
                        tracing::debug!(error = %e, "no connection to block on yet; retrying");
                        if !pause(&stop, RECONNECT_PAUSE).await {
                            return;
                        }
                        continue;
                    }
                },
            };
            let waited = tokio::select! {
                _ = stop.cancelled() => return,
                r = queue.wait_for_work(conn, block) => r,
            };
            if let Err(e) = waited {
                tracing::debug!(error = %e, "blocking wait failed; reconnecting");
                blocking = None;
                if !pause(&stop, RECONNECT_PAUSE).await {
                    return;
                }
            }
            continue;
        }
        for lease in fetched.leases {
            let permit = permits.pop().expect("a slot per lease");
            let job = match lease.decode() {
                Ok(job) => job,
                Err(reason) => {
                    tracing::error!(job_id = %lease.id, %reason, "dead-lettering an undecodable job");
                    let record = AttemptRecord::ended(
                        &lease,
                        &worker,
                        lease.leased_at_ms,
                        ErrorClass::Permanent.as_str(),
                        Some(reason.clone()),
                    );
                    let error = json!({"class": "permanent", "message": reason});
                    if let Err(e) = queue.fail(&lease, Settlement::Dead, &error, &record).await {
                        tracing::error!(error = %e, "could not dead-letter the job; its lease will expire and it will be retried");
                    }
                    continue;
                }
            };
            let abort = keeper.hold(&lease);
            let job_policy = policy.for_job(&job.spec.options);
            let attempt_timeout = Duration::from_secs(job_policy.attempt_timeout_secs);
            let ctx = AttemptContext {
                lease: Arc::new(lease),
                abort,
                attempt_timeout,
                policy: Arc::new(job_policy),
                worker: worker.clone(),
                undo: Default::default(),
            };
            let task_id = TaskId::from_string(job.id.to_string());
            let mut task = TaskBuilder::new(job).task_id(task_id).build();
            task.inject_data(ctx.clone());
            task.inject_data(Slot(Arc::new(permit)));
            task.inject_data(shard);
            if tx.send(task).await.is_err() {
                // The worker is gone: hand the job back at once.
                release(&queue, &keeper, &ctx).await;
            }
        }
    }
}

/// Wait `d` unless `stop` comes first; `false` when stopped.
async fn pause(stop: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

/// Hand a lease back unstarted (the attempt does not count).
async fn hand_back(queue: &RedisQueue, worker: &str, lease: &Lease) {
    let record = AttemptRecord::ended(lease, worker, redis_now_ms(), "released", None);
    if let Err(e) = queue
        .fail(lease, Settlement::Release, &json!(null), &record)
        .await
    {
        tracing::warn!(job_id = %lease.id, error = %e, "could not release the job; it runs again when its lease expires");
    }
}

async fn release(queue: &RedisQueue, keeper: &LeaseKeeper, ctx: &AttemptContext) {
    hand_back(queue, &ctx.worker, &ctx.lease).await;
    keeper.release(&ctx.lease);
}

impl Backend for RedisBackend {
    type Task = Task<Job>;
    type Error = std::convert::Infallible;

    fn poll_ready(
        &mut self,
        _: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Option<Result<Self::Task, Self::Error>>> {
        self.rx.poll_recv(cx).map(|t| t.map(Ok))
    }

    fn poll_close(
        &mut self,
        cx: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        if self.closing.is_none() {
            self.stop.cancel();
            let fetchers = std::mem::take(&mut self.fetchers);
            let (_, closed) = mpsc::channel(1);
            let mut rx = std::mem::replace(&mut self.rx, closed);
            let shards = self.shards.clone();
            self.closing = Some(tokio::spawn(async move {
                for f in fetchers {
                    let _ = f.await;
                }
                // Leased but never started: hand back without counting an attempt.
                while let Some(task) = rx.recv().await {
                    if let Some(ctx) = task.data().get::<AttemptContext>() {
                        let shard = shard_of(&shards, &task);
                        release(&shard.queue, &shard.keeper, ctx).await;
                    }
                }
            }));
        }
        match self.closing.as_mut().expect("set above").poll_unpin(cx) {
            Poll::Ready(_) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl BackendConfig for RedisBackend {
    type Args = Job;
    type Id = RandomId;
    type Kind = Ephemeral;
    type Config = ();
    type Layer = AttemptLayer;

    fn config(&self) -> &Self::Config {
        &()
    }

    fn middleware(&mut self, _: &mut WorkerContext) -> Self::Layer {
        AttemptLayer {
            shards: self.shards.clone(),
        }
    }
}

/// Middleware that settles each attempt: result written under the fencing token, or
/// the failure classified and retried, dead-lettered, cancelled or released.
#[derive(Clone)]
pub struct AttemptLayer {
    shards: Arc<[Shard]>,
}

impl<S> Layer<S> for AttemptLayer {
    type Service = AttemptService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AttemptService {
            inner,
            shards: self.shards.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AttemptService<S> {
    inner: S,
    shards: Arc<[Shard]>,
}

impl<S, E> Service<Task<Job>> for AttemptService<S>
where
    S: Service<Task<Job>, Response = JobOutput, Error = E>,
    S::Future: Send + 'static,
    E: Into<BoxDynError>,
{
    type Response = ();
    type Error = BoxDynError;
    type Future = Pin<Box<dyn Future<Output = Result<(), BoxDynError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, task: Task<Job>) -> Self::Future {
        let Some(ctx) = task.data().get::<AttemptContext>().cloned() else {
            return Box::pin(async { Err("task without an attempt context".into()) });
        };
        let slot = task.data().get::<Slot>().cloned();
        let shard = shard_of(&self.shards, &task);
        let queue = shard.queue.clone();
        let keeper = shard.keeper.clone();
        let completions = shard.completions.clone();
        let started_at = redis_now_ms();
        let deadline = ctx.lease.deadline_at_ms;
        let run: BoxFuture<'static, Result<JobOutput, JobError>> =
            if deadline != 0 && started_at > deadline {
                Box::pin(async {
                    Err(JobError::permanent(
                        "deadline passed before the attempt could start",
                    ))
                })
            } else {
                let fut = self.inner.call(task);
                let limit = ctx.attempt_timeout.saturating_add(TIMEOUT_GRACE);
                Box::pin(async move {
                    match tokio::time::timeout(limit, fut).await {
                        Ok(Ok(output)) => Ok(output),
                        Ok(Err(e)) => Err(to_job_error(e.into())),
                        Err(_) => Err(JobError::timeout(format!(
                            "attempt still running {}s after its timeout; abandoned",
                            TIMEOUT_GRACE.as_secs()
                        ))),
                    }
                })
            };
        Box::pin(async move {
            let outcome = run.await;
            // The work is done: let the fetcher lease the next job while this one's
            // outcome is written (the lease stays held and renewed until then).
            drop(slot);
            settle(&queue, &completions, &ctx, outcome, started_at).await;
            keeper.release(&ctx.lease);
            Ok(())
        })
    }
}

/// An attempt's outcome, as it is written.
enum Write {
    Complete(Completion),
    Fail(Box<(Settlement, serde_json::Value, AttemptRecord)>),
}

/// How long an attempt keeps trying to write its outcome before it gives up (its lease
/// is then released and the job runs again), and the pauses between tries.
const SETTLE_PATIENCE: Duration = Duration::from_secs(600);
const SETTLE_PAUSE_MIN: Duration = Duration::from_millis(100);
const SETTLE_PAUSE_MAX: Duration = Duration::from_secs(2);

/// The handler's error as a classified job error. Errors that are not `JobError`s
/// (a panic caught by `catch_panic`, a missing extractor) are bugs: permanent.
fn to_job_error(err: BoxDynError) -> JobError {
    match err.downcast::<JobError>() {
        Ok(e) => *e,
        Err(other) => JobError::permanent(format!("worker error: {other}")),
    }
}

/// What is stored as a succeeded job's result: the handler's output and how the
/// attempt went (`fleet status` derives the attempt's history entry from it).
#[derive(serde::Serialize)]
struct ResultEnvelope<'a> {
    output: &'a JobOutput,
    attempts: u32,
    worker: &'a str,
    created_at: u64,
    started_at: u64,
    finished_at: u64,
    queued_ms: u64,
    run_ms: u64,
    total_ms: u64,
}

/// Decide and write the outcome of one attempt.
async fn settle(
    queue: &RedisQueue,
    completions: &CompletionBatcher,
    ctx: &AttemptContext,
    outcome: Result<JobOutput, JobError>,
    started_at: u64,
) {
    let lease = &ctx.lease;
    let ended_at = redis_now_ms();
    let reason = ctx.abort.reason();
    if reason == Some(AbortReason::LeaseLost) {
        tracing::warn!(job_id = %lease.id, attempt = lease.attempt, "stale attempt ended; its outcome is discarded (another worker owns the job)");
        undo_discarded(ctx).await;
        return;
    }
    // What to write, decided once; written below until it lands.
    let write = match outcome {
        Ok(mut output) => {
            // A long answer goes to its own key first (results/store.rs); the result
            // written below says where, and its complete makes it the job's.
            let staged = match queue
                .stage_answer(&lease.id, &lease.token, &mut output)
                .await
            {
                Ok(staged) => staged,
                Err(e) => {
                    tracing::error!(job_id = %lease.id, error = %e, "could not store the answer; the job runs again when its lease expires");
                    undo_discarded(ctx).await;
                    return;
                }
            };
            let result = ResultEnvelope {
                output: &output,
                attempts: lease.attempt,
                worker: &ctx.worker,
                created_at: lease.created_at_ms,
                started_at,
                finished_at: ended_at,
                queued_ms: lease.leased_at_ms.saturating_sub(lease.created_at_ms),
                run_ms: ended_at.saturating_sub(started_at),
                total_ms: ended_at.saturating_sub(lease.created_at_ms),
            };
            Write::Complete(Completion {
                id: lease.id.clone(),
                token: lease.token.clone(),
                result_json: serde_json::to_string(&result).expect("a JSON value serialises"),
                staged,
                // The job's spend, all attempts (gateway/mod.rs `AttemptSpend::add_to`);
                // without the gateway, the agent's own figure (Claude Code's).
                cost_usd: output
                    .get("cost_usd")
                    .or_else(|| output.pointer("/metadata/total_cost_usd"))
                    .and_then(serde_json::Value::as_f64)
                    .unwrap_or(0.0),
            })
        }
        Err(err) => {
            let settlement = decide(&ctx.policy, lease, &err, reason, ended_at);
            let outcome = match settlement {
                Settlement::Release => "released",
                _ => err.class.as_str(),
            };
            let mut record = AttemptRecord::ended(
                lease,
                &ctx.worker,
                started_at,
                outcome,
                Some(err.message.clone()),
            );
            if let Settlement::Retry { delay } = settlement {
                record.retry_in_ms = Some(millis(delay));
            }
            record.details = err.details.clone();
            let message = match settlement {
                Settlement::Dead
                    if err.class.is_retryable() && lease.attempt >= lease.max_attempts =>
                {
                    format!(
                        "{} (gave up after attempt {} of {})",
                        err.message, lease.attempt, lease.max_attempts
                    )
                }
                Settlement::Dead if err.class.is_retryable() => format!(
                    "{} (not retried: the job's deadline would pass before attempt {})",
                    err.message,
                    lease.attempt + 1
                ),
                _ => err.message.clone(),
            };
            let error = json!({"class": err.class, "message": message, "attempt": lease.attempt});
            tracing::info!(job_id = %lease.id, attempt = lease.attempt, class = %err.class, settlement = ?settlement, error = %err.message, "attempt failed");
            Write::Fail(Box::new((settlement, error, record)))
        }
    };
    // The lease stays held (renewed) while the outcome is written, and a write that
    // fails is tried again: giving up would let the lease expire and the job be charged
    // a lost lease, so a succeeded last attempt would end dead. It stops when the lease
    // is lost anyway (someone else owns the job), at shutdown, or after SETTLE_PATIENCE.
    let give_up = Instant::now() + SETTLE_PATIENCE;
    let mut pause = SETTLE_PAUSE_MIN;
    let written = loop {
        let written = match &write {
            Write::Complete(c) => completions.complete(c.clone()).await,
            Write::Fail(failed) => {
                let (settlement, error, record) = failed.as_ref();
                queue.fail(lease, *settlement, error, record).await
            }
        };
        let Err(e) = &written else { break written };
        let reason = ctx.abort.reason();
        if matches!(reason, Some(AbortReason::LeaseLost | AbortReason::Shutdown))
            || Instant::now() >= give_up
        {
            break written;
        }
        tracing::warn!(job_id = %lease.id, error = %e, retry_in_ms = pause.as_millis() as u64, "could not record the outcome; retrying while the lease is held");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(SETTLE_PAUSE_MAX);
    };
    match written {
        Ok(Fenced::Accepted) => return,
        Ok(Fenced::Stale) => {
            tracing::warn!(job_id = %lease.id, attempt = lease.attempt, "outcome refused: this attempt's lease was lost (fencing token is stale)")
        }
        Err(e) => {
            tracing::error!(job_id = %lease.id, error = %e, "could not record the outcome; the job runs again when its lease expires")
        }
    }
    undo_discarded(ctx).await;
}

/// The job's work is done again by a later attempt: undo what this one's success made.
async fn undo_discarded(ctx: &AttemptContext) {
    if let Some(undo) = ctx.undo.take() {
        tracing::warn!(job_id = %ctx.lease.id, attempt = ctx.lease.attempt, "undoing this attempt's discarded success");
        undo().await;
    }
}

fn decide(
    policy: &crate::settings::RetryPolicy,
    lease: &Lease,
    err: &JobError,
    reason: Option<AbortReason>,
    now: u64,
) -> Settlement {
    if matches!(
        reason,
        Some(AbortReason::Shutdown | AbortReason::LeaseUnconfirmed)
    ) {
        return Settlement::Release;
    }
    if reason == Some(AbortReason::Cancelled) || err.class == ErrorClass::Cancelled {
        return Settlement::Cancelled;
    }
    if !err.class.is_retryable() || lease.attempt >= lease.max_attempts {
        return Settlement::Dead;
    }
    let delay = if err.class == ErrorClass::SandboxLost {
        // Another agent can take it at once; the lost sandbox is not coming back.
        err.retry_after.unwrap_or_default()
    } else {
        retry_delay(policy, lease.attempt, err.retry_after)
    };
    if lease.deadline_at_ms != 0 && now.saturating_add(millis(delay)) > lease.deadline_at_ms {
        return Settlement::Dead;
    }
    Settlement::Retry { delay }
}
