//! The budget ledger as the edge sees it: the three calls admission and
//! settlement make. Admission and the outbox are written against this
//! trait, never against gRPC: [`Coalescer`] (batched calls to the cluster)
//! is the implementation the edge runs with, tests put an in-process fake
//! behind it, and a local lease will be another implementation.
//! Hold extension and the config stream stay on the gRPC client: they
//! address one node at a time.

use futures::future::BoxFuture;
use tollgate_client::coalesce::Coalescer;
use tollgate_proto::v1 as pb;
use tonic::Status;

/// Reserve, settle and release, each answered by the ledger or failed with
/// a status whose retry safety [`tollgate_client::retryable`] decides.
pub(crate) trait Ledger: Send + Sync + 'static {
    fn reserve(&self, req: pb::ReserveRequest) -> BoxFuture<'_, Result<pb::ReserveResult, Status>>;
    fn settle(&self, req: pb::SettleRequest) -> BoxFuture<'_, Result<pb::SettleResult, Status>>;
    fn release(&self, hold: pb::HoldId) -> BoxFuture<'_, Result<pb::ReleaseResult, Status>>;
}

impl Ledger for Coalescer {
    fn reserve(&self, req: pb::ReserveRequest) -> BoxFuture<'_, Result<pb::ReserveResult, Status>> {
        Box::pin(Coalescer::reserve(self, req))
    }

    fn settle(&self, req: pb::SettleRequest) -> BoxFuture<'_, Result<pb::SettleResult, Status>> {
        Box::pin(Coalescer::settle(self, req))
    }

    fn release(&self, hold: pb::HoldId) -> BoxFuture<'_, Result<pb::ReleaseResult, Status>> {
        Box::pin(Coalescer::release(self, hold))
    }
}
