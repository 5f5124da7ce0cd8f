//! Tollgate's load and fault tooling. Today: a harness that runs real
//! `tollgate ledger` processes ([`cluster`]), the ledger benchmark
//! (`ledger-bench`), and the mock model provider ([`mock`], the
//! `mock-upstream` binary) that tests point the gateway at. Planned: the
//! load generator, fault schedules and invariant checker of the chaos tests.
#![forbid(unsafe_code)]

pub mod cluster;
pub mod mock;
