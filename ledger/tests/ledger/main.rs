//! The ledger crate's integration tests, one binary: the state machine's
//! property tests and worked scenarios, openraft's storage conformance
//! suite on sled, snapshot format compatibility, and data written on
//! openraft 0.9. The multi-process cluster tests live with the binary
//! (`node/tests`).

mod lease_scenarios;
mod snapshot_format;
mod state_invariants;
mod state_scenarios;
mod storage_suite;
mod v09_data;
