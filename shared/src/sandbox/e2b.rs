//! The E2B sandbox provider (being written).
