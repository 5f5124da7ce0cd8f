//! Client-side batching for the ledger: many concurrent single Reserve /
//! Settle / Release calls become few batched gRPC calls. Each caller still
//! awaits its own result. This is how an edge talks to the ledger: the
//! per-call gRPC cost is paid once per batch, not once per request.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Semaphore};
use tollgate_proto::v1 as pb;
use tonic::Status;

use crate::LedgerClient;

/// Limits of a [`Coalescer`].
#[derive(Debug, Clone)]
pub struct CoalescerConfig {
    /// Most items in one batched call.
    pub max_batch: usize,
    /// Most batched calls in flight per kind (reserve, settle, release).
    pub max_inflight: usize,
    /// Most items waiting; beyond this callers wait for room.
    pub max_queued: usize,
}

impl Default for CoalescerConfig {
    fn default() -> Self {
        CoalescerConfig { max_batch: 256, max_inflight: 4, max_queued: 65_536 }
    }
}

type Reply<T> = oneshot::Sender<Result<T, Status>>;

/// A handle to the batching tasks; cheap to clone.
#[derive(Clone)]
pub struct Coalescer {
    reserve: mpsc::Sender<(pb::ReserveRequest, Reply<pb::ReserveResult>)>,
    settle: mpsc::Sender<(pb::SettleRequest, Reply<pb::SettleResult>)>,
    release: mpsc::Sender<(pb::HoldId, Reply<pb::ReleaseResult>)>,
}

fn closed() -> Status {
    Status::unavailable("the ledger client is shutting down")
}

impl Coalescer {
    /// Starts the batching tasks on the current runtime.
    pub fn start(client: LedgerClient, cfg: CoalescerConfig) -> Coalescer {
        let (reserve, rx) = mpsc::channel(cfg.max_queued.max(1));
        tokio::spawn(pump(client.clone(), cfg.clone(), rx, |mut c, items| async move {
            let r = c.reserve(pb::ReserveBatch { requests: items }).await?;
            Ok(r.into_inner().results)
        }));
        let (settle, rx) = mpsc::channel(cfg.max_queued.max(1));
        tokio::spawn(pump(client.clone(), cfg.clone(), rx, |mut c, items| async move {
            let r = c.settle(pb::SettleBatch { requests: items }).await?;
            Ok(r.into_inner().results)
        }));
        let (release, rx) = mpsc::channel(cfg.max_queued.max(1));
        tokio::spawn(pump(client, cfg, rx, |mut c, items| async move {
            let r = c.release(pb::ReleaseBatch { hold_ids: items }).await?;
            Ok(r.into_inner().results)
        }));
        Coalescer { reserve, settle, release }
    }

    pub async fn reserve(&self, req: pb::ReserveRequest) -> Result<pb::ReserveResult, Status> {
        let (tx, rx) = oneshot::channel();
        self.reserve.send((req, tx)).await.map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }

    pub async fn settle(&self, req: pb::SettleRequest) -> Result<pb::SettleResult, Status> {
        let (tx, rx) = oneshot::channel();
        self.settle.send((req, tx)).await.map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }

    pub async fn release(&self, hold: pb::HoldId) -> Result<pb::ReleaseResult, Status> {
        let (tx, rx) = oneshot::channel();
        self.release.send((hold, tx)).await.map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }
}

type Ledger = tollgate_proto::v1::ledger_service_client::LedgerServiceClient<tonic::transport::Channel>;

/// Drains `rx` into batches of at most `max_batch` and sends each with `call`,
/// at most `max_inflight` at a time, spreading batches over the servers.
async fn pump<Req, Res, F, Fut>(
    client: LedgerClient,
    cfg: CoalescerConfig,
    mut rx: mpsc::Receiver<(Req, Reply<Res>)>,
    call: F,
) where
    Req: Send + 'static,
    Res: Send + 'static,
    F: Fn(Ledger, Vec<Req>) -> Fut + Send + Sync + Copy + 'static,
    Fut: std::future::Future<Output = Result<Vec<Res>, Status>> + Send,
{
    let slots = Arc::new(Semaphore::new(cfg.max_inflight.max(1)));
    let mut next = 0usize;
    loop {
        // Take a slot first, so that while all calls are busy the queue fills
        // and the next batch carries everything that arrived meanwhile.
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let Some(first) = rx.recv().await else { return };
        let mut batch = vec![first];
        while batch.len() < cfg.max_batch.max(1) {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let ledger = client.at(next);
        next = next.wrapping_add(1);
        tokio::spawn(async move {
            let _permit = permit;
            let (items, replies): (Vec<Req>, Vec<Reply<Res>>) = batch.into_iter().unzip();
            let n = items.len();
            match tokio::time::timeout(Duration::from_secs(30), call(ledger, items)).await {
                Ok(Ok(results)) if results.len() == n => {
                    for (reply, r) in replies.into_iter().zip(results) {
                        let _ = reply.send(Ok(r));
                    }
                }
                Ok(Ok(results)) => {
                    let s = Status::internal(format!("ledger answered {} results for {n} items", results.len()));
                    for reply in replies {
                        let _ = reply.send(Err(s.clone()));
                    }
                }
                Ok(Err(s)) => {
                    for reply in replies {
                        let _ = reply.send(Err(s.clone()));
                    }
                }
                Err(_) => {
                    let s = Status::deadline_exceeded("ledger call timed out; the outcome is unknown");
                    for reply in replies {
                        let _ = reply.send(Err(s.clone()));
                    }
                }
            }
        });
    }
}
