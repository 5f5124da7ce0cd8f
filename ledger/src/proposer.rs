//! Group commit: concurrent requests are gathered into few Raft entries.
//!
//! Callers submit command lists; one batcher task drains the queue into a
//! single [`Batch`] (up to `max_batch_cmds`) whenever a proposal slot is free,
//! so under load each entry carries many commands and the fsync per entry is
//! shared. On a follower the batch is forwarded to the leader, which stamps
//! and proposes it. A forward gives its proposal slot back as soon as it has
//! a forward slot of its own (`max_forwards`): the leader batches again, and
//! a follower that held a slot for a whole forward and commit (several WAN
//! round trips across regions) would make every later request wait for it.
//! Every queue here is bounded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::error::{ClientWriteError, RaftError};
use openraft::ServerState;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tollgate_proto::v1::raft_service_client::RaftServiceClient;
use tollgate_proto::v1::RaftPayload;
use tonic::transport::Channel;

use crate::metrics::LedgerMetrics;
use crate::raft_types::NodeId;
use crate::state::{Batch, Command, Outcome};
use crate::store::{metrics_now, Raft};

/// Why a proposal has no outcome. `NoLeader`, `NotMember`, `Overloaded` and
/// `ShuttingDown` mean nothing was proposed: retry, here or elsewhere.
/// `Unknown` means the commands may or may not be applied: an edge releases
/// the hold, an operator checks before repeating a write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ProposeError {
    #[error("no ledger leader is known yet (an election may be under way); retry shortly")]
    NoLeader,
    #[error("node {0} is not part of an initialized cluster")]
    NotMember(NodeId),
    #[error("the ledger is overloaded: {0} commands are already queued")]
    Overloaded(usize),
    #[error("the outcome is unknown ({0}); the commands may or may not have been applied")]
    Unknown(String),
    #[error("this ledger node is shutting down")]
    ShuttingDown,
}

/// Limits of the batcher.
#[derive(Debug, Clone)]
pub struct ProposerConfig {
    /// Most commands in one log entry.
    pub max_batch_cmds: usize,
    /// Most proposals (log entries) in flight at once from this node.
    pub max_inflight: usize,
    /// Most batches a follower has forwarded to the leader and awaits.
    pub max_forwards: usize,
    /// Most commands waiting for a batch; beyond this callers get `Overloaded`.
    pub max_queued: usize,
    /// How long a proposal waits for a leader to be elected.
    pub leader_wait: Duration,
    /// How long a proposal waits to commit before its outcome is "unknown".
    pub commit_timeout: Duration,
}

impl Default for ProposerConfig {
    fn default() -> Self {
        ProposerConfig {
            max_batch_cmds: 2048,
            max_inflight: 2,
            max_forwards: 32,
            max_queued: 100_000,
            leader_wait: Duration::from_secs(3),
            commit_timeout: Duration::from_secs(5),
        }
    }
}

/// What a proposal produced: the entry's index and one outcome per command.
pub type Proposed = Result<(u64, Vec<Outcome>), ProposeError>;

struct Pending {
    cmds: Vec<Command>,
    /// The admin token that authorized these commands, if they are admin commands.
    admin_token: Option<String>,
    /// How many commands (and so outcomes) this submission has.
    n: usize,
    /// Came from another node already: never forward again (no ping-pong).
    forwarded: bool,
    reply: oneshot::Sender<Proposed>,
}

/// The wire form of a forwarded proposal. Admin commands travel with the
/// admin token their caller presented, so the leader checks it again rather
/// than trusting whoever can reach its Raft port.
#[derive(Serialize, Deserialize)]
pub struct ForwardRequest {
    pub cmds: Vec<Command>,
    pub admin_token: Option<String>,
}

#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::Sender<Pending>,
    queued: Arc<std::sync::atomic::AtomicUsize>,
    max_queued: usize,
    metrics: Arc<LedgerMetrics>,
}

struct Ctx {
    id: NodeId,
    raft: Raft,
    cfg: ProposerConfig,
    metrics: Arc<LedgerMetrics>,
    peers: Mutex<HashMap<String, RaftServiceClient<Channel>>>,
    tls: Option<Arc<tollgate_tls::ClusterTls>>,
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Proposer {
    pub fn start(
        id: NodeId,
        raft: Raft,
        cfg: ProposerConfig,
        metrics: Arc<LedgerMetrics>,
        tls: Option<Arc<tollgate_tls::ClusterTls>>,
    ) -> Proposer {
        // The channel counts submissions; `queued` counts commands, the real bound.
        let (tx, rx) = mpsc::channel(cfg.max_queued.max(1));
        let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let max_queued = cfg.max_queued;
        let ctx = Arc::new(Ctx { id, raft, cfg, metrics: metrics.clone(), peers: Mutex::new(HashMap::new()), tls });
        tokio::spawn(run(ctx, rx, queued.clone()));
        Proposer { tx, queued, max_queued, metrics }
    }

    /// Commands waiting for a batch.
    pub fn queued(&self) -> usize {
        self.queued.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Proposes `cmds` (forwarding to the leader when needed).
    pub async fn submit(&self, cmds: Vec<Command>) -> Proposed {
        self.submit_inner(cmds, None, false).await
    }

    /// Proposes admin commands authorized by `token` (checked again by the
    /// leader if they are forwarded).
    pub async fn submit_admin(&self, cmds: Vec<Command>, token: String) -> Proposed {
        self.submit_inner(cmds, Some(token), false).await
    }

    /// Proposes commands another node forwarded here; never forwards again.
    pub async fn submit_forwarded(&self, cmds: Vec<Command>) -> Proposed {
        self.submit_inner(cmds, None, true).await
    }

    async fn submit_inner(&self, cmds: Vec<Command>, admin_token: Option<String>, forwarded: bool) -> Proposed {
        use std::sync::atomic::Ordering;
        if cmds.is_empty() {
            return Ok((0, Vec::new()));
        }
        let n = cmds.len();
        let before = self.queued.fetch_add(n, Ordering::AcqRel);
        if before + n > self.max_queued {
            self.queued.fetch_sub(n, Ordering::AcqRel);
            self.metrics.overloaded();
            return Err(ProposeError::Overloaded(before));
        }
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Pending { cmds, admin_token, n, forwarded, reply }).await.is_err() {
            self.queued.fetch_sub(n, Ordering::AcqRel);
            return Err(ProposeError::ShuttingDown);
        }
        // Queued and then dropped: it may have reached the log.
        rx.await.unwrap_or_else(|_| Err(ProposeError::Unknown("the node stopped while proposing".to_string())))
    }
}

async fn run(ctx: Arc<Ctx>, mut rx: mpsc::Receiver<Pending>, queued: Arc<std::sync::atomic::AtomicUsize>) {
    let slots = Arc::new(Semaphore::new(ctx.cfg.max_inflight.max(1)));
    let forwards = Arc::new(Semaphore::new(ctx.cfg.max_forwards.max(1)));
    loop {
        // Take a slot first: while all are busy, submissions pile up in the
        // queue and the next batch carries all of them.
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let Some(first) = rx.recv().await else { return };
        let mut n = first.n;
        let mut batch = vec![first];
        while n < ctx.cfg.max_batch_cmds {
            match rx.try_recv() {
                Ok(p) => {
                    n += p.n;
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        queued.fetch_sub(n, std::sync::atomic::Ordering::AcqRel);
        // A caller that gave up (deadline passed, connection gone) has been
        // told nothing was decided; proposing its commands now would apply
        // them behind its back, long after an edge released the hold.
        batch.retain(|p| !p.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let (ctx, forwards) = (ctx.clone(), forwards.clone());
        tokio::spawn(async move {
            propose_group(&ctx, batch, permit, forwards).await;
        });
    }
}

/// Hands each pending its slice of `result` (outcomes in submission order).
fn distribute(group: Vec<Pending>, result: Proposed) {
    match result {
        Ok((index, outcomes)) => {
            let mut it = outcomes.into_iter();
            for p in group {
                let part: Vec<Outcome> = it.by_ref().take(p.n).collect();
                let _ = p.reply.send(Ok((index, part)));
            }
        }
        Err(e) => {
            for p in group {
                let _ = p.reply.send(Err(e.clone()));
            }
        }
    }
}

/// Moves every pending's commands, in order, into one list.
fn concat(group: &mut [Pending]) -> Vec<Command> {
    let mut cmds = Vec::with_capacity(group.iter().map(|p| p.n).sum());
    for p in group.iter_mut() {
        cmds.append(&mut p.cmds);
    }
    cmds
}

/// On the leader, proposes the whole group as one entry (local and
/// forwarded commands alike), holding its proposal slot until the entry is
/// applied. On a follower, trades the slot for a forward slot, forwards the
/// commands that may move and fails those that were already forwarded here
/// (no ping-pong).
async fn propose_group(
    ctx: &Ctx,
    mut group: Vec<Pending>,
    slot: tokio::sync::OwnedSemaphorePermit,
    forwards: Arc<Semaphore>,
) {
    let (leader_id, addr) = match leader(ctx).await {
        Ok(l) => l,
        Err(e) => return distribute(group, Err(e)),
    };
    if leader_id == ctx.id {
        let cmds = concat(&mut group);
        let result = propose_local(ctx, cmds).await;
        drop(slot);
        return distribute(group, result);
    }
    // While every forward slot is busy the proposal slot stays taken, so
    // the batcher keeps gathering what arrives into the next batch.
    let Ok(_forward) = forwards.acquire_owned().await else {
        return distribute(group, Err(ProposeError::ShuttingDown));
    };
    drop(slot);
    let (fwd, local): (Vec<_>, Vec<_>) = group.into_iter().partition(|p| p.forwarded);
    if !fwd.is_empty() {
        tracing::debug!(leader = leader_id, n = fwd.len(), "forwarded proposals reached a node that does not lead");
    }
    distribute(fwd, Err(ProposeError::NoLeader));
    // Admin submissions travel alone, each with its own token.
    let (admin, mut plain): (Vec<_>, Vec<_>) = local.into_iter().partition(|p| p.admin_token.is_some());
    for mut p in admin {
        let token = p.admin_token.take();
        let cmds = std::mem::take(&mut p.cmds);
        let result = forward_while_leading(ctx, leader_id, &addr, cmds, token).await;
        count_forward(ctx, &result);
        distribute(vec![p], result);
    }
    if !plain.is_empty() {
        let cmds = concat(&mut plain);
        let result = forward_while_leading(ctx, leader_id, &addr, cmds, None).await;
        count_forward(ctx, &result);
        distribute(plain, result);
    }
}

fn count_forward(ctx: &Ctx, result: &Proposed) {
    ctx.metrics.forward(match result {
        Ok(_) => "ok",
        Err(ProposeError::NoLeader) => "no_leader",
        Err(ProposeError::Unknown(_)) => "unknown",
        Err(_) => "refused",
    });
}

/// Forwards to `leader_id`, giving up as soon as this node sees another
/// leader: a leader cut off from its quorum can hold a forwarded proposal
/// until the RPC times out, and with it this proposer's slot, while a new
/// leader is already serving. The commands may still have reached the old
/// leader's log, so the outcome is unknown (an edge releases the hold).
async fn forward_while_leading(
    ctx: &Ctx,
    leader_id: NodeId,
    addr: &str,
    cmds: Vec<Command>,
    admin_token: Option<String>,
) -> Proposed {
    let wait = ctx.raft.wait(Some(Duration::from_secs(3600)));
    let changed =
        wait.metrics(|m| m.current_leader != Some(leader_id) || m.state == ServerState::Shutdown, "the leader changed");
    tokio::select! {
        r = forward(ctx, addr, cmds, admin_token) => r,
        _ = changed => Err(ProposeError::Unknown(format!(
            "node {leader_id} stopped leading while a forwarded proposal was in flight"
        ))),
    }
}

/// Who leads and at which address, as this node sees it, waiting a bounded
/// time for an election. A node that has just joined can learn the
/// leader's vote before the log entry that names the members' addresses:
/// it waits for that too, rather than refusing requests in between.
async fn leader(ctx: &Ctx) -> Result<(NodeId, String), ProposeError> {
    let reachable = |m: &crate::raft_types::RaftMetrics| {
        m.current_leader.is_some_and(|l| m.membership_config.membership().get_node(&l).is_some())
    };
    let found = ctx
        .raft
        .wait(Some(ctx.cfg.leader_wait))
        .metrics(|m| reachable(m) || m.state == ServerState::Shutdown, "a leader and its address are known")
        .await;
    let m = match found {
        Ok(m) => m,
        Err(_) => {
            let m = metrics_now(&ctx.raft);
            if m.membership_config.membership().voter_ids().next().is_none() {
                return Err(ProposeError::NotMember(ctx.id));
            }
            tracing::debug!(state = ?m.state, "no leader known within {:?}", ctx.cfg.leader_wait);
            return Err(ProposeError::NoLeader);
        }
    };
    if m.state == ServerState::Shutdown {
        return Err(ProposeError::ShuttingDown);
    }
    let id = m.current_leader.ok_or(ProposeError::NoLeader)?;
    let addr = m.membership_config.membership().get_node(&id).map(|n| n.addr.clone()).ok_or(ProposeError::NoLeader)?;
    Ok((id, addr))
}

async fn propose_local(ctx: &Ctx, cmds: Vec<Command>) -> Proposed {
    let batch = Batch { time_ms: now_ms(), cmds };
    let started = std::time::Instant::now();
    let n = batch.cmds.len();
    // Bounded: a leader cut off from its quorum must not hold a proposal
    // slot forever. The entry may still commit later, so the outcome is unknown.
    let res = match tokio::time::timeout(ctx.cfg.commit_timeout, ctx.raft.client_write(batch)).await {
        Ok(res) => res,
        Err(_) => {
            ctx.metrics.proposal("unknown", started.elapsed(), &[]);
            return Err(ProposeError::Unknown(format!("not committed within {:?}", ctx.cfg.commit_timeout)));
        }
    };
    let took = started.elapsed();
    tracing::debug!(cmds = n, commit_us = took.as_micros() as u64, "proposed");
    let result = match res {
        Ok(resp) => Ok((resp.log_id.index, resp.data.0)),
        // Lost leadership before proposing: nothing was applied.
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            tracing::debug!(leader = ?f.leader_id, "lost leadership before proposing");
            Err(ProposeError::NoLeader)
        }
        Err(RaftError::APIError(e)) => Err(ProposeError::Unknown(e.to_string())),
        // Raft stopped with the entry possibly appended: it may still commit.
        Err(RaftError::Fatal(e)) => Err(ProposeError::Unknown(format!("raft stopped: {e}"))),
    };
    match &result {
        Ok((_, outcomes)) => ctx.metrics.proposal("committed", took, outcomes),
        Err(ProposeError::NoLeader) => ctx.metrics.proposal("no_leader", took, &[]),
        Err(_) => ctx.metrics.proposal("unknown", took, &[]),
    }
    result
}

async fn forward(ctx: &Ctx, addr: &str, cmds: Vec<Command>, admin_token: Option<String>) -> Proposed {
    let client = {
        let mut peers = ctx.peers.lock().unwrap_or_else(|p| p.into_inner());
        match peers.get(addr) {
            Some(c) => c.clone(),
            None => {
                let c = crate::network::raft_client(addr, ctx.tls.clone())
                    .map_err(|e| ProposeError::Unknown(e.to_string()))?;
                peers.insert(addr.to_string(), c.clone());
                c
            }
        }
    };
    let data = crate::codec::encode(&ForwardRequest { cmds, admin_token })
        .map_err(|e| ProposeError::Unknown(e.to_string()))?;
    let mut req = tonic::Request::new(RaftPayload { data });
    req.set_timeout(Duration::from_secs(10));
    let mut client = client;
    let resp = client.propose(req).await.map_err(|s| {
        if tollgate_tls::never_connected(&s) {
            // Never connected (the leader is down): certainly not applied,
            // so the caller may retry once a new leader is elected.
            tracing::debug!("forward to leader at {addr}: {}", s.message());
            ProposeError::NoLeader
        } else {
            ProposeError::Unknown(format!("forward to leader at {addr}: {}", s.message()))
        }
    })?;
    crate::codec::decode::<Proposed>(&resp.into_inner().data)
        .map_err(|e| ProposeError::Unknown(format!("bad answer from leader at {addr}: {e}")))?
}
