//! `GET /v1/jobs/{id}/result` for an answer stored in chunks (results/store.rs): the
//! same JSON document as for any succeeded job (`result_response`), written as the
//! chunks are read from Redis, the `answer` field last. The server holds one chunk of it
//! at a time, whatever the answer's size.

use axum::body::Body;
use axum::body::Bytes;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use fleet_shared::queue::RedisQueue;
use fleet_shared::results::store::{StoredAnswer, escape_json_chunk, json_with_answer};
use fleet_shared::results::{JobRecord, JobStatus};
use futures::StreamExt;

use crate::output::BatchItem;

/// The streamed response for a succeeded job whose answer is stored in chunks, else
/// `None` (the answer is in the record: answer as usual).
pub fn stored_answer_response(queue: &RedisQueue, record: &JobRecord) -> Option<Response> {
    if record.status != JobStatus::Succeeded {
        return None;
    }
    let stored = record.result.as_ref().and_then(StoredAnswer::of)?;
    let doc = BatchItem::new(record.id.clone(), Some(record)).to_json();
    let mut doc = doc;
    if let Some(map) = doc.as_object_mut() {
        // `answer` comes last, streamed.
        map.remove("answer");
    }
    let (head, tail) = json_with_answer(&doc, "answer");
    let id = record.id.clone();
    let chunks = queue.answer_chunks(&record.id, stored).map(move |chunk| {
        chunk
            .map(|c| Bytes::from(escape_json_chunk(&c)))
            .map_err(|e| {
                // The status line is sent already: the client sees the body cut short.
                tracing::warn!(job = %id, error = %e, "streaming a stored answer failed");
                std::io::Error::other(e.to_string())
            })
    });
    let body = futures::stream::once(async move { Ok(Bytes::from(head)) })
        .chain(chunks)
        .chain(futures::stream::once(async move {
            Ok(Bytes::from_static(tail.as_bytes()))
        }));
    Some(
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            Body::from_stream(body),
        )
            .into_response(),
    )
}
