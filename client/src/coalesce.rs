//! Client-side batching for the ledger: many concurrent single Reserve /
//! Settle / Release calls become few batched gRPC calls. Each caller still
//! awaits its own result. This is how an edge talks to the ledger: the
//! per-call gRPC cost is paid once per batch, not once per request.
//!
//! Batches go to the first server of the client's list (an edge puts its
//! own region's node first): spreading them over every node would send two
//! of three across the WAN for nothing. A call that fails, or that has
//! waited [`STUCK`] without an answer, moves later batches to the next
//! server; they return to the first after [`RETURN_AFTER`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
        CoalescerConfig { max_batch: 256, max_inflight: 16, max_queued: 65_536 }
    }
}

/// A call unanswered this long means its server is in trouble (a commit
/// across regions takes a few hundred ms; an election a few seconds).
pub const STUCK: Duration = Duration::from_secs(2);
/// How long batches stay away from the first server after leaving it.
pub const RETURN_AFTER: Duration = Duration::from_secs(30);

/// Which server batches go to, shared by the calls in flight.
struct Route {
    /// Index into the server list (modulo its length).
    current: usize,
    moved_at: Instant,
    /// Calls in flight to `current`: id -> when sent.
    pending: BTreeMap<u64, Instant>,
    next_id: u64,
}

impl Route {
    fn new() -> Route {
        Route { current: 0, moved_at: Instant::now(), pending: BTreeMap::new(), next_id: 0 }
    }

    /// Where the next batch goes, and its call's id.
    fn pick(&mut self, servers: usize, now: Instant) -> (usize, u64) {
        let stuck = self.pending.values().next().is_some_and(|sent| now.duration_since(*sent) >= STUCK);
        if stuck {
            self.move_on(self.current, now);
        } else if !self.current.is_multiple_of(servers.max(1)) && now.duration_since(self.moved_at) >= RETURN_AFTER {
            self.current = 0;
            self.moved_at = now;
            self.pending.clear();
        }
        self.next_id += 1;
        self.pending.insert(self.next_id, now);
        (self.current, self.next_id)
    }

    /// The call `id` to `server` ended; `failed` moves later batches on.
    fn done(&mut self, server: usize, id: u64, failed: bool, now: Instant) {
        if server == self.current {
            self.pending.remove(&id);
            if failed {
                self.move_on(server, now);
            }
        }
    }

    fn move_on(&mut self, from: usize, now: Instant) {
        if from == self.current {
            self.current = self.current.wrapping_add(1);
            self.moved_at = now;
            self.pending.clear();
        }
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
/// at most `max_inflight` at a time, to the server the [`Route`] picks.
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
    let route = Arc::new(Mutex::new(Route::new()));
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
        let (server, id) = route.lock().unwrap_or_else(|p| p.into_inner()).pick(client.len(), Instant::now());
        let ledger = client.at(server);
        let route = route.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let (items, replies): (Vec<Req>, Vec<Reply<Res>>) = batch.into_iter().unzip();
            let n = items.len();
            let result = tokio::time::timeout(Duration::from_secs(30), call(ledger, items)).await;
            let failed = !matches!(result, Ok(Ok(_)));
            route.lock().unwrap_or_else(|p| p.into_inner()).done(server, id, failed, Instant::now());
            match result {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_stay_on_the_first_server_while_it_answers() {
        let (mut r, t0) = (Route::new(), Instant::now());
        for i in 0..5 {
            let (server, id) = r.pick(3, t0 + Duration::from_millis(i * 100));
            assert_eq!(server, 0);
            r.done(server, id, false, t0 + Duration::from_millis(i * 100 + 50));
        }
    }

    #[test]
    fn a_failed_call_moves_on_once_and_the_first_server_is_tried_again_later() {
        let (mut r, t0) = (Route::new(), Instant::now());
        let (a, ida) = r.pick(3, t0);
        let (b, idb) = r.pick(3, t0);
        r.done(a, ida, true, t0);
        // The second failure of the same server does not skip a healthy one.
        r.done(b, idb, true, t0);
        let mut answered = |at: Duration| {
            let (server, id) = r.pick(3, t0 + at);
            r.done(server, id, false, t0 + at);
            server
        };
        assert_eq!(answered(Duration::from_secs(1)), 1);
        assert_eq!(answered(RETURN_AFTER - Duration::from_millis(1)), 1);
        assert_eq!(answered(RETURN_AFTER), 0);
    }

    #[test]
    fn a_call_unanswered_for_stuck_moves_later_batches_on() {
        let (mut r, t0) = (Route::new(), Instant::now());
        let (_, _hung) = r.pick(3, t0);
        assert_eq!(r.pick(3, t0 + STUCK - Duration::from_millis(1)).0, 0);
        assert_eq!(r.pick(3, t0 + STUCK).0, 1);
        // Servers wrap around.
        assert_eq!(r.pick(3, t0 + 2 * STUCK).0, 2);
        assert_eq!(r.pick(3, t0 + 3 * STUCK).0 % 3, 0);
    }
}
