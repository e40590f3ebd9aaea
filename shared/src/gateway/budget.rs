//! Budgets and spend in Redis: one record per attempt token, the job's spend over all
//! its attempts, a batch's, and a tenant's per UTC day. Every change is one Lua script
//! (`lua/`: issue, reserve, settle, end_attempt), each touching keys of the research
//! queue's slot only (its `{research}` hash tag), so the reserve can check the job's
//! lease (status and fencing token) in the same step that admits the request.
//!
//! | key                                 | type | holds                                              |
//! |-------------------------------------|------|----------------------------------------------------|
//! | `…:{research}:gw:attempt:<sha256>`  | HASH | token binding (job, attempt, fence, profile, batch, tenant, caps), state (`live`, `ended`, `budget`), in-flight count, the attempt's spend |
//! | `…:{research}:gw:job:<id>`          | HASH | the job's spend (tokens by kind, cost, requests, reservations; per model as `<model>\|<field>`) |
//! | `…:{research}:gw:batch:<id>`        | HASH | a batch's cost and reservations                     |
//! | `…:{research}:gw:tenant:<t>:<day>`  | HASH | a tenant's cost and reservations on one UTC day     |
//!
//! Reserve-then-settle: a request reserves its estimated input cost and tokens before
//! it is sent; caps are checked against spend plus reservations, so requests racing
//! each other cannot all slip under a cap, and a cap is overshot by at most the output
//! of the requests in flight when it was reached.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use crate::connection::RedisConn;
use redis::Script;
use serde_json::{Value, json};

use super::metering::Usage;
use crate::queue::QueueError;

const LIB: &str = include_str!("lua/_lib.lua");

fn load(body: &str) -> Script {
    Script::new(&format!("{LIB}\n{body}"))
}

pub(crate) struct Scripts {
    pub issue: Script,
    pub reserve: Script,
    pub settle: Script,
    pub end_attempt: Script,
    pub acquire: Script,
    pub observe: Script,
}

pub(crate) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    issue: load(include_str!("lua/issue-2.lua")),
    reserve: load(include_str!("lua/reserve-5.lua")),
    settle: load(include_str!("lua/settle-4.lua")),
    end_attempt: load(include_str!("lua/end_attempt-1.lua")),
    acquire: load(include_str!("lua/acquire-1.lua")),
    observe: load(include_str!("lua/observe-1.lua")),
});

/// What an attempt token is bound to, and the caps it answers to.
#[derive(Debug, Clone, Default)]
pub struct Binding {
    pub job_id: String,
    pub attempt: u32,
    pub fence: String,
    pub profile: String,
    pub batch: Option<String>,
    pub tenant: Option<String>,
    /// 0 = none.
    pub max_cost_usd: f64,
    pub max_tokens: u64,
    pub batch_cap_usd: f64,
    pub tenant_cap_usd: f64,
    /// The job's own attempt timeout, if it sets one (the token outlives it).
    pub attempt_timeout_secs: Option<u64>,
}

/// What a request needs to find its budgets: job ID, batch, tenant day.
pub type BindingKeys = (String, Option<String>, Option<String>);

/// The outcome of a reserve.
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    /// Admitted; the attempt's profile.
    Admitted { profile: String },
    /// No such token (never issued, or long gone).
    Unknown,
    /// The attempt ended, or lost its lease.
    Ended(String),
    /// A budget would be passed.
    Budget(String),
}

/// What a request used, to settle its reservation.
#[derive(Debug, Clone, Default)]
pub struct Settlement {
    pub token_hash: String,
    pub job_id: String,
    pub batch: Option<String>,
    pub tenant_day: Option<String>,
    pub reserved_cost: f64,
    pub reserved_tokens: u64,
    pub usage: Usage,
    pub cost: f64,
    pub model: String,
    pub sent: bool,
    pub unpriced: bool,
}

/// Spend, as read back.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Spend {
    pub usage: Usage,
    pub cost_usd: f64,
    pub requests: u64,
    pub unpriced_requests: u64,
    /// Per model (the job's record only).
    pub by_model: BTreeMap<String, (Usage, f64, u64)>,
}

impl Spend {
    fn from_hash(h: &BTreeMap<String, String>) -> Spend {
        let n = |k: &str| h.get(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        let mut by_model: BTreeMap<String, (Usage, f64, u64)> = BTreeMap::new();
        for (k, v) in h {
            let Some((model, field)) = k.rsplit_once('|') else {
                continue;
            };
            let e = by_model.entry(model.to_string()).or_default();
            let x = v.parse::<f64>().unwrap_or(0.0);
            match field {
                "input" => e.0.input = x as u64,
                "output" => e.0.output = x as u64,
                "cache_read" => e.0.cache_read = x as u64,
                "cache_write" => e.0.cache_write = x as u64,
                "cost" => e.1 = x,
                "requests" => e.2 = x as u64,
                _ => {}
            }
        }
        Spend {
            usage: Usage {
                input: n("input") as u64,
                output: n("output") as u64,
                cache_read: n("cache_read") as u64,
                cache_write: n("cache_write") as u64,
            },
            cost_usd: n("cost"),
            requests: n("requests") as u64,
            unpriced_requests: n("unpriced_requests") as u64,
            by_model,
        }
    }

    /// As stored in a result: `usage` (tokens by kind, requests, per model) and the cost.
    pub fn usage_json(&self) -> Value {
        let models: serde_json::Map<String, Value> = self
            .by_model
            .iter()
            .map(|(m, (u, cost, requests))| {
                (
                    m.clone(),
                    json!({
                        "input_tokens": u.input, "output_tokens": u.output,
                        "cache_read_tokens": u.cache_read, "cache_write_tokens": u.cache_write,
                        "cost_usd": round_usd(*cost), "requests": requests,
                    }),
                )
            })
            .collect();
        let mut v = json!({
            "input_tokens": self.usage.input,
            "output_tokens": self.usage.output,
            "cache_read_tokens": self.usage.cache_read,
            "cache_write_tokens": self.usage.cache_write,
            "requests": self.requests,
        });
        if self.unpriced_requests > 0 {
            v["unpriced_requests"] = json!(self.unpriced_requests);
        }
        if !models.is_empty() {
            v["models"] = Value::Object(models);
        }
        v
    }
}

/// Dollars rounded to a millionth of a cent, so sums of floats read cleanly.
pub fn round_usd(v: f64) -> f64 {
    (v * 1e8).round() / 1e8
}

/// The gateway's budget keys under one key prefix.
#[derive(Debug, Clone)]
pub struct BudgetKeys {
    /// `<key_prefix>:{research}:` (the research queue's slot).
    queue_prefix: String,
}

impl BudgetKeys {
    pub fn new(key_prefix: &str) -> BudgetKeys {
        let keys = crate::queue::Keys::new(key_prefix, crate::job::QueueKind::Research);
        BudgetKeys {
            queue_prefix: keys.prefix,
        }
    }
    pub fn attempt(&self, token_hash: &str) -> String {
        format!("{}gw:attempt:{token_hash}", self.queue_prefix)
    }
    pub fn queue_job(&self, job_id: &str) -> String {
        format!("{}job:{job_id}", self.queue_prefix)
    }
    pub fn job_spend(&self, job_id: &str) -> String {
        format!("{}gw:job:{job_id}", self.queue_prefix)
    }
    pub fn batch(&self, batch: Option<&str>) -> String {
        format!("{}gw:batch:{}", self.queue_prefix, batch.unwrap_or("-"))
    }
    pub fn tenant_day(&self, tenant_day: Option<&str>) -> String {
        format!(
            "{}gw:tenant:{}",
            self.queue_prefix,
            tenant_day.unwrap_or("-")
        )
    }
}

/// `<tenant>:<YYYY-MM-DD>` for today (UTC).
pub fn tenant_day(tenant: &str) -> String {
    let days = (crate::time::now_ms() / 86_400_000) as i64;
    let (y, m, d) = civil_from_days(days);
    format!("{tenant}:{y:04}-{m:02}-{d:02}")
}

/// Howard Hinnant's days-to-civil: the proleptic Gregorian date of a day since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Budget and spend records in Redis.
#[derive(Clone)]
pub struct BudgetStore {
    conn: RedisConn,
    pub keys: BudgetKeys,
}

fn redis_err(e: redis::RedisError) -> QueueError {
    QueueError::from(e)
}

impl BudgetStore {
    pub fn new(conn: RedisConn, keys: BudgetKeys) -> BudgetStore {
        BudgetStore { conn, keys }
    }

    pub async fn issue(
        &self,
        token_hash: &str,
        b: &Binding,
        attempt_ttl_secs: u64,
        spend_ttl_secs: u64,
    ) -> Result<(), QueueError> {
        let mut inv = SCRIPTS.issue.prepare_invoke();
        inv.key(self.keys.attempt(token_hash))
            .key(self.keys.job_spend(&b.job_id))
            .arg(attempt_ttl_secs.max(1))
            .arg(spend_ttl_secs.max(1));
        let tenant_day = b.tenant.as_deref().map(tenant_day);
        for (k, v) in [
            ("job", b.job_id.clone()),
            ("attempt", b.attempt.to_string()),
            ("fence", b.fence.clone()),
            ("profile", b.profile.clone()),
            ("batch", b.batch.clone().unwrap_or_default()),
            ("tenant", tenant_day.unwrap_or_default()),
            ("max_cost", b.max_cost_usd.to_string()),
            ("max_tokens", b.max_tokens.to_string()),
            ("batch_cap", b.batch_cap_usd.to_string()),
            ("tenant_cap", b.tenant_cap_usd.to_string()),
        ] {
            inv.arg(k).arg(v);
        }
        let mut conn = self.conn.clone();
        let _: i64 = inv.invoke_async(&mut conn).await.map_err(redis_err)?;
        Ok(())
    }

    /// The attempt record's binding fields needed to settle (job, batch, tenant day).
    pub async fn binding(&self, token_hash: &str) -> Result<Option<BindingKeys>, QueueError> {
        let mut conn = self.conn.clone();
        let v: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(self.keys.attempt(token_hash))
            .arg("job")
            .arg("batch")
            .arg("tenant")
            .query_async(&mut conn)
            .await
            .map_err(redis_err)?;
        let nonempty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
        Ok(v.first()
            .cloned()
            .flatten()
            .map(|job| (job, nonempty(&v[1]), nonempty(&v[2]))))
    }

    pub async fn reserve(
        &self,
        token_hash: &str,
        job_id: &str,
        batch: Option<&str>,
        tenant_day: Option<&str>,
        reserve_cost: f64,
        reserve_tokens: u64,
    ) -> Result<Admission, QueueError> {
        let mut conn = self.conn.clone();
        let reply: Vec<String> = SCRIPTS
            .reserve
            .key(self.keys.attempt(token_hash))
            .key(self.keys.queue_job(job_id))
            .key(self.keys.job_spend(job_id))
            .key(self.keys.batch(batch))
            .key(self.keys.tenant_day(tenant_day))
            .arg(reserve_cost)
            .arg(reserve_tokens)
            .arg(2 * 86_400)
            .invoke_async(&mut conn)
            .await
            .map_err(redis_err)?;
        let detail = reply.get(1).cloned().unwrap_or_default();
        Ok(match reply.first().map(String::as_str) {
            Some("ok") => Admission::Admitted { profile: detail },
            Some("budget") => Admission::Budget(detail),
            Some("ended" | "lease_lost") => Admission::Ended(detail),
            _ => Admission::Unknown,
        })
    }

    pub async fn settle(&self, s: &Settlement) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let _: i64 = SCRIPTS
            .settle
            .key(self.keys.attempt(&s.token_hash))
            .key(self.keys.job_spend(&s.job_id))
            .key(self.keys.batch(s.batch.as_deref()))
            .key(self.keys.tenant_day(s.tenant_day.as_deref()))
            .arg(s.reserved_cost)
            .arg(s.reserved_tokens)
            .arg(s.usage.input)
            .arg(s.usage.output)
            .arg(s.usage.cache_read)
            .arg(s.usage.cache_write)
            .arg(s.cost)
            .arg(&s.model)
            .arg(if s.sent { "1" } else { "0" })
            .arg(if s.unpriced { "1" } else { "0" })
            .invoke_async(&mut conn)
            .await
            .map_err(redis_err)?;
        Ok(())
    }

    /// End the attempt: its state before (`live`, `budget`, ...) and its requests in flight.
    pub async fn end_attempt(&self, token_hash: &str) -> Result<(String, i64), QueueError> {
        let mut conn = self.conn.clone();
        let (state, inflight): (String, i64) = SCRIPTS
            .end_attempt
            .key(self.keys.attempt(token_hash))
            .invoke_async(&mut conn)
            .await
            .map_err(redis_err)?;
        Ok((state, inflight))
    }

    /// The attempt's record: its state, budget reason, requests in flight and spend.
    pub async fn attempt_spend(
        &self,
        token_hash: &str,
    ) -> Result<(String, Option<String>, i64, Spend), QueueError> {
        let mut conn = self.conn.clone();
        let h: BTreeMap<String, String> = redis::cmd("HGETALL")
            .arg(self.keys.attempt(token_hash))
            .query_async(&mut conn)
            .await
            .map_err(redis_err)?;
        let state = h.get("state").cloned().unwrap_or_default();
        let reason = h.get("budget_reason").cloned();
        let inflight = h.get("inflight").and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok((state, reason, inflight, Spend::from_hash(&h)))
    }

    pub async fn job_spend(&self, job_id: &str) -> Result<Spend, QueueError> {
        let mut conn = self.conn.clone();
        let h: BTreeMap<String, String> = redis::cmd("HGETALL")
            .arg(self.keys.job_spend(job_id))
            .query_async(&mut conn)
            .await
            .map_err(redis_err)?;
        Ok(Spend::from_hash(&h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn every_key_of_a_request_shares_the_research_slot() {
        let k = BudgetKeys::new("fleet");
        for key in [
            k.attempt("ab"),
            k.queue_job("j"),
            k.job_spend("j"),
            k.batch(Some("b")),
            k.tenant_day(None),
        ] {
            assert!(key.starts_with("fleet:{research}:"), "{key}");
        }
    }
}
