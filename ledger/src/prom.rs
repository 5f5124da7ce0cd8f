//! The Prometheus text helpers: [`tollgate_types::prom`], re-exported.

pub use tollgate_types::prom::*;
