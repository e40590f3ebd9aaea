//! The agent registry: every agent of the fleet, one record each, in Redis — so any
//! worker can lease any agent, and what one worker launched, another can pause,
//! resume, adopt or terminate.
//!
//! One Lua script per transition (`lua/`, KEYS/ARGV in each header), one method per
//! script, the same discipline as the job queue: every transition bumps the agent's
//! `fence`; an operation in progress (a job's lease, a pause, a kill) carries the
//! fence it set, and the script that ends it is refused if the fence moved. An agent
//! is never held by two jobs, never paused or killed under a running job, and a
//! change that lost a race is refused and reported, never overwritten.
//!
//! Scripts that pick among several agents (`lease`) or walk expired holds (`adopt`)
//! are given the candidates' keys in KEYS: the caller reads candidates first and the
//! script checks each again, so no script builds a key name.
//!
//! Keys live under `<key_prefix>:{agents}:` (one Redis Cluster hash tag):
//!
//! | key                   | type    | holds                                                   |
//! |-----------------------|---------|---------------------------------------------------------|
//! | `…:agent:<id>`        | HASH    | the agent's record (see [`AgentRecord`])                |
//! | `…:all`               | ZSET    | agent ID → created (ms)                                 |
//! | `…:profile:<p>`       | ZSET    | the profile's agent IDs → created (its fleet-wide count) |
//! | `…:idle:<p>`          | ZSET    | pooled (not persistent) idle agents → idle since (ms)   |
//! | `…:paused:<p>`        | ZSET    | pooled paused agents → paused since (ms)                |
//! | `…:held`              | ZSET    | agents someone holds → hold expiry (ms)                 |
//! | `…:waiters:<id>`      | ZSET    | jobs waiting for agent `<id>` → submission order        |
//! | `…:waiter_expiry:<id>`| HASH    | waiting job → when its entry lapses unless renewed (ms) |
//! | `…:changed` (channel) | PUBSUB  | `<profile> <agent ID>` when an agent may be free        |

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::Duration;

use crate::connection::RedisConn;
use redis::{Script, Value};
use serde::Serialize;

use crate::queue::QueueError;

pub type RegistryError = QueueError;

const LIB: &str = include_str!("lua/_lib.lua");

fn load(body: &str) -> Script {
    Script::new(&format!("{LIB}\n{body}"))
}

struct Scripts {
    launch: Script,
    attach_sandbox: Script,
    ready: Script,
    lease: Script,
    lease_agent: Script,
    give_back: Script,
    pause: Script,
    paused: Script,
    resume: Script,
    terminate: Script,
    forget: Script,
    renew: Script,
    adopt: Script,
    extend: Script,
    add_cost: Script,
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    launch: load(include_str!("lua/launch-4.lua")),
    attach_sandbox: load(include_str!("lua/attach_sandbox-1.lua")),
    ready: load(include_str!("lua/ready-4.lua")),
    lease: load(include_str!("lua/lease-N.lua")),
    lease_agent: load(include_str!("lua/lease_agent-6.lua")),
    give_back: load(include_str!("lua/give_back-5.lua")),
    pause: load(include_str!("lua/pause-3.lua")),
    paused: load(include_str!("lua/paused-4.lua")),
    resume: load(include_str!("lua/resume-3.lua")),
    terminate: load(include_str!("lua/terminate-5.lua")),
    forget: load(include_str!("lua/forget-9.lua")),
    renew: load(include_str!("lua/renew-N.lua")),
    adopt: load(include_str!("lua/adopt-5.lua")),
    extend: load(include_str!("lua/extend-1.lua")),
    add_cost: load(include_str!("lua/add_cost-1.lua")),
});

/// How long a job submitted to an agent, but not yet taken by a worker, holds back
/// later jobs for that agent once it is in their way (see `lease_agent-6.lua`).
pub const WAITER_GRACE: Duration = Duration::from_secs(1);

/// How many idle (and paused) agents one `lease` call considers.
const LEASE_CANDIDATES: isize = 8;

/// The registry's key names.
#[derive(Debug, Clone)]
pub struct RegistryKeys {
    prefix: String,
    pub all: String,
    pub held: String,
    pub changed: String,
}

impl RegistryKeys {
    pub fn new(key_prefix: &str) -> RegistryKeys {
        let prefix = format!("{key_prefix}:{{agents}}:");
        RegistryKeys {
            all: format!("{prefix}all"),
            held: format!("{prefix}held"),
            changed: format!("{prefix}changed"),
            prefix,
        }
    }
    pub fn agent(&self, id: &str) -> String {
        format!("{}agent:{id}", self.prefix)
    }
    pub fn profile(&self, p: &str) -> String {
        format!("{}profile:{p}", self.prefix)
    }
    pub fn idle(&self, p: &str) -> String {
        format!("{}idle:{p}", self.prefix)
    }
    pub fn paused(&self, p: &str) -> String {
        format!("{}paused:{p}", self.prefix)
    }
    pub fn waiters(&self, id: &str) -> String {
        format!("{}waiters:{id}", self.prefix)
    }
    pub fn waiter_expiry(&self, id: &str) -> String {
        format!("{}waiter_expiry:{id}", self.prefix)
    }
}

/// Where an agent is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentState {
    /// Registered; its sandbox is being created and the agent set up.
    Launching,
    /// Running and free: a job may lease it.
    Idle,
    /// A job holds it.
    Busy,
    /// Its sandbox is being paused.
    Pausing,
    /// Paused (files kept; not billed as running). A lease resumes it.
    Paused,
    /// Being resumed (for a job, or a `resume` command).
    Resuming,
    /// Its sandbox is being killed; the record goes once the kill is confirmed.
    Terminating,
}

impl AgentState {
    pub fn parse(s: &str) -> Option<AgentState> {
        Some(match s {
            "launching" => AgentState::Launching,
            "idle" => AgentState::Idle,
            "busy" => AgentState::Busy,
            "pausing" => AgentState::Pausing,
            "paused" => AgentState::Paused,
            "resuming" => AgentState::Resuming,
            "terminating" => AgentState::Terminating,
            _ => return None,
        })
    }
}

/// One agent, as the registry holds it (`fleet agents list`, `GET` of an agent).
#[derive(Debug, Clone, Serialize)]
pub struct AgentRecord {
    pub agent_id: String,
    pub profile: String,
    /// `local` or `e2b`.
    pub provider: String,
    pub sandbox_id: String,
    pub state: AgentState,
    pub persistent: bool,
    pub ephemeral: bool,
    /// The job holding it, or `pool` for the fleet's own pause/resume/kill; empty
    /// when nobody holds it.
    pub holder: String,
    /// The worker process of the holder.
    pub worker: String,
    /// Until when the hold lasts unless renewed (ms, Redis clock; 0 = not held).
    pub hold_until_ms: u64,
    /// Bumped by every transition; an operation in progress carries the one it set.
    pub fence: u64,
    pub jobs_served: u64,
    /// Seconds its sandbox ran (launching, idle, busy, ...), counted to the last
    /// state change, and seconds it was paused.
    pub active_secs: f64,
    pub paused_secs: f64,
    /// What the attempts it ran spent (USD: the gateway's priced tokens, else the
    /// agent's own figure; `add_cost-1.lua`).
    pub cost_usd: f64,
    pub created_at_ms: u64,
    pub last_used_ms: u64,
    pub state_since_ms: u64,
    /// Until when its sandbox lives at the provider unless extended (ms).
    pub sandbox_until_ms: u64,
    /// `ok` after a launch or resume that passed its checks.
    pub health: String,
    /// The machine of a local-provider agent (only workers there may lease it).
    pub host: String,
    pub repo: String,
    pub commit: String,
    /// The worker that launched it.
    pub launched_by: String,
    /// How it reaches model providers: `gateway` (a per-attempt token, the keys stay
    /// in the worker) or `direct` (the profile's `secret_env` keys in its sandbox).
    pub model_access: String,
    /// A pause or terminate asked for while a job held it, done when the job ends.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub after: String,
}

impl AgentRecord {
    fn from_hash(h: &BTreeMap<String, String>) -> Option<AgentRecord> {
        let s = |k: &str| h.get(k).cloned().unwrap_or_default();
        let n = |k: &str| h.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        Some(AgentRecord {
            agent_id: h.get("id")?.clone(),
            profile: s("profile"),
            provider: s("provider"),
            sandbox_id: s("sandbox"),
            state: AgentState::parse(&s("state"))?,
            persistent: s("persistent") == "1",
            ephemeral: s("ephemeral") == "1",
            holder: s("holder"),
            worker: s("worker"),
            hold_until_ms: n("hold_until"),
            fence: n("fence"),
            jobs_served: n("jobs"),
            active_secs: n("active_ms") as f64 / 1000.0,
            paused_secs: n("paused_ms") as f64 / 1000.0,
            cost_usd: n("cost_micro") as f64 / 1e6,
            created_at_ms: n("created"),
            last_used_ms: n("last_used"),
            state_since_ms: n("state_since"),
            sandbox_until_ms: n("sandbox_until"),
            health: s("health"),
            host: s("host"),
            repo: s("repo"),
            commit: s("commit"),
            launched_by: s("launched_by"),
            model_access: s("model_access"),
            after: s("after"),
        })
    }
}

/// What a lease script handed over.
#[derive(Debug, Clone)]
pub struct Leased {
    pub agent_id: String,
    pub sandbox_id: String,
    /// `Busy` (use it) or `Resuming` (resume its sandbox, then `ready`).
    pub state: AgentState,
    pub fence: u64,
    pub jobs_served: u64,
    pub persistent: bool,
    /// How long its sandbox lives yet at the provider, as last recorded.
    pub sandbox_remaining: Duration,
    /// How long ago it was launched.
    pub age: Duration,
    /// How long it sat idle (or paused) before this lease.
    pub rested: Duration,
}

/// The answer of `lease_agent` (a job naming its agent).
#[derive(Debug, Clone)]
pub enum ByIdAnswer {
    Leased(Leased),
    /// The agent is busy, or other jobs for it are ahead: wait for a change.
    Wait {
        state: String,
        position: u64,
    },
    /// It will never be this job's (unknown, another profile or host, terminating).
    Never(String),
}

/// The answer of a script that starts an operation (pause, resume, terminate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Started: the caller holds the agent under `fence` and finishes the operation.
    Started { fence: u64, sandbox_id: String },
    /// Noted, to be done when the job holding the agent gives it back.
    AfterJob { state: String },
    /// Nothing to do (already in, or on the way to, the wanted state).
    AlreadyDone { state: String },
    /// Refused (it lost a race, or the agent is gone): the state found.
    Refused { state: String },
}

/// The answer of a script that finishes an operation (`ready`, `paused`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    Done {
        fence: u64,
    },
    /// A terminate was asked for meanwhile: the caller now kills it (under `fence`).
    Terminate {
        fence: u64,
    },
    /// The operation lost the agent (recovered by another worker): the state found.
    Refused {
        state: String,
    },
}

/// What `give_back` decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveBack {
    Keep,
    Pause,
    Kill,
}

impl GiveBack {
    fn as_str(self) -> &'static str {
        match self {
            GiveBack::Keep => "keep",
            GiveBack::Pause => "pause",
            GiveBack::Kill => "kill",
        }
    }
}

/// Who asks for a terminate: a user's command (a busy agent is terminated after its
/// job), the policy (only idle or paused agents, as last read), or the agent's holder
/// ending its own failed launch or resume (whatever the state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TerminateBy {
    Command,
    Policy,
    Holder,
}

impl TerminateBy {
    fn as_str(self) -> &'static str {
        match self {
            TerminateBy::Command => "command",
            TerminateBy::Policy => "policy",
            TerminateBy::Holder => "holder",
        }
    }
}

/// What `adopt` did with an expired hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Adopted {
    Nothing,
    /// Back in the pool (a persistent agent whose job's worker died).
    Freed,
    /// The caller's to finish: pause it again, or kill it.
    Finish {
        pause: bool,
        fence: u64,
        sandbox_id: String,
    },
}

/// The registry, over one self-healing connection. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    conn: RedisConn,
    keys: RegistryKeys,
}

fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        Value::VerbatimString { text, .. } => text.clone(),
        _ => String::new(),
    }
}

fn int(v: &Value) -> i64 {
    match v {
        Value::Int(i) => *i,
        other => text(other).parse().unwrap_or(0),
    }
}

fn parse_leased(fields: &[Value]) -> Leased {
    // id, sandbox, state, fence, jobs, persistent, remaining lifetime, age, profile
    let f = |i: usize| fields.get(i).map(text).unwrap_or_default();
    let n = |i: usize| f(i).parse::<u64>().unwrap_or(0);
    Leased {
        agent_id: f(0),
        sandbox_id: f(1),
        state: AgentState::parse(&f(2)).unwrap_or(AgentState::Busy),
        fence: n(3),
        jobs_served: n(4),
        persistent: f(5) == "1",
        sandbox_remaining: Duration::from_millis(n(6)),
        age: Duration::from_millis(n(7)),
        rested: Duration::from_millis(n(9)),
    }
}

fn parse_start(reply: &[Value]) -> Start {
    let f = |i: usize| reply.get(i).map(text).unwrap_or_default();
    match reply.first().map(int).unwrap_or(0) {
        1 => Start::Started {
            fence: f(1).parse().unwrap_or(0),
            sandbox_id: f(2),
        },
        2 => Start::AfterJob { state: f(1) },
        3 => Start::AlreadyDone { state: f(1) },
        _ => Start::Refused { state: f(1) },
    }
}

fn parse_finish(reply: &[Value]) -> Finish {
    let f = |i: usize| reply.get(i).map(text).unwrap_or_default();
    match reply.first().map(int).unwrap_or(0) {
        1 => Finish::Done {
            fence: f(1).parse().unwrap_or(0),
        },
        2 => Finish::Terminate {
            fence: f(1).parse().unwrap_or(0),
        },
        _ => Finish::Refused { state: f(1) },
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

impl Registry {
    pub fn new(conn: RedisConn, key_prefix: &str) -> Registry {
        Registry {
            conn,
            keys: RegistryKeys::new(key_prefix),
        }
    }

    pub async fn open(redis: &crate::settings::RedisSettings) -> Result<Registry, RegistryError> {
        Ok(Registry::new(
            crate::queue::connect(redis).await?,
            &redis.key_prefix,
        ))
    }

    pub fn keys(&self) -> &RegistryKeys {
        &self.keys
    }

    fn conn(&self) -> RedisConn {
        self.conn.clone()
    }

    /// Register a new agent (state launching, held by `holder`); `None` when the
    /// profile is at `max_agents` fleet-wide (`launch-4.lua`).
    #[allow(clippy::too_many_arguments)]
    pub async fn launch(
        &self,
        agent_id: &str,
        profile: &str,
        provider: &str,
        persistent: bool,
        ephemeral: bool,
        host: &str,
        holder: &str,
        worker: &str,
        hold: Duration,
        max_agents: usize,
        repo: &str,
        model_access: &str,
    ) -> Result<Option<u64>, RegistryError> {
        let reply: Vec<Value> = SCRIPTS
            .launch
            .key(self.keys.agent(agent_id))
            .key(&self.keys.all)
            .key(self.keys.profile(profile))
            .key(&self.keys.held)
            .arg(agent_id)
            .arg(profile)
            .arg(provider)
            .arg(u8::from(persistent))
            .arg(host)
            .arg(holder)
            .arg(worker)
            .arg(ms(hold))
            .arg(max_agents)
            .arg(repo)
            .arg(u8::from(ephemeral))
            .arg(model_access)
            .invoke_async(&mut self.conn())
            .await?;
        Ok((reply.first().map(int) == Some(1)).then(|| int(&reply[1]) as u64))
    }

    /// Record the sandbox a launch created (`attach_sandbox-1.lua`); false: the
    /// launch lost its agent.
    pub async fn attach_sandbox(
        &self,
        agent_id: &str,
        fence: u64,
        sandbox_id: &str,
        lifetime: Duration,
    ) -> Result<bool, RegistryError> {
        let reply: Vec<Value> = SCRIPTS
            .attach_sandbox
            .key(self.keys.agent(agent_id))
            .arg(fence)
            .arg(sandbox_id)
            .arg(ms(lifetime))
            .invoke_async(&mut self.conn())
            .await?;
        Ok(reply.first().map(int) == Some(1))
    }

    /// A launch or resume finished (`ready-4.lua`): the agent goes to its holder's job
    /// (`busy`) or to the pool.
    #[allow(clippy::too_many_arguments)]
    pub async fn ready(
        &self,
        agent_id: &str,
        profile: &str,
        fence: u64,
        busy: bool,
        lifetime: Option<Duration>,
        commit: &str,
        hold: Duration,
    ) -> Result<Finish, RegistryError> {
        let reply: Vec<Value> = SCRIPTS
            .ready
            .key(self.keys.agent(agent_id))
            .key(&self.keys.held)
            .key(self.keys.idle(profile))
            .key(&self.keys.changed)
            .arg(fence)
            .arg(if busy { "busy" } else { "idle" })
            .arg(lifetime.map(ms).unwrap_or(0))
            .arg(commit)
            .arg(ms(hold))
            .invoke_async(&mut self.conn())
            .await?;
        Ok(parse_finish(&reply))
    }

    /// Lease one of the profile's pooled agents, idle first, else paused (`lease-N.lua`).
    /// `None`: none is free.
    pub async fn lease(
        &self,
        profile: &str,
        holder: &str,
        worker: &str,
        hold: Duration,
        host: &str,
        max_age: Option<Duration>,
    ) -> Result<Option<Leased>, RegistryError> {
        for _ in 0..4 {
            let (idle, paused): (Vec<String>, Vec<String>) = redis::pipe()
                .zrange(self.keys.idle(profile), 0, LEASE_CANDIDATES - 1)
                .zrange(self.keys.paused(profile), 0, LEASE_CANDIDATES / 2 - 1)
                .query_async(&mut self.conn())
                .await?;
            if idle.is_empty() && paused.is_empty() {
                return Ok(None);
            }
            let mut call = SCRIPTS.lease.prepare_invoke();
            call.key(&self.keys.held)
                .key(self.keys.idle(profile))
                .key(self.keys.paused(profile));
            for id in idle.iter().chain(&paused) {
                call.key(self.keys.agent(id));
            }
            call.arg(holder)
                .arg(worker)
                .arg(ms(hold))
                .arg(host)
                .arg(profile)
                .arg(max_age.map(ms).unwrap_or(0));
            for id in idle.iter().chain(&paused) {
                call.arg(id);
            }
            let reply: Vec<Value> = call.invoke_async(&mut self.conn()).await?;
            if reply.first().map(int) == Some(1) {
                return Ok(Some(parse_leased(&reply[1..])));
            }
            // Every candidate was taken between the read and the script: read again.
        }
        Ok(None)
    }

    /// Lease the agent a job names (`lease_agent-6.lua`), in submission order.
    #[allow(clippy::too_many_arguments)]
    pub async fn lease_agent(
        &self,
        agent_id: &str,
        profile: &str,
        job_id: &str,
        worker: &str,
        hold: Duration,
        host: &str,
        order: u64,
        waiter_ttl: Duration,
    ) -> Result<ByIdAnswer, RegistryError> {
        let reply: Vec<Value> = SCRIPTS
            .lease_agent
            .key(self.keys.agent(agent_id))
            .key(&self.keys.held)
            .key(self.keys.waiters(agent_id))
            .key(self.keys.waiter_expiry(agent_id))
            .key(self.keys.idle(profile))
            .key(self.keys.paused(profile))
            .arg(job_id)
            .arg(worker)
            .arg(ms(hold))
            .arg(host)
            .arg(profile)
            .arg(order)
            .arg(ms(waiter_ttl))
            .arg(ms(WAITER_GRACE))
            .invoke_async(&mut self.conn())
            .await?;
        let f = |i: usize| reply.get(i).map(text).unwrap_or_default();
        Ok(match reply.first().map(int).unwrap_or(-1) {
            1 => ByIdAnswer::Leased(parse_leased(&reply[1..])),
            0 => ByIdAnswer::Wait {
                state: f(2),
                position: f(3).parse().unwrap_or(0),
            },
            _ => ByIdAnswer::Never(f(1)),
        })
    }

    /// List jobs just submitted to agents among those agents' waiters, in submission
    /// order, so they run in that order whichever worker takes them (unclaimed until a
    /// worker runs them; see `lease_agent-6.lua`). Entries already claimed are kept.
    pub async fn expect_jobs(&self, jobs: &[(String, String, u64)]) -> Result<(), RegistryError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (agent_id, job_id, order) in jobs {
            pipe.cmd("ZADD")
                .arg(self.keys.waiters(agent_id))
                .arg("NX")
                .arg(*order)
                .arg(job_id)
                .ignore()
                .hset_nx(self.keys.waiter_expiry(agent_id), job_id, "u")
                .ignore();
        }
        pipe.exec_async(&mut self.conn()).await?;
        Ok(())
    }

    /// Stop waiting for an agent (the job gave up: cancelled, timed out).
    pub async fn leave_waiters(&self, agent_id: &str, job_id: &str) -> Result<(), RegistryError> {
        redis::pipe()
            .zrem(self.keys.waiters(agent_id), job_id)
            .hdel(self.keys.waiter_expiry(agent_id), job_id)
            .exec_async(&mut self.conn())
            .await?;
        Ok(())
    }

    /// A job is done with its agent (`give_back-5.lua`). `Ok(None)`: refused, the job
    /// no longer held it; else what happens now, and the caller's fence for a pause
    /// or kill.
    #[allow(clippy::too_many_arguments)]
    pub async fn give_back(
        &self,
        agent_id: &str,
        profile: &str,
        job_id: &str,
        fence: u64,
        wanted: GiveBack,
        worker: &str,
        hold: Duration,
        served: bool,
    ) -> Result<Option<(GiveBack, u64)>, RegistryError> {
        let reply: Vec<Value> = SCRIPTS
            .give_back
            .key(self.keys.agent(agent_id))
            .key(&self.keys.held)
            .key(self.keys.idle(profile))
            .key(&self.keys.changed)
            .key(self.keys.waiters(agent_id))
            .arg(job_id)
            .arg(fence)
            .arg(wanted.as_str())
            .arg(worker)
            .arg(ms(hold))
            .arg(u8::from(served))
            .invoke_async(&mut self.conn())
            .await?;
        if reply.first().map(int) != Some(1) {
            return Ok(None);
        }
        let outcome = match text(&reply[1]).as_str() {
            "keep" => GiveBack::Keep,
            "pause" => GiveBack::Pause,
            _ => GiveBack::Kill,
        };
        Ok(Some((outcome, int(&reply[2]) as u64)))
    }

    /// Count what an attempt on this agent spent (`add_cost-1.lua`); false when the
    /// agent's record is gone.
    pub async fn add_cost(&self, agent_id: &str, usd: f64) -> Result<bool, RegistryError> {
        let micro = crate::queue::index::micro_usd(usd);
        if micro == 0 {
            return Ok(true);
        }
        let counted: i64 = SCRIPTS
            .add_cost
            .key(self.keys.agent(agent_id))
            .arg(micro)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(counted == 1)
    }

    /// Record a holder's extension of its agent's sandbox lifetime (`extend-1.lua`).
    pub async fn extend(
        &self,
        agent_id: &str,
        fence: u64,
        lifetime: Duration,
    ) -> Result<bool, RegistryError> {
        let done: i64 = SCRIPTS
            .extend
            .key(self.keys.agent(agent_id))
            .arg(fence)
            .arg(ms(lifetime))
            .invoke_async(&mut self.conn())
            .await?;
        Ok(done == 1)
    }

    /// Start pausing an agent (`pause-3.lua`). `idle_for`: the policy's condition
    /// (only agents idle at least this long); `command`: a user's pause, which a busy
    /// agent takes after its job.
    pub async fn pause(
        &self,
        agent_id: &str,
        profile: &str,
        worker: &str,
        hold: Duration,
        idle_for: Duration,
        command: bool,
    ) -> Result<Start, RegistryError> {
        let reply: Vec<Value> = SCRIPTS
            .pause
            .key(self.keys.agent(agent_id))
            .key(&self.keys.held)
            .key(self.keys.idle(profile))
            .arg(worker)
            .arg(ms(hold))
            .arg(ms(idle_for))
            .arg(if command { "command" } else { "policy" })
            .invoke_async(&mut self.conn())
            .await?;
        Ok(parse_start(&reply))
    }

    /// The sandbox of a pausing agent is paused (`paused-4.lua`).
    pub async fn paused(
        &self,
        agent_id: &str,
        profile: &str,
        fence: u64,
    ) -> Result<Finish, RegistryError> {
        let reply: Vec<Value> = SCRIPTS
            .paused
            .key(self.keys.agent(agent_id))
            .key(&self.keys.held)
            .key(self.keys.paused(profile))
            .key(&self.keys.changed)
            .arg(fence)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(parse_finish(&reply))
    }

    /// Start resuming a paused agent for a `resume` command (`resume-3.lua`).
    pub async fn resume(
        &self,
        agent_id: &str,
        profile: &str,
        worker: &str,
        hold: Duration,
    ) -> Result<Start, RegistryError> {
        let reply: Vec<Value> = SCRIPTS
            .resume
            .key(self.keys.agent(agent_id))
            .key(&self.keys.held)
            .key(self.keys.paused(profile))
            .arg(worker)
            .arg(ms(hold))
            .invoke_async(&mut self.conn())
            .await?;
        Ok(parse_start(&reply))
    }

    /// Start killing an agent (`terminate-5.lua`). `expected_fence`: the policy's
    /// guard against acting on a stale read.
    pub async fn terminate(
        &self,
        agent_id: &str,
        profile: &str,
        worker: &str,
        hold: Duration,
        by: TerminateBy,
        expected_fence: Option<u64>,
    ) -> Result<Start, RegistryError> {
        let reply: Vec<Value> = SCRIPTS
            .terminate
            .key(self.keys.agent(agent_id))
            .key(&self.keys.held)
            .key(self.keys.idle(profile))
            .key(self.keys.paused(profile))
            .key(&self.keys.changed)
            .arg(worker)
            .arg(ms(hold))
            .arg(by.as_str())
            .arg(expected_fence.map(|f| f.to_string()).unwrap_or_default())
            .invoke_async(&mut self.conn())
            .await?;
        Ok(parse_start(&reply))
    }

    /// The agent's sandbox is confirmed killed: remove its record (`forget-9.lua`).
    pub async fn forget(
        &self,
        agent_id: &str,
        profile: &str,
        fence: u64,
    ) -> Result<bool, RegistryError> {
        let reply: Vec<Value> = SCRIPTS
            .forget
            .key(self.keys.agent(agent_id))
            .key(&self.keys.all)
            .key(self.keys.profile(profile))
            .key(&self.keys.held)
            .key(self.keys.idle(profile))
            .key(self.keys.paused(profile))
            .key(self.keys.waiters(agent_id))
            .key(&self.keys.changed)
            .key(self.keys.waiter_expiry(agent_id))
            .arg(fence)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(reply.first().map(int) == Some(1))
    }

    /// Renew this worker's holds (`renew-N.lua`); the indexes of holds it lost.
    pub async fn renew(
        &self,
        worker: &str,
        hold: Duration,
        holds: &[(String, u64)],
    ) -> Result<Vec<usize>, RegistryError> {
        if holds.is_empty() {
            return Ok(Vec::new());
        }
        let mut call = SCRIPTS.renew.prepare_invoke();
        call.key(&self.keys.held);
        for (id, _) in holds {
            call.key(self.keys.agent(id));
        }
        call.arg(worker).arg(ms(hold));
        for (_, fence) in holds {
            call.arg(*fence);
        }
        let lost: Vec<i64> = call.invoke_async(&mut self.conn()).await?;
        Ok(lost.into_iter().map(|i| (i - 1) as usize).collect())
    }

    /// Agents whose hold has expired (by Redis' clock): candidates for `adopt`.
    pub async fn expired_holds(&self) -> Result<Vec<String>, RegistryError> {
        let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut self.conn()).await?;
        let now = secs * 1000 + micros / 1000;
        let ids: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(&self.keys.held)
            .arg("-inf")
            .arg(now)
            .arg("LIMIT")
            .arg(0)
            .arg(64)
            .query_async(&mut self.conn())
            .await?;
        Ok(ids)
    }

    /// Take over an agent whose hold expired (`adopt-5.lua`).
    pub async fn adopt(
        &self,
        agent_id: &str,
        worker: &str,
        hold: Duration,
    ) -> Result<Adopted, RegistryError> {
        let reply: Vec<Value> = SCRIPTS
            .adopt
            .key(self.keys.agent(agent_id))
            .key(&self.keys.held)
            .key(&self.keys.changed)
            .key(self.keys.waiters(agent_id))
            .key(self.keys.waiter_expiry(agent_id))
            .arg(worker)
            .arg(ms(hold))
            .invoke_async(&mut self.conn())
            .await?;
        let f = |i: usize| reply.get(i).map(text).unwrap_or_default();
        Ok(match reply.first().map(int).unwrap_or(0) {
            1 => Adopted::Freed,
            2 => Adopted::Finish {
                pause: f(1) == "pause",
                fence: f(2).parse().unwrap_or(0),
                sandbox_id: f(3),
            },
            _ => Adopted::Nothing,
        })
    }

    /// One agent's record.
    pub async fn get(&self, agent_id: &str) -> Result<Option<AgentRecord>, RegistryError> {
        let h: BTreeMap<String, String> = redis::cmd("HGETALL")
            .arg(self.keys.agent(agent_id))
            .query_async(&mut self.conn())
            .await?;
        Ok(AgentRecord::from_hash(&h))
    }

    /// Every agent of the fleet (of `profile`, when given), oldest first.
    pub async fn list(&self, profile: Option<&str>) -> Result<Vec<AgentRecord>, RegistryError> {
        let index = match profile {
            Some(p) => self.keys.profile(p),
            None => self.keys.all.clone(),
        };
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(&index)
            .arg(0)
            .arg(-1)
            .query_async(&mut self.conn())
            .await?;
        let mut records = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(256) {
            let mut pipe = redis::pipe();
            for id in chunk {
                pipe.hgetall(self.keys.agent(id));
            }
            let hashes: Vec<BTreeMap<String, String>> = pipe.query_async(&mut self.conn()).await?;
            records.extend(hashes.iter().filter_map(AgentRecord::from_hash));
        }
        Ok(records)
    }

    /// How many agents `profile` has, fleet-wide (any state).
    pub async fn count(&self, profile: &str) -> Result<usize, RegistryError> {
        let n: usize = redis::cmd("ZCARD")
            .arg(self.keys.profile(profile))
            .query_async(&mut self.conn())
            .await?;
        Ok(n)
    }

    /// The profile's pooled idle agents, longest idle first, with idle-since (ms).
    pub async fn idle(&self, profile: &str) -> Result<Vec<(String, u64)>, RegistryError> {
        self.scored(&self.keys.idle(profile)).await
    }

    /// The profile's pooled paused agents, longest paused first, with paused-since (ms).
    pub async fn paused_agents(&self, profile: &str) -> Result<Vec<(String, u64)>, RegistryError> {
        self.scored(&self.keys.paused(profile)).await
    }

    async fn scored(&self, key: &str) -> Result<Vec<(String, u64)>, RegistryError> {
        let v: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(key)
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(&mut self.conn())
            .await?;
        Ok(v.into_iter().map(|(id, s)| (id, s as u64)).collect())
    }

    /// Whether a record claims agent `agent_id` (reconcile: a tagged sandbox whose
    /// agent has no record is a stray).
    pub async fn exists(&self, agent_id: &str) -> Result<bool, RegistryError> {
        let n: u64 = redis::cmd("EXISTS")
            .arg(self.keys.agent(agent_id))
            .query_async(&mut self.conn())
            .await?;
        Ok(n == 1)
    }

    /// Redis' clock (ms): the registry's timeline.
    pub async fn now_ms(&self) -> Result<u64, RegistryError> {
        let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut self.conn()).await?;
        Ok(secs * 1000 + micros / 1000)
    }
}
