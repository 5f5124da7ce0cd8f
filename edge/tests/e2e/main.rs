//! The edge's end-to-end tests, one binary, through real processes: the
//! built `tollgate` binary (ledger nodes, edges, `tollgate up`) and the
//! `mock-upstream` binary of `tollgate-chaos` as the provider, found beside
//! this test executable: run them with `./test.sh` or `cargo test
//! --workspace`, which build both first. `harness` is a one-node fixture
//! with raw HTTP clients; `sdk` a three-node fixture driven by the official
//! Python SDKs.

mod harness;
mod sdk;

mod codex;
mod hardening;
mod leases;
mod metering;
mod price_book_and_gateway_guide;
mod resilience;
mod responses;
mod streams;
mod tollgate_up;
