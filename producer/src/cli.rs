//! The command line of `fleet`, defined once with clap derive.
//!
//! The help text is the documentation: `fleet --help` (exit codes, configuration),
//! `fleet <command> --help`. Nothing here talks to Redis; `commands` does the work.

use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand};

const LONG_ABOUT: &str = "\
Submit research queries to dexter-fleet and follow them: one query (`submit`) or a \
file of them (`batch`), their status and answers, the dead-letter queue, cancellation, \
and agent lifecycle jobs. Workers (`fleet-worker`) run the jobs; `fleet demo` starts \
everything on this machine; `fleet serve` offers the same over HTTP.

Humans get readable text; with --json every command prints one JSON document on \
stdout for scripts. Errors and progress go to stderr.";

const AFTER_LONG_HELP: &str = "\
Exit codes:
  0    success
  1    a job did not succeed (it ended dead, cancelled or failed), a request was only
       partly applied (e.g. `dead retry` of a job that is not dead), or another error
  2    usage or input error: bad arguments, bad configuration (the message names the
       key), an invalid query or batch line, a malformed or unknown job ID, a missing file
  3    Redis is unreachable or failed; or `fleet demo` could not start redis-server or
       fleet-worker, or a worker exited early
  4    the job has not ended yet (`result` without --wait, or --timeout ran out)
  130  interrupted (Ctrl-C)

Configuration, later wins: config/default.toml (built in); --config FILE or FLEET_CONFIG;
FLEET_<SECTION>__<KEY> environment variables (e.g. FLEET_REDIS__URL, read from .env too);
--redis-url.

Examples:
  fleet submit \"What was ACME's revenue in 2023?\" --wait
  fleet submit \"What was ACME's revenue in 2023?\" --follow
  echo 'Compare Globex and Initech margins' | fleet submit - --meta team=research
  fleet batch queries.txt --wait
  fleet status 01932c7e-8d1c-7b3a-9f1e-2a4b5c6d7e8f
  fleet dead list
  fleet demo";

#[derive(Debug, Parser)]
#[command(
    name = "fleet",
    version,
    about = "Submit research jobs to dexter-fleet and follow them",
    long_about = LONG_ABOUT,
    after_long_help = AFTER_LONG_HELP,
)]
pub struct Cli {
    /// Settings file layered over the built-in defaults
    #[arg(long, global = true, value_name = "FILE", env = "FLEET_CONFIG")]
    pub config: Option<PathBuf>,

    /// Print one JSON document on stdout, for scripts (errors stay on stderr)
    #[arg(long, global = true)]
    pub json: bool,

    /// Redis to use; overrides `redis.url` from the settings (and FLEET_REDIS__URL)
    #[arg(long, global = true, value_name = "URL")]
    pub redis_url: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Submit one research query; prints its job ID
    Submit(SubmitArgs),
    /// Submit a file of queries as one batch; prints the batch ID and count
    Batch(BatchArgs),
    /// Show a job's status, attempts, timings, last error and attempt history
    Status(IdArg),
    /// Print a job's answer (exit 1 if it ended without one, 4 if it has not ended)
    Result(ResultArgs),
    /// Show the depths of the research and lifecycle queues
    Jobs,
    /// List, inspect, retry and purge dead-lettered jobs
    Dead {
        #[command(subcommand)]
        command: DeadCommand,
    },
    /// Cancel a job: at once if it has not started, else its worker stops it
    Cancel(IdArg),
    /// Follow a job's live events (its agent's output) until it ends; exit 0 if it succeeded
    #[command(long_about = WATCH_LONG_ABOUT)]
    Watch(WatchArgs),
    /// Launch, pause, resume and terminate agents (jobs on the lifecycle queue)
    Agents {
        #[command(subcommand)]
        command: AgentsCommand,
    },
    /// Grow or shrink agent pools (jobs on the lifecycle queue)
    Pool {
        #[command(subcommand)]
        command: PoolCommand,
    },
    /// GitHub integration: register the webhook that `fleet serve` answers
    Github {
        #[command(subcommand)]
        command: GithubCommand,
    },
    /// Quickstart: Redis, a worker and the demo agent answering sample questions
    #[command(long_about = DEMO_LONG_ABOUT)]
    Demo(DemoArgs),
    /// Serve the HTTP API for programs: jobs, batches, agents, dead letters, workers
    #[command(long_about = SERVE_LONG_ABOUT)]
    Serve(ServeArgs),
}

const SERVE_LONG_ABOUT: &str = "\
Serve the HTTP API on api.listen (or --listen), for programs. JSON in and out; every error \
is {\"error\": \"<message>\"}.

  POST /v1/jobs                  a job object (as a JSON Lines batch line) -> 201 {id, existing, queue}
                                 (200 when its idempotency_key already named a job)
  POST /v1/batches[?agent=NAME]  a JSON array of job objects (Content-Type: application/json), or
                                 `fleet batch` lines (application/x-ndjson; text/plain with a token);
                                 at most api.max_batch_jobs jobs; enqueued whole even if the client leaves
                                 -> 201 {batch_id, count, job_ids}; one bad item -> 400, nothing written
  GET  /v1/jobs/{id}             the record, as `fleet --json status` prints it
  GET  /v1/jobs/{id}/result[?wait=SECS]
                                 200 the answer; 202 not ended (after waiting up to
                                 api.result_wait_max_secs); 409 ended dead, cancelled or failed
  POST /v1/jobs/{id}/cancel      as `fleet --json cancel`
  GET  /v1/jobs/{id}/events      the job's live events as Server-Sent Events (id: event ID, event: kind,
                                 data: JSON as `fleet watch --json` prints) until it ends, then `event: end`;
                                 Last-Event-ID resumes after that event; keep-alive comments every
                                 events.keepalive_secs; each open stream counts toward api.max_waits
  GET  /v1/batches/{id}          the batch's counts per status
  GET  /v1/batches/{id}/results  each job's answer or error, in submission order, a page at a time
  GET  /v1/jobs?status=&queue=&batch=&agent=&since=&until=&meta=K=V&order=&limit=&cursor=
                                 jobs by filter, newest first, in pages (next_cursor); a bounded scan:
                                 the answer says how many records it `scanned` and if it was `truncated`
  GET  /v1/agents[/{agent_id}]   the fleet's agents, as `fleet --json agents list`; one agent
  POST /v1/agents                {agent, persistent} -> 202 the launch lifecycle job {id, queue, operation}
  POST /v1/agents/{agent_id}/pause|resume|terminate, POST /v1/pool/scale {size, agent}
                                 -> 202 the lifecycle job, as `fleet --json agents ...`
  GET  /v1/dead[/{id}]           dead letters in pages (queue, died_since, died_until, class); one record
  POST /v1/dead/retry|purge      {ids: [...]} or {filter: {...}} ({} = all), as `fleet --json dead retry`
  GET  /v1/workers               workers, live or not, and the leases each holds
  GET  /openapi.json             the OpenAPI document (no token needed)
  GET  /healthz, GET /readyz     the process is up; Redis answers PING (no token needed)
  POST /webhooks/github          GitHub deliveries: X-Hub-Signature-256 checked against the secret in
                                 github.webhook_secret_env (401 before parsing; no bearer token);
                                 replayed delivery IDs ignored; push -> refresh jobs, labelled issues
                                 and /research comments -> research jobs (README: GitHub integration)

Bad input: 400 and nothing written; unknown job, batch or route: 404; wrong method: 405; \
body slower than api.body_timeout_secs: 408; body over api.max_body_bytes or batch over \
api.max_batch_jobs: 413; Redis unreachable or slower than api.redis_timeout_ms, or \
api.max_waits result waits in flight: 503 with Retry-After. With api.token set (e.g. \
FLEET_API__TOKEN, at least 16 characters), every /v1 route needs one \
`Authorization: Bearer <token>` header, else 401 (two headers: 400); after \
api.auth_failures_per_minute failures an address gets 429. [[api.tokens]] adds named \
tokens (token_env or token_file), each role \"read\" (GET only, else 403) or \"admin\"; each \
token may make api.requests_per_minute requests (or its own), then 429 with Retry-After. Without a token it listens on \
loopback only (unless api.allow_remote_without_token) and refuses requests with an Origin \
header or a non-loopback Host, and job or batch bodies that are not JSON.

Connections: at most api.max_connections; one that sends no request head within \
api.header_timeout_secs (idle ones too) is closed.

Prints the address it listens on to stdout (`--listen 127.0.0.1:0` picks a free port), \
logs each request at info on stderr (RUST_LOG), and exits 0 after SIGTERM or SIGINT \
once requests in flight are answered (result waits end at once).";

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on, host:port (default: api.listen); port 0 picks a free one
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
}

const DEMO_LONG_ABOUT: &str = "\
Quickstart, no API key needed:
  1. use Redis at the configured URL if it answers PING; else start `redis-server` on a
     free port with its data under .fleet/redis/ (AOF on), stopped at the end;
  2. start `fleet-worker` (found next to this executable, else on PATH) with its log
     under .fleet/demo/, its HTTP server off, and that executable's directory first on
     its PATH (so `fleet-demo-agent` beside it is found);
  3. submit the queries file as one batch to the `demo` agent and show progress;
  4. print each question with its answer;
  5. stop the worker with SIGTERM and wait for it, then the Redis it started.
Ctrl-C stops it in the same order. Exits 0 only if every job succeeded.";

const WATCH_LONG_ABOUT: &str = "\
Follow a job's live events as they happen, until the job reaches a final status: what its \
agent prints (stdout lines as they are, stderr lines marked [stderr]), its structured events \
([agent]: Claude Code's stream-json, Dexter's progress) and each attempt's start and end. \
Events written before the watch began are shown first. Exits 0 if the job succeeded, 1 if \
it ended dead, cancelled or failed.

With --json, one JSON object per line: {\"id\", \"attempt\", \"kind\", \"data\"} per event (kind: \
attempt_started, stdout, stderr, agent, dropped, attempt_ended), then {\"kind\": \"end\", \
\"status\"}. A job's events are kept events.max_len entries deep, for queue.result_ttl_secs \
after its last attempt.";

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The job ID (a UUID, as printed by `submit`)
    pub id: String,

    /// Start after this event ID (the `id` of an event `--json` printed) instead of
    /// from the first event
    #[arg(long, value_name = "EVENT_ID")]
    pub after: Option<String>,
}

#[derive(Debug, Args)]
pub struct IdArg {
    /// The job ID (a UUID, as printed by `submit`)
    pub id: String,
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The question; `-` reads it from stdin
    pub query: String,

    /// Agent profile that answers it (a key of [agents.*]; default: `default_agent`)
    #[arg(long, value_name = "NAME")]
    pub agent: Option<String>,

    /// Attempts in all before the job is dead-lettered, at most 100 (default: queue.research.max_attempts)
    #[arg(long, value_name = "N")]
    pub max_attempts: Option<u32>,

    /// Kill each attempt after this many seconds, at most 86400 (default: queue.research.attempt_timeout_secs)
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,

    /// The whole job must end within this many seconds of submission (at most 2592000), or it is dead-lettered
    #[arg(long, value_name = "SECS")]
    pub deadline: Option<u64>,

    /// Retry backoff base in milliseconds: retry n waits up to base * 2^(n-1), full jitter;
    /// at most 86400000 (default: queue.research.backoff_base_ms)
    #[arg(long, value_name = "MS")]
    pub backoff_base_ms: Option<u64>,

    /// Retry backoff cap in milliseconds, at most 86400000 (default: queue.research.backoff_cap_ms)
    #[arg(long, value_name = "MS")]
    pub backoff_cap_ms: Option<u64>,

    /// Submitting the same key again (within queue.idempotency_ttl_secs) returns the first job's ID
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,

    /// A label returned with the result, KEY=VALUE; repeatable (at most 64; keys up to 128
    /// bytes, values up to 1024)
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_meta)]
    pub meta: Vec<(String, String)>,

    /// The agent's step cap for this job (Claude Code turns, Dexter iterations), at most
    /// 10000; it may lower the profile's cap, never raise it
    #[arg(long, value_name = "N")]
    pub max_turns: Option<u32>,

    /// The agent's spending cap for this job in US dollars (Claude Code), at most 10000;
    /// it may lower the profile's cap, never raise it
    #[arg(long, value_name = "USD")]
    pub max_budget_usd: Option<f64>,

    /// The most tokens this job may use through the model gateway, all attempts together
    /// (a request that would pass it is refused and the job ends `budget_exceeded`)
    #[arg(long, value_name = "N")]
    pub max_tokens: Option<u64>,
    /// Use the result cache (true) or not (false) for this job: an identical query to the
    /// same profile answered within results.cache_ttl_secs is served without a run
    /// (default: the profile's `cache` setting)
    #[arg(long, value_name = "BOOL")]
    pub cache: Option<bool>,

    /// Wait for the job to end and print its answer
    #[arg(long)]
    pub wait: bool,

    /// Print the job ID, then follow its live events until it ends (as `fleet watch`);
    /// exit 0 if it succeeded
    #[arg(long, conflicts_with = "wait")]
    pub follow: bool,
}

#[derive(Debug, Args)]
pub struct BatchArgs {
    /// One query per line, or JSON Lines with per-job options; `-` reads stdin
    #[arg(long_help = "\
One query per line, or JSON Lines with per-job options (`-` reads stdin):

  What was ACME's revenue in 2023?
  {\"query\": \"Compare Globex and Initech margins\", \"agent\": \"demo\", \"max_attempts\": 5}

JSON fields: query, agent, agent_id, ephemeral, max_attempts, attempt_timeout_secs,
deadline_secs, backoff_base_ms, backoff_cap_ms, idempotency_key, metadata, max_turns,
max_budget_usd, max_tokens. Blank lines are skipped. One bad line refuses
the whole batch (the error names the line); nothing is enqueued then.")]
    pub file: String,

    /// Agent profile for lines that name none (default: `default_agent`)
    #[arg(long, value_name = "NAME")]
    pub agent: Option<String>,

    /// Show progress until every job ended, then each answer or error in file order
    /// (exit 1 if any job did not succeed)
    #[arg(long)]
    pub wait: bool,

    /// With --wait: no progress bar
    #[arg(long)]
    pub no_progress: bool,

    /// When every job ended, publish the results to this GitHub repository
    /// (owner/name) as a Markdown + JSON report on the branch fleet/batch-<id> with a
    /// pull request (a `publish` lifecycle job; implies --wait). Needs GitHub
    /// credentials on the worker ([github] in the settings)
    #[arg(long, value_name = "OWNER/NAME")]
    pub publish_pr: Option<String>,
}

#[derive(Debug, Args)]
pub struct ResultArgs {
    /// The job ID (a UUID, as printed by `submit`)
    pub id: String,

    /// Wait for the job to end if it has not
    #[arg(long)]
    pub wait: bool,

    /// Wait at most this many seconds (implies --wait); exit 4 if it has not ended by then
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum DeadCommand {
    /// List dead-lettered jobs of both queues, oldest first
    List {
        /// Show at most this many
        #[arg(long, value_name = "N", default_value_t = 50,
              value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
    },
    /// Show a dead job's full record, with each attempt's outcome, error and timings
    Show(IdArg),
    /// Requeue dead jobs with a fresh set of attempts (their history is kept)
    Retry(Selection),
    /// Remove dead jobs for good; their records stay, status `failed`, until they expire
    Purge(Selection),
}

/// Which dead jobs: the IDs given, or all of them.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("which").required(true).args(["ids", "all"])))]
pub struct Selection {
    /// Job IDs
    #[arg(value_name = "ID")]
    pub ids: Vec<String>,

    /// Every dead job, in both queues
    #[arg(long, conflicts_with = "ids")]
    pub all: bool,
}

#[derive(Debug, Subcommand)]
pub enum AgentsCommand {
    /// Create a sandbox for an agent profile, set it up, add it to the pool
    Launch {
        /// Agent profile (default: `default_agent`)
        #[arg(long, value_name = "NAME")]
        agent: Option<String>,

        /// Keep it: a persistent agent, which jobs can target by its ID
        #[arg(long)]
        persistent: bool,

        #[command(flatten)]
        wait: WaitFlag,
    },
    /// Pause an agent (its sandbox keeps its state)
    Pause(AgentIdArgs),
    /// Resume a paused agent
    Resume(AgentIdArgs),
    /// Terminate an agent and its sandbox
    Terminate(AgentIdArgs),
    /// List agents (the worker's pool holds them; see its /metrics)
    List,
}

#[derive(Debug, Args)]
pub struct AgentIdArgs {
    /// The agent's ID
    pub agent_id: String,

    #[command(flatten)]
    pub wait: WaitFlag,
}

#[derive(Debug, Args)]
pub struct WaitFlag {
    /// Wait for the lifecycle job to end and print its outcome
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Subcommand)]
pub enum GithubCommand {
    /// Register the webhook (events push, issues, issue_comment) on a repository,
    /// pointing at github.webhook_url (or --url) and signed with the secret in
    /// github.webhook_secret_env; needs a token with admin rights on the repository
    Hook {
        #[command(subcommand)]
        command: HookCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum HookCommand {
    /// Create the webhook on REPO (owner/name); prints its ID
    Create {
        /// The repository, owner/name
        #[arg(value_name = "OWNER/NAME")]
        repo: String,

        /// Public URL of `POST /webhooks/github` (default: github.webhook_url)
        #[arg(long, value_name = "URL")]
        url: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// Grow or shrink a profile's pool to N agents
    Scale {
        /// The pool size wanted (at most 1000)
        #[arg(value_name = "N")]
        size: u32,

        /// Agent profile (default: `default_agent`)
        #[arg(long, value_name = "NAME")]
        agent: Option<String>,

        #[command(flatten)]
        wait: WaitFlag,
    },
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Questions to ask, one per line (or JSON Lines, as for `batch`)
    #[arg(long, value_name = "FILE", default_value = "agents/demo/queries.txt")]
    pub queries: PathBuf,

    /// How many `fleet-worker` processes to start
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=32))]
    pub workers: u16,

    /// No progress bar
    #[arg(long)]
    pub no_progress: bool,
}

/// `KEY=VALUE`, with a non-empty key.
pub fn parse_meta(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("fleet").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn submit_takes_its_options() {
        let cli = parse(&[
            "submit",
            "What was ACME's revenue?",
            "--agent",
            "demo",
            "--max-attempts",
            "5",
            "--timeout",
            "60",
            "--deadline",
            "600",
            "--idempotency-key",
            "k1",
            "--meta",
            "team=research",
            "--meta",
            "run=a=b",
            "--wait",
            "--json",
        ])
        .unwrap();
        assert!(cli.json);
        let Command::Submit(s) = cli.command else {
            panic!("not submit")
        };
        assert_eq!(s.query, "What was ACME's revenue?");
        assert_eq!(s.agent.as_deref(), Some("demo"));
        assert_eq!(s.max_attempts, Some(5));
        assert_eq!(s.timeout, Some(60));
        assert_eq!(s.deadline, Some(600));
        assert_eq!(s.idempotency_key.as_deref(), Some("k1"));
        assert_eq!(
            s.meta,
            vec![
                ("team".to_string(), "research".to_string()),
                ("run".to_string(), "a=b".to_string())
            ]
        );
        assert!(s.wait);
    }

    #[test]
    fn submit_accepts_dash_for_stdin() {
        let Command::Submit(s) = parse(&["submit", "-"]).unwrap().command else {
            panic!()
        };
        assert_eq!(s.query, "-");
    }

    #[test]
    fn meta_without_equals_is_refused() {
        let err = parse(&["submit", "q", "--meta", "nokey"]).unwrap_err();
        assert!(err.to_string().contains("expected KEY=VALUE"), "{err}");
        assert_eq!(err.exit_code(), 2);
        assert!(parse_meta("=v").is_err());
        assert_eq!(parse_meta("k=").unwrap(), ("k".into(), "".into()));
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli = parse(&["jobs", "--redis-url", "redis://h:1", "--config", "x.toml"]).unwrap();
        assert_eq!(cli.redis_url.as_deref(), Some("redis://h:1"));
        assert_eq!(cli.config, Some(PathBuf::from("x.toml")));
        assert!(matches!(cli.command, Command::Jobs));
    }

    #[test]
    fn batch_flags() {
        let Command::Batch(b) = parse(&["batch", "-", "--wait", "--no-progress"])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert_eq!(b.file, "-");
        assert!(b.wait && b.no_progress);
        assert!(b.agent.is_none());
    }

    #[test]
    fn result_timeout() {
        let Command::Result(r) = parse(&["result", "x", "--timeout", "5"]).unwrap().command else {
            panic!()
        };
        assert_eq!(r.timeout, Some(5));
        assert!(!r.wait);
    }

    #[test]
    fn dead_retry_needs_ids_or_all_but_not_both() {
        assert!(parse(&["dead", "retry"]).is_err());
        assert!(parse(&["dead", "purge", "a", "--all"]).is_err());
        let Command::Dead {
            command: DeadCommand::Retry(sel),
        } = parse(&["dead", "retry", "a", "b"]).unwrap().command
        else {
            panic!()
        };
        assert_eq!(sel.ids, vec!["a", "b"]);
        assert!(!sel.all);
        let Command::Dead {
            command: DeadCommand::Purge(sel),
        } = parse(&["dead", "purge", "--all"]).unwrap().command
        else {
            panic!()
        };
        assert!(sel.all && sel.ids.is_empty());
    }

    #[test]
    fn dead_list_limit_defaults() {
        let Command::Dead {
            command: DeadCommand::List { limit },
        } = parse(&["dead", "list"]).unwrap().command
        else {
            panic!()
        };
        assert_eq!(limit, 50);
        assert!(parse(&["dead", "list", "--limit", "0"]).is_err());
    }

    #[test]
    fn agents_and_pool() {
        let Command::Agents {
            command:
                AgentsCommand::Launch {
                    agent,
                    persistent,
                    wait,
                },
        } = parse(&[
            "agents",
            "launch",
            "--agent",
            "demo",
            "--persistent",
            "--wait",
        ])
        .unwrap()
        .command
        else {
            panic!()
        };
        assert_eq!(agent.as_deref(), Some("demo"));
        assert!(persistent && wait.wait);
        let Command::Pool {
            command: PoolCommand::Scale { size, agent, .. },
        } = parse(&["pool", "scale", "3"]).unwrap().command
        else {
            panic!()
        };
        assert_eq!(size, 3);
        assert!(agent.is_none());
        assert!(parse(&["agents", "pause"]).is_err());
        assert!(parse(&["pool", "scale", "-1"]).is_err());
    }

    #[test]
    fn demo_defaults() {
        let Command::Demo(d) = parse(&["demo"]).unwrap().command else {
            panic!()
        };
        assert_eq!(d.queries, PathBuf::from("agents/demo/queries.txt"));
        assert_eq!(d.workers, 1);
        assert!(parse(&["demo", "--workers", "0"]).is_err());
    }

    #[test]
    fn serve_takes_a_listen_address() {
        let Command::Serve(s) = parse(&["serve", "--listen", "127.0.0.1:0"])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert_eq!(s.listen.as_deref(), Some("127.0.0.1:0"));
        let Command::Serve(s) = parse(&["serve"]).unwrap().command else {
            panic!()
        };
        assert!(s.listen.is_none());
    }

    #[test]
    fn help_documents_the_exit_codes() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("Exit codes:"), "{help}");
        for code in ["  0 ", "  1 ", "  2 ", "  3 ", "  4 ", "  130 "] {
            assert!(help.contains(code), "missing {code:?} in {help}");
        }
    }
}
