//! Tollgate's load and fault tooling: harnesses that run real `tollgate`
//! processes ([`cluster`]), the mock model provider ([`mock`], the
//! `mock-upstream` binary), the benchmarks (`ledger-bench`, `edge-bench`),
//! and the chaos tests: private networks of namespaces ([`netns`]), seeded
//! scenarios with faults from outside ([`run`], the `tollgate-chaos`
//! binary) and the invariant checker ([`checker`]).
#![forbid(unsafe_code)]

pub mod checker;
pub mod cluster;
pub mod hist;
mod load;
pub mod mock;
pub mod netns;
pub mod pki;
mod procs;
pub mod regions;
pub mod report;
pub mod rng;
pub mod run;
pub mod wan;
