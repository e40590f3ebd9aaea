//! The Connect protocol's envelope codec, as envd speaks it (JSON codec over HTTP/1.1).
//!
//! A server stream's body is a sequence of envelopes: one flag byte, a big-endian
//! `u32` length, then that many bytes of JSON. Flag `0x02` marks the last envelope,
//! whose JSON is `{"error"?: {...}, "metadata"?: {...}}`. HTTP/1.1 chunking does not
//! follow envelope boundaries, so [`FrameDecoder`] buffers bytes and hands out whole
//! frames only. Spec: <https://connectrpc.com/docs/protocol/#streaming-rpcs>.

use bytes::{Buf, Bytes, BytesMut};
use serde::Deserialize;

use crate::sandbox::SandboxError;

/// The envelope's payload is compressed. We never negotiate compression, so a
/// frame carrying it is a protocol error.
pub const FLAG_COMPRESSED: u8 = 0x01;
/// The last envelope of a stream: its payload is the end-of-stream message.
pub const FLAG_END_STREAM: u8 = 0x02;
/// Header bytes before each payload: flags (1) and length (4).
pub const HEADER_LEN: usize = 5;
/// A frame larger than this is refused rather than buffered: envd's data events are
/// small (it reads pipes in 32 KiB pieces), so this only guards against garbage.
pub const MAX_FRAME_LEN: usize = 16 << 20;

/// `Content-Type` of a streaming call with the JSON codec.
pub const CONTENT_TYPE_STREAM: &str = "application/connect+json";
/// `Content-Type` of a unary call with the JSON codec.
pub const CONTENT_TYPE_UNARY: &str = "application/json";
/// Header naming the protocol version; clients send `1`.
pub const PROTOCOL_VERSION_HEADER: &str = "Connect-Protocol-Version";
/// Header with the call's deadline in milliseconds. envd also kills a started
/// process when it elapses, so it is sent only when a timeout is wanted.
pub const TIMEOUT_HEADER: &str = "Connect-Timeout-Ms";

/// Wrap one message in an envelope.
pub fn envelope(flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.push(flags);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// One decoded envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub flags: u8,
    pub payload: Bytes,
}

impl Frame {
    pub fn is_end_stream(&self) -> bool {
        self.flags & FLAG_END_STREAM != 0
    }
}

/// The byte stream broke the envelope format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("envelope of {0} bytes is larger than the {MAX_FRAME_LEN}-byte limit")]
    TooLarge(usize),
    #[error("compressed envelope received, but no compression was negotiated")]
    Compressed,
}

/// Re-frames a body that arrives in arbitrary pieces.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: BytesMut,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add bytes as they arrive from the network.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next whole frame, or `None` until more bytes arrive.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let flags = self.buf[0];
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > MAX_FRAME_LEN {
            return Err(FrameError::TooLarge(len));
        }
        if flags & FLAG_COMPRESSED != 0 {
            return Err(FrameError::Compressed);
        }
        if self.buf.len() < HEADER_LEN + len {
            // Reserve now so a large frame is not re-allocated chunk by chunk.
            self.buf.reserve(HEADER_LEN + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(HEADER_LEN);
        let payload = self.buf.split_to(len).freeze();
        Ok(Some(Frame { flags, payload }))
    }

    /// Bytes received but not yet part of a whole frame. Non-zero at the end of
    /// the body means the stream was cut mid-envelope.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// The end-of-stream message. `metadata` (trailers) is not needed and ignored.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct EndStream {
    #[serde(default)]
    pub error: Option<ConnectError>,
}

/// A Connect error: `code` is a string such as `"not_found"`.
/// Spec: <https://connectrpc.com/docs/protocol/#error-codes>.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ConnectError {
    pub code: String,
    #[serde(default)]
    pub message: String,
}

impl ConnectError {
    /// Map to a [`SandboxError`]. `call` names the RPC for the message.
    ///
    /// `not_found` is *not* `SandboxError::NotFound`: inside envd it means a
    /// process or path is missing, not that the sandbox is gone (a gone sandbox is
    /// a 502 from E2B's edge, before envd), and treating it as "sandbox lost"
    /// would make the queue throw away a healthy sandbox.
    pub fn into_sandbox_error(self, call: &str) -> SandboxError {
        let msg = format!("{call}: {} ({})", self.message, self.code);
        match self.code.as_str() {
            "canceled" => SandboxError::Cancelled,
            "resource_exhausted" => SandboxError::RateLimited { retry_after: None },
            "unavailable" | "unknown" | "internal" | "aborted" | "data_loss" => {
                SandboxError::Unavailable(msg)
            }
            // `deadline_exceeded` is handled by callers that know the timeout;
            // anything else is a request envd refuses: retrying won't help.
            _ => SandboxError::Invalid(msg),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(decoder: &mut FrameDecoder) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Some(f) = decoder.next_frame().unwrap() {
            out.push(f);
        }
        out
    }

    #[test]
    fn envelope_layout_is_flag_then_big_endian_length() {
        let e = envelope(FLAG_END_STREAM, b"{}");
        assert_eq!(e, vec![0x02, 0, 0, 0, 2, b'{', b'}']);
    }

    #[test]
    fn reframes_across_every_possible_chunk_boundary() {
        let mut wire = envelope(0, br#"{"event":{"start":{"pid":7}}}"#);
        wire.extend(envelope(0, br#"{"event":{"data":{"stdout":"aGkK"}}}"#));
        wire.extend(envelope(FLAG_END_STREAM, b"{}"));
        for chunk in 1..=wire.len() {
            let mut d = FrameDecoder::new();
            let mut got = Vec::new();
            for piece in wire.chunks(chunk) {
                d.push(piece);
                got.extend(frames(&mut d));
            }
            assert_eq!(got.len(), 3, "chunk size {chunk}");
            assert_eq!(&got[0].payload[..], br#"{"event":{"start":{"pid":7}}}"#);
            assert!(got[2].is_end_stream());
            assert_eq!(d.pending(), 0);
        }
    }

    #[test]
    fn empty_payload_frames_decode() {
        let mut d = FrameDecoder::new();
        d.push(&envelope(FLAG_END_STREAM, b""));
        let f = d.next_frame().unwrap().unwrap();
        assert!(f.is_end_stream());
        assert!(f.payload.is_empty());
    }

    #[test]
    fn cut_stream_leaves_pending_bytes() {
        let wire = envelope(0, b"{\"a\":1}");
        let mut d = FrameDecoder::new();
        d.push(&wire[..wire.len() - 1]);
        assert_eq!(d.next_frame().unwrap(), None);
        assert_eq!(d.pending(), wire.len() - 1);
    }

    #[test]
    fn oversized_and_compressed_frames_are_refused() {
        let mut d = FrameDecoder::new();
        d.push(&[0, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(d.next_frame(), Err(FrameError::TooLarge(_))));
        let mut d = FrameDecoder::new();
        d.push(&envelope(FLAG_COMPRESSED, b"x"));
        assert_eq!(d.next_frame(), Err(FrameError::Compressed));
    }

    #[test]
    fn end_stream_error_parses_and_maps() {
        let e: EndStream = serde_json::from_str(
            r#"{"error":{"code":"unavailable","message":"x"},"metadata":{"a":["b"]}}"#,
        )
        .unwrap();
        let err = e.error.unwrap().into_sandbox_error("Start");
        assert!(matches!(err, SandboxError::Unavailable(_)), "{err:?}");
        let ok: EndStream = serde_json::from_str("{}").unwrap();
        assert!(ok.error.is_none());
        let nf = ConnectError {
            code: "not_found".into(),
            message: "process with pid 3 not found".into(),
        };
        assert!(matches!(
            nf.into_sandbox_error("SendInput"),
            SandboxError::Invalid(_)
        ));
    }
}
