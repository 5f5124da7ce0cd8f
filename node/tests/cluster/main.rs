//! The `tollgate` binary's integration tests, one binary: ledger clusters
//! of real processes on loopback (replication, failover, snapshots, the
//! admin CLI, the ops endpoints) and their security (mutual TLS, roles,
//! tokens, certificate rotation), on the shared process harness.

mod harness;
mod ledger_cluster;
mod security;
