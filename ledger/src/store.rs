//! Raft storage on sled: the log and vote ([`LogStore`]) and the state
//! machine with its snapshots ([`StateMachineStore`]).
//!
//! Durability: sled only reaches disk on `flush`, so `save_vote` and
//! `append` flush before they report success (the append callback fires
//! after the flush, never before). The state machine lives in memory; its
//! snapshot is kept in sled, and on restart the state is the last snapshot
//! plus the committed log entries openraft re-applies after it.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, RwLock};

use futures::TryStreamExt;
use openraft::storage::{EntryResponder, IOFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{EntryPayload, LogState, RaftLogReader, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::metrics::LedgerMetrics;
use crate::raft_types::*;
use crate::state::LedgerState;

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"last_purged";
const KEY_SNAPSHOT_META: &[u8] = b"snapshot_meta";
const KEY_SNAPSHOT_DATA: &[u8] = b"snapshot_data";

/// A storage failure as openraft takes it: an `io::Error` naming what was
/// being done (`what`) and why.
fn io_err(what: &'static str, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{what}: {e}"))
}

fn read_json<T: for<'de> Deserialize<'de>>(tree: &sled::Tree, key: &[u8], what: &'static str) -> io::Result<Option<T>> {
    match tree.get(key).map_err(|e| io_err(what, e))? {
        None => Ok(None),
        Some(v) => serde_json::from_slice(&v).map(Some).map_err(|e| io_err(what, e)),
    }
}

fn to_json<T: Serialize>(v: &T, what: &'static str) -> io::Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| io_err(what, e))
}

/// sled's log segment size (a power of two).
pub const SEGMENT_BYTES: usize = 8 * 1024 * 1024;

/// Opens (or creates) the ledger's sled database under `dir`.
pub fn open_db(dir: &Path) -> Result<sled::Db, sled::Error> {
    sled::Config::new()
        .path(dir)
        // Values (and the leaf pages holding them) above a quarter of a
        // segment become separate blob files, each written and synced on its
        // own; batched entries are tens of KB, so give them room.
        .segment_size(SEGMENT_BYTES)
        // Durability comes from explicit flushes; the background flusher
        // only adds writes.
        .flush_every_ms(None)
        .open()
}

/// The ledger's Raft node: openraft over these stores.
pub type Raft = openraft::Raft<TypeConfig, StateMachineStore>;

/// Raft's metrics as they are now (role, leader, term, membership, indexes).
pub fn metrics_now(raft: &Raft) -> RaftMetrics {
    use openraft::async_runtime::watch::WatchReceiver;
    raft.metrics().borrow_watched().clone()
}

/// The Raft log and vote, in two sled trees.
#[derive(Clone)]
pub struct LogStore {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    metrics: Option<Arc<LedgerMetrics>>,
}

impl LogStore {
    pub fn new(db: &sled::Db) -> Result<Self, sled::Error> {
        Ok(LogStore { db: db.clone(), log: db.open_tree("log")?, meta: db.open_tree("meta")?, metrics: None })
    }

    /// Reports each append's write-and-fsync time to `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<LedgerMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    async fn flush(&self, what: &'static str) -> io::Result<()> {
        self.db.flush_async().await.map_err(|e| io_err(what, e))?;
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<Entry>> {
        let start = match range.start_bound() {
            Bound::Included(i) => Bound::Included(i.to_be_bytes()),
            Bound::Excluded(i) => Bound::Excluded(i.to_be_bytes()),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Bound::Included(i.to_be_bytes()),
            Bound::Excluded(i) => Bound::Excluded(i.to_be_bytes()),
            Bound::Unbounded => Bound::Unbounded,
        };
        // Purged entries may still be on disk for a moment (they are deleted
        // in the background, see `purge`): never return them.
        let purged: Option<LogId> = read_json(&self.meta, KEY_PURGED, "reading the purge point")?;
        let floor = purged.map_or(0, |p| p.index + 1);
        let mut out = Vec::new();
        for kv in self.log.range::<[u8; 8], _>((start, end)) {
            let (k, v) = kv.map_err(|e| io_err("reading the log", e))?;
            if <[u8; 8]>::try_from(k.as_ref()).is_ok_and(|k| u64::from_be_bytes(k) < floor) {
                continue;
            }
            let entry: Entry = crate::codec::decode(&v).map_err(|e| io_err("decoding a log entry", e))?;
            out.push(entry);
        }
        Ok(out)
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        read_json(&self.meta, KEY_VOTE, "reading the vote")
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        let last_purged: Option<LogId> = read_json(&self.meta, KEY_PURGED, "reading the purge point")?;
        let last = match self.log.last().map_err(|e| io_err("reading the log", e))? {
            None => None,
            Some((_, v)) => {
                let e: Entry = crate::codec::decode(&v).map_err(|e| io_err("decoding a log entry", e))?;
                Some(e.log_id)
            }
        };
        // A leftover entry at or below the purge point (deleted in the
        // background) is not the last log id.
        let last = match (last, last_purged) {
            (Some(l), Some(p)) if l.index <= p.index => Some(p),
            (l, p) => l.or(p),
        };
        Ok(LogState { last_purged_log_id: last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        let v = to_json(vote, "encoding the vote")?;
        self.meta.insert(KEY_VOTE, v).map_err(|e| io_err("writing the vote", e))?;
        // The vote must be on disk before we answer anyone with it.
        self.flush("flushing the vote").await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> io::Result<()> {
        // Not flushed: losing it only means re-applying less on restart.
        let v = to_json(&committed, "encoding the commit index")?;
        self.meta.insert(KEY_COMMITTED, v).map_err(|e| io_err("writing the commit index", e))?;
        Ok(())
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogId>> {
        Ok(read_json::<Option<LogId>>(&self.meta, KEY_COMMITTED, "reading the commit index")?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let started = std::time::Instant::now();
        let mut batch = sled::Batch::default();
        let mut n = 0usize;
        for entry in entries {
            let v = crate::codec::encode(&entry).map_err(|e| io_err("encoding a log entry", e))?;
            batch.insert(&entry.log_id.index.to_be_bytes(), v);
            n += 1;
        }
        self.log.apply_batch(batch).map_err(|e| io_err("writing log entries", e))?;
        let written = started.elapsed();
        // Entries must be on disk before openraft counts them toward a quorum.
        let res = self.db.flush_async().await.map(|_| ()).map_err(std::io::Error::other);
        if let Some(m) = &self.metrics {
            m.log_flush(started.elapsed());
        }
        tracing::debug!(
            entries = n,
            write_us = written.as_micros() as u64,
            total_us = started.elapsed().as_micros() as u64,
            "log append flushed"
        );
        callback.io_completed(res);
        Ok(())
    }

    async fn truncate_after(&mut self, last: Option<LogId>) -> io::Result<()> {
        let from = last.map_or(0, |l| l.index + 1);
        let mut batch = sled::Batch::default();
        for kv in self.log.range(from.to_be_bytes()..) {
            let (k, _) = kv.map_err(|e| io_err("reading the log to truncate", e))?;
            batch.remove(k);
        }
        self.log.apply_batch(batch).map_err(|e| io_err("truncating the log", e))?;
        self.flush("flushing the truncated log").await
    }

    async fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        // Record the purge point first: a crash between the two steps leaves
        // extra entries, never a gap that the log state does not explain.
        let v = to_json(&Some(log_id), "encoding the purge point")?;
        self.meta.insert(KEY_PURGED, v).map_err(|e| io_err("writing the purge point", e))?;
        self.flush("flushing the purge point").await?;
        // Deleting thousands of entries takes tens of milliseconds, and
        // openraft waits for `purge` before the next append: every commit
        // stalled for that long after each snapshot. The purge point is
        // durable above, openraft never reads below it, and leftovers after
        // a crash are harmless, so the deletion runs on a blocking thread.
        let log = self.log.clone();
        let upto = log_id.index;
        tokio::task::spawn_blocking(move || {
            let mut batch = sled::Batch::default();
            for (k, _) in log.range(..=upto.to_be_bytes()).flatten() {
                batch.remove(k);
            }
            if let Err(e) = log.apply_batch(batch) {
                tracing::error!("deleting purged log entries up to {upto}: {e}");
            }
        });
        Ok(())
    }
}

/// The applied state: what the digest, the APIs and snapshots read.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Applied {
    pub last_applied: Option<LogId>,
    pub last_membership: StoredMembership,
    pub state: LedgerState,
}

impl Applied {
    pub fn applied_index(&self) -> u64 {
        self.last_applied.as_ref().map_or(0, |l| l.index)
    }
}

/// The state machine, shared with the API servers (which only read it).
#[derive(Clone)]
pub struct StateMachineStore {
    pub applied: Arc<RwLock<Applied>>,
    snapshots: sled::Tree,
    db: sled::Db,
    /// Bumped with the config index whenever an entry changes config.
    config_tx: Arc<watch::Sender<u64>>,
    /// Bumped with every applied index.
    applied_tx: Arc<watch::Sender<u64>>,
    /// The digest of the state at an applied index, computed at most once per
    /// index and by one caller at a time (status calls cannot pile up work).
    digest_cache: Arc<tokio::sync::Mutex<Option<(u64, String)>>>,
}

impl StateMachineStore {
    pub fn new(db: &sled::Db) -> io::Result<Self> {
        let snapshots = db.open_tree("snapshots").map_err(|e| io_err("opening the snapshot tree", e))?;
        let mut applied = Applied::default();
        if let Some((_meta, data)) = load_snapshot(&snapshots)? {
            applied = decode_applied(&data)?;
        }
        let (config_tx, _) = watch::channel(applied.state.config_index);
        let (applied_tx, _) = watch::channel(applied.applied_index());
        Ok(StateMachineStore {
            applied: Arc::new(RwLock::new(applied)),
            snapshots,
            db: db.clone(),
            config_tx: Arc::new(config_tx),
            applied_tx: Arc::new(applied_tx),
            digest_cache: Arc::new(tokio::sync::Mutex::new(None)),
        })
    }

    pub fn watch_config(&self) -> watch::Receiver<u64> {
        self.config_tx.subscribe()
    }

    pub fn watch_applied(&self) -> watch::Receiver<u64> {
        self.applied_tx.subscribe()
    }

    /// Reads the applied state under the lock.
    pub fn read<T>(&self, f: impl FnOnce(&Applied) -> T) -> T {
        let guard = self.applied.read().unwrap_or_else(|p| p.into_inner());
        f(&guard)
    }

    /// The applied index and the state digest at it. Hashing runs on a
    /// blocking thread over a copy, so applies wait only for the copy.
    pub async fn digest(&self) -> (u64, String) {
        let mut cache = self.digest_cache.lock().await;
        let index = self.read(|a| a.applied_index());
        if let Some((i, d)) = cache.as_ref() {
            if *i == index {
                return (*i, d.clone());
            }
        }
        let copy = self.read(|a| (a.applied_index(), a.state.clone()));
        let index = copy.0;
        let Ok(digest) = tokio::task::spawn_blocking(move || copy.1.digest()).await else {
            return (index, String::new());
        };
        *cache = Some((index, digest.clone()));
        (index, digest)
    }

    fn publish(&self) {
        let (cfg, idx) = self.read(|a| (a.state.config_index, a.applied_index()));
        self.config_tx.send_if_modified(|v| std::mem::replace(v, cfg) != cfg);
        self.applied_tx.send_if_modified(|v| std::mem::replace(v, idx) != idx);
    }
}

fn load_snapshot(tree: &sled::Tree) -> io::Result<Option<(SnapshotMeta, Vec<u8>)>> {
    let Some(meta) = read_json::<SnapshotMeta>(tree, KEY_SNAPSHOT_META, "reading the snapshot's meta")? else {
        return Ok(None);
    };
    let data = tree
        .get(KEY_SNAPSHOT_DATA)
        .map_err(|e| io_err("reading the snapshot", e))?
        .ok_or_else(|| io_err("reading the snapshot", "its data is missing"))?;
    Ok(Some((meta, data.to_vec())))
}

fn decode_applied(data: &[u8]) -> io::Result<Applied> {
    let mut applied = decode_applied_bytes(data).map_err(|e| io_err("decoding a snapshot", e))?;
    applied.state.rebuild_indexes();
    Ok(applied)
}

/// Decodes a snapshot. One written before `LedgerState` gained its last
/// fields is read as if they had their defaults: the encoding of the
/// defaults of the fields it lacks is appended and the whole decoded again,
/// and accepted only if it encodes back to exactly those bytes (a snapshot
/// cut short elsewhere stays an error). Two older formats exist: without
/// `prices`, `excess`, `attribution`; and also without `limits`,
/// `tombstones`. Decided on the decoder's end-of-input error, never on
/// message text.
pub fn decode_applied_bytes(data: &[u8]) -> Result<Applied, bincode::Error> {
    let eof = |e: &bincode::Error| matches!(&**e, bincode::ErrorKind::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof);
    match crate::codec::decode_snapshot::<Applied>(data) {
        Err(e) if eof(&e) => {
            let d = LedgerState::default();
            // Each older format lacks the fields appended since, at its end.
            let leases = crate::codec::encode(&d.leases)?;
            let prices = [crate::codec::encode(&(&d.prices, &d.excess, &d.attribution))?, leases.clone()].concat();
            let limits = [crate::codec::encode(&(&d.limits, &d.tombstones))?, prices.clone()].concat();
            for (suffix, unnamed_tombstones) in [(leases, false), (prices, false), (limits, true)] {
                let mut padded = data.to_vec();
                padded.extend(suffix);
                let Ok(mut applied) = crate::codec::decode_snapshot::<Applied>(&padded) else { continue };
                if crate::codec::encode(&applied)? != padded {
                    continue;
                }
                if unnamed_tombstones {
                    // Its release tombstones were left by callers it did not
                    // name: they go where a replay of its log puts them (caller "").
                    applied.state.adopt_unnamed_tombstones();
                }
                return Ok(applied);
            }
            Err(e)
        }
        other => other,
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> io::Result<Snapshot> {
        // Copy under the lock (applies wait only for the copy), encode on a
        // blocking thread so the runtime keeps serving RPCs meanwhile.
        let applied = self.read(|a| a.clone());
        let meta = SnapshotMeta { last_log_id: applied.last_applied, last_membership: applied.last_membership.clone() };
        let data = tokio::task::spawn_blocking(move || crate::codec::encode(&applied))
            .await
            .map_err(|e| io_err("encoding a snapshot", e))?
            .map_err(|e| io_err("encoding a snapshot", e))?;
        self.save_snapshot(&meta, &data).await?;
        Ok(Snapshot { meta, snapshot: data })
    }
}

impl StateMachineStore {
    async fn save_snapshot(&self, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()> {
        // Meta and data in one atomic batch: a crash never pairs one with the other's peer.
        let mut batch = sled::Batch::default();
        batch.insert(KEY_SNAPSHOT_META, to_json(meta, "encoding the snapshot's meta")?);
        batch.insert(KEY_SNAPSHOT_DATA, data);
        self.snapshots.apply_batch(batch).map_err(|e| io_err("writing a snapshot", e))?;
        self.db.flush_async().await.map_err(|e| io_err("flushing a snapshot", e))?;
        Ok(())
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        Ok(self.read(|a| (a.last_applied, a.last_membership.clone())))
    }

    async fn apply<S>(&mut self, entries: S) -> io::Result<()>
    where
        S: futures::Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + Send,
    {
        // openraft hands over a bounded run of committed entries: take them
        // all, apply them under one write lock, then answer their proposers.
        let entries: Vec<EntryResponder<TypeConfig>> = entries.try_collect().await?;
        let started = std::time::Instant::now();
        let mut answers = Vec::with_capacity(entries.len());
        {
            let mut a = self.applied.write().unwrap_or_else(|p| p.into_inner());
            for (entry, responder) in entries {
                let log_id = entry.log_id;
                let index = log_id.index;
                a.last_applied = Some(log_id);
                let response = match entry.payload {
                    EntryPayload::Blank => {
                        a.state.note_index(index);
                        LedgerResponse::default()
                    }
                    EntryPayload::Normal(batch) => LedgerResponse(a.state.apply(index, &batch)),
                    EntryPayload::Membership(m) => {
                        a.state.note_index(index);
                        a.last_membership = StoredMembership::new(Some(log_id), m);
                        LedgerResponse::default()
                    }
                };
                if let Some(r) = responder {
                    answers.push((r, response));
                }
            }
        }
        self.publish();
        tracing::debug!(entries = answers.len(), apply_us = started.elapsed().as_micros() as u64, "applied");
        for (r, response) in answers {
            r.send(response);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, data: SnapshotData) -> io::Result<()> {
        let applied = decode_applied(&data)?;
        self.save_snapshot(meta, &data).await?;
        *self.applied.write().unwrap_or_else(|p| p.into_inner()) = applied;
        self.publish();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<Snapshot>> {
        Ok(load_snapshot(&self.snapshots)?.map(|(meta, data)| Snapshot { meta, snapshot: data }))
    }
}
