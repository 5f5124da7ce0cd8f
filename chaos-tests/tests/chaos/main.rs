//! The chaos tooling's integration tests, one binary: the mock upstream
//! speaks each provider's wire format, and every chaos scenario runs
//! briefly through the `tollgate-chaos` binary and passes the checker.

mod mock_upstream;
mod scenarios;
