//! The worker side of live events: one [`AttemptEvents`] per attempt.
//!
//! ```text
//!  runtime ──OutputChunk──► splitter task ──lines──► bounded buffer ──► writer task ──XADD…──► Redis
//!  (RunOptions::output)     (lines, kinds,           (oldest dropped     (one pipeline per
//!                            redaction)               when full)          batch, in order)
//! ```
//!
//! The agent's output is never held up by Redis: the splitter only does CPU work and
//! the buffer between it and the writer drops its oldest lines when full (the writer
//! then writes a `dropped` event with their count where they were). One writer task per
//! attempt keeps the order: each batch is one pipeline of `XADD`s followed by `EXPIRE`,
//! and the next batch is sent only after it. A batch Redis refused or never answered is
//! counted as dropped, not retried (it may have landed; writing it again could repeat it).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::connection::RedisConn;
use serde_json::Value;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{EventKind, EventsSettings};
use crate::runtime::OutputPipe;
use crate::sandbox::OutputChunk;

/// Entries per pipeline: a burst is written in a few round trips, and one batch holds
/// Redis for well under a millisecond.
const BATCH_MAX: usize = 256;
/// Most bytes of event data one attempt may have waiting for Redis (besides the
/// `buffer_events` count): an agent printing long lines fast must not make the worker
/// hold its output a second time in this buffer. Past it the oldest entries go.
const BUFFER_BYTES: usize = 4 * 1024 * 1024;
/// Pause after a failed write before the next, so an unreachable Redis is not spun on.
const FAILED_WRITE_PAUSE: Duration = Duration::from_millis(200);

/// Removes secret values from a line before it leaves the worker.
pub type Redactor = Arc<dyn Fn(&str) -> String + Send + Sync>;

/// Where one worker writes its attempts' events: a connection of their own (a burst of
/// output never queues behind, or ahead of, the queue's own calls), the settings and
/// the queue's result TTL.
#[derive(Clone)]
pub struct EventSink {
    conn: RedisConn,
    settings: Arc<EventsSettings>,
    ttl: Duration,
}

impl EventSink {
    pub fn new(conn: RedisConn, settings: EventsSettings, ttl: Duration) -> EventSink {
        EventSink {
            conn,
            settings: Arc::new(settings),
            ttl,
        }
    }

    /// Start the events of one attempt, written to stream `key`. `agent_events` names
    /// the output stream that carries the agent's JSON events, if any.
    pub fn attempt(
        &self,
        key: String,
        attempt: u32,
        agent_events: Option<OutputPipe>,
        redact: Redactor,
    ) -> AttemptEvents {
        let buffer = Arc::new(Buffer::new(self.settings.buffer_events));
        let (output, chunks) = mpsc::unbounded_channel();
        let (finish, finished) = oneshot::channel();
        let splitter = Splitter {
            stdout: Lines::new(self.settings.max_line_bytes),
            stderr: Lines::new(self.settings.max_line_bytes),
            agent_events,
            redact,
            buffer: buffer.clone(),
        };
        let splitter = tokio::spawn(splitter.run(chunks, finished));
        let writer = Writer {
            conn: self.conn.clone(),
            key,
            attempt: attempt.to_string(),
            max_len: self.settings.max_len,
            ttl_secs: self.ttl.as_secs().max(1),
            buffer: buffer.clone(),
        };
        let writer = tokio::spawn(writer.run());
        AttemptEvents {
            output,
            buffer,
            finish: Some(finish),
            splitter: Some(splitter),
            writer: Some(writer),
        }
    }
}

/// The live events of one attempt. Dropped without [`AttemptEvents::finish`] (the
/// attempt was cut off), it still writes what it has, without an `attempt_ended`.
pub struct AttemptEvents {
    output: mpsc::UnboundedSender<OutputChunk>,
    buffer: Arc<Buffer>,
    finish: Option<oneshot::Sender<Value>>,
    splitter: Option<JoinHandle<()>>,
    writer: Option<JoinHandle<()>>,
}

impl AttemptEvents {
    /// The sender for `RunOptions::output`.
    pub fn output(&self) -> mpsc::UnboundedSender<OutputChunk> {
        self.output.clone()
    }

    /// Add an event of the attempt itself (`attempt_started`).
    pub fn push(&self, kind: EventKind, data: &Value) {
        self.buffer.push(Entry::new(kind, data));
    }

    /// End the attempt's events: every chunk sent so far becomes lines, then
    /// `attempt_ended` with `ended`; wait up to `within` for all of it to be written
    /// (so a follower that sees the job end has seen them). Past `within` the writer
    /// goes on by itself.
    pub async fn finish(mut self, ended: Value, within: Duration) {
        if let Some(finish) = self.finish.take() {
            let _ = finish.send(ended);
        }
        let (splitter, writer) = (self.splitter.take(), self.writer.take());
        let done = async {
            if let Some(s) = splitter {
                let _ = s.await;
            }
            if let Some(w) = writer {
                let _ = w.await;
            }
        };
        if tokio::time::timeout(within, done).await.is_err() {
            tracing::warn!(
                within_ms = within.as_millis() as u64,
                "the attempt's last events are not written yet (Redis slow); they follow later"
            );
        }
    }
}

/// One line or event waiting to be written.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    kind: EventKind,
    /// JSON text.
    data: String,
}

impl Entry {
    fn new(kind: EventKind, data: &Value) -> Entry {
        Entry {
            kind,
            data: data.to_string(),
        }
    }
}

/// The bounded buffer between the splitter and the writer.
struct Buffer {
    capacity: usize,
    state: Mutex<BufferState>,
    /// Woken on every push and at close; a wake-up before the writer waits is kept.
    ready: Notify,
}

#[derive(Default)]
struct BufferState {
    entries: VecDeque<Entry>,
    /// Bytes of data in `entries`.
    bytes: usize,
    /// Entries dropped since the writer last took a batch.
    dropped: u64,
    closed: bool,
}

/// What the writer takes at once.
struct Batch {
    dropped: u64,
    entries: Vec<Entry>,
    closed: bool,
}

impl Buffer {
    fn new(capacity: usize) -> Buffer {
        Buffer {
            capacity: capacity.max(1),
            state: Mutex::new(BufferState::default()),
            ready: Notify::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, BufferState> {
        // Nothing panics while holding it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Add an entry; when full, the oldest one waiting is dropped (and counted).
    fn push(&self, entry: Entry) {
        let mut state = self.state();
        if state.closed {
            return;
        }
        while !state.entries.is_empty()
            && (state.entries.len() >= self.capacity
                || state.bytes + entry.data.len() > BUFFER_BYTES)
        {
            if let Some(old) = state.entries.pop_front() {
                state.bytes -= old.data.len();
            }
            state.dropped += 1;
        }
        state.bytes += entry.data.len();
        state.entries.push_back(entry);
        drop(state);
        self.ready.notify_one();
    }

    /// Count entries lost after they were taken (a write that failed).
    fn lost(&self, count: u64) {
        self.state().dropped += count;
    }

    fn close(&self) {
        self.state().closed = true;
        self.ready.notify_one();
    }

    fn take(&self, max: usize) -> Batch {
        let mut state = self.state();
        let n = state.entries.len().min(max);
        let entries: Vec<Entry> = state.entries.drain(..n).collect();
        state.bytes -= entries.iter().map(|e| e.data.len()).sum::<usize>();
        Batch {
            dropped: std::mem::take(&mut state.dropped),
            entries,
            closed: state.closed,
        }
    }
}

/// Cuts one output stream into lines.
struct Lines {
    partial: Vec<u8>,
    max: usize,
}

impl Lines {
    fn new(max: usize) -> Lines {
        Lines {
            partial: Vec::new(),
            max,
        }
    }

    /// Feed bytes; each whole line (without its `\n` or `\r\n`), and each piece of
    /// `max` bytes of a longer one, goes to `line`.
    fn feed(&mut self, mut bytes: &[u8], line: &mut impl FnMut(&[u8])) {
        while let Some(end) = bytes.iter().position(|&b| b == b'\n') {
            self.partial.extend_from_slice(&bytes[..end]);
            self.cut_long(line);
            let mut whole = std::mem::take(&mut self.partial);
            if whole.last() == Some(&b'\r') {
                whole.pop();
            }
            line(&whole);
            bytes = &bytes[end + 1..];
        }
        self.partial.extend_from_slice(bytes);
        self.cut_long(line);
    }

    /// Emit `max`-byte pieces (ending on a character boundary) while the line is longer.
    fn cut_long(&mut self, line: &mut impl FnMut(&[u8])) {
        while self.partial.len() > self.max {
            let mut cut = self.max;
            while cut > 0 && self.partial[cut] & 0xC0 == 0x80 {
                cut -= 1;
            }
            if cut == 0 {
                cut = self.max;
            }
            line(&self.partial[..cut]);
            self.partial.drain(..cut);
        }
    }

    /// The last line, if it had no newline.
    fn flush(&mut self, line: &mut impl FnMut(&[u8])) {
        if !self.partial.is_empty() {
            let rest = std::mem::take(&mut self.partial);
            line(&rest);
        }
    }
}

/// The splitter task: chunks → classified, redacted lines in the buffer.
struct Splitter {
    stdout: Lines,
    stderr: Lines,
    agent_events: Option<OutputPipe>,
    redact: Redactor,
    buffer: Arc<Buffer>,
}

impl Splitter {
    async fn run(
        mut self,
        mut chunks: mpsc::UnboundedReceiver<OutputChunk>,
        mut finished: oneshot::Receiver<Value>,
    ) {
        let mut open = true;
        let ended = loop {
            tokio::select! {
                biased;
                chunk = chunks.recv(), if open => match chunk {
                    Some(chunk) => self.catch_up(chunk, &mut chunks),
                    None => open = false,
                },
                ended = &mut finished => {
                    // Everything the runtime sent before it returned is in the channel.
                    while let Ok(chunk) = chunks.try_recv() {
                        self.chunk(chunk);
                    }
                    break ended.ok();
                }
            }
        };
        let (mut stdout, mut stderr) = (
            std::mem::replace(&mut self.stdout, Lines::new(0)),
            std::mem::replace(&mut self.stderr, Lines::new(0)),
        );
        stdout.flush(&mut |l| self.line(OutputPipe::Stdout, l));
        stderr.flush(&mut |l| self.line(OutputPipe::Stderr, l));
        if let Some(ended) = ended {
            self.buffer
                .push(Entry::new(EventKind::AttemptEnded, &ended));
        }
        self.buffer.close();
    }

    /// Take `first` and everything queued behind it. When more is queued than the
    /// buffer holds (the agent prints faster than lines are made), the oldest chunks
    /// are dropped and counted rather than kept: the channel from the provider is
    /// unbounded, and the worker must not hold the agent's output twice.
    fn catch_up(&mut self, first: OutputChunk, chunks: &mut mpsc::UnboundedReceiver<OutputChunk>) {
        let size = |c: &OutputChunk| match c {
            OutputChunk::Stdout(b) | OutputChunk::Stderr(b) => b.len(),
        };
        let mut queued = std::collections::VecDeque::from([first]);
        let mut bytes = size(&queued[0]);
        loop {
            // Between two chunks, take in what arrived and drop the oldest past the
            // bound: what waits here stays within it whatever the agent's pace.
            while let Ok(chunk) = chunks.try_recv() {
                bytes += size(&chunk);
                queued.push_back(chunk);
                while bytes > BUFFER_BYTES && queued.len() > 1 {
                    if let Some(old) = queued.pop_front() {
                        bytes -= size(&old);
                        self.buffer.lost(1);
                    }
                }
            }
            let Some(chunk) = queued.pop_front() else {
                return;
            };
            bytes -= size(&chunk);
            self.chunk(chunk);
        }
    }

    fn chunk(&mut self, chunk: OutputChunk) {
        let (pipe, bytes) = match chunk {
            OutputChunk::Stdout(b) => (OutputPipe::Stdout, b),
            OutputChunk::Stderr(b) => (OutputPipe::Stderr, b),
        };
        let mut lines = std::mem::replace(
            match pipe {
                OutputPipe::Stdout => &mut self.stdout,
                OutputPipe::Stderr => &mut self.stderr,
            },
            Lines::new(0),
        );
        lines.feed(&bytes, &mut |l| self.line(pipe, l));
        match pipe {
            OutputPipe::Stdout => self.stdout = lines,
            OutputPipe::Stderr => self.stderr = lines,
        }
    }

    fn line(&self, pipe: OutputPipe, bytes: &[u8]) {
        self.buffer
            .push(classify(pipe, bytes, self.agent_events, &self.redact));
    }
}

/// A line as an entry (pure): a JSON object on the agent's event stream is an `agent`
/// event; anything else is a `stdout`/`stderr` line. Secret values are redacted first.
fn classify(
    pipe: OutputPipe,
    bytes: &[u8],
    agent_events: Option<OutputPipe>,
    redact: &Redactor,
) -> Entry {
    let text = redact(&String::from_utf8_lossy(bytes));
    if agent_events == Some(pipe)
        && text.trim_start().starts_with('{')
        && let Ok(event @ Value::Object(_)) = serde_json::from_str::<Value>(&text)
    {
        return Entry::new(EventKind::Agent, &event);
    }
    let kind = match pipe {
        OutputPipe::Stdout => EventKind::Stdout,
        OutputPipe::Stderr => EventKind::Stderr,
    };
    Entry::new(kind, &Value::String(text))
}

/// The writer task: batches from the buffer → one pipeline each, in order.
struct Writer {
    conn: RedisConn,
    key: String,
    attempt: String,
    max_len: u64,
    ttl_secs: u64,
    buffer: Arc<Buffer>,
}

impl Writer {
    async fn run(mut self) {
        let mut warned = false;
        loop {
            let batch = self.buffer.take(BATCH_MAX);
            if batch.entries.is_empty() && batch.dropped == 0 {
                if batch.closed {
                    return;
                }
                self.buffer.ready.notified().await;
                continue;
            }
            let count = batch.entries.len() as u64;
            let mut pipe = redis::pipe();
            if batch.dropped > 0 {
                let marker = Entry::new(
                    EventKind::Dropped,
                    &serde_json::json!({"count": batch.dropped}),
                );
                self.xadd(&mut pipe, &marker);
            }
            for entry in &batch.entries {
                self.xadd(&mut pipe, entry);
            }
            pipe.cmd("EXPIRE")
                .arg(&self.key)
                .arg(self.ttl_secs)
                .ignore();
            match pipe.query_async::<()>(&mut self.conn).await {
                Ok(()) => warned = false,
                Err(e) => {
                    // The marker is lost with the batch: count both again.
                    self.buffer.lost(count + batch.dropped);
                    if !warned {
                        tracing::warn!(error = %e, "live events: a write failed; its lines are counted as dropped");
                        warned = true;
                    }
                    if batch.closed && self.buffer.state().entries.is_empty() {
                        return;
                    }
                    tokio::time::sleep(FAILED_WRITE_PAUSE).await;
                }
            }
        }
    }

    fn xadd(&self, pipe: &mut redis::Pipeline, entry: &Entry) {
        pipe.cmd("XADD")
            .arg(&self.key)
            .arg("MAXLEN")
            .arg("~")
            .arg(self.max_len)
            .arg("*")
            .arg("attempt")
            .arg(&self.attempt)
            .arg("kind")
            .arg(entry.kind.as_str())
            .arg("data")
            .arg(&entry.data)
            .ignore();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lines_of(chunks: &[&[u8]], max: usize) -> Vec<String> {
        let mut lines = Lines::new(max);
        let mut out = Vec::new();
        for c in chunks {
            lines.feed(c, &mut |l| {
                out.push(String::from_utf8_lossy(l).into_owned())
            });
        }
        lines.flush(&mut |l| out.push(String::from_utf8_lossy(l).into_owned()));
        out
    }

    #[test]
    fn chunks_become_lines_whatever_their_boundaries() {
        assert_eq!(
            lines_of(&[b"one\ntw", b"o\r\n", b"", b"\nthree"], 100),
            ["one", "two", "", "three"]
        );
        assert_eq!(lines_of(&[b"abcdefgh\n"], 3), ["abc", "def", "gh"]);
        // A cut never splits a character: "é" is two bytes.
        assert_eq!(lines_of(&["aé".as_bytes(), b"\n"], 2), ["a", "é"]);
    }

    #[test]
    fn json_objects_on_the_agents_stream_are_agent_events_and_secrets_are_redacted() {
        let redact: Redactor = Arc::new(|t: &str| t.replace("sk-secret", "[redacted]"));
        let line = br#"{"type":"assistant","key":"sk-secret"}"#;
        let e = classify(OutputPipe::Stdout, line, Some(OutputPipe::Stdout), &redact);
        assert_eq!(e.kind, EventKind::Agent);
        let data: Value = serde_json::from_str(&e.data).unwrap();
        assert_eq!(data, json!({"type": "assistant", "key": "[redacted]"}));
        let e = classify(OutputPipe::Stderr, line, Some(OutputPipe::Stdout), &redact);
        assert_eq!(
            e.kind,
            EventKind::Stderr,
            "JSON on the other stream is a line"
        );
        assert!(!e.data.contains("sk-secret"));
        let e = classify(
            OutputPipe::Stdout,
            b"[1,2]",
            Some(OutputPipe::Stdout),
            &redact,
        );
        assert_eq!(e.kind, EventKind::Stdout, "only objects are events");
        assert_eq!(e.data, "\"[1,2]\"");
    }

    #[test]
    fn a_recorded_claude_code_run_becomes_agent_events_in_order() {
        let recorded = crate::runtime::testdata("claude_code", "success.jsonl");
        let redact: Redactor = Arc::new(str::to_string);
        // Fed in odd-sized chunks, as pipes deliver it.
        let mut lines = Lines::new(65536);
        let mut events = Vec::new();
        for chunk in recorded.as_bytes().chunks(97) {
            lines.feed(chunk, &mut |l| {
                if !l.is_empty() {
                    events.push(classify(
                        OutputPipe::Stdout,
                        l,
                        Some(OutputPipe::Stdout),
                        &redact,
                    ));
                }
            });
        }
        lines.flush(&mut |l| {
            events.push(classify(
                OutputPipe::Stdout,
                l,
                Some(OutputPipe::Stdout),
                &redact,
            ))
        });
        assert_eq!(
            events.len(),
            recorded.lines().filter(|l| !l.is_empty()).count()
        );
        // The CLI's stream-json events are agent events, in order; the SDK's debug log
        // (`ANTHROPIC_LOG=debug`, which it writes to stdout too) stays text.
        let types: Vec<String> = events
            .iter()
            .filter(|e| e.kind == EventKind::Agent)
            .map(|e| {
                let event: Value = serde_json::from_str(&e.data).unwrap();
                event["type"].as_str().unwrap_or("").to_string()
            })
            .collect();
        assert_eq!(types, ["system", "assistant", "result"]);
        assert!(
            events
                .iter()
                .filter(|e| e.kind == EventKind::Stdout)
                .any(|e| e.data.contains("sending request"))
        );
    }

    #[test]
    fn a_full_buffer_drops_its_oldest_and_counts_them() {
        let b = Buffer::new(3);
        for i in 0..5 {
            b.push(Entry::new(EventKind::Stdout, &json!(i)));
        }
        let batch = b.take(10);
        assert_eq!(batch.dropped, 2);
        let kept: Vec<&str> = batch.entries.iter().map(|e| e.data.as_str()).collect();
        assert_eq!(kept, ["2", "3", "4"], "the newest are kept, in order");
        assert_eq!(b.take(10).dropped, 0, "the count is taken once");
        b.close();
        b.push(Entry::new(EventKind::Stdout, &json!(9)));
        let batch = b.take(10);
        assert!(batch.closed && batch.entries.is_empty());
    }
}
