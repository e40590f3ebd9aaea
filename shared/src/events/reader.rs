//! The reading side of live events: [`Follow`] delivers a job's entries in order,
//! from the start or after a given entry ID, until the job has ended.
//!
//! New entries are awaited in `XREAD BLOCK` on a connection of the follower's own (a
//! blocked read would hold up every other call on a shared one). The end is learnt from
//! the caller's `changed` signal (the queue's `done` channel: [`done_signal`] for one
//! job, or the API server's shared subscriber) and, in case a message was missed, from
//! the job's status each time a block times out. Once the job's status is final, the
//! entries left are read without blocking and the follow ends: the worker writes an
//! attempt's last events before it settles the attempt, so nothing comes after.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::connection::RedisConn;
use futures::StreamExt as _;
use redis::{AsyncCommands, Value};

use super::Event;
use crate::queue::{QueueError, RedisQueue};
use crate::results::JobStatus;

/// Entries read per call.
const READ_COUNT: usize = 500;

/// What a follower got.
#[derive(Debug)]
pub enum Step {
    /// New entries, in order.
    Events(Vec<Event>),
    /// Nothing for a whole block: time for a keep-alive.
    Idle,
    /// The job ended with this status and every entry was delivered (`None`: the
    /// job's record is gone, expired or never there).
    End(Option<JobStatus>),
}

type PendingRead =
    Pin<Box<dyn Future<Output = (RedisConn, Result<Vec<Event>, QueueError>)> + Send>>;

/// Follows one job's events.
pub struct Follow {
    queue: RedisQueue,
    job_id: String,
    key: String,
    /// The last entry delivered (`0-0`: none).
    after: String,
    block: Duration,
    /// The connection for blocked reads, while no read holds it.
    blocking: Option<RedisConn>,
    /// A blocked read in flight: it owns the connection and gives it back with its
    /// reply, so a `changed` that turns out not to be the end does not cut it short.
    pending: Option<PendingRead>,
    /// The job has ended: deliver what is left, then end.
    ending: Option<Option<JobStatus>>,
    ended: bool,
}

impl Follow {
    /// Follow job `job_id` of `queue` after entry `after` (none: from the start),
    /// blocking at most `block` per read. Checks the job's status first, so a job that
    /// ended already is read to its end without waiting.
    pub async fn start(
        queue: RedisQueue,
        job_id: &str,
        after: Option<String>,
        block: Duration,
    ) -> Result<Follow, QueueError> {
        let mut follow = Follow {
            key: queue.keys().events(job_id),
            queue,
            job_id: job_id.to_string(),
            after: after.unwrap_or_else(|| "0-0".into()),
            block,
            blocking: None,
            pending: None,
            ending: None,
            ended: false,
        };
        follow.check_status().await?;
        Ok(follow)
    }

    /// The ID of the last entry delivered.
    pub fn last_id(&self) -> &str {
        &self.after
    }

    /// The next step. `changed` resolves when the job may have ended (a `done` message
    /// for it); it is dropped unresolved when entries come first.
    pub async fn next(&mut self, changed: impl Future<Output = ()>) -> Result<Step, QueueError> {
        if self.ended {
            return Ok(Step::End(self.ending.flatten()));
        }
        if let Some(status) = self.ending {
            return self.rest(status).await;
        }
        if self.pending.is_none() {
            let block = self.block;
            let mut conn = match self.blocking.take() {
                Some(conn) => conn,
                None => self.queue.blocking_connection(block).await?,
            };
            let (key, after) = (self.key.clone(), self.after.clone());
            self.pending = Some(Box::pin(async move {
                let read = read_after(&mut conn, &key, &after, Some(block)).await;
                (conn, read)
            }));
        }
        let Some(pending) = self.pending.as_mut() else {
            unreachable!("a read was just set up");
        };
        tokio::select! {
            biased;
            (conn, read) = pending => {
                self.pending = None;
                let events = read?;
                self.blocking = Some(conn);
                if !events.is_empty() {
                    self.delivered(&events);
                    return Ok(Step::Events(events));
                }
            }
            // The read stays in flight; the status says whether to wait on.
            _ = changed => {}
        }
        self.check_status().await?;
        match self.ending {
            Some(status) => {
                // A read still blocked is dropped with its connection.
                self.pending = None;
                self.rest(status).await
            }
            None => Ok(Step::Idle),
        }
    }

    /// After the end: what is left, then `End`.
    async fn rest(&mut self, status: Option<JobStatus>) -> Result<Step, QueueError> {
        let events = self.read(None).await?;
        if events.is_empty() {
            self.ended = true;
            return Ok(Step::End(status));
        }
        Ok(Step::Events(events))
    }

    fn delivered(&mut self, events: &[Event]) {
        if let Some(last) = events.last() {
            self.after = last.id.clone();
        }
    }

    /// Entries after the last delivered, without blocking (on the queue's connection).
    async fn read(&mut self, block: Option<Duration>) -> Result<Vec<Event>, QueueError> {
        let mut conn = self.queue.connection();
        let events = read_after(&mut conn, &self.key, &self.after, block).await?;
        self.delivered(&events);
        Ok(events)
    }

    async fn check_status(&mut self) -> Result<(), QueueError> {
        let status = job_status(&self.queue, &self.job_id).await?;
        match status {
            None => self.ending = Some(None),
            Some(s) if s.is_final() => self.ending = Some(Some(s)),
            Some(_) => {}
        }
        Ok(())
    }
}

/// A job's status (`None`: no such job).
pub async fn job_status(queue: &RedisQueue, id: &str) -> Result<Option<JobStatus>, QueueError> {
    let key = queue.owner_of(id).await?.keys().job(id);
    let status: Option<String> = queue
        .retrying("job_status", || {
            let mut conn = queue.connection();
            let key = key.clone();
            async move { conn.hget(key, "status").await }
        })
        .await?;
    Ok(status.and_then(|s| JobStatus::parse(&s)))
}

/// Up to [`READ_COUNT`] entries of stream `key` after `after`, waiting up to `block`
/// for the first when there are none (no `block`: answer at once).
pub async fn read_after(
    conn: &mut RedisConn,
    key: &str,
    after: &str,
    block: Option<Duration>,
) -> Result<Vec<Event>, QueueError> {
    let mut cmd = redis::cmd("XREAD");
    cmd.arg("COUNT").arg(READ_COUNT);
    if let Some(block) = block {
        cmd.arg("BLOCK").arg(block.as_millis().max(1) as u64);
    }
    cmd.arg("STREAMS").arg(key).arg(after);
    let reply: Value = cmd.query_async(conn).await?;
    parse_xread(reply)
}

/// Every entry of stream `key` (tests, tools).
pub async fn read_all(conn: &mut RedisConn, key: &str) -> Result<Vec<Event>, QueueError> {
    let mut all = Vec::new();
    let mut after = "0-0".to_string();
    loop {
        let events = read_after(conn, key, &after, None).await?;
        match events.last() {
            Some(last) => after = last.id.clone(),
            None => return Ok(all),
        }
        all.extend(events);
    }
}

/// The reply of `XREAD` on one stream: nil, or `[[key, [[id, [field, value, …]], …]]]`
/// (RESP2), or `{key: [[id, [field, value, …]], …]}` (RESP3).
fn parse_xread(reply: Value) -> Result<Vec<Event>, QueueError> {
    let bad = |what: &str| QueueError::Corrupt(format!("XREAD reply: {what}"));
    let entries = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(mut streams) => match streams.pop() {
            None => return Ok(Vec::new()),
            Some(Value::Array(mut pair)) if pair.len() == 2 => pair.pop().unwrap_or(Value::Nil),
            Some(_) => return Err(bad("not a [key, entries] pair")),
        },
        Value::Map(mut streams) => match streams.pop() {
            None => return Ok(Vec::new()),
            Some((_, entries)) => entries,
        },
        _ => return Err(bad("unexpected type")),
    };
    let Value::Array(entries) = entries else {
        return Err(bad("entries are not an array"));
    };
    let mut events = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(mut parts) = entry else {
            return Err(bad("an entry is not an array"));
        };
        if parts.len() != 2 {
            return Err(bad("an entry is not [id, fields]"));
        }
        let fields = parts.pop().unwrap_or(Value::Nil);
        let id = text(parts.pop().unwrap_or(Value::Nil)).ok_or_else(|| bad("an entry ID"))?;
        let mut event = Event {
            id,
            attempt: 0,
            kind: String::new(),
            data: serde_json::Value::Null,
        };
        let fields = match fields {
            Value::Array(f) => f,
            Value::Map(m) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
            _ => return Err(bad("an entry's fields")),
        };
        let mut fields = fields.into_iter();
        while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
            let (Some(name), Some(value)) = (text(name), text(value)) else {
                continue;
            };
            match name.as_str() {
                "attempt" => event.attempt = value.parse().unwrap_or(0),
                "kind" => event.kind = value,
                // Written as JSON by the worker; anything else is shown as text.
                "data" => {
                    event.data =
                        serde_json::from_str(&value).unwrap_or(serde_json::Value::String(value))
                }
                _ => {}
            }
        }
        events.push(event);
    }
    Ok(events)
}

fn text(value: Value) -> Option<String> {
    match value {
        Value::BulkString(b) => Some(String::from_utf8_lossy(&b).into_owned()),
        Value::SimpleString(s) => Some(s),
        Value::VerbatimString { text, .. } => Some(text),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// Resolves on each `done` message naming job `id` of `queue`, from a subscription of
/// its own (for one follower, e.g. `fleet watch`). Subscribe before reading the job's
/// status, so an end between the two is not missed. `None` when the subscription
/// failed: followers then learn the end from the status at each block timeout.
pub async fn done_signal(
    queue: &RedisQueue,
    id: &str,
) -> Option<futures::stream::BoxStream<'static, ()>> {
    let mut pubsub = crate::connection::pubsub(queue.redis_settings())
        .await
        .ok()?;
    // A job ends on its own shard's channel (queue/shards.rs).
    for channel in queue.done_channels() {
        pubsub.subscribe(&channel).await.ok()?;
    }
    let id = id.to_string();
    Some(
        pubsub
            .into_on_message()
            .filter_map(move |m| {
                let ours = m.get_payload::<String>().is_ok_and(|p| p == id);
                async move { ours.then_some(()) }
            })
            .boxed(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn xread_replies_become_events() {
        let entry = |id: &str, kind: &str, data: &str| {
            Value::Array(vec![
                bulk(id),
                Value::Array(vec![
                    bulk("attempt"),
                    bulk("2"),
                    bulk("kind"),
                    bulk(kind),
                    bulk("data"),
                    bulk(data),
                ]),
            ])
        };
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("fleet:{research}:events:x"),
            Value::Array(vec![
                entry("1-0", "stdout", "\"hello\""),
                entry("1-1", "agent", r#"{"type":"result"}"#),
            ]),
        ])]);
        let events = parse_xread(reply).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].id, "1-0");
        assert_eq!(events[0].attempt, 2);
        assert_eq!(events[0].data, serde_json::json!("hello"));
        assert_eq!(events[1].kind, "agent");
        assert_eq!(events[1].data["type"], "result");
        assert!(parse_xread(Value::Nil).unwrap().is_empty());
        assert!(parse_xread(Value::Int(3)).is_err());
    }
}
