//! The result store (being written).
