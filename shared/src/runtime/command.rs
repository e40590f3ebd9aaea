//! The `command` runtime (being written).
