//! The edge gateway's building blocks (issue 3, in progress) and the
//! `tollgate` binary (`src/main.rs`), which composes the roles.
#![forbid(unsafe_code)]

pub mod errors;
pub mod meter;
pub mod pricing;
