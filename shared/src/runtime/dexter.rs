//! The `dexter` runtime (being written).
