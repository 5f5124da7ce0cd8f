//! Tollgate's load and fault tooling. Today: a harness that runs real
//! `tollgate ledger` processes ([`cluster`]) and the ledger benchmark
//! (`ledger-bench`). Planned: the mock upstream, load generator, fault
//! schedules and invariant checker of the chaos tests.
#![forbid(unsafe_code)]

pub mod cluster;
