//! The local sandbox provider (being written).
