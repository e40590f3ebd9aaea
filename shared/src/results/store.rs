//! Large answers: kept outside the job's hash, in chunks, and read back chunk by chunk.
//!
//! An answer longer than `results.inline_bytes` never enters the job's hash. The
//! attempt that produced it writes it, in chunks of `results.chunk_bytes` cut on
//! character boundaries, to `…:staged:<id>:<token>` (a HASH: fields `0`, `1`, …), and
//! its result says where it went: `output.answer_stored = {bytes, chunks}` in place of
//! `output.answer`. The complete script renames the staged key to `…:answer:<id>` in the
//! same step that makes the job `succeeded` (complete-n.lua), so a reader never sees the
//! status without the answer, and a stale attempt (its own token) can never overwrite
//! it. The answer key expires with the job (`queue.result_ttl_secs`) and goes when it
//! is purged.
//!
//! Fields of one hash, not a list: writing a field again is harmless, so a chunk write
//! retried after a lost reply cannot duplicate a chunk.
//!
//! Readers ([`RedisQueue::answer_chunks`], [`json_with_answer`]) hold one chunk at a
//! time: `fleet result` and `GET /v1/jobs/{id}/result` stream the answer.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use serde_json::Value;

use crate::queue::apalis_backend::JobOutput;
use crate::queue::{QueueError, RedisQueue};

/// An agent's JSON metadata longer than this (serialized) is stored with the answer's
/// chunks (field `metadata`) instead of in the job's hash.
pub const METADATA_INLINE_BYTES: usize = 1024;

/// How long a staged answer waits for its complete. The complete follows at once; this
/// only bounds what a worker that died between the two leaves behind.
const STAGED_TTL: Duration = Duration::from_secs(3600);

/// Where a large answer went: what `output.answer_stored` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredAnswer {
    pub bytes: u64,
    pub chunks: u64,
}

impl StoredAnswer {
    /// The stored answer a result (`{output: {...}}`) or an output points to, if any.
    pub fn of(result: &Value) -> Option<StoredAnswer> {
        let output = result.get("output").unwrap_or(result);
        let stored = output.get("answer_stored")?;
        Some(StoredAnswer {
            bytes: stored.get("bytes")?.as_u64()?,
            chunks: stored.get("chunks")?.as_u64()?,
        })
    }
}

/// Byte ranges of `text` of at most `chunk` bytes each (at least one character), cut on
/// character boundaries so that every chunk is valid UTF-8 on its own.
pub fn chunk_ranges(text: &str, chunk: usize) -> Vec<(usize, usize)> {
    let chunk = chunk.max(4);
    let mut out = Vec::with_capacity(text.len() / chunk + 1);
    let mut start = 0;
    while start < text.len() {
        let mut end = (start + chunk).min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        out.push((start, end));
        start = end;
    }
    out
}

impl RedisQueue {
    /// Move a long `answer` out of a handler's output into the attempt's staged key (see
    /// the module doc); returns whether it did. The answer is written chunk by chunk from
    /// the string itself and then dropped: it is never copied whole.
    ///
    /// Long JSON metadata printed by the agent goes with it (field `metadata`, and
    /// `output.metadata_stored = {bytes}` in the result; [`RedisQueue::job_record`] puts
    /// it back), so the job's hash stays small whatever the agent printed.
    pub async fn stage_answer(
        &self,
        id: &str,
        token: &str,
        output: &mut JobOutput,
    ) -> Result<bool, QueueError> {
        let results = &self.config().results;
        let key = self.keys().staged_answer(id, token);
        let metadata = output
            .get("metadata")
            .filter(|m| !m.is_null())
            .map(Value::to_string)
            .filter(|m| m.len() > METADATA_INLINE_BYTES);
        if let Some(metadata) = &metadata {
            self.retrying("stage_metadata", || {
                let mut conn = self.connection();
                let mut pipe = redis::pipe();
                pipe.hset(&key, "metadata", metadata)
                    .ignore()
                    .pexpire(&key, STAGED_TTL.as_millis() as i64)
                    .ignore();
                async move { pipe.query_async::<()>(&mut conn).await }
            })
            .await?;
            if let Some(o) = output.as_object_mut() {
                o.remove("metadata");
                o.insert(
                    "metadata_stored".into(),
                    serde_json::json!({"bytes": metadata.len()}),
                );
            }
        }
        let long = matches!(output.get("answer"), Some(Value::String(a)) if a.len() > results.inline_bytes);
        let answer = match output.as_object_mut() {
            Some(o) if long => o.remove("answer"),
            _ => None,
        };
        let Some(Value::String(answer)) = answer else {
            return Ok(metadata.is_some());
        };
        let ranges = chunk_ranges(&answer, results.chunk_bytes);
        for (index, (start, end)) in ranges.iter().enumerate() {
            let piece = &answer.as_bytes()[*start..*end];
            self.retrying("stage_answer", || {
                let mut conn = self.connection();
                let mut pipe = redis::pipe();
                pipe.hset(&key, index, piece)
                    .ignore()
                    .pexpire(&key, STAGED_TTL.as_millis() as i64)
                    .ignore();
                async move { pipe.query_async::<()>(&mut conn).await }
            })
            .await?;
        }
        output["answer_stored"] = serde_json::json!({
            "bytes": answer.len(),
            "chunks": ranges.len(),
        });
        Ok(true)
    }

    /// A job's metadata stored with its answer (`output.metadata_stored`), if there.
    pub async fn stored_metadata(&self, id: &str) -> Result<Option<Value>, QueueError> {
        let key = self.owner_of(id).await?.keys().answer(id);
        let text: Option<String> = self
            .retrying("stored_metadata", || {
                let mut conn = self.connection();
                let key = key.clone();
                async move {
                    redis::cmd("HGET")
                        .arg(key)
                        .arg("metadata")
                        .query_async(&mut conn)
                        .await
                }
            })
            .await?;
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
    }

    /// One chunk of a job's stored answer; `None` when it is not there (expired).
    pub async fn answer_chunk(&self, id: &str, index: u64) -> Result<Option<Bytes>, QueueError> {
        let key = self.owner_of(id).await?.keys().answer(id);
        let chunk: Option<Vec<u8>> = self
            .retrying("answer_chunk", || {
                let mut conn = self.connection();
                let key = key.clone();
                async move {
                    redis::cmd("HGET")
                        .arg(key)
                        .arg(index)
                        .query_async(&mut conn)
                        .await
                }
            })
            .await?;
        Ok(chunk.map(Bytes::from))
    }

    /// A job's stored answer, chunk by chunk, read as the stream is polled (one chunk in
    /// memory at a time). A chunk that is gone (the answer expired while it was read)
    /// ends the stream with an error.
    pub fn answer_chunks(
        &self,
        id: &str,
        stored: StoredAnswer,
    ) -> impl Stream<Item = Result<Bytes, QueueError>> + Send + 'static {
        let queue = self.clone();
        let id = id.to_string();
        // The shard that holds the answer is found once, before the first chunk.
        let owner: Arc<tokio::sync::OnceCell<RedisQueue>> = Default::default();
        futures::stream::try_unfold(0u64, move |index| {
            let queue = queue.clone();
            let id = id.clone();
            let owner = owner.clone();
            async move {
                if index >= stored.chunks {
                    return Ok(None);
                }
                let owner = owner.get_or_try_init(|| queue.owner_of(&id)).await?;
                match owner.answer_chunk(&id, index).await? {
                    Some(chunk) => Ok(Some((chunk, index + 1))),
                    None => Err(QueueError::Corrupt(format!(
                        "chunk {index} of job {id}'s answer is gone (it expired while it was read)"
                    ))),
                }
            }
        })
    }
}

/// A JSON object written around a streamed string field: `head`, then each chunk of the
/// field's text escaped with [`escape_json_chunk`], then `tail`. The field comes last.
pub fn json_with_answer(doc: &Value, field: &str) -> (String, &'static str) {
    let text = doc.to_string();
    let body = text
        .strip_suffix('}')
        .filter(|_| doc.is_object())
        .unwrap_or("{");
    let sep = if body.len() > 1 { "," } else { "" };
    let name = Value::String(field.to_string()).to_string();
    (format!("{body}{sep}{name}:\""), "\"}")
}

/// A chunk of text as the inside of a JSON string (no quotes around it). Chunks are
/// whole characters (see [`chunk_ranges`]); stray invalid bytes become U+FFFD.
pub fn escape_json_chunk(chunk: &[u8]) -> String {
    let text = String::from_utf8_lossy(chunk);
    let quoted = Value::String(text.into_owned()).to_string();
    quoted[1..quoted.len() - 1].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_cut_on_character_boundaries_and_cover_the_text() {
        let text = "aé€😀".repeat(1000);
        for size in [4, 5, 7, 1024] {
            let ranges = chunk_ranges(&text, size);
            let mut joined = String::new();
            for (s, e) in &ranges {
                assert!(e - s <= size.max(4));
                joined.push_str(&text[*s..*e]);
            }
            assert_eq!(joined, text);
        }
        assert!(chunk_ranges("", 10).is_empty());
    }

    #[test]
    fn a_streamed_field_makes_valid_json() {
        let doc =
            serde_json::json!({"id": "x", "output": {"answer_stored": {"bytes": 3, "chunks": 2}}});
        let (head, tail) = json_with_answer(&doc, "answer");
        let text = format!(
            "{head}{}{}{tail}",
            escape_json_chunk("a\"\n".as_bytes()),
            escape_json_chunk("é\\".as_bytes())
        );
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back["answer"], "a\"\né\\");
        assert_eq!(back["id"], "x");
        let (head, tail) = json_with_answer(&serde_json::json!({}), "answer");
        let back: Value = serde_json::from_str(&format!("{head}ok{tail}")).unwrap();
        assert_eq!(back["answer"], "ok");
    }

    #[test]
    fn the_stored_answer_is_read_from_a_result_or_an_output() {
        let output = serde_json::json!({"answer_stored": {"bytes": 10, "chunks": 1}});
        let want = Some(StoredAnswer {
            bytes: 10,
            chunks: 1,
        });
        assert_eq!(StoredAnswer::of(&output), want);
        assert_eq!(
            StoredAnswer::of(&serde_json::json!({"output": output})),
            want
        );
        assert_eq!(
            StoredAnswer::of(&serde_json::json!({"output": {"answer": "x"}})),
            None
        );
    }
}
