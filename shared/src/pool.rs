//! The agent pool (being written).
