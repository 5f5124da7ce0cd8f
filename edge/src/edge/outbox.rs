//! The settle outbox: every settlement and release is written to sled and
//! flushed to disk before it is sent, removed when the ledger acknowledges
//! it, and replayed after a restart. Writes are group-committed (one fsync
//! for everything that arrived meanwhile); sends go through the
//! [`Ledger`] (the edge runs it over the `Coalescer`, so a backlog drains
//! in batched calls).
//!
//! Replays are safe: the ledger applies a settle exactly once and answers a
//! repeat with the first charge, and a release is idempotent.

use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use prost::Message;
use tokio::sync::{mpsc, oneshot, Notify};
use tollgate_proto::v1 as pb;

use tollgate_types::backoff::{self, BackoffBuilder};
use tollgate_types::money::NanoUsd;

use super::fail_open::FailOpen;
use super::ledger::Ledger;
use super::metrics::Metrics;

/// One durable record, keyed by its hold id.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Settle(Box<pb::SettleRequest>),
    Release(pb::HoldId),
}

const SETTLE: u8 = 1;
const RELEASE: u8 = 2;
/// Most records one drain pass sends.
const PASS: usize = 4096;
/// Most records one group commit writes.
const COMMIT: usize = 1024;
/// How long a pass waits after a new leased settle, so that those arriving
/// meanwhile go in the same batched call (one Raft entry): nothing waits on
/// them (the lease already counts their reservation). A hold's settle or
/// release goes at once: its hold keeps budget room until it lands.
const LINGER: Duration = Duration::from_millis(100);

impl Record {
    /// May wait for others to share its call (see [`LINGER`]).
    fn lingers(&self) -> bool {
        matches!(self, Record::Settle(s) if !s.lease_holder.is_empty())
    }

    fn hold(&self) -> Vec<u8> {
        match self {
            Record::Settle(s) => s.hold_id.as_ref().map(|h| h.id.clone()).unwrap_or_default(),
            Record::Release(h) => h.id.clone(),
        }
    }

    fn encode(&self) -> Vec<u8> {
        let (tag, body) = match self {
            Record::Settle(s) => (SETTLE, s.encode_to_vec()),
            Record::Release(h) => (RELEASE, h.encode_to_vec()),
        };
        let mut out = Vec::with_capacity(body.len() + 1);
        out.push(tag);
        out.extend_from_slice(&body);
        out
    }

    fn decode(bytes: &[u8]) -> Option<Record> {
        let (tag, body) = bytes.split_first()?;
        match *tag {
            SETTLE => pb::SettleRequest::decode(body).ok().map(|s| Record::Settle(Box::new(s))),
            RELEASE => pb::HoldId::decode(body).ok().map(Record::Release),
            _ => None,
        }
    }
}

type Write = (Record, oneshot::Sender<Result<(), String>>);

/// A handle to the outbox; cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    tree: sled::Tree,
    writes: mpsc::Sender<Write>,
    wake: Arc<Notify>,
    /// Woken for records that may linger.
    lazy: Arc<Notify>,
    /// Records written and not yet acknowledged (`tree.len()` walks the tree).
    depth: Arc<AtomicI64>,
    metrics: Arc<Metrics>,
    fail_open: Arc<FailOpen>,
}

impl Outbox {
    /// Opens (or creates) the outbox under `dir` and starts its writer and
    /// its drain task; records left by an earlier run are sent at once.
    /// Also returns the fail-open allowance (`allowance`), which counts the
    /// fail-open charges still waiting here until the ledger acknowledges them.
    pub fn open(
        dir: &Path,
        ledger: Arc<dyn Ledger>,
        metrics: Arc<Metrics>,
        allowance: NanoUsd,
    ) -> anyhow::Result<(Outbox, Arc<FailOpen>)> {
        let db = sled::Config::new().path(dir).flush_every_ms(Some(1000)).open().map_err(|e| {
            anyhow::anyhow!("opening the settle outbox in {} (is another edge using it?): {e}", dir.display())
        })?;
        let tree = db.open_tree("outbox")?;
        if !tree.is_empty() {
            tracing::info!("outbox: {} records from an earlier run will be replayed", tree.len());
        }
        let waiting: u64 = tree
            .iter()
            .values()
            .filter_map(|v| match Record::decode(&v.ok()?)? {
                Record::Settle(s) if !s.fail_open_key_id.is_empty() && s.lease_holder.is_empty() => {
                    Some(s.cost_nano_usd)
                }
                _ => None,
            })
            .fold(0, u64::saturating_add);
        let fail_open = Arc::new(FailOpen::new(allowance, waiting));
        let (writes, rx) = mpsc::channel(COMMIT * 4);
        let wake = Arc::new(Notify::new());
        let depth = Arc::new(AtomicI64::new(tree.len() as i64));
        let lazy = Arc::new(Notify::new());
        let outbox = Outbox { tree, writes, wake, lazy, depth, metrics, fail_open: fail_open.clone() };
        tokio::spawn(writer(db, outbox.clone(), rx));
        tokio::spawn(drain(outbox.clone(), ledger));
        outbox.wake.notify_one();
        Ok((outbox, fail_open))
    }

    /// Writes `record` durably; returns once it is on disk. Sending to the
    /// ledger happens after, in the background.
    pub async fn push(&self, record: Record) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.writes.send((record, tx)).await.map_err(|_| "the outbox is closed".to_string())?;
        rx.await.map_err(|_| "the outbox writer stopped".to_string())?
    }

    /// Records not yet acknowledged by the ledger.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed).max(0) as usize
    }

    /// Waits until everything is acknowledged or `within` passes; returns
    /// the records still pending (they stay on disk for the next start).
    pub async fn flush(&self, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        self.wake.notify_one();
        while self.depth() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.depth()
    }

    fn remove(&self, key: &[u8]) {
        match self.tree.remove(key) {
            Ok(Some(_)) => {
                self.depth.fetch_sub(1, Ordering::Relaxed);
            }
            Ok(None) => {}
            Err(e) => tracing::error!("outbox: removing an acknowledged record: {e}"),
        }
    }
}

/// Group commit: write everything queued, one flush, then answer all.
async fn writer(db: sled::Db, outbox: Outbox, mut rx: mpsc::Receiver<Write>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < COMMIT {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let mut result = Ok(());
        let mut added = 0i64;
        for (record, _) in &batch {
            match outbox.tree.insert(record.hold(), record.encode()) {
                Ok(None) => added += 1,
                Ok(Some(_)) => {}
                Err(e) => result = Err(format!("writing the outbox: {e}")),
            }
        }
        if result.is_ok() {
            if let Err(e) = db.flush_async().await {
                result = Err(format!("flushing the outbox: {e}"));
            }
        }
        outbox.depth.fetch_add(added, Ordering::Relaxed);
        if let Err(e) = &result {
            tracing::error!("outbox: {e}");
        }
        let urgent = batch.iter().any(|(r, _)| !r.lingers());
        for (_, reply) in batch {
            let _ = reply.send(result.clone());
        }
        if urgent {
            outbox.wake.notify_one();
        } else {
            outbox.lazy.notify_one();
        }
    }
}

enum Sent {
    /// Acknowledged (or refused for good): remove it.
    Done,
    /// Not known to be applied: keep it and try again later.
    Retry,
}

async fn send(c: &dyn Ledger, outbox: &Outbox, record: Record) -> Sent {
    match record {
        Record::Settle(s) => {
            let fail_open = !s.fail_open_key_id.is_empty() && s.lease_holder.is_empty();
            let fail_open_cost = fail_open.then_some(NanoUsd(s.cost_nano_usd));
            let sent = settle(c, outbox, *s).await;
            if let (Sent::Done, Some(cost)) = (&sent, fail_open_cost) {
                // The ledger knows this spend now.
                outbox.fail_open.give_back(cost);
            }
            sent
        }
        Record::Release(h) => match c.release(h).await {
            Ok(pb::ReleaseResult { error: None }) => Sent::Done,
            Ok(pb::ReleaseResult { error: Some(e) }) => {
                tracing::warn!("outbox: the ledger refused a release ({}): {}", e.code, e.message);
                outbox.metrics.outbox_dropped("release");
                Sent::Done
            }
            Err(s) => {
                tracing::debug!("outbox: release not acknowledged: {}", s.message());
                Sent::Retry
            }
        },
    }
}

async fn settle(c: &dyn Ledger, outbox: &Outbox, s: pb::SettleRequest) -> Sent {
    match c.settle(s).await {
        Ok(pb::SettleResult { outcome: Some(pb::settle_result::Outcome::Settled(_)) }) => Sent::Done,
        Ok(pb::SettleResult { outcome: Some(pb::settle_result::Outcome::Error(e)) }) => {
            tracing::error!("outbox: the ledger refused a settle for good ({}): {}", e.code, e.message);
            outbox.metrics.outbox_dropped("settle");
            Sent::Done
        }
        Ok(pb::SettleResult { outcome: None }) => Sent::Retry,
        Err(s) => {
            tracing::debug!("outbox: settle not acknowledged: {}", s.message());
            Sent::Retry
        }
    }
}

/// Sends what is on disk, pass after pass; backs off while the ledger does
/// not acknowledge, and sleeps until woken when there is nothing to send.
async fn drain(outbox: Outbox, ledger: Arc<dyn Ledger>) {
    // While the ledger does not acknowledge: 100 ms, doubling to 5 s,
    // jittered (every edge's outbox retries when the ledger comes back).
    let pauses = || backoff::pauses(Duration::from_millis(100), Duration::from_secs(5)).build();
    let mut backoff = pauses();
    let mut pause = None;
    loop {
        match pause {
            None => tokio::select! {
                _ = outbox.wake.notified() => {}
                _ = outbox.lazy.notified() => tokio::select! {
                    _ = outbox.wake.notified() => {}
                    _ = tokio::time::sleep(LINGER) => {}
                },
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            },
            Some(p) => tokio::time::sleep(p).await,
        }
        let mut pass = FuturesUnordered::new();
        for item in outbox.tree.iter().take(PASS) {
            let Ok((key, value)) = item else { continue };
            match Record::decode(&value) {
                Some(record) => {
                    let (c, o) = (&*ledger, &outbox);
                    pass.push(async move { (key, send(c, o, record).await) });
                }
                None => {
                    tracing::error!("outbox: dropping an undecodable record");
                    outbox.remove(&key);
                }
            }
        }
        let (mut sent, mut failed) = (0usize, 0usize);
        while let Some((key, outcome)) = pass.next().await {
            match outcome {
                Sent::Done => {
                    outbox.remove(&key);
                    sent += 1;
                }
                Sent::Retry => failed += 1,
            }
        }
        pause = if failed > 0 {
            Some(backoff.next().unwrap_or(Duration::from_secs(5)))
        } else {
            backoff = pauses();
            None
        };
        if failed == 0 && sent == PASS {
            // More may be waiting beyond a full pass: go again at once.
            // (Records written during the pass woke the drain themselves,
            // at once or after the linger.)
            outbox.wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let s = Record::Settle(Box::new(pb::SettleRequest {
            hold_id: Some(pb::HoldId { id: vec![7; 16] }),
            cost_nano_usd: 123,
            usage: Some(pb::Usage { input_tokens: 5, output_tokens: 6, ..Default::default() }),
            estimated: true,
            session_id: "s1".into(),
            fail_open_key_id: "key_1".into(),
            model: "m".into(),
            ttl_ms: 600_000,
            agent_id: "a1".into(),
            parent_agent_id: "a0".into(),
            request_class: "main".into(),
            prompt_id: "p1".into(),
            lease_holder: "0123456789abcdef".into(),
            reserved_nano_usd: 1_500,
        }));
        assert_eq!(Record::decode(&s.encode()), Some(s.clone()));
        assert_eq!(s.hold(), vec![7; 16]);
        let r = Record::Release(pb::HoldId { id: vec![1; 16] });
        assert_eq!(Record::decode(&r.encode()), Some(r));
        assert_eq!(Record::decode(&[9, 1, 2]), None);
        assert_eq!(Record::decode(&[]), None);
    }
}
