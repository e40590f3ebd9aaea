//! Metering: the tokens one response used, read from the response itself as it passes
//! through, without holding it back.
//!
//! - Anthropic Messages: `usage` of the message; streamed, `message_start` carries the
//!   input and cache figures and `message_delta` the output so far (cumulative, so the
//!   last one counts).
//! - OpenAI Chat Completions: `usage` (`prompt_tokens`, `completion_tokens`,
//!   `prompt_tokens_details.cached_tokens`); streamed, the last chunk carries it when the
//!   request asked for `stream_options.include_usage` (the gateway adds it).
//! - OpenAI Responses: `usage` (`input_tokens`, `output_tokens`,
//!   `input_tokens_details.cached_tokens`); streamed, in `response.completed`.
//!
//! A [`Meter`] is fed the body's bytes in the pieces they arrive in; a streamed body is
//! read line by line (server-sent events), any other body is kept up to a limit and
//! read whole at the end. Cached input is counted apart from fresh input, because it is
//! priced apart.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Tokens, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Input tokens read fresh (not from the cache).
    pub input: u64,
    pub output: u64,
    /// Input tokens read from the prompt cache.
    pub cache_read: u64,
    /// Input tokens written to the prompt cache.
    pub cache_write: u64,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.input + self.output + self.cache_read + self.cache_write
    }
}

/// Which API a response comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    AnthropicMessages,
    OpenAiChat,
    OpenAiResponses,
    /// Anything else (other provider routes, data APIs): requests are counted, not tokens.
    Other,
}

/// A JSON body is parsed whole only up to this size (larger ones are not metered).
const MAX_JSON_BODY: usize = 16 * 1024 * 1024;
/// A single server-sent-event line longer than this is skipped.
const MAX_SSE_LINE: usize = 4 * 1024 * 1024;

/// Reads usage out of one response body as it streams by.
#[derive(Debug)]
pub struct Meter {
    api: Api,
    streamed: bool,
    buf: Vec<u8>,
    overflow: bool,
    model: Option<String>,
    usage: Usage,
    seen: bool,
}

impl Meter {
    /// `streamed`: the response is `text/event-stream`.
    pub fn new(api: Api, streamed: bool) -> Meter {
        Meter {
            api,
            streamed,
            buf: Vec::new(),
            overflow: false,
            model: None,
            usage: Usage::default(),
            seen: false,
        }
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        if self.api == Api::Other {
            return;
        }
        if !self.streamed {
            if self.buf.len() + bytes.len() > MAX_JSON_BODY {
                self.overflow = true;
                self.buf = Vec::new();
            }
            if !self.overflow {
                self.buf.extend_from_slice(bytes);
            }
            return;
        }
        let mut rest = bytes;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            if !self.overflow {
                self.buf.extend_from_slice(&rest[..nl]);
                let line = std::mem::take(&mut self.buf);
                self.line(&line);
            }
            self.buf.clear();
            self.overflow = false;
            rest = &rest[nl + 1..];
        }
        if self.buf.len() + rest.len() > MAX_SSE_LINE {
            self.overflow = true;
            self.buf.clear();
        } else if !self.overflow {
            self.buf.extend_from_slice(rest);
        }
    }

    fn line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        let Ok(value) = serde_json::from_slice::<Value>(data.trim_ascii()) else {
            return;
        };
        self.event(&value);
    }

    /// The model and usage seen, once the body has ended (`None`: no usage found).
    pub fn finish(mut self) -> Option<(Option<String>, Usage)> {
        if !self.streamed && !self.overflow && !self.buf.is_empty() {
            if let Ok(value) = serde_json::from_slice::<Value>(&self.buf) {
                self.event(&value);
            }
        } else if self.streamed && !self.buf.is_empty() {
            let line = std::mem::take(&mut self.buf);
            self.line(&line);
        }
        self.seen.then_some((self.model, self.usage))
    }

    fn event(&mut self, v: &Value) {
        let model = v
            .get("model")
            .or_else(|| v.pointer("/message/model"))
            .or_else(|| v.pointer("/response/model"))
            .and_then(Value::as_str);
        if let Some(m) = model
            && !m.is_empty()
        {
            self.model = Some(m.to_string());
        }
        match self.api {
            Api::AnthropicMessages => {
                let usage = v.get("usage").or_else(|| v.pointer("/message/usage"));
                if let Some(u) = usage.filter(|u| u.is_object()) {
                    self.seen = true;
                    // message_start sets every figure; message_delta updates those it
                    // carries (output always, cumulative).
                    for (field, slot) in [
                        ("input_tokens", &mut self.usage.input),
                        ("output_tokens", &mut self.usage.output),
                        ("cache_read_input_tokens", &mut self.usage.cache_read),
                        ("cache_creation_input_tokens", &mut self.usage.cache_write),
                    ] {
                        if let Some(n) = u.get(field).and_then(Value::as_u64) {
                            *slot = n;
                        }
                    }
                }
            }
            Api::OpenAiChat => {
                if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
                    self.seen = true;
                    let prompt = num(u, "prompt_tokens");
                    let cached = u
                        .pointer("/prompt_tokens_details/cached_tokens")
                        .and_then(Value::as_u64)
                        .unwrap_or(0);
                    self.usage = Usage {
                        input: prompt.saturating_sub(cached),
                        output: num(u, "completion_tokens"),
                        cache_read: cached,
                        cache_write: 0,
                    };
                }
            }
            Api::OpenAiResponses => {
                let usage = v
                    .get("usage")
                    .or_else(|| v.pointer("/response/usage"))
                    .filter(|u| u.is_object());
                if let Some(u) = usage {
                    self.seen = true;
                    let input = num(u, "input_tokens");
                    let cached = u
                        .pointer("/input_tokens_details/cached_tokens")
                        .and_then(Value::as_u64)
                        .unwrap_or(0);
                    self.usage = Usage {
                        input: input.saturating_sub(cached),
                        output: num(u, "output_tokens"),
                        cache_read: cached,
                        cache_write: 0,
                    };
                }
            }
            Api::Other => {}
        }
    }
}

fn num(v: &Value, field: &str) -> u64 {
    v.get(field).and_then(Value::as_u64).unwrap_or(0)
}

/// A rough count of a request's input tokens (about four bytes a token), reserved
/// against the budgets before the request is sent.
pub fn estimate_input_tokens(body_len: usize) -> u64 {
    (body_len as u64).div_ceil(4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fed_in_pieces(
        api: Api,
        streamed: bool,
        body: &str,
        piece: usize,
    ) -> Option<(Option<String>, Usage)> {
        let mut m = Meter::new(api, streamed);
        for chunk in body.as_bytes().chunks(piece) {
            m.feed(chunk);
        }
        m.finish()
    }

    const ANTHROPIC_STREAM: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-sonnet-4-5\",\"usage\":{\"input_tokens\":120,\"output_tokens\":1,\"cache_creation_input_tokens\":7,\"cache_read_input_tokens\":50}}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":30}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

    #[test]
    fn anthropic_streamed_usage_takes_the_start_and_the_last_delta_in_any_split() {
        for piece in [1, 3, 17, 4096] {
            let (model, usage) =
                fed_in_pieces(Api::AnthropicMessages, true, ANTHROPIC_STREAM, piece).unwrap();
            assert_eq!(model.as_deref(), Some("claude-sonnet-4-5"));
            assert_eq!(
                usage,
                Usage {
                    input: 120,
                    output: 30,
                    cache_read: 50,
                    cache_write: 7
                },
                "piece {piece}"
            );
        }
    }

    #[test]
    fn anthropic_message_usage() {
        let body =
            r#"{"id":"msg_1","model":"claude-x","usage":{"input_tokens":10,"output_tokens":20}}"#;
        let (_, usage) = fed_in_pieces(Api::AnthropicMessages, false, body, 5).unwrap();
        assert_eq!(
            usage,
            Usage {
                input: 10,
                output: 20,
                ..Default::default()
            }
        );
    }

    #[test]
    fn openai_chat_usage_streamed_and_not_with_cached_tokens_apart() {
        let body = r#"{"model":"gpt-4.1","usage":{"prompt_tokens":100,"completion_tokens":20,"prompt_tokens_details":{"cached_tokens":40}}}"#;
        let (model, usage) = fed_in_pieces(Api::OpenAiChat, false, body, 7).unwrap();
        assert_eq!(model.as_deref(), Some("gpt-4.1"));
        assert_eq!(
            usage,
            Usage {
                input: 60,
                output: 20,
                cache_read: 40,
                cache_write: 0
            }
        );
        let stream = "data: {\"model\":\"gpt-4.1\",\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":null}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":100,\"completion_tokens\":20}}\n\ndata: [DONE]\n\n";
        let (_, usage) = fed_in_pieces(Api::OpenAiChat, true, stream, 9).unwrap();
        assert_eq!(
            usage,
            Usage {
                input: 100,
                output: 20,
                ..Default::default()
            }
        );
    }

    #[test]
    fn openai_responses_usage_from_response_completed() {
        let stream = "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"model\":\"gpt-5\",\"usage\":null}}\n\nevent: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"model\":\"gpt-5\",\"usage\":{\"input_tokens\":11,\"output_tokens\":22,\"input_tokens_details\":{\"cached_tokens\":1}}}}\n\n";
        let (model, usage) = fed_in_pieces(Api::OpenAiResponses, true, stream, 13).unwrap();
        assert_eq!(model.as_deref(), Some("gpt-5"));
        assert_eq!(
            usage,
            Usage {
                input: 10,
                output: 22,
                cache_read: 1,
                cache_write: 0
            }
        );
    }

    #[test]
    fn a_body_without_usage_is_not_metered() {
        assert!(
            fed_in_pieces(
                Api::OpenAiChat,
                true,
                "data: {\"choices\":[]}\n\ndata: [DONE]\n\n",
                4
            )
            .is_none()
        );
        assert!(fed_in_pieces(Api::AnthropicMessages, false, "not json", 4).is_none());
    }
}
