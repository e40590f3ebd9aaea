//! Fleet-wide rate limits: one limiter per (provider, key, model family), shared by every
//! gateway (every worker) through Redis, so N agents on one key see one limit instead of
//! N retry storms.
//!
//! Each limiter is a Redis hash under `<key_prefix>:{gateway}:rl:<provider>:<key label>:<family>`
//! with a GCRA for requests and one for tokens per minute (`lua/acquire-1.lua`) and a
//! pause for the whole group (`lua/observe-1.lua`). The pause is set by what the
//! provider says: a 429's `retry-after` (else its reset headers), or a `remaining: 0`
//! header (Anthropic `anthropic-ratelimit-*-remaining`/`-reset`, OpenAI
//! `x-ratelimit-remaining-*`/`x-ratelimit-reset-*`) until its reset. Requests waiting for
//! a limiter wait in the gateway (bounded by `gateway.max_waiting`, for at most
//! `gateway.max_wait_secs`), not as failures.

use std::time::Duration;

use axum::http::HeaderMap;
use redis::aio::ConnectionManager;

use super::budget::SCRIPTS;
use crate::queue::QueueError;

/// A limiter's configured limits (0 = none).
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    pub requests_per_minute: u64,
    pub tokens_per_minute: u64,
}

impl Limits {
    pub fn is_unlimited(&self) -> bool {
        self.requests_per_minute == 0 && self.tokens_per_minute == 0
    }
}

/// A limiter's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Go now (counted).
    Now,
    /// A slot this far ahead is the request's (counted): go then, without asking again.
    After(Duration),
    /// Wait this long and ask again (a pause for the group, or no slot within the
    /// horizon).
    Wait(Duration),
}

/// The limiters in Redis.
#[derive(Clone)]
pub struct RateLimiter {
    conn: ConnectionManager,
    prefix: String,
}

impl RateLimiter {
    pub fn new(conn: ConnectionManager, key_prefix: &str) -> RateLimiter {
        RateLimiter {
            conn,
            prefix: format!("{key_prefix}:{{gateway}}:rl:"),
        }
    }

    pub fn key(&self, provider: &str, key_label: &str, family: &str) -> String {
        format!("{}{provider}:{key_label}:{family}", self.prefix)
    }

    /// May a request go now? With a `reserve` horizon, a slot up to that far ahead is
    /// taken for it instead of being asked for again later.
    pub async fn acquire(
        &self,
        limiter: &str,
        limits: Limits,
        tokens: u64,
        reserve: Duration,
    ) -> Result<Admit, QueueError> {
        let mut conn = self.conn.clone();
        let (go, wait_ms): (i64, i64) = SCRIPTS
            .acquire
            .key(limiter)
            .arg(limits.requests_per_minute)
            .arg(limits.tokens_per_minute)
            .arg(tokens)
            .arg(1)
            .arg(reserve.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        let wait = Duration::from_millis(wait_ms.max(1) as u64);
        Ok(match go {
            1 => Admit::Now,
            2 => Admit::After(wait),
            _ => Admit::Wait(wait),
        })
    }

    /// Record what an answer said: tokens beyond the estimate, and a pause for the group.
    pub async fn observe(
        &self,
        limiter: &str,
        limits: Limits,
        extra_tokens: i64,
        pause: Option<Duration>,
    ) -> Result<(), QueueError> {
        if limits.tokens_per_minute == 0 && pause.is_none() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let _: i64 = SCRIPTS
            .observe
            .key(limiter)
            .arg(extra_tokens)
            .arg(limits.tokens_per_minute)
            .arg(pause.map_or(0, |d| d.as_millis() as u64))
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }
}

/// The model family a limit is pooled over: the model name without a trailing date or
/// `-latest` (`claude-sonnet-4-5-20250929` → `claude-sonnet-4-5`, `gpt-4o-2024-08-06` →
/// `gpt-4o`). Characters outside `[A-Za-z0-9._-]` become `_` (it is part of a key name).
pub fn model_family(model: &str) -> String {
    let mut m = model.trim();
    if let Some(rest) = m.strip_suffix("-latest") {
        m = rest;
    }
    // -YYYYMMDD
    if m.len() > 9 {
        let (head, tail) = m.split_at(m.len() - 9);
        if tail.starts_with('-') && tail[1..].bytes().all(|b| b.is_ascii_digit()) {
            m = head;
        }
    }
    // -YYYY-MM-DD
    if m.len() > 11 {
        let (head, tail) = m.split_at(m.len() - 11);
        let b = tail.as_bytes();
        if b[0] == b'-'
            && b[5] == b'-'
            && b[8] == b'-'
            && tail.bytes().filter(u8::is_ascii_digit).count() == 8
        {
            m = head;
        }
    }
    let family: String = m
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if family.is_empty() {
        "-".into()
    } else {
        family
    }
}

/// How long the whole group should pause after this answer, if at all: a 429's
/// `retry-after` (else its reset headers, else a second), or the reset of a limit whose
/// `remaining` is 0.
pub fn pause_from(status: u16, headers: &HeaderMap) -> Option<Duration> {
    if status == 429 {
        return Some(
            retry_after(headers)
                .or_else(|| exhausted_reset(headers, true))
                .unwrap_or(Duration::from_secs(1)),
        );
    }
    exhausted_reset(headers, false)
}

/// `retry-after` in seconds (an HTTP date is not used by these providers).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get("retry-after")?.to_str().ok()?.trim();
    let secs: f64 = v.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(3600.0)))
}

/// The longest reset among limits whose `remaining` is 0 (or, with `any`, among all
/// reset headers present).
fn exhausted_reset(headers: &HeaderMap, any: bool) -> Option<Duration> {
    let mut longest: Option<Duration> = None;
    let mut consider = |d: Option<Duration>| {
        if let Some(d) = d {
            longest = Some(longest.map_or(d, |l| l.max(d)));
        }
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    for kind in ["requests", "tokens", "input-tokens", "output-tokens"] {
        let remaining = header(&format!("anthropic-ratelimit-{kind}-remaining"));
        if any || remaining == Some("0") {
            consider(header(&format!("anthropic-ratelimit-{kind}-reset")).and_then(until_rfc3339));
        }
    }
    for kind in ["requests", "tokens"] {
        let remaining = header(&format!("x-ratelimit-remaining-{kind}"));
        if any || remaining == Some("0") {
            consider(header(&format!("x-ratelimit-reset-{kind}")).and_then(parse_go_duration));
        }
    }
    longest.map(|d| d.min(Duration::from_secs(3600)))
}

/// Time from now until an RFC 3339 UTC time (`2026-12-01T18:40:00Z`, fractions and
/// offsets allowed); zero if it has passed.
pub fn until_rfc3339(s: &str) -> Option<Duration> {
    let at_ms = parse_rfc3339_ms(s)?;
    let now = crate::time::now_ms() as i64;
    Some(Duration::from_millis(
        at_ms.saturating_sub(now).max(0) as u64
    ))
}

fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (h, mi, sec) = (n(11..13)?, n(14..16)?, n(17..19)?);
    let mut rest = &s[19..];
    let mut ms = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits: String = frac.chars().take_while(char::is_ascii_digit).collect();
        rest = &frac[digits.len()..];
        let padded = format!("{:0<3}", &digits[..digits.len().min(3)]);
        ms = padded.parse().ok()?;
    }
    let offset_min = match rest {
        "Z" | "z" => 0,
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) => {
            let sign = if o.starts_with('-') { -1 } else { 1 };
            sign * (o[1..3].parse::<i64>().ok()? * 60 + o[4..6].parse::<i64>().ok()?)
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo, d);
    Some(((days * 86_400 + h * 3600 + mi * 60 + sec - offset_min * 60) * 1000) + ms)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// OpenAI's reset durations: `12ms`, `1s`, `6m0s`, `1h2m3.5s`.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let mut total = 0f64;
    let mut num = String::new();
    let mut chars = s.trim().chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let value: f64 = num.parse().ok()?;
        num.clear();
        let unit = match c {
            'h' => 3600.0,
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                0.001
            }
            'm' => 60.0,
            's' => 1.0,
            _ => return None,
        };
        total += value * unit;
        any = true;
    }
    if !num.is_empty() {
        total += num.parse::<f64>().ok()?;
        any = true;
    }
    (any && total.is_finite()).then(|| Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_drop_dates_and_latest() {
        assert_eq!(
            model_family("claude-sonnet-4-5-20250929"),
            "claude-sonnet-4-5"
        );
        assert_eq!(model_family("claude-3-5-haiku-latest"), "claude-3-5-haiku");
        assert_eq!(model_family("gpt-4o-2024-08-06"), "gpt-4o");
        assert_eq!(model_family("gpt-4.1"), "gpt-4.1");
        assert_eq!(model_family("a b{c}"), "a_b_c_");
        assert_eq!(model_family(""), "-");
    }

    #[test]
    fn openai_durations() {
        assert_eq!(parse_go_duration("12ms"), Some(Duration::from_millis(12)));
        assert_eq!(parse_go_duration("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(
            parse_go_duration("1h2m3.5s"),
            Some(Duration::from_secs_f64(3723.5))
        );
        assert_eq!(parse_go_duration("1.5"), Some(Duration::from_secs_f64(1.5)));
        assert_eq!(parse_go_duration("soon"), None);
    }

    #[test]
    fn rfc3339_times() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:01Z"), Some(1000));
        assert_eq!(
            parse_rfc3339_ms("2026-01-01T00:00:00.250Z"),
            Some(20_454 * 86_400_000 + 250)
        );
        assert_eq!(
            parse_rfc3339_ms("2026-01-01T01:00:00+01:00"),
            Some(20_454 * 86_400_000)
        );
        assert_eq!(parse_rfc3339_ms("yesterday"), None);
    }

    #[test]
    fn a_429_pauses_for_its_retry_after_and_an_exhausted_limit_until_its_reset() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", "7".parse().unwrap());
        assert_eq!(pause_from(429, &h), Some(Duration::from_secs(7)));
        assert_eq!(
            pause_from(200, &h),
            None,
            "retry-after only counts on a 429"
        );
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-remaining-requests", "0".parse().unwrap());
        h.insert("x-ratelimit-reset-requests", "2s".parse().unwrap());
        h.insert("x-ratelimit-remaining-tokens", "500".parse().unwrap());
        h.insert("x-ratelimit-reset-tokens", "30s".parse().unwrap());
        assert_eq!(pause_from(200, &h), Some(Duration::from_secs(2)));
        assert_eq!(
            pause_from(429, &h),
            Some(Duration::from_secs(30)),
            "a 429 without retry-after waits for the longest reset"
        );
        assert_eq!(
            pause_from(429, &HeaderMap::new()),
            Some(Duration::from_secs(1))
        );
    }
}
