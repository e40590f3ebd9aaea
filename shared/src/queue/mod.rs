//! The Redis queue backend (being written).
