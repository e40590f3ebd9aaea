//! The `claude_code` runtime (being written).
