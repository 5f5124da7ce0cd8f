//! The edge gateway ([`edge`]) and its building blocks, used by the
//! `tollgate` binary (`src/main.rs`), which composes the roles.
#![forbid(unsafe_code)]

pub mod cert_cli;
pub mod config;
pub mod edge;
pub mod errors;
pub mod meter;
pub mod ops_http;
pub mod pricing;
